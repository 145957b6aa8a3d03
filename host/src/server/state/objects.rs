//! Object definitions.

use super::*;

/// An object definition as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    /// The definition (JSON of `ObjectDef`).
    pub definition: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

pub(super) fn insert_object(conn: &Connection, workspace_id: &str, name: &str, definition: &str) -> Result<bool> {
    let n = conn.execute(
        "INSERT INTO objects (workspace_id, name, definition, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT DO NOTHING",
        params![workspace_id, name, definition, now()],
    )?;
    Ok(n > 0)
}

impl Db {
    /// The workspace's object definitions (JSON), by name.
    pub fn objects(&self, workspace_id: &str) -> Result<Vec<ObjectRow>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map([workspace_id], Self::object_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn object_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectRow> {
        Ok(ObjectRow {
            definition: r.get(0)?,
            created_at: time(&r.get::<_, String>(1)?),
            updated_at: time(&r.get::<_, String>(2)?),
        })
    }

    /// The workspace's object definitions, parsed (what load steps write to).
    pub fn object_defs(&self, workspace_id: &str) -> Result<Objects> {
        let mut objects = Vec::new();
        for o in self.objects(workspace_id)? {
            objects.push(serde_json::from_str(&o.definition)?);
        }
        Ok(Objects { objects })
    }

    /// One object definition.
    pub fn object(&self, workspace_id: &str, name: &str) -> Result<Option<ObjectRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT definition, created_at, updated_at FROM objects WHERE workspace_id = ?1 AND name = ?2",
                [workspace_id, name],
                Self::object_row,
            )
            .optional()?)
    }

    /// Creates an object; false when one of that name exists.
    pub fn insert_object(&self, workspace_id: &str, name: &str, definition: &str) -> Result<bool> {
        insert_object(&self.lock(), workspace_id, name, definition)
    }

    /// Replaces an object's definition.
    pub fn update_object(&self, workspace_id: &str, name: &str, definition: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE objects SET definition = ?3, updated_at = ?4 WHERE workspace_id = ?1 AND name = ?2",
            params![workspace_id, name, definition, now()],
        )?;
        Ok(())
    }
}
