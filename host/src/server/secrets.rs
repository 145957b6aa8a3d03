//! Workspace secrets: values a workspace keeps for its connectors (a
//! webhook's signing secret, a source's credentials), set and rotated over
//! the API and never shown again (see `docs/secrets.md`).
//!
//! A value is sealed with XChaCha20-Poly1305 under the server's secrets key
//! (`WEIR_SECRETS_KEY`, 32 bytes in base64) before it is stored, with the
//! workspace and name as associated data, so a sealed value moved to another
//! name or workspace does not open. Only the routes that set a value and the
//! code that uses one ever hold it in clear; no answer, log line, execution
//! document or package carries it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use std::sync::Arc;

use chrono::Utc;
use weir_engine::connector::is_identifier;
use weir_engine::error::Problem;

use super::refusal::{Kind, Refusal, Refused};
use super::state::{SecretRow, StateStore};

/// The environment variable the key is read from.
pub const KEY_VARIABLE: &str = "WEIR_SECRETS_KEY";

/// The longest value a secret may have, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;

/// The secrets of workspaces: set (sealed), listed by name, deleted. It
/// holds the state store and the server's secrets key, if it has one.
#[derive(Clone)]
pub struct Secrets {
    db: Arc<dyn StateStore>,
    key: Option<SecretsKey>,
}

/// A secret as it was set.
#[derive(Debug)]
pub struct Set {
    /// The stored secret (its name and times; never its value).
    pub row: SecretRow,
    /// It did not exist before.
    pub created: bool,
}

impl Secrets {
    /// The service.
    pub fn new(db: Arc<dyn StateStore>, key: Option<SecretsKey>) -> Self {
        Self { db, key }
    }

    /// Sets secret `name` of the workspace to `value`, sealed; refused
    /// when the server has no secrets key.
    pub fn set(&self, workspace_id: &str, name: &str, value: &str) -> Refused<Set> {
        let mut problems = Vec::new();
        if !is_identifier(name) {
            problems.push(Problem::new("name", "must match [a-z][a-z0-9_]{0,62}"));
        }
        if value.is_empty() {
            problems.push(Problem::new("value", "must not be empty"));
        } else if value.len() > MAX_VALUE {
            problems.push(Problem::new("value", format!("must be at most {MAX_VALUE} bytes")));
        }
        if !problems.is_empty() {
            return Err(Refusal::invalid(
                "validation_failed",
                "the secret is not valid",
                problems,
            ));
        }
        let key = self.key.as_ref().ok_or_else(|| {
            Refusal::new(
                Kind::Unavailable,
                "secrets_unavailable",
                format!("the server keeps no secrets until it is started with {KEY_VARIABLE}"),
            )
        })?;
        let sealed = key.seal(workspace_id, name, value).map_err(Refusal::internal)?;
        let created = self.db.put_secret(workspace_id, name, &sealed, Utc::now())?;
        let row = self
            .db
            .secret(workspace_id, name)?
            .ok_or_else(|| Refusal::not_found("secret"))?;
        tracing::info!(secret = %name, created, "a workspace secret was set");
        Ok(Set { row, created })
    }

    /// The workspace's secrets, by name.
    pub fn list(&self, workspace_id: &str) -> Refused<Vec<SecretRow>> {
        Ok(self.db.secrets(workspace_id)?)
    }

    /// Deletes secret `name` of the workspace.
    pub fn delete(&self, workspace_id: &str, name: &str) -> Refused<()> {
        if self.db.delete_secret(workspace_id, name)? {
            tracing::info!(secret = %name, "a workspace secret was deleted");
            Ok(())
        } else {
            Err(Refusal::not_found("secret"))
        }
    }
}

/// Bytes of a nonce, stored before the sealed value.
const NONCE_LEN: usize = 24;

/// The value of secret `name` of a workspace, opened for the code that
/// uses it (a run's sources, a webhook's signature check); `Ok(None)`
/// when there is no such secret.
pub fn open(
    db: &dyn StateStore,
    key: Option<&SecretsKey>,
    workspace_id: &str,
    name: &str,
) -> Result<Option<String>, String> {
    let Some(row) = db.secret(workspace_id, name).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let key = key.ok_or_else(|| format!("secret `{name}` cannot be opened: the server has no {KEY_VARIABLE}"))?;
    key.open(workspace_id, name, &row.sealed).map(Some)
}

/// The key secrets are sealed with.
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

/// Never prints the key.
impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(…)")
    }
}

impl SecretsKey {
    /// Reads a key: 32 bytes in standard base64 (`openssl rand -base64 32`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| format!("{KEY_VARIABLE} is not base64 (make one with `openssl rand -base64 32`)"))?;
        if bytes.len() != 32 {
            return Err(format!(
                "{KEY_VARIABLE} holds {} bytes; it must hold 32 (make one with `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| format!("{KEY_VARIABLE} is not a key"))
    }

    /// The key in the environment, if one is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(KEY_VARIABLE) {
            Ok(text) if !text.trim().is_empty() => Self::parse(&text).map(Some),
            _ => Ok(None),
        }
    }

    /// Seals `value` of secret `name` of workspace `workspace_id`: a fresh
    /// nonce, then the sealed value.
    pub fn seal(&self, workspace_id: &str, name: &str, value: &str) -> Result<Vec<u8>, String> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated(workspace_id, name);
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| "a secret could not be sealed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(out)
    }

    /// Opens what [`SecretsKey::seal`] made for the same workspace and name.
    pub fn open(&self, workspace_id: &str, name: &str, sealed: &[u8]) -> Result<String, String> {
        if sealed.len() < NONCE_LEN {
            return Err(format!("secret `{name}` is damaged"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let aad = associated(workspace_id, name);
        let value = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| format!("secret `{name}` does not open with this server's {KEY_VARIABLE}"))?;
        String::from_utf8(value).map_err(|_| format!("secret `{name}` is damaged"))
    }
}

fn associated(workspace_id: &str, name: &str) -> String {
    format!("weir-secret/{workspace_id}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::parse(&BASE64.encode([byte; 32])).expect("a key")
    }

    #[test]
    fn a_value_opens_only_with_its_key_workspace_and_name() {
        let k = key(1);
        let sealed = k.seal("ws1", "crm_password", "hunter2").expect("sealed");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "not in clear");
        assert_eq!(k.open("ws1", "crm_password", &sealed).as_deref(), Ok("hunter2"));
        assert!(k.open("ws2", "crm_password", &sealed).is_err(), "another workspace");
        assert!(k.open("ws1", "other", &sealed).is_err(), "another name");
        assert!(key(2).open("ws1", "crm_password", &sealed).is_err(), "another key");
        assert_ne!(
            sealed,
            k.seal("ws1", "crm_password", "hunter2").expect("sealed"),
            "fresh nonce"
        );
    }

    #[test]
    fn a_key_must_be_32_bytes_of_base64_and_is_never_printed() {
        assert!(SecretsKey::parse("not base64!").is_err());
        let short = SecretsKey::parse(&BASE64.encode([0u8; 16])).expect_err("short");
        assert!(short.contains("16 bytes"), "{short}");
        assert_eq!(format!("{:?}", key(3)), "SecretsKey(…)");
    }
}
