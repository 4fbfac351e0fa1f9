//! The standard workload (DESIGN.md): 10 projects, then 70% job upserts
//! (about 1 KB definition), 20% key upserts (256 random bytes), 10% project
//! config updates, and 2% of all operations delete an existing job. Used by
//! benchmarks, drills and tests, always through plain application SQL.
//!
//! Owns: the deterministic operation generator and the application-side
//! connection that executes operations as the scheduler would.
//! Must never: use the agent's apply path or bypass the fence; print key bytes.

use crate::config::DatabaseUrl;
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Number of projects the workload creates before anything else.
pub const PROJECTS: usize = 10;

/// One application operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppOp {
    UpsertProject {
        name: String,
        description: String,
        config: String,
    },
    UpsertJob {
        id: String,
        project: String,
        name: String,
        group_path: String,
        definition: String,
        schedule: Option<String>,
        owner_member: Option<String>,
    },
    UpsertKey {
        path: String,
        kind: &'static str,
        content: crate::model::Secret,
    },
    UpdateProjectConfig {
        name: String,
        config: String,
    },
    DeleteJob {
        id: String,
    },
}

/// SplitMix64: a tiny, well-known deterministic generator (reproducible runs
/// from a printed seed, no dependency churn).
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Generates the standard workload deterministically from a seed.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: SplitMix,
    /// Jobs that exist (as far as this generator knows), oldest first.
    jobs: VecDeque<String>,
    /// Cap on distinct jobs so updates revisit rows.
    max_jobs: usize,
    counter: u64,
    /// Which member the generated jobs' schedules belong to.
    owner: Option<String>,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: SplitMix::new(seed),
            jobs: VecDeque::new(),
            max_jobs: 5_000,
            counter: 0,
            owner: None,
        }
    }

    /// Set the member that owns generated jobs' schedules.
    pub fn with_owner(mut self, owner: &str) -> Self {
        self.owner = Some(owner.to_string());
        self
    }

    /// Cap the number of distinct jobs (smaller means more updates).
    pub fn with_max_jobs(mut self, n: usize) -> Self {
        self.max_jobs = n.max(1);
        self
    }

    /// The 10 projects every run starts with.
    pub fn setup(&self) -> Vec<AppOp> {
        (0..PROJECTS)
            .map(|i| AppOp::UpsertProject {
                name: project_name(i),
                description: format!("project {i} of the standard workload"),
                config: format!("{{\"project.name\":\"p{i}\",\"nodes\":\"local\"}}"),
            })
            .collect()
    }

    /// The next operation.
    pub fn next_op(&mut self) -> AppOp {
        self.counter += 1;
        // 2% of all operations delete a job; the rest split 70/20/10.
        if self.rng.below(100) < 2 && !self.jobs.is_empty() {
            let i = self.rng.below(self.jobs.len() as u64) as usize;
            let id = self.jobs.remove(i).unwrap_or_default();
            return AppOp::DeleteJob { id };
        }
        match self.rng.below(100) {
            0..70 => self.job_upsert(),
            70..90 => {
                let mut content = vec![0u8; 256];
                for chunk in content.chunks_mut(8) {
                    let v = self.rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
                let kinds = ["password", "private", "public"];
                AppOp::UpsertKey {
                    path: format!(
                        "keys/project/p{}/k{}",
                        self.rng.below(10),
                        self.rng.below(500)
                    ),
                    kind: kinds[self.rng.below(3) as usize],
                    content: crate::model::Secret(content),
                }
            }
            _ => {
                let i = self.rng.below(PROJECTS as u64) as usize;
                AppOp::UpdateProjectConfig {
                    name: project_name(i),
                    config: format!(
                        "{{\"project.name\":\"p{i}\",\"nodes\":\"local\",\"rev\":{}}}",
                        self.counter
                    ),
                }
            }
        }
    }

    fn job_upsert(&mut self) -> AppOp {
        let id =
            if self.jobs.len() < self.max_jobs && self.rng.below(2) == 0 || self.jobs.is_empty() {
                let id = format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    self.rng.next_u64() as u32,
                    self.rng.below(0x10000),
                    self.rng.below(0x1000),
                    self.rng.below(0x1000),
                    self.rng.next_u64() & 0xFFFF_FFFF_FFFF
                );
                self.jobs.push_back(id.clone());
                id
            } else {
                let i = self.rng.below(self.jobs.len() as u64) as usize;
                self.jobs[i].clone()
            };
        let project = project_name(self.rng.below(PROJECTS as u64) as usize);
        AppOp::UpsertJob {
            name: format!("job-{}", &id[..8]),
            project,
            group_path: format!("ops/group{}", self.rng.below(20)),
            definition: job_definition(&id, self.counter),
            schedule: (self.rng.below(3) == 0).then(|| "0 */5 * * * ?".to_string()),
            owner_member: self.owner.clone(),
            id,
        }
    }
}

