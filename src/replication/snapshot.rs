//! Snapshots over the replication stream: the active sends a consistent copy
//! of projects, jobs and keys in bounded chunks; the passive installs it in
//! one transaction and streams on from the snapshot's position.
//!
//! Owns: the snapshot's message sequence (`SnapshotBegin`, `SnapshotChunk`*,
//! `SnapshotEnd`), its progress (log lines, the live view, a callback for the
//! CLI's progress bar), and `pull`, the one-shot client behind
//! `understudy resnapshot`.
//! Must never: hold more than one chunk of rows in memory on either side (the
//! reader pages through its consistent read; the socket's backpressure paces
//! the sender), or make a half-installed snapshot visible (the store commits
//! it whole, with its position).

use crate::config::Config;
use crate::model::{MemberId, Position, Role, RowImage};
use crate::replication::{NodeCtx, ReplicationError};
use crate::store::{AnyStore, MemberStore};
use crate::transport::TlsContext;
use crate::wire::{ClientMsg, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION, ServerMsg};
use crate::wire::{MAX_FRAME_BYTES, SnapshotBegin};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// Log a progress line at most this often (and at the end).
const LOG_EVERY: Duration = Duration::from_secs(5);

/// How far a running snapshot has come (one per direction and peer).
#[derive(Clone, Debug)]
pub struct SnapshotProgress {
    /// The member the rows go to (sending) or come from (receiving).
    pub peer: MemberId,
    pub sending: bool,
    pub position: Position,
    pub rows_total: u64,
    pub rows_done: u64,
    /// Approximate row bytes so far.
    pub bytes: u64,
    pub started: Instant,
}

/// The `snapshot` object of `/status`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SnapshotStatus {
    /// `sending` (on the active) or `receiving` (on a passive).
    pub direction: &'static str,
    pub peer: String,
    pub position: Position,
    pub rows_done: u64,
    pub rows_total: u64,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

impl SnapshotProgress {
    pub fn new(peer: MemberId, sending: bool, position: Position, rows_total: u64) -> Self {
        SnapshotProgress {
            peer,
            sending,
            position,
            rows_total,
            rows_done: 0,
            bytes: 0,
            started: Instant::now(),
        }
    }

    fn add(&mut self, rows: &[RowImage]) {
        self.rows_done += rows.len() as u64;
        self.bytes += rows.iter().map(|r| r.approx_bytes() as u64).sum::<u64>();
    }

    pub fn status(&self, now: Instant) -> SnapshotStatus {
        SnapshotStatus {
            direction: if self.sending { "sending" } else { "receiving" },
            peer: self.peer.to_string(),
            position: self.position,
            rows_done: self.rows_done,
            rows_total: self.rows_total,
            bytes: self.bytes,
            elapsed_ms: now.saturating_duration_since(self.started).as_millis() as u64,
        }
    }

    /// Rows per second and MB per second so far.
    pub fn rates(&self) -> (f64, f64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        (self.rows_done as f64 / secs, self.bytes as f64 / 1e6 / secs)
    }

    fn log(&self, done: bool) {
        let (rows_s, mb_s) = self.rates();
        let what = match (self.sending, done) {
            (true, false) => "snapshot sending",
            (true, true) => "snapshot sent",
            (false, false) => "snapshot receiving",
            (false, true) => "snapshot installed",
        };
        tracing::info!(
            peer = %self.peer,
            position = %self.position,
            rows = self.rows_done,
            rows_total = self.rows_total,
            mb = format!("{:.1}", self.bytes as f64 / 1e6),
            rows_per_s = rows_s.round(),
            mb_per_s = format!("{mb_s:.1}"),
            secs = format!("{:.1}", self.started.elapsed().as_secs_f64()),
            "{what}"
        );
    }
}

/// Rows and bytes of one chunk: the batch limits, kept well inside a frame.
fn chunk_limits(node: &NodeCtx) -> (usize, usize) {
    (
        node.limits.max_changes.max(1),
        node.limits.max_bytes.clamp(1024, MAX_FRAME_BYTES / 4),
    )
}

