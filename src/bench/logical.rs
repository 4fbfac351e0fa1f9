//! PostgreSQL built-in logical replication, driven by the same writer and the
//! same standard workload as the replication bench, so the two can be read
//! side by side: a publisher database (`PUBLICATION … FOR TABLE projects,
//! jobs, keys`) on a server with `wal_level = logical`, a subscriber database
//! (`SUBSCRIPTION`, on a second server when `--passive-database-url` is
//! given), both with the application tables `understudy init` creates and
//! every trigger dropped (logical replication needs only the tables; the
//! capture and fence triggers would only slow the writer and refuse the
//! subscriber's applies).
//!
//! Measures, like the replication bench: `source_rate` (the writer alone on a
//! publisher-side database with no publication), `replicated_rate` (the same
//! operations written to the publisher divided by the time until the last of
//! them is visible on the subscriber, seen through a marker row written last:
//! the subscriber applies in commit order) and lag at a fixed rate (each row
//! image's visibility on the subscriber minus its `updated_at`, which the
//! writer sets just before its commit; polled every millisecond through an
//! index on `updated_at`).
//!
//! Owns: the logical replication comparison bench.
//! Must never: run as a test, or touch databases, publications, slots or
//! subscriptions it did not create (its names carry the process id).

use super::capture::{BenchDb, drop_triggers, params, write_rate};
use super::{Backend, BenchArgs, LagSample, lag_fields};
use crate::config::{DatabaseUrl, redact_url};
use crate::tables::CaptureSpec;
use crate::workload::{AppConn, AppOp, Workload, now_ms, project_name};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

async fn connect(url: &DatabaseUrl) -> Result<tokio_postgres::Client> {
    let DatabaseUrl::Postgres(u) = url else {
        bail!("the logical replication bench runs on PostgreSQL only");
    };
    let (c, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact_url(u)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// A database with the application tables of `understudy init` and no
/// triggers.
async fn plain_db(server: &str, name: &str) -> Result<BenchDb> {
    let db = BenchDb::create(Backend::Postgres, Some(server), name).await?;
    crate::store::init_database(&db.url, &params(), &CaptureSpec::example()).await?;
    drop_triggers(&db.url).await?;
    Ok(db)
}

/// The publication, slot and subscription; dropped (best effort) on
/// `teardown`, before the databases are.
struct Link {
    publisher: tokio_postgres::Client,
    subscriber: tokio_postgres::Client,
    slot: String,
    sub: String,
}

impl Link {
    async fn create(pub_db: &BenchDb, sub_db: &BenchDb) -> Result<Link> {
        let publisher = connect(&pub_db.url).await?;
        let subscriber = connect(&sub_db.url).await?;
        let id = std::process::id();
        let (publication, slot, sub) = (
            format!("understudy_bench_pub_{id}"),
            format!("understudy_bench_slot_{id}"),
            format!("understudy_bench_sub_{id}"),
        );
        publisher
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE projects, jobs, keys"
            ))
            .await
            .context("creating the publication")?;
        // The slot is made here rather than by CREATE SUBSCRIPTION: that
        // hangs when publisher and subscriber share one server.
        publisher
            .query_one(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .context("creating the replication slot")?;
        let link = Link {
            publisher,
            subscriber,
            slot,
            sub,
        };
        match link.subscribe(&publication, &pub_db.url).await {
            Ok(()) => Ok(link),
            Err(e) => {
                // A leftover slot would hold the publisher's WAL forever and
                // keep its database from being dropped.
                link.teardown().await;
                Err(e)
            }
        }
    }

    /// Index the subscriber for the lag monitor, subscribe, and wait until
    /// the publisher streams to it.
    async fn subscribe(&self, publication: &str, pub_url: &DatabaseUrl) -> Result<()> {
        // The lag monitor reads rows newer than a watermark.
        for t in ["projects", "jobs", "keys"] {
            self.subscriber
                .batch_execute(&format!(
                    "CREATE INDEX bench_{t}_updated_at ON {t} (updated_at)"
                ))
                .await?;
        }
        let DatabaseUrl::Postgres(conninfo) = pub_url else {
            bail!("the publisher is not a PostgreSQL database");
        };
        self.subscriber
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {} CONNECTION '{}' PUBLICATION {publication} \
                 WITH (create_slot = false, slot_name = '{}', copy_data = false)",
                self.sub,
                conninfo.replace('\'', "''"),
                self.slot
            ))
            .await
            .context("creating the subscription")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let streaming = self
                .publisher
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s \
                     ON s.active_pid = r.pid WHERE s.slot_name = $1 AND r.state = 'streaming'",
                    &[&self.slot],
                )
                .await?
                .is_some();
            if streaming {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the subscription did not start streaming within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn teardown(self) {
        let dropped = self
            .subscriber
            .batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {}", self.sub))
            .await;
        if dropped.is_err() {
            let _ = self
                .subscriber
                .batch_execute(&format!(
                    "ALTER SUBSCRIPTION {0} DISABLE; ALTER SUBSCRIPTION {0} SET (slot_name = NONE); \
                     DROP SUBSCRIPTION {0}",
                    self.sub
                ))
                .await;
        }
        let _ = self
            .publisher
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&self.slot],
            )
            .await;
    }
}

