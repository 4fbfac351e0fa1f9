//! Schema 4: converting what databases made before the generic table
//! description hold (the fixed projects/jobs/keys change-log format and the
//! example `jobs` table with INTEGER flags) into today's format.
//!
//! Owns: migration 4's code, run inside `init`'s transaction.
//! Must never: lose or reorder a logged change, or move the change log's
//! AUTOINCREMENT counter (seqs are positions the whole cluster shares).

use super::schema::{LEGACY_LOG_HEAD, columns};
use rusqlite::{Connection, OptionalExtension};

/// The entity codes of the old format and their tables.
const ENTITY_TABLE: &str =
    "CASE entity WHEN 1 THEN 'projects' WHEN 2 THEN 'jobs' WHEN 3 THEN 'keys' ELSE 'unknown' END";

const OLD_VALUES: &str = "key, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10";
const NEW_VALUES: &str = "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10";

/// Migration 4. A database created by this version already has the new
/// format: then only the old triggers' absence is checked and nothing moves.
pub(super) fn convert(conn: &Connection) -> rusqlite::Result<()> {
    let log = columns(conn, "us_changelog")?;
    if log.len() < LEGACY_LOG_HEAD.len() || log[..5] != LEGACY_LOG_HEAD.map(String::from) {
        return Ok(());
    }
    // The old capture triggers name the old columns; a rename below would
    // re-parse them and fail. `init` generates the new ones in this same
    // transaction, so no write goes uncaptured.
    let old: Vec<String> = {
        let mut st = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'us\\_capture\\_%' ESCAPE '\\'",
        )?;
        st.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for name in old {
        conn.execute_batch(&format!("DROP TRIGGER \"{name}\""))?;
    }
    rebuild(
        conn,
        "us_changelog",
        "seq INTEGER PRIMARY KEY AUTOINCREMENT, epoch INTEGER NOT NULL, tbl TEXT NOT NULL,
         op INTEGER NOT NULL, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10",
        &format!("seq, epoch, tbl, op, {NEW_VALUES}"),
        &format!("seq, epoch, {ENTITY_TABLE}, op, {OLD_VALUES}"),
    )?;
    rebuild(
        conn,
        "us_quarantine",
        "id INTEGER PRIMARY KEY AUTOINCREMENT, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
         tbl TEXT NOT NULL, op INTEGER NOT NULL, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10,
         quarantined_at INTEGER NOT NULL
             DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
         reason TEXT NOT NULL, resolved INTEGER NOT NULL DEFAULT 0",
        &format!("id, epoch, seq, tbl, op, {NEW_VALUES}, quarantined_at, reason, resolved"),
        &format!(
            "id, epoch, seq, {ENTITY_TABLE}, op, {OLD_VALUES}, quarantined_at, reason, resolved"
        ),
    )?;
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS us_quarantine_unresolved ON us_quarantine(resolved, epoch, seq)",
    )?;
    boolean_job_flags(conn)
}

/// Re-create `table` as `definition`, copying every row, and keep its
/// AUTOINCREMENT counter where it was (it may be past the newest row).
fn rebuild(
    conn: &Connection,
    table: &str,
    definition: &str,
    new_cols: &str,
    old_cols: &str,
) -> rusqlite::Result<()> {
    let counter: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let tmp = format!("{table}_v4");
    conn.execute_batch(&format!(
        "CREATE TABLE {tmp} ({definition});
         INSERT INTO {tmp} ({new_cols}) SELECT {old_cols} FROM {table};
         DROP TABLE {table};
         ALTER TABLE {tmp} RENAME TO {table};"
    ))?;
    if let Some(c) = counter {
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [table])?;
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
            rusqlite::params![table, c],
        )?;
    }
    Ok(())
}

/// The example `jobs` table declared its flags INTEGER; PostgreSQL's are
/// boolean. Portable types must match across members, so the flags become
/// BOOLEAN (values stay 0 and 1). Only the example table is touched.
fn boolean_job_flags(conn: &Connection) -> rusqlite::Result<()> {
    let declared: Option<String> = conn
        .query_row(
            "SELECT type FROM pragma_table_info('jobs') WHERE name = 'schedule_enabled'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if !declared.is_some_and(|d| d.eq_ignore_ascii_case("INTEGER")) {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE TABLE us_jobs_v4 (
            id                TEXT NOT NULL PRIMARY KEY,
            project           TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
            name              TEXT NOT NULL,
            group_path        TEXT,
            description       TEXT,
            definition        TEXT,
            schedule          TEXT NULL,
            schedule_enabled  BOOLEAN NOT NULL DEFAULT 1 CHECK (schedule_enabled IN (0, 1)),
            execution_enabled BOOLEAN NOT NULL DEFAULT 1 CHECK (execution_enabled IN (0, 1)),
            owner_member      TEXT NULL,
            updated_at        INTEGER NOT NULL
                              DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
                              CHECK (typeof(updated_at) = 'integer')
         );
         INSERT INTO us_jobs_v4 SELECT * FROM jobs;
         DROP TABLE jobs;
         ALTER TABLE us_jobs_v4 RENAME TO jobs;
         CREATE INDEX IF NOT EXISTS us_jobs_project ON jobs(project);",
    )
}
