//! The content-addressed file store: uploaded files under
//! `files/<first two hex digits>/<sha256>` in the data directory. A body is
//! streamed to a temporary file while it is hashed and counted, then moved
//! into place, so a file is either whole under its hash or absent, and an
//! upload over the size limit stops as soon as it passes it.

use std::path::{Path, PathBuf};

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
    /// Writing the file failed.
    #[error("storing the upload failed: {0}")]
    Io(#[from] std::io::Error),
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
}

impl FileStore {
    /// The store under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let store = Self {
            root: data_dir.join("files"),
            tmp: data_dir.join("tmp"),
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

    /// Streams `body` into the store; at most `limit` bytes.
    pub async fn put<S, E>(&self, body: S, limit: u64) -> Result<Stored, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let (tmp, stored) = self.receive(body, limit).await?;
        let target = self.path(&stored.sha256);
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        // Same content, same name: a concurrent upload of it ends the same.
        tmp.persist(&target).map_err(|e| UploadError::Io(e.error))?;
        Ok(stored)
    }

    /// Streams `body` to a temporary file of the store, hashed and counted;
    /// at most `limit` bytes. The file goes when the path is dropped: what
    /// is refused after reading leaves nothing behind.
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
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            size += chunk.len() as u64;
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

    /// Stores `bytes`; returns their sha256.
    pub fn put_bytes(&self, bytes: &[u8]) -> std::io::Result<String> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let target = self.path(&sha256);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = tempfile::Builder::new().prefix("put-").tempfile_in(&self.tmp)?;
        std::io::Write::write_all(&mut tmp, bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&target).map_err(|e| e.error)?;
        Ok(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn content_is_stored_under_its_hash() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = FileStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let stored = store
            .put(chunks(&[b"a,b\n", b"1,2\n"]), 100)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
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
        let store = FileStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let r = store.put(chunks(&[b"12345", b"67890"]), 8).await;
        assert!(matches!(r, Err(UploadError::TooLarge { limit: 8 })));
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(1);
        assert_eq!(leftovers, 0);
    }
}
