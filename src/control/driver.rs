//! The promotion controller's IO shell: one task that owns the [`Engine`],
//! feeds it time, peer messages, position changes and operator commands, and
//! carries out the actions it returns, in order, against three narrow
//! interfaces ([`ControlStore`], [`PeerNet`], [`RoleSink`]).
//!
//! Owns: the tick timer and its jitter, the monotonic clock the engine sees,
//! executing actions in order (stopping at the first durable failure and
//! fencing), feeding `FenceApplied` after each fence, answering operator
//! commands, logging role changes with their reason, and publishing the
//! engine's [`Status`].
//! Must never: decide anything the engine decides, block on a peer (sends are
//! best effort and queue elsewhere), send a message that follows a durable
//! action that failed, or panic on anything a peer or the database returns.

use super::actions::{Action, Hook, Notice};
use super::engine::Engine;
use super::events::{Command, Event, Message};
use super::status::Status;
use super::{ControlError, EngineConfig, Millis, PersistedState};
use crate::model::{Epoch, MemberId, Position, Role};
use crate::store::{AnyStore, EpochRecord, MemberStore, StoreError, Vote};
use crate::workload::SplitMix;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// A monotonic clock in milliseconds, as the engine wants it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// The production clock: `CLOCK_BOOTTIME` on Linux, which (unlike
/// `CLOCK_MONOTONIC`, behind `std::time::Instant`) keeps counting while the
/// machine is suspended. A member that wakes from a suspend therefore sees
/// its lease as old as it really is and fences itself at the first tick.
/// Elsewhere `Instant` is the best portable approximation.
#[derive(Debug)]
pub struct BootClock {
    #[cfg(not(target_os = "linux"))]
    start: std::time::Instant,
}

impl BootClock {
    pub fn new() -> BootClock {
        BootClock {
            #[cfg(not(target_os = "linux"))]
            start: std::time::Instant::now(),
        }
    }
}

impl Default for BootClock {
    fn default() -> Self {
        BootClock::new()
    }
}

impl Clock for BootClock {
    #[cfg(target_os = "linux")]
    fn now(&self) -> Millis {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
    }
    #[cfg(not(target_os = "linux"))]
    fn now(&self) -> Millis {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock on tokio's time (which tests can pause and advance). Not for
/// production: it stops while the machine is suspended.
#[derive(Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A fresh seed for the tick jitter, different in every process (so members
/// that lost the same active do not draw the same delays). Log it: a run is
/// reproduced by passing the same seed to [`Driver::start`].
pub fn random_seed() -> u64 {
    rand::random()
}

/// A durable action that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    WitnessFile(#[from] super::witness_file::WitnessFileError),
    /// Any other backend (tests, a future consensus store).
    #[error("{0}")]
    Other(String),
}

/// The controller's durable state and the database fence: a member database
/// ([`AnyStore`]) or a witness's vote file.
pub trait ControlStore: Send + Sync + 'static {
    /// Durably record the vote before the reply that grants it is sent.
    fn persist_vote(
        &self,
        vote: &Vote,
    ) -> impl Future<Output = Result<(), ControlStoreError>> + Send;
    /// Record a new epoch in epoch history.
    fn persist_epoch(
        &self,
        rec: &EpochRecord,
    ) -> impl Future<Output = Result<(), ControlStoreError>> + Send;
    fn persist_paused(
        &self,
        paused: bool,
    ) -> impl Future<Output = Result<(), ControlStoreError>> + Send;
    /// Fence (`Fenced`/`Passive`) or unfence (`Active`) the database.
    fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> impl Future<Output = Result<(), ControlStoreError>> + Send;
    /// `lease_until = db_now + lease`.
    fn renew_lease(
        &self,
        lease: Duration,
    ) -> impl Future<Output = Result<(), ControlStoreError>> + Send;
    /// The change-log head, read after a fence took effect.
    fn head(&self) -> impl Future<Output = Result<Position, ControlStoreError>> + Send;
    /// The durable state, as at start-up (read again to restart the engine
    /// after a durable action failed).
    fn load(&self) -> impl Future<Output = Result<PersistedState, ControlStoreError>> + Send;
}

