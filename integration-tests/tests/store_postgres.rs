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
