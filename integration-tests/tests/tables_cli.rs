//! `understudy tables` as an operator meets it, on SQLite, in real
//! processes: the example schema after `init`, the scheduler-shaped fixture
//! (schemas/examples/scheduler.sqlite.sql) listed in `[capture]`, and the
//! refusal of a table understudy cannot capture (named, with what to do, a
//! non-zero exit, nothing installed).

use integration_tests::understudy_bin;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCHEDULER_SQLITE: &str = include_str!("../../schemas/examples/scheduler.sqlite.sql");

/// The fixture's tables, in the order the fixture file creates them.
const SCHEDULER_TABLES: [&str; 9] = [
    "project",
    "scheduled_execution",
    "workflow",
    "workflow_step",
    "workflow_workflow_step",
    "rdoption",
    "rdoption_values",
    "notification",
    "storage",
];

/// Run the binary with no `UNDERSTUDY_*` variable from the test's own
/// environment, so a developer's shell cannot change the config under test.
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(understudy_bin());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("UNDERSTUDY_")) {
        cmd.env_remove(k);
    }
    cmd.args(args).output().expect("run understudy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A one-member config for `dir/a.db` (no peers: `init` and `tables` talk
/// to nobody), with `extra` appended (`[capture]`, `[takeover]`).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
cluster = "tables-test"
member = "a"
initial_active = "a"
auto_failover = false

[database]
url = "sqlite://a.db"

[replication]
listen = "127.0.0.1:0"

[status]
listen = "127.0.0.1:0"
token = "tables-test-token"

[tls]
ca = "certs/ca.pem"
cert = "certs/a.pem"
key = "certs/a.key"

{extra}
"#
    );
    let path = dir.join("a.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn init(cfg: &Path) {
    let out = run(&["init", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
}

/// `understudy tables --config cfg --json`, parsed (one JSON document).
fn tables_json(cfg: &Path) -> Value {
    let out = run(&["tables", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "tables failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tables --json is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn table<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["tables"]
        .as_array()
        .expect("tables array")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("table {name} missing: {doc:#}"))
}

fn column<'a>(doc: &'a Value, table_name: &str, column_name: &str) -> &'a Value {
    table(doc, table_name)["columns"]
        .as_array()
        .expect("columns array")
        .iter()
        .find(|c| c["name"] == column_name)
        .unwrap_or_else(|| panic!("column {table_name}.{column_name} missing"))
}

fn table_names(doc: &Value) -> Vec<String> {
    doc["tables"]
        .as_array()
        .expect("tables array")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect()
}

fn fingerprint(doc: &Value) -> String {
    let f = doc["fingerprint"].as_str().expect("fingerprint string");
    assert!(!f.is_empty(), "empty fingerprint");
    f.to_string()
}

/// The fixture's database in `dir`, created the way an application would.
fn scheduler_db(dir: &Path) {
    let db = rusqlite::Connection::open(dir.join("a.db")).unwrap();
    db.execute_batch(SCHEDULER_SQLITE)
        .expect("the fixture's DDL loads");
}

fn capture_section(tables: &[&str]) -> String {
    let list: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[capture]\ntables = [{}]\nsecret_columns = [\"storage.data\"]\n\n[takeover]\ntable = \"scheduled_execution\"\nowner_column = \"server_nodeuuid\"\n",
        list.join(", ")
    )
}

#[test]
fn example_schema_after_init() {
    let mut prints = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "");
        init(&cfg);
        let doc = tables_json(&cfg);
        // Parents first, ties by name: keys (no parent) may come first.
        let names = table_names(&doc);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, ["jobs", "keys", "projects"], "{doc:#}");
        let at = |t: &str| names.iter().position(|n| n == t).unwrap();
        assert!(at("projects") < at("jobs"), "{names:?}");
        assert_eq!(table(&doc, "jobs")["key"], serde_json::json!(["id"]));
        let content = column(&doc, "keys", "content");
        assert_eq!(content["secret"], true, "{content}");
        assert_eq!(content["type"], "bytes", "{content}");
        assert_eq!(column(&doc, "keys", "path")["secret"], false);
        let fk = &table(&doc, "jobs")["foreign_keys"][0];
        assert_eq!(fk["parent"], "projects", "{fk}");
        assert_eq!(fk["cascade"], true, "{fk}");
        prints.push(fingerprint(&doc));

        let text = run(&["tables", "--config", cfg.to_str().unwrap()]);
        assert!(text.status.success(), "{}", stderr(&text));
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(&prints[prints.len() - 1]), "{text}");
        assert!(text.contains("keys") && text.contains("secret"), "{text}");
    }
    assert_eq!(
        prints[0], prints[1],
        "two inits of the example schema differ"
    );
}

