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
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::connector::LoadDef;
use crate::connector::{Connector, Limits};
use crate::error::{Error, Limit, Result, Stage};
use crate::execution::{
    Execution, ExecutionError, ScopeCount, StageStatus, Status, StepProgress, TableCount, VariableCount,
};
use crate::execution::{LoadCount, TransformCount};
use crate::intake::infer::LINE_COLUMN;
use crate::intake::{self, IntakeOptions, RejectSink, TableStats};
use crate::loads::{self, Decided, LoadStep, Outcome, Row};
use crate::objects::Objects;
use crate::output::{self, CsvOutput};
use crate::report::{RejectedRow, RejectedWriter, ReportBuilder, RowValues};
use crate::runlog::RunLog;
use crate::sources::{self, RemoteQueries, SecretValues};
use crate::sql::{self, ExecutionMeta, Script, ScriptStatement, SessionSettings};
use crate::store::{RecordStore, Value};
use crate::transform::{Chain, Plugins, StageContext};
use crate::variables::{Converted, ScopeVariables};

mod load;

use load::*;

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
    /// Threads for the SQL engine and for parsing a CSV/TSV or JSON Lines input.
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
            load_batch_size: 8192,
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
    /// The secrets the connector's sources need, by name.
    pub secrets: SecretValues,
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
    fn reject(&self, mut row: RejectedRow) {
        // A scope row that carries the line of the input row it came from
        // is shown at that line; the line is not one of its values.
        if let Some(at) = row.values.iter().position(|(name, _)| name == LINE_COLUMN) {
            let (_, line) = row.values.remove(at);
            row.line = row.line.or_else(|| line.and_then(|l| l.parse().ok()));
        }
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
        secrets,
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
        report: Mutex::new(
            ReportBuilder::new(settings.report_rows).with_source_name(input.as_ref().map(|i| i.name.clone())),
        ),
        failure: Mutex::new(None),
    });
    let shared = Shared {
        progress: progress.clone(),
        rejects: rejects.clone(),
        stage: Arc::new(Mutex::new(Stage::Intake)),
        tables: Arc::new(Mutex::new(Vec::new())),
        halt: cancel.child_token(),
        loading: Arc::new(Mutex::new(None)),
        remote: RemoteQueries::new(&progress.snapshot().id),
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
                secrets,
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
                // The loader stops after the commit in flight, which counts;
                // waiting for it makes the final counts say exactly what
                // was written.
                shared.halt.cancel();
                work.abort();
                let _ = work.await;
                // A database goes on with a query whose reader is gone
                // until it is told to stop.
                shared.remote.cancel().await;
                let loading = lock(&shared.loading).clone();
                if let Some(loading) = loading {
                    loading.cancelled().await;
                }
            }
            outcome
        }
    };
    // An input table's error reaches the run through the SQL stream that
    // reads it; it is intake's.
    let failed_stage = match &outcome {
        Err(Error::UnreadableInput { .. }) => Stage::Intake,
        Err(_) if lock(&shared.tables).iter().any(|(_, stats)| stats.failed()) => Stage::Intake,
        _ => *lock(&shared.stage),
    };
    shared.refresh_tables();
    finish(outcome, failed_stage, progress, &rejects, &out_dir).await
}

