//! The content-addressed file store: uploaded files under
//! `files/<first two hex digits>/<sha256>` in the data directory. A body is
//! streamed to a temporary file while it is hashed and counted, then moved
//! into place, so a file is either whole under its hash or absent, and an
//! upload over the size limit stops as soon as it passes it. An upload
//! that sends less than its [`Pace`] over any window is let go, so a slow
//! client holds a connection only while it keeps sending.
//!
//! Content is removed ([`FileStore::remove_unless`]) only once nothing
//! holds it. [`FileStore::place`] holds the store until its caller has
//! recorded what holds the content, so no removal falls between the two.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Larger than the limit.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The client's body failed mid-way.
    #[error("the upload was interrupted: {0}")]
    Body(String),
    /// The client sent less than the pace asks over a window.
    #[error("the upload sent less than {} bytes in {}", .0.bytes, humantime::format_duration(.0.window))]
    TooSlow(Pace),
    /// Writing the file failed.
    #[error("storing the upload failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The least an upload must send: `bytes` in every `window` (the
/// `upload_min_rate` over `upload_rate_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Bytes due in each window.
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

impl Default for Pace {
    /// 16 KiB a second over 30 s.
    fn default() -> Self {
        Self {
            bytes: 16 * 1024 * 30,
            window: Duration::from_secs(30),
        }
    }
}

/// A stored file: its hash and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// sha256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Files by content hash.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    tmp: PathBuf,
    pace: Pace,
    /// Held from placing content until its holder is recorded, and while
    /// content is removed.
    placing: Arc<Mutex<()>>,
}

/// While alive, no content leaves the store ([`FileStore::place`]).
pub type Held<'a> = MutexGuard<'a, ()>;

impl FileStore {
    /// The store under `data_dir`; uploads keep to `pace`.
    pub fn open(data_dir: &Path, pace: Pace) -> std::io::Result<Self> {
        let store = Self {
            root: data_dir.join("files"),
            tmp: data_dir.join("tmp"),
            pace,
            placing: Arc::default(),
        };
        std::fs::create_dir_all(&store.root)?;
        std::fs::create_dir_all(&store.tmp)?;
        Ok(store)
    }

    /// Where the content with `sha256` lives (it may not exist).
    pub fn path(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.root.join(prefix).join(sha256)
    }

