//! A deterministic simulator of whole clusters of engines (test only).
//!
//! Owns: a seeded PRNG, a virtual clock, a faulty network (loss, delay,
//! duplication, reordering, partitions that come and go, one-way links),
//! crashes and restarts (also between two actions of one step), per-node
//! clock-rate skew, a model of each member database (fence, lease, change
//! log, writes), and the invariant checks run after every event.
//! Must never: be compiled outside tests, or depend on anything but the seed
//! (no wall clock, no thread scheduling, no hash-order iteration).
//!
//! Replay: `UNDERSTUDY_SIM_SEED=<seed> cargo test --lib control::sim::<test> -- --nocapture`
//! runs that one schedule with a trace. `UNDERSTUDY_SIM_SCHEDULES=<n>` runs
//! more (or fewer) schedules than the default.

use super::*;
use crate::model::{Epoch, MemberId, Position, Role};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

/// splitmix64: tiny, fast, good enough to drive schedules.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The knobs of one family of schedules.
#[derive(Clone, Debug)]
struct Params {
    name: &'static str,
    data_members: usize,
    witness: bool,
    /// Clock rates are drawn from `[1 - eps, 1 + eps]`; database leases are
    /// modelled as lasting `remaining / (1 - eps)` of true time (the slowest
    /// database clock the bound allows).
    eps: f64,
    heartbeat: Millis,
    lease: Millis,
    failover: Millis,
    /// Local period of `Tick`.
    tick: Millis,
    chaos_ms: u64,
    calm_ms: u64,
    write_every: u64,
    loss: f64,
    dup: f64,
    max_delay: u64,
    long_delay: f64,
    /// Per 100 ms of chaos.
    p_crash: f64,
    p_partition: f64,
    p_heal: f64,
    p_switchover: f64,
    /// Per engine step: crash between two of its actions.
    p_crash_mid: f64,
}

impl Params {
    fn three() -> Params {
        Params {
            name: "three_members",
            data_members: 3,
            witness: false,
            eps: 0.05,
            heartbeat: 100,
            lease: 500,
            failover: 600,
            tick: 20,
            chaos_ms: 3600,
            calm_ms: 3000,
            write_every: 15,
            loss: 0.05,
            dup: 0.03,
            max_delay: 25,
            long_delay: 0.03,
            p_crash: 0.06,
            p_partition: 0.12,
            p_heal: 0.08,
            p_switchover: 0.03,
            p_crash_mid: 0.002,
        }
    }
    fn two_and_witness() -> Params {
        Params {
            name: "two_members_and_witness",
            data_members: 2,
            witness: true,
            ..Params::three()
        }
    }
}

#[derive(Clone, Debug)]
enum Payload {
    Control(Message),
    /// The active's change log (the replication stream, reduced to
    /// positions): a follower of `from` in `epoch` adopts it.
    Data {
        epoch: Epoch,
        log: Rc<Vec<Position>>,
    },
}

