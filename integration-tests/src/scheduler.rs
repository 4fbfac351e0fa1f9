//! The scheduler-shaped fixture (schemas/examples/scheduler.*.sql) as an
//! application uses it: its DDL, the `[capture]`/`[takeover]` config that
//! goes with it, and a seeded workload of multi-table application
//! transactions (a job with its workflow, steps, options and notifications
//! in one transaction; renames; flag, numeric and timestamp changes; key
//! storage upserts with a secret bytes column, one value over 1 MB;
//! non-ASCII text; NULLs; deletes that cascade three levels down), run
//! through each database's own client (rusqlite with `PRAGMA foreign_keys
//! = ON`, tokio-postgres) and retried while the member is fenced.
//!
//! Owns: [`Tx`] (a transaction as data: statements whose arguments may be
//! ids an earlier statement of the same transaction returned, so a refused
//! transaction is re-run whole), [`App`] (one connection of the
//! application, either backend), [`Gen`] (the generator and its model of
//! what committed), and read helpers for assertions (row counts, owners,
//! highest ids, checksums through the member's own capture description).
//! Must never: go through the agent's apply path or lift a fence (it writes
//! as the application does), print a storage `data` value (it is the secret
//! column), or treat an error other than a refusal by the fence, a busy
//! database or a lost connection as retryable (a duplicate id must fail the
//! test at once, with its message).

use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use understudy::config::DatabaseUrl;
use understudy::store::{AnyStore, MemberStore, TableChecksum};
use understudy::tables::{CaptureSpec, canonical};
use understudy::workload::SplitMix;

/// The fixture's DDL for SQLite members.
pub const SQLITE_DDL: &str = include_str!("../../schemas/examples/scheduler.sqlite.sql");
/// The fixture's DDL for PostgreSQL members.
pub const POSTGRES_DDL: &str = include_str!("../../schemas/examples/scheduler.postgres.sql");

/// The fixture's tables, in the order its files create them.
pub const TABLES: [&str; 9] = [
    "project",
    "scheduled_execution",
    "workflow",
    "workflow_step",
    "workflow_workflow_step",
    "rdoption",
    "rdoption_values",
    "notification",
    "storage",
];

/// The tables whose `id` the database generates (AUTOINCREMENT / rowid on
/// SQLite, bigserial / identity on PostgreSQL).
pub const ID_TABLES: [&str; 6] = [
    "scheduled_execution",
    "workflow",
    "workflow_step",
    "rdoption",
    "notification",
    "storage",
];

/// Non-ASCII text the workload writes into names and values.
pub const NON_ASCII: &str = "Größe — 日本語";

/// The `[capture]` and `[takeover]` sections that go with the fixture (as
/// in its header comment), for `ClusterOptions::extra_top`. The owner id is
/// each member's default (its member id) unless [`set_owner_ids`] adds one.
pub fn capture_toml() -> String {
    let tables: Vec<String> = TABLES.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "\n[capture]\ntables = [{}]\nsecret_columns = [\"storage.data\"]\n\n\
         [takeover]\ntable = \"scheduled_execution\"\nowner_column = \"server_nodeuuid\"\npolicy = \"any\"\n",
        tables.join(", ")
    )
}

/// Give every member of a cluster written with [`capture_toml`] an explicit
/// owner id (as Rundeck's server UUIDs): its own `[takeover] owner_id` and
/// each `[[peers]] owner_id`, edited into the config files before `init`.
pub fn set_owner_ids(
    cl: &understudy::localcluster::LocalCluster,
    owners: &[(&str, &str)],
) -> Result<()> {
    for m in &cl.members {
        let mut text = std::fs::read_to_string(&m.config)
            .with_context(|| format!("reading {}", m.config.display()))?;
        let own = owners
            .iter()
            .find(|(id, _)| *id == m.id.as_str())
            .map(|(_, o)| *o)
            .ok_or_else(|| anyhow!("no owner id for member {}", m.id))?;
        let anchor = "owner_column = \"server_nodeuuid\"\n";
        anyhow::ensure!(text.contains(anchor), "{} has no [takeover]", m.id);
        text = text.replacen(anchor, &format!("{anchor}owner_id = {own:?}\n"), 1);
        for (peer, owner) in owners.iter().filter(|(id, _)| *id != m.id.as_str()) {
            let block = format!("[[peers]]\nmember = {peer:?}\n");
            anyhow::ensure!(text.contains(&block), "{} lists no peer {peer}", m.id);
            text = text.replacen(&block, &format!("{block}owner_id = {owner:?}\n"), 1);
        }
        std::fs::write(&m.config, text)?;
    }
    Ok(())
}

/// A statement argument.
#[derive(Clone, Debug)]
pub enum P {
    Null,
    I(i64),
    R(f64),
    B(bool),
    T(String),
    /// Bytes; `Debug` would print them, so statements are never printed
    /// with their arguments (see [`Tx`]'s label).
    X(Vec<u8>),
}

/// An argument: a value, or the id returned by statement `k` of the same
/// transaction.
#[derive(Clone, Debug)]
pub enum Arg {
    V(P),
    Id(usize),
}

fn v(p: P) -> Arg {
    Arg::V(p)
}
fn t(s: impl Into<String>) -> Arg {
    Arg::V(P::T(s.into()))
}
fn opt_t(s: Option<String>) -> Arg {
    s.map_or(Arg::V(P::Null), t)
}

/// One statement. Placeholders are written `$N:type`: `?N` on SQLite,
/// `$N::type` on PostgreSQL, through text for the types a client cannot
/// send directly (numeric, uuid, json/jsonb, date, timestamp[tz]).
#[derive(Clone, Debug)]
pub struct Stmt {
    pub sql: String,
    pub args: Vec<Arg>,
    /// `... RETURNING id`: its result is what later `Arg::Id(k)` refer to.
    pub returns_id: bool,
}

