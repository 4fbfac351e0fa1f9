//! Black-box replication tests: real `understudy run` processes on real
//! databases, over mutual TLS on loopback.

use integration_tests::pg::{TestDb, shared_server};
use integration_tests::{change_log, checksums, seed, understudy_bin, wait_until, write_workload};
use std::time::Duration;
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::workload::Workload;

fn sqlite(dir: &std::path::Path, id: &str) -> Option<DatabaseUrl> {
    Some(DatabaseUrl::Sqlite(dir.join(format!("{id}.db"))))
}

fn three(dir: &std::path::Path, dbs: [Option<DatabaseUrl>; 3]) -> LocalCluster {
    let [a, b, c] = dbs;
    let specs = [
        MemberSpec {
            id: "a".into(),
            database: a,
        },
        MemberSpec {
            id: "b".into(),
            database: b,
        },
        MemberSpec {
            id: "c".into(),
            database: c,
        },
    ];
    let mut cl = LocalCluster::create(
        dir,
        &understudy_bin(),
        &specs,
        ClusterOptions {
            // Roles are static here: no promotion while members are killed.
            auto_failover: false,
            ..ClusterOptions::default()
        },
    )
    .expect("cluster files");
    cl.init_all().expect("init");
    cl.start_all().expect("start");
    cl
}

/// Every data member has the active's change log (same positions, same
/// images) and the same table checksums.
async fn assert_identical(cl: &LocalCluster) {
    let urls: Vec<(String, DatabaseUrl)> = cl
        .members
        .iter()
        .filter_map(|m| m.database.clone().map(|d| (m.id.to_string(), d)))
        .collect();
    let (a_id, a_url) = &urls[0];
    let a_sums = checksums(a_url).await.expect("checksums of the active");
    let a_log = change_log(a_url).await.expect("log of the active");
    for (id, url) in &urls[1..] {
        let sums = checksums(url).await.expect("checksums");
        assert_eq!(sums, a_sums, "tables of {id} differ from {a_id}");
        let log = change_log(url).await.expect("log");
        assert_eq!(log.len(), a_log.len(), "change log length of {id}");
        assert!(log == a_log, "change log of {id} differs from {a_id}");
    }
}

async fn converge(cl: &LocalCluster, what: &str) {
    if let Err(e) = cl.wait_converged("a", 1, Duration::from_secs(120)).await {
        for m in &cl.members {
            eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 30));
        }
        panic!("{what}: {e}");
    }
}

#[derive(Clone, Copy, Debug)]
enum B {
    Sqlite,
    Pg,
}

/// A member database of backend `b`; PostgreSQL databases live on the test
/// server and are dropped with the returned guard.
fn db(b: B, dir: &std::path::Path, id: &str, keep: &mut Vec<TestDb>) -> Option<DatabaseUrl> {
    match b {
        B::Sqlite => sqlite(dir, id),
        B::Pg => {
            let t = shared_server()
                .expect("test PostgreSQL server")
                .create_database(id)
                .expect("test database");
            let url = DatabaseUrl::Postgres(t.url.clone());
            keep.push(t);
            Some(url)
        }
    }
}

/// 1 active + 2 passives: 50,000 standard-workload mutations, then every
/// member's tables and change log are identical to the active's.
async fn fifty_thousand(active: B, passives: B, seed_default: u64) {
    let seed = seed(seed_default);
    eprintln!("active on {active:?}, passives on {passives:?}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let dbs = [
        db(active, d, "a", &mut keep),
        db(passives, d, "b", &mut keep),
        db(passives, d, "c", &mut keep),
    ];
    let cl = three(d, dbs);
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let url = cl.member("a").database.clone().unwrap();
    let mut w = Workload::new(seed);
    let mut app_setup = understudy::workload::AppConn::connect(&url).await.unwrap();
    app_setup.execute(&w.setup()).await.unwrap();
    write_workload(&url, &mut w, 50_000, 10).await.unwrap();
    converge(&cl, "after 50,000 mutations").await;
    assert_identical(&cl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqlite_50k_mutations_identical() {
    fifty_thousand(B::Sqlite, B::Sqlite, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_50k_mutations_identical() {
    fifty_thousand(B::Pg, B::Pg, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_50k_mutations_identical() {
    fifty_thousand(B::Sqlite, B::Pg, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_sqlite_50k_mutations_identical() {
    fifty_thousand(B::Pg, B::Sqlite, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_passive_and_active_mid_stream() {
    let seed = seed(11);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cl = three(d, [sqlite(d, "a"), sqlite(d, "b"), sqlite(d, "c")]);
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let url = cl.member("a").database.clone().unwrap();
    let mut w = Workload::new(seed);
    let mut app = understudy::workload::AppConn::connect(&url).await.unwrap();
    app.execute(&w.setup()).await.unwrap();
    write_workload(&url, &mut w, 3_000, 5).await.unwrap();

    // kill -9 a passive while the writer runs, restart it.
    let writer = {
        let (url, mut w) = (url.clone(), w.clone());
        tokio::spawn(async move { write_workload(&url, &mut w, 6_000, 5).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.kill("b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cl.start("b").unwrap();
    writer.await.unwrap().unwrap();
    for _ in 0..6_000 {
        w.next_op();
    }
    converge(&cl, "after kill -9 of passive b").await;

    // kill -9 the active mid-stream: its lease runs out, the writer's
    // transactions are refused until it is back, and are retried.
    let writer = {
        let (url, mut w) = (url.clone(), w.clone());
        tokio::spawn(async move { write_workload(&url, &mut w, 6_000, 5).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.kill("a");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cl.start("a").unwrap();
    writer.await.unwrap().unwrap();
    converge(&cl, "after kill -9 of active a").await;
    assert_identical(&cl).await;
    // Exactly once: positions are contiguous 1..=head on every member.
    let log = change_log(&url).await.unwrap();
    for (i, c) in log.iter().enumerate() {
        assert_eq!(c.pos.seq, i as u64 + 1, "positions are contiguous");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_status_reports_lag_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cl = three(d, [sqlite(d, "a"), sqlite(d, "b"), sqlite(d, "c")]);
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let url = cl.member("a").database.clone().unwrap();
    let mut w = Workload::new(5);
    let mut app = understudy::workload::AppConn::connect(&url).await.unwrap();
    app.execute(&w.setup()).await.unwrap();
    write_workload(&url, &mut w, 200, 1).await.unwrap();
    converge(&cl, "after 200 mutations").await;
    let a = cl.status("a").await.unwrap();
    let b = cl.status("b").await.unwrap();
    assert_eq!(a["role"], "active");
    assert_eq!(b["role"], "passive");
    assert_eq!(b["active"], "a");
    assert_eq!(a["position"], b["position"]);
    assert_eq!(b["lag"]["changes"], 0);
    assert_eq!(a["peers"].as_array().unwrap().len(), 2);
    // A passive's ack reaches the active just after the passive's own
    // /status shows the commit: wait for it rather than race it.
    wait_until(
        Duration::from_secs(5),
        "both passives acked on the active",
        || async {
            cl.status("a").await.is_ok_and(|a| {
                a["peers"].as_array().is_some_and(|p| {
                    p.iter()
                        .all(|p| p["connected"] == true && p["lag_changes"] == 0)
                })
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", a));
    wait_until(Duration::from_secs(5), "a heartbeat on b", || async {
        cl.status("b")
            .await
            .map(|s| s["last_heartbeat_ms"].as_u64().is_some_and(|ms| ms < 2000))
            .unwrap_or(false)
    })
    .await
    .unwrap();
}
