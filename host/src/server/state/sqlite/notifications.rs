//! The notifications outbox, in SQLite.

use super::*;

const COLUMNS: &str = "execution_id, n, workspace_id, url, secret, webhook_id, body, created_at, state, attempts, \
     next_attempt_at, retry_until";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NotificationRow> {
    Ok(NotificationRow {
        execution_id: r.get(0)?,
        n: r.get(1)?,
        workspace_id: r.get(2)?,
        url: r.get(3)?,
        secret: r.get(4)?,
        webhook_id: r.get(5)?,
        body: r.get(6)?,
        created_at: time(&r.get::<_, String>(7)?),
        state: r.get(8)?,
        attempts: r.get(9)?,
        next_attempt_at: r.get(10)?,
        retry_until: r.get(11)?,
    })
}

/// Stores the notifications of execution `doc`, which has just ended, in
/// the transaction `tx` of its end.
pub(super) fn store_at_end(tx: &rusqlite::Transaction<'_>, doc: &Execution) -> Result<()> {
    let (workspace_id, definition): (String, String) = tx.query_row(
        "SELECT workspace_id, definition FROM executions WHERE id = ?1",
        [&doc.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for n in due_at_end(&workspace_id, &definition, doc) {
        tx.execute(
            &format!(
                "INSERT INTO notifications ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT DO NOTHING"
            ),
            params![
                n.execution_id,
                n.n,
                n.workspace_id,
                n.url,
                n.secret,
                n.webhook_id,
                n.body,
                n.created_at.to_rfc3339(),
                n.state,
                n.attempts,
                n.next_attempt_at,
                n.retry_until
            ],
        )?;
    }
    Ok(())
}

impl NotificationState for Db {
    fn claim_notifications(&self, owner: &str, now: i64, until: i64, limit: usize) -> Result<Vec<NotificationRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE notifications SET claimed_by = ?1, claimed_until = ?3
             WHERE rowid IN (SELECT rowid FROM notifications
                 WHERE state = 'pending' AND next_attempt_at <= ?2 AND (claimed_until IS NULL OR claimed_until < ?2)
                 ORDER BY next_attempt_at LIMIT ?4)
             RETURNING {COLUMNS}"
        ))?;
        let rows = stmt.query_map(params![owner, now, until, limit as i64], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn record_attempt(
        &self,
        execution_id: &str,
        n: u32,
        owner: &str,
        attempt: &AttemptRow,
        next: AfterAttempt,
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let (state, next_at) = next.stored();
        let updated = tx.execute(
            "UPDATE notifications SET state = ?4, next_attempt_at = ?5, attempts = ?6, claimed_by = NULL,
                 claimed_until = NULL
             WHERE execution_id = ?1 AND n = ?2 AND claimed_by = ?3",
            params![execution_id, n, owner, state, next_at, attempt.attempt],
        )?;
        if updated == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO notification_attempts (execution_id, n, attempt, at, status, error, took_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                execution_id,
                n,
                attempt.attempt,
                attempt.at.to_rfc3339(),
                attempt.status,
                attempt.error,
                attempt.took_ms as i64
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn notifications(&self, execution_id: &str) -> Result<Vec<(NotificationRow, Vec<AttemptRow>)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE execution_id = ?1 ORDER BY n"
        ))?;
        let rows: Vec<NotificationRow> = stmt.query_map([execution_id], row)?.collect::<rusqlite::Result<_>>()?;
        let mut attempts = conn.prepare_cached(
            "SELECT attempt, at, status, error, took_ms FROM notification_attempts
             WHERE execution_id = ?1 AND n = ?2 ORDER BY attempt",
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for n in rows {
            let tried = attempts
                .query_map(params![execution_id, n.n], |r| {
                    Ok(AttemptRow {
                        attempt: r.get(0)?,
                        at: time(&r.get::<_, String>(1)?),
                        status: r.get(2)?,
                        error: r.get(3)?,
                        took_ms: r.get::<_, i64>(4)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            out.push((n, tried));
        }
        Ok(out)
    }

    fn redeliver(&self, execution_id: &str, n: u32, now: i64) -> Result<bool> {
        let changed = self.lock().execute(
            "UPDATE notifications SET state = 'pending', next_attempt_at = ?3, retry_until = ?3,
                 claimed_by = NULL, claimed_until = NULL
             WHERE execution_id = ?1 AND n = ?2",
            params![execution_id, n, now],
        )?;
        Ok(changed > 0)
    }

    fn next_notification_due(&self) -> Result<Option<i64>> {
        Ok(self.lock().query_row(
            "SELECT MIN(CASE WHEN claimed_until > next_attempt_at THEN claimed_until ELSE next_attempt_at END)
             FROM notifications WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }
}
