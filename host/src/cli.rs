//! Command-line interface: the command tree and dispatch. Commands are thin;
//! each one calls into a module that owns its behaviour and its arguments.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::local::RunArgs;
use crate::serve::{KeysCommand, ServeArgs};

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
    /// Start a run on a server; with --wait, follow it to its end.
    Trigger(crate::remote::TriggerArgs),
    /// Read, follow and cancel executions on a server.
    #[command(subcommand)]
    Executions(crate::remote::ExecutionsCommand),
    /// List, read and apply connectors on a server.
    #[command(subcommand)]
    Connectors(crate::remote::ConnectorsCommand),
    /// Print the version.
    Version,
}

/// `weir plugin` commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check a component against the weir:transform world and run it on a file.
    Check(crate::plugin::CheckArgs),
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
        Command::Trigger(args) => report(crate::remote::trigger(args)),
        Command::Executions(command) => report(crate::remote::executions(command)),
        Command::Connectors(command) => report(crate::remote::connectors(command)),
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
