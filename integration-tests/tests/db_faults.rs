//! Member databases failing under running agents, with a writer that follows
//! `GET /active`:
//! - PostgreSQL stops (crash-like, `immediate`) under two PostgreSQL members
//!   of a mixed cluster (the third is on SQLite): they report
//!   `database_ok: false` with the error in `/status` and answer 503 on
//!   `/health`, the SQLite member stays healthy, no agent exits, and once the
//!   server is back they recover on their own and the cluster converges.
//! - Another process holds SQLite's write lock (`BEGIN IMMEDIATE`, ~3 s) on
//!   the active's database and then on a passive's: the stall shows in
//!   `/status` while it lasts, no agent exits, never two databases accept
//!   writes at once (`integration_tests::fence_watch`, plus inserts tried by
//!   an application queued behind the lock, judged against the other
//!   members' fence state at that instant), and everything converges
//!   afterwards. The active's lease renewal waits for the lock like any
//!   writer, and when it finally runs it must not hand the deposed active a
//!   fresh lease while another member is active.
//!
//! In both: every write the writer saw commit is on the final active or in a
//! member's divergence quarantine, and all checksums are equal.
//!
//! The PostgreSQL test runs on a server of its own (`PgServer::start`), never
//! the shared one: stopping that would break the other tests of this binary.
//! `ALTER DATABASE … SET synchronous_commit = on` makes its databases durable
//! across an immediate stop (the test servers run with it off for speed), so
//! a write that committed must survive the crash.

