//! Plugins of the workspace: Wasm transform components published as
//! `name@version` (SPEC §5). A published version is immutable; its file is
//! stored by content hash with the uploaded files. A component is compiled
//! and checked against the `weir:transform` world before it is accepted, so
//! a run never meets a plugin that cannot load.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use weir_engine::connector::PluginRef;
use weir_engine::error::Problem;

use super::{Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, ProblemDocument, Query};
use crate::server::state::PluginRow;
use sha2::{Digest, Sha256};

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
    let reference = format!("{}@{}", params.name, params.version);
    if let Err(message) = PluginRef::parse(&reference) {
        return Err(ApiError::invalid(
            "invalid_plugin",
            "the plugin's name or version is not valid",
            vec![Problem::new("name@version", message)],
        ));
    }
    let stream = request.into_body().into_data_stream();
    let (received, _) = app
        .blobs
        .receive(stream, app.settings.max_upload)
        .await
        .map_err(super::files::upload_error)?;
    let wasm = tokio::fs::read(&received).await.map_err(ApiError::internal)?;
    drop(received);
    let (row, inserted) = register(&app, &caller.workspace_id, params.name, params.version, wasm).await?;
    let status = if inserted { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(PluginView::of(row))))
}

/// Checks `wasm` against the transform world and publishes it as
/// `name@version` (true when new; the same content again is no change).
/// Only a component that is published is kept in the file store.
pub(super) async fn register(
    app: &App,
    workspace_id: &str,
    name: String,
    version: String,
    wasm: Vec<u8>,
) -> ApiResult<(PluginRow, bool)> {
    let (row, wasm) = match check(app, workspace_id, name, version, wasm).await? {
        Checked::Published(known) => return Ok((known, false)),
        Checked::New(row, wasm) => (row, wasm),
    };
    let (staged, _) = app.blobs.stage(wasm).await.map_err(ApiError::internal)?;
    let (workspace, publishing) = (workspace_id.to_string(), row.clone());
    let (stored_row, inserted) = app
        .files
        .keep_with(vec![(staged, row.sha256.clone())], move |db| {
            db.insert_plugin(&workspace, &publishing)
        })
        .await??;
    if stored_row.sha256 != row.sha256 {
        // Another publish of this version won a race: its content stays,
        // this one's is refused and leaves unless something else holds it.
        app.files.forget_content(&row.sha256).await;
        return Err(version_taken(&format!("{}@{}", row.name, row.version)));
    }
    Ok((stored_row, inserted))
}

/// A component checked for publishing.
pub(super) enum Checked {
    /// The version is published with this very content.
    Published(PluginRow),
    /// A new version: its row and its content, not yet stored.
    New(PluginRow, Vec<u8>),
}

/// Checks `wasm` against the transform world as `name@version` of the
/// workspace; nothing is written.
pub(super) async fn check(
    app: &App,
    workspace_id: &str,
    name: String,
    version: String,
    wasm: Vec<u8>,
) -> ApiResult<Checked> {
    let reference = format!("{name}@{version}");
    let sha256 = hex::encode(Sha256::digest(&wasm));
    if let Some(known) = app.db.plugin(workspace_id, &name, &version)? {
        return if known.sha256 == sha256 {
            Ok(Checked::Published(known))
        } else {
            Err(version_taken(&reference))
        };
    }
    let runtime = app.plugins.clone();
    let (checked, wasm) = tokio::task::spawn_blocking(move || (runtime.load(&reference, &wasm), wasm))
        .await
        .map_err(ApiError::internal)?;
    if let Err(e) = checked {
        return Err(ApiError::invalid(
            "invalid_plugin",
            "the file is not a component Weir can run as a transform step",
            vec![Problem::new("body", e.to_string())],
        ));
    }
    let size = wasm.len() as u64;
    let row = PluginRow {
        name,
        version,
        sha256,
        size,
        created_at: Utc::now(),
    };
    Ok(Checked::New(row, wasm))
}

/// The answer to a version published with other content.
pub(super) fn version_taken(reference: &str) -> ApiError {
    ApiError::conflict(
        "plugin_version_exists",
        format!("{reference} is already published with other content; publish a new version"),
    )
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
    let plugins = app.db.plugins(&caller.workspace_id)?;
    // A NUL cannot be in a name, so `name NUL version` orders by name,
    // then version.
    Ok(Json(page_of(
        plugins,
        &params,
        |p| format!("{}\u{0}{}", p.name, p.version),
        PluginView::of,
    )?))
}
