//! **Webhook trigger** (SPEC §6.5): `POST /connectors/{c}/webhook` takes any
//! content type, a UTF-8 body of at most 256 KiB, from a sender with an API
//! key allowed on the connector or a Standard Webhooks signature, stores it
//! in the connector's open batch and answers 202 with where it went. The
//! batching itself is [`crate::server::webhooks`].

use std::sync::Arc;

use axum::Json;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
use weir_engine::connector::{ConnectorStatus, ConnectorType};

use crate::server::App;
use crate::server::auth::{authenticate, key_in};
use crate::server::error::{ApiError, ApiResult, Path, ProblemDocument};
use crate::server::state::{ConnectorRow, WebhookRow};
use crate::server::webhooks::{MAX_BODY, NO_MATCH, verify};

/// Where a payload went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The sender's `webhook-id`, or the one given to the payload.
    pub webhook_id: String,
    /// The execution its batch became, once closed (at once for
    /// `batch_window = "0"`).
    pub execution_id: Option<String>,
    /// When its batch closes (or closed).
    pub batch_closes_at: DateTime<Utc>,
    /// The payload had been received before under this `webhook-id`; it was
    /// not stored again.
    pub duplicate: bool,
}

/// Receives a webhook payload into the connector's batch.
#[utoipa::path(post, path = "/connectors/{connector}/webhook", tag = "executions",
    params(
        ("connector" = String, Path, description = "Connector id or api_name; a signed sender without a key addresses it by its id"),
        ("webhook-id" = Option<String>, Header, description = "Standard Webhooks message id (1 to 255 visible ASCII characters); payloads are de-duplicated by it, signed and keyed senders' apart"),
        ("webhook-timestamp" = Option<String>, Header, description = "Standard Webhooks timestamp (Unix seconds)"),
        ("webhook-signature" = Option<String>, Header, description = "Standard Webhooks signatures: `v1,<base64>` separated by spaces"),
        ("Idempotency-Key" = Option<String>, Header, description = "With an API key and no webhook-id: names the payload for retries (the same key and body answer with the first receipt; another body, 422)"),
    ),
    request_body(content = String, content_type = "*/*", description = "Any content type; UTF-8, at most 256 KiB"),
    responses(
        (status = 202, body = Receipt, description = "Stored"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn receive(
    State(app): State<Arc<App>>,
    Path(c): Path<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Receipt>)> {
    let headers = request.headers().clone();
    let querystring = request.uri().query().unwrap_or_default().to_string();
    let body = to_bytes(request.into_body(), MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a webhook body is at most {MAX_BODY} bytes"),
        )
    })?;
    let (row, signed_id) = sender(&app, &c, &headers, &body)?;
    let connector = &row.connector;
    if connector.kind != ConnectorType::Webhook {
        return Err(ApiError::conflict(
            "wrong_connector_type",
            "only webhook connectors take webhooks",
        ));
    }
    if connector.status == ConnectorStatus::Setup {
        return Err(ApiError::conflict(
            "connector_not_operational",
            "the connector is in setup; it takes webhooks once operational (or inactive, which buffers them)",
        ));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|e| {
        ApiError::invalid(
            "invalid_payload",
            format!(
                "a webhook body must be UTF-8 (invalid at byte {})",
                e.utf8_error().valid_up_to()
            ),
            vec![],
        )
    })?;
    // Without [webhook], the default window; a stored connector's window
    // was checked when it was saved.
    let webhook = connector.webhook.clone().unwrap_or_default();
    let window = webhook
        .window()
        .ok_or_else(|| ApiError::internal(format!("batch_window `{}` does not parse", webhook.batch_window)))?;
    // A keyed sender may name its payload for retries with webhook-id or
    // Idempotency-Key.
    let signed = signed_id.is_some();
    let keyed_id = match signed_id {
        Some(id) => Some(id),
        None => match payload_id(&headers, "webhook-id")? {
            Some(id) => Some(id),
            None => payload_id(&headers, "idempotency-key")?,
        },
    };
    let webhook_id = keyed_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let payload = WebhookRow {
        received_at: Utc::now().to_rfc3339(),
        webhook_id: webhook_id.clone(),
        content_type: header(&headers, "content-type").unwrap_or_default(),
        querystring,
        body: text,
    };
    let received = app.batches.receive(&row, &payload, signed, window).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Receipt {
            webhook_id,
            execution_id: received.execution_id,
            batch_closes_at: received.closes_at,
            duplicate: received.duplicate,
        }),
    ))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The connector the sender may post to: by API key, or by a signature
/// (then also the signed `webhook-id`).
///
/// A signed sender addresses the connector by its id, which no other
/// workspace can take. An unknown id, a connector without a secret it may
/// read and a wrong signature are answered alike, so an unsigned request
/// learns nothing about which connectors exist.
fn sender(app: &App, c: &str, headers: &HeaderMap, body: &[u8]) -> ApiResult<(ConnectorRow, Option<String>)> {
    if let Some(key) = key_in(headers) {
        let caller =
            authenticate(app.db.as_ref(), key)?.ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?;
        // Every role but a viewer's may post webhooks to the connectors it
        // reaches.
        caller.require_webhook_sender()?;
        let row = super::connector_of(app, &caller, c)?;
        return Ok((row, None));
    }
    let (Some(id), Some(timestamp), Some(signatures)) = (
        payload_id(headers, "webhook-id")?,
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
    ) else {
        return Err(ApiError::unauthorized(
            "a webhook needs an API key, or a Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)",
        ));
    };
    let (row, secret) = app.batches.signed_target(c)?;
    // Without a secret the signature is still checked, against one nobody
    // holds: the answer and its time are those of a wrong signature.
    let checked = verify(
        secret.as_deref().unwrap_or(UNKNOWN_SECRET),
        &id,
        &timestamp,
        body,
        &signatures,
        Utc::now(),
    );
    match (row, secret, checked) {
        (Some(row), Some(_), Ok(())) => Ok((row, Some(id))),
        (_, _, Err(e)) if e.starts_with("webhook-timestamp") => Err(ApiError::unauthorized(e)),
        (Some(row), Some(_), Err(e)) => {
            if e != NO_MATCH {
                tracing::warn!(connector = %row.id, error = %e, "a webhook signing secret cannot be used");
            }
            Err(ApiError::unauthorized(NO_MATCH))
        }
        _ => Err(ApiError::unauthorized(NO_MATCH)),
    }
}

/// Checked against when the connector has no secret: a signature matching
/// it is still refused.
const UNKNOWN_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A sender's name for its payload (`webhook-id` or `Idempotency-Key`),
/// checked: 1 to 255 visible ASCII characters.
fn payload_id(headers: &HeaderMap, name: &str) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(id) if !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(id.to_string()))
        }
        _ => Err(ApiError::bad_request(format!(
            "{name} must be 1 to 255 visible ASCII characters"
        ))),
    }
}