fn stmt(sql: &str, args: Vec<Arg>) -> Stmt {
    Stmt {
        sql: sql.to_string(),
        args,
        returns_id: sql.contains("RETURNING id"),
    }
}

/// What a committed transaction changed, for the generator's model.
#[derive(Clone, Debug)]
pub enum Effect {
    None,
    NewJob {
        uuid: String,
        project: String,
        new_project: bool,
    },
    DeleteJob(String),
    DeleteProject(String),
    NewStorage(StorageKey),
    DeleteStorage(StorageKey),
}

/// `(namespace, dir, name)`: storage's unique key.
pub type StorageKey = (Option<String>, String, String);

/// One application transaction, as data.
#[derive(Clone, Debug)]
pub struct Tx {
    /// What kind of transaction it is (counted in [`Gen::stats`]).
    pub kind: &'static str,
    /// What it does, for messages (never a value of `storage.data`).
    pub label: String,
    pub stmts: Vec<Stmt>,
    pub effect: Effect,
}

/// How many placeholders a template has and its SQL for each backend.
fn translate(sql: &str, pg: bool) -> Result<(String, Vec<&'static str>)> {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut types: BTreeMap<usize, &'static str> = BTreeMap::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let ch = sql[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let n: usize = sql[start..j]
            .parse()
            .with_context(|| format!("placeholder without number in {sql}"))?;
        anyhow::ensure!(b.get(j) == Some(&b':'), "placeholder ${n} without type");
        let ts = j + 1;
        let mut k = ts;
        while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
            k += 1;
        }
        let ty = &sql[ts..k];
        let (base, cast) = match ty {
            "int8" => ("int8", ""),
            "float8" => ("float8", ""),
            "bool" => ("bool", ""),
            "bytea" => ("bytea", ""),
            "text" => ("text", ""),
            "numeric" => ("text", "numeric"),
            "uuid" => ("text", "uuid"),
            "json" => ("text", "json"),
            "jsonb" => ("text", "jsonb"),
            "date" => ("text", "date"),
            "timestamp" => ("text", "timestamp"),
            "timestamptz" => ("text", "timestamptz"),
            other => bail!("unknown placeholder type {other} in {sql}"),
        };
        types.insert(n, base);
        if pg {
            out.push_str(&format!("${n}::{base}"));
            if !cast.is_empty() {
                out.push_str(&format!("::{cast}"));
            }
        } else {
            out.push_str(&format!("?{n}"));
        }
        i = k;
    }
    let n = types.keys().next_back().copied().unwrap_or(0);
    let mut list = Vec::with_capacity(n);
    for k in 1..=n {
        list.push(
            *types
                .get(&k)
                .ok_or_else(|| anyhow!("placeholder ${k} missing in {sql}"))?,
        );
    }
    Ok((out, list))
}

/// A cell of a query result.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

impl Cell {
    pub fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            Cell::Text(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One application connection.
pub enum App {
    Sqlite(rusqlite::Connection),
    Pg(tokio_postgres::Client, tokio::task::JoinHandle<()>),
}

impl Drop for App {
    fn drop(&mut self) {
        if let App::Pg(_, h) = self {
            h.abort();
        }
    }
}

/// An error's message as the database said it (tokio-postgres prints only
/// "db error" at the top).
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => format!("{e:#}"),
    }
}

impl App {
    pub async fn connect(url: &DatabaseUrl) -> Result<App> {
        match url {
            DatabaseUrl::Sqlite(p) => {
                let c = rusqlite::Connection::open(p)
                    .with_context(|| format!("opening {}", p.display()))?;
                c.busy_timeout(Duration::from_secs(5))?;
                c.execute_batch("PRAGMA foreign_keys = ON")?;
                Ok(App::Sqlite(c))
            }
            DatabaseUrl::Postgres(u) => {
                let (client, conn) = tokio_postgres::connect(u, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| anyhow!("connecting to PostgreSQL: {}", pg_message(&e)))?;
                let h = tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(App::Pg(client, h))
            }
        }
    }

