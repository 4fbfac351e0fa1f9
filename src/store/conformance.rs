//! The one behaviour suite every member database backend runs.
//!
//! Owns: the contract of [`MemberStore`] written down as executable cases
//! (capture, whole transactions, apply without echo, fencing, lease, state
//! durability, trimming, checksums, wake-ups, secrecy, snapshots, rejoin
//! quarantine, row takeover, epoch-history merge, refusal of changes of
//! another shape). A backend's test
//! module implements [`Backend`] for a throw-away database factory and calls
//! each `pub async fn` case from its own `#[tokio::test]`, so a failure names
//! the case.
//! Must never: use SQL that is not valid on both SQLite and PostgreSQL in
//! [`Backend::app_exec`] / [`Backend::app_query_i64`], or depend on timing
//! beyond generous bounds.
//!
//! Contract points a backend must honour beyond the trait's doc comments:
//! - `init` on the initial active leaves the lease unset (writes accepted);
//!   on any other member the database starts fenced.
//! - `set_role` to a role other than `Active` also expires the lease, so a
//!   later `set_role(Active, ..)` refuses writes until `renew_lease`.
//! - A refused write's error names the active member (fenced roles) or says
//!   the lease "ran out" (an active whose lease expired).
//! - A project delete captures the deletes of its jobs, whatever the writer's
//!   foreign-key settings.
//! - An UPDATE that changes a primary key is captured as a delete of the old
//!   key and an upsert of the new one.
//! - The example schema is described exactly as [`example_catalog`] says
//!   (same fingerprint on every backend, so mixed clusters agree).
//! - A change (or snapshot row) naming a table the member does not capture,
//!   or with the wrong number of values or key width, is refused with
//!   [`StoreError::Shape`] naming the table, and changes nothing.
//! - No error's `Display` or `Debug` shows a value of a secret column.
//!
//! Shapes for the backends' test modules (issue 17):
//! - [`Backend`] is unchanged; `fresh`/`reopen` open the store with
//!   `CaptureSpec::example()`.
//! - Row builders take the catalog first and return images:
//!   `project(&cat, name, description, config, at) -> RowImage`,
//!   `job(&cat, id, project, name, at) -> RowImage` (flags on, optional
//!   columns NULL; change columns with `set(&cat, &mut row, "column", v)`),
//!   `key(&cat, path, kind, content, meta, at) -> RowImage`,
//!   `del("jobs", "j1") -> ChangeOp`; `image(&cat, table, &[(column,
//!   value)])` for anything else. `cat` is `store.catalog()`, or
//!   [`example_catalog`] where there is no database.

use super::{
    ChangeRead, EpochRecord, InitParams, MemberStore, ReplicationState, StoreError, TableChecksum,
    Vote, checksums_at_position, checksums_of,
};
use crate::model::{Change, ChangeOp, Epoch, MemberId, Position, Role, RowImage, key_text};
use crate::tables::{Catalog, TableName, Value};
use std::time::{Duration, Instant};

pub mod migrate;
pub mod rows;
pub use migrate::{
    drift_is_refused_until_repaired, schema_change_is_logged_and_applied_at_its_position,
    snapshot_brings_missed_schema_changes,
};
pub use rows::{del, example_catalog, flag, get, image, job, key, opt_text, project, set, text};

/// A factory of throw-away databases of one backend, and an application's
/// view of them (a connection that is not the agent's).
#[allow(async_fn_in_trait)]
pub trait Backend {
    type Store: MemberStore;
    /// Names one test database (a file path, a connection URL).
    type Db: Clone;
    /// A new empty database and a store opened on it (`init` not yet run)
    /// with the example schema's capture (`CaptureSpec::example()`).
    async fn fresh(&self) -> (Self::Db, Self::Store);
    /// Drop the store and open the same database again (an agent restart),
    /// with the example schema's capture.
    async fn reopen(&self, db: &Self::Db, store: Self::Store) -> Self::Store;
    /// Run plain SQL (possibly several statements, e.g. `BEGIN; ...; COMMIT`)
    /// on a new application connection of the database; `Err` carries the
    /// database's message. A failed batch leaves no open transaction behind.
    async fn app_exec(&self, db: &Self::Db, sql: &str) -> Result<(), String>;
    /// Run a query returning one integer (first column of the first row;
    /// `None` when there is no row or it is NULL) on an application connection.
    async fn app_query_i64(&self, db: &Self::Db, sql: &str) -> Result<Option<i64>, String>;
    /// An SQL literal for these bytes in this dialect.
    fn blob(&self, bytes: &[u8]) -> String;
}

const MANY: usize = 1_000_000;
const HUGE: usize = 1 << 30;

fn m(s: &str) -> MemberId {
    MemberId::new(s)
}

fn params(member: &str, initial_active: &str) -> InitParams {
    InitParams {
        cluster: "conformance".into(),
        member: m(member),
        initial_active: m(initial_active),
    }
}

fn jobs() -> TableName {
    TableName::new("jobs")
}

/// Sequence (where the backend needs it) and read everything after `after`.
async fn read_after<S: MemberStore>(s: &S, after: u64) -> ChangeRead {
    s.sequence().await.expect("sequence");
    s.read_changes(after, MANY, HUGE)
        .await
        .expect("read_changes")
}

async fn all_changes<S: MemberStore>(s: &S) -> Vec<Change> {
    let r = read_after(s, 0).await;
    assert!(r.at_head, "an unlimited read must reach the head");
    r.changes
}

fn ops(changes: &[Change]) -> Vec<ChangeOp> {
    changes.iter().map(|c| c.op.clone()).collect()
}

/// A sort key for changes whose order does not matter (`Debug` hides
/// values, so it cannot tell rows apart).
fn op_order(op: &ChangeOp) -> (String, String, &'static str) {
    let c = Change {
        pos: Position::ZERO,
        op: op.clone(),
    };
    (c.table_str().to_string(), key_text(c.key()), c.op_name())
}

fn assert_contiguous(changes: &[Change], first_seq: u64) {
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(
            c.pos.seq,
            first_seq + i as u64,
            "positions must be contiguous and increasing: {changes:#?}"
        );
    }
}

async fn exec<B: Backend>(b: &B, db: &B::Db, sql: &str) {
    if let Err(e) = b.app_exec(db, sql).await {
        panic!("application SQL failed: {e}\nSQL: {sql}");
    }
}

async fn refused<B: Backend>(b: &B, db: &B::Db, sql: &str) -> String {
    match b.app_exec(db, sql).await {
        Ok(()) => panic!("write was expected to be refused but succeeded: {sql}"),
        Err(e) => e,
    }
}

async fn count<B: Backend>(b: &B, db: &B::Db, table: &str) -> i64 {
    b.app_query_i64(db, &format!("SELECT COUNT(*) FROM {table}"))
        .await
        .expect("count query")
        .unwrap_or(0)
}

/// A fresh, initialised initial active (member `a`).
async fn active<B: Backend>(b: &B) -> (B::Db, B::Store) {
    let (db, s) = b.fresh().await;
    s.init(&params("a", "a")).await.expect("init active");
    (db, s)
}

/// A fresh, initialised passive (member `b`, initial active `a`).
async fn passive<B: Backend>(b: &B) -> (B::Db, B::Store) {
    let (db, s) = b.fresh().await;
    s.init(&params("b", "a")).await.expect("init passive");
    (db, s)
}

async fn now<S: MemberStore>(s: &S) -> i64 {
    s.db_now_ms().await.expect("db_now_ms")
}

/// A few rows in all three tables, committed as separate transactions.
async fn seed<B: Backend>(b: &B, db: &B::Db) {
    exec(b, db, "INSERT INTO projects(name, description, config, updated_at) VALUES ('p1', 'first', '{\"a\":1}', 1000)").await;
    exec(b, db, "INSERT INTO jobs(id, project, name, group_path, description, definition, schedule, schedule_enabled, execution_enabled, owner_member, updated_at) VALUES ('j1', 'p1', 'backup', 'ops/db', 'nightly', '{\"steps\":[]}', '0 0 2 * * ?', TRUE, FALSE, 'a', 1001)").await;
    let k = b.blob(&[0, 1, 2, 255]);
    exec(
        b,
        db,
        &format!("INSERT INTO keys(path, kind, content, meta, updated_at) VALUES ('keys/db/pw', 'password', {k}, '{{\"m\":1}}', 1002)"),
    )
    .await;
    exec(
        b,
        db,
        "BEGIN; INSERT INTO projects(name, updated_at) VALUES ('p2', 2000); INSERT INTO jobs(id, project, name, updated_at) VALUES ('j2', 'p2', 'report', 2001); UPDATE projects SET description = 'second' , updated_at = 2002 WHERE name = 'p2'; COMMIT",
    )
    .await;
}

// ---------------------------------------------------------------- init

