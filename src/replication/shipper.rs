//! The active side of one replication connection: streams the change log to
//! one passive from the position it reported, and tracks its acks.
//!
//! Owns: batching (count, bytes), commit points, heartbeats on an idle
//! stream, per-peer ack bookkeeping.
//! Must never: hold more than one batch of a peer in memory (a slow passive
//! stalls its own socket, via TCP backpressure, not the agent's memory), or
//! mark a commit point anywhere but at a head the log had at some instant (a
//! head always ends whole application transactions).

use crate::model::{MemberId, Position, Role};
use crate::replication::live::Live;
use crate::replication::{NodeCtx, ReplicationError};
use crate::store::{AnyStore, MemberStore};
use crate::wire::{Batch, ClientMsg, Heartbeat, ServerMsg};
use crate::wire::{FrameReader, FrameWriter};
use crate::workload::now_ms;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// How a welcomed passive starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Stream the change log from its position.
    Stream,
    /// Send a snapshot first (the reason is logged on both sides).
    Snapshot(String),
    /// Refuse the connection with this reason.
    Refuse(String),
    /// The passive's history diverged after `keep_upto`: it must quarantine
    /// its tail and take a snapshot.
    Rejoin { keep_upto: Position, reason: String },
}

/// Where `from`'s history left this member's: the start of the first epoch
/// after `from.epoch` in this member's epoch history (the last position
/// both hold), if `from` is past it.
async fn divergence_point(
    store: &AnyStore,
    from: Position,
) -> Result<Option<Position>, ReplicationError> {
    let history = store.epoch_history().await?;
    Ok(history
        .iter()
        .filter(|r| r.epoch.0 > from.epoch)
        .min_by_key(|r| r.epoch)
        .map(|r| r.start)
        .filter(|start| start.seq < from.seq))
}

/// A diverged `from`: ask it to rejoin when the history says where it left
/// ours, else refuse with `why`.
async fn diverged(
    store: &AnyStore,
    from: Position,
    why: String,
) -> Result<Start, ReplicationError> {
    Ok(match divergence_point(store, from).await? {
        Some(keep_upto) => Start::Rejoin {
            keep_upto,
            reason: format!(
                "{why}; this history left yours after {keep_upto}: quarantine your changes past it and take a snapshot"
            ),
        },
        None => Start::Refuse(format!("{why}; it must rejoin")),
    })
}

/// Decide, before welcoming a passive, where it starts: the change log when
/// it still holds everything after the passive's position, else a snapshot.
/// A position ahead of this member's head, or one this log records under
/// another epoch, is a diverged history and is refused.
pub async fn check_start(
    store: &AnyStore,
    from: Position,
    want_snapshot: bool,
) -> Result<Start, ReplicationError> {
    if want_snapshot {
        return Ok(Start::Snapshot("the member asked for a snapshot".into()));
    }
    let head = store.state().await?.position;
    if from.seq > head.seq {
        return diverged(
            store,
            from,
            format!(
                "your position {from} is ahead of this active's head {head}: your history diverged"
            ),
        )
        .await;
    }
    if from.seq < head.seq {
        let oldest = store.oldest_seq().await?;
        if oldest.is_none_or(|o| o > from.seq + 1) {
            return Ok(Start::Snapshot(format!(
                "changes after position {from} are no longer kept (oldest kept seq {})",
                oldest.map_or_else(|| "none".to_string(), |o| o.to_string())
            )));
        }
    }
    if from.seq == 0 {
        return Ok(Start::Stream);
    }
    let at = store.read_changes(from.seq - 1, 1, usize::MAX).await?;
    match at.changes.first() {
        Some(c) if c.pos == from => Ok(Start::Stream),
        Some(c) if c.pos.seq == from.seq => {
            diverged(
                store,
                from,
                format!(
                    "your position {from} is not in this active's history (it has {} there): your history diverged",
                    c.pos
                ),
            )
            .await
        }
        // The log no longer holds that entry (trimmed, or the base of a
        // snapshot): the position is all there is to compare.
        _ => Ok(Start::Stream),
    }
}

/// Who is being streamed to, and from where (as its hello said).
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub member: MemberId,
    pub role: Role,
    pub from: Position,
    /// `Some(reason)`: send a snapshot before streaming.
    pub snapshot: Option<String>,
}

