//! `understudy status`: the cluster table, built from any one member's
//! status endpoint (its `/status`, then every peer's `/status` at the
//! addresses that document lists).
//!
//! Owns: gathering the documents (concurrently, each under a time limit),
//! the table and the JSON document.
//! Must never: fail because a peer is down (that is what the table is for);
//! only the member asked must answer.

use super::client::{Endpoint, HttpError, get_json_from};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct MemberRow {
    pub member: String,
    /// Its own answer, or `"unreachable"`.
    pub role: String,
    pub epoch: Option<u64>,
    pub position: Option<Value>,
    pub lag_changes: Option<u64>,
    pub lag_ms: Option<u64>,
    pub last_heartbeat_ms: Option<u64>,
    /// A passive or witness: connected to the active. The active: every
    /// passive is connected. `None` when unknown.
    pub connected: Option<bool>,
    pub status_url: Option<String>,
    pub reachable: bool,
    pub error: Option<String>,
    /// The schema version and the captured tables' fingerprint
    /// (`schema.version`, `schema.fingerprint`), as `v1/0f1e...`.
    pub schema: Option<String>,
    /// `blocked` with its reason, when applying is blocked.
    pub apply_blocked: Option<String>,
}

/// The whole view.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub cluster: String,
    /// The member whose endpoint was asked first.
    pub asked: String,
    /// The active as the members that answered see it (all of them agree
    /// unless a role change is under way).
    pub active: Option<String>,
    pub members: Vec<MemberRow>,
}

fn row_from(doc: &Value, url: String) -> MemberRow {
    let s = |k: &str| doc[k].as_str().map(str::to_string);
    let u = |v: &Value| v.as_u64();
    let role = s("role").unwrap_or_else(|| "unknown".into());
    let active = s("active");
    let peers = doc["peers"].as_array().cloned().unwrap_or_default();
    let connected = if role == "active" {
        let data: Vec<&Value> = peers
            .iter()
            .filter(|p| !p["witness"].as_bool().unwrap_or(false))
            .collect();
        Some(data.iter().all(|p| p["connected"].as_bool() == Some(true)))
    } else {
        active.as_ref().and_then(|a| {
            peers
                .iter()
                .find(|p| p["member"].as_str() == Some(a.as_str()))
                .and_then(|p| p["connected"].as_bool())
        })
    };
    MemberRow {
        member: s("member").unwrap_or_default(),
        role,
        epoch: u(&doc["epoch"]),
        position: Some(doc["position"].clone()).filter(|v| !v.is_null()),
        lag_changes: u(&doc["lag"]["changes"]),
        lag_ms: u(&doc["lag"]["ms"]),
        last_heartbeat_ms: u(&doc["last_heartbeat_ms"]),
        connected,
        status_url: Some(url),
        reachable: true,
        error: None,
        schema: s_at(doc, "schema", "fingerprint")
            .filter(|f| !f.is_empty())
            .map(|f| format!("v{}/{f}", doc["schema"]["version"].as_u64().unwrap_or(0))),
        apply_blocked: (doc["apply"]["state"].as_str() == Some("blocked"))
            .then(|| s_at(doc, "apply", "reason").unwrap_or_default()),
    }
}

fn s_at(doc: &Value, a: &str, b: &str) -> Option<String> {
    doc[a][b].as_str().map(str::to_string)
}

