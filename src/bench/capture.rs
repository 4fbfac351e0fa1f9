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

/// A member database with capture and one with every trigger dropped.
async fn example_pair(args: &BenchArgs) -> Result<(BenchDb, BenchDb)> {
    let on = BenchDb::create(args.backend, args.database_url.as_deref(), "cap_on").await?;
    crate::store::init_database(&on.url, &params(), &CaptureSpec::example()).await?;
    let off = BenchDb::create(args.backend, args.database_url.as_deref(), "cap_off").await?;
    crate::store::init_database(&off.url, &params(), &CaptureSpec::example()).await?;
    drop_triggers(&off.url).await?;
    Ok((on, off))
}

/// `(raw rate, captured rate)` of `args.rounds` rounds, each on fresh
/// databases from `pair`, which of the two runs first swapping every
/// round so warm-up and a drifting disk fall on both sides alike.
/// `write` is the workload: `(database, ops, tx_size, seed)` to a rate.
pub(crate) async fn paired_rounds(
    args: &BenchArgs,
    tx_size: usize,
    pair: impl AsyncFn() -> Result<(BenchDb, BenchDb)>,
    write: impl AsyncFn(&DatabaseUrl, u64, usize, u64) -> Result<f64>,
) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for round in 0..args.rounds.max(1) {
        let (on, off) = pair().await?;
        let (raw, captured) = if round % 2 == 0 {
            let raw = write(&off.url, args.ops, tx_size, args.seed).await?;
            (raw, write(&on.url, args.ops, tx_size, args.seed).await?)
        } else {
            let captured = write(&on.url, args.ops, tx_size, args.seed).await?;
            (
                write(&off.url, args.ops, tx_size, args.seed).await?,
                captured,
            )
        };
        on.drop_db().await;
        off.drop_db().await;
        eprintln!(
            "  round {}: raw {raw:.0}/s, with capture {captured:.0}/s ({:.1}%)",
            round + 1,
            cost_pct(raw, captured)
        );
        out.push((raw, captured));
    }
    Ok(out)
}

fn cost_pct(raw: f64, captured: f64) -> f64 {
    (1.0 - captured / raw) * 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    super::percentile(&v, 50.0)
}

/// One transaction size's figures: the median raw and captured rates, the
/// median of the rounds' own costs (each round's two runs shared the
/// machine's state), and every round's cost for the spread.
pub(crate) fn summary(tx_size: usize, pairs: &[(f64, f64)]) -> Value {
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let costs: Vec<f64> = pairs.iter().map(|&(r, c)| round1(cost_pct(r, c))).collect();
    json!({
        "tx_size": tx_size,
        "rounds": pairs.len(),
        "raw_rate": median(pairs.iter().map(|p| p.0).collect()).round(),
        "capture_rate": median(pairs.iter().map(|p| p.1).collect()).round(),
        "capture_cost_pct": round1(median(costs.clone())),
        "round_costs_pct": costs,
    })
}

pub async fn run(args: &BenchArgs) -> Result<Value> {
    let mut rows = Vec::new();
    for tx_size in [1usize, 100] {
        eprintln!(
            "capture bench: {:?}, {} ops, {tx_size} per transaction, {} rounds",
            args.backend, args.ops, args.rounds
        );
        let pairs =
            paired_rounds(args, tx_size, async || example_pair(args).await, write_rate).await?;
        rows.push(summary(tx_size, &pairs));
    }
    Ok(json!({
        "bench": "capture",
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "ops": args.ops,
        "seed": args.seed,
        "results": rows,
    }))
}
