//! Runs: the workspace's executions with filters and search, live; a run's
//! stages, counts and log, live over the API's event stream; its rejected
//! rows, downloads, cancel and run again.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use chrono::{NaiveDate, TimeZone, Utc};
use futures::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;
use weir_engine::execution::{Execution, StageStatus, Status, StepProgress, TriggerType};

use super::session::{Posted, Session, Token};
use super::{Answer, Section, badge, count, csrf_field, encode, page, took, when};
use crate::server::App;
use crate::server::api::{self, executions as api_executions};
use crate::server::auth::Role;
use crate::server::error::{self, ApiError};
use crate::server::executions::Trigger;
use crate::server::previews::{RejectedPreview, rejected_rows};
use crate::server::state::ExecutionFilter;
use crate::server::triggers::Version;

/// Runs shown per page.
const PER_PAGE: usize = 50;

/// Rejected rows shown on a run's page.
const REJECTED_SHOWN: usize = 20;

/// The most of `rejected.csv` read to show its first rows.
const REJECTED_READ: usize = 256 << 10;

/// The filters of the runs list, as its form sends them.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    connector: String,
    #[serde(default)]
    trigger: String,
    #[serde(default)]
    dry_run: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    q: String,
    cursor: Option<String>,
}

const STATUSES: &[Status] = &[
    Status::Queued,
    Status::Running,
    Status::Canceling,
    Status::Success,
    Status::PartialSuccess,
    Status::Failed,
    Status::Canceled,
];

const TRIGGERS: &[TriggerType] = &[
    TriggerType::FileUpload,
    TriggerType::Webhook,
    TriggerType::Schedule,
    TriggerType::Publish,
];

impl Filters {
    /// The state store's filter; a date that does not parse is refused.
    fn filter(&self) -> Result<ExecutionFilter, ApiError> {
        let day = |text: &str, name: &str| -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
            if text.is_empty() {
                return Ok(None);
            }
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| ApiError::bad_request(format!("`{name}` must be a date as 2026-12-31, not `{text}`")))?;
            Ok(date.and_hms_opt(0, 0, 0).map(|t| Utc.from_utc_datetime(&t)))
        };
        let some = |text: &str| (!text.is_empty()).then(|| text.to_string());
        Ok(ExecutionFilter {
            connector_ids: some(&self.connector).map(|c| vec![c]),
            search: some(self.q.trim()),
            status: some(&self.status),
            trigger_type: some(&self.trigger),
            is_dry_run: match self.dry_run.as_str() {
                "dry" => Some(true),
                "live" => Some(false),
                _ => None,
            },
            created_after: day(&self.from, "from")?,
            // Through the whole day named.
            created_before: day(&self.to, "to")?.map(|t| t + chrono::TimeDelta::days(1)),
        })
    }

    /// The query string of these filters, without the cursor.
    fn query(&self) -> String {
        let pairs = [
            ("status", &self.status),
            ("connector", &self.connector),
            ("trigger", &self.trigger),
            ("dry_run", &self.dry_run),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.q),
        ];
        let mut out = form_urlencoded(
            pairs
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (*k, v.as_str())),
        );
        if out.is_empty() {
            out.push_str("live=1");
        }
        out
    }
}

/// `k=v&…`, each part percent-encoded.
fn form_urlencoded<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The page of runs the filters select, and the cursor of the next.
fn select(app: &App, session: &Session, filters: &Filters) -> Result<(Vec<Execution>, Option<String>), ApiError> {
    session.caller.require(Role::Viewer)?;
    let filter = filters.filter()?;
    let docs = app
        .executions
        .list_reached(&session.caller, &filter, filters.cursor.as_deref(), PER_PAGE + 1)?;
    let page = api::page(docs, PER_PAGE, |d| d.id.clone(), |d| d);
    Ok((page.data, page.next_cursor))
}

