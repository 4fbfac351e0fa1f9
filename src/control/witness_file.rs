//! A witness's durable controller state (epoch, active, vote, pause) in one
//! small file, replaced atomically on every change.
//!
//! Owns: the file format (a header line with a format version and the
//! SHA-256 of the body, then a JSON body), the atomic write (temp file in the
//! same folder, write, fsync, rename, fsync the folder), and the
//! [`ControlStore`] of a witness.
//! Must never: panic on a damaged or foreign file (it is a clear error that
//! names the file), or let a half-written file be read as state (readers only
//! ever see the old or the new file whole; a temp file left by a crash is
//! ignored).

use super::PersistedState;
use super::driver::{ControlStore, ControlStoreError};
use crate::model::{Epoch, MemberId, Position, Role};
use crate::store::{EpochRecord, Vote};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "understudy-witness";
/// Nothing this small file legitimately holds comes near this.
const MAX_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WitnessFileError {
    #[error("witness state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "witness state file {path} is damaged ({reason}); restore it or move it aside to start the witness with no vote"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "witness state file {path} has format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnknownVersion { path: PathBuf, found: u32 },
    #[error("writing the witness state file was interrupted: {0}")]
    Interrupted(String),
}

/// The witness's durable state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    pub epoch: Epoch,
    pub active: Option<MemberId>,
    pub vote: Option<VoteRecord>,
    pub paused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    pub epoch: Epoch,
    pub candidate: MemberId,
}

impl WitnessState {
    /// The state of a witness that has never run: the configured initial
    /// active at epoch 0.
    pub fn initial(initial_active: MemberId) -> WitnessState {
        WitnessState {
            epoch: Epoch(0),
            active: Some(initial_active),
            vote: None,
            paused: false,
        }
    }

    pub fn to_persisted(&self) -> PersistedState {
        PersistedState {
            epoch: self.epoch,
            active: self.active.clone(),
            role: Role::Witness,
            vote: self.vote.as_ref().map(|v| Vote {
                epoch: v.epoch,
                candidate: v.candidate.clone(),
            }),
            paused: self.paused,
            position: Position::ZERO,
        }
    }
}

/// Encode: `understudy-witness <version> <sha256 hex of body>\n<body>`.
pub fn encode(state: &WitnessState) -> Result<Vec<u8>, WitnessFileError> {
    let body = serde_json::to_vec(state)
        .map_err(|e| WitnessFileError::Interrupted(format!("encoding: {e}")))?;
    let digest = hex::encode(Sha256::digest(&body));
    let mut out = format!("{MAGIC} {FORMAT_VERSION} {digest}\n").into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode and check a file's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<WitnessState, WitnessFileError> {
    let corrupt = |reason: &str| WitnessFileError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header line"))?;
    let (header, body) = (&bytes[..nl], &bytes[nl + 1..]);
    let header = std::str::from_utf8(header).map_err(|_| corrupt("header is not text"))?;
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(corrupt("not a witness state file"));
    }
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("no format version"))?;
    if version != FORMAT_VERSION {
        return Err(WitnessFileError::UnknownVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let want = parts.next().ok_or_else(|| corrupt("no checksum"))?;
    if parts.next().is_some() {
        return Err(corrupt("extra fields in the header"));
    }
    if hex::encode(Sha256::digest(body)) != want {
        return Err(corrupt("checksum mismatch"));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(&format!("body: {e}")))
}

/// Read the state; a missing file is `Ok(None)` (a witness that never ran).
/// Temp files beside it are never read.
pub fn load(path: &Path) -> Result<Option<WitnessState>, WitnessFileError> {
    let io = |source| WitnessFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(WitnessFileError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{} bytes, more than any state this file holds", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode(path, &bytes).map(Some)
}

/// Replace the file atomically: a temp file in the same folder, written and
/// fsynced, renamed over the old one, then the folder fsynced so the rename
/// itself survives a power cut.
pub fn store(path: &Path, state: &WitnessState) -> Result<(), WitnessFileError> {
    let io = |source| WitnessFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = encode(state)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".witness-state.")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// The witness's [`ControlStore`]: votes, pause and the known epoch/active
/// are durable; the lease does not exist (no database) and the head is zero.
#[derive(Clone, Debug)]
pub struct WitnessFile {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    // Held across the write: one change at a time, in order.
    state: tokio::sync::Mutex<WitnessState>,
}

impl WitnessFile {
    /// Open (or start afresh, when there is no file) the witness state at
    /// `path`.
    pub fn open(path: &Path, initial_active: MemberId) -> Result<WitnessFile, WitnessFileError> {
        let state = load(path)?.unwrap_or_else(|| WitnessState::initial(initial_active));
        Ok(WitnessFile {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                state: tokio::sync::Mutex::new(state),
            }),
        })
    }

    pub async fn state(&self) -> WitnessState {
        self.inner.state.lock().await.clone()
    }

    /// Change the state and write it; the in-memory copy changes only once
    /// the file did.
    async fn update(
        &self,
        f: impl FnOnce(&mut WitnessState) + Send,
    ) -> Result<(), WitnessFileError> {
        let mut guard = self.inner.state.lock().await;
        let mut next = guard.clone();
        f(&mut next);
        if next == *guard {
            return Ok(());
        }
        let path = self.inner.path.clone();
        let to_write = next.clone();
        tokio::task::spawn_blocking(move || store(&path, &to_write))
            .await
            .map_err(|e| WitnessFileError::Interrupted(e.to_string()))??;
        *guard = next;
        Ok(())
    }
}

