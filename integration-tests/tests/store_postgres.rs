//! The PostgreSQL member database against a real server: the shared
//! conformance suite, plus what only PostgreSQL has to prove (the commit-order
//! trap with concurrent writers, the fence through a real `psql` and a server
//! restart, LISTEN/NOTIFY latency and idle cost, bad input).

use integration_tests::pg::{self, PgServer, StopMode, TestDb};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use understudy::model::{Change, ChangeOp, MemberId, Position, RowImage};
use understudy::store::conformance::Backend;
use understudy::store::postgres::{MIGRATIONS, PgStore, SCHEMA_VERSION};
use understudy::store::{InitParams, MemberStore, StoreError};

// ------------------------------------------------------------ conformance

struct PgBackend;

async fn app_client(url: &str) -> Result<tokio_postgres::Client, String> {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

fn app_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

impl Backend for PgBackend {
    type Store = PgStore;
    type Db = Arc<TestDb>;

    async fn fresh(&self) -> (Self::Db, Self::Store) {
        let db = pg::test_database("conformance")
            .await
            .expect("test database");
        let store = PgStore::connect(&db.url).await.expect("connect");
        (Arc::new(db), store)
    }

    async fn reopen(&self, db: &Self::Db, store: Self::Store) -> Self::Store {
        drop(store);
        PgStore::connect(&db.url).await.expect("reconnect")
    }

    async fn app_exec(&self, db: &Self::Db, sql: &str) -> Result<(), String> {
        // A new connection per call: a failed batch cannot leave an open
        // transaction behind for the next one.
        let c = app_client(&db.url).await?;
        c.batch_execute(sql).await.map_err(|e| app_error(&e))
    }

    async fn app_query_i64(&self, db: &Self::Db, sql: &str) -> Result<Option<i64>, String> {
        let c = app_client(&db.url).await?;
        let rows = c.query(sql, &[]).await.map_err(|e| app_error(&e))?;
        match rows.first() {
            None => Ok(None),
            Some(r) => r.try_get::<_, Option<i64>>(0).map_err(|e| e.to_string()),
        }
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("'\\x{hex}'::bytea")
    }
}

understudy::store_conformance_tests!(PgBackend);

// ------------------------------------------------------------ helpers

fn params(member: &str) -> InitParams {
    InitParams {
        cluster: "test".into(),
        member: MemberId::new(member),
        initial_active: MemberId::new("a"),
    }
}

async fn fresh(hint: &str, member: &str) -> (TestDb, PgStore) {
    let db = pg::test_database(hint).await.expect("test database");
    let store = PgStore::connect(&db.url).await.expect("connect");
    store.init(&params(member)).await.expect("init");
    (db, store)
}

/// A small deterministic PRNG (xorshift64*), seeded and printed by each test.
struct Rng(u64);
impl Rng {
    fn seeded(name: &str) -> Rng {
        let seed = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        println!("{name}: seed {seed} (rerun with TEST_SEED={seed})");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn description(c: &Change) -> Option<&str> {
    match &c.op {
        ChangeOp::Upsert(RowImage::Job(j)) => j.description.as_deref(),
        _ => None,
    }
}

// ------------------------------------------------------------ ordering trap

/// One committed application transaction as the test saw it.
#[derive(Clone, Debug)]
struct Committed {
    marker: String,
    /// Just before COMMIT was sent, and just after it returned.
    commit_sent: Instant,
    commit_done: Instant,
}

/// Concurrent writers whose transactions commit out of start order. A naive
/// "staged rows with id > last" reader loses the slow transaction's rows (the
/// trap is real); the sequencer + change log deliver every change exactly
/// once, whole transactions per move, moves in commit order, conflicting
/// updates in lock order, and a replay reproduces the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_trap_concurrent_writers_commit_out_of_order() {
    let mut rng = Rng::seeded("ordering_trap");
    let (db, store) = fresh("ordering", "a").await;
    let store = Arc::new(store);
    let setup = app_client(&db.url).await.expect("app");
    setup
        .batch_execute(
            "INSERT INTO projects(name) VALUES ('p'); \
             INSERT INTO jobs(id, project, name, description) VALUES ('hot', 'p', 'hot', 'init')",
        )
        .await
        .expect("setup");
    assert_eq!(store.sequence().await.expect("sequence"), 2);

    // ---- Phase 1: the naive reader over the staging table.
    let long = app_client(&db.url).await.expect("app");
    long.batch_execute(
        "BEGIN; INSERT INTO jobs(id, project, name, description) VALUES ('naive-long', 'p', 'n', 'naive-long')",
    )
    .await
    .expect("long txn");
    let mut shorts = Vec::new();
    for w in 0..7 {
        let url = db.url.clone();
        shorts.push(tokio::spawn(async move {
            let c = app_client(&url).await.expect("app");
            for t in 0..10 {
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO jobs(id, project, name, description) VALUES ('naive-{w}-{t}', 'p', 'n', 'naive-{w}-{t}'); COMMIT"
                ))
                .await
                .expect("short txn");
            }
        }));
    }
    let naive = app_client(&db.url).await.expect("app");
    let mut last: i64 = 0;
    let mut seen: Vec<String> = Vec::new();
    let naive_read = |last: i64| {
        let naive = &naive;
        async move {
            naive
                .query(
                    "SELECT id, key FROM us_capture WHERE id > $1 AND key LIKE 'naive-%' ORDER BY id",
                    &[&last],
                )
                .await
                .expect("naive read")
        }
    };
    // Read continuously while the short writers run, then once more after.
    while !shorts.iter().all(|s| s.is_finished()) {
        for r in naive_read(last).await {
            last = last.max(r.get::<_, i64>(0));
            seen.push(r.get(1));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for s in shorts {
        s.await.expect("short writer");
    }
    for r in naive_read(last).await {
        last = last.max(r.get::<_, i64>(0));
        seen.push(r.get(1));
    }
    assert!(
        !seen.is_empty(),
        "the naive reader's cursor is past the slow row"
    );
    // The slow transaction commits last; its staged row has the smallest id.
    long.batch_execute("COMMIT").await.expect("commit long");
    for r in naive_read(last).await {
        last = last.max(r.get::<_, i64>(0));
        seen.push(r.get(1));
    }
    let staged: i64 = naive
        .query_one(
            "SELECT count(*) FROM us_capture WHERE key LIKE 'naive-%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        staged, 71,
        "all 71 naive-phase rows are staged and committed"
    );
    assert!(
        seen.len() <= 70,
        "the naive reader saw at most the short transactions"
    );
    assert!(
        !seen.iter().any(|k| k == "naive-long"),
        "the naive reader must have lost the slow transaction's row (the trap)"
    );
    println!(
        "naive reader: saw {} of 71 committed rows; lost naive-long",
        seen.len()
    );

    // ---- Phase 2: the real reader, running continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let sequenced = Arc::new(AtomicU64::new(0));
    let reader = {
        let (store, stop, sequenced) = (
            Arc::clone(&store),
            Arc::clone(&stop),
            Arc::clone(&sequenced),
        );
        tokio::spawn(async move {
            // (move number, change) in log order.
            let mut got: Vec<(usize, Change)> = Vec::new();
            let mut after = 2u64;
            let mut moves = 0usize;
            loop {
                let done = stop.load(Ordering::SeqCst);
                let n = store.sequence().await.expect("sequence");
                if n > 0 {
                    moves += 1;
                    let r = store
                        .read_changes(after, usize::MAX, usize::MAX)
                        .await
                        .expect("read");
                    assert!(r.at_head, "an unlimited read reaches the head");
                    assert_eq!(r.changes.len() as u64, n, "one move, read whole");
                    for c in r.changes {
                        assert_eq!(c.pos.seq, after + 1, "contiguous seqs");
                        after = c.pos.seq;
                        got.push((moves, c));
                    }
                    sequenced.store(after, Ordering::SeqCst);
                } else if done {
                    return got;
                } else {
                    store
                        .wait_for_commit(Duration::from_millis(50))
                        .await
                        .expect("wait");
                }
            }
        })
    };

    // Let the reader move the naive phase's 71 rows first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sequenced.load(Ordering::SeqCst) < 2 + 71 {
        assert!(Instant::now() < deadline, "reader made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed: Arc<Mutex<Vec<Committed>>> = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    // Writer 0: begins first, writes early, commits last of its peers' first
    // rounds (only once the reader has sequenced later transactions).
    {
        let (url, committed, sequenced) = (
            db.url.clone(),
            Arc::clone(&committed),
            Arc::clone(&sequenced),
        );
        writers.push(tokio::spawn(async move {
            let c = app_client(&url).await.expect("app");
            let before = sequenced.load(Ordering::SeqCst);
            c.batch_execute(
                "BEGIN; INSERT INTO jobs(id, project, name, description) VALUES ('long-0', 'p', 'n', 'long-0')",
            )
            .await
            .expect("long begin");
            let deadline = Instant::now() + Duration::from_secs(60);
            while sequenced.load(Ordering::SeqCst) < before + 40 {
                assert!(Instant::now() < deadline, "reader made no progress");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.batch_execute("UPDATE jobs SET description = 'long-0' WHERE id = 'hot'")
                .await
                .expect("long hot update");
            let commit_sent = Instant::now();
            c.batch_execute("COMMIT").await.expect("long commit");
            let commit_done = Instant::now();
            committed.lock().expect("lock").push(Committed {
                marker: "long-0".into(),
                commit_sent,
                commit_done,
            });
        }));
    }
    // Give writer 0 its head start (its staged id is the smallest).
    tokio::time::sleep(Duration::from_millis(50)).await;
    for w in 1..8 {
        let (url, committed) = (db.url.clone(), Arc::clone(&committed));
        let jitter: Vec<u64> = (0..30).map(|_| rng.below(4)).collect();
        writers.push(tokio::spawn(async move {
            let c = app_client(&url).await.expect("app");
            for (t, j) in jitter.iter().enumerate() {
                let marker = format!("w{w}-t{t}");
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO jobs(id, project, name, description) VALUES ('{marker}', 'p', 'n', '{marker}')"
                ))
                .await
                .expect("insert");
                tokio::time::sleep(Duration::from_millis(*j)).await;
                c.batch_execute(&format!(
                    "UPDATE jobs SET description = '{marker}' WHERE id = 'hot'"
                ))
                .await
                .expect("hot update");
                let commit_sent = Instant::now();
                c.batch_execute("COMMIT").await.expect("commit");
                let commit_done = Instant::now();
                committed.lock().expect("lock").push(Committed {
                    marker,
                    commit_sent,
                    commit_done,
                });
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, Ordering::SeqCst);
    let got = reader.await.expect("reader");
    let committed = committed.lock().expect("lock").clone();
    assert_eq!(committed.len(), 1 + 7 * 30);

    // Exactly once: the 71 naive-phase inserts, and per committed phase-2
    // transaction its insert and its hot update.
    let mut inserts: HashMap<String, Vec<usize>> = HashMap::new();
    let mut hot: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, (_, c)) in got.iter().enumerate() {
        let d = description(c).unwrap_or("").to_string();
        if c.key() == "hot" {
            hot.entry(d).or_default().push(i);
        } else {
            assert_eq!(c.key(), d, "insert of its own marker");
            inserts.entry(d).or_default().push(i);
        }
    }
    assert_eq!(inserts.len(), 71 + committed.len());
    assert!(
        inserts.values().all(|v| v.len() == 1),
        "every insert exactly once"
    );
    assert!(
        inserts.contains_key("naive-long"),
        "the slow naive-phase row is not lost"
    );
    assert_eq!(hot.len(), committed.len());
    assert!(
        hot.values().all(|v| v.len() == 1),
        "every hot update exactly once"
    );

    let mv = |i: usize| got[i].0;
    let seq = |i: usize| got[i].1.pos.seq;
    // Whole transactions: a transaction's changes are in one move.
    for t in &committed {
        let (a, b) = (inserts[&t.marker][0], hot[&t.marker][0]);
        assert_eq!(mv(a), mv(b), "{} split across moves", t.marker);
    }
    // Commit order: a transaction committed before another began committing
    // is in an earlier (or the same) move, and conflicting updates of the hot
    // row are in commit order.
    let mut pairs = 0u64;
    for a in &committed {
        for b in &committed {
            if a.commit_done < b.commit_sent {
                pairs += 1;
                let (ia, ib) = (hot[&a.marker][0], hot[&b.marker][0]);
                assert!(
                    mv(ia) <= mv(ib),
                    "{} committed before {} but shipped in a later move",
                    a.marker,
                    b.marker
                );
                assert!(
                    seq(ia) < seq(ib),
                    "{} committed before {} but its hot update is later",
                    a.marker,
                    b.marker
                );
            }
        }
    }
    // The long transaction: staged first, committed after transactions the
    // reader had already moved, hence later in the log than they are.
    let long_ins = inserts["long-0"][0];
    // (The writer waited for 40 sequenced changes: 20 short transactions of
    // an insert and a hot update each.)
    let earlier_moved = got
        .iter()
        .filter(|(m, c)| *m < mv(long_ins) && c.key().starts_with('w'))
        .count();
    assert!(
        earlier_moved >= 20,
        "short transactions moved before the long one: {earlier_moved}"
    );
    assert!(
        got.iter()
            .filter(|(m, _)| *m < mv(long_ins))
            .all(|(_, c)| c.pos.seq < seq(long_ins)),
        "the long transaction's changes follow everything moved before it"
    );
    let moves = got.last().map(|(m, _)| *m).unwrap_or(0);
    println!(
        "ordering trap: {} changes in {moves} moves, {pairs} ordered pairs checked",
        got.len()
    );

    // Replay on another member reproduces the source exactly.
    let (_pdb, passive) = fresh("ordering_replay", "b").await;
    let all = store
        .read_changes(0, usize::MAX, usize::MAX)
        .await
        .expect("read all");
    passive.apply(&all.changes, true).await.expect("replay");
    assert_eq!(
        passive.checksums().await.expect("checksums"),
        store.checksums().await.expect("checksums")
    );
}

// ------------------------------------------------------------ fence

/// The fence with a real `psql` as the application, on a private server that
/// the test restarts: refused writes name the active member, apply still
/// works, and the fence survives a reopen of the store and a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_with_psql_survives_reopen_and_server_restart() {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("join")
        .expect("private server");
    let adb = server.create_database("fence_active").expect("db");
    let pdb = server.create_database("fence_passive").expect("db");
    let a = PgStore::connect(&adb.url).await.expect("connect");
    a.init(&params("a")).await.expect("init a");
    let p = PgStore::connect(&pdb.url).await.expect("connect");
    p.init(&params("b")).await.expect("init b");

    adb.psql_run("INSERT INTO projects(name) VALUES ('p1'); INSERT INTO jobs(id, project, name) VALUES ('j1', 'p1', 'n')")
        .expect("a fresh initial active accepts writes");
    let want = "understudy: write refused: member b is passive; the active member is a";
    let refused = |sql: &str| pdb.psql_run(sql).expect_err("refused").to_string();
    for sql in [
        "INSERT INTO projects(name) VALUES ('x')",
        "UPDATE projects SET description = 'x'",
        "DELETE FROM jobs",
        "TRUNCATE keys",
    ] {
        let e = refused(sql);
        if sql.starts_with("TRUNCATE") {
            assert!(e.contains("TRUNCATE of keys cannot be replicated"), "{e}");
        } else {
            assert!(e.contains(want), "{sql}: {e}");
        }
    }
    // Apply goes through the fence.
    a.sequence().await.expect("sequence");
    let changes = a.read_changes(0, 100, 1 << 20).await.expect("read").changes;
    assert_eq!(
        p.apply(&changes, true).await.expect("apply"),
        Position::new(1, 2)
    );
    assert_eq!(
        pdb.psql_run("SELECT count(*) FROM jobs").expect("read"),
        "1"
    );

    // The lease of the active runs out: its writes stop too.
    a.renew_lease(Duration::from_millis(1))
        .await
        .expect("renew");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = adb
        .psql_run("INSERT INTO projects(name) VALUES ('late')")
        .expect_err("lease");
    assert!(
        e.to_string()
            .contains("the lease of this active member ran out"),
        "{e}"
    );

    // Reopen the stores.
    drop(p);
    let p = PgStore::connect(&pdb.url).await.expect("reopen");
    assert!(refused("INSERT INTO projects(name) VALUES ('x')").contains(want));

    // Restart the server: the fence is data, not session state.
    let srv = &server;
    tokio::task::block_in_place(|| srv.restart(StopMode::Fast)).expect("restart");
    assert!(refused("INSERT INTO projects(name) VALUES ('x')").contains(want));
    let e = adb
        .psql_run("INSERT INTO projects(name) VALUES ('late')")
        .expect_err("lease");
    assert!(e.to_string().contains("ran out"), "{e}");
    // The stores reconnect by themselves, and apply still works.
    assert_eq!(
        p.state().await.expect("state after restart").position,
        Position::new(1, 2)
    );
    a.renew_lease(Duration::from_secs(60))
        .await
        .expect("renew after restart");
    adb.psql_run("INSERT INTO projects(name) VALUES ('p2')")
        .expect("renewed lease");
    a.sequence().await.expect("sequence");
    let more = a.read_changes(2, 100, 1 << 20).await.expect("read").changes;
    assert_eq!(
        p.apply(&more, true).await.expect("apply after restart"),
        Position::new(1, 3)
    );
    assert_eq!(
        p.checksums().await.expect("sums"),
        a.checksums().await.expect("sums")
    );

    // A crash-like stop too.
    tokio::task::block_in_place(|| srv.restart(StopMode::Immediate)).expect("restart");
    assert!(refused("DELETE FROM projects").contains(want));
    drop((a, p));
}

// ------------------------------------------------------------ wake-ups

fn thread_cpu_ticks() -> u64 {
    // utime + stime of this thread, in clock ticks (fields 14 and 15).
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// A waiting reader sees a committed change within 10 ms (median) through
/// LISTEN/NOTIFY, not through its safety-net timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_reader_sees_commit_quickly() {
    let (db, store) = fresh("latency", "a").await;
    let store = Arc::new(store);
    let app = app_client(&db.url).await.expect("app");
    store.sequence().await.expect("sequence");
    while store
        .wait_for_commit(Duration::from_millis(10))
        .await
        .expect("drain")
    {}
    const N: u64 = 40;
    let sent: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0u64;
            let mut woken_by_timeout = 0;
            while (seen.len() as u64) < N {
                if !store
                    .wait_for_commit(Duration::from_secs(2))
                    .await
                    .expect("wait")
                {
                    woken_by_timeout += 1;
                }
                store.sequence().await.expect("sequence");
                let r = store
                    .read_changes(after, 1000, 1 << 20)
                    .await
                    .expect("read");
                let now = Instant::now();
                for c in r.changes {
                    after = c.pos.seq;
                    seen.push(now);
                }
            }
            (seen, woken_by_timeout)
        })
    };
    for i in 0..N {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t = Instant::now();
        app.batch_execute(&format!("INSERT INTO projects(name) VALUES ('lat{i}')"))
            .await
            .expect("insert");
        sent.lock().expect("lock").push((t, Instant::now()));
    }
    let (seen, timeouts) = waiter.await.expect("waiter");
    let sent = sent.lock().expect("lock").clone();
    let pct = |mut v: Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10], v[v.len() - 1])
    };
    // From the commit's acknowledgement to the reader holding the change
    // (the requirement), and from the INSERT being sent (an upper bound).
    let from_commit = pct(sent
        .iter()
        .zip(&seen)
        .map(|((_, c), r)| r.saturating_duration_since(*c))
        .collect());
    let from_send = pct(sent
        .iter()
        .zip(&seen)
        .map(|((s, _), r)| r.saturating_duration_since(*s))
        .collect());
    println!(
        "commit -> change read by the waiter: median {:?}, p90 {:?}, max {:?}; \
         insert sent -> read: median {:?}, p90 {:?}, max {:?}; safety-net wake-ups {timeouts}",
        from_commit.0, from_commit.1, from_commit.2, from_send.0, from_send.1, from_send.2
    );
    assert!(
        from_commit.0 < Duration::from_millis(10),
        "median {:?}",
        from_commit.0
    );
    assert_eq!(timeouts, 0, "every wake-up came from NOTIFY");
}

