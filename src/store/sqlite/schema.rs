//! SQLite schema management: the embedded migrations, the shape check that
//! runs before anything is changed, seeding the replication state, the
//! example schema, and keeping the change log and the generated triggers in
//! step with the captured tables.
//!
//! Owns: everything that creates or alters schema objects in a member's
//! SQLite database (the trigger texts themselves live in `capture`).
//! Must never: touch an application table whose shape is not ours, or leave a
//! migration half applied (each runs in one transaction with its version row).

use super::{capture, catalog, err, now_ms_sql, rows};
use crate::store::{InitParams, InitReport, StoreError, StoreResult};
use crate::tables::{CaptureSpec, Catalog, TableDesc};
use rusqlite::{Connection, OptionalExtension, params};

/// One numbered schema step: a file, or code where SQL cannot decide
/// (converting what older versions left).
pub(super) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
    pub code: Option<fn(&Connection) -> rusqlite::Result<()>>,
}

/// Applied in order by `init`; never edit a released one, add another.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sql: include_str!("../../../schemas/sqlite/0001_core.sql"),
        code: None,
    },
    Migration {
        version: 2,
        name: "quarantine",
        sql: include_str!("../../../schemas/sqlite/0002_quarantine.sql"),
        code: None,
    },
    Migration {
        version: 3,
        name: "snapshot_due",
        sql: include_str!("../../../schemas/sqlite/0003_snapshot_due.sql"),
        code: None,
    },
    Migration {
        version: 4,
        name: "generic_tables",
        sql: "",
        code: Some(super::legacy::convert),
    },
    Migration {
        version: 5,
        name: "app_schema",
        sql: include_str!("../../../schemas/sqlite/0005_app_schema.sql"),
        code: None,
    },
    Migration {
        version: 6,
        name: "schema_rollback",
        sql: include_str!("../../../schemas/sqlite/0006_schema_rollback.sql"),
        code: None,
    },
];

pub(super) const LATEST: u32 = 6;

/// The example schema, created by `init` when the config has no [capture].
const EXAMPLE_SQL: &str = include_str!("../../../schemas/sqlite/example.sql");

const VERSION_TABLE: &str = "us_schema_version";

const VERSION_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS us_schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)";

/// The columns (in order) of every table the agent creates or relies on, and
/// the migration that creates it. The change log and the quarantine are
/// checked apart (their value columns grow with the captured tables).
const SHAPES: &[(&str, u32, &[&str])] = &[
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
];

/// The example schema's tables and their columns: a table of one of these
/// names with other columns is the application's own, never touched.
const EXAMPLE_SHAPES: &[(&str, &[&str])] = &[
    ("projects", &["name", "description", "config", "updated_at"]),
    (
        "jobs",
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
    ("keys", &["path", "kind", "content", "meta", "updated_at"]),
];

/// The leading columns of the change log and of the quarantine, by format.
const LOG_HEAD: [&str; 5] = ["seq", "epoch", "tbl", "op", "c0"];
const QUARANTINE_HEAD: [&str; 6] = ["id", "epoch", "seq", "tbl", "op", "c0"];
pub(super) const LEGACY_LOG_HEAD: [&str; 5] = ["seq", "epoch", "entity", "op", "key"];
const LEGACY_QUARANTINE_HEAD: [&str; 6] = ["id", "epoch", "seq", "entity", "op", "key"];

pub(super) fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
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
/// With `example`, the example schema's tables, where present, must have
/// its columns.
pub(super) fn check_shapes(
    conn: &Connection,
    url: &str,
    version: Option<u32>,
    require_all: bool,
    example: bool,
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
        check_ours(table, *since, &got, version, require_all, &mismatch)?;
        if !got.is_empty() && got.iter().map(String::as_str).ne(want.iter().copied()) {
            return Err(mismatch(table, columns_detail(&got, want)));
        }
    }
    for (table, since, heads) in [
        ("us_changelog", 1, [&LOG_HEAD[..], &LEGACY_LOG_HEAD[..]]),
        (
            "us_quarantine",
            2,
            [&QUARANTINE_HEAD[..], &LEGACY_QUARANTINE_HEAD[..]],
        ),
    ] {
        let got = columns(conn, table).map_err(err)?;
        check_ours(table, since, &got, version, require_all, &mismatch)?;
        // Before schema 4 a database may still hold the fixed-table format.
        let allowed = if version.unwrap_or(0) >= 4 { 1 } else { 2 };
        let fits = |head: &[&str]| {
            got.iter()
                .map(String::as_str)
                .take(head.len())
                .eq(head.iter().copied())
        };
        if !got.is_empty() && !heads[..allowed].iter().any(|h| fits(h)) {
            return Err(mismatch(table, columns_detail(&got, heads[0])));
        }
    }
    // After `understudy migrate` the example tables are what the schema
    // changes made them; the recorded versions vouch for them.
    if example && !migrated(conn) {
        for (table, want) in EXAMPLE_SHAPES {
            let got = columns(conn, table).map_err(err)?;
            if !got.is_empty() && got.iter().map(String::as_str).ne(want.iter().copied()) {
                return Err(mismatch(table, columns_detail(&got, want)));
            }
        }
    }
    Ok(())
}

/// Whether `understudy migrate` ever ran here (schema 5's history holds a
/// version after 0).
fn migrated(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM us_app_schema WHERE version > 0)",
        [],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false)
}

fn columns_detail(got: &[String], want: &[&str]) -> String {
    format!(
        "columns ({}), expected ({}{})",
        got.join(", "),
        want.join(", "),
        if want.last() == Some(&"c0") {
            ", ..."
        } else {
            ""
        }
    )
}

