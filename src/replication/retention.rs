//! Change-log retention: a periodic task, off the write and ship paths, that
//! trims the change log down to what members may still need.
//!
//! Owns: the trim rule ([`trim_upto`], pure and unit-tested) and its task.
//! Must never: trim anything a connected passive, or a passive being sent a
//! snapshot, still needs (unless it is further behind than the cap), or
//! anything inside the retention floors; or delete the log in one big
//! statement (it trims in slices, so writers are never locked out for long).
//!
//! The rule, on the active:
//! - each data peer needs the changes after its last known position (its
//!   hello, then its acks); a peer being sent a snapshot needs those after
//!   the snapshot's position;
//! - a peer never seen since this agent started counts as position 0; it and
//!   a peer that is disconnected hold the log back only up to the cap: such
//!   a peer holds no more than `retain_max_changes` changes (0: no cap). A
//!   peer that returns after its changes are gone gets a snapshot, so the cap
//!   trades a snapshot for a bounded disk: a dead member must not fill the
//!   active's disk. A connected peer (streaming, or being sent a snapshot)
//!   is never trimmed under;
//! - whatever the peers need, the newest `retain_min_changes` changes and
//!   every change younger than `retain_min_age` stay.
//!
//! A passive does not know what the other members need; it keeps only the
//! floors (after a promotion, a member behind those gets a snapshot).
//!
//! Ages come from marks this task records itself (the head it saw at each
//! tick and when): a change is older than `retain_min_age` once a mark taken
//! at least that long ago covers it. Nothing is stored per change, so the
//! capture path pays nothing for retention; after a restart nothing counts
//! as old until `retain_min_age` has passed again, which errs on keeping.

use crate::model::Role;
use crate::replication::NodeCtx;
use crate::store::{AnyStore, MemberStore, StoreError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Changes deleted per statement.
const SLICE: u64 = 5_000;

/// What one data peer needs, as the active knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerNeed {
    /// Never seen since this agent started.
    NeverSeen,
    /// Connected, at this seq (its last ack, or its hello).
    At(u64),
    /// Seen, now disconnected; last known at this seq.
    Gone(u64),
    /// Being sent a snapshot taken at this seq.
    Snapshotting(u64),
}

/// The settings the rule uses.
#[derive(Clone, Copy, Debug)]
pub struct Floors {
    pub min_changes: u64,
    /// 0: no cap.
    pub max_changes: u64,
}

/// The seq up to which the log may be trimmed (inclusive; 0: nothing).
/// `age_limit` is the newest seq known to be older than `retain_min_age`.
pub fn trim_upto(head: u64, active: bool, peers: &[PeerNeed], f: Floors, age_limit: u64) -> u64 {
    let floor = head.saturating_sub(f.min_changes).min(age_limit);
    let cap = if f.max_changes > 0 {
        head.saturating_sub(f.max_changes)
    } else {
        0
    };
    let need = if active {
        peers
            .iter()
            .map(|p| match *p {
                PeerNeed::Snapshotting(s) => s,
                PeerNeed::At(s) => s,
                PeerNeed::Gone(s) => s.max(cap),
                PeerNeed::NeverSeen => cap,
            })
            .min()
            .unwrap_or(head)
    } else {
        head
    };
    need.min(floor)
}

/// Trim periodically until `shutdown` fires. Errors are logged and retried
/// at the next tick.
pub async fn run(node: Arc<NodeCtx>, store: Arc<AnyStore>, mut shutdown: watch::Receiver<bool>) {
    let r = &node.config.replication;
    let floors = Floors {
        min_changes: r.retain_min_changes,
        max_changes: r.retain_max_changes,
    };
    let min_age = r.retain_min_age;
    let mut tick = tokio::time::interval(r.retain_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ages: VecDeque<(u64, Instant)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match step(&node, &store, floors, min_age, &mut ages).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "change log trimmed"),
            Err(e) => tracing::warn!(error = %e, "trimming the change log failed; retrying"),
        }
    }
}

