//! SQLite side of rejoin and takeover: rewinding a former active's divergent
//! tail into the quarantine (`us_quarantine`), listing and resolving what it
//! holds, taking over jobs, and merging epoch history from the active.
//!
//! Owns: the statements behind [`MemberStore::quarantine_tail`],
//! `divergence_list`, `resolve_divergence`, `divergent_count`,
//! `take_over` and `merge_epoch_history` for SQLite.
//! Must never: touch application rows while rewinding (the caller restores
//! them from the active), run the takeover past the fence (it is an
//! ordinary application write, captured and replicated like any other), or
//! put key content into an error.
//!
//! [`MemberStore::quarantine_tail`]: crate::store::MemberStore::quarantine_tail

use super::rows::{self, Tables, ident, log_width, table_sql};
use super::{Writer, err, i64_of, logged_epoch, not_initialised_or, position};
use crate::model::{Position, Role};
use crate::store::{DivergentChange, EpochRecord, StoreError, StoreResult};
use crate::tables::{CaptureSpec, Catalog, TableName};
use rusqlite::{Connection, params};
use std::sync::Arc;

/// The value columns `c0..` the change log and the quarantine share.
fn value_columns(tables: &Tables) -> String {
    (0..log_width(&tables.catalog))
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run `f` in a write transaction of its own on the writer, after rolling
/// back an open apply transaction (a rewind or a state change must never
/// ride along with half-received changes).
fn in_write_tx<T>(
    w: &mut Writer,
    url: &str,
    what: &str,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    w.end_apply(what);
    w.conn
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| not_initialised_or(e, url))?;
    let out = f(&w.conn).and_then(|v| {
        w.conn.execute_batch("COMMIT").map_err(err)?;
        Ok(v)
    });
    if out.is_err() && !w.conn.is_autocommit() {
        let _ = w.conn.execute_batch("ROLLBACK");
    }
    out
}

fn rusq(url: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| not_initialised_or(e, url)
}

