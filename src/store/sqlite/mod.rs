//! The SQLite member database (rusqlite, bundled): the embedded default.
//!
//! Owns: connections to one member's SQLite file (one writer for apply, role
//! and lease; one reader for reads, state and checksums, so an open apply
//! transaction is invisible to reads; one probe for commit wake-ups), the
//! apply transaction, and the [`MemberStore`] contract for SQLite.
//! Must never: hold a read transaction open while waiting (it would starve
//! WAL checkpoints), run blocking SQLite calls on an async worker thread, or
//! put key content into an error.
//!
//! Capture and fencing live in the database itself (triggers, see
//! `schemas/sqlite/` and [`schema`]), so they hold for every writer, not only
//! for this process.

mod capture;
mod catalog;
mod checkpoint;
mod ddl;
mod divergence;
mod legacy;
mod rollback;
mod rows;
mod schema;
mod snapshot;
mod values;
mod wake;

pub use snapshot::SqliteSnapshot;

#[cfg(test)]
mod tests;

use super::{
    ChangeRead, DivergentChange, EpochRecord, InitParams, InitReport, MemberStore,
    ReplicationState, StoreError, StoreResult, Vote,
};
use crate::model::{Change, ChangeOp, Epoch, MemberId, Position, Role, SchemaChange};
use crate::tables::{CaptureSpec, Catalog, TableName};
use rows::Tables;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// SQL for "now" in the database's clock: integer ms since the Unix epoch.
/// (`unixepoch('subsec')` would need SQLite 3.42; this works in older shells.)
pub(super) const fn now_ms_sql() -> &'static str {
    "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
}

/// A database error as a store error. SQLite's messages name tables and
/// constraints, never values, so they carry no key content.
pub(super) fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// How long a connection waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection: room for every statement the
/// apply and read paths run on each captured table.
const STATEMENT_CACHE: usize = 256;

/// The writer connection and the apply transaction it may hold open.
struct Writer {
    conn: Connection,
    /// `Some(applied position so far)` while an apply transaction is open.
    apply: Option<Position>,
    /// `Some(snapshot position)` while a snapshot install transaction is open.
    installing: Option<Position>,
    /// The tables an open install's schema changes made (taken at its
    /// commit, dropped with a rollback).
    install_tables: Option<Arc<Tables>>,
}

impl Writer {
    /// Roll back an open apply transaction: a state change must commit on its
    /// own (a vote or a lease must be durable at once), never ride along with
    /// half-received changes. The applier resumes from the committed position.
    fn end_apply(&mut self, why: &str) {
        if self.apply.take().is_some() {
            tracing::warn!(reason = why, "rolling back an open apply transaction");
        }
        self.install_tables = None;
        if self.installing.take().is_some() {
            tracing::warn!(reason = why, "rolling back an open snapshot install");
            snapshot::reset_cache(&self.conn);
        }
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rollback of the apply transaction failed");
        }
    }
}

struct Inner {
    path: PathBuf,
    url: String,
    /// What the config says to capture.
    spec: CaptureSpec,
    /// The captured tables and their statements, read from the catalog at
    /// open and again by `init`.
    tables: RwLock<Arc<Tables>>,
    /// The captured tables of earlier schema versions, each with the seq
    /// of the schema change that ended it: change-log entries are read
    /// with the tables they were captured under.
    older: RwLock<Arc<ddl::OlderTables>>,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    waiter: wake::CommitWaiter,
    /// The WAL's length at the writer's last commit, for the checkpointer.
    wal_length: Arc<checkpoint::WalLength>,
}

