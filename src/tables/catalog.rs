//! The set of captured tables: validated once, ordered parents first, and
//! fingerprinted so members can tell whether they describe the same schema.
//!
//! Owns: the checks that cut across tables (foreign keys stay inside the
//! captured set, no cycles between tables, secret columns exist and are not
//! keys), the parents-first order, the fingerprint and the first difference
//! between two catalogs.
//! Must never: read a database (the backends build [`TableDesc`]s).

use super::{TableDesc, TableName};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A table's index in its [`Catalog`] (parents-first order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub usize);

/// Why a set of tables cannot be captured. Each message names the table and
/// column and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "captured table {table} does not exist in the database: create it first (the application owns its tables), or remove it from [capture] tables"
    )]
    Missing { table: String },
    #[error(
        "captured table {table} has no primary key: replication finds rows by key; add a PRIMARY KEY, or remove the table from [capture] tables"
    )]
    NoPrimaryKey { table: String },
    #[error(
        "{table}.{column} has type {declared}, which understudy cannot carry exactly between members: use one of int, real, numeric, text, bool, bytes (blob/bytea), json, uuid, date, timestamp, timestamptz, or remove the table from [capture] tables"
    )]
    UnsupportedType {
        table: String,
        column: String,
        declared: String,
    },
    #[error(
        "{table}.{column} is a generated column: its value is computed by each database, not replicated; make it an ordinary column, or remove the table from [capture] tables"
    )]
    Generated { table: String, column: String },
    #[error(
        "{table}.{column} is part of the primary key but may be NULL (SQLite allows NULL in a primary key that is not INTEGER PRIMARY KEY): declare it NOT NULL"
    )]
    NullableKey { table: String, column: String },
    #[error(
        "{table}({columns}) references {parent}, which is not captured: add {parent} to [capture] tables, or drop the foreign key"
    )]
    ForeignKeyOutside {
        table: String,
        columns: String,
        parent: String,
    },
    #[error(
        "the foreign keys of {tables} form a cycle: set-based apply needs an order where parents come first; break the cycle or capture fewer tables"
    )]
    Cycle { tables: String },
    #[error(
        "[capture] secret_columns names {column}, which is not a column of a captured table: write it as table.column"
    )]
    UnknownSecret { column: String },
    #[error(
        "[capture] secret_columns names {column}, which is part of its table's primary key: keys identify rows in logs and status, so they cannot be secret"
    )]
    SecretKey { column: String },
    #[error("[capture] tables lists {table} twice")]
    Duplicate { table: String },
    #[error("{table}: {reason}")]
    Other { table: String, reason: String },
}

/// Every captured table, parents before children (ties by name), with the
/// fingerprint of the whole description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    tables: Vec<TableDesc>,
    fingerprint: String,
}

