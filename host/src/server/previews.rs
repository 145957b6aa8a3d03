//! The previews service: a connector's draft (or live script) run as a dry
//! run on its sample file or a given file, within the call, showing the
//! first rows of every scope, the first rejected rows and the run's
//! document.
//!
//! A preview writes nothing: no execution is stored, load steps decide
//! without writing, and its artifacts live in a temporary directory removed
//! before the answer. It is bounded in rows (at most [`MAX_ROWS`]) and in
//! time (`preview_timeout`, or the connector's `max_runtime` when shorter):
//! a preview that runs out of time shows what it had, `timed_out: true`.
//! It holds the state store, the blob store, the executions service (for
//! the input) and the runner.

use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weir_engine::error::Stage;
use weir_engine::execution::{ConnectorRef, Execution, StepProgress, TriggerType};
use weir_engine::pipeline::Progress;
use weir_engine::runlog::{LogLevel, RunLog};

use super::auth::Caller;
use super::blobs::Blobs;
use super::config::Settings;
use super::executions::Executions;
use super::queue;
use super::refusal::{Refusal, Refused};
use super::runner::Runner;
use super::state::{ConnectorRow, StateStore};
use crate::worker::{Job, JobInput};

/// The most rows per scope a preview answers with.
pub const MAX_ROWS: usize = 500;

/// The most log lines a preview keeps.
const MAX_LOG_LINES: usize = 200;

/// What a preview shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    /// The dry run's document: status, counts of every stage, error.
    pub execution: Execution,
    /// The first rows of every scope, as written to its output CSV.
    pub scopes: Vec<ScopePreview>,
    /// The first rejected rows, with their stage and reasons.
    pub rejected: Vec<RejectedPreview>,
    /// Log lines of the run (plugin output), the first 200.
    pub log: Vec<String>,
    /// The preview ran out of time; what it shows is what it had by then.
    pub timed_out: bool,
}

/// The first rows of a scope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScopePreview {
    /// The scope.
    pub scope: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each a value per column as in the output CSV (null is `null`).
    pub rows: Vec<Vec<Option<String>>>,
    /// The scope has more rows than shown.
    pub truncated: bool,
}

/// A rejected row.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedPreview {
    /// The stage that refused it.
    pub stage: String,
    /// Its input table or scope.
    pub source: String,
    /// Its row number there.
    pub row: String,
    /// Why.
    pub reasons: String,
    /// Its values.
    pub values: String,
}

/// Previews of connectors.
#[derive(Clone)]
pub struct Previews {
    db: Arc<dyn StateStore>,
    blobs: Blobs,
    executions: Executions,
    runner: Runner,
    settings: Arc<Settings>,
}

/// What to preview.
#[derive(Debug, Default)]
pub struct PreviewAsk {
    /// Run on this file instead of the connector's sample.
    pub source_file_id: Option<String>,
    /// `draft` (the default) or `live`.
    pub version: Option<String>,
    /// A webhook connector's sample payloads.
    pub payloads: Option<Vec<serde_json::Value>>,
    /// Rows per scope, and rejected rows, to show (1 to [`MAX_ROWS`]).
    pub rows: usize,
}

