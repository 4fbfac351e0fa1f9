//! Driver tests on fakes: an in-memory network, a store and a role sink that
//! write every effect to one shared, ordered log per member; tokio's paused
//! clock makes the schedules deterministic.

use super::*;
use crate::control::CommandRefusal;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, s: String) {
    log.lock().unwrap().push(s);
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[derive(Clone)]
struct FakeStore {
    log: Log,
    /// Operations that fail (by name).
    fail: Arc<Mutex<Vec<&'static str>>>,
    /// What `load` returns.
    persisted: PersistedState,
}

impl FakeStore {
    fn new(log: Log, persisted: PersistedState) -> FakeStore {
        FakeStore {
            log,
            fail: Arc::default(),
            persisted,
        }
    }
    fn op(&self, name: &'static str, detail: String) -> Result<(), ControlStoreError> {
        if self.fail.lock().unwrap().contains(&name) {
            push(&self.log, format!("FAILED {name} {detail}"));
            return Err(ControlStoreError::Other(format!(
                "{name} refused by the test"
            )));
        }
        push(&self.log, format!("{name} {detail}"));
        Ok(())
    }
}

impl ControlStore for FakeStore {
    async fn persist_vote(&self, v: &Vote) -> Result<(), ControlStoreError> {
        self.op("persist_vote", format!("e{} {}", v.epoch, v.candidate))
    }
    async fn persist_epoch(&self, r: &EpochRecord) -> Result<(), ControlStoreError> {
        self.op("persist_epoch", format!("e{} {}", r.epoch, r.active))
    }
    async fn persist_paused(&self, p: bool) -> Result<(), ControlStoreError> {
        self.op("persist_paused", p.to_string())
    }
    async fn set_role(
        &self,
        role: Role,
        epoch: Epoch,
        _a: Option<&MemberId>,
    ) -> Result<(), ControlStoreError> {
        self.op("set_role", format!("{role} e{epoch}"))
    }
    async fn renew_lease(&self, lease: Duration) -> Result<(), ControlStoreError> {
        self.op("renew_lease", format!("{}ms", lease.as_millis()))
    }
    async fn head(&self) -> Result<Position, ControlStoreError> {
        self.op("head", String::new())?;
        Ok(Position::new(1, 10))
    }
    async fn load(&self) -> Result<PersistedState, ControlStoreError> {
        self.op("load", String::new())?;
        Ok(self.persisted.clone())
    }
}

type Inboxes = Arc<Mutex<BTreeMap<MemberId, mpsc::Sender<(MemberId, Message)>>>>;

struct FakeNet {
    me: MemberId,
    inboxes: Inboxes,
    log: Log,
}

fn describe(msg: &Message) -> String {
    match msg {
        Message::Heartbeat { epoch, .. } => format!("Heartbeat e{epoch}"),
        Message::HeartbeatAck { epoch, .. } => format!("HeartbeatAck e{epoch}"),
        Message::Stale { term, .. } => format!("Stale t{term}"),
        Message::RequestVote { epoch, pre, .. } => format!("RequestVote e{epoch} pre={pre}"),
        Message::VoteReply {
            epoch,
            granted,
            pre,
            ..
        } => format!("VoteReply e{epoch} granted={granted} pre={pre}"),
        Message::Handover { epoch } => format!("Handover e{epoch}"),
        Message::SetPaused { paused } => format!("SetPaused {paused}"),
    }
}

impl PeerNet for FakeNet {
    fn send(&self, to: &MemberId, msg: Message) {
        push(&self.log, format!("send {to} {}", describe(&msg)));
        let tx = self.inboxes.lock().unwrap().get(to).cloned();
        if let Some(tx) = tx {
            // Best effort, as the real network: a full or closed inbox drops.
            let _ = tx.try_send((self.me.clone(), msg));
        }
    }
}

struct FakeSink {
    log: Log,
}

impl RoleSink for FakeSink {
    async fn start_shipping(&self) {
        push(&self.log, "sink start_shipping".into());
    }
    async fn stop_shipping(&self) {
        push(&self.log, "sink stop_shipping".into());
    }
    async fn follow(&self, epoch: Epoch, active: &MemberId) {
        push(&self.log, format!("sink follow {active} e{epoch}"));
    }
    async fn take_over(&self, from: Option<&MemberId>) {
        push(&self.log, format!("sink take_over {from:?}"));
    }
    async fn run_hook(&self, hook: Hook) -> bool {
        push(&self.log, format!("sink hook {hook:?}"));
        true
    }
    async fn notify(&self, notice: &Notice) {
        push(&self.log, format!("sink notify {notice:?}"));
    }
}

fn cfg(me: &str) -> EngineConfig {
    crate::control::fixtures::config(me, &["a", "b", "c"])
}

fn persisted(me: &str) -> PersistedState {
    PersistedState {
        epoch: Epoch(1),
        active: Some(MemberId::new("a")),
        role: if me == "a" {
            Role::Active
        } else {
            Role::Passive
        },
        vote: None,
        paused: false,
        position: Position::new(1, 10),
    }
}

type TestDriver = Driver<FakeStore, FakeNet, FakeSink, TokioClock>;

struct Member {
    log: Log,
    store: FakeStore,
    status: watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
    commands: mpsc::Sender<CommandRequest>,
    _position: watch::Sender<Position>,
    _shutdown: watch::Sender<bool>,
}

async fn build(me: &str, inboxes: &Inboxes, seed: u64) -> (TestDriver, DriverIo, Member) {
    let log: Log = Arc::default();
    let store = FakeStore::new(log.clone(), persisted(me));
    let (in_tx, in_rx) = mpsc::channel(64);
    inboxes.lock().unwrap().insert(MemberId::new(me), in_tx);
    let net = FakeNet {
        me: MemberId::new(me),
        inboxes: inboxes.clone(),
        log: log.clone(),
    };
    let sink = FakeSink { log: log.clone() };
    let (driver, status) = Driver::start(
        cfg(me),
        persisted(me),
        store.clone(),
        net,
        sink,
        TokioClock::new(),
        seed,
    )
    .await
    .unwrap();
    let (pos_tx, pos_rx) = watch::channel(Position::new(1, 10));
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (sd_tx, sd_rx) = watch::channel(false);
    let (_blocked_tx, blocked_rx) = watch::channel(false);
    let io = DriverIo {
        position: pos_rx,
        apply_blocked: blocked_rx,
        inbound: in_rx,
        commands: cmd_rx,
        shutdown: sd_rx,
    };
    let member = Member {
        log,
        store,
        status,
        task: tokio::spawn(async {}),
        commands: cmd_tx,
        _position: pos_tx,
        _shutdown: sd_tx,
    };
    (driver, io, member)
}

async fn spawn(me: &str, inboxes: &Inboxes, seed: u64) -> Member {
    let (driver, io, mut m) = build(me, inboxes, seed).await;
    m.task = tokio::spawn(driver.run(io));
    m
}

/// Poll (on tokio's paused clock) until `f` holds, at most `limit`.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

fn index_of(log: &[String], needle: &str) -> Option<usize> {
    log.iter().position(|e| e == needle)
}

#[tokio::test(start_paused = true)]
async fn three_drivers_elect_a_new_active_after_the_active_is_gone() {
    for seed in [1u64, 2, 3, 42] {
        println!("seed {seed}");
        let inboxes: Inboxes = Arc::default();
        let a = spawn("a", &inboxes, seed).await;
        let b = spawn("b", &inboxes, seed.wrapping_mul(31) + 1).await;
        let c = spawn("c", &inboxes, seed.wrapping_mul(77) + 2).await;

        // The restarted active fences itself first, then regains writes once
        // a majority answers its heartbeats.
        assert!(
            until(Duration::from_secs(5), || a.status.borrow().role
                == Role::Active)
            .await,
            "seed {seed}: a never became writable: {:?}",
            *a.status.borrow()
        );
        let la = entries(&a.log);
        let fence = index_of(&la, "set_role fenced e1").expect("start-up fence");
        let unfence = index_of(&la, "set_role active e1").expect("unfence");
        assert!(fence < unfence, "seed {seed}: {la:?}");
        let renew = la
            .iter()
            .position(|e| e.starts_with("renew_lease "))
            .expect("lease renewed");
        assert!(
            renew < unfence,
            "seed {seed}: the lease comes before the fence lifts: {la:?}"
        );
        let ship = index_of(&la, "sink start_shipping").expect("shipping");
        assert!(unfence < ship, "seed {seed}: {la:?}");

        // The active's driver goes away (its inbox closes with it).
        a.task.abort();
        inboxes.lock().unwrap().remove(&MemberId::new("a"));

        let elected = until(Duration::from_secs(10), || {
            [&b, &c]
                .iter()
                .any(|m| m.status.borrow().role == Role::Active)
        })
        .await;
        assert!(
            elected,
            "seed {seed}: nobody took over: b {:?} c {:?}",
            *b.status.borrow(),
            *c.status.borrow()
        );
        let (winner, loser, wname, lname) = if b.status.borrow().role == Role::Active {
            (&b, &c, "b", "c")
        } else {
            (&c, &b, "c", "b")
        };
        let epoch = winner.status.borrow().epoch;
        assert!(epoch > Epoch(1), "seed {seed}");
        assert!(
            until(Duration::from_secs(5), || {
                let s = loser.status.borrow();
                s.epoch == epoch && s.active == Some(MemberId::new(wname))
            })
            .await,
            "seed {seed}: {lname} does not follow {wname}: {:?}",
            *loser.status.borrow()
        );

        // The loser persisted its vote before the reply granting it left.
        let ll = entries(&loser.log);
        let vote = index_of(&ll, &format!("persist_vote e{epoch} {wname}"))
            .unwrap_or_else(|| panic!("seed {seed}: no vote stored: {ll:?}"));
        let reply = index_of(
            &ll,
            &format!("send {wname} VoteReply e{epoch} granted=true pre=false"),
        )
        .unwrap_or_else(|| panic!("seed {seed}: no granted reply: {ll:?}"));
        assert!(vote < reply, "seed {seed}: {ll:?}");
        // It follows the winner: database first, then the applier.
        let set = index_of(&ll, &format!("set_role passive e{epoch}")).expect("follow");
        let follow = index_of(&ll, &format!("sink follow {wname} e{epoch}")).expect("applier");
        assert!(set < follow, "seed {seed}: {ll:?}");

        // The winner recorded its epoch before lifting the fence.
        let lw = entries(&winner.log);
        let rec = index_of(&lw, &format!("persist_epoch e{epoch} {wname}")).expect("epoch");
        let up = index_of(&lw, &format!("set_role active e{epoch}")).expect("unfence");
        assert!(rec < up, "seed {seed}: {lw:?}");
        assert!(
            lw[up..].iter().any(|e| e == "sink start_shipping"),
            "{lw:?}"
        );

        b.task.abort();
        c.task.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_vote_that_cannot_be_stored_is_never_sent() {
    let inboxes: Inboxes = Arc::default();
    let (mut d, _io, m) = build("b", &inboxes, 7).await;
    m.store.fail.lock().unwrap().push("persist_vote");
    let actions = vec![
        Action::PersistVote {
            epoch: Epoch(2),
            candidate: MemberId::new("c"),
        },
        Action::Send {
            to: MemberId::new("c"),
            msg: Message::VoteReply {
                epoch: Epoch(2),
                sent_at: 0,
                granted: true,
                term: Epoch(2),
                refusal: None,
                pre: false,
            },
        },
    ];
    let (_, failed) = d.execute_all(actions, "test").await;
    assert!(failed.is_some());
    let log = entries(&m.log);
    assert!(
        log.iter().any(|e| e == "FAILED persist_vote e2 c"),
        "{log:?}"
    );
    assert!(!log.iter().any(|e| e.starts_with("send ")), "{log:?}");
    // A passive's database already refuses writes: no extra fence.
    assert!(!log.iter().any(|e| e.starts_with("set_role")), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_lease_renewal_fences_and_drops_the_rest() {
    let inboxes: Inboxes = Arc::default();
    let (mut d, _io, m) = build("a", &inboxes, 9).await;
    m.log.lock().unwrap().clear();
    m.store.fail.lock().unwrap().push("renew_lease");
    let now = d.clock.now();
    let actions = vec![
        Action::RenewLease { until: now + 200 },
        Action::Unfence { epoch: Epoch(1) },
        Action::StartShipping,
    ];
    let (_, failed) = d.execute_all(actions, "test").await;
    let failed = failed.expect("failure reported");
    assert!(matches!(failed.action, Action::RenewLease { .. }));
    let log = entries(&m.log);
    assert_eq!(
        log,
        vec![
            "FAILED renew_lease 200ms".to_string(),
            "set_role fenced e1".to_string(),
            "sink hook OnFence".to_string(),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewal_whose_time_has_passed_is_skipped() {
    let inboxes: Inboxes = Arc::default();
    let (mut d, _io, m) = build("a", &inboxes, 11).await;
    tokio::time::advance(Duration::from_millis(500)).await;
    m.log.lock().unwrap().clear();
    let until = d.clock.now() - 1;
    let (_, failed) = d
        .execute_all(vec![Action::RenewLease { until }], "test")
        .await;
    assert!(failed.is_none());
    assert!(entries(&m.log).is_empty(), "{:?}", entries(&m.log));
}

#[tokio::test(start_paused = true)]
async fn commands_are_answered_with_their_outcome() {
    let inboxes: Inboxes = Arc::default();
    let b = spawn("b", &inboxes, 5).await;

    let (tx, rx) = oneshot::channel();
    b.commands
        .send(CommandRequest {
            command: Command::Pause,
            reply: tx,
        })
        .await
        .unwrap();
    let out = rx.await.unwrap();
    assert!(out.failed.is_none());
    assert!(out.status.paused);
    assert!(entries(&b.log).iter().any(|e| e == "persist_paused true"));

    // A passive cannot start a switchover: refused at once, with the reason.
    let (tx, rx) = oneshot::channel();
    b.commands
        .send(CommandRequest {
            command: Command::Switchover {
                to: MemberId::new("c"),
            },
            reply: tx,
        })
        .await
        .unwrap();
    let out = rx.await.unwrap();
    assert!(
        out.notices.iter().any(|n| matches!(
            n,
            Notice::CommandRefused {
                reason: CommandRefusal::NotActive { .. },
                ..
            }
        )),
        "{:?}",
        out.notices
    );
    b.task.abort();
}

#[test]
fn the_boot_clock_moves_forward() {
    let c = BootClock::new();
    let t0 = c.now();
    std::thread::sleep(Duration::from_millis(5));
    let t1 = c.now();
    assert!(t1 >= t0 + 5, "{t0} {t1}");
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_renewal_the_active_fences_restarts_and_the_cluster_recovers() {
    let inboxes: Inboxes = Arc::default();
    let a = spawn("a", &inboxes, 21).await;
    let b = spawn("b", &inboxes, 22).await;
    let c = spawn("c", &inboxes, 23).await;
    assert!(
        until(Duration::from_secs(5), || a.status.borrow().role
            == Role::Active)
        .await
    );

    a.store.fail.lock().unwrap().push("renew_lease");
    assert!(
        until(Duration::from_secs(2), || a.status.borrow().role
            != Role::Active)
        .await,
        "{:?}",
        *a.status.borrow()
    );
    let la = entries(&a.log);
    let failed = la
        .iter()
        .position(|e| e.starts_with("FAILED renew_lease"))
        .expect("the renewal failed");
    assert_eq!(
        la.get(failed + 1).map(String::as_str),
        Some("set_role fenced e1"),
        "{la:?}"
    );
    // The engine is rebuilt from the durable state.
    assert!(
        until(Duration::from_secs(1), || entries(&a.log)[failed..]
            .iter()
            .any(|e| e == "load "))
        .await,
        "{:?}",
        entries(&a.log)
    );

    a.store.fail.lock().unwrap().clear();
    // Once the database answers again, one active leads and all agree on it.
    let agreed = until(Duration::from_secs(10), || {
        let s: Vec<Status> = [&a, &b, &c]
            .iter()
            .map(|m| m.status.borrow().clone())
            .collect();
        let actives = s.iter().filter(|x| x.role == Role::Active).count();
        actives == 1
            && s.windows(2)
                .all(|w| (w[0].epoch, &w[0].active) == (w[1].epoch, &w[1].active))
    })
    .await;
    assert!(
        agreed,
        "a {:?}\nb {:?}\nc {:?}",
        *a.status.borrow(),
        *b.status.borrow(),
        *c.status.borrow()
    );
    for m in [a, b, c] {
        m.task.abort();
    }
}
