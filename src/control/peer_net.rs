//! Controller messages over the members' mutual-TLS transport.
//!
//! Each member dials every peer's replication address and keeps one
//! outbound *control stream* per peer: `ClientMsg::ControlHello`, answered
//! with `Welcome` or `Refuse`, then only `ClientMsg::Control` frames. Replies
//! travel on the other member's own outbound stream, so every stream carries
//! one direction only. The accepting side is [`serve_control_stream`], called
//! by the replication listener for a connection that opens with
//! `ControlHello`.
//!
//! Owns: per-peer bounded send queues (dropping the oldest message when
//! full), the dial/reconnect loop with backoff, and handing inbound control
//! frames to the driver with the sender named by its certificate.
//! Must never: block the driver (sending only queues), trust a member name
//! inside a message, or let one slow or dead peer delay another.

use super::driver::PeerNet;
use super::events::Message;
use super::status::Status;
use crate::model::MemberId;
use crate::transport::{Retry, TlsContext, TransportError};
use crate::wire::{
    ClientMsg, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION, ServerMsg, WireError,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};

/// Messages queued per peer. Controller messages are small and only the
/// newest matter (a heartbeat or vote round supersedes older ones), so a
/// short queue that drops the oldest is enough.
pub const QUEUE_LEN: usize = 64;
/// How long the dialled member has to answer the control hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping member spends sending what is still queued.
const FLUSH_ON_STOP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ControlStreamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("refused by {member}: {reason}")]
    Refused { member: MemberId, reason: String },
    #[error("peer {member} broke the control protocol: {reason}")]
    Protocol { member: MemberId, reason: String },
    #[error("peer {0} did not answer the control hello in time")]
    Timeout(MemberId),
}

