//! The status endpoint's routes and their answers.
//!
//! Owns: the router (GET views, token-guarded POST actions, JSON 404/405),
//! the request-size limit and the per-request time limit.
//! Must never: change replication state on a GET, wait on the database
//! without a time limit (only `/history` reads it; everything else serves
//! the live view), or put key content or the token into a response.

use super::auth::{self, Token};
use super::control::{ControlError, ControlHandle, ControlOutcome, ControlRequest};
use crate::model::{MemberId, Role};
use crate::replication::live::Live;
use crate::replication::marks::{ChecksumService, MarkError};
use crate::replication::metrics::{Metrics, render};
use crate::store::{AnyStore, MemberStore};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted (the POST bodies are a few bytes of JSON).
pub const MAX_BODY: usize = 64 * 1024;
/// A GET must be answered, and a POST body received, within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a POST waits for the controller (a switchover waits for the
/// target to catch up).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// `GET /checksums` hashes whole tables: minutes on a large database.
pub const CHECKSUM_TIMEOUT: Duration = Duration::from_secs(300);
/// The database read behind `/history`.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(3);

/// The peer address of the connection, set by the server for each request.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    pub store: Option<Arc<AnyStore>>,
    pub control: Option<ControlHandle>,
    pub token: Token,
    pub checksums: Option<Arc<ChecksumService>>,
}

pub fn router(state: AppState) -> Router {
    let views = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/active", get(active))
        .route("/passive", get(passive))
        .route("/metrics", get(metrics))
        .route("/history", get(history))
        .route_layer(middleware::from_fn(request_timeout));
    // Hashing every table takes as long as the data needs: its own limit.
    let checksums = Router::new()
        .route("/checksums", get(table_checksums))
        .route_layer(middleware::from_fn(checksum_timeout));
    let actions = Router::new()
        .route("/switchover", post(switchover))
        .route("/promote", post(promote))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/migrate", post(super::migrate::migrate))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    views
        .merge(checksums)
        .merge(actions)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(limit_body))
        .with_state(state)
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path {}: GET /health /status /active /passive /metrics /history, POST /switchover /promote /pause /resume /migrate",
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Refuse a declared body over the limit before reading any of it; bodies
/// without a length are cut off at the limit when read.
async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
        );
    }
    next.run(req).await
}

async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

async fn checksum_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(CHECKSUM_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            "the checksums took too long (the database may be very large or busy)",
        ),
    }
}

async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match auth::check(h, &st.token) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            st.metrics.unauthorized_requests.inc();
            let from = req
                .extensions()
                .get::<RemoteAddr>()
                .map(|a| a.0.to_string())
                .unwrap_or_else(|| "unknown".into());
            tracing::warn!(path = %req.uri().path(), %from, reason = why.message(), "refused an unauthorised request");
            let mut r = error(StatusCode::UNAUTHORIZED, why.message());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"understudy\""),
            );
            r
        }
    }
}

async fn health(State(st): State<AppState>) -> Response {
    let (ok, err) = st.live.read(|s| (s.database_ok, s.database_error.clone()));
    if ok {
        (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "database unavailable",
                "error": err.unwrap_or_default(),
            })),
        )
            .into_response()
    }
}

async fn status(State(st): State<AppState>) -> Response {
    Json(st.live.status(Instant::now())).into_response()
}

/// 200 only on the unfenced active: role active in the live view (the
/// runtime fences by leaving that role) and its database answering.
async fn active(State(st): State<AppState>) -> Response {
    let now = Instant::now();
    let doc = st.live.status(now);
    let lease_until = st.live.read(|s| s.lease_until);
    if serves_writes(doc.role, doc.database_ok, lease_until, now) {
        (
            StatusCode::OK,
            Json(json!({ "member": doc.member, "role": doc.role, "epoch": doc.epoch })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "member": doc.member,
                "role": doc.role,
                "database_ok": doc.database_ok,
                "active": doc.active,
            })),
        )
            .into_response()
    }
}

/// Whether `/active` answers 200: the active role, a reachable database,
/// and a lease that has not run out by this process's clock. The lease
/// check matters when the controller's published status is stale (a stalled
/// controller, a lost lease not yet stepped on): its database refuses
/// writes from the lease's end, and so does the route.
fn serves_writes(
    role: Role,
    database_ok: bool,
    lease_until: Option<Instant>,
    now: Instant,
) -> bool {
    role == Role::Active && database_ok && lease_until.is_some_and(|t| now < t)
}

#[derive(Deserialize)]
struct PassiveQuery {
    max_lag_ms: Option<u64>,
}

