//! The failure modes HA agents' users hit most, with real processes: a
//! frozen active (zombie), a lost quorum explained in `/status`, pause and
//! resume, and the candidate order (`no_failover`, `priority`).

use integration_tests::{
    accepts_writes, actives, control_cli, seed, understudy_bin, wait_until, write_workload,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::workload::{AppConn, AppOp, Workload};

fn create(dir: &Path, members: &[&str]) -> LocalCluster {
    create_with(dir, members, ClusterOptions::default())
}

fn create_with(dir: &Path, members: &[&str], options: ClusterOptions) -> LocalCluster {
    let specs: Vec<MemberSpec> = members
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.join(format!("{m}.db")))),
        })
        .collect();
    let cl = LocalCluster::create(dir, &understudy_bin(), &specs, options).expect("cluster files");
    cl.init_all().expect("init");
    cl
}

/// Add top-level keys to one member's config (before its first table).
fn add_top(cl: &LocalCluster, id: &str, lines: &str) {
    let p = cl.member(id).config.clone();
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replacen("\n[", &format!("\n{lines}\n["), 1);
    std::fs::write(&p, text).unwrap();
}

fn url(cl: &LocalCluster, id: &str) -> DatabaseUrl {
    cl.member(id).database.clone().unwrap()
}

fn dump(cl: &LocalCluster) {
    for m in &cl.members {
        eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 40));
    }
}

