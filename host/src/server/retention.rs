//! What the server keeps, and for how long (docs/retention.md).
//!
//! Every `retention_sweep` the sweeper deletes, per workspace:
//! - each execution that ended and was created more than the workspace's
//!   retention ago, with everything it holds: its artifacts, its log lines,
//!   the webhook payloads of its batch, its idempotency keys and its
//!   schedule tick (except each connector's latest, which the scheduler
//!   counts from);
//! - each file older than the retention that no connector uses as its
//!   sample and no kept execution used as its input.
//!
//! `DELETE /executions/{id}` and `DELETE /files/{id}` do the same for one
//! execution or file at once. The content of a file leaves the blob store once no
//! workspace holds it and no plugin is it.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::App;
use super::state::{FileDeletion, StateError};

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Executions deleted with what they held.
    pub executions: usize,
    /// Files deleted.
    pub files: usize,
}

/// Sweeps every `retention_sweep`, until the server drains.
pub async fn sweeper(app: Arc<App>) {
    loop {
        match sweep(&app, Utc::now()).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    executions = swept.executions,
                    files = swept.files,
                    "deleted what is past its workspace's retention"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "the retention sweep failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(app.settings.retention_sweep) => {}
            () = app.runs.draining().cancelled() => return,
        }
    }
}

/// Deletes, in every workspace, what is older than its retention at `now`.
pub async fn sweep(app: &App, now: DateTime<Utc>) -> Result<Swept, StateError> {
    let mut swept = Swept::default();
    for workspace in app.db.workspaces()? {
        let retention =
            chrono::TimeDelta::from_std(app.settings.retention_of(&workspace.name)).unwrap_or(chrono::TimeDelta::MAX);
        let Some(before) = now.checked_sub_signed(retention) else {
            continue;
        };
        for id in app.db.ended_before(&workspace.id, before)? {
            if app.executions.remove(&id).await? {
                swept.executions += 1;
            }
        }
        for sha256 in app.db.unused_files_before(&workspace.id, before)? {
            if app.files.delete(&workspace.id, &sha256).await? == FileDeletion::Deleted {
                swept.files += 1;
            }
        }
    }
    Ok(swept)
}
