//! The transform stage (SPEC §3.4, §5): each `[[transforms]]` step of a
//! scope runs, in order, on every batch of the scope's stream.
//!
//! This module owns finding a step's plugin ([`PluginSource`]), opening a
//! scope's chain of steps (compile, instantiate, `init` with the schema the
//! step before it declared), moving batches through the chain, `finish` at
//! the end of the stream, the step's `on_error` policy, refused rows into
//! the report and the per-step counts. Guest calls run on a blocking thread,
//! never on an async worker. It does not touch wasmtime itself
//! ([`crate::plugin`] does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::connector::{Connector, OnError, PluginRef};
use crate::error::{Error, PluginFailure, Problem, Result, Stage};
use crate::execution::TransformCount;
use crate::intake::RejectSink;
use crate::plugin::{PluginRuntime, StepInfo, StepInstance};
use crate::report::{RejectedRow, RowValues};
use crate::runlog::RunLog;

/// Finds the component a step's `plugin` names.
pub trait PluginSource: Send + Sync {
    /// The component's bytes, or why there are none (for a person).
    fn fetch(&self, plugin: &PluginRef) -> std::result::Result<Vec<u8>, String>;
}

/// The `plugins/` directory of a package: `name@version` is the file
/// `<name>-<version>.wasm` (or `<name>@<version>.wasm`), `sha256:<hex>` any
/// `.wasm` file with that content.
#[derive(Debug, Clone)]
pub struct PluginDir {
    dir: PathBuf,
}

impl PluginDir {
    /// Plugins in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn wasm_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        files.sort();
        files
    }
}

impl PluginSource for PluginDir {
    fn fetch(&self, plugin: &PluginRef) -> std::result::Result<Vec<u8>, String> {
        let shown = |p: &Path| {
            format!(
                "plugins/{}",
                p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            )
        };
        match plugin {
            PluginRef::Named { name, version } => {
                // SPEC §7 names the file `<name>-<version>.wasm`; the
                // reference's own spelling is accepted too.
                let path = self.dir.join(format!("{name}-{version}.wasm"));
                let alternative = self.dir.join(format!("{name}@{version}.wasm"));
                let found = if !path.exists() && alternative.exists() {
                    &alternative
                } else {
                    &path
                };
                std::fs::read(found).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => format!("no plugin file {} in the package", shown(&path)),
                    _ => format!("reading {}: {e}", shown(found)),
                })
            }
            PluginRef::Sha256(hex) => {
                for path in self.wasm_files() {
                    let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", shown(&path)))?;
                    if hex::encode(Sha256::digest(&bytes)) == *hex {
                        return Ok(bytes);
                    }
                }
                Err(format!("no .wasm file in the package's plugins/ has sha256 {hex}"))
            }
        }
    }
}

/// What a run needs to run transforms: the runtime and where plugins are.
#[derive(Clone)]
pub struct Plugins {
    /// The process's plugin runtime.
    pub runtime: Arc<PluginRuntime>,
    /// Where the run's plugins come from.
    pub source: Arc<dyn PluginSource>,
}

/// What a chain reports to and what interrupts it.
#[derive(Clone)]
pub struct StageContext {
    /// Fires on cancel.
    pub cancel: CancellationToken,
    /// The run's deadline.
    pub deadline: Option<Instant>,
    /// The execution log.
    pub log: Arc<dyn RunLog>,
    /// Refused rows go here.
    pub rejects: Arc<dyn RejectSink>,
}

/// One step of a chain.
struct Step {
    /// Index of the step in the connector's `[[transforms]]`.
    index: usize,
    /// The step's name in logs and errors: `transforms[<i>] on <scope>`.
    name: String,
    plugin: String,
    on_error: OnError,
    /// `None` once a call failed: the instance is never entered again.
    instance: Option<StepInstance>,
    count: TransformCount,
}

/// The steps of one scope, in order, opened and initialised.
pub struct Chain {
    scope: String,
    steps: Vec<Step>,
}

impl Chain {
    /// Opens the steps of `scope` in the connector's order; `None` when the
    /// scope has none. Returns the chain and the schema the last step
    /// declared.
    pub async fn open(
        plugins: &Plugins,
        connector: &Connector,
        scope: &str,
        input: SchemaRef,
        ctx: &StageContext,
    ) -> Result<Option<(Chain, SchemaRef)>> {
        let defs: Vec<(usize, crate::connector::TransformDef)> = connector
            .transforms
            .iter()
            .enumerate()
            .filter(|(_, t)| t.scope == scope)
            .map(|(i, t)| (i, t.clone()))
            .collect();
        if defs.is_empty() {
            return Ok(None);
        }
        let plugins = plugins.clone();
        let ctx = ctx.clone();
        let scope = scope.to_string();
        blocking(move || {
            let mut schema = input;
            let mut steps = Vec::with_capacity(defs.len());
            for (i, def) in defs {
                let reference = def.plugin.get().ok_or_else(|| {
                    let why = def.plugin.problem().unwrap_or_default().to_string();
                    Error::InvalidConnector(vec![Problem::new(format!("transforms[{i}].plugin"), why)])
                })?;
                let wasm = plugins
                    .source
                    .fetch(reference)
                    .map_err(|m| Error::InvalidConnector(vec![Problem::new(format!("transforms[{i}].plugin"), m)]))?;
                let name = format!("transforms[{i}] on {scope}");
                let plugin = plugins
                    .runtime
                    .load_logged(def.plugin.text(), &wasm, ctx.log.as_ref())
                    .map_err(|e| e.in_step(&name))?;
                let started = Instant::now();
                let mut instance = plugins.runtime.instantiate(
                    &plugin,
                    StepInfo {
                        name: name.clone(),
                        plugin: def.plugin.to_string(),
                        log: ctx.log.clone(),
                        cancel: ctx.cancel.clone(),
                        deadline: ctx.deadline,
                    },
                )?;
                schema = instance.init(&def.config, &schema)?;
                tracing::debug!(step = %name, plugin = %def.plugin, elapsed = ?started.elapsed(), "transform step ready");
                steps.push(Step {
                    index: i,
                    name,
                    plugin: def.plugin.to_string(),
                    on_error: def.on_error,
                    instance: Some(instance),
                    count: TransformCount {
                        scope: scope.clone(),
                        plugin: def.plugin.to_string(),
                        ..TransformCount::default()
                    },
                });
            }
            Ok(Some((Chain { scope, steps }, schema)))
        })
        .await
    }