/// The rows of the runs table.
fn table_rows(app: &App, session: &Session, docs: &[Execution]) -> Result<Markup, ApiError> {
    let mut waiting = BTreeMap::new();
    for doc in docs.iter().filter(|d| d.status == Status::Queued) {
        let current = app.executions.current(&session.caller.workspace_id, doc.clone())?;
        let why = app.executions.why_waiting(&session.caller.workspace_id, &current)?;
        waiting.insert(doc.id.clone(), (current.queue_position, why));
    }
    Ok(html! {
        @if docs.is_empty() {
            tr { td colspan="7" { "No runs match." } }
        }
        @for doc in docs {
            tr data-status=(doc.status.as_str()) {
                td { a href={ "/runs/" (doc.id) } { code { (doc.id) } } }
                td { a href={ "/connectors/" (doc.connector.api_name) } { (doc.connector.api_name) } }
                td {
                    (badge(doc.status))
                    @if let Some((position, why)) = waiting.get(&doc.id) {
                        span.wait {
                            @if let Some(p) = position { " #" (p + 1) " in the queue" }
                            @if let Some(why) = why { ": " (why) }
                        }
                    }
                }
                td { (doc.trigger_type.as_str()) }
                td { @if doc.is_dry_run { "dry run" } @else { "live" } }
                td { (when(&doc.created_at)) }
                td.num { (took(doc.started_at, doc.ended_at)) }
            }
        }
    })
}

/// A labelled choice of a filter: "Any", then `options` (value, label).
fn choice<'a>(name: &str, label: &str, chosen: &str, options: impl IntoIterator<Item = (&'a str, &'a str)>) -> Markup {
    html! {
        div {
            label for=(name) { (label) }
            select id=(name) name=(name) {
                option value="" selected[chosen.is_empty()] { "Any" }
                @for (value, text) in options { option value=(value) selected[value == chosen] { (text) } }
            }
        }
    }
}

/// The runs list.
pub async fn list(State(app): State<Arc<App>>, session: Session, Query(filters): Query<Filters>) -> Answer {
    let (docs, next) = select(&app, &session, &filters)?;
    let body = table_rows(&app, &session, &docs)?;
    let connectors = app.connectors.list(&session.caller, None, api::MAX_LIMIT)?;
    let live = filters.cursor.is_none();
    let content = html! {
        form.filters method="get" action="/runs" role="search" aria-label="Filter runs" {
            div {
                label for="q" { "Execution id or idempotency key" }
                input #q type="search" name="q" value=(filters.q);
            }
            (choice("status", "Status", &filters.status, STATUSES.iter().map(|s| (s.as_str(), s.as_str()))))
            (choice("connector", "Connector", &filters.connector, connectors.iter().map(|c| (c.id.as_str(), c.api_name.as_str()))))
            (choice("trigger", "Trigger", &filters.trigger, TRIGGERS.iter().map(|t| (t.as_str(), t.as_str()))))
            (choice("dry_run", "Dry run", &filters.dry_run, [("live", "Live runs"), ("dry", "Dry runs")]))
            div {
                label for="from" { "Created from" }
                input #from type="date" name="from" value=(filters.from);
            }
            div {
                label for="to" { "to" }
                input #to type="date" name="to" value=(filters.to);
            }
            div.actions {
                button type="submit" { "Filter" }
                a href="/runs" { "Clear" }
            }
        }
        div.scroll {
            table.runs {
                caption.visually-hidden { "Runs, newest first" }
                thead { tr {
                    th scope="col" { "Execution" } th scope="col" { "Connector" } th scope="col" { "Status" }
                    th scope="col" { "Trigger" } th scope="col" { "Mode" } th scope="col" { "Created (UTC)" }
                    th scope="col" { "Took" }
                } }
                tbody #runs data-live=[live.then(|| format!("/runs/rows?{}", filters.query()))] aria-live="polite" {
                    (body)
                }
            }
        }
        @if let Some(next) = next {
            p.pager { a href={ "/runs?" (filters.query()) "&cursor=" (next) } { "Older runs →" } }
        }
    };
    Ok(page(Some(&session), Section::Runs, "Runs", content).into_response())
}

/// The runs table's rows alone, for the list to refresh itself.
pub async fn rows(State(app): State<Arc<App>>, session: Session, Query(filters): Query<Filters>) -> Answer {
    let (docs, _) = select(&app, &session, &filters)?;
    Ok(table_rows(&app, &session, &docs)?.into_response())
}

/// The execution `id` as the caller may see it, as it is now.
fn visible(app: &App, session: &Session, id: &str) -> Result<Execution, ApiError> {
    session.caller.require(Role::Viewer)?;
    let row = app.executions.visible(&session.caller, id)?;
    Ok(app.executions.current(&row.workspace_id, row.document)?)
}

