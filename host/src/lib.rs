//! # Weir host
//!
//! The `weir` binary and what it is made of. The engine (`weir-engine`)
//! does the work; this crate turns it into commands and the HTTP server.
//!
//! # Layout
//!
//! - [`cli`]: command-line parsing and the commands (`run`, `serve`, `keys`, `plugin`, `version`).
//! - [`local`]: `weir run`: a package or directory run on this machine, with a
//!   progress display and a summary.
//! - [`plugin`]: `weir plugin check`: a component validated and run on a file.
//! - [`remote`]: `weir trigger`, `weir executions`, `weir connectors`: a
//!   server driven from the command line.
//! - [`serve`]: `weir serve` and `weir keys`: configuration, signals, bootstrap output.
//! - [`server`]: the HTTP API, state, auth, queue and workers.
//! - [`worker`]: `weir worker`, the process a server run executes in, and
//!   its supervision from the server.

pub mod cli;
pub mod local;
pub mod package;
pub mod plugin;
pub mod remote;
pub mod serve;
pub mod server;
pub mod worker;
