//! `weir serve`: the HTTP API over the engine (SPEC §6, §8).
//!
//! [`start`] opens the data directory (state store, record store, blob
//! store), resolves what a previous process left running, bootstraps the
//! first workspace and admin key, and starts the dispatcher; [`Server::run`]
//! serves until a shutdown signal and then drains running executions.
//!
//! # Layout
//!
//! - [`config`]: layered configuration (defaults → file → `WEIR_*` env).
//! - [`state`]: the state store: its traits per aggregate, and SQLite.
//! - [`auth`]: API keys, roles and the [`auth::Caller`] of a request.
//! - [`connectors`]: the connectors service: connectors, drafts,
//!   publishing and SQL versions.
//! - [`keys`]: the keys service: making, listing and revoking keys.
//! - [`blobs`]: files, plugins and artifacts in an object store.
//! - [`files`]: the files service: workspaces' files, and when content
//!   may leave the blob store.
//! - [`executions`]: the executions service: a trigger made into a
//!   queued execution, and executions read, canceled, deleted and their
//!   artifacts handed out.
//! - [`queue`]: queue, workers, cancel, shutdown drain.
//! - [`runner`]: what a job needs to run (input, plugins, records,
//!   secrets) and running it held to its limits.
//! - [`refusal`]: what a service answers when it refuses, free of HTTP.
//! - [`leases`]: worker ids, leases and heartbeats, cancels between
//!   processes, and resolving runs whose process was lost.
//! - [`triggers`]: the execution a trigger makes (API, webhook batch or
//!   schedule tick): its script, and whether the connector may run now.
//! - [`webhooks`]: webhook batches and Standard Webhooks signatures.
//! - [`schedules`]: cron ticks of schedule connectors.
//! - [`secrets`]: sealing workspace secrets, and opening one for the code
//!   that uses it.
//! - [`retention`]: what is deleted once past its workspace's retention.
//! - [`api`]: the routes, problem+json errors and the OpenAPI document.
//! - [`console`]: the web console's pages under `/`, on the API's handlers.
//! - [`metrics`]: Prometheus counters.
//! - [`notifications`]: ended executions announced to their connectors'
//!   `[[notifications]]`, retried until delivered.
//! - [`previews`]: the previews service: a dry run within the call.
//! - [`packages`]: the packages service: dev packages made and pushed.
//! - [`plugins`]: the plugins service: checking and publishing components.
//! - [`objects`]: the objects service: objects, reach, and their records.

pub mod api;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod connectors;
pub mod console;
pub mod error;
pub mod executions;
pub mod files;
pub mod keys;
pub mod leases;
pub mod listen;
pub mod metrics;
pub mod notifications;
pub mod objects;
pub mod packages;
pub mod plugins;
pub mod previews;
pub mod queue;
pub mod refusal;
pub mod retention;
pub mod runner;
pub mod schedules;
pub mod secrets;
pub mod state;
pub mod triggers;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_engine::plugin::{PluginRuntime, PluginSettings};
use weir_engine::store::{PgStore, RecordStore, SqliteStore};

use self::blobs::Blobs;
use self::config::Settings;
use self::state::{Db, PgState, StateStore};

/// Everything the handlers and workers share.
pub struct App {
    /// The state database.
    pub db: Arc<dyn StateStore>,
    /// Files, plugins and artifacts.
    pub blobs: Blobs,
    /// The files of workspaces and the content they hold.
    pub files: files::Files,
    /// API keys.
    pub keys: keys::Keys,
    /// Records of every workspace.
    pub records: Arc<dyn RecordStore>,
    /// Configuration.
    pub settings: Arc<Settings>,
    /// Running executions and the dispatcher's wake-up.
    pub runs: Arc<queue::Runs>,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// What running a job needs.
    pub runner: runner::Runner,
    /// Executions: triggers, status, cancel, artifacts.
    pub executions: executions::Executions,
    /// Connectors and their SQL.
    pub connectors: connectors::Connectors,
    /// Previews of connectors.
    pub previews: previews::Previews,
    /// Dev packages: made and pushed.
    pub packages: packages::Packages,
    /// Workspace secrets.
    pub secrets: secrets::Secrets,
    /// The Wasm plugin runtime every run shares.
    pub plugin_runtime: Arc<PluginRuntime>,
    /// Published plugins.
    pub plugins: plugins::Plugins,
    /// Objects and their records.
    pub objects: objects::ObjectService,
    /// Webhook payloads and their batches.
    pub batches: webhooks::Batches,
    /// The scheduler's clock.
    pub schedules: Arc<schedules::Schedules>,
    /// This process among those sharing the state store.
    pub worker: leases::Worker,
    /// What delivers notifications of ended executions.
    pub notifier: notifications::Notifier,
}

