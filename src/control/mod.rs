//! The promotion controller's decision logic: a pure state machine.
//!
//! Owns: who is active, when to fence, when to stand for election, how to
//! vote, switchover and forced promotion, and the typed reasons shown in
//! `/status` for a promotion that does not happen.
//! Must never: do IO, read a clock, draw random numbers or spawn tasks. Time
//! comes in with every [`Engine::step`] call (`now`, milliseconds of a
//! monotonic clock of the driver's choosing), randomness comes in with
//! [`Event::Tick`] (`jitter`), and every effect leaves as an [`Action`] that the
//! driver carries out **in order** (the engine relies on that order: a vote is
//! persisted before the reply that grants it, the epoch before the fence is
//! lifted).
//!
//! The shape follows a Raft engine split (events in, commands out, a runtime
//! executes them), adapted to a member database fenced by a lease:
//!
//! ```text
//!   driver ──Tick/Received/Position/FenceApplied/Command──► Engine::step(now, ev)
//!   driver ◄──────────── Vec<Action> (Send, Persist*, RenewLease, Fence, ...)
//! ```
//!
//! Driving it (the IO shell's contract):
//! - Load [`PersistedState`] (the member's `us_state`, or the witness's vote
//!   file), call [`Engine::new`] and run the start-up actions first.
//! - Feed [`Event::Tick`] at least every `heartbeat_interval / 4` with a fresh
//!   random `jitter` in `[0, heartbeat_interval)`, every controller message
//!   as [`Event::Received`] (sender = the peer's certificate name), every
//!   change of the local position as [`Event::Position`], and after executing
//!   each [`Action::Fence`] an [`Event::FenceApplied`] with the head read
//!   after it.
//! - `now` is a monotonic clock in milliseconds that keeps counting while the
//!   machine is suspended (on Linux `CLOCK_BOOTTIME`), so a frozen process
//!   never believes its lease is younger than it is.
//! - Execute the returned actions in order; if a durable action fails, drop
//!   the rest of the list (never send a reply whose vote was not stored) and
//!   fence the database if it might be unfenced.
//! - [`Engine::status`] answers `/status`; [`Engine::next_deadline`] says when
//!   a tick is due at the latest.
//!
//! Safety argument in brief (the simulator in `sim.rs` checks it over
//! thousands of seeded schedules):
//! - **One active per epoch**: a voter persists at most one vote per epoch
//!   before replying, and promotion needs a majority of all voters.
//! - **No two writable databases at once**: the active's lease ends at
//!   `s + lease_timeout`, where `s` is the *send* time of the newest message
//!   (heartbeat or vote request) a majority has answered. A voter that
//!   answered it refuses every other candidate for `failover_timeout` after it
//!   *received* it. With clock rates within `1 ± ε` the old lease is over
//!   before a new active is elected as long as
//!   `lease_timeout / (1 - ε) <= failover_timeout / (1 + ε)`.
//! - **No acknowledged write lost**: voters refuse candidates behind their own
//!   position (witnesses: behind the highest commit point they were told of),
//!   and a position counts as acknowledged by a majority only by the Raft rule
//!   (acknowledged while it was in the acknowledging active's own epoch).
//!   Witnesses hold no data, so their answers never acknowledge a position:
//!   a write counts as majority-acknowledged only once a majority of *all*
//!   voters holds it, which forces that majority to be members with data.
//!   (Counting a witness that merely saw a head would let an active and a
//!   witness "acknowledge" a tail the passive never received; the witness
//!   would then have to refuse that passive forever once the active died.)
//! - **No disruption**: a candidate first runs a pre-vote round that records
//!   nothing; only when a majority would grant does it persist its vote and
//!   move to a new epoch. A member cut off from the active therefore never
//!   inflates epochs and never deposes a healthy active when it returns.