/// An agent table must exist when the version says so (with
/// `require_all`), and may exist only in a database `init` made.
fn check_ours(
    table: &str,
    since: u32,
    got: &[String],
    version: Option<u32>,
    require_all: bool,
    mismatch: &dyn Fn(&str, String) -> StoreError,
) -> StoreResult<()> {
    if got.is_empty() {
        if require_all && version.is_some_and(|v| v >= since) {
            return Err(mismatch(
                table,
                "the table is missing: restore the database or re-create it with `understudy init`"
                    .into(),
            ));
        }
        return Ok(());
    }
    if version.is_none() && table != VERSION_TABLE {
        return Err(mismatch(
            table,
            "it exists but the database has no us_schema_version table: it was not made by understudy init".into(),
        ));
    }
    if version.is_some_and(|v| v < since) {
        return Err(mismatch(
            table,
            format!(
                "it exists but schema version {} does not create it",
                version.unwrap_or(0)
            ),
        ));
    }
    Ok(())
}

/// `check_schema`: ours, current, complete (tables, state row, and every
/// trigger the captured `tables` need).
pub(super) fn check_current(
    conn: &Connection,
    url: &str,
    tables: &[TableDesc],
    example: bool,
) -> StoreResult<()> {
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
    check_shapes(conn, url, Some(v), true, example)?;
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
    for (table, name) in capture::required_names(tables) {
        let present: bool = st.query_row([&name], |r| r.get(0)).map_err(err)?;
        if !present {
            return Err(StoreError::SchemaMismatch {
                url: url.to_string(),
                table,
                detail: format!(
                    "trigger {name} is missing, so changes would be lost or writes not fenced; run `understudy init --config FILE` to re-create it"
                ),
            });
        }
    }
    Ok(())
}

/// Give the change log and the quarantine at least `width` value columns
/// (`c0..`): a captured table wider than the log needs room for its image.
fn ensure_width(conn: &Connection, width: usize) -> rusqlite::Result<()> {
    for table in ["us_changelog", "us_quarantine"] {
        let have = columns(conn, table)?
            .iter()
            .filter(|c| c.starts_with('c') && c[1..].parse::<usize>().is_ok())
            .count();
        for i in have..width {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN c{i}"))?;
        }
    }
    Ok(())
}

/// Bring the captured tables in: create the example schema when asked,
/// read the tables' description from the catalog, widen the log for them,
/// and generate their capture, cascade and fence triggers (dropping those
/// of tables no longer captured). Runs in the caller's write transaction,
/// so no write lands on a captured table uncaptured or unfenced.
pub(super) fn sync_capture(
    conn: &Connection,
    url: &str,
    spec: &CaptureSpec,
) -> StoreResult<Catalog> {
    {
        if spec.example {
            conn.execute_batch(EXAMPLE_SQL).map_err(err)?;
        }
        let cat = catalog::read_catalog(conn, spec).map_err(|source| StoreError::Catalog {
            url: url.to_string(),
            source,
        })?;
        ensure_width(conn, rows::log_width(&cat)).map_err(err)?;
        capture::sync(
            conn,
            &["us_capture_", "us_cascade_"],
            &capture::capture_and_cascade(cat.tables()),
        )
        .map_err(err)?;
        let names: Vec<_> = cat.tables().iter().map(|t| t.name.clone()).collect();
        capture::refresh_fence(conn, &names).map_err(err)?;
        Ok(cat)
    }
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

/// Create or upgrade the schema up to `upto` and seed the state; at the
/// latest version also bring the captured tables in (see
/// [`sync_capture`]). Everything runs in ONE write transaction with the
/// version rows: a failure leaves the database as it was, and no write can
/// land on a captured table between a migration and its triggers.
pub(super) fn init(
    conn: &Connection,
    url: &str,
    p: &InitParams,
    upto: u32,
    spec: &CaptureSpec,
) -> StoreResult<(InitReport, Option<Catalog>)> {
    let from = version(conn).map_err(err)?;
    check_shapes(conn, url, from, false, spec.example)?;
    if from.is_some() {
        check_identity(conn, url, p)?;
    }
    ensure_wal(conn, url)?;
    let run = || -> StoreResult<(InitReport, Option<Catalog>)> {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        // Another init may have run meanwhile: read the version under the lock.
        let from = version(conn).map_err(err)?.unwrap_or(0);
        conn.execute_batch(VERSION_TABLE_SQL).map_err(err)?;
        for m in MIGRATIONS
            .iter()
            .filter(|m| m.version > from && m.version <= upto)
        {
            migrate(conn, m, p)?;
        }
        let to = upto.max(from);
        let catalog = if to >= LATEST {
            Some(sync_capture(conn, url, spec)?)
        } else {
            None
        };
        conn.execute_batch("COMMIT").map_err(err)?;
        Ok((
            InitReport {
                from_version: from,
                to_version: to,
            },
            catalog,
        ))
    };
    run().inspect_err(|_| rollback(conn))
}

/// One migration inside `init`'s transaction, with its version row.
fn migrate(conn: &Connection, m: &Migration, p: &InitParams) -> StoreResult<()> {
    let steps = || -> rusqlite::Result<()> {
        conn.execute_batch(m.sql)?;
        m.code.map_or(Ok(()), |code| code(conn))
    };
    steps().map_err(|e| {
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
    Ok(())
}

/// WAL lets the agent read while applications write.
fn ensure_wal(conn: &Connection, url: &str) -> StoreResult<()> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(err)?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let set: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !set.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "database {url} cannot use WAL journal mode (got {set}); is it on a network file system?"
        )));
    }
    Ok(())
}
