//! Connectors (CRUD by id or api_name) and their SQL: the draft, publishing
//! it after a successful dry run, and every version.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json_};
use weir_engine::Error as EngineError;
use weir_engine::check;
use weir_engine::connector::{Connector, ConnectorStatus, SqlSource};
use weir_engine::error::Problem;
use weir_engine::execution::{Execution, TriggerType};
use weir_engine::objects::Objects;
use weir_engine::pipeline::InputFile;
use weir_engine::sql::Script;

use super::{Page, PageParams, connector_of, optional_body, page_of, run_input};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Body, FieldError, Path, ProblemDocument, Query};
use crate::server::state::{ConnectorRow, SqlVersion};

/// Keys a client may send back from a `GET` that are not part of the definition.
const READ_ONLY: &[&str] = &[
    "id",
    "live_version",
    "draft_version",
    "created_at",
    "updated_at",
    "warnings",
];

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Json_, patch: Json_) {
    match patch {
        Json_::Object(entries) => {
            if !target.is_object() {
                *target = Json_::Object(Map::new());
            }
            if let Json_::Object(map) = target {
                for (k, v) in entries {
                    if v.is_null() {
                        map.remove(&k);
                    } else {
                        merge_patch(map.entry(k).or_insert(Json_::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

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

/// What a connector document sent by a client holds.
pub(super) struct Submitted {
    pub(super) connector: Connector,
    pub(super) sample_file_id: Option<String>,
    pub(super) draft: Option<String>,
}

fn invalid(problems: Vec<Problem>) -> ApiError {
    ApiError::invalid("invalid_connector", "the connector is not valid", problems)
}

/// Parses a connector document and checks everything that does not need
/// the SQL's output: the document's own rules, the sample file, the load
/// steps against the workspace's objects, and whether it may be operational.
pub(super) fn parse(app: &App, caller: &Caller, doc: Json_, has_live: bool) -> ApiResult<Submitted> {
    let objects = app.db.object_defs(&caller.workspace_id)?;
    parse_among(app, caller, doc, has_live, &objects)
}

/// [`parse`], with the load steps checked against `objects` (the
/// workspace's, and those a package brings).
pub(super) fn parse_among(
    app: &App,
    caller: &Caller,
    mut doc: Json_,
    has_live: bool,
    objects: &Objects,
) -> ApiResult<Submitted> {
    let Json_::Object(map) = &mut doc else {
        return Err(invalid(vec![Problem::new("", "the connector must be a JSON object")]));
    };
    for k in READ_ONLY {
        map.remove(*k);
    }
    let sample_file_id = match map.remove("sample_file_id") {
        None | Some(Json_::Null) => None,
        Some(Json_::String(s)) => Some(s),
        Some(_) => return Err(invalid(vec![Problem::new("sample_file_id", "must be a file id")])),
    };
    // Every problem in one answer: unknown keys and broken rules do not
    // hide the checks against the workspace below.
    let parsed = Connector::parse_json_value(doc);
    let mut problems = parsed.problems;
    let Some(mut connector) = parsed.document else {
        return Err(invalid(problems));
    };
    if connector.sql.file.is_some() {
        problems.push(Problem::new(
            "sql.file",
            "the API carries the script itself: use sql.text",
        ));
    }
    let draft = connector.sql.text.take();
    connector.sql = SqlSource::default();
    if let Some(id) = &sample_file_id
        && super::files::file_of(app, caller, id)?.is_none()
    {
        problems.push(Problem::new("sample_file_id", format!("there is no file `{id}`")));
    }
    problems.extend(objects.check_loads(&connector));
    problems.extend(connector.limits.over(&app.settings.limit_caps));
    if let Some(name) = connector.webhook.as_ref().and_then(|w| w.secret_env.as_deref()) {
        let workspace = app
            .db
            .workspace(&caller.workspace_id)?
            .ok_or_else(|| ApiError::internal("the caller's workspace is missing"))?;
        let prefixes = &app.settings.config.webhook_secret_prefixes;
        if let Err(e) = crate::server::webhooks::check_secret_env(prefixes, &workspace.name, name) {
            problems.push(Problem::new("webhook.secret_env", e));
        }
    }
    if connector.status == ConnectorStatus::Operational && !has_live {
        problems.push(Problem::new(
            "status",
            "a connector can be operational only once it has a live SQL script (publish the draft first)",
        ));
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(Submitted {
        connector,
        sample_file_id,
        draft,
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
    let rows = app.db.connectors(
        &caller.workspace_id,
        caller.connectors.as_deref(),
        params.cursor.as_deref(),
        limit + 1,
    )?;
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
    let submitted = parse(&app, &caller, doc, false)?;
    let stored = insert(&app, &caller, submitted)?;
    Ok((StatusCode::CREATED, Json(view(&stored)?)))
}

/// Stores a new connector; its draft is checked first.
pub(super) fn insert(app: &App, caller: &Caller, submitted: Submitted) -> ApiResult<ConnectorRow> {
    let (row, draft) = new_row(caller, submitted)?;
    if !app.db.insert_connector(&row, &draft)? {
        return Err(taken(&row.api_name));
    }
    app.db
        .connector(&caller.workspace_id, &row.id)?
        .ok_or_else(|| ApiError::not_found("connector"))
}

fn taken(api_name: &str) -> ApiError {
    ApiError::conflict("connector_exists", format!("a connector named `{api_name}` exists"))
}

/// The row of a new connector and its first draft, once the draft is
/// checked; nothing is written.
pub(super) fn new_row(caller: &Caller, submitted: Submitted) -> ApiResult<(ConnectorRow, String)> {
    let draft = submitted.draft.unwrap_or_default();
    if !draft.trim().is_empty() {
        check_script(&draft)?;
    }
    let row = ConnectorRow {
        id: uuid::Uuid::now_v7().to_string(),
        workspace_id: caller.workspace_id.clone(),
        api_name: submitted.connector.api_name.clone(),
        connector: submitted.connector,
        sample_file_id: submitted.sample_file_id,
        draft_version: 1,
        live_version: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    Ok((row, draft))
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
    let mut doc = serde_json::to_value(&row.connector).map_err(ApiError::internal)?;
    if let Json_::Object(map) = &mut doc {
        map.insert(
            "sample_file_id".into(),
            row.sample_file_id.clone().map_or(Json_::Null, Json_::String),
        );
    }
    merge_patch(&mut doc, patch);
    let submitted = parse(&app, &caller, doc, row.live_version.is_some())?;
    let stored = replace(&app, &caller, &row, submitted).await?;
    Ok(Json(view(&stored)?))
}

/// Replaces a connector's definition (an update, a package push); a draft
/// in it becomes the next draft. An operational connector's new definition
/// must fit its live script's output.
pub(super) async fn replace(
    app: &App,
    caller: &Caller,
    row: &ConnectorRow,
    submitted: Submitted,
) -> ApiResult<ConnectorRow> {
    // What an operational connector's edit is checked against, read only
    // when it is checked.
    let (objects, sample) = if needs_live_check(row, &submitted) {
        let sample = match &submitted.sample_file_id {
            Some(id) => match super::files::file_of(app, caller, id)? {
                Some(f) => Some((app.blobs.on_disk(&f.sha256).await.map_err(ApiError::internal)?, f.name)),
                None => None,
            },
            None => None,
        };
        (app.db.object_defs(&caller.workspace_id)?, sample)
    } else {
        (Objects::default(), None)
    };
    let sample_file = sample.as_ref().map(|(on_disk, name)| InputFile {
        path: on_disk.path().to_path_buf(),
        name: name.clone(),
    });
    let updated = check_replace(app, caller, row, &submitted, &objects, sample_file.as_ref()).await?;
    if !app.db.update_connector(&updated)? {
        return Err(taken(&updated.api_name));
    }
    if let Some(draft) = &submitted.draft {
        app.db.save_draft(&row.id, draft)?;
    }
    replaced(app, caller, row)
}

/// After a connector was replaced: an inactive connector that became
/// operational runs what it queued, and a schedule may have changed.
pub(super) fn replaced(app: &App, caller: &Caller, row: &ConnectorRow) -> ApiResult<ConnectorRow> {
    app.runs.wake();
    app.schedules.wake();
    app.db
        .connector(&caller.workspace_id, &row.id)?
        .ok_or_else(|| ApiError::not_found("connector"))
}

/// Whether a replacement of `row` must fit its live script's output: the
/// connector has one and stays (or becomes) operational.
fn needs_live_check(row: &ConnectorRow, submitted: &Submitted) -> bool {
    row.live_version.is_some() && submitted.connector.status == ConnectorStatus::Operational
}

/// Checks a replacement of `row` against `objects` and the connector's
/// `sample` (both read only for an operational connector with a live
/// script), and gives the row as it is to be; nothing is written.
pub(super) async fn check_replace(
    app: &App,
    caller: &Caller,
    row: &ConnectorRow,
    submitted: &Submitted,
    objects: &Objects,
    sample: Option<&InputFile>,
) -> ApiResult<ConnectorRow> {
    if let Some(draft) = &submitted.draft {
        check_script(draft)?;
    }
    app.objects
        .keep_within_reach(caller, row, Some(&submitted.connector), submitted.draft.as_deref())?;
    // A source decides where its secret is sent: only a key of the whole
    // workspace, which may manage the secrets, may point one elsewhere.
    let uses_secrets = submitted.connector.sources.iter().any(|s| s.secret.is_some());
    if uses_secrets && submitted.connector.sources != row.connector.sources {
        caller.require_whole_workspace().map_err(|_| {
            ApiError::forbidden(
                "sources that use workspace secrets decide where those secrets are sent; \
                 changing them needs a key of the whole workspace",
            )
        })?;
    }
    if let Some(live) = row.live_version.filter(|_| needs_live_check(row, submitted)) {
        check_live(app, row, submitted, live, objects, sample).await?;
    }
    Ok(ConnectorRow {
        api_name: submitted.connector.api_name.clone(),
        connector: submitted.connector.clone(),
        sample_file_id: submitted.sample_file_id.clone(),
        ..row.clone()
    })
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
    app.db.delete_connector(&row.id)?;
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

fn sql_view(app: &App, row: &ConnectorRow) -> ApiResult<SqlView> {
    let draft = app
        .db
        .sql_version(&row.id, row.draft_version)?
        .ok_or_else(|| ApiError::internal("the draft version is missing"))?;
    let live = match row.live_version {
        Some(v) => app.db.sql_version(&row.id, v)?.map(SqlVersionView::from),
        None => None,
    };
    Ok(SqlView {
        live,
        draft: draft.into(),
    })
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
    Ok(Json(sql_view(&app, &row)?))
}

/// A new draft script.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftRequest {
    /// The script text.
    pub text: String,
}

/// Refuses (422) a script that does not parse or uses a forbidden form,
/// with the line and column of the problem.
fn check_script(text: &str) -> ApiResult<()> {
    Script::parse(text).map(|_| ()).map_err(refused_script)
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
    app.objects
        .keep_within_reach(&caller, &row, None, Some(&request.text))?;
    let version = app.db.save_draft(&row.id, &request.text)?;
    check_draft(&app, &caller, &row, &request.text)
        .await
        .map_err(|e| e.with_draft_version(version))?;
    Ok(Json(sql_view(&app, &row)?))
}

/// Plans `text` against the connector's sample file, with the workspace's
/// objects when the connector loads records (as a run would see them).
/// Without a sample only the parse is checked.
async fn check_draft(app: &App, caller: &Caller, row: &ConnectorRow, text: &str) -> ApiResult<()> {
    let connector = &row.connector;
    let stored = match &row.sample_file_id {
        Some(id) => match app.db.file(&caller.workspace_id, id)? {
            Some(f) => Some((app.blobs.on_disk(&f.sha256).await.map_err(ApiError::internal)?, f.name)),
            None => None,
        },
        None => None,
    };
    let sample = stored.as_ref().map(|(on_disk, name)| InputFile {
        path: on_disk.path().to_path_buf(),
        name: name.clone(),
    });
    // A script reads `records.<object>` of every object of the workspace.
    let objects = app.db.object_defs(&caller.workspace_id)?;
    check::script(connector, text, sample.as_ref(), Some(&objects))
        .await
        .map_err(refused_script)
}

/// Refuses an edit of an operational connector that its live script's
/// output would not satisfy: a variable of a column or scope the script
/// does not make, a load step of a scope it does not make. Planned against
/// the sample, as a draft is; without a sample there is nothing to plan
/// against, and the next run says it.
async fn check_live(
    app: &App,
    row: &ConnectorRow,
    submitted: &Submitted,
    live: u32,
    objects: &Objects,
    sample: Option<&InputFile>,
) -> ApiResult<()> {
    let script = app
        .db
        .sql_version(&row.id, live)?
        .ok_or_else(|| ApiError::internal("the live SQL version is missing"))?;
    let objects = Some(objects);
    let Err(refused) = check::connector(&submitted.connector, &script.text, sample, objects).await else {
        return Ok(());
    };
    // An edit is refused for what it breaks, not for what was broken
    // before it (a sample the live script no longer reads, a variable
    // already missing its column): the next run says those.
    match (
        refused,
        check::connector(&row.connector, &script.text, sample, objects).await,
    ) {
        (EngineError::InvalidConnector(problems), before) => {
            let before = match before {
                Ok(()) => Vec::new(),
                Err(EngineError::InvalidConnector(before)) => before,
                Err(_) => return Ok(()),
            };
            let new: Vec<Problem> = problems.into_iter().filter(|p| !before.contains(p)).collect();
            if new.is_empty() {
                return Ok(());
            }
            Err(ApiError::invalid(
                "invalid_connector",
                "the edit does not fit the output of the connector's live SQL script",
                new,
            ))
        }
        (e, Ok(())) => Err(refused_script(e)),
        (_, Err(_)) => Ok(()),
    }
}

/// A script the engine refused, as a 422 with its position; failures that
/// are not the script's (the server's own I/O) stay internal.
fn refused_script(e: EngineError) -> ApiError {
    match e {
        EngineError::Internal(_) | EngineError::Io { .. } => ApiError::internal(e),
        EngineError::InvalidConnector(problems) => {
            ApiError::invalid("invalid_connector", "the connector definition is invalid", problems)
        }
        e => {
            let position = e.position();
            ApiError::invalid(e.code().as_str(), e.to_string(), vec![])
                .at(position.map(|p| p.line), position.map(|p| p.column))
        }
    }
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
    let file = run_input(
        &app,
        &caller,
        &row,
        request.source_file_id,
        request.payloads,
        "publishing runs the draft on a file first",
        "no_sample_file",
    )
    .await?;
    let draft = app
        .db
        .sql_version(&row.id, row.draft_version)?
        .ok_or_else(|| ApiError::internal("the draft version is missing"))?;
    check_script(&draft.text)?;
    let doc = super::runs::start(
        &app,
        &caller,
        &row,
        crate::server::triggers::Version::Draft,
        Some(file),
        true,
        TriggerType::Publish,
        None,
        &std::collections::BTreeMap::new(),
    )?
    .doc;
    let limit = row
        .connector
        .limits
        .capped(&app.settings.limit_caps)
        .parse()
        .ok()
        .map_or(Duration::from_secs(300), |l| l.max_runtime);
    let done = wait_for_end(&app, &doc.id, limit + Duration::from_secs(30)).await?;
    if !matches!(
        done.status,
        weir_engine::execution::Status::Success | weir_engine::execution::Status::PartialSuccess
    ) {
        let e = done.error.clone();
        let detail = e.as_ref().map_or_else(
            || format!("the dry run of the draft ended {}", done.status.as_str()),
            |e| format!("the dry run of the draft failed: {}", e.message),
        );
        let code = e.as_ref().map_or("publish_check_failed", |e| e.code.as_str());
        return Err(ApiError::invalid(code, detail, vec![])
            .at(e.as_ref().and_then(|e| e.line), e.as_ref().and_then(|e| e.column))
            .with_execution(serde_json::to_value(&done).map_err(ApiError::internal)?));
    }
    if !app.db.publish(&row.id, draft.version)? {
        return Err(ApiError::conflict(
            "draft_changed",
            "the draft changed while it was checked; publish again",
        ));
    }
    let row = connector_of(&app, &caller, &row.id)?;
    Ok(Json(sql_view(&app, &row)?))
}

/// Waits until execution `id` is terminal (or `limit` passes).
pub async fn wait_for_end(app: &App, id: &str, limit: Duration) -> ApiResult<Execution> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let doc = match app.runs.live(id) {
            Some(doc) => doc,
            None => {
                app.db
                    .execution(id)?
                    .ok_or_else(|| ApiError::not_found("execution"))?
                    .document
            }
        };
        if doc.status.is_terminal() {
            return Ok(doc);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "publish_check_timeout",
                format!("the dry run {id} did not finish in time"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
    let versions = app.db.sql_versions(&row.id)?;
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
    let v = app
        .db
        .sql_version(&row.id, n)?
        .ok_or_else(|| ApiError::not_found("SQL version"))?;
    Ok(Json(v.into()))
}
