//! The state store on PostgreSQL, for several `weir serve` processes on
//! several machines (docs/deployment.md). Every SQL text and driver type
//! of this backend is in this module.
//!
//! The driver is `tokio-postgres` (already what the engine's PostgreSQL
//! sources use): asynchronous, with `COPY` and `LISTEN/NOTIFY`. The state
//! store's traits are synchronous, as SQLite is, so the connections run on
//! a small runtime of the store's own and a call waits for its answer on
//! the calling thread: the client half of a connection needs no runtime,
//! so a call borrows its arguments and works from any thread, in or out of
//! the server's runtime.
//!
//! Schema changes are numbered migrations, applied once under an advisory
//! lock (processes starting together apply each once) and recorded in
//! `weir_schema`; a database newer than this binary is refused.

use std::future::Future;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::*;

mod connectors;
mod executions;
mod files;
mod keys;
mod leases;
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
];

/// The statuses of an execution that has ended, as SQL.
const ENDED: &str = "('success', 'partial_success', 'failed', 'canceled')";

/// The state database on PostgreSQL.
pub struct PgState {
    /// Always there until dropped: taken then, to be shut down without
    /// waiting (a runtime cannot be dropped where blocking is not allowed,
    /// as in the server's own runtime).
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    pool: Pool,
}

/// Connections, at most `size` at once; a caller waits for a free one.
struct Pool {
    size: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Pooled>,
    open: usize,
}

/// A connection, with the statements prepared on it.
struct Pooled {
    client: Client,
    statements: std::collections::HashMap<&'static str, tokio_postgres::Statement>,
}

/// A connection of the pool, returned to it when dropped (or closed for
/// good when it broke).
struct Conn<'a> {
    pooled: Option<Pooled>,
    pool: &'a Pool,
}

impl Conn<'_> {
    fn pooled(&mut self) -> &mut Pooled {
        self.pooled
            .as_mut()
            .unwrap_or_else(|| unreachable!("a connection is held until dropped"))
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self
            .pooled
            .as_ref()
            .unwrap_or_else(|| unreachable!("a connection is held until dropped"))
            .client
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.pooled().client
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        match self.pooled.take() {
            Some(pooled) if !pooled.client.is_closed() => state.idle.push(pooled),
            _ => state.open -= 1,
        }
        self.pool.freed.notify_one();
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a call waits for a free connection before it is refused as
/// unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

impl PgState {
    /// Connects to the database at `url` (`postgres://…`) with at most
    /// `pool_size` connections, and applies the migrations this binary
    /// knows.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-postgres")
            .enable_all()
            .build()
            .map_err(|e| StateError::Store {
                kind: StateFault::Other,
                source: Box::new(e),
            })?;
        let store = Self {
            runtime: Some(runtime),
            url: url.to_string(),
            pool: Pool {
                size: pool_size.max(1),
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
        };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `work` to its end on this thread. Only the connections'
    /// sockets need the store's runtime, which drives them. On a worker
    /// thread of a multi-threaded runtime (the server's), the thread's other
    /// tasks move to another thread meanwhile, so requests waiting on the
    /// database do not hold up the others.
    fn wait<T>(&self, work: impl Future<Output = T>) -> T {
        let on_workers = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_workers {
            tokio::task::block_in_place(|| futures::executor::block_on(work))
        } else {
            futures::executor::block_on(work)
        }
    }

    /// `sql` prepared on `conn`, once per connection: a statement used
    /// often then takes one round trip, not two.
    fn statement(&self, conn: &mut Conn<'_>, sql: &'static str) -> Result<tokio_postgres::Statement> {
        if let Some(statement) = conn.pooled().statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.wait(conn.prepare(sql))?;
        conn.pooled().statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// A connection: an idle one, a new one while fewer than the pool's
    /// size are open, else the first one freed.
    fn conn(&self) -> Result<Conn<'_>> {
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut state = self.pool.lock();
        loop {
            while let Some(pooled) = state.idle.pop() {
                if pooled.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Conn {
                    pooled: Some(pooled),
                    pool: &self.pool,
                });
            }
            if state.open < self.pool.size {
                state.open += 1;
                drop(state);
                return match self.open() {
                    Ok(client) => Ok(Conn {
                        pooled: Some(Pooled {
                            client,
                            statements: std::collections::HashMap::new(),
                        }),
                        pool: &self.pool,
                    }),
                    Err(e) => {
                        self.pool.lock().open -= 1;
                        self.pool.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StateError::Store {
                    kind: StateFault::Unavailable,
                    source: format!("all {} connections to the state database stayed busy", self.pool.size).into(),
                });
            }
            state = self
                .pool
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// A new connection, its socket driven by the store's runtime.
    fn open(&self) -> Result<Client> {
        let url = self.url.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        let Some(runtime) = &self.runtime else {
            return Err(StateError::Store {
                kind: StateFault::Unavailable,
                source: "the state database's runtime stopped".into(),
            });
        };
        runtime.spawn(async move {
            let connected = tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls)).await;
            let client = match connected {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!(error = %e, "a connection to the state database ended");
                        }
                    });
                    Ok(client)
                }
                Ok(Err(e)) => Err(StateError::from(e)),
                Err(_) => Err(StateError::Store {
                    kind: StateFault::Unavailable,
                    source: "connecting to the state database took longer than 5 s".into(),
                }),
            };
            let _ = tx.send(client);
        });
        self.wait(rx).map_err(|_| StateError::Store {
            kind: StateFault::Unavailable,
            source: "the state database's runtime stopped".into(),
        })?
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
        let runtime = self.runtime.as_ref()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let url = self.url.clone();
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

impl Drop for PgState {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl StateStore for PgState {
    fn answers(&self) -> Result<()> {
        PgState::answers(self)
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}