/// An idle waiter costs next to no CPU: no busy polling.
#[tokio::test]
async fn idle_waiter_uses_no_cpu() {
    let (_db, store) = fresh("idle", "a").await;
    while store
        .wait_for_commit(Duration::from_millis(20))
        .await
        .expect("drain")
    {}
    let t0 = thread_cpu_ticks();
    let w = Instant::now();
    let woke = store
        .wait_for_commit(Duration::from_secs(2))
        .await
        .expect("wait");
    let cpu = thread_cpu_ticks() - t0;
    assert!(!woke, "nothing committed");
    assert!(w.elapsed() >= Duration::from_millis(1900));
    println!(
        "idle wait_for_commit: {cpu} clock ticks of CPU in {:?}",
        w.elapsed()
    );
    // 5 ticks (usually 50 ms) in 2 s would be 2.5 % of a core; idle is ~0.
    assert!(cpu <= 5, "an idle waiter burned {cpu} ticks");
}

// ------------------------------------------------------------ bad input

#[tokio::test]
async fn unreachable_server_is_a_clear_error_without_password() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("postgres://agent:hunter2@127.0.0.1:{port}/members");
    let t = Instant::now();
    let err = match PgStore::connect(&url).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    let text = err.to_string();
    println!("{text}");
    match &err {
        StoreError::Unreachable { url, reason } => {
            assert_eq!(
                url,
                &format!("postgres://agent:***@127.0.0.1:{port}/members")
            );
            assert!(!reason.is_empty());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refused connections fail fast"
    );
}

