//! Issue 17's "must show" for the scheduler-shaped fixture
//! (schemas/examples/scheduler.*.sql), with real `understudy run` processes
//! on real SQLite and PostgreSQL databases: the application creates its
//! tables, `init` installs capture on them, a seeded workload of
//! multi-table application transactions converges row for row on every
//! member (checksums and `understudy verify`), kill -9 of the active
//! elects a new one that takes over the dead member's jobs and lets the
//! application insert with default ids, the old active comes back
//! identical; SQLite and PostgreSQL members replicate in both directions
//! with one fingerprint; a secret column's marker never leaves the
//! database (change log output, agents' logs, status, metrics, divergence
//! exports); a member whose tables differ is refused until the operator
//! fixes them; a rowid SQLite reuses reaches a PostgreSQL member intact.
//!
//! Must never: use a PostgreSQL server other than the harness's (pg.rs),
//! wait by sleeping where a condition can be polled, or leave a process
//! behind (clusters kill their agents on drop, the harness its server).

use integration_tests::pg::{TestDb, shared_server};
use integration_tests::scheduler::{self as sched, App, Gen, TABLES};
use integration_tests::{actives, control_cli, seed, understudy_bin, wait_until};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::store::TableChecksum;

/// The known value of a secret column the secrets checks look for.
const MARKER: &[u8] = b"SECRET-MARKER-7f3a";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum B {
    Sqlite,
    Pg,
}

/// A member database of backend `b`; PostgreSQL databases live on the
/// harness's server and are dropped with their guard in `keep`.
fn member_db(b: B, dir: &Path, id: &str, keep: &mut Vec<TestDb>) -> DatabaseUrl {
    match b {
        B::Sqlite => DatabaseUrl::Sqlite(dir.join(format!("{id}.db"))),
        B::Pg => {
            let t = shared_server()
                .expect("test PostgreSQL server")
                .create_database(&format!("sched_{id}"))
                .expect("test database");
            let url = DatabaseUrl::Postgres(t.url.clone());
            keep.push(t);
            url
        }
    }
}

/// Cluster files with the fixture's `[capture]`/`[takeover]`, and the
/// fixture's tables created on every member as the application would.
/// Not initialised: the caller may still change a member's tables.
async fn fixture_cluster(
    dir: &Path,
    members: &[(&str, DatabaseUrl)],
    options: ClusterOptions,
) -> LocalCluster {
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
            extra_top: sched::capture_toml(),
            ..options
        },
    )
    .expect("cluster files");
    for (id, url) in members {
        sched::create_fixture(url)
            .await
            .unwrap_or_else(|e| panic!("fixture tables on {id}: {e:#}"));
    }
    cl
}

fn init(cl: &LocalCluster) {
    cl.init_all().unwrap_or_else(|e| panic!("init: {e}"));
}

fn url(cl: &LocalCluster, id: &str) -> DatabaseUrl {
    cl.member(id).database.clone().expect("a data member")
}

fn dump(cl: &LocalCluster) {
    for m in &cl.members {
        eprintln!("--- {} log tail:\n{}", m.id, cl.log_tail(m.id.as_str(), 40));
    }
}

/// Wait until every member holds the active's head; fail at once, with
/// the line, when a member's log shows that it cannot apply a change (a
/// constraint its database enforces refused it: it would retry forever).
async fn converge(cl: &LocalCluster, active: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let Err(e) = cl.wait_converged(active, 1, Duration::from_secs(2)).await else {
            return;
        };
        if let Some((id, line)) = apply_failure(cl) {
            dump(cl);
            panic!("{what}: member {id} cannot apply the active's changes: {line}");
        }
        if Instant::now() > deadline {
            dump(cl);
            panic!("{what}: {e}");
        }
    }
}

/// The last log line of a member whose database refused an applied
/// change twice, even one at a time in log order (without the terminal
/// colours). A refusal of a set-based PostgreSQL apply alone is not one:
/// the agent applies those changes again one at a time.
fn apply_failure(cl: &LocalCluster) -> Option<(String, String)> {
    for m in &cl.members {
        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
        let ended: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("replication stream from the active ended") && l.contains("violates")
            })
            .collect();
        if ended.len() >= 2 {
            return Some((m.id.to_string(), strip_colours(ended[ended.len() - 1])));
        }
    }
    None
}

