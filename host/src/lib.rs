//! # Weir host
//!
//! The `weir` binary and what it is made of. The engine (`weir-engine`)
//! does the work; this crate turns it into commands (and, later, the HTTP
//! server).
//!
//! # Layout
//!
//! - [`cli`]: command-line parsing and the commands (`run`, `version`).
//! - [`local`]: `weir run`: a package or directory run on this machine, with a
//!   progress display and a summary.

pub mod cli;
pub mod local;
