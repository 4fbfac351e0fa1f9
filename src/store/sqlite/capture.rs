//! SQLite capture, cascade and fence triggers, generated from the table
//! description and kept in step with it.
//!
//! Owns: the text of every trigger understudy puts on a captured table
//! (`us_capture_*` write each row change into the change log in the
//! writer's own transaction; `us_cascade_*` repeat `ON DELETE CASCADE` for
//! writers that did not turn on `PRAGMA foreign_keys`; `us_fence_*` refuse
//! application writes on a passive or once the lease ran out), and their
//! synchronisation: create what is missing or changed, drop what no captured
//! table needs any more.
//! Must never: run outside the caller's write transaction, or capture the
//! agent's own applies (every trigger stands down while `applying = 1`).

use super::now_ms_sql;
use super::rows::{OP_DELETE, OP_UPSERT, ident, table_sql};
use crate::tables::{TableDesc, TableName};
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A table name as it may appear inside a trigger's name: as is when it is
/// a plain identifier (so the example schema keeps its triggers' names),
/// otherwise made plain and told apart by a short hash of the real name.
fn name_part(t: &TableName) -> String {
    let s = t.as_str();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return s.to_string();
    }
    let plain: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let h = Sha256::digest(s.as_bytes());
    format!("{plain}_{}", hex::encode(&h[..4]))
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `INSERT INTO us_changelog` of `cols` (with `prefix.`) as op `op`.
fn log_insert(t: &TableDesc, op: i64, prefix: &str, cols: &[&str], cond: &str) -> String {
    let vals: Vec<String> = cols
        .iter()
        .map(|c| format!("{prefix}.{}", ident(c)))
        .collect();
    let slots: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
    format!(
        "INSERT INTO us_changelog (epoch, tbl, op, {}) SELECT epoch, {}, {op}, {} FROM us_state WHERE applying = 0{cond};",
        slots.join(", "),
        sql_literal(t.name.as_str()),
        vals.join(", ")
    )
}

/// The capture triggers of one table: `(name, CREATE TRIGGER ...)`.
fn capture_triggers(t: &TableDesc) -> Vec<(String, String)> {
    let n = name_part(&t.name);
    let tbl = table_sql(&t.name);
    let image: Vec<&str> = t.image_columns().iter().map(|c| c.name.as_str()).collect();
    let key = &image[..t.key_len()];
    let key_changed: Vec<String> = key
        .iter()
        .map(|k| format!("OLD.{0} IS NOT NEW.{0}", ident(k)))
        .collect();
    let upsert = |p| log_insert(t, OP_UPSERT, p, &image, "");
    let delete = |cond: &str| log_insert(t, OP_DELETE, "OLD", key, cond);
    let moved = format!(" AND ({})", key_changed.join(" OR "));
    vec![
        (
            format!("us_capture_{n}_ins"),
            format!(
                "CREATE TRIGGER \"us_capture_{n}_ins\" AFTER INSERT ON {tbl} BEGIN\n    {}\nEND",
                upsert("NEW")
            ),
        ),
        (
            // A key update is a delete of the old key and an upsert.
            format!("us_capture_{n}_upd"),
            format!(
                "CREATE TRIGGER \"us_capture_{n}_upd\" AFTER UPDATE ON {tbl} BEGIN\n    {}\n    {}\nEND",
                delete(&moved),
                upsert("NEW")
            ),
        ),
        (
            format!("us_capture_{n}_del"),
            format!(
                "CREATE TRIGGER \"us_capture_{n}_del\" AFTER DELETE ON {tbl} BEGIN\n    {}\nEND",
                delete("")
            ),
        ),
    ]
}

/// `ON DELETE CASCADE` as triggers on the parents: the sqlite3 shell and
/// many applications leave `PRAGMA foreign_keys` off, and a cascade that
/// did not happen would leave children the active never had. The child
/// deletes fire the children's capture triggers in the same transaction.
/// On the apply path they repeat what the active did (its child deletes
/// follow in the log and find nothing left to delete).
/// `(parent table, name, CREATE TRIGGER ...)`.
fn cascade_triggers(tables: &[TableDesc]) -> Vec<(TableName, String, String)> {
    let mut out = Vec::new();
    for child in tables {
        for (i, fk) in child.foreign_keys.iter().enumerate() {
            if !fk.cascade {
                continue;
            }
            let name = format!("us_cascade_{}_{i}", name_part(&child.name));
            let cond: Vec<String> = fk
                .columns
                .iter()
                .zip(&fk.parent_columns)
                .map(|(&c, p)| format!("{} = OLD.{}", ident(&child.columns[c].name), ident(p)))
                .collect();
            let sql = format!(
                "CREATE TRIGGER \"{name}\" AFTER DELETE ON {} BEGIN\n    DELETE FROM {} WHERE {};\nEND",
                table_sql(&fk.parent),
                table_sql(&child.name),
                cond.join(" AND ")
            );
            out.push((fk.parent.clone(), name, sql));
        }
    }
    out
}

