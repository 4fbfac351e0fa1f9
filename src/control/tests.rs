//! Engine unit tests: the exact actions emitted on each key transition.

use super::*;
use crate::model::{Epoch, MemberId, Position, Role};
use crate::store::Vote;

const HB: Millis = 100;
const LEASE: Millis = 500;
const FAILOVER: Millis = 600;
const SWITCHOVER: Millis = 2000;

fn m(s: &str) -> MemberId {
    MemberId::new(s)
}

fn p(e: u64, s: u64) -> Position {
    Position::new(e, s)
}

fn cfg_with(me: &str, voters: &[(&str, bool)]) -> EngineConfig {
    EngineConfig {
        me: m(me),
        voters: voters
            .iter()
            .map(|(id, w)| Voter {
                id: m(id),
                witness: *w,
            })
            .collect(),
        heartbeat_interval: HB,
        lease_timeout: LEASE,
        failover_timeout: FAILOVER,
        switchover_timeout: SWITCHOVER,
        max_failover_lag: 100,
        auto_failover: true,
        no_failover: false,
        priority: 0,
        promote_hook_blocks: false,
    }
}

fn cfg(me: &str) -> EngineConfig {
    cfg_with(me, &[("a", false), ("b", false), ("c", false)])
}

fn passive(epoch: u64, active: &str, pos: Position) -> PersistedState {
    PersistedState {
        epoch: Epoch(epoch),
        active: Some(m(active)),
        role: Role::Passive,
        vote: None,
        paused: false,
        position: pos,
    }
}

fn start(c: EngineConfig, s: PersistedState, now: Millis) -> Engine {
    let (e, out) = Engine::new(c, s, now).expect("valid config");
    assert!(out.is_empty(), "unexpected start-up actions {out:?}");
    e
}

fn recv(from: &str, msg: Message) -> Event {
    Event::Received { from: m(from), msg }
}

fn tick() -> Event {
    Event::Tick { jitter: 0 }
}

fn send(to: &str, msg: Message) -> Action {
    Action::Send { to: m(to), msg }
}

fn hb(epoch: u64, sent_at: Millis, head: Position) -> Message {
    Message::Heartbeat {
        epoch: Epoch(epoch),
        sent_at,
        head,
        commit: Position::ZERO,
        paused: false,
        announced: Position::ZERO,
        positions: Vec::new(),
    }
}

/// A heartbeat that says which head a majority heard of and the data
/// members' positions.
fn hb_announced(
    epoch: u64,
    sent_at: Millis,
    head: Position,
    announced: Position,
    positions: &[(&str, Position)],
) -> Message {
    Message::Heartbeat {
        epoch: Epoch(epoch),
        sent_at,
        head,
        commit: Position::ZERO,
        paused: false,
        announced,
        positions: positions.iter().map(|(m_, p_)| (m(m_), *p_)).collect(),
    }
}

fn ack(epoch: u64, sent_at: Millis, pos: Position) -> Message {
    Message::HeartbeatAck {
        epoch: Epoch(epoch),
        sent_at,
        position: Some(pos),
    }
}

fn request(epoch: u64, cand: &str, pos: Position, sent_at: Millis, pre: bool) -> Message {
    Message::RequestVote {
        epoch: Epoch(epoch),
        candidate: m(cand),
        position: pos,
        priority: 0,
        sent_at,
        transfer: false,
        pre,
    }
}

/// A vote request.
fn rv(epoch: u64, cand: &str, pos: Position, sent_at: Millis) -> Message {
    request(epoch, cand, pos, sent_at, false)
}

/// A pre-vote request.
fn prv(epoch: u64, cand: &str, pos: Position, sent_at: Millis) -> Message {
    request(epoch, cand, pos, sent_at, true)
}

fn reply(epoch: u64, sent_at: Millis, term: u64, r: Option<VoteRefusal>, pre: bool) -> Message {
    Message::VoteReply {
        epoch: Epoch(epoch),
        sent_at,
        granted: r.is_none(),
        term: Epoch(term),
        refusal: r,
        pre,
    }
}

fn granted(epoch: u64, sent_at: Millis) -> Message {
    reply(epoch, sent_at, epoch, None, false)
}

fn pre_granted(epoch: u64, sent_at: Millis, term: u64) -> Message {
    reply(epoch, sent_at, term, None, true)
}

fn refused(epoch: u64, sent_at: Millis, term: u64, r: VoteRefusal) -> Message {
    reply(epoch, sent_at, term, Some(r), false)
}

fn pre_refused(epoch: u64, sent_at: Millis, term: u64, r: VoteRefusal) -> Message {
    reply(epoch, sent_at, term, Some(r), true)
}

fn heartbeats(epoch: u64, sent_at: Millis, head: Position, to: &[&str]) -> Vec<Action> {
    heartbeats_c(epoch, sent_at, head, Position::ZERO, to)
}

/// The heartbeats the active sends to `to` when no data member has
/// acknowledged a position yet and no head is known to a majority: the
/// sender (the voter missing from `to`) reports only its own head.
fn heartbeats_c(
    epoch: u64,
    sent_at: Millis,
    head: Position,
    commit: Position,
    to: &[&str],
) -> Vec<Action> {
    let sender = ["a", "b", "c", "d"]
        .into_iter()
        .find(|v| !to.contains(v))
        .expect("a sender");
    heartbeats_full(
        epoch,
        sent_at,
        head,
        commit,
        Position::ZERO,
        &[(sender, head)],
        to,
    )
}

/// The heartbeats the active sends to `to`, every field given.
fn heartbeats_full(
    epoch: u64,
    sent_at: Millis,
    head: Position,
    commit: Position,
    announced: Position,
    positions: &[(&str, Position)],
    to: &[&str],
) -> Vec<Action> {
    to.iter()
        .map(|t| {
            let msg = Message::Heartbeat {
                epoch: Epoch(epoch),
                sent_at,
                head,
                commit,
                paused: false,
                announced,
                positions: positions.iter().map(|(m_, p_)| (m(m_), *p_)).collect(),
            };
            send(t, msg)
        })
        .collect()
}

