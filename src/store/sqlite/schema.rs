//! SQLite schema management: the embedded migrations, the shape check that
//! runs before anything is changed, seeding the replication state, and the
//! fence triggers (re-generated with the member names in their messages).
//!
//! Owns: everything that creates or alters schema objects in a member's
//! SQLite database.
//! Must never: touch an application table whose shape is not ours, or leave a
//! migration half applied (each runs in one transaction with its version row).

use super::{err, now_ms_sql};
use crate::store::{InitParams, InitReport, StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, params};

/// One numbered schema file.
pub(super) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Applied in order by `init`; never edit a released one, add another.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sql: include_str!("../../../schemas/sqlite/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "quarantine",
        sql: include_str!("../../../schemas/sqlite/0002_quarantine.sql"),
    },
    Migration {
        version: 3,
        name: "snapshot_due",
        sql: include_str!("../../../schemas/sqlite/0003_snapshot_due.sql"),
    },
];

pub(super) const LATEST: u32 = 3;

const VERSION_TABLE: &str = "us_schema_version";

const VERSION_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS us_schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)";

/// The columns (in order) of every table the agent creates or relies on, and
/// the migration that creates it.
const SHAPES: &[(&str, u32, &[&str])] = &[
    (
        "projects",
        1,
        &["name", "description", "config", "updated_at"],
    ),
    (
        "jobs",
        1,
        &[
            "id",
            "project",
            "name",
            "group_path",
            "description",
            "definition",
            "schedule",
            "schedule_enabled",
            "execution_enabled",
            "owner_member",
            "updated_at",
        ],
    ),
    (
        "keys",
        1,
        &["path", "kind", "content", "meta", "updated_at"],
    ),
    (VERSION_TABLE, 1, &["version", "name", "applied_at"]),
    ("us_snapshot_due", 3, &["id", "reason", "at_ms"]),
    (
        "us_state",
        1,
        &[
            "id",
            "cluster",
            "member",
            "role",
            "epoch",
            "active",
            "pos_epoch",
            "pos_seq",
            "lease_until",
            "vote_epoch",
            "vote_candidate",
            "paused",
            "applying",
        ],
    ),
    (
        "us_epoch_history",
        1,
        &[
            "epoch",
            "active",
            "start_epoch",
            "start_seq",
            "at_ms",
            "reason",
        ],
    ),
    (
        "us_changelog",
        1,
        &[
            "seq", "epoch", "entity", "op", "key", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8",
            "c9", "c10",
        ],
    ),
    (
        "us_quarantine",
        2,
        &[
            "id",
            "epoch",
            "seq",
            "entity",
            "op",
            "key",
            "c1",
            "c2",
            "c3",
            "c4",
            "c5",
            "c6",
            "c7",
            "c8",
            "c9",
            "c10",
            "quarantined_at",
            "reason",
            "resolved",
        ],
    ),
];

const APP_TABLES: [&str; 3] = ["projects", "jobs", "keys"];
const OPS: [(&str, &str); 3] = [("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")];

/// Names of the capture triggers schema 1 creates: a missing one would lose
/// changes silently, so `check_schema` insists on all of them.
fn capture_trigger_names() -> impl Iterator<Item = String> {
    APP_TABLES
        .iter()
        .flat_map(|t| OPS.iter().map(move |(o, _)| format!("us_capture_{t}_{o}")))
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let names = st.query_map([table], |r| r.get::<_, String>(0))?;
    names.collect()
}

/// The recorded schema version, `None` when the version table is absent.
pub(super) fn version(conn: &Connection) -> rusqlite::Result<Option<u32>> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [VERSION_TABLE],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    let v: Option<i64> = conn.query_row("SELECT MAX(version) FROM us_schema_version", [], |r| {
        r.get(0)
    })?;
    Ok(Some(v.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32))
}

