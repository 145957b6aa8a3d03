//! The plugin runtime: Wasm transform components (`wit/transform.wit`) in a
//! sandbox.
//!
//! It owns the wasmtime engine and its configuration, the epoch ticker, the
//! compiled-component cache (in memory by content hash, on disk through
//! wasmtime's cache), what one instance may use (memory, output size, log
//! lines) and the mapping of everything a guest can do wrong to an engine
//! [`Error`]. It knows nothing of connectors, scopes or reports: the
//! transform stage (`transform.rs`) drives it.
//!
//! A guest gets no capabilities: no preopened directories, no sockets, no
//! environment, no arguments. Its stdout and stderr become log lines. A call
//! is interrupted within about one epoch tick after its run is canceled or
//! passes its deadline, however busy the guest is: the ticker is a plain
//! thread, independent of the async runtime and of the guest's work. An
//! instance that trapped or was interrupted is never called again.
//!
//! Calls are synchronous and may run for long: callers run them on blocking
//! threads (`tokio::task::spawn_blocking`), never on an async worker.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::error::{Error, Limit, PluginFailure, Result};
use crate::runlog::{LogLevel, RunLog};

mod bindings {
    //! The host side of `weir:transform`, generated from `wit/`.
    wasmtime::component::bindgen!({
        world: "transformer",
        path: "../wit",
    });
}

use bindings::weir::transform::types::{Level, Output};
use bindings::{Transformer, TransformerPre};

/// What plugins may use, for every instance the runtime creates.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Most linear memory one instance may grow to, in bytes.
    pub memory_limit: u64,
    /// Most bytes of Arrow IPC one call may return.
    pub max_output_bytes: usize,
    /// Most log lines one step may write (stdout, stderr and `host.log`).
    pub max_log_lines: usize,
    /// Longest log line kept, in bytes; longer lines are cut.
    pub max_log_line: usize,
    /// How often the epoch ticks: a cancel or deadline interrupts a guest
    /// within about this long.
    pub tick: Duration,
    /// Where compiled components are cached across processes; `None` keeps
    /// them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Most compiled components kept in memory; the least recently used
    /// one is dropped beyond it (and found again in the disk cache).
    pub max_compiled: usize,
    /// A plugin that takes longer than this to be ready (compiling on its
    /// first use) is announced in the run's log.
    pub announce_compile_after: Duration,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            memory_limit: 256 * 1024 * 1024,
            max_output_bytes: 256 * 1024 * 1024,
            max_log_lines: 1000,
            max_log_line: 2048,
            tick: Duration::from_millis(5),
            cache_dir: None,
            max_compiled: 64,
            announce_compile_after: Duration::from_secs(1),
        }
    }
}

/// The runtime shared by every run of a process: one wasmtime engine, one
/// linker, compiled plugins by content hash.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<Guest>,
    compiled: Mutex<Compiled>,
    settings: PluginSettings,
    _ticker: Ticker,
}

/// Compiled components by content hash, least recently used first. Running
/// instances hold their component, so dropping one here never stops a run.
#[derive(Default)]
struct Compiled {
    by_sha256: HashMap<String, Arc<Plugin>>,
    recency: VecDeque<String>,
}

impl Compiled {
    fn get(&mut self, sha256: &str) -> Option<Arc<Plugin>> {
        let plugin = self.by_sha256.get(sha256)?.clone();
        self.touch(sha256);
        Some(plugin)
    }

    fn insert(&mut self, plugin: Arc<Plugin>, most: usize) {
        let sha256 = plugin.sha256.clone();
        self.by_sha256.insert(sha256.clone(), plugin);
        self.touch(&sha256);
        while self.recency.len() > most.max(1) {
            if let Some(oldest) = self.recency.pop_front() {
                self.by_sha256.remove(&oldest);
            }
        }
    }