#[derive(Clone, Debug)]
enum Ev {
    Tick {
        node: usize,
        life: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        payload: Payload,
    },
    Write,
    Fault,
    Restart {
        node: usize,
    },
    Calm,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Min-heap on (time, insertion order).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A member database as the simulation sees it, in true time.
#[derive(Clone, Debug)]
struct Db {
    fenced: bool,
    /// `None`: no lease enforced yet (freshly initialised initial active).
    lease_end: Option<f64>,
    epoch: Epoch,
    log: Rc<Vec<Position>>,
}

impl Db {
    fn writable(&self, t: f64) -> bool {
        !self.fenced && self.lease_end.is_none_or(|e| e > t)
    }
    fn head(&self) -> Position {
        self.log.last().copied().unwrap_or(Position::ZERO)
    }
}

struct Node {
    id: MemberId,
    cfg: EngineConfig,
    engine: Option<Engine>,
    /// Incarnation, so ticks of a crashed engine are dropped.
    life: u64,
    persisted: PersistedState,
    rate: f64,
    offset: f64,
    db: Option<Db>,
}

impl Node {
    fn local(&self, t: u64) -> Millis {
        (self.offset + self.rate * t as f64) as Millis
    }
}

struct Sim {
    p: Params,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    calm: bool,
    quorum: usize,
    /// Epoch → the member that became active in it.
    actives: BTreeMap<Epoch, usize>,
    /// Per epoch, the newest position of that epoch each node acknowledged
    /// (the active counts its own head).
    acked: BTreeMap<Epoch, BTreeMap<usize, Position>>,
    /// The newest committed position and the log prefix ending there.
    committed: Option<(Position, Rc<Vec<Position>>)>,
    trace: bool,
    stats: Stats,
}

#[derive(Clone, Debug, Default)]
struct Stats {
    events: u64,
    promotions: u64,
    handovers: u64,
    writes: u64,
    crashes: u64,
    switchovers: u64,
}

type Check = Result<(), String>;

impl Sim {
    fn new(p: Params, seed: u64, trace: bool) -> Sim {
        let mut rng = Rng(seed);
        let mut ids: Vec<(MemberId, bool)> = (0..p.data_members)
            .map(|i| (MemberId::new(((b'a' + i as u8) as char).to_string()), false))
            .collect();
        if p.witness {
            ids.push((MemberId::new("w"), true));
        }
        let voters: Vec<Voter> = ids
            .iter()
            .map(|(id, w)| Voter {
                id: id.clone(),
                witness: *w,
            })
            .collect();
        let initial: Rc<Vec<Position>> = Rc::new((1..=5).map(|s| Position::new(1, s)).collect());
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, (id, witness))| {
                let cfg = EngineConfig {
                    me: id.clone(),
                    voters: voters.clone(),
                    heartbeat_interval: p.heartbeat,
                    lease_timeout: p.lease,
                    failover_timeout: p.failover,
                    switchover_timeout: 4 * p.failover,
                    max_failover_lag: 1_000_000,
                    auto_failover: true,
                    no_failover: false,
                    priority: rng.below(3) as i64,
                    promote_hook_blocks: false,
                };
                let role = match (i, witness) {
                    (_, true) => Role::Witness,
                    (0, _) => Role::Active,
                    _ => Role::Passive,
                };
                let db = (!witness).then(|| Db {
                    fenced: i != 0,
                    lease_end: None,
                    epoch: Epoch(1),
                    log: initial.clone(),
                });
                Node {
                    id: id.clone(),
                    cfg,
                    engine: None,
                    life: 0,
                    persisted: PersistedState {
                        epoch: Epoch(1),
                        active: Some(ids[0].0.clone()),
                        role,
                        vote: None,
                        paused: false,
                        position: if *witness {
                            Position::ZERO
                        } else {
                            Position::new(1, 5)
                        },
                    },
                    rate: 1.0 - p.eps + 2.0 * p.eps * rng.unit(),
                    offset: rng.below(1_000_000) as f64,
                    db,
                }
            })
            .collect();
        let quorum = voters.len() / 2 + 1;
        Sim {
            p,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            blocked: BTreeSet::new(),
            calm: false,
            quorum,
            actives: BTreeMap::from([(Epoch(1), 0)]),
            acked: BTreeMap::new(),
            committed: None,
            trace,
            stats: Stats::default(),
        }
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn log(&self, s: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>6}] {}", self.now, s());
        }
    }

    fn run(mut self) -> Result<Stats, String> {
        for i in 0..self.nodes.len() {
            self.boot(i)?;
        }
        self.at(self.p.write_every, Ev::Write);
        self.at(100, Ev::Fault);
        self.at(self.p.chaos_ms, Ev::Calm);
        let end = self.p.chaos_ms + self.p.calm_ms;
        while let Some(s) = self.queue.pop() {
            if s.at > end {
                break;
            }
            self.now = s.at;
            self.stats.events += 1;
            self.handle(s.ev)?;
            self.check_safety()?;
        }
        self.now = end;
        self.check_liveness()?;
        Ok(self.stats)
    }

    fn boot(&mut self, i: usize) -> Check {
        let t = self.now;
        let n = &mut self.nodes[i];
        if let Some(db) = &n.db {
            n.persisted.position = db.head();
        }
        n.life += 1;
        let life = n.life;
        let local = n.local(t);
        let (engine, actions) = Engine::new(n.cfg.clone(), n.persisted.clone(), local)
            .map_err(|e| format!("engine refused to start: {e}"))?;
        n.engine = Some(engine);
        let id = n.id.clone();
        self.log(|| format!("{id} boots: {actions:?}"));
        self.execute(i, actions, None)?;
        let first = self.now + 1 + self.rng.below(self.p.tick);
        self.at(first, Ev::Tick { node: i, life });
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].engine.take().is_none() {
            return;
        }
        self.stats.crashes += 1;
        let id = self.nodes[i].id.clone();
        self.log(|| format!("{id} CRASHES"));
        if !self.calm {
            let back = self.now + self.rng.range(50, 1500);
            self.at(back, Ev::Restart { node: i });
        }
    }

    fn handle(&mut self, ev: Ev) -> Check {
        match ev {
            Ev::Tick { node, life } => {
                if self.nodes[node].life != life || self.nodes[node].engine.is_none() {
                    return Ok(());
                }
                // As the driver draws it.
                let jitter = self.rng.below(self.p.heartbeat.max(1));
                self.step(node, Event::Tick { jitter })?;
                let period = (self.p.tick as f64 / self.nodes[node].rate).ceil() as u64;
                self.at(self.now + period.max(1), Ev::Tick { node, life });
            }
            Ev::Deliver { from, to, payload } => {
                if self.blocked.contains(&(from, to)) || self.nodes[to].engine.is_none() {
                    return Ok(());
                }
                match payload {
                    Payload::Control(msg) => {
                        let from = self.nodes[from].id.clone();
                        self.step(to, Event::Received { from, msg })?;
                    }
                    Payload::Data { epoch, log } => self.apply_data(from, to, epoch, log)?,
                }
            }
            Ev::Write => {
                self.write()?;
                self.at(self.now + self.p.write_every, Ev::Write);
            }
            Ev::Fault => {
                if !self.calm {
                    self.fault()?;
                    self.at(self.now + 100, Ev::Fault);
                }
            }
            Ev::Restart { node } => {
                if self.nodes[node].engine.is_none() {
                    self.boot(node)?;
                }
            }
            Ev::Calm => {
                self.calm = true;
                self.blocked.clear();
                self.log(|| "CALM: partitions healed, everyone restarted".into());
                for i in 0..self.nodes.len() {
                    if self.nodes[i].engine.is_none() {
                        self.boot(i)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The member whose engine is the writable active, if any.
    fn current_active(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .engine
                .as_ref()
                .is_some_and(|e| e.role() == Role::Active)
        })
    }

    /// A random member, the active half of the time: faults that hit the
    /// active are the ones that lead to promotions.
    fn victim(&mut self) -> usize {
        let n = self.nodes.len() as u64;
        match self.current_active() {
            Some(a) if self.rng.chance(0.5) => a,
            _ => self.rng.below(n) as usize,
        }
    }

    fn fault(&mut self) -> Check {
        let n = self.nodes.len();
        let p = self.p.clone();
        if self.rng.chance(p.p_crash) {
            let i = self.victim();
            self.crash(i);
        }
        if self.rng.chance(p.p_partition) {
            match self.rng.below(3) {
                0 => {
                    // Isolate one node.
                    let i = self.victim();
                    for j in 0..n {
                        if j != i {
                            self.blocked.insert((i, j));
                            self.blocked.insert((j, i));
                        }
                    }
                    self.log(|| format!("PARTITION: {} isolated", self.nodes[i].id));
                }
                1 => {
                    // Cut one link both ways.
                    let i = self.rng.below(n as u64) as usize;
                    let j = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    self.blocked.insert((i, j));
                    self.blocked.insert((j, i));
                    self.log(|| format!("PARTITION: link {i}-{j} cut"));
                }
                _ => {
                    // One direction only.
                    let i = self.rng.below(n as u64) as usize;
                    let j = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    self.blocked.insert((i, j));
                    self.log(|| format!("PARTITION: {i}->{j} one-way"));
                }
            }
        }
        if self.rng.chance(p.p_heal) {
            self.blocked.clear();
            self.log(|| "HEAL".into());
        }
        if self.rng.chance(p.p_switchover) {
            let active = self.current_active();
            let targets: Vec<usize> = (0..n)
                .filter(|&j| Some(j) != active && self.nodes[j].db.is_some())
                .collect();
            if let Some(a) = active
                && !targets.is_empty()
            {
                let to = targets[self.rng.below(targets.len() as u64) as usize];
                let to = self.nodes[to].id.clone();
                self.stats.switchovers += 1;
                self.step(a, Event::Command(Command::Switchover { to }))?;
            }
        }
        Ok(())
    }

    /// Application writes go to whichever database accepts them, whatever its
    /// agent is doing (crashed agents included: that is what the lease is for).
    fn write(&mut self) -> Check {
        let t = self.now as f64;
        for i in 0..self.nodes.len() {
            let Some(db) = &mut self.nodes[i].db else {
                continue;
            };
            if !db.writable(t) {
                continue;
            }
            let next = Position::new(db.epoch.0, db.head().seq + 1);
            Rc::make_mut(&mut db.log).push(next);
            self.stats.writes += 1;
            if self.nodes[i].engine.is_some() {
                self.step(i, Event::Position { position: next })?;
            }
        }
        Ok(())
    }

    fn apply_data(
        &mut self,
        from: usize,
        to: usize,
        epoch: Epoch,
        log: Rc<Vec<Position>>,
    ) -> Check {
        let from_id = self.nodes[from].id.clone();
        let n = &mut self.nodes[to];
        let Some(e) = &n.engine else {
            return Ok(());
        };
        if e.epoch() != epoch || e.active() != Some(&from_id) {
            return Ok(());
        }
        let Some(db) = &mut n.db else {
            return Ok(());
        };
        if !db.fenced {
            // A member never applies over its own writable database.
            return Ok(());
        }
        let cur = &db.log;
        if log.len() >= cur.len() && log[..cur.len()] == cur[..] {
            if log.len() == cur.len() {
                return Ok(());
            }
        } else if cur.len() >= log.len() && cur[..log.len()] == log[..] {
            // An older batch, delivered late.
            return Ok(());
        }
        // Extends, or the divergent tail is replaced by the active's history.
        db.log = log;
        let head = db.head();
        self.step(to, Event::Position { position: head })
    }

    fn step(&mut self, i: usize, ev: Event) -> Check {
        let t = self.now;
        let local = self.nodes[i].local(t);
        let trace = self.trace;
        let n = &mut self.nodes[i];
        let Some(engine) = n.engine.as_mut() else {
            return Ok(());
        };
        let ev_dbg = if trace {
            format!("{ev:?}")
        } else {
            String::new()
        };
        let actions = engine.step(local, ev);
        let id = n.id.clone();
        self.log(|| format!("{id} @{local} <- {ev_dbg}\n          -> {actions:?}"));
        let crash_at = (!self.calm && !actions.is_empty() && self.rng.chance(self.p.p_crash_mid))
            .then(|| self.rng.below(actions.len() as u64 + 1) as usize);
        self.execute(i, actions, crash_at)
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        // Once healed, the network is a healthy one: rare loss, short delays.
        let (loss, long_delay) = if self.calm {
            (0.01, 0.0)
        } else {
            (self.p.loss, self.p.long_delay)
        };
        if self.blocked.contains(&(from, to)) || self.rng.chance(loss) {
            return;
        }
        let copies = if self.rng.chance(self.p.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if self.rng.chance(long_delay) {
                self.rng.range(1, 2 * self.p.failover)
            } else {
                self.rng.range(1, self.p.max_delay)
            };
            let payload = payload.clone();
            self.at(self.now + delay, Ev::Deliver { from, to, payload });
        }
    }

    fn index(&self, id: &MemberId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id == id)
    }

    /// Carry out actions in order, as the driver does; `crash_at` crashes the
    /// node before that action (persisted effects before it survive).
    fn execute(&mut self, i: usize, actions: Vec<Action>, crash_at: Option<usize>) -> Check {
        let t = self.now;
        let mut fence_applied = None;
        for (k, a) in actions.into_iter().enumerate() {
            if crash_at == Some(k) {
                self.crash(i);
                return Ok(());
            }
            match a {
                Action::Send { to, msg } => {
                    let Some(j) = self.index(&to) else {
                        return Err(format!("send to unknown member {to}"));
                    };
                    self.observe_send(i, j, &msg)?;
                    if let Message::Heartbeat { epoch, .. } = &msg
                        && let Some(db) = &self.nodes[i].db
                    {
                        let log = db.log.clone();
                        self.send(i, j, Payload::Data { epoch: *epoch, log });
                    }
                    self.send(i, j, Payload::Control(msg));
                }
                Action::PersistVote { epoch, candidate } => {
                    let n = &mut self.nodes[i];
                    if let Some(v) = &n.persisted.vote
                        && v.epoch > epoch
                    {
                        return Err(format!(
                            "{} persisted a vote in {epoch} after one in {}",
                            n.id, v.epoch
                        ));
                    }
                    if let Some(v) = &n.persisted.vote
                        && v.epoch == epoch
                        && v.candidate != candidate
                    {
                        return Err(format!(
                            "{} voted twice in {epoch}: {} and {candidate}",
                            n.id, v.candidate
                        ));
                    }
                    n.persisted.vote = Some(Vote { epoch, candidate });
                }
                Action::PersistEpoch {
                    epoch,
                    active,
                    start,
                    reason,
                } => {
                    if matches!(reason, PromotionReason::Switchover { .. }) {
                        self.stats.handovers += 1;
                    }
                    let Some(j) = self.index(&active) else {
                        return Err(format!("epoch {epoch} for unknown member {active}"));
                    };
                    if j != i {
                        return Err(format!("{} recorded {active} as active", self.nodes[i].id));
                    }
                    self.claim_epoch(i, epoch)?;
                    self.check_durable(i, &format!("promoted at {epoch} from {start}"))?;
                    self.stats.promotions += 1;
                }
                Action::PersistPaused { paused } => self.nodes[i].persisted.paused = paused,
                Action::RenewLease { until } => {
                    let local = self.nodes[i].local(t);
                    let eps = self.p.eps;
                    let Some(db) = &mut self.nodes[i].db else {
                        return Err("a witness renewed a lease".into());
                    };
                    if until > local {
                        // The database measures the lease by its own clock:
                        // assume the slowest one allowed.
                        let end = t as f64 + (until - local) as f64 / (1.0 - eps);
                        db.lease_end = Some(end);
                    }
                }
                Action::Fence { epoch, active } => {
                    let n = &mut self.nodes[i];
                    if let Some(db) = &mut n.db {
                        db.fenced = true;
                        fence_applied = Some(db.head());
                    }
                    n.persisted.role = Role::Fenced;
                    n.persisted.epoch = epoch;
                    n.persisted.active = active;
                }
                Action::Unfence { epoch } => {
                    self.claim_epoch(i, epoch)?;
                    self.check_durable(i, &format!("unfenced at {epoch}"))?;
                    let n = &mut self.nodes[i];
                    let Some(db) = &mut n.db else {
                        return Err("a witness unfenced".into());
                    };
                    db.fenced = false;
                    db.epoch = epoch;
                    n.persisted.role = Role::Active;
                    n.persisted.epoch = epoch;
                    n.persisted.active = Some(n.id.clone());
                }
                Action::Follow { epoch, active } => {
                    let n = &mut self.nodes[i];
                    if let Some(db) = &mut n.db {
                        db.fenced = true;
                    }
                    if n.persisted.role != Role::Witness {
                        n.persisted.role = Role::Passive;
                    }
                    n.persisted.epoch = epoch;
                    n.persisted.active = Some(active);
                }
                Action::TakeOver { .. }
                | Action::StartShipping
                | Action::StopShipping
                | Action::RunHook(_)
                | Action::RunPromoteHookGate
                | Action::Notify(_) => {}
            }
            self.check_safety()?;
        }
        if crash_at.is_some() {
            self.crash(i);
            return Ok(());
        }
        // The driver reports the head read after each fence it applied.
        if let Some(head) = fence_applied {
            self.step(i, Event::FenceApplied { head })?;
        }
        Ok(())
    }

    fn claim_epoch(&mut self, i: usize, epoch: Epoch) -> Check {
        match self.actives.get(&epoch) {
            Some(&j) if j != i => Err(format!(
                "two actives in epoch {epoch}: {} and {}",
                self.nodes[j].id, self.nodes[i].id
            )),
            _ => {
                self.actives.insert(epoch, i);
                Ok(())
            }
        }
    }

    /// Track acknowledgements to compute what a majority holds (Raft rule:
    /// counted in the epoch the position belongs to).
    fn observe_send(&mut self, i: usize, to: usize, msg: &Message) -> Check {
        if let Message::VoteReply {
            epoch,
            granted: true,
            pre: false,
            ..
        } = msg
        {
            // The vote must be durable before the reply leaves.
            let n = &self.nodes[i];
            let durable = n
                .persisted
                .vote
                .as_ref()
                .is_some_and(|v| v.epoch == *epoch && v.candidate == self.nodes[to].id);
            if !durable {
                return Err(format!(
                    "{} granted {} in {epoch} without a durable vote (persisted: {:?})",
                    n.id, self.nodes[to].id, n.persisted.vote
                ));
            }
        }
        let (epoch, pos) = match msg {
            Message::Heartbeat { epoch, head, .. } => (*epoch, *head),
            Message::HeartbeatAck {
                epoch,
                position: Some(p),
                ..
            } => (*epoch, *p),
            _ => return Ok(()),
        };
        if pos.epoch != epoch.0 || self.nodes[i].db.is_none() {
            return Ok(());
        }
        let per = self.acked.entry(epoch).or_default();
        let e = per.entry(i).or_insert(pos);
        *e = (*e).max(pos);
        let mut v: Vec<Position> = per.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&c) = v.get(self.quorum - 1) else {
            return Ok(());
        };
        if self.committed.as_ref().is_some_and(|(p, _)| *p >= c) || pos < c {
            return Ok(());
        }
        let Some(db) = &self.nodes[i].db else {
            return Ok(());
        };
        let Some(k) = db.log.iter().position(|p| *p == c) else {
            return Err(format!(
                "{} acknowledged {pos} without holding {c}",
                self.nodes[i].id
            ));
        };
        self.committed = Some((c, Rc::new(db.log[..=k].to_vec())));
        Ok(())
    }

    fn check_durable(&self, i: usize, what: &str) -> Check {
        let Some((c, prefix)) = &self.committed else {
            return Ok(());
        };
        let Some(db) = &self.nodes[i].db else {
            return Ok(());
        };
        if db.log.len() < prefix.len() || db.log[..prefix.len()] != prefix[..] {
            return Err(format!(
                "{} {what} with head {} but without the majority-acknowledged {c}",
                self.nodes[i].id,
                db.head()
            ));
        }
        Ok(())
    }

    fn check_safety(&self) -> Check {
        let t = self.now as f64;
        let writable: Vec<&MemberId> = self
            .nodes
            .iter()
            .filter(|n| n.db.as_ref().is_some_and(|d| d.writable(t)))
            .map(|n| &n.id)
            .collect();
        if writable.len() > 1 {
            return Err(format!(
                "two databases unfenced with a valid lease at once: {writable:?}"
            ));
        }
        Ok(())
    }

    fn check_liveness(&self) -> Check {
        let t = self.now as f64;
        let writable: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].db.as_ref().is_some_and(|d| d.writable(t)))
            .collect();
        let [a] = writable[..] else {
            return Err(format!(
                "liveness: {} writable members {}ms after the faults stopped (want 1); roles {:?}",
                writable.len(),
                self.p.calm_ms,
                self.roles()
            ));
        };
        let Some(ea) = self.nodes[a].engine.as_ref().filter(|e| e.is_writable()) else {
            return Err(format!(
                "liveness: {}'s database is writable but its engine is not the active; roles {:?}",
                self.nodes[a].id,
                self.roles()
            ));
        };
        for n in &self.nodes {
            let Some(e) = &n.engine else {
                return Err(format!("liveness: {} is down", n.id));
            };
            if e.epoch() != ea.epoch() || e.active() != Some(&self.nodes[a].id) {
                return Err(format!(
                    "liveness: {} follows {:?} in {} while {} is active in {}; roles {:?}",
                    n.id,
                    e.active(),
                    e.epoch(),
                    self.nodes[a].id,
                    ea.epoch(),
                    self.roles()
                ));
            }
        }
        Ok(())
    }

    fn roles(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match &n.engine {
                Some(e) => format!("{}:{}@{}", n.id, e.role(), e.epoch()),
                None => format!("{}:down", n.id),
            })
            .collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Schedule `i` of a family gets this seed: spread out, and stable.
