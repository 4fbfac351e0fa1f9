//! WAL checkpoints off the apply path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold: on a passive that is the applier's commit, which then waits
//! for the checkpoint's writes and fsyncs (measured: a lag peak every
//! ~300 ms at 1,000 changes/s). The agent's writer connection therefore has
//! automatic checkpoints off, and this thread checkpoints on a connection of
//! its own: `PASSIVE` (never waits for the writer's lock) whenever the WAL
//! holds frames, `TRUNCATE` when it has grown past a hard limit, so the WAL
//! stays bounded.
//!
//! Owns: one background thread per open store and its connection.
//! Must never: hold a lock the writer needs for longer than a checkpoint
//! step, or outlive the store (it stops once the store is dropped).

use rusqlite::Connection;
use std::sync::Weak;
use std::time::Duration;

/// How often the checkpointer looks at the WAL.
pub const EVERY: Duration = Duration::from_millis(100);
/// WAL frames after which a checkpoint also truncates the WAL file (it
/// waits for the writer then, briefly): about 40 MB with 4 KiB pages.
pub const HARD_LIMIT_FRAMES: i64 = 10_000;

/// Start the checkpointer for the store that `alive` belongs to; it stops
/// once `alive` can no longer be upgraded.
pub fn start<T: Send + Sync + 'static>(conn: Connection, alive: Weak<T>) {
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while alive.strong_count() > 0 {
                std::thread::sleep(EVERY);
                if let Err(e) = step(&conn) {
                    tracing::debug!(error = %e, "WAL checkpoint step failed; retrying");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the WAL checkpointer; the WAL is checkpointed when the agent restarts");
    }
}

/// One checkpoint: PASSIVE, or TRUNCATE past the hard limit. Returns the
/// WAL's frame count before it.
pub fn step(conn: &Connection) -> rusqlite::Result<i64> {
    let (_busy, frames, _done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if frames > HARD_LIMIT_FRAMES {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_db(dir: &std::path::Path) -> (Connection, Connection) {
        let p = dir.join("t.db");
        let w = Connection::open(&p).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = OFF;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        let c = Connection::open(&p).unwrap();
        (w, c)
    }

    fn write(w: &Connection, n: usize) {
        w.execute_batch("BEGIN").unwrap();
        for i in 0..n {
            w.execute(
                "INSERT OR REPLACE INTO t (k, v) VALUES (?1, zeroblob(3000))",
                [i as i64],
            )
            .unwrap();
        }
        w.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_passive_step_checkpoints_what_the_writer_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = wal_db(dir.path());
        write(&w, 200);
        let frames = step(&c).unwrap();
        assert!(frames >= 200, "the writer left its frames: {frames}");
        // Everything was copied back: a PASSIVE step now has nothing to do.
        let (_, log, done): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(log, done);
        // The writer restarts the WAL from its beginning on its next commit.
        write(&w, 1);
        assert!(step(&c).unwrap() < 10);
    }

    #[test]
    fn past_the_hard_limit_the_wal_file_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = wal_db(dir.path());
        // A reader holding an old snapshot keeps the WAL from restarting,
        // so it grows past the limit.
        let r = Connection::open(dir.path().join("t.db")).unwrap();
        r.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
        write(&w, (HARD_LIMIT_FRAMES + 500) as usize);
        r.execute_batch("COMMIT").unwrap();
        let wal = dir.path().join("t.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 10_000_000);
        assert!(step(&c).unwrap() > HARD_LIMIT_FRAMES);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "truncated");
    }
}
