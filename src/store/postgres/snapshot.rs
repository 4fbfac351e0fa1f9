//! PostgreSQL snapshots: a consistent chunked read of the captured tables
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

use super::batch::{self, InsertError};
use super::conn::{self, query_error};
use super::values::Tables;
use super::{PgStore, ddl, sequence_sql, to_i64, to_u64};
use crate::model::{Position, RowImage, SchemaChange};
use crate::store::{StoreError, StoreResult};
use std::sync::Arc;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// Rows fetched per cursor round trip.
const FETCH_ROWS: usize = 500;

/// The cursor of the captured table at index `i` of the catalog.
fn cursor_name(i: usize) -> String {
    format!("us_snap_{i}")
}

/// A consistent read of the captured tables, parents first (see
/// [`crate::store::MemberStore::snapshot_reader`]).
pub struct PgSnapshot {
    url: String,
    tables: Arc<Tables>,
    /// Holds the read-only transaction B; dropping it ends the transaction.
    client: Client,
    position: Position,
    /// The schema changes the rows are shaped by, read in the same
    /// snapshot (a member behind them runs them in its install).
    schema: Vec<SchemaChange>,
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
    pub(super) async fn open(url: &str, tables: Arc<Tables>) -> StoreResult<PgSnapshot> {
        let mut last = None;
        for attempt in 0..50u64 {
            match Self::try_open(url, &tables).await {
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

    async fn try_open(url: &str, tables: &Arc<Tables>) -> Result<PgSnapshot, Attempt> {
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
        let schema = ddl::changes(&b, url).await.map_err(Attempt::Fail)?;
        let counts: Vec<String> = tables
            .codecs
            .iter()
            .map(|t| format!(" + (SELECT count(*) FROM {})", t.sql_name))
            .collect();
        let total: i64 = b
            .query_one(&format!("SELECT 0::int8{}", counts.concat()), &[])
            .await
            .map_err(|e| fail(&e))?
            .try_get(0)
            .map_err(g)?;
        let declare: Vec<String> = tables
            .codecs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "DECLARE {} NO SCROLL CURSOR FOR SELECT {} FROM {}",
                    cursor_name(i),
                    t.select_list(),
                    t.sql_name
                )
            })
            .collect();
        if !declare.is_empty() {
            b.batch_execute(&declare.join("; "))
                .await
                .map_err(|e| fail(&e))?;
        }
        Ok(PgSnapshot {
            url: url.to_string(),
            tables: Arc::clone(tables),
            client: b,
            position,
            schema,
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

    /// The schema changes the rows are shaped by.
    pub fn schema_changes(&self) -> &[SchemaChange] {
        &self.schema
    }

    /// Whether the rows are read with the tables they have in this
    /// snapshot (a schema change may commit between reading the store's
    /// tables and opening the snapshot).
    fn tables_match(&self) -> bool {
        self.schema
            .last()
            .is_none_or(|sc| sc.fingerprint == self.tables.catalog.fingerprint())
    }

    pub async fn next_chunk(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<RowImage>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while self.table < self.tables.codecs.len() && out.len() < max_rows && bytes < max_bytes {
            let codec = &self.tables.codecs[self.table];
            let by_bytes = ((max_bytes - bytes) / self.avg_row_bytes.max(1)).max(1);
            let want = (max_rows - out.len()).min(FETCH_ROWS).min(by_bytes);
            let rows = self
                .client
                .query(
                    &format!("FETCH FORWARD {want} FROM {}", cursor_name(self.table)),
                    &[],
                )
                .await
                .map_err(|e| query_error(&self.url, &e))?;
            if rows.len() < want {
                self.table += 1;
            }
            let mut page = 0usize;
            for r in &rows {
                let img = codec.image_of_row(r, 0).map_err(StoreError::Corrupt)?;
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
        for _ in 0..20 {
            let s = PgSnapshot::open(&self.url, self.tables()?).await?;
            if s.tables_match() {
                return Ok(s);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(StoreError::Backend(
            "could not open a snapshot: the captured tables kept changing under it (schema changes); try again".into(),
        ))
    }

    /// See [`crate::store::MemberStore::install_snapshot_schema`]: the
    /// changes run inside the open install transaction, and the apply
    /// statements are prepared for the tables they bring (rows of that
    /// shape follow).
    pub(super) async fn install_schema(&self, changes: &[SchemaChange]) -> StoreResult<()> {
        let mut a = self.apply.lock().await;
        let a = &mut *a;
        let (Some(_), Some((client, _))) = (a.installing, a.conn.as_ref()) else {
            return Err(StoreError::Backend(
                "no snapshot install is open (it was rolled back)".into(),
            ));
        };
        let before = self.tables()?.catalog.clone();
        let run = async {
            match ddl::apply_in_install(client, &self.url, &self.spec, &before, changes).await? {
                None => Ok(None),
                Some(t) => {
                    let t = Arc::new(t);
                    let stmts = batch::ApplyStmts::prepare(client, Arc::clone(&t))
                        .await
                        .map_err(|e| self.err(&e))?;
                    Ok(Some((t, stmts)))
                }
            }
        };
        match run.await {
            Ok(None) => Ok(()),
            Ok(Some((t, stmts))) => {
                if let Some((_, s)) = a.conn.as_mut() {
                    *s = stmts;
                }
                a.install_tables = Some(t);
                Ok(())
            }
            Err(e) => {
                Self::rollback_quietly(client).await;
                a.installing = None;
                a.install_tables = None;
                Err(e)
            }
        }
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
        a.install_tables = None;
        self.ready_apply_conn(a).await?;
        let Some((client, stmts)) = a.conn.as_ref() else {
            return Err(StoreError::Backend("apply connection missing".into()));
        };
        // Children first, so no foreign key is in the way (whatever its
        // ON DELETE action).
        let mut sql = "BEGIN; SET LOCAL understudy.applying = 'on'; \
                       DELETE FROM us_changelog; DELETE FROM us_capture"
            .to_string();
        for t in stmts.tables.codecs.iter().rev() {
            sql.push_str(&format!("; DELETE FROM {}", t.sql_name));
        }
        if let Err(e) = client.batch_execute(&sql).await {
            Self::rollback_quietly(client).await;
            return Err(self.err(&e));
        }
        a.installing = Some(position);
        Ok(())
    }

    pub(super) async fn install_rows(&self, rows: &[RowImage]) -> StoreResult<()> {
        let mut a = self.apply.lock().await;
        let a = &mut *a;
        let (Some(_), Some((client, stmts))) = (a.installing, a.conn.as_ref()) else {
            return Err(StoreError::Backend(
                "no snapshot install is open (it was rolled back)".into(),
            ));
        };
        // Runs of one table go in one multi-row INSERT (unnest of arrays):
        // one round trip per run instead of one per row.
        let mut i = 0;
        while i < rows.len() {
            let table = &rows[i].table;
            let run = rows[i..].iter().take_while(|r| &r.table == table).count();
            let res = match check_rows(&stmts.tables, &rows[i..i + run]) {
                Ok(codec) => batch::insert_rows(client, stmts, codec, &rows[i..i + run]).await,
                Err(why) => Err(InsertError::Shape(why)),
            };
            if let Err(e) = res {
                Self::rollback_quietly(client).await;
                a.installing = None;
                return Err(match e {
                    InsertError::Shape(why) => StoreError::Shape(why),
                    InsertError::Db(e) => self.err(&e),
                });
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
        let brought = a.install_tables.take();
        let res = match upd {
            Ok(_) => client.batch_execute("COMMIT").await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            Self::rollback_quietly(client).await;
            return Err(self.err(&e));
        }
        if let Some(t) = brought {
            let older = ddl::older_tables(client, &self.url).await?;
            self.set_schema_arc(t, older);
        }
        Ok(pos)
    }
}

/// Check a run of snapshot rows of one table against the catalog.
fn check_rows<'t>(
    tables: &'t Tables,
    rows: &[RowImage],
) -> Result<&'t super::values::TableCodec, String> {
    let mut codec = None;
    for r in rows {
        codec = Some(tables.check_image(r)?);
    }
    codec.ok_or_else(|| "an empty run of snapshot rows".to_string())
}
