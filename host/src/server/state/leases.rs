//! The queue across processes: claims, owned writes, leases, stored cancels and
//! take-overs.

use super::*;

/// The lease of a running execution: the process that runs it and until
/// when (milliseconds since the Unix epoch). No owner: a run of a server
/// from before leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The execution.
    pub id: String,
    /// The worker id of the process that runs it.
    pub owner: Option<String>,
    /// When the lease ends unless extended.
    pub until: Option<i64>,
}

/// The workspace's queued executions ahead of one.
pub(super) const QUEUE_POSITION: &str =
    "SELECT COUNT(*) FROM executions WHERE status = 'queued' AND workspace_id = ?1 AND id < ?2";

impl Db {
    /// Saves an execution's document; with `from`, only while the stored
    /// status is still `from` (false otherwise).
    pub fn save_document(&self, doc: &Execution, from: Option<Status>) -> Result<bool> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "UPDATE executions SET status = ?2, document = ?3 WHERE id = ?1 AND (?4 IS NULL OR status = ?4)",
        )?;
        let n = stmt.execute(params![
            doc.id,
            doc.status.as_str(),
            serde_json::to_string(doc)?,
            from.map(Status::as_str)
        ])?;
        Ok(n > 0)
    }

    /// Claims a queued execution for `owner`, leased until `lease_until`:
    /// it becomes `running` with `doc`, unless it has left the queue or its
    /// connector already runs `max` executions in any process (false).
    pub fn claim(&self, doc: &Execution, connector_id: &str, max: u32, owner: &str, lease_until: i64) -> Result<bool> {
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

    /// Saves the document of an execution `owner` runs; false once the run
    /// is no longer its own (another process resolved it).
    pub fn save_owned(&self, doc: &Execution, owner: &str) -> Result<bool> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE executions SET status = ?2, document = ?3 WHERE id = ?1 AND owner = ?4 AND status IN {LEASED}"
        ))?;
        let n = stmt.execute(params![doc.id, doc.status.as_str(), serde_json::to_string(doc)?, owner])?;
        Ok(n > 0)
    }

    /// Extends `owner`'s leases on `ids` to `until`; the ids whose lease
    /// another process holds now (a run that has just ended, still owned,
    /// is not one of them).
    pub fn extend_leases(&self, owner: &str, ids: &[String], until: i64) -> Result<Vec<String>> {
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

    /// The executions `owner` runs whose cancel was asked (of any process).
    pub fn cancel_requests(&self, owner: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id FROM executions WHERE owner = ?1 AND cancel_requested = 1 AND status IN {LEASED}"
        ))?;
        let rows = stmt.query_map([owner], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Asks whichever process runs the execution to cancel it; false when
    /// it does not run.
    pub fn request_cancel(&self, id: &str) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!("UPDATE executions SET cancel_requested = 1 WHERE id = ?1 AND status IN {LEASED}"),
            [id],
        )?;
        Ok(n > 0)
    }

    /// Every running (or canceling) execution's lease.
    pub fn leases(&self) -> Result<Vec<Lease>> {
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

    /// Takes a lost run over for resolving it, only while its lease is
    /// still `seen` (its owner did not extend it meanwhile): its owner
    /// becomes `by`, whose lease has already expired (so that a resolver
    /// that stops half-way leaves it to the next).
    pub fn take_over(&self, seen: &Lease, by: &str) -> Result<bool> {
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

    /// Queued executions, oldest first: (id, connector id, is dry run).
    pub fn queued(&self) -> Result<Vec<(String, String, bool)>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT id, connector_id, is_dry_run FROM executions WHERE status = 'queued' ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many queued executions of the workspace are ahead of `id`.
    pub fn queue_position(&self, workspace_id: &str, id: &str) -> Result<u64> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(QUEUE_POSITION)?;
        let n: i64 = stmt.query_row([workspace_id, id], |r| r.get(0))?;
        Ok(n as u64)
    }
}
