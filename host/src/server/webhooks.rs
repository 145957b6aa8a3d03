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
use super::queue;
use super::state::{FileRow, OpenBatch, WebhookRow, Workspace};
use super::triggers::{Version, prepare};

/// The largest payload accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// How far a signature's timestamp may be from now, either way.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// What a sender whose signature does not match hears.
pub const NO_MATCH: &str = "no v1 signature in webhook-signature matches the connector's secret";

/// The longest the batcher sleeps between two looks at the open batches.
const IDLE: Duration = Duration::from_secs(1);

/// Wakes the batcher when a batch opens.
#[derive(Debug, Default)]
pub struct Batches {
    wake: Notify,
}

impl Batches {
    /// A batch opened: the batcher looks again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Closes due batches into executions, until the server drains.
pub async fn batcher(app: Arc<App>) {
    loop {
        if let Err(e) = close_due(&app).await {
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

/// Closes every batch that is due and whose connector is operational;
/// returns how many became executions.
pub async fn close_due(app: &App) -> anyhow::Result<usize> {
    let mut closed = 0;
    for batch in app.db.due_batches(Utc::now())? {
        if close(app, &batch).await?.is_some() {
            closed += 1;
        }
    }
    Ok(closed)
}

/// The input file of a batch of `payloads`: `webhooks.jsonl`, one payload
/// a line with when it came, its id, content type, query string and body,
/// which the connector reads as `input.webhooks`.
pub async fn batch_file(app: &App, workspace_id: &str, payloads: &[WebhookRow]) -> anyhow::Result<FileRow> {
    let mut jsonl = Vec::new();
    for p in payloads {
        serde_json::to_writer(&mut jsonl, p)?;
        jsonl.push(b'\n');
    }
    Ok(app
        .files
        .keep_bytes(workspace_id, "webhooks.jsonl", "application/x-ndjson", jsonl)
        .await?)
}

/// The input file a batch of the JSON `payloads`, received now, would
/// make: what publishing or previewing a webhook connector runs on when
/// given sample payloads instead of a file.
pub async fn sample_file(app: &App, workspace_id: &str, payloads: &[serde_json::Value]) -> anyhow::Result<FileRow> {
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
    batch_file(app, workspace_id, &rows).await
}

/// Closes one batch into a queued execution; `None` while its connector
/// cannot run (not operational, no live script), which keeps it open.
pub async fn close(app: &App, batch: &OpenBatch) -> anyhow::Result<Option<String>> {
    let Some(row) = app.db.connector(&batch.workspace_id, &batch.connector_id)? else {
        return Ok(None);
    };
    let connector = &row.connector;
    if connector.status != ConnectorStatus::Operational || row.live_version.is_none() {
        return Ok(None);
    }
    let payloads = app.db.batch_payloads(&batch.id)?;
    let file = batch_file(app, &batch.workspace_id, &payloads).await?;
    let execution = prepare(
        app.db.as_ref(),
        &batch.workspace_id,
        &row,
        Version::Live,
        Some(file),
        false,
        TriggerType::Webhook,
    )?;
    // A payload may join the batch while its file is written; then the claim
    // fails and the batch, still due, closes on the batcher's next look.
    if !app.db.close_batch(&batch.id, payloads.len(), &execution)? {
        return Ok(None);
    }
    queue::queued(app, &execution)?;
    Ok(Some(execution.document.id))
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

/// The signing secret of a connector of a workspace: the workspace secret
/// `webhook.secret` names, or the environment variable `webhook.secret_env`
/// names when it is one the workspace may read; `None` when it is not set.
pub fn secret_of(app: &App, workspace: &Workspace, connector: &Connector) -> Option<String> {
    let webhook = connector.webhook.as_ref()?;
    if let Some(name) = &webhook.secret {
        return match super::secrets::open(app.db.as_ref(), app.settings.secrets_key.as_ref(), &workspace.id, name) {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "a webhook signing secret cannot be opened");
                None
            }
        };
    }
    let name = webhook.secret_env.as_deref()?;
    check_secret_env(&app.settings.config.webhook_secret_prefixes, &workspace.name, name).ok()?;
    std::env::var(name).ok()
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
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64
        .decode(key)
        .map_err(|_| "the connector's signing secret is not base64 (whsec_…)".to_string())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = BASE64.encode(mac.finalize().into_bytes());
    let matches = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())));
    if matches { Ok(()) } else { Err(NO_MATCH.into()) }
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
