//! Objects of the workspace and their records. Objects are defined here
//! (admin); records are written by load steps and read here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Map, Value as Json_};
use weir_engine::Error as EngineError;
use weir_engine::connector::Connector;
use weir_engine::error::Problem;
use weir_engine::objects::{FieldType, ObjectDef, Objects};
use weir_engine::sql::{self, Script};
use weir_engine::store::{Record, RecordId, Value};

use super::{DEFAULT_LIMIT, MAX_LIMIT, Page, PageParams, page_of};
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Body, Path, ProblemDocument, Query};
use crate::server::state::ConnectorRow;

/// Parses and validates an object definition, checking relation targets
/// against the workspace's objects.
fn parse_object(app: &App, workspace_id: &str, value: Json_) -> ApiResult<ObjectDef> {
    let known: Vec<String> = app
        .db
        .object_defs(workspace_id)?
        .objects
        .into_iter()
        .map(|o| o.name)
        .collect();
    parse_object_among(value, &known)
}

/// An object definition, checked as a new object of a workspace whose
/// objects are named `known`; nothing is written.
pub(super) fn checked(def: &ObjectDef, known: &[String]) -> ApiResult<ObjectDef> {
    parse_object_among(serde_json::to_value(def).map_err(ApiError::internal)?, known)
}

fn parse_object_among(value: Json_, known: &[String]) -> ApiResult<ObjectDef> {
    let def = ObjectDef::from_json(&value.to_string()).map_err(|e| match e {
        EngineError::InvalidObjects(problems) => {
            ApiError::invalid("invalid_object", "the object definition is not valid", problems)
        }
        other => ApiError::internal(other),
    })?;
    let problems: Vec<Problem> = def
        .fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let target = f.object.as_deref()?;
            (target != def.name && !known.iter().any(|k| k == target))
                .then(|| Problem::new(format!("fields[{i}].object"), format!("there is no object `{target}`")))
        })
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::invalid(
            "invalid_object",
            "the object definition is not valid",
            problems,
        ));
    }
    Ok(def)
}

fn object_json(def: &ObjectDef) -> ApiResult<Json_> {
    serde_json::to_value(def).map_err(ApiError::internal)
}

/// The objects `connectors` use: those their load steps write to, with the
/// objects their relation fields point to.
pub(super) fn used_by<'a>(all: &Objects, connectors: impl IntoIterator<Item = &'a Connector>) -> BTreeSet<String> {
    let mut used: BTreeSet<String> = connectors
        .into_iter()
        .flat_map(|c| c.loads.iter().map(|l| l.object.clone()))
        .collect();
    let mut queue: Vec<String> = used.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        if let Some(def) = all.get(&name) {
            for target in def.fields.iter().filter_map(|f| f.object.clone()) {
                if used.insert(target.clone()) {
                    queue.push(target);
                }
            }
        }
    }
    used
}

/// The objects the caller reaches: `None` (every one) for a key of the
/// whole workspace; for a key limited to some connectors, those its
/// connectors use ([`used_by`]).
fn reached(app: &App, caller: &Caller) -> ApiResult<Option<BTreeSet<String>>> {
    let Some(only) = &caller.connectors else {
        return Ok(None);
    };
    let mut connectors = Vec::new();
    for row in app.db.connectors(&caller.workspace_id, Some(only), None, usize::MAX)? {
        connectors.push(row.connector);
    }
    Ok(Some(used_by(&app.db.object_defs(&caller.workspace_id)?, &connectors)))
}

/// Refuses (403) an edit by a key limited to some connectors that would
/// make connector `row` load into (`loads`) or read (`records.<object>` in
/// `script`) an object the key does not reach ([`reached`]) and the
/// connector did not already read: such a key cannot widen its own reach.
pub(super) fn keep_within_reach(
    app: &App,
    caller: &Caller,
    row: &ConnectorRow,
    loads: Option<&Connector>,
    script: Option<&str>,
) -> ApiResult<()> {
    let Some(mut allowed) = reached(app, caller)? else {
        return Ok(());
    };
    for version in [Some(row.draft_version), row.live_version].into_iter().flatten() {
        if let Some(sql) = app.db.sql_version(&row.id, version)? {
            allowed.extend(records_named(&sql.text));
        }
    }
    let mut named: BTreeSet<String> = loads
        .iter()
        .flat_map(|c| c.loads.iter().map(|l| l.object.clone()))
        .collect();
    named.extend(script.map(records_named).unwrap_or_default());
    match named.difference(&allowed).next() {
        Some(object) => Err(ApiError::forbidden(format!(
            "this key is limited to connectors that do not use object `{object}`, and cannot make them use it"
        ))),
        None => Ok(()),
    }
}

