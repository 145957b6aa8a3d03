//! The web console (docs/console.md): pages under `/` for the people who
//! run connectors — runs live, a run's stages and rejected rows,
//! connectors with their SQL, records, keys.
//!
//! Pages are rendered on the server ([`maud`]) from what the API's
//! handlers answer, called with the signed-in key as their caller: a page
//! and the API it stands on check the same role, workspace and connector
//! limits, in one place. A little plain JavaScript (`assets/console.js`)
//! makes the live parts live (the runs list, a run's stages and log over
//! the API's event stream, the SQL editor's line numbers); every form
//! works without it. Nothing is fetched from elsewhere: the CSS and
//! script are compiled into the binary.
//!
//! # Layout
//!
//! - [`session`]: signing in with a key, the session cookie, CSRF tokens.
//! - [`runs`]: the runs list and a run's page.
//! - [`connectors`]: connectors, a connector's page, its SQL.
//! - [`records`]: objects and their records.
//! - [`admin`]: keys and plugins.

mod admin;
mod connectors;
mod records;
mod runs;
pub mod session;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest, Sha256};
use weir_engine::execution::Status;

use self::session::Session;
use super::App;
use super::auth::Role;
use super::error::ApiError;

/// The console's routes, merged beside `/api/v1`.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/sign-out", post(session::sign_out))
        .route("/assets/{name}", get(asset))
        .route("/runs", get(runs::list))
        .route("/runs/rows", get(runs::rows))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/panel", get(runs::panel))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/again", post(runs::again))
        .route("/runs/{id}/files/{name}", get(runs::download))
        .route("/connectors", get(connectors::list))
        .route("/connectors/{c}", get(connectors::overview))
        .route("/connectors/{c}/status", post(connectors::status))
        .route(
            "/connectors/{c}/run",
            // The file streams to the blob store, held to `max_upload`.
            post(connectors::run).layer(DefaultBodyLimit::disable()),
        )
        .route("/connectors/{c}/sql", get(connectors::sql).post(connectors::save_sql))
        .route("/connectors/{c}/publish", post(connectors::publish))
        .route("/connectors/{c}/versions", get(connectors::versions))
        .route("/connectors/{c}/package", get(connectors::package))
        .route("/records", get(records::objects))
        .route("/records/{object}", get(records::records))
        .route("/admin/keys", get(admin::keys).post(admin::create_key))
        .route("/admin/keys/{id}/revoke", post(admin::revoke_key))
        .route("/admin/plugins", get(admin::plugins))
        .layer(middleware::from_fn(guard))
}

/// Every answer of the console keeps to its own origin (a content security
/// policy with no inline script, no framing); a form posted from another
/// origin is refused before any handler reads it.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !same_origin(&request) {
        return shown(ApiError::forbidden(
            "this form was posted from another site; open the console and send it from there",
        ));
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Whether a request comes from a page of this origin: its `Origin` (sent
/// by browsers with every POST) names this host, and the browser does not
/// say it crossed sites.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Not a browser's form (a script with the session's cookie and
        // token): the CSRF token decides.
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// The stylesheet and the script, compiled in.
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// An asset's address with its content's hash, so that it may be cached
/// for good and a new binary's is fetched anew.
fn versioned(name: &str, body: &str) -> String {
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    format!("/assets/{name}?v={}", &hash[..12])
}

static CSS_URL: LazyLock<String> = LazyLock::new(|| versioned("console.css", CSS));
static JS_URL: LazyLock<String> = LazyLock::new(|| versioned("console.js", JS));

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return shown(ApiError::not_found("asset")),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// The parts of the console, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Runs,
    Connectors,
    Records,
    Admin,
    None,
}

/// A whole page: navigation, the signed-in key and sign-out, then `body`.
fn page(session: Option<&Session>, section: Section, title: &str, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Section| {
        html! {
            li { a href=(href) aria-current=[(section == this).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = session { meta name="csrf-token" content=(s.csrf); }
                title { (title) " · Weir" }
                link rel="stylesheet" href=(CSS_URL.as_str());
                script src=(JS_URL.as_str()) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/runs" { "Weir" }
                    @if let Some(s) = session {
                        nav aria-label="Console" {
                            ul {
                                (link("/runs", "Runs", Section::Runs))
                                (link("/connectors", "Connectors", Section::Connectors))
                                (link("/records", "Records", Section::Records))
                                @if s.caller.role == Role::Admin && s.caller.connectors.is_none() {
                                    (link("/admin/keys", "Admin", Section::Admin))
                                }
                            }
                        }
                        div.who {
                            span { (s.workspace) " · " (s.caller.key_name) " (" (s.caller.role.as_str()) ")" }
                            form method="post" action="/sign-out" {
                                (csrf_field(s))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden field every form of a session carries.
fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// An error as a page: what the API would answer, for a person.
fn shown(error: ApiError) -> Response {
    let status = error.status();
    let problem = error.problem();
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let body = html! {
        div.problem role="alert" {
            p { (problem.detail) }
            @if !problem.errors.is_empty() {
                ul { @for e in &problem.errors { li { code { (e.path) } ": " (e.message) } } }
            }
        }
        p { a href="/runs" { "Back to the runs" } }
    };
    (status, page(None, Section::None, title, body)).into_response()
}

/// What a console handler answers when it cannot do what was asked.
pub struct Shown(ApiError);

impl<E: Into<ApiError>> From<E> for Shown {
    fn from(e: E) -> Self {
        Shown(e.into())
    }
}

impl IntoResponse for Shown {
    fn into_response(self) -> Response {
        shown(self.0)
    }
}

/// A console handler's result.
type Answer<T = Response> = Result<T, Shown>;

/// A time as people read it in a list (UTC, to the second), machine
/// readable in the `datetime` attribute.
fn when(t: &DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S")) } }
}

/// How long from `start` to `end` (or to now), as `1m 05s`.
fn took(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    let Some(start) = start else { return String::new() };
    let end = end.unwrap_or_else(Utc::now);
    let ms = (end - start).num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

/// A status as a badge.
fn badge(status: Status) -> Markup {
    html! { span class={ "badge " (status.as_str()) } { (status.as_str()) } }
}

/// A number with thousands separated.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The characters a part of a query string keeps as they are (RFC 3986's
/// unreserved ones).
const QUERY_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` percent-encoded as a part of a query string.
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_PART).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        let start = Utc::now();
        assert_eq!(
            took(Some(start), Some(start + chrono::TimeDelta::milliseconds(250))),
            "250 ms"
        );
        assert_eq!(
            took(Some(start), Some(start + chrono::TimeDelta::milliseconds(2500))),
            "2.5 s"
        );
        assert_eq!(
            took(Some(start), Some(start + chrono::TimeDelta::seconds(65))),
            "1m 05s"
        );
        assert_eq!(took(None, None), "");
    }

    #[test]
    fn assets_are_named_by_their_content() {
        assert!(CSS_URL.starts_with("/assets/console.css?v="));
        assert_ne!(versioned("a", "x"), versioned("a", "y"));
    }
}
