//! PostgreSQL for tests: a database per test, on `DATABASE_URL` when it is
//! set, otherwise on a private throw-away server started from the local
//! PostgreSQL binaries (one per test process, plus private ones for tests
//! that stop or restart their server).
//!
//! Owns: server processes started by tests, their data directories, and the
//! test databases created on them.
//! Must never: use a server someone started by hand (only `DATABASE_URL`
//! names one), or leave a server or a data directory behind. Statics are
//! never dropped, so each server runs under a small `sh` wrapper whose stdin
//! is a pipe held by the test process: when the process ends, however it
//! ends, the pipe closes, the wrapper's `read` returns, and the wrapper stops
//! PostgreSQL (fast shutdown) and removes the directory.
//!
//! The binaries refuse to run as root; as root the wrapper and `initdb` run as
//! the `postgres` user (`runuser`), with the directory chowned to it.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser the private servers are initialised with (trust auth).
pub const SUPERUSER: &str = "postgres";

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The wrapper. Commands on stdin: `stop fast`, `stop immediate`, `start`;
/// each answers one line on stdout. EOF: stop and remove the directory.
const WRAPPER: &str = r#"
set -u
bin=$1; dir=$2; port=$3
running=0
start() {
  "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c shared_buffers=16MB -c max_connections=400 \
    -c logging_collector=off -c log_min_messages=warning \
    >>"$dir/server.log" 2>&1 </dev/null &
  pid=$!
  running=1
  echo "started"
}
stop() {
  if [ "$running" = 1 ]; then
    kill -"$1" "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    running=0
  fi
  echo "stopped"
}
start
while read -r cmd; do
  case "$cmd" in
    "stop fast") stop INT ;;
    "stop immediate") stop QUIT ;;
    "start") if [ "$running" = 1 ]; then echo "started"; else start; fi ;;
    *) echo "unknown" ;;
  esac
done
stop INT >/dev/null
rm -rf "$dir"
"#;

/// How to stop a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back open transactions, disconnect clients, checkpoint.
    Fast,
    /// SIGQUIT: stop at once, crash recovery on the next start (like a crash).
    Immediate,
}

/// Where the PostgreSQL server binaries live: `$UNDERSTUDY_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else `PATH`.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("UNDERSTUDY_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok();
            let bin = e.path().join("bin");
            if let Some(v) = v
                && bin.join("initdb").exists()
                && best.as_ref().is_none_or(|(b, _)| v > *b)
            {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, b)) = best {
        return Ok(b);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return Ok(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").exists() && d.join("postgres").exists() {
                return Ok(d);
            }
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, postgres) not found: install PostgreSQL, \
         set UNDERSTUDY_PG_BIN to their folder, or set DATABASE_URL"
    )
}

