//! The promotion controller with real processes on loopback: automatic
//! failover after kill -9 (3 members; 2 members + a witness), isolation of
//! the active by a fault proxy, and planned switchovers under a writer.

use integration_tests::proxy::{FaultProxy, Mode};
use integration_tests::{
    accepts_writes, actives, change_log, checksums, seed, understudy_bin, wait_until,
    write_workload,
};
use std::path::Path;
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::workload::{AppConn, AppOp, Workload};

fn specs(dir: &Path, data: &[&str], witness: &[&str]) -> Vec<MemberSpec> {
    let mut v: Vec<MemberSpec> = data
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.join(format!("{m}.db")))),
        })
        .collect();
    v.extend(witness.iter().map(|m| MemberSpec {
        id: m.to_string(),
        database: None,
    }));
    v
}

fn create(dir: &Path, specs: &[MemberSpec]) -> LocalCluster {
    let cl = LocalCluster::create(dir, &understudy_bin(), specs, ClusterOptions::default())
        .expect("cluster files");
    cl.init_all().expect("init");
    cl
}

fn url(cl: &LocalCluster, id: &str) -> DatabaseUrl {
    cl.member(id).database.clone().unwrap()
}

fn dump(cl: &LocalCluster) {
    for m in &cl.members {
        eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 40));
    }
}

async fn position_seq(cl: &LocalCluster, id: &str) -> u64 {
    cl.status(id).await.unwrap()["position"]["seq"]
        .as_u64()
        .unwrap()
}

async fn seed_data(cl: &LocalCluster, active: &str, ops: u64, s: u64) {
    cl.wait_active(active, Duration::from_secs(30))
        .await
        .unwrap();
    let u = url(cl, active);
    let mut w = Workload::new(seed(s));
    integration_tests::execute_retrying(&u, &w.setup())
        .await
        .unwrap();
    write_workload(&u, &mut w, ops, 5).await.unwrap();
}

