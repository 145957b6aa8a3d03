//! Server configuration, layered: built-in defaults, then a TOML file
//! (`--config`), then `WEIR_*` environment variables, then command-line
//! flags. Unknown keys in the file are an error, never ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use weir_engine::connector::LimitCaps;

use super::blobs::Pace;

/// Everything `weir serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The data directory: state and records databases, files, artifacts.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Executions that run at once on this process.
    pub workers: usize,
    /// Threads the SQL engine of one execution uses.
    pub threads_per_run: usize,
    /// Largest accepted upload, e.g. `"1GiB"`.
    pub max_upload: String,
    /// Largest JSON request body, e.g. `"2MiB"`.
    pub max_json_body: String,
    /// A request taking longer is answered 408, e.g. `"60s"`. Requests
    /// that send a file (uploads, triggers with a file, package pushes,
    /// plugin publishes) are held to `upload_min_rate` instead, however
    /// long they take.
    pub request_timeout: String,
    /// The least a request sending a file must send per second, e.g.
    /// `"16KiB"`, measured over each `upload_rate_window`; a slower one is
    /// answered 408 `upload_too_slow`.
    pub upload_min_rate: String,
    /// The window `upload_min_rate` is measured over, e.g. `"30s"`.
    pub upload_rate_window: String,
    /// How long a workspace keeps ended executions (their artifacts, logs,
    /// webhook payloads) and files no connector or kept execution uses,
    /// e.g. `"30days"` (docs/retention.md).
    pub retention: String,
    /// `retention` of some workspaces: workspace name → duration.
    pub workspace_retention: BTreeMap<String, String>,
    /// How often what is past its retention is deleted, e.g. `"1h"`.
    pub retention_sweep: String,
    /// How long running executions may go on after a shutdown signal before
    /// they are canceled, e.g. `"30s"`.
    pub shutdown_grace: String,
    /// The first admin key, used when the data directory is new (else a
    /// random key is generated and printed once).
    pub bootstrap_key: Option<String>,
    /// Name of the workspace created at bootstrap.
    pub bootstrap_workspace: String,
    /// How long an `Idempotency-Key` is remembered, e.g. `"24h"`.
    pub idempotency_retention: String,
    /// The longest a preview runs, e.g. `"30s"`.
    pub preview_timeout: String,
    /// The most rows a load step commits at a time; a canceled or failed
    /// run keeps every commit before it.
    pub load_batch_size: usize,
    /// Where runs, previews and dry runs execute: `process` (each in a
    /// supervised worker process, the default) or `none` (inside the
    /// server, for a server that trusts every connector it runs).
    pub isolation: Isolation,
    /// A connection that has not sent a request's headers this long after
    /// it opened (or after its last answer) is closed, e.g. `"10s"`.
    pub header_read_timeout: String,
    /// The most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The environment variables each workspace's `webhook.secret_env` may
    /// name: workspace name → prefix. A workspace without a prefix names
    /// none. No prefix may begin another.
    pub webhook_secret_prefixes: BTreeMap<String, String>,
    /// A bearer token that reads `/metrics` (for a scraper), besides an
    /// admin key of the bootstrap workspace.
    pub metrics_token: Option<String>,
    /// The highest `limits.max_runtime` a connector may ask for, e.g.
    /// `"1h"`; a connector asking for more is refused when saved, and one
    /// saved before the cap was lowered runs with the cap.
    pub connector_max_runtime: String,
    /// The highest `limits.max_memory`, e.g. `"8GiB"`.
    pub connector_max_memory: String,
    /// The highest `limits.max_rows`.
    pub connector_max_rows: u64,
    /// The linear memory one plugin instance may grow to, e.g. `"256MiB"`.
    pub plugin_memory: String,
    /// The most rows a run writes to each scope's output CSV (the load
    /// and the report see every row); none by default.
    pub output_row_cap: Option<u64>,
    /// The most a dev package's records snapshot (`?records=true`) may
    /// hold, as JSON lines before compression, e.g. `"64MiB"`.
    pub package_records_max: String,
    /// This process's name among the processes sharing the state store
    /// (letters, digits, `.`, `_`, `-`); a new one at every start when
    /// not given.
    pub worker_id: Option<String>,
    /// How long a process holds a run it claimed without renewing the
    /// lease, e.g. `"30s"`; past it any process resolves the run as lost.
    pub lease: String,
    /// How often a process renews the leases of its runs, e.g. `"5s"`; at
    /// most half of `lease`.
    pub heartbeat: String,
    /// Where files, plugins and artifacts are kept: `s3://bucket/prefix`
    /// (configured by the standard `AWS_*` variables) or `file:///dir`;
    /// the data directory when not given.
    pub object_store: Option<String>,
    /// The state database, `postgres://user:password@host/db`; the data
    /// directory's SQLite database when not given.
    pub database: Option<String>,
    /// The most connections a process opens to the state database.
    pub database_pool: usize,
    /// Where notifications may go besides public addresses: addresses,
    /// networks and host names, separated by commas (`"10.0.0.0/8,
    /// hooks.internal"`); by default none, so no notification reaches a
    /// loopback, private or link-local address (docs/notifications.md).
    pub notification_allowed: String,
    /// How long a notification is retried after its execution ended, e.g.
    /// `"24h"`.
    pub notification_retry_for: String,
    /// The wait before a notification's second attempt, e.g. `"10s"`;
    /// doubled for each attempt after, up to an hour.
    pub notification_backoff: String,
}