/// `a` restarted as the active of epoch 1 and regained its lease: b acked.
fn active_a(pos: Position) -> Engine {
    let s = PersistedState {
        epoch: Epoch(1),
        active: Some(m("a")),
        role: Role::Active,
        vote: None,
        paused: false,
        position: pos,
    };
    let (mut e, out) = Engine::new(cfg("a"), s, 0).unwrap();
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                active: Some(m("a"))
            },
            Action::RunHook(Hook::OnFence)
        ],
        "a restarted active fences itself first"
    );
    assert_eq!(e.role(), Role::Fenced);
    assert_eq!(e.step(0, tick()), heartbeats(1, 0, pos, &["b", "c"]));
    assert_eq!(
        e.step(5, recv("b", ack(1, 0, pos))),
        vec![
            Action::RenewLease { until: LEASE },
            Action::Unfence { epoch: Epoch(1) },
            Action::RunHook(Hook::OnPromote),
            Action::StartShipping,
        ],
        "a majority at its epoch lifts the fence again"
    );
    assert_eq!(e.role(), Role::Active);
    e
}

#[test]
fn heartbeat_timeout_leads_to_candidacy_votes_and_ordered_promotion() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    assert_eq!(
        b.step(10, recv("a", hb(1, 5, p(1, 10)))),
        vec![send("a", ack(1, 5, p(1, 10)))]
    );
    assert_eq!(b.step(609, tick()), vec![], "not before failover_timeout");
    assert_eq!(
        b.step(610, tick()),
        vec![
            send("a", prv(2, "b", p(1, 10), 610)),
            send("c", prv(2, "b", p(1, 10), 610)),
        ],
        "a pre-vote first: nothing persisted, the epoch does not move"
    );
    assert_eq!(b.role(), Role::Candidate);
    assert_eq!(b.term(), Epoch(1));
    assert_eq!(
        b.step(615, recv("c", pre_granted(2, 610, 1))),
        vec![
            Action::PersistVote {
                epoch: Epoch(2),
                candidate: m("b")
            },
            send("a", rv(2, "b", p(1, 10), 615)),
            send("c", rv(2, "b", p(1, 10), 615)),
        ],
        "a majority would grant: the self-vote is durable before any request leaves"
    );
    assert_eq!(b.term(), Epoch(2));
    assert_eq!(
        b.step(620, recv("c", granted(2, 615))),
        [
            vec![
                Action::PersistEpoch {
                    epoch: Epoch(2),
                    active: m("b"),
                    start: p(1, 10),
                    reason: PromotionReason::Failover {
                        previous: Some(m("a"))
                    },
                },
                Action::RenewLease { until: 615 + LEASE },
                Action::Unfence { epoch: Epoch(2) },
                Action::TakeOver { from: Some(m("a")) },
                Action::RunHook(Hook::OnPromote),
                Action::StartShipping,
            ],
            heartbeats(2, 620, p(1, 10), &["a", "c"]),
        ]
        .concat()
    );
    assert_eq!(b.role(), Role::Active);
    assert_eq!(b.epoch(), Epoch(2));
    assert!(b.is_writable());
}

#[test]
fn vote_is_persisted_before_the_reply_and_only_one_per_epoch() {
    let mut c = start(cfg("c"), passive(1, "a", p(1, 10)), 0);
    assert_eq!(
        c.step(695, recv("b", prv(2, "b", p(1, 10), 690))),
        vec![send("b", pre_granted(2, 690, 1))],
        "a pre-vote is answered without recording anything"
    );
    assert_eq!(c.term(), Epoch(1));
    assert_eq!(
        c.step(700, recv("b", rv(2, "b", p(1, 10), 690))),
        vec![
            Action::PersistVote {
                epoch: Epoch(2),
                candidate: m("b")
            },
            send("b", granted(2, 690)),
        ]
    );
    assert_eq!(c.term(), Epoch(2));
    // Another candidate in the same epoch: refused, nothing persisted.
    assert_eq!(
        c.step(710, recv("a", rv(2, "a", p(1, 12), 705))),
        vec![send(
            "a",
            refused(2, 705, 2, VoteRefusal::AlreadyVoted { candidate: m("b") })
        )]
    );
    // The same request again (duplicated on the wire): same answer, no new write.
    assert_eq!(
        c.step(720, recv("b", rv(2, "b", p(1, 10), 690))),
        vec![send("b", granted(2, 690))]
    );
    // An older epoch: refused.
    assert_eq!(
        c.step(730, recv("a", rv(1, "a", p(1, 12), 725))),
        vec![send("a", refused(1, 725, 2, VoteRefusal::StaleEpoch))]
    );
}

#[test]
fn a_voter_that_heard_from_the_active_or_just_started_refuses() {
    let mut c = start(cfg("c"), passive(1, "a", p(1, 10)), 1000);
    assert_eq!(
        c.step(1000, recv("b", rv(2, "b", p(1, 10), 1000))),
        vec![send(
            "b",
            refused(2, 1000, 1, VoteRefusal::ActiveAlive { active: None })
        )],
        "a restarted voter waits failover_timeout: it may have acked the active just before"
    );
    c.step(1700, recv("a", hb(1, 1690, p(1, 10))));
    assert_eq!(
        c.step(2299, recv("b", rv(2, "b", p(1, 10), 2299))),
        vec![send(
            "b",
            refused(
                2,
                2299,
                1,
                VoteRefusal::ActiveAlive {
                    active: Some(m("a"))
                }
            )
        )]
    );
    assert_eq!(
        c.term(),
        Epoch(1),
        "a refused request does not move the epoch"
    );
}

#[test]
fn a_vote_is_refused_to_a_candidate_behind() {
    let mut s = passive(1, "a", p(1, 20));
    s.paused = true; // so c does not stand itself
    let mut c = start(cfg("c"), s, 0);
    assert_eq!(
        c.step(700, recv("b", rv(2, "b", p(1, 10), 700))),
        vec![send(
            "b",
            refused(2, 700, 1, VoteRefusal::Behind { position: p(1, 20) })
        )]
    );
    // Ordered by epoch first: a newer epoch with a lower seq is ahead.
    assert_eq!(
        c.step(710, recv("b", rv(3, "b", p(2, 15), 710))),
        vec![
            Action::PersistVote {
                epoch: Epoch(3),
                candidate: m("b")
            },
            send("b", granted(3, 710)),
        ]
    );
}

