//! The server's state store: workspaces, hashed API keys, objects, files,
//! connectors with every SQL version, executions with their documents and
//! logs. One SQLite database (`state.db`) in the data directory, in WAL mode
//! so readers never wait for the writer and `weir keys` works while the
//! server runs.
//!
//! Schema changes are numbered migrations applied in order and recorded in
//! `PRAGMA user_version`; a database newer than this binary is refused.
//!
//! This module owns SQL text and row shapes. It does not decide who may do
//! what (that is [`super::auth`]) nor how executions move (that is
//! [`super::queue`]); status changes it writes are checked by the caller.
//!
//! Calls are synchronous: every statement here is a point lookup or a short
//! indexed range on a local file, well under a millisecond, so a thread hop
//! per request would cost more than it saves.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
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
    /// What kind of failure it is; a stored document that does not parse
    /// and a database too new are `Other`.
    pub fn kind(&self) -> StateFault {
        match self {
            StateError::Store { kind, .. } => *kind,
            StateError::Document(_) | StateError::TooNew { .. } => StateFault::Other,
        }
    }
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        let kind = match (&e, e.sqlite_error_code()) {
            (rusqlite::Error::QueryReturnedNoRows, _) => StateFault::NotFound,
            (_, Some(Code::ConstraintViolation)) => StateFault::Conflict,
            (_, Some(Code::DiskFull)) => StateFault::Full,
            (_, Some(Code::ReadOnly)) => StateFault::ReadOnly,
            (_, Some(Code::DatabaseBusy | Code::DatabaseLocked | Code::CannotOpen)) => StateFault::Unavailable,
            _ => StateFault::Other,
        };
        StateError::Store {
            kind,
            source: Box::new(e),
        }
    }
}

/// Result of state operations.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    connectors    TEXT,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    revoked_at    TEXT
);
CREATE TABLE objects (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    definition   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);
CREATE TABLE files (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, sha256)
);
CREATE TABLE connectors (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    api_name       TEXT NOT NULL,
    definition     TEXT NOT NULL,
    sample_file_id TEXT,
    draft_version  INTEGER NOT NULL,
    live_version   INTEGER,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (workspace_id, api_name)
);
CREATE TABLE sql_versions (
    connector_id TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    text         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    published_at TEXT,
    PRIMARY KEY (connector_id, version)
);
CREATE TABLE executions (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    connector_id   TEXT NOT NULL,
    status         TEXT NOT NULL,
    trigger_type   TEXT NOT NULL,
    is_dry_run     INTEGER NOT NULL,
    source_file_id TEXT,
    input_name     TEXT,
    definition     TEXT NOT NULL,
    script         TEXT NOT NULL,
    document       TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE INDEX executions_by_connector ON executions (connector_id, id);
CREATE INDEX executions_by_status ON executions (status, id);
CREATE TABLE execution_logs (
    execution_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at           TEXT NOT NULL,
    level        TEXT NOT NULL,
    message      TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
"#,
    r#"
CREATE TABLE plugins (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name, version)
);
CREATE INDEX plugins_by_sha ON plugins (workspace_id, sha256);
"#,
    r#"
CREATE TABLE idempotency_keys (
    workspace_id TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
"#,
    r#"
CREATE TABLE webhook_batches (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    opened_at    TEXT NOT NULL,
    closes_at    TEXT NOT NULL,
    execution_id TEXT
);
CREATE INDEX webhook_batches_open ON webhook_batches (connector_id, execution_id, closes_at);
CREATE TABLE webhooks (
    connector_id TEXT NOT NULL,
    webhook_id   TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    content_type TEXT NOT NULL,
    querystring  TEXT NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (connector_id, webhook_id)
);
CREATE INDEX webhooks_by_batch ON webhooks (batch_id, received_at);
"#,
    r#"
CREATE TABLE schedule_ticks (
    connector_id TEXT NOT NULL,
    tick_at      TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (connector_id, tick_at)
);
"#,
    // Idempotency keys belong to one connector, and signed and keyed
    // webhook senders' payload ids live apart. Payloads stored before count
    // as signed.
    r#"
CREATE TABLE idempotency_keys_by_connector (
    workspace_id TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (connector_id, key)
);
INSERT INTO idempotency_keys_by_connector
    SELECT i.workspace_id, e.connector_id, i.key, i.fingerprint, i.execution_id, i.created_at
    FROM idempotency_keys i JOIN executions e ON e.id = i.execution_id;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_by_connector RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE TABLE webhooks_by_sender (
    connector_id TEXT NOT NULL,
    signed       INTEGER NOT NULL,
    webhook_id   TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    content_type TEXT NOT NULL,
    querystring  TEXT NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (connector_id, signed, webhook_id)
);
INSERT INTO webhooks_by_sender
    SELECT connector_id, 1, webhook_id, batch_id, received_at, content_type, querystring, body FROM webhooks;
DROP TABLE webhooks;
ALTER TABLE webhooks_by_sender RENAME TO webhooks;
CREATE INDEX webhooks_by_batch ON webhooks (batch_id, received_at);
"#,
    // Which keys uploaded a file: a key limited to some connectors reaches
    // the files it uploaded and those its connectors use.
    r#"
CREATE TABLE file_uploaders (
    workspace_id TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    PRIMARY KEY (workspace_id, sha256, key_id)
);
CREATE INDEX executions_by_source ON executions (workspace_id, source_file_id);
"#,
    // Retention: a file's last upload, and what deleting an execution
    // looks up by it.
    r#"
ALTER TABLE files ADD COLUMN uploaded_at TEXT;
UPDATE files SET uploaded_at = created_at;
CREATE INDEX files_by_upload ON files (workspace_id, uploaded_at);
CREATE INDEX files_by_content ON files (sha256);
CREATE INDEX plugins_by_content ON plugins (sha256);
CREATE INDEX executions_by_age ON executions (workspace_id, created_at);
CREATE INDEX webhook_batches_by_execution ON webhook_batches (execution_id);
CREATE INDEX schedule_ticks_by_execution ON schedule_ticks (execution_id);
CREATE INDEX idempotency_keys_by_execution ON idempotency_keys (execution_id);
"#,
    // Workspace secrets, sealed with the server's secrets key: the value is
    // never stored in clear.
    r#"
CREATE TABLE secrets (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    sealed       BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);
"#,
    // Leased runs (docs/architecture.md): the process that runs an
    // execution, until when its lease holds, and a cancel asked of it by
    // any process.
    r#"
ALTER TABLE executions ADD COLUMN owner TEXT;
ALTER TABLE executions ADD COLUMN lease_until INTEGER;
ALTER TABLE executions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX executions_by_owner ON executions (owner) WHERE owner IS NOT NULL;
CREATE INDEX executions_by_connector_status ON executions (connector_id, status);
"#,
];

/// An execution's document as readers see it: a running execution whose
/// cancel was asked of another process is already `canceling`.
const DOCUMENT: &str = "CASE WHEN cancel_requested = 1 AND status = 'running' \
     THEN json_set(document, '$.status', 'canceling') ELSE document END";

/// The statuses of an execution a process runs (and holds a lease on).
const LEASED: &str = "('running', 'canceling')";

/// A workspace secret as stored: its value sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// Its name.
    pub name: String,
    /// The value, sealed (see `secrets::SecretsKey`).
    pub sealed: Vec<u8>,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// The statuses of an execution that has ended, as SQL.
const ENDED: &str = "('success', 'partial_success', 'failed', 'canceled')";

/// A published plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRow {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// sha256 of the component (its file id).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Its id.
    pub id: String,
    /// Its unique name.
    pub name: String,
}

/// An API key as stored (the secret only as its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id.
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// Display name.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Connectors (ids or api_names) the key is limited to.
    pub connectors: Option<Vec<String>>,
    /// sha256 of the secret, hex.
    pub secret_sha256: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An object definition as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    /// The definition (JSON of `ObjectDef`).
    pub definition: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// An uploaded file (content lives in the file store under its sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// sha256 of the content, hex; also the file's id.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Name as uploaded.
    pub name: String,
    /// Content type as uploaded.
    pub content_type: String,
    /// First upload.
    pub created_at: DateTime<Utc>,
}

