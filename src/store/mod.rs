//! The member database behind one narrow interface: [`MemberStore`], with an
//! SQLite and a PostgreSQL implementation and [`AnyStore`] to pick one at run
//! time from the config's URL.
//!
//! Owns: schemas (embedded from `schemas/`), capture triggers, the change log,
//! the replication state row (role, epoch, position, lease, vote, pause), epoch
//! history, per-table checksums, commit wake-ups.
//! Must never: decide roles (the controller does), talk to the network, or put
//! key content into an error message.

pub mod checksum;
pub mod conformance;
pub mod postgres;
pub mod sqlite;
pub(crate) mod versions;

use crate::config::DatabaseUrl;
use crate::model::{Change, Epoch, MemberId, Position, Role, RowImage, SchemaChange};
use crate::tables::{CaptureSpec, Catalog, CatalogError, TableName};
use std::sync::Arc;
use std::time::Duration;

/// Errors of the member database layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or opened.
    #[error("database {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Tables of our names exist with another shape: refuse rather than touch them.
    #[error(
        "database {url}: table {table} exists with another shape ({detail}); refusing to change it: point the config at another database or rename the table"
    )]
    SchemaMismatch {
        url: String,
        table: String,
        detail: String,
    },
    /// The captured tables cannot be captured as they are (named, with what
    /// to do).
    #[error("database {url}: {source}")]
    Catalog {
        url: String,
        #[source]
        source: CatalogError,
    },
    /// A change names a table or a row shape this member does not capture.
    #[error("{0}")]
    Shape(String),
    /// The database holds something the agent cannot decode.
    #[error("database holds a value the agent cannot read: {0}")]
    Corrupt(String),
    /// A change that does not follow the applied position (a gap or a fork).
    #[error("change {got} does not follow the applied position {applied}")]
    OutOfOrder { applied: Position, got: Position },
    /// `init` has not been run on this database.
    #[error("database {url} has no understudy schema: run `understudy init --config FILE` first")]
    NotInitialised { url: String },
    /// Any other database error, already free of secrets.
    #[error("database error: {0}")]
    Backend(String),
    /// A schema change's DDL failed on the active; nothing changed.
    #[error("the schema change failed and changed nothing: {0}")]
    Ddl(String),
    /// The operation is not allowed in this member's current role.
    #[error("refusing to {action}: this member is {role}")]
    WrongRole { role: Role, action: String },
    /// The change log no longer holds every change after `keep_upto` (older
    /// entries were trimmed, or a snapshot replaced the log): the divergent
    /// tail cannot be quarantined change by change. The caller falls back to
    /// a snapshot of the active (the tail is then lost from this member).
    #[error(
        "the change log no longer holds every change after {keep_upto} (head {head}, oldest kept seq {}): install a snapshot from the active instead",
        oldest.map_or_else(|| "none".to_string(), |s| s.to_string())
    )]
    TailIncomplete {
        keep_upto: Position,
        head: Position,
        oldest: Option<u64>,
    },
    /// This member's history forks at or below the position to keep: it
    /// holds `held` where the cluster's history has `keep_upto`. Quarantining
    /// the part after `keep_upto` would not make it agree; it needs a snapshot.
    #[error(
        "this member holds {held} where the position to keep is {keep_upto}: its history forks at or below it; install a snapshot from the active instead"
    )]
    ForkBelow { keep_upto: Position, held: Position },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What `init` needs to seed a new member's replication state.
#[derive(Clone, Debug)]
pub struct InitParams {
    pub cluster: String,
    pub member: MemberId,
    pub initial_active: MemberId,
}

/// What `init` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitReport {
    /// Schema version before (0 for a new database) and after.
    pub from_version: u32,
    pub to_version: u32,
}

/// A durably recorded vote: at most one per epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub epoch: Epoch,
    pub candidate: MemberId,
}

