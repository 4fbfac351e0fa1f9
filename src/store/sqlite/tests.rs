//! Tests of the SQLite member database: the conformance suite, the fence and
//! capture seen from the real `sqlite3` shell as the application, concurrent
//! writer processes, schema upgrades and refusals, and commit wake-ups.

use super::*;
use crate::model::{ChangeOp, key_text};
use crate::store::conformance::Backend;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const SQLITE3: &str = "/usr/bin/sqlite3";

/// Throw-away SQLite databases in one temporary folder.
pub(crate) struct SqliteBackend {
    dir: tempfile::TempDir,
    next: AtomicUsize,
}

impl SqliteBackend {
    pub(crate) fn new() -> SqliteBackend {
        SqliteBackend {
            dir: tempfile::tempdir().expect("tempdir"),
            next: AtomicUsize::new(0),
        }
    }
}

fn app_conn(db: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

impl Backend for SqliteBackend {
    type Store = SqliteStore;
    type Db = PathBuf;

    async fn fresh(&self) -> (PathBuf, SqliteStore) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("m{n}/member.db"));
        let s = SqliteStore::create(&path, &CaptureSpec::example())
            .await
            .expect("create");
        (path, s)
    }

    async fn reopen(&self, db: &PathBuf, store: SqliteStore) -> SqliteStore {
        drop(store);
        SqliteStore::open(db, &CaptureSpec::example())
            .await
            .expect("reopen")
    }

    async fn app_exec(&self, db: &PathBuf, sql: &str) -> Result<(), String> {
        let (db, sql) = (db.clone(), sql.to_string());
        tokio::task::spawn_blocking(move || {
            // A new connection each time: dropping it rolls back whatever a
            // failed batch left open.
            let c = app_conn(&db).map_err(|e| e.to_string())?;
            c.execute_batch(&sql).map_err(|e| e.to_string())
        })
        .await
        .expect("join")
    }

    async fn app_query_i64(&self, db: &PathBuf, sql: &str) -> Result<Option<i64>, String> {
        let (db, sql) = (db.clone(), sql.to_string());
        tokio::task::spawn_blocking(move || {
            let c = app_conn(&db).map_err(|e| e.to_string())?;
            c.query_row(&sql, [], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .map(Option::flatten)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("join")
    }

    fn blob(&self, bytes: &[u8]) -> String {
        format!("X'{}'", hex::encode(bytes))
    }
}

mod conformance {
    use super::SqliteBackend;
    crate::store_conformance_tests!(SqliteBackend::new());
}

fn params(member: &str, initial: &str) -> InitParams {
    InitParams {
        cluster: "test".into(),
        member: MemberId::new(member),
        initial_active: MemberId::new(initial),
    }
}

/// A new member database at `path`, initialised as `member` of a cluster
/// whose initial active is `initial`.
async fn initialised(path: &Path, member: &str, initial: &str) -> SqliteStore {
    let s = SqliteStore::create(path, &CaptureSpec::example())
        .await
        .expect("create");
    s.init(&params(member, initial)).await.expect("init");
    s
}

async fn all(s: &SqliteStore) -> Vec<Change> {
    s.read_changes(0, usize::MAX, usize::MAX)
        .await
        .expect("read")
        .changes
}

/// Kills and reaps a child process when dropped (a failing test must not
/// leave writers behind).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sqlite3_available() {
    assert!(
        Path::new(SQLITE3).is_file(),
        "{SQLITE3} is needed by these tests (install the sqlite3 package)"
    );
}

/// Run a script in the sqlite3 shell: (success, stderr).
fn shell(db: &Path, script: &str) -> (bool, String) {
    sqlite3_available();
    let mut child = ChildGuard(Some(
        Command::new(SQLITE3)
            .arg("-bail")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sqlite3"),
    ));
    let mut c = child.0.take().expect("child");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!(".timeout 10000\n{script}\n").as_bytes())
        .expect("write script");
    let out = c.wait_with_output().expect("sqlite3 output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn schema_dump(db: &Path) -> Vec<(String, String, Option<String>)> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("rows")
}

// ------------------------------------------------------------ the shell as the application

#[tokio::test]
async fn shell_write_on_a_passive_is_refused_naming_the_active() {
    let dir = tempfile::tempdir().expect("tempdir");
    let adb = dir.path().join("a.db");
    let pdb = dir.path().join("b.db");
    let a = initialised(&adb, "a", "a").await;
    let p = initialised(&pdb, "b", "a").await;

    let (ok, _) = shell(&adb, "INSERT INTO projects(name) VALUES ('from-shell');");
    assert!(ok, "the initial active accepts shell writes");
    let (ok, stderr) = shell(&pdb, "INSERT INTO projects(name) VALUES ('intruder');");
    assert!(!ok, "the passive must refuse");
    assert!(
        stderr.contains("write refused: member b is passive; the active member is a"),
        "{stderr}"
    );
    // The agent's apply path is let through.
    p.apply(&all(&a).await, true).await.expect("apply");
    assert_eq!(all(&p).await, all(&a).await);

    p.set_role(Role::Passive, Epoch(2), Some(&MemberId::new("c")))
        .await
        .expect("set_role");
    drop(p);
    let p = SqliteStore::open(&pdb, &CaptureSpec::example())
        .await
        .expect("reopen");
    let (ok, stderr) = shell(&pdb, "UPDATE projects SET description = 'x';");
    assert!(!ok);
    assert!(stderr.contains("the active member is c"), "{stderr}");
    let (ok, stderr) = shell(&pdb, "DELETE FROM projects;");
    assert!(!ok, "{stderr}");
    assert_eq!(
        p.checksums().await.expect("sums"),
        a.checksums().await.expect("sums")
    );

    // An active whose lease ran out refuses the shell too.
    a.renew_lease(Duration::from_millis(1))
        .await
        .expect("renew");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (ok, stderr) = shell(&adb, "INSERT INTO projects(name) VALUES ('late');");
    assert!(!ok);
    assert!(
        stderr.contains("lease of this active member (a) ran out"),
        "{stderr}"
    );
}

#[tokio::test]
async fn shell_project_delete_captures_its_jobs_without_foreign_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let a = initialised(&db, "a", "a").await;
    let (ok, stderr) = shell(
        &db,
        "BEGIN;
         INSERT INTO projects(name) VALUES ('p');
         INSERT INTO jobs(id, project, name) VALUES ('j1', 'p', 'one'), ('j2', 'p', 'two');
         COMMIT;
         DELETE FROM projects WHERE name = 'p';",
    );
    assert!(ok, "{stderr}");
    let got = all(&a).await;
    let deletes: HashSet<String> = got
        .iter()
        .filter_map(|c| match &c.op {
            ChangeOp::Delete { table, key } => Some(format!("{table}:{}", key_text(key))),
            _ => None,
        })
        .collect();
    assert_eq!(
        deletes,
        ["projects:p", "jobs:j1", "jobs:j2"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let c = app_conn(&db).expect("open");
    let jobs: i64 = c
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .expect("count");
    assert_eq!(jobs, 0);
    // With foreign keys on, the cascade is the same (and captured once).
    c.execute_batch(
        "PRAGMA foreign_keys = ON;
         INSERT INTO projects(name) VALUES ('q');
         INSERT INTO jobs(id, project, name) VALUES ('j3', 'q', 'n');
         DELETE FROM projects WHERE name = 'q';",
    )
    .expect("fk cascade");
    let got = all(&a).await;
    let j3_deletes = got
        .iter()
        .filter(|c| matches!(&c.op, ChangeOp::Delete { key, .. } if key_text(key) == "j3"))
        .count();
    assert_eq!(j3_deletes, 1, "{got:#?}");
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.pos.seq, i as u64 + 1);
    }
}

