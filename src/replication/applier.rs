//! The passive side: dial the active, say where this member is, apply what
//! arrives one database transaction per commit point, ack after commit.
//!
//! Owns: the follow loop with reconnect backoff, the passive's handshake,
//! applying changes and installing snapshots, acking, and pinning checksum
//! marks (see `marks`).
//! Must never: ack a position before its transaction committed, or keep an
//! apply transaction open across a reconnect (it is rolled back, and the
//! stream resumes from the committed position).

use crate::model::{ChangeOp, MemberId, Position, Role};
use crate::replication::snapshot::Installer;
use crate::replication::{NodeCtx, ReplicationError};
use crate::store::{AnyStore, MemberStore};
use crate::transport::{Retry, TlsContext};
use crate::wire::{ClientMsg, Heartbeat, Hello, PROTOCOL_VERSION, SchemaDesc, ServerMsg};
use crate::wire::{FrameReader, FrameWriter};
use crate::workload::now_ms;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Batches read ahead of the applier: bounds a passive's memory.
const READ_AHEAD: usize = 4;

/// Follow the active until `shutdown` fires, reconnecting with backoff.
/// `store` is `None` on a witness (it only listens to heartbeats).
pub async fn follow(
    node: Arc<NodeCtx>,
    tls: Arc<TlsContext>,
    store: Option<Arc<AnyStore>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let active = node.live.read(|s| s.active.clone());
        let target = active
            .filter(|a| *a != node.member)
            .and_then(|a| node.config.peer(&a).map(|p| (a, p.address.clone())));
        // A stop must not wait for a connection attempt to a member that
        // is cut off (the TLS handshake's own limit is 5 s): becoming the
        // active waits for this task to end. A half-applied batch is rolled
        // back below either way.
        let mut stop = shutdown.clone();
        let result = match target {
            Some((active, addr)) => tokio::select! {
                r = session(&node, &tls, store.as_ref(), &active, &addr, &mut shutdown) => r,
                _ = stop.wait_for(|s| *s) => Ok(()),
            },
            None => Err(ReplicationError::Peer(
                "no known active member with a replication address".into(),
            )),
        };
        if let Some(s) = &store
            && let Err(e) = s.abort_apply().await
        {
            tracing::warn!(error = %e, "rolling back the open apply transaction failed");
        }
        match result {
            Ok(()) => retry.reset(),
            Err(ReplicationError::Store(crate::store::StoreError::Shape(why))) => {
                // A change that does not fit this member's tables: keep
                // what was received (the apply rolled back whole) and
                // show why, until a handshake finds the schemas equal.
                node.live.apply_blocked(Some(why));
            }
            Err(e) => tracing::warn!(error = %e, "replication stream from the active ended"),
        }
        node.live.update(|s| {
            s.snapshot = None;
            if let Some(a) = s.active.clone() {
                s.peers.entry(a).or_default().connected = false;
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(retry.next_delay()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The active's captured tables differ from this member's: nothing is
/// applied until they match (the reconnects with backoff find out when).
fn schema_differs(node: &NodeCtx, active: &MemberId, difference: String) -> ReplicationError {
    let reason = format!(
        "the captured tables differ from the active {active}'s: {difference}; nothing is applied until they match (make the tables the same on every member, then run `understudy init`)"
    );
    node.live.apply_blocked(Some(reason.clone()));
    ReplicationError::Refused {
        member: active.clone(),
        reason,
    }
}

async fn session(
    node: &Arc<NodeCtx>,
    tls: &TlsContext,
    store_arc: Option<&Arc<AnyStore>>,
    active: &MemberId,
    addr: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ReplicationError> {
    let store: Option<&AnyStore> = store_arc.map(|s| s.as_ref());
    // A snapshot is owed after a quarantine (persisted with it, so an agent
    // stopped before the snapshot still asks for it) or after a rejoin that
    // could not quarantine.
    let (position, snapshot_due, schema) = match store {
        Some(s) => {
            // The tables as they are now, not as they were at start: a
            // schema changed by hand must show in the handshake.
            if let Err(e) = s.refresh_catalog().await {
                let reason = format!("this member's captured tables cannot be read: {e}");
                node.live.apply_blocked(Some(reason.clone()));
                return Err(ReplicationError::Refused {
                    member: active.clone(),
                    reason,
                });
            }
            let st = s.state().await?;
            let version = s.schema_version().await?;
            let desc = SchemaDesc::of(&s.catalog(), version);
            (st.position, st.snapshot_due, Some(desc))
        }
        None => (Position::ZERO, false, None),
    };
    let my_role = if store.is_some() {
        Role::Passive
    } else {
        Role::Witness
    };
    let stream = tls.connect(addr, active).await?;
    let (r, w) = tokio::io::split(stream);
    let mut reader: FrameReader<_, ServerMsg> = FrameReader::new(r);
    let mut writer: FrameWriter<_, ClientMsg> = FrameWriter::new(w);
    writer
        .send(&ClientMsg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            cluster: node.config.cluster.clone(),
            member: node.member.clone(),
            role: my_role,
            epoch: node.epoch(),
            position,
            want_snapshot: snapshot_due
                || node
                    .needs_snapshot
                    .load(std::sync::atomic::Ordering::SeqCst),
            schema: schema.clone(),
        }))
        .await?;
    match tokio::time::timeout(Duration::from_secs(5), reader.recv()).await {
        Err(_) => {
            return Err(ReplicationError::Timeout(
                "waiting for the active's welcome",
            ));
        }
        Ok(Ok(Some(ServerMsg::Welcome(h)))) => {
            // Both sides compare: an active that did not (another build)
            // must not make this member apply rows of another shape.
            // An active at a later schema version is followed: its schema
            // changes come through the log (it checked this member's
            // fingerprint against its history).
            if let (Some(s), Some(mine), Some(theirs)) = (store, &schema, &h.schema)
                && theirs.version <= mine.version
                && let Some(d) = theirs.difference_from(&s.catalog())
            {
                return Err(schema_differs(node, active, d));
            }
            node.live.heard_active(h.position, Instant::now());
            node.live.peer_connected(active, h.role, h.position, true);
        }
        Ok(Ok(Some(ServerMsg::SchemaDiffers { difference }))) => {
            return Err(schema_differs(node, active, difference));
        }
        Ok(Ok(Some(ServerMsg::Refuse { reason }))) => {
            return Err(ReplicationError::Refused {
                member: active.clone(),
                reason,
            });
        }
        Ok(Ok(Some(ServerMsg::Rejoin { keep_upto, reason }))) => {
            let Some(s) = store else {
                return Err(ReplicationError::Peer(
                    "a rejoin request to a witness".into(),
                ));
            };
            return rejoin(node, s, active, keep_upto, &reason).await;
        }
        Ok(Ok(Some(_))) => return Err(ReplicationError::Peer("no welcome".into())),
        Ok(Ok(None)) => return Err(ReplicationError::Peer("closed during the handshake".into())),
        Ok(Err(e)) => return Err(e.into()),
    }
    tracing::info!(active = %active, from = %position, "following the active");

    // Frames are read on their own task (reading is not cancel-safe inside a
    // select!), a few batches ahead of the applier.
    let (tx, mut rx) = mpsc::channel::<Result<Option<ServerMsg>, ReplicationError>>(READ_AHEAD);
    let read_task = tokio::spawn(async move {
        loop {
            let m = reader.recv().await.map_err(ReplicationError::from);
            let end = !matches!(m, Ok(Some(_)));
            if tx.send(m).await.is_err() || end {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(node.limits.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last committed position, and whether changes after it are applied
    // but not yet committed (checksum marks need a clean commit point).
    let mut committed = position;
    let mut open_changes = false;
    let mut installer: Option<Installer> = None;
    let result = loop {
        tokio::select! {
            m = rx.recv() => {
                let msg = match m {
                    Some(Ok(Some(msg))) => msg,
                    Some(Ok(None)) | None => break Err(ReplicationError::Peer("the active closed the stream".into())),
                    Some(Err(e)) => break Err(e),
                };
                match msg {
                    ServerMsg::Batch(b) => {
                        node.live.heard_active(b.head, Instant::now());
                        let Some(store) = store else { continue };
                        if installer.is_some() {
                            break Err(ReplicationError::Peer("changes in the middle of a snapshot".into()));
                        }
                        let started = Instant::now();
                        let applying = store.apply(&b.changes, b.commit);
                        let pos = match node
                            .live
                            .watch_stall("applying a batch", node.limits.heartbeat_interval.max(Duration::from_secs(1)), applying)
                            .await
                        {
                            Ok(p) => p,
                            Err(e) => break Err(e.into()),
                        };
                        node.metrics.apply_seconds.observe(started.elapsed());
                        node.metrics.batches_applied.inc();
                        node.metrics.changes_applied.add(b.changes.len() as u64);
                        if b.changes.iter().any(|c| matches!(c.op, ChangeOp::Schema(_))) {
                            match store.schema_version().await {
                                Ok(v) => node.live.schema(v, store.catalog().fingerprint()),
                                Err(e) => break Err(e.into()),
                            }
                        }
                        open_changes = !b.commit && (open_changes || !b.changes.is_empty());
                        if b.commit {
                            committed = pos;
                            node.live.applied(pos);
                            node.live.apply_blocked(None);
                            node.live.database(Ok(()));
                            if let Err(e) = writer.send(&ClientMsg::Ack { applied: pos }).await {
                                break Err(e.into());
                            }
                        }
                    }
                    ServerMsg::Heartbeat(h) => {
                        node.metrics.heartbeats_received.inc();
                        node.live.heard_active(h.position, Instant::now());
                        // At the active's head after a handshake that found
                        // the schemas equal: nothing is held back any more.
                        if store.is_some() && committed >= h.position && !open_changes {
                            node.live.apply_blocked(None);
                        }
                    }
                    ServerMsg::SnapshotBegin(b) => {
                        let Some(store) = store else { continue };
                        node.live.heard_active(b.position, Instant::now());
                        match Installer::begin(store, active, &b).await {
                            Ok(i) => {
                                let p = i.progress().clone();
                                node.live.update(|s| s.snapshot = Some(p));
                                installer = Some(i);
                                open_changes = true;
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    ServerMsg::SnapshotChunk { rows } => {
                        let Some(store) = store else { continue };
                        let Some(i) = installer.as_mut() else {
                            break Err(ReplicationError::Peer("a snapshot chunk before its start".into()));
                        };
                        if let Err(e) = i.chunk(store, &rows).await {
                            break Err(e);
                        }
                        // Chunks prove the active alive as heartbeats do.
                        node.live.heard_active(i.progress().position, Instant::now());
                        let p = i.progress().clone();
                        node.live.update(|s| s.snapshot = Some(p));
                    }
                    ServerMsg::SnapshotEnd { rows } => {
                        let Some(store) = store else { continue };
                        let Some(i) = installer.take() else {
                            break Err(ReplicationError::Peer("a snapshot end before its start".into()));
                        };
                        let pos = match i.end(store, rows).await {
                            Ok(p) => p,
                            Err(e) => break Err(e),
                        };
                        committed = pos;
                        open_changes = false;
                        node.needs_snapshot.store(false, std::sync::atomic::Ordering::SeqCst);
                        node.live.update(|s| {
                            s.snapshot = None;
                            s.position = pos;
                        });
                        node.live.applied(pos);
                        node.live.database(Ok(()));
                        // The snapshot may have brought schema changes.
                        match store.schema_version().await {
                            Ok(v) => node.live.schema(v, store.catalog().fingerprint()),
                            Err(e) => break Err(e.into()),
                        }
                        if let Err(e) = writer.send(&ClientMsg::Ack { applied: pos }).await {
                            break Err(e.into());
                        }
                    }
                    ServerMsg::ChecksumMark { position } => {
                        if let Some(s) = store_arc
                            && position == committed
                            && !open_changes
                        {
                            node.marks.pin(s, position).await;
                        } else {
                            tracing::debug!(mark = %position, at = %committed, "checksum mark not at this member's commit point; ignored");
                        }
                    }
                    ServerMsg::Refuse { reason } => {
                        break Err(ReplicationError::Refused { member: active.clone(), reason });
                    }
                    ServerMsg::Welcome(_) | ServerMsg::Rejoin { .. } | ServerMsg::SchemaDiffers { .. } => {
                        break Err(ReplicationError::Peer("a handshake message in the stream".into()))
                    }
                    ServerMsg::History(h) => {
                        if let Some(s) = store
                            && let Err(e) = merge_history(s, &h).await
                        {
                            tracing::warn!(error = %e, "could not record the active's epoch history");
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let position = node.live.read(|s| s.position);
                let hb = Heartbeat {
                    epoch: node.epoch(),
                    member: node.member.clone(),
                    role: my_role,
                    position,
                    sent_at_ms: now_ms(),
                };
                if let Err(e) = writer.send(&ClientMsg::Heartbeat(hb)).await {
                    break Err(e.into());
                }
                node.metrics.heartbeats_sent.inc();
            }
            _ = shutdown.changed() => break Ok(()),
        }
    };
    read_task.abort();
    result
}

/// Record the epochs of the active's history this member does not hold yet
/// (or holds differently: the active's word is the cluster's).
async fn merge_history(
    store: &AnyStore,
    h: &[crate::wire::EpochEntry],
) -> Result<(), crate::store::StoreError> {
    let mine = store.epoch_history().await?;
    for e in h {
        let rec = crate::store::EpochRecord {
            epoch: e.epoch,
            active: e.active.clone(),
            start: e.start,
            at_ms: e.at_ms,
            reason: e.reason.clone(),
        };
        if !mine.contains(&rec) {
            store.record_epoch(&rec).await?;
        }
    }
    Ok(())
}

/// The active says this member's history diverged after `keep_upto`: copy
/// the divergent tail into the quarantine (full row images, nothing lost
/// silently), rewind to `keep_upto`, and take a snapshot on the next
/// connection to restore the rows the tail changed.
async fn rejoin(
    node: &NodeCtx,
    store: &AnyStore,
    active: &MemberId,
    keep_upto: Position,
    reason: &str,
) -> Result<(), ReplicationError> {
    tracing::warn!(active = %active, %keep_upto, %reason, "diverged from the active's history: rejoining");
    let why = format!("rejoin: diverged from {active}'s history after {keep_upto}");
    match store.quarantine_tail(keep_upto, &why).await {
        Ok(n) => {
            tracing::warn!(
                quarantined = n, %keep_upto, active = %active,
                reason = "diverged history", "divergent tail quarantined; a snapshot restores the rows it changed (`understudy divergence list`)"
            );
            node.live.update(|s| {
                s.divergent_changes += n;
                s.position = keep_upto;
            });
            // The tail may have held schema changes, given back with it.
            let version = store.schema_version().await?;
            node.live.schema(version, store.catalog().fingerprint());
            node.needs_snapshot
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, active = %active, "cannot quarantine the divergent tail; this member stays out of replication until an operator resolves it (`understudy resnapshot` after exporting what it holds)");
            Err(e.into())
        }
    }
}
