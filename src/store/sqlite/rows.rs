//! Row images between SQLite and the model: decoding change-log rows and
//! application rows, and the statements that apply a change.
//!
//! Owns: the mapping of the change log's typed columns `c1..c10` (documented
//! in schemas/sqlite/0001_core.sql) and of the application tables' columns.
//! Must never: put a value into an error message (key content is a secret;
//! other values are simply not needed to locate a problem: seq and key are).
//!
//! SQLite is loosely typed: an application may store an integer in a TEXT
//! column or text in a BLOB column. Decoding is tolerant in the same way on
//! every path (change log, table scan for checksums), so the active and a
//! passive that applied its changes compute the same images.

use crate::model::{
    Change, ChangeOp, Entity, JobRow, KeyRow, Position, ProjectRow, RowImage, Secret,
};
use crate::store::{StoreError, StoreResult};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Row, params};

pub(super) const OP_UPSERT: i64 = 1;
pub(super) const OP_DELETE: i64 = 2;

/// The change-log columns read by [`change_from_row`], in order.
pub(super) const LOG_COLUMNS: &str =
    "seq, epoch, entity, op, key, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10";

fn corrupt(what: &str, at: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "{what} at {at} has a value of an unexpected type or is NULL"
    ))
}

fn opt_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

fn text(v: ValueRef<'_>, what: &str, at: &str) -> StoreResult<String> {
    opt_text(v).ok_or_else(|| corrupt(what, at))
}

fn int(v: ValueRef<'_>, what: &str, at: &str) -> StoreResult<i64> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        ValueRef::Real(f) => Ok(f as i64),
        ValueRef::Text(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| corrupt(what, at)),
        _ => Err(corrupt(what, at)),
    }
}

fn boolean(v: ValueRef<'_>, what: &str, at: &str) -> StoreResult<bool> {
    Ok(int(v, what, at)? != 0)
}

fn bytes(v: ValueRef<'_>, what: &str, at: &str) -> StoreResult<Vec<u8>> {
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
        _ => Err(corrupt(what, at)),
    }
}

/// Decode a row image whose key is `key` and whose other columns start at
/// index `first` of `row`, laid out as the change log's `c1..` columns (the
/// application tables' columns after the key follow the same order).
fn image(
    entity: Entity,
    key: String,
    row: &Row<'_>,
    first: usize,
    at: &str,
) -> StoreResult<RowImage> {
    let c = |i: usize| row.get_ref(first + i).map_err(|_| corrupt("a column", at));
    Ok(match entity {
        Entity::Project => RowImage::Project(ProjectRow {
            name: key,
            description: opt_text(c(0)?),
            config: opt_text(c(1)?),
            updated_at: int(c(2)?, "projects.updated_at", at)?,
        }),
        Entity::Job => RowImage::Job(JobRow {
            id: key,
            project: text(c(0)?, "jobs.project", at)?,
            name: text(c(1)?, "jobs.name", at)?,
            group_path: opt_text(c(2)?),
            description: opt_text(c(3)?),
            definition: opt_text(c(4)?),
            schedule: opt_text(c(5)?),
            schedule_enabled: boolean(c(6)?, "jobs.schedule_enabled", at)?,
            execution_enabled: boolean(c(7)?, "jobs.execution_enabled", at)?,
            owner_member: opt_text(c(8)?),
            updated_at: int(c(9)?, "jobs.updated_at", at)?,
        }),
        Entity::Key => RowImage::Key(KeyRow {
            path: key,
            kind: text(c(0)?, "keys.kind", at)?,
            content: Secret(bytes(c(1)?, "keys.content", at)?),
            meta: opt_text(c(2)?),
            updated_at: int(c(3)?, "keys.updated_at", at)?,
        }),
    })
}