    fn touch(&mut self, sha256: &str) {
        self.recency.retain(|s| s != sha256);
        self.recency.push_back(sha256.to_string());
    }
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Increments the engine's epoch on its own thread until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: &Engine, tick: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::io("starting the plugin epoch ticker", e))?;
        Ok(Self { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginRuntime {
    /// A runtime with `settings`; starts the epoch ticker.
    pub fn new(settings: PluginSettings) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        if let Some(dir) = &settings.cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            // The disk cache only saves time; without it plugins compile
            // once per process.
            match wasmtime::Cache::new(cache) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "no plugin cache on disk"),
            }
        }
        let engine = Engine::new(&config).map_err(|e| Error::Internal(format!("the Wasm engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::Internal(format!("linking WASI: {e:#}")))?;
        Transformer::add_to_linker::<_, HasSelf<_>>(&mut linker, |guest| guest)
            .map_err(|e| Error::Internal(format!("linking the host interface: {e:#}")))?;
        forbid_waiting(&mut linker).map_err(|e| Error::Internal(format!("linking the clock: {e:#}")))?;
        let ticker = Ticker::start(&engine, settings.tick)?;
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(Compiled::default()),
            settings,
            _ticker: ticker,
        })
    }

    /// The settings instances get.
    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// Compiles `wasm` (or finds it compiled) and checks that it implements
    /// the `transformer` world. `label` names the plugin in errors.
    /// Compiling is CPU-heavy: call this from a blocking thread.
    pub fn load(&self, label: &str, wasm: &[u8]) -> Result<Arc<Plugin>> {
        self.load_logged(label, wasm, &crate::runlog::Discard)
    }

    /// [`PluginRuntime::load`], telling `log` when compiling takes long (a
    /// plugin's first use on a machine takes seconds; the build is cached
    /// after), so a person watching knows the run is not stuck.
    pub fn load_logged(&self, label: &str, wasm: &[u8], log: &dyn RunLog) -> Result<Arc<Plugin>> {
        let sha256 = hex::encode(Sha256::digest(wasm));
        if let Some(plugin) = lock(&self.compiled).get(&sha256) {
            return Ok(plugin);
        }
        let refused = |message: String| Error::Plugin {
            failure: PluginFailure::Protocol,
            plugin: label.to_string(),
            step: None,
            message,
        };
        let started = Instant::now();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let component = std::thread::scope(|scope| {
            scope.spawn(move || {
                if finished.recv_timeout(self.settings.announce_compile_after).is_err() {
                    log.line(
                        LogLevel::Info,
                        &format!("compiling plugin {label} for this machine; its first use takes a while, later runs use the cached build"),
                    );
                }
            });
            let component = Component::new(&self.engine, wasm);
            let _ = done.send(());
            component
        })
        .map_err(|e| refused(not_a_component(wasm, &e)))?;
        if started.elapsed() >= self.settings.announce_compile_after {
            log.line(
                LogLevel::Info,
                &format!("plugin {label} ready in {:.1} s", started.elapsed().as_secs_f64()),
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| refused(format!("imports what Weir does not provide ({})", one_line(&e))))?;
        let pre = TransformerPre::new(pre).map_err(|e| {
            refused(format!(
                "does not implement weir:transform/transform@0.1.0 ({})",
                one_line(&e)
            ))
        })?;
        let plugin = Arc::new(Plugin { sha256, pre });
        lock(&self.compiled).insert(plugin.clone(), self.settings.max_compiled);
        Ok(plugin)
    }

    /// A fresh instance of `plugin` for one step of one run. The guest is
    /// interrupted when `cancel` fires or `deadline` passes.
    pub fn instantiate(&self, plugin: &Plugin, step: StepInfo) -> Result<StepInstance> {
        let log = Arc::new(StepLog::new(&step, &self.settings));
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput {
                log: log.clone(),
                stream: Stream::Stdout,
            })
            .stderr(GuestOutput {
                log: log.clone(),
                stream: Stream::Stderr,
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let guest = Guest {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: self.settings.memory_limit,
                used: 0,
                exceeded: false,
            },
            log: log.clone(),
        };
        let mut store = Store::new(&self.engine, guest);
        store.limiter(|g| &mut g.limiter);
        let cancel = step.cancel.clone();
        let deadline = step.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if cancel.is_cancelled() {
                return Err(Interrupt::Canceled.into());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Interrupt::Deadline.into());
            }
            Ok(UpdateDeadline::Continue(1))
        });
        let mut instance = StepInstance {
            store,
            bindings: None,
            // The reference the step used: the same bytes may be published
            // under other names elsewhere.
            plugin: step.plugin.clone(),
            step: step.name.clone(),
            output_schema: None,
            max_output_bytes: self.settings.max_output_bytes,
            max_message: self.settings.max_log_line,
            memory_limit: self.settings.memory_limit,
            log,
            broken: false,
        };
        match plugin.pre.instantiate(&mut instance.store) {
            Ok(bindings) => instance.bindings = Some(Arc::new(bindings)),
            Err(e) => return Err(instance.trapped(e)),
        }
        Ok(instance)
    }
}