/// One stage of the timeline with its counts.
fn stage(progress: &StepProgress) -> Markup {
    let status = progress.status();
    let name = match progress {
        StepProgress::Intake { .. } => "Intake",
        StepProgress::Sql { .. } => "SQL",
        StepProgress::Transform { .. } => "Transform",
        StepProgress::Variables { .. } => "Variables",
        StepProgress::Load { .. } => "Load",
    };
    let status_name = match status {
        StageStatus::Pending => "pending",
        StageStatus::Running => "running",
        StageStatus::Completed => "completed",
        StageStatus::Failed => "failed",
        StageStatus::Canceled => "canceled",
        StageStatus::Skipped => "skipped",
    };
    html! {
        li class={ "stage " (status_name) } aria-current=[(status == StageStatus::Running).then_some("step")] {
            span.stage-name { (name) }
            span.stage-status { (status_name) }
            ul.counts {
                @match progress {
                    StepProgress::Intake { tables, .. } => {
                        @for t in tables { li { (t.table) ": " (count(t.rows)) " rows" @if t.invalid > 0 { ", " (count(t.invalid)) " invalid" } } }
                    }
                    StepProgress::Sql { scopes, .. } => {
                        @for s in scopes { li { (s.scope) ": " (count(s.rows)) " rows" } }
                    }
                    StepProgress::Transform { steps, .. } => {
                        @for s in steps { li { (s.scope) " · " (s.plugin) ": " (count(s.rows_in)) " in, " (count(s.rows_out)) " out" @if s.rejected > 0 { ", " (count(s.rejected)) " rejected" } } }
                    }
                    StepProgress::Variables { scopes, .. } => {
                        @for s in scopes { li { (s.scope) ": " (count(s.valid)) " valid of " (count(s.total)) @if s.invalid > 0 { ", " (count(s.invalid)) " invalid" } } }
                    }
                    StepProgress::Load { steps, .. } => {
                        @for s in steps { li { (s.object) ": " (count(s.total)) " rows" } }
                    }
                }
            }
        }
    }
}

/// The part of a run's page that changes as it runs: status, stages,
/// load counts, error; once ended, rejected rows and downloads.
fn panel_markup(session: &Session, doc: &Execution, why: Option<String>, rejected: &[RejectedPreview]) -> Markup {
    let ended = doc.status.is_terminal();
    let loads = doc.step_progress.iter().find_map(|p| match p {
        StepProgress::Load { steps, .. } => Some(steps),
        _ => None,
    });
    html! {
        div #state data-status=(doc.status.as_str()) data-ended=(ended) {
            p.status-line {
                "Status: " span #status { (badge(doc.status)) }
                @if let Some(p) = doc.queue_position { " · #" (p + 1) " in the queue" }
                @if let Some(why) = why { " · " (why) }
                @if doc.started_at.is_some() { " · " (took(doc.started_at, doc.ended_at)) }
            }
            @if let Some(e) = &doc.error {
                div.problem role="alert" {
                    p { strong { (e.stage.as_str()) " failed" } " (" code { (e.code.as_str()) } "): " (e.message) }
                    @if let Some(line) = e.line { p { "At line " (line) @if let Some(c) = e.column { ", column " (c) } "." } }
                }
            }
            h2 { "Stages" }
            ol.stages { @for p in &doc.step_progress { (stage(p)) } }
            @if let Some(steps) = loads {
                @if !steps.is_empty() {
                    h2 #loads-h { "Load steps" }
                    div.scroll { table.loads aria-labelledby="loads-h" {
                        thead { tr {
                            th scope="col" { "Step" } th scope="col" { "Scope" } th scope="col" { "Object" }
                            th scope="col" { "Rows" } th scope="col" { "Created" } th scope="col" { "Updated" }
                            th scope="col" { "Skipped" } th scope="col" { "Failed" }
                        } }
                        tbody { @for s in steps { tr {
                            td.num { (s.order) } td { (s.scope) } td { (s.object) } td.num { (count(s.total)) }
                            td.num { (count(s.created)) } td.num { (count(s.updated)) } td.num { (count(s.skipped)) }
                            td.num { (count(s.failed)) }
                        } } }
                    } }
                }
            }
            @if ended {
                h2 #rejected-h { "Rejected rows" }
                @if rejected.is_empty() {
                    p { "No row was rejected." }
                } @else {
                    div.scroll { table.rejected aria-labelledby="rejected-h" {
                        thead { tr {
                            th scope="col" { "Stage" } th scope="col" { "Source" } th scope="col" { "Row" }
                            th scope="col" { "Reasons" } th scope="col" { "Values" }
                        } }
                        tbody { @for r in rejected { tr {
                            td { (r.stage) } td { (r.source) } td.num { (r.row) } td.reason { (r.reasons) } td { code { (r.values) } }
                        } } }
                    } }
                    @if rejected.len() == REJECTED_SHOWN {
                        p.hint { "The first " (REJECTED_SHOWN) " rejected rows; rejected.csv has every one." }
                    }
                }
                h2 { "Downloads" }
                ul.downloads {
                    @if doc.source_file_id.is_some() { li { a href={ "/runs/" (doc.id) "/files/input" } { "Input file" } } }
                    li { a href={ "/runs/" (doc.id) "/files/output.zip" } { "output.zip" } }
                    li { a href={ "/runs/" (doc.id) "/files/report.xlsx" } { "report.xlsx" } }
                    li { a href={ "/runs/" (doc.id) "/files/rejected.csv" } { "rejected.csv" } }
                    @if session.may(Role::Operator) {
                        @if let Some(sha) = &doc.source_file_id {
                            li { a href={ "/connectors/" (doc.connector.api_name) "/package?source_file_id=" (sha) } { "Dev package" } }
                        }
                    }
                }
            }
        }
    }
}

