//! The record store (SPEC §1 "record", §3.6, §8): where load steps write
//! records, behind a batch-oriented interface, with the embedded SQLite
//! implementation.
//!
//! The interface is what load steps need and nothing more: make sure an
//! object's table and indexes exist, find records by the values of one field
//! for many keys at once, read records, and apply one batch of creates and
//! updates atomically. A PostgreSQL implementation can satisfy it without
//! changing callers. This module decides nothing about matching rules or
//! conflicts; the load stage does.
//!
//! SQLite settings: WAL journal (readers never block the writer, a crash
//! never corrupts), `synchronous = NORMAL` (a committed batch survives a
//! process crash; only an OS crash or power loss can lose the last
//! transactions, never corrupt the file), a busy timeout so a second
//! process waits instead of failing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, params_from_iter};

use crate::error::{Error, Result};
use crate::objects::{FieldType, ID_FIELD, NAME_FIELD, ObjectDef};

/// The id of a record.
pub type RecordId = uuid::Uuid;

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// Text (text, email, phone number, uuid, dropdown label, relation id).
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Datetime(i64),
}

impl Value {
    /// Null or empty text: what `only_update_blank` may overwrite.
    pub fn is_blank(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Text(s) => s.is_empty(),
            _ => false,
        }
    }

    /// The key two values share exactly when the store finds one by the
    /// other (numbers by value, text exactly); `None` for null.
    pub fn match_key(&self) -> Option<MatchKey> {
        key(self.as_sql())
    }

    /// The value as SQLite stores it.
    fn as_sql(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Number(f) => ValueRef::Real(*f),
            Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
            Value::Date(d) => ValueRef::Integer(i64::from(*d)),
            Value::Datetime(m) => ValueRef::Integer(*m),
        }
    }

    fn from_sql(kind: FieldType, v: SqlValue) -> Value {
        match (kind, v) {
            (_, SqlValue::Null) => Value::Null,
            (FieldType::Number, SqlValue::Real(f)) => Value::Number(f),
            (FieldType::Number, SqlValue::Integer(i)) => Value::Number(i as f64),
            (FieldType::Boolean, SqlValue::Integer(i)) => Value::Bool(i != 0),
            (FieldType::Date, SqlValue::Integer(i)) => Value::Date(i32::try_from(i).unwrap_or_default()),
            (FieldType::Datetime, SqlValue::Integer(i)) => Value::Datetime(i),
            (_, SqlValue::Text(s)) => Value::Text(s),
            (_, SqlValue::Integer(i)) => Value::Text(i.to_string()),
            (_, SqlValue::Real(f)) => Value::Text(f.to_string()),
            (_, SqlValue::Blob(b)) => Value::Text(String::from_utf8_lossy(&b).into_owned()),
        }
    }
}

/// A key that compares the way SQLite compares stored values: numbers by
/// value whether stored as integer or real, text exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchKey {
    /// An integer, or a real with an integral value.
    Int(i64),
    /// Any other real, by its bits.
    Real(u64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl MatchKey {
    fn real(f: f64) -> Self {
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            MatchKey::Int(f as i64)
        } else {
            MatchKey::Real(f.to_bits())
        }
    }
}

/// The match key of a value as SQLite holds it (bound or read back).
fn key(v: ValueRef<'_>) -> Option<MatchKey> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(MatchKey::Int(i)),
        ValueRef::Real(f) => Some(MatchKey::real(f)),
        ValueRef::Text(t) => Some(MatchKey::Text(String::from_utf8_lossy(t).into_owned())),
        ValueRef::Blob(b) => Some(MatchKey::Blob(b.to_vec())),
    }
}

impl ToSql for Value {
    /// Binds without copying text.
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_sql()))
    }
}

/// Whether two writes name the same fields in the same order.
fn same_fields(a: &[(String, Value)], b: &[(String, Value)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((x, _), (y, _))| x == y)
}

/// A record id as the text it is stored as, bound without an allocation.
struct IdText([u8; 36]);

impl IdText {
    fn of(id: RecordId) -> Self {
        let mut text = [0u8; 36];
        id.hyphenated().encode_lower(&mut text);
        Self(text)
    }
}

impl ToSql for IdText {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(&self.0)))
    }
}

