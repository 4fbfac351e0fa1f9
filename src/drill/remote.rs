//! The drill against a real cluster: only what does not harm it. A planned
//! switchover to the most up-to-date passive and back, with the members'
//! checksums compared (as `understudy verify` does) before and after.
//!
//! Owns: the non-destructive scenarios and their measurements (no writer:
//! a drill never writes into a production database; loss is judged from
//! positions, the old active's head against the new epoch's start).
//! Must never: kill, stop, partition or write to anything; run at all when
//! destructive drills are asked for.

use super::report::{Report, ScenarioResult, Setup};
use super::timeline::Timeline;
use super::traffic::{Monitor, Snapshot, Watched};
use super::{DrillArgs, DrillError, Scenario, progress};
use crate::config::Config;
use crate::status::client::{self, Endpoint};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(args: &DrillArgs) -> Result<Report, DrillError> {
    if args.allow_destructive {
        return Err(DrillError::Usage(
            "destructive drills (kill -9, partition) against a real cluster are not supported yet; \
             run `understudy drill` without --cluster/--url to rehearse them on a throw-away local cluster"
                .into(),
        ));
    }
    let destructive: Vec<&str> = args
        .scenario
        .iter()
        .filter(|s| !matches!(s, Scenario::Switchover | Scenario::All))
        .map(|s| s.name())
        .collect();
    if !destructive.is_empty() {
        return Err(DrillError::Usage(format!(
            "against a real cluster the drill runs only the switchover (and back); {} would harm it",
            destructive.join(", ")
        )));
    }
    let Some(path) = &args.cluster else {
        return Err(DrillError::Usage(
            "a drill against a real cluster compares the members' checksums as `understudy verify` does, \
             which needs a member config for the members' addresses: pass --cluster CONFIG (--url then picks the member asked)"
                .into(),
        ));
    };
    let cfg = Config::load(path)?;
    if cfg.status.tls {
        return Err(DrillError::Usage(
            "the drill polls status endpoints over plain HTTP; this cluster serves them over https (status.tls), which the drill does not support yet".into(),
        ));
    }
    let token = args
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| cfg.status.token.clone());
    let tl = Arc::new(Timeline::new());
    let started_at_ms = crate::workload::now_ms();
    let mut own = cfg.status.listen;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut watched = vec![Watched {
        id: cfg.member.to_string(),
        status: own.to_string(),
        witness: cfg.witness,
    }];
    watched.extend(cfg.peers.iter().map(|p| Watched {
        id: p.member.to_string(),
        status: p.status.clone(),
        witness: p.witness,
    }));
    let ask = match &args.url {
        Some(u) => Endpoint::parse(u, None).map_err(|e| DrillError::Usage(e.to_string()))?,
        None => Endpoint::plain(own.to_string()),
    };
    let setup = Setup {
        mode: "cluster",
        backend: "as configured".into(),
        members: watched.iter().map(|w| w.id.clone()).collect(),
        witness: watched.iter().any(|w| w.witness),
        heartbeat_ms: cfg.replication.heartbeat_interval.as_millis() as u64,
        lease_timeout_ms: cfg.replication.lease_timeout.as_millis() as u64,
        failover_timeout_ms: cfg.replication.failover_timeout.as_millis() as u64,
    };
    progress(
        &tl,
        format!(
            "cluster {}: non-destructive drill (switchover and back) through {}",
            cfg.cluster,
            ask.url()
        ),
    );
    let monitor = Monitor::start(watched.clone(), tl.clone());
    let mut results = Vec::new();
    let before = verify(&cfg, &tl, "before").await;
    if let Err(e) = &before {
        let mut r = ScenarioResult::new("switchover", tl.now_ms());
        r.reasons.push(format!("before the drill: {e}"));
        r.judge();
        results.push(r);
    } else {
        let budget = cfg.replication.failover_timeout.as_millis() as u64 + 1000;
        let first = switchover(&monitor, &tl, &ask, &token, "switchover", None, budget).await;
        let back_to = first.old_active.clone();
        let first_ok = first.reasons.is_empty();
        results.push(first);
        if first_ok {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let back = switchover(
                &monitor,
                &tl,
                &ask,
                &token,
                "switchover-back",
                back_to.as_deref(),
                budget,
            )
            .await;
            results.push(back);
        }
        let after = verify(&cfg, &tl, "after").await;
        for r in &mut results {
            r.checksums_match = after.is_ok();
            if let Err(e) = &after {
                r.reasons.push(format!("after the drill: {e}"));
            }
            r.judge();
        }
    }
    let mut general = Vec::new();
    for (t, who) in monitor
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
    Ok(Report::new(
        setup,
        started_at_ms,
        tl.now_ms(),
        results,
        general,
        tl.recorded(),
    ))
}

async fn verify(cfg: &Config, tl: &Timeline, when: &str) -> Result<(), String> {
    let report = crate::verify::run(cfg, VERIFY_TIMEOUT).await;
    let line = crate::verify::render_text(&report);
    let ok = report.exit_code() == 0;
    tl.event(
        "checksums",
        None,
        format!(
            "{when}: {}",
            if ok { "all members match" } else { "differ" }
        ),
    );
    progress(
        tl,
        format!("checksums {when}: {}", if ok { "match" } else { "DIFFER" }),
    );
    if ok {
        Ok(())
    } else {
        // The findings follow the per-member table: keep just those.
        let lines: Vec<&str> = line.trim().lines().collect();
        let findings = lines[lines.len().saturating_sub(3)..].join("; ");
        Err(format!("checksums: {findings}"))
    }
}