/// Send a snapshot to `peer` on `writer`. Returns the snapshot's position:
/// the stream goes on right after it. Progress shows in the peer's entry of
/// the live view while it runs.
pub async fn send<W: AsyncWrite + Unpin + Send>(
    node: &NodeCtx,
    store: &AnyStore,
    peer: &MemberId,
    reason: &str,
    writer: &mut FrameWriter<W, ServerMsg>,
) -> Result<Position, ReplicationError> {
    let mut reader = store.snapshot_reader().await?;
    let mut progress =
        SnapshotProgress::new(peer.clone(), true, reader.position(), reader.rows_total());
    tracing::info!(
        peer = %peer, position = %progress.position, rows_total = progress.rows_total,
        %reason, "snapshot starts"
    );
    let live = node.live.clone();
    let set = |p: Option<SnapshotProgress>| {
        live.update(|s| s.peers.entry(peer.clone()).or_default().snapshot = p)
    };
    set(Some(progress.clone()));
    let result = async {
        writer
            .send(&ServerMsg::SnapshotBegin(SnapshotBegin {
                position: progress.position,
                rows_total: progress.rows_total,
                reason: reason.to_string(),
                schema: reader.schema_changes(),
            }))
            .await?;
        let (max_rows, max_bytes) = chunk_limits(node);
        let mut last_log = Instant::now();
        loop {
            let rows = reader.next_chunk(max_rows, max_bytes).await?;
            if rows.is_empty() {
                break;
            }
            progress.add(&rows);
            writer.send(&ServerMsg::SnapshotChunk { rows }).await?;
            set(Some(progress.clone()));
            if last_log.elapsed() >= LOG_EVERY {
                progress.log(false);
                last_log = Instant::now();
            }
        }
        writer
            .send(&ServerMsg::SnapshotEnd {
                rows: progress.rows_done,
            })
            .await?;
        progress.log(true);
        Ok::<Position, ReplicationError>(progress.position)
    }
    .await;
    set(None);
    result
}

/// The passive's side of one snapshot: begin, chunks, end, each a store
/// call inside one install transaction.
pub struct Installer {
    progress: SnapshotProgress,
    last_log: Instant,
}

impl Installer {
    pub async fn begin(
        store: &AnyStore,
        from: &MemberId,
        b: &SnapshotBegin,
    ) -> Result<Installer, ReplicationError> {
        tracing::info!(
            active = %from, position = %b.position, rows_total = b.rows_total,
            reason = %b.reason, "snapshot install starts"
        );
        store.install_snapshot_begin(b.position).await?;
        if let Err(e) = store.install_snapshot_schema(&b.schema).await {
            let _ = store.abort_apply().await;
            return Err(e.into());
        }
        Ok(Installer {
            progress: SnapshotProgress::new(from.clone(), false, b.position, b.rows_total),
            last_log: Instant::now(),
        })
    }

    pub async fn chunk(
        &mut self,
        store: &AnyStore,
        rows: &[RowImage],
    ) -> Result<(), ReplicationError> {
        store.install_snapshot_rows(rows).await?;
        self.progress.add(rows);
        if self.last_log.elapsed() >= LOG_EVERY {
            self.progress.log(false);
            self.last_log = Instant::now();
        }
        Ok(())
    }

    /// Commit; `rows` is what the sender says it sent.
    pub async fn end(self, store: &AnyStore, rows: u64) -> Result<Position, ReplicationError> {
        if rows != self.progress.rows_done {
            store.abort_apply().await?;
            return Err(ReplicationError::Peer(format!(
                "the snapshot ended after {} rows but the active says it sent {rows}",
                self.progress.rows_done
            )));
        }
        let pos = store.install_snapshot_commit().await?;
        self.progress.log(true);
        Ok(pos)
    }

    pub fn progress(&self) -> &SnapshotProgress {
        &self.progress
    }
}

/// `understudy resnapshot`: with this member's agent stopped, connect to the
/// active as this member, ask for a snapshot and install it, replacing
/// everything this member's tables held. The agent, started again, streams
/// on from the snapshot's position. `on_progress` is called after every
/// chunk (the CLI draws its progress bar with it).
pub async fn pull(
    config: &Config,
    store: &AnyStore,
    mut on_progress: impl FnMut(&SnapshotProgress),
) -> Result<Position, ReplicationError> {
    let st = store.state().await?;
    if st.role == Role::Active {
        return Err(ReplicationError::Peer(format!(
            "member {} is the active: it is the source of snapshots, not a receiver",
            config.member
        )));
    }
    let active = st
        .active
        .filter(|a| *a != config.member)
        .ok_or_else(|| ReplicationError::Peer("this member does not know the active".into()))?;
    let addr = config
        .peer(&active)
        .map(|p| p.address.clone())
        .ok_or_else(|| {
            ReplicationError::Peer(format!(
                "the active member {active} is not among this config's peers"
            ))
        })?;
    let allowed = config.peers.iter().map(|p| p.member.clone()).collect();
    let tls = TlsContext::load(&config.tls, allowed)?;
    let stream = tls.connect(&addr, &active).await?;
    let (r, w) = tokio::io::split(stream);
    let mut reader: FrameReader<_, ServerMsg> = FrameReader::new(r);
    let mut writer: FrameWriter<_, ClientMsg> = FrameWriter::new(w);
    writer
        .send(&ClientMsg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            member: config.member.clone(),
            role: Role::Passive,
            epoch: st.epoch,
            position: st.position,
            want_snapshot: true,
            schema: Some(crate::wire::SchemaDesc::of(
                &store.catalog(),
                store.schema_version().await?,
            )),
        }))
        .await?;
    let result = receive(store, &active, &mut reader, &mut on_progress).await;
    if result.is_err() {
        let _ = store.abort_apply().await;
    }
    result
}

