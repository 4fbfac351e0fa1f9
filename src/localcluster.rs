//! A throw-away local cluster: certificates, member configs, databases and
//! `understudy run` processes in one folder, on loopback ports from the OS.
//! Used by the benchmarks, the drills and the black-box tests.
//!
//! Owns: writing a cluster's files and the lifetimes of its processes (every
//! process it starts is killed when the cluster is dropped).
//! Must never: touch anything outside its folder (PostgreSQL databases are
//! passed in by URL and belong to the caller).

use crate::config::DatabaseUrl;
use crate::model::MemberId;
use crate::status::client;
use crate::tables::CaptureSpec;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
    #[error("`understudy {cmd}` for member {member} failed: {stderr}")]
    Command {
        cmd: String,
        member: String,
        stderr: String,
    },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error(transparent)]
    Certs(#[from] crate::certs::CertsError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Io {
        what,
        reason: e.to_string(),
    }
}

/// One member to create.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub id: String,
    /// `None` makes a witness.
    pub database: Option<DatabaseUrl>,
}

/// Timings and switches written into every member's config.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub cluster: String,
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    pub failover_ms: u64,
    pub auto_failover: bool,
    pub token: String,
    /// Extra TOML lines appended to every member's top level.
    pub extra_top: String,
    /// Extra TOML lines in every member's [replication] table.
    pub extra_replication: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            cluster: "local".into(),
            heartbeat_ms: 200,
            lease_ms: 1000,
            failover_ms: 1500,
            auto_failover: true,
            token: "local-cluster-token".into(),
            extra_top: String::new(),
            extra_replication: String::new(),
        }
    }
}

/// A member of a local cluster.
#[derive(Debug)]
pub struct LocalMember {
    pub id: MemberId,
    pub config: PathBuf,
    pub replication: String,
    pub status: String,
    pub database: Option<DatabaseUrl>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl LocalMember {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    pub fn is_witness(&self) -> bool {
        self.database.is_none()
    }
    /// What the member captures, as its config file says (`[capture]`
    /// added through the options, else the example schema; also the
    /// example schema when the file cannot be read).
    pub fn capture(&self) -> CaptureSpec {
        crate::config::Config::load(&self.config)
            .map(|c| c.capture)
            .unwrap_or_default()
    }
}

/// The cluster; dropping it kills every process it started.
#[derive(Debug)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub members: Vec<LocalMember>,
    pub options: ClusterOptions,
}

/// A loopback port that is free now, for a process started later to listen
/// on. Taken below the kernel's ephemeral range where there is room: a port
/// the OS hands out for `:0` is released before the process binds it, and
/// in between any outgoing connection on the machine may take it as its
/// local port (seen: an agent failing with "Address already in use" while
/// other clusters' agents and databases were connecting). Outgoing
/// connections never take ports outside the ephemeral range; a process-wide
/// cursor keeps this process's clusters apart, and the bind check other
/// listeners.
pub fn free_port() -> Result<u16, ClusterError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    /// Ports below the ephemeral range to cycle through.
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if let Some(low) = ephemeral_low().filter(|low| u32::from(*low) > SPAN + 1024) {
        let base = u32::from(low) - SPAN;
        // Processes start at different offsets (by pid), calls of one
        // process follow each other.
        let offset = std::process::id().wrapping_mul(7919);
        for _ in 0..SPAN {
            let step = offset.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
            // Below `low`, so it fits in a u16.
            let port = (base + step % SPAN) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("reading a free port"))?.port())
}

