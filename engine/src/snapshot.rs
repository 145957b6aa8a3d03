//! A snapshot of records carried in a dev package, so that a local run
//! matches against what the server holds and counts the same creates and
//! updates.
//!
//! The snapshot is `records/<object>.jsonl`: one record a line, in the form
//! the API shows (`{"id": "…", "<field>": <value>, …}`). A local run imports
//! an object's snapshot into its record store only while the store holds no
//! record of that object, so records a local run wrote are never replaced.

use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};
use crate::objects::{ID_FIELD, NAME_FIELD, ObjectDef, Objects};
use crate::store::{RecordId, RecordStore, Value, Write, WriteBatch};

/// The package directory of the snapshot.
pub const DIR: &str = "records";

/// Records read from the store per page, and written per commit.
const BATCH: usize = 8192;

/// The snapshot's file of one object, inside the package.
pub fn file_name(object: &str) -> String {
    format!("{DIR}/{object}.jsonl")
}

/// A file of the snapshot: its name in the package and its JSON lines.
pub type SnapshotFile = (String, Vec<u8>);

/// Every record of `objects` as JSON lines, by file name. `Ok(None)` when
/// they come to more than `max_bytes`.
pub fn take(
    store: &dyn RecordStore,
    workspace: &str,
    objects: &[ObjectDef],
    max_bytes: u64,
) -> Result<Option<Vec<SnapshotFile>>> {
    let mut files = Vec::with_capacity(objects.len());
    let mut total = 0u64;
    for object in objects {
        let mut lines = Vec::new();
        let mut before = None;
        loop {
            let page = store.page(workspace, object, &[], before, BATCH)?;
            for record in &page {
                let mut map = serde_json::Map::with_capacity(record.fields.len() + 1);
                map.insert(ID_FIELD.into(), serde_json::Value::String(record.id.to_string()));
                for (field, value) in &record.fields {
                    map.insert(field.clone(), value.to_json());
                }
                serde_json::to_writer(&mut lines, &map).map_err(|e| Error::Internal(e.to_string()))?;
                lines.push(b'\n');
            }
            if total + lines.len() as u64 > max_bytes {
                return Ok(None);
            }
            match page.last() {
                Some(last) if page.len() == BATCH => before = Some(last.id),
                _ => break,
            }
        }
        total += lines.len() as u64;
        files.push((file_name(&object.name), lines));
    }
    Ok(Some(files))
}

/// What importing a package's snapshot did for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// This many records were imported.
    Records(u64),
    /// The store already held records of the object; none were imported.
    StoreNotEmpty,
}

/// Imports the snapshot in package directory `dir` into `store`, for each
/// object of `objects` that has one and that the store holds no record of.
/// Returns what was done, by object.
pub fn import(
    dir: &Path,
    store: &dyn RecordStore,
    workspace: &str,
    objects: &Objects,
) -> Result<Vec<(String, Imported)>> {
    let mut done = Vec::new();
    for object in &objects.objects {
        let path = dir.join(file_name(&object.name));
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading {}", file_name(&object.name)), e)),
        };
        store.ensure_object(workspace, object)?;
        if store.count(workspace, &object.name)? > 0 {
            done.push((object.name.clone(), Imported::StoreNotEmpty));
            continue;
        }
        let fields: Vec<String> = std::iter::once(NAME_FIELD.to_string())
            .chain(
                object
                    .fields
                    .iter()
                    .filter(|f| f.name != NAME_FIELD)
                    .map(|f| f.name.clone()),
            )
            .collect();
        // Every line is read and checked before the first commit: a bad
        // line imports nothing, and the next run finds the store empty.
        let mut writes = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| Error::io(format!("reading {}", file_name(&object.name)), e))?;
            if line.trim().is_empty() {
                continue;
            }
            let write = record(object, &fields, &line)
                .map_err(|m| bad(format!("{} line {}: {m}", file_name(&object.name), n + 1)))?;
            writes.push(write);
        }
        let count = writes.len() as u64;
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let batch = WriteBatch {
                fields: fields.clone(),
                creates: writes.by_ref().take(BATCH).collect(),
                ..WriteBatch::default()
            };
            store.commit(workspace, &object.name, &batch)?;
        }
        done.push((object.name.clone(), Imported::Records(count)));
    }
    Ok(done)
}

fn bad(message: String) -> Error {
    Error::InvalidObjects(vec![crate::error::Problem::new("", message)])
}

/// One record of the snapshot: its id and a value per field of `fields`.
fn record(object: &ObjectDef, fields: &[String], line: &str) -> std::result::Result<Write, String> {
    let serde_json::Value::Object(mut map) =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?
    else {
        return Err("not a JSON object".into());
    };
    let id = map
        .remove(ID_FIELD)
        .and_then(|id| id.as_str().and_then(|s| RecordId::parse_str(s).ok()))
        .ok_or("no record id")?;
    let mut values = Vec::with_capacity(fields.len());
    for field in fields {
        let kind = object.field_type(field).ok_or_else(|| format!("no field `{field}`"))?;
        let json = map.remove(field).unwrap_or(serde_json::Value::Null);
        // A value is imported as the API showed it, also one stored in a
        // field of another type (text in a number field stays text).
        let value = Value::from_json(kind, &json)
            .or_else(|| as_stored(&json))
            .ok_or_else(|| format!("`{json}` is not a value of `{field}`"))?;
        values.push(Some(value));
    }
    if let Some(field) = map.keys().next() {
        return Err(format!("object `{}` has no field `{field}`", object.name));
    }
    Ok(Write { id, values })
}