    /// No content leaves the store while the answer is alive.
    fn hold(&self) -> Held<'_> {
        self.placing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves a received file into place under its hash, and holds the
    /// store: no content leaves it until the answer is dropped. Write the
    /// row that keeps the content before dropping it.
    pub fn place(&self, tmp: tempfile::TempPath, sha256: &str) -> std::io::Result<Held<'_>> {
        self.place_all(vec![(tmp, sha256.to_string())])
    }

    /// [`Self::place`] for several files under one hold.
    pub fn place_all(&self, staged: Vec<(tempfile::TempPath, String)>) -> std::io::Result<Held<'_>> {
        let held = self.hold();
        for (tmp, sha256) in staged {
            let target = self.path(&sha256);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Same content, same name: a concurrent upload of it ends the same.
            tmp.persist(&target).map_err(|e| e.error)?;
        }
        Ok(held)
    }

    /// Streams `body` to a temporary file of the store, hashed and counted;
    /// at most `limit` bytes, and at least the store's pace in every
    /// window. The file goes when the path is dropped: what is refused
    /// after reading leaves nothing behind.
    pub async fn receive<S, E>(&self, body: S, limit: u64) -> Result<(tempfile::TempPath, Stored), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let tmp = tempfile::Builder::new().prefix("upload-").tempfile_in(&self.tmp)?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut window_end = tokio::time::Instant::now() + self.pace.window;
        let mut in_window = 0u64;
        loop {
            let next = tokio::time::timeout_at(window_end, body.next()).await;
            // A window that closed must have brought its due.
            if tokio::time::Instant::now() >= window_end {
                if in_window < self.pace.bytes {
                    return Err(UploadError::TooSlow(self.pace));
                }
                in_window = 0;
                window_end = tokio::time::Instant::now() + self.pace.window;
            }
            let chunk = match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(|e| UploadError::Body(e.to_string()))?,
            };
            size += chunk.len() as u64;
            in_window += chunk.len() as u64;
            if size > limit {
                return Err(UploadError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        Ok((tmp_path, Stored { sha256, size }))
    }

    /// Writes `bytes` to a temporary file of the store; returns it with its
    /// sha256, for [`FileStore::place`].
    pub fn stage_bytes(&self, bytes: &[u8]) -> std::io::Result<(tempfile::TempPath, String)> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let mut tmp = tempfile::Builder::new().prefix("put-").tempfile_in(&self.tmp)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        tmp.as_file().sync_all()?;
        Ok((tmp.into_temp_path(), sha256))
    }

    /// [`Self::stage_bytes`] on a blocking thread: hashing, writing and
    /// syncing a file of up to the upload limit is blocking work.
    pub async fn stage(&self, bytes: Vec<u8>) -> std::io::Result<(tempfile::TempPath, String)> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.stage_bytes(&bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Removes the content with `sha256` unless `in_use` says something
    /// still holds it; true when it was removed (or was not there).
    pub fn remove_unless(&self, sha256: &str, in_use: impl FnOnce() -> std::io::Result<bool>) -> std::io::Result<bool> {
        let _held = self.hold();
        if in_use()? {
            return Ok(false);
        }
        match std::fs::remove_file(self.path(sha256)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    /// `count` chunks of `size` bytes, one every `every`.
    fn trickle(count: usize, size: usize, every: Duration) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::unfold(0, move |sent| async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![b'x'; size])), sent + 1))
        })
    }

    fn store(dir: &Path) -> FileStore {
        FileStore::open(dir, Pace::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn content_is_stored_under_its_hash() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = store(dir.path());
        let (tmp, stored) = store
            .receive(chunks(&[b"a,b\n", b"1,2\n"]), 100)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(store.place(tmp, &stored.sha256).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(stored.size, 8);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(b"a,b\n1,2\n")));
        assert_eq!(
            std::fs::read(store.path(&stored.sha256)).ok(),
            Some(b"a,b\n1,2\n".to_vec())
        );
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let r = store(dir.path()).receive(chunks(&[b"12345", b"67890"]), 8).await;
        assert!(matches!(r, Err(UploadError::TooLarge { limit: 8 })));
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(1);
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn an_upload_is_held_to_its_pace_not_to_a_total_time() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pace = Pace {
            bytes: 1000,
            window: Duration::from_millis(300),
        };
        let store = FileStore::open(dir.path(), pace).unwrap_or_else(|e| panic!("{e}"));
        // Ten windows long, and never below the pace: stored whole.
        let steady = store
            .receive(trickle(30, 500, Duration::from_millis(100)), u64::MAX)
            .await;
        assert_eq!(steady.map(|(_, s)| s.size).ok(), Some(15_000));
        // A few bytes, then too few: let go within about a window.
        let started = std::time::Instant::now();
        let slow = store
            .receive(trickle(100, 10, Duration::from_millis(100)), u64::MAX)
            .await;
        assert!(matches!(slow, Err(UploadError::TooSlow(p)) if p == pace), "{slow:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // A client that stops sending altogether is let go too.
        let silent = store
            .receive(futures::stream::pending::<Result<Bytes, std::io::Error>>(), u64::MAX)
            .await;
        assert!(matches!(silent, Err(UploadError::TooSlow(_))), "{silent:?}");
    }

    #[test]
    fn content_is_removed_only_once_nothing_holds_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = store(dir.path());
        let (tmp, sha256) = store.stage_bytes(b"kept").unwrap_or_else(|e| panic!("{e}"));
        drop(store.place(tmp, &sha256).unwrap_or_else(|e| panic!("{e}")));
        let held = store.remove_unless(&sha256, || Ok(true));
        assert!(matches!(held, Ok(false)));
        assert!(store.path(&sha256).exists());
        let gone = store.remove_unless(&sha256, || Ok(false));
        assert!(matches!(gone, Ok(true)));
        assert!(!store.path(&sha256).exists());
    }
}
