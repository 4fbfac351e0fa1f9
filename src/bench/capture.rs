//! Capture overhead: the standard workload's write rate on a member database
//! with understudy's triggers (capture and fence) and on the same schema
//! with every trigger dropped, for 1-row and 100-row transactions.
//!
//! Owns: the capture benchmark.
//! Must never: run against a database it did not create.

use super::{Backend, BenchArgs};
use crate::config::DatabaseUrl;
use crate::model::MemberId;
use crate::store::InitParams;
use crate::tables::CaptureSpec;
use crate::workload::{AppConn, Workload};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::Instant;

pub(crate) fn params() -> InitParams {
    InitParams {
        cluster: "bench".into(),
        member: MemberId::new("a"),
        initial_active: MemberId::new("a"),
    }
}

/// A throw-away database of the chosen backend.
pub(crate) struct BenchDb {
    pub url: DatabaseUrl,
    _dir: Option<tempfile::TempDir>,
    pg_drop: Option<(String, String)>,
}

impl BenchDb {
    pub async fn create(backend: Backend, server: Option<&str>, name: &str) -> Result<BenchDb> {
        Self::create_in(backend, server, name, None).await
    }

    /// As [`BenchDb::create`], an SQLite database in a temporary folder
    /// under `parent` when given (the system's temporary folder otherwise).
    pub async fn create_in(
        backend: Backend,
        server: Option<&str>,
        name: &str,
        parent: Option<&std::path::Path>,
    ) -> Result<BenchDb> {
        match backend {
            Backend::Sqlite => {
                let dir = match parent {
                    Some(p) => tempfile::tempdir_in(p)
                        .with_context(|| format!("a temporary folder in {}", p.display()))?,
                    None => tempfile::tempdir()?,
                };
                let url = DatabaseUrl::Sqlite(dir.path().join(format!("{name}.db")));
                Ok(BenchDb {
                    url,
                    _dir: Some(dir),
                    pg_drop: None,
                })
            }
            Backend::Postgres => {
                let Some(server) = server else {
                    bail!(
                        "the postgres backend needs --database-url postgres://USER@HOST:PORT (or DATABASE_URL)"
                    );
                };
                let server = server.trim_end_matches('/').to_string();
                let db = format!("understudy_bench_{name}_{}", std::process::id());
                let admin = pg_admin(&server).await?;
                // One statement per call: DROP/CREATE DATABASE refuse to run
                // inside the implicit transaction of a multi-statement batch.
                for stmt in [
                    format!("DROP DATABASE IF EXISTS {db}"),
                    format!("CREATE DATABASE {db}"),
                ] {
                    admin
                        .batch_execute(&stmt)
                        .await
                        .context("creating the bench database")?;
                }
                Ok(BenchDb {
                    url: DatabaseUrl::Postgres(format!("{server}/{db}")),
                    _dir: None,
                    pg_drop: Some((server, db)),
                })
            }
        }
    }

    pub async fn drop_db(self) {
        if let Some((server, db)) = &self.pg_drop
            && let Ok(admin) = pg_admin(server).await
        {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .await;
        }
    }
}

pub(crate) async fn pg_admin(server: &str) -> Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", crate::config::redact_url(server)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// Drop every trigger on the application's tables (the raw baseline).
pub(crate) async fn drop_triggers(url: &DatabaseUrl) -> Result<()> {
    match url {
        DatabaseUrl::Sqlite(p) => {
            let c = rusqlite::Connection::open(p)?;
            let names: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for n in names {
                c.execute_batch(&format!("DROP TRIGGER \"{n}\""))?;
            }
        }
        DatabaseUrl::Postgres(u) => {
            let (c, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let rows = c
                .query(
                    "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                     WHERE NOT t.tgisinternal AND c.relname NOT LIKE 'us\\_%'",
                    &[],
                )
                .await?;
            for r in rows {
                let (t, tab): (String, String) = (r.get(0), r.get(1));
                c.batch_execute(&format!("DROP TRIGGER \"{t}\" ON \"{tab}\""))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Write `ops` operations of the standard workload in transactions of
/// `tx_size`; returns mutations per second.
pub(crate) async fn write_rate(
    url: &DatabaseUrl,
    ops: u64,
    tx_size: usize,
    seed: u64,
) -> Result<f64> {
    let mut app = AppConn::connect(url).await?;
    let mut w = Workload::new(seed);
    app.execute(&w.setup()).await?;
    let started = Instant::now();
    let mut done = 0u64;
    let mut batch = Vec::with_capacity(tx_size);
    while done < ops {
        batch.clear();
        for _ in 0..tx_size.min((ops - done) as usize) {
            batch.push(w.next_op());
        }
        app.execute(&batch).await?;
        done += batch.len() as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(args: &BenchArgs) -> Result<Value> {
    let mut rows = Vec::new();
    for tx_size in [1usize, 100] {
        let on = BenchDb::create(args.backend, args.database_url.as_deref(), "cap_on").await?;
        crate::store::init_database(&on.url, &params(), &CaptureSpec::example()).await?;
        let off = BenchDb::create(args.backend, args.database_url.as_deref(), "cap_off").await?;
        crate::store::init_database(&off.url, &params(), &CaptureSpec::example()).await?;
        drop_triggers(&off.url).await?;
        // Alternate to spread any warm-up effect: off, on.
        eprintln!(
            "capture bench: {:?}, {} ops, {tx_size} per transaction",
            args.backend, args.ops
        );
        let raw = write_rate(&off.url, args.ops, tx_size, args.seed).await?;
        let captured = write_rate(&on.url, args.ops, tx_size, args.seed).await?;
        on.drop_db().await;
        off.drop_db().await;
        rows.push(json!({
            "tx_size": tx_size,
            "raw_rate": raw.round(),
            "capture_rate": captured.round(),
            "capture_cost_pct": ((1.0 - captured / raw) * 1000.0).round() / 10.0,
        }));
    }
    Ok(json!({
        "bench": "capture",
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "ops": args.ops,
        "seed": args.seed,
        "results": rows,
    }))
}
