//! `understudy divergence list|export|resolve`: what the divergence
//! quarantine holds, shown to an operator, exported for recovery, and marked
//! as dealt with.
//!
//! Owns: the rendering of quarantined changes (table, JSON), the export
//! document and the export file (mode 0600, never overwriting), and the
//! resolve action.
//! Must never: show a value of a secret column (`[capture] secret_columns`;
//! the example schema's key content) anywhere but in an export the operator
//! asked for (a file, or stdout with `--include-secrets`), or overwrite a
//! file.

use crate::capture::{Secrets, row_json};
use crate::config::Config;
use crate::model::{ChangeOp, key_text};
use crate::store::{DivergentChange, MemberStore, StoreError};
use crate::tables::Catalog;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `format` field of an export document.
pub const EXPORT_FORMAT: &str = "understudy-divergence-export";
/// The `version` field of an export document. 2: changes name their
/// `table` (1 had `entity`), rows hold any captured table's columns, and
/// every bytes value is base64 under `<column>_base64`.
pub const EXPORT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DivergenceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} exists already: refusing to overwrite it; choose another --out file")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(String),
}

/// One `divergence` action, as parsed from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Table (or JSON with `json`), secret columns redacted.
    List { include_resolved: bool, json: bool },
    /// The full images for recovery: into `out` (mode 0600, secret columns
    /// included), or onto stdout (secret columns only with
    /// `include_secrets`).
    Export {
        out: Option<PathBuf>,
        include_secrets: bool,
        include_resolved: bool,
        json: bool,
    },
    /// Mark the given ids (or all unresolved, with `all`) resolved.
    Resolve {
        ids: Vec<i64>,
        all: bool,
        json: bool,
    },
}

/// Run an action against the member's database; returns what to print on
/// stdout.
pub async fn run<S: MemberStore>(
    cfg: &Config,
    store: &S,
    action: Action,
) -> Result<String, DivergenceError> {
    match action {
        Action::List {
            include_resolved,
            json,
        } => {
            let list = store.divergence_list(include_resolved).await?;
            if json {
                let unresolved = store.divergent_count().await?;
                let doc = list_json(cfg, &store.catalog(), &list, unresolved);
                Ok(format!("{}\n", serde_json::to_string_pretty(&doc)?))
            } else {
                Ok(table(&list))
            }
        }
        Action::Export {
            out,
            include_secrets,
            include_resolved,
            json,
        } => {
            let list = store.divergence_list(include_resolved).await?;
            let now = store.db_now_ms().await?;
            let cat = store.catalog();
            match out {
                Some(path) => {
                    let doc = export_json(cfg, &cat, &list, true, now);
                    write_export(&path, &doc)?;
                    if json {
                        Ok(format!(
                            "{}\n",
                            json!({"written": path.display().to_string(), "changes": list.len(), "include_secrets": true})
                        ))
                    } else {
                        Ok(format!(
                            "wrote {} quarantined change(s), secret columns included, to {} (mode 0600)\n",
                            list.len(),
                            path.display()
                        ))
                    }
                }
                None => {
                    let doc = export_json(cfg, &cat, &list, include_secrets, now);
                    Ok(format!("{}\n", serde_json::to_string_pretty(&doc)?))
                }
            }
        }
        Action::Resolve { ids, all, json } => {
            let n = match (all, ids.is_empty()) {
                (true, true) => store.resolve_divergence(None).await?,
                (false, false) => store.resolve_divergence(Some(&ids)).await?,
                _ => {
                    return Err(DivergenceError::Usage(
                        "give either --id N (repeatable) or --all".into(),
                    ));
                }
            };
            let left = store.divergent_count().await?;
            if json {
                Ok(format!("{}\n", json!({"resolved": n, "unresolved": left})))
            } else {
                Ok(format!(
                    "resolved {n} quarantined change(s); {left} unresolved remain\n"
                ))
            }
        }
    }
}

