//! Write a Weir transform step as a plain Rust type.
//!
//! A transform step is a WebAssembly component implementing the
//! `weir:transform` world (`wit/transform.wit`). This crate does the
//! component side for you: it decodes the Arrow IPC batches the host sends,
//! parses the step's `config` into your type with serde, maps your errors to
//! the contract's, routes panics and [`log`] lines to the execution log, and
//! exports the world. You write a type implementing [`Transform`]:
//!
//! ```ignore
//! use weir_plugin::{Output, Transform, Error, arrow_array::RecordBatch, arrow_schema::SchemaRef};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {}
//!
//! struct Identity(SchemaRef);
//!
//! impl Transform for Identity {
//!     type Config = Config;
//!     fn new(_config: Config, input: SchemaRef) -> Result<Self, Error> {
//!         Ok(Identity(input))
//!     }
//!     fn schema(&self) -> SchemaRef {
//!         self.0.clone()
//!     }
//!     fn process(&mut self, batch: RecordBatch) -> Result<Output, Error> {
//!         Ok(batch.into())
//!     }
//! }
//!
//! weir_plugin::export!(Identity);
//! ```
//!
//! and build it with `cargo build --release --target wasm32-wasip2` in a
//! `cdylib` crate; the `.wasm` file is the plugin.
//!
//! # Layout
//! - [`Transform`]: the trait a plugin implements.
//! - [`Output`], [`Rejected`], [`Error`]: what a call returns.
//! - [`log`]: lines into the execution log.
//! - [`export!`]: exports a [`Transform`] as the component's world.

use std::any::Any;
use std::cell::RefCell;
use std::io::Cursor;
use std::marker::PhantomData;
use std::sync::Arc;

pub use arrow_array;
pub use arrow_cast;
pub use arrow_ipc;
pub use arrow_schema;
pub use arrow_select;
pub use serde_json;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, Schema, SchemaRef};

#[doc(hidden)]
pub mod bindings {
    //! The generated component bindings; plugins use them through
    //! [`export!`](crate::export) only.
    wit_bindgen::generate!({
        world: "transformer",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "weir_plugin::bindings",
    });
}

use bindings::exports::weir::transform::transform as wit;
use bindings::weir::transform::host;
use bindings::weir::transform::types::Level;

/// A transform step: built once per execution from its config and input
/// schema, then called once per batch, then once at the end.
pub trait Transform: Sized + 'static {
    /// The step's `config` from `connector.toml`, parsed from JSON.
    type Config: serde::de::DeserializeOwned;

    /// Builds the step. Return [`Error::InvalidConfig`] when the config does
    /// not fit the input (a missing column, say).
    fn new(config: Self::Config, input: SchemaRef) -> Result<Self, Error>;

    /// The schema of every batch [`process`](Self::process) and
    /// [`finish`](Self::finish) return.
    fn schema(&self) -> SchemaRef;

    /// Transforms one batch. Row indexes in [`Output::rejected`] refer to
    /// `batch`.
    fn process(&mut self, batch: RecordBatch) -> Result<Output, Error>;

    /// Called after the last batch; may return a last batch (a step that
    /// aggregates emits here).
    fn finish(&mut self) -> Result<Option<Output>, Error> {
        Ok(None)
    }
}

/// What a call returns: a batch of the step's schema and the input rows the
/// step refused.
#[derive(Debug, Clone)]
pub struct Output {
    /// The output rows.
    pub batch: RecordBatch,
    /// Refused input rows with their reasons.
    pub rejected: Vec<Rejected>,
}

impl From<RecordBatch> for Output {
    fn from(batch: RecordBatch) -> Self {
        Self {
            batch,
            rejected: Vec::new(),
        }
    }
}

/// An input row the step refuses, and why (shown to the integrator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index of the row in the batch given to `process`.
    pub row: usize,
    /// Why, for a person.
    pub message: String,
}

impl Rejected {
    /// Row `row` refused for `message`.
    pub fn new(row: usize, message: impl Into<String>) -> Self {
        Self {
            row,
            message: message.into(),
        }
    }
}

/// Why a call failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The step's config is not acceptable; the run fails with
    /// `invalid_config`.
    InvalidConfig(String),
    /// The step cannot go on; the run fails.
    Failed(String),
}

impl Error {
    /// An [`Error::InvalidConfig`].
    pub fn config(message: impl Into<String>) -> Self {
        Error::InvalidConfig(message.into())
    }

    /// An [`Error::Failed`].
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        Error::Failed(e.to_string())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl From<Error> for wit::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => wit::Error::InvalidConfig(m),
            Error::Failed(m) => wit::Error::Failed(m),
        }
    }
}

/// Lines into the execution log, tagged by the host with the plugin and step.
pub mod log {
    use super::{Level, host};

