//! The replication listener: accepts mutual-TLS connections, checks the
//! handshake, and hands a welcomed passive to its shipper, or a control
//! stream (`ControlHello`) to the promotion controller.
//!
//! Owns: the accept loop and the handshake rules on the accepting side.
//! Must never: read a frame from a peer whose certificate was refused (the
//! transport drops it first), or let one bad connection affect another.

use crate::control::peer_net::{serve_control_stream, welcome_hello};
use crate::control::{Message, Status as ControlStatus};
use crate::model::{MemberId, Position, Role};
use crate::replication::shipper::{Start, Subscriber, check_start, ship};
use crate::replication::{NodeCtx, ReplicationError};
use crate::store::AnyStore;
use crate::store::MemberStore;
use crate::transport::TlsContext;
use crate::wire::{
    ClientMsg, EpochEntry, HISTORY_MAX, Hello, PROTOCOL_VERSION, SchemaDesc, SchemaHere, ServerMsg,
};
use crate::wire::{FrameReader, FrameWriter};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a connected peer has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where control streams go: the promotion controller's inbox, and its
/// status for the answering hello.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    pub inbound: tokio::sync::mpsc::Sender<(MemberId, Message)>,
    pub status: watch::Receiver<ControlStatus>,
}

/// Accept connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsContext>,
    node: Arc<NodeCtx>,
    store: Option<Arc<AnyStore>>,
    head_rx: watch::Receiver<Position>,
    control: Option<ControlPlane>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, node, store, head_rx, control, shutdown) = (
            tls.clone(),
            node.clone(),
            store.clone(),
            head_rx.clone(),
            control.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = handle(tcp, tls, node, store, head_rx, control, shutdown).await {
                tracing::warn!(peer_addr = %addr, error = %e, "replication connection closed");
            }
        });
    }
}

async fn handle(
    tcp: tokio::net::TcpStream,
    tls: Arc<TlsContext>,
    node: Arc<NodeCtx>,
    store: Option<Arc<AnyStore>>,
    head_rx: watch::Receiver<Position>,
    control: Option<ControlPlane>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReplicationError> {
    let (peer, stream) = tls.accept(tcp).await?;
    let (r, w) = tokio::io::split(stream);
    let mut reader: FrameReader<_, ClientMsg> = FrameReader::new(r);
    let mut writer: FrameWriter<_, ServerMsg> = FrameWriter::new(w);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.recv()).await {
        Err(_) => return Err(ReplicationError::Timeout("waiting for the peer's hello")),
        Ok(Ok(Some(ClientMsg::Hello(h)))) => h,
        Ok(Ok(Some(ClientMsg::ControlHello(h)))) => {
            let Some(cp) = control else {
                return refuse(
                    &mut writer,
                    &peer,
                    "no promotion controller runs on this member".into(),
                )
                .await;
            };
            let me = welcome_hello(&node.config.cluster, &cp.status.borrow());
            return serve_control_stream(
                &node.config.cluster,
                me,
                peer.clone(),
                h,
                reader,
                writer,
                cp.inbound,
            )
            .await
            .map_err(|e| ReplicationError::Peer(format!("control stream from {peer}: {e}")));
        }
        Ok(Ok(Some(_))) => {
            return Err(ReplicationError::Peer(format!(
                "{peer} spoke before its hello"
            )));
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e.into()),
    };
    if let Err(reason) = hello.check(&node.config.cluster, &peer) {
        return refuse(&mut writer, &peer, reason).await;
    }
    let my_role = node.live.read(|s| s.role);
    let shipping = node.shipping.subscribe();
    let Some(store) = store.filter(|_| *shipping.borrow()) else {
        let active = node.live.read(|s| s.active.clone());
        return refuse(
            &mut writer,
            &peer,
            format!(
                "member {} is {my_role}, not the active; the active member is {}",
                node.member,
                active
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ),
        )
        .await;
    };
    let catalog = store.catalog();
    let history = store.schema_history().await?;
    let version = history.last().map_or(0, |h| h.0);
    let here = SchemaHere {
        catalog: &catalog,
        version,
        history: &history,
    };
    let differs = hello
        .schema
        .as_ref()
        .and_then(|theirs| theirs.cannot_follow(here));
    let mut snapshot = None;
    let start = match hello.role {
        Role::Witness => Start::Stream,
        _ => check_start(&store, hello.position, hello.want_snapshot).await?,
    };
    // A diverged member rejoins first, whatever its tables: the schema
    // change that makes them differ may be in the tail it gives back.
    if let Start::Rejoin { keep_upto, reason } = start {
        tracing::warn!(peer = %peer, %keep_upto, %reason, "asking a diverged member to rejoin");
        writer
            .send(&ServerMsg::Rejoin { keep_upto, reason })
            .await?;
        return Ok(());
    }
    if let Some(difference) = differs {
        tracing::warn!(peer = %peer, %difference, "refusing a member whose captured tables differ");
        writer
            .send(&ServerMsg::SchemaDiffers { difference })
            .await?;
        return Ok(());
    }
    match start {
        Start::Stream | Start::Rejoin { .. } => {}
        Start::Snapshot(reason) => snapshot = Some(reason),
        Start::Refuse(reason) => return refuse(&mut writer, &peer, reason).await,
    }
    let me = Hello {
        protocol: PROTOCOL_VERSION,
        cluster: node.config.cluster.clone(),
        member: node.member.clone(),
        role: my_role,
        epoch: node.epoch(),
        position: *head_rx.borrow(),
        want_snapshot: false,
        schema: Some(SchemaDesc::of(&catalog, version)),
    };
    writer.send(&ServerMsg::Welcome(me)).await?;
    let history = store.epoch_history().await?;
    let skip = history.len().saturating_sub(HISTORY_MAX);
    writer
        .send(&ServerMsg::History(
            history
                .into_iter()
                .skip(skip)
                .map(|r| EpochEntry {
                    epoch: r.epoch,
                    active: r.active,
                    start: r.start,
                    at_ms: r.at_ms,
                    reason: r.reason,
                })
                .collect(),
        ))
        .await?;
    tracing::info!(peer = %peer, from = %hello.position, role = %hello.role, "streaming to peer");
    let stop = stop_when_not_shipping(shipping, shutdown);
    ship(
        node,
        store,
        Subscriber {
            member: peer,
            role: hello.role,
            from: hello.position,
            snapshot,
        },
        reader,
        writer,
        head_rx,
        stop,
    )
    .await
}

/// A stop signal for one shipping session: set when the agent shuts down or
/// this member stops shipping (it is no longer the active).
fn stop_when_not_shipping(
    mut shipping: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    crate::replication::stop_signal(async move {
        tokio::select! {
            _ = shipping.wait_for(|on| !*on) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    })
    .1
}

/// Tell the peer why it is refused, log it, and end the connection.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W, ServerMsg>,
    peer: &crate::model::MemberId,
    reason: String,
) -> Result<(), ReplicationError> {
    tracing::warn!(peer = %peer, %reason, "refusing replication peer");
    let _ = writer
        .send(&ServerMsg::Refuse {
            reason: reason.clone(),
        })
        .await;
    Err(ReplicationError::Peer(reason))
}
