//! `understudy verify`: compare per-table checksums of every reachable data
//! member, taken at one common position, while writes go on.
//!
//! Owns: asking the members' status endpoints (`/status` to find the active,
//! `/checksums` for the sums), comparing, and the report (text table, JSON,
//! exit code).
//! Must never: print row contents (only counts and digests exist here), or
//! call a member verified when it could not be asked.
//!
//! The common position comes from the active: it takes its checksums in one
//! consistent read at its head P and marks P in its replication streams; each
//! passive pins a consistent read when it commits exactly P (see
//! `replication::marks`) and `GET /checksums?at_seq=P` returns that. A
//! passive that had passed P without a mark (it reconnected meanwhile)
//! answers 409, and the round is tried again.
//!
//! Exit codes: 0 all match; 1 a table differs (named with its members, and
//! this wins over 2, being a definite finding); 2 a member could not be
//! verified (unreachable, or it did not reach the position in time).

use crate::config::Config;
use crate::model::{MemberId, Position};
use crate::status::client::{self, HttpError};
use serde_json::{Value, json};
use std::time::Duration;

/// Rounds tried when a passive passed the position without a mark.
const ROUNDS: usize = 4;

/// One table of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSum {
    pub table: String,
    pub rows: u64,
    pub digest: String,
}

/// What one member answered.
#[derive(Clone, Debug)]
pub struct MemberReport {
    pub member: MemberId,
    pub status_addr: String,
    pub role: Option<String>,
    pub position: Option<Position>,
    pub tables: Vec<TableSum>,
    /// Why it could not be verified.
    pub error: Option<String>,
}

/// A table that differs from the active's on some members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub table: String,
    pub members: Vec<MemberId>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub active: Option<MemberId>,
    pub position: Option<Position>,
    pub members: Vec<MemberReport>,
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    pub fn unverified(&self) -> Vec<&MemberReport> {
        self.members.iter().filter(|m| m.error.is_some()).collect()
    }

    pub fn exit_code(&self) -> u8 {
        if !self.mismatches.is_empty() {
            1
        } else if !self.unverified().is_empty() || self.active.is_none() {
            2
        } else {
            0
        }
    }

    pub fn verdict(&self) -> &'static str {
        match self.exit_code() {
            0 => "match",
            1 => "mismatch",
            _ => "incomplete",
        }
    }
}

