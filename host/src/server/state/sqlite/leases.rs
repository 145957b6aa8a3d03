//! Leased runs: claims, documents written by their owner, cancels and the queue, in SQLite.

use super::*;

/// The workspace's queued executions ahead of one.
pub(super) const QUEUE_POSITION: &str =
    "SELECT COUNT(*) FROM executions WHERE status = 'queued' AND workspace_id = ?1 AND id < ?2";

impl LeaseState for Db {
    fn save_document(&self, doc: &Execution, from: Option<Status>) -> Result<bool> {
        self.save(
            "UPDATE executions SET status = ?2, document = ?3 WHERE id = ?1 AND (?4 IS NULL OR status = ?4)",
            doc,
            params![
                doc.id,
                doc.status.as_str(),
                serde_json::to_string(doc)?,
                from.map(Status::as_str)
            ],
        )
    }

    fn claim(&self, doc: &Execution, connector_id: &str, max: u32, owner: &str, lease_until: i64) -> Result<bool> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE executions SET status = ?2, document = ?3, owner = ?4, lease_until = ?5
             WHERE id = ?1 AND status = 'queued'
               AND (SELECT count(*) FROM executions WHERE connector_id = ?6 AND status IN {LEASED}) < ?7"
        ))?;
        let n = stmt.execute(params![
            doc.id,
            doc.status.as_str(),
            serde_json::to_string(doc)?,
            owner,
            lease_until,
            connector_id,
            max
        ])?;
        Ok(n > 0)
    }

    fn save_owned(&self, doc: &Execution, owner: &str) -> Result<bool> {
        self.save(
            &format!(
                "UPDATE executions SET status = ?2, document = ?3 WHERE id = ?1 AND owner = ?4 AND status IN {LEASED}"
            ),
            doc,
            params![doc.id, doc.status.as_str(), serde_json::to_string(doc)?, owner],
        )
    }

    fn extend_leases(&self, owner: &str, ids: &[String], until: i64) -> Result<Vec<String>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut lost = Vec::new();
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE executions SET lease_until = ?3 WHERE id = ?1 AND owner = ?2 AND status IN {LEASED}"
            ))?;
            let mut still_ours =
                tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM executions WHERE id = ?1 AND owner = ?2)")?;
            for id in ids {
                if stmt.execute(params![id, owner, until])? == 0
                    && !still_ours.query_row(params![id, owner], |r| r.get::<_, bool>(0))?
                {
                    lost.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(lost)
    }

    fn cancel_requests(&self, owner: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id FROM executions WHERE owner = ?1 AND cancel_requested = 1 AND status IN {LEASED}"
        ))?;
        let rows = stmt.query_map([owner], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn request_cancel(&self, id: &str) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!("UPDATE executions SET cancel_requested = 1 WHERE id = ?1 AND status IN {LEASED}"),
            [id],
        )?;
        Ok(n > 0)
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, owner, lease_until FROM executions WHERE status IN {LEASED} ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(Lease {
                id: r.get(0)?,
                owner: r.get(1)?,
                until: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn take_over(&self, seen: &Lease, by: &str) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!(
                "UPDATE executions SET owner = ?4, lease_until = 0
                 WHERE id = ?1 AND status IN {LEASED} AND owner IS ?2 AND lease_until IS ?3"
            ),
            params![seen.id, seen.owner, seen.until, by],
        )?;
        Ok(n > 0)
    }

    fn queued(&self) -> Result<Vec<(String, String, bool)>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT id, connector_id, is_dry_run FROM executions WHERE status = 'queued' ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn sweeper_turn(&self, owner: &str, now: i64, until: i64) -> Result<bool> {
        let n = self.lock().execute(
            "INSERT INTO sweeper (id, owner, until) VALUES (1, ?1, ?3)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, until = excluded.until
             WHERE sweeper.owner = excluded.owner OR sweeper.until < ?2",
            params![owner, now, until],
        )?;
        Ok(n == 1)
    }

    fn queue_position(&self, workspace_id: &str, id: &str) -> Result<u64> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(QUEUE_POSITION)?;
        let n: i64 = stmt.query_row([workspace_id, id], |r| r.get(0))?;
        Ok(n as u64)
    }
}

impl Db {
    /// Runs `sql`, an update of `doc`'s row, with `params`; whether it
    /// changed the row. An end is stored with its notifications, in one
    /// transaction.
    fn save(&self, sql: &str, doc: &Execution, params: impl rusqlite::Params) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.prepare_cached(sql)?.execute(params)?;
        if n > 0 && doc.status.is_terminal() {
            super::notifications::store_at_end(&tx, doc)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }
}
