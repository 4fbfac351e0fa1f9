//! The active's head watcher: waits for commits (no busy polling), runs the
//! store's sequencer, and publishes the change-log head to every shipper.
//!
//! Owns: the one task that turns database wake-ups into a `watch` of the head.
//! Must never: read change contents (shippers do), or spin: every loop turn
//! waits on a wake-up hint or the slow safety-net poll.

use crate::model::Position;
use crate::replication::live::Live;
use crate::store::{AnyStore, MemberStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The slow safety-net poll when no wake-up hint arrives.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Watch the head until `shutdown` fires. Errors are reported in `live` and
/// retried after a pause; the task never ends on a database error.
pub async fn watch_head(
    store: Arc<AnyStore>,
    live: Arc<Live>,
    head_tx: watch::Sender<Position>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        // `state` sequences what is staged first (PostgreSQL), so the
        // position it reports is the head with every committed change.
        let step = async {
            let st = store.state().await?;
            Ok::<Position, crate::store::StoreError>(st.position)
        };
        match step.await {
            Ok(head) => {
                live.database(Ok(()));
                if head != *head_tx.borrow() {
                    live.head_moved(head, Instant::now());
                    head_tx.send_replace(head);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change-log head; retrying");
                live.database(Err(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        }
        tokio::select! {
            r = store.wait_for_commit(SAFETY_POLL) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "commit wake-up failed; falling back to the slow poll");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}
