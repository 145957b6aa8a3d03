//! The run pipeline: one execution end to end, with limits, cancellation
//! and live progress.
//!
//! ```text
//! intake → input tables → SQL script → transforms → variables → loads → report
//! ```
//!
//! The pipeline owns the order of stages, the execution document's
//! transitions and what is written where. Each stage's logic lives in its own
//! module; this one only wires them, so the server and `weir run` run the
//! very same code.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::connector::LoadDef;
use crate::connector::{Connector, Limits};
use crate::error::{Error, Limit, Result, Stage};
use crate::execution::{
    Execution, ExecutionError, ScopeCount, StageStatus, Status, StepProgress, TableCount, VariableCount,
};
use crate::execution::{LoadCount, TransformCount};
use crate::intake::{self, IntakeOptions, RejectSink, TableStats};
use crate::loads::{self, LoadStep, Outcome, Row};
use crate::objects::Objects;
use crate::output::CsvOutput;
use crate::report::{RejectedRow, RejectedWriter, ReportBuilder, RowValues};
use crate::runlog::RunLog;
use crate::sql::{self, ExecutionMeta, Script, SessionSettings};
use crate::store::{RecordStore, Value};
use crate::transform::{Chain, Plugins, StageContext};
use crate::variables::{Converted, ScopeVariables};

/// The input file of a run.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Where the file is.
    pub path: PathBuf,
    /// Its name as uploaded (drives the table name and format sniffing).
    pub name: String,
}

/// Tunables of a run that are not part of the connector.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Threads for the SQL engine.
    pub threads: usize,
    /// Most rows written per scope output CSV (`None`: all).
    pub output_row_cap: Option<u64>,
    /// Most rows per report sheet.
    pub report_rows: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Rows per load commit (a batch is loaded in chunks of this many rows).
    pub load_batch_size: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            output_row_cap: None,
            report_rows: 100_000,
            batch_size: 8192,
            load_batch_size: 2048,
        }
    }
}

/// Everything one run needs.
pub struct RunRequest {
    /// The connector definition.
    pub connector: Connector,
    /// The SQL script text.
    pub script: String,
    /// The input file (none for schedule runs).
    pub input: Option<InputFile>,
    /// The execution document to drive (status `queued`).
    pub execution: Execution,
    /// Where artifacts go: `output/<scope>.csv`, `report.xlsx`, `rejected.csv`.
    pub out_dir: PathBuf,
    /// Tunables.
    pub settings: RunSettings,
    /// Cancels the run.
    pub cancel: CancellationToken,
    /// Where load steps write (required when the connector has load steps).
    pub records: Option<Records>,
    /// The plugin runtime and where plugins come from (required when the
    /// connector has transform steps).
    pub plugins: Option<Plugins>,
    /// The execution log (plugin output, notable events).
    pub log: Arc<dyn RunLog>,
}

/// Where load steps write: a store, the workspace, and its objects.
#[derive(Clone)]
pub struct Records {
    /// The record store.
    pub store: Arc<dyn RecordStore>,
    /// The workspace the records belong to.
    pub workspace: String,
    /// The workspace's object definitions.
    pub objects: Objects,
}

/// Live progress of a run: the document, and a channel observers watch.
#[derive(Clone)]
pub struct Progress {
    doc: Arc<Mutex<Execution>>,
    tx: Arc<watch::Sender<Execution>>,
}

impl Progress {
    /// Progress starting from `execution`.
    pub fn new(execution: Execution) -> Self {
        let (tx, _) = watch::channel(execution.clone());
        Self {
            doc: Arc::new(Mutex::new(execution)),
            tx: Arc::new(tx),
        }
    }

    /// A receiver of every change.
    pub fn subscribe(&self) -> watch::Receiver<Execution> {
        self.tx.subscribe()
    }

