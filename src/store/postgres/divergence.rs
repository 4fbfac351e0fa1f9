//! PostgreSQL side of rejoin: rewinding a former active's divergent tail
//! into `us_divergence`, listing and resolving what it holds (the
//! sequencer's late staged rows, with seq 0, included), and merging epoch
//! history from the active.
//!
//! Owns: the statements behind [`MemberStore::quarantine_tail`],
//! `divergence_list`, `resolve_divergence`, `divergent_count` and
//! `merge_epoch_history` for PostgreSQL.
//! Must never: touch application rows while rewinding, or put a value of a
//! captured table into an error (the quarantine holds whole row images).
//!
//! [`MemberStore::quarantine_tail`]: crate::store::MemberStore::quarantine_tail

use super::{LOG_COLS, NOW_MS, PgStore, conn, decode_change, to_i64, to_u64};
use crate::model::{Position, Role};
use crate::store::{DivergentChange, EpochRecord, MemberStore, StoreError, StoreResult};
use tokio_postgres::types::ToSql;

fn corrupt(what: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

impl PgStore {
    /// See [`MemberStore::quarantine_tail`]. Runs on a connection of its own:
    /// the checks and the move need one transaction, and the shared
    /// connections cannot hold one.
    pub(super) async fn quarantine_tail_pg(
        &self,
        keep: Position,
        reason: &str,
    ) -> StoreResult<u64> {
        let keep_seq = to_i64(keep.seq, "seq")?;
        let keep_epoch = to_i64(keep.epoch, "epoch")?;
        // A half-received batch must not commit on top of a rewound log, and
        // rows that slipped past the fence must be quarantined (the
        // sequencer does that on a member that is not active) before the
        // position moves.
        self.abort_apply().await?;
        self.sequence().await?;
        let mut client = conn::connect(&self.url).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&e))?;
        // The state row's lock also orders this against the sequencer.
        let st = tx
            .query_opt(
                "SELECT role, pos_epoch, pos_seq, \
                        (SELECT seq FROM us_changelog ORDER BY seq DESC LIMIT 1), \
                        (SELECT epoch FROM us_changelog ORDER BY seq DESC LIMIT 1) \
                 FROM us_state WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(|e| self.err(&e))?
            .ok_or_else(|| StoreError::NotInitialised {
                url: self.redacted_url(),
            })?;
        let g = corrupt("us_state");
        let role: String = st.try_get(0).map_err(&g)?;
        if role == Role::Active.as_str() {
            return Err(StoreError::WrongRole {
                role: Role::Active,
                action: "rewind the change log of the active member (fence it first)".into(),
            });
        }
        let pos_epoch: i64 = st.try_get(1).map_err(&g)?;
        let pos_seq: i64 = st.try_get(2).map_err(&g)?;
        let log_seq: Option<i64> = st.try_get(3).map_err(&g)?;
        let log_epoch: Option<i64> = st.try_get(4).map_err(&g)?;
        let head = match (log_seq, log_epoch) {
            (Some(s), Some(e)) if s >= pos_seq => {
                Position::new(to_u64(e, "epoch")?, to_u64(s, "seq")?)
            }
            _ => Position::new(to_u64(pos_epoch, "epoch")?, to_u64(pos_seq, "seq")?),
        };
        if head.seq <= keep.seq {
            // Nothing past the kept seq. At that very seq the member must
            // hold `keep` itself; below it, a later epoch than `keep`'s is
            // another history, not a tail (a member merely behind is fine).
            if head.seq > 0 && ((head.seq == keep.seq && head != keep) || head > keep) {
                return Err(StoreError::ForkBelow {
                    keep_upto: keep,
                    held: head,
                });
            }
            return Ok(0);
        }
        let span = tx
            .query_one(
                "SELECT min(seq) FILTER (WHERE seq > $1), max(seq), \
                        count(*) FILTER (WHERE seq > $1), min(seq), \
                        max(epoch) FILTER (WHERE seq = $1) \
                 FROM us_changelog",
                &[&keep_seq],
            )
            .await
            .map_err(|e| self.err(&e))?;
        let g = corrupt("us_changelog");
        let first: Option<i64> = span.try_get(0).map_err(&g)?;
        let last: Option<i64> = span.try_get(1).map_err(&g)?;
        let n: i64 = span.try_get(2).map_err(&g)?;
        let oldest: Option<i64> = span.try_get(3).map_err(&g)?;
        let at_keep: Option<i64> = span.try_get(4).map_err(&g)?;
        let want = to_i64(head.seq - keep.seq, "tail length")?;
        if first != Some(keep_seq + 1) || last != Some(to_i64(head.seq, "seq")?) || n != want {
            return Err(StoreError::TailIncomplete {
                keep_upto: keep,
                head,
                oldest: oldest.and_then(|s| u64::try_from(s).ok()),
            });
        }
        if keep.seq > 0
            && let Some(e) = at_keep
            && e != keep_epoch
        {
            return Err(StoreError::ForkBelow {
                keep_upto: keep,
                held: Position::new(to_u64(e, "epoch")?, keep.seq),
            });
        }
        let ran: Option<i64> = tx
            .query_one(
                &format!(
                    "SELECT min(i[1]) FROM us_changelog WHERE seq > $1 AND op = {}",
                    super::values::OP_SCHEMA
                ),
                &[&keep_seq],
            )
            .await
            .map_err(|e| self.err(&e))?
            .try_get(0)
            .map_err(&g)?;
        if let Some(v) = ran {
            return Err(StoreError::Shape(format!(
                "schema version {v} ran here but never reached the cluster (it is in the tail after {keep}), and PostgreSQL members do not give a schema change back by themselves: this member stays out of replication, its tables and log untouched; rebuild it by hand as the README's \"Schema changes\" section says (keep a copy, re-create its tables as the active has them, init, copy us_app_schema, resnapshot)"
            )));
        }
        let moved = tx
            .execute(
                &format!(
                    "INSERT INTO us_divergence (epoch, seq, {LOG_COLS}, reason) \
                     SELECT epoch, seq, {LOG_COLS}, $2 \
                     FROM us_changelog WHERE seq > $1 ORDER BY seq"
                ),
                &[&keep_seq, &reason],
            )
            .await
            .map_err(|e| self.err(&e))?;
        let deleted = tx
            .execute("DELETE FROM us_changelog WHERE seq > $1", &[&keep_seq])
            .await
            .map_err(|e| self.err(&e))?;
        if moved != deleted {
            return Err(StoreError::Backend(format!(
                "quarantine copied {moved} changes but the change log lost {deleted}; rolled back"
            )));
        }
        tx.execute(
            "UPDATE us_state SET pos_epoch = $1, pos_seq = $2 WHERE id = 1",
            &[&keep_epoch, &keep_seq],
        )
        .await
        .map_err(|e| self.err(&e))?;
        // The rows the tail changed are restored by a snapshot: owed from
        // this commit until an install's commit, across restarts.
        tx.execute(
            &format!(
                "INSERT INTO us_snapshot_due (id, reason, at_ms) VALUES (1, $1, {NOW_MS}) \
                 ON CONFLICT (id) DO UPDATE SET reason = EXCLUDED.reason, at_ms = EXCLUDED.at_ms"
            ),
            &[&reason],
        )
        .await
        .map_err(|e| self.err(&e))?;
        tx.commit().await.map_err(|e| self.err(&e))?;
        Ok(moved)
    }

    /// See [`MemberStore::divergence_list`].
    pub(super) async fn divergence_list_pg(
        &self,
        include_resolved: bool,
    ) -> StoreResult<Vec<DivergentChange>> {
        let (tables, older) = self.tables_and_older()?;
        let c = self.reader.get().await?;
        let sql = format!(
            "SELECT seq, epoch, {LOG_COLS}, id, quarantined_at, reason, resolved \
             FROM us_divergence {} ORDER BY id",
            if include_resolved {
                ""
            } else {
                "WHERE NOT resolved"
            }
        );
        let rows = c.query(&sql, &[]).await.map_err(|e| self.err(&e))?;
        let g = corrupt("us_divergence");
        rows.iter()
            .map(|r| {
                // Read with the tables the change was captured under (seq
                // 0: a late write past the fence, captured with today's).
                let seq = to_u64(r.try_get(0).map_err(&g)?, "seq")?;
                let at = match seq {
                    0 => &tables,
                    s => crate::store::versions::tables_at(&older, &tables, s),
                };
                Ok(DivergentChange {
                    change: decode_change(at, r, 0)?,
                    id: r.try_get(9).map_err(&g)?,
                    quarantined_at_ms: r.try_get(10).map_err(&g)?,
                    reason: r.try_get(11).map_err(&g)?,
                    resolved: r.try_get(12).map_err(&g)?,
                    tables: None,
                })
            })
            .collect()
    }

    /// See [`MemberStore::resolve_divergence`].
    pub(super) async fn resolve_divergence_pg(&self, ids: Option<&[i64]>) -> StoreResult<u64> {
        match ids {
            None => {
                self.ctl_execute(
                    "UPDATE us_divergence SET resolved = true WHERE NOT resolved",
                    &[],
                )
                .await
            }
            Some(ids) => {
                let ids = ids.to_vec();
                self.ctl_execute(
                    "UPDATE us_divergence SET resolved = true WHERE id = ANY($1) AND NOT resolved",
                    &[&ids],
                )
                .await
            }
        }
    }

    /// See [`MemberStore::divergent_count`].
    pub(super) async fn divergent_count_pg(&self) -> StoreResult<u64> {
        let c = self.reader.get().await?;
        let row = c
            .query_one("SELECT count(*) FROM us_divergence WHERE NOT resolved", &[])
            .await
            .map_err(|e| self.err(&e))?;
        let n: i64 = row.try_get(0).map_err(corrupt("us_divergence"))?;
        to_u64(n, "count")
    }

    /// See [`MemberStore::merge_epoch_history`]: one statement, so the
    /// records arrive together or not at all.
    pub(super) async fn merge_epoch_history_pg(&self, recs: &[EpochRecord]) -> StoreResult<u64> {
        if recs.is_empty() {
            return Ok(0);
        }
        let mut epochs = Vec::with_capacity(recs.len());
        let mut actives = Vec::with_capacity(recs.len());
        let mut start_epochs = Vec::with_capacity(recs.len());
        let mut start_seqs = Vec::with_capacity(recs.len());
        let mut ats = Vec::with_capacity(recs.len());
        let mut reasons = Vec::with_capacity(recs.len());
        for r in recs {
            epochs.push(to_i64(r.epoch.0, "epoch")?);
            actives.push(r.active.as_str().to_string());
            start_epochs.push(to_i64(r.start.epoch, "epoch")?);
            start_seqs.push(to_i64(r.start.seq, "seq")?);
            ats.push(r.at_ms);
            reasons.push(r.reason.clone());
        }
        let params: [&(dyn ToSql + Sync); 6] = [
            &epochs,
            &actives,
            &start_epochs,
            &start_seqs,
            &ats,
            &reasons,
        ];
        self.ctl_execute(
            "INSERT INTO us_epoch_history (epoch, active, start_epoch, start_seq, at_ms, reason) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
                                  $5::bigint[], $6::text[]) \
             ON CONFLICT (epoch) DO NOTHING",
            &params,
        )
        .await
    }
}
