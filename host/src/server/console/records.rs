//! Records: the workspace's objects with their fields, and an object's
//! records filtered by a field and paged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use maud::html;

use super::session::Session;
use super::{Answer, Section, encode, page};
use crate::server::App;
use crate::server::api::objects as api_objects;
use crate::server::api::{self, PageParams};
use crate::server::error;

/// Records shown per page.
const PER_PAGE: usize = 50;

/// The name of a field's type as written in an object's definition.
fn type_name(kind: weir_engine::objects::FieldType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What an object is called: its label, else its name.
fn label(o: &weir_engine::objects::ObjectDef) -> &str {
    if o.label.trim().is_empty() { &o.name } else { &o.label }
}

/// The objects list.
pub async fn objects(State(app): State<Arc<App>>, session: Session) -> Answer {
    let params = PageParams {
        limit: Some(api::MAX_LIMIT),
        cursor: None,
    };
    let objects = api_objects::list(State(app), session.caller.clone(), error::Query(params))
        .await?
        .0
        .data;
    let content = html! {
        @if objects.is_empty() {
            p { "No objects yet: a connector's load steps write records into objects defined with the API." }
        }
        @for o in &objects {
            section.card {
                h2 { a href={ "/records/" (o.name) } { (label(o)) } }
                div.scroll { table {
                    caption.visually-hidden { "Fields of " (o.name) }
                    thead { tr { th scope="col" { "Field" } th scope="col" { "Type" } th scope="col" { "Unique" } } }
                    tbody { @for f in &o.fields { tr {
                        td { code { (f.name) } }
                        td { (type_name(f.kind)) @if let Some(target) = &f.object { " → " (target) } }
                        td { @if f.unique { "unique" } }
                    } } }
                } }
            }
        }
    };
    Ok(page(Some(&session), Section::Records, "Records", content).into_response())
}

/// The prefix of a field's filter in a records page's query:
/// `?f.city=Oslo&f.score=3`.
const FILTER: &str = "f.";

/// An object's records, filtered by the values of any of its fields.
pub async fn records(
    State(app): State<Arc<App>>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Answer {
    let object = api_objects::get(State(app.clone()), session.caller.clone(), error::Path(name.clone()))
        .await?
        .0;
    let filters: Vec<(String, String)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(FILTER)?.to_string(), v.clone())))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let cursor = q.iter().find(|(k, _)| k == "cursor").map(|(_, v)| v.clone());
    let mut query: HashMap<String, String> = filters.iter().cloned().collect();
    query.insert("limit".into(), PER_PAGE.to_string());
    if let Some(cursor) = &cursor {
        query.insert("cursor".into(), cursor.clone());
    }
    let page_of = api_objects::records(
        State(app),
        session.caller.clone(),
        error::Path(name),
        error::Query(query),
    )
    .await?
    .0;
    let mut columns = vec!["id".to_string(), "name".to_string()];
    columns.extend(object.fields.iter().map(|f| f.name.clone()).filter(|f| f != "name"));
    let filter_query = |cursor: &str| {
        let mut out = format!("/records/{}?", object.name);
        for (field, value) in &filters {
            out.push_str(&format!("{}={}&", encode(&format!("{FILTER}{field}")), encode(value)));
        }
        out.push_str(&format!("cursor={}", encode(cursor)));
        out
    };
    let given = |field: &str| {
        filters
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let content = html! {
        form.filters method="get" action={ "/records/" (object.name) } role="search" aria-label="Filter records" {
            @for f in &object.fields {
                div {
                    label for={ "f-" (f.name) } { (f.name) " equals" }
                    input id={ "f-" (f.name) } type="text" name={ (FILTER) (f.name) } value=(given(&f.name));
                }
            }
            div.actions { button type="submit" { "Filter" } a href={ "/records/" (object.name) } { "Clear" } }
        }
        div.scroll { table.records {
            caption.visually-hidden { "Records of " (object.name) ", newest first" }
            thead { tr { @for c in &columns { th scope="col" { (c) } } } }
            tbody {
                @if page_of.data.is_empty() { tr { td colspan=(columns.len()) { "No records match." } } }
                @for r in &page_of.data { tr {
                    @for c in &columns {
                        td { @match r.get(c) {
                            None | Some(serde_json::Value::Null) => span.null { "—" },
                            Some(serde_json::Value::String(s)) => (s),
                            Some(v) => (v.to_string()),
                        } }
                    }
                } }
            }
        } }
        @if let Some(next) = &page_of.next_cursor {
            p.pager { a href=(filter_query(next)) { "Older records →" } }
        }
    };
    Ok(page(Some(&session), Section::Records, label(&object), content).into_response())
}
