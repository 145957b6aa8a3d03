//! Connectors, their SQL versions and package writes, in SQLite.

use super::files::{insert_file, note_uploader};
use super::objects::insert_object;
use super::plugins::insert_plugin;
use super::*;

/// False when the api_name is taken. Writes two rows: call it inside a
/// transaction.
pub(super) fn insert_connector(conn: &Connection, row: &ConnectorRow, draft: &str) -> Result<bool> {
    let n = conn.execute(
        "INSERT INTO connectors (id, workspace_id, api_name, definition, sample_file_id, draft_version, live_version, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, NULL, ?6, ?6) ON CONFLICT DO NOTHING",
        params![row.id, row.workspace_id, row.api_name, serde_json::to_string(&row.connector)?, row.sample_file_id, now()],
    )?;
    if n == 0 {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO sql_versions (connector_id, version, text, created_at) VALUES (?1, 1, ?2, ?3)",
        params![row.id, draft, now()],
    )?;
    Ok(true)
}

/// False when the new api_name is taken.
fn update_connector(conn: &Connection, row: &ConnectorRow) -> Result<bool> {
    let r = conn.execute(
        "UPDATE connectors SET api_name = ?2, definition = ?3, sample_file_id = ?4, updated_at = ?5 WHERE id = ?1",
        params![
            row.id,
            row.api_name,
            serde_json::to_string(&row.connector)?,
            row.sample_file_id,
            now()
        ],
    );
    match r {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The draft's version. Writes two rows: call it inside a transaction.
pub(super) fn save_draft(conn: &Connection, connector_id: &str, text: &str) -> Result<u32> {
    let draft: u32 = conn.query_row(
        "SELECT draft_version FROM connectors WHERE id = ?1",
        [connector_id],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE sql_versions SET text = ?3, created_at = ?4 WHERE connector_id = ?1 AND version = ?2",
        params![connector_id, draft, text, now()],
    )?;
    conn.execute(
        "UPDATE connectors SET updated_at = ?2 WHERE id = ?1",
        params![connector_id, now()],
    )?;
    Ok(draft)
}

impl ConnectorState for Db {
    fn insert_connector(&self, row: &ConnectorRow, draft: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if !insert_connector(&tx, row, draft)? {
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    fn connector(&self, workspace_id: &str, id_or_name: &str) -> Result<Option<ConnectorRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM connectors WHERE workspace_id = ?1 AND (id = ?2 OR api_name = ?2)",
                    Self::CONNECTOR_COLUMNS
                ),
                [workspace_id, id_or_name],
                Self::connector_row,
            )
            .optional()?)
    }

    fn connector_by_id(&self, id: &str) -> Result<Option<ConnectorRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {} FROM connectors WHERE id = ?1", Self::CONNECTOR_COLUMNS),
                [id],
                Self::connector_row,
            )
            .optional()?)
    }

    fn connectors(
        &self,
        workspace_id: &str,
        only: Option<&[String]>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConnectorRow>> {
        // `only` (ids or api_names) filters in the query, so a page is full
        // whenever more of those connectors follow.
        let only = only.map(|names| serde_json::Value::from(names.to_vec()).to_string());
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM connectors WHERE workspace_id = ?1 AND (?2 IS NULL OR id < ?2) \
             AND (?4 IS NULL OR id IN (SELECT value FROM json_each(?4)) OR api_name IN (SELECT value FROM json_each(?4))) \
             ORDER BY id DESC LIMIT ?3",
            Self::CONNECTOR_COLUMNS
        ))?;
        let rows = stmt.query_map(
            params![workspace_id, cursor, i64::try_from(limit).unwrap_or(i64::MAX), only],
            Self::connector_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn update_connector(&self, row: &ConnectorRow) -> Result<bool> {
        update_connector(&self.lock(), row)
    }

    fn delete_connector(&self, id: &str) -> Result<()> {
        self.lock().execute("DELETE FROM connectors WHERE id = ?1", [id])?;
        Ok(())
    }

    fn save_draft(&self, connector_id: &str, text: &str) -> Result<u32> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let draft = save_draft(&tx, connector_id, text)?;
        tx.commit()?;
        Ok(draft)
    }

    fn write_package(&self, workspace_id: &str, push: &PackageWrite) -> Result<Result<(), PushRefused>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for def in &push.objects {
            insert_object(&tx, workspace_id, def)?;
        }
        for plugin in &push.plugins {
            if !insert_plugin(&tx, workspace_id, plugin)? {
                let stored: String = tx.query_row(
                    "SELECT sha256 FROM plugins WHERE workspace_id = ?1 AND name = ?2 AND version = ?3",
                    [workspace_id, &plugin.name, &plugin.version],
                    |r| r.get(0),
                )?;
                if stored != plugin.sha256 {
                    return Ok(Err(PushRefused::PluginTaken(format!(
                        "{}@{}",
                        plugin.name, plugin.version
                    ))));
                }
            }
        }
        if let Some((file, key_id)) = &push.sample {
            insert_file(&tx, workspace_id, file)?;
            note_uploader(&tx, workspace_id, &file.sha256, key_id)?;
        }
        match &push.connector {
            ConnectorWrite::Insert { row, draft } => {
                if !insert_connector(&tx, row, draft)? {
                    return Ok(Err(PushRefused::NameTaken));
                }
            }
            ConnectorWrite::Update { row, draft } => {
                if !update_connector(&tx, row)? {
                    return Ok(Err(PushRefused::NameTaken));
                }
                if let Some(draft) = draft {
                    save_draft(&tx, &row.id, draft)?;
                }
            }
        }
        tx.commit()?;
        Ok(Ok(()))
    }

    fn publish(&self, connector_id: &str, version: u32) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE connectors SET live_version = draft_version, draft_version = draft_version + 1, updated_at = ?3
             WHERE id = ?1 AND draft_version = ?2",
            params![connector_id, version, now()],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "UPDATE sql_versions SET published_at = ?3 WHERE connector_id = ?1 AND version = ?2",
            params![connector_id, version, now()],
        )?;
        tx.execute(
            "INSERT INTO sql_versions (connector_id, version, text, created_at)
             SELECT connector_id, version + 1, text, ?3 FROM sql_versions WHERE connector_id = ?1 AND version = ?2",
            params![connector_id, version, now()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn sql_versions(&self, connector_id: &str) -> Result<Vec<SqlVersion>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT version, text, created_at, published_at FROM sql_versions WHERE connector_id = ?1 ORDER BY version DESC",
        )?;
        let rows = stmt.query_map([connector_id], Self::sql_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn sql_version(&self, connector_id: &str, version: u32) -> Result<Option<SqlVersion>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT version, text, created_at, published_at FROM sql_versions WHERE connector_id = ?1 AND version = ?2",
                params![connector_id, version],
                Self::sql_row,
            )
            .optional()?)
    }
}

