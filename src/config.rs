//! The member config file: TOML, `UNDERSTUDY_*` environment overrides, and the
//! one validation pass that turns it into a typed [`Config`].
//!
//! Owns: file parsing, overrides, defaults, every cross-key check.
//! Must never: be read again after start-up by other modules in raw form (they
//! get the typed struct), or print the status token.

use crate::model::MemberId;
use crate::tables::{CaptureSpec, TableName};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config problem: which file, which key, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// Where a member keeps its database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string, passed to tokio-postgres as is.
    Postgres(String),
}

impl DatabaseUrl {
    /// Parse a `sqlite://` or `postgres://` URL; relative SQLite paths are
    /// taken relative to `base`.
    pub fn parse(url: &str, base: &Path) -> Result<DatabaseUrl, String> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err("sqlite:// URL has no file path".into());
            }
            let p = Path::new(rest);
            Ok(DatabaseUrl::Sqlite(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(url.to_string()))
        } else {
            Err(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DB",
                redact_url(url)
            ))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            DatabaseUrl::Postgres(u) => f.write_str(&redact_url(u)),
        }
    }
}

/// Hide a password in a connection URL (`postgres://u:secret@h` → `postgres://u:***@h`).
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _pw)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

/// A configured peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub member: MemberId,
    /// Its replication address.
    pub address: String,
    /// Its status address.
    pub status: String,
    pub witness: bool,
    /// `[[peers]] owner_id`: the value of the takeover owner column that
    /// means this peer (default: its member id).
    pub owner_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    pub listen: SocketAddr,
    pub heartbeat_interval: Duration,
    pub lease_timeout: Duration,
    pub failover_timeout: Duration,
    /// A passive further behind than this (in changes) is not eligible for
    /// automatic promotion.
    pub max_failover_lag_changes: u64,
    /// Upper bounds of one shipped batch.
    pub batch_max_changes: usize,
    pub batch_max_bytes: usize,
    /// How long the shipper may wait to fill a batch.
    pub batch_max_delay: Duration,
    /// Retention floor of the change log: always keep at least this many
    /// changes, and every change younger than `retain_min_age`.
    pub retain_min_changes: u64,
    pub retain_min_age: Duration,
    /// Retention cap: a passive further behind the head than this many
    /// changes (or never seen since the agent started) no longer holds the
    /// active's log back; it gets a snapshot when it returns. 0: no cap.
    pub retain_max_changes: u64,
    /// How often the log is trimmed.
    pub retain_interval: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct StatusConfig {
    pub listen: SocketAddr,
    /// Bearer token for the POST endpoints. Never printed.
    pub token: String,
    /// Serve HTTPS with the member's own certificate and key (`[tls]`).
    pub tls: bool,
}

impl fmt::Debug for StatusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusConfig")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hooks {
    pub on_promote: Option<String>,
    pub on_demote: Option<String>,
    pub on_fence: Option<String>,
    pub timeout: Duration,
    /// `hooks.on_promote_blocks`: false (default), a failing or hanging
    /// `on_promote` is reported but the promotion stands; true, a new active
    /// lifts its fence only after `on_promote` succeeded, and steps down
    /// (standing again only after ten failover timeouts) when it fails.
    pub on_promote_blocks: bool,
}

/// `[takeover] policy` (+ `members` for `static`); the old top-level
/// `takeover_policy` / `takeover_members` still map here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeoverPolicy {
    /// Take over the jobs of whichever member was active before.
    Any,
    /// Only the jobs of these members.
    Static(Vec<MemberId>),
}

/// `[takeover]`: on promotion, the rows of `table` whose `owner_column`
/// holds the former active's owner id are given this member's `owner_id`
/// (Rundeck's `scheduled_execution.server_nodeuuid`; the example schema's
/// `jobs.owner_member`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    /// One of the captured tables.
    pub table: TableName,
    pub owner_column: String,
    /// The owner column's value meaning "this member" (default: member id).
    pub owner_id: String,
    pub policy: TakeoverPolicy,
}

/// The validated config of one member.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub file: PathBuf,
    pub cluster: String,
    pub member: MemberId,
    pub initial_active: MemberId,
    pub auto_failover: bool,
    pub witness: bool,
    /// Never promote this member automatically.
    pub no_failover: bool,
    /// Tie-breaker between equally up-to-date candidates (higher first).
    pub priority: i64,
    /// What is replicated: `[capture]`, or the example schema when the
    /// config has no `[capture]` section.
    pub capture: CaptureSpec,
    /// Whose scheduled jobs this member takes over when it is promoted
    /// (Rundeck's `autotakeover.policy`), and where their owner is kept.
    /// `None` when the config has `[capture]` but no `[takeover]`: the
    /// application's tables then have no owner column understudy knows of,
    /// and a promotion moves no rows. Without `[capture]` it is always set
    /// (the example schema's `jobs.owner_member`).
    pub takeover: Option<Takeover>,
    /// `None` only on a witness.
    pub database: Option<DatabaseUrl>,
    /// Where a witness keeps its vote, epoch and pause flag (it has no
    /// database). Default: `<member>.witness-state` beside the config file.
    pub witness_state: PathBuf,
    pub replication: Replication,
    pub status: StatusConfig,
    pub tls: TlsPaths,
    pub peers: Vec<Peer>,
    pub hooks: Hooks,
}

impl Config {
    /// Every voter of the cluster (members and witnesses), this one included.
    pub fn voters(&self) -> Vec<MemberId> {
        let mut v: Vec<MemberId> = self.peers.iter().map(|p| p.member.clone()).collect();
        v.push(self.member.clone());
        v.sort();
        v
    }

    /// Members that hold a database (not witnesses), this one included unless
    /// it is a witness.
    pub fn data_members(&self) -> Vec<MemberId> {
        let mut v: Vec<MemberId> = self
            .peers
            .iter()
            .filter(|p| !p.witness)
            .map(|p| p.member.clone())
            .collect();
        if !self.witness {
            v.push(self.member.clone());
        }
        v.sort();
        v
    }

    /// Whether a promotion here takes over the jobs owned by `former`
    /// (never when there is no takeover at all).
    pub fn takeover_allows(&self, former: &MemberId) -> bool {
        match self.takeover.as_ref().map(|t| &t.policy) {
            None => false,
            Some(TakeoverPolicy::Any) => true,
            Some(TakeoverPolicy::Static(list)) => list.contains(former),
        }
    }

