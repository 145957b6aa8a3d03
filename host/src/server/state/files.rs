//! Uploaded files: their rows, who uploaded them, and when content may go.

use super::*;

/// An uploaded file (content lives in the file store under its sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// sha256 of the content, hex; also the file's id.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Name as uploaded.
    pub name: String,
    /// Content type as uploaded.
    pub content_type: String,
    /// First upload.
    pub created_at: DateTime<Utc>,
}

/// The removals of one content hash ([`FileState::content_removals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentRemovals {
    /// How many have begun.
    pub begun: i64,
    /// How many are under way.
    pub active: i64,
    /// When the latest under way began.
    pub active_since: Option<DateTime<Utc>>,
}

/// What deleting a file of a workspace did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDeletion {
    /// The file is deleted.
    Deleted,
    /// The file is kept: what uses it.
    InUse(String),
    /// The workspace has no such file.
    Missing,
}

/// Files of workspaces, and when their content may go.
pub trait FileState {
    /// Records an uploaded file; an earlier upload of the same content keeps
    /// its name and type, and counts as uploaded now for retention.
    /// Returns the stored row.
    fn insert_file(&self, workspace_id: &str, file: &FileRow) -> Result<FileRow>;

    /// Notes that key `key_id` uploaded the file.
    fn note_uploader(&self, workspace_id: &str, sha256: &str, key_id: &str) -> Result<()>;

    /// Whether a key limited to connectors `only` (ids or api_names)
    /// reaches the file: it uploaded it, or it is the sample or an
    /// execution's input of one of those connectors.
    fn file_reached(&self, workspace_id: &str, sha256: &str, key_id: &str, only: &[String]) -> Result<bool>;

    /// A file of the workspace.
    fn file(&self, workspace_id: &str, sha256: &str) -> Result<Option<FileRow>>;

    /// Deletes a file of the workspace, and which keys uploaded it, unless
    /// a connector uses it as its sample or an execution that has not ended
    /// reads it.
    fn delete_file(&self, workspace_id: &str, sha256: &str) -> Result<FileDeletion>;

    /// Whether any workspace holds the content, or a plugin is it.
    fn content_in_use(&self, sha256: &str) -> Result<bool>;

    /// Begins removing content `sha256` from the blob store, unless a file
    /// or plugin holds it (false then): one transaction checks and marks
    /// the removal under way. End it with [`FileState::end_content_removal`].
    fn begin_content_removal(&self, sha256: &str) -> Result<bool>;

    /// The removal of content `sha256` is over.
    fn end_content_removal(&self, sha256: &str) -> Result<()>;

    /// How many removals of content `sha256` have begun, and since when
    /// one is under way.
    fn content_removals(&self, sha256: &str) -> Result<ContentRemovals>;

    /// Files of the workspace last uploaded before `before` that no
    /// connector uses as its sample and no execution read.
    fn unused_files_before(&self, workspace_id: &str, before: DateTime<Utc>) -> Result<Vec<String>>;
}