/// The message of a write refused because this member is not the active one.
pub(super) fn role_message(member: &str, role: &str, active: Option<&str>) -> String {
    let role = if role == "active" { "not active" } else { role };
    format!(
        "understudy: write refused: member {member} is {role}; the active member is {}",
        active.unwrap_or("unknown")
    )
}

/// The message of a write refused because the active's lease ran out.
pub(super) fn lease_message(member: &str) -> String {
    format!(
        "understudy: write refused: the lease of this active member ({member}) ran out (its agent is not renewing it); writes resume when the agent renews it or another member is promoted"
    )
}

const OPS: [(&str, &str); 3] = [("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")];

/// `(name, CREATE TRIGGER ...)` of every fence trigger. RAISE takes only a
/// literal, so the names are written into the trigger text; `set_role`
/// re-creates them in the transaction that changes the role.
pub(super) fn fence_triggers(
    tables: &[TableName],
    member: &str,
    role: &str,
    active: Option<&str>,
) -> Vec<(String, String)> {
    let role_msg = sql_literal(&role_message(member, role, active));
    let lease_msg = sql_literal(&lease_message(member));
    let now = now_ms_sql();
    let mut out = Vec::new();
    for t in tables {
        let (n, tbl) = (name_part(t), table_sql(t));
        for (o, verb) in OPS {
            let name = format!("us_fence_{n}_{o}");
            let sql = format!(
                "CREATE TRIGGER \"{name}\" BEFORE {verb} ON {tbl} BEGIN\n    \
                 SELECT RAISE(ABORT, {role_msg}) FROM us_state WHERE applying = 0 AND role <> 'active';\n    \
                 SELECT RAISE(ABORT, {lease_msg}) FROM us_state WHERE applying = 0 AND role = 'active' AND lease_until < {now};\n\
                 END"
            );
            out.push((name, sql));
        }
    }
    out
}

/// Capture and cascade triggers for `tables`.
pub(super) fn capture_and_cascade(tables: &[TableDesc]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = tables.iter().flat_map(capture_triggers).collect();
    out.extend(cascade_triggers(tables).into_iter().map(|(_, n, s)| (n, s)));
    out
}

/// Make the triggers whose names start with one of `prefixes` exactly
/// `want`: create the missing, re-create the changed, drop the others.
/// Returns whether anything changed. Runs in the caller's transaction.
pub(super) fn sync(
    conn: &Connection,
    prefixes: &[&str],
    want: &[(String, String)],
) -> rusqlite::Result<bool> {
    let mut have: BTreeMap<String, String> = BTreeMap::new();
    {
        let mut st = conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, sql) = row?;
            if prefixes.iter().any(|p| name.starts_with(p)) {
                have.insert(name, sql);
            }
        }
    }
    let mut changed = false;
    for (name, sql) in want {
        if have.remove(name).as_deref() == Some(sql.as_str()) {
            continue;
        }
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS \"{name}\";\n{sql};"))?;
        changed = true;
    }
    for name in have.keys() {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS \"{name}\""))?;
        changed = true;
    }
    Ok(changed)
}

/// Re-create the fence triggers from the state row, unless they already say
/// exactly that (so a repeated `init` changes nothing). Runs inside the
/// caller's transaction.
pub(super) fn refresh_fence(conn: &Connection, tables: &[TableName]) -> rusqlite::Result<bool> {
    let row: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT member, role, active FROM us_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((member, role, active)) = row else {
        return Ok(false);
    };
    sync(
        conn,
        &["us_fence_"],
        &fence_triggers(tables, &member, &role, active.as_deref()),
    )
}

/// `(table, trigger name)` of every trigger `tables` need (`check_schema`
/// insists on each: a missing one would lose changes or let writes
/// through).
pub(super) fn required_names(tables: &[TableDesc]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in tables {
        let own = capture_triggers(t).into_iter().chain(fence_triggers(
            std::slice::from_ref(&t.name),
            "",
            "",
            None,
        ));
        out.extend(own.map(|(n, _)| (t.name.to_string(), n)));
    }
    let cascades = cascade_triggers(tables).into_iter();
    out.extend(cascades.map(|(parent, n, _)| (parent.to_string(), n)));
    out
}
