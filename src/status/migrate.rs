//! `POST /migrate`: a schema change of the captured tables, run on this
//! member when it is the active (`understudy migrate` finds it and sends the
//! DDL here, with the bearer token).
//!
//! Owns: the request's shape and the answer (the new schema version and
//! the log position of its entry), and refreshing the live view's schema.
//! Must never: run a schema change on a member that is not the active (the
//! database checks the role too, in the change's own transaction).

use super::routes::{AppState, Fail, parse};
use crate::model::Role;
use crate::store::{MemberStore, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    sqlite: Option<String>,
    postgres: Option<String>,
}

pub(super) async fn migrate(State(st): State<AppState>, body: Body) -> Result<Response, Fail> {
    let p: MigrateBody = parse(body).await?;
    let (Some(sqlite), Some(postgres)) = (p.sqlite, p.postgres) else {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            "say what each backend runs: {\"sqlite\": \"<DDL>\", \"postgres\": \"<DDL>\"}".into(),
        ));
    };
    let Some(store) = &st.store else {
        return Err(Fail(
            StatusCode::CONFLICT,
            "this member is a witness: it holds no tables".into(),
        ));
    };
    let (member, role, active) = st
        .live
        .read(|s| (s.member.clone(), s.role, s.active.clone()));
    if role != Role::Active {
        return Err(Fail(
            StatusCode::CONFLICT,
            format!(
                "member {member} is {role}; schema changes run on the active ({})",
                active.map_or_else(|| "unknown".to_string(), |a| a.to_string())
            ),
        ));
    }
    tracing::info!(%member, "running a schema change (POST /migrate)");
    match store.migrate(&sqlite, &postgres).await {
        Ok((sc, pos)) => {
            st.live.schema(sc.version, &sc.fingerprint);
            Ok(Json(json!({
                "version": sc.version,
                "fingerprint": sc.fingerprint,
                "epoch": pos.epoch,
                "seq": pos.seq,
            }))
            .into_response())
        }
        Err(e @ StoreError::Ddl(_)) => {
            tracing::warn!(error = %e, "schema change refused");
            Err(Fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
        }
        Err(e) => Err(Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}
