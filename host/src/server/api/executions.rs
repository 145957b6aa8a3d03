//! Executions: list, status, logs, cancel (SPEC §6.4) and artifacts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use weir_engine::execution::Execution;

use super::{Page, PageParams, connector_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiResult, Path, ProblemDocument, Query};
use crate::server::state::{AttemptRow, ExecutionFilter, LogLine, NotificationRow};

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
        ..ExecutionFilter::default()
    };
    let docs = app
        .executions
        .list(&row, &filter, params.cursor.as_deref(), limit + 1)?;
    Ok(Json(super::page(docs, limit, |d| d.id.clone(), |d| d)))
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
    let row = app.executions.visible(&caller, &id)?;
    Ok(Json(app.executions.current(&row.workspace_id, row.document)?))
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
    app.executions.visible(&caller, &id)?;
    let limit = PageParams {
        limit: params.limit,
        cursor: None,
    }
    .limit()?;
    let lines = app.executions.logs(&id, params.cursor.unwrap_or(0), limit + 1)?;
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
    app.executions.visible(&caller, &id)?;
    let doc = app.executions.cancel(&id)?;
    Ok((StatusCode::ACCEPTED, Json(doc)).into_response())
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
    app.executions.visible(&caller, &id)?;
    app.executions.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An artifact file of a finished (or running) execution.
async fn artifact(app: &App, caller: &Caller, id: &str, file: &str, content_type: &str) -> ApiResult<Response> {
    app.executions.visible(caller, id)?;
    let download = app.executions.artifact(id, file).await?;
    Ok(super::files::send(download, file, content_type))
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
    let row = app.executions.visible(&caller, &id)?;
    let (file, download) = app.executions.input(&row).await?;
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
    let row = app.executions.visible(&caller, &id)?;
    let zip = app.executions.output_zip(row).await?;
    Ok(super::files::send(zip, "output.zip", "application/zip"))
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
    let row = app.executions.visible(&caller, &id)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], row.script).into_response())
}

/// An attempt to deliver a notification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// From 1.
    pub attempt: u32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it failed: no answer, a refused address, a status other than
    /// 2xx.
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// A notification of the execution's end (docs/notifications.md).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    /// Its place among the connector's `[[notifications]]`, from 0.
    pub n: u32,
    /// Where it is POSTed.
    pub url: String,
    /// The `webhook-id` every attempt carries.
    pub webhook_id: String,
    /// `pending`, `delivered` or `failed` (retried as long as allowed).
    pub state: String,
    /// When the execution ended and it was stored.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<AttemptView>,
}

impl NotificationView {
    fn of((row, attempts): (NotificationRow, Vec<AttemptRow>)) -> Self {
        Self {
            n: row.n,
            url: row.url,
            webhook_id: row.webhook_id,
            state: row.state,
            created_at: row.created_at,
            next_attempt_at: row.next_attempt_at.and_then(DateTime::from_timestamp_millis),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: a.at,
                    status: a.status,
                    error: a.error,
                    took_ms: a.took_ms,
                })
                .collect(),
        }
    }
}

/// The notifications of the execution's end, with every attempt and its
/// answer.
#[utoipa::path(get, path = "/executions/{id}/notifications", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, body = Page<NotificationView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn notifications(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Page<NotificationView>>> {
    caller.require(Role::Viewer)?;
    app.executions.visible(&caller, &id)?;
    let data = app
        .executions
        .notifications(&id)?
        .into_iter()
        .map(NotificationView::of)
        .collect();
    Ok(Json(Page {
        data,
        next_cursor: None,
    }))
}

/// Sends a notification once more, now, with its `webhook-id`: 202 with the
/// notification, `pending` again.
#[utoipa::path(post, path = "/executions/{id}/notifications/{n}/redeliver", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ("n" = u32, Path, description = "The notification's `n`")),
    responses(
        (status = 202, body = NotificationView),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn redeliver(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((id, n)): Path<(String, u32)>,
) -> ApiResult<(StatusCode, Json<NotificationView>)> {
    caller.require(Role::Operator)?;
    app.executions.visible(&caller, &id)?;
    let notification = app.executions.redeliver(&id, n)?;
    app.notifier.wake();
    Ok((StatusCode::ACCEPTED, Json(NotificationView::of(notification))))
}
