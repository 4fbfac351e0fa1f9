//! The drill's two background loops: the monitor, which polls every
//! member's `/status` and `/active` (as a load balancer's health check
//! would) and publishes what it saw; and the writer, which writes one
//! uniquely named project at a time to whichever member answers `/active`
//! and records every write it saw commit.
//!
//! Owns: the polling and writing loops and what they record (the timeline,
//! the writer's commit log and its outage stretches).
//! Must never: write anywhere but the member the monitor saw answering
//! `/active` alone; count a write as committed before its commit returned.

use super::timeline::Timeline;
use crate::config::DatabaseUrl;
use crate::status::client;
use crate::workload::{AppConn, AppOp};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the monitor polls.
pub const POLL: Duration = Duration::from_millis(30);
/// Per-request limit of a poll: a member slower than this counts as down.
const POLL_LIMIT: Duration = Duration::from_millis(400);

/// A member the monitor watches.
#[derive(Clone, Debug)]
pub struct Watched {
    pub id: String,
    pub status: String,
    pub witness: bool,
}

/// One round of polls.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// `/status` per member; `None` when it did not answer.
    pub statuses: BTreeMap<String, Option<Value>>,
    /// Members that answered `GET /active` with 200.
    pub actives: Vec<String>,
}

impl Snapshot {
    /// The member writes go to: the one answering `/active`, if exactly one.
    pub fn target(&self) -> Option<&str> {
        match self.actives.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        }
    }

    pub fn status(&self, m: &str) -> Option<&Value> {
        self.statuses.get(m).and_then(Option::as_ref)
    }

    pub fn epoch(&self, m: &str) -> Option<u64> {
        self.status(m).and_then(|s| s["epoch"].as_u64())
    }
}

/// Polls in which several members answered `/active` at once: when (ms
/// into the drill) and who.
pub type DoubleActives = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

pub struct Monitor {
    pub rx: watch::Receiver<Arc<Snapshot>>,
    /// Polls in which more than one member answered `/active` with 200.
    pub double_actives: DoubleActives,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    pub fn start(members: Vec<Watched>, timeline: Arc<Timeline>) -> Monitor {
        let (tx, rx) = watch::channel(Arc::new(Snapshot {
            at: Instant::now(),
            statuses: BTreeMap::new(),
            actives: Vec::new(),
        }));
        let doubles = Arc::new(Mutex::new(Vec::new()));
        let d = doubles.clone();
        let task = tokio::spawn(async move {
            let mut last: HashMap<String, (String, u64)> = HashMap::new();
            let mut round: u64 = 0;
            loop {
                let started = Instant::now();
                let polls = members.iter().map(|m| async move {
                    let st = client::request(&m.status, "GET", "/status", None, None, POLL_LIMIT)
                        .await
                        .ok()
                        .filter(|r| r.code == 200)
                        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok());
                    let active = !m.witness
                        && client::request(&m.status, "GET", "/active", None, None, POLL_LIMIT)
                            .await
                            .is_ok_and(|r| r.code == 200);
                    (m.id.clone(), st, active)
                });
                let results = futures_util::future::join_all(polls).await;
                // Stamped when the answers are in: a time measured to this
                // snapshot is an upper bound (off by at most one poll).
                let at = Instant::now();
                let mut snap = Snapshot {
                    at,
                    statuses: BTreeMap::new(),
                    actives: Vec::new(),
                };
                for (id, st, active) in results {
                    let (role, epoch) = match &st {
                        Some(s) => (
                            s["role"].as_str().unwrap_or("unknown").to_string(),
                            s["epoch"].as_u64().unwrap_or(0),
                        ),
                        None => ("down".to_string(), last.get(&id).map_or(0, |l| l.1)),
                    };
                    let changed = last.get(&id) != Some(&(role.clone(), epoch));
                    if changed {
                        let before = last.get(&id).map(|l| l.0.clone());
                        timeline.role(at, &id, &role, epoch);
                        let kind = match role.as_str() {
                            "fenced" => "fence",
                            "down" => "down",
                            _ => "role",
                        };
                        let detail = match before {
                            Some(b) => format!("{b} -> {role} (epoch {epoch})"),
                            None => format!("{role} (epoch {epoch})"),
                        };
                        timeline.event_at(at, kind, Some(&id), detail);
                        last.insert(id.clone(), (role, epoch));
                    }
                    if round.is_multiple_of(8)
                        && let Some(s) = &st
                        && s["role"] == "passive"
                    {
                        timeline.lag(
                            at,
                            &id,
                            s["lag"]["changes"].as_u64().unwrap_or(0),
                            s["lag"]["ms"].as_u64().unwrap_or(0),
                        );
                    }
                    if active {
                        snap.actives.push(id.clone());
                    }
                    snap.statuses.insert(id, st);
                }
                if snap.actives.len() > 1 {
                    let t = timeline.ms(at);
                    timeline.event_at(
                        at,
                        "double_active",
                        None,
                        format!("{} answered /active at once", snap.actives.join(", ")),
                    );
                    d.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((t, snap.actives.clone()));
                }
                if tx.send(Arc::new(snap)).is_err() {
                    return;
                }
                round += 1;
                tokio::time::sleep_until((started + POLL).into()).await;
            }
        });
        Monitor {
            rx,
            double_actives: doubles,
            task,
        }
    }

    pub fn latest(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }
}

/// A write the writer saw commit.
#[derive(Clone, Debug)]
pub struct Committed {
    pub name: String,
    pub member: String,
    pub scenario: String,
    pub t_ms: u64,
}

/// A stretch of time in which every write failed.
#[derive(Clone, Debug)]
pub struct Outage {
    pub scenario: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// False when writes were still failing when the writer was paused.
    pub recovered: bool,
    pub first_error: String,
}

