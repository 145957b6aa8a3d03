//! Leased runs: how several processes share one queue (docs/architecture.md,
//! "Leased runs").
//!
//! Every process has a worker id. Claiming an execution stores its owner
//! and a lease expiry; the owner renews the lease every `heartbeat` and, far
//! more often, reads the cancels other processes stored for its runs. A run
//! whose lease expired, or whose owner is gone, is resolved by any live
//! process: it takes the run over (a conditional update, so one resolver
//! wins), revokes its commits in the record store (so the counts it then
//! reads are final: a process that lost its lease commits nothing more),
//! and stores `failed` (`worker_lost`), or `canceled` for a run that was
//! being canceled.
//!
//! On one data directory a process also holds a lock on
//! `workers/<id>.lock` for as long as it lives: the operating system
//! releases it when the process ends in any way, so a restart resolves what
//! a killed process left at once instead of waiting for its leases. A
//! process that is stopped but alive keeps its lock, and its runs are
//! resolved when their leases expire.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_engine::error::{ErrorCode, Stage};
use weir_engine::execution::{ExecutionError, StageStatus, Status};

use super::App;
use super::queue;
use super::state::{Lease, StateError};

/// How often a process reads the cancels stored for its runs: a cancel
/// sent to another process reaches the run within this (and a write).
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// How often the keeper looks at its heartbeat and sweep while cancels
/// are signalled to it.
const SIGNALLED_TICK: Duration = Duration::from_millis(100);

/// This process among those sharing the state store, and its life lock.
#[derive(Debug)]
pub struct Worker {
    id: String,
    /// Locked for the life of the process; never read.
    _lock: File,
}

/// A worker id that is taken, or a lock that cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A live process uses the id.
    #[error("worker id {0:?} is used by a running process on this data directory")]
    InUse(String),
    /// The lock file cannot be created or locked.
    #[error("worker lock {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Worker {
    /// Registers worker `id` on `data_dir`: its lock file, held until this
    /// value is dropped (the process ends).
    pub fn register(data_dir: &Path, id: &str) -> Result<Self, WorkerError> {
        let path = lock_path(data_dir, id);
        let io = |source| WorkerError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(path.parent().unwrap_or(data_dir)).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                id: id.to_string(),
                _lock: file,
            }),
            Err(TryLockError::WouldBlock) => Err(WorkerError::InUse(id.to_string())),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// The worker id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

fn lock_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("workers").join(format!("{id}.lock"))
}

/// Whether worker `owner` is known to be gone: its lock file on this data
/// directory is free. A worker with no file here (another machine's, or
/// one whose file was removed) is not known to be gone: its leases decide.
fn gone(data_dir: &Path, owner: &str) -> bool {
    let Ok(file) = File::options().write(true).open(lock_path(data_dir, owner)) else {
        return false;
    };
    // Dropping the file releases the lock taken here.
    file.try_lock().is_ok()
}

/// Milliseconds since the Unix epoch, as leases are stored.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The expiry of a lease taken or renewed now.
pub fn lease_until(app: &App) -> i64 {
    now_ms().saturating_add(i64::try_from(app.settings.lease.as_millis()).unwrap_or(i64::MAX))
}