/// The member's replication state row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationState {
    pub cluster: String,
    pub member: MemberId,
    pub role: Role,
    pub epoch: Epoch,
    /// The active member as this member last knew it.
    pub active: Option<MemberId>,
    /// Last position in this member's change log: the head on an active, the
    /// applied position on a passive (the two are the same thing here).
    pub position: Position,
    /// Lease end in the database's own clock (ms since the Unix epoch); `None`
    /// means no lease is enforced yet (a fresh initial active before its agent
    /// first runs).
    pub lease_until_ms: Option<i64>,
    pub vote: Option<Vote>,
    /// Automatic failover suspended by an operator.
    pub paused: bool,
    /// A quarantine rewound this member's change log and the snapshot that
    /// restores the rows its tail changed has not been installed yet: the
    /// next connection to the active asks for one.
    pub snapshot_due: bool,
}

/// One row of epoch history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: Epoch,
    pub active: MemberId,
    /// The last position of the previous epoch the new active held: its own
    /// changes start right after it.
    pub start: Position,
    /// ms since the Unix epoch.
    pub at_ms: i64,
    /// failover, switchover, forced, initial ... with who asked.
    pub reason: String,
}

/// Checksum of one application table, independent of row order and backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableChecksum {
    pub table: String,
    pub rows: u64,
    /// Hex digest.
    pub digest: String,
}

/// A change kept in the divergence quarantine (SQLite `us_quarantine`,
/// PostgreSQL `us_divergence`): committed on this member but not part of the
/// cluster's history. `Debug` shows no key content (`Secret` redacts itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DivergentChange {
    /// The quarantine row's id (what `resolve_divergence` takes).
    pub id: i64,
    /// The change with the position it had in this member's log (seq 0 for
    /// a late write the PostgreSQL sequencer never gave a seq) and its full
    /// row image, key content included.
    pub change: Change,
    /// When it was quarantined, ms since the Unix epoch (database clock).
    pub quarantined_at_ms: i64,
    pub reason: String,
    /// Marked as dealt with by an operator.
    pub resolved: bool,
    /// The tables it was captured under, when they are in no version of
    /// this member's history any more (quarantined together with a schema
    /// change that was given back); `None`: the member's own.
    pub tables: Option<Arc<Catalog>>,
}

/// A read of committed changes.
#[derive(Clone, Debug, Default)]
pub struct ChangeRead {
    /// In commit order, seq ascending.
    pub changes: Vec<Change>,
    /// True when the read reached the change log's committed head as of the
    /// read: the last change then ends a whole number of application
    /// transactions, so a passive may commit there.
    pub at_head: bool,
}

