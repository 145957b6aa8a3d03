//! The server test suite (`server.rs`) on PostgreSQL and an S3 bucket:
//! every test of it, each with a database and a bucket of its own, on one
//! PostgreSQL cluster and one S3-compatible server started for this binary.

#[path = "server.rs"]
mod suite;
