//! The objects service: the objects of workspaces (defined by admins) and
//! the records load steps write into them, read back by key. A key limited
//! to some connectors reaches only the objects its connectors use, and can
//! never make them use more. It holds the state store and the record store.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value as Json;
use weir_engine::Error as EngineError;
use weir_engine::connector::Connector;
use weir_engine::error::Problem;
use weir_engine::objects::{FieldType, ObjectDef, Objects};
use weir_engine::sql::{self, Script};
use weir_engine::store::{Record, RecordId, RecordStore, Value};

use super::auth::Caller;
use super::state::{ConnectorRow, StateError, StateStore};

/// Why the objects service refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// An object definition (or a change of one) that is not valid.
    #[error("{title}")]
    Invalid {
        /// What was refused.
        title: &'static str,
        /// Each problem, with its path.
        problems: Vec<Problem>,
    },
    /// An object of that name exists.
    #[error("an object named `{0}` exists")]
    Exists(String),
    /// The workspace has no such object (or record).
    #[error("there is no {0}")]
    NotFound(&'static str),
    /// The caller's key does not reach the object, or cannot make its
    /// connectors reach it.
    #[error("{0}")]
    OutOfReach(String),
    /// A filter of records that does not fit the object.
    #[error("{0}")]
    BadFilter(String),
    /// The record store (or the engine reading a definition) failed.
    #[error("the record store: {0}")]
    Engine(EngineError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Objects and their records.
#[derive(Clone)]
pub struct ObjectService {
    db: Arc<dyn StateStore>,
    records: Arc<dyn RecordStore>,
}

impl ObjectService {
    /// The service.
    pub fn new(db: Arc<dyn StateStore>, records: Arc<dyn RecordStore>) -> Self {
        Self { db, records }
    }

    /// The objects the caller may see, by name.
    pub fn list(&self, caller: &Caller) -> Result<Vec<ObjectDef>, ObjectError> {
        let reached = self.reached(caller)?;
        let mut out: Vec<ObjectDef> = self
            .db
            .objects(&caller.workspace_id)?
            .into_iter()
            .map(|r| r.def)
            .collect();
        if let Some(reached) = reached {
            out.retain(|o| reached.contains(&o.name));
        }
        Ok(out)
    }

    /// Defines an object of the workspace from its JSON form.
    pub fn create(&self, workspace_id: &str, value: Json) -> Result<ObjectDef, ObjectError> {
        let def = self.parse(workspace_id, value)?;
        if !self.db.insert_object(workspace_id, &def)? {
            return Err(ObjectError::Exists(def.name));
        }
        self.records
            .ensure_object(workspace_id, &def)
            .map_err(ObjectError::Engine)?;
        Ok(def)
    }

    /// An object of the caller's workspace; out of reach for one a key
    /// limited to some connectors does not reach (its records are not
    /// theirs to read).
    pub fn get(&self, caller: &Caller, name: &str) -> Result<ObjectDef, ObjectError> {
        if let Some(reached) = self.reached(caller)?
            && !reached.contains(name)
            && self.db.object(&caller.workspace_id, name)?.is_some()
        {
            return Err(ObjectError::OutOfReach(format!(
                "this key is limited to connectors that do not use object `{name}`"
            )));
        }
        let row = self
            .db
            .object(&caller.workspace_id, name)?
            .ok_or(ObjectError::NotFound("object"))?;
        Ok(row.def)
    }

    /// Changes an object to `changed` (its JSON form after a merge patch):
    /// fields may be added and labels changed; a field's type cannot change
    /// and fields cannot be removed, because records hold values of them.
    pub fn update(&self, caller: &Caller, current: &ObjectDef, changed: Json) -> Result<ObjectDef, ObjectError> {
        let def = self.parse(&caller.workspace_id, changed)?;
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
            return Err(ObjectError::Invalid {
                title: "the change is not allowed",
                problems,
            });
        }
        self.records
            .ensure_object(&caller.workspace_id, &def)
            .map_err(ObjectError::Engine)?;
        self.db.update_object(&caller.workspace_id, &def)?;
        Ok(def)
    }

    /// Records of `object`, newest first, before `before`, at most `limit`,
    /// whose fields equal `filters` (field name, value as text, typed by
    /// the field).
    pub fn records(
        &self,
        workspace_id: &str,
        object: &ObjectDef,
        filters: Vec<(String, String)>,
        before: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>, ObjectError> {
        let mut typed = Vec::with_capacity(filters.len());
        for (field, text) in filters {
            let Some(kind) = object.field_type(&field) else {
                return Err(ObjectError::BadFilter(format!(
                    "object `{}` has no field `{field}`",
                    object.name
                )));
            };
            let Some(value) = filter_value(kind, &text) else {
                return Err(ObjectError::BadFilter(format!(
                    "`{text}` is not a value of field `{field}`"
                )));
            };
            typed.push((field, value));
        }
        self.records
            .page(workspace_id, object, &typed, before, limit)
            .map_err(ObjectError::Engine)
    }

    /// One record of `object`.
    pub fn record(&self, workspace_id: &str, object: &ObjectDef, id: RecordId) -> Result<Record, ObjectError> {
        let found = self
            .records
            .get(workspace_id, object, &[id])
            .map_err(ObjectError::Engine)?;
        found
            .into_iter()
            .next()
            .flatten()
            .ok_or(ObjectError::NotFound("record"))
    }

    /// Parses and validates an object definition, checking relation
    /// targets against the workspace's objects.
    fn parse(&self, workspace_id: &str, value: Json) -> Result<ObjectDef, ObjectError> {
        let known: Vec<String> = self
            .db
            .object_defs(workspace_id)?
            .objects
            .into_iter()
            .map(|o| o.name)
            .collect();
        parse_among(value, &known)
    }

    /// The objects the caller reaches: `None` (every one) for a key of the
    /// whole workspace; for a key limited to some connectors, those its
    /// connectors use ([`used_by`]).
    pub fn reached(&self, caller: &Caller) -> Result<Option<BTreeSet<String>>, StateError> {
        let Some(only) = &caller.connectors else {
            return Ok(None);
        };
        let mut connectors = Vec::new();
        for row in self.db.connectors(&caller.workspace_id, Some(only), None, usize::MAX)? {
            connectors.push(row.connector);
        }
        Ok(Some(used_by(&self.db.object_defs(&caller.workspace_id)?, &connectors)))
    }

    /// Refuses an edit by a key limited to some connectors that would make
    /// connector `row` load into (`loads`) or read (`records.<object>` in
    /// `script`) an object the key does not reach and the connector did not
    /// already read: such a key cannot widen its own reach.
    pub fn keep_within_reach(
        &self,
        caller: &Caller,
        row: &ConnectorRow,
        loads: Option<&Connector>,
        script: Option<&str>,
    ) -> Result<(), ObjectError> {
        let Some(mut allowed) = self.reached(caller)? else {
            return Ok(());
        };
        for version in [Some(row.draft_version), row.live_version].into_iter().flatten() {
            if let Some(sql) = self.db.sql_version(&row.id, version)? {
                allowed.extend(records_named(&sql.text));
            }
        }
        let mut named: BTreeSet<String> = loads
            .iter()
            .flat_map(|c| c.loads.iter().map(|l| l.object.clone()))
            .collect();
        named.extend(script.map(records_named).unwrap_or_default());
        match named.difference(&allowed).next() {
            Some(object) => Err(ObjectError::OutOfReach(format!(
                "this key is limited to connectors that do not use object `{object}`, and cannot make them use it"
            ))),
            None => Ok(()),
        }
    }
}

/// An object definition, checked as a new object of a workspace whose
/// objects are named `known`; nothing is written.
pub fn checked(def: &ObjectDef, known: &[String]) -> Result<ObjectDef, ObjectError> {
    let value = serde_json::to_value(def).map_err(|e| ObjectError::State(StateError::Document(e)))?;
    parse_among(value, known)
}

fn parse_among(value: Json, known: &[String]) -> Result<ObjectDef, ObjectError> {
    let invalid = |problems| ObjectError::Invalid {
        title: "the object definition is not valid",
        problems,
    };
    let def = ObjectDef::from_json(&value.to_string()).map_err(|e| match e {
        EngineError::InvalidObjects(problems) => invalid(problems),
        other => ObjectError::Engine(other),
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
    if problems.is_empty() {
        Ok(def)
    } else {
        Err(invalid(problems))
    }
}

/// The objects `connectors` use: those their load steps write to, with the
/// objects their relation fields point to.
pub fn used_by<'a>(all: &Objects, connectors: impl IntoIterator<Item = &'a Connector>) -> BTreeSet<String> {
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

/// The objects `text` reads as `records.<object>`; none when it does not
/// parse (the script's own check says why).
fn records_named(text: &str) -> Vec<String> {
    Script::parse(text)
        .and_then(|script| sql::records_named(&script))
        .unwrap_or_default()
}

/// A filter value from its text, typed by the field.
fn filter_value(kind: FieldType, text: &str) -> Option<Value> {
    match kind {
        FieldType::Number => text.parse().ok().map(Value::Number),
        FieldType::Boolean => text.parse().ok().map(Value::Bool),
        _ => Value::from_json(kind, &Json::String(text.to_string())),
    }
}