/// The interface every member database backend implements; one conformance
/// suite ([`conformance`]) runs against each.
#[allow(async_fn_in_trait)]
pub trait MemberStore: Send + Sync {
    /// Create or upgrade the schema and seed the replication state (idempotent).
    async fn init(&self, params: &InitParams) -> StoreResult<InitReport>;
    /// Check the schema is ours and current; does not change anything.
    async fn check_schema(&self) -> StoreResult<()>;
    /// The replication state. Its position is the head with every change
    /// committed so far: a backend that stages changes sequences them first.
    async fn state(&self) -> StoreResult<ReplicationState>;
    /// Move captured, committed changes into the change log in commit order
    /// (PostgreSQL); a no-op where capture writes the log directly (SQLite).
    /// Returns how many changes were sequenced.
    async fn sequence(&self) -> StoreResult<u64>;
    /// Committed changes with `seq > after_seq`, at most `max_changes` and about
    /// `max_bytes`, in commit order.
    async fn read_changes(
        &self,
        after_seq: u64,
        max_changes: usize,
        max_bytes: usize,
    ) -> StoreResult<ChangeRead>;
    /// Apply changes received from the active under their original positions,
    /// without capturing them again and past the fence. Changes at or below the
    /// applied position are skipped (idempotent). With `commit`, the open apply
    /// transaction commits together with the new applied position; without, it
    /// stays open for the next call.
    async fn apply(&self, changes: &[Change], commit: bool) -> StoreResult<Position>;
    /// Roll back an open apply transaction (after a disconnect).
    async fn abort_apply(&self) -> StoreResult<()>;
    /// Set role, epoch and active. A role other than `Active` fences the
    /// database; `Active` lifts the fence (the lease still rules).
    async fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> StoreResult<()>;
    /// Renew the lease: `lease_until = db_now + lease`. Returns the new end.
    async fn renew_lease(&self, lease: Duration) -> StoreResult<i64>;
    /// The database's clock, ms since the Unix epoch.
    async fn db_now_ms(&self) -> StoreResult<i64>;
    /// Durably record a vote (before the reply leaves).
    async fn record_vote(&self, vote: &Vote) -> StoreResult<()>;
    async fn set_paused(&self, paused: bool) -> StoreResult<()>;
    async fn record_epoch(&self, rec: &EpochRecord) -> StoreResult<()>;
    async fn epoch_history(&self) -> StoreResult<Vec<EpochRecord>>;
    /// The captured tables as this database describes them (read at open
    /// and at init).
    fn catalog(&self) -> Arc<Catalog>;
    /// Per-table checksums of the captured tables, from one consistent read
    /// (see [`checksums_at_position`]).
    async fn checksums(&self) -> StoreResult<Vec<TableChecksum>>
    where
        Self: Sized,
    {
        Ok(checksums_at_position(self).await?.1)
    }
    /// Every schema version this member went through (`understudy
    /// migrate`), oldest first, with its fingerprint; empty before the
    /// first migration. The last entry is the version the member is at.
    async fn schema_history(&self) -> StoreResult<Vec<(u64, String)>>;
    /// Read the captured tables' description from the database again (a
    /// schema changed by hand shows in the next handshake's fingerprint).
    async fn refresh_catalog(&self) -> StoreResult<()>;
    /// The schema version this member is at (0 before any migration).
    async fn schema_version(&self) -> StoreResult<u64> {
        Ok(self.schema_history().await?.last().map_or(0, |h| h.0))
    }
    /// Run a schema change on this member, the active: each backend's DDL
    /// (this member runs its own) in one transaction with the change's log
    /// entry. A DDL that fails changes nothing ([`StoreError::Ddl`]).
    async fn migrate(&self, sqlite: &str, postgres: &str) -> StoreResult<(SchemaChange, Position)>;
    /// Inside an open snapshot install: run the schema changes of
    /// `changes` this member lacks (the snapshot's rows are shaped by
    /// them), each checked against its fingerprint. They commit or roll
    /// back with the install.
    async fn install_snapshot_schema(&self, changes: &[SchemaChange]) -> StoreResult<()>;
    /// Wait until a commit may have happened since the last call, or until
    /// `timeout` (the safety-net poll). Returns true when woken by a hint.
    async fn wait_for_commit(&self, timeout: Duration) -> StoreResult<bool>;
    /// Delete change-log entries with `seq <= upto_seq`, always keeping the
    /// newest entry. Returns how many were removed.
    async fn trim_log(&self, upto_seq: u64) -> StoreResult<u64>;
    /// The oldest seq still in the change log (None when empty).
    async fn oldest_seq(&self) -> StoreResult<Option<u64>>;
    /// Open a consistent read of projects, jobs and keys, pinned at the
    /// position the tables hold as of that read (on PostgreSQL, committed
    /// staged changes are sequenced first, so the position is exact). The
    /// reader holds its own connection and read transaction until dropped;
    /// rows are fetched in bounded chunks, never all at once.
    async fn snapshot_reader(&self) -> StoreResult<SnapshotReader>;
    /// Start installing a snapshot taken at `position`: opens the apply
    /// transaction (apply flag set: nothing is captured or fenced) and empties
    /// the application tables and the change log inside it. Readers keep
    /// seeing the old contents until [`MemberStore::install_snapshot_commit`].
    /// [`MemberStore::abort_apply`] rolls an unfinished install back.
    async fn install_snapshot_begin(&self, position: Position) -> StoreResult<()>;
    /// Insert snapshot rows into the open install transaction.
    async fn install_snapshot_rows(&self, rows: &[RowImage]) -> StoreResult<()>;
    /// Commit the install together with the snapshot's position as the
    /// applied position and a change log that continues right after it.
    async fn install_snapshot_commit(&self) -> StoreResult<Position>;

