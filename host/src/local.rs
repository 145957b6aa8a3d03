//! `weir run`: runs a connector package or directory on this machine with
//! the same engine the server uses, shows progress on a terminal, and prints
//! a summary (or the execution document with `--json`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use weir_engine::connector::Connector;
use weir_engine::error::Stage;
use weir_engine::execution::{ConnectorRef, Execution, StageStatus, Status, StepProgress, TriggerType};
use weir_engine::package::Package;
use weir_engine::pipeline::{self, InputFile, Progress, Records, RunRequest, RunSettings};
use weir_engine::plugin::{PluginRuntime, PluginSettings};
use weir_engine::runlog::{LogLevel, RunLog};
use weir_engine::snapshot;
use weir_engine::sources::SecretValues;
use weir_engine::sql::Script;
use weir_engine::store::{RecordStore, SqliteStore};
use weir_engine::transform::{PluginDir, Plugins};

/// Arguments of `weir run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A dev package (.zip) or a directory with connector.toml, script.sql and data/.
    pub package: PathBuf,
    /// The input file (default: the one file under data/).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where outputs go: `output/<scope>.csv`, `report.xlsx`, `rejected.csv`.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Do everything except writing records.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the execution document as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Threads for the SQL engine and for parsing a CSV/TSV or JSON Lines input
    /// (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most rows written per scope output CSV.
    #[arg(long)]
    pub output_rows: Option<u64>,
    /// Rows per load commit: a cancel waits for at most one such commit,
    /// and a failed or canceled run keeps every commit before it.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// The local record store load steps write to (default: OUT/records.db).
    /// Running again against the same file updates the records it holds.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// A file of the secrets the connector's sources need, one
    /// `name = "value"` per line (TOML); `WEIR_SECRET_<NAME>` variables win.
    #[arg(long)]
    pub secrets: Option<PathBuf>,
}

/// Runs `weir run`. The exit code is 0 for success and partial success, 1
/// for a failed run, 130 for a canceled one.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run_async(args, threads))
}

