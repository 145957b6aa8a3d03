//! Workspace secrets over the API: set (and rotate), list by name, delete.
//! A value goes in and never comes out: no route returns it (see
//! `docs/secrets.md`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use weir_engine::connector::is_identifier;
use weir_engine::error::Problem;

use super::{Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Body, Path, ProblemDocument, Query};
use crate::server::secrets::KEY_VARIABLE;
use crate::server::state::SecretRow;

/// The longest value a secret may hold, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;

/// A secret, by name: never its value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretView {
    /// `[a-z][a-z0-9_]{0,62}`, unique in the workspace.
    pub name: String,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

impl SecretView {
    fn of(row: SecretRow) -> Self {
        Self {
            name: row.name,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The body of a set.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The value (at most 64 KiB); stored sealed, never returned.
    pub value: String,
}

/// Sets a secret (a new one, or a new value: rotation).
#[utoipa::path(put, path = "/secrets/{name}", tag = "secrets", request_body = SecretValue,
    params(("name" = String, Path, description = "The secret's name")),
    responses(
        (status = 201, body = SecretView, description = "Created"),
        (status = 200, body = SecretView, description = "Its value replaced"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, body = ProblemDocument, content_type = "application/problem+json", description = "The server has no secrets key"),
    ))]
pub async fn put(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<SecretValue>,
) -> ApiResult<(StatusCode, Json<SecretView>)> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    let mut problems = Vec::new();
    if !is_identifier(&name) {
        problems.push(Problem::new("name", "must match [a-z][a-z0-9_]{0,62}"));
    }
    if body.value.is_empty() {
        problems.push(Problem::new("value", "must not be empty"));
    } else if body.value.len() > MAX_VALUE {
        problems.push(Problem::new("value", format!("must be at most {MAX_VALUE} bytes")));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(
            "validation_failed",
            "the secret is not valid",
            problems,
        ));
    }
    let key = app.settings.secrets_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets_unavailable",
            format!("the server keeps no secrets until it is started with {KEY_VARIABLE}"),
        )
    })?;
    let sealed = key
        .seal(&caller.workspace_id, &name, &body.value)
        .map_err(ApiError::internal)?;
    let created = app.db.put_secret(&caller.workspace_id, &name, &sealed, Utc::now())?;
    let row = app
        .db
        .secret(&caller.workspace_id, &name)?
        .ok_or_else(|| ApiError::not_found("secret"))?;
    tracing::info!(secret = %name, created, "a workspace secret was set");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(SecretView::of(row))))
}

/// The workspace's secrets, by name: names and times only.
#[utoipa::path(get, path = "/secrets", tag = "secrets", params(PageParams),
    responses(
        (status = 200, body = Page<SecretView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<SecretView>>> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    let secrets = app.db.secrets(&caller.workspace_id)?;
    Ok(Json(page_of(secrets, &params, |s| s.name.clone(), SecretView::of)?))
}

/// Deletes a secret; what uses it stops working (a webhook signed with it
/// is refused).
#[utoipa::path(delete, path = "/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn delete(State(app): State<Arc<App>>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    if app.db.delete_secret(&caller.workspace_id, &name)? {
        tracing::info!(secret = %name, "a workspace secret was deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("secret"))
    }
}
