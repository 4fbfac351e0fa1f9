//! The status endpoint's connection handling: accept, optional TLS, HTTP/1.1
//! per connection on its own task, with time and count limits.
//!
//! Owns: the accept loop, per-connection limits (TLS handshake and request
//! header time limits, a lifetime cap, a cap on open connections), graceful
//! shutdown of open connections.
//! Must never: let one connection (slow, silent or hostile) hold up another:
//! the accept loop only accepts and spawns; everything that can wait happens
//! on the connection's own task, under a time limit.

use super::routes::RemoteAddr;
use super::tls::StatusTls;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// A client must finish the TLS handshake within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send a whole request head within this (also bounds an
/// idle keep-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this; scrapers reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Open connections at most; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// After shutdown, open connections get this long to finish their request.
const DRAIN: Duration = Duration::from_secs(2);

/// Serve `app` on `listener` until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<StatusTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = crate::status::stopped(&mut shutdown) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::status::stopped(&mut shutdown) => return,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "status endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (app, tls, sd) = (app.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(tcp, addr, app, tls, sd).await;
        });
    }
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<StatusTls>>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    match tls {
        None => http(tcp, addr, app, shutdown).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => http(stream, addr, app, shutdown).await,
                Ok(Err(e)) => {
                    tracing::debug!(peer_addr = %addr, error = %e, "status endpoint: TLS handshake failed")
                }
                Err(_) => {
                    tracing::debug!(peer_addr = %addr, "status endpoint: TLS handshake timed out")
                }
            }
        }
    }
}

async fn http<S>(stream: S, addr: SocketAddr, app: Router, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(RemoteAddr(addr));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut lifetime => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        _ = crate::status::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        // Timeouts and resets by clients are routine; keep them out of the
        // default log level.
        tracing::debug!(peer_addr = %addr, error = %e, "status endpoint connection ended");
    }
}
