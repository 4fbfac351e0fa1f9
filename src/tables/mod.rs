//! The one description of the application's captured tables: names, key
//! columns, columns with portable types, foreign keys, secret columns, and
//! the schema fingerprint members compare on every connection.
//!
//! Owns: [`TableDesc`], [`Catalog`] (every captured table, in an order where
//! parents come before children), the portable type system ([`PortableType`],
//! [`Value`]), the row-image layout (key columns first, then the other
//! columns in table order), and the refusals of what cannot be captured.
//! Must never: do IO (the backends read their catalogs and hand the facts
//! here), or print a value (a [`Value`]'s `Debug` shows its kind and length,
//! never its content: any column may be secret).

pub mod canonical;
mod catalog;
mod example;
mod types;
mod value;

pub use catalog::{Catalog, CatalogError, TableId};
pub use example::{EXAMPLE_SECRET_COLUMNS, EXAMPLE_TABLES, example_capture};
pub use types::{PortableType, TypeError};
pub use value::Value;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A table's name as every member spells it: `table` for SQLite tables and
/// PostgreSQL tables in `public`, `schema.table` for other PostgreSQL schemas.
///
/// Shared, not copied: every row image names its table, and a clone of
/// the name per row showed in snapshot and change-log read rates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TableName(std::sync::Arc<str>);

impl TableName {
    pub fn new(s: impl Into<String>) -> Self {
        TableName(std::sync::Arc::from(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `(schema, table)`; the schema is `None` for an unqualified name.
    pub fn parts(&self) -> (Option<&str>, &str) {
        match self.0.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, &self.0),
        }
    }
}

// Lookups by `&str` (a name read from the change log) without building a
// `TableName`: hashing and ordering agree with `str`'s.
impl std::borrow::Borrow<str> for TableName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to capture, as the config says it: `[capture] tables` and
/// `secret_columns`, or the example schema when `[capture]` is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Table names as written in the config (`schema.table` allowed on
    /// PostgreSQL; `public.` is dropped).
    pub tables: Vec<String>,
    /// `table.column` names.
    pub secret_columns: Vec<String>,
    /// The example schema: `init` creates its tables.
    pub example: bool,
}

impl CaptureSpec {
    /// No `[capture]` in the config: the example schema.
    pub fn example() -> CaptureSpec {
        let (tables, secret_columns) = example_capture();
        CaptureSpec {
            tables,
            secret_columns,
            example: true,
        }
    }
}

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec::example()
    }
}

/// Where a column's value comes from when the application leaves it out and
/// which counter must move past replicated values before a new active takes
/// writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdSource {
    /// PostgreSQL: a sequence (`bigserial`, `DEFAULT nextval(...)`, or an
    /// identity column's own sequence), by its qualified name.
    Sequence(String),
    /// SQLite: the rowid (`INTEGER PRIMARY KEY`), optionally `AUTOINCREMENT`.
    /// SQLite moves both past any value inserted, so nothing is owed.
    Rowid { autoincrement: bool },
}

/// One column of a captured table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDesc {
    pub name: String,
    pub ty: PortableType,
    /// The type as the database declares it (`VARCHAR(64)`, `jsonb`,
    /// `timestamp with time zone`): shown to operators and used to cast
    /// values on write. Not part of the fingerprint.
    pub declared: String,
    pub nullable: bool,
    /// Listed in `[capture] secret_columns`: never printed anywhere.
    pub secret: bool,
    /// The column takes generated ids (see [`IdSource`]).
    pub ids: Option<IdSource>,
}

/// A foreign key from a captured table to another captured table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKey {
    /// Columns of the referencing (child) table, by index into its columns.
    pub columns: Vec<usize>,
    pub parent: TableName,
    /// Columns of the parent table, by name, in the order of `columns`.
    pub parent_columns: Vec<String>,
    /// `ON DELETE CASCADE`: deleting a parent row deletes these children.
    pub cascade: bool,
}

/// A captured table as its database describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDesc {
    pub name: TableName,
    /// In the table's own column order.
    pub columns: Vec<ColumnDesc>,
    /// Indexes into `columns` of the primary key, in key order.
    pub key: Vec<usize>,
    pub foreign_keys: Vec<ForeignKey>,
}

impl TableDesc {
    /// The row-image layout: the key columns in key order, then every other
    /// column in table order. `layout()[i]` is the index into `columns` of
    /// image value `i`. Change log, wire, apply and checksums all use it.
    pub fn layout(&self) -> Vec<usize> {
        let mut out = self.key.clone();
        out.extend((0..self.columns.len()).filter(|i| !self.key.contains(i)));
        out
    }

    /// The columns in image order (see [`TableDesc::layout`]).
    pub fn image_columns(&self) -> Vec<&ColumnDesc> {
        self.layout()
            .into_iter()
            .map(|i| &self.columns[i])
            .collect()
    }

    /// The key's width: an image's first `key_len()` values are its key.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    pub fn column(&self, name: &str) -> Option<(usize, &ColumnDesc)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// Index in image order of a column given by name.
    pub fn image_index(&self, name: &str) -> Option<usize> {
        let (col, _) = self.column(name)?;
        self.layout().iter().position(|&i| i == col)
    }

    /// Whether image value `i` (image order) is a secret column.
    pub fn image_secret(&self) -> Vec<bool> {
        self.layout()
            .into_iter()
            .map(|i| self.columns[i].secret)
            .collect()
    }
}
