//! Object definitions (SPEC §1, §2): named record types of a workspace with
//! typed fields, as written in `objects.toml` or sent to `POST /objects`,
//! and the checks of load steps against them.
//!
//! Every object has a generated `id` (UUID) and a `name` text field without
//! declaring them. This module owns definitions and their rules only; it
//! stores no records.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::connector::{Connector, is_identifier};
use crate::document::{self, Document, did_you_mean};
use crate::error::{Error, Problem, Result};

/// Types of object fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Any text.
    Text,
    /// A number.
    Number,
    /// A boolean.
    Boolean,
    /// A calendar date.
    Date,
    /// A point in time.
    Datetime,
    /// An e-mail address.
    Email,
    /// A phone number in E.164.
    PhoneNumber,
    /// A UUID.
    Uuid,
    /// One of `options`, matched by label.
    Dropdown,
    /// The id of a record of `object`.
    Relation,
}

/// One field of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldDef {
    /// `[a-z][a-z0-9_]{0,62}`, unique in the object.
    pub name: String,
    /// The type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// No two records may share a value (matching rules use such fields).
    #[serde(default)]
    pub unique: bool,
    /// Labels of a dropdown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// The object a relation points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// An object definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectDef {
    /// `[a-z][a-z0-9_]{0,62}`, unique in the workspace.
    pub name: String,
    /// Display name; the name when absent.
    #[serde(default)]
    pub label: String,
    /// Declared fields (besides the implicit `id` and `name`).
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

/// The implicit `id` field.
pub const ID_FIELD: &str = "id";
/// The implicit `name` field.
pub const NAME_FIELD: &str = "name";

impl ObjectDef {
    /// The type of field `name`, including the implicit `id` and `name`.
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        match name {
            ID_FIELD => Some(FieldType::Uuid),
            _ => self
                .fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.kind)
                .or((name == NAME_FIELD).then_some(FieldType::Text)),
        }
    }

    /// The names of its fields, the implicit `name` included.
    pub fn field_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
        names.push(NAME_FIELD);
        names
    }

    /// Parses one object as JSON (the body of `POST /objects`).
    pub fn from_json(text: &str) -> Result<Self> {
        document::from_json(text).map_err(Error::InvalidObjects)
    }

    /// Problems of this object, with paths under `prefix`.
    fn problems(&self, prefix: &str, known: &HashSet<&str>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |key: &str| format!("{prefix}{key}");
        if !is_identifier(&self.name) {
            problems.push(Problem::new(
                at("name"),
                format!("`{}` must match [a-z][a-z0-9_]{{0,62}}", self.name),
            ));
        }
        let mut seen = HashSet::new();
        for (i, f) in self.fields.iter().enumerate() {
            let path = |key: &str| at(&format!("fields[{i}].{key}"));
            if !is_identifier(&f.name) {
                problems.push(Problem::new(
                    path("name"),
                    format!("`{}` must match [a-z][a-z0-9_]{{0,62}}", f.name),
                ));
            }
            if f.name == ID_FIELD {
                problems.push(Problem::new(
                    path("name"),
                    "`id` is generated for every object and cannot be declared",
                ));
            }
            if f.name == NAME_FIELD && f.kind != FieldType::Text {
                problems.push(Problem::new(path("type"), "`name` is a text field of every object"));
            }
            if !seen.insert(f.name.as_str()) {
                problems.push(Problem::new(
                    path("name"),
                    format!("field `{}` is declared twice", f.name),
                ));
            }
            match f.kind {
                FieldType::Dropdown => {
                    if f.options.is_empty() {
                        problems.push(Problem::new(path("options"), "a dropdown needs at least one option"));
                    }
                    let mut labels = HashSet::new();
                    for o in &f.options {
                        if o.trim().is_empty() {
                            problems.push(Problem::new(path("options"), "options must not be empty"));
                        } else if !labels.insert(o.to_lowercase()) {
                            problems.push(Problem::new(path("options"), format!("option `{o}` is listed twice")));
                        }
                    }
                }
                _ if !f.options.is_empty() => {
                    problems.push(Problem::new(path("options"), "only a dropdown has options"));
                }
                _ => {}
            }
            match (f.kind, &f.object) {
                (FieldType::Relation, None) => {
                    problems.push(Problem::new(path("object"), "a relation names the object it points to"));
                }
                (FieldType::Relation, Some(o)) if !known.contains(o.as_str()) => {
                    problems.push(Problem::new(path("object"), format!("there is no object `{o}`")));
                }
                (FieldType::Relation, Some(_)) | (_, None) => {}
                (_, Some(_)) => problems.push(Problem::new(path("object"), "only a relation names an object")),
            }
        }
        problems
    }
}

