//! `understudy switchover | promote | pause | resume`: operator actions sent
//! to a member's status endpoint (`POST /switchover`, `/promote`, `/pause`,
//! `/resume`, with the bearer token), and the wait for their effect.
//!
//! Owns: finding the member to ask (a switchover goes to the active, found
//! from any member's `/status`), the request, waiting until the cluster
//! shows the result, and one clear line about what happened.
//! Must never: print the token, or report success before the cluster shows
//! it (a handed-over switchover is done once the target answers as active).

use super::client::{Endpoint, HttpError, get_json_from, request_to};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Why an operator action did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ControlCliError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url} refused ({code}): {reason}")]
    Refused {
        url: String,
        code: u16,
        reason: String,
    },
    #[error("{0}")]
    Cluster(String),
}

/// What happened, for the terminal and for `--json`.
#[derive(Debug, Clone)]
pub struct ControlReport {
    pub line: String,
    pub json: Value,
}

fn reason_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().chars().take(300).collect())
}

async fn post(
    ep: &Endpoint,
    path: &str,
    token: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Value, ControlCliError> {
    let r = request_to(ep, "POST", path, Some(token), body, timeout).await?;
    if r.code != 200 && r.code != 202 {
        return Err(ControlCliError::Refused {
            url: format!("{}{path}", ep.url()),
            code: r.code,
            reason: reason_of(&r.body),
        });
    }
    Ok(serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// The status endpoint of `member`, as the member at `ep` lists it.
pub async fn endpoint_of(
    ep: &Endpoint,
    member: &str,
    timeout: Duration,
) -> Result<Endpoint, ControlCliError> {
    let st = get_json_from(ep, "/status", timeout).await?;
    if st["member"] == member {
        return Ok(ep.clone());
    }
    st["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["member"] == member)
        .and_then(|p| p["status"].as_str())
        .map(|a| ep.with_addr(a))
        .ok_or_else(|| {
            ControlCliError::Cluster(format!(
                "{} does not know a member {member:?} with a status address",
                ep.url()
            ))
        })
}

/// Poll `ep` until its `/status` satisfies `done`, up to `within`.
async fn wait_for(
    ep: &Endpoint,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Duration> {
    let start = Instant::now();
    loop {
        if let Ok(st) = get_json_from(ep, "/status", Duration::from_secs(2)).await
            && done(&st)
        {
            return Ok(st);
        }
        if start.elapsed() > within {
            return Err(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Planned switchover to `to`: ask the active (found from `ep`), then wait
/// until `to` answers as the active.
pub async fn switchover(
    ep: &Endpoint,
    token: &str,
    to: &str,
    within: Duration,
) -> Result<ControlReport, ControlCliError> {
    let t = Duration::from_secs(3);
    let st = get_json_from(ep, "/status", t).await?;
    let Some(active) = st["active"].as_str().map(str::to_string) else {
        return Err(ControlCliError::Cluster(format!(
            "{} knows no active member; a switchover needs one (use `understudy promote --force` if it is gone)",
            ep.url()
        )));
    };
    if active == to {
        return Err(ControlCliError::Cluster(format!(
            "{to} is already the active"
        )));
    }
    let active_ep = endpoint_of(ep, &active, t).await?;
    let target_ep = endpoint_of(ep, to, t).await?;
    let started = Instant::now();
    let body = json!({ "to": to }).to_string();
    let answer = post(&active_ep, "/switchover", token, Some(&body), within).await?;
    let to_owned = to.to_string();
    match wait_for(&target_ep, within, |s| {
        s["role"] == "active" && s["member"] == to_owned.as_str()
    })
    .await
    {
        Ok(s) => {
            let ms = started.elapsed().as_millis() as u64;
            Ok(ControlReport {
                line: format!(
                    "switched over from {active} to {to}: {to} is the active at epoch {} ({ms} ms)",
                    s["epoch"]
                ),
                json: json!({
                    "from": active, "to": to, "epoch": s["epoch"], "elapsed_ms": ms,
                    "result": answer["result"],
                }),
            })
        }
        Err(waited) => Err(ControlCliError::Cluster(format!(
            "{active} handed over, but {to} did not answer as the active within {} s; check `understudy status`",
            waited.as_secs()
        ))),
    }
}

/// `promote --force` on the member at `ep`.
pub async fn promote_force(
    ep: &Endpoint,
    token: &str,
    within: Duration,
) -> Result<ControlReport, ControlCliError> {
    let started = Instant::now();
    let answer = post(ep, "/promote", token, Some(r#"{"force": true}"#), within).await?;
    let s = wait_for(ep, within, |s| s["role"] == "active")
        .await
        .map_err(|w| {
            ControlCliError::Cluster(format!(
                "the promotion was accepted but {} is not active after {} s",
                ep.url(),
                w.as_secs()
            ))
        })?;
    Ok(ControlReport {
        line: format!(
            "{} promoted by force: active at epoch {} ({} ms); anything the old active had that this member lacks is at risk",
            s["member"].as_str().unwrap_or("?"),
            s["epoch"],
            started.elapsed().as_millis()
        ),
        json: json!({ "member": s["member"], "epoch": s["epoch"], "result": answer["result"] }),
    })
}

/// Pause or resume automatic failover (the member tells every other one),
/// then report which members show it.
pub async fn set_paused(
    ep: &Endpoint,
    token: &str,
    paused: bool,
    within: Duration,
) -> Result<ControlReport, ControlCliError> {
    let path = if paused { "/pause" } else { "/resume" };
    post(ep, path, token, None, Duration::from_secs(10)).await?;
    let st = get_json_from(ep, "/status", Duration::from_secs(3)).await?;
    let mut members = vec![(st["member"].as_str().unwrap_or("?").to_string(), ep.clone())];
    for p in st["peers"].as_array().into_iter().flatten() {
        if let (Some(m), Some(a)) = (p["member"].as_str(), p["status"].as_str()) {
            members.push((m.to_string(), ep.with_addr(a)));
        }
    }
    let mut shown = Vec::new();
    let mut missing = Vec::new();
    for (m, e) in &members {
        // An unreachable member is reported at once (it learns the flag
        // from the active's heartbeats when it is back); a reachable one
        // gets `within` to show it.
        if get_json_from(e, "/status", Duration::from_secs(2))
            .await
            .is_err()
        {
            missing.push(m.clone());
            continue;
        }
        match wait_for(e, within, |s| s["paused"] == paused).await {
            Ok(_) => shown.push(m.clone()),
            Err(_) => missing.push(m.clone()),
        }
    }
    let what = if paused { "paused" } else { "resumed" };
    let mut line = format!("automatic failover {what} on {}", shown.join(", "));
    if !missing.is_empty() {
        line.push_str(&format!(
            "; not (yet) shown by {} (unreachable members learn it from the active's heartbeats)",
            missing.join(", ")
        ));
    }
    Ok(ControlReport {
        line,
        json: json!({ "paused": paused, "shown_by": shown, "not_shown_by": missing }),
    })
}

/// How a schema change ended: the report, and whether every data member
/// confirmed it (exit 0) or some did not in time (exit 3, named).
#[derive(Debug, Clone)]
pub struct MigrateReport {
    pub report: ControlReport,
    pub all_confirmed: bool,
}

/// `understudy migrate`: send the DDL to the active (found from `ep`), then
/// wait until every data member's `/status` shows the new schema version.
pub async fn migrate(
    ep: &Endpoint,
    token: &str,
    sqlite: &str,
    postgres: &str,
    within: Duration,
) -> Result<MigrateReport, ControlCliError> {
    let t = Duration::from_secs(3);
    let st = get_json_from(ep, "/status", t).await?;
    let Some(active) = st["active"].as_str().map(str::to_string) else {
        return Err(ControlCliError::Cluster(format!(
            "{} knows no active member; a schema change runs on the active",
            ep.url()
        )));
    };
    let active_ep = endpoint_of(ep, &active, t).await?;
    let started = Instant::now();
    let body = json!({ "sqlite": sqlite, "postgres": postgres }).to_string();
    eprintln!("migrate: running the schema change on the active {active}");
    let answer = post(&active_ep, "/migrate", token, Some(&body), within).await?;
    let version = answer["version"].as_u64().unwrap_or(0);
    eprintln!(
        "migrate: {active} is at schema version {version} (change {}/{}); waiting for the other members",
        answer["epoch"], answer["seq"]
    );
    let mut members = vec![(active.clone(), active_ep.clone())];
    let ast = get_json_from(&active_ep, "/status", t).await?;
    for p in ast["peers"].as_array().into_iter().flatten() {
        if p["witness"] == true {
            continue;
        }
        if let (Some(m), Some(addr)) = (p["member"].as_str(), p["status"].as_str()) {
            members.push((m.to_string(), active_ep.with_addr(addr)));
        }
    }
    let mut confirmed = Vec::new();
    let mut missing = Vec::new();
    for (m, mep) in &members {
        let left = within.saturating_sub(started.elapsed());
        match wait_for(mep, left, |s| {
            s["schema"]["version"].as_u64() >= Some(version)
        })
        .await
        {
            Ok(_) => {
                eprintln!("migrate: {m} has schema version {version}");
                confirmed.push(m.clone());
            }
            Err(_) => {
                eprintln!("migrate: {m} has not confirmed schema version {version}");
                missing.push(m.clone());
            }
        }
    }
    let ms = started.elapsed().as_millis() as u64;
    let line = if missing.is_empty() {
        format!(
            "schema version {version} is on every data member ({}) in {ms} ms",
            confirmed.join(", ")
        )
    } else {
        format!(
            "schema version {version} ran on the active {active}; not confirmed within {} s by: {} (they apply it when they catch up)",
            within.as_secs(),
            missing.join(", ")
        )
    };
    Ok(MigrateReport {
        all_confirmed: missing.is_empty(),
        report: ControlReport {
            line,
            json: json!({
                "version": version,
                "fingerprint": answer["fingerprint"],
                "active": active,
                "epoch": answer["epoch"],
                "seq": answer["seq"],
                "confirmed": confirmed,
                "not_confirmed": missing,
                "elapsed_ms": ms,
            }),
        },
    })
}