pub fn project_name(i: usize) -> String {
    format!("p{i}")
}

/// A job definition of about 1 KB of JSON.
fn job_definition(id: &str, rev: u64) -> String {
    let mut s = format!(
        "{{\"uuid\":\"{id}\",\"rev\":{rev},\"loglevel\":\"INFO\",\"sequence\":{{\"keepgoing\":false,\"strategy\":\"node-first\",\"commands\":["
    );
    let mut i = 0;
    while s.len() < 980 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"exec\":\"echo step {i} of job {id} && /usr/bin/true\",\"description\":\"step {i}\"}}"
        ));
        i += 1;
    }
    s.push_str("]}}");
    s
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An application write failed; the message is the database's (fence
/// refusals included), never holding key content.
#[derive(Debug, thiserror::Error)]
#[error("application write failed: {0}")]
pub struct AppError(pub String);

/// An application connection: writes exactly as the scheduler would, with
/// plain SQL, through the fence and the capture triggers.
pub enum AppConn {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl AppConn {
    pub async fn connect(url: &DatabaseUrl) -> Result<AppConn, AppError> {
        match url {
            DatabaseUrl::Sqlite(path) => {
                let c = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
                )
                .map_err(|e| AppError(format!("open {}: {e}", path.display())))?;
                c.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(|e| AppError(e.to_string()))?;
                c.pragma_update(None, "synchronous", "NORMAL")
                    .map_err(|e| AppError(e.to_string()))?;
                Ok(AppConn::Sqlite(c))
            }
            DatabaseUrl::Postgres(u) => {
                let (client, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| {
                        let detail = e
                            .as_db_error()
                            .map(|d| format!(": {}", d.message()))
                            .unwrap_or_default();
                        AppError(format!(
                            "connect {}: {e}{detail}",
                            crate::config::redact_url(u)
                        ))
                    })?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(AppConn::Postgres(client))
            }
        }
    }

    /// Execute `ops` in one transaction.
    pub async fn execute(&mut self, ops: &[AppOp]) -> Result<(), AppError> {
        let now = now_ms();
        match self {
            AppConn::Sqlite(c) => {
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| AppError(e.to_string()))?;
                for op in ops {
                    sqlite_op(&tx, op, now).map_err(|e| AppError(e.to_string()))?;
                }
                tx.commit().map_err(|e| AppError(e.to_string()))
            }
            AppConn::Postgres(c) => {
                let tx = c.transaction().await.map_err(|e| AppError(pg_msg(&e)))?;
                for op in ops {
                    pg_op(&tx, op, now)
                        .await
                        .map_err(|e| AppError(pg_msg(&e)))?;
                }
                tx.commit().await.map_err(|e| AppError(pg_msg(&e)))
            }
        }
    }
}

/// PostgreSQL errors carry the server's message in `as_db_error`.
fn pg_msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

const UPSERT_PROJECT: &str = "INSERT INTO projects(name, description, config, updated_at) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT(name) DO UPDATE SET description = excluded.description, config = excluded.config, updated_at = excluded.updated_at";
const UPSERT_JOB: &str = "INSERT INTO jobs(id, project, name, group_path, description, definition, schedule, schedule_enabled, execution_enabled, owner_member, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, TRUE, TRUE, ?8, ?9) \
     ON CONFLICT(id) DO UPDATE SET project = excluded.project, name = excluded.name, group_path = excluded.group_path, \
     description = excluded.description, definition = excluded.definition, schedule = excluded.schedule, \
     owner_member = excluded.owner_member, updated_at = excluded.updated_at";
const UPSERT_KEY: &str = "INSERT INTO keys(path, kind, content, meta, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT(path) DO UPDATE SET kind = excluded.kind, content = excluded.content, meta = excluded.meta, updated_at = excluded.updated_at";
const UPDATE_CONFIG: &str = "UPDATE projects SET config = ?2, updated_at = ?3 WHERE name = ?1";
const DELETE_JOB: &str = "DELETE FROM jobs WHERE id = ?1";

