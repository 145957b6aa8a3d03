//! Plugins of the workspace: Wasm transform components published as
//! `name@version`, through the plugins service (`server/plugins.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, ProblemDocument, Query};
use crate::server::plugins::Plugins;
use crate::server::state::PluginRow;

/// A published plugin.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginView {
    /// Its id: the sha256 of the component (plugins are content-addressed).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `name@version`, as `connector.toml` references it.
    pub reference: String,
    /// sha256 of the component, hex (`sha256:<hex>` references it too).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

impl PluginView {
    fn of(row: PluginRow) -> Self {
        Self {
            id: row.sha256.clone(),
            reference: format!("{}@{}", row.name, row.version),
            name: row.name,
            version: row.version,
            sha256: row.sha256,
            size: row.size,
            created_at: row.created_at,
        }
    }
}

/// `?name=&version=` of a publish.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishParams {
    /// Lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// Letters, digits, `.`, `-` and `+`, e.g. `0.1.0`.
    pub version: String,
}

/// Publishes a component (raw body) as `name@version`.
#[utoipa::path(post, path = "/plugins", tag = "plugins",
    params(PublishParams),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's bytes"),
    responses(
        (status = 201, body = PluginView, description = "Published"),
        (status = 200, body = PluginView, description = "Already published with the same content"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json", description = "The version exists with other content"),
        (status = 413, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json", description = "Not a weir:transform component, or a bad name or version"),
    ))]
pub async fn publish(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<PublishParams>,
    request: Request,
) -> ApiResult<(StatusCode, Json<PluginView>)> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    Plugins::check_reference(&params.name, &params.version)?;
    let stream = request.into_body().into_data_stream();
    let (received, _) = app
        .blobs
        .receive(stream, app.settings.max_upload)
        .await
        .map_err(super::files::upload_error)?;
    let wasm = tokio::fs::read(&received).await.map_err(ApiError::internal)?;
    drop(received);
    let (row, inserted) = app
        .plugins
        .publish(&caller.workspace_id, params.name, params.version, wasm)
        .await?;
    let status = if inserted { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(PluginView::of(row))))
}

/// The workspace's plugins, by name and version.
#[utoipa::path(get, path = "/plugins", tag = "plugins", params(PageParams),
    responses(
        (status = 200, body = Page<PluginView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<PluginView>>> {
    caller.require(Role::Viewer)?;
    let plugins = app.plugins.list(&caller.workspace_id)?;
    // A NUL cannot be in a name, so `name NUL version` orders by name,
    // then version.
    Ok(Json(page_of(
        plugins,
        &params,
        |p| format!("{}\u{0}{}", p.name, p.version),
        PluginView::of,
    )?))
}
