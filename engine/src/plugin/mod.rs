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

mod codec;
mod instance;
mod limits;
mod log;

use codec::*;
use instance::*;
pub use instance::{Processed, StepInfo, StepInstance};
pub use limits::PluginSettings;
use limits::*;
use log::*;

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
