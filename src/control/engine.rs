//! The promotion controller's state machine: [`Engine::step`] takes the time
//! and one event, updates the in-memory state, and returns the actions the
//! driver must carry out in order.
//!
//! Owns: roles, epochs, votes, the lease decision, candidacy, switchover and
//! forced promotion.
//! Must never: do IO, read a clock, draw random numbers, or panic on anything
//! a peer sends (unknown senders and stale or duplicated messages are
//! ignored or answered, never trusted).

use super::actions::{Action, CommandRefusal, Hook, Notice, PromotionReason, SwitchoverFailure};
use super::election::{Candidacy, Rank, Seen};
use super::events::{Command, Event, Message, VoteRefusal};
use super::lease::{Acks, Announced};
use super::status::{ElectionReport, NotPromoting, PeerStatus, Status};
use super::{ControlError, EngineConfig, Millis, PersistedState};
use crate::model::{Epoch, MemberId, Position, Role};
use crate::store::Vote;
use std::collections::BTreeMap;

/// The controller of one member (or witness).
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    quorum: usize,
    witness: bool,

    // Mirror of the durable state: changed only together with the action
    // that persists it.
    epoch: Epoch,
    active: Option<MemberId>,
    vote: Option<Vote>,
    paused: bool,

    // Volatile state: lost on restart, rebuilt from messages.
    position: Position,
    /// The applier is blocked (see [`Event::ApplyBlocked`]).
    apply_blocked: bool,
    now: Millis,
    jitter: Millis,
    mode: Mode,
    /// When this member last heard from a live active of its epoch or later
    /// (or granted a vote, or started). Voters refuse candidates for
    /// `failover_timeout` after it: that wait is what the active's lease is
    /// shorter than.
    last_heard: Millis,
    heard_from: Option<MemberId>,
    /// When a follower may stand for election.
    election_at: Millis,
    /// Newest head announced by the active of the current epoch.
    head_seen: Position,
    /// Newest head an active said a majority had heard of (the failover lag
    /// gate's reference, here and when this member votes).
    announced_seen: Position,
    /// The data members' positions as the active last reported them.
    known_positions: BTreeMap<MemberId, Position>,
    /// Newest commit point announced by any active.
    commit_seen: Position,
    /// Newest epoch seen anywhere (vote requests and refusals included);
    /// the next candidacy goes above it.
    highest_term: Epoch,
    /// The best candidate that asked for a vote recently.
    best_seen: Option<Seen>,
    /// Backing off in favour of a better candidate until the given time.
    deferred: Option<(MemberId, Millis)>,
    last_election: Option<ElectionReport>,
    /// Last time any message arrived from each peer.
    peer_heard: BTreeMap<MemberId, Millis>,
    /// A follower whose database was last set to `fenced` (a former active)
    /// rather than `passive`.
    fenced_role: bool,
    /// A blocking `on_promote` failed here: no candidacy before this time.
    hook_failed_until: Option<Millis>,
}

#[derive(Debug)]
enum Mode {
    Follower,
    Candidate(Box<Candidacy>),
    /// The active of `epoch`, whether or not its database is writable now.
    Leader(Box<Leadership>),
}

#[derive(Debug)]
struct Leadership {
    acks: Acks,
    /// The database accepts application writes (fence lifted). The lease is
    /// still required on top.
    db_unfenced: bool,
    /// End of the lease in the engine's clock (0: none).
    lease_until: Millis,
    /// Promoted by an operator without a quorum: the lease is renewed on the
    /// active's own authority until a majority answers.
    forced: bool,
    /// Send time of the newest heartbeat (this member's own "answer").
    last_sent: Millis,
    next_heartbeat: Millis,
    shipping: bool,
    commit: Position,
    switchover: Option<Switchover>,
    /// Rows still to take over once the fence is first lifted.
    pending_takeover: Option<Option<MemberId>>,
    /// Which of the heads sent in heartbeats a majority has heard of.
    announced: Announced,
    /// With `promote_hook_blocks`: where `on_promote` stands this term.
    promote_hook: HookGate,
}

/// A blocking `on_promote` (see [`EngineConfig::promote_hook_blocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum HookGate {
    #[default]
    NotRun,
    Running,
    Passed,
}

#[derive(Debug)]
struct Switchover {
    to: MemberId,
    deadline: Millis,
    /// The head read after the fence took effect.
    head: Option<Position>,
}

impl Engine {
    /// Start the controller from its durable state at time `now`. The
    /// returned actions must run before anything else: a member that was the
    /// active fences itself at once, and regains writes only after a majority
    /// has answered its heartbeats in its epoch again.
    pub fn new(
        cfg: EngineConfig,
        persisted: PersistedState,
        now: Millis,
    ) -> Result<(Engine, Vec<Action>), ControlError> {
        cfg.validate()?;
        let witness = cfg.is_witness();
        if witness && persisted.role == Role::Active {
            return Err(ControlError::WitnessMismatch);
        }
        let quorum = cfg.quorum();
        let mut e = Engine {
            quorum,
            witness,
            epoch: persisted.epoch,
            active: persisted.active.clone(),
            vote: persisted.vote.clone(),
            paused: persisted.paused,
            position: persisted.position,
            apply_blocked: false,
            now,
            jitter: 0,
            mode: Mode::Follower,
            // A restarted voter may have answered the active just before it
            // went down, and has forgotten when: it waits a whole
            // failover_timeout before granting any vote, as if it had heard
            // from the active at start.
            last_heard: now,
            heard_from: None,
            election_at: now.saturating_add(cfg.failover_timeout),
            head_seen: persisted.position,
            announced_seen: persisted.position,
            known_positions: BTreeMap::new(),
            commit_seen: Position::ZERO,
            highest_term: persisted.epoch,
            best_seen: None,
            deferred: None,
            last_election: None,
            peer_heard: BTreeMap::new(),
            fenced_role: matches!(persisted.role, Role::Active | Role::Fenced),
            hook_failed_until: None,
            cfg,
        };
        e.highest_term = e.term();
        let mut out = Vec::new();
        let was_active_here = matches!(persisted.role, Role::Active | Role::Fenced)
            && persisted.active.as_ref() == Some(&e.cfg.me)
            && e.term() == e.epoch;
        if !witness && was_active_here {
            // Nobody else can be active in this epoch; a majority answering
            // heartbeats in it proves nobody has moved past it.
            e.mode = Mode::Leader(Box::new(Leadership {
                acks: Acks::default(),
                db_unfenced: false,
                lease_until: 0,
                forced: false,
                last_sent: now,
                next_heartbeat: now,
                shipping: false,
                commit: Position::ZERO,
                switchover: None,
                pending_takeover: None,
                announced: Announced::default(),
                promote_hook: HookGate::default(),
            }));
        }
        if persisted.role == Role::Active {
            out.push(Action::Fence {
                epoch: e.epoch,
                active: e.active.clone(),
            });
            out.push(Action::RunHook(Hook::OnFence));
        }
        Ok((e, out))
    }

