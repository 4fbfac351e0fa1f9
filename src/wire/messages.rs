//! The messages of a replication connection, one enum per direction.
//!
//! Owns: what members say to each other, and the handshake check (protocol
//! version, cluster name, member name against the TLS certificate).
//! Must never: carry anything but plain data (no behaviour beyond checks), or
//! print a column value (a [`crate::tables::Value`]'s `Debug` shows only its
//! kind and length: any column may be secret).

use crate::model::{Change, Epoch, MemberId, Position, Role, RowImage};
use crate::tables::{Catalog, TableDesc};
use serde::{Deserialize, Serialize};

/// Bumped on any change to the messages' encoding; peers with another
/// version are refused in the handshake.
/// 5: row images of any captured table (table name, key width, portable
/// values) instead of the fixed projects/jobs/keys rows.
/// 6: schema changes in the change stream; hellos carry the schema version.
pub const PROTOCOL_VERSION: u16 = 6;

/// The first message each way: who is speaking and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u16,
    pub cluster: String,
    pub member: MemberId,
    pub role: Role,
    pub epoch: Epoch,
    /// On a passive: its applied position (the active streams from there).
    /// On the active: its head.
    pub position: Position,
    /// A passive asks for a snapshot whatever its position (an operator's
    /// `understudy resnapshot`); always false from the active.
    pub want_snapshot: bool,
    /// The captured tables as the sender's database describes them (`None`
    /// from a witness and on control streams): a passive and an active
    /// whose tables differ refuse each other, naming the difference.
    pub schema: Option<SchemaDesc>,
}

/// A member's captured tables, as sent in its hello: the fingerprint to
/// compare, and the description to name what differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDesc {
    /// The schema version (`understudy migrate` moves it on by one).
    pub version: u64,
    pub fingerprint: String,
    pub tables: Vec<TableDesc>,
}

/// A member's schema as it compares its peers' against it: the captured
/// tables now, the version, and the fingerprint of every earlier version.
#[derive(Clone, Copy, Debug)]
pub struct SchemaHere<'a> {
    pub catalog: &'a Catalog,
    pub version: u64,
    /// `(version, fingerprint)`, as `MemberStore::schema_history` gives it.
    pub history: &'a [(u64, String)],
}

impl SchemaDesc {
    pub fn of(catalog: &Catalog, version: u64) -> SchemaDesc {
        SchemaDesc {
            version,
            fingerprint: catalog.fingerprint().to_string(),
            tables: catalog.tables().to_vec(),
        }
    }

    /// Why this member (there) cannot follow `here`: `None` when both are
    /// at one version with the same tables, or when there is behind and had
    /// exactly the tables `here` had at its version (the schema changes in
    /// between reach it through the log).
    pub fn cannot_follow(&self, here: SchemaHere<'_>) -> Option<String> {
        if self.version > here.version {
            return Some(format!(
                "the member at schema version {} is ahead of the one at version {}",
                self.version, here.version
            ));
        }
        if self.version == here.version {
            return self.difference_for_sender(here.catalog);
        }
        let had = here.history.iter().find(|(v, _)| *v == self.version);
        match had {
            Some((_, f)) if *f == self.fingerprint => None,
            Some((_, f)) => Some(format!(
                "at schema version {} the active's captured tables had fingerprint {f}, this member's have {}",
                self.version, self.fingerprint
            )),
            None => Some(format!(
                "the active has no record of schema version {} (its history starts later): this member needs its tables brought to version {} by hand",
                self.version, here.version
            )),
        }
    }

    /// What differs between `mine` (here) and this description (there), or
    /// `None` when they describe the same tables.
    pub fn difference_from(&self, mine: &Catalog) -> Option<String> {
        if self.fingerprint == mine.fingerprint() {
            return None;
        }
        Some(
            mine.first_difference_from(&self.tables)
                .unwrap_or_else(|| "the schema fingerprints differ".to_string()),
        )
    }

    /// As [`SchemaDesc::difference_from`], worded for the member that sent
    /// this description ("here" is that member): what the active tells a
    /// passive it refuses.
    pub fn difference_for_sender(&self, mine: &Catalog) -> Option<String> {
        if self.fingerprint == mine.fingerprint() {
            return None;
        }
        Some(
            mine.first_difference_seen_from(&self.tables)
                .unwrap_or_else(|| "the schema fingerprints differ".to_string()),
        )
    }
}

impl Hello {
    /// Why this hello must be refused, if it must: another protocol version,
    /// another cluster, or a member name that is not the one its TLS
    /// certificate proves. The reason is meant for the `Refuse` message and
    /// the log.
    pub fn check(&self, expected_cluster: &str, peer_cert_name: &MemberId) -> Result<(), String> {
        if self.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not supported (this member speaks {PROTOCOL_VERSION})",
                self.protocol
            ));
        }
        if self.cluster != expected_cluster {
            return Err(format!(
                "cluster {:?} is not this cluster {expected_cluster:?}",
                self.cluster
            ));
        }
        if &self.member != peer_cert_name {
            return Err(format!(
                "member {:?} does not match its certificate's name {:?}",
                self.member.as_str(),
                peer_cert_name.as_str()
            ));
        }
        Ok(())
    }
}

