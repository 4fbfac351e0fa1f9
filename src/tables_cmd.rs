//! `understudy tables`: the captured tables as the member's database
//! describes them (keys, columns with portable and declared types,
//! nullability, secret columns, id sources, foreign keys) and the schema
//! fingerprint, as a readable table per table or as one JSON document.
//!
//! Owns: the text and JSON renderings of a [`Catalog`].
//! Must never: read or print row values (it renders the description only),
//! or open the database itself (the command line opens the store, whose
//! catalog read is where refusals come from).

use crate::tables::{Catalog, ColumnDesc, ForeignKey, IdSource, TableDesc};
use serde::Serialize;
use std::fmt::Write;

/// `understudy tables --json`: `{ "fingerprint", "tables": [ { "name",
/// "key", "columns", "foreign_keys" } ] }`, tables in catalog order
/// (parents first). Structs rather than a `serde_json::Value` so the fields
/// print in this order (a `Value` sorts them), name first.
#[derive(Serialize)]
pub struct TablesDoc<'a> {
    pub fingerprint: &'a str,
    pub tables: Vec<TableDoc<'a>>,
}

#[derive(Serialize)]
pub struct TableDoc<'a> {
    pub name: &'a str,
    pub key: Vec<&'a str>,
    pub columns: Vec<ColumnDoc<'a>>,
    pub foreign_keys: Vec<ForeignKeyDoc<'a>>,
}

#[derive(Serialize)]
pub struct ColumnDoc<'a> {
    pub name: &'a str,
    /// The portable type (`int`, `text`, `timestamptz`, ...).
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub declared: &'a str,
    pub nullable: bool,
    pub secret: bool,
    pub ids: Option<IdsDoc<'a>>,
}

/// A tagged object rather than serde's enum form, so scripts read
/// `ids.kind` without knowing Rust's variant names.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IdsDoc<'a> {
    Sequence { sequence: &'a str },
    Rowid { autoincrement: bool },
}

#[derive(Serialize)]
pub struct ForeignKeyDoc<'a> {
    pub columns: Vec<&'a str>,
    pub parent: &'a str,
    pub parent_columns: &'a [String],
    pub cascade: bool,
}

pub fn to_json(catalog: &Catalog) -> TablesDoc<'_> {
    TablesDoc {
        fingerprint: catalog.fingerprint(),
        tables: catalog.tables().iter().map(table_doc).collect(),
    }
}

fn table_doc(t: &TableDesc) -> TableDoc<'_> {
    TableDoc {
        name: t.name.as_str(),
        key: key_names(t),
        columns: t.columns.iter().map(column_doc).collect(),
        foreign_keys: t.foreign_keys.iter().map(|fk| fk_doc(t, fk)).collect(),
    }
}

fn column_doc(c: &ColumnDesc) -> ColumnDoc<'_> {
    ColumnDoc {
        name: &c.name,
        ty: c.ty.as_str(),
        declared: &c.declared,
        nullable: c.nullable,
        secret: c.secret,
        ids: c.ids.as_ref().map(|ids| match ids {
            IdSource::Sequence(name) => IdsDoc::Sequence { sequence: name },
            IdSource::Rowid { autoincrement } => IdsDoc::Rowid {
                autoincrement: *autoincrement,
            },
        }),
    }
}

fn fk_doc<'a>(t: &'a TableDesc, fk: &'a ForeignKey) -> ForeignKeyDoc<'a> {
    ForeignKeyDoc {
        columns: fk_columns(t, fk),
        parent: fk.parent.as_str(),
        parent_columns: &fk.parent_columns,
        cascade: fk.cascade,
    }
}

fn key_names(t: &TableDesc) -> Vec<&str> {
    t.key.iter().map(|&i| column_name(t, i)).collect()
}

fn fk_columns<'a>(t: &'a TableDesc, fk: &ForeignKey) -> Vec<&'a str> {
    fk.columns.iter().map(|&i| column_name(t, i)).collect()
}

/// Indexes come from the catalog and are valid; "?" rather than a panic if
/// a backend ever hands over one that is not.
fn column_name(t: &TableDesc, i: usize) -> &str {
    t.columns.get(i).map_or("?", |c| c.name.as_str())
}

fn ids_text(ids: &Option<IdSource>) -> String {
    match ids {
        None => String::new(),
        Some(IdSource::Sequence(name)) => format!("sequence {name}"),
        Some(IdSource::Rowid {
            autoincrement: true,
        }) => "rowid autoincrement".into(),
        Some(IdSource::Rowid {
            autoincrement: false,
        }) => "rowid".into(),
    }
}

/// The fingerprint, then one block per table: its key, a column table and
/// its foreign keys.
pub fn render_text(catalog: &Catalog) -> String {
    let n = catalog.tables().len();
    let mut out = format!(
        "schema fingerprint {} ({n} captured table{}, parents first)\n",
        catalog.fingerprint(),
        if n == 1 { "" } else { "s" }
    );
    for t in catalog.tables() {
        out.push('\n');
        out.push_str(&table_text(t));
    }
    out
}

