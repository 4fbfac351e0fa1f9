//! Set-based apply of a batch of changes on PostgreSQL: the batch's
//! change-log rows in one `INSERT`, and its effect on the captured tables
//! as one multi-row statement per table and kind, in an order that leaves
//! the tables exactly as applying the changes one by one would.
//!
//! Owns: the apply statements (prepared once per connection and catalog),
//! the plan that turns a batch into statements ([`plan`]), and the column
//! arrays of row images (the snapshot install uses them too).
//! Must never: move a change across a delete of a row that other rows may
//! reference (its foreign keys' actions run at that point, so what comes
//! before and after it does not commute), or put two changes of one row
//! into one statement (`ON CONFLICT DO UPDATE` refuses to touch a row
//! twice, and the result would depend on the statement's row order).
//!
//! Why set-based: a PostgreSQL passive applying one statement per change
//! spends its time in per-statement work on the server (bind, plan,
//! executor start-up) and was the bottleneck behind a fast SQLite active.
//!
//! Why the plan is exact. A *parent table* is one some foreign key
//! references (itself included). A delete in a parent table is a
//! *barrier*: with `ON DELETE CASCADE` it deletes children, with `SET
//! NULL` it changes them, with `NO ACTION` it needs them gone or moved
//! first; none of that commutes with the changes around it, so barriers
//! stay where they are (consecutive barriers of one table share a
//! statement). Between barriers (a *segment*) no foreign-key action runs,
//! so only the last change of each row matters, and changes of different
//! rows commute except through foreign keys (a row needs its parent) and
//! other unique keys (a deleted row's unique value may be taken by a new
//! row). Per segment the plan therefore writes: upserts of parent tables,
//! parents first (the catalog's order), then deletes of the other tables
//! (children first), then their upserts. A row's parent exists by the time
//! it is written if it did in the one-by-one order (a parent's delete is a
//! barrier, never inside the segment), and deletes come before the upserts
//! that may reuse their unique values.

use super::values::{Carrier, LogEntry, Slot, TableCodec, Tables};
use crate::model::{Change, ChangeOp, RowImage};
use crate::tables::{TableId, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// One statement of a planned batch.
#[derive(Debug, PartialEq)]
pub(super) enum Step<'a> {
    /// Insert or update these rows of one table (one image per row).
    Upsert(TableId, Vec<&'a [Value]>),
    /// Delete these keys of one table.
    Delete(TableId, Vec<&'a [Value]>),
}

/// A change with its table, after [`Tables::check`].
pub(super) type Checked<'a> = (TableId, &'a Change);

/// The table statements for `changes` (already checked and consecutive),
/// in the order they must run. The log rows are written separately.
pub(super) fn plan<'a>(tables: &Tables, changes: &[Checked<'a>]) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut start = 0;
    // The keys of the barrier statement at the end of `steps`, if any.
    let mut barrier: HashSet<&'a [Value]> = HashSet::new();
    for (i, &(id, c)) in changes.iter().enumerate() {
        let ChangeOp::Delete { key, .. } = &c.op else {
            continue;
        };
        if !tables.codecs[id.0].has_children {
            continue;
        }
        let before = steps.len();
        plan_segment(tables, &changes[start..i], &mut steps);
        start = i + 1;
        let nothing_between = steps.len() == before;
        match steps.last_mut() {
            // Consecutive barriers of one table (nothing planned in
            // between) share a statement.
            Some(Step::Delete(t, keys)) if *t == id && nothing_between => {
                if barrier.insert(key) {
                    keys.push(key);
                }
            }
            _ => {
                barrier.clear();
                barrier.insert(key);
                steps.push(Step::Delete(id, vec![key]));
            }
        }
    }
    plan_segment(tables, &changes[start..], &mut steps);
    steps
}

