//! Connections of the PostgreSQL backend: connecting with secret-free errors,
//! a client slot that reconnects after the server went away, and the
//! LISTEN connection that turns `NOTIFY understudy` into wake-ups.
//!
//! Owns: connection setup, error translation, reconnection.
//! Must never: put a password or a database error's DETAIL (which can echo a
//! whole row, key content included) into an error.

use crate::config::redact_url;
use crate::store::{StoreError, StoreResult};
use futures_util::StreamExt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

/// The NOTIFY channel the capture triggers signal on.
pub(crate) const CHANNEL: &str = "understudy";

/// Without an explicit `connect_timeout` in the URL a black-holed server
/// would hang the agent for the kernel's TCP timeout (minutes).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parse a `postgres://` URL into a client config with the agent's defaults.
pub(crate) fn parse_config(url: &str) -> StoreResult<Config> {
    let mut cfg = Config::from_str(url).map_err(|e| StoreError::Unreachable {
        url: redact_url(url),
        reason: format!("not a valid PostgreSQL URL: {e}"),
    })?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("understudy");
    }
    Ok(cfg)
}

/// Open one client; its connection is driven by a spawned task that ends when
/// the client is dropped or the server goes away.
pub(crate) async fn connect(url: &str) -> StoreResult<Client> {
    let cfg = parse_config(url)?;
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| unreachable(url, &e))?;
    tokio::spawn(async move {
        // The error surfaces to the client's callers as a closed connection.
        let _ = connection.await;
    });
    Ok(client)
}

pub(crate) fn unreachable(url: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Unreachable {
        url: redact_url(url),
        reason: describe(e),
    }
}

/// A database error as text without its DETAIL: for a failed row the DETAIL
/// repeats the row, and for `keys` that includes the content.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({})", db.message(), db.code().code());
        if let Some(t) = db.table() {
            s.push_str(&format!(" on table {t}"));
        }
        if let Some(c) = db.constraint() {
            s.push_str(&format!(", constraint {c}"));
        }
        s
    } else {
        // Non-database errors (IO, protocol, conversion) carry no row data;
        // their cause (e.g. "Connection refused") is in the source chain.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    }
}

/// Translate an error of a query: lost connections are `Unreachable`, a
/// missing agent table means `init` never ran, the rest is `Backend`.
pub(crate) fn query_error(url: &str, e: &tokio_postgres::Error) -> StoreError {
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        return unreachable(url, e);
    }
    if let Some(db) = e.as_db_error()
        && db.code() == &tokio_postgres::error::SqlState::UNDEFINED_TABLE
        && db.message().contains("us_")
    {
        return StoreError::NotInitialised {
            url: redact_url(url),
        };
    }
    StoreError::Backend(describe(e))
}

/// A client that is replaced by a new connection once the old one closed
/// (server restart, network cut). Queries in flight on the old connection fail
/// with `Unreachable`; the next call reconnects.
pub(crate) struct ClientSlot {
    url: String,
    slot: Mutex<Option<Arc<Client>>>,
}

impl ClientSlot {
    pub(crate) fn new(url: &str, first: Option<Client>) -> ClientSlot {
        ClientSlot {
            url: url.to_string(),
            slot: Mutex::new(first.map(Arc::new)),
        }
    }

    pub(crate) async fn get(&self) -> StoreResult<Arc<Client>> {
        let mut g = self.slot.lock().await;
        if let Some(c) = g.as_ref()
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        *g = None;
        let c = Arc::new(connect(&self.url).await?);
        *g = Some(Arc::clone(&c));
        Ok(c)
    }
}

/// The LISTEN side: a task that keeps one connection listening and turns each
/// notification (and each reconnect, since commits may have been missed while
/// away) into a stored wake-up permit.
pub(crate) struct Listener {
    pub(crate) wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Start listening; returns once the first LISTEN is in place, so a commit
    /// right after `connect` returns is never missed.
    pub(crate) async fn start(url: &str) -> StoreResult<Listener> {
        let wake = Arc::new(Notify::new());
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(listen_loop(url.to_string(), Arc::clone(&wake), ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Listener { wake, task }),
            Ok(Err(e)) => {
                task.abort();
                Err(e)
            }
            Err(_) => {
                task.abort();
                Err(StoreError::Backend(
                    "the LISTEN task ended before it started".into(),
                ))
            }
        }
    }
}

async fn listen_loop(url: String, wake: Arc<Notify>, ready: oneshot::Sender<StoreResult<()>>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        match listen_once(&url, &wake, &mut ready).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::debug!(error = %e, "LISTEN connection failed; retrying");
            }
        }
        // Commits may have happened while no LISTEN was in place.
        wake.notify_one();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One LISTEN connection's life; returns when it closes.
async fn listen_once(
    url: &str,
    wake: &Arc<Notify>,
    ready: &mut Option<oneshot::Sender<StoreResult<()>>>,
) -> StoreResult<()> {
    let cfg = parse_config(url)?;
    let (client, mut connection) = cfg.connect(NoTls).await.map_err(|e| unreachable(url, &e))?;
    let w = Arc::clone(wake);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => w.notify_one(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return Err(query_error(url, &e));
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
    // The client must live as long as the connection is listened on.
    let _ = driver.await;
    drop(client);
    Ok(())
}