/// The first rejected rows of an ended run (none when it wrote no
/// `rejected.csv`).
async fn first_rejected(app: &App, doc: &Execution) -> Result<Vec<RejectedPreview>, ApiError> {
    if !doc.status.is_terminal() {
        return Ok(Vec::new());
    }
    let Ok(mut download) = app.executions.artifact(&doc.id, "rejected.csv").await else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = download.body.next().await {
        bytes.extend_from_slice(&chunk.map_err(ApiError::internal)?);
        if bytes.len() >= REJECTED_READ {
            // A row cut off here is not shown.
            let end = bytes.iter().rposition(|b| *b == b'\n').unwrap_or(0);
            bytes.truncate(end + 1);
            break;
        }
    }
    Ok(rejected_rows(bytes.as_slice(), REJECTED_SHOWN)?)
}

async fn panel_of(app: &App, session: &Session, doc: &Execution) -> Result<Markup, ApiError> {
    let why = app.executions.why_waiting(&session.caller.workspace_id, doc)?;
    let rejected = first_rejected(app, doc).await?;
    Ok(panel_markup(session, doc, why, &rejected))
}

/// A run's page.
pub async fn show(State(app): State<Arc<App>>, session: Session, Path(id): Path<String>) -> Answer {
    let doc = visible(&app, &session, &id)?;
    let panel = panel_of(&app, &session, &doc).await?;
    let can_cancel = session.may(Role::Operator) && !doc.status.is_terminal();
    let content = html! {
        dl.summary {
            dt { "Execution" } dd { code { (doc.id) } }
            dt { "Connector" } dd { a href={ "/connectors/" (doc.connector.api_name) } { (doc.connector.api_name) }
                @if let Some(v) = doc.connector.version { " (SQL version " (v) ")" } }
            dt { "Trigger" } dd { (doc.trigger_type.as_str()) @if doc.is_dry_run { " · dry run" } }
            dt { "Created (UTC)" } dd { (when(&doc.created_at)) }
            @if let Some(by) = &doc.triggered_by { dt { "By key" } dd { (by.key_name) } }
            @if !doc.parameters.is_empty() {
                dt { "Parameters" } dd { code { (serde_json::to_string(&doc.parameters).unwrap_or_default()) } }
            }
        }
        div.actions {
            @if can_cancel {
                form #cancel method="post" action={ "/runs/" (doc.id) "/cancel" } {
                    (csrf_field(&session))
                    button.danger type="submit" { "Cancel run" }
                }
            }
            @if session.may(Role::Operator) && doc.source_file_id.is_some() {
                form method="post" action={ "/runs/" (doc.id) "/again" } {
                    (csrf_field(&session))
                    button type="submit" { "Run again on the same file" }
                }
            }
        }
        section #panel data-panel={ "/runs/" (doc.id) "/panel" } data-events={ "/runs/" (doc.id) "/events" } {
            (panel)
        }
        section aria-labelledby="log-h" {
            h2 #log-h { "Log" }
            div role="log" aria-labelledby="log-h" { ol #log.log {} }
        }
    };
    Ok(page(
        Some(&session),
        Section::Runs,
        &format!("Run of {}", doc.connector.api_name),
        content,
    )
    .into_response())
}

