//! Connectors: the list, a connector's page (definition, status, upload and
//! run, webhook address and batches, schedule ticks), and its SQL: the
//! draft in an editor with errors at their line, preview, publish, and
//! versions with a diff between two.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;
use similar::{ChangeTag, TextDiff};
use weir_engine::connector::{ConnectorStatus, ConnectorType};
use weir_engine::execution::TriggerType;

use super::session::{Posted, Session, Token, Tokened};
use super::{Answer, Section, badge, count, csrf_field, page, when};
use crate::server::App;
use crate::server::api::connectors::{self as api_connectors, ConnectorView, DraftRequest, SqlView};
use crate::server::api::package::{self as api_package, DevPackageParams};
use crate::server::api::preview::{self as api_preview, PreviewParams};
use crate::server::api::{self, PageParams};
use crate::server::auth::Role;
use crate::server::error::{self, ApiError, Body};
use crate::server::executions::Trigger;
use crate::server::previews::Preview;
use crate::server::state::ExecutionFilter;
use crate::server::triggers::Version;

/// Rows a preview shows of every scope.
const PREVIEW_ROWS: usize = 20;

/// Recent runs and webhook batches shown on a connector's page.
const RECENT: usize = 10;

/// Schedule ticks shown ahead.
const TICKS: usize = 5;

/// The connectors list.
pub async fn list(State(app): State<Arc<App>>, session: Session) -> Answer {
    let params = PageParams {
        limit: Some(api::MAX_LIMIT),
        cursor: None,
    };
    let connectors = api_connectors::list(State(app), session.caller.clone(), error::Query(params))
        .await?
        .0
        .data;
    let content = html! {
        @if connectors.is_empty() {
            p { "No connectors yet. Create one with the API or push a dev package (" code { "weir package push" } ")." }
        } @else {
            div.scroll { table {
                caption.visually-hidden { "Connectors" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "API name" } th scope="col" { "Type" }
                    th scope="col" { "Status" } th scope="col" { "Live SQL" } th scope="col" { "Draft" }
                } }
                tbody { @for c in &connectors { tr {
                    td { a href={ "/connectors/" (c.definition.api_name) } { (title(&c.definition)) } }
                    td { code { (c.definition.api_name) } }
                    td { (kind(c.definition.kind)) }
                    td { (status_badge(c.definition.status)) }
                    td.num { @if let Some(v) = c.live_version { "v" (v) } @else { "—" } }
                    td.num { "v" (c.draft_version) }
                } } }
            } }
        }
    };
    Ok(page(Some(&session), Section::Connectors, "Connectors", content).into_response())
}

/// What a connector is called: its name, else its api_name.
fn title(d: &weir_engine::connector::Connector) -> &str {
    if d.name.trim().is_empty() { &d.api_name } else { &d.name }
}

fn kind(kind: ConnectorType) -> &'static str {
    match kind {
        ConnectorType::Spreadsheet => "file upload",
        ConnectorType::Webhook => "webhook",
        ConnectorType::Schedule => "schedule",
    }
}

fn status_name(status: ConnectorStatus) -> &'static str {
    match status {
        ConnectorStatus::Setup => "setup",
        ConnectorStatus::Operational => "operational",
        ConnectorStatus::Inactive => "inactive",
    }
}

fn status_badge(status: ConnectorStatus) -> Markup {
    html! { span class={ "badge " (status_name(status)) } { (status_name(status)) } }
}

/// The connector `c` as the API shows it to the caller.
async fn view(app: &Arc<App>, session: &Session, c: &str) -> Result<ConnectorView, ApiError> {
    Ok(
        api_connectors::get(State(app.clone()), session.caller.clone(), error::Path(c.to_string()))
            .await?
            .0,
    )
}

/// The address this server was reached at, for the webhook's URL.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if tls { "https" } else { "http" })
}

