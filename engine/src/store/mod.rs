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
//! This module is the seam: the domain types a load step and a scan speak
//! (values, match keys, writes, scans and their conditions) and the traits a
//! backend implements. Nothing here knows SQL dialects or drivers; the
//! embedded SQLite backend is [`SqliteStore`] (in `sqlite.rs`), and a
//! backend must find a record by a value exactly when their
//! [`Value::match_key`]s are equal.

mod postgres;
mod sqlite;

pub use postgres::{PgStore, schema_name};
pub use sqlite::SqliteStore;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

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

    /// The key two values share exactly when a store finds one by the
    /// other: numbers by value, text exactly, booleans as 0 and 1, dates
    /// and points in time by their count of days or microseconds; `None`
    /// for null, which matches nothing. Every backend must honour it.
    pub fn match_key(&self) -> Option<MatchKey> {
        match self {
            Value::Null => None,
            Value::Text(s) => Some(MatchKey::Text(s.clone())),
            Value::Number(f) => Some(MatchKey::real(*f)),
            Value::Bool(b) => Some(MatchKey::Int(i64::from(*b))),
            Value::Date(d) => Some(MatchKey::Int(i64::from(*d))),
            Value::Datetime(m) => Some(MatchKey::Int(*m)),
        }
    }

    /// The value in JSON, as the API shows it: dates as `YYYY-MM-DD`,
    /// points in time as RFC 3339 in UTC.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match self {
            Value::Null => Json::Null,
            Value::Text(s) => Json::String(s.clone()),
            Value::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
            Value::Bool(b) => Json::Bool(*b),
            Value::Date(days) => chrono::NaiveDate::from_num_days_from_ce_opt(days + DAYS_BEFORE_EPOCH)
                .map_or(Json::Null, |d| Json::String(d.to_string())),
            Value::Datetime(us) => chrono::DateTime::from_timestamp_micros(*us).map_or(Json::Null, |t| {
                Json::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }),
        }
    }

    /// A value of a field of type `kind` from its JSON form (the one
    /// [`Value::to_json`] gives); `None` when it is not one.
    pub fn from_json(kind: FieldType, json: &serde_json::Value) -> Option<Value> {
        use chrono::Datelike;
        use serde_json::Value as Json;
        match (kind, json) {
            (_, Json::Null) => Some(Value::Null),
            (FieldType::Number, Json::Number(n)) => n.as_f64().map(Value::Number),
            (FieldType::Boolean, Json::Bool(b)) => Some(Value::Bool(*b)),
            (FieldType::Date, Json::String(s)) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| Value::Date(d.num_days_from_ce() - DAYS_BEFORE_EPOCH)),
            (FieldType::Datetime, Json::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| Value::Datetime(t.timestamp_micros())),
            (FieldType::Number | FieldType::Boolean | FieldType::Date | FieldType::Datetime, _) => None,
            (_, Json::String(s)) => Some(Value::Text(s.clone())),
            _ => None,
        }
    }
}

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const DAYS_BEFORE_EPOCH: i32 = 719_163;

/// What decides whether a stored value matches a looked-up one (see
/// [`Value::match_key`]): numbers by value whether held as integer or
/// real, text exactly.
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
    /// The key of a number.
    pub(crate) fn real(f: f64) -> Self {
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            MatchKey::Int(f as i64)
        } else {
            MatchKey::Real(f.to_bits())
        }
    }
}

/// A record a lookup found: its id and the values of the fields asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Its id.
    pub id: RecordId,
    /// The values of the fields read, in the order asked.
    pub values: Vec<Value>,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its id.
    pub id: RecordId,
    /// Field values by name (every declared field and `name`).
    pub fields: BTreeMap<String, Value>,
}

/// Field values written to one record: one per field of its batch, `None`
/// for a field the write leaves as it is (null in a new record).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The record.
    pub id: RecordId,
    /// A value per field of the batch.
    pub values: Vec<Option<Value>>,
}

impl Write {
    /// The positions of the fields it writes.
    pub(crate) fn written(&self) -> Vec<usize> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|_| i))
            .collect()
    }
}

