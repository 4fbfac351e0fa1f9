//! The status endpoint: HTTP (optionally HTTPS) on `status.listen` for
//! operators, load balancers and Prometheus, and the operator CLI's view of
//! the cluster.
//!
//! Owns: routes and their answers (`routes`), connection handling and its
//! limits (`server`), the bearer-token check (`auth`), the hook to the
//! promotion controller (`control`), metrics (`metrics`), the database
//! health probe (`probe`), TLS (`tls`), the HTTP client (`client`) and the
//! `understudy status` table (`cli_status`).
//! Must never: change replication state on a GET, block on the database
//! (GETs serve the live view the agent keeps; `/history` reads the database
//! under a time limit), or show key content or the token.

pub mod auth;
pub mod cli_control;
pub mod cli_status;
pub mod client;
pub mod control;
mod migrate;
pub mod probe;
pub mod routes;
pub mod server;
pub mod tls;

use crate::config::Config;
use crate::replication::live::Live;
use crate::replication::metrics::Metrics;
use crate::store::AnyStore;
use control::ControlHandle;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything the status endpoint serves from.
#[derive(Clone)]
pub struct StatusContext {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// `None` on a witness.
    pub store: Option<Arc<AnyStore>>,
    /// `None` while no promotion controller runs on this member: the POST
    /// routes then answer 503.
    pub control: Option<ControlHandle>,
    pub token: auth::Token,
    /// Set when `[status] tls = true`.
    pub tls: Option<Arc<tls::StatusTls>>,
    /// Answers `GET /checksums` (members with a database).
    pub checksums: Option<Arc<crate::replication::marks::ChecksumService>>,
}

impl StatusContext {
    /// Build from the member's config; loads the TLS certificate when
    /// `[status] tls = true`.
    pub fn new(
        config: &Config,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        store: Option<Arc<AnyStore>>,
    ) -> Result<StatusContext, tls::StatusTlsError> {
        let tls = if config.status.tls {
            Some(Arc::new(tls::StatusTls::load(&config.tls)?))
        } else {
            None
        };
        Ok(StatusContext {
            live,
            metrics,
            store,
            control: None,
            token: auth::Token::new(config.status.token.clone()),
            tls,
            checksums: None,
        })
    }

    /// Answer `GET /checksums` with `svc`.
    pub fn with_checksums(
        mut self,
        svc: Option<Arc<crate::replication::marks::ChecksumService>>,
    ) -> Self {
        self.checksums = svc;
        self
    }

    /// Route the POST actions to a promotion controller.
    pub fn with_control(mut self, control: ControlHandle) -> Self {
        self.control = Some(control);
        self
    }

    pub fn router(&self) -> axum::Router {
        routes::router(routes::AppState {
            live: self.live.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            control: self.control.clone(),
            checksums: self.checksums.clone(),
            token: self.token.clone(),
        })
    }
}

/// Resolves once `shutdown` is true (or its sender is gone). The watch
/// guard is dropped inside, so the future stays `Send` in a `select!`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serve until `shutdown` fires.
pub async fn serve(listener: TcpListener, ctx: StatusContext, shutdown: watch::Receiver<bool>) {
    let app = ctx.router();
    server::serve(listener, app, ctx.tls.clone(), shutdown).await;
}
