//! Conformance cases of schema changes through the change log
//! (`understudy migrate`): every backend runs its own DDL, logs one entry
//! at one position, reads older entries with the tables they were captured
//! under, applies an entry as a passive, refuses drift, and runs missed
//! changes inside a snapshot install.
//!
//! Owns: those cases and the two DDLs they use (one per dialect, same
//! resulting tables).
//! Must never: use a DDL whose tables differ between the dialects (mixed
//! clusters compare fingerprints).

use super::{Backend, active, all_changes, count, exec, passive, read_snapshot, seed};
use crate::model::{ChangeOp, Position, SchemaChange};
use crate::store::{MemberStore, StoreError, StoreResult};

/// `r` is the refusal of a schema change on a member that is not the
/// active.
fn refused_on_passive(r: &StoreResult<(SchemaChange, Position)>) {
    match r {
        Err(StoreError::Ddl(why)) => assert!(why.contains("passive"), "{why}"),
        other => panic!("a passive must refuse to run a schema change, got {other:?}"),
    }
}

/// Add `priority` to jobs and back-fill it: SQLite, then PostgreSQL.
const ADD_PRIORITY: (&str, &str) = (
    "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0; UPDATE jobs SET priority = 5",
    "ALTER TABLE jobs ADD COLUMN priority bigint NOT NULL DEFAULT 0; UPDATE jobs SET priority = 5",
);

fn has_priority<S: MemberStore>(s: &S) -> bool {
    s.catalog()
        .tables()
        .iter()
        .any(|t| t.name.as_str() == "jobs" && t.columns.iter().any(|c| c.name == "priority"))
}

/// A schema change on the active: one log entry at the next position,
/// rows before it read with the old tables and after it with the new, the
/// history recorded; a passive applies one batch spanning it and ends with
/// the same log, tables and rows; a re-apply is a no-op; a DDL that fails
/// changes nothing.
pub async fn schema_change_is_logged_and_applied_at_its_position<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let before = a.catalog().fingerprint().to_string();
    let (sqlite, postgres) = ADD_PRIORITY;
    let (sc, pos) = a.migrate(sqlite, postgres).await.expect("migrate");
    assert_eq!(sc.version, 1);
    assert_eq!((sc.sqlite.as_str(), sc.postgres.as_str()), ADD_PRIORITY);
    assert!(has_priority(&a), "the active's tables have the new column");
    assert_eq!(sc.fingerprint, a.catalog().fingerprint());
    assert_ne!(sc.fingerprint, before);
    assert_eq!(
        a.schema_history().await.expect("history"),
        vec![(0, before.clone()), (1, sc.fingerprint.clone())]
    );
    assert_eq!(a.schema_version().await.expect("version"), 1);
    exec(
        b,
        &adb,
        "INSERT INTO jobs(id, project, name, priority, updated_at) VALUES ('j9', 'p1', 'late', 7, 3000)",
    )
    .await;
    let src = all_changes(&a).await;
    let at = src.iter().position(|c| c.pos == pos).expect("the entry");
    assert_eq!(src[at].op, ChangeOp::Schema(sc.clone()));
    assert_eq!(at + 1, src.len() - 1, "one row change after it");
    let width = |i: usize| match &src[i].op {
        ChangeOp::Upsert(r) if r.table.as_str() == "jobs" => r.values.len(),
        other => panic!("expected a jobs upsert at {i}, got {other:?}"),
    };
    assert_eq!(width(1), 11, "a job captured before reads with 11 columns");
    assert_eq!(width(src.len() - 1), 12, "after it, with 12");
    let head = a.state().await.expect("state").position;

    let (pdb, p) = passive(b).await;
    let (first, rest) = src.split_at(2);
    p.apply(first, false).await.expect("apply without commit");
    assert_eq!(p.apply(rest, true).await.expect("apply"), head);
    assert!(has_priority(&p));
    assert_eq!(p.catalog().fingerprint(), sc.fingerprint);
    assert_eq!(p.schema_version().await.expect("version"), 1);
    assert_eq!(
        all_changes(&p).await,
        src,
        "the passive's log is the active's"
    );
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
    let fives = "SELECT COUNT(*) FROM jobs WHERE priority = 5";
    assert_eq!(b.app_query_i64(&pdb, fives).await.unwrap(), Some(2));
    assert_eq!(p.apply(&src, true).await.expect("re-apply"), head);
    assert_eq!(p.schema_version().await.expect("version"), 1);

    let bad =
        "ALTER TABLE jobs ADD COLUMN note TEXT; ALTER TABLE no_such_table ADD COLUMN x INTEGER";
    match a.migrate(bad, bad).await {
        Err(StoreError::Ddl(why)) => assert!(why.contains("no_such_table"), "{why}"),
        other => panic!("a failing DDL must be StoreError::Ddl, got {other:?}"),
    }
    assert_eq!(a.schema_version().await.expect("version"), 1);
    assert_eq!(
        a.state().await.expect("state").position,
        head,
        "nothing logged"
    );
    assert_eq!(a.catalog().fingerprint(), sc.fingerprint);
    assert_eq!(count(b, &adb, "jobs").await, 3);
    // A constraint the existing rows violate (two jobs have priority 5).
    let unique = "CREATE UNIQUE INDEX jobs_priority_once ON jobs(priority)";
    match a.migrate(unique, unique).await {
        Err(StoreError::Ddl(why)) => assert!(why.to_lowercase().contains("unique"), "{why}"),
        other => panic!("a violated constraint must be StoreError::Ddl, got {other:?}"),
    }
    assert_eq!(a.schema_version().await.expect("version"), 1);
    assert_eq!(a.state().await.expect("state").position, head);
}

