//! Row images between SQLite and the model: the statements generated from
//! the table description, decoding change-log and table rows, and applying
//! a change.
//!
//! Owns: [`Tables`] (the catalog with every statement the SQLite paths run
//! on a captured table, generated once), the change log's row layout
//! (`seq, epoch, tbl, op, c0..` with values in the table's image layout, see
//! `schemas/sqlite/0001_core.sql`), reading log entries back into changes,
//! and the apply of one change.
//!
//! The log keeps every upsert's image as it was captured. (Keeping only
//! keys and reading images from the tables at ship time was tried: a batch
//! bounded below the head can then carry a child's later image before its
//! parent's insert, which a PostgreSQL passive's foreign keys refuse.)
//!
//! SQLite is loosely typed: an application may store an integer in a TEXT
//! column or text in a BLOB column. Decoding (`values::decode`) is tolerant
//! in the same way on every path (change log, table scan), so the active and
//! a passive that applied its changes compute the same images.

use super::values;
use crate::model::{Change, ChangeOp, Position, RowImage, SchemaChange};
use crate::store::{StoreError, StoreResult};
use crate::tables::{Catalog, PortableType, TableDesc, TableName, Value};
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, Row};
use std::collections::HashMap;
use std::sync::Arc;

/// An upsert: the row's image after the change.
pub(super) const OP_UPSERT: i64 = 1;
/// A delete: the key only.
pub(super) const OP_DELETE: i64 = 2;

/// Value columns the change log and the quarantine have at least (the
/// example schema's widest table has 11 columns).
pub(super) const MIN_LOG_WIDTH: usize = 11;

/// Quote an identifier for SQLite.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name as SQL: SQLite names are never schema-qualified here.
pub(super) fn table_sql(t: &TableName) -> String {
    ident(t.as_str())
}

/// The statements of one captured table, generated from its description.
#[derive(Debug)]
pub(super) struct TableSql {
    pub desc: TableDesc,
    /// Portable types in image order.
    pub types: Vec<PortableType>,
    /// Column names in image order (for messages; computed once, not per
    /// row).
    pub names: Vec<String>,
    /// `INSERT ... ON CONFLICT (key) DO UPDATE` of a full image.
    pub upsert: String,
    /// `INSERT` of a full image into an emptied table (snapshot install).
    pub insert: String,
    pub delete: String,
    /// Every row, image order (checksums).
    pub select_all: String,
    /// One keyset page: `?1` is the last rowid read, `?2` the page size;
    /// the rowid is the last column. `None` for WITHOUT ROWID tables.
    pub page_by_rowid: Option<String>,
    /// Log insert of an upsert (every value) and of a delete (the key).
    pub log_upsert: String,
    pub log_delete: String,
}

impl TableSql {
    fn new(desc: &TableDesc, has_rowid: bool) -> TableSql {
        let cols: Vec<String> = desc
            .image_columns()
            .iter()
            .map(|c| ident(&c.name))
            .collect();
        let key: Vec<String> = cols[..desc.key_len()].to_vec();
        let t = table_sql(&desc.name);
        let marks = |n: usize, from: usize| {
            (from..from + n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let insert = format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            cols.join(", "),
            marks(cols.len(), 1)
        );
        let rest: Vec<String> = cols[desc.key_len()..]
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let on_conflict = if rest.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", rest.join(", "))
        };
        let upsert = format!("{insert} ON CONFLICT ({}) {on_conflict}", key.join(", "));
        let by_key = key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} = ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let delete = format!("DELETE FROM {t} WHERE {by_key}");
        let select_all = format!("SELECT {} FROM {t}", cols.join(", "));
        let page_by_rowid = has_rowid.then(|| {
            format!(
                "SELECT {}, rowid FROM {t} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                cols.join(", ")
            )
        });
        let log_cols = |n: usize| {
            (0..n)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let log_insert = |n: usize| {
            format!(
                "INSERT INTO us_changelog (seq, epoch, tbl, op, {}) VALUES (?1, ?2, ?3, ?4, {})",
                log_cols(n),
                marks(n, 5)
            )
        };
        TableSql {
            types: desc.image_columns().iter().map(|c| c.ty).collect(),
            names: desc
                .image_columns()
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            upsert,
            insert,
            delete,
            select_all,
            page_by_rowid,
            log_upsert: log_insert(cols.len()),
            log_delete: log_insert(desc.key_len()),
            desc: desc.clone(),
        }
    }
}

/// The catalog and its statements: what every SQLite path needs to handle
/// rows of any captured table.
#[derive(Debug)]
pub(super) struct Tables {
    pub catalog: Arc<Catalog>,
    /// In catalog order (parents first).
    pub tables: Vec<TableSql>,
    by_name: HashMap<TableName, usize>,
    /// `SELECT seq, epoch, tbl, op, c0..` of the change log.
    pub log_select: String,
}