/// Where runs execute (docs/reliability.md, "Hostile connectors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Each in a worker process the server supervises.
    Process,
    /// Inside the server process: a crash or a run that will not stop
    /// takes the server with it.
    None,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("weir-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 4,
            threads_per_run: std::thread::available_parallelism().map_or(1, usize::from),
            max_upload: "1GiB".into(),
            max_json_body: "2MiB".into(),
            request_timeout: "120s".into(),
            upload_min_rate: "16KiB".into(),
            upload_rate_window: "30s".into(),
            retention: "30days".into(),
            workspace_retention: BTreeMap::new(),
            retention_sweep: "1h".into(),
            shutdown_grace: "30s".into(),
            bootstrap_key: None,
            bootstrap_workspace: "default".into(),
            idempotency_retention: "24h".into(),
            preview_timeout: "30s".into(),
            load_batch_size: 8192,
            isolation: Isolation::Process,
            header_read_timeout: "30s".into(),
            max_connections: 1024,
            webhook_secret_prefixes: BTreeMap::from([("default".into(), "WEIR_WEBHOOK_SECRET_".into())]),
            metrics_token: None,
            package_records_max: "64MiB".into(),
            connector_max_runtime: "1h".into(),
            connector_max_memory: "8GiB".into(),
            connector_max_rows: 100_000_000,
            plugin_memory: "256MiB".into(),
            output_row_cap: None,
            worker_id: None,
            lease: "30s".into(),
            heartbeat: "5s".into(),
            object_store: None,
            database: None,
            database_pool: 16,
            notification_allowed: String::new(),
            notification_retry_for: "24h".into(),
            notification_backoff: "10s".into(),
        }
    }
}

/// The keys `WEIR_*` variables may set. Other `WEIR_*` variables (log
/// filters, webhook secrets) belong to other parts and are not config.
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "workers",
    "threads_per_run",
    "max_upload",
    "max_json_body",
    "request_timeout",
    "shutdown_grace",
    "bootstrap_key",
    "bootstrap_workspace",
    "idempotency_retention",
    "preview_timeout",
    "load_batch_size",
    "isolation",
    "header_read_timeout",
    "max_connections",
    "webhook_secret_prefixes",
    "metrics_token",
    "package_records_max",
    "connector_max_runtime",
    "connector_max_memory",
    "connector_max_rows",
    "plugin_memory",
    "output_row_cap",
    "upload_min_rate",
    "upload_rate_window",
    "retention",
    "workspace_retention",
    "retention_sweep",
    "worker_id",
    "lease",
    "heartbeat",
    "object_store",
    "database",
    "database_pool",
    "notification_allowed",
    "notification_retry_for",
    "notification_backoff",
];