/// One statement per change, in log order: what the active did, statement
/// for statement. The fallback for a batch whose set-based plan ran into a
/// constraint the catalog does not describe (a unique key besides the
/// primary key whose value moved from one row to another: one multi-row
/// upsert checks it row by row, in an order of its own).
pub(super) fn one_by_one<'a>(changes: &[Checked<'a>]) -> Vec<Step<'a>> {
    // Schema changes never get here: `Tables::check` refuses them first.
    changes
        .iter()
        .filter_map(|&(id, c)| match &c.op {
            ChangeOp::Upsert(r) => Some(Step::Upsert(id, vec![&r.values[..]])),
            ChangeOp::Delete { key, .. } => Some(Step::Delete(id, vec![&key[..]])),
            ChangeOp::Schema(_) => None,
        })
        .collect()
}

/// The net effect of a segment without barriers.
fn plan_segment<'a>(tables: &Tables, seg: &[Checked<'a>], steps: &mut Vec<Step<'a>>) {
    if seg.is_empty() {
        return;
    }
    // The last change of each row wins; earlier ones are overwritten by it.
    let mut last: HashMap<(TableId, &[Value]), usize> = HashMap::with_capacity(seg.len());
    for (i, (id, c)) in seg.iter().enumerate() {
        last.insert((*id, c.key()), i);
    }
    let n = tables.codecs.len();
    let mut up: Vec<Vec<&[Value]>> = vec![Vec::new(); n];
    let mut del: Vec<Vec<&[Value]>> = vec![Vec::new(); n];
    for (i, (id, c)) in seg.iter().enumerate() {
        if last.get(&(*id, c.key())) != Some(&i) {
            continue;
        }
        match &c.op {
            ChangeOp::Upsert(r) => up[id.0].push(&r.values),
            ChangeOp::Delete { key, .. } => del[id.0].push(key),
            // Refused by `Tables::check` before any plan is made.
            ChangeOp::Schema(_) => {}
        }
    }
    let parent = |i: &usize| tables.codecs[*i].has_children;
    for i in (0..n).filter(parent) {
        debug_assert!(del[i].is_empty(), "a parent table's delete ends a segment");
        push(steps, Step::Upsert(TableId(i), std::mem::take(&mut up[i])));
    }
    for i in (0..n).rev().filter(|i| !parent(i)) {
        push(steps, Step::Delete(TableId(i), std::mem::take(&mut del[i])));
    }
    for i in (0..n).filter(|i| !parent(i)) {
        push(steps, Step::Upsert(TableId(i), std::mem::take(&mut up[i])));
    }
}

fn push<'a>(steps: &mut Vec<Step<'a>>, s: Step<'a>) {
    let empty = match &s {
        Step::Upsert(_, v) | Step::Delete(_, v) => v.is_empty(),
    };
    if !empty {
        steps.push(s);
    }
}

/// `v0, v1, ...` of `unnest(...) AS u(v0, v1, ...)` and the parameters'
/// array types, for `slots`.
fn unnest(slots: &[Slot], alias: &str) -> String {
    let args: Vec<String> = slots
        .iter()
        .enumerate()
        .map(|(k, s)| format!("${}::{}", k + 1, s.carrier.array_type()))
        .collect();
    let names: Vec<String> = (0..slots.len()).map(|k| format!("v{k}")).collect();
    format!(
        "unnest({}) AS {alias}({})",
        args.join(", "),
        names.join(", ")
    )
}

/// The multi-row upsert of one table's images: one array parameter per
/// image column (its carrier's type), each cast back into the column's
/// type. The snapshot install runs it too (into emptied tables). A table
/// with id generators takes the replicated ids as they are (`OVERRIDING
/// SYSTEM VALUE`: an identity column `GENERATED ALWAYS` refuses them
/// otherwise); its sequences are moved past them at promotion.
pub(super) fn upsert_sql(t: &TableCodec) -> String {
    let cols: Vec<String> = t.slots.iter().map(|s| quote(&s.column)).collect();
    let vals: Vec<String> = t
        .slots
        .iter()
        .enumerate()
        .map(|(k, s)| s.cast_expr(&format!("u.v{k}")))
        .collect();
    let key: Vec<String> = t.key_slots().iter().map(|s| quote(&s.column)).collect();
    let set: Vec<String> = t.slots[t.key_len..]
        .iter()
        .map(|s| format!("{c} = EXCLUDED.{c}", c = quote(&s.column)))
        .collect();
    let conflict = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", set.join(", "))
    };
    let overriding = if t.has_ids {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    format!(
        "INSERT INTO {} ({}){overriding} SELECT {} FROM {} ON CONFLICT ({}) {conflict}",
        t.sql_name,
        cols.join(", "),
        vals.join(", "),
        unnest(&t.slots, "u"),
        key.join(", ")
    )
}