pub async fn run(args: &BenchArgs) -> Result<Value> {
    if args.backend != Backend::Postgres
        || args.passive_backend.unwrap_or(args.backend) != Backend::Postgres
    {
        bail!("--mode pg-logical is PostgreSQL to PostgreSQL: use --backend postgres");
    }
    let Some(publisher) = args.database_url.as_deref() else {
        bail!("--mode pg-logical needs --database-url (or DATABASE_URL) for the publisher");
    };
    let subscriber = args.passive_database_url.as_deref().unwrap_or(publisher);

    // Before creating anything: logical replication needs wal_level=logical.
    let level: String = super::capture::pg_admin(publisher.trim_end_matches('/'))
        .await?
        .query_one("SHOW wal_level", &[])
        .await?
        .get(0);
    if level != "logical" {
        bail!(
            "the publisher's wal_level is {level}, not logical: start it with \
             `scripts/with-postgres --logical` (or -c wal_level=logical)"
        );
    }

    // 1. The writer alone, on a publisher-side database without publication.
    let alone = plain_db(publisher, "lr_alone").await?;
    eprintln!("bench: writer alone (no triggers), {} ops", args.ops);
    let source_rate = write_rate(&alone.url, args.ops, args.tx_size, args.seed).await?;
    alone.drop_db().await;

    let pub_db = plain_db(publisher, "lr_pub").await?;
    let sub_db = plain_db(subscriber, "lr_sub").await?;
    let link = match Link::create(&pub_db, &sub_db).await {
        Ok(link) => link,
        Err(e) => {
            pub_db.drop_db().await;
            sub_db.drop_db().await;
            return Err(e);
        }
    };
    let measured = measure(args, &pub_db.url, &sub_db.url).await;
    link.teardown().await;
    pub_db.drop_db().await;
    sub_db.drop_db().await;
    let (done, write_secs, e2e_secs, lags) = measured?;
    let replicated_rate = done as f64 / e2e_secs;

    let mut doc = json!({
        "bench": "replication",
        "system": "pg-logical",
        "backend": "postgres",
        "passive_backend": "postgres",
        "ops": done,
        "tx_size": args.tx_size,
        "seed": args.seed,
        "source_rate": source_rate.round(),
        "replicated_rate": replicated_rate.round(),
        "replicated_ratio": (replicated_rate / source_rate * 1000.0).round() / 1000.0,
        "writer_rate_end_to_end_run": (done as f64 / write_secs).round(),
        "rate": args.rate,
    });
    if let Some(m) = doc.as_object_mut() {
        m.extend(lag_fields(&lags, args.lag_trace));
    }
    Ok(doc)
}

