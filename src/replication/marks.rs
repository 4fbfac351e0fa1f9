//! Checksums of every member at one common position, without pausing the
//! active's writers: what `understudy verify` compares.
//!
//! Owns: the checksum marks (the active's shippers end a batch exactly at the
//! position of the active's checksums and say so in-stream), the passives'
//! board of checksums pinned at marks, and the answers of `GET /checksums`.
//! Must never: block the applier for longer than opening a read (checksums
//! run on a pinned consistent read in their own task), or hold a shipper back
//! for longer than opening the active's read.
//!
//! How one common position is reached while writes go on:
//! 1. The active holds its shippers at the head they know (H): no batch past
//!    H is read from then on, and any read already under way ends at or
//!    below the database's head at that moment.
//! 2. It opens a consistent read of its tables: the position P of that read
//!    (P ≥ H) is exact (see `MemberStore::snapshot_reader`).
//! 3. It lifts the hold and sets the mark P: every shipper below P ships up
//!    to P, ends that batch with a commit at P (P was a head, so whole
//!    application transactions end there), then sends `ChecksumMark(P)`.
//!    No shipper was past P, so every connected passive commits exactly P.
//! 4. A passive that receives the mark with P committed opens a consistent
//!    read there (a few milliseconds), applies on, and hashes the pinned
//!    read in the background. `GET /checksums?at_seq=P` returns that result.
//!
//! The active hashes its own read meanwhile and answers with P.

use crate::model::Position;
use crate::store::{AnyStore, MemberStore, TableChecksum, checksums_of};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Passive boards keep this many pinned positions.
const BOARD_KEEP: usize = 8;

/// What shippers must respect (the active's side of the marks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShipLimit {
    /// Ship nothing past this seq.
    pub hold: Option<u64>,
    /// End a batch exactly here, then send `ChecksumMark`.
    pub mark: Option<Position>,
    /// Changes with every new mark, so a shipper handles each mark once.
    pub generation: u64,
    /// The mark is ignored after this: a passive that connects much later
    /// need not stop there (nobody will ask it for those checksums).
    pub mark_until: Option<Instant>,
}

impl ShipLimit {
    /// The mark, while it is current.
    pub fn live_mark(&self, now: Instant) -> Option<Position> {
        self.mark
            .filter(|_| self.mark_until.is_some_and(|u| now < u))
    }
}

/// How long a mark stays current.
const MARK_LIFETIME: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
enum Pinned {
    Pending,
    Ready(Result<Vec<TableChecksum>, String>),
}

/// A member's checksum answer.
#[derive(Serialize, Debug, Clone)]
pub struct ChecksumAnswer {
    pub member: String,
    pub role: crate::model::Role,
    pub position: Position,
    pub tables: Vec<TableChecksumDoc>,
}

#[derive(Serialize, Debug, Clone)]
pub struct TableChecksumDoc {
    pub table: String,
    pub rows: u64,
    pub digest: String,
}

/// Shared by the shippers, the applier and the status endpoint.
#[derive(Debug)]
pub struct Marks {
    ship: watch::Sender<ShipLimit>,
    board: Mutex<BTreeMap<u64, (Position, Pinned)>>,
    board_changed: Notify,
    /// One checksum pin at a time on the active.
    active_turn: tokio::sync::Mutex<()>,
}

impl Default for Marks {
    fn default() -> Self {
        Marks {
            ship: watch::channel(ShipLimit::default()).0,
            board: Mutex::new(BTreeMap::new()),
            board_changed: Notify::new(),
            active_turn: tokio::sync::Mutex::new(()),
        }
    }
}

/// Why a checksum request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("{0}")]
    BadRequest(String),
    /// The member committed past the requested position without a mark there.
    #[error("{0}")]
    Passed(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Database(String),
}

fn docs(t: Vec<TableChecksum>) -> Vec<TableChecksumDoc> {
    t.into_iter()
        .map(|t| TableChecksumDoc {
            table: t.table,
            rows: t.rows,
            digest: t.digest,
        })
        .collect()
}

impl Marks {
    pub fn ship_limits(&self) -> watch::Receiver<ShipLimit> {
        self.ship.subscribe()
    }

