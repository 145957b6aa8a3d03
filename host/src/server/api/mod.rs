//! The routes of `/api/v1` (SPEC §6.3) and the OpenAPI document built from
//! them: every route is registered through `utoipa-axum`, which takes the
//! path, method and schemas from the handler's `#[utoipa::path]`, so the
//! document served at `/api/v1/openapi.json` cannot drift from the router.
//!
//! Handlers are thin: they check the caller's right, parse the request,
//! call the state store or the queue, and shape the answer. Every error is
//! an [`ApiError`] (problem+json).

pub mod connectors;
pub mod events;
pub mod executions;
pub mod files;
pub mod keys;
pub mod objects;
pub mod package;
pub mod plugins;
pub mod preview;
pub mod runs;
pub mod secrets;
mod system;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::App;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::metrics::RequestLabel;
use super::state::ConnectorRow;

/// Largest `?limit=` of a list.
pub const MAX_LIMIT: usize = 500;
/// `?limit=` when none is given.
pub const DEFAULT_LIMIT: usize = 50;

/// A page of a list, in the list's order (newest first, unless the route
/// says otherwise).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `?limit=&cursor=` of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The limit, checked.
    pub fn limit(&self) -> ApiResult<usize> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
            Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!("limit must be at most {MAX_LIMIT}"))),
            Some(n) => Ok(n),
        }
    }
}

/// Builds a page from `limit + 1` fetched items.
pub fn page<T, R>(mut rows: Vec<R>, limit: usize, cursor_of: impl Fn(&R) -> String, view: impl Fn(R) -> T) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more { rows.last().map(&cursor_of) } else { None };
    Page {
        data: rows.into_iter().map(view).collect(),
        next_cursor,
    }
}

/// A page of a list read whole (keys, objects, plugins, SQL versions:
/// lists a workspace keeps short), in the order of `key`: the items whose
/// key comes after the cursor.
pub fn page_of<T, R>(
    mut rows: Vec<R>,
    params: &PageParams,
    key: impl Fn(&R) -> String,
    view: impl Fn(R) -> T,
) -> ApiResult<Page<T>> {
    let limit = params.limit()?;
    rows.sort_by_key(&key);
    if let Some(cursor) = &params.cursor {
        rows.retain(|r| key(r).as_str() > cursor.as_str());
    }
    rows.truncate(limit + 1);
    Ok(page(rows, limit, key, view))
}

/// An optional JSON body: none (or only whitespace) is `T::default()`;
/// anything else must be `shape`.
pub fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8], shape: &str) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "validation_failed",
            format!("the body must be {shape} or empty: {e}"),
            vec![],
        )
    })
}

/// The connector `{connector}` (id or api_name) of the caller's workspace,
/// refusing keys limited to other connectors.
pub fn connector_of(app: &App, caller: &Caller, id_or_name: &str) -> ApiResult<ConnectorRow> {
    Ok(app.connectors.find(caller, id_or_name)?)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weir",
        description = "SmartConnectors: trigger runs, watch them, cancel them, manage connectors, SQL, objects and records."
    ),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "system", description = "Liveness, metrics, this document"),
        (name = "keys", description = "API keys of the workspace"),
        (name = "objects", description = "Objects and their records"),
        (name = "files", description = "Uploaded files"),
        (name = "connectors", description = "Connectors and their SQL"),
        (name = "plugins", description = "Wasm transform plugins published as name@version"),
        (name = "secrets", description = "Workspace secrets: set, rotate, list by name, delete; never read back"),
        (name = "executions", description = "Runs: trigger, status, cancel, logs, artifacts"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-KEY"))),
        );
    }
}

/// The routes with their OpenAPI document. A request to one of them
/// takes at most `request_timeout`, except a request that sends a file:
/// its body is held to the upload pace instead.
pub fn api(request_timeout: Duration) -> OpenApiRouter<Arc<App>> {
    let routes = OpenApiRouter::new()
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(objects::list, objects::create))
        .routes(routes!(objects::get, objects::update))
        .routes(routes!(objects::records))
        .routes(routes!(objects::record))
        .routes(routes!(files::download))
        .routes(routes!(files::delete))
        .routes(routes!(plugins::list))
        .routes(routes!(secrets::list))
        .routes(routes!(secrets::put, secrets::delete))
        .routes(routes!(connectors::list, connectors::create))
        .routes(routes!(connectors::get, connectors::update, connectors::delete))
        .routes(routes!(connectors::sql))
        .routes(routes!(connectors::save_draft))
        .routes(routes!(connectors::publish))
        .routes(routes!(connectors::versions))
        .routes(routes!(connectors::version))
        .routes(routes!(preview::preview))
        .routes(routes!(package::dev_package))
        .routes(unlimited(routes!(webhooks::receive)))
        .routes(routes!(executions::list))
        .routes(routes!(executions::get, executions::delete))
        .routes(routes!(executions::logs))
        .routes(routes!(events::events))
        .routes(routes!(executions::cancel))
        .routes(routes!(executions::input))
        .routes(routes!(executions::output))
        .routes(routes!(executions::report))
        .routes(routes!(executions::rejected))
        .routes(routes!(executions::sql))
        .routes(routes!(executions::notifications))
        .routes(routes!(executions::redeliver))
        // Every route above, and none below.
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout_or_default(request_timeout),
        ))
        // Routes that send a file: the body streams to disk, limited by
        // `max_upload` and held to `upload_min_rate` there rather than to
        // a total time, so a large file on a slow but steady link arrives
        // whole.
        .routes(unlimited(routes!(files::upload)))
        .routes(unlimited(routes!(plugins::publish)))
        .routes(unlimited(routes!(package::push)))
        .routes(unlimited(routes!(runs::trigger)));
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", routes)
}

