//! The plugins service: Wasm transform components published in a workspace
//! as `name@version`. A published version is immutable; its component is
//! content in the blob store, held like a file's (`server/files.rs`). A
//! component is compiled and checked against the `weir:transform` world
//! before it is accepted, so a run never meets a plugin that cannot load.
//! It holds the state store, the files service, the blob store and the
//! plugin runtime.

use std::sync::Arc;

use chrono::Utc;
use sha2::{Digest, Sha256};
use weir_engine::connector::PluginRef;
use weir_engine::plugin::PluginRuntime;

use super::blobs::Blobs;
use super::files::{FileError, Files};
use super::state::{PluginRow, StateError, StateStore};

/// Why a plugin was not published.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The name or version is not one a reference can name.
    #[error("{0}")]
    BadReference(String),
    /// The bytes are not a component Weir can run as a transform step.
    #[error("{0}")]
    NotAComponent(String),
    /// The version is published with other content.
    #[error("{0} is already published with other content; publish a new version")]
    VersionTaken(String),
    /// Keeping the component failed.
    #[error(transparent)]
    Files(#[from] FileError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A component checked for publishing.
pub enum Checked {
    /// The version is published with this very content.
    Published(PluginRow),
    /// A new version: its row and its content, not yet stored.
    New(PluginRow, Vec<u8>),
}

/// Published plugins of workspaces.
#[derive(Clone)]
pub struct Plugins {
    db: Arc<dyn StateStore>,
    files: Files,
    blobs: Blobs,
    runtime: Arc<PluginRuntime>,
}

impl Plugins {
    /// The service.
    pub fn new(db: Arc<dyn StateStore>, files: Files, blobs: Blobs, runtime: Arc<PluginRuntime>) -> Self {
        Self {
            db,
            files,
            blobs,
            runtime,
        }
    }

    /// The workspace's plugins.
    pub fn list(&self, workspace_id: &str) -> Result<Vec<PluginRow>, StateError> {
        self.db.plugins(workspace_id)
    }

    /// Checks that `name@version` is a reference a connector can write.
    pub fn check_reference(name: &str, version: &str) -> Result<(), PluginError> {
        PluginRef::parse(&format!("{name}@{version}"))
            .map(drop)
            .map_err(PluginError::BadReference)
    }

    /// Checks `wasm` against the transform world as `name@version` of the
    /// workspace; nothing is written.
    pub async fn check(
        &self,
        workspace_id: &str,
        name: String,
        version: String,
        wasm: Vec<u8>,
    ) -> Result<Checked, PluginError> {
        let reference = format!("{name}@{version}");
        let sha256 = hex::encode(Sha256::digest(&wasm));
        if let Some(known) = self.db.plugin(workspace_id, &name, &version)? {
            return if known.sha256 == sha256 {
                Ok(Checked::Published(known))
            } else {
                Err(PluginError::VersionTaken(reference))
            };
        }
        let runtime = self.runtime.clone();
        let (checked, wasm) = tokio::task::spawn_blocking(move || (runtime.load(&reference, &wasm), wasm))
            .await
            .map_err(|e| FileError::Blob(std::io::Error::other(e)))?;
        if let Err(e) = checked {
            return Err(PluginError::NotAComponent(e.to_string()));
        }
        let row = PluginRow {
            name,
            version,
            sha256,
            size: wasm.len() as u64,
            created_at: Utc::now(),
        };
        Ok(Checked::New(row, wasm))
    }

    /// Checks `wasm` and publishes it as `name@version` (true when new; the
    /// same content again is no change). Only a component that is
    /// published is kept in the blob store.
    pub async fn publish(
        &self,
        workspace_id: &str,
        name: String,
        version: String,
        wasm: Vec<u8>,
    ) -> Result<(PluginRow, bool), PluginError> {
        Self::check_reference(&name, &version)?;
        let (row, wasm) = match self.check(workspace_id, name, version, wasm).await? {
            Checked::Published(known) => return Ok((known, false)),
            Checked::New(row, wasm) => (row, wasm),
        };
        let (staged, _) = self.blobs.stage(wasm).await.map_err(FileError::Blob)?;
        let (workspace, publishing) = (workspace_id.to_string(), row.clone());
        let (stored, inserted) = self
            .files
            .keep_with(vec![(staged, row.sha256.clone())], move |db| {
                db.insert_plugin(&workspace, &publishing)
            })
            .await??;
        if stored.sha256 != row.sha256 {
            // Another publish of this version won a race: its content stays,
            // this one's is refused and leaves unless something else holds it.
            self.files.forget_content(&row.sha256).await;
            return Err(PluginError::VersionTaken(format!("{}@{}", row.name, row.version)));
        }
        Ok((stored, inserted))
    }
}
