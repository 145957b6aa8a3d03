//! The notifications outbox, in PostgreSQL.

use tokio_postgres::{GenericClient, Row};

use super::*;

const COLUMNS: &str = "execution_id, n, workspace_id, url, secret, webhook_id, body, created_at, state, attempts, \
     next_attempt_at, retry_until";

fn row(r: &Row) -> NotificationRow {
    NotificationRow {
        execution_id: r.get(0),
        n: r.get::<_, i32>(1) as u32,
        workspace_id: r.get(2),
        url: r.get(3),
        secret: r.get(4),
        webhook_id: r.get(5),
        body: r.get(6),
        created_at: r.get(7),
        state: r.get(8),
        attempts: r.get::<_, i32>(9) as u32,
        next_attempt_at: r.get(10),
        retry_until: r.get(11),
    }
}

/// Stores the notifications of execution `doc`, which has just ended, in
/// the transaction `tx` of its end.
pub(super) async fn store_at_end(tx: &impl GenericClient, doc: &Execution) -> Result<()> {
    let stored = tx
        .query_one(
            "SELECT workspace_id, definition FROM executions WHERE id = $1",
            &[&doc.id],
        )
        .await?;
    let (workspace_id, definition): (String, String) = (stored.get(0), stored.get(1));
    for n in due_at_end(&workspace_id, &definition, doc) {
        tx.execute(
            &format!(
                "INSERT INTO notifications ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT DO NOTHING"
            ),
            &[
                &n.execution_id,
                &(n.n as i32),
                &n.workspace_id,
                &n.url,
                &n.secret,
                &n.webhook_id,
                &n.body,
                &n.created_at,
                &n.state,
                &(n.attempts as i32),
                &n.next_attempt_at,
                &n.retry_until,
            ],
        )
        .await?;
    }
    Ok(())
}

impl NotificationState for PgState {
    fn claim_notifications(&self, owner: &str, now: i64, until: i64, limit: usize) -> Result<Vec<NotificationRow>> {
        let conn = self.conn()?;
        let sql = format!(
            "UPDATE notifications SET claimed_by = $1, claimed_until = $3
             WHERE (execution_id, n) IN (SELECT execution_id, n FROM notifications
                 WHERE state = 'pending' AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2)
                 ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        );
        let rows = self.wait(conn.query(&sql, &[&owner, &now, &until, &(limit as i64)]))?;
        Ok(rows.iter().map(row).collect())
    }

    fn record_attempt(
        &self,
        execution_id: &str,
        n: u32,
        owner: &str,
        attempt: &AttemptRow,
        next: AfterAttempt,
    ) -> Result<bool> {
        let (state, next_at) = next.stored();
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            let updated = tx
                .execute(
                    "UPDATE notifications SET state = $4, next_attempt_at = $5, attempts = $6, claimed_by = NULL,
                         claimed_until = NULL
                     WHERE execution_id = $1 AND n = $2 AND claimed_by = $3",
                    &[
                        &execution_id,
                        &(n as i32),
                        &owner,
                        &state,
                        &next_at,
                        &(attempt.attempt as i32),
                    ],
                )
                .await?;
            if updated == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO notification_attempts (execution_id, n, attempt, at, status, error, took_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &execution_id,
                    &(n as i32),
                    &(attempt.attempt as i32),
                    &attempt.at,
                    &attempt.status.map(i32::from),
                    &attempt.error,
                    &(attempt.took_ms as i64),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn notifications(&self, execution_id: &str) -> Result<Vec<(NotificationRow, Vec<AttemptRow>)>> {
        let conn = self.conn()?;
        self.wait(async {
            let rows = conn
                .query(
                    &format!("SELECT {COLUMNS} FROM notifications WHERE execution_id = $1 ORDER BY n"),
                    &[&execution_id],
                )
                .await?;
            let attempts = conn
                .query(
                    "SELECT n, attempt, at, status, error, took_ms FROM notification_attempts
                     WHERE execution_id = $1 ORDER BY n, attempt",
                    &[&execution_id],
                )
                .await?;
            Ok(rows
                .iter()
                .map(row)
                .map(|n| {
                    let tried = attempts
                        .iter()
                        .filter(|a| a.get::<_, i32>(0) as u32 == n.n)
                        .map(|a| AttemptRow {
                            attempt: a.get::<_, i32>(1) as u32,
                            at: a.get(2),
                            status: a.get::<_, Option<i32>>(3).map(|s| s as u16),
                            error: a.get(4),
                            took_ms: a.get::<_, i64>(5) as u64,
                        })
                        .collect();
                    (n, tried)
                })
                .collect())
        })
    }

    fn redeliver(&self, execution_id: &str, n: u32, now: i64) -> Result<bool> {
        let conn = self.conn()?;
        let changed = self.wait(conn.execute(
            "UPDATE notifications SET state = 'pending', next_attempt_at = $3, retry_until = $3,
                 claimed_by = NULL, claimed_until = NULL
             WHERE execution_id = $1 AND n = $2",
            &[&execution_id, &(n as i32), &now],
        ))?;
        Ok(changed > 0)
    }

    fn next_notification_due(&self) -> Result<Option<i64>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_one(
            "SELECT MIN(CASE WHEN claimed_until > next_attempt_at THEN claimed_until ELSE next_attempt_at END)
             FROM notifications WHERE state = 'pending'",
            &[],
        ))?;
        Ok(row.get(0))
    }
}