#[test]
fn scheduler_fixture_is_described_as_the_database_has_it() {
    let dir = tempfile::tempdir().unwrap();
    scheduler_db(dir.path());
    let cfg = write_config(dir.path(), &capture_section(&SCHEDULER_TABLES));
    init(&cfg);
    let doc = tables_json(&cfg);

    let names = table_names(&doc);
    let mut sorted = names.clone();
    sorted.sort();
    let mut expected: Vec<String> = SCHEDULER_TABLES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(sorted, expected, "every captured table, once");
    let at = |t: &str| names.iter().position(|n| n == t).unwrap();
    for (parent, child) in [
        ("project", "scheduled_execution"),
        ("scheduled_execution", "workflow"),
        ("workflow", "workflow_step"),
        ("workflow_step", "workflow_workflow_step"),
        ("rdoption", "rdoption_values"),
    ] {
        assert!(at(parent) < at(child), "{parent} after {child}: {names:?}");
    }

    assert_eq!(
        table(&doc, "workflow_workflow_step")["key"],
        serde_json::json!(["workflow_id", "step_id"])
    );
    assert_eq!(
        table(&doc, "rdoption_values")["key"],
        serde_json::json!(["rdoption_id", "value"])
    );
    let fks = table(&doc, "workflow_workflow_step")["foreign_keys"]
        .as_array()
        .unwrap();
    assert_eq!(fks.len(), 2, "{fks:?}");
    for fk in fks {
        assert_eq!(fk["cascade"], true, "{fk}");
        assert_eq!(fk["parent_columns"], serde_json::json!(["id"]), "{fk}");
    }
    let step_fk = &table(&doc, "workflow_step")["foreign_keys"][0];
    assert_eq!(step_fk["columns"], serde_json::json!(["workflow_id"]));
    assert_eq!(step_fk["parent"], "workflow");
    assert_eq!(step_fk["cascade"], true);

    let data = column(&doc, "storage", "data");
    assert_eq!(
        (&data["type"], &data["secret"], &data["nullable"]),
        (
            &Value::from("bytes"),
            &Value::from(true),
            &Value::from(true)
        ),
        "{data}"
    );
    for (t, c, ty) in [
        ("scheduled_execution", "uuid", "uuid"),
        ("scheduled_execution", "schedule_enabled", "bool"),
        ("scheduled_execution", "timeout", "numeric"),
        ("scheduled_execution", "average_duration", "real"),
        ("scheduled_execution", "date_created", "timestamptz"),
        ("scheduled_execution", "options", "json"),
        ("project", "created", "timestamp"),
        ("project", "retire_on", "date"),
        ("storage", "json_data", "text"),
    ] {
        assert_eq!(column(&doc, t, c)["type"], ty, "{t}.{c}");
    }
    assert_eq!(
        column(&doc, "scheduled_execution", "timeout")["declared"],
        "NUMERIC(10, 2)"
    );
    assert_eq!(
        column(&doc, "scheduled_execution", "server_nodeuuid")["nullable"],
        true
    );
    assert_eq!(
        column(&doc, "scheduled_execution", "job_name")["nullable"],
        false
    );
    assert_eq!(
        column(&doc, "scheduled_execution", "id")["ids"],
        serde_json::json!({"kind": "rowid", "autoincrement": true})
    );
    assert_eq!(
        column(&doc, "workflow", "id")["ids"],
        serde_json::json!({"kind": "rowid", "autoincrement": false})
    );
    assert_eq!(column(&doc, "rdoption_values", "value")["ids"], Value::Null);

    // A second database built the same way, its tables listed in another
    // order: the same description, the same fingerprint.
    let other = tempfile::tempdir().unwrap();
    scheduler_db(other.path());
    let mut reversed = SCHEDULER_TABLES;
    reversed.reverse();
    let other_cfg = write_config(other.path(), &capture_section(&reversed));
    init(&other_cfg);
    let other_doc = tables_json(&other_cfg);
    assert_eq!(fingerprint(&doc), fingerprint(&other_doc));
    assert_eq!(doc, other_doc, "same schema, same description");

    let text = run(&["tables", "--config", cfg.to_str().unwrap()]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("workflow_workflow_step  key (workflow_id, step_id)"),
        "{text}"
    );
    assert!(
        text.contains("foreign key (workflow_id) -> workflow(id) on delete cascade"),
        "{text}"
    );
}