/// A guest may not wait on a clock. A wait happens inside the host, where
/// epoch interruption cannot reach, so a plugin sleeping for an hour would
/// hold its thread past any cancel or deadline. With no files, sockets or
/// stdin, clock subscriptions are the only things a guest could wait on;
/// they trap instead (reading the clock stays allowed).
fn forbid_waiting(linker: &mut Linker<Guest>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap(
        "subscribe-duration",
        |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> { Err(NoWaiting.into()) },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> { Err(NoWaiting.into()) },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A guest tried to sleep or wait on a clock.
#[derive(Debug, thiserror::Error)]
#[error("plugins may not sleep or wait on a clock")]
struct NoWaiting;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A compiled plugin, ready to instantiate.
pub struct Plugin {
    sha256: String,
    pre: TransformerPre<Guest>,
}

impl Plugin {
    /// The sha256 of the component, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Who an instance works for: the step's name for logs and errors, where its
/// log lines go, and what interrupts it.
#[derive(Clone)]
pub struct StepInfo {
    /// The step, e.g. `transforms[0] on contacts`.
    pub name: String,
    /// The plugin reference, e.g. `phone-normalize@0.1.0`.
    pub plugin: String,
    /// The execution log.
    pub log: Arc<dyn RunLog>,
    /// Interrupts the guest when fired.
    pub cancel: CancellationToken,
    /// Interrupts the guest when passed.
    pub deadline: Option<Instant>,
}

/// Why the host interrupted a guest.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum Interrupt {
    #[error("the run was canceled")]
    Canceled,
    #[error("the run passed its deadline")]
    Deadline,
}

/// A memory growth past the instance's limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
struct MemoryExceeded;

/// Limits what one instance may allocate: the sum of all its linear
/// memories (a component may hold several core modules, each with its own),
/// a few core instances, memories and tables, and table sizes.
struct MemoryLimiter {
    limit: u64,
    /// Bytes of linear memory the instance holds now, over all memories.
    used: u64,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grown = self.used + (desired as u64).saturating_sub(current as u64);
        if grown > self.limit {
            // A trap rather than a failed grow: a guest's allocator would
            // abort anyway, and the trap says why.
            self.exceeded = true;
            return Err(MemoryExceeded.into());
        }
        self.used = grown;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

/// The store's data: WASI state without capabilities, limits and the log.
struct Guest {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    log: Arc<StepLog>,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::weir::transform::types::Host for Guest {}

impl bindings::weir::transform::host::Host for Guest {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace | Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.log.line(level, Source::Host, &message);
    }
}

/// One output batch of a step and the input rows it refused.
#[derive(Debug)]
pub struct Processed {
    /// The rows the step emits, of its output schema.
    pub batch: RecordBatch,
    /// Refused input rows (index in the input batch) with the reason.
    pub rejected: Vec<(usize, String)>,
}

/// An instance serving one step of one run.
pub struct StepInstance {
    store: Store<Guest>,
    bindings: Option<Arc<Transformer>>,
    plugin: String,
    step: String,
    output_schema: Option<SchemaRef>,
    max_output_bytes: usize,
    /// Longest refusal message kept.
    max_message: usize,
    memory_limit: u64,
    log: Arc<StepLog>,
    /// Set once a call trapped or was interrupted: the instance's state is
    /// unknown and it is never entered again.
    broken: bool,
}

impl StepInstance {
    /// Calls `init` with the step's config and input schema; returns the
    /// step's output schema.
    pub fn init(&mut self, config: &serde_json::Value, input: &Schema) -> Result<SchemaRef> {
        // A step without `config` gets an empty table, not `null`.
        let config = if config.is_null() {
            "{}".to_string()
        } else {
            config.to_string()
        };
        let schema = ipc_schema(input)?;
        let bindings = self.usable()?;
        let result = bindings
            .weir_transform_transform()
            .call_init(&mut self.store, &config, &schema);
        let bytes = self.settle(result)?;
        let schema = self.decode(&bytes)?.0;
        self.output_schema = Some(schema.clone());
        Ok(schema)
    }

    /// Calls `process` on one batch.
    pub fn process(&mut self, batch: &RecordBatch) -> Result<Processed> {
        let bytes = ipc_batch(batch)?;
        let bindings = self.usable()?;
        let result = bindings
            .weir_transform_transform()
            .call_process(&mut self.store, &bytes);
        let output = self.settle(result)?;
        self.output(output, batch.num_rows())
    }

    /// Calls `finish`; a step may emit a last batch.
    pub fn finish(&mut self) -> Result<Option<Processed>> {
        let bindings = self.usable()?;
        let result = bindings.weir_transform_transform().call_finish(&mut self.store);
        let output = self.settle(result)?;
        self.log.close();
        if output.as_ref().is_some_and(|o| !o.rejected.is_empty()) {
            return Err(self.error(
                PluginFailure::Protocol,
                "refused rows in finish, where there is no input batch to refuse them from".into(),
            ));
        }
        output.map(|o| self.output(o, 0)).transpose()
    }

    /// The bindings, unless a call trapped before: a broken instance is
    /// never entered again.
    fn usable(&self) -> Result<Arc<Transformer>> {
        match (&self.bindings, self.broken) {
            (Some(b), false) => Ok(b.clone()),
            _ => Err(self.error(
                PluginFailure::Trap,
                "the plugin failed earlier and is not called again".into(),
            )),
        }
    }

    fn error(&self, failure: PluginFailure, message: String) -> Error {
        Error::Plugin {
            failure,
            plugin: self.plugin.clone(),
            step: Some(self.step.clone()),
            message,
        }
    }

    /// The value of a call, or the error its trap or guest error maps to.
    fn settle<T>(
        &mut self,
        result: wasmtime::Result<std::result::Result<T, bindings::exports::weir::transform::transform::Error>>,
    ) -> Result<T> {
        use bindings::exports::weir::transform::transform::Error as GuestError;
        match result {
            Err(e) => Err(self.trapped(e)),
            Ok(Err(GuestError::InvalidConfig(m))) => Err(self.error(PluginFailure::InvalidConfig, m)),
            Ok(Err(GuestError::Failed(m))) => Err(self.error(PluginFailure::Trap, m)),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// Maps a trap or host interrupt; the instance is not entered again.
    fn trapped(&mut self, error: wasmtime::Error) -> Error {
        self.broken = true;
        if let Some(interrupt) = error.downcast_ref::<Interrupt>() {
            return match interrupt {
                Interrupt::Canceled => Error::Canceled,
                Interrupt::Deadline => Error::LimitExceeded {
                    limit: Limit::MaxRuntime,
                    message: format!("plugin {} was interrupted at the run's deadline", self.plugin),
                },
            };
        }
        let what = if error.downcast_ref::<NoWaiting>().is_some() {
            "the plugin tried to sleep or wait on a clock, which plugins may not do".to_string()
        } else if self.store.data().limiter.exceeded || error.downcast_ref::<MemoryExceeded>().is_some() {
            format!(
                "the plugin tried to use more than its memory limit of {}",
                bytesize::ByteSize::b(self.memory_limit).display().iec()
            )
        } else if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            match trap {
                wasmtime::Trap::StackOverflow => "the plugin overflowed its stack (too deep recursion)".to_string(),
                wasmtime::Trap::UnreachableCodeReached => "the plugin aborted (a panic or an explicit trap)".to_string(),
                wasmtime::Trap::MemoryOutOfBounds => {
                    "the plugin trapped: out of bounds memory access (a bug in the plugin, or its stack overflowing from too deep recursion)".to_string()
                }
                other => format!("the plugin trapped: {other}"),
            }
        } else {
            format!("the plugin trapped: {}", one_line(&error))
        };
        let message = match self.log.last_words() {
            Some(words) => format!("{what}; it said: {words}"),
            None => what,
        };
        self.error(PluginFailure::Trap, message)
    }

    fn decode(&self, bytes: &[u8]) -> Result<(SchemaRef, Option<RecordBatch>)> {
        let bad = |e: String| self.error(PluginFailure::Protocol, format!("returned malformed Arrow IPC: {e}"));
        uncompressed(bytes).map_err(bad)?;
        let mut reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| bad(e.to_string()))?;
        let schema = reader.schema();
        let batch = reader.next().transpose().map_err(|e| bad(e.to_string()))?;
        if reader.next().is_some() {
            return Err(bad("more than one batch in one output".into()));
        }
        Ok((schema, batch))
    }

    /// Checks a call's output against the contract.
    fn output(&self, output: Output, input_rows: usize) -> Result<Processed> {
        if output.batch.len() > self.max_output_bytes {
            return Err(self.error(
                PluginFailure::Protocol,
                format!(
                    "returned {} of Arrow IPC in one call, more than the limit of {}",
                    bytesize::ByteSize::b(output.batch.len() as u64).display().iec(),
                    bytesize::ByteSize::b(self.max_output_bytes as u64).display().iec()
                ),
            ));
        }
        let (schema, batch) = self.decode(&output.batch)?;
        let expected = self
            .output_schema
            .clone()
            .ok_or_else(|| self.error(PluginFailure::Protocol, "was called before init".into()))?;
        // Names and types must be the declared ones; nullability is
        // checked against the values when the batch is rebuilt below.
        let shape = |s: &Schema| -> Vec<(String, datafusion::arrow::datatypes::DataType)> {
            s.fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
        if shape(&schema) != shape(&expected) {
            return Err(self.error(
                PluginFailure::Protocol,
                format!(
                    "returned a batch of schema ({}) but init declared ({})",
                    describe(&schema),
                    describe(&expected)
                ),
            ));
        }
        let batch = match batch {
            Some(b) => RecordBatch::try_new(expected.clone(), b.columns().to_vec()).map_err(|e| {
                self.error(
                    PluginFailure::Protocol,
                    format!("returned a batch that does not fit its schema: {e}"),
                )
            })?,
            None => RecordBatch::new_empty(expected),
        };
        let mut rejected = Vec::with_capacity(output.rejected.len());
        let mut seen = vec![false; input_rows];
        for r in output.rejected {
            let row = r.row as usize;
            match seen.get_mut(row) {
                None => {
                    return Err(self.error(
                        PluginFailure::Protocol,
                        format!("rejected row {row}, but the batch it was given has {input_rows} rows"),
                    ));
                }
                Some(true) => {
                    return Err(self.error(PluginFailure::Protocol, format!("rejected row {row} twice")));
                }
                Some(seen) => *seen = true,
            }
            let message = cut(&r.message, self.max_message).to_string();
            rejected.push((row, message));
        }
        Ok(Processed { batch, rejected })
    }
}

impl Drop for StepInstance {
    fn drop(&mut self) {
        self.log.close();
    }
}

/// Refuses compressed IPC buffers: their declared uncompressed length is
/// the guest's word, and decoding would allocate it up front.
fn uncompressed(bytes: &[u8]) -> std::result::Result<(), String> {
    let word = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let (mut len_at, mut len) = (at, word(at));
        if len == Some(0xFFFF_FFFF) {
            len_at = at + 4;
            len = word(len_at);
        }
        let Some(len) = len.map(|l| l as usize) else { break };
        if len == 0 {
            break;
        }
        let start = len_at + 4;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or("a message runs past the end")?;
        let message = datafusion::arrow::ipc::root_as_message(&bytes[start..end]).map_err(|e| e.to_string())?;
        if message
            .header_as_record_batch()
            .is_some_and(|b| b.compression().is_some())
        {
            return Err("compressed buffers are not accepted".into());
        }
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a negative body length")?;
        at = end.checked_add(body).ok_or("a body length out of range")?;
    }
    Ok(())
}

fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ipc_schema(schema: &Schema) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema).map_err(|e| Error::Internal(e.to_string()))?;
    writer.finish().map_err(|e| Error::Internal(e.to_string()))?;
    writer.into_inner().map_err(|e| Error::Internal(e.to_string()))
}

fn ipc_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(
        Vec::with_capacity(batch.get_array_memory_size() + 1024),
        &batch.schema(),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    writer.write(batch).map_err(|e| Error::Internal(e.to_string()))?;
    writer.finish().map_err(|e| Error::Internal(e.to_string()))?;
    writer.into_inner().map_err(|e| Error::Internal(e.to_string()))
}

/// Where a guest line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Stdout,
    Stderr,
    Host,
}

