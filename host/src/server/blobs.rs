//! The blob store: uploaded files, the files the server makes itself
//! (webhook batches, schedule ticks), plugin components, and the artifacts
//! of executions, in an [`ObjectStore`] — by default the data directory on
//! local disk. Nothing outside this module opens a path for them: a run
//! reads its input and plugins from [`OnDisk`] copies (the stored files
//! themselves when the store is local), and writes its artifacts where
//! [`Blobs::artifacts_out`] says, from where [`Blobs::keep_artifacts`]
//! moves them into the store. See `docs/architecture.md`.
//!
//! Keys: content by hash under `files/<first two hex digits>/<sha256>`,
//! an execution's artifacts under `executions/<id>/<name>`.
//!
//! An upload is streamed to a temporary file on local disk while it is
//! hashed and counted, then placed under its hash, so content is either
//! whole under its hash or absent, and an upload over the size limit stops
//! as soon as it passes it. An upload that sends less than its [`Pace`]
//! over any window is let go, so a slow client holds a connection only
//! while it keeps sending.
//!
//! When content may go, and that no removal takes it from under a new
//! holder, is decided with the state store (`server/files.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Content by hash and artifacts by execution, in an object store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a directory on this machine: content is
    /// then read in place and a run writes its artifacts where they stay.
    local: Option<Arc<LocalFileSystem>>,
    /// Local scratch space: uploads being received, copies for runs.
    tmp: PathBuf,
    pace: Pace,
}

/// Stored content as a file on this machine, for the engine to read: the
/// stored file itself when the store is local, otherwise a copy that goes
/// when this is dropped.
#[derive(Debug)]
pub struct OnDisk {
    path: PathBuf,
    _copy: Option<tempfile::TempPath>,
}

impl OnDisk {
    /// A path where nothing is, for content that could not be had: what
    /// reads it fails as it would for a file that is gone.
    pub fn missing(sha256: &str) -> Self {
        Self {
            path: std::env::temp_dir().join(format!("weir-missing-{sha256}")),
            _copy: None,
        }
    }

    /// Where the content is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A stored object being served: its size and its bytes.
pub struct Download {
    /// Size in bytes.
    pub size: u64,
    /// The bytes, as the store sends them.
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Bytes read from a local file at a time when copying it into the store,
/// and the most parts of a multipart upload in flight: the memory an
/// upload holds is bounded by their product, whatever its size.
const PART: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;

fn file_key(sha256: &str) -> Key {
    let prefix = sha256.get(..2).unwrap_or("xx");
    Key::from_iter(["files", prefix, sha256])
}

fn artifacts_key(execution: &str) -> Key {
    Key::from_iter(["executions", execution])
}

/// `executions/<id>/<name>`, `name` a relative path with `/` between parts.
fn artifact_key(execution: &str, name: &str) -> Key {
    Key::from_iter(
        std::iter::once("executions")
            .chain(std::iter::once(execution))
            .chain(name.split('/')),
    )
}

/// An object store failure as an I/O error of the kind underneath it (a
/// full disk stays a full disk), `NotFound` for an object that is not there.
/// The blob store a URL names: `s3://bucket[/prefix]` (an S3-compatible
/// store configured by the standard `AWS_*` variables: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`), or `file:///dir` (a directory, used as a store that is
/// not the data directory).
///
/// Requests to a remote store give up well within the 30 s a placement
/// waits for a removal under way (`server/files.rs`): 5 s to connect, 60 s
/// for a request (an 8 MiB part at a slow link), and retries for at most
/// 10 s, so that a store that does not answer is answered 503 in seconds,
/// not minutes.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "object_store = {url:?}: name the bucket, as s3://bucket/prefix"
            ));
        }
        // As keys, so that the client options the environment set
        // (`AWS_ALLOW_HTTP`) stay.
        let client = |key| AmazonS3ConfigKey::Client(key);
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(client(ClientConfigKey::ConnectTimeout), "5s")
            .with_config(client(ClientConfigKey::Timeout), "60s")
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            })
            .build()
            .map_err(|e| format!("object_store = {url:?}: {e}"))?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        });
    }
    if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(format!(
                "object_store = {url:?}: a file URL names an absolute directory, as file:///dir"
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("object_store = {url:?}: {e}"))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("object_store = {url:?}: {e}"))?
            .with_automatic_cleanup(true);
        return Ok(Arc::new(store));
    }
    Err(format!(
        "object_store = {url:?}: give s3://bucket/prefix or file:///dir (or leave it out for the data directory)"
    ))
}

