//! **Dev packages** (SPEC §7): `GET /connectors/{c}/dev-package` zips what
//! `weir run` needs to run a connector on a laptop with the same engine;
//! `PUT /connectors/{c}/package` takes such a zip (or a hand-made one)
//! back. What a package holds and how a push is checked and written are the
//! packages service's (`server/packages.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::connector_of;
use super::connectors::ConnectorView;
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiResult, Path, ProblemDocument, Query};
use crate::server::packages::DevPackageAsk;

/// `?source_file_id=&version=` of a dev package.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DevPackageParams {
    /// The input file to include (an execution's `source_file_id`); the
    /// connector's sample when absent.
    pub source_file_id: Option<String>,
    /// `live` (default) or `draft`.
    pub version: Option<String>,
    /// Include a snapshot of the records of the objects the load steps
    /// write to (`records/<object>.jsonl`), so that a local run matches
    /// against them; at most `package_records_max` (422 past it).
    #[serde(default)]
    pub records: bool,
}

/// Downloads the connector as a dev package zip for `weir run`.
#[utoipa::path(get, path = "/connectors/{connector}/dev-package", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name"), DevPackageParams),
    responses(
        (status = 200, content_type = "application/zip", body = Vec<u8>, description = "The package"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn dev_package(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<DevPackageParams>,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let row = connector_of(&app, &caller, &c)?;
    let ask = DevPackageAsk {
        source_file_id: params.source_file_id,
        version: params.version,
        records: params.records,
    };
    let bytes = app.packages.dev_package(&caller, &row, &ask).await?;
    let mut response = bytes.0.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", bytes.1)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Creates or updates the connector from a package zip: its script
/// becomes the draft, its data file the sample; missing objects are created
/// and its plugins published.
#[utoipa::path(put, path = "/connectors/{connector}/package", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name (the package's api_name for a new one)")),
    request_body(content = Vec<u8>, content_type = "application/zip", description = "A dev package zip"),
    responses(
        (status = 200, body = ConnectorView, description = "Updated"),
        (status = 201, body = ConnectorView, description = "Created"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn push(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<ConnectorView>)> {
    caller.require(Role::Admin)?;
    let stream = request.into_body().into_data_stream();
    // The zip is read where it was received and goes when the push ends:
    // what a package brings is kept as its own files (sample, plugins).
    let (received, _) = app
        .blobs
        .receive(stream, app.settings.max_upload)
        .await
        .map_err(super::files::upload_error)?;
    let pushed = app.packages.push(&caller, &c, &received).await?;
    let status = if pushed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(super::connectors::view(&pushed.row)?)))
}