/// A passive whose tables were changed by hand refuses the schema change
/// (drift, a `Shape` error), keeps what came before it, and applies it
/// once repaired. A passive runs no schema change of its own.
pub async fn drift_is_refused_until_repaired<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let (sqlite, postgres) = ADD_PRIORITY;
    let (_, pos) = a.migrate(sqlite, postgres).await.expect("migrate");
    let src = all_changes(&a).await;
    let (pdb, p) = passive(b).await;
    refused_on_passive(&p.migrate(sqlite, postgres).await);
    exec(b, &pdb, "ALTER TABLE jobs ADD COLUMN priority INTEGER").await;
    match p.apply(&src, true).await {
        Err(StoreError::Shape(why)) => assert!(why.contains("schema version 1"), "{why}"),
        other => panic!("drift must be a Shape error, got {other:?}"),
    }
    let kept = p.state().await.expect("state").position;
    assert_eq!(kept.seq, pos.seq - 1, "what came before the change is kept");
    exec(b, &pdb, "ALTER TABLE jobs DROP COLUMN priority").await;
    p.refresh_catalog().await.expect("refresh");
    assert_eq!(p.apply(&src, true).await.expect("apply"), pos);
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
}

/// A snapshot carries the schema changes its rows are shaped by; a member
/// that missed them runs them inside the install, and applies what comes
/// after with the new tables.
pub async fn snapshot_brings_missed_schema_changes<B: Backend>(b: &B) {
    let (adb, a) = active(b).await;
    seed(b, &adb).await;
    let (sqlite, postgres) = ADD_PRIORITY;
    let (sc, _) = a.migrate(sqlite, postgres).await.expect("migrate");
    a.sequence().await.expect("sequence");
    let mut r = a.snapshot_reader().await.expect("snapshot reader");
    let at = r.position();
    assert_eq!(r.schema_changes(), vec![sc.clone()]);
    let rows = read_snapshot(&mut r, 100).await;
    drop(r);
    let (_pdb, p) = passive(b).await;
    p.install_snapshot_begin(at).await.expect("install begin");
    p.install_snapshot_schema(std::slice::from_ref(&sc))
        .await
        .expect("install schema");
    p.install_snapshot_rows(&rows).await.expect("install rows");
    assert_eq!(p.install_snapshot_commit().await.expect("commit"), at);
    assert_eq!(p.schema_version().await.expect("version"), 1);
    assert_eq!(p.catalog().fingerprint(), sc.fingerprint);
    exec(
        b,
        &adb,
        "UPDATE jobs SET priority = 9, updated_at = 4000 WHERE id = 'j1'",
    )
    .await;
    let after: Vec<_> = all_changes(&a)
        .await
        .into_iter()
        .filter(|c| c.pos > at)
        .collect();
    assert_eq!(after.len(), 1);
    p.apply(&after, true)
        .await
        .expect("apply after the snapshot");
    assert_eq!(
        p.checksums().await.expect("checksums"),
        a.checksums().await.expect("checksums")
    );
}
