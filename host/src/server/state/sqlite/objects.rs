//! Objects' definitions, in SQLite.

use super::*;
use weir_engine::objects::ObjectDef;

pub(super) fn insert_object(conn: &Connection, workspace_id: &str, def: &ObjectDef) -> Result<bool> {
    let (name, definition) = (&def.name, serde_json::to_string(def)?);
    let n = conn.execute(
        "INSERT INTO objects (workspace_id, name, definition, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT DO NOTHING",
        params![workspace_id, name, definition, now()],
    )?;
    Ok(n > 0)
}

impl ObjectState for Db {
    fn objects(&self, workspace_id: &str) -> Result<Vec<ObjectRow>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map([workspace_id], Self::object_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn object_defs(&self, workspace_id: &str) -> Result<Objects> {
        let objects = self.objects(workspace_id)?.into_iter().map(|o| o.def).collect();
        Ok(Objects { objects })
    }

    fn object(&self, workspace_id: &str, name: &str) -> Result<Option<ObjectRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                Self::object_row,
            )
            .optional()?)
    }

    fn insert_object(&self, workspace_id: &str, def: &ObjectDef) -> Result<bool> {
        insert_object(&self.lock(), workspace_id, def)
    }

    fn update_object(&self, workspace_id: &str, def: &ObjectDef) -> Result<()> {
        self.lock().execute(
            "UPDATE objects SET definition = ?3, updated_at = ?4 WHERE workspace_id = ?1 AND name = ?2",
            params![workspace_id, def.name, serde_json::to_string(def)?, now()],
        )?;
        Ok(())
    }
}

impl Db {
    fn object_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectRow> {
        Ok(ObjectRow {
            def: serde_json::from_str(&r.get::<_, String>(0)?)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?,
            created_at: time(&r.get::<_, String>(1)?),
            updated_at: time(&r.get::<_, String>(2)?),
        })
    }
}
