//! The PostgreSQL member database against a real server: the shared
//! conformance suite, plus what only PostgreSQL has to prove (the commit-order
//! trap with concurrent writers, the fence through a real `psql` and a server
//! restart, LISTEN/NOTIFY latency and idle cost, bad input, the catalog's
//! refusals, application tables of every portable type, id sequences after
//! a promotion, the upgrade of an older log).

use integration_tests::pg::{self, PgServer, StopMode, TestDb};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use understudy::model::{Change, ChangeOp, Epoch, MemberId, Position, Role, key_text};
use understudy::store::conformance::{Backend, get, text};
use understudy::store::postgres::{EXAMPLE_SQL, MIGRATIONS, PgStore, SCHEMA_VERSION};
use understudy::store::{InitParams, MemberStore, StoreError};
use understudy::tables::{CaptureSpec, Value};

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
        let store = connect(&db.url).await.expect("connect");
        (Arc::new(db), store)
    }

    async fn reopen(&self, db: &Self::Db, store: Self::Store) -> Self::Store {
        drop(store);
        connect(&db.url).await.expect("reconnect")
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

/// A store on `url` capturing the example schema.
async fn connect(url: &str) -> Result<PgStore, StoreError> {
    PgStore::connect(url, &CaptureSpec::example()).await
}

fn params(member: &str) -> InitParams {
    InitParams {
        cluster: "test".into(),
        member: MemberId::new(member),
        initial_active: MemberId::new("a"),
    }
}

async fn fresh(hint: &str, member: &str) -> (TestDb, PgStore) {
    let db = pg::test_database(hint).await.expect("test database");
    let store = connect(&db.url).await.expect("connect");
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

/// The description a job upsert writes.
fn description<'a>(cat: &understudy::tables::Catalog, c: &'a Change) -> Option<&'a str> {
    match &c.op {
        ChangeOp::Upsert(r) if r.table.as_str() == "jobs" => get(cat, r, "description").as_text(),
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
                    "SELECT id, t[1] FROM us_capture WHERE id > $1 AND t[1] LIKE 'naive-%' ORDER BY id",
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
            "SELECT count(*) FROM us_capture WHERE t[1] LIKE 'naive-%'",
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
    let cat = store.catalog();
    for (i, (_, c)) in got.iter().enumerate() {
        let d = description(&cat, c).unwrap_or("").to_string();
        if key_text(c.key()) == "hot" {
            hot.entry(d).or_default().push(i);
        } else {
            assert_eq!(key_text(c.key()), d, "insert of its own marker");
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
        .filter(|(m, c)| *m < mv(long_ins) && key_text(c.key()).starts_with('w'))
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
    let a = connect(&adb.url).await.expect("connect");
    a.init(&params("a")).await.expect("init a");
    let p = connect(&pdb.url).await.expect("connect");
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
    let p = connect(&pdb.url).await.expect("reopen");
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
    let err = match connect(&url).await {
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
    let store = connect(&db.url).await.expect("connect");
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

/// A database an older release left at schema version 4, with changes of
/// the example tables in the old row format in its change log, staging
/// table and quarantine, is upgraded in place: every old row reads back as
/// the change it was (image layout of the table), the staged one is
/// sequenced after the log, the old fixed capture function is replaced by
/// the generated one, and capture goes on.
#[tokio::test]
async fn init_upgrades_a_schema_4_log_to_the_generic_format() {
    let db = pg::test_database("upgrade").await.expect("db");
    let mut sql = String::from(
        "CREATE TABLE us_schema_version (version integer PRIMARY KEY, name text NOT NULL, \
         applied_at bigint NOT NULL DEFAULT 0);",
    );
    for m in MIGRATIONS.iter().filter(|m| m.version <= 4) {
        sql.push_str(m.sql);
        sql.push_str(&format!(
            ";\nINSERT INTO us_schema_version (version, name) VALUES ({}, '{}');\n",
            m.version, m.name
        ));
    }
    sql.push_str(EXAMPLE_SQL);
    // What releases up to schema 4 left: their fixed capture function on
    // projects, state, rows, and old-format log, staging and quarantine rows.
    sql.push_str(OLD_SCHEMA_4_ROWS);
    db.psql_run(&sql).expect("a version-4 database");
    let store = connect(&db.url).await.expect("connect");
    assert!(matches!(
        store.check_schema().await,
        Err(StoreError::NotInitialised { .. })
    ));
    let r = store.init(&params("a")).await.expect("upgrade");
    assert_eq!((r.from_version, r.to_version), (4, SCHEMA_VERSION));
    store.check_schema().await.expect("current");

    let cat = store.catalog();
    use understudy::store::conformance::{del, flag, job, key, project, set};
    let mut j1 = job(&cat, "j1", "p1", "backup", 11);
    set(&cat, &mut j1, "group_path", text("ops"));
    set(&cat, &mut j1, "definition", text("def"));
    set(&cat, &mut j1, "schedule", text("0 0 * * *"));
    set(&cat, &mut j1, "owner_member", text("a"));
    set(
        &cat,
        &mut j1,
        "schedule_enabled",
        flag(&cat, "jobs", "schedule_enabled", false),
    );
    let want = vec![
        ChangeOp::Upsert(project(&cat, "p1", Some("desc"), Some("{\"a\":1}"), 10)),
        ChangeOp::Upsert(j1),
        ChangeOp::Upsert(key(&cat, "k1", "password", &[0, 255], None, 12)),
        del("jobs", "j1"),
        ChangeOp::Upsert(project(&cat, "p2", None, None, 13)),
    ];
    // The staged change takes the next seq.
    assert_eq!(store.sequence().await.expect("sequence"), 1);
    let log = store.read_changes(0, 100, 1 << 20).await.expect("read");
    let ops: Vec<ChangeOp> = log.changes.iter().map(|c| c.op.clone()).collect();
    assert_eq!(ops, want);
    assert_eq!(log.changes[4].pos, Position::new(1, 5));
    let q = store.divergence_list(true).await.expect("quarantine");
    assert_eq!(q.len(), 1);
    assert_eq!(
        q[0].change.op,
        ChangeOp::Upsert(key(&cat, "k/late", "private", &[1], Some("m"), 14))
    );
    assert_eq!(q[0].reason, "old");

    // Capture runs through the generated function, in the new format.
    db.psql_run("INSERT INTO jobs(id, project, name, updated_at) VALUES ('j2', 'p1', 'n', 15)")
        .expect("write");
    assert_eq!(store.sequence().await.expect("sequence"), 1);
    let more = store.read_changes(5, 100, 1 << 20).await.expect("read");
    assert_eq!(more.changes.len(), 1);
    assert_eq!(
        more.changes[0].op,
        ChangeOp::Upsert(job(&cat, "j2", "p1", "n", 15))
    );
    // And the database reads and applies like a new one.
    let (_pdb, p) = fresh("upgrade_passive", "b").await;
    let all = store.read_changes(0, 100, 1 << 20).await.expect("read all");
    p.apply(&all.changes, true).await.expect("apply");
    assert_eq!(
        p.checksums().await.expect("sums"),
        store.checksums().await.expect("sums")
    );
    // Re-running init changes nothing.
    let again = store.init(&params("a")).await.expect("init again");
    assert_eq!(
        (again.from_version, again.to_version),
        (SCHEMA_VERSION, SCHEMA_VERSION)
    );
}

/// A schema-4 database's state and rows in the old format (entity 1
/// projects, 2 jobs, 3 keys; key, t1..t7, f1, f2, content, updated_at).
const OLD_SCHEMA_4_ROWS: &str = "
CREATE FUNCTION us_capture_projects() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO us_capture (epoch, entity, op, key) VALUES (1, 1, 2, 'never');
    RETURN NULL;
END $$;
CREATE TRIGGER us_capture AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION us_capture_projects();
INSERT INTO us_state (id, cluster, member, role, epoch, active, pos_epoch, pos_seq, lease_until, paused)
    VALUES (1, 'test', 'a', 'active', 1, 'a', 1, 4, NULL, false);
INSERT INTO us_epoch_history VALUES (1, 'a', 0, 0, 0, 'initial');
SET understudy.applying = 'on';
INSERT INTO projects (name, description, config, updated_at) VALUES ('p1', 'desc', '{\"a\":1}', 10);
INSERT INTO keys (path, kind, content, meta, updated_at) VALUES ('k1', 'password', '\\x00ff', NULL, 12);
INSERT INTO us_changelog (seq, epoch, entity, op, key, t1, t2, updated_at)
    VALUES (1, 1, 1, 1, 'p1', 'desc', '{\"a\":1}', 10);
INSERT INTO us_changelog (seq, epoch, entity, op, key, t1, t2, t3, t4, t5, t6, t7, f1, f2, updated_at)
    VALUES (2, 1, 2, 1, 'j1', 'p1', 'backup', 'ops', NULL, 'def', '0 0 * * *', 'a', false, true, 11);
INSERT INTO us_changelog (seq, epoch, entity, op, key, t1, t2, content, updated_at)
    VALUES (3, 1, 3, 1, 'k1', 'password', NULL, '\\x00ff', 12);
INSERT INTO us_changelog (seq, epoch, entity, op, key) VALUES (4, 1, 2, 2, 'j1');
INSERT INTO projects (name, updated_at) VALUES ('p2', 13);
INSERT INTO us_capture (epoch, entity, op, key, updated_at) VALUES (1, 1, 1, 'p2', 13);
INSERT INTO us_divergence (epoch, seq, entity, op, key, t1, t2, content, updated_at, reason)
    VALUES (1, 0, 3, 1, 'k/late', 'private', 'm', '\\x01', 14, 'old');
";

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
    let sa = SqliteStore::create(&sa_path, &CaptureSpec::example())
        .await
        .expect("sqlite");
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
    let sb = SqliteStore::create(&dir.path().join("b.db"), &CaptureSpec::example())
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
    let explicit = |sums: &[understudy::store::TableChecksum]| {
        sums.iter().find(|s| s.table == "keys").cloned()
    };
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
    let cat = s.catalog();
    match &q[0].change.op {
        ChangeOp::Upsert(k) if k.table.as_str() == "keys" => {
            assert_eq!(key_text(k.key()), "k/late");
            assert_eq!(get(&cat, k, "content"), &Value::Bytes(vec![1, 2, 255]));
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
    use understudy::tables::CaptureSpec;

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
            let s = PgStore::connect(&url, &CaptureSpec::example())
                .await
                .expect("connect");
            (url, s)
        }

        async fn reopen(&self, db: &String, store: PgStore) -> PgStore {
            drop(store);
            PgStore::connect(db, &CaptureSpec::example())
                .await
                .expect("reconnect")
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
    let active = SqliteStore::create(&path, &CaptureSpec::example())
        .await
        .expect("sqlite");
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

// ------------------------------------------------------------ application tables

/// A capture spec of the application's own tables.
fn spec(tables: &[&str], secret: &[&str]) -> CaptureSpec {
    CaptureSpec {
        tables: tables.iter().map(|s| s.to_string()).collect(),
        secret_columns: secret.iter().map(|s| s.to_string()).collect(),
        example: false,
    }
}

/// A scheduler's tables, shaped like real ones: a composite primary key,
/// a chain of foreign keys with `ON DELETE CASCADE` (project -> job ->
/// step), one without (runs keep their job), a table in another schema,
/// and every portable type: bigserial and identity ids, varchar, jsonb and
/// json, uuid, numeric with a scale, real, smallint, bool, timestamp,
/// timestamptz, date, char(n), bytea.
const SCHEDULER_DDL: &str = "
CREATE TABLE app_project (
    id       bigserial PRIMARY KEY,
    name     varchar(64) NOT NULL UNIQUE,
    settings jsonb,
    created  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE app_job (
    project_id bigint NOT NULL REFERENCES app_project(id) ON DELETE CASCADE,
    job_uuid   uuid NOT NULL,
    name       text NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    priority   smallint,
    timeout_s  real,
    cost       numeric(10,2),
    next_run   timestamp,
    start_day  date,
    PRIMARY KEY (project_id, job_uuid)
);
CREATE TABLE app_step (
    project_id bigint NOT NULL,
    job_uuid   uuid NOT NULL,
    step_no    integer NOT NULL,
    script     bytea,
    args       json,
    PRIMARY KEY (project_id, job_uuid, step_no),
    FOREIGN KEY (project_id, job_uuid) REFERENCES app_job ON DELETE CASCADE
);
CREATE TABLE app_run (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL,
    job_uuid   uuid NOT NULL,
    started    timestamptz NOT NULL,
    finished   timestamptz,
    status     char(8),
    FOREIGN KEY (project_id, job_uuid) REFERENCES app_job
);
CREATE SCHEMA ops;
CREATE TABLE ops.node (
    name  text PRIMARY KEY,
    owner text,
    seen  timestamptz
);
";

const SCHEDULER_TABLES: [&str; 5] = [
    "app_project",
    "public.app_job",
    "app_step",
    "app_run",
    "ops.node",
];

/// The scheduler's rows as text, in key order, with the session in UTC:
/// what an operator would compare by eye.
fn scheduler_dump(db: &TestDb) -> String {
    db.psql_run(
        "SET TimeZone = 'UTC'; \
         SELECT 'p', * FROM app_project ORDER BY id; \
         SELECT 'j', * FROM app_job ORDER BY 2, 3; \
         SELECT 's', project_id, job_uuid, step_no, md5(script), args FROM app_step ORDER BY 2, 3, 4; \
         SELECT 'r', * FROM app_run ORDER BY id; \
         SELECT 'n', * FROM ops.node ORDER BY name",
    )
    .expect("dump")
}

/// One random application write of the scheduler (some fail, as an
/// application's writes may: a unique name taken, a job with runs).
fn scheduler_write(rng: &mut Rng, i: u64) -> String {
    const UUIDS: [&str; 3] = [
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "00000000-0000-0000-0000-000000000000",
    ];
    const STAMPS: [&str; 6] = [
        "'2024-03-31 01:59:59.999999+00'",
        "'1969-12-31 23:59:59.000001+00'",
        "'9999-12-31 23:59:59.999999+00'",
        "'1900-01-01 00:00:00+05:30'",
        "'2024-10-27 02:30:00 Europe/Berlin'",
        "now()",
    ];
    const LOCAL: [&str; 4] = [
        "'2255-06-01 00:00:00.000001'",
        "'1600-01-01 12:00:00.5'",
        "'2024-02-29 23:59:59.999999'",
        "NULL",
    ];
    const DAYS: [&str; 4] = [
        "'1000-01-01'",
        "'1969-12-31'",
        "'2024-02-29'",
        "'9999-12-31'",
    ];
    const COSTS: [&str; 5] = ["1.50", "-0.01", "12345678.9", "0", "NULL"];
    const REALS: [&str; 5] = ["0.1", "-3.4e38", "1e-30", "'NaN'", "'-0'"];
    const PRIOS: [&str; 3] = ["-32768", "32767", "NULL"];
    const SCRIPTS: [&str; 4] = [
        "'\\x00ff00'",
        "''",
        "NULL",
        "decode(repeat('ab', 5000), 'hex')",
    ];
    let mut pick = |n: usize| rng.below(n as u64) as usize;
    let p = 1 + pick(3);
    let u = UUIDS[pick(3)];
    match pick(12) {
        0 => format!(
            "DELETE FROM app_run WHERE project_id = {p}; DELETE FROM app_project WHERE id = {p}"
        ),
        1 => format!(
            "DELETE FROM app_run WHERE project_id = {p} AND job_uuid = '{u}'; \
             DELETE FROM app_job WHERE project_id = {p} AND job_uuid = '{u}'"
        ),
        2 => format!(
            "DELETE FROM app_step WHERE project_id = {p} AND step_no = {}",
            1 + pick(3)
        ),
        3 => "DELETE FROM app_run WHERE id = (SELECT min(id) FROM app_run)".to_string(),
        4 => format!(
            "UPDATE app_project SET name = 'proj{}' WHERE id = {p}",
            1 + pick(4)
        ),
        5 => format!(
            "INSERT INTO app_run (project_id, job_uuid, started, finished, status) \
             VALUES ({p}, '{u}', {}, {}, '{}')",
            STAMPS[pick(6)],
            if pick(2) == 0 {
                "NULL"
            } else {
                STAMPS[pick(6)]
            },
            ["ok", "failed", ""][pick(3)]
        ),
        6 => format!(
            "INSERT INTO app_step VALUES ({p}, '{u}', {}, {}, '{{ \"raw\" :  [1, 2.50] , \"i\": {i} }}') \
             ON CONFLICT (project_id, job_uuid, step_no) DO UPDATE SET script = excluded.script, args = excluded.args",
            1 + pick(3),
            SCRIPTS[pick(4)]
        ),
        7 => format!(
            "INSERT INTO ops.node VALUES ('n{}', {}, {}) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, seen = excluded.seen",
            pick(3),
            ["'a'", "'b'", "NULL"][pick(3)],
            STAMPS[pick(6)]
        ),
        8 | 9 => format!(
            "INSERT INTO app_project (id, name, settings, created) VALUES ({p}, 'proj{p}', \
             '{{\"b\": [1, 2.50, \"x\"],  \"a\": null, \"i\": {i}}}', {}) \
             ON CONFLICT (id) DO UPDATE SET settings = excluded.settings, created = excluded.created",
            STAMPS[pick(6)]
        ),
        _ => format!(
            "INSERT INTO app_job VALUES ({p}, '{u}', 'job {i}', {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (project_id, job_uuid) DO UPDATE SET name = excluded.name, \
             enabled = excluded.enabled, priority = excluded.priority, timeout_s = excluded.timeout_s, \
             cost = excluded.cost, next_run = excluded.next_run, start_day = excluded.start_day",
            pick(2) == 0,
            PRIOS[pick(3)],
            REALS[pick(5)],
            COSTS[pick(5)],
            LOCAL[pick(4)],
            DAYS[pick(4)]
        ),
    }
}

/// Apply `log` as the applier does: in slices `slice(changes left)` says
/// (length, commit); after a failure, roll back and resend from the
/// committed position. Returns how many times it had to; panics past a
/// few (a retry is for a constraint the set-based plan ran into, which the
/// change-at-a-time fallback then passes).
async fn apply_as_the_applier(
    s: &PgStore,
    log: &[Change],
    slice: &mut dyn FnMut(usize) -> (usize, bool),
) -> u32 {
    let (mut at, mut committed, mut retries) = (0, 0, 0);
    while at < log.len() {
        let (n, commit) = slice(log.len() - at);
        match s.apply(&log[at..at + n], commit).await {
            Ok(_) if commit => {
                at += n;
                committed = at;
            }
            Ok(_) => at += n,
            Err(e) => {
                println!(
                    "apply of {} at {at} failed ({e}); resending from {committed}",
                    log[at].pos
                );
                retries += 1;
                assert!(retries <= 3, "apply keeps failing: {e}");
                s.abort_apply().await.expect("abort");
                at = committed;
            }
        }
    }
    retries
}

/// The scheduler's tables captured on one PostgreSQL member and applied
/// on another (as one batch, and in random slices, with another session
/// time zone on each side): equal checksums and equal rows, to the
/// microsecond and the last byte; a snapshot of the result installs the
/// same rows; a takeover on a table in another schema replicates.
#[tokio::test]
async fn application_tables_of_every_type_replicate_exactly() {
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_207);
    println!("seed {seed} (rerun with TEST_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let capture = spec(&SCHEDULER_TABLES, &["app_step.script"]);
    let member = |hint: &'static str, name: &'static str, zone: &'static str| {
        let capture = capture.clone();
        async move {
            let db = pg::test_database(hint).await.expect("db");
            db.psql_run(SCHEDULER_DDL).expect("ddl");
            db.psql_run(&format!(
                "ALTER DATABASE \"{}\" SET TimeZone = '{zone}'",
                db.name
            ))
            .expect("zone");
            let s = PgStore::connect(&db.url, &capture).await.expect("connect");
            s.init(&params(name)).await.expect("init");
            (db, s)
        }
    };
    let (adb, a) = member("sched_active", "a", "America/New_York").await;
    let cat = a.catalog();
    let order: Vec<&str> = cat.tables().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        order,
        ["app_project", "app_job", "app_run", "app_step", "ops.node"]
    );

    let app = app_client(&adb.url).await.expect("app");
    let mut accepted = 0;
    for i in 0..500 {
        if app
            .batch_execute(&scheduler_write(&mut rng, i))
            .await
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert!(
        accepted > 250,
        "only {accepted} writes were accepted, seed {seed}"
    );
    app.batch_execute(
        "INSERT INTO ops.node VALUES ('n-a', 'a', now()) ON CONFLICT (name) DO NOTHING",
    )
    .await
    .expect("a node of a");
    let moved = a
        .take_over(
            &understudy::tables::TableName::new("ops.node"),
            "owner",
            Some("a"),
            "b",
        )
        .await
        .expect("take over");
    assert!(moved >= 1, "n-a belonged to a");
    a.sequence().await.expect("sequence");
    let log = a
        .read_changes(0, 100_000, 1 << 30)
        .await
        .expect("read")
        .changes;
    let deletes = log
        .iter()
        .filter(|c| matches!(c.op, ChangeOp::Delete { .. }))
        .count();
    println!(
        "{accepted} writes accepted, {moved} nodes taken over, {} changes ({deletes} deletes)",
        log.len()
    );
    assert!(deletes > 20, "only {deletes} deletes, seed {seed}");
    let want_sums = a.checksums().await.expect("sums");
    let want_rows = scheduler_dump(&adb);

    let (bdb, b) = member("sched_whole", "b", "Asia/Kolkata").await;
    assert_eq!(b.catalog().fingerprint(), cat.fingerprint());
    let retries = apply_as_the_applier(&b, &log, &mut |_| (log.len(), true)).await;
    println!("one batch: {retries} retries");
    assert_eq!(
        b.checksums().await.expect("sums"),
        want_sums,
        "one batch, seed {seed}"
    );
    assert_eq!(scheduler_dump(&bdb), want_rows, "one batch, seed {seed}");

    let (cdb, c) = member("sched_sliced", "c", "Pacific/Chatham").await;
    let retries = apply_as_the_applier(&c, &log, &mut |left| {
        let n = (1 + rng.below(40) as usize).min(left);
        (n, rng.below(3) > 0 || n == left)
    })
    .await;
    println!("slices: {retries} retries");
    assert_eq!(
        c.checksums().await.expect("sums"),
        want_sums,
        "slices, seed {seed}"
    );
    assert_eq!(scheduler_dump(&cdb), want_rows, "slices, seed {seed}");

    // A snapshot of the passive installs the same rows on a third member.
    let (ddb, d) = member("sched_snapshot", "d", "UTC").await;
    let mut reader = b.snapshot_reader().await.expect("snapshot");
    d.install_snapshot_begin(reader.position())
        .await
        .expect("begin");
    loop {
        let rows = reader.next_chunk(64, 1 << 16).await.expect("chunk");
        if rows.is_empty() {
            break;
        }
        d.install_snapshot_rows(&rows).await.expect("rows");
    }
    d.install_snapshot_commit().await.expect("commit");
    assert_eq!(
        d.checksums().await.expect("sums"),
        want_sums,
        "snapshot, seed {seed}"
    );
    assert_eq!(scheduler_dump(&ddb), want_rows, "snapshot, seed {seed}");
}

/// A unique key besides the primary key whose value moves from one row to
/// another inside one batch: the set-based upsert checks it row by row in
/// an order of its own and fails; the batch, sent again, is applied one
/// change at a time in log order and the tables come out as the active's.
#[tokio::test]
async fn a_unique_value_moving_between_rows_applies_on_the_second_try() {
    const DDL: &str =
        "CREATE TABLE u (id integer PRIMARY KEY, name text NOT NULL UNIQUE, v integer)";
    let capture = spec(&["u"], &[]);
    let mut members = Vec::new();
    for (hint, name) in [("unique_active", "a"), ("unique_passive", "b")] {
        let db = pg::test_database(hint).await.expect("db");
        db.psql_run(DDL).expect("ddl");
        let s = PgStore::connect(&db.url, &capture).await.expect("connect");
        s.init(&params(name)).await.expect("init");
        members.push((db, s));
    }
    let (_bdb, b) = members.pop().expect("passive");
    let (adb, a) = members.pop().expect("active");
    adb.psql_run("INSERT INTO u VALUES (1, 'one', 0), (2, 'two', 0)")
        .expect("rows");
    a.sequence().await.expect("sequence");
    let rows = a.read_changes(0, 100, 1 << 20).await.expect("read").changes;
    let at = b.apply(&rows, true).await.expect("the rows");
    adb.psql_run(
        "UPDATE u SET name = 'four' WHERE id = 2; UPDATE u SET name = 'two' WHERE id = 1; \
         UPDATE u SET v = 1 WHERE id = 2",
    )
    .expect("writes");
    a.sequence().await.expect("sequence");
    let log = a
        .read_changes(at.seq, 100, 1 << 20)
        .await
        .expect("read")
        .changes;
    let e = b
        .apply(&log, true)
        .await
        .expect_err("row 1 takes 'two' before row 2 gives it up");
    assert!(e.to_string().contains("u_name_key"), "{e}");
    b.abort_apply().await.expect("abort");
    assert_eq!(b.state().await.expect("state").position, at);
    assert_eq!(
        b.apply(&log, true).await.expect("second try"),
        log[log.len() - 1].pos
    );
    assert_eq!(
        b.checksums().await.expect("sums"),
        a.checksums().await.expect("sums")
    );
    // Past the failed batch, batches are set-based again.
    adb.psql_run("INSERT INTO u VALUES (3, 'three', 0)")
        .expect("write");
    a.sequence().await.expect("sequence");
    let more = a
        .read_changes(log[log.len() - 1].pos.seq, 100, 1 << 20)
        .await
        .expect("read")
        .changes;
    b.apply(&more, true).await.expect("apply");
    assert_eq!(
        b.checksums().await.expect("sums"),
        a.checksums().await.expect("sums")
    );
}

/// After rows with explicit ids were applied, the passive's sequences
/// (bigserial, an identity column, a plain `DEFAULT nextval`) still stand
/// where they were and the application's next insert would collide;
/// `advance_id_generators` moves exactly those behind rows, and the insert
/// with a default id succeeds past every replicated id.
#[tokio::test]
async fn advancing_id_sequences_lets_the_new_active_insert() {
    use understudy::model::{Epoch, Role};
    use understudy::tables::IdSource;
    const DDL: &str = "
        CREATE TABLE id_serial (id bigserial PRIMARY KEY, v text);
        CREATE TABLE id_ident (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
        CREATE SEQUENCE id_custom_seq START 100;
        CREATE TABLE id_custom (id integer PRIMARY KEY DEFAULT nextval('id_custom_seq'), v text);
        CREATE TABLE id_empty (id serial PRIMARY KEY, v text);
    ";
    let capture = spec(&["id_serial", "id_ident", "id_custom", "id_empty"], &[]);
    let mut members = Vec::new();
    for (hint, name) in [("ids_active", "a"), ("ids_passive", "b")] {
        let db = pg::test_database(hint).await.expect("db");
        db.psql_run(DDL).expect("ddl");
        let s = PgStore::connect(&db.url, &capture).await.expect("connect");
        s.init(&params(name)).await.expect("init");
        members.push((db, s));
    }
    let (bdb, b) = members.pop().expect("passive");
    let (adb, a) = members.pop().expect("active");
    let cat = b.catalog();
    for (t, seq) in [
        ("id_serial", "public.id_serial_id_seq"),
        ("id_ident", "public.id_ident_id_seq"),
        ("id_custom", "public.id_custom_seq"),
        ("id_empty", "public.id_empty_id_seq"),
    ] {
        let ids = &cat.by_name(t).expect("table").columns[0].ids;
        assert_eq!(ids, &Some(IdSource::Sequence(seq.into())), "{t}");
    }
    adb.psql_run(
        "INSERT INTO id_serial (v) SELECT 'x' FROM generate_series(1, 5); \
         INSERT INTO id_serial (id, v) VALUES (50, 'explicit'); \
         INSERT INTO id_ident (v) SELECT 'x' FROM generate_series(1, 5); \
         INSERT INTO id_custom (v) SELECT 'x' FROM generate_series(1, 5)",
    )
    .expect("active writes");
    a.sequence().await.expect("sequence");
    let log = a
        .read_changes(0, 1000, 1 << 20)
        .await
        .expect("read")
        .changes;
    b.apply(&log, true)
        .await
        .expect("apply (identity ALWAYS takes the replicated ids)");

    // Promote the passive.
    b.set_role(Role::Active, Epoch(2), Some(&MemberId::new("b")))
        .await
        .expect("promote");
    b.renew_lease(Duration::from_secs(60)).await.expect("lease");
    let e = bdb
        .psql_run("INSERT INTO id_serial (v) VALUES ('new')")
        .expect_err("the sequence still stands at 1");
    assert!(e.to_string().contains("duplicate key"), "{e}");
    assert_eq!(b.advance_id_generators().await.expect("advance"), 3);
    assert_eq!(
        b.advance_id_generators().await.expect("again"),
        0,
        "nothing left to move"
    );
    let new_id = |sql: &str| -> i64 {
        bdb.psql_run(sql)
            .expect("insert with a default id")
            .parse()
            .expect("an id")
    };
    assert_eq!(
        new_id("INSERT INTO id_serial (v) VALUES ('new') RETURNING id"),
        51
    );
    assert_eq!(
        new_id("INSERT INTO id_ident (v) VALUES ('new') RETURNING id"),
        6
    );
    assert_eq!(
        new_id("INSERT INTO id_custom (v) VALUES ('new') RETURNING id"),
        105
    );
    assert_eq!(
        new_id("INSERT INTO id_empty (v) VALUES ('new') RETURNING id"),
        1
    );
    // An empty table's sequence, and one already ahead, are left alone.
    assert_eq!(b.advance_id_generators().await.expect("after"), 0);
}

/// Tables that cannot be captured are refused at `init`, each with a
/// message that names the table (and column) and says what to do; the
/// database is left exactly as it was.
#[tokio::test]
async fn the_catalog_refuses_what_it_cannot_capture() {
    use understudy::tables::CatalogError;
    const DDL: &str = "
        CREATE TABLE nopk (a integer);
        CREATE TABLE arr (id integer PRIMARY KEY, tags text[]);
        CREATE TABLE gen (id integer PRIMARY KEY, a integer, b integer GENERATED ALWAYS AS (a * 2) STORED);
        CREATE TABLE par (id integer PRIMARY KEY);
        CREATE TABLE chi (id integer PRIMARY KEY, p integer REFERENCES par);
        CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
        CREATE TABLE dom (id integer PRIMARY KEY, n posint);
        CREATE TYPE mood AS ENUM ('calm', 'busy');
        CREATE TABLE en (id integer PRIMARY KEY, m mood);
        CREATE VIEW vw AS SELECT * FROM par;
    ";
    let db = pg::test_database("refusals").await.expect("db");
    db.psql_run(DDL).expect("ddl");
    let before = tables(&db).await;
    let cases: [(&str, fn(&CatalogError) -> bool, &str); 8] = [
        (
            "nopk",
            |e| matches!(e, CatalogError::NoPrimaryKey { .. }),
            "captured table nopk has no primary key",
        ),
        (
            "arr",
            |e| matches!(e, CatalogError::UnsupportedType { declared, .. } if declared == "text[]"),
            "arr.tags has type text[]",
        ),
        (
            "gen",
            |e| matches!(e, CatalogError::Generated { .. }),
            "gen.b is a generated column",
        ),
        (
            "chi",
            |e| matches!(e, CatalogError::ForeignKeyOutside { .. }),
            "chi(p) references par, which is not captured",
        ),
        (
            "dom",
            |e| matches!(e, CatalogError::UnsupportedType { declared, .. } if declared == "posint"),
            "dom.n has type posint",
        ),
        (
            "en",
            |e| matches!(e, CatalogError::UnsupportedType { declared, .. } if declared == "mood"),
            "en.m has type mood",
        ),
        (
            "nosuch",
            |e| matches!(e, CatalogError::Missing { .. }),
            "captured table nosuch does not exist",
        ),
        (
            "vw",
            |e| matches!(e, CatalogError::Other { .. }),
            "vw: it is not a table",
        ),
    ];
    for (table, is, says) in cases {
        let capture = spec(&[table], &[]);
        let s = PgStore::connect(&db.url, &capture)
            .await
            .expect("connect: a refusal waits for init");
        let err = s.init(&params("a")).await.expect_err(table);
        println!("{err}");
        match &err {
            StoreError::Catalog { source, .. } => assert!(is(source), "{table}: {source:?}"),
            other => panic!("{table}: expected a catalog refusal, got {other:?}"),
        }
        assert!(err.to_string().contains(says), "{table}: {err}");
        assert!(!err.to_string().contains("understudy:"), "{table}: {err}");
        assert!(matches!(
            s.apply(&[], true).await,
            Err(StoreError::Catalog { .. })
        ));
    }
    assert_eq!(
        tables(&db).await,
        before,
        "a refused init left something behind"
    );
    // Captured together, the foreign key is fine.
    let s = PgStore::connect(&db.url, &spec(&["chi", "par"], &[]))
        .await
        .expect("connect");
    s.init(&params("a")).await.expect("par and chi together");
    let order: Vec<String> = s
        .catalog()
        .tables()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(order, ["par", "chi"]);
}

/// A captured table that changes after `init` (a column added) is noticed
/// at start, naming the table and saying to run `init` again; `init`
/// re-generates its capture function (without a lock on the table when
/// only the function changes) and the new column is captured.
#[tokio::test]
async fn a_changed_table_needs_init_again() {
    let db = pg::test_database("altered").await.expect("db");
    db.psql_run("CREATE TABLE t (id integer PRIMARY KEY, a text)")
        .expect("ddl");
    let capture = spec(&["t"], &[]);
    let s = PgStore::connect(&db.url, &capture).await.expect("connect");
    s.init(&params("a")).await.expect("init");
    s.check_schema().await.expect("current");
    db.psql_run("ALTER TABLE t ADD COLUMN b numeric(6,3)")
        .expect("alter");
    let err = s.check_schema().await.expect_err("stale trigger");
    assert!(
        err.to_string()
            .contains("t: its capture trigger does not match its columns"),
        "{err}"
    );
    s.init(&params("a")).await.expect("init again");
    s.check_schema().await.expect("current again");
    db.psql_run("INSERT INTO t VALUES (1, 'x', 2.500)")
        .expect("write");
    s.sequence().await.expect("sequence");
    let log = s.read_changes(0, 10, 1 << 20).await.expect("read").changes;
    match &log[0].op {
        ChangeOp::Upsert(r) => assert_eq!(
            r.values,
            [Value::Int(1), text("x"), text("2.5")],
            "numeric in canonical form"
        ),
        other => panic!("expected an upsert, got {other:?}"),
    }
}

/// A divergent tail holding a schema change: a PostgreSQL member does not
/// give it back by itself. The quarantine refuses, naming the version and
/// the manual way, and changes nothing (log, tables and history stay).
#[tokio::test]
async fn a_tail_with_a_schema_change_is_refused_and_left_untouched() {
    let (db, a) = fresh("tail_schema", "a").await;
    db.psql_run("INSERT INTO projects(name, updated_at) VALUES ('p1', 1)")
        .expect("write");
    a.sequence().await.expect("sequence");
    let keep = a.state().await.expect("state").position;
    a.migrate(
        "ALTER TABLE projects ADD COLUMN region TEXT",
        "ALTER TABLE projects ADD COLUMN region text",
    )
    .await
    .expect("migrate");
    db.psql_run("INSERT INTO projects(name, updated_at, region) VALUES ('p2', 2, 'us')")
        .expect("write under the new schema");
    a.sequence().await.expect("sequence");
    let head = a.state().await.expect("state").position;
    a.set_role(Role::Fenced, Epoch(2), Some(&MemberId::new("b")))
        .await
        .expect("fence");
    match a.quarantine_tail(keep, "rejoin").await {
        Err(StoreError::Shape(why)) => {
            assert!(why.contains("schema version 1 ran here"), "{why}");
            assert!(why.contains("Schema changes"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(a.state().await.expect("state").position, head);
    assert_eq!(a.schema_version().await.expect("version"), 1);
    assert_eq!(a.divergent_count().await.expect("count"), 0);
}
