//! Sealed workspace secrets, in PostgreSQL.

use tokio_postgres::Row;

use super::*;

fn secret_row(r: &Row) -> SecretRow {
    SecretRow {
        name: r.get(0),
        sealed: r.get(1),
        created_at: r.get(2),
        updated_at: r.get(3),
    }
}

impl SecretState for PgState {
    fn put_secret(&self, workspace_id: &str, name: &str, sealed: &[u8], now: DateTime<Utc>) -> Result<bool> {
        let conn = self.conn()?;
        // `xmax = 0` only for a row this statement inserted.
        let row = self.wait(conn.query_one(
            "INSERT INTO secrets (workspace_id, name, sealed, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (workspace_id, name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at
             RETURNING xmax = 0",
            &[&workspace_id, &name, &sealed, &now],
        ))?;
        Ok(row.get(0))
    }

    fn secrets(&self, workspace_id: &str) -> Result<Vec<SecretRow>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT name, sealed, created_at, updated_at FROM secrets WHERE workspace_id = $1 ORDER BY name",
            &[&workspace_id],
        ))?;
        Ok(rows.iter().map(secret_row).collect())
    }

    fn secret(&self, workspace_id: &str, name: &str) -> Result<Option<SecretRow>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT name, sealed, created_at, updated_at FROM secrets WHERE workspace_id = $1 AND name = $2",
            &[&workspace_id, &name],
        ))?;
        Ok(row.as_ref().map(secret_row))
    }

    fn any_secret(&self) -> Result<Option<(String, SecretRow)>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT workspace_id, name, sealed, created_at, updated_at FROM secrets LIMIT 1",
            &[],
        ))?;
        Ok(row.map(|r| {
            (
                r.get(0),
                SecretRow {
                    name: r.get(1),
                    sealed: r.get(2),
                    created_at: r.get(3),
                    updated_at: r.get(4),
                },
            )
        }))
    }

    fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool> {
        let conn = self.conn()?;
        let n = self.wait(conn.execute(
            "DELETE FROM secrets WHERE workspace_id = $1 AND name = $2",
            &[&workspace_id, &name],
        ))?;
        Ok(n == 1)
    }
}
