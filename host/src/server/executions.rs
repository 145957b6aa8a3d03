//! The executions service: a trigger made into a stored, queued execution
//! (with its idempotency key and run parameters), and an execution read
//! back (as it is now, live while a process of the server runs it),
//! canceled, deleted, and its input and artifacts handed out. The API,
//! webhook batches, schedule ticks, publishing and previews all start runs
//! through it. It holds the state store, the blob store, the files service,
//! the running executions and the metrics.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use weir_engine::connector::{Connector, ConnectorType};
use weir_engine::execution::{Execution, Status, TriggerType, TriggeredBy};

use super::auth::Caller;
use super::blobs::{Blobs, Download, OnDisk};
use super::config::Settings;
use super::files::Files;
use super::metrics::Metrics;
use super::queue::{CancelOutcome, Runs};
use super::refusal::{Kind, Refusal, Refused};
use super::state::{
    AttemptRow, ConnectorRow, ExecutionFilter, ExecutionRow, FileRow, IdempotencyKey, KeyUse, LogLine, NotificationRow,
    StateError, StateStore,
};
use super::triggers::{self, Version};

/// The execution a trigger answers with.
#[derive(Debug)]
pub struct Started {
    /// The execution.
    pub doc: Execution,
    /// True for a retry: the execution its `Idempotency-Key` first created.
    pub replayed: bool,
}

/// What a run is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Trigger {
    /// Which script.
    pub version: Version,
    /// Nothing is written to records.
    pub dry_run: bool,
    /// What triggered it.
    pub kind: TriggerType,
}

/// Executions of workspaces.
#[derive(Clone)]
pub struct Executions {
    db: Arc<dyn StateStore>,
    blobs: Blobs,
    files: Files,
    runs: Arc<Runs>,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
}

