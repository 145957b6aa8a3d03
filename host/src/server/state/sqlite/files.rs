//! Files of workspaces, and when their content may go, in SQLite.

use super::*;

fn content_in_use(conn: &Connection, sha256: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM files WHERE sha256 = ?1) OR EXISTS (SELECT 1 FROM plugins WHERE sha256 = ?1)",
        [sha256],
        |r| r.get(0),
    )?)
}

pub(super) fn insert_file(conn: &Connection, workspace_id: &str, file: &FileRow) -> Result<()> {
    conn.execute(
        "INSERT INTO files (workspace_id, sha256, size, name, content_type, created_at, uploaded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT DO UPDATE SET uploaded_at = excluded.uploaded_at",
        params![
            workspace_id,
            file.sha256,
            file.size as i64,
            file.name,
            file.content_type,
            file.created_at.to_rfc3339()
        ],
    )?;
    Ok(())
}

pub(super) fn note_uploader(conn: &Connection, workspace_id: &str, sha256: &str, key_id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO file_uploaders (workspace_id, sha256, key_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        [workspace_id, sha256, key_id],
    )?;
    Ok(())
}

impl FileState for Db {
    fn insert_file(&self, workspace_id: &str, file: &FileRow) -> Result<FileRow> {
        insert_file(&self.lock(), workspace_id, file)?;
        self.file(workspace_id, &file.sha256)?
            .ok_or_else(|| StateError::from(rusqlite::Error::QueryReturnedNoRows))
    }

    fn note_uploader(&self, workspace_id: &str, sha256: &str, key_id: &str) -> Result<()> {
        note_uploader(&self.lock(), workspace_id, sha256, key_id)
    }

    fn file_reached(&self, workspace_id: &str, sha256: &str, key_id: &str, only: &[String]) -> Result<bool> {
        let only = serde_json::Value::from(only.to_vec()).to_string();
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM file_uploaders WHERE workspace_id = ?1 AND sha256 = ?2 AND key_id = ?3)
                 OR EXISTS (SELECT 1 FROM connectors c WHERE c.workspace_id = ?1 AND c.sample_file_id = ?2
                            AND (c.id IN (SELECT value FROM json_each(?4)) OR c.api_name IN (SELECT value FROM json_each(?4))))
                 OR EXISTS (SELECT 1 FROM executions e JOIN connectors c ON c.id = e.connector_id
                            WHERE e.workspace_id = ?1 AND e.source_file_id = ?2
                            AND (c.id IN (SELECT value FROM json_each(?4)) OR c.api_name IN (SELECT value FROM json_each(?4))))",
            params![workspace_id, sha256, key_id, only],
            |r| r.get(0),
        )?)
    }

    fn file(&self, workspace_id: &str, sha256: &str) -> Result<Option<FileRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT sha256, size, name, content_type, created_at FROM files WHERE workspace_id = ?1 AND sha256 = ?2",
                [workspace_id, sha256],
                |r| {
                    Ok(FileRow {
                        sha256: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        name: r.get(2)?,
                        content_type: r.get(3)?,
                        created_at: time(&r.get::<_, String>(4)?),
                    })
                },
            )
            .optional()?)
    }

    fn delete_file(&self, workspace_id: &str, sha256: &str) -> Result<FileDeletion> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let sample: Option<String> = tx
            .query_row(
                "SELECT api_name FROM connectors WHERE workspace_id = ?1 AND sample_file_id = ?2 LIMIT 1",
                [workspace_id, sha256],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(connector) = sample {
            return Ok(FileDeletion::InUse(format!(
                "it is the sample of connector `{connector}`"
            )));
        }
        let reading: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT id FROM executions WHERE workspace_id = ?1 AND source_file_id = ?2
                     AND status NOT IN {ENDED} LIMIT 1"
                ),
                [workspace_id, sha256],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(execution) = reading {
            return Ok(FileDeletion::InUse(format!(
                "execution `{execution}` reads it and has not ended"
            )));
        }
        let deleted = tx.execute(
            "DELETE FROM files WHERE workspace_id = ?1 AND sha256 = ?2",
            [workspace_id, sha256],
        )?;
        tx.execute(
            "DELETE FROM file_uploaders WHERE workspace_id = ?1 AND sha256 = ?2",
            [workspace_id, sha256],
        )?;
        tx.commit()?;
        Ok(if deleted == 0 {
            FileDeletion::Missing
        } else {
            FileDeletion::Deleted
        })
    }

    fn content_in_use(&self, sha256: &str) -> Result<bool> {
        content_in_use(&self.lock(), sha256)
    }

    fn begin_content_removal(&self, sha256: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if content_in_use(&tx, sha256)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO content_removals (sha256, generation, active, active_since) VALUES (?1, 1, 1, ?2)
             ON CONFLICT (sha256) DO UPDATE SET generation = generation + 1, active = active + 1, active_since = ?2",
            params![sha256, now()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn end_content_removal(&self, sha256: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE content_removals SET active = MAX(active - 1, 0),
             active_since = CASE WHEN active > 1 THEN active_since END WHERE sha256 = ?1",
            [sha256],
        )?;
        Ok(())
    }

    fn content_removals(&self, sha256: &str) -> Result<ContentRemovals> {
        // Read twice by every upload: a cached statement.
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT generation, active, active_since FROM content_removals WHERE sha256 = ?1")?;
        let found = stmt
            .query_row([sha256], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .optional()?;
        Ok(match found {
            Some((begun, active, active_since)) => ContentRemovals {
                begun,
                active,
                active_since: active_since.as_deref().map(time),
            },
            None => ContentRemovals::default(),
        })
    }

    fn unused_files_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT f.sha256 FROM files f WHERE f.workspace_id = ?1 AND f.uploaded_at < ?2
             AND NOT EXISTS (SELECT 1 FROM connectors c WHERE c.workspace_id = ?1 AND c.sample_file_id = f.sha256)
             AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.workspace_id = ?1 AND e.source_file_id = f.sha256)",
        )?;
        let rows = stmt.query_map(params![workspace_id, before.to_rfc3339()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