/// Renews this process's leases, delivers the cancels stored for its runs
/// and resolves lost runs, until the process has stopped and its last run
/// has ended.
pub async fn keeper(app: Arc<App>) {
    let heartbeat = app.settings.heartbeat;
    // A store that signals cancels as they are asked is read only at each
    // heartbeat, as the guarantee; another is read every few milliseconds.
    let mut signals = app.db.cancel_signals();
    let mut poll = if signals.is_some() { heartbeat } else { CANCEL_POLL };
    let mut polled = Instant::now();
    let mut beat = Instant::now();
    let mut swept = Instant::now();
    loop {
        if app.runs.draining().is_cancelled() && app.runs.running_count() == 0 {
            return;
        }
        if polled.elapsed() >= poll && app.runs.running_count() > 0 {
            polled = Instant::now();
            match app.db.cancel_requests(app.worker.id()) {
                Ok(ids) => {
                    for id in ids {
                        queue::cancel_here(&app, &id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading cancel requests failed"),
            }
        }
        if beat.elapsed() >= heartbeat {
            beat = Instant::now();
            renew(&app);
        }
        if swept.elapsed() >= heartbeat && !app.runs.draining().is_cancelled() {
            swept = Instant::now();
            match sweep_in_turn(&app) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(executions = n, "resolved executions whose process was lost"),
                Err(e) => tracing::error!(error = %e, "resolving lost executions failed"),
            }
        }
        match &mut signals {
            Some(listening) => {
                tokio::select! {
                    asked = listening.recv() => match asked {
                        // A run of another process is left to it.
                        Some(id) => queue::cancel_here(&app, &id),
                        // No more signals: back to reading.
                        None => {
                            signals = None;
                            poll = CANCEL_POLL;
                        }
                    },
                    () = tokio::time::sleep(SIGNALLED_TICK) => {}
                }
            }
            None => tokio::time::sleep(CANCEL_POLL).await,
        }
    }
}

/// Extends the leases of this process's runs; a run whose lease it no
/// longer holds (it was resolved elsewhere while this process did not
/// renew in time) is stopped, and nothing more of it is stored.
fn renew(app: &App) {
    let ids = app.runs.ids();
    if ids.is_empty() {
        return;
    }
    match app.db.extend_leases(app.worker.id(), &ids, lease_until(app)) {
        Ok(lost) => {
            for id in lost {
                tracing::error!(execution = %id, "this process lost the run's lease; stopping it");
                app.runs.stop(&id);
            }
        }
        Err(e) => tracing::error!(error = %e, "renewing leases failed"),
    }
}

/// [`sweep`], when it is this process's turn: one process at a time
/// sweeps, its turn lasting a lease and renewed as it sweeps, so that a
/// turn whose process is lost passes to another.
fn sweep_in_turn(app: &App) -> Result<usize, StateError> {
    let now = now_ms();
    if !app.db.sweeper_turn(app.worker.id(), now, lease_until(app))? {
        return Ok(0);
    }
    sweep(app)
}

/// Resolves every run whose process is lost: its lease expired, its
/// process is gone, or it was claimed by a server from before leases.
/// How many it resolved.
pub fn sweep(app: &App) -> Result<usize, StateError> {
    let now = now_ms();
    let me = app.worker.id();
    let dir = &app.settings.config.data_dir;
    let mut resolved = 0;
    let leases = app.db.leases()?;
    for lease in &leases {
        let lost = match (&lease.owner, lease.until) {
            (Some(owner), Some(until)) if owner == me => until < now || !app.runs.has(&lease.id),
            (Some(owner), Some(until)) => until < now || gone(dir, owner),
            _ => true,
        };
        if lost && app.db.take_over(lease, me)? && resolve(app, lease)? {
            resolved += 1;
        }
    }
    forget_gone_workers(app, &leases);
    Ok(resolved)
}

/// Ends a run this process has taken over: its commits revoked first, then
/// its counts read and its end stored.
fn resolve(app: &App, lease: &Lease) -> Result<bool, StateError> {
    if let Err(e) = app.records.revoke(&lease.id) {
        // Its lease is expired and this process owns it: the next sweep
        // tries again.
        tracing::error!(execution = %lease.id, error = %e, "revoking a lost run's commits failed");
        return Ok(false);
    }
    let Some(row) = app.db.execution(&lease.id)? else {
        return Ok(false);
    };
    let mut doc = row.document;
    let stage = doc
        .step_progress
        .iter()
        .rev()
        .find(|p| p.status() == StageStatus::Running)
        .map_or(Stage::Intake, |p| p.stage());
    if doc.status == Status::Canceling {
        doc.close_open_stages(StageStatus::Canceled, StageStatus::Skipped);
        let _ = doc.transition(Status::Canceled);
    } else {
        doc.close_open_stages(StageStatus::Failed, StageStatus::Skipped);
        doc.error = Some(ExecutionError {
            stage,
            code: ErrorCode::WorkerLost,
            message:
                "the process running this execution stopped or lost its lease; records it committed before that stay"
                    .into(),
            line: None,
            column: None,
            plugin: None,
        });
        let _ = doc.transition(Status::Failed);
    }
    app.runner.committed_counts(&mut doc);
    if !app.db.save_owned(&doc, app.worker.id())? {
        return Ok(false);
    }
    let owner = lease.owner.as_deref().unwrap_or("a server from before leases");
    app.db.append_log(
        &doc.id,
        "error",
        &format!(
            "resolved by worker {}: {} (its process, {owner}, was lost)",
            app.worker.id(),
            doc.status.as_str()
        ),
    )?;
    app.metrics.finished(doc.status);
    app.notifier.wake();
    Ok(true)
}

/// Removes the lock files of workers that are gone and hold none of
/// `leases` (a run resolved just now still names its owner there: its file
/// goes at the next sweep).
fn forget_gone_workers(app: &App, leases: &[Lease]) {
    let dir = app.settings.config.data_dir.join("workers");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
        else {
            continue;
        };
        if id == app.worker.id() || leases.iter().any(|l| l.owner.as_deref() == Some(id)) {
            continue;
        }
        let Ok(file) = File::options().write(true).open(&path) else {
            continue;
        };
        // Removed while locked here, so no live process holds it.
        if file.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}
