//! The state store on SQLite: one database (`state.db`) in the data
//! directory, in WAL mode so readers never wait for the writer and `weir
//! keys` works while the server runs. Every SQL text and every driver type
//! of the state store is in this module.
//!
//! Schema changes are numbered migrations applied in order and recorded in
//! `PRAGMA user_version`; a database newer than this binary is refused.
//!
//! Calls are synchronous: every statement here is a point lookup or a short
//! indexed range on a local file, well under a millisecond, so a thread hop
//! per request would cost more than it saves.

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

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::*;

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
    // A queue position counts the workspace's queued executions ahead of
    // one, from this index alone, however long the queue.
    r#"
CREATE INDEX executions_queued ON executions (workspace_id, id) WHERE status = 'queued';
"#,
    // Removals of content from the blob store, per hash: how many have
    // begun, and since when one is under way. What places content reads
    // them around recording what holds it, so that a removal in any
    // process never takes content from under a new holder.
    r#"
CREATE TABLE content_removals (
    sha256 TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    active_since TEXT
);
"#,
    // Removals of one content hash may run at once (two workspaces
    // deleting the same bytes): how many are under way.
    r#"
ALTER TABLE content_removals ADD COLUMN active INTEGER NOT NULL DEFAULT 0;
UPDATE content_removals SET active = 1 WHERE active_since IS NOT NULL;
"#,
    // One process at a time sweeps lost runs: the one whose turn this is.
    r#"
CREATE TABLE sweeper (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    until INTEGER NOT NULL
);
"#,
    // The console: sessions of browsers signed in with a key, and the
    // workspace's executions newest first, searched by idempotency key.
    r#"
CREATE TABLE sessions (
    token_sha256 TEXT PRIMARY KEY,
    key_sha256   TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX sessions_by_end ON sessions (expires_at);
CREATE INDEX executions_by_workspace ON executions (workspace_id, id);
CREATE INDEX idempotency_keys_by_key ON idempotency_keys (workspace_id, key);
"#,
    // Notifications of ended executions: stored with the end (an outbox),
    // delivered and retried by any process holding a claim on them.
    r#"
CREATE TABLE notifications (
    execution_id    TEXT NOT NULL,
    n               INTEGER NOT NULL,
    workspace_id    TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    webhook_id      TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    retry_until     INTEGER,
    claimed_by      TEXT,
    claimed_until   INTEGER,
    PRIMARY KEY (execution_id, n)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE TABLE notification_attempts (
    execution_id TEXT NOT NULL,
    n            INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    at           TEXT NOT NULL,
    status       INTEGER,
    error        TEXT,
    took_ms      INTEGER NOT NULL,
    PRIMARY KEY (execution_id, n, attempt)
);
"#,
];

/// An execution's document as readers see it: a running execution whose
/// cancel was asked of another process is already `canceling`.
const DOCUMENT: &str = "CASE WHEN cancel_requested = 1 AND status = 'running' \
     THEN json_set(document, '$.status', 'canceling') ELSE document END";

/// The statuses of an execution a process runs (and holds a lease on).
const LEASED: &str = "('running', 'canceling')";

/// The statuses of an execution that has ended, as SQL.
const ENDED: &str = "('success', 'partial_success', 'failed', 'canceled')";

/// The state database.
pub struct Db {
    conn: Mutex<Connection>,
}

impl StateStore for Db {
    fn answers(&self) -> Result<()> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

/// SQLite's busy handler: true while it is worth trying again (about ten
/// seconds in all).
fn wait_for_writer(tries: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(1));
    tries < 10_000
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or_else(|_| DateTime::<Utc>::MIN_UTC, |t| t.with_timezone(&Utc))
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
        // Another process's write is waited for a millisecond at a time:
        // SQLite's own wait sleeps up to 100 ms between tries, which a
        // cancel stored by one process and ended by another would feel.
        conn.busy_handler(Some(wait_for_writer))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_queue_position_is_counted_from_an_index_of_queued_executions_alone() {
        let (_dir, db) = db();
        let plan: Vec<String> = {
            let conn = db.lock();
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", super::leases::QUEUE_POSITION))
                .unwrap_or_else(|e| panic!("{e}"));
            stmt.query_map(["w", "e"], |r| r.get::<_, String>(3))
                .and_then(|rows| rows.collect())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            plan,
            ["SEARCH executions USING COVERING INDEX executions_queued (workspace_id=? AND id<?)"],
            "no row of the table is read"
        );
    }
}
