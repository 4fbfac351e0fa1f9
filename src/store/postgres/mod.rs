//! The PostgreSQL member database (tokio-postgres).
//!
//! Owns: the PostgreSQL side of [`MemberStore`]: the captured tables'
//! description read from the catalog (`catalog`), capture through
//! generated triggers into the staging table `us_capture` (`capture`), the
//! sequencer that moves committed staged rows into `us_changelog` in commit
//! order, the set-based apply path (`apply`, `batch`), snapshots, the
//! fence/lease state row and LISTEN/NOTIFY wake-ups. The log row format is
//! in `values`.
//! Must never: read changes from `us_capture` (rows there are not yet in
//! commit order), put a value of a captured table or a password into an
//! error, or keep an apply transaction across a lost connection.
//!
//! Connections: `reader` (reads, state, checksums), `ctl` (state-row writes,
//! the sequencer, trims), a dedicated apply connection (its transaction may
//! stay open across calls, so nothing else may run on it) and the LISTEN
//! connection. Each reconnects on the next call after the server went away.

mod apply;
mod batch;
mod capture;
mod catalog;
mod conn;
mod ddl;
mod divergence;
pub mod schema;
mod snapshot;
mod takeover;
mod values;

pub use snapshot::PgSnapshot;

pub use schema::{EXAMPLE_SQL, LATEST as SCHEMA_VERSION, MIGRATIONS, Migration};

use super::versions::{self, Older};
use super::*;
use crate::model::{Epoch, MemberId, Position, Role};
use crate::tables::CatalogError;
use apply::ApplyConn;
use conn::{ClientSlot, Listener, query_error};
use std::sync::RwLock;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};
use values::{LOG_COLS, Tables};

/// The database clock in ms since the Unix epoch, as SQL.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A PostgreSQL member database.
pub struct PgStore {
    url: String,
    spec: CaptureSpec,
    /// The captured tables as last read from the catalog (at connect, and
    /// again by `init` and `check_schema`).
    held: RwLock<Held>,
    /// Held for reading while change-log rows are read and decoded, and
    /// for writing from a schema change's commit until its tables are in
    /// `held`: no entry after the change is ever decoded with the tables
    /// before it.
    schema_gate: tokio::sync::RwLock<()>,
    reader: ClientSlot,
    ctl: ClientSlot,
    // Boxed: the prepared statements make it large and `AnyStore` holds
    // a `PgStore` inline.
    apply: Box<Mutex<ApplyConn>>,
    listener: Listener,
}

/// The captured tables, or why they cannot be captured yet (a database
/// `init` has not prepared: the tables may not exist). `tables` is then
/// empty, and whatever needs them reports `problem`.
struct Held {
    tables: Arc<Tables>,
    /// Earlier schema versions' tables (`understudy migrate`): log
    /// entries older than a schema change are read with these.
    older: Arc<Older<Tables>>,
    problem: Option<CatalogError>,
}

fn to_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

fn to_u64(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what} {v}")))
}

impl PgStore {
    /// Connect without creating or changing anything and read the captured
    /// tables' description. Fails with `Unreachable` (password redacted)
    /// when the server cannot be reached; tables that cannot be captured
    /// (yet) are reported by `init`, `check_schema` and whatever needs
    /// them, not here: `init` must be able to connect to an empty database.
    pub async fn connect(url: &str, spec: &CaptureSpec) -> StoreResult<PgStore> {
        let reader = conn::connect(url).await?;
        let older = Arc::new(ddl::older_tables(&reader, url).await?);
        let held = match catalog::read_catalog(&reader, url, spec).await {
            Ok(c) => Held {
                tables: Arc::new(Tables::new(c)),
                older,
                problem: None,
            },
            Err(StoreError::Catalog { source, .. }) => Held {
                tables: Arc::new(Tables::new(
                    Catalog::build(Vec::new(), &[])
                        .map_err(|e| StoreError::Backend(format!("an empty catalog: {e}")))?,
                )),
                older,
                problem: Some(source),
            },
            Err(e) => return Err(e),
        };
        let ctl = conn::connect(url).await?;
        let listener = Listener::start(url).await?;
        Ok(PgStore {
            url: url.to_string(),
            spec: spec.clone(),
            held: RwLock::new(held),
            schema_gate: tokio::sync::RwLock::new(()),
            reader: ClientSlot::new(url, Some(reader)),
            ctl: ClientSlot::new(url, Some(ctl)),
            apply: Box::new(Mutex::new(ApplyConn::default())),
            listener,
        })
    }