async fn tables(db: &TestDb) -> Vec<String> {
    let c = app_client(&db.url).await.expect("app");
    c.query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        &[],
    )
    .await
    .expect("tables")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn jobs_of_another_shape_is_refused_and_nothing_changes() {
    let db = pg::test_database("mismatch").await.expect("db");
    db.psql_run("CREATE TABLE jobs (id integer PRIMARY KEY, title text); INSERT INTO jobs VALUES (1, 'theirs')")
        .expect("foreign jobs table");
    let before = tables(&db).await;
    let store = PgStore::connect(&db.url).await.expect("connect");
    let err = store.init(&params("a")).await.expect_err("mismatch");
    match &err {
        StoreError::SchemaMismatch { table, detail, .. } => {
            assert_eq!(table, "jobs");
            assert!(
                detail.contains("column id is integer, not text"),
                "{detail}"
            );
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    println!("{err}");
    assert!(err.to_string().contains("table jobs"), "{err}");
    assert_eq!(
        tables(&db).await,
        before,
        "init created or dropped something"
    );
    assert_eq!(
        db.psql_run("SELECT title FROM jobs").expect("read"),
        "theirs"
    );
    assert!(matches!(
        store.check_schema().await,
        Err(StoreError::SchemaMismatch { .. })
    ));
}

/// A database left at schema version 1 by an older release is upgraded in
/// place: its rows stay, capture starts working.
#[tokio::test]
async fn init_upgrades_an_older_schema() {
    let db = pg::test_database("upgrade").await.expect("db");
    let v1 = MIGRATIONS[0];
    assert_eq!(v1.version, 1);
    db.psql_run(&format!(
        "{} ; CREATE TABLE us_schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL DEFAULT 0); \
         INSERT INTO us_schema_version (version, name) VALUES (1, '{}'); \
         INSERT INTO projects(name, updated_at) VALUES ('old', 5)",
        v1.sql, v1.name
    ))
    .expect("version-1 database");
    let store = PgStore::connect(&db.url).await.expect("connect");
    assert!(matches!(
        store.check_schema().await,
        Err(StoreError::NotInitialised { .. })
    ));
    let r = store.init(&params("a")).await.expect("upgrade");
    assert_eq!((r.from_version, r.to_version), (1, SCHEMA_VERSION));
    store.check_schema().await.expect("current");
    assert_eq!(
        db.psql_run("SELECT updated_at FROM projects WHERE name = 'old'")
            .expect("row"),
        "5"
    );
    db.psql_run("INSERT INTO projects(name) VALUES ('new')")
        .expect("write");
    assert_eq!(store.sequence().await.expect("sequence"), 1);
}

#[tokio::test]
async fn init_refuses_a_database_of_another_member() {
    let (_db, store) = fresh("other_member", "a").await;
    let err = store.init(&params("b")).await.expect_err("other member");
    assert!(
        matches!(&err, StoreError::SchemaMismatch { table, .. } if table == "us_state"),
        "{err:?}"
    );
    assert_eq!(
        store.state().await.expect("state").member,
        MemberId::new("a")
    );
}

// ------------------------------------------------------------ mixed backends

/// The same application writes on SQLite and on PostgreSQL, then each log
/// replayed on the other backend: all four databases have equal checksums
/// (row images and their encoding agree byte for byte across backends).
#[tokio::test]
async fn sqlite_and_postgres_replay_each_other_with_equal_checksums() {
    use understudy::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret: Vec<u8> = (0..=255u8).collect();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let writes = |blob: &str| {
        vec![
            "INSERT INTO projects(name, description, config, updated_at) VALUES ('p1', 'd', '{\"b\": [1, 2.50, \"x\"]}', 10)".to_string(),
            "INSERT INTO projects(name) VALUES ('p2')".to_string(),
            "INSERT INTO jobs(id, project, name, group_path, definition, schedule, schedule_enabled, execution_enabled, owner_member, updated_at) VALUES ('j1', 'p1', 'n', 'g/h', '{ \"steps\" : [] }', '0 * * * * ?', FALSE, TRUE, 'a', 11)".to_string(),
            "INSERT INTO jobs(id, project, name, description) VALUES ('j2', 'p2', 'ü ☃', '')".to_string(),
            format!("INSERT INTO keys(path, kind, content, meta, updated_at) VALUES ('k1', 'private', {blob}, NULL, 12)"),
            "UPDATE jobs SET owner_member = 'b' WHERE id = 'j1'".to_string(),
            "DELETE FROM projects WHERE name = 'p2'".to_string(),
        ]
    };

    // SQLite active.
    let sa_path = dir.path().join("a.db");
    let sa = SqliteStore::create(&sa_path).await.expect("sqlite");
    sa.init(&params("a")).await.expect("init");
    {
        let c = rusqlite::Connection::open(&sa_path).expect("app conn");
        for w in writes(&format!("X'{hex}'")) {
            c.execute_batch(&w).expect("sqlite app write");
        }
    }
    // PostgreSQL active.
    let (pa_db, pa) = fresh("mixed_active", "a").await;
    for w in writes(&format!("'\\x{hex}'::bytea")) {
        pa_db.psql_run(&w).expect("pg app write");
    }
    sa.sequence().await.expect("sequence");
    pa.sequence().await.expect("sequence");
    let from_sqlite = sa
        .read_changes(0, 1000, 1 << 20)
        .await
        .expect("read")
        .changes;
    let from_pg = pa
        .read_changes(0, 1000, 1 << 20)
        .await
        .expect("read")
        .changes;
    // updated_at defaults differ (two clocks); the rest of the logs agree.
    assert_eq!(from_sqlite.len(), from_pg.len());

    // Cross replays.
    let (_pb_db, pb) = fresh("mixed_passive", "b").await;
    pb.apply(&from_sqlite, true).await.expect("sqlite -> pg");
    let sb = SqliteStore::create(&dir.path().join("b.db"))
        .await
        .expect("sqlite");
    sb.init(&params("b")).await.expect("init");
    sb.apply(&from_pg, true).await.expect("pg -> sqlite");

    let sums_sa = sa.checksums().await.expect("sums");
    assert_eq!(pb.checksums().await.expect("sums"), sums_sa, "sqlite -> pg");
    assert_eq!(
        sb.checksums().await.expect("sums"),
        pa.checksums().await.expect("sums"),
        "pg -> sqlite"
    );
    // Rows written with explicit updated_at agree across backends outright.
    let explicit = |sums: &[understudy::store::TableChecksum]| sums[2].clone();
    assert_eq!(
        explicit(&sums_sa),
        explicit(&pa.checksums().await.expect("sums")),
        "keys agree"
    );
    assert_eq!(
        pb.state().await.expect("state").position,
        Position::new(1, from_sqlite.len() as u64)
    );
}

/// A fence waits for the application transactions that passed the fence
/// check before it, so what they commit is in the head the fence reports (a
/// switchover hands over exactly that head); one left open longer does not
/// hold the fence past its bound, and is logged after the head.
#[tokio::test]
async fn a_fence_waits_for_writes_that_passed_it() {
    use understudy::model::{Epoch, Role};
    let (db, s) = fresh("fence_drain", "a").await;
    let s = Arc::new(s);
    let app = app_client(&db.url).await.expect("app connection");
    app.batch_execute(
        "BEGIN; INSERT INTO projects(name, description, config) VALUES ('in-flight', 'd', '{}')",
    )
    .await
    .expect("write before the fence");
    let fence = {
        let s = s.clone();
        tokio::spawn(async move {
            s.set_role(Role::Fenced, Epoch(1), Some(&MemberId::new("a")))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !fence.is_finished(),
        "the fence returned while a write that passed it was still open"
    );
    let late = app_client(&db.url).await.expect("second app connection");
    app.batch_execute("COMMIT")
        .await
        .expect("the in-flight write commits");
    tokio::time::timeout(Duration::from_secs(2), fence)
        .await
        .expect("the fence returns once the write ended")
        .expect("task")
        .expect("fence");
    let err = late
        .batch_execute(
            "INSERT INTO projects(name, description, config) VALUES ('after', 'd', '{}')",
        )
        .await
        .expect_err("a write after the fence is refused");
    assert!(app_error(&err).contains("fenced"), "{}", app_error(&err));
    let head = s.state().await.expect("state").position;
    assert_eq!(head, Position::new(1, 1), "the in-flight write is the head");

    // Unfence, open a write, fence again and never end the write: the
    // fence gives up waiting after its bound.
    s.set_role(Role::Active, Epoch(1), Some(&MemberId::new("a")))
        .await
        .expect("unfence");
    s.renew_lease(Duration::from_secs(60)).await.expect("lease");
    app.batch_execute(
        "BEGIN; INSERT INTO projects(name, description, config) VALUES ('stuck', 'd', '{}')",
    )
    .await
    .expect("second write before the fence");
    let started = std::time::Instant::now();
    s.set_role(Role::Fenced, Epoch(1), Some(&MemberId::new("a")))
        .await
        .expect("fence with a stuck writer");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "the fence waited {took:?} for a writer that never ends (bound 2 s)"
    );
    app.batch_execute("ROLLBACK").await.expect("rollback");
}

/// A write that passed the fence before a role change and committed after
/// it is quarantined by the sequencer with seq 0 (it never had a place in
/// the log); it lists with its image (key content intact), counts and
/// resolves like a quarantined tail.
#[tokio::test]
async fn late_staged_rows_list_as_divergent() {
    use understudy::model::{Epoch, Role};
    let (db, s) = fresh("late_div", "a").await;
    let app = app_client(&db.url).await.expect("app connection");
    app.batch_execute(
        "BEGIN; INSERT INTO keys(path, kind, content) VALUES ('k/late', 'password', '\\x0102ff'::bytea)",
    )
    .await
    .expect("write before the fence");
    s.set_role(Role::Passive, Epoch(2), Some(&MemberId::new("b")))
        .await
        .expect("follow b");
    app.batch_execute("COMMIT")
        .await
        .expect("commit after the fence");
    s.sequence().await.expect("sequence");
    assert_eq!(
        s.state().await.expect("state").position,
        Position::ZERO,
        "a late row takes no seq"
    );
    let q = s.divergence_list(false).await.expect("list");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].change.pos, Position::new(1, 0));
    match &q[0].change.op {
        ChangeOp::Upsert(RowImage::Key(k)) => {
            assert_eq!(k.path, "k/late");
            assert_eq!(k.content.expose(), &[1u8, 2, 255][..]);
        }
        other => panic!("expected the key upsert, got {other:?}"),
    }
    assert!(q[0].reason.contains("passive"), "{}", q[0].reason);
    assert_eq!(s.divergent_count().await.expect("count"), 1);
    assert_eq!(s.resolve_divergence(None).await.expect("resolve"), 1);
    assert_eq!(s.divergent_count().await.expect("count"), 0);
    assert_eq!(s.divergence_list(true).await.expect("list").len(), 1);
}

/// The store conformance suite's snapshot cases on PostgreSQL: throw-away
/// databases on the test server, the application speaking plain SQL over its
/// own connection.
mod conformance {
    use integration_tests::pg::{self, TestDb};
    use std::sync::Mutex;
    use understudy::store::conformance::Backend;
    use understudy::store::postgres::PgStore;

    pub struct PgBackend {
        keep: Mutex<Vec<TestDb>>,
    }

    impl PgBackend {
        pub fn new() -> PgBackend {
            PgBackend {
                keep: Mutex::new(Vec::new()),
            }
        }
    }

    async fn app(url: &str) -> Result<tokio_postgres::Client, String> {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(c)
    }

    fn message(e: tokio_postgres::Error) -> String {
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string())
    }

    impl Backend for PgBackend {
        type Store = PgStore;
        type Db = String;

        async fn fresh(&self) -> (String, PgStore) {
            let db = pg::test_database("conf").await.expect("test database");
            let url = db.url.clone();
            self.keep.lock().unwrap().push(db);
            let s = PgStore::connect(&url).await.expect("connect");
            (url, s)
        }

        async fn reopen(&self, db: &String, store: PgStore) -> PgStore {
            drop(store);
            PgStore::connect(db).await.expect("reconnect")
        }

        async fn app_exec(&self, db: &String, sql: &str) -> Result<(), String> {
            let c = app(db).await?;
            c.batch_execute(sql).await.map_err(message)
        }

        async fn app_query_i64(&self, db: &String, sql: &str) -> Result<Option<i64>, String> {
            let c = app(db).await?;
            let rows = c.query(sql, &[]).await.map_err(message)?;
            Ok(match rows.first() {
                Some(r) => r.try_get::<_, Option<i64>>(0).map_err(message)?,
                None => None,
            })
        }

        fn blob(&self, bytes: &[u8]) -> String {
            format!("'\\x{}'::bytea", hex_of(bytes))
        }
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    understudy::store_conformance_tests!(@cases PgBackend::new();
        snapshot_installs_whole_and_continues,
        snapshot_is_consistent_under_writes,
        snapshot_install_abort_keeps_old_data,
        checksums_detect_difference,
        trim_keeps_newest,
    );
}

/// An active member with `n` projects written by the application, and its
/// change log.
async fn active_with_projects(hint: &str, n: usize) -> (TestDb, PgStore, Vec<Change>) {
    let (db, s) = fresh(hint, "a").await;
    for i in 0..n {
        db.psql_run(&format!("INSERT INTO projects(name) VALUES ('p{i}')"))
            .expect("app write");
    }
    s.sequence().await.expect("sequence");
    let changes = s
        .read_changes(0, 1000, 1 << 20)
        .await
        .expect("read")
        .changes;
    assert_eq!(changes.len(), n);
    (db, s, changes)
}

/// An apply commits its rows and its position in one transaction: both row
/// versions carry the same `xmin`. (The position's UPDATE once went out
/// behind the COMMIT, as a transaction of its own: an agent killed between
/// the two restarted with a log row past its position and failed every
/// re-apply of it on a duplicate key.)
#[tokio::test]
async fn an_apply_commits_rows_and_position_in_one_transaction() {
    let (_a_db, _a, changes) = active_with_projects("one_tx_active", 5).await;
    let (b_db, b) = fresh("one_tx_passive", "b").await;
    for (i, batch) in changes.chunks(2).enumerate() {
        let pos = b.apply(batch, true).await.expect("apply");
        let c = app_client(&b_db.url).await.expect("client");
        let xmin = |sql: &'static str| {
            let c = &c;
            async move {
                let row = c.query_one(sql, &[]).await.expect(sql);
                row.get::<_, String>(0)
            }
        };
        let state = xmin("SELECT xmin::text FROM us_state WHERE id = 1").await;
        let log = xmin("SELECT xmin::text FROM us_changelog ORDER BY seq DESC LIMIT 1").await;
        assert_eq!(
            state, log,
            "batch {i} (up to {pos}): position and rows in one transaction"
        );
    }
    assert_eq!(b.state().await.expect("state").position, changes[4].pos);
}

