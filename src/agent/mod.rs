//! The sidecar runtime behind `understudy run`: opens the member database,
//! binds the listeners, and runs the tasks of this member's role until the
//! shutdown signal.
//!
//! Owns: composition and lifetimes of the long-running tasks.
//! Must never: make decisions of its own about roles (the promotion
//! controller in `control/` does; `roles.rs` carries them out), or exit on a
//! transient database or network error.

mod controller;
mod roles;

use crate::config::Config;
use crate::control::EngineConfig;
use crate::control::driver::{ControlStore, ControlStoreError, DriverError, DriverIo};
use crate::control::peer_net::{DialParams, TlsPeerNet};
use crate::model::{Epoch, Position, Role};
use crate::replication::live::{Live, LiveInner, PeerLive};
use crate::replication::server::ControlPlane;
use crate::replication::{NodeCtx, server};
use crate::store::{AnyStore, MemberStore, StoreError};
use crate::transport::{TlsContext, TransportError};
use roles::{MemberControl, RoleRuntime, Sink};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    StatusTls(#[from] crate::status::tls::StatusTlsError),
    #[error("promotion controller: {0}")]
    Control(DriverError),
    #[error("promotion controller state: {0}")]
    ControlStore(ControlStoreError),
    #[error(transparent)]
    WitnessFile(#[from] crate::control::witness_file::WitnessFileError),
    #[error("cannot listen on {what} address {addr}: {reason}")]
    Bind {
        what: &'static str,
        addr: String,
        reason: String,
    },
    #[error(
        "the database belongs to cluster {db_cluster:?} member {db_member:?}, but the config says cluster {cfg_cluster:?} member {cfg_member:?}: point database.url at this member's own database"
    )]
    WrongDatabase {
        db_cluster: String,
        db_member: String,
        cfg_cluster: String,
        cfg_member: String,
    },
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr).await.map_err(|e| AgentError::Bind {
        what,
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}

/// Run the member until `shutdown` becomes true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let store = match &config.database {
        Some(url) => {
            let s = AnyStore::open(url, &config.capture).await?;
            s.check_schema().await?;
            Some(Arc::new(s))
        }
        None => None,
    };
    let (role, epoch, active, position) = match &store {
        Some(s) => {
            let st = s.state().await?;
            if st.cluster != config.cluster || st.member != config.member {
                return Err(AgentError::WrongDatabase {
                    db_cluster: st.cluster,
                    db_member: st.member.to_string(),
                    cfg_cluster: config.cluster.clone(),
                    cfg_member: config.member.to_string(),
                });
            }
            (st.role, st.epoch, st.active, st.position)
        }
        None => (
            Role::Witness,
            Epoch(0),
            Some(config.initial_active.clone()),
            Position::ZERO,
        ),
    };
    // A witness keeps its votes in a file instead of a database.
    let witness = if store.is_none() {
        let wf = crate::control::witness_file::WitnessFile::open(
            &config.witness_state,
            config.initial_active.clone(),
        )?;
        let st = wf.state().await;
        Some((wf, st.to_persisted()))
    } else {
        None
    };
    let peers: BTreeMap<_, _> = config
        .peers
        .iter()
        .map(|p| {
            (
                p.member.clone(),
                PeerLive {
                    witness: p.witness,
                    status: Some(p.status.clone()),
                    ..PeerLive::default()
                },
            )
        })
        .collect();
    let schema_version = match &store {
        Some(s) => s.schema_version().await?,
        None => 0,
    };
    let live = Arc::new(Live::new(LiveInner {
        cluster: config.cluster.clone(),
        member: config.member.clone(),
        role,
        epoch,
        active: active.clone(),
        position,
        active_head: position,
        behind_since: None,
        last_heartbeat: None,
        database_ok: true,
        database_error: None,
        stalled_write: None,
        divergent_changes: 0,
        peers,
        started: Instant::now(),
        backend: config
            .database
            .as_ref()
            .map(|d| d.backend_name())
            .unwrap_or("none"),
        snapshot: None,
        controller: None,
        hooks: Vec::new(),
        lease_until: None,
        schema_fingerprint: store
            .as_ref()
            .map(|s| s.catalog().fingerprint().to_string())
            .unwrap_or_default(),
        schema_version,
        apply_blocked: None,
    }));
    tracing::info!(
        member = %config.member, %role, %epoch,
        active = %active.as_ref().map(ToString::to_string).unwrap_or_default(),
        %position,
        reason = "role recorded in the member database at start",
        "role"
    );

    let allowed = config.peers.iter().map(|p| p.member.clone()).collect();
    let tls = TlsContext::load(&config.tls, allowed)?;
    // Certificates are reloaded when their files change; the watcher lives
    // as long as the agent.
    let _cert_watcher = tls.watch()?;
    let repl_listener = bind("replication", config.replication.listen).await?;
    let status_listener = bind("status", config.status.listen).await?;
    let node = Arc::new(NodeCtx::new(config.clone(), live.clone(), epoch));
    let (head_tx, head_rx) = watch::channel(position);

    // The agent's own stop signal: set after the external shutdown, once a
    // stopping active has handed over (its tasks must run until then).
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    // The promotion controller and its plumbing.
    let engine_cfg = EngineConfig::from_config(&config);
    let persisted = match &store {
        Some(s) => ControlStore::load(s)
            .await
            .map_err(AgentError::ControlStore)?,
        None => witness.as_ref().map(|w| w.1.clone()).unwrap_or_else(|| {
            crate::control::witness_file::WitnessState::initial(config.initial_active.clone())
                .to_persisted()
        }),
    };
    let initial_status = crate::control::Engine::new(engine_cfg.clone(), persisted.clone(), 0)
        .map_err(|e| AgentError::Control(e.into()))?
        .0
        .status(0);
    let (hello_tx, hello_rx) = watch::channel(initial_status);
    let (net_in_tx, net_in_rx) = mpsc::channel(controller::INBOX_LEN);
    let (drv_in_tx, drv_in_rx) = mpsc::channel(controller::INBOX_LEN);
    let _relay = controller::relay_inbound(node.metrics.clone(), net_in_rx, drv_in_tx);
    let net = controller::MeteredNet {
        net: TlsPeerNet::start(
            DialParams {
                tls: tls.clone(),
                cluster: config.cluster.clone(),
                me: config.member.clone(),
                status: hello_rx.clone(),
                shutdown: stop.clone(),
            },
            config
                .peers
                .iter()
                .map(|p| (p.member.clone(), p.address.clone()))
                .collect(),
        ),
        metrics: node.metrics.clone(),
    };
    let roles = RoleRuntime::new(
        node.clone(),
        tls.clone(),
        store.clone(),
        head_tx,
        stop.clone(),
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let io = DriverIo {
        position: live.position_watch(),
        apply_blocked: live.apply_blocked_watch(),
        inbound: drv_in_rx,
        commands: cmd_rx,
        shutdown: stop.clone(),
    };
    let sink = Sink(roles.clone());
    let (ctl_status, driver_task) = match &store {
        Some(s) => {
            let cs = MemberControl {
                store: s.clone(),
                roles: roles.clone(),
            };
            controller::start(engine_cfg.clone(), persisted.clone(), cs, net, sink, io).await
        }
        None => {
            let wf = witness.map(|w| w.0).ok_or_else(|| {
                AgentError::ControlStore(ControlStoreError::Other(
                    "the witness state file could not be opened".into(),
                ))
            })?;
            controller::start(engine_cfg.clone(), persisted.clone(), wf, net, sink, io).await
        }
    }
    .map_err(AgentError::Control)?;
    let _publisher = controller::publish_status(node.clone(), ctl_status.clone(), hello_tx);
    // A member that was following an active goes on following it; the
    // controller redirects it when a newer epoch's heartbeats arrive.
    if let Some(a) = &persisted.active
        && *a != config.member
    {
        roles.follow(persisted.epoch, a).await;
    }
    let (control_handle, control_inbox) = crate::status::control::channel(16);
    let _requests = controller::serve_requests(control_inbox, cmd_tx.clone());

    let checksums = store.as_ref().map(|s| {
        Arc::new(crate::replication::marks::ChecksumService {
            node: node.clone(),
            store: s.clone(),
        })
    });
    let status_ctx = crate::status::StatusContext::new(
        &config,
        live.clone(),
        node.metrics.clone(),
        store.clone(),
    )?
    .with_checksums(checksums)
    .with_control(control_handle);
    tasks.spawn(crate::status::serve(
        status_listener,
        status_ctx,
        stop.clone(),
    ));
    if let Some(s) = &store {
        tasks.spawn(crate::replication::retention::run(
            node.clone(),
            s.clone(),
            stop.clone(),
        ));
        tasks.spawn(crate::status::probe::run(
            s.clone(),
            live.clone(),
            node.metrics.clone(),
            config
                .replication
                .heartbeat_interval
                .max(Duration::from_secs(1)),
            stop.clone(),
        ));
    }
    tasks.spawn(server::serve(
        repl_listener,
        tls.clone(),
        node.clone(),
        store.clone(),
        head_rx,
        Some(ControlPlane {
            inbound: net_in_tx,
            status: ctl_status.clone(),
        }),
        stop.clone(),
    ));
    tracing::info!(
        replication = %config.replication.listen,
        status = %config.status.listen,
        "agent running"
    );
    let mut sd = shutdown.clone();
    let _ = sd.wait_for(|s| *s).await;
    tracing::info!("shutting down");

    // An active that stops on purpose hands over first, so the cluster
    // does not wait for failover_timeout; if nobody can take over, it ends
    // its lease below.
    let handed_to = controller::hand_over_before_stop(
        &ctl_status,
        &cmd_tx,
        config.replication.failover_timeout,
        HANDOVER_ON_STOP,
    )
    .await;
    let was_leading = {
        let s = ctl_status.borrow();
        s.active.as_ref() == Some(&config.member) && s.epoch >= s.term
    };
    let _ = stop_tx.send(true);
    // The driver stops first: no lease renewal can follow the ending below.
    if tokio::time::timeout(Duration::from_secs(5), driver_task)
        .await
        .is_err()
    {
        tracing::warn!("the promotion controller did not stop within 5 s");
    }
    if let Some(to) = handed_to {
        tracing::info!(to = %to, reason = "graceful stop", "handed over to {to}; this member refuses application writes");
    } else if was_leading && let Some(s) = &store {
        end_lease(s, &node.metrics).await;
    }
    roles.stop_all().await;
    // Tasks watch the same signal; give them a moment to finish their batch.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 5 s; aborting them");
    }
    if let Some(s) = &store
        && let Err(e) = s.abort_apply().await
    {
        tracing::warn!(error = %e, "rolling back the open apply transaction failed");
    }
    Ok(())
}

/// How long a stopping active tries to hand over before it just ends its
/// lease.
const HANDOVER_ON_STOP: Duration = Duration::from_secs(10);

/// End the lease at once (an active that stops on purpose fences first):
/// the database refuses application writes from then on, without waiting
/// for `lease_timeout`. The role stays as it was, so the next start regains
/// the lease once a majority answers.
async fn end_lease(store: &AnyStore, metrics: &crate::replication::metrics::Metrics) {
    match store.renew_lease(Duration::ZERO).await {
        Ok(_) => {
            metrics.fences.inc();
            tracing::info!(
                reason = "graceful stop",
                "lease ended: application writes are refused until this agent runs again"
            );
        }
        Err(e) => tracing::warn!(
            error = %e,
            "could not end the lease on stop; it runs out by itself within lease_timeout"
        ),
    }
}
