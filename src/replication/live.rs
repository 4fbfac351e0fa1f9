//! The member's live view of replication: what `/status` and metrics show.
//!
//! Owns: the in-memory, lock-protected snapshot written by the shipper, the
//! applier and the runtime, and its rendering into the `/status` document.
//! Must never: be the source of truth for roles or positions (the database
//! and the controller are); hold its lock across an await.

use crate::control::{ElectionReport, NotPromoting, Status as ControlStatus};
use crate::model::{Epoch, MemberId, Position, Role};
use crate::replication::snapshot::{SnapshotProgress, SnapshotStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::watch;

/// What one member knows about one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerLive {
    pub role: Option<Role>,
    pub connected: bool,
    /// Last position the peer reported (acked on a passive, head of an active).
    pub position: Position,
    /// Since when the peer has been behind this member's head (active side).
    pub behind_since: Option<Instant>,
    pub last_seen: Option<Instant>,
    pub witness: bool,
    /// The peer's status endpoint address, from the config.
    pub status: Option<String>,
    /// A snapshot being sent to the peer (active side).
    pub snapshot: Option<SnapshotProgress>,
}

#[derive(Clone, Debug)]
pub struct LiveInner {
    pub cluster: String,
    pub member: MemberId,
    pub role: Role,
    pub epoch: Epoch,
    pub active: Option<MemberId>,
    /// Head on the active, applied position on a passive.
    pub position: Position,
    /// On a passive: the head the active last announced.
    pub active_head: Position,
    /// On a passive: since when it has known of changes it has not applied.
    pub behind_since: Option<Instant>,
    pub last_heartbeat: Option<Instant>,
    pub database_ok: bool,
    pub database_error: Option<String>,
    /// A database write that has waited past its stall limit and not gone
    /// through yet. Kept apart from the health probe's verdict: the probe's
    /// reads succeed while another process holds the write lock, and must
    /// not hide the stall.
    pub stalled_write: Option<String>,
    pub divergent_changes: u64,
    pub peers: BTreeMap<MemberId, PeerLive>,
    pub started: Instant,
    pub backend: &'static str,
    /// A snapshot being received from the active (passive side).
    pub snapshot: Option<SnapshotProgress>,
    /// The promotion controller's view (`None` until it has started).
    pub controller: Option<ControlStatus>,
    /// The last run of each hook.
    pub hooks: Vec<crate::hooks::HookOutcome>,
    /// On the active: when its lease runs out by this process's clock, as
    /// of the controller's last published status. `/active` answers 200
    /// only before it, so a stalled agent whose status went stale stops
    /// drawing traffic when its database stops taking writes.
    pub lease_until: Option<Instant>,
    /// The fingerprint of the captured tables as this member's database
    /// describes them (empty on a witness).
    pub schema_fingerprint: String,
    /// The schema version (`understudy migrate`) this member's tables are at.
    pub schema_version: u64,
    /// Why this member does not apply the active's changes, if it does not:
    /// its captured tables differ from the active's, or a change did not
    /// fit them. Cleared by the next handshake that finds them equal.
    pub apply_blocked: Option<String>,
}

/// Shared, cheap to clone behind an `Arc`.
#[derive(Debug)]
pub struct Live {
    inner: Mutex<LiveInner>,
    /// `position` as a watch: the promotion controller follows this
    /// member's own position through it (head on the active, applied on a
    /// passive). Published after every update that moved it.
    position: watch::Sender<Position>,
    /// Whether `apply_blocked` is set, as a watch: the promotion
    /// controller does not stand for election while it is.
    blocked: watch::Sender<bool>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Lag {
    pub changes: u64,
    pub ms: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub member: String,
    pub role: Option<Role>,
    pub connected: bool,
    pub position: Position,
    pub lag_changes: u64,
    pub lag_ms: u64,
    pub witness: bool,
    /// The peer's status endpoint address (host:port), so a tool asking one
    /// member can find the others.
    pub status: Option<String>,
    pub snapshot: Option<SnapshotStatus>,
}

/// The `/status` document (fields fixed by the operator contract).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct StatusDoc {
    pub cluster: String,
    pub member: String,
    pub role: Role,
    pub epoch: u64,
    pub active: Option<String>,
    pub position: Position,
    pub lag: Lag,
    pub last_heartbeat_ms: Option<u64>,
    pub peers: Vec<PeerStatus>,
    pub divergent_changes: u64,
    pub version: &'static str,
    pub backend: &'static str,
    pub database_ok: bool,
    pub database_error: Option<String>,
    pub uptime_ms: u64,
    /// A snapshot running now: the one received on a passive, the first of
    /// those being sent on the active (each peer entry shows its own).
    pub snapshot: Option<SnapshotStatus>,
    /// Automatic failover suspended cluster-wide by an operator.
    pub paused: bool,
    /// The promotion controller's view; `None` before it started.
    pub failover: Option<FailoverDoc>,
    /// The last run of each configured hook (a failing or hanging one shows
    /// here with its exit code and output tail).
    pub hooks: Vec<crate::hooks::HookOutcome>,
    /// The captured tables' schema.
    pub schema: SchemaDoc,
    /// Whether this member applies the active's changes.
    pub apply: ApplyDoc,
}

