//! What a role change does to this member's tasks: the promotion
//! controller's [`RoleSink`] and the member database as its
//! [`ControlStore`].
//!
//! Owns: starting and stopping the head watcher and the shipping gate (the
//! active's side) and the applier (a passive's side), keeping the live view
//! and the node's epoch in step with the controller's decisions, row
//! takeover, id generators and hooks, and the ordering rules that the
//! applier has stopped before this member records itself as a new epoch's
//! active, and that id generators have moved past the replicated rows
//! before it lifts its fence.
//! Must never: decide a role (the controller does), or let an apply
//! transaction from the old active run while this member becomes the active.

use crate::control::Hook;
use crate::control::driver::{ControlStore, ControlStoreError, RoleSink};
use crate::control::{Notice, PersistedState};
use crate::model::{Epoch, MemberId, Position, Role};
use crate::replication::{NodeCtx, applier, head};
use crate::store::{AnyStore, EpochRecord, MemberStore, Vote};
use crate::transport::TlsContext;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// How long a stopped task gets to finish its batch before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A task with its own stop signal (which the agent's shutdown also sets).
struct Stoppable {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Stoppable {
    fn spawn<F, Fut>(shutdown: &watch::Receiver<bool>, f: F) -> Stoppable
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut global = shutdown.clone();
        let (stop, rx) = crate::replication::stop_signal(async move {
            let _ = global.wait_for(|s| *s).await;
        });
        Stoppable {
            stop,
            handle: tokio::spawn(f(rx)),
        }
    }

    fn running(&self) -> bool {
        !self.handle.is_finished()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let mut handle = self.handle;
        if tokio::time::timeout(STOP_GRACE, &mut handle).await.is_err() {
            tracing::warn!("a replication task did not stop in time; aborting it");
            handle.abort();
        }
    }
}

#[derive(Default)]
struct Tasks {
    head: Option<Stoppable>,
    follow: Option<(MemberId, Stoppable)>,
}

/// The member's role-dependent tasks.
pub struct RoleRuntime {
    node: Arc<NodeCtx>,
    tls: Arc<TlsContext>,
    /// `None` on a witness.
    store: Option<Arc<AnyStore>>,
    head_tx: watch::Sender<Position>,
    shutdown: watch::Receiver<bool>,
    tasks: Mutex<Tasks>,
    hooks: crate::hooks::HookRunner,
}

