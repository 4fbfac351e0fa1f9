//! Portable column types: what a column's values mean on every backend, so
//! a value read from SQLite writes to PostgreSQL (and back) unchanged.
//!
//! Owns: [`PortableType`] and the mapping from each backend's declared types.
//! Must never: accept a type whose values cannot round-trip exactly; such a
//! column is refused at `init` and at start, by name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A column type every backend can store and give back unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortableType {
    /// Integers of every width (`Value::Int`).
    Int,
    /// Floating point (`Value::Real`).
    Real,
    /// Exact decimal (`Value::Text`, canonical decimal text).
    Numeric,
    /// text, varchar, char (`Value::Text`).
    Text,
    Bool,
    /// BLOB / bytea (`Value::Bytes`).
    Bytes,
    /// json / jsonb, as text (`Value::Text`).
    Json,
    /// Lower-case hyphenated text (`Value::Text`).
    Uuid,
    /// Days since 1970-01-01 (`Value::Int`).
    Date,
    /// Microseconds since 1970-01-01 00:00:00, no time zone (`Value::Int`).
    Timestamp,
    /// Microseconds since the Unix epoch, UTC (`Value::Int`).
    TimestampTz,
}

impl PortableType {
    pub const ALL: [PortableType; 11] = [
        PortableType::Int,
        PortableType::Real,
        PortableType::Numeric,
        PortableType::Text,
        PortableType::Bool,
        PortableType::Bytes,
        PortableType::Json,
        PortableType::Uuid,
        PortableType::Date,
        PortableType::Timestamp,
        PortableType::TimestampTz,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PortableType::Int => "int",
            PortableType::Real => "real",
            PortableType::Numeric => "numeric",
            PortableType::Text => "text",
            PortableType::Bool => "bool",
            PortableType::Bytes => "bytes",
            PortableType::Json => "json",
            PortableType::Uuid => "uuid",
            PortableType::Date => "date",
            PortableType::Timestamp => "timestamp",
            PortableType::TimestampTz => "timestamptz",
        }
    }

    /// The portable type of an SQLite column from its declared type. SQLite
    /// stores any value in any column; the declared type is the
    /// application's statement of what it keeps there, and the only one
    /// there is. `None`: not a type understudy can carry exactly.
    pub fn from_sqlite_decl(decl: &str) -> Option<PortableType> {
        let d = decl.trim().to_ascii_uppercase();
        // The base name, without "(n)" or "(p, s)".
        let base = d.split('(').next().unwrap_or("").trim();
        let words: Vec<&str> = base.split_whitespace().collect();
        let joined = words.join(" ");
        Some(match joined.as_str() {
            "" => return None,
            "BOOL" | "BOOLEAN" => PortableType::Bool,
            "DATE" => PortableType::Date,
            "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => PortableType::Timestamp,
            "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => PortableType::TimestampTz,
            "UUID" => PortableType::Uuid,
            "JSON" | "JSONB" => PortableType::Json,
            "NUMERIC" | "DECIMAL" => PortableType::Numeric,
            "BLOB" | "BYTEA" => PortableType::Bytes,
            "REAL" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "FLOAT4" | "FLOAT8" => {
                PortableType::Real
            }
            "TEXT" | "CLOB" | "VARCHAR" | "CHAR" | "CHARACTER" | "CHARACTER VARYING"
            | "NVARCHAR" | "NCHAR" | "VARYING CHARACTER" | "NATIVE CHARACTER" | "STRING" => {
                PortableType::Text
            }
            "INT" | "INTEGER" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "BIGINT" | "INT2"
            | "INT4" | "INT8" | "UNSIGNED BIG INT" => PortableType::Int,
            _ => return None,
        })
    }

    /// The portable type of a PostgreSQL column from its type's name in
    /// `pg_type` (`typname`, base types only: arrays, domains, enums and
    /// composites are not portable).
    pub fn from_postgres(typname: &str) -> Option<PortableType> {
        Some(match typname {
            "int2" | "int4" | "int8" => PortableType::Int,
            "float4" | "float8" => PortableType::Real,
            "numeric" => PortableType::Numeric,
            "text" | "varchar" | "bpchar" => PortableType::Text,
            "bool" => PortableType::Bool,
            "bytea" => PortableType::Bytes,
            "json" | "jsonb" => PortableType::Json,
            "uuid" => PortableType::Uuid,
            "date" => PortableType::Date,
            "timestamp" => PortableType::Timestamp,
            "timestamptz" => PortableType::TimestampTz,
            _ => return None,
        })
    }

    pub fn parse(s: &str) -> Option<PortableType> {
        PortableType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for PortableType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored value that does not fit its column's portable type (an SQLite
/// column holds whatever the application put there). Names the column,
/// never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}.{column} ({ty}) holds a value that is not a valid {ty}: {why}")]
pub struct TypeError {
    pub table: String,
    pub column: String,
    pub ty: PortableType,
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_declared_types_map() {
        use PortableType::*;
        for (decl, ty) in [
            ("INTEGER", Some(Int)),
            ("bigint", Some(Int)),
            ("VARCHAR(255)", Some(Text)),
            ("boolean", Some(Bool)),
            ("DECIMAL(10, 2)", Some(Numeric)),
            ("TIMESTAMP WITH TIME ZONE", Some(TimestampTz)),
            ("datetime", Some(Timestamp)),
            ("BLOB", Some(Bytes)),
            ("", None),
            ("GEOMETRY", None),
        ] {
            assert_eq!(PortableType::from_sqlite_decl(decl), ty, "{decl}");
        }
    }

    #[test]
    fn names_round_trip() {
        for t in PortableType::ALL {
            assert_eq!(PortableType::parse(t.as_str()), Some(t));
        }
    }
}
