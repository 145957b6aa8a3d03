//! Workspace secrets over the API: set (and rotate), list by name, delete.
//! A value goes in and never comes out: no route returns it (see
//! `docs/secrets.md`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiResult, Body, Path, ProblemDocument, Query};
use crate::server::state::SecretRow;

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
    let set = app.secrets.set(&caller.workspace_id, &name, &body.value)?;
    let status = if set.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SecretView::of(set.row))))
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
    let secrets = app.secrets.list(&caller.workspace_id)?;
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
    app.secrets.delete(&caller.workspace_id, &name)?;
    Ok(StatusCode::NO_CONTENT)
}
