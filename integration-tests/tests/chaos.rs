//! Chaos: three SQLite members, every connection between two of them through
//! a fault proxy of its own (one per direction), a writer that follows
//! `GET /active` the way a load balancer would, and one random fault every
//! 1–5 s: kill -9 of a member, restart of the dead one, partition of a member
//! (every proxy to and from it, blackhole or refuse), heal, and a schema
//! change (`understudy migrate` adding a column, sent to whichever member
//! is active, running in the background while the storm goes on).
//!
//! What it proves:
//! - never two member databases accept an application write at the same
//!   time (each member's fence state read every ~5 ms, and an insert that
//!   is rolled back tried every ~50 ms: `integration_tests::fence_watch`);
//! - after everything heals and restarts, exactly one member is active, all
//!   members converge on its head, at its schema version and fingerprint,
//!   and their checksums are equal (a schema change an active ran but the
//!   cluster never received is given back with its tail);
//! - every write the writer saw commit is on the final active, or in some
//!   member's divergence quarantine (the divergent tail of a deposed
//!   active): nothing is lost silently.
//!
//! The schedule is drawn up front from a seeded RNG and printed, so a run is
//! replayed by its seed. The timing of the cluster's reactions is not
//! replayable, the faults are.
//!
//! Environment:
//! - `UNDERSTUDY_TEST_SEED`: the schedule's seed (default 7001, printed).
//! - `UNDERSTUDY_CHAOS_SECS`: seconds of fault injection (default 120); the
//!   everyday suite runs about 2.5 minutes, longer soaks set e.g. 900.
//! - `UNDERSTUDY_CHAOS_KEEP`: set to keep the cluster folder (logs,
//!   databases) after the run; its path is printed.
//!
//! Must never: leave a process behind (the cluster and the proxies are
//! dropped on every path, panics included).

use integration_tests::fence_watch::FenceWatch;
use integration_tests::proxy::{FaultProxy, Mode};
use integration_tests::{checksums, open_store, seed, understudy_bin, upserted_project};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::store::MemberStore;
use understudy::workload::{AppConn, AppOp, SplitMix};

const MEMBERS: [&str; 3] = ["a", "b", "c"];
const PREFIX: &str = "chaos-";

/// One fault of the schedule; members by index into [`MEMBERS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill(usize),
    Restart(usize),
    Partition(usize, Mode),
    Heal,
    /// `understudy migrate` number n, through a member that is not dead.
    Migrate(u64, usize),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(i) => write!(f, "kill -9 {}", MEMBERS[*i]),
            Fault::Restart(i) => write!(f, "restart {}", MEMBERS[*i]),
            Fault::Partition(i, m) => write!(f, "partition {} ({m:?})", MEMBERS[*i]),
            Fault::Heal => write!(f, "heal"),
            Fault::Migrate(n, via) => write!(f, "migrate #{n} via {}", MEMBERS[*via]),
        }
    }
}