    /// The captured tables, or why there are none to work with.
    fn tables(&self) -> StoreResult<Arc<Tables>> {
        let h = self.held.read().unwrap_or_else(|p| p.into_inner());
        match &h.problem {
            Some(p) => Err(StoreError::Catalog {
                url: self.redacted_url(),
                source: p.clone(),
            }),
            None => Ok(Arc::clone(&h.tables)),
        }
    }

    /// Take a fresh read of the catalog; an unchanged description keeps
    /// the old `Arc`, so the apply statements prepared for it stay.
    fn set_tables(&self, t: Tables) {
        let mut h = self.held.write().unwrap_or_else(|p| p.into_inner());
        if h.problem.is_none() && *h.tables.catalog == *t.catalog {
            return;
        }
        h.tables = Arc::new(t);
        h.problem = None;
    }

    /// The tables after a schema change (or a fresh read of the history),
    /// with the earlier versions' tables.
    fn set_schema(&self, t: Tables, older: Older<Tables>) {
        self.set_tables(t);
        let mut h = self.held.write().unwrap_or_else(|p| p.into_inner());
        h.older = Arc::new(older);
    }

    /// As [`PgStore::set_schema`], keeping the `Arc` the apply statements
    /// were prepared for.
    fn set_schema_arc(&self, t: Arc<Tables>, older: Older<Tables>) {
        let mut h = self.held.write().unwrap_or_else(|p| p.into_inner());
        h.tables = t;
        h.older = Arc::new(older);
        h.problem = None;
    }

    /// The current tables and the earlier versions', as one pair.
    fn tables_and_older(&self) -> StoreResult<(Arc<Tables>, Arc<Older<Tables>>)> {
        let tables = self.tables()?;
        let h = self.held.read().unwrap_or_else(|p| p.into_inner());
        Ok((tables, Arc::clone(&h.older)))
    }

    /// Read the earlier versions' tables again (after `init`, a check, an
    /// install).
    async fn reload_older(&self) -> StoreResult<()> {
        let c = self.reader.get().await?;
        let older = ddl::older_tables(&*c, &self.url).await?;
        let mut h = self.held.write().unwrap_or_else(|p| p.into_inner());
        h.older = Arc::new(older);
        Ok(())
    }

    /// The URL with its password hidden, for messages.
    pub fn redacted_url(&self) -> String {
        crate::config::redact_url(&self.url)
    }

    fn err(&self, e: &tokio_postgres::Error) -> StoreError {
        query_error(&self.url, e)
    }

    async fn ctl_execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        let c = self.ctl.get().await?;
        c.execute(sql, params).await.map_err(|e| self.err(&e))
    }

    /// After a fence committed: wait until every application transaction
    /// that passed the fence check before it has ended (schema 3: each write
    /// statement holds the shared fence lock to the end of its transaction),
    /// so what they commit is staged before the head is read. Bounded by
    /// [`FENCE_DRAIN`]: a transaction still open then is logged past the
    /// head when it commits, and a member that follows another active
    /// quarantines it (never lost silently). Returns whether it drained.
    ///
    /// A connection of its own: the shared control connection may carry
    /// other statements meanwhile, which must not run inside this
    /// transaction.
    async fn drain_writers(&self) -> StoreResult<bool> {
        let c = conn::connect(&self.url).await?;
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; \
             SELECT pg_advisory_xact_lock({FENCE_LOCK}); COMMIT",
            FENCE_DRAIN.as_millis()
        );
        match c.batch_execute(&sql).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::warn!(
                    waited_ms = FENCE_DRAIN.as_millis() as u64,
                    "fenced, but application transactions that began before the fence are \
                     still open; what they commit lands after the head this fence reports \
                     (a member following another active quarantines it)"
                );
                Ok(false)
            }
            Err(e) => Err(self.err(&e)),
        }
    }

    /// Update the single state row; a missing row means `init` never ran.
    async fn update_state(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<()> {
        match self.ctl_execute(sql, params).await? {
            0 => Err(StoreError::NotInitialised {
                url: self.redacted_url(),
            }),
            _ => Ok(()),
        }
    }

    async fn rollback_quietly(client: &Client) {
        // The transaction may already be gone with the connection.
        let _ = client.batch_execute("ROLLBACK").await;
    }
}

