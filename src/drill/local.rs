//! The local drill: a throw-away cluster of real `understudy run` processes
//! (this executable) in a temp folder, a writer, and the destructive
//! scenarios run one after another against it, each ending with every
//! member back, converged and checked.
//!
//! Owns: building and tearing down the drill's cluster (its folder, its
//! PostgreSQL databases, its relays), carrying out each scenario's fault
//! and its repair, and the measurements of each scenario.
//! Must never: touch a database it did not create (PostgreSQL databases are
//! named `understudy_drill_<pid>_<member>` and dropped at the end), or
//! leave a process behind (the cluster kills its processes when dropped).

use super::proxy::Relay;
use super::report::{Report, ScenarioResult, Setup};
use super::timeline::Timeline;
use super::traffic::{Monitor, Snapshot, Watched, Writer};
use super::{Backend, DrillArgs, DrillError, Scenario, expand, io_err, progress};
use crate::config::DatabaseUrl;
use crate::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use crate::model::ChangeOp;
use crate::status::client::Endpoint;
use crate::store::{AnyStore, MemberStore};
use crate::tables::{CaptureSpec, Value};
use crate::workload::{AppConn, Workload};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writer pace: one write per interval (plus the write's own time).
const WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// Steady writes before each fault, and on the new active after it.
const STEADY: Duration = Duration::from_millis(800);
/// Extra promotion allowance for a partition: the cut-off active's
/// connections end only by timeouts, not by a closed socket, and the
/// monitor sees the new active one poll later at worst.
const PARTITION_ALLOWANCE_MS: u64 = 1_000;

/// PostgreSQL databases the drill created, dropped at the end.
struct PgDatabases {
    server: String,
    names: Vec<String>,
}

async fn pg_admin(server: &str) -> Result<tokio_postgres::Client, DrillError> {
    let url = format!("{server}/postgres");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| DrillError::Database {
            what: format!(
                "connecting to the PostgreSQL server {}",
                crate::config::redact_url(&url)
            ),
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

impl PgDatabases {
    async fn create(server: &str, ids: &[String]) -> Result<PgDatabases, DrillError> {
        let server = server.trim_end_matches('/').to_string();
        let admin = pg_admin(&server).await?;
        let mut names = Vec::new();
        for id in ids {
            let db = format!("understudy_drill_{}_{id}", std::process::id());
            // One statement per call: CREATE/DROP DATABASE refuse to run in
            // the implicit transaction of a multi-statement batch.
            for stmt in [
                format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                format!("CREATE DATABASE {db}"),
            ] {
                admin
                    .batch_execute(&stmt)
                    .await
                    .map_err(|e| DrillError::Database {
                        what: format!("creating database {db}"),
                        reason: e.to_string(),
                    })?;
            }
            names.push(db);
        }
        Ok(PgDatabases { server, names })
    }

    fn url(&self, i: usize) -> DatabaseUrl {
        DatabaseUrl::Postgres(format!("{}/{}", self.server, self.names[i]))
    }

    async fn drop_all(&self) {
        if let Ok(admin) = pg_admin(&self.server).await {
            for db in &self.names {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .await;
            }
        }
    }
}

pub async fn run(args: &DrillArgs) -> Result<Report, DrillError> {
    let scenarios = expand(&args.scenario);
    if args.members < 2 || args.members > 7 {
        return Err(DrillError::Usage(format!(
            "--members {}: a drill needs 2 to 7 data members",
            args.members
        )));
    }
    if args.members == 2 && !args.witness {
        return Err(DrillError::Usage(
            "two members alone cannot fail over automatically (one survivor is no majority): add --witness".into(),
        ));
    }
    let server = match args.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(args.database_url.clone().ok_or_else(|| {
            DrillError::Usage(
                "--backend postgres needs a PostgreSQL server: pass --database-url postgres://USER@HOST:PORT or set DATABASE_URL (the drill creates and drops its own databases there)".into(),
            )
        })?),
    };
    let tl = Arc::new(Timeline::new());
    let started_at_ms = crate::workload::now_ms();
    let bin = std::env::current_exe().map_err(io_err("finding this executable"))?;
    let tmp = tempfile::Builder::new()
        .prefix("understudy-drill-")
        .tempdir()
        .map_err(io_err("creating the drill's temp folder"))?;
    let ids: Vec<String> = (0..args.members)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let pg = match &server {
        Some(s) => Some(PgDatabases::create(s, &ids).await?),
        None => None,
    };
    let mut specs: Vec<MemberSpec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| MemberSpec {
            id: id.clone(),
            database: Some(match &pg {
                Some(pg) => pg.url(i),
                None => DatabaseUrl::Sqlite(tmp.path().join(format!("{id}.db"))),
            }),
        })
        .collect();
    if args.witness {
        specs.push(MemberSpec {
            id: "w".into(),
            database: None,
        });
    }
    let options = ClusterOptions {
        cluster: "drill".into(),
        ..ClusterOptions::default()
    };
    let setup = Setup {
        mode: "local",
        backend: match args.backend {
            Backend::Sqlite => "sqlite".into(),
            Backend::Postgres => "postgres".into(),
        },
        members: specs.iter().map(|s| s.id.clone()).collect(),
        witness: args.witness,
        heartbeat_ms: options.heartbeat_ms,
        lease_timeout_ms: options.lease_ms,
        failover_timeout_ms: options.failover_ms,
    };
    let outcome = drive(args, &scenarios, &tl, &bin, tmp.path(), &specs, options).await;
    if let Some(pg) = &pg {
        pg.drop_all().await;
    }
    if args.keep {
        let kept = tmp.keep();
        println!(
            "kept the drill's cluster folder (configs, databases, member logs): {}",
            kept.display()
        );
    }
    let (results, general, history) = outcome?;
    let mut report = Report::new(
        setup,
        started_at_ms,
        tl.now_ms(),
        results,
        general,
        tl.recorded(),
    );
    report.history = history;
    Ok(report)
}

/// Build the cluster, run the scenarios, tear everything down (the
/// cluster's processes die when it is dropped at the end of this call).
async fn drive(
    args: &DrillArgs,
    scenarios: &[Scenario],
    tl: &Arc<Timeline>,
    bin: &std::path::Path,
    dir: &std::path::Path,
    specs: &[MemberSpec],
    options: ClusterOptions,
) -> Result<(Vec<ScenarioResult>, Vec<String>, serde_json::Value), DrillError> {
    let mut cl = LocalCluster::create(dir, bin, specs, options)?;
    let relays = if scenarios.contains(&Scenario::PartitionActive) {
        relay_links(&cl).await?
    } else {
        Vec::new()
    };
    let names: Vec<String> = cl.members.iter().map(|m| m.id.to_string()).collect();
    progress(
        tl,
        format!(
            "local cluster {} in {} (heartbeat {} ms, lease {} ms, failover {} ms)",
            names.join(", "),
            dir.display(),
            cl.options.heartbeat_ms,
            cl.options.lease_ms,
            cl.options.failover_ms
        ),
    );
    cl.init_all()?;
    cl.start_all()?;
    let first = names[0].clone();
    cl.wait_active(&first, Duration::from_secs(30)).await?;
    let urls: HashMap<String, DatabaseUrl> = cl
        .members
        .iter()
        .filter_map(|m| m.database.clone().map(|d| (m.id.to_string(), d)))
        .collect();
    seed_data(&urls[&first], args.seed).await?;
    cl.wait_converged(&first, 1, Duration::from_secs(60))
        .await?;
    progress(tl, format!("{first} is active; seed data on every member"));

    let watched = cl
        .members
        .iter()
        .map(|m| Watched {
            id: m.id.to_string(),
            status: m.status.clone(),
            witness: m.is_witness(),
        })
        .collect();
    let monitor = Monitor::start(watched, tl.clone());
    let writer = Writer::start(urls.clone(), monitor.rx.clone(), tl.clone(), WRITE_INTERVAL)
        .map_err(io_err("starting the writer"))?;
    let mut d = Drill {
        cl,
        relays,
        monitor,
        writer,
        tl: tl.clone(),
        urls,
    };
    let mut results = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let r = d.scenario(*s, i == 0 && args.inject_lost_change).await;
        progress(
            tl,
            format!(
                "{}: {}{}",
                r.name,
                r.verdict,
                if r.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.reasons.join("; "))
                }
            ),
        );
        results.push(r);
    }
    let mut general = Vec::new();
    for (t, who) in d
        .monitor
        .double_actives
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        general.push(format!(
            "{} answered /active at the same time ({t} ms into the drill)",
            who.join(" and ")
        ));
    }
    // The role changes as the cluster recorded them (the longest history
    // any member holds: every member keeps the active's).
    let mut history = serde_json::Value::Null;
    for m in &d.cl.members {
        if let Ok(h) = crate::status::client::get_json(&m.status, "/history").await
            && h["history"].as_array().map_or(0, Vec::len)
                > history["history"].as_array().map_or(0, Vec::len)
        {
            history = h;
        }
    }
    progress(
        tl,
        format!(
            "{} writes committed in all; stopping the cluster",
            d.writer.total_committed()
        ),
    );
    Ok((results, general, history))
}