/// Fetch the member at `ep`, then its peers. Fails only when `ep` itself
/// does not answer with a status document.
pub async fn gather(ep: &Endpoint, timeout: Duration) -> Result<ClusterView, HttpError> {
    let first = get_json_from(ep, "/status", timeout).await?;
    if first["member"].as_str().is_none() || first["role"].as_str().is_none() {
        return Err(HttpError::Malformed {
            addr: ep.addr.clone(),
        });
    }
    let peers = first["peers"].as_array().cloned().unwrap_or_default();
    let fetches = peers.iter().map(|p| {
        let member = p["member"].as_str().unwrap_or_default().to_string();
        let addr = p["status"].as_str().map(str::to_string);
        async move {
            match addr {
                None => (
                    member,
                    None,
                    Err("no status address in the member's /status".to_string()),
                ),
                Some(a) => {
                    let pep = ep.with_addr(&a);
                    let r = get_json_from(&pep, "/status", timeout)
                        .await
                        .map_err(|e| e.to_string());
                    (member, Some(pep.url()), r)
                }
            }
        }
    });
    let answers = futures_util::future::join_all(fetches).await;
    let mut members = vec![row_from(&first, ep.url())];
    for (member, url, r) in answers {
        members.push(match r {
            Ok(doc) => row_from(&doc, url.unwrap_or_default()),
            Err(e) => MemberRow {
                member,
                role: "unreachable".into(),
                epoch: None,
                position: None,
                lag_changes: None,
                lag_ms: None,
                last_heartbeat_ms: None,
                connected: None,
                status_url: url,
                reachable: false,
                error: Some(e),
                schema: None,
                apply_blocked: None,
            },
        });
    }
    members.sort_by(|a, b| a.member.cmp(&b.member));
    // The highest epoch's view of the active wins: a member that has not
    // heard of a newer epoch yet names the old one.
    let active = members
        .iter()
        .filter(|m| m.role == "active")
        .max_by_key(|m| m.epoch)
        .map(|m| m.member.clone())
        .or_else(|| first["active"].as_str().map(str::to_string));
    Ok(ClusterView {
        cluster: first["cluster"].as_str().unwrap_or_default().to_string(),
        asked: first["member"].as_str().unwrap_or_default().to_string(),
        active,
        members,
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for ms since the Unix epoch (UTC; no time-zone
/// database needed).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into())
}

/// The table, like `patronictl list`.
pub fn table(v: &ClusterView) -> String {
    let header = [
        "MEMBER",
        "ROLE",
        "EPOCH",
        "POSITION",
        "LAG",
        "LAG MS",
        "LAST HEARTBEAT",
        "CONNECTED",
        "SCHEMA",
        "APPLY",
    ];
    let rows: Vec<[String; 10]> = v
        .members
        .iter()
        .map(|m| {
            let position = m
                .position
                .as_ref()
                .and_then(|p| Some(format!("{}/{}", p["epoch"].as_u64()?, p["seq"].as_u64()?)))
                .unwrap_or_else(|| "-".into());
            let asked = if m.member == v.asked { "*" } else { "" };
            [
                format!("{}{asked}", m.member),
                m.role.clone(),
                opt(m.epoch),
                position,
                opt(m.lag_changes),
                ms(m.lag_ms),
                if m.role == "active" {
                    "-".into()
                } else {
                    ms(m.last_heartbeat_ms)
                },
                match m.connected {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                m.schema.clone().unwrap_or_else(|| "-".into()),
                match (&m.apply_blocked, m.reachable) {
                    (Some(_), _) => "blocked".into(),
                    (None, true) if m.role != "witness" => "ok".into(),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}, active {} (* = asked)",
        v.cluster,
        v.active.as_deref().unwrap_or("none")
    );
    let line = |out: &mut String, cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(
        &mut out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in &rows {
        line(&mut out, r);
    }
    for m in &v.members {
        if let Some(why) = &m.apply_blocked {
            let _ = writeln!(out, "{}: apply blocked: {why}", m.member);
        }
    }
    for m in v.members.iter().filter(|m| !m.reachable) {
        let _ = writeln!(
            out,
            "{}: {}",
            m.member,
            m.error.as_deref().unwrap_or("unreachable")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view() -> ClusterView {
        let a = json!({
            "cluster": "prod", "member": "a", "role": "active", "epoch": 2,
            "active": "a", "position": {"epoch": 2, "seq": 40},
            "lag": {"changes": 0, "ms": 0}, "last_heartbeat_ms": null,
            "peers": [
                {"member": "b", "connected": true, "witness": false, "status": "h:2"},
                {"member": "w", "connected": false, "witness": true, "status": "h:3"}
            ]
        });
        let b = json!({
            "cluster": "prod", "member": "b", "role": "passive", "epoch": 2,
            "active": "a", "position": {"epoch": 2, "seq": 38},
            "lag": {"changes": 2, "ms": 12}, "last_heartbeat_ms": 150,
            "schema": {"version": 2, "fingerprint": "0f1e2d3c4b5a6978"},
            "apply": {"state": "blocked", "reason": "column jobs.x is missing here"},
            "peers": [{"member": "a", "connected": true, "witness": false}]
        });
        let mut members = vec![
            row_from(&a, "http://h:1".into()),
            row_from(&b, "http://h:2".into()),
        ];
        members.push(MemberRow {
            member: "w".into(),
            role: "unreachable".into(),
            epoch: None,
            position: None,
            lag_changes: None,
            lag_ms: None,
            last_heartbeat_ms: None,
            connected: None,
            status_url: Some("http://h:3".into()),
            reachable: false,
            error: Some("cannot connect to h:3: refused".into()),
            schema: None,
            apply_blocked: None,
        });
        ClusterView {
            cluster: "prod".into(),
            asked: "a".into(),
            active: Some("a".into()),
            members,
        }
    }

    #[test]
    fn the_table_shows_every_member() {
        let t = table(&view());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "cluster prod, active a (* = asked)");
        assert!(lines[1].starts_with("MEMBER"), "{t}");
        assert!(lines[2].starts_with("a* "), "{t}");
        assert!(
            lines[2].contains("active") && lines[2].contains("2/40"),
            "{t}"
        );
        assert!(
            lines[3].contains("passive") && lines[3].contains("12 ms"),
            "{t}"
        );
        assert!(
            lines[3].contains("150 ms") && lines[3].contains(" yes "),
            "{t}"
        );
        assert!(
            lines[3].contains("v2/0f1e2d3c4b5a6978") && lines[3].ends_with("blocked"),
            "{t}"
        );
        assert!(lines[4].contains("unreachable"), "{t}");
        assert_eq!(lines[5], "b: apply blocked: column jobs.x is missing here");
        assert_eq!(lines[6], "w: cannot connect to h:3: refused");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_active_row_is_connected_when_every_passive_is() {
        let v = view();
        assert_eq!(v.members[0].connected, Some(true));
        assert_eq!(v.members[1].connected, Some(true));
    }
}
