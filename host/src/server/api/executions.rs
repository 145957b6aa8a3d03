//! Executions: list, status, logs, cancel (SPEC §6.4) and artifacts.

use std::io::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use weir_engine::execution::{Execution, Status};

use super::{Page, PageParams, connector_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::blobs::OnDisk;
use crate::server::error::{ApiError, ApiResult, Path, ProblemDocument, Query};
use crate::server::queue::{self, CancelOutcome};
use crate::server::retention;
use crate::server::state::{ExecutionFilter, ExecutionRow, LogLine};

/// Filters of an execution list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this status.
    pub status: Option<String>,
    /// Only this trigger type.
    pub trigger_type: Option<String>,
    /// Only dry runs (`true`) or only live runs (`false`).
    pub is_dry_run: Option<bool>,
    /// Created at or after (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Items per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A connector's executions, newest first.
#[utoipa::path(get, path = "/connectors/{connector}/executions", tag = "executions",
    params(("connector" = String, Path, description = "Connector id or api_name"), ListParams),
    responses(
        (status = 200, body = Page<Execution>),
        (status = 400, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Page<Execution>>> {
    caller.require(Role::Viewer)?;
    let row = connector_of(&app, &caller, &c)?;
    let limit = PageParams {
        limit: params.limit,
        cursor: None,
    }
    .limit()?;
    let filter = ExecutionFilter {
        status: params.status,
        trigger_type: params.trigger_type,
        is_dry_run: params.is_dry_run,
        created_after: params.created_after,
        created_before: params.created_before,
    };
    let docs = app
        .db
        .executions(&row.id, &filter, params.cursor.as_deref(), limit + 1)?;
    let page = super::page(docs, limit, |d| d.id.clone(), |d| live_view(&app, d));
    Ok(Json(page))
}

/// The freshest document: the live one while this process runs it.
fn live_view(app: &App, stored: Execution) -> Execution {
    match app.runs.live(&stored.id) {
        // A cancel another process stored shows before this process's run
        // has read it.
        Some(mut live) if live.status == Status::Running && stored.status == Status::Canceling => {
            live.status = Status::Canceling;
            live
        }
        Some(live) => live,
        None => stored,
    }
}

/// The execution `id` if the caller may see it (else 404 or 403).
pub fn visible(app: &App, caller: &Caller, id: &str) -> ApiResult<ExecutionRow> {
    let row = app.db.execution(id)?.ok_or_else(|| ApiError::not_found("execution"))?;
    if row.workspace_id != caller.workspace_id {
        return Err(ApiError::not_found("execution"));
    }
    caller.require_connector(&row.connector_id, &row.document.connector.api_name)?;
    Ok(row)
}

/// **Execution status**: status, step progress with live counts, error,
/// timings, queue position and links.
#[utoipa::path(get, path = "/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = Execution),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn get(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Execution>> {
    caller.require(Role::Viewer)?;
    let row = visible(&app, &caller, &id)?;
    Ok(Json(current(&app, &row.workspace_id, row.document)?))
}

/// A stored execution as it is now: live counts while it runs, its queue
/// position while queued.
pub fn current(app: &App, workspace_id: &str, stored: Execution) -> ApiResult<Execution> {
    let mut doc = live_view(app, stored);
    if doc.status == Status::Queued {
        doc.queue_position = Some(app.db.queue_position(workspace_id, &doc.id)?);
    }
    Ok(doc)
}

/// `?after=&limit=` of the log.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Lines after this position (the `next_cursor` of the previous page).
    pub cursor: Option<u64>,
    /// Lines per page (default 50, at most 500).
    pub limit: Option<usize>,
}

/// A log line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogView {
    /// Position, from 1.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// The line.
    pub message: String,
}

impl From<LogLine> for LogView {
    fn from(l: LogLine) -> Self {
        Self {
            seq: l.seq,
            at: l.at,
            level: l.level,
            message: l.message,
        }
    }
}