/// One member's SQLite database. Cheap to share by reference; all blocking
/// work runs on tokio's blocking pool.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn url_of(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn connect(path: &Path, url: &str, create: bool) -> StoreResult<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let unreachable = |reason: String| StoreError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| unreachable(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| unreachable(e.to_string()))?;
    // NORMAL is durable across application crashes in WAL mode and loses at
    // most the last commits on power loss, which replication covers.
    // Foreign keys stay off: the apply path must reproduce exactly what the
    // active holds (its writers may not enforce them), and the project
    // cascade is a trigger that works either way.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
        .map_err(|e| unreachable(e.to_string()))?;
    // Room for every statement the apply and read paths cache (rusqlite
    // keeps 16 by default; a full cache evicts and re-parses in turn).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl SqliteStore {
    /// Open an existing member database (nothing is created or changed)
    /// and read the captured tables' description; a database `init` made
    /// whose tables cannot be captured is refused here, by name.
    pub async fn open(path: &Path, spec: &CaptureSpec) -> StoreResult<SqliteStore> {
        let (path, spec) = (path.to_path_buf(), spec.clone());
        tokio::task::spawn_blocking(move || Self::open_blocking(path, spec, false))
            .await
            .map_err(|e| StoreError::Backend(format!("open task failed: {e}")))?
    }

    /// Open the database, creating the file and its parent folders when
    /// missing: the path `understudy init` takes.
    pub async fn create(path: &Path, spec: &CaptureSpec) -> StoreResult<SqliteStore> {
        let (path, spec) = (path.to_path_buf(), spec.clone());
        tokio::task::spawn_blocking(move || Self::open_blocking(path, spec, true))
            .await
            .map_err(|e| StoreError::Backend(format!("open task failed: {e}")))?
    }

    fn tables(&self) -> Arc<Tables> {
        self.inner.tables()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn open_blocking(path: PathBuf, spec: CaptureSpec, create: bool) -> StoreResult<SqliteStore> {
        let url = url_of(&path);
        if create {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Unreachable {
                    url: url.clone(),
                    reason: format!("cannot create the folder {}: {e}", dir.display()),
                })?;
            }
        } else {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(StoreError::Unreachable {
                        url,
                        reason: "the path is not a regular file".into(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NotInitialised { url });
                }
                Err(e) => {
                    return Err(StoreError::Unreachable {
                        url,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let writer = connect(&path, &url, create)?;
        let reader = connect(&path, &url, false)?;
        // The reader only reads: make an accidental write fail loudly.
        reader
            .execute_batch("PRAGMA query_only = ON")
            .map_err(err)?;
        // Checkpoints run on their own thread (see `checkpoint`), never
        // inside the writer's (the applier's) commits. SQLite's automatic
        // checkpoint is itself a WAL hook, which ours replaces; the pragma
        // says so explicitly should the hook ever go. Our hook only tells
        // the checkpointer how long the WAL has grown.
        let mut writer = writer;
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(err)?;
        let wal_length = Arc::new(checkpoint::WalLength::new());
        let hook_length = wal_length.clone();
        writer
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: i32| {
                hook_length.committed(i64::from(frames));
                Ok(())
            }))
            .map_err(err)?;
        let checkpointer = connect(&path, &url, false)?;
        // Truncating waits for readers while the store's writer is held:
        // give up quickly and try again on a later turn.
        checkpointer
            .busy_timeout(checkpoint::TRUNCATE_WAIT)
            .map_err(err)?;
        let probe = connect(&path, &url, false)?;
        let waiter = wake::CommitWaiter::new(&path, probe)?;
        let (tables, older) = if create {
            (Tables::empty(), Vec::new())
        } else {
            (
                load_tables(&reader, &url, &spec)?,
                ddl::older_tables(&reader)?,
            )
        };
        let store = SqliteStore {
            inner: Arc::new(Inner {
                path,
                url,
                spec,
                tables: RwLock::new(Arc::new(tables)),
                older: RwLock::new(Arc::new(older)),
                writer: Mutex::new(Writer {
                    conn: writer,
                    apply: None,
                    installing: None,
                    install_tables: None,
                }),
                reader: Mutex::new(reader),
                waiter,
                wal_length,
            }),
        };
        checkpoint::start(checkpointer, Arc::downgrade(&store.inner));
        Ok(store)
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("database task failed: {e}")))?
    }

    async fn with_writer<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer, &str) -> StoreResult<T> + Send + 'static,
    {
        self.blocking(move |inner| {
            let mut w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer connection lock poisoned".into()))?;
            f(&mut w, &inner.url)
        })
        .await
    }

    async fn with_reader<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &str) -> StoreResult<T> + Send + 'static,
    {
        self.blocking(move |inner| {
            let r = inner
                .reader
                .lock()
                .map_err(|_| StoreError::Backend("reader connection lock poisoned".into()))?;
            f(&r, &inner.url)
        })
        .await
    }

    /// `init` stopping at schema version `upto` (tests of upgrades).
    async fn init_upto(&self, params: &InitParams, upto: u32) -> StoreResult<InitReport> {
        let p = params.clone();
        let inner = self.inner.clone();
        self.with_writer(move |w, url| {
            w.end_apply("init");
            let (report, catalog) = schema::init(&w.conn, url, &p, upto, &inner.spec)?;
            if let Some(c) = catalog {
                inner.set_tables(tables_of(&w.conn, Arc::new(c))?);
            }
            Ok(report)
        })
        .await
    }

    /// Run a short state change in its own write transaction.
    async fn state_write<T, F>(&self, what: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.with_writer(move |w, url| {
            w.end_apply(what);
            let run = || -> rusqlite::Result<T> {
                w.conn.execute_batch("BEGIN IMMEDIATE")?;
                let out = f(&w.conn)?;
                w.conn.execute_batch("COMMIT")?;
                Ok(out)
            };
            run().map_err(|e| {
                if !w.conn.is_autocommit() {
                    let _ = w.conn.execute_batch("ROLLBACK");
                }
                not_initialised_or(e, url)
            })
        })
        .await
    }
}

