//! Change-log reading for operators: the rendering behind `understudy log`.
//!
//! Owns: how a captured change is shown (text line or JSON), with key content
//! redacted.
//! Must never: show key bytes, or write to the database.

use crate::model::{Change, ChangeOp, RowImage};
use serde_json::{Value, json};

/// A change as JSON, key content replaced by `<redacted N bytes>`.
pub fn change_json(c: &Change) -> Value {
    let row = match &c.op {
        ChangeOp::Upsert(img) => row_json(img),
        ChangeOp::Delete { .. } => Value::Null,
    };
    json!({
        "epoch": c.pos.epoch,
        "seq": c.pos.seq,
        "entity": c.entity(),
        "op": c.op_name(),
        "key": c.key(),
        "row": row,
    })
}

/// A row image as JSON, key content redacted.
pub fn row_json(img: &RowImage) -> Value {
    match img {
        RowImage::Project(p) => json!({
            "name": p.name, "description": p.description, "config": p.config,
            "updated_at": p.updated_at,
        }),
        RowImage::Job(j) => json!({
            "id": j.id, "project": j.project, "name": j.name, "group_path": j.group_path,
            "description": j.description, "definition": j.definition, "schedule": j.schedule,
            "schedule_enabled": j.schedule_enabled, "execution_enabled": j.execution_enabled,
            "owner_member": j.owner_member, "updated_at": j.updated_at,
        }),
        RowImage::Key(k) => json!({
            "path": k.path, "kind": k.kind,
            "content": redacted(k.content.expose().len()),
            "meta": k.meta, "updated_at": k.updated_at,
        }),
    }
}

fn redacted(len: usize) -> String {
    format!("<redacted {len} bytes>")
}

/// One human-readable line per change.
pub fn change_line(c: &Change) -> String {
    let detail = match &c.op {
        ChangeOp::Upsert(RowImage::Project(p)) => format!(
            "config={}",
            p.config
                .as_deref()
                .map(|s| shorten(s, 60))
                .unwrap_or_default()
        ),
        ChangeOp::Upsert(RowImage::Job(j)) => format!(
            "project={} name={} owner={}",
            j.project,
            j.name,
            j.owner_member.as_deref().unwrap_or("-")
        ),
        ChangeOp::Upsert(RowImage::Key(k)) => format!(
            "kind={} content={}",
            k.kind,
            redacted(k.content.expose().len())
        ),
        ChangeOp::Delete { .. } => String::new(),
    };
    format!(
        "{:>6}/{:<10} {:<7} {:<6} {} {}",
        c.pos.epoch,
        c.pos.seq,
        c.entity().table(),
        c.op_name(),
        c.key(),
        detail
    )
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyRow, Position, Secret};

    #[test]
    fn key_content_is_redacted_in_both_forms() {
        let c = Change {
            pos: Position::new(1, 9),
            op: ChangeOp::Upsert(RowImage::Key(KeyRow {
                path: "keys/db".into(),
                kind: "password".into(),
                content: Secret(b"s3cr3t-pw".to_vec()),
                meta: None,
                updated_at: 5,
            })),
        };
        let j = change_json(&c).to_string();
        let l = change_line(&c);
        for out in [&j, &l] {
            assert!(!out.contains("s3cr3t"), "{out}");
            assert!(out.contains("<redacted 9 bytes>"), "{out}");
        }
        assert!(j.contains("\"seq\":9"));
    }
}
