//! What the engine tells `/status`: role, epoch, lease, peers, and above all
//! the typed reasons why this member is not promoting.
//!
//! Owns: the status vocabulary.
//! Must never: hold anything the engine does not already decide on.

use super::Millis;
use super::events::VoteRefusal;
use crate::model::{Epoch, MemberId, Position, Role};
use serde::Serialize;

/// A snapshot of the controller, for `/status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub member: MemberId,
    /// `active` only while the database is unfenced; `fenced` for an active
    /// that lost (or has not yet regained) its lease, or a former active.
    pub role: Role,
    pub epoch: Epoch,
    /// The newest epoch voted in or known (≥ `epoch`).
    pub term: Epoch,
    pub active: Option<MemberId>,
    pub position: Position,
    /// Newest head the active announced (the lag reference on a passive).
    pub head_seen: Position,
    pub commit: Position,
    pub paused: bool,
    /// The lease is renewed on the active's own authority, not a majority's:
    /// after `promote --force` (until a majority follows it), or in a
    /// two-member cluster without a witness (where only an operator promotes).
    pub forced: bool,
    /// Time since the active (or this member's own lease) was last heard of.
    pub last_heartbeat_ms: Option<Millis>,
    /// Lease time left on the active.
    pub lease_remaining_ms: Option<Millis>,
    pub switchover_to: Option<MemberId>,
    /// Why this member would not become active if the active failed now (or,
    /// when it has failed, why it is not becoming active). Empty on the active
    /// and on a member that would stand for election.
    pub not_promoting: Vec<NotPromoting>,
    pub last_election: Option<ElectionReport>,
    pub peers: Vec<PeerStatus>,
}

/// One reason a member is not promoting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotPromoting {
    /// This member is a witness.
    Witness,
    /// `auto_failover = false` in the config.
    AutoFailoverOff,
    /// An operator paused automatic failover.
    Paused,
    /// The member is tagged `no_failover`.
    NoFailover,
    /// Further than `max_failover_lag` behind the newest head the active
    /// announced to a majority.
    Lagging { behind: u64, max: u64 },
    /// The lag gate blocks every candidate: even the most up-to-date data
    /// member this one knows of (`best`, at `best_position`) is more than
    /// `max` changes behind `announced`. Promoting anyone loses
    /// `changes_at_risk` changes; `understudy promote --force --to <best>`
    /// accepts that explicitly.
    LagGateBlocksAll {
        announced: Position,
        best: MemberId,
        best_position: Position,
        changes_at_risk: u64,
        max: u64,
    },
    /// The active is alive: heard from `ms_ago` ago (< failover_timeout).
    ActiveAlive {
        active: Option<MemberId>,
        ms_ago: Millis,
    },
    /// Its blocking `on_promote` hook failed when it was last elected
    /// (`hooks.on_promote_blocks`); it stands again in `retry_in_ms`.
    PromoteHookFailed { retry_in_ms: Millis },
    /// This member does not apply the active's changes (its captured
    /// tables differ from the active's: `apply.reason` says how), so it
    /// holds less than it seems to and must not become the active.
    ApplyBlocked,
    /// A better candidate asked for votes, or a voter said one exists.
    CandidateAhead { member: MemberId },
    /// The last election round did not reach a majority.
    NoQuorum {
        epoch: Epoch,
        granted: usize,
        needed: usize,
        /// Voters that did not answer at all.
        unreachable: Vec<MemberId>,
    },
}

/// How the last election round this member stood in ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ElectionReport {
    pub epoch: Epoch,
    pub at_ms: Millis,
    pub won: bool,
    pub granted: Vec<MemberId>,
    pub refused: Vec<(MemberId, VoteRefusal)>,
    pub unreachable: Vec<MemberId>,
}

/// One peer as this member sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub member: MemberId,
    pub witness: bool,
    /// Time since any controller message from it.
    pub last_message_ms: Option<Millis>,
    /// Its acknowledged position (on the active).
    pub acked: Option<Position>,
    /// Changes behind this member's head (on the active).
    pub lag_changes: Option<u64>,
}