/// `init` creates and seeds; a second run reports the same version and
/// changes nothing; `check_schema` refuses an uninitialised database.
pub async fn init_is_idempotent<B: Backend>(b: &B) {
    let (db, s) = b.fresh().await;
    assert!(
        matches!(
            s.check_schema().await,
            Err(StoreError::NotInitialised { .. })
        ),
        "check_schema before init must say NotInitialised"
    );
    let first = s.init(&params("a", "a")).await.expect("first init");
    assert_eq!(first.from_version, 0);
    assert!(first.to_version >= 1);
    s.check_schema().await.expect("check_schema after init");
    seed(b, &db).await;
    let state_before = s.state().await.expect("state");
    let log_before = all_changes(&s).await;
    let sums_before = s.checksums().await.expect("checksums");
    let hist_before = s.epoch_history().await.expect("history");
    let second = s.init(&params("a", "a")).await.expect("second init");
    assert_eq!(second.from_version, first.to_version);
    assert_eq!(second.to_version, first.to_version);
    assert_eq!(s.state().await.expect("state"), state_before);
    assert_eq!(all_changes(&s).await, log_before);
    assert_eq!(s.checksums().await.expect("checksums"), sums_before);
    assert_eq!(s.epoch_history().await.expect("history"), hist_before);
    let s = b.reopen(&db, s).await;
    let third = s.init(&params("a", "a")).await.expect("init after reopen");
    assert_eq!(third.from_version, first.to_version);
    assert_eq!(s.state().await.expect("state"), state_before);
}

/// The seeded state: role active on the initial active (no lease), passive
/// elsewhere, epoch 1, one epoch-history row.
pub async fn init_seeds_state<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    let st = a.state().await.expect("state");
    assert_eq!(st.cluster, "conformance");
    assert_eq!(st.member, m("a"));
    assert_eq!(st.role, Role::Active);
    assert_eq!(st.epoch, Epoch(1));
    assert_eq!(st.active, Some(m("a")));
    assert_eq!(st.position, Position::ZERO);
    assert_eq!(
        st.lease_until_ms, None,
        "a fresh initial active has no lease"
    );
    assert_eq!(st.vote, None);
    assert!(!st.paused);
    // A fresh initial active accepts writes before any agent has run.
    exec(b, &adb, "INSERT INTO projects(name) VALUES ('seeded')").await;
    let h = a.epoch_history().await.expect("history");
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].epoch, Epoch(1));
    assert_eq!(h[0].active, m("a"));
    assert_eq!(h[0].start, Position::ZERO);
    assert!(h[0].reason.contains("initial"), "{h:?}");

    let (_pdb, p) = passive(b).await;
    let st = p.state().await.expect("state");
    assert_eq!(st.member, m("b"));
    assert_eq!(st.role, Role::Passive);
    assert_eq!(st.epoch, Epoch(1));
    assert_eq!(st.active, Some(m("a")));
    assert_eq!(st.position, Position::ZERO);
}

/// The store describes the example schema as [`example_catalog`] does
/// (types, nullability, keys, foreign keys, the secret column), so members
/// on different backends have the same fingerprint; the description
/// survives a restart.
pub async fn catalog_describes_the_example_schema<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    let want = example_catalog();
    let got = s.catalog();
    assert_eq!(
        got.first_difference(&want),
        None,
        "the example schema as this backend describes it"
    );
    assert_eq!(got.fingerprint(), want.fingerprint());
    let s = b.reopen(&db, s).await;
    assert_eq!(s.catalog().fingerprint(), want.fingerprint());
}

// ---------------------------------------------------------------- capture

/// Every committed insert, update and delete of the three tables appears
/// once, with the full row image after (the key for a delete), positions
/// contiguous from 1 in epoch 1.
pub async fn capture_every_change<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    let before = now(&s).await;
    seed(b, &db).await;
    exec(b, &db, "INSERT INTO projects(name) VALUES ('dflt')").await;
    let after = now(&s).await;
    exec(
        b,
        &db,
        "UPDATE jobs SET owner_member = 'b', schedule = NULL, updated_at = 3000 WHERE id = 'j1'",
    )
    .await;
    let secret = b.blob(b"second-content");
    exec(
        b,
        &db,
        &format!(
            "UPDATE keys SET content = {secret}, kind = 'private', updated_at = 3001 WHERE path = 'keys/db/pw'"
        ),
    )
    .await;
    exec(b, &db, "DELETE FROM keys WHERE path = 'keys/db/pw'").await;
    exec(b, &db, "DELETE FROM jobs WHERE id = 'j2'").await;
    exec(b, &db, "DELETE FROM projects WHERE name = 'dflt'").await;
    // A statement that matches nothing captures nothing.
    exec(b, &db, "DELETE FROM jobs WHERE id = 'no-such-job'").await;

    let got = all_changes(&s).await;
    assert_contiguous(&got, 1);
    assert!(got.iter().all(|c| c.pos.epoch == 1), "{got:#?}");
    let cat = s.catalog();
    let mut j1 = job(&cat, "j1", "p1", "backup", 1001);
    set(&cat, &mut j1, "group_path", text("ops/db"));
    set(&cat, &mut j1, "description", text("nightly"));
    set(&cat, &mut j1, "definition", text("{\"steps\":[]}"));
    set(&cat, &mut j1, "schedule", text("0 0 2 * * ?"));
    set(
        &cat,
        &mut j1,
        "execution_enabled",
        flag(&cat, "jobs", "execution_enabled", false),
    );
    set(&cat, &mut j1, "owner_member", text("a"));
    let mut j1b = j1.clone();
    set(&cat, &mut j1b, "owner_member", text("b"));
    set(&cat, &mut j1b, "schedule", Value::Null);
    set(&cat, &mut j1b, "updated_at", Value::Int(3000));
    // The default updated_at: checked by range, then put into the expectation.
    let dflt_at = match got.get(6).map(|c| &c.op) {
        Some(ChangeOp::Upsert(r))
            if r.table.as_str() == "projects" && r.key() == [text("dflt")] =>
        {
            match get(&cat, r, "updated_at") {
                Value::Int(at) => *at,
                other => panic!("updated_at of project dflt is {other:?}, not an integer"),
            }
        }
        other => panic!("change 7 should be the upsert of project dflt, got {other:?}"),
    };
    assert!(
        dflt_at >= before - 5_000 && dflt_at <= after + 5_000,
        "default updated_at {dflt_at} not within [{before}, {after}] (ms since the Unix epoch)"
    );
    let want = vec![
        ChangeOp::Upsert(project(&cat, "p1", Some("first"), Some("{\"a\":1}"), 1000)),
        ChangeOp::Upsert(j1),
        ChangeOp::Upsert(key(
            &cat,
            "keys/db/pw",
            "password",
            &[0, 1, 2, 255],
            Some("{\"m\":1}"),
            1002,
        )),
        ChangeOp::Upsert(project(&cat, "p2", None, None, 2000)),
        ChangeOp::Upsert(job(&cat, "j2", "p2", "report", 2001)),
        ChangeOp::Upsert(project(&cat, "p2", Some("second"), None, 2002)),
        ChangeOp::Upsert(project(&cat, "dflt", None, None, dflt_at)),
        ChangeOp::Upsert(j1b),
        ChangeOp::Upsert(key(
            &cat,
            "keys/db/pw",
            "private",
            b"second-content",
            Some("{\"m\":1}"),
            3001,
        )),
        del("keys", "keys/db/pw"),
        del("jobs", "j2"),
        del("projects", "dflt"),
    ];
    assert_eq!(ops(&got), want);
    let st = s.state().await.expect("state");
    assert_eq!(st.position, Position::new(1, got.len() as u64));
}

/// An UPDATE that changes a primary key is a delete of the old key and an
/// upsert of the new one.
pub async fn capture_primary_key_update<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    exec(
        b,
        &db,
        "INSERT INTO projects(name, updated_at) VALUES ('old', 1)",
    )
    .await;
    exec(
        b,
        &db,
        "INSERT INTO projects(name, updated_at) VALUES ('other', 1)",
    )
    .await;
    exec(
        b,
        &db,
        "INSERT INTO jobs(id, project, name, updated_at) VALUES ('j-old', 'other', 'n', 1)",
    )
    .await;
    let c = b.blob(b"k");
    exec(
        b,
        &db,
        &format!(
            "INSERT INTO keys(path, kind, content, updated_at) VALUES ('k-old', 'public', {c}, 1)"
        ),
    )
    .await;
    let head = s.state().await.expect("state").position.seq;
    exec(
        b,
        &db,
        "UPDATE projects SET name = 'new', updated_at = 2 WHERE name = 'old'",
    )
    .await;
    exec(b, &db, "UPDATE jobs SET id = 'j-new' WHERE id = 'j-old'").await;
    exec(
        b,
        &db,
        "UPDATE keys SET path = 'k-new' WHERE path = 'k-old'",
    )
    .await;
    let got = read_after(&s, head).await.changes;
    assert_contiguous(&got, head + 1);
    let cat = s.catalog();
    assert_eq!(
        ops(&got),
        vec![
            del("projects", "old"),
            ChangeOp::Upsert(project(&cat, "new", None, None, 2)),
            del("jobs", "j-old"),
            ChangeOp::Upsert(job(&cat, "j-new", "other", "n", 1)),
            del("keys", "k-old"),
            ChangeOp::Upsert(key(&cat, "k-new", "public", b"k", None, 1)),
        ]
    );
}