/// Four shell processes write multi-row transactions at once while the store
/// reads continuously: every change exactly once, each transaction whole and
/// contiguous, each writer's transactions in its commit order, and every
/// read that reaches the head ends on a transaction boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shell_writers_ship_whole_transactions_in_commit_order() {
    const WRITERS: usize = 4;
    const TXS: usize = 60;
    const ROWS: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let s = initialised(&db, "a", "a").await;
    sqlite3_available();
    let mut guards = Vec::new();
    for w in 0..WRITERS {
        let mut script = String::from(".timeout 20000\n");
        for t in 0..TXS {
            script.push_str("BEGIN IMMEDIATE;\n");
            for r in 0..ROWS {
                script.push_str(&format!(
                    "INSERT INTO projects(name, description) VALUES ('w{w}-t{t}-r{r}', 'w{w}-t{t}');\n"
                ));
            }
            // Updates and deletes ride in the same transaction sometimes.
            if t % 5 == 4 {
                script.push_str(&format!(
                    "UPDATE projects SET config = 'u' WHERE name = 'w{w}-t{t}-r0';\n\
                     DELETE FROM projects WHERE name = 'w{w}-t{t}-r1';\n"
                ));
            }
            script.push_str("COMMIT;\n");
        }
        let mut child = Command::new(SQLITE3)
            .arg("-bail")
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sqlite3");
        let mut stdin = child.stdin.take().expect("stdin");
        guards.push(ChildGuard(Some(child)));
        std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
    }
    let per_tx = |t: usize| if t % 5 == 4 { ROWS + 2 } else { ROWS };
    let expected: usize = WRITERS * (0..TXS).map(per_tx).sum::<usize>();
    let mut got: Vec<Change> = Vec::new();
    let mut reads = 0usize;
    let mut head_reads = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    // Tag of a change: the transaction it belongs to.
    let tag = |c: &Change| -> String {
        let k = key_text(c.key());
        k.rsplit_once('-')
            .map_or(k.as_str(), |(t, _)| t)
            .to_string()
    };
    while got.len() < expected {
        assert!(
            Instant::now() < deadline,
            "timed out with {} of {expected}",
            got.len()
        );
        s.wait_for_commit(Duration::from_millis(200))
            .await
            .expect("wait");
        loop {
            let after = got.last().map_or(0, |c| c.pos.seq);
            // Small reads split transactions; at_head reads must not.
            let r = s.read_changes(after, 7, usize::MAX).await.expect("read");
            reads += 1;
            got.extend(r.changes);
            if r.at_head {
                head_reads += 1;
                if let Some(last) = got.last() {
                    let t = tag(last);
                    let (w, tx) = parse_tag(&t);
                    let n = got.iter().rev().take_while(|c| tag(c) == t).count();
                    assert_eq!(
                        n,
                        per_tx(tx),
                        "an at-head read ended inside transaction w{w}-t{tx}"
                    );
                }
                break;
            }
        }
    }
    for g in &mut guards {
        let c = g.0.take().expect("child");
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(got.len(), expected);
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.pos.seq, i as u64 + 1, "positions contiguous");
    }
    // Whole, contiguous transactions; per writer in order; each once.
    let mut seen_tx = HashSet::new();
    let mut last_tx: BTreeMap<usize, usize> = BTreeMap::new();
    let mut i = 0;
    while i < got.len() {
        let t = tag(&got[i]);
        let (w, tx) = parse_tag(&t);
        let n = per_tx(tx);
        assert!(seen_tx.insert(t.clone()), "transaction {t} appears twice");
        for c in &got[i..i + n] {
            assert_eq!(tag(c), t, "transaction {t} is not contiguous");
        }
        if let Some(prev) = last_tx.insert(w, tx) {
            assert!(tx > prev, "writer {w}: t{tx} after t{prev}");
        }
        i += n;
    }
    assert_eq!(seen_tx.len(), WRITERS * TXS);
    let after = s
        .read_changes(expected as u64, 10, usize::MAX)
        .await
        .expect("read");
    assert!(after.changes.is_empty() && after.at_head);
    println!(
        "concurrent writers: {expected} changes in {} transactions, {reads} reads, {head_reads} at head",
        WRITERS * TXS
    );
}