impl Previews {
    /// The service.
    pub fn new(
        db: Arc<dyn StateStore>,
        blobs: Blobs,
        executions: Executions,
        runner: Runner,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            db,
            blobs,
            executions,
            runner,
            settings,
        }
    }

    /// Dry-runs the draft (or live) script of `row` on the sample or a
    /// given file, in this call, and shows the first rows of every scope
    /// and the rejected rows; nothing is written.
    pub async fn run(&self, caller: &Caller, row: &ConnectorRow, ask: PreviewAsk) -> Refused<Preview> {
        let rows = ask.rows;
        if rows == 0 || rows > MAX_ROWS {
            return Err(Refusal::bad_request(format!("rows must be 1 to {MAX_ROWS}")));
        }
        let version = match ask.version.as_deref() {
            None | Some("draft") => row.draft_version,
            Some("live") => row.live_version.ok_or_else(|| {
                Refusal::conflict("no_live_script", "the connector has no live SQL script to preview")
            })?,
            Some(other) => {
                return Err(Refusal::invalid(
                    "validation_failed",
                    format!("version is `draft` or `live`, not `{other}`"),
                    vec![],
                ));
            }
        };
        let file = self
            .executions
            .run_input(
                caller,
                row,
                ask.source_file_id,
                ask.payloads,
                "a preview runs on a file",
                "unknown_file",
            )
            .await?;
        let script = self
            .db
            .sql_version(&row.id, version)?
            .ok_or_else(|| Refusal::internal("a SQL version is missing"))?;
        let mut connector = row.connector.clone();
        connector.limits = connector.limits.capped(&self.settings.limit_caps);
        let bound = connector.limits.parse().map_or(self.settings.preview_timeout, |l| {
            l.max_runtime.min(self.settings.preview_timeout)
        });

        let dir = self.blobs.scratch_dir("preview-").map_err(Refusal::internal)?;
        let input = self.blobs.on_disk(&file.sha256).await.map_err(Refusal::internal)?;
        let (plugins, _plugin_files) = self.runner.plugins(&caller.workspace_id, &connector).await;
        let mut doc = Execution::new(
            uuid::Uuid::now_v7().to_string(),
            ConnectorRef {
                id: Some(row.id.clone()),
                api_name: row.api_name.clone(),
                version: Some(version),
            },
            TriggerType::FileUpload,
            true,
        );
        doc.source_file_id = Some(file.sha256.clone());
        let progress = Progress::new(doc.clone());
        let cancel = CancellationToken::new();
        let log = Arc::new(Lines::default());
        let job = Job {
            plugins,
            records: Some(self.runner.records(&caller.workspace_id)?),
            script: script.text,
            input: Some(JobInput {
                path: input.path().to_path_buf(),
                name: file.name.clone(),
            }),
            execution: doc,
            out_dir: dir.path().to_path_buf(),
            threads: self.settings.config.threads_per_run,
            output_row_cap: Some(
                self.settings
                    .config
                    .output_row_cap
                    .map_or(rows as u64 + 1, |cap| cap.min(rows as u64 + 1)),
            ),
            report_rows: rows,
            load_batch_size: self.settings.config.load_batch_size,
            plugin_cache: Some(self.runner.plugin_cache()),
            plugin_memory: self.settings.plugin_memory,
            cpu_seconds: 0,
            secrets: self.runner.secrets(&caller.workspace_id, &connector),
            connector,
        };
        let timer = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(bound).await;
                cancel.cancel();
            })
        };
        // The stage and status lines an execution's log has, beside the
        // plugins' lines, as the run goes.
        let ended = CancellationToken::new();
        let watcher = {
            let (mut updates, log, ended) = (progress.subscribe(), log.clone(), ended.clone());
            tokio::spawn(async move {
                let (mut stages, mut status) = (Vec::new(), None);
                loop {
                    let doc = updates.borrow_and_update().clone();
                    for (level, message) in queue::changes(&doc, &mut stages, &mut status) {
                        log.push(level, &message);
                    }
                    tokio::select! {
                        changed = updates.changed() => if changed.is_err() { break },
                        () = ended.cancelled() => break,
                    }
                }
                (stages, status)
            })
        };
        let execution = self.runner.run(job, &progress, log.clone(), &cancel).await;
        timer.abort();
        ended.cancel();
        if let Ok((mut stages, mut status)) = watcher.await {
            for (level, message) in queue::changes(&execution, &mut stages, &mut status) {
                log.push(level, &message);
            }
        }
        let timed_out = cancel.is_cancelled();
        let mut scopes = scope_previews(&dir.path().join("output"), rows)?;
        // A scope is cut when it made more rows than are shown, also when the
        // server's output_row_cap cut its output below `rows`.
        if let Some(StepProgress::Sql { scopes: made, .. }) = execution.stage(Stage::Sql) {
            for scope in &mut scopes {
                if made
                    .iter()
                    .any(|m| m.scope == scope.scope && m.rows > scope.rows.len() as u64)
                {
                    scope.truncated = true;
                }
            }
        }
        let rejected = rejected_previews(&dir.path().join("rejected.csv"), rows)?;
        Ok(Preview {
            execution,
            scopes,
            rejected,
            log: log.take(),
            timed_out,
        })
    }
}

/// The first `rows` rows of every `<scope>.csv` in `dir`, by scope name.
fn scope_previews(dir: &FsPath, rows: usize) -> Refused<Vec<ScopePreview>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let scope = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut reader = csv::Reader::from_path(&path).map_err(Refusal::internal)?;
        let columns = reader
            .headers()
            .map_err(Refusal::internal)?
            .iter()
            .map(str::to_string)
            .collect();
        let mut shown = Vec::new();
        let mut truncated = false;
        for record in reader.records() {
            let record = record.map_err(Refusal::internal)?;
            if shown.len() == rows {
                truncated = true;
                break;
            }
            // The output CSV writes null as an empty field.
            shown.push(record.iter().map(|v| (!v.is_empty()).then(|| v.to_string())).collect());
        }
        out.push(ScopePreview {
            scope,
            columns,
            rows: shown,
            truncated,
        });
    }
    Ok(out)
}

/// The first `rows` rows of `rejected.csv`.
fn rejected_previews(path: &FsPath, rows: usize) -> Refused<Vec<RejectedPreview>> {
    match std::fs::File::open(path) {
        Ok(file) => rejected_rows(file, rows),
        Err(_) => Ok(Vec::new()),
    }
}

/// The first `rows` rows of a `rejected.csv` read from `reader` (a preview's
/// file, or the start of a run's artifact); a row cut off at the end of what
/// was read is left out.
pub fn rejected_rows(reader: impl std::io::Read, rows: usize) -> Refused<Vec<RejectedPreview>> {
    let mut reader = csv::Reader::from_reader(reader);
    let mut out = Vec::new();
    for record in reader.records().take(rows) {
        let Ok(record) = record else { break };
        let field = |i: usize| record.get(i).unwrap_or_default().to_string();
        out.push(RejectedPreview {
            stage: field(0),
            source: field(1),
            row: field(2),
            reasons: field(4),
            values: field(5),
        });
    }
    Ok(out)
}

/// The first log lines of a preview.
#[derive(Debug, Default)]
struct Lines(Mutex<Vec<String>>);

impl Lines {
    fn push(&self, level: &str, message: &str) {
        let mut lines = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if lines.len() < MAX_LOG_LINES {
            lines.push(format!("{level}: {message}"));
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl RunLog for Lines {
    fn line(&self, level: LogLevel, message: &str) {
        self.push(level.as_str(), message);
    }
}
