//! The state store on PostgreSQL, for several `weir serve` processes on
//! several machines (docs/deployment.md). Every SQL text and driver type
//! of this backend is in this module.
//!
//! The driver is `tokio-postgres` (already what the engine's PostgreSQL
//! sources use): asynchronous, with `COPY` and `LISTEN/NOTIFY`. The state
//! store's traits are synchronous, as SQLite is: calls wait for their
//! answers through the engine's [`PgPool`].
//!
//! Schema changes are numbered migrations, applied once under an advisory
//! lock (processes starting together apply each once) and recorded in
//! `weir_schema`; a database newer than this binary is refused.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use weir_engine::pg::{ConnectError, PgConn, PgPool};

use super::*;

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

use files::hold_content;

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = match e.code() {
            Some(code) => fault_of(code),
            // No SQL state: the connection failed or closed.
            None if e.is_closed() || std::error::Error::source(&e).is_some() => StateFault::Unavailable,
            None => StateFault::Other,
        };
        StateError::Store {
            kind,
            source: Box::new(e),
        }
    }
}

/// The kind of failure a SQL state is.
fn fault_of(code: &SqlState) -> StateFault {
    let class = &code.code()[..2];
    match class {
        // Integrity constraint violations; a serialization failure is a
        // conflict between two writers.
        "23" | "40" => StateFault::Conflict,
        "53" if *code == SqlState::DISK_FULL => StateFault::Full,
        // Insufficient resources other than disk, connection failures,
        // an operator's shutdown or cancel: try again later.
        "53" | "08" | "57" => StateFault::Unavailable,
        _ if *code == SqlState::READ_ONLY_SQL_TRANSACTION => StateFault::ReadOnly,
        _ => StateFault::Other,
    }
}

/// A lock key of this schema's migrations (any number no other part of the
/// database uses for an advisory lock).
const MIGRATION_LOCK: i64 = 0x5745_4952_5f53_4348; // "WEIR_SCH"

/// Migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    connectors    TEXT,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ
);
CREATE TABLE objects (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    definition   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, name)
);
CREATE TABLE secrets (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    sealed       BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, name)
);
CREATE TABLE files (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    uploaded_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, sha256)
);
CREATE INDEX files_by_upload ON files (workspace_id, uploaded_at);
CREATE INDEX files_by_content ON files (sha256);
CREATE TABLE file_uploaders (
    workspace_id TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    PRIMARY KEY (workspace_id, sha256, key_id)
);
CREATE TABLE plugins (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, name, version)
);
CREATE INDEX plugins_by_sha ON plugins (workspace_id, sha256);
CREATE INDEX plugins_by_content ON plugins (sha256);
CREATE TABLE content_removals (
    sha256       TEXT PRIMARY KEY,
    generation   BIGINT NOT NULL,
    active       BIGINT NOT NULL DEFAULT 0,
    active_since TIMESTAMPTZ
);
CREATE TABLE connectors (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    api_name       TEXT NOT NULL,
    kind           TEXT NOT NULL,
    definition     TEXT NOT NULL,
    sample_file_id TEXT,
    draft_version  INTEGER NOT NULL,
    live_version   INTEGER,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (workspace_id, api_name)
);
CREATE INDEX connectors_by_kind ON connectors (kind);
CREATE TABLE sql_versions (
    connector_id TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    text         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ,
    PRIMARY KEY (connector_id, version)
);
CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    connector_id     TEXT NOT NULL,
    status           TEXT NOT NULL,
    trigger_type     TEXT NOT NULL,
    is_dry_run       BOOLEAN NOT NULL,
    source_file_id   TEXT,
    input_name       TEXT,
    definition       TEXT NOT NULL,
    script           TEXT NOT NULL,
    document         JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    owner            TEXT,
    lease_until      BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX executions_by_connector ON executions (connector_id, id);
