//! Liveness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiResult, ProblemDocument};

/// Liveness: answers while the process serves. The only route without auth.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()),
    responses((status = 200, description = "The server is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "No valid key", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "A webhook key", body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn metrics(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<impl IntoResponse> {
    caller.require(Role::Viewer)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    ))
}
