//! Operator hooks: the `[hooks]` commands run on role changes
//! (`on_promote`, `on_demote`, `on_fence`).
//!
//! Owns: running one hook command (`sh -c`, in a process group of its own,
//! with `UNDERSTUDY_MEMBER`, `UNDERSTUDY_ROLE`, `UNDERSTUDY_EPOCH` and
//! `UNDERSTUDY_ACTIVE` set), forwarding its output lines to the log (target
//! `hook`), killing the whole process group when it runs past
//! `hooks.timeout_ms`, and remembering the last outcome of each hook so
//! status can show a failing or hanging one.
//! Must never: decide anything about roles (what a failed `on_promote`
//! means is the controller's business, see `hooks.on_promote_blocks`), block
//! the caller past the timeout, leave a process of a timed-out hook running,
//! or leave its own child unreaped.

use crate::config::Hooks;
use crate::model::{Epoch, MemberId, Role};
use serde::Serialize;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Lines of output kept per run for status (the log has all of them).
pub const OUTPUT_TAIL_LINES: usize = 10;
/// Longest line kept or logged; the rest of a longer line is dropped.
const MAX_LINE_BYTES: usize = 1024;
/// After the shell ended, how long its output may still take to drain (a
/// background process it left behind may hold the pipes open).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How long reaping the shell may take once its group was killed.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    OnPromote,
    OnDemote,
    OnFence,
}

impl HookKind {
    pub const ALL: [HookKind; 3] = [HookKind::OnPromote, HookKind::OnDemote, HookKind::OnFence];

    /// The config key (`hooks.<name>`), also used in logs and status.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::OnPromote => "on_promote",
            HookKind::OnDemote => "on_demote",
            HookKind::OnFence => "on_fence",
        }
    }

    fn index(self) -> usize {
        match self {
            HookKind::OnPromote => 0,
            HookKind::OnDemote => 1,
            HookKind::OnFence => 2,
        }
    }
}

impl From<crate::control::Hook> for HookKind {
    fn from(h: crate::control::Hook) -> HookKind {
        use crate::control::Hook;
        match h {
            Hook::OnPromote => HookKind::OnPromote,
            Hook::OnDemote => HookKind::OnDemote,
            Hook::OnFence => HookKind::OnFence,
        }
    }
}

/// What a hook is told about the member, through its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEnv {
    /// `UNDERSTUDY_MEMBER`.
    pub member: MemberId,
    /// `UNDERSTUDY_ROLE`: the role the member has now.
    pub role: Role,
    /// `UNDERSTUDY_EPOCH`.
    pub epoch: Epoch,
    /// `UNDERSTUDY_ACTIVE`: the active member as this member knows it
    /// (empty when unknown).
    pub active: Option<MemberId>,
}

/// How one run of a hook went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookOutcome {
    pub kind: HookKind,
    /// False when the hook is not configured (nothing ran; `ok` is true).
    pub ran: bool,
    /// Ran and exited with status 0 within the time limit.
    pub ok: bool,
    /// The exit status; `None` when it did not exit by itself (killed by a
    /// signal, timed out, or could not start).
    pub exit_code: Option<i32>,
    /// Killed (with its whole process group) at the time limit.
    pub timed_out: bool,
    pub duration_ms: u64,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// The last lines of its stdout and stderr (interleaved as they came),
    /// or why it could not start.
    pub output_tail: Vec<String>,
}

/// Runs the configured hooks and remembers the last outcome of each.
#[derive(Debug)]
pub struct HookRunner {
    hooks: Hooks,
    last: Mutex<[Option<HookOutcome>; 3]>,
}

impl HookRunner {
    pub fn new(hooks: Hooks) -> HookRunner {
        HookRunner {
            hooks,
            last: Mutex::new([None, None, None]),
        }
    }

    /// The configured command of a hook.
    pub fn command(&self, kind: HookKind) -> Option<&str> {
        match kind {
            HookKind::OnPromote => self.hooks.on_promote.as_deref(),
            HookKind::OnDemote => self.hooks.on_demote.as_deref(),
            HookKind::OnFence => self.hooks.on_fence.as_deref(),
        }
    }

