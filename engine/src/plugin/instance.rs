//! One step's instance of a component: the guest's host side, `init` and
//! `process` calls, and what a trap or an interrupt becomes.

use super::*;

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

/// The store's data: WASI state without capabilities, limits and the log.
pub(super) struct Guest {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) log: Arc<StepLog>,
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
    pub(super) store: Store<Guest>,
    pub(super) bindings: Option<Arc<Transformer>>,
    pub(super) plugin: String,
    pub(super) step: String,
    pub(super) output_schema: Option<SchemaRef>,
    pub(super) max_output_bytes: usize,
    /// Longest refusal message kept.
    pub(super) max_message: usize,
    pub(super) memory_limit: u64,
    pub(super) log: Arc<StepLog>,
    /// Set once a call trapped or was interrupted: the instance's state is
    /// unknown and it is never entered again.
    pub(super) broken: bool,
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

    pub(super) fn error(&self, failure: PluginFailure, message: String) -> Error {
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
    pub(super) fn trapped(&mut self, error: wasmtime::Error) -> Error {
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
    pub(super) fn output(&self, output: Output, input_rows: usize) -> Result<Processed> {
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
