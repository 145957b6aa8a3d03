//! Connections to PostgreSQL for synchronous callers: the server's state
//! store and the record store speak to PostgreSQL through traits that are
//! synchronous (as SQLite is), so their connections run on a small runtime
//! of their own and a call waits for its answer on the calling thread. The
//! client half of a connection needs no runtime, so a call borrows its
//! arguments and works from any thread, in or out of another runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Statement};

/// How long a call waits for a free connection before it is refused.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// How long opening a connection may take.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// The database refused or failed (its error says which).
    Database(tokio_postgres::Error),
    /// Nothing answered in time, every connection stayed busy, or the
    /// runtime stopped: try again later.
    Unavailable(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Database(e) => e.fmt(f),
            ConnectError::Unavailable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Database(e) => Some(e),
            ConnectError::Unavailable(_) => None,
        }
    }
}

/// Connections to one database, at most `size` at once; a caller waits for
/// a free one.
pub struct PgPool {
    /// Always there until dropped: taken then, to be shut down without
    /// waiting (a runtime cannot be dropped where blocking is not allowed,
    /// as in the server's own runtime).
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    /// What the database is to its users, for messages ("the state
    /// database").
    what: &'static str,
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
    statements: HashMap<&'static str, Statement>,
}

/// A connection of the pool, returned to it when dropped (or closed for
/// good when it broke).
pub struct PgConn<'a> {
    pooled: Option<Pooled>,
    pool: &'a PgPool,
}

impl PgConn<'_> {
    fn pooled(&mut self) -> &mut Pooled {
        self.pooled
            .as_mut()
            .unwrap_or_else(|| unreachable!("a connection is held until dropped"))
    }
}

impl std::ops::Deref for PgConn<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self
            .pooled
            .as_ref()
            .unwrap_or_else(|| unreachable!("a connection is held until dropped"))
            .client
    }
}

impl std::ops::DerefMut for PgConn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.pooled().client
    }
}

impl Drop for PgConn<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        match self.pooled.take() {
            Some(pooled) if !pooled.client.is_closed() => state.idle.push(pooled),
            _ => state.open -= 1,
        }
        self.pool.freed.notify_one();
    }
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("what", &self.what)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PgPool {
    /// A pool of at most `size` connections to the database at `url`
    /// (`postgres://…`), called `what` in messages. Connects lazily.
    pub fn new(url: &str, size: usize, what: &'static str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-postgres")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            url: url.to_string(),
            what,
            size: size.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The runtime that drives the connections, for tasks of their own
    /// (a listener).
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref().map(tokio::runtime::Runtime::handle)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` to its end on this thread. Only the connections'
    /// sockets need the pool's runtime, which drives them. On a worker
    /// thread of a multi-threaded runtime (the server's), the thread's
    /// other tasks move to another thread meanwhile, so callers waiting on
    /// the database do not hold up the others.
    pub fn wait<T>(&self, work: impl Future<Output = T>) -> T {
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
    pub fn statement(&self, conn: &mut PgConn<'_>, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = conn.pooled().statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.wait(conn.prepare(sql))?;
        conn.pooled().statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// A connection: an idle one, a new one while fewer than the pool's
    /// size are open, else the first one freed.
    pub fn conn(&self) -> Result<PgConn<'_>, ConnectError> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut state = self.lock();
        loop {
            while let Some(pooled) = state.idle.pop() {
                if pooled.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(PgConn {
                    pooled: Some(pooled),
                    pool: self,
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.open() {
                    Ok(client) => Ok(PgConn {
                        pooled: Some(Pooled {
                            client,
                            statements: HashMap::new(),
                        }),
                        pool: self,
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnectError::Unavailable(format!(
                    "all {} connections to {} stayed busy",
                    self.size, self.what
                )));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A new connection outside the pool (for one that a caller keeps, as
    /// a snapshot's transaction does), its socket driven by the pool's
    /// runtime.
    pub fn open(&self) -> Result<Client, ConnectError> {
        let stopped = || ConnectError::Unavailable(format!("the runtime of {} stopped", self.what));
        let Some(runtime) = &self.runtime else {
            return Err(stopped());
        };
        let url = self.url.clone();
        let what = self.what;
        let (tx, rx) = futures::channel::oneshot::channel();
        runtime.spawn(async move {
            let client = match tokio::time::timeout(CONNECT_WAIT, tokio_postgres::connect(&url, NoTls)).await {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!(error = %e, "a connection to {what} ended");
                        }
                    });
                    Ok(client)
                }
                Ok(Err(e)) => Err(ConnectError::Database(e)),
                Err(_) => Err(ConnectError::Unavailable(format!(
                    "connecting to {what} took longer than {} s",
                    CONNECT_WAIT.as_secs()
                ))),
            };
            let _ = tx.send(client);
        });
        self.wait(rx).map_err(|_| stopped())?
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Idle connections first, while their runtime still drives them.
        self.lock().idle.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