/// Tabs of a connector's pages.
fn tabs(api_name: &str, this: &str) -> Markup {
    html! {
        nav.tabs aria-label="Connector" { ul {
            li { a href={ "/connectors/" (api_name) } aria-current=[(this == "overview").then_some("page")] { "Overview" } }
            li { a href={ "/connectors/" (api_name) "/sql" } aria-current=[(this == "sql").then_some("page")] { "SQL" } }
            li { a href={ "/connectors/" (api_name) "/versions" } aria-current=[(this == "versions").then_some("page")] { "Versions" } }
            li { a href={ "/runs?connector=" (api_name) } { "Runs" } }
        } }
    }
}

/// A connector's page.
pub async fn overview(
    State(app): State<Arc<App>>,
    session: Session,
    Path(c): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let (app, session, headers) = (&app, &session, &headers);
    let v = view(app, session, &c).await?;
    let d = &v.definition;
    let row = api::connector_of(app, &session.caller, &v.id)?;
    let recent = app.executions.list(&row, &ExecutionFilter::default(), None, RECENT)?;
    let batches = if d.kind == ConnectorType::Webhook {
        let webhook = ExecutionFilter {
            trigger_type: Some(TriggerType::Webhook.as_str().into()),
            ..ExecutionFilter::default()
        };
        app.executions.list(&row, &webhook, None, RECENT)?
    } else {
        Vec::new()
    };
    let ticks = match &d.schedule {
        Some(def) => match weir_engine::schedule::parse(def) {
            Ok(schedule) => {
                let mut out = Vec::new();
                let mut at = Utc::now();
                while out.len() < TICKS {
                    let Some(next) = schedule.next_after(at) else { break };
                    out.push(next);
                    at = next;
                }
                out
            }
            Err(_) => Vec::new(),
        },
        None => Vec::new(),
    };
    let definition = serde_json::to_string_pretty(d).map_err(ApiError::internal)?;
    let content = html! {
        (tabs(&d.api_name, "overview"))
        @if let Some(text) = &d.description { p { (text) } }
        dl.summary {
            dt { "API name" } dd { code { (d.api_name) } }
            dt { "Type" } dd { (kind(d.kind)) }
            dt { "Status" } dd { (status_badge(d.status)) }
            dt { "SQL" } dd { @if let Some(l) = v.live_version { "live v" (l) ", " } "draft v" (v.draft_version) }
            dt { "Loads" } dd { @if d.loads.is_empty() { "none" } @else { @for (i, l) in d.loads.iter().enumerate() { @if i > 0 { ", " } (l.scope) " → " (l.object) } } }
        }
        div.grid {
            @if session.may(Role::Admin) {
                form.card method="post" action={ "/connectors/" (d.api_name) "/status" } {
                    h2 { "Status" }
                    (csrf_field(session))
                    fieldset {
                        legend { "Live runs" }
                        @for s in [ConnectorStatus::Operational, ConnectorStatus::Inactive] {
                            label.choice {
                                input type="radio" name="status" value=(status_name(s)) checked[d.status == s];
                                " " (status_name(s))
                            }
                        }
                    }
                    button type="submit" { "Save status" }
                }
            }
            @if session.may(Role::Operator) {
                form.card #upload method="post" action={ "/connectors/" (d.api_name) "/run" } enctype="multipart/form-data" {
                    h2 { "Upload and run" }
                    (csrf_field(session))
                    label.choice { input type="checkbox" name="dry_run" value="true"; " Dry run (writes no records)" }
                    label for="file" { "Input file" }
                    input #file type="file" name="file" required;
                    button type="submit" { "Upload and run" }
                }
            }
        }
        @if d.kind == ConnectorType::Webhook {
            section aria-labelledby="webhook-h" {
                h2 #webhook-h { "Webhook" }
                p { "Senders post to " code.copy { (origin(headers)) "/api/v1/connectors/" (d.api_name) "/webhook" } }
                (runs_table("Recent batches", &batches))
            }
        }
        @if !ticks.is_empty() {
            section aria-labelledby="ticks-h" {
                h2 #ticks-h { "Next schedule ticks (UTC)" }
                ul { @for t in &ticks { li { (when(t)) } } }
            }
        }
        (runs_table("Recent runs", &recent))
        details {
            summary { "Definition" }
            pre.code { (definition) }
        }
        @if session.may(Role::Operator) {
            p { a href={ "/connectors/" (d.api_name) "/package" } { "Download the dev package" } " (live SQL and the sample, for " code { "weir run" } ")" }
        }
    };
    Ok(page(Some(session), Section::Connectors, title(d), content).into_response())
}