impl Inner {
    fn tables(&self) -> Arc<Tables> {
        match self.tables.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn older(&self) -> Arc<ddl::OlderTables> {
        match self.older.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// After a schema change: the new tables, and the history re-read.
    fn set_schema(&self, conn: &Connection, t: Tables) -> StoreResult<()> {
        let older = Arc::new(ddl::older_tables(conn)?);
        match self.older.write() {
            Ok(mut g) => *g = older,
            Err(p) => *p.into_inner() = older,
        }
        self.set_tables(t);
        Ok(())
    }

    fn set_tables(&self, t: Tables) {
        match self.tables.write() {
            Ok(mut g) => *g = Arc::new(t),
            Err(p) => *p.into_inner() = Arc::new(t),
        }
    }
}

/// Whether a table has a rowid (all but `WITHOUT ROWID` tables): snapshots
/// page by rowid where there is one.
fn has_rowid(conn: &Connection, t: &TableName) -> bool {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [t.as_str()],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten();
    !sql.is_some_and(|s| s.to_ascii_uppercase().contains("WITHOUT ROWID"))
}

fn tables_of(conn: &Connection, catalog: Arc<Catalog>) -> StoreResult<Tables> {
    Ok(Tables::new(catalog, |t| has_rowid(conn, t)))
}

/// The captured tables of a database `init` made (none before that).
fn load_tables(conn: &Connection, url: &str, spec: &CaptureSpec) -> StoreResult<Tables> {
    if schema::version(conn).map_err(err)?.is_none() {
        return Ok(Tables::empty());
    }
    let catalog = catalog::read_catalog(conn, spec).map_err(|source| StoreError::Catalog {
        url: url.to_string(),
        source,
    })?;
    tables_of(conn, Arc::new(catalog))
}

/// "no such table" on one of ours means `init` has not run.
fn not_initialised_or(e: rusqlite::Error, url: &str) -> StoreError {
    let s = e.to_string();
    if s.contains("no such table: us_") || s.contains("no such table: main.us_") {
        StoreError::NotInitialised {
            url: url.to_string(),
        }
    } else {
        err(e)
    }
}

fn u64_of(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({v})")))
}

fn i64_of(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

/// The member's position as seen by `conn`: the change log's newest entry,
/// or the recorded position when the log holds nothing newer (an empty log
/// after a snapshot, or a fresh member).
fn position(conn: &Connection) -> StoreResult<Position> {
    let (pe, ps, le, ls): (i64, i64, Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT pos_epoch, pos_seq,
                    (SELECT epoch FROM us_changelog ORDER BY seq DESC LIMIT 1),
                    (SELECT seq FROM us_changelog ORDER BY seq DESC LIMIT 1),
                    (SELECT count(*) FROM us_snapshot_due)
             FROM us_state WHERE id = 1",
        )
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))))
        .map_err(err)?;
    let recorded = Position::new(u64_of(pe, "pos_epoch")?, u64_of(ps, "pos_seq")?);
    match (le, ls) {
        (Some(e), Some(s)) if s >= ps => Ok(Position::new(u64_of(e, "epoch")?, u64_of(s, "seq")?)),
        _ => Ok(recorded),
    }
}

/// The state row as stored, with the change log's head.
struct RawState {
    cluster: String,
    member: String,
    role: String,
    epoch: i64,
    active: Option<String>,
    lease_until: Option<i64>,
    vote_epoch: Option<i64>,
    vote_candidate: Option<String>,
    paused: i64,
    pos_epoch: i64,
    pos_seq: i64,
    head_epoch: Option<i64>,
    head_seq: Option<i64>,
    snapshot_due: i64,
}

