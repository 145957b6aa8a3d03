//! **Preview** (SPEC §6.3): `POST /connectors/{c}/preview` runs the draft
//! (or the live script) as a dry run and answers with the first rows of
//! every scope, the first rejected rows and the run's document; what it does
//! and its bounds are the previews service's (`server/previews.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::{connector_of, optional_body};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiResult, Path, ProblemDocument, Query};
use crate::server::previews::{Preview, PreviewAsk};

/// Rows per scope (and rejected rows) when `?rows=` is not given.
const DEFAULT_ROWS: usize = 20;

/// `?rows=` of a preview.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// Rows per scope, and rejected rows, to answer with (default 20, at
    /// most 500).
    pub rows: Option<usize>,
}

/// Which script on which file.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// Run on this file instead of the connector's sample.
    #[serde(default)]
    pub source_file_id: Option<String>,
    /// `draft` (default) or `live`.
    #[serde(default)]
    pub version: Option<String>,
    /// A webhook connector's sample payloads: the preview runs on the
    /// `input.webhooks` a batch of them would make.
    #[serde(default)]
    pub payloads: Option<Vec<serde_json::Value>>,
}

/// Dry-runs the draft (or live) script on the sample or a given file and
/// answers with the first rows of every scope and the rejected rows;
/// nothing is written.
#[utoipa::path(post, path = "/connectors/{connector}/preview", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name"), PreviewParams),
    request_body = PreviewRequest,
    responses(
        (status = 200, body = Preview),
        (status = 400, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn preview(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<PreviewParams>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Preview>> {
    caller.require(Role::Operator)?;
    let row = connector_of(&app, &caller, &c)?;
    let request: PreviewRequest =
        optional_body(&body, "{\"source_file_id\": \"…\", \"version\": \"draft\" | \"live\"}")?;
    let ask = PreviewAsk {
        source_file_id: request.source_file_id,
        version: request.version,
        payloads: request.payloads,
        rows: params.rows.unwrap_or(DEFAULT_ROWS),
    };
    Ok(Json(app.previews.run(&caller, &row, ask).await?))
}
