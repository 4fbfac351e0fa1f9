//! Snapshot benchmark: how fast a consistent snapshot is read, copied into
//! another member database, and how fast a real member joins by snapshot.
//!
//! Owns: the snapshot benchmark, and [`seed_rows`], the fast SQL generator of
//! a large member database (also used by the black-box tests).
//! Must never: run as a test, or touch a database it did not create.
//!
//! Three figures: `read` (the active's chunked consistent read alone),
//! `copy` (read chunks installed into a second database in one transaction,
//! in-process: the database work of a snapshot without the network), and
//! `join` (a passive agent joining a running active whose log was trimmed:
//! the whole path over mutual TLS, with the joining agent's peak memory).

use super::capture::{BenchDb, params};
use super::{Backend, BenchArgs};
use crate::config::DatabaseUrl;
use crate::localcluster::{ClusterOptions, LocalCluster, MemberSpec, proc_usage};
use crate::model::MemberId;
use crate::store::{AnyStore, InitParams, MemberStore};
use crate::tables::CaptureSpec;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Insert 10 projects (`p0`..`p9`, the standard workload's), `jobs` jobs of
/// about 1 KB each and `jobs / 10` keys of 256 random bytes, in one
/// transaction of generated SQL, as an application would (the capture
/// triggers run; on a fresh initial active no lease is needed yet).
pub async fn seed_rows(url: &DatabaseUrl, jobs: u64) -> Result<()> {
    let keys = jobs / 10;
    match url {
        DatabaseUrl::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                let c = rusqlite::Connection::open(&path)?;
                c.busy_timeout(Duration::from_secs(30))?;
                c.execute_batch(&format!(
                    "BEGIN IMMEDIATE;
                     WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9)
                     INSERT INTO projects (name, description, config)
                     SELECT 'p' || i, 'seeded project', '{{\"i\":' || i || '}}' FROM n
                     WHERE true ON CONFLICT (name) DO NOTHING;
                     WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs} - 1)
                     INSERT INTO jobs (id, project, name, group_path, description, definition,
                                       schedule, schedule_enabled, execution_enabled, owner_member)
                     SELECT printf('seed-job-%09d', i), 'p' || (i % 10), 'job ' || i,
                            'group/' || (i % 100), 'seeded job',
                            '{{\"steps\":[\"' || hex(randomblob(496)) || '\"]}}',
                            CASE WHEN i % 2 = 0 THEN '0 0 * * * ?' END, 1, 1, NULL
                     FROM n;
                     WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {keys} - 1)
                     INSERT INTO keys (path, kind, content, meta)
                     SELECT printf('keys/seed/%09d', i), 'password', randomblob(256), '{{}}'
                     FROM n WHERE {keys} > 0;
                     COMMIT;"
                ))?;
                Ok(())
            })
            .await
            .context("seed task")?
        }
        DatabaseUrl::Postgres(u) => {
            let (c, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            c.batch_execute(&format!(
                "BEGIN;
                 INSERT INTO projects (name, description, config)
                 SELECT 'p' || i, 'seeded project', '{{\"i\":' || i || '}}' FROM generate_series(0, 9) i
                 ON CONFLICT (name) DO NOTHING;
                 INSERT INTO jobs (id, project, name, group_path, description, definition,
                                   schedule, schedule_enabled, execution_enabled, owner_member)
                 SELECT 'seed-job-' || lpad(i::text, 9, '0'), 'p' || (i % 10), 'job ' || i,
                        'group/' || (i % 100), 'seeded job',
                        '{{\"steps\":[\"' || repeat(md5(i::text), 31) || '\"]}}',
                        CASE WHEN i % 2 = 0 THEN '0 0 * * * ?' END, true, true, NULL
                 FROM generate_series(0, {jobs} - 1) i;
                 INSERT INTO keys (path, kind, content, meta)
                 SELECT 'keys/seed/' || lpad(i::text, 9, '0'), 'password',
                        decode(repeat(md5(i::text), 16), 'hex'), '{{}}'
                 FROM generate_series(0, {keys} - 1) i;
                 COMMIT;"
            ))
            .await
            .context("seeding the PostgreSQL database")?;
            Ok(())
        }
    }
}

/// Snapshot benches run on the example schema.
fn example() -> CaptureSpec {
    CaptureSpec::example()
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1e6 * 10.0).round() / 10.0
}