/// A started server: listening, with its dispatcher running.
pub struct Server {
    /// The shared state.
    pub app: Arc<App>,
    listener: TcpListener,
    /// The bootstrap admin key, when this start created it.
    pub bootstrap_key: Option<String>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used.
    #[error("data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The record store failed.
    #[error("record store: {0}")]
    Records(#[from] weir_engine::Error),
    /// The plugin runtime could not start.
    #[error("plugin runtime: {0}")]
    Plugins(String),
    /// The worker id is taken or its lock cannot be had.
    #[error(transparent)]
    Worker(#[from] leases::WorkerError),
    /// Bootstrap failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// Secrets are stored and the secrets key is missing or does not open
    /// them.
    #[error("secrets: {0}")]
    Secrets(String),
    /// The notifications' HTTP client cannot be made.
    #[error("notifications: {0}")]
    Notifications(String),
    /// The address cannot be listened on.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Refuses to start when secrets are stored and the key to open them is
/// missing or another one: every connector using one would fail later, one
/// by one, with a less clear error.
fn check_secrets_key(db: &dyn StateStore, key: Option<&secrets::SecretsKey>) -> Result<(), StartError> {
    let Some((workspace_id, secret)) = db.any_secret().map_err(|e| StartError::Secrets(e.to_string()))? else {
        return Ok(());
    };
    match key {
        None => Err(StartError::Secrets(format!(
            "workspace secrets are stored; set {} to the key they were sealed with",
            secrets::KEY_VARIABLE
        ))),
        Some(key) => key
            .open(&workspace_id, &secret.name, &secret.sealed)
            .map(|_| ())
            .map_err(StartError::Secrets),
    }
}

/// Opens the data directory, recovers, bootstraps, binds the listener and
/// starts the dispatcher, the webhook batcher, the scheduler and the
/// retention sweeper.
pub async fn start(settings: Settings) -> Result<Server, StartError> {
    start_with_clock(settings, Arc::new(schedules::SystemClock)).await
}

/// [`start`], with schedules on `clock`.
pub async fn start_with_clock(settings: Settings, clock: Arc<dyn schedules::Clock>) -> Result<Server, StartError> {
    let dir = settings.config.data_dir.clone();
    let data_dir_error = |source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(data_dir_error)?;
    // Everything the server keeps is written here: a directory it cannot
    // write to is said plainly before any database refuses to open.
    tempfile::tempfile_in(&dir).map_err(data_dir_error)?;
    // The address first: a start that cannot listen changes nothing (it
    // neither creates the first admin key, which only a start that serves
    // shows, nor resolves runs of a server that may still be serving).
    let addr = settings.config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let worker = leases::Worker::register(&dir, &settings.worker_id)?;
    let db: Arc<dyn StateStore> = match &settings.config.database {
        Some(url) => Arc::new(PgState::connect(url, settings.config.database_pool)?),
        None => Arc::new(Db::open(&dir.join("state.db"))?),
    };
    let blobs = match &settings.blob_store {
        Some(store) => Blobs::remote(store.clone(), &dir, settings.upload_pace),
        None => Blobs::local(&dir, settings.upload_pace),
    }
    .map_err(data_dir_error)?;
    // What a stopped process left in scratch space: nothing written there
    // for a day, nor for twice the longest a run may take.
    let untouched = settings
        .limit_caps
        .max_runtime
        .saturating_mul(2)
        .max(Duration::from_secs(24 * 3600));
    match blobs.sweep_scratch(untouched) {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "removed what stopped processes left in scratch space"),
        Err(e) => tracing::warn!(error = %e, "sweeping scratch space failed"),
    }
    let records: Arc<dyn RecordStore> = match &settings.config.database {
        Some(url) => Arc::new(PgStore::connect(url, settings.config.database_pool)?),
        None => Arc::new(SqliteStore::open(&dir.join("records.db"))?),
    };
    check_secrets_key(db.as_ref(), settings.secrets_key.as_ref())?;
    let keys = keys::Keys::new(db.clone());
    let bootstrap_key = bootstrap(&keys, db.as_ref(), &settings)?;
    let plugin_runtime = Arc::new(
        PluginRuntime::new(PluginSettings {
            cache_dir: Some(dir.join("plugin-cache")),
            memory_limit: settings.plugin_memory,
            ..PluginSettings::default()
        })
        .map_err(|e| StartError::Plugins(e.to_string()))?,
    );
    let files = files::Files::new(db.clone(), blobs.clone());
    let settings = Arc::new(settings);
    let runs = Arc::new(queue::Runs::default());
    let metrics = Arc::new(metrics::Metrics::new());
    let runner = runner::Runner::new(
        db.clone(),
        blobs.clone(),
        records.clone(),
        plugin_runtime.clone(),
        settings.clone(),
    );
    let executions = executions::Executions::new(
        db.clone(),
        blobs.clone(),
        files.clone(),
        runs.clone(),
        metrics.clone(),
        settings.clone(),
    );
    let objects = objects::ObjectService::new(db.clone(), records.clone());
    let schedules = Arc::new(schedules::Schedules::new(clock));
    let connectors = connectors::Connectors::new(
        db.clone(),
        blobs.clone(),
        files.clone(),
        objects.clone(),
        executions.clone(),
        runs.clone(),
        schedules.clone(),
        settings.clone(),
    );
    let previews = previews::Previews::new(
        db.clone(),
        blobs.clone(),
        executions.clone(),
        runner.clone(),
        settings.clone(),
    );
    let plugins = plugins::Plugins::new(db.clone(), files.clone(), blobs.clone(), plugin_runtime.clone());
    let packages = packages::Packages::new(
        db.clone(),
        blobs.clone(),
        records.clone(),
        files.clone(),
        plugins.clone(),
        connectors.clone(),
        settings.clone(),
    );
    let batches = webhooks::Batches::new(db.clone(), files.clone(), executions.clone(), settings.clone());
    let secrets = secrets::Secrets::new(db.clone(), settings.secrets_key.clone());
    let notifier =
        notifications::Notifier::new(settings.notification_policy.clone()).map_err(StartError::Notifications)?;
    let app = Arc::new(App {
        notifier,
        secrets,
        packages,
        previews,
        runner,
        executions,
        connectors,
        plugins,
        plugin_runtime,
        objects,
        files,
        keys,
        db,
        blobs,
        records,
        runs,
        metrics,
        settings,
        batches,
        schedules,
        worker,
    });
    // What a process that is gone left running is resolved before this one
    // claims anything; the runs of live processes go on.
    let recovered = leases::sweep(&app)?;
    if recovered > 0 {
        tracing::warn!(
            executions = recovered,
            "resolved executions a process that is gone left running"
        );
    }
    tracing::info!(worker = app.worker.id(), "worker registered");
    tokio::spawn(leases::keeper(app.clone()));
    tokio::spawn(queue::dispatch(app.clone()));
    tokio::spawn(webhooks::batcher(app.clone()));
    tokio::spawn(schedules::scheduler(app.clone()));
    tokio::spawn(retention::sweeper(app.clone()));
    tokio::spawn(notifications::deliverer(app.clone()));
    Ok(Server {
        app,
        listener,
        bootstrap_key,
    })
}

impl App {
    /// `text` without the data directory's place on this machine
    /// ([`runner::Runner::hide_paths`]).
    pub fn hide_paths(&self, text: &str) -> String {
        self.runner.hide_paths(text)
    }
}

/// Creates the first workspace and admin key when the state is empty.
fn bootstrap(keys: &keys::Keys, db: &dyn StateStore, settings: &Settings) -> Result<Option<String>, StartError> {
    if !db.is_empty()? {
        return Ok(None);
    }
    let key = keys
        .create_in(
            &settings.config.bootstrap_workspace,
            "bootstrap admin",
            auth::Role::Admin,
            None,
            settings.config.bootstrap_key.clone(),
        )
        .map_err(|e| StartError::Bootstrap(e.to_string()))?;
    Ok(Some(key.secret))
}

impl Server {
    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then stops accepting, lets running
    /// executions finish within the grace period, and cancels the rest.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = api::router(self.app.clone());
        let limits = listen::Limits {
            header_read_timeout: self.app.settings.header_read_timeout,
            max_connections: self.app.settings.config.max_connections,
        };
        listen::serve(self.listener, router, limits, shutdown).await;
        queue::drain(&self.app, self.app.settings.shutdown_grace).await;
        Ok(())
    }
}