/// The multi-row delete of one table's keys. A one-column key uses `=
/// ANY(array)`, which the planner turns into index lookups whatever the
/// table's size (a key that needs a conversion converts the array once,
/// in an init plan); a wider key joins the unnested keys.
pub(super) fn delete_sql(t: &TableCodec) -> String {
    let key = t.key_slots();
    if let [s] = key {
        let ty = s.carrier.array_type();
        let array = if s.cast_expr("v") == "v" {
            format!("$1::{ty}")
        } else {
            format!(
                "ARRAY(SELECT {} FROM unnest($1::{ty}) AS d(v0))",
                s.cast_expr("d.v0")
            )
        };
        return format!(
            "DELETE FROM {} WHERE {} = ANY({array})",
            t.sql_name,
            quote(&s.column)
        );
    }
    let conds: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(k, s)| {
            format!(
                "t.{} = {}",
                quote(&s.column),
                s.cast_expr(&format!("d.v{k}"))
            )
        })
        .collect();
    format!(
        "DELETE FROM {} AS t USING {} WHERE {}",
        t.sql_name,
        unnest(key, "d"),
        conds.join(" AND ")
    )
}

fn quote(s: &str) -> String {
    super::catalog::quote_ident(s)
}

/// The batch's change-log rows, as one array of `us_change` records.
const LOG_SQL: &str = "INSERT INTO us_changelog (seq, epoch, tbl, op, i, r, b, t, x) \
     SELECT seq, epoch, tbl, op, i, r, b, t, x FROM unnest($1::us_change[])";

/// The apply statements, prepared once per apply connection for one
/// catalog (`tables`: re-prepared when the catalog is read again).
pub(super) struct ApplyStmts {
    pub(super) tables: Arc<Tables>,
    log: Statement,
    up: Vec<Statement>,
    del: Vec<Statement>,
}

impl ApplyStmts {
    /// Prepare every statement; the prepares are pipelined (one round
    /// trip, whatever the number of tables).
    pub(super) async fn prepare(
        client: &Client,
        tables: Arc<Tables>,
    ) -> Result<ApplyStmts, tokio_postgres::Error> {
        let ups: Vec<String> = tables.codecs.iter().map(upsert_sql).collect();
        let dels: Vec<String> = tables.codecs.iter().map(delete_sql).collect();
        let (log, up, del) = futures_util::future::try_join3(
            client.prepare(LOG_SQL),
            futures_util::future::try_join_all(ups.iter().map(|s| client.prepare(s))),
            futures_util::future::try_join_all(dels.iter().map(|s| client.prepare(s))),
        )
        .await?;
        Ok(ApplyStmts {
            tables,
            log,
            up,
            del,
        })
    }

    pub(super) fn upsert(&self, id: TableId) -> Option<&Statement> {
        self.up.get(id.0)
    }
}

/// A batch ready to send: its log rows and its planned table statements
/// with their parameters. Built apart from sending, so a change that does
/// not fit is refused before anything (the COMMIT pipelined behind the
/// statements included) goes out.
pub(super) struct Batch<'a> {
    log: Vec<LogEntry<'a>>,
    steps: Vec<(&'a Statement, Columns<'a>)>,
}

