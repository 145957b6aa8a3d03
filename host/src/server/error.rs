//! The one error type of the HTTP API: every failure becomes an RFC 9457
//! `application/problem+json` body with a stable `code`. Internal errors are
//! logged with their detail and answered with a generic message, so nothing
//! about the server's insides leaks to a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use weir_engine::error::{Problem, StoreFault};

use super::refusal::{Kind, Refusal};
use super::state::{StateError, StateFault};

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where, e.g. `loads[0].match[1].field`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProblemDocument {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened, for a person.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// Validation problems, each with its path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// SQL line of the problem, for script errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// SQL column of the problem, for script errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// The execution behind the problem (a failed publish dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<serde_json::Value>,
    /// The draft version a refused script was kept as (it stays the draft;
    /// publishing refuses it until it is fixed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_version: Option<u32>,
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    // Boxed: handlers return `Result<_, ApiError>` everywhere, and the
    // success path should not pay for the size of the problem document.
    doc: Box<ProblemDocument>,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            doc: Box::new(ProblemDocument {
                kind: format!("https://weir.dev/problems/{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_string(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.to_string(),
                errors: Vec::new(),
                line: None,
                column: None,
                execution: None,
                draft_version: None,
            }),
        }
    }

    /// Its problem document.
    pub fn problem(&self) -> &ProblemDocument {
        &self.doc
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 for `what` (also the answer for another workspace's resources).
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// 409 with `code`.
    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// 422 with `code` and every problem with its path.
    pub fn invalid(code: &str, detail: impl Into<String>, problems: Vec<Problem>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
        e.doc.errors = problems
            .into_iter()
            .map(|p| FieldError {
                path: p.path,
                message: p.message,
            })
            .collect();
        e
    }

    /// 500; `detail` is logged, not answered. A full disk (507) or a
    /// read-only data directory (503) is answered as what it is: the
    /// client can do nothing about either but wait and retry.
    pub fn internal<E: std::fmt::Display + 'static>(detail: E) -> Self {
        if let Some(fault) = StorageFault::in_value(&detail) {
            tracing::error!(error = %detail, "storage fault");
            return fault.into();
        }
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; the error is in its log",
        )
    }

    /// Adds a SQL position.
    pub fn at(mut self, line: Option<u64>, column: Option<u64>) -> Self {
        self.doc.line = line;
        self.doc.column = column;
        self
    }

    /// Adds the execution behind the problem.
    pub fn with_execution(mut self, execution: serde_json::Value) -> Self {
        self.doc.execution = Some(execution);
        self
    }

    /// Says which draft version kept the refused script.
    pub fn with_draft_version(mut self, version: u32) -> Self {
        self.doc.draft_version = Some(version);
        self
    }

    /// The HTTP status.
    pub fn detail(&self) -> &str {
        &self.doc.detail
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.doc.code
    }
}

/// A fault of the server's own storage, which no request can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The disk (or a quota) is full.
    Full,
    /// The data directory is read-only.
    ReadOnly,
    /// The blob store (a remote object store) does not answer.
    Unavailable,
    /// The state database does not answer.
    DatabaseUnavailable,
}

impl StorageFault {
    /// The fault behind `error` or any of its sources.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<crate::server::blobs::Unavailable>())
                {
                    return Some(Self::Unavailable);
                }
                match io.kind() {
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => return Some(Self::Full),
                    std::io::ErrorKind::ReadOnlyFilesystem => return Some(Self::ReadOnly),
                    _ => {}
                }
            }
            if let Some(state) = e.downcast_ref::<StateError>() {
                match state.kind() {
                    StateFault::Full => return Some(Self::Full),
                    StateFault::ReadOnly => return Some(Self::ReadOnly),
                    StateFault::Unavailable => return Some(Self::DatabaseUnavailable),
                    _ => {}
                }
            }
            if let Some(weir_engine::Error::Store { kind, .. }) = e.downcast_ref::<weir_engine::Error>() {
                match kind {
                    StoreFault::Full => return Some(Self::Full),
                    StoreFault::ReadOnly => return Some(Self::ReadOnly),
                    _ => {}
                }
            }
            next = e.source();
        }
        None
    }

    /// The fault behind a value handed to [`ApiError::internal`], for the
    /// error types that carry one.
    pub fn in_value(value: &dyn std::any::Any) -> Option<Self> {
        if let Some(e) = value.downcast_ref::<std::io::Error>() {
            return Self::of(e);
        }
        if let Some(e) = value.downcast_ref::<StateError>() {
            return Self::of(e);
        }
        if let Some(e) = value.downcast_ref::<weir_engine::error::Error>() {
            return Self::of(e);
        }
        if let Some(e) = value.downcast_ref::<anyhow::Error>() {
            return Self::of(e.as_ref());
        }
        None
    }
}

