//! Workspace secrets, sealed.

use super::*;

/// A workspace secret as stored: its value sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// Its name.
    pub name: String,
    /// The value, sealed (see `secrets::SecretsKey`).
    pub sealed: Vec<u8>,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// Sealed workspace secrets.
pub trait SecretState {
    /// Sets secret `name` of the workspace to `sealed`; whether it is new.
    fn put_secret(&self, workspace_id: &str, name: &str, sealed: &[u8], now: DateTime<Utc>) -> Result<bool>;

    /// The workspace's secrets, by name.
    fn secrets(&self, workspace_id: &str) -> Result<Vec<SecretRow>>;

    /// Secret `name` of the workspace.
    fn secret(&self, workspace_id: &str, name: &str) -> Result<Option<SecretRow>>;

    /// Some secret of any workspace, with its workspace: what a start checks
    /// its secrets key against.
    fn any_secret(&self) -> Result<Option<(String, SecretRow)>>;

    /// Deletes secret `name`; whether it was there.
    fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool>;
}