fn runs_table(title: &str, runs: &[weir_engine::execution::Execution]) -> Markup {
    html! {
        h2 { (title) }
        @if runs.is_empty() { p { "None yet." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Execution" } th scope="col" { "Status" } th scope="col" { "Trigger" } th scope="col" { "Created (UTC)" } } }
                tbody { @for r in runs { tr {
                    td { a href={ "/runs/" (r.id) } { code { (r.id) } } }
                    td { (badge(r.status)) }
                    td { (r.trigger_type.as_str()) @if r.is_dry_run { " · dry run" } }
                    td { (when(&r.created_at)) }
                } } }
            } }
        }
    }
}

/// The status form.
#[derive(Debug, Deserialize)]
pub struct StatusForm {
    csrf: String,
    status: String,
}

impl Tokened for StatusForm {
    fn token(&self) -> &str {
        &self.csrf
    }
}

impl Tokened for SqlForm {
    fn token(&self) -> &str {
        &self.csrf
    }
}

/// Sets the connector operational or inactive.
pub async fn status(
    State(app): State<Arc<App>>,
    Path(c): Path<String>,
    Posted { session, form }: Posted<StatusForm>,
) -> Answer {
    let patch = serde_json::json!({ "status": form.status });
    let v = api_connectors::update(State(app), session.caller.clone(), error::Path(c), Body(patch))
        .await?
        .0;
    Ok(Redirect::to(&format!("/connectors/{}", v.definition.api_name)).into_response())
}

/// Uploads the form's file and runs the connector on it.
pub async fn run(State(app): State<Arc<App>>, session: Session, Path(c): Path<String>, request: Request) -> Answer {
    let caller = &session.caller;
    caller.require(Role::Operator)?;
    let row = api::connector_of(&app, caller, &c)?;
    // The token comes before the file: a refused form stores nothing.
    let (file, fields) = api::files::receive_form(&app, caller, None, request, |fields| {
        session
            .check(fields.get("csrf").map_or("", String::as_str))
            .map_err(|shown| shown.0)
    })
    .await?;
    let trigger = Trigger {
        version: Version::Live,
        dry_run: fields.get("dry_run").is_some_and(|v| v == "true"),
        kind: TriggerType::FileUpload,
    };
    let started = app
        .executions
        .start(caller, &row, trigger, Some(file), None, &BTreeMap::new())?;
    Ok(Redirect::to(&format!("/runs/{}", started.doc.id)).into_response())
}

/// What the SQL page shows besides the editor.
#[derive(Default)]
struct SqlOutcome {
    /// The text in the editor, when it is not the stored draft.
    text: Option<String>,
    /// A note for the person (saved, published).
    note: Option<String>,
    /// What was refused.
    error: Option<ApiError>,
    /// A preview's results.
    preview: Option<Preview>,
}