/// A JSON scalar as the value it shows, whatever the field's type.
fn as_stored(json: &serde_json::Value) -> Option<Value> {
    match json {
        serde_json::Value::String(s) => Some(Value::Text(s.clone())),
        serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    const OBJECTS: &str = r#"
[[objects]]
name = "airport"
  [[objects.fields]]
  name = "iata"
  type = "text"
  unique = true
  [[objects.fields]]
  name = "elevation"
  type = "number"
  [[objects.fields]]
  name = "opened"
  type = "date"
"#;

    fn write(store: &SqliteStore, object: &ObjectDef, n: usize) {
        store.ensure_object("w", object).expect("object");
        let batch = WriteBatch {
            fields: vec!["iata".into(), "elevation".into(), "opened".into()],
            creates: (0..n)
                .map(|i| Write {
                    id: RecordId::now_v7(),
                    values: vec![
                        Some(Value::Text(format!("A{i:04}"))),
                        Some(Value::Number(i as f64 + 0.5)),
                        Some(if i % 2 == 0 { Value::Date(19_000) } else { Value::Null }),
                    ],
                })
                .collect(),
            ..WriteBatch::default()
        };
        store.commit("w", &object.name, &batch).expect("commit");
    }

    #[test]
    fn a_snapshot_carries_every_record_to_another_store_and_respects_its_cap() {
        let objects = Objects::from_toml(OBJECTS).expect("objects");
        let server = SqliteStore::in_memory().expect("store");
        // More than a page, so paging is crossed.
        write(&server, &objects.objects[0], BATCH + 5);
        let files = take(&server, "w", &objects.objects, u64::MAX)
            .expect("take")
            .expect("under the cap");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "records/airport.jsonl");
        let size = files[0].1.len() as u64;
        assert!(take(&server, "w", &objects.objects, size - 1).expect("take").is_none());

        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(DIR)).expect("mkdir");
        std::fs::write(dir.path().join(&files[0].0), &files[0].1).expect("write");
        let local = SqliteStore::in_memory().expect("store");
        let done = import(dir.path(), &local, "local", &objects).expect("import");
        assert_eq!(done, vec![("airport".to_string(), Imported::Records(BATCH as u64 + 5))]);
        let object = &objects.objects[0];
        let mut ours = server.page("w", object, &[], None, BATCH * 2).expect("page");
        let mut theirs = local.page("local", object, &[], None, BATCH * 2).expect("page");
        ours.sort_by_key(|r| r.id);
        theirs.sort_by_key(|r| r.id);
        assert_eq!(ours, theirs);

        // A store that holds records of the object keeps them.
        let again = import(dir.path(), &local, "local", &objects).expect("import");
        assert_eq!(again, vec![("airport".to_string(), Imported::StoreNotEmpty)]);
        assert_eq!(local.count("local", "airport").expect("count"), BATCH as u64 + 5);
    }

    #[test]
    fn a_bad_line_is_named_and_nothing_is_imported() {
        let objects = Objects::from_toml(OBJECTS).expect("objects");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(DIR)).expect("mkdir");
        let id = RecordId::now_v7();
        // A whole batch of good lines first: none of them is kept.
        let good = format!("{{\"id\":\"{id}\",\"iata\":\"OSL\"}}\n").repeat(BATCH + 1);
        std::fs::write(
            dir.path().join("records/airport.jsonl"),
            format!("{good}{{\"id\":\"{id}\",\"elevation\":[1]}}\n"),
        )
        .expect("write");
        let local = SqliteStore::in_memory().expect("store");
        let e = import(dir.path(), &local, "local", &objects).expect_err("bad value");
        assert!(
            e.to_string()
                .contains(&format!("records/airport.jsonl line {}", BATCH + 2))
                && e.to_string().contains("is not a value of `elevation`"),
            "{e}"
        );
        assert_eq!(local.count("local", "airport").expect("count"), 0);
    }

    #[test]
    fn a_value_of_another_type_than_its_field_is_imported_as_stored() {
        let objects = Objects::from_toml(OBJECTS).expect("objects");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(DIR)).expect("mkdir");
        let id = RecordId::now_v7();
        std::fs::write(
            dir.path().join("records/airport.jsonl"),
            format!("{{\"id\":\"{id}\",\"iata\":7,\"elevation\":\"high\",\"opened\":\"soon\"}}\n"),
        )
        .expect("write");
        let local = SqliteStore::in_memory().expect("store");
        import(dir.path(), &local, "local", &objects).expect("import");
        let record = local
            .get("local", &objects.objects[0], &[id])
            .expect("get")
            .remove(0)
            .expect("record");
        assert_eq!(record.fields["elevation"], Value::Text("high".into()));
        assert_eq!(record.fields["opened"], Value::Text("soon".into()));
        assert_eq!(record.fields["iata"], Value::Text("7".into()));
    }
}
