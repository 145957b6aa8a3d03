//! Objects' definitions, in PostgreSQL.

use tokio_postgres::Row;
use weir_engine::objects::ObjectDef;

use super::*;

fn object_row(r: &Row) -> Result<ObjectRow> {
    Ok(ObjectRow {
        def: serde_json::from_str(r.get::<_, &str>(0))?,
        created_at: r.get(1),
        updated_at: r.get(2),
    })
}

/// Inserts `def` unless the workspace has an object of its name.
pub(super) async fn insert_object(
    conn: &impl tokio_postgres::GenericClient,
    workspace_id: &str,
    def: &ObjectDef,
) -> Result<bool> {
    let (name, definition) = (&def.name, serde_json::to_string(def)?);
    let n = conn
        .execute(
            "INSERT INTO objects (workspace_id, name, definition, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT DO NOTHING",
            &[&workspace_id, name, &definition, &now()],
        )
        .await?;
    Ok(n > 0)
}

impl ObjectState for PgState {
    fn objects(&self, workspace_id: &str) -> Result<Vec<ObjectRow>> {
        let conn = self.conn()?;
        let rows = self.wait(conn.query(
            "SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = $1 ORDER BY name",
            &[&workspace_id],
        ))?;
        rows.iter().map(object_row).collect()
    }

    fn object_defs(&self, workspace_id: &str) -> Result<Objects> {
        let objects = self.objects(workspace_id)?.into_iter().map(|o| o.def).collect();
        Ok(Objects { objects })
    }

    fn object(&self, workspace_id: &str, name: &str) -> Result<Option<ObjectRow>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_opt(
            "SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = $1 AND name = $2",
            &[&workspace_id, &name],
        ))?;
        row.as_ref().map(object_row).transpose()
    }

    fn insert_object(&self, workspace_id: &str, def: &ObjectDef) -> Result<bool> {
        let conn = self.conn()?;
        self.wait(insert_object(&*conn, workspace_id, def))
    }

    fn update_object(&self, workspace_id: &str, def: &ObjectDef) -> Result<()> {
        let definition = serde_json::to_string(def)?;
        let conn = self.conn()?;
        self.wait(conn.execute(
            "UPDATE objects SET definition = $3, updated_at = $4 WHERE workspace_id = $1 AND name = $2",
            &[&workspace_id, &def.name, &definition, &now()],
        ))?;
        Ok(())
    }
}