fn seed_of(family: u64, i: u64) -> u64 {
    Rng(family ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D)).next()
}

/// Run the family's schedules (or the one in `UNDERSTUDY_SIM_SEED`, traced).
fn run_family(p: Params, family: u64, default_schedules: u64) {
    let test = p.name;
    if let Some(seed) = env_u64("UNDERSTUDY_SIM_SEED") {
        eprintln!("replaying {test} seed {seed}");
        match Sim::new(p, seed, true).run() {
            Ok(s) => eprintln!("seed {seed} passed: {s:?}"),
            Err(e) => panic!("seed {seed} failed: {e}"),
        }
        return;
    }
    let n = env_u64("UNDERSTUDY_SIM_SCHEDULES").unwrap_or(default_schedules);
    eprintln!("{test}: {n} schedules, family seed {family:#x}");
    let mut total = Stats::default();
    for i in 0..n {
        let seed = seed_of(family, i);
        match Sim::new(p.clone(), seed, false).run() {
            Ok(s) => {
                total.events += s.events;
                total.promotions += s.promotions;
                total.handovers += s.handovers;
                total.writes += s.writes;
                total.crashes += s.crashes;
                total.switchovers += s.switchovers;
            }
            Err(e) => panic!(
                "{test}: schedule {i} (seed {seed}) failed: {e}\n\
                 replay: UNDERSTUDY_SIM_SEED={seed} cargo test --lib control::sim::{test} -- --nocapture"
            ),
        }
    }
    eprintln!("{test}: all {n} schedules passed: {total:?}");
    // The schedules must actually exercise failover, or they prove little.
    assert!(total.promotions >= n / 2, "too few promotions: {total:?}");
    assert!(total.crashes >= n / 2, "too few crashes: {total:?}");
}