fn strip_colours(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for ch in s.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

async fn member_checksums(cl: &LocalCluster, id: &str) -> Vec<TableChecksum> {
    sched::checksums(&url(cl, id), &cl.member(id).capture())
        .await
        .unwrap_or_else(|e| panic!("checksums of {id}: {e:#}"))
}

/// Every captured table's checksum is the same on `ids` (the first is the
/// reference), and there are checksums for all nine tables.
async fn assert_identical(cl: &LocalCluster, ids: &[&str]) {
    let reference = member_checksums(cl, ids[0]).await;
    let names: BTreeSet<&str> = reference.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(
        names,
        TABLES.iter().copied().collect::<BTreeSet<_>>(),
        "checksums of {} cover every captured table",
        ids[0]
    );
    for id in &ids[1..] {
        let sums = member_checksums(cl, id).await;
        if sums != reference {
            let counts = |s: &[TableChecksum]| {
                s.iter()
                    .map(|t| format!("{}={}", t.table, t.rows))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            dump(cl);
            panic!(
                "the tables of {id} differ from {}'s:\n{id}: {}\n{}: {}\n{sums:#?}\n{reference:#?}",
                ids[0],
                counts(&sums),
                ids[0],
                counts(&reference)
            );
        }
    }
    let rows: Vec<String> = reference
        .iter()
        .map(|t| format!("{}={}", t.table, t.rows))
        .collect();
    eprintln!("identical on {ids:?}: {}", rows.join(" "));
}

fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(understudy_bin());
    // A developer's UNDERSTUDY_* variables must not change the config
    // under test.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("UNDERSTUDY_")) {
        cmd.env_remove(k);
    }
    cmd.args(args).output().expect("run understudy")
}