/// Decode one change-log row selected with [`LOG_COLUMNS`].
pub(super) fn change_from_row(row: &Row<'_>) -> StoreResult<Change> {
    let seq: i64 = row.get(0).map_err(|_| corrupt("seq", "a change-log row"))?;
    let at = format!("change-log seq {seq}");
    let epoch = int(
        row.get_ref(1).map_err(|_| corrupt("epoch", &at))?,
        "epoch",
        &at,
    )?;
    let code = int(
        row.get_ref(2).map_err(|_| corrupt("entity", &at))?,
        "entity",
        &at,
    )?;
    let op = int(row.get_ref(3).map_err(|_| corrupt("op", &at))?, "op", &at)?;
    let key = text(row.get_ref(4).map_err(|_| corrupt("key", &at))?, "key", &at)?;
    let entity = Entity::from_code(code)
        .ok_or_else(|| StoreError::Corrupt(format!("{at}: unknown entity code {code}")))?;
    let pos = Position::new(
        u64::try_from(epoch).map_err(|_| corrupt("epoch", &at))?,
        u64::try_from(seq).map_err(|_| corrupt("seq", &at))?,
    );
    let op = match op {
        OP_UPSERT => ChangeOp::Upsert(image(entity, key, row, 5, &at)?),
        OP_DELETE => ChangeOp::Delete { entity, key },
        other => {
            return Err(StoreError::Corrupt(format!(
                "{at}: unknown op code {other}"
            )));
        }
    };
    Ok(Change { pos, op })
}

/// `SELECT` of every row of an application table, key first, then the other
/// columns in change-log order.
pub(super) fn table_select(entity: Entity) -> &'static str {
    match entity {
        Entity::Project => "SELECT name, description, config, updated_at FROM projects",
        Entity::Job => {
            "SELECT id, project, name, group_path, description, definition, schedule, \
             schedule_enabled, execution_enabled, owner_member, updated_at FROM jobs"
        }
        Entity::Key => "SELECT path, kind, content, meta, updated_at FROM keys",
    }
}

/// Like [`table_select`], with the rowid last, one keyset page at a time:
/// `?1` is the last rowid read, `?2` the page size. Rowid order is the
/// table's own storage order, so a page is a short range scan.
pub(super) fn table_page(entity: Entity) -> &'static str {
    match entity {
        Entity::Project => {
            "SELECT name, description, config, updated_at, rowid FROM projects \
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
        }
        Entity::Job => {
            "SELECT id, project, name, group_path, description, definition, schedule, \
             schedule_enabled, execution_enabled, owner_member, updated_at, rowid FROM jobs \
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
        }
        Entity::Key => {
            "SELECT path, kind, content, meta, updated_at, rowid FROM keys \
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
        }
    }
}

/// The index of the rowid column in [`table_page`]'s result.
pub(super) fn table_page_rowid_index(entity: Entity) -> usize {
    match entity {
        Entity::Project => 4,
        Entity::Job => 11,
        Entity::Key => 5,
    }
}

/// Insert one snapshot row into its (emptied) table. The caller holds the
/// install transaction with `applying = 1`, so nothing is captured.
pub(super) fn insert_image(conn: &Connection, img: &RowImage) -> StoreResult<()> {
    let v = image_values(img);
    let done = match img {
        RowImage::Project(p) => conn
            .prepare_cached(
                "INSERT INTO projects (name, description, config, updated_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut st| st.execute(params![p.name, v[0], v[1], v[2]])),
        RowImage::Job(j) => conn
            .prepare_cached(
                "INSERT INTO jobs (id, project, name, group_path, description, definition, schedule,
                 schedule_enabled, execution_enabled, owner_member, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut st| {
                st.execute(params![j.id, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]])
            }),
        RowImage::Key(k) => conn
            .prepare_cached(
                "INSERT INTO keys (path, kind, content, meta, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| st.execute(params![k.path, v[0], v[1], v[2], v[3]])),
    };
    done.map(drop).map_err(|e| {
        StoreError::Backend(format!(
            "installing a snapshot row of table {}: {e}",
            img.entity().table()
        ))
    })
}

/// Decode one row selected with [`table_select`].
pub(super) fn image_from_table_row(entity: Entity, row: &Row<'_>) -> StoreResult<RowImage> {
    let at = format!("a row of table {}", entity.table());
    let key = text(
        row.get_ref(0).map_err(|_| corrupt("the key", &at))?,
        "the key",
        &at,
    )?;
    image(entity, key, row, 1, &at)
}

fn ot(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::Text(s.clone()))
}

