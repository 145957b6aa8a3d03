//! Worker processes: every server run and preview executes in a process of
//! its own (`weir worker`), so a run cannot take the server with it
//! (docs/reliability.md, "Hostile connectors").
//!
//! The server hands a worker one [`Job`] as a JSON line on its standard
//! input and supervises it from outside ([`supervise`]): a deadline of the
//! run's `max_runtime` plus a second, a bound on its resident memory, and a
//! cancel that becomes a kill when the worker does not stop in time. The
//! worker limits itself with the OS (CPU time, no core dumps, death with its
//! parent), runs the pipeline, and reports on its standard output, one JSON
//! [`Report`] a line: the live document as it changes, log lines, and the
//! end. Records are committed by the worker into the record store itself,
//! so what a killed worker committed stays, and the server reconciles the
//! counts from the store as it does after a crash.
//!
//! This module must not know the server's state: the server resolves what
//! a job needs (the input's path, the plugins' files, the objects) before
//! it starts the worker. That is also the shape of a leased run on another
//! machine: a job, reports, and commits through the shared stores.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use weir_engine::connector::{Connector, PluginRef};
use weir_engine::error::{ErrorCode, Limit, Stage};
use weir_engine::execution::{Execution, ExecutionError, StageStatus, Status};
use weir_engine::objects::Objects;
use weir_engine::pipeline::{self, InputFile, Progress, Records, RunRequest, RunSettings};
use weir_engine::plugin::{PluginRuntime, PluginSettings};
use weir_engine::runlog::{LogLevel, RunLog};
use weir_engine::sources::SecretValues;
use weir_engine::store::{PgStore, RecordStore, SqliteStore};
use weir_engine::transform::{PluginSource, Plugins};

/// What a worker may hold beyond the run's `max_memory`: the process, the
/// plugin instances (each up to 256 MiB) and the allocator's slack.
pub const MEMORY_OVERHEAD: u64 = 512 * 1024 * 1024;

/// How long after `max_runtime` a worker that did not stop itself is killed.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// How long a canceled worker has to stop before it is killed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How often the supervisor looks at the worker.
const TICK: Duration = Duration::from_millis(20);

/// The most of a worker's standard error kept, to explain a crash.
const STDERR_TAIL: usize = 4096;

/// One run for a worker: everything resolved, nothing to look up.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    /// The connector definition.
    pub connector: Connector,
    /// The SQL script.
    pub script: String,
    /// The execution document, as claimed (`running`).
    pub execution: Execution,
    /// The input file, when there is one.
    pub input: Option<JobInput>,
    /// Where artifacts go.
    pub out_dir: PathBuf,
    /// Threads for the SQL engine and for parsing a CSV/TSV or JSON Lines input.
    pub threads: usize,
    /// Most rows per scope output CSV.
    pub output_row_cap: Option<u64>,
    /// Most rows per report sheet.
    pub report_rows: usize,
    /// Rows per load commit.
    pub load_batch_size: usize,
    /// Where load steps write, when the connector loads.
    pub records: Option<JobRecords>,
    /// Every plugin the transforms name: its file, or why there is none.
    pub plugins: BTreeMap<String, Result<PathBuf, String>>,
    /// The compiled-plugin cache shared with other workers.
    pub plugin_cache: Option<PathBuf>,
    /// The linear memory one plugin instance may grow to, in bytes.
    pub plugin_memory: u64,
    /// CPU seconds the worker may use.
    pub cpu_seconds: u64,
    /// The secrets the connector's sources need, opened by the server (they
    /// reach the worker on its standard input, never its environment).
    #[serde(default)]
    pub secrets: SecretValues,
}

/// A job's input file.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobInput {
    /// Where it is.
    pub path: PathBuf,
    /// Its name as uploaded.
    pub name: String,
}

/// A job's record store and objects.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobRecords {
    /// Where the record store is.
    pub store: RecordsAt,
    /// The workspace.
    pub workspace: String,
    /// The workspace's objects.
    pub objects: Objects,
}