#[test]
fn three_members() {
    run_family(Params::three(), 0x3_3333, 5000);
}

#[test]
fn two_members_and_witness() {
    run_family(Params::two_and_witness(), 0x2_2222, 5000);
}

/// The checker is not vacuous: with clock rates outside the bound the lease
/// argument needs (`lease / (1 - eps) <= failover / (1 + eps)` fails for
/// 500/600 ms at eps = 0.2), it finds two writable databases.
#[test]
fn a_broken_clock_bound_is_caught() {
    let mut p = Params::three();
    p.eps = 0.2;
    for i in 0..3000 {
        let seed = seed_of(0xBAD, i);
        if let Err(e) = Sim::new(p.clone(), seed, false).run() {
            assert!(e.contains("two databases"), "seed {seed}: {e}");
            eprintln!("caught at schedule {i} (seed {seed}): {e}");
            return;
        }
    }
    panic!("3000 schedules with eps = 0.2 found no lease overlap");
}

#[test]
fn replays_are_exact() {
    let run = |seed| {
        let mut s = Sim::new(Params::three(), seed, false);
        s.p.chaos_ms = 1500;
        s.p.calm_ms = 2500;
        let stats = s.run();
        format!("{stats:?}")
    };
    for seed in [1, 2, 3] {
        assert_eq!(run(seed), run(seed));
    }
}
