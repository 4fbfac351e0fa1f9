//! `understudy divergence list|export|resolve` as an operator meets it, on
//! a real SQLite member database whose divergent tail was quarantined: key
//! content never shown by list, recoverable from an export file (mode 0600,
//! never overwritten), resolve by id and all at once.

use integration_tests::understudy_bin;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use understudy::model::{Epoch, MemberId, Position, Role};
use understudy::store::MemberStore;
use understudy::store::sqlite::SqliteStore;
use understudy::tables::CaptureSpec;

const SECRET: &[u8] = b"pw-\x00\xffDIVERGED-42";

fn run(args: &[&str]) -> Output {
    Command::new(understudy_bin())
        .args(args)
        .output()
        .expect("run understudy")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("a.toml");
    std::fs::write(
        &cfg,
        r#"cluster = "div"
member = "a"
initial_active = "a"
auto_failover = false

[database]
url = "sqlite://data/a.db"

[replication]
listen = "127.0.0.1:7401"

[status]
listen = "127.0.0.1:7501"
token = "change-me-please"

[tls]
ca = "certs/ca.pem"
cert = "certs/a.pem"
key = "certs/a.key"
"#,
    )
    .expect("write config");
    cfg
}

/// A member that wrote 4 changes as the active, then was fenced in favour of
/// `b` whose epoch 2 starts at 1/1: changes 2..4 are its divergent tail.
fn prepare(dir: &Path) -> PathBuf {
    let cfg = write_config(dir);
    ok(&run(&[
        "init",
        "--config",
        cfg.to_str().expect("utf-8 path"),
    ]));
    let db = dir.join("data/a.db");
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute_batch(
        "INSERT INTO projects(name) VALUES ('p1');
         INSERT INTO jobs(id, project, name, owner_member) VALUES ('j1', 'p1', 'nightly', 'a');",
    )
    .expect("app writes");
    c.execute(
        "INSERT INTO keys(path, kind, content) VALUES ('keys/db/pw', 'password', ?1)",
        [SECRET],
    )
    .expect("key write");
    c.execute_batch("DELETE FROM jobs WHERE id = 'j1'")
        .expect("delete");
    drop(c);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let s = SqliteStore::open(&db, &CaptureSpec::example())
            .await
            .expect("store");
        s.set_role(Role::Fenced, Epoch(2), Some(&MemberId::new("b")))
            .await
            .expect("fence");
        let n = s
            .quarantine_tail(Position::new(1, 1), "rejoin: epoch 2 started at 1/1")
            .await
            .expect("quarantine");
        assert_eq!(n, 3);
    });
    cfg
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn b64(bytes: &[u8]) -> String {
    // Standard alphabet with padding, as the export writes it.
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

#[test]
fn list_export_and_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = prepare(dir.path());
    let cfg = cfg.to_str().expect("utf-8 path");
    let secret_b64 = b64(SECRET);

    // list: a table, key path shown, key content never.
    let out = run(&["divergence", "list", "--config", cfg]);
    let table = ok(&out);
    assert!(!contains_bytes(&out.stdout, b"DIVERGED"), "{table}");
    assert!(!table.contains(&secret_b64), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "header + 3 changes:\n{table}");
    for col in [
        "ID",
        "EPOCH",
        "SEQ",
        "TABLE",
        "OP",
        "KEY",
        "QUARANTINED AT",
        "RESOLVED",
        "REASON",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(lines[1].contains("jobs") && lines[1].contains("j1") && lines[1].contains("upsert"));
    assert!(lines[2].contains("keys/db/pw") && lines[2].contains("rejoin: epoch 2"));
    assert!(lines[3].contains("delete"), "{table}");

    // list --json: one document, content redacted.
    let out = run(&["divergence", "list", "--config", cfg, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&ok(&out)).expect("one JSON document");
    assert!(!contains_bytes(&out.stdout, b"DIVERGED"));
    assert_eq!(doc["member"], "a");
    assert_eq!(doc["divergent_changes"], 3);
    let changes = doc["changes"].as_array().expect("changes");
    assert_eq!(
        changes
            .iter()
            .map(|c| c["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(
        changes[1]["row"]["content"],
        format!("<redacted {} bytes>", SECRET.len())
    );
    let ids: Vec<String> = changes
        .iter()
        .map(|c| c["id"].as_i64().expect("id").to_string())
        .collect();

    // export without --out: redacted unless asked.
    let out = run(&["divergence", "export", "--config", cfg]);
    ok(&out);
    assert!(!contains_bytes(&out.stdout, b"DIVERGED"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&secret_b64));
    let out = run(&["divergence", "export", "--config", cfg, "--include-secrets"]);
    assert!(ok(&out).contains(&secret_b64));

    // export --out: a private file with the content, never overwritten.
    let file = dir.path().join("recovered.json");
    let f = file.to_str().expect("utf-8 path");
    let msg = ok(&run(&["divergence", "export", "--config", cfg, "--out", f]));
    assert!(msg.contains("3 quarantined change"), "{msg}");
    assert!(!msg.contains(&secret_b64), "{msg}");
    let mode = std::fs::metadata(&file)
        .expect("export file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("export JSON");
    assert_eq!(exported["format"], "understudy-divergence-export");
    assert_eq!(exported["changes"][1]["row"]["content_base64"], secret_b64);
    assert_eq!(exported["changes"][0]["row"]["owner_member"], "a");
    let again = run(&["divergence", "export", "--config", cfg, "--out", f]);
    assert!(
        !again.status.success(),
        "an existing file must not be overwritten"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let still: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(still, exported);

    // resolve: one by id, then the rest.
    let bad = run(&["divergence", "resolve", "--config", cfg]);
    assert!(!bad.status.success(), "resolve needs --id or --all");
    let r = ok(&run(&[
        "divergence",
        "resolve",
        "--config",
        cfg,
        "--id",
        &ids[0],
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_str(&r).expect("json");
    assert_eq!(r["resolved"], 1);
    assert_eq!(r["unresolved"], 2);
    let table = ok(&run(&["divergence", "list", "--config", cfg]));
    assert_eq!(table.lines().count(), 3, "{table}");
    let table = ok(&run(&[
        "divergence",
        "list",
        "--config",
        cfg,
        "--include-resolved",
    ]));
    assert_eq!(table.lines().count(), 4, "{table}");
    let msg = ok(&run(&["divergence", "resolve", "--config", cfg, "--all"]));
    assert!(msg.contains("resolved 2"), "{msg}");
    assert!(msg.contains("0 unresolved"), "{msg}");
    let doc: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "divergence",
        "list",
        "--config",
        cfg,
        "--json",
    ])))
    .expect("json");
    assert_eq!(doc["divergent_changes"], 0);
    assert_eq!(doc["changes"].as_array().map(Vec::len), Some(0));
}