/// The `psql` client: next to the server binaries, else on `PATH`.
pub fn psql_bin() -> PathBuf {
    if let Ok(d) = pg_bin_dir() {
        let p = d.join("psql");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("psql")
}

fn running_as_root() -> bool {
    // The effective uid is the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command that runs as the `postgres` user when we are root.
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Outside the ephemeral range, as the cluster's ports (see there why).
fn free_port() -> Result<u16> {
    understudy::localcluster::free_port().context("choosing a free port for the server")
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A private PostgreSQL server in a temporary directory.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    proc: Mutex<Proc>,
}

impl PgServer {
    /// Initialise and start a new server (a few retries on a port race).
    pub fn start() -> Result<PgServer> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start() {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("PostgreSQL did not start")))
    }

    fn try_start() -> Result<PgServer> {
        let bin = pg_bin_dir()?;
        let root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("us-pg-")
            .tempdir()
            .context("creating the server's temp dir")?
            .keep();
        let cleanup = |e: anyhow::Error| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        if root {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .context("chown of the server dir")
                .map_err(cleanup)?;
            if !st.success() {
                return Err(cleanup(anyhow!("chown postgres {} failed", dir.display())));
            }
        }
        let out = as_server_user(&bin.join("initdb"), root)
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "--no-sync",
                "--locale=C",
                "-E",
                "UTF8",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running initdb")
            .map_err(cleanup)?;
        if !out.status.success() {
            return Err(cleanup(anyhow!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = free_port().map_err(cleanup)?;
        let mut cmd = as_server_user(Path::new("/bin/sh"), root);
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("us-pg-wrapper")
            .arg(&bin)
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C aimed at the test run must not
            // kill the wrapper before it has cleaned up.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .context("starting the server wrapper")
            .map_err(cleanup)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(cleanup(anyhow!("wrapper pipes missing")));
        };
        let server = PgServer {
            port,
            dir,
            bin,
            proc: Mutex::new(Proc {
                child,
                stdin: Some(stdin),
                stdout: BufReader::new(stdout),
            }),
        };
        // On failure, dropping `server` closes the pipe: the wrapper cleans up.
        server.expect_line("started")?;
        server.wait_ready()?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (inside its temp dir).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A URL for database `db` as the superuser.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser's maintenance database URL.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    fn send(&self, cmd: &str) -> Result<String> {
        let mut p = self
            .proc
            .lock()
            .map_err(|_| anyhow!("server handle poisoned"))?;
        let stdin = p
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("server wrapper already closed"))?;
        writeln!(stdin, "{cmd}").context("writing to the server wrapper")?;
        stdin.flush()?;
        let mut line = String::new();
        p.stdout
            .read_line(&mut line)
            .context("reading from the server wrapper")?;
        Ok(line.trim().to_string())
    }

    fn expect_line(&self, want: &str) -> Result<()> {
        let mut p = self
            .proc
            .lock()
            .map_err(|_| anyhow!("server handle poisoned"))?;
        let mut line = String::new();
        p.stdout.read_line(&mut line)?;
        if line.trim() != want {
            bail!("server wrapper said {:?}, expected {want:?}", line.trim());
        }
        Ok(())
    }

    /// Wait until the server accepts connections.
    pub fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let isready = self.bin.join("pg_isready");
        loop {
            let ok = Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-U", SUPERUSER, "-t", "1", "-p"])
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                bail!(
                    "PostgreSQL on port {} not ready after {READY_TIMEOUT:?}; log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server (its data stays).
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        let cmd = match mode {
            StopMode::Fast => "stop fast",
            StopMode::Immediate => "stop immediate",
        };
        match self.send(cmd)?.as_str() {
            "stopped" => Ok(()),
            other => bail!("server wrapper said {other:?} to {cmd}"),
        }
    }

    /// Start a stopped server again and wait until it accepts connections.
    pub fn start_again(&self) -> Result<()> {
        match self.send("start")?.as_str() {
            "started" => self.wait_ready(),
            other => bail!("server wrapper said {other:?} to start"),
        }
    }

    /// Stop and start again (same port, same data).
    pub fn restart(&self, mode: StopMode) -> Result<()> {
        self.stop(mode)?;
        self.start_again()
    }

    /// A new empty database on this server.
    pub fn create_database(&self, hint: &str) -> Result<TestDb> {
        TestDb::create(&self.admin_url(), hint)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Ok(mut p) = self.proc.lock() {
            // EOF on the wrapper's stdin: it stops the server and removes
            // the directory. Wait (bounded) so the directory is gone when
            // the server handle is.
            drop(p.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

/// The server this test process shares between its tests (started on first
/// use, stopped when the process ends).
pub fn shared_server() -> Result<&'static PgServer> {
    static SERVER: OnceLock<std::result::Result<PgServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| PgServer::start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("starting the test PostgreSQL server: {e}"))
}

/// A database created for one test and dropped when this value is.
pub struct TestDb {
    /// Connection URL of the test database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

/// Replace the database name (the URL's path) of a `postgres://` URL.
pub fn with_database(url: &str, db: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("not a URL: {}", understudy::config::redact_url(url)))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

fn unique_name(hint: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let clean: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!(
        "us_{clean}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run SQL with psql against `url`; stdout on success, stderr on failure.
pub fn psql_run(url: &str, sql: &str) -> Result<String> {
    let out = psql_command(url)
        .args(["-A", "-t", "-c", sql])
        .output()
        .context("running psql")?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// `psql URL -X -q -v ON_ERROR_STOP=1`: the application writing from
/// another process. Add `-c SQL` or feed a script on stdin.
pub fn psql_command(url: &str) -> Command {
    let mut c = Command::new(psql_bin());
    c.arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::null());
    c
}

impl TestDb {
    /// Create a database named after `hint` through the admin URL.
    pub fn create(admin_url: &str, hint: &str) -> Result<TestDb> {
        let name = unique_name(hint);
        psql_run(admin_url, &format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("creating test database {name}"))?;
        Ok(TestDb {
            url: with_database(admin_url, &name)?,
            name,
            admin_url: admin_url.to_string(),
        })
    }

    /// A psql command for this database (see [`psql_command`]).
    pub fn psql(&self) -> Command {
        psql_command(&self.url)
    }

    /// Run SQL in this database with psql, as the application would.
    pub fn psql_run(&self, sql: &str) -> Result<String> {
        psql_run(&self.url, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort: the server may have been stopped by the test, in which
        // case its directory goes away with it.
        let _ = psql_run(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// A fresh database for one test: on `DATABASE_URL` when set, else on this
/// process's private server.
pub fn test_database_blocking(hint: &str) -> Result<TestDb> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => TestDb::create(&url, hint),
        _ => shared_server()?.create_database(hint),
    }
}

/// Async form of [`test_database_blocking`] (server start-up and `CREATE
/// DATABASE` block, so they run off the async worker).
pub async fn test_database(hint: &str) -> Result<TestDb> {
    let hint = hint.to_string();
    tokio::task::spawn_blocking(move || test_database_blocking(&hint))
        .await
        .map_err(|e| anyhow!("test database task failed: {e}"))?
}
