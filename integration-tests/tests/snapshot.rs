//! Black-box tests of snapshots, change-log retention and `understudy
//! verify`: real `understudy run` processes on real databases.
//!
//! `UNDERSTUDY_SNAPSHOT_JOBS` sets how many jobs the joining-member tests
//! seed on the active (default 20,000; run once with 1,000,000 for the
//! memory figure).

use integration_tests::pg::{TestDb, shared_server};
use integration_tests::{checksums, seed, understudy_bin, wait_until, write_workload};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec, proc_usage};
use understudy::store::MemberStore;
use understudy::workload::{AppConn, Workload};

#[derive(Clone, Copy, Debug)]
enum B {
    Sqlite,
    Pg,
}

fn db(b: B, dir: &Path, id: &str, keep: &mut Vec<TestDb>) -> DatabaseUrl {
    match b {
        B::Sqlite => DatabaseUrl::Sqlite(dir.join(format!("{id}.db"))),
        B::Pg => {
            let t = shared_server()
                .expect("test PostgreSQL server")
                .create_database(id)
                .expect("test database");
            let url = DatabaseUrl::Postgres(t.url.clone());
            keep.push(t);
            url
        }
    }
}

fn cluster(dir: &Path, members: &[(&str, DatabaseUrl)], replication: &str) -> LocalCluster {
    let specs: Vec<MemberSpec> = members
        .iter()
        .map(|(id, url)| MemberSpec {
            id: id.to_string(),
            database: Some(url.clone()),
        })
        .collect();
    let cl = LocalCluster::create(
        dir,
        &understudy_bin(),
        &specs,
        ClusterOptions {
            auto_failover: false,
            extra_replication: replication.to_string(),
            ..ClusterOptions::default()
        },
    )
    .expect("cluster files");
    cl.init_all().expect("init");
    cl
}

fn dump_logs(cl: &LocalCluster) {
    for m in &cl.members {
        eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 40));
    }
}