/// Where a record store is: what a worker opens to load and read records.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordsAt {
    /// The embedded store's database file.
    Sqlite {
        /// The file.
        path: PathBuf,
    },
    /// A PostgreSQL database.
    Postgres {
        /// Its URL, password included (a job reaches its worker on the
        /// worker's standard input).
        url: String,
    },
}

impl std::fmt::Debug for RecordsAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordsAt::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            RecordsAt::Postgres { .. } => f.debug_struct("Postgres").finish_non_exhaustive(),
        }
    }
}

impl RecordsAt {
    /// Opens the store.
    pub fn open(&self) -> weir_engine::error::Result<Arc<dyn RecordStore>> {
        Ok(match self {
            RecordsAt::Sqlite { path } => Arc::new(SqliteStore::open(path)?),
            // A run commits on one connection and reads its snapshot on
            // one of its own.
            RecordsAt::Postgres { url } => Arc::new(PgStore::connect(url, 2)?),
        })
    }
}

/// One line a worker writes on its standard output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The live document changed.
    Progress {
        /// The document now.
        execution: Execution,
    },
    /// A log line of the run.
    Log {
        /// `debug`, `info`, `warn` or `error`.
        level: String,
        /// The line.
        message: String,
    },
    /// The run ended with this document.
    End {
        /// The final document.
        execution: Execution,
    },
}

// ---------------------------------------------------------------------------
// The worker's side: `weir worker`.

/// Reports go to standard output one whole line at a time.
#[derive(Clone)]
struct Reporter(Arc<Mutex<std::io::Stdout>>);

impl Reporter {
    fn send(&self, report: &Report) {
        let Ok(mut line) = serde_json::to_vec(report) else {
            return;
        };
        line.push(b'\n');
        let mut out = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The server is gone when this fails; the worker dies with it.
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }
}

impl RunLog for Reporter {
    fn line(&self, level: LogLevel, message: &str) {
        self.send(&Report::Log {
            level: level.as_str().into(),
            message: message.into(),
        });
    }
}

/// The plugins a job resolved.
struct JobPlugins(BTreeMap<String, Result<PathBuf, String>>);

impl PluginSource for JobPlugins {
    fn fetch(&self, plugin: &PluginRef) -> Result<Vec<u8>, String> {
        match self.0.get(&plugin.to_string()) {
            Some(Ok(path)) => std::fs::read(path).map_err(|e| format!("reading plugin {plugin}: {e}")),
            Some(Err(why)) => Err(why.clone()),
            None => Err(format!("no plugin {plugin} was resolved for this run")),
        }
    }
}

/// `weir worker`: reads one job from standard input, runs it, reports on
/// standard output. A `cancel` line on standard input cancels the run; the
/// end of standard input (the server is gone) cancels it too.
pub fn run() -> anyhow::Result<ExitCode> {
    // Die with the server, never outlive it as an orphan that still writes.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let job: Job = serde_json::from_str(&line)?;
    limit_self(job.cpu_seconds)?;
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        cancel.cancel();
                        // The server is gone: nobody reads the end.
                        std::thread::sleep(CANCEL_GRACE);
                        std::process::exit(1);
                    }
                    Ok(_) if line.trim() == "cancel" => cancel.cancel(),
                    Ok(_) => {}
                }
            }
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(job.threads.max(1) + 1)
        .thread_stack_size(8 * 1024 * 1024)
        .enable_all()
        .build()?;
    let reporter = Reporter(Arc::new(Mutex::new(std::io::stdout())));
    let end = runtime.block_on(run_job(job, cancel, reporter.clone()))?;
    reporter.send(&Report::End { execution: end });
    // Plugin and SQL threads may still be winding down; the end is out.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

/// CPU time (SIGXCPU at the soft limit, SIGKILL at the hard one) and no
/// core dumps: a crashing worker leaves nothing behind.
fn limit_self(cpu_seconds: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    setrlimit(
        Resource::Cpu,
        Rlimit {
            current: Some(cpu_seconds),
            maximum: Some(cpu_seconds + 5),
        },
    )?;
    Ok(())
}

