//! One column value in its portable form.
//!
//! Owns: [`Value`], the representation every backend converts to and from
//! (see [`super::PortableType`] for which variant each type uses).
//! Must never: show content in `Debug` (any column may hold a secret).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A column value. Which variant a column holds follows from its
/// [`super::PortableType`]: `Int` for integers, dates (days since
/// 1970-01-01) and timestamps (microseconds since 1970-01-01T00:00:00, UTC
/// for `timestamptz`); `Real` for floating point; `Text` for text, json,
/// uuid (lower-case, hyphenated) and numeric (canonical decimal text);
/// `Bool`; `Bytes`.
#[derive(Clone, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A rough size in bytes, for batch and chunk limits.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Int(_) | Value::Real(_) => 8,
            Value::Text(s) => s.len() + 4,
            Value::Bytes(b) => b.len() + 4,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The variant's name, for messages ("int", "text", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "int",
            Value::Real(_) => "real",
            Value::Bool(_) => "bool",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }

    /// Feed a canonical, unambiguous encoding into a hasher (checksums and
    /// fingerprints): a tag byte, then a length where the width varies.
    pub fn hash_into(&self, out: &mut impl FnMut(&[u8])) {
        match self {
            Value::Null => out(&[0]),
            Value::Int(i) => {
                out(&[1]);
                out(&i.to_le_bytes());
            }
            Value::Real(f) => {
                out(&[2]);
                out(&canonical_bits(*f).to_le_bytes());
            }
            Value::Bool(b) => out(&[3, u8::from(*b)]),
            Value::Text(s) => {
                out(&[4]);
                out(&(s.len() as u64).to_le_bytes());
                out(s.as_bytes());
            }
            Value::Bytes(b) => {
                out(&[5]);
                out(&(b.len() as u64).to_le_bytes());
                out(b);
            }
        }
    }
}

/// `-0.0` equals `0.0` and every NaN equals every other, as databases
/// compare them.
fn canonical_bits(f: f64) -> u64 {
    if f == 0.0 {
        0
    } else if f.is_nan() {
        f64::NAN.to_bits()
    } else {
        f.to_bits()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => canonical_bits(*a) == canonical_bits(*b),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.hash_into(&mut |b| state.write(b));
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Text(s) => write!(f, "Text(<{} bytes>)", s.len()),
            Value::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            Value::Int(_) | Value::Real(_) | Value::Bool(_) => {
                write!(f, "{}(<value>)", self.kind())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_content() {
        for v in [
            Value::Text("hunter2".into()),
            Value::Bytes(b"hunter2".to_vec()),
            Value::Int(4242),
            Value::Real(42.42),
        ] {
            let shown = format!("{v:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("42"),
                "{shown}"
            );
        }
    }

    #[test]
    fn reals_compare_as_databases_do() {
        assert_eq!(Value::Real(0.0), Value::Real(-0.0));
        assert_eq!(Value::Real(f64::NAN), Value::Real(f64::NAN));
        assert_ne!(Value::Real(1.0), Value::Int(1));
    }
}