impl ControlStore for std::sync::Arc<AnyStore> {
    async fn persist_vote(&self, vote: &Vote) -> Result<(), ControlStoreError> {
        Ok(self.record_vote(vote).await?)
    }
    async fn persist_epoch(&self, rec: &EpochRecord) -> Result<(), ControlStoreError> {
        Ok(self.record_epoch(rec).await?)
    }
    async fn persist_paused(&self, paused: bool) -> Result<(), ControlStoreError> {
        Ok(self.set_paused(paused).await?)
    }
    async fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        active: Option<&MemberId>,
    ) -> Result<(), ControlStoreError> {
        Ok(MemberStore::set_role(self.as_ref(), role, epoch, active).await?)
    }
    async fn renew_lease(&self, lease: Duration) -> Result<(), ControlStoreError> {
        MemberStore::renew_lease(self.as_ref(), lease).await?;
        Ok(())
    }
    async fn head(&self) -> Result<Position, ControlStoreError> {
        // PostgreSQL stages captured rows until the sequencer moves them into
        // the log; move whatever committed before the fence first, so the
        // head a switchover waits for includes it.
        self.sequence().await?;
        Ok(self.state().await?.position)
    }
    async fn load(&self) -> Result<PersistedState, ControlStoreError> {
        Ok(PersistedState::from_replication_state(&self.state().await?))
    }
}

/// Sends controller messages to peers. Best effort and never blocking: an
/// implementation queues per peer (bounded, dropping the oldest) and
/// delivers from its own tasks. Inbound messages reach the driver through
/// the `mpsc::Receiver<(MemberId, Message)>` in [`DriverIo`].
pub trait PeerNet: Send + Sync + 'static {
    fn send(&self, to: &MemberId, msg: Message);
}

/// What the runtime does when the controller changes this member's role:
/// replication tasks, jobs, hooks, operator notices. Failures are the
/// sink's to log; none of these is durable controller state.
pub trait RoleSink: Send + Sync + 'static {
    fn start_shipping(&self) -> impl Future<Output = ()> + Send;
    fn stop_shipping(&self) -> impl Future<Output = ()> + Send;
    /// Point the applier at `active` (the database is already set to
    /// passive for `epoch`).
    fn follow(&self, epoch: Epoch, active: &MemberId) -> impl Future<Output = ()> + Send;
    /// Take over the rows `from` owned (`None`: ownerless rows only), as
    /// `[takeover]` says; nothing without one.
    fn take_over(&self, from: Option<&MemberId>) -> impl Future<Output = ()> + Send;
    /// Run a configured hook to its end (or timeout); whether it
    /// succeeded (true when none is configured).
    fn run_hook(&self, hook: Hook) -> impl Future<Output = bool> + Send;
    fn notify(&self, notice: &Notice) -> impl Future<Output = ()> + Send;
}

/// An operator command and where its outcome goes.
#[derive(Debug)]
pub struct CommandRequest {
    pub command: Command,
    pub reply: oneshot::Sender<CommandOutcome>,
}

/// What became of an operator command. A switchover is answered when it
/// ends (handed over or failed); every other command right after the engine
/// handled it.
#[derive(Clone, Debug)]
pub struct CommandOutcome {
    pub notices: Vec<Notice>,
    /// `Some`: a durable action of the command failed (the member fenced
    /// itself); the text is for the operator.
    pub failed: Option<String>,
    pub status: Status,
}

