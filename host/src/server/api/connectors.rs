//! Connectors (CRUD by id or api_name) and their SQL: the draft, publishing
//! it after a successful dry run, and every version.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json_;
use weir_engine::connector::Connector;

use super::{Page, PageParams, connector_of, optional_body, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::connectors::{PublishInput, Scripts};
use crate::server::error::{ApiResult, Body, FieldError, Path, ProblemDocument, Query};
use crate::server::state::{ConnectorRow, SqlVersion};

/// A connector as the API shows it: its definition (SPEC §2; the script is
/// under `/sql`) with its id, sample file, SQL version numbers and times.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectorView {
    /// The definition.
    #[serde(flatten)]
    pub definition: Connector,
    /// Id (UUID).
    pub id: String,
    /// The file drafts are planned and published against.
    pub sample_file_id: Option<String>,
    /// The live SQL version; `null` until the first publish.
    pub live_version: Option<u32>,
    /// The draft SQL version.
    pub draft_version: u32,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// What will not work as the connector stands, though it is valid
    /// (a `webhook.secret_env` that is not set), each with its path.
    pub warnings: Vec<FieldError>,
}

/// A connector as a client sends it: the definition (SPEC §2) with
/// `sql.text` as its draft script, and the id of its sample file. The keys a
/// `GET` adds (`id`, versions, times) may be sent back and are ignored.
// Only describes the body: `parse` reads it as JSON so that every problem
// is reported with its path.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct ConnectorRequest {
    /// The definition.
    #[serde(flatten)]
    definition: Connector,
    /// The file drafts are planned and published against.
    sample_file_id: Option<String>,
}

pub(super) fn view(row: &ConnectorRow) -> ApiResult<ConnectorView> {
    let definition = row.connector.clone();
    let mut warnings = Vec::new();
    if let Some(name) = definition.webhook.as_ref().and_then(|w| w.secret_env.as_deref())
        && std::env::var_os(name).is_none()
    {
        warnings.push(FieldError {
            path: "webhook.secret_env".into(),
            message: format!(
                "`{name}` is not set in the server's environment: signed webhooks are refused (401) until it is"
            ),
        });
    }
    Ok(ConnectorView {
        definition,
        id: row.id.clone(),
        sample_file_id: row.sample_file_id.clone(),
        live_version: row.live_version,
        draft_version: row.draft_version,
        created_at: row.created_at,
        updated_at: row.updated_at,
        warnings,
    })
}

