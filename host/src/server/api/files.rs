//! Uploaded files: a raw body with `Content-Type` and `?filename=`, or a
//! multipart form with a `file` part. Files are stored by content hash; the
//! hash is the file's id.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::blobs::{Download, UploadError};
use crate::server::error::{ApiError, ApiResult, Path, ProblemDocument, Query};
use crate::server::state::{FileDeletion, FileRow};

/// A stored file.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileView {
    /// The file's id (its sha256).
    pub id: String,
    /// sha256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Name as uploaded.
    pub name: String,
    /// Content type as uploaded.
    pub content_type: String,
    /// First upload.
    pub created_at: DateTime<Utc>,
}

impl FileView {
    /// The view of a stored file.
    pub fn of(row: FileRow) -> Self {
        Self {
            id: row.sha256.clone(),
            sha256: row.sha256,
            size: row.size,
            name: row.name,
            content_type: row.content_type,
            created_at: row.created_at,
        }
    }
}

/// `?filename=` of a raw upload.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// The file's name (its extension helps format detection).
    pub filename: Option<String>,
}

/// The API error of a failed upload.
pub fn upload_error(e: UploadError) -> ApiError {
    match e {
        UploadError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the upload is larger than the limit of {limit} bytes"),
        ),
        UploadError::Body(m) => ApiError::bad_request(format!("the upload was interrupted: {m}")),
        UploadError::TooSlow(pace) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_too_slow",
            format!(
                "the upload sent less than {} bytes in {} (the server's upload_min_rate over \
                 upload_rate_window); it was let go",
                pace.bytes,
                humantime::format_duration(pace.window)
            ),
        ),
        UploadError::Io(e) => ApiError::internal(e),
    }
}

/// The longest file name kept, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Keeps a file name safe to show and to use as a table name source: its
/// last path component, without control or bidirectional formatting
/// characters, never `.` or `..`, at most [`MAX_NAME_BYTES`] (shortened
/// before its extension).
fn clean_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = last.chars().filter(|&c| !c.is_control() && !is_format(c)).collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().all(|c| c == '.') {
        return "upload".into();
    }
    if cleaned.len() <= MAX_NAME_BYTES {
        return cleaned.to_string();
    }
    let (stem, extension) = match cleaned.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, &cleaned[stem.len()..]),
        _ => (cleaned, ""),
    };
    let mut end = MAX_NAME_BYTES - extension.len();
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{extension}", &stem[..end])
}