/// Plan `changes` (checked against `stmts.tables`, consecutive, each after
/// the applied position) into a [`Batch`]: set-based, or with
/// `one_by_one` one statement per change in log order (see
/// [`one_by_one`]).
pub(super) fn build<'a>(
    stmts: &'a ApplyStmts,
    changes: &[Checked<'a>],
    one_by_one: bool,
) -> Result<Batch<'a>, String> {
    let tables = &*stmts.tables;
    let log = changes
        .iter()
        .map(|(id, c)| LogEntry::of(&tables.codecs[id.0], c))
        .collect::<Result<Vec<_>, _>>()?;
    let planned = if one_by_one {
        self::one_by_one(changes)
    } else {
        plan(tables, changes)
    };
    let mut steps = Vec::new();
    for step in planned {
        steps.push(match step {
            Step::Upsert(id, rows) => (
                &stmts.up[id.0],
                Columns::of(&tables.codecs[id.0].slots, &rows)?,
            ),
            Step::Delete(id, keys) => (
                &stmts.del[id.0],
                Columns::of(tables.codecs[id.0].key_slots(), &keys)?,
            ),
        });
    }
    Ok(Batch { log, steps })
}

impl Batch<'_> {
    /// Send the log rows, then the table statements, inside the open apply
    /// transaction. All are prepared, so each goes out as soon as it is
    /// polled and they run in this order; the answers are read after (one
    /// round trip).
    pub(super) async fn run(
        &self,
        client: &Client,
        stmts: &ApplyStmts,
    ) -> Result<(), tokio_postgres::Error> {
        if self.log.is_empty() {
            return Ok(());
        }
        let log: &(dyn ToSql + Sync) = &self.log;
        let mut params: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = vec![(&stmts.log, vec![log])];
        params.extend(self.steps.iter().map(|(stmt, cols)| (*stmt, cols.params())));
        let futs = params.iter().map(|(s, p)| client.execute(*s, p));
        futures_util::future::try_join_all(futs).await?;
        Ok(())
    }
}

/// Why snapshot rows could not be inserted.
#[derive(Debug)]
pub(super) enum InsertError {
    /// The rows do not fit the table (nothing was sent).
    Shape(String),
    Db(tokio_postgres::Error),
}

/// Insert snapshot rows of one table (a run of the reader's chunk) with
/// its upsert statement.
pub(super) async fn insert_rows(
    client: &Client,
    stmts: &ApplyStmts,
    codec: &TableCodec,
    rows: &[RowImage],
) -> Result<u64, InsertError> {
    let Some(stmt) = stmts.upsert(codec.id) else {
        return Err(InsertError::Shape(format!(
            "no statement for table {}",
            codec.name
        )));
    };
    let values: Vec<&[Value]> = rows.iter().map(|r| &r.values[..]).collect();
    let cols = Columns::of(&codec.slots, &values).map_err(InsertError::Shape)?;
    client
        .execute(stmt, &cols.params())
        .await
        .map_err(InsertError::Db)
}

/// One column's parameter: an array of its carrier's type.
#[derive(Debug)]
enum Column<'a> {
    I(Vec<Option<i64>>),
    R(Vec<Option<f64>>),
    B(Vec<Option<bool>>),
    T(Vec<Option<&'a str>>),
    X(Vec<Option<&'a [u8]>>),
}

/// The parameters of one table statement: per slot, the values of every
/// row (images or keys, in slot order) as an array.
struct Columns<'a>(Vec<Column<'a>>);

