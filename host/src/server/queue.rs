//! Executions from trigger to terminal status: the queue, the worker pool,
//! cancel, and the shutdown drain.
//!
//! The state database is the queue, shared by every process on it: a
//! trigger stores a `queued` execution (with the connector definition and
//! script it will run) and wakes the dispatcher. The dispatcher claims
//! queued executions oldest first while a worker of this process is free,
//! skipping those whose connector is not operational (dry runs always run)
//! or already runs `max_concurrency` executions in any process. Claiming is
//! a conditional update (`queued → running`, with this process as owner and
//! a lease, see [`super::leases`]), so a cancel and a claim, or two
//! processes' claims, never both win.
//!
//! While a run runs, its live document is in memory (status reads come from
//! there) and a persister task writes it to the database as it changes, with
//! a log line for every stage that starts or ends. The persister is the only
//! writer of a running execution's document, so the final document is never
//! overwritten by a late progress write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use weir_engine::connector::{Connector, ConnectorStatus};
use weir_engine::error::{ErrorCode, Stage};
use weir_engine::execution::{Execution, ExecutionError, StageStatus, Status};
use weir_engine::pipeline::{Progress, RunSettings};
use weir_engine::runlog::{LogLevel, RunLog};

use super::App;
use super::blobs::OnDisk;
use super::metrics::Metrics;
use super::state::{ExecutionRow, StateError, StateStore};
use crate::worker::{Job, JobInput};

/// A running execution, as the process knows it.
struct Running {
    cancel: CancellationToken,
    progress: Progress,
    /// The live document last answered, so that answers never go back to
    /// the older stored one while the end is being stored.
    shown: Option<Execution>,
}

impl Running {
    fn new(cancel: CancellationToken, progress: Progress) -> Self {
        Self {
            cancel,
            progress,
            shown: None,
        }
    }

    /// The document to answer: the live one until the run ends, then the
    /// last one answered (or none: the stored one) until the persister has
    /// stored the end and the run leaves the map.
    fn show(&mut self) -> Option<Execution> {
        let doc = self.progress.snapshot();
        if doc.status.is_terminal() {
            return self.shown.clone();
        }
        self.shown = Some(doc.clone());
        Some(doc)
    }
}

/// The executions this process runs, and the signal that wakes the dispatcher.
#[derive(Default)]
pub struct Runs {
    running: Mutex<HashMap<String, Running>>,
    wake: Notify,
    /// Set at shutdown: nothing new is claimed.
    draining: CancellationToken,
}

/// What a cancel request found.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The execution is canceled or canceling; its document now.
    Accepted(Box<Execution>),
    /// It had already finished other than by a cancel.
    Finished,
}

impl CancelOutcome {
    /// A cancel of an execution in `doc`'s state: accepted unless it ended
    /// other than canceled, so that repeating a cancel answers the same
    /// however quickly the run stopped.
    fn of(doc: Execution) -> Self {
        if doc.status.is_terminal() && doc.status != Status::Canceled {
            Self::Finished
        } else {
            Self::Accepted(Box::new(doc))
        }
    }
}

impl Runs {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live document of a running execution. Its end is shown only
    /// once it is in the database, so that what the API called finished
    /// stays so after a crash; meanwhile the last live answer stands.
    pub fn live(&self, id: &str) -> Option<Execution> {
        self.lock().get_mut(id).and_then(Running::show)
    }