impl Tables {
    /// `rowid_tables`: which tables have a rowid (all but WITHOUT ROWID).
    pub fn new(catalog: Arc<Catalog>, has_rowid: impl Fn(&TableName) -> bool) -> Tables {
        let tables: Vec<TableSql> = catalog
            .tables()
            .iter()
            .map(|t| TableSql::new(t, has_rowid(&t.name)))
            .collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.desc.name.clone(), i))
            .collect();
        let log_select = format!("SELECT seq, epoch, tbl, op, {} FROM us_changelog", {
            (0..log_width(&catalog))
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        Tables {
            catalog,
            tables,
            by_name,
            log_select,
        }
    }

    pub fn empty() -> Tables {
        Tables::new(Arc::new(Catalog::empty()), |_| true)
    }

    pub fn get(&self, name: &TableName) -> StoreResult<&TableSql> {
        self.get_str(name.as_str())
    }

    pub fn get_str(&self, name: &str) -> StoreResult<&TableSql> {
        self.by_name
            .get(name)
            .map(|&i| &self.tables[i])
            .ok_or_else(|| {
                StoreError::Shape(format!(
                    "table {name} is not captured on this member: its [capture] tables or schema differ from the active's"
                ))
            })
    }
}

/// How many value columns the change log needs for `catalog`.
pub(super) fn log_width(catalog: &Catalog) -> usize {
    catalog
        .tables()
        .iter()
        .map(|t| t.columns.len())
        .max()
        .unwrap_or(0)
        .max(MIN_LOG_WIDTH)
}

/// Where a problem is, computed only when there is one (no allocation per
/// row on the hot paths).
type At<'a> = &'a dyn Fn() -> String;

fn corrupt(at: At<'_>, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{}: {what}", at()))
}

/// Decode `n` values of `t` starting at column `first` of `row`.
fn decode_values(
    t: &TableSql,
    row: &Row<'_>,
    first: usize,
    n: usize,
    at: At<'_>,
) -> StoreResult<Vec<Value>> {
    (0..n)
        .map(|i| {
            let v = row
                .get_ref(first + i)
                .map_err(|_| corrupt(at, &format!("column {} is missing", t.names[i])))?;
            values::decode(t.types[i], v).map_err(|why| {
                corrupt(
                    at,
                    &format!("{}.{} ({}): {why}", t.desc.name, t.names[i], t.types[i]),
                )
            })
        })
        .collect()
}

fn int_at(row: &Row<'_>, i: usize, at: At<'_>, what: &str) -> StoreResult<i64> {
    row.get::<_, i64>(i)
        .map_err(|_| corrupt(at, &format!("{what} is not an integer")))
}

/// Decode one change-log row laid out as `seq, epoch, tbl, op, c0..`
/// starting at column `first`.
pub(super) fn change_from_row(tables: &Tables, row: &Row<'_>, first: usize) -> StoreResult<Change> {
    let seq = int_at(row, first, &|| "a change-log row".to_string(), "seq")?;
    let at = || format!("change-log seq {seq}");
    let epoch = int_at(row, first + 1, &at, "epoch")?;
    let tbl = match row.get_ref(first + 2) {
        Ok(rusqlite::types::ValueRef::Text(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    }
    .ok_or_else(|| corrupt(&at, "the table name is not text"))?;
    let op = int_at(row, first + 3, &at, "op")?;
    let pos = Position::new(
        u64::try_from(epoch).map_err(|_| corrupt(&at, "epoch is negative"))?,
        u64::try_from(seq).map_err(|_| corrupt(&at, "seq is negative"))?,
    );
    if op == super::ddl::OP_SCHEMA {
        let text = |i: usize, what: &str| {
            row.get::<_, String>(first + 4 + i)
                .map_err(|_| corrupt(&at, &format!("the schema change's {what} is not text")))
        };
        let version = int_at(row, first + 4, &at, "the schema version")?;
        let change = SchemaChange {
            version: u64::try_from(version)
                .map_err(|_| corrupt(&at, "the schema version is negative"))?,
            sqlite: text(1, "SQLite DDL")?,
            postgres: text(2, "PostgreSQL DDL")?,
            fingerprint: text(3, "fingerprint")?,
        };
        return Ok(Change {
            pos,
            op: ChangeOp::Schema(change),
        });
    }
    let t = tables.get_str(tbl)?;
    let op = match op {
        OP_UPSERT => ChangeOp::Upsert(RowImage::new(
            t.desc.name.clone(),
            t.desc.key_len(),
            decode_values(t, row, first + 4, t.types.len(), &at)?,
        )),
        OP_DELETE => ChangeOp::Delete {
            table: t.desc.name.clone(),
            key: decode_values(t, row, first + 4, t.desc.key_len(), &at)?,
        },
        other => return Err(corrupt(&at, &format!("unknown op code {other}"))),
    };
    Ok(Change { pos, op })
}

/// Decode one row selected with [`TableSql::select_all`] (or a page).
pub(super) fn image_from_table_row(t: &TableSql, row: &Row<'_>) -> StoreResult<RowImage> {
    let at = || format!("a row of table {}", t.desc.name);
    let values = decode_values(t, row, 0, t.types.len(), &at)?;
    Ok(RowImage::new(t.desc.name.clone(), t.desc.key_len(), values))
}

/// Check a received image (`full`) or key against the table's
/// description, so a change from a member with another schema fails by
/// name instead of writing wrong columns.
fn check_shape(
    t: &TableSql,
    values: &[Value],
    key_len: usize,
    full: bool,
    at: At<'_>,
) -> StoreResult<()> {
    let want = if full {
        t.types.len()
    } else {
        t.desc.key_len()
    };
    if key_len != t.desc.key_len() || values.len() != want {
        return Err(StoreError::Shape(format!(
            "{}: {} values with a key of {key_len} for table {}, which has {} columns and a key of {}: the members' schemas differ",
            at(),
            values.len(),
            t.desc.name,
            t.types.len(),
            t.desc.key_len()
        )));
    }
    Ok(())
}

/// The SQLite values of `values` (image order), with the column named on
/// a mismatch.
fn encode_all<'a>(
    t: &TableSql,
    values: &'a [Value],
    at: At<'_>,
) -> StoreResult<Vec<ToSqlOutput<'a>>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            values::encode(t.types[i], v).map_err(|why| {
                StoreError::Shape(format!(
                    "{}: {}.{} ({}): {why}",
                    at(),
                    t.desc.name,
                    t.names[i],
                    t.types[i]
                ))
            })
        })
        .collect()
}