async fn run_async(args: RunArgs, threads: usize) -> anyhow::Result<ExitCode> {
    // A package that is not there is a usage error, like a missing --input.
    if !args.package.exists() {
        eprintln!("error: there is no package at {}", args.package.display());
        return Ok(ExitCode::from(2));
    }
    let package = match Package::load(&args.package) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let input = match &args.input {
        Some(path) => Some(InputFile {
            path: path.clone(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "input".into()),
        }),
        None => package.data_file.clone(),
    };
    if input.is_none()
        && let Some(table) = Script::parse(&package.script)
            .and_then(|script| weir_engine::sql::inputs_named(&script))
            .ok()
            .and_then(|tables| tables.into_iter().next())
    {
        eprintln!(
            "error: the script reads `input.{table}`, but there is no input file: \
             put one in the package's data/ directory, or pass --input FILE"
        );
        return Ok(ExitCode::from(2));
    }
    let secrets = match local_secrets(&package.connector, args.secrets.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let manifest_connector = package.manifest.as_ref().and_then(|m| m.get("connector"));
    let connector_ref = ConnectorRef {
        id: manifest_connector
            .and_then(|c| c.get("id"))
            .and_then(|v| v.as_str())
            .map(str::to_string),
        api_name: package.connector.api_name.clone(),
        version: manifest_connector
            .and_then(|c| c.get("version"))
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok()),
    };
    let mut execution = Execution::new(
        uuid::Uuid::now_v7().to_string(),
        connector_ref,
        TriggerType::Local,
        args.dry_run,
    );
    execution.source_file_id = match &input {
        Some(i) => Some(file_id(&i.path).with_context(|| format!("reading {}", i.path.display()))?),
        None => None,
    };
    let out = args.out.clone();
    execution.links = weir_engine::execution::Links {
        self_: out.display().to_string(),
        report: out.join("report.xlsx").display().to_string(),
        rejected: out.join("rejected.csv").display().to_string(),
        output: out.join("output").display().to_string(),
    };
    let progress = Progress::new(execution.clone());
    let cancel = CancellationToken::new();
    let request = RunRequest {
        connector: package.connector.clone(),
        script: package.script.clone(),
        input,
        execution,
        out_dir: out.clone(),
        settings: RunSettings {
            threads,
            output_row_cap: args.output_rows,
            load_batch_size: usize::try_from(args.batch_size).unwrap_or(usize::MAX),
            ..RunSettings::default()
        },
        cancel: cancel.clone(),
        records: match records(&package, &args) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
        },
        plugins: match plugins(&package) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
        },
        log: Arc::new(StderrLog),
        secrets,
    };
    let show = !args.json && std::io::stderr().is_terminal();
    let display = show.then(|| spawn_display(&progress));
    {
        // Ctrl-C cancels the run; the run then ends `canceled` with its report.
        let cancel = cancel.clone();
        if let Err(e) = ctrlc::set_handler(move || cancel.cancel()) {
            tracing::warn!(error = %e, "Ctrl-C will not cancel the run");
        }
    }
    let started = std::time::Instant::now();
    let doc = pipeline::run(request, &progress).await;
    if let Some((bar, task)) = display {
        task.abort();
        bar.finish_and_clear();
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("serialising the execution")?
        );
    } else {
        print_summary(&doc, started.elapsed());
    }
    Ok(match doc.status {
        Status::Success | Status::PartialSuccess => ExitCode::SUCCESS,
        Status::Canceled => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

/// The plugin runtime and the package's `plugins/` directory, when the
/// connector has transform steps.
fn plugins(package: &Package) -> weir_engine::Result<Option<Plugins>> {
    if package.connector.transforms.is_empty() {
        return Ok(None);
    }
    let runtime = PluginRuntime::new(PluginSettings {
        cache_dir: crate::plugin::cache_dir(),
        ..PluginSettings::default()
    })?;
    Ok(Some(Plugins {
        runtime: Arc::new(runtime),
        source: Arc::new(PluginDir::new(package.dir.join("plugins"))),
    }))
}

/// The secrets the connector's sources need, from `WEIR_SECRET_<NAME>`
/// variables or else the `--secrets` file; names every one missing.
fn local_secrets(connector: &Connector, file: Option<&Path>) -> anyhow::Result<SecretValues> {
    let needed = weir_engine::sources::secrets_needed(&connector.sources);
    let from_file: BTreeMap<String, String> = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            // The file's text is never repeated: it holds secret values.
            toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a secrets file (one `name = \"value\"` per line){}",
                    path.display(),
                    e.span().map(|s| format!(" near byte {}", s.start)).unwrap_or_default()
                )
            })?
        }
        None => BTreeMap::new(),
    };
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for name in needed {
        let variable = weir_engine::sources::secret_variable(&name);
        match std::env::var(&variable).ok().or_else(|| from_file.get(&name).cloned()) {
            Some(value) => {
                values.insert(name, value);
            }
            None => missing.push(format!(
                "`{name}` (set {variable}, or {name} = \"…\" in a --secrets file)"
            )),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "the connector's sources need secrets that are not given: {}",
            missing.join(", ")
        );
    }
    Ok(SecretValues::new(values))
}

/// Execution log lines of a local run go to stderr.
struct StderrLog;

impl RunLog for StderrLog {
    fn line(&self, level: LogLevel, message: &str) {
        eprintln!("{}: {message}", level.as_str());
    }
}

/// The local record store, when the package has objects (`objects.toml`):
/// a SQLite file (`--db`, default under `--out`) holding them, so that a
/// script reads `records.<object>` as a server run does, with or without
/// load steps. The package's records snapshot (`records/`, see
/// [`weir_engine::snapshot`]) is imported into it while it holds none of an
/// object's records, in a dry run too (which writes no records of its own).
fn records(package: &Package, args: &RunArgs) -> weir_engine::Result<Option<Records>> {
    let Some(objects) = package.objects.clone() else {
        return Ok(None);
    };
    let db = args.db.clone().unwrap_or_else(|| args.out.join("records.db"));
    let store = SqliteStore::open(&db)?;
    for (object, done) in snapshot::import(&package.dir, &store, LOCAL_WORKSPACE, &objects)? {
        match done {
            snapshot::Imported::Records(n) => {
                eprintln!("records: {n} `{object}` records from the package's snapshot");
            }
            snapshot::Imported::StoreNotEmpty => {
                eprintln!(
                    "records: the store already holds `{object}` records; the package's snapshot is not imported"
                );
            }
        }
    }
    let store: Arc<dyn RecordStore> = Arc::new(store);
    Ok(Some(Records {
        store,
        workspace: LOCAL_WORKSPACE.into(),
        objects,
    }))
}