    /// The counts of every step, with the step's index in the connector.
    pub fn counts(&self) -> Vec<(usize, TransformCount)> {
        self.steps.iter().map(|s| (s.index, s.count.clone())).collect()
    }

    /// Moves one batch through every step; returns what the last step
    /// emitted.
    pub async fn process(&mut self, batch: RecordBatch, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let mut steps = std::mem::take(&mut self.steps);
        let scope = self.scope.clone();
        let rejects = ctx.rejects.clone();
        let (steps, out) = blocking(move || {
            let out = through(&mut steps, 0, batch, &scope, rejects.as_ref());
            Ok((steps, out))
        })
        .await?;
        self.steps = steps;
        out
    }

    /// Calls every step's `finish` in order; what a step emits there goes
    /// through the steps after it before they finish.
    pub async fn finish(&mut self, ctx: &StageContext) -> Result<Vec<RecordBatch>> {
        let mut steps = std::mem::take(&mut self.steps);
        let scope = self.scope.clone();
        let rejects = ctx.rejects.clone();
        let (steps, out) = blocking(move || {
            let mut out = Vec::new();
            let result = (0..steps.len()).try_for_each(|i| {
                let last = call(&mut steps[i], StepInstance::finish)?;
                if let Some(processed) = last {
                    steps[i].count.rows_out += processed.batch.num_rows() as u64;
                    if !processed.rejected.is_empty() {
                        return Err(Error::Plugin {
                            failure: PluginFailure::Protocol,
                            plugin: steps[i].plugin.clone(),
                            step: Some(steps[i].name.clone()),
                            message: "rejected rows in finish, where it has no input batch".into(),
                        });
                    }
                    out.extend(through(&mut steps, i + 1, processed.batch, &scope, rejects.as_ref())?);
                }
                Ok(())
            });
            Ok((steps, result.map(|()| out)))
        })
        .await?;
        self.steps = steps;
        out
    }
}

/// Calls `f` on a step's instance. After a failed call the instance is
/// dropped, so it is never entered again.
fn call<T>(step: &mut Step, f: impl FnOnce(&mut StepInstance) -> Result<T>) -> Result<T> {
    let instance = step.instance.as_mut().ok_or_else(|| Error::Plugin {
        failure: PluginFailure::Trap,
        plugin: step.plugin.clone(),
        step: Some(step.name.clone()),
        message: "the plugin failed earlier and is not called again".into(),
    })?;
    let result = f(instance);
    if result.is_err() {
        step.instance = None;
    }
    result
}

/// Moves `batch` through `steps[from..]`.
fn through(
    steps: &mut [Step],
    from: usize,
    batch: RecordBatch,
    scope: &str,
    rejects: &dyn RejectSink,
) -> Result<Vec<RecordBatch>> {
    let mut batches = vec![batch];
    for step in steps.iter_mut().skip(from) {
        let mut next = Vec::with_capacity(batches.len());
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let processed = call(step, |i| i.process(&batch))?;
            let first_row = step.count.rows_in;
            step.count.rows_in += batch.num_rows() as u64;
            step.count.rows_out += processed.batch.num_rows() as u64;
            step.count.rejected += processed.rejected.len() as u64;
            if !processed.rejected.is_empty() {
                refuse(step, scope, &batch, first_row, processed.rejected, rejects)?;
            }
            next.push(processed.batch);
        }
        batches = next;
    }
    Ok(batches)
}

/// Refused rows go to the report, or fail the run under `fail_run`.
fn refuse(
    step: &Step,
    scope: &str,
    batch: &RecordBatch,
    first_row: u64,
    rejected: Vec<(usize, String)>,
    rejects: &dyn RejectSink,
) -> Result<()> {
    if step.on_error == OnError::FailRun
        && let Some((row, message)) = rejected.first()
    {
        return Err(Error::Plugin {
            failure: PluginFailure::Trap,
            plugin: step.plugin.clone(),
            step: Some(step.name.clone()),
            message: format!(
                "refused row {} ({message}) and the step has on_error = \"fail_run\"",
                first_row + *row as u64 + 1
            ),
        });
    }
    let values = RowValues::new(batch)?;
    for (row, message) in rejected {
        rejects.reject(RejectedRow {
            stage: Stage::Transform,
            source: scope.to_string(),
            row: first_row + row as u64 + 1,
            line: None,
            reasons: vec![format!("{} ({}): {message}", step.name, step.plugin)],
            values: values.row(row),
            failed: false,
        });
    }
    Ok(())
}

/// Runs `f` on a blocking thread. If the awaiting task is dropped (cancel,
/// deadline) the work goes on until the guest is interrupted, then its
/// instances are dropped there.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a transform call failed: {e}")))?
}