async fn seed_and_converge(cl: &LocalCluster) {
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let u = url(cl, "a");
    let mut w = Workload::new(seed(61));
    integration_tests::execute_retrying(&u, &w.setup())
        .await
        .unwrap();
    write_workload(&u, &mut w, 100, 5).await.unwrap();
    cl.wait_converged("a", 1, Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_stops_taking_writes_by_itself_and_returns_passive() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    let urls: Vec<(String, DatabaseUrl)> = ["a", "b", "c"]
        .iter()
        .map(|m| (m.to_string(), url(&cl, m)))
        .collect();
    let lease = Duration::from_millis(cl.options.lease_ms);
    let failover = Duration::from_millis(cl.options.failover_ms);

    let frozen = Instant::now();
    cl.freeze("a", true);
    // Sampled every 50 ms: never two databases taking writes; a's stops
    // within lease_timeout + 200 ms; someone else takes over after
    // failover_timeout (from a's last heartbeat).
    let mut a_refused_at = None;
    let mut other_active_at = None;
    while frozen.elapsed() < failover + Duration::from_secs(8) {
        let open: Vec<&str> = urls
            .iter()
            .filter(|(_, u)| accepts_writes(u).is_ok())
            .map(|(m, _)| m.as_str())
            .collect();
        assert!(open.len() <= 1, "two members took writes at once: {open:?}");
        if a_refused_at.is_none() && !open.contains(&"a") {
            a_refused_at = Some(frozen.elapsed());
            let err = accepts_writes(&urls[0].1).unwrap_err();
            assert!(err.contains("lease"), "{err}");
        }
        if other_active_at.is_none() && open.iter().any(|m| *m != "a") {
            other_active_at = Some(frozen.elapsed());
        }
        if a_refused_at.is_some() && other_active_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = a_refused_at.expect("a kept taking writes while frozen");
    assert!(
        refused <= lease + Duration::from_millis(200),
        "a took writes for {refused:?} after freezing"
    );
    let promoted = other_active_at.expect("nobody took over from the frozen active");
    // A passive counts failover_timeout from the last heartbeat it heard,
    // which a sent up to one heartbeat interval before it froze (two, if
    // that tick was late on a busy machine); still well after the lease.
    let heartbeat = Duration::from_millis(cl.options.heartbeat_ms);
    assert!(
        promoted >= failover.saturating_sub(2 * heartbeat),
        "promoted after {promoted:?}, before failover_timeout ({failover:?}) counted from a's last heartbeat"
    );

    // SIGCONT: the old agent checks its lease first and ends passive; its
    // database never takes a write again.
    cl.freeze("a", false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open: Vec<&str> = urls
            .iter()
            .filter(|(_, u)| accepts_writes(u).is_ok())
            .map(|(m, _)| m.as_str())
            .collect();
        assert!(
            !open.contains(&"a"),
            "a took writes after its lease ran out"
        );
        assert!(open.len() <= 1, "two members took writes: {open:?}");
        if cl.status("a").await.is_ok_and(|s| s["role"] == "passive") {
            break;
        }
        if Instant::now() > deadline {
            dump(&cl);
            panic!("a did not end passive");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_the_survivor_says_why_and_promotes_once_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    cl.kill("a");
    cl.kill("c");
    let failover = Duration::from_millis(cl.options.failover_ms);
    // Long past failover_timeout: b has not promoted, and says why.
    wait_until(Duration::from_secs(15), "b to report no quorum", || async {
        cl.status("b").await.is_ok_and(|s| {
            let r = s["failover"]["not_promoting"].to_string();
            r.contains("no_quorum") && r.contains("\"a\"") && r.contains("\"c\"")
        })
    })
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}: {:?}", futures_status(&cl))
    });
    tokio::time::sleep(failover).await;
    assert!(actives(&cl).await.is_empty(), "promoted without a quorum");
    assert_ne!(cl.status("b").await.unwrap()["role"], "active");

    let back = Instant::now();
    cl.start("c").unwrap();
    wait_until(
        failover + Duration::from_secs(1) + Duration::from_millis(500),
        "a promotion",
        || async { !actives(&cl).await.is_empty() },
    )
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    eprintln!("promoted {:?} after c came back", back.elapsed());
    assert_eq!(
        actives(&cl).await,
        vec!["b".to_string()],
        "b holds the newest position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_off_failover_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    let said = control_cli(&cl, "b", &["pause"]);
    assert!(said.contains("paused on"), "{said}");
    for m in ["a", "b", "c"] {
        assert_eq!(cl.status(m).await.unwrap()["paused"], true, "{m}");
    }
    cl.kill("a");
    let failover = Duration::from_millis(cl.options.failover_ms);
    tokio::time::sleep(failover * 3).await;
    assert!(actives(&cl).await.is_empty(), "promoted while paused");
    for m in ["b", "c"] {
        let s = cl.status(m).await.unwrap();
        assert!(
            s["failover"]["not_promoting"]
                .to_string()
                .contains("paused"),
            "{s}"
        );
    }
    let resumed = Instant::now();
    control_cli(&cl, "c", &["resume"]);
    wait_until(
        failover + Duration::from_secs(1),
        "a promotion after resume",
        || async { !actives(&cl).await.is_empty() },
    )
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    eprintln!("promoted {:?} after resume", resumed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_is_never_promoted_and_priority_breaks_ties() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c", "d"]);
    // b, c and d are equally up to date: b is tagged no_failover (its id
    // would win a tie otherwise), and d's priority beats c's id.
    add_top(&cl, "b", "no_failover = true");
    add_top(&cl, "d", "priority = 10");
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    let s = cl.status("b").await.unwrap();
    assert_eq!(s["failover"]["eligible"], false, "{s}");
    assert!(
        s["failover"]["not_promoting"]
            .to_string()
            .contains("no_failover"),
        "{s}"
    );
    cl.kill("a");
    wait_until(Duration::from_secs(15), "a promotion", || async {
        !actives(&cl).await.is_empty()
    })
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    assert_eq!(
        actives(&cl).await,
        vec!["d".to_string()],
        "priority decides between c and d"
    );
    assert_eq!(cl.status("b").await.unwrap()["role"], "passive");
    let a = AppOp::UpsertProject {
        name: "after".into(),
        description: "x".into(),
        config: "{}".into(),
    };
    AppConn::connect(&url(&cl, "d"))
        .await
        .unwrap()
        .execute(&[a])
        .await
        .unwrap();
}

fn futures_status(cl: &LocalCluster) -> String {
    let addr = cl.member("b").status.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(understudy::status::client::get_json(&addr, "/status"))
            .map(|v| v.to_string())
            .unwrap_or_else(|e| e.to_string())
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_force_a_promotion_without_a_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    cl.kill("a");
    cl.kill("c");
    tokio::time::sleep(Duration::from_millis(cl.options.failover_ms * 2)).await;
    assert!(actives(&cl).await.is_empty());
    let said = control_cli(&cl, "b", &["promote", "--force", "--to", "b"]);
    assert!(said.contains("promoted by force"), "{said}");
    assert_eq!(actives(&cl).await, vec!["b".to_string()]);
    let h = understudy::status::client::get_json(&cl.member("b").status, "/history")
        .await
        .unwrap();
    let last = h["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["active"], "b");
    assert!(last["reason"].as_str().unwrap().contains("forced"), "{h}");
    // Writes go to b; a comes back and follows it.
    AppConn::connect(&url(&cl, "b"))
        .await
        .unwrap()
        .execute(&[AppOp::UpsertProject {
            name: "forced".into(),
            description: "after a forced promotion".into(),
            config: "{}".into(),
        }])
        .await
        .unwrap();
    cl.start("a").unwrap();
    cl.start("c").unwrap();
    if let Err(e) = cl.wait_converged("b", 1, Duration::from_secs(60)).await {
        dump(&cl);
        panic!("{e}");
    }
    assert_eq!(cl.status("a").await.unwrap()["role"], "passive");
}

/// Hold SQLite's write lock on a member's database, as another process
/// would, until dropped: its applier cannot commit, its agent goes on
/// answering heartbeats.
fn hold_write_lock(cl: &LocalCluster, id: &str) -> rusqlite::Connection {
    let DatabaseUrl::Sqlite(path) = url(cl, id) else {
        panic!("{id} is not on SQLite");
    };
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    c
}

fn seq(v: &serde_json::Value) -> u64 {
    v["seq"].as_u64().unwrap()
}

/// Both passives fall behind (their databases are locked) while the active
/// goes on writing and announcing its head; the active dies. Nobody is
/// promoted automatically, `/status` says the lag gate blocks every
/// candidate and how many changes are at risk; `promote --force --to` the
/// best of them accepts the loss explicitly and is recorded as forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gate_blocking_every_candidate_is_explained_and_force_is_the_way_out() {
    const MAX_LAG: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.path().join(format!("{m}.db")))),
        })
        .collect();
    let options = ClusterOptions {
        extra_replication: format!("max_failover_lag_changes = {MAX_LAG}"),
        ..ClusterOptions::default()
    };
    let mut cl = LocalCluster::create(dir.path(), &understudy_bin(), &specs, options)
        .expect("cluster files");
    cl.init_all().expect("init");
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;

    let locks = [hold_write_lock(&cl, "b"), hold_write_lock(&cl, "c")];
    let u = url(&cl, "a");
    let mut w = Workload::new(seed(62));
    write_workload(&u, &mut w, 60, 3).await.unwrap();
    // The head as the database has it (the status may trail a commit).
    let head = {
        use understudy::store::MemberStore;
        integration_tests::open_store(&u)
            .await
            .unwrap()
            .state()
            .await
            .unwrap()
            .position
            .seq
    };
    // The head reaches the passives' controllers (heartbeats) though not
    // their databases: each sees itself lagging by exactly the difference.
    for m in ["b", "c"] {
        wait_until(
            Duration::from_secs(10),
            "the passive to see its lag",
            || async {
                cl.status(m).await.is_ok_and(|s| {
                    let behind = head - seq(&s["position"]);
                    s["failover"]["not_promoting"].as_array().is_some_and(|r| {
                        r.iter().any(|r| {
                            r["reason"] == "lagging" && r["behind"].as_u64() == Some(behind)
                        })
                    })
                })
            },
        )
        .await
        .unwrap_or_else(|e| {
            dump(&cl);
            panic!("{e}: {}", futures_status(&cl))
        });
    }
    let positions: Vec<u64> = [
        seq(&cl.status("b").await.unwrap()["position"]),
        seq(&cl.status("c").await.unwrap()["position"]),
    ]
    .to_vec();
    let best_seq = *positions.iter().max().unwrap();
    assert!(
        head - best_seq > MAX_LAG,
        "the passives fell far enough behind"
    );
    let best = if positions[0] >= positions[1] {
        "b"
    } else {
        "c"
    };

    cl.kill("a");
    let failover = Duration::from_millis(cl.options.failover_ms);
    for m in ["b", "c"] {
        wait_until(
            failover + Duration::from_secs(5),
            "the status to say the gate blocks every candidate",
            || async {
                cl.status(m).await.is_ok_and(|s| {
                    s["failover"]["not_promoting"].as_array().is_some_and(|r| {
                        r.iter().any(|r| {
                            r["reason"] == "lag_gate_blocks_all"
                                && r["changes_at_risk"].as_u64() == Some(head - best_seq)
                                && r["best"] == best
                                && seq(&r["announced"]) == head
                                && r["max"].as_u64() == Some(MAX_LAG)
                        })
                    })
                })
            },
        )
        .await
        .unwrap_or_else(|e| {
            dump(&cl);
            panic!("{e}: {}", futures_status(&cl))
        });
    }
    // Long past failover_timeout nobody promoted.
    tokio::time::sleep(failover * 2).await;
    assert!(actives(&cl).await.is_empty(), "promoted past the lag gate");

    // The operator accepts the loss: free the best member's database and
    // force it. (Freed, it may apply whatever it had received from a but
    // could not commit; the other's database stays locked meanwhile, so no
    // election can be won behind the operator's back: its vote cannot be
    // recorded.)
    let [lock_b, lock_c] = locks;
    let other_lock = if best == "b" {
        drop(lock_b);
        lock_c
    } else {
        drop(lock_c);
        lock_b
    };

    let said = control_cli(&cl, best, &["promote", "--force", "--to", best]);
    assert!(said.contains("promoted by force"), "{said}");
    assert_eq!(actives(&cl).await, vec![best.to_string()]);
    let h = understudy::status::client::get_json(&cl.member(best).status, "/history")
        .await
        .unwrap();
    let last = h["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["active"], best);
    assert!(last["reason"].as_str().unwrap().contains("forced"), "{h}");
    drop(other_lock);
}