pub async fn run(args: &BenchArgs) -> Result<Value> {
    let passive_backend = args.passive_backend.unwrap_or(args.backend);
    let jobs = args.ops;
    let server = args.database_url.as_deref();
    let src = BenchDb::create(args.backend, server, "snap_src").await?;
    crate::store::init_database(&src.url, &params(), &example()).await?;
    eprintln!(
        "bench: seeding {jobs} jobs (+ {} keys, 10 projects)",
        jobs / 10
    );
    let t = Instant::now();
    seed_rows(&src.url, jobs).await?;
    let seed_secs = t.elapsed().as_secs_f64();

    // 1. The consistent read alone.
    let store = AnyStore::open(&src.url, &example()).await?;
    store.sequence().await?;
    let (max_rows, max_bytes) = (1000, 1 << 20);
    let t = Instant::now();
    let mut reader = store.snapshot_reader().await?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    loop {
        let chunk = reader.next_chunk(max_rows, max_bytes).await?;
        if chunk.is_empty() {
            break;
        }
        rows += chunk.len() as u64;
        bytes += chunk.iter().map(|r| r.approx_bytes() as u64).sum::<u64>();
    }
    let read_secs = t.elapsed().as_secs_f64();
    drop(reader);
    eprintln!("bench: read {rows} rows in {read_secs:.1} s");

    // 2. Copy into a second database, in-process.
    let dst = BenchDb::create(passive_backend, server, "snap_dst").await?;
    crate::store::init_database(
        &dst.url,
        &InitParams {
            member: MemberId::new("b"),
            ..params()
        },
        &example(),
    )
    .await?;
    let target = AnyStore::open(&dst.url, &example()).await?;
    let t = Instant::now();
    let mut reader = store.snapshot_reader().await?;
    target.install_snapshot_begin(reader.position()).await?;
    loop {
        let chunk = reader.next_chunk(max_rows, max_bytes).await?;
        if chunk.is_empty() {
            break;
        }
        target.install_snapshot_rows(&chunk).await?;
    }
    target.install_snapshot_commit().await?;
    let copy_secs = t.elapsed().as_secs_f64();
    drop(reader);
    if target.checksums().await? != store.checksums().await? {
        bail!("the copied database differs from its source");
    }
    eprintln!("bench: copied in {copy_secs:.1} s");
    drop(target);
    dst.drop_db().await;
    drop(store);

    // 3. A passive agent joins the running active by snapshot.
    let join = join_run(&src.url, passive_backend, server).await?;
    src.drop_db().await;

    Ok(json!({
        "bench": "snapshot",
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "passive_backend": format!("{:?}", passive_backend).to_lowercase(),
        "jobs": jobs,
        "rows": rows,
        "mb": mb(bytes),
        "seed_secs": (seed_secs * 10.0).round() / 10.0,
        "read": {
            "secs": (read_secs * 100.0).round() / 100.0,
            "rows_per_s": (rows as f64 / read_secs).round(),
            "mb_per_s": mb((bytes as f64 / read_secs) as u64),
        },
        "copy": {
            "secs": (copy_secs * 100.0).round() / 100.0,
            "rows_per_s": (rows as f64 / copy_secs).round(),
            "mb_per_s": mb((bytes as f64 / copy_secs) as u64),
        },
        "join": join,
    }))
}

/// Start an active on `src` (with a retention cap, so its log no longer
/// starts at seq 1 and a new member needs a snapshot), then a passive, and
/// time the passive until it holds the active's head.
async fn join_run(
    src: &DatabaseUrl,
    passive_backend: Backend,
    server: Option<&str>,
) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let dst = BenchDb::create(passive_backend, server, "snap_join").await?;
    let bin = std::env::current_exe().context("locating the understudy binary")?;
    let mut cluster = LocalCluster::create(
        dir.path(),
        &bin,
        &[
            MemberSpec {
                id: "a".into(),
                database: Some(src.clone()),
            },
            MemberSpec {
                id: "b".into(),
                database: Some(dst.url.clone()),
            },
        ],
        ClusterOptions {
            cluster: "bench".into(),
            auto_failover: false,
            heartbeat_ms: 500,
            lease_ms: 2500,
            failover_ms: 3000,
            extra_replication: "retain_min_changes = 100\nretain_min_age_ms = 0\nretain_max_changes = 1000\nretain_interval_ms = 200\n".into(),
            ..ClusterOptions::default()
        },
    )?;
    // The source was initialised as member `a` of cluster `bench` already.
    cluster.init_all()?;
    cluster.start("a")?;
    let probe = AnyStore::open(src, &example()).await?;
    cluster
        .wait_until(
            Duration::from_secs(600),
            "the active to trim its log",
            || async {
                probe
                    .oldest_seq()
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|o| o > 1)
            },
        )
        .await?;
    let t = Instant::now();
    cluster.start("b")?;
    let pid = cluster.member("b").pid().unwrap_or(0);
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((rss, _)) = proc_usage(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let head = cluster.status("a").await?["position"]["seq"]
        .as_u64()
        .unwrap_or(0);
    let joined = cluster
        .wait_converged("a", head, Duration::from_secs(3600))
        .await;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    joined?;
    let rows = {
        let s = AnyStore::open(&dst.url, &example()).await?;
        s.checksums().await?.iter().map(|t| t.rows).sum::<u64>()
    };
    let snapshot_line = std::fs::read_to_string(&cluster.member("b").log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("snapshot installed"));
    drop(cluster);
    drop(probe);
    dst.drop_db().await;
    Ok(json!({
        "by_snapshot": snapshot_line,
        "rows": rows,
        "secs": (secs * 100.0).round() / 100.0,
        "rows_per_s": (rows as f64 / secs).round(),
        "passive_peak_rss_kb": peak.load(Ordering::Relaxed),
    }))
}