/// A rolled-back transaction, or one that fails part-way, leaves nothing.
pub async fn rollback_leaves_nothing<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    exec(b, &db, "INSERT INTO projects(name) VALUES ('kept')").await;
    let before = all_changes(&s).await;
    exec(
        b,
        &db,
        "BEGIN; INSERT INTO projects(name) VALUES ('gone'); UPDATE projects SET description = 'x' WHERE name = 'kept'; ROLLBACK",
    )
    .await;
    let c = b.blob(b"x");
    let err = b
        .app_exec(
            &db,
            &format!(
                "BEGIN; INSERT INTO projects(name) VALUES ('gone2'); INSERT INTO keys(path, kind, content) VALUES ('k', 'no-such-kind', {c}); COMMIT"
            ),
        )
        .await;
    assert!(err.is_err(), "a key of an unknown kind must be refused");
    assert_eq!(all_changes(&s).await, before);
    assert_eq!(count(b, &db, "projects").await, 1);
}

/// Deleting a project deletes its jobs, and the job deletes are captured in
/// the same transaction as the project's.
pub async fn cascade_is_captured<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    exec(b, &db, "INSERT INTO projects(name) VALUES ('p')").await;
    exec(b, &db, "INSERT INTO projects(name) VALUES ('q')").await;
    for (id, p) in [("j1", "p"), ("j2", "p"), ("j3", "q")] {
        exec(
            b,
            &db,
            &format!("INSERT INTO jobs(id, project, name) VALUES ('{id}', '{p}', 'n')"),
        )
        .await;
    }
    let head = s.state().await.expect("state").position.seq;
    exec(b, &db, "DELETE FROM projects WHERE name = 'p'").await;
    let r = read_after(&s, head).await;
    assert!(r.at_head);
    assert_contiguous(&r.changes, head + 1);
    let mut got = ops(&r.changes);
    got.sort_by_key(op_order);
    let mut want = vec![del("projects", "p"), del("jobs", "j1"), del("jobs", "j2")];
    want.sort_by_key(op_order);
    assert_eq!(got, want);
    assert_eq!(count(b, &db, "jobs").await, 1);
}

/// A multi-statement transaction comes out whole in one read that reaches
/// the head.
pub async fn transaction_is_whole<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    exec(
        b,
        &db,
        "BEGIN; INSERT INTO projects(name) VALUES ('t1'); INSERT INTO projects(name) VALUES ('t2'); INSERT INTO jobs(id, project, name) VALUES ('tj', 't1', 'n'); UPDATE projects SET description = 'd' WHERE name = 't2'; DELETE FROM projects WHERE name = 't1'; COMMIT",
    )
    .await;
    let r = read_after(&s, 0).await;
    assert!(r.at_head, "the read must reach the head");
    // insert t1, insert t2, insert tj, update t2, delete tj (cascade), delete t1
    assert_eq!(r.changes.len(), 6, "{:#?}", r.changes);
    assert_contiguous(&r.changes, 1);
}

/// `max_changes` and `max_bytes` cap a read, `at_head` says whether more
/// remains, and a read always makes progress.
pub async fn read_limits<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    let empty = read_after(&s, 0).await;
    assert!(empty.changes.is_empty() && empty.at_head);
    for i in 0..10 {
        exec(
            b,
            &db,
            &format!(
                "INSERT INTO projects(name, description) VALUES ('p{i}', '{}')",
                "x".repeat(200)
            ),
        )
        .await;
    }
    s.sequence().await.expect("sequence");
    let r = s.read_changes(0, 3, HUGE).await.expect("read");
    assert_eq!(r.changes.len(), 3);
    assert!(!r.at_head, "more remains after 3 of 10");
    assert_contiguous(&r.changes, 1);
    let r = s.read_changes(3, MANY, 1).await.expect("read");
    assert_eq!(
        r.changes.len(),
        1,
        "a tiny byte limit still returns one change"
    );
    assert_eq!(r.changes[0].pos.seq, 4);
    assert!(!r.at_head);
    let r = s.read_changes(4, MANY, 700).await.expect("read");
    assert!(
        !r.changes.is_empty() && r.changes.len() < 6,
        "about 700 bytes of ~250-byte changes: {}",
        r.changes.len()
    );
    assert!(!r.at_head);
    let r = s.read_changes(4, 6, HUGE).await.expect("read");
    assert_eq!(r.changes.len(), 6);
    assert!(r.at_head, "exactly the rest: at head");
    let r = s.read_changes(10, MANY, HUGE).await.expect("read");
    assert!(r.changes.is_empty() && r.at_head);
}

/// Changes carry the epoch of the state row at capture time.
pub async fn capture_uses_current_epoch<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    exec(b, &db, "INSERT INTO projects(name) VALUES ('e1')").await;
    s.set_role(Role::Active, Epoch(2), Some(&m("a")))
        .await
        .expect("set_role");
    s.renew_lease(Duration::from_secs(60)).await.expect("renew");
    exec(b, &db, "INSERT INTO projects(name) VALUES ('e2')").await;
    let got = all_changes(&s).await;
    assert_eq!(
        got.iter().map(|c| c.pos).collect::<Vec<_>>(),
        vec![Position::new(1, 1), Position::new(2, 2)]
    );
    assert_eq!(
        s.state().await.expect("state").position,
        Position::new(2, 2)
    );
}

// ---------------------------------------------------------------- apply

/// Apply on a second database reproduces rows and positions exactly, is
/// idempotent, and does not capture the applied rows again (no echo).
pub async fn apply_reproduces_without_echo<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    exec(b, &adb, "DELETE FROM projects WHERE name = 'p2'").await;
    exec(b, &adb, "INSERT INTO projects(name) VALUES ('p3')").await;
    exec(
        b,
        &adb,
        "UPDATE projects SET name = 'p3x' WHERE name = 'p3'",
    )
    .await;
    let src = all_changes(&a).await;
    let head = a.state().await.expect("state").position;
    let (pdb, p) = passive(b).await;
    // In two batches, committed separately.
    let (first, rest) = src.split_at(4);
    assert_eq!(p.apply(first, true).await.expect("apply 1"), first[3].pos);
    assert_eq!(p.apply(rest, true).await.expect("apply 2"), head);
    assert_eq!(p.state().await.expect("state").position, head);
    assert_eq!(
        all_changes(&p).await,
        src,
        "the passive's log must equal the active's"
    );
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
    for t in ["projects", "jobs", "keys"] {
        assert_eq!(count(b, &pdb, t).await, count(b, &adb, t).await, "{t}");
    }
    // Re-applying the same (or an overlapping) batch is a no-op.
    assert_eq!(p.apply(&src, true).await.expect("re-apply"), head);
    assert_eq!(p.apply(rest, true).await.expect("re-apply"), head);
    assert_eq!(all_changes(&p).await, src);
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
    // An empty batch is fine too.
    assert_eq!(p.apply(&[], true).await.expect("empty"), head);
}

/// A change that does not follow the applied position is refused, and a
/// same-seq change of another epoch (a fork) is not silently skipped.
pub async fn apply_refuses_gaps_and_forks<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let src = all_changes(&a).await;
    let (_pdb, p) = passive(b).await;
    match p.apply(&src[1..], true).await {
        Err(StoreError::OutOfOrder { applied, got }) => {
            assert_eq!(applied, Position::ZERO);
            assert_eq!(got, src[1].pos);
        }
        other => panic!("a gap must be OutOfOrder, got {other:?}"),
    }
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    p.apply(&src[..2], true).await.expect("apply");
    let mut forked = src[1].clone();
    forked.pos.epoch = 7;
    assert!(
        matches!(
            p.apply(&[forked], true).await,
            Err(StoreError::OutOfOrder { .. })
        ),
        "an applied seq under another epoch is a fork, not a duplicate"
    );
    assert_eq!(
        p.apply(&src[2..], true).await.expect("rest"),
        src[src.len() - 1].pos
    );
}

