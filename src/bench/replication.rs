//! Replication benchmark: a real active and passive (`understudy run`
//! processes) over mutual TLS on loopback. Prints the writer's rate alone,
//! the end-to-end rate on the passive, lag percentiles at a fixed rate, and
//! the agents' memory and CPU.
//!
//! Owns: the replication benchmark.
//! Must never: run as a test.

use super::capture::{BenchDb, params, write_rate};
use super::{Backend, BenchArgs, LagSample, lag_fields};
use crate::config::DatabaseUrl;
use crate::localcluster::{ClusterOptions, LocalCluster, MemberSpec, proc_usage};
use crate::model::{Change, ChangeOp};
use crate::store::{AnyStore, MemberStore};
use crate::tables::{CaptureSpec, Catalog, Value as Cell};
use crate::workload::{AppConn, Workload, now_ms};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The writer alone on a fresh database of the active's backend with
/// capture (no agent watches it), in mutations per second.
async fn alone_rate(args: &BenchArgs) -> Result<f64> {
    let alone = BenchDb::create(args.backend, args.database_url.as_deref(), "repl_alone").await?;
    crate::store::init_database(&alone.url, &params(), &CaptureSpec::example()).await?;
    eprintln!("bench: writer alone, {} ops", args.ops);
    let rate = write_rate(&alone.url, args.ops, args.tx_size, args.seed).await;
    alone.drop_db().await;
    rate
}

/// The `updated_at` (ms) of an upserted row of the example schema, which
/// the writer sets just before its commit; `None` for a delete.
fn updated_at(catalog: &Catalog, c: &Change) -> Option<i64> {
    let ChangeOp::Upsert(r) = &c.op else {
        return None;
    };
    let (_, t) = catalog.get(&r.table)?;
    match r.values.get(t.image_index("updated_at")?)? {
        Cell::Int(ms) => Some(*ms),
        _ => None,
    }
}

fn usage(c: &LocalCluster, id: &str) -> (u64, u64) {
    c.member(id).pid().and_then(proc_usage).unwrap_or((0, 0))
}

