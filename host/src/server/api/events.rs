//! **Live events** (SPEC §6.3): `GET /executions/{id}/events` streams an
//! execution as Server-Sent Events until it ends.
//!
//! Three kinds of event:
//! - `log`: a log line (`{seq, at, level, message}`), in order;
//! - `execution`: the execution document, whenever it changed (status,
//!   stage, counts), at most every [`MIN_GAP`];
//! - `end`: the terminal status, after the last line and document; the
//!   stream closes there.
//!
//! Every event's id is the `seq` of the last log line sent so far. A client
//! that reconnects with `Last-Event-ID: n` gets the log lines after `n`,
//! then the document as it is now: lines are a history and resume exactly,
//! the document is a state and only its newest version matters.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use weir_engine::execution::Execution;

use super::executions::LogView;
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Path, ProblemDocument};

/// The shortest time between two `execution` events of one stream.
const MIN_GAP: Duration = Duration::from_millis(100);

/// How often a stream looks for new log lines, and for the start of a
/// queued execution.
const POLL: Duration = Duration::from_millis(250);

/// Log lines read per query.
const LOG_PAGE: usize = 500;

/// One Server-Sent Event of the stream (for the API document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventDoc {
    /// `log`, `execution` or `end`.
    pub event: String,
    /// The seq of the last log line sent so far.
    pub id: String,
    /// JSON: a log line (`log`) or the execution document (`execution`);
    /// the terminal status (`end`).
    pub data: String,
}

/// Streams an execution's log lines and document changes as Server-Sent
/// Events until it ends; resumable with `Last-Event-ID`.
#[utoipa::path(get, path = "/executions/{id}/events", tag = "executions",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: log lines up to it are not sent again"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = EventDoc,
            description = "`log`, `execution` and `end` events; every id is the seq of the last log line sent"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn events(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Role::Viewer)?;
    app.executions.visible(&caller, &id)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(e) = follow(&app, &id, after, &tx).await {
            tracing::warn!(execution = %id, error = ?e, "an event stream stopped");
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Sends an execution's events to `tx` until it ends or the client leaves.
async fn follow(app: &App, id: &str, mut after: u64, tx: &mpsc::Sender<Event>) -> ApiResult<()> {
    let mut sent: Option<String> = None;
    let mut changes: Option<watch::Receiver<Execution>> = None;
    loop {
        // The stored document says when the run has ended: by then its last
        // log line is stored too.
        let Some(stored) = app.executions.stored(id)? else {
            return Ok(());
        };
        let ended = stored.document.status.is_terminal();
        loop {
            let lines = app.executions.logs(id, after, LOG_PAGE)?;
            let full = lines.len() == LOG_PAGE;
            for line in lines {
                after = line.seq;
                let event = Event::default().event("log").id(after.to_string());
                if !send(tx, event.json_data(LogView::from(line))).await {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        let doc = if ended {
            stored.document
        } else {
            app.executions.current(&stored.workspace_id, stored.document)?
        };
        let json = serde_json::to_string(&doc).map_err(ApiError::internal)?;
        if sent.as_ref() != Some(&json) {
            let event = Event::default().event("execution").id(after.to_string()).data(&json);
            if !send(tx, Ok(event)).await {
                return Ok(());
            }
            sent = Some(json);
        }
        if ended {
            let event = Event::default()
                .event("end")
                .id(after.to_string())
                .data(doc.status.as_str());
            send(tx, Ok(event)).await;
            return Ok(());
        }
        if changes.is_none() {
            changes = app.executions.subscribe(id);
        }
        tokio::time::sleep(MIN_GAP).await;
        // The next change of a running execution, else the next poll.
        let changed = async {
            match changes.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        // The run ended here; the stored document follows.
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return Ok(()),
        }
    }
}

/// Sends one event; false when the client has left (or the event did not
/// serialize, which ends the stream too).
async fn send(tx: &mpsc::Sender<Event>, event: Result<Event, axum::Error>) -> bool {
    match event {
        Ok(event) => tx.send(event).await.is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "an event did not serialize");
            false
        }
    }
}