/// Config values checked and converted.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration as given.
    pub config: ServerConfig,
    /// `max_upload` in bytes.
    pub max_upload: u64,
    /// `max_json_body` in bytes.
    pub max_json_body: usize,
    /// `request_timeout`.
    pub request_timeout: Duration,
    /// `shutdown_grace`.
    pub shutdown_grace: Duration,
    /// `idempotency_retention`.
    pub idempotency_retention: Duration,
    /// `preview_timeout`.
    pub preview_timeout: Duration,
    /// `header_read_timeout`.
    pub header_read_timeout: Duration,
    /// `package_records_max` in bytes.
    pub package_records_max: u64,
    /// `connector_max_*`: the most a connector's limits may be.
    pub limit_caps: LimitCaps,
    /// `plugin_memory` in bytes.
    pub plugin_memory: u64,
    /// `upload_min_rate` over `upload_rate_window`.
    pub upload_pace: Pace,
    /// `retention`.
    pub retention: Duration,
    /// `workspace_retention`.
    pub workspace_retention: BTreeMap<String, Duration>,
    /// `retention_sweep`.
    pub retention_sweep: Duration,
    /// The program runs and previews execute in, as `PROGRAM worker`: this
    /// binary.
    pub worker_program: std::path::PathBuf,
    /// The key workspace secrets are sealed with (`WEIR_SECRETS_KEY`, read
    /// from the environment only: it is never in a configuration file).
    pub secrets_key: Option<crate::server::secrets::SecretsKey>,
    /// This process's worker id (`worker_id`, or a new one).
    pub worker_id: String,
    /// `lease`.
    pub lease: Duration,
    /// `heartbeat`.
    pub heartbeat: Duration,
    /// `notification_allowed`.
    pub notification_policy: crate::server::notifications::Policy,
    /// `notification_retry_for`.
    pub notification_retry_for: Duration,
    /// `notification_backoff`.
    pub notification_backoff: Duration,
    /// Where files and artifacts are kept when not in the data directory
    /// (for embedding the server; a setting for it comes with remote stores).
    pub blob_store: Option<Arc<dyn ObjectStore>>,
}

impl Settings {
    /// How long workspace `name` keeps what has ended.
    pub fn retention_of(&self, name: &str) -> Duration {
        self.workspace_retention.get(name).copied().unwrap_or(self.retention)
    }