impl Executions {
    /// The service.
    pub fn new(
        db: Arc<dyn StateStore>,
        blobs: Blobs,
        files: Files,
        runs: Arc<Runs>,
        metrics: Arc<Metrics>,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            db,
            blobs,
            files,
            runs,
            metrics,
            settings,
        }
    }

    /// Creates and queues an execution of `row` on `file` for `caller`;
    /// under an idempotency key already used, answers with the execution
    /// it created. `parameters` are the run's, over the connector's own.
    pub fn start(
        &self,
        caller: &Caller,
        row: &ConnectorRow,
        trigger: Trigger,
        file: Option<FileRow>,
        key: Option<&IdempotencyKey>,
        parameters: &BTreeMap<String, serde_json::Value>,
    ) -> Refused<Started> {
        let mut execution = triggers::prepare(
            self.db.as_ref(),
            &caller.workspace_id,
            row,
            trigger.version,
            file,
            trigger.dry_run,
            trigger.kind,
        )?;
        execution.document.triggered_by = Some(TriggeredBy {
            key_id: caller.key_id.clone(),
            key_name: caller.key_name.clone(),
        });
        if !parameters.is_empty() {
            // The run's own definition carries them, so every part of the
            // run (`meta.parameters`, variables' defaults) sees the same
            // values.
            let mut connector: Connector = serde_json::from_str(&execution.definition).map_err(Refusal::internal)?;
            let run = connector.run_parameters(parameters).map_err(|problems| {
                Refusal::invalid(
                    "invalid_parameters",
                    "the run's parameters do not fit the connector's",
                    problems,
                )
            })?;
            execution.document.parameters = run
                .iter()
                .filter(|(name, _)| parameters.contains_key(*name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            connector.parameters = run;
            execution.definition = serde_json::to_string(&connector).map_err(Refusal::internal)?;
        }
        if let Some(used) = self.enqueue(&execution, key)? {
            // A retry that raced the first request: that one stored first.
            return self.replay(key, &used);
        }
        let mut doc = execution.document;
        doc.queue_position = Some(self.db.queue_position(&execution.workspace_id, &doc.id)?);
        Ok(Started { doc, replayed: false })
    }

    /// The answer to a retry of a trigger of `connector_id` under `key`,
    /// when the key was used (and has not expired).
    pub fn retried(&self, connector_id: &str, key: &IdempotencyKey) -> Refused<Option<Started>> {
        match self
            .db
            .key_use(connector_id, &key.key, self.settings.idempotency_expired())?
        {
            Some(used) => self.replay(Some(key), &used).map(Some),
            None => Ok(None),
        }
    }

    /// The answer to a retry: the execution the key's first use created, if
    /// the request is the same.
    fn replay(&self, key: Option<&IdempotencyKey>, used: &KeyUse) -> Refused<Started> {
        if key.is_some_and(|k| k.fingerprint != used.fingerprint) {
            return Err(Refusal::invalid(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request; use a new key for a new request",
                vec![],
            ));
        }
        let stored = self
            .db
            .execution(&used.execution_id)?
            .ok_or_else(|| Refusal::internal("an idempotency key names a missing execution"))?;
        Ok(Started {
            doc: self.current(&stored.workspace_id, stored.document)?,
            replayed: true,
        })
    }

    /// Stores a new queued execution and wakes the dispatcher.
    ///
    /// Under an idempotency key, the execution is stored only if the key is
    /// new; else nothing happens and the key's first use is returned.
    fn enqueue(&self, row: &ExecutionRow, key: Option<&IdempotencyKey>) -> Result<Option<KeyUse>, StateError> {
        match key {
            Some(key) => {
                if let Some(used) = self
                    .db
                    .insert_execution_once(row, key, self.settings.idempotency_expired())?
                {
                    return Ok(Some(used));
                }
            }
            None => self.db.insert_execution(row)?,
        }
        self.queued(row)?;
        Ok(None)
    }

    /// After a new execution is stored (here, or with a webhook batch or a
    /// schedule tick): its first log line, the count, and a wake-up for the
    /// dispatcher.
    pub fn queued(&self, row: &ExecutionRow) -> Result<(), StateError> {
        self.db.append_log(&row.document.id, "info", "queued")?;
        self.metrics.executions_created.inc();
        self.runs.wake();
        Ok(())
    }

    /// The file a dry run of `row` works on: the file a batch of `payloads`
    /// would make (a webhook connector's sample payloads), else
    /// `source_file_id`, else the connector's sample, else for a schedule
    /// connector a tick of now. `purpose` says what needs one when there is
    /// none; an id the workspace does not have is refused with `unknown`.
    pub async fn run_input(
        &self,
        caller: &Caller,
        row: &ConnectorRow,
        source_file_id: Option<String>,
        payloads: Option<Vec<serde_json::Value>>,
        purpose: &str,
        unknown: &str,
    ) -> Refused<FileRow> {
        if let Some(payloads) = payloads {
            let refuse = |message: &str| Err(Refusal::invalid("validation_failed", message.to_string(), vec![]));
            if row.connector.kind != ConnectorType::Webhook {
                return refuse("payloads are sample webhook payloads: the connector is not a webhook connector");
            }
            if source_file_id.is_some() {
                return refuse("give payloads or source_file_id, not both");
            }
            if payloads.is_empty() {
                return refuse("payloads needs at least one payload");
            }
            let file = super::webhooks::sample_file(&self.files, &caller.workspace_id, &payloads)
                .await
                .map_err(Refusal::internal)?;
            self.db
                .note_uploader(&caller.workspace_id, &file.sha256, &caller.key_id)?;
            return Ok(file);
        }
        let schedule = row.connector.kind == ConnectorType::Schedule;
        if source_file_id.is_none() && row.sample_file_id.is_none() && schedule {
            // A schedule connector's input is its tick: a dry run gets one of now.
            return super::schedules::tick_file(&self.files, &caller.workspace_id, Utc::now())
                .await
                .map_err(Refusal::internal);
        }
        let file_id = source_file_id.or_else(|| row.sample_file_id.clone()).ok_or_else(|| {
            Refusal::invalid(
                "no_sample_file",
                format!("{purpose}: set the connector's sample_file_id or pass source_file_id"),
                vec![],
            )
        })?;
        self.files
            .reached(caller, &file_id)?
            .ok_or_else(|| Refusal::invalid(unknown, format!("there is no file `{file_id}`"), vec![]))
    }

    /// The freshest document: the live one while this process runs it.
    fn live_view(&self, stored: Execution) -> Execution {
        match self.runs.live(&stored.id) {
            // A cancel another process stored shows before this process's
            // run has read it.
            Some(mut live) if live.status == Status::Running && stored.status == Status::Canceling => {
                live.status = Status::Canceling;
                live
            }
            Some(live) => live,
            None => stored,
        }
    }

    /// The execution `id` if the caller may see it: another workspace's is
    /// not found, one of a connector the caller's key does not reach is
    /// forbidden.
    pub fn visible(&self, caller: &Caller, id: &str) -> Refused<ExecutionRow> {
        let row = self.db.execution(id)?.ok_or_else(|| Refusal::not_found("execution"))?;
        if row.workspace_id != caller.workspace_id {
            return Err(Refusal::not_found("execution"));
        }
        if !caller.reaches(&row.connector_id, &row.document.connector.api_name) {
            return Err(Refusal::forbidden("this key is limited to other connectors"));
        }
        Ok(row)
    }

    /// A stored execution as it is now: live counts while it runs, its
    /// queue position (among its workspace's) while queued.
    pub fn current(&self, workspace_id: &str, stored: Execution) -> Refused<Execution> {
        let mut doc = self.live_view(stored);
        if doc.status == Status::Queued {
            doc.queue_position = Some(self.db.queue_position(workspace_id, &doc.id)?);
        }
        Ok(doc)
    }

    /// Why a queued execution has not started yet, for a person: its
    /// connector is inactive, runs as many executions as it may at once,
    /// or others are ahead of it for the server's workers. `None` once it
    /// has started.
    pub fn why_waiting(&self, workspace_id: &str, doc: &Execution) -> Refused<Option<String>> {
        if doc.status != Status::Queued {
            return Ok(None);
        }
        let connector = doc
            .connector
            .id
            .as_deref()
            .map(|id| self.db.connector_by_id(id))
            .transpose()?
            .flatten();
        if let Some(row) = &connector {
            let connector = &row.connector;
            if !doc.is_dry_run && connector.status != weir_engine::connector::ConnectorStatus::Operational {
                return Ok(Some(
                    "its connector is inactive: live runs wait until it is operational again".into(),
                ));
            }
            let max = connector.limits.max_concurrency.max(1) as usize;
            let running = ExecutionFilter {
                connector_ids: Some(vec![row.id.clone()]),
                status: Some(Status::Running.as_str().into()),
                ..ExecutionFilter::default()
            };
            if self.db.executions(workspace_id, &running, None, max)?.len() >= max {
                return Ok(Some(format!(
                    "its connector already runs {max} execution{} at once (limits.max_concurrency)",
                    if max == 1 { "" } else { "s" }
                )));
            }
        }
        // The document as it is now carries its place already.
        let ahead = match doc.queue_position {
            Some(ahead) => ahead,
            None => self.db.queue_position(workspace_id, &doc.id)?,
        };
        Ok(Some(match ahead {
            0 => "next in line, for a free worker".into(),
            1 => "1 execution of the workspace is ahead of it".into(),
            n => format!("{n} executions of the workspace are ahead of it"),
        }))
    }

    /// Execution `id`'s notifications with their attempts.
    pub fn notifications(&self, id: &str) -> Refused<Vec<(NotificationRow, Vec<AttemptRow>)>> {
        Ok(self.db.notifications(id)?)
    }

    /// Sends notification `n` of execution `id` once more, now.
    pub fn redeliver(&self, id: &str, n: u32) -> Refused<(NotificationRow, Vec<AttemptRow>)> {
        if !self.db.redeliver(id, n, Utc::now().timestamp_millis())? {
            return Err(Refusal::not_found("notification"));
        }
        self.db
            .notifications(id)?
            .into_iter()
            .find(|(row, _)| row.n == n)
            .ok_or_else(|| Refusal::not_found("notification"))
    }

    /// The stored execution `id`, whoever's it is (for a caller that
    /// already checked it is visible).
    pub fn stored(&self, id: &str) -> Refused<Option<ExecutionRow>> {
        Ok(self.db.execution(id)?)
    }

    /// The changes of execution `id`'s live document while this process
    /// runs it.
    pub fn subscribe(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Execution>> {
        self.runs.subscribe(id)
    }

    /// A connector's executions, newest first, as they are now.
    pub fn list(
        &self,
        row: &ConnectorRow,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Refused<Vec<Execution>> {
        let filter = ExecutionFilter {
            connector_ids: Some(vec![row.id.clone()]),
            ..filter.clone()
        };
        let docs = self.db.executions(&row.workspace_id, &filter, cursor, limit)?;
        Ok(docs.into_iter().map(|d| self.live_view(d)).collect())
    }

    /// The executions of the workspace the caller reaches (of every
    /// connector, or of those its key is limited to), newest first, as
    /// they are now.
    pub fn list_reached(
        &self,
        caller: &Caller,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Refused<Vec<Execution>> {
        let mut filter = filter.clone();
        if let Some(limited) = &caller.connectors {
            let reached: Vec<String> = self
                .db
                .connectors(&caller.workspace_id, Some(limited), None, limited.len() + 1)?
                .into_iter()
                .map(|c| c.id)
                .collect();
            filter.connector_ids = Some(match filter.connector_ids {
                Some(asked) => asked.into_iter().filter(|id| reached.contains(id)).collect(),
                None => reached,
            });
        }
        let docs = self.db.executions(&caller.workspace_id, &filter, cursor, limit)?;
        Ok(docs.into_iter().map(|d| self.live_view(d)).collect())
    }

    /// Up to `limit` log lines of execution `id` after position `after`.
    pub fn logs(&self, id: &str, after: u64, limit: usize) -> Refused<Vec<LogLine>> {
        Ok(self.db.logs(id, after, limit)?)
    }

    /// Cancels execution `id` (SPEC §6.4): its document, now `canceling`
    /// (or `canceled` if it was queued); refused once it has ended other
    /// than by a cancel.
    pub fn cancel(&self, id: &str) -> Refused<Execution> {
        match self.runs.cancel(self.db.as_ref(), &self.metrics, id)? {
            CancelOutcome::Accepted(doc) => Ok(*doc),
            CancelOutcome::Finished => Err(Refusal::conflict(
                "execution_finished",
                "the execution has already finished",
            )),
        }
    }

    /// Deletes an execution that has ended with its artifacts, log lines
    /// and webhook payloads; refused while it has not ended.
    pub async fn delete(&self, id: &str) -> Refused<()> {
        // In a task of its own: a request dropped half-way does not leave
        // the artifacts of a deleted execution behind.
        let deleted = {
            let (service, id) = (self.clone(), id.to_string());
            tokio::spawn(async move { service.remove(&id).await })
                .await
                .map_err(Refusal::internal)??
        };
        if deleted {
            return Ok(());
        }
        match self.db.execution(id)? {
            Some(_) => Err(Refusal::conflict(
                "execution_not_finished",
                "the execution has not ended; cancel it first, or wait for it to end",
            )),
            None => Err(Refusal::not_found("execution")),
        }
    }

    /// Deletes an execution that has ended, with everything it holds (what
    /// retention does once past the workspace's `retention`); false when
    /// there is no such execution or it has not ended.
    pub async fn remove(&self, id: &str) -> Result<bool, StateError> {
        if !self.db.delete_execution(id)? {
            return Ok(false);
        }
        if let Err(e) = self.blobs.remove_artifacts(id).await {
            // The execution is gone; what is left in the store is only space.
            tracing::warn!(execution = id, error = %e, "removing an execution's artifacts failed");
        }
        Ok(true)
    }

    /// The input file of an execution, with its bytes.
    pub async fn input(&self, row: &ExecutionRow) -> Refused<(FileRow, Download)> {
        let Some(sha) = &row.document.source_file_id else {
            return Err(Refusal::not_found("input file"));
        };
        let file = self
            .db
            .file(&row.workspace_id, sha)?
            .ok_or_else(|| Refusal::not_found("input file"))?;
        let download = self.files.download(&file).await?;
        let download = download.ok_or_else(|| Refusal::not_found("input file"))?;
        Ok((file, download))
    }

    /// An artifact (`report.xlsx`, `rejected.csv`) of execution `id`.
    pub async fn artifact(&self, id: &str, name: &str) -> Refused<Download> {
        match self.blobs.artifact(id, name).await.map_err(Refusal::internal)? {
            Some(download) => Ok(download),
            None => Err(Refusal::new(
                Kind::NotFound,
                "artifact_not_available",
                format!("{name} is not available (the run has not written it)"),
            )),
        }
    }

    /// `output.zip` of an ended execution: every scope's output CSV, made
    /// from the stored outputs the first time it is asked for, then kept.
    pub async fn output_zip(&self, row: ExecutionRow) -> Refused<Download> {
        let id = row.document.id.clone();
        if !self.live_view(row.document).status.is_terminal() {
            return Err(Refusal::conflict(
                "execution_running",
                "output.zip is made once the execution has finished",
            ));
        }
        if let Some(zip) = self
            .blobs
            .artifact(&id, "output.zip")
            .await
            .map_err(Refusal::internal)?
        {
            return Ok(zip);
        }
        let names = self
            .blobs
            .artifact_names(&id, "output")
            .await
            .map_err(Refusal::internal)?;
        if names.is_empty() {
            return Err(Refusal::new(
                Kind::NotFound,
                "artifact_not_available",
                "the run has not written any output",
            ));
        }
        let mut outputs = Vec::with_capacity(names.len());
        for name in names {
            let file = self
                .blobs
                .artifact_on_disk(&id, &name)
                .await
                .map_err(Refusal::internal)?;
            outputs.push((name, file));
        }
        let zip = self.blobs.scratch_file().map_err(Refusal::internal)?;
        let zip = tokio::task::spawn_blocking(move || zip_files(&outputs, zip))
            .await
            .map_err(Refusal::internal)?
            .map_err(Refusal::internal)?;
        // Made once and kept: a concurrent request makes the same zip.
        self.blobs
            .put_artifact(&id, "output.zip", zip)
            .await
            .map_err(Refusal::internal)?;
        let zip = self
            .blobs
            .artifact(&id, "output.zip")
            .await
            .map_err(Refusal::internal)?;
        zip.ok_or_else(|| Refusal::internal("output.zip went as it was made"))
    }

    /// Waits until execution `id` has ended (or `limit` passes).
    pub async fn wait_for_end(&self, id: &str, limit: Duration) -> Refused<Execution> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let doc = match self.runs.live(id) {
                Some(doc) => doc,
                None => {
                    self.db
                        .execution(id)?
                        .ok_or_else(|| Refusal::not_found("execution"))?
                        .document
                }
            };
            if doc.status.is_terminal() {
                return Ok(doc);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Refusal::new(
                    Kind::TimedOut,
                    "publish_check_timeout",
                    format!("the dry run {id} did not finish in time"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
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
