//! API keys of the caller's workspace (admin only). A secret is shown once,
//! in the answer that creates it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Body, Path, ProblemDocument, Query};
use crate::server::state::KeyRow;

/// A key as listed (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Key id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Connectors the key is limited to.
    pub connectors: Option<Vec<String>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyView {
    fn of(row: KeyRow) -> Self {
        Self {
            role: row.role.parse().unwrap_or(Role::Viewer),
            id: row.id,
            name: row.name,
            connectors: row.connectors,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// A new key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Limit the key to these connectors (ids or api_names).
    #[serde(default)]
    pub connectors: Option<Vec<String>>,
}

/// A created key with its secret (shown only here).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// The secret to present as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// The workspace's keys, oldest first.
#[utoipa::path(get, path = "/keys", tag = "keys", params(PageParams),
    responses(
        (status = 200, body = Page<KeyView>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<KeyView>>> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    let keys = app.keys.list(&caller.workspace_id)?;
    Ok(Json(page_of(keys, &params, |k| k.id.clone(), KeyView::of)?))
}

/// Creates a key; its secret is in this answer only.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = NewKeyRequest,
    responses(
        (status = 201, body = CreatedKey),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(request): Body<NewKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    caller.require(Role::Admin)?;
    let key = app
        .keys
        .create(&caller, &request.name, request.role, request.connectors)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: KeyView::of(key.row),
            secret: key.secret,
        }),
    ))
}

/// Revokes a key; it stops working at once.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn revoke(State(app): State<Arc<App>>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    if app.keys.revoke(&caller.workspace_id, &id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("key"))
    }
}