/// With `commit = false` the applied rows stay invisible to other
/// connections until a later `commit = true`; `abort_apply` rolls back.
pub async fn apply_uncommitted_is_invisible<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let src = all_changes(&a).await;
    let (pdb, p) = passive(b).await;
    let (x, y) = src.split_at(3);
    p.apply(x, false).await.expect("apply open");
    assert_eq!(
        count(b, &pdb, "projects").await,
        0,
        "uncommitted rows visible"
    );
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    assert!(read_after(&p, 0).await.changes.is_empty());
    p.abort_apply().await.expect("abort");
    assert_eq!(count(b, &pdb, "projects").await, 0);
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    // abort with nothing open is fine.
    p.abort_apply().await.expect("abort idle");

    p.apply(x, false).await.expect("apply open");
    assert_eq!(count(b, &pdb, "jobs").await, 0);
    let end = p.apply(y, true).await.expect("apply commit");
    assert_eq!(end, src[src.len() - 1].pos);
    assert_eq!(count(b, &pdb, "projects").await, 2);
    assert_eq!(count(b, &pdb, "jobs").await, 2);
    assert_eq!(all_changes(&p).await, src);
}

/// Changes this member cannot place: each a wrong shape for the example
/// schema.
fn misshapen(cat: &Catalog) -> Vec<(&'static str, ChangeOp)> {
    let p = project(cat, "x", None, None, 1);
    let short = RowImage::new(p.table.clone(), 1, p.values[..3].to_vec());
    let mut long = p.clone();
    long.values.push(Value::Int(1));
    let mut wide_key = p.clone();
    wide_key.key_len = 2;
    vec![
        (
            "an upsert of an uncaptured table",
            ChangeOp::Upsert(RowImage::new(
                TableName::new("no_such_table"),
                1,
                vec![text("x")],
            )),
        ),
        ("a delete of an uncaptured table", del("no_such_table", "x")),
        ("an image one value short", ChangeOp::Upsert(short)),
        ("an image one value long", ChangeOp::Upsert(long)),
        ("an image with a key too wide", ChangeOp::Upsert(wide_key)),
        (
            "a delete with a key too wide",
            ChangeOp::Delete {
                table: TableName::new("projects"),
                key: vec![text("x"), text("y")],
            },
        ),
    ]
}

/// A change naming a table this member does not capture, or with the wrong
/// number of values or key width, is refused with `Shape` naming the
/// table, and the batch it came in changes nothing; so is such a snapshot
/// row.
pub async fn apply_refuses_other_shapes<B: Backend>(b: &B) {
    let (pdb, p) = passive(b).await;
    let cat = p.catalog();
    let good = Change {
        pos: Position::new(1, 1),
        op: ChangeOp::Upsert(project(&cat, "ok", None, None, 1)),
    };
    for (what, op) in misshapen(&cat) {
        let table = Change {
            pos: Position::ZERO,
            op: op.clone(),
        }
        .table_str()
        .to_string();
        let bad = Change {
            pos: Position::new(1, 2),
            op,
        };
        match p.apply(&[good.clone(), bad], true).await {
            Err(StoreError::Shape(msg)) => {
                assert!(msg.contains(table.as_str()), "{what}: {msg}")
            }
            other => panic!("{what} must be refused with Shape, got {other:?}"),
        }
        assert_eq!(p.state().await.expect("state").position, Position::ZERO);
        assert_eq!(count(b, &pdb, "projects").await, 0, "{what}");
        assert!(read_after(&p, 0).await.changes.is_empty(), "{what}");
    }
    // A snapshot row of another shape: refused, the install rolled back.
    for (what, op) in misshapen(&cat) {
        let ChangeOp::Upsert(row) = op else { continue };
        p.install_snapshot_begin(Position::new(1, 9))
            .await
            .expect("install begin");
        match p.install_snapshot_rows(&[row]).await {
            Err(StoreError::Shape(_)) => {}
            other => panic!("a snapshot row, {what}, must be refused with Shape, got {other:?}"),
        }
        p.abort_apply().await.expect("abort");
    }
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    assert_eq!(
        p.apply(std::slice::from_ref(&good), true)
            .await
            .expect("apply"),
        good.pos
    );
    assert_eq!(count(b, &pdb, "projects").await, 1);
}

// ---------------------------------------------------------------- fence

const ROW_WRITES: [&str; 3] = [
    "INSERT INTO projects(name) VALUES ('intruder')",
    "INSERT INTO jobs(id, project, name) VALUES ('ji', 'p1', 'n')",
    "UPDATE projects SET description = 'intruder' WHERE name = 'p1'",
];

/// A passive refuses application writes with a message naming the active
/// member, while apply still works; the fence moves with `set_role` and
/// survives a restart.
pub async fn fence_on_passive<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let src = all_changes(&a).await;
    let (pdb, p) = b.fresh().await;
    p.init(&params("bravo-2", "alpha-1")).await.expect("init");
    p.apply(&src, true).await.expect("apply while fenced");
    let k = b.blob(b"x");
    let mut writes: Vec<String> = ROW_WRITES.iter().map(|s| s.to_string()).collect();
    writes.push(format!(
        "INSERT INTO keys(path, kind, content) VALUES ('kx', 'password', {k})"
    ));
    writes.push("DELETE FROM jobs WHERE id = 'j1'".into());
    writes.push("DELETE FROM keys WHERE path = 'keys/db/pw'".into());
    writes.push("DELETE FROM projects WHERE name = 'p2'".into());
    for w in &writes {
        let e = refused(b, &pdb, w).await;
        assert!(e.contains("alpha-1"), "message must name the active: {e}");
        assert!(e.contains("passive"), "message must say why: {e}");
    }
    p.set_role(Role::Passive, Epoch(2), Some(&m("charlie-3")))
        .await
        .expect("set_role");
    let e = refused(b, &pdb, ROW_WRITES[0]).await;
    assert!(e.contains("charlie-3"), "{e}");
    assert!(!e.contains("alpha-1"), "{e}");
    p.set_role(Role::Fenced, Epoch(2), Some(&m("charlie-3")))
        .await
        .expect("set_role");
    let p = b.reopen(&pdb, p).await;
    let e = refused(b, &pdb, ROW_WRITES[2]).await;
    assert!(e.contains("charlie-3"), "the fence survives a restart: {e}");
    assert_eq!(p.state().await.expect("state").role, Role::Fenced);
    // Nothing was written or captured by the refused writes.
    assert_eq!(all_changes(&p).await, src);
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
}

/// An active whose lease ran out refuses writes, saying so; renewing the
/// lease lets writes through again; the fence survives a restart.
pub async fn fence_on_expired_lease<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    exec(b, &db, "INSERT INTO projects(name) VALUES ('p1')").await;
    let t0 = now(&s).await;
    let until = s.renew_lease(Duration::from_secs(60)).await.expect("renew");
    assert!(until >= t0 + 59_000 && until <= t0 + 65_000, "{t0} {until}");
    assert_eq!(s.state().await.expect("state").lease_until_ms, Some(until));
    exec(b, &db, "INSERT INTO projects(name) VALUES ('p2')").await;
    s.renew_lease(Duration::from_millis(1))
        .await
        .expect("renew");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for w in ROW_WRITES {
        let e = refused(b, &db, w).await;
        assert!(
            e.contains("lease"),
            "message must say the lease ran out: {e}"
        );
        assert!(e.contains("ran out"), "{e}");
    }
    let s = b.reopen(&db, s).await;
    let e = refused(b, &db, ROW_WRITES[0]).await;
    assert!(
        e.contains("ran out"),
        "the lease fence survives a restart: {e}"
    );
    s.renew_lease(Duration::from_secs(60)).await.expect("renew");
    exec(b, &db, ROW_WRITES[0]).await;
    assert_eq!(all_changes(&s).await.len(), 3);
}

/// Demoting expires the lease: a member made active again refuses writes
/// until its lease is renewed.
pub async fn promotion_needs_a_lease<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    s.set_role(Role::Passive, Epoch(2), Some(&m("b")))
        .await
        .expect("demote");
    refused(b, &db, ROW_WRITES[0]).await;
    s.set_role(Role::Active, Epoch(3), Some(&m("a")))
        .await
        .expect("promote");
    let e = refused(b, &db, ROW_WRITES[0]).await;
    assert!(e.contains("lease"), "{e}");
    s.renew_lease(Duration::from_secs(60)).await.expect("renew");
    exec(b, &db, ROW_WRITES[0]).await;
    let st = s.state().await.expect("state");
    assert_eq!(
        (st.role, st.epoch, st.active),
        (Role::Active, Epoch(3), Some(m("a")))
    );
}

// ---------------------------------------------------------------- checksums

