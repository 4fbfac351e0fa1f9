//! Set-based apply of a batch of changes on PostgreSQL: the batch's
//! change-log rows in one multi-row `INSERT`, and its effect on the
//! application tables as one multi-row statement per table and kind, in an
//! order that leaves the tables exactly as applying the changes one by one
//! would.
//!
//! Owns: the apply statements (prepared once per connection), the plan that
//! turns a batch into statements ([`plan`]), and the column arrays of row
//! images (the snapshot install uses them too).
//! Must never: move a change across a project delete (its foreign-key
//! cascade deletes the project's jobs, so what comes before and after it
//! does not commute), or put two changes of one row into one statement
//! (`ON CONFLICT DO UPDATE` refuses to touch a row twice, and the result
//! would depend on the statement's row order).
//!
//! Why set-based: a PostgreSQL passive applying one statement per change
//! spends its time in per-statement work on the server (bind, plan,
//! executor start-up) and was the bottleneck behind a fast SQLite active.
//!
//! Why the plan is exact. Between two project deletes (a *segment*) no
//! cascade runs, so only the last change of each row matters for the
//! tables, and changes of different rows commute except through the
//! `jobs.project` foreign key: a job may only be written once its project
//! exists. The plan therefore writes, per segment: the projects' upserts,
//! then the deletes of jobs and keys, then the upserts of jobs and keys.
//! Every job upsert's project exists by then if it did in the one-by-one
//! order. Project deletes stay where they were, one statement per run of
//! consecutive deletes. (Both backends capture a cascade's job deletes as
//! changes of their own, so moving a project delete would usually come out
//! the same; but a job the passive holds that the log never deleted would
//! then be cascaded at another point than on the active.)

use crate::model::{Change, ChangeOp, Entity, RowImage};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// One statement of a planned batch.
#[derive(Debug, PartialEq)]
pub(super) enum Step<'a> {
    /// Insert or update these rows of one table (one image per row).
    Upsert(Entity, Vec<&'a RowImage>),
    /// Delete these keys of one table.
    Delete(Entity, Vec<&'a str>),
}

/// The table statements for `changes` (already checked to be consecutive),
/// in the order they must run. The log rows are written separately.
pub(super) fn plan<'a>(changes: &[&'a Change]) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut start = 0;
    for (i, c) in changes.iter().enumerate() {
        if let ChangeOp::Delete {
            entity: Entity::Project,
            key,
        } = &c.op
        {
            plan_segment(&changes[start..i], &mut steps);
            start = i + 1;
            match steps.last_mut() {
                // Consecutive project deletes (nothing planned in between)
                // share a statement.
                Some(Step::Delete(Entity::Project, keys)) => {
                    if !keys.contains(&key.as_str()) {
                        keys.push(key)
                    }
                }
                _ => steps.push(Step::Delete(Entity::Project, vec![key])),
            }
        }
    }
    plan_segment(&changes[start..], &mut steps);
    steps
}

/// The net effect of a segment without project deletes.
fn plan_segment<'a>(seg: &[&'a Change], steps: &mut Vec<Step<'a>>) {
    // The last change of each row wins; earlier ones are overwritten by it.
    let mut last: HashMap<(Entity, &str), usize> = HashMap::with_capacity(seg.len());
    for (i, c) in seg.iter().enumerate() {
        last.insert((c.entity(), c.key()), i);
    }
    let mut up: [Vec<&RowImage>; 3] = Default::default();
    let mut del: [Vec<&str>; 3] = Default::default();
    for (i, c) in seg.iter().enumerate() {
        if last.get(&(c.entity(), c.key())) != Some(&i) {
            continue;
        }
        match &c.op {
            ChangeOp::Upsert(r) => up[slot(r.entity())].push(r),
            ChangeOp::Delete { entity, key } => del[slot(*entity)].push(key),
        }
    }
    let [up_projects, up_jobs, up_keys] = up;
    let [del_projects, del_jobs, del_keys] = del;
    debug_assert!(del_projects.is_empty(), "project deletes end a segment");
    let ordered = [
        Step::Upsert(Entity::Project, up_projects),
        Step::Delete(Entity::Job, del_jobs),
        Step::Delete(Entity::Key, del_keys),
        Step::Upsert(Entity::Job, up_jobs),
        Step::Upsert(Entity::Key, up_keys),
    ];
    steps.extend(ordered.into_iter().filter(|s| match s {
        Step::Upsert(_, v) => !v.is_empty(),
        Step::Delete(_, v) => !v.is_empty(),
    }));
}