fn read_state(conn: &Connection, url: &str) -> StoreResult<ReplicationState> {
    // One statement: one snapshot of the state row and the log head.
    let raw = conn
        .query_row(
            "SELECT cluster, member, role, epoch, active, lease_until, vote_epoch, vote_candidate,
                    paused, pos_epoch, pos_seq,
                    (SELECT epoch FROM us_changelog ORDER BY seq DESC LIMIT 1),
                    (SELECT seq FROM us_changelog ORDER BY seq DESC LIMIT 1),
                    (SELECT count(*) FROM us_snapshot_due)
             FROM us_state WHERE id = 1",
            [],
            |r| {
                Ok(RawState {
                    cluster: r.get(0)?,
                    member: r.get(1)?,
                    role: r.get(2)?,
                    epoch: r.get(3)?,
                    active: r.get(4)?,
                    lease_until: r.get(5)?,
                    vote_epoch: r.get(6)?,
                    vote_candidate: r.get(7)?,
                    paused: r.get(8)?,
                    pos_epoch: r.get(9)?,
                    pos_seq: r.get(10)?,
                    head_epoch: r.get(11)?,
                    head_seq: r.get(12)?,
                    snapshot_due: r.get(13)?,
                })
            },
        )
        .optional()
        .map_err(|e| not_initialised_or(e, url))?;
    let Some(s) = raw else {
        return Err(StoreError::NotInitialised {
            url: url.to_string(),
        });
    };
    let role = Role::parse(&s.role).ok_or_else(|| {
        StoreError::Corrupt(format!("us_state.role has an unknown value {:?}", s.role))
    })?;
    let position = match (s.head_epoch, s.head_seq) {
        (Some(e), Some(q)) if q >= s.pos_seq => {
            Position::new(u64_of(e, "epoch")?, u64_of(q, "seq")?)
        }
        _ => Position::new(
            u64_of(s.pos_epoch, "pos_epoch")?,
            u64_of(s.pos_seq, "pos_seq")?,
        ),
    };
    let vote = match (s.vote_epoch, s.vote_candidate) {
        (Some(e), Some(c)) => Some(Vote {
            epoch: Epoch(u64_of(e, "vote_epoch")?),
            candidate: MemberId(c),
        }),
        _ => None,
    };
    Ok(ReplicationState {
        cluster: s.cluster,
        member: MemberId(s.member),
        role,
        epoch: Epoch(u64_of(s.epoch, "epoch")?),
        active: s.active.map(MemberId),
        position,
        lease_until_ms: s.lease_until,
        vote,
        paused: s.paused != 0,
        snapshot_due: s.snapshot_due > 0,
    })
}

/// The epoch a change-log entry holds at `seq`, if it is still there.
fn logged_epoch(conn: &Connection, seq: i64) -> StoreResult<Option<u64>> {
    let e: Option<i64> = conn
        .prepare_cached("SELECT epoch FROM us_changelog WHERE seq = ?1")
        .and_then(|mut st| st.query_row([seq], |r| r.get(0)).optional())
        .map_err(err)?;
    e.map(|e| u64_of(e, "epoch")).transpose()
}

/// Committed changes after `after_seq` (see [`MemberStore::read_changes`]).
fn read_log<'a>(
    c: &Connection,
    tables: &Tables,
    tables_at: &dyn Fn(u64) -> &'a Tables,
    url: &str,
    after_seq: u64,
    max_changes: usize,
    max_bytes: usize,
) -> StoreResult<ChangeRead> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    // One more row than allowed tells whether more remains.
    let limit = i64::try_from(max_changes.saturating_add(1)).unwrap_or(i64::MAX);
    let mut st = c
        .prepare_cached(&format!(
            "{} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            tables.log_select
        ))
        .map_err(|e| not_initialised_or(e, url))?;
    let mut it = st.query(params![after, limit]).map_err(err)?;
    let mut out = ChangeRead {
        changes: Vec::new(),
        at_head: true,
    };
    let mut bytes = 0usize;
    while let Some(row) = it.next().map_err(err)? {
        if out.changes.len() >= max_changes {
            out.at_head = false;
            break;
        }
        let seq: i64 = row.get(0).map_err(err)?;
        let ch = rows::change_from_row(tables_at(u64_of(seq, "seq")?), row, 0)?;
        let size = ch.approx_bytes();
        if !out.changes.is_empty() && bytes.saturating_add(size) > max_bytes {
            out.at_head = false;
            break;
        }
        bytes = bytes.saturating_add(size);
        out.changes.push(ch);
    }
    Ok(out)
}

/// Run one parameterless statement through the connection's statement cache.
fn run_cached(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .map(drop)
        .map_err(err)
}

/// Open the apply transaction unless one is open; the applied position.
fn open_apply(w: &mut Writer) -> StoreResult<Position> {
    if let Some(p) = w.apply {
        return Ok(p);
    }
    // Cached statements: every apply runs these, and parsing them anew
    // each time showed in profiles of a busy passive.
    run_cached(&w.conn, "BEGIN IMMEDIATE")?;
    // Visible only to this transaction: SQLite has one writer.
    run_cached(&w.conn, "UPDATE us_state SET applying = 1 WHERE id = 1")?;
    let p = position(&w.conn)?;
    w.apply = Some(p);
    Ok(p)
}

