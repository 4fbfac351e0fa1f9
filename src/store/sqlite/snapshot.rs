//! SQLite snapshots: a consistent chunked read of the captured tables
//! (the active's side) and the install of one in a single write transaction
//! (the passive's side).
//!
//! Owns: the snapshot reader's own connection and its read transaction, and
//! the statements of an install.
//! Must never: read a snapshot on the shared reader connection (its read
//! transaction lives as long as the snapshot, and the shared reader must stay
//! short-lived), or let an install become visible before its commit.
//!
//! The reader keeps ONE read transaction open for the whole copy: that is
//! what makes the rows and the position one consistent state. In WAL mode the
//! writer carries on meanwhile; only checkpoints cannot pass the reader's
//! snapshot, so the WAL grows for the duration of the copy and is truncated
//! by the next checkpoint after it.

use super::rows::{self, TableSql, Tables};
use super::{Writer, connect, err, i64_of, not_initialised_or, position};
use crate::model::{Position, RowImage, SchemaChange};
use crate::store::{StoreError, StoreResult};
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Arc;

/// A consistent read of the captured tables (see
/// [`crate::store::MemberStore::snapshot_reader`]).
pub struct SqliteSnapshot {
    /// `None` only while a chunk is being read on the blocking pool.
    conn: Option<Connection>,
    tables: Arc<Tables>,
    position: Position,
    rows_total: u64,
    /// The schema changes the rows are shaped by, read in the snapshot's
    /// own read transaction.
    schema: Vec<SchemaChange>,
    /// Index into the catalog (parents first) of the table being read.
    table: usize,
    /// Where to continue in that table (keyset pagination).
    after: Cursor,
}

/// How far a table has been read: by rowid, or (WITHOUT ROWID tables) an
/// OFFSET into the key order (such tables are rare and small in practice).
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    rowid: i64,
    offset: i64,
}

impl std::fmt::Debug for SqliteSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSnapshot")
            .field("position", &self.position)
            .field("rows_total", &self.rows_total)
            .finish_non_exhaustive()
    }
}

impl SqliteSnapshot {
    /// Open a connection and pin its read transaction: the first read inside
    /// `BEGIN` fixes the snapshot, and the position and row counts are read
    /// in it, so they describe exactly the rows the chunks will return.
    pub(super) fn open(path: &Path, url: &str, tables: Arc<Tables>) -> StoreResult<SqliteSnapshot> {
        let conn = connect(path, url, false)?;
        conn.execute_batch("PRAGMA query_only = ON; BEGIN")
            .map_err(err)?;
        let position = position(&conn).map_err(|e| match e {
            StoreError::Backend(s) if s.contains("no such table") => StoreError::NotInitialised {
                url: url.to_string(),
            },
            other => other,
        })?;
        let mut total = 0i64;
        for t in &tables.tables {
            let n: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", rows::table_sql(&t.desc.name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| not_initialised_or(e, url))?;
            total += n;
        }
        let schema = super::ddl::changes(&conn)?;
        Ok(SqliteSnapshot {
            conn: Some(conn),
            tables,
            position,
            rows_total: u64::try_from(total).unwrap_or(0),
            schema,
            table: 0,
            after: Cursor::default(),
        })
    }

    pub fn position(&self) -> Position {
        self.position
    }

    pub fn rows_total(&self) -> u64 {
        self.rows_total
    }

    pub fn schema_changes(&self) -> &[SchemaChange] {
        &self.schema
    }

    pub async fn next_chunk(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<RowImage>> {
        if self.table >= self.tables.tables.len() {
            return Ok(Vec::new());
        }
        let conn = self.conn.take().ok_or_else(|| {
            StoreError::Backend("the snapshot reader was lost by an earlier failure".into())
        })?;
        let (table, after, tables) = (self.table, self.after, self.tables.clone());
        let (conn, res) = tokio::task::spawn_blocking(move || {
            let res = read_chunk(&conn, &tables, table, after, max_rows, max_bytes);
            (conn, res)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("snapshot read task failed: {e}")))?;
        self.conn = Some(conn);
        let (rows, table, after) = res?;
        self.table = table;
        self.after = after;
        Ok(rows)
    }
}

/// Read up to `max_rows` rows (about `max_bytes`) from table index `table`
/// on, after `after`. Returns the rows and where to continue.
fn read_chunk(
    conn: &Connection,
    tables: &Tables,
    mut table: usize,
    mut after: Cursor,
    max_rows: usize,
    max_bytes: usize,
) -> StoreResult<(Vec<RowImage>, usize, Cursor)> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while table < tables.tables.len() && out.len() < max_rows && bytes < max_bytes {
        let t = &tables.tables[table];
        let want = max_rows - out.len();
        let n = read_page(conn, t, &mut after, want, max_bytes, &mut bytes, &mut out)?;
        if n < want && bytes < max_bytes {
            // The table is exhausted: go on with the next one.
            table += 1;
            after = Cursor::default();
        }
    }
    Ok((out, table, after))
}

