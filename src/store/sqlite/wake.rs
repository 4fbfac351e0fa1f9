//! Commit wake-ups for an SQLite member database, without busy polling.
//!
//! Owns: a file-system watch on the database's folder (events on the database
//! and its `-wal` file are *hints*: they fire for uncommitted frames and
//! checkpoints too) and a dedicated connection whose `PRAGMA data_version`
//! confirms that another connection committed.
//! Must never: report a commit it has not confirmed with `data_version`, or
//! spin: with no file activity it sleeps until the caller's timeout.
//!
//! On Linux the watch is a one-shot inotify watch, armed only while someone
//! waits: it fires once and is gone. A permanent watch costs every writer of
//! the database a wake-up of the watching thread for every page it writes
//! (measured: ~10% of an application writer's CPU and most of the active
//! agent's at 11,000 commits/s, three WAL pages each), while the agent,
//! busy shipping, does not even need the hints. Elsewhere a permanent
//! watch through `notify` gives the same hints at that cost.

use super::err;
use crate::store::{StoreError, StoreResult};
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct CommitWaiter {
    /// `None` when the folder cannot be watched (then only the timeout wakes
    /// the waiter).
    hints: Option<hints::Hints>,
    /// The confirming connection and the last `data_version` it reported.
    probe: Arc<Mutex<(Connection, i64)>>,
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

impl CommitWaiter {
    /// Watch `db`'s folder; `probe` is a connection to `db` used only here.
    pub(super) fn new(db: &Path, probe: Connection) -> StoreResult<CommitWaiter> {
        let base = data_version(&probe).map_err(err)?;
        let hints = match hints::Hints::new(db) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    db = %db.display(),
                    "cannot watch the database folder; commits are noticed by the poll timeout only"
                );
                None
            }
        };
        Ok(CommitWaiter {
            hints,
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
            // Arm for hints before checking, so a commit that lands between
            // the check and the sleep still raises one.
            if let Some(h) = &self.hints {
                h.arm();
            }
            if self.committed().await? {
                return Ok(true);
            }
            let hinted = async {
                match &self.hints {
                    Some(h) => h.fired().await,
                    None => std::future::pending().await,
                }
            };
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

    /// Watches armed right now (Linux; tests check that none stays armed
    /// while nobody waits).
    #[cfg(all(test, target_os = "linux"))]
    pub(super) fn armed_watches(&self) -> usize {
        self.hints.as_ref().map_or(0, |h| h.armed_watches())
    }
}

/// Follow-up checks after a hint (ms): catches the commit a hint announced
/// within about a millisecond, and costs a handful of queries per burst of
/// file activity, none while the database is idle.
const SETTLE_MS: [u64; 6] = [1, 2, 4, 8, 16, 32];

/// The folder to watch for `db`.
fn folder(db: &Path) -> &Path {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(target_os = "linux")]
mod hints {
    //! A one-shot inotify watch on the database folder.

    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};
    use tokio::io::unix::AsyncFd;

    pub(super) struct Hints {
        fd: AsyncFd<OwnedFd>,
        folder: PathBuf,
    }

    const MASK: WatchFlags = WatchFlags::MODIFY
        .union(WatchFlags::CREATE)
        .union(WatchFlags::MOVED_TO)
        .union(WatchFlags::ONESHOT);

    impl Hints {
        pub(super) fn new(db: &Path) -> std::io::Result<Hints> {
            let folder = super::folder(db).to_path_buf();
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            // Fails now, with the folder named in the warning, rather than
            // at every wait.
            inotify::add_watch(&fd, &folder, MASK)?;
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(std::io::Error::other("no tokio runtime to watch from"));
            }
            // SAFETY: `register` needs the descriptor to stay open and the
            // same for the AsyncFd's whole life; an `OwnedFd` moved into it
            // is closed only when the AsyncFd drops it.
            let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
            Ok(Hints { fd, folder })
        }

        /// The next change in the folder raises one event. Re-arming an
        /// armed watch just keeps it. A failure (the folder went away)
        /// leaves the waiter to its timeout.
        pub(super) fn arm(&self) {
            if let Err(e) = inotify::add_watch(self.fd.get_ref(), &self.folder, MASK) {
                tracing::debug!(error = %e, folder = %self.folder.display(), "cannot re-arm the folder watch");
            }
        }

        /// Until an event arrives; consumes every queued event.
        pub(super) async fn fired(&self) {
            let mut buf = [0u8; 4096];
            loop {
                let Ok(mut ready) = self.fd.readable().await else {
                    return std::future::pending().await;
                };
                let mut got = false;
                loop {
                    match rustix::io::read(self.fd.get_ref(), &mut buf) {
                        Ok(n) if n > 0 => got = true,
                        Err(rustix::io::Errno::INTR) => {}
                        _ => break,
                    }
                }
                ready.clear_ready();
                if got {
                    return;
                }
            }
        }

        #[cfg(test)]
        pub(super) fn armed_watches(&self) -> usize {
            use std::os::fd::AsRawFd;
            let info = format!("/proc/self/fdinfo/{}", self.fd.get_ref().as_raw_fd());
            std::fs::read_to_string(info)
                .map(|s| s.lines().filter(|l| l.starts_with("inotify wd:")).count())
                .unwrap_or(0)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod hints {
    //! A permanent watch through `notify` on the database folder.

    use notify::{EventKind, RecursiveMode, Watcher};
    use std::ffi::OsString;
    use std::path::Path;
    use std::sync::Arc;
    use tokio::sync::Notify;

    pub(super) struct Hints {
        hint: Arc<Notify>,
        /// Kept alive for its events.
        _watcher: notify::RecommendedWatcher,
    }

    impl Hints {
        pub(super) fn new(db: &Path) -> notify::Result<Hints> {
            let name = db.file_name().unwrap_or_default().to_os_string();
            let mut wal = name.clone();
            wal.push("-wal");
            let names: [OsString; 2] = [name, wal];
            let hint = Arc::new(Notify::new());
            let h = hint.clone();
            let mut watcher =
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
                        h.notify_one();
                    }
                })?;
            watcher.watch(super::folder(db), RecursiveMode::NonRecursive)?;
            Ok(Hints {
                hint,
                _watcher: watcher,
            })
        }

        /// The watch is permanent: hints stored by `notify_one` while
        /// nobody waited wake the next wait (at worst one spurious check).
        pub(super) fn arm(&self) {}

        pub(super) async fn fired(&self) {
            self.hint.notified().await
        }
    }
}