#[test]
fn an_eligible_voter_ahead_refuses_and_stands_itself() {
    let mut c = start(cfg("c"), passive(1, "a", p(1, 20)), 0);
    assert_eq!(
        c.step(700, recv("b", rv(2, "b", p(1, 10), 700))),
        vec![
            send(
                "b",
                refused(2, 700, 1, VoteRefusal::BetterCandidate { member: m("c") })
            ),
            send("a", prv(3, "c", p(1, 20), 700)),
            send("b", prv(3, "c", p(1, 20), 700)),
        ]
    );
}

#[test]
fn priority_breaks_ties_and_the_less_preferred_candidate_backs_off() {
    let mut cc = cfg("c");
    cc.priority = 5;
    let mut c = start(cc, passive(1, "a", p(1, 10)), 0);
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    let out = b.step(700, tick());
    assert!(
        out.contains(&send("c", prv(2, "b", p(1, 10), 700))),
        "{out:?}"
    );
    // Same position, higher priority: c refuses and stands.
    let out = c.step(705, recv("b", prv(2, "b", p(1, 10), 700)));
    assert_eq!(
        out[0],
        send(
            "b",
            pre_refused(2, 700, 1, VoteRefusal::BetterCandidate { member: m("c") })
        )
    );
    let ask = |pre| Message::RequestVote {
        epoch: Epoch(3),
        candidate: m("c"),
        position: p(1, 10),
        priority: 5,
        sent_at: 705,
        transfer: false,
        pre,
    };
    assert!(out.contains(&send("b", ask(true))), "{out:?}");
    // b backs off on the refusal ...
    assert_eq!(
        b.step(
            710,
            recv(
                "c",
                pre_refused(2, 700, 1, VoteRefusal::BetterCandidate { member: m("c") })
            )
        ),
        vec![]
    );
    assert_eq!(b.role(), Role::Passive);
    assert!(
        b.not_promoting(710)
            .contains(&NotPromoting::CandidateAhead { member: m("c") })
    );
    // ... would vote for c, then does.
    assert_eq!(
        b.step(711, recv("c", ask(true))),
        vec![send("c", pre_granted(3, 705, 1))]
    );
    assert_eq!(
        b.step(712, recv("c", ask(false))),
        vec![
            Action::PersistVote {
                epoch: Epoch(3),
                candidate: m("c")
            },
            send("c", granted(3, 705)),
        ]
    );
    assert_eq!(
        b.step(1000, tick()),
        vec![],
        "no candidacy of its own meanwhile"
    );

    // A third voter that saw the better candidate refuses the other one.
    let mut a = start(cfg("a"), passive(1, "a", p(1, 10)), 0);
    let better = Message::RequestVote {
        epoch: Epoch(2),
        candidate: m("c"),
        position: p(1, 10),
        priority: 5,
        sent_at: 700,
        transfer: false,
        pre: false,
    };
    a.step(700, recv("c", better));
    assert_eq!(
        a.step(701, recv("b", rv(3, "b", p(1, 10), 701))),
        vec![send(
            "b",
            refused(
                3,
                701,
                2,
                VoteRefusal::ActiveAlive {
                    active: Some(m("c"))
                }
            )
        )]
    );
    // A voter that refused the better candidate (its request came in an
    // old epoch) still remembers it and refuses the worse one.
    let mut s = passive(1, "a", p(1, 10));
    s.paused = true;
    let mut w = start(cfg("a"), s, 0);
    w.step(
        700,
        recv(
            "c",
            Message::RequestVote {
                epoch: Epoch(1),
                candidate: m("c"),
                position: p(1, 10),
                priority: 5,
                sent_at: 700,
                transfer: false,
                pre: false,
            },
        ),
    );
    assert_eq!(
        w.step(701, recv("b", rv(2, "b", p(1, 10), 701))),
        vec![send(
            "b",
            refused(2, 701, 1, VoteRefusal::BetterCandidate { member: m("c") })
        )],
        "a voter grants to the best candidate it has seen"
    );
}

#[test]
fn lease_loss_fences_and_a_majority_lifts_the_fence_again() {
    let mut a = active_a(p(1, 30));
    // b acknowledged 1/30 at start-up: a majority holds it.
    let hbs = |t| {
        heartbeats_full(
            1,
            t,
            p(1, 30),
            p(1, 30),
            p(1, 30),
            &[("b", p(1, 30)), ("a", p(1, 30))],
            &["b", "c"],
        )
    };
    assert_eq!(a.step(100, tick()), hbs(100));
    // Nobody answers: the lease (from the heartbeat sent at 0) ends at 500.
    a.step(200, tick());
    a.step(300, tick());
    a.step(400, tick());
    assert!(a.is_writable());
    assert_eq!(
        a.step(500, tick()),
        [
            vec![
                Action::Fence {
                    epoch: Epoch(1),
                    active: Some(m("a"))
                },
                Action::StopShipping,
                Action::RunHook(Hook::OnFence),
            ],
            hbs(500),
        ]
        .concat()
    );
    assert_eq!(a.role(), Role::Fenced);
    assert!(!a.is_writable());
    assert!(matches!(
        a.not_promoting(500).as_slice(),
        [NotPromoting::NoQuorum { unreachable, .. }] if unreachable.len() == 2
    ));
    // An old answer does not bring the lease back ...
    assert_eq!(a.step(510, recv("c", ack(1, 0, p(1, 30)))), vec![]);
    // ... a fresh one does.
    assert_eq!(
        a.step(520, recv("c", ack(1, 500, p(1, 30)))),
        vec![
            Action::RenewLease { until: 1000 },
            Action::Unfence { epoch: Epoch(1) },
            Action::RunHook(Hook::OnPromote),
            Action::StartShipping,
        ]
    );
}

#[test]
fn a_frozen_active_fences_before_handling_anything_else() {
    let mut a = active_a(p(1, 30));
    // Woken 10 s later by a late ack: the lease check comes first.
    let out = a.step(10_000, recv("b", ack(1, 0, p(1, 30))));
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                active: Some(m("a"))
            },
            Action::StopShipping,
            Action::RunHook(Hook::OnFence),
        ]
    );
}

