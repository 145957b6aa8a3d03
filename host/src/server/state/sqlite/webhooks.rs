//! Webhook payloads and their batches, in SQLite.

use super::*;

impl WebhookState for Db {
    fn receive_webhook(
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

    fn due_batches(&self, now: DateTime<Utc>) -> Result<Vec<OpenBatch>> {
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

    fn next_batch_due(&self) -> Result<Option<DateTime<Utc>>> {
        let conn = self.lock();
        let next: Option<String> = conn.query_row(
            "SELECT MIN(closes_at) FROM webhook_batches WHERE execution_id IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(next.map(|t| time(&t)))
    }

    fn batch_payloads(&self, batch_id: &str) -> Result<Vec<WebhookRow>> {
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

    fn close_batch(&self, batch_id: &str, payloads: usize, row: &ExecutionRow) -> Result<bool> {
        self.insert_execution_claiming(
            "UPDATE webhook_batches SET execution_id = ?2
             WHERE id = ?1 AND execution_id IS NULL
               AND (SELECT count(*) FROM webhooks WHERE batch_id = ?1) = ?3",
            params![batch_id, row.document.id, payloads],
            row,
        )
    }
}