/// Sent by the side that dialled (a passive dials the active and says where
/// it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    Hello(Hello),
    /// Everything up to `applied` is committed on the passive.
    Ack {
        applied: Position,
    },
    Heartbeat(Heartbeat),
    /// Opens a promotion-controller stream instead of a replication stream:
    /// the same checks as [`ClientMsg::Hello`], answered with `Welcome` or
    /// `Refuse`, after which only [`ClientMsg::Control`] frames follow. Any
    /// member accepts it, whatever its role (votes and heartbeats flow
    /// between all voters). Appended after the existing variants, so their
    /// encoding is unchanged.
    ControlHello(Hello),
    /// One promotion-controller message; the sender is the peer named by
    /// the connection's certificate, never a field inside the message.
    Control(super::control::Message),
}

/// Sent by the side that accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    Welcome(Hello),
    /// The connection is refused; the reason is for the peer's log.
    Refuse {
        reason: String,
    },
    Batch(Batch),
    Heartbeat(Heartbeat),
    /// A snapshot follows: chunks of rows, then `SnapshotEnd`; the passive
    /// installs them in one transaction and streams on from `position`.
    SnapshotBegin(SnapshotBegin),
    /// Rows table by table, in the catalog's parents-first order (bounded
    /// per chunk).
    SnapshotChunk {
        rows: Vec<RowImage>,
    },
    /// The snapshot is complete: `rows` were sent in all.
    SnapshotEnd {
        rows: u64,
    },
    /// The last batch ended exactly at `position`, a point at which the
    /// active took per-table checksums: a passive that has committed exactly
    /// this position pins a consistent read there for `understudy verify`.
    ChecksumMark {
        position: Position,
    },
    /// The active's epoch history (sent once, after the welcome): every
    /// member keeps the whole history, so whoever becomes active next can
    /// show it and judge a returning member's divergence.
    History(Vec<EpochEntry>),
    /// Instead of a welcome: the passive's captured tables differ from the
    /// active's (`difference` names the table and column, as the active
    /// sees it). Nothing is applied until they match.
    SchemaDiffers {
        difference: String,
    },
    /// Instead of a welcome: the passive's history diverged from this
    /// active's after `keep_upto` (it holds changes of an older epoch that
    /// this history does not). It must quarantine what it holds past
    /// `keep_upto` and ask for a snapshot to restore its rows.
    Rejoin {
        keep_upto: Position,
        reason: String,
    },
}

/// One epoch of history on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEntry {
    pub epoch: Epoch,
    pub active: MemberId,
    /// The last position of the previous epoch the new active held.
    pub start: Position,
    pub at_ms: i64,
    pub reason: String,
}

/// At most this many epochs travel in one `History` (the newest).
pub const HISTORY_MAX: usize = 1000;

/// The start of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBegin {
    /// The change-log position the snapshot's rows reflect exactly.
    pub position: Position,
    /// Rows to come, for progress.
    pub rows_total: u64,
    /// Why a snapshot is sent (for the passive's log).
    pub reason: String,
    /// Every schema change the rows are shaped by, oldest first: the
    /// passive runs those it lacks in the install transaction, before
    /// the rows.
    pub schema: Vec<crate::model::SchemaChange>,
}

/// A run of changes in log order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// The passive may commit after applying this batch: its last change
    /// ends an application transaction.
    pub commit: bool,
    /// The sender's log head when the batch was read (for lag).
    pub head: Position,
    /// Sender's wall clock, milliseconds since the Unix epoch (for lag).
    pub sent_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub epoch: Epoch,
    pub member: MemberId,
    pub role: Role,
    pub position: Position,
    /// Sender's wall clock, milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: "prod".into(),
            member: MemberId::new("b"),
            role: Role::Passive,
            epoch: Epoch(3),
            position: Position::new(3, 41),
            want_snapshot: false,
            schema: None,
        }
    }

    #[test]
    fn a_matching_hello_passes() {
        assert_eq!(hello().check("prod", &MemberId::new("b")), Ok(()));
    }

    #[test]
    fn wrong_cluster_protocol_or_member_is_refused_with_a_reason() {
        let mut h = hello();
        h.cluster = "staging".into();
        let r = h.check("prod", &MemberId::new("b")).unwrap_err();
        assert!(r.contains("staging") && r.contains("prod"), "{r}");

        let mut h = hello();
        h.protocol = PROTOCOL_VERSION + 1;
        let r = h.check("prod", &MemberId::new("b")).unwrap_err();
        assert!(r.contains("protocol version"), "{r}");

        let r = hello().check("prod", &MemberId::new("c")).unwrap_err();
        assert!(r.contains("\"b\"") && r.contains("\"c\""), "{r}");
        assert!(r.contains("certificate"), "{r}");
    }
}