fn connector_max_runtime(connector: &Connector) -> String {
    connector.limits.max_runtime.to_string()
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
            doc.fail_at(*stage);
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
    /// Stops the loader between commits: fires on cancel and at the
    /// deadline.
    halt: CancellationToken,
    /// Fires when the current scope's loader has ended, its last commit
    /// counted.
    loading: Arc<Mutex<Option<CancellationToken>>>,
    /// The queries the run's sources run on their servers, ended when the
    /// run stops early.
    remote: RemoteQueries,
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
    secrets: SecretValues,
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

    /// The run's stages, each a step below: the output directory, what
    /// the connector needs, the input tables, what the script may read, the
    /// scopes it makes, their variables, the load steps, then every scope's
    /// rows streamed through to the end.
    async fn execute(&mut self, script_text: &str, input: Option<&InputFile>, limits: &Limits) -> Result<()> {
        self.open_outputs()?;
        self.at(Stage::Sql);
        let script = Script::parse(script_text)?;
        let load_defs = self.check_needs()?;

        self.enter(Stage::Intake);
        let ctx = sql::session(&SessionSettings {
            threads: self.settings.threads,
            max_memory: limits.max_memory,
            batch_size: self.settings.batch_size,
            spill_dir: None,
        })?;
        let _intake = self.open_input(&ctx, input, limits).await?;
        self.register_meta(&ctx, input)?;
        let named = sql::Named::in_session(&ctx, &script)?;
        self.register_sources(&ctx, &named).await?;
        self.register_records(&ctx, &named)?;

        self.enter(Stage::Sql);
        let mut scopes = self.open_scopes(&ctx, &script).await?;
        let compiled = self.compile_variables(&scopes)?;
        let steps = self.open_loads(&load_defs)?;
        self.shared
            .progress
            .update(|d| d.set_stage_status(Stage::Variables, StageStatus::Running));
        for ((scope, sql_schema, _), vars) in scopes.schemas.iter().zip(&compiled) {
            self.at(Stage::Sql);
            let source = ScopeSource {
                scope,
                stream: sql::scope_stream(&ctx, scope, &script).await?,
                csv: CsvOutput::create(
                    &output::scope_file(&self.out_dir, scope)?,
                    sql_schema,
                    self.settings.output_row_cap,
                )?,
                chain: scopes.chains.remove(scope),
                vars,
                statement: sql::statement_of(&script, scope),
            };
            let scope_steps = steps.iter().filter(|s| &s.def().scope == scope).cloned().collect();
            self.stream_scope(source, scope_steps, limits).await?;
        }
        self.shared.refresh_tables();
        self.complete(Stage::Intake);
        self.complete(Stage::Sql);
        if !self.connector.transforms.is_empty() {
            self.complete(Stage::Transform);
        }
        self.complete(Stage::Variables);
        if !steps.is_empty() {
            self.complete(Stage::Load);
        }
        self.check_invalid_ratio(limits)
    }

    /// The output directory and `rejected.csv`, before anything can be
    /// rejected.
    fn open_outputs(&self) -> Result<()> {
        std::fs::create_dir_all(self.out_dir.join("output"))
            .map_err(|e| Error::io(format!("creating {}", self.out_dir.display()), e))?;
        *Rejects::lock(&self.shared.rejects.writer) = Some(RejectedWriter::create(&self.out_dir.join("rejected.csv"))?);
        Ok(())
    }

    /// What the connector needs of the run (a plugin runtime for its
    /// transforms, a record store holding the objects its load steps
    /// write), checked before any input is read; its load steps in order.
    fn check_needs(&self) -> Result<Vec<LoadDef>> {
        let connector = &self.connector;
        if !connector.transforms.is_empty() && self.plugins.is_none() {
            self.at(Stage::Transform);
            return Err(Error::InvalidConnector(vec![crate::error::Problem::new(
                "transforms",
                "the connector has transform steps but the run has no plugin runtime",
            )]));
        }
        let mut load_defs = connector.loads.clone();
        load_defs.sort_by_key(|l| l.order);
        if load_defs.is_empty() {
            return Ok(load_defs);
        }
        let Some(records) = &self.records else {
            self.at(Stage::Load);
            return Err(Error::InvalidConnector(vec![crate::error::Problem::new(
                "loads",
                "the connector has load steps but the run has no record store and objects (objects.toml)",
            )]));
        };
        let problems = records.objects.check_loads(connector);
        if !problems.is_empty() {
            self.at(Stage::Load);
            return Err(Error::InvalidConnector(problems));
        }
        Ok(load_defs)
    }

    /// The input file's tables, registered as `input.<table>`; intake goes
    /// on while the script streams.
    async fn open_input(
        &self,
        ctx: &SessionContext,
        input: Option<&InputFile>,
        limits: &Limits,
    ) -> Result<Option<intake::Intake>> {
        let Some(file) = input else {
            self.shared.refresh_tables();
            return Ok(None);
        };
        let mut options = IntakeOptions::new(&self.connector.input, limits)?;
        options.batch_size = self.settings.batch_size;
        options.threads = self.settings.threads;
        options.unpack_dir = Some(self.out_dir.clone());
        let path =
            std::fs::canonicalize(&file.path).map_err(|e| Error::io(format!("opening {}", file.path.display()), e))?;
        let sink: Arc<dyn RejectSink> = self.shared.rejects.clone();
        let intake = intake::open(ctx, &path, &file.name, &options, sink, self.cancel.clone()).await?;
        let tables: Vec<_> = intake
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.provider.clone()))
            .collect();
        sql::register_inputs(ctx, &tables)?;
        lock(&self.shared.tables).extend(intake.tables.iter().map(|t| (t.name.clone(), t.stats.clone())));
        self.shared.refresh_tables();
        Ok(Some(intake))
    }

    /// `meta.current_execution` and `meta.parameters`.
    fn register_meta(&self, ctx: &SessionContext, input: Option<&InputFile>) -> Result<()> {
        let doc = self.shared.progress.snapshot();
        sql::register_meta(
            ctx,
            &ExecutionMeta {
                execution_id: doc.id.clone(),
                connector_id: doc.connector.id.clone(),
                connector_api_name: self.connector.api_name.clone(),
                trigger_type: doc.trigger_type.as_str().to_string(),
                is_dry_run: doc.is_dry_run,
                source_file_id: doc.source_file_id.clone(),
                source_file_name: input.map(|i| i.name.clone()),
                source_file_size: input.and_then(|i| std::fs::metadata(&i.path).ok()).map(|m| m.len()),
                triggered_by: doc
                    .triggered_by
                    .as_ref()
                    .map(|t| (t.key_id.clone(), t.key_name.clone())),
                window: (doc.window_start, doc.window_end),
                started_at: doc.started_at.unwrap_or_else(chrono::Utc::now),
            },
            &self.connector.parameters,
        )
    }

    /// The sources the script names; only those are reached.
    async fn register_sources(&self, ctx: &SessionContext, named: &sql::Named) -> Result<()> {
        if self.connector.sources.is_empty() {
            return Ok(());
        }
        sources::register(
            ctx,
            &self.connector.sources,
            &named.schemas(),
            &self.secrets,
            &self.shared.remote,
        )
        .await
    }

    /// `records.<object>` for every object the script reads, as it is
    /// before this run loads anything: scopes that read after others loaded
    /// see what a dry run would see.
    fn register_records(&self, ctx: &SessionContext, named: &sql::Named) -> Result<()> {
        let Some(records) = &self.records else {
            return Ok(());
        };
        for object in &records.objects.objects {
            records.store.ensure_object(&records.workspace, object)?;
        }
        let read = named.tables_in(sql::RECORDS_SCHEMA);
        if !records.objects.objects.iter().any(|o| read.contains(&o.name)) {
            return Ok(());
        }
        let snapshot = records.store.snapshot()?;
        for object in records.objects.objects.iter().filter(|o| read.contains(&o.name)) {
            let table =
                crate::records::RecordsTable::new(snapshot.clone(), &records.workspace, object, self.log.clone());
            sql::register_records(ctx, &object.name, Arc::new(table))?;
        }
        Ok(())
    }

    /// The script's scopes: each one's SQL output schema, its transform
    /// chain opened, and the schema its variables read.
    async fn open_scopes(&self, ctx: &SessionContext, script: &Script) -> Result<Scopes> {
        let names = sql::run_script(ctx, script, sql::ScriptMode::Run).await?;
        let mut scopes = Scopes {
            names,
            ..Scopes::default()
        };
        let stage = self.stage_context();
        for scope in &scopes.names {
            let table = ctx
                .table(datafusion::common::TableReference::partial(
                    sql::OUTPUT_SCHEMA,
                    scope.as_str(),
                ))
                .await
                .map_err(|e| sql::map_error(e, sql::statement_of(script, scope)))?;
            let sql_schema = Arc::new(table.schema().as_arrow().clone());
            let mut schema = sql_schema.clone();
            if let Some(plugins) = &self.plugins
                && self.connector.transforms.iter().any(|t| &t.scope == scope)
            {
                self.enter(Stage::Transform);
                if let Some((chain, out)) =
                    Chain::open(plugins, &self.connector, scope, sql_schema.clone(), &stage).await?
                {
                    schema = out;
                    self.transform_counts(&chain);
                    scopes.chains.insert(scope.clone(), chain);
                }
            }
            scopes.columns.insert(
                scope.clone(),
                schema.fields().iter().map(|f| f.name().clone()).collect(),
            );
            scopes.schemas.push((scope.clone(), sql_schema, schema));
        }
        Ok(scopes)
    }

    /// Every scope's variables, checked against its columns; the report's
    /// sheets and the document's per-scope counts.
    fn compile_variables(&self, scopes: &Scopes) -> Result<Vec<ScopeVariables>> {
        self.at(Stage::Variables);
        let connector = &self.connector;
        let problems = connector.check_scopes(&scopes.columns);
        if !problems.is_empty() {
            return Err(Error::InvalidConnector(problems));
        }
        let mut compiled = Vec::new();
        for (scope, _, schema) in &scopes.schemas {
            let defs: Vec<_> = connector
                .variables
                .iter()
                .enumerate()
                .filter(|(_, v)| &v.scope == scope)
                .collect();
            let vars = ScopeVariables::compile(scope, &defs, schema, &connector.parameters)
                .map_err(Error::InvalidConnector)?;
            compiled.push(vars);
            let mut report = Rejects::lock(&self.shared.rejects.report);
            report.add_sheet(
                scope,
                scopes.columns[scope]
                    .iter()
                    .filter(|c| c.as_str() != LINE_COLUMN)
                    .cloned()
                    .collect(),
            );
            report.numeric_columns(
                scope,
                schema
                    .fields()
                    .iter()
                    .filter(|f| f.data_type().is_numeric() && f.name() != LINE_COLUMN)
                    .map(|f| f.name().as_str()),
            );
        }
        let names = &scopes.names;
        self.shared.progress.update(|d| {
            if let Some(StepProgress::Sql { scopes: s, .. }) = d.stage_mut(Stage::Sql) {
                *s = names
                    .iter()
                    .map(|n| ScopeCount {
                        scope: n.clone(),
                        rows: 0,
                    })
                    .collect();
            }
            if let Some(StepProgress::Variables { scopes: s, .. }) = d.stage_mut(Stage::Variables) {
                *s = names
                    .iter()
                    .map(|n| VariableCount {
                        scope: n.clone(),
                        ..Default::default()
                    })
                    .collect();
            }
        });
        Ok(compiled)
    }

    /// The load steps, in order, each over its object in the record store.
    fn open_loads(&self, load_defs: &[LoadDef]) -> Result<Vec<Arc<LoadStep>>> {
        let Some(records) = self.records.as_ref().filter(|_| !load_defs.is_empty()) else {
            return Ok(Vec::new());
        };
        self.at(Stage::Load);
        let (dry_run, execution_id) = {
            let doc = self.shared.progress.snapshot();
            (doc.is_dry_run, doc.id)
        };
        let mut steps = Vec::new();
        for def in load_defs {
            let object = records
                .objects
                .get(&def.object)
                .ok_or_else(|| Error::Internal(format!("object {} vanished", def.object)))?;
            let step = LoadStep::new(
                def.clone(),
                object.clone(),
                &records.workspace,
                records.store.clone(),
                dry_run,
            )?
            .with_tally(&execution_id);
            steps.push(Arc::new(step));
        }
        self.shared.progress.update(|d| {
            if let Some(StepProgress::Load { steps: s, .. }) = d.stage_mut(Stage::Load) {
                *s = load_defs.iter().map(LoadCount::of).collect();
            }
            d.set_stage_status(Stage::Load, StageStatus::Running);
        });
        Ok(steps)
    }

    /// Runs one scope to its end. The rows are read, written to the output
    /// CSV, transformed and converted to variables here, while a thread of
    /// their own reports the invalid ones and loads the valid ones, batch by
    /// batch in order: the next batch is prepared while the last one is
    /// written to the store.
    async fn stream_scope(&self, source: ScopeSource<'_>, steps: Vec<Arc<LoadStep>>, limits: &Limits) -> Result<()> {
        // Two batches in flight bound the memory the overlap costs.
        let (tx, rx) = mpsc::channel(2);
        let names = (!steps.is_empty()).then(|| load_names(&source.vars.schema(), &steps));
        let loader = Loader {
            scope: source.scope.to_string(),
            steps,
            shared: self.shared.clone(),
            chunk: self.settings.load_batch_size.max(1),
        };
        let ended = CancellationToken::new();
        *lock(&self.shared.loading) = Some(ended.clone());
        let done = ended.clone().drop_guard();
        let handle = tokio::task::spawn_blocking(move || {
            let _done = done;
            loader.run(rx)
        });
        let produced = self.produce(source, names, tx, &ended, limits).await;
        let loaded = handle
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("the load thread failed: {e}"))));
        if let Err(e) = loaded {
            self.at(Stage::Load);
            return Err(e);
        }
        produced
    }

    /// Reads a scope's rows and sends them, converted, to its loader; stops
    /// early, without error, when the loader has ended.
    async fn produce(
        &self,
        source: ScopeSource<'_>,
        names: Option<Arc<Vec<String>>>,
        tx: mpsc::Sender<Prepared>,
        loader_ended: &CancellationToken,
        limits: &Limits,
    ) -> Result<()> {
        let ScopeSource {
            scope,
            mut stream,
            mut csv,
            mut chain,
            vars,
            statement,
        } = source;
        let stage = self.stage_context();
        let mut rows = 0u64;
        let mut consumed = 0u64;
        let mut last_refresh = std::time::Instant::now();
        loop {
            let next = tokio::select! {
                biased;
                _ = loader_ended.cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            let Some(batch) = next else { break };
            self.at(Stage::Sql);
            let batch = batch.map_err(|e| sql::map_error(e, statement))?;
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
                    && let Some(c) = s.iter_mut().find(|c| c.scope == scope)
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
                if !self.send(vars, names.as_ref(), batch, &mut consumed, &tx).await? {
                    return Ok(());
                }
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
                if !self.send(vars, names.as_ref(), batch, &mut consumed, &tx).await? {
                    return Ok(());
                }
            }
        }
        self.at(Stage::Report);
        csv.finish()
    }

    /// Converts one batch of a scope's final rows (after its transforms) to
    /// variables and sends it to the loader; `consumed` counts the scope's
    /// rows so far. False when the loader has ended.
    async fn send(
        &self,
        vars: &ScopeVariables,
        names: Option<&Arc<Vec<String>>>,
        batch: RecordBatch,
        consumed: &mut u64,
        tx: &mpsc::Sender<Prepared>,
    ) -> Result<bool> {
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        self.at(Stage::Variables);
        let first_row = *consumed;
        *consumed += batch.num_rows() as u64;
        let converted = vars.convert(&batch);
        let (valid, rows) = match names {
            Some(names) => {
                let rows = load_rows(&converted, names)?;
                // Waiting for the loader is time spent loading.
                self.at(Stage::Load);
                rows
            }
            None => (Vec::new(), Vec::new()),
        };
        let prepared = Prepared {
            batch,
            converted,
            first_row,
            valid,
            rows,
        };
        Ok(tx.send(prepared).await.is_ok())
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

/// The scopes a script makes, in order, as the stages after SQL see them.
#[derive(Default)]
struct Scopes {
    names: Vec<String>,
    /// Per scope: its SQL output schema and its schema after transforms.
    schemas: Vec<(String, SchemaRef, SchemaRef)>,
    /// Per scope: the columns its variables read.
    columns: HashMap<String, Vec<String>>,
    /// The transform chains of the scopes that have some.
    chains: HashMap<String, Chain>,
}

/// What a scope's rows come from: its SQL output, the output CSV they are
/// written to, its transforms and its variables.
struct ScopeSource<'a> {
    scope: &'a str,
    stream: SendableRecordBatchStream,
    csv: CsvOutput,
    chain: Option<Chain>,
    vars: &'a ScopeVariables,
    /// The statement that defines the scope, for the errors it raises.
    statement: Option<&'a ScriptStatement>,
}
