//! Schema changes of the captured tables on PostgreSQL (`understudy
//! migrate`): run on the active together with their change-log entry, and
//! applied by a passive at that entry's position (or inside a snapshot
//! install that brings the member past it).
//!
//! Owns: the `us_app_schema` history (schema 6), the schema-change log
//! entry (op 3, see [`super::values::OP_SCHEMA`]), the drift check after a
//! passive's DDL, and the order of the active's migrate transaction.
//! Must never: capture the DDL's own row changes (every DDL runs with
//! `understudy.applying` on, so each member's back-fill makes its own), or
//! commit a member's DDL without the capture triggers of the new shape
//! (the regeneration is in the same transaction).
//!
//! Why the active's entry is logged by the migrate transaction itself, not
//! staged for the sequencer: rows committed before it must take the seqs
//! before it (they are read with the old tables), so the transaction locks
//! the state row and moves what is staged first, exactly as the sequencer
//! would, then appends the entry. The DDL itself runs before that lock:
//! a long back-fill must not hold up lease renewals.

use super::capture;
use super::catalog::read_catalog;
use super::conn::{self, query_error};
use super::values::{OP_SCHEMA, Tables};
use super::{NOW_MS, PgStore, sequence_sql, to_i64, to_u64};
use crate::model::{Position, SchemaChange};
use crate::store::versions::{self, Older, catalog_from_json, catalog_json};
use crate::store::{StoreError, StoreResult};
use crate::tables::{CaptureSpec, Catalog};
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

/// Whether `e` says `us_app_schema` does not exist (a database `init` has
/// not brought to schema 6 yet).
fn no_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}

/// Every recorded version with its fingerprint, oldest first.
pub(super) async fn history<C: GenericClient>(c: &C, url: &str) -> StoreResult<Vec<(u64, String)>> {
    let rows = match c
        .query(
            "SELECT version, fingerprint FROM us_app_schema ORDER BY version",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) if no_table(&e) => return Ok(Vec::new()),
        Err(e) => return Err(query_error(url, &e)),
    };
    rows.iter()
        .map(|r| {
            let v: i64 = r.try_get(0).map_err(|e| query_error(url, &e))?;
            Ok((
                to_u64(v, "schema version")?,
                r.try_get(1).map_err(|e| query_error(url, &e))?,
            ))
        })
        .collect()
}

/// The schema version this member is at (0 before any migration).
async fn current_version<C: GenericClient>(c: &C, url: &str) -> StoreResult<u64> {
    Ok(history(c, url).await?.last().map_or(0, |h| h.0))
}

/// The tables of every version before the current one (see
/// [`versions::older`]); empty before the first migration.
pub(super) async fn older_tables<C: GenericClient>(c: &C, url: &str) -> StoreResult<Older<Tables>> {
    let rows = match c
        .query(
            "SELECT version, seq, catalog FROM us_app_schema ORDER BY version",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) if no_table(&e) => return Ok(Vec::new()),
        Err(e) => return Err(query_error(url, &e)),
    };
    let mut all = Vec::with_capacity(rows.len());
    for r in &rows {
        let g = |e: tokio_postgres::Error| StoreError::Corrupt(format!("us_app_schema: {e}"));
        let v = to_u64(r.try_get(0).map_err(g)?, "schema version")?;
        let seq = to_u64(r.try_get(1).map_err(g)?, "seq")?;
        let json: String = r.try_get(2).map_err(g)?;
        all.push((seq, catalog_from_json(v, &json)?));
    }
    Ok(versions::older(all, Tables::new))
}