/// Checksums agree after apply and differ once a row is changed behind the
/// agent's back.
pub async fn checksums_detect_difference<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let (pdb, p) = passive(b).await;
    p.apply(&all_changes(&a).await, true).await.expect("apply");
    let sa = a.checksums().await.expect("checksums");
    let cat = a.catalog();
    assert_eq!(
        sa.iter().map(|t| t.table.as_str()).collect::<Vec<_>>(),
        cat.tables()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        "one checksum per captured table, in the catalog's order"
    );
    let rows = |sums: &[TableChecksum], table: &str| {
        sums.iter()
            .find(|t| t.table == table)
            .map(|t| t.rows)
            .unwrap_or_else(|| panic!("no checksum of {table}: {sums:?}"))
    };
    assert_eq!(
        ["projects", "jobs", "keys"].map(|t| rows(&sa, t)),
        [2, 2, 1]
    );
    assert_eq!(p.checksums().await.expect("checksums"), sa);
    // Lift the passive's fence to change a row there directly.
    p.set_role(Role::Active, Epoch(2), Some(&m("b")))
        .await
        .expect("set_role");
    p.renew_lease(Duration::from_secs(60)).await.expect("renew");
    exec(
        b,
        &pdb,
        "UPDATE jobs SET schedule_enabled = FALSE WHERE id = 'j2'",
    )
    .await;
    let sp: Vec<TableChecksum> = p.checksums().await.expect("checksums");
    for (x, y) in sp.iter().zip(&sa) {
        if x.table == "jobs" {
            assert_ne!(x.digest, y.digest, "the changed job must show");
            assert_eq!(x.rows, y.rows);
        } else {
            assert_eq!(x, y, "only jobs changed");
        }
    }
}

// ---------------------------------------------------------------- state

/// Role, epoch, vote, pause and epoch history survive a restart.
pub async fn state_survives_reopen<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    s.set_role(Role::Passive, Epoch(3), Some(&m("c")))
        .await
        .expect("set_role");
    let vote = Vote {
        epoch: Epoch(4),
        candidate: m("c"),
    };
    s.record_vote(&vote).await.expect("vote");
    s.set_paused(true).await.expect("pause");
    let rec = EpochRecord {
        epoch: Epoch(3),
        active: m("c"),
        start: Position::new(1, 0),
        at_ms: 123_456,
        reason: "failover (asked by c)".into(),
    };
    s.record_epoch(&rec).await.expect("epoch");
    let before: ReplicationState = s.state().await.expect("state");
    assert_eq!(before.role, Role::Passive);
    assert_eq!(before.epoch, Epoch(3));
    assert_eq!(before.active, Some(m("c")));
    assert_eq!(before.vote, Some(vote.clone()));
    assert!(before.paused);
    let s = b.reopen(&db, s).await;
    s.check_schema().await.expect("check_schema");
    assert_eq!(s.state().await.expect("state"), before);
    let h = s.epoch_history().await.expect("history");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].epoch, Epoch(1));
    assert_eq!(h[1], rec);
    s.set_paused(false).await.expect("resume");
    let vote5 = Vote {
        epoch: Epoch(5),
        candidate: m("a"),
    };
    s.record_vote(&vote5).await.expect("vote");
    let s = b.reopen(&db, s).await;
    let st = s.state().await.expect("state");
    assert!(!st.paused);
    assert_eq!(st.vote, Some(vote5));
}

// ---------------------------------------------------------------- trimming

