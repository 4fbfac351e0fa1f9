//! Certificate reload: watch the CA, certificate and key files and rebuild
//! the TLS configuration when they change.
//!
//! Owns: the file watcher (on the files' folders, since editors, `mv` and
//! Kubernetes secret volumes replace files rather than write them in place)
//! and the debounce before a reload.
//! Must never: replace a working configuration by a broken one (a failed
//! reload keeps the old one and says why), keep the context alive by itself,
//! or react to its own reads of the files.

use super::{TlsContext, TransportError};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Quiet time after the last event before reloading: files are usually
/// replaced in a burst (key, then certificate, then CA).
const SETTLE: Duration = Duration::from_millis(200);
/// A folder that never falls quiet still gets a reload this often.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// Keeps the watch running; dropping it stops watching.
pub struct CertWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for CertWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertWatcher")
    }
}

impl TlsContext {
    /// Start reloading this context's certificates whenever their files
    /// change. Reloads happen on a background thread (no runtime needed);
    /// success is logged at info, failure at warn with the reason.
    pub fn watch(self: &Arc<Self>) -> Result<CertWatcher, TransportError> {
        let paths = self.paths();
        let files = [&paths.ca, &paths.cert, &paths.key];
        let names: BTreeSet<OsString> = files
            .iter()
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect();
        let dirs: BTreeSet<PathBuf> = files.iter().map(|p| folder_of(p)).collect();

        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            match res {
                Ok(ev) if relevant(&ev, &names) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                // The watcher itself failed (e.g. inotify queue overflow):
                // look at the files, they may have changed unseen.
                Err(e) => {
                    tracing::warn!(error = %e, "certificate watch error; checking the files");
                    let _ = tx.send(());
                }
            }
        })
        .map_err(|e| TransportError::Watch(e.to_string()))?;
        for d in &dirs {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|e| TransportError::Watch(format!("{}: {e}", d.display())))?;
        }

        let ctx = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("cert-reload".into())
            .spawn(move || reload_loop(&rx, &ctx))
            .map_err(|e| TransportError::Watch(e.to_string()))?;
        tracing::debug!(folders = ?dirs, "watching certificate files");
        Ok(CertWatcher { _watcher: watcher })
    }
}

fn folder_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An event about one of our files, or about a `..name` entry (Kubernetes
/// swaps the `..data` symlink of a secret volume). Reads (`Access`) are
/// ignored: our own reload reads the files.
fn relevant(ev: &Event, names: &BTreeSet<OsString>) -> bool {
    if matches!(ev.kind, EventKind::Access(_)) {
        return false;
    }
    ev.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| names.contains(n) || n.to_str().is_some_and(|s| s.starts_with("..")))
    })
}

fn reload_loop(rx: &mpsc::Receiver<()>, ctx: &Weak<TlsContext>) {
    // Ends when the watcher (and with it the sender) is dropped.
    while rx.recv().is_ok() {
        let start = Instant::now();
        loop {
            match rx.recv_timeout(SETTLE) {
                Ok(()) if start.elapsed() < MAX_WAIT => continue,
                Ok(()) | Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(ctx) = ctx.upgrade() else { return };
        match ctx.reload() {
            Ok(true) => tracing::info!(
                cert = %ctx.paths().cert.display(),
                generation = ctx.generation(),
                "certificates reloaded; new connections use them"
            ),
            Ok(false) => tracing::debug!("certificate files touched but unchanged"),
            Err(e) => tracing::warn!(
                reason = %e,
                "certificate reload failed; keeping the previous certificates"
            ),
        }
    }
}