#[test]
fn a_higher_epoch_makes_the_active_step_down_and_follow() {
    let mut a = active_a(p(1, 30));
    assert_eq!(
        a.step(50, recv("b", hb(2, 40, p(1, 28)))),
        vec![
            Action::Fence {
                epoch: Epoch(1),
                active: Some(m("a"))
            },
            Action::StopShipping,
            Action::RunHook(Hook::OnDemote),
            Action::Follow {
                epoch: Epoch(2),
                active: m("b")
            },
            send("b", ack(2, 40, p(1, 30))),
        ]
    );
    assert_eq!(a.role(), Role::Passive);
    assert_eq!(a.active(), Some(&m("b")));
    // And the old epoch is told off.
    assert_eq!(
        a.step(60, recv("c", hb(1, 55, p(1, 30)))),
        vec![send(
            "c",
            Message::Stale {
                term: Epoch(2),
                epoch: Epoch(2),
                active: Some(m("b"))
            }
        )]
    );
}

#[test]
fn a_stale_answer_makes_the_active_step_down() {
    let mut a = active_a(p(1, 30));
    let out = a.step(
        50,
        recv(
            "c",
            Message::Stale {
                term: Epoch(3),
                epoch: Epoch(1),
                active: Some(m("a")),
            },
        ),
    );
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                active: Some(m("a"))
            },
            Action::StopShipping,
            Action::RunHook(Hook::OnDemote),
        ]
    );
    assert_eq!(a.role(), Role::Fenced);
}

#[test]
fn switchover_waits_for_the_exact_head_then_hands_over() {
    let mut a = active_a(p(1, 30));
    assert_eq!(
        a.step(10, Event::Command(Command::Switchover { to: m("b") })),
        vec![Action::Fence {
            epoch: Epoch(1),
            active: Some(m("a"))
        }]
    );
    assert_eq!(a.role(), Role::Fenced);
    // A commit raced the fence: the head read after it is authoritative.
    assert_eq!(a.step(12, Event::FenceApplied { head: p(1, 31) }), vec![]);
    assert_eq!(
        a.step(100, tick()),
        heartbeats_full(
            1,
            100,
            p(1, 31),
            p(1, 30),
            p(1, 30),
            &[("b", p(1, 30)), ("a", p(1, 31))],
            &["b", "c"]
        )
    );
    assert_eq!(
        a.step(110, recv("b", ack(1, 100, p(1, 30)))),
        vec![Action::RenewLease { until: 600 }],
        "one change short: keep waiting (the lease is kept up)"
    );
    assert_eq!(
        a.step(120, recv("b", ack(1, 100, p(1, 31)))),
        vec![
            Action::PersistVote {
                epoch: Epoch(2),
                candidate: m("b")
            },
            send("b", Message::Handover { epoch: Epoch(2) }),
            Action::Notify(Notice::SwitchoverHandedOver {
                to: m("b"),
                epoch: Epoch(2)
            }),
            Action::StopShipping,
            Action::RunHook(Hook::OnDemote),
        ]
    );
    assert_eq!(a.role(), Role::Fenced);

    // The target stands at once, flagged as a transfer.
    let mut b = start(cfg("b"), passive(1, "a", p(1, 31)), 0);
    b.step(100, recv("a", hb(1, 100, p(1, 31))));
    let transfer = |to: &str| {
        send(
            to,
            Message::RequestVote {
                epoch: Epoch(2),
                candidate: m("b"),
                position: p(1, 31),
                priority: 0,
                sent_at: 125,
                transfer: true,
                pre: false,
            },
        )
    };
    assert_eq!(
        b.step(125, recv("a", Message::Handover { epoch: Epoch(2) })),
        vec![
            Action::PersistVote {
                epoch: Epoch(2),
                candidate: m("b")
            },
            transfer("a"),
            transfer("c"),
        ]
    );
    // c heard from a just now, but a transfer needs no silence.
    let mut c = start(cfg("c"), passive(1, "a", p(1, 31)), 0);
    c.step(100, recv("a", hb(1, 100, p(1, 31))));
    let Action::Send { msg, .. } = transfer("c") else {
        unreachable!()
    };
    assert_eq!(
        c.step(130, recv("b", msg)),
        vec![
            Action::PersistVote {
                epoch: Epoch(2),
                candidate: m("b")
            },
            send("b", granted(2, 125)),
        ]
    );
    // a's vote (already persisted with the handover) is just repeated.
    let Action::Send { msg, .. } = transfer("a") else {
        unreachable!()
    };
    assert_eq!(
        a.step(131, recv("b", msg)),
        vec![send("b", granted(2, 125))]
    );
    let out = b.step(135, recv("a", granted(2, 125)));
    assert_eq!(
        out[0],
        Action::PersistEpoch {
            epoch: Epoch(2),
            active: m("b"),
            start: p(1, 31),
            reason: PromotionReason::Switchover { from: m("a") },
        }
    );
    assert!(b.is_writable());
}

#[test]
fn switchover_that_does_not_catch_up_resumes_the_active() {
    let mut a = active_a(p(1, 30));
    a.step(10, Event::Command(Command::Switchover { to: m("b") }));
    // Commits raced the fence; b never gets past 1/30.
    a.step(12, Event::FenceApplied { head: p(1, 35) });
    let mut t = 100;
    while t < 10 + SWITCHOVER {
        a.step(t, tick());
        // c keeps the lease up; b stays behind.
        a.step(t + 1, recv("c", ack(1, t, p(1, 35))));
        a.step(t + 2, recv("b", ack(1, t, p(1, 30))));
        t += 100;
    }
    assert!(!a.is_writable());
    let out = a.step(10 + SWITCHOVER, tick());
    assert_eq!(
        out[..2],
        [
            Action::Unfence { epoch: Epoch(1) },
            Action::Notify(Notice::SwitchoverFailed {
                to: m("b"),
                reason: SwitchoverFailure::TimedOut {
                    head: Some(p(1, 35)),
                    acked: Some(p(1, 30))
                },
                resumed: true,
            }),
        ]
    );
    assert!(a.is_writable());
    assert_eq!(a.role(), Role::Active);
}