    /// Idempotency keys first used before this are forgotten.
    pub fn idempotency_expired(&self) -> chrono::DateTime<chrono::Utc> {
        let retention = chrono::TimeDelta::from_std(self.idempotency_retention).unwrap_or(chrono::TimeDelta::MAX);
        chrono::Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ServerConfig {
    /// Loads defaults, then `file` (when given), then `WEIR_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("{} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("WEIR_").only(ENV_KEYS));
        figment.extract().map_err(|e| ConfigError(e.to_string()))
    }

    /// Checks the values and converts sizes and durations.
    pub fn settings(self) -> Result<Settings, ConfigError> {
        let size = |key: &str, v: &str| {
            v.parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| ConfigError(format!("{key} = {v:?}: {e}")))
        };
        let duration =
            |key: &str, v: &str| humantime::parse_duration(v).map_err(|e| ConfigError(format!("{key} = {v:?}: {e}")));
        if self.workers == 0 {
            return Err(ConfigError("workers must be at least 1".into()));
        }
        if self.threads_per_run == 0 {
            return Err(ConfigError("threads_per_run must be at least 1".into()));
        }
        if self.load_batch_size == 0 {
            return Err(ConfigError("load_batch_size must be at least 1".into()));
        }
        if self.connector_max_rows == 0 {
            return Err(ConfigError("connector_max_rows must be at least 1".into()));
        }
        if self.output_row_cap == Some(0) {
            return Err(ConfigError(
                "output_row_cap must be at least 1 (leave it out for none)".into(),
            ));
        }
        if self.database_pool == 0 {
            return Err(ConfigError("database_pool must be at least 1".into()));
        }
        if let Some(url) = &self.database
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(
                "database must be a postgres:// URL (leave it out for the data directory's database)".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError("max_connections must be at least 1".into()));
        }
        check_prefixes(&self.webhook_secret_prefixes)?;
        let lease = positive("lease", duration("lease", &self.lease)?)?;
        let heartbeat = positive("heartbeat", duration("heartbeat", &self.heartbeat)?)?;
        if heartbeat * 2 > lease {
            return Err(ConfigError(format!(
                "heartbeat = {:?} must be at most half of lease = {:?}, so that one late renewal does not lose a run",
                self.heartbeat, self.lease
            )));
        }
        let worker_id = match &self.worker_id {
            Some(id) => check_worker_id(id)?,
            None => format!("w-{}", uuid::Uuid::now_v7().simple()),
        };
        Ok(Settings {
            notification_policy: crate::server::notifications::Policy::parse(&self.notification_allowed)
                .map_err(|e| ConfigError(format!("notification_allowed: {e}")))?,
            notification_retry_for: duration("notification_retry_for", &self.notification_retry_for)?,
            notification_backoff: positive(
                "notification_backoff",
                duration("notification_backoff", &self.notification_backoff)?,
            )?,
            worker_id,
            lease,
            heartbeat,
            blob_store: match &self.object_store {
                Some(url) => Some(crate::server::blobs::open_store(url).map_err(ConfigError)?),
                None => None,
            },
            max_upload: size("max_upload", &self.max_upload)?,
            max_json_body: usize::try_from(size("max_json_body", &self.max_json_body)?)
                .map_err(|_| ConfigError("max_json_body is too large".into()))?,
            request_timeout: duration("request_timeout", &self.request_timeout)?,
            shutdown_grace: duration("shutdown_grace", &self.shutdown_grace)?,
            idempotency_retention: duration("idempotency_retention", &self.idempotency_retention)?,
            preview_timeout: duration("preview_timeout", &self.preview_timeout)?,
            header_read_timeout: duration("header_read_timeout", &self.header_read_timeout)?,
            package_records_max: size("package_records_max", &self.package_records_max)?,
            limit_caps: caps(LimitCaps {
                max_runtime: duration("connector_max_runtime", &self.connector_max_runtime)?,
                max_memory: size("connector_max_memory", &self.connector_max_memory)?,
                max_rows: self.connector_max_rows,
            })?,
            plugin_memory: size("plugin_memory", &self.plugin_memory)?,
            upload_pace: pace(
                size("upload_min_rate", &self.upload_min_rate)?,
                duration("upload_rate_window", &self.upload_rate_window)?,
            )?,
            retention: duration("retention", &self.retention)?,
            workspace_retention: self
                .workspace_retention
                .iter()
                .map(|(name, d)| Ok((name.clone(), duration(&format!("workspace_retention.{name}"), d)?)))
                .collect::<Result<_, ConfigError>>()?,
            retention_sweep: positive("retention_sweep", duration("retention_sweep", &self.retention_sweep)?)?,
            worker_program: std::env::current_exe()
                .map_err(|e| ConfigError(format!("finding this program to start workers with: {e}")))?,
            secrets_key: crate::server::secrets::SecretsKey::from_env().map_err(ConfigError)?,
            config: self,
        })
    }
}