/// The changing part of a run's page alone.
pub async fn panel(State(app): State<Arc<App>>, session: Session, Path(id): Path<String>) -> Answer {
    let doc = visible(&app, &session, &id)?;
    Ok(panel_of(&app, &session, &doc).await?.into_response())
}

/// The run's events: the API's stream, for the signed-in key.
pub async fn events(
    State(app): State<Arc<App>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    Ok(
        api::events::events(State(app), session.caller, error::Path(id), headers)
            .await?
            .into_response(),
    )
}

/// Cancels the run, then shows it (`canceling`, then `canceled`).
pub async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Token>,
) -> Answer {
    api_executions::cancel(State(app), session.caller, error::Path(id.clone())).await?;
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}

/// Runs the connector again on the run's input, with its mode and
/// parameters, and shows the new run.
pub async fn again(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Token>,
) -> Answer {
    let caller = &session.caller;
    caller.require(Role::Operator)?;
    let doc = app.executions.visible(caller, &id)?.document;
    let connector = doc.connector.id.as_deref().unwrap_or(&doc.connector.api_name);
    let row = api::connector_of(&app, caller, connector)?;
    let sha = doc
        .source_file_id
        .as_deref()
        .ok_or_else(|| ApiError::conflict("no_input", "this run had no input file to run again on"))?;
    let file = api::files::file_of(&app, caller, sha)?.ok_or_else(|| ApiError::not_found("input file"))?;
    let parameters = doc
        .parameters
        .iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::to_value(v).map_err(ApiError::internal)?)))
        .collect::<Result<BTreeMap<_, _>, ApiError>>()?;
    let trigger = Trigger {
        version: Version::Live,
        dry_run: doc.is_dry_run,
        kind: TriggerType::FileUpload,
    };
    let started = app
        .executions
        .start(caller, &row, trigger, Some(file), None, &parameters)?;
    Ok(Redirect::to(&format!("/runs/{}", started.doc.id)).into_response())
}

/// A run's input or artifact, as the API sends it.
pub async fn download(
    State(app): State<Arc<App>>,
    session: Session,
    Path((id, name)): Path<(String, String)>,
) -> Answer {
    let caller = session.caller;
    let id = error::Path(id);
    let response = match name.as_str() {
        "input" => api_executions::input(State(app), caller, id).await?,
        "output.zip" => api_executions::output(State(app), caller, id).await?,
        "report.xlsx" => api_executions::report(State(app), caller, id).await?,
        "rejected.csv" => api_executions::rejected(State(app), caller, id).await?,
        _ => return Err(ApiError::not_found("download").into()),
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_dates_as_whole_days_and_refuse_others() {
        let filters = Filters {
            from: "2026-12-01".into(),
            to: "2026-12-01".into(),
            dry_run: "dry".into(),
            q: "  key-1 ".into(),
            ..Filters::default()
        };
        let f = filters.filter().unwrap_or_else(|e| panic!("{:?}", e.problem()));
        assert_eq!(
            f.created_after.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-01T00:00:00+00:00")
        );
        assert_eq!(
            f.created_before.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-02T00:00:00+00:00")
        );
        assert_eq!(f.is_dry_run, Some(true));
        assert_eq!(f.search.as_deref(), Some("key-1"));
        let bad = Filters {
            from: "yesterday".into(),
            ..Filters::default()
        };
        assert!(bad.filter().is_err());
        assert_eq!(
            Filters {
                q: "a b&c".into(),
                ..Filters::default()
            }
            .query(),
            "q=a%20b%26c"
        );
    }
}