    /// Rewind this member's history to `keep_upto` (rejoin of a former
    /// active): in one transaction, copy every change-log entry with
    /// `seq > keep_upto.seq` into the divergence quarantine (full row images,
    /// key content included, with their positions and `reason`), delete them
    /// from the change log and set the position to `keep_upto`. Application
    /// rows are not touched: the caller restores them (from the active).
    /// An open apply transaction is rolled back first.
    ///
    /// Returns how many changes were quarantined; 0, changing nothing, when
    /// the member holds nothing past `keep_upto` (a repeat is harmless).
    /// Refused with [`StoreError::WrongRole`] on the active member; with
    /// [`StoreError::TailIncomplete`] when the log no longer holds the whole
    /// tail (trimmed, or emptied by a snapshot); with
    /// [`StoreError::ForkBelow`] when the member's history differs at or
    /// below `keep_upto`. In those two cases nothing changes and the caller
    /// falls back to a snapshot.
    async fn quarantine_tail(&self, keep_upto: Position, reason: &str) -> StoreResult<u64>;
    /// Quarantined changes, oldest first; resolved ones only when asked.
    async fn divergence_list(&self, include_resolved: bool) -> StoreResult<Vec<DivergentChange>>;
    /// Mark quarantined changes as resolved: those with the given ids, or
    /// every unresolved one (`None`). Returns how many changed; ids that do
    /// not exist or are resolved already are not counted.
    async fn resolve_divergence(&self, ids: Option<&[i64]>) -> StoreResult<u64>;
    /// How many quarantined changes are unresolved (shown in status).
    async fn divergent_count(&self) -> StoreResult<u64>;
    /// Give the rows of `table` whose `owner_column` is `from` (`None`: rows
    /// without an owner) to `to`. An ordinary application write: fenced
    /// like any other (it succeeds only on an active with a valid lease, and
    /// fails with the fence's message elsewhere), captured into the change
    /// log and replicated. Returns how many rows changed owner.
    async fn take_over(
        &self,
        table: &TableName,
        owner_column: &str,
        from: Option<&str>,
        to: &str,
    ) -> StoreResult<u64>;
    /// Move every id generator of the captured tables (PostgreSQL
    /// sequences behind `bigserial`, identity columns and `DEFAULT
    /// nextval(...)`) past the largest value its column holds, so the
    /// application's next insert with a default id does not collide with a
    /// replicated row. Called by a new active before it lifts its fence.
    /// SQLite moves rowids and `AUTOINCREMENT` counters by itself: a no-op
    /// there. Returns how many generators moved.
    async fn advance_id_generators(&self) -> StoreResult<u64>;
    /// Insert the epoch-history records whose epoch this member does not
    /// hold yet; existing epochs are left as they are. Allowed in every role
    /// (epoch history is agent state, not fenced). As with `record_epoch`,
    /// SQLite rolls back an open apply transaction first (one writer
    /// connection); PostgreSQL writes on its own connection. Returns how many
    /// records were new.
    async fn merge_epoch_history(&self, recs: &[EpochRecord]) -> StoreResult<u64>;
}

/// A consistent, chunked read of the captured tables (see
/// [`MemberStore::snapshot_reader`]), table by table in the catalog's
/// parents-first order, so an installer never meets a row before the row
/// it references.
pub enum SnapshotReader {
    Sqlite(sqlite::SqliteSnapshot),
    Postgres(postgres::PgSnapshot),
}

impl SnapshotReader {
    /// The change-log position the snapshot's rows reflect exactly.
    pub fn position(&self) -> Position {
        match self {
            SnapshotReader::Sqlite(s) => s.position(),
            SnapshotReader::Postgres(s) => s.position(),
        }
    }

    /// The schema changes the rows are shaped by (read with them).
    pub fn schema_changes(&self) -> Vec<SchemaChange> {
        match self {
            SnapshotReader::Sqlite(s) => s.schema_changes().to_vec(),
            SnapshotReader::Postgres(s) => s.schema_changes().to_vec(),
        }
    }

    /// Rows in the captured tables as of the snapshot.
    pub fn rows_total(&self) -> u64 {
        match self {
            SnapshotReader::Sqlite(s) => s.rows_total(),
            SnapshotReader::Postgres(s) => s.rows_total(),
        }
    }

