//! Test harness shared by the black-box tests: where the `understudy` binary
//! is, member databases, workload writers that retry through fences, and
//! comparisons of members' data.
//!
//! Must never: rely on a server or process started by hand; leave a process
//! running (clusters kill theirs on drop).

pub mod fence_watch;
pub mod pg;
pub mod proxy;
pub mod scheduler;
pub mod tools;

use std::path::PathBuf;
use std::time::Duration;
use understudy::config::DatabaseUrl;
use understudy::model::{Change, ChangeOp};
use understudy::store::{AnyStore, MemberStore, StoreResult, TableChecksum};
use understudy::tables::CaptureSpec;
use understudy::workload::{AppConn, AppOp, Workload};

/// The `understudy` binary of this build (`cargo build` puts it beside the
/// test binaries' `deps` folder).
pub fn understudy_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile folder");
    let bin = dir.join("understudy");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace`), as the README's test command does",
        bin.display()
    );
    bin
}

/// A fixed seed, overridable with UNDERSTUDY_TEST_SEED; printed so a failure
/// can be replayed.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("UNDERSTUDY_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    eprintln!("seed = {s} (replay with UNDERSTUDY_TEST_SEED={s})");
    s
}

/// Write `ops` operations of the standard workload in transactions of
/// `tx_size`, retrying a refused transaction (fenced, lease ran out, locked)
/// until it commits. Returns how many transactions needed a retry.
pub async fn write_workload(
    url: &DatabaseUrl,
    w: &mut Workload,
    ops: u64,
    tx_size: usize,
) -> anyhow::Result<u64> {
    let mut app = AppConn::connect(url).await?;
    let mut retries = 0;
    let mut done = 0;
    while done < ops {
        let n = tx_size.min((ops - done) as usize);
        let batch: Vec<AppOp> = (0..n).map(|_| w.next_op()).collect();
        let mut attempts = 0;
        loop {
            match app.execute(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    attempts += 1;
                    retries += 1;
                    anyhow::ensure!(attempts < 600, "a write kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if matches!(url, DatabaseUrl::Postgres(_)) {
                        app = AppConn::connect(url).await?;
                    }
                }
            }
        }
        done += n as u64;
    }
    Ok(retries)
}

/// One member's store, opened as an agent without `[capture]` opens it
/// (the example schema).
pub async fn open_store(url: &DatabaseUrl) -> StoreResult<AnyStore> {
    AnyStore::open(url, &CaptureSpec::example()).await
}

/// Checksums of one member's application tables (the example schema).
pub async fn checksums(url: &DatabaseUrl) -> anyhow::Result<Vec<TableChecksum>> {
    Ok(open_store(url).await?.checksums().await?)
}

/// A member's whole change log (the example schema).
pub async fn change_log(url: &DatabaseUrl) -> anyhow::Result<Vec<Change>> {
    let s = open_store(url).await?;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = s.read_changes(after, 5000, 64 << 20).await?;
        let Some(last) = r.changes.last() else { break };
        after = last.pos.seq;
        out.extend(r.changes);
    }
    Ok(out)
}

/// The name of the project a change upserts (the key of `projects`), if it
/// upserts one.
pub fn upserted_project(c: &Change) -> Option<&str> {
    match &c.op {
        ChangeOp::Upsert(r) if r.table.as_str() == "projects" => r.key().first()?.as_text(),
        _ => None,
    }
}

/// Wait for `cond` (polled every 20 ms) or fail naming what was awaited.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a SQLite member database takes an application write now: an
/// insert, rolled back at once (nothing is left behind). The error is the
/// database's refusal (the fence or lease message).
pub fn accepts_writes(url: &DatabaseUrl) -> Result<(), String> {
    let DatabaseUrl::Sqlite(p) = url else {
        return Err("accepts_writes probes SQLite databases only".into());
    };
    let mut c = rusqlite::Connection::open(p).map_err(|e| e.to_string())?;
    c.busy_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let tx = c.transaction().map_err(|e| e.to_string())?;
    let r = tx
        .execute(
            "INSERT INTO projects (name, description, config) VALUES ('probe', 'rolled back', '{}')",
            [],
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = tx.rollback();
    r
}

/// The members answering `GET /active` with 200 (more than one would break
/// the product's promise; callers assert it).
pub async fn actives(cl: &understudy::localcluster::LocalCluster) -> Vec<String> {
    let status: Vec<(String, String)> = cl
        .members
        .iter()
        .map(|m| (m.id.to_string(), m.status.clone()))
        .collect();
    actives_at(&status, Duration::from_millis(500)).await
}

/// The same from `(member, status address)` pairs (for loops that run
/// without the cluster at hand), each asked with `timeout`.
pub async fn actives_at(status: &[(String, String)], timeout: Duration) -> Vec<String> {
    let mut out = Vec::new();
    for (id, addr) in status {
        if let Ok(r) =
            understudy::status::client::request(addr, "GET", "/active", None, None, timeout).await
            && r.code == 200
        {
            out.push(id.clone());
        }
    }
    out
}

/// Execute `ops` in one application transaction on `url`, retrying for up
/// to 30 s while the member refuses (an active that has not yet regained
/// its lease after a start, a failover under way).
pub async fn execute_retrying(url: &DatabaseUrl, ops: &[AppOp]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = match AppConn::connect(url).await {
            Ok(mut app) => app.execute(ops).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                anyhow::bail!("a write kept failing for 30 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Run an operator command of the `understudy` CLI against member `via`
/// (its status address and the cluster's token are appended); it must
/// succeed. Returns what it printed.
pub fn control_cli(
    cl: &understudy::localcluster::LocalCluster,
    via: &str,
    args: &[&str],
) -> String {
    let status = cl.member(via).status.clone();
    let out = std::process::Command::new(understudy_bin())
        .args(args)
        .args(["--url", &status, "--token", &cl.options.token])
        .output()
        .expect("run understudy");
    assert!(
        out.status.success(),
        "understudy {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