mod actions;
pub mod driver;
mod election;
mod engine;
mod events;
mod lease;
pub mod peer_net;
mod status;
pub mod witness_file;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use actions::{Action, CommandRefusal, Hook, Notice, PromotionReason, SwitchoverFailure};
pub use engine::Engine;
pub use events::{Command, Event, Message, VoteRefusal};
pub use status::{ElectionReport, NotPromoting, PeerStatus, Status};

use crate::config::Config;
use crate::model::{Epoch, MemberId, Position, Role};
use crate::store::{ReplicationState, Vote};

/// Milliseconds of the driver's monotonic clock (the engine only ever
/// subtracts two of them taken in one process lifetime).
pub type Millis = u64;

/// Why an [`EngineConfig`] cannot drive an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("member {0} is not one of the configured voters")]
    NotAVoter(MemberId),
    #[error("member {0} is listed twice among the voters")]
    DuplicateVoter(MemberId),
    #[error("heartbeat_interval must be above 0")]
    ZeroHeartbeat,
    #[error(
        "lease_timeout ({lease} ms) must be < failover_timeout ({failover} ms): the active's lease must run out before any passive may promote"
    )]
    LeaseNotBelowFailover { lease: Millis, failover: Millis },
    #[error("this member is a witness but its voter entry says otherwise (or the reverse)")]
    WitnessMismatch,
    #[error(
        "a 2-member cluster without a witness cannot fail over automatically without risking two actives: add a witness or set auto_failover = false"
    )]
    TwoMembersNeedWitness,
}

/// One voter of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: MemberId,
    /// A witness votes but holds no database: it never becomes active and its
    /// acknowledgements carry no position.
    pub witness: bool,
}

/// What the engine needs from the member config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// This member.
    pub me: MemberId,
    /// Every voter (members and witnesses), this member included.
    pub voters: Vec<Voter>,
    pub heartbeat_interval: Millis,
    pub lease_timeout: Millis,
    pub failover_timeout: Millis,
    /// How long a planned switchover waits for the target to reach the head
    /// before it gives up and the active resumes writes.
    pub switchover_timeout: Millis,
    /// A passive further behind than this (in changes) does not stand for
    /// election automatically.
    pub max_failover_lag: u64,
    pub auto_failover: bool,
    /// Never promote this member automatically.
    pub no_failover: bool,
    /// Tie-breaker between equally up-to-date candidates (higher first).
    pub priority: i64,
    /// `hooks.on_promote_blocks`: lift the fence only after `on_promote`
    /// succeeded; step down (and stand again only after
    /// [`PROMOTE_HOOK_BACKOFF`] failover timeouts) when it fails.
    pub promote_hook_blocks: bool,
}

/// After a blocking `on_promote` failed, this member does not stand for
/// election for this many failover timeouts, so the others (whose hooks may
/// work) get their turn instead of the same member failing again at once.
pub const PROMOTE_HOOK_BACKOFF: u64 = 10;

impl EngineConfig {
    /// The controller's part of a member config. A switchover waits up to ten
    /// failover timeouts for the target to catch up.
    pub fn from_config(c: &Config) -> EngineConfig {
        let mut voters: Vec<Voter> = c
            .peers
            .iter()
            .map(|p| Voter {
                id: p.member.clone(),
                witness: p.witness,
            })
            .collect();
        voters.push(Voter {
            id: c.member.clone(),
            witness: c.witness,
        });
        voters.sort_by(|a, b| a.id.cmp(&b.id));
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let failover = ms(c.replication.failover_timeout);
        EngineConfig {
            me: c.member.clone(),
            voters,
            heartbeat_interval: ms(c.replication.heartbeat_interval),
            lease_timeout: ms(c.replication.lease_timeout),
            failover_timeout: failover,
            switchover_timeout: failover.saturating_mul(10),
            max_failover_lag: c.replication.max_failover_lag_changes,
            auto_failover: c.auto_failover,
            no_failover: c.no_failover,
            priority: c.priority,
            promote_hook_blocks: c.hooks.on_promote_blocks,
        }
    }

