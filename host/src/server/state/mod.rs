//! The server's state store: workspaces, hashed API keys, objects, files,
//! connectors with every SQL version, executions with their documents and
//! logs. Each aggregate's file holds its row types and the trait a backend
//! implements for it; [`StateStore`] is all of them, and what the server
//! holds. Failures are [`StateError`]s of a backend-neutral
//! [`StateFault`] kind. The embedded backend is SQLite ([`sqlite`]: the
//! only code here that knows SQL or a driver).
//!
//! This module owns row shapes. It does not decide who may do what (that
//! is [`super::auth`]) nor how executions move (that is [`super::queue`]);
//! status changes it writes are checked by the caller.

mod connectors;
mod executions;
mod files;
mod keys;
mod leases;
mod notifications;
mod objects;
mod plugins;
mod schedules;
mod secrets;
mod webhooks;

pub mod postgres;
pub mod sqlite;

pub use connectors::{ConnectorRow, ConnectorWrite, PackageWrite, PushRefused, SqlVersion};
pub use executions::{ExecutionFilter, ExecutionRow, IdempotencyKey, KeyUse, LogLine};
pub use files::{ContentRemovals, FileDeletion, FileRow};
pub use keys::{KeyRow, SessionRow, Workspace};
pub use leases::Lease;
pub use notifications::{AfterAttempt, AttemptRow, NotificationRow, due_at_end, summary};
pub use objects::ObjectRow;
pub use plugins::PluginRow;
pub use secrets::SecretRow;
pub use webhooks::{OpenBatch, WebhookReceipt, WebhookRow};

pub use connectors::ConnectorState;
pub use executions::ExecutionState;
pub use files::FileState;
pub use keys::KeyState;
pub use leases::LeaseState;
pub use notifications::NotificationState;
pub use objects::ObjectState;
pub use plugins::PluginState;
pub use postgres::PgState;
pub use schedules::ScheduleState;
pub use secrets::SecretState;
pub use sqlite::Db;
pub use webhooks::WebhookState;

use chrono::{DateTime, Utc};
use weir_engine::connector::PluginRef;
use weir_engine::execution::{Execution, Status};
use weir_engine::objects::Objects;

/// A state store failure, in terms of what a caller may do about it
/// whatever the backend: the backend's own error is its source.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed or refused an operation.
    #[error("state database: {source}")]
    Store {
        /// What kind of failure.
        kind: StateFault,
        /// The backend's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored document did not parse.
    #[error("state database holds a document that does not parse: {0}")]
    Document(#[from] serde_json::Error),
    /// The database was written by a newer Weir.
    #[error("the state database is at schema version {found}; this weir knows up to {known}")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
}

/// What kind of state store failure a [`StateError::Store`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFault {
    /// A write conflicts with what is stored (a key or name taken).
    Conflict,
    /// What the operation needs is not stored.
    NotFound,
    /// The store is out of space.
    Full,
    /// The store may only be read.
    ReadOnly,
    /// The store cannot be reached, or stayed busy past its timeout:
    /// trying again later may work.
    Unavailable,
    /// Anything else.
    Other,
}

impl StateError {
    /// `what` should be stored and is not.
    pub fn missing(what: &str) -> Self {
        StateError::Store {
            kind: StateFault::NotFound,
            source: format!("{what} is missing").into(),
        }
    }

    /// What kind of failure it is; a stored document that does not parse
    /// and a database too new are `Other`.
    pub fn kind(&self) -> StateFault {
        match self {
            StateError::Store { kind, .. } => *kind,
            StateError::Document(_) | StateError::TooNew { .. } => StateFault::Other,
        }
    }
}

/// Result of state operations.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Everything the server keeps in its state store, whatever the backend.
pub trait StateStore:
    ConnectorState
    + ExecutionState
    + FileState
    + KeyState
    + LeaseState
    + NotificationState
    + ObjectState
    + PluginState
    + ScheduleState
    + SecretState
    + WebhookState
    + Send
    + Sync
{
    /// Whether the store answers now (for `/healthz`).
    fn answers(&self) -> Result<()>;
}
