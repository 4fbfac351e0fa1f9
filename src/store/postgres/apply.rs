//! The passive's apply path on PostgreSQL: the dedicated apply connection,
//! its possibly open transaction, and one call of
//! [`crate::store::MemberStore::apply`] from the position check to the
//! pipelined commit.
//!
//! Owns: the apply connection's life (connect, prepare the statements for
//! the current catalog, re-prepare when it is read again), the checks a
//! batch passes before anything is written (consecutive positions, each
//! change fits its table), and the order of the commit's messages.
//! Must never: write part of a batch that failed its checks, let the COMMIT
//! go out ahead of the batch's statements, or keep an apply transaction
//! across a lost connection.
//!
//! One apply transaction costs two round trips: `BEGIN`, the transaction's
//! settings and the read of the position in one simple query; then the
//! changes' prepared statements, the position's `UPDATE` and `COMMIT`
//! pipelined.

use super::PgStore;
use super::batch::{self, ApplyStmts, Checked};
use super::values::Tables;
use super::{LOG_HEAD, position_in, to_i64};
use super::{conn, ddl};
use crate::model::{Change, ChangeOp, Position};
use crate::store::{StoreError, StoreResult};
use std::sync::Arc;
use tokio_postgres::Client;

/// The apply connection and its possibly open transaction.
#[derive(Default)]
pub(super) struct ApplyConn {
    pub(super) conn: Option<(Client, ApplyStmts)>,
    /// `Some(applied)` while a transaction is open: the position reached in it.
    pub(super) open: Option<Position>,
    /// `Some(snapshot position)` while a snapshot install transaction is open.
    pub(super) installing: Option<Position>,
    /// The tables the open install's schema changes brought (see
    /// [`PgStore::install_schema`]): they take over at its commit.
    pub(super) install_tables: Option<Arc<Tables>>,
    /// A set-based batch ending here failed on a constraint its plan does
    /// not know (see [`batch::one_by_one`]): changes up to here are applied
    /// one statement per change when the stream sends them again.
    careful_until: Option<Position>,
}

/// A constraint whose check depends on the order rows are written in:
/// a unique key (other than the primary key, which the plan handles), a
/// foreign key, an exclusion constraint.
fn order_dependent(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::FOREIGN_KEY_VIOLATION
            || *c == SqlState::EXCLUSION_VIOLATION
    })
}

impl PgStore {
    /// Connect the apply connection if needed, and prepare its statements
    /// for the current catalog (again, when it was read anew since).
    pub(super) async fn ready_apply_conn(&self, a: &mut ApplyConn) -> StoreResult<()> {
        let tables = self.tables()?;
        match a.conn.take() {
            Some((client, stmts)) if Arc::ptr_eq(&stmts.tables, &tables) => {
                a.conn = Some((client, stmts));
            }
            Some((client, _)) => {
                let stmts = ApplyStmts::prepare(&client, tables)
                    .await
                    .map_err(|e| self.err(&e))?;
                a.conn = Some((client, stmts));
            }
            None => {
                let client = conn::connect(&self.url).await?;
                let stmts = ApplyStmts::prepare(&client, tables)
                    .await
                    .map_err(|e| self.err(&e))?;
                a.conn = Some((client, stmts));
            }
        }
        Ok(())
    }

    /// Open the apply transaction and read where it starts, in one round
    /// trip. Apply commits do not wait for their WAL flush, as a logical
    /// replication subscriber's do not: the rows and the position commit
    /// or vanish together, so a server crash that loses the last few
    /// hundred milliseconds of applies rewinds the position with them and
    /// the stream resends them (the SQLite passive's `synchronous = NORMAL`
    /// makes the same trade). Votes, roles and leases are separate
    /// transactions and stay synchronous; their flush also makes every
    /// earlier apply durable.
    async fn begin_apply(&self, client: &Client) -> StoreResult<Position> {
        let msgs = client
            .simple_query(&format!(
                "BEGIN; SET LOCAL understudy.applying = 'on'; \
                 SET LOCAL synchronous_commit = off; \
                 SELECT pos_epoch, pos_seq, {LOG_HEAD} FROM us_state WHERE id = 1"
            ))
            .await;
        let started = match msgs {
            Ok(m) => position_in(&m).and_then(|p| {
                p.ok_or_else(|| StoreError::NotInitialised {
                    url: self.redacted_url(),
                })
            }),
            Err(e) => Err(self.err(&e)),
        };
        if started.is_err() {
            Self::rollback_quietly(client).await;
        }
        started
    }