impl<'a> Columns<'a> {
    fn of(slots: &[Slot], rows: &[&'a [Value]]) -> Result<Columns<'a>, String> {
        let n = rows.len();
        let mut cols: Vec<Column<'a>> = slots
            .iter()
            .map(|s| match s.carrier {
                Carrier::I => Column::I(Vec::with_capacity(n)),
                Carrier::R => Column::R(Vec::with_capacity(n)),
                Carrier::B => Column::B(Vec::with_capacity(n)),
                Carrier::T => Column::T(Vec::with_capacity(n)),
                Carrier::X => Column::X(Vec::with_capacity(n)),
            })
            .collect();
        for row in rows {
            if row.len() < slots.len() {
                return Err(format!(
                    "a row holds {} values where {} are needed",
                    row.len(),
                    slots.len()
                ));
            }
            for ((col, v), s) in cols.iter_mut().zip(row.iter()).zip(slots) {
                match (col, v) {
                    (Column::I(c), Value::Int(x)) => c.push(Some(*x)),
                    (Column::I(c), Value::Null) => c.push(None),
                    (Column::R(c), Value::Real(x)) => c.push(Some(*x)),
                    (Column::R(c), Value::Null) => c.push(None),
                    (Column::B(c), Value::Bool(x)) => c.push(Some(*x)),
                    (Column::B(c), Value::Null) => c.push(None),
                    (Column::T(c), Value::Text(x)) => c.push(Some(x)),
                    (Column::T(c), Value::Null) => c.push(None),
                    (Column::X(c), Value::Bytes(x)) => c.push(Some(x)),
                    (Column::X(c), Value::Null) => c.push(None),
                    (_, v) => {
                        return Err(format!(
                            "column {} is {} but a value is {}",
                            s.column,
                            s.ty,
                            v.kind()
                        ));
                    }
                }
            }
        }
        Ok(Columns(cols))
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|c| -> &(dyn ToSql + Sync) {
                match c {
                    Column::I(v) => v,
                    Column::R(v) => v,
                    Column::B(v) => v,
                    Column::T(v) => v,
                    Column::X(v) => v,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Position, key_text};
    use crate::tables::{Catalog, ColumnDesc, ForeignKey, PortableType, TableDesc, TableName};

    fn col(name: &str, ty: PortableType, declared: &str) -> ColumnDesc {
        ColumnDesc {
            name: name.into(),
            ty,
            declared: declared.into(),
            nullable: true,
            secret: false,
            ids: None,
        }
    }

    /// The example schema as PostgreSQL describes it.
    fn example() -> Tables {
        use PortableType::*;
        let projects = TableDesc {
            name: TableName::new("projects"),
            columns: vec![
                col("name", Text, "text"),
                col("description", Text, "text"),
                col("config", Text, "text"),
                col("updated_at", Int, "bigint"),
            ],
            key: vec![0],
            foreign_keys: vec![],
        };
        let jobs = TableDesc {
            name: TableName::new("jobs"),
            columns: vec![
                col("id", Text, "text"),
                col("project", Text, "text"),
                col("name", Text, "text"),
                col("schedule_enabled", Bool, "boolean"),
                col("updated_at", Int, "bigint"),
            ],
            key: vec![0],
            foreign_keys: vec![ForeignKey {
                columns: vec![1],
                parent: TableName::new("projects"),
                parent_columns: vec!["name".into()],
                cascade: true,
            }],
        };
        let keys = TableDesc {
            name: TableName::new("keys"),
            columns: vec![
                col("path", Text, "text"),
                col("kind", Text, "text"),
                col("content", Bytes, "bytea"),
                col("updated_at", Int, "bigint"),
            ],
            key: vec![0],
            foreign_keys: vec![],
        };
        Tables::new(
            Catalog::build(vec![keys, jobs, projects], &["keys.content".into()]).expect("catalog"),
        )
    }

    fn at(seq: u64, op: ChangeOp) -> Change {
        Change {
            pos: Position::new(1, seq),
            op,
        }
    }
    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }
    fn up(table: &str, values: Vec<Value>) -> ChangeOp {
        ChangeOp::Upsert(RowImage::new(TableName::new(table), 1, values))
    }
    fn project(name: &str, v: i64) -> ChangeOp {
        up(
            "projects",
            vec![t(name), Value::Null, Value::Null, Value::Int(v)],
        )
    }
    fn job(id: &str, project: &str, v: i64) -> ChangeOp {
        up(
            "jobs",
            vec![t(id), t(project), t(id), Value::Bool(true), Value::Int(v)],
        )
    }
    fn key(path: &str, v: i64) -> ChangeOp {
        up(
            "keys",
            vec![t(path), t("password"), Value::Bytes(vec![1]), Value::Int(v)],
        )
    }
    fn del(table: &str, k: &str) -> ChangeOp {
        ChangeOp::Delete {
            table: TableName::new(table),
            key: vec![t(k)],
        }
    }

    /// The plan as readable lines: "up jobs j1@2" / "del keys k".
    fn show(tables: &Tables, changes: &[Change]) -> Vec<String> {
        let checked: Vec<Checked> = changes
            .iter()
            .map(|c| (tables.check(c).expect("valid change").id, c))
            .collect();
        plan(tables, &checked)
            .iter()
            .map(|s| match s {
                Step::Upsert(id, rows) => {
                    let rows: Vec<String> = rows
                        .iter()
                        .map(|r| {
                            let v = match r.last() {
                                Some(Value::Int(v)) => *v,
                                _ => -1,
                            };
                            format!("{}@{v}", key_text(&r[..1]))
                        })
                        .collect();
                    format!("up {} {}", tables.codecs[id.0].name, rows.join(","))
                }
                Step::Delete(id, keys) => {
                    let keys: Vec<String> = keys.iter().map(|k| key_text(k)).collect();
                    format!("del {} {}", tables.codecs[id.0].name, keys.join(","))
                }
            })
            .collect()
    }

    #[test]
    fn single_column_keys_delete_through_any() {
        let tables = example();
        assert_eq!(
            delete_sql(&tables.codecs[0]),
            "DELETE FROM \"public\".\"keys\" WHERE \"path\" = ANY($1::text[])"
        );
    }

    #[test]
    fn the_last_change_of_each_row_wins() {
        let b = [
            at(1, job("j1", "p", 1)),
            at(2, key("k1", 2)),
            at(3, job("j1", "p", 3)),
            at(4, job("j2", "p", 4)),
            at(5, del("keys", "k1")),
            at(6, del("jobs", "j2")),
            at(7, job("j2", "p", 7)),
        ];
        assert_eq!(show(&example(), &b), ["del keys k1", "up jobs j1@3,j2@7"]);
    }

    #[test]
    fn parents_are_written_before_the_rows_that_need_them() {
        let b = [
            at(1, job("j1", "p1", 1)),
            at(2, project("p2", 2)),
            at(3, job("j2", "p2", 3)),
            at(4, del("jobs", "j3")),
            at(5, key("k", 5)),
        ];
        // The catalog's order is keys, projects, jobs (parents first, ties
        // by name): deletes run jobs before keys, upserts keys before jobs.
        assert_eq!(
            show(&example(), &b),
            [
                "up projects p2@2",
                "del jobs j3",
                "up keys k@5",
                "up jobs j1@1,j2@3"
            ]
        );
    }

    #[test]
    fn nothing_moves_across_a_parent_delete() {
        // p is deleted (its cascade removes j1's old row), then created again
        // and j1 written into it: the second write must follow the delete.
        let b = [
            at(1, job("j1", "p", 1)),
            at(2, del("jobs", "j1")),
            at(3, del("projects", "p")),
            at(4, del("projects", "q")),
            at(5, project("p", 5)),
            at(6, job("j1", "p", 6)),
            at(7, del("projects", "p")),
        ];
        assert_eq!(
            show(&example(), &b),
            [
                "del jobs j1",
                "del projects p,q",
                "up projects p@5",
                "up jobs j1@6",
                "del projects p",
            ]
        );
    }

    #[test]
    fn a_repeated_parent_delete_is_sent_once() {
        let b = [at(1, del("projects", "p")), at(2, del("projects", "p"))];
        assert_eq!(show(&example(), &b), ["del projects p"]);
    }

    #[test]
    fn log_rows_put_each_value_in_its_carrier() {
        let tables = example();
        let b = [
            at(1, project("p", 1)),
            at(2, job("j", "p", 2)),
            at(3, key("k", 3)),
            at(4, del("jobs", "j")),
        ];
        let rows: Vec<LogEntry> = b
            .iter()
            .map(|c| LogEntry::of(tables.check(c).expect("valid"), c).expect("entry"))
            .collect();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(rows[1].tbl, "jobs");
        assert_eq!(rows[1].t, [Some("j"), Some("p"), Some("j")]);
        assert_eq!(rows[1].b, [Some(true)]);
        assert_eq!(rows[1].i, [Some(2)]);
        assert_eq!(rows[2].x, [Some(&[1u8][..])]);
        assert_eq!(rows[0].t, [Some("p"), None, None]);
        assert_eq!(rows[3].op, super::super::values::OP_DELETE);
        assert_eq!(rows[3].t, [Some("j")]);
        assert!(rows[3].i.is_empty() && rows[3].b.is_empty());
        // Debug shows no value.
        assert!(!format!("{:?}", rows[2]).contains("password"));
    }

    #[test]
    fn changes_that_do_not_fit_are_refused_by_table_and_column() {
        let tables = example();
        let wrong_kind = at(
            1,
            up(
                "keys",
                vec![t("k"), t("password"), t("hunter2"), Value::Int(1)],
            ),
        );
        let e = tables
            .check(&wrong_kind)
            .expect_err("text in a bytea column");
        assert!(
            e.contains("keys.content is bytes but the value is text"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let short = at(2, up("keys", vec![t("k")]));
        assert!(
            tables
                .check(&short)
                .expect_err("short")
                .contains("1 values where the table has 4")
        );
        let unknown = at(3, up("nope", vec![t("k")]));
        assert!(
            tables
                .check(&unknown)
                .expect_err("unknown")
                .contains("table nope")
        );
        let null_key = at(4, del("jobs", "x"));
        let mut null_key = null_key;
        if let ChangeOp::Delete { key, .. } = &mut null_key.op {
            key[0] = Value::Null;
        }
        assert!(
            tables
                .check(&null_key)
                .expect_err("null key")
                .contains("jobs.id is part of the primary key")
        );
    }

    #[test]
    fn statements_cast_carriers_back_into_the_declared_types() {
        use PortableType::*;
        let t = TableDesc {
            name: TableName::new("app.runs"),
            columns: vec![
                col("job", Uuid, "uuid"),
                col("n", Int, "integer"),
                col("at", TimestampTz, "timestamp with time zone"),
                col("cost", Numeric, "numeric(10,2)"),
                col("day", Date, "date"),
            ],
            key: vec![0, 1],
            foreign_keys: vec![],
        };
        let tables = Tables::new(Catalog::build(vec![t], &[]).expect("catalog"));
        let c = &tables.codecs[0];
        let up = upsert_sql(c);
        assert!(
            up.starts_with(
                "INSERT INTO \"app\".\"runs\" (\"job\", \"n\", \"at\", \"cost\", \"day\")"
            ),
            "{up}"
        );
        assert!(up.contains("u.v0::uuid, u.v1::integer"), "{up}");
        assert!(up.contains("AT TIME ZONE 'UTC'"), "{up}");
        assert!(up.contains("u.v3::numeric(10,2)"), "{up}");
        assert!(up.contains("(date '1970-01-01' + u.v4::int4)"), "{up}");
        assert!(
            up.contains("unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[])"),
            "{up}"
        );
        assert!(up.ends_with("ON CONFLICT (\"job\", \"n\") DO UPDATE SET \"at\" = EXCLUDED.\"at\", \"cost\" = EXCLUDED.\"cost\", \"day\" = EXCLUDED.\"day\""), "{up}");
        let del = delete_sql(c);
        assert_eq!(
            del,
            "DELETE FROM \"app\".\"runs\" AS t USING unnest($1::text[], $2::int8[]) AS d(v0, v1) \
             WHERE t.\"job\" = d.v0::uuid AND t.\"n\" = d.v1::integer"
        );
    }
}