fn slot(e: Entity) -> usize {
    match e {
        Entity::Project => 0,
        Entity::Job => 1,
        Entity::Key => 2,
    }
}

/// The multi-row `INSERT` of one table's images, columns in the order of
/// [`Columns::params`]; `ON CONFLICT` clauses are appended by callers.
pub(super) fn insert_sql(e: Entity) -> &'static str {
    match e {
        Entity::Project => {
            "INSERT INTO projects (name, description, config, updated_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"
        }
        Entity::Job => {
            "INSERT INTO jobs (id, project, name, group_path, description, definition, \
                 schedule, schedule_enabled, execution_enabled, owner_member, updated_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::bool[], $9::bool[], $10::text[], \
                 $11::bigint[])"
        }
        Entity::Key => {
            "INSERT INTO keys (path, kind, content, meta, updated_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], \
                 $5::bigint[])"
        }
    }
}

fn upsert_sql(e: Entity) -> String {
    let set = match e {
        Entity::Project => {
            "ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, \
             config = EXCLUDED.config, updated_at = EXCLUDED.updated_at"
        }
        Entity::Job => {
            "ON CONFLICT (id) DO UPDATE SET project = EXCLUDED.project, name = EXCLUDED.name, \
             group_path = EXCLUDED.group_path, description = EXCLUDED.description, \
             definition = EXCLUDED.definition, schedule = EXCLUDED.schedule, \
             schedule_enabled = EXCLUDED.schedule_enabled, \
             execution_enabled = EXCLUDED.execution_enabled, \
             owner_member = EXCLUDED.owner_member, updated_at = EXCLUDED.updated_at"
        }
        Entity::Key => {
            "ON CONFLICT (path) DO UPDATE SET kind = EXCLUDED.kind, content = EXCLUDED.content, \
             meta = EXCLUDED.meta, updated_at = EXCLUDED.updated_at"
        }
    };
    format!("{} {set}", insert_sql(e))
}

fn delete_sql(e: Entity) -> String {
    let pk = match e {
        Entity::Project => "name",
        Entity::Job => "id",
        Entity::Key => "path",
    };
    format!("DELETE FROM {} WHERE {pk} = ANY($1::text[])", e.table())
}

/// The change-log rows of a batch, one array per column (mapping in
/// `schemas/postgres/0001_tables.sql`).
const LOG_SQL: &str = "INSERT INTO us_changelog (seq, epoch, entity, op, key, \
         t1, t2, t3, t4, t5, t6, t7, f1, f2, content, updated_at) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::smallint[], \
         $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
         $11::text[], $12::text[], $13::bool[], $14::bool[], $15::bytea[], $16::bigint[])";

/// The apply statements, prepared once per apply connection.
pub(super) struct ApplyStmts {
    log: Statement,
    up: [Statement; 3],
    del: [Statement; 3],
}

impl ApplyStmts {
    pub(super) async fn prepare(client: &Client) -> Result<ApplyStmts, tokio_postgres::Error> {
        let log = client.prepare(LOG_SQL).await?;
        let up = [
            client.prepare(&upsert_sql(Entity::Project)).await?,
            client.prepare(&upsert_sql(Entity::Job)).await?,
            client.prepare(&upsert_sql(Entity::Key)).await?,
        ];
        let del = [
            client.prepare(&delete_sql(Entity::Project)).await?,
            client.prepare(&delete_sql(Entity::Job)).await?,
            client.prepare(&delete_sql(Entity::Key)).await?,
        ];
        Ok(ApplyStmts { log, up, del })
    }
}
/// Write `changes` (consecutive, each after the applied position) inside the
/// open apply transaction: the log rows, then the planned table statements.
/// All are prepared, so each goes out as soon as it is polled and they run
/// in this order; the answers are read after (one round trip).
pub(super) async fn execute(
    client: &Client,
    stmts: &ApplyStmts,
    changes: &[&Change],
) -> Result<(), tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let log = LogColumns::of(changes);
    let tables: Vec<(&Statement, Columns)> = plan(changes)
        .into_iter()
        .map(|step| match step {
            Step::Upsert(e, rows) => (&stmts.up[slot(e)], Columns::of_images(e, rows.into_iter())),
            Step::Delete(e, keys) => (&stmts.del[slot(e)], Columns::Deleted(keys)),
        })
        .collect();
    let mut params = vec![(&stmts.log, log.params())];
    params.extend(tables.iter().map(|(stmt, cols)| (*stmt, cols.params())));
    let futs = params.iter().map(|(s, p)| client.execute(*s, p));
    futures_util::future::try_join_all(futs).await?;
    Ok(())
}

