//! The files service: the files of workspaces, and content in the blob
//! store with what holds it (a workspace's file or a plugin, rows of the
//! state store). Handlers, webhook batches and schedule ticks keep, find,
//! serve and delete files through [`Files`]; it holds the state store and
//! the blob store, nothing else of the server.
//!
//! Content goes once nothing holds it, and never from under a holder,
//! whichever process places or removes it (docs/architecture.md, "Which
//! store holds what"):
//!
//! - A removal begins in one state-store transaction that checks nothing
//!   holds the content and marks a removal under way, counting it; then the
//!   content is deleted and the removal ends.
//! - Placing reads the count, places the content, has its holder recorded,
//!   and reads again ([`Placing::settle`]). A removal that was under way or
//!   began in between may have taken the content: placing waits until no
//!   removal is under way and places the content again. One that begins
//!   after the holder is recorded finds it.
//!
//! Each of these runs as a task of its own, so a request that is dropped
//! half-way (a client gone, a request timeout) cannot leave a holder
//! without its content or a removal marked under way for ever.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::auth::Caller;
use super::blobs::{Blobs, Download, Stored};
use super::state::{FileDeletion, FileRow, StateError, StateStore};

/// How long a removal under way is waited for; one older than this was
/// left by a process that stopped mid-way (the content is placed again).
const REMOVAL_STALE: Duration = Duration::from_secs(30);

/// The longest a removal waits for the blob store to delete content: well
/// inside [`REMOVAL_STALE`], so no delete lands after a placement stopped
/// waiting for it.
const REMOVAL_DELETE: Duration = Duration::from_secs(10);

/// How often a placement looks whether a removal has ended.
const REMOVAL_POLL: Duration = Duration::from_millis(10);

fn state_error(e: StateError) -> std::io::Error {
    std::io::Error::other(e)
}

/// Why the files service could not do something.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The blob store failed.
    #[error("the blob store: {0}")]
    Blob(#[from] std::io::Error),
}

/// Files of workspaces and the content they hold.
#[derive(Clone)]
pub struct Files {
    db: Arc<dyn StateStore>,
    blobs: Blobs,
}

/// Content placed in the blob store whose holder is being recorded.
#[must_use = "settle it once its holder is recorded"]
pub struct Placing<'a> {
    files: &'a Files,
    staged: Vec<(tempfile::TempPath, String)>,
    /// The removals each content had seen begin before it was placed (one
    /// fewer when one was under way, which may yet take it).
    begun: Vec<i64>,
}

impl Files {
    /// The service over `db` and `blobs`.
    pub fn new(db: Arc<dyn StateStore>, blobs: Blobs) -> Self {
        Self { db, blobs }
    }

