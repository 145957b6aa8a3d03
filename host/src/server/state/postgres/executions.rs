//! Executions: their rows, idempotency keys and log lines, in PostgreSQL.

use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::*;

/// An execution's document as readers see it: a running execution whose
/// cancel was asked of another process is already `canceling`.
pub(super) const DOCUMENT: &str = "(CASE WHEN cancel_requested AND status = 'running' \
     THEN jsonb_set(document, '{status}', '\"canceling\"') ELSE document END)::text";

/// Stores `row` as a new execution.
pub(super) async fn insert_execution(conn: &impl GenericClient, row: &ExecutionRow) -> Result<()> {
    let d = &row.document;
    conn.execute(
        "INSERT INTO executions (id, workspace_id, connector_id, status, trigger_type, is_dry_run, source_file_id,
                                 input_name, definition, script, document, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb, $12)",
        &[
            &d.id,
            &row.workspace_id,
            &row.connector_id,
            &d.status.as_str(),
            &d.trigger_type.as_str(),
            &d.is_dry_run,
            &d.source_file_id,
            &row.input_name,
            &row.definition,
            &row.script,
            &serde_json::to_string(d)?,
            &d.created_at,
        ],
    )
    .await?;
    Ok(())
}

async fn key_use(
    conn: &impl GenericClient,
    connector_id: &str,
    key: &str,
    expired: DateTime<Utc>,
) -> Result<Option<KeyUse>> {
    let row = conn
        .query_opt(
            "SELECT fingerprint, execution_id FROM idempotency_keys
             WHERE connector_id = $1 AND key = $2 AND created_at >= $3",
            &[&connector_id, &key, &expired],
        )
        .await?;
    Ok(row.map(|r| KeyUse {
        fingerprint: r.get(0),
        execution_id: r.get(1),
    }))
}

impl PgState {
    /// Stores `row` in the transaction of `claim`, a statement that changes
    /// one row when what it claims is still free (after `lock`, when given,
    /// which serialises the claims it names); false (nothing stored) when
    /// it changed none.
    pub(super) fn insert_execution_claiming(
        &self,
        lock: Option<(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])>,
        claim: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        row: &ExecutionRow,
    ) -> Result<bool> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            if let Some((lock, lock_params)) = lock {
                tx.execute(lock, lock_params).await?;
            }
            if tx.execute(claim, params).await? == 0 {
                return Ok(false);
            }
            insert_execution(&tx, row).await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}

impl ExecutionState for PgState {
    fn insert_execution(&self, row: &ExecutionRow) -> Result<()> {
        let conn = self.conn()?;
        self.wait(insert_execution(&*conn, row))
    }