/// One table statement's parameters: the image columns of its rows, or the
/// keys to delete.
pub(super) enum Columns<'a> {
    Projects {
        name: Vec<&'a str>,
        description: Vec<Option<&'a str>>,
        config: Vec<Option<&'a str>>,
        updated_at: Vec<i64>,
    },
    Jobs {
        id: Vec<&'a str>,
        project: Vec<&'a str>,
        name: Vec<&'a str>,
        group_path: Vec<Option<&'a str>>,
        description: Vec<Option<&'a str>>,
        definition: Vec<Option<&'a str>>,
        schedule: Vec<Option<&'a str>>,
        schedule_enabled: Vec<bool>,
        execution_enabled: Vec<bool>,
        owner_member: Vec<Option<&'a str>>,
        updated_at: Vec<i64>,
    },
    Keys {
        path: Vec<&'a str>,
        kind: Vec<&'a str>,
        content: Vec<&'a [u8]>,
        meta: Vec<Option<&'a str>>,
        updated_at: Vec<i64>,
    },
    Deleted(Vec<&'a str>),
}

impl<'a> Columns<'a> {
    /// The columns of the images of table `e` among `rows` (images of
    /// other tables are skipped).
    pub(super) fn of_images(e: Entity, rows: impl Iterator<Item = &'a RowImage>) -> Columns<'a> {
        let mut cols = match e {
            Entity::Project => Columns::Projects {
                name: Vec::new(),
                description: Vec::new(),
                config: Vec::new(),
                updated_at: Vec::new(),
            },
            Entity::Job => Columns::Jobs {
                id: Vec::new(),
                project: Vec::new(),
                name: Vec::new(),
                group_path: Vec::new(),
                description: Vec::new(),
                definition: Vec::new(),
                schedule: Vec::new(),
                schedule_enabled: Vec::new(),
                execution_enabled: Vec::new(),
                owner_member: Vec::new(),
                updated_at: Vec::new(),
            },
            Entity::Key => Columns::Keys {
                path: Vec::new(),
                kind: Vec::new(),
                content: Vec::new(),
                meta: Vec::new(),
                updated_at: Vec::new(),
            },
        };
        for r in rows {
            cols.push(r);
        }
        cols
    }

    fn push(&mut self, r: &'a RowImage) {
        match (self, r) {
            (
                Columns::Projects {
                    name,
                    description,
                    config,
                    updated_at,
                },
                RowImage::Project(p),
            ) => {
                name.push(&p.name);
                description.push(p.description.as_deref());
                config.push(p.config.as_deref());
                updated_at.push(p.updated_at);
            }
            (
                Columns::Jobs {
                    id,
                    project,
                    name,
                    group_path,
                    description,
                    definition,
                    schedule,
                    schedule_enabled,
                    execution_enabled,
                    owner_member,
                    updated_at,
                },
                RowImage::Job(j),
            ) => {
                id.push(&j.id);
                project.push(&j.project);
                name.push(&j.name);
                group_path.push(j.group_path.as_deref());
                description.push(j.description.as_deref());
                definition.push(j.definition.as_deref());
                schedule.push(j.schedule.as_deref());
                schedule_enabled.push(j.schedule_enabled);
                execution_enabled.push(j.execution_enabled);
                owner_member.push(j.owner_member.as_deref());
                updated_at.push(j.updated_at);
            }
            (
                Columns::Keys {
                    path,
                    kind,
                    content,
                    meta,
                    updated_at,
                },
                RowImage::Key(k),
            ) => {
                path.push(&k.path);
                kind.push(&k.kind);
                content.push(k.content.expose());
                meta.push(k.meta.as_deref());
                updated_at.push(k.updated_at);
            }
            _ => {}
        }
    }

    /// The parameters, in the order of [`insert_sql`] (or `$1` = the keys).
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Columns::Projects {
                name,
                description,
                config,
                updated_at,
            } => vec![name, description, config, updated_at],
            Columns::Jobs {
                id,
                project,
                name,
                group_path,
                description,
                definition,
                schedule,
                schedule_enabled,
                execution_enabled,
                owner_member,
                updated_at,
            } => vec![
                id,
                project,
                name,
                group_path,
                description,
                definition,
                schedule,
                schedule_enabled,
                execution_enabled,
                owner_member,
                updated_at,
            ],
            Columns::Keys {
                path,
                kind,
                content,
                meta,
                updated_at,
            } => vec![path, kind, content, meta, updated_at],
            Columns::Deleted(keys) => vec![keys],
        }
    }
}

