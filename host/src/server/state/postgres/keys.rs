//! Workspaces and API keys, in PostgreSQL.

use tokio_postgres::Row;

use super::*;

const KEY_COLUMNS: &str = "id, workspace_id, name, role, connectors, secret_sha256, created_at, revoked_at";

fn key_row(r: &Row) -> KeyRow {
    let connectors: Option<String> = r.get(4);
    KeyRow {
        id: r.get(0),
        workspace_id: r.get(1),
        name: r.get(2),
        role: r.get(3),
        connectors: connectors.and_then(|c| serde_json::from_str(&c).ok()),
        secret_sha256: r.get(5),
        created_at: r.get(6),
        revoked_at: r.get(7),
    }
}

fn workspace_row(r: &Row) -> Workspace {
    Workspace {
        id: r.get(0),
        name: r.get(1),
    }
}

impl KeyState for PgState {
    fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRow>> {
        // Every request: a statement prepared once per connection.
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "SELECT id, workspace_id, name, role, connectors, secret_sha256, created_at, revoked_at
             FROM api_keys WHERE secret_sha256 = $1",
        )?;
        Ok(self.wait(conn.query_opt(&statement, &[&sha256]))?.as_ref().map(key_row))
    }

    fn workspace_named(&self, name: &str) -> Result<Workspace> {
        let conn = self.conn()?;
        self.wait(async {
            conn.execute(
                "INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[&uuid::Uuid::now_v7().to_string(), &name, &now()],
            )
            .await?;
            let row = conn
                .query_one("SELECT id, name FROM workspaces WHERE name = $1", &[&name])
                .await?;
            Ok(workspace_row(&row))
        })
    }

    fn workspace(&self, id_or_name: &str) -> Result<Option<Workspace>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT id, name FROM workspaces WHERE id = $1 OR name = $1",
            &[&id_or_name],
        ))?;
        Ok(row.as_ref().map(workspace_row))
    }

    fn workspaces(&self) -> Result<Vec<Workspace>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query("SELECT id, name FROM workspaces ORDER BY name", &[]))?;
        Ok(rows.iter().map(workspace_row).collect())
    }

    fn is_empty(&self) -> Result<bool> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_one("SELECT NOT EXISTS (SELECT 1 FROM workspaces)", &[]))?;
        Ok(row.get(0))
    }

    fn insert_key(&self, key: &KeyRow) -> Result<()> {
        let connectors = key.connectors.as_ref().map(serde_json::to_string).transpose()?;
        let conn = self.conn()?;
        self.wait(conn.execute(
            "INSERT INTO api_keys (id, workspace_id, name, role, connectors, secret_sha256, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &key.id,
                &key.workspace_id,
                &key.name,
                &key.role,
                &connectors,
                &key.secret_sha256,
                &key.created_at,
            ],
        ))?;
        Ok(())
    }

    fn keys(&self, workspace_id: &str) -> Result<Vec<KeyRow>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE workspace_id = $1 ORDER BY id DESC");
        Ok(self
            .wait(conn.query(&sql, &[&workspace_id]))?
            .iter()
            .map(key_row)
            .collect())
    }

    fn revoke_key(&self, workspace_id: &str, id: &str) -> Result<bool> {
        let conn = self.conn()?;
        let n = self.wait(conn.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE workspace_id = $1 AND id = $2",
            &[&workspace_id, &id, &now()],
        ))?;
        Ok(n > 0)
    }

    fn insert_session(&self, session: &SessionRow) -> Result<()> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            tx.execute("DELETE FROM sessions WHERE expires_at < $1", &[&now()])
                .await?;
            tx.execute(
                "INSERT INTO sessions (token_sha256, key_sha256, csrf, expires_at) VALUES ($1, $2, $3, $4)",
                &[
                    &session.token_sha256,
                    &session.key_sha256,
                    &session.csrf,
                    &session.expires_at,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn session(&self, token_sha256: &str) -> Result<Option<SessionRow>> {
        // Every console request: a statement prepared once per connection.
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "SELECT token_sha256, key_sha256, csrf, expires_at FROM sessions
             WHERE token_sha256 = $1 AND expires_at >= now()",
        )?;
        Ok(self
            .wait(conn.query_opt(&statement, &[&token_sha256]))?
            .map(|r| SessionRow {
                token_sha256: r.get(0),
                key_sha256: r.get(1),
                csrf: r.get(2),
                expires_at: r.get(3),
            }))
    }

    fn delete_session(&self, token_sha256: &str) -> Result<()> {
        let conn = self.conn()?;
        self.wait(conn.execute("DELETE FROM sessions WHERE token_sha256 = $1", &[&token_sha256]))?;
        Ok(())
    }
}