    /// Feed one event at time `now`; returns the actions to carry out in
    /// order. Before anything else the active checks its lease, so an agent
    /// that was frozen fences itself first thing when it wakes up.
    pub fn step(&mut self, now: Millis, event: Event) -> Vec<Action> {
        // A clock that steps backwards must not extend anything.
        self.now = self.now.max(now);
        let mut out = Vec::new();
        self.check_lease(&mut out);
        match event {
            Event::Tick { jitter } => {
                self.jitter = jitter;
                self.on_tick(&mut out);
            }
            Event::Received { from, msg } => {
                if from == self.cfg.me || self.cfg.voter(&from).is_none() {
                    return out;
                }
                self.peer_heard.insert(from.clone(), self.now);
                self.on_message(from, msg, &mut out);
            }
            Event::Position { position } => self.on_position(position),
            Event::ApplyBlocked { blocked } => self.apply_blocked = blocked,
            Event::FenceApplied { head } => self.on_fence_applied(head, &mut out),
            Event::PromoteHookDone { ok } => self.on_promote_hook_done(ok, &mut out),
            Event::Command(c) => self.on_command(c, &mut out),
        }
        out
    }

    /// The earliest time the engine wants a [`Event::Tick`] (the driver may
    /// tick more often).
    pub fn next_deadline(&self) -> Millis {
        match &self.mode {
            Mode::Leader(l) => {
                let mut t = l.next_heartbeat;
                if l.db_unfenced && !l.forced {
                    t = t.min(l.lease_until);
                }
                if let Some(sw) = &l.switchover {
                    t = t.min(sw.deadline);
                }
                t
            }
            Mode::Candidate(c) => c.deadline,
            Mode::Follower => {
                let mut t = self.election_at;
                if let Some((_, until)) = &self.deferred {
                    t = t.max(*until);
                }
                t
            }
        }
    }

    /// The role as `/status` shows it.
    pub fn role(&self) -> Role {
        if self.witness {
            return Role::Witness;
        }
        match &self.mode {
            Mode::Leader(l) if l.db_unfenced => Role::Active,
            Mode::Leader(_) => Role::Fenced,
            Mode::Candidate(_) => Role::Candidate,
            Mode::Follower if self.fenced_role => Role::Fenced,
            Mode::Follower => Role::Passive,
        }
    }

    /// Epoch of the newest active this member knows.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The newest epoch this member knows or voted in.
    pub fn term(&self) -> Epoch {
        self.vote
            .as_ref()
            .map_or(self.epoch, |v| v.epoch.max(self.epoch))
    }

    pub fn active(&self) -> Option<&MemberId> {
        self.active.as_ref()
    }

