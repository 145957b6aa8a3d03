//! What the connectors, executions, previews and packages services answer
//! when they will not, or cannot, do what was asked: a [`Refusal`] of a
//! [`Kind`] with a stable code, a sentence, and what a client needs to fix
//! it (each field's problem, the script's line and column, the dry run
//! behind a refused publish). It knows nothing of HTTP: the API turns it
//! into a problem document (`error.rs`), and any other caller (a background
//! job, a console page) reads the same fields.

use weir_engine::error::Problem;
use weir_engine::execution::Execution;

use super::error::StorageFault;
use super::state::StateError;

/// What kind of refusal, which decides how a client should react.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed.
    BadRequest,
    /// The caller may not do this.
    Forbidden,
    /// What was named does not exist (or is another workspace's).
    NotFound,
    /// The state of what was named does not allow it now.
    Conflict,
    /// What was sent is not valid; `problems` says where.
    Invalid,
    /// It did not finish in the time it has.
    TimedOut,
    /// The server cannot do this as it was started (a setting is missing).
    Unavailable,
    /// The server's storage is full: nothing was kept.
    StorageFull,
    /// The server's storage is read-only: nothing was kept.
    StorageReadOnly,
    /// The server's object store does not answer: nothing was kept.
    StorageUnavailable,
    /// The server's database does not answer.
    DatabaseUnavailable,
    /// The server failed; the detail is in its log, not in the refusal.
    Internal,
}

/// A refusal: boxed, since every service call returns one on its error path
/// and the success path should not pay for its size.
#[derive(Debug)]
pub struct Refusal(Box<Detail>);

/// Everything a client is told of a refusal.
#[derive(Debug)]
pub struct Detail {
    /// Its kind.
    pub kind: Kind,
    /// The stable code (`connector_exists`, `no_sample_file`, …).
    pub code: String,
    /// What happened, for a person.
    pub detail: String,
    /// Each problem with its path.
    pub problems: Vec<Problem>,
    /// The script line of the problem.
    pub line: Option<u64>,
    /// The script column of the problem.
    pub column: Option<u64>,
    /// The execution behind the refusal (a publish's failed dry run).
    pub execution: Option<Box<Execution>>,
    /// The draft version a refused script was kept as.
    pub draft_version: Option<u32>,
}

/// The result of a service call.
pub type Refused<T> = Result<T, Refusal>;

impl Refusal {
    /// A refusal of `kind` with `code` and `detail`.
    pub fn new(kind: Kind, code: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(Detail {
            kind,
            code: code.to_string(),
            detail: detail.into(),
            problems: Vec::new(),
            line: None,
            column: None,
            execution: None,
            draft_version: None,
        }))
    }

    /// What was sent is not valid: `code`, and every problem with its path.
    pub fn invalid(code: &str, detail: impl Into<String>, problems: Vec<Problem>) -> Self {
        let mut refusal = Self::new(Kind::Invalid, code, detail);
        refusal.0.problems = problems;
        refusal
    }

    /// The state of what was named does not allow it now.
    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, detail)
    }

    /// `what` does not exist (or is another workspace's).
    pub fn not_found(what: &str) -> Self {
        Self::new(Kind::NotFound, "not_found", format!("{what} not found"))
    }

    /// The caller may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, "forbidden", detail)
    }

    /// The request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, "bad_request", detail)
    }

    /// The server failed: `detail` goes to the log. A full or read-only
    /// store is said as what it is, since the client can only wait.
    pub fn internal<E: std::fmt::Display + 'static>(detail: E) -> Self {
        if let Some(fault) = StorageFault::in_value(&detail) {
            tracing::error!(error = %detail, "storage fault");
            return match fault {
                StorageFault::Full => Self::new(Kind::StorageFull, "storage_full", ""),
                StorageFault::ReadOnly => Self::new(Kind::StorageReadOnly, "storage_read_only", ""),
                StorageFault::Unavailable => Self::new(Kind::StorageUnavailable, "blob_store_unavailable", ""),
                StorageFault::DatabaseUnavailable => Self::new(Kind::DatabaseUnavailable, "database_unavailable", ""),
            };
        }
        tracing::error!(error = %detail, "internal error");
        Self::new(Kind::Internal, "internal", "")
    }

    /// With the script position of the problem.
    pub fn at(mut self, line: Option<u64>, column: Option<u64>) -> Self {
        self.0.line = line;
        self.0.column = column;
        self
    }

    /// With the execution behind it.
    pub fn with_execution(mut self, execution: Execution) -> Self {
        self.0.execution = Some(Box::new(execution));
        self
    }

    /// With the draft version that kept the refused script.
    pub fn with_draft_version(mut self, version: u32) -> Self {
        self.0.draft_version = Some(version);
        self
    }
}

impl std::ops::Deref for Refusal {
    type Target = Detail;

    fn deref(&self) -> &Detail {
        &self.0
    }
}

impl Refusal {
    /// What the refusal says, to take apart.
    pub fn into_detail(self) -> Detail {
        *self.0
    }
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Self {
        Refusal::internal(e)
    }
}

impl From<super::files::FileError> for Refusal {
    fn from(e: super::files::FileError) -> Self {
        use super::files::FileError;
        match e {
            FileError::State(e) => e.into(),
            FileError::Blob(e) => Refusal::internal(e),
        }
    }
}

impl From<super::plugins::PluginError> for Refusal {
    fn from(e: super::plugins::PluginError) -> Self {
        use super::plugins::PluginError;
        match e {
            PluginError::BadReference(message) => Refusal::invalid(
                "invalid_plugin",
                "the plugin's name or version is not valid",
                vec![Problem::new("name@version", message)],
            ),
            PluginError::NotAComponent(message) => Refusal::invalid(
                "invalid_plugin",
                "the file is not a component Weir can run as a transform step",
                vec![Problem::new("body", message)],
            ),
            e @ PluginError::VersionTaken(_) => Refusal::conflict("plugin_version_exists", e.to_string()),
            PluginError::Files(e) => e.into(),
            PluginError::State(e) => e.into(),
        }
    }
}

impl From<super::objects::ObjectError> for Refusal {
    fn from(e: super::objects::ObjectError) -> Self {
        use super::objects::ObjectError;
        match e {
            ObjectError::Invalid { title, problems } => Refusal::invalid("invalid_object", title, problems),
            e @ ObjectError::Exists(_) => Refusal::conflict("object_exists", e.to_string()),
            ObjectError::NotFound(what) => Refusal::not_found(what),
            ObjectError::OutOfReach(message) => Refusal::forbidden(message),
            ObjectError::BadFilter(message) => Refusal::bad_request(message),
            ObjectError::Engine(e) => Refusal::internal(e),
            ObjectError::State(e) => e.into(),
        }
    }
}

impl From<super::triggers::CannotRun> for Refusal {
    fn from(refused: super::triggers::CannotRun) -> Self {
        use super::triggers::CannotRun;
        let detail = refused.to_string();
        match refused {
            CannotRun::NotOperational => Refusal::conflict("connector_not_operational", detail),
            CannotRun::NotASpreadsheet => Refusal::conflict("wrong_connector_type", detail),
            CannotRun::NoLiveScript => Refusal::conflict("no_live_script", detail),
            CannotRun::State(e) => e.into(),
            other => Refusal::internal(other),
        }
    }
}