    /// The takeover owner value of `member` (this member's `[takeover]
    /// owner_id`, or a peer's `owner_id`; each defaults to the member id).
    /// `None` for a member this config does not know.
    pub fn owner_id_of(&self, member: &MemberId) -> Option<&str> {
        if member == &self.member {
            return Some(
                self.takeover
                    .as_ref()
                    .map_or(self.member.as_str(), |t| t.owner_id.as_str()),
            );
        }
        self.peer(member).map(|p| p.owner_id.as_str())
    }

    pub fn peer(&self, m: &MemberId) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.member == m)
    }

    /// Majority of all voters.
    pub fn quorum(&self) -> usize {
        self.voters().len() / 2 + 1
    }

    /// Load, override from the process environment, and validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "-".into(),
            reason: format!("cannot read the file: {e}"),
        })?;
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("UNDERSTUDY_"))
            .collect();
        Config::parse(&text, path, &env)
    }

    /// Parse `text` as if read from `path`, with `env` as the `UNDERSTUDY_*`
    /// overrides.
    pub fn parse(text: &str, path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |key: &str, reason: String| ConfigError {
            file: file.clone(),
            key: key.to_string(),
            reason,
        };
        let mut value: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("-", one_line(&e.to_string())))?;
        apply_env(&mut value, env).map_err(|(k, r)| err(&k, r))?;
        let raw: RawConfig = RawConfig::deserialize(toml::Value::Table(value))
            .map_err(|e| err(&error_key(&e), one_line(e.message())))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        validate(raw, path, &base).map_err(|(k, r)| err(&k, r))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn error_key(e: &toml::de::Error) -> String {
    // toml names unknown or missing fields in its message; the key path is
    // not exposed separately, so fall back to "-" and keep the message whole.
    let m = e.message();
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = m.split(marker).nth(1)
            && let Some(name) = rest.split('`').next()
        {
            return name.to_string();
        }
    }
    "-".into()
}

/// The keys an environment variable may override: `UNDERSTUDY_` + section +
/// `_` + key, upper-cased (`UNDERSTUDY_DATABASE_URL`, `UNDERSTUDY_MEMBER`).
/// Lists take a comma-separated value (`UNDERSTUDY_CAPTURE_TABLES=a,b`).
/// `[[peers]]` entries are not overridable (an array has no stable names).
/// The old top-level `takeover_policy` / `takeover_members` have the same
/// variable names as `[takeover] policy` / `members`: see [`legacy_target`].
const OVERRIDABLE: &[(&str, &str, Kind)] = &[
    ("", "cluster", Kind::Str),
    ("", "member", Kind::Str),
    ("", "initial_active", Kind::Str),
    ("", "auto_failover", Kind::Bool),
    ("", "witness", Kind::Bool),
    ("", "no_failover", Kind::Bool),
    ("", "priority", Kind::Int),
    ("", "witness_state", Kind::Str),
    ("database", "url", Kind::Str),
    ("replication", "listen", Kind::Str),
    ("replication", "heartbeat_interval_ms", Kind::Int),
    ("replication", "lease_timeout_ms", Kind::Int),
    ("replication", "failover_timeout_ms", Kind::Int),
    ("replication", "max_failover_lag_changes", Kind::Int),
    ("replication", "batch_max_changes", Kind::Int),
    ("replication", "batch_max_bytes", Kind::Int),
    ("replication", "batch_max_delay_ms", Kind::Int),
    ("replication", "retain_min_changes", Kind::Int),
    ("replication", "retain_min_age_ms", Kind::Int),
    ("replication", "retain_max_changes", Kind::Int),
    ("replication", "retain_interval_ms", Kind::Int),
    ("status", "listen", Kind::Str),
    ("status", "token", Kind::Str),
    ("status", "tls", Kind::Bool),
    ("tls", "ca", Kind::Str),
    ("tls", "cert", Kind::Str),
    ("tls", "key", Kind::Str),
    ("hooks", "on_promote", Kind::Str),
    ("hooks", "on_demote", Kind::Str),
    ("hooks", "on_fence", Kind::Str),
    ("hooks", "timeout_ms", Kind::Int),
    ("hooks", "on_promote_blocks", Kind::Bool),
    ("capture", "tables", Kind::List),
    ("capture", "secret_columns", Kind::List),
    ("takeover", "table", Kind::Str),
    ("takeover", "owner_column", Kind::Str),
    ("takeover", "owner_id", Kind::Str),
    ("takeover", "policy", Kind::Str),
    ("takeover", "members", Kind::List),
];

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    /// Comma-separated strings; blanks around items and empty items dropped.
    List,
}

/// Where `UNDERSTUDY_TAKEOVER_POLICY` / `_MEMBERS` go. They are also the
/// names the old top-level `takeover_policy` / `takeover_members` would
/// have, so they override the old key while the file still uses the old
/// form (and has no `[takeover]`), else the new one: an override never turns
/// a valid file into one that mixes both forms.
fn legacy_target(table: &toml::Table, section: &str, key: &str) -> (String, String) {
    let old = format!("takeover_{key}");
    let uses_old = table.contains_key("takeover_policy") || table.contains_key("takeover_members");
    if section == "takeover"
        && matches!(key, "policy" | "members")
        && uses_old
        && !table.contains_key("takeover")
    {
        return (String::new(), old);
    }
    (section.to_string(), key.to_string())
}

fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("UNDERSTUDY_{}", key.to_uppercase())
    } else {
        format!(
            "UNDERSTUDY_{}_{}",
            section.to_uppercase(),
            key.to_uppercase()
        )
    }
}

fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), (String, String)> {
    for (section, key, kind) in OVERRIDABLE {
        let name = env_name(section, key);
        let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        let (section, key) = legacy_target(table, section, key);
        let (section, key) = (section.as_str(), key.as_str());
        let dotted = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        let v = match kind {
            Kind::Str => toml::Value::String(raw.clone()),
            Kind::Bool => match raw.as_str() {
                "true" | "1" | "yes" => toml::Value::Boolean(true),
                "false" | "0" | "no" => toml::Value::Boolean(false),
                _ => {
                    return Err((
                        dotted,
                        format!("environment variable {name} must be true or false"),
                    ));
                }
            },
            Kind::Int => toml::Value::Integer(raw.parse().map_err(|_| {
                (
                    dotted.clone(),
                    format!("environment variable {name} must be a whole number"),
                )
            })?),
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
        };
        if section.is_empty() {
            table.insert(key.to_string(), v);
        } else {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(key.to_string(), v);
                }
                _ => return Err((section.to_string(), "must be a table".into())),
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: String,
    member: String,
    initial_active: String,
    #[serde(default = "yes")]
    auto_failover: bool,
    #[serde(default)]
    witness: bool,
    #[serde(default)]
    no_failover: bool,
    #[serde(default)]
    priority: i64,
    witness_state: Option<String>,
    /// Old form of `[takeover] policy`, still read.
    takeover_policy: Option<String>,
    /// Old form of `[takeover] members`, still read.
    takeover_members: Option<Vec<String>>,
    capture: Option<RawCapture>,
    takeover: Option<RawTakeover>,
    database: Option<RawDatabase>,
    replication: RawReplication,
    status: RawStatus,
    tls: RawTls,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    hooks: RawHooks,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    listen: String,
    #[serde(default = "d_heartbeat")]
    heartbeat_interval_ms: u64,
    #[serde(default = "d_lease")]
    lease_timeout_ms: u64,
    #[serde(default = "d_failover")]
    failover_timeout_ms: u64,
    #[serde(default = "d_max_lag")]
    max_failover_lag_changes: u64,
    #[serde(default = "d_batch_changes")]
    batch_max_changes: usize,
    #[serde(default = "d_batch_bytes")]
    batch_max_bytes: usize,
    #[serde(default = "d_batch_delay")]
    batch_max_delay_ms: u64,
    #[serde(default = "d_retain_changes")]
    retain_min_changes: u64,
    #[serde(default = "d_retain_age")]
    retain_min_age_ms: u64,
    #[serde(default = "d_retain_max")]
    retain_max_changes: u64,
    #[serde(default = "d_retain_interval")]
    retain_interval_ms: u64,
}

fn d_heartbeat() -> u64 {
    500
}
fn d_lease() -> u64 {
    2500
}
fn d_failover() -> u64 {
    3000
}
fn d_max_lag() -> u64 {
    10_000
}
fn d_batch_changes() -> usize {
    1000
}
fn d_batch_bytes() -> usize {
    1 << 20
}
fn d_batch_delay() -> u64 {
    0
}
fn d_retain_changes() -> u64 {
    10_000
}
fn d_retain_age() -> u64 {
    600_000
}
fn d_retain_max() -> u64 {
    1_000_000
}
fn d_retain_interval() -> u64 {
    5_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: String,
    token: String,
    #[serde(default)]
    tls: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    member: String,
    address: String,
    status: String,
    #[serde(default)]
    witness: bool,
    owner_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    // Defaults so an empty list and a missing one get the same, clearer
    // message from `capture_spec` than serde's "missing field".
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    secret_columns: Vec<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTakeover {
    table: Option<String>,
    owner_column: Option<String>,
    owner_id: Option<String>,
    policy: Option<String>,
    members: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    on_promote: Option<String>,
    on_demote: Option<String>,
    on_fence: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    on_promote_blocks: bool,
}

/// Member ids become certificate names and file names: keep them plain.
pub fn check_member_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || id.starts_with('-')
    {
        return Err(format!(
            "{id:?} may hold only letters, digits, '-' and '_' (it is a certificate name)"
        ));
    }
    Ok(())
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, (String, String)> {
    s.parse().map_err(|_| {
        (
            key.to_string(),
            format!("{s:?} is not an IP:port address (e.g. 127.0.0.1:7401)"),
        )
    })
}

fn validate(raw: RawConfig, _path: &Path, base: &Path) -> Result<Config, (String, String)> {
    let e = |k: &str, r: String| (k.to_string(), r);
    if raw.cluster.trim().is_empty() {
        return Err(e("cluster", "must not be empty".into()));
    }
    check_member_id(&raw.member).map_err(|r| e("member", r))?;
    let member = MemberId::new(raw.member.clone());

    let mut seen = BTreeSet::new();
    seen.insert(raw.member.clone());
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let k = format!("peers[{i}].member");
        check_member_id(&p.member).map_err(|r| e(&k, r))?;
        if !seen.insert(p.member.clone()) {
            return Err(e(
                &k,
                format!(
                    "member {:?} is listed twice (or is this member itself)",
                    p.member
                ),
            ));
        }
        if p.address.trim().is_empty() {
            return Err(e(
                &format!("peers[{i}].address"),
                "must not be empty".into(),
            ));
        }
        peers.push(Peer {
            member: MemberId::new(p.member.clone()),
            address: p.address.clone(),
            status: p.status.clone(),
            witness: p.witness,
            owner_id: p.owner_id.clone().unwrap_or_else(|| p.member.clone()),
        });
    }

    let initial_active = MemberId::new(raw.initial_active.clone());
    let initial_is_data_member = (initial_active == member && !raw.witness)
        || peers
            .iter()
            .any(|p| p.member == initial_active && !p.witness);
    if !initial_is_data_member {
        return Err(e(
            "initial_active",
            format!(
                "{:?} is not a member with a database in this config (this member or a non-witness peer)",
                raw.initial_active
            ),
        ));
    }

    let database = match (&raw.database, raw.witness) {
        (Some(_), true) => {
            return Err(e(
                "database",
                "a witness has no database: remove [database] or set witness = false".into(),
            ));
        }
        (None, false) => {
            return Err(e(
                "database.url",
                "missing: a member needs [database] url = \"sqlite://...\" or \"postgres://...\""
                    .into(),
            ));
        }
        (None, true) => None,
        (Some(d), false) => {
            Some(DatabaseUrl::parse(&d.url, base).map_err(|r| e("database.url", r))?)
        }
    };

    let r = &raw.replication;
    if r.heartbeat_interval_ms == 0 {
        return Err(e(
            "replication.heartbeat_interval_ms",
            "must be above 0".into(),
        ));
    }
    if r.lease_timeout_ms >= r.failover_timeout_ms {
        return Err(e(
            "replication.lease_timeout_ms",
            format!(
                "must be < failover_timeout_ms ({} >= {}): the active's lease must run out before any passive may promote",
                r.lease_timeout_ms, r.failover_timeout_ms
            ),
        ));
    }
    if r.heartbeat_interval_ms * 2 > r.lease_timeout_ms {
        return Err(e(
            "replication.heartbeat_interval_ms",
            format!(
                "must be at most half of lease_timeout_ms ({} > {} / 2), or one lost heartbeat fences the active",
                r.heartbeat_interval_ms, r.lease_timeout_ms
            ),
        ));
    }
    if r.batch_max_changes == 0 || r.batch_max_bytes < 1024 {
        return Err(e(
            "replication.batch_max_changes",
            "batch limits must be at least 1 change and 1024 bytes".into(),
        ));
    }
    if r.retain_max_changes != 0 && r.retain_max_changes < r.retain_min_changes {
        return Err(e(
            "replication.retain_max_changes",
            format!(
                "must be 0 (no cap) or at least retain_min_changes ({} < {})",
                r.retain_max_changes, r.retain_min_changes
            ),
        ));
    }
    if r.retain_interval_ms < 10 {
        return Err(e(
            "replication.retain_interval_ms",
            "must be at least 10 ms".into(),
        ));
    }
    let replication = Replication {
        listen: addr("replication.listen", &r.listen)?,
        heartbeat_interval: Duration::from_millis(r.heartbeat_interval_ms),
        lease_timeout: Duration::from_millis(r.lease_timeout_ms),
        failover_timeout: Duration::from_millis(r.failover_timeout_ms),
        max_failover_lag_changes: r.max_failover_lag_changes,
        batch_max_changes: r.batch_max_changes,
        batch_max_bytes: r.batch_max_bytes,
        batch_max_delay: Duration::from_millis(r.batch_max_delay_ms),
        retain_min_changes: r.retain_min_changes,
        retain_min_age: Duration::from_millis(r.retain_min_age_ms),
        retain_max_changes: r.retain_max_changes,
        retain_interval: Duration::from_millis(r.retain_interval_ms),
    };

    if raw.status.token.len() < 8 {
        return Err(e(
            "status.token",
            "must be at least 8 characters (it guards the POST endpoints)".into(),
        ));
    }
    let status = StatusConfig {
        listen: addr("status.listen", &raw.status.listen)?,
        token: raw.status.token.clone(),
        tls: raw.status.tls,
    };

    let data_members = peers.iter().filter(|p| !p.witness).count() + usize::from(!raw.witness);
    let witnesses = peers.iter().filter(|p| p.witness).count() + usize::from(raw.witness);
    if raw.auto_failover && data_members == 2 && witnesses == 0 {
        return Err(e(
            "auto_failover",
            "a 2-member cluster without a witness cannot fail over automatically without risking two actives: add a witness peer ([[peers]] ... witness = true) or set auto_failover = false (an operator can still run `understudy promote --force`)".into(),
        ));
    }

    let path = |k: &str, s: &str| -> Result<PathBuf, (String, String)> {
        if s.trim().is_empty() {
            return Err(e(k, "must not be empty".into()));
        }
        let p = Path::new(s);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        })
    };
    let witness_state = path(
        "witness_state",
        raw.witness_state
            .as_deref()
            .unwrap_or(&format!("{member}.witness-state")),
    )?;
    let tls = TlsPaths {
        ca: path("tls.ca", &raw.tls.ca)?,
        cert: path("tls.cert", &raw.tls.cert)?,
        key: path("tls.key", &raw.tls.key)?,
    };
    for (key, cmd) in [
        ("hooks.on_promote", &raw.hooks.on_promote),
        ("hooks.on_demote", &raw.hooks.on_demote),
        ("hooks.on_fence", &raw.hooks.on_fence),
    ] {
        if cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(e(
                key,
                "must not be empty: remove the key to run no hook".into(),
            ));
        }
    }
    if raw.hooks.on_promote_blocks && raw.hooks.on_promote.is_none() {
        return Err(e(
            "hooks.on_promote_blocks",
            "true needs a hooks.on_promote command to wait for: set one, or remove the key".into(),
        ));
    }
    let capture = capture_spec(raw.capture.as_ref(), database.as_ref())?;
    let takeover = takeover(&raw, &capture, &member)?;
    check_owner_ids(&member, takeover.as_ref(), &peers)?;
    if raw.hooks.timeout_ms == Some(0) {
        return Err(e(
            "hooks.timeout_ms",
            "must be above 0 (a hook is killed when it runs longer)".into(),
        ));
    }
    let hooks = Hooks {
        on_promote: raw.hooks.on_promote.clone(),
        on_demote: raw.hooks.on_demote.clone(),
        on_fence: raw.hooks.on_fence.clone(),
        timeout: Duration::from_millis(raw.hooks.timeout_ms.unwrap_or(30_000)),
        on_promote_blocks: raw.hooks.on_promote_blocks,
    };

    Ok(Config {
        file: _path.to_path_buf(),
        cluster: raw.cluster,
        member,
        initial_active,
        auto_failover: raw.auto_failover,
        witness: raw.witness,
        no_failover: raw.no_failover,
        priority: raw.priority,
        capture,
        takeover,
        database,
        witness_state,
        replication,
        status,
        tls,
        peers,
        hooks,
    })
}