fn parse_tag(t: &str) -> (usize, usize) {
    let (w, tx) = t.split_once('-').expect("tag w-t");
    (
        w.trim_start_matches('w').parse().expect("writer"),
        tx.trim_start_matches('t').parse().expect("tx"),
    )
}

// ------------------------------------------------------------ schema

/// A database made by schema 3 (the fixed projects/jobs/keys change log,
/// INTEGER job flags): its files are kept verbatim in `testdata/v3`.
fn legacy_v3_database(db: &Path) {
    let c = app_conn(db).expect("open");
    c.execute_batch("PRAGMA journal_mode = WAL").expect("wal");
    c.execute_batch(
        "CREATE TABLE us_schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                         applied_at INTEGER NOT NULL);",
    )
    .expect("version table");
    for (v, name, sql) in [
        (1, "core", include_str!("testdata/v3/0001_core.sql")),
        (
            2,
            "quarantine",
            include_str!("testdata/v3/0002_quarantine.sql"),
        ),
        (
            3,
            "snapshot_due",
            include_str!("testdata/v3/0003_snapshot_due.sql"),
        ),
    ] {
        c.execute_batch(sql).expect("legacy migration");
        c.execute(
            "INSERT INTO us_schema_version VALUES (?1, ?2, 0)",
            params![v, name],
        )
        .expect("version row");
    }
    c.execute_batch(
        "INSERT INTO us_state (id, cluster, member, role, epoch, active, lease_until)
             VALUES (1, 'test', 'a', 'active', 1, 'a', NULL);
         INSERT INTO projects(name, description) VALUES ('p', 'before the upgrade');
         INSERT INTO jobs(id, project, name, schedule_enabled) VALUES ('j', 'p', 'n', 0);
         INSERT INTO keys(path, kind, content) VALUES ('k', 'password', X'00ff');
         DELETE FROM jobs WHERE id = 'j';
         INSERT INTO jobs(id, project, name, schedule_enabled) VALUES ('j', 'p', 'n', 0);
         INSERT INTO us_quarantine (epoch, seq, entity, op, key, c1, reason)
             VALUES (1, 9, 1, 1, 'q', 'quarantined', 'test');",
    )
    .expect("legacy data");
}

