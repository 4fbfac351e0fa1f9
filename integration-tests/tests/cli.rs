//! The command line as an operator meets it: init, log, certs, and bad input
//! (a clear message, a non-zero exit, nothing changed).

use integration_tests::understudy_bin;
use std::path::Path;
use std::process::{Command, Output};
use understudy::config::DatabaseUrl;
use understudy::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use understudy::model::{MemberId, Secret};
use understudy::workload::{AppConn, AppOp};

fn run(args: &[&str]) -> Output {
    Command::new(understudy_bin())
        .args(args)
        .output()
        .expect("run understudy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cluster(dir: &Path) -> LocalCluster {
    let specs: Vec<MemberSpec> = ["a", "b", "c"]
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.join(format!("data/{m}.db")))),
        })
        .collect();
    LocalCluster::create(dir, &understudy_bin(), &specs, ClusterOptions::default()).unwrap()
}

fn schema_of(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    let rows: Vec<String> = c
        .prepare("SELECT coalesce(sql, '') FROM sqlite_master ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("\n")
}

#[test]
fn init_is_idempotent_and_log_redacts_key_content() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(dir.path());
    let cfg = cl.member("a").config.to_str().unwrap().to_string();
    let first = run(&["init", "--config", &cfg]);
    assert!(first.status.success(), "{}", stderr(&first));
    let db = dir.path().join("data/a.db");
    let before = schema_of(&db);
    let second = run(&["init", "--config", &cfg]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("current"),
        "{:?}",
        second
    );
    assert_eq!(before, schema_of(&db), "a second init changed the schema");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut app = AppConn::connect(&DatabaseUrl::Sqlite(db.clone()))
            .await
            .unwrap();
        app.execute(&[AppOp::UpsertKey {
            path: "keys/db/password".into(),
            kind: "password",
            content: Secret(b"correct-horse-battery".to_vec()),
        }])
        .await
        .unwrap();
    });
    for json in [false, true] {
        let mut args = vec!["log", "--config", &cfg];
        if json {
            args.push("--json");
        }
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("keys/db/password"), "{text}");
        assert!(
            !text.contains("correct-horse"),
            "key content leaked: {text}"
        );
        assert!(text.contains("<redacted 21 bytes>"), "{text}");
        if json {
            let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON document");
            assert_eq!(v.as_array().unwrap().len(), 1);
            assert_eq!(v[0]["op"], "upsert");
        }
    }
    let since = run(&["log", "--config", &cfg, "--since", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&since.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        0,
        "--since skips older changes"
    );
}

#[test]
fn bad_config_names_file_and_key_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(dir.path());
    let cfg_path = cl.member("a").config.clone();
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed TOML",
            good.replace("[replication]", "[replication"),
            "a.toml",
        ),
        (
            "incomplete: no [tls]",
            good.split("[tls]").next().unwrap().to_string() + "\n",
            "tls",
        ),
        (
            "lease not below failover",
            good.replace("lease_timeout_ms = 1000", "lease_timeout_ms = 9000"),
            "lease_timeout_ms",
        ),
        (
            "unknown key",
            good.replace("auto_failover", "autofailover"),
            "autofailover",
        ),
        (
            "bad listen address",
            good.replacen("listen = \"127.0.0.1:", "listen = \"nowhere:", 1),
            "replication.listen",
        ),
    ];
    for (what, text, must_name) in cases {
        std::fs::write(&cfg_path, &text).unwrap();
        for cmd in ["init", "run", "log"] {
            let out = run(&[cmd, "--config", cfg_path.to_str().unwrap()]);
            let err = stderr(&out);
            assert!(!out.status.success(), "{what}: `{cmd}` succeeded");
            assert!(
                err.contains("a.toml"),
                "{what}: `{cmd}` does not name the file: {err}"
            );
            assert!(
                err.contains(must_name),
                "{what}: `{cmd}` does not name {must_name}: {err}"
            );
        }
    }
    assert!(
        !dir.path().join("data/a.db").exists(),
        "a bad config created a database"
    );
}

#[test]
fn unreachable_database_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(dir.path());
    let cfg = cl.member("a").config.to_str().unwrap().to_string();
    // A closed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://understudy:hunter2@127.0.0.1:{port}/nothing");
    for cmd in ["init", "log"] {
        let out = Command::new(understudy_bin())
            .args([cmd, "--config", &cfg])
            .env("UNDERSTUDY_DATABASE_URL", &url)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "`{cmd}` succeeded against a closed port"
        );
        assert!(err.contains("unreachable"), "{err}");
        assert!(!err.contains("hunter2"), "password leaked: {err}");
    }
    // An SQLite file that does not exist: `log` does not create it.
    let out = run(&["log", "--config", &cfg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("init"), "{}", stderr(&out));
    assert!(!dir.path().join("data/a.db").exists());
}

#[test]
fn foreign_tables_of_the_same_names_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(dir.path());
    let db = dir.path().join("data/a.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload BLOB); INSERT INTO jobs VALUES (1, x'00');").unwrap();
    }
    let before = schema_of(&db);
    let out = run(&["init", "--config", cl.member("a").config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("jobs"), "{err}");
    assert_eq!(before, schema_of(&db), "init changed a foreign schema");
}

#[test]
fn certs_init_writes_the_contract_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = run(&[
        "certs",
        "init",
        "--out",
        out_dir.to_str().unwrap(),
        "--members",
        "a,b,w",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in [
        "ca.pem", "a.pem", "a.key", "b.pem", "b.key", "w.pem", "w.key",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    // Not overwritten without --force.
    let again = run(&[
        "certs",
        "init",
        "--out",
        out_dir.to_str().unwrap(),
        "--members",
        "a",
    ]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let _ = MemberId::new("a");
}