async fn sql_page(app: &Arc<App>, session: &Session, c: &str, outcome: SqlOutcome) -> Answer {
    let v = view(app, session, c).await?;
    let scripts: SqlView = api_connectors::sql(State(app.clone()), session.caller.clone(), error::Path(v.id.clone()))
        .await?
        .0;
    let api_name = &v.definition.api_name;
    let text = outcome.text.unwrap_or(scripts.draft.text);
    let problem = outcome.error.as_ref().map(ApiError::problem);
    let lines = text.lines().count().max(1);
    let error_line = problem.and_then(|p| p.line);
    let status = outcome.error.as_ref().map_or(StatusCode::OK, ApiError::status);
    let content = html! {
        (tabs(api_name, "sql"))
        p {
            "Draft v" (scripts.draft.version)
            @if let Some(live) = &scripts.live { " · live v" (live.version) " published " @if let Some(t) = &live.published_at { (when(t)) } }
            @else { " · nothing published yet" }
        }
        @if let Some(note) = &outcome.note { p.note role="status" { (note) } }
        @if let Some(p) = problem {
            div.problem #sql-error role="alert" {
                p {
                    @if let Some(line) = p.line { strong { "Line " (line) @if let Some(c) = p.column { ", column " (c) } ": " } }
                    (p.detail)
                }
                @if !p.errors.is_empty() { ul { @for e in &p.errors { li { code { (e.path) } ": " (e.message) } } } }
                @if let Some(exec) = &p.execution {
                    @if let Some(id) = exec.get("id").and_then(|i| i.as_str()) {
                        p { "The dry run behind it: " a href={ "/runs/" (id) } { code { (id) } } }
                    }
                }
            }
        }
        form #sql-form method="post" action={ "/connectors/" (api_name) "/sql" } {
            (csrf_field(session))
            label for="sql" { "Draft SQL" }
            div.editor {
                ol.gutter aria-hidden="true" {
                    @for n in 1..=lines { li class=[(Some(n as u64) == error_line).then_some("error")] { (n) } }
                }
                textarea #sql name="text" spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off"
                    rows=(lines.clamp(12, 40))
                    data-line=[error_line] data-column=[problem.and_then(|p| p.column)]
                    aria-describedby=[problem.map(|_| "sql-error")]
                    aria-invalid=[problem.map(|_| "true")] { (text) }
            }
            div.actions {
                @if session.may(Role::Admin) { button type="submit" name="action" value="save" { "Save draft" } }
                @if session.may(Role::Operator) { button type="submit" name="action" value="preview" { "Preview" } }
            }
        }
        @if session.may(Role::Admin) {
            form #publish method="post" action={ "/connectors/" (api_name) "/publish" } {
                (csrf_field(session))
                p.hint { "Publishing dry-runs the saved draft on the connector's sample; it goes live only if that run succeeds." }
                button type="submit" { "Publish draft v" (scripts.draft.version) }
            }
        }
        @if let Some(preview) = &outcome.preview { (preview_markup(preview)) }
    };
    Ok((
        status,
        page(
            Some(session),
            Section::Connectors,
            &format!("SQL of {}", title(&v.definition)),
            content,
        ),
    )
        .into_response())
}

fn preview_markup(p: &Preview) -> Markup {
    html! {
        section #preview aria-labelledby="preview-h" {
            h2 #preview-h { "Preview" }
            p { "Dry run " a href={ "/runs/" (p.execution.id) } { code { (p.execution.id) } } ": " (badge(p.execution.status))
                @if p.timed_out { " · ran out of time; showing what it had" } }
            @if let Some(e) = &p.execution.error {
                div.problem role="alert" { p { (e.stage.as_str()) ": " (e.message)
                    @if let Some(line) = e.line { " (line " (line) @if let Some(c) = e.column { ", column " (c) } ")" } } }
            }
            @for scope in &p.scopes {
                h3 { "Scope " code { (scope.scope) } }
                div.scroll { table.preview {
                    thead { tr { @for c in &scope.columns { th scope="col" { (c) } } } }
                    tbody { @for r in &scope.rows { tr { @for v in r { td { @match v { Some(v) => (v), None => span.null { "null" } } } } } } }
                } }
                @if scope.truncated { p.hint { "First " (scope.rows.len()) " rows." } }
            }
            h3 { "Rejected rows" }
            @if p.rejected.is_empty() { p { "None." } } @else {
                div.scroll { table.rejected {
                    thead { tr { th scope="col" { "Stage" } th scope="col" { "Source" } th scope="col" { "Row" } th scope="col" { "Reasons" } th scope="col" { "Values" } } }
                    tbody { @for r in &p.rejected { tr { td { (r.stage) } td { (r.source) } td.num { (r.row) } td.reason { (r.reasons) } td { code { (r.values) } } } } }
                } }
            }
        }
    }
}