CREATE INDEX executions_by_status ON executions (status, id);
CREATE INDEX executions_by_source ON executions (workspace_id, source_file_id);
CREATE INDEX executions_by_age ON executions (workspace_id, created_at);
CREATE INDEX executions_by_owner ON executions (owner) WHERE owner IS NOT NULL;
CREATE INDEX executions_by_connector_status ON executions (connector_id, status);
CREATE INDEX executions_queued ON executions (workspace_id, id) WHERE status = 'queued';
CREATE TABLE execution_logs (
    execution_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    level        TEXT NOT NULL,
    message      TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
CREATE TABLE idempotency_keys (
    workspace_id TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (connector_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_by_execution ON idempotency_keys (execution_id);
CREATE TABLE webhook_batches (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    opened_at    TIMESTAMPTZ NOT NULL,
    closes_at    TIMESTAMPTZ NOT NULL,
    execution_id TEXT
);
CREATE INDEX webhook_batches_open ON webhook_batches (connector_id, execution_id, closes_at);
CREATE INDEX webhook_batches_by_execution ON webhook_batches (execution_id);
CREATE TABLE webhooks (
    arrival      BIGSERIAL,
    connector_id TEXT NOT NULL,
    signed       BOOLEAN NOT NULL,
    webhook_id   TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    content_type TEXT NOT NULL,
    querystring  TEXT NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (connector_id, signed, webhook_id)
);
CREATE INDEX webhooks_by_batch ON webhooks (batch_id, received_at);
CREATE TABLE schedule_ticks (
    connector_id TEXT NOT NULL,
    tick_at      TIMESTAMPTZ NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (connector_id, tick_at)
);
CREATE INDEX schedule_ticks_by_execution ON schedule_ticks (execution_id);
"#,
    // One process at a time sweeps lost runs: the one whose turn this is.
    r#"
CREATE TABLE sweeper (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    until BIGINT NOT NULL
);
"#,
    // The console: sessions of browsers signed in with a key, and the
    // workspace's executions newest first, searched by idempotency key.
    r#"
CREATE TABLE sessions (
    token_sha256 TEXT PRIMARY KEY,
    key_sha256   TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
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
    created_at      TIMESTAMPTZ NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    retry_until     BIGINT,
    claimed_by      TEXT,
    claimed_until   BIGINT,
    PRIMARY KEY (execution_id, n)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE TABLE notification_attempts (
    execution_id TEXT NOT NULL,
    n            INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    status       INTEGER,
    error        TEXT,
    took_ms      BIGINT NOT NULL,
    PRIMARY KEY (execution_id, n, attempt)
);
"#,
];

/// The statuses of an execution that has ended, as SQL.
const ENDED: &str = "('success', 'partial_success', 'failed', 'canceled')";

/// The state database on PostgreSQL.
pub struct PgState {
    pool: PgPool,
}

impl From<ConnectError> for StateError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Database(e) => e.into(),
            ConnectError::Unavailable(why) => StateError::Store {
                kind: StateFault::Unavailable,
                source: why.into(),
            },
        }
    }
}

impl PgState {
    /// Connects to the database at `url` (`postgres://…`) with at most
    /// `pool_size` connections, and applies the migrations this binary
    /// knows.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self> {
        let pool = PgPool::new(url, pool_size, "the state database").map_err(|e| StateError::Store {
            kind: StateFault::Other,
            source: Box::new(e),
        })?;
        let store = Self { pool };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `work` to its end on this thread (see [`PgPool::wait`]).
    fn wait<T>(&self, work: impl Future<Output = T>) -> T {
        self.pool.wait(work)
    }

    /// `sql` prepared on `conn`, once per connection.
    fn statement(&self, conn: &mut PgConn<'_>, sql: &'static str) -> Result<tokio_postgres::Statement> {
        Ok(self.pool.statement(conn, sql)?)
    }

    /// A connection of the pool.
    fn conn(&self) -> Result<PgConn<'_>> {
        Ok(self.pool.conn()?)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            // Processes starting together wait here for the first to finish.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS weir_schema (version BIGINT NOT NULL)")
                .await?;
            let found: Option<i64> = tx
                .query_opt("SELECT version FROM weir_schema", &[])
                .await?
                .map(|r| r.get(0));
            let found = match found {
                Some(v) => v,
                None => {
                    tx.execute("INSERT INTO weir_schema (version) VALUES (0)", &[]).await?;
                    0
                }
            };
            let known = MIGRATIONS.len() as i64;
            if found > known {
                return Err(StateError::TooNew { found, known });
            }
            for sql in &MIGRATIONS[found as usize..] {
                tx.batch_execute(sql).await?;
            }
            tx.execute("UPDATE weir_schema SET version = $1", &[&known]).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The payloads of notifications on `channel`, as they come, from a
    /// connection of its own that is opened again when it breaks (what was
    /// sent meanwhile is lost: a listener reads the state it signals as a
    /// guarantee).
    fn listen(&self, channel: &'static str) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        let runtime = self.pool.runtime()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let url = self.pool.url().to_string();
        runtime.spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = forward(&url, channel, &tx).await {
                    tracing::warn!(error = %e, channel, "listening to the state database failed; trying again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(rx)
    }

    /// Whether the database answers now.
    pub fn answers(&self) -> Result<()> {
        let conn = self.conn()?;
        self.wait(conn.simple_query("SELECT 1"))?;
        Ok(())
    }
}

/// Forwards the notifications on `channel` to `tx` until the connection
/// ends or nobody receives.
async fn forward(url: &str, channel: &str, tx: &tokio::sync::mpsc::UnboundedSender<String>) -> Result<()> {
    use futures::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (messages_tx, mut messages) = futures::channel::mpsc::unbounded();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            if messages_tx.unbounded_send(message).is_err() {
                break;
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    while let Some(message) = messages.next().await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if tx.send(n.payload().to_string()).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                driver.abort();
                return Err(e.into());
            }
        }
    }
    driver.abort();
    Ok(())
}

impl StateStore for PgState {
    fn answers(&self) -> Result<()> {
        PgState::answers(self)
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}