fn parse_tables(v: &Value) -> Option<(Position, Vec<TableSum>)> {
    let pos = Position::new(
        v["position"]["epoch"].as_u64()?,
        v["position"]["seq"].as_u64()?,
    );
    let tables = v["tables"]
        .as_array()?
        .iter()
        .map(|t| {
            Some(TableSum {
                table: t["table"].as_str()?.to_string(),
                rows: t["rows"].as_u64()?,
                digest: t["digest"].as_str()?.to_string(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((pos, tables))
}

fn http_reason(e: &HttpError) -> String {
    match e {
        HttpError::Connect { reason, .. } => format!("unreachable: {reason}"),
        HttpError::Timeout { secs, .. } => format!("no answer within {secs} s"),
        HttpError::Malformed { .. } => "malformed answer".into(),
        HttpError::Url { reason, .. } => format!("bad address: {reason}"),
        HttpError::Tls { reason, .. } => format!("TLS failed: {reason}"),
    }
}

enum Ask {
    Sums(Position, Vec<TableSum>),
    /// Passed the position without a mark: try another round.
    Passed(String),
    Failed(String),
}

async fn ask(addr: &str, path: &str, timeout: Duration) -> Ask {
    match client::request(addr, "GET", path, None, None, timeout).await {
        Err(e) => Ask::Failed(http_reason(&e)),
        Ok(r) => {
            let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            match r.code {
                200 => match parse_tables(&v) {
                    Some((p, t)) => Ask::Sums(p, t),
                    None => Ask::Failed("malformed checksum answer".into()),
                },
                409 => Ask::Passed(v["error"].as_str().unwrap_or("").to_string()),
                code => Ask::Failed(format!(
                    "HTTP {code}: {}",
                    v["error"].as_str().unwrap_or(r.body.trim())
                )),
            }
        }
    }
}

/// Ask every data member of `config`'s cluster and compare. `timeout`
/// bounds how long a passive may take to reach the active's position.
pub async fn run(config: &Config, timeout: Duration) -> Report {
    let mut members: Vec<MemberReport> = config
        .data_members()
        .into_iter()
        .map(|m| {
            let status_addr = if m == config.member {
                config.status.listen.to_string()
            } else {
                config
                    .peer(&m)
                    .map(|p| p.status.clone())
                    .unwrap_or_default()
            };
            MemberReport {
                member: m,
                status_addr,
                role: None,
                position: None,
                tables: Vec::new(),
                error: None,
            }
        })
        .collect();
    // Roles, from each member's own view.
    let statuses = futures_util::future::join_all(
        members
            .iter()
            .map(|m| client::get_json(&m.status_addr, "/status")),
    )
    .await;
    let mut active: Option<(usize, u64)> = None;
    for (i, st) in statuses.into_iter().enumerate() {
        match st {
            Ok(v) => {
                let role = v["role"].as_str().unwrap_or("unknown").to_string();
                let epoch = v["epoch"].as_u64().unwrap_or(0);
                if role == "active" && active.is_none_or(|(_, e)| epoch > e) {
                    active = Some((i, epoch));
                }
                members[i].role = Some(role);
            }
            Err(e) => members[i].error = Some(http_reason(&e)),
        }
    }
    let Some((ai, _)) = active else {
        for m in members.iter_mut().filter(|m| m.error.is_none()) {
            m.error = Some("no reachable member is active".into());
        }
        return Report {
            active: None,
            position: None,
            members,
            mismatches: Vec::new(),
        };
    };
    // Hashing a large table takes its time on every member: the HTTP wait
    // covers it; `timeout` bounds only how long a passive may take to reach
    // the active's position.
    let slow = timeout + crate::replication::marks::HASH_LIMIT;
    let mut position = None;
    for round in 0..ROUNDS {
        let (p, sums) = match ask(&members[ai].status_addr, "/checksums", slow).await {
            Ask::Sums(p, s) => (p, s),
            Ask::Passed(e) | Ask::Failed(e) => {
                members[ai].error = Some(e);
                break;
            }
        };
        members[ai].position = Some(p);
        members[ai].tables = sums;
        position = Some(p);
        let path = format!(
            "/checksums?at_seq={}&timeout_ms={}",
            p.seq,
            timeout.as_millis()
        );
        let asks: Vec<_> = members
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != ai && m.role.is_some())
            .map(|(i, m)| (i, m.status_addr.clone()))
            .collect();
        let answers =
            futures_util::future::join_all(asks.iter().map(|(_, addr)| ask(addr, &path, slow)))
                .await;
        let mut passed = false;
        for ((i, _), a) in asks.iter().zip(answers) {
            let m = &mut members[*i];
            m.error = None;
            match a {
                Ask::Sums(at, s) => {
                    m.position = Some(at);
                    m.tables = s;
                }
                Ask::Passed(e) => {
                    passed = true;
                    m.error = Some(e);
                }
                Ask::Failed(e) => m.error = Some(e),
            }
        }
        if !passed {
            break;
        }
        tracing::debug!(
            round,
            "a member passed the position without a mark; asking again"
        );
    }
    let mismatches = compare(&members, ai);
    Report {
        active: Some(members[ai].member.clone()),
        position,
        members,
        mismatches,
    }
}

fn compare(members: &[MemberReport], ai: usize) -> Vec<Mismatch> {
    let reference = &members[ai];
    if reference.error.is_some() {
        return Vec::new();
    }
    let mut out: Vec<Mismatch> = Vec::new();
    for t in &reference.tables {
        let differ: Vec<MemberId> = members
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != ai && m.error.is_none())
            .filter(|(_, m)| m.tables.iter().find(|x| x.table == t.table) != Some(t))
            .map(|(_, m)| m.member.clone())
            .collect();
        if !differ.is_empty() {
            out.push(Mismatch {
                table: t.table.clone(),
                members: differ,
            });
        }
    }
    out
}

/// The report as text: one line per member and table, then the findings.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    match (&r.active, r.position) {
        (Some(a), Some(p)) => s.push_str(&format!("checksums at position {p} (active {a})\n")),
        (Some(a), None) => s.push_str(&format!("active {a} gave no checksums\n")),
        _ => s.push_str("no reachable active member\n"),
    }
    s.push_str(&format!(
        "{:<12} {:<9} {:<9} {:>10}  {:<32}  {}\n",
        "member", "role", "table", "rows", "digest", "match"
    ));
    let reference = r
        .active
        .as_ref()
        .and_then(|a| r.members.iter().find(|m| &m.member == a));
    for m in &r.members {
        let role = m.role.as_deref().unwrap_or("-");
        if let Some(e) = &m.error {
            s.push_str(&format!("{:<12} {:<9} {e}\n", m.member.as_str(), role));
            continue;
        }
        for t in &m.tables {
            let matches = match reference {
                Some(a) if a.member == m.member => "-",
                Some(a) if a.tables.iter().any(|x| x == t) => "yes",
                _ => "NO",
            };
            s.push_str(&format!(
                "{:<12} {:<9} {:<9} {:>10}  {:<32}  {matches}\n",
                m.member.as_str(),
                role,
                t.table,
                t.rows,
                t.digest
            ));
        }
    }
    for mm in &r.mismatches {
        let who: Vec<&str> = mm.members.iter().map(MemberId::as_str).collect();
        s.push_str(&format!(
            "MISMATCH: table {} differs on {} from the active {}\n",
            mm.table,
            who.join(", "),
            r.active.as_ref().map(MemberId::as_str).unwrap_or("?")
        ));
    }
    for m in r.unverified() {
        s.push_str(&format!(
            "UNVERIFIED: member {} ({}): {}\n",
            m.member,
            m.status_addr,
            m.error.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!("verdict: {}\n", r.verdict()));
    s
}

pub fn to_json(r: &Report) -> Value {
    json!({
        "verdict": r.verdict(),
        "active": r.active.as_ref().map(MemberId::as_str),
        "position": r.position,
        "members": r.members.iter().map(|m| json!({
            "member": m.member.as_str(),
            "status": m.status_addr,
            "role": m.role,
            "position": m.position,
            "error": m.error,
            "tables": m.tables.iter().map(|t| json!({
                "table": t.table, "rows": t.rows, "digest": t.digest,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "mismatches": r.mismatches.iter().map(|mm| json!({
            "table": mm.table,
            "members": mm.members.iter().map(MemberId::as_str).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "unverified": r.unverified().iter().map(|m| m.member.as_str()).collect::<Vec<_>>(),
    })
}