/// A remote blob store that did not answer (or refused): nothing of the
/// request was kept, and the client may retry (503).
#[derive(Debug, thiserror::Error)]
#[error("the blob store did not answer: {0}")]
pub struct Unavailable(String);

fn io_error(e: object_store::Error) -> std::io::Error {
    if let object_store::Error::NotFound { .. } = e {
        return std::io::Error::new(std::io::ErrorKind::NotFound, e);
    }
    // A store over the network: its failures are the store's, whatever
    // the transport said underneath.
    if let object_store::Error::Generic { store, .. } = &e
        && !matches!(*store, "LocalFileSystem" | "InMemory")
    {
        return std::io::Error::other(Unavailable(e.to_string()));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return std::io::Error::new(io.kind(), e.to_string());
        }
        source = s.source();
    }
    std::io::Error::other(e)
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Blobs {
    /// The store in `data_dir` on this machine; uploads keep to `pace`.
    pub fn local(data_dir: &Path, pace: Pace) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir.join("files"))?;
        let local = Arc::new(
            LocalFileSystem::new_with_prefix(data_dir)
                .map_err(io_error)?
                .with_automatic_cleanup(true),
        );
        Self::open(local.clone(), Some(local), data_dir, pace)
    }

    /// The store `store`, with local scratch space in `data_dir`.
    pub fn remote(store: Arc<dyn ObjectStore>, data_dir: &Path, pace: Pace) -> std::io::Result<Self> {
        Self::open(store, None, data_dir, pace)
    }

    fn open(
        store: Arc<dyn ObjectStore>,
        local: Option<Arc<LocalFileSystem>>,
        data_dir: &Path,
        pace: Pace,
    ) -> std::io::Result<Self> {
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        Ok(Self {
            store,
            local,
            tmp,
            pace,
        })
    }

    /// Whether a run's artifacts are written where they stay (the store is
    /// local), so that [`Self::keep_artifacts`] has nothing to do.
    pub fn keeps_in_place(&self) -> bool {
        self.local.is_some()
    }

    /// Where `key` is on this machine's disk, when the store is local.
    fn local_path(&self, key: &Key) -> Option<std::io::Result<PathBuf>> {
        self.local
            .as_ref()
            .map(|local| local.path_to_filesystem(key).map_err(io_error))
    }

    /// Places staged files (each with its sha256) under their hash, each
    /// unless it is there already. The staged files stay, so that content
    /// a removal took meanwhile can be placed again.
    pub async fn place_all(&self, staged: &[(tempfile::TempPath, String)]) -> std::io::Result<()> {
        for (tmp, sha256) in staged {
            let key = file_key(sha256);
            if let Some(target) = self.local_path(&key).transpose()? {
                link_in(tmp, &target)?;
            } else if !self.contains(sha256).await? {
                self.upload(&key, tmp).await?;
            }
        }
        Ok(())
    }

    /// Moves a local file to `key` of a local store.
    fn move_in(&self, tmp: tempfile::TempPath, key: &Key) -> std::io::Result<()> {
        let Some(target) = self.local_path(key).transpose()? else {
            return Err(std::io::Error::other("the blob store is not local"));
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Same content, same name: a concurrent upload of it ends the same.
        tmp.persist(&target).map_err(|e| e.error)
    }

    /// Copies the local file at `path` to `key`: in one request when it is
    /// small, in parts of [`PART`] bytes otherwise.
    async fn upload(&self, key: &Key, path: &Path) -> std::io::Result<()> {
        let mut file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        if size <= PART as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await?;
            // Content-addressed: what is there under the key is this
            // content, so it is never written over.
            return match self
                .store
                .put_opts(key, PutPayload::from(bytes), PutMode::Create.into())
                .await
            {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(io_error(e)),
            };
        }
        let upload = self.store.put_multipart(key).await.map_err(io_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; PART];
        let copied: std::io::Result<()> = async {
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(io_error)?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        // Every part sent before the upload is completed; a part that
        // failed lets the whole upload go, so the store keeps nothing of it.
        let sent = match copied {
            Ok(()) => writer.wait_for_capacity(0).await.map_err(io_error),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => writer.finish().await.map(drop).map_err(io_error),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Whether the store answers: a look at a key nothing writes.
    pub async fn answers(&self) -> std::io::Result<()> {
        match self.store.head(&Key::from("healthz")).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Whether the content with `sha256` is stored.
    pub async fn contains(&self, sha256: &str) -> std::io::Result<bool> {
        match self.store.head(&file_key(sha256)).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    /// The content with `sha256`, whole (for what is read whole anyway: a
    /// plugin component, a file put into a package).
    pub async fn read(&self, sha256: &str) -> std::io::Result<Bytes> {
        let got = self.store.get(&file_key(sha256)).await.map_err(io_error)?;
        got.bytes().await.map_err(io_error)
    }

    /// The content with `sha256`, to be served; `None` when it is not stored.
    pub async fn download(&self, sha256: &str) -> std::io::Result<Option<Download>> {
        self.download_key(&file_key(sha256)).await
    }

    async fn download_key(&self, key: &Key) -> std::io::Result<Option<Download>> {
        match self.store.get(key).await {
            Ok(got) => Ok(Some(Download {
                size: got.meta.size,
                body: got.into_stream().map_err(io_error).boxed(),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// The content with `sha256` as a file on this machine, for a run to
    /// read: in place when the store is local, else copied to scratch space.
    pub async fn on_disk(&self, sha256: &str) -> std::io::Result<OnDisk> {
        self.key_on_disk(&file_key(sha256)).await
    }

    async fn key_on_disk(&self, key: &Key) -> std::io::Result<OnDisk> {
        if let Some(path) = self.local_path(key).transpose()? {
            return Ok(OnDisk { path, _copy: None });
        }
        let got = self.store.get(key).await.map_err(io_error)?;
        let (file, copy) = tempfile::Builder::new()
            .prefix("copy-")
            .tempfile_in(&self.tmp)?
            .into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk.map_err(io_error)?).await?;
        }
        file.flush().await?;
        Ok(OnDisk {
            path: copy.to_path_buf(),
            _copy: Some(copy),
        })
    }

    /// Removes the content with `sha256` (nothing when it is not there).
    /// Only once nothing holds it: see `server/files.rs`.
    pub async fn remove(&self, sha256: &str) -> std::io::Result<()> {
        match self.store.delete(&file_key(sha256)).await {
            Err(e) if !not_found(&e) => Err(io_error(e)),
            _ => Ok(()),
        }
    }

    /// The directory a run of `execution` writes its artifacts into: where
    /// they stay when the store is local, scratch space otherwise (then
    /// [`Self::keep_artifacts`] moves them into the store).
    pub fn artifacts_out(&self, execution: &str) -> std::io::Result<PathBuf> {
        match self.local_path(&artifacts_key(execution)) {
            Some(path) => path,
            None => Ok(self.tmp.join(format!("run-{execution}"))),
        }
    }

    /// Puts what a run of `execution` wrote in [`Self::artifacts_out`] into
    /// the store (nothing to do when the store is local).
    pub async fn keep_artifacts(&self, execution: &str) -> std::io::Result<()> {
        if self.local.is_some() {
            return Ok(());
        }
        let dir = self.artifacts_out(execution)?;
        let walk = dir.clone();
        let files = tokio::task::spawn_blocking(move || files_under(&walk))
            .await
            .map_err(std::io::Error::other)??;
        for name in files {
            let path = dir.join(&name);
            self.upload(&artifact_key(execution, &name), &path).await?;
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The artifact `name` of `execution` (`output/<scope>.csv` for one in
    /// a folder), to be served; `None` when the run has not written it.
    pub async fn artifact(&self, execution: &str, name: &str) -> std::io::Result<Option<Download>> {
        self.download_key(&artifact_key(execution, name)).await
    }

    /// The artifact `name` of `execution` as a file on this machine.
    pub async fn artifact_on_disk(&self, execution: &str, name: &str) -> std::io::Result<OnDisk> {
        self.key_on_disk(&artifact_key(execution, name)).await
    }

    /// The names of the artifacts of `execution` in the folder `folder`
    /// (`""` for all), sorted, relative to the execution.
    pub async fn artifact_names(&self, execution: &str, folder: &str) -> std::io::Result<Vec<String>> {
        let base = artifacts_key(execution);
        let prefix = if folder.is_empty() {
            base.clone()
        } else {
            artifact_key(execution, folder)
        };
        let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(io_error)?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<String> = meta
                    .location
                    .prefix_match(&base)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some(parts.join("/"))
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Stores the local file `file` as the artifact `name` of `execution`.
    pub async fn put_artifact(&self, execution: &str, name: &str, file: tempfile::TempPath) -> std::io::Result<()> {
        let key = artifact_key(execution, name);
        if self.local.is_some() {
            return self.move_in(file, &key);
        }
        self.upload(&key, &file).await
    }

    /// Local scratch space for a file about to become an artifact.
    pub fn scratch_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new().prefix("make-").tempfile_in(&self.tmp)
    }

    /// Removes what scratch space holds that nothing has written for
    /// `older_than`: what a process that stopped left behind (an upload cut
    /// off, a run's copies). Processes share scratch space, so what is in
    /// use must look it: an upload writes at least at its pace, and a run's
    /// files are written within its runtime; give more than both. The
    /// number of entries removed.
    pub fn sweep_scratch(&self, older_than: Duration) -> std::io::Result<usize> {
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            let Ok(touched) = last_written(&path) else { continue };
            if now.duration_since(touched).unwrap_or_default() < older_than {
                continue;
            }
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match gone {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// A local scratch directory (a preview's outputs), removed when dropped.
    pub fn scratch_dir(&self, prefix: &str) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix(prefix).tempdir_in(&self.tmp)
    }

    /// Removes every artifact of `execution`, and what a run of it left in
    /// scratch space.
    pub async fn remove_artifacts(&self, execution: &str) -> std::io::Result<()> {
        let out = self.artifacts_out(execution)?;
        match tokio::fs::remove_dir_all(&out).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if self.local.is_some() {
            return Ok(());
        }
        let prefix = artifacts_key(execution);
        let keys = self.store.list(Some(&prefix)).map_ok(|meta| meta.location).boxed();
        self.store
            .delete_stream(keys)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
            .map_err(io_error)
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
    /// sha256, for [`Blobs::place_all`].
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
}

/// Puts the local file `tmp` at `target` unless something is there (the
/// same content, as names are hashes), without moving `tmp`: a hard link,
/// or a copy renamed into place where no link can be made.
fn link_in(tmp: &Path, target: &Path) -> std::io::Result<()> {
    if target.exists() {
        return Ok(());
    }
    let dir = target.parent().unwrap_or(target);
    std::fs::create_dir_all(dir)?;
    match std::fs::hard_link(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => {
            let copy = tempfile::NamedTempFile::new_in(dir)?;
            std::fs::copy(tmp, copy.path())?;
            copy.as_file().sync_all()?;
            copy.persist(target).map(drop).map_err(|e| e.error)
        }
    }
}

/// When anything at `path` was last written: a file's own time, a
/// directory's newest file's (its own when it holds none).
fn last_written(path: &Path) -> std::io::Result<std::time::SystemTime> {
    let own = std::fs::symlink_metadata(path)?.modified()?;
    if !path.is_dir() {
        return Ok(own);
    }
    let mut newest = None;
    for name in files_under(path)? {
        let at = std::fs::symlink_metadata(path.join(name))?.modified()?;
        newest = Some(newest.map_or(at, |n: std::time::SystemTime| n.max(at)));
    }
    Ok(newest.unwrap_or(own))
}

/// The files under `dir`, as relative paths with `/` between parts.
fn files_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        let entries = match std::fs::read_dir(&at) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                pending.push((entry.path(), format!("{name}/")));
            } else {
                found.push(name);
            }
        }
    }
    Ok(found)
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

    fn store(dir: &Path) -> Blobs {
        Blobs::local(dir, Pace::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The default store, one that is not a directory (as a remote one is
    /// not), and a directory named by a `file://` URL: every behaviour must
    /// hold on each.
    fn backends(dir: &Path) -> Vec<(&'static str, Blobs)> {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let remote = Blobs::remote(memory, &dir.join("remote"), Pace::default()).unwrap_or_else(|e| panic!("{e}"));
        let url = format!("file://{}", dir.join("elsewhere").display());
        let named = open_store(&url).unwrap_or_else(|e| panic!("{e}"));
        let named = Blobs::remote(named, &dir.join("named"), Pace::default()).unwrap_or_else(|e| panic!("{e}"));
        vec![
            ("local", store(&dir.join("local"))),
            ("remote", remote),
            ("file URL", named),
        ]
    }

    #[test]
    fn an_object_store_url_names_a_bucket_and_prefix_or_a_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(open_store("s3://bucket").is_ok());
        assert!(open_store("s3://bucket/some/prefix/").is_ok());
        assert!(open_store(&format!("file://{}", dir.path().display())).is_ok());
        for (url, said) in [
            ("s3://", "name the bucket"),
            ("s3:///prefix", "name the bucket"),
            ("file://relative", "absolute directory"),
            ("gs://bucket", "give s3://bucket/prefix or file:///dir"),
            ("/some/dir", "give s3://bucket/prefix or file:///dir"),
        ] {
            let refused = open_store(url).err().unwrap_or_default();
            assert!(refused.contains(said), "{url}: {refused}");
        }
    }

    #[tokio::test]
    async fn a_remote_store_that_does_not_answer_is_a_fault_of_its_own() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let s3 = AmazonS3Builder::new()
            .with_bucket_name("gone")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("k")
            .with_secret_access_key("s")
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::from_secs(1),
            })
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let blobs = Blobs::remote(Arc::new(s3), dir.path(), Pace::default()).unwrap_or_else(|e| panic!("{e}"));
        let failed = blobs.answers().await.err();
        let fault = failed.as_ref().and_then(|e| crate::server::error::StorageFault::of(e));
        assert_eq!(
            fault,
            Some(crate::server::error::StorageFault::Unavailable),
            "{failed:?}"
        );
        let (tmp, sha256) = blobs.stage_bytes(b"kept?").unwrap_or_else(|e| panic!("{e}"));
        let placed = blobs.place_all(&[(tmp, sha256)]).await.err();
        let fault = placed.as_ref().and_then(|e| crate::server::error::StorageFault::of(e));
        assert_eq!(
            fault,
            Some(crate::server::error::StorageFault::Unavailable),
            "{placed:?}"
        );
    }

    async fn bytes_of(download: Option<Download>) -> Vec<u8> {
        let Some(download) = download else { return Vec::new() };
        let size = download.size;
        let chunks: Vec<Bytes> = download.body.try_collect().await.unwrap_or_else(|e| panic!("{e}"));
        let bytes = chunks.concat();
        assert_eq!(bytes.len() as u64, size);
        bytes
    }

    #[tokio::test]
    async fn content_is_stored_under_its_hash_and_read_back_every_way() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, store) in backends(dir.path()) {
            let (tmp, stored) = store
                .receive(chunks(&[b"a,b\n", b"1,2\n"]), 100)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let staged = [(tmp, stored.sha256.clone())];
            store.place_all(&staged).await.unwrap_or_else(|e| panic!("{e}"));
            drop(staged);
            assert_eq!(stored.size, 8);
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(b"a,b\n1,2\n")));
            assert!(store.contains(&stored.sha256).await.unwrap_or(false), "{name}");
            let read = store.read(&stored.sha256).await.ok();
            assert_eq!(read.as_deref(), Some(&b"a,b\n1,2\n"[..]), "{name}");
            let served = bytes_of(store.download(&stored.sha256).await.unwrap_or_else(|e| panic!("{e}"))).await;
            assert_eq!(served, b"a,b\n1,2\n", "{name}");
            let on_disk = store.on_disk(&stored.sha256).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                std::fs::read(on_disk.path()).ok(),
                Some(b"a,b\n1,2\n".to_vec()),
                "{name}"
            );
            let copy = on_disk.path().to_path_buf();
            drop(on_disk);
            // A copy made for a run goes with it; the stored file stays.
            assert_eq!(copy.exists(), name == "local", "{name}: {}", copy.display());
            assert!(
                store
                    .download("0".repeat(64).as_str())
                    .await
                    .ok()
                    .is_some_and(|d| d.is_none()),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn the_local_store_keeps_content_where_the_data_directory_always_did() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = store(dir.path());
        let (tmp, sha256) = store.stage_bytes(b"kept").unwrap_or_else(|e| panic!("{e}"));
        store
            .place_all(&[(tmp, sha256.clone())])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("files").join(&sha256[..2]).join(&sha256);
        assert_eq!(std::fs::read(path).ok(), Some(b"kept".to_vec()));
        assert_eq!(
            store.artifacts_out("e1").ok(),
            Some(dir.path().join("executions").join("e1"))
        );
    }

    #[tokio::test]
    async fn content_larger_than_a_part_goes_up_in_parts_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let big: Vec<u8> = (0..PART * 2 + 12_345).map(|i| (i % 251) as u8).collect();
        for (name, store) in backends(dir.path()) {
            let (tmp, sha256) = store.stage(big.clone()).await.unwrap_or_else(|e| panic!("{e}"));
            store
                .place_all(&[(tmp, sha256.clone())])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let read = store.read(&sha256).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(read == big, "{name}: {} bytes back", read.len());
        }
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
        let store = Blobs::local(dir.path(), pace).unwrap_or_else(|e| panic!("{e}"));
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

    #[tokio::test]
    async fn content_a_removal_took_is_placed_again_from_the_staged_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, store) in backends(dir.path()) {
            let (tmp, sha256) = store.stage_bytes(b"kept").unwrap_or_else(|e| panic!("{e}"));
            let staged = [(tmp, sha256.clone())];
            store.place_all(&staged).await.unwrap_or_else(|e| panic!("{e}"));
            // Placing what is there changes nothing.
            store.place_all(&staged).await.unwrap_or_else(|e| panic!("{e}"));
            store.remove(&sha256).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(!store.contains(&sha256).await.unwrap_or(true), "{name}");
            // Removing what is not there is no failure.
            store.remove(&sha256).await.unwrap_or_else(|e| panic!("{e}"));
            store.place_all(&staged).await.unwrap_or_else(|e| panic!("{e}"));
            drop(staged);
            let read = store.read(&sha256).await.ok();
            assert_eq!(
                read.as_deref(),
                Some(&b"kept"[..]),
                "{name}: back, and it outlives its staged file"
            );
        }
    }

    #[test]
    fn scratch_space_left_behind_goes_and_what_is_being_written_stays() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = store(dir.path());
        let tmp = dir.path().join("tmp");
        let day = Duration::from_secs(24 * 3600);
        let age = |path: &Path, by: Duration| {
            let file = std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap_or_else(|e| panic!("{e}"));
            file.set_modified(std::time::SystemTime::now() - by)
                .unwrap_or_else(|e| panic!("{e}"));
        };
        let write = |path: &Path| std::fs::write(path, b"x").unwrap_or_else(|e| panic!("{e}"));
        // An upload cut off two days ago, and one in flight.
        write(&tmp.join("upload-old"));
        age(&tmp.join("upload-old"), 2 * day);
        write(&tmp.join("upload-now"));
        // A run's directory whose files were all written long ago, and one
        // with an old copy it still writes beside.
        for run in ["run-old", "run-now"] {
            std::fs::create_dir_all(tmp.join(run).join("output")).unwrap_or_else(|e| panic!("{e}"));
            write(&tmp.join(run).join("output").join("a.csv"));
            age(&tmp.join(run).join("output").join("a.csv"), 3 * day);
        }
        write(&tmp.join("run-now").join("report.xlsx"));
        assert_eq!(store.sweep_scratch(day).ok(), Some(2));
        let mut left: Vec<String> = std::fs::read_dir(&tmp)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        assert_eq!(left, ["run-now", "upload-now"]);
    }

    #[tokio::test]
    async fn a_runs_artifacts_reach_the_store_are_served_from_it_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, store) in backends(dir.path()) {
            let out = store.artifacts_out("run-1").unwrap_or_else(|e| panic!("{e}"));
            std::fs::create_dir_all(out.join("output")).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(out.join("rejected.csv"), b"row,problem\n").unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(out.join("output").join("contacts.csv"), b"email\nx@example.com\n")
                .unwrap_or_else(|e| panic!("{e}"));
            store.keep_artifacts("run-1").await.unwrap_or_else(|e| panic!("{e}"));
            let names = store
                .artifact_names("run-1", "")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(names, ["output/contacts.csv", "rejected.csv"], "{name}");
            let outputs = store
                .artifact_names("run-1", "output")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(outputs, ["output/contacts.csv"], "{name}");
            let served = bytes_of(
                store
                    .artifact("run-1", "rejected.csv")
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await;
            assert_eq!(served, b"row,problem\n", "{name}");
            let on_disk = store
                .artifact_on_disk("run-1", "output/contacts.csv")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                std::fs::read(on_disk.path()).ok(),
                Some(b"email\nx@example.com\n".to_vec()),
                "{name}"
            );
            drop(on_disk);
            let made = store.scratch_file().unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(made.path(), b"zip").unwrap_or_else(|e| panic!("{e}"));
            store
                .put_artifact("run-1", "output.zip", made.into_temp_path())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let zip = bytes_of(
                store
                    .artifact("run-1", "output.zip")
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await;
            assert_eq!(zip, b"zip", "{name}");
            assert!(
                store
                    .artifact("run-1", "report.xlsx")
                    .await
                    .ok()
                    .is_some_and(|a| a.is_none()),
                "{name}"
            );
            store.remove_artifacts("run-1").await.unwrap_or_else(|e| panic!("{e}"));
            let left = store
                .artifact_names("run-1", "")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(left.is_empty(), "{name}: {left:?}");
            assert!(!out.exists(), "{name}: {}", out.display());
        }
    }
}