#[test]
fn switchover_is_refused_off_the_active_and_to_a_witness() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 1)), 0);
    assert_eq!(
        b.step(1, Event::Command(Command::Switchover { to: m("c") })),
        vec![Action::Notify(Notice::CommandRefused {
            command: Command::Switchover { to: m("c") },
            reason: CommandRefusal::NotActive {
                active: Some(m("a"))
            },
        })]
    );
    let voters = [("a", false), ("b", false), ("w", true)];
    let s = PersistedState {
        role: Role::Active,
        ..passive(1, "a", p(1, 1))
    };
    let (mut a, _) = Engine::new(cfg_with("a", &voters), s, 0).unwrap();
    a.step(0, tick());
    a.step(1, recv("w", ack(1, 0, p(9, 9))));
    assert!(a.is_writable());
    assert_eq!(
        a.step(2, Event::Command(Command::Switchover { to: m("w") })),
        vec![Action::Notify(Notice::CommandRefused {
            command: Command::Switchover { to: m("w") },
            reason: CommandRefusal::TargetIsWitness(m("w")),
        })]
    );
}

#[test]
fn pause_blocks_candidacy_until_resumed() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    let told = |paused| {
        vec![
            send("a", Message::SetPaused { paused }),
            send("c", Message::SetPaused { paused }),
        ]
    };
    assert_eq!(
        b.step(1, Event::Command(Command::Pause)),
        [vec![Action::PersistPaused { paused: true }], told(true)].concat()
    );
    // Pausing again persists nothing but tells the others again.
    assert_eq!(b.step(2, Event::Command(Command::Pause)), told(true));
    assert_eq!(b.step(5000, tick()), vec![]);
    assert_eq!(b.not_promoting(5000), vec![NotPromoting::Paused]);
    assert_eq!(
        b.step(5001, Event::Command(Command::Resume)),
        [vec![Action::PersistPaused { paused: false }], told(false)].concat()
    );
    let out = b.step(5002, tick());
    assert_eq!(out[0], send("a", prv(2, "b", p(1, 10), 5002)));
    // A paused member restarts paused.
    let mut s = passive(1, "a", p(1, 10));
    s.paused = true;
    let mut b = start(cfg("b"), s, 0);
    assert_eq!(b.step(5000, tick()), vec![]);
    assert!(b.paused());
}

#[test]
fn no_failover_and_auto_failover_off_never_stand_but_still_vote() {
    for (no_failover, auto, reason) in [
        (true, true, NotPromoting::NoFailover),
        (false, false, NotPromoting::AutoFailoverOff),
    ] {
        let mut c = cfg("b");
        c.no_failover = no_failover;
        c.auto_failover = auto;
        let mut b = start(c, passive(1, "a", p(1, 10)), 0);
        for t in (0..20_000).step_by(50) {
            assert_eq!(b.step(t, tick()), vec![]);
        }
        assert_eq!(b.not_promoting(20_000), vec![reason]);
        let out = b.step(20_001, recv("c", rv(2, "c", p(1, 10), 20_001)));
        assert_eq!(
            out[0],
            Action::PersistVote {
                epoch: Epoch(2),
                candidate: m("c")
            }
        );
    }
}

#[test]
fn a_lagging_passive_does_not_stand_but_force_promote_works() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(
        10,
        recv("a", hb_announced(1, 10, p(1, 510), p(1, 500), &[])),
    );
    assert_eq!(b.step(5000, tick()), vec![]);
    assert_eq!(
        b.not_promoting(5000),
        vec![NotPromoting::Lagging {
            behind: 490,
            max: 100
        }]
    );
    assert_eq!(
        b.step(5001, Event::Command(Command::ForcePromote)),
        [
            vec![
                Action::PersistVote {
                    epoch: Epoch(2),
                    candidate: m("b")
                },
                Action::PersistEpoch {
                    epoch: Epoch(2),
                    active: m("b"),
                    start: p(1, 10),
                    reason: PromotionReason::Forced,
                },
                Action::RenewLease {
                    until: 5001 + LEASE
                },
                Action::Unfence { epoch: Epoch(2) },
                Action::TakeOver { from: Some(m("a")) },
                Action::RunHook(Hook::OnPromote),
                Action::StartShipping,
            ],
            heartbeats(2, 5001, p(1, 10), &["a", "c"]),
        ]
        .concat()
    );
    // Forced: renewed on its own authority while nobody answers ...
    assert_eq!(
        b.step(5101, tick())[0],
        Action::RenewLease {
            until: 5101 + LEASE
        }
    );
    assert!(b.step(9000, tick()).contains(&Action::RenewLease {
        until: 9000 + LEASE
    }));
    assert!(b.is_writable());
    assert!(b.status(9000).forced);
    // ... until a majority follows it; then the normal rule applies again.
    b.step(9010, recv("c", ack(2, 9000, p(1, 10))));
    assert!(!b.status(9010).forced);
    b.step(9100, tick());
    let out = b.step(9500, tick());
    assert_eq!(
        out[0],
        Action::Fence {
            epoch: Epoch(2),
            active: Some(m("b"))
        }
    );
}

#[test]
fn a_witness_votes_acks_without_a_position_and_never_stands() {
    let voters = [("a", false), ("b", false), ("w", true)];
    let s = PersistedState {
        role: Role::Witness,
        ..passive(1, "a", Position::ZERO)
    };
    let mut w = start(cfg_with("w", &voters), s, 0);
    assert_eq!(
        w.step(
            10,
            recv(
                "a",
                Message::Heartbeat {
                    epoch: Epoch(1),
                    sent_at: 10,
                    head: p(1, 50),
                    commit: p(1, 40),
                    paused: false,
                    announced: p(1, 40),
                    positions: Vec::new(),
                }
            )
        ),
        vec![send(
            "a",
            Message::HeartbeatAck {
                epoch: Epoch(1),
                sent_at: 10,
                position: None
            }
        )]
    );
    assert_eq!(w.step(10_000, tick()), vec![]);
    assert_eq!(w.role(), Role::Witness);
    assert_eq!(w.not_promoting(10_000), vec![NotPromoting::Witness]);
    // Behind the commit point it was told of: refused.
    assert_eq!(
        w.step(10_001, recv("b", rv(2, "b", p(1, 39), 10_001))),
        vec![send(
            "b",
            refused(2, 10_001, 1, VoteRefusal::Behind { position: p(1, 40) })
        )]
    );
    // Behind the head but holding the commit point: granted (the tail past
    // the commit point was acknowledged by the active alone).
    assert_eq!(
        w.step(10_002, recv("b", rv(3, "b", p(1, 40), 10_002))),
        vec![
            Action::PersistVote {
                epoch: Epoch(3),
                candidate: m("b")
            },
            send("b", granted(3, 10_002)),
        ]
    );
    let refused_force = w.step(10_003, Event::Command(Command::ForcePromote));
    assert_eq!(
        refused_force,
        vec![Action::Notify(Notice::CommandRefused {
            command: Command::ForcePromote,
            reason: CommandRefusal::Witness
        })]
    );
}