/// The workspace's connectors, newest first.
#[utoipa::path(get, path = "/connectors", tag = "connectors", params(PageParams),
    responses(
        (status = 200, body = Page<ConnectorView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<ConnectorView>>> {
    caller.require(Role::Viewer)?;
    let limit = params.limit()?;
    let rows = app.connectors.list(&caller, params.cursor.as_deref(), limit + 1)?;
    let page = super::page(rows, limit, |r| r.id.clone(), |r| r);
    let mut data = Vec::new();
    for row in &page.data {
        data.push(view(row)?);
    }
    Ok(Json(Page {
        data,
        next_cursor: page.next_cursor,
    }))
}

/// Creates a connector; `sql.text` becomes its first draft.
#[utoipa::path(post, path = "/connectors", tag = "connectors", request_body = ConnectorRequest,
    responses(
        (status = 201, body = ConnectorView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(doc): Body<Json_>,
) -> ApiResult<(StatusCode, Json<ConnectorView>)> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    let stored = app.connectors.create(&caller, doc)?;
    Ok((StatusCode::CREATED, Json(view(&stored)?)))
}

/// One connector.
#[utoipa::path(get, path = "/connectors/{connector}", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name")),
    responses(
        (status = 200, body = ConnectorView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn get(State(app): State<Arc<App>>, caller: Caller, Path(c): Path<String>) -> ApiResult<Json<ConnectorView>> {
    caller.require(Role::Viewer)?;
    Ok(Json(view(&connector_of(&app, &caller, &c)?)?))
}

/// Changes a connector (JSON merge patch); `sql.text` replaces the draft.
#[utoipa::path(patch, path = "/connectors/{connector}", tag = "connectors",
    request_body(content = ConnectorRequest, content_type = "application/merge-patch+json",
        description = "A JSON merge patch (RFC 7396) of the connector; `application/json` is accepted too"),
    params(("connector" = String, Path, description = "Connector id or api_name")),
    responses(
        (status = 200, body = ConnectorView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Body(patch): Body<Json_>,
) -> ApiResult<Json<ConnectorView>> {
    caller.require(Role::Admin)?;
    let row = connector_of(&app, &caller, &c)?;
    let stored = app.connectors.update(&caller, &row, patch).await?;
    Ok(Json(view(&stored)?))
}

/// Deletes a connector and its SQL versions; its executions stay readable.
#[utoipa::path(delete, path = "/connectors/{connector}", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn delete(State(app): State<Arc<App>>, caller: Caller, Path(c): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let row = connector_of(&app, &caller, &c)?;
    app.connectors.delete(&row)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A SQL version as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SqlVersionView {
    /// Number, from 1.
    pub version: u32,
    /// Script text.
    pub text: String,
    /// When it was saved.
    pub created_at: DateTime<Utc>,
    /// When it was published; `null` for the draft.
    pub published_at: Option<DateTime<Utc>>,
}

impl From<SqlVersion> for SqlVersionView {
    fn from(v: SqlVersion) -> Self {
        Self {
            version: v.version,
            text: v.text,
            created_at: v.created_at,
            published_at: v.published_at,
        }
    }
}

/// The live and draft scripts of a connector.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SqlView {
    /// The live version, if one was published.
    pub live: Option<SqlVersionView>,
    /// The draft.
    pub draft: SqlVersionView,
}

impl From<Scripts> for SqlView {
    fn from(scripts: Scripts) -> Self {
        Self {
            live: scripts.live.map(SqlVersionView::from),
            draft: scripts.draft.into(),
        }
    }
}

/// The live and draft scripts with their version numbers.
#[utoipa::path(get, path = "/connectors/{connector}/sql", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name")),
    responses(
        (status = 200, body = SqlView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn sql(State(app): State<Arc<App>>, caller: Caller, Path(c): Path<String>) -> ApiResult<Json<SqlView>> {
    caller.require(Role::Viewer)?;
    let row = connector_of(&app, &caller, &c)?;
    Ok(Json(app.connectors.scripts(&row)?.into()))
}

/// A new draft script.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftRequest {
    /// The script text.
    pub text: String,
}

/// Saves the draft script, then checks it: parsed, and planned against the
/// connector's sample file when it has one. A refused script is still kept
/// as the draft (SPEC §4) and answered 422 with its line and column.
#[utoipa::path(put, path = "/connectors/{connector}/sql/draft", tag = "connectors", request_body = DraftRequest,
    params(("connector" = String, Path, description = "Connector id or api_name")),
    responses(
        (status = 200, body = SqlView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "The script does not parse or plan; it was kept as the draft (`draft_version`)",
            body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn save_draft(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Body(request): Body<DraftRequest>,
) -> ApiResult<Json<SqlView>> {
    caller.require(Role::Admin)?;
    let row = connector_of(&app, &caller, &c)?;
    let scripts = app.connectors.save_draft(&caller, &row, &request.text).await?;
    Ok(Json(scripts.into()))
}

/// What to publish against.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Run the check on this file instead of the sample.
    #[serde(default)]
    pub source_file_id: Option<String>,
    /// A webhook connector's sample payloads: the check runs on the
    /// `input.webhooks` a batch of them would make.
    #[serde(default)]
    pub payloads: Option<Vec<serde_json::Value>>,
}

/// Publishes the draft: runs it as a dry run on the sample file (or the
/// given file) and makes it live only if that run does not fail.
#[utoipa::path(post, path = "/connectors/{connector}/sql/publish", tag = "connectors", request_body = PublishRequest,
    params(("connector" = String, Path, description = "Connector id or api_name")),
    responses(
        (status = 200, body = SqlView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn publish(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SqlView>> {
    caller.require(Role::Admin)?;
    let row = connector_of(&app, &caller, &c)?;
    // The body is optional: none (or `{}`) publishes against the sample.
    let request: PublishRequest = optional_body(&body, "{\"source_file_id\": \"…\"} or {\"payloads\": [...]}")?;
    let input = PublishInput {
        source_file_id: request.source_file_id,
        payloads: request.payloads,
    };
    let scripts = app.connectors.publish(&caller, &row, input).await?;
    Ok(Json(scripts.into()))
}

/// Every SQL version, newest first.
#[utoipa::path(get, path = "/connectors/{connector}/sql/versions", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name"), PageParams),
    responses(
        (status = 200, body = Page<SqlVersionView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn versions(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<SqlVersionView>>> {
    caller.require(Role::Viewer)?;
    let row = connector_of(&app, &caller, &c)?;
    let versions = app.connectors.versions(&row)?;
    // Zero-padded and counted down, so that the text order is newest first.
    Ok(Json(page_of(
        versions,
        &params,
        |v| format!("{:010}", u32::MAX - v.version),
        Into::into,
    )?))
}

/// One SQL version.
#[utoipa::path(get, path = "/connectors/{connector}/sql/versions/{n}", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name"), ("n" = u32, Path, description = "Version number")),
    responses(
        (status = 200, body = SqlVersionView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn version(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((c, n)): Path<(String, u32)>,
) -> ApiResult<Json<SqlVersionView>> {
    caller.require(Role::Viewer)?;
    let row = connector_of(&app, &caller, &c)?;
    let v = app.connectors.version(&row, n)?;
    Ok(Json(v.into()))
}