/// A validation failure: `(key, reason)`.
type Invalid = (String, String);

fn invalid(key: &str, reason: impl Into<String>) -> Invalid {
    (key.to_string(), reason.into())
}

/// Table and column names are written into generated SQL (triggers,
/// statements): plain identifiers only, as PostgreSQL takes them unquoted.
fn check_identifier(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || s.len() > 63 {
        return Err(format!(
            "{s:?} is not a plain identifier: use letters, digits and '_' (not first), at most 63 characters"
        ));
    }
    Ok(())
}

/// A table name as the config may write it (`table` or `schema.table`),
/// normalised: `public.x` is `x` (PostgreSQL's default schema).
fn table_name(key: &str, s: &str, database: Option<&DatabaseUrl>) -> Result<String, Invalid> {
    let (schema, table) = match s.split_once('.') {
        Some((schema, table)) => (Some(schema), table),
        None => (None, s),
    };
    for part in schema.into_iter().chain([table]) {
        check_identifier(part).map_err(|r| invalid(key, format!("table {s:?}: {r}")))?;
    }
    match schema {
        None | Some("public") => Ok(table.to_string()),
        Some(_) if matches!(database, Some(DatabaseUrl::Sqlite(_))) => Err(invalid(
            key,
            format!("table {s:?}: SQLite has no schemas: write the table name alone"),
        )),
        Some(schema) => Ok(format!("{schema}.{table}")),
    }
}