/// The SQL page.
pub async fn sql(
    State(app): State<Arc<App>>,
    session: Session,
    Path(c): Path<String>,
    Query(q): Query<Published>,
) -> Answer {
    let note = q.published.map(|v| format!("Published: v{v} is live."));
    sql_page(
        &app,
        &session,
        &c,
        SqlOutcome {
            note,
            ..SqlOutcome::default()
        },
    )
    .await
}

/// `?published=` after a publish.
#[derive(Debug, Deserialize)]
pub struct Published {
    published: Option<u32>,
}

/// The editor's form.
#[derive(Debug, Deserialize)]
pub struct SqlForm {
    csrf: String,
    text: String,
    action: String,
}

/// Saves the draft (a refused script is kept and shown at its line), or
/// previews it (saving it first when it changed).
pub async fn save_sql(
    State(app): State<Arc<App>>,
    Path(c): Path<String>,
    Posted { session, form }: Posted<SqlForm>,
) -> Answer {
    // Browsers send a textarea's line ends as CRLF.
    let text = form.text.replace("\r\n", "\n");
    let stored = api_connectors::sql(State(app.clone()), session.caller.clone(), error::Path(c.clone()))
        .await?
        .0;
    let mut outcome = SqlOutcome::default();
    if form.action == "save" || stored.draft.text != text {
        let saved = api_connectors::save_draft(
            State(app.clone()),
            session.caller.clone(),
            error::Path(c.clone()),
            Body(DraftRequest { text: text.clone() }),
        )
        .await;
        match saved {
            Ok(saved) => outcome.note = Some(format!("Draft v{} saved.", saved.0.draft.version)),
            Err(e) => {
                outcome.text = Some(text);
                outcome.error = Some(e);
                return sql_page(&app, &session, &c, outcome).await;
            }
        }
    }
    if form.action == "preview" {
        let params = PreviewParams {
            rows: Some(PREVIEW_ROWS),
        };
        match api_preview::preview(
            State(app.clone()),
            session.caller.clone(),
            error::Path(c.clone()),
            error::Query(params),
            Bytes::new(),
        )
        .await
        {
            Ok(preview) => outcome.preview = Some(preview.0),
            Err(e) => outcome.error = Some(e),
        }
    }
    sql_page(&app, &session, &c, outcome).await
}

/// Publishes the saved draft.
pub async fn publish(
    State(app): State<Arc<App>>,
    Path(c): Path<String>,
    Posted { session, .. }: Posted<Token>,
) -> Answer {
    match api_connectors::publish(
        State(app.clone()),
        session.caller.clone(),
        error::Path(c.clone()),
        Bytes::new(),
    )
    .await
    {
        Ok(scripts) => {
            let live = scripts.0.live.map_or(0, |l| l.version);
            Ok(Redirect::to(&format!("/connectors/{c}/sql?published={live}")).into_response())
        }
        Err(e) => {
            let outcome = SqlOutcome {
                error: Some(e),
                ..SqlOutcome::default()
            };
            sql_page(&app, &session, &c, outcome).await
        }
    }
}

/// `?a=&b=`: the versions to compare.
#[derive(Debug, Deserialize)]
pub struct Compare {
    a: Option<u32>,
    b: Option<u32>,
}

