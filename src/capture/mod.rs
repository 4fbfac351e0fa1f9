//! Change-log reading for operators: the rendering behind `understudy log`
//! (and the row images `understudy divergence` shows).
//!
//! Owns: how a captured change and a row image are shown, from the catalog:
//! a text line (`column=value` pairs) or JSON (one object per change), with
//! the values of secret columns replaced by their size.
//! Must never: show a secret column's value (unless the caller asked for
//! secrets, as a divergence export does), or write to the database.
//!
//! Value forms, text and JSON alike: dates and timestamps as ISO 8601 text
//! (`tables::canonical`), NULL as `NULL` / `null`. Bytes are `0x…` hex in a
//! line (their length only when long) and base64 under `<column>_base64` in
//! JSON. A secret column shows `<redacted N bytes>` (text and bytes) or
//! `<redacted>` (any other type, NULL included). An image whose table this
//! member does not describe (or whose width differs) shows no value at all:
//! which of its values are secret is not known.

use crate::model::{Change, ChangeOp, RowImage, key_text};
use crate::tables::canonical::{format_date, format_timestamp};
use crate::tables::{Catalog, ColumnDesc, PortableType, TableDesc, Value};
use base64::Engine as _;
use serde_json::{Map, Value as Json, json};

/// Whether the values of secret columns are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Replaced by `<redacted N bytes>`: logs, lists, status.
    Redact,
    /// Shown: only an export the operator asked secrets for.
    Include,
}

/// A change as JSON: position, table, op, key, and the row image after an
/// upsert (`null` for a delete), secret columns redacted.
pub fn change_json(cat: &Catalog, c: &Change) -> Json {
    let row = match &c.op {
        ChangeOp::Upsert(img) => row_json(cat, img, Secrets::Redact),
        ChangeOp::Delete { .. } => Json::Null,
        ChangeOp::Schema(s) => schema_json(s),
    };
    json!({
        "epoch": c.pos.epoch,
        "seq": c.pos.seq,
        "table": c.table(),
        "op": c.op_name(),
        "key": key_text(c.key()),
        "row": row,
    })
}

/// A schema change as JSON: its version, fingerprint and each backend's DDL.
pub fn schema_json(s: &crate::model::SchemaChange) -> Json {
    json!({
        "version": s.version,
        "fingerprint": s.fingerprint,
        "sqlite": s.sqlite,
        "postgres": s.postgres,
    })
}

/// The columns of `img` when the catalog describes its table with the
/// image's width; `None` otherwise (nothing about its values is known).
fn columns_of<'a>(cat: &'a Catalog, img: &RowImage) -> Option<Vec<&'a ColumnDesc>> {
    let (_, t): (_, &TableDesc) = cat.get(&img.table)?;
    let cols = t.image_columns();
    (cols.len() == img.values.len()).then_some(cols)
}

/// A row image as a JSON object of `column: value` (see the module doc for
/// the forms).
pub fn row_json(cat: &Catalog, img: &RowImage, secrets: Secrets) -> Json {
    let Some(cols) = columns_of(cat, img) else {
        return unknown_json(img, secrets);
    };
    let mut out = Map::new();
    for (c, v) in cols.iter().zip(&img.values) {
        if c.secret && secrets == Secrets::Redact {
            out.insert(c.name.clone(), Json::String(redacted(v)));
        } else if matches!(v, Value::Bytes(_)) {
            out.insert(format!("{}_base64", c.name), value_json(c.ty, v));
        } else {
            out.insert(c.name.clone(), value_json(c.ty, v));
        }
    }
    Json::Object(out)
}

/// An image this member cannot name the columns of: its values only when
/// secrets are included (an export for recovery), by position.
fn unknown_json(img: &RowImage, secrets: Secrets) -> Json {
    let mut out = Map::new();
    out.insert("unknown_shape".into(), Json::String(unknown_shape(img)));
    if secrets == Secrets::Include {
        let values = img
            .values
            .iter()
            .map(|v| value_json(PortableType::Int, v))
            .collect();
        out.insert("values".into(), Json::Array(values));
    }
    Json::Object(out)
}

