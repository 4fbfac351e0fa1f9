//! The database health probe behind `/health`: a cheap query on the member
//! database every few seconds, so a passive with no traffic (or a stuck
//! database) still reports the truth.
//!
//! Owns: one periodic `db_now_ms` with a time limit, reported into the live
//! view and the metrics, and the count of unresolved quarantined changes
//! (`divergent_changes`) read along with it.
//! Must never: hold a transaction or a lock, or run more than one probe at a
//! time.

use crate::replication::live::Live;
use crate::replication::metrics::Metrics;
use crate::store::{AnyStore, MemberStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a probe may take before the database counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe every `every` until `shutdown` fires.
pub async fn run(
    store: Arc<AnyStore>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ok = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::status::stopped(&mut shutdown) => return,
        }
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, store.db_now_ms()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the database did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        };
        match &outcome {
            Ok(()) if !was_ok => tracing::info!("member database answers again"),
            Err(e) => {
                metrics.database_probe_failures.inc();
                if was_ok {
                    tracing::warn!(error = %e, "member database health probe failed");
                }
            }
            _ => {}
        }
        was_ok = outcome.is_ok();
        if outcome.is_ok()
            && let Ok(Ok(n)) = tokio::time::timeout(PROBE_TIMEOUT, store.divergent_count()).await
        {
            live.update(|s| s.divergent_changes = n);
        }
        live.database(outcome);
    }
}