/// Consecutive writes that write the same fields, at most `most(n)` in a
/// run whose writes write `n` fields. Yields the positions of the written
/// fields and the run.
pub(crate) fn runs(writes: &[Write], most: impl Fn(usize) -> usize) -> impl Iterator<Item = (Vec<usize>, &[Write])> {
    let mut rest = writes;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let written = first.written();
        let n = rest
            .iter()
            .take(most(written.len()).max(1))
            .take_while(|w| {
                w.values.len() == first.values.len()
                    && w.values
                        .iter()
                        .zip(&first.values)
                        .all(|(a, b)| a.is_some() == b.is_some())
            })
            .count();
        let (run, after) = rest.split_at(n);
        rest = after;
        Some((written, run))
    })
}

/// What one committed batch changes. The field names are given once; each
/// write holds only values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    /// The fields the writes give values for.
    pub fields: Vec<String>,
    /// New records.
    pub creates: Vec<Write>,
    /// Changes to existing records.
    pub updates: Vec<Write>,
    /// The load step's counts for the rows of this batch, kept with it so
    /// that they are exactly what was committed, also after a crash.
    pub tally: Option<Tally>,
}

/// Counts of one load step of one execution, added up commit by commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// The execution.
    pub execution_id: String,
    /// The load step's `order`.
    pub order: u32,
    /// Rows handled.
    pub total: u64,
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Rows skipped.
    pub skipped: u64,
    /// Rows that failed.
    pub failed: u64,
}

/// Where records live.
pub trait RecordStore: Send + Sync {
    /// Creates the object's table, adds columns for new fields and a unique
    /// index for each unique field. Existing records are kept.
    fn ensure_object(&self, workspace: &str, object: &ObjectDef) -> Result<()>;

    /// Adds an index on `field` (the fields matching rules look up).
    fn ensure_index(&self, workspace: &str, object: &str, field: &str) -> Result<()>;

    /// For each of `values`, the records whose `field` equals it (none for
    /// a null value), with the values of the fields in `read`.
    fn lookup(
        &self,
        workspace: &str,
        object: &ObjectDef,
        field: &str,
        values: &[Value],
        read: &[String],
    ) -> Result<Vec<Vec<Found>>>;

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

    /// Applies one batch atomically: all of it or nothing, its tally
    /// included. A batch whose tally names a revoked execution (see
    /// [`RecordStore::revoke`]) is refused with [`Error::Revoked`], checked
    /// in the same transaction.
    fn commit(&self, workspace: &str, object: &str, batch: &WriteBatch) -> Result<()>;

    /// Refuses every later commit of the execution: once this returns, no
    /// commit of it is applied, whichever process tries. A process that
    /// resolves a run whose lease expired revokes it first, so the counts
    /// it then reads are final (docs/architecture.md, "Leased runs").
    fn revoke(&self, execution_id: &str) -> Result<()>;

    /// The committed tallies of an execution's load steps, by `order`
    /// (empty for a store that keeps none).
    fn tallies(&self, execution_id: &str) -> Result<Vec<Tally>> {
        let _ = execution_id;
        Ok(Vec::new())
    }

    /// How many records the object has.
    fn count(&self, workspace: &str, object: &str) -> Result<u64>;

    /// The records as they are now, for reads that must all see this one
    /// state whatever is committed after (a run's `records.<object>`: what
    /// a script reads does not depend on what the same run loads, so a dry
    /// run reads what the real run would).
    fn snapshot(&self) -> Result<Arc<dyn RecordSnapshot>>;

    /// Every record of the object as one Arrow batch: `id`, `name`, then
    /// the declared fields.
    fn scan_all(&self, workspace: &str, object: &ObjectDef) -> Result<RecordBatch> {
        let schema = arrow_schema(object);
        let scan = Scan {
            fields: schema.fields().iter().map(|f| f.name().clone()).collect(),
            ..Scan::default()
        };
        let mut batches = Vec::new();
        self.snapshot()?.scan(workspace, object, &scan, &mut |b| {
            batches.push(b);
            true
        })?;
        datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(|e| Error::Internal(e.to_string()))
    }
}

/// One state of the records, read while commits go on.
pub trait RecordSnapshot: Send + Sync {
    /// Reads the object's records that meet every condition of `scan`, in
    /// Arrow batches of at most `scan.batch_rows` rows with the fields it
    /// names (typed as [`arrow_schema`] types them), handing each to `each`
    /// as it is read; stops early when `each` returns false. A store may
    /// leave a condition it cannot apply (and then the limit) to the
    /// caller, which applies them all again.
    fn scan(
        &self,
        workspace: &str,
        object: &ObjectDef,
        scan: &Scan,
        each: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> Result<()>;
}

/// What a read of an object's records asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The fields to read, in order (`id`, `name` or declared fields); none
    /// reads only how many records there are.
    pub fields: Vec<String>,
    /// Conditions every record read meets.
    pub conditions: Vec<Condition>,
    /// At most this many records.
    pub limit: Option<usize>,
    /// Records per batch.
    pub batch_rows: usize,
}

