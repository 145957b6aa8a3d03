//! Liveness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use subtle::ConstantTimeEq;

use crate::server::App;
use crate::server::auth::{Role, authenticate, key_in};
use crate::server::error::{ApiError, ApiResult, ProblemDocument};

/// Liveness: answers while the process serves. The only route without auth.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()),
    responses((status = 200, description = "The server is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
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
