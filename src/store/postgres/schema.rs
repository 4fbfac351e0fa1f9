//! The PostgreSQL schema: numbered migrations embedded from
//! `schemas/postgres/`, the example schema, the shape check of the example
//! tables, and `init` (migrate, read the captured tables' description,
//! generate their triggers, seed the replication state) in one transaction.
//!
//! Owns: schema versions (`us_schema_version`) and the decision whether an
//! existing example table is ours.
//! Must never: alter an application table; `init` refuses a table it cannot
//! capture (or an example table of another shape) and leaves the database
//! exactly as it was.

use super::conn::{self, query_error};
use super::values::Tables;
use super::{capture, catalog};
use crate::config::redact_url;
use crate::store::{InitParams, InitReport, StoreError, StoreResult};
use crate::tables::CaptureSpec;
use tokio_postgres::GenericClient;

/// One numbered schema file.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A database at version N gets the files after N.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_tables",
        sql: include_str!("../../../schemas/postgres/0001_tables.sql"),
    },
    Migration {
        version: 2,
        name: "0002_capture",
        sql: include_str!("../../../schemas/postgres/0002_capture.sql"),
    },
    Migration {
        version: 3,
        name: "0003_fence_drain",
        sql: include_str!("../../../schemas/postgres/0003_fence_drain.sql"),
    },
    Migration {
        version: 4,
        name: "0004_snapshot_due",
        sql: include_str!("../../../schemas/postgres/0004_snapshot_due.sql"),
    },
    Migration {
        version: 5,
        name: "0005_generic_tables",
        sql: include_str!("../../../schemas/postgres/0005_generic_tables.sql"),
    },
    Migration {
        version: 6,
        name: "0006_app_schema",
        sql: include_str!("../../../schemas/postgres/0006_app_schema.sql"),
    },
];

/// The schema version this build writes and expects.
pub const LATEST: u32 = 6;

/// The example schema's tables, created by `init` when the config has no
/// `[capture]` (idempotent).
pub const EXAMPLE_SQL: &str = include_str!("../../../schemas/postgres/example.sql");

/// Columns of the example tables (operator contract), as
/// `information_schema.columns.data_type` spells their types.
const SHAPES: &[(&str, &[(&str, &str)])] = &[
    (
        "projects",
        &[
            ("name", "text"),
            ("description", "text"),
            ("config", "text"),
            ("updated_at", "bigint"),
        ],
    ),
    (
        "jobs",
        &[
            ("id", "text"),
            ("project", "text"),
            ("name", "text"),
            ("group_path", "text"),
            ("description", "text"),
            ("definition", "text"),
            ("schedule", "text"),
            ("schedule_enabled", "boolean"),
            ("execution_enabled", "boolean"),
            ("owner_member", "text"),
            ("updated_at", "bigint"),
        ],
    ),
    (
        "keys",
        &[
            ("path", "text"),
            ("kind", "text"),
            ("content", "bytea"),
            ("meta", "text"),
            ("updated_at", "bigint"),
        ],
    ),
];

/// Serialises concurrent `init`s of one database (two operators, or a test
/// harness racing itself): `hashtext('understudy.init')` as a fixed key.
const INIT_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('understudy.init'))";

/// Which example tables exist, checking that those which do have the
/// example's shape: drills and workloads write these columns. Extra
/// columns count as another shape too.
async fn check_shapes<C: GenericClient>(c: &C, url: &str) -> StoreResult<Vec<&'static str>> {
    let mut present = Vec::new();
    for (table, want) in SHAPES {
        let rows = c
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                &[table],
            )
            .await
            .map_err(|e| query_error(url, &e))?;
        if rows.is_empty() {
            continue;
        }
        let have: Vec<(String, String)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| query_error(url, &e))?;
        let mut problems = Vec::new();
        for (col, ty) in *want {
            match have.iter().find(|(n, _)| n == col) {
                None => problems.push(format!("column {col} is missing")),
                Some((_, t)) if t != ty => problems.push(format!("column {col} is {t}, not {ty}")),
                Some(_) => {}
            }
        }
        for (n, _) in &have {
            if !want.iter().any(|(c, _)| c == n) {
                problems.push(format!("column {n} is not part of the schema"));
            }
        }
        if !problems.is_empty() {
            return Err(StoreError::SchemaMismatch {
                url: redact_url(url),
                table: (*table).to_string(),
                detail: problems.join(", "),
            });
        }
        present.push(*table);
    }
    Ok(present)
}

/// Whether `understudy migrate` ever ran here (schema 6's history holds a
/// version after 0): the example tables may then have other columns.
async fn migrated<C: GenericClient>(c: &C, url: &str) -> StoreResult<bool> {
    if !table_exists(c, url, "us_app_schema").await? {
        return Ok(false);
    }
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM us_app_schema WHERE version > 0)",
            &[],
        )
        .await
        .map_err(|e| query_error(url, &e))?;
    row.try_get(0).map_err(|e| query_error(url, &e))
}

async fn table_exists<C: GenericClient>(c: &C, url: &str, table: &str) -> StoreResult<bool> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1)",
            &[&table],
        )
        .await
        .map_err(|e| query_error(url, &e))?;
    row.try_get(0).map_err(|e| query_error(url, &e))
}

async fn current_version<C: GenericClient>(c: &C, url: &str) -> StoreResult<u32> {
    if !table_exists(c, url, "us_schema_version").await? {
        return Ok(0);
    }
    let row = c
        .query_one(
            "SELECT coalesce(max(version), 0) FROM us_schema_version",
            &[],
        )
        .await
        .map_err(|e| query_error(url, &e))?;
    let v: i32 = row.try_get(0).map_err(|e| query_error(url, &e))?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("schema version {v}")))
}

