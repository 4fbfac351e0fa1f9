//! Schema changes of the captured tables on SQLite (`understudy migrate`):
//! run on the active together with their change-log entry, and applied by
//! a passive at that entry's position.
//!
//! Owns: the `us_app_schema` history, the schema-change log entry (op 3:
//! `c0` version, `c1` SQLite DDL, `c2` PostgreSQL DDL, `c3` fingerprint),
//! and the drift check after a passive's DDL.
//! Must never: capture the DDL's own row changes (it runs with
//! `applying = 1` everywhere, so each member's DDL makes its own), or leave
//! a member with DDL applied but capture triggers of the old shape (the
//! regeneration is in the same transaction).

use super::rollback;
use super::rows::Tables;
use super::schema::sync_capture;
use super::{err, i64_of, now_ms_sql, u64_of};
use crate::model::{Position, SchemaChange};
use crate::store::versions::{self, Older, catalog_from_json, catalog_json};
use crate::store::{StoreError, StoreResult};
use crate::tables::{CaptureSpec, Catalog};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;

/// The change-log op of a schema change.
pub(super) const OP_SCHEMA: i64 = 3;

/// The schema version this member is at (0 before any migration).
pub(super) fn current_version(conn: &Connection) -> StoreResult<u64> {
    let v: i64 = conn
        .query_row(
            "SELECT coalesce(max(version), 0) FROM us_app_schema",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    u64_of(v, "schema version")
}

/// Every recorded version with its fingerprint, oldest first.
pub(super) fn history(conn: &Connection) -> StoreResult<Vec<(u64, String)>> {
    let mut st = conn
        .prepare_cached("SELECT version, fingerprint FROM us_app_schema ORDER BY version")
        .map_err(err)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(err)?;
    rows.map(|r| {
        let (v, f) = r.map_err(err)?;
        Ok((u64_of(v, "schema version")?, f))
    })
    .collect()
}

/// Record `sc` at `pos` in the history with the tables `after` it; with
/// the first migration, also version 0: the tables `before` it.
fn record(
    conn: &Connection,
    before: &Catalog,
    after: &Catalog,
    sc: &SchemaChange,
    pos: Position,
    restore: &str,
) -> StoreResult<()> {
    let now = now_ms_sql();
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO us_app_schema \
             (version, fingerprint, epoch, seq, sqlite_sql, postgres_sql, catalog, at_ms) \
             VALUES (0, ?1, 0, 0, '', '', ?2, {now})"
        ),
        params![before.fingerprint(), catalog_json(before)?],
    )
    .map_err(err)?;
    conn.execute(
        &format!(
            "INSERT INTO us_app_schema \
             (version, fingerprint, epoch, seq, sqlite_sql, postgres_sql, catalog, at_ms, restore_sql) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {now}, ?8)"
        ),
        params![
            i64_of(sc.version, "schema version")?,
            sc.fingerprint,
            i64_of(pos.epoch, "epoch")?,
            i64_of(pos.seq, "seq")?,
            sc.sqlite,
            sc.postgres,
            catalog_json(after)?,
            restore
        ],
    )
    .map_err(err)?;
    Ok(())
}

/// The captured tables of every recorded version, with the seq of the
/// schema change that began it (0 for version 0), oldest first: a
/// change-log entry at seq `s` was captured under the last version whose
/// seq is below `s`.
pub(super) fn versions(conn: &Connection) -> StoreResult<Vec<(u64, Catalog)>> {
    let mut st = conn
        .prepare_cached("SELECT version, seq, catalog FROM us_app_schema ORDER BY version")
        .map_err(err)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(err)?;
    rows.map(|r| {
        let (v, seq, json) = r.map_err(err)?;
        let cat = catalog_from_json(u64_of(v, "schema version")?, &json)?;
        Ok((u64_of(seq, "seq")?, cat))
    })
    .collect()
}

/// Earlier versions' tables, each with the seq of the schema change that
/// ended it.
pub(super) type OlderTables = Older<Tables>;