impl RoleRuntime {
    pub fn new(
        node: Arc<NodeCtx>,
        tls: Arc<TlsContext>,
        store: Option<Arc<AnyStore>>,
        head_tx: watch::Sender<Position>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<RoleRuntime> {
        let hooks = crate::hooks::HookRunner::new(node.config.hooks.clone());
        Arc::new(RoleRuntime {
            node,
            tls,
            store,
            head_tx,
            shutdown,
            tasks: Mutex::new(Tasks::default()),
            hooks,
        })
    }

    /// On promotion: the rows the former active owned now belong to this
    /// member (an ordinary captured write, so it replicates), as
    /// `[takeover]` and its policy allow; nothing without `[takeover]`.
    async fn take_over(&self, from: Option<&MemberId>) {
        let (Some(store), Some(t)) = (&self.store, &self.node.config.takeover) else {
            return;
        };
        let config = &self.node.config;
        let from_owner = match from {
            Some(f) if !config.takeover_allows(f) => {
                tracing::info!(from = %f, table = %t.table, "takeover: the takeover policy does not list this member; its rows keep their owner");
                return;
            }
            Some(f) => match config.owner_id_of(f) {
                Some(o) => Some(o),
                None => {
                    tracing::warn!(from = %f, table = %t.table, "takeover: the former active is not in [[peers]], so its owner id is unknown; its rows keep their owner");
                    return;
                }
            },
            None => None,
        };
        let who = from.map_or_else(|| "no owner".to_string(), ToString::to_string);
        match store
            .take_over(&t.table, &t.owner_column, from_owner, &t.owner_id)
            .await
        {
            Ok(n) => {
                tracing::info!(from = %who, table = %t.table, column = %t.owner_column, rows = n, "rows taken over")
            }
            Err(e) => {
                tracing::warn!(from = %who, table = %t.table, error = %e, "takeover failed; the rows keep their owner")
            }
        }
    }

    /// Run a hook with this member's view in its environment; its outcome
    /// goes into the log (by the runner) and `/status`.
    async fn run_hook(&self, hook: Hook) -> bool {
        let kind = crate::hooks::HookKind::from(hook);
        if self.hooks.command(kind).is_none() {
            return true;
        }
        let role = match hook {
            Hook::OnPromote => Role::Active,
            Hook::OnDemote => Role::Passive,
            Hook::OnFence => Role::Fenced,
        };
        let (epoch, active) = self.node.live.read(|s| (s.epoch, s.active.clone()));
        let env = crate::hooks::HookEnv {
            member: self.node.member.clone(),
            role,
            epoch,
            active,
        };
        let outcome = self.hooks.run(kind, &env).await;
        if !outcome.ok {
            tracing::warn!(hook = kind.name(), timed_out = outcome.timed_out, exit_code = ?outcome.exit_code, "hook failed");
        }
        let ok = outcome.ok;
        self.node.live.update(|s| {
            s.hooks.retain(|h| h.kind != kind);
            s.hooks.push(outcome);
        });
        ok
    }

    /// Follow `active` (restarting the applier if it followed another).
    pub async fn follow(&self, epoch: Epoch, active: &MemberId) {
        self.node.set_epoch(epoch);
        self.node.live.update(|s| {
            s.epoch = epoch;
            s.active = Some(active.clone());
        });
        let Some(store) = &self.store else {
            // A witness holds no data: the controller's heartbeats are all
            // it needs.
            return;
        };
        if *active == self.node.member {
            return;
        }
        let mut t = self.tasks.lock().await;
        if let Some((current, task)) = &t.follow
            && current == active
            && task.running()
        {
            return;
        }
        if let Some((_, old)) = t.follow.take() {
            old.stop().await;
        }
        let (node, tls, store) = (self.node.clone(), self.tls.clone(), store.clone());
        let task = Stoppable::spawn(&self.shutdown, move |stop| {
            applier::follow(node, tls, Some(store), stop)
        });
        t.follow = Some((active.clone(), task));
    }

    /// Stop applying from any active (before this member becomes one).
    pub async fn stop_following(&self) {
        let task = self.tasks.lock().await.follow.take();
        if let Some((active, task)) = task {
            task.stop().await;
            tracing::info!(former_active = %active, "stopped following");
        }
    }

    async fn start_shipping(&self) {
        let Some(store) = &self.store else {
            return;
        };
        self.stop_following().await;
        let mut t = self.tasks.lock().await;
        if t.head.as_ref().is_none_or(|h| !h.running()) {
            let (store, live, head_tx) =
                (store.clone(), self.node.live.clone(), self.head_tx.clone());
            t.head = Some(Stoppable::spawn(&self.shutdown, move |stop| {
                head::watch_head(store, live, head_tx, stop)
            }));
        }
        drop(t);
        self.node.shipping.send_replace(true);
        tracing::info!("shipping the change log to passives");
    }

    async fn stop_shipping(&self) {
        self.node.shipping.send_replace(false);
        let head = self.tasks.lock().await.head.take();
        if let Some(h) = head {
            h.stop().await;
        }
        tracing::info!("stopped shipping the change log");
    }

    /// Stop every role task (the agent is shutting down).
    pub async fn stop_all(&self) {
        self.node.shipping.send_replace(false);
        let mut t = self.tasks.lock().await;
        if let Some(h) = t.head.take() {
            h.stop().await;
        }
        if let Some((_, f)) = t.follow.take() {
            f.stop().await;
        }
    }
}

/// [`RoleSink`] over the shared runtime.
#[derive(Clone)]
pub struct Sink(pub Arc<RoleRuntime>);

impl RoleSink for Sink {
    async fn start_shipping(&self) {
        self.0.start_shipping().await
    }
    async fn stop_shipping(&self) {
        self.0.stop_shipping().await
    }
    async fn follow(&self, epoch: Epoch, active: &MemberId) {
        self.0.follow(epoch, active).await
    }
    async fn take_over(&self, from: Option<&MemberId>) {
        self.0.take_over(from).await
    }
    async fn run_hook(&self, hook: Hook) -> bool {
        self.0.run_hook(hook).await
    }
    async fn notify(&self, notice: &Notice) {
        tracing::info!(notice = ?notice, "controller notice");
    }
}

/// The member database as the controller's durable store, with the
/// ordering rules the runtime needs around it.
#[derive(Clone)]
pub struct MemberControl {
    pub store: Arc<AnyStore>,
    pub roles: Arc<RoleRuntime>,
}

impl ControlStore for MemberControl {
    async fn persist_vote(&self, vote: &Vote) -> Result<(), ControlStoreError> {
        if vote.candidate == self.roles.node.member {
            self.roles.node.metrics.elections.inc();
        }
        ControlStore::persist_vote(&self.store, vote).await
    }
    async fn persist_epoch(&self, rec: &EpochRecord) -> Result<(), ControlStoreError> {
        let mut rec = rec.clone();
        if rec.active == self.roles.node.member {
            // This member becomes the active: nothing from the old one may
            // be applied from here on, and the epoch starts where this
            // database really is (the applier may have gone past the
            // position the controller last heard of).
            self.roles.stop_following().await;
            let actual = MemberStore::state(self.store.as_ref()).await?.position;
            rec.start = rec.start.max(actual);
            self.roles.node.metrics.promotions.inc();
        }
        ControlStore::persist_epoch(&self.store, &rec).await
    }
    async fn persist_paused(&self, paused: bool) -> Result<(), ControlStoreError> {
        ControlStore::persist_paused(&self.store, paused).await
    }
    async fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> Result<(), ControlStoreError> {
        if role == Role::Active {
            self.roles.stop_following().await;
            // Every replicated row is in now (the applier has stopped): move
            // the id generators past them before the fence lets the
            // application insert, or its next default id could collide.
            let moved = MemberStore::advance_id_generators(self.store.as_ref()).await?;
            tracing::info!(
                generators = moved,
                "id generators moved past the replicated rows before lifting the fence"
            );
        }
        ControlStore::set_role(&self.store, role, epoch, active).await?;
        // Hooks and status see the new epoch and active from here on (the
        // controller's own status is published after its whole step).
        self.roles.node.set_epoch(epoch);
        self.roles.node.live.update(|s| {
            s.epoch = epoch;
            s.active = active.cloned();
        });
        if role == Role::Fenced {
            self.roles.node.metrics.fences.inc();
        }
        Ok(())
    }
    async fn renew_lease(&self, lease: Duration) -> Result<(), ControlStoreError> {
        let node = &self.roles.node;
        let r = node
            .live
            .watch_stall(
                "lease renewal",
                node.config.replication.heartbeat_interval,
                ControlStore::renew_lease(&self.store, lease),
            )
            .await;
        match &r {
            Ok(()) => self.roles.node.live.database(Ok(())),
            Err(e) => self.roles.node.live.database(Err(e.to_string())),
        }
        r
    }
    async fn head(&self) -> Result<Position, ControlStoreError> {
        ControlStore::head(&self.store).await
    }
    async fn load(&self) -> Result<PersistedState, ControlStoreError> {
        ControlStore::load(&self.store).await
    }
}