    pub fn position(&self) -> Position {
        self.position
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// True while this member is the active of its epoch with its fence
    /// lifted and its lease (by the engine's clock) not yet over.
    pub fn is_writable(&self) -> bool {
        match &self.mode {
            Mode::Leader(l) => l.db_unfenced && (l.forced || self.now < l.lease_until),
            _ => false,
        }
    }

    /// A snapshot for `/status` at time `now`.
    pub fn status(&self, now: Millis) -> Status {
        let now = now.max(self.now);
        let leader = match &self.mode {
            Mode::Leader(l) => Some(l.as_ref()),
            _ => None,
        };
        let peers = self
            .cfg
            .voters
            .iter()
            .filter(|v| v.id != self.cfg.me)
            .map(|v| {
                let acked = leader
                    .and_then(|l| l.acks.get(&v.id))
                    .and_then(|a| a.position);
                PeerStatus {
                    member: v.id.clone(),
                    witness: v.witness,
                    last_message_ms: self.peer_heard.get(&v.id).map(|t| now.saturating_sub(*t)),
                    acked,
                    lag_changes: acked.map(|p| self.position.seq.saturating_sub(p.seq)),
                }
            })
            .collect();
        Status {
            member: self.cfg.me.clone(),
            role: self.role(),
            epoch: self.epoch,
            term: self.term(),
            active: self.active.clone(),
            position: self.position,
            head_seen: self.head_seen,
            commit: leader.map_or(self.commit_seen, |l| l.commit.max(self.commit_seen)),
            paused: self.paused,
            forced: leader.is_some_and(|l| l.forced),
            last_heartbeat_ms: match leader {
                Some(l) => Some(now.saturating_sub(l.last_sent)),
                None => Some(now.saturating_sub(self.last_heard)),
            },
            lease_remaining_ms: leader
                .filter(|l| l.lease_until > now)
                .map(|l| l.lease_until - now),
            switchover_to: leader.and_then(|l| l.switchover.as_ref().map(|s| s.to.clone())),
            not_promoting: self.not_promoting(now),
            last_election: self.last_election.clone(),
            peers,
        }
    }

    /// Why this member is not (about to become) the writable active.
    pub fn not_promoting(&self, now: Millis) -> Vec<NotPromoting> {
        let mut r = self.static_blockers();
        match &self.mode {
            Mode::Leader(l) if l.db_unfenced => return Vec::new(),
            Mode::Leader(l) => {
                // A fenced active waits for a majority to answer.
                let unreachable: Vec<MemberId> = self
                    .cfg
                    .voters
                    .iter()
                    .filter(|v| v.id != self.cfg.me)
                    .filter(|v| {
                        l.acks
                            .get(&v.id)
                            .is_none_or(|a| a.sent_at + self.cfg.lease_timeout <= now)
                    })
                    .map(|v| v.id.clone())
                    .collect();
                r.retain(|b| matches!(b, NotPromoting::Witness));
                r.push(NotPromoting::NoQuorum {
                    epoch: self.epoch,
                    granted: self.cfg.voters.len() - unreachable.len(),
                    needed: self.quorum,
                    unreachable,
                });
                return r;
            }
            Mode::Candidate(_) => {
                // Standing again after a lost round: say why the last one
                // was lost (the operator's "why is nobody active?").
                r.extend(self.recent_lost_round(now));
                return r;
            }
            Mode::Follower => {}
        }
        let since = now.saturating_sub(self.last_heard);
        if since < self.cfg.failover_timeout {
            r.push(NotPromoting::ActiveAlive {
                active: self.heard_from.clone(),
                ms_ago: since,
            });
        } else {
            r.extend(self.lag_gate_blocks_all());
        }
        if let Some((m, until)) = &self.deferred
            && now < *until
        {
            r.push(NotPromoting::CandidateAhead { member: m.clone() });
        }
        if let Some(until) = self.hook_failed_until
            && now < until
        {
            r.push(NotPromoting::PromoteHookFailed {
                retry_in_ms: until - now,
            });
        }
        r.extend(self.recent_lost_round(now));
        r
    }

    // ----- internals -------------------------------------------------------

    fn me(&self) -> MemberId {
        self.cfg.me.clone()
    }

    fn others(&self) -> Vec<MemberId> {
        self.cfg
            .voters
            .iter()
            .filter(|v| v.id != self.cfg.me)
            .map(|v| v.id.clone())
            .collect()
    }

    fn note_term(&mut self, t: Epoch) {
        self.highest_term = self.highest_term.max(t);
    }

    fn arm_election(&mut self) {
        self.election_at = self
            .last_heard
            .saturating_add(self.cfg.failover_timeout)
            .saturating_add(self.jitter);
    }

    /// Changes behind the newest head the active announced to a majority.
    fn lag(&self) -> u64 {
        self.announced_seen.seq.saturating_sub(self.position.seq)
    }

    /// While the active is gone: whether the lag gate holds back every data
    /// member this one knows the position of (the active that went away
    /// aside), and by how much the best of them is behind. `None` while any
    /// candidate's position is unknown or one is within the gate.
    fn lag_gate_blocks_all(&self) -> Option<NotPromoting> {
        if self.witness {
            return None;
        }
        let max = self.cfg.max_failover_lag;
        let mut best: Option<(MemberId, Position)> = None;
        for v in self.cfg.voters.iter().filter(|v| !v.witness) {
            if self.active.as_ref() == Some(&v.id) && v.id != self.cfg.me {
                continue;
            }
            let p = if v.id == self.cfg.me {
                self.position
            } else {
                *self.known_positions.get(&v.id)?
            };
            if best.as_ref().is_none_or(|(_, b)| p > *b) {
                best = Some((v.id.clone(), p));
            }
        }
        let (best, best_position) = best?;
        let changes_at_risk = self.announced_seen.seq.saturating_sub(best_position.seq);
        (changes_at_risk > max).then_some(NotPromoting::LagGateBlocksAll {
            announced: self.announced_seen,
            best,
            best_position,
            changes_at_risk,
            max,
        })
    }

    /// The last election round this member lost, as a reason, while it is
    /// recent (two failover timeouts).
    fn recent_lost_round(&self, now: Millis) -> Option<NotPromoting> {
        let e = self.last_election.as_ref()?;
        (!e.won && now.saturating_sub(e.at_ms) < self.cfg.failover_timeout.saturating_mul(2)).then(
            || NotPromoting::NoQuorum {
                epoch: e.epoch,
                granted: e.granted.len(),
                needed: self.quorum,
                unreachable: e.unreachable.clone(),
            },
        )
    }

    /// Reasons independent of timing that keep this member from standing.
    fn static_blockers(&self) -> Vec<NotPromoting> {
        if self.witness {
            return vec![NotPromoting::Witness];
        }
        let mut r = Vec::new();
        if !self.cfg.auto_failover {
            r.push(NotPromoting::AutoFailoverOff);
        }
        if self.paused {
            r.push(NotPromoting::Paused);
        }
        if self.cfg.no_failover {
            r.push(NotPromoting::NoFailover);
        }
        if self.apply_blocked {
            r.push(NotPromoting::ApplyBlocked);
        }
        let lag = self.lag();
        if lag > self.cfg.max_failover_lag {
            r.push(NotPromoting::Lagging {
                behind: lag,
                max: self.cfg.max_failover_lag,
            });
        }
        r
    }

    fn may_stand(&self) -> bool {
        self.static_blockers().is_empty()
            && self.hook_failed_until.is_none_or(|t| self.now >= t)
            && self
                .deferred
                .as_ref()
                .is_none_or(|(_, until)| self.now >= *until)
    }

    fn my_rank(&self) -> Rank {
        Rank {
            position: self.position,
            priority: self.cfg.priority,
            member: self.me(),
        }
    }

    fn check_lease(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let (epoch, active) = (self.epoch, self.active.clone());
        let Mode::Leader(l) = &mut self.mode else {
            return;
        };
        if l.forced || now < l.lease_until {
            return;
        }
        if l.db_unfenced {
            // No majority has answered within lease_timeout: the database's
            // own lease runs out about now; fence explicitly so the refusal
            // does not depend on the database's clock alone, and keep
            // heartbeating to regain the lease if the majority comes back
            // before anyone else is elected.
            l.db_unfenced = false;
            out.push(Action::Fence { epoch, active });
            if l.shipping {
                l.shipping = false;
                out.push(Action::StopShipping);
            }
            out.push(Action::RunHook(Hook::OnFence));
        } else if let Some(sw) = l.switchover.take() {
            if l.shipping {
                l.shipping = false;
                out.push(Action::StopShipping);
            }
            out.push(Action::RunHook(Hook::OnFence));
            out.push(Action::Notify(Notice::SwitchoverFailed {
                to: sw.to,
                reason: SwitchoverFailure::LeaseLost,
                resumed: false,
            }));
        }
    }

    fn on_tick(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        if let Some((_, until)) = &self.deferred
            && now >= *until
        {
            self.deferred = None;
        }
        match &self.mode {
            Mode::Leader(l) => {
                if l.switchover.as_ref().is_some_and(|sw| now >= sw.deadline) {
                    self.switchover_timed_out(out);
                }
                if let Mode::Leader(l) = &self.mode
                    && now >= l.next_heartbeat
                {
                    self.send_heartbeats(out);
                }
            }
            Mode::Candidate(c) if now < c.deadline => {
                if now >= c.next_resend {
                    self.resend_requests(out);
                }
            }
            Mode::Candidate(_) => {
                {
                    self.round_lost();
                    self.mode = Mode::Follower;
                    if self.may_stand() {
                        // A split vote (or silence) retries at a higher epoch.
                        self.start_candidacy(None, false, out);
                    } else {
                        self.arm_election();
                    }
                }
            }
            Mode::Follower => {
                if !self.witness && now >= self.election_at && self.may_stand() {
                    self.start_candidacy(None, false, out);
                }
            }
        }
    }

    fn send_heartbeats(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let (epoch, head) = (self.epoch, self.position);
        let others = self.others();
        let lease_timeout = self.cfg.lease_timeout;
        let Mode::Leader(l) = &mut self.mode else {
            return;
        };
        l.last_sent = now;
        l.next_heartbeat = now.saturating_add(self.cfg.heartbeat_interval);
        if l.forced {
            l.lease_until = now.saturating_add(lease_timeout);
            out.push(Action::RenewLease {
                until: l.lease_until,
            });
        }
        l.announced.sent(now, head);
        let msg = heartbeat(l, epoch, now, head, self.paused, &self.cfg.me);
        for to in others {
            out.push(Action::Send {
                to,
                msg: msg.clone(),
            });
        }
        // A single-voter cluster is its own majority.
        self.refresh_lease(out);
    }

    /// Recompute the lease from the answers: renew it, or regain the fence
    /// lift after a restart or a lost lease.
    fn refresh_lease(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let me = self.me();
        let epoch = self.epoch;
        let quorum = self.quorum;
        let lease_timeout = self.cfg.lease_timeout;
        let manual_pair = self.cfg.manual_pair();
        let Mode::Leader(l) = &mut self.mode else {
            return;
        };
        let Some(basis) = l.acks.basis(&me, l.last_sent, quorum) else {
            return;
        };
        l.announced.heard_by_majority(basis);
        let until = basis.saturating_add(lease_timeout);
        if until <= now {
            return;
        }
        if l.forced {
            if manual_pair {
                // Renewed on every heartbeat on its own authority.
                return;
            }
            let answered = l.acks.len() + 1 - usize::from(l.acks.get(&me).is_some());
            if answered >= quorum {
                // A majority follows the forced active: the normal rule again.
                l.forced = false;
            } else {
                return;
            }
        }
        if until > l.lease_until {
            l.lease_until = until;
            out.push(Action::RenewLease { until });
        }
        let hook_gate = self.cfg.promote_hook_blocks;
        if !l.db_unfenced
            && l.switchover.is_none()
            && hook_gate
            && l.promote_hook != HookGate::Passed
        {
            // `on_promote` must succeed before writes are allowed: run it
            // once, keep the lease up meanwhile, lift the fence on success.
            if l.promote_hook == HookGate::NotRun {
                l.promote_hook = HookGate::Running;
                out.push(Action::RunPromoteHookGate);
            }
        } else if !l.db_unfenced && l.switchover.is_none() {
            l.db_unfenced = true;
            out.push(Action::Unfence { epoch });
            if let Some(from) = l.pending_takeover.take() {
                out.push(Action::TakeOver { from });
            }
            if !hook_gate {
                out.push(Action::RunHook(Hook::OnPromote));
            }
            if !l.shipping {
                l.shipping = true;
                out.push(Action::StartShipping);
            }
            if manual_pair {
                // Two members and no witness: only an operator can promote
                // the other one (`auto_failover` is off on both, the config
                // refuses anything else), so once the peer has confirmed this
                // epoch the active keeps writing when the passive goes away.
                l.forced = true;
            }
        }
        // This member's own lease counts as hearing from a live active.
        self.last_heard = now;
        self.heard_from = Some(me);
    }

    fn on_position(&mut self, position: Position) {
        // Not a max: a rejoining former active restores its divergent tail and
        // its applied position moves back to the new epoch's history.
        self.position = position;
        let me = self.me();
        let (epoch, quorum) = (self.epoch, self.quorum);
        if let Mode::Leader(l) = &mut self.mode
            && let Some(c) = l.acks.commit(&me, position, epoch, quorum)
        {
            l.commit = l.commit.max(c);
        }
    }

    fn on_promote_hook_done(&mut self, ok: bool, out: &mut Vec<Action>) {
        let Mode::Leader(l) = &mut self.mode else {
            return;
        };
        if l.promote_hook != HookGate::Running {
            return;
        }
        if ok {
            l.promote_hook = HookGate::Passed;
            // Lifts the fence now if the lease still holds (else at the
            // next answers).
            self.refresh_lease(out);
            return;
        }
        // Not this member: give the epoch up and leave the others time to
        // elect one whose hook works.
        let until = self.now.saturating_add(
            self.cfg
                .failover_timeout
                .saturating_mul(super::PROMOTE_HOOK_BACKOFF),
        );
        self.hook_failed_until = Some(until);
        self.step_down(out);
        self.last_heard = self.now;
        self.arm_election();
        self.election_at = self.election_at.max(until);
    }

    fn on_fence_applied(&mut self, head: Position, out: &mut Vec<Action>) {
        if let Mode::Leader(l) = &mut self.mode
            && let Some(sw) = &mut l.switchover
            && sw.head.is_none()
        {
            sw.head = Some(head);
            self.position = self.position.max(head);
            self.switchover_progress(out);
        }
    }

    fn on_message(&mut self, from: MemberId, msg: Message, out: &mut Vec<Action>) {
        match msg {
            Message::Heartbeat {
                epoch,
                sent_at,
                head,
                commit,
                paused,
                announced,
                positions,
            } => {
                let current = epoch >= self.term();
                self.on_heartbeat(from.clone(), epoch, sent_at, head, commit, out);
                if current && self.active.as_ref() == Some(&from) {
                    self.set_paused(paused, out);
                    // Positions order by epoch first: a newer epoch's
                    // announcement replaces an older epoch's.
                    self.announced_seen = self.announced_seen.max(announced);
                    for (m, p) in positions {
                        if self.cfg.voter(&m).is_some_and(|v| !v.witness) {
                            self.known_positions.insert(m, p);
                        }
                    }
                }
            }
            Message::SetPaused { paused } => self.set_paused(paused, out),
            Message::HeartbeatAck {
                epoch,
                sent_at,
                position,
            } => self.on_ack(from, epoch, sent_at, position, out),
            Message::Stale {
                term,
                epoch,
                active,
            } => self.on_stale(term, epoch, active, out),
            Message::RequestVote {
                epoch,
                candidate,
                position,
                priority,
                sent_at,
                transfer,
                pre,
            } => {
                if candidate != from {
                    return;
                }
                let rank = Rank {
                    position,
                    priority,
                    member: from,
                };
                self.on_request_vote(rank, epoch, sent_at, transfer, pre, out);
            }
            Message::VoteReply {
                epoch,
                sent_at,
                granted,
                term,
                refusal,
                pre,
            } => self.on_vote_reply(from, epoch, sent_at, granted, term, refusal, pre, out),
            Message::Handover { epoch } => self.on_handover(from, epoch, out),
        }
    }

    fn on_heartbeat(
        &mut self,
        from: MemberId,
        epoch: Epoch,
        sent_at: Millis,
        head: Position,
        commit: Position,
        out: &mut Vec<Action>,
    ) {
        if self.cfg.voter(&from).is_some_and(|v| v.witness) {
            return;
        }
        if epoch < self.term() {
            // Tell the old active it has been superseded.
            out.push(Action::Send {
                to: from,
                msg: Message::Stale {
                    term: self.term(),
                    epoch: self.epoch,
                    active: self.active.clone(),
                },
            });
            return;
        }
        match &self.mode {
            Mode::Leader(_) if epoch == self.epoch => {
                // Two actives in one epoch cannot be elected; a message
                // claiming it is not trusted.
                return;
            }
            Mode::Leader(_) => self.step_down(out),
            Mode::Candidate(_) => {
                // Someone won this epoch or a later one.
                self.round_lost();
                self.mode = Mode::Follower;
            }
            Mode::Follower => {}
        }
        if self.epoch != epoch || self.active.as_ref() != Some(&from) {
            self.epoch = epoch;
            self.active = Some(from.clone());
            self.head_seen = head;
            self.fenced_role = false;
            out.push(Action::Follow {
                epoch,
                active: from.clone(),
            });
        }
        self.note_term(epoch);
        self.last_heard = self.now;
        self.heard_from = Some(from.clone());
        self.head_seen = self.head_seen.max(head);
        self.commit_seen = self.commit_seen.max(commit);
        self.deferred = None;
        self.arm_election();
        out.push(Action::Send {
            to: from,
            msg: Message::HeartbeatAck {
                epoch,
                sent_at,
                position: (!self.witness).then_some(self.position),
            },
        });
    }

    fn on_ack(
        &mut self,
        from: MemberId,
        epoch: Epoch,
        sent_at: Millis,
        position: Option<Position>,
        out: &mut Vec<Action>,
    ) {
        if epoch != self.epoch {
            return;
        }
        let me = self.me();
        let (own, quorum) = (self.position, self.quorum);
        let witness = self.cfg.voter(&from).is_some_and(|v| v.witness);
        let Mode::Leader(l) = &mut self.mode else {
            return;
        };
        // A witness holds no data: whatever it sends, it acknowledges none.
        l.acks
            .record(&from, sent_at, if witness { None } else { position });
        if let Some(c) = l.acks.commit(&me, own, epoch, quorum) {
            l.commit = l.commit.max(c);
        }
        self.refresh_lease(out);
        self.switchover_progress(out);
    }

    fn on_stale(
        &mut self,
        term: Epoch,
        epoch: Epoch,
        active: Option<MemberId>,
        out: &mut Vec<Action>,
    ) {
        self.note_term(term);
        if term <= self.term() {
            return;
        }
        if let Mode::Leader(_) = &self.mode {
            self.step_down(out);
            self.last_heard = self.now;
            if epoch > self.epoch {
                self.heard_from = active;
            }
            self.arm_election();
        }
    }

    /// Leave the active role because a newer epoch exists.
    fn step_down(&mut self, out: &mut Vec<Action>) {
        let Mode::Leader(l) = std::mem::replace(&mut self.mode, Mode::Follower) else {
            return;
        };
        if l.db_unfenced {
            out.push(Action::Fence {
                epoch: self.epoch,
                active: self.active.clone(),
            });
        }
        if l.shipping {
            out.push(Action::StopShipping);
        }
        out.push(Action::RunHook(Hook::OnDemote));
        if let Some(sw) = l.switchover {
            out.push(Action::Notify(Notice::SwitchoverFailed {
                to: sw.to,
                reason: SwitchoverFailure::Superseded(self.highest_term),
                resumed: false,
            }));
        }
        self.fenced_role = true;
    }

    fn refuse(
        &self,
        to: MemberId,
        epoch: Epoch,
        sent_at: Millis,
        pre: bool,
        r: VoteRefusal,
    ) -> Action {
        Action::Send {
            to,
            msg: Message::VoteReply {
                epoch,
                sent_at,
                granted: false,
                term: self.term(),
                refusal: Some(r),
                pre,
            },
        }
    }

    fn on_request_vote(
        &mut self,
        rank: Rank,
        epoch: Epoch,
        sent_at: Millis,
        transfer: bool,
        pre: bool,
        out: &mut Vec<Action>,
    ) {
        let now = self.now;
        let from = rank.member.clone();
        self.note_term(epoch);
        // Remember the best candidate heard from recently.
        let keep = self.best_seen.as_ref().is_some_and(|b| {
            now.saturating_sub(b.at) < self.cfg.failover_timeout
                && b.rank.member != from
                && b.rank.beats(&rank)
        });
        if !keep {
            self.best_seen = Some(Seen {
                rank: rank.clone(),
                at: now,
            });
        }

        // A repeated request (duplicated on the wire, or after a switchover
        // handover that carried this vote): the vote is already durable.
        if self
            .vote
            .as_ref()
            .is_some_and(|v| v.epoch == epoch && v.candidate == from)
        {
            if pre {
                self.grant_reply(from, epoch, sent_at, true, out);
            } else {
                self.granted(from, epoch, sent_at, out);
            }
            return;
        }
        if epoch <= self.term() {
            let r = match &self.vote {
                Some(v) if v.epoch == epoch => VoteRefusal::AlreadyVoted {
                    candidate: v.candidate.clone(),
                },
                _ => VoteRefusal::StaleEpoch,
            };
            out.push(self.refuse(from, epoch, sent_at, pre, r));
            return;
        }
        if let Mode::Leader(l) = &self.mode {
            if l.db_unfenced || l.switchover.is_some() {
                out.push(self.refuse(from, epoch, sent_at, pre, VoteRefusal::IAmActive));
                return;
            }
            // A fenced active (lost lease, or restarted) cannot write: it
            // may vote for a successor at once.
        } else if !transfer
            && now.saturating_sub(self.last_heard) < self.cfg.failover_timeout
            // The member this voter last backed may ask again at a higher
            // epoch: its leases never overlap its own.
            && self.heard_from.as_ref() != Some(&from)
        {
            let r = VoteRefusal::ActiveAlive {
                active: self.heard_from.clone(),
            };
            out.push(self.refuse(from, epoch, sent_at, pre, r));
            return;
        }
        let i_am_better = !transfer
            && !matches!(self.mode, Mode::Leader(_))
            && self.may_stand()
            && self.my_rank().beats(&rank);
        let floor = if self.witness {
            self.commit_seen
        } else {
            self.position.max(self.commit_seen)
        };
        if rank.position < floor && !i_am_better {
            out.push(self.refuse(
                from,
                epoch,
                sent_at,
                pre,
                VoteRefusal::Behind { position: floor },
            ));
            return;
        }
        // The lag gate, judged by what this voter knows a majority heard of:
        // any majority that could elect the candidate includes a voter that
        // heard of the newest announced head, so a candidate that lost more
        // than the gate allows cannot win. A handover carries the exact head.
        let max = self.cfg.max_failover_lag;
        if !transfer && rank.position.seq.saturating_add(max) < self.announced_seen.seq {
            let r = VoteRefusal::Lagging {
                announced: self.announced_seen,
                max,
            };
            out.push(self.refuse(from, epoch, sent_at, pre, r));
            return;
        }
        if !transfer {
            if let Some(b) = &self.best_seen
                && b.rank.member != from
                && b.rank.beats(&rank)
            {
                let r = VoteRefusal::BetterCandidate {
                    member: b.rank.member.clone(),
                };
                out.push(self.refuse(from, epoch, sent_at, pre, r));
                return;
            }
            if i_am_better {
                let r = VoteRefusal::BetterCandidate { member: self.me() };
                out.push(self.refuse(from, epoch, sent_at, pre, r));
                if !matches!(self.mode, Mode::Candidate(_)) {
                    // The active is gone (this voter has not heard from it
                    // either) and this member would be preferred: stand now.
                    self.start_candidacy(None, false, out);
                }
                return;
            }
        }
        if pre {
            // Would grant; nothing changes until the real request.
            self.grant_reply(from, epoch, sent_at, true, out);
            return;
        }

        // Grant: durably first, then the reply.
        self.vote = Some(Vote {
            epoch,
            candidate: from.clone(),
        });
        out.push(Action::PersistVote {
            epoch,
            candidate: from.clone(),
        });
        self.granted(from, epoch, sent_at, out);
    }

    /// After a (durable) grant, fresh or repeated. The candidate's first
    /// lease is counted from the request this answers, so from now on, for
    /// failover_timeout, this member treats the candidate as a live active:
    /// it grants nobody else and does not stand itself (a pre-vote round of
    /// its own is abandoned). Forgetting this on a *repeated* grant let a
    /// former active that had handed over stand again while its successor's
    /// lease, backed by that very grant, still ran (found by the simulator).
    fn granted(&mut self, from: MemberId, epoch: Epoch, sent_at: Millis, out: &mut Vec<Action>) {
        match &self.mode {
            Mode::Leader(_) => self.step_down(out),
            Mode::Candidate(_) => {
                self.round_lost();
                self.mode = Mode::Follower;
            }
            Mode::Follower => {}
        }
        self.last_heard = self.now;
        self.heard_from = Some(from.clone());
        self.deferred = None;
        self.arm_election();
        self.grant_reply(from, epoch, sent_at, false, out);
    }

    fn grant_reply(
        &self,
        to: MemberId,
        epoch: Epoch,
        sent_at: Millis,
        pre: bool,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Send {
            to,
            msg: Message::VoteReply {
                epoch,
                sent_at,
                granted: true,
                term: self.term(),
                refusal: None,
                pre,
            },
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vote_reply(
        &mut self,
        from: MemberId,
        epoch: Epoch,
        sent_at: Millis,
        granted: bool,
        term: Epoch,
        refusal: Option<VoteRefusal>,
        pre: bool,
        out: &mut Vec<Action>,
    ) {
        self.note_term(term);
        let quorum = self.quorum;
        let Mode::Candidate(c) = &mut self.mode else {
            return;
        };
        if c.epoch != epoch || c.pre != pre {
            return;
        }
        if granted {
            c.refusals.remove(&from);
            c.grants.record(&from, sent_at, None);
            if c.grants.len() >= quorum {
                if pre {
                    let transfer = c.transfer;
                    self.run_election(None, transfer, out);
                } else {
                    self.promote(out);
                }
            }
            return;
        }
        let Some(r) = refusal else {
            return;
        };
        let better = match &r {
            VoteRefusal::BetterCandidate { member } if *member != self.cfg.me => {
                Some(member.clone())
            }
            _ => None,
        };
        if let VoteRefusal::Lagging { announced, .. } = &r {
            // The voter knows of a newer announced head: this member's own
            // gate now holds it back too (and says so in its status).
            self.announced_seen = self.announced_seen.max(*announced);
        }
        if c.grants.get(&from).is_none() {
            c.refusals.insert(from, r);
        }
        if let Some(member) = better {
            // Back off: let the better candidate win without a split vote.
            self.round_lost();
            self.mode = Mode::Follower;
            let until = self
                .now
                .saturating_add(self.cfg.failover_timeout)
                .saturating_add(self.jitter);
            self.deferred = Some((member, until));
            self.election_at = self.election_at.max(until);
        }
    }

    fn on_handover(&mut self, from: MemberId, epoch: Epoch, out: &mut Vec<Action>) {
        if self.witness
            || !matches!(self.mode, Mode::Follower)
            || self.active.as_ref() != Some(&from)
            || epoch <= self.term()
        {
            return;
        }
        self.start_candidacy(Some(epoch), true, out);
    }

    /// Stand for election: a pre-vote round first (nothing persisted), the
    /// real election once a majority would grant. A switchover target skips
    /// the pre-vote: the old active has already stepped aside.
    fn start_candidacy(&mut self, at: Option<Epoch>, transfer: bool, out: &mut Vec<Action>) {
        if transfer || self.quorum <= 1 {
            self.run_election(at, transfer, out);
            return;
        }
        let epoch = Epoch(self.term().max(self.highest_term).0 + 1);
        self.begin_round(epoch, false, true, out);
    }

    fn run_election(&mut self, at: Option<Epoch>, transfer: bool, out: &mut Vec<Action>) {
        let me = self.me();
        let epoch = at.unwrap_or(Epoch(self.term().max(self.highest_term).0 + 1));
        self.note_term(epoch);
        self.vote = Some(Vote {
            epoch,
            candidate: me.clone(),
        });
        out.push(Action::PersistVote {
            epoch,
            candidate: me,
        });
        self.begin_round(epoch, transfer, false, out);
    }

    fn begin_round(&mut self, epoch: Epoch, transfer: bool, pre: bool, out: &mut Vec<Action>) {
        let now = self.now;
        let me = self.me();
        let mut grants = Acks::default();
        grants.record(&me, now, None);
        let previous = self.active.clone().filter(|a| *a != me);
        self.mode = Mode::Candidate(Box::new(Candidacy {
            epoch,
            started: now,
            deadline: now
                .saturating_add(self.cfg.failover_timeout)
                .saturating_add(self.jitter),
            grants,
            refusals: BTreeMap::new(),
            transfer,
            pre,
            previous,
            next_resend: now.saturating_add(self.cfg.heartbeat_interval),
        }));
        if self.quorum <= 1 {
            self.promote(out);
            return;
        }
        for to in self.others() {
            out.push(Action::Send {
                to,
                msg: Message::RequestVote {
                    epoch,
                    candidate: me.clone(),
                    position: self.position,
                    priority: self.cfg.priority,
                    sent_at: now,
                    transfer,
                    pre,
                },
            });
        }
    }

    /// Ask again the voters that have not answered: a lost request must not
    /// cost a whole round. The original `sent_at` is kept, so a grant never
    /// backs a lease longer than the first request could.
    fn resend_requests(&mut self, out: &mut Vec<Action>) {
        let me = self.me();
        let (position, priority) = (self.position, self.cfg.priority);
        let others = self.others();
        let next = self.now.saturating_add(self.cfg.heartbeat_interval);
        let Mode::Candidate(c) = &mut self.mode else {
            return;
        };
        c.next_resend = next;
        for to in others {
            // A voter that still heard the active when it answered may have
            // stopped hearing it since: ask it again (its window is
            // failover_timeout from its own last heartbeat, a few ms off
            // ours). Every other refusal stands for the whole round.
            let temporary = matches!(c.refusals.get(&to), Some(VoteRefusal::ActiveAlive { .. }));
            if c.grants.get(&to).is_some() || (c.refusals.contains_key(&to) && !temporary) {
                continue;
            }
            out.push(Action::Send {
                to,
                msg: Message::RequestVote {
                    epoch: c.epoch,
                    candidate: me.clone(),
                    position,
                    priority,
                    sent_at: c.started,
                    transfer: c.transfer,
                    pre: c.pre,
                },
            });
        }
    }

    /// Record how the current round ended (it did not win).
    fn round_lost(&mut self) {
        if let Mode::Candidate(c) = &self.mode {
            self.last_election = Some(self.report(c, false));
        }
    }

    fn report(&self, c: &Candidacy, won: bool) -> ElectionReport {
        let mut granted = Vec::new();
        let mut unreachable = Vec::new();
        for v in &self.cfg.voters {
            if c.grants.get(&v.id).is_some() {
                granted.push(v.id.clone());
            } else if !c.refusals.contains_key(&v.id) {
                unreachable.push(v.id.clone());
            }
        }
        ElectionReport {
            epoch: c.epoch,
            at_ms: self.now,
            won,
            granted,
            refused: c
                .refusals
                .iter()
                .map(|(m, r)| (m.clone(), r.clone()))
                .collect(),
            unreachable,
        }
    }

    /// A majority granted: become the active of the candidacy's epoch.
    fn promote(&mut self, out: &mut Vec<Action>) {
        let Mode::Candidate(c) = std::mem::replace(&mut self.mode, Mode::Follower) else {
            return;
        };
        self.last_election = Some(self.report(&c, true));
        let me = self.me();
        let reason = match (&c.previous, c.transfer) {
            (Some(from), true) => PromotionReason::Switchover { from: from.clone() },
            (previous, _) => PromotionReason::Failover {
                previous: previous.clone(),
            },
        };
        self.epoch = c.epoch;
        self.active = Some(me.clone());
        self.fenced_role = false;
        self.deferred = None;
        out.push(Action::PersistEpoch {
            epoch: c.epoch,
            active: me.clone(),
            start: self.position,
            reason,
        });
        self.mode = Mode::Leader(Box::new(Leadership {
            acks: c.grants,
            db_unfenced: false,
            lease_until: 0,
            forced: false,
            last_sent: c.started,
            next_heartbeat: self.now,
            shipping: false,
            commit: self.commit_seen,
            switchover: None,
            pending_takeover: Some(c.previous),
            announced: Announced::default(),
            promote_hook: HookGate::default(),
        }));
        // The grants are the first lease: each voter answered the request sent
        // at `started` and will not vote again for failover_timeout. If the
        // round took so long that it is already over, the member stays fenced
        // and lifts the fence once its heartbeats are answered.
        self.refresh_lease(out);
        self.send_heartbeats(out);
    }

    fn on_command(&mut self, c: Command, out: &mut Vec<Action>) {
        match c {
            Command::Pause | Command::Resume => {
                let paused = c == Command::Pause;
                self.set_paused(paused, out);
                // Cluster-wide: tell every other voter (the active's
                // heartbeats carry the flag to whoever misses this).
                for to in self.others() {
                    out.push(Action::Send {
                        to,
                        msg: Message::SetPaused { paused },
                    });
                }
            }
            Command::ForcePromote => self.force_promote(out),
            Command::Switchover { to } => self.start_switchover(to, out),
        }
    }

    fn set_paused(&mut self, paused: bool, out: &mut Vec<Action>) {
        if self.paused != paused {
            self.paused = paused;
            out.push(Action::PersistPaused { paused });
        }
    }

    fn refused(c: Command, reason: CommandRefusal) -> Action {
        Action::Notify(Notice::CommandRefused { command: c, reason })
    }

    fn force_promote(&mut self, out: &mut Vec<Action>) {
        if self.witness {
            out.push(Self::refused(
                Command::ForcePromote,
                CommandRefusal::Witness,
            ));
            return;
        }
        if let Mode::Leader(l) = &self.mode
            && (l.db_unfenced || l.switchover.is_some())
        {
            out.push(Self::refused(
                Command::ForcePromote,
                CommandRefusal::AlreadyActive,
            ));
            return;
        }
        // The old role ends here (a fenced active's database is fenced
        // already; its hooks ran when it was fenced).
        if let Mode::Leader(l) = &self.mode
            && l.shipping
        {
            out.push(Action::StopShipping);
        }
        let me = self.me();
        let now = self.now;
        let epoch = Epoch(self.term().max(self.highest_term).0 + 1);
        let previous = self.active.clone().filter(|a| *a != me);
        self.note_term(epoch);
        self.vote = Some(Vote {
            epoch,
            candidate: me.clone(),
        });
        out.push(Action::PersistVote {
            epoch,
            candidate: me.clone(),
        });
        out.push(Action::PersistEpoch {
            epoch,
            active: me.clone(),
            start: self.position,
            reason: PromotionReason::Forced,
        });
        self.epoch = epoch;
        self.active = Some(me);
        self.fenced_role = false;
        self.deferred = None;
        let until = now.saturating_add(self.cfg.lease_timeout);
        out.push(Action::RenewLease { until });
        out.push(Action::Unfence { epoch });
        out.push(Action::TakeOver {
            from: previous.clone(),
        });
        out.push(Action::RunHook(Hook::OnPromote));
        out.push(Action::StartShipping);
        self.mode = Mode::Leader(Box::new(Leadership {
            acks: Acks::default(),
            db_unfenced: true,
            lease_until: until,
            forced: true,
            last_sent: now,
            next_heartbeat: now,
            shipping: true,
            commit: self.commit_seen,
            switchover: None,
            pending_takeover: None,
            announced: Announced::default(),
            promote_hook: HookGate::default(),
        }));
        // The RenewLease above already covers this heartbeat round.
        let others = self.others();
        if let Mode::Leader(l) = &mut self.mode {
            l.next_heartbeat = now.saturating_add(self.cfg.heartbeat_interval);
            l.announced.sent(now, self.position);
            let msg = heartbeat(l, epoch, now, self.position, self.paused, &self.cfg.me);
            for to in others {
                out.push(Action::Send {
                    to,
                    msg: msg.clone(),
                });
            }
        }
    }

    fn start_switchover(&mut self, to: MemberId, out: &mut Vec<Action>) {
        let cmd = Command::Switchover { to: to.clone() };
        let refusal = match (&self.mode, self.cfg.voter(&to)) {
            (Mode::Leader(l), _) if l.switchover.is_some() => {
                let t = l.switchover.as_ref().map(|s| s.to.clone());
                Some(CommandRefusal::SwitchoverInProgress(
                    t.unwrap_or(to.clone()),
                ))
            }
            (Mode::Leader(l), _) if !l.db_unfenced => Some(CommandRefusal::NotActive {
                active: self.active.clone(),
            }),
            (Mode::Leader(_), None) => Some(CommandRefusal::UnknownMember(to.clone())),
            (Mode::Leader(_), Some(v)) if v.witness => {
                Some(CommandRefusal::TargetIsWitness(to.clone()))
            }
            (Mode::Leader(_), Some(_)) if to == self.cfg.me => Some(CommandRefusal::TargetIsSelf),
            (Mode::Leader(_), Some(_)) => None,
            _ => Some(CommandRefusal::NotActive {
                active: self.active.clone(),
            }),
        };
        if let Some(reason) = refusal {
            out.push(Self::refused(cmd, reason));
            return;
        }
        let deadline = self.now.saturating_add(self.cfg.switchover_timeout);
        let (epoch, active) = (self.epoch, self.active.clone());
        if let Mode::Leader(l) = &mut self.mode {
            // Fence first: from here the head cannot move, so "the target has
            // the head" means "the target has every change". Shipping goes on.
            l.db_unfenced = false;
            l.switchover = Some(Switchover {
                to,
                deadline,
                head: None,
            });
            out.push(Action::Fence { epoch, active });
        }
    }

    fn switchover_progress(&mut self, out: &mut Vec<Action>) {
        let Mode::Leader(l) = &self.mode else {
            return;
        };
        let Some(sw) = &l.switchover else {
            return;
        };
        let Some(head) = sw.head else {
            return;
        };
        let acked = l.acks.get(&sw.to).and_then(|a| a.position);
        if acked.is_none_or(|p| p < head) {
            return;
        }
        let to = sw.to.clone();
        let shipping = l.shipping;
        let epoch = Epoch(self.term().max(self.highest_term).0 + 1);
        self.note_term(epoch);
        // This member's vote for the target travels with the handover; it is
        // durable before the message leaves, like any vote.
        self.vote = Some(Vote {
            epoch,
            candidate: to.clone(),
        });
        out.push(Action::PersistVote {
            epoch,
            candidate: to.clone(),
        });
        out.push(Action::Send {
            to: to.clone(),
            msg: Message::Handover { epoch },
        });
        out.push(Action::Notify(Notice::SwitchoverHandedOver {
            to: to.clone(),
            epoch,
        }));
        if shipping {
            out.push(Action::StopShipping);
        }
        out.push(Action::RunHook(Hook::OnDemote));
        self.mode = Mode::Follower;
        self.fenced_role = true;
        self.last_heard = self.now;
        self.heard_from = Some(to);
        self.arm_election();
    }

    fn switchover_timed_out(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let epoch = self.epoch;
        let Mode::Leader(l) = &mut self.mode else {
            return;
        };
        let Some(sw) = l.switchover.take() else {
            return;
        };
        let acked = l.acks.get(&sw.to).and_then(|a| a.position);
        // The lease was kept up during the switchover: resume writes if it
        // still holds, otherwise stay fenced until a majority answers.
        let resumed = l.forced || now < l.lease_until;
        if resumed {
            l.db_unfenced = true;
            out.push(Action::Unfence { epoch });
        }
        out.push(Action::Notify(Notice::SwitchoverFailed {
            to: sw.to,
            reason: SwitchoverFailure::TimedOut {
                head: sw.head,
                acked,
            },
            resumed,
        }));
    }
}

/// The heartbeat the active of `epoch` sends at `now`.
fn heartbeat(
    l: &Leadership,
    epoch: Epoch,
    now: Millis,
    head: Position,
    paused: bool,
    me: &MemberId,
) -> Message {
    let mut positions: Vec<(MemberId, Position)> = l
        .acks
        .positions()
        .filter(|(m, _)| *m != me)
        .map(|(m, p)| (m.clone(), p))
        .collect();
    positions.push((me.clone(), head));
    Message::Heartbeat {
        epoch,
        sent_at: now,
        head,
        commit: l.commit,
        paused,
        announced: l.announced.head(),
        positions,
    }
}
