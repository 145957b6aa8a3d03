//! `weir serve` and `weir keys`: the command-line side of the server —
//! configuration layering with flags on top, the runtime, signals, and the
//! bootstrap key printed once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::server::auth::Role;
use crate::server::config::ServerConfig;
use crate::server::keys::Keys;
use crate::server::state::{Db, PgState};

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
    /// The state database: postgres://… (WEIR_DATABASE); the data
    /// directory's SQLite database when not given.
    #[arg(long)]
    pub database: Option<String>,
    /// Where files, plugins and artifacts are kept: s3://bucket/prefix
    /// (configured by the AWS_* variables) or file:///dir; the data
    /// directory when not given.
    #[arg(long)]
    pub object_store: Option<String>,
}

/// The state store `weir keys` works on: the server's.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The data directory.
    #[arg(long, default_value = "weir-data")]
    pub data_dir: PathBuf,
    /// The server's PostgreSQL database (postgres://…), when it keeps its
    /// state there rather than in the data directory.
    #[arg(long, env = "WEIR_DATABASE")]
    pub database: Option<String>,
}

/// `weir keys` commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key (and the workspace, when new); prints the secret once.
    Create {
        /// Where the state is kept.
        #[command(flatten)]
        store: StoreArgs,
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
        /// Where the state is kept.
        #[command(flatten)]
        store: StoreArgs,
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
    },
    /// Revoke a key.
    Revoke {
        /// Where the state is kept.
        #[command(flatten)]
        store: StoreArgs,
        /// Workspace name or id.
        #[arg(long)]
        workspace: String,
        /// The key's id.
        id: String,
    },
}

/// Runs `weir serve` until SIGINT or SIGTERM, then shuts down gracefully.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = args.database {
        config.database = Some(url);
    }
    if let Some(url) = args.object_store {
        config.object_store = Some(url);
    }
    let from_env = config.bootstrap_key.is_some();
    let settings = config.settings()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = crate::server::start(settings).await?;
        let addr = server.local_addr().context("reading the listening address")?;
        match (&server.bootstrap_key, from_env) {
            (Some(_), true) => println!("created the first workspace; its admin key is the configured bootstrap key"),
            (Some(key), false) => println!("created the first workspace; admin key (shown once): {key}"),
            (None, _) => {}
        }
        println!("weir listening on http://{addr}");
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        server.run(shutdown).await.context("serving")?;
        println!("weir stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn signals(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIGTERM will not stop the server gracefully");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: no new requests; running executions get the grace period");
    shutdown.cancel();
}

/// The keys service over the server's state store.
fn open(store: &StoreArgs) -> anyhow::Result<Keys> {
    if let Some(url) = &store.database {
        return Ok(Keys::new(Arc::new(PgState::connect(url, 2)?)));
    }
    let data_dir = &store.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    Ok(Keys::new(Arc::new(Db::open(&data_dir.join("state.db"))?)))
}

/// Runs a `weir keys` command.
pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create {
            store,
            workspace,
            role,
            name,
            connectors,
        } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let key = open(&store)?.create_in(&workspace, &name, role, connectors, None)?;
            println!("id: {}", key.row.id);
            println!("workspace: {workspace}");
            println!("role: {}", role.as_str());
            println!("secret (shown once): {}", key.secret);
        }
        KeysCommand::List { store, workspace } => {
            let keys = open(&store)?;
            let ws = keys
                .workspace(&workspace)?
                .with_context(|| format!("there is no workspace `{workspace}`"))?;
            for k in keys.list(&ws.id)? {
                let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                let limited = k.connectors.map(|c| c.join(",")).unwrap_or_else(|| "*".into());
                println!("{}\t{}\t{}\t{}\t{}", k.id, k.role, state, limited, k.name);
            }
        }
        KeysCommand::Revoke { store, workspace, id } => {
            let keys = open(&store)?;
            let ws = keys
                .workspace(&workspace)?
                .with_context(|| format!("there is no workspace `{workspace}`"))?;
            if !keys.revoke(&ws.id, &id)? {
                anyhow::bail!("workspace `{workspace}` has no key `{id}`");
            }
            println!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
