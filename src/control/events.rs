//! What goes into the engine: events from the driver, the messages members of
//! the controller exchange, and operator commands.
//!
//! Owns: the event and message vocabulary (messages are serde types so the
//! wire codec can carry them unchanged).
//! Must never: carry anything secret, or anything the engine would have to
//! trust without checking (the sender of a message is the authenticated peer
//! the driver names in [`Event::Received`], never a field inside it).

use super::Millis;
use crate::model::{Epoch, MemberId, Position};
use serde::{Deserialize, Serialize};

/// One input to [`super::Engine::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed. Drive it at least every `heartbeat_interval / 4` (or at
    /// [`super::Engine::next_deadline`]). `jitter` is a fresh random value in
    /// `[0, failover_timeout / 2)`; the engine adds the newest one to every
    /// election deadline it arms, so members that lost the same active do not
    /// all stand at once.
    Tick { jitter: Millis },
    /// A controller message from an authenticated peer.
    Received { from: MemberId, msg: Message },
    /// This member's own change-log position moved: the head on an active (a
    /// commit was captured), the applied position on a passive.
    Position { position: Position },
    /// The driver executed [`super::Action::Fence`]: `head` is the change-log
    /// head read *after* the fence took effect. A switchover hands over only
    /// once the target has acknowledged this exact head.
    FenceApplied { head: Position },
    /// The driver ran [`super::Action::RunPromoteHookGate`]: `ok` is whether
    /// `on_promote` succeeded (true when none is configured).
    PromoteHookDone { ok: bool },
    /// An operator command (from the CLI or the status endpoint).
    Command(Command),
}

/// Operator commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Become active now at a new epoch, without a quorum and whatever the lag:
    /// the operator declares the old active dead (2-member clusters without a
    /// witness, or a passive held back by the lag gate).
    ForcePromote,
    /// Suspend automatic failover on this member (persisted). The driver
    /// sends it to every member for a cluster-wide pause.
    Pause,
    /// Resume automatic failover on this member (persisted).
    Resume,
    /// Planned, zero-loss role change to `to` (on the active).
    Switchover { to: MemberId },
}

/// Controller messages between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// From the active of `epoch`, every `heartbeat_interval`. `sent_at` is the
    /// sender's clock, echoed in the ack: the lease is counted from it.
    Heartbeat {
        epoch: Epoch,
        sent_at: Millis,
        /// The active's change-log head.
        head: Position,
        /// The newest position a majority has acknowledged (Raft rule).
        commit: Position,
        /// Automatic failover paused cluster-wide: followers adopt the
        /// active's flag, so a member that missed a pause or resume (it was
        /// down, or cut off) learns it from the next heartbeat.
        paused: bool,
        /// The newest head this active knows a majority heard of: the head
        /// of the newest heartbeat a majority (itself included) answered.
        /// The failover lag gate counts from it.
        announced: Position,
        /// The data members' acknowledged positions (the active's own head
        /// included), so that once the active is gone every member can tell
        /// whether any candidate is within the lag gate.
        positions: Vec<(MemberId, Position)>,
    },
    /// An operator paused or resumed automatic failover on the sender; every
    /// member adopts it (best effort; heartbeats repair what is missed).
    SetPaused { paused: bool },
    /// Answer to a heartbeat of `epoch`. `position` is the sender's applied
    /// position; `None` from a witness (it holds no data).
    HeartbeatAck {
        epoch: Epoch,
        sent_at: Millis,
        position: Option<Position>,
    },
    /// Answer to a heartbeat from an epoch the receiver has moved past. `term`
    /// is the receiver's newest epoch (known active or vote); `epoch`/`active`
    /// the newest active it knows.
    Stale {
        term: Epoch,
        epoch: Epoch,
        active: Option<MemberId>,
    },
    /// A candidate asks for a vote in `epoch`. With `pre`, it only asks
    /// whether the vote *would* be granted (nothing is recorded on either
    /// side): a member stands for real, and moves to a new epoch, only once a
    /// majority has said yes, so a member that cannot win (the others still
    /// hear the active) never pushes epochs up and never disturbs the active.
    RequestVote {
        epoch: Epoch,
        candidate: MemberId,
        position: Position,
        priority: i64,
        sent_at: Millis,
        /// Set by the target of a switchover: the old active has fenced
        /// itself and handed over, so voters need not wait for its heartbeats
        /// to stop.
        transfer: bool,
        pre: bool,
    },
    /// Answer to a vote request of `epoch`; `sent_at` echoes the request's.
    VoteReply {
        epoch: Epoch,
        sent_at: Millis,
        granted: bool,
        /// The voter's newest epoch after handling the request.
        term: Epoch,
        refusal: Option<VoteRefusal>,
        /// Answers a pre-vote.
        pre: bool,
    },
    /// From a fenced active whose switchover target has reached its exact
    /// head: stand for election at `epoch` now (the sender voted for you).
    Handover { epoch: Epoch },
}

/// Why a vote was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteRefusal {
    /// The request's epoch is not above the voter's newest epoch.
    StaleEpoch,
    /// The voter already voted in this epoch for someone else.
    AlreadyVoted { candidate: MemberId },
    /// The voter heard from a live active (or granted a vote, or started)
    /// less than `failover_timeout` ago. `active` is `None` right after start.
    ActiveAlive { active: Option<MemberId> },
    /// The candidate is behind the voter's position (or, on a witness, behind
    /// the newest commit point it was told of).
    Behind { position: Position },
    /// A better candidate (more up to date, then higher priority, then lower
    /// member id) asked recently, or the voter is one itself.
    BetterCandidate { member: MemberId },
    /// The voter is the active of its epoch and holds its lease.
    IAmActive,
    /// The candidate is more than `max` changes behind `announced`, the
    /// newest head the voter knows the active announced to a majority (the
    /// failover lag gate; `understudy promote --force` overrides it).
    Lagging { announced: Position, max: u64 },
}