#[derive(Default)]
struct Log {
    scenario: String,
    committed: Vec<Committed>,
    failed: HashMap<String, u64>,
    outages: Vec<Outage>,
    failing_since: Option<(Instant, String)>,
}

struct WriterShared {
    paused: AtomicBool,
    stop: AtomicBool,
    /// Held for the duration of each write, so `pause` can wait for the
    /// write in flight.
    gate: tokio::sync::Mutex<()>,
    log: Mutex<Log>,
}

impl WriterShared {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer runs on a thread of its own: SQLite writes block, and must
/// not hold up the monitor's polls (which time the drill).
pub struct Writer {
    shared: Arc<WriterShared>,
    timeline: Arc<Timeline>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Start paused; `resume` sets the scenario the writes belong to.
    pub fn start(
        urls: HashMap<String, DatabaseUrl>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        timeline: Arc<Timeline>,
        interval: Duration,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(WriterShared {
            paused: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            gate: tokio::sync::Mutex::new(()),
            log: Mutex::new(Log::default()),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (s, tl) = (shared.clone(), timeline.clone());
        let thread = std::thread::Builder::new()
            .name("drill-writer".into())
            .spawn(move || rt.block_on(write_loop(urls, snapshots, tl, s, interval)))?;
        Ok(Writer {
            shared,
            timeline,
            thread: Some(thread),
        })
    }

    pub fn resume(&self, scenario: &str) {
        {
            let mut l = self.shared.log();
            l.scenario = scenario.to_string();
            l.failing_since = None;
        }
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Stop writing and wait for the write in flight. An outage still open
    /// is closed here, marked as not recovered.
    pub async fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        let _g = self.shared.gate.lock().await;
        let mut l = self.shared.log();
        if let Some((since, err)) = l.failing_since.take() {
            let o = Outage {
                scenario: l.scenario.clone(),
                start_ms: self.timeline.ms(since),
                end_ms: self.timeline.now_ms(),
                recovered: false,
                first_error: err,
            };
            l.outages.push(o);
        }
    }

    pub fn committed(&self, scenario: &str) -> Vec<Committed> {
        self.shared
            .log()
            .committed
            .iter()
            .filter(|c| c.scenario == scenario)
            .cloned()
            .collect()
    }

    pub fn failed(&self, scenario: &str) -> u64 {
        self.shared.log().failed.get(scenario).copied().unwrap_or(0)
    }

    pub fn outages(&self, scenario: &str) -> Vec<Outage> {
        self.shared
            .log()
            .outages
            .iter()
            .filter(|o| o.scenario == scenario)
            .cloned()
            .collect()
    }

    pub fn total_committed(&self) -> usize {
        self.shared.log().committed.len()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_loop(
    urls: HashMap<String, DatabaseUrl>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    timeline: Arc<Timeline>,
    shared: Arc<WriterShared>,
    interval: Duration,
) {
    let mut conns: HashMap<String, AppConn> = HashMap::new();
    let mut n: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(interval).await;
        if shared.paused.load(Ordering::SeqCst) {
            continue;
        }
        let _g = shared.gate.lock().await;
        if shared.paused.load(Ordering::SeqCst) {
            continue;
        }
        let scenario = shared.log().scenario.clone();
        let target = snapshots.borrow().target().map(str::to_string);
        let name = format!("drill-{scenario}-{n:06}");
        let result = match target.as_deref().and_then(|t| urls.get(t).map(|u| (t, u))) {
            None => Err("no member answers /active".to_string()),
            Some((t, url)) => {
                if !conns.contains_key(t) {
                    match AppConn::connect(url).await {
                        Ok(c) => {
                            conns.insert(t.to_string(), c);
                        }
                        Err(e) => {
                            conns.remove(t);
                            record(&shared, &timeline, &scenario, Err(e.to_string()));
                            continue;
                        }
                    }
                }
                let op = AppOp::UpsertProject {
                    name: name.clone(),
                    description: "understudy drill writer".into(),
                    config: "{}".into(),
                };
                match conns.get_mut(t) {
                    Some(c) => match c.execute(&[op]).await {
                        Ok(()) => Ok(t.to_string()),
                        Err(e) => {
                            // A fresh connection next time: a PostgreSQL
                            // session may be broken, and it costs little.
                            conns.remove(t);
                            Err(e.to_string())
                        }
                    },
                    None => Err("no connection".into()),
                }
            }
        };
        if let Ok(member) = &result {
            n += 1;
            shared.log().committed.push(Committed {
                name,
                member: member.clone(),
                scenario: scenario.clone(),
                t_ms: timeline.now_ms(),
            });
        }
        record(&shared, &timeline, &scenario, result.map(|_| ()));
    }
}

fn record(shared: &WriterShared, timeline: &Timeline, scenario: &str, r: Result<(), String>) {
    let now = Instant::now();
    timeline.write(now, r.is_ok());
    let mut l = shared.log();
    match r {
        Ok(()) => {
            if let Some((since, err)) = l.failing_since.take() {
                let start_ms = timeline.ms(since);
                let end_ms = timeline.ms(now);
                timeline.event_at(
                    now,
                    "writes_resumed",
                    None,
                    format!("after {} ms of failed writes", end_ms - start_ms),
                );
                l.outages.push(Outage {
                    scenario: scenario.to_string(),
                    start_ms,
                    end_ms,
                    recovered: true,
                    first_error: err,
                });
            }
        }
        Err(e) => {
            *l.failed.entry(scenario.to_string()).or_insert(0) += 1;
            if l.failing_since.is_none() {
                timeline.event_at(now, "writes_failing", None, short(&e));
                l.failing_since = Some((now, short(&e)));
            }
        }
    }
}

fn short(e: &str) -> String {
    e.chars().take(160).collect()
}