    /// SQL without parameters (DDL, BEGIN, COMMIT ...).
    pub async fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            App::Sqlite(c) => c.execute_batch(sql).map_err(|e| anyhow!("{e}")),
            App::Pg(c, _) => c
                .batch_execute(sql)
                .await
                .map_err(|e| anyhow!("{}", pg_message(&e))),
        }
    }

    /// Run one statement; its first row's first column when it returns one.
    async fn run_stmt(&mut self, sql: &str, args: &[P]) -> Result<Option<i64>> {
        let rows = self.query(sql, args).await?;
        Ok(rows.first().and_then(|r| r.first()).and_then(Cell::int))
    }

    /// Run a query (any statement); every row, cells converted.
    pub async fn query(&mut self, sql: &str, args: &[P]) -> Result<Vec<Vec<Cell>>> {
        match self {
            App::Sqlite(c) => {
                let (sql, types) = translate(sql, false)?;
                anyhow::ensure!(types.len() == args.len(), "argument count for {sql}");
                let params: Vec<rusqlite::types::Value> = args
                    .iter()
                    .map(|a| match a {
                        P::Null => rusqlite::types::Value::Null,
                        P::I(i) => rusqlite::types::Value::Integer(*i),
                        P::R(f) => rusqlite::types::Value::Real(*f),
                        P::B(b) => rusqlite::types::Value::Integer(i64::from(*b)),
                        P::T(s) => rusqlite::types::Value::Text(s.clone()),
                        P::X(x) => rusqlite::types::Value::Blob(x.clone()),
                    })
                    .collect();
                let mut st = c.prepare_cached(&sql).map_err(|e| anyhow!("{e}"))?;
                let n = st.column_count();
                let mut rows = st
                    .query(rusqlite::params_from_iter(params.iter()))
                    .map_err(|e| anyhow!("{e}"))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(|e| anyhow!("{e}"))? {
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        use rusqlite::types::ValueRef as R;
                        row.push(match r.get_ref(i).map_err(|e| anyhow!("{e}"))? {
                            R::Null => Cell::Null,
                            R::Integer(i) => Cell::Int(i),
                            R::Real(f) => Cell::Real(f),
                            R::Text(b) => Cell::Text(String::from_utf8_lossy(b).into_owned()),
                            R::Blob(b) => Cell::Bytes(b.to_vec()),
                        });
                    }
                    out.push(row);
                }
                Ok(out)
            }
            App::Pg(c, _) => {
                use tokio_postgres::types::{ToSql, Type};
                let (sql, types) = translate(sql, true)?;
                anyhow::ensure!(types.len() == args.len(), "argument count for {sql}");
                let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
                for (a, ty) in args.iter().zip(&types) {
                    params.push(match (a, *ty) {
                        (P::Null, "int8") => Box::new(None::<i64>),
                        (P::Null, "float8") => Box::new(None::<f64>),
                        (P::Null, "bool") => Box::new(None::<bool>),
                        (P::Null, "bytea") => Box::new(None::<Vec<u8>>),
                        (P::Null, _) => Box::new(None::<String>),
                        (P::I(i), "int8") => Box::new(*i),
                        (P::R(f), "float8") => Box::new(*f),
                        (P::B(b), "bool") => Box::new(*b),
                        (P::X(x), "bytea") => Box::new(x.clone()),
                        (P::T(s), "text") => Box::new(s.clone()),
                        (_, ty) => {
                            bail!("an argument does not fit its placeholder type {ty} in {sql}")
                        }
                    });
                }
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let rows = c
                    .query(&sql, &refs)
                    .await
                    .map_err(|e| anyhow!("{}", pg_message(&e)))?;
                let mut out = Vec::new();
                for r in rows {
                    let mut row = Vec::new();
                    for (i, col) in r.columns().iter().enumerate() {
                        let cell = match *col.type_() {
                            Type::INT8 => r.get::<_, Option<i64>>(i).map(Cell::Int),
                            Type::INT4 => r.get::<_, Option<i32>>(i).map(|x| Cell::Int(x.into())),
                            Type::INT2 => r.get::<_, Option<i16>>(i).map(|x| Cell::Int(x.into())),
                            Type::FLOAT8 => r.get::<_, Option<f64>>(i).map(Cell::Real),
                            Type::BOOL => r.get::<_, Option<bool>>(i).map(Cell::Bool),
                            Type::BYTEA => r.get::<_, Option<Vec<u8>>>(i).map(Cell::Bytes),
                            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                                r.get::<_, Option<String>>(i).map(Cell::Text)
                            }
                            ref other => bail!(
                                "column {} of a query is {other}: cast it to text",
                                col.name()
                            ),
                        };
                        row.push(cell.unwrap_or(Cell::Null));
                    }
                    out.push(row);
                }
                Ok(out)
            }
        }
    }

    /// Run a whole transaction; the ids its `RETURNING id` statements
    /// returned (`None` for the others). Rolled back on any error.
    pub async fn run(&mut self, tx: &Tx) -> Result<Vec<Option<i64>>> {
        let begin = match self {
            App::Sqlite(_) => "BEGIN IMMEDIATE",
            App::Pg(..) => "BEGIN",
        };
        self.batch(begin).await?;
        let r = self.run_in_tx(tx).await;
        match r {
            Ok(ids) => match self.batch("COMMIT").await {
                Ok(()) => Ok(ids),
                Err(e) => {
                    let _ = self.batch("ROLLBACK").await;
                    Err(e)
                }
            },
            Err(e) => {
                let _ = self.batch("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn run_in_tx(&mut self, tx: &Tx) -> Result<Vec<Option<i64>>> {
        let mut ids: Vec<Option<i64>> = Vec::with_capacity(tx.stmts.len());
        for (k, s) in tx.stmts.iter().enumerate() {
            let mut args = Vec::with_capacity(s.args.len());
            for a in &s.args {
                args.push(match a {
                    Arg::V(p) => p.clone(),
                    Arg::Id(j) => P::I(ids.get(*j).copied().flatten().ok_or_else(|| {
                        anyhow!(
                            "statement {k} refers to statement {j}'s id, which it did not return"
                        )
                    })?),
                });
            }
            let got = self
                .run_stmt(&s.sql, &args)
                .await
                .with_context(|| format!("statement {k} of {:?}", tx.label))?;
            if s.returns_id && got.is_none() {
                bail!("statement {k} of {:?} returned no id", tx.label);
            }
            ids.push(if s.returns_id { got } else { None });
        }
        Ok(ids)
    }
}

/// A refusal that goes away by itself: the fence (no lease yet, a failover
/// under way), a busy SQLite database, a PostgreSQL connection that broke.
pub fn retryable(e: &anyhow::Error) -> bool {
    let m = format!("{e:#}");
    m.contains("write refused")
        || m.contains("database is locked")
        || m.contains("database is busy")
        || m.contains("connection closed")
        || m.contains("connecting to PostgreSQL")
        || m.contains("error communicating with the server")
}

/// Run `tx` on `url` until it commits, retrying refusals for up to
/// `patience` (reconnecting each time); any other error fails at once.
/// Returns the transaction's ids and how many attempts were refused.
pub async fn run_retrying(
    app: &mut Option<App>,
    url: &DatabaseUrl,
    tx: &Tx,
    patience: Duration,
) -> Result<(Vec<Option<i64>>, u64)> {
    let deadline = Instant::now() + patience;
    let mut refused = 0;
    loop {
        let r = match app {
            Some(a) => a.run(tx).await,
            None => match App::connect(url).await {
                Ok(a) => app.insert(a).run(tx).await,
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(ids) => return Ok((ids, refused)),
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                refused += 1;
                // A PostgreSQL connection may be the broken part.
                if matches!(url, DatabaseUrl::Postgres(_)) {
                    *app = None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "transaction {:?} failed ({refused} refused attempts before)",
                    tx.label
                )));
            }
        }
    }
}

