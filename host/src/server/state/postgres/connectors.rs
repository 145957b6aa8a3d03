//! Connectors, their SQL versions and package writes, in PostgreSQL.

use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

use super::files::{insert_file, note_uploader};
use super::objects::insert_object;
use super::plugins::insert_plugin;
use super::*;

pub(super) const CONNECTOR_COLUMNS: &str =
    "id, workspace_id, api_name, definition, sample_file_id, draft_version, live_version, created_at, updated_at";

pub(super) fn connector_row(r: &Row) -> Result<ConnectorRow> {
    Ok(ConnectorRow {
        id: r.get(0),
        workspace_id: r.get(1),
        api_name: r.get(2),
        connector: serde_json::from_str(r.get::<_, &str>(3))?,
        sample_file_id: r.get(4),
        draft_version: r.get::<_, i32>(5) as u32,
        live_version: r.get::<_, Option<i32>>(6).map(|v| v as u32),
        created_at: r.get(7),
        updated_at: r.get(8),
    })
}

fn sql_row(r: &Row) -> SqlVersion {
    SqlVersion {
        version: r.get::<_, i32>(0) as u32,
        text: r.get(1),
        created_at: r.get(2),
        published_at: r.get(3),
    }
}

/// The connector's type as stored beside its definition, for the lookups
/// by type (schedule connectors).
fn kind_of(row: &ConnectorRow) -> Result<String> {
    Ok(serde_json::to_value(row.connector.kind)?
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// False when the api_name is taken. Writes two rows: call it inside a
/// transaction.
async fn insert_connector(conn: &impl GenericClient, row: &ConnectorRow, draft: &str) -> Result<bool> {
    let n = conn
        .execute(
            "INSERT INTO connectors (id, workspace_id, api_name, kind, definition, sample_file_id, draft_version,
                live_version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 1, NULL, $7, $7) ON CONFLICT DO NOTHING",
            &[
                &row.id,
                &row.workspace_id,
                &row.api_name,
                &kind_of(row)?,
                &serde_json::to_string(&row.connector)?,
                &row.sample_file_id,
                &now(),
            ],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO sql_versions (connector_id, version, text, created_at) VALUES ($1, 1, $2, $3)",
        &[&row.id, &draft, &now()],
    )
    .await?;
    Ok(true)
}

/// False when the new api_name is another connector's.
async fn update_connector(conn: &impl GenericClient, row: &ConnectorRow) -> Result<bool> {
    let taken = conn
        .query_opt(
            "SELECT 1 FROM connectors WHERE workspace_id = (SELECT workspace_id FROM connectors WHERE id = $1)
             AND api_name = $2 AND id <> $1",
            &[&row.id, &row.api_name],
        )
        .await?;
    if taken.is_some() {
        return Ok(false);
    }
    let updated = conn
        .execute(
            "UPDATE connectors SET api_name = $2, kind = $3, definition = $4, sample_file_id = $5, updated_at = $6
             WHERE id = $1",
            &[
                &row.id,
                &row.api_name,
                &kind_of(row)?,
                &serde_json::to_string(&row.connector)?,
                &row.sample_file_id,
                &now(),
            ],
        )
        .await;
    match updated {
        Ok(_) => Ok(true),
        // Taken meanwhile.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The draft's version. Writes two rows: call it inside a transaction.
async fn save_draft(conn: &impl GenericClient, connector_id: &str, text: &str) -> Result<u32> {
    let draft: i32 = conn
        .query_one(
            "SELECT draft_version FROM connectors WHERE id = $1 FOR UPDATE",
            &[&connector_id],
        )
        .await?
        .get(0);
    conn.execute(
        "UPDATE sql_versions SET text = $3, created_at = $4 WHERE connector_id = $1 AND version = $2",
        &[&connector_id, &draft, &text, &now()],
    )
    .await?;
    conn.execute(
        "UPDATE connectors SET updated_at = $2 WHERE id = $1",
        &[&connector_id, &now()],
    )
    .await?;
    Ok(draft as u32)
}

impl PgState {
    /// Connectors of any workspace matching `condition` (SQL over the
    /// `connectors` table).
    pub(super) fn connectors_where(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<ConnectorRow>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM connectors WHERE {condition}");
        self.wait(conn.query(&sql, params))?.iter().map(connector_row).collect()
    }
}

impl ConnectorState for PgState {
    fn insert_connector(&self, row: &ConnectorRow, draft: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            if !insert_connector(&tx, row, draft).await? {
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn connector(&self, workspace_id: &str, id_or_name: &str) -> Result<Option<ConnectorRow>> {
        // Every request naming a connector: prepared once per connection.
        let mut conn = self.conn()?;
        let statement = self.statement(
            &mut conn,
            "SELECT id, workspace_id, api_name, definition, sample_file_id, draft_version, live_version, created_at,
             updated_at FROM connectors WHERE workspace_id = $1 AND (id = $2 OR api_name = $2)",
        )?;
        let row = self.wait(conn.query_opt(&statement, &[&workspace_id, &id_or_name]))?;
        row.as_ref().map(connector_row).transpose()
    }

    fn connector_by_id(&self, id: &str) -> Result<Option<ConnectorRow>> {
        Ok(self.connectors_where("id = $1", &[&id])?.pop())
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.connectors_where(
            "workspace_id = $1 AND ($2::text IS NULL OR id < $2)
             AND ($4::text[] IS NULL OR id = ANY($4) OR api_name = ANY($4))
             ORDER BY id DESC LIMIT $3",
            &[&workspace_id, &cursor, &limit, &only],
        )
    }

    fn update_connector(&self, row: &ConnectorRow) -> Result<bool> {
        let conn = self.conn()?;
        self.wait(update_connector(&*conn, row))
    }

    fn delete_connector(&self, id: &str) -> Result<()> {
        let conn = self.conn()?;
        self.wait(conn.execute("DELETE FROM connectors WHERE id = $1", &[&id]))?;
        Ok(())
    }

    fn save_draft(&self, connector_id: &str, text: &str) -> Result<u32> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            let draft = save_draft(&tx, connector_id, text).await?;
            tx.commit().await?;
            Ok(draft)
        })
    }

    fn write_package(&self, workspace_id: &str, push: &PackageWrite) -> Result<Result<(), PushRefused>> {
        let mut conn = self.conn()?;
        self.wait(async {
            let tx = conn.transaction().await?;
            for def in &push.objects {
                insert_object(&tx, workspace_id, def).await?;
            }
            for plugin in &push.plugins {
                if !insert_plugin(&tx, workspace_id, plugin).await? {
                    let stored: String = tx
                        .query_one(
                            "SELECT sha256 FROM plugins WHERE workspace_id = $1 AND name = $2 AND version = $3",
                            &[&workspace_id, &plugin.name, &plugin.version],
                        )
                        .await?
                        .get(0);
                    if stored != plugin.sha256 {
                        return Ok(Err(PushRefused::PluginTaken(format!(
                            "{}@{}",
                            plugin.name, plugin.version
                        ))));
                    }
                }
            }
            if let Some((file, key_id)) = &push.sample {
                insert_file(&tx, workspace_id, file).await?;
                note_uploader(&tx, workspace_id, &file.sha256, key_id).await?;
            }
            match &push.connector {
                ConnectorWrite::Insert { row, draft } => {
                    if !insert_connector(&tx, row, draft).await? {
                        return Ok(Err(PushRefused::NameTaken));
                    }
                }
                ConnectorWrite::Update { row, draft } => {
                    if !update_connector(&tx, row).await? {
                        return Ok(Err(PushRefused::NameTaken));
                    }
                    if let Some(draft) = draft {
                        save_draft(&tx, &row.id, draft).await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    fn publish(&self, connector_id: &str, version: u32) -> Result<bool> {
        let mut conn = self.conn()?;
        let version = version as i32;
        self.wait(async {
            let tx = conn.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE connectors SET live_version = draft_version, draft_version = draft_version + 1,
                     updated_at = $3 WHERE id = $1 AND draft_version = $2",
                    &[&connector_id, &version, &now()],
                )
                .await?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE sql_versions SET published_at = $3 WHERE connector_id = $1 AND version = $2",
                &[&connector_id, &version, &now()],
            )
            .await?;
            tx.execute(
                "INSERT INTO sql_versions (connector_id, version, text, created_at)
                 SELECT connector_id, version + 1, text, $3 FROM sql_versions WHERE connector_id = $1 AND version = $2",
                &[&connector_id, &version, &now()],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn sql_versions(&self, connector_id: &str) -> Result<Vec<SqlVersion>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT version, text, created_at, published_at FROM sql_versions WHERE connector_id = $1
             ORDER BY version DESC",
            &[&connector_id],
        ))?;
        Ok(rows.iter().map(sql_row).collect())
    }

    fn sql_version(&self, connector_id: &str, version: u32) -> Result<Option<SqlVersion>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT version, text, created_at, published_at FROM sql_versions WHERE connector_id = $1 AND version = $2",
            &[&connector_id, &(version as i32)],
        ))?;
        Ok(row.as_ref().map(sql_row))
    }
}