pub async fn run(args: &BenchArgs) -> Result<Value> {
    let passive_backend = args.passive_backend.unwrap_or(args.backend);
    if args.passive_dir.is_some() && passive_backend != Backend::Sqlite {
        bail!("--passive-dir places an SQLite passive's database; this passive is on PostgreSQL");
    }
    let dir = tempfile::tempdir()?;
    let db_a = BenchDb::create(args.backend, args.database_url.as_deref(), "repl_a").await?;
    let passive_server = args
        .passive_database_url
        .as_deref()
        .or(args.database_url.as_deref());
    let db_b = BenchDb::create_in(
        passive_backend,
        passive_server,
        "repl_b",
        args.passive_dir.as_deref(),
    )
    .await?;
    let bin = std::env::current_exe().context("locating the understudy binary")?;
    let options = ClusterOptions {
        cluster: "bench".into(),
        auto_failover: false,
        heartbeat_ms: 500,
        lease_ms: 2500,
        failover_ms: 3000,
        extra_replication: args.member_replication.replace("\\n", "\n"),
        ..ClusterOptions::default()
    };
    let mut cluster = LocalCluster::create(
        dir.path(),
        &bin,
        &[
            MemberSpec {
                id: "a".into(),
                database: Some(db_a.url.clone()),
            },
            MemberSpec {
                id: "b".into(),
                database: Some(db_b.url.clone()),
            },
        ],
        options,
    )?;
    cluster.init_all()?;

    if args.pin {
        super::pin::pin_process(None, 0)?;
    }
    // 1. The writer alone, on a database of the active's backend with capture.
    let alone_before = alone_rate(args).await?;

    cluster.start_all()?;
    if args.pin {
        for id in ["a", "b"] {
            let pid = cluster
                .member(id)
                .pid()
                .context("an agent without a process")?;
            super::pin::pin_process(Some(pid), 1)?;
        }
    }
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the passive to connect",
            || async {
                cluster
                    .status("a")
                    .await
                    .map(|s| {
                        s["peers"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|p| p["connected"] == true))
                    })
                    .unwrap_or(false)
            },
        )
        .await?;
    let idle = (usage(&cluster, "a"), usage(&cluster, "b"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle2 = (usage(&cluster, "a"), usage(&cluster, "b"));

    // 2. End to end: the same writer against the active, until the passive has it all.
    eprintln!("bench: end to end, {} ops", args.ops);
    let mut app = AppConn::connect(&db_a.url).await?;
    let mut w = Workload::new(args.seed);
    app.execute(&w.setup()).await?;
    let started = Instant::now();
    let mut done = 0u64;
    while done < args.ops {
        let n = args.tx_size.min((args.ops - done) as usize);
        let batch: Vec<_> = (0..n).map(|_| w.next_op()).collect();
        app.execute(&batch).await?;
        done += n as u64;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let head = cluster.status("a").await?["position"]["seq"]
        .as_u64()
        .unwrap_or(0);
    cluster
        .wait_converged("a", head, Duration::from_secs(600))
        .await?;
    let e2e_secs = started.elapsed().as_secs_f64();
    let replicated_rate = done as f64 / e2e_secs;
    let busy = (usage(&cluster, "a"), usage(&cluster, "b"));

    // 3. Lag at a fixed rate, observed on the passive's own database.
    eprintln!("bench: lag at {}/s for {} s", args.rate, args.seconds);
    let lags = lag_run(&mut app, &mut w, &db_b.url, args.rate, args.seconds).await?;
    let after = (usage(&cluster, "a"), usage(&cluster, "b"));

    // 4. The writer alone again (the agents idle, their databases untouched),
    // now that the machine is as warm as in the end-to-end run. The higher
    // of the two alone rates is the reference, so neither warm-up nor a slow
    // first run can flatter the ratio.
    let alone_after = alone_rate(args).await?;
    let source_rate = alone_before.max(alone_after);

    let cpu_pct = |a: u64, b: u64, secs: f64| {
        ((b.saturating_sub(a)) as f64 / 10.0 / secs * 10.0).round() / 10.0
    };
    let mut doc = json!({
        "bench": "replication",
        "system": "understudy",
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "passive_backend": format!("{:?}", passive_backend).to_lowercase(),
        "ops": done,
        "tx_size": args.tx_size,
        "seed": args.seed,
        "source_rate": source_rate.round(),
        "source_rate_runs": [alone_before.round(), alone_after.round()],
        "replicated_rate": replicated_rate.round(),
        "replicated_ratio": (replicated_rate / source_rate * 1000.0).round() / 1000.0,
        "writer_rate_end_to_end_run": (done as f64 / write_secs).round(),
        "rate": args.rate,
        "member_replication": args.member_replication,
        "pinned": args.pin,
        "passive_dir": args.passive_dir.as_ref().map(|d| d.display().to_string()),
        "agents": {
            "active_rss_kb_idle": idle2.0.0,
            "passive_rss_kb_idle": idle2.1.0,
            "active_cpu_pct_idle": cpu_pct(idle.0.1, idle2.0.1, 2.0),
            "passive_cpu_pct_idle": cpu_pct(idle.1.1, idle2.1.1, 2.0),
            "active_rss_kb_load": after.0.0,
            "passive_rss_kb_load": after.1.0,
            "active_cpu_pct_load": cpu_pct(idle2.0.1, busy.0.1, e2e_secs),
            "passive_cpu_pct_load": cpu_pct(idle2.1.1, busy.1.1, e2e_secs),
        },
    });
    if let Some(m) = doc.as_object_mut() {
        m.extend(lag_fields(&lags, args.lag_trace));
    }
    drop(cluster);
    db_a.drop_db().await;
    db_b.drop_db().await;
    Ok(doc)
}

/// Write at `rate` for `seconds` while a monitor reads the passive's change
/// log: lag = time seen on the passive − the row's `updated_at` (set by the
/// writer just before its commit).
async fn lag_run(
    app: &mut AppConn,
    w: &mut Workload,
    passive: &DatabaseUrl,
    rate: u64,
    seconds: u64,
) -> Result<Vec<LagSample>> {
    let store = Arc::new(AnyStore::open(passive, &CaptureSpec::example()).await?);
    let catalog = store.catalog();
    let mut after = store.state().await?.position.seq;
    let stop = Arc::new(AtomicBool::new(false));
    let (m_store, m_stop) = (store.clone(), stop.clone());
    let started = Instant::now();
    let monitor = tokio::spawn(async move {
        let mut lags = Vec::new();
        let mut idle_since: Option<Instant> = None;
        loop {
            let read = m_store.read_changes(after, 10_000, 64 << 20).await?;
            let now = now_ms();
            let at_ms = started.elapsed().as_secs_f64() * 1000.0;
            for c in &read.changes {
                after = c.pos.seq;
                let Some(t) = updated_at(&catalog, c) else {
                    continue;
                };
                lags.push(LagSample {
                    at_ms,
                    lag_ms: (now - t).max(0) as f64,
                });
            }
            if read.changes.is_empty() {
                if m_stop.load(Ordering::Relaxed) {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                idle_since = None;
            }
        }
        anyhow::Ok(lags)
    });
    let total = rate * seconds;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        app.execute(&[w.next_op()]).await?;
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.context("lag monitor")?
}