fn position_fields(d: &DivergentChange) -> (u64, u64) {
    (d.change.pos.epoch, d.change.pos.seq)
}

/// One table row per quarantined change: its table and key (keys are
/// never secret), no row values.
pub fn table(list: &[DivergentChange]) -> String {
    let mut s = format!(
        "{:>6} {:>6} {:>10} {:<8} {:<6} {:<36} {:<24} {:<8} REASON\n",
        "ID", "EPOCH", "SEQ", "TABLE", "OP", "KEY", "QUARANTINED AT", "RESOLVED"
    );
    for d in list {
        let (epoch, seq) = position_fields(d);
        s.push_str(&format!(
            "{:>6} {:>6} {:>10} {:<8} {:<6} {:<36} {:<24} {:<8} {}\n",
            d.id,
            epoch,
            // seq 0: a late write that never had a place in the log.
            if seq == 0 {
                "-".to_string()
            } else {
                seq.to_string()
            },
            d.change.table_str(),
            d.change.op_name(),
            key_text(d.change.key()),
            crate::status::cli_status::utc(d.quarantined_at_ms),
            if d.resolved { "yes" } else { "no" },
            d.reason
        ));
    }
    if list.is_empty() {
        s.push_str("(no quarantined changes)\n");
    }
    s
}

fn entry_json(d: &DivergentChange, row: Value) -> Value {
    let (epoch, seq) = position_fields(d);
    json!({
        "id": d.id,
        "epoch": epoch,
        "seq": seq,
        "table": d.change.table(),
        "op": d.change.op_name(),
        "key": key_text(d.change.key()),
        "row": row,
        "quarantined_at_ms": d.quarantined_at_ms,
        "reason": d.reason,
        "resolved": d.resolved,
    })
}

/// The row image of an upsert (`null` for a delete), in the forms of
/// [`crate::capture::row_json`].
fn row_of(cat: &Catalog, d: &DivergentChange, secrets: Secrets) -> Value {
    let cat = d.tables.as_deref().unwrap_or(cat);
    match &d.change.op {
        ChangeOp::Upsert(img) => row_json(cat, img, secrets),
        ChangeOp::Delete { .. } => Value::Null,
        ChangeOp::Schema(s) => crate::capture::schema_json(s),
    }
}

/// `list --json`: one document, secret columns redacted.
pub fn list_json(cfg: &Config, cat: &Catalog, list: &[DivergentChange], unresolved: u64) -> Value {
    let changes: Vec<Value> = list
        .iter()
        .map(|d| entry_json(d, row_of(cat, d, Secrets::Redact)))
        .collect();
    json!({
        "cluster": cfg.cluster,
        "member": cfg.member,
        "divergent_changes": unresolved,
        "changes": changes,
    })
}

/// The export document: full row images; secret columns shown with
/// `include_secrets` (bytes as base64 under `<column>_base64`, as every
/// bytes value), else redacted.
pub fn export_json(
    cfg: &Config,
    cat: &Catalog,
    list: &[DivergentChange],
    include_secrets: bool,
    exported_at_ms: i64,
) -> Value {
    let secrets = if include_secrets {
        Secrets::Include
    } else {
        Secrets::Redact
    };
    let changes: Vec<Value> = list
        .iter()
        .map(|d| entry_json(d, row_of(cat, d, secrets)))
        .collect();
    json!({
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "cluster": cfg.cluster,
        "member": cfg.member,
        "exported_at_ms": exported_at_ms,
        "include_secrets": include_secrets,
        "changes": changes,
    })
}