fn cfg(cl: &LocalCluster, id: &str) -> String {
    cl.member(id)
        .config
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// `understudy verify --config <id's config> --json`: exit 0, verdict
/// `match`, every data member with all nine tables.
fn verify(cl: &LocalCluster, from: &str) {
    let c = cfg(cl, from);
    let out = run(&["verify", "--config", &c, "--json", "--timeout-secs", "60"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(0) {
        dump(cl);
        panic!(
            "verify (from {from}) exited {:?}:\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("verify --json");
    assert_eq!(doc["verdict"], "match", "{doc:#}");
    let members = doc["members"].as_array().expect("members");
    assert_eq!(
        members.len(),
        cl.members.len(),
        "verify checked every member: {doc:#}"
    );
    for m in members {
        assert_eq!(
            m["tables"].as_array().map(Vec::len),
            Some(TABLES.len()),
            "{m:#}"
        );
    }
}

/// `understudy tables --config <id> --json`'s fingerprint.
fn fingerprint(cl: &LocalCluster, id: &str) -> String {
    let out = run(&["tables", "--config", &cfg(cl, id), "--json"]);
    assert!(
        out.status.success(),
        "tables on {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tables --json");
    doc["fingerprint"]
        .as_str()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| panic!("no fingerprint from {id}: {doc:#}"))
        .to_string()
}

/// Wait until a member other than `old` answers `/active` (never two at
/// once) and return it.
async fn wait_new_active(cl: &LocalCluster, old: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let now = actives(cl).await;
        assert!(now.len() <= 1, "two actives at once: {now:?}");
        if let Some(w) = now.into_iter().find(|m| m != old) {
            eprintln!("{w} is the active {:?} after {old} died", start.elapsed());
            return w;
        }
        if start.elapsed() > timeout {
            dump(cl);
            panic!("no member became the active within {timeout:?} after {old} died");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every table has rows, a value over 1 MB is stored, jobs are owned by
/// more than one member and some have no owner: the workload covered
/// what the fixture is for.
async fn assert_workload_coverage(u: &DatabaseUrl) {
    let counts = sched::row_counts(u).await.expect("row counts");
    for (t, n) in &counts {
        assert!(*n > 0, "the workload left {t} empty: {counts:?}");
    }
    let mut app = App::connect(u).await.expect("connect");
    let big = app
        .query(
            "SELECT count(*) FROM storage WHERE length(data) > 1000000",
            &[],
        )
        .await
        .expect("big values");
    assert_eq!(big[0][0].int(), Some(1), "one value over 1 MB");
    let non_ascii = app
        .query(
            "SELECT count(*) FROM scheduled_execution WHERE job_name LIKE $1:text",
            &[sched::P::T(format!("%{}%", sched::NON_ASCII))],
        )
        .await
        .expect("non-ASCII names");
    assert!(
        non_ascii[0][0].int().unwrap_or(0) > 0,
        "non-ASCII job names"
    );
    let owners = sched::owners(u).await.expect("owners");
    assert!(owners.len() >= 3, "owners: {owners:?}");
    assert!(owners.contains_key(&None), "jobs without owner: {owners:?}");
    eprintln!("rows: {counts:?}; owners: {owners:?}");
}

/// The generator committed every kind of transaction the fixture is for
/// (cascading deletes of jobs and projects included).
fn assert_kinds(g: &Gen) {
    eprintln!("committed transactions: {:?}", g.stats());
    for kind in [
        "insert project and job",
        "insert job",
        "rename job",
        "change job flags",
        "edit step and option",
        "insert key",
        "update key",
        "delete key",
        "store a value over 1 MB",
        "delete job",
        "delete project",
        "describe project",
    ] {
        assert!(
            g.stats().get(kind).is_some_and(|n| *n > 0),
            "the workload committed no {kind:?}: {:?}",
            g.stats()
        );
    }
}

// ------------------------------------------------------------------ failover

/// Owner ids of members a, b, c in the PostgreSQL variant (Rundeck keeps
/// server UUIDs in `server_nodeuuid`).
const OWNER_UUIDS: [(&str, &str); 3] = [
    ("a", "3f9c0b6e-0000-4000-8000-00000000000a"),
    ("b", "3f9c0b6e-0000-4000-8000-00000000000b"),
    ("c", "3f9c0b6e-0000-4000-8000-00000000000c"),
];

/// 1 active + 2 passives of backend `b` converge under the workload;
/// kill -9 of the active; the new active took over the dead member's jobs
/// and takes inserts with default ids above every replicated id; the dead
/// member comes back identical.
async fn converge_and_fail_over(b: B, default_seed: u64, uuid_owners: bool) {
    let started = Instant::now();
    let s = seed(default_seed);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let members: Vec<(&str, DatabaseUrl)> = ["a", "b", "c"]
        .iter()
        .map(|id| (*id, member_db(b, d, id, &mut keep)))
        .collect();
    let mut cl = fixture_cluster(d, &members, ClusterOptions::default()).await;
    let owner = |m: &str| -> String {
        if uuid_owners {
            OWNER_UUIDS
                .iter()
                .find(|(id, _)| *id == m)
                .unwrap()
                .1
                .into()
        } else {
            m.to_string()
        }
    };
    if uuid_owners {
        sched::set_owner_ids(&cl, &OWNER_UUIDS).expect("owner ids");
    }
    init(&cl);
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();

    let a_url = url(&cl, "a");
    let (oa, ob, oc) = (owner("a"), owner("b"), owner("c"));
    let mut g = Gen::new(s, &[Some(&oa), Some(&ob), Some(&oc), None]);
    let n = match b {
        B::Sqlite => 300,
        B::Pg => 200,
    };
    let refused = sched::write(&a_url, &mut g, n)
        .await
        .unwrap_or_else(|e| panic!("workload on a: {e:#}"));
    eprintln!(
        "{n} transactions on a ({refused} refused attempts), {:?}",
        started.elapsed()
    );
    assert_kinds(&g);
    assert_workload_coverage(&a_url).await;
    converge(&cl, "a", "after the workload on a").await;
    assert_identical(&cl, &["a", "b", "c"]).await;
    verify(&cl, "a");
    eprintln!("converged and verified at {:?}", started.elapsed());

    let before = sched::owners(&a_url).await.unwrap();
    let max_before = sched::max_ids(&a_url).await.unwrap();
    let of = |m: &BTreeMap<Option<String>, i64>, o: &str| m.get(&Some(o.to_string())).copied();
    assert!(of(&before, &oa).unwrap_or(0) > 0, "a owns jobs: {before:?}");

    cl.kill("a");
    let winner = wait_new_active(&cl, "a", Duration::from_secs(20)).await;
    let other = if winner == "b" { "c" } else { "b" };
    let (ow, oo) = (owner(&winner), owner(other));
    let w_url = url(&cl, &winner);

    // The takeover: a's jobs are the winner's now, nobody else's moved.
    wait_until(
        Duration::from_secs(30),
        "the new active to take over a's jobs",
        || async {
            sched::owners(&w_url)
                .await
                .is_ok_and(|o| !o.contains_key(&Some(oa.clone())))
        },
    )
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    let after = sched::owners(&w_url).await.unwrap();
    assert_eq!(
        of(&after, &ow).unwrap_or(0),
        of(&before, &oa).unwrap_or(0) + of(&before, &ow).unwrap_or(0),
        "the winner owns its jobs and a's: before {before:?}, after {after:?}"
    );
    assert_eq!(of(&after, &oo), of(&before, &oo), "{other}'s jobs stay");
    assert_eq!(after.get(&None), before.get(&None), "unowned jobs stay");

    // The application's first inserts on the new active leave every id to
    // the database: above every id replicated before the failover. New
    // jobs belong to the living.
    g.set_owners(&[Some(&ow), Some(&oo), None]);
    let project = g.projects()[0].clone();
    let ids = sched::insert_with_default_ids(&w_url, &mut g, &project)
        .await
        .unwrap_or_else(|e| {
            dump(&cl);
            panic!("inserting with default ids on the new active {winner}: {e:#}")
        });
    for t in sched::ID_TABLES {
        let (new, max) = (ids.get(t).copied(), max_before[t]);
        assert!(
            new.is_some_and(|n| n > max),
            "{t}: the new active gave id {new:?}, not above {max}, the highest replicated id"
        );
    }
    eprintln!("default ids on {winner}: {ids:?} (highest before: {max_before:?})");

    sched::write(&w_url, &mut g, 60)
        .await
        .unwrap_or_else(|e| panic!("workload on {winner}: {e:#}"));

    cl.start("a").unwrap();
    converge(&cl, &winner, "after a came back").await;
    assert_eq!(cl.status("a").await.unwrap()["role"], "passive");
    assert_eq!(actives(&cl).await, vec![winner.clone()]);
    assert_identical(&cl, &[&winner, other, "a"]).await;
    let on_a = sched::owners(&a_url).await.unwrap();
    assert!(
        !on_a.contains_key(&Some(oa.clone())),
        "a came back with jobs it no longer owns: {on_a:?}"
    );
    verify(&cl, "a");
    eprintln!("{b:?} failover scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_tables_converge_and_survive_a_failover() {
    converge_and_fail_over(B::Sqlite, 1701, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_tables_on_postgres_converge_and_survive_a_failover() {
    converge_and_fail_over(B::Pg, 1702, true).await;
}

// ------------------------------------------------------------- mixed backends

/// a: SQLite (the first active), b: PostgreSQL, c: SQLite. One fingerprint
/// for both files; SQLite -> PostgreSQL and SQLite; a switchover to b;
/// PostgreSQL -> SQLite, with b's sequences moved past the ids SQLite gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_tables_replicate_between_sqlite_and_postgres() {
    let started = Instant::now();
    let s = seed(1703);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let members = [
        ("a", member_db(B::Sqlite, d, "a", &mut keep)),
        ("b", member_db(B::Pg, d, "b", &mut keep)),
        ("c", member_db(B::Sqlite, d, "c", &mut keep)),
    ];
    let mut cl = fixture_cluster(d, &members, ClusterOptions::default()).await;
    init(&cl);
    let prints: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|m| fingerprint(&cl, m))
        .collect();
    assert_eq!(
        prints[0], prints[1],
        "scheduler.sqlite.sql and scheduler.postgres.sql give different fingerprints"
    );
    assert_eq!(prints[0], prints[2]);

    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    for m in ["a", "b", "c"] {
        wait_until(
            Duration::from_secs(30),
            &format!("{m}'s /status to show the fingerprint of `tables`"),
            || async {
                cl.status(m)
                    .await
                    .is_ok_and(|st| st["schema"]["fingerprint"] == prints[0].as_str())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    let a_url = url(&cl, "a");
    let mut g = Gen::new(s, &[Some("a"), Some("b"), Some("c"), None]);
    g.store_marker(MARKER);
    sched::write(&a_url, &mut g, 200)
        .await
        .unwrap_or_else(|e| panic!("workload on a: {e:#}"));
    assert_kinds(&g);
    assert_workload_coverage(&a_url).await;
    converge(&cl, "a", "SQLite active a").await;
    assert_identical(&cl, &["a", "b", "c"]).await;
    verify(&cl, "a");
    assert_same_rows(&cl, &["a", "b", "c"]).await;
    // PostgreSQL's log keeps images as captured; SQLite's reads rows: both
    // renderings of `understudy log` redact.
    assert_no_secret(&cl, "after SQLite -> PostgreSQL").await;
    eprintln!(
        "SQLite -> PostgreSQL, SQLite verified at {:?}",
        started.elapsed()
    );

    // A schema change from the SQLite active, one file per backend: the
    // PostgreSQL passive runs its own DDL at the entry's position.
    migrate_mixed(
        &cl,
        "a",
        d,
        "ALTER TABLE project ADD COLUMN owner_team VARCHAR(64) NULL;\n\
         UPDATE project SET owner_team = 'ops';\n",
        "ALTER TABLE project ADD COLUMN owner_team varchar(64) NULL;\n\
         UPDATE project SET owner_team = 'ops';\n",
        1,
    );
    sched::write(&a_url, &mut g, 40)
        .await
        .unwrap_or_else(|e| panic!("workload on a after the migration: {e:#}"));
    converge(&cl, "a", "SQLite active a after a schema change").await;
    assert_identical(&cl, &["a", "b", "c"]).await;

    control_cli(&cl, "a", &["switchover", "--to", "b"]);
    cl.wait_active("b", Duration::from_secs(30)).await.unwrap();
    let b_url = url(&cl, "b");
    // And one from the PostgreSQL active: the SQLite passives run theirs.
    migrate_mixed(
        &cl,
        "b",
        d,
        "ALTER TABLE workflow_step ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;\n",
        "ALTER TABLE workflow_step ADD COLUMN retries integer NOT NULL DEFAULT 0;\n",
        2,
    );
    let max_before = sched::max_ids(&b_url).await.unwrap();
    let project = g.projects()[0].clone();
    let ids = sched::insert_with_default_ids(&b_url, &mut g, &project)
        .await
        .unwrap_or_else(|e| {
            dump(&cl);
            panic!("default ids on b after the switchover: {e:#}")
        });
    for t in sched::ID_TABLES {
        let (new, max) = (ids.get(t).copied(), max_before[t]);
        assert!(
            new.is_some_and(|n| n > max),
            "{t}: PostgreSQL member b gave id {new:?}, not above {max}, the highest id SQLite gave"
        );
    }
    sched::write(&b_url, &mut g, 120)
        .await
        .unwrap_or_else(|e| panic!("workload on b: {e:#}"));
    converge(&cl, "b", "PostgreSQL active b").await;
    assert_identical(&cl, &["b", "a", "c"]).await;
    verify(&cl, "c");
    assert_same_rows(&cl, &["b", "a", "c"]).await;
    for m in ["a", "b", "c"] {
        let st = cl.status(m).await.unwrap();
        assert_eq!(st["schema"]["version"], 2, "{m}: {st}");
    }
    eprintln!("mixed backends took {:?}", started.elapsed());
}

/// `understudy migrate --sqlite F --postgres F` through `via`: every member
/// confirms `version` (exit 0).
fn migrate_mixed(
    cl: &LocalCluster,
    via: &str,
    dir: &Path,
    sqlite: &str,
    postgres: &str,
    version: u64,
) {
    let (fs, fp) = (
        dir.join(format!("v{version}.sqlite.sql")),
        dir.join(format!("v{version}.postgres.sql")),
    );
    std::fs::write(&fs, sqlite).unwrap();
    std::fs::write(&fp, postgres).unwrap();
    let out = control_cli(
        cl,
        via,
        &[
            "migrate",
            "--sqlite",
            fs.to_str().unwrap(),
            "--postgres",
            fp.to_str().unwrap(),
            "--json",
            "--timeout-secs",
            "60",
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["version"], version, "{doc}");
    let mut confirmed: Vec<&str> = doc["confirmed"]
        .as_array()
        .expect("confirmed")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    confirmed.sort_unstable();
    assert_eq!(confirmed, ["a", "b", "c"], "{doc}");
}

/// Values read back through each member's own client agree: the rows
/// behind the checksums, for the columns whose forms differ most between
/// the backends (non-ASCII text, sizes of bytes, NULL counts).
async fn assert_same_rows(cl: &LocalCluster, ids: &[&str]) {
    let jobs_q =
        "SELECT CAST(uuid AS TEXT), job_name, group_path, server_nodeuuid FROM scheduled_execution";
    let keys_q = "SELECT namespace, dir, name, length(data) FROM storage";
    // Sorted here: the collations of the two backends need not agree.
    let sorted = |rows: Vec<Vec<sched::Cell>>| {
        let mut v: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
        v.sort();
        v
    };
    let mut reference: Option<(&str, Vec<String>, Vec<String>)> = None;
    for id in ids {
        let mut app = App::connect(&url(cl, id)).await.expect("connect");
        let jobs = sorted(app.query(jobs_q, &[]).await.expect("jobs"));
        let keys = sorted(app.query(keys_q, &[]).await.expect("storage sizes"));
        assert!(!jobs.is_empty() && !keys.is_empty());
        match &reference {
            None => reference = Some((id, jobs, keys)),
            Some((rid, rj, rk)) => {
                assert!(
                    &jobs == rj,
                    "scheduled_execution rows of {id} differ from {rid}'s"
                );
                assert!(&keys == rk, "storage sizes of {id} differ from {rid}'s");
            }
        }
    }
}

// ------------------------------------------------------------------ secrets

/// The forms a secret could leak in: as is, hex (how `log` shows bytes),
/// base64 (how exports show them).
fn leak_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use std::fmt::Write as _;
    let mut hex = String::new();
    for b in secret {
        let _ = write!(hex, "{b:02x}");
    }
    vec![
        secret.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        b64(secret).into_bytes(),
    ]
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn assert_no_marker(what: &str, bytes: &[u8]) {
    for form in leak_forms(MARKER) {
        assert!(
            !contains(bytes, &form),
            "the secret marker appears in {what} (as {:?})",
            String::from_utf8_lossy(&form)
        );
    }
}

fn ok(what: &str, out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_marker(&format!("{what} (stderr)"), &out.stderr);
    out.stdout.clone()
}

/// The marker is in no member's `understudy log` (text, JSON), agent log,
/// `/status`, `/metrics`, divergence list or export without
/// `--include-secrets`. The log of the active at least must show the
/// marker's row (redacted), so the check is not vacuous (a member that
/// installed a snapshot has no log from before it).
async fn assert_no_secret(cl: &LocalCluster, when: &str) {
    let mut shown = Vec::new();
    for m in &cl.members {
        let id = m.id.as_str();
        let c = cfg(cl, id);
        let text = ok(
            &format!("{when}: log on {id}"),
            &run(&["log", "--config", &c, "--limit", "1000000"]),
        );
        assert_no_marker(&format!("{when}: `understudy log` on {id}"), &text);
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("keys/marker")).collect();
        for line in &lines {
            assert!(line.contains("<redacted"), "{when}: {id}: {line}");
        }
        let json = ok(
            &format!("{when}: log --json on {id}"),
            &run(&["log", "--config", &c, "--limit", "1000000", "--json"]),
        );
        assert_no_marker(&format!("{when}: `understudy log --json` on {id}"), &json);
        let doc: serde_json::Value = serde_json::from_slice(&json).expect("log --json");
        let rows: Vec<&serde_json::Value> = doc
            .as_array()
            .expect("array")
            .iter()
            .filter(|c| c["table"] == "storage" && c["row"]["dir"] == "keys/marker")
            .collect();
        assert_eq!(
            rows.len(),
            lines.len(),
            "{when}: {id}: text and JSON show the same changes"
        );
        for r in &rows {
            assert_eq!(
                r["row"]["data"],
                format!("<redacted {} bytes>", MARKER.len()),
                "{when}: {id}: {r}"
            );
        }
        if !rows.is_empty() {
            shown.push(id.to_string());
        }
        for args in [
            vec!["divergence", "list", "--config", &c, "--include-resolved"],
            vec!["divergence", "list", "--config", &c, "--json"],
            vec!["divergence", "export", "--config", &c, "--include-resolved"],
            vec!["divergence", "export", "--config", &c, "--json"],
        ] {
            let what = format!("{when}: {} on {id}", args.join(" "));
            assert_no_marker(&what, &ok(&what, &run(&args)));
        }
        let log = std::fs::read(&m.log).unwrap_or_default();
        assert!(!log.is_empty(), "{id} logged nothing");
        assert_no_marker(&format!("{when}: the agent log of {id}"), &log);
        for path in ["/status", "/metrics", "/history"] {
            let r = understudy::status::client::request(
                &m.status,
                "GET",
                path,
                None,
                None,
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|e| panic!("{when}: GET {path} on {id}: {e}"));
            assert_eq!(r.code, 200, "{when}: GET {path} on {id}: {}", r.body);
            assert_no_marker(&format!("{when}: GET {path} on {id}"), r.body.as_bytes());
        }
    }
    let active = actives(cl).await;
    assert!(
        active.iter().all(|a| shown.contains(a)) && !shown.is_empty(),
        "{when}: the marker's row is not in the log of the active {active:?} (shown by {shown:?})"
    );
    eprintln!("{when}: no marker anywhere; its row shows redacted in the logs of {shown:?}");
}

/// A storage row whose secret `data` is a known marker: replicated, shown
/// redacted, and quarantined with a former active's divergent tail; the
/// marker is nowhere an operator looks, and in an export only when
/// secrets are asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_columns_never_leave_the_database() {
    let started = Instant::now();
    let s = seed(1704);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let members: Vec<(&str, DatabaseUrl)> = ["a", "b", "c"]
        .iter()
        .map(|id| (*id, member_db(B::Sqlite, d, id, &mut keep)))
        .collect();
    // A longer lease than the default: a must still take a write after
    // its passives died (below).
    let mut cl = fixture_cluster(
        d,
        &members,
        ClusterOptions {
            lease_ms: 2000,
            failover_ms: 3000,
            ..ClusterOptions::default()
        },
    )
    .await;
    init(&cl);
    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let a_url = url(&cl, "a");
    let mut g = Gen::new(s, &[Some("a"), Some("b"), None]);
    g.store_marker(MARKER);
    sched::write(&a_url, &mut g, 40)
        .await
        .unwrap_or_else(|e| panic!("workload on a: {e:#}"));
    converge(&cl, "a", "after the marker was written").await;
    assert_identical(&cl, &["a", "b", "c"]).await;
    assert_no_secret(&cl, "replicated").await;

    // A divergent tail on a that holds the marker: its passives die, a
    // commits once more within its lease and dies too; b and c come back
    // and promote one of them without that change; a returns and
    // quarantines it. (Freezing the passives would not do: the change
    // would wait in their sockets and be applied when they resume.)
    cl.kill("b");
    cl.kill("c");
    g.store_marker(MARKER);
    let tail = g.next_tx();
    let mut app = App::connect(&a_url).await.unwrap();
    app.run(&tail)
        .await
        .unwrap_or_else(|e| panic!("a refused the write right after its passives died: {e:#}"));
    g.committed(&tail);
    drop(app);
    cl.kill("a");
    cl.start("b").unwrap();
    cl.start("c").unwrap();
    let winner = wait_new_active(&cl, "a", Duration::from_secs(30)).await;
    let w_url = url(&cl, &winner);
    g.set_owners(&[Some(&winner), None]);
    sched::write(&w_url, &mut g, 10)
        .await
        .unwrap_or_else(|e| panic!("workload on {winner}: {e:#}"));
    cl.start("a").unwrap();
    converge(&cl, &winner, "after a came back with a divergent tail").await;
    wait_until(
        Duration::from_secs(30),
        "a to report its quarantined tail",
        || async {
            cl.status("a")
                .await
                .is_ok_and(|s| s["divergent_changes"].as_u64().is_some_and(|n| n > 0))
        },
    )
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    assert_identical(&cl, &[&winner, "a", if winner == "b" { "c" } else { "b" }]).await;

    // The quarantined marker: listed without content, exported only with
    // --include-secrets (which proves it is there to be found).
    let c = cfg(&cl, "a");
    let list = ok(
        "divergence list",
        &run(&["divergence", "list", "--config", &c]),
    );
    assert!(
        String::from_utf8_lossy(&list).contains("storage"),
        "the tail's storage row is listed: {}",
        String::from_utf8_lossy(&list)
    );
    let with = ok(
        "divergence export --include-secrets",
        &run(&["divergence", "export", "--config", &c, "--include-secrets"]),
    );
    assert!(
        contains(&with, b64(MARKER).as_bytes()),
        "the export with --include-secrets lacks the quarantined marker, so the checks without it prove nothing"
    );
    assert_no_secret(&cl, "after the rejoin").await;
    verify(&cl, &winner);
    eprintln!("secrets test took {:?}", started.elapsed());
}

// ------------------------------------------------------------ schema refusal

/// c's `notification` has one column more than a's: a refuses c in the
/// handshake (both logs and c's `/status` name notification.priority),
/// nothing is applied on c; once the operator drops the column, runs
/// `init` and restarts c, it catches up and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_tables_differ_is_refused_until_fixed() {
    let started = Instant::now();
    let s = seed(1705);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let members: Vec<(&str, DatabaseUrl)> = ["a", "b", "c"]
        .iter()
        .map(|id| (*id, member_db(B::Sqlite, d, id, &mut keep)))
        .collect();
    let mut cl = fixture_cluster(
        d,
        &members,
        ClusterOptions {
            auto_failover: false,
            ..ClusterOptions::default()
        },
    )
    .await;
    let c_url = url(&cl, "c");
    App::connect(&c_url)
        .await
        .unwrap()
        .batch("ALTER TABLE notification ADD COLUMN priority INTEGER NULL")
        .await
        .unwrap();
    init(&cl);
    let (fa, fb, fc) = (
        fingerprint(&cl, "a"),
        fingerprint(&cl, "b"),
        fingerprint(&cl, "c"),
    );
    assert_eq!(fa, fb);
    assert_ne!(fa, fc, "an extra column must change the fingerprint");

    cl.start_all().unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let a_url = url(&cl, "a");
    let mut g = Gen::new(s, &[Some("a"), None]);
    sched::write(&a_url, &mut g, 40)
        .await
        .unwrap_or_else(|e| panic!("workload on a: {e:#}"));

    let head = |st: &serde_json::Value| st["position"]["seq"].as_u64();
    wait_until(
        Duration::from_secs(30),
        "b to reach a's head and c to show why it is blocked",
        || async {
            let (Ok(a), Ok(b), Ok(c)) = (
                cl.status("a").await,
                cl.status("b").await,
                cl.status("c").await,
            ) else {
                return false;
            };
            head(&a).is_some_and(|h| h > 0)
                && head(&b) == head(&a)
                && c["apply"]["state"] == "blocked"
        },
    )
    .await
    .unwrap_or_else(|e| {
        dump(&cl);
        panic!("{e}")
    });
    let st = cl.status("c").await.unwrap();
    let reason = st["apply"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("notification.priority"),
        "c's /status must name the table and column: {st}"
    );
    eprintln!("c is blocked: {reason}");
    for m in ["a", "c"] {
        wait_until(
            Duration::from_secs(10),
            &format!("{m}'s log to name notification.priority"),
            || async {
                std::fs::read_to_string(&cl.member(m).log)
                    .is_ok_and(|l| l.contains("notification.priority"))
            },
        )
        .await
        .unwrap_or_else(|e| {
            dump(&cl);
            panic!("{e}")
        });
    }
    // Nothing applied on c: no rows, no position.
    assert_eq!(head(&st), Some(0), "c applied something: {st}");
    let counts = sched::row_counts(&c_url).await.unwrap();
    assert!(
        counts.values().all(|n| *n == 0),
        "rows were applied to c despite the refusal: {counts:?}"
    );

    // The operator's fix: stop c, make its table the same, init, start.
    cl.stop("c", Duration::from_secs(15));
    // SQLite 3.35+ drops a column in place, but not one a trigger names:
    // as the README says, the table's capture triggers go first (with the
    // agent stopped), and `init` generates them anew.
    if let Err(e) = App::connect(&c_url)
        .await
        .unwrap()
        .batch(
            "DROP TRIGGER us_capture_notification_ins;
             DROP TRIGGER us_capture_notification_upd;
             DROP TRIGGER us_capture_notification_del;
             ALTER TABLE notification DROP COLUMN priority",
        )
        .await
    {
        panic!("the README's procedure to drop the extra column on c failed: {e:#}");
    }
    let out = run(&["init", "--config", &cfg(&cl, "c")]);
    assert!(
        out.status.success(),
        "init after the fix: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fingerprint(&cl, "c"), fa, "c's tables are the same now");
    cl.start("c").unwrap();
    sched::write(&a_url, &mut g, 10)
        .await
        .unwrap_or_else(|e| panic!("more writes on a: {e:#}"));
    converge(&cl, "a", "c after its fix").await;
    let st = cl.status("c").await.unwrap();
    assert_eq!(st["apply"]["state"], "ok", "{st}");
    assert_identical(&cl, &["a", "b", "c"]).await;
    verify(&cl, "a");
    eprintln!("schema refusal test took {:?}", started.elapsed());
}

// ------------------------------------------------- SQLite rowid reuse

/// SQLite gives a deleted rowid to the next row of a plain rowid table
/// (`workflow`, `rdoption`): a job's workflow and option are deleted with
/// the job, and the next job's get the same ids. With PostgreSQL member b
/// stopped, the three transactions reach b in one batch. A change log that
/// reads each upsert's row when it ships (the "lean" log) gives the first
/// workflow upsert the reused row's image, whose job is inserted later in
/// the batch, and PostgreSQL checks foreign keys statement by statement:
/// b never applied the batch (seen with the lean log; see the report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_sqlite_rowid_replicates_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keep = Vec::new();
    let members = [
        ("a", member_db(B::Sqlite, d, "a", &mut keep)),
        ("b", member_db(B::Pg, d, "b", &mut keep)),
        ("c", member_db(B::Sqlite, d, "c", &mut keep)),
    ];
    let mut cl = fixture_cluster(
        d,
        &members,
        ClusterOptions {
            auto_failover: false,
            ..ClusterOptions::default()
        },
    )
    .await;
    init(&cl);
    cl.start("a").unwrap();
    cl.start("c").unwrap();
    cl.wait_active("a", Duration::from_secs(30)).await.unwrap();
    let a_url = url(&cl, "a");
    let mut g = Gen::new(seed(1706), &[Some("a")]);
    let mut app = None;
    let mut run_one = async |tx: sched::Tx| {
        let (ids, _) = sched::run_retrying(&mut app, &a_url, &tx, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        ids
    };
    let first = g.job_tx("p1", true, Some(1), Some(1), Some(0));
    let first_ids = run_one(first.clone()).await;
    let uuid = match &first.effect {
        sched::Effect::NewJob { uuid, .. } => uuid.clone(),
        _ => unreachable!(),
    };
    run_one(Gen::delete_job_tx(&uuid)).await;
    let second = g.job_tx("p1", false, Some(1), Some(1), Some(0));
    let second_ids = run_one(second.clone()).await;
    let (first_ids, second_ids) = (
        sched::ids_by_table(&first, &first_ids),
        sched::ids_by_table(&second, &second_ids),
    );
    eprintln!("ids of the first job: {first_ids:?}; of the second: {second_ids:?}");
    for t in ["workflow", "rdoption"] {
        assert_eq!(first_ids[t], second_ids[t], "SQLite reused the {t} id");
    }
    assert_ne!(
        first_ids["scheduled_execution"], second_ids["scheduled_execution"],
        "AUTOINCREMENT never reuses an id"
    );
    cl.start("b").unwrap();
    converge(&cl, "a", "PostgreSQL member b after a reused rowid").await;
    assert_identical(&cl, &["a", "b", "c"]).await;
}