/// The change-log columns of a batch, in the order of [`LOG_SQL`].
struct LogColumns<'a> {
    seq: Vec<i64>,
    epoch: Vec<i64>,
    entity: Vec<i16>,
    op: Vec<i16>,
    key: Vec<&'a str>,
    t: [Vec<Option<&'a str>>; 7],
    f1: Vec<Option<bool>>,
    f2: Vec<Option<bool>>,
    content: Vec<Option<&'a [u8]>>,
    updated_at: Vec<Option<i64>>,
}

impl<'a> LogColumns<'a> {
    fn of(changes: &[&'a Change]) -> LogColumns<'a> {
        let n = changes.len();
        let mut l = LogColumns {
            seq: Vec::with_capacity(n),
            epoch: Vec::with_capacity(n),
            entity: Vec::with_capacity(n),
            op: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            t: std::array::from_fn(|_| Vec::with_capacity(n)),
            f1: Vec::with_capacity(n),
            f2: Vec::with_capacity(n),
            content: Vec::with_capacity(n),
            updated_at: Vec::with_capacity(n),
        };
        for c in changes {
            // Positions were range-checked before.
            l.seq.push(i64::try_from(c.pos.seq).unwrap_or(i64::MAX));
            l.epoch.push(i64::try_from(c.pos.epoch).unwrap_or(i64::MAX));
            l.entity.push(entity_code(c.entity()));
            l.key.push(c.key());
            let mut t: [Option<&str>; 7] = [None; 7];
            let (mut f1, mut f2, mut content, mut at) = (None, None, None, None);
            match &c.op {
                ChangeOp::Delete { .. } => l.op.push(super::OP_DELETE),
                ChangeOp::Upsert(r) => {
                    l.op.push(super::OP_UPSERT);
                    match r {
                        RowImage::Project(p) => {
                            t[0] = p.description.as_deref();
                            t[1] = p.config.as_deref();
                            at = Some(p.updated_at);
                        }
                        RowImage::Job(j) => {
                            t = [
                                Some(&j.project),
                                Some(&j.name),
                                j.group_path.as_deref(),
                                j.description.as_deref(),
                                j.definition.as_deref(),
                                j.schedule.as_deref(),
                                j.owner_member.as_deref(),
                            ];
                            f1 = Some(j.schedule_enabled);
                            f2 = Some(j.execution_enabled);
                            at = Some(j.updated_at);
                        }
                        RowImage::Key(k) => {
                            t[0] = Some(&k.kind);
                            t[1] = k.meta.as_deref();
                            content = Some(k.content.expose());
                            at = Some(k.updated_at);
                        }
                    }
                }
            }
            for (col, v) in l.t.iter_mut().zip(t) {
                col.push(v);
            }
            l.f1.push(f1);
            l.f2.push(f2);
            l.content.push(content);
            l.updated_at.push(at);
        }
        l
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> =
            vec![&self.seq, &self.epoch, &self.entity, &self.op, &self.key];
        p.extend(self.t.iter().map(|c| c as &(dyn ToSql + Sync)));
        p.extend([
            &self.f1 as &(dyn ToSql + Sync),
            &self.f2,
            &self.content,
            &self.updated_at,
        ]);
        p
    }
}

fn entity_code(e: Entity) -> i16 {
    match e {
        Entity::Project => 1,
        Entity::Job => 2,
        Entity::Key => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Position;
    use crate::store::conformance::{self, del};

    fn at(seq: u64, op: ChangeOp) -> Change {
        Change {
            pos: Position::new(1, seq),
            op,
        }
    }
    fn project(name: &str, v: i64) -> ChangeOp {
        ChangeOp::Upsert(conformance::project(name, None, None, v))
    }
    fn job(id: &str, project: &str, v: i64) -> ChangeOp {
        ChangeOp::Upsert(RowImage::Job(conformance::job(id, project, id, v)))
    }
    fn key(path: &str, v: i64) -> ChangeOp {
        ChangeOp::Upsert(conformance::key(path, "password", &[1], None, v))
    }
    /// The plan as readable lines: "up job j1@2" / "del key k".
    fn show(changes: &[Change]) -> Vec<String> {
        let refs: Vec<&Change> = changes.iter().collect();
        plan(&refs)
            .iter()
            .map(|s| match s {
                Step::Upsert(e, rows) => {
                    let rows: Vec<String> = rows
                        .iter()
                        .map(|r| {
                            let v = match r {
                                RowImage::Project(p) => p.updated_at,
                                RowImage::Job(j) => j.updated_at,
                                RowImage::Key(k) => k.updated_at,
                            };
                            format!("{}@{v}", r.key())
                        })
                        .collect();
                    format!("up {} {}", e.table(), rows.join(","))
                }
                Step::Delete(e, keys) => format!("del {} {}", e.table(), keys.join(",")),
            })
            .collect()
    }

    #[test]
    fn the_last_change_of_each_row_wins() {
        let b = [
            at(1, job("j1", "p", 1)),
            at(2, key("k1", 2)),
            at(3, job("j1", "p", 3)),
            at(4, job("j2", "p", 4)),
            at(5, del(Entity::Key, "k1")),
            at(6, del(Entity::Job, "j2")),
            at(7, job("j2", "p", 7)),
        ];
        assert_eq!(show(&b), ["del keys k1", "up jobs j1@3,j2@7"]);
    }

    #[test]
    fn projects_are_written_before_the_jobs_that_need_them() {
        let b = [
            at(1, job("j1", "p1", 1)),
            at(2, project("p2", 2)),
            at(3, job("j2", "p2", 3)),
            at(4, del(Entity::Job, "j3")),
            at(5, key("k", 5)),
        ];
        assert_eq!(
            show(&b),
            [
                "up projects p2@2",
                "del jobs j3",
                "up jobs j1@1,j2@3",
                "up keys k@5"
            ]
        );
    }

    #[test]
    fn nothing_moves_across_a_project_delete() {
        // p is deleted (its cascade removes j1's old row), then created again
        // and j1 written into it: the second write must follow the delete.
        let b = [
            at(1, job("j1", "p", 1)),
            at(2, del(Entity::Job, "j1")),
            at(3, del(Entity::Project, "p")),
            at(4, del(Entity::Project, "q")),
            at(5, project("p", 5)),
            at(6, job("j1", "p", 6)),
            at(7, del(Entity::Project, "p")),
        ];
        assert_eq!(
            show(&b),
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
    fn a_repeated_project_delete_is_sent_once() {
        let b = [
            at(1, del(Entity::Project, "p")),
            at(2, del(Entity::Project, "p")),
        ];
        assert_eq!(show(&b), ["del projects p"]);
    }

    #[test]
    fn log_columns_follow_the_image_mapping() {
        let b = [
            at(1, project("p", 1)),
            at(2, job("j", "p", 2)),
            at(3, key("k", 3)),
            at(4, del(Entity::Job, "j")),
        ];
        let refs: Vec<&Change> = b.iter().collect();
        let l = LogColumns::of(&refs);
        assert_eq!(l.seq, [1, 2, 3, 4]);
        assert_eq!(l.entity, [1, 2, 3, 2]);
        assert_eq!(
            l.op,
            [super::super::OP_UPSERT, 1, 1, super::super::OP_DELETE]
        );
        assert_eq!(l.key, ["p", "j", "k", "j"]);
        assert_eq!(l.t[0], [None, Some("p"), Some("password"), None]);
        assert_eq!(l.t[1], [None, Some("j"), None, None]);
        assert_eq!(l.f1, [None, Some(true), None, None]);
        assert_eq!(l.content, [None, None, Some(&[1u8][..]), None]);
        assert_eq!(l.updated_at, [Some(1), Some(2), Some(3), None]);
        assert_eq!(l.params().len(), 16);
    }
}