    /// The document now.
    pub fn snapshot(&self) -> Execution {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Execution> {
        self.doc.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the document and notifies observers.
    pub fn update(&self, f: impl FnOnce(&mut Execution)) {
        let snapshot = {
            let mut doc = self.lock();
            f(&mut doc);
            doc.clone()
        };
        self.tx.send_replace(snapshot);
    }
}

/// Collects rejected rows into `rejected.csv` and the report.
struct Rejects {
    writer: Mutex<Option<RejectedWriter>>,
    report: Mutex<ReportBuilder>,
    failure: Mutex<Option<Error>>,
}

impl Rejects {
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RejectSink for Rejects {
    fn reject(&self, row: RejectedRow) {
        Self::lock(&self.report).add_rejected(&row);
        if let Some(w) = Self::lock(&self.writer).as_mut()
            && let Err(e) = w.write(&row)
        {
            Self::lock(&self.failure).get_or_insert(e);
        }
    }
}

/// Runs one execution to its end and returns the final document. Never
/// panics on bad input; every failure ends as a `failed` document with the
/// stage and code.
pub async fn run(request: RunRequest, progress: &Progress) -> Execution {
    let RunRequest {
        connector,
        script,
        input,
        execution: _,
        out_dir,
        settings,
        cancel,
        records,
        plugins,
        log,
    } = request;
    // A server claims an execution by marking it running; a local run
    // starts from queued.
    progress.update(|e| {
        if e.status != Status::Running
            && let Err(err) = e.transition(Status::Running)
        {
            tracing::error!(execution = %e.id, error = %err, "refused status change");
        }
    });

    let rejects = Arc::new(Rejects {
        writer: Mutex::new(None),
        report: Mutex::new(ReportBuilder::new(settings.report_rows)),
        failure: Mutex::new(None),
    });
    let shared = Shared {
        progress: progress.clone(),
        rejects: rejects.clone(),
        stage: Arc::new(Mutex::new(Stage::Intake)),
        tables: Arc::new(Mutex::new(Vec::new())),
    };

    let outcome = match connector.limits.parse() {
        Err(problems) => Err(Error::InvalidConnector(problems)),
        Ok(limits) => {
            // The work runs as its own task so that a cancel or the deadline
            // is noticed even while the work is busy inside one poll.
            let mut run = Run {
                connector,
                shared: shared.clone(),
                out_dir: out_dir.clone(),
                settings,
                cancel: cancel.clone(),
                records,
                plugins,
                log,
                // A max_runtime too far out to represent is no deadline.
                deadline: Instant::now().checked_add(limits.max_runtime),
                transform_counts: Mutex::new(BTreeMap::new()),
            };
            let max_runtime = connector_max_runtime(&run.connector);
            let mut work = tokio::spawn(async move { run.execute(&script, input.as_ref(), &limits).await });
            let deadline = tokio::time::sleep(limits.max_runtime);
            let (outcome, ended) = tokio::select! {
                r = &mut work => (r.unwrap_or_else(|e| Err(Error::Internal(format!("the run task failed: {e}")))), true),
                _ = cancel.cancelled() => (Err(Error::Canceled), false),
                _ = deadline => (Err(Error::LimitExceeded {
                    limit: Limit::MaxRuntime,
                    message: format!("the run took longer than max_runtime = {max_runtime}"),
                }), false),
            };
            if !ended {
                // A load batch in flight commits and counts before the task
                // reaches its next await, where the abort takes it; waiting
                // for that makes the final counts say exactly what was written.
                work.abort();
                let _ = work.await;
            }
            outcome
        }
    };
    let failed_stage = match &outcome {
        Err(Error::UnreadableInput { .. }) => Stage::Intake,
        _ => *lock(&shared.stage),
    };
    shared.refresh_tables();
    finish(outcome, failed_stage, progress, &rejects, &out_dir).await
}

fn connector_max_runtime(connector: &Connector) -> String {
    connector.limits.max_runtime.clone()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn finish(
    outcome: Result<()>,
    failed_stage: Stage,
    progress: &Progress,
    rejects: &Rejects,
    out_dir: &Path,
) -> Execution {
    let report_error = {
        let writer = Rejects::lock(&rejects.writer).take();
        let mut failure = Rejects::lock(&rejects.failure).take();
        if let Some(w) = writer
            && let Err(e) = w.finish()
        {
            failure.get_or_insert(e);
        }
        failure
    };
    let outcome = match (outcome, report_error) {
        (Ok(()), Some(e)) => Err((Stage::Report, e)),
        (Ok(()), None) => Ok(()),
        (Err(e), _) => Err((failed_stage, e)),
    };
    // The report shows the final status, so it is written from the document
    // as it will end; only if writing it fails does the run end failed instead.
    let mut ending = progress.snapshot();
    conclude(&mut ending, &outcome);
    let written = Rejects::lock(&rejects.report).write(&ending, &out_dir.join("report.xlsx"));
    if let Err(e) = written {
        tracing::error!(error = %e, "writing report.xlsx failed");
        if outcome.is_ok() {
            ending = progress.snapshot();
            conclude(&mut ending, &Err((Stage::Report, e)));
        }
    }
    progress.update(|doc| *doc = ending);
    progress.snapshot()
}

/// Moves a running document to its terminal status for `outcome`.
fn conclude(doc: &mut Execution, outcome: &std::result::Result<(), (Stage, Error)>) {
    let advance = |doc: &mut Execution, next: Status| {
        if let Err(e) = doc.transition(next) {
            tracing::error!(execution = %doc.id, error = %e, "refused status change");
        }
    };
    match outcome {
        Ok(()) => {
            doc.close_open_stages(StageStatus::Completed, StageStatus::Skipped);
            let next = if doc.status == Status::Canceling {
                // The cancel came as the run reached its end: it stopped
                // there, and its counts say that everything was written.
                Status::Canceled
            } else if doc.invalid_rows() > 0 {
                Status::PartialSuccess
            } else {
                Status::Success
            };
            advance(doc, next);
        }
        Err((_, Error::Canceled)) => {
            doc.close_open_stages(StageStatus::Canceled, StageStatus::Skipped);
            if matches!(doc.status, Status::Running | Status::Queued) {
                advance(doc, Status::Canceling);
            }
            advance(doc, Status::Canceled);
        }
        Err((stage, e)) => {
            doc.close_open_stages(StageStatus::Failed, StageStatus::Skipped);
            doc.set_stage_status(*stage, StageStatus::Failed);
            doc.error = Some(ExecutionError::from_error(*stage, e));
            advance(doc, Status::Failed);
        }
    }
}

/// What the run task and the code that finishes the run share.
#[derive(Clone)]
struct Shared {
    progress: Progress,
    rejects: Arc<Rejects>,
    /// The stage running now, for the error of a run that stops.
    stage: Arc<Mutex<Stage>>,
    /// Live counters of the input tables.
    tables: Arc<Mutex<Vec<NamedStats>>>,
}

/// An input table's name and its live counters.
type NamedStats = (String, Arc<TableStats>);

impl Shared {
    /// Copies the live intake counters into the document.
    fn refresh_tables(&self) {
        let tables: Vec<TableCount> = lock(&self.tables)
            .iter()
            .map(|(name, stats)| TableCount {
                table: name.clone(),
                rows: stats.rows(),
                invalid: stats.invalid(),
            })
            .collect();
        self.progress.update(|d| {
            if let Some(StepProgress::Intake { tables: t, .. }) = d.stage_mut(Stage::Intake) {
                *t = tables;
            }
        });
    }
}

struct Run {
    connector: Connector,
    shared: Shared,
    out_dir: PathBuf,
    settings: RunSettings,
    cancel: CancellationToken,
    records: Option<Records>,
    plugins: Option<Plugins>,
    log: Arc<dyn RunLog>,
    /// When `max_runtime` runs out; plugins are interrupted there.
    deadline: Option<Instant>,
    /// Counts of every transform step, by its index in the connector.
    transform_counts: Mutex<BTreeMap<usize, TransformCount>>,
}

impl Run {
    fn at(&self, stage: Stage) {
        *lock(&self.shared.stage) = stage;
    }

    fn enter(&self, stage: Stage) {
        self.at(stage);
        self.shared
            .progress
            .update(|d| d.set_stage_status(stage, StageStatus::Running));
    }

    fn complete(&self, stage: Stage) {
        self.shared
            .progress
            .update(|d| d.set_stage_status(stage, StageStatus::Completed));
    }

    async fn execute(&mut self, script_text: &str, input: Option<&InputFile>, limits: &Limits) -> Result<()> {
        let connector = &self.connector;
        std::fs::create_dir_all(self.out_dir.join("output"))
            .map_err(|e| Error::io(format!("creating {}", self.out_dir.display()), e))?;
        *Rejects::lock(&self.shared.rejects.writer) = Some(RejectedWriter::create(&self.out_dir.join("rejected.csv"))?);

        self.at(Stage::Sql);
        let script = Script::parse(script_text)?;
        if !connector.transforms.is_empty() && self.plugins.is_none() {
            self.at(Stage::Transform);
            return Err(Error::InvalidConnector(vec![crate::error::Problem::new(
                "transforms",
                "the connector has transform steps but the run has no plugin runtime",
            )]));
        }
        let mut load_defs: Vec<&LoadDef> = connector.loads.iter().collect();
        load_defs.sort_by_key(|l| l.order);
        let records = match (&self.records, load_defs.is_empty()) {
            (_, true) => None,
            (None, false) => {
                self.at(Stage::Load);
                return Err(Error::InvalidConnector(vec![crate::error::Problem::new(
                    "loads",
                    "the connector has load steps but the run has no record store and objects (objects.toml)",
                )]));
            }
            (Some(records), false) => {
                let problems = records.objects.check_loads(connector);
                if !problems.is_empty() {
                    self.at(Stage::Load);
                    return Err(Error::InvalidConnector(problems));
                }
                Some(records)
            }
        };

        self.enter(Stage::Intake);
        let ctx = sql::session(&SessionSettings {
            threads: self.settings.threads,
            max_memory: limits.max_memory,
            batch_size: self.settings.batch_size,
            spill_dir: None,
        })?;
        let _intake = match input {
            Some(file) => {
                let mut options = IntakeOptions::new(&connector.input, limits)?;
                options.batch_size = self.settings.batch_size;
                let path = std::fs::canonicalize(&file.path)
                    .map_err(|e| Error::io(format!("opening {}", file.path.display()), e))?;
                let sink: Arc<dyn RejectSink> = self.shared.rejects.clone();
                let intake = intake::open(&ctx, &path, &file.name, &options, sink, self.cancel.clone()).await?;
                let tables: Vec<_> = intake
                    .tables
                    .iter()
                    .map(|t| (t.name.as_str(), t.provider.clone()))
                    .collect();
                sql::register_inputs(&ctx, &tables)?;
                lock(&self.shared.tables).extend(intake.tables.iter().map(|t| (t.name.clone(), t.stats.clone())));
                Some(intake)
            }
            None => None,
        };
        self.shared.refresh_tables();
        let doc = self.shared.progress.snapshot();
        sql::register_meta(
            &ctx,
            &ExecutionMeta {
                execution_id: doc.id.clone(),
                connector_id: doc.connector.id.clone(),
                connector_api_name: connector.api_name.clone(),
                trigger_type: doc.trigger_type.as_str().to_string(),
                is_dry_run: doc.is_dry_run,
                source_file_id: doc.source_file_id.clone(),
                source_file_name: input.map(|i| i.name.clone()),
                started_at: doc.started_at.unwrap_or_else(chrono::Utc::now),
            },
            &connector.parameters,
        )?;

        if let Some(records) = &self.records {
            // Reading every record of an object costs a whole table scan;
            // only the objects the script reads are snapshotted.
            let read = sql::records_read(&ctx, &script)?;
            for object in &records.objects.objects {
                records.store.ensure_object(&records.workspace, object)?;
                if !read.contains(&object.name) {
                    continue;
                }
                let batch = records.store.scan(&records.workspace, object)?;
                sql::register_records(&ctx, &object.name, batch)?;
            }
        }

        // The script: intake goes on while the SQL stage streams.
        self.enter(Stage::Sql);
        let scopes = sql::run_script(&ctx, &script).await?;
        let mut columns: HashMap<String, Vec<String>> = HashMap::new();
        // Per scope: the SQL output schema and the schema after its transforms.
        let mut schemas = Vec::new();
        let mut chains: HashMap<String, Chain> = HashMap::new();
        let stage = self.stage_context();
        for scope in &scopes {
            let table = ctx
                .table(datafusion::common::TableReference::partial(
                    sql::OUTPUT_SCHEMA,
                    scope.as_str(),
                ))
                .await
                .map_err(|e| sql::map_error(e, sql::statement_of(&script, scope)))?;
            let sql_schema = Arc::new(table.schema().as_arrow().clone());
            let mut schema = sql_schema.clone();
            if let Some(plugins) = &self.plugins
                && connector.transforms.iter().any(|t| &t.scope == scope)
            {
                self.enter(Stage::Transform);
                if let Some((chain, out)) = Chain::open(plugins, connector, scope, sql_schema.clone(), &stage).await? {
                    schema = out;
                    self.transform_counts(&chain);
                    chains.insert(scope.clone(), chain);
                }
            }
            columns.insert(
                scope.clone(),
                schema.fields().iter().map(|f| f.name().clone()).collect(),
            );
            schemas.push((scope.clone(), sql_schema, schema));
        }
        self.at(Stage::Variables);
        let problems = connector.check_scopes(&columns);
        if !problems.is_empty() {
            return Err(Error::InvalidConnector(problems));
        }
        let mut compiled = Vec::new();
        for (scope, _, schema) in &schemas {
            let defs: Vec<_> = connector
                .variables
                .iter()
                .enumerate()
                .filter(|(_, v)| &v.scope == scope)
                .collect();
            let vars = ScopeVariables::compile(scope, &defs, schema, &connector.parameters)
                .map_err(Error::InvalidConnector)?;
            compiled.push(vars);
            Rejects::lock(&self.shared.rejects.report).add_sheet(scope, columns[scope].clone());
        }
        self.shared.progress.update(|d| {
            if let Some(StepProgress::Sql { scopes: s, .. }) = d.stage_mut(Stage::Sql) {
                *s = scopes
                    .iter()
                    .map(|n| ScopeCount {
                        scope: n.clone(),
                        rows: 0,
                    })
                    .collect();
            }
            if let Some(StepProgress::Variables { scopes: s, .. }) = d.stage_mut(Stage::Variables) {
                *s = scopes
                    .iter()
                    .map(|n| VariableCount {
                        scope: n.clone(),
                        ..Default::default()
                    })
                    .collect();
            }
        });

        let dry_run = self.shared.progress.snapshot().is_dry_run;
        let mut steps: Vec<(&LoadDef, LoadStep<'_>)> = Vec::new();
        if let Some(records) = records {
            self.at(Stage::Load);
            for def in &load_defs {
                let object = records
                    .objects
                    .get(&def.object)
                    .ok_or_else(|| Error::Internal(format!("object {} vanished", def.object)))?;
                let step = LoadStep::new(def, object, &records.workspace, records.store.as_ref(), dry_run)?;
                steps.push((def, step));
            }
            self.shared.progress.update(|d| {
                if let Some(StepProgress::Load { steps: s, .. }) = d.stage_mut(Stage::Load) {
                    *s = load_defs
                        .iter()
                        .map(|l| LoadCount {
                            order: l.order,
                            scope: l.scope.clone(),
                            object: l.object.clone(),
                            ..Default::default()
                        })
                        .collect();
                }
                d.set_stage_status(Stage::Load, StageStatus::Running);
            });
        }
        self.shared
            .progress
            .update(|d| d.set_stage_status(Stage::Variables, StageStatus::Running));
        for ((scope, sql_schema, _), vars) in schemas.iter().zip(&compiled) {
            self.at(Stage::Sql);
            let mut stream = sql::scope_stream(&ctx, scope, &script).await?;
            let mut csv = CsvOutput::create(
                &self.out_dir.join("output").join(format!("{scope}.csv")),
                sql_schema,
                self.settings.output_row_cap,
            )?;
            let scope_steps: Vec<&(&LoadDef, LoadStep<'_>)> = steps.iter().filter(|(d, _)| &d.scope == scope).collect();
            let mut chain = chains.remove(scope);
            let mut rows = 0u64;
            let mut consumed = 0u64;
            let mut last_refresh = std::time::Instant::now();
            while let Some(batch) = stream.next().await {
                self.at(Stage::Sql);
                let batch = batch.map_err(|e| sql::map_error(e, sql::statement_of(&script, scope)))?;
                rows += batch.num_rows() as u64;
                if rows > limits.max_rows {
                    return Err(Error::LimitExceeded {
                        limit: Limit::MaxRows,
                        message: format!("scope `{scope}` has more than {} rows", limits.max_rows),
                    });
                }
                self.at(Stage::Report);
                csv.write(&batch)?;
                self.shared.progress.update(|d| {
                    if let Some(StepProgress::Sql { scopes: s, .. }) = d.stage_mut(Stage::Sql)
                        && let Some(c) = s.iter_mut().find(|c| &c.scope == scope)
                    {
                        c.rows = rows;
                    }
                });
                let batches = match chain.as_mut() {
                    Some(chain) => {
                        self.at(Stage::Transform);
                        let out = chain.process(batch, &stage).await?;
                        self.transform_counts(chain);
                        out
                    }
                    None => vec![batch],
                };
                for batch in batches {
                    self.consume(scope, vars, &scope_steps, &batch, &mut consumed)?;
                }
                if last_refresh.elapsed() > Duration::from_millis(200) {
                    self.shared.refresh_tables();
                    last_refresh = std::time::Instant::now();
                }
            }
            if let Some(chain) = chain.as_mut() {
                self.at(Stage::Transform);
                let last = chain.finish(&stage).await?;
                self.transform_counts(chain);
                for batch in last {
                    self.consume(scope, vars, &scope_steps, &batch, &mut consumed)?;
                }
            }
            self.at(Stage::Report);
            csv.finish()?;
        }
        self.shared.refresh_tables();
        self.complete(Stage::Intake);
        self.complete(Stage::Sql);
        if !connector.transforms.is_empty() {
            self.complete(Stage::Transform);
        }
        self.complete(Stage::Variables);
        if !steps.is_empty() {
            self.complete(Stage::Load);
        }
        self.check_invalid_ratio(limits)?;
        Ok(())
    }

    /// Converts and loads one batch of a scope's final rows (after its
    /// transforms); `consumed` counts the scope's rows so far.
    fn consume(
        &self,
        scope: &str,
        vars: &ScopeVariables,
        steps: &[&(&LoadDef, LoadStep<'_>)],
        batch: &RecordBatch,
        consumed: &mut u64,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.at(Stage::Variables);
        let first_row = *consumed;
        *consumed += batch.num_rows() as u64;
        let (converted, valid, invalid) = self.variables(scope, vars, batch, first_row)?;
        if !steps.is_empty() {
            self.at(Stage::Load);
            self.load(scope, steps, batch, &converted, first_row)?;
        }
        self.shared.progress.update(|d| {
            if let Some(StepProgress::Variables { scopes: s, .. }) = d.stage_mut(Stage::Variables)
                && let Some(c) = s.iter_mut().find(|c| c.scope == scope)
            {
                c.total += valid + invalid;
                c.valid += valid;
                c.invalid += invalid;
            }
        });
        Ok(())
    }

    fn stage_context(&self) -> StageContext {
        StageContext {
            cancel: self.cancel.clone(),
            deadline: self.deadline,
            log: self.log.clone(),
            rejects: self.shared.rejects.clone(),
        }
    }

    /// Puts a chain's counts into the document, all steps in connector order.
    fn transform_counts(&self, chain: &Chain) {
        let steps: Vec<TransformCount> = {
            let mut counts = lock(&self.transform_counts);
            counts.extend(chain.counts());
            counts.values().cloned().collect()
        };
        self.shared.progress.update(|d| {
            if let Some(StepProgress::Transform { steps: s, .. }) = d.stage_mut(Stage::Transform) {
                *s = steps;
            }
        });
    }

    /// Sends one row of a scope to the rejected rows and the report.
    fn reject(&self, stage: Stage, scope: &str, row: u64, reasons: Vec<String>, values: Vec<(String, Option<String>)>) {
        self.shared.rejects.reject(RejectedRow {
            stage,
            source: scope.to_string(),
            row,
            line: None,
            reasons,
            values,
        });
    }

    /// Converts one batch to variables; invalid rows go to the report.
    /// Returns (valid, invalid) row counts.
    fn variables(
        &self,
        scope: &str,
        vars: &ScopeVariables,
        batch: &RecordBatch,
        first_row: u64,
    ) -> Result<(Converted, u64, u64)> {
        let converted = vars.convert(batch);
        let invalid = converted.valid.iter().filter(|v| !**v).count() as u64;
        if invalid > 0 {
            let values = RowValues::new(batch)?;
            let mut issues = converted.issues.iter().peekable();
            for (row, ok) in converted.valid.iter().enumerate() {
                let mut reasons = Vec::new();
                while let Some((r, issue)) = issues.peek() {
                    if *r != row {
                        break;
                    }
                    reasons.push(issue.to_string());
                    issues.next();
                }
                if *ok {
                    continue;
                }
                self.reject(
                    Stage::Variables,
                    scope,
                    first_row + row as u64 + 1,
                    reasons,
                    values.row(row),
                );
            }
        }
        Ok((converted, batch.num_rows() as u64 - invalid, invalid))
    }

    /// Runs the load steps of a scope on the valid rows of one batch, in
    /// order; a step's `record_id_variable` is visible to the later steps.
    fn load(
        &self,
        scope: &str,
        steps: &[&(&LoadDef, LoadStep<'_>)],
        batch: &RecordBatch,
        converted: &Converted,
        first_row: u64,
    ) -> Result<()> {
        if converted.values.num_rows() != batch.num_rows() {
            return Err(Error::Internal(
                "variable values do not line up with the scope rows".into(),
            ));
        }
        let valid_rows: Vec<usize> = converted
            .valid
            .iter()
            .enumerate()
            .filter(|(_, v)| **v)
            .map(|(i, _)| i)
            .collect();
        // Every row shares the variable names, with a slot for each record
        // id variable the steps fill in.
        let schema = converted.values.schema();
        let mut names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for (def, _) in steps {
            if let Some(var) = &def.record_id_variable
                && !names.contains(var)
            {
                names.push(var.clone());
            }
        }
        let names = Arc::new(names);
        let columns = converted.values.columns();
        let mut rows: Vec<Row> = valid_rows
            .iter()
            .map(|&r| {
                let mut values: Vec<Value> = columns.iter().map(|c| value_at(c, r)).collect();
                values.resize(names.len(), Value::Null);
                Row::new(names.clone(), values)
            })
            .collect();
        let values = RowValues::new(batch)?;
        // Rows are loaded and committed in chunks of `load_batch_size`: a
        // cancel is honoured between chunks, so it waits for at most one
        // chunk's commit, and the counts move with every commit.
        let chunk = self.settings.load_batch_size.max(1);
        for start in (0..rows.len()).step_by(chunk) {
            if self.cancel.is_cancelled() {
                return Err(Error::Canceled);
            }
            let end = (start + chunk).min(rows.len());
            for (def, step) in steps {
                let outcomes = step.load(&rows[start..end])?;
                if let Some(var) = &def.record_id_variable {
                    for (row, o) in rows[start..end].iter_mut().zip(&outcomes) {
                        row.set(var, o.record().map_or(Value::Null, |id| Value::Text(id.to_string())));
                    }
                }
                for (k, o) in outcomes.iter().enumerate() {
                    let reason = match o {
                        Outcome::Skipped(r) | Outcome::Failed(r) => r,
                        _ => continue,
                    };
                    let row = valid_rows[start + k];
                    let reasons = vec![format!("load {} into {}: {reason}", def.order, def.object)];
                    self.reject(Stage::Load, scope, first_row + row as u64 + 1, reasons, values.row(row));
                }
                let counts = loads::count(&outcomes);
                self.shared.progress.update(|d| {
                    if let Some(StepProgress::Load { steps: s, .. }) = d.stage_mut(Stage::Load)
                        && let Some(c) = s.iter_mut().find(|c| c.order == def.order)
                    {
                        c.total += counts.total;
                        c.created += counts.created;
                        c.updated += counts.updated;
                        c.skipped += counts.skipped;
                        c.failed += counts.failed;
                    }
                });
            }
        }
        Ok(())
    }

    fn check_invalid_ratio(&self, limits: &Limits) -> Result<()> {
        let doc = self.shared.progress.snapshot();
        let mut checks = Vec::new();
        for p in &doc.step_progress {
            match p {
                StepProgress::Intake { tables, .. } => {
                    for t in tables {
                        checks.push((t.invalid, t.rows + t.invalid));
                    }
                }
                StepProgress::Variables { scopes, .. } => {
                    for s in scopes {
                        checks.push((s.invalid, s.total));
                    }
                }
                _ => {}
            }
        }
        for (invalid, total) in checks {
            if total > 0 && invalid as f64 / total as f64 > limits.max_invalid_ratio {
                return Err(Error::InvalidRatioExceeded {
                    invalid,
                    total,
                    max_ratio: limits.max_invalid_ratio,
                });
            }
        }
        Ok(())
    }
}

/// One variable value as the store takes it.
fn value_at(array: &datafusion::arrow::array::ArrayRef, row: usize) -> Value {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Date32Type, Float64Type, TimeUnit, TimestampMicrosecondType};
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Utf8 => Value::Text(array.as_string::<i32>().value(row).to_string()),
        DataType::Float64 => Value::Number(array.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Value::Datetime(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            let options = FormatOptions::default();
            let texts: Vec<String> = match ArrayFormatter::try_new(list.as_ref(), &options) {
                Ok(f) => (0..list.len())
                    .filter(|i| !list.is_null(*i))
                    .map(|i| f.value(i).to_string())
                    .collect(),
                Err(_) => Vec::new(),
            };
            if texts.is_empty() {
                Value::Null
            } else {
                Value::Text(texts.join(", "))
            }
        }
        _ => match ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()) {
            Ok(f) => Value::Text(f.value(row).to_string()),
            Err(_) => Value::Null,
        },
    }
}
