//! Server configuration, layered: built-in defaults, then a TOML file
//! (`--config`), then `WEIR_*` environment variables, then command-line
//! flags. Unknown keys in the file are an error, never ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

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
    /// A request taking longer is answered 408, e.g. `"60s"` (uploads included).
    pub request_timeout: String,
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
    /// The program runs and previews execute in, as `PROGRAM worker`: this
    /// binary.
    pub worker_program: std::path::PathBuf,
}

impl Settings {
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
        if self.max_connections == 0 {
            return Err(ConfigError("max_connections must be at least 1".into()));
        }
        check_prefixes(&self.webhook_secret_prefixes)?;
        Ok(Settings {
            max_upload: size("max_upload", &self.max_upload)?,
            max_json_body: usize::try_from(size("max_json_body", &self.max_json_body)?)
                .map_err(|_| ConfigError("max_json_body is too large".into()))?,
            request_timeout: duration("request_timeout", &self.request_timeout)?,
            shutdown_grace: duration("shutdown_grace", &self.shutdown_grace)?,
            idempotency_retention: duration("idempotency_retention", &self.idempotency_retention)?,
            preview_timeout: duration("preview_timeout", &self.preview_timeout)?,
            header_read_timeout: duration("header_read_timeout", &self.header_read_timeout)?,
            worker_program: std::env::current_exe()
                .map_err(|e| ConfigError(format!("finding this program to start workers with: {e}")))?,
            config: self,
        })
    }
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