/// The statement for the field list of the row at hand, prepared again
/// only when the list differs from the previous row's.
struct Statements<'t, F> {
    sql_for: F,
    names: Vec<String>,
    statement: Option<rusqlite::CachedStatement<'t>>,
}

impl<'t, F: Fn(&[&str]) -> String> Statements<'t, F> {
    fn new(sql_for: F) -> Self {
        Self {
            sql_for,
            names: Vec::new(),
            statement: None,
        }
    }

    fn get(
        &mut self,
        tx: &'t rusqlite::Transaction<'_>,
        fields: &[(String, Value)],
    ) -> Result<&mut rusqlite::CachedStatement<'t>> {
        let same = self.statement.is_some()
            && self.names.len() == fields.len()
            && self.names.iter().zip(fields).all(|(a, (b, _))| a == b);
        if !same {
            let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            self.statement = Some(tx.prepare_cached(&(self.sql_for)(&names)).map_err(store_error)?);
            self.names = fields.iter().map(|(n, _)| n.clone()).collect();
        }
        self.statement
            .as_mut()
            .ok_or_else(|| Error::Internal("no statement prepared".into()))
    }
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its id.
    pub id: RecordId,
    /// Field values by name (every declared field and `name`).
    pub fields: BTreeMap<String, Value>,
}

/// Field values written to one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The record.
    pub id: RecordId,
    /// The fields written, by name.
    pub fields: Vec<(String, Value)>,
}

/// What one committed batch changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    /// New records.
    pub creates: Vec<Write>,
    /// Changes to existing records.
    pub updates: Vec<Write>,
}

/// Where records live.
pub trait RecordStore: Send + Sync {
    /// Creates the object's table, adds columns for new fields and a unique
    /// index for each unique field. Existing records are kept.
    fn ensure_object(&self, workspace: &str, object: &ObjectDef) -> Result<()>;

    /// Adds an index on `field` (the fields matching rules look up).
    fn ensure_index(&self, workspace: &str, object: &str, field: &str) -> Result<()>;

    /// For each of `values`, the ids of the records whose `field` equals it
    /// (none for a null value).
    fn lookup(&self, workspace: &str, object: &str, field: &str, values: &[Value]) -> Result<Vec<Vec<RecordId>>>;

    /// The records with these ids, in the same order (`None` when missing).
    fn get(&self, workspace: &str, object: &ObjectDef, ids: &[RecordId]) -> Result<Vec<Option<Record>>>;

    /// A page of records, newest first: those whose fields equal every
    /// filter, with ids below `before` (the previous page's last id).
    fn page(
        &self,
        workspace: &str,
        object: &ObjectDef,
        filters: &[(String, Value)],
        before: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>>;

    /// Applies one batch atomically: all of it or nothing.
    fn commit(&self, workspace: &str, object: &str, batch: &WriteBatch) -> Result<()>;

    /// How many records the object has.
    fn count(&self, workspace: &str, object: &str) -> Result<u64>;

    /// Every record of the object as one Arrow batch (`records.<object>` in
    /// SQL): `id`, `name`, then the declared fields, typed by field type.
    fn scan(&self, workspace: &str, object: &ObjectDef) -> Result<RecordBatch>;
}

/// The Arrow schema of an object's records.
pub fn arrow_schema(object: &ObjectDef) -> SchemaRef {
    let mut fields = vec![
        Field::new(ID_FIELD, DataType::Utf8, false),
        Field::new(NAME_FIELD, DataType::Utf8, true),
    ];
    for f in object
        .fields
        .iter()
        .filter(|f| f.name != ID_FIELD && f.name != NAME_FIELD)
    {
        let t = match f.kind {
            FieldType::Number => DataType::Float64,
            FieldType::Boolean => DataType::Boolean,
            FieldType::Date => DataType::Date32,
            FieldType::Datetime => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            _ => DataType::Utf8,
        };
        fields.push(Field::new(&f.name, t, true));
    }
    Arc::new(Schema::new(fields))
}

/// The declared fields of an object with `name` first (never `id`).
fn stored_fields(object: &ObjectDef) -> Vec<(String, FieldType)> {
    let mut names: Vec<(String, FieldType)> = vec![(NAME_FIELD.to_string(), FieldType::Text)];
    names.extend(
        object
            .fields
            .iter()
            .filter(|f| f.name != NAME_FIELD && f.name != ID_FIELD)
            .map(|f| (f.name.clone(), f.kind)),
    );
    names
}

/// The embedded record store: one SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn store_error(e: rusqlite::Error) -> Error {
    Error::Store(e.to_string())
}