/// Whether `ch` comes next after `pos` (`Ok(true)`), was applied already
/// (`Ok(false)`), or does not follow (a gap or a fork the caller resolves).
fn is_next(w: &Writer, pos: Position, ch: &Change) -> StoreResult<bool> {
    let seq = ch.pos.seq;
    let out_of_order = || StoreError::OutOfOrder {
        applied: pos,
        got: ch.pos,
    };
    if seq <= pos.seq {
        // Already applied, unless the log holds another epoch there.
        let same = match logged_epoch(&w.conn, i64_of(seq, "seq")?)? {
            Some(e) => e == ch.pos.epoch,
            None => ch.pos <= pos,
        };
        return if same { Ok(false) } else { Err(out_of_order()) };
    }
    if seq != pos.seq + 1 || ch.pos.epoch < pos.epoch {
        return Err(out_of_order());
    }
    Ok(true)
}

fn set_position(conn: &Connection, pos: Position) -> StoreResult<()> {
    conn.prepare_cached("UPDATE us_state SET pos_epoch = ?1, pos_seq = ?2 WHERE id = 1")
        .and_then(|mut st| {
            st.execute(params![
                i64::try_from(pos.epoch).unwrap_or(i64::MAX),
                i64::try_from(pos.seq).unwrap_or(i64::MAX)
            ])
        })
        .map(drop)
        .map_err(err)
}

/// Apply row `changes` inside the (possibly already open) apply transaction.
fn apply_batch(w: &mut Writer, tables: &Tables, changes: &[Change]) -> StoreResult<Position> {
    let mut pos = open_apply(w)?;
    let start = pos;
    for ch in changes {
        if is_next(w, pos, ch)? {
            rows::apply_change(&w.conn, tables, ch)?;
            pos = ch.pos;
        }
    }
    if pos != start {
        set_position(&w.conn, pos)?;
        w.apply = Some(pos);
    }
    Ok(pos)
}

/// Commit the open apply transaction.
fn commit_apply(w: &mut Writer) -> StoreResult<()> {
    run_cached(&w.conn, "UPDATE us_state SET applying = 0 WHERE id = 1")?;
    run_cached(&w.conn, "COMMIT")?;
    w.apply = None;
    Ok(())
}

/// Apply a schema change in its own transaction (committing what was open
/// before it), and take the captured tables it leaves.
fn apply_schema(inner: &Inner, w: &mut Writer, ch: &Change, sc: &SchemaChange) -> StoreResult<()> {
    let pos = open_apply(w)?;
    if !is_next(w, pos, ch)? {
        return Ok(());
    }
    // What was applied before it stays, whatever becomes of the change.
    commit_apply(w)?;
    open_apply(w)?;
    let before = inner.tables().catalog.clone();
    let cat = ddl::apply_on_passive(&w.conn, &inner.url, &inner.spec, &before, sc, ch.pos)?;
    set_position(&w.conn, ch.pos)?;
    // No log read between the commit and the new tables.
    let _reads = inner
        .reader
        .lock()
        .map_err(|_| StoreError::Backend("reader connection lock poisoned".into()))?;
    commit_apply(w)?;
    tracing::info!(version = sc.version, position = %ch.pos, "applied schema change");
    inner.set_schema(&w.conn, tables_of(&w.conn, Arc::new(cat))?)?;
    Ok(())
}

/// Apply `changes`, row changes in the open apply transaction and each
/// schema change in a transaction of its own; commit at the end if asked.
fn apply_all(
    inner: &Inner,
    w: &mut Writer,
    changes: &[Change],
    commit: bool,
) -> StoreResult<Position> {
    let mut rest = changes;
    let mut pos = open_apply(w)?;
    while !rest.is_empty() {
        let n = rest
            .iter()
            .position(|c| matches!(c.op, ChangeOp::Schema(_)))
            .unwrap_or(rest.len());
        pos = apply_batch(w, &inner.tables(), &rest[..n])?;
        if let Some(ch) = rest.get(n)
            && let ChangeOp::Schema(sc) = &ch.op
        {
            apply_schema(inner, w, ch, sc)?;
            pos = open_apply(w)?;
        }
        rest = &rest[(n + 1).min(rest.len())..];
    }
    if commit {
        commit_apply(w)?;
    }
    Ok(pos)
}

impl MemberStore for SqliteStore {
    async fn init(&self, params: &InitParams) -> StoreResult<InitReport> {
        self.init_upto(params, schema::LATEST).await
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let (tables, example) = (self.tables(), self.inner.spec.example);
        self.with_reader(move |c, url| {
            schema::check_current(c, url, tables.catalog.tables(), example)
        })
        .await
    }

    async fn state(&self) -> StoreResult<ReplicationState> {
        self.with_reader(read_state).await
    }

    async fn sequence(&self) -> StoreResult<u64> {
        // Capture triggers write the change log directly, in commit order.
        Ok(0)
    }