/// The whole schedule from `seed`: `(at, fault)` with `at` the offset from
/// the start of the chaos phase. The state the choices depend on (who is
/// dead, who is partitioned) is the schedule's own, so the same seed gives
/// the same schedule whatever the cluster does. At most one member is dead
/// and at most one partitioned at a time; the two may overlap (then no
/// majority is left until one of them ends).
fn schedule(seed: u64, secs: u64) -> Vec<(Duration, Fault)> {
    let mut rng = SplitMix::new(seed);
    let mut dead: Option<usize> = None;
    let mut cut: Option<usize> = None;
    let mut at = Duration::ZERO;
    let mut out = Vec::new();
    let mut migrations = 0;
    loop {
        at += Duration::from_millis(1000 + rng.below(4001));
        if at >= Duration::from_secs(secs) {
            return out;
        }
        if rng.below(6) == 0 {
            migrations += 1;
            let via = rng.below(3) as usize;
            let via = if Some(via) == dead {
                (via + 1) % 3
            } else {
                via
            };
            out.push((at, Fault::Migrate(migrations, via)));
            continue;
        }
        let mut kinds = Vec::new();
        if dead.is_none() {
            kinds.push(0);
        } else {
            kinds.push(1);
        }
        if cut.is_none() {
            kinds.push(2);
        } else {
            kinds.push(3);
        }
        let fault = match kinds[rng.below(kinds.len() as u64) as usize] {
            0 => {
                let i = rng.below(3) as usize;
                dead = Some(i);
                Fault::Kill(i)
            }
            1 => Fault::Restart(dead.take().unwrap_or(0)),
            2 => {
                let i = rng.below(3) as usize;
                let mode = if rng.below(2) == 0 {
                    Mode::Blackhole
                } else {
                    Mode::Refuse
                };
                cut = Some(i);
                Fault::Partition(i, mode)
            }
            _ => {
                cut = None;
                Fault::Heal
            }
        };
        out.push((at, fault));
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn db_path(url: &DatabaseUrl) -> PathBuf {
    match url {
        DatabaseUrl::Sqlite(p) => p.clone(),
        DatabaseUrl::Postgres(_) => panic!("the chaos test runs on SQLite"),
    }
}

/// What the writer saw.
#[derive(Default)]
struct WriterLog {
    /// Committed project name -> (member it was written to, seconds since start).
    committed: BTreeMap<String, (String, f64)>,
    attempts: u64,
    refused: u64,
    /// Times `/active` answered 200 on more than one member in one round.
    two_routes: Vec<(f64, Vec<String>)>,
    /// The sequence of distinct members the writer found active.
    active_changes: Vec<(f64, String)>,
}

/// Write one uniquely numbered project per round to whichever member
/// answers `/active`, until `stop`. Runs on a thread of its own with its own
/// runtime: the SQLite writes block, and must not stall the fault schedule.
fn writer(
    status: Vec<(String, String)>,
    urls: BTreeMap<String, DatabaseUrl>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    t0: Instant,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("writer runtime");
    rt.block_on(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let now = integration_tests::actives_at(&status, Duration::from_millis(300)).await;
            if now.len() > 1 {
                log.lock()
                    .unwrap()
                    .two_routes
                    .push((t0.elapsed().as_secs_f64(), now.clone()));
            }
            let [target] = now.as_slice() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            {
                let mut l = log.lock().unwrap();
                if l.active_changes.last().is_none_or(|(_, m)| m != target) {
                    l.active_changes
                        .push((t0.elapsed().as_secs_f64(), target.clone()));
                }
            }
            n += 1;
            let name = format!("{PREFIX}{n}");
            let op = AppOp::UpsertProject {
                name: name.clone(),
                description: format!("written to {target}"),
                config: "{}".into(),
            };
            let ok = match AppConn::connect(&urls[target]).await {
                Ok(mut app) => app.execute(&[op]).await.is_ok(),
                Err(_) => false,
            };
            {
                let mut l = log.lock().unwrap();
                l.attempts += 1;
                if ok {
                    l.committed
                        .insert(name, (target.clone(), t0.elapsed().as_secs_f64()));
                } else {
                    l.refused += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Start `understudy migrate` number `n` through member `via` in the
/// background: a column added to one of the example tables, back-filled by
/// its default. It may well fail (no active, lease run out) or not be
/// confirmed in time; the end of the run checks what it left.
fn start_migrate(
    cl: &LocalCluster,
    dir: &std::path::Path,
    n: u64,
    via: &str,
) -> std::process::Child {
    let table = ["projects", "jobs", "keys"][(n % 3) as usize];
    let file = dir.join(format!("migrate-{n}.sql"));
    std::fs::write(
        &file,
        format!("ALTER TABLE {table} ADD COLUMN chaos_{n} INTEGER NOT NULL DEFAULT {n};\n"),
    )
    .unwrap();
    std::process::Command::new(understudy_bin())
        .args(["migrate", "--sql"])
        .arg(&file)
        .args(["--json", "--timeout-secs", "5", "--url"])
        .arg(&cl.member(via).status)
        .args(["--token", &cl.options.token])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start understudy migrate")
}

fn dump(cl: &LocalCluster, lines: usize) {
    for m in &cl.members {
        eprintln!(
            "--- {} log tail:\n{}",
            m.id,
            cl.log_tail(m.id.as_str(), lines)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_of_kills_and_partitions_loses_no_committed_write() {
    let seed = seed(7001);
    let secs = env_u64("UNDERSTUDY_CHAOS_SECS", 120);
    let plan = schedule(seed, secs);
    eprintln!(
        "chaos: {secs} s, {} faults (UNDERSTUDY_CHAOS_SECS={secs} UNDERSTUDY_TEST_SEED={seed})",
        plan.len()
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let specs: Vec<MemberSpec> = MEMBERS
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.join(format!("{m}.db")))),
        })
        .collect();
    let mut cl = LocalCluster::create(&dir, &understudy_bin(), &specs, ClusterOptions::default())
        .expect("cluster files");
    cl.init_all().expect("init");

    // One proxy per directed pair: (from, to) carries `from`'s connections to
    // `to`'s replication port.
    let mut proxies: Vec<(usize, usize, FaultProxy)> = Vec::new();
    for (fi, from) in MEMBERS.iter().enumerate() {
        for (ti, to) in MEMBERS.iter().enumerate() {
            if fi == ti {
                continue;
            }
            let upstream = cl.member(to).replication.clone();
            let p = FaultProxy::start_with_seed(upstream.parse().unwrap(), seed);
            let cfg = cl.member(from).config.clone();
            let text = std::fs::read_to_string(&cfg).unwrap();
            let line = format!("address = {upstream:?}");
            assert!(text.contains(&line), "{from}'s config names {to}");
            std::fs::write(
                &cfg,
                text.replace(&line, &format!("address = \"{}\"", p.addr())),
            )
            .unwrap();
            proxies.push((fi, ti, p));
        }
    }

    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();

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
    let paths: Vec<(String, PathBuf)> = urls.iter().map(|(m, u)| (m.clone(), db_path(u))).collect();

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let wlog = Arc::new(Mutex::new(WriterLog::default()));
    let writer_thread = {
        let (status, urls, stop, wlog) = (status.clone(), urls.clone(), stop.clone(), wlog.clone());
        std::thread::spawn(move || writer(status, urls, stop, wlog, t0))
    };
    let fences = FenceWatch::start(paths, t0);

    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut migrations: Vec<(u64, std::process::Child)> = Vec::new();
    for (at, fault) in &plan {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        eprintln!("[{:7.2}s] {fault}", t0.elapsed().as_secs_f64());
        match *fault {
            Fault::Kill(i) => {
                cl.kill(MEMBERS[i]);
                *counts.entry("kill").or_default() += 1;
            }
            Fault::Restart(i) => {
                cl.start(MEMBERS[i]).unwrap();
                *counts.entry("restart").or_default() += 1;
            }
            Fault::Partition(i, mode) => {
                for (f, t, p) in &proxies {
                    if *f == i || *t == i {
                        p.partition(mode);
                    }
                }
                *counts.entry("partition").or_default() += 1;
            }
            Fault::Heal => {
                for (_, _, p) in &proxies {
                    p.heal();
                }
                *counts.entry("heal").or_default() += 1;
            }
            Fault::Migrate(n, via) => {
                migrations.push((n, start_migrate(&cl, &dir, n, MEMBERS[via])));
                *counts.entry("migrate").or_default() += 1;
            }
        }
    }
    if let Some(rest) = Duration::from_secs(secs).checked_sub(t0.elapsed()) {
        tokio::time::sleep(rest).await;
    }

    // The end: heal everything, restart the dead; the writer keeps going
    // until one active is back, so the last writes also land after the storm.
    eprintln!("[{:7.2}s] heal all, start all", t0.elapsed().as_secs_f64());
    for (_, _, p) in &proxies {
        p.heal();
    }
    cl.start_all().unwrap();
    let settle = Instant::now();
    let mut final_active = None;
    while settle.elapsed() < Duration::from_secs(60) {
        if let [one] = integration_tests::actives_at(&status, Duration::from_millis(300))
            .await
            .as_slice()
        {
            final_active = Some(one.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    writer_thread.join().unwrap();
    let fences = fences.finish();
    let overlaps = fences.overlaps;
    let migrated: Vec<(u64, Option<i32>)> = migrations
        .into_iter()
        .map(|(n, child)| {
            (
                n,
                child.wait_with_output().ok().and_then(|o| o.status.code()),
            )
        })
        .collect();
    let wlog = std::mem::take(&mut *wlog.lock().unwrap());

    let Some(mut active) = final_active else {
        dump(&cl, 80);
        panic!("no single active within 60 s after healing everything");
    };
    if let Err(e) = cl
        .wait_converged(&active, 1, Duration::from_secs(120))
        .await
    {
        dump(&cl, 80);
        panic!("{e}");
    }
    // A last look: the active must not have changed under the wait.
    match integration_tests::actives_at(&status, Duration::from_millis(300))
        .await
        .as_slice()
    {
        [one] => active = one.clone(),
        other => {
            dump(&cl, 80);
            panic!("after convergence /active answers on {other:?}");
        }
    }
    cl.wait_converged(&active, 1, Duration::from_secs(60))
        .await
        .unwrap();

    // Where did every committed write end up?
    let final_rows: std::collections::BTreeSet<String> = {
        let c = rusqlite::Connection::open(db_path(&urls[&active])).unwrap();
        let mut st = c
            .prepare("SELECT name FROM projects WHERE name LIKE 'chaos-%'")
            .unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut quarantined: BTreeMap<String, String> = BTreeMap::new();
    let mut quarantine_sizes = BTreeMap::new();
    for (m, u) in &urls {
        let q = open_store(u)
            .await
            .unwrap()
            .divergence_list(true)
            .await
            .unwrap();
        quarantine_sizes.insert(m.clone(), q.len());
        for d in q {
            if let Some(p) = upserted_project(&d.change)
                && p.starts_with(PREFIX)
            {
                quarantined.insert(p.to_string(), m.clone());
            }
        }
    }
    let mut on_active = 0;
    let mut in_quarantine = 0;
    let mut missing = Vec::new();
    for (name, (member, at)) in &wlog.committed {
        if final_rows.contains(name) {
            on_active += 1;
        } else if quarantined.contains_key(name) {
            in_quarantine += 1;
        } else {
            missing.push(format!("{name} (committed on {member} at {at:.2}s)"));
        }
    }

    let reference = checksums(&urls[&active]).await.unwrap();
    let mut differ = Vec::new();
    for (m, u) in &urls {
        if checksums(u).await.unwrap() != reference {
            differ.push(m.clone());
        }
    }
    let schema_of = |st: serde_json::Value| st["schema"].clone();
    let want_schema = schema_of(cl.status(&active).await.unwrap());
    let mut schema_differs = Vec::new();
    for m in MEMBERS {
        let got = schema_of(cl.status(m).await.unwrap());
        if got != want_schema {
            schema_differs.push(format!("{m}: {got}"));
        }
    }
    let history = understudy::status::client::get_json(&cl.member(&active).status, "/history")
        .await
        .unwrap();
    let epochs = history["history"].as_array().map_or(0, Vec::len);

    eprintln!("==== chaos summary (seed {seed}, {secs} s) ====");
    eprintln!("faults injected: {} {counts:?}", plan.len());
    eprintln!(
        "writes: {} attempted, {} committed ({} on the final active {active}, {} quarantined), {} refused",
        wlog.attempts,
        wlog.committed.len(),
        on_active,
        in_quarantine,
        wlog.refused
    );
    eprintln!(
        "active as seen by the writer changed {} times: {:?}",
        wlog.active_changes.len().saturating_sub(1),
        wlog.active_changes
            .iter()
            .map(|(t, m)| format!("{t:.1}s:{m}"))
            .collect::<Vec<_>>()
    );
    eprintln!("role changes in the final active's history: {epochs}");
    let mut times: Vec<f64> = wlog.committed.values().map(|(_, t)| *t).collect();
    times.sort_by(f64::total_cmp);
    let (gap, gap_end) = times
        .windows(2)
        .map(|w| (w[1] - w[0], w[1]))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    eprintln!("longest time without a commit: {gap:.2}s (ending at {gap_end:.2}s)");
    eprintln!("quarantine sizes: {quarantine_sizes:?}");
    eprintln!("schema changes (number, exit code): {migrated:?}; final schema {want_schema}");
    eprintln!(
        "fence samples: {} state-row rounds, {} insert-probe rounds, overlaps: {}",
        fences.reads,
        fences.probes,
        overlaps.len()
    );
    eprintln!(
        "/active answered on two members at once: {} times {:?}",
        wlog.two_routes.len(),
        wlog.two_routes.iter().take(10).collect::<Vec<_>>()
    );

    let failed = !overlaps.is_empty()
        || !missing.is_empty()
        || !differ.is_empty()
        || !schema_differs.is_empty();
    if failed {
        dump(&cl, 120);
    }
    if failed || std::env::var_os("UNDERSTUDY_CHAOS_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("cluster folder kept: {}", kept.display());
    }
    assert!(
        overlaps.is_empty(),
        "two databases accepted writes at once: {overlaps:?}"
    );
    assert!(
        missing.is_empty(),
        "{} committed writes are neither on the final active nor quarantined: {:?}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    assert!(
        differ.is_empty(),
        "checksums differ from {active}'s: {differ:?}"
    );
    assert!(
        schema_differs.is_empty(),
        "schemas differ from {active}'s {want_schema}: {schema_differs:?}"
    );
    assert!(
        migrated.is_empty() || want_schema["version"].as_u64() > Some(0),
        "none of the schema changes {migrated:?} reached the final active"
    );
    assert!(
        wlog.committed.len() > 100,
        "the writer made progress: {} commits",
        wlog.committed.len()
    );
    drop(cl);
    drop(proxies);
}

#[test]
fn the_schedule_is_a_function_of_the_seed() {
    assert_eq!(schedule(42, 300), schedule(42, 300));
    assert_ne!(schedule(42, 300), schedule(43, 300));
    let plan = schedule(42, 300);
    let mut migrations = 0;
    // Never two members dead at once: every kill is followed by a restart
    // before the next kill.
    let mut dead = None;
    for (_, f) in &plan {
        match *f {
            Fault::Kill(i) => {
                assert!(dead.is_none());
                dead = Some(i);
            }
            Fault::Restart(i) => {
                assert_eq!(dead, Some(i));
                dead = None;
            }
            Fault::Migrate(_, via) => {
                assert_ne!(
                    dead,
                    Some(via),
                    "a schema change goes through a live member"
                );
                migrations += 1;
            }
            _ => {}
        }
    }
    assert!(
        migrations > 3,
        "schema changes in the schedule: {migrations}"
    );
    let gaps: Vec<Duration> = plan.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter()
            .all(|g| *g >= Duration::from_secs(1) && *g <= Duration::from_secs(5))
    );
}