impl From<StorageFault> for ApiError {
    fn from(fault: StorageFault) -> Self {
        match fault {
            StorageFault::Full => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the server's disk is full: nothing of this request was kept; retry once space is freed",
            ),
            StorageFault::ReadOnly => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_read_only",
                "the server's data directory is read-only: nothing of this request was kept; retry once it is writable",
            ),
            StorageFault::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob_store_unavailable",
                "the server's object store does not answer: nothing of this request was kept; retry later",
            ),
            StorageFault::DatabaseUnavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the server's database does not answer; retry later",
            ),
        }
    }
}

impl From<crate::server::keys::KeyError> for ApiError {
    fn from(e: crate::server::keys::KeyError) -> Self {
        use crate::server::keys::KeyError;
        match e {
            KeyError::Invalid(problems) => ApiError::invalid("validation_failed", "the key is not valid", problems),
            KeyError::ReachesFurther(message) => ApiError::forbidden(message),
            KeyError::Exists => ApiError::conflict("key_exists", "this key already exists"),
            KeyError::NoRandomness(e) => ApiError::internal(e),
            KeyError::State(e) => e.into(),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let r = r.into_detail();
        let status = match r.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::StorageFull => return StorageFault::Full.into(),
            Kind::StorageReadOnly => return StorageFault::ReadOnly.into(),
            Kind::StorageUnavailable => return StorageFault::Unavailable.into(),
            Kind::DatabaseUnavailable => return StorageFault::DatabaseUnavailable.into(),
            // Logged where it was made.
            Kind::Internal => {
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server failed to handle this request; the error is in its log",
                );
            }
        };
        let mut e = if status == StatusCode::UNPROCESSABLE_ENTITY {
            Self::invalid(&r.code, r.detail, r.problems)
        } else {
            Self::new(status, &r.code, r.detail)
        };
        e.doc.line = r.line;
        e.doc.column = r.column;
        e.doc.draft_version = r.draft_version;
        e.doc.execution = r.execution.and_then(|doc| serde_json::to_value(*doc).ok());
        e
    }
}

/// The service errors the API answers as their [`Refusal`].
macro_rules! refused_as {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                Refusal::from(e).into()
            }
        }
    )*};
}

refused_as!(
    crate::server::files::FileError,
    crate::server::plugins::PluginError,
    crate::server::objects::ObjectError,
    crate::server::triggers::CannotRun
);

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(*self.doc)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as R;
        match r {
            R::JsonDataError(e) => ApiError::invalid(
                "validation_failed",
                "the request body does not have the expected shape",
                vec![Problem::new("body", e.body_text())],
            ),
            R::JsonSyntaxError(e) => ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text())),
            R::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ),
            R::BytesRejection(e) => ApiError::new(e.status(), "body_unreadable", e.body_text()),
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", r.body_text()))
    }
}

/// A JSON body whose rejections are problem+json.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Body<T>(pub T);

/// A query string whose rejections are problem+json.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path parameters whose rejections are problem+json.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(e: ApiError) -> (u16, String) {
        (e.status.as_u16(), e.doc.code.clone())
    }

    #[test]
    fn storage_faults_are_answered_as_what_they_are_wherever_they_are_wrapped() {
        use std::io::{Error, ErrorKind};
        let full = (507, "storage_full".to_string());
        let read_only = (503, "storage_read_only".to_string());
        assert_eq!(answered(ApiError::internal(Error::from(ErrorKind::StorageFull))), full);
        assert_eq!(
            answered(ApiError::internal(Error::from(ErrorKind::QuotaExceeded))),
            full
        );
        assert_eq!(
            answered(ApiError::internal(Error::from(ErrorKind::ReadOnlyFilesystem))),
            read_only
        );
        let state = |kind| StateError::Store {
            kind,
            source: "the backend's words".into(),
        };
        assert_eq!(answered(state(StateFault::Full).into()), full);
        assert_eq!(answered(ApiError::internal(state(StateFault::ReadOnly))), read_only);
        let records = |kind| weir_engine::Error::store(kind, "the backend's words");
        assert_eq!(answered(ApiError::internal(records(StoreFault::Full))), full);
        assert_eq!(answered(ApiError::internal(records(StoreFault::ReadOnly))), read_only);
        assert_eq!(
            answered(ApiError::internal(records(StoreFault::Unavailable))),
            (500, "internal".to_string())
        );
        let wrapped = anyhow::Error::new(Error::from(ErrorKind::StorageFull)).context("keeping webhooks.jsonl");
        assert_eq!(answered(ApiError::internal(wrapped)), full);
        let engine = weir_engine::error::Error::io("writing", Error::from(ErrorKind::StorageFull));
        assert_eq!(answered(ApiError::internal(engine)), full);
        // Anything else stays a plain 500 that says nothing of the inside.
        assert_eq!(
            answered(ApiError::internal(Error::from(ErrorKind::PermissionDenied))),
            (500, "internal".to_string())
        );
        assert_eq!(answered(ApiError::internal("a string")), (500, "internal".to_string()));
    }
}
