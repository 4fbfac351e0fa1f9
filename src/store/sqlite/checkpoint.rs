//! WAL checkpoints off the apply path, with WAL restarts that cost the
//! applier as little as possible.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold: on a passive that is the applier's commit, which then waits
//! for the checkpoint's writes and fsyncs (measured: a lag peak every
//! ~300 ms at 1,000 changes/s). The agent's writer connection therefore has
//! automatic checkpoints off, and this thread checkpoints on a connection of
//! its own.
//!
//! A checkpoint alone does not shrink the WAL: SQLite starts writing the
//! WAL from its beginning again only when a write transaction begins while
//! every frame is already copied back. Under a steady stream of applies
//! that moment never comes by itself (each checkpoint takes longer than the
//! gap between two commits), so the WAL used to grow to the hard limit and
//! the `TRUNCATE` there stalled the applier for 100+ ms (measured: three
//! such stalls per 10 s at 1,000 changes/s were the whole lag p99). So once
//! the WAL is long, a turn copies the bulk with a `PASSIVE` checkpoint while
//! the applier goes on, then holds the store's writer (the applier waits
//! in-process, not in SQLite's coarse busy sleeps) just long enough to copy
//! the few frames written meanwhile: the next write transaction restarts
//! the WAL. Every checkpoint fsyncs twice, and fsyncs are what the disk is
//! slowest at under load, so short WALs are left alone: the writer's commit
//! hook says how long the WAL is, and nothing happens below
//! `RESTART_FRAMES`.
//!
//! Owns: one background thread per open store and its connection.
//! Must never: hold the writer for more than one small checkpoint step, or
//! outlive the store (it stops once the store is dropped).

use rusqlite::Connection;
use std::sync::Weak;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// How often the checkpointer looks at the WAL's length.
pub const EVERY: Duration = Duration::from_millis(50);
/// WAL frames from which a turn checkpoints and restarts the WAL: about
/// 16 MB with 4 KiB pages, about a second of applies at 1,000 changes/s.
/// Fewer restarts mean fewer (short) pauses of the applier.
pub const RESTART_FRAMES: i64 = 4_000;
/// WAL frames after which a checkpoint also truncates the WAL file (it waits
/// for readers then): about 40 MB with 4 KiB pages. Reached only when
/// readers keep the WAL from restarting.
pub const HARD_LIMIT_FRAMES: i64 = 10_000;
/// How long a truncating checkpoint waits for readers (it holds the
/// store's writer meanwhile: lease renewals and applies wait too).
pub const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

/// The WAL's length in frames as the writer's last commit saw it; `UNKNOWN`
/// until then (a store opened on a long WAL checkpoints at once).
#[derive(Debug)]
pub struct WalLength(AtomicI64);

impl WalLength {
    pub const UNKNOWN: i64 = i64::MAX;

    pub fn new() -> WalLength {
        WalLength(AtomicI64::new(Self::UNKNOWN))
    }

