//! Commit wake-ups for an SQLite member database, without busy polling.
//!
//! Owns: a file-system watch on the database's folder (events on the database
//! and its `-wal` file are *hints*: inotify also fires for uncommitted frames
//! and checkpoints) and a dedicated connection whose `PRAGMA data_version`
//! confirms that another connection committed.
//! Must never: report a commit it has not confirmed with `data_version`, or
//! spin: with no file activity it sleeps until the caller's timeout.

use super::err;
use crate::store::{StoreError, StoreResult};
use notify::{EventKind, RecursiveMode, Watcher};
use rusqlite::Connection;
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

pub(super) struct CommitWaiter {
    hint: Arc<Notify>,
    /// Kept alive for its events; `None` when the watch could not be set up
    /// (then only the timeout wakes the waiter).
    _watcher: Option<notify::RecommendedWatcher>,
    /// The confirming connection and the last `data_version` it reported.
    probe: Arc<Mutex<(Connection, i64)>>,
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

impl CommitWaiter {
    /// Watch `db`'s folder; `probe` is a connection to `db` used only here.
    pub(super) fn new(db: &Path, probe: Connection) -> StoreResult<CommitWaiter> {
        let base = data_version(&probe).map_err(err)?;
        let hint = Arc::new(Notify::new());
        let watcher = match (db.parent(), db.file_name()) {
            (Some(dir), Some(name)) => {
                let mut wal = OsString::from(name);
                wal.push("-wal");
                let names = [name.to_os_string(), wal];
                let h = hint.clone();
                let made =
                    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                        let Ok(ev) = res else { return };
                        if matches!(ev.kind, EventKind::Access(_)) {
                            return;
                        }
                        if ev
                            .paths
                            .iter()
                            .any(|p| p.file_name().is_some_and(|f| names.iter().any(|n| n == f)))
                        {
                            h.notify_waiters();
                        }
                    })
                    .and_then(|mut w| {
                        let dir = if dir.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            dir
                        };
                        w.watch(dir, RecursiveMode::NonRecursive).map(|()| w)
                    });
                match made {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            db = %db.display(),
                            "cannot watch the database folder; commits are noticed by the poll timeout only"
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(CommitWaiter {
            hint,
            _watcher: watcher,
            probe: Arc::new(Mutex::new((probe, base))),
        })
    }

    /// True when another connection committed since the last check.
    async fn committed(&self) -> StoreResult<bool> {
        let probe = self.probe.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = probe
                .lock()
                .map_err(|_| StoreError::Backend("commit probe lock poisoned".into()))?;
            let v = data_version(&g.0).map_err(err)?;
            let changed = v != g.1;
            g.1 = v;
            Ok(changed)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("commit probe task failed: {e}")))?
    }

    /// Wait for a confirmed commit or the timeout (then a last check).
    pub(super) async fn wait(&self, timeout: Duration) -> StoreResult<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            // Register for hints before checking, so a hint that arrives
            // between the check and the sleep is not lost.
            let hinted = self.hint.notified();
            tokio::pin!(hinted);
            hinted.as_mut().enable();
            if self.committed().await? {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, hinted).await.is_err() {
                return self.committed().await;
            }
            // A commit writes its WAL frames (the file event) before it
            // publishes them in the shared-memory index, which raises no
            // event: look again shortly, a few times, before sleeping again.
            for ms in SETTLE_MS {
                let at = (Instant::now() + Duration::from_millis(ms)).min(deadline);
                tokio::time::sleep_until(at).await;
                if self.committed().await? {
                    return Ok(true);
                }
                if at >= deadline {
                    return Ok(false);
                }
            }
        }
    }
}

/// Follow-up checks after a hint (ms): catches the commit a hint announced
/// within about a millisecond, and costs a handful of queries per burst of
/// file activity, none while the database is idle.
const SETTLE_MS: [u64; 6] = [1, 2, 4, 8, 16, 32];