/// One planned switchover, measured: to `to`, or to the most up-to-date
/// passive. Its checksum verdict is filled in by the caller.
async fn switchover(
    monitor: &Monitor,
    tl: &Timeline,
    ask: &Endpoint,
    token: &str,
    name: &str,
    to: Option<&str>,
    budget: u64,
) -> ScenarioResult {
    tl.set_scenario(Some(name));
    tl.event("scenario_start", None, name);
    let mut r = ScenarioResult::new(name, tl.now_ms());
    r.promotion_budget_ms = Some(budget);
    if let Err(e) = switchover_inner(monitor, tl, ask, token, name, to, &mut r).await {
        r.reasons.push(e);
    }
    r.end_ms = tl.now_ms();
    tl.event("scenario_end", None, name);
    tl.set_scenario(None);
    r
}

#[allow(clippy::too_many_arguments)]
async fn switchover_inner(
    monitor: &Monitor,
    tl: &Timeline,
    ask: &Endpoint,
    token: &str,
    name: &str,
    to: Option<&str>,
    r: &mut ScenarioResult,
) -> Result<(), String> {
    let snap = monitor.latest();
    let old = snap
        .target()
        .ok_or_else(|| {
            format!(
                "not exactly one member answers /active ({:?})",
                snap.actives
            )
        })?
        .to_string();
    let e0 = snap.epoch(&old).unwrap_or(0);
    let div0 = divergent(&snap);
    let target = match to {
        Some(t) => t.to_string(),
        None => snap
            .statuses
            .iter()
            .filter(|(m, s)| {
                m.as_str() != old && s.as_ref().is_some_and(|s| s["role"] == "passive")
            })
            // Equally up to date: the first by name, for repeatable drills.
            .max_by_key(|(m, s)| {
                let seq = s
                    .as_ref()
                    .and_then(|s| s["position"]["seq"].as_u64())
                    .unwrap_or(0);
                (seq, std::cmp::Reverse((*m).clone()))
            })
            .map(|(m, _)| m.clone())
            .ok_or_else(|| "no passive member to switch over to".to_string())?,
    };
    r.old_active = Some(old.clone());
    r.epoch_before = Some(e0);
    let t0 = Instant::now();
    r.fault_ms = Some(tl.ms(t0));
    tl.event_at(
        t0,
        "fault",
        Some(&old),
        format!("planned switchover from {old} to {target}"),
    );
    progress(tl, format!("{name}: {old} -> {target}"));
    let (ep, tk, tg) = (ask.clone(), token.to_string(), target.clone());
    let request = tokio::spawn(async move {
        crate::status::cli_control::switchover(&ep, &tk, &tg, Duration::from_secs(30))
            .await
            .map(|rep| rep.line)
            .map_err(|e| e.to_string())
    });
    let mut rx = monitor.rx.clone();
    let mut old_head = 0;
    let mut no_active_since: Option<Instant> = None;
    let mut longest = Duration::ZERO;
    let deadline = t0 + Duration::from_secs(40);
    loop {
        let snap: Arc<Snapshot> = rx.borrow_and_update().clone();
        if snap.at > t0 {
            let since = snap.at.saturating_duration_since(t0).as_millis() as u64;
            if let Some(s) = snap.status(&old) {
                old_head = old_head.max(s["position"]["seq"].as_u64().unwrap_or(0));
                if r.detection_ms.is_none()
                    && (s["role"] == "fenced" || !s["failover"]["switchover_to"].is_null())
                {
                    r.detection_ms = Some(since);
                    tl.event_at(
                        snap.at,
                        "detected",
                        Some(&old),
                        format!("{old} fenced for the handover"),
                    );
                }
            }
            match snap.target() {
                None => {
                    no_active_since.get_or_insert(snap.at);
                }
                Some(t) => {
                    if let Some(s) = no_active_since.take() {
                        longest = longest.max(snap.at.saturating_duration_since(s));
                    }
                    if t == target && r.promotion_ms.is_none() {
                        r.promotion_ms = Some(since);
                        r.new_active = Some(t.to_string());
                        tl.event_at(snap.at, "promoted", Some(t), format!("{t} answers /active"));
                    }
                }
            }
            if r.promotion_ms.is_some() {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
    r.unavailable_ms = longest.as_millis() as u64;
    match request.await {
        Ok(Ok(line)) => progress(tl, format!("{name}: {line}")),
        Ok(Err(e)) => return Err(format!("the switchover failed: {e}")),
        Err(e) => return Err(format!("the switchover failed: {e}")),
    }
    // Loss, judged from positions: the new epoch starts at or after the
    // old active's last head.
    let new = r.new_active.clone().unwrap_or(target);
    let addr = monitor
        .latest()
        .status(&old)
        .and_then(|s| s["peers"].as_array().cloned())
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["member"] == new.as_str())
                .and_then(|p| p["status"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| ask.addr.clone());
    let h = client::get_json(&addr, "/history")
        .await
        .map_err(|e| format!("{new}'s /history: {e}"))?;
    let start = h["history"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|l| l["start"]["seq"].as_u64())
        .unwrap_or(0);
    r.lost_changes = old_head.saturating_sub(start);
    let after = monitor.latest();
    r.epoch_after = after.epoch(&new);
    r.divergent_changes = divergent(&after).saturating_sub(div0);
    Ok(())
}

fn divergent(snap: &Snapshot) -> u64 {
    snap.statuses
        .values()
        .flatten()
        .filter_map(|s| s["divergent_changes"].as_u64())
        .sum()
}