/// Write an export to a new file only the owner can read (it holds the
/// values of secret columns). Never overwrites; a failed write leaves no file behind.
pub fn write_export(path: &Path, doc: &Value) -> Result<(), DivergenceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DivergenceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DivergenceError::Exists(path.to_path_buf()));
        }
        Err(e) => return Err(io(e)),
    };
    let written = serde_json::to_vec_pretty(doc)
        .map_err(DivergenceError::from)
        .and_then(|mut bytes| {
            bytes.push(b'\n');
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)
        });
    if written.is_err() {
        drop(f);
        let _ = std::fs::remove_file(path);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Position};
    use crate::store::conformance::{del, example_catalog, key};
    use base64::Engine as _;

    fn cfg() -> Config {
        let text = r#"
cluster = "prod"
member = "a"
initial_active = "a"
auto_failover = false
[database]
url = "sqlite://a.db"
[replication]
listen = "127.0.0.1:7401"
[status]
listen = "127.0.0.1:7501"
token = "change-me-please"
[tls]
ca = "ca.pem"
cert = "a.pem"
key = "a.key"
"#;
        Config::parse(text, Path::new("/tmp/a.toml"), &[]).expect("config")
    }

    fn sample() -> Vec<DivergentChange> {
        vec![
            DivergentChange {
                id: 1,
                change: Change {
                    pos: Position::new(1, 9),
                    op: ChangeOp::Upsert(key(
                        &example_catalog(),
                        "keys/db/pw",
                        "password",
                        b"hunter2-secret",
                        None,
                        5,
                    )),
                },
                quarantined_at_ms: 1_700_000_000_000,
                reason: "rejoin".into(),
                resolved: false,
                tables: None,
            },
            DivergentChange {
                id: 2,
                change: Change {
                    pos: Position::new(1, 0),
                    op: del("jobs", "j1"),
                },
                quarantined_at_ms: 1_700_000_000_000,
                reason: "committed while this member was fenced".into(),
                resolved: true,
                tables: None,
            },
        ]
    }

    #[test]
    fn list_forms_never_show_key_content() {
        let l = sample();
        let cat = example_catalog();
        let t = table(&l);
        let j = list_json(&cfg(), &cat, &l, 1).to_string();
        let e = export_json(&cfg(), &cat, &l, false, 0).to_string();
        for out in [&t, &j, &e] {
            assert!(!out.contains("hunter2"), "{out}");
            let b64 = base64::engine::general_purpose::STANDARD.encode(b"hunter2-secret");
            assert!(!out.contains(&b64), "{out}");
        }
        assert!(t.contains("keys/db/pw") && t.contains("rejoin"), "{t}");
        assert!(t.contains("2023-11-14"), "{t}");
        assert!(j.contains("<redacted 14 bytes>"), "{j}");
        assert!(j.contains("\"divergent_changes\":1"), "{j}");
        assert!(j.contains("\"table\":\"jobs\""), "{j}");
        assert!(t.lines().next().is_some_and(|h| h.contains("TABLE")), "{t}");
    }

    #[test]
    fn export_with_secrets_round_trips_the_content() {
        let doc = export_json(&cfg(), &example_catalog(), &sample(), true, 42);
        assert_eq!(doc["format"], EXPORT_FORMAT);
        assert_eq!(doc["include_secrets"], true);
        let b64 = doc["changes"][0]["row"]["content_base64"]
            .as_str()
            .expect("content");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(bytes, b"hunter2-secret");
        assert_eq!(doc["changes"][1]["op"], "delete");
        assert_eq!(doc["changes"][1]["seq"], 0);
    }

    #[test]
    fn export_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("export.json");
        let doc = export_json(&cfg(), &example_catalog(), &sample(), true, 1);
        write_export(&p, &doc).expect("write");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back: Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
        assert_eq!(back, doc);
        match write_export(&p, &json!({})) {
            Err(DivergenceError::Exists(q)) => assert_eq!(q, p),
            other => panic!("must refuse to overwrite, got {other:?}"),
        }
        assert_eq!(
            serde_json::from_slice::<Value>(&std::fs::read(&p).expect("read")).expect("json"),
            doc,
            "the existing file is untouched"
        );
    }
}