/// A bounded queue that drops its oldest entry when full.
#[derive(Debug, Default)]
struct PeerQueue {
    q: Mutex<VecDeque<Message>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl PeerQueue {
    fn push(&self, msg: Message) {
        {
            let mut q = match self.q.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            if q.len() >= QUEUE_LEN {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(msg);
        }
        // A stored permit: a sender that is busy writing sees it next time.
        self.ready.notify_one();
    }

    fn drain(&self) -> Vec<Message> {
        let mut q = match self.q.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        q.drain(..).collect()
    }
}

/// The production [`PeerNet`]: one dialling task per peer.
#[derive(Debug, Clone)]
pub struct TlsPeerNet {
    queues: Arc<BTreeMap<MemberId, Arc<PeerQueue>>>,
}

/// What a dialling task needs.
#[derive(Clone, Debug)]
pub struct DialParams {
    pub tls: Arc<TlsContext>,
    pub cluster: String,
    pub me: MemberId,
    /// Role, epoch and position for the control hello (the controller's
    /// status; a witness says `witness`).
    pub status: watch::Receiver<Status>,
    pub shutdown: watch::Receiver<bool>,
}

impl TlsPeerNet {
    /// Start one dialling task per `(member, replication address)`.
    pub fn start(params: DialParams, peers: Vec<(MemberId, String)>) -> TlsPeerNet {
        let mut queues = BTreeMap::new();
        for (member, addr) in peers {
            let q = Arc::new(PeerQueue::default());
            queues.insert(member.clone(), q.clone());
            tokio::spawn(dial_loop(params.clone(), member, addr, q));
        }
        TlsPeerNet {
            queues: Arc::new(queues),
        }
    }

    /// Messages dropped so far because a peer's queue was full.
    pub fn dropped(&self, peer: &MemberId) -> u64 {
        self.queues
            .get(peer)
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
    }
}

impl PeerNet for TlsPeerNet {
    fn send(&self, to: &MemberId, msg: Message) {
        match self.queues.get(to) {
            Some(q) => q.push(msg),
            None => tracing::debug!(peer = %to, "no control stream for this member"),
        }
    }
}

async fn dial_loop(p: DialParams, peer: MemberId, addr: String, queue: Arc<PeerQueue>) {
    let mut shutdown = p.shutdown.clone();
    // Capped at 1 s: after a partition heals, the controller must hear its
    // peers again well within failover_timeout (a control dial is cheap).
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        if *shutdown.borrow() {
            return;
        }
        match dial_once(&p, &peer, &addr, &queue, &mut shutdown).await {
            Ok(()) => retry.reset(),
            Err(e) => tracing::debug!(peer = %peer, error = %e, "control stream ended"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry.next_delay()) => {}
            r = shutdown.changed() => if r.is_err() { return },
        }
    }
}

async fn dial_once(
    p: &DialParams,
    peer: &MemberId,
    addr: &str,
    queue: &PeerQueue,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ControlStreamError> {
    let stream = p.tls.connect(addr, peer).await?;
    let (r, w) = tokio::io::split(stream);
    let reader: FrameReader<_, ServerMsg> = FrameReader::new(r);
    let writer: FrameWriter<_, ClientMsg> = FrameWriter::new(w);
    let hello = {
        let s = p.status.borrow();
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: p.cluster.clone(),
            member: p.me.clone(),
            role: s.role,
            epoch: s.epoch,
            position: s.position,
            want_snapshot: false,
            schema: None,
        }
    };
    run_dialled(peer, hello, reader, writer, queue, shutdown).await
}

/// The dialling side of one control stream, over any byte stream.
async fn run_dialled<R, W>(
    peer: &MemberId,
    hello: Hello,
    mut reader: FrameReader<R, ServerMsg>,
    mut writer: FrameWriter<W, ClientMsg>,
    queue: &PeerQueue,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ControlStreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer.send(&ClientMsg::ControlHello(hello)).await?;
    match tokio::time::timeout(WELCOME_TIMEOUT, reader.recv()).await {
        Err(_) => return Err(ControlStreamError::Timeout(peer.clone())),
        Ok(Ok(Some(ServerMsg::Welcome(_)))) => {}
        Ok(Ok(Some(ServerMsg::Refuse { reason }))) => {
            return Err(ControlStreamError::Refused {
                member: peer.clone(),
                reason,
            });
        }
        Ok(Ok(Some(_))) => {
            return Err(ControlStreamError::Protocol {
                member: peer.clone(),
                reason: "no welcome".into(),
            });
        }
        Ok(Ok(None)) => {
            return Err(ControlStreamError::Protocol {
                member: peer.clone(),
                reason: "closed during the handshake".into(),
            });
        }
        Ok(Err(e)) => return Err(e.into()),
    }
    tracing::debug!(peer = %peer, "control stream open");
    loop {
        for msg in queue.drain() {
            writer.feed(&ClientMsg::Control(msg)).await?;
        }
        writer.flush().await?;
        tokio::select! {
            // Queued messages first: a handover queued just before the
            // agent stops must go out before the stream closes.
            biased;
            _ = queue.ready.notified() => {}
            // Nothing is expected from the peer; reading only notices that
            // it closed the stream (`recv` is cancel-safe).
            m = reader.recv() => match m {
                Ok(None) => return Ok(()),
                Ok(Some(ServerMsg::Refuse { reason })) => {
                    return Err(ControlStreamError::Refused { member: peer.clone(), reason });
                }
                Ok(Some(_)) => {
                    return Err(ControlStreamError::Protocol {
                        member: peer.clone(),
                        reason: "unexpected frame on a control stream".into(),
                    });
                }
                Err(e) => return Err(e.into()),
            },
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    // What the driver queued last (a handover, a final
                    // heartbeat) still goes out, for a moment at most.
                    let last = async {
                        for msg in queue.drain() {
                            writer.feed(&ClientMsg::Control(msg)).await?;
                        }
                        writer.flush().await
                    };
                    let _ = tokio::time::timeout(FLUSH_ON_STOP, last).await;
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
            }
        }
    }
}

