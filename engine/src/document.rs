//! Parsing the documents users write (connectors, objects) from TOML or
//! JSON, with every unknown key and every invalid value reported with its
//! path, all at once.
//!
//! Unknown keys are collected while deserialising (serde_ignored) instead of
//! stopping at the first; a document's own rules come from
//! [`Document::validate`]. This module knows no document's shape.
//!
//! Every path is written one way, `variables[2].type`. A problem of a TOML
//! document also carries its line and column, and a misspelt key or value
//! the closest one the document takes ("did you mean").

use std::ops::Range;

use serde::de::{DeserializeOwned, Visitor};

use crate::error::{Position, Problem};

/// A document with rules of its own beyond its shape.
pub trait Document: DeserializeOwned {
    /// Every problem of the document, with paths.
    fn validate(&self) -> Vec<Problem>;

    /// The keys a table of the document takes, by the table's path without
    /// indices (`""` for the top, `loads.match`); empty when not known.
    /// Unknown keys are checked against them for a "did you mean".
    fn keys_at(table: &str) -> &'static [&'static str] {
        let _ = table;
        &[]
    }
}

/// The keys a struct reads, as serde names them: its derived `Deserialize`
/// is asked to read from a deserializer that only notes the field names.
pub fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("fields noted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
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

/// Parses TOML text, keeping the document beside its problems. Each
/// problem has the position of its key (or of the value that could not be
/// read, or of the nearest table that is there).
pub fn parse_toml<T: Document>(text: &str) -> Parsed<T> {
    let de = match toml::Deserializer::parse(text) {
        Ok(de) => de,
        Err(e) => {
            let mut problem = Problem::new("", e.message());
            problem.position = e.span().map(|span| position(text, span.start));
            return Parsed {
                document: None,
                problems: vec![problem],
            };
        }
    };
    // Where the reader stood when a value could not be read; not for a
    // missing key, which is at no place of the text.
    let mut spans = Vec::new();
    let mut parsed = deserialize(de, |e: toml::de::Error| {
        if missing_field(e.message()).is_none() {
            spans.push(e.span());
        }
        e.message().to_string()
    });
    place_in_toml(text, &mut parsed.problems);
    // The span of a value that could not be read is where its reader stood.
    if let Some(Some(span)) = spans.pop()
        && parsed.document.is_none()
        && let Some(last) = parsed.problems.last_mut()
    {
        last.position = Some(position(text, span.start));
    }
    parsed
}

/// Gives each problem the position of its path in the TOML `text` (its
/// key, or the nearest table that is there), for problems found after the
/// document was read (its load steps against the objects, say).
pub fn place_in_toml(text: &str, problems: &mut [Problem]) {
    // The text is parsed again, with positions, only when there is
    // something to place.
    if problems.iter().all(|p| p.position.is_some()) {
        return;
    }
    let Ok(table) = toml::de::DeTable::parse(text) else {
        return;
    };
    for problem in problems.iter_mut().filter(|p| p.position.is_none()) {
        let span = locate(table.get_ref(), &segments(&problem.path));
        problem.position = span.map(|span| position(text, span.start));
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

fn deserialize<'de, T, D, E>(de: D, mut message: impl FnMut(E) -> String) -> Parsed<T>
where
    T: Document,
    D: serde::Deserializer<'de, Error = E>,
{
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(ignored_segments(&path));
    // serde_path_to_error names where a bad value is (`fields[0].type`).
    let parsed: Result<T, serde_path_to_error::Error<E>> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note));
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|segments| unknown_key::<T>(&segments))
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
                None => Problem::new(path, with_suggestion(message)),
            };
            problems.push(problem);
            Parsed {
                document: None,
                problems,
            }
        }
    }
}

/// A step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The path serde_ignored gives, as steps (it writes `variables.2.x`;
/// options and newtypes add no step).
fn ignored_segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut segments = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_segments(parent),
    };
    match path {
        Path::Seq { index, .. } => segments.push(Segment::Index(*index)),
        Path::Map { key, .. } => segments.push(Segment::Key(key.clone())),
        _ => {}
    }
    segments
}

/// A path as written everywhere: `loads[0].match[1].field`.
fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The steps of a written path (`loads[0].match[1].field`).
fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            match index.parse() {
                Ok(i) => out.push(Segment::Index(i)),
                Err(_) => return out,
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// An unknown key, with the known key of its table closest to it.
fn unknown_key<T: Document>(segments: &[Segment]) -> Problem {
    let path = render(segments);
    let Some((Segment::Key(key), parent)) = segments.split_last() else {
        return Problem::new(path, "unknown key");
    };
    let table: Vec<&str> = parent
        .iter()
        .filter_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Index(_) => None,
        })
        .collect();
    let hint = did_you_mean(key, T::keys_at(&table.join(".")));
    Problem::new(path, format!("unknown key{hint}"))
}

/// Adds the closest allowed value to serde's "unknown variant `x`, expected
/// one of `a`, `b`".
fn with_suggestion(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown variant `") else {
        return message;
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message;
    };
    let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let hint = did_you_mean(given, &allowed);
    format!("{message}{hint}")
}

/// ``; did you mean `x`?`` for the candidate most like `given`, or nothing:
/// what a problem about a misspelt name ends with.
pub fn did_you_mean(given: &str, candidates: &[&str]) -> String {
    closest(given, candidates).map_or_else(String::new, |known| format!("; did you mean `{known}`?"))
}

/// The candidate most like `given`, when one is like it at all: what a
/// "did you mean" names.
fn closest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&given, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Where `segments` point in a TOML document: the span of the key they
/// end at, or of the deepest table or array element that is there (a
/// missing key points at its table).
fn locate(table: &toml::de::DeTable<'_>, segments: &[Segment]) -> Option<Range<usize>> {
    use toml::de::DeValue;
    let (first, rest) = segments.split_first()?;
    let Segment::Key(key) = first else {
        return None;
    };
    let (k, value) = table.iter().find(|(k, _)| k.get_ref() == key)?;
    let mut found = k.span();
    let mut value = value;
    for segment in rest {
        let next = match (segment, value.get_ref()) {
            (Segment::Key(key), DeValue::Table(t)) => t.iter().find(|(k, _)| k.get_ref() == key),
            (Segment::Index(i), DeValue::Array(a)) => {
                let Some(item) = a.get(*i) else { break };
                found = item.span();
                value = item;
                continue;
            }
            _ => None,
        };
        let Some((k, v)) = next else { break };
        found = k.span();
        value = v;
    }
    Some(found)
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> Position {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() as u64 + 1,
        column: before[line_start..].chars().count() as u64 + 1,
    }
}

/// The field of a serde "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = &message[message.find("missing field `")? + "missing field `".len()..];
    rest.split('`').next().filter(|f| !f.is_empty())
}
