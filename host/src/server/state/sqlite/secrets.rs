//! Sealed workspace secrets, in SQLite.

use super::*;

impl SecretState for Db {
    fn put_secret(&self, workspace_id: &str, name: &str, sealed: &[u8], now: DateTime<Utc>) -> Result<bool> {
        let conn = self.lock();
        let existed: bool = conn
            .query_row(
                "SELECT 1 FROM secrets WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        conn.execute(
            "INSERT INTO secrets (workspace_id, name, sealed, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (workspace_id, name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            params![workspace_id, name, sealed, now.to_rfc3339()],
        )?;
        Ok(!existed)
    }

    fn secrets(&self, workspace_id: &str) -> Result<Vec<SecretRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT name, sealed, created_at, updated_at FROM secrets WHERE workspace_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([workspace_id], Self::secret_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn secret(&self, workspace_id: &str, name: &str) -> Result<Option<SecretRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT name, sealed, created_at, updated_at FROM secrets WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                Self::secret_row,
            )
            .optional()?)
    }

    fn any_secret(&self) -> Result<Option<(String, SecretRow)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT workspace_id, name, sealed, created_at, updated_at FROM secrets LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        SecretRow {
                            name: r.get(1)?,
                            sealed: r.get(2)?,
                            created_at: time(&r.get::<_, String>(3)?),
                            updated_at: time(&r.get::<_, String>(4)?),
                        },
                    ))
                },
            )
            .optional()?)
    }

    fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool> {
        Ok(self.lock().execute(
            "DELETE FROM secrets WHERE workspace_id = ?1 AND name = ?2",
            [workspace_id, name],
        )? == 1)
    }
}

impl Db {
    fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
        Ok(SecretRow {
            name: r.get(0)?,
            sealed: r.get(1)?,
            created_at: time(&r.get::<_, String>(2)?),
            updated_at: time(&r.get::<_, String>(3)?),
        })
    }
}
