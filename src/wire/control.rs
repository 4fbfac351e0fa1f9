//! The promotion controller's messages between members, as the wire
//! carries them (one enum for both directions: every voter sends and
//! receives each kind).
//!
//! Owns: the message and vote-refusal types. The promotion controller
//! re-exports them and gives them meaning.
//! Must never: depend on the controller (the wire sits below it), or carry
//! anything but plain data. Times are the sender's monotonic milliseconds
//! (the controller's `Millis`).

use crate::model::{Epoch, MemberId, Position};
use serde::{Deserialize, Serialize};

/// Controller messages between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// From the active of `epoch`, every `heartbeat_interval`. `sent_at` is the
    /// sender's clock, echoed in the ack: the lease is counted from it.
    Heartbeat {
        epoch: Epoch,
        sent_at: u64,
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
        sent_at: u64,
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
        sent_at: u64,
        /// Set by the target of a switchover: the old active has fenced
        /// itself and handed over, so voters need not wait for its heartbeats
        /// to stop.
        transfer: bool,
        pre: bool,
    },
    /// Answer to a vote request of `epoch`; `sent_at` echoes the request's.
    VoteReply {
        epoch: Epoch,
        sent_at: u64,
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
