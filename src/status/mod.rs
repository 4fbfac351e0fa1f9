//! The status endpoint: HTTP on `status.listen` for operators and load
//! balancers.
//!
//! Owns: routes and their answers; rendering of the live view.
//! Must never: change replication state on a GET, block on the database
//! (it serves the live view the agent keeps; `/checksums` alone reads the
//! database, by design, for `understudy verify`), or show key content or the
//! token.

pub mod client;

use crate::replication::live::Live;
use crate::replication::marks::{ChecksumService, MarkError};
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
    checksums: Option<Arc<ChecksumService>>,
}

pub fn router(live: Arc<Live>) -> Router {
    router_with_checksums(live, None)
}

/// The routes, with `GET /checksums` answered by `checksums` (members with a
/// database).
pub fn router_with_checksums(live: Arc<Live>, checksums: Option<Arc<ChecksumService>>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/active", get(active))
        .route("/passive", get(passive))
        .route("/checksums", get(table_checksums))
        .with_state(AppState { live, checksums })
}

/// Serve until `shutdown` fires.
pub async fn serve(listener: TcpListener, live: Arc<Live>, shutdown: watch::Receiver<bool>) {
    serve_router(listener, router(live), shutdown).await
}

/// [`serve`] with `GET /checksums`.
pub async fn serve_with_checksums(
    listener: TcpListener,
    live: Arc<Live>,
    checksums: Option<Arc<ChecksumService>>,
    shutdown: watch::Receiver<bool>,
) {
    serve_router(listener, router_with_checksums(live, checksums), shutdown).await
}

async fn serve_router(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
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

#[derive(Deserialize)]
struct ChecksumQuery {
    at_seq: Option<u64>,
    timeout_ms: Option<u64>,
}

/// `GET /checksums`: per-table checksums and the exact position they were
/// taken at. On the active: at its head (and marked for its passives). On a
/// passive with `at_seq=N`: at exactly N, waiting up to `timeout_ms` (default
/// 30 s) for the member to get there; 409 when it passed N without a mark.
async fn table_checksums(State(st): State<AppState>, Query(q): Query<ChecksumQuery>) -> Response {
    let Some(svc) = st.checksums else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "this member has no database"})),
        )
            .into_response();
    };
    let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(600_000));
    match svc.answer(q.at_seq, timeout).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => {
            let code = match e {
                MarkError::BadRequest(_) => StatusCode::BAD_REQUEST,
                MarkError::Passed(_) => StatusCode::CONFLICT,
                MarkError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                MarkError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (code, Json(serde_json::json!({"error": e.to_string()}))).into_response()
        }
    }
}
