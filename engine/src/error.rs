//! Typed errors of the engine and the stable codes users see.
//!
//! Every failure of a run is an [`Error`] carrying the [`Stage`] it happened
//! in and a stable [`ErrorCode`]; callers (the CLI, the server) decide what to
//! do by the code, never by parsing messages. This module owns the mapping to
//! the execution document's `error` object and nothing else.

use serde::{Deserialize, Serialize};

/// A stage of the run pipeline, as named in the execution document, in
/// pipeline order (rows flow from each stage to the ones after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading and decoding input files into input tables.
    Intake,
    /// Running the connector's SQL script.
    Sql,
    /// Wasm transform steps.
    Transform,
    /// Converting scope rows into typed variables.
    Variables,
    /// Upserting records into objects.
    Load,
    /// Writing the output, report and rejected-row artifacts.
    Report,
}

impl Stage {
    /// The wire name of the stage.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Intake => "intake",
            Stage::Sql => "sql",
            Stage::Transform => "transform",
            Stage::Variables => "variables",
            Stage::Load => "load",
            Stage::Report => "report",
        }
    }
}

/// Stable, machine-readable error codes (`error.code` in the execution document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The connector definition is invalid.
    InvalidConnector,
    /// An object definition is invalid.
    InvalidObjects,
    /// The input is empty, of an unknown format, or not readable at all.
    UnreadableInput,
    /// The SQL script does not parse or plan, or failed while running.
    SqlError,
    /// The SQL script uses a form Weir refuses (files, URLs, DDL outside `output`).
    SqlNotAllowed,
    /// A run limit (`max_runtime`, `max_memory`, `max_rows`) was exceeded.
    LimitExceeded,
    /// More rows were invalid than `max_invalid_ratio` allows.
    InvalidRatioExceeded,
    /// The run was canceled.
    Canceled,
    /// An external source the script reads (`[[sources]]`) could not be
    /// reached, or its secret is not set.
    SourceUnavailable,
    /// Reading or writing local files failed.
    Io,
    /// The record store failed.
    StoreError,
    /// A transform plugin trapped (panic, abort, stack overflow, memory
    /// limit), reported failure, or refused a row under `on_error = fail_run`.
    PluginTrap,
    /// A transform plugin broke the contract: malformed Arrow, a schema
    /// other than the one `init` declared, a row index out of range, output
    /// over the size limit, or a file that is not a `weir:transform` component.
    PluginProtocol,
    /// A transform plugin refused its step's `config`.
    InvalidConfig,
    /// The process running the execution stopped (crash, kill, power loss)
    /// before it finished; what it committed stays.
    WorkerLost,
    /// The worker process running the execution died (a signal, an abort)
    /// or was killed for a bound it crossed from inside code that could not
    /// stop itself; what it committed stays.
    WorkerCrashed,
    /// A bug in Weir; the message is safe to show but not actionable.
    Internal,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidConnector => "invalid_connector",
            ErrorCode::InvalidObjects => "invalid_objects",
            ErrorCode::UnreadableInput => "unreadable_input",
            ErrorCode::SqlError => "sql_error",
            ErrorCode::SqlNotAllowed => "sql_not_allowed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::InvalidRatioExceeded => "invalid_ratio_exceeded",
            ErrorCode::Canceled => "canceled",
            ErrorCode::SourceUnavailable => "source_unavailable",
            ErrorCode::Io => "io_error",
            ErrorCode::StoreError => "store_error",
            ErrorCode::PluginTrap => "plugin_trap",
            ErrorCode::PluginProtocol => "plugin_protocol",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::WorkerCrashed => "worker_crashed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A position in a SQL script (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// One problem found while validating a document: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `variables[2].type`.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
    /// Where in the text the document was read from, when it was read from
    /// text that keeps positions (TOML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }

    /// The problem as found in `file`: `file:line:column: path: message`,
    /// the form editors and terminals link to.
    pub fn in_file(self, file: &str) -> Self {
        let path = match (&self.position, self.path.is_empty()) {
            (Some(at), true) => format!("{file}:{}:{}", at.line, at.column),
            (Some(at), false) => format!("{file}:{}:{}: {}", at.line, at.column, self.path),
            (None, true) => file.to_string(),
            (None, false) => format!("{file}: {}", self.path),
        };
        Self { path, ..self }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// What serde_json says is wrong, without its position (which is the
/// caller's to give in its own terms).
pub fn json_reason(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rsplit_once(" at line ") {
        Some((what, _)) => what.to_string(),
        None => message,
    }
}

/// Which run limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `limits.max_runtime`.
    MaxRuntime,
    /// `limits.max_memory`.
    MaxMemory,
    /// `limits.max_rows`.
    MaxRows,
}

impl Limit {
    /// The connector key of the limit.
    pub fn key(self) -> &'static str {
        match self {
            Limit::MaxRuntime => "max_runtime",
            Limit::MaxMemory => "max_memory",
            Limit::MaxRows => "max_rows",
        }
    }
}

/// How a transform plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginFailure {
    /// It trapped, panicked, ran out of memory or reported failure.
    Trap,
    /// It broke the `weir:transform` contract.
    Protocol,
    /// It refused its config.
    InvalidConfig,
}

