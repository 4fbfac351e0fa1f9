//! The example schema's row images for the conformance suite and for unit
//! tests that have no database: built from a catalog (a store's own, or
//! [`example_catalog`]), so every value has the variant its column's
//! portable type asks for and sits at its column's place in the image.
//!
//! Owns: the example schema as every backend must describe it, and the
//! builders of its images and deletes.
//! Must never: be used on input: a table or column the catalog does not
//! have is a failed assertion of a test (a panic naming it), not an error.

use crate::model::{ChangeOp, RowImage};
use crate::tables::{
    Catalog, ColumnDesc, EXAMPLE_SECRET_COLUMNS, ForeignKey, PortableType, TableDesc, TableName,
    Value,
};

fn column(name: &str, ty: PortableType, nullable: bool) -> ColumnDesc {
    ColumnDesc {
        name: name.into(),
        ty,
        declared: ty.as_str().into(),
        nullable,
        secret: false,
        ids: None,
    }
}

fn table(name: &str, columns: Vec<ColumnDesc>, foreign_keys: Vec<ForeignKey>) -> TableDesc {
    TableDesc {
        name: TableName::new(name),
        columns,
        key: vec![0],
        foreign_keys,
    }
}

/// The example schema (projects, jobs, keys) as both backends must
/// describe it: the same portable types, nullability, keys, foreign keys
/// and secret columns, so SQLite and PostgreSQL members of one cluster
/// have the same fingerprint.
pub fn example_catalog() -> Catalog {
    use PortableType::{Bool, Bytes, Int, Text};
    let projects = table(
        "projects",
        vec![
            column("name", Text, false),
            column("description", Text, true),
            column("config", Text, true),
            column("updated_at", Int, false),
        ],
        vec![],
    );
    let jobs = table(
        "jobs",
        vec![
            column("id", Text, false),
            column("project", Text, false),
            column("name", Text, false),
            column("group_path", Text, true),
            column("description", Text, true),
            column("definition", Text, true),
            column("schedule", Text, true),
            column("schedule_enabled", Bool, false),
            column("execution_enabled", Bool, false),
            column("owner_member", Text, true),
            column("updated_at", Int, false),
        ],
        vec![ForeignKey {
            columns: vec![1],
            parent: TableName::new("projects"),
            parent_columns: vec!["name".into()],
            cascade: true,
        }],
    );
    let keys = table(
        "keys",
        vec![
            column("path", Text, false),
            column("kind", Text, false),
            column("content", Bytes, false),
            column("meta", Text, true),
            column("updated_at", Int, false),
        ],
        vec![],
    );
    let secrets: Vec<String> = EXAMPLE_SECRET_COLUMNS
        .iter()
        .map(|s| s.to_string())
        .collect();
    Catalog::build(vec![projects, jobs, keys], &secrets)
        .unwrap_or_else(|e| panic!("the example catalog is invalid: {e}"))
}

fn desc<'a>(cat: &'a Catalog, table: &str) -> &'a TableDesc {
    cat.by_name(table).unwrap_or_else(|| {
        let names: Vec<&str> = cat.tables().iter().map(|t| t.name.as_str()).collect();
        panic!("the catalog has no table {table} (it has {names:?})")
    })
}

fn index(t: &TableDesc, column: &str) -> usize {
    t.image_index(column)
        .unwrap_or_else(|| panic!("table {} has no column {column}", t.name))
}

/// An image of `table` with the given columns set (by name) and every
/// other column NULL.
pub fn image(cat: &Catalog, table: &str, values: &[(&str, Value)]) -> RowImage {
    let t = desc(cat, table);
    let mut out = vec![Value::Null; t.columns.len()];
    for (name, v) in values {
        out[index(t, name)] = v.clone();
    }
    RowImage::new(t.name.clone(), t.key_len(), out)
}

/// The value of `column` in `row`.
pub fn get<'a>(cat: &Catalog, row: &'a RowImage, column: &str) -> &'a Value {
    let i = index(desc(cat, row.table.as_str()), column);
    row.values
        .get(i)
        .unwrap_or_else(|| panic!("an image of {} without column {column}", row.table))
}

/// Set `column` of `row`.
pub fn set(cat: &Catalog, row: &mut RowImage, column: &str, v: Value) {
    let i = index(desc(cat, row.table.as_str()), column);
    row.values[i] = v;
}

/// A flag as `table.column` holds it: `Bool` for a bool column, 0 or 1
/// for an integer column (an SQLite schema that declares flags INTEGER).
pub fn flag(cat: &Catalog, table: &str, column: &str, on: bool) -> Value {
    let t = desc(cat, table);
    let (_, c) = t
        .column(column)
        .unwrap_or_else(|| panic!("table {table} has no column {column}"));
    match c.ty {
        PortableType::Bool => Value::Bool(on),
        _ => Value::Int(i64::from(on)),
    }
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// `NULL` for `None`.
pub fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

/// A `projects` row.
pub fn project(
    cat: &Catalog,
    name: &str,
    description: Option<&str>,
    config: Option<&str>,
    at: i64,
) -> RowImage {
    image(
        cat,
        "projects",
        &[
            ("name", text(name)),
            ("description", opt_text(description)),
            ("config", opt_text(config)),
            ("updated_at", Value::Int(at)),
        ],
    )
}

/// A `jobs` row with both flags on and every optional column NULL (as the
/// schema's defaults leave it); change columns with [`set`].
pub fn job(cat: &Catalog, id: &str, project: &str, name: &str, at: i64) -> RowImage {
    image(
        cat,
        "jobs",
        &[
            ("id", text(id)),
            ("project", text(project)),
            ("name", text(name)),
            (
                "schedule_enabled",
                flag(cat, "jobs", "schedule_enabled", true),
            ),
            (
                "execution_enabled",
                flag(cat, "jobs", "execution_enabled", true),
            ),
            ("updated_at", Value::Int(at)),
        ],
    )
}

/// A `keys` row (`content` is the example schema's secret column).
pub fn key(
    cat: &Catalog,
    path: &str,
    kind: &str,
    content: &[u8],
    meta: Option<&str>,
    at: i64,
) -> RowImage {
    image(
        cat,
        "keys",
        &[
            ("path", text(path)),
            ("kind", text(kind)),
            ("content", Value::Bytes(content.to_vec())),
            ("meta", opt_text(meta)),
            ("updated_at", Value::Int(at)),
        ],
    )
}

/// The delete of the row of `table` whose (one-column, text) key is `key`:
/// every example table has such a key.
pub fn del(table: &str, key: &str) -> ChangeOp {
    ChangeOp::Delete {
        table: TableName::new(table),
        key: vec![text(key)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_follow_the_layout_and_the_column_types() {
        let cat = example_catalog();
        let mut j = job(&cat, "j1", "p1", "n", 7);
        assert_eq!(j.key(), &[text("j1")]);
        assert_eq!(get(&cat, &j, "schedule_enabled"), &Value::Bool(true));
        set(&cat, &mut j, "owner_member", text("a"));
        assert_eq!(get(&cat, &j, "owner_member"), &text("a"));
        assert_eq!(j.values.len(), 11);
        let order: Vec<&str> = cat.tables().iter().map(|t| t.name.as_str()).collect();
        let (p, jb) = (
            order.iter().position(|n| *n == "projects"),
            order.iter().position(|n| *n == "jobs"),
        );
        assert!(p < jb, "parents first: {order:?}");
        assert!(cat.by_name("keys").expect("keys").columns[2].secret);
    }
}
