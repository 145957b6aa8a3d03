//! Signing in to the console with an API key (docs/console.md).
//!
//! A key signs in once; the browser then holds a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` when the request came over
//! TLS) whose hash, the hash of its key and its CSRF token are stored in
//! the state store, so a session works on every process of the server and
//! survives a restart. Every request checks the key again: revoking it
//! ends its sessions. Every form carries the session's CSRF token, checked
//! in constant time before the form is acted on.

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Answer, Section, Shown, encode, page, shown};
use crate::server::App;
use crate::server::auth::{self, Caller, Role};
use crate::server::error::ApiError;
use crate::server::state::SessionRow;

/// The session cookie's name.
const COOKIE: &str = "weir_session";

/// How long a session lasts.
const LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(12);

/// A signed-in browser: the key it signed in with, as the caller of
/// everything it asks.
pub struct Session {
    /// The key's caller.
    pub caller: Caller,
    /// The token its forms carry.
    pub csrf: String,
    /// The workspace's name.
    pub workspace: String,
    token_sha256: String,
}

impl Session {
    /// Refuses a form whose CSRF token is not this session's.
    pub fn check(&self, token: &str) -> Result<(), Shown> {
        let equal: bool = self.csrf.as_bytes().ct_eq(token.as_bytes()).into();
        if equal {
            Ok(())
        } else {
            Err(
                ApiError::forbidden("this form is out of date or was not sent from the console; reload the page")
                    .into(),
            )
        }
    }

    /// Whether the key's role is at least `role` (what a page shows; the
    /// API's handlers still decide).
    pub fn may(&self, role: Role) -> bool {
        self.caller.require(role).is_ok()
    }
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Where a request that needs a session goes without one.
fn to_sign_in(parts: &Parts) -> Response {
    let next = parts.uri.path_and_query().map_or("/runs", |p| p.as_str());
    // A fragment a page fetches has no page to come back to: its page.
    let next = next.strip_suffix("/panel").unwrap_or(next);
    let next = if next.starts_with("/runs/rows") { "/runs" } else { next };
    Redirect::to(&format!("/sign-in?next={}", encode(next))).into_response()
}

impl FromRequestParts<Arc<App>> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(to_sign_in(parts));
        };
        let token_sha256 = auth::hash_secret(token);
        let unavailable = |e: crate::server::state::StateError| shown(e.into());
        let Some(row) = app.db.session(&token_sha256).map_err(unavailable)? else {
            return Err(to_sign_in(parts));
        };
        let Some(caller) = auth::authenticate_hash(app.db.as_ref(), &row.key_sha256).map_err(unavailable)? else {
            return Err(to_sign_in(parts));
        };
        let workspace = app
            .db
            .workspace(&caller.workspace_id)
            .map_err(unavailable)?
            .map_or_else(|| caller.workspace_id.clone(), |w| w.name);
        Ok(Session {
            caller,
            csrf: row.csrf,
            workspace,
            token_sha256,
        })
    }
}

/// `?next=` of the sign-in page.
#[derive(Debug, Default, Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only a path of this site is a place to go after signing in.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/runs",
    }
}

fn sign_in_form(next: &str, error: Option<&str>) -> maud::Markup {
    page(
        None,
        Section::None,
        "Sign in",
        html! {
            form.card.narrow method="post" action="/sign-in" {
                @if let Some(error) = error {
                    p.problem role="alert" id="sign-in-error" { (error) }
                }
                input type="hidden" name="next" value=(next);
                label for="key" { "API key" }
                input #key type="password" name="key" required autocomplete="current-password"
                    autofocus aria-describedby=[error.map(|_| "sign-in-error")];
                p.hint { "An admin, operator or viewer key of your workspace. The console keeps you signed in for 12 hours." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The sign-in page.
pub async fn sign_in_page(Query(q): Query<Next>) -> Response {
    let mut response = sign_in_form(safe_next(q.next.as_deref()), None).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignIn {
    key: String,
    next: Option<String>,
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(ApiError::internal)?;
    Ok(hex::encode(bytes))
}

/// Whether the browser reached the server over TLS (directly, or through a
/// proxy that says so): only then is the cookie marked `Secure`, which a
/// browser would not send back over plain HTTP.
fn over_tls(headers: &HeaderMap) -> bool {
    let says = |name: &str, value: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(value))
    };
    says("x-forwarded-proto", "https") || says("forwarded", "proto=https")
}

/// Checks the key and starts a session.
pub async fn sign_in(State(app): State<Arc<App>>, headers: HeaderMap, Form(form): Form<SignIn>) -> Answer {
    let next = safe_next(form.next.as_deref());
    let refuse = |why: &str| {
        let mut response = (StatusCode::UNAUTHORIZED, sign_in_form(next, Some(why))).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    };
    let key = form.key.trim();
    let Some(caller) = auth::authenticate(app.db.as_ref(), key)? else {
        return refuse("This key is not valid: it is unknown or was revoked.");
    };
    if caller.role == Role::Webhook {
        return refuse("A webhook key only posts webhooks; sign in with a viewer, operator or admin key.");
    }
    let token = random_hex()?;
    let row = SessionRow {
        token_sha256: auth::hash_secret(&token),
        key_sha256: auth::hash_secret(key),
        csrf: random_hex()?,
        expires_at: Utc::now() + LIFETIME,
    };
    app.db.insert_session(&row)?;
    let mut cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        LIFETIME.num_seconds()
    );
    if over_tls(&headers) {
        cookie.push_str("; Secure");
    }
    let mut response = Redirect::to(next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// A form carrying the session's CSRF token.
pub trait Tokened {
    /// The token the form carries.
    fn token(&self) -> &str;
}

/// A form that carries nothing but the token (sign out, cancel, publish).
#[derive(Debug, Deserialize)]
pub struct Token {
    /// The session's CSRF token.
    pub csrf: String,
}

impl Tokened for Token {
    fn token(&self) -> &str {
        &self.csrf
    }
}

/// A form posted by a signed-in browser: its CSRF token is checked before
/// the handler sees it, so no handler of a form can forget to.
pub struct Posted<T> {
    /// The session that posted it.
    pub session: Session,
    /// The form.
    pub form: T,
}

impl<T> axum::extract::FromRequest<Arc<App>> for Posted<T>
where
    T: serde::de::DeserializeOwned + Tokened + Send,
{
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, app: &Arc<App>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, app).await?;
        let Form(form) = Form::<T>::from_request(axum::extract::Request::from_parts(parts, body), app)
            .await
            .map_err(|e| shown(ApiError::bad_request(e.body_text())))?;
        session.check(form.token()).map_err(IntoResponse::into_response)?;
        Ok(Posted { session, form })
    }
}

/// Ends the session and forgets its cookie.
pub async fn sign_out(State(app): State<Arc<App>>, Posted { session, .. }: Posted<Token>) -> Answer {
    app.db.delete_session(&session.token_sha256)?;
    let mut response = Redirect::to("/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("weir_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_places_to_go_after_signing_in() {
        assert_eq!(safe_next(Some("/runs/abc")), "/runs/abc");
        for bad in ["https://evil.example", "//evil.example", "/\\evil.example", "runs"] {
            assert_eq!(safe_next(Some(bad)), "/runs", "{bad}");
        }
        assert_eq!(safe_next(None), "/runs");
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; weir_session=abc; b=2"));
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn the_cookie_is_secure_behind_tls() {
        let mut headers = HeaderMap::new();
        assert!(!over_tls(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_tls(&headers));
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", HeaderValue::from_static("for=1.2.3.4;proto=https"));
        assert!(over_tls(&headers));
    }
}
