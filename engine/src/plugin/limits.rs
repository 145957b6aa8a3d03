//! What one plugin instance may use (memory, output, log lines, time) and how
//! going past it is told apart from a guest's own failure.

use super::*;

/// What plugins may use, for every instance the runtime creates.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Most linear memory one instance may grow to, in bytes.
    pub memory_limit: u64,
    /// Most bytes of Arrow IPC one call may return.
    pub max_output_bytes: usize,
    /// Most log lines one step may write (stdout, stderr and `host.log`).
    pub max_log_lines: usize,
    /// Longest log line kept, in bytes; longer lines are cut.
    pub max_log_line: usize,
    /// How often the epoch ticks: a cancel or deadline interrupts a guest
    /// within about this long.
    pub tick: Duration,
    /// Where compiled components are cached across processes; `None` keeps
    /// them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Most compiled components kept in memory; the least recently used
    /// one is dropped beyond it (and found again in the disk cache).
    pub max_compiled: usize,
    /// A plugin that takes longer than this to be ready (compiling on its
    /// first use) is announced in the run's log.
    pub announce_compile_after: Duration,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            memory_limit: 256 * 1024 * 1024,
            max_output_bytes: 256 * 1024 * 1024,
            max_log_lines: 1000,
            max_log_line: 2048,
            tick: Duration::from_millis(5),
            cache_dir: None,
            max_compiled: 64,
            announce_compile_after: Duration::from_secs(1),
        }
    }
}

/// Why the host interrupted a guest.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(super) enum Interrupt {
    #[error("the run was canceled")]
    Canceled,
    #[error("the run passed its deadline")]
    Deadline,
}

/// A memory growth past the instance's limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
pub(super) struct MemoryExceeded;

/// Limits what one instance may allocate: the sum of all its linear
/// memories (a component may hold several core modules, each with its own),
/// a few core instances, memories and tables, and table sizes.
pub(super) struct MemoryLimiter {
    pub(super) limit: u64,
    /// Bytes of linear memory the instance holds now, over all memories.
    pub(super) used: u64,
    pub(super) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grown = self.used + (desired as u64).saturating_sub(current as u64);
        if grown > self.limit {
            // A trap rather than a failed grow: a guest's allocator would
            // abort anyway, and the trap says why.
            self.exceeded = true;
            return Err(MemoryExceeded.into());
        }
        self.used = grown;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}