    /// The active's checksums at an exact position, marked for its shippers
    /// (steps 1 to 3 of the module comment), then hashed.
    pub async fn active_checksums(
        &self,
        store: &AnyStore,
        head_seq: u64,
    ) -> Result<(Position, Vec<TableChecksum>), MarkError> {
        let turn = self.active_turn.lock().await;
        self.ship.send_modify(|l| l.hold = Some(head_seq));
        let reader = store.snapshot_reader().await;
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                self.ship.send_modify(|l| l.hold = None);
                return Err(MarkError::Database(e.to_string()));
            }
        };
        let at = reader.position();
        self.ship.send_modify(|l| {
            l.hold = None;
            l.mark = Some(at);
            l.mark_until = Some(Instant::now() + MARK_LIFETIME);
            l.generation += 1;
        });
        drop(turn);
        let (pos, sums) = checksums_of(reader, &store.catalog())
            .await
            .map_err(|e| MarkError::Database(e.to_string()))?;
        Ok((pos, sums))
    }

    /// The applier committed exactly `at` and received its mark: pin a read
    /// there and hash it in the background.
    pub async fn pin(self: &Arc<Self>, store: &Arc<AnyStore>, at: Position) {
        // Pending first: checksums an earlier verify pinned at this same
        // position must not answer this one (rows may have been changed
        // behind the agent's back since, which is what verify looks for),
        // and opening the read takes a moment in which the request may
        // already be waiting.
        self.put(at, Pinned::Pending);
        let reader = match store.snapshot_reader().await {
            Ok(r) => r,
            Err(e) => {
                self.put(at, Pinned::Ready(Err(e.to_string())));
                return;
            }
        };
        if reader.position() != at {
            // Not the position asked for (cannot happen while the applier
            // waits for this call; kept as a guard against mixing states).
            self.put(
                at,
                Pinned::Ready(Err(format!(
                    "the read opened at {} instead of the mark {at}",
                    reader.position()
                ))),
            );
            return;
        }
        let me = self.clone();
        let catalog = store.catalog();
        tokio::spawn(async move {
            let r = checksums_of(reader, &catalog)
                .await
                .map(|(_, s)| s)
                .map_err(|e| e.to_string());
            me.put(at, Pinned::Ready(r));
        });
    }

    fn put(&self, at: Position, p: Pinned) {
        {
            let mut b = match self.board.lock() {
                Ok(b) => b,
                Err(e) => e.into_inner(),
            };
            b.insert(at.seq, (at, p));
            while b.len() > BOARD_KEEP {
                let Some(first) = b.keys().next().copied() else {
                    break;
                };
                b.remove(&first);
            }
        }
        self.board_changed.notify_waiters();
    }

    fn get(&self, seq: u64) -> Option<(Position, Pinned)> {
        let b = match self.board.lock() {
            Ok(b) => b,
            Err(e) => e.into_inner(),
        };
        b.get(&seq).cloned()
    }

    /// A passive's checksums pinned at `seq`, waiting up to `timeout` for the
    /// member to get there (then as long as hashing the pinned read takes,
    /// up to [`HASH_LIMIT`]). `position` reads the member's committed
    /// position.
    pub async fn passive_checksums(
        &self,
        seq: u64,
        timeout: Duration,
        position: impl Fn() -> Position,
    ) -> Result<(Position, Vec<TableChecksum>), MarkError> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let changed = self.board_changed.notified();
            let limit = match self.get(seq) {
                Some((at, Pinned::Ready(Ok(s)))) => return Ok((at, s)),
                Some((_, Pinned::Ready(Err(e)))) => return Err(MarkError::Database(e)),
                // Pinned: the rest is hashing, bounded by the tables' size.
                Some((_, Pinned::Pending)) => started + HASH_LIMIT,
                None => {
                    let now_at = position();
                    if now_at.seq > seq {
                        return Err(MarkError::Passed(format!(
                            "this member is at {now_at}, past seq {seq}, and holds no checksums pinned there; ask the active again"
                        )));
                    }
                    deadline
                }
            };
            let left = limit.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MarkError::Timeout(format!(
                    "no checksums at seq {seq} within {} ms (this member is at {})",
                    timeout.as_millis(),
                    position()
                )));
            }
            // Woken by a new board entry, else re-check the position soon.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), changed).await;
        }
    }
}

/// How long hashing a pinned read may take before a request gives up.
pub const HASH_LIMIT: Duration = Duration::from_secs(1800);

/// `GET /checksums[?at_seq=N&timeout_ms=T]` for one member.
pub struct ChecksumService {
    pub node: Arc<crate::replication::NodeCtx>,
    pub store: Arc<AnyStore>,
}

impl ChecksumService {
    pub async fn answer(
        &self,
        at_seq: Option<u64>,
        timeout: Duration,
    ) -> Result<ChecksumAnswer, MarkError> {
        let (role, position) = self.node.live.read(|s| (s.role, s.position));
        let (pos, sums) = match (role, at_seq) {
            (crate::model::Role::Active, Some(_)) => {
                return Err(MarkError::BadRequest(
                    "the active takes its checksums at its own head; ask it without at_seq".into(),
                ));
            }
            (crate::model::Role::Active, None) => {
                self.node
                    .marks
                    .active_checksums(&self.store, position.seq)
                    .await?
            }
            (_, Some(seq)) => {
                let live = self.node.live.clone();
                self.node
                    .marks
                    .passive_checksums(seq, timeout, move || live.read(|s| s.position))
                    .await?
            }
            (_, None) => crate::store::checksums_at_position(self.store.as_ref())
                .await
                .map_err(|e| MarkError::Database(e.to_string()))?,
        };
        Ok(ChecksumAnswer {
            member: self.node.member.to_string(),
            role,
            position: pos,
            tables: docs(sums),
        })
    }
}