    /// Record the length a commit reported (the writer's WAL hook).
    pub fn committed(&self, frames: i64) {
        self.0.store(frames, Ordering::Relaxed);
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one checkpoint reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wal {
    /// Frames in the WAL.
    pub frames: i64,
    /// Frames copied back into the database file.
    pub copied: i64,
}

fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Wal> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Wal {
            frames: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

/// Start the checkpointer of the store `inner`; it stops once the store is
/// dropped.
pub(super) fn start(conn: Connection, inner: Weak<super::Inner>) {
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EVERY);
                let Some(store) = inner.upgrade() else { return };
                if store.wal_length.get() < RESTART_FRAMES {
                    continue;
                }
                // A poisoned writer lock means a panic elsewhere: leave the
                // WAL alone rather than copy a half-known state.
                match turn(&conn, || store.writer.lock().ok()) {
                    // Until the writer's next commit says otherwise.
                    Ok(_) => store.wal_length.committed(0),
                    Err(e) => {
                        tracing::debug!(error = %e, "WAL checkpoint failed; retrying")
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the WAL checkpointer; the WAL is checkpointed when the agent restarts");
    }
}

/// One turn: copy back what the WAL holds; past `RESTART_FRAMES`, finish
/// under the writer (`hold_writes`) so that the WAL restarts; past
/// `HARD_LIMIT_FRAMES` (readers kept it from restarting), truncate it.
/// Returns the WAL as the first checkpoint found it.
pub fn turn<G>(conn: &Connection, hold_writes: impl FnOnce() -> G) -> rusqlite::Result<Wal> {
    let mut bulk = checkpoint(conn, "PASSIVE")?;
    if bulk.frames < 0 {
        // SQLite reports -1 on a connection that has not yet seen the
        // database in WAL mode: one opened before `init` switched it. A read
        // makes it look at the file's header again.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        bulk = checkpoint(conn, "PASSIVE")?;
    }
    if bulk.frames >= RESTART_FRAMES {
        let _writes_held = hold_writes();
        let rest = checkpoint(conn, "PASSIVE")?;
        if rest.frames > HARD_LIMIT_FRAMES {
            checkpoint(conn, "TRUNCATE")?;
        }
    }
    Ok(bulk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn wal_db(dir: &std::path::Path) -> (Connection, Connection) {
        let p = dir.join("t.db");
        let w = Connection::open(&p).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = OFF;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        // The checkpointer syncs, as the store's does: its checkpoints are
        // slower than the writer's commits.
        let c = Connection::open(&p).unwrap();
        c.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
        (w, c)
    }

    fn write(w: &Connection, first: usize, n: usize) {
        w.execute_batch("BEGIN").unwrap();
        for i in first..first + n {
            w.execute(
                "INSERT OR REPLACE INTO t (k, v) VALUES (?1, zeroblob(3000))",
                [i as i64],
            )
            .unwrap();
        }
        w.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_turn_copies_back_what_the_writer_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = wal_db(dir.path());
        write(&w, 0, 200);
        let wal = turn(&c, || ()).unwrap();
        assert!(wal.frames >= 200, "the writer left its frames: {wal:?}");
        assert_eq!(wal.frames, wal.copied, "nothing kept it from copying");
        // The writer restarts the WAL from its beginning on its next commit.
        write(&w, 0, 1);
        assert!(turn(&c, || ()).unwrap().frames < 10);
    }

    #[test]
    fn a_connection_opened_before_wal_mode_still_checkpoints() {
        // The store opens its checkpointer before `init` switches a new
        // database to WAL mode.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        let early = Connection::open(&p).unwrap();
        let (w, _) = wal_db(dir.path());
        write(&w, 0, 50);
        let wal = turn(&early, || ()).unwrap();
        assert!(wal.frames >= 50, "{wal:?}");
        assert_eq!(wal.frames, wal.copied);
    }

    #[test]
    fn under_a_steady_stream_of_commits_the_wal_keeps_restarting() {
        // The applier commits back to back on the store's writer while the
        // checkpointer turns. Without the pause under the writer the WAL
        // never restarts (each checkpoint is slower than the gap between two
        // commits) and only the hard limit's truncation bounds it.
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = wal_db(dir.path());
        let writer = Arc::new(Mutex::new(w));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (wr, st) = (writer.clone(), stop.clone());
        let applier = std::thread::spawn(move || {
            let mut i = 0;
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                write(&wr.lock().unwrap(), i % 5_000, 3);
                i += 3;
                // The applier waits for the next batch between commits
                // (std's mutex is not fair: without a gap this loop could
                // keep the checkpointer from ever taking it).
                std::thread::sleep(Duration::from_micros(50));
            }
            i
        });
        let mut seen = Vec::new();
        let mut restarts = 0;
        let mut last = 0;
        while restarts < 3 && seen.len() < 20_000 {
            let wal = turn(&c, || writer.lock().unwrap()).unwrap();
            if wal.frames < last {
                restarts += 1;
            }
            last = wal.frames;
            seen.push(wal.frames);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rows = applier.join().unwrap();
        let max = seen.iter().copied().max().unwrap_or(0);
        assert!(
            restarts >= 3,
            "the WAL restarted {restarts} times over {} turns ({rows} rows; largest {max} frames)",
            seen.len()
        );
        assert!(
            max < HARD_LIMIT_FRAMES,
            "the WAL reached {max} frames: it restarted only by truncation"
        );
    }

    #[test]
    fn past_the_hard_limit_the_wal_file_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = wal_db(dir.path());
        // A reader holding an old snapshot keeps the WAL from restarting,
        // so it grows past the limit.
        let r = Connection::open(dir.path().join("t.db")).unwrap();
        r.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
        write(&w, 0, (HARD_LIMIT_FRAMES + 500) as usize);
        r.execute_batch("COMMIT").unwrap();
        let wal = dir.path().join("t.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 10_000_000);
        assert!(turn(&c, || ()).unwrap().frames > HARD_LIMIT_FRAMES);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "truncated");
    }
}