async fn run_job(job: Job, cancel: CancellationToken, reporter: Reporter) -> anyhow::Result<Execution> {
    let store = match &job.records {
        Some(r) => Some(r.store.open()?),
        None => None,
    };
    let plugins = if job.connector.transforms.is_empty() {
        None
    } else {
        Some(Arc::new(PluginRuntime::new(PluginSettings {
            cache_dir: job.plugin_cache.clone(),
            memory_limit: job.plugin_memory,
            ..PluginSettings::default()
        })?))
    };
    let progress = Progress::new(job.execution.clone());
    let request = request(job, cancel, Arc::new(reporter.clone()), store, plugins);
    let forward = {
        let mut rx = progress.subscribe();
        let reporter = reporter.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let execution = rx.borrow_and_update().clone();
                if execution.status.is_terminal() {
                    return;
                }
                reporter.send(&Report::Progress { execution });
                // At most 50 updates a second; the last one is never lost,
                // since the end carries the whole document.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let end = pipeline::run(request, &progress).await;
    forward.abort();
    Ok(end)
}

/// The engine's request for `job`, loading into `store` (the job's record
/// store, opened) and running plugins on `plugins`.
fn request(
    job: Job,
    cancel: CancellationToken,
    log: Arc<dyn RunLog>,
    store: Option<Arc<dyn RecordStore>>,
    plugins: Option<Arc<PluginRuntime>>,
) -> RunRequest {
    let records = job.records.zip(store).map(|(r, store)| Records {
        store,
        workspace: r.workspace,
        objects: r.objects,
    });
    RunRequest {
        connector: job.connector,
        script: job.script,
        input: job.input.map(|i| InputFile {
            path: i.path,
            name: i.name,
        }),
        execution: job.execution,
        out_dir: job.out_dir,
        settings: RunSettings {
            threads: job.threads,
            output_row_cap: job.output_row_cap,
            report_rows: job.report_rows,
            load_batch_size: job.load_batch_size,
            ..RunSettings::default()
        },
        cancel,
        records,
        plugins: plugins.map(|runtime| Plugins {
            runtime,
            source: Arc::new(JobPlugins(job.plugins)),
        }),
        log,
        secrets: job.secrets,
    }
}

/// Runs `job` in this process, without a wall around it: for a server that
/// trusts every connector it runs (`isolation = "none"`), where a worker's
/// start would be the larger part of a small run.
pub async fn run_here(
    job: Job,
    progress: &Progress,
    log: Arc<dyn RunLog>,
    cancel: &CancellationToken,
    store: Arc<dyn RecordStore>,
    plugins: Arc<PluginRuntime>,
) -> Execution {
    let request = request(job, cancel.clone(), log, Some(store), Some(plugins));
    pipeline::run(request, progress).await
}

// ---------------------------------------------------------------------------
// The server's side.

/// Bounds a supervisor holds a worker to.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The run's `max_runtime`: the worker is killed [`DEADLINE_GRACE`]
    /// after it.
    pub runtime: Duration,
    /// The most resident memory the worker may have, in bytes.
    pub memory: u64,
}

/// How a supervised worker ended.
#[derive(Debug)]
pub struct Supervised {
    /// The final document: the worker's own end, or the failure the
    /// supervisor made of its death.
    pub execution: Execution,
    /// Whether the worker ended on its own with an end document. When it
    /// did not, its load counts are those of the last report and should be
    /// reconciled with the record store.
    pub reported_end: bool,
    /// The most resident memory seen, in bytes.
    pub peak_memory: u64,
}

/// Why the supervisor killed a worker.
#[derive(Debug, Clone, Copy)]
enum Kill {
    Limit(Limit),
    Cancel,
}