/// `[capture]` (the application's tables), or the example schema without it.
fn capture_spec(
    raw: Option<&RawCapture>,
    database: Option<&DatabaseUrl>,
) -> Result<CaptureSpec, Invalid> {
    let Some(raw) = raw else {
        return Ok(CaptureSpec::example());
    };
    if raw.tables.is_empty() {
        return Err(invalid(
            "capture.tables",
            "must list at least one table, e.g. tables = [\"project\", \"scheduled_execution\"]; remove [capture] to replicate the example schema",
        ));
    }
    let mut tables: Vec<String> = Vec::with_capacity(raw.tables.len());
    for t in &raw.tables {
        let name = table_name("capture.tables", t, database)?;
        if tables.contains(&name) {
            return Err(invalid(
                "capture.tables",
                format!("lists table {name:?} twice: remove one"),
            ));
        }
        tables.push(name);
    }
    let mut secret_columns = Vec::with_capacity(raw.secret_columns.len());
    for s in &raw.secret_columns {
        let key = "capture.secret_columns";
        let (table, column) = s.rsplit_once('.').ok_or_else(|| {
            invalid(
                key,
                format!("{s:?} is not table.column (e.g. \"storage.data\")"),
            )
        })?;
        let table = table_name(key, table, database)?;
        check_identifier(column).map_err(|r| invalid(key, format!("{s:?}: column {r}")))?;
        if !tables.contains(&table) {
            return Err(invalid(
                key,
                format!(
                    "{s:?} names table {table:?}, which is not in [capture] tables: add the table there, or remove the column"
                ),
            ));
        }
        secret_columns.push(format!("{table}.{column}"));
    }
    Ok(CaptureSpec {
        tables,
        secret_columns,
        example: false,
    })
}

/// `[takeover]`, or the old top-level `takeover_policy` / `takeover_members`
/// mapped into it; see [`Config::takeover`] for when there is none.
fn takeover(
    raw: &RawConfig,
    capture: &CaptureSpec,
    member: &MemberId,
) -> Result<Option<Takeover>, Invalid> {
    let old_key = match (&raw.takeover_policy, &raw.takeover_members) {
        (Some(_), _) => Some(("takeover_policy", "policy")),
        (None, Some(_)) => Some(("takeover_members", "members")),
        (None, None) => None,
    };
    let (section, policy_keys) = match (&raw.takeover, old_key) {
        (Some(_), Some((old, new))) => {
            return Err(invalid(
                old,
                format!(
                    "was replaced by [takeover] {new}, and this config has a [takeover] section too: move the setting there and remove {old}"
                ),
            ));
        }
        (None, Some((old, new))) if !capture.example => {
            return Err(invalid(
                old,
                format!(
                    "was replaced by [takeover] {new}; with [capture] a takeover also needs [takeover] table and owner_column: add them, or remove {old} for no takeover"
                ),
            ));
        }
        (Some(t), None) => (t.clone(), ("takeover.policy", "takeover.members")),
        (None, _) if !capture.example => return Ok(None),
        (None, _) => (
            RawTakeover {
                policy: raw.takeover_policy.clone(),
                members: raw.takeover_members.clone(),
                ..RawTakeover::default()
            },
            ("takeover_policy", "takeover_members"),
        ),
    };
    let (table, owner_column) = takeover_target(&section, capture)?;
    let owner_id = section.owner_id.unwrap_or_else(|| member.to_string());
    if owner_id.trim().is_empty() {
        return Err(invalid(
            "takeover.owner_id",
            "must not be empty: remove the key to use the member id",
        ));
    }
    let policy = takeover_policy(section.policy.as_deref(), section.members, policy_keys)?;
    Ok(Some(Takeover {
        table,
        owner_column,
        owner_id,
        policy,
    }))
}

/// `[takeover] table` and `owner_column`: required with `[capture]`,
/// defaulting to the example schema's `jobs.owner_member` without it.
fn takeover_target(
    section: &RawTakeover,
    capture: &CaptureSpec,
) -> Result<(TableName, String), Invalid> {
    let table = match (&section.table, capture.example) {
        (Some(t), _) => table_name("takeover.table", t, None)?,
        (None, true) => "jobs".to_string(),
        (None, false) => {
            return Err(invalid(
                "takeover.table",
                "missing: name the captured table that holds each job's owner (e.g. table = \"scheduled_execution\"), or remove [takeover] for no takeover",
            ));
        }
    };
    if !capture.tables.contains(&table) {
        return Err(invalid(
            "takeover.table",
            format!(
                "{table:?} is not a captured table ({}): takeover rows must replicate; name one of them",
                capture.tables.join(", ")
            ),
        ));
    }
    let owner_column = match &section.owner_column {
        Some(c) => c.clone(),
        None if capture.example && table == "jobs" => "owner_member".to_string(),
        None => {
            return Err(invalid(
                "takeover.owner_column",
                format!(
                    "missing: name the column of {table} that holds the owner's id (e.g. owner_column = \"server_nodeuuid\")"
                ),
            ));
        }
    };
    check_identifier(&owner_column).map_err(|r| invalid("takeover.owner_column", r))?;
    Ok((TableName::new(table), owner_column))
}

/// `policy` (`any` | `static`) and `members`, under the keys the config
/// used (`takeover.policy` or the old `takeover_policy`).
fn takeover_policy(
    policy: Option<&str>,
    members: Option<Vec<String>>,
    (policy_key, members_key): (&str, &str),
) -> Result<TakeoverPolicy, Invalid> {
    let members = members.unwrap_or_default();
    match policy.unwrap_or("any") {
        "any" if members.is_empty() => Ok(TakeoverPolicy::Any),
        "any" => Err(invalid(
            members_key,
            format!("only used with {policy_key} = \"static\""),
        )),
        "static" => {
            let mut list = Vec::with_capacity(members.len());
            for m in &members {
                check_member_id(m).map_err(|r| invalid(members_key, r))?;
                list.push(MemberId::new(m));
            }
            Ok(TakeoverPolicy::Static(list))
        }
        other => Err(invalid(
            policy_key,
            format!(
                "{other:?} is not a policy: use \"any\" (default) or \"static\" with {members_key} = [...]"
            ),
        )),
    }
}

