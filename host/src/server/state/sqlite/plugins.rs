//! Published plugins, in SQLite.

use super::*;

/// True when the version is new (an existing one is left as it is).
pub(super) fn insert_plugin(conn: &Connection, workspace_id: &str, plugin: &PluginRow) -> Result<bool> {
    Ok(conn.execute(
        "INSERT INTO plugins (workspace_id, name, version, sha256, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT DO NOTHING",
        params![
            workspace_id,
            plugin.name,
            plugin.version,
            plugin.sha256,
            plugin.size as i64,
            plugin.created_at.to_rfc3339()
        ],
    )? == 1)
}

impl PluginState for Db {
    fn insert_plugin(&self, workspace_id: &str, plugin: &PluginRow) -> Result<(PluginRow, bool)> {
        let inserted = insert_plugin(&self.lock(), workspace_id, plugin)?;
        // A row is never deleted, so the one just written or found is there.
        let stored = self
            .plugin(workspace_id, &plugin.name, &plugin.version)?
            .ok_or_else(|| StateError::from(rusqlite::Error::QueryReturnedNoRows))?;
        Ok((stored, inserted))
    }

    fn plugins(&self, workspace_id: &str) -> Result<Vec<PluginRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM plugins WHERE workspace_id = ?1 ORDER BY name, version",
            Self::PLUGIN_COLUMNS
        ))?;
        let rows = stmt.query_map([workspace_id], Self::plugin_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn plugin(&self, workspace_id: &str, name: &str, version: &str) -> Result<Option<PluginRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM plugins WHERE workspace_id = ?1 AND name = ?2 AND version = ?3",
                    Self::PLUGIN_COLUMNS
                ),
                [workspace_id, name, version],
                Self::plugin_row,
            )
            .optional()?)
    }

    fn plugin_by_ref(&self, workspace_id: &str, plugin: &PluginRef) -> Result<Option<PluginRow>> {
        match plugin {
            PluginRef::Named { name, version } => self.plugin(workspace_id, name, version),
            PluginRef::Sha256(hex) => self.plugin_by_sha(workspace_id, hex),
        }
    }

    fn plugin_by_sha(&self, workspace_id: &str, sha256: &str) -> Result<Option<PluginRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM plugins WHERE workspace_id = ?1 AND sha256 = ?2 LIMIT 1",
                    Self::PLUGIN_COLUMNS
                ),
                [workspace_id, sha256],
                Self::plugin_row,
            )
            .optional()?)
    }
}

impl Db {
    const PLUGIN_COLUMNS: &str = "name, version, sha256, size, created_at";

    fn plugin_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PluginRow> {
        Ok(PluginRow {
            name: r.get(0)?,
            version: r.get(1)?,
            sha256: r.get(2)?,
            size: r.get::<_, i64>(3)? as u64,
            created_at: time(&r.get::<_, String>(4)?),
        })
    }
}