/// The driver's inputs.
#[derive(Debug)]
pub struct DriverIo {
    /// This member's own change-log position (head on the active, applied
    /// position on a passive).
    pub position: watch::Receiver<Position>,
    /// Whether this member's applier is blocked (its tables differ from
    /// the active's).
    pub apply_blocked: watch::Receiver<bool>,
    /// Controller messages from authenticated peers.
    pub inbound: mpsc::Receiver<(MemberId, Message)>,
    pub commands: mpsc::Receiver<CommandRequest>,
    /// The driver stops when this becomes true (or its sender is dropped).
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Config(#[from] ControlError),
    #[error("start-up action failed: {0}")]
    Startup(ControlStoreError),
}

/// A durable action failed; the rest of its list was dropped.
#[derive(Debug)]
struct ActionFailed {
    action: Action,
    error: ControlStoreError,
}

/// The engine and the IO it drives.
pub struct Driver<S, N, R, C = BootClock> {
    engine: Engine,
    cfg: EngineConfig,
    /// A durable action failed: the engine's mirror of the durable state may
    /// be wrong. The member stays silent (no steps, no sends) until the
    /// engine has been rebuilt from the store.
    needs_restart: bool,
    me: MemberId,
    witness: bool,
    store: S,
    net: N,
    sink: R,
    clock: C,
    rng: SplitMix,
    /// Ticks at least this often (`heartbeat_interval / 4`).
    tick_every: Millis,
    /// Tick jitter is drawn from `[0, jitter_bound)` (`heartbeat_interval`).
    jitter_bound: Millis,
    status_tx: watch::Sender<Status>,
    pending_switchover: Option<oneshot::Sender<CommandOutcome>>,
}

impl<S: ControlStore, N: PeerNet, R: RoleSink, C: Clock> Driver<S, N, R, C> {
    /// Build the engine from the durable state and run its start-up actions
    /// (a member that was the active fences itself first). `seed` feeds the
    /// tick jitter; log it so a run can be reproduced.
    pub async fn start(
        cfg: EngineConfig,
        persisted: PersistedState,
        store: S,
        net: N,
        sink: R,
        clock: C,
        seed: u64,
    ) -> Result<(Self, watch::Receiver<Status>), DriverError> {
        let now = clock.now();
        let tick_every = (cfg.heartbeat_interval / 4).max(1);
        // Jitter only needs to break ties between candidates that lost the
        // active at the same moment; pre-votes and the candidate ranking
        // (position, priority, id) settle the rest. One heartbeat interval
        // keeps failover within failover_timeout + heartbeat_interval.
        let jitter_bound = cfg.heartbeat_interval.max(1);
        let me = cfg.me.clone();
        let witness = cfg.is_witness();
        let (engine, startup) = Engine::new(cfg.clone(), persisted, now)?;
        let (status_tx, status_rx) = watch::channel(engine.status(now));
        let mut d = Driver {
            engine,
            cfg,
            needs_restart: false,
            me,
            witness,
            store,
            net,
            sink,
            clock,
            rng: SplitMix::new(seed),
            tick_every,
            jitter_bound,
            status_tx,
            pending_switchover: None,
        };
        tracing::info!(
            member = %d.me, role = %d.engine.role(), epoch = %d.engine.epoch(),
            active = %d.engine.active().map(ToString::to_string).unwrap_or_default(),
            seed, "promotion controller starting"
        );
        let (_notices, failed) = d.execute_all(startup, "start-up").await;
        if let Some(f) = failed {
            return Err(DriverError::Startup(f.error));
        }
        d.publish();
        Ok((d, status_rx))
    }