/// Runs `job` in a worker process started from `program` and follows it to
/// its end: reports update `progress` and go to `log`, a `cancel` is passed
/// on (and becomes a kill after [`CANCEL_GRACE`]), and the bounds are held.
/// Blocking: call from a blocking thread.
pub fn supervise(
    program: &Path,
    job: &Job,
    progress: &Progress,
    log: Arc<dyn RunLog>,
    cancel: &CancellationToken,
    bounds: Bounds,
) -> Supervised {
    let started = Instant::now();
    let fallback = |message: String| Supervised {
        execution: failed(progress.snapshot(), ErrorCode::Internal, message),
        reported_end: false,
        peak_memory: 0,
    };
    // A worker opens no secret: it never holds the key that seals them.
    let mut child = match Command::new(program)
        .arg("worker")
        .env_remove(crate::server::secrets::KEY_VARIABLE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return fallback(format!("starting a worker ({}) failed: {e}", program.display())),
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return fallback("a worker started without its pipes".into());
    };
    let end: Arc<Mutex<Option<Execution>>> = Arc::default();
    let reader = {
        let (progress, end) = (progress.clone(), end.clone());
        std::thread::spawn(move || read_reports(stdout, &progress, log.as_ref(), &end))
    };
    let tail = std::thread::spawn(move || stderr_tail(stderr));
    let sent = serde_json::to_vec(job).map(|mut line| {
        line.push(b'\n');
        stdin.write_all(&line).and_then(|()| stdin.flush())
    });
    if let Err(e) = sent {
        tracing::error!(error = %e, "a job could not be encoded");
    }

    let pid = child.id();
    let mut peak_memory = 0;
    let mut canceled_at = None;
    let mut killed = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "waiting for a worker failed");
                break None;
            }
        }
        let memory = resident_memory(pid);
        peak_memory = peak_memory.max(memory);
        let kill = if memory > bounds.memory {
            Some(Kill::Limit(Limit::MaxMemory))
        } else if started.elapsed() > bounds.runtime + DEADLINE_GRACE {
            Some(Kill::Limit(Limit::MaxRuntime))
        } else if canceled_at.is_some_and(|at: Instant| at.elapsed() > CANCEL_GRACE) {
            Some(Kill::Cancel)
        } else {
            None
        };
        if let Some(why) = kill
            && killed.is_none()
        {
            killed = Some(why);
            let _ = child.kill();
        }
        if canceled_at.is_none() && cancel.is_cancelled() {
            canceled_at = Some(Instant::now());
            let _ = stdin.write_all(b"cancel\n").and_then(|()| stdin.flush());
        }
        std::thread::sleep(TICK);
    };
    drop(stdin);
    let _ = reader.join();
    let stderr = tail.join().unwrap_or_default();
    let reported = end.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let execution = match (reported, killed) {
        (Some(doc), None) => {
            return Supervised {
                execution: doc,
                reported_end: true,
                peak_memory,
            };
        }
        (_, Some(Kill::Cancel)) => canceled(progress.snapshot()),
        (_, Some(Kill::Limit(Limit::MaxMemory))) => {
            let message = format!(
                "the run used more than {} MiB of memory (limits.max_memory plus {} MiB for the worker) and was stopped",
                bounds.memory >> 20,
                MEMORY_OVERHEAD >> 20
            );
            failed(progress.snapshot(), ErrorCode::LimitExceeded, message)
        }
        (_, Some(Kill::Limit(_))) => {
            let message = format!(
                "the run went on past limits.max_runtime ({}) without stopping and was killed",
                humantime::format_duration(bounds.runtime)
            );
            failed(progress.snapshot(), ErrorCode::LimitExceeded, message)
        }
        (None, None) => died(progress.snapshot(), status, &stderr),
    };
    Supervised {
        execution,
        reported_end: false,
        peak_memory,
    }
}

fn read_reports(stdout: impl Read, progress: &Progress, log: &dyn RunLog, end: &Mutex<Option<Execution>>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        match serde_json::from_str::<Report>(&line) {
            Ok(Report::Progress { execution }) => progress.update(|doc| {
                // A cancel the server took stays shown until the worker
                // reports that it acted on it.
                let canceling = doc.status == Status::Canceling;
                *doc = execution;
                if canceling && doc.status == Status::Running {
                    let _ = doc.transition(Status::Canceling);
                }
            }),
            Ok(Report::Log { level, message }) => {
                let level = match level.as_str() {
                    "debug" => LogLevel::Debug,
                    "warn" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    _ => LogLevel::Info,
                };
                log.line(level, &message);
            }
            Ok(Report::End { execution }) => {
                *end.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(execution);
            }
            Err(e) => tracing::warn!(error = %e, "a worker wrote a line that is not a report"),
        }
    }
}