/// Write `n` generated transactions to `url`, each retried while refused.
/// Returns how many attempts were refused.
pub async fn write(url: &DatabaseUrl, g: &mut Gen, n: usize) -> Result<u64> {
    let mut app = Some(App::connect(url).await?);
    let mut refused = 0;
    for _ in 0..n {
        let tx = g.next_tx();
        let (_, r) = run_retrying(&mut app, url, &tx, Duration::from_secs(45)).await?;
        refused += r;
        g.committed(&tx);
    }
    Ok(refused)
}

/// Create the fixture's tables in a member database, as the application
/// does before `understudy init`.
pub async fn create_fixture(url: &DatabaseUrl) -> Result<()> {
    let mut app = App::connect(url).await?;
    let ddl = match url {
        DatabaseUrl::Sqlite(_) => SQLITE_DDL,
        DatabaseUrl::Postgres(_) => POSTGRES_DDL,
    };
    app.batch(ddl)
        .await
        .context("creating the fixture's tables")
}

/// Checksums of a member's captured tables, opened with its capture spec.
pub async fn checksums(url: &DatabaseUrl, spec: &CaptureSpec) -> Result<Vec<TableChecksum>> {
    let s = AnyStore::open(url, spec).await?;
    Ok(s.checksums().await?)
}

/// Rows per fixture table.
pub async fn row_counts(url: &DatabaseUrl) -> Result<BTreeMap<String, i64>> {
    let mut app = App::connect(url).await?;
    let mut out = BTreeMap::new();
    for t in TABLES {
        let rows = app.query(&format!("SELECT count(*) FROM {t}"), &[]).await?;
        let n = rows[0][0].int().ok_or_else(|| anyhow!("count of {t}"))?;
        out.insert(t.to_string(), n);
    }
    Ok(out)
}

/// `scheduled_execution` rows per owner (`server_nodeuuid`, NULL as None).
pub async fn owners(url: &DatabaseUrl) -> Result<BTreeMap<Option<String>, i64>> {
    let mut app = App::connect(url).await?;
    let rows = app
        .query(
            "SELECT server_nodeuuid, count(*) FROM scheduled_execution GROUP BY server_nodeuuid",
            &[],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r[0].text().map(str::to_string), r[1].int().unwrap_or(-1)))
        .collect())
}

/// The highest id of every table with generated ids (0 when empty).
pub async fn max_ids(url: &DatabaseUrl) -> Result<BTreeMap<String, i64>> {
    let mut app = App::connect(url).await?;
    let mut out = BTreeMap::new();
    for t in ID_TABLES {
        let rows = app
            .query(&format!("SELECT coalesce(max(id), 0) FROM {t}"), &[])
            .await?;
        out.insert(t.to_string(), rows[0][0].int().unwrap_or(-1));
    }
    Ok(out)
}

/// A job inserted with every id left to the database (one of each table
/// with generated ids), retried while refused: the application's first
/// insert on a new active. Returns `table -> id` the database chose.
pub async fn insert_with_default_ids(
    url: &DatabaseUrl,
    g: &mut Gen,
    project: &str,
) -> Result<BTreeMap<String, i64>> {
    let tx = g.job_tx(project, false, Some(1), Some(1), Some(1));
    let mut app = None;
    let (ids, _) = run_retrying(&mut app, url, &tx, Duration::from_secs(45)).await?;
    g.committed(&tx);
    let data = P::X(g.bytes(256));
    let storage = g.storage_insert_tx(Some("keys".into()), data);
    let (sids, _) = run_retrying(&mut app, url, &storage, Duration::from_secs(45)).await?;
    g.committed(&storage);
    let mut out = ids_by_table(&tx, &ids);
    if let Some(Some(id)) = sids.first() {
        out.insert("storage".into(), *id);
    }
    Ok(out)
}

/// The first id each table got from `tx`'s `INSERT ... RETURNING id`
/// statements (`ids` as [`App::run`] returned them).
pub fn ids_by_table(tx: &Tx, ids: &[Option<i64>]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (s, id) in tx.stmts.iter().zip(ids) {
        if let Some(id) = id {
            let table = s
                .sql
                .split_whitespace()
                .nth(2)
                .expect("INSERT INTO <table>")
                .to_string();
            out.entry(table).or_insert(*id);
        }
    }
    out
}

// ------------------------------------------------------------------ generator

/// The workload generator: deterministic from its seed; its model of
/// projects, jobs (by uuid: ids are the database's) and storage rows
/// changes only when a transaction commits ([`Gen::committed`]).
pub struct Gen {
    rng: SplitMix,
    owners: Vec<Option<String>>,
    projects: Vec<String>,
    /// (uuid, project).
    jobs: Vec<(String, String)>,
    storage: Vec<StorageKey>,
    counter: u64,
    /// Transactions [`Gen::next_tx`] made.
    generated: u64,
    big_written: bool,
    /// Exact bytes to store once, in a storage row of its own (a marker
    /// for the secrets checks); `None` once it was generated.
    marker: Option<Vec<u8>>,
    /// Committed transactions by kind.
    stats: BTreeMap<&'static str, u64>,
}

