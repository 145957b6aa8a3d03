//! Workspaces and their API keys (stored hashed).

use super::*;

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Its id.
    pub id: String,
    /// Its unique name.
    pub name: String,
}

/// An API key as stored (the secret only as its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id.
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// Display name.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Connectors (ids or api_names) the key is limited to.
    pub connectors: Option<Vec<String>>,
    /// sha256 of the secret, hex.
    pub secret_sha256: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A console session: a browser signed in with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// sha256 of the session's cookie, hex.
    pub token_sha256: String,
    /// sha256 of the key it was signed in with: the key is checked again
    /// on every request, so a revoked key ends its sessions.
    pub key_sha256: String,
    /// The token its forms carry against cross-site requests.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// Workspaces and API keys.
pub trait KeyState {
    /// The workspace called `name`, created when new.
    fn workspace_named(&self, name: &str) -> Result<Workspace>;

    /// The workspace with this id or name.
    fn workspace(&self, id_or_name: &str) -> Result<Option<Workspace>>;

    /// Every workspace.
    fn workspaces(&self) -> Result<Vec<Workspace>>;

    /// Whether any workspace exists.
    fn is_empty(&self) -> Result<bool>;

    /// Stores a key.
    fn insert_key(&self, key: &KeyRow) -> Result<()>;

    /// The key whose secret hashes to `sha256`.
    fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRow>>;

    /// The workspace's keys, newest first.
    fn keys(&self, workspace_id: &str) -> Result<Vec<KeyRow>>;

    /// Revokes a key of the workspace; false when there is no such key.
    fn revoke_key(&self, workspace_id: &str, id: &str) -> Result<bool>;

    /// Stores a console session, and forgets sessions that have ended.
    fn insert_session(&self, session: &SessionRow) -> Result<()>;

    /// The session whose cookie hashes to `token_sha256`, if it has not
    /// ended.
    fn session(&self, token_sha256: &str) -> Result<Option<SessionRow>>;

    /// Ends a session (signing out).
    fn delete_session(&self, token_sha256: &str) -> Result<()>;
}