/// Decode a change-log row (`seq, epoch, tbl, op, i, r, b, t, x` from
/// column `base` on).
fn decode_change(tables: &Tables, r: &tokio_postgres::Row, base: usize) -> StoreResult<Change> {
    tables.decode_change(r, base).map_err(StoreError::Corrupt)
}

/// `tbl, op, ...` of [`LOG_COLS`] with a table alias.
fn log_cols_of(alias: &str) -> String {
    LOG_COLS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether staged rows are this member's own changes: it is the active, or
/// the active of its epoch that fenced itself (lease lost, switchover,
/// graceful stop). Rows that committed before such a fence passed the fence
/// trigger while the lease held, so they belong in the log (a switchover
/// waits for exactly them). On a member following another active they
/// cannot be its own epoch's changes: they go to the quarantine.
const OWN_LOG: &str = "(role = 'active' OR (role = 'fenced' AND active = member))";

/// The advisory lock application writers share while their transaction is
/// open (schema 3, `us_fence`) and a fence takes exclusively to wait for
/// them: "usfence" + 1.
const FENCE_LOCK: i64 = 0x7573_6665_6e63_6501;

/// How long a fence waits for application transactions that passed the
/// fence check before it (see [`PgStore::drain_writers`]).
const FENCE_DRAIN: Duration = Duration::from_secs(2);

/// The sequencer's one round trip (see [`MemberStore::sequence`]): lock the
/// state row, then move every committed staged row into the change log.
fn sequence_sql() -> String {
    let m = log_cols_of("m");
    format!(
        "SELECT 1 FROM us_state WHERE id = 1 FOR UPDATE; \
             WITH st AS (SELECT role, {OWN_LOG} AS own FROM us_state WHERE id = 1), \
             moved AS (DELETE FROM us_capture WHERE NOT (SELECT own FROM st) \
                       RETURNING id, epoch, {LOG_COLS}) \
             INSERT INTO us_divergence (epoch, seq, {LOG_COLS}, reason) \
             SELECT m.epoch, 0, {m}, \
                    'committed while this member was ' || (SELECT role FROM st) \
             FROM moved m ORDER BY m.id; \
             WITH base AS ( \
                 SELECT greatest(s.pos_seq, coalesce((SELECT max(seq) FROM us_changelog), 0)) AS seq, \
                        greatest(s.pos_epoch, coalesce((SELECT epoch FROM us_changelog \
                                                        ORDER BY seq DESC LIMIT 1), 0)) AS epoch \
                 FROM us_state s WHERE s.id = 1), \
             moved AS (DELETE FROM us_capture \
                       WHERE (SELECT {OWN_LOG} FROM us_state WHERE id = 1) \
                       RETURNING id, epoch, {LOG_COLS}), \
             ins AS ( \
                 INSERT INTO us_changelog (seq, epoch, {LOG_COLS}) \
                 SELECT base.seq + row_number() OVER (ORDER BY m.id), \
                        greatest(base.epoch, max(m.epoch) OVER (ORDER BY m.id ROWS UNBOUNDED PRECEDING)), \
                        {m} \
                 FROM moved m CROSS JOIN base \
                 RETURNING seq, epoch) \
             UPDATE us_state SET pos_seq = t.seq, pos_epoch = t.epoch \
             FROM (SELECT max(seq) AS seq, max(epoch) AS epoch, count(*) AS n FROM ins) t \
             WHERE us_state.id = 1 AND t.n > 0 \
             RETURNING t.n"
    )
}

/// The change log's head (epoch, seq), NULLs when the log is empty.
const LOG_HEAD: &str = "(SELECT epoch FROM us_changelog ORDER BY seq DESC LIMIT 1), \
                        (SELECT seq FROM us_changelog ORDER BY seq DESC LIMIT 1)";

/// A member's position: the recorded one, or the log's head when the log
/// holds more (as on SQLite). Every write of the log records the position
/// in the same transaction, so the two agree; a database written before
/// that held for applies (the position's UPDATE could commit apart from
/// its rows) recovers here instead of failing every re-apply on a
/// duplicate key.
fn position_of(
    pos_epoch: i64,
    pos_seq: i64,
    log_epoch: Option<i64>,
    log_seq: Option<i64>,
) -> StoreResult<Position> {
    match (log_epoch, log_seq) {
        (Some(e), Some(s)) if s > pos_seq => Ok(Position::new(
            to_u64(e, "log epoch")?,
            to_u64(s, "log seq")?,
        )),
        _ => Ok(Position::new(
            to_u64(pos_epoch, "position epoch")?,
            to_u64(pos_seq, "position seq")?,
        )),
    }
}

/// The position in the row of a simple query selecting `pos_epoch,
/// pos_seq, LOG_HEAD` (text values); `None` when it returned no row.
fn position_in(msgs: &[SimpleQueryMessage]) -> StoreResult<Option<Position>> {
    let Some(row) = msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    }) else {
        return Ok(None);
    };
    let int = |i: usize| -> StoreResult<Option<i64>> {
        row.get(i)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| StoreError::Corrupt(format!("us_state: {v:?} is not an integer")))
            })
            .transpose()
    };
    let required =
        |i: usize| int(i)?.ok_or_else(|| StoreError::Corrupt("us_state: a NULL position".into()));
    position_of(required(0)?, required(1)?, int(2)?, int(3)?).map(Some)
}