/// The objects of a package (`objects.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objects {
    /// The definitions.
    #[serde(default)]
    pub objects: Vec<ObjectDef>,
}

impl Document for Objects {
    fn validate(&self) -> Vec<Problem> {
        let known: HashSet<&str> = self.objects.iter().map(|o| o.name.as_str()).collect();
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for (i, o) in self.objects.iter().enumerate() {
            if !names.insert(o.name.as_str()) {
                problems.push(Problem::new(
                    format!("objects[{i}].name"),
                    format!("object `{}` is defined twice", o.name),
                ));
            }
            problems.extend(o.problems(&format!("objects[{i}]."), &known));
        }
        problems
    }

    fn keys_at(table: &str) -> &'static [&'static str] {
        match table {
            "" => document::keys_of::<Objects>(),
            "objects" => document::keys_of::<ObjectDef>(),
            "objects.fields" => document::keys_of::<FieldDef>(),
            _ => &[],
        }
    }
}

impl Document for ObjectDef {
    fn validate(&self) -> Vec<Problem> {
        // A single object may relate to itself; other targets are checked
        // against the workspace by the caller.
        let known = HashSet::from([self.name.as_str()]);
        self.problems("", &known)
            .into_iter()
            .filter(|p| !p.message.starts_with("there is no object"))
            .collect()
    }

    fn keys_at(table: &str) -> &'static [&'static str] {
        match table {
            "" => document::keys_of::<ObjectDef>(),
            "fields" => document::keys_of::<FieldDef>(),
            _ => &[],
        }
    }
}

impl Objects {
    /// Parses `objects.toml`.
    pub fn from_toml(text: &str) -> Result<Self> {
        document::from_toml(text).map_err(Error::InvalidObjects)
    }

    /// The object called `name`.
    pub fn get(&self, name: &str) -> Option<&ObjectDef> {
        self.objects.iter().find(|o| o.name == name)
    }