/// A passive whose log holds a row past its recorded position (what the
/// UPDATE committed apart from its rows left behind) takes the log's head
/// as its position, as SQLite does: the stream resumes after it and the
/// re-sent change is a no-op instead of a duplicate key forever.
#[tokio::test]
async fn a_log_row_past_the_recorded_position_counts_as_applied() {
    let (_a_db, a, changes) = active_with_projects("past_pos_active", 4).await;
    let (b_db, b) = fresh("past_pos_passive", "b").await;
    b.apply(&changes[..3], true).await.expect("apply");
    b_db.psql_run("UPDATE us_state SET pos_seq = pos_seq - 1 WHERE id = 1")
        .expect("rewind the recorded position");
    assert_eq!(b.state().await.expect("state").position, changes[2].pos);
    // The active re-sends from where the passive says it is.
    assert_eq!(
        b.apply(&changes[2..], true).await.expect("re-apply"),
        changes[3].pos
    );
    assert_eq!(b.state().await.expect("state").position, changes[3].pos);
    assert_eq!(
        b.checksums().await.expect("sums"),
        a.checksums().await.expect("sums")
    );
}

/// Sequencing with nothing staged takes no lock, so no transaction id and
/// no WAL flush: state reads (status polls, head wake-ups) cost the server
/// no fsync. A locked row's `xmax` names the locker, so it must not move.
#[tokio::test]
async fn sequencing_nothing_takes_no_lock() {
    let (db, s) = fresh("sequence_idle", "a").await;
    let xmax = || {
        db.psql_run("SELECT xmax FROM us_state WHERE id = 1")
            .expect("xmax")
    };
    let before = xmax();
    for _ in 0..3 {
        assert_eq!(s.sequence().await.expect("sequence"), 0);
        s.state().await.expect("state");
    }
    assert_eq!(xmax(), before, "an idle sequencer locked the state row");
    db.psql_run("INSERT INTO projects(name) VALUES ('p')")
        .expect("app write");
    assert_eq!(
        s.state().await.expect("state").position,
        Position::new(1, 1)
    );
}

