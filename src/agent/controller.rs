//! Plumbing between the promotion controller's driver and the rest of the
//! agent: starting it on the member database (or a witness's state file),
//! the peer network with its counters, the operator requests of the status
//! endpoint, the live view, and the planned handover on a graceful stop.
//!
//! Owns: translating operator requests into controller commands and their
//! outcomes into HTTP-shaped answers; publishing the controller's status
//! into the live view; choosing the handover target on a graceful stop.
//! Must never: decide a role (the engine does), or block the driver on a
//! slow HTTP client or peer.

use super::roles::Sink;
use crate::control::driver::{
    BootClock, CommandOutcome, CommandRequest, ControlStore, Driver, DriverError, DriverIo,
    PeerNet, random_seed,
};
use crate::control::peer_net::TlsPeerNet;
use crate::control::{Command, CommandRefusal, EngineConfig, Message, Notice, PersistedState};
use crate::control::{Status, SwitchoverFailure};
use crate::model::{Epoch, MemberId, Role};
use crate::replication::NodeCtx;
use crate::replication::metrics::Metrics;
use crate::status::control::{ControlInbox, ControlOutcome, ControlRequest};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Controller messages waiting for the driver; beyond this they are
/// dropped (the engine tolerates loss; stale messages are worthless).
pub const INBOX_LEN: usize = 1024;

/// The production peer network with the heartbeat counter of `/metrics`.
#[derive(Clone, Debug)]
pub struct MeteredNet {
    pub net: TlsPeerNet,
    pub metrics: Arc<Metrics>,
}

impl PeerNet for MeteredNet {
    fn send(&self, to: &MemberId, msg: Message) {
        if matches!(msg, Message::Heartbeat { .. }) {
            self.metrics.heartbeats_sent.inc();
        }
        self.net.send(to, msg);
    }
}

/// Count received heartbeats on their way from the listener to the driver.
pub fn relay_inbound(
    metrics: Arc<Metrics>,
    mut from_net: mpsc::Receiver<(MemberId, Message)>,
    to_driver: mpsc::Sender<(MemberId, Message)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((from, msg)) = from_net.recv().await {
            if matches!(msg, Message::Heartbeat { .. }) {
                metrics.heartbeats_received.inc();
            }
            if to_driver.send((from, msg)).await.is_err() {
                return;
            }
        }
    })
}

/// Start the driver on `store` and run it until `io.shutdown`. Returns its
/// status and the task.
pub async fn start<S: ControlStore>(
    cfg: EngineConfig,
    persisted: PersistedState,
    store: S,
    net: MeteredNet,
    sink: Sink,
    io: DriverIo,
) -> Result<(watch::Receiver<Status>, JoinHandle<()>), DriverError> {
    let seed = random_seed();
    let (driver, status) =
        Driver::start(cfg, persisted, store, net, sink, BootClock::new(), seed).await?;
    Ok((status, tokio::spawn(driver.run(io))))
}

/// Keep the live view, the node's epoch and the control hello in step with
/// the controller's status.
pub fn publish_status(
    node: Arc<NodeCtx>,
    mut status: watch::Receiver<Status>,
    hello: watch::Sender<Status>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = status.borrow_and_update().clone();
            node.set_epoch(s.epoch);
            let lease_until = s
                .lease_remaining_ms
                .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
            node.live.update(|l| {
                l.lease_until = lease_until;
                l.role = s.role;
                l.epoch = s.epoch;
                l.active = s.active.clone();
                l.controller = Some(s.clone());
            });
            hello.send_replace(s);
            if status.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Answer the status endpoint's operator requests through the driver.
pub fn serve_requests(
    mut inbox: ControlInbox,
    commands: mpsc::Sender<CommandRequest>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(cmd) = inbox.recv().await {
            let command = match &cmd.request {
                ControlRequest::Switchover { to } => Command::Switchover { to: to.clone() },
                ControlRequest::Promote { force: true } => Command::ForcePromote,
                ControlRequest::Promote { force: false } => {
                    cmd.reply(ControlOutcome::BadRequest(
                        "a promotion without force is a planned switchover: run `understudy switchover --to <member>` (POST /switchover on the active), or declare the active dead with `understudy promote --force`".into(),
                    ));
                    continue;
                }
                ControlRequest::Pause => Command::Pause,
                ControlRequest::Resume => Command::Resume,
            };
            let (reply, answer) = oneshot::channel();
            if commands
                .send(CommandRequest {
                    command: command.clone(),
                    reply,
                })
                .await
                .is_err()
            {
                cmd.reply(ControlOutcome::Unavailable(
                    "the promotion controller has stopped".into(),
                ));
                continue;
            }
            // A switchover is answered when it ends; do not hold up the
            // next request meanwhile.
            tokio::spawn(async move {
                let outcome = match answer.await {
                    Ok(o) => outcome_of(&command, &o),
                    Err(_) => ControlOutcome::Unavailable(
                        "the promotion controller stopped before answering".into(),
                    ),
                };
                cmd.reply(outcome);
            });
        }
    })
}