/// `trim_log` keeps the newest entry, and seqs are never reused after a trim.
pub async fn trim_keeps_newest<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    assert_eq!(s.oldest_seq().await.expect("oldest"), None);
    assert_eq!(s.trim_log(10).await.expect("trim empty"), 0);
    for i in 0..5 {
        exec(
            b,
            &db,
            &format!("INSERT INTO projects(name) VALUES ('p{i}')"),
        )
        .await;
    }
    s.sequence().await.expect("sequence");
    assert_eq!(s.oldest_seq().await.expect("oldest"), Some(1));
    assert_eq!(s.trim_log(3).await.expect("trim"), 3);
    assert_eq!(s.oldest_seq().await.expect("oldest"), Some(4));
    assert_eq!(s.trim_log(100).await.expect("trim"), 1);
    assert_eq!(s.oldest_seq().await.expect("oldest"), Some(5));
    assert_eq!(s.trim_log(100).await.expect("trim"), 0);
    assert_eq!(
        s.state().await.expect("state").position,
        Position::new(1, 5)
    );
    exec(b, &db, "INSERT INTO projects(name) VALUES ('after')").await;
    let got = read_after(&s, 0).await.changes;
    assert_eq!(
        got.iter().map(|c| c.pos.seq).collect::<Vec<_>>(),
        vec![5, 6],
        "seqs must not be reused after a trim"
    );
    let s = b.reopen(&db, s).await;
    s.trim_log(100).await.expect("trim");
    exec(b, &db, "INSERT INTO projects(name) VALUES ('after2')").await;
    let got = read_after(&s, 0).await.changes;
    assert_eq!(
        got.iter().map(|c| c.pos.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
}

// ---------------------------------------------------------------- secrecy

/// Key content never appears in an error message or a Debug output.
pub async fn secrets_never_leak<B: Backend>(b: &B) {
    let secret: &[u8] = b"s3cr3t-CONTENT-42";
    let forms = [
        "s3cr3t".to_string(),
        hex::encode(secret),
        hex::encode_upper(secret),
        format!("{:?}", &secret[..6])
            .trim_end_matches(']')
            .to_string(),
    ];
    let clean = |what: &str, text: &str| {
        for f in &forms {
            assert!(
                !text.contains(f.as_str()),
                "{what} shows key content: {text}"
            );
        }
    };
    let (adb, a) = active(b).await;
    let lit = b.blob(secret);
    exec(b, &adb, "INSERT INTO projects(name) VALUES ('p')").await;
    exec(
        b,
        &adb,
        &format!("INSERT INTO keys(path, kind, content) VALUES ('k1', 'password', {lit})"),
    )
    .await;
    // A constraint failure on a row holding the secret.
    let e = b
        .app_exec(
            &adb,
            &format!("INSERT INTO keys(path, kind, content) VALUES ('k1', 'password', {lit})"),
        )
        .await;
    clean("duplicate-key error", &format!("{e:?}"));
    let src = all_changes(&a).await;
    clean("read_changes Debug", &format!("{src:?} {src:#?}"));
    clean("checksums", &format!("{:?}", a.checksums().await));
    clean("state", &format!("{:?}", a.state().await));

    let (pdb, p) = passive(b).await;
    let e = refused(
        b,
        &pdb,
        &format!("INSERT INTO keys(path, kind, content) VALUES ('k2', 'password', {lit})"),
    )
    .await;
    clean("fence error", &e);
    // A gap holding a key change.
    let e = p.apply(&src[1..], true).await.expect_err("gap");
    clean("OutOfOrder", &format!("{e} {e:?}"));
    // A key change the database refuses (unknown kind).
    let cat = p.catalog();
    let mut bad = src.clone();
    match &mut bad[1].op {
        ChangeOp::Upsert(k) if k.table.as_str() == "keys" => {
            set(&cat, k, "kind", text("no-such-kind"))
        }
        other => panic!("change 2 should be the key upsert: {other:?}"),
    }
    let e = p.apply(&bad, true).await.expect_err("refused kind");
    clean("apply error", &format!("{e} {e:?}"));
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    p.apply(&src, true).await.expect("apply");
}

/// A value of a secret column never shows in the errors of changes the
/// store refuses for their shape or type, whichever way they are wrong.
pub async fn secret_values_never_leak_from_refusals<B: Backend>(b: &B) {
    let marker = "MARKER-s3cr3t-7f3a";
    let forms = [
        marker.to_string(),
        hex::encode(marker),
        hex::encode_upper(marker),
        format!("{:?}", &marker.as_bytes()[..6])
            .trim_end_matches(']')
            .to_string(),
    ];
    let (_pdb, p) = passive(b).await;
    let cat = p.catalog();
    let k = key(&cat, "k1", "password", marker.as_bytes(), None, 1);
    let mut long = k.clone();
    long.values.push(Value::Bytes(marker.as_bytes().to_vec()));
    let mut short = k.clone();
    short.values.remove(0);
    let mut as_text = k.clone();
    set(&cat, &mut as_text, "content", text(marker));
    let mut bad_kind = k.clone();
    set(&cat, &mut bad_kind, "kind", text("no-such-kind"));
    let mut elsewhere = k.clone();
    elsewhere.table = TableName::new("no_such_table");
    let cases = [
        ("one value long", long),
        ("one value short", short),
        ("text in the bytes column", as_text),
        ("refused by a CHECK constraint", bad_kind),
        ("of an uncaptured table", elsewhere),
    ];
    for (what, row) in cases {
        let change = Change {
            pos: Position::new(1, 1),
            op: ChangeOp::Upsert(row.clone()),
        };
        let mut shown = Vec::new();
        match p.apply(&[change], true).await {
            Err(e) => shown.push(format!("{e} {e:?}")),
            Ok(at) => panic!("a key {what} must be refused, but was applied at {at}"),
        }
        p.install_snapshot_begin(Position::new(1, 1))
            .await
            .expect("install begin");
        // Refused when the row arrives, or (a backend that sends rows in
        // batches) at the latest when the install commits.
        let refused = match p.install_snapshot_rows(&[row]).await {
            Err(e) => Err(e),
            Ok(()) => p.install_snapshot_commit().await.map(|_| ()),
        };
        match refused {
            Err(e) => shown.push(format!("{e} {e:?}")),
            Ok(()) => panic!("a snapshot row of a key {what} must be refused"),
        }
        p.abort_apply().await.expect("abort");
        for text in &shown {
            for f in &forms {
                assert!(
                    !text.contains(f.as_str()),
                    "an error for a key {what} shows the secret: {text}"
                );
            }
        }
    }
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
}

// ---------------------------------------------------------------- wake-ups

/// `wait_for_commit` wakes soon after another connection commits, and times
/// out (false) when nothing commits.
pub async fn wait_for_commit_wakes<B: Backend>(b: &B) {
    let (db, s) = active(b).await;
    // Forget commits made so far (init).
    s.wait_for_commit(Duration::from_millis(20))
        .await
        .expect("wait");
    let t = Instant::now();
    let (woke, ()) = tokio::join!(s.wait_for_commit(Duration::from_secs(20)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        exec(b, &db, "INSERT INTO projects(name) VALUES ('w')").await;
    });
    assert!(woke.expect("wait"), "a commit must wake the waiter");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "woken only by the safety-net timeout: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let woke = s
        .wait_for_commit(Duration::from_millis(300))
        .await
        .expect("wait");
    assert!(!woke, "nothing committed, yet the waiter reported a commit");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------- snapshots

/// Every row of a snapshot reader, in chunks of at most `max_rows`.
async fn read_snapshot(r: &mut super::SnapshotReader, max_rows: usize) -> Vec<RowImage> {
    let mut out = Vec::new();
    loop {
        let chunk = r.next_chunk(max_rows, HUGE).await.expect("snapshot chunk");
        if chunk.is_empty() {
            return out;
        }
        assert!(chunk.len() <= max_rows, "chunk over the row limit");
        out.extend(chunk);
    }
}

/// A snapshot holds exactly the tables at its position, in bounded chunks
/// (projects before jobs before keys); installed on another member it is
/// invisible until committed, then that member holds the same tables at the
/// same position, applies the changes after it, and, once promoted, captures
/// new changes right after it.
pub async fn snapshot_installs_whole_and_continues<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    a.sequence().await.expect("sequence");
    let head = a.state().await.expect("state").position;
    let sums = a.checksums().await.expect("checksums");

    let mut r = a.snapshot_reader().await.expect("snapshot reader");
    assert_eq!(r.position(), head);
    assert_eq!(r.rows_total(), 5);
    let rows = read_snapshot(&mut r, 2).await;
    assert_eq!(rows.len(), 5);
    let cat = a.catalog();
    let order: Vec<usize> = rows
        .iter()
        .map(|r| match cat.get(&r.table) {
            Some((id, _)) => id.0,
            None => panic!("a snapshot row of uncaptured table {}", r.table),
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "table by table in the catalog's order (parents first): {order:?}"
    );
    // A byte limit smaller than any row still makes progress, a row a chunk.
    let mut r = a.snapshot_reader().await.expect("snapshot reader");
    let one = r.next_chunk(100, 1).await.expect("chunk");
    assert_eq!(one.len(), 1);
    drop(r);
    let (at, by_reader) = checksums_at_position(&a)
        .await
        .expect("checksums at position");
    assert_eq!((at, &by_reader), (head, &sums));

    // The passive holds other data first: all of it must go.
    let (_pdb, p) = passive(b).await;
    p.apply(
        &[Change {
            pos: Position::new(1, 1),
            op: ChangeOp::Upsert(project(&cat, "stale", None, None, 1)),
        }],
        true,
    )
    .await
    .expect("apply");
    let before = p.checksums().await.expect("checksums");
    // As after a rejoin: the stale change quarantined, a snapshot owed.
    assert_eq!(
        p.quarantine_tail(Position::ZERO, "rejoin")
            .await
            .expect("quarantine"),
        1
    );
    assert!(p.state().await.expect("state").snapshot_due);
    p.install_snapshot_begin(head).await.expect("install begin");
    for chunk in rows.chunks(2) {
        p.install_snapshot_rows(chunk).await.expect("install rows");
    }
    assert_eq!(
        p.checksums().await.expect("checksums"),
        before,
        "an install is invisible before its commit"
    );
    assert_eq!(p.state().await.expect("state").position, Position::ZERO);
    assert!(p.state().await.expect("state").snapshot_due);
    assert!(
        p.apply(&[], true).await.is_err(),
        "apply must refuse while an install is open"
    );
    assert_eq!(
        p.install_snapshot_commit().await.expect("install commit"),
        head
    );
    assert_eq!(p.checksums().await.expect("checksums"), sums);
    assert_eq!(p.state().await.expect("state").position, head);
    assert!(
        !p.state().await.expect("state").snapshot_due,
        "the install paid what was owed"
    );
    assert_eq!(p.oldest_seq().await.expect("oldest"), None, "log reset");
    assert!(all_changes(&p).await.is_empty(), "nothing captured");

    // The stream goes on from the snapshot's position.
    exec(
        b,
        &adb,
        "INSERT INTO projects(name, updated_at) VALUES ('p3', 3000)",
    )
    .await;
    exec(b, &adb, "DELETE FROM jobs WHERE id = 'j1'").await;
    a.sequence().await.expect("sequence");
    let next = read_after(&a, head.seq).await.changes;
    assert_eq!(next.len(), 2);
    let pos = p.apply(&next, true).await.expect("apply after snapshot");
    assert_eq!(pos, a.state().await.expect("state").position);
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );

    // Promoted, it captures right after what it holds.
    p.set_role(Role::Active, Epoch(2), Some(&m("b")))
        .await
        .expect("set_role");
    p.renew_lease(Duration::from_secs(60)).await.expect("renew");
    exec(
        b,
        &_pdb,
        "INSERT INTO projects(name, updated_at) VALUES ('p4', 4000)",
    )
    .await;
    p.sequence().await.expect("sequence");
    let got = read_after(&p, 0).await.changes;
    assert_eq!(
        got.iter().map(|c| c.pos.seq).collect::<Vec<_>>(),
        vec![pos.seq - 1, pos.seq, pos.seq + 1],
        "captured seqs continue after the snapshot's position"
    );
}

/// A snapshot reader sees one state: writes committed after it opened are
/// neither in its rows nor in its position.
pub async fn snapshot_is_consistent_under_writes<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    a.sequence().await.expect("sequence");
    let head = a.state().await.expect("state").position;
    let sums = a.checksums().await.expect("checksums");
    let r = a.snapshot_reader().await.expect("snapshot reader");
    exec(
        b,
        &adb,
        "INSERT INTO projects(name, updated_at) VALUES ('late', 9000)",
    )
    .await;
    exec(b, &adb, "UPDATE jobs SET name = 'renamed' WHERE id = 'j2'").await;
    exec(b, &adb, "DELETE FROM keys").await;
    a.sequence().await.expect("sequence");
    assert!(a.state().await.expect("state").position > head);
    let (at, by_reader) = checksums_of(r, &a.catalog())
        .await
        .expect("checksums of reader");
    assert_eq!(at, head);
    assert_eq!(by_reader, sums);
    assert_ne!(a.checksums().await.expect("checksums"), sums);
}

/// An install rolled back (`abort_apply`, as after a lost connection) leaves
/// the member exactly as it was, and applying goes on from its position.
pub async fn snapshot_install_abort_keeps_old_data<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    a.sequence().await.expect("sequence");
    let all = all_changes(&a).await;
    let (_pdb, p) = passive(b).await;
    p.apply(&all[..2], true).await.expect("apply");
    let before = p.checksums().await.expect("checksums");
    let at = p.state().await.expect("state").position;
    let mut r = a.snapshot_reader().await.expect("reader");
    let rows = read_snapshot(&mut r, 100).await;
    p.install_snapshot_begin(r.position()).await.expect("begin");
    p.install_snapshot_rows(&rows).await.expect("rows");
    p.abort_apply().await.expect("abort");
    assert_eq!(p.checksums().await.expect("checksums"), before);
    assert_eq!(p.state().await.expect("state").position, at);
    assert!(
        p.install_snapshot_commit().await.is_err(),
        "a rolled-back install cannot commit"
    );
    p.apply(&all[2..], true).await.expect("apply the rest");
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
}

// ---------------------------------------------------------------- rejoin