#[test]
fn a_split_vote_retries_at_a_higher_epoch() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(700, tick());
    b.step(705, recv("c", pre_granted(2, 700, 1)));
    assert_eq!(b.term(), Epoch(2));
    // c stood at the same time and voted for itself.
    b.step(
        710,
        recv(
            "c",
            refused(2, 705, 2, VoteRefusal::AlreadyVoted { candidate: m("c") }),
        ),
    );
    // The silent voter is asked again every heartbeat interval, with the
    // original send time (the lease is never counted from a later one).
    assert_eq!(b.step(804, tick()), vec![]);
    assert_eq!(
        b.step(805, tick()),
        vec![send("a", rv(2, "b", p(1, 10), 705))]
    );
    let out = b.step(1305, Event::Tick { jitter: 0 });
    assert_eq!(out[0], send("a", prv(3, "b", p(1, 10), 1305)));
    let report = b.status(1305).last_election.expect("a report");
    assert_eq!(report.epoch, Epoch(2));
    assert!(!report.won);
    assert_eq!(report.unreachable, vec![m("a")]);
    assert_eq!(
        b.not_promoting(1305),
        vec![NotPromoting::NoQuorum {
            epoch: Epoch(2),
            granted: 1,
            needed: 2,
            unreachable: vec![m("a")],
        }],
        "standing again, it says why the last round was lost"
    );
}

#[test]
fn jitter_delays_the_election_deadline() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(5, Event::Tick { jitter: 250 });
    b.step(10, recv("a", hb(1, 10, p(1, 10))));
    assert_eq!(b.next_deadline(), 10 + FAILOVER + 250);
    assert_eq!(b.step(859, Event::Tick { jitter: 7 }), vec![]);
    assert!(!b.step(860, Event::Tick { jitter: 7 }).is_empty());
}

#[test]
fn messages_from_strangers_and_mismatched_candidates_are_ignored() {
    let mut c = start(cfg("c"), passive(1, "a", p(1, 10)), 0);
    assert_eq!(c.step(700, recv("zz", rv(2, "zz", p(9, 9), 700))), vec![]);
    assert_eq!(c.step(701, recv("b", rv(2, "a", p(9, 9), 700))), vec![]);
    assert_eq!(c.term(), Epoch(1));
}

#[test]
fn bad_configs_are_refused() {
    let mut c = cfg("a");
    c.lease_timeout = FAILOVER;
    assert!(matches!(
        Engine::new(c, passive(1, "a", p(0, 0)), 0),
        Err(ControlError::LeaseNotBelowFailover { .. })
    ));
    let c = cfg("zz");
    assert!(matches!(
        Engine::new(c, passive(1, "a", p(0, 0)), 0),
        Err(ControlError::NotAVoter(_))
    ));
}

#[test]
fn a_member_that_voted_past_its_own_epoch_does_not_reclaim_it() {
    let s = PersistedState {
        epoch: Epoch(1),
        active: Some(m("a")),
        role: Role::Active,
        vote: Some(Vote {
            epoch: Epoch(2),
            candidate: m("b"),
        }),
        paused: false,
        position: p(1, 5),
    };
    let (mut a, out) = Engine::new(cfg("a"), s, 0).unwrap();
    assert_eq!(
        out[0],
        Action::Fence {
            epoch: Epoch(1),
            active: Some(m("a"))
        }
    );
    assert_eq!(a.role(), Role::Fenced);
    assert_eq!(a.step(0, tick()), vec![], "no heartbeats: not the active");
}

#[test]
fn a_repeated_grant_renews_the_promise_not_to_stand() {
    // a handed over to b at 120 (its vote for b in epoch 2 travelled with
    // the handover); b's request only arrives 580 ms later.
    let mut a = active_a(p(1, 30));
    a.step(10, Event::Command(Command::Switchover { to: m("b") }));
    a.step(12, Event::FenceApplied { head: p(1, 30) });
    a.step(100, tick());
    a.step(120, recv("b", ack(1, 100, p(1, 30))));
    assert_eq!(a.role(), Role::Fenced);
    assert_eq!(
        a.step(700, recv("b", rv(2, "b", p(1, 30), 695))),
        vec![send("b", granted(2, 695))]
    );
    // b's lease counts from 695: a must not stand before 700 + failover.
    for t in (710..700 + FAILOVER).step_by(10) {
        assert_eq!(a.step(t, tick()), vec![], "at {t}");
    }
    // Afterwards it votes again (for a candidate ahead of it).
    assert_eq!(
        a.step(1301, recv("c", rv(3, "c", p(1, 31), 1301))),
        vec![
            Action::PersistVote {
                epoch: Epoch(3),
                candidate: m("c")
            },
            send("c", granted(3, 1301)),
        ]
    );
}