#[tokio::test]
async fn init_upgrades_a_schema_3_database_keeping_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    legacy_v3_database(&db);
    let s = SqliteStore::open(&db, &CaptureSpec::example())
        .await
        .expect("open");
    assert!(
        matches!(s.check_schema().await, Err(StoreError::SchemaMismatch { ref detail, .. }) if detail.contains("older")),
        "a database at an older version needs init"
    );
    let r = s.init(&params("a", "a")).await.expect("upgrade");
    assert_eq!((r.from_version, r.to_version), (3, schema::LATEST));
    s.check_schema().await.expect("current");
    let log = all(&s).await;
    let shown: Vec<String> = log
        .iter()
        .map(|c| {
            format!(
                "{} {} {} {}",
                c.pos,
                c.table_str(),
                c.op_name(),
                key_text(c.key())
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            "1/1 projects upsert p",
            "1/2 jobs upsert j",
            "1/3 keys upsert k",
            "1/4 jobs delete j",
            "1/5 jobs upsert j"
        ],
        "the log keeps every change under its position"
    );
    let cat = s.catalog();
    let jobs = cat.by_name("jobs").expect("jobs captured");
    let flag = jobs.column("schedule_enabled").expect("flag").1;
    assert_eq!(
        flag.ty,
        crate::tables::PortableType::Bool,
        "flags become BOOLEAN"
    );
    let ChangeOp::Upsert(img) = &log[4].op else {
        panic!("an upsert")
    };
    let i = jobs.image_index("schedule_enabled").expect("in the image");
    assert_eq!(img.values[i], crate::tables::Value::Bool(false));
    let q = s.divergence_list(true).await.expect("quarantine");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].change.table_str(), "projects");
    // Writes after the upgrade are captured with the generated triggers and
    // continue the same seqs.
    app_conn(&db)
        .expect("open")
        .execute_batch("INSERT INTO projects(name) VALUES ('after')")
        .expect("write after upgrade");
    let log = all(&s).await;
    assert_eq!(log.len(), 6);
    assert_eq!(log[5].pos.seq, 6);
    let r = s.init(&params("a", "a")).await.expect("again");
    assert_eq!(
        (r.from_version, r.to_version),
        (schema::LATEST, schema::LATEST)
    );
}