/// The set-based apply (one statement per table and kind, the last change
/// of each row, project deletes kept in place) leaves the tables as the
/// changes one by one would: random writes over a few rows on an SQLite
/// active (foreign keys on, so project deletes cascade), its whole log
/// applied to PostgreSQL as one batch and again in random slices, compared
/// by checksum with the active.
#[tokio::test]
async fn a_batch_applies_as_its_changes_would_one_by_one() {
    use understudy::store::sqlite::SqliteStore;
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_205);
    println!("seed {seed} (rerun with TEST_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.db");
    let active = SqliteStore::create(&path).await.expect("sqlite");
    active.init(&params("a")).await.expect("init");
    let app = rusqlite::Connection::open(&path).expect("app conn");
    app.execute_batch("PRAGMA foreign_keys = ON")
        .expect("fk on");
    let mut accepted = 0;
    for i in 0..600 {
        let p = format!("p{}", rng.below(3));
        let j = format!("j{}", rng.below(8));
        let k = format!("k{}", rng.below(4));
        let sql = match rng.below(10) {
            0 => format!("DELETE FROM projects WHERE name = '{p}'"),
            1 => format!(
                "UPDATE projects SET name = 'p{}' WHERE name = '{p}'",
                rng.below(3)
            ),
            2 => format!(
                "INSERT INTO projects(name, description) VALUES ('{p}', 'd{i}') \
                 ON CONFLICT(name) DO UPDATE SET description = excluded.description"
            ),
            3 => format!("DELETE FROM jobs WHERE id = '{j}'"),
            4 => format!("DELETE FROM keys WHERE path = '{k}'"),
            5 | 6 => format!(
                "INSERT INTO keys(path, kind, content, meta) VALUES ('{k}', 'password', X'{i:04x}', 'm{i}') \
                 ON CONFLICT(path) DO UPDATE SET content = excluded.content, meta = excluded.meta"
            ),
            _ => format!(
                "INSERT INTO jobs(id, project, name, definition) VALUES ('{j}', '{p}', 'n{i}', 'def {i}') \
                 ON CONFLICT(id) DO UPDATE SET project = excluded.project, name = excluded.name, \
                 definition = excluded.definition"
            ),
        };
        // Writes the foreign key refuses (a job in a missing project, a
        // rename of a project with jobs) are the application's errors.
        if app.execute_batch(&sql).is_ok() {
            accepted += 1;
        }
    }
    assert!(accepted > 300, "only {accepted} writes were accepted");
    active.sequence().await.expect("sequence");
    let log = active
        .read_changes(0, 100_000, 1 << 30)
        .await
        .expect("read")
        .changes;
    let deletes = log
        .iter()
        .filter(|c| matches!(c.op, ChangeOp::Delete { .. }))
        .count();
    assert!(deletes > 50, "the log has only {deletes} deletes");
    let want = active.checksums().await.expect("sums");

    let (_whole_db, whole) = fresh("batch_whole", "b").await;
    whole.apply(&log, true).await.expect("one batch");
    assert_eq!(
        whole.checksums().await.expect("sums"),
        want,
        "one batch, seed {seed}"
    );

    let (_sliced_db, sliced) = fresh("batch_sliced", "c").await;
    let mut at = 0;
    while at < log.len() {
        let n = (1 + rng.below(40) as usize).min(log.len() - at);
        let commit = rng.below(3) > 0 || at + n == log.len();
        sliced
            .apply(&log[at..at + n], commit)
            .await
            .unwrap_or_else(|e| panic!("slice at {at}, seed {seed}: {e}"));
        at += n;
    }
    assert_eq!(
        sliced.checksums().await.expect("sums"),
        want,
        "slices, seed {seed}"
    );
    assert_eq!(
        sliced.state().await.expect("state").position,
        log.last().expect("a log").pos
    );
}
