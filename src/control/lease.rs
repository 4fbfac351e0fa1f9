//! The active's lease and commit point, computed from acknowledgements.
//!
//! Owns: the quorum arithmetic over "who answered which message when",
//! and which announced head a majority has heard of.
//! Must never: read a clock (times are the sender's own `sent_at` stamps).

use super::Millis;
use crate::model::{Epoch, MemberId, Position};
use std::collections::{BTreeMap, VecDeque};

/// What one voter last acknowledged to the active of the current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    /// The newest `sent_at` (active's clock) this voter has answered.
    pub sent_at: Millis,
    /// Its applied position; `None` for a witness.
    pub position: Option<Position>,
}

/// Acknowledgements collected by the active (or by a candidate, as grants)
/// in one epoch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Acks {
    by_voter: BTreeMap<MemberId, Ack>,
}

impl Acks {
    pub fn record(&mut self, from: &MemberId, sent_at: Millis, position: Option<Position>) {
        let e = self
            .by_voter
            .entry(from.clone())
            .or_insert(Ack { sent_at, position });
        // Duplicated or reordered answers never move the lease backwards.
        e.sent_at = e.sent_at.max(sent_at);
        if let Some(p) = position {
            e.position = Some(e.position.map_or(p, |q| q.max(p)));
        }
    }

    pub fn get(&self, id: &MemberId) -> Option<&Ack> {
        self.by_voter.get(id)
    }

    /// The positions acknowledged so far (data voters only).
    pub fn positions(&self) -> impl Iterator<Item = (&MemberId, Position)> {
        self.by_voter
            .iter()
            .filter_map(|(m, a)| a.position.map(|p| (m, p)))
    }

    pub fn len(&self) -> usize {
        self.by_voter.len()
    }

    /// The lease basis: the newest send time that `quorum` voters (this one,
    /// stamped `own_sent_at`, included) have all answered. Measured from the
    /// *send* time, so the lease can only be shorter than what the voters
    /// grant by their own clocks.
    pub fn basis(&self, me: &MemberId, own_sent_at: Millis, quorum: usize) -> Option<Millis> {
        let mut t: Vec<Millis> = self
            .by_voter
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, a)| a.sent_at)
            .collect();
        t.push(own_sent_at);
        t.sort_unstable_by(|a, b| b.cmp(a));
        t.get(quorum.checked_sub(1)?).copied()
    }

    /// The newest position a majority of voters holds, counted only if it
    /// belongs to `epoch` (the Raft commit rule: a position of an older epoch
    /// that a majority happens to hold can still be overwritten by a member
    /// whose newer-epoch tail outranks it, so it is committed only together
    /// with a later position of the current epoch). Witnesses hold nothing.
    pub fn commit(
        &self,
        me: &MemberId,
        own: Position,
        epoch: Epoch,
        quorum: usize,
    ) -> Option<Position> {
        let mut p: Vec<Position> = self
            .by_voter
            .iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(_, a)| a.position)
            .collect();
        p.push(own);
        p.sort_unstable_by(|a, b| b.cmp(a));
        let c = *p.get(quorum.checked_sub(1)?)?;
        (c.epoch == epoch.0).then_some(c)
    }
}

/// The heads carried by recent heartbeats, to tell which of them a majority
/// has heard of: the failover lag gate counts from that head, "the head the
/// active last announced to a majority".
#[derive(Debug, Default)]
pub(crate) struct Announced {
    /// (send time, head) of heartbeats not yet known to have reached a
    /// majority, oldest first; bounded, so a long-lost majority costs
    /// nothing but the oldest entries.
    sent: VecDeque<(Millis, Position)>,
    head: Position,
}

impl Announced {
    const KEEP: usize = 256;

    pub fn sent(&mut self, at: Millis, head: Position) {
        self.sent.push_back((at, head));
        if self.sent.len() > Self::KEEP {
            self.sent.pop_front();
        }
    }

    /// A majority has answered heartbeats sent at `basis` or later (see
    /// [`Acks::basis`]). Heads only grow, so every head sent up to `basis`
    /// has been heard of by that majority.
    pub fn heard_by_majority(&mut self, basis: Millis) {
        while let Some(&(at, head)) = self.sent.front() {
            if at > basis {
                break;
            }
            self.head = self.head.max(head);
            self.sent.pop_front();
        }
    }

    pub fn head(&self) -> Position {
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MemberId {
        MemberId::new(s)
    }

    #[test]
    fn basis_is_the_quorum_th_newest_send_time() {
        let mut a = Acks::default();
        assert_eq!(a.basis(&m("a"), 100, 2), None);
        assert_eq!(a.basis(&m("a"), 100, 1), Some(100));
        a.record(&m("b"), 70, None);
        a.record(&m("c"), 90, None);
        a.record(&m("c"), 80, None); // reordered: ignored
        assert_eq!(a.basis(&m("a"), 100, 2), Some(90));
        assert_eq!(a.basis(&m("a"), 100, 3), Some(70));
    }

    #[test]
    fn commit_counts_only_current_epoch_positions_and_never_witnesses() {
        let mut a = Acks::default();
        a.record(&m("b"), 1, Some(Position::new(1, 9)));
        a.record(&m("w"), 1, None);
        let me = m("a");
        // a at 2/10, b at 1/9: the majority holds 1/9, an older epoch.
        assert_eq!(a.commit(&me, Position::new(2, 10), Epoch(2), 2), None);
        a.record(&m("b"), 2, Some(Position::new(2, 10)));
        assert_eq!(
            a.commit(&me, Position::new(2, 12), Epoch(2), 2),
            Some(Position::new(2, 10))
        );
        // Three voters needed and the witness holds nothing.
        assert_eq!(a.commit(&me, Position::new(2, 12), Epoch(2), 3), None);
    }
}