#[tokio::test]
async fn init_refuses_a_jobs_table_of_another_shape_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let c = Connection::open(&db).expect("open");
    c.execute_batch(
        "CREATE TABLE jobs (uuid TEXT PRIMARY KEY, title TEXT);
         INSERT INTO jobs VALUES ('u1', 'backup');",
    )
    .expect("app schema");
    drop(c);
    let before = schema_dump(&db);
    let s = SqliteStore::open(&db, &CaptureSpec::example())
        .await
        .expect("open");
    match s.init(&params("a", "a")).await {
        Err(StoreError::SchemaMismatch { table, detail, .. }) => {
            assert_eq!(table, "jobs");
            assert!(detail.contains("uuid, title"), "{detail}");
        }
        other => panic!("expected SchemaMismatch for jobs, got {other:?}"),
    }
    assert_eq!(schema_dump(&db), before, "the schema must not change");
    let mode: String = Connection::open(&db)
        .expect("open")
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "delete", "not even the journal mode changes");
}

#[tokio::test]
async fn init_accepts_application_tables_of_the_right_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    Connection::open(&db)
        .expect("open")
        .execute_batch(
            "CREATE TABLE projects (name TEXT PRIMARY KEY, description TEXT, config TEXT, updated_at INTEGER);
             INSERT INTO projects VALUES ('existing', NULL, NULL, 5);",
        )
        .expect("app schema");
    let s = SqliteStore::open(&db, &CaptureSpec::example())
        .await
        .expect("open");
    // SQLite lets a non-INTEGER primary key hold NULL unless it says NOT
    // NULL: such a key cannot identify rows, and init says so.
    let e = s.init(&params("a", "a")).await.expect_err("nullable key");
    assert!(
        e.to_string().contains("projects.name") && e.to_string().contains("NOT NULL"),
        "{e}"
    );
    Connection::open(&db)
        .expect("open")
        .execute_batch(
            "CREATE TABLE p2 (name TEXT NOT NULL PRIMARY KEY, description TEXT, config TEXT, updated_at INTEGER);
             INSERT INTO p2 SELECT * FROM projects; DROP TABLE projects;
             ALTER TABLE p2 RENAME TO projects;",
        )
        .expect("declare the key NOT NULL");
    s.init(&params("a", "a")).await.expect("init");
    s.check_schema().await.expect("check");
    let sums = s.checksums().await.expect("sums");
    let projects = sums
        .iter()
        .find(|t| t.table == "projects")
        .expect("projects");
    assert_eq!(projects.rows, 1);
}

#[tokio::test]
async fn init_refuses_another_members_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let s = initialised(&db, "a", "a").await;
    let e = s.init(&params("b", "a")).await.expect_err("other member");
    assert!(e.to_string().contains("belongs to member a"), "{e}");
}