async fn receive<R: AsyncRead + Unpin>(
    store: &AnyStore,
    active: &MemberId,
    reader: &mut FrameReader<R, ServerMsg>,
    on_progress: &mut impl FnMut(&SnapshotProgress),
) -> Result<Position, ReplicationError> {
    let mut installer: Option<Installer> = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), reader.recv())
            .await
            .map_err(|_| ReplicationError::Timeout("the active's snapshot"))??;
        match msg {
            None => {
                return Err(ReplicationError::Peer(
                    "the active closed the stream".into(),
                ));
            }
            Some(ServerMsg::Refuse { reason })
            | Some(ServerMsg::Rejoin { reason, .. })
            | Some(ServerMsg::SchemaDiffers { difference: reason }) => {
                return Err(ReplicationError::Refused {
                    member: active.clone(),
                    reason,
                });
            }
            Some(ServerMsg::Welcome(_))
            | Some(ServerMsg::Heartbeat(_))
            | Some(ServerMsg::History(_)) => {}
            Some(ServerMsg::SnapshotBegin(b)) => {
                let i = Installer::begin(store, active, &b).await?;
                on_progress(i.progress());
                installer = Some(i);
            }
            Some(ServerMsg::SnapshotChunk { rows }) => {
                let i = installer.as_mut().ok_or_else(|| {
                    ReplicationError::Peer("a snapshot chunk before its start".into())
                })?;
                i.chunk(store, &rows).await?;
                on_progress(i.progress());
            }
            Some(ServerMsg::SnapshotEnd { rows }) => {
                let i = installer.take().ok_or_else(|| {
                    ReplicationError::Peer("a snapshot end before its start".into())
                })?;
                return i.end(store, rows).await;
            }
            Some(ServerMsg::Batch(_)) | Some(ServerMsg::ChecksumMark { .. }) => {
                return Err(ReplicationError::Peer(
                    "the active streamed changes instead of a snapshot".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Epoch;
    use crate::replication::live::{Live, LiveInner, PeerLive};
    use std::collections::BTreeMap;

    fn live(role: Role) -> Live {
        Live::new(LiveInner {
            cluster: "c".into(),
            member: MemberId::new("a"),
            role,
            epoch: Epoch(1),
            active: Some(MemberId::new("a")),
            position: Position::new(1, 10),
            active_head: Position::new(1, 10),
            behind_since: None,
            last_heartbeat: None,
            database_ok: true,
            database_error: None,
            stalled_write: None,
            divergent_changes: 0,
            peers: BTreeMap::from([(MemberId::new("b"), PeerLive::default())]),
            started: Instant::now(),
            backend: "sqlite",
            snapshot: None,
            controller: None,
            hooks: Vec::new(),
            lease_until: None,
            schema_fingerprint: String::new(),
            schema_version: 0,
            apply_blocked: None,
        })
    }

    fn progress(sending: bool) -> SnapshotProgress {
        let mut p = SnapshotProgress::new(MemberId::new("b"), sending, Position::new(1, 7), 3);
        let cat = crate::store::conformance::example_catalog();
        p.add(&[crate::store::conformance::project(&cat, "p", None, None, 1)]);
        p
    }

    #[test]
    fn status_shows_a_running_snapshot_on_both_sides() {
        let l = live(Role::Passive);
        assert_eq!(l.status(Instant::now()).snapshot, None);
        l.update(|s| s.snapshot = Some(progress(false)));
        let s = l.status(Instant::now()).snapshot.expect("snapshot shown");
        assert_eq!(
            (s.direction, s.rows_done, s.rows_total, s.position),
            ("receiving", 1, 3, Position::new(1, 7))
        );
        assert!(s.bytes > 0);

        let l = live(Role::Active);
        l.update(|s| {
            if let Some(p) = s.peers.get_mut(&MemberId::new("b")) {
                p.snapshot = Some(progress(true));
            }
        });
        let doc = l.status(Instant::now());
        let top = doc.snapshot.clone().expect("shown at the top");
        assert_eq!((top.direction, top.peer.as_str()), ("sending", "b"));
        assert_eq!(doc.peers[0].snapshot.as_ref(), Some(&top));
        let json = serde_json::to_value(&doc).expect("json");
        assert_eq!(json["snapshot"]["rows_total"], 3);
    }
}
