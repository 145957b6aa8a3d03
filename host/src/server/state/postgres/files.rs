//! Files of workspaces, and when their content may go, in PostgreSQL.
//!
//! A removal of content and the recording of a new holder of it (a file or
//! plugin row) take the same transaction-scoped advisory lock, named by
//! the content's hash, so that one of them sees the other: a removal finds
//! the new holder and is refused, or the holder's placement reads the
//! removal it must place again after (`server/files.rs`). SQLite gets the
//! same order from its single writer.

use tokio_postgres::GenericClient;

use super::*;

/// Waits until no other transaction removes or holds content `sha256`,
/// until this transaction ends.
pub(super) async fn hold_content(conn: &impl GenericClient, sha256: &str) -> Result<()> {
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&sha256])
        .await?;
    Ok(())
}

async fn content_in_use(conn: &impl GenericClient, sha256: &str) -> Result<bool> {
    let row = conn
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM files WHERE sha256 = $1) OR EXISTS (SELECT 1 FROM plugins WHERE sha256 = $1)",
            &[&sha256],
        )
        .await?;
    Ok(row.get(0))
}

/// Records `file` of the workspace (or that it was uploaded again).
pub(super) async fn insert_file(conn: &impl GenericClient, workspace_id: &str, file: &FileRow) -> Result<()> {
    hold_content(conn, &file.sha256).await?;
    conn.execute(
        "INSERT INTO files (workspace_id, sha256, size, name, content_type, created_at, uploaded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (workspace_id, sha256) DO UPDATE SET uploaded_at = excluded.uploaded_at",
        &[
            &workspace_id,
            &file.sha256,
            &(file.size as i64),
            &file.name,
            &file.content_type,
            &file.created_at,
        ],
    )
    .await?;
    Ok(())
}

/// Records that key `key_id` uploaded content `sha256` to the workspace.
pub(super) async fn note_uploader(
    conn: &impl GenericClient,
    workspace_id: &str,
    sha256: &str,
    key_id: &str,
) -> Result<()> {
    conn.execute(
        "INSERT INTO file_uploaders (workspace_id, sha256, key_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&workspace_id, &sha256, &key_id],
    )
    .await?;
    Ok(())
}

impl FileState for PgState {
    fn insert_file(&self, workspace_id: &str, file: &FileRow) -> Result<FileRow> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            insert_file(&tx, workspace_id, file).await?;
            tx.commit().await?;
            Ok::<_, StateError>(())
        })?;
        drop(conn);
        self.file(workspace_id, &file.sha256)?
            .ok_or_else(|| StateError::missing("the file just stored"))
    }

    fn note_uploader(&self, workspace_id: &str, sha256: &str, key_id: &str) -> Result<()> {
        let conn = self.conn()?;
        self.wait(note_uploader(&*conn, workspace_id, sha256, key_id))
    }

    fn file_reached(&self, workspace_id: &str, sha256: &str, key_id: &str, only: &[String]) -> Result<bool> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_one(
            "SELECT EXISTS (SELECT 1 FROM file_uploaders WHERE workspace_id = $1 AND sha256 = $2 AND key_id = $3)
                 OR EXISTS (SELECT 1 FROM connectors c WHERE c.workspace_id = $1 AND c.sample_file_id = $2
                            AND (c.id = ANY($4) OR c.api_name = ANY($4)))
                 OR EXISTS (SELECT 1 FROM executions e JOIN connectors c ON c.id = e.connector_id
                            WHERE e.workspace_id = $1 AND e.source_file_id = $2
                            AND (c.id = ANY($4) OR c.api_name = ANY($4)))",
            &[&workspace_id, &sha256, &key_id, &only],
        ))?;
        Ok(row.get(0))
    }

    fn file(&self, workspace_id: &str, sha256: &str) -> Result<Option<FileRow>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT sha256, size, name, content_type, created_at FROM files WHERE workspace_id = $1 AND sha256 = $2",
            &[&workspace_id, &sha256],
        ))?;
        Ok(row.map(|r| FileRow {
            sha256: r.get(0),
            size: r.get::<_, i64>(1) as u64,
            name: r.get(2),
            content_type: r.get(3),
            created_at: r.get(4),
        }))
    }

    fn delete_file(&self, workspace_id: &str, sha256: &str) -> Result<FileDeletion> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            let sample = tx
                .query_opt(
                    "SELECT api_name FROM connectors WHERE workspace_id = $1 AND sample_file_id = $2 LIMIT 1",
                    &[&workspace_id, &sha256],
                )
                .await?;
            if let Some(row) = sample {
                let connector: String = row.get(0);
                return Ok(FileDeletion::InUse(format!(
                    "it is the sample of connector `{connector}`"
                )));
            }
            let reading = tx
                .query_opt(
                    &format!(
                        "SELECT id FROM executions WHERE workspace_id = $1 AND source_file_id = $2
                         AND status NOT IN {ENDED} LIMIT 1"
                    ),
                    &[&workspace_id, &sha256],
                )
                .await?;
            if let Some(row) = reading {
                let execution: String = row.get(0);
                return Ok(FileDeletion::InUse(format!(
                    "execution `{execution}` reads it and has not ended"
                )));
            }
            let deleted = tx
                .execute(
                    "DELETE FROM files WHERE workspace_id = $1 AND sha256 = $2",
                    &[&workspace_id, &sha256],
                )
                .await?;
            tx.execute(
                "DELETE FROM file_uploaders WHERE workspace_id = $1 AND sha256 = $2",
                &[&workspace_id, &sha256],
            )
            .await?;
            tx.commit().await?;
            Ok(if deleted == 0 {
                FileDeletion::Missing
            } else {
                FileDeletion::Deleted
            })
        })
    }

    fn content_in_use(&self, sha256: &str) -> Result<bool> {
        let conn = self.conn()?;
        self.wait(content_in_use(&*conn, sha256))
    }

    fn begin_content_removal(&self, sha256: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            hold_content(&tx, sha256).await?;
            if content_in_use(&tx, sha256).await? {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO content_removals (sha256, generation, active, active_since) VALUES ($1, 1, 1, $2)
                 ON CONFLICT (sha256) DO UPDATE SET generation = content_removals.generation + 1,
                 active = content_removals.active + 1, active_since = $2",
                &[&sha256, &now()],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn end_content_removal(&self, sha256: &str) -> Result<()> {
        let conn = self.conn()?;
        self.wait(conn.execute(
            "UPDATE content_removals SET active = GREATEST(active - 1, 0),
             active_since = CASE WHEN active > 1 THEN active_since END WHERE sha256 = $1",
            &[&sha256],
        ))?;
        Ok(())
    }

    fn content_removals(&self, sha256: &str) -> Result<ContentRemovals> {
        // Read twice by every upload.
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "SELECT generation, active, active_since FROM content_removals WHERE sha256 = $1",
        )?;
        let row = self.wait(conn.query_opt(&statement, &[&sha256]))?;
        Ok(match row {
            Some(r) => ContentRemovals {
                begun: r.get(0),
                active: r.get(1),
                active_since: r.get(2),
            },
            None => ContentRemovals::default(),
        })
    }

    fn unused_files_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT f.sha256 FROM files f WHERE f.workspace_id = $1 AND f.uploaded_at < $2
             AND NOT EXISTS (SELECT 1 FROM connectors c WHERE c.workspace_id = $1 AND c.sample_file_id = f.sha256)
             AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.workspace_id = $1 AND e.source_file_id = f.sha256)",
            &[&workspace_id, &before],
        ))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
