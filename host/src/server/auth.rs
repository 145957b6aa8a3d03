//! API keys and who may do what (SPEC §6.1).
//!
//! A key is `weir_` + 64 hex digits of randomness. Only its sha256 is
//! stored; a presented key is hashed and looked up by that hash, and the
//! stored hash is compared again in constant time. Every request of the API
//! carries a [`Caller`] (its workspace, role, and the connectors it is
//! limited to); handlers ask it for the right they need.
//!
//! Tenancy rule: a resource of another workspace is answered exactly like a
//! missing one (404). A missing or unknown key is 401; a valid key without
//! the right is 403.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::App;
use super::error::ApiError;
use super::state::{KeyRow, StateError, StateStore, Workspace};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Only the webhook endpoint of its connectors.
    Webhook,
    /// Read only.
    Viewer,
    /// Trigger, cancel, read, dev packages.
    Operator,
    /// Everything in the workspace.
    Admin,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Webhook => "webhook",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "webhook" => Ok(Role::Webhook),
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`; expected admin, operator, viewer or webhook"
            )),
        }
    }
}

/// A new key: its stored row and the secret, shown once.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The stored row.
    pub row: KeyRow,
    /// The secret the caller presents.
    pub secret: String,
}

/// sha256 of a presented key, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a key of `role` for `workspace` (stored by the caller). `secret`
/// is used as given (bootstrap from the environment), else generated.
pub fn new_key(
    workspace: &Workspace,
    name: &str,
    role: Role,
    connectors: Option<Vec<String>>,
    secret: Option<String>,
) -> Result<NewKey, getrandom::Error> {
    let secret = match secret {
        Some(s) => s,
        None => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)?;
            format!("weir_{}", hex::encode(bytes))
        }
    };
    Ok(NewKey {
        row: KeyRow {
            id: uuid::Uuid::now_v7().to_string(),
            workspace_id: workspace.id.clone(),
            name: name.to_string(),
            role: role.as_str().to_string(),
            connectors,
            secret_sha256: hash_secret(&secret),
            created_at: Utc::now(),
            revoked_at: None,
        },
        secret,
    })
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id.
    pub key_id: String,
    /// The key's name.
    pub key_name: String,
    /// The workspace the key belongs to.
    pub workspace_id: String,
    /// Its role.
    pub role: Role,
    /// Connectors (ids or api_names) it is limited to.
    pub connectors: Option<Vec<String>>,
}

impl Caller {
    /// Refuses (403) a caller whose role is below `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role && self.role != Role::Webhook {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this key's role cannot do this (needs {})",
                role.as_str()
            )))
        }
    }

    /// Refuses (403) a viewer: a webhook starts executions, and a viewer
    /// only reads. Webhook, operator and admin keys may post one.
    pub fn require_webhook_sender(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Viewer => Err(ApiError::forbidden(
                "a viewer key only reads; posting a webhook needs a webhook, operator or admin key",
            )),
            Role::Webhook | Role::Operator | Role::Admin => Ok(()),
        }
    }

    /// Refuses (403) a key limited to some connectors: what it asks for
    /// reaches the whole workspace (its keys, objects, plugins, new
    /// connectors).
    pub fn require_whole_workspace(&self) -> Result<(), ApiError> {
        match &self.connectors {
            Some(_) => Err(ApiError::forbidden(
                "this key is limited to some connectors; this needs a key of the whole workspace",
            )),
            None => Ok(()),
        }
    }

    /// Whether the caller's key reaches connector `id` (named `api_name`).
    pub fn reaches(&self, id: &str, api_name: &str) -> bool {
        self.connectors
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == id || c == api_name))
    }

    /// Refuses (403) a caller limited to other connectors.
    pub fn require_connector(&self, id: &str, api_name: &str) -> Result<(), ApiError> {
        if self.reaches(id, api_name) {
            Ok(())
        } else {
            Err(ApiError::forbidden("this key is limited to other connectors"))
        }
    }
}

/// The key of a request: `Authorization: Bearer …` or `X-API-KEY: …`.
fn presented_key(parts: &Parts) -> Option<&str> {
    key_in(&parts.headers)
}

/// The key in request headers, if any.
pub fn key_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Checks a presented key against the store.
pub fn authenticate(db: &dyn StateStore, presented: &str) -> Result<Option<Caller>, StateError> {
    authenticate_hash(db, &hash_secret(presented))
}

/// Checks a key known by the sha256 of its secret (a console session's)
/// against the store.
pub fn authenticate_hash(db: &dyn StateStore, hash: &str) -> Result<Option<Caller>, StateError> {
    let Some(row) = db.key_by_hash(hash)? else {
        return Ok(None);
    };
    let equal: bool = row.secret_sha256.as_bytes().ct_eq(hash.as_bytes()).into();
    if !equal || row.revoked_at.is_some() {
        return Ok(None);
    }
    let Ok(role) = row.role.parse() else {
        return Ok(None);
    };
    Ok(Some(Caller {
        key_id: row.id,
        key_name: row.name,
        workspace_id: row.workspace_id,
        role,
        connectors: row.connectors,
    }))
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let Some(key) = presented_key(parts) else {
            return Err(ApiError::unauthorized(
                "an API key is required (Authorization: Bearer <key> or X-API-KEY)",
            ));
        };
        match authenticate(app.db.as_ref(), key)? {
            Some(caller) => Ok(caller),
            None => Err(ApiError::unauthorized("the API key is not valid")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_webhook_keys_reach_nothing_else() {
        let caller = |role| Caller {
            key_id: "k".into(),
            key_name: "n".into(),
            workspace_id: "w".into(),
            role,
            connectors: None,
        };
        assert!(caller(Role::Admin).require(Role::Operator).is_ok());
        assert!(caller(Role::Operator).require(Role::Viewer).is_ok());
        assert!(caller(Role::Viewer).require(Role::Operator).is_err());
        assert!(caller(Role::Webhook).require(Role::Webhook).is_err());
        assert!(caller(Role::Viewer).require_webhook_sender().is_err());
        for role in [Role::Webhook, Role::Operator, Role::Admin] {
            assert!(caller(role).require_webhook_sender().is_ok());
        }
    }

    #[test]
    fn keys_are_stored_hashed_and_revoked_keys_stop_working() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db: std::sync::Arc<dyn crate::server::state::StateStore> = std::sync::Arc::new(
            crate::server::state::Db::open(&dir.path().join("state.db")).unwrap_or_else(|e| panic!("{e}")),
        );
        let keys = crate::server::keys::Keys::new(db.clone());
        let key = keys
            .create_in("acme", "ci", Role::Operator, None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(key.secret.starts_with("weir_") && key.secret.len() == 69);
        assert_ne!(key.row.secret_sha256, key.secret);
        let stored = keys.list(&key.row.workspace_id).unwrap_or_default();
        assert!(stored.iter().all(|k| !k.secret_sha256.contains(&key.secret)));
        assert!(authenticate(db.as_ref(), &key.secret).ok().flatten().is_some());
        assert!(authenticate(db.as_ref(), "weir_0000").ok().flatten().is_none());
        assert!(matches!(keys.revoke(&key.row.workspace_id, &key.row.id), Ok(true)));
        assert!(authenticate(db.as_ref(), &key.secret).ok().flatten().is_none());
    }
}