/// The execution's log lines, oldest first.
#[utoipa::path(get, path = "/executions/{id}/logs", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), LogParams),
    responses(
        (status = 200, body = Page<LogView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn logs(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> ApiResult<Json<Page<LogView>>> {
    caller.require(Role::Viewer)?;
    visible(&app, &caller, &id)?;
    let limit = PageParams {
        limit: params.limit,
        cursor: None,
    }
    .limit()?;
    let lines = app.db.logs(&id, params.cursor.unwrap_or(0), limit + 1)?;
    Ok(Json(super::page(lines, limit, |l| l.seq.to_string(), LogView::from)))
}

/// **Cancel execution**: 202 with the execution, now `canceling` (or
/// `canceled` if it was queued); again 202 when repeated, also once it is
/// `canceled`; 409 `execution_finished` once it has ended otherwise.
#[utoipa::path(post, path = "/executions/{id}/cancel", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 202, body = Execution),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn cancel(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    visible(&app, &caller, &id)?;
    match queue::cancel(&app, &id)? {
        CancelOutcome::Accepted(doc) => Ok((StatusCode::ACCEPTED, Json(*doc)).into_response()),
        CancelOutcome::Finished => Err(ApiError::conflict(
            "execution_finished",
            "the execution has already finished",
        )),
    }
}

/// Deletes an execution that has ended, with its artifacts, log lines
/// and webhook payloads (what retention deletes once the workspace's
/// `retention` has passed; docs/retention.md). Its input file stays a file
/// of the workspace.
#[utoipa::path(delete, path = "/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn delete(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    visible(&app, &caller, &id)?;
    // In a task of its own: a request dropped half-way does not leave the
    // artifacts of a deleted execution behind.
    let deleted = {
        let (app, id) = (app.clone(), id.clone());
        tokio::spawn(async move { retention::delete_execution(&app, &id).await })
            .await
            .map_err(ApiError::internal)??
    };
    if deleted {
        return Ok(StatusCode::NO_CONTENT);
    }
    match app.db.execution(&id)? {
        Some(_) => Err(ApiError::conflict(
            "execution_not_finished",
            "the execution has not ended; cancel it first, or wait for it to end",
        )),
        None => Err(ApiError::not_found("execution")),
    }
}

/// An artifact file of a finished (or running) execution.
async fn artifact(app: &App, caller: &Caller, id: &str, file: &str, content_type: &str) -> ApiResult<Response> {
    visible(app, caller, id)?;
    match app.blobs.artifact(id, file).await.map_err(ApiError::internal)? {
        Some(download) => Ok(super::files::send(download, file, content_type)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "artifact_not_available",
            format!("{file} is not available (the run has not written it)"),
        )),
    }
}

/// The execution's input file.
#[utoipa::path(get, path = "/executions/{id}/input", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = Vec<u8>, content_type = "*/*", description = "The file, with the content type it was uploaded with"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn input(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let row = visible(&app, &caller, &id)?;
    let Some(sha) = &row.document.source_file_id else {
        return Err(ApiError::not_found("input file"));
    };
    let file = app
        .db
        .file(&row.workspace_id, sha)?
        .ok_or_else(|| ApiError::not_found("input file"))?;
    let download = app.blobs.download(sha).await.map_err(ApiError::internal)?;
    let download = download.ok_or_else(|| ApiError::not_found("input file"))?;
    Ok(super::files::send(download, &file.name, &file.content_type))
}

/// The SQL output of every scope, as `output/<scope>.csv` files in a zip.
#[utoipa::path(get, path = "/executions/{id}/output.zip", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = Vec<u8>, content_type = "application/zip"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn output(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let row = visible(&app, &caller, &id)?;
    if !live_view(&app, row.document).status.is_terminal() {
        return Err(ApiError::conflict(
            "execution_running",
            "output.zip is made once the execution has finished",
        ));
    }
    if let Some(zip) = app
        .blobs
        .artifact(&id, "output.zip")
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(super::files::send(zip, "output.zip", "application/zip"));
    }
    let names = app
        .blobs
        .artifact_names(&id, "output")
        .await
        .map_err(ApiError::internal)?;
    if names.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "artifact_not_available",
            "the run has not written any output",
        ));
    }
    let mut outputs = Vec::with_capacity(names.len());
    for name in names {
        let file = app
            .blobs
            .artifact_on_disk(&id, &name)
            .await
            .map_err(ApiError::internal)?;
        outputs.push((name, file));
    }
    let zip = app.blobs.scratch_file().map_err(ApiError::internal)?;
    let zip = tokio::task::spawn_blocking(move || zip_files(&outputs, zip))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    // Made once and kept: a concurrent request makes the same zip.
    app.blobs
        .put_artifact(&id, "output.zip", zip)
        .await
        .map_err(ApiError::internal)?;
    let zip = app
        .blobs
        .artifact(&id, "output.zip")
        .await
        .map_err(ApiError::internal)?;
    let zip = zip.ok_or_else(|| ApiError::internal("output.zip went as it was made"))?;
    Ok(super::files::send(zip, "output.zip", "application/zip"))
}

/// Zips `outputs` (`output/<scope>.csv` and their files on disk) into `zip`.
fn zip_files(outputs: &[(String, OnDisk)], zip: tempfile::NamedTempFile) -> std::io::Result<tempfile::TempPath> {
    {
        let mut writer = zip::ZipWriter::new(zip.as_file());
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, file) in outputs {
            writer
                .start_file(name.as_str(), options)
                .map_err(std::io::Error::other)?;
            std::io::copy(&mut std::fs::File::open(file.path())?, &mut writer)?;
        }
        writer.finish().map_err(std::io::Error::other)?.flush()?;
    }
    zip.as_file().sync_all()?;
    Ok(zip.into_temp_path())
}

/// The run report (counts, invalid and rejected rows).
#[utoipa::path(get, path = "/executions/{id}/report.xlsx", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = Vec<u8>, content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn report(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    artifact(
        &app,
        &caller,
        &id,
        "report.xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )
    .await
}

/// The rejected and invalid rows with their reasons.
#[utoipa::path(get, path = "/executions/{id}/rejected.csv", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = String, content_type = "text/csv"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn rejected(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    artifact(&app, &caller, &id, "rejected.csv", "text/csv; charset=utf-8").await
}

/// The exact script the run used.
#[utoipa::path(get, path = "/executions/{id}/sql", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = String, content_type = "text/plain"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn sql(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let row = visible(&app, &caller, &id)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], row.script).into_response())
}
