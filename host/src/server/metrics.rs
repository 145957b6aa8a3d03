//! Prometheus metrics (`GET /metrics`): requests by route and status class,
//! executions created and finished by status, run durations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weir_engine::execution::Status;

/// Labels of a finished execution.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// Terminal status.
    pub status: String,
}

/// Labels of a notification attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered`, `retry` or `gave_up`.
    pub outcome: String,
}

/// Labels of an answered request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// HTTP method.
    pub method: String,
    /// Status class: `2xx`, `4xx`, `5xx`.
    pub class: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Executions created.
    pub executions_created: Counter,
    /// Executions finished, by status.
    pub executions_finished: Family<StatusLabel, Counter>,
    /// Wall-clock seconds of runs.
    pub run_seconds: Histogram,
    /// Requests answered.
    pub requests: Family<RequestLabel, Counter>,
    /// Notification attempts, by what came of them.
    pub notifications: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    /// Registered metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let executions_created = Counter::default();
        let executions_finished = Family::<StatusLabel, Counter>::default();
        let run_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let requests = Family::<RequestLabel, Counter>::default();
        let notifications = Family::<OutcomeLabel, Counter>::default();
        registry.register("executions_created", "Executions created", executions_created.clone());
        registry.register(
            "executions_finished",
            "Executions that reached a terminal status",
            executions_finished.clone(),
        );
        registry.register("run_seconds", "Wall-clock time of runs", run_seconds.clone());
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "notification_attempts",
            "Notification attempts, by outcome",
            notifications.clone(),
        );
        Self {
            registry,
            executions_created,
            executions_finished,
            run_seconds,
            requests,
            notifications,
        }
    }

    /// Counts an execution that reached `status`.
    pub fn finished(&self, status: Status) {
        self.executions_finished
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    /// Counts a notification attempt by what came of it.
    pub fn notification(&self, next: crate::server::state::AfterAttempt) {
        use crate::server::state::AfterAttempt;
        let outcome = match next {
            AfterAttempt::Delivered => "delivered",
            AfterAttempt::RetryAt(_) => "retry",
            AfterAttempt::GiveUp => "gave_up",
        };
        self.notifications
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