impl ControlStore for WitnessFile {
    async fn persist_vote(&self, vote: &Vote) -> Result<(), ControlStoreError> {
        let v = VoteRecord {
            epoch: vote.epoch,
            candidate: vote.candidate.clone(),
        };
        Ok(self.update(move |s| s.vote = Some(v)).await?)
    }
    async fn persist_epoch(&self, rec: &EpochRecord) -> Result<(), ControlStoreError> {
        let (epoch, active) = (rec.epoch, rec.active.clone());
        Ok(self
            .update(move |s| {
                if epoch >= s.epoch {
                    s.epoch = epoch;
                    s.active = Some(active);
                }
            })
            .await?)
    }
    async fn persist_paused(&self, paused: bool) -> Result<(), ControlStoreError> {
        Ok(self.update(move |s| s.paused = paused).await?)
    }
    async fn set_role(
        &self,
        _role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> Result<(), ControlStoreError> {
        // No database to fence; remember the newest active so a restarted
        // witness knows who it followed.
        let active = active.cloned();
        Ok(self
            .update(move |s| {
                if epoch >= s.epoch {
                    s.epoch = epoch;
                    s.active = active;
                }
            })
            .await?)
    }
    async fn renew_lease(&self, _lease: Duration) -> Result<(), ControlStoreError> {
        Ok(())
    }
    async fn head(&self) -> Result<Position, ControlStoreError> {
        Ok(Position::ZERO)
    }
    async fn load(&self) -> Result<PersistedState, ControlStoreError> {
        Ok(self.state().await.to_persisted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WitnessState {
        WitnessState {
            epoch: Epoch(4),
            active: Some(MemberId::new("b")),
            vote: Some(VoteRecord {
                epoch: Epoch(5),
                candidate: MemberId::new("c"),
            }),
            paused: true,
        }
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.state");
        assert_eq!(load(&path).unwrap(), None);
        store(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        let mut next = sample();
        next.paused = false;
        store(&path, &next).unwrap();
        assert_eq!(load(&path).unwrap(), Some(next));
        // Only the state file remains: the temp file was renamed over it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("witness.state")]);
    }

    #[test]
    fn a_temp_file_left_by_a_crash_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.state");
        store(&path, &sample()).unwrap();
        // A crash between creating the temp file and the rename leaves a
        // partial temp file next to the intact old state.
        let partial = encode(&WitnessState::initial(MemberId::new("a"))).unwrap();
        std::fs::write(
            dir.path().join(".witness-state.XYZ.tmp"),
            &partial[..partial.len() / 2],
        )
        .unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        // And the next write still succeeds beside it.
        store(&path, &WitnessState::initial(MemberId::new("a"))).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            Some(WitnessState::initial(MemberId::new("a")))
        );
    }

    #[test]
    fn corruption_and_unknown_versions_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.state");
        let good = encode(&sample()).unwrap();

        // One flipped byte in the body.
        let mut bad = good.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, WitnessFileError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(e.to_string().contains("witness.state"), "{e}");

        // Truncated, empty, foreign, garbage.
        for bytes in [
            &good[..10],
            &b""[..],
            &b"hello world\n{}"[..],
            &[0xff, 0xfe, b'\n'][..],
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = load(&path).unwrap_err();
            assert!(matches!(e, WitnessFileError::Corrupt { .. }), "{e}");
        }

        // A newer format.
        let text = String::from_utf8(good.clone()).unwrap();
        let newer = text.replacen(" 1 ", " 2 ", 1);
        std::fs::write(&path, newer).unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            matches!(e, WitnessFileError::UnknownVersion { found: 2, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_witness_store_persists_votes_pause_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state");
        let w = WitnessFile::open(&path, MemberId::new("a")).unwrap();
        w.persist_vote(&Vote {
            epoch: Epoch(2),
            candidate: MemberId::new("b"),
        })
        .await
        .unwrap();
        w.persist_paused(true).await.unwrap();
        w.set_role(Role::Passive, Epoch(2), Some(&MemberId::new("b")))
            .await
            .unwrap();
        w.renew_lease(Duration::from_secs(1)).await.unwrap();
        assert_eq!(w.head().await.unwrap(), Position::ZERO);

        let again = WitnessFile::open(&path, MemberId::new("a")).unwrap();
        let p = again.state().await.to_persisted();
        assert_eq!(p.epoch, Epoch(2));
        assert_eq!(p.active, Some(MemberId::new("b")));
        assert_eq!(
            p.vote,
            Some(Vote {
                epoch: Epoch(2),
                candidate: MemberId::new("b")
            })
        );
        assert!(p.paused);
        assert_eq!(p.role, Role::Witness);
    }
}