#[tokio::test]
async fn check_schema_notices_a_dropped_capture_trigger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let s = initialised(&db, "a", "a").await;
    Connection::open(&db)
        .expect("open")
        .execute_batch("DROP TRIGGER us_capture_keys_upd")
        .expect("drop");
    match s.check_schema().await {
        Err(StoreError::SchemaMismatch { table, detail, .. }) => {
            assert_eq!(table, "keys");
            assert!(detail.contains("us_capture_keys_upd"), "{detail}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_folder_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let db = file.join("sub/member.db");
    match SqliteStore::create(&db, &CaptureSpec::example()).await {
        Err(StoreError::Unreachable { url, reason }) => {
            assert!(url.contains("sub/member.db"), "{url}");
            assert!(reason.contains("cannot create the folder"), "{reason}");
            assert!(reason.contains("plain-file/sub"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    match SqliteStore::open(&dir.path().join("missing.db"), &CaptureSpec::example()).await {
        Err(e @ StoreError::NotInitialised { .. }) => {
            assert!(e.to_string().contains("understudy init"), "{e}");
        }
        other => panic!("expected NotInitialised, got {other:?}"),
    }
}

#[tokio::test]
async fn state_changes_roll_back_an_open_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = initialised(&dir.path().join("a.db"), "a", "a").await;
    let adb = dir.path().join("a.db");
    app_conn(&adb)
        .expect("open")
        .execute_batch(
            "INSERT INTO projects(name) VALUES ('x'); INSERT INTO projects(name) VALUES ('y');",
        )
        .expect("write");
    let src = all(&a).await;
    let p = initialised(&dir.path().join("b.db"), "b", "a").await;
    p.apply(&src[..1], false).await.expect("open apply");
    // A vote must be durable at once, so it ends the open apply.
    p.record_vote(&Vote {
        epoch: Epoch(2),
        candidate: MemberId::new("b"),
    })
    .await
    .expect("vote");
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    assert!(matches!(
        p.apply(&src[1..], true).await,
        Err(StoreError::OutOfOrder { .. })
    ));
    assert_eq!(p.apply(&src, true).await.expect("again"), src[1].pos);
    // And nothing was captured as a new change on the passive: no echo.
    assert_eq!(all(&p).await, src);
}

// ------------------------------------------------------------ wake-ups

/// A waiting reader sees commits of another connection quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sees_commits_within_milliseconds() {
    const N: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let s = Arc::new(initialised(&db, "a", "a").await);
    s.wait_for_commit(Duration::from_millis(10))
        .await
        .expect("drain");
    let app = Arc::new(Mutex::new(app_conn(&db).expect("open")));
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let woke = s.wait_for_commit(Duration::from_secs(10)).await;
                (woke, Instant::now())
            })
        };
        // Let the waiter settle into its wait.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let app = app.clone();
        let t0 = tokio::task::spawn_blocking(move || {
            let c = app.lock().expect("app");
            let t0 = Instant::now();
            c.execute("INSERT INTO projects(name) VALUES (?1)", [format!("p{i}")])
                .expect("commit");
            t0
        })
        .await
        .expect("join");
        let (woke, t1) = waiter.await.expect("join");
        assert!(woke.expect("wait"), "commit {i} not reported");
        lat.push(t1.saturating_duration_since(t0));
    }
    lat.sort();
    let median = lat[N / 2];
    println!(
        "commit wake-up latency over {N} commits: min {:?} median {:?} p90 {:?} max {:?}",
        lat[0],
        median,
        lat[N * 9 / 10],
        lat[N - 1]
    );
    assert!(median < Duration::from_millis(10), "median {median:?}");
}