    /// The time limit of one run.
    pub fn timeout(&self) -> Duration {
        self.hooks.timeout
    }

    /// The outcome of the last run of `kind` (`None`: never ran, or not
    /// configured).
    pub fn last(&self, kind: HookKind) -> Option<HookOutcome> {
        self.last
            .lock()
            .map(|l| l[kind.index()].clone())
            .unwrap_or_else(|p| p.into_inner()[kind.index()].clone())
    }

    /// Run a hook to its end or its time limit and report how it went. Never
    /// fails: a hook that cannot start is a failed outcome. If this future
    /// is dropped before the hook ended, its process group is killed.
    pub async fn run(&self, kind: HookKind, env: &HookEnv) -> HookOutcome {
        let started_at_ms = now_ms();
        let Some(cmd) = self.command(kind) else {
            return HookOutcome {
                kind,
                ran: false,
                ok: true,
                exit_code: None,
                timed_out: false,
                duration_ms: 0,
                started_at_ms,
                output_tail: Vec::new(),
            };
        };
        tracing::info!(target: "hook", hook = kind.name(), role = %env.role, epoch = %env.epoch, "running hook");
        let t0 = Instant::now();
        let mut out = run_command(kind, cmd, env, self.hooks.timeout).await;
        out.started_at_ms = started_at_ms;
        out.duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        if out.ok {
            tracing::info!(target: "hook", hook = kind.name(), duration_ms = out.duration_ms, "hook succeeded");
        } else if out.timed_out {
            tracing::warn!(target: "hook", hook = kind.name(), duration_ms = out.duration_ms,
                timeout_ms = self.hooks.timeout.as_millis() as u64,
                "hook ran past its time limit; its process group was killed");
        } else {
            tracing::warn!(target: "hook", hook = kind.name(), exit_code = ?out.exit_code,
                duration_ms = out.duration_ms, "hook failed");
        }
        match self.last.lock() {
            Ok(mut l) => l[kind.index()] = Some(out.clone()),
            Err(p) => p.into_inner()[kind.index()] = Some(out.clone()),
        }
        out
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Kills a hook's process group with SIGKILL when dropped while armed: the
/// hook's future may be cancelled mid-run, and its processes must not
/// outlive it. Disarmed once the shell has been reaped (its pid, hence the
/// group id, could then be reused).
struct GroupGuard {
    pgid: Option<rustix::process::Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (the group is already gone) is fine.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The output lines seen so far (only the last few are kept).
type Tail = Arc<Mutex<VecDeque<String>>>;

fn push_line(tail: &Tail, kind: HookKind, stream: &'static str, bytes: &[u8]) {
    let mut line = String::from_utf8_lossy(bytes).into_owned();
    if line.ends_with('\r') {
        line.pop();
    }
    tracing::info!(target: "hook", hook = kind.name(), stream, "{line}");
    let mut t = match tail.lock() {
        Ok(t) => t,
        Err(p) => p.into_inner(),
    };
    if t.len() == OUTPUT_TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line);
}

/// Read a stream to its end, one line at a time, never holding more than
/// one (bounded) line in memory.
async fn pump<R: AsyncRead + Unpin>(mut r: R, kind: HookKind, stream: &'static str, tail: Tail) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let mut overlong = false;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                push_line(&tail, kind, stream, &line);
                line.clear();
                overlong = false;
            } else if line.len() < MAX_LINE_BYTES {
                line.push(b);
            } else if !overlong {
                overlong = true;
                line.extend_from_slice("…".as_bytes());
            }
        }
    }
    if !line.is_empty() {
        push_line(&tail, kind, stream, &line);
    }
}