    /// Places staged content (each with its sha256) in the blob store.
    /// Record what holds it, then [`Placing::settle`].
    pub async fn place_content(&self, staged: Vec<(tempfile::TempPath, String)>) -> std::io::Result<Placing<'_>> {
        let mut begun = Vec::with_capacity(staged.len());
        for (_, sha256) in &staged {
            let removals = self.db.content_removals(sha256).map_err(state_error)?;
            begun.push(removals.begun - i64::from(removals.active > 0));
        }
        self.blobs.place_all(&staged).await?;
        Ok(Placing {
            files: self,
            staged,
            begun,
        })
    }

    /// Removes content `sha256` from the blob store unless a workspace's
    /// file or a plugin holds it. Content left behind by a failure is only
    /// space, removed by the next deletion of the same content.
    pub async fn forget_content(&self, sha256: &str) {
        let (files, sha256) = (self.clone(), sha256.to_string());
        if let Err(e) = tokio::spawn(async move { files.remove_content(&sha256).await }).await {
            tracing::warn!(error = %e, "removing content from the blob store failed");
        }
    }

    async fn remove_content(&self, sha256: &str) {
        match self.db.begin_content_removal(sha256) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "removing content from the blob store failed");
                return;
            }
        }
        match tokio::time::timeout(REMOVAL_DELETE, self.blobs.remove(sha256)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing content from the blob store failed"),
            Err(_) => tracing::warn!("removing content from the blob store took too long; it stays"),
        }
        if let Err(e) = self.db.end_content_removal(sha256) {
            tracing::warn!(error = %e, "ending a removal of content failed");
        }
    }

    /// Stores `bytes` as a file of the workspace, as an upload named `name`
    /// would be (for inputs the server makes itself).
    pub async fn keep_bytes(
        &self,
        workspace_id: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<FileRow, FileError> {
        let size = bytes.len() as u64;
        let (staged, sha256) = self.blobs.stage(bytes).await?;
        let file = FileRow {
            sha256,
            size,
            name: name.to_string(),
            content_type: content_type.to_string(),
            created_at: Utc::now(),
        };
        self.keep(workspace_id, staged, file).await
    }

    /// Keeps a received upload (`staged`, as `stored`) as a file of the
    /// workspace, noting that key `key_id` uploaded it. The answer carries
    /// the name and type it was sent with: the store keeps one copy of the
    /// same bytes, under the name they first came with, while this upload
    /// (and the run it triggers, whose input tables are named after it) is
    /// known by its own.
    pub async fn keep_upload(
        &self,
        workspace_id: &str,
        key_id: &str,
        staged: tempfile::TempPath,
        stored: Stored,
        name: String,
        content_type: String,
    ) -> Result<FileRow, FileError> {
        let file = FileRow {
            sha256: stored.sha256,
            size: stored.size,
            name: name.clone(),
            content_type: content_type.clone(),
            created_at: Utc::now(),
        };
        let row = self.keep(workspace_id, staged, file).await?;
        self.db.note_uploader(workspace_id, &row.sha256, key_id)?;
        Ok(FileRow {
            name,
            content_type,
            ..row
        })
    }

    async fn keep(&self, workspace_id: &str, staged: tempfile::TempPath, file: FileRow) -> Result<FileRow, FileError> {
        let workspace_id = workspace_id.to_string();
        let sha256 = file.sha256.clone();
        self.keep_with(vec![(staged, sha256)], move |db| db.insert_file(&workspace_id, &file))
            .await?
            .map_err(FileError::State)
    }

    /// Places staged content, records what holds it with `record`, and
    /// settles ([`Placing::settle`]), in a task of its own: once begun it
    /// ends, whatever happens to the request that asked for it. Whatever
    /// `record` answers is answered.
    pub async fn keep_with<T: Send + 'static>(
        &self,
        staged: Vec<(tempfile::TempPath, String)>,
        record: impl FnOnce(&dyn StateStore) -> T + Send + 'static,
    ) -> Result<T, FileError> {
        let files = self.clone();
        tokio::spawn(async move {
            let placing = files.place_content(staged).await?;
            let recorded = record(files.db.as_ref());
            placing.settle().await?;
            Ok(recorded)
        })
        .await
        .map_err(|e| FileError::Blob(std::io::Error::other(e)))?
    }

    /// The file `id` of the caller's workspace, when the caller reaches
    /// it: any, for a key of the whole workspace; for a key limited to some
    /// connectors, those it uploaded and those its connectors use (samples,
    /// inputs).
    pub fn reached(&self, caller: &Caller, id: &str) -> Result<Option<FileRow>, StateError> {
        let Some(file) = self.db.file(&caller.workspace_id, id)? else {
            return Ok(None);
        };
        match &caller.connectors {
            None => Ok(Some(file)),
            Some(only) => Ok(self
                .db
                .file_reached(&caller.workspace_id, id, &caller.key_id, only)?
                .then_some(file)),
        }
    }

    /// The content of `file`, to be served; `None` when it is gone.
    pub async fn download(&self, file: &FileRow) -> Result<Option<Download>, FileError> {
        Ok(self.blobs.download(&file.sha256).await?)
    }

    /// Deletes a file of the workspace unless a connector uses it as its
    /// sample or an execution that has not ended reads it; its content
    /// leaves the blob store once nothing else holds it.
    pub async fn delete(&self, workspace_id: &str, sha256: &str) -> Result<FileDeletion, StateError> {
        let deletion = self.db.delete_file(workspace_id, sha256)?;
        if deletion == FileDeletion::Deleted {
            self.forget_content(sha256).await;
        }
        Ok(deletion)
    }
}

impl Placing<'_> {
    /// Once the holder is recorded: content a removal may have taken since
    /// it was placed is placed again, after that removal has ended.
    pub async fn settle(self) -> std::io::Result<()> {
        let mut again = false;
        // However the clock moves, no removal is waited for longer.
        let deadline = tokio::time::Instant::now() + REMOVAL_STALE;
        for ((_, sha256), begun) in self.staged.iter().zip(&self.begun) {
            loop {
                let removals = self.files.db.content_removals(sha256).map_err(state_error)?;
                again |= removals.begun != *begun;
                let under_way = removals.active > 0
                    && removals
                        .active_since
                        .is_some_and(|since| (Utc::now() - since).to_std().unwrap_or_default() < REMOVAL_STALE);
                if !under_way || tokio::time::Instant::now() >= deadline {
                    break;
                }
                again = true;
                tokio::time::sleep(REMOVAL_POLL).await;
            }
        }
        if again {
            self.files.blobs.place_all(&self.staged).await?;
        }
        Ok(())
    }
}