    /// See [`crate::store::MemberStore::apply`]: row changes in the open
    /// apply transaction, each schema change in a transaction of its own
    /// (what came before it commits first, whatever becomes of it).
    pub(super) async fn apply_pg(&self, changes: &[Change], commit: bool) -> StoreResult<Position> {
        let mut a = self.apply.lock().await;
        let a = &mut *a;
        let mut rest = changes;
        loop {
            let n = rest
                .iter()
                .position(|c| matches!(c.op, ChangeOp::Schema(_)))
                .unwrap_or(rest.len());
            let Some(ch) = rest.get(n) else {
                return self.apply_rows(a, rest, commit).await;
            };
            if n > 0 || a.open.is_some() {
                self.apply_rows(a, &rest[..n], true).await?;
            }
            let reached = self.apply_schema(a, ch).await?;
            rest = &rest[n + 1..];
            if rest.is_empty() {
                return Ok(reached);
            }
        }
    }

    /// Row changes (no schema change among them) in the open apply
    /// transaction, committed with the position when `commit`.
    async fn apply_rows(
        &self,
        a: &mut ApplyConn,
        changes: &[Change],
        commit: bool,
    ) -> StoreResult<Position> {
        if a.installing.is_some() {
            return Err(StoreError::Backend(
                "a snapshot install is open: changes apply after its commit".into(),
            ));
        }
        if a.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            a.conn = None;
            if a.open.take().is_some() {
                return Err(StoreError::Unreachable {
                    url: self.redacted_url(),
                    reason: "the connection closed with an apply transaction open; \
                             its changes were rolled back"
                        .into(),
                });
            }
        }
        self.ready_apply_conn(a).await?;
        let Some((client, stmts)) = a.conn.as_ref() else {
            return Err(StoreError::Backend("apply connection missing".into()));
        };
        // Start (or continue) the transaction and learn the applied position.
        let (applied, fresh) = match a.open {
            Some(p) => (p, false),
            None => (self.begin_apply(client).await?, true),
        };
        // Check the whole batch before touching anything: a batch out of
        // order or out of shape leaves the transaction as it was.
        let careful = a.careful_until.is_some_and(|until| applied < until);
        let checked = check_batch(&stmts.tables, changes, applied).and_then(|(reached, todo)| {
            let b = batch::build(stmts, &todo, careful).map_err(StoreError::Shape)?;
            Ok((reached, b))
        });
        let (reached, batch) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                if fresh {
                    Self::rollback_quietly(client).await;
                }
                return Err(e);
            }
        };
        a.open = Some(applied);
        if !commit {
            if let Err(e) = batch.run(client, stmts).await {
                Self::rollback_quietly(client).await;
                a.open = None;
                return Err(self.failed(&mut a.careful_until, careful, reached, &e));
            }
            a.open = Some(reached);
            return Ok(reached);
        }
        // The changes, the position and the COMMIT pipelined in one round
        // trip, in this order. The changes' statements are prepared, so each
        // goes out when first polled, and `join` polls them before the
        // COMMIT's message; the position's UPDATE travels with the COMMIT
        // in one message (integers only, so formatting them in is safe). An
        // unprepared statement here would go out behind the COMMIT (it is
        // parsed first) and commit on its own: the test
        // `an_apply_commits_rows_and_position_in_one_transaction` checks the
        // order. If a change fails, the server skips the rest of the message
        // and the transaction is rolled back below.
        let (e, s) = (to_i64(reached.epoch, "epoch")?, to_i64(reached.seq, "seq")?);
        let finish =
            format!("UPDATE us_state SET pos_epoch = {e}, pos_seq = {s} WHERE id = 1; COMMIT");
        let (applied_rows, committed) =
            futures_util::future::join(batch.run(client, stmts), client.batch_execute(&finish))
                .await;
        a.open = None;
        if let Err(e) = applied_rows.and(committed) {
            Self::rollback_quietly(client).await;
            return Err(self.failed(&mut a.careful_until, careful, reached, &e));
        }
        if a.careful_until.is_some_and(|until| reached >= until) {
            a.careful_until = None;
        }
        Ok(reached)
    }

    /// Apply one schema change in a transaction of its own (nothing else
    /// open on the apply connection): the entry is skipped when already
    /// applied, refused when not next.
    async fn apply_schema(&self, a: &mut ApplyConn, ch: &Change) -> StoreResult<Position> {
        let ChangeOp::Schema(sc) = &ch.op else {
            return Err(StoreError::Backend("not a schema change".into()));
        };
        if a.installing.is_some() {
            return Err(StoreError::Backend(
                "a snapshot install is open: changes apply after its commit".into(),
            ));
        }
        let before = self.tables()?.catalog.clone();
        if a.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            a.conn = None;
        }
        self.ready_apply_conn(a).await?;
        let Some((client, _)) = a.conn.as_ref() else {
            return Err(StoreError::Backend("apply connection missing".into()));
        };
        let _gate = self.schema_gate.write().await;
        let applied = self.begin_apply(client).await?;
        if ch.pos <= applied {
            Self::rollback_quietly(client).await;
            return Ok(applied);
        }
        if ch.pos.seq != applied.seq + 1 {
            Self::rollback_quietly(client).await;
            return Err(StoreError::OutOfOrder {
                applied,
                got: ch.pos,
            });
        }
        // A schema change commits synchronously, unlike row applies.
        let run = async {
            client
                .batch_execute("SET LOCAL synchronous_commit = on")
                .await
                .map_err(|e| self.err(&e))?;
            let t =
                ddl::apply_on_passive(client, &self.url, &self.spec, &before, sc, ch.pos).await?;
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| self.err(&e))?;
            Ok::<_, StoreError>(t)
        };
        let tables = match run.await {
            Ok(t) => t,
            Err(e) => {
                Self::rollback_quietly(client).await;
                return Err(e);
            }
        };
        let older = ddl::older_tables(client, &self.url).await?;
        self.set_schema(tables, older);
        tracing::info!(version = sc.version, position = %ch.pos, "applied schema change");
        Ok(ch.pos)
    }

    /// The error of a failed batch that reached `reached`. A set-based
    /// batch that failed on an order-dependent constraint is applied one
    /// change at a time when it comes again (the applier rolls back and
    /// the stream resends from the committed position).
    fn failed(
        &self,
        careful_until: &mut Option<Position>,
        careful: bool,
        reached: Position,
        e: &tokio_postgres::Error,
    ) -> StoreError {
        if !careful && order_dependent(e) {
            tracing::warn!(
                upto = %reached,
                error = %conn::describe(e),
                "a set-based apply ran into a constraint; the changes up to here are applied \
                 again one at a time, in log order, when the stream resends them"
            );
            *careful_until = Some(careful_until.map_or(reached, |u| u.max(reached)));
        }
        self.err(e)
    }

    /// See [`crate::store::MemberStore::abort_apply`].
    pub(super) async fn abort_apply_pg(&self) -> StoreResult<()> {
        let mut a = self.apply.lock().await;
        let installing = a.installing.take().is_some();
        a.install_tables = None;
        if (a.open.take().is_some() || installing)
            && let Some((client, _)) = a.conn.as_ref()
        {
            if client.is_closed() {
                a.conn = None;
                return Ok(());
            }
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| self.err(&e))?;
        }
        Ok(())
    }
}

/// The changes of `changes` past `applied`, each checked against the
/// catalog, and the position they reach. Refuses a gap, a fork (the same
/// seq under another position) and a change that does not fit its table.
fn check_batch<'a>(
    tables: &Tables,
    changes: &'a [Change],
    applied: Position,
) -> StoreResult<(Position, Vec<Checked<'a>>)> {
    let mut reached = applied;
    let mut todo = Vec::with_capacity(changes.len());
    for ch in changes {
        if ch.pos <= reached {
            continue;
        }
        if ch.pos.seq != reached.seq + 1 {
            return Err(StoreError::OutOfOrder {
                applied: reached,
                got: ch.pos,
            });
        }
        to_i64(ch.pos.seq, "seq")?;
        to_i64(ch.pos.epoch, "epoch")?;
        let codec = tables.check(ch).map_err(StoreError::Shape)?;
        reached = ch.pos;
        todo.push((codec.id, ch));
    }
    Ok((reached, todo))
}
