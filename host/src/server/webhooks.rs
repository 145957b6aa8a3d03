//! Webhook payloads from receipt to execution (SPEC §6.5).
//!
//! A payload is stored, in its connector's open batch, before the sender
//! gets its 202. A batch opens with its first payload and closes
//! `batch_window` later (a zero window makes a batch per payload); closing
//! writes its payloads, in arrival order, as `webhooks.jsonl` (one JSON
//! object per payload: `received_at`, `webhook_id`, `content_type`,
//! `querystring`, `body`) to the file store and queues one execution on it,
//! so the script reads them as `input.webhooks`. The batch and its execution
//! are stored in one transaction: a restart never runs a batch twice, and a
//! batch that came due while the server was down closes when it is back.
//!
//! A connector that is not operational keeps buffering: its batch stays
//! open past its time and closes once the connector is operational again.
//!
//! Senders sign with Standard Webhooks: `webhook-signature` holds one or
//! more `v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}`
//! under the connector's secret (`whsec_<base64>`), so a secret can rotate
//! with both signatures sent for a while. The secret is read from the
//! environment variable `webhook.secret_env` names, which must begin with
//! the prefix the operator gave the connector's workspace
//! (`webhook_secret_prefixes`): a workspace reads no other variable.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use weir_engine::connector::{Connector, ConnectorStatus};
use weir_engine::execution::TriggerType;

use super::App;
use super::config::Settings;
use super::executions::Executions;
use super::files::Files;
use super::refusal::{Refusal, Refused};
use super::state::{ConnectorRow, FileRow, OpenBatch, StateStore, WebhookRow, Workspace};
use super::triggers::{Version, prepare};

/// The largest payload accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// How far a signature's timestamp may be from now, either way.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// What a sender whose signature does not match hears.
pub const NO_MATCH: &str = "no v1 signature in webhook-signature matches the connector's secret";

/// The longest the batcher sleeps between two looks at the open batches.
const IDLE: Duration = Duration::from_secs(1);

/// Webhook batches: payloads received into them, and batches closed into
/// executions. It holds the state store, the files and executions services,
/// the settings, and the batcher's wake-up.
pub struct Batches {
    db: Arc<dyn StateStore>,
    files: Files,
    executions: Executions,
    settings: Arc<Settings>,
    wake: Notify,
}

/// Where a received payload went.
#[derive(Debug)]
pub struct Received {
    /// The execution its batch became, once closed (at once for a zero
    /// window).
    pub execution_id: Option<String>,
    /// When its batch closes (or closed).
    pub closes_at: DateTime<Utc>,
    /// It had been received before under its id and was not stored again.
    pub duplicate: bool,
}

impl Batches {
    /// The service.
    pub fn new(db: Arc<dyn StateStore>, files: Files, executions: Executions, settings: Arc<Settings>) -> Self {
        Self {
            db,
            files,
            executions,
            settings,
            wake: Notify::new(),
        }
    }

    /// A batch opened: the batcher looks again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stores `payload` in the open batch of connector `row` (opening one
    /// `window` long if there is none); a zero window closes it at once. A
    /// `signed` payload's id is the sender's Standard Webhooks id, kept
    /// apart from keyed senders' ids. Refused when its id was received
    /// before with another body.
    pub async fn receive(
        &self,
        row: &ConnectorRow,
        payload: &WebhookRow,
        signed: bool,
        window: Duration,
    ) -> Refused<Received> {
        let receipt = self.db.receive_webhook(
            &row.workspace_id,
            &row.id,
            payload,
            signed,
            window,
            row.connector.status != ConnectorStatus::Operational,
        )?;
        if receipt.differs {
            return Err(Refusal::invalid(
                "idempotency_key_reused",
                format!(
                    "payload `{}` was received before with another body; a new payload needs a new id",
                    payload.webhook_id
                ),
                vec![],
            ));
        }
        let mut execution_id = receipt.execution_id.clone();
        if !receipt.duplicate {
            if window.is_zero() {
                // One execution per payload, known in the answer.
                let batch = OpenBatch {
                    id: receipt.batch_id.clone(),
                    workspace_id: row.workspace_id.clone(),
                    connector_id: row.id.clone(),
                };
                execution_id = self.close(&batch).await.map_err(Refusal::internal)?;
            } else {
                self.wake();
            }
        }
        Ok(Received {
            execution_id,
            closes_at: receipt.closes_at,
            duplicate: receipt.duplicate,
        })
    }