use integration_tests::fence_watch::FenceWatch;
use integration_tests::pg::{self, PgServer, StopMode};
use integration_tests::{
    checksums, open_store, seed, understudy_bin, upserted_project, wait_until,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::store::MemberStore;
use understudy::workload::{AppConn, AppOp};

const PREFIX: &str = "dbf-";

async fn health_code(addr: &str) -> Option<u16> {
    understudy::status::client::request(addr, "GET", "/health", None, None, Duration::from_secs(2))
        .await
        .ok()
        .map(|r| r.code)
}

/// The writer's record: committed name -> (member, seconds since start).
type Committed = BTreeMap<String, (String, f64)>;

/// A writer on a thread of its own: one uniquely numbered project per
/// round to whichever single member answers `/active`.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<Mutex<Committed>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(cl: &LocalCluster, t0: Instant) -> Writer {
        let status: Vec<(String, String)> = cl
            .members
            .iter()
            .map(|m| (m.id.to_string(), m.status.clone()))
            .collect();
        let urls: BTreeMap<String, DatabaseUrl> = cl
            .members
            .iter()
            .map(|m| (m.id.to_string(), m.database.clone().unwrap()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(Mutex::new(Committed::new()));
        let thread = {
            let (stop, committed) = (stop.clone(), committed.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("writer runtime");
                rt.block_on(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let now =
                            integration_tests::actives_at(&status, Duration::from_millis(300))
                                .await;
                        let [target] = now.as_slice() else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        n += 1;
                        let name = format!("{PREFIX}{n}");
                        let op = AppOp::UpsertProject {
                            name: name.clone(),
                            description: format!("written to {target}"),
                            config: "{}".into(),
                        };
                        let ok = match tokio::time::timeout(Duration::from_secs(15), async {
                            let mut app = AppConn::connect(&urls[target]).await?;
                            app.execute(&[op]).await
                        })
                        .await
                        {
                            Ok(r) => r.is_ok(),
                            Err(_) => false,
                        };
                        if ok {
                            committed
                                .lock()
                                .unwrap()
                                .insert(name, (target.clone(), t0.elapsed().as_secs_f64()));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
            })
        };
        Writer {
            stop,
            committed,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.committed.lock().unwrap().len()
    }

    fn finish(mut self) -> Committed {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.committed.lock().unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Whether a member's agent process is still running (not exited, not a
/// zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// The writer's project names present in a member's database.
async fn written_rows(url: &DatabaseUrl) -> BTreeSet<String> {
    let sql = format!("SELECT name FROM projects WHERE name LIKE '{PREFIX}%'");
    match url {
        DatabaseUrl::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).unwrap();
            let mut st = c.prepare(&sql).unwrap();
            st.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }
        DatabaseUrl::Postgres(u) => {
            let u = u.clone();
            tokio::task::spawn_blocking(move || pg::psql_run(&u, &sql))
                .await
                .unwrap()
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }
}

fn dump(cl: &LocalCluster) {
    for m in &cl.members {
        eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 60));
    }
}

/// Heal-time checks shared by both tests: one active, convergence, every
/// committed write on the active or quarantined, equal checksums.
async fn check_nothing_lost(cl: &LocalCluster, committed: &Committed) {
    let status: Vec<(String, String)> = cl
        .members
        .iter()
        .map(|m| (m.id.to_string(), m.status.clone()))
        .collect();
    let mut active = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while active.is_none() && Instant::now() < deadline {
        if let [one] = integration_tests::actives_at(&status, Duration::from_millis(300))
            .await
            .as_slice()
        {
            active = Some(one.clone());
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let Some(active) = active else {
        dump(cl);
        panic!("no single active within 60 s");
    };
    if let Err(e) = cl.wait_converged(&active, 1, Duration::from_secs(90)).await {
        dump(cl);
        panic!("{e}");
    }
    let url = |m: &str| cl.member(m).database.clone().unwrap();
    let on_active = written_rows(&url(&active)).await;
    let mut quarantined = BTreeSet::new();
    for m in &cl.members {
        for d in open_store(&url(m.id.as_str()))
            .await
            .unwrap()
            .divergence_list(true)
            .await
            .unwrap()
        {
            if let Some(p) = upserted_project(&d.change)
                && p.starts_with(PREFIX)
            {
                quarantined.insert(p.to_string());
            }
        }
    }
    let missing: Vec<String> = committed
        .iter()
        .filter(|(n, _)| !on_active.contains(*n) && !quarantined.contains(*n))
        .map(|(n, (m, t))| format!("{n} (committed on {m} at {t:.2}s)"))
        .collect();
    let in_q = committed
        .keys()
        .filter(|n| quarantined.contains(*n))
        .count();
    eprintln!(
        "{} writes committed: {} on the final active {active}, {in_q} quarantined, {} missing",
        committed.len(),
        committed.len() - in_q - missing.len(),
        missing.len()
    );
    if !missing.is_empty() {
        dump(cl);
    }
    assert!(
        missing.is_empty(),
        "committed writes lost: {:?}",
        missing.iter().take(20).collect::<Vec<_>>()
    );
    let reference = checksums(&url(&active)).await.unwrap();
    for m in &cl.members {
        assert_eq!(
            checksums(&url(m.id.as_str())).await.unwrap(),
            reference,
            "{}'s checksums differ from the active {active}'s",
            m.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopping_under_the_agents_is_reported_and_survived() {
    let _ = seed(0);
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .expect("a private PostgreSQL server");
    let server = Arc::new(server);
    let mut dbs = Vec::new();
    for m in ["a", "b"] {
        let s = server.clone();
        let db = tokio::task::spawn_blocking(move || s.create_database(&format!("dbf_{m}")))
            .await
            .unwrap()
            .unwrap();
        let admin = server.admin_url();
        let sql = format!("ALTER DATABASE \"{}\" SET synchronous_commit = on", db.name);
        tokio::task::spawn_blocking(move || pg::psql_run(&admin, &sql))
            .await
            .unwrap()
            .unwrap();
        dbs.push(db);
    }
    let dir = tempfile::tempdir().unwrap();
    let specs = vec![
        MemberSpec {
            id: "a".into(),
            database: Some(DatabaseUrl::Postgres(dbs[0].url.clone())),
        },
        MemberSpec {
            id: "b".into(),
            database: Some(DatabaseUrl::Postgres(dbs[1].url.clone())),
        },
        MemberSpec {
            id: "c".into(),
            database: Some(DatabaseUrl::Sqlite(dir.path().join("c.db"))),
        },
    ];
    let mut cl = LocalCluster::create(
        dir.path(),
        &understudy_bin(),
        &specs,
        ClusterOptions::default(),
    )
    .unwrap();
    cl.init_all().unwrap();
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let pids: Vec<(String, u32)> = cl
        .members
        .iter()
        .map(|m| (m.id.to_string(), m.pid().unwrap()))
        .collect();

    let t0 = Instant::now();
    let writer = Writer::start(&cl, t0);
    wait_until(
        Duration::from_secs(30),
        "the writer's first commits",
        || async { writer.count() >= 50 },
    )
    .await
    .unwrap();

    // The crash: every PostgreSQL member loses its database at once.
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    let stopped = Instant::now();
    let log_lines = |m: &str| {
        std::fs::read_to_string(&cl.member(m).log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let lines_before: Vec<usize> = ["a", "b"].iter().map(|m| log_lines(m)).collect();
    let mut reported: BTreeMap<&str, (Duration, String)> = BTreeMap::new();
    while stopped.elapsed() < Duration::from_secs(8) {
        for m in ["a", "b"] {
            if reported.contains_key(m) {
                continue;
            }
            let st = cl.status(m).await;
            let health = health_code(&cl.member(m).status).await;
            if let Ok(st) = st
                && st["database_ok"] == false
                && st["database_error"].as_str().is_some_and(|e| !e.is_empty())
                && health == Some(503)
            {
                let err = st["database_error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                reported.insert(m, (stopped.elapsed(), err));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in ["a", "b"] {
        let Some((after, err)) = reported.get(m) else {
            dump(&cl);
            panic!(
                "{m} never showed database_ok false with an error and /health 503: {:?}",
                cl.status(m).await
            );
        };
        eprintln!("{m} reported the outage {after:?} after the stop: {err}");
    }
    assert_eq!(
        health_code(&cl.member("c").status).await,
        Some(200),
        "the SQLite member's database is fine"
    );
    assert_eq!(
        cl.status("c").await.unwrap()["database_ok"],
        true,
        "c's database is not the one that failed"
    );
    for (m, pid) in &pids {
        assert!(alive(*pid), "{m}'s agent exited during the outage");
    }
    let outage_lines: Vec<usize> = ["a", "b"]
        .iter()
        .zip(&lines_before)
        .map(|(m, before)| log_lines(m).saturating_sub(*before))
        .collect();
    eprintln!("log lines written during the 8 s outage by a, b: {outage_lines:?}");
    for (m, n) in ["a", "b"].iter().zip(&outage_lines) {
        // Backing off: a handful of lines a second, not a tight retry loop.
        assert!(*n < 400, "{m} wrote {n} log lines in 8 s of outage");
    }

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.start_again())
        .await
        .unwrap()
        .unwrap();
    let restarted = Instant::now();
    for m in ["a", "b"] {
        let addr = cl.member(m).status.clone();
        if let Err(e) = wait_until(
            Duration::from_secs(60),
            &format!("{m} to report its database healthy again"),
            || async {
                cl.status(m).await.is_ok_and(|s| s["database_ok"] == true)
                    && health_code(&addr).await == Some(200)
            },
        )
        .await
        {
            dump(&cl);
            panic!("{e}");
        }
    }
    eprintln!(
        "a and b healthy {:?} after PostgreSQL came back",
        restarted.elapsed()
    );
    // The writer goes on: commits after the outage, on whichever member
    // is active now.
    let before = writer.count();
    if let Err(e) = wait_until(
        Duration::from_secs(60),
        "writes after the outage",
        || async { writer.count() >= before + 50 },
    )
    .await
    {
        dump(&cl);
        panic!("{e}");
    }
    for (m, pid) in &pids {
        assert!(alive(*pid), "{m}'s agent exited");
    }
    let committed = writer.finish();
    check_nothing_lost(&cl, &committed).await;
    for m in ["a", "b", "c"] {
        let log = std::fs::read_to_string(&cl.member(m).log).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{m} panicked:\n{}",
            cl.log_tail(m, 40)
        );
    }
    drop(cl);
    drop(dbs);
}

/// Hold SQLite's write lock on `path` for `hold` from another connection
/// (as another process would: a separate connection with its own lock).
/// Returns once the lock is taken. After releasing it, the thread goes on
/// for 1.5 s as an application queued behind the lock would, trying inserts
/// (each rolled back); it returns when, in ms after the release, the
/// database accepted one.
fn hold_write_lock(
    path: &Path,
    hold: Duration,
    others: Vec<(String, PathBuf)>,
) -> std::thread::JoinHandle<Vec<String>> {
    let path = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(hold);
        c.execute_batch("ROLLBACK").unwrap();
        let released = Instant::now();
        c.busy_timeout(Duration::from_millis(20)).unwrap();
        let mut accepted = Vec::new();
        while released.elapsed() < Duration::from_millis(1500) {
            if let Ok(tx) = c.transaction() {
                if tx
                    .execute(
                        "INSERT INTO projects (name, description, config) VALUES ('late-probe', 'rolled back', '{}')",
                        [],
                    )
                    .is_ok()
                {
                    // Who else was writable at that instant (read while this
                    // insert still holds the lock, so the state cannot move
                    // on under the comparison on this side).
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let also: Vec<String> = others
                        .iter()
                        .filter_map(|(m, p)| {
                            let c = rusqlite::Connection::open(p).ok()?;
                            let (role, epoch, lease): (String, i64, Option<i64>) = c
                                .query_row(
                                    "SELECT role, epoch, lease_until FROM us_state WHERE id = 1",
                                    [],
                                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                                )
                                .ok()?;
                            (role == "active" && lease.is_none_or(|l| l >= now_ms))
                                .then(|| format!("{m} (epoch {epoch})"))
                        })
                        .collect();
                    accepted.push(format!(
                        "+{}ms{}",
                        released.elapsed().as_millis(),
                        if also.is_empty() {
                            String::new()
                        } else {
                            format!(" while {} was writable too", also.join(", "))
                        }
                    ));
                }
                let _ = tx.rollback();
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        accepted
    });
    rx.recv().expect("the lock was taken");
    t
}

/// What /status said about one member while its database was locked.
#[derive(Debug, Default)]
struct LockWatch {
    samples: u64,
    not_ok: u64,
    errors: BTreeSet<String>,
    roles: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_sqlite_write_lock_on_the_active_and_a_passive_loses_nothing() {
    let _ = seed(0);
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.path().join(format!("{m}.db")))),
        })
        .collect();
    let mut cl = LocalCluster::create(
        dir.path(),
        &understudy_bin(),
        &specs,
        ClusterOptions::default(),
    )
    .unwrap();
    cl.init_all().unwrap();
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let pids: Vec<(String, u32)> = cl
        .members
        .iter()
        .map(|m| (m.id.to_string(), m.pid().unwrap()))
        .collect();
    let status: Vec<(String, String)> = cl
        .members
        .iter()
        .map(|m| (m.id.to_string(), m.status.clone()))
        .collect();
    let paths: Vec<(String, PathBuf)> = cl
        .members
        .iter()
        .map(|m| match m.database.clone().unwrap() {
            DatabaseUrl::Sqlite(p) => (m.id.to_string(), p),
            DatabaseUrl::Postgres(_) => unreachable!("SQLite members only"),
        })
        .collect();

    let t0 = Instant::now();
    // Tight: a stale lease renewal would leave a window of milliseconds.
    let fences = FenceWatch::start_every(paths.clone(), t0, Duration::from_micros(200));
    let writer = Writer::start(&cl, t0);
    wait_until(
        Duration::from_secs(30),
        "the writer's first commits",
        || async { writer.count() >= 50 },
    )
    .await
    .unwrap();

    let mut unreported = Vec::new();
    let mut late_overlaps = Vec::new();
    for which in ["active", "passive"] {
        let now = integration_tests::actives_at(&status, Duration::from_millis(300)).await;
        let [active] = now.as_slice() else {
            dump(&cl);
            panic!("not one active before locking the {which}: {now:?}");
        };
        let target = if which == "active" {
            active.clone()
        } else {
            ["a", "b", "c"]
                .iter()
                .find(|m| **m != active.as_str())
                .unwrap()
                .to_string()
        };
        let path = &paths.iter().find(|(m, _)| *m == target).unwrap().1;
        eprintln!(
            "[{:.2}s] holding the write lock on {target} ({which}) for 3 s",
            t0.elapsed().as_secs_f64()
        );
        let locked = Instant::now();
        let others: Vec<(String, PathBuf)> = paths
            .iter()
            .filter(|(m, _)| *m != target)
            .cloned()
            .collect();
        let holder = hold_write_lock(path, Duration::from_secs(3), others);
        let mut watch = LockWatch::default();
        while locked.elapsed() < Duration::from_millis(4600) {
            if let Ok(s) = cl.status(&target).await {
                watch.samples += 1;
                if s["database_ok"] != true {
                    watch.not_ok += 1;
                }
                if let Some(e) = s["database_error"].as_str() {
                    watch.errors.insert(e.to_string());
                }
                watch
                    .roles
                    .insert(s["role"].as_str().unwrap_or("?").to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let late = holder.join().unwrap();
        eprintln!("{target} ({which}) while locked: {watch:?}");
        // An operator must be able to see why the member stalled: the
        // database trouble in /status at least once while it lasted.
        if watch.not_ok == 0 && watch.errors.is_empty() {
            unreported.push(format!(
                "{target} ({which}): 3 s of a held write lock never showed in /status ({watch:?})"
            ));
        }
        eprintln!(
            "{target} accepted {} application inserts in the 1.5 s after the release (ms after it: {:?})",
            late.len(),
            late.iter().take(20).collect::<Vec<_>>()
        );
        late_overlaps.extend(
            late.iter()
                .filter(|l| l.contains("writable too"))
                .map(|l| format!("{target} accepted an insert {l}")),
        );
        eprintln!(
            "--- {target}'s log after the lock:\n{}",
            cl.log_tail(&target, 12)
        );
        assert!(watch.samples > 0, "{target} answered /status while locked");
        for (m, pid) in &pids {
            assert!(alive(*pid), "{m}'s agent exited under the lock");
        }
        // Back to normal: one active, the writer commits again, everyone
        // converges.
        let before = writer.count();
        if let Err(e) = wait_until(Duration::from_secs(30), "writes after the lock", || async {
            writer.count() >= before + 30
        })
        .await
        {
            dump(&cl);
            panic!("{e}");
        }
        wait_until(
            Duration::from_secs(30),
            &format!("{target}'s database to be reported healthy"),
            || async {
                cl.status(&target)
                    .await
                    .is_ok_and(|s| s["database_ok"] == true)
            },
        )
        .await
        .unwrap();
    }
    let committed = writer.finish();
    let fences = fences.finish();
    eprintln!(
        "fence samples: {} state-row rounds, {} insert-probe rounds",
        fences.reads, fences.probes
    );
    let mut overlaps = fences.overlaps;
    overlaps.extend(late_overlaps);
    check_nothing_lost(&cl, &committed).await;
    for (m, pid) in &pids {
        assert!(alive(*pid), "{m}'s agent exited");
    }
    assert!(
        overlaps.is_empty() && unreported.is_empty(),
        "two databases accepted writes at once: {:?} ({} rounds in all); {unreported:?}",
        overlaps.iter().take(10).collect::<Vec<_>>(),
        overlaps.len()
    );
    drop(cl);
}
