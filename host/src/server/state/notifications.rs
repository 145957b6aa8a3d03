//! Notifications of ended executions: the outbox and its attempts
//! (docs/notifications.md). A backend stores an execution's notifications in
//! the transaction that stores its end ([`due_at_end`]), so an end is never
//! kept without them nor they without it.

use weir_engine::connector::Connector;

use super::*;

/// A notification of an ended execution, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRow {
    /// The execution it tells of.
    pub execution_id: String,
    /// Its place among the connector's `[[notifications]]`, from 0.
    pub n: u32,
    /// The execution's workspace.
    pub workspace_id: String,
    /// Where it is POSTed.
    pub url: String,
    /// The workspace secret that signs it.
    pub secret: String,
    /// The `webhook-id` of every attempt.
    pub webhook_id: String,
    /// The JSON body of every attempt.
    pub body: String,
    /// When the execution ended and this was stored.
    pub created_at: DateTime<Utc>,
    /// `pending`, `delivered` or `failed` (retried until it gave up).
    pub state: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch), while pending.
    pub next_attempt_at: Option<i64>,
    /// Retried until then (ms since the epoch), when set by a redelivery;
    /// else until `created_at` plus the server's `notification_retry_for`.
    pub retry_until: Option<i64>,
}

/// One attempt to deliver a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// From 1.
    pub attempt: u32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did (no answer, a refused address, a status
    /// other than 2xx).
    pub error: Option<String>,
    /// How long it took, in ms.
    pub took_ms: u64,
}

/// What an attempt leaves for the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// The receiver took it.
    Delivered,
    /// Try again then (ms since the epoch).
    RetryAt(i64),
    /// Retried for as long as allowed: given up.
    GiveUp,
}

impl AfterAttempt {
    /// The notification's state after the attempt, and when its next
    /// attempt is due (ms).
    pub fn stored(self) -> (&'static str, Option<i64>) {
        match self {
            AfterAttempt::Delivered => ("delivered", None),
            AfterAttempt::RetryAt(at) => ("pending", Some(at)),
            AfterAttempt::GiveUp => ("failed", None),
        }
    }
}

/// The notifications outbox.
pub trait NotificationState {
    /// Claims for `owner` until `until` (ms) up to `limit` pending
    /// notifications due at `now` that no live claim holds.
    fn claim_notifications(&self, owner: &str, now: i64, until: i64, limit: usize) -> Result<Vec<NotificationRow>>;

    /// Stores an attempt of a notification `owner` claimed, and what comes
    /// next; false (nothing stored) when its claim was lost meanwhile.
    fn record_attempt(
        &self,
        execution_id: &str,
        n: u32,
        owner: &str,
        attempt: &AttemptRow,
        next: AfterAttempt,
    ) -> Result<bool>;

    /// An execution's notifications with their attempts, in order.
    fn notifications(&self, execution_id: &str) -> Result<Vec<(NotificationRow, Vec<AttemptRow>)>>;

    /// Makes a notification due again at `now`, for one more attempt (until
    /// `now`); false when there is no such notification.
    fn redeliver(&self, execution_id: &str, n: u32, now: i64) -> Result<bool>;

    /// When the next pending notification can be claimed (ms), if any:
    /// when it is due, or when the claim a process holds on it ends.
    fn next_notification_due(&self) -> Result<Option<i64>>;
}

/// The notifications an execution ending as `doc` makes, from the
/// connector `definition` (JSON) it ran with: those whose `on` names its
/// status, each with its body and `webhook-id` (none for a publish's dry
/// run).
pub fn due_at_end(workspace_id: &str, definition: &str, doc: &Execution) -> Vec<NotificationRow> {
    // A publish's dry run answers the one who published; it tells no one
    // else.
    if !doc.status.is_terminal() || doc.trigger_type == weir_engine::execution::TriggerType::Publish {
        return Vec::new();
    }
    let Ok(connector) = serde_json::from_str::<Connector>(definition) else {
        return Vec::new();
    };
    if connector.notifications.is_empty() {
        return Vec::new();
    }
    let now = Utc::now();
    let body = summary(doc, now).to_string();
    connector
        .notifications
        .iter()
        .enumerate()
        .filter(|(_, n)| n.on.contains(&doc.status))
        .map(|(i, n)| NotificationRow {
            execution_id: doc.id.clone(),
            n: i as u32,
            workspace_id: workspace_id.to_string(),
            url: n.url.clone(),
            secret: n.secret.clone(),
            webhook_id: format!("msg_{}_{i}", doc.id),
            body: body.clone(),
            created_at: now,
            state: "pending".into(),
            attempts: 0,
            next_attempt_at: Some(now.timestamp_millis()),
            retry_until: None,
        })
        .collect()
}

/// The body of a notification: Standard Webhooks' `type`, `timestamp` and
/// `data`, the data being the execution's summary.
pub fn summary(doc: &Execution, now: DateTime<Utc>) -> serde_json::Value {
    use weir_engine::execution::StepProgress;
    let mut rows_in = 0;
    let mut rejected = 0;
    let mut loads = Vec::new();
    for p in &doc.step_progress {
        match p {
            StepProgress::Intake { tables, .. } => {
                rows_in = tables.iter().map(|t| t.rows + t.invalid).sum::<u64>();
                rejected += tables.iter().map(|t| t.invalid).sum::<u64>();
            }
            StepProgress::Transform { steps, .. } => rejected += steps.iter().map(|s| s.rejected).sum::<u64>(),
            StepProgress::Variables { scopes, .. } => rejected += scopes.iter().map(|s| s.invalid).sum::<u64>(),
            StepProgress::Load { steps, .. } => {
                loads = steps
                    .iter()
                    .map(|s| {
                        serde_json::json!({"order": s.order, "scope": s.scope, "object": s.object, "total": s.total,
                            "created": s.created, "updated": s.updated, "skipped": s.skipped, "failed": s.failed})
                    })
                    .collect();
            }
            StepProgress::Sql { .. } => {}
        }
    }
    serde_json::json!({
        "type": format!("execution.{}", doc.status.as_str()),
        "timestamp": now.to_rfc3339(),
        "data": {
            "id": doc.id,
            "connector": {"id": doc.connector.id, "api_name": doc.connector.api_name, "version": doc.connector.version},
            "status": doc.status,
            "trigger_type": doc.trigger_type,
            "is_dry_run": doc.is_dry_run,
            "created_at": doc.created_at,
            "started_at": doc.started_at,
            "ended_at": doc.ended_at,
            "counts": {"rows_in": rows_in, "rejected": rejected, "loads": loads},
            "error": doc.error,
            "links": doc.links,
        }
    })
}
