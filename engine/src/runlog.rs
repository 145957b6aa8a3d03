//! The execution log: lines a run writes for the person watching it (plugin
//! output, notable events). Where the lines go is the caller's business: the
//! server stores them per execution, `weir run` prints them.

use std::sync::Arc;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Detail for debugging.
    Debug,
    /// Normal events.
    Info,
    /// Something looks wrong but the run goes on.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Receives a run's log lines. Called from any thread, also from blocking
/// threads running plugins.
pub trait RunLog: Send + Sync {
    /// One line.
    fn line(&self, level: LogLevel, message: &str);
}

/// Drops every line.
#[derive(Debug, Default)]
pub struct Discard;

impl RunLog for Discard {
    fn line(&self, _level: LogLevel, _message: &str) {}
}

/// Keeps every line as `level: message`, for callers that show the lines
/// after the run (`weir plugin check`, tests).
#[derive(Debug, Default)]
pub struct Collect(std::sync::Mutex<Vec<String>>);

impl Collect {
    /// The lines so far, leaving none behind.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl RunLog for Collect {
    fn line(&self, level: LogLevel, message: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{}: {message}", level.as_str()));
    }
}

/// A log that drops everything, for runs nobody watches.
pub fn discard() -> Arc<dyn RunLog> {
    Arc::new(Discard)
}
