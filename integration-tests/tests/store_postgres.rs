//! The PostgreSQL member database against a real server.

use integration_tests::pg::{self, TestDb};
use understudy::model::MemberId;
use understudy::store::postgres::PgStore;
use understudy::store::{InitParams, MemberStore};

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

#[tokio::test]
async fn smoke_capture_sequence_apply() {
    let (src_db, src) = fresh("smoke_src", "a").await;
    let (_dst_db, dst) = fresh("smoke_dst", "b").await;
    src_db
        .psql_run(
            "INSERT INTO projects(name, config) VALUES ('p1', '{\"a\": 1}'); \
             INSERT INTO jobs(id, project, name, definition) VALUES ('j1', 'p1', 'job', '{}'); \
             INSERT INTO keys(path, kind, content) VALUES ('k', 'password', '\\x0001ff');",
        )
        .expect("app writes");
    assert_eq!(src.sequence().await.unwrap(), 3);
    let read = src.read_changes(0, 100, 1 << 20).await.unwrap();
    assert!(read.at_head);
    assert_eq!(read.changes.len(), 3);
    let pos = dst.apply(&read.changes, true).await.unwrap();
    assert_eq!(pos.seq, 3);
    assert_eq!(
        src.checksums().await.unwrap(),
        dst.checksums().await.unwrap()
    );
    let err = _dst_db
        .psql_run("DELETE FROM jobs")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("member b is passive; the active member is a"),
        "{err}"
    );
}