/// The workspace of records written by local runs.
const LOCAL_WORKSPACE: &str = "local";

/// The id of a local run's input file: a UUID derived from its full path,
/// size and modification time, so the same unchanged file keeps its id from
/// run to run and an edited one gets a new one, without reading the file
/// first (hashing a gigabyte would delay every run by a second).
fn file_id(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    let meta = std::fs::metadata(path)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let full = std::fs::canonicalize(path)?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(full.as_os_str().as_encoded_bytes());
    hasher.update(meta.len().to_le_bytes());
    hasher.update(modified.to_le_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Ok(uuid::Uuid::new_v8(bytes).to_string())
}

fn spawn_display(progress: &Progress) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut rx = progress.subscribe();
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let line = progress_line(&rx.borrow_and_update());
            b.set_message(line);
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    (bar, task)
}

/// The one line a progress display shows of a run as it is now.
pub(crate) fn progress_line(doc: &Execution) -> String {
    // Intake stays running while the SQL stage streams from it; show the
    // latest stage that is running.
    let running = doc
        .step_progress
        .iter()
        .rev()
        .find(|p| p.status() == StageStatus::Running)
        .map(|p| p.stage().as_str())
        .unwrap_or(doc.status.as_str());
    let read: u64 = match doc.stage(Stage::Intake) {
        Some(StepProgress::Intake { tables, .. }) => tables.iter().map(|t| t.rows).sum(),
        _ => 0,
    };
    let out: u64 = match doc.stage(Stage::Sql) {
        Some(StepProgress::Sql { scopes, .. }) => scopes.iter().map(|s| s.rows).sum(),
        _ => 0,
    };
    format!("{running}: {read} rows read, {out} rows out")
}

pub(crate) fn print_summary(doc: &Execution, elapsed: Duration) {
    println!(
        "{}  {}  in {:.2}s{}",
        doc.connector.api_name,
        doc.status.as_str(),
        elapsed.as_secs_f64(),
        if doc.is_dry_run { "  (dry run)" } else { "" }
    );
    for p in &doc.step_progress {
        let stage = p.stage().as_str();
        let status = match p.status() {
            StageStatus::Completed => String::new(),
            other => format!(
                " [{}]",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        };
        let lines: Vec<String> = match p {
            StepProgress::Intake { tables, .. } => tables
                .iter()
                .map(|t| format!("input.{}: {} rows, {} invalid", t.table, t.rows, t.invalid))
                .collect(),
            StepProgress::Sql { scopes, .. } => scopes
                .iter()
                .map(|s| format!("output.{}: {} rows", s.scope, s.rows))
                .collect(),
            StepProgress::Transform { steps, .. } => steps
                .iter()
                .map(|s| {
                    format!(
                        "{} {}: {} in, {} out, {} rejected",
                        s.scope, s.plugin, s.rows_in, s.rows_out, s.rejected
                    )
                })
                .collect(),
            StepProgress::Variables { scopes, .. } => scopes
                .iter()
                .map(|s| {
                    format!(
                        "{}: {} rows, {} valid, {} invalid",
                        s.scope, s.total, s.valid, s.invalid
                    )
                })
                .collect(),
            StepProgress::Load { steps, .. } => steps
                .iter()
                .map(|s| {
                    format!(
                        "{}. {} → {}: {} created, {} updated, {} skipped, {} failed",
                        s.order, s.scope, s.object, s.created, s.updated, s.skipped, s.failed
                    )
                })
                .collect(),
        };
        if lines.is_empty() {
            println!("  {stage:<10}{}", status.trim_start());
        }
        for (i, l) in lines.iter().enumerate() {
            let label = if i == 0 { stage } else { "" };
            println!("  {label:<10}{l}{}", if i == 0 { status.as_str() } else { "" });
        }
    }
    println!(
        "  outputs   {}, {}, {}",
        doc.links.output, doc.links.report, doc.links.rejected
    );
    if let Some(e) = &doc.error {
        let at = match (e.line, e.column) {
            (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
            _ => String::new(),
        };
        println!(
            "error: {} failed [{}]{at}: {}",
            e.stage.as_str(),
            e.code.as_str(),
            e.message
        );
    }
}
