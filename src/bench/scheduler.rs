//! The capture benchmark on the scheduler-shaped fixture
//! (`schemas/examples/scheduler.*.sql`): the same measurement as
//! `bench::capture` (writer rate with understudy's triggers against the
//! same schema with every trigger dropped), on nine application tables
//! with composite keys, foreign keys three levels deep and cascades, so the
//! generic capture path has figures of its own.
//!
//! Owns: the fixture's workload (seeded) and its timing.
//! Must never: run against a database it did not create.

use super::capture::{BenchDb, drop_triggers, paired_rounds, params, summary};
use super::{Backend, BenchArgs};
use crate::config::DatabaseUrl;
use crate::tables::CaptureSpec;
use crate::workload::SplitMix;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Instant;

const SQLITE_DDL: &str = include_str!("../../schemas/examples/scheduler.sqlite.sql");
const POSTGRES_DDL: &str = include_str!("../../schemas/examples/scheduler.postgres.sql");

/// The fixture's tables, as `[capture] tables` lists them.
pub const TABLES: [&str; 9] = [
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

fn capture_spec() -> CaptureSpec {
    CaptureSpec {
        tables: TABLES.iter().map(|t| t.to_string()).collect(),
        secret_columns: vec!["storage.data".into()],
        example: false,
    }
}

/// An application connection that runs SQL text (the workload writes
/// literals so one text serves both dialects, but for bytes).
enum App {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl App {
    async fn connect(url: &DatabaseUrl) -> Result<App> {
        Ok(match url {
            DatabaseUrl::Sqlite(p) => {
                let c = rusqlite::Connection::open(p)?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL")?;
                App::Sqlite(c)
            }
            DatabaseUrl::Postgres(u) => {
                let (c, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                App::Postgres(c)
            }
        })
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        match self {
            App::Sqlite(c) => c.execute_batch(sql)?,
            App::Postgres(c) => c.batch_execute(sql).await?,
        }
        Ok(())
    }

    fn bytes(&self, b: &[u8]) -> String {
        match self {
            App::Sqlite(_) => format!("X'{}'", hex::encode(b)),
            App::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(b)),
        }
    }
}

/// The fixture's workload: 10 projects; then 60% new jobs (a job with its
/// workflow, three steps and their links, an option with two values and a
/// notification: 12 rows), 25% job updates, 10% key-storage upserts (256
/// random bytes), 5% job deletes (cascading to their children).
struct Workload {
    rng: SplitMix,
    next_id: i64,
    jobs: Vec<i64>,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload {
            rng: SplitMix::new(seed),
            next_id: 1,
            jobs: Vec::new(),
        }
    }

    fn setup(&self) -> String {
        (0..10)
            .map(|i| {
                format!(
                    "INSERT INTO project (name, description, created) VALUES ('p{i}', 'Projekt Größe {i}', '2026-12-06 10:00:00');"
                )
            })
            .collect()
    }

    /// One operation's SQL and how many rows it writes itself.
    fn next(&mut self, app: &App) -> (String, u64) {
        let roll = self.rng.below(100);
        if roll < 60 || self.jobs.is_empty() {
            self.new_job()
        } else if roll < 85 {
            let id = self.jobs[self.rng.below(self.jobs.len() as u64) as usize];
            let t = self.rng.below(10_000);
            (
                format!(
                    "UPDATE scheduled_execution SET description = 'run {t}', timeout = {t}.25, \
                     schedule_enabled = {} WHERE id = {id};",
                    if t.is_multiple_of(2) { "TRUE" } else { "FALSE" }
                ),
                1,
            )
        } else if roll < 95 {
            let mut data = [0u8; 256];
            for b in data.iter_mut() {
                *b = self.rng.below(256) as u8;
            }
            let n = self.rng.below(500);
            (
                format!(
                    "INSERT INTO storage (namespace, dir, name, data, last_updated) \
                     VALUES ('keys', 'ssh', 'k{n}', {}, '2026-12-06 10:00:00+00:00') \
                     ON CONFLICT (namespace, dir, name) DO UPDATE SET data = excluded.data;",
                    app.bytes(&data)
                ),
                1,
            )
        } else {
            let i = self.rng.below(self.jobs.len() as u64) as usize;
            let id = self.jobs.swap_remove(i);
            (
                format!("DELETE FROM scheduled_execution WHERE id = {id};"),
                1,
            )
        }
    }

    fn new_job(&mut self) -> (String, u64) {
        let id = self.next_id;
        self.next_id += 10;
        self.jobs.push(id);
        let p = self.rng.below(10);
        let definition = "x".repeat(200);
        let mut sql = format!(
            "INSERT INTO scheduled_execution (id, uuid, project, job_name, group_path, description, \
             schedule_enabled, execution_enabled, server_nodeuuid, timeout, average_duration, \
             date_created, options) VALUES ({id}, '00000000-0000-4000-8000-{id:012}', 'p{p}', \
             'job {id}', 'ops/nightly', '{definition}', TRUE, TRUE, 'a', 30.5, 1.25, \
             '2026-12-06 10:00:00+00:00', '{{\"retry\":1}}');
             INSERT INTO workflow (id, scheduled_execution_id, keepgoing, strategy, threadcount) \
             VALUES ({id}, {id}, FALSE, 'node-first', 1);"
        );
        for s in 1..=3 {
            let sid = id + s;
            sql.push_str(&format!(
                "INSERT INTO workflow_step (id, workflow_id, step_number, step_type, description, \
                 keepgoing_on_success, adhoc_remote_string, json_data) VALUES ({sid}, {id}, {s}, \
                 'command', 'step {s}', FALSE, 'echo {s}', NULL);
                 INSERT INTO workflow_workflow_step (workflow_id, step_id, commands_idx) \
                 VALUES ({id}, {sid}, {s});"
            ));
        }
        sql.push_str(&format!(
            "INSERT INTO rdoption (id, scheduled_execution_id, name, required, default_value, sort_index) \
             VALUES ({id}, {id}, 'env', TRUE, 'prod', 0);
             INSERT INTO rdoption_values (rdoption_id, value, sort_index) VALUES ({id}, 'prod', 0), ({id}, 'test', 1);
             INSERT INTO notification (id, scheduled_execution_id, event_trigger, type, content) \
             VALUES ({id}, {id}, 'onfailure', 'email', 'ops@example.org');"
        ));
        (sql, 12)
    }
}

/// Write `ops` operations in transactions of `tx_size`: rows written per
/// second (the rows the statements write; cascades not counted).
async fn write_rate(url: &DatabaseUrl, ops: u64, tx_size: usize, seed: u64) -> Result<f64> {
    let mut app = App::connect(url).await?;
    let mut w = Workload::new(seed);
    app.exec(&w.setup()).await?;
    let started = Instant::now();
    let (mut done, mut rows) = (0u64, 0u64);
    while done < ops {
        let mut sql = String::from("BEGIN;");
        for _ in 0..tx_size.min((ops - done) as usize) {
            let (s, n) = w.next(&app);
            sql.push_str(&s);
            rows += n;
            done += 1;
        }
        sql.push_str("COMMIT;");
        app.exec(&sql).await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn fixture_db(args: &BenchArgs, name: &str) -> Result<BenchDb> {
    let db = BenchDb::create(args.backend, args.database_url.as_deref(), name).await?;
    let mut app = App::connect(&db.url).await?;
    let ddl = match args.backend {
        Backend::Sqlite => SQLITE_DDL,
        Backend::Postgres => POSTGRES_DDL,
    };
    app.exec(ddl)
        .await
        .context("creating the fixture's tables")?;
    crate::store::init_database(&db.url, &params(), &capture_spec()).await?;
    Ok(db)
}

pub async fn run(args: &BenchArgs) -> Result<Value> {
    let mut results = Vec::new();
    for tx_size in [1usize, 100] {
        eprintln!(
            "capture bench (scheduler fixture): {:?}, {} ops, {tx_size} per transaction, {} rounds",
            args.backend, args.ops, args.rounds
        );
        let pair = async || {
            let on = fixture_db(args, "sched_on").await?;
            let off = fixture_db(args, "sched_off").await?;
            drop_triggers(&off.url).await?;
            Ok((on, off))
        };
        let pairs = paired_rounds(args, tx_size, pair, write_rate).await?;
        results.push(summary(tx_size, &pairs));
    }
    Ok(json!({
        "bench": "capture",
        "schema": "scheduler",
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "ops": args.ops,
        "seed": args.seed,
        "unit": "rows written per second",
        "results": results,
    }))
}
