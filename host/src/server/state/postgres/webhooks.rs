//! Webhook payloads and their batches, in PostgreSQL.

use super::*;

/// Serialises what changes one connector's batches (a payload received, a
/// batch closed), in every process, until the transaction ends.
const BATCH_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 3))";

impl WebhookState for PgState {
    fn receive_webhook(
        &self,
        workspace_id: &str,
        connector_id: &str,
        payload: &WebhookRow,
        signed: bool,
        window: std::time::Duration,
        buffering: bool,
    ) -> Result<WebhookReceipt> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            tx.execute(BATCH_LOCK, &[&connector_id]).await?;
            let seen = tx
                .query_opt(
                    "SELECT b.id, b.closes_at, b.execution_id, w.body = $3 FROM webhooks w
                     JOIN webhook_batches b ON b.id = w.batch_id
                     WHERE w.connector_id = $1 AND w.signed = $4 AND w.webhook_id = $2",
                    &[&connector_id, &payload.webhook_id, &payload.body, &signed],
                )
                .await?;
            if let Some(r) = seen {
                return Ok(WebhookReceipt {
                    batch_id: r.get(0),
                    closes_at: r.get(1),
                    execution_id: r.get(2),
                    duplicate: true,
                    differs: !r.get::<_, bool>(3),
                });
            }
            let open = if window.is_zero() {
                None
            } else {
                tx.query_opt(
                    "SELECT id, closes_at FROM webhook_batches WHERE connector_id = $1 AND execution_id IS NULL
                       AND ($2 OR closes_at > $3)
                     ORDER BY opened_at LIMIT 1",
                    &[&connector_id, &buffering, &Utc::now()],
                )
                .await?
                .map(|r| (r.get::<_, String>(0), r.get::<_, DateTime<Utc>>(1)))
            };
            let (batch_id, closes_at) = match open {
                Some(open) => open,
                None => {
                    let id = uuid::Uuid::now_v7().to_string();
                    let opened = Utc::now();
                    let closes_at = opened + chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX);
                    tx.execute(
                        "INSERT INTO webhook_batches (id, workspace_id, connector_id, opened_at, closes_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&id, &workspace_id, &connector_id, &opened, &closes_at],
                    )
                    .await?;
                    (id, closes_at)
                }
            };
            tx.execute(
                "INSERT INTO webhooks (connector_id, signed, webhook_id, batch_id, received_at, content_type,
                    querystring, body)
                 VALUES ($1, $8, $2, $3, $4, $5, $6, $7)",
                &[
                    &connector_id,
                    &payload.webhook_id,
                    &batch_id,
                    &payload.received_at,
                    &payload.content_type,
                    &payload.querystring,
                    &payload.body,
                    &signed,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(WebhookReceipt {
                batch_id,
                closes_at,
                execution_id: None,
                duplicate: false,
                differs: false,
            })
        })
    }

    fn due_batches(&self, now: DateTime<Utc>) -> Result<Vec<OpenBatch>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT id, workspace_id, connector_id FROM webhook_batches
             WHERE execution_id IS NULL AND closes_at <= $1 ORDER BY closes_at",
            &[&now],
        ))?;
        Ok(rows
            .iter()
            .map(|r| OpenBatch {
                id: r.get(0),
                workspace_id: r.get(1),
                connector_id: r.get(2),
            })
            .collect())
    }

    fn next_batch_due(&self) -> Result<Option<DateTime<Utc>>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_one(
            "SELECT MIN(closes_at) FROM webhook_batches WHERE execution_id IS NULL",
            &[],
        ))?;
        Ok(row.get(0))
    }

    fn batch_payloads(&self, batch_id: &str) -> Result<Vec<WebhookRow>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT received_at, webhook_id, content_type, querystring, body FROM webhooks
             WHERE batch_id = $1 ORDER BY received_at, arrival",
            &[&batch_id],
        ))?;
        Ok(rows
            .iter()
            .map(|r| WebhookRow {
                received_at: r.get(0),
                webhook_id: r.get(1),
                content_type: r.get(2),
                querystring: r.get(3),
                body: r.get(4),
            })
            .collect())
    }

    fn close_batch(&self, batch_id: &str, payloads: usize, row: &ExecutionRow) -> Result<bool> {
        self.insert_execution_claiming(
            Some((BATCH_LOCK, &[&row.connector_id])),
            "UPDATE webhook_batches SET execution_id = $2
             WHERE id = $1 AND execution_id IS NULL
               AND (SELECT count(*) FROM webhooks WHERE batch_id = $1) = $3",
            &[&batch_id, &row.document.id, &(payloads as i64)],
            row,
        )
    }
}
