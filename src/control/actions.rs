//! What comes out of the engine: the effects the driver must carry out, in
//! the order given.
//!
//! Owns: the action vocabulary and the operator-facing outcomes.
//! Must never: describe *how* an effect is done (SQL, sockets, processes).

use super::Millis;
use super::events::{Command, Message};
use crate::model::{Epoch, MemberId, Position};
use serde::{Deserialize, Serialize};

/// One effect. Execute in order; an action that fails (a database error)
/// must stop the rest of the list: a vote that could not be persisted must
/// never be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message to a peer (best effort: loss is tolerated).
    Send {
        to: MemberId,
        msg: Message,
    },
    /// Durably record the vote (`MemberStore::record_vote`, or the witness's
    /// vote file) before anything after it.
    PersistVote {
        epoch: Epoch,
        candidate: MemberId,
    },
    /// Record a new epoch in epoch history (`MemberStore::record_epoch`):
    /// `active` starts writing right after `start`.
    PersistEpoch {
        epoch: Epoch,
        active: MemberId,
        start: Position,
        reason: PromotionReason,
    },
    /// Persist the pause flag (`MemberStore::set_paused`).
    PersistPaused {
        paused: bool,
    },
    /// Renew the database lease. `until` is in the engine's clock (the `now`
    /// given to `step`): renew for `until - now_at_execution`
    /// (`MemberStore::renew_lease`), and skip the renewal if that is not
    /// positive (the process stalled in between).
    RenewLease {
        until: Millis,
    },
    /// Make the database refuse application writes now:
    /// `set_role(Fenced, epoch, active)`.
    Fence {
        epoch: Epoch,
        active: Option<MemberId>,
    },
    /// Lift the fence: `set_role(Active, epoch, Some(me))`. Always preceded
    /// by a `RenewLease`; writes then need the lease as well.
    Unfence {
        epoch: Epoch,
    },
    /// Follow a new active: `set_role(Passive, epoch, Some(active))`, and
    /// point the applier at `active` (a witness only records it).
    Follow {
        epoch: Epoch,
        active: MemberId,
    },
    /// Take over the rows `from` owned (`[takeover]`: the owner column of
    /// its table set from `from`'s owner id to mine); `None`: no previous
    /// active is known, take over ownerless rows only.
    TakeOver {
        from: Option<MemberId>,
    },
    /// Start the shipper (this member is the active).
    StartShipping,
    /// Stop the shipper.
    StopShipping,
    RunHook(Hook),
    /// Run `on_promote` *before* lifting the fence and report whether it
    /// succeeded with [`super::Event::PromoteHookDone`] (`hooks.on_promote_blocks`):
    /// the fence stays until it has, and a failure makes this member step
    /// down.
    RunPromoteHookGate,
    /// Tell the operator (log, status, the waiting CLI call).
    Notify(Notice),
}

/// The configured hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    OnPromote,
    OnDemote,
    OnFence,
}

/// Why a member became active (epoch history's `reason`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromotionReason {
    /// Elected by a majority after `previous` (if known) fell silent.
    Failover { previous: Option<MemberId> },
    /// Planned switchover handed over by `from`.
    Switchover { from: MemberId },
    /// `promote --force` by an operator.
    Forced,
}

/// Operator-facing outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    CommandRefused {
        command: Command,
        reason: CommandRefusal,
    },
    /// The switchover target has reached the head and was told to take
    /// over at `epoch`; this member has stepped down.
    SwitchoverHandedOver { to: MemberId, epoch: Epoch },
    /// The switchover did not happen; `resumed` says whether this member
    /// lifted its fence again and is still the writable active.
    SwitchoverFailed {
        to: MemberId,
        reason: SwitchoverFailure,
        resumed: bool,
    },
}

/// Why an operator command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    #[error("a witness holds no database and cannot become active")]
    Witness,
    #[error("this member is already the active and holds its lease")]
    AlreadyActive,
    #[error("only the active can start a switchover (the active is {active:?})")]
    NotActive { active: Option<MemberId> },
    #[error("{0} is not a member of this cluster")]
    UnknownMember(MemberId),
    #[error("{0} is a witness and cannot become active")]
    TargetIsWitness(MemberId),
    #[error("the switchover target is this member itself")]
    TargetIsSelf,
    #[error("a switchover to {0} is already in progress")]
    SwitchoverInProgress(MemberId),
}

/// Why a switchover failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverFailure {
    #[error("the target did not reach the head {head:?} in time (acknowledged: {acked:?})")]
    TimedOut {
        /// `None`: the fenced head was never reported (`Event::FenceApplied`).
        head: Option<Position>,
        acked: Option<Position>,
    },
    #[error("the active lost its lease (no majority answered) during the switchover")]
    LeaseLost,
    #[error("a newer epoch {0} superseded this active during the switchover")]
    Superseded(Epoch),
}
