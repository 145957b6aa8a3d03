//! Admin: the workspace's keys (a new key's secret shown once, revoking)
//! and its plugins.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{Posted, Session, Token, Tokened};
use super::{Answer, Section, count, csrf_field, page, when};
use crate::server::App;
use crate::server::api::keys::{self as api_keys, CreatedKey, NewKeyRequest};
use crate::server::api::plugins as api_plugins;
use crate::server::api::{self, PageParams};
use crate::server::auth::Role;
use crate::server::error::{self, ApiError, Body};

fn all() -> PageParams {
    PageParams {
        limit: Some(api::MAX_LIMIT),
        cursor: None,
    }
}

fn tabs(this: &str) -> Markup {
    html! {
        nav.tabs aria-label="Admin" { ul {
            li { a href="/admin/keys" aria-current=[(this == "keys").then_some("page")] { "Keys" } }
            li { a href="/admin/plugins" aria-current=[(this == "plugins").then_some("page")] { "Plugins" } }
        } }
    }
}

async fn keys_page(app: Arc<App>, session: &Session, created: Option<CreatedKey>, error: Option<ApiError>) -> Answer {
    let keys = api_keys::list(State(app), session.caller.clone(), error::Query(all()))
        .await?
        .0
        .data;
    let status = error.as_ref().map_or(StatusCode::OK, ApiError::status);
    let content = html! {
        (tabs("keys"))
        @if let Some(created) = &created {
            div.note role="status" {
                p { "Key " strong { (created.key.name) } " created. Copy its secret now: it is not shown again." }
                p { code #secret.copy { (created.secret) } }
            }
        }
        @if let Some(e) = &error {
            div.problem #key-error role="alert" {
                p { (e.problem().detail) }
                @if !e.problem().errors.is_empty() { ul { @for f in &e.problem().errors { li { code { (f.path) } ": " (f.message) } } } }
            }
        }
        form.card #new-key method="post" action="/admin/keys" {
            h2 { "New key" }
            (csrf_field(session))
            label for="name" { "Name" }
            input #name type="text" name="name" required;
            label for="role" { "Role" }
            select #role name="role" {
                @for r in [Role::Viewer, Role::Operator, Role::Admin, Role::Webhook] { option value=(r.as_str()) { (r.as_str()) } }
            }
            label for="connectors" { "Limited to connectors (api names, comma separated; empty for all)" }
            input #connectors type="text" name="connectors";
            button type="submit" { "Create key" }
        }
        h2 { "Keys" }
        div.scroll { table {
            caption.visually-hidden { "Keys of the workspace" }
            thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Connectors" } th scope="col" { "Created (UTC)" } th scope="col" { "State" } } }
            tbody { @for k in &keys { tr {
                td { (k.name) }
                td { (k.role.as_str()) }
                td { @match &k.connectors { Some(list) => (list.join(", ")), None => "all" } }
                td { (when(&k.created_at)) }
                td {
                    @if let Some(t) = &k.revoked_at { "revoked " (when(t)) }
                    @else if k.id == session.caller.key_id { "this session's key" }
                    @else {
                        form method="post" action={ "/admin/keys/" (k.id) "/revoke" } {
                            (csrf_field(session))
                            button.danger type="submit" aria-label={ "Revoke " (k.name) } { "Revoke" }
                        }
                    }
                }
            } } }
        } }
    };
    let mut response = (status, page(Some(session), Section::Admin, "Keys", content)).into_response();
    // A new key's secret is on this page: no cache keeps it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The keys page.
pub async fn keys(State(app): State<Arc<App>>, session: Session) -> Answer {
    keys_page(app, &session, None, None).await
}

/// The new key form.
#[derive(Debug, Deserialize)]
pub struct KeyForm {
    csrf: String,
    name: String,
    role: String,
    #[serde(default)]
    connectors: String,
}

impl Tokened for KeyForm {
    fn token(&self) -> &str {
        &self.csrf
    }
}

/// Makes a key and shows its secret, once.
pub async fn create_key(State(app): State<Arc<App>>, Posted { session, form }: Posted<KeyForm>) -> Answer {
    let role = form
        .role
        .parse::<Role>()
        .map_err(|why| ApiError::invalid("validation_failed", why, vec![]))?;
    let connectors: Vec<String> = form
        .connectors
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let request = NewKeyRequest {
        name: form.name,
        role,
        connectors: (!connectors.is_empty()).then_some(connectors),
    };
    match api_keys::create(State(app.clone()), session.caller.clone(), Body(request)).await {
        Ok((_, created)) => keys_page(app, &session, Some(created.0), None).await,
        Err(e) => keys_page(app, &session, None, Some(e)).await,
    }
}

/// Revokes a key.
pub async fn revoke_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted<Token>,
) -> Answer {
    api_keys::revoke(State(app), session.caller.clone(), error::Path(id)).await?;
    Ok(Redirect::to("/admin/keys").into_response())
}

/// The plugins page.
pub async fn plugins(State(app): State<Arc<App>>, session: Session) -> Answer {
    // Only admins see the admin pages; the API lets viewers list plugins.
    session.caller.require(Role::Admin)?;
    let plugins = api_plugins::list(State(app), session.caller.clone(), error::Query(all()))
        .await?
        .0
        .data;
    let content = html! {
        (tabs("plugins"))
        @if plugins.is_empty() { p { "No plugins published. Publish one with " code { "POST /api/v1/plugins" } " or in a dev package." } }
        @else {
            div.scroll { table {
                caption.visually-hidden { "Plugins of the workspace" }
                thead { tr { th scope="col" { "Plugin" } th scope="col" { "Size (bytes)" } th scope="col" { "sha256" } th scope="col" { "Published (UTC)" } } }
                tbody { @for p in &plugins { tr {
                    td { code { (p.reference) } }
                    td.num { (count(p.size)) }
                    td { code.hash { (p.sha256) } }
                    td { (when(&p.created_at)) }
                } } }
            } }
        }
    };
    Ok(page(Some(&session), Section::Admin, "Plugins", content).into_response())
}