/// Route every member's peer connections through a relay of their own, so
/// any member can be cut off (configs are rewritten before the start).
async fn relay_links(cl: &LocalCluster) -> Result<Vec<(String, String, Relay)>, DrillError> {
    let mut out = Vec::new();
    for from in &cl.members {
        let cfg = &from.config;
        let mut text =
            std::fs::read_to_string(cfg).map_err(io_err(format!("reading {}", cfg.display())))?;
        for to in cl.members.iter().filter(|m| m.id != from.id) {
            let upstream = to.replication.parse().map_err(|e| {
                DrillError::Setup(format!("replication address {}: {e}", to.replication))
            })?;
            let relay = Relay::start(upstream)
                .await
                .map_err(io_err("starting a relay"))?;
            let line = format!("address = {:?}", to.replication);
            if !text.contains(&line) {
                return Err(DrillError::Setup(format!(
                    "{} does not list {} at {}",
                    cfg.display(),
                    to.id,
                    to.replication
                )));
            }
            text = text.replace(&line, &format!("address = \"{}\"", relay.addr()));
            out.push((from.id.to_string(), to.id.to_string(), relay));
        }
        std::fs::write(cfg, text).map_err(io_err(format!("writing {}", cfg.display())))?;
    }
    Ok(out)
}

async fn seed_data(url: &DatabaseUrl, seed: u64) -> Result<(), DrillError> {
    let db = |e: crate::workload::AppError| DrillError::Database {
        what: "writing the seed data".into(),
        reason: e.to_string(),
    };
    let mut w = Workload::new(seed).with_max_jobs(100);
    let mut app = AppConn::connect(url).await.map_err(db)?;
    app.execute(&w.setup()).await.map_err(db)?;
    for _ in 0..40 {
        let batch: Vec<_> = (0..5).map(|_| w.next_op()).collect();
        app.execute(&batch).await.map_err(db)?;
    }
    Ok(())
}