/// The last [`STDERR_TAIL`] bytes of a worker's standard error.
fn stderr_tail(stderr: impl Read) -> String {
    let mut tail = Vec::new();
    let mut reader = BufReader::new(stderr);
    let mut buf = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    let start = tail.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

/// Resident memory of process `pid` in bytes (0 once it is gone).
fn resident_memory(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * rustix::param::page_size() as u64)
}

/// The stage a document was in.
fn current_stage(doc: &Execution) -> Stage {
    doc.step_progress
        .iter()
        .rev()
        .find(|p| p.status() == StageStatus::Running)
        .map_or(Stage::Intake, |p| p.stage())
}

fn failed(mut doc: Execution, code: ErrorCode, message: String) -> Execution {
    let stage = current_stage(&doc);
    doc.close_open_stages(StageStatus::Failed, StageStatus::Skipped);
    doc.error = Some(ExecutionError {
        stage,
        code,
        message,
        line: None,
        column: None,
        plugin: None,
    });
    if let Err(e) = doc.transition(Status::Failed) {
        tracing::error!(execution = %doc.id, error = %e, "refused status change");
    }
    doc
}

fn canceled(mut doc: Execution) -> Execution {
    doc.close_open_stages(StageStatus::Canceled, StageStatus::Skipped);
    if doc.status == Status::Running {
        let _ = doc.transition(Status::Canceling);
    }
    if let Err(e) = doc.transition(Status::Canceled) {
        tracing::error!(execution = %doc.id, error = %e, "refused status change");
    }
    doc
}