    /// Checks a connector's load steps against these objects: the object
    /// exists, and every matched and mapped field exists on it.
    pub fn check_loads(&self, connector: &Connector) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, load) in connector.loads.iter().enumerate() {
            let Some(object) = self.get(&load.object) else {
                let names: Vec<&str> = self.objects.iter().map(|o| o.name.as_str()).collect();
                problems.push(Problem::new(
                    format!("loads[{i}].object"),
                    format!(
                        "there is no object `{}`{}",
                        load.object,
                        did_you_mean(&load.object, &names)
                    ),
                ));
                continue;
            };
            for (j, m) in load.matching.iter().enumerate() {
                if object.field_type(&m.field).is_none() {
                    problems.push(Problem::new(
                        format!("loads[{i}].match[{j}].field"),
                        format!(
                            "object `{}` has no field `{}`{}",
                            object.name,
                            m.field,
                            did_you_mean(&m.field, &object.field_names())
                        ),
                    ));
                }
            }
            for (j, f) in load.fields.iter().enumerate() {
                if load.fields[..j].iter().any(|earlier| earlier.field == f.field) {
                    problems.push(Problem::new(
                        format!("loads[{i}].fields[{j}].field"),
                        format!("field `{}` is mapped twice; join the variables in one mapping", f.field),
                    ));
                    continue;
                }
                match object.field_type(&f.field) {
                    None => problems.push(Problem::new(
                        format!("loads[{i}].fields[{j}].field"),
                        format!(
                            "object `{}` has no field `{}`{}",
                            object.name,
                            f.field,
                            did_you_mean(&f.field, &object.field_names())
                        ),
                    )),
                    Some(_) if f.field == ID_FIELD => problems.push(Problem::new(
                        format!("loads[{i}].fields[{j}].field"),
                        "`id` is generated and cannot be written",
                    )),
                    Some(_) => {}
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRM: &str = r#"
[[objects]]
name = "company"
label = "Company"
  [[objects.fields]]
  name = "domain"
  type = "text"
  unique = true

[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  unique = true
  [[objects.fields]]
  name = "stage"
  type = "dropdown"
  options = ["Lead", "Customer"]
  [[objects.fields]]
  name = "company"
  type = "relation"
  object = "company"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match Objects::from_toml(text) {
            Err(Error::InvalidObjects(p)) => p,
            other => panic!("expected invalid objects, got {other:?}"),
        }
    }

    #[test]
    fn parses_objects_with_implicit_id_and_name() {
        let objects = Objects::from_toml(CRM).expect("valid");
        let contact = objects.get("contact").expect("contact");
        assert_eq!(contact.field_type("id"), Some(FieldType::Uuid));
        assert_eq!(contact.field_type("name"), Some(FieldType::Text));
        assert_eq!(contact.field_type("stage"), Some(FieldType::Dropdown));
        assert_eq!(contact.field_type("nope"), None);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = problems(
            r#"
[[objects]]
name = "Contact"
colour = "red"
  [[objects.fields]]
  name = "id"
  type = "uuid"
  [[objects.fields]]
  name = "stage"
  type = "dropdown"
  [[objects.fields]]
  name = "owner"
  type = "relation"
  object = "user"
  [[objects.fields]]
  name = "email"
  type = "email"
  options = ["x"]
  [[objects.fields]]
  name = "email"
  type = "text"
[[objects]]
name = "Contact"
"#,
        );
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "objects[0].colour",
            "objects[0].name",
            "objects[0].fields[0].name",
            "objects[0].fields[1].options",
            "objects[0].fields[2].object",
            "objects[0].fields[3].options",
            "objects[0].fields[4].name",
            "objects[1].name",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {p:?}");
        }
    }

    #[test]
    fn load_steps_are_checked_against_objects() {
        let objects = Objects::from_toml(CRM).expect("valid");
        let connector = Connector::from_toml(
            r#"
api_name = "c"
type = "spreadsheet"
[[variables]]
name = "email"
scope = "s"
column = "email"
type = "email"
[[loads]]
order = 1
scope = "s"
object = "contact"
  [[loads.match]]
  field = "mail"
  variable = "email"
  no_match = "create_new"
  single_match = "update_current"
  multiple_match = "do_not_upload"
  [[loads.fields]]
  field = "email"
  variables = ["email"]
  [[loads.fields]]
  field = "id"
  variables = ["email"]
  [[loads.fields]]
  field = "email"
  variables = ["email"]
[[loads]]
order = 2
scope = "s"
object = "person"
"#,
        )
        .expect("valid connector");
        let p = objects.check_loads(&connector);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "loads[0].match[0].field",
                "loads[0].fields[1].field",
                "loads[0].fields[2].field",
                "loads[1].object"
            ],
            "{p:?}"
        );
        assert!(p[2].message.contains("mapped twice"), "{p:?}");
    }

    #[test]
    fn one_object_as_json() {
        let o =
            ObjectDef::from_json(r#"{"name":"tree","fields":[{"name":"parent","type":"relation","object":"tree"}]}"#)
                .expect("valid");
        assert_eq!(o.field_type("parent"), Some(FieldType::Relation));
        let err = ObjectDef::from_json(r#"{"name":"x","fields":[{"name":"n","type":"money"}]}"#).expect_err("bad type");
        assert!(err.to_string().contains("money"), "{err}");
    }
}