async fn run_command(kind: HookKind, cmd: &str, env: &HookEnv, timeout: Duration) -> HookOutcome {
    let failed = |why: String| HookOutcome {
        kind,
        ran: true,
        ok: false,
        exit_code: None,
        timed_out: false,
        duration_ms: 0,
        started_at_ms: 0,
        output_tail: vec![why],
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("UNDERSTUDY_MEMBER", env.member.as_str())
        .env("UNDERSTUDY_ROLE", env.role.as_str())
        .env("UNDERSTUDY_EPOCH", env.epoch.0.to_string())
        .env(
            "UNDERSTUDY_ACTIVE",
            env.active.as_ref().map_or("", MemberId::as_str),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can kill everything it
        // started, not only the shell.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(target: "hook", hook = kind.name(), error = %e, "cannot start hook");
            return failed(format!("cannot start `sh -c`: {e}"));
        }
    };
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw),
    };
    let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_LINES)));
    let mut readers = Vec::with_capacity(2);
    if let Some(o) = child.stdout.take() {
        readers.push(tokio::spawn(pump(o, kind, "stdout", tail.clone())));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(tokio::spawn(pump(e, kind, "stderr", tail.clone())));
    }

    let mut timed_out = false;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            timed_out = true;
            guard.kill();
            match tokio::time::timeout(REAP_LIMIT, child.wait()).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::other(
                    "the hook's shell did not end after SIGKILL",
                )),
            }
        }
    };
    // Reaped (or given up on): the group id may be reused from here on.
    guard.pgid = None;

    // The output ends when every process holding the pipes has ended; a
    // background process the hook left behind may hold them longer.
    let drain = async {
        for r in &mut readers {
            let _ = r.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        for r in &readers {
            r.abort();
        }
        tracing::debug!(target: "hook", hook = kind.name(),
            "a process the hook left running still holds its output; no longer reading it");
    }
    let output_tail: Vec<String> = match tail.lock() {
        Ok(t) => t.iter().cloned().collect(),
        Err(p) => p.into_inner().iter().cloned().collect(),
    };
    let (exit_code, wait_error) = match status {
        Ok(s) => (s.code(), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut output_tail = output_tail;
    if let Some(e) = wait_error {
        output_tail.push(format!("cannot wait for the hook: {e}"));
    }
    HookOutcome {
        kind,
        ran: true,
        ok: !timed_out && exit_code == Some(0),
        exit_code: if timed_out { None } else { exit_code },
        timed_out,
        duration_ms: 0,
        started_at_ms: 0,
        output_tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            member: MemberId::new("b"),
            role: Role::Active,
            epoch: Epoch(7),
            active: Some(MemberId::new("b")),
        }
    }

    fn runner(kind: HookKind, cmd: &str, timeout_ms: u64) -> HookRunner {
        let mut h = Hooks {
            timeout: Duration::from_millis(timeout_ms),
            ..Hooks::default()
        };
        let c = Some(cmd.to_string());
        match kind {
            HookKind::OnPromote => h.on_promote = c,
            HookKind::OnDemote => h.on_demote = c,
            HookKind::OnFence => h.on_fence = c,
        }
        HookRunner::new(h)
    }

    #[tokio::test]
    async fn environment_is_passed_and_success_reported() {
        let r = runner(
            HookKind::OnPromote,
            r#"printf '%s|%s|%s|%s\n' "$UNDERSTUDY_MEMBER" "$UNDERSTUDY_ROLE" "$UNDERSTUDY_EPOCH" "$UNDERSTUDY_ACTIVE""#,
            10_000,
        );
        let o = r.run(HookKind::OnPromote, &env()).await;
        assert!(o.ran && o.ok && !o.timed_out, "{o:?}");
        assert_eq!(o.exit_code, Some(0));
        assert_eq!(o.output_tail, vec!["b|active|7|b".to_string()]);
        assert_eq!(r.last(HookKind::OnPromote), Some(o));
        assert_eq!(r.last(HookKind::OnFence), None);

        let r = runner(HookKind::OnFence, r#"echo "[$UNDERSTUDY_ACTIVE]""#, 10_000);
        let e = HookEnv {
            active: None,
            role: Role::Fenced,
            ..env()
        };
        let o = r.run(HookKind::OnFence, &e).await;
        assert_eq!(o.output_tail, vec!["[]".to_string()], "{o:?}");
    }

    #[tokio::test]
    async fn exit_code_and_both_streams_are_reported() {
        let r = runner(
            HookKind::OnDemote,
            "echo to-out; echo to-err >&2; exit 3",
            10_000,
        );
        let o = r.run(HookKind::OnDemote, &env()).await;
        assert!(o.ran && !o.ok && !o.timed_out, "{o:?}");
        assert_eq!(o.exit_code, Some(3));
        let mut lines = o.output_tail.clone();
        lines.sort();
        assert_eq!(lines, vec!["to-err".to_string(), "to-out".to_string()]);
        assert_eq!(
            r.last(HookKind::OnDemote).map(|l| l.exit_code),
            Some(Some(3))
        );
    }

    #[tokio::test]
    async fn output_tail_keeps_the_last_lines() {
        let r = runner(
            HookKind::OnPromote,
            "i=1; while [ $i -le 50 ]; do echo line$i; i=$((i+1)); done; printf 'no newline'",
            10_000,
        );
        let o = r.run(HookKind::OnPromote, &env()).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.output_tail.len(), OUTPUT_TAIL_LINES);
        assert_eq!(o.output_tail.last().map(String::as_str), Some("no newline"));
        assert_eq!(o.output_tail[0], "line42");
    }

    #[tokio::test]
    async fn unconfigured_hook_does_not_run() {
        let r = HookRunner::new(Hooks {
            timeout: Duration::from_secs(1),
            ..Hooks::default()
        });
        for kind in HookKind::ALL {
            let o = r.run(kind, &env()).await;
            assert!(!o.ran && o.ok, "{o:?}");
            assert_eq!(o.exit_code, None);
            assert!(o.output_tail.is_empty());
            assert_eq!(r.last(kind), None);
        }
    }

    #[tokio::test]
    async fn a_command_that_cannot_run_is_a_failure() {
        let r = runner(HookKind::OnFence, "/nonexistent/understudy-hook", 10_000);
        let o = r.run(HookKind::OnFence, &env()).await;
        assert!(o.ran && !o.ok, "{o:?}");
        assert_eq!(o.exit_code, Some(127), "sh's 'not found' status");
    }

    /// The state letter of a process in /proc, or `None` once it is gone.
    fn proc_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed_with_its_group_at_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sh_pid = dir.path().join("sh.pid");
        let sleep_pid = dir.path().join("sleep.pid");
        let cmd = format!(
            "echo $$ > '{}'; sleep 30 & echo $! > '{}'; echo started; wait",
            sh_pid.display(),
            sleep_pid.display()
        );
        let r = runner(HookKind::OnPromote, &cmd, 300);
        let t0 = Instant::now();
        let o = r.run(HookKind::OnPromote, &env()).await;
        let took = t0.elapsed();
        assert!(o.ran && !o.ok && o.timed_out, "{o:?}");
        assert_eq!(o.exit_code, None);
        assert_eq!(o.output_tail, vec!["started".to_string()]);
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(o.duration_ms >= 300, "{o:?}");
        let read = |p: &std::path::Path| -> u32 {
            std::fs::read_to_string(p)
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid")
        };
        // Our own child, the shell, is reaped: not even a zombie is left.
        let sh = read(&sh_pid);
        assert_eq!(proc_state(sh), None, "the hook's shell {sh} is left behind");
        // The sleep was in the hook's group, so it was killed too; its new
        // parent (init) reaps it, which may take a moment.
        let sleep = read(&sleep_pid);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match proc_state(sleep) {
                None | Some('Z') => break,
                Some(s) if Instant::now() > deadline => {
                    panic!("the hook's sleep {sleep} still runs (state {s})")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert_eq!(r.last(HookKind::OnPromote).map(|l| l.timed_out), Some(true));
    }
}
