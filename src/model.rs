//! The vocabulary every other module speaks: members, epochs, positions,
//! changes and row images.
//!
//! Owns: the typed value objects that cross module boundaries (and the wire).
//! Must never: do IO, or print key content (`Secret` redacts itself).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A member id, as written in the config and in the member's certificate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub String);

impl MemberId {
    pub fn new(s: impl Into<String>) -> Self {
        MemberId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A term number. Every promotion starts a new one; at most one active per epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The place of a change in the change log. `seq` runs on across epochs (a new
/// active continues after its last applied seq), so positions are totally
/// ordered by `(epoch, seq)`: a later epoch always wins, as a Raft log's last
/// term does.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    pub const ZERO: Position = Position { epoch: 0, seq: 0 };
    pub fn new(epoch: u64, seq: u64) -> Self {
        Position { epoch, seq }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch, self.seq)
    }
}

/// The role a member's replication state records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Passive,
    Candidate,
    Fenced,
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Passive => "passive",
            Role::Candidate => "candidate",
            Role::Fenced => "fenced",
            Role::Witness => "witness",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "active" => Role::Active,
            "passive" => Role::Passive,
            "candidate" => Role::Candidate,
            "fenced" => Role::Fenced,
            "witness" => Role::Witness,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes that must never be printed: key content. `Debug` and `Display` show
/// `<redacted>`; the bytes travel only inside TLS and the member databases.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which application table a change touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    Project,
    Job,
    Key,
}

impl Entity {
    pub const ALL: [Entity; 3] = [Entity::Project, Entity::Job, Entity::Key];
    /// The application table's name (fixed by the operator contract).
    pub fn table(self) -> &'static str {
        match self {
            Entity::Project => "projects",
            Entity::Job => "jobs",
            Entity::Key => "keys",
        }
    }
    /// The small integer the change log stores.
    pub fn code(self) -> i64 {
        match self {
            Entity::Project => 1,
            Entity::Job => 2,
            Entity::Key => 3,
        }
    }
    pub fn from_code(c: i64) -> Option<Entity> {
        Some(match c {
            1 => Entity::Project,
            2 => Entity::Job,
            3 => Entity::Key,
            _ => return None,
        })
    }
}

/// A full `projects` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRow {
    pub name: String,
    pub description: Option<String>,
    /// JSON text, stored as the application wrote it.
    pub config: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
}

/// A full `jobs` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: String,
    pub project: String,
    pub name: String,
    pub group_path: Option<String>,
    pub description: Option<String>,
    /// JSON text.
    pub definition: Option<String>,
    pub schedule: Option<String>,
    pub schedule_enabled: bool,
    pub execution_enabled: bool,
    pub owner_member: Option<String>,
    pub updated_at: i64,
}

/// A full `keys` row. `content` is a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub path: String,
    /// `password`, `private` or `public`.
    pub kind: String,
    pub content: Secret,
    /// JSON text.
    pub meta: Option<String>,
    pub updated_at: i64,
}

/// The row image after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowImage {
    Project(ProjectRow),
    Job(JobRow),
    Key(KeyRow),
}

impl RowImage {
    pub fn entity(&self) -> Entity {
        match self {
            RowImage::Project(_) => Entity::Project,
            RowImage::Job(_) => Entity::Job,
            RowImage::Key(_) => Entity::Key,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            RowImage::Project(r) => &r.name,
            RowImage::Job(r) => &r.id,
            RowImage::Key(r) => &r.path,
        }
    }
    /// A rough size in bytes, for chunk limits.
    pub fn approx_bytes(&self) -> usize {
        32 + match self {
            RowImage::Project(p) => {
                p.name.len()
                    + p.description.as_ref().map_or(0, String::len)
                    + p.config.as_ref().map_or(0, String::len)
            }
            RowImage::Job(j) => {
                j.id.len()
                    + j.project.len()
                    + j.name.len()
                    + j.group_path.as_ref().map_or(0, String::len)
                    + j.description.as_ref().map_or(0, String::len)
                    + j.definition.as_ref().map_or(0, String::len)
                    + j.schedule.as_ref().map_or(0, String::len)
                    + j.owner_member.as_ref().map_or(0, String::len)
            }
            RowImage::Key(k) => {
                k.path.len()
                    + k.kind.len()
                    + k.content.0.len()
                    + k.meta.as_ref().map_or(0, String::len)
            }
        }
    }
}

/// What a change did to its row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// Insert or update: the full row image after the change.
    Upsert(RowImage),
    /// Delete: only the key.
    Delete { entity: Entity, key: String },
}

/// One row mutation, carrying its own position so a batch can never drift
/// from its offsets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub pos: Position,
    pub op: ChangeOp,
}

impl Change {
    pub fn entity(&self) -> Entity {
        match &self.op {
            ChangeOp::Upsert(r) => r.entity(),
            ChangeOp::Delete { entity, .. } => *entity,
        }
    }
    pub fn key(&self) -> &str {
        match &self.op {
            ChangeOp::Upsert(r) => r.key(),
            ChangeOp::Delete { key, .. } => key,
        }
    }
    pub fn op_name(&self) -> &'static str {
        match &self.op {
            ChangeOp::Upsert(_) => "upsert",
            ChangeOp::Delete { .. } => "delete",
        }
    }
    /// A rough size in bytes, for batch limits.
    pub fn approx_bytes(&self) -> usize {
        48 + match &self.op {
            ChangeOp::Upsert(RowImage::Project(p)) => {
                p.name.len()
                    + p.description.as_ref().map_or(0, String::len)
                    + p.config.as_ref().map_or(0, String::len)
            }
            ChangeOp::Upsert(RowImage::Job(j)) => {
                j.id.len()
                    + j.project.len()
                    + j.name.len()
                    + j.group_path.as_ref().map_or(0, String::len)
                    + j.description.as_ref().map_or(0, String::len)
                    + j.definition.as_ref().map_or(0, String::len)
                    + j.schedule.as_ref().map_or(0, String::len)
                    + j.owner_member.as_ref().map_or(0, String::len)
            }
            ChangeOp::Upsert(RowImage::Key(k)) => {
                k.path.len()
                    + k.kind.len()
                    + k.content.0.len()
                    + k.meta.as_ref().map_or(0, String::len)
            }
            ChangeOp::Delete { key, .. } => key.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_epoch_then_seq() {
        assert!(Position::new(2, 5) > Position::new(1, 100));
        assert!(Position::new(1, 6) > Position::new(1, 5));
        assert_eq!(Position::new(3, 3), Position::new(3, 3));
    }

    #[test]
    fn secrets_never_print() {
        let k = KeyRow {
            path: "keys/a".into(),
            kind: "password".into(),
            content: Secret(b"hunter2".to_vec()),
            meta: None,
            updated_at: 0,
        };
        let shown = format!("{k:?} {}", k.content);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