/// Draws of [`Gen::next_tx`] forced in turn: delete a project, delete a
/// job, delete a key, edit a step, change flags, rename, describe.
const FORCED: [u64; 7] = [91, 84, 81, 60, 50, 40, 95];

/// A storage row the workload may delete (not the marker, which the
/// secrets checks look for; not one without namespace, whose key is not
/// unique to SQL's `=`).
fn deletable(k: &StorageKey) -> bool {
    k.0.is_some() && k.1 != "keys/marker"
}

/// 2026-01-01T00:00:00Z in microseconds since 1970.
const BASE_MICROS: i64 = 1_767_225_600_000_000;

impl Gen {
    /// `owners`: the `server_nodeuuid` values new jobs get (None = NULL).
    pub fn new(seed: u64, owners: &[Option<&str>]) -> Gen {
        Gen {
            rng: SplitMix::new(seed),
            owners: owners.iter().map(|o| o.map(str::to_string)).collect(),
            projects: Vec::new(),
            jobs: Vec::new(),
            storage: Vec::new(),
            counter: 0,
            generated: 0,
            big_written: false,
            marker: None,
            stats: BTreeMap::new(),
        }
    }

    /// New jobs from now on belong to these owners.
    pub fn set_owners(&mut self, owners: &[Option<&str>]) {
        self.owners = owners.iter().map(|o| o.map(str::to_string)).collect();
    }

    /// The next transaction that is generated stores `bytes` as a storage
    /// row's `data` (key `keys/marker/<n>`).
    pub fn store_marker(&mut self, bytes: &[u8]) {
        self.marker = Some(bytes.to_vec());
    }

    pub fn projects(&self) -> &[String] {
        &self.projects
    }

