//! Executions: their rows and documents, idempotency keys, retention, and their
//! logs.

use super::*;

/// An execution as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    /// Workspace.
    pub workspace_id: String,
    /// Connector id.
    pub connector_id: String,
    /// The connector definition the run uses (JSON).
    pub definition: String,
    /// The exact script the run uses.
    pub script: String,
    /// The input's name as uploaded.
    pub input_name: Option<String>,
    /// The document.
    pub document: Execution,
}

/// An `Idempotency-Key` of a request that creates an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client sent it.
    pub key: String,
    /// What identifies the request: a retry must send the same.
    pub fingerprint: String,
}

/// The execution a key was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    /// The first request's fingerprint.
    pub fingerprint: String,
    /// The execution it created.
    pub execution_id: String,
}

/// Filters of an execution list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    /// Only executions of these connectors (ids); all of the workspace's
    /// when `None`.
    pub connector_ids: Option<Vec<String>>,
    /// Only the execution with this id, or those created under this
    /// idempotency key.
    pub search: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this trigger type.
    pub trigger_type: Option<String>,
    /// Only dry runs, or only live ones.
    pub is_dry_run: Option<bool>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
}

/// A log line of an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position, from 1.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// `info`, `warn`, `error`.
    pub level: String,
    /// The line.
    pub message: String,
}

/// Executions: their rows, idempotency keys and log lines.
pub trait ExecutionState {
    /// Stores a new execution.
    fn insert_execution(&self, row: &ExecutionRow) -> Result<()>;

    /// Stores a new execution under an idempotency key, both or neither:
    /// when the key is already taken (a concurrent retry got there first)
    /// nothing is stored and its first use is returned. Keys older than
    /// `expired` are forgotten first.
    fn insert_execution_once(
        &self,
        row: &ExecutionRow,
        key: &IdempotencyKey,
        expired: DateTime<Utc>,
    ) -> Result<Option<KeyUse>>;

    /// The first use of an idempotency key on a connector, unless it is
    /// older than `expired`.
    fn key_use(&self, connector_id: &str, key: &str, expired: DateTime<Utc>) -> Result<Option<KeyUse>>;

    /// The name the latest execution of `connector_id` on the file
    /// `sha256` knew its input by.
    fn input_name_of(&self, connector_id: &str, sha256: &str) -> Result<Option<String>>;

    /// An execution by id (any workspace; callers check tenancy).
    fn execution(&self, id: &str) -> Result<Option<ExecutionRow>>;

    /// A page of a workspace's executions, newest first, after `cursor`.
    fn executions(
        &self,
        workspace_id: &str,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>>;

    /// Executions of the workspace that have ended and were created before
    /// `before`.
    fn ended_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>>;

    /// Deletes an execution that has ended, with its log lines, its webhook
    /// batch and payloads, its idempotency keys and its schedule tick
    /// (unless that is its connector's latest, which the scheduler counts
    /// from): all or nothing. False when no execution with this id has
    /// ended.
    fn delete_execution(&self, id: &str) -> Result<bool>;

    /// Appends a log line to an execution.
    fn append_log(&self, execution_id: &str, level: &str, message: &str) -> Result<()>;

    /// Log lines after `after`, at most `limit`.
    fn logs(&self, execution_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>>;
}
