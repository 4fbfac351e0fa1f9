//! The captured tables' schema versions (`understudy migrate`), the part
//! both backends share: the description of a version as stored in
//! `us_app_schema.catalog`, which version's tables a change-log entry was
//! captured under, and how a passive words drift.
//!
//! Owns: the JSON form of a version's tables, the `(end seq, tables)` list
//! of earlier versions, and the drift message.
//! Must never: touch a database (each backend reads and writes its own
//! history table) or decide anything about positions beyond the lookup.

use super::{StoreError, StoreResult};
use crate::model::SchemaChange;
use crate::tables::Catalog;
use std::sync::Arc;

/// Earlier versions' tables, each with the seq of the schema change that
/// ended it, oldest first.
pub(crate) type Older<T> = Vec<(u64, Arc<T>)>;

/// A version's tables as `us_app_schema.catalog` holds them.
pub(crate) fn catalog_json(c: &Catalog) -> StoreResult<String> {
    serde_json::to_string(c.tables())
        .map_err(|e| StoreError::Backend(format!("describing the captured tables: {e}")))
}

/// The tables of `version` from their stored description.
pub(crate) fn catalog_from_json(version: u64, json: &str) -> StoreResult<Catalog> {
    let bad = |why: String| StoreError::Corrupt(format!("us_app_schema version {version}: {why}"));
    let tables = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    Catalog::build(tables, &[]).map_err(|e| bad(e.to_string()))
}

/// From every recorded version's `(seq of the change that began it,
/// tables)`, oldest first, the earlier versions with the seq that ended
/// each (the next version's seq): a change-log entry at seq `s` was
/// captured under the last version whose seq is below `s`.
pub(crate) fn older<T>(versions: Vec<(u64, Catalog)>, make: impl Fn(Catalog) -> T) -> Older<T> {
    let ends: Vec<u64> = versions.iter().skip(1).map(|(seq, _)| *seq).collect();
    versions
        .into_iter()
        .zip(ends)
        .map(|((_, cat), end)| (end, Arc::new(make(cat))))
        .collect()
}

/// The tables a change-log entry at `seq` was captured under: an older
/// version's when a schema change followed it, else `current`.
pub(crate) fn tables_at<'a, T>(older: &'a [(u64, Arc<T>)], current: &'a T, seq: u64) -> &'a T {
    older
        .iter()
        .find(|(end, _)| seq < *end)
        .map_or(current, |(_, t)| t)
}

/// Drift: `sc` cannot be applied on this member, because of `why`.
pub(crate) fn drift(sc: &SchemaChange, why: &str) -> StoreError {
    StoreError::Shape(format!(
        "schema version {} cannot be applied here: {why}; this member's captured tables differ from what the active had before it: compare `understudy tables` on both and repair this member's schema by hand (applying resumes by itself once it matches)",
        sc.version
    ))
}

/// Refuse `sc` on a member at version `have` unless it is the next one.
pub(crate) fn check_next(sc: &SchemaChange, have: u64) -> StoreResult<()> {
    if sc.version == have + 1 {
        return Ok(());
    }
    Err(drift(
        sc,
        &format!(
            "this member is at schema version {have}, and the change brings version {}",
            sc.version
        ),
    ))
}

/// Refuse tables of fingerprint `got` after `sc`'s DDL unless they are
/// the active's.
pub(crate) fn check_fingerprint(sc: &SchemaChange, got: &str) -> StoreResult<()> {
    if got == sc.fingerprint {
        return Ok(());
    }
    Err(drift(
        sc,
        &format!(
            "after the DDL the captured tables have fingerprint {got}, the active's {}",
            sc.fingerprint
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_decodes_with_the_version_it_was_captured_under() {
        let empty = || Catalog::build(Vec::new(), &[]).unwrap();
        // Version 0 from the start, version 1 began at seq 10, 2 at 25.
        let older = older(vec![(0, empty()), (10, empty()), (25, empty())], |_| 0u8);
        let ends: Vec<u64> = older.iter().map(|(e, _)| *e).collect();
        assert_eq!(ends, vec![10, 25]);
        let tagged: Older<u8> = vec![(10, Arc::new(0)), (25, Arc::new(1))];
        assert_eq!(*tables_at(&tagged, &2, 3), 0);
        assert_eq!(*tables_at(&tagged, &2, 10), 1);
        assert_eq!(*tables_at(&tagged, &2, 24), 1);
        assert_eq!(*tables_at(&tagged, &2, 25), 2);
        assert_eq!(*tables_at(&tagged, &2, 99), 2);
    }
}