fn unknown_shape(img: &RowImage) -> String {
    format!(
        "{} values: this member does not capture table {} with that many columns",
        img.values.len(),
        img.table
    )
}

/// What a secret column shows: its size, never its content.
pub fn redacted(v: &Value) -> String {
    match v {
        Value::Text(s) => format!("<redacted {} bytes>", s.len()),
        Value::Bytes(b) => format!("<redacted {} bytes>", b.len()),
        _ => "<redacted>".to_string(),
    }
}

/// A dated integer as text: dates and timestamps formatted, `None` for
/// any other type.
fn dated(ty: PortableType, i: i64) -> Option<String> {
    match ty {
        PortableType::Date => Some(format_date(i)),
        PortableType::Timestamp => Some(format_timestamp(i, false)),
        PortableType::TimestampTz => Some(format_timestamp(i, true)),
        _ => None,
    }
}

fn value_json(ty: PortableType, v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int(i) => dated(ty, *i).map_or_else(|| json!(i), Json::String),
        // JSON has no NaN or infinities: those go as text.
        Value::Real(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Json::String(f.to_string()), Json::Number),
        Value::Bool(b) => json!(b),
        Value::Text(s) => json!(s),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// Longest text shown in a line, in characters.
const LINE_TEXT: usize = 60;
/// Longest bytes value shown as hex in a line.
const LINE_BYTES: usize = 16;

fn value_text(ty: PortableType, v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_string(),
        Value::Int(i) => dated(ty, *i).map_or_else(|| i.to_string(), |d| quoted(&d)),
        Value::Real(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Text(s) => quoted(&shorten(s, LINE_TEXT)),
        Value::Bytes(b) if b.len() <= LINE_BYTES => format!("0x{}", hex::encode(b)),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
    }
}

/// Text as one token of a line: quoted (with escapes) when it is empty or
/// holds spaces, quotes, `=` or control characters.
fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if plain {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// The non-key columns of an upsert as `column=value` pairs.
fn detail(cat: &Catalog, img: &RowImage) -> String {
    let Some(cols) = columns_of(cat, img) else {
        return format!("<{}>", unknown_shape(img));
    };
    let key_len = img.key().len();
    cols.iter()
        .zip(&img.values)
        .skip(key_len)
        .map(|(c, v)| {
            let shown = if c.secret {
                redacted(v)
            } else {
                value_text(c.ty, v)
            };
            format!("{}={shown}", c.name)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One human-readable line per change: position, table, op, key, and for
/// an upsert its other columns.
pub fn change_line(cat: &Catalog, c: &Change) -> String {
    let detail = match &c.op {
        ChangeOp::Upsert(img) => detail(cat, img),
        ChangeOp::Delete { .. } => String::new(),
        ChangeOp::Schema(s) => format!("schema version {} ({})", s.version, s.fingerprint),
    };
    format!(
        "{:>6}/{:<10} {:<8} {:<6} {} {}",
        c.pos.epoch,
        c.pos.seq,
        c.table_str(),
        c.op_name(),
        key_text(c.key()),
        detail
    )
    .trim_end()
    .to_string()
}

/// `understudy log`'s output for `changes`: one line each, or (`json`)
/// one JSON array.
pub fn render_log(cat: &Catalog, changes: &[Change], json: bool) -> String {
    if json {
        let docs: Vec<Json> = changes.iter().map(|c| change_json(cat, c)).collect();
        // Serialising a `serde_json::Value` cannot fail.
        let mut out = serde_json::to_string_pretty(&docs).unwrap_or_default();
        out.push('\n');
        out
    } else {
        changes.iter().map(|c| change_line(cat, c) + "\n").collect()
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests;