/// The failure of a worker that died without reporting an end.
fn died(doc: Execution, status: Option<ExitStatus>, stderr: &str) -> Execution {
    use std::os::unix::process::ExitStatusExt;
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default();
    match status.and_then(|s| s.signal()) {
        Some(signal) if signal == rustix::process::Signal::XCPU.as_raw() => failed(
            doc,
            ErrorCode::LimitExceeded,
            "the run used up its CPU time (limits.max_runtime on every thread) and was stopped".into(),
        ),
        Some(signal) => failed(
            doc,
            ErrorCode::WorkerCrashed,
            format!(
                "the worker running this execution died of signal {signal} ({}){last}",
                signal_name(signal)
            ),
        ),
        None => failed(
            doc,
            ErrorCode::WorkerCrashed,
            format!(
                "the worker running this execution stopped ({}) without finishing{last}",
                status.map_or_else(|| "unknown status".to_string(), |s| s.to_string())
            ),
        ),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use weir_engine::execution::{ConnectorRef, TriggerType};
    use weir_engine::runlog::Collect;

    use super::*;

    /// A stand-in for `weir worker`: a shell script that misbehaves.
    fn program(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("worker.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn job(dir: &Path) -> Job {
        let connector =
            Connector::from_toml("api_name = \"c\"\ntype = \"spreadsheet\"\n").unwrap_or_else(|e| panic!("{e}"));
        let mut execution = Execution::new(
            "e1".into(),
            ConnectorRef {
                id: None,
                api_name: "c".into(),
                version: None,
            },
            TriggerType::FileUpload,
            false,
        );
        execution.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
        Job {
            connector,
            script: String::new(),
            execution,
            input: None,
            out_dir: dir.join("out"),
            threads: 1,
            output_row_cap: None,
            report_rows: 10,
            load_batch_size: 100,
            records: None,
            plugins: BTreeMap::new(),
            plugin_cache: None,
            plugin_memory: PluginSettings::default().memory_limit,
            cpu_seconds: 10,
            secrets: SecretValues::default(),
        }
    }

    fn run(body: &str, bounds: Bounds, cancel: &CancellationToken) -> (Supervised, Duration) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let job = job(dir.path());
        let progress = Progress::new(job.execution.clone());
        let started = Instant::now();
        let s = supervise(
            &program(dir.path(), body),
            &job,
            &progress,
            weir_engine::runlog::discard(),
            cancel,
            bounds,
        );
        (s, started.elapsed())
    }

    const BOUNDS: Bounds = Bounds {
        runtime: Duration::from_secs(60),
        memory: 1 << 30,
    };

    fn error(s: &Supervised) -> (&str, &str) {
        let e = s
            .execution
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("no error: {:?}", s.execution));
        (e.code.as_str(), e.message.as_str())
    }

    #[test]
    fn a_worker_that_does_not_stop_is_killed_after_its_deadline() {
        let bounds = Bounds {
            runtime: Duration::from_millis(500),
            ..BOUNDS
        };
        let (s, took) = run("exec sleep 100", bounds, &CancellationToken::new());
        assert_eq!(s.execution.status, Status::Failed);
        let (code, message) = error(&s);
        assert_eq!(code, "limit_exceeded", "{message}");
        assert!(message.contains("max_runtime"), "{message}");
        assert!(took >= bounds.runtime + DEADLINE_GRACE, "{took:?}");
        assert!(
            took < bounds.runtime + DEADLINE_GRACE + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(!s.reported_end);
    }

    #[test]
    fn a_worker_that_dies_of_a_signal_fails_its_run_naming_it() {
        let (s, _) = run(
            "echo 'thread panicked: boom' >&2\nkill -SEGV $$",
            BOUNDS,
            &CancellationToken::new(),
        );
        assert_eq!(s.execution.status, Status::Failed);
        let (code, message) = error(&s);
        assert_eq!(code, "worker_crashed", "{message}");
        assert!(message.contains("SIGSEGV") && message.contains("boom"), "{message}");
        let (s, _) = run("exit 3", BOUNDS, &CancellationToken::new());
        let (code, message) = error(&s);
        assert_eq!(code, "worker_crashed", "{message}");
        assert!(message.contains("exit status: 3"), "{message}");
    }

    #[test]
    fn a_worker_over_its_memory_is_killed() {
        let bounds = Bounds {
            memory: 64 << 20,
            ..BOUNDS
        };
        // The shell holds 200 MB in a variable.
        let (s, _) = run(
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a)\nsleep 100",
            bounds,
            &CancellationToken::new(),
        );
        let (code, message) = error(&s);
        assert_eq!(code, "limit_exceeded", "{message}");
        assert!(message.contains("memory"), "{message}");
        assert!(s.peak_memory > bounds.memory, "{}", s.peak_memory);
    }

    #[test]
    fn a_canceled_worker_that_does_not_stop_is_killed_after_the_grace() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (s, took) = run("trap '' TERM\nexec sleep 100", BOUNDS, &cancel);
        assert_eq!(s.execution.status, Status::Canceled);
        assert!(
            took >= CANCEL_GRACE && took < CANCEL_GRACE + Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn reports_update_the_document_and_the_end_is_taken_as_is() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let job = job(dir.path());
        let mut end = job.execution.clone();
        end.transition(Status::Success).unwrap_or_else(|e| panic!("{e}"));
        let line = |r: &Report| serde_json::to_string(r).unwrap_or_else(|e| panic!("{e}"));
        let script = format!(
            "read job\necho '{}'\necho 'not a report'\necho '{}'",
            line(&Report::Log {
                level: "info".into(),
                message: "hello".into()
            }),
            line(&Report::End { execution: end })
        );
        let progress = Progress::new(job.execution.clone());
        let log = Arc::new(Collect::default());
        let s = supervise(
            &program(dir.path(), &script),
            &job,
            &progress,
            log.clone(),
            &CancellationToken::new(),
            BOUNDS,
        );
        assert!(s.reported_end);
        assert_eq!(s.execution.status, Status::Success);
        assert_eq!(log.take(), vec!["info: hello".to_string()]);
    }
}
