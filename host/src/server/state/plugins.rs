//! Published plugin versions.

use super::*;

/// A published plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRow {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// sha256 of the component (its file id).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

/// Published plugins.
pub trait PluginState {
    /// Publishes `name@version`. A version is immutable: publishing it again
    /// with the same content returns the stored row (`false`), with other
    /// content is refused with the stored row.
    fn insert_plugin(&self, workspace_id: &str, plugin: &PluginRow) -> Result<(PluginRow, bool)>;

    /// The workspace's plugins, by name and version.
    fn plugins(&self, workspace_id: &str) -> Result<Vec<PluginRow>>;

    /// A published plugin by `name@version`.
    fn plugin(&self, workspace_id: &str, name: &str, version: &str) -> Result<Option<PluginRow>>;

    /// The published plugin a reference names.
    fn plugin_by_ref(&self, workspace_id: &str, plugin: &PluginRef) -> Result<Option<PluginRow>>;

    /// A published plugin by content.
    fn plugin_by_sha(&self, workspace_id: &str, sha256: &str) -> Result<Option<PluginRow>>;
}
