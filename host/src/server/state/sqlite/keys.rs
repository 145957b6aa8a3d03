//! Workspaces and API keys, in SQLite.

use super::*;

impl KeyState for Db {
    fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM api_keys WHERE secret_sha256 = ?1",
            Self::KEY_COLUMNS
        ))?;
        Ok(stmt.query_row([sha256], Self::key_row).optional()?)
    }

    fn workspace_named(&self, name: &str) -> Result<Workspace> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO workspaces (id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![uuid::Uuid::now_v7().to_string(), name, now()],
        )?;
        Ok(
            conn.query_row("SELECT id, name FROM workspaces WHERE name = ?1", [name], |r| {
                Ok(Workspace {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })?,
        )
    }

    fn workspace(&self, id_or_name: &str) -> Result<Option<Workspace>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, name FROM workspaces WHERE id = ?1 OR name = ?1",
                [id_or_name],
                |r| {
                    Ok(Workspace {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn workspaces(&self) -> Result<Vec<Workspace>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, name FROM workspaces ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(Workspace {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn is_empty(&self) -> Result<bool> {
        let n: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM workspaces", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    fn insert_key(&self, key: &KeyRow) -> Result<()> {
        let connectors = key.connectors.as_ref().map(serde_json::to_string).transpose()?;
        self.lock().execute(
            "INSERT INTO api_keys (id, workspace_id, name, role, connectors, secret_sha256, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id,
                key.workspace_id,
                key.name,
                key.role,
                connectors,
                key.secret_sha256,
                key.created_at.to_rfc3339()
            ],
        )?;
        Ok(())
    }

    fn keys(&self, workspace_id: &str) -> Result<Vec<KeyRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM api_keys WHERE workspace_id = ?1 ORDER BY id DESC",
            Self::KEY_COLUMNS
        ))?;
        let rows = stmt.query_map([workspace_id], Self::key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_key(&self, workspace_id: &str, id: &str) -> Result<bool> {
        let n = self.lock().execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3) WHERE workspace_id = ?1 AND id = ?2",
            params![workspace_id, id, now()],
        )?;
        Ok(n > 0)
    }

    fn insert_session(&self, session: &SessionRow) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM sessions WHERE expires_at < ?1", [now()])?;
        tx.execute(
            "INSERT INTO sessions (token_sha256, key_sha256, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                session.token_sha256,
                session.key_sha256,
                session.csrf,
                session.expires_at.to_rfc3339()
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session(&self, token_sha256: &str) -> Result<Option<SessionRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT token_sha256, key_sha256, csrf, expires_at FROM sessions
             WHERE token_sha256 = ?1 AND expires_at >= ?2",
        )?;
        Ok(stmt
            .query_row(params![token_sha256, now()], |r| {
                Ok(SessionRow {
                    token_sha256: r.get(0)?,
                    key_sha256: r.get(1)?,
                    csrf: r.get(2)?,
                    expires_at: time(&r.get::<_, String>(3)?),
                })
            })
            .optional()?)
    }

    fn delete_session(&self, token_sha256: &str) -> Result<()> {
        self.lock()
            .execute("DELETE FROM sessions WHERE token_sha256 = ?1", [token_sha256])?;
        Ok(())
    }
}

impl Db {
    fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
        let connectors: Option<String> = r.get(4)?;
        Ok(KeyRow {
            id: r.get(0)?,
            workspace_id: r.get(1)?,
            name: r.get(2)?,
            role: r.get(3)?,
            connectors: connectors.and_then(|c| serde_json::from_str(&c).ok()),
            secret_sha256: r.get(5)?,
            created_at: time(&r.get::<_, String>(6)?),
            revoked_at: r.get::<_, Option<String>>(7)?.map(|t| time(&t)),
        })
    }

    const KEY_COLUMNS: &str = "id, workspace_id, name, role, connectors, secret_sha256, created_at, revoked_at";
}