fn table_text(t: &TableDesc) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "COLUMN".into(),
        "TYPE".into(),
        "DECLARED".into(),
        "NULL".into(),
        "SECRET".into(),
        "IDS".into(),
    ]];
    for c in &t.columns {
        rows.push([
            c.name.clone(),
            c.ty.to_string(),
            c.declared.clone(),
            if c.nullable { "yes" } else { "no" }.into(),
            if c.secret { "secret" } else { "" }.into(),
            ids_text(&c.ids),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("{}  key ({})\n", t.name, key_names(t).join(", "));
    for r in &rows {
        let mut line = String::from(" ");
        for (cell, w) in r.iter().zip(widths) {
            let _ = write!(line, " {cell:<w$} ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for fk in &t.foreign_keys {
        let _ = writeln!(
            out,
            "  foreign key ({}) -> {}({}){}",
            fk_columns(t, fk).join(", "),
            fk.parent,
            fk.parent_columns.join(", "),
            if fk.cascade { " on delete cascade" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{PortableType, TableName};
    use serde_json::json;

    fn col(name: &str, ty: PortableType, declared: &str, nullable: bool) -> ColumnDesc {
        ColumnDesc {
            name: name.into(),
            ty,
            declared: declared.into(),
            nullable,
            secret: false,
            ids: None,
        }
    }

    /// Given child first: the catalog orders parents first.
    fn catalog() -> Catalog {
        let mut id = col("id", PortableType::Int, "bigint", false);
        id.ids = Some(IdSource::Sequence("public.storage_id_seq".into()));
        let storage = TableDesc {
            name: TableName::new("storage"),
            columns: vec![
                id,
                col("dir", PortableType::Text, "varchar(2048)", false),
                col("data", PortableType::Bytes, "bytea", true),
            ],
            key: vec![0],
            foreign_keys: vec![],
        };
        let steps = TableDesc {
            name: TableName::new("rdoption_values"),
            columns: vec![
                col("rdoption_id", PortableType::Int, "BIGINT", false),
                col("value", PortableType::Text, "VARCHAR(2048)", false),
                col("sort_index", PortableType::Int, "INTEGER", false),
            ],
            key: vec![0, 1],
            foreign_keys: vec![ForeignKey {
                columns: vec![0],
                parent: TableName::new("rdoption"),
                parent_columns: vec!["id".into()],
                cascade: true,
            }],
        };
        let mut rid = col("id", PortableType::Int, "INTEGER", false);
        rid.ids = Some(IdSource::Rowid {
            autoincrement: false,
        });
        let rdoption = TableDesc {
            name: TableName::new("rdoption"),
            columns: vec![rid, col("name", PortableType::Text, "TEXT", false)],
            key: vec![0],
            foreign_keys: vec![],
        };
        Catalog::build(vec![steps, rdoption, storage], &["storage.data".into()]).unwrap()
    }

    #[test]
    fn json_has_the_contract_fields_in_catalog_order() {
        let c = catalog();
        let text = serde_json::to_string_pretty(&to_json(&c)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first_keys: Vec<usize> = ["\"name\"", "\"key\"", "\"columns\""]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(
            first_keys.is_sorted(),
            "name, key, columns in order: {text}"
        );
        assert_eq!(v["fingerprint"], c.fingerprint());
        let names: Vec<&str> = v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["rdoption", "rdoption_values", "storage"]);
        let values = &v["tables"][1];
        assert_eq!(values["key"], json!(["rdoption_id", "value"]));
        assert_eq!(
            values["foreign_keys"],
            json!([{"columns": ["rdoption_id"], "parent": "rdoption",
                    "parent_columns": ["id"], "cascade": true}])
        );
        assert_eq!(
            values["columns"][1],
            json!({"name": "value", "type": "text", "declared": "VARCHAR(2048)",
                   "nullable": false, "secret": false, "ids": null})
        );
        let storage = &v["tables"][2];
        assert_eq!(storage["columns"][2]["secret"], true);
        assert_eq!(storage["columns"][2]["type"], "bytes");
        assert_eq!(
            storage["columns"][0]["ids"],
            json!({"kind": "sequence", "sequence": "public.storage_id_seq"})
        );
        assert_eq!(
            v["tables"][0]["columns"][0]["ids"],
            json!({"kind": "rowid", "autoincrement": false})
        );
    }

    #[test]
    fn text_shows_keys_columns_secrets_and_foreign_keys() {
        let c = catalog();
        let text = render_text(&c);
        assert!(text.starts_with(&format!(
            "schema fingerprint {} (3 captured tables",
            c.fingerprint()
        )));
        assert!(
            text.contains("rdoption_values  key (rdoption_id, value)\n"),
            "{text}"
        );
        assert!(
            text.contains("  foreign key (rdoption_id) -> rdoption(id) on delete cascade\n"),
            "{text}"
        );
        assert!(text.contains("sequence public.storage_id_seq"), "{text}");
        let storage = text
            .split("\n\n")
            .find(|b| b.starts_with("storage "))
            .unwrap();
        let data = storage
            .lines()
            .find(|l| l.trim_start().starts_with("data "))
            .unwrap();
        assert!(data.contains("bytes") && data.contains("bytea") && data.contains("secret"));
        // Columns line up under their headings.
        let header = storage.lines().find(|l| l.contains("COLUMN")).unwrap();
        for (heading, cell) in [("TYPE", "bytes"), ("SECRET", "secret")] {
            let at = header.find(heading).unwrap();
            assert_eq!(&data[at..at + cell.len()], cell, "{storage}");
        }
    }
}