/// `hooks.on_promote_blocks`: b (preferred by priority) is elected when the
/// active dies, but its `on_promote` fails, so its database never takes a
/// write; it steps down, says why, and c (whose hook is fine) becomes the
/// active instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_blocking_on_promote_hands_the_promotion_to_another_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    add_top(&cl, "b", "priority = 10");
    let b_cfg = cl.member("b").config.clone();
    let mut text = std::fs::read_to_string(&b_cfg).unwrap();
    text.push_str(
        "\n[hooks]\non_promote = \"exit 3\"\non_promote_blocks = true\ntimeout_ms = 2000\n",
    );
    std::fs::write(&b_cfg, text).unwrap();
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    let b_url = url(&cl, "b");

    cl.kill("a");
    let killed = Instant::now();
    let mut b_took_a_write = false;
    let winner = loop {
        // Sampled every ~50 ms: b's database never accepts a write.
        b_took_a_write |= accepts_writes(&b_url).is_ok();
        if let Some(w) = actives(&cl).await.pop() {
            break w;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "nobody promoted: {}",
            futures_status(&cl)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(winner, "c", "{}", futures_status(&cl));
    for _ in 0..20 {
        b_took_a_write |= accepts_writes(&b_url).is_ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b_took_a_write, "b's database took a write");

    let s = cl.status("b").await.unwrap();
    assert_eq!(s["role"], "passive", "{s}");
    assert!(
        s["failover"]["not_promoting"]
            .to_string()
            .contains("promote_hook_failed"),
        "{s}"
    );
    let hooks = s["hooks"].to_string();
    assert!(
        hooks.contains("on_promote") && hooks.contains('3'),
        "{hooks}"
    );
    let log = std::fs::read_to_string(&cl.member("b").log).unwrap();
    assert!(log.contains("on_promote failed"), "the step-down is logged");
    // b was elected first (its own history has its short epoch), then c
    // took over from it.
    let hist = |id: &str| {
        let addr = cl.member(id).status.clone();
        async move {
            understudy::status::client::get_json(&addr, "/history")
                .await
                .unwrap()
        }
    };
    let hb = hist("b").await;
    assert!(
        hb["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["active"] == "b" && r["epoch"].as_u64() > Some(1)),
        "{hb}"
    );
    let hc = hist("c").await;
    let last = hc["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["active"], "c", "{hc}");
    assert!(
        last["reason"].as_str().unwrap_or("").contains("from b"),
        "{hc}"
    );
}

/// `understudy migrate` with a member down: the active runs the change
/// (a column added and back-filled), the passive that is up applies it at
/// its position, the command names the member that did not confirm (exit
/// 3), that member applies it when it returns, and every member ends with
/// the same rows, new column included. A DDL that fails on the active
/// changes nothing anywhere (exit 1, SQLite's own error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_reaches_every_member_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    cl.stop("c", Duration::from_secs(10));
    let ddl = dir.path().join("add_priority.sql");
    std::fs::write(
        &ddl,
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n\
         UPDATE jobs SET priority = 5 WHERE schedule_enabled = 1;\n",
    )
    .unwrap();
    // A steady writer on the active throughout: SQLite writers wait for
    // the migration's lock; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (u, stop) = (url(&cl, "a"), stop.clone());
        tokio::spawn(async move {
            let mut app = AppConn::connect(&u).await.expect("writer connects");
            let mut w = Workload::new(seed(64));
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match app.execute(&[w.next_op()]).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = migrate_via(&cl, "a", ddl.clone(), 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = writer.await.unwrap();
    assert!(failed.is_empty(), "application writes failed: {failed:?}");
    assert!(ok > 50, "the writer wrote throughout ({ok} writes)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "c is down: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["version"], 1, "{doc}");
    assert_eq!(doc["not_confirmed"], serde_json::json!(["c"]), "{doc}");
    assert_eq!(doc["confirmed"], serde_json::json!(["a", "b"]), "{doc}");

    // The application writes on: new rows take the new column's default.
    let u = url(&cl, "a");
    let mut w = Workload::new(seed(62));
    write_workload(&u, &mut w, 50, 5).await.unwrap();
    cl.start("c").unwrap();
    let converged = cl.wait_converged("a", 1, Duration::from_secs(60)).await;
    if converged.is_err() {
        dump(&cl);
    }
    converged.unwrap();
    for m in ["a", "b", "c"] {
        let st = cl.status(m).await.unwrap();
        assert_eq!(st["schema"]["version"], 1, "{m}: {st}");
        assert_eq!(st["apply"]["state"], "ok", "{m}: {st}");
    }
    let want = integration_tests::checksums(&u).await.unwrap();
    assert!(
        want.iter().any(|t| t.table == "jobs" && t.rows > 0),
        "{want:?}"
    );
    for m in ["b", "c"] {
        let got = integration_tests::checksums(&url(&cl, m)).await.unwrap();
        assert_eq!(got, want, "{m} differs from the active after the migration");
    }
    let cat = integration_tests::open_store(&url(&cl, "c")).await.unwrap();
    let cols = understudy::store::MemberStore::catalog(&cat);
    let jobs = cols
        .tables()
        .iter()
        .find(|t| t.name.as_str() == "jobs")
        .unwrap();
    assert!(
        jobs.columns.iter().any(|c| c.name == "priority"),
        "{jobs:?}"
    );

    // A DDL that fails on the active: exit 1, SQLite's reason, no change.
    let bad = sql_file(
        dir.path(),
        "bad.sql",
        "ALTER TABLE jobs ADD COLUMN owner_note TEXT;\nALTER TABLE no_such_table ADD COLUMN x INTEGER;\n",
    );
    let out = migrate_via(&cl, "a", bad, 5).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no such table: no_such_table"), "{stderr}");
    assert!(stderr.contains("changed nothing"), "{stderr}");
    let st = cl.status("a").await.unwrap();
    assert_eq!(st["schema"]["version"], 1, "{st}");
    let cat = integration_tests::open_store(&u).await.unwrap();
    let cols = understudy::store::MemberStore::catalog(&cat);
    let jobs = cols
        .tables()
        .iter()
        .find(|t| t.name.as_str() == "jobs")
        .unwrap();
    assert!(
        !jobs.columns.iter().any(|c| c.name == "owner_note"),
        "{jobs:?}"
    );
}

/// Run SQL on a member's database behind its agent's back, as an operator
/// with the sqlite3 shell would.
fn by_hand(cl: &LocalCluster, id: &str, sql: &str) {
    let Some(DatabaseUrl::Sqlite(path)) = cl.member(id).database.clone() else {
        panic!("{id} is not an SQLite member");
    };
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(sql).unwrap();
}

/// Drift: a column added by hand on a passive. The next schema change
/// leaves that member's tables unlike the active's, so it stops applying
/// at that change and says why (`apply.state = blocked`), while the other
/// passive and the application go on; once the operator drops the column
/// again it applies the change by itself and ends identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_by_hand_blocks_a_passive_until_it_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    by_hand(&cl, "b", "ALTER TABLE jobs ADD COLUMN note TEXT;");
    let ddl = sql_file(
        dir.path(),
        "add_priority.sql",
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n",
    );
    let out = migrate_via(&cl, "a", ddl, 5).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "b drifted: {stdout}");
    assert!(stdout.contains("\"b\""), "{stdout}");

    let u = url(&cl, "a");
    let mut w = Workload::new(seed(63));
    write_workload(&u, &mut w, 50, 5).await.unwrap();
    let blocked = cl
        .wait_until(
            Duration::from_secs(20),
            "b blocked with the reason",
            || async {
                cl.status("b")
                    .await
                    .is_ok_and(|st| st["apply"]["state"] == "blocked")
            },
        )
        .await;
    if let Err(e) = blocked {
        dump(&cl);
        panic!("{e}");
    }
    let st = cl.status("b").await.unwrap();
    assert_eq!(st["apply"]["state"], "blocked", "stays blocked: {st}");
    cl.wait_until(
        Duration::from_secs(10),
        "b not promoting while blocked",
        || async {
            cl.status("b").await.is_ok_and(|st| {
                st["failover"]["not_promoting"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["reason"] == "apply_blocked"))
            })
        },
    )
    .await
    .unwrap();
    let reason = st["apply"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("fingerprint"), "{reason}");
    assert_eq!(st["schema"]["version"], 0, "{st}");
    let c = cl.status("c").await.unwrap();
    assert_eq!(c["schema"]["version"], 1, "{c}");

    by_hand(&cl, "b", "ALTER TABLE jobs DROP COLUMN note;");
    let converged = cl.wait_converged("a", 1, Duration::from_secs(60)).await;
    if converged.is_err() {
        dump(&cl);
    }
    converged.unwrap();
    let st = cl.status("b").await.unwrap();
    assert_eq!(st["schema"]["version"], 1, "{st}");
    cl.wait_until(Duration::from_secs(10), "b applying again", || async {
        cl.status("b")
            .await
            .is_ok_and(|st| st["apply"]["state"] == "ok")
    })
    .await
    .unwrap();
    let want = integration_tests::checksums(&u).await.unwrap();
    let got = integration_tests::checksums(&url(&cl, "b")).await.unwrap();
    assert_eq!(got, want, "b differs from the active after the repair");
}

/// Wait for an active other than `old` and name it.
async fn new_active_other_than(cl: &LocalCluster, old: &str) -> String {
    cl.wait_until(Duration::from_secs(30), "a new active", || async {
        actives(cl).await.iter().any(|m| m != old)
    })
    .await
    .unwrap();
    let new = actives(cl).await.into_iter().find(|m| m != old).unwrap();
    cl.wait_active(&new, Duration::from_secs(30)).await.unwrap();
    new
}

/// A file of SQL in `dir`.
fn sql_file(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, sql).unwrap();
    p
}

/// `understudy migrate --sql file` through member `via`'s endpoint,
/// waiting at most `timeout_secs` for the members to confirm.
async fn migrate_via(
    cl: &LocalCluster,
    via: &str,
    file: PathBuf,
    timeout_secs: u64,
) -> std::process::Output {
    let (status, token) = (cl.member(via).status.clone(), cl.options.token.clone());
    let timeout = timeout_secs.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(understudy_bin())
            .args(["migrate", "--sql", file.to_str().unwrap(), "--json"])
            .args([
                "--timeout-secs",
                &timeout,
                "--url",
                &status,
                "--token",
                &token,
            ])
            .output()
            .expect("run understudy migrate")
    })
    .await
    .unwrap()
}

