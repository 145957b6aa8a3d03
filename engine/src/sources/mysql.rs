//! MySQL and MariaDB tables, read through the provider's SQL table over a
//! pool that notes the connection id of every session a run takes, so a
//! cancel can end the queries those sessions still run (`KILL QUERY`).
//!
//! A server goes on with a query whose reader has gone, and MySQL has no
//! session name to find a run's sessions by (PostgreSQL's
//! `application_name`); the connection id each session gets in its
//! handshake is what names it.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use datafusion::datasource::TableProvider;
use datafusion::sql::unparser::dialect::MySqlDialect;
use datafusion_table_providers::sql::db_connection_pool::dbconnection::DbConnection;
use datafusion_table_providers::sql::db_connection_pool::mysqlpool::MySQLConnectionPool;
use datafusion_table_providers::sql::db_connection_pool::{DbConnectionPool, JoinPushDown};
use datafusion_table_providers::sql::sql_provider_datafusion::SqlTable;
use datafusion_table_providers::util::secrets::to_secret_map;
use mysql_async::prelude::{Queryable, ToValue};

use super::Params;

/// The parameter type of the provider's MySQL statements.
type Param = &'static (dyn ToValue + Sync);

/// The sessions one run opened on one MySQL server, by connection id.
pub(super) struct Sessions {
    pub(super) params: Params,
    ids: Mutex<Vec<u32>>,
}

impl Sessions {
    pub(super) fn new(params: Params) -> Arc<Self> {
        Arc::new(Self {
            params,
            ids: Mutex::default(),
        })
    }

    fn note(&self, id: u32) {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// Ends every query the sessions still run, from a session of its own
    /// (the run's may be the busy ones). A session with nothing running is
    /// left alone; one already gone is no error.
    pub(super) async fn kill_queries(&self) -> Result<(), String> {
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(PoisonError::into_inner));
        if ids.is_empty() {
            return Ok(());
        }
        let pool = MySQLConnectionPool::new(to_secret_map(self.params.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let session = pool.connect_direct().await.map_err(|e| e.to_string())?;
        let mut conn = session.conn.lock().await;
        for id in ids {
            match conn.query_drop(format!("KILL QUERY {id}")).await {
                // ER_NO_SUCH_THREAD: the session has closed.
                Err(mysql_async::Error::Server(e)) if e.code == 1094 => {}
                other => other.map_err(|e| e.to_string())?,
            }
        }
        Ok(())
    }
}

/// The provider's pool, noting each session it hands out.
struct NotingPool {
    pool: MySQLConnectionPool,
    sessions: Arc<Sessions>,
}

#[async_trait]
impl DbConnectionPool<mysql_async::Conn, Param> for NotingPool {
    async fn connect(
        &self,
    ) -> Result<Box<dyn DbConnection<mysql_async::Conn, Param>>, Box<dyn std::error::Error + Send + Sync>> {
        let session = self.pool.connect_direct().await?;
        let id = session.conn.lock().await.id();
        self.sessions.note(id);
        Ok(Box::new(session))
    }

    fn join_push_down(&self) -> JoinPushDown {
        self.pool.join_push_down()
    }
}

/// A pool for one run's reads of one server, whose sessions `sessions`
/// notes.
pub(super) async fn pool(
    sessions: Arc<Sessions>,
) -> Result<Arc<dyn DbConnectionPool<mysql_async::Conn, Param> + Send + Sync>, String> {
    let pool = MySQLConnectionPool::new(to_secret_map(sessions.params.clone()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(NotingPool { pool, sessions }))
}

/// Table `table` of the server behind `pool`, with the columns the server
/// describes; scans push projections, filters and limits into its SQL.
pub(super) async fn table(
    pool: &Arc<dyn DbConnectionPool<mysql_async::Conn, Param> + Send + Sync>,
    table: datafusion::common::TableReference,
) -> Result<Arc<dyn TableProvider>, Box<dyn std::error::Error + Send + Sync>> {
    let table = SqlTable::new("mysql", pool, table)
        .await?
        .with_dialect(Arc::new(MySqlDialect {}));
    Ok(Arc::new(table))
}
