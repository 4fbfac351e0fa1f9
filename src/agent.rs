//! The sidecar runtime behind `understudy run`: opens the member database,
//! binds the listeners, and runs the tasks of this member's role until the
//! shutdown signal.
//!
//! Owns: composition and lifetimes of the long-running tasks.
//! Must never: make decisions of its own about roles (it reads them from the
//! database; the promotion controller changes them), or exit on a transient
//! database or network error.

use crate::config::Config;
use crate::model::{Epoch, Position, Role};
use crate::replication::live::{Live, LiveInner, PeerLive};
use crate::replication::{NodeCtx, applier, head, server};
use crate::store::{AnyStore, MemberStore, StoreError};
use crate::transport::{TlsContext, TransportError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    StatusTls(#[from] crate::status::tls::StatusTlsError),
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
            let s = AnyStore::open(url).await?;
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
        divergent_changes: 0,
        peers,
        started: Instant::now(),
        backend: config
            .database
            .as_ref()
            .map(|d| d.backend_name())
            .unwrap_or("none"),
        snapshot: None,
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

    let mut tasks = tokio::task::JoinSet::new();
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
    .with_checksums(checksums);
    tasks.spawn(crate::status::serve(
        status_listener,
        status_ctx,
        shutdown.clone(),
    ));
    if let Some(s) = &store {
        tasks.spawn(crate::replication::retention::run(
            node.clone(),
            s.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::status::probe::run(
            s.clone(),
            live.clone(),
            node.metrics.clone(),
            config
                .replication
                .heartbeat_interval
                .max(Duration::from_secs(1)),
            shutdown.clone(),
        ));
    }
    tasks.spawn(server::serve(
        repl_listener,
        tls.clone(),
        node.clone(),
        store.clone(),
        head_rx.clone(),
        shutdown.clone(),
    ));
    match (&store, role) {
        (Some(s), Role::Active) => {
            tasks.spawn(head::watch_head(
                s.clone(),
                live.clone(),
                head_tx,
                shutdown.clone(),
            ));
            tasks.spawn(renew_lease(
                s.clone(),
                live.clone(),
                node.metrics.clone(),
                config.replication.heartbeat_interval,
                config.replication.lease_timeout,
                shutdown.clone(),
            ));
        }
        _ => {
            drop(head_tx);
            tasks.spawn(applier::follow(
                node.clone(),
                tls.clone(),
                store.clone(),
                shutdown.clone(),
            ));
        }
    }
    tracing::info!(
        replication = %config.replication.listen,
        status = %config.status.listen,
        "agent running"
    );
    let mut sd = shutdown.clone();
    let _ = sd.wait_for(|s| *s).await;
    tracing::info!("shutting down");
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

/// The active renews its database lease every heartbeat. (Quorum-gated
/// renewal belongs to the promotion controller.)
///
/// On shutdown it ends the lease at once (an active that stops on purpose
/// fences first): the database refuses application writes from then on,
/// without waiting for `lease_timeout`, and the role stays `active`, so the
/// next start renews the lease and carries on. Ending it here, in the task
/// that renews it, means no renewal can race with the ending.
async fn renew_lease(
    store: Arc<AnyStore>,
    live: Arc<Live>,
    metrics: Arc<crate::status::metrics::Metrics>,
    every: Duration,
    lease: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::status::stopped(&mut shutdown) => {
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
                return;
            }
        }
        match store.renew_lease(lease).await {
            Ok(_) => live.database(Ok(())),
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                live.database(Err(e.to_string()));
            }
        }
    }
}