/// The `c1..c10` values of an image (unused columns NULL).
fn image_values(img: &RowImage) -> [Value; 10] {
    let mut c: [Value; 10] = std::array::from_fn(|_| Value::Null);
    match img {
        RowImage::Project(p) => {
            c[0] = ot(&p.description);
            c[1] = ot(&p.config);
            c[2] = Value::Integer(p.updated_at);
        }
        RowImage::Job(j) => {
            c[0] = Value::Text(j.project.clone());
            c[1] = Value::Text(j.name.clone());
            c[2] = ot(&j.group_path);
            c[3] = ot(&j.description);
            c[4] = ot(&j.definition);
            c[5] = ot(&j.schedule);
            c[6] = Value::Integer(i64::from(j.schedule_enabled));
            c[7] = Value::Integer(i64::from(j.execution_enabled));
            c[8] = ot(&j.owner_member);
            c[9] = Value::Integer(j.updated_at);
        }
        RowImage::Key(k) => {
            c[0] = Value::Text(k.kind.clone());
            c[1] = Value::Blob(k.content.expose().to_vec());
            c[2] = ot(&k.meta);
            c[3] = Value::Integer(k.updated_at);
        }
    }
    c
}

fn i64_of(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

/// Write one change to its table (upsert with `ON CONFLICT DO UPDATE`, never
/// `INSERT OR REPLACE`, which deletes conflicting rows behind the delete
/// triggers' back) and record it in the change log under its own position.
/// The caller holds the apply transaction with `applying = 1`.
pub(super) fn apply_change(conn: &Connection, ch: &Change) -> StoreResult<()> {
    let at = || {
        format!(
            "change {} ({} {})",
            ch.pos,
            ch.entity().table(),
            ch.op_name()
        )
    };
    let fail = |e: rusqlite::Error| StoreError::Backend(format!("applying {}: {e}", at()));
    let (op, vals) = match &ch.op {
        ChangeOp::Upsert(img) => {
            let v = image_values(img);
            match img {
                RowImage::Project(p) => conn
                    .prepare_cached(
                        "INSERT INTO projects (name, description, config, updated_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                         config = excluded.config, updated_at = excluded.updated_at",
                    )
                    .and_then(|mut st| st.execute(params![p.name, v[0], v[1], v[2]])),
                RowImage::Job(j) => conn
                    .prepare_cached(
                        "INSERT INTO jobs (id, project, name, group_path, description, definition, schedule,
                         schedule_enabled, execution_enabled, owner_member, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                         ON CONFLICT (id) DO UPDATE SET project = excluded.project, name = excluded.name,
                         group_path = excluded.group_path, description = excluded.description,
                         definition = excluded.definition, schedule = excluded.schedule,
                         schedule_enabled = excluded.schedule_enabled,
                         execution_enabled = excluded.execution_enabled,
                         owner_member = excluded.owner_member, updated_at = excluded.updated_at",
                    )
                    .and_then(|mut st| {
                        st.execute(params![j.id, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]])
                    }),
                RowImage::Key(k) => conn
                    .prepare_cached(
                        "INSERT INTO keys (path, kind, content, meta, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (path) DO UPDATE SET kind = excluded.kind, content = excluded.content,
                         meta = excluded.meta, updated_at = excluded.updated_at",
                    )
                    .and_then(|mut st| st.execute(params![k.path, v[0], v[1], v[2], v[3]])),
            }
            .map_err(fail)?;
            (OP_UPSERT, v)
        }
        ChangeOp::Delete { entity, key } => {
            let sql = match entity {
                Entity::Project => "DELETE FROM projects WHERE name = ?1",
                Entity::Job => "DELETE FROM jobs WHERE id = ?1",
                Entity::Key => "DELETE FROM keys WHERE path = ?1",
            };
            conn.prepare_cached(sql)
                .and_then(|mut st| st.execute([key]))
                .map_err(fail)?;
            (OP_DELETE, std::array::from_fn(|_| Value::Null))
        }
    };
    let [c1, c2, c3, c4, c5, c6, c7, c8, c9, c10] = vals;
    let seq = i64_of(ch.pos.seq, "seq")?;
    let epoch = i64_of(ch.pos.epoch, "epoch")?;
    conn.prepare_cached(
        "INSERT INTO us_changelog (seq, epoch, entity, op, key, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            epoch,
            ch.entity().code(),
            op,
            ch.key(),
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            c8,
            c9,
            c10
        ])
    })
    .map_err(fail)?;
    Ok(())
}