/// Every data member at `version` with the active's checksums.
async fn same_schema_and_rows(cl: &LocalCluster, active: &str, version: u64) {
    let converged = cl.wait_converged(active, 1, Duration::from_secs(60)).await;
    if converged.is_err() {
        dump(cl);
    }
    converged.unwrap();
    let want = integration_tests::checksums(&url(cl, active))
        .await
        .unwrap();
    for m in ["a", "b", "c"] {
        let st = cl.status(m).await.unwrap();
        assert_eq!(st["schema"]["version"], version, "{m}: {st}");
        let got = integration_tests::checksums(&url(cl, m)).await.unwrap();
        assert_eq!(got, want, "{m} differs from the active {active}");
    }
}

/// A kill -9 of the active right after a schema change, then a second
/// change on the new active followed at once by a switchover back: every
/// member ends at the last version with the same rows, the killed member
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_survive_a_kill_and_a_switchover_right_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    let v1 = sql_file(
        dir.path(),
        "v1.sql",
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 3;\n",
    );
    let out = migrate_via(&cl, "a", v1, 10).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cl.kill("a");
    let new = new_active_other_than(&cl, "a").await;
    let mut w = Workload::new(seed(65));
    write_workload(&url(&cl, &new), &mut w, 60, 5)
        .await
        .unwrap();
    cl.start("a").unwrap();
    same_schema_and_rows(&cl, &new, 1).await;

    let v2 = sql_file(
        dir.path(),
        "v2.sql",
        "CREATE INDEX jobs_priority ON jobs(priority);\nALTER TABLE projects ADD COLUMN owner TEXT;\n",
    );
    let out = migrate_via(&cl, &new, v2, 10).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    control_cli(&cl, &new, &["switchover", "--to", "a"]);
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    write_workload(&url(&cl, "a"), &mut w, 60, 5).await.unwrap();
    same_schema_and_rows(&cl, "a", 2).await;
}

