//! `understudy bench --mode failover`: kill -9 the active of a local
//! 3-member SQLite cluster `--kills` times (default 20) with the product's
//! default timings (heartbeat 500 ms, lease 2500 ms, failover 3000 ms) while
//! a writer runs, and report per kill: detection (kill → a survivor stands
//! for election), promotion (kill → a survivor answers `GET /active` 200)
//! and writes back (kill → the writer's first committed write on the new
//! active), with median, p99 and max.
//!
//! Owns: the failover benchmark driver.
//! Must never: run in the test suite (it takes minutes), or touch anything
//! outside its temporary folder.

use crate::config::DatabaseUrl;
use crate::localcluster::{ClusterOptions, LocalCluster, MemberSpec};
use crate::status::client;
use crate::workload::{AppConn, AppOp};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::time::{Duration, Instant};

const MEMBERS: [&str; 3] = ["a", "b", "c"];

/// The member answering `/active` with 200, if exactly one does.
async fn the_active(cl: &LocalCluster, skip: &str) -> Option<String> {
    for m in MEMBERS.iter().filter(|m| **m != skip) {
        let st = &cl.member(m).status;
        if let Ok(r) =
            client::request(st, "GET", "/active", None, None, Duration::from_millis(300)).await
            && r.code == 200
        {
            return Some(m.to_string());
        }
    }
    None
}

async fn standing(cl: &LocalCluster, skip: &str) -> bool {
    for m in MEMBERS.iter().filter(|m| **m != skip) {
        if let Ok(s) = cl.status(m).await
            && (s["role"] == "candidate" || s["role"] == "active")
        {
            return true;
        }
    }
    false
}

async fn write_one(cl: &LocalCluster, member: &str, n: u64) -> bool {
    let Some(url) = cl.member(member).database.clone() else {
        return false;
    };
    let Ok(mut app) = AppConn::connect(&url).await else {
        return false;
    };
    app.execute(&[AppOp::UpsertProject {
        name: format!("failover-bench-{n}"),
        description: "failover benchmark writer".into(),
        config: "{}".into(),
    }])
    .await
    .is_ok()
}

fn stats(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((s.len() as f64 - 1.0) * q).round() as usize;
        s.get(i).copied().unwrap_or(0.0)
    };
    json!({
        "median_ms": pick(0.5).round(),
        "p99_ms": pick(0.99).round(),
        "max_ms": s.last().copied().unwrap_or(0.0).round(),
    })
}

pub async fn run(kills: u32) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir().context("temporary folder")?;
    let bin = std::env::current_exe().context("locating the understudy binary")?;
    let specs: Vec<MemberSpec> = MEMBERS
        .iter()
        .map(|m| MemberSpec {
            id: m.to_string(),
            database: Some(DatabaseUrl::Sqlite(dir.path().join(format!("{m}.db")))),
        })
        .collect();
    let opts = ClusterOptions {
        heartbeat_ms: 500,
        lease_ms: 2500,
        failover_ms: 3000,
        ..ClusterOptions::default()
    };
    let failover_ms = opts.failover_ms;
    let mut cl = LocalCluster::create(dir.path(), &bin, &specs, opts)?;
    cl.init_all()?;
    cl.start_all()?;
    cl.wait_active("a", Duration::from_secs(30)).await?;
    let mut n = 0u64;
    let (mut detection, mut promotion, mut writes_back) = (Vec::new(), Vec::new(), Vec::new());
    let mut active = "a".to_string();
    for k in 1..=kills {
        // Steady state: the writer commits on the active.
        for _ in 0..20 {
            if write_one(&cl, &active, n).await {
                n += 1;
            }
        }
        cl.wait_converged(&active, 1, Duration::from_secs(60))
            .await?;
        let killed = active.clone();
        let t0 = Instant::now();
        cl.kill(&killed);
        let (mut det, mut promo, mut back) = (None, None, None);
        while back.is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "kill {k}: no member took writes within 60 s; see {}",
                    dir.path().display()
                );
            }
            if det.is_none() && standing(&cl, &killed).await {
                det = Some(t0.elapsed());
            }
            if let Some(m) = the_active(&cl, &killed).await {
                promo.get_or_insert(t0.elapsed());
                det.get_or_insert(t0.elapsed());
                if write_one(&cl, &m, n).await {
                    n += 1;
                    back = Some(t0.elapsed());
                    active = m;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        eprintln!(
            "kill {k}/{kills}: {killed} killed; detection {:.0} ms, promotion of {active} {:.0} ms, writes back {:.0} ms",
            ms(det),
            ms(promo),
            ms(back)
        );
        detection.push(ms(det));
        promotion.push(ms(promo));
        writes_back.push(ms(back));
        cl.start(&killed)?;
        cl.wait_converged(&active, 1, Duration::from_secs(60))
            .await?;
    }
    Ok(json!({
        "mode": "failover",
        "kills": kills,
        "members": 3,
        "backend": "sqlite",
        "timings": { "heartbeat_interval_ms": 500, "lease_timeout_ms": 2500, "failover_timeout_ms": failover_ms },
        "detection": stats(&detection),
        "promotion": stats(&promotion),
        "writes_back": stats(&writes_back),
        "writes_committed": n,
    }))
}