/// The objects `text` reads as `records.<object>`; none when it does not
/// parse (the script's own check says why).
fn records_named(text: &str) -> Vec<String> {
    Script::parse(text)
        .and_then(|script| sql::records_named(&script))
        .unwrap_or_default()
}

/// An object of the caller's workspace; 403 for one a key limited to some
/// connectors does not reach (its records are not theirs to read).
fn load_object(app: &App, caller: &Caller, name: &str) -> ApiResult<ObjectDef> {
    if let Some(reached) = reached(app, caller)?
        && !reached.contains(name)
        && app.db.object(&caller.workspace_id, name)?.is_some()
    {
        return Err(ApiError::forbidden(format!(
            "this key is limited to connectors that do not use object `{name}`"
        )));
    }
    let row = app
        .db
        .object(&caller.workspace_id, name)?
        .ok_or_else(|| ApiError::not_found("object"))?;
    Ok(row.def)
}

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
    let reached = reached(&app, &caller)?;
    let mut out: Vec<ObjectDef> = app
        .db
        .objects(&caller.workspace_id)?
        .into_iter()
        .map(|r| r.def)
        .collect();
    if let Some(reached) = reached {
        out.retain(|o| reached.contains(&o.name));
    }
    Ok(Json(page_of(out, &params, |o| o.name.clone(), |o| o)?))
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
    let def = parse_object(&app, &caller.workspace_id, body)?;
    if !insert(&app, &caller.workspace_id, &def)? {
        return Err(ApiError::conflict(
            "object_exists",
            format!("an object named `{}` exists", def.name),
        ));
    }
    Ok((StatusCode::CREATED, Json(def)))
}

fn insert(app: &App, workspace_id: &str, def: &ObjectDef) -> ApiResult<bool> {
    if !app.db.insert_object(workspace_id, def)? {
        return Ok(false);
    }
    app.records
        .ensure_object(workspace_id, def)
        .map_err(ApiError::internal)?;
    Ok(true)
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
    Ok(Json(load_object(&app, &caller, &name)?))
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
    let current = load_object(&app, &caller, &name)?;
    let mut doc = object_json(&current)?;
    super::connectors::merge_patch(&mut doc, patch);
    let def = parse_object(&app, &caller.workspace_id, doc)?;
    let mut problems = Vec::new();
    if def.name != current.name {
        problems.push(Problem::new("name", "an object cannot be renamed"));
    }
    for old in &current.fields {
        match def.fields.iter().position(|f| f.name == old.name) {
            None => problems.push(Problem::new(
                "fields",
                format!("field `{}` cannot be removed; records hold its values", old.name),
            )),
            Some(i) if def.fields[i].kind != old.kind => problems.push(Problem::new(
                format!("fields[{i}].type"),
                format!("field `{}` cannot change its type", old.name),
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(
            "invalid_object",
            "the change is not allowed",
            problems,
        ));
    }
    app.records
        .ensure_object(&caller.workspace_id, &def)
        .map_err(ApiError::internal)?;
    app.db.update_object(&caller.workspace_id, &def)?;
    Ok(Json(def))
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

/// A filter value from the query string, typed by the field.
fn filter_value(kind: FieldType, text: &str) -> Option<Value> {
    match kind {
        FieldType::Number => text.parse().ok().map(Value::Number),
        FieldType::Boolean => text.parse().ok().map(Value::Bool),
        _ => Value::from_json(kind, &Json_::String(text.to_string())),
    }
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
    let object = load_object(&app, &caller, &name)?;
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
    let mut filters = Vec::new();
    let mut fields: Vec<_> = query.into_iter().collect();
    fields.sort();
    for (field, text) in fields {
        let Some(kind) = object.field_type(&field) else {
            return Err(ApiError::bad_request(format!("object `{name}` has no field `{field}`")));
        };
        let Some(value) = filter_value(kind, &text) else {
            return Err(ApiError::bad_request(format!(
                "`{text}` is not a value of field `{field}`"
            )));
        };
        filters.push((field, value));
    }
    let rows = app
        .records
        .page(&caller.workspace_id, &object, &filters, before, limit + 1)
        .map_err(ApiError::internal)?;
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
    let object = load_object(&app, &caller, &name)?;
    let id = RecordId::parse_str(&id).map_err(|_| ApiError::not_found("record"))?;
    let found = app
        .records
        .get(&caller.workspace_id, &object, &[id])
        .map_err(ApiError::internal)?;
    match found.into_iter().next().flatten() {
        Some(r) => Ok(Json(record_json(&r))),
        None => Err(ApiError::not_found("record")),
    }
}
