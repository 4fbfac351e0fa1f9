//! Watching SQLite members' fences from outside the agents: which member
//! databases would accept an application write right now, sampled all
//! through a test, so "never two writable databases at once" is checked
//! between the faults and not only after them.
//!
//! Two probes, both read from the databases themselves (never from the
//! agents' own reports):
//! - every ~5 ms, each member's state row (`us_state`: role, lease end),
//!   judged as the fence trigger judges it (`role = 'active'` and the lease
//!   not run out), against one clock reading taken after all rows were
//!   read: a lease still valid at the instant another member was seen
//!   active is an overlap. Reads never wait for SQLite's write lock (WAL).
//! - every ~50 ms, an application insert on each database, rolled back at
//!   once: the ground truth the state rows stand for.
//!
//! Owns: one sampling thread and its connections.
//! Must never: write anything that stays (the insert is always rolled
//! back), hold a lock for longer than one probe, or outlive its value
//! (dropping it stops the thread).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether the SQLite database at `path` takes an application write now:
/// an insert that is rolled back at once. Someone else's write lock counts
/// as "not now" after a short wait, so a probe round stays short.
pub fn accepts_writes(path: &Path) -> bool {
    let Ok(mut c) = rusqlite::Connection::open(path) else {
        return false;
    };
    if c.busy_timeout(Duration::from_millis(100)).is_err() {
        return false;
    }
    let Ok(tx) = c.transaction() else {
        return false;
    };
    let ok = tx
        .execute(
            "INSERT INTO projects (name, description, config) VALUES ('probe', 'rolled back', '{}')",
            [],
        )
        .is_ok();
    let _ = tx.rollback();
    ok
}

/// What the watch saw.
#[derive(Debug, Default)]
pub struct FenceReport {
    /// Rounds of state-row reads.
    pub reads: u64,
    /// Rounds of insert probes.
    pub probes: u64,
    /// Every round in which more than one database was writable, as
    /// `"<seconds since t0>s <which probe>: <members and their state>"`.
    pub overlaps: Vec<String>,
}

/// A running watch; [`FenceWatch::finish`] stops it and returns the report.
pub struct FenceWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<FenceReport>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One member's state row: (role, epoch, lease_until).
fn state_row(c: &rusqlite::Connection) -> Option<(String, i64, Option<i64>)> {
    c.query_row(
        "SELECT role, epoch, lease_until FROM us_state WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .ok()
}

impl FenceWatch {
    /// Watch the databases of `members` (id, SQLite file) until finished,
    /// reading the state rows every ~5 ms.
    pub fn start(members: Vec<(String, PathBuf)>, t0: Instant) -> FenceWatch {
        Self::start_every(members, t0, Duration::from_millis(5))
    }

    /// As [`FenceWatch::start`], with a pause of `every` between rounds of
    /// state-row reads (the insert probe stays at ~50 ms).
    pub fn start_every(
        members: Vec<(String, PathBuf)>,
        t0: Instant,
        every: Duration,
    ) -> FenceWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut report = FenceReport::default();
                let mut conns: Vec<Option<rusqlite::Connection>> =
                    members.iter().map(|_| None).collect();
                let mut last_probe = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let mut rows = Vec::new();
                    for ((id, path), conn) in members.iter().zip(conns.iter_mut()) {
                        if conn.is_none() {
                            *conn = rusqlite::Connection::open_with_flags(
                                path,
                                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                            )
                            .ok();
                        }
                        match conn.as_ref().and_then(state_row) {
                            Some(r) => rows.push((id.as_str(), r)),
                            None => *conn = None,
                        }
                    }
                    let now = now_ms();
                    let open: Vec<String> = rows
                        .iter()
                        .filter(|(_, (role, _, lease))| {
                            role == "active" && lease.is_none_or(|l| l >= now)
                        })
                        .map(|(id, (_, epoch, lease))| {
                            format!(
                                "{id}(epoch {epoch}, lease {})",
                                lease.map_or("none".to_string(), |l| format!("+{}ms", l - now))
                            )
                        })
                        .collect();
                    report.reads += 1;
                    if open.len() > 1 {
                        report.overlaps.push(format!(
                            "{:.3}s state rows: {}",
                            t0.elapsed().as_secs_f64(),
                            open.join(", ")
                        ));
                    }
                    if last_probe.elapsed() >= Duration::from_millis(50) {
                        last_probe = Instant::now();
                        let at = t0.elapsed().as_secs_f64();
                        let open: Vec<&str> = members
                            .iter()
                            .filter(|(_, p)| accepts_writes(p))
                            .map(|(m, _)| m.as_str())
                            .collect();
                        report.probes += 1;
                        if open.len() > 1 {
                            report
                                .overlaps
                                .push(format!("{at:.3}s inserts accepted by {open:?}"));
                        }
                    }
                    std::thread::sleep(every);
                }
                report
            })
        };
        FenceWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop watching; the report of the whole watch.
    pub fn finish(mut self) -> FenceReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for FenceWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