    /// The next rows: at most `max_rows`, and no more than about `max_bytes`
    /// (at least one row). Empty once every table has been read.
    pub async fn next_chunk(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<RowImage>> {
        let max_rows = max_rows.max(1);
        match self {
            SnapshotReader::Sqlite(s) => s.next_chunk(max_rows, max_bytes).await,
            SnapshotReader::Postgres(s) => s.next_chunk(max_rows, max_bytes).await,
        }
    }
}

/// Per-table checksums and the exact position they were taken at, from one
/// consistent read (a snapshot reader: no pause of the writers needed).
pub async fn checksums_at_position<S: MemberStore>(
    store: &S,
) -> StoreResult<(Position, Vec<TableChecksum>)> {
    let reader = store.snapshot_reader().await?;
    checksums_of(reader, &store.catalog()).await
}

/// Hash every row a snapshot reader yields, one checksum per table of
/// `catalog` (in its order); see [`checksums_at_position`].
pub async fn checksums_of(
    mut reader: SnapshotReader,
    catalog: &Catalog,
) -> StoreResult<(Position, Vec<TableChecksum>)> {
    let mut hashers = vec![checksum::TableHasher::default(); catalog.tables().len()];
    loop {
        let rows = reader.next_chunk(5000, 8 << 20).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let (id, _) = catalog.get(&r.table).ok_or_else(|| {
                StoreError::Shape(format!("snapshot row of uncaptured table {}", r.table))
            })?;
            hashers[id.0].add(r);
        }
    }
    let sums = catalog
        .tables()
        .iter()
        .zip(hashers.iter())
        .map(|(t, h)| TableChecksum {
            table: t.name.to_string(),
            rows: h.rows(),
            digest: h.digest(),
        })
        .collect();
    Ok((reader.position(), sums))
}

/// One of the backends, chosen from the config's database URL.
pub enum AnyStore {
    Sqlite(sqlite::SqliteStore),
    /// Boxed: the PostgreSQL store is much larger than the SQLite one.
    Postgres(Box<postgres::PgStore>),
}