/// SQLite binds at most this many parameters per statement (older builds).
const MAX_PARAMS: usize = 900;

/// The SQLite table of an object, unquoted.
fn table_name(workspace: &str, object: &str) -> String {
    format!("r:{}:{}", workspace.replace('"', ""), object.replace('"', ""))
}

fn table(workspace: &str, object: &str) -> String {
    format!("\"{}\"", table_name(workspace, object))
}

fn column(name: &str) -> String {
    format!("\"{}\"", name.replace('"', ""))
}

/// A record from a row of `SELECT "id", <stored fields>`.
fn read_record(row: &rusqlite::Row<'_>, names: &[(String, FieldType)]) -> Result<Record> {
    let id: String = row.get(0).map_err(store_error)?;
    let id = RecordId::parse_str(&id).map_err(|e| Error::Store(format!("a stored id is not a UUID: {e}")))?;
    let mut fields = BTreeMap::new();
    for (i, (name, kind)) in names.iter().enumerate() {
        let v: SqlValue = row.get(i + 1).map_err(store_error)?;
        fields.insert(name.clone(), Value::from_sql(*kind, v));
    }
    Ok(Record { id, fields })
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let conn = Connection::open(path).map_err(store_error)?;
        Self::configure(conn, true)
    }

    /// A private in-memory store (tests, dry runs).
    pub fn in_memory() -> Result<Self> {
        Self::configure(Connection::open_in_memory().map_err(store_error)?, false)
    }

    fn configure(conn: Connection, wal: bool) -> Result<Self> {
        if wal {
            conn.pragma_update(None, "journal_mode", "WAL").map_err(store_error)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(store_error)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(store_error)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RecordStore for SqliteStore {
    fn ensure_object(&self, workspace: &str, object: &ObjectDef) -> Result<()> {
        let conn = self.lock();
        let t = table(workspace, &object.name);
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (\"id\" TEXT PRIMARY KEY NOT NULL, \"name\" TEXT)"
        ))
        .map_err(store_error)?;
        let mut existing = Vec::new();
        {
            let mut stmt = conn.prepare(&format!("PRAGMA table_info({t})")).map_err(store_error)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(1)).map_err(store_error)?;
            for r in rows {
                existing.push(r.map_err(store_error)?);
            }
        }
        for f in &object.fields {
            if !existing.contains(&f.name) {
                conn.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN {}", column(&f.name)))
                    .map_err(store_error)?;
            }
            if f.unique {
                let index = column(&format!("u:{workspace}:{}:{}", object.name, f.name));
                conn.execute_batch(&format!(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {t} ({})",
                    column(&f.name)
                ))
                .map_err(store_error)?;
            }
        }
        Ok(())
    }

    fn ensure_index(&self, workspace: &str, object: &str, field: &str) -> Result<()> {
        let conn = self.lock();
        // An index led by the field (a unique field has one) serves the
        // lookups already; a second one would only cost every write.
        let covered: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) AS l, pragma_index_info(l.name) AS i \
                 WHERE i.seqno = 0 AND i.name = ?2)",
                rusqlite::params![table_name(workspace, object), field],
                |r| r.get(0),
            )
            .map_err(store_error)?;
        if covered {
            return Ok(());
        }
        let index = column(&format!("i:{workspace}:{object}:{field}"));
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {} ({})",
            table(workspace, object),
            column(field)
        ))
        .map_err(store_error)
    }

    fn lookup(&self, workspace: &str, object: &str, field: &str, values: &[Value]) -> Result<Vec<Vec<RecordId>>> {
        let conn = self.lock();
        let mut wanted: HashMap<MatchKey, Vec<usize>> = HashMap::new();
        let mut params: Vec<&Value> = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if let Some(k) = v.match_key() {
                let slots = wanted.entry(k).or_default();
                if slots.is_empty() {
                    params.push(v);
                }
                slots.push(i);
            }
        }
        let mut found: Vec<Vec<RecordId>> = vec![Vec::new(); values.len()];
        for chunk in params.chunks(MAX_PARAMS) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT {c}, \"id\" FROM {t} WHERE {c} IN ({marks})",
                c = column(field),
                t = table(workspace, object)
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
            let mut rows = stmt.query(params_from_iter(chunk.iter())).map_err(store_error)?;
            while let Some(row) = rows.next().map_err(store_error)? {
                let v = row.get_ref(0).map_err(store_error)?;
                let id: String = row.get(1).map_err(store_error)?;
                let id =
                    RecordId::parse_str(&id).map_err(|e| Error::Store(format!("a stored id is not a UUID: {e}")))?;
                if let Some(slots) = key(v).and_then(|k| wanted.get(&k)) {
                    for &i in slots {
                        found[i].push(id);
                    }
                }
            }
        }
        Ok(found)
    }

    fn get(&self, workspace: &str, object: &ObjectDef, ids: &[RecordId]) -> Result<Vec<Option<Record>>> {
        let conn = self.lock();
        let names = stored_fields(object);
        let columns: Vec<String> = names.iter().map(|(n, _)| column(n)).collect();
        let mut by_id: HashMap<RecordId, Record> = HashMap::new();
        let id_texts: Vec<SqlValue> = ids.iter().map(|id| SqlValue::Text(id.to_string())).collect();
        for chunk in id_texts.chunks(MAX_PARAMS) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT \"id\", {} FROM {} WHERE \"id\" IN ({marks})",
                columns.join(", "),
                table(workspace, &object.name)
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
            let mut rows = stmt.query(params_from_iter(chunk.iter())).map_err(store_error)?;
            while let Some(row) = rows.next().map_err(store_error)? {
                let record = read_record(row, &names)?;
                by_id.insert(record.id, record);
            }
        }
        Ok(ids.iter().map(|id| by_id.remove(id)).collect())
    }

    fn page(
        &self,
        workspace: &str,
        object: &ObjectDef,
        filters: &[(String, Value)],
        before: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<Record>> {
        let conn = self.lock();
        let names = stored_fields(object);
        let columns: Vec<String> = names.iter().map(|(n, _)| column(n)).collect();
        let mut conditions = Vec::new();
        let mut params: Vec<&dyn ToSql> = Vec::new();
        for (field, value) in filters {
            conditions.push(format!("{} = ?", column(field)));
            params.push(value);
        }
        let before = before.map(IdText::of);
        if let Some(before) = &before {
            conditions.push("\"id\" < ?".into());
            params.push(before);
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        params.push(&limit);
        let sql = format!(
            "SELECT \"id\", {} FROM {} {filter} ORDER BY \"id\" DESC LIMIT ?",
            columns.join(", "),
            table(workspace, &object.name)
        );
        let mut stmt = conn.prepare(&sql).map_err(store_error)?;
        let mut rows = stmt.query(params_from_iter(params)).map_err(store_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(store_error)? {
            out.push(read_record(row, &names)?);
        }
        Ok(out)
    }

    fn commit(&self, workspace: &str, object: &str, batch: &WriteBatch) -> Result<()> {
        let mut conn = self.lock();
        let t = table(workspace, object);
        let tx = conn.transaction().map_err(store_error)?;
        {
            // Creates that write the same fields go in multi-row INSERTs: a
            // statement per row costs SQLite far more than a row of VALUES.
            let mut rest = &batch.creates[..];
            while let Some(first) = rest.first() {
                let per = (MAX_PARAMS / (first.fields.len() + 1)).max(1);
                let n = rest
                    .iter()
                    .take(per)
                    .take_while(|w| same_fields(&w.fields, &first.fields))
                    .count();
                let (run, after) = rest.split_at(n);
                rest = after;
                let ids: Vec<IdText> = run.iter().map(|w| IdText::of(w.id)).collect();
                let cols: Vec<String> = std::iter::once(ID_FIELD)
                    .chain(first.fields.iter().map(|(n, _)| n.as_str()))
                    .map(column)
                    .collect();
                let row = format!("({})", vec!["?"; cols.len()].join(","));
                let sql = format!(
                    "INSERT INTO {t} ({}) VALUES {}",
                    cols.join(", "),
                    vec![row; n].join(",")
                );
                let params = run
                    .iter()
                    .zip(&ids)
                    .flat_map(|(w, id)| std::iter::once(id as &dyn ToSql).chain(w.fields.iter().map(|(_, v)| v as _)));
                tx.prepare_cached(&sql)
                    .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
                    .map_err(store_error)?;
            }
            let mut updates = Statements::new(|names: &[&str]| {
                let sets: Vec<String> = names.iter().map(|n| format!("{} = ?", column(n))).collect();
                format!("UPDATE {t} SET {} WHERE \"id\" = ?", sets.join(", "))
            });
            for w in batch.updates.iter().filter(|w| !w.fields.is_empty()) {
                let id = IdText::of(w.id);
                let params = w
                    .fields
                    .iter()
                    .map(|(_, v)| v as &dyn ToSql)
                    .chain(std::iter::once(&id as _));
                updates
                    .get(&tx, &w.fields)?
                    .execute(rusqlite::params_from_iter(params))
                    .map_err(store_error)?;
            }
        }
        tx.commit().map_err(store_error)
    }

    fn scan(&self, workspace: &str, object: &ObjectDef) -> Result<RecordBatch> {
        let conn = self.lock();
        let names = stored_fields(object);
        let columns: Vec<String> = names.iter().map(|(n, _)| column(n)).collect();
        let sql = format!(
            "SELECT \"id\", {} FROM {} ORDER BY \"id\"",
            columns.join(", "),
            table(workspace, &object.name)
        );
        let mut ids = StringBuilder::new();
        let mut builders: Vec<Builder> = names.iter().map(|(_, k)| Builder::new(*k)).collect();
        let mut stmt = conn.prepare(&sql).map_err(store_error)?;
        let mut rows = stmt.query([]).map_err(store_error)?;
        while let Some(row) = rows.next().map_err(store_error)? {
            let id: String = row.get(0).map_err(store_error)?;
            ids.append_value(id);
            for (i, ((_, kind), b)) in names.iter().zip(builders.iter_mut()).enumerate() {
                let v: SqlValue = row.get(i + 1).map_err(store_error)?;
                b.push(Value::from_sql(*kind, v));
            }
        }
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(ids.finish())];
        arrays.extend(builders.into_iter().map(Builder::finish));
        RecordBatch::try_new(arrow_schema(object), arrays).map_err(|e| Error::Internal(e.to_string()))
    }

    fn count(&self, workspace: &str, object: &str) -> Result<u64> {
        self.lock()
            .query_row(&format!("SELECT count(*) FROM {}", table(workspace, object)), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(store_error)
    }
}

/// Builds one Arrow column of field values.
enum Builder {
    Text(StringBuilder),
    Number(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Datetime(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(kind: FieldType) -> Self {
        match kind {
            FieldType::Number => Builder::Number(Float64Builder::new()),
            FieldType::Boolean => Builder::Bool(BooleanBuilder::new()),
            FieldType::Date => Builder::Date(Date32Builder::new()),
            FieldType::Datetime => Builder::Datetime(TimestampMicrosecondBuilder::new()),
            _ => Builder::Text(StringBuilder::new()),
        }
    }

    fn push(&mut self, v: Value) {
        match (self, v) {
            (Builder::Number(b), Value::Number(f)) => b.append_value(f),
            (Builder::Bool(b), Value::Bool(x)) => b.append_value(x),
            (Builder::Date(b), Value::Date(d)) => b.append_value(d),
            (Builder::Datetime(b), Value::Datetime(m)) => b.append_value(m),
            (Builder::Text(b), Value::Text(t)) => b.append_value(t),
            (Builder::Number(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::Date(b), _) => b.append_null(),
            (Builder::Datetime(b), _) => b.append_null(),
            (Builder::Text(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Number(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Datetime(mut b) => Arc::new(b.finish().with_timezone("UTC")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Document;
    use crate::objects::Objects;

    fn contact() -> ObjectDef {
        let objects = Objects::from_toml(
            r#"
[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  unique = true
  [[objects.fields]]
  name = "score"
  type = "number"
  [[objects.fields]]
  name = "vip"
  type = "boolean"
  [[objects.fields]]
  name = "born"
  type = "date"
"#,
        )
        .expect("objects");
        assert!(objects.validate().is_empty());
        objects.objects[0].clone()
    }

    fn create(email: &str, score: f64) -> Write {
        Write {
            id: RecordId::now_v7(),
            fields: vec![
                ("name".into(), Value::Text(format!("N {email}"))),
                ("email".into(), Value::Text(email.into())),
                ("score".into(), Value::Number(score)),
            ],
        }
    }

    #[test]
    fn create_lookup_get_update() {
        let store = SqliteStore::in_memory().expect("store");
        let def = contact();
        store.ensure_object("w1", &def).expect("ensure");
        let a = create("a@x.io", 1.0);
        let b = create("b@x.io", 2.5);
        store
            .commit(
                "w1",
                "contact",
                &WriteBatch {
                    creates: vec![a.clone(), b.clone()],
                    updates: vec![],
                },
            )
            .expect("commit");
        assert_eq!(store.count("w1", "contact").expect("count"), 2);
        let found = store
            .lookup(
                "w1",
                "contact",
                "email",
                &[
                    Value::Text("b@x.io".into()),
                    Value::Text("zz".into()),
                    Value::Null,
                    Value::Text("a@x.io".into()),
                ],
            )
            .expect("lookup");
        assert_eq!(found, vec![vec![b.id], vec![], vec![], vec![a.id]]);
        // Numbers match by value whatever their stored form.
        let by_score = store
            .lookup("w1", "contact", "score", &[Value::Number(1.0), Value::Number(2.5)])
            .expect("lookup");
        assert_eq!(by_score, vec![vec![a.id], vec![b.id]]);

        store
            .commit(
                "w1",
                "contact",
                &WriteBatch {
                    creates: vec![],
                    updates: vec![Write {
                        id: a.id,
                        fields: vec![("vip".into(), Value::Bool(true)), ("born".into(), Value::Date(5000))],
                    }],
                },
            )
            .expect("update");
        let got = store.get("w1", &def, &[a.id, RecordId::now_v7()]).expect("get");
        let rec = got[0].as_ref().expect("a exists");
        assert_eq!(rec.fields["vip"], Value::Bool(true));
        assert_eq!(rec.fields["born"], Value::Date(5000));
        assert_eq!(rec.fields["score"], Value::Number(1.0));
        assert_eq!(rec.fields["name"], Value::Text("N a@x.io".into()));
        assert!(got[1].is_none());
    }

    #[test]
    fn scan_gives_typed_arrow_columns() {
        use datafusion::arrow::array::{Array, AsArray};
        let store = SqliteStore::in_memory().expect("store");
        let def = contact();
        store.ensure_object("w", &def).expect("ensure");
        store
            .commit(
                "w",
                "contact",
                &WriteBatch {
                    creates: vec![create("a@x.io", 2.5)],
                    updates: vec![],
                },
            )
            .expect("commit");
        let batch = store.scan("w", &def).expect("scan");
        assert_eq!(batch.num_rows(), 1);
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "name", "email", "score", "vip", "born"]);
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "a@x.io");
        assert_eq!(
            batch
                .column(3)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0),
            2.5
        );
        assert!(batch.column(4).is_null(0));
    }

    #[test]
    fn matching_on_a_unique_field_adds_no_second_index() {
        let store = SqliteStore::in_memory().expect("store");
        store.ensure_object("w", &contact()).expect("ensure");
        for field in ["email", "score", "score"] {
            store.ensure_index("w", "contact", field).expect("index");
        }
        let led_by = |field: &str| -> i64 {
            store
                .lock()
                .query_row(
                    "SELECT count(*) FROM pragma_index_list('r:w:contact') AS l, pragma_index_info(l.name) AS i \
                     WHERE i.seqno = 0 AND i.name = ?1",
                    [field],
                    |r| r.get(0),
                )
                .expect("indexes")
        };
        assert_eq!((led_by("email"), led_by("score")), (1, 1));
    }

    #[test]
    fn creates_with_differing_fields_in_one_batch_are_all_written() {
        let store = SqliteStore::in_memory().expect("store");
        let def = contact();
        store.ensure_object("w", &def).expect("ensure");
        // More rows than one INSERT takes, with a different field list
        // every seventh row, so runs split both ways.
        let creates: Vec<Write> = (0..1000)
            .map(|i| {
                let mut w = create(&format!("u{i}@x.io"), f64::from(i));
                if i % 7 == 0 {
                    w.fields.push(("vip".into(), Value::Bool(true)));
                }
                w
            })
            .collect();
        let batch = WriteBatch {
            creates: creates.clone(),
            updates: vec![],
        };
        store.commit("w", "contact", &batch).expect("commit");
        assert_eq!(store.count("w", "contact").expect("count"), 1000);
        let ids: Vec<RecordId> = creates.iter().map(|w| w.id).collect();
        let got = store.get("w", &def, &ids).expect("get");
        for (i, (w, rec)) in creates.iter().zip(got).enumerate() {
            let rec = rec.unwrap_or_else(|| panic!("record {i} missing"));
            assert_eq!(rec.fields["score"], Value::Number(i as f64));
            assert_eq!(rec.fields["email"], w.fields[1].1);
            let vip = if i % 7 == 0 { Value::Bool(true) } else { Value::Null };
            assert_eq!(rec.fields["vip"], vip, "record {i}");
        }
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let store = SqliteStore::in_memory().expect("store");
        store.ensure_object("w1", &contact()).expect("ensure");
        let err = store
            .commit(
                "w1",
                "contact",
                &WriteBatch {
                    creates: vec![create("same@x.io", 1.0), create("same@x.io", 2.0)],
                    updates: vec![],
                },
            )
            .expect_err("unique email");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        assert_eq!(
            store.count("w1", "contact").expect("count"),
            0,
            "nothing of the failed batch stays"
        );
    }

    #[test]
    fn workspaces_do_not_see_each_other() {
        let store = SqliteStore::in_memory().expect("store");
        let def = contact();
        store.ensure_object("w1", &def).expect("ensure");
        store.ensure_object("w2", &def).expect("ensure");
        store
            .commit(
                "w1",
                "contact",
                &WriteBatch {
                    creates: vec![create("a@x.io", 1.0)],
                    updates: vec![],
                },
            )
            .expect("commit");
        assert_eq!(store.count("w2", "contact").expect("count"), 0);
        let found = store
            .lookup("w2", "contact", "email", &[Value::Text("a@x.io".into())])
            .expect("lookup");
        assert_eq!(found, vec![Vec::<RecordId>::new()]);
    }

    #[test]
    fn new_fields_are_added_and_records_persist_across_opens() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("records.db");
        let mut def = contact();
        let a = create("a@x.io", 1.0);
        {
            let store = SqliteStore::open(&path).expect("open");
            store.ensure_object("w", &def).expect("ensure");
            store.ensure_index("w", "contact", "score").expect("index");
            store
                .commit(
                    "w",
                    "contact",
                    &WriteBatch {
                        creates: vec![a.clone()],
                        updates: vec![],
                    },
                )
                .expect("commit");
        }
        def.fields.push(crate::objects::FieldDef {
            name: "city".into(),
            kind: FieldType::Text,
            unique: false,
            options: vec![],
            object: None,
        });
        let store = SqliteStore::open(&path).expect("reopen");
        store.ensure_object("w", &def).expect("migrate");
        let rec = store.get("w", &def, &[a.id]).expect("get").remove(0).expect("kept");
        assert_eq!(rec.fields["email"], Value::Text("a@x.io".into()));
        assert_eq!(rec.fields["city"], Value::Null);
    }

    #[test]
    fn lookups_of_many_keys_are_chunked() {
        let store = SqliteStore::in_memory().expect("store");
        store.ensure_object("w", &contact()).expect("ensure");
        let creates: Vec<Write> = (0..2500).map(|i| create(&format!("u{i}@x.io"), f64::from(i))).collect();
        store
            .commit(
                "w",
                "contact",
                &WriteBatch {
                    creates: creates.clone(),
                    updates: vec![],
                },
            )
            .expect("commit");
        let keys: Vec<Value> = (0..2500).rev().map(|i| Value::Text(format!("u{i}@x.io"))).collect();
        let found = store.lookup("w", "contact", "email", &keys).expect("lookup");
        assert_eq!(found.len(), 2500);
        assert_eq!(found[0], vec![creates[2499].id]);
        assert_eq!(found[2499], vec![creates[0].id]);
    }
}