    /// The changes of a running execution's live document.
    pub fn subscribe(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Execution>> {
        self.lock().get(id).map(|r| r.progress.subscribe())
    }

    /// Fires when the server stops taking new work.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// How many executions run now.
    pub fn running_count(&self) -> usize {
        self.lock().len()
    }

    /// Wakes the dispatcher (a new execution, a connector that became operational).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The executions running here.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Whether execution `id` runs here.
    pub fn has(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Stops a run this process no longer holds: it is told to stop, and
    /// its persister stores nothing more (its writes are refused).
    pub fn stop(&self, id: &str) {
        if let Some(run) = self.lock().get(id) {
            run.cancel.cancel();
        }
    }
}

impl Runs {
    /// Requests a cancel (SPEC §6.4): a queued execution becomes `canceled`
    /// at once; a running one becomes `canceling` and its run is told to
    /// stop, here or, through the stored request, in the process that runs
    /// it.
    pub fn cancel(&self, db: &dyn StateStore, metrics: &Metrics, id: &str) -> Result<CancelOutcome, StateError> {
        cancel(self, db, metrics, id)
    }
}

fn cancel(runs: &Runs, db: &dyn StateStore, metrics: &Metrics, id: &str) -> Result<CancelOutcome, StateError> {
    // The map lock is held across the check so that a claim (which takes
    // it too) cannot slip between reading `queued` and canceling.
    let mut running = runs.lock();
    if let Some(run) = running.get_mut(id) {
        // Stored too, so that every process shows it `canceling`.
        db.request_cancel(id)?;
        if let Some(doc) = cancel_run(run) {
            return Ok(CancelOutcome::Accepted(Box::new(doc)));
        }
        // Ended before anything was answered, and not stored yet: answer
        // as stored, as a status request would.
    }
    let Some(row) = db.execution(id)? else {
        return Ok(CancelOutcome::Finished);
    };
    let mut doc = row.document;
    if doc.status == Status::Running {
        // Another process runs it: it reads the request within
        // [`leases`](super::leases)' poll.
        drop(running);
        if db.request_cancel(id)? {
            let _ = doc.transition(Status::Canceling);
            db.append_log(id, "info", "cancel requested")?;
            return Ok(CancelOutcome::Accepted(Box::new(doc)));
        }
        // It ended meanwhile: answer what it became.
        let now = db.execution(id)?.map(|r| r.document);
        return Ok(now.map_or(CancelOutcome::Finished, CancelOutcome::of));
    }
    match doc.status {
        Status::Queued => {
            let _ = doc.transition(Status::Canceled);
            doc.close_open_stages(StageStatus::Skipped, StageStatus::Skipped);
            if !db.save_document(&doc, Some(Status::Queued))? {
                // It left the queue meanwhile (it could not start): answer
                // what it became.
                let now = db.execution(id)?.map(|r| r.document);
                return Ok(now.map_or(CancelOutcome::Finished, CancelOutcome::of));
            }
            drop(running);
            db.append_log(id, "info", "canceled while queued")?;
            metrics.finished(doc.status);
            Ok(CancelOutcome::Accepted(Box::new(doc)))
        }
        // Canceling elsewhere, or ended. Repeating the cancel is accepted,
        // as it is once the cancel has taken effect.
        _ => Ok(CancelOutcome::of(doc)),
    }
}

/// Tells a run of this process to stop for a cancel; the document it now
/// shows.
fn cancel_run(run: &mut Running) -> Option<Execution> {
    run.progress.update(|doc| {
        if matches!(doc.status, Status::Queued | Status::Running) {
            let _ = doc.transition(Status::Canceling);
        }
    });
    run.cancel.cancel();
    run.show()
}

/// Delivers a cancel another process stored for a run of this one.
pub fn cancel_here(app: &App, id: &str) {
    if let Some(run) = app.runs.lock().get_mut(id)
        && !run.cancel.is_cancelled()
    {
        tracing::info!(execution = %id, "canceling at the request of another process");
        cancel_run(run);
    }
}

/// Claims and starts queued executions until shutdown.
pub async fn dispatch(app: Arc<App>) {
    loop {
        if app.runs.draining.is_cancelled() {
            return;
        }
        if let Err(e) = claim_and_start(&app) {
            tracing::error!(error = %e, "claiming queued executions failed");
        }
        // A trigger another process stored wakes no one here: the queue is
        // looked at again within this.
        tokio::select! {
            _ = app.runs.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = app.runs.draining.cancelled() => return,
        }
    }
}

/// Stops claiming, lets running executions go on for `grace`, then cancels
/// them and waits until their final documents are stored.
pub async fn drain(app: &App, grace: Duration) {
    app.runs.draining.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    while app.runs.running_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens: Vec<_> = app.runs.lock().values().map(|r| r.cancel.clone()).collect();
    if !tokens.is_empty() {
        tracing::warn!(runs = tokens.len(), "shutdown grace over; canceling running executions");
    }
    for t in tokens {
        t.cancel();
    }
    let hard = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.runs.running_count() > 0 && tokio::time::Instant::now() < hard {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn claim_and_start(app: &Arc<App>) -> Result<(), StateError> {
    let workers = app.settings.config.workers;
    for (id, connector_id, is_dry_run) in app.db.queued()? {
        let mut running = app.runs.lock();
        if running.len() >= workers {
            return Ok(());
        }
        let Some(row) = app.db.execution(&id)? else { continue };
        let snapshot: Connector = match serde_json::from_str(&row.definition) {
            Ok(c) => c,
            Err(e) => {
                drop(running);
                fail_to_start(
                    app,
                    row.document,
                    &format!("its connector definition does not parse: {e}"),
                )?;
                continue;
            }
        };
        // The connector as it is now decides whether live runs may start
        // (an inactive connector holds them); a deleted one runs its snapshot.
        let current: Option<Connector> = app.db.connector_by_id(&connector_id)?.map(|c| c.connector);
        let status = current.as_ref().map_or(snapshot.status, |c| c.status);
        if !is_dry_run && status != ConnectorStatus::Operational {
            continue;
        }
        let max = current
            .as_ref()
            .map_or(snapshot.limits.max_concurrency, |c| c.limits.max_concurrency)
            .max(1);
        // The claim counts the connector's runs in every process.
        let mut row = row;
        let worker = app.worker.id();
        if row.document.transition(Status::Running).is_err()
            || !app.db.claim(
                &row.document,
                &connector_id,
                max,
                worker,
                super::leases::lease_until(app),
            )?
        {
            continue;
        }
        app.db.append_log(&id, "info", &format!("claimed by worker {worker}"))?;
        let progress = Progress::new(row.document.clone());
        let cancel = CancellationToken::new();
        running.insert(id.clone(), Running::new(cancel.clone(), progress.clone()));
        drop(running);
        let app = app.clone();
        let span = tracing::info_span!("execution", id = %id, connector = %connector_id);
        tokio::spawn(
            async move {
                tracing::info!("started");
                work(&app, row, snapshot, progress, cancel).await;
                app.runs.lock().remove(&id);
                app.runs.wake();
            }
            .instrument(span),
        );
    }
    Ok(())
}

/// Ends a queued execution that cannot start as `failed`.
fn fail_to_start(app: &App, mut doc: Execution, why: &str) -> Result<(), StateError> {
    doc.error = Some(ExecutionError {
        stage: Stage::Intake,
        code: ErrorCode::InvalidConnector,
        message: why.to_string(),
        line: None,
        column: None,
        plugin: None,
    });
    doc.close_open_stages(StageStatus::Skipped, StageStatus::Skipped);
    let _ = doc.transition(Status::Failed);
    if app.db.save_document(&doc, Some(Status::Queued))? {
        app.db.append_log(&doc.id, "error", why)?;
    }
    Ok(())
}

/// A run's log lines, stored with the execution (`GET /executions/{id}/logs`).
struct ExecutionLog {
    app: Arc<App>,
    execution_id: String,
}

impl RunLog for ExecutionLog {
    fn line(&self, level: LogLevel, message: &str) {
        if let Err(e) = self.app.db.append_log(&self.execution_id, level.as_str(), message) {
            tracing::error!(execution = %self.execution_id, error = %e, "storing a log line failed");
        }
    }
}

async fn work(app: &Arc<App>, row: ExecutionRow, connector: Connector, progress: Progress, cancel: CancellationToken) {
    let id = row.document.id.clone();
    // The terminal document waits for the artifacts: a run seen ended has
    // its artifacts in the store.
    let kept = CancellationToken::new();
    if app.blobs.keeps_in_place() {
        kept.cancel();
    }
    let persister = tokio::spawn(persist(app.clone(), progress.clone(), kept.clone()));
    let records = match app.runner.records(&row.workspace_id) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(execution = %id, error = %e, "loading the workspace's objects failed");
            None
        }
    };
    let input = match &row.document.source_file_id {
        Some(sha) => Some(job_input(app, &id, sha).await),
        None => None,
    };
    let (plugins, plugin_files) = app.runner.plugins(&row.workspace_id, &connector).await;
    let out_dir = app.blobs.artifacts_out(&id).unwrap_or_else(|e| {
        tracing::error!(execution = %id, error = %e, "the artifacts' directory is not known");
        std::env::temp_dir().join(format!("weir-{id}"))
    });
    let job = Job {
        plugins,
        script: row.script,
        input: input.as_ref().map(|on_disk| JobInput {
            path: on_disk.path().to_path_buf(),
            name: row.input_name.clone().unwrap_or_else(|| "input".into()),
        }),
        execution: row.document,
        out_dir,
        threads: app.settings.config.threads_per_run,
        output_row_cap: app.settings.config.output_row_cap,
        report_rows: RunSettings::default().report_rows,
        load_batch_size: app.settings.config.load_batch_size,
        records,
        plugin_cache: Some(app.runner.plugin_cache()),
        plugin_memory: app.settings.plugin_memory,
        cpu_seconds: 0,
        secrets: app.runner.secrets(&row.workspace_id, &connector),
        connector,
    };
    let log: Arc<dyn RunLog> = Arc::new(ExecutionLog {
        app: app.clone(),
        execution_id: id.clone(),
    });
    let started = std::time::Instant::now();
    let doc = app.runner.run(job, &progress, log, &cancel).await;
    drop((input, plugin_files));
    if let Err(e) = app.blobs.keep_artifacts(&id).await {
        tracing::error!(execution = %id, error = %e, "keeping the artifacts failed");
        let _ = app
            .db
            .append_log(&id, "error", &format!("keeping the run's artifacts failed: {e}"));
    }
    kept.cancel();
    app.metrics.run_seconds.observe(started.elapsed().as_secs_f64());
    // The persister writes the terminal document and then ends.
    if let Err(e) = persister.await {
        tracing::error!(execution = %id, error = %e, "the persister task failed");
        if let Err(e) = app.db.save_owned(&doc, app.worker.id()) {
            tracing::error!(execution = %id, error = %e, "storing the final document failed");
        }
    }
    app.metrics.finished(doc.status);
    // Its notifications were stored with its end.
    app.notifier.wake();
    tracing::info!(status = doc.status.as_str(), "finished");
}

/// The run's input file on this machine. One the blob store cannot give
/// is said in the run's log, and the run then fails reading its input.
async fn job_input(app: &App, id: &str, sha256: &str) -> OnDisk {
    app.blobs.on_disk(sha256).await.unwrap_or_else(|e| {
        let why = format!("reading the input file from the blob store failed: {e}");
        tracing::error!(execution = %id, error = %e, "reading the input failed");
        let _ = app.db.append_log(id, "error", &why);
        OnDisk::missing(sha256)
    })
}

/// Writes the live document to the database as it changes (at most every
/// 100 ms, and always the terminal one), with a log line per stage change.
async fn persist(app: Arc<App>, progress: Progress, kept: CancellationToken) {
    let mut rx = progress.subscribe();
    let mut last_stages: Vec<StageStatus> = Vec::new();
    let mut last_status = None;
    loop {
        let mut doc = rx.borrow_and_update().clone();
        if doc.status.is_terminal() {
            kept.cancelled().await;
            // The end as the run last told it, now that its artifacts are kept.
            doc = rx.borrow_and_update().clone();
        }
        for line in changes(&doc, &mut last_stages, &mut last_status) {
            if let Err(e) = app.db.append_log(&doc.id, line.0, &line.1) {
                tracing::error!(execution = %doc.id, error = %e, "writing a log line failed");
            }
        }
        match app.db.save_owned(&doc, app.worker.id()) {
            Ok(true) => {}
            Ok(false) => {
                // Another process resolved it after its lease expired:
                // what it stored stands, and the run stops.
                tracing::error!(execution = %doc.id, "the run is no longer this process's; its document is not stored");
                app.runs.stop(&doc.id);
                return;
            }
            Err(e) => {
                tracing::error!(execution = %doc.id, error = %e, "storing progress failed");
                if doc.status.is_terminal() {
                    store_terminal(&app, &doc).await;
                }
            }
        }
        if doc.status.is_terminal() {
            return;
        }
        if rx.changed().await.is_err() {
            // The run dropped its progress without a terminal document.
            return;
        }
        // Coalesce progress writes, but store a terminal status at once:
        // that is what a cancel or a poller waits for.
        let mut end = rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = end.wait_for(|d| d.status.is_terminal()) => {}
        }
    }
}

/// Stores a terminal document the database refused (a full disk), trying
/// again until it lands: the run is over, and what it did and why it ended
/// must not be left as `running`. The worker stays taken meanwhile, so no
/// other run starts into the same full disk. A server that stops first
/// leaves it to the next sweep (see [`super::leases`]), which ends it
/// `failed` (`worker_lost`).
async fn store_terminal(app: &App, doc: &Execution) {
    let mut wait = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = app.runs.draining().cancelled() => return,
        }
        match app.db.save_owned(doc, app.worker.id()) {
            Ok(stored) => {
                tracing::info!(execution = %doc.id, stored, "the final document is stored (or the run was resolved elsewhere)");
                return;
            }
            Err(e) => tracing::warn!(execution = %doc.id, error = %e, "storing the final document failed again"),
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Log lines for what changed since the last look.
pub fn changes(
    doc: &Execution,
    last_stages: &mut Vec<StageStatus>,
    last_status: &mut Option<Status>,
) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    let stages: Vec<StageStatus> = doc.step_progress.iter().map(|p| p.status()).collect();
    for (i, p) in doc.step_progress.iter().enumerate() {
        let now = stages[i];
        if last_stages.get(i) != Some(&now) && now != StageStatus::Pending {
            let word = serde_json::to_value(now)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            lines.push(("info", format!("{}: {}", p.stage().as_str(), word.unwrap_or_default())));
        }
    }
    *last_stages = stages;
    if *last_status != Some(doc.status) {
        *last_status = Some(doc.status);
        match (&doc.error, doc.status) {
            (Some(e), _) => lines.push((
                "error",
                format!(
                    "{}: {} ({}): {}",
                    doc.status.as_str(),
                    e.stage.as_str(),
                    e.code.as_str(),
                    e.message
                ),
            )),
            (None, status) => lines.push(("info", format!("status: {}", status.as_str()))),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use weir_engine::execution::{ConnectorRef, TriggerType};

    use super::*;

    fn running(runs: &Runs, id: &str) -> Progress {
        let connector = ConnectorRef {
            id: Some("c1".into()),
            api_name: "orders".into(),
            version: Some(1),
        };
        let mut doc = Execution::new(id.into(), connector, TriggerType::FileUpload, false);
        doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
        let progress = Progress::new(doc);
        let run = Running::new(CancellationToken::new(), progress.clone());
        runs.lock().insert(id.into(), run);
        progress
    }

    fn succeed(progress: &Progress) {
        progress.update(|doc| {
            doc.set_stage_status(Stage::Intake, StageStatus::Completed);
            let _ = doc.transition(Status::Success);
        });
    }

    #[test]
    fn a_run_is_shown_live_until_it_ends_and_never_goes_back_while_its_end_is_stored() {
        let runs = Runs::default();
        let answered = running(&runs, "e1");
        assert_eq!(runs.live("e1").map(|d| d.status), Some(Status::Running));
        answered.update(|doc| doc.set_stage_status(Stage::Intake, StageStatus::Running));
        let last = runs.live("e1");
        succeed(&answered);
        assert_eq!(runs.live("e1"), last, "the last answer stands until the end is stored");

        // Ended before any answer: the stored document is answered.
        let silent = running(&runs, "e2");
        succeed(&silent);
        assert_eq!(runs.live("e2"), None);
    }
}