fn user_tables(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn assert_refused_by_name(args: &[&str], out: &Output) {
    assert!(
        !out.status.success(),
        "{args:?} accepted a table without a key"
    );
    let err = stderr(out);
    assert!(err.contains("audit_trail"), "{args:?}: {err}");
    assert!(
        err.contains("no primary key") && err.contains("add a PRIMARY KEY"),
        "{args:?} does not say what to do: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed a description anyway"
    );
}

#[test]
fn a_table_without_primary_key_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE project (name TEXT NOT NULL PRIMARY KEY, description TEXT NULL);
             CREATE TABLE audit_trail (at TIMESTAMP NOT NULL, message TEXT NULL);",
        )
        .unwrap();
    let before = user_tables(&db);
    let bad = "[capture]\ntables = [\"project\", \"audit_trail\"]\n";
    let cfg = write_config(dir.path(), bad);
    let cfg = cfg.to_str().unwrap();

    // A new member: init refuses and installs nothing; with nothing
    // installed there is no description, and `tables` says to run init.
    let args = ["init", "--config", cfg];
    assert_refused_by_name(&args, &run(&args));
    assert_eq!(
        before,
        user_tables(&db),
        "a refused init changed the database"
    );
    let out = run(&["tables", "--config", cfg]);
    assert!(!out.status.success(), "tables described a refused schema");
    assert!(stderr(&out).contains("understudy init"), "{}", stderr(&out));

    // A member initialised with the good table, whose config then gains
    // the bad one: both commands refuse it by name.
    write_config(dir.path(), "[capture]\ntables = [\"project\"]\n");
    init(Path::new(cfg));
    write_config(dir.path(), bad);
    for args in [
        vec!["init", "--config", cfg],
        vec!["tables", "--config", cfg, "--json"],
        vec!["tables", "--config", cfg],
    ] {
        assert_refused_by_name(&args, &run(&args));
    }
}

#[test]
fn a_takeover_table_that_is_not_captured_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    scheduler_db(dir.path());
    let cfg = write_config(
        dir.path(),
        "[capture]\ntables = [\"project\"]\n\n[takeover]\ntable = \"scheduled_execution\"\nowner_column = \"server_nodeuuid\"\n",
    );
    for cmd in ["init", "tables"] {
        let out = run(&[cmd, "--config", cfg.to_str().unwrap()]);
        assert!(!out.status.success(), "{cmd} accepted the config");
        let err = stderr(&out);
        assert!(
            err.contains("a.toml")
                && err.contains("takeover.table")
                && err.contains("not a captured table"),
            "{cmd}: {err}"
        );
    }
}