/// The same statement in PostgreSQL's `$n` placeholders.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for c in sql.chars() {
        if c == '?' {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_op(tx: &rusqlite::Transaction<'_>, op: &AppOp, now: i64) -> rusqlite::Result<usize> {
    use rusqlite::params;
    match op {
        AppOp::UpsertProject {
            name,
            description,
            config,
        } => tx
            .prepare_cached(UPSERT_PROJECT)?
            .execute(params![name, description, config, now]),
        AppOp::UpsertJob {
            id,
            project,
            name,
            group_path,
            definition,
            schedule,
            owner_member,
        } => tx.prepare_cached(UPSERT_JOB)?.execute(params![
            id,
            project,
            name,
            group_path,
            "standard workload job",
            definition,
            schedule,
            owner_member,
            now
        ]),
        AppOp::UpsertKey {
            path,
            kind,
            content,
        } => tx.prepare_cached(UPSERT_KEY)?.execute(params![
            path,
            kind,
            content.expose(),
            "{\"type\":\"standard\"}",
            now
        ]),
        AppOp::UpdateProjectConfig { name, config } => tx
            .prepare_cached(UPDATE_CONFIG)?
            .execute(params![name, config, now]),
        AppOp::DeleteJob { id } => tx.prepare_cached(DELETE_JOB)?.execute(params![id]),
    }
}

async fn pg_op(
    tx: &tokio_postgres::Transaction<'_>,
    op: &AppOp,
    now: i64,
) -> Result<u64, tokio_postgres::Error> {
    match op {
        AppOp::UpsertProject {
            name,
            description,
            config,
        } => {
            tx.execute(&pg_sql(UPSERT_PROJECT), &[name, description, config, &now])
                .await
        }
        AppOp::UpsertJob {
            id,
            project,
            name,
            group_path,
            definition,
            schedule,
            owner_member,
        } => {
            tx.execute(
                &pg_sql(UPSERT_JOB),
                &[
                    id,
                    project,
                    name,
                    group_path,
                    &"standard workload job",
                    definition,
                    schedule,
                    owner_member,
                    &now,
                ],
            )
            .await
        }
        AppOp::UpsertKey {
            path,
            kind,
            content,
        } => {
            tx.execute(
                &pg_sql(UPSERT_KEY),
                &[
                    path,
                    kind,
                    &content.expose(),
                    &"{\"type\":\"standard\"}",
                    &now,
                ],
            )
            .await
        }
        AppOp::UpdateProjectConfig { name, config } => {
            tx.execute(&pg_sql(UPDATE_CONFIG), &[name, config, &now])
                .await
        }
        AppOp::DeleteJob { id } => tx.execute(&pg_sql(DELETE_JOB), &[id]).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_matches_the_standard_workload() {
        let mut w = Workload::new(7);
        let (mut jobs, mut keys, mut cfg, mut del) = (0, 0, 0, 0);
        let n = 100_000;
        for _ in 0..n {
            match w.next_op() {
                AppOp::UpsertJob { definition, .. } => {
                    assert!(
                        (950..1200).contains(&definition.len()),
                        "{}",
                        definition.len()
                    );
                    jobs += 1
                }
                AppOp::UpsertKey { content, .. } => {
                    assert_eq!(content.expose().len(), 256);
                    keys += 1
                }
                AppOp::UpdateProjectConfig { .. } => cfg += 1,
                AppOp::DeleteJob { .. } => del += 1,
                AppOp::UpsertProject { .. } => unreachable!("setup only"),
            }
        }
        let pct = |x: i32| x as f64 * 100.0 / n as f64;
        assert!((pct(del) - 2.0).abs() < 0.3, "deletes {}", pct(del));
        assert!((pct(jobs) - 68.6).abs() < 1.0, "jobs {}", pct(jobs));
        assert!((pct(keys) - 19.6).abs() < 1.0, "keys {}", pct(keys));
        assert!((pct(cfg) - 9.8).abs() < 1.0, "configs {}", pct(cfg));
    }

    #[test]
    fn seeded_runs_repeat() {
        let a: Vec<AppOp> = {
            let mut w = Workload::new(42);
            (0..100).map(|_| w.next_op()).collect()
        };
        let b: Vec<AppOp> = {
            let mut w = Workload::new(42);
            (0..100).map(|_| w.next_op()).collect()
        };
        assert_eq!(a, b);
        assert_eq!(Workload::new(1).setup().len(), PROJECTS);
    }

    #[test]
    fn placeholders_translate() {
        assert_eq!(pg_sql("a = ?1, b = ?2"), "a = $1, b = $2");
    }
}