/// The accepting side of a control stream, for the replication listener:
/// call it with the first frame's `ClientMsg::ControlHello` payload, after
/// the TLS handshake named the `peer`. It checks the hello (protocol,
/// cluster, certificate name), answers `Welcome(me)` or `Refuse`, then hands
/// every `ClientMsg::Control` frame to the driver as `(peer, msg)` until the
/// stream ends. Any member accepts control streams, whatever its role.
///
/// Inbound messages are dropped when the driver's queue is full (the engine
/// tolerates loss; blocking here would only back up stale messages).
pub async fn serve_control_stream<R, W>(
    cluster: &str,
    me: Hello,
    peer: MemberId,
    hello: Hello,
    mut reader: FrameReader<R, ClientMsg>,
    mut writer: FrameWriter<W, ServerMsg>,
    inbound: mpsc::Sender<(MemberId, Message)>,
) -> Result<(), ControlStreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Err(reason) = hello.check(cluster, &peer) {
        tracing::warn!(peer = %peer, %reason, "refusing control stream");
        let _ = writer
            .send(&ServerMsg::Refuse {
                reason: reason.clone(),
            })
            .await;
        return Err(ControlStreamError::Refused {
            member: peer,
            reason,
        });
    }
    writer.send(&ServerMsg::Welcome(me)).await?;
    tracing::debug!(peer = %peer, role = %hello.role, "control stream accepted");
    loop {
        match reader.recv().await? {
            None => return Ok(()),
            Some(ClientMsg::Control(msg)) => match inbound.try_send((peer.clone(), msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(peer = %peer, "controller inbox full; message dropped");
                }
                // The driver has stopped: nothing left to deliver to.
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            },
            Some(_) => {
                return Err(ControlStreamError::Protocol {
                    member: peer,
                    reason: "a non-control frame on a control stream".into(),
                });
            }
        }
    }
}