async fn passive(
    State(st): State<AppState>,
    q: Result<Query<PassiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "max_lag_ms must be a whole number of milliseconds",
        );
    };
    let doc = st.live.status(Instant::now());
    let within = q.max_lag_ms.is_none_or(|m| doc.lag.ms <= m);
    let body = json!({
        "member": doc.member,
        "role": doc.role,
        "lag": doc.lag,
        "max_lag_ms": q.max_lag_ms,
        "database_ok": doc.database_ok,
    });
    if doc.role == Role::Passive && doc.database_ok && within {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let text = render(&st.live.status(Instant::now()), &st.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn history(State(st): State<AppState>) -> Response {
    let member = st.live.read(|s| s.member.to_string());
    let Some(store) = &st.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "member {member} is a witness and keeps no epoch history: ask a member with a database"
            ),
        );
    };
    match tokio::time::timeout(HISTORY_TIMEOUT, store.epoch_history()).await {
        Ok(Ok(recs)) => {
            let history: Vec<_> = recs
                .iter()
                .map(|r| {
                    json!({
                        "epoch": r.epoch.0,
                        "active": r.active.as_str(),
                        "start": r.start,
                        "at_ms": r.at_ms,
                        "reason": r.reason,
                    })
                })
                .collect();
            Json(json!({ "member": member, "history": history })).into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the epoch history: {e}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the database did not answer within {} s",
                HISTORY_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// A refused request: status code and message (rendered as JSON).
pub(super) struct Fail(pub(super) StatusCode, pub(super) String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Read a POST body: at most `MAX_BODY` bytes, within `REQUEST_TIMEOUT`.
async fn read_body(body: Body) -> Result<Bytes, Fail> {
    match tokio::time::timeout(REQUEST_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Err(Fail(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time".into(),
        )),
        Ok(Err(e)) => {
            // to_bytes reports an exceeded limit as a length-limit error.
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_big {
                Err(Fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over {MAX_BODY} bytes"),
                ))
            } else {
                Err(Fail(
                    StatusCode::BAD_REQUEST,
                    "could not read the request body".into(),
                ))
            }
        }
        Ok(Ok(b)) => Ok(b),
    }
}

/// Read and parse an optional JSON body (empty means all defaults).
pub(super) async fn parse<T: for<'de> Deserialize<'de> + Default>(body: Body) -> Result<T, Fail> {
    let b = read_body(body).await?;
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&b).map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

async fn forward(st: &AppState, req: ControlRequest) -> Response {
    let action = serde_json::to_value(&req).unwrap_or_default();
    let Some(ctl) = &st.control else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ControlError::NotRunning.to_string(),
        );
    };
    tracing::info!(request = ?req, "operator request");
    match ctl.submit(req, CONTROL_TIMEOUT).await {
        Ok(ControlOutcome::Done(v)) => (
            StatusCode::OK,
            Json(json!({ "request": action, "result": v })),
        )
            .into_response(),
        Ok(ControlOutcome::Accepted(v)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "request": action, "result": v })),
        )
            .into_response(),
        Ok(ControlOutcome::Refused(r)) => error(StatusCode::CONFLICT, r),
        Ok(ControlOutcome::BadRequest(r)) => error(StatusCode::BAD_REQUEST, r),
        Ok(ControlOutcome::Unavailable(r)) => error(StatusCode::SERVICE_UNAVAILABLE, r),
        Err(e @ ControlError::NotRunning) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e @ ControlError::NoAnswer(_)) => error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    to: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn switchover(State(st): State<AppState>, body: Body) -> Result<Response, Fail> {
    let p: SwitchoverBody = parse(body).await?;
    let Some(to) = p.to.filter(|t| !t.is_empty()) else {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            "say which member becomes the active: {\"to\": \"<member>\"}".into(),
        ));
    };
    crate::config::check_member_id(&to)
        .map_err(|r| Fail(StatusCode::BAD_REQUEST, format!("to: {r}")))?;
    Ok(forward(
        &st,
        ControlRequest::Switchover {
            to: MemberId::new(to),
        },
    )
    .await)
}

async fn promote(State(st): State<AppState>, body: Body) -> Result<Response, Fail> {
    let p: PromoteBody = parse(body).await?;
    Ok(forward(&st, ControlRequest::Promote { force: p.force }).await)
}

async fn pause(State(st): State<AppState>, body: Body) -> Result<Response, Fail> {
    parse::<EmptyBody>(body).await?;
    Ok(forward(&st, ControlRequest::Pause).await)
}

async fn resume(State(st): State<AppState>, body: Body) -> Result<Response, Fail> {
    parse::<EmptyBody>(body).await?;
    Ok(forward(&st, ControlRequest::Resume).await)
}

#[derive(serde::Deserialize)]
struct ChecksumQuery {
    at_seq: Option<u64>,
    timeout_ms: Option<u64>,
}

/// `GET /checksums`: per-table checksums and the exact position they were
/// taken at. On the active: at its head (and marked for its passives). On a
/// passive with `at_seq=N`: at exactly N, waiting up to `timeout_ms` (default
/// 30 s) for the member to get there; 409 when it passed N without a mark.
async fn table_checksums(
    axum::extract::State(st): axum::extract::State<AppState>,
    axum::extract::Query(q): axum::extract::Query<ChecksumQuery>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let Some(svc) = st.checksums else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "this member has no database"})),
        )
            .into_response();
    };
    let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(600_000));
    match svc.answer(q.at_seq, timeout).await {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => {
            let code = match e {
                MarkError::BadRequest(_) => StatusCode::BAD_REQUEST,
                MarkError::Passed(_) => StatusCode::CONFLICT,
                MarkError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                MarkError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (
                code,
                axum::Json(serde_json::json!({"error": e.to_string()})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn active_answers_only_while_the_lease_holds() {
        let now = Instant::now();
        let later = Some(now + Duration::from_millis(300));
        let earlier = now.checked_sub(Duration::from_millis(1));
        assert!(serves_writes(Role::Active, true, later, now));
        assert!(
            !serves_writes(Role::Active, true, earlier, now),
            "a status that still says active after the lease ran out"
        );
        assert!(
            !serves_writes(Role::Active, true, None, now),
            "no lease yet"
        );
        assert!(!serves_writes(Role::Active, false, later, now));
        assert!(!serves_writes(Role::Fenced, true, later, now));
        assert!(!serves_writes(Role::Passive, true, later, now));
    }
}