    /// The engine (for tests and diagnostics).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Run until shutdown.
    pub async fn run(mut self, mut io: DriverIo) {
        let mut inbound_open = true;
        let mut commands_open = true;
        let mut position_open = true;
        let mut blocked_open = true;
        let mut last_tick = self.clock.now();
        let mut next_tick = last_tick.saturating_add(self.tick_every);
        loop {
            if *io.shutdown.borrow() {
                break;
            }
            let now = self.clock.now();
            // Tick at the engine's deadline, and at least every
            // heartbeat / 4 even while messages keep arriving; never twice
            // in one millisecond (a deadline already past must not spin).
            if self.needs_restart && now >= next_tick {
                self.restart().await;
                // The rebuilt engine starts unblocked: tell it again.
                let blocked = *io.apply_blocked.borrow();
                if !self.needs_restart && blocked {
                    self.handle(Event::ApplyBlocked { blocked }, "apply blocked")
                        .await;
                }
                last_tick = now;
                next_tick = now.saturating_add(self.tick_every);
                continue;
            }
            let due = if self.needs_restart {
                next_tick
            } else {
                next_tick.min(self.engine.next_deadline())
            };
            if now >= due && now > last_tick {
                let jitter = self.rng.below(self.jitter_bound);
                self.handle(Event::Tick { jitter }, "tick").await;
                last_tick = now;
                next_tick = now.saturating_add(self.tick_every);
                continue;
            }
            let wake = due.max(last_tick.saturating_add(1));
            let delay = Duration::from_millis(wake.saturating_sub(now).max(1));
            tokio::select! {
                biased;
                r = io.shutdown.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                m = io.inbound.recv(), if inbound_open => match m {
                    Some((from, msg)) if !self.needs_restart => {
                        self.handle(Event::Received { from, msg }, "message").await;
                    }
                    // Silent while restarting: peers treat it as unreachable.
                    Some(_) => {}
                    None => inbound_open = false,
                },
                c = io.commands.recv(), if commands_open => match c {
                    Some(req) => self.command(req).await,
                    None => commands_open = false,
                },
                r = io.position.changed(), if position_open => match r {
                    Ok(()) => {
                        let position = *io.position.borrow_and_update();
                        if !self.needs_restart {
                            self.handle(Event::Position { position }, "position").await;
                        }
                    }
                    Err(_) => position_open = false,
                },
                r = io.apply_blocked.changed(), if blocked_open => match r {
                    Ok(()) => {
                        let blocked = *io.apply_blocked.borrow_and_update();
                        if !self.needs_restart {
                            self.handle(Event::ApplyBlocked { blocked }, "apply blocked").await;
                        }
                    }
                    Err(_) => blocked_open = false,
                },
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(member = %self.me, "promotion controller stopped");
    }

    /// Rebuild the engine from the durable state after a durable action
    /// failed, and run its start-up actions (an active fences itself and
    /// must win a majority's answers again). Retried every tick until the
    /// store answers.
    async fn restart(&mut self) {
        let persisted = match self.store.load().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(member = %self.me, error = %e, "controller restart: durable state unreadable; retrying");
                return;
            }
        };
        let now = self.clock.now();
        let (engine, startup) = match Engine::new(self.cfg.clone(), persisted, now) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(member = %self.me, error = %e, "controller restart refused");
                return;
            }
        };
        let before = self.role_view();
        self.engine = engine;
        self.needs_restart = false;
        self.log_role_change(before, "controller restarted from the durable state");
        let (_notices, failed) = self.execute_all(startup, "restart").await;
        if failed.is_none() {
            tracing::info!(member = %self.me, "controller restarted from the durable state");
        }
        self.publish();
    }

    /// One operator command.
    async fn command(&mut self, req: CommandRequest) {
        let is_switchover = matches!(req.command, Command::Switchover { .. });
        tracing::info!(member = %self.me, command = ?req.command, "operator command");
        if self.needs_restart {
            let _ = req.reply.send(CommandOutcome {
                notices: Vec::new(),
                failed: Some(
                    "the controller is restarting after a failed database write; try again".into(),
                ),
                status: self.status_tx.borrow().clone(),
            });
            return;
        }
        let (notices, failed) = self
            .step(Event::Command(req.command), "operator command")
            .await;
        self.settle_switchover(&notices, &failed);
        let refused = notices
            .iter()
            .any(|n| matches!(n, Notice::CommandRefused { .. }));
        let settled = notices.iter().any(|n| {
            matches!(
                n,
                Notice::SwitchoverHandedOver { .. } | Notice::SwitchoverFailed { .. }
            )
        });
        if is_switchover && !refused && !settled && failed.is_none() {
            // Answered once the switchover ends (see `answer_switchover`).
            if let Some(old) = self.pending_switchover.replace(req.reply) {
                drop(old);
            }
            return;
        }
        let outcome = CommandOutcome {
            notices,
            failed: failed.map(|f| f.to_string()),
            status: self.status_tx.borrow().clone(),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = req.reply.send(outcome);
    }

    async fn handle(&mut self, event: Event, what: &'static str) {
        let (notices, failed) = self.step(event, what).await;
        self.settle_switchover(&notices, &failed);
    }

    /// Answer a waiting switchover once it has ended (or a durable action
    /// failed, which ends it too).
    fn settle_switchover(&mut self, notices: &[Notice], failed: &Option<String>) {
        let ended = failed.is_some()
            || notices.iter().any(|n| {
                matches!(
                    n,
                    Notice::SwitchoverHandedOver { .. } | Notice::SwitchoverFailed { .. }
                )
            });
        if !ended {
            return;
        }
        if let Some(reply) = self.pending_switchover.take() {
            let _ = reply.send(CommandOutcome {
                notices: notices.to_vec(),
                failed: failed.clone(),
                status: self.status_tx.borrow().clone(),
            });
        }
    }

    /// Feed one event, execute its actions (and the `FenceApplied` events
    /// they lead to), publish the status. Returns the notices and the first
    /// durable failure, if any.
    async fn step(&mut self, event: Event, what: &'static str) -> (Vec<Notice>, Option<String>) {
        let actions = self.engine.step(self.clock.now(), event);
        let (notices, failed) = self.execute_all(actions, what).await;
        self.publish();
        (
            notices,
            failed.map(|f| format!("{:?} failed: {}", f.action, f.error)),
        )
    }

    /// Execute a list and the follow-up events it causes, logging role
    /// changes with their reason.
    async fn execute_all(
        &mut self,
        actions: Vec<Action>,
        what: &'static str,
    ) -> (Vec<Notice>, Option<ActionFailed>) {
        let mut notices = Vec::new();
        let mut queue = vec![actions];
        let mut failed = None;
        while let Some(actions) = queue.pop() {
            let before = self.role_view();
            let reason = reason_for(what, &actions);
            let mut followups = Vec::new();
            let result = self.execute(actions, &mut notices, &mut followups).await;
            self.log_role_change(before, &reason);
            if let Err(f) = result {
                failed = Some(f);
                break;
            }
            // What the list's actions found out (each fence's head, a
            // blocking hook's outcome) goes back to the engine after the
            // list has run to its end.
            for event in followups.into_iter().rev() {
                let more = self.engine.step(self.clock.now(), event);
                queue.push(more);
            }
        }
        (notices, failed)
    }

    fn role_view(&self) -> (Role, Epoch, Option<MemberId>) {
        (
            self.engine.role(),
            self.engine.epoch(),
            self.engine.active().cloned(),
        )
    }

    fn log_role_change(&self, before: (Role, Epoch, Option<MemberId>), reason: &str) {
        let after = self.role_view();
        if before != after {
            tracing::info!(
                member = %self.me,
                from = %before.0, to = %after.0,
                from_epoch = %before.1, epoch = %after.1,
                active = %after.2.as_ref().map(ToString::to_string).unwrap_or_default(),
                reason, "role"
            );
        }
    }

    /// Carry out `actions` in order. At the first durable failure the rest
    /// is dropped (a reply whose vote was not stored must never leave) and
    /// the database is fenced if it might be writable.
    async fn execute(
        &mut self,
        actions: Vec<Action>,
        notices: &mut Vec<Notice>,
        followups: &mut Vec<Event>,
    ) -> Result<(), ActionFailed> {
        for action in actions {
            let r = self.execute_one(&action, notices, followups).await;
            if let Err(error) = r {
                tracing::error!(
                    member = %self.me, action = ?action, %error,
                    "durable controller action failed; dropping the rest of its actions and fencing"
                );
                self.fence_after_failure(&action).await;
                self.needs_restart = true;
                return Err(ActionFailed { action, error });
            }
        }
        Ok(())
    }

    async fn execute_one(
        &mut self,
        action: &Action,
        notices: &mut Vec<Notice>,
        followups: &mut Vec<Event>,
    ) -> Result<(), ControlStoreError> {
        match action {
            Action::Send { to, msg } => self.net.send(to, msg.clone()),
            Action::PersistVote { epoch, candidate } => {
                self.store
                    .persist_vote(&Vote {
                        epoch: *epoch,
                        candidate: candidate.clone(),
                    })
                    .await?
            }
            Action::PersistEpoch {
                epoch,
                active,
                start,
                reason,
            } => {
                let rec = EpochRecord {
                    epoch: *epoch,
                    active: active.clone(),
                    start: *start,
                    at_ms: crate::workload::now_ms(),
                    reason: reason_text(reason),
                };
                self.store.persist_epoch(&rec).await?
            }
            Action::PersistPaused { paused } => self.store.persist_paused(*paused).await?,
            Action::RenewLease { until } => {
                // `until` is in the engine's clock; time spent since the step
                // (a slow database, a stall) comes off the lease.
                let now = self.clock.now();
                if *until > now {
                    self.store
                        .renew_lease(Duration::from_millis(until - now))
                        .await?;
                } else {
                    tracing::warn!(
                        member = %self.me, late_ms = now - until,
                        "lease renewal skipped: its time had already passed"
                    );
                }
            }
            Action::Fence { epoch, active } => {
                self.store
                    .set_role(Role::Fenced, *epoch, active.as_ref())
                    .await?;
                let head = self.store.head().await?;
                followups.push(Event::FenceApplied { head });
            }
            Action::Unfence { epoch } => {
                let me = self.me.clone();
                self.store.set_role(Role::Active, *epoch, Some(&me)).await?
            }
            Action::Follow { epoch, active } => {
                self.store
                    .set_role(Role::Passive, *epoch, Some(active))
                    .await?;
                self.sink.follow(*epoch, active).await;
            }
            Action::TakeOver { from } => self.sink.take_over(from.as_ref()).await,
            Action::StartShipping => self.sink.start_shipping().await,
            Action::StopShipping => self.sink.stop_shipping().await,
            Action::RunHook(h) => {
                self.sink.run_hook(*h).await;
            }
            Action::RunPromoteHookGate => {
                let ok = self.sink.run_hook(Hook::OnPromote).await;
                if !ok {
                    tracing::warn!(
                        member = %self.me,
                        "on_promote failed and hooks.on_promote_blocks is set: stepping down"
                    );
                }
                followups.push(Event::PromoteHookDone { ok });
            }
            Action::Notify(n) => {
                tracing::info!(member = %self.me, notice = ?n, "controller notice");
                self.sink.notify(n).await;
                notices.push(n.clone());
            }
        }
        Ok(())
    }

    /// After a durable failure: a database that might accept writes is
    /// fenced (best effort: if the database is unreachable, its lease runs
    /// out by itself within `lease_timeout`).
    async fn fence_after_failure(&mut self, failed: &Action) {
        if self.witness {
            return;
        }
        let leading = self.engine.active() == Some(&self.me);
        let touched_fence = matches!(failed, Action::Unfence { .. } | Action::RenewLease { .. });
        if !(leading || touched_fence) {
            return;
        }
        let (epoch, active) = (self.engine.epoch(), self.engine.active().cloned());
        match self
            .store
            .set_role(Role::Fenced, epoch, active.as_ref())
            .await
        {
            Ok(()) => {
                tracing::warn!(member = %self.me, %epoch, "fenced after a failed controller action");
                self.sink.run_hook(Hook::OnFence).await;
            }
            Err(e) => tracing::error!(
                member = %self.me, error = %e,
                "fencing after a failed controller action failed too; the lease will run out"
            ),
        }
    }

    fn publish(&self) {
        let mut status = self.engine.status(self.clock.now());
        if self.needs_restart && status.role == Role::Active {
            // The engine's view is stale until it is rebuilt; the database
            // was fenced (or its lease is running out).
            status.role = Role::Fenced;
            status.lease_remaining_ms = None;
        }
        self.status_tx.send_replace(status);
    }
}

