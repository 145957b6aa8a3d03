//! Content in the blob store and what holds it: a workspace's file or a
//! plugin, rows of the state store. Content goes once nothing holds it, and
//! never from under a holder, whichever process places or removes it
//! (docs/architecture.md, "Which store holds what"):
//!
//! - A removal begins in one state-store transaction that checks nothing
//!   holds the content and marks a removal under way, counting it; then the
//!   content is deleted and the removal ends.
//! - Placing reads the count, places the content, has its holder recorded,
//!   and reads again ([`Placing::settle`]). A removal that began in between
//!   may have taken the content: placing waits for it to end and places the
//!   content again. One that begins after the holder is recorded finds it.

use std::time::Duration;

use chrono::Utc;

use super::App;
use super::state::{self, StateError};

/// How long a removal under way is waited for; one older than this was
/// left by a process that stopped mid-way (the content is placed again).
const REMOVAL_STALE: Duration = Duration::from_secs(30);

/// How often a placement looks whether a removal has ended.
const REMOVAL_POLL: Duration = Duration::from_millis(10);

fn state_error(e: StateError) -> std::io::Error {
    std::io::Error::other(e)
}

/// Content placed in the blob store whose holder is being recorded.
#[must_use = "settle it once its holder is recorded"]
pub struct Placing<'a> {
    app: &'a App,
    staged: Vec<(tempfile::TempPath, String)>,
    /// The removals each content had seen begin before it was placed.
    begun: Vec<i64>,
}

impl App {
    /// Places staged content (each with its sha256) in the blob store.
    /// Record what holds it, then [`Placing::settle`].
    pub async fn place_content(&self, staged: Vec<(tempfile::TempPath, String)>) -> std::io::Result<Placing<'_>> {
        let mut begun = Vec::with_capacity(staged.len());
        for (_, sha256) in &staged {
            begun.push(self.db.content_removals(sha256).map_err(state_error)?.begun);
        }
        self.blobs.place_all(&staged).await?;
        Ok(Placing {
            app: self,
            staged,
            begun,
        })
    }

    /// Removes content `sha256` from the blob store unless a workspace's
    /// file or a plugin holds it. Content left behind by a failure is only
    /// space, removed by the next deletion of the same content.
    pub async fn forget_content(&self, sha256: &str) {
        match self.db.begin_content_removal(sha256) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "removing content from the blob store failed");
                return;
            }
        }
        if let Err(e) = self.blobs.remove(sha256).await {
            tracing::warn!(error = %e, "removing content from the blob store failed");
        }
        if let Err(e) = self.db.end_content_removal(sha256) {
            tracing::warn!(error = %e, "ending a removal of content failed");
        }
    }

    /// Stores `bytes` as a file of the workspace, as an upload named `name`
    /// would be (for inputs the server makes itself).
    pub async fn keep_file(
        &self,
        workspace_id: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<state::FileRow> {
        let size = bytes.len() as u64;
        let (staged, sha256) = self.blobs.stage(bytes).await?;
        let placing = self.place_content(vec![(staged, sha256.clone())]).await?;
        let row = self.db.insert_file(
            workspace_id,
            &state::FileRow {
                sha256,
                size,
                name: name.to_string(),
                content_type: content_type.to_string(),
                created_at: Utc::now(),
            },
        )?;
        placing.settle().await?;
        Ok(row)
    }
}

impl Placing<'_> {
    /// Once the holder is recorded: content a removal may have taken since
    /// it was placed is placed again, after that removal has ended.
    pub async fn settle(self) -> std::io::Result<()> {
        let mut again = false;
        for ((_, sha256), begun) in self.staged.iter().zip(&self.begun) {
            loop {
                let removals = self.app.db.content_removals(sha256).map_err(state_error)?;
                again |= removals.begun != *begun;
                let under_way = removals
                    .active_since
                    .is_some_and(|since| (Utc::now() - since).to_std().unwrap_or_default() < REMOVAL_STALE);
                if !under_way {
                    break;
                }
                again = true;
                tokio::time::sleep(REMOVAL_POLL).await;
            }
        }
        if again {
            self.app.blobs.place_all(&self.staged).await?;
        }
        Ok(())
    }
}