impl Default for Scan {
    fn default() -> Self {
        Self {
            fields: Vec::new(),
            conditions: Vec::new(),
            limit: None,
            batch_rows: 8192,
        }
    }
}

/// A condition on one field's stored value, compared the way the record
/// store compares values (as match keys are: numbers by value, text
/// exactly); a null value meets no comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The field compared with a value.
    Compare(String, Comparison, Value),
    /// The field is null (`true`) or is not (`false`).
    Null(String, bool),
    /// The field equals one of the values.
    In(String, Vec<Value>),
}

impl Condition {
    /// The field the condition is on.
    pub fn field(&self) -> &str {
        match self {
            Condition::Compare(field, ..) | Condition::Null(field, _) | Condition::In(field, _) => field,
        }
    }
}

/// How a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

impl Comparison {
    fn sql(self) -> &'static str {
        match self {
            Comparison::Eq => "=",
            Comparison::NotEq => "<>",
            Comparison::Lt => "<",
            Comparison::LtEq => "<=",
            Comparison::Gt => ">",
            Comparison::GtEq => ">=",
        }
    }
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

/// The Arrow schema of what `scan` reads of `object` (as [`arrow_schema`]
/// types its fields), and each field's type.
pub(crate) fn scan_schema(object: &ObjectDef, scan: &Scan) -> Result<(SchemaRef, Vec<FieldType>)> {
    let all = arrow_schema(object);
    let mut fields = Vec::with_capacity(scan.fields.len());
    for name in &scan.fields {
        let field = all
            .field_with_name(name)
            .map_err(|_| Error::Internal(format!("object {} has no field {name}", object.name)))?;
        fields.push(field.clone());
    }
    let kinds = scan
        .fields
        .iter()
        .map(|f| object.field_type(f).unwrap_or(FieldType::Text))
        .collect();
    Ok((Arc::new(Schema::new(fields)), kinds))
}

/// A batch of `rows` records of `schema`, one builder per field (none when
/// only the count was asked for).
pub(crate) fn scanned_batch(schema: &SchemaRef, builders: Vec<Builder>, rows: usize) -> Result<RecordBatch> {
    let arrays: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
    RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| Error::Internal(e.to_string()))
}

/// The declared fields of an object with `name` first (never `id`).
pub(crate) fn stored_fields(object: &ObjectDef) -> Vec<(String, FieldType)> {
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

/// Builds one Arrow column of field values.
pub(crate) enum Builder {
    Text(StringBuilder),
    Number(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Datetime(TimestampMicrosecondBuilder),
}

impl Builder {
    pub(crate) fn new(kind: FieldType) -> Self {
        match kind {
            FieldType::Number => Builder::Number(Float64Builder::new()),
            FieldType::Boolean => Builder::Bool(BooleanBuilder::new()),
            FieldType::Date => Builder::Date(Date32Builder::new()),
            FieldType::Datetime => Builder::Datetime(TimestampMicrosecondBuilder::new()),
            _ => Builder::Text(StringBuilder::new()),
        }
    }

    pub(crate) fn push(&mut self, v: Value) {
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

    pub(crate) fn finish(self) -> ArrayRef {
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

    #[test]
    fn match_keys_compare_numbers_by_value_and_text_exactly() {
        let key = |v: Value| v.match_key();
        assert_eq!(key(Value::Number(3.0)), Some(MatchKey::Int(3)));
        assert_eq!(key(Value::Number(3.0)), key(Value::Datetime(3)));
        assert_ne!(key(Value::Number(3.5)), key(Value::Number(3.0)));
        assert_eq!(key(Value::Number(3.5)), key(Value::Number(3.5)));
        assert_eq!(key(Value::Bool(true)), Some(MatchKey::Int(1)));
        assert_eq!(key(Value::Date(-1)), Some(MatchKey::Int(-1)));
        assert_eq!(key(Value::Text("a@x.io".into())), key(Value::Text("a@x.io".into())));
        assert_ne!(key(Value::Text("a@x.io".into())), key(Value::Text("A@x.io".into())));
        assert_ne!(key(Value::Text("1".into())), key(Value::Number(1.0)));
        assert_eq!(key(Value::Null), None, "null matches nothing");
    }
}
