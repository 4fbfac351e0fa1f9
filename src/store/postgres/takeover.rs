//! What a new PostgreSQL active does to the application's own tables:
//! take over rows owned by another member, and move id generators past the
//! rows replication wrote.
//!
//! Owns: the statements behind [`MemberStore::take_over`] and
//! [`MemberStore::advance_id_generators`] for PostgreSQL.
//! Must never: set `understudy.applying` for the takeover (it must pass
//! the fence and be captured like an application's write), move a sequence
//! backwards, or print a value of a captured table.
//!
//! Why sequences need moving: a passive's rows arrive with their ids
//! written explicitly, which never calls `nextval`, so a passive's
//! `bigserial`/identity sequences stand where they were; after a
//! promotion the application's next insert with a default id would
//! collide with a replicated row.
//!
//! [`MemberStore::take_over`]: crate::store::MemberStore::take_over
//! [`MemberStore::advance_id_generators`]: crate::store::MemberStore::advance_id_generators

use super::PgStore;
use super::catalog::quote_ident;
use crate::store::{StoreError, StoreResult};
use crate::tables::{IdSource, PortableType, TableName};

impl PgStore {
    /// See [`crate::store::MemberStore::take_over`]: on the control
    /// connection, which never sets `understudy.applying`, so the fence and
    /// the capture triggers see an application write.
    pub(super) async fn take_over_pg(
        &self,
        table: &TableName,
        owner_column: &str,
        from: Option<&str>,
        to: &str,
    ) -> StoreResult<u64> {
        let tables = self.tables()?;
        let codec = tables.get(table).ok_or_else(|| {
            StoreError::Shape(format!(
                "take-over of {table}: the table is not captured; list it in [capture] tables"
            ))
        })?;
        let slot = codec
            .slots
            .iter()
            .find(|s| s.column == owner_column)
            .ok_or_else(|| {
                StoreError::Shape(format!(
                    "take-over of {table}: it has no column {owner_column}; name the column that holds the owning member"
                ))
            })?;
        if slot.ty != PortableType::Text {
            return Err(StoreError::Shape(format!(
                "take-over of {table}: {table}.{owner_column} is {}, not text: an owner column holds member ids",
                slot.ty
            )));
        }
        if from == Some(to) {
            return Ok(0);
        }
        let col = quote_ident(owner_column);
        let on = &codec.sql_name;
        match from {
            Some(f) => {
                self.ctl_execute(
                    &format!("UPDATE {on} SET {col} = $1 WHERE {col} = $2"),
                    &[&to, &f],
                )
                .await
            }
            None => {
                self.ctl_execute(
                    &format!("UPDATE {on} SET {col} = $1 WHERE {col} IS NULL"),
                    &[&to],
                )
                .await
            }
        }
    }

    /// See [`crate::store::MemberStore::advance_id_generators`]: for each
    /// column with a sequence, `setval` to the column's largest value when
    /// the sequence's next value would not be past it (ascending sequences
    /// only; an empty table or a sequence already ahead is left alone).
    /// Returns how many sequences moved.
    pub(super) async fn advance_id_generators_pg(&self) -> StoreResult<u64> {
        let tables = self.tables()?;
        let mut moved = 0;
        for (codec, desc) in tables.codecs.iter().zip(tables.catalog.tables()) {
            for c in &desc.columns {
                let Some(IdSource::Sequence(seq)) = &c.ids else {
                    continue;
                };
                if c.ty != PortableType::Int {
                    continue;
                }
                // pg_sequence_last_value is NULL until the first nextval,
                // whose value is then the start value.
                let sql = format!(
                    "SELECT setval(q.seqrelid, m.v, true) \
                       FROM (SELECT max({col})::int8 AS v FROM {on}) m, pg_sequence q \
                      WHERE q.seqrelid = to_regclass($1) AND q.seqincrement > 0 \
                        AND m.v IS NOT NULL \
                        AND m.v >= coalesce(pg_sequence_last_value(q.seqrelid) + q.seqincrement, \
                                            q.seqstart)",
                    col = quote_ident(&c.name),
                    on = codec.sql_name,
                );
                let n = self.ctl_execute(&sql, &[seq]).await?;
                if n > 0 {
                    tracing::info!(table = %codec.name, column = %c.name, sequence = %seq,
                        "moved the id sequence past the replicated rows");
                }
                moved += n;
            }
        }
        Ok(moved)
    }
}
