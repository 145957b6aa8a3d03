//! `weir plugin check`: validates a component against the `weir:transform`
//! world and, given an input file, runs it the way a transform step would,
//! showing the output rows, the refused rows, the plugin's log lines and
//! what each phase cost.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weir_engine::connector::{InputOptions, LimitsDef};
use weir_engine::intake::{self, IntakeOptions, RejectSink};
use weir_engine::plugin::{PluginRuntime, PluginSettings, StepInfo};
use weir_engine::report::RejectedRow;
use weir_engine::runlog::{Collect, RunLog};
use weir_engine::sql::{self, SessionSettings};

/// Arguments of `weir plugin check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    pub wasm: PathBuf,
    /// An input file (CSV, JSON, Parquet, XLSX, …) to run the plugin on.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The step's config, as JSON.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Output rows to show.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Rows per batch given to the plugin.
    #[arg(long, default_value_t = 8192)]
    pub batch_size: usize,
    /// Print a JSON summary instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// What a check found.
#[derive(Debug, Default, Serialize)]
struct Summary {
    sha256: String,
    compile_ms: f64,
    instantiate_ms: f64,
    init_ms: Option<f64>,
    process_ms: Option<f64>,
    rows_in: u64,
    rows_out: u64,
    rejected: Vec<Refused>,
    logs: Vec<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Refused {
    row: u64,
    message: String,
}

/// Input rows the intake could not read are shown, not hidden.
struct Unread;

impl RejectSink for Unread {
    fn reject(&self, row: RejectedRow) {
        eprintln!("input row {} not read: {}", row.row, row.reasons.join("; "));
    }
}

/// Runs `weir plugin check`. Exit code 0 when the component is valid and
/// (with an input) ran without failing.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(check_async(args))
}

async fn check_async(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config: serde_json::Value = serde_json::from_str(&args.config).context("--config is not valid JSON")?;
    let wasm = std::fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    let label = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "plugin".into());
    let batches = match &args.input {
        Some(path) => Some(read_input(path, args.batch_size).await?),
        None => None,
    };
    let lines = Arc::new(Collect::default());
    let log: Arc<dyn RunLog> = lines.clone();
    let (mut summary, output) = tokio::task::spawn_blocking(move || exercise(&wasm, &label, &config, batches, log))
        .await
        .context("the check failed")?;
    summary.logs = lines.take();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print(&summary, &output, args.rows)?;
    }
    Ok(if summary.error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads a file with the same intake a run uses, as batches.
async fn read_input(path: &Path, batch_size: usize) -> anyhow::Result<Vec<RecordBatch>> {
    let limits = LimitsDef::default()
        .parse()
        .map_err(|p| anyhow::anyhow!("default limits: {p:?}"))?;
    let mut options = IntakeOptions::new(&InputOptions::default(), &limits)?;
    options.batch_size = batch_size;
    let ctx = sql::session(&SessionSettings {
        threads: 1,
        max_memory: limits.max_memory,
        batch_size,
        spill_dir: None,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let path = std::fs::canonicalize(path).with_context(|| format!("opening {}", path.display()))?;
    let opened = intake::open(&ctx, &path, &name, &options, Arc::new(Unread), CancellationToken::new()).await?;
    let table = opened
        .tables
        .first()
        .ok_or_else(|| anyhow::anyhow!("{} has no table", path.display()))?;
    sql::register_inputs(&ctx, &[(table.name.as_str(), table.provider.clone())])?;
    let frame = ctx
        .table(datafusion::common::TableReference::partial(
            "input",
            table.name.as_str(),
        ))
        .await?;
    let mut stream = frame.execute_stream().await?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch?);
    }
    Ok(batches)
}

/// Compiles, instantiates and (with input) runs the plugin; never panics on
/// what the plugin does.
fn exercise(
    wasm: &[u8],
    label: &str,
    config: &serde_json::Value,
    batches: Option<Vec<RecordBatch>>,
    log: Arc<dyn RunLog>,
) -> (Summary, Vec<RecordBatch>) {
    let mut summary = Summary::default();
    let mut output = Vec::new();
    let result = (|| -> weir_engine::Result<()> {
        let runtime = PluginRuntime::new(PluginSettings {
            cache_dir: crate::plugin::cache_dir(),
            ..PluginSettings::default()
        })?;
        let started = Instant::now();
        let plugin = runtime.load(label, wasm)?;
        summary.sha256 = plugin.sha256().to_string();
        summary.compile_ms = ms(started);
        let started = Instant::now();
        let mut instance = runtime.instantiate(
            &plugin,
            StepInfo {
                name: "check".into(),
                plugin: label.to_string(),
                log,
                cancel: CancellationToken::new(),
                deadline: None,
            },
        )?;
        summary.instantiate_ms = ms(started);
        let Some(batches) = batches else {
            return Ok(());
        };
        let Some(schema) = batches.first().map(RecordBatch::schema) else {
            return Ok(());
        };
        let started = Instant::now();
        instance.init(config, &schema)?;
        summary.init_ms = Some(ms(started));
        let started = Instant::now();
        for batch in &batches {
            let processed = instance.process(batch)?;
            summary
                .rejected
                .extend(processed.rejected.into_iter().map(|(row, message)| Refused {
                    row: summary.rows_in + row as u64 + 1,
                    message,
                }));
            summary.rows_in += batch.num_rows() as u64;
            summary.rows_out += processed.batch.num_rows() as u64;
            output.push(processed.batch);
        }
        if let Some(last) = instance.finish()? {
            summary.rows_out += last.batch.num_rows() as u64;
            output.push(last.batch);
        }
        summary.process_ms = Some(ms(started));
        Ok(())
    })();
    if let Err(e) = result {
        summary.error = Some(format!("{} ({})", e, e.code().as_str()));
    }
    (summary, output)
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn print(summary: &Summary, output: &[RecordBatch], rows: usize) -> anyhow::Result<()> {
    println!("component  sha256:{}", summary.sha256);
    println!(
        "timings    compile {:.1} ms, instantiate {:.1} ms{}{}",
        summary.compile_ms,
        summary.instantiate_ms,
        summary.init_ms.map(|t| format!(", init {t:.1} ms")).unwrap_or_default(),
        summary
            .process_ms
            .map(|t| format!(", process {t:.1} ms"))
            .unwrap_or_default(),
    );
    if summary.init_ms.is_some() {
        println!(
            "rows       {} in, {} out, {} refused",
            summary.rows_in,
            summary.rows_out,
            summary.rejected.len()
        );
        let mut shown = Vec::new();
        let mut left = rows;
        for batch in output {
            if left == 0 {
                break;
            }
            let take = left.min(batch.num_rows());
            shown.push(batch.slice(0, take));
            left -= take;
        }
        if !shown.is_empty() {
            println!("{}", pretty_format_batches(&shown)?);
        }
        for r in summary.rejected.iter().take(rows) {
            println!("refused row {}: {}", r.row, r.message);
        }
    }
    for line in &summary.logs {
        println!("log        {line}");
    }
    match &summary.error {
        Some(e) => println!("error      {e}"),
        None => println!("ok         implements weir:transform@0.1.0"),
    }
    Ok(())
}

/// Where compiled plugins are cached on this machine: `$XDG_CACHE_HOME/weir`
/// or `~/.cache/weir`; `None` when neither is known.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("weir").join("plugins"))
}
