//! Parsing the documents users write (connectors, objects) from TOML or
//! JSON, with every unknown key and every invalid value reported with its
//! path, all at once.
//!
//! Unknown keys are collected while deserialising (serde_ignored) instead of
//! stopping at the first; a document's own rules come from
//! [`Document::validate`]. This module knows no document's shape.

use serde::de::DeserializeOwned;

use crate::error::Problem;

/// A document with rules of its own beyond its shape.
pub trait Document: DeserializeOwned {
    /// Every problem of the document, with paths.
    fn validate(&self) -> Vec<Problem>;
}

/// A document as far as it could be read, and every problem found on the
/// way. The document is there whenever its shape could be read (unknown
/// keys and broken rules do not stop that), so a caller can check it
/// further and answer with all the problems at once.
#[derive(Debug)]
pub struct Parsed<T> {
    /// The document, unless its shape could not be read.
    pub document: Option<T>,
    /// Unknown keys, the value that could not be read, and the
    /// document's own rules.
    pub problems: Vec<Problem>,
}

impl<T> Parsed<T> {
    /// The document if it has no problem, else every problem.
    pub fn into_result(self) -> Result<T, Vec<Problem>> {
        match self.document {
            Some(document) if self.problems.is_empty() => Ok(document),
            _ => Err(self.problems),
        }
    }
}

/// Parses TOML text.
pub fn from_toml<T: Document>(text: &str) -> Result<T, Vec<Problem>> {
    parse_toml(text).into_result()
}

/// Parses TOML text, keeping the document beside its problems.
pub fn parse_toml<T: Document>(text: &str) -> Parsed<T> {
    match toml::Deserializer::parse(text) {
        Ok(de) => deserialize(de, |e: toml::de::Error| e.to_string().trim().to_string()),
        Err(e) => Parsed {
            document: None,
            problems: vec![Problem::new("", e.to_string().trim())],
        },
    }
}

/// Parses JSON text.
pub fn from_json<T: Document>(text: &str) -> Result<T, Vec<Problem>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let document = deserialize(&mut de, |e: serde_json::Error| e.to_string()).into_result()?;
    de.end().map_err(|e| vec![Problem::new("", e.to_string())])?;
    Ok(document)
}

/// Parses an already parsed JSON value.
pub fn from_json_value<T: Document>(value: serde_json::Value) -> Result<T, Vec<Problem>> {
    parse_json_value(value).into_result()
}

/// Parses an already parsed JSON value, keeping the document beside its
/// problems.
pub fn parse_json_value<T: Document>(value: serde_json::Value) -> Parsed<T> {
    deserialize(value, |e: serde_json::Error| e.to_string())
}

fn deserialize<'de, T, D, E>(de: D, message: impl Fn(E) -> String) -> Parsed<T>
where
    T: Document,
    D: serde::Deserializer<'de, Error = E>,
{
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    // serde_path_to_error names where a bad value is (`fields[0].type`).
    let parsed: Result<T, serde_path_to_error::Error<E>> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note));
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|path| Problem::new(path, "unknown key"))
        .collect();
    match parsed {
        Ok(document) => {
            problems.extend(document.validate());
            Parsed {
                document: Some(document),
                problems,
            }
        }
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = message(e.into_inner());
            // A missing key is named by its own path, not its parent's
            // (and not by where the parser stood, the file's first line).
            let problem = match missing_field(&message) {
                Some(field) if path.is_empty() => Problem::new(field, "is required"),
                Some(field) => Problem::new(format!("{path}.{field}"), "is required"),
                None => Problem::new(path, message),
            };
            problems.push(problem);
            Parsed {
                document: None,
                problems,
            }
        }
    }
}

/// The field of a serde "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = &message[message.find("missing field `")? + "missing field `".len()..];
    rest.split('`').next().filter(|f| !f.is_empty())
}