/// The tables of every version before the current one (see
/// [`versions::older`]); empty before the first migration or on a database
/// older than schema 5.
pub(super) fn older_tables(conn: &Connection) -> StoreResult<OlderTables> {
    let all = match versions(conn) {
        Ok(v) => v,
        Err(StoreError::Backend(e)) if e.contains("no such table") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(versions::older(all, |cat| {
        Tables::new(Arc::new(cat), |_| true)
    }))
}

/// Every schema change recorded here (version 1 on), oldest first.
pub(super) fn changes(conn: &Connection) -> StoreResult<Vec<SchemaChange>> {
    let mut st = conn
        .prepare_cached(
            "SELECT version, sqlite_sql, postgres_sql, fingerprint FROM us_app_schema
             WHERE version > 0 ORDER BY version",
        )
        .map_err(err)?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(err)?;
    rows.map(|r| {
        let (v, sqlite, postgres, fingerprint) = r.map_err(err)?;
        Ok(SchemaChange {
            version: u64_of(v, "schema version")?,
            sqlite,
            postgres,
            fingerprint,
        })
    })
    .collect()
}

/// In a snapshot install: run the changes of `changes` after this
/// member's version, each checked as a passive checks one from the log
/// (there is no log entry: the install empties the log). Returns the
/// tables after the last one, or `None` when none was needed.
pub(super) fn apply_in_install(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
    before: &Catalog,
    changes: &[SchemaChange],
) -> StoreResult<Option<Catalog>> {
    let mut have = current_version(conn)?;
    let mut cat: Option<Catalog> = None;
    for sc in changes {
        if sc.version <= have {
            continue;
        }
        let prev = cat.clone().unwrap_or_else(|| before.clone());
        let restore = rollback::definitions(conn, &prev)?;
        let next = run_as_passive(conn, url, spec, sc, have)?;
        // Entries below the snapshot are gone: no log entry decodes with
        // the older tables any more, so the change is recorded at seq 0.
        record(conn, &prev, &next, sc, Position::ZERO, &restore)?;
        have = sc.version;
        cat = Some(next);
    }
    Ok(cat)
}

/// The log entry of `sc` at `seq` (`None`: the next seq) and epoch `epoch`.
fn log_entry(conn: &Connection, sc: &SchemaChange, pos: Option<Position>) -> StoreResult<Position> {
    let version = i64_of(sc.version, "schema version")?;
    match pos {
        Some(p) => {
            conn.execute(
                "INSERT INTO us_changelog (seq, epoch, tbl, op, c0, c1, c2, c3)
                 VALUES (?1, ?2, '', ?3, ?4, ?5, ?6, ?7)",
                params![
                    i64_of(p.seq, "seq")?,
                    i64_of(p.epoch, "epoch")?,
                    OP_SCHEMA,
                    version,
                    sc.sqlite,
                    sc.postgres,
                    sc.fingerprint
                ],
            )
            .map_err(err)?;
            Ok(p)
        }
        None => {
            conn.execute(
                "INSERT INTO us_changelog (epoch, tbl, op, c0, c1, c2, c3)
                 SELECT epoch, '', ?1, ?2, ?3, ?4, ?5 FROM us_state WHERE id = 1",
                params![OP_SCHEMA, version, sc.sqlite, sc.postgres, sc.fingerprint],
            )
            .map_err(err)?;
            let (seq, epoch): (i64, i64) = conn
                .query_row(
                    "SELECT seq, epoch FROM us_changelog WHERE seq = last_insert_rowid()",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err)?;
            Ok(Position::new(u64_of(epoch, "epoch")?, u64_of(seq, "seq")?))
        }
    }
}

/// Run a schema change on the active: the DDL with capture off, the
/// capture objects regenerated, the log entry and the history row, all in
/// one transaction. A failing DDL rolls everything back and is returned
/// as [`StoreError::Ddl`] with SQLite's message.
pub(super) fn run_on_active(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
    before: &Catalog,
    sqlite: &str,
    postgres: &str,
) -> StoreResult<(SchemaChange, Position, Catalog)> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    let run = || -> StoreResult<(SchemaChange, Position, Catalog)> {
        check_active(conn)?;
        conn.execute_batch("UPDATE us_state SET applying = 1 WHERE id = 1")
            .map_err(err)?;
        let restore = rollback::definitions(conn, before)?;
        conn.execute_batch(sqlite)
            .map_err(|e| StoreError::Ddl(format!("SQLite refused the DDL: {e}")))?;
        let cat = sync_capture(conn, url, spec)?;
        let sc = SchemaChange {
            version: current_version(conn)? + 1,
            sqlite: sqlite.to_string(),
            postgres: postgres.to_string(),
            fingerprint: cat.fingerprint().to_string(),
        };
        let pos = log_entry(conn, &sc, None)?;
        record(conn, before, &cat, &sc, pos, &restore)?;
        conn.execute_batch("UPDATE us_state SET applying = 0 WHERE id = 1; COMMIT")
            .map_err(err)?;
        Ok((sc, pos, cat))
    };
    run().inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

/// Refuse unless this member is the active one with a live lease, as the
/// fence triggers would refuse an application's write.
fn check_active(conn: &Connection) -> StoreResult<()> {
    let now = now_ms_sql();
    let (role, live): (String, bool) = conn
        .query_row(
            &format!(
                "SELECT role, role = 'active' AND coalesce(lease_until >= {now}, 1) FROM us_state WHERE id = 1"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(err)?
        .unwrap_or_else(|| ("uninitialised".into(), false));
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

/// Run `sc`'s DDL on a member at version `have`, regenerate, and check the
/// fingerprint: any failure is drift, a [`StoreError::Shape`].
fn run_as_passive(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
    sc: &SchemaChange,
    have: u64,
) -> StoreResult<Catalog> {
    let drift = |why: String| versions::drift(sc, &why);
    versions::check_next(sc, have)?;
    conn.execute_batch(&sc.sqlite)
        .map_err(|e| drift(format!("SQLite refused the DDL: {e}")))?;
    let cat = sync_capture(conn, url, spec).map_err(|e| drift(e.to_string()))?;
    versions::check_fingerprint(sc, cat.fingerprint())?;
    Ok(cat)
}

/// Apply `sc` at `pos` inside the caller's open apply transaction: the
/// DDL, the regeneration, the drift check, the log entry and the history.
/// The caller commits, then uses the returned catalog. A DDL that fails
/// here, or tables that end up unlike the active's, are drift: a
/// [`StoreError::Shape`] the applier shows as `apply.state = blocked`.
pub(super) fn apply_on_passive(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
    before: &Catalog,
    sc: &SchemaChange,
    pos: Position,
) -> StoreResult<Catalog> {
    let have = current_version(conn)?;
    let restore = rollback::definitions(conn, before)?;
    let cat = run_as_passive(conn, url, spec, sc, have).map_err(|e| match e {
        StoreError::Shape(why) => StoreError::Shape(format!("change {pos}: {why}")),
        other => other,
    })?;
    log_entry(conn, sc, Some(pos))?;
    record(conn, before, &cat, sc, pos, &restore)?;
    Ok(cat)
}