/// An HTTP-shaped answer for a command's outcome.
pub fn outcome_of(command: &Command, o: &CommandOutcome) -> ControlOutcome {
    if let Some(f) = &o.failed {
        return ControlOutcome::Unavailable(format!(
            "{f}; this member fenced itself and restarts its controller"
        ));
    }
    if let Some(n) = o.notices.first() {
        match n {
            Notice::CommandRefused { reason, .. } => {
                return match reason {
                    CommandRefusal::UnknownMember(_) => {
                        ControlOutcome::BadRequest(reason.to_string())
                    }
                    _ => ControlOutcome::Refused(reason.to_string()),
                };
            }
            Notice::SwitchoverFailed {
                to,
                reason,
                resumed,
            } => {
                let after = if *resumed {
                    "roles are unchanged and this member takes writes again"
                } else if matches!(reason, SwitchoverFailure::Superseded(_)) {
                    "a newer active exists"
                } else {
                    "roles are unchanged; this member is fenced until a majority answers it again"
                };
                return ControlOutcome::Refused(format!(
                    "switchover to {to} failed: {reason}; {after}"
                ));
            }
            Notice::SwitchoverHandedOver { to, epoch } => {
                return ControlOutcome::Done(json!({
                    "handed_over_to": to.to_string(),
                    "epoch": epoch.0 + 1,
                    "from_epoch": epoch.0,
                    "message": format!("{to} has the exact head and stands for the next epoch; this member is fenced and follows it"),
                }));
            }
        }
    }
    let s = &o.status;
    let mut doc = json!({
        "member": s.member.to_string(),
        "role": s.role,
        "epoch": s.epoch.0,
        "active": s.active.as_ref().map(ToString::to_string),
        "paused": s.paused,
    });
    if matches!(command, Command::Pause | Command::Resume) {
        doc["message"] = json!(if s.paused {
            "automatic failover paused cluster-wide (told every reachable member)"
        } else {
            "automatic failover resumed cluster-wide (told every reachable member)"
        });
    }
    ControlOutcome::Done(doc)
}

/// The member a stopping active hands over to: the most up-to-date data
/// member heard from recently, if any.
pub fn handover_target(s: &Status, failover_timeout_ms: u64) -> Option<MemberId> {
    s.peers
        .iter()
        .filter(|p| !p.witness)
        .filter(|p| p.last_message_ms.is_some_and(|ms| ms < failover_timeout_ms))
        .filter_map(|p| p.acked.map(|a| (a, p.member.clone())))
        .max_by(|(a, am), (b, bm)| a.cmp(b).then(bm.cmp(am)))
        .map(|(_, m)| m)
}

/// On a graceful stop of the active: a planned switchover to the best
/// passive, so nobody waits for `failover_timeout`. Returns the member that
/// took over, if one did.
pub async fn hand_over_before_stop(
    status: &watch::Receiver<Status>,
    commands: &mpsc::Sender<CommandRequest>,
    failover_timeout: Duration,
    within: Duration,
) -> Option<MemberId> {
    let s = status.borrow().clone();
    if s.role != Role::Active {
        return None;
    }
    let ms = u64::try_from(failover_timeout.as_millis()).unwrap_or(u64::MAX);
    let Some(to) = handover_target(&s, ms) else {
        tracing::info!("graceful stop: no passive to hand over to");
        return None;
    };
    tracing::info!(to = %to, "graceful stop: handing over to the most up-to-date passive");
    let (reply, answer) = oneshot::channel();
    let command = Command::Switchover { to: to.clone() };
    commands
        .send(CommandRequest {
            command: command.clone(),
            reply,
        })
        .await
        .ok()?;
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(within, answer).await {
        Ok(Ok(o)) => match outcome_of(&command, &o) {
            ControlOutcome::Done(_) => {
                let left = within.saturating_sub(started.elapsed());
                await_takeover(status, &to, s.epoch, left.min(failover_timeout)).await;
                Some(to)
            }
            other => {
                tracing::warn!(outcome = ?other, "graceful stop: handover did not happen");
                None
            }
        },
        _ => {
            tracing::warn!("graceful stop: handover did not finish in time");
            None
        }
    }
}

/// After the handover message is queued: wait until `to` is heard as the
/// active of a newer epoch than `from_epoch`, at most `within`. The control
/// streams stop with the agent and drop what is still queued, so stopping
/// at once could lose the handover itself, and with automatic failover off
/// nobody would take over. Returns whether the takeover was seen.
pub async fn await_takeover(
    status: &watch::Receiver<Status>,
    to: &MemberId,
    from_epoch: Epoch,
    within: Duration,
) -> bool {
    let mut rx = status.clone();
    let seen = tokio::time::timeout(
        within,
        rx.wait_for(|s| s.active.as_ref() == Some(to) && s.epoch > from_epoch),
    )
    .await;
    match seen {
        Ok(Ok(_)) => true,
        _ => {
            tracing::warn!(
                to = %to,
                waited_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
                "graceful stop: the handover was sent but {to} has not been heard as the \
                 active yet; this member stays fenced (with automatic failover on, the \
                 others elect an active after failover_timeout)"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::fixtures;

    /// The status of member `a`, active in epoch 1 of a three-member cluster.
    fn active_a() -> Status {
        fixtures::status(fixtures::config("a", &["a", "b", "c"]), Role::Active)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_active_waits_until_its_successor_is_heard_as_active() {
        let before = active_a();
        let (tx, rx) = watch::channel(before.clone());
        let waiting = tokio::spawn(async move {
            await_takeover(&rx, &MemberId::new("c"), Epoch(1), Duration::from_secs(3)).await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "returned before c was heard");
        // c named as active, but of the old epoch: not the takeover yet.
        let mut stale = before.clone();
        stale.active = Some(MemberId::new("c"));
        tx.send(stale).expect("send");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "took a stale status for the takeover"
        );
        let mut taken = before;
        taken.active = Some(MemberId::new("c"));
        taken.epoch = Epoch(2);
        tx.send(taken).expect("send");
        assert!(waiting.await.expect("task"), "the takeover was seen");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_active_stops_waiting_after_its_bound() {
        let (_tx, rx) = watch::channel(active_a());
        let started = tokio::time::Instant::now();
        let seen = await_takeover(&rx, &MemberId::new("c"), Epoch(1), Duration::from_secs(3)).await;
        assert!(!seen);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