/// A former active's tail past the kept position: refused while it is
/// active; once fenced, copied whole into the quarantine (images intact, key
/// content byte for byte), removed from the log, the position rewound; a
/// repeat does nothing; the rewound member applies the new epoch's changes
/// from there, and its own captures continue right after them.
pub async fn quarantine_tail_rewinds_the_divergent_tail<B: Backend>(b: &B) {
    let (db, a) = active(b).await;
    seed(b, &db).await;
    let kept = all_changes(&a).await[..3].to_vec();
    let keep = kept[2].pos;
    let secret: &[u8] = &[9, 0, 255, 7, b'q'];
    let k = b.blob(secret);
    exec(
        b,
        &db,
        &format!("UPDATE keys SET content = {k}, updated_at = 3000 WHERE path = 'keys/db/pw'"),
    )
    .await;
    exec(b, &db, "DELETE FROM jobs WHERE id = 'j2'").await;
    let before = all_changes(&a).await;
    let head = before[before.len() - 1].pos;
    let tail: Vec<Change> = before[3..].to_vec();
    assert_eq!(tail.len(), 5, "{before:#?}");

    match a.quarantine_tail(keep, "rejoin").await {
        Err(StoreError::WrongRole { role, .. }) => assert_eq!(role, Role::Active),
        other => panic!("the active must refuse to rewind, got {other:?}"),
    }
    assert_eq!(all_changes(&a).await, before, "a refusal changes nothing");
    assert_eq!(a.divergent_count().await.expect("count"), 0);
    assert!(!a.state().await.expect("state").snapshot_due);

    a.set_role(Role::Fenced, Epoch(2), Some(&m("b")))
        .await
        .expect("fence");
    let t0 = now(&a).await;
    let reason = "rejoin: epoch 2 started at 1/3";
    let n = a.quarantine_tail(keep, reason).await.expect("quarantine");
    assert_eq!(n, head.seq - keep.seq, "every change past the kept seq");
    assert_eq!(all_changes(&a).await, kept, "the log ends at the kept seq");
    assert_eq!(a.state().await.expect("state").position, keep);
    assert!(
        a.state().await.expect("state").snapshot_due,
        "the snapshot that restores the tail's rows is owed"
    );
    let q = a.divergence_list(false).await.expect("list");
    assert_eq!(
        q.iter().map(|d| d.change.clone()).collect::<Vec<_>>(),
        tail,
        "quarantined with their positions and full images"
    );
    for d in &q {
        assert_eq!(d.reason, reason);
        assert!(!d.resolved);
        assert!(
            d.quarantined_at_ms >= t0 - 5_000 && d.quarantined_at_ms <= t0 + 60_000,
            "{} vs {t0}",
            d.quarantined_at_ms
        );
    }
    let cat = a.catalog();
    let key_content = q.iter().find_map(|d| match &d.change.op {
        ChangeOp::Upsert(k) if k.table.as_str() == "keys" => Some(get(&cat, k, "content").clone()),
        _ => None,
    });
    assert_eq!(
        key_content,
        Some(Value::Bytes(secret.to_vec())),
        "key content intact"
    );
    let shown = format!("{q:?} {q:#?}");
    for form in ["9, 0, 255, 7", "0900ff07", "0900FF07"] {
        assert!(
            !shown.contains(form),
            "Debug must not show key bytes: {shown}"
        );
    }
    assert_eq!(a.divergent_count().await.expect("count"), 5);
    // The application rows are the caller's business: untouched here.
    assert_eq!(count(b, &db, "jobs").await, 1);

    assert_eq!(a.quarantine_tail(keep, reason).await.expect("repeat"), 0);
    assert_eq!(a.divergent_count().await.expect("count"), 5);
    assert_eq!(a.state().await.expect("state").position, keep);

    // The new epoch's history applies right after the kept position.
    let next = Change {
        pos: Position::new(2, keep.seq + 1),
        op: ChangeOp::Upsert(project(&cat, "from-epoch-2", None, None, 4000)),
    };
    assert_eq!(
        a.apply(std::slice::from_ref(&next), true)
            .await
            .expect("apply after rewind"),
        next.pos
    );
    // Promoted later, its own captures continue after that, without a gap
    // where the quarantined seqs were.
    a.set_role(Role::Active, Epoch(3), Some(&m("a")))
        .await
        .expect("promote");
    a.renew_lease(Duration::from_secs(60)).await.expect("lease");
    exec(b, &db, "INSERT INTO projects(name) VALUES ('epoch-3')").await;
    let got = read_after(&a, keep.seq).await.changes;
    assert_eq!(
        got.iter().map(|c| c.pos).collect::<Vec<_>>(),
        vec![next.pos, Position::new(3, keep.seq + 2)]
    );
    let a = b.reopen(&db, a).await;
    assert_eq!(a.divergence_list(false).await.expect("list").len(), 5);
    assert!(
        a.state().await.expect("state").snapshot_due,
        "still owed after a restart"
    );
}

/// A rewind that cannot be made from the log is refused with nothing
/// changed: the tail is no longer whole in the log (trimmed), or the member's
/// history differs at or below the kept position.
pub async fn quarantine_tail_refuses_what_it_cannot_rewind<B: Backend>(b: &B) {
    let (db, a) = active(b).await;
    seed(b, &db).await;
    let all = all_changes(&a).await;
    let head = all[all.len() - 1].pos;
    a.set_role(Role::Fenced, Epoch(2), Some(&m("b")))
        .await
        .expect("fence");

    // Another epoch at the kept seq, or a later epoch at a lower seq.
    for keep in [Position::new(7, 2), Position::new(7, head.seq)] {
        match a.quarantine_tail(keep, "x").await {
            Err(StoreError::ForkBelow { keep_upto, held }) => {
                assert_eq!(keep_upto, keep);
                assert_eq!(held.seq, keep.seq);
                assert_eq!(held.epoch, 1);
            }
            other => panic!("a fork at or below {keep} must be refused, got {other:?}"),
        }
    }
    match a.quarantine_tail(Position::new(0, head.seq - 1), "x").await {
        Err(StoreError::ForkBelow { .. }) => {}
        other => panic!("the entry at the kept seq is of epoch 1, got {other:?}"),
    }
    // A member merely behind the kept position has nothing to quarantine.
    assert_eq!(
        a.quarantine_tail(Position::new(1, head.seq + 10), "x")
            .await
            .expect("behind"),
        0
    );

    // Trimmed: the changes right after the kept seq are gone from the log.
    assert_eq!(a.trim_log(2).await.expect("trim"), 2);
    match a.quarantine_tail(Position::new(1, 1), "x").await {
        Err(StoreError::TailIncomplete {
            keep_upto,
            head: h,
            oldest,
        }) => {
            assert_eq!(keep_upto, Position::new(1, 1));
            assert_eq!(h, head);
            assert_eq!(oldest, Some(3));
        }
        other => panic!("an incomplete tail must be refused, got {other:?}"),
    }
    assert_eq!(all_changes(&a).await, all[2..].to_vec(), "nothing changed");
    assert_eq!(a.state().await.expect("state").position, head);
    assert_eq!(a.divergent_count().await.expect("count"), 0);
    // The part still in the log can be rewound.
    assert_eq!(
        a.quarantine_tail(all[2].pos, "x").await.expect("rewind"),
        head.seq - 3
    );
}

