//! Executions: their rows, idempotency keys and log lines, in SQLite.

use super::*;

/// An execution row before its document is parsed.
struct RawExecution {
    workspace_id: String,
    connector_id: String,
    definition: String,
    script: String,
    input_name: Option<String>,
    document: String,
}

impl ExecutionState for Db {
    fn insert_execution(&self, row: &ExecutionRow) -> Result<()> {
        Self::insert_execution_on(&self.lock(), row)
    }

    fn insert_execution_once(
        &self,
        row: &ExecutionRow,
        key: &IdempotencyKey,
        expired: DateTime<Utc>,
    ) -> Result<Option<KeyUse>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            [expired.to_rfc3339()],
        )?;
        let taken = tx.execute(
            "INSERT INTO idempotency_keys (workspace_id, connector_id, key, fingerprint, execution_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (connector_id, key) DO NOTHING",
            params![
                row.workspace_id,
                row.connector_id,
                key.key,
                key.fingerprint,
                row.document.id,
                now()
            ],
        )? == 0;
        if taken {
            drop(tx);
            return Self::key_use_on(&conn, &row.connector_id, &key.key, expired);
        }
        Self::insert_execution_on(&tx, row)?;
        tx.commit()?;
        Ok(None)
    }

    fn key_use(&self, connector_id: &str, key: &str, expired: DateTime<Utc>) -> Result<Option<KeyUse>> {
        Self::key_use_on(&self.lock(), connector_id, key, expired)
    }

    fn input_name_of(&self, connector_id: &str, sha256: &str) -> Result<Option<String>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT input_name FROM executions
                 WHERE connector_id = ?1 AND source_file_id = ?2 AND input_name IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                params![connector_id, sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn execution(&self, id: &str) -> Result<Option<ExecutionRow>> {
        let found = {
            let conn = self.lock();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT workspace_id, connector_id, definition, script, input_name, {DOCUMENT}
                 FROM executions WHERE id = ?1"
            ))?;
            stmt.query_row([id], Self::execution_row).optional()?
        };
        found
            .map(|raw| {
                Ok(ExecutionRow {
                    document: serde_json::from_str(&raw.document)?,
                    workspace_id: raw.workspace_id,
                    connector_id: raw.connector_id,
                    definition: raw.definition,
                    script: raw.script,
                    input_name: raw.input_name,
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
        let conn = self.lock();
        let connectors = filter.connector_ids.as_ref().map(serde_json::to_string).transpose()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DOCUMENT} FROM executions
             WHERE workspace_id = ?1 AND (?2 IS NULL OR id < ?2)
               AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR trigger_type = ?4)
               AND (?5 IS NULL OR is_dry_run = ?5)
               AND (?6 IS NULL OR created_at >= ?6) AND (?7 IS NULL OR created_at < ?7)
               AND (?9 IS NULL OR connector_id IN (SELECT value FROM json_each(?9)))
               AND (?10 IS NULL OR id = ?10 OR id IN (
                    SELECT execution_id FROM idempotency_keys WHERE workspace_id = ?1 AND key = ?10))
             ORDER BY id DESC LIMIT ?8"
        ))?;
        let rows = stmt.query_map(
            params![
                workspace_id,
                cursor,
                filter.status,
                filter.trigger_type,
                filter.is_dry_run,
                filter.created_after.map(|t| t.to_rfc3339()),
                filter.created_before.map(|t| t.to_rfc3339()),
                limit as i64,
                connectors,
                filter.search,
            ],
            |r| r.get::<_, String>(0),
        )?;
        let mut out = Vec::new();
        for doc in rows {
            out.push(serde_json::from_str(&doc?)?);
        }
        Ok(out)
    }

    fn ended_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT id FROM executions WHERE workspace_id = ?1 AND created_at < ?2 AND status IN {ENDED}"
        ))?;
        let rows = stmt.query_map(params![workspace_id, before.to_rfc3339()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_execution(&self, id: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if tx.execute(
            &format!("DELETE FROM executions WHERE id = ?1 AND status IN {ENDED}"),
            [id],
        )? == 0
        {
            return Ok(false);
        }
        tx.execute("DELETE FROM execution_logs WHERE execution_id = ?1", [id])?;
        tx.execute(
            "DELETE FROM webhooks WHERE batch_id IN (SELECT id FROM webhook_batches WHERE execution_id = ?1)",
            [id],
        )?;
        tx.execute("DELETE FROM webhook_batches WHERE execution_id = ?1", [id])?;
        tx.execute("DELETE FROM idempotency_keys WHERE execution_id = ?1", [id])?;
        tx.execute("DELETE FROM notifications WHERE execution_id = ?1", [id])?;
        tx.execute("DELETE FROM notification_attempts WHERE execution_id = ?1", [id])?;
        tx.execute(
            "DELETE FROM schedule_ticks WHERE execution_id = ?1
             AND tick_at < (SELECT MAX(tick_at) FROM schedule_ticks t WHERE t.connector_id = schedule_ticks.connector_id)",
            [id],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn append_log(&self, execution_id: &str, level: &str, message: &str) -> Result<()> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO execution_logs (execution_id, seq, at, level, message)
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4 FROM execution_logs WHERE execution_id = ?1",
        )?;
        stmt.execute(params![execution_id, now(), level, message])?;
        Ok(())
    }

    fn logs(&self, execution_id: &str, after: u64, limit: usize) -> Result<Vec<LogLine>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at, level, message FROM execution_logs WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![execution_id, after as i64, limit as i64], |r| {
            Ok(LogLine {
                seq: r.get::<_, i64>(0)? as u64,
                at: time(&r.get::<_, String>(1)?),
                level: r.get(2)?,
                message: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Db {
    /// Stores `row` in the transaction of `claim`, a statement that changes
    /// one row when what it claims is still free; false (nothing stored)
    /// when it changed none.
    pub(super) fn insert_execution_claiming(
        &self,
        claim: &str,
        params: impl rusqlite::Params,
        row: &ExecutionRow,
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if tx.execute(claim, params)? == 0 {
            return Ok(false);
        }
        Self::insert_execution_on(&tx, row)?;
        tx.commit()?;
        Ok(true)
    }

    fn key_use_on(conn: &Connection, connector_id: &str, key: &str, expired: DateTime<Utc>) -> Result<Option<KeyUse>> {
        Ok(conn
            .query_row(
                "SELECT fingerprint, execution_id FROM idempotency_keys
                 WHERE connector_id = ?1 AND key = ?2 AND created_at >= ?3",
                params![connector_id, key, expired.to_rfc3339()],
                |r| {
                    Ok(KeyUse {
                        fingerprint: r.get(0)?,
                        execution_id: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn insert_execution_on(conn: &Connection, row: &ExecutionRow) -> Result<()> {
        let d = &row.document;
        conn.execute(
            "INSERT INTO executions (id, workspace_id, connector_id, status, trigger_type, is_dry_run, source_file_id,
                                     input_name, definition, script, document, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                d.id,
                row.workspace_id,
                row.connector_id,
                d.status.as_str(),
                d.trigger_type.as_str(),
                d.is_dry_run,
                d.source_file_id,
                row.input_name,
                row.definition,
                row.script,
                serde_json::to_string(d)?,
                d.created_at.to_rfc3339(),
            ],
        )?;
        Ok(())
    }

    fn execution_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawExecution> {
        Ok(RawExecution {
            workspace_id: r.get(0)?,
            connector_id: r.get(1)?,
            definition: r.get(2)?,
            script: r.get(3)?,
            input_name: r.get(4)?,
            document: r.get(5)?,
        })
    }
}
