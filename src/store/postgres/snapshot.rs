//! PostgreSQL snapshots: a consistent chunked read of the application tables
//! at an exact change-log position (the active's side), and the install of
//! one in a single transaction on the apply connection (the passive's side).
//!
//! Owns: the two dedicated connections of a snapshot read (the short
//! sequencing transaction that exports its snapshot, and the long read-only
//! transaction that imports it), the read cursors, and the install
//! statements.
//! Must never: hold the state row's lock for longer than the sequencing step
//! (the lease renewal and the sequencer need it), or let an install become
//! visible before its commit.
//!
//! Why two transactions: committed application transactions may still sit
//! in `us_capture`, reflected in the tables but not yet in the change log,
//! so "the tables as of a snapshot" and "the log head as of it" need not
//! agree. Transaction A (REPEATABLE READ) locks the state row and runs the
//! sequencer's move: everything committed before A's snapshot gets its seq,
//! and the new head is exactly the history A's snapshot reflects. A exports
//! that snapshot; transaction B (REPEATABLE READ, READ ONLY) imports it
//! before A commits, then reads the tables through cursors for as long as the
//! copy takes. A commits at once, so the lock is held for milliseconds.

use super::batch::{Columns, insert_sql};
use super::conn::{self, query_error};
use super::{PgStore, sequence_sql, table_row, to_i64, to_u64};
use crate::model::{Entity, Position, RowImage};
use crate::store::{StoreError, StoreResult};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// Rows fetched per cursor round trip.
const FETCH_ROWS: usize = 500;

fn cursor_name(e: Entity) -> &'static str {
    match e {
        Entity::Project => "us_snap_projects",
        Entity::Job => "us_snap_jobs",
        Entity::Key => "us_snap_keys",
    }
}

fn cursor_select(e: Entity) -> &'static str {
    match e {
        Entity::Project => "SELECT name, description, config, updated_at FROM projects",
        Entity::Job => {
            "SELECT id, project, name, group_path, description, definition, schedule, \
                    schedule_enabled, execution_enabled, owner_member, updated_at FROM jobs"
        }
        Entity::Key => "SELECT path, kind, content, meta, updated_at FROM keys",
    }
}

/// A consistent read of projects, jobs and keys (see
/// [`crate::store::MemberStore::snapshot_reader`]).
pub struct PgSnapshot {
    url: String,
    /// Holds the read-only transaction B; dropping it ends the transaction.
    client: Client,
    position: Position,
    rows_total: u64,
    table: usize,
    /// Running average row size: FETCH cannot stop at a byte count, so the
    /// page size is chosen from it to stay near the byte limit.
    avg_row_bytes: usize,
}

impl std::fmt::Debug for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshot")
            .field("position", &self.position)
            .field("rows_total", &self.rows_total)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    /// A concurrent state-row update won the race: try again.
    Retry,
    Fail(StoreError),
}

impl PgSnapshot {
    pub(super) async fn open(url: &str) -> StoreResult<PgSnapshot> {
        let mut last = None;
        for attempt in 0..50u64 {
            match Self::try_open(url).await {
                Ok(s) => return Ok(s),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry) => {
                    last = Some(attempt);
                    tokio::time::sleep(std::time::Duration::from_millis(5 + attempt * 5)).await;
                }
            }
        }
        Err(StoreError::Backend(format!(
            "could not take a consistent snapshot: the state row kept changing ({} attempts)",
            last.unwrap_or(0) + 1
        )))
    }

    async fn try_open(url: &str) -> Result<PgSnapshot, Attempt> {
        let fail = |e: &tokio_postgres::Error| {
            if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
                Attempt::Retry
            } else {
                Attempt::Fail(query_error(url, e))
            }
        };
        let a = conn::connect(url).await.map_err(Attempt::Fail)?;
        a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| fail(&e))?;
        let msgs = a
            .simple_query(&sequence_sql())
            .await
            .map_err(|e| fail(&e))?;
        if !msgs
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        {
            return Err(Attempt::Fail(StoreError::NotInitialised {
                url: crate::config::redact_url(url),
            }));
        }
        let row = a
            .query_one(
                "SELECT pos_epoch, pos_seq, pg_export_snapshot() FROM us_state WHERE id = 1",
                &[],
            )
            .await
            .map_err(|e| fail(&e))?;
        let g =
            |e: tokio_postgres::Error| Attempt::Fail(StoreError::Corrupt(format!("us_state: {e}")));
        let pe: i64 = row.try_get(0).map_err(g)?;
        let ps: i64 = row.try_get(1).map_err(g)?;
        let snap: String = row.try_get(2).map_err(g)?;
        let position = Position::new(
            to_u64(pe, "epoch").map_err(Attempt::Fail)?,
            to_u64(ps, "seq").map_err(Attempt::Fail)?,
        );
        let b = conn::connect(url).await.map_err(Attempt::Fail)?;
        // The snapshot id is PostgreSQL's own text (hex and dashes), never
        // user input; quoting keeps it a literal regardless.
        b.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            snap.replace('\'', "''")
        ))
        .await
        .map_err(|e| fail(&e))?;
        a.batch_execute("COMMIT").await.map_err(|e| fail(&e))?;
        drop(a);
        let total: i64 = b
            .query_one(
                "SELECT (SELECT count(*) FROM projects) + (SELECT count(*) FROM jobs) \
                      + (SELECT count(*) FROM keys)",
                &[],
            )
            .await
            .map_err(|e| fail(&e))?
            .try_get(0)
            .map_err(g)?;
        let declare: Vec<String> = Entity::ALL
            .iter()
            .map(|e| {
                format!(
                    "DECLARE {} NO SCROLL CURSOR FOR {}",
                    cursor_name(*e),
                    cursor_select(*e)
                )
            })
            .collect();
        b.batch_execute(&declare.join("; "))
            .await
            .map_err(|e| fail(&e))?;
        Ok(PgSnapshot {
            url: url.to_string(),
            client: b,
            position,
            rows_total: u64::try_from(total).unwrap_or(0),
            table: 0,
            avg_row_bytes: 1024,
        })
    }

    pub fn position(&self) -> Position {
        self.position
    }

    pub fn rows_total(&self) -> u64 {
        self.rows_total
    }

    pub async fn next_chunk(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<RowImage>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while self.table < Entity::ALL.len() && out.len() < max_rows && bytes < max_bytes {
            let entity = Entity::ALL[self.table];
            let by_bytes = ((max_bytes - bytes) / self.avg_row_bytes.max(1)).max(1);
            let want = (max_rows - out.len()).min(FETCH_ROWS).min(by_bytes);
            let rows = self
                .client
                .query(
                    &format!("FETCH FORWARD {want} FROM {}", cursor_name(entity)),
                    &[],
                )
                .await
                .map_err(|e| query_error(&self.url, &e))?;
            if rows.len() < want {
                self.table += 1;
            }
            let mut page = 0usize;
            for r in &rows {
                let img = table_row(entity, r)?;
                page = page.saturating_add(img.approx_bytes());
                out.push(img);
            }
            if !rows.is_empty() {
                self.avg_row_bytes = (self.avg_row_bytes + page / rows.len()) / 2;
            }
            bytes = bytes.saturating_add(page);
        }
        Ok(out)
    }
}