/// `schema` in `/status`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SchemaDoc {
    /// How many schema changes have gone through the change log on this
    /// member (0 until one does).
    pub version: u64,
    /// The captured tables' fingerprint (`understudy tables` shows what it
    /// covers); equal on members that can replicate to each other.
    pub fingerprint: String,
}

/// `apply` in `/status`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApplyDoc {
    /// `ok` or `blocked`.
    pub state: &'static str,
    /// Why it is blocked, naming the table and column.
    pub reason: Option<String>,
}

/// The promotion controller's part of `/status`: above all, why this member
/// would not (or does not) become the active.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FailoverDoc {
    /// Whether this member would stand for election if the active failed
    /// now (a passive that is not lagging, paused, tagged or a witness).
    pub eligible: bool,
    /// Why it is not promoting; empty on the active and on an eligible
    /// passive while the active is healthy.
    pub not_promoting: Vec<NotPromoting>,
    /// The newest epoch voted in or known.
    pub term: u64,
    /// Newest commit point (a position a majority holds) this member knows.
    pub commit: Position,
    /// On the active: lease time left.
    pub lease_remaining_ms: Option<u64>,
    /// On the active during a planned switchover: the target.
    pub switchover_to: Option<String>,
    /// The active renews its lease on its own authority (forced promotion
    /// until a majority follows, or an operator-only pair).
    pub forced: bool,
    pub last_election: Option<ElectionReport>,
}

impl FailoverDoc {
    fn of(c: &ControlStatus) -> FailoverDoc {
        let blocked = c.not_promoting.iter().any(|r| {
            matches!(
                r,
                NotPromoting::Witness
                    | NotPromoting::AutoFailoverOff
                    | NotPromoting::Paused
                    | NotPromoting::NoFailover
                    | NotPromoting::Lagging { .. }
                    | NotPromoting::PromoteHookFailed { .. }
                    | NotPromoting::ApplyBlocked
            )
        });
        FailoverDoc {
            eligible: matches!(c.role, Role::Passive | Role::Candidate) && !blocked,
            not_promoting: c.not_promoting.clone(),
            term: c.term.0,
            commit: c.commit,
            lease_remaining_ms: c.lease_remaining_ms,
            switchover_to: c.switchover_to.as_ref().map(ToString::to_string),
            forced: c.forced,
            last_election: c.last_election.clone(),
        }
    }
}

fn ms_since(t: Option<Instant>, now: Instant) -> u64 {
    t.map(|t| now.saturating_duration_since(t).as_millis() as u64)
        .unwrap_or(0)
}

impl Live {
    pub fn new(inner: LiveInner) -> Self {
        let (position, _) = watch::channel(inner.position);
        let (blocked, _) = watch::channel(inner.apply_blocked.is_some());
        Live {
            inner: Mutex::new(inner),
            position,
            blocked,
        }
    }

    /// Run `f` on the state under the lock (never across an await).
    pub fn update<T>(&self, f: impl FnOnce(&mut LiveInner) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let out = f(&mut g);
        let pos = g.position;
        self.blocked.send_if_modified(|b| {
            let changed = *b != g.apply_blocked.is_some();
            *b = g.apply_blocked.is_some();
            changed
        });
        // Published under the lock, so two updates can never publish out of
        // order (sending on a watch does not block).
        self.position.send_if_modified(|p| {
            let moved = *p != pos;
            *p = pos;
            moved
        });
        out
    }

    /// This member's own position, as it moves.
    pub fn position_watch(&self) -> watch::Receiver<Position> {
        self.position.subscribe()
    }

    /// Whether applying is blocked, as it changes.
    pub fn apply_blocked_watch(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }

    pub fn read<T>(&self, f: impl FnOnce(&LiveInner) -> T) -> T {
        self.update(|s| f(s))
    }

    /// A passive learned the active's head (from a batch or heartbeat).
    pub fn heard_active(&self, head: Position, now: Instant) {
        self.update(|s| {
            s.last_heartbeat = Some(now);
            if head > s.active_head {
                s.active_head = head;
            }
            if s.active_head.seq > s.position.seq && s.behind_since.is_none() {
                s.behind_since = Some(now);
            }
        });
    }

