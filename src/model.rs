//! The vocabulary every other module speaks: members, epochs, positions,
//! changes and row images (whose tables [`crate::tables`] describes).
//!
//! Owns: the typed value objects that cross module boundaries (and the wire).
//! Must never: do IO, or print key content (`Secret` redacts itself).

use crate::tables::{TableName, Value};
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

/// The image of one row after a change: its table and its values in the
/// table's image layout (see [`crate::tables::TableDesc::layout`]: key columns first, then
/// the others in table order). `Debug` shows no value (any column may be
/// secret; [`Value`] redacts itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowImage {
    pub table: TableName,
    /// How many of `values` are the key (the table's primary key width).
    pub key_len: u32,
    pub values: Vec<Value>,
}

impl RowImage {
    pub fn new(table: TableName, key_len: usize, values: Vec<Value>) -> RowImage {
        RowImage {
            table,
            key_len: u32::try_from(key_len).unwrap_or(u32::MAX),
            values,
        }
    }

    /// The key's values (the first `key_len` values).
    pub fn key(&self) -> &[Value] {
        let n = (self.key_len as usize).min(self.values.len());
        &self.values[..n]
    }

    /// A rough size in bytes, for chunk limits.
    pub fn approx_bytes(&self) -> usize {
        32 + self.table.as_str().len() + self.values.iter().map(Value::approx_bytes).sum::<usize>()
    }
}

/// What a change did to its row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// Insert or update: the full row image after the change.
    Upsert(RowImage),
    /// Delete: only the key, in key order.
    Delete { table: TableName, key: Vec<Value> },
    /// A change of the captured tables' schema (`understudy migrate`),
    /// applied by every member at this position.
    Schema(SchemaChange),
}

/// A schema change as the change log carries it. Each member runs the DDL
/// of its own backend with capture off (so the statements, back-fills
/// included, must give the same result wherever they run), regenerates its
/// capture objects, and must then describe its captured tables with
/// `fingerprint`, or it stops applying (drift).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChange {
    /// The captured tables' schema version this change brings a member to
    /// (one more than the one before it).
    pub version: u64,
    /// What SQLite members run.
    pub sqlite: String,
    /// What PostgreSQL members run.
    pub postgres: String,
    /// The fingerprint of the captured tables after the change.
    pub fingerprint: String,
}

impl SchemaChange {
    /// The DDL a member of `backend` (`"sqlite"` or `"postgres"`) runs.
    pub fn sql_for(&self, backend: &str) -> &str {
        if backend == "postgres" {
            &self.postgres
        } else {
            &self.sqlite
        }
    }
}

/// The table every row change of a schema change's kind names: none. Row
/// changes name their table; a schema change is about all of them.
const NO_TABLE: &str = "";

/// One row mutation, carrying its own position so a batch can never drift
/// from its offsets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub pos: Position,
    pub op: ChangeOp,
}

impl Change {
    /// The row change's table; `None` for a schema change.
    pub fn table(&self) -> Option<&TableName> {
        match &self.op {
            ChangeOp::Upsert(r) => Some(&r.table),
            ChangeOp::Delete { table, .. } => Some(table),
            ChangeOp::Schema(_) => None,
        }
    }
    /// The table's name as text (`""` for a schema change).
    pub fn table_str(&self) -> &str {
        self.table().map_or(NO_TABLE, |t| t.as_str())
    }
    /// The row's key (empty for a schema change).
    pub fn key(&self) -> &[Value] {
        match &self.op {
            ChangeOp::Upsert(r) => r.key(),
            ChangeOp::Delete { key, .. } => key,
            ChangeOp::Schema(_) => &[],
        }
    }
    pub fn op_name(&self) -> &'static str {
        match &self.op {
            ChangeOp::Upsert(_) => "upsert",
            ChangeOp::Delete { .. } => "delete",
            ChangeOp::Schema(_) => "schema",
        }
    }
    /// A rough size in bytes, for batch limits.
    pub fn approx_bytes(&self) -> usize {
        16 + match &self.op {
            ChangeOp::Upsert(r) => r.approx_bytes(),
            ChangeOp::Delete { table, key } => {
                32 + table.as_str().len() + key.iter().map(Value::approx_bytes).sum::<usize>()
            }
            ChangeOp::Schema(s) => 48 + s.sqlite.len() + s.postgres.len() + s.fingerprint.len(),
        }
    }
}

/// A key as operators read it: its values joined by `,` (text as is,
/// bytes as hex). Keys are never secret (the catalog refuses secret key
/// columns), so printing them is safe.
pub fn key_text(key: &[Value]) -> String {
    key.iter()
        .map(|v| match v {
            Value::Null => "NULL".to_string(),
            Value::Int(i) => i.to_string(),
            Value::Real(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(s) => s.clone(),
            Value::Bytes(b) => hex::encode(b),
        })
        .collect::<Vec<_>>()
        .join(",")
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
        let k = RowImage::new(
            TableName::new("keys"),
            1,
            vec![
                Value::Text("keys/a".into()),
                Value::Bytes(b"hunter2".to_vec()),
            ],
        );
        let shown = format!("{k:?} {}", Secret(b"hunter2".to_vec()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn keys_are_the_leading_values() {
        let r = RowImage::new(
            TableName::new("t"),
            2,
            vec![Value::Int(1), Value::Text("b".into()), Value::Null],
        );
        assert_eq!(key_text(r.key()), "1,b");
    }
}