/// The SQL versions, and a diff between two.
pub async fn versions(
    State(app): State<Arc<App>>,
    session: Session,
    Path(c): Path<String>,
    Query(q): Query<Compare>,
) -> Answer {
    let v = view(&app, &session, &c).await?;
    let params = PageParams {
        limit: Some(api::MAX_LIMIT),
        cursor: None,
    };
    let list = api_connectors::versions(
        State(app.clone()),
        session.caller.clone(),
        error::Path(v.id.clone()),
        error::Query(params),
    )
    .await?
    .0
    .data;
    let newest = list.iter().map(|s| s.version).max().unwrap_or(1);
    let (a, b) = (q.a.unwrap_or(newest.saturating_sub(1).max(1)), q.b.unwrap_or(newest));
    let diff = if q.a.is_some() && q.b.is_some() {
        let get = |n: u32| {
            let app = app.clone();
            let caller = session.caller.clone();
            let id = v.id.clone();
            async move { api_connectors::version(State(app), caller, error::Path((id, n))).await }
        };
        let (old, new) = (get(a).await?.0, get(b).await?.0);
        Some(diff_markup(&old.text, &new.text))
    } else {
        None
    };
    let api_name = &v.definition.api_name;
    let content = html! {
        (tabs(api_name, "versions"))
        form method="get" action={ "/connectors/" (api_name) "/versions" } {
            div.scroll { table {
                caption.visually-hidden { "SQL versions" }
                thead { tr { th scope="col" { "Version" } th scope="col" { "Created (UTC)" } th scope="col" { "Published" } th scope="col" { "From" } th scope="col" { "To" } } }
                tbody { @for s in &list { tr {
                    td.num { "v" (s.version) }
                    td { (when(&s.created_at)) }
                    td { @if let Some(t) = &s.published_at { (when(t)) } @else { "draft" } }
                    td { input type="radio" name="a" value=(s.version) checked[s.version == a] aria-label={ "Compare from v" (s.version) }; }
                    td { input type="radio" name="b" value=(s.version) checked[s.version == b] aria-label={ "Compare to v" (s.version) }; }
                } } }
            } }
            button type="submit" { "Compare" }
        }
        @if let Some(diff) = diff {
            h2 { "v" (a) " → v" (b) }
            (diff)
        }
    };
    Ok(page(
        Some(&session),
        Section::Connectors,
        &format!("SQL versions of {}", title(&v.definition)),
        content,
    )
    .into_response())
}

/// A line diff of two scripts, with line numbers on both sides.
fn diff_markup(old: &str, new: &str) -> Markup {
    // A last line without its line end is the same line with one.
    let ended = |text: &str| {
        if text.is_empty() || text.ends_with('\n') {
            text.to_string()
        } else {
            format!("{text}\n")
        }
    };
    let (old, new) = (ended(old), ended(new));
    let diff = TextDiff::from_lines(&old, &new);
    let changes: Vec<_> = diff.iter_all_changes().collect();
    let counted = |tag| changes.iter().filter(|c| c.tag() == tag).count() as u64;
    let number = |n: Option<usize>| n.map_or(String::new(), |n| (n + 1).to_string());
    html! {
        p { (count(counted(ChangeTag::Insert))) " lines added, " (count(counted(ChangeTag::Delete))) " removed." }
        div.scroll { table.diff {
            thead { tr { th scope="col" { "Old" } th scope="col" { "New" } th scope="col" { span.visually-hidden { "Change" } } th scope="col" { "Line" } } }
            tbody { @for change in &changes {
                @let (class, sign) = match change.tag() {
                    ChangeTag::Equal => ("eq", " "),
                    ChangeTag::Insert => ("ins", "+"),
                    ChangeTag::Delete => ("del", "-"),
                };
                tr class=(class) {
                    td.num { (number(change.old_index())) }
                    td.num { (number(change.new_index())) }
                    td.sign { (sign) }
                    td { code { (change.value().trim_end_matches('\n')) } }
                }
            } }
        } }
    }
}

/// The connector's dev package, as the API makes it.
pub async fn package(
    State(app): State<Arc<App>>,
    session: Session,
    Path(c): Path<String>,
    Query(params): Query<DevPackageParams>,
) -> Answer {
    Ok(api_package::dev_package(State(app), session.caller, error::Path(c), error::Query(params)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_numbers_both_sides_and_counts_its_changes() {
        let html = diff_markup("select 1\nfrom a", "select 1\nfrom b\nwhere x\n").into_string();
        assert!(html.contains("2 lines added, 1 removed."), "{html}");
        assert!(
            html.contains(r#"<tr class="del"><td class="num">2</td><td class="num"></td>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<tr class="ins"><td class="num"></td><td class="num">3</td>"#),
            "{html}"
        );
        let escaped = diff_markup("", "<script>\n").into_string();
        assert!(
            escaped.contains("&lt;script&gt;") && !escaped.contains("<script>"),
            "{escaped}"
        );
    }
}
