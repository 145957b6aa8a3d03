//! Liveness and metrics.

use std::sync::Arc;

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::server::App;
use crate::server::auth::{Role, authenticate, key_in};
use crate::server::error::{ApiError, ApiResult, ProblemDocument};

/// What `/healthz` says of the server and the stores it depends on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` when both stores answer, else `unavailable`.
    pub status: &'static str,
    /// The state database: `ok` or `unavailable`.
    pub database: &'static str,
    /// The object store (files and artifacts): `ok` or `unavailable`.
    pub object_store: &'static str,
}

/// How long `/healthz` waits for a store.
const HEALTH_WAIT: Duration = Duration::from_secs(2);

/// Health: whether this process serves and its database and object store
/// answer (within 2 s each), as `application/health+json`. The only route
/// without auth; it says no more than `ok` or `unavailable` of each (the
/// reason is in the server's log).
#[utoipa::path(get, path = "/healthz", tag = "system", security(()),
    responses(
        (status = 200, description = "The server and its stores answer", body = Health, content_type = "application/health+json"),
        (status = 503, description = "A store does not answer", body = Health, content_type = "application/health+json"),
    ))]
pub async fn healthz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let db = app.db.clone();
    let database = tokio::time::timeout(HEALTH_WAIT, tokio::task::spawn_blocking(move || db.answers())).await;
    let database = match database {
        Ok(Ok(Ok(()))) => "ok",
        other => {
            tracing::warn!(answer = ?other.map(|r| r.map(|r| r.map_err(|e| e.to_string()))), "the state database does not answer");
            "unavailable"
        }
    };
    let object_store = match tokio::time::timeout(HEALTH_WAIT, app.blobs.answers()).await {
        Ok(Ok(())) => "ok",
        other => {
            tracing::warn!(answer = ?other.map(|r| r.map_err(|e| e.to_string())), "the object store does not answer");
            "unavailable"
        }
    };
    let ok = database == "ok" && object_store == "ok";
    let health = Health {
        status: if ok { "ok" } else { "unavailable" },
        database,
        object_store,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/health+json")],
        Json(health),
    )
}

/// Prometheus metrics in the text exposition format. They describe the
/// whole server, so they are for its operator: the `metrics_token`
/// setting, or an admin key of the workspace made at bootstrap that is not
/// limited to some connectors.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No valid key", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A key of another workspace, role or reach", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    let Some(presented) = key_in(&headers) else {
        return Err(ApiError::unauthorized(
            "metrics need the metrics token or an API key (Authorization: Bearer …)",
        ));
    };
    let token = app.settings.config.metrics_token.as_deref().unwrap_or_default();
    let is_token = !token.is_empty() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()));
    if !is_token {
        let caller = authenticate(app.db.as_ref(), presented)?
            .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?;
        caller.require(Role::Admin)?;
        caller.require_whole_workspace()?;
        let operators = app.db.workspace(&app.settings.config.bootstrap_workspace)?;
        if operators.is_none_or(|w| w.id != caller.workspace_id) {
            return Err(ApiError::forbidden(format!(
                "metrics describe the whole server: an admin key of workspace `{}` or the metrics token reads them",
                app.settings.config.bootstrap_workspace
            )));
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    ))
}