    /// A debug line.
    pub fn debug(message: impl AsRef<str>) {
        host::log(Level::Debug, message.as_ref());
    }

    /// An info line.
    pub fn info(message: impl AsRef<str>) {
        host::log(Level::Info, message.as_ref());
    }

    /// A warning.
    pub fn warn(message: impl AsRef<str>) {
        host::log(Level::Warn, message.as_ref());
    }

    /// An error line.
    pub fn error(message: impl AsRef<str>) {
        host::log(Level::Error, message.as_ref());
    }
}

/// Exports a [`Transform`] as the component's `weir:transform` world.
/// Use it once, at the root of the plugin crate.
#[macro_export]
macro_rules! export {
    ($transform:ty) => {
        type __WeirPluginExport = $crate::Plugin<$transform>;
        $crate::bindings::export!(__WeirPluginExport with_types_in $crate::bindings);
    };
}

/// The adapter between the contract and a [`Transform`]; used by
/// [`export!`].
#[doc(hidden)]
pub struct Plugin<T>(PhantomData<T>);

thread_local! {
    /// The step built by `init`. A component instance serves one step of
    /// one execution, so one slot is enough.
    static STEP: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_step<T: Transform, R>(f: impl FnOnce(&mut T) -> Result<R, Error>) -> Result<R, Error> {
    STEP.with(|slot| {
        let mut slot = slot.borrow_mut();
        let step = slot
            .as_mut()
            .and_then(|s| s.downcast_mut::<T>())
            .ok_or_else(|| Error::failed("the step was called before init"))?;
        f(step)
    })
}

impl<T: Transform> wit::Guest for Plugin<T> {
    fn init(config: String, input_schema: Vec<u8>) -> Result<Vec<u8>, wit::Error> {
        std::panic::set_hook(Box::new(|info| {
            host::log(Level::Error, &format!("panicked: {info}"));
        }));
        let config: T::Config = serde_json::from_str(if config.trim().is_empty() { "{}" } else { &config })
            .map_err(|e| Error::config(e.to_string()))?;
        let (schema, _) = decode(&input_schema)?;
        let step = T::new(config, schema)?;
        let out = encode_schema(&step.schema())?;
        STEP.with(|slot| *slot.borrow_mut() = Some(Box::new(step)));
        Ok(out)
    }

    fn process(batch: Vec<u8>) -> Result<wit::Output, wit::Error> {
        let (schema, batch) = decode(&batch)?;
        let batch = match batch {
            Some(b) => b,
            None => RecordBatch::new_empty(schema),
        };
        let output = with_step::<T, _>(|step| step.process(batch))?;
        Ok(to_wit(output)?)
    }

    fn finish() -> Result<Option<wit::Output>, wit::Error> {
        let output = with_step::<T, _>(|step| step.finish())?;
        Ok(output.map(to_wit).transpose()?)
    }
}

fn to_wit(output: Output) -> Result<wit::Output, Error> {
    let rejected = output
        .rejected
        .into_iter()
        .map(|r| {
            Ok(bindings::weir::transform::types::RowError {
                row: u32::try_from(r.row).map_err(|_| Error::failed("row index out of range"))?,
                message: r.message,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(wit::Output {
        batch: encode(&output.batch)?,
        rejected,
    })
}

/// Reads an IPC stream: its schema and its first batch, if any.
fn decode(bytes: &[u8]) -> Result<(SchemaRef, Option<RecordBatch>), Error> {
    let mut reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| Error::failed(format!("the host sent unreadable Arrow IPC: {e}")))?;
    let schema = reader.schema();
    let batch = reader
        .next()
        .transpose()
        .map_err(|e| Error::failed(format!("the host sent unreadable Arrow IPC: {e}")))?;
    Ok((schema, batch))
}

fn encode_schema(schema: &Schema) -> Result<Vec<u8>, Error> {
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>, Error> {
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The index of column `name` in `schema`, or an [`Error::InvalidConfig`]
/// naming the columns there are.
pub fn column_index(schema: &Schema, name: &str) -> Result<usize, Error> {
    schema.index_of(name).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Error::config(format!(
            "no column `{name}` in the input (columns: {})",
            names.join(", ")
        ))
    })
}

/// A column as text (any type cast to `Utf8`; nulls stay null), the form
/// most steps that look at values want.
pub fn text(column: &dyn arrow_array::Array) -> Result<arrow_array::StringArray, Error> {
    let text = arrow_cast::cast(column, &arrow_schema::DataType::Utf8)?;
    text.as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .cloned()
        .ok_or_else(|| Error::failed("a cast to text did not give text"))
}

/// A schema shared as the [`Transform::schema`] of a step.
pub fn shared(schema: Schema) -> SchemaRef {
    Arc::new(schema)
}