/// One page of `t` after `after` (moved on past what was read).
fn read_page(
    conn: &Connection,
    t: &TableSql,
    after: &mut Cursor,
    want: usize,
    max_bytes: usize,
    bytes: &mut usize,
    out: &mut Vec<RowImage>,
) -> StoreResult<usize> {
    let limit = i64::try_from(want).unwrap_or(i64::MAX);
    let by_offset;
    let (sql, arg) = match &t.page_by_rowid {
        Some(sql) => (sql.as_str(), after.rowid),
        None => {
            by_offset = format!(
                "{} ORDER BY {} LIMIT ?2 OFFSET ?1",
                t.select_all,
                (1..=t.desc.key_len())
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            (by_offset.as_str(), after.offset)
        }
    };
    let mut st = conn.prepare_cached(sql).map_err(err)?;
    let mut it = st.query(params![arg, limit]).map_err(err)?;
    let mut n = 0usize;
    while let Some(row) = it.next().map_err(err)? {
        let img = rows::image_from_table_row(t, row)?;
        if t.page_by_rowid.is_some() {
            after.rowid = row.get(t.types.len()).map_err(err)?;
        }
        after.offset += 1;
        n += 1;
        *bytes = bytes.saturating_add(img.approx_bytes());
        out.push(img);
        if *bytes >= max_bytes {
            break;
        }
    }
    Ok(n)
}

/// Page cache of the writer during an install, in KiB.
const INSTALL_CACHE_KB: u32 = 32_768;

/// Restore the writer's default page cache after an install.
pub(super) fn reset_cache(conn: &Connection) {
    let _ = conn.execute_batch("PRAGMA cache_size = -2000");
}

/// Open the install transaction on the writer and empty the captured
/// tables (children first) and the change log inside it.
pub(super) fn install_begin(
    w: &mut Writer,
    tables: &Tables,
    position: Position,
) -> StoreResult<()> {
    w.end_apply("snapshot install");
    let run = || -> rusqlite::Result<()> {
        // A bigger page cache for the install's one large transaction (the
        // default 2 MB spills dirty pages to the WAL over and over); bounded,
        // and set back at the end.
        w.conn
            .execute_batch(&format!("PRAGMA cache_size = -{INSTALL_CACHE_KB}"))?;
        let mut sql =
            String::from("BEGIN IMMEDIATE; UPDATE us_state SET applying = 1 WHERE id = 1;");
        for t in tables.tables.iter().rev() {
            sql.push_str(&format!("DELETE FROM {};", rows::table_sql(&t.desc.name)));
        }
        sql.push_str("DELETE FROM us_changelog;");
        w.conn.execute_batch(&sql)
    };
    if let Err(e) = run() {
        if !w.conn.is_autocommit() {
            let _ = w.conn.execute_batch("ROLLBACK");
        }
        return Err(err(e));
    }
    w.installing = Some(position);
    Ok(())
}

pub(super) fn install_rows(w: &mut Writer, tables: &Tables, rows: &[RowImage]) -> StoreResult<()> {
    if w.installing.is_none() {
        return Err(StoreError::Backend(
            "no snapshot install is open (it was rolled back)".into(),
        ));
    }
    let res = rows
        .iter()
        .try_for_each(|r| rows::insert_image(&w.conn, tables, r));
    if res.is_err() {
        w.end_apply("snapshot install failed");
    }
    res
}

/// Commit the install with its position as the applied position, and move
/// the change log's AUTOINCREMENT counter there, so changes captured on this
/// member later (once promoted) continue right after the snapshot.
pub(super) fn install_commit(w: &mut Writer) -> StoreResult<Position> {
    let Some(pos) = w.installing else {
        return Err(StoreError::Backend(
            "no snapshot install is open (it was rolled back)".into(),
        ));
    };
    let (e, s) = (i64_of(pos.epoch, "epoch")?, i64_of(pos.seq, "seq")?);
    let run = || -> rusqlite::Result<()> {
        w.conn.execute(
            "UPDATE us_state SET pos_epoch = ?1, pos_seq = ?2, applying = 0 WHERE id = 1",
            params![e, s],
        )?;
        // Whatever snapshot a quarantine left owed, this one pays it.
        w.conn.execute("DELETE FROM us_snapshot_due", [])?;
        let n = w.conn.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'us_changelog'",
            [s],
        )?;
        if n == 0 {
            w.conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('us_changelog', ?1)",
                [s],
            )?;
        }
        w.conn.execute_batch("COMMIT")
    };
    match run() {
        Ok(()) => {
            w.installing = None;
            reset_cache(&w.conn);
            Ok(pos)
        }
        Err(e) => {
            w.end_apply("snapshot commit failed");
            Err(err(e))
        }
    }
}