/// Listing, resolving by id and all at once, counting; resolved entries stay
/// listable; the marks survive a restart.
pub async fn divergence_list_resolve_and_count<B: Backend>(b: &B) {
    let (db, a) = active(b).await;
    seed(b, &db).await;
    let all = all_changes(&a).await;
    a.set_role(Role::Fenced, Epoch(2), Some(&m("b")))
        .await
        .expect("fence");
    assert!(a.divergence_list(true).await.expect("list").is_empty());
    assert_eq!(a.resolve_divergence(None).await.expect("resolve none"), 0);
    assert_eq!(a.quarantine_tail(all[2].pos, "r").await.expect("q"), 3);
    let q = a.divergence_list(false).await.expect("list");
    assert_eq!(q.len(), 3);
    let ids: Vec<i64> = q.iter().map(|d| d.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert_eq!(a.divergent_count().await.expect("count"), 3);

    assert_eq!(a.resolve_divergence(Some(&ids[..1])).await.expect("r1"), 1);
    assert_eq!(
        a.resolve_divergence(Some(&ids[..1])).await.expect("again"),
        0
    );
    assert_eq!(
        a.resolve_divergence(Some(&[ids[2] + 1000]))
            .await
            .expect("unknown"),
        0
    );
    assert_eq!(a.divergent_count().await.expect("count"), 2);
    let open = a.divergence_list(false).await.expect("list");
    assert_eq!(open.iter().map(|d| d.id).collect::<Vec<_>>(), ids[1..]);
    let every = a.divergence_list(true).await.expect("list all");
    assert_eq!(every.len(), 3);
    assert!(every[0].resolved && !every[1].resolved && !every[2].resolved);
    assert_eq!(every[0].change, q[0].change);

    let a = b.reopen(&db, a).await;
    assert_eq!(a.divergent_count().await.expect("count"), 2);
    assert_eq!(a.resolve_divergence(None).await.expect("all"), 2);
    assert_eq!(a.divergent_count().await.expect("count"), 0);
    assert!(a.divergence_list(false).await.expect("list").is_empty());
    assert_eq!(a.divergence_list(true).await.expect("list").len(), 3);
}

// ---------------------------------------------------------------- takeover

/// Taking over rows is an application write: only the rows whose owner
/// column holds the given owner change, each captured as an upsert with the
/// new owner, so it replicates; an unknown table or column is refused with
/// nothing changed; a passive refuses it with the fence's message and
/// captures nothing.
pub async fn take_over_is_a_captured_write<B: Backend>(b: &B) {
    let (db, a) = active(b).await;
    seed(b, &db).await;
    exec(b, &db, "INSERT INTO jobs(id, project, name, owner_member, updated_at) VALUES ('j3', 'p1', 'c-job', 'c', 5)").await;
    exec(b, &db, "INSERT INTO jobs(id, project, name, owner_member, updated_at) VALUES ('j4', 'p2', 'a-job', 'a', 5)").await;
    let before = all_changes(&a).await;
    let head = before[before.len() - 1].pos;
    let cat = a.catalog();

    let n = a
        .take_over(&jobs(), "owner_member", Some("a"), "b")
        .await
        .expect("take over");
    assert_eq!(n, 2, "j1 and j4 belonged to a");
    let new = read_after(&a, head.seq).await.changes;
    assert_contiguous(&new, head.seq + 1);
    let mut ids = Vec::new();
    for c in &new {
        match &c.op {
            ChangeOp::Upsert(j) if j.table == jobs() => {
                assert_eq!(get(&cat, j, "owner_member"), &text("b"));
                ids.push(key_text(j.key()));
            }
            other => panic!("a takeover of jobs captures job upserts only, got {other:?}"),
        }
    }
    ids.sort();
    assert_eq!(ids, ["j1", "j4"]);
    let owned = |o: &'static str| format!("SELECT COUNT(*) FROM jobs WHERE owner_member = '{o}'");
    assert_eq!(b.app_query_i64(&db, &owned("c")).await.expect("q"), Some(1));
    assert_eq!(b.app_query_i64(&db, &owned("b")).await.expect("q"), Some(2));
    assert_eq!(
        b.app_query_i64(&db, "SELECT COUNT(*) FROM jobs WHERE owner_member IS NULL")
            .await
            .expect("q"),
        Some(1)
    );
    for (from, moved) in [(Some("a"), 0), (Some("b"), 0), (None, 1)] {
        let n = a
            .take_over(&jobs(), "owner_member", from, "b")
            .await
            .expect("take over");
        assert_eq!(n, moved, "from {from:?}: again, the same owner, ownerless");
    }

    // What the catalog does not have is refused, and nothing moves.
    let held = all_changes(&a).await;
    let nope = TableName::new("no_such_table");
    assert!(a.take_over(&nope, "owner_member", None, "b").await.is_err());
    assert!(
        a.take_over(&jobs(), "no_such_column", None, "b")
            .await
            .is_err()
    );
    assert_eq!(all_changes(&a).await, held, "a refusal captures nothing");

    // It replicates like any other change.
    let src = all_changes(&a).await;
    let (pdb, p) = passive(b).await;
    p.apply(&src, true).await.expect("apply");
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
    // A passive refuses it with the fence's message.
    let e = p
        .take_over(&jobs(), "owner_member", Some("b"), "c")
        .await
        .expect_err("a passive must refuse a takeover");
    let msg = e.to_string();
    assert!(msg.contains("write refused"), "{msg}");
    assert!(msg.contains("the active member is a"), "{msg}");
    assert_eq!(
        all_changes(&p).await,
        src,
        "nothing captured on the passive"
    );
    assert_eq!(
        b.app_query_i64(&pdb, &owned("c")).await.expect("q"),
        Some(1)
    );
}

/// Merging epoch history adds only epochs not yet held (the existing record
/// stays as it is), on a passive too, and a repeat adds nothing.
pub async fn merge_epoch_history_is_idempotent<B: Backend>(b: &B) {
    let (db, p) = passive(b).await;
    let initial = p.epoch_history().await.expect("history");
    assert_eq!(initial.len(), 1);
    let rec = |e: u64, active: &str, start: Position, reason: &str| EpochRecord {
        epoch: Epoch(e),
        active: m(active),
        start,
        at_ms: 1_700_000_000_000 + e as i64,
        reason: reason.into(),
    };
    let recs = vec![
        rec(1, "z", Position::new(0, 9), "should not replace"),
        rec(2, "b", Position::new(1, 5), "failover after a fell silent"),
        rec(3, "c", Position::new(2, 9), "switchover from b"),
    ];
    assert_eq!(p.merge_epoch_history(&recs).await.expect("merge"), 2);
    let h = p.epoch_history().await.expect("history");
    assert_eq!(h.len(), 3);
    assert_eq!(h[0], initial[0], "an epoch already held is left as it is");
    assert_eq!(h[1..], recs[1..]);
    assert_eq!(p.merge_epoch_history(&recs).await.expect("again"), 0);
    assert_eq!(p.merge_epoch_history(&[]).await.expect("empty"), 0);
    assert_eq!(
        p.merge_epoch_history(&[rec(4, "a", Position::new(3, 12), "forced")])
            .await
            .expect("one more"),
        1
    );
    let p = b.reopen(&db, p).await;
    assert_eq!(p.epoch_history().await.expect("history").len(), 4);
    assert_eq!(p.state().await.expect("state").role, Role::Passive);
}

/// Every case, in order (handy for a quick local run; the backends' test
/// modules call the cases one by one so failures name them).
pub async fn run_all<B: Backend>(b: &B) {
    init_is_idempotent(b).await;
    init_seeds_state(b).await;
    catalog_describes_the_example_schema(b).await;
    capture_every_change(b).await;
    capture_primary_key_update(b).await;
    rollback_leaves_nothing(b).await;
    cascade_is_captured(b).await;
    transaction_is_whole(b).await;
    read_limits(b).await;
    capture_uses_current_epoch(b).await;
    apply_reproduces_without_echo(b).await;
    apply_refuses_gaps_and_forks(b).await;
    apply_uncommitted_is_invisible(b).await;
    apply_refuses_other_shapes(b).await;
    fence_on_passive(b).await;
    fence_on_expired_lease(b).await;
    promotion_needs_a_lease(b).await;
    checksums_detect_difference(b).await;
    state_survives_reopen(b).await;
    trim_keeps_newest(b).await;
    secrets_never_leak(b).await;
    secret_values_never_leak_from_refusals(b).await;
    wait_for_commit_wakes(b).await;
    snapshot_installs_whole_and_continues(b).await;
    snapshot_is_consistent_under_writes(b).await;
    snapshot_install_abort_keeps_old_data(b).await;
    quarantine_tail_rewinds_the_divergent_tail(b).await;
    quarantine_tail_refuses_what_it_cannot_rewind(b).await;
    divergence_list_resolve_and_count(b).await;
    take_over_is_a_captured_write(b).await;
    merge_epoch_history_is_idempotent(b).await;
}

/// Generates one `#[tokio::test]` per conformance case, each building its
/// backend with `$make` (an expression evaluated per test), so every backend
/// runs every case and a failure names it.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            init_is_idempotent,
            init_seeds_state,
            catalog_describes_the_example_schema,
            capture_every_change,
            capture_primary_key_update,
            rollback_leaves_nothing,
            cascade_is_captured,
            transaction_is_whole,
            read_limits,
            capture_uses_current_epoch,
            apply_reproduces_without_echo,
            apply_refuses_gaps_and_forks,
            apply_uncommitted_is_invisible,
            apply_refuses_other_shapes,
            fence_on_passive,
            fence_on_expired_lease,
            promotion_needs_a_lease,
            checksums_detect_difference,
            state_survives_reopen,
            trim_keeps_newest,
            secrets_never_leak,
            secret_values_never_leak_from_refusals,
            wait_for_commit_wakes,
            snapshot_installs_whole_and_continues,
            snapshot_is_consistent_under_writes,
            snapshot_install_abort_keeps_old_data,
            quarantine_tail_rewinds_the_divergent_tail,
            quarantine_tail_refuses_what_it_cannot_rewind,
            divergence_list_resolve_and_count,
            take_over_is_a_captured_write,
            merge_epoch_history_is_idempotent,
            schema_change_is_logged_and_applied_at_its_position,
            drift_is_refused_until_repaired,
            snapshot_brings_missed_schema_changes,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let backend = $make;
                $crate::store::conformance::$case(&backend).await;
            }
        )*
    };
}