/// Stream to one passive until the connection ends or `shutdown` fires.
pub async fn ship<R, W>(
    node: Arc<NodeCtx>,
    store: Arc<AnyStore>,
    sub: Subscriber,
    mut reader: FrameReader<R, ClientMsg>,
    mut writer: FrameWriter<W, ServerMsg>,
    mut head_rx: watch::Receiver<Position>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ReplicationError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send,
{
    let Subscriber {
        member: peer,
        role: peer_role,
        from,
        snapshot,
    } = sub;
    let live: Arc<Live> = node.live.clone();
    live.peer_connected(&peer, peer_role, from, true);
    // Acks and heartbeats from the passive arrive on their own task so that a
    // blocked write to a slow passive never delays reading its acks.
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let ack_live = live.clone();
    let ack_peer = peer.clone();
    let ack_metrics = node.metrics.clone();
    let acks = tokio::spawn(async move {
        let reason = loop {
            match reader.recv().await {
                Ok(Some(ClientMsg::Ack { applied })) => {
                    ack_live.peer_acked(&ack_peer, applied, Instant::now())
                }
                Ok(Some(ClientMsg::Heartbeat(h))) => {
                    ack_metrics.heartbeats_received.inc();
                    ack_live.update(|s| {
                        if let Some(p) = s.peers.get_mut(&ack_peer) {
                            p.last_seen = Some(Instant::now());
                            p.role = Some(h.role);
                        }
                    });
                }
                Ok(Some(ClientMsg::Hello(_))) => {
                    break Some("a second hello on an open stream".to_string());
                }
                Ok(Some(ClientMsg::ControlHello(_) | ClientMsg::Control(_))) => {
                    break Some("a controller frame on a replication stream".to_string());
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        let _ = closed_tx.send(reason);
    });

    let limits = node.limits.clone();
    let mut cursor = from.seq;
    if let Some(reason) = snapshot {
        match crate::replication::snapshot::send(&node, &store, &peer, &reason, &mut writer).await {
            Ok(at) => {
                cursor = at.seq;
                // What the passive needs from now on, for lag and retention,
                // until its first ack.
                live.update(|s| s.peers.entry(peer.clone()).or_default().position = at);
            }
            Err(e) => {
                acks.abort();
                live.peer_connected(&peer, peer_role, from, false);
                return Err(e);
            }
        }
    }
    let mut limits_rx = node.marks.ship_limits();
    // The generation of the last checksum mark this stream handled.
    let mut mark_done = limits_rx.borrow().generation;
    let mut last_sent = Instant::now();
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        let head = *head_rx.borrow_and_update();
        let lim = *limits_rx.borrow_and_update();
        let mark = lim
            .live_mark(Instant::now())
            .filter(|_| lim.generation != mark_done && peer_role != Role::Witness);
        if let Some(m) = mark
            && cursor >= m.seq
        {
            mark_done = lim.generation;
            if cursor == m.seq {
                // The last batch committed exactly at the mark.
                if let Err(e) = writer.send(&ServerMsg::ChecksumMark { position: m }).await {
                    break Err(e.into());
                }
            }
            continue;
        }
        // Never past a hold, and a batch ends exactly at a pending mark.
        let mut upto = head.seq;
        if let Some(h) = lim.hold {
            upto = upto.min(h);
        }
        if let Some(m) = mark {
            upto = upto.min(m.seq);
        }
        if peer_role != Role::Witness && cursor < upto {
            let limit = limits.max_changes.min((upto - cursor) as usize);
            let read = match store.read_changes(cursor, limit, limits.max_bytes).await {
                Ok(r) => r,
                Err(e) => break Err(e.into()),
            };
            let Some(last) = read.changes.last().map(|c| c.pos) else {
                // The head moved past entries this read cannot see yet (a gap
                // being sequenced): wait for the next wake-up.
                tokio::select! {
                    _ = head_rx.changed() => {}
                    _ = tokio::time::sleep(limits.heartbeat_interval) => {}
                }
                continue;
            };
            if read
                .changes
                .first()
                .is_some_and(|c| c.pos.seq != cursor + 1)
            {
                // Trimmed under us: the passive reconnects and gets a snapshot.
                break Err(ReplicationError::Peer(format!(
                    "the change log no longer holds seq {} (trimmed); the passive needs a snapshot",
                    cursor + 1
                )));
            }
            // A commit point only where the log had its head at some instant
            // (the head, a hold or a mark are all such points).
            let commit = last.seq >= head.seq || read.at_head || last.seq == upto;
            let n_changes = read.changes.len() as u64;
            let batch = Batch {
                changes: read.changes,
                commit,
                head,
                sent_at_ms: now_ms(),
            };
            let before = writer.bytes_written();
            if let Err(e) = writer.send(&ServerMsg::Batch(batch)).await {
                break Err(e.into());
            }
            node.metrics.batches_shipped.inc();
            node.metrics.changes_shipped.add(n_changes);
            node.metrics
                .bytes_shipped
                .add(writer.bytes_written().saturating_sub(before));
            cursor = last.seq;
            last_sent = Instant::now();
            continue;
        }
        let idle_for = last_sent.elapsed();
        let wait = limits.heartbeat_interval.saturating_sub(idle_for);
        tokio::select! {
            changed = head_rx.changed() => {
                if changed.is_err() { break Ok(()); }
                if !limits.coalesce.is_zero() {
                    tokio::time::sleep(limits.coalesce).await;
                }
            }
            _ = limits_rx.changed() => {}
            _ = tokio::time::sleep(wait) => {
                let hb = Heartbeat {
                    epoch: node.epoch(),
                    member: node.member.clone(),
                    role: Role::Active,
                    position: head,
                    sent_at_ms: now_ms(),
                };
                if let Err(e) = writer.send(&ServerMsg::Heartbeat(hb)).await {
                    break Err(e.into());
                }
                node.metrics.heartbeats_sent.inc();
                last_sent = Instant::now();
            }
            reason = &mut closed_rx => {
                match reason {
                    Ok(Some(r)) => break Err(ReplicationError::Peer(r)),
                    _ => break Ok(()),
                }
            }
            _ = shutdown.changed() => {}
        }
    };
    acks.abort();
    live.peer_connected(&peer, peer_role, from, false);
    result
}