/// Epoch history's `reason` column.
fn reason_text(r: &super::actions::PromotionReason) -> String {
    use super::actions::PromotionReason as P;
    match r {
        P::Failover { previous: Some(p) } => format!("failover from {p}"),
        P::Failover { previous: None } => "failover".to_string(),
        P::Switchover { from } => format!("switchover from {from}"),
        P::Forced => "forced promotion by an operator".to_string(),
    }
}

/// Why the role may have changed, for the log line.
fn reason_for(what: &str, actions: &[Action]) -> String {
    for a in actions {
        match a {
            Action::PersistEpoch { epoch, reason, .. } => {
                return format!("promoted at epoch {epoch}: {}", reason_text(reason));
            }
            Action::Follow { epoch, active } => {
                return format!("following {active} at epoch {epoch} ({what})");
            }
            _ => {}
        }
    }
    if actions.iter().any(|a| matches!(a, Action::Unfence { .. })) {
        return format!("a majority answered in this epoch: fence lifted ({what})");
    }
    if actions.iter().any(|a| matches!(a, Action::Fence { .. })) {
        return format!("fenced: lease lost, superseded, start-up or switchover ({what})");
    }
    if actions.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                msg: Message::RequestVote { pre: false, .. },
                ..
            }
        )
    }) {
        return format!("standing for election ({what})");
    }
    what.to_string()
}

#[cfg(test)]
mod tests;