/// A step's log: lines tagged with the step and plugin, capped, and the
/// guest's last words kept for a trap's message.
struct StepLog {
    tag: String,
    sink: Arc<dyn RunLog>,
    max_lines: usize,
    max_line: usize,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    written: usize,
    dropped: u64,
    partial: [Vec<u8>; 2],
    last_words: VecDeque<String>,
    closed: bool,
}

impl StepLog {
    fn new(step: &StepInfo, settings: &PluginSettings) -> Self {
        Self {
            tag: format!("[{} {}]", step.name, step.plugin),
            sink: step.log.clone(),
            max_lines: settings.max_log_lines,
            max_line: settings.max_log_line,
            state: Mutex::new(LogState::default()),
        }
    }

    fn line(&self, level: LogLevel, source: Source, message: &str) {
        let mut state = lock(&self.state);
        self.write(&mut state, level, source, message);
    }

    fn write(&self, state: &mut LogState, level: LogLevel, source: Source, message: &str) {
        let message = cut(message.trim_end(), self.max_line);
        if source == Source::Stderr || level == LogLevel::Error {
            if state.last_words.len() == 3 {
                state.last_words.pop_front();
            }
            state.last_words.push_back(message.to_string());
        }
        if state.written >= self.max_lines {
            state.dropped += 1;
            return;
        }
        state.written += 1;
        let stream = match source {
            Source::Stdout => " stdout:",
            Source::Stderr => " stderr:",
            Source::Host => "",
        };
        self.sink.line(level, &format!("{}{stream} {message}", self.tag));
    }

