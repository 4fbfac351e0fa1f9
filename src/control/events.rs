//! What goes into the engine: events from the driver, the messages members of
//! the controller exchange, and operator commands.
//!
//! Owns: the event and message vocabulary (messages are serde types so the
//! wire codec can carry them unchanged).
//! Must never: carry anything secret, or anything the engine would have to
//! trust without checking (the sender of a message is the authenticated peer
//! the driver names in [`Event::Received`], never a field inside it).

use super::Millis;
// The messages between members belong to the wire (it sits below the
// controller); the controller speaks of them as its own.
use crate::model::{MemberId, Position};
pub use crate::wire::control::{Message, VoteRefusal};
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
    /// Whether this member's applier is blocked (its tables differ from
    /// the active's). A blocked member does not stand for election; it
    /// still votes.
    ApplyBlocked { blocked: bool },
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
