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

/// Check where a passive says it is against this member's log, before
/// welcoming it. Returns the refusal reason, if any.
pub async fn check_start(
    store: &AnyStore,
    from: Position,
) -> Result<Option<String>, ReplicationError> {
    let head = store.state().await?.position;
    if from.seq > head.seq {
        return Ok(Some(format!(
            "your position {from} is ahead of this active's head {head}: your history diverged; it must rejoin"
        )));
    }
    if from.seq == 0 {
        return Ok(None);
    }
    if let Some(oldest) = store.oldest_seq().await?
        && oldest > from.seq + 1
    {
        return Ok(Some(format!(
            "changes after your position {from} are no longer kept (oldest kept seq {oldest}): a snapshot is needed"
        )));
    }
    let at = store.read_changes(from.seq - 1, 1, usize::MAX).await?;
    match at.changes.first() {
        Some(c) if c.pos == from => Ok(None),
        Some(c) => Ok(Some(format!(
            "your position {from} is not in this active's history (it has {} there): your history diverged; it must rejoin",
            c.pos
        ))),
        // The log no longer holds that entry (trimmed or snapshot base): the
        // state's position is the only record; accept a position equal to it.
        None => Ok(None),
    }
}

/// Who is being streamed to, and from where (as its hello said).
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub member: MemberId,
    pub role: Role,
    pub from: Position,
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
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        let _ = closed_tx.send(reason);
    });

    let limits = node.limits.clone();
    let mut cursor = from.seq;
    let mut last_sent = Instant::now();
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        let head = *head_rx.borrow_and_update();
        if peer_role != Role::Witness && cursor < head.seq {
            let limit = limits.max_changes.min((head.seq - cursor) as usize);
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
            // A commit point only where the log had its head at some instant.
            let commit = last.seq >= head.seq || read.at_head;
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
            node.metrics_batch_sent();
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
