//! Objects of the workspace and their records, through the objects service
//! (`server/objects.rs`). Objects are defined here (admin); records are
//! written by load steps and read here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value as Json_};
use weir_engine::objects::ObjectDef;
use weir_engine::store::{Record, RecordId};

use super::{DEFAULT_LIMIT, MAX_LIMIT, Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Body, Path, ProblemDocument, Query};

/// The workspace's objects, by name.
#[utoipa::path(get, path = "/objects", tag = "objects", params(PageParams),
    responses(
        (status = 200, body = Page<ObjectDef>),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<ObjectDef>>> {
    caller.require(Role::Viewer)?;
    let objects = app.objects.list(&caller)?;
    Ok(Json(page_of(objects, &params, |o| o.name.clone(), |o| o)?))
}

/// Defines an object (SPEC §2: name, label, typed fields).
#[utoipa::path(post, path = "/objects", tag = "objects", request_body = ObjectDef,
    responses(
        (status = 201, body = ObjectDef),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(body): Body<Json_>,
) -> ApiResult<(StatusCode, Json<ObjectDef>)> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    let def = app.objects.create(&caller.workspace_id, body)?;
    Ok((StatusCode::CREATED, Json(def)))
}

/// One object.
#[utoipa::path(get, path = "/objects/{object}", tag = "objects",
    params(("object" = String, Path, description = "Object name")),
    responses(
        (status = 200, body = ObjectDef),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn get(State(app): State<Arc<App>>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<ObjectDef>> {
    caller.require(Role::Viewer)?;
    Ok(Json(app.objects.get(&caller, &name)?))
}

/// Changes an object (JSON merge patch). Fields may be added and labels
/// changed; a field's type cannot change and fields cannot be removed,
/// because records hold values of them.
#[utoipa::path(patch, path = "/objects/{object}", tag = "objects",
    request_body(content = ObjectDef, content_type = "application/merge-patch+json",
        description = "A JSON merge patch (RFC 7396) of the object; `application/json` is accepted too"),
    params(("object" = String, Path, description = "Object name")),
    responses(
        (status = 200, body = ObjectDef),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    Body(patch): Body<Json_>,
) -> ApiResult<Json<ObjectDef>> {
    caller.require(Role::Admin)?;
    caller.require_whole_workspace()?;
    let current = app.objects.get(&caller, &name)?;
    let mut doc = serde_json::to_value(&current).map_err(ApiError::internal)?;
    crate::server::connectors::merge_patch(&mut doc, patch);
    Ok(Json(app.objects.update(&caller, &current, doc)?))
}

/// A stored value as JSON.
fn record_json(record: &Record) -> Json_ {
    let mut map = Map::new();
    map.insert("id".into(), Json_::String(record.id.to_string()));
    for (k, v) in &record.fields {
        map.insert(k.clone(), v.to_json());
    }
    Json_::Object(map)
}

/// The object's records, newest first; every query parameter other than
/// `limit` and `cursor` filters a field by equality.
#[utoipa::path(get, path = "/objects/{object}/records", tag = "objects",
    params(
        ("object" = String, Path, description = "Object name"),
        ("limit" = Option<usize>, Query, description = "Records per page (default 50, at most 500)"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, body = Page<Object>),
        (status = 400, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn records(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(mut query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Page<Json_>>> {
    caller.require(Role::Viewer)?;
    let object = app.objects.get(&caller, &name)?;
    let limit = match query.remove("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_LIMIT}"))),
        },
    };
    let before = match query.remove("cursor") {
        None => None,
        Some(c) => Some(RecordId::parse_str(&c).map_err(|_| ApiError::bad_request("the cursor is not valid"))?),
    };
    let mut filters: Vec<_> = query.into_iter().collect();
    filters.sort();
    let rows = app
        .objects
        .records(&caller.workspace_id, &object, filters, before, limit + 1)?;
    Ok(Json(super::page(
        rows,
        limit,
        |r| r.id.to_string(),
        |r| record_json(&r),
    )))
}

/// One record.
#[utoipa::path(get, path = "/objects/{object}/records/{id}", tag = "objects",
    params(("object" = String, Path, description = "Object name"), ("id" = String, Path, description = "Record id")),
    responses(
        (status = 200, body = Object),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn record(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<Json_>> {
    caller.require(Role::Viewer)?;
    let object = app.objects.get(&caller, &name)?;
    let id = RecordId::parse_str(&id).map_err(|_| ApiError::not_found("record"))?;
    let record = app.objects.record(&caller.workspace_id, &object, id)?;
    Ok(Json(record_json(&record)))
}
