//! The `weir` binary's integration tests, one module per subject: the
//! HTTP API (on the embedded default and again on PostgreSQL and S3), the
//! CLI, the console, crashes, hostile connectors and requests, sources,
//! stores, notifications and clients. One binary, so the engine links once.
#![allow(
    clippy::duplicate_mod,
    reason = "server.rs and processes.rs run twice: as themselves on the embedded default, and as \
              server_postgres.rs and processes_postgres.rs on PostgreSQL and S3"
)]

mod common;

mod cli;
mod console;
mod crash;
mod disk;
mod hostile;
mod hostile_requests;
mod notifications;
mod object_store;
mod postgres;
mod processes;
mod processes_postgres;
mod python_client;
mod readme;
mod record_stores;
mod remote_cli;
mod restart;
mod secrets;
mod server;
mod server_postgres;
mod sources;
mod state_stores;
mod webhooks;