/// Insert one snapshot row into its (emptied) table. The caller holds the
/// install transaction with `applying = 1`, so nothing is captured.
pub(super) fn insert_image(conn: &Connection, tables: &Tables, img: &RowImage) -> StoreResult<()> {
    let t = tables.get(&img.table)?;
    let at = || format!("a snapshot row of table {}", t.desc.name);
    check_shape(t, &img.values, img.key_len as usize, true, &at)?;
    let vals = encode_all(t, &img.values, &at)?;
    conn.prepare_cached(&t.insert)
        .and_then(|mut st| st.execute(rusqlite::params_from_iter(vals.iter())))
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("installing {}: {e}", at())))
}

fn i64_of(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

/// Write one change to its table (upsert with `ON CONFLICT DO UPDATE`, never
/// `INSERT OR REPLACE`, which deletes conflicting rows behind the delete
/// triggers' back) and record it in the change log under its own position.
/// The caller holds the apply transaction with `applying = 1`.
pub(super) fn apply_change(conn: &Connection, tables: &Tables, ch: &Change) -> StoreResult<()> {
    let t = tables.get_str(ch.table_str())?;
    let at = || format!("change {} ({} {})", ch.pos, t.desc.name, ch.op_name());
    let fail = |e: rusqlite::Error| StoreError::Backend(format!("applying {}: {e}", at()));
    let (op, values, row_sql, log_sql) = match &ch.op {
        ChangeOp::Upsert(img) => {
            check_shape(t, &img.values, img.key_len as usize, true, &at)?;
            (OP_UPSERT, &img.values, &t.upsert, &t.log_upsert)
        }
        ChangeOp::Delete { key, .. } => {
            check_shape(t, key, key.len(), false, &at)?;
            (OP_DELETE, key, &t.delete, &t.log_delete)
        }
        ChangeOp::Schema(_) => {
            return Err(StoreError::Shape(format!(
                "{}: a schema change is not a row change",
                at()
            )));
        }
    };
    let vals = encode_all(t, values, &at)?;
    conn.prepare_cached(row_sql)
        .and_then(|mut st| st.execute(rusqlite::params_from_iter(vals.iter())))
        .map_err(fail)?;
    let seq = i64_of(ch.pos.seq, "seq")?;
    let epoch = i64_of(ch.pos.epoch, "epoch")?;
    let head: [ToSqlOutput<'_>; 4] = [
        ToSqlOutput::from(seq),
        ToSqlOutput::from(epoch),
        ToSqlOutput::from(t.desc.name.as_str()),
        ToSqlOutput::from(op),
    ];
    conn.prepare_cached(log_sql)
        .and_then(|mut st| st.execute(rusqlite::params_from_iter(head.iter().chain(vals.iter()))))
        .map_err(fail)?;
    Ok(())
}
