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
    /// Serve the HTTP API (with no flags: ./weir-data, 127.0.0.1:8080).
    Serve(ServeArgs),
    /// Run one job handed over by `weir serve` on standard input (internal).
    #[command(hide = true)]
    Worker,
    /// Manage API keys in a data directory (works while the server runs).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Work with Wasm transform plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Move dev packages between a server and this machine.
    #[command(subcommand)]
    Package(crate::package::PackageCommand),
    /// Print the version.
    Version,
}

/// `weir plugin` commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check a component against the weir:transform world and run it on a file.
    Check(crate::plugin::CheckArgs),
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

/// Arguments of `weir serve`. Flags win over `WEIR_*` variables, which win
/// over the config file, which wins over the defaults.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The data directory (state, records, files, artifacts).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// A TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `weir keys` commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key (and the workspace, when new); prints the secret once.
    Create {
        /// The data directory.
        #[arg(long, default_value = "weir-data")]
        data_dir: PathBuf,
        /// Workspace name.
        #[arg(long)]
        workspace: String,
        /// admin, operator, viewer or webhook.
        #[arg(long)]
        role: String,
        /// Display name.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Limit the key to these connectors (ids or api_names), comma-separated.
        #[arg(long, value_delimiter = ',')]
        connectors: Option<Vec<String>>,
    },
    /// List a workspace's keys (never their secrets).
    List {
        /// The data directory.
        #[arg(long, default_value = "weir-data")]
        data_dir: PathBuf,
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
    },
    /// Revoke a key.
    Revoke {
        /// The data directory.
        #[arg(long, default_value = "weir-data")]
        data_dir: PathBuf,
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
        /// The key's id.
        id: String,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs requests and executions; a local run only problems.
    let default_filter = match cli.command {
        Command::Serve(_) => "info,tower_http=info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object a line for log collectors; otherwise text, coloured
    // only on a terminal (a file or a pipe gets no escape codes).
    if std::env::var("WEIR_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match cli.command {
        Command::Version => {
            println!("weir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => report(crate::local::run(args)),
        Command::Serve(args) => report(crate::serve::run(args)),
        Command::Keys(command) => report(crate::serve::keys(command)),
        Command::Worker => report(crate::worker::run()),
        Command::Plugin(PluginCommand::Check(args)) => report(crate::plugin::check(args)),
        Command::Package(command) => report(crate::package::run(command)),
    }
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
