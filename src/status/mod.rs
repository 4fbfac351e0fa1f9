//! The status endpoint: HTTP on `status.listen` for operators and load
//! balancers.
//!
//! Owns: routes and their answers; rendering of the live view.
//! Must never: change replication state on a GET, block on the database
//! (it serves the live view the agent keeps), or show key content or the token.

pub mod client;

use crate::replication::live::Live;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
struct AppState {
    live: Arc<Live>,
}

pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/active", get(active))
        .route("/passive", get(passive))
        .with_state(AppState { live })
}

/// Serve until `shutdown` fires.
pub async fn serve(listener: TcpListener, live: Arc<Live>, mut shutdown: watch::Receiver<bool>) {
    let app = router(live);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "status endpoint stopped");
    }
}

async fn health(State(st): State<AppState>) -> Response {
    let ok = st.live.read(|s| s.database_ok);
    if ok {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
    }
}

async fn status(State(st): State<AppState>) -> Response {
    Json(st.live.status(Instant::now())).into_response()
}

async fn active(State(st): State<AppState>) -> Response {
    let doc = st.live.status(Instant::now());
    if doc.role == crate::model::Role::Active && doc.database_ok {
        (StatusCode::OK, "active\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", doc.role)).into_response()
    }
}

#[derive(Deserialize)]
struct PassiveQuery {
    max_lag_ms: Option<u64>,
}

async fn passive(State(st): State<AppState>, Query(q): Query<PassiveQuery>) -> Response {
    let doc = st.live.status(Instant::now());
    let within = q.max_lag_ms.is_none_or(|m| doc.lag.ms <= m);
    if doc.role == crate::model::Role::Passive && doc.database_ok && within {
        (StatusCode::OK, "passive\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} lag_ms={}\n", doc.role, doc.lag.ms),
        )
            .into_response()
    }
}
