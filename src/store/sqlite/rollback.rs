//! Giving back a schema change the cluster never received (SQLite): a
//! former active that ran `understudy migrate` and lost its role before
//! any member got the entry rejoins with tables the cluster's history does
//! not have at the kept position.
//!
//! Owns: the member's own definitions of its captured tables as recorded
//! before each schema change (`us_app_schema.restore_sql`), and the rebuild
//! of those tables from them inside the rejoin's quarantine transaction.
//! Must never: run outside that transaction (the quarantine of the tail,
//! the owed snapshot and the rebuild commit together or not at all), keep
//! rows in the rebuilt tables (the owed snapshot brings the active's), or
//! give back a change it has no definitions for (it says so instead).
//!
//! The rows of the tail are already in `us_quarantine`; those copied with
//! a schema change are tagged with the tables they were captured under
//! (`us_quarantine_catalog`), since the divergent versions leave the
//! history here.

use super::ddl::OP_SCHEMA;
use super::schema::sync_capture;
use super::{err, u64_of};
use crate::store::{StoreError, StoreResult};
use crate::tables::{CaptureSpec, Catalog};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A member's own definitions of its captured tables at one version.
#[derive(Serialize, Deserialize)]
struct Definitions {
    /// `(name, CREATE TABLE ...)` in the catalog's order (parents first).
    tables: Vec<(String, String)>,
    /// The tables' indexes and the application's triggers on them
    /// (`CREATE INDEX ...`, `CREATE TRIGGER ...`), in creation order.
    others: Vec<String>,
}

/// This member's definitions of the tables of `cat` as they are now, as
/// JSON for `us_app_schema.restore_sql`.
pub(super) fn definitions(conn: &Connection, cat: &Catalog) -> StoreResult<String> {
    let mut d = Definitions {
        tables: Vec::new(),
        others: Vec::new(),
    };
    for t in cat.tables() {
        let name = t.name.as_str();
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if let Some(sql) = sql {
            d.tables.push((name.to_string(), sql));
        }
        let mut st = conn
            .prepare_cached(
                "SELECT sql FROM sqlite_master \
                 WHERE type IN ('index', 'trigger') AND tbl_name = ?1 AND sql IS NOT NULL \
                   AND name NOT LIKE 'us\\_%' ESCAPE '\\' \
                 ORDER BY type = 'trigger', rowid",
            )
            .map_err(err)?;
        let rows = st
            .query_map([name], |r| r.get::<_, String>(0))
            .map_err(err)?;
        for r in rows {
            d.others.push(r.map_err(err)?);
        }
    }
    serde_json::to_string(&d).map_err(|e| {
        StoreError::Backend(format!("recording the captured tables' definitions: {e}"))
    })
}

/// One version of the history as the give-back needs it.
struct Version {
    version: u64,
    seq: i64,
    fingerprint: String,
    catalog: String,
    restore: Option<String>,
}

