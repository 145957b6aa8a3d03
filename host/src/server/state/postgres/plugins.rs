//! Published plugins, in PostgreSQL.

use tokio_postgres::{GenericClient, Row};

use super::*;

const PLUGIN_COLUMNS: &str = "name, version, sha256, size, created_at";

fn plugin_row(r: &Row) -> PluginRow {
    PluginRow {
        name: r.get(0),
        version: r.get(1),
        sha256: r.get(2),
        size: r.get::<_, i64>(3) as u64,
        created_at: r.get(4),
    }
}

/// True when the version is new (an existing one is left as it is). It
/// holds its content, so it waits for a removal of it under way.
pub(super) async fn insert_plugin(conn: &impl GenericClient, workspace_id: &str, plugin: &PluginRow) -> Result<bool> {
    hold_content(conn, &plugin.sha256).await?;
    Ok(conn
        .execute(
            "INSERT INTO plugins (workspace_id, name, version, sha256, size, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
            &[
                &workspace_id,
                &plugin.name,
                &plugin.version,
                &plugin.sha256,
                &(plugin.size as i64),
                &plugin.created_at,
            ],
        )
        .await?
        == 1)
}

impl PluginState for PgState {
    fn insert_plugin(&self, workspace_id: &str, plugin: &PluginRow) -> Result<(PluginRow, bool)> {
        let mut conn = self.conn()?;
        let inserted = self.wait(async {
            let tx = conn.transaction().await?;
            let inserted = insert_plugin(&tx, workspace_id, plugin).await?;
            tx.commit().await?;
            Ok::<_, StateError>(inserted)
        })?;
        drop(conn);
        // A row is never deleted, so the one just written or found is there.
        let stored = self
            .plugin(workspace_id, &plugin.name, &plugin.version)?
            .ok_or_else(|| StateError::missing("the plugin just stored"))?;
        Ok((stored, inserted))
    }

    fn plugins(&self, workspace_id: &str) -> Result<Vec<PluginRow>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE workspace_id = $1 ORDER BY name, version");
        Ok(self
            .wait(conn.query(&sql, &[&workspace_id]))?
            .iter()
            .map(plugin_row)
            .collect())
    }

    fn plugin(&self, workspace_id: &str, name: &str, version: &str) -> Result<Option<PluginRow>> {
        let conn = self.conn()?;
        let sql =
            format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE workspace_id = $1 AND name = $2 AND version = $3");
        let row = self.wait(conn.query_opt(&sql, &[&workspace_id, &name, &version]))?;
        Ok(row.as_ref().map(plugin_row))
    }

    fn plugin_by_ref(&self, workspace_id: &str, plugin: &PluginRef) -> Result<Option<PluginRow>> {
        match plugin {
            PluginRef::Named { name, version } => self.plugin(workspace_id, name, version),
            PluginRef::Sha256(hex) => self.plugin_by_sha(workspace_id, hex),
        }
    }

    fn plugin_by_sha(&self, workspace_id: &str, sha256: &str) -> Result<Option<PluginRow>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE workspace_id = $1 AND sha256 = $2 LIMIT 1");
        let row = self.wait(conn.query_opt(&sql, &[&workspace_id, &sha256]))?;
        Ok(row.as_ref().map(plugin_row))
    }
}