fn role_of(s: &str) -> StoreResult<Role> {
    Role::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown role {s:?}")))
}

impl MemberStore for PgStore {
    async fn init(&self, params: &InitParams) -> StoreResult<InitReport> {
        let (report, tables) = schema::init(&self.url, params, &self.spec).await?;
        self.set_tables(tables);
        self.reload_older().await?;
        Ok(report)
    }

    async fn refresh_catalog(&self) -> StoreResult<()> {
        self.check_schema().await
    }

    async fn schema_history(&self) -> StoreResult<Vec<(u64, String)>> {
        let c = self.reader.get().await?;
        ddl::history(&*c, &self.url).await
    }

    async fn migrate(&self, sqlite: &str, postgres: &str) -> StoreResult<(SchemaChange, Position)> {
        self.migrate_pg(sqlite, postgres).await
    }

    async fn install_snapshot_schema(&self, changes: &[SchemaChange]) -> StoreResult<()> {
        self.install_schema(changes).await
    }

    async fn check_schema(&self) -> StoreResult<()> {
        let c = self.reader.get().await?;
        let tables = schema::check(&*c, &self.url, &self.spec).await?;
        let older = ddl::older_tables(&*c, &self.url).await?;
        self.set_schema(tables, older);
        Ok(())
    }

    async fn state(&self) -> StoreResult<ReplicationState> {
        // The position is the head of the change log, committed changes
        // included: move what is staged first.
        self.sequence().await?;
        let c = self.reader.get().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT cluster, member, role, epoch, active, pos_epoch, pos_seq, lease_until, \
                            vote_epoch, vote_candidate, paused, \
                            EXISTS (SELECT 1 FROM us_snapshot_due), {LOG_HEAD} \
                     FROM us_state WHERE id = 1"
                ),
                &[],
            )
            .await
            .map_err(|e| self.err(&e))?
            .ok_or_else(|| StoreError::NotInitialised {
                url: self.redacted_url(),
            })?;
        let g = |e: tokio_postgres::Error| StoreError::Corrupt(format!("us_state: {e}"));
        let role: String = row.try_get(2).map_err(g)?;
        let active: Option<String> = row.try_get(4).map_err(g)?;
        let vote_epoch: Option<i64> = row.try_get(8).map_err(g)?;
        let vote_candidate: Option<String> = row.try_get(9).map_err(g)?;
        let vote = match (vote_epoch, vote_candidate) {
            (Some(e), Some(c)) => Some(Vote {
                epoch: Epoch(to_u64(e, "vote epoch")?),
                candidate: MemberId(c),
            }),
            _ => None,
        };
        Ok(ReplicationState {
            cluster: row.try_get(0).map_err(g)?,
            member: MemberId(row.try_get(1).map_err(g)?),
            role: role_of(&role)?,
            epoch: Epoch(to_u64(row.try_get(3).map_err(g)?, "epoch")?),
            active: active.map(MemberId),
            position: position_of(
                row.try_get(5).map_err(g)?,
                row.try_get(6).map_err(g)?,
                row.try_get(12).map_err(g)?,
                row.try_get(13).map_err(g)?,
            )?,
            lease_until_ms: row.try_get(7).map_err(g)?,
            vote,
            paused: row.try_get(10).map_err(g)?,
            snapshot_due: row.try_get(11).map_err(g)?,
        })
    }

    /// One round trip, one implicit transaction: lock the state row (so
    /// sequencers of this database run one after another), then move every
    /// committed staged row in a single statement. That statement's snapshot
    /// is taken after the lock, so it sees every earlier move and exactly the
    /// transactions committed before it: whole transactions, in commit order
    /// relative to every other move.
    ///
    /// Only an active member's staged rows join the log. On any other member
    /// a staged row is a write that got past the fence (its transaction began
    /// before the role changed and committed after): it is not part of the
    /// cluster's history, so it goes to the divergence quarantine instead of
    /// taking a seq that the active will use for something else.
    async fn sequence(&self) -> StoreResult<u64> {
        let c = self.ctl.get().await?;
        // A read first: the sequencing transaction locks the state row,
        // which gives it a transaction id and makes its commit wait for a
        // WAL flush even when nothing is staged. Callers sequence before
        // every state read, so that flush would come with every status
        // poll and head wake-up. Rows staged after this read are moved by
        // the next call (their NOTIFY wakes the head watcher).
        let staged = c
            .simple_query("SELECT EXISTS (SELECT 1 FROM us_capture) FROM us_state WHERE id = 1")
            .await
            .map_err(|e| self.err(&e))?;
        let staged = staged.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0) == Some("t")),
            _ => None,
        });
        match staged {
            None => {
                return Err(StoreError::NotInitialised {
                    url: self.redacted_url(),
                });
            }
            Some(false) => return Ok(0),
            Some(true) => {}
        }
        let sql = sequence_sql();
        let msgs = c.simple_query(&sql).await.map_err(|e| self.err(&e))?;
        let mut locked = false;
        let mut moved = 0u64;
        for m in &msgs {
            if let SimpleQueryMessage::Row(r) = m {
                match r.columns().first().map(|c| c.name()) {
                    Some("n") => {
                        let n = r.get(0).unwrap_or("0");
                        moved = n
                            .parse()
                            .map_err(|_| StoreError::Corrupt(format!("sequenced count {n:?}")))?;
                    }
                    _ => locked = true,
                }
            }
        }
        if !locked {
            return Err(StoreError::NotInitialised {
                url: self.redacted_url(),
            });
        }
        Ok(moved)
    }

    async fn read_changes(
        &self,
        after_seq: u64,
        max_changes: usize,
        max_bytes: usize,
    ) -> StoreResult<ChangeRead> {
        let after = to_i64(after_seq, "seq")?;
        let limit = i64::try_from(max_changes).unwrap_or(i64::MAX);
        let _gate = self.schema_gate.read().await;
        let (tables, older) = self.tables_and_older()?;
        let c = self.reader.get().await?;
        // The head and the rows come from one statement, hence one snapshot.
        let sql = format!(
            "WITH h AS (SELECT max(seq) AS head FROM us_changelog) \
             SELECT h.head, c.seq, c.epoch, {cols} \
             FROM h LEFT JOIN LATERAL ( \
                 SELECT * FROM us_changelog WHERE seq > $1 ORDER BY seq LIMIT $2) c ON true \
             ORDER BY c.seq",
            cols = log_cols_of("c")
        );
        let rows = c
            .query(&sql, &[&after, &limit])
            .await
            .map_err(|e| self.err(&e))?;
        let mut head: Option<i64> = None;
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        for r in &rows {
            head = r
                .try_get(0)
                .map_err(|e| StoreError::Corrupt(format!("change log head: {e}")))?;
            let seq: Option<i64> = r
                .try_get(1)
                .map_err(|e| StoreError::Corrupt(format!("change log row: {e}")))?;
            if seq.is_none() {
                break;
            }
            let at = versions::tables_at(&older, &tables, to_u64(seq.unwrap_or(0), "seq")?);
            let ch = decode_change(at, r, 1)?;
            let size = ch.approx_bytes();
            if !changes.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            changes.push(ch);
        }
        let head = head.map(|h| to_u64(h, "seq")).transpose()?.unwrap_or(0);
        let at_head = match changes.last() {
            Some(last) => last.pos.seq >= head,
            None => after_seq >= head,
        };
        Ok(ChangeRead { changes, at_head })
    }

    async fn apply(&self, changes: &[Change], commit: bool) -> StoreResult<Position> {
        self.apply_pg(changes, commit).await
    }

    async fn abort_apply(&self) -> StoreResult<()> {
        self.abort_apply_pg().await
    }

    async fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> StoreResult<()> {
        let e = to_i64(epoch.0, "epoch")?;
        // Changes committed under the current role are logged (or
        // quarantined) under it before the role changes.
        self.sequence().await?;
        self.update_state(
            // Leaving the active role also expires the lease, so a member
            // made active again refuses writes until its agent renews it.
            "UPDATE us_state SET role = $1, epoch = $2, active = $3, \
                 lease_until = CASE WHEN $1 = 'active' THEN lease_until ELSE 0 END \
             WHERE id = 1",
            &[&role.as_str(), &e, &active.map(MemberId::as_str)],
        )
        .await?;
        if role == Role::Fenced {
            self.drain_writers().await?;
        }
        Ok(())
    }

    async fn renew_lease(&self, lease: Duration) -> StoreResult<i64> {
        // The lease runs from the call: time spent before the statement
        // started comes off here, and the statement counts from its own
        // start (`statement_timestamp()`), not from when it won the state
        // row's lock, so a stalled renewal never extends a lease past what
        // the controller granted.
        let asked = std::time::Instant::now();
        let full = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let c = self.ctl.get().await?;
        let waited = i64::try_from(asked.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
        let ms = full.saturating_sub(waited);
        let row = c
            .query_opt(
                "UPDATE us_state SET lease_until = \
                 (extract(epoch from statement_timestamp()) * 1000)::bigint + $1 \
                 WHERE id = 1 RETURNING lease_until",
                &[&ms],
            )
            .await
            .map_err(|e| self.err(&e))?
            .ok_or_else(|| StoreError::NotInitialised {
                url: self.redacted_url(),
            })?;
        row.try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("lease_until: {e}")))
    }

    async fn db_now_ms(&self) -> StoreResult<i64> {
        let c = self.reader.get().await?;
        let row = c
            .query_one(&format!("SELECT {NOW_MS}"), &[])
            .await
            .map_err(|e| self.err(&e))?;
        row.try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("clock: {e}")))
    }

    async fn record_vote(&self, vote: &Vote) -> StoreResult<()> {
        let e = to_i64(vote.epoch.0, "epoch")?;
        self.update_state(
            "UPDATE us_state SET vote_epoch = $1, vote_candidate = $2 WHERE id = 1",
            &[&e, &vote.candidate.as_str()],
        )
        .await
    }

    async fn set_paused(&self, paused: bool) -> StoreResult<()> {
        self.update_state("UPDATE us_state SET paused = $1 WHERE id = 1", &[&paused])
            .await
    }

    async fn record_epoch(&self, rec: &EpochRecord) -> StoreResult<()> {
        let e = to_i64(rec.epoch.0, "epoch")?;
        let se = to_i64(rec.start.epoch, "epoch")?;
        let ss = to_i64(rec.start.seq, "seq")?;
        self.ctl_execute(
            "INSERT INTO us_epoch_history (epoch, active, start_epoch, start_seq, at_ms, reason) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (epoch) DO UPDATE SET active = EXCLUDED.active, \
                 start_epoch = EXCLUDED.start_epoch, start_seq = EXCLUDED.start_seq, \
                 at_ms = EXCLUDED.at_ms, reason = EXCLUDED.reason",
            &[&e, &rec.active.as_str(), &se, &ss, &rec.at_ms, &rec.reason],
        )
        .await?;
        Ok(())
    }

    async fn epoch_history(&self) -> StoreResult<Vec<EpochRecord>> {
        let c = self.reader.get().await?;
        let rows = c
            .query(
                "SELECT epoch, active, start_epoch, start_seq, at_ms, reason \
                 FROM us_epoch_history ORDER BY epoch",
                &[],
            )
            .await
            .map_err(|e| self.err(&e))?;
        let g = |e: tokio_postgres::Error| StoreError::Corrupt(format!("us_epoch_history: {e}"));
        rows.iter()
            .map(|r| {
                Ok(EpochRecord {
                    epoch: Epoch(to_u64(r.try_get(0).map_err(g)?, "epoch")?),
                    active: MemberId(r.try_get(1).map_err(g)?),
                    start: Position::new(
                        to_u64(r.try_get(2).map_err(g)?, "epoch")?,
                        to_u64(r.try_get(3).map_err(g)?, "seq")?,
                    ),
                    at_ms: r.try_get(4).map_err(g)?,
                    reason: r.try_get(5).map_err(g)?,
                })
            })
            .collect()
    }

    fn catalog(&self) -> Arc<Catalog> {
        let h = self.held.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&h.tables.catalog)
    }

    async fn wait_for_commit(&self, timeout: Duration) -> StoreResult<bool> {
        Ok(tokio::time::timeout(timeout, self.listener.wake.notified())
            .await
            .is_ok())
    }

    async fn trim_log(&self, upto_seq: u64) -> StoreResult<u64> {
        let upto = to_i64(upto_seq, "seq")?;
        self.ctl_execute(
            "DELETE FROM us_changelog WHERE seq <= $1 \
             AND seq < (SELECT max(seq) FROM us_changelog)",
            &[&upto],
        )
        .await
    }

    async fn oldest_seq(&self) -> StoreResult<Option<u64>> {
        let c = self.reader.get().await?;
        let row = c
            .query_one("SELECT min(seq) FROM us_changelog", &[])
            .await
            .map_err(|e| self.err(&e))?;
        let v: Option<i64> = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("change log: {e}")))?;
        v.map(|s| to_u64(s, "seq")).transpose()
    }

    async fn snapshot_reader(&self) -> StoreResult<SnapshotReader> {
        self.snapshot_open().await.map(SnapshotReader::Postgres)
    }

    async fn install_snapshot_begin(&self, position: Position) -> StoreResult<()> {
        self.install_begin(position).await
    }

    async fn install_snapshot_rows(&self, rows: &[RowImage]) -> StoreResult<()> {
        self.install_rows(rows).await
    }

    async fn install_snapshot_commit(&self) -> StoreResult<Position> {
        self.install_commit().await
    }

    async fn quarantine_tail(&self, keep_upto: Position, reason: &str) -> StoreResult<u64> {
        self.quarantine_tail_pg(keep_upto, reason).await
    }

    async fn divergence_list(&self, include_resolved: bool) -> StoreResult<Vec<DivergentChange>> {
        self.divergence_list_pg(include_resolved).await
    }

    async fn resolve_divergence(&self, ids: Option<&[i64]>) -> StoreResult<u64> {
        self.resolve_divergence_pg(ids).await
    }

    async fn divergent_count(&self) -> StoreResult<u64> {
        self.divergent_count_pg().await
    }

    async fn take_over(
        &self,
        table: &TableName,
        owner_column: &str,
        from: Option<&str>,
        to: &str,
    ) -> StoreResult<u64> {
        self.take_over_pg(table, owner_column, from, to).await
    }

    async fn advance_id_generators(&self) -> StoreResult<u64> {
        self.advance_id_generators_pg().await
    }

    async fn merge_epoch_history(&self, recs: &[EpochRecord]) -> StoreResult<u64> {
        self.merge_epoch_history_pg(recs).await
    }
}
