//! Leased runs: claims, documents written by their owner, cancels and the
//! queue, in PostgreSQL.

use super::*;

/// The channel cancels are announced on.
const CANCEL_CHANNEL: &str = "weir_cancel";

/// The statuses of an execution a process runs (and holds a lease on).
const LEASED: &str = "('running', 'canceling')";

impl LeaseState for PgState {
    fn save_document(&self, doc: &Execution, from: Option<Status>) -> Result<bool> {
        let sql = "UPDATE executions SET status = $2, document = $3::text::jsonb
             WHERE id = $1 AND ($4::text IS NULL OR status = $4)";
        let document = serde_json::to_string(doc)?;
        let from = from.map(Status::as_str);
        self.save(sql, doc, &[&doc.id, &doc.status.as_str(), &document, &from])
    }

    fn claim(&self, doc: &Execution, connector_id: &str, max: u32, owner: &str, lease_until: i64) -> Result<bool> {
        let mut conn = self.conn()?;
        let document = serde_json::to_string(doc)?;
        self.wait(async {
            let tx = conn.transaction().await?;
            // Claims of one connector's runs, in any process, one at a
            // time: each counts the runs the others claimed.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 2))",
                &[&connector_id],
            )
            .await?;
            let sql = format!(
                "UPDATE executions SET status = $2, document = $3::text::jsonb, owner = $4, lease_until = $5
                 WHERE id = $1 AND status = 'queued'
                   AND (SELECT count(*) FROM executions WHERE connector_id = $6 AND status IN {LEASED}) < $7"
            );
            let n = tx
                .execute(
                    &sql,
                    &[
                        &doc.id,
                        &doc.status.as_str(),
                        &document,
                        &owner,
                        &lease_until,
                        &connector_id,
                        &i64::from(max),
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    fn save_owned(&self, doc: &Execution, owner: &str) -> Result<bool> {
        let sql = "UPDATE executions SET status = $2, document = $3::text::jsonb
             WHERE id = $1 AND owner = $4 AND status IN ('running', 'canceling')";
        let document = serde_json::to_string(doc)?;
        self.save(sql, doc, &[&doc.id, &doc.status.as_str(), &document, &owner])
    }

    fn extend_leases(&self, owner: &str, ids: &[String], until: i64) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let sql = format!(
            "UPDATE executions SET lease_until = $3 WHERE id = ANY($1) AND owner = $2 AND status IN {LEASED}
             RETURNING id"
        );
        self.wait(async {
            let extended: Vec<String> = conn
                .query(&sql, &[&ids, &owner, &until])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let rest: Vec<&String> = ids.iter().filter(|id| !extended.contains(id)).collect();
            if rest.is_empty() {
                return Ok(Vec::new());
            }
            // A run that has just ended is still this process's, not lost.
            let ours: Vec<String> = conn
                .query(
                    "SELECT id FROM executions WHERE id = ANY($1) AND owner = $2",
                    &[&rest, &owner],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(rest.into_iter().filter(|id| !ours.contains(id)).cloned().collect())
        })
    }

    fn cancel_requests(&self, owner: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let sql = format!("SELECT id FROM executions WHERE owner = $1 AND cancel_requested AND status IN {LEASED}");
        Ok(self
            .wait(conn.query(&sql, &[&owner]))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn request_cancel(&self, id: &str) -> Result<bool> {
        let conn = self.conn()?;
        // Every process listening hears of it when the change commits.
        let sql = format!(
            "WITH asked AS (UPDATE executions SET cancel_requested = TRUE WHERE id = $1 AND status IN {LEASED}
                            RETURNING id)
             SELECT pg_notify('{CANCEL_CHANNEL}', id) FROM asked"
        );
        Ok(!self.wait(conn.query(&sql, &[&id]))?.is_empty())
    }

    fn cancel_signals(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.listen(CANCEL_CHANNEL)
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        let conn = self.conn()?;
        let sql = format!("SELECT id, owner, lease_until FROM executions WHERE status IN {LEASED} ORDER BY id");
        Ok(self
            .wait(conn.query(&sql, &[]))?
            .iter()
            .map(|r| Lease {
                id: r.get(0),
                owner: r.get(1),
                until: r.get(2),
            })
            .collect())
    }

    fn take_over(&self, seen: &Lease, by: &str) -> Result<bool> {
        let conn = self.conn()?;
        let sql = format!(
            "UPDATE executions SET owner = $4, lease_until = 0
             WHERE id = $1 AND status IN {LEASED}
               AND owner IS NOT DISTINCT FROM $2 AND lease_until IS NOT DISTINCT FROM $3"
        );
        Ok(self.wait(conn.execute(&sql, &[&seen.id, &seen.owner, &seen.until, &by]))? > 0)
    }

    fn sweeper_turn(&self, owner: &str, now: i64, until: i64) -> Result<bool> {
        let conn = self.conn()?;
        let n = self.wait(conn.execute(
            "INSERT INTO sweeper (id, owner, until) VALUES (1, $1, $3)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, until = excluded.until
             WHERE sweeper.owner = excluded.owner OR sweeper.until < $2",
            &[&owner, &now, &until],
        ))?;
        Ok(n == 1)
    }

    fn queued(&self) -> Result<Vec<(String, String, bool)>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT id, connector_id, is_dry_run FROM executions WHERE status = 'queued' ORDER BY id",
            &[],
        ))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    fn queue_position(&self, workspace_id: &str, id: &str) -> Result<u64> {
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "SELECT COUNT(*) FROM executions WHERE status = 'queued' AND workspace_id = $1 AND id < $2",
        )?;
        let row = self.wait(conn.query_one(&statement, &[&workspace_id, &id]))?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

impl PgState {
    /// Runs `sql`, an update of `doc`'s row, with `params`; whether it
    /// changed the row. An end is stored with its notifications in one
    /// transaction; other saves (a run's persister, every 100 ms) are one
    /// statement, prepared once per connection.
    fn save(
        &self,
        sql: &'static str,
        doc: &Execution,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool> {
        let mut conn = self.conn()?;
        if doc.status.is_terminal() {
            return self.wait(async {
                let tx = conn.transaction().await?;
                let n = tx.execute(sql, params).await?;
                if n > 0 {
                    super::notifications::store_at_end(&tx, doc).await?;
                }
                tx.commit().await?;
                Ok(n > 0)
            });
        }
        let statement = self.statement(&mut conn, sql)?;
        Ok(self.wait(conn.execute(&statement, params))? > 0)
    }
}