    /// A passive committed up to `pos`.
    pub fn applied(&self, pos: Position) {
        self.update(|s| {
            s.position = pos;
            if pos.seq >= s.active_head.seq {
                s.behind_since = None;
            }
        });
    }

    /// The active's head moved.
    pub fn head_moved(&self, head: Position, now: Instant) {
        self.update(|s| {
            s.position = head;
            for p in s.peers.values_mut() {
                if !p.witness && p.position.seq < head.seq && p.behind_since.is_none() {
                    p.behind_since = Some(now);
                }
            }
        });
    }

    /// A peer acknowledged `pos` (active side).
    pub fn peer_acked(&self, peer: &MemberId, pos: Position, now: Instant) {
        self.update(|s| {
            let head = s.position;
            let p = s.peers.entry(peer.clone()).or_default();
            p.position = pos;
            p.last_seen = Some(now);
            if pos.seq >= head.seq {
                p.behind_since = None;
            } else if p.behind_since.is_none() {
                p.behind_since = Some(now);
            }
        });
    }

    pub fn peer_connected(&self, peer: &MemberId, role: Role, pos: Position, connected: bool) {
        let now = Instant::now();
        self.update(|s| {
            let p = s.peers.entry(peer.clone()).or_default();
            p.connected = connected;
            p.role = Some(role);
            if connected {
                p.position = pos;
                p.last_seen = Some(now);
            }
        });
    }

    /// Run a database write, reporting it in `/status` (`database_ok`
    /// false, with the reason) while it takes longer than `stall`: a
    /// database locked by another process blocks writes but not the health
    /// probe's reads, and would otherwise go unseen.
    pub async fn watch_stall<T>(
        &self,
        what: &str,
        stall: std::time::Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(fut);
        let started = Instant::now();
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(stall) => {}
        }
        tracing::warn!(
            what,
            "a database write is stalled (locked by another process, or overloaded)"
        );
        let stalled = format!(
            "{what} has waited over {} ms for the database (locked by another process, or overloaded)",
            stall.as_millis()
        );
        self.update(|s| s.stalled_write = Some(stalled));
        // Cleared however the write ends, cancellation included (a
        // follower stopped for a promotion drops its stalled apply): a
        // marker left behind would hold `database_ok` false for good.
        let _clear = ClearStall(self);
        let r = fut.await;
        tracing::info!(
            what,
            waited_ms = started.elapsed().as_millis() as u64,
            "the stalled database write went through"
        );
        r
    }

    /// Applying the active's changes is blocked (`Some(reason)`) or runs
    /// (`None`); a change of state is logged once, with the reason.
    /// The captured tables after a schema change (or at start).
    pub fn schema(&self, version: u64, fingerprint: &str) {
        self.update(|s| {
            s.schema_version = version;
            s.schema_fingerprint = fingerprint.to_string();
        });
    }

    pub fn apply_blocked(&self, reason: Option<String>) {
        let changed = self.update(|s| {
            let changed = s.apply_blocked != reason;
            s.apply_blocked = reason.clone();
            changed
        });
        match (changed, reason) {
            (true, Some(r)) => {
                tracing::error!(reason = %r, "applying the active's changes is blocked")
            }
            (true, None) => tracing::info!("applying the active's changes again"),
            _ => {}
        }
    }

    pub fn database(&self, ok: Result<(), String>) {
        self.update(|s| match ok {
            Ok(()) => {
                s.database_ok = true;
                s.database_error = None;
            }
            Err(e) => {
                s.database_ok = false;
                s.database_error = Some(e);
            }
        });
    }

    /// Render the `/status` document.
    pub fn status(&self, now: Instant) -> StatusDoc {
        self.read(|s| {
            let (lag_changes, lag_ms) = if s.role == Role::Active {
                (0, 0)
            } else {
                (
                    s.active_head.seq.saturating_sub(s.position.seq),
                    ms_since(s.behind_since, now),
                )
            };
            let head = s.position;
            let peers = s
                .peers
                .iter()
                .map(|(m, p)| {
                    let behind = if s.role == Role::Active && !p.witness {
                        (
                            head.seq.saturating_sub(p.position.seq),
                            ms_since(p.behind_since, now),
                        )
                    } else {
                        (0, 0)
                    };
                    PeerStatus {
                        member: m.to_string(),
                        role: p.role,
                        connected: p.connected,
                        position: p.position,
                        lag_changes: behind.0,
                        lag_ms: behind.1,
                        witness: p.witness,
                        status: p.status.clone(),
                        snapshot: p.snapshot.as_ref().map(|x| x.status(now)),
                    }
                })
                .collect();
            StatusDoc {
                cluster: s.cluster.clone(),
                member: s.member.to_string(),
                role: s.role,
                epoch: s.epoch.0,
                active: s.active.as_ref().map(ToString::to_string),
                position: s.position,
                lag: Lag {
                    changes: lag_changes,
                    ms: lag_ms,
                },
                // The controller hears the active's heartbeats; before it
                // runs, the replication stream's are all there is.
                last_heartbeat_ms: match &s.controller {
                    Some(c) if c.role != Role::Active => c.last_heartbeat_ms,
                    _ => s
                        .last_heartbeat
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                },
                peers,
                divergent_changes: s.divergent_changes,
                version: env!("CARGO_PKG_VERSION"),
                backend: s.backend,
                database_ok: s.database_ok && s.stalled_write.is_none(),
                database_error: s.stalled_write.clone().or_else(|| s.database_error.clone()),
                uptime_ms: now.saturating_duration_since(s.started).as_millis() as u64,
                snapshot: s
                    .snapshot
                    .as_ref()
                    .or_else(|| s.peers.values().find_map(|p| p.snapshot.as_ref()))
                    .map(|x| x.status(now)),
                paused: s.controller.as_ref().is_some_and(|c| c.paused),
                failover: s.controller.as_ref().map(FailoverDoc::of),
                hooks: s.hooks.clone(),
                schema: SchemaDoc {
                    version: s.schema_version,
                    fingerprint: s.schema_fingerprint.clone(),
                },
                apply: ApplyDoc {
                    state: if s.apply_blocked.is_some() {
                        "blocked"
                    } else {
                        "ok"
                    },
                    reason: s.apply_blocked.clone(),
                },
            }
        })
    }
}