struct Drill {
    cl: LocalCluster,
    relays: Vec<(String, String, Relay)>,
    monitor: Monitor,
    writer: Writer,
    tl: Arc<Timeline>,
    urls: HashMap<String, DatabaseUrl>,
}

/// What the fault did, for the repair.
enum Fault {
    Killed(String),
    Cut(String),
    Switchover(tokio::task::JoinHandle<Result<String, String>>),
}

impl Drill {
    async fn scenario(&mut self, kind: Scenario, inject: bool) -> ScenarioResult {
        let name = kind.name();
        self.tl.set_scenario(Some(name));
        self.tl.event("scenario_start", None, name);
        progress(&self.tl, format!("{name}: starting"));
        let mut r = ScenarioResult::new(name, self.tl.now_ms());
        if let Err(e) = self.scenario_inner(kind, inject, &mut r).await {
            r.reasons.push(e);
            // Leave the cluster whole for the next scenario.
            for (_, _, relay) in &self.relays {
                relay.heal();
            }
            let _ = self.cl.start_all();
            self.writer.pause().await;
        }
        r.unavailable_ms = self
            .writer
            .outages(name)
            .iter()
            .map(|o| o.end_ms - o.start_ms)
            .max()
            .unwrap_or(0);
        for o in self.writer.outages(name).iter().filter(|o| !o.recovered) {
            r.reasons.push(format!(
                "writes were still failing at the end ({})",
                o.first_error
            ));
        }
        r.writes_failed = self.writer.failed(name);
        r.end_ms = self.tl.now_ms();
        self.tl.event("scenario_end", None, name);
        self.tl.set_scenario(None);
        r.judge();
        r
    }

