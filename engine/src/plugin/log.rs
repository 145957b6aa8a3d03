//! A guest's stdout and stderr as the run's log lines: bounded per step, cut to
//! whole lines.

use super::*;

/// Where a guest line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Stdout,
    Stderr,
    Host,
}

/// A step's log: lines tagged with the step and plugin, capped, and the
/// guest's last words kept for a trap's message.
pub(super) struct StepLog {
    pub(super) tag: String,
    pub(super) sink: Arc<dyn RunLog>,
    pub(super) max_lines: usize,
    pub(super) max_line: usize,
    pub(super) state: Mutex<LogState>,
}

#[derive(Default)]
pub(super) struct LogState {
    pub(super) written: usize,
    pub(super) dropped: u64,
    pub(super) partial: [Vec<u8>; 2],
    pub(super) last_words: VecDeque<String>,
    pub(super) closed: bool,
}

impl StepLog {
    pub(super) fn new(step: &StepInfo, settings: &PluginSettings) -> Self {
        Self {
            tag: format!("[{} {}]", step.name, step.plugin),
            sink: step.log.clone(),
            max_lines: settings.max_log_lines,
            max_line: settings.max_log_line,
            state: Mutex::new(LogState::default()),
        }
    }

    pub(super) fn line(&self, level: LogLevel, source: Source, message: &str) {
        let mut state = lock(&self.state);
        self.write(&mut state, level, source, message);
    }

    pub(super) fn write(&self, state: &mut LogState, level: LogLevel, source: Source, message: &str) {
        let message = cut(message.trim_end(), self.max_line);
        if source == Source::Stderr || level == LogLevel::Error {
            if state.last_words.len() == 3 {
                state.last_words.pop_front();
            }
            state.last_words.push_back(message.to_string());
        }
        if state.written >= self.max_lines {
            state.dropped += 1;
            return;
        }
        state.written += 1;
        let stream = match source {
            Source::Stdout => " stdout:",
            Source::Stderr => " stderr:",
            Source::Host => "",
        };
        self.sink.line(level, &format!("{}{stream} {message}", self.tag));
    }

    /// Stdout/stderr bytes, split into lines.
    pub(super) fn bytes(&self, source: Source, bytes: &[u8]) {
        let mut state = lock(&self.state);
        let slot = usize::from(source == Source::Stderr);
        let level = if source == Source::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut state.partial[slot]);
            line.extend_from_slice(&rest[..end]);
            self.write(&mut state, level, source, &String::from_utf8_lossy(&line));
            rest = &rest[end + 1..];
        }
        let partial = &mut state.partial[slot];
        let room = (self.max_line + 1).saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// Flushes partial lines and says how many lines were dropped; once.
    pub(super) fn close(&self) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        state.closed = true;
        for (slot, source) in [(0, Source::Stdout), (1, Source::Stderr)] {
            let line = std::mem::take(&mut state.partial[slot]);
            if !line.is_empty() {
                let level = if source == Source::Stderr {
                    LogLevel::Warn
                } else {
                    LogLevel::Info
                };
                self.write(&mut state, level, source, &String::from_utf8_lossy(&line));
            }
        }
        if state.dropped > 0 {
            self.sink.line(
                LogLevel::Warn,
                &format!(
                    "{} {} more lines of plugin output were dropped (limit: {} lines per step)",
                    self.tag, state.dropped, self.max_lines
                ),
            );
        }
    }

    /// The guest's last stderr or error lines, for a trap's message.
    pub(super) fn last_words(&self) -> Option<String> {
        let mut state = lock(&self.state);
        let partial = std::mem::take(&mut state.partial[1]);
        if !partial.is_empty() {
            let line = String::from_utf8_lossy(&partial).trim_end().to_string();
            state.last_words.push_back(line);
        }
        let words: Vec<&str> = state
            .last_words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty() && !w.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        (!words.is_empty()).then(|| words.join(" | "))
    }
}

pub(super) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: every byte accepted, lines into the step log.
#[derive(Clone)]
pub(super) struct GuestOutput {
    pub(super) log: Arc<StepLog>,
    pub(super) stream: Stream,
}

impl GuestOutput {
    fn take(&self, bytes: &[u8]) {
        let source = match self.stream {
            Stream::Stdout => Source::Stdout,
            Stream::Stderr => Source::Stderr,
        };
        self.log.bytes(source, bytes);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> std::result::Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> std::result::Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