    /// Closes every batch that is due and whose connector is operational;
    /// returns how many became executions.
    pub async fn close_due(&self) -> anyhow::Result<usize> {
        let mut closed = 0;
        for batch in self.db.due_batches(Utc::now())? {
            if self.close(&batch).await?.is_some() {
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// Closes one batch into a queued execution; `None` while its connector
    /// cannot run (not operational, no live script), which keeps it open.
    pub async fn close(&self, batch: &OpenBatch) -> anyhow::Result<Option<String>> {
        let Some(row) = self.db.connector(&batch.workspace_id, &batch.connector_id)? else {
            return Ok(None);
        };
        let connector = &row.connector;
        if connector.status != ConnectorStatus::Operational || row.live_version.is_none() {
            return Ok(None);
        }
        let payloads = self.db.batch_payloads(&batch.id)?;
        let file = batch_file(&self.files, &batch.workspace_id, &payloads).await?;
        let execution = prepare(
            self.db.as_ref(),
            &batch.workspace_id,
            &row,
            Version::Live,
            Some(file),
            false,
            TriggerType::Webhook,
        )?;
        // A payload may join the batch while its file is written; then the claim
        // fails and the batch, still due, closes on the batcher's next look.
        if !self.db.close_batch(&batch.id, payloads.len(), &execution)? {
            return Ok(None);
        }
        self.executions.queued(&execution)?;
        Ok(Some(execution.document.id))
    }

    /// The connector `id` a signed sender addresses, with the signing secret
    /// it may be checked against (`None` when it has none set).
    pub fn signed_target(&self, id: &str) -> Refused<(Option<ConnectorRow>, Option<String>)> {
        let Some(row) = self.db.connector_by_id(id)? else {
            return Ok((None, None));
        };
        let secret = match self.db.workspace(&row.workspace_id)? {
            Some(workspace) => self.secret_of(&workspace, &row.connector),
            None => None,
        };
        Ok((Some(row), secret))
    }

    /// The signing secret of a connector of a workspace: the workspace secret
    /// `webhook.secret` names, or the environment variable `webhook.secret_env`
    /// names when it is one the workspace may read; `None` when it is not set.
    pub fn secret_of(&self, workspace: &Workspace, connector: &Connector) -> Option<String> {
        let webhook = connector.webhook.as_ref()?;
        if let Some(name) = &webhook.secret {
            return match super::secrets::open(
                self.db.as_ref(),
                self.settings.secrets_key.as_ref(),
                &workspace.id,
                name,
            ) {
                Ok(value) => value,
                Err(e) => {
                    tracing::warn!(secret = %name, error = %e, "a webhook signing secret cannot be opened");
                    None
                }
            };
        }
        let name = webhook.secret_env.as_deref()?;
        check_secret_env(&self.settings.config.webhook_secret_prefixes, &workspace.name, name).ok()?;
        std::env::var(name).ok()
    }
}

/// Closes due batches into executions, until the server drains.
pub async fn batcher(app: Arc<App>) {
    loop {
        if let Err(e) = app.batches.close_due().await {
            tracing::error!(error = %e, "closing webhook batches failed");
        }
        let next = app.db.next_batch_due().ok().flatten();
        let sleep = next.map_or(IDLE, |at| {
            (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(IDLE)
        });
        tokio::select! {
            () = app.batches.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            () = app.runs.draining().cancelled() => return,
        }
    }
}

/// The input file of a batch of `payloads`: `webhooks.jsonl`, one payload
/// a line with when it came, its id, content type, query string and body,
/// which the connector reads as `input.webhooks`.
pub async fn batch_file(files: &Files, workspace_id: &str, payloads: &[WebhookRow]) -> anyhow::Result<FileRow> {
    let mut jsonl = Vec::new();
    for p in payloads {
        serde_json::to_writer(&mut jsonl, p)?;
        jsonl.push(b'\n');
    }
    Ok(files
        .keep_bytes(workspace_id, "webhooks.jsonl", "application/x-ndjson", jsonl)
        .await?)
}

/// The input file a batch of the JSON `payloads`, received now, would
/// make: what publishing or previewing a webhook connector runs on when
/// given sample payloads instead of a file.
pub async fn sample_file(files: &Files, workspace_id: &str, payloads: &[serde_json::Value]) -> anyhow::Result<FileRow> {
    let now = Utc::now().to_rfc3339();
    let rows: Vec<WebhookRow> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| WebhookRow {
            received_at: now.clone(),
            webhook_id: format!("sample_{}", i + 1),
            content_type: "application/json".into(),
            querystring: String::new(),
            body: payload.to_string(),
        })
        .collect();
    batch_file(files, workspace_id, &rows).await
}

/// Refuses a `webhook.secret_env` outside the variables the workspace
/// named `workspace` may read.
pub fn check_secret_env(
    prefixes: &std::collections::BTreeMap<String, String>,
    workspace: &str,
    name: &str,
) -> Result<(), String> {
    if name == super::secrets::KEY_VARIABLE {
        return Err("must not name the server's secrets key".into());
    }
    match prefixes.get(workspace) {
        Some(prefix) if name.len() > prefix.len() && name.starts_with(prefix.as_str()) => Ok(()),
        Some(prefix) => Err(format!(
            "must name an environment variable beginning `{prefix}` (the variables of this workspace), with more after it"
        )),
        None => Err(format!(
            "workspace `{workspace}` may read no environment variable: the operator gives it a prefix in webhook_secret_prefixes"
        )),
    }
}

/// Checks a Standard Webhooks signature at `now`: the timestamp within
/// [`TOLERANCE`], and one of the `v1` signatures matching `secret`.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| "webhook-timestamp is not a number of seconds".to_string())?;
    let age = (now.timestamp() - seconds).unsigned_abs();
    if age > TOLERANCE.as_secs() {
        return Err(format!(
            "webhook-timestamp is {age} s away from now; at most {} s is accepted",
            TOLERANCE.as_secs()
        ));
    }
    let expected = sign(secret, id, timestamp.trim(), body)?;
    let matches = signatures
        .split_whitespace()
        .any(|s| s.starts_with("v1,") && bool::from(s.as_bytes().ct_eq(expected.as_bytes())));
    if matches { Ok(()) } else { Err(NO_MATCH.into()) }
}

/// The Standard Webhooks `v1` signature of `body` sent as `id` at
/// `timestamp` under `secret` (`whsec_<base64>`): what a
/// `webhook-signature` header carries.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Result<String, String> {
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64
        .decode(key)
        .map_err(|_| "the signing secret is not base64 (whsec_…)".to_string())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn sign(id: &str, ts: &str, body: &str) -> String {
        let key = BASE64.decode(&SECRET[6..]).unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap_or_else(|e| panic!("{e}"));
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_signature_checks_its_secret_its_timestamp_and_every_v1_given() {
        let now = Utc::now();
        let ts = now.timestamp().to_string();
        let good = sign("msg_1", &ts, "{}");
        assert_eq!(verify(SECRET, "msg_1", &ts, b"{}", &good, now), Ok(()));
        // Rotation: an old signature first, the matching one second.
        let both = format!("v1,AAAA {good}");
        assert_eq!(verify(SECRET, "msg_1", &ts, b"{}", &both, now), Ok(()));
        assert!(
            verify(SECRET, "msg_1", &ts, b"{ }", &good, now).is_err(),
            "body changed"
        );
        assert!(verify(SECRET, "msg_2", &ts, b"{}", &good, now).is_err(), "id changed");
        let stale = (now.timestamp() - 301).to_string();
        let signed_stale = sign("msg_1", &stale, "{}");
        let e = verify(SECRET, "msg_1", &stale, b"{}", &signed_stale, now);
        assert!(e.is_err_and(|e| e.contains("301 s")));
        let future = (now.timestamp() + 299).to_string();
        let signed_future = sign("msg_1", &future, "{}");
        assert_eq!(verify(SECRET, "msg_1", &future, b"{}", &signed_future, now), Ok(()));
    }

    #[test]
    fn a_workspace_names_only_variables_under_its_prefix() {
        let prefixes = std::collections::BTreeMap::from([("acme".to_string(), "ACME_WHSEC_".to_string())]);
        assert_eq!(check_secret_env(&prefixes, "acme", "ACME_WHSEC_CRM"), Ok(()));
        let weir = std::collections::BTreeMap::from([("ops".to_string(), "WEIR_".to_string())]);
        assert!(
            check_secret_env(&weir, "ops", "WEIR_SECRETS_KEY").is_err(),
            "never the secrets key"
        );
        for name in ["HOME", "ACME_WHSEC_", "OTHER_ACME_WHSEC_CRM", "acme_whsec_crm"] {
            let e = check_secret_env(&prefixes, "acme", name);
            assert!(e.as_ref().is_err_and(|e| e.contains("ACME_WHSEC_")), "{name}: {e:?}");
        }
        let e = check_secret_env(&prefixes, "globex", "ACME_WHSEC_CRM");
        assert!(e.is_err_and(|e| e.contains("webhook_secret_prefixes")));
    }
}
