//! Command-line interface: argument parsing and dispatch. Commands are thin;
//! each one calls into a module that owns its behaviour.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weir: run SmartConnectors — batch data-integration flows of input files,
/// SQL, typed variables and loads.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about = None)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands of `weir`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a connector directory or dev package on this machine.
    Run(RunArgs),
    /// Print the version.
    Version,
}

/// Arguments of `weir run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A dev package (.zip) or a directory with connector.toml, script.sql and data/.
    pub package: PathBuf,
    /// The input file (default: the one file under data/).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where outputs go: output/<scope>.csv, report.xlsx, rejected.csv.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Do everything except writing records.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the execution document as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Threads for the SQL engine (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most rows written per scope output CSV.
    #[arg(long)]
    pub output_rows: Option<u64>,
    /// The local record store load steps write to (default: OUT/records.db).
    /// Running again against the same file updates the records it holds.
    #[arg(long)]
    pub db: Option<PathBuf>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Version => {
            println!("weir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => match crate::local::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
