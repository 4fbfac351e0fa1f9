//! Replication: the active streams its change log to every passive over
//! mutual TLS; each passive applies batches atomically and acks.
//!
//! Owns: the accept loop (`server`), the per-passive stream (`shipper`), the
//! passive's follow loop (`applier`), the head watcher (`head`), snapshots
//! (`snapshot`), change-log retention (`retention`), checksum marks for
//! `understudy verify` (`marks`), and the live view of all of it (`live`).
//! Must never: decide roles (roles come from the database state, later from
//! the promotion controller), or apply anything outside one database
//! transaction per commit point.

pub mod applier;
pub mod head;
pub mod live;
pub mod marks;
pub mod metrics;
pub mod retention;
pub mod server;
pub mod shipper;
pub mod snapshot;

use crate::config::Config;
use crate::model::{Epoch, MemberId};
use crate::store::StoreError;
use crate::transport::TransportError;
use crate::wire::WireError;
use live::Live;
use metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Errors of one replication session; the loops around it log and retry.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("refused by {member}: {reason}")]
    Refused { member: MemberId, reason: String },
    #[error("peer broke the protocol: {0}")]
    Peer(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Batch limits and pacing, from the config.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_changes: usize,
    pub max_bytes: usize,
    /// After a wake-up, wait this long to coalesce a burst into one batch.
    pub coalesce: Duration,
    pub heartbeat_interval: Duration,
}

/// What every replication task of a member shares.
#[derive(Debug)]
pub struct NodeCtx {
    pub config: Config,
    pub member: MemberId,
    pub live: Arc<Live>,
    pub limits: Limits,
    /// Counters for `/metrics`, bumped where the events happen.
    pub metrics: Arc<Metrics>,
    /// Checksum marks for `understudy verify` (see [`marks`]).
    pub marks: Arc<marks::Marks>,
    /// Whether this member streams its change log to passives now. The
    /// promotion controller opens the gate when this member becomes the
    /// active and closes it when it stops being one; closing it ends every
    /// shipping session at once. (Not the same as `role == active`: during a
    /// planned switchover the fenced active keeps shipping until the target
    /// holds the exact head.)
    pub shipping: tokio::sync::watch::Sender<bool>,
    /// A passive that quarantined a divergent tail asks for a snapshot on
    /// its next connection (set by a rejoin, cleared once one is installed).
    pub needs_snapshot: std::sync::atomic::AtomicBool,
    epoch: AtomicU64,
}

impl NodeCtx {
    pub fn new(config: Config, live: Arc<Live>, epoch: Epoch) -> Self {
        let limits = Limits {
            max_changes: config.replication.batch_max_changes,
            max_bytes: config.replication.batch_max_bytes,
            coalesce: config.replication.batch_max_delay,
            heartbeat_interval: config.replication.heartbeat_interval,
        };
        NodeCtx {
            member: config.member.clone(),
            config,
            live,
            limits,
            metrics: Arc::new(Metrics::default()),
            marks: Arc::new(marks::Marks::default()),
            shipping: tokio::sync::watch::channel(false).0,
            needs_snapshot: std::sync::atomic::AtomicBool::new(false),
            epoch: AtomicU64::new(epoch.0),
        }
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Relaxed))
    }

    pub fn set_epoch(&self, e: Epoch) {
        self.epoch.store(e.0, Ordering::Relaxed);
    }
}

/// A stop signal that becomes true once `when` completes (or at once, when
/// set through the returned sender). The watching task ends when every
/// receiver is gone, so short-lived sessions leave nothing behind.
pub fn stop_signal(
    when: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let relay = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = when => { let _ = relay.send(true); }
            _ = relay.closed() => {}
        }
    });
    (tx, rx)
}