/// A member that was down through two schema changes takes a snapshot
/// (`understudy resnapshot`): the snapshot carries the changes, the member
/// runs them before the rows, and it streams on at the active's version
/// with the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_schema_changes_the_member_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    cl.stop("c", Duration::from_secs(10));
    let mut w = Workload::new(seed(66));
    for (i, sql) in [
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;",
        "ALTER TABLE keys ADD COLUMN rotated_at TEXT;\nUPDATE projects SET description = 'migrated' WHERE description IS NULL;",
    ]
    .iter()
    .enumerate()
    {
        let f = dir.path().join(format!("v{}.sql", i + 1));
        std::fs::write(&f, sql).unwrap();
        let out = migrate_via(&cl, "a", f, 10).await;
        assert_eq!(out.status.code(), Some(3), "c is down: {}", String::from_utf8_lossy(&out.stderr));
        write_workload(&url(&cl, "a"), &mut w, 40, 5).await.unwrap();
    }
    let out = std::process::Command::new(&cl.bin)
        .args(["resnapshot", "--config"])
        .arg(&cl.member("c").config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cl.start("c").unwrap();
    write_workload(&url(&cl, "a"), &mut w, 40, 5).await.unwrap();
    same_schema_and_rows(&cl, "a", 2).await;
}

/// A schema change while a passive is cut off (its agent frozen): the
/// command names it (exit 3), the rest go on, and once it is back it
/// applies the change at its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_while_a_passive_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = create(dir.path(), &["a", "b", "c"]);
    add_top(&cl, "b", "no_failover = true");
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    cl.freeze("b", true);
    let f = sql_file(
        dir.path(),
        "v1.sql",
        "ALTER TABLE projects ADD COLUMN region TEXT NOT NULL DEFAULT 'eu';",
    );
    let out = migrate_via(&cl, "a", f, 10).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["not_confirmed"], serde_json::json!(["b"]), "{doc}");
    let mut w = Workload::new(seed(67));
    write_workload(&url(&cl, "a"), &mut w, 40, 5).await.unwrap();
    cl.freeze("b", false);
    same_schema_and_rows(&cl, "a", 1).await;
}

