//! Webhook payloads and the batches they are run in.

use super::*;

/// A webhook payload as received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookRow {
    /// When it arrived (RFC 3339).
    pub received_at: String,
    /// The sender's `webhook-id`, or one given on receipt.
    pub webhook_id: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// The query string of the request, without `?`.
    pub querystring: String,
    /// The body (UTF-8).
    pub body: String,
}

/// Where a payload went: its batch, and the execution once it closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceipt {
    /// The batch.
    pub batch_id: String,
    /// When the batch closes (or closed).
    pub closes_at: DateTime<Utc>,
    /// The execution the batch became, once closed.
    pub execution_id: Option<String>,
    /// The payload had been received before (same `webhook-id`).
    pub duplicate: bool,
    /// For a duplicate: the first one had a different body.
    pub differs: bool,
}

/// A batch of payloads that has not become an execution yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBatch {
    /// The batch.
    pub id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// Its connector.
    pub connector_id: String,
}

/// Webhook payloads and their batches.
pub trait WebhookState {
    /// Stores a payload in its connector's open batch, opening one that
    /// closes after `window` when there is none (a zero window opens one
    /// per payload). A batch past its time takes no more payloads, so the
    /// batcher can close it, unless the connector is `buffering` (not
    /// operational): then its open batch holds everything until it runs. A
    /// `webhook_id` seen before stores nothing and gives the first receipt
    /// again.
    fn receive_webhook(
        &self,
        workspace_id: &str,
        connector_id: &str,
        payload: &WebhookRow,
        signed: bool,
        window: std::time::Duration,
        buffering: bool,
    ) -> Result<WebhookReceipt>;

    /// Open batches due at `now`, oldest first.
    fn due_batches(&self, now: DateTime<Utc>) -> Result<Vec<OpenBatch>>;

    /// When the next open batch is due, if any is open.
    fn next_batch_due(&self) -> Result<Option<DateTime<Utc>>>;

    /// The payloads of a batch, in the order they arrived.
    fn batch_payloads(&self, batch_id: &str) -> Result<Vec<WebhookRow>>;

    /// Closes a batch of `payloads` payloads into the execution `row`, both
    /// or neither; false when the batch was closed already, or when a
    /// payload joined it after its payloads were read (the execution's input
    /// would miss it: read them again).
    fn close_batch(&self, batch_id: &str, payloads: usize, row: &ExecutionRow) -> Result<bool>;
}