/// The first port of the kernel's ephemeral range (Linux), if known.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl LocalCluster {
    /// Write certificates and configs for `specs` into `dir`; the first
    /// member with a database is the initial active.
    pub fn create(
        dir: &Path,
        bin: &Path,
        specs: &[MemberSpec],
        options: ClusterOptions,
    ) -> Result<LocalCluster, ClusterError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let ids: Vec<MemberId> = specs.iter().map(|s| MemberId::new(&s.id)).collect();
        let certs = dir.join("certs");
        crate::certs::init_certs(&certs, &ids, true)?;
        let initial = specs
            .iter()
            .find(|s| s.database.is_some())
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let mut members = Vec::new();
        for s in specs {
            members.push(LocalMember {
                id: MemberId::new(&s.id),
                config: dir.join(format!("{}.toml", s.id)),
                replication: format!("127.0.0.1:{}", free_port()?),
                status: format!("127.0.0.1:{}", free_port()?),
                database: s.database.clone(),
                log: dir.join(format!("{}.log", s.id)),
                child: None,
            });
        }
        for (i, m) in members.iter().enumerate() {
            let mut t = String::new();
            let o = &options;
            let _ = writeln!(
                t,
                "cluster = {:?}\nmember = {:?}\ninitial_active = {:?}",
                o.cluster,
                m.id.as_str(),
                initial
            );
            let _ = writeln!(t, "auto_failover = {}", o.auto_failover);
            if m.is_witness() {
                let _ = writeln!(t, "witness = true");
            }
            t.push_str(&o.extra_top);
            if let Some(db) = &m.database {
                let url = match db {
                    DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
                    DatabaseUrl::Postgres(u) => u.clone(),
                };
                let _ = writeln!(t, "\n[database]\nurl = {url:?}");
            }
            let _ = writeln!(
                t,
                "\n[replication]\nlisten = {:?}\nheartbeat_interval_ms = {}\nlease_timeout_ms = {}\nfailover_timeout_ms = {}\n{}",
                m.replication, o.heartbeat_ms, o.lease_ms, o.failover_ms, o.extra_replication
            );
            let _ = writeln!(
                t,
                "[status]\nlisten = {:?}\ntoken = {:?}\n",
                m.status, o.token
            );
            let _ = writeln!(
                t,
                "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{0}.pem\"\nkey = \"certs/{0}.key\"\n",
                m.id
            );
            for (j, p) in members.iter().enumerate() {
                if i == j {
                    continue;
                }
                let _ = writeln!(
                    t,
                    "[[peers]]\nmember = {:?}\naddress = {:?}\nstatus = {:?}\nwitness = {}\n",
                    p.id.as_str(),
                    p.replication,
                    p.status,
                    p.is_witness()
                );
            }
            std::fs::write(&m.config, t).map_err(io(format!("writing {}", m.config.display())))?;
        }
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            members,
            options,
        })
    }

    pub fn member(&self, id: &str) -> &LocalMember {
        self.members
            .iter()
            .find(|m| m.id.as_str() == id)
            .unwrap_or_else(|| panic!("no member {id} in this local cluster"))
    }

    fn member_mut(&mut self, id: &str) -> &mut LocalMember {
        self.members
            .iter_mut()
            .find(|m| m.id.as_str() == id)
            .unwrap_or_else(|| panic!("no member {id} in this local cluster"))
    }

    /// `understudy init` for every member with a database.
    pub fn init_all(&self) -> Result<(), ClusterError> {
        for m in self.members.iter().filter(|m| !m.is_witness()) {
            let out = Command::new(&self.bin)
                .arg("init")
                .arg("--config")
                .arg(&m.config)
                .output()
                .map_err(io(format!("running {}", self.bin.display())))?;
            if !out.status.success() {
                return Err(ClusterError::Command {
                    cmd: "init".into(),
                    member: m.id.to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        Ok(())
    }

    /// Start `understudy run` for one member (its output appends to its log file).
    pub fn start(&mut self, id: &str) -> Result<(), ClusterError> {
        let bin = self.bin.clone();
        let m = self.member_mut(id);
        if let Some(c) = &mut m.child
            && c.try_wait().ok().flatten().is_none()
        {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(io(format!("opening {}", m.log.display())))?;
        let log2 = log.try_clone().map_err(io("cloning the log handle"))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&m.config)
            .env(
                "RUST_LOG",
                std::env::var("UNDERSTUDY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io("spawning understudy run"))?;
        m.child = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<(), ClusterError> {
        let ids: Vec<String> = self.members.iter().map(|m| m.id.to_string()).collect();
        for id in ids {
            self.start(&id)?;
        }
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, id: &str) {
        if let Some(mut c) = self.member_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to `timeout`, then kill -9). Returns the exit code.
    pub fn stop(&mut self, id: &str, timeout: Duration) -> Option<i32> {
        let mut c = self.member_mut(id).child.take()?;
        signal(c.id(), "-TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// SIGSTOP / SIGCONT a member's agent.
    pub fn freeze(&self, id: &str, frozen: bool) {
        if let Some(pid) = self.member(id).pid() {
            signal(pid, if frozen { "-STOP" } else { "-CONT" });
        }
    }

    /// The member's `/status` document, or an error if it does not answer.
    pub async fn status(&self, id: &str) -> Result<serde_json::Value, client::HttpError> {
        client::get_json(&self.member(id).status, "/status").await
    }

    /// Poll `cond` every 20 ms until it holds or `timeout` passes.
    pub async fn wait_until<F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: F,
    ) -> Result<(), ClusterError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if cond().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: what.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `id` answers `GET /active` with 200 (the active regains
    /// its lease once a majority answers after a start).
    pub async fn wait_active(&self, id: &str, timeout: Duration) -> Result<(), ClusterError> {
        let addr = self.member(id).status.clone();
        let result = self
            .wait_until(timeout, &format!("{id} to be the unfenced active"), || {
                let addr = addr.clone();
                async move {
                    client::request(&addr, "GET", "/active", None, None, Duration::from_secs(1))
                        .await
                        .is_ok_and(|r| r.code == 200)
                }
            })
            .await;
        // On timeout, say what every member last logged: why the active
        // did not regain its lease is in there.
        result.map_err(|e| match e {
            ClusterError::Timeout { what, secs } => ClusterError::Timeout {
                what: format!("{what}\n{}", self.log_tails(15)),
                secs,
            },
            other => other,
        })
    }

    /// The last `lines` log lines of every member, for failure messages.
    fn log_tails(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {} log tail:\n{}",
                    m.id,
                    self.log_tail(m.id.as_str(), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait until every member with a database reports the same position as
    /// the active's head, and that head is at least `min_seq`. On timeout
    /// the error names what each member last reported, so a stuck passive
    /// is visible in the failure itself.
    pub async fn wait_converged(
        &self,
        active: &str,
        min_seq: u64,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        use crate::store::MemberStore;
        let last_seen = std::sync::Mutex::new(String::new());
        // The active's head as its database has it: its /status may not yet
        // show a commit the caller has just made (the head watcher wakes up
        // a little later), and "converged" must include that commit.
        let db = match &self.member(active).database {
            Some(u) => crate::store::AnyStore::open(u, &self.member(active).capture())
                .await
                .ok(),
            None => None,
        };
        let result = self
            .wait_until(
                timeout,
                "all passives to reach the active's head",
                || async {
                    let mut seen = Vec::new();
                    let mut head = None;
                    if let Ok(a) = self.status(active).await {
                        head = a["position"]["seq"].as_u64();
                    }
                    if let (Some(db), Some(h)) = (&db, head)
                        && let Ok(st) = db.state().await
                    {
                        head = Some(h.max(st.position.seq));
                    }
                    let mut all_at_head = head.is_some_and(|h| h >= min_seq);
                    for m in self.members.iter().filter(|m| !m.is_witness()) {
                        match self.status(m.id.as_str()).await {
                            Ok(s) => {
                                let seq = s["position"]["seq"].as_u64();
                                all_at_head &= seq.is_some() && seq == head;
                                seen.push(format!(
                                    "{}: {} seq {}",
                                    m.id,
                                    s["role"].as_str().unwrap_or("?"),
                                    seq.map_or("?".to_string(), |q| q.to_string())
                                ));
                            }
                            Err(e) => {
                                all_at_head = false;
                                seen.push(format!("{}: no status ({e})", m.id));
                            }
                        }
                    }
                    if let Ok(mut l) = last_seen.lock() {
                        *l = seen.join(", ");
                    }
                    all_at_head
                },
            )
            .await;
        result.map_err(|e| match e {
            ClusterError::Timeout { what, secs } => ClusterError::Timeout {
                what: format!(
                    "{what} ({active}'s head; last seen: {})\n{}",
                    last_seen.lock().map(|l| l.clone()).unwrap_or_default(),
                    self.log_tails(15)
                ),
                secs,
            },
            other => other,
        })
    }

    /// The tail of a member's log, for failure messages.
    pub fn log_tail(&self, id: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.member(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Resident memory (kB) and CPU time (ms) of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux USER_HZ is 100 on every supported platform.
    Some((rss, ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a free port")).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for p in &ports {
            if let Some(low) = low {
                assert!(*p < low, "port {p} is in the ephemeral range (from {low})");
            }
            TcpListener::bind(("127.0.0.1", *p)).expect("still free");
        }
    }
}