/// Owner ids name members in the owner column: each must be set, and no two
/// data members may share one (a takeover would then also move the rows of
/// a member that is still alive).
fn check_owner_ids(
    member: &MemberId,
    takeover: Option<&Takeover>,
    peers: &[Peer],
) -> Result<(), Invalid> {
    let own = takeover.map_or(member.as_str(), |t| t.owner_id.as_str());
    let mut seen: Vec<(&str, &str)> = vec![(own, member.as_str())];
    for (i, p) in peers.iter().enumerate() {
        let key = format!("peers[{i}].owner_id");
        if p.owner_id.trim().is_empty() {
            return Err(invalid(
                &key,
                "must not be empty: remove the key to use the member id",
            ));
        }
        if p.witness {
            continue;
        }
        if let Some((_, other)) = seen.iter().find(|(id, _)| *id == p.owner_id) {
            return Err(invalid(
                &key,
                format!(
                    "member {} has the same owner id as member {other}: every data member needs its own",
                    p.member
                ),
            ));
        }
        seen.push((&p.owner_id, p.member.as_str()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "prod"
member = "a"
initial_active = "a"
auto_failover = true

[database]
url = "sqlite://data/a.db"

[replication]
listen = "127.0.0.1:7401"
heartbeat_interval_ms = 500
lease_timeout_ms = 2500
failover_timeout_ms = 3000

[status]
listen = "127.0.0.1:7501"
token = "change-me"

[tls]
ca = "certs/ca.pem"
cert = "certs/a.pem"
key = "certs/a.key"

[[peers]]
member = "b"
address = "127.0.0.1:7402"
status = "127.0.0.1:7502"

[[peers]]
member = "w"
address = "127.0.0.1:7403"
status = "127.0.0.1:7503"
witness = true

[hooks]
on_promote = "/usr/local/bin/start-scheduler"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(text, Path::new("/etc/understudy/a.toml"), &env)
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(c.member.as_str(), "a");
        assert_eq!(
            c.database,
            Some(DatabaseUrl::Sqlite(PathBuf::from(
                "/etc/understudy/data/a.db"
            )))
        );
        assert_eq!(c.tls.ca, PathBuf::from("/etc/understudy/certs/ca.pem"));
        assert_eq!(c.voters().len(), 3);
        assert_eq!(c.quorum(), 2);
        assert_eq!(c.replication.lease_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn env_overrides_win() {
        let c = parse(
            GOOD,
            &[
                ("UNDERSTUDY_DATABASE_URL", "postgres://u@h:5432/d"),
                ("UNDERSTUDY_REPLICATION_HEARTBEAT_INTERVAL_MS", "250"),
                ("UNDERSTUDY_AUTO_FAILOVER", "false"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.database,
            Some(DatabaseUrl::Postgres("postgres://u@h:5432/d".into()))
        );
        assert_eq!(c.replication.heartbeat_interval, Duration::from_millis(250));
        assert!(!c.auto_failover);
        assert!(!c.status.tls);
        let c = parse(GOOD, &[("UNDERSTUDY_STATUS_TLS", "true")]).unwrap();
        assert!(c.status.tls);
        let with = GOOD.replace("token = \"change-me\"", "token = \"change-me\"\ntls = true");
        assert!(parse(&with, &[]).unwrap().status.tls);
        assert!(!format!("{:?}", c.status).contains("change-me"));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let bad = GOOD.replace("lease_timeout_ms = 2500", "lease_timeout_ms = 3500");
        let err = parse(&bad, &[]).unwrap_err().to_string();
        assert!(err.contains("/etc/understudy/a.toml"), "{err}");
        assert!(err.contains("replication.lease_timeout_ms"), "{err}");
        assert!(err.contains("failover_timeout_ms"), "{err}");

        let typo = GOOD.replace("auto_failover = true", "auto_failovr = true");
        let err = parse(&typo, &[]).unwrap_err().to_string();
        assert!(err.contains("auto_failovr"), "{err}");

        let err = parse("cluster = ", &[]).unwrap_err().to_string();
        assert!(err.contains("a.toml"), "{err}");

        let err = parse(GOOD, &[("UNDERSTUDY_REPLICATION_LEASE_TIMEOUT_MS", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("UNDERSTUDY_REPLICATION_LEASE_TIMEOUT_MS"),
            "{err}"
        );

        let err = parse(&GOOD.replace("sqlite://data/a.db", "mysql://x"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn two_members_without_witness_refuse_auto_failover() {
        let two = GOOD.replace("witness = true\n", "");
        let two = two
            .split("[[peers]]\nmember = \"w\"")
            .next()
            .unwrap()
            .to_string();
        let err = parse(&two, &[]).unwrap_err().to_string();
        assert!(err.contains("auto_failover"), "{err}");
        assert!(err.contains("witness"), "{err}");
        let off = two.replace("auto_failover = true", "auto_failover = false");
        assert!(parse(&off, &[]).is_ok());
    }

    #[test]
    fn witness_has_no_database() {
        let w = GOOD
            .replace(
                "member = \"a\"\ninitial_active",
                "member = \"x\"\nwitness = true\ninitial_active",
            )
            .replace("[database]\nurl = \"sqlite://data/a.db\"\n", "")
            .replace("member = \"w\"", "member = \"a\"")
            .replace("witness = true\n\n[hooks]", "\n[hooks]");
        let c = parse(&w, &[]).unwrap();
        assert!(c.witness);
        assert!(c.database.is_none());
    }

    #[test]
    fn hooks_section() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(
            c.hooks.on_promote.as_deref(),
            Some("/usr/local/bin/start-scheduler")
        );
        assert_eq!(c.hooks.timeout, Duration::from_millis(30_000));
        assert!(!c.hooks.on_promote_blocks, "default: promotion stands");
        let blocks = GOOD.replace(
            "[hooks]\n",
            "[hooks]\non_promote_blocks = true\ntimeout_ms = 1500\n",
        );
        let c = parse(&blocks, &[]).unwrap();
        assert!(c.hooks.on_promote_blocks);
        let nothing_to_wait_for =
            blocks.replace("on_promote = \"/usr/local/bin/start-scheduler\"\n", "");
        assert_ne!(nothing_to_wait_for, blocks);
        let err = parse(&nothing_to_wait_for, &[]).unwrap_err().to_string();
        assert!(
            err.contains("hooks.on_promote_blocks") && err.contains("on_promote command"),
            "{err}"
        );
        let c = parse(&blocks.replace("= true", "= false"), &[]).unwrap();
        assert!(!c.hooks.on_promote_blocks);
        assert_eq!(c.hooks.timeout, Duration::from_millis(1500));
        let err = parse(GOOD, &[("UNDERSTUDY_HOOKS_ON_PROMOTE_BLOCKS", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("hooks.on_promote_blocks"), "{err}");
        let empty = GOOD.replace("\"/usr/local/bin/start-scheduler\"", "\" \"");
        let err = parse(&empty, &[]).unwrap_err().to_string();
        assert!(err.contains("hooks.on_promote"), "{err}");
        let zero = GOOD.replace("[hooks]\n", "[hooks]\ntimeout_ms = 0\n");
        let err = parse(&zero, &[]).unwrap_err().to_string();
        assert!(err.contains("hooks.timeout_ms"), "{err}");
    }

    #[test]
    fn takeover_policy_old_top_level_keys() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(c.takeover.as_ref().unwrap().policy, TakeoverPolicy::Any);
        assert!(c.takeover_allows(&MemberId::new("zz")));
        let st = GOOD.replace(
            "auto_failover = true\n",
            "auto_failover = true\ntakeover_policy = \"static\"\ntakeover_members = [\"b\"]\n",
        );
        let c = parse(&st, &[]).unwrap();
        assert!(c.takeover_allows(&MemberId::new("b")));
        assert!(!c.takeover_allows(&MemberId::new("c")));
        let t = c.takeover.unwrap();
        assert_eq!(
            (t.table.as_str(), t.owner_column.as_str()),
            ("jobs", "owner_member")
        );
        let bad = GOOD.replace(
            "auto_failover = true\n",
            "auto_failover = true\ntakeover_policy = \"some\"\n",
        );
        let err = parse(&bad, &[]).unwrap_err().to_string();
        assert!(err.contains(": takeover_policy: "), "{err}");
        let stray = GOOD.replace(
            "auto_failover = true\n",
            "auto_failover = true\ntakeover_members = [\"b\"]\n",
        );
        let err = parse(&stray, &[]).unwrap_err().to_string();
        assert!(
            err.contains(": takeover_members: ") && err.contains("static"),
            "{err}"
        );
    }

    /// `GOOD` with `extra` appended (new sections go after `[hooks]`).
    fn with(extra: &str) -> String {
        format!("{GOOD}\n{extra}\n")
    }

    const SCHEDULER: &str = r#"
[capture]
tables = ["project", "public.scheduled_execution", "storage"]
secret_columns = ["storage.data", "public.storage.json_data"]
"#;

    #[test]
    fn without_capture_the_example_schema_and_its_takeover() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(c.capture, CaptureSpec::example());
        assert!(c.capture.example);
        assert_eq!(
            c.takeover,
            Some(Takeover {
                table: TableName::new("jobs"),
                owner_column: "owner_member".into(),
                owner_id: "a".into(),
                policy: TakeoverPolicy::Any,
            })
        );
        assert_eq!(c.owner_id_of(&MemberId::new("a")), Some("a"));
        assert_eq!(c.owner_id_of(&MemberId::new("b")), Some("b"));
        assert_eq!(c.owner_id_of(&MemberId::new("nobody")), None);
        // A [takeover] section alone keeps the example schema's defaults.
        let c = parse(&with("[takeover]\nowner_id = \"node-a\""), &[]).unwrap();
        let t = c.takeover.as_ref().unwrap();
        assert_eq!((t.table.as_str(), t.owner_id.as_str()), ("jobs", "node-a"));
        assert_eq!(c.owner_id_of(&MemberId::new("a")), Some("node-a"));
    }

    #[test]
    fn capture_section_is_normalised_and_has_no_takeover_by_default() {
        let c = parse(&with(SCHEDULER), &[]).unwrap();
        assert_eq!(
            c.capture,
            CaptureSpec {
                tables: vec![
                    "project".into(),
                    "scheduled_execution".into(),
                    "storage".into()
                ],
                secret_columns: vec!["storage.data".into(), "storage.json_data".into()],
                example: false,
            }
        );
        assert_eq!(c.takeover, None);
        assert!(
            !c.takeover_allows(&MemberId::new("b")),
            "no takeover at all"
        );
        assert_eq!(c.owner_id_of(&MemberId::new("a")), Some("a"));
        // Other PostgreSQL schemas keep their prefix.
        let pg = with(&SCHEDULER.replace("\"storage\"]", "\"app.storage\"]"));
        let pg = pg.replace(
            "\"storage.data\", \"public.storage.json_data\"",
            "\"app.storage.data\"",
        );
        let c = parse(&pg, &[("UNDERSTUDY_DATABASE_URL", "postgres://u@h/d")]).unwrap();
        assert_eq!(c.capture.tables[2], "app.storage");
        assert_eq!(
            c.capture.secret_columns,
            vec!["app.storage.data".to_string()]
        );
        // ...which SQLite cannot have.
        let err = parse(&pg, &[]).unwrap_err().to_string();
        assert!(
            err.contains("capture.tables") && err.contains("SQLite has no schemas"),
            "{err}"
        );
    }

    fn refusal(text: &str, env: &[(&str, &str)]) -> String {
        let err = parse(text, env).unwrap_err().to_string();
        assert!(err.starts_with("config /etc/understudy/a.toml: "), "{err}");
        err
    }

    #[test]
    fn capture_refusals_name_the_key_and_say_what_to_do() {
        for (text, key, says) in [
            (
                "[capture]\ntables = []",
                "capture.tables",
                "at least one table",
            ),
            (
                "[capture]\nsecret_columns = [\"x.y\"]",
                "capture.tables",
                "at least one table",
            ),
            (
                "[capture]\ntables = [\"x\", \"public.x\"]",
                "capture.tables",
                "twice",
            ),
            (
                "[capture]\ntables = [\"x y\"]",
                "capture.tables",
                "plain identifier",
            ),
            (
                "[capture]\ntables = [\"a.b.c\"]",
                "capture.tables",
                "plain identifier",
            ),
            (
                "[capture]\ntables = [\"1x\"]",
                "capture.tables",
                "plain identifier",
            ),
            (
                "[capture]\ntables = [\"x\"]\nsecret_columns = [\"data\"]",
                "capture.secret_columns",
                "table.column",
            ),
            (
                "[capture]\ntables = [\"x\"]\nsecret_columns = [\"y.data\"]",
                "capture.secret_columns",
                "not in [capture] tables",
            ),
            (
                "[capture]\ntables = [\"x\"]\nsecret_columns = [\"x.da-ta\"]",
                "capture.secret_columns",
                "plain identifier",
            ),
            ("[capture]\ntabels = [\"x\"]", "tabels", "unknown field"),
        ] {
            let err = refusal(&with(text), &[]);
            assert!(
                err.contains(&format!(": {key}: ")) && err.contains(says),
                "{text}: {err}"
            );
        }
    }

    const TAKEOVER: &str = r#"
[takeover]
table = "scheduled_execution"
owner_column = "server_nodeuuid"
owner_id = "3f9c-a"
policy = "static"
members = ["b"]
"#;

    #[test]
    fn takeover_section_with_capture_and_peer_owner_ids() {
        let text = with(&format!("{SCHEDULER}{TAKEOVER}")).replace(
            "status = \"127.0.0.1:7502\"\n",
            "status = \"127.0.0.1:7502\"\nowner_id = \"3f9c-b\"\n",
        );
        let c = parse(&text, &[]).unwrap();
        assert_eq!(
            c.takeover,
            Some(Takeover {
                table: TableName::new("scheduled_execution"),
                owner_column: "server_nodeuuid".into(),
                owner_id: "3f9c-a".into(),
                policy: TakeoverPolicy::Static(vec![MemberId::new("b")]),
            })
        );
        assert!(c.takeover_allows(&MemberId::new("b")));
        assert!(!c.takeover_allows(&MemberId::new("w")));
        assert_eq!(c.owner_id_of(&MemberId::new("a")), Some("3f9c-a"));
        assert_eq!(c.owner_id_of(&MemberId::new("b")), Some("3f9c-b"));
        assert_eq!(
            c.owner_id_of(&MemberId::new("w")),
            Some("w"),
            "default: member id"
        );
        assert_eq!(c.peer(&MemberId::new("b")).unwrap().owner_id, "3f9c-b");
    }

    #[test]
    fn takeover_refusals_name_the_key_and_say_what_to_do() {
        let full = format!("{SCHEDULER}{TAKEOVER}");
        let cases: Vec<(String, &str, &str)> = vec![
            (
                full.replace("table = \"scheduled_execution\"\n", ""),
                "takeover.table",
                "missing",
            ),
            (
                full.replace("table = \"scheduled_execution\"", "table = \"workflow\""),
                "takeover.table",
                "not a captured table",
            ),
            (
                full.replace("owner_column = \"server_nodeuuid\"\n", ""),
                "takeover.owner_column",
                "missing",
            ),
            (
                full.replace("\"server_nodeuuid\"", "\"server nodeuuid\""),
                "takeover.owner_column",
                "plain identifier",
            ),
            (
                full.replace("\"3f9c-a\"", "\" \""),
                "takeover.owner_id",
                "must not be empty",
            ),
            (
                full.replace("policy = \"static\"", "policy = \"all\""),
                "takeover.policy",
                "not a policy",
            ),
            (
                full.replace("policy = \"static\"", "policy = \"any\""),
                "takeover.members",
                "only used with takeover.policy = \"static\"",
            ),
            (
                full.replace("members = [\"b\"]", "members = [\"b c\"]"),
                "takeover.members",
                "letters, digits",
            ),
            (
                "[takeover]\ntable = \"scheduled_execution\"".into(),
                "takeover.table",
                "not a captured table (projects, jobs, keys)",
            ),
            (
                "[takeover]\nowner_id = \"b\"".into(),
                "peers[0].owner_id",
                "same owner id as member a",
            ),
        ];
        for (extra, key, says) in cases {
            let err = refusal(&with(&extra), &[]);
            assert!(
                err.contains(&format!(": {key}: ")) && err.contains(says),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn old_takeover_keys_conflict_with_the_new_section() {
        let old = GOOD.replace(
            "auto_failover = true\n",
            "auto_failover = true\ntakeover_policy = \"any\"\n",
        );
        let err = refusal(&format!("{old}\n[takeover]\npolicy = \"any\"\n"), &[]);
        assert!(
            err.contains(": takeover_policy: was replaced by [takeover] policy"),
            "{err}"
        );
        let err = refusal(&format!("{old}\n{SCHEDULER}"), &[]);
        assert!(
            err.contains(": takeover_policy: was replaced by [takeover] policy")
                && err.contains("[takeover] table and owner_column"),
            "{err}"
        );
        let members = GOOD.replace(
            "auto_failover = true\n",
            "auto_failover = true\ntakeover_members = [\"b\"]\n",
        );
        let err = refusal(&format!("{members}\n{SCHEDULER}{TAKEOVER}"), &[]);
        assert!(
            err.contains(": takeover_members: was replaced by [takeover] members"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_reach_capture_and_takeover() {
        let c = parse(
            GOOD,
            &[
                (
                    "UNDERSTUDY_CAPTURE_TABLES",
                    "project, scheduled_execution,storage,",
                ),
                ("UNDERSTUDY_CAPTURE_SECRET_COLUMNS", "storage.data"),
                ("UNDERSTUDY_TAKEOVER_TABLE", "scheduled_execution"),
                ("UNDERSTUDY_TAKEOVER_OWNER_COLUMN", "server_nodeuuid"),
                ("UNDERSTUDY_TAKEOVER_OWNER_ID", "3f9c-a"),
                ("UNDERSTUDY_TAKEOVER_POLICY", "static"),
                ("UNDERSTUDY_TAKEOVER_MEMBERS", "b"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.capture.tables,
            ["project", "scheduled_execution", "storage"]
        );
        assert_eq!(c.capture.secret_columns, ["storage.data"]);
        let t = c.takeover.unwrap();
        assert_eq!(t.owner_id, "3f9c-a");
        assert_eq!(t.policy, TakeoverPolicy::Static(vec![MemberId::new("b")]));
        let err = refusal(GOOD, &[("UNDERSTUDY_CAPTURE_TABLES", " , ")]);
        assert!(err.contains(": capture.tables: must list"), "{err}");

        // The policy variable follows the form the file uses.
        let old = GOOD.replace(
            "auto_failover = true\n",
            "auto_failover = true\ntakeover_policy = \"any\"\n",
        );
        let env = [
            ("UNDERSTUDY_TAKEOVER_POLICY", "static"),
            ("UNDERSTUDY_TAKEOVER_MEMBERS", "b,c"),
        ];
        let c = parse(&old, &env).unwrap();
        assert!(c.takeover_allows(&MemberId::new("c")));
        assert!(!c.takeover_allows(&MemberId::new("w")));
        let new = with("[takeover]\npolicy = \"any\"");
        assert!(
            !parse(&new, &env)
                .unwrap()
                .takeover_allows(&MemberId::new("w"))
        );
        assert!(
            !parse(GOOD, &env)
                .unwrap()
                .takeover_allows(&MemberId::new("w"))
        );
    }

    #[test]
    fn every_override_has_its_own_variable() {
        let mut names = BTreeSet::new();
        for (section, key, _) in OVERRIDABLE {
            assert!(names.insert(env_name(section, key)), "{section}.{key}");
        }
    }

    #[test]
    fn shipped_examples_are_valid() {
        for (name, text) in [
            ("a.toml", include_str!("../config/a.toml")),
            ("b.toml", include_str!("../config/b.toml")),
            ("c.toml", include_str!("../config/c.toml")),
            (
                "postgres-member.toml",
                include_str!("../config/postgres-member.toml"),
            ),
            (
                "scheduler-member.toml",
                include_str!("../config/scheduler-member.toml"),
            ),
        ] {
            let path = PathBuf::from("/srv/understudy").join(name);
            match Config::parse(text, &path, &[]) {
                Err(e) => panic!("config/{name}: {e}"),
                Ok(c) => assert_eq!(c.capture.example, name != "scheduler-member.toml"),
            }
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    }
}