impl Db {
    const CONNECTOR_COLUMNS: &str =
        "id, workspace_id, api_name, definition, sample_file_id, draft_version, live_version, created_at, updated_at";

    fn connector_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConnectorRow> {
        Ok(ConnectorRow {
            id: r.get(0)?,
            workspace_id: r.get(1)?,
            api_name: r.get(2)?,
            connector: serde_json::from_str(&r.get::<_, String>(3)?)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?,
            sample_file_id: r.get(4)?,
            draft_version: r.get(5)?,
            live_version: r.get(6)?,
            created_at: time(&r.get::<_, String>(7)?),
            updated_at: time(&r.get::<_, String>(8)?),
        })
    }

    fn sql_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SqlVersion> {
        Ok(SqlVersion {
            version: r.get(0)?,
            text: r.get(1)?,
            created_at: time(&r.get::<_, String>(2)?),
            published_at: r.get::<_, Option<String>>(3)?.map(|t| time(&t)),
        })
    }

    /// Connectors of any workspace matching `condition` (SQL over the
    /// `connectors` table).
    pub(super) fn connectors_where(&self, condition: &str, params: impl rusqlite::Params) -> Result<Vec<ConnectorRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM connectors WHERE {condition}",
            Self::CONNECTOR_COLUMNS
        ))?;
        let rows = stmt.query_map(params, Self::connector_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