    /// Check the invariants the engine's safety argument depends on.
    pub fn validate(&self) -> Result<(), ControlError> {
        let mut seen = std::collections::BTreeSet::new();
        for v in &self.voters {
            if !seen.insert(&v.id) {
                return Err(ControlError::DuplicateVoter(v.id.clone()));
            }
        }
        if !seen.contains(&self.me) {
            return Err(ControlError::NotAVoter(self.me.clone()));
        }
        if self.heartbeat_interval == 0 {
            return Err(ControlError::ZeroHeartbeat);
        }
        if self.auto_failover && self.voters.len() == 2 && self.voters.iter().all(|v| !v.witness) {
            return Err(ControlError::TwoMembersNeedWitness);
        }
        if self.lease_timeout >= self.failover_timeout {
            return Err(ControlError::LeaseNotBelowFailover {
                lease: self.lease_timeout,
                failover: self.failover_timeout,
            });
        }
        Ok(())
    }

    /// Majority of all voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Two members, no witness, automatic failover off: only an operator
    /// promotes, so the active's lease does not need the passive's answers
    /// once the passive has confirmed the active's epoch.
    pub fn manual_pair(&self) -> bool {
        !self.auto_failover && self.voters.len() == 2 && self.voters.iter().all(|v| !v.witness)
    }

    /// Whether this member is a witness.
    pub fn is_witness(&self) -> bool {
        self.voter(&self.me).is_some_and(|v| v.witness)
    }

    pub fn voter(&self, id: &MemberId) -> Option<&Voter> {
        self.voters.iter().find(|v| &v.id == id)
    }
}

/// The controller's durable state, as the driver loaded it at start-up (from
/// `us_state`, or a witness's vote file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedState {
    /// Epoch of the newest active this member knows of.
    pub epoch: Epoch,
    /// That active.
    pub active: Option<MemberId>,
    /// Role as last recorded.
    pub role: Role,
    /// The newest vote cast (at most one per epoch).
    pub vote: Option<Vote>,
    /// Automatic failover suspended by an operator.
    pub paused: bool,
    /// Last position in this member's change log (head on an active, applied
    /// on a passive); `Position::ZERO` on a witness.
    pub position: Position,
}

impl PersistedState {
    /// The controller's view of a member database's replication state row.
    pub fn from_replication_state(s: &ReplicationState) -> PersistedState {
        PersistedState {
            epoch: s.epoch,
            active: s.active.clone(),
            role: s.role,
            vote: s.vote.clone(),
            paused: s.paused,
            position: s.position,
        }
    }
}

/// Test fixtures shared by the controller's test modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A config for `me` among `voters` (none a witness) with short test
    /// timings: heartbeat 100 ms, lease 250 ms, failover 300 ms.
    pub(crate) fn config(me: &str, voters: &[&str]) -> EngineConfig {
        EngineConfig {
            me: MemberId::new(me),
            voters: voters
                .iter()
                .map(|m| Voter {
                    id: MemberId::new(*m),
                    witness: false,
                })
                .collect(),
            heartbeat_interval: 100,
            lease_timeout: 250,
            failover_timeout: 300,
            switchover_timeout: 3000,
            max_failover_lag: 1000,
            auto_failover: true,
            no_failover: false,
            priority: 0,
            promote_hook_blocks: false,
        }
    }

    /// The status of a freshly started engine with `cfg`, in `role`, in
    /// epoch 1 with `a` active at position 1/3.
    pub(crate) fn status(cfg: EngineConfig, role: Role) -> Status {
        let persisted = PersistedState {
            epoch: Epoch(1),
            active: Some(MemberId::new("a")),
            role,
            vote: None,
            paused: false,
            position: Position::new(1, 3),
        };
        let (engine, _) = Engine::new(cfg, persisted, 0).expect("a valid test config");
        engine.status(0)
    }
}