/// Clears the stalled-write marker when dropped (see [`Live::watch_stall`]).
struct ClearStall<'a>(&'a Live);

impl Drop for ClearStall<'_> {
    fn drop(&mut self) {
        self.0.update(|s| s.stalled_write = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn live(role: Role) -> Live {
        Live::new(LiveInner {
            cluster: "c".into(),
            member: MemberId::new("b"),
            role,
            epoch: Epoch(1),
            active: Some(MemberId::new("a")),
            position: Position::new(1, 10),
            active_head: Position::new(1, 10),
            behind_since: None,
            last_heartbeat: None,
            database_ok: true,
            database_error: None,
            stalled_write: None,
            divergent_changes: 0,
            peers: BTreeMap::new(),
            started: Instant::now(),
            backend: "sqlite",
            snapshot: None,
            controller: None,
            hooks: Vec::new(),
            lease_until: None,
            schema_fingerprint: String::new(),
            schema_version: 0,
            apply_blocked: None,
        })
    }

    #[test]
    fn passive_lag_counts_changes_and_time_until_applied() {
        let l = live(Role::Passive);
        let t0 = Instant::now();
        l.heard_active(Position::new(1, 25), t0);
        let s = l.status(t0 + Duration::from_millis(40));
        assert_eq!(s.lag.changes, 15);
        assert_eq!(s.lag.ms, 40);
        l.applied(Position::new(1, 25));
        let s = l.status(t0 + Duration::from_millis(50));
        assert_eq!(s.lag, Lag { changes: 0, ms: 0 });
    }

    #[test]
    fn active_tracks_each_peer() {
        let l = live(Role::Active);
        let b = MemberId::new("b");
        let t0 = Instant::now();
        l.peer_connected(&b, Role::Passive, Position::new(1, 10), true);
        l.head_moved(Position::new(1, 30), t0);
        let s = l.status(t0 + Duration::from_millis(5));
        assert_eq!(s.peers[0].lag_changes, 20);
        assert_eq!(s.peers[0].lag_ms, 5);
        l.peer_acked(&b, Position::new(1, 30), t0);
        assert_eq!(l.status(t0).peers[0].lag_changes, 0);
    }

    #[tokio::test]
    async fn a_stalled_write_shows_until_it_ends_even_when_cancelled() {
        let l = live(Role::Passive);
        let stalled = l.watch_stall(
            "applying a batch",
            Duration::from_millis(5),
            std::future::pending::<()>(),
        );
        // Cancelled while stalled, as a stopped follower drops its apply.
        let cancelled = tokio::time::timeout(Duration::from_millis(100), async {
            tokio::select! {
                _ = stalled => {}
                _ = async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let doc = l.status(Instant::now());
                    assert!(!doc.database_ok, "the stall shows while it lasts");
                    // The probe's successful read does not hide it.
                    l.database(Ok(()));
                    assert!(!l.status(Instant::now()).database_ok);
                    std::future::pending::<()>().await
                } => {}
            }
        })
        .await;
        assert!(cancelled.is_err());
        let doc = l.status(Instant::now());
        assert!(doc.database_ok, "{:?}", doc.database_error);
        assert_eq!(doc.database_error, None);
    }
}