impl AnyStore {
    /// Connect (without creating or changing anything) and read the
    /// captured tables' description from the database's catalog.
    pub async fn open(url: &DatabaseUrl, capture: &CaptureSpec) -> StoreResult<AnyStore> {
        Ok(match url {
            DatabaseUrl::Sqlite(path) => {
                AnyStore::Sqlite(sqlite::SqliteStore::open(path, capture).await?)
            }
            DatabaseUrl::Postgres(u) => {
                AnyStore::Postgres(Box::new(postgres::PgStore::connect(u, capture).await?))
            }
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl MemberStore for AnyStore {
    async fn init(&self, p: &InitParams) -> StoreResult<InitReport> {
        delegate!(self, s => s.init(p).await)
    }
    async fn check_schema(&self) -> StoreResult<()> {
        delegate!(self, s => s.check_schema().await)
    }
    async fn state(&self) -> StoreResult<ReplicationState> {
        delegate!(self, s => s.state().await)
    }
    async fn sequence(&self) -> StoreResult<u64> {
        delegate!(self, s => s.sequence().await)
    }
    async fn read_changes(&self, a: u64, n: usize, b: usize) -> StoreResult<ChangeRead> {
        delegate!(self, s => s.read_changes(a, n, b).await)
    }
    async fn apply(&self, c: &[Change], commit: bool) -> StoreResult<Position> {
        delegate!(self, s => s.apply(c, commit).await)
    }
    async fn abort_apply(&self) -> StoreResult<()> {
        delegate!(self, s => s.abort_apply().await)
    }
    async fn set_role(&self, r: Role, e: Epoch, a: Option<&MemberId>) -> StoreResult<()> {
        delegate!(self, s => s.set_role(r, e, a).await)
    }
    async fn renew_lease(&self, l: Duration) -> StoreResult<i64> {
        delegate!(self, s => s.renew_lease(l).await)
    }
    async fn db_now_ms(&self) -> StoreResult<i64> {
        delegate!(self, s => s.db_now_ms().await)
    }
    async fn record_vote(&self, v: &Vote) -> StoreResult<()> {
        delegate!(self, s => s.record_vote(v).await)
    }
    async fn set_paused(&self, p: bool) -> StoreResult<()> {
        delegate!(self, s => s.set_paused(p).await)
    }
    async fn record_epoch(&self, r: &EpochRecord) -> StoreResult<()> {
        delegate!(self, s => s.record_epoch(r).await)
    }
    async fn epoch_history(&self) -> StoreResult<Vec<EpochRecord>> {
        delegate!(self, s => s.epoch_history().await)
    }
    fn catalog(&self) -> Arc<Catalog> {
        delegate!(self, s => s.catalog())
    }
    async fn wait_for_commit(&self, t: Duration) -> StoreResult<bool> {
        delegate!(self, s => s.wait_for_commit(t).await)
    }
    async fn schema_history(&self) -> StoreResult<Vec<(u64, String)>> {
        delegate!(self, s => s.schema_history().await)
    }
    async fn refresh_catalog(&self) -> StoreResult<()> {
        delegate!(self, s => s.refresh_catalog().await)
    }
    async fn migrate(&self, sqlite: &str, postgres: &str) -> StoreResult<(SchemaChange, Position)> {
        delegate!(self, s => s.migrate(sqlite, postgres).await)
    }
    async fn install_snapshot_schema(&self, changes: &[SchemaChange]) -> StoreResult<()> {
        delegate!(self, s => s.install_snapshot_schema(changes).await)
    }
    async fn trim_log(&self, upto: u64) -> StoreResult<u64> {
        delegate!(self, s => s.trim_log(upto).await)
    }
    async fn oldest_seq(&self) -> StoreResult<Option<u64>> {
        delegate!(self, s => s.oldest_seq().await)
    }
    async fn snapshot_reader(&self) -> StoreResult<SnapshotReader> {
        delegate!(self, s => s.snapshot_reader().await)
    }
    async fn install_snapshot_begin(&self, p: Position) -> StoreResult<()> {
        delegate!(self, s => s.install_snapshot_begin(p).await)
    }
    async fn install_snapshot_rows(&self, rows: &[RowImage]) -> StoreResult<()> {
        delegate!(self, s => s.install_snapshot_rows(rows).await)
    }
    async fn install_snapshot_commit(&self) -> StoreResult<Position> {
        delegate!(self, s => s.install_snapshot_commit().await)
    }
    async fn quarantine_tail(&self, keep: Position, reason: &str) -> StoreResult<u64> {
        delegate!(self, s => s.quarantine_tail(keep, reason).await)
    }
    async fn divergence_list(&self, include_resolved: bool) -> StoreResult<Vec<DivergentChange>> {
        delegate!(self, s => s.divergence_list(include_resolved).await)
    }
    async fn resolve_divergence(&self, ids: Option<&[i64]>) -> StoreResult<u64> {
        delegate!(self, s => s.resolve_divergence(ids).await)
    }
    async fn divergent_count(&self) -> StoreResult<u64> {
        delegate!(self, s => s.divergent_count().await)
    }
    async fn take_over(
        &self,
        table: &TableName,
        column: &str,
        from: Option<&str>,
        to: &str,
    ) -> StoreResult<u64> {
        delegate!(self, s => s.take_over(table, column, from, to).await)
    }
    async fn advance_id_generators(&self) -> StoreResult<u64> {
        delegate!(self, s => s.advance_id_generators().await)
    }
    async fn merge_epoch_history(&self, recs: &[EpochRecord]) -> StoreResult<u64> {
        delegate!(self, s => s.merge_epoch_history(recs).await)
    }
}

/// Create the database if needed (SQLite file and folders) and run `init`.
pub async fn init_database(
    url: &DatabaseUrl,
    params: &InitParams,
    capture: &CaptureSpec,
) -> StoreResult<InitReport> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            sqlite::SqliteStore::create(path, capture)
                .await?
                .init(params)
                .await
        }
        DatabaseUrl::Postgres(u) => {
            postgres::PgStore::connect(u, capture)
                .await?
                .init(params)
                .await
        }
    }
}