/// The end-to-end run and the lag run; returns (operations, writer seconds,
/// end-to-end seconds, lag samples).
async fn measure(
    args: &BenchArgs,
    publisher: &DatabaseUrl,
    subscriber: &DatabaseUrl,
) -> Result<(u64, f64, f64, Vec<LagSample>)> {
    eprintln!("bench: end to end, {} ops", args.ops);
    let mut app = AppConn::connect(publisher).await?;
    let sub = connect(subscriber).await?;
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
    // The marker: commits after every operation above, and the subscriber
    // applies in commit order, so seeing it means seeing all of them.
    let marker = format!("{{\"bench_marker\":{}}}", std::process::id());
    app.execute(&[AppOp::UpdateProjectConfig {
        name: project_name(0),
        config: marker.clone(),
    }])
    .await?;
    let write_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let seen = sub
            .query_opt(
                "SELECT 1 FROM projects WHERE name = $1 AND config = $2",
                &[&project_name(0), &marker],
            )
            .await?
            .is_some();
        if seen {
            break;
        }
        if Instant::now() > deadline {
            bail!("the subscriber did not catch up within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e2e_secs = started.elapsed().as_secs_f64();

    eprintln!("bench: lag at {}/s for {} s", args.rate, args.seconds);
    let lags = lag_run(&mut app, &mut w, sub, args.rate, args.seconds).await?;
    Ok((done, write_secs, e2e_secs, lags))
}

/// Write at `rate` for `seconds` while a monitor polls the subscriber for
/// row images newer than the last one it saw: lag = time seen − `updated_at`.
/// A row written twice between two polls (1 ms apart) yields one sample.
async fn lag_run(
    app: &mut AppConn,
    w: &mut Workload,
    sub: tokio_postgres::Client,
    rate: u64,
    seconds: u64,
) -> Result<Vec<LagSample>> {
    let stop = Arc::new(AtomicBool::new(false));
    let m_stop = stop.clone();
    let mut watermark: i64 = now_ms();
    let started = Instant::now();
    let monitor = tokio::spawn(async move {
        let query = sub
            .prepare(
                "SELECT 'j' || id, updated_at FROM jobs WHERE updated_at >= $1 \
                 UNION ALL SELECT 'k' || path, updated_at FROM keys WHERE updated_at >= $1 \
                 UNION ALL SELECT 'p' || name, updated_at FROM projects WHERE updated_at >= $1",
            )
            .await?;
        let mut lags = Vec::new();
        // Rows already counted at the watermark's millisecond (`>=` keeps a
        // later commit in that same millisecond from being missed).
        let mut at_watermark: HashSet<String> = HashSet::new();
        let mut idle_since: Option<Instant> = None;
        loop {
            let rows = sub.query(&query, &[&watermark]).await?;
            let now = now_ms();
            let at_ms = started.elapsed().as_secs_f64() * 1000.0;
            let mut fresh = 0usize;
            let mut max = watermark;
            let mut seen_rows = Vec::with_capacity(rows.len());
            for r in &rows {
                let (key, t): (String, i64) = (r.get(0), r.get(1));
                if t == watermark && at_watermark.contains(&key) {
                    continue;
                }
                fresh += 1;
                lags.push(LagSample {
                    at_ms,
                    lag_ms: (now - t).max(0) as f64,
                });
                max = max.max(t);
                seen_rows.push((key, t));
            }
            if max > watermark {
                at_watermark.clear();
                watermark = max;
            }
            at_watermark.extend(
                seen_rows
                    .into_iter()
                    .filter(|(_, t)| *t == watermark)
                    .map(|(k, _)| k),
            );
            if fresh == 0 {
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
    let t0 = Instant::now();
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        app.execute(&[w.next_op()]).await?;
    }
    stop.store(true, Ordering::Relaxed);
    monitor.await.context("lag monitor")?
}
