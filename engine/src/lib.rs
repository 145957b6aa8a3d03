//! # Weir engine
//!
//! The engine runs one SmartConnector execution end to end:
//!
//! ```text
//! intake → input tables → SQL script → transforms → variables → loads → report
//! ```
//!
//! The same engine runs inside the server and behind `weir run`, so a dev
//! package behaves identically on a laptop.
//!
//! # Layout
//!
//! - [`connector`]: the connector definition (SPEC §2), parsed from TOML or
//!   JSON and validated with paths.
//! - [`document`]: parsing user documents with every problem reported at once.
//! - [`objects`]: object definitions (`objects.toml`) and their checks.
//! - [`naming`]: normalisation of header and table names (SPEC §3.2).
//! - [`intake`]: reading input files (CSV, TSV, JSON, Parquet, XLSX, ZIP),
//!   encoding detection and type inference, as streaming input tables.
//! - [`check`]: checking a script against a sample before it runs.
//! - [`sources`]: external sources (`[[sources]]`): databases and files on
//!   the web or in a bucket, as schemas of the script.
//! - [`sql`]: the SQL stage: script splitting, the policy of what a script may
//!   do, schemas `input`/`output`/`meta`, limits.
//! - [`plugin`]: the sandboxed Wasm plugin runtime (wasmtime components,
//!   limits, epoch interruption, log capture).
//! - [`transform`]: the transform stage: a scope's plugin steps on every batch.
//! - [`runlog`]: the execution log plugins and stages write to.
//! - [`variables`]: converting scope rows into typed variables.
//! - [`output`]: writing scope output CSVs in the format of SPEC §7.
//! - [`report`]: `rejected.csv` and `report.xlsx`.
//! - [`loads`]: load steps: matching rules, conflict rules, batch commits.
//! - [`store`]: the record store interface and its embedded SQLite implementation.
//! - [`execution`]: the execution document and the status state machine.
//! - [`package`]: loading a connector directory or dev-package zip safely.
//! - [`pipeline`]: the run itself, wiring the stages with limits and cancel.
//! - [`error`]: typed errors and stable codes.

mod calendar;
pub mod check;
pub mod connector;
pub mod document;
pub mod error;
pub mod execution;
mod in_order;
pub mod intake;
mod json_paths;
pub mod loads;
pub mod naming;
pub mod objects;
pub mod output;
pub mod package;
pub mod pg;
pub mod pipeline;
pub mod plugin;
mod pushdown;
pub mod records;
pub mod report;
pub mod runlog;
pub mod schedule;
pub mod snapshot;
pub mod sources;
pub mod sql;
pub mod store;
pub mod transform;
pub mod variables;
pub mod written;

pub use error::{Error, Result};

/// A seeded xorshift generator for tests that sweep many generated inputs:
/// the same inputs every run, so a failure names one that can be replayed.
#[cfg(test)]
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