/// See [`crate::store::MemberStore::quarantine_tail`].
/// Returns how many changes moved, and the tables after a schema change
/// the tail held was given back (see [`super::rollback::give_back`]).
pub(super) fn quarantine_tail(
    w: &mut Writer,
    tables: &Tables,
    spec: &CaptureSpec,
    url: &str,
    keep: Position,
    reason: &str,
) -> StoreResult<(u64, Option<Catalog>)> {
    let keep_seq = i64_of(keep.seq, "seq")?;
    let keep_epoch = i64_of(keep.epoch, "epoch")?;
    in_write_tx(w, url, "quarantine_tail", |c| {
        let role: String = c
            .query_row("SELECT role FROM us_state WHERE id = 1", [], |r| r.get(0))
            .map_err(rusq(url))?;
        if role == Role::Active.as_str() {
            return Err(StoreError::WrongRole {
                role: Role::Active,
                action: "rewind the change log of the active member (fence it first)".into(),
            });
        }
        let head = position(c)?;
        if head.seq <= keep.seq {
            // Nothing past the kept seq. At that very seq the member must
            // hold `keep` itself; below it, a later epoch than `keep`'s is
            // another history, not a tail (a member merely behind is fine).
            if head.seq > 0 && ((head.seq == keep.seq && head != keep) || head > keep) {
                return Err(StoreError::ForkBelow {
                    keep_upto: keep,
                    held: head,
                });
            }
            return Ok((0, None));
        }
        let (first, last, n): (Option<i64>, Option<i64>, i64) = c
            .query_row(
                "SELECT MIN(seq), MAX(seq), COUNT(*) FROM us_changelog WHERE seq > ?1",
                [keep_seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(err)?;
        let want = i64_of(head.seq - keep.seq, "tail length")?;
        let whole =
            first == Some(keep_seq + 1) && last == i64_of(head.seq, "seq").ok() && n == want;
        if !whole {
            let oldest: Option<i64> = c
                .query_row("SELECT MIN(seq) FROM us_changelog", [], |r| r.get(0))
                .map_err(err)?;
            return Err(StoreError::TailIncomplete {
                keep_upto: keep,
                head,
                oldest: oldest.and_then(|s| u64::try_from(s).ok()),
            });
        }
        if keep.seq > 0
            && let Some(e) = logged_epoch(c, keep_seq)?
            && e != keep.epoch
        {
            return Err(StoreError::ForkBelow {
                keep_upto: keep,
                held: Position::new(e, keep.seq),
            });
        }
        let cols = value_columns(tables);
        let first_id: i64 = c
            .query_row("SELECT coalesce(max(id), 0) FROM us_quarantine", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let moved = c
            .execute(
                &format!(
                    "INSERT INTO us_quarantine (epoch, seq, tbl, op, {cols}, reason)
                     SELECT epoch, seq, tbl, op, {cols}, ?2
                     FROM us_changelog WHERE seq > ?1 ORDER BY seq"
                ),
                params![keep_seq, reason],
            )
            .map_err(err)?;
        let given_back = super::rollback::give_back(c, url, spec, keep_seq, first_id)?;
        let deleted = c
            .execute("DELETE FROM us_changelog WHERE seq > ?1", [keep_seq])
            .map_err(err)?;
        if moved != deleted {
            return Err(StoreError::Backend(format!(
                "quarantine copied {moved} changes but the change log lost {deleted}; rolled back"
            )));
        }
        c.execute(
            "UPDATE us_state SET pos_epoch = ?1, pos_seq = ?2 WHERE id = 1",
            params![keep_epoch, keep_seq],
        )
        .map_err(err)?;
        // AUTOINCREMENT remembers the largest seq ever used: without moving
        // it back, a change captured after a later promotion would leave a
        // gap where the quarantined seqs were.
        c.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'us_changelog'",
            [keep_seq],
        )
        .map_err(err)?;
        // The rows the tail changed are restored by a snapshot: owed from
        // this commit until an install's commit, across restarts.
        c.execute(
            "INSERT OR REPLACE INTO us_snapshot_due (id, reason, at_ms)
             VALUES (1, ?1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
            [reason],
        )
        .map_err(err)?;
        Ok((moved as u64, given_back))
    })
}

/// See [`crate::store::MemberStore::divergence_list`].
pub(super) fn list(
    c: &Connection,
    tables: &Tables,
    older: &super::ddl::OlderTables,
    url: &str,
    include_resolved: bool,
) -> StoreResult<Vec<DivergentChange>> {
    // Its own columns first, then the change-log layout with every value
    // column it has (rows given back with a schema change may be wider
    // than today's tables).
    let width = super::schema::columns(c, "us_quarantine")
        .map_err(rusq(url))?
        .iter()
        .filter(|n| n.starts_with('c') && n[1..].parse::<usize>().is_ok())
        .count()
        .max(log_width(&tables.catalog));
    let cols: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
    let sql = format!(
        "SELECT id, quarantined_at, reason, resolved, \
                (SELECT catalog FROM us_quarantine_catalog k WHERE k.id = q.catalog_id), \
                seq, epoch, tbl, op, {} \
         FROM us_quarantine q {} ORDER BY id",
        cols.join(", "),
        if include_resolved {
            ""
        } else {
            "WHERE resolved = 0"
        }
    );
    let mut st = c.prepare(&sql).map_err(rusq(url))?;
    let mut it = st.query([]).map_err(err)?;
    let mut out = Vec::new();
    let mut given_back: std::collections::HashMap<String, Tables> = Default::default();
    let mut given_tables = None;
    while let Some(row) = it.next().map_err(err)? {
        let seq = row
            .get::<_, i64>(5)
            .ok()
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        // Read with the tables the change was captured under: those it was
        // quarantined with when a schema change was given back with it;
        // else by seq (0: a late write past the fence, captured with
        // today's triggers).
        let at = match row.get::<_, Option<String>>(4).map_err(err)? {
            Some(json) => {
                if !given_back.contains_key(&json) {
                    let cat = crate::store::versions::catalog_from_json(0, &json)?;
                    let t = Tables::new(Arc::new(cat), |_| true);
                    given_back.insert(json.clone(), t);
                }
                let t = &given_back[&json];
                given_tables = Some(Arc::clone(&t.catalog));
                t
            }
            None if seq == 0 => tables,
            None => crate::store::versions::tables_at(older, tables, seq),
        };
        let captured_under = given_tables.take();
        let change = rows::change_from_row(at, row, 5)?;
        let get = |i: usize, what: &str| {
            StoreError::Corrupt(format!("us_quarantine {what} of a row: {i}"))
        };
        out.push(DivergentChange {
            id: row.get(0).map_err(|_| get(0, "id"))?,
            change,
            quarantined_at_ms: row.get(1).map_err(|_| get(1, "quarantined_at"))?,
            reason: row.get(2).map_err(|_| get(2, "reason"))?,
            resolved: row.get::<_, i64>(3).map_err(|_| get(3, "resolved"))? != 0,
            tables: captured_under,
        });
    }
    Ok(out)
}

/// See [`crate::store::MemberStore::resolve_divergence`].
pub(super) fn resolve(w: &mut Writer, url: &str, ids: Option<Vec<i64>>) -> StoreResult<u64> {
    in_write_tx(w, url, "resolve_divergence", |c| match ids {
        None => c
            .execute(
                "UPDATE us_quarantine SET resolved = 1 WHERE resolved = 0",
                [],
            )
            .map(|n| n as u64)
            .map_err(rusq(url)),
        Some(ids) => {
            let mut st = c
                .prepare("UPDATE us_quarantine SET resolved = 1 WHERE id = ?1 AND resolved = 0")
                .map_err(rusq(url))?;
            let mut n = 0u64;
            for id in ids {
                n += st.execute([id]).map_err(err)? as u64;
            }
            Ok(n)
        }
    })
}

/// See [`crate::store::MemberStore::divergent_count`].
pub(super) fn count(c: &Connection, url: &str) -> StoreResult<u64> {
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM us_quarantine WHERE resolved = 0",
            [],
            |r| r.get(0),
        )
        .map_err(rusq(url))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// See [`crate::store::MemberStore::take_over`]. The writer connection
/// never sets `applying` outside its apply transaction, so the fence and the
/// capture triggers treat this exactly as an application's write.
pub(super) fn take_over(
    w: &mut Writer,
    url: &str,
    table: &TableName,
    column: &str,
    from: Option<String>,
    to: String,
) -> StoreResult<u64> {
    if from.as_ref() == Some(&to) {
        return Ok(0);
    }
    in_write_tx(w, url, "take_over", |c| {
        // `IS` compares NULL as a value: `IS NULL` for rows without owner.
        c.execute(
            &format!(
                "UPDATE {} SET {col} = ?1 WHERE {col} IS ?2",
                table_sql(table),
                col = ident(column)
            ),
            params![to, from],
        )
        .map(|n| n as u64)
        .map_err(rusq(url))
    })
}

/// See [`crate::store::MemberStore::merge_epoch_history`].
pub(super) fn merge_epochs(w: &mut Writer, url: &str, recs: Vec<EpochRecord>) -> StoreResult<u64> {
    if recs.is_empty() {
        return Ok(0);
    }
    let mut vals = Vec::with_capacity(recs.len());
    for r in recs {
        vals.push((
            i64_of(r.epoch.0, "epoch")?,
            r.active.0,
            i64_of(r.start.epoch, "start epoch")?,
            i64_of(r.start.seq, "start seq")?,
            r.at_ms,
            r.reason,
        ));
    }
    in_write_tx(w, url, "merge_epoch_history", |c| {
        let mut st = c
            .prepare(
                "INSERT INTO us_epoch_history (epoch, active, start_epoch, start_seq, at_ms, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (epoch) DO NOTHING",
            )
            .map_err(rusq(url))?;
        let mut n = 0u64;
        for (e, a, se, ss, at, reason) in &vals {
            n += st.execute(params![e, a, se, ss, at, reason]).map_err(err)? as u64;
        }
        Ok(n)
    })
}