/// A schema change the cluster never received: with both passives down
/// (killed: a frozen member still finds the entry in its socket when it
/// thaws), the active, its lease still running, runs one and writes rows
/// under it, then dies. A passive is promoted and runs another change of the same
/// version number. When the old active returns it rejoins: its tail, the
/// schema change and the rows captured under it, goes to the quarantine
/// (listed with the tables it was captured under), its tables are rebuilt
/// as they were before it, and the snapshot brings the cluster's change.
/// Every member ends at version 1 with the new active's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_the_cluster_never_received_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    // A lease long enough for the active to run the change and write
    // under it after the passives froze.
    let options = ClusterOptions {
        lease_ms: 6000,
        failover_ms: 7000,
        ..ClusterOptions::default()
    };
    let mut cl = create_with(dir.path(), &["a", "b", "c"], options);
    cl.start_all().unwrap();
    seed_and_converge(&cl).await;
    let lost = sql_file(
        dir.path(),
        "lost.sql",
        "ALTER TABLE projects ADD COLUMN region TEXT NOT NULL DEFAULT 'eu';\n",
    );
    cl.kill("b");
    cl.kill("c");
    let out = migrate_via(&cl, "a", lost, 1).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "the active ran it, no passive confirmed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    by_hand(
        &cl,
        "a",
        "INSERT INTO projects (name, description, config, updated_at, region) \
         VALUES ('lost-project', 'x', '{}', 1, 'us')",
    );
    cl.kill("a");
    cl.start("b").unwrap();
    cl.start("c").unwrap();
    let new = new_active_other_than(&cl, "a").await;
    let other = sql_file(
        dir.path(),
        "other.sql",
        "ALTER TABLE jobs ADD COLUMN priority INTEGER;\n",
    );
    let out = migrate_via(&cl, &new, other, 10).await;
    assert_eq!(out.status.code(), Some(3), "a is down");
    let mut w = Workload::new(seed(68));
    write_workload(&url(&cl, &new), &mut w, 40, 5)
        .await
        .unwrap();

    cl.start("a").unwrap();
    same_schema_and_rows(&cl, &new, 1).await;
    let st = cl.status(&new).await.unwrap();
    for m in ["a", "b", "c"] {
        let s = cl.status(m).await.unwrap();
        assert_eq!(s["schema"], st["schema"], "{m}: {s}");
    }
    let out = std::process::Command::new(understudy_bin())
        .args(["divergence", "list", "--json", "--config"])
        .arg(&cl.member("a").config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = list["changes"].as_array().expect("a list of changes");
    assert!(
        rows.iter().any(|r| r["op"] == "schema"),
        "the schema change is quarantined: {text}"
    );
    assert!(
        rows.iter().any(|r| r["table"] == "projects"
            && r["key"] == "lost-project"
            && r["row"]["region"] == "us"),
        "the row written under it is listed, read with its tables: {text}"
    );
}
