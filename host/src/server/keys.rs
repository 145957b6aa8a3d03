//! The keys service: the API keys of workspaces, made, listed and revoked
//! for the HTTP API, the first start's admin key and `weir keys` alike. It
//! holds the state store and nothing else of the server. A secret is only
//! ever in the answer that makes its key; the store keeps its hash.

use std::sync::Arc;

use weir_engine::error::Problem;

use super::auth::{Caller, NewKey, Role, new_key};
use super::state::{KeyRow, StateError, StateFault, StateStore, Workspace};

/// Why a key was not made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// What was asked for is not a valid key.
    #[error("the key is not valid")]
    Invalid(Vec<Problem>),
    /// A key limited to some connectors asked for one that reaches further.
    #[error("{0}")]
    ReachesFurther(String),
    /// A key with this secret exists.
    #[error("this key already exists")]
    Exists,
    /// No randomness for a secret.
    #[error("no randomness for the key's secret: {0}")]
    NoRandomness(getrandom::Error),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// API keys of workspaces.
#[derive(Clone)]
pub struct Keys {
    db: Arc<dyn StateStore>,
}

impl Keys {
    /// The service over `db`.
    pub fn new(db: Arc<dyn StateStore>) -> Self {
        Self { db }
    }

    /// The keys of the workspace, oldest first.
    pub fn list(&self, workspace_id: &str) -> Result<Vec<KeyRow>, StateError> {
        self.db.keys(workspace_id)
    }

    /// The workspace `id_or_name`, if there is one.
    pub fn workspace(&self, id_or_name: &str) -> Result<Option<Workspace>, StateError> {
        self.db.workspace(id_or_name)
    }

    /// Makes a key in `maker`'s workspace. It must have a name, a webhook
    /// key must name the connectors it may trigger, and a key made by a
    /// key limited to some connectors reaches no further than its maker
    /// (each connector named by its id or api_name, in either list).
    pub fn create(
        &self,
        maker: &Caller,
        name: &str,
        role: Role,
        connectors: Option<Vec<String>>,
    ) -> Result<NewKey, KeyError> {
        if name.trim().is_empty() {
            return Err(KeyError::Invalid(vec![Problem::new("name", "must not be empty")]));
        }
        if role == Role::Webhook && connectors.as_ref().is_none_or(Vec::is_empty) {
            return Err(KeyError::Invalid(vec![Problem::new(
                "connectors",
                "a webhook key must name the connectors it may trigger",
            )]));
        }
        if let Some(own) = &maker.connectors {
            self.reaches_no_further(&maker.workspace_id, own, connectors.as_deref())?;
        }
        let workspace = self
            .db
            .workspace(&maker.workspace_id)?
            .ok_or_else(|| StateError::missing("the maker's workspace"))?;
        self.store(&workspace, name, role, connectors, None)
    }

    /// Makes a key in the workspace named `workspace`, made when new: the
    /// first start's admin key (with the secret it is given) and `weir
    /// keys create`.
    pub fn create_in(
        &self,
        workspace: &str,
        name: &str,
        role: Role,
        connectors: Option<Vec<String>>,
        secret: Option<String>,
    ) -> Result<NewKey, KeyError> {
        let workspace = self.db.workspace_named(workspace)?;
        self.store(&workspace, name, role, connectors, secret)
    }

    fn store(
        &self,
        workspace: &Workspace,
        name: &str,
        role: Role,
        connectors: Option<Vec<String>>,
        secret: Option<String>,
    ) -> Result<NewKey, KeyError> {
        let key = new_key(workspace, name, role, connectors, secret).map_err(KeyError::NoRandomness)?;
        self.db.insert_key(&key.row).map_err(|e| match e.kind() {
            StateFault::Conflict => KeyError::Exists,
            _ => KeyError::State(e),
        })?;
        Ok(key)
    }

    /// Refuses a key for `wanted` connectors that a key limited to `own`
    /// would make.
    fn reaches_no_further(
        &self,
        workspace_id: &str,
        own: &[String],
        wanted: Option<&[String]>,
    ) -> Result<(), KeyError> {
        let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
            return Err(KeyError::ReachesFurther(
                "this key is limited to some connectors; the keys it makes must name connectors it reaches".into(),
            ));
        };
        for name in wanted {
            let reached = match self.db.connector(workspace_id, name)? {
                Some(row) => own.iter().any(|c| *c == row.id || *c == row.api_name),
                None => own.contains(name),
            };
            if !reached {
                return Err(KeyError::ReachesFurther(format!(
                    "this key does not reach connector `{name}`, so it cannot make a key that does"
                )));
            }
        }
        Ok(())
    }

    /// Revokes key `id` of the workspace; it stops working at once. False
    /// when the workspace has no such key.
    pub fn revoke(&self, workspace_id: &str, id: &str) -> Result<bool, StateError> {
        self.db.revoke_key(workspace_id, id)
    }
}