/// Invisible characters that reorder or hide text (Unicode format
/// characters: bidirectional marks, embeddings, overrides and isolates,
/// zero-width characters, the byte-order mark).
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Receives the file of a request (multipart `file`, or a raw body named
/// by `filename`) into the workspace's files.
pub async fn receive(
    app: &Arc<App>,
    caller: &Caller,
    filename: Option<String>,
    request: Request,
) -> ApiResult<FileRow> {
    Ok(receive_form(app, caller, filename, request, |_| Ok(())).await?.0)
}

/// The most bytes of a form field before a multipart form's `file`.
const MAX_FIELD: usize = 64 << 10;
/// The most form fields before a multipart form's `file`.
const MAX_FIELDS: usize = 32;

/// [`receive`], with the text fields a multipart form sends before its
/// `file` (a form's options, its CSRF token): `check` is given them before
/// any byte of the file is read, and may refuse the request.
pub async fn receive_form(
    app: &Arc<App>,
    caller: &Caller,
    filename: Option<String>,
    request: Request,
    check: impl FnOnce(&BTreeMap<String, String>) -> ApiResult<()>,
) -> ApiResult<(FileRow, BTreeMap<String, String>)> {
    let workspace_id = caller.workspace_id.as_str();
    let limit = app.settings.max_upload;
    let mut fields = BTreeMap::new();
    let (name, content_type, (staged, stored)) = if is_multipart(request.headers()) {
        let mut form = Multipart::from_request(request, app)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {}", e.body_text())))?;
        // The parts before `file` are not paced as the file is: they get
        // request_timeout, all of them together.
        let deadline = tokio::time::Instant::now() + app.settings.request_timeout;
        let bad = |e: axum::extract::multipart::MultipartError| {
            ApiError::bad_request(format!("bad multipart body: {}", e.body_text()))
        };
        loop {
            let field = tokio::time::timeout_at(deadline, form.next_field())
                .await
                .map_err(|_| super::request_timed_out())?
                .map_err(bad)?;
            let Some(mut field) = field else {
                return Err(ApiError::bad_request("the multipart form has no `file` part"));
            };
            if field.name() != Some("file") {
                let key = field.name().unwrap_or_default().to_string();
                let mut value = Vec::new();
                while let Some(chunk) = tokio::time::timeout_at(deadline, field.chunk())
                    .await
                    .map_err(|_| super::request_timed_out())?
                    .map_err(bad)?
                {
                    value.extend_from_slice(&chunk);
                    if value.len() > MAX_FIELD {
                        return Err(ApiError::bad_request(format!(
                            "the form field `{key}` is longer than {MAX_FIELD} bytes"
                        )));
                    }
                }
                if fields.len() >= MAX_FIELDS {
                    return Err(ApiError::bad_request(format!(
                        "the form has more than {MAX_FIELDS} fields before `file`"
                    )));
                }
                fields.insert(key, String::from_utf8_lossy(&value).into_owned());
                continue;
            }
            check(&fields)?;
            let name = clean_name(field.file_name().or(filename.as_deref()).unwrap_or("upload"));
            let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
            let received = app.blobs.receive(field, limit).await.map_err(upload_error)?;
            break (name, content_type, received);
        }
    } else {
        check(&fields)?;
        let Some(name) = filename else {
            return Err(ApiError::bad_request(
                "a raw upload needs ?filename= (or send a multipart form with a `file` part)",
            ));
        };
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let stream = request.into_body().into_data_stream();
        let received = app.blobs.receive(stream, limit).await.map_err(upload_error)?;
        (clean_name(&name), content_type, received)
    };
    if stored.size == 0 {
        return Err(ApiError::invalid(
            "empty_file",
            "the uploaded file is empty",
            vec![weir_engine::error::Problem::new("file", "has no bytes")],
        ));
    }
    let file = app
        .files
        .keep_upload(workspace_id, &caller.key_id, staged, stored, name, content_type)
        .await?;
    Ok((file, fields))
}

/// Uploads a file: a raw body with `?filename=`, or multipart `file`.
#[utoipa::path(post, path = "/files", tag = "files",
    params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes (or multipart/form-data with a `file` part)"),
    responses(
        (status = 201, body = FileView),
        (status = 400, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn upload(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<UploadParams>,
    request: Request,
) -> ApiResult<(StatusCode, Json<FileView>)> {
    caller.require(Role::Operator)?;
    let row = receive(&app, &caller, params.filename, request).await?;
    Ok((StatusCode::CREATED, Json(FileView::of(row))))
}

/// A file of the caller's workspace that the caller reaches
/// ([`crate::server::files::Files::reached`]); one out of reach is
/// answered as missing.
pub fn file_of(app: &App, caller: &Caller, id: &str) -> ApiResult<Option<FileRow>> {
    Ok(app.files.reached(caller, id)?)
}

/// Deletes a file of the workspace, unless a connector uses it as its
/// sample or an execution that has not ended reads it (409 `file_in_use`).
/// Executions that read it keep their documents; their input is gone.
/// The content leaves the disk once no workspace holds it.
#[utoipa::path(delete, path = "/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id (sha256)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn delete(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    file_of(&app, &caller, &id)?.ok_or_else(|| ApiError::not_found("file"))?;
    let deletion = app.files.delete(&caller.workspace_id, &id).await?;
    match deletion {
        FileDeletion::Deleted => Ok(StatusCode::NO_CONTENT),
        FileDeletion::InUse(what) => Err(ApiError::conflict("file_in_use", format!("the file is kept: {what}"))),
        FileDeletion::Missing => Err(ApiError::not_found("file")),
    }
}

/// Streams a stored object with its name and type.
pub fn send(download: Download, name: &str, content_type: &str) -> Response {
    let size = download.size;
    let mut response = RawBody::from_stream(download.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// Downloads a file.
#[utoipa::path(get, path = "/files/{id}/download", tag = "files",
    params(("id" = String, Path, description = "File id (sha256)")),
    responses(
        (status = 200, body = Vec<u8>, content_type = "*/*", description = "The file, with the content type it was uploaded with"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn download(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let row = file_of(&app, &caller, &id)?.ok_or_else(|| ApiError::not_found("file"))?;
    let download = app
        .files
        .download(&row)
        .await?
        .ok_or_else(|| ApiError::not_found("file"))?;
    Ok(send(download, &row.name, &row.content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_keeps_only_what_is_safe_to_show() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\Users\\a\\orders.csv"), "orders.csv");
        for dots in [".", "..", "...", " .. ", "a/..", ""] {
            assert_eq!(clean_name(dots), "upload", "{dots:?}");
        }
        assert_eq!(clean_name("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(clean_name("a\u{200B}b\u{FEFF}\u{2066}.csv\u{2069}"), "ab.csv");
        let long = format!("{}.xlsx", "é".repeat(2500));
        let short = clean_name(&long);
        assert!(short.len() <= MAX_NAME_BYTES && short.ends_with("é.xlsx"), "{short}");
        let no_extension = clean_name(&"n".repeat(5000));
        assert_eq!(no_extension.len(), MAX_NAME_BYTES);
    }
}
