//! Object definitions.

use super::*;
use weir_engine::objects::ObjectDef;

/// An object definition as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    /// The definition, parsed.
    pub def: ObjectDef,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Objects' definitions.
pub trait ObjectState {
    /// The workspace's object definitions (JSON), by name.
    fn objects(&self, workspace_id: &str) -> Result<Vec<ObjectRow>>;

    /// The workspace's object definitions, parsed (what load steps write to).
    fn object_defs(&self, workspace_id: &str) -> Result<Objects>;

    /// One object definition.
    fn object(&self, workspace_id: &str, name: &str) -> Result<Option<ObjectRow>>;

    /// Creates an object; false when one of that name exists.
    fn insert_object(&self, workspace_id: &str, def: &ObjectDef) -> Result<bool>;

    /// Replaces an object's definition.
    fn update_object(&self, workspace_id: &str, def: &ObjectDef) -> Result<()>;
}
