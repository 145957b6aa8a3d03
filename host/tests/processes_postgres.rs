//! The multi-process suite (`processes.rs`) on PostgreSQL and an S3
//! bucket: every test of it, its processes on one database and one bucket
//! of the test's own, each process with a data directory of its own.

#[path = "processes.rs"]
mod suite;