/// CPU seconds (user + system) of this process, from /proc/self/stat
/// (Linux reports them in USER_HZ = 100 ticks per second).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Run by `an_idle_waiter_uses_no_cpu` in a process of its own, so other
/// tests' work does not count; it measures and asserts on its own too.
#[tokio::test]
#[ignore = "run in its own process by an_idle_waiter_uses_no_cpu"]
async fn idle_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let s = initialised(&db, "a", "a").await;
    s.wait_for_commit(Duration::from_millis(10))
        .await
        .expect("drain");
    let idle = Duration::from_secs(2);
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let woke = s.wait_for_commit(idle).await.expect("wait");
    let wall = t0.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    assert!(!woke, "nothing committed");
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "IDLE_PROBE cpu={:?} wall={:?} share={:.2}%",
        cpu,
        wall,
        share * 100.0
    );
    assert!(
        share < 0.05,
        "an idle waiter used {:.1}% of a core",
        share * 100.0
    );
}

#[test]
fn an_idle_waiter_uses_no_cpu() {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([
            "store::sqlite::tests::idle_probe",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the idle probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find("IDLE_PROBE").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "the probe printed no figures:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("{line}");
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

// ------------------------------------------------------------ WAL checkpoints

#[tokio::test]
async fn a_passive_applying_steadily_keeps_its_wal_short() {
    // The checkpointer acts on the length the writer's commits report and
    // restarts the WAL under a short hold of the writer. Without either the
    // WAL grows to the hard limit (and only a truncation, which stalls the
    // applier, brings it back).
    let dir = tempfile::tempdir().expect("tempdir");
    let adb = dir.path().join("a.db");
    let pdb = dir.path().join("b.db");
    let a = initialised(&adb, "a", "a").await;
    let app = app_conn(&adb).expect("open");
    app.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
         INSERT INTO projects(name, description) SELECT 'p' || i, hex(randomblob(1500)) FROM n;",
    )
    .expect("write");
    let changes = all(&a).await;
    let p = initialised(&pdb, "b", "a").await;

    let wal = dir.path().join("b.db-wal");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut largest = 0;
            while !stop.load(Ordering::Relaxed) {
                largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(2));
            }
            largest
        })
    };
    for batch in changes.chunks(4) {
        p.apply(batch, true).await.expect("apply");
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let largest = watch.join().expect("watch");
    let page: i64 = Connection::open(&pdb)
        .expect("open")
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    let frames = largest / (page as u64 + 24);
    // 6,000 rows of ~3 KB are well over the hard limit's worth of frames.
    assert!(
        frames < checkpoint::HARD_LIMIT_FRAMES as u64 * 3 / 4,
        "the passive's WAL grew to {frames} frames (restart at {}, hard limit {})",
        checkpoint::RESTART_FRAMES,
        checkpoint::HARD_LIMIT_FRAMES
    );
    assert!(
        frames > 100,
        "the applies went through the WAL: {frames} frames"
    );
    assert_eq!(
        p.checksums().await.expect("sums"),
        a.checksums().await.expect("sums")
    );
}

/// The folder watch is armed only while someone waits: once a wait has
/// returned, the application's writes raise no events at all (each would
/// wake a watching thread, a cost every writer of the database pays).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_folder_watch_is_disarmed_while_nobody_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let s = initialised(&db, "a", "a").await;
    let app = app_conn(&db).expect("open");
    for i in 0..3 {
        let (woke, ()) = tokio::join!(s.wait_for_commit(Duration::from_secs(10)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            app.execute("INSERT INTO projects(name) VALUES (?1)", [format!("p{i}")])
                .expect("commit");
        });
        assert!(woke.expect("wait"), "commit {i} not reported");
        // More writes after the wait: the one-shot watch has fired and
        // nothing re-armed it.
        app.execute("UPDATE projects SET description = 'x'", [])
            .expect("write");
        assert_eq!(s.inner.waiter.armed_watches(), 0, "after wait {i}");
    }
    // Armed again by the next wait, which sees the writes made meanwhile.
    assert!(
        s.wait_for_commit(Duration::from_millis(50))
            .await
            .expect("wait")
    );
}