async fn step(
    node: &NodeCtx,
    store: &AnyStore,
    floors: Floors,
    min_age: Duration,
    ages: &mut VecDeque<(u64, Instant)>,
) -> Result<u64, StoreError> {
    let head = store.state().await?.position.seq;
    let now = Instant::now();
    ages.push_back((head, now));
    let age_limit = if min_age.is_zero() {
        head
    } else {
        // The newest mark old enough; older marks are no longer needed.
        let old_enough = |t: Instant| now.saturating_duration_since(t) >= min_age;
        while ages.len() > 1 && old_enough(ages[1].1) {
            ages.pop_front();
        }
        match ages.front() {
            Some((seq, t)) if old_enough(*t) => *seq,
            _ => 0,
        }
    };
    let (active, peers) = node.live.read(|s| {
        let peers: Vec<PeerNeed> = node
            .config
            .peers
            .iter()
            .filter(|p| !p.witness)
            .map(|p| match s.peers.get(&p.member) {
                Some(l) if l.snapshot.is_some() => {
                    PeerNeed::Snapshotting(l.snapshot.as_ref().map_or(0, |x| x.position.seq))
                }
                Some(l) if l.connected => PeerNeed::At(l.position.seq),
                Some(l) if l.last_seen.is_some() => PeerNeed::Gone(l.position.seq),
                _ => PeerNeed::NeverSeen,
            })
            .collect();
        (s.role == Role::Active, peers)
    });
    let upto = trim_upto(head, active, &peers, floors, age_limit);
    let mut removed = 0;
    while let Some(oldest) = store.oldest_seq().await? {
        if oldest > upto {
            break;
        }
        let n = store.trim_log(upto.min(oldest + SLICE - 1)).await?;
        if n == 0 {
            break;
        }
        removed += n;
        // Let writers and shippers in between slices.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Floors = Floors {
        min_changes: 100,
        max_changes: 10_000,
    };

    #[test]
    fn the_slowest_peer_holds_the_log() {
        let peers = [PeerNeed::At(5_000), PeerNeed::At(9_000)];
        assert_eq!(trim_upto(10_000, true, &peers, F, u64::MAX), 5_000);
    }

    #[test]
    fn floors_keep_the_newest_changes_and_young_ones() {
        let peers = [PeerNeed::At(10_000)];
        assert_eq!(trim_upto(10_000, true, &peers, F, u64::MAX), 9_900);
        assert_eq!(trim_upto(10_000, true, &peers, F, 7_000), 7_000);
        assert_eq!(trim_upto(50, true, &peers, F, u64::MAX), 0);
    }

    #[test]
    fn a_peer_never_seen_or_gone_holds_only_up_to_the_cap() {
        assert_eq!(
            trim_upto(25_000, true, &[PeerNeed::NeverSeen], F, u64::MAX),
            15_000
        );
        assert_eq!(
            trim_upto(25_000, true, &[PeerNeed::Gone(3)], F, u64::MAX),
            15_000
        );
        assert_eq!(
            trim_upto(25_000, true, &[PeerNeed::At(3)], F, u64::MAX),
            3,
            "a connected peer is never trimmed under"
        );
        let no_cap = Floors {
            max_changes: 0,
            ..F
        };
        assert_eq!(
            trim_upto(25_000, true, &[PeerNeed::NeverSeen], no_cap, u64::MAX),
            0
        );
    }

    #[test]
    fn a_snapshot_in_progress_holds_its_position_whatever_the_cap() {
        let peers = [PeerNeed::Snapshotting(2_000), PeerNeed::At(30_000)];
        assert_eq!(trim_upto(30_000, true, &peers, F, u64::MAX), 2_000);
    }

    #[test]
    fn a_passive_keeps_only_the_floors() {
        assert_eq!(
            trim_upto(10_000, false, &[PeerNeed::NeverSeen], F, u64::MAX),
            9_900
        );
    }
}
