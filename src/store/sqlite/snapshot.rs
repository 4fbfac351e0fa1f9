//! SQLite snapshots: a consistent chunked read of the application tables
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

use super::{Writer, connect, err, i64_of, not_initialised_or, position, rows};
use crate::model::{Entity, Position, RowImage};
use crate::store::{StoreError, StoreResult};
use rusqlite::{Connection, params};
use std::path::Path;

/// A consistent read of projects, jobs and keys (see
/// [`crate::store::MemberStore::snapshot_reader`]).
pub struct SqliteSnapshot {
    /// `None` only while a chunk is being read on the blocking pool.
    conn: Option<Connection>,
    position: Position,
    rows_total: u64,
    /// Index into [`Entity::ALL`] of the table being read.
    table: usize,
    /// Last rowid read in that table (keyset pagination).
    after_rowid: i64,
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
    pub(super) fn open(path: &Path, url: &str) -> StoreResult<SqliteSnapshot> {
        let conn = connect(path, url, false)?;
        conn.execute_batch("PRAGMA query_only = ON; BEGIN")
            .map_err(err)?;
        let position = position(&conn).map_err(|e| match e {
            StoreError::Backend(s) if s.contains("no such table") => StoreError::NotInitialised {
                url: url.to_string(),
            },
            other => other,
        })?;
        let total: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM projects) + (SELECT count(*) FROM jobs)
                        + (SELECT count(*) FROM keys)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| not_initialised_or(e, url))?;
        Ok(SqliteSnapshot {
            conn: Some(conn),
            position,
            rows_total: u64::try_from(total).unwrap_or(0),
            table: 0,
            after_rowid: 0,
        })
    }

    pub fn position(&self) -> Position {
        self.position
    }

    pub fn rows_total(&self) -> u64 {
        self.rows_total
    }

    pub async fn next_chunk(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<RowImage>> {
        if self.table >= Entity::ALL.len() {
            return Ok(Vec::new());
        }
        let conn = self.conn.take().ok_or_else(|| {
            StoreError::Backend("the snapshot reader was lost by an earlier failure".into())
        })?;
        let (table, after) = (self.table, self.after_rowid);
        let (conn, res) = tokio::task::spawn_blocking(move || {
            let res = read_chunk(&conn, table, after, max_rows, max_bytes);
            (conn, res)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("snapshot read task failed: {e}")))?;
        self.conn = Some(conn);
        let (rows, table, after) = res?;
        self.table = table;
        self.after_rowid = after;
        Ok(rows)
    }
}

/// Read up to `max_rows` rows (about `max_bytes`) from table index `table`
/// on, after `after` rowid. Returns the rows and where to continue.
fn read_chunk(
    conn: &Connection,
    mut table: usize,
    mut after: i64,
    max_rows: usize,
    max_bytes: usize,
) -> StoreResult<(Vec<RowImage>, usize, i64)> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while table < Entity::ALL.len() && out.len() < max_rows && bytes < max_bytes {
        let entity = Entity::ALL[table];
        let want = max_rows - out.len();
        let mut st = conn.prepare_cached(rows::table_page(entity)).map_err(err)?;
        let mut it = st
            .query(params![after, i64::try_from(want).unwrap_or(i64::MAX)])
            .map_err(err)?;
        let mut n = 0usize;
        while let Some(row) = it.next().map_err(err)? {
            let img = rows::image_from_table_row(entity, row)?;
            after = row.get(rows::table_page_rowid_index(entity)).map_err(err)?;
            n += 1;
            bytes = bytes.saturating_add(img.approx_bytes());
            out.push(img);
            if bytes >= max_bytes {
                break;
            }
        }
        if n < want && bytes < max_bytes {
            // The table is exhausted: go on with the next one.
            table += 1;
            after = 0;
        }
    }
    Ok((out, table, after))
}

/// Page cache of the writer during an install, in KiB.
const INSTALL_CACHE_KB: u32 = 32_768;

/// Restore the writer's default page cache after an install.
pub(super) fn reset_cache(conn: &Connection) {
    let _ = conn.execute_batch("PRAGMA cache_size = -2000");
}

/// Open the install transaction on the writer and empty the application
/// tables and the change log inside it.
pub(super) fn install_begin(w: &mut Writer, position: Position) -> StoreResult<()> {
    w.end_apply("snapshot install");
    let run = || -> rusqlite::Result<()> {
        // A bigger page cache for the install's one large transaction (the
        // default 2 MB spills dirty pages to the WAL over and over); bounded,
        // and set back at the end.
        w.conn
            .execute_batch(&format!("PRAGMA cache_size = -{INSTALL_CACHE_KB}"))?;
        w.conn.execute_batch(
            "BEGIN IMMEDIATE;
             UPDATE us_state SET applying = 1 WHERE id = 1;
             DELETE FROM keys;
             DELETE FROM jobs;
             DELETE FROM projects;
             DELETE FROM us_changelog;",
        )
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

pub(super) fn install_rows(w: &mut Writer, rows: &[RowImage]) -> StoreResult<()> {
    if w.installing.is_none() {
        return Err(StoreError::Backend(
            "no snapshot install is open (it was rolled back)".into(),
        ));
    }
    let res = rows.iter().try_for_each(|r| rows::insert_image(&w.conn, r));
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