#[test]
fn a_two_member_cluster_without_witness_is_manual_and_keeps_writing_alone() {
    let pair = [("a", false), ("b", false)];
    let mut auto = cfg_with("a", &pair);
    assert!(matches!(
        Engine::new(auto.clone(), passive(1, "a", p(1, 1)), 0),
        Err(ControlError::TwoMembersNeedWitness)
    ));
    auto.auto_failover = false;
    let s = PersistedState {
        role: Role::Active,
        ..passive(1, "a", p(1, 1))
    };
    let (mut a, _) = Engine::new(auto, s, 0).unwrap();
    // After a restart it still waits for the peer to confirm its epoch ...
    assert_eq!(a.step(0, tick()), heartbeats(1, 0, p(1, 1), &["b"]));
    assert_eq!(a.step(2000, tick()), heartbeats(1, 2000, p(1, 1), &["b"]));
    assert!(!a.is_writable());
    assert_eq!(
        a.step(2001, recv("b", ack(1, 2000, p(1, 1)))),
        vec![
            Action::RenewLease { until: 2500 },
            Action::Unfence { epoch: Epoch(1) },
            Action::RunHook(Hook::OnPromote),
            Action::StartShipping,
        ]
    );
    // ... then keeps its lease on its own when the passive goes away.
    for t in (2100..10_000).step_by(100) {
        let out = a.step(t, tick());
        assert_eq!(out[0], Action::RenewLease { until: t + LEASE }, "at {t}");
    }
    assert!(a.is_writable());
    assert!(a.status(10_000).forced);
    // The passive never stands; promote --force is the way.
    let mut b_cfg = cfg_with("b", &pair);
    b_cfg.auto_failover = false;
    let mut b = start(b_cfg, passive(1, "a", p(1, 1)), 0);
    assert_eq!(b.step(10_000, tick()), vec![]);
    assert_eq!(b.not_promoting(10_000), vec![NotPromoting::AutoFailoverOff]);
}

#[test]
fn pause_spreads_by_message_and_by_the_actives_heartbeats() {
    // A member told by another adopts the flag and persists it, without
    // telling anyone further.
    let mut c = start(cfg("c"), passive(1, "a", p(1, 10)), 0);
    assert_eq!(
        c.step(1, recv("b", Message::SetPaused { paused: true })),
        vec![Action::PersistPaused { paused: true }]
    );
    assert!(c.paused());
    // The active's heartbeat carries its flag: a member that missed a
    // resume learns it from the next one.
    let mut resumed = hb(1, 5, p(1, 10));
    if let Message::Heartbeat { paused, .. } = &mut resumed {
        *paused = false;
    }
    let out = c.step(10, recv("a", resumed));
    assert!(
        out.contains(&Action::PersistPaused { paused: false }),
        "{out:?}"
    );
    assert!(!c.paused());
    // A heartbeat from an active of an older epoch changes nothing.
    let mut c = start(cfg("c"), passive(2, "b", p(2, 10)), 0);
    let mut stale = hb(1, 5, p(1, 10));
    if let Message::Heartbeat { paused, .. } = &mut stale {
        *paused = true;
    }
    let out = c.step(10, recv("a", stale));
    assert!(
        !out.contains(&Action::PersistPaused { paused: true }),
        "{out:?}"
    );
    assert!(!c.paused());
}

#[test]
fn a_voter_that_still_heard_the_active_is_asked_again() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(10, recv("a", hb(1, 5, p(1, 10))));
    let out = b.step(2000, tick());
    assert!(
        out.contains(&send("c", prv(2, "b", p(1, 10), 2000))),
        "{out:?}"
    );
    // c still heard a a moment ago: a temporary refusal.
    b.step(
        2001,
        recv(
            "c",
            Message::VoteReply {
                epoch: Epoch(2),
                sent_at: 2000,
                granted: false,
                term: Epoch(1),
                refusal: Some(VoteRefusal::ActiveAlive {
                    active: Some(m("a")),
                }),
                pre: true,
            },
        ),
    );
    // The next resend asks c again (and a, which never answered).
    let out = b.step(2000 + 200, tick());
    assert!(
        out.contains(&send("c", prv(2, "b", p(1, 10), 2000))),
        "{out:?}"
    );
}

#[test]
fn the_active_announces_the_head_a_majority_heard_of() {
    let mut a = active_a(p(1, 30));
    a.step(50, Event::Position { position: p(1, 40) });
    // Sent with head 1/40; only 1/30 (answered at start-up) is known to a
    // majority so far.
    assert_eq!(
        a.step(100, tick()),
        heartbeats_full(
            1,
            100,
            p(1, 40),
            p(1, 30),
            p(1, 30),
            &[("b", p(1, 30)), ("a", p(1, 40))],
            &["b", "c"]
        )
    );
    a.step(110, recv("c", ack(1, 100, p(1, 35))));
    a.step(150, Event::Position { position: p(1, 45) });
    // c answered the heartbeat that carried 1/40: with a, a majority.
    assert_eq!(
        a.step(200, tick()),
        heartbeats_full(
            1,
            200,
            p(1, 45),
            p(1, 35),
            p(1, 40),
            &[("b", p(1, 30)), ("c", p(1, 35)), ("a", p(1, 45))],
            &["b", "c"]
        )
    );
}

#[test]
fn a_voter_refuses_a_candidate_beyond_the_lag_gate_and_the_candidate_learns_why() {
    // c heard that a majority knew of 1/500; b, at 1/10, is 490 behind.
    let mut c = start(cfg("c"), passive(1, "a", p(1, 500)), 0);
    c.step(
        10,
        recv("a", hb_announced(1, 10, p(1, 500), p(1, 500), &[])),
    );
    let lagging = VoteRefusal::Lagging {
        announced: p(1, 500),
        max: 100,
    };
    assert_eq!(
        c.step(5000, recv("b", rv(2, "b", p(1, 10), 5000))),
        vec![send("b", refused(2, 5000, 1, lagging.clone()))],
        "the lag gate holds on the voter's side too"
    );
    // b never heard the announcement (it was cut off), stands, and learns
    // from the refusal.
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    let asked = (0..5000)
        .step_by(50)
        .flat_map(|t| b.step(t, tick()))
        .find_map(|a| match a {
            Action::Send {
                msg:
                    Message::RequestVote {
                        epoch,
                        sent_at,
                        pre,
                        ..
                    },
                ..
            } => Some((epoch, sent_at, pre)),
            _ => None,
        });
    let (epoch, sent_at, pre) = asked.expect("b stands: it knows of no newer head");
    assert!(
        b.not_promoting(5000).is_empty(),
        "{:?}",
        b.not_promoting(5000)
    );
    b.step(
        5001,
        recv("c", reply(epoch.0, sent_at, 1, Some(lagging), pre)),
    );
    assert!(
        b.not_promoting(5001).contains(&NotPromoting::Lagging {
            behind: 490,
            max: 100
        }),
        "{:?}",
        b.not_promoting(5001)
    );
}