    async fn read_changes(
        &self,
        after_seq: u64,
        max_changes: usize,
        max_bytes: usize,
    ) -> StoreResult<ChangeRead> {
        // One statement: one short read transaction, stepped lazily. The
        // tables are taken under the reader's lock, which a schema change
        // holds from its commit until its tables are in place.
        let inner = self.inner.clone();
        self.with_reader(move |c, url| {
            let (tables, older) = (inner.tables(), inner.older());
            let at = |seq: u64| super::versions::tables_at(&older, &tables, seq);
            read_log(c, &tables, &at, url, after_seq, max_changes, max_bytes)
        })
        .await
    }

    async fn apply(&self, changes: &[Change], commit: bool) -> StoreResult<Position> {
        let changes = changes.to_vec();
        self.blocking(move |inner| {
            let mut w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer connection lock poisoned".into()))?;
            let url = &inner.url;
            if w.installing.is_some() {
                return Err(StoreError::Backend(
                    "a snapshot install is open: changes apply after its commit".into(),
                ));
            }
            if w.apply.is_none() && changes.is_empty() {
                return position(&w.conn).map_err(|e| match e {
                    StoreError::Backend(s) if s.contains("no such table") => {
                        StoreError::NotInitialised {
                            url: url.to_string(),
                        }
                    }
                    other => other,
                });
            }
            let done = apply_all(inner, &mut w, &changes, commit);
            if done.is_err() {
                // Nothing of a failed batch may stay, nor an open transaction
                // with `applying = 1`.
                w.end_apply("apply failed");
            }
            done
        })
        .await
    }

    async fn abort_apply(&self) -> StoreResult<()> {
        self.with_writer(|w, _| {
            w.apply = None;
            w.installing = None;
            w.end_apply("abort_apply");
            Ok(())
        })
        .await
    }

    async fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> StoreResult<()> {
        let active = active.map(|m| m.0.clone());
        let epoch = i64_of(epoch.0, "epoch")?;
        let names: Vec<TableName> = self
            .tables()
            .catalog
            .tables()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        self.state_write("set_role", move |c| {
            // Leaving the active role expires the lease, so becoming active
            // again needs a renewal by a running agent.
            c.execute(
                "UPDATE us_state SET role = ?1, epoch = ?2, active = ?3,
                        lease_until = CASE WHEN ?1 = 'active' THEN lease_until ELSE 0 END
                 WHERE id = 1",
                params![role.as_str(), epoch, active],
            )?;
            capture::refresh_fence(c, &names)?;
            Ok(())
        })
        .await
    }

