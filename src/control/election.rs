//! Elections: how candidates rank, and what one round of candidacy tracks.
//!
//! Owns: the candidate order (most up to date, then priority, then member id)
//! and the per-round bookkeeping.
//! Must never: decide whether a vote is granted on its own (that needs the
//! engine's whole state: epoch, vote record, last heartbeat).

use super::Millis;
use super::events::VoteRefusal;
use super::lease::Acks;
use crate::model::{Epoch, MemberId, Position};
use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

/// A candidate as voters compare them: more up to date first, then the
/// configured priority (higher first), then the member id (lower first, so
/// every member breaks the last tie the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rank {
    pub position: Position,
    pub priority: i64,
    pub member: MemberId,
}

impl Rank {
    fn key(&self) -> (Position, i64, Reverse<&MemberId>) {
        (self.position, self.priority, Reverse(&self.member))
    }

    /// True when `self` should win over `other`.
    pub fn beats(&self, other: &Rank) -> bool {
        self.key().cmp(&other.key()) == Ordering::Greater
    }
}

/// The best candidate a voter has heard from, and when.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub rank: Rank,
    pub at: Millis,
}

/// One round of candidacy.
#[derive(Clone, Debug)]
pub(crate) struct Candidacy {
    pub epoch: Epoch,
    /// When the vote requests were sent.
    pub started: Millis,
    /// The round is lost (and retried at a higher epoch) after this.
    pub deadline: Millis,
    /// Grants, keyed by voter, with the `sent_at` of the request they answer
    /// (this member's own vote included): the new active's first lease.
    pub grants: Acks,
    pub refusals: BTreeMap<MemberId, VoteRefusal>,
    /// Stood because a switchover handed over.
    pub transfer: bool,
    /// Still asking whether votes would be granted; nothing persisted yet.
    pub pre: bool,
    /// The active this member followed before (its jobs are taken over).
    pub previous: Option<MemberId>,
    /// When unanswered requests are sent again.
    pub next_resend: Millis,
}