    fn insert_execution_once(
        &self,
        row: &ExecutionRow,
        key: &IdempotencyKey,
        expired: DateTime<Utc>,
    ) -> Result<Option<KeyUse>> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            tx.execute("DELETE FROM idempotency_keys WHERE created_at < $1", &[&expired])
                .await?;
            let taken = tx
                .execute(
                    "INSERT INTO idempotency_keys (workspace_id, connector_id, key, fingerprint, execution_id, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (connector_id, key) DO NOTHING",
                    &[
                        &row.workspace_id,
                        &row.connector_id,
                        &key.key,
                        &key.fingerprint,
                        &row.document.id,
                        &now(),
                    ],
                )
                .await?
                == 0;
            if taken {
                let used = key_use(&tx, &row.connector_id, &key.key, expired).await?;
                tx.commit().await?;
                return Ok(used);
            }
            insert_execution(&tx, row).await?;
            tx.commit().await?;
            Ok(None)
        })
    }

    fn key_use(&self, connector_id: &str, key: &str, expired: DateTime<Utc>) -> Result<Option<KeyUse>> {
        let conn = self.conn()?;
        self.wait(key_use(&*conn, connector_id, key, expired))
    }

    fn input_name_of(&self, connector_id: &str, sha256: &str) -> Result<Option<String>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT input_name FROM executions
             WHERE connector_id = $1 AND source_file_id = $2 AND input_name IS NOT NULL
             ORDER BY id DESC LIMIT 1",
            &[&connector_id, &sha256],
        ))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn execution(&self, id: &str) -> Result<Option<ExecutionRow>> {
        let mut conn = self.conn()?;
        // As DOCUMENT, written out to be prepared once per connection.
        let statement = self.statement(
            &mut conn,
            "SELECT workspace_id, connector_id, definition, script, input_name,
             (CASE WHEN cancel_requested AND status = 'running'
              THEN jsonb_set(document, '{status}', '\"canceling\"') ELSE document END)::text
             FROM executions WHERE id = $1",
        )?;
        let row = self.wait(conn.query_opt(&statement, &[&id]))?;
        row.map(|r| {
            Ok(ExecutionRow {
                document: serde_json::from_str(r.get::<_, &str>(5))?,
                workspace_id: r.get(0),
                connector_id: r.get(1),
                definition: r.get(2),
                script: r.get(3),
                input_name: r.get(4),
            })
        })
        .transpose()
    }

    fn executions(
        &self,
        workspace_id: &str,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Execution>> {
        let conn = self.conn()?;
        let sql = format!(
            "SELECT {DOCUMENT} FROM executions
             WHERE workspace_id = $1 AND ($2::text IS NULL OR id < $2)
               AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR trigger_type = $4)
               AND ($5::boolean IS NULL OR is_dry_run = $5)
               AND ($6::timestamptz IS NULL OR created_at >= $6) AND ($7::timestamptz IS NULL OR created_at < $7)
               AND ($9::text[] IS NULL OR connector_id = ANY($9))
               AND ($10::text IS NULL OR id = $10 OR id IN (
                    SELECT execution_id FROM idempotency_keys WHERE workspace_id = $1 AND key = $10))
             ORDER BY id DESC LIMIT $8"
        );
        let rows = self.wait(conn.query(
            &sql,
            &[
                &workspace_id,
                &cursor,
                &filter.status,
                &filter.trigger_type,
                &filter.is_dry_run,
                &filter.created_after,
                &filter.created_before,
                &(limit as i64),
                &filter.connector_ids,
                &filter.search,
            ],
        ))?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(r.get::<_, &str>(0))?))
            .collect()
    }

    fn ended_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let sql =
            format!("SELECT id FROM executions WHERE workspace_id = $1 AND created_at < $2 AND status IN {ENDED}");
        let rows = self.wait(conn.query(&sql, &[&workspace_id, &before]))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn delete_execution(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            let sql = format!("DELETE FROM executions WHERE id = $1 AND status IN {ENDED}");
            if tx.execute(&sql, &[&id]).await? == 0 {
                return Ok(false);
            }
            tx.execute("DELETE FROM execution_logs WHERE execution_id = $1", &[&id])
                .await?;
            tx.execute(
                "DELETE FROM webhooks WHERE batch_id IN (SELECT id FROM webhook_batches WHERE execution_id = $1)",
                &[&id],
            )
            .await?;
            tx.execute("DELETE FROM webhook_batches WHERE execution_id = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM idempotency_keys WHERE execution_id = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM notifications WHERE execution_id = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM notification_attempts WHERE execution_id = $1", &[&id])
                .await?;
            tx.execute(
                "DELETE FROM schedule_ticks WHERE execution_id = $1
                 AND tick_at < (SELECT MAX(tick_at) FROM schedule_ticks t WHERE t.connector_id = schedule_ticks.connector_id)",
                &[&id],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn append_log(&self, execution_id: &str, level: &str, message: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "INSERT INTO execution_logs (execution_id, seq, at, level, message)
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM execution_logs WHERE execution_id = $1",
        )?;
        // Processes may write one execution's log at once (its owner, a
        // cancel, the sweeper): a number taken meanwhile is taken again.
        for _ in 0..20 {
            let written = self.wait(conn.execute(&statement, &[&execution_id, &now(), &level, &message]));
            match written {
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
                other => {
                    other?;
                    return Ok(());
                }
            }
        }
        Err(StateError::Store {
            kind: StateFault::Conflict,
            source: format!("a log line of {execution_id} could not be numbered").into(),
        })
    }

    fn logs(&self, execution_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "SELECT seq, at, level, message FROM execution_logs WHERE execution_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )?;
        let rows = self.wait(conn.query(&statement, &[&execution_id, &(after as i64), &(limit as i64)]))?;
        Ok(rows
            .iter()
            .map(|r| LogLine {
                seq: r.get::<_, i64>(0) as u64,
                at: r.get(1),
                level: r.get(2),
                message: r.get(3),
            })
            .collect())
    }
}