impl Catalog {
    /// Validate and order `tables` (as the backend read them, secret flags
    /// not yet set) and mark `secret_columns` (`table.column`).
    pub fn build(
        mut tables: Vec<TableDesc>,
        secret_columns: &[String],
    ) -> Result<Catalog, CatalogError> {
        let mut names = BTreeMap::new();
        for (i, t) in tables.iter().enumerate() {
            if names.insert(t.name.clone(), i).is_some() {
                return Err(CatalogError::Duplicate {
                    table: t.name.to_string(),
                });
            }
            if t.name.parts().1.starts_with("us_") {
                return Err(CatalogError::Other {
                    table: t.name.to_string(),
                    reason: "tables named us_* are understudy's own and cannot be captured; remove it from [capture] tables".into(),
                });
            }
            if t.key.is_empty() {
                return Err(CatalogError::NoPrimaryKey {
                    table: t.name.to_string(),
                });
            }
            for fk in &t.foreign_keys {
                if !names.contains_key(&fk.parent) && !tables.iter().any(|o| o.name == fk.parent) {
                    let columns = fk
                        .columns
                        .iter()
                        .map(|&c| t.columns[c].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(CatalogError::ForeignKeyOutside {
                        table: t.name.to_string(),
                        columns,
                        parent: fk.parent.to_string(),
                    });
                }
            }
        }
        for s in secret_columns {
            mark_secret(&mut tables, s)?;
        }
        let tables = parents_first(tables)?;
        let fingerprint = fingerprint_of(&tables);
        Ok(Catalog {
            tables,
            fingerprint,
        })
    }

    /// No tables: what a store holds before `init` has created or found
    /// any (every row path then refuses by table name).
    pub fn empty() -> Catalog {
        Catalog {
            tables: Vec::new(),
            fingerprint: fingerprint_of(&[]),
        }
    }

    pub fn tables(&self) -> &[TableDesc] {
        &self.tables
    }

    pub fn get(&self, name: &TableName) -> Option<(TableId, &TableDesc)> {
        self.tables
            .iter()
            .enumerate()
            .find(|(_, t)| &t.name == name)
            .map(|(i, t)| (TableId(i), t))
    }

    pub fn by_name(&self, name: &str) -> Option<&TableDesc> {
        self.tables.iter().find(|t| t.name.as_str() == name)
    }

    pub fn table(&self, id: TableId) -> &TableDesc {
        &self.tables[id.0]
    }

    /// Short hex digest of the whole description (tables, columns in order
    /// with their portable types and nullability, keys, foreign keys,
    /// secret columns). Equal on members whose tables take the same images.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The first difference between this catalog and `other`'s, naming the
    /// table and column, or `None` when they describe the same schema.
    pub fn first_difference(&self, other: &Catalog) -> Option<String> {
        first_difference(&self.tables, &other.tables)
    }

    /// Like [`Catalog::first_difference`], against another member's table
    /// descriptions as its hello carried them.
    pub fn first_difference_from(&self, other: &[TableDesc]) -> Option<String> {
        first_difference(&self.tables, other)
    }

    /// The same difference, worded for the member that holds `other`
    /// ("here" is that member).
    pub fn first_difference_seen_from(&self, other: &[TableDesc]) -> Option<String> {
        first_difference(other, &self.tables)
    }

    /// Tables whose rows a delete of `parent` may cascade to (directly).
    pub fn cascade_children(&self, parent: &TableName) -> Vec<&TableDesc> {
        self.tables
            .iter()
            .filter(|t| {
                t.foreign_keys
                    .iter()
                    .any(|fk| fk.cascade && &fk.parent == parent)
            })
            .collect()
    }
}

fn mark_secret(tables: &mut [TableDesc], spec: &str) -> Result<(), CatalogError> {
    let unknown = || CatalogError::UnknownSecret {
        column: spec.to_string(),
    };
    let (table, column) = spec.rsplit_once('.').ok_or_else(unknown)?;
    let t = tables
        .iter_mut()
        .find(|t| t.name.as_str() == table)
        .ok_or_else(unknown)?;
    let (idx, _) = t.column(column).ok_or_else(unknown)?;
    if t.key.contains(&idx) {
        return Err(CatalogError::SecretKey {
            column: spec.to_string(),
        });
    }
    t.columns[idx].secret = true;
    Ok(())
}

/// Kahn's algorithm over the foreign-key graph (self references ignored),
/// taking the alphabetically first ready table each step so the order is
/// the same on every member.
fn parents_first(tables: Vec<TableDesc>) -> Result<Vec<TableDesc>, CatalogError> {
    let mut pending: BTreeMap<TableName, TableDesc> =
        tables.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending
            .values()
            .find(|t| {
                t.foreign_keys
                    .iter()
                    .all(|fk| fk.parent == t.name || !pending.contains_key(&fk.parent))
            })
            .map(|t| t.name.clone());
        match ready {
            Some(name) => out.push(pending.remove(&name).expect("ready table is pending")),
            None => {
                let tables = pending
                    .keys()
                    .map(TableName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(CatalogError::Cycle { tables });
            }
        }
    }
    Ok(out)
}

fn describe(t: &TableDesc) -> String {
    let mut s = format!("table {}\n", t.name);
    for c in &t.columns {
        s.push_str(&format!(
            "  column {} {} {}{}\n",
            c.name,
            c.ty,
            if c.nullable { "null" } else { "not null" },
            if c.secret { " secret" } else { "" }
        ));
    }
    let key: Vec<&str> = t.key.iter().map(|&i| t.columns[i].name.as_str()).collect();
    s.push_str(&format!("  key ({})\n", key.join(", ")));
    for fk in &t.foreign_keys {
        let cols: Vec<&str> = fk
            .columns
            .iter()
            .map(|&i| t.columns[i].name.as_str())
            .collect();
        s.push_str(&format!(
            "  foreign key ({}) -> {}({}){}\n",
            cols.join(", "),
            fk.parent,
            fk.parent_columns.join(", "),
            if fk.cascade { " cascade" } else { "" }
        ));
    }
    s
}

fn fingerprint_of(tables: &[TableDesc]) -> String {
    let mut h = Sha256::new();
    for t in tables {
        h.update(describe(t).as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

fn first_difference(a: &[TableDesc], b: &[TableDesc]) -> Option<String> {
    for t in a {
        let Some(o) = b.iter().find(|o| o.name == t.name) else {
            return Some(format!("table {} is captured here but not there", t.name));
        };
        if let Some(d) = table_difference(t, o) {
            return Some(d);
        }
    }
    b.iter()
        .find(|o| !a.iter().any(|t| t.name == o.name))
        .map(|o| format!("table {} is captured there but not here", o.name))
}

fn table_difference(t: &TableDesc, o: &TableDesc) -> Option<String> {
    let n = t.columns.len().max(o.columns.len());
    for i in 0..n {
        match (t.columns.get(i), o.columns.get(i)) {
            (Some(c), None) => {
                return Some(format!("column {}.{} is missing there", t.name, c.name));
            }
            (None, Some(c)) => {
                return Some(format!("column {}.{} is missing here", t.name, c.name));
            }
            (Some(c), Some(d)) if c.name != d.name => {
                return Some(format!(
                    "column {} of {} is {} here and {} there",
                    i + 1,
                    t.name,
                    c.name,
                    d.name
                ));
            }
            (Some(c), Some(d)) if c.ty != d.ty => {
                return Some(format!(
                    "column {}.{} is {} here and {} there",
                    t.name, c.name, c.ty, d.ty
                ));
            }
            (Some(c), Some(d)) if c.nullable != d.nullable => {
                let s = |n: bool| if n { "nullable" } else { "NOT NULL" };
                return Some(format!(
                    "column {}.{} is {} here and {} there",
                    t.name,
                    c.name,
                    s(c.nullable),
                    s(d.nullable)
                ));
            }
            (Some(c), Some(d)) if c.secret != d.secret => {
                return Some(format!(
                    "column {}.{} is secret on one member only: list it in [capture] secret_columns everywhere",
                    t.name, c.name
                ));
            }
            _ => {}
        }
    }
    if t.key != o.key {
        return Some(format!("the primary key of {} differs", t.name));
    }
    if t.foreign_keys != o.foreign_keys {
        return Some(format!("the foreign keys of {} differ", t.name));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{ColumnDesc, ForeignKey, PortableType};
    use super::*;

    fn col(name: &str, ty: PortableType) -> ColumnDesc {
        ColumnDesc {
            name: name.into(),
            ty,
            declared: ty.as_str().into(),
            nullable: true,
            secret: false,
            ids: None,
        }
    }

    fn table(name: &str, parent: Option<&str>) -> TableDesc {
        let mut columns = vec![col("id", PortableType::Int), col("v", PortableType::Text)];
        columns[0].nullable = false;
        let mut foreign_keys = vec![];
        if let Some(p) = parent {
            columns.push(col("parent", PortableType::Int));
            foreign_keys.push(ForeignKey {
                columns: vec![2],
                parent: TableName::new(p),
                parent_columns: vec!["id".into()],
                cascade: true,
            });
        }
        TableDesc {
            name: TableName::new(name),
            columns,
            key: vec![0],
            foreign_keys,
        }
    }

    #[test]
    fn parents_come_first_whatever_the_config_order() {
        let c = Catalog::build(
            vec![
                table("c", Some("b")),
                table("b", Some("a")),
                table("a", None),
            ],
            &[],
        )
        .unwrap();
        let names: Vec<&str> = c.tables().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn refusals_name_the_table_and_say_what_to_do() {
        let e = Catalog::build(vec![table("b", Some("a"))], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("references a, which is not captured"),
            "{e}"
        );
        let mut nokey = table("a", None);
        nokey.key.clear();
        let e = Catalog::build(vec![nokey], &[]).unwrap_err();
        assert!(e.to_string().contains("a has no primary key"), "{e}");
        let e =
            Catalog::build(vec![table("a", Some("b")), table("b", Some("a"))], &[]).unwrap_err();
        assert!(matches!(e, CatalogError::Cycle { .. }), "{e}");
        let e = Catalog::build(vec![table("a", None)], &["a.nope".into()]).unwrap_err();
        assert!(matches!(e, CatalogError::UnknownSecret { .. }), "{e}");
        let e = Catalog::build(vec![table("a", None)], &["a.id".into()]).unwrap_err();
        assert!(matches!(e, CatalogError::SecretKey { .. }), "{e}");
    }

    #[test]
    fn fingerprint_follows_types_and_names_the_difference() {
        let a = Catalog::build(vec![table("a", None)], &[]).unwrap();
        let b = Catalog::build(vec![table("a", None)], &[]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.first_difference(&b), None);
        let mut t = table("a", None);
        t.columns[1].ty = PortableType::Bytes;
        let c = Catalog::build(vec![t], &[]).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(
            a.first_difference(&c).unwrap(),
            "column a.v is text here and bytes there"
        );
        let s = Catalog::build(vec![table("a", None)], &["a.v".into()]).unwrap();
        assert_ne!(a.fingerprint(), s.fingerprint());
        // Worded for either side: "here" is the member reading it.
        let mut wide = table("a", None);
        wide.columns.push(col("extra", PortableType::Int));
        let w = Catalog::build(vec![wide], &[]).unwrap();
        assert_eq!(
            a.first_difference_from(w.tables()).unwrap(),
            "column a.extra is missing here"
        );
        assert_eq!(
            a.first_difference_seen_from(w.tables()).unwrap(),
            "column a.extra is missing there"
        );
    }

    #[test]
    fn self_references_are_allowed() {
        let c = Catalog::build(vec![table("a", Some("a"))], &[]).unwrap();
        assert_eq!(c.tables().len(), 1);
    }
}