    /// Stdout/stderr bytes, split into lines.
    fn bytes(&self, source: Source, bytes: &[u8]) {
        let mut state = lock(&self.state);
        let slot = usize::from(source == Source::Stderr);
        let level = if source == Source::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut state.partial[slot]);
            line.extend_from_slice(&rest[..end]);
            self.write(&mut state, level, source, &String::from_utf8_lossy(&line));
            rest = &rest[end + 1..];
        }
        let partial = &mut state.partial[slot];
        let room = (self.max_line + 1).saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// Flushes partial lines and says how many lines were dropped; once.
    fn close(&self) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        state.closed = true;
        for (slot, source) in [(0, Source::Stdout), (1, Source::Stderr)] {
            let line = std::mem::take(&mut state.partial[slot]);
            if !line.is_empty() {
                let level = if source == Source::Stderr {
                    LogLevel::Warn
                } else {
                    LogLevel::Info
                };
                self.write(&mut state, level, source, &String::from_utf8_lossy(&line));
            }
        }
        if state.dropped > 0 {
            self.sink.line(
                LogLevel::Warn,
                &format!(
                    "{} {} more lines of plugin output were dropped (limit: {} lines per step)",
                    self.tag, state.dropped, self.max_lines
                ),
            );
        }
    }

    /// The guest's last stderr or error lines, for a trap's message.
    fn last_words(&self) -> Option<String> {
        let mut state = lock(&self.state);
        let partial = std::mem::take(&mut state.partial[1]);
        if !partial.is_empty() {
            let line = String::from_utf8_lossy(&partial).trim_end().to_string();
            state.last_words.push_back(line);
        }
        let words: Vec<&str> = state
            .last_words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty() && !w.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        (!words.is_empty()).then(|| words.join(" | "))
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: every byte accepted, lines into the step log.
#[derive(Clone)]
struct GuestOutput {
    log: Arc<StepLog>,
    stream: Stream,
}

impl GuestOutput {
    fn take(&self, bytes: &[u8]) {
        let source = match self.stream {
            Stream::Stdout => Source::Stdout,
            Stream::Stderr => Source::Stderr,
        };
        self.log.bytes(source, bytes);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> std::result::Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> std::result::Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Why `wasm` is not a component Weir can run, plainly first: what the
/// file is by its first bytes, then the compiler's detail.
fn not_a_component(wasm: &[u8], error: &wasmtime::Error) -> String {
    const CORE_MODULE: [u8; 8] = *b"\0asm\x01\0\0\0";
    if !wasm.starts_with(b"\0asm") {
        "not a WebAssembly component: the file is not WebAssembly at all (it does not begin with the `\\0asm` header)"
            .to_string()
    } else if wasm.starts_with(&CORE_MODULE) {
        "not a WebAssembly component: the file is a core WebAssembly module; build the plugin for the \
         `wasm32-wasip2` target (`cargo build --target wasm32-wasip2`), which makes a component"
            .to_string()
    } else {
        format!(
            "not a WebAssembly component: the file is damaged or of a kind Weir cannot read ({})",
            one_line(error)
        )
    }
}

/// An error of the Wasm engine in one line: its chain without the guest's
/// backtrace, byte dumps folded into single spaces.
fn one_line(error: &wasmtime::Error) -> String {
    let parts: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|cause| !cause.starts_with("error while executing at wasm backtrace"))
        .map(|cause| cause.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines(Mutex<Vec<String>>);

    impl RunLog for Lines {
        fn line(&self, _level: LogLevel, message: &str) {
            lock(&self.0).push(message.to_string());
        }
    }

    fn log(max_lines: usize) -> (Arc<Lines>, StepLog) {
        let lines = Arc::new(Lines(Mutex::new(Vec::new())));
        let step = StepInfo {
            name: "transforms[0] on people".into(),
            plugin: "p@1".into(),
            log: lines.clone(),
            cancel: CancellationToken::new(),
            deadline: None,
        };
        let settings = PluginSettings {
            max_log_lines: max_lines,
            max_log_line: 10,
            ..PluginSettings::default()
        };
        (lines.clone(), StepLog::new(&step, &settings))
    }

    #[test]
    fn compressed_ipc_is_refused_before_it_is_decoded() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field};
        use datafusion::arrow::ipc::CompressionType;
        use datafusion::arrow::ipc::writer::IpcWriteOptions;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
            .unwrap_or_else(|e| panic!("{e}"));
        let encode = |options: IpcWriteOptions| {
            let mut w =
                StreamWriter::try_new_with_options(Vec::new(), &schema, options).unwrap_or_else(|e| panic!("{e}"));
            w.write(&batch).unwrap_or_else(|e| panic!("{e}"));
            w.finish().unwrap_or_else(|e| panic!("{e}"));
            w.into_inner().unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(uncompressed(&encode(IpcWriteOptions::default())), Ok(()));
        let lz4 = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            uncompressed(&encode(lz4)),
            Err("compressed buffers are not accepted".to_string())
        );
        assert!(uncompressed(b"\xff\xff\xff\xff\x10\0\0\0short").is_err());
    }

    #[test]
    fn guest_output_is_split_into_tagged_capped_lines() {
        let (lines, log) = log(3);
        log.bytes(Source::Stdout, b"one\ntw");
        log.bytes(Source::Stdout, b"o\nthree is far too long\nfour\nfive\n");
        log.close();
        let lines = lock(&lines.0).clone();
        assert_eq!(
            lines,
            vec![
                "[transforms[0] on people p@1] stdout: one",
                "[transforms[0] on people p@1] stdout: two",
                "[transforms[0] on people p@1] stdout: three is f",
                "[transforms[0] on people p@1] 2 more lines of plugin output were dropped (limit: 3 lines per step)",
            ]
        );
    }

    #[test]
    fn last_words_are_the_latest_stderr_and_error_lines() {
        let (_, log) = log(100);
        log.bytes(Source::Stdout, b"chatter\n");
        log.line(LogLevel::Error, Source::Host, "boom");
        log.bytes(Source::Stderr, b"partial");
        assert_eq!(log.last_words().as_deref(), Some("boom | partial"));
    }
}