#[test]
fn when_the_lag_gate_blocks_every_candidate_the_status_says_what_is_at_risk() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(
        10,
        recv(
            "a",
            hb_announced(
                1,
                10,
                p(1, 500),
                p(1, 480),
                &[("b", p(1, 10)), ("c", p(1, 20)), ("a", p(1, 500))],
            ),
        ),
    );
    // While a is heard from, only b's own lag.
    assert_eq!(
        b.not_promoting(100),
        vec![
            NotPromoting::Lagging {
                behind: 470,
                max: 100
            },
            NotPromoting::ActiveAlive {
                active: Some(m("a")),
                ms_ago: 90
            }
        ]
    );
    // a is gone: nobody is within the gate; c, the best, would lose 460.
    assert_eq!(b.step(5000, tick()), vec![]);
    assert_eq!(
        b.not_promoting(5000),
        vec![
            NotPromoting::Lagging {
                behind: 470,
                max: 100
            },
            NotPromoting::LagGateBlocksAll {
                announced: p(1, 480),
                best: m("c"),
                best_position: p(1, 20),
                changes_at_risk: 460,
                max: 100
            }
        ]
    );
    // With c within the gate, there is a candidate: nothing more to say.
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(
        10,
        recv(
            "a",
            hb_announced(1, 10, p(1, 500), p(1, 480), &[("c", p(1, 400))]),
        ),
    );
    b.step(5000, tick());
    assert_eq!(
        b.not_promoting(5000),
        vec![NotPromoting::Lagging {
            behind: 470,
            max: 100
        }]
    );
}

/// b, configured with a blocking `on_promote`, wins epoch 2: the hook runs
/// before the fence is lifted.
fn b_elected_with_a_blocking_hook() -> Engine {
    let mut c = cfg("b");
    c.promote_hook_blocks = true;
    let mut b = start(c, passive(1, "a", p(1, 10)), 0);
    b.step(10, recv("a", hb(1, 5, p(1, 10))));
    b.step(610, tick());
    b.step(615, recv("c", pre_granted(2, 610, 1)));
    assert_eq!(
        b.step(620, recv("c", granted(2, 615))),
        [
            vec![
                Action::PersistEpoch {
                    epoch: Epoch(2),
                    active: m("b"),
                    start: p(1, 10),
                    reason: PromotionReason::Failover {
                        previous: Some(m("a"))
                    },
                },
                Action::RenewLease { until: 615 + LEASE },
                Action::RunPromoteHookGate,
            ],
            heartbeats(2, 620, p(1, 10), &["a", "c"]),
        ]
        .concat(),
        "elected, the lease kept up, but no writes before on_promote succeeds"
    );
    assert_eq!(b.role(), Role::Fenced);
    assert!(!b.is_writable());
    b
}

#[test]
fn a_blocking_on_promote_that_succeeds_lifts_the_fence() {
    let mut b = b_elected_with_a_blocking_hook();
    assert_eq!(
        b.step(700, Event::PromoteHookDone { ok: true }),
        vec![
            Action::Unfence { epoch: Epoch(2) },
            Action::TakeOver { from: Some(m("a")) },
            Action::StartShipping,
        ],
        "the hook already ran: it is not run a second time"
    );
    assert!(b.is_writable());
    // Later lease renewals never run it again.
    let later: Vec<Action> = (750..1500)
        .step_by(50)
        .flat_map(|t| {
            let mut out = b.step(t, tick());
            out.extend(b.step(t + 1, recv("c", ack(2, t, p(1, 10)))));
            out
        })
        .collect();
    assert!(
        !later
            .iter()
            .any(|a| matches!(a, Action::RunPromoteHookGate | Action::RunHook(_))),
        "{later:?}"
    );
}

#[test]
fn a_blocking_on_promote_that_fails_steps_down_and_backs_off() {
    let mut b = b_elected_with_a_blocking_hook();
    assert_eq!(
        b.step(700, Event::PromoteHookDone { ok: false }),
        vec![Action::RunHook(Hook::OnDemote)],
        "never unfenced, nothing shipped: it only gives the epoch up"
    );
    assert!(!b.is_writable());
    assert_ne!(b.role(), Role::Active);
    let backoff = FAILOVER * crate::control::PROMOTE_HOOK_BACKOFF;
    assert!(
        b.not_promoting(1000)
            .contains(&NotPromoting::PromoteHookFailed {
                retry_in_ms: 700 + backoff - 1000
            }),
        "{:?}",
        b.not_promoting(1000)
    );
    // It stands for nothing during the back-off, and votes for c.
    for t in (700..700 + backoff).step_by(50) {
        let out = b.step(t, tick());
        assert!(
            !out.iter().any(|a| matches!(
                a,
                Action::Send {
                    msg: Message::RequestVote { .. },
                    ..
                }
            )),
            "stood at {t}: {out:?}"
        );
    }
    let at = 700 + backoff - 10;
    let out = b.step(at, recv("c", rv(3, "c", p(1, 10), at)));
    assert_eq!(
        out[0],
        Action::PersistVote {
            epoch: Epoch(3),
            candidate: m("c")
        }
    );
}

#[test]
fn a_passive_whose_applier_is_blocked_does_not_stand_but_still_votes() {
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    assert_eq!(b.step(1, Event::ApplyBlocked { blocked: true }), vec![]);
    // The active is gone for good: a blocked member stays put.
    for t in (50..20_000).step_by(50) {
        assert_eq!(b.step(t, tick()), vec![], "at {t} ms");
    }
    assert_eq!(b.not_promoting(20_000), vec![NotPromoting::ApplyBlocked]);
    let out = b.step(20_001, recv("c", rv(2, "c", p(1, 10), 20_001)));
    assert_eq!(
        out[0],
        Action::PersistVote {
            epoch: Epoch(2),
            candidate: m("c")
        }
    );
    // Unblocked (its tables match again), it stands like any passive.
    let mut b = start(cfg("b"), passive(1, "a", p(1, 10)), 0);
    b.step(1, Event::ApplyBlocked { blocked: true });
    assert_eq!(b.step(2, Event::ApplyBlocked { blocked: false }), vec![]);
    let out = b.step(5000, tick());
    assert_eq!(out[0], send("a", prv(2, "b", p(1, 10), 5000)));
}