    /// Committed transactions by kind.
    pub fn stats(&self) -> &BTreeMap<&'static str, u64> {
        &self.stats
    }

    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    fn uuid(&mut self) -> String {
        let b = self.bytes(16);
        let b: [u8; 16] = b.try_into().expect("16 bytes");
        canonical::uuid_from_bytes(&b)
    }

    fn name(&mut self, what: &str) -> String {
        self.counter += 1;
        if self.chance(30) {
            format!("{what} {NON_ASCII} {}", self.counter)
        } else {
            format!("{what}-{}", self.counter)
        }
    }

    fn maybe_text(&mut self, what: &str) -> Option<String> {
        match self.below(4) {
            0 => None,
            1 => Some(format!("{what}: it's \"quoted\"\nsecond line — ✓")),
            2 => Some(String::new()),
            _ => Some(format!("{what} {}", self.below(1_000_000))),
        }
    }

    /// A timestamp with time zone, written with an offset other than UTC
    /// half the time (the value is the instant).
    fn timestamptz(&mut self) -> String {
        let micros = BASE_MICROS + (self.below(400 * 86_400_000_000) as i64);
        let micros = if self.chance(30) {
            micros - micros % 1_000_000
        } else {
            micros
        };
        let (offset, suffix) = match self.below(4) {
            0 => (0, "+00:00"),
            1 => (5 * 3600 + 1800, "+05:30"),
            2 => (-8 * 3600, "-08:00"),
            _ => (0, "Z"),
        };
        format!(
            "{}{suffix}",
            canonical::format_timestamp(micros + offset * 1_000_000, false)
        )
    }

    fn timestamp(&mut self) -> String {
        let micros = BASE_MICROS - (self.below(3000 * 86_400_000_000) as i64);
        canonical::format_timestamp(micros, false)
    }

    /// numeric(10, 2): at most two decimals, so every backend holds it as
    /// written.
    fn numeric(&mut self) -> Option<String> {
        if self.chance(20) {
            return None;
        }
        Some(match self.below(3) {
            0 => format!("{}.{:02}", self.below(100_000), self.below(100)),
            1 => format!("{}.00", self.below(1000)),
            _ => format!("{}.5", self.below(100)),
        })
    }

    fn owner(&mut self) -> Option<String> {
        if self.owners.is_empty() {
            return None;
        }
        let i = self.below(self.owners.len() as u64) as usize;
        self.owners[i].clone()
    }

    /// `workflow_step.json_data` is jsonb on PostgreSQL, which prints a
    /// document its own way (keys by length, `": "`, `", "`): written in
    /// that form, so members on either backend hold the same text.
    fn step_json(&mut self, n: i64) -> Option<String> {
        if self.chance(25) {
            return None;
        }
        Some(format!(
            "{{\"n\": {n}, \"cmd\": \"echo {NON_ASCII} {}\"}}",
            self.below(1000)
        ))
    }

    /// The next transaction.
    pub fn next_tx(&mut self) -> Tx {
        if let Some(m) = self.marker.take() {
            let mut tx = self.storage_insert_tx(Some("keys".into()), P::X(m));
            tx.stmts[0].args[1] = t("keys/marker");
            if let Effect::NewStorage(k) = &mut tx.effect {
                k.1 = "keys/marker".into();
            }
            tx.label = "store the marker key".into();
            tx.kind = "store the marker key";
            return tx;
        }
        if self.projects.is_empty() || (self.projects.len() < 6 && self.chance(8)) {
            let name = self.name("project");
            return self.job_tx(&name, true, None, None, None);
        }
        if !self.big_written && self.counter >= 8 {
            self.big_written = true;
            // Over 1 MB, and not a multiple of anything in particular.
            let data = self.bytes(1_500_017);
            let mut tx = self.storage_insert_tx(Some("project".into()), P::X(data));
            tx.label = "store a value over 1 MB".into();
            tx.kind = "store a value over 1 MB";
            // Kept out of the model: no later update or delete replaces it.
            tx.effect = Effect::None;
            return tx;
        }
        // Every 20th transaction is of a kind picked in turn, so that every
        // kind commits whatever the seed.
        self.generated += 1;
        let r = if self.generated % 20 == 0 {
            FORCED[(self.generated / 20) as usize % FORCED.len()]
        } else {
            self.below(100)
        };
        if self.jobs.is_empty() || r < 40 {
            let i = self.below(self.projects.len() as u64) as usize;
            let p = self.projects[i].clone();
            return self.job_tx(&p, false, None, None, None);
        }
        let j = self.below(self.jobs.len() as u64) as usize;
        let (uuid, _) = self.jobs[j].clone();
        match r {
            40..=49 => {
                let name = self.name("renamed");
                Tx {
                    kind: "rename job",
                    label: format!("rename job {uuid}"),
                    stmts: vec![stmt(
                        "UPDATE scheduled_execution SET job_name = $1:text WHERE uuid = $2:uuid",
                        vec![t(name), t(uuid)],
                    )],
                    effect: Effect::None,
                }
            }
            50..=59 => {
                let (se, ee) = (self.chance(50), self.chance(70));
                let timeout = self.numeric();
                let dur = if self.chance(20) {
                    P::Null
                } else {
                    P::R(self.below(10_000_000) as f64 / 7.0)
                };
                let at = self.timestamptz();
                Tx {
                    kind: "change job flags",
                    label: format!("change flags, timeout and dates of job {uuid}"),
                    stmts: vec![stmt(
                        "UPDATE scheduled_execution SET schedule_enabled = $1:bool, execution_enabled = $2:bool, \
                         timeout = $3:numeric, average_duration = $4:float8, date_created = $5:timestamptz \
                         WHERE uuid = $6:uuid",
                        vec![
                            v(P::B(se)),
                            v(P::B(ee)),
                            opt_t(timeout),
                            v(dur),
                            t(at),
                            t(uuid),
                        ],
                    )],
                    effect: Effect::None,
                }
            }
            60..=66 => {
                let desc = self.maybe_text("step");
                let js = self.step_json(7);
                self.counter += 1;
                let value = format!("{NON_ASCII} edited {}", self.counter);
                Tx {
                    kind: "edit step and option",
                    label: format!("edit a step and an option value of job {uuid}"),
                    stmts: vec![
                        stmt(
                            "UPDATE workflow_step SET description = $1:text, json_data = $2:jsonb \
                             WHERE step_number = 1 AND workflow_id IN (SELECT w.id FROM workflow w \
                             JOIN scheduled_execution s ON s.id = w.scheduled_execution_id WHERE s.uuid = $3:uuid)",
                            vec![opt_t(desc), opt_t(js), t(uuid.clone())],
                        ),
                        stmt(
                            "DELETE FROM rdoption_values WHERE sort_index = 0 AND rdoption_id IN \
                             (SELECT o.id FROM rdoption o JOIN scheduled_execution s \
                             ON s.id = o.scheduled_execution_id WHERE s.uuid = $1:uuid)",
                            vec![t(uuid.clone())],
                        ),
                        stmt(
                            "INSERT INTO rdoption_values (rdoption_id, value, sort_index) \
                             SELECT o.id, $1:text, 0 FROM rdoption o JOIN scheduled_execution s \
                             ON s.id = o.scheduled_execution_id WHERE s.uuid = $2:uuid",
                            vec![t(value), t(uuid)],
                        ),
                    ],
                    effect: Effect::None,
                }
            }
            67..=80 => {
                let data = if self.chance(10) {
                    P::Null
                } else {
                    P::X(self.bytes(256))
                };
                let existing: Vec<StorageKey> = self
                    .storage
                    .iter()
                    .filter(|k| k.0.is_some() && k.1 != "keys/marker")
                    .cloned()
                    .collect();
                if !existing.is_empty() && self.chance(50) {
                    let k = existing[self.below(existing.len() as u64) as usize].clone();
                    let at = self.timestamptz();
                    let js = self.maybe_text("meta");
                    Tx {
                        kind: "update key",
                        label: format!("update key {}/{}", k.1, k.2),
                        stmts: vec![stmt(
                            "INSERT INTO storage (namespace, dir, name, data, json_data, last_updated) \
                             VALUES ($1:text, $2:text, $3:text, $4:bytea, $5:text, $6:timestamptz) \
                             ON CONFLICT (namespace, dir, name) DO UPDATE SET data = excluded.data, \
                             json_data = excluded.json_data, last_updated = excluded.last_updated",
                            vec![opt_t(k.0), t(k.1), t(k.2), v(data), opt_t(js), t(at)],
                        )],
                        effect: Effect::None,
                    }
                } else {
                    let ns = match self.below(3) {
                        0 => None,
                        1 => Some("project".to_string()),
                        _ => Some("keys".to_string()),
                    };
                    self.storage_insert_tx(ns, data)
                }
            }
            81..=83 if self.storage.iter().any(deletable) => {
                let keys: Vec<StorageKey> = self
                    .storage
                    .iter()
                    .filter(|k| deletable(k))
                    .cloned()
                    .collect();
                let k = keys[self.below(keys.len() as u64) as usize].clone();
                Tx {
                    kind: "delete key",
                    label: format!("delete key {}/{}", k.1, k.2),
                    stmts: vec![stmt(
                        "DELETE FROM storage WHERE namespace = $1:text AND dir = $2:text AND name = $3:text",
                        vec![opt_t(k.0.clone()), t(k.1.clone()), t(k.2.clone())],
                    )],
                    effect: Effect::DeleteStorage(k),
                }
            }
            84..=90 => Self::delete_job_tx(&uuid),
            91..=92 if self.projects.len() > 2 => {
                let i = self.below(self.projects.len() as u64) as usize;
                let p = self.projects[i].clone();
                Tx {
                    kind: "delete project",
                    label: format!("delete project {p} (cascades three levels down)"),
                    stmts: vec![stmt(
                        "DELETE FROM project WHERE name = $1:text",
                        vec![t(p.clone())],
                    )],
                    effect: Effect::DeleteProject(p),
                }
            }
            _ => self.describe_project_tx(),
        }
    }

    /// Delete a job (by uuid): the cascade takes its workflow, steps, step
    /// links, options, option values and notifications.
    pub fn delete_job_tx(uuid: &str) -> Tx {
        Tx {
            kind: "delete job",
            label: format!(
                "delete job {uuid} (cascades to its workflow, steps, options, notifications)"
            ),
            stmts: vec![stmt(
                "DELETE FROM scheduled_execution WHERE uuid = $1:uuid",
                vec![t(uuid)],
            )],
            effect: Effect::DeleteJob(uuid.to_string()),
        }
    }

    /// Change a project's description and retirement date (NULLs too).
    fn describe_project_tx(&mut self) -> Tx {
        let i = self.below(self.projects.len() as u64) as usize;
        let p = self.projects[i].clone();
        let desc = self.maybe_text("project");
        let retire = if self.chance(50) {
            None
        } else {
            Some(canonical::format_date(20_000 + self.below(3000) as i64))
        };
        Tx {
            kind: "describe project",
            label: format!("describe project {p}"),
            stmts: vec![stmt(
                "UPDATE project SET description = $1:text, retire_on = $2:date WHERE name = $3:text",
                vec![opt_t(desc), opt_t(retire), t(p)],
            )],
            effect: Effect::None,
        }
    }

    /// A new storage row (key `dir/name` never used before).
    pub fn storage_insert_tx(&mut self, ns: Option<String>, data: P) -> Tx {
        self.counter += 1;
        let dir = match &ns {
            Some(n) if n == "project" => format!("projects/{}", self.below(5)),
            _ => "keys/db".to_string(),
        };
        let name = format!("key-{}", self.counter);
        let js = if self.chance(50) {
            Some("{\"Rundeck-content-type\": \"application/x-rundeck-data-password\"}".into())
        } else {
            None
        };
        let at = self.timestamptz();
        Tx {
            kind: "insert key",
            label: format!("insert key {dir}/{name}"),
            stmts: vec![stmt(
                "INSERT INTO storage (namespace, dir, name, data, json_data, last_updated) \
                 VALUES ($1:text, $2:text, $3:text, $4:bytea, $5:text, $6:timestamptz) RETURNING id",
                vec![
                    opt_t(ns.clone()),
                    t(dir.clone()),
                    t(name.clone()),
                    v(data),
                    opt_t(js),
                    t(at),
                ],
            )],
            effect: Effect::NewStorage((ns, dir, name)),
        }
    }

    /// A job with its workflow, steps (linked through
    /// workflow_workflow_step), options with values and notifications, in
    /// one transaction; with its project first when `new_project`. Counts
    /// are random unless given.
    pub fn job_tx(
        &mut self,
        project: &str,
        new_project: bool,
        steps: Option<usize>,
        options: Option<usize>,
        notifications: Option<usize>,
    ) -> Tx {
        let mut stmts = Vec::new();
        if new_project {
            let desc = self.maybe_text("project");
            let created = self.timestamp();
            let retire = if self.chance(50) {
                None
            } else {
                Some(canonical::format_date(20_000 + self.below(3000) as i64))
            };
            stmts.push(stmt(
                "INSERT INTO project (name, description, created, retire_on) \
                 VALUES ($1:text, $2:text, $3:timestamp, $4:date)",
                vec![t(project), opt_t(desc), t(created), opt_t(retire)],
            ));
        }
        let uuid = self.uuid();
        let name = self.name("job");
        let group = if self.chance(30) {
            None
        } else {
            Some(format!("ops/{}", self.below(5)))
        };
        let desc = self.maybe_text("job");
        let owner = self.owner();
        let timeout = self.numeric();
        let dur = if self.chance(30) {
            P::Null
        } else {
            P::R(self.below(10_000_000) as f64 / 3.0)
        };
        let created = self.timestamptz();
        let options_json = if self.chance(30) {
            None
        } else {
            Some(format!(
                "{{\"retry\":{},\"labels\":[\"a\",\"{NON_ASCII}\"]}}",
                self.below(5)
            ))
        };
        let (se, ee) = (self.chance(60), self.chance(80));
        let job = stmts.len();
        stmts.push(stmt(
            "INSERT INTO scheduled_execution (uuid, project, job_name, group_path, description, \
             schedule_enabled, execution_enabled, server_nodeuuid, timeout, average_duration, \
             date_created, options) VALUES ($1:uuid, $2:text, $3:text, $4:text, $5:text, $6:bool, \
             $7:bool, $8:text, $9:numeric, $10:float8, $11:timestamptz, $12:json) RETURNING id",
            vec![
                t(uuid.clone()),
                t(project),
                t(name),
                opt_t(group),
                opt_t(desc),
                v(P::B(se)),
                v(P::B(ee)),
                opt_t(owner),
                opt_t(timeout),
                v(dur),
                t(created),
                opt_t(options_json),
            ],
        ));
        let strategy = ["node-first", "sequential", "parallel"][self.below(3) as usize];
        let threads = if self.chance(40) {
            P::Null
        } else {
            P::I(1 + self.below(8) as i64)
        };
        let keepgoing = self.chance(50);
        let wf = stmts.len();
        stmts.push(stmt(
            "INSERT INTO workflow (scheduled_execution_id, keepgoing, strategy, threadcount) \
             VALUES ($1:int8, $2:bool, $3:text, $4:int8) RETURNING id",
            vec![Arg::Id(job), v(P::B(keepgoing)), t(strategy), v(threads)],
        ));
        let nsteps = steps.unwrap_or(1 + self.below(4) as usize);
        for i in 0..nsteps {
            let ty = ["exec", "script", "command"][self.below(3) as usize];
            let desc = self.maybe_text("step");
            let adhoc = if self.chance(40) {
                None
            } else {
                Some(format!("echo '{NON_ASCII}' && ls -l /tmp/{i}"))
            };
            let js = self.step_json(i as i64);
            let kg = self.chance(50);
            let step = stmts.len();
            stmts.push(stmt(
                "INSERT INTO workflow_step (workflow_id, step_number, step_type, description, \
                 keepgoing_on_success, adhoc_remote_string, json_data) \
                 VALUES ($1:int8, $2:int8, $3:text, $4:text, $5:bool, $6:text, $7:jsonb) RETURNING id",
                vec![
                    Arg::Id(wf),
                    v(P::I(i as i64 + 1)),
                    t(ty),
                    opt_t(desc),
                    v(P::B(kg)),
                    opt_t(adhoc),
                    opt_t(js),
                ],
            ));
            stmts.push(stmt(
                "INSERT INTO workflow_workflow_step (workflow_id, step_id, commands_idx) \
                 VALUES ($1:int8, $2:int8, $3:int8)",
                vec![Arg::Id(wf), Arg::Id(step), v(P::I(i as i64))],
            ));
        }
        let nopts = options.unwrap_or(self.below(3) as usize);
        for i in 0..nopts {
            let req = self.chance(50);
            let default = self.maybe_text("default");
            let opt = stmts.len();
            stmts.push(stmt(
                "INSERT INTO rdoption (scheduled_execution_id, name, required, default_value, sort_index) \
                 VALUES ($1:int8, $2:text, $3:bool, $4:text, $5:int8) RETURNING id",
                vec![
                    Arg::Id(job),
                    t(format!("opt{i}")),
                    v(P::B(req)),
                    opt_t(default),
                    v(P::I(i as i64)),
                ],
            ));
            let nvalues = 1 + self.below(3);
            for k in 0..nvalues {
                let value = if k == 1 {
                    format!("{NON_ASCII} {k}")
                } else {
                    format!("value {k}")
                };
                stmts.push(stmt(
                    "INSERT INTO rdoption_values (rdoption_id, value, sort_index) \
                     VALUES ($1:int8, $2:text, $3:int8)",
                    vec![Arg::Id(opt), t(value), v(P::I(k as i64))],
                ));
            }
        }
        let nnotes = notifications.unwrap_or(self.below(3) as usize);
        for _ in 0..nnotes {
            let trigger = ["onsuccess", "onfailure", "onstart"][self.below(3) as usize];
            let ty = ["email", "url"][self.below(2) as usize];
            let content = self.maybe_text("notify");
            stmts.push(stmt(
                "INSERT INTO notification (scheduled_execution_id, event_trigger, type, content) \
                 VALUES ($1:int8, $2:text, $3:text, $4:text) RETURNING id",
                vec![Arg::Id(job), t(trigger), t(ty), opt_t(content)],
            ));
        }
        Tx {
            kind: if new_project {
                "insert project and job"
            } else {
                "insert job"
            },
            label: format!(
                "insert job {uuid} in {project}{}",
                if new_project { " (new project)" } else { "" }
            ),
            stmts,
            effect: Effect::NewJob {
                uuid,
                project: project.to_string(),
                new_project,
            },
        }
    }

    /// Record what a committed transaction changed.
    pub fn committed(&mut self, tx: &Tx) {
        *self.stats.entry(tx.kind).or_default() += 1;
        match &tx.effect {
            Effect::None => {}
            Effect::NewJob {
                uuid,
                project,
                new_project,
            } => {
                if *new_project {
                    self.projects.push(project.clone());
                }
                self.jobs.push((uuid.clone(), project.clone()));
            }
            Effect::DeleteJob(u) => self.jobs.retain(|(j, _)| j != u),
            Effect::DeleteProject(p) => {
                self.projects.retain(|x| x != p);
                self.jobs.retain(|(_, jp)| jp != p);
            }
            Effect::NewStorage(k) => self.storage.push(k.clone()),
            Effect::DeleteStorage(k) => self.storage.retain(|x| x != k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_translate_per_backend() {
        let sql = "UPDATE t SET a = $1:numeric, b = $2:int8 WHERE c = $3:text AND d = $1:numeric";
        let (s, types) = translate(sql, false).unwrap();
        assert_eq!(s, "UPDATE t SET a = ?1, b = ?2 WHERE c = ?3 AND d = ?1");
        assert_eq!(types, ["text", "int8", "text"]);
        let (p, _) = translate(sql, true).unwrap();
        assert_eq!(
            p,
            "UPDATE t SET a = $1::text::numeric, b = $2::int8 WHERE c = $3::text AND d = $1::text::numeric"
        );
        assert!(translate("SELECT $1", false).is_err());
    }

    #[test]
    fn the_generator_is_deterministic() {
        let labels = |seed| {
            let mut g = Gen::new(seed, &[Some("a"), None]);
            (0..200)
                .map(|_| {
                    let tx = g.next_tx();
                    g.committed(&tx);
                    tx.label
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(7), labels(7));
        assert_ne!(labels(7), labels(8));
    }
}