/// What a package push writes (see [`Db::write_package`]).
#[derive(Debug)]
pub struct PackageWrite {
    /// New objects: name and definition (JSON). One that exists meanwhile
    /// is left as it is.
    pub objects: Vec<(String, String)>,
    /// New plugin versions; their content is in the file store already.
    pub plugins: Vec<PluginRow>,
    /// The sample file and the key that pushed it.
    pub sample: Option<(FileRow, String)>,
    /// The connector.
    pub connector: ConnectorWrite,
}

/// The connector a package push writes.
#[derive(Debug)]
pub enum ConnectorWrite {
    /// A new connector with its first draft.
    Insert {
        /// The row.
        row: ConnectorRow,
        /// The draft's text.
        draft: String,
    },
    /// An existing connector, and its draft when the package has one.
    Update {
        /// The row as it is to be.
        row: ConnectorRow,
        /// The draft's text.
        draft: Option<String>,
    },
}

/// Why a package push was refused by what another request wrote meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefused {
    /// The api_name is taken.
    NameTaken,
    /// This plugin version was published with other content.
    PluginTaken(String),
}

/// What deleting a file of a workspace did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDeletion {
    /// The file is deleted.
    Deleted,
    /// The file is kept: what uses it.
    InUse(String),
    /// The workspace has no such file.
    Missing,
}

/// A connector as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorRow {
    /// Id (UUID).
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// `api_name`.
    pub api_name: String,
    /// The definition (JSON of `Connector`, without SQL text).
    pub definition: String,
    /// The sample file.
    pub sample_file_id: Option<String>,
    /// The draft SQL version.
    pub draft_version: u32,
    /// The live SQL version.
    pub live_version: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One SQL version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlVersion {
    /// Number, from 1.
    pub version: u32,
    /// Script text.
    pub text: String,
    /// When it was saved.
    pub created_at: DateTime<Utc>,
    /// When it was published (`None` for the draft).
    pub published_at: Option<DateTime<Utc>>,
}

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

/// The lease of a running execution: the process that runs it and until
/// when (milliseconds since the Unix epoch). No owner: a run of a server
/// from before leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The execution.
    pub id: String,
    /// The worker id of the process that runs it.
    pub owner: Option<String>,
    /// When the lease ends unless extended.
    pub until: Option<i64>,
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

/// A webhook payload as received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookRow {
    /// When it arrived (RFC 3339).
    pub received_at: String,
    /// The sender's `webhook-id`, or one given on receipt.
    pub webhook_id: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// The query string of the request, without `?`.
    pub querystring: String,
    /// The body (UTF-8).
    pub body: String,
}

/// Where a payload went: its batch, and the execution once it closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceipt {
    /// The batch.
    pub batch_id: String,
    /// When the batch closes (or closed).
    pub closes_at: DateTime<Utc>,
    /// The execution the batch became, once closed.
    pub execution_id: Option<String>,
    /// The payload had been received before (same `webhook-id`).
    pub duplicate: bool,
    /// For a duplicate: the first one had a different body.
    pub differs: bool,
}

/// A batch of payloads that has not become an execution yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBatch {
    /// The batch.
    pub id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// Its connector.
    pub connector_id: String,
}

/// An execution row before its document is parsed.
struct RawExecution {
    workspace_id: String,
    connector_id: String,
    definition: String,
    script: String,
    input_name: Option<String>,
    document: String,
}

/// Filters of an execution list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
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

/// The state database.
pub struct Db {
    conn: Mutex<Connection>,
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or_else(|_| DateTime::<Utc>::MIN_UTC, |t| t.with_timezone(&Utc))
}

// Writes shared by single calls and the transactions that group them.

fn insert_object(conn: &Connection, workspace_id: &str, name: &str, definition: &str) -> Result<bool> {
    let n = conn.execute(
        "INSERT INTO objects (workspace_id, name, definition, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT DO NOTHING",
        params![workspace_id, name, definition, now()],
    )?;
    Ok(n > 0)
}

fn insert_file(conn: &Connection, workspace_id: &str, file: &FileRow) -> Result<()> {
    conn.execute(
        "INSERT INTO files (workspace_id, sha256, size, name, content_type, created_at, uploaded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT DO UPDATE SET uploaded_at = excluded.uploaded_at",
        params![
            workspace_id,
            file.sha256,
            file.size as i64,
            file.name,
            file.content_type,
            file.created_at.to_rfc3339()
        ],
    )?;
    Ok(())
}

fn note_uploader(conn: &Connection, workspace_id: &str, sha256: &str, key_id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO file_uploaders (workspace_id, sha256, key_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        [workspace_id, sha256, key_id],
    )?;
    Ok(())
}

/// True when the version is new (an existing one is left as it is).
fn insert_plugin(conn: &Connection, workspace_id: &str, plugin: &PluginRow) -> Result<bool> {
    Ok(conn.execute(
        "INSERT INTO plugins (workspace_id, name, version, sha256, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT DO NOTHING",
        params![
            workspace_id,
            plugin.name,
            plugin.version,
            plugin.sha256,
            plugin.size as i64,
            plugin.created_at.to_rfc3339()
        ],
    )? == 1)
}

/// False when the api_name is taken. Writes two rows: call it inside a
/// transaction.
fn insert_connector(conn: &Connection, row: &ConnectorRow, draft: &str) -> Result<bool> {
    let n = conn.execute(
        "INSERT INTO connectors (id, workspace_id, api_name, definition, sample_file_id, draft_version, live_version, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, NULL, ?6, ?6) ON CONFLICT DO NOTHING",
        params![row.id, row.workspace_id, row.api_name, row.definition, row.sample_file_id, now()],
    )?;
    if n == 0 {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO sql_versions (connector_id, version, text, created_at) VALUES (?1, 1, ?2, ?3)",
        params![row.id, draft, now()],
    )?;
    Ok(true)
}