/// Kill -9 the active; the most up-to-date survivor answers `/active`
/// within failover_timeout + 1 s; the killed member comes back passive.
async fn kill_the_active(data: &[&str], witness: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &specs(dir.path(), data, witness));
    cl.start_all().unwrap();
    seed_data(&cl, "a", 300, 21).await;
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    // With three data members, c is frozen while more is written, so the
    // survivors differ and the controller must pick b.
    let laggard = data.get(2).copied();
    if let Some(l) = laggard {
        cl.freeze(l, true);
        let u = url(&cl, "a");
        let mut w = Workload::new(seed(22));
        write_workload(&u, &mut w, 200, 5).await.unwrap();
        let head = position_seq(&cl, "a").await;
        wait_until(Duration::from_secs(30), "b to reach a's head", || async {
            position_seq(&cl, "b").await >= head
        })
        .await
        .unwrap();
    }
    let killed = Instant::now();
    cl.kill("a");
    if let Some(l) = laggard {
        cl.freeze(l, false);
    }
    let budget = Duration::from_millis(cl.options.failover_ms + 1000);
    let winner = loop {
        let now = actives(&cl).await;
        assert!(now.len() <= 1, "two actives at once: {now:?}");
        if let Some(w) = now.first() {
            break w.clone();
        }
        if killed.elapsed() > budget + Duration::from_secs(10) {
            dump(&cl);
            panic!("no member became active");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = killed.elapsed();
    eprintln!("{winner} answered /active {took:?} after the kill");
    if took > budget {
        dump(&cl);
    }
    assert!(took <= budget, "{winner} became active after {took:?}");
    assert_eq!(winner, "b", "the survivor with the highest position wins");
    if let Some(l) = laggard {
        assert!(position_seq(&cl, l).await <= position_seq(&cl, "b").await);
    }

    // Writes go to the new active; the killed member comes back passive
    // and catches up.
    let u = url(&cl, "b");
    let mut w = Workload::new(seed(23));
    write_workload(&u, &mut w, 100, 5).await.unwrap();
    cl.start("a").unwrap();
    if let Err(e) = cl.wait_converged("b", 1, Duration::from_secs(60)).await {
        dump(&cl);
        panic!("{e}");
    }
    assert_eq!(cl.status("a").await.unwrap()["role"], "passive");
    assert_eq!(actives(&cl).await, vec!["b".to_string()]);
    for m in data {
        assert_eq!(
            checksums(&url(&cl, m)).await.unwrap(),
            checksums(&u).await.unwrap(),
            "{m}"
        );
    }
    // Every role change is in the history of the new active.
    let h = understudy::status::client::get_json(&cl.member("b").status, "/history")
        .await
        .unwrap();
    let reasons = h["history"].to_string();
    assert!(reasons.contains("failover"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_three_members() {
    kill_the_active(&["a", "b", "c"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_two_members_and_a_witness() {
    kill_the_active(&["a", "b"], &["w"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_active_fences_itself_and_the_majority_promotes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &specs(dir.path(), &["a", "b", "c"], &[]));
    // Every connection to or from a goes through a proxy of its own.
    let mut proxies = Vec::new();
    let addr = |id: &str| cl.member(id).replication.clone();
    for (from, to) in [("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")] {
        let p = FaultProxy::start(addr(to).parse().unwrap());
        let cfg = cl.member(from).config.clone();
        let text = std::fs::read_to_string(&cfg).unwrap();
        let line = format!("address = {:?}", addr(to));
        assert!(text.contains(&line));
        let text = text.replace(&line, &format!("address = \"{}\"", p.addr()));
        std::fs::write(&cfg, text).unwrap();
        proxies.push(p);
    }
    cl.start_all().unwrap();
    seed_data(&cl, "a", 200, 31).await;
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let a_url = url(&cl, "a");
    accepts_writes(&a_url).expect("the active takes writes before the partition");

    let cut = Instant::now();
    for p in &proxies {
        p.partition(Mode::Blackhole);
    }
    let lease = Duration::from_millis(cl.options.lease_ms);
    let refused = loop {
        match accepts_writes(&a_url) {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    cut.elapsed() < lease + Duration::from_secs(5),
                    "a kept taking writes"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let fenced_after = cut.elapsed();
    eprintln!("a refused writes {fenced_after:?} after the cut: {refused}");
    assert!(
        fenced_after <= lease + Duration::from_millis(100),
        "a took writes for {fenced_after:?} (lease {lease:?})"
    );
    assert!(
        refused.contains("lease") || refused.contains("fenced"),
        "{refused}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let winner = loop {
        let now = actives(&cl).await;
        assert!(now.len() <= 1, "two actives: {now:?}");
        if let Some(m) = now.into_iter().find(|m| m != "a") {
            break m;
        }
        if Instant::now() > deadline {
            dump(&cl);
            panic!("neither b nor c became the active");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(accepts_writes(&a_url).is_err(), "a is still fenced");

    for p in &proxies {
        p.heal();
    }
    wait_until(
        Duration::from_secs(30),
        "a to follow the new active",
        || async {
            cl.status("a")
                .await
                .is_ok_and(|s| s["role"] == "passive" && s["active"] == winner.as_str())
        },
    )
    .await
    .unwrap();
    let u = url(&cl, &winner);
    let mut w = Workload::new(seed(32));
    write_workload(&u, &mut w, 50, 5).await.unwrap();
    if let Err(e) = cl.wait_converged(&winner, 1, Duration::from_secs(60)).await {
        dump(&cl);
        panic!("{e}");
    }
    assert_eq!(actives(&cl).await, vec![winner.clone()]);
    assert_eq!(
        checksums(&a_url).await.unwrap(),
        checksums(&u).await.unwrap()
    );
    drop(cl);
}

/// Writes one numbered project per call to whichever member is active,
/// recording every write that committed and the longest time writes were
/// refused.
struct Writer {
    next: u64,
    committed: Vec<String>,
    refused_since: Option<Instant>,
    longest_refusal: Duration,
}

impl Writer {
    async fn write_once(&mut self, cl: &LocalCluster, active: &str) {
        let name = format!("sw-{}", self.next);
        let op = AppOp::UpsertProject {
            name: name.clone(),
            description: "switchover writer".into(),
            config: "{}".into(),
        };
        let ok = match AppConn::connect(&url(cl, active)).await {
            Ok(mut app) => app.execute(&[op]).await.is_ok(),
            Err(_) => false,
        };
        if ok {
            self.committed.push(name);
            self.next += 1;
            if let Some(t) = self.refused_since.take() {
                self.longest_refusal = self.longest_refusal.max(t.elapsed());
            }
        } else if self.refused_since.is_none() {
            self.refused_since = Some(Instant::now());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_switchovers_under_a_writer_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cl = create(dir.path(), &specs(dir.path(), &["a", "b", "c"], &[]));
    switchovers_under_a_writer(cl, 20).await;
}

/// On PostgreSQL the fenced active sequences what committed before its
/// fence, so the target waits for exactly those rows too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchovers_on_postgresql_lose_nothing() {
    let server = integration_tests::pg::shared_server().unwrap();
    let dbs: Vec<integration_tests::pg::TestDb> = ["a", "b", "c"]
        .iter()
        .map(|m| server.create_database(&format!("sw_{m}")).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .zip(&dbs)
        .map(|(m, d)| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Postgres(d.url.clone())),
        })
        .collect();
    let cl = create(dir.path(), &specs);
    switchovers_under_a_writer(cl, 6).await;
    drop(dbs);
}

async fn switchovers_under_a_writer(mut cl: LocalCluster, n: usize) {
    cl.start_all().unwrap();
    seed_data(&cl, "a", 100, 41).await;
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let token = cl.options.token.clone();
    let cl = std::sync::Arc::new(cl);
    let active = std::sync::Arc::new(std::sync::Mutex::new("a".to_string()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (cl, active, stop) = (cl.clone(), active.clone(), stop.clone());
        tokio::spawn(async move {
            let mut w = Writer {
                next: 0,
                committed: Vec::new(),
                refused_since: None,
                longest_refusal: Duration::ZERO,
            };
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let now = active.lock().unwrap().clone();
                // Writes go to whoever answers /active (as a load balancer
                // would route them); between switchovers that is `now`.
                let target = actives(&cl).await.pop().unwrap_or(now);
                w.write_once(&cl, &target).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            w
        })
    };
    let bin = understudy_bin();
    for i in 0..n {
        let from = active.lock().unwrap().clone();
        let to = if from == "a" { "b" } else { "a" };
        let out = std::process::Command::new(&bin)
            .args([
                "switchover",
                "--to",
                to,
                "--url",
                &cl.member(&from).status,
                "--token",
                &token,
                "--wait-secs",
                "30",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "switchover {i} from {from} to {to}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cl.log_tail(&from, 30)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(
            line.contains(&format!("switched over from {from} to {to}")),
            "{line}"
        );
        *active.lock().unwrap() = to.to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let w = writer.await.unwrap();
    let last = active.lock().unwrap().clone();
    cl.wait_converged(&last, 1, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "{} writes committed; writes refused for at most {:?}",
        w.committed.len(),
        w.longest_refusal
    );
    assert!(w.committed.len() > n, "the writer made progress");
    assert!(
        w.longest_refusal <= Duration::from_secs(1),
        "writes were refused for {:?}",
        w.longest_refusal
    );
    let expected: std::collections::BTreeSet<&str> =
        w.committed.iter().map(String::as_str).collect();
    let mut missing = Vec::new();
    for m in ["a", "b", "c"] {
        let log = change_log(&url(&cl, m)).await.unwrap();
        let names: std::collections::BTreeMap<String, String> = log
            .iter()
            .filter_map(|c| {
                integration_tests::upserted_project(c)
                    .filter(|p| p.starts_with("sw-"))
                    .map(|p| (p.to_string(), c.pos.to_string()))
            })
            .collect();
        for n in &expected {
            if !names.contains_key(*n) {
                missing.push(format!("{m} lacks the committed write {n}"));
            }
        }
        if m == "a" {
            eprintln!("a's sw- changes: {names:?}");
        }
    }
    if !missing.is_empty() {
        for m in ["a", "b", "c"] {
            eprintln!("--- {m} log tail:\n{}", cl.log_tail(m, 200));
        }
        panic!("{}", missing.join("\n"));
    }
    let h = understudy::status::client::get_json(&cl.member(&last).status, "/history")
        .await
        .unwrap();
    let switchovers = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"].as_str().unwrap_or("").contains("switchover"))
        .count();
    assert_eq!(switchovers, n, "{h}");
    drop(cl);
}

/// A former active with changes nobody else received comes back: its tail
/// goes to the quarantine (exactly the changes the new active never had,
/// images intact, key content included) and its rows end identical to the
/// new active's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_active_quarantines_its_divergent_tail_and_matches_the_new_active() {
    use understudy::store::MemberStore;
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &specs(dir.path(), &["a", "b", "c"], &[]));
    cl.start_all().unwrap();
    seed_data(&cl, "a", 200, 51).await;
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let a_url = url(&cl, "a");

    // b and c stop answering while a writes: a keeps committing until its
    // lease runs out, and nobody else receives those changes.
    let mut w = Workload::new(seed(52)).with_max_jobs(40);
    let mut app = AppConn::connect(&a_url).await.unwrap();
    for _ in 0..20 {
        app.execute(&[w.next_op()]).await.unwrap();
    }
    cl.freeze("b", true);
    cl.freeze("c", true);
    let mut tail_writes = 0;
    let started = Instant::now();
    loop {
        match app.execute(&[w.next_op()]).await {
            Ok(()) => tail_writes += 1,
            Err(_) => break,
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a never fenced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(tail_writes > 0, "a committed nothing after b and c froze");
    cl.kill("a");
    let a_log = change_log(&a_url).await.unwrap();
    let a_head = integration_tests::open_store(&a_url)
        .await
        .unwrap()
        .state()
        .await
        .unwrap()
        .position;
    cl.freeze("b", false);
    cl.freeze("c", false);

    // b or c takes over and writes to some of the same jobs.
    let winner = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(w) = actives(&cl).await.pop() {
                break w;
            }
            assert!(Instant::now() < deadline, "no new active");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let w_url = url(&cl, &winner);
    let mut w2 = Workload::new(seed(52)).with_max_jobs(40);
    write_workload(&w_url, &mut w2, 60, 3).await.unwrap();
    let history = integration_tests::open_store(&w_url)
        .await
        .unwrap()
        .epoch_history()
        .await
        .unwrap();
    let start = history.last().unwrap().start;
    assert!(
        a_head.seq > start.seq,
        "a has a tail past {start}: {a_head}"
    );

    // a comes back: passive, identical, its tail in the quarantine.
    cl.start("a").unwrap();
    if let Err(e) = cl.wait_converged(&winner, 1, Duration::from_secs(60)).await {
        dump(&cl);
        panic!("{e}");
    }
    assert_eq!(cl.status("a").await.unwrap()["role"], "passive");
    assert_eq!(
        checksums(&a_url).await.unwrap(),
        checksums(&w_url).await.unwrap()
    );
    let q = integration_tests::open_store(&a_url)
        .await
        .unwrap()
        .divergence_list(false)
        .await
        .unwrap();
    assert_eq!(q.len() as u64, a_head.seq - start.seq, "the tail, exactly");
    for d in &q {
        let orig = a_log
            .iter()
            .find(|c| c.pos == d.change.pos)
            .unwrap_or_else(|| panic!("{} is not a change a held", d.change.pos));
        assert_eq!(orig, &d.change, "the image is intact");
        assert!(d.change.pos.seq > start.seq);
    }
    wait_until(
        Duration::from_secs(10),
        "divergent_changes in a's status",
        || async {
            cl.status("a")
                .await
                .is_ok_and(|s| s["divergent_changes"] == q.len() as u64)
        },
    )
    .await
    .unwrap();
}

/// The crash window between a rejoin's quarantine and its snapshot: the
/// member's log is rewound but its tables still hold what the tail changed.
/// An agent stopped right there asks for the snapshot when it starts again
/// (the quarantine recorded it as owed), so its rows end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_between_quarantine_and_snapshot_takes_the_snapshot_on_restart() {
    use understudy::model::Position;
    use understudy::store::MemberStore;
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &specs(dir.path(), &["a", "b", "c"], &[]));
    cl.start_all().unwrap();
    seed_data(&cl, "a", 100, 71).await;
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
    cl.kill("c");
    let c_url = url(&cl, "c");
    let DatabaseUrl::Sqlite(c_path) = &c_url else {
        unreachable!("SQLite members")
    };
    // A row only c's divergent tail wrote (through the apply flag, as the
    // agent would), then the quarantine of its last 3 changes: exactly
    // what the rejoin path commits before it asks for the snapshot.
    let db = rusqlite::Connection::open(c_path).unwrap();
    db.execute_batch(
        "UPDATE us_state SET applying = 1;
         INSERT INTO projects (name, description, config, updated_at)
             VALUES ('only-on-c', 'from a divergent tail', '{}', 1);
         UPDATE us_state SET applying = 0;",
    )
    .unwrap();
    drop(db);
    let store = integration_tests::open_store(&c_url).await.unwrap();
    let head = store.state().await.unwrap().position;
    let keep = Position::new(head.epoch, head.seq - 3);
    assert_eq!(
        store
            .quarantine_tail(keep, "diverged history")
            .await
            .unwrap(),
        3
    );
    assert!(store.state().await.unwrap().snapshot_due);
    drop(store);

    cl.start("c").unwrap();
    if let Err(e) = cl
        .wait_converged("a", head.seq, Duration::from_secs(60))
        .await
    {
        dump(&cl);
        panic!("{e}");
    }
    wait_until(Duration::from_secs(20), "c's rows to match a's", || async {
        checksums(&c_url).await.ok() == checksums(&url(&cl, "a")).await.ok()
    })
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    let log = std::fs::read_to_string(&cl.member("c").log).unwrap();
    assert!(log.contains("snapshot installed"), "c took no snapshot");
    let store = integration_tests::open_store(&c_url).await.unwrap();
    assert!(!store.state().await.unwrap().snapshot_due, "paid");
    assert_eq!(store.divergent_count().await.unwrap(), 3);
}