/// `understudy verify --config <member's config>`: exit code and stdout.
fn verify(cl: &LocalCluster, from: &str, json: bool) -> (i32, String) {
    let mut c = Command::new(&cl.bin);
    c.arg("verify")
        .arg("--config")
        .arg(&cl.member(from).config)
        .args(["--timeout-secs", "60"]);
    if json {
        c.arg("--json");
    }
    let out = c.output().expect("running understudy verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "verify (exit {:?}):\n{stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// Rows in a member's change log.
async fn log_rows(url: &DatabaseUrl) -> u64 {
    match url {
        DatabaseUrl::Sqlite(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || {
                let c = rusqlite::Connection::open(&p).expect("open");
                c.busy_timeout(Duration::from_secs(10)).expect("busy");
                c.query_row("SELECT count(*) FROM us_changelog", [], |r| {
                    r.get::<_, i64>(0)
                })
                .expect("count") as u64
            })
            .await
            .expect("join")
        }
        DatabaseUrl::Postgres(u) => {
            let (c, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let n: i64 = c
                .query_one("SELECT count(*) FROM us_changelog", &[])
                .await
                .expect("count")
                .get(0);
            n as u64
        }
    }
}

/// The highest VmRSS of a process, sampled every 20 ms until stopped.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, _)) = proc_usage(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and return the peak in kB.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// A writer of the standard workload that runs until told to stop (small
/// transactions, paced), retrying through refusals. Returns the ops written.
fn steady_writer(
    url: DatabaseUrl,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut w = Workload::new(seed);
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            write_workload(&url, &mut w, 20, 5)
                .await
                .expect("steady writer");
            done += 20;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done
    })
}

fn snapshot_jobs() -> u64 {
    std::env::var("UNDERSTUDY_SNAPSHOT_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Retention with a small cap: a member never seen holds back at most 1,000
/// changes, so the active's log soon no longer starts at seq 1 and a joining
/// member needs a snapshot.
const SMALL_CAP: &str = "retain_min_changes = 100\nretain_min_age_ms = 0\nretain_max_changes = 1000\nretain_interval_ms = 200\n";

/// A member joins an active holding N jobs (plus keys and projects) while a
/// writer keeps writing: it catches up by snapshot with its agent's memory
/// bounded, `verify` passes while the writer still runs, and again after.
async fn join_by_snapshot(active: B, joiner: B, seed_default: u64) {
    let seed = seed(seed_default);
    let jobs = snapshot_jobs();
    eprintln!("active on {active:?}, joining member on {joiner:?}, {jobs} jobs");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let a_url = db(active, d, "a", &mut keep);
    let c_url = db(joiner, d, "c", &mut keep);
    let mut cl = cluster(d, &[("a", a_url.clone()), ("c", c_url.clone())], SMALL_CAP);

    let t = Instant::now();
    understudy::bench::snapshot::seed_rows(&a_url, jobs)
        .await
        .expect("seed");
    eprintln!("seeded in {:.1} s", t.elapsed().as_secs_f64());
    cl.start("a").unwrap();
    let probe = integration_tests::open_store(&a_url).await.unwrap();
    if let Err(e) = wait_until(
        Duration::from_secs(600),
        "the active to trim its log past seq 1",
        || async {
            probe
                .oldest_seq()
                .await
                .ok()
                .flatten()
                .is_some_and(|o| o > 1)
        },
    )
    .await
    {
        dump_logs(&cl);
        panic!("{e}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writer = steady_writer(a_url.clone(), seed, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    cl.start("c").unwrap();
    let rss = RssSampler::start(cl.member("c").pid().unwrap());
    let c_log = cl.member("c").log.clone();
    let installed = wait_until(Duration::from_secs(1800), "c's snapshot", || async {
        std::fs::read_to_string(&c_log)
            .unwrap_or_default()
            .contains("snapshot installed")
    })
    .await;
    let snap_secs = t.elapsed().as_secs_f64();
    if let Err(e) = installed {
        dump_logs(&cl);
        panic!("{e}");
    }
    // Streams on from the snapshot's position while the writer runs.
    if let Err(e) = wait_until(
        Duration::from_secs(120),
        "c to follow the active",
        || async {
            let (Ok(a), Ok(c)) = (cl.status("a").await, cl.status("c").await) else {
                return false;
            };
            let (ah, cp) = (
                a["position"]["seq"].as_u64().unwrap_or(0),
                c["position"]["seq"].as_u64().unwrap_or(0),
            );
            c["snapshot"].is_null() && cp > 0 && ah.saturating_sub(cp) < 2_000
        },
    )
    .await
    {
        dump_logs(&cl);
        panic!("{e}");
    }
    let peak_kb = rss.finish();
    eprintln!(
        "FIGURES jobs={jobs} snapshot+catch-up={snap_secs:.1}s peak_rss={:.1}MB",
        peak_kb as f64 / 1024.0
    );
    assert!(
        peak_kb > 0 && peak_kb < 200 * 1024,
        "the joining agent's peak RSS was {peak_kb} kB"
    );
    let line = std::fs::read_to_string(&c_log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("snapshot installed"))
        .unwrap_or_default()
        .to_string();
    eprintln!("{line}");

    // Checksums at one position while the writer still writes.
    let (code, out) = verify(&cl, "a", false);
    assert_eq!(code, 0, "verify under writes:\n{out}");
    assert!(out.contains("verdict: match"), "{out}");

    stop.store(true, Ordering::Relaxed);
    let ops = writer.await.unwrap();
    eprintln!("the writer wrote {ops} operations during the test");
    if let Err(e) = cl.wait_converged("a", 1, Duration::from_secs(120)).await {
        dump_logs(&cl);
        panic!("{e}");
    }
    let (code, out) = verify(&cl, "c", true);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("verify --json");
    assert_eq!(v["verdict"], "match");
    let jobs_row = v["members"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "jobs")
        .cloned()
        .unwrap();
    assert!(jobs_row["rows"].as_u64().unwrap() >= jobs, "{jobs_row}");
    assert_eq!(
        checksums(&a_url).await.unwrap(),
        checksums(&c_url).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_member_joins_by_snapshot_under_writes() {
    join_by_snapshot(B::Sqlite, B::Sqlite, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_member_joins_by_snapshot_under_writes() {
    join_by_snapshot(B::Pg, B::Pg, 22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_from_sqlite_to_postgres() {
    join_by_snapshot(B::Sqlite, B::Pg, 23).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_from_postgres_to_sqlite() {
    join_by_snapshot(B::Pg, B::Sqlite, 24).await;
}

/// Under a steady writer with every passive connected, the active trims what
/// all have applied: its log stays bounded over 200,000 changes (and so do
/// the passives', by their floors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_stays_bounded_under_a_steady_writer() {
    let seed = seed(31);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let urls: Vec<(&str, DatabaseUrl)> = ["a", "b", "c"]
        .iter()
        .map(|id| (*id, DatabaseUrl::Sqlite(d.join(format!("{id}.db")))))
        .collect();
    let mut cl = cluster(
        d,
        &urls,
        "retain_min_changes = 1000\nretain_min_age_ms = 0\nretain_max_changes = 0\nretain_interval_ms = 100\n",
    );
    cl.start_all().unwrap();
    wait_until(
        Duration::from_secs(30),
        "both passives connected",
        || async {
            cl.status("a")
                .await
                .map(|s| {
                    s["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().filter(|p| p["connected"] == true).count() == 2)
                })
                .unwrap_or(false)
        },
    )
    .await
    .unwrap();
    let a_url = urls[0].1.clone();
    let mut w = Workload::new(seed);
    AppConn::connect(&a_url)
        .await
        .unwrap()
        .execute(&w.setup())
        .await
        .unwrap();

    const CHANGES: u64 = 200_000;
    const BOUND: u64 = 40_000;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, urls) = (done.clone(), urls.clone());
        tokio::spawn(async move {
            let mut max = [0u64; 3];
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                for (i, (_, u)) in urls.iter().enumerate() {
                    max[i] = max[i].max(log_rows(u).await);
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (max, samples)
        })
    };
    let t = Instant::now();
    write_workload(&a_url, &mut w, CHANGES, 20).await.unwrap();
    let write_secs = t.elapsed().as_secs_f64();
    if let Err(e) = cl
        .wait_converged("a", CHANGES, Duration::from_secs(120))
        .await
    {
        dump_logs(&cl);
        panic!("{e}");
    }
    // One more trim round after the end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let (max, samples) = sampler.await.unwrap();
    let head = cl.status("a").await.unwrap()["position"]["seq"]
        .as_u64()
        .unwrap();
    eprintln!(
        "head {head} after {write_secs:.1} s of writes; peak log rows a={} b={} c={} over {samples} samples",
        max[0], max[1], max[2]
    );
    assert!(head >= CHANGES, "the writer made {head} changes");
    assert!(samples >= 20, "too few samples ({samples}) to show a bound");
    for (i, (id, _)) in urls.iter().enumerate() {
        assert!(
            max[i] < BOUND,
            "member {id}'s change log reached {} rows (bound {BOUND})",
            max[i]
        );
    }
    let end_rows = log_rows(&a_url).await;
    assert!(
        end_rows <= 1_000 + 1,
        "the active keeps its floor: {end_rows} rows"
    );
    let (code, out) = verify(&cl, "a", false);
    assert_eq!(code, 0, "{out}");
}

/// A row changed behind the agent's back on a passive (the apply flag
/// bypasses the fence and capture, as a careless operator could): `verify`
/// names the table and the member and exits 1. After `understudy resnapshot`
/// of that member it passes again; with a member stopped it exits 2 naming it.
async fn verify_tamper_resnapshot(b: B, seed_default: u64) {
    let seed = seed(seed_default);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let urls: Vec<(&str, DatabaseUrl)> = ["a", "b", "c"]
        .iter()
        .map(|id| (*id, db(b, d, id, &mut keep)))
        .collect();
    let mut cl = cluster(d, &urls, "");
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let a_url = urls[0].1.clone();
    let mut w = Workload::new(seed);
    AppConn::connect(&a_url)
        .await
        .unwrap()
        .execute(&w.setup())
        .await
        .unwrap();
    write_workload(&a_url, &mut w, 2_000, 10).await.unwrap();
    if let Err(e) = cl.wait_converged("a", 1, Duration::from_secs(60)).await {
        dump_logs(&cl);
        panic!("{e}");
    }
    let (code, out) = verify(&cl, "a", false);
    assert_eq!(code, 0, "{out}");

    // Tamper with one key's metadata on b.
    let tamper =
        "UPDATE keys SET meta = '{\"tampered\":true}' WHERE path = (SELECT min(path) FROM keys)";
    match &urls[1].1 {
        DatabaseUrl::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch(&format!(
                "BEGIN IMMEDIATE; UPDATE us_state SET applying = 1 WHERE id = 1; {tamper}; \
                 UPDATE us_state SET applying = 0 WHERE id = 1; COMMIT;"
            ))
            .unwrap();
        }
        DatabaseUrl::Postgres(u) => {
            integration_tests::pg::psql_run(
                u,
                &format!("BEGIN; SET LOCAL understudy.applying = 'on'; {tamper}; COMMIT;"),
            )
            .unwrap();
        }
    }
    let (code, out) = verify(&cl, "a", false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISMATCH: table keys differs on b from the active a"),
        "{out}"
    );
    let (code, out) = verify(&cl, "c", true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "mismatch");
    assert_eq!(
        v["mismatches"],
        serde_json::json!([{"table": "keys", "members": ["b"]}])
    );

    // Re-snapshot b: refused while its agent runs, done once it is stopped.
    let resnapshot = |cl: &LocalCluster| {
        let out = Command::new(&cl.bin)
            .arg("resnapshot")
            .arg("--config")
            .arg(&cl.member("b").config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = resnapshot(&cl);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("stop it first"), "{out}");
    cl.stop("b", Duration::from_secs(10));
    // Writes go on meanwhile; the snapshot takes them up to its position.
    write_workload(&a_url, &mut w, 500, 10).await.unwrap();
    let (code, out) = resnapshot(&cl);
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("now holds the active's snapshot"), "{out}");
    cl.start("b").unwrap();
    write_workload(&a_url, &mut w, 500, 10).await.unwrap();
    if let Err(e) = cl.wait_converged("a", 1, Duration::from_secs(60)).await {
        dump_logs(&cl);
        panic!("{e}");
    }
    let (code, out) = verify(&cl, "a", false);
    assert_eq!(code, 0, "after the re-snapshot:\n{out}");

    cl.stop("c", Duration::from_secs(10));
    let (code, out) = verify(&cl, "a", false);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("UNVERIFIED: member c"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_tampered_table_and_resnapshot_repairs_it_sqlite() {
    verify_tamper_resnapshot(B::Sqlite, 41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_tampered_table_and_resnapshot_repairs_it_postgres() {
    verify_tamper_resnapshot(B::Pg, 42).await;
}