/// False when the new api_name is taken.
fn update_connector(conn: &Connection, row: &ConnectorRow) -> Result<bool> {
    let r = conn.execute(
        "UPDATE connectors SET api_name = ?2, definition = ?3, sample_file_id = ?4, updated_at = ?5 WHERE id = ?1",
        params![row.id, row.api_name, row.definition, row.sample_file_id, now()],
    );
    match r {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The draft's version. Writes two rows: call it inside a transaction.
fn save_draft(conn: &Connection, connector_id: &str, text: &str) -> Result<u32> {
    let draft: u32 = conn.query_row(
        "SELECT draft_version FROM connectors WHERE id = ?1",
        [connector_id],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE sql_versions SET text = ?3, created_at = ?4 WHERE connector_id = ?1 AND version = ?2",
        params![connector_id, draft, text, now()],
    )?;
    conn.execute(
        "UPDATE connectors SET updated_at = ?2 WHERE id = ?1",
        params![connector_id, now()],
    )?;
    Ok(draft)
}

impl Db {
    /// Opens (creating when missing) the database and applies migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        // WAL: readers do not block the writer; NORMAL sync is durable across
        // process crashes (only an OS crash can lose the last transactions).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let db = Self { conn: Mutex::new(conn) };
        db.migrate()?;
        Ok(db)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let known = MIGRATIONS.len() as i64;
        loop {
            // Read and apply under the write lock: processes starting
            // together on one data directory apply each migration once.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if found > known {
                return Err(StateError::TooNew { found, known });
            }
            let Some(sql) = MIGRATIONS.get(found as usize) else {
                return Ok(());
            };
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", found + 1)?;
            tx.commit()?;
        }
    }

    // ----- workspaces -------------------------------------------------------

    /// The workspace called `name`, created when new.
    pub fn workspace_named(&self, name: &str) -> Result<Workspace> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO workspaces (id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![uuid::Uuid::now_v7().to_string(), name, now()],
        )?;
        Ok(
            conn.query_row("SELECT id, name FROM workspaces WHERE name = ?1", [name], |r| {
                Ok(Workspace {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })?,
        )
    }

    /// The workspace with this id or name.
    pub fn workspace(&self, id_or_name: &str) -> Result<Option<Workspace>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, name FROM workspaces WHERE id = ?1 OR name = ?1",
                [id_or_name],
                |r| {
                    Ok(Workspace {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every workspace.
    pub fn workspaces(&self) -> Result<Vec<Workspace>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, name FROM workspaces ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(Workspace {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether any workspace exists.
    pub fn is_empty(&self) -> Result<bool> {
        let n: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM workspaces", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    // ----- keys -------------------------------------------------------------

    /// Stores a key.
    pub fn insert_key(&self, key: &KeyRow) -> Result<()> {
        let connectors = key.connectors.as_ref().map(serde_json::to_string).transpose()?;
        self.lock().execute(
            "INSERT INTO api_keys (id, workspace_id, name, role, connectors, secret_sha256, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id,
                key.workspace_id,
                key.name,
                key.role,
                connectors,
                key.secret_sha256,
                key.created_at.to_rfc3339()
            ],
        )?;
        Ok(())
    }

    fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
        let connectors: Option<String> = r.get(4)?;
        Ok(KeyRow {
            id: r.get(0)?,
            workspace_id: r.get(1)?,
            name: r.get(2)?,
            role: r.get(3)?,
            connectors: connectors.and_then(|c| serde_json::from_str(&c).ok()),
            secret_sha256: r.get(5)?,
            created_at: time(&r.get::<_, String>(6)?),
            revoked_at: r.get::<_, Option<String>>(7)?.map(|t| time(&t)),
        })
    }

    const KEY_COLUMNS: &str = "id, workspace_id, name, role, connectors, secret_sha256, created_at, revoked_at";

    /// The key whose secret hashes to `sha256`.
    pub fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM api_keys WHERE secret_sha256 = ?1",
            Self::KEY_COLUMNS
        ))?;
        Ok(stmt.query_row([sha256], Self::key_row).optional()?)
    }

    /// The workspace's keys, newest first.
    pub fn keys(&self, workspace_id: &str) -> Result<Vec<KeyRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM api_keys WHERE workspace_id = ?1 ORDER BY id DESC",
            Self::KEY_COLUMNS
        ))?;
        let rows = stmt.query_map([workspace_id], Self::key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a key of the workspace; false when there is no such key.
    pub fn revoke_key(&self, workspace_id: &str, id: &str) -> Result<bool> {
        let n = self.lock().execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3) WHERE workspace_id = ?1 AND id = ?2",
            params![workspace_id, id, now()],
        )?;
        Ok(n > 0)
    }

    // ----- objects ----------------------------------------------------------

    /// The workspace's object definitions (JSON), by name.
    pub fn objects(&self, workspace_id: &str) -> Result<Vec<ObjectRow>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map([workspace_id], Self::object_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn object_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectRow> {
        Ok(ObjectRow {
            definition: r.get(0)?,
            created_at: time(&r.get::<_, String>(1)?),
            updated_at: time(&r.get::<_, String>(2)?),
        })
    }

    /// The workspace's object definitions, parsed (what load steps write to).
    pub fn object_defs(&self, workspace_id: &str) -> Result<Objects> {
        let mut objects = Vec::new();
        for o in self.objects(workspace_id)? {
            objects.push(serde_json::from_str(&o.definition)?);
        }
        Ok(Objects { objects })
    }

    /// One object definition.
    pub fn object(&self, workspace_id: &str, name: &str) -> Result<Option<ObjectRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                Self::object_row,
            )
            .optional()?)
    }

    /// Creates an object; false when one of that name exists.
    pub fn insert_object(&self, workspace_id: &str, name: &str, definition: &str) -> Result<bool> {
        insert_object(&self.lock(), workspace_id, name, definition)
    }

    /// Replaces an object's definition.
    pub fn update_object(&self, workspace_id: &str, name: &str, definition: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE objects SET definition = ?3, updated_at = ?4 WHERE workspace_id = ?1 AND name = ?2",
            params![workspace_id, name, definition, now()],
        )?;
        Ok(())
    }

    // ----- files ------------------------------------------------------------

    /// Records an uploaded file; an earlier upload of the same content keeps
    /// its name and type, and counts as uploaded now for retention.
    /// Returns the stored row.
    pub fn insert_file(&self, workspace_id: &str, file: &FileRow) -> Result<FileRow> {
        insert_file(&self.lock(), workspace_id, file)?;
        self.file(workspace_id, &file.sha256)?
            .ok_or_else(|| StateError::from(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Notes that key `key_id` uploaded the file.
    pub fn note_uploader(&self, workspace_id: &str, sha256: &str, key_id: &str) -> Result<()> {
        note_uploader(&self.lock(), workspace_id, sha256, key_id)
    }

    /// Whether a key limited to connectors `only` (ids or api_names)
    /// reaches the file: it uploaded it, or it is the sample or an
    /// execution's input of one of those connectors.
    pub fn file_reached(&self, workspace_id: &str, sha256: &str, key_id: &str, only: &[String]) -> Result<bool> {
        let only = serde_json::Value::from(only.to_vec()).to_string();
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM file_uploaders WHERE workspace_id = ?1 AND sha256 = ?2 AND key_id = ?3)
                 OR EXISTS (SELECT 1 FROM connectors c WHERE c.workspace_id = ?1 AND c.sample_file_id = ?2
                            AND (c.id IN (SELECT value FROM json_each(?4)) OR c.api_name IN (SELECT value FROM json_each(?4))))
                 OR EXISTS (SELECT 1 FROM executions e JOIN connectors c ON c.id = e.connector_id
                            WHERE e.workspace_id = ?1 AND e.source_file_id = ?2
                            AND (c.id IN (SELECT value FROM json_each(?4)) OR c.api_name IN (SELECT value FROM json_each(?4))))",
            params![workspace_id, sha256, key_id, only],
            |r| r.get(0),
        )?)
    }

    /// A file of the workspace.
    pub fn file(&self, workspace_id: &str, sha256: &str) -> Result<Option<FileRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT sha256, size, name, content_type, created_at FROM files WHERE workspace_id = ?1 AND sha256 = ?2",
                [workspace_id, sha256],
                |r| {
                    Ok(FileRow {
                        sha256: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        name: r.get(2)?,
                        content_type: r.get(3)?,
                        created_at: time(&r.get::<_, String>(4)?),
                    })
                },
            )
            .optional()?)
    }

    /// Deletes a file of the workspace, and which keys uploaded it, unless
    /// a connector uses it as its sample or an execution that has not ended
    /// reads it.
    pub fn delete_file(&self, workspace_id: &str, sha256: &str) -> Result<FileDeletion> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let sample: Option<String> = tx
            .query_row(
                "SELECT api_name FROM connectors WHERE workspace_id = ?1 AND sample_file_id = ?2 LIMIT 1",
                [workspace_id, sha256],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(connector) = sample {
            return Ok(FileDeletion::InUse(format!(
                "it is the sample of connector `{connector}`"
            )));
        }
        let reading: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT id FROM executions WHERE workspace_id = ?1 AND source_file_id = ?2
                     AND status NOT IN {ENDED} LIMIT 1"
                ),
                [workspace_id, sha256],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(execution) = reading {
            return Ok(FileDeletion::InUse(format!(
                "execution `{execution}` reads it and has not ended"
            )));
        }
        let deleted = tx.execute(
            "DELETE FROM files WHERE workspace_id = ?1 AND sha256 = ?2",
            [workspace_id, sha256],
        )?;
        tx.execute(
            "DELETE FROM file_uploaders WHERE workspace_id = ?1 AND sha256 = ?2",
            [workspace_id, sha256],
        )?;
        tx.commit()?;
        Ok(if deleted == 0 {
            FileDeletion::Missing
        } else {
            FileDeletion::Deleted
        })
    }

    /// Whether any workspace holds the content, or a plugin is it.
    pub fn content_in_use(&self, sha256: &str) -> Result<bool> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM files WHERE sha256 = ?1) OR EXISTS (SELECT 1 FROM plugins WHERE sha256 = ?1)",
            [sha256],
            |r| r.get(0),
        )?)
    }

    /// Files of the workspace last uploaded before `before` that no
    /// connector uses as its sample and no execution read.
    pub fn unused_files_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT f.sha256 FROM files f WHERE f.workspace_id = ?1 AND f.uploaded_at < ?2
             AND NOT EXISTS (SELECT 1 FROM connectors c WHERE c.workspace_id = ?1 AND c.sample_file_id = f.sha256)
             AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.workspace_id = ?1 AND e.source_file_id = f.sha256)",
        )?;
        let rows = stmt.query_map(params![workspace_id, before.to_rfc3339()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ----- plugins ----------------------------------------------------------

    const PLUGIN_COLUMNS: &str = "name, version, sha256, size, created_at";

    fn plugin_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PluginRow> {
        Ok(PluginRow {
            name: r.get(0)?,
            version: r.get(1)?,
            sha256: r.get(2)?,
            size: r.get::<_, i64>(3)? as u64,
            created_at: time(&r.get::<_, String>(4)?),
        })
    }

    /// Publishes `name@version`. A version is immutable: publishing it again
    /// with the same content returns the stored row (`false`), with other
    /// content is refused with the stored row.
    pub fn insert_plugin(&self, workspace_id: &str, plugin: &PluginRow) -> Result<(PluginRow, bool)> {
        let inserted = insert_plugin(&self.lock(), workspace_id, plugin)?;
        // A row is never deleted, so the one just written or found is there.
        let stored = self
            .plugin(workspace_id, &plugin.name, &plugin.version)?
            .ok_or_else(|| StateError::from(rusqlite::Error::QueryReturnedNoRows))?;
        Ok((stored, inserted))
    }

    /// Sets secret `name` of the workspace to `sealed`; whether it is new.
    pub fn put_secret(&self, workspace_id: &str, name: &str, sealed: &[u8], now: DateTime<Utc>) -> Result<bool> {
        let conn = self.lock();
        let existed: bool = conn
            .query_row(
                "SELECT 1 FROM secrets WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        conn.execute(
            "INSERT INTO secrets (workspace_id, name, sealed, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (workspace_id, name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            params![workspace_id, name, sealed, now.to_rfc3339()],
        )?;
        Ok(!existed)
    }

    /// The workspace's secrets, by name.
    pub fn secrets(&self, workspace_id: &str) -> Result<Vec<SecretRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT name, sealed, created_at, updated_at FROM secrets WHERE workspace_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([workspace_id], Self::secret_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Secret `name` of the workspace.
    pub fn secret(&self, workspace_id: &str, name: &str) -> Result<Option<SecretRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT name, sealed, created_at, updated_at FROM secrets WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                Self::secret_row,
            )
            .optional()?)
    }

    /// Some secret of any workspace, with its workspace: what a start checks
    /// its secrets key against.
    pub fn any_secret(&self) -> Result<Option<(String, SecretRow)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT workspace_id, name, sealed, created_at, updated_at FROM secrets LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        SecretRow {
                            name: r.get(1)?,
                            sealed: r.get(2)?,
                            created_at: time(&r.get::<_, String>(3)?),
                            updated_at: time(&r.get::<_, String>(4)?),
                        },
                    ))
                },
            )
            .optional()?)
    }

    /// Deletes secret `name`; whether it was there.
    pub fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool> {
        Ok(self.lock().execute(
            "DELETE FROM secrets WHERE workspace_id = ?1 AND name = ?2",
            [workspace_id, name],
        )? == 1)
    }

    fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
        Ok(SecretRow {
            name: r.get(0)?,
            sealed: r.get(1)?,
            created_at: time(&r.get::<_, String>(2)?),
            updated_at: time(&r.get::<_, String>(3)?),
        })
    }

    /// The workspace's plugins, by name and version.
    pub fn plugins(&self, workspace_id: &str) -> Result<Vec<PluginRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM plugins WHERE workspace_id = ?1 ORDER BY name, version",
            Self::PLUGIN_COLUMNS
        ))?;
        let rows = stmt.query_map([workspace_id], Self::plugin_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// A published plugin by `name@version`.
    pub fn plugin(&self, workspace_id: &str, name: &str, version: &str) -> Result<Option<PluginRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM plugins WHERE workspace_id = ?1 AND name = ?2 AND version = ?3",
                    Self::PLUGIN_COLUMNS
                ),
                [workspace_id, name, version],
                Self::plugin_row,
            )
            .optional()?)
    }

    /// The published plugin a reference names.
    pub fn plugin_by_ref(&self, workspace_id: &str, plugin: &PluginRef) -> Result<Option<PluginRow>> {
        match plugin {
            PluginRef::Named { name, version } => self.plugin(workspace_id, name, version),
            PluginRef::Sha256(hex) => self.plugin_by_sha(workspace_id, hex),
        }
    }

    /// A published plugin by content.
    pub fn plugin_by_sha(&self, workspace_id: &str, sha256: &str) -> Result<Option<PluginRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM plugins WHERE workspace_id = ?1 AND sha256 = ?2 LIMIT 1",
                    Self::PLUGIN_COLUMNS
                ),
                [workspace_id, sha256],
                Self::plugin_row,
            )
            .optional()?)
    }

    // ----- connectors -------------------------------------------------------

    const CONNECTOR_COLUMNS: &str =
        "id, workspace_id, api_name, definition, sample_file_id, draft_version, live_version, created_at, updated_at";

    fn connector_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectorRow> {
        Ok(ConnectorRow {
            id: r.get(0)?,
            workspace_id: r.get(1)?,
            api_name: r.get(2)?,
            definition: r.get(3)?,
            sample_file_id: r.get(4)?,
            draft_version: r.get(5)?,
            live_version: r.get(6)?,
            created_at: time(&r.get::<_, String>(7)?),
            updated_at: time(&r.get::<_, String>(8)?),
        })
    }

    /// Creates a connector with its first draft; false when the api_name is taken.
    pub fn insert_connector(&self, row: &ConnectorRow, draft: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if !insert_connector(&tx, row, draft)? {
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    /// The connector with this id or api_name in the workspace.
    pub fn connector(&self, workspace_id: &str, id_or_name: &str) -> Result<Option<ConnectorRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM connectors WHERE workspace_id = ?1 AND (id = ?2 OR api_name = ?2)",
                    Self::CONNECTOR_COLUMNS
                ),
                [workspace_id, id_or_name],
                Self::connector_row,
            )
            .optional()?)
    }

    /// The connector with this id, in any workspace (workers use it).
    pub fn connector_by_id(&self, id: &str) -> Result<Option<ConnectorRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {} FROM connectors WHERE id = ?1", Self::CONNECTOR_COLUMNS),
                [id],
                Self::connector_row,
            )
            .optional()?)
    }

    /// A page of the workspace's connectors, newest first, after `cursor`.
    pub fn connectors(
        &self,
        workspace_id: &str,
        only: Option<&[String]>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConnectorRow>> {
        // `only` (ids or api_names) filters in the query, so a page is full
        // whenever more of those connectors follow.
        let only = only.map(|names| serde_json::Value::from(names.to_vec()).to_string());
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM connectors WHERE workspace_id = ?1 AND (?2 IS NULL OR id < ?2) \
             AND (?4 IS NULL OR id IN (SELECT value FROM json_each(?4)) OR api_name IN (SELECT value FROM json_each(?4))) \
             ORDER BY id DESC LIMIT ?3",
            Self::CONNECTOR_COLUMNS
        ))?;
        let rows = stmt.query_map(
            params![workspace_id, cursor, i64::try_from(limit).unwrap_or(i64::MAX), only],
            Self::connector_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Saves a connector's definition, api_name and sample file; false when
    /// the new api_name is taken.
    pub fn update_connector(&self, row: &ConnectorRow) -> Result<bool> {
        update_connector(&self.lock(), row)
    }

    /// Deletes a connector and its SQL versions (its executions stay).
    pub fn delete_connector(&self, id: &str) -> Result<()> {
        self.lock().execute("DELETE FROM connectors WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Replaces the draft's text.
    pub fn save_draft(&self, connector_id: &str, text: &str) -> Result<u32> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let draft = save_draft(&tx, connector_id, text)?;
        tx.commit()?;
        Ok(draft)
    }

    /// Writes what a package push brings in one transaction: its new
    /// objects, its new plugin versions, its sample file and the connector
    /// with its draft. Nothing is written when any part is refused.
    pub fn write_package(&self, workspace_id: &str, push: &PackageWrite) -> Result<Result<(), PushRefused>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (name, definition) in &push.objects {
            insert_object(&tx, workspace_id, name, definition)?;
        }
        for plugin in &push.plugins {
            if !insert_plugin(&tx, workspace_id, plugin)? {
                let stored: String = tx.query_row(
                    "SELECT sha256 FROM plugins WHERE workspace_id = ?1 AND name = ?2 AND version = ?3",
                    [workspace_id, &plugin.name, &plugin.version],
                    |r| r.get(0),
                )?;
                if stored != plugin.sha256 {
                    return Ok(Err(PushRefused::PluginTaken(format!(
                        "{}@{}",
                        plugin.name, plugin.version
                    ))));
                }
            }
        }
        if let Some((file, key_id)) = &push.sample {
            insert_file(&tx, workspace_id, file)?;
            note_uploader(&tx, workspace_id, &file.sha256, key_id)?;
        }
        match &push.connector {
            ConnectorWrite::Insert { row, draft } => {
                if !insert_connector(&tx, row, draft)? {
                    return Ok(Err(PushRefused::NameTaken));
                }
            }
            ConnectorWrite::Update { row, draft } => {
                if !update_connector(&tx, row)? {
                    return Ok(Err(PushRefused::NameTaken));
                }
                if let Some(draft) = draft {
                    save_draft(&tx, &row.id, draft)?;
                }
            }
        }
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Makes draft `version` live and starts a new draft with the same
    /// text; refused (false) when the draft moved on meanwhile.
    pub fn publish(&self, connector_id: &str, version: u32) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE connectors SET live_version = draft_version, draft_version = draft_version + 1, updated_at = ?3
             WHERE id = ?1 AND draft_version = ?2",
            params![connector_id, version, now()],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "UPDATE sql_versions SET published_at = ?3 WHERE connector_id = ?1 AND version = ?2",
            params![connector_id, version, now()],
        )?;
        tx.execute(
            "INSERT INTO sql_versions (connector_id, version, text, created_at)
             SELECT connector_id, version + 1, text, ?3 FROM sql_versions WHERE connector_id = ?1 AND version = ?2",
            params![connector_id, version, now()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Every SQL version of a connector, newest first.
    pub fn sql_versions(&self, connector_id: &str) -> Result<Vec<SqlVersion>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT version, text, created_at, published_at FROM sql_versions WHERE connector_id = ?1 ORDER BY version DESC",
        )?;
        let rows = stmt.query_map([connector_id], Self::sql_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn sql_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SqlVersion> {
        Ok(SqlVersion {
            version: r.get(0)?,
            text: r.get(1)?,
            created_at: time(&r.get::<_, String>(2)?),
            published_at: r.get::<_, Option<String>>(3)?.map(|t| time(&t)),
        })
    }

    /// One SQL version.
    pub fn sql_version(&self, connector_id: &str, version: u32) -> Result<Option<SqlVersion>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT version, text, created_at, published_at FROM sql_versions WHERE connector_id = ?1 AND version = ?2",
                params![connector_id, version],
                Self::sql_row,
            )
            .optional()?)
    }

    // ----- executions -------------------------------------------------------

    /// Stores a new execution.
    pub fn insert_execution(&self, row: &ExecutionRow) -> Result<()> {
        Self::insert_execution_on(&self.lock(), row)
    }

    /// Stores a new execution under an idempotency key, both or neither:
    /// when the key is already taken (a concurrent retry got there first)
    /// nothing is stored and its first use is returned. Keys older than
    /// `expired` are forgotten first.
    pub fn insert_execution_once(
        &self,
        row: &ExecutionRow,
        key: &IdempotencyKey,
        expired: DateTime<Utc>,
    ) -> Result<Option<KeyUse>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            [expired.to_rfc3339()],
        )?;
        let taken = tx.execute(
            "INSERT INTO idempotency_keys (workspace_id, connector_id, key, fingerprint, execution_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (connector_id, key) DO NOTHING",
            params![
                row.workspace_id,
                row.connector_id,
                key.key,
                key.fingerprint,
                row.document.id,
                now()
            ],
        )? == 0;
        if taken {
            drop(tx);
            return Self::key_use_on(&conn, &row.connector_id, &key.key, expired);
        }
        Self::insert_execution_on(&tx, row)?;
        tx.commit()?;
        Ok(None)
    }

    /// The first use of an idempotency key on a connector, unless it is
    /// older than `expired`.
    pub fn key_use(&self, connector_id: &str, key: &str, expired: DateTime<Utc>) -> Result<Option<KeyUse>> {
        Self::key_use_on(&self.lock(), connector_id, key, expired)
    }

    /// The name the latest execution of `connector_id` on the file
    /// `sha256` knew its input by.
    pub fn input_name_of(&self, connector_id: &str, sha256: &str) -> Result<Option<String>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT input_name FROM executions
                 WHERE connector_id = ?1 AND source_file_id = ?2 AND input_name IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                params![connector_id, sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    // ----- webhooks -------------------------------------------------------

    /// Stores a payload in its connector's open batch, opening one that
    /// closes after `window` when there is none (a zero window opens one
    /// per payload). A batch past its time takes no more payloads, so the
    /// batcher can close it, unless the connector is `buffering` (not
    /// operational): then its open batch holds everything until it runs. A
    /// `webhook_id` seen before stores nothing and gives the first receipt
    /// again.
    pub fn receive_webhook(
        &self,
        workspace_id: &str,
        connector_id: &str,
        payload: &WebhookRow,
        signed: bool,
        window: std::time::Duration,
        buffering: bool,
    ) -> Result<WebhookReceipt> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let seen = tx
            .query_row(
                "SELECT b.id, b.closes_at, b.execution_id, w.body = ?3 FROM webhooks w
                 JOIN webhook_batches b ON b.id = w.batch_id
                 WHERE w.connector_id = ?1 AND w.signed = ?4 AND w.webhook_id = ?2",
                params![connector_id, payload.webhook_id, payload.body, signed],
                |r| {
                    Ok(WebhookReceipt {
                        batch_id: r.get(0)?,
                        closes_at: time(&r.get::<_, String>(1)?),
                        execution_id: r.get(2)?,
                        duplicate: true,
                        differs: !r.get::<_, bool>(3)?,
                    })
                },
            )
            .optional()?;
        if let Some(receipt) = seen {
            return Ok(receipt);
        }
        let open = if window.is_zero() {
            None
        } else {
            tx.query_row(
                "SELECT id, closes_at FROM webhook_batches WHERE connector_id = ?1 AND execution_id IS NULL
                   AND (?2 OR closes_at > ?3)
                 ORDER BY opened_at LIMIT 1",
                params![connector_id, buffering, Utc::now().to_rfc3339()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
        };
        let (batch_id, closes_at) = match open {
            Some((id, closes_at)) => (id, time(&closes_at)),
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                let opened = Utc::now();
                let closes_at = opened + chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX);
                tx.execute(
                    "INSERT INTO webhook_batches (id, workspace_id, connector_id, opened_at, closes_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, workspace_id, connector_id, opened.to_rfc3339(), closes_at.to_rfc3339()],
                )?;
                (id, closes_at)
            }
        };
        tx.execute(
            "INSERT INTO webhooks (connector_id, signed, webhook_id, batch_id, received_at, content_type, querystring, body)
             VALUES (?1, ?8, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                connector_id,
                payload.webhook_id,
                batch_id,
                payload.received_at,
                payload.content_type,
                payload.querystring,
                payload.body,
                signed
            ],
        )?;
        tx.commit()?;
        Ok(WebhookReceipt {
            batch_id,
            closes_at,
            execution_id: None,
            duplicate: false,
            differs: false,
        })
    }

    /// Open batches due at `now`, oldest first.
    pub fn due_batches(&self, now: DateTime<Utc>) -> Result<Vec<OpenBatch>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, workspace_id, connector_id FROM webhook_batches
             WHERE execution_id IS NULL AND closes_at <= ?1 ORDER BY closes_at",
        )?;
        let rows = stmt.query_map([now.to_rfc3339()], |r| {
            Ok(OpenBatch {
                id: r.get(0)?,
                workspace_id: r.get(1)?,
                connector_id: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the next open batch is due, if any is open.
    pub fn next_batch_due(&self) -> Result<Option<DateTime<Utc>>> {
        let conn = self.lock();
        let next: Option<String> = conn.query_row(
            "SELECT MIN(closes_at) FROM webhook_batches WHERE execution_id IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(next.map(|t| time(&t)))
    }

    /// The payloads of a batch, in the order they arrived.
    pub fn batch_payloads(&self, batch_id: &str) -> Result<Vec<WebhookRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT received_at, webhook_id, content_type, querystring, body FROM webhooks
             WHERE batch_id = ?1 ORDER BY received_at, rowid",
        )?;
        let rows = stmt.query_map([batch_id], |r| {
            Ok(WebhookRow {
                received_at: r.get(0)?,
                webhook_id: r.get(1)?,
                content_type: r.get(2)?,
                querystring: r.get(3)?,
                body: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Closes a batch of `payloads` payloads into the execution `row`, both
    /// or neither; false when the batch was closed already, or when a
    /// payload joined it after its payloads were read (the execution's input
    /// would miss it: read them again).
    pub fn close_batch(&self, batch_id: &str, payloads: usize, row: &ExecutionRow) -> Result<bool> {
        self.insert_execution_claiming(
            "UPDATE webhook_batches SET execution_id = ?2
             WHERE id = ?1 AND execution_id IS NULL
               AND (SELECT count(*) FROM webhooks WHERE batch_id = ?1) = ?3",
            params![batch_id, row.document.id, payloads],
            row,
        )
    }

    // ----- schedules ------------------------------------------------------

    /// Every schedule connector, in every workspace.
    pub fn schedule_connectors(&self) -> Result<Vec<ConnectorRow>> {
        self.connectors_where("json_extract(definition, '$.type') = 'schedule'", [])
    }

    /// The latest tick of a schedule connector that ran.
    pub fn last_tick(&self, connector_id: &str) -> Result<Option<DateTime<Utc>>> {
        let conn = self.lock();
        let last: Option<String> = conn.query_row(
            "SELECT MAX(tick_at) FROM schedule_ticks WHERE connector_id = ?1",
            [connector_id],
            |r| r.get(0),
        )?;
        Ok(last.map(|t| time(&t)))
    }

    /// The latest tick before `before` whose run succeeded (fully or in
    /// part): where the window of the next tick starts.
    pub fn last_successful_tick(&self, connector_id: &str, before: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let conn = self.lock();
        let last: Option<String> = conn.query_row(
            "SELECT MAX(t.tick_at) FROM schedule_ticks AS t JOIN executions AS e ON e.id = t.execution_id
             WHERE t.connector_id = ?1 AND t.tick_at < ?2 AND e.status IN ('success', 'partial_success')",
            params![connector_id, before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)],
            |r| r.get(0),
        )?;
        Ok(last.map(|t| time(&t)))
    }

    /// Records a tick with its execution, both or neither; false when the
    /// tick was recorded before.
    pub fn record_tick(&self, connector_id: &str, tick: DateTime<Utc>, row: &ExecutionRow) -> Result<bool> {
        self.insert_execution_claiming(
            "INSERT INTO schedule_ticks (connector_id, tick_at, execution_id) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![
                connector_id,
                tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                row.document.id
            ],
            row,
        )
    }

    /// Stores `row` in the transaction of `claim`, a statement that changes
    /// one row when what it claims is still free; false (nothing stored)
    /// when it changed none.
    fn insert_execution_claiming(
        &self,
        claim: &str,
        params: impl rusqlite::Params,
        row: &ExecutionRow,
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if tx.execute(claim, params)? == 0 {
            return Ok(false);
        }
        Self::insert_execution_on(&tx, row)?;
        tx.commit()?;
        Ok(true)
    }

    /// Connectors of any workspace matching `condition` (SQL over the
    /// `connectors` table).
    fn connectors_where(&self, condition: &str, params: impl rusqlite::Params) -> Result<Vec<ConnectorRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM connectors WHERE {condition}",
            Self::CONNECTOR_COLUMNS
        ))?;
        let rows = stmt.query_map(params, Self::connector_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn key_use_on(conn: &Connection, connector_id: &str, key: &str, expired: DateTime<Utc>) -> Result<Option<KeyUse>> {
        Ok(conn
            .query_row(
                "SELECT fingerprint, execution_id FROM idempotency_keys
                 WHERE connector_id = ?1 AND key = ?2 AND created_at >= ?3",
                params![connector_id, key, expired.to_rfc3339()],
                |r| {
                    Ok(KeyUse {
                        fingerprint: r.get(0)?,
                        execution_id: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn insert_execution_on(conn: &Connection, row: &ExecutionRow) -> Result<()> {
        let d = &row.document;
        conn.execute(
            "INSERT INTO executions (id, workspace_id, connector_id, status, trigger_type, is_dry_run, source_file_id,
                                     input_name, definition, script, document, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                d.id,
                row.workspace_id,
                row.connector_id,
                d.status.as_str(),
                d.trigger_type.as_str(),
                d.is_dry_run,
                d.source_file_id,
                row.input_name,
                row.definition,
                row.script,
                serde_json::to_string(d)?,
                d.created_at.to_rfc3339(),
            ],
        )?;
        Ok(())
    }

    /// Saves an execution's document; with `from`, only while the stored
    /// status is still `from` (false otherwise).
    pub fn save_document(&self, doc: &Execution, from: Option<Status>) -> Result<bool> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "UPDATE executions SET status = ?2, document = ?3 WHERE id = ?1 AND (?4 IS NULL OR status = ?4)",
        )?;
        let n = stmt.execute(params![
            doc.id,
            doc.status.as_str(),
            serde_json::to_string(doc)?,
            from.map(Status::as_str)
        ])?;
        Ok(n > 0)
    }

    /// Claims a queued execution for `owner`, leased until `lease_until`:
    /// it becomes `running` with `doc`, unless it has left the queue or its
    /// connector already runs `max` executions in any process (false).
    pub fn claim(&self, doc: &Execution, connector_id: &str, max: u32, owner: &str, lease_until: i64) -> Result<bool> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE executions SET status = ?2, document = ?3, owner = ?4, lease_until = ?5
             WHERE id = ?1 AND status = 'queued'
               AND (SELECT count(*) FROM executions WHERE connector_id = ?6 AND status IN {LEASED}) < ?7"
        ))?;
        let n = stmt.execute(params![
            doc.id,
            doc.status.as_str(),
            serde_json::to_string(doc)?,
            owner,
            lease_until,
            connector_id,
            max
        ])?;
        Ok(n > 0)
    }

    /// Saves the document of an execution `owner` runs; false once the run
    /// is no longer its own (another process resolved it).
    pub fn save_owned(&self, doc: &Execution, owner: &str) -> Result<bool> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE executions SET status = ?2, document = ?3 WHERE id = ?1 AND owner = ?4 AND status IN {LEASED}"
        ))?;
        let n = stmt.execute(params![doc.id, doc.status.as_str(), serde_json::to_string(doc)?, owner])?;
        Ok(n > 0)
    }

    /// Extends `owner`'s leases on `ids` to `until`; the ids whose lease
    /// it no longer holds.
    pub fn extend_leases(&self, owner: &str, ids: &[String], until: i64) -> Result<Vec<String>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut lost = Vec::new();
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE executions SET lease_until = ?3 WHERE id = ?1 AND owner = ?2 AND status IN {LEASED}"
            ))?;
            for id in ids {
                if stmt.execute(params![id, owner, until])? == 0 {
                    lost.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(lost)
    }

    /// The executions `owner` runs whose cancel was asked (of any process).
    pub fn cancel_requests(&self, owner: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id FROM executions WHERE owner = ?1 AND cancel_requested = 1 AND status IN {LEASED}"
        ))?;
        let rows = stmt.query_map([owner], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Asks whichever process runs the execution to cancel it; false when
    /// it does not run.
    pub fn request_cancel(&self, id: &str) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!("UPDATE executions SET cancel_requested = 1 WHERE id = ?1 AND status IN {LEASED}"),
            [id],
        )?;
        Ok(n > 0)
    }

    /// Every running (or canceling) execution's lease.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, owner, lease_until FROM executions WHERE status IN {LEASED} ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(Lease {
                id: r.get(0)?,
                owner: r.get(1)?,
                until: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Takes a lost run over for resolving it, only while its lease is
    /// still `seen` (its owner did not extend it meanwhile): its owner
    /// becomes `by`, whose lease has already expired (so that a resolver
    /// that stops half-way leaves it to the next).
    pub fn take_over(&self, seen: &Lease, by: &str) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!(
                "UPDATE executions SET owner = ?4, lease_until = 0
                 WHERE id = ?1 AND status IN {LEASED} AND owner IS ?2 AND lease_until IS ?3"
            ),
            params![seen.id, seen.owner, seen.until, by],
        )?;
        Ok(n > 0)
    }

    fn execution_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawExecution> {
        Ok(RawExecution {
            workspace_id: r.get(0)?,
            connector_id: r.get(1)?,
            definition: r.get(2)?,
            script: r.get(3)?,
            input_name: r.get(4)?,
            document: r.get(5)?,
        })
    }

    /// An execution by id (any workspace; callers check tenancy).
    pub fn execution(&self, id: &str) -> Result<Option<ExecutionRow>> {
        let found = {
            let conn = self.lock();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT workspace_id, connector_id, definition, script, input_name, {DOCUMENT}
                 FROM executions WHERE id = ?1"
            ))?;
            stmt.query_row([id], Self::execution_row).optional()?
        };
        found
            .map(|raw| {
                Ok(ExecutionRow {
                    document: serde_json::from_str(&raw.document)?,
                    workspace_id: raw.workspace_id,
                    connector_id: raw.connector_id,
                    definition: raw.definition,
                    script: raw.script,
                    input_name: raw.input_name,
                })
            })
            .transpose()
    }

    /// A page of a connector's executions, newest first, after `cursor`.
    pub fn executions(
        &self,
        connector_id: &str,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DOCUMENT} FROM executions
             WHERE connector_id = ?1 AND (?2 IS NULL OR id < ?2)
               AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR trigger_type = ?4)
               AND (?5 IS NULL OR is_dry_run = ?5)
               AND (?6 IS NULL OR created_at >= ?6) AND (?7 IS NULL OR created_at < ?7)
             ORDER BY id DESC LIMIT ?8"
        ))?;
        let rows = stmt.query_map(
            params![
                connector_id,
                cursor,
                filter.status,
                filter.trigger_type,
                filter.is_dry_run,
                filter.created_after.map(|t| t.to_rfc3339()),
                filter.created_before.map(|t| t.to_rfc3339()),
                limit as i64
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for doc in rows {
            out.push(serde_json::from_str(&doc?)?);
        }
        Ok(out)
    }

    /// Queued executions, oldest first: (id, connector id, is dry run).
    pub fn queued(&self) -> Result<Vec<(String, String, bool)>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT id, connector_id, is_dry_run FROM executions WHERE status = 'queued' ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many queued executions of the workspace are ahead of `id`.
    pub fn queue_position(&self, workspace_id: &str, id: &str) -> Result<u64> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT COUNT(*) FROM executions WHERE status = 'queued' AND workspace_id = ?1 AND id < ?2",
        )?;
        let n: i64 = stmt.query_row([workspace_id, id], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Executions of the workspace that have ended and were created before
    /// `before`.
    pub fn ended_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT id FROM executions WHERE workspace_id = ?1 AND created_at < ?2 AND status IN {ENDED}"
        ))?;
        let rows = stmt.query_map(params![workspace_id, before.to_rfc3339()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes an execution that has ended, with its log lines, its webhook
    /// batch and payloads, its idempotency keys and its schedule tick
    /// (unless that is its connector's latest, which the scheduler counts
    /// from): all or nothing. False when no execution with this id has
    /// ended.
    pub fn delete_execution(&self, id: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if tx.execute(
            &format!("DELETE FROM executions WHERE id = ?1 AND status IN {ENDED}"),
            [id],
        )? == 0
        {
            return Ok(false);
        }
        tx.execute("DELETE FROM execution_logs WHERE execution_id = ?1", [id])?;
        tx.execute(
            "DELETE FROM webhooks WHERE batch_id IN (SELECT id FROM webhook_batches WHERE execution_id = ?1)",
            [id],
        )?;
        tx.execute("DELETE FROM webhook_batches WHERE execution_id = ?1", [id])?;
        tx.execute("DELETE FROM idempotency_keys WHERE execution_id = ?1", [id])?;
        tx.execute(
            "DELETE FROM schedule_ticks WHERE execution_id = ?1
             AND tick_at < (SELECT MAX(tick_at) FROM schedule_ticks t WHERE t.connector_id = schedule_ticks.connector_id)",
            [id],
        )?;
        tx.commit()?;
        Ok(true)
    }

    // ----- logs -------------------------------------------------------------

    /// Appends a log line to an execution.
    pub fn append_log(&self, execution_id: &str, level: &str, message: &str) -> Result<()> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO execution_logs (execution_id, seq, at, level, message)
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4 FROM execution_logs WHERE execution_id = ?1",
        )?;
        stmt.execute(params![execution_id, now(), level, message])?;
        Ok(())
    }

    /// Log lines after `after`, at most `limit`.
    pub fn logs(&self, execution_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at, level, message FROM execution_logs WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![execution_id, after as i64, limit as i64], |r| {
            Ok(LogLine {
                seq: r.get::<_, i64>(0)? as u64,
                at: time(&r.get::<_, String>(1)?),
                level: r.get(2)?,
                message: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::execution::{ConnectorRef, TriggerType};

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = Db::open(&dir.path().join("state.db")).unwrap_or_else(|e| panic!("{e}"));
        (dir, db)
    }

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let (dir, db) = db();
        drop(db);
        let path = dir.path().join("state.db");
        assert!(Db::open(&path).is_ok(), "reopening applies nothing twice");
        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        conn.pragma_update(None, "user_version", 99)
            .unwrap_or_else(|e| panic!("{e}"));
        drop(conn);
        assert!(matches!(Db::open(&path), Err(StateError::TooNew { found: 99, .. })));
    }

    #[test]
    fn publishing_keeps_every_version_and_starts_a_new_draft() {
        let (_dir, db) = db();
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}"));
        let row = ConnectorRow {
            id: "c1".into(),
            workspace_id: ws.id.clone(),
            api_name: "orders".into(),
            definition: "{}".into(),
            sample_file_id: None,
            draft_version: 1,
            live_version: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert_eq!(db.insert_connector(&row, "v1").ok(), Some(true));
        assert_eq!(db.insert_connector(&row, "v1").ok(), Some(false), "api_name is unique");
        assert_eq!(db.publish("c1", 1).ok(), Some(true));
        assert_eq!(
            db.publish("c1", 1).ok(),
            Some(false),
            "a stale draft is not published twice"
        );
        assert_eq!(db.save_draft("c1", "v2").ok(), Some(2));
        let c = db.connector(&ws.id, "orders").ok().flatten();
        assert_eq!(c.map(|c| (c.live_version, c.draft_version)), Some((Some(1), 2)));
        let versions = db.sql_versions("c1").unwrap_or_default();
        let texts: Vec<_> = versions.iter().map(|v| (v.version, v.text.as_str())).collect();
        assert_eq!(texts, vec![(2, "v2"), (1, "v1")]);
    }

    #[test]
    fn a_conditional_save_does_not_overwrite_a_status_that_moved_on() {
        let (_dir, db) = db();
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}"));
        let doc = Execution::new(
            "e1".into(),
            ConnectorRef {
                id: Some("c1".into()),
                api_name: "orders".into(),
                version: Some(1),
            },
            TriggerType::FileUpload,
            false,
        );
        let row = ExecutionRow {
            workspace_id: ws.id,
            connector_id: "c1".into(),
            definition: "{}".into(),
            script: String::new(),
            input_name: None,
            document: doc.clone(),
        };
        db.insert_execution(&row).unwrap_or_else(|e| panic!("{e}"));
        let mut canceled = doc.clone();
        canceled.transition(Status::Canceled).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.save_document(&canceled, Some(Status::Queued)).ok(), Some(true));
        let mut running = doc;
        running.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.save_document(&running, Some(Status::Queued)).ok(), Some(false));
        let stored = db.execution("e1").ok().flatten().map(|r| r.document.status);
        assert_eq!(stored, Some(Status::Canceled));
    }

    #[test]
    fn queue_positions_count_one_workspace_and_claims_hold_leases() {
        let (_dir, db) = db();
        let acme = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let other = db.workspace_named("other").unwrap_or_else(|e| panic!("{e}")).id;
        for (ws, id) in [(&other, "e1"), (&acme, "e2"), (&other, "e3"), (&acme, "e4")] {
            db.insert_execution(&queued(ws, id)).unwrap_or_else(|e| panic!("{e}"));
        }
        // Another workspace's runs ahead are not counted.
        assert_eq!(db.queue_position(&acme, "e4").ok(), Some(1));
        assert_eq!(db.queue_position(&other, "e3").ok(), Some(1));

        // Two claims of one connector allowed at once, whichever process.
        let claim = |id: &str, owner: &str| {
            let mut doc = queued(&acme, id).document;
            doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
            db.claim(&doc, "c1", 2, owner, 1_000).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(claim("e1", "p1"));
        assert!(!claim("e1", "p2"), "claimed once");
        assert!(claim("e2", "p2"));
        assert!(!claim("e3", "p3"), "max_concurrency counts every process's runs");

        // The owner's writes hold until another process takes the run over.
        let leases = db.leases().unwrap_or_else(|e| panic!("{e}"));
        let e1 = leases
            .iter()
            .find(|l| l.id == "e1")
            .cloned()
            .unwrap_or_else(|| panic!("{leases:?}"));
        assert_eq!((e1.owner.as_deref(), e1.until), (Some("p1"), Some(1_000)));
        assert_eq!(db.extend_leases("p1", &["e1".into()], 2_000).ok(), Some(vec![]));
        assert!(
            !db.take_over(&e1, "p2").unwrap_or(true),
            "a lease renewed meanwhile is not taken"
        );
        let renewed = Lease {
            until: Some(2_000),
            ..e1
        };
        assert!(db.take_over(&renewed, "p2").unwrap_or(false));
        assert_eq!(
            db.extend_leases("p1", &["e1".into()], 3_000).ok(),
            Some(vec!["e1".to_string()])
        );
        let doc = db
            .execution("e1")
            .ok()
            .flatten()
            .map(|r| r.document)
            .unwrap_or_else(|| panic!("e1"));
        assert_eq!(
            db.save_owned(&doc, "p1").ok(),
            Some(false),
            "the old owner writes nothing"
        );
        assert_eq!(db.save_owned(&doc, "p2").ok(), Some(true));

        // A cancel stored by any process shows at once, and reaches the owner.
        assert_eq!(db.request_cancel("e2").ok(), Some(true));
        let shown = db.execution("e2").ok().flatten().map(|r| r.document.status);
        assert_eq!(shown, Some(Status::Canceling));
        assert_eq!(db.cancel_requests("p2").ok(), Some(vec!["e2".to_string()]));
        assert_eq!(db.request_cancel("e4").ok(), Some(false), "a queued run is not running");
    }

    fn queued(workspace_id: &str, id: &str) -> ExecutionRow {
        let doc = Execution::new(
            id.into(),
            ConnectorRef {
                id: Some("c1".into()),
                api_name: "hooks".into(),
                version: Some(1),
            },
            TriggerType::Webhook,
            false,
        );
        ExecutionRow {
            workspace_id: workspace_id.into(),
            connector_id: "c1".into(),
            definition: "{}".into(),
            script: String::new(),
            input_name: None,
            document: doc,
        }
    }

    fn payload(id: &str) -> WebhookRow {
        WebhookRow {
            received_at: Utc::now().to_rfc3339(),
            webhook_id: id.into(),
            content_type: "text/plain".into(),
            querystring: String::new(),
            body: id.into(),
        }
    }

    /// Found under load: a payload that joined a due batch between the read
    /// of its payloads and its close was in no execution.
    #[test]
    fn a_due_batch_takes_no_payload_and_never_closes_without_one_it_holds() {
        let (_dir, db) = db();
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let window = std::time::Duration::from_secs(3600);
        let receive = |id: &str, buffering: bool| {
            db.receive_webhook(&ws, "c1", &payload(id), true, window, buffering)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = receive("a", false);
        assert_eq!(receive("b", false).batch_id, first.batch_id, "within the window");
        // The window passes.
        let past = (Utc::now() - chrono::TimeDelta::seconds(1)).to_rfc3339();
        db.lock()
            .execute("UPDATE webhook_batches SET closes_at = ?1", [past])
            .unwrap_or_else(|e| panic!("{e}"));
        let due = db.due_batches(Utc::now()).unwrap_or_default();
        assert_eq!(due.len(), 1);
        let read = db.batch_payloads(&first.batch_id).unwrap_or_default();
        assert_eq!(read.len(), 2);

        // Operational: a payload after the window opens the next batch.
        let late = receive("c", false);
        assert_ne!(late.batch_id, first.batch_id);

        // Buffering (not operational): the open batch takes it, and a close
        // made from the payloads read before it is refused.
        let buffered = receive("d", true);
        assert_eq!(buffered.batch_id, first.batch_id);
        assert_eq!(
            db.close_batch(&first.batch_id, read.len(), &queued(&ws, "e1")).ok(),
            Some(false)
        );
        assert!(
            db.execution("e1").ok().flatten().is_none(),
            "nothing stored of a refused close"
        );
        let again = db.batch_payloads(&first.batch_id).unwrap_or_default();
        let ids: Vec<_> = again.iter().map(|p| p.webhook_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert_eq!(
            db.close_batch(&first.batch_id, again.len(), &queued(&ws, "e1")).ok(),
            Some(true)
        );
        assert_eq!(
            db.close_batch(&first.batch_id, again.len(), &queued(&ws, "e2")).ok(),
            Some(false),
            "a batch closes once"
        );
    }

    #[test]
    fn log_lines_are_numbered_per_execution() {
        let (_dir, db) = db();
        for m in ["a", "b", "c"] {
            db.append_log("e1", "info", m).unwrap_or_else(|e| panic!("{e}"));
        }
        db.append_log("e2", "info", "x").unwrap_or_else(|e| panic!("{e}"));
        let lines = db.logs("e1", 1, 10).unwrap_or_default();
        let got: Vec<_> = lines.iter().map(|l| (l.seq, l.message.as_str())).collect();
        assert_eq!(got, vec![(2, "b"), (3, "c")]);
    }
}