fn versions_from(conn: &Connection, from: i64) -> StoreResult<Vec<Version>> {
    let mut st = conn
        .prepare(
            "SELECT version, seq, fingerprint, catalog, restore_sql FROM us_app_schema \
             WHERE version >= ?1 ORDER BY version",
        )
        .map_err(err)?;
    let rows = st
        .query_map([from], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(err)?;
    rows.map(|r| {
        let (v, seq, fingerprint, catalog, restore) = r.map_err(err)?;
        Ok(Version {
            version: u64_of(v, "schema version")?,
            seq,
            fingerprint,
            catalog,
            restore,
        })
    })
    .collect()
}

/// Inside a rejoin's quarantine transaction, after the tail (seqs after
/// `keep_seq`) was copied to `us_quarantine` (ids after `first_id`) and
/// before it leaves the log: when the tail holds schema changes, tag the
/// copied rows with the tables they were captured under, drop the
/// divergent versions from the history, and rebuild the captured tables,
/// empty, as they were before the first of them. Returns the tables after,
/// or `None` when the tail held no schema change.
pub(super) fn give_back(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
    keep_seq: i64,
    first_id: i64,
) -> StoreResult<Option<Catalog>> {
    let first: Option<i64> = conn
        .query_row(
            &format!("SELECT min(c0) FROM us_changelog WHERE seq > ?1 AND op = {OP_SCHEMA}"),
            [keep_seq],
            |r| r.get(0),
        )
        .map_err(err)?;
    let Some(first) = first else {
        return Ok(None);
    };
    let all = versions_from(conn, first - 1)?;
    let (Some(kept), Some(gone)) = (all.first(), all.get(1)) else {
        return Err(StoreError::Corrupt(format!(
            "the change log holds schema version {first}, which us_app_schema does not record with the one before it"
        )));
    };
    let Some(restore) = &gone.restore else {
        return Err(StoreError::Shape(format!(
            "schema version {} ran here but never reached the cluster, and it was recorded before this member's schema 6, so the agent cannot give it back: export what it holds (`understudy divergence export`), rebuild this member's captured tables as the active has them, and run `understudy resnapshot`",
            gone.version
        )));
    };
    tag_quarantined(conn, &all, first_id)?;
    conn.execute("DELETE FROM us_app_schema WHERE version >= ?1", [first])
        .map_err(err)?;
    let cat = rebuild(conn, url, spec, restore)?;
    if cat.fingerprint() != kept.fingerprint {
        return Err(StoreError::Shape(format!(
            "giving back schema version {}: the rebuilt tables have fingerprint {}, version {} had {}",
            gone.version,
            cat.fingerprint(),
            kept.version,
            kept.fingerprint
        )));
    }
    tracing::warn!(
        from = all.last().map_or(first as u64, |v| v.version),
        to = kept.version,
        "gave back schema changes the cluster never received; their entries and rows are in the quarantine"
    );
    Ok(Some(cat))
}

/// Tag each row copied to the quarantine after `first_id` with the tables
/// of the version it was captured under (the last of `all` whose seq is
/// below its own; the first of `all` covers everything before the second).
fn tag_quarantined(conn: &Connection, all: &[Version], first_id: i64) -> StoreResult<()> {
    for (i, v) in all.iter().enumerate() {
        let from = if i == 0 { i64::MIN } else { v.seq };
        let to = all.get(i + 1).map_or(i64::MAX, |n| n.seq);
        conn.execute(
            "INSERT INTO us_quarantine_catalog (catalog) VALUES (?1)",
            [&v.catalog],
        )
        .map_err(err)?;
        let id = conn.last_insert_rowid();
        conn.execute(
            "UPDATE us_quarantine SET catalog_id = ?1 WHERE id > ?2 AND seq > ?3 AND seq <= ?4",
            params![id, first_id, from, to],
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Drop the captured tables (children first, emptied first so no foreign
/// key action reaches other tables) and create them again from `restore`,
/// with capture off; then regenerate understudy's triggers.
fn rebuild(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
    restore: &str,
) -> StoreResult<Catalog> {
    let d: Definitions = serde_json::from_str(restore)
        .map_err(|e| StoreError::Corrupt(format!("us_app_schema.restore_sql: {e}")))?;
    conn.execute_batch("UPDATE us_state SET applying = 1 WHERE id = 1")
        .map_err(err)?;
    let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    // Triggers first: a delete on one table may fire a trigger that names
    // another already dropped (the cascade triggers do).
    for (name, _) in &d.tables {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1")
            .map_err(err)?;
        let names: Vec<String> = st
            .query_map([name], |r| r.get(0))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        for t in names {
            conn.execute_batch(&format!("DROP TRIGGER {}", quoted(&t)))
                .map_err(err)?;
        }
    }
    for (name, _) in d.tables.iter().rev() {
        conn.execute_batch(&format!("DELETE FROM {0}; DROP TABLE {0}", quoted(name)))
            .map_err(|e| versions_error(name, &e))?;
    }
    for sql in d.tables.iter().map(|(_, s)| s).chain(&d.others) {
        conn.execute_batch(sql)
            .map_err(|e| StoreError::Shape(format!("re-creating a captured table: {e}")))?;
    }
    let cat = sync_capture(conn, url, spec)?;
    conn.execute_batch("UPDATE us_state SET applying = 0 WHERE id = 1")
        .map_err(err)?;
    Ok(cat)
}

fn versions_error(table: &str, e: &rusqlite::Error) -> StoreError {
    StoreError::Shape(format!(
        "giving back a schema change: table {table} cannot be emptied and dropped ({e}); another table may refer to it"
    ))
}