/// Every schema change recorded here (version 1 on), oldest first.
pub(super) async fn changes<C: GenericClient>(c: &C, url: &str) -> StoreResult<Vec<SchemaChange>> {
    let rows = c
        .query(
            "SELECT version, sqlite_sql, postgres_sql, fingerprint FROM us_app_schema \
             WHERE version > 0 ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| query_error(url, &e))?;
    rows.iter()
        .map(|r| {
            let g = |e: tokio_postgres::Error| StoreError::Corrupt(format!("us_app_schema: {e}"));
            Ok(SchemaChange {
                version: to_u64(r.try_get(0).map_err(g)?, "schema version")?,
                sqlite: r.try_get(1).map_err(g)?,
                postgres: r.try_get(2).map_err(g)?,
                fingerprint: r.try_get(3).map_err(g)?,
            })
        })
        .collect()
}

/// Record `sc` at `pos` with the tables `after` it; with the first
/// migration, also version 0: the tables `before` it.
async fn record<C: GenericClient>(
    c: &C,
    url: &str,
    before: &Catalog,
    after: &Catalog,
    sc: &SchemaChange,
    pos: Position,
) -> StoreResult<()> {
    let err = |e: tokio_postgres::Error| query_error(url, &e);
    c.execute(
        &format!(
            "INSERT INTO us_app_schema VALUES (0, $1, 0, 0, '', '', $2, {NOW_MS}) \
             ON CONFLICT (version) DO NOTHING"
        ),
        &[&before.fingerprint(), &catalog_json(before)?],
    )
    .await
    .map_err(err)?;
    c.execute(
        &format!("INSERT INTO us_app_schema VALUES ($1, $2, $3, $4, $5, $6, $7, {NOW_MS})"),
        &[
            &to_i64(sc.version, "schema version")?,
            &sc.fingerprint,
            &to_i64(pos.epoch, "epoch")?,
            &to_i64(pos.seq, "seq")?,
            &sc.sqlite,
            &sc.postgres,
            &catalog_json(after)?,
        ],
    )
    .await
    .map_err(err)?;
    Ok(())
}

/// The log entry of `sc` at `pos`, with the member's position moved to it.
async fn log_entry<C: GenericClient>(
    c: &C,
    url: &str,
    sc: &SchemaChange,
    pos: Position,
) -> StoreResult<()> {
    let (seq, epoch) = (to_i64(pos.seq, "seq")?, to_i64(pos.epoch, "epoch")?);
    let version = to_i64(sc.version, "schema version")?;
    c.execute(
        &format!(
            "INSERT INTO us_changelog (seq, epoch, tbl, op, i, t) \
             VALUES ($1, $2, '', {OP_SCHEMA}, ARRAY[$3::bigint], ARRAY[$4::text, $5::text, $6::text])"
        ),
        &[&seq, &epoch, &version, &sc.sqlite, &sc.postgres, &sc.fingerprint],
    )
    .await
    .map_err(|e| query_error(url, &e))?;
    c.execute(
        "UPDATE us_state SET pos_epoch = $1, pos_seq = $2 WHERE id = 1",
        &[&epoch, &seq],
    )
    .await
    .map_err(|e| query_error(url, &e))?;
    Ok(())
}

/// Read the captured tables after a DDL and bring their capture objects in
/// line with them.
async fn regenerate<C: GenericClient>(c: &C, url: &str, spec: &CaptureSpec) -> StoreResult<Tables> {
    let tables = Tables::new(read_catalog(c, url, spec).await?);
    capture::sync(c, url, &tables).await?;
    Ok(tables)
}

/// Run `sc`'s DDL on a member at version `have`, regenerate, and check the
/// fingerprint: any failure is drift, a [`StoreError::Shape`].
async fn run_as_passive<C: GenericClient>(
    c: &C,
    url: &str,
    spec: &CaptureSpec,
    sc: &SchemaChange,
    have: u64,
) -> StoreResult<Tables> {
    let drift = |why: String| versions::drift(sc, &why);
    versions::check_next(sc, have)?;
    c.batch_execute(&sc.postgres).await.map_err(|e| {
        drift(format!(
            "PostgreSQL refused the DDL: {}",
            conn::describe(&e)
        ))
    })?;
    let tables = regenerate(c, url, spec)
        .await
        .map_err(|e| drift(e.to_string()))?;
    versions::check_fingerprint(sc, tables.catalog.fingerprint())?;
    Ok(tables)
}

/// Apply `sc` at `pos` inside the caller's open apply transaction (the
/// apply flag set): the DDL, the regeneration, the drift check, the log
/// entry, the position and the history. The caller commits, then uses the
/// returned tables.
pub(super) async fn apply_on_passive<C: GenericClient>(
    c: &C,
    url: &str,
    spec: &CaptureSpec,
    before: &Catalog,
    sc: &SchemaChange,
    pos: Position,
) -> StoreResult<Tables> {
    let have = current_version(c, url).await?;
    let tables = run_as_passive(c, url, spec, sc, have)
        .await
        .map_err(|e| match e {
            StoreError::Shape(why) => StoreError::Shape(format!("change {pos}: {why}")),
            other => other,
        })?;
    log_entry(c, url, sc, pos).await?;
    record(c, url, before, &tables.catalog, sc, pos).await?;
    Ok(tables)
}

/// In a snapshot install: run the changes of `changes` after this
/// member's version, each checked as a passive checks one from the log.
/// Entries below the snapshot are gone, so each is recorded at seq 0.
/// Returns the tables after the last one, or `None` when none was needed.
pub(super) async fn apply_in_install<C: GenericClient>(
    c: &C,
    url: &str,
    spec: &CaptureSpec,
    before: &Catalog,
    changes: &[SchemaChange],
) -> StoreResult<Option<Tables>> {
    let mut have = current_version(c, url).await?;
    let mut now: Option<Tables> = None;
    for sc in changes {
        if sc.version <= have {
            continue;
        }
        let prev = now.as_ref().map_or(before, |t| &*t.catalog).clone();
        let next = run_as_passive(c, url, spec, sc, have).await?;
        record(c, url, &prev, &next.catalog, sc, Position::ZERO).await?;
        have = sc.version;
        now = Some(next);
    }
    Ok(now)
}

/// Refuse unless this member is the active one with a live lease, as the
/// fence trigger would refuse an application's write.
async fn check_active<C: GenericClient>(c: &C, url: &str) -> StoreResult<()> {
    let row = c
        .query_opt(
            &format!(
                "SELECT role, role = 'active' AND coalesce(lease_until >= {NOW_MS}, true) \
                 FROM us_state WHERE id = 1"
            ),
            &[],
        )
        .await
        .map_err(|e| query_error(url, &e))?;
    let (role, live): (String, bool) = match row {
        Some(r) => (
            r.try_get(0).map_err(|e| query_error(url, &e))?,
            r.try_get(1).map_err(|e| query_error(url, &e))?,
        ),
        None => ("uninitialised".into(), false),
    };
    if live {
        return Ok(());
    }
    Err(StoreError::Ddl(if role == "active" {
        "this member's lease ran out: it is not taking writes, so it runs no schema change either"
            .into()
    } else {
        format!("this member is {role}: schema changes run on the active")
    }))
}

impl PgStore {
    /// See [`crate::store::MemberStore::migrate`]: on a connection of its
    /// own, in one transaction: the DDL and the regeneration (capture and
    /// fence off for the DDL's own writes), then, holding the state row
    /// and the schema gate, the staged rows moved into the log, the role
    /// checked, the entry appended and the history row written.
    pub(super) async fn migrate_pg(
        &self,
        sqlite: &str,
        postgres: &str,
    ) -> StoreResult<(SchemaChange, Position)> {
        let url = &self.url;
        let before = self.tables()?.catalog.clone();
        let mut client = conn::connect(url).await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| query_error(url, &e))?;
        tx.batch_execute("SET LOCAL understudy.applying = 'on'")
            .await
            .map_err(|e| query_error(url, &e))?;
        // Refused early too, before the DDL takes its locks.
        check_active(&tx, url).await?;
        tx.batch_execute(postgres).await.map_err(|e| {
            StoreError::Ddl(format!(
                "PostgreSQL refused the DDL: {}",
                conn::describe(&e)
            ))
        })?;
        let tables = regenerate(&tx, url, &self.spec)
            .await
            .map_err(|e| StoreError::Ddl(format!("after the DDL: {e}")))?;
        // No log read between the entry's commit and the new tables.
        let _gate = self.schema_gate.write().await;
        tx.simple_query(&sequence_sql())
            .await
            .map_err(|e| query_error(url, &e))?;
        check_active(&tx, url).await?;
        let row = tx
            .query_one(
                "SELECT greatest(s.pos_seq, coalesce((SELECT max(seq) FROM us_changelog), 0)) + 1, \
                        greatest(s.epoch, s.pos_epoch) FROM us_state s WHERE s.id = 1",
                &[],
            )
            .await
            .map_err(|e| query_error(url, &e))?;
        let g = |e: tokio_postgres::Error| StoreError::Corrupt(format!("us_state: {e}"));
        let pos = Position::new(
            to_u64(row.try_get(1).map_err(g)?, "epoch")?,
            to_u64(row.try_get(0).map_err(g)?, "seq")?,
        );
        let sc = SchemaChange {
            version: current_version(&tx, url).await? + 1,
            sqlite: sqlite.to_string(),
            postgres: postgres.to_string(),
            fingerprint: tables.catalog.fingerprint().to_string(),
        };
        log_entry(&tx, url, &sc, pos).await?;
        record(&tx, url, &before, &tables.catalog, &sc, pos).await?;
        tx.commit().await.map_err(|e| query_error(url, &e))?;
        let older = older_tables(&client, url).await?;
        self.set_schema(tables, older);
        tracing::info!(version = sc.version, position = %pos, "ran schema change");
        Ok((sc, pos))
    }
}