/// What kind of record store failure an [`Error::Store`] is, the same for
/// every backend: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// A write conflicts with what is stored (a unique field).
    Conflict,
    /// The store is out of space.
    Full,
    /// The store may only be read.
    ReadOnly,
    /// The store cannot be reached, or stayed busy past its timeout:
    /// trying again later may work.
    Unavailable,
    /// Anything else: a damaged store, or what it holds is not what Weir
    /// wrote.
    Other,
}

impl Error {
    /// A record store failure of `kind`.
    pub fn store(kind: StoreFault, message: impl Into<String>) -> Self {
        Error::Store {
            kind,
            message: message.into(),
        }
    }
}

/// An engine error. Each variant is a different kind of failure because
/// callers treat them differently (a cancel is not a bug, bad input is not a
/// limit).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connector definition is invalid; every problem is listed.
    #[error("invalid connector:{}", join_problems(.0))]
    InvalidConnector(Vec<Problem>),
    /// Object definitions are invalid; every problem is listed.
    #[error("invalid objects:{}", join_problems(.0))]
    InvalidObjects(Vec<Problem>),
    /// The input cannot be read at all.
    #[error("{message}")]
    UnreadableInput {
        /// What is wrong with the input, for a person.
        message: String,
    },
    /// The SQL script failed to parse, plan or run.
    #[error("{message}")]
    Sql {
        /// The error, without engine internals.
        message: String,
        /// Where in the script, when known.
        position: Option<Position>,
    },
    /// The SQL script uses a refused form.
    #[error("{message}")]
    SqlNotAllowed {
        /// What was refused and why.
        message: String,
        /// The statement's position in the script.
        position: Option<Position>,
    },
    /// A run limit was exceeded.
    #[error("limit exceeded: {}: {message}", .limit.key())]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// Detail for a person.
        message: String,
    },
    /// Too many invalid rows.
    #[error("{invalid} of {total} rows are invalid, more than max_invalid_ratio = {max_ratio}")]
    InvalidRatioExceeded {
        /// Invalid rows.
        invalid: u64,
        /// All rows.
        total: u64,
        /// The configured ratio.
        max_ratio: f64,
    },
    /// The run was canceled.
    #[error("the run was canceled")]
    Canceled,
    /// An external source could not be reached; the message never holds
    /// its secret.
    #[error("source `{name}` is unavailable: {message}")]
    SourceUnavailable {
        /// The source's name.
        name: String,
        /// Why, scrubbed of the secret.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A transform plugin failed; the plugin and step are named.
    #[error("{}plugin {plugin}: {message}", .step.as_ref().map(|s| format!("{s}: ")).unwrap_or_default())]
    Plugin {
        /// How it failed.
        failure: PluginFailure,
        /// The plugin reference (`name@version` or `sha256:…`).
        plugin: String,
        /// The step, e.g. `transforms[0] on contacts`, once it has one.
        step: Option<String>,
        /// What happened, with the plugin's own words when it had any.
        message: String,
    },
    /// The record store refused or failed a read or write.
    #[error("record store: {message}")]
    Store {
        /// What kind of failure, whatever the backend.
        kind: StoreFault,
        /// The backend's words.
        message: String,
    },
    /// The run's commits were revoked: another process resolved it after
    /// its lease expired, so nothing more of it is committed.
    #[error("execution {0} was resolved by another process after its lease expired; nothing more of it is committed")]
    Revoked(String),
    /// An unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem on the line of its error; several, each on a line of its
/// own, as compilers list them.
fn join_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => format!(" {one}"),
        many => many.iter().map(|p| format!("\n  {p}")).collect(),
    }
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidConnector(_) => ErrorCode::InvalidConnector,
            Error::InvalidObjects(_) => ErrorCode::InvalidObjects,
            Error::UnreadableInput { .. } => ErrorCode::UnreadableInput,
            Error::Sql { .. } => ErrorCode::SqlError,
            Error::SqlNotAllowed { .. } => ErrorCode::SqlNotAllowed,
            Error::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            Error::InvalidRatioExceeded { .. } => ErrorCode::InvalidRatioExceeded,
            Error::Canceled => ErrorCode::Canceled,
            Error::SourceUnavailable { .. } => ErrorCode::SourceUnavailable,
            Error::Io { .. } => ErrorCode::Io,
            Error::Plugin { failure, .. } => match failure {
                PluginFailure::Trap => ErrorCode::PluginTrap,
                PluginFailure::Protocol => ErrorCode::PluginProtocol,
                PluginFailure::InvalidConfig => ErrorCode::InvalidConfig,
            },
            Error::Store { .. } => ErrorCode::StoreError,
            Error::Revoked(_) => ErrorCode::WorkerLost,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The SQL position of the error, when it has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::Sql { position, .. } | Error::SqlNotAllowed { position, .. } => *position,
            _ => None,
        }
    }

    /// A plugin error named by the step it happened in, when it had none.
    pub fn in_step(self, name: &str) -> Self {
        match self {
            Error::Plugin {
                failure,
                plugin,
                step: None,
                message,
            } => Error::Plugin {
                failure,
                plugin,
                step: Some(name.to_string()),
                message,
            },
            other => other,
        }
    }

    /// The plugin an error is about, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Error::Plugin { plugin, .. } => Some(plugin),
            _ => None,
        }
    }

    /// An unreadable-input error.
    pub fn unreadable(message: impl Into<String>) -> Self {
        Error::UnreadableInput {
            message: message.into(),
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