    async fn renew_lease(&self, lease: Duration) -> StoreResult<i64> {
        // The lease runs from the call, not from the moment the write lock
        // was won: time spent waiting for it (another process holding the
        // database, a long apply) comes off, so a stalled renewal can never
        // extend a lease past what the controller granted.
        let asked = std::time::Instant::now();
        let full = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        self.state_write("renew_lease", move |c| {
            let waited = i64::try_from(asked.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
            let ms = full.saturating_sub(waited);
            c.query_row(
                &format!(
                    "UPDATE us_state SET lease_until = {} + ?1 WHERE id = 1 RETURNING lease_until",
                    now_ms_sql()
                ),
                [ms],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn db_now_ms(&self) -> StoreResult<i64> {
        self.with_reader(|c, _| {
            c.query_row(&format!("SELECT {}", now_ms_sql()), [], |r| r.get(0))
                .map_err(err)
        })
        .await
    }

    async fn record_vote(&self, vote: &Vote) -> StoreResult<()> {
        let e = i64_of(vote.epoch.0, "vote epoch")?;
        let c = vote.candidate.0.clone();
        self.state_write("record_vote", move |conn| {
            conn.execute(
                "UPDATE us_state SET vote_epoch = ?1, vote_candidate = ?2 WHERE id = 1",
                params![e, c],
            )
            .map(drop)
        })
        .await
    }

    async fn set_paused(&self, paused: bool) -> StoreResult<()> {
        self.state_write("set_paused", move |c| {
            c.execute("UPDATE us_state SET paused = ?1 WHERE id = 1", [paused])
                .map(drop)
        })
        .await
    }

    async fn record_epoch(&self, rec: &EpochRecord) -> StoreResult<()> {
        let r = rec.clone();
        let epoch = i64_of(r.epoch.0, "epoch")?;
        let se = i64_of(r.start.epoch, "start epoch")?;
        let ss = i64_of(r.start.seq, "start seq")?;
        self.state_write("record_epoch", move |c| {
            c.execute(
                "INSERT INTO us_epoch_history (epoch, active, start_epoch, start_seq, at_ms, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (epoch) DO UPDATE SET active = excluded.active,
                   start_epoch = excluded.start_epoch, start_seq = excluded.start_seq,
                   at_ms = excluded.at_ms, reason = excluded.reason",
                params![epoch, r.active.0, se, ss, r.at_ms, r.reason],
            )
            .map(drop)
        })
        .await
    }

    async fn epoch_history(&self) -> StoreResult<Vec<EpochRecord>> {
        self.with_reader(|c, url| {
            let mut st = c
                .prepare(
                    "SELECT epoch, active, start_epoch, start_seq, at_ms, reason
                     FROM us_epoch_history ORDER BY epoch",
                )
                .map_err(|e| not_initialised_or(e, url))?;
            let raw = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            raw.into_iter()
                .map(|(e, a, se, ss, at, reason)| {
                    Ok(EpochRecord {
                        epoch: Epoch(u64_of(e, "epoch")?),
                        active: MemberId(a),
                        start: Position::new(u64_of(se, "start_epoch")?, u64_of(ss, "start_seq")?),
                        at_ms: at,
                        reason,
                    })
                })
                .collect()
        })
        .await
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.tables().catalog.clone()
    }

    async fn refresh_catalog(&self) -> StoreResult<()> {
        self.blocking(|inner| {
            let c = inner
                .reader
                .lock()
                .map_err(|_| StoreError::Backend("reader connection lock poisoned".into()))?;
            let fresh = load_tables(&c, &inner.url, &inner.spec)?;
            if fresh.catalog.fingerprint() != inner.tables().catalog.fingerprint() {
                tracing::warn!(
                    fingerprint = fresh.catalog.fingerprint(),
                    "the captured tables changed outside understudy"
                );
                inner.set_tables(fresh);
            }
            Ok(())
        })
        .await
    }

    async fn schema_history(&self) -> StoreResult<Vec<(u64, String)>> {
        self.with_reader(|c, _| ddl::history(c)).await
    }

    async fn migrate(&self, sqlite: &str, postgres: &str) -> StoreResult<(SchemaChange, Position)> {
        let (sqlite, postgres) = (sqlite.to_string(), postgres.to_string());
        self.blocking(move |inner| {
            let w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer connection lock poisoned".into()))?;
            if w.installing.is_some() || w.apply.is_some() {
                return Err(StoreError::Ddl(
                    "this member is applying changes or installing a snapshot: it is not the active".into(),
                ));
            }
            let before = inner.tables().catalog.clone();
            // No log read between the commit and the new tables.
            let _reads = inner
                .reader
                .lock()
                .map_err(|_| StoreError::Backend("reader connection lock poisoned".into()))?;
            let (sc, pos, cat) =
                ddl::run_on_active(&w.conn, &inner.url, &inner.spec, &before, &sqlite, &postgres)?;
            inner.set_schema(&w.conn, tables_of(&w.conn, Arc::new(cat))?)?;
            tracing::info!(version = sc.version, position = %pos, "ran schema change");
            Ok((sc, pos))
        })
        .await
    }

    async fn wait_for_commit(&self, timeout: Duration) -> StoreResult<bool> {
        self.inner.waiter.wait(timeout).await
    }

    async fn trim_log(&self, upto_seq: u64) -> StoreResult<u64> {
        let upto = i64::try_from(upto_seq).unwrap_or(i64::MAX);
        self.with_writer(move |w, url| {
            if w.installing.is_some() {
                // The install empties the log anyway.
                return Ok(0);
            }
            // Inside an open apply transaction the trim simply commits (or
            // rolls back) with it: trimming is never urgent, and aborting the
            // apply for it would waste the received changes.
            let sql = "DELETE FROM us_changelog
                       WHERE seq <= ?1 AND seq < (SELECT MAX(seq) FROM us_changelog)";
            w.conn
                .execute(sql, [upto])
                .map(|n| n as u64)
                .map_err(|e| not_initialised_or(e, url))
        })
        .await
    }

    async fn oldest_seq(&self) -> StoreResult<Option<u64>> {
        self.with_reader(|c, url| {
            let v: Option<i64> = c
                .query_row("SELECT MIN(seq) FROM us_changelog", [], |r| r.get(0))
                .map_err(|e| not_initialised_or(e, url))?;
            v.map(|v| u64_of(v, "seq")).transpose()
        })
        .await
    }

    async fn snapshot_reader(&self) -> StoreResult<crate::store::SnapshotReader> {
        self.blocking(|inner| SqliteSnapshot::open(&inner.path, &inner.url, inner.tables()))
            .await
            .map(crate::store::SnapshotReader::Sqlite)
    }

    async fn install_snapshot_begin(&self, position: Position) -> StoreResult<()> {
        let tables = self.tables();
        self.with_writer(move |w, _| snapshot::install_begin(w, &tables, position))
            .await
    }

    async fn install_snapshot_schema(&self, changes: &[SchemaChange]) -> StoreResult<()> {
        let changes = changes.to_vec();
        self.blocking(move |inner| {
            let mut w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer connection lock poisoned".into()))?;
            if w.installing.is_none() {
                return Err(StoreError::Backend(
                    "no snapshot install is open (it was rolled back)".into(),
                ));
            }
            let before = inner.tables().catalog.clone();
            let after = ddl::apply_in_install(&w.conn, &inner.url, &inner.spec, &before, &changes);
            match after {
                Ok(Some(cat)) => {
                    w.install_tables = Some(Arc::new(tables_of(&w.conn, Arc::new(cat))?));
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => {
                    w.end_apply("the snapshot's schema changes failed here");
                    Err(e)
                }
            }
        })
        .await
    }

    async fn install_snapshot_rows(&self, rows: &[crate::model::RowImage]) -> StoreResult<()> {
        let (rows, tables) = (rows.to_vec(), self.tables());
        self.with_writer(move |w, _| {
            let tables = w.install_tables.clone().unwrap_or(tables);
            snapshot::install_rows(w, &tables, &rows)
        })
        .await
    }

    async fn install_snapshot_commit(&self) -> StoreResult<Position> {
        self.blocking(|inner| {
            let mut w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer connection lock poisoned".into()))?;
            let new_tables = w.install_tables.take();
            // No log read between the commit and the new tables.
            let _reads = inner
                .reader
                .lock()
                .map_err(|_| StoreError::Backend("reader connection lock poisoned".into()))?;
            let pos = snapshot::install_commit(&mut w)?;
            if let Some(t) = new_tables {
                inner.set_schema(&w.conn, tables_of(&w.conn, t.catalog.clone())?)?;
            }
            Ok(pos)
        })
        .await
    }

    async fn quarantine_tail(&self, keep_upto: Position, reason: &str) -> StoreResult<u64> {
        let reason = reason.to_string();
        self.blocking(move |inner| {
            let mut w = inner
                .writer
                .lock()
                .map_err(|_| StoreError::Backend("writer connection lock poisoned".into()))?;
            let tables = inner.tables();
            // No log read between the commit and the given-back tables.
            let _reads = inner
                .reader
                .lock()
                .map_err(|_| StoreError::Backend("reader connection lock poisoned".into()))?;
            let (moved, given_back) = divergence::quarantine_tail(
                &mut w,
                &tables,
                &inner.spec,
                &inner.url,
                keep_upto,
                &reason,
            )?;
            if let Some(cat) = given_back {
                inner.set_schema(&w.conn, tables_of(&w.conn, Arc::new(cat))?)?;
            }
            Ok(moved)
        })
        .await
    }

    async fn divergence_list(&self, include_resolved: bool) -> StoreResult<Vec<DivergentChange>> {
        let inner = self.inner.clone();
        self.with_reader(move |c, url| {
            let (tables, older) = (inner.tables(), inner.older());
            divergence::list(c, &tables, &older, url, include_resolved)
        })
        .await
    }

    async fn resolve_divergence(&self, ids: Option<&[i64]>) -> StoreResult<u64> {
        let ids = ids.map(<[i64]>::to_vec);
        self.with_writer(move |w, url| divergence::resolve(w, url, ids))
            .await
    }

    async fn divergent_count(&self) -> StoreResult<u64> {
        self.with_reader(divergence::count).await
    }

    async fn take_over(
        &self,
        table: &TableName,
        column: &str,
        from: Option<&str>,
        to: &str,
    ) -> StoreResult<u64> {
        let t = self.tables();
        let desc = t.get(table)?;
        if desc.desc.column(column).is_none() {
            return Err(StoreError::Shape(format!(
                "[takeover] owner_column {column} is not a column of table {table}"
            )));
        }
        let (table, column) = (table.clone(), column.to_string());
        let (from, to) = (from.map(str::to_string), to.to_string());
        self.with_writer(move |w, url| divergence::take_over(w, url, &table, &column, from, to))
            .await
    }

    async fn advance_id_generators(&self) -> StoreResult<u64> {
        // SQLite moves a rowid table's next rowid and its AUTOINCREMENT
        // counter past any value inserted, explicit ones included.
        Ok(0)
    }

    async fn merge_epoch_history(&self, recs: &[EpochRecord]) -> StoreResult<u64> {
        let recs = recs.to_vec();
        self.with_writer(move |w, url| divergence::merge_epochs(w, url, recs))
            .await
    }
}