fn newer(url: &str, v: u32) -> StoreError {
    StoreError::SchemaMismatch {
        url: redact_url(url),
        table: "us_schema_version".into(),
        detail: format!(
            "schema version {v} was written by a newer understudy (this one knows up to {LATEST})"
        ),
    }
}

/// Create or upgrade the schema, generate the captured tables' triggers
/// and seed the replication state, all in one transaction on a connection
/// of its own (so no write lands on a captured table uncaptured or
/// unfenced). Returns the captured tables as it found them.
pub(crate) async fn init(
    url: &str,
    p: &InitParams,
    spec: &CaptureSpec,
) -> StoreResult<(InitReport, Tables)> {
    let mut client = conn::connect(url).await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| query_error(url, &e))?;
    tx.batch_execute(INIT_LOCK)
        .await
        .map_err(|e| query_error(url, &e))?;
    if spec.example && !migrated(&tx, url).await? {
        check_shapes(&tx, url).await?;
    }
    let from = current_version(&tx, url).await?;
    if from > LATEST {
        return Err(newer(url, from));
    }
    migrate(&tx, url, from).await?;
    if spec.example {
        tx.batch_execute(EXAMPLE_SQL).await.map_err(|e| {
            StoreError::Backend(format!("the example schema: {}", conn::describe(&e)))
        })?;
    }
    let tables = Tables::new(catalog::read_catalog(&tx, url, spec).await?);
    capture::sync(&tx, url, &tables).await?;
    seed(&tx, url, p).await?;
    tx.commit().await.map_err(|e| query_error(url, &e))?;
    Ok((
        InitReport {
            from_version: from,
            to_version: LATEST,
        },
        tables,
    ))
}

/// Run the migrations after version `from`, each with its version row.
async fn migrate<C: GenericClient>(c: &C, url: &str, from: u32) -> StoreResult<()> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS us_schema_version (\
             version    integer PRIMARY KEY,\
             name       text    NOT NULL,\
             applied_at bigint  NOT NULL DEFAULT (extract(epoch from clock_timestamp()) * 1000)::bigint)",
    )
    .await
    .map_err(|e| query_error(url, &e))?;
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        c.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Backend(format!("schema file {}: {}", m.name, conn::describe(&e)))
        })?;
        let v =
            i32::try_from(m.version).map_err(|_| StoreError::Backend("schema version".into()))?;
        c.execute(
            "INSERT INTO us_schema_version (version, name) VALUES ($1, $2)",
            &[&v, &m.name],
        )
        .await
        .map_err(|e| query_error(url, &e))?;
    }
    Ok(())
}

/// Seed the state row and the first epoch on a new database; on an existing
/// one, refuse when it belongs to another cluster or member (a config
/// pointing at the wrong database must not adopt a stranger's history).
async fn seed<C: GenericClient>(c: &C, url: &str, p: &InitParams) -> StoreResult<()> {
    let existing = c
        .query_opt("SELECT cluster, member FROM us_state WHERE id = 1", &[])
        .await
        .map_err(|e| query_error(url, &e))?;
    if let Some(row) = existing {
        let cluster: String = row.try_get(0).map_err(|e| query_error(url, &e))?;
        let member: String = row.try_get(1).map_err(|e| query_error(url, &e))?;
        if cluster != p.cluster || member != p.member.as_str() {
            return Err(StoreError::SchemaMismatch {
                url: redact_url(url),
                table: "us_state".into(),
                detail: format!(
                    "the database belongs to member {member} of cluster {cluster}, not member {} of cluster {}",
                    p.member, p.cluster
                ),
            });
        }
        return Ok(());
    }
    let role = if p.member == p.initial_active {
        "active"
    } else {
        "passive"
    };
    c.execute(
        "INSERT INTO us_state (id, cluster, member, role, epoch, active, pos_epoch, pos_seq, lease_until, paused) \
         VALUES (1, $1, $2, $3, 1, $4, 0, 0, NULL, false)",
        &[&p.cluster, &p.member.as_str(), &role, &p.initial_active.as_str()],
    )
    .await
    .map_err(|e| query_error(url, &e))?;
    c.execute(
        "INSERT INTO us_epoch_history (epoch, active, start_epoch, start_seq, at_ms, reason) \
         VALUES (1, $1, 0, 0, (extract(epoch from clock_timestamp()) * 1000)::bigint, 'initial') \
         ON CONFLICT (epoch) DO NOTHING",
        &[&p.initial_active.as_str()],
    )
    .await
    .map_err(|e| query_error(url, &e))?;
    Ok(())
}

/// Check the schema is ours and current and the captured tables' triggers
/// match their description, changing nothing. Returns the captured tables
/// as the catalog describes them now.
pub(crate) async fn check<C: GenericClient>(
    c: &C,
    url: &str,
    spec: &CaptureSpec,
) -> StoreResult<Tables> {
    if spec.example && !migrated(c, url).await? {
        check_shapes(c, url).await?;
    }
    let v = current_version(c, url).await?;
    if v > LATEST {
        return Err(newer(url, v));
    }
    if v < LATEST {
        return Err(StoreError::NotInitialised {
            url: redact_url(url),
        });
    }
    let seeded = c
        .query_opt("SELECT 1 FROM us_state WHERE id = 1", &[])
        .await
        .map_err(|e| query_error(url, &e))?;
    if seeded.is_none() {
        return Err(StoreError::NotInitialised {
            url: redact_url(url),
        });
    }
    let tables = Tables::new(catalog::read_catalog(c, url, spec).await?);
    capture::check(c, url, &tables).await?;
    Ok(tables)
}