    fn status_addr(&self, id: &str) -> String {
        self.cl.member(id).status.clone()
    }

    async fn scenario_inner(
        &mut self,
        kind: Scenario,
        inject: bool,
        r: &mut ScenarioResult,
    ) -> Result<(), String> {
        let name = kind.name();
        let q_before = self.quarantine().await?;
        self.writer.resume(name);
        tokio::time::sleep(STEADY).await;
        let snap = self.monitor.latest();
        let old = snap
            .target()
            .ok_or_else(|| {
                format!(
                    "before the fault, not exactly one member answered /active ({:?})",
                    snap.actives
                )
            })?
            .to_string();
        let e0 = snap.epoch(&old).unwrap_or(0);
        r.old_active = Some(old.clone());
        r.epoch_before = Some(e0);
        let failover = self.cl.options.failover_ms;
        r.promotion_budget_ms = match kind {
            Scenario::KillActive | Scenario::Switchover => Some(failover + 1000),
            Scenario::PartitionActive => Some(failover + 1000 + PARTITION_ALLOWANCE_MS),
            _ => None,
        };
        let passive = best_passive(&snap, &old, &self.cl)
            .ok_or_else(|| "no passive member to act on".to_string())?;

        // The fault.
        let t0 = Instant::now();
        let (fault, what) = match kind {
            Scenario::KillActive => {
                self.cl.kill(&old);
                (
                    Fault::Killed(old.clone()),
                    format!("kill -9 of {old}, the active"),
                )
            }
            Scenario::PartitionActive => {
                for (from, to, relay) in &self.relays {
                    if *from == old || *to == old {
                        relay.cut();
                    }
                }
                (
                    Fault::Cut(old.clone()),
                    format!("{old}, the active, cut off from every other member"),
                )
            }
            Scenario::Switchover => {
                let ep = Endpoint::plain(self.status_addr(&old));
                let token = self.cl.options.token.clone();
                let to = passive.clone();
                let h = tokio::spawn(async move {
                    crate::status::cli_control::switchover(
                        &ep,
                        &token,
                        &to,
                        Duration::from_secs(20),
                    )
                    .await
                    .map(|rep| rep.line)
                    .map_err(|e| e.to_string())
                });
                (
                    Fault::Switchover(h),
                    format!("planned switchover from {old} to {passive}"),
                )
            }
            Scenario::KillPassive | Scenario::All => {
                self.cl.kill(&passive);
                (
                    Fault::Killed(passive.clone()),
                    format!("kill -9 of {passive}, a passive"),
                )
            }
        };
        let victim = match &fault {
            Fault::Killed(m) | Fault::Cut(m) => m.clone(),
            Fault::Switchover(_) => old.clone(),
        };
        r.fault_ms = Some(self.tl.ms(t0));
        self.tl.event_at(t0, "fault", Some(&victim), what.clone());
        progress(&self.tl, format!("{name}: {what}"));

        self.observe(kind, t0, &old, &victim, e0, r).await;
        if let Some(d) = r.detection_ms {
            progress(&self.tl, format!("{name}: noticed after {d} ms"));
        }
        match (kind, r.promotion_ms, &r.new_active) {
            (Scenario::KillPassive, _, _) => {}
            (_, Some(p), Some(n)) => progress(
                &self.tl,
                format!("{name}: {n} answers /active after {p} ms"),
            ),
            _ => {
                return Err(format!(
                    "no member but {old} answered /active within {} ms",
                    failover + 15_000
                ));
            }
        }
        tokio::time::sleep(STEADY).await;

        // The repair: the faulted member comes back and must follow.
        let new = r.new_active.clone().unwrap_or_else(|| old.clone());
        match fault {
            Fault::Killed(m) => {
                self.cl.start(&m).map_err(|e| e.to_string())?;
                self.tl.event("restore", Some(&m), format!("{m} restarted"));
            }
            Fault::Cut(m) => {
                for (_, _, relay) in &self.relays {
                    relay.heal();
                }
                self.tl
                    .event("restore", Some(&m), format!("{m} reconnected"));
            }
            Fault::Switchover(h) => match h.await {
                Ok(Ok(line)) => self.tl.event("switchover", Some(&new), line),
                Ok(Err(e)) => r
                    .reasons
                    .push(format!("the switchover request failed: {e}")),
                Err(e) => r
                    .reasons
                    .push(format!("the switchover request failed: {e}")),
            },
        }
        let addr = self.status_addr(&victim);
        let want_active = new.clone();
        let rejoin = Instant::now();
        self.cl
            .wait_until(
                Duration::from_secs(60),
                &format!("{victim} to follow {new} again"),
                || {
                    let (addr, want) = (addr.clone(), want_active.clone());
                    async move {
                        crate::status::client::get_json(&addr, "/status")
                            .await
                            .is_ok_and(|s| s["role"] == "passive" && s["active"] == want.as_str())
                    }
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        self.tl.event(
            "rejoined",
            Some(&victim),
            format!("{victim} follows {new} as a passive"),
        );
        progress(
            &self.tl,
            format!(
                "{name}: {victim} follows {new} as a passive ({} ms after the repair)",
                rejoin.elapsed().as_millis()
            ),
        );
        self.writer.pause().await;
        let final_active = self
            .monitor
            .latest()
            .target()
            .map(str::to_string)
            .unwrap_or(new);
        if kind == Scenario::KillPassive && final_active != old {
            r.reasons.push(format!(
                "the active changed from {old} to {final_active} when a passive was killed"
            ));
        }
        r.new_active = Some(final_active.clone());
        self.cl
            .wait_converged(&final_active, 1, Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        self.tl.event(
            "converged",
            None,
            format!("every member at {final_active}'s head"),
        );

        let committed = self.writer.committed(name);
        r.writes_committed = committed.len() as u64;
        if inject && let Some(victim) = committed.last() {
            let url = self.url(&final_active)?;
            delete_project(url, &victim.name).await?;
            self.tl.event(
                "injected",
                Some(&final_active),
                format!(
                    "deleted the committed write {} behind the writer's back",
                    victim.name
                ),
            );
            progress(
                &self.tl,
                format!(
                    "{name}: deleted the committed write {} (--inject-lost-change)",
                    victim.name
                ),
            );
            self.cl
                .wait_converged(&final_active, 1, Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
        }

        // Lost and divergent changes.
        let present = project_names(self.url(&final_active)?).await?;
        let q_after = self.quarantine().await?;
        r.divergent_changes = q_after
            .iter()
            .map(|(m, (n, _))| n.saturating_sub(q_before.get(m).map_or(0, |b| b.0)))
            .sum();
        let quarantined: HashSet<&String> = q_after.values().flat_map(|(_, names)| names).collect();
        let mut lost = Vec::new();
        for c in &committed {
            if present.contains(&c.name) {
                continue;
            }
            if quarantined.contains(&c.name) && kind != Scenario::Switchover {
                r.quarantined_writes += 1;
            } else {
                lost.push(format!("{} (committed on {})", c.name, c.member));
            }
        }
        r.lost_changes = lost.len() as u64;
        if !lost.is_empty() {
            r.reasons.push(format!(
                "lost: {}{}",
                lost.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if lost.len() > 5 { ", ..." } else { "" }
            ));
        }

        // Checksums.
        let mut sums = BTreeMap::new();
        for (m, url) in &self.urls {
            let s = AnyStore::open(url, &CaptureSpec::example())
                .await
                .map_err(|e| format!("opening {m}'s database: {e}"))?;
            sums.insert(
                m.clone(),
                s.checksums()
                    .await
                    .map_err(|e| format!("checksums of {m}: {e}"))?,
            );
        }
        let reference = &sums[&final_active];
        let differ: Vec<&String> = sums
            .iter()
            .filter(|(_, s)| *s != reference)
            .map(|(m, _)| m)
            .collect();
        r.checksums_match = differ.is_empty();
        if !differ.is_empty() {
            r.reasons.push(format!(
                "checksums of {:?} differ from {final_active}'s",
                differ
            ));
        }
        self.tl.event(
            "checksums",
            None,
            if r.checksums_match {
                format!("all {} data members match", sums.len())
            } else {
                format!("differ on {differ:?}")
            },
        );
        r.epoch_after = self.monitor.latest().epoch(&final_active);
        Ok(())
    }

    /// Follow the monitor's snapshots from the fault until the scenario's
    /// detection and promotion were seen (or the time is up).
    async fn observe(
        &self,
        kind: Scenario,
        t0: Instant,
        old: &str,
        victim: &str,
        e0: u64,
        r: &mut ScenarioResult,
    ) {
        let mut rx = self.monitor.rx.clone();
        let deadline = t0 + Duration::from_millis(self.cl.options.failover_ms + 15_000);
        // kill-passive: whether the active ever stopped answering, and
        // since when it answers again.
        let mut gone = false;
        let mut active_back: Option<Instant> = None;
        loop {
            let snap: Arc<Snapshot> = rx.borrow_and_update().clone();
            if snap.at > t0 {
                let since = |t: Instant| t.saturating_duration_since(t0).as_millis() as u64;
                if r.detection_ms.is_none() && detected(kind, &snap, old, victim, e0) {
                    r.detection_ms = Some(since(snap.at));
                    self.tl
                        .event_at(snap.at, "detected", None, detection_what(kind, victim));
                }
                match kind {
                    Scenario::KillPassive => {
                        // Nobody needs promoting; the active must keep
                        // answering. Watch a while past the detection.
                        if snap.target() == Some(old) {
                            active_back.get_or_insert(snap.at);
                        } else {
                            gone = true;
                            active_back = None;
                        }
                        if let Some(d) = r.detection_ms
                            && since(snap.at) > d + 1000
                        {
                            r.promotion_ms = if gone {
                                active_back.map(&since)
                            } else {
                                Some(0)
                            };
                            r.new_active = snap.target().map(str::to_string);
                            return;
                        }
                    }
                    _ => {
                        if r.promotion_ms.is_none()
                            && let Some(t) = snap.target()
                            && t != old
                        {
                            r.promotion_ms = Some(since(snap.at));
                            r.new_active = Some(t.to_string());
                            self.tl.event_at(
                                snap.at,
                                "promoted",
                                Some(t),
                                format!("{t} answers /active"),
                            );
                        }
                        if r.promotion_ms.is_some() && r.detection_ms.is_some() {
                            return;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    fn url(&self, m: &str) -> Result<&DatabaseUrl, String> {
        self.urls
            .get(m)
            .ok_or_else(|| format!("{m} has no database"))
    }

    /// Per data member: how many changes its quarantine holds, and the
    /// drill writer's project names among them.
    async fn quarantine(&self) -> Result<HashMap<String, (u64, HashSet<String>)>, String> {
        let mut out = HashMap::new();
        for (m, url) in &self.urls {
            let s = AnyStore::open(url, &CaptureSpec::example())
                .await
                .map_err(|e| format!("opening {m}'s database: {e}"))?;
            let list = s
                .divergence_list(true)
                .await
                .map_err(|e| format!("{m}'s divergence quarantine: {e}"))?;
            let names = list
                .iter()
                .filter_map(|d| match &d.change.op {
                    // A project's key is its name.
                    ChangeOp::Upsert(p) if p.table.as_str() == "projects" => p
                        .key()
                        .first()
                        .and_then(Value::as_text)
                        .filter(|name| name.starts_with("drill-"))
                        .map(str::to_string),
                    _ => None,
                })
                .collect();
            out.insert(m.clone(), (list.len() as u64, names));
        }
        Ok(out)
    }
}

/// Whether a member other than the faulted one shows it noticed the fault:
/// a candidate or a newer epoch/term anywhere (failovers); the active
/// fenced or handing over (switchover); the active seeing the passive
/// disconnected (kill-passive).
fn detected(kind: Scenario, snap: &Snapshot, old: &str, victim: &str, e0: u64) -> bool {
    let newer = |s: &serde_json::Value| {
        s["epoch"].as_u64().is_some_and(|e| e > e0)
            || s["failover"]["term"].as_u64().is_some_and(|t| t > e0)
    };
    match kind {
        Scenario::KillActive | Scenario::PartitionActive => snap
            .statuses
            .iter()
            .filter(|(m, _)| m.as_str() != victim)
            .filter_map(|(_, s)| s.as_ref())
            .any(|s| s["role"] == "candidate" || newer(s)),
        Scenario::Switchover => {
            snap.status(old)
                .is_some_and(|s| s["role"] == "fenced" || !s["failover"]["switchover_to"].is_null())
                || snap.statuses.values().flatten().any(newer)
        }
        Scenario::KillPassive | Scenario::All => snap.status(old).is_some_and(|s| {
            s["peers"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["member"] == victim && p["connected"] == false)
            })
        }),
    }
}

fn detection_what(kind: Scenario, victim: &str) -> String {
    match kind {
        Scenario::KillActive | Scenario::PartitionActive => {
            format!("a survivor stands for election ({victim} silent)")
        }
        Scenario::Switchover => format!("{victim} fenced for the handover"),
        Scenario::KillPassive | Scenario::All => format!("the active sees {victim} disconnected"),
    }
}

/// The data member other than `old` with the highest position.
fn best_passive(snap: &Snapshot, old: &str, cl: &LocalCluster) -> Option<String> {
    cl.members
        .iter()
        .filter(|m| !m.is_witness() && m.id.as_str() != old)
        .map(|m| {
            let seq = snap
                .status(m.id.as_str())
                .and_then(|s| s["position"]["seq"].as_u64())
                .unwrap_or(0);
            (seq, std::cmp::Reverse(m.id.to_string()))
        })
        // Equally up to date: the first by name, for repeatable drills.
        .max()
        .map(|(_, m)| m.0)
}

/// The drill writer's project names on a member.
async fn project_names(url: &DatabaseUrl) -> Result<HashSet<String>, String> {
    const SQL: &str = "SELECT name FROM projects WHERE name LIKE 'drill-%'";
    match url {
        DatabaseUrl::Sqlite(p) => {
            let c = rusqlite::Connection::open_with_flags(
                p,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| format!("opening {}: {e}", p.display()))?;
            let mut st = c.prepare(SQL).map_err(|e| e.to_string())?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| e.to_string())?;
            rows.collect::<Result<HashSet<_>, _>>()
                .map_err(|e| e.to_string())
        }
        DatabaseUrl::Postgres(u) => {
            let c = pg_connect(u).await?;
            let rows = c.query(SQL, &[]).await.map_err(|e| e.to_string())?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0).map_err(|e| e.to_string()))
                .collect()
        }
    }
}

/// Delete one project as the application would (captured and replicated,
/// so every member loses it alike): what `--inject-lost-change` does.
async fn delete_project(url: &DatabaseUrl, name: &str) -> Result<(), String> {
    match url {
        DatabaseUrl::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).map_err(|e| e.to_string())?;
            c.busy_timeout(Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            c.execute("DELETE FROM projects WHERE name = ?1", [name])
                .map_err(|e| format!("deleting {name}: {e}"))?;
        }
        DatabaseUrl::Postgres(u) => {
            let c = pg_connect(u).await?;
            c.execute("DELETE FROM projects WHERE name = $1", &[&name])
                .await
                .map_err(|e| format!("deleting {name}: {e}"))?;
        }
    }
    Ok(())
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to {}: {e}", crate::config::redact_url(url)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}