/// The hello a member answers control streams with.
pub fn welcome_hello(cluster: &str, status: &Status) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        member: status.member.clone(),
        role: status.role,
        epoch: status.epoch,
        position: status.position,
        want_snapshot: false,
        schema: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Epoch, Position, Role};

    fn hb(n: u64) -> Message {
        Message::Heartbeat {
            epoch: Epoch(1),
            sent_at: n,
            head: Position::new(1, n),
            commit: Position::ZERO,
            paused: false,
            announced: Position::ZERO,
            positions: Vec::new(),
        }
    }

    fn hello(member: &str, cluster: &str) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: cluster.into(),
            member: MemberId::new(member),
            role: Role::Passive,
            epoch: Epoch(1),
            position: Position::new(1, 3),
            want_snapshot: false,
            schema: None,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let q = PeerQueue::default();
        for n in 0..(QUEUE_LEN as u64 + 5) {
            q.push(hb(n));
        }
        let got = q.drain();
        assert_eq!(got.len(), QUEUE_LEN);
        assert_eq!(got[0], hb(5));
        assert_eq!(got[QUEUE_LEN - 1], hb(QUEUE_LEN as u64 + 4));
        assert_eq!(q.dropped.load(Ordering::Relaxed), 5);
        assert!(q.drain().is_empty());
    }

    #[tokio::test]
    async fn control_frames_reach_the_driver_named_by_the_certificate() {
        // Two in-memory pipes stand for one TLS connection's two directions.
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (cr, cw) = tokio::io::split(client);
        let (sr, sw) = tokio::io::split(server);
        let (tx, mut rx) = mpsc::channel(16);
        let serve = tokio::spawn(serve_control_stream(
            "prod",
            hello("a", "prod"),
            MemberId::new("b"),
            hello("b", "prod"),
            FrameReader::new(sr),
            FrameWriter::new(sw),
            tx,
        ));
        // The server answered the hello the test made for it; the dialling
        // side reads the welcome and sends its queue.
        let queue = PeerQueue::default();
        queue.push(hb(1));
        queue.push(hb(2));
        let (_sd_tx, mut sd_rx) = watch::channel(false);
        let dial = tokio::spawn(async move {
            let mut reader: FrameReader<_, ServerMsg> = FrameReader::new(cr);
            let mut writer: FrameWriter<_, ClientMsg> = FrameWriter::new(cw);
            // `serve_control_stream` was given the hello directly (the
            // listener reads it); skip sending it here and read the welcome.
            match reader.recv().await {
                Ok(Some(ServerMsg::Welcome(h))) => assert_eq!(h.member, MemberId::new("a")),
                other => panic!("expected a welcome, got {other:?}"),
            }
            for m in queue.drain() {
                writer.send(&ClientMsg::Control(m)).await.unwrap();
            }
            writer
                .send(&ClientMsg::Ack {
                    applied: Position::ZERO,
                })
                .await
                .unwrap();
            let _ = sd_rx.changed().await;
        });
        assert_eq!(rx.recv().await, Some((MemberId::new("b"), hb(1))));
        assert_eq!(rx.recv().await, Some((MemberId::new("b"), hb(2))));
        // A replication frame on a control stream ends it.
        let r = serve.await.unwrap();
        assert!(
            matches!(r, Err(ControlStreamError::Protocol { .. })),
            "{r:?}"
        );
        dial.abort();
    }

    #[tokio::test]
    async fn a_hello_from_another_cluster_is_refused() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (cr, _cw) = tokio::io::split(client);
        let (sr, sw) = tokio::io::split(server);
        let (tx, _rx) = mpsc::channel(16);
        let r = serve_control_stream(
            "prod",
            hello("a", "prod"),
            MemberId::new("b"),
            hello("b", "staging"),
            FrameReader::new(sr),
            FrameWriter::new(sw),
            tx,
        )
        .await;
        assert!(
            matches!(r, Err(ControlStreamError::Refused { .. })),
            "{r:?}"
        );
        let mut reader: FrameReader<_, ServerMsg> = FrameReader::new(cr);
        match reader.recv().await {
            Ok(Some(ServerMsg::Refuse { reason })) => {
                assert!(reason.contains("staging"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A control stream over an in-memory pipe: member `a` dialling `b`
    /// (run_dialled, fed by the returned queue, stopped by the returned
    /// sender) and `b` accepting it as the listener does (frames arrive on
    /// the returned receiver).
    struct Pair {
        queue: Arc<PeerQueue>,
        stop: watch::Sender<bool>,
        received: mpsc::Receiver<(MemberId, Message)>,
        dial: tokio::task::JoinHandle<Result<(), ControlStreamError>>,
        serve: tokio::task::JoinHandle<Result<(), ControlStreamError>>,
    }

    async fn pair(queue: Arc<PeerQueue>) -> Pair {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (cr, cw) = tokio::io::split(client);
        let (sr, sw) = tokio::io::split(server);
        let (stop, mut sd_rx) = watch::channel(false);
        let q2 = queue.clone();
        let dial = tokio::spawn(async move {
            run_dialled(
                &MemberId::new("a"),
                hello("b", "prod"),
                FrameReader::new(cr),
                FrameWriter::new(cw),
                &q2,
                &mut sd_rx,
            )
            .await
        });
        let mut reader: FrameReader<_, ClientMsg> = FrameReader::new(sr);
        let writer: FrameWriter<_, ServerMsg> = FrameWriter::new(sw);
        let first = reader.recv().await.unwrap();
        let Some(ClientMsg::ControlHello(h)) = first else {
            panic!("expected a control hello, got {first:?}");
        };
        let (tx, received) = mpsc::channel(16);
        let serve = tokio::spawn(serve_control_stream(
            "prod",
            hello("a", "prod"),
            MemberId::new("b"),
            h,
            reader,
            writer,
            tx,
        ));
        Pair {
            queue,
            stop,
            received,
            dial,
            serve,
        }
    }

    #[tokio::test]
    async fn the_dialling_side_sends_its_hello_then_its_queue() {
        let queue = Arc::new(PeerQueue::default());
        queue.push(hb(7));
        let mut p = pair(queue).await;
        assert_eq!(p.received.recv().await, Some((MemberId::new("b"), hb(7))));
        // Later sends are woken by the queue.
        p.queue.push(hb(8));
        assert_eq!(p.received.recv().await, Some((MemberId::new("b"), hb(8))));
        p.stop.send(true).unwrap();
        let r = p.dial.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        // The dialler closed its side: the server ends cleanly.
        assert!(p.serve.await.unwrap().is_ok());
    }

    /// A message queued as the agent stops still reaches the peer (the
    /// handover of a graceful stop is such a message). Twenty fresh streams:
    /// a dialler that picked the stop over the queue at random would lose
    /// one of them with near certainty.
    #[tokio::test]
    async fn a_message_queued_as_the_agent_stops_still_goes_out() {
        for round in 0..20u64 {
            let mut p = pair(Arc::new(PeerQueue::default())).await;
            p.queue.push(hb(1));
            assert_eq!(p.received.recv().await, Some((MemberId::new("b"), hb(1))));
            // The dialler is parked; the last message and the stop arrive
            // together.
            p.queue.push(hb(100 + round));
            p.stop.send(true).unwrap();
            assert_eq!(
                p.received.recv().await,
                Some((MemberId::new("b"), hb(100 + round))),
                "round {round}: the last message was dropped"
            );
            assert!(p.dial.await.unwrap().is_ok());
            assert!(p.serve.await.unwrap().is_ok());
        }
    }

    fn status_of(me: &str) -> Status {
        use crate::control::{EngineConfig, fixtures};
        let cfg = EngineConfig {
            auto_failover: false,
            ..fixtures::config(me, &["a", "b"])
        };
        fixtures::status(cfg, Role::Passive)
    }

    #[tokio::test]
    async fn messages_cross_real_mutual_tls_and_survive_a_late_listener() {
        use crate::certs::{ca_cert_path, init_certs, member_cert_path, member_key_path};
        use crate::config::TlsPaths;
        let dir = tempfile::tempdir().unwrap();
        let members = [MemberId::new("a"), MemberId::new("b")];
        init_certs(dir.path(), &members, false).unwrap();
        let ctx = |me: &str, peer: &str| {
            let paths = TlsPaths {
                ca: ca_cert_path(dir.path()),
                cert: member_cert_path(dir.path(), &MemberId::new(me)),
                key: member_key_path(dir.path(), &MemberId::new(me)),
            };
            TlsContext::load(&paths, vec![MemberId::new(peer)]).unwrap()
        };
        let (tls_a, tls_b) = (ctx("a", "b"), ctx("b", "a"));
        // Reserve b's port, but accept only after a has started dialling, so
        // the first attempts fail and the queue must hold the message.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);

        let (_st_tx, st_rx) = watch::channel(status_of("a"));
        let (sd_tx, sd_rx) = watch::channel(false);
        let net = TlsPeerNet::start(
            DialParams {
                tls: tls_a,
                cluster: "prod".into(),
                me: MemberId::new("a"),
                status: st_rx,
                shutdown: sd_rx,
            },
            vec![(MemberId::new("b"), addr.clone())],
        );
        net.send(&MemberId::new("b"), hb(1));
        tokio::time::sleep(Duration::from_millis(300)).await;

        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let welcome = welcome_hello("prod", &status_of("b"));
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok((peer, stream)) = tls_b.accept(tcp).await else {
                    continue;
                };
                let (r, w) = tokio::io::split(stream);
                let mut reader: FrameReader<_, ClientMsg> = FrameReader::new(r);
                let writer: FrameWriter<_, ServerMsg> = FrameWriter::new(w);
                if let Ok(Some(ClientMsg::ControlHello(h))) = reader.recv().await {
                    let _ = serve_control_stream(
                        "prod",
                        welcome.clone(),
                        peer,
                        h,
                        reader,
                        writer,
                        tx.clone(),
                    )
                    .await;
                }
            }
        });
        let got = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        assert_eq!(got.unwrap(), Some((MemberId::new("a"), hb(1))));
        net.send(&MemberId::new("b"), hb(2));
        let got = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        assert_eq!(got.unwrap(), Some((MemberId::new("a"), hb(2))));
        assert_eq!(net.dropped(&MemberId::new("b")), 0);
        sd_tx.send(true).unwrap();
        server.abort();
    }
}
