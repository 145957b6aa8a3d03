//! **Trigger run** (SPEC §6.3): a file upload (multipart `file`, or a raw
//! body with `?filename=`) or a stored file (`{"source_file_id": …}`)
//! becomes a queued execution of the connector's live script (a dry run
//! without a live script runs the draft).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_engine::error::Problem;
use weir_engine::execution::{Execution, TriggerType};

use super::connector_of;
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Path, ProblemDocument, Query};
use crate::server::executions::{Started, Trigger};
use crate::server::state::{FileRow, IdempotencyKey};
use crate::server::triggers::Version;

/// `?dry_run=&filename=&parameters=` of a trigger.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TriggerParams {
    /// Do everything except writing records.
    #[serde(default)]
    pub dry_run: bool,
    /// The name of a raw-body upload.
    pub filename: Option<String>,
    /// For a run on an uploaded file: the run's parameters as a JSON
    /// object, e.g. `{"default_country":"NO"}` (URL-encoded); a JSON body
    /// gives them as `parameters` instead.
    pub parameters: Option<String>,
}

impl TriggerParams {
    /// `?parameters=` read as a JSON object.
    fn parameters(&self) -> ApiResult<BTreeMap<String, serde_json::Value>> {
        match &self.parameters {
            None => Ok(BTreeMap::new()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                ApiError::invalid(
                    "invalid_parameters",
                    "`?parameters=` must be a JSON object of the run's parameters",
                    vec![Problem::new("parameters", e.to_string())],
                )
            }),
        }
    }
}

/// A run on a stored file, with parameters over the connector's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    source_file_id: String,
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
}

/// The `Idempotency-Key` of a request, checked: 1 to 255 visible ASCII
/// characters.
pub fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// What identifies a trigger for its idempotency key: the connector, the
/// query (`dry_run`, `filename`) and the input file's content.
fn fingerprint(
    connector_id: &str,
    params: &TriggerParams,
    file: &FileRow,
    parameters: &BTreeMap<String, serde_json::Value>,
) -> String {
    let mut h = Sha256::new();
    for part in [
        "runs",
        connector_id,
        if params.dry_run { "dry" } else { "wet" },
        params.filename.as_deref().unwrap_or_default(),
        &file.sha256,
    ] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    // Only a trigger with parameters adds them: a key first used before
    // triggers had parameters still names the same request.
    if !parameters.is_empty() {
        let part = serde_json::to_string(parameters).unwrap_or_default();
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The header a client names a retryable request with.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// 202 with the execution and its `Location`; a replayed retry says so in
/// `Idempotent-Replayed`.
pub fn accepted_start(started: &Started) -> Response {
    let mut response = accepted(&started.doc);
    if started.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// 202 with the execution and its `Location`.
pub fn accepted(doc: &Execution) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(doc)).into_response();
    if let Ok(v) = HeaderValue::from_str(&doc.links.self_) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn is_json(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Triggers a run: multipart `file`, a raw body with `?filename=`, or JSON
/// `{"source_file_id": …}`. Answers 202 with the queued execution.
#[utoipa::path(post, path = "/connectors/{connector}/runs", tag = "executions",
    params(("connector" = String, Path, description = "Connector id or api_name"), TriggerParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Names the request for retries: the same key with the same request answers with the execution it first created; with a different request, 422")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The input file's bytes with ?filename=, or multipart/form-data with a `file` part, or application/json {\"source_file_id\": \"…\"}"),
    responses(
        (status = 202, body = Execution, description = "The queued execution (for a retry, the one its Idempotency-Key created, as it is now)",
            headers(("Location" = String, description = "The execution"),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is a retry's"))),
        (status = 400, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn trigger(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<TriggerParams>,
    request: Request,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let row = connector_of(&app, &caller, &c)?;
    let key = idempotency_key(request.headers())?;
    let mut parameters = params.parameters()?;
    let file = if is_json(&request) && params.filename.is_none() {
        // The route streams files, so no request_timeout wraps it: a JSON
        // body is held to it here.
        let bytes = tokio::time::timeout(
            app.settings.request_timeout,
            to_bytes(request.into_body(), app.settings.max_json_body),
        )
        .await
        .map_err(|_| super::request_timed_out())?
        .map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
        let source: SourceFile = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(
                "validation_failed",
                format!("a JSON body names a stored file as {{\"source_file_id\": \"…\", \"parameters\": {{…}}}}: {e}"),
                vec![],
            )
        })?;
        if !source.parameters.is_empty() {
            if !parameters.is_empty() {
                return Err(ApiError::invalid(
                    "invalid_parameters",
                    "give the run's parameters in the body or in `?parameters=`, not both",
                    vec![],
                ));
            }
            parameters = source.parameters;
        }
        super::files::file_of(&app, &caller, &source.source_file_id)?.ok_or_else(|| {
            ApiError::invalid(
                "unknown_file",
                format!("there is no file `{}`", source.source_file_id),
                vec![],
            )
        })?
    } else {
        super::files::receive(&app, &caller, params.filename.clone(), request).await?
    };
    let key = key.map(|key| IdempotencyKey {
        fingerprint: fingerprint(&row.id, &params, &file, &parameters),
        key,
    });
    if let Some(key) = &key
        && let Some(started) = app.executions.retried(&row.id, key)?
    {
        return Ok(accepted_start(&started));
    }
    let trigger = Trigger {
        version: Version::Live,
        dry_run: params.dry_run,
        kind: TriggerType::FileUpload,
    };
    let started = app
        .executions
        .start(&caller, &row, trigger, Some(file), key.as_ref(), &parameters)?;
    Ok(accepted_start(&started))
}