/// Lifts the JSON body limit from a route whose body has a limit of its
/// own (`max_upload`, a webhook's `max_payload`), and answers a request it
/// refuses before reading its body only after that body ([`drain_unread`]).
fn unlimited(
    (schemas, paths, method_router): utoipa_axum::router::UtoipaMethodRouter<Arc<App>>,
) -> utoipa_axum::router::UtoipaMethodRouter<Arc<App>> {
    let method_router = method_router
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(drain_unread));
    (schemas, paths, method_router)
}

/// 408 for a request whose body took longer than `request_timeout`.
pub fn request_timed_out() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request took longer than the server's request_timeout",
    )
}

/// What of a refused request's body is read before its answer.
const DRAIN_BYTES: usize = 16 << 20;
/// How long a refused request's body is read before its answer.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A request refused before its body was read (no key, a wrong role, a bad
/// name) is answered once the rest of its body, up to [`DRAIN_BYTES`] in
/// [`DRAIN_TIME`], has been read and dropped. A connection closed with
/// bytes unread is reset, and a client still sending its file would see
/// the reset instead of the answer. Past the bound the connection closes
/// as before.
async fn drain_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // A client that waits for `100 Continue` sends nothing until the body
    // is read: if the handler never read it, there is nothing to drain.
    let waits_to_send = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let unread = Arc::new(std::sync::Mutex::new(Some(body.into_data_stream())));
    let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handed = axum::body::Body::from_stream(Unread(unread.clone(), polled.clone()));
    let response = next.run(Request::from_parts(parts, handed)).await;
    let rest = unread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if waits_to_send && !polled.load(std::sync::atomic::Ordering::Relaxed) {
        return response;
    }
    if let Some(mut rest) = rest {
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        let mut drained = 0;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, rest.next()).await {
            drained += chunk.len();
            if drained > DRAIN_BYTES {
                break;
            }
        }
    }
    response
}

/// A request body the handler reads, which [`drain_unread`] takes back
/// when the handler is done; the flag says whether the handler read it.
struct Unread(
    Arc<std::sync::Mutex<Option<axum::body::BodyDataStream>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl futures::Stream for Unread {
    type Item = Result<axum::body::Bytes, axum::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match inner.as_mut() {
            Some(stream) => std::pin::Pin::new(stream).poll_next(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// The whole router: the API, `/api/v1/openapi.json`, the console, limits,
/// timeouts, request tracing and metrics.
pub fn router(app: Arc<App>) -> Router {
    let (router, openapi) = api(app.settings.request_timeout).split_for_parts();
    let openapi = Arc::new(openapi);
    let max_json = app.settings.max_json_body;
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .merge(super::console::router())
        .fallback(|| async { ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(max_json))
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .layer(middleware::map_response(bare_errors_as_problems))
        .layer(middleware::from_fn_with_state(app.clone(), hide_paths))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id, method = %request.method(), path = %request.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        // Outermost: every request has an id (the client's, or a new one),
        // logged with it and echoed in the answer.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(app)
}

/// The largest problem document whose paths are hidden; ours are far
/// smaller.
const MAX_PROBLEM: usize = 1 << 20;

/// Problem documents never show where the server keeps its data
/// ([`App::hide_paths`]).
async fn hide_paths(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    // A problem already, or `/healthz` saying which store does not answer.
    let is_problem = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/problem+json") || v.as_bytes().starts_with(b"application/health+json")
    });
    if !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PROBLEM).await else {
        return ApiError::internal("a problem document was too large to answer").into_response();
    };
    let text = app.hide_paths(&String::from_utf8_lossy(&bytes));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// Errors answered beneath the handlers (a method the route does not take,
/// a request past its time) come without a body of ours: they get a
/// problem document like every other error, keeping their headers (`Allow`).
async fn bare_errors_as_problems(response: Response) -> Response {
    let status = response.status();
    // A problem already, or `/healthz` saying which store does not answer.
    let is_problem = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/problem+json") || v.as_bytes().starts_with(b"application/health+json")
    });
    // A console page says what went wrong in HTML of its own.
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_problem || is_page || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take this method; `Allow` lists the ones it takes",
        StatusCode::REQUEST_TIMEOUT => "the request took longer than the server's request_timeout",
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    let (mut parts, _) = response.into_parts();
    let (problem, body) = ApiError::new(status, &code, detail).into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(content_type) = problem.headers.get(header::CONTENT_TYPE) {
        parts.headers.insert(header::CONTENT_TYPE, content_type.clone());
    }
    Response::from_parts(parts, body)
}

fn timeout_or_default(t: Duration) -> Duration {
    if t.is_zero() { Duration::from_secs(120) } else { t }
}

async fn count_requests(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    app.metrics
        .requests
        .get_or_create(&RequestLabel { method, class })
        .inc();
    response
}