impl PgStore {
    pub(super) async fn snapshot_open(&self) -> StoreResult<PgSnapshot> {
        PgSnapshot::open(&self.url).await
    }

    /// Open the install transaction on the apply connection (apply flag
    /// set) and empty the application tables, the change log and the
    /// staging table inside it. DELETE, not TRUNCATE: TRUNCATE would lock
    /// readers out for the whole install; DELETE lets them see the old
    /// contents until the commit.
    pub(super) async fn install_begin(&self, position: Position) -> StoreResult<()> {
        let mut a = self.apply.lock().await;
        let a = &mut *a;
        if a.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            a.conn = None;
        }
        if let Some((client, _)) = a.conn.as_ref()
            && (a.open.take().is_some() || a.installing.take().is_some())
        {
            tracing::warn!("rolling back an open apply transaction for a snapshot install");
            Self::rollback_quietly(client).await;
        }
        a.open = None;
        a.installing = None;
        if a.conn.is_none() {
            let client = conn::connect(&self.url).await?;
            let stmts = super::batch::ApplyStmts::prepare(&client)
                .await
                .map_err(|e| self.err(&e))?;
            a.conn = Some((client, stmts));
        }
        let Some((client, _)) = a.conn.as_ref() else {
            return Err(StoreError::Backend("apply connection missing".into()));
        };
        let res = client
            .batch_execute(
                "BEGIN; SET LOCAL understudy.applying = 'on'; \
                 DELETE FROM us_changelog; DELETE FROM us_capture; \
                 DELETE FROM keys; DELETE FROM jobs; DELETE FROM projects",
            )
            .await;
        if let Err(e) = res {
            Self::rollback_quietly(client).await;
            return Err(self.err(&e));
        }
        a.installing = Some(position);
        Ok(())
    }

    pub(super) async fn install_rows(&self, rows: &[RowImage]) -> StoreResult<()> {
        let mut a = self.apply.lock().await;
        let a = &mut *a;
        let (Some(_), Some((client, _))) = (a.installing, a.conn.as_ref()) else {
            return Err(StoreError::Backend(
                "no snapshot install is open (it was rolled back)".into(),
            ));
        };
        // Runs of one table go in one multi-row INSERT (unnest of arrays):
        // one round trip per run instead of one per row.
        let mut i = 0;
        while i < rows.len() {
            let entity = rows[i].entity();
            let run = rows[i..]
                .iter()
                .take_while(|r| r.entity() == entity)
                .count();
            if let Err(e) = insert_run(client, entity, &rows[i..i + run]).await {
                Self::rollback_quietly(client).await;
                a.installing = None;
                return Err(self.err(&e));
            }
            i += run;
        }
        Ok(())
    }

    pub(super) async fn install_commit(&self) -> StoreResult<Position> {
        let mut a = self.apply.lock().await;
        let a = &mut *a;
        let (Some(pos), Some((client, _))) = (a.installing, a.conn.as_ref()) else {
            return Err(StoreError::Backend(
                "no snapshot install is open (it was rolled back)".into(),
            ));
        };
        let (e, s) = (to_i64(pos.epoch, "epoch")?, to_i64(pos.seq, "seq")?);
        let p: [&(dyn ToSql + Sync); 2] = [&e, &s];
        // Whatever snapshot a quarantine left owed, this one pays it.
        let upd = match client
            .execute(
                "UPDATE us_state SET pos_epoch = $1, pos_seq = $2 WHERE id = 1",
                &p,
            )
            .await
        {
            Ok(_) => client.execute("DELETE FROM us_snapshot_due", &[]).await,
            Err(e) => Err(e),
        };
        a.installing = None;
        let res = match upd {
            Ok(_) => client.batch_execute("COMMIT").await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            Self::rollback_quietly(client).await;
            return Err(self.err(&e));
        }
        Ok(pos)
    }
}

async fn insert_run(
    client: &Client,
    entity: Entity,
    rows: &[RowImage],
) -> Result<u64, tokio_postgres::Error> {
    let cols = Columns::of_images(entity, rows.iter());
    client.execute(insert_sql(entity), &cols.params()).await
}