/// Refuse tables of our names with another shape, before anything changes.
/// With `require_all`, a table the current version should have must exist.
pub(super) fn check_shapes(
    conn: &Connection,
    url: &str,
    version: Option<u32>,
    require_all: bool,
) -> StoreResult<()> {
    let mismatch = |table: &str, detail: String| StoreError::SchemaMismatch {
        url: url.to_string(),
        table: table.to_string(),
        detail,
    };
    if let Some(v) = version
        && v > LATEST
    {
        return Err(mismatch(
            VERSION_TABLE,
            format!(
                "schema version {v} is newer than this understudy supports ({LATEST}); use a newer understudy"
            ),
        ));
    }
    for (table, since, want) in SHAPES {
        let got = columns(conn, table).map_err(err)?;
        let ours = table.starts_with("us_");
        if got.is_empty() {
            let expected = version.is_some_and(|v| v >= *since);
            if require_all && expected {
                return Err(mismatch(
                    table,
                    "the table is missing: restore the database or re-create it with `understudy init`"
                        .into(),
                ));
            }
            continue;
        }
        if ours && version.is_none() && *table != VERSION_TABLE {
            return Err(mismatch(
                table,
                "it exists but the database has no us_schema_version table: it was not made by understudy init".into(),
            ));
        }
        if ours && version.is_some_and(|v| v < *since) {
            return Err(mismatch(
                table,
                format!(
                    "it exists but schema version {} does not create it",
                    version.unwrap_or(0)
                ),
            ));
        }
        if got.iter().map(String::as_str).ne(want.iter().copied()) {
            return Err(mismatch(
                table,
                format!(
                    "columns ({}), expected ({})",
                    got.join(", "),
                    want.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// `check_schema`: ours, current, complete (tables, state row, triggers).
pub(super) fn check_current(conn: &Connection, url: &str) -> StoreResult<()> {
    let v = match version(conn).map_err(err)? {
        None => {
            return Err(StoreError::NotInitialised {
                url: url.to_string(),
            });
        }
        Some(v) => v,
    };
    if v < LATEST {
        return Err(StoreError::SchemaMismatch {
            url: url.to_string(),
            table: VERSION_TABLE.into(),
            detail: format!(
                "schema version {v} is older than this understudy's {LATEST}: run `understudy init --config FILE` to upgrade"
            ),
        });
    }
    check_shapes(conn, url, Some(v), true)?;
    let has_state: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM us_state WHERE id = 1)",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if !has_state {
        return Err(StoreError::NotInitialised {
            url: url.to_string(),
        });
    }
    let mut st = conn
        .prepare("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1)")
        .map_err(err)?;
    for name in capture_trigger_names().chain(fence_triggers("", "", None).map(|(n, _)| n)) {
        let present: bool = st.query_row([&name], |r| r.get(0)).map_err(err)?;
        if !present {
            let table = name.split('_').nth(2).unwrap_or("?").to_string();
            return Err(StoreError::SchemaMismatch {
                url: url.to_string(),
                table,
                detail: format!(
                    "trigger {name} is missing, so changes would be lost or writes not fenced; restore it from a backup or re-create the database"
                ),
            });
        }
    }
    Ok(())
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The message of a write refused because this member is not the active one.
pub(super) fn role_message(member: &str, role: &str, active: Option<&str>) -> String {
    let role = if role == "active" { "not active" } else { role };
    format!(
        "understudy: write refused: member {member} is {role}; the active member is {}",
        active.unwrap_or("unknown")
    )
}

/// The message of a write refused because the active's lease ran out.
pub(super) fn lease_message(member: &str) -> String {
    format!(
        "understudy: write refused: the lease of this active member ({member}) ran out (its agent is not renewing it); writes resume when the agent renews it or another member is promoted"
    )
}

/// `(name, CREATE TRIGGER ...)` of every fence trigger. RAISE takes only a
/// literal, so the names are written into the trigger text; `set_role`
/// re-creates them in the transaction that changes the role.
pub(super) fn fence_triggers(
    member: &str,
    role: &str,
    active: Option<&str>,
) -> impl Iterator<Item = (String, String)> {
    let role_msg = sql_literal(&role_message(member, role, active));
    let lease_msg = sql_literal(&lease_message(member));
    let now = now_ms_sql();
    APP_TABLES.iter().flat_map(move |t| {
        let role_msg = role_msg.clone();
        let lease_msg = lease_msg.clone();
        OPS.iter().map(move |(o, verb)| {
            let name = format!("us_fence_{t}_{o}");
            let sql = format!(
                "CREATE TRIGGER {name} BEFORE {verb} ON {t} BEGIN\n    \
                 SELECT RAISE(ABORT, {role_msg}) FROM us_state WHERE applying = 0 AND role <> 'active';\n    \
                 SELECT RAISE(ABORT, {lease_msg}) FROM us_state WHERE applying = 0 AND role = 'active' AND lease_until < {now};\n\
                 END"
            );
            (name, sql)
        })
    })
}

/// Re-create the fence triggers from the state row, unless they already say
/// exactly that (so a repeated `init` changes nothing). Runs inside the
/// caller's transaction.
pub(super) fn refresh_fence(conn: &Connection) -> rusqlite::Result<bool> {
    let (member, role, active): (String, String, Option<String>) = conn.query_row(
        "SELECT member, role, active FROM us_state WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut changed = false;
    for (name, sql) in fence_triggers(&member, &role, active.as_deref()) {
        let current: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .optional()?;
        if current.as_deref() == Some(sql.as_str()) {
            continue;
        }
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {name};\n{sql};"))?;
        changed = true;
    }
    Ok(changed)
}

/// Seed the replication state of a new member (inside migration 1's
/// transaction, so no write can slip in unfenced and uncaptured).
fn seed(conn: &Connection, p: &InitParams) -> rusqlite::Result<()> {
    let initial = p.member == p.initial_active;
    conn.execute(
        "INSERT INTO us_state (id, cluster, member, role, epoch, active, lease_until)
         VALUES (1, ?1, ?2, ?3, 1, ?4, CASE WHEN ?5 THEN NULL ELSE 0 END)",
        params![
            p.cluster,
            p.member.as_str(),
            if initial { "active" } else { "passive" },
            p.initial_active.as_str(),
            initial,
        ],
    )?;
    conn.execute(
        &format!(
            "INSERT INTO us_epoch_history (epoch, active, start_epoch, start_seq, at_ms, reason)
             VALUES (1, ?1, 0, 0, {}, 'initial')",
            now_ms_sql()
        ),
        [p.initial_active.as_str()],
    )?;
    Ok(())
}

/// Check the existing state row belongs to this member of this cluster.
fn check_identity(conn: &Connection, url: &str, p: &InitParams) -> StoreResult<()> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT cluster, member FROM us_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(err)?;
    match row {
        Some((c, m)) if c != p.cluster || m != p.member.as_str() => {
            Err(StoreError::Backend(format!(
                "database {url} belongs to member {m} of cluster {c}, but the config says member {} of cluster {}: point the config at this member's own database",
                p.member, p.cluster
            )))
        }
        _ => Ok(()),
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %e, "rollback failed");
    }
}

/// Create or upgrade the schema up to `upto`, seed the state, refresh the
/// fence. Each migration runs in its own transaction with its version row.
pub(super) fn init(
    conn: &Connection,
    url: &str,
    p: &InitParams,
    upto: u32,
) -> StoreResult<InitReport> {
    let from = version(conn).map_err(err)?;
    check_shapes(conn, url, from, false)?;
    if from.is_some() {
        check_identity(conn, url, p)?;
    }
    let from = from.unwrap_or(0);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        let set: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !set.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "database {url} cannot use WAL journal mode (got {set}); is it on a network file system?"
            )));
        }
    }
    let mut to = from;
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= upto)
    {
        let step = || -> StoreResult<bool> {
            conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
            // Another init may have run meanwhile: re-read under the lock.
            let now = version(conn).map_err(err)?.unwrap_or(0);
            if now >= m.version {
                return Ok(false);
            }
            conn.execute_batch(VERSION_TABLE_SQL).map_err(err)?;
            conn.execute_batch(m.sql).map_err(|e| {
                StoreError::Backend(format!("schema migration {} ({}): {e}", m.version, m.name))
            })?;
            if m.version == 1 {
                seed(conn, p).map_err(err)?;
            }
            conn.execute(
                &format!(
                    "INSERT INTO us_schema_version (version, name, applied_at) VALUES (?1, ?2, {})",
                    now_ms_sql()
                ),
                params![m.version, m.name],
            )
            .map_err(err)?;
            if m.version == 1 {
                refresh_fence(conn).map_err(err)?;
            }
            conn.execute_batch("COMMIT").map_err(err)?;
            Ok(true)
        };
        match step() {
            Ok(true) => to = m.version,
            Ok(false) => {
                rollback(conn);
                to = m.version;
            }
            Err(e) => {
                rollback(conn);
                return Err(e);
            }
        }
    }
    // An existing database: bring the fence in line with the state row (a
    // no-op unless a trigger was dropped or changed by hand).
    if from >= 1 {
        let refresh = || -> StoreResult<()> {
            conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
            refresh_fence(conn).map_err(err)?;
            conn.execute_batch("COMMIT").map_err(err)
        };
        if let Err(e) = refresh() {
            rollback(conn);
            return Err(e);
        }
    }
    Ok(InitReport {
        from_version: from,
        to_version: to.max(from),
    })
}