/// `caps`, unless a connector held to them could not run (a limit below
/// what a connector may ask for at all).
fn caps(caps: LimitCaps) -> Result<LimitCaps, ConfigError> {
    let tightest = weir_engine::connector::LimitsDef::default().capped(&caps);
    match tightest.parse() {
        Ok(_) => Ok(caps),
        Err(problems) => Err(ConfigError(format!(
            "connector_max_*: {}",
            problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// `id` when it can name a worker (and its lock file).
fn check_worker_id(id: &str) -> Result<String, ConfigError> {
    let fits = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('.');
    if fits {
        Ok(id.to_string())
    } else {
        Err(ConfigError(format!(
            "worker_id = {id:?}: 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// The pace of `rate` bytes a second over `window`.
fn pace(rate: u64, window: Duration) -> Result<Pace, ConfigError> {
    let window = positive("upload_rate_window", window)?;
    if rate == 0 {
        return Err(ConfigError(
            "upload_min_rate must be at least 1B: a client that sends nothing would hold its connection".into(),
        ));
    }
    Ok(Pace {
        bytes: (rate as f64 * window.as_secs_f64()).ceil() as u64,
        window,
    })
}

/// `value` of `key`, unless it is zero.
fn positive(key: &str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError(format!("{key} must be longer than 0s")));
    }
    Ok(value)
}

/// Refuses an empty prefix and two workspaces' prefixes where one begins
/// the other: a variable under both would be each workspace's.
fn check_prefixes(prefixes: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (workspace, prefix) in prefixes {
        if prefix.is_empty() {
            return Err(ConfigError(format!(
                "webhook_secret_prefixes.{workspace} is empty: it would name every variable"
            )));
        }
        for (other, theirs) in prefixes {
            if other != workspace && theirs.starts_with(prefix.as_str()) {
                return Err(ConfigError(format!(
                    "webhook_secret_prefixes: `{prefix}` ({workspace}) begins `{theirs}` ({other}); \
                     each workspace needs a prefix of its own"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::result_large_err, reason = "figment's Jail decides the closure's error type")]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("weir.toml", "workers = 7\nlisten = \"127.0.0.1:9000\"\n")?;
            jail.set_env("WEIR_WORKERS", "3");
            jail.set_env("WEIR_LOG", "debug");
            let c = ServerConfig::load(Some(Path::new("weir.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.workers, 3, "the environment wins over the file");
            assert_eq!(c.listen.port(), 9000, "the file wins over the defaults");
            assert_eq!(c.max_upload, "1GiB");
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment's Jail decides the closure's error type")]
    fn unknown_keys_in_the_file_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("weir.toml", "wrokers = 7\n")?;
            let e = ServerConfig::load(Some(Path::new("weir.toml")))
                .err()
                .map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("wrokers")), "{e:?}");
            Ok(())
        });
    }

    #[test]
    fn sizes_and_durations_are_checked() {
        let bad = ServerConfig {
            max_upload: "lots".into(),
            ..ServerConfig::default()
        };
        assert!(bad.settings().is_err());
        let no_commits = ServerConfig {
            load_batch_size: 0,
            ..ServerConfig::default()
        };
        let e = no_commits.settings().err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("load_batch_size")), "{e:?}");
        let s = ServerConfig::default().settings().map_err(|e| e.to_string());
        assert_eq!(s.map(|s| s.max_upload), Ok(1 << 30));
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment's Jail decides the closure's error type")]
    fn retention_is_per_workspace_and_uploads_keep_a_pace() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WEIR_RETENTION", "7days");
            jail.set_env("WEIR_WORKSPACE_RETENTION", "{acme=\"90days\"}");
            jail.set_env("WEIR_UPLOAD_MIN_RATE", "1KiB");
            jail.set_env("WEIR_UPLOAD_RATE_WINDOW", "10s");
            let s = ServerConfig::load(None)
                .map_err(|e| e.to_string())?
                .settings()
                .map_err(|e| e.to_string())?;
            let day = Duration::from_secs(86_400);
            assert_eq!(s.retention_of("acme"), 90 * day);
            assert_eq!(s.retention_of("default"), 7 * day);
            assert_eq!(
                s.upload_pace,
                Pace {
                    bytes: 10 * 1024,
                    window: Duration::from_secs(10)
                }
            );
            Ok(())
        });
        for (edit, key) in [
            (
                ServerConfig {
                    retention_sweep: "0s".into(),
                    ..ServerConfig::default()
                },
                "retention_sweep",
            ),
            (
                ServerConfig {
                    upload_min_rate: "0B".into(),
                    ..ServerConfig::default()
                },
                "upload_min_rate",
            ),
            (
                ServerConfig {
                    connector_max_memory: "1MiB".into(),
                    ..ServerConfig::default()
                },
                "connector_max_",
            ),
            (
                ServerConfig {
                    connector_max_runtime: "0s".into(),
                    ..ServerConfig::default()
                },
                "connector_max_",
            ),
            (
                ServerConfig {
                    workspace_retention: BTreeMap::from([("a".into(), "soon".into())]),
                    ..ServerConfig::default()
                },
                "workspace_retention.a",
            ),
        ] {
            let e = edit.settings().err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains(key)), "{e:?}");
        }
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment's Jail decides the closure's error type")]
    fn webhook_secret_prefixes_come_from_the_environment_and_may_not_overlap() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WEIR_WEBHOOK_SECRET_PREFIXES", "{acme=\"ACME_WHSEC_\"}");
            let c = ServerConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                c.webhook_secret_prefixes.get("acme").map(String::as_str),
                Some("ACME_WHSEC_")
            );
            Ok(())
        });
        let overlapping = ServerConfig {
            webhook_secret_prefixes: BTreeMap::from([("a".into(), "WHSEC_A".into()), ("b".into(), "WHSEC_AB".into())]),
            ..ServerConfig::default()
        };
        let e = overlapping.settings().err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("begins")), "{e:?}");
        let empty = ServerConfig {
            webhook_secret_prefixes: BTreeMap::from([("a".into(), String::new())]),
            ..ServerConfig::default()
        };
        assert!(empty.settings().is_err());
    }
}
