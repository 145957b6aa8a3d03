//! The record store on PostgreSQL (docs/deployment.md, "Records on
//! PostgreSQL"): one table per object, in a schema per workspace, with a
//! typed column per field and a unique index per unique field, so that a
//! team reads its records with plain SQL and its own tools.
//!
//! Layout: the records of object `contact` of workspace `W` are the table
//! `records_<W>.contact` (the workspace id with every character outside
//! `[a-z0-9_]` as `_`): `id uuid PRIMARY KEY`, `name text`, then each
//! declared field as `text`, `double precision` (number), `boolean`,
//! `date` or `timestamptz` (datetime). Load counts are kept in
//! `weir_load_tallies`, runs whose commits are refused in
//! `weir_revoked_runs`.
//!
//! Writes: a commit is one transaction. New records are copied in with
//! `COPY … FROM STDIN BINARY`; changed ones are written by one `UPDATE …
//! FROM unnest(…)` per set of written fields, the values bound as typed
//! arrays (no staging table to create and drop). The commit's counts go in
//! the same transaction, after a check, under a shared lock on the
//! execution, that it was not revoked: a revocation takes that lock
//! exclusively, so once it returns no commit of the run can be applied.
//!
//! A value is compared as its column's type compares it, which is the
//! engine's match-key equality for values of the field's type (numbers by
//! value, text exactly); a value of another type matches nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::record_batch::RecordBatch;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row};

use super::{
    Builder, Condition, Found, Record, RecordId, RecordSnapshot, RecordStore, Scan, Tally, Value, WriteBatch,
    scan_schema, scanned_batch, stored_fields,
};
use crate::error::{Error, Result, StoreFault};
use crate::objects::{FieldType, ID_FIELD, NAME_FIELD, ObjectDef};
use crate::pg::{ConnectError, PgPool};

/// A lock key of the record store's schema changes (any number no other
/// part of the database uses: "WEIR_REC").
const SCHEMA_LOCK: i64 = 0x5745_4952_5f52_4543;

/// The record store on PostgreSQL.
#[derive(Debug)]
pub struct PgStore {
    pool: Arc<PgPool>,
    /// The field types of each table, by workspace and object, as read
    /// from the database (a commit names fields, not their types); types
    /// never change and a field missing here is read again.
    kinds: Mutex<HashMap<(String, String), HashMap<String, FieldType>>>,
}

/// A PostgreSQL failure as a record store error of the kind its state says.
fn store_error(e: tokio_postgres::Error) -> Error {
    let kind = match e.code() {
        Some(code) => match &code.code()[..2] {
            "23" | "40" => StoreFault::Conflict,
            "53" if *code == SqlState::DISK_FULL => StoreFault::Full,
            "53" | "08" | "57" => StoreFault::Unavailable,
            _ if *code == SqlState::READ_ONLY_SQL_TRANSACTION => StoreFault::ReadOnly,
            _ => StoreFault::Other,
        },
        None if e.is_closed() || std::error::Error::source(&e).is_some() => StoreFault::Unavailable,
        None => StoreFault::Other,
    };
    let message = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    };
    Error::store(kind, message)
}

fn connect_error(e: ConnectError) -> Error {
    match e {
        ConnectError::Database(e) => store_error(e),
        ConnectError::Unavailable(why) => Error::store(StoreFault::Unavailable, why),
    }
}

/// The schema of a workspace's records.
pub fn schema_name(workspace: &str) -> String {
    let mut name = String::from("records_");
    name.extend(workspace.chars().map(|c| match c.to_ascii_lowercase() {
        c @ ('a'..='z' | '0'..='9' | '_') => c,
        _ => '_',
    }));
    name
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An object's table, quoted.
fn table(workspace: &str, object: &str) -> String {
    format!("{}.{}", quoted(&schema_name(workspace)), quoted(object))
}

/// An index's name: readable when it fits PostgreSQL's 63 bytes, else
/// named by a hash of what it indexes.
fn index_name(object: &str, field: &str, suffix: &str) -> String {
    let name = format!("{object}_{field}_{suffix}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across versions and machines.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{suffix}_{hash:016x}")
}

/// The column type of a field.
fn column_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Number => "double precision",
        FieldType::Boolean => "boolean",
        FieldType::Date => "date",
        FieldType::Datetime => "timestamptz",
        _ => "text",
    }
}

fn pg_type(kind: FieldType) -> Type {
    match kind {
        FieldType::Number => Type::FLOAT8,
        FieldType::Boolean => Type::BOOL,
        FieldType::Date => Type::DATE,
        FieldType::Datetime => Type::TIMESTAMPTZ,
        _ => Type::TEXT,
    }
}

/// The kind of a field of `object` as stored (`id` aside).
fn kind_of(object: &ObjectDef, field: &str) -> FieldType {
    object.field_type(field).unwrap_or(FieldType::Text)
}

/// 1970-01-01.
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// A value bound to a column of a field's type.
#[derive(Debug, Clone)]
enum Cell<'a> {
    Null,
    Id(RecordId),
    Text(&'a str),
    Number(f64),
    Bool(bool),
    Date(NaiveDate),
    Datetime(DateTime<Utc>),
}

impl<'a> Cell<'a> {
    /// `value` compared with field `field` of `object`: as [`Cell::of`],
    /// and the id as a UUID when it is one in its stored form (the id is
    /// compared as that text).
    fn on(object: &ObjectDef, field: &str, value: &'a Value) -> Option<Self> {
        if field != ID_FIELD {
            return Self::of(kind_of(object, field), value);
        }
        match value {
            Value::Null => Some(Cell::Null),
            Value::Text(s) => RecordId::try_parse(s)
                .ok()
                .filter(|id| id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == s)
                .map(Cell::Id),
            _ => None,
        }
    }

    /// `value` as a field of type `kind` holds it; `None` when it is of
    /// another type (it then equals no stored value).
    fn of(kind: FieldType, value: &'a Value) -> Option<Self> {
        Some(match (column_type(kind), value) {
            (_, Value::Null) => Cell::Null,
            ("text", Value::Text(s)) => Cell::Text(s),
            ("double precision", Value::Number(n)) => Cell::Number(*n),
            ("boolean", Value::Bool(b)) => Cell::Bool(*b),
            ("date", Value::Date(d)) => Cell::Date(epoch().checked_add_signed(chrono::Duration::days(i64::from(*d)))?),
            ("timestamptz", Value::Datetime(us)) => Cell::Datetime(DateTime::from_timestamp_micros(*us)?),
            _ => return None,
        })
    }

    /// Like [`Cell::of`], for a value that is written: one of another
    /// type is an error naming the field.
    fn written(kind: FieldType, field: &str, value: Option<&'a Value>) -> Result<Self> {
        match value {
            None => Ok(Cell::Null),
            Some(v) => Self::of(kind, v)
                .ok_or_else(|| Error::Internal(format!("field {field} is of type {kind:?} but was given {v:?}"))),
        }
    }
}

impl ToSql for Cell<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Id(id) => id.to_sql(ty, out),
            Cell::Text(s) => s.to_sql(ty, out),
            Cell::Number(n) => n.to_sql(ty, out),
            Cell::Bool(b) => b.to_sql(ty, out),
            Cell::Date(d) => d.to_sql(ty, out),
            Cell::Datetime(t) => t.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::UUID,
            Type::TEXT,
            Type::FLOAT8,
            Type::BOOL,
            Type::DATE,
            Type::TIMESTAMPTZ,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

/// The value in column `i` of a row, read as a field of type `kind`.
fn read_value(row: &Row, i: usize, kind: FieldType) -> Result<Value> {
    let read = match column_type(kind) {
        "double precision" => row.try_get::<_, Option<f64>>(i).map(|v| v.map(Value::Number)),
        "boolean" => row.try_get::<_, Option<bool>>(i).map(|v| v.map(Value::Bool)),
        "date" => row
            .try_get::<_, Option<NaiveDate>>(i)
            .map(|v| v.map(|d| Value::Date((d - epoch()).num_days() as i32))),
        "timestamptz" => row
            .try_get::<_, Option<DateTime<Utc>>>(i)
            .map(|v| v.map(|t| Value::Datetime(t.timestamp_micros()))),
        _ => row.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text)),
    };
    Ok(read.map_err(store_error)?.unwrap_or(Value::Null))
}

fn read_id(row: &Row, i: usize) -> Result<RecordId> {
    row.try_get(i).map_err(store_error)
}

/// A record from a row of `SELECT id, <stored fields>`.
fn read_record(row: &Row, names: &[(String, FieldType)]) -> Result<Record> {
    let id = read_id(row, 0)?;
    let mut fields = BTreeMap::new();
    for (i, (name, kind)) in names.iter().enumerate() {
        fields.insert(name.clone(), read_value(row, i + 1, *kind)?);
    }
    Ok(Record { id, fields })
}

/// A field as a column of a `SELECT` list: the id as its text, as the
/// engine reads it.
fn selected(field: &str) -> String {
    if field == ID_FIELD {
        "id::text".to_string()
    } else {
        quoted(field)
    }
}

/// The bind parameters of a statement, as the driver takes them.
fn refs<'a>(params: &'a [Box<dyn ToSql + Sync + Send + 'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// An object's table as it is in the database.
struct Existing {
    /// Its columns and their types (`information_schema`'s names).
    columns: Vec<(String, String)>,
    /// The first column of each of its indexes.
    led: Vec<String>,
}

impl PgStore {
    /// The record store in the database at `url` (`postgres://…`), with at
    /// most `pool_size` connections; creates its own tables when missing.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self> {
        let pool = PgPool::new(url, pool_size, "the record database")
            .map_err(|e| Error::io("starting the record database's runtime", e))?;
        let store = Self {
            pool: Arc::new(pool),
            kinds: Mutex::new(HashMap::new()),
        };
        let mut conn = store.conn()?;
        store
            .wait(async {
                let tx = conn.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS weir_load_tallies (
                        execution_id TEXT NOT NULL, step BIGINT NOT NULL,
                        total BIGINT NOT NULL, created BIGINT NOT NULL, updated BIGINT NOT NULL,
                        skipped BIGINT NOT NULL, failed BIGINT NOT NULL,
                        PRIMARY KEY (execution_id, step));
                     CREATE TABLE IF NOT EXISTS weir_revoked_runs (execution_id TEXT PRIMARY KEY)",
                )
                .await?;
                tx.commit().await
            })
            .map_err(store_error)?;
        drop(conn);
        Ok(store)
    }

    fn conn(&self) -> Result<crate::pg::PgConn<'_>> {
        self.pool.conn().map_err(connect_error)
    }

    fn wait<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.pool.wait(work)
    }

    /// The table as it is now (no columns when there is none).
    fn existing(&self, client: &Client, workspace: &str, object: &str) -> Result<Existing> {
        let schema = schema_name(workspace);
        let columns = self
            .wait(client.query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &object],
            ))
            .map_err(store_error)?;
        let led = self
            .wait(client.query(
                "SELECT a.attname::text FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &object],
            ))
            .map_err(store_error)?;
        Ok(Existing {
            columns: columns.iter().map(|r| (r.get(0), r.get(1))).collect(),
            led: led.iter().map(|r| r.get(0)).collect(),
        })
    }

    /// Runs the statements `needed` gives (statements that only add what
    /// is missing) under the schema-change lock, unless it finds nothing to
    /// add, first without the lock and again once it is held.
    fn change_schema(&self, needed: impl Fn(&Client) -> Result<Vec<String>>) -> Result<()> {
        let mut conn = self.conn()?;
        if needed(&conn)?.is_empty() {
            return Ok(());
        }
        let tx = self.wait(conn.transaction()).map_err(store_error)?;
        self.wait(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]))
            .map_err(store_error)?;
        // Another process may have added it meanwhile.
        for statement in needed(tx.client())? {
            self.wait(tx.batch_execute(&statement)).map_err(store_error)?;
        }
        self.wait(tx.commit()).map_err(store_error)
    }

    /// The types of `fields` of the object's table, in order.
    fn column_kinds(
        &self,
        client: &Client,
        workspace: &str,
        object: &str,
        fields: &[String],
    ) -> Result<Vec<FieldType>> {
        let key = (workspace.to_string(), object.to_string());
        let known = |kinds: &HashMap<String, FieldType>| -> Option<Vec<FieldType>> {
            fields.iter().map(|f| kinds.get(f).copied()).collect()
        };
        if let Some(found) = self.lock_kinds().get(&key).and_then(known) {
            return Ok(found);
        }
        let kinds: HashMap<String, FieldType> = self
            .existing(client, workspace, object)?
            .columns
            .into_iter()
            .map(|(name, data_type)| {
                let kind = match data_type.as_str() {
                    "double precision" => FieldType::Number,
                    "boolean" => FieldType::Boolean,
                    "date" => FieldType::Date,
                    "timestamp with time zone" => FieldType::Datetime,
                    _ => FieldType::Text,
                };
                (name, kind)
            })
            .collect();
        let found = known(&kinds);
        self.lock_kinds().insert(key, kinds);
        found.ok_or_else(|| Error::Internal(format!("object {object} has no column for one of {fields:?}")))
    }

    fn lock_kinds(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), HashMap<String, FieldType>>> {
        self.kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RecordStore for PgStore {
    fn ensure_object(&self, workspace: &str, object: &ObjectDef) -> Result<()> {
        let t = table(workspace, &object.name);
        self.change_schema(|client| {
            let Existing { columns, led } = self.existing(client, workspace, &object.name)?;
            let mut ddl = Vec::new();
            if columns.is_empty() {
                ddl.push(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {t} (id uuid PRIMARY KEY, name text)",
                    quoted(&schema_name(workspace))
                ));
            }
            let added: Vec<String> = stored_fields(object)
                .iter()
                .filter(|(name, _)| name != NAME_FIELD && !columns.iter().any(|(c, _)| c == name))
                .map(|(name, kind)| format!("ADD COLUMN IF NOT EXISTS {} {}", quoted(name), column_type(*kind)))
                .collect();
            if !added.is_empty() {
                ddl.push(format!("ALTER TABLE {t} {}", added.join(", ")));
            }
            for f in object.fields.iter().filter(|f| f.unique && f.name != ID_FIELD) {
                if !led.contains(&f.name) {
                    ddl.push(format!(
                        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {t} ({})",
                        quoted(&index_name(&object.name, &f.name, "key")),
                        quoted(&f.name)
                    ));
                }
            }
            Ok(ddl)
        })
    }

    fn ensure_index(&self, workspace: &str, object: &str, field: &str) -> Result<()> {
        // An index led by the field (a unique field has one, the id its
        // key) serves the lookups already; a second one would only cost
        // every write.
        self.change_schema(|client| {
            let led = self.existing(client, workspace, object)?.led;
            Ok(if led.iter().any(|f| f == field) {
                Vec::new()
            } else {
                vec![format!(
                    "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                    quoted(&index_name(object, field, "idx")),
                    table(workspace, object),
                    quoted(field)
                )]
            })
        })
    }

    fn lookup(
        &self,
        workspace: &str,
        object: &ObjectDef,
        field: &str,
        values: &[Value],
        read: &[String],
    ) -> Result<Vec<Vec<Found>>> {
        let mut wanted: HashMap<super::MatchKey, Vec<usize>> = HashMap::new();
        let mut keys: Vec<Cell<'_>> = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let (Some(k), Some(cell)) = (v.match_key(), Cell::on(object, field, v)) else {
                continue;
            };
            let slots = wanted.entry(k).or_default();
            if slots.is_empty() {
                keys.push(cell);
            }
            slots.push(i);
        }
        let mut found: Vec<Vec<Found>> = vec![Vec::new(); values.len()];
        if keys.is_empty() {
            return Ok(found);
        }
        let kind = kind_of(object, field);
        let kinds: Vec<FieldType> = read.iter().map(|f| kind_of(object, f)).collect();
        let columns: String = read.iter().map(|f| format!(", {}", selected(f))).collect();
        let sql = format!(
            "SELECT {}, id{columns} FROM {} WHERE {} = ANY($1)",
            selected(field),
            table(workspace, &object.name),
            quoted(field)
        );
        let conn = self.conn()?;
        let rows = self.wait(conn.query(&sql, &[&keys])).map_err(store_error)?;
        for row in &rows {
            let Some(slots) = read_value(row, 0, kind)?.match_key().and_then(|k| wanted.get(&k)) else {
                continue;
            };
            let id = read_id(row, 1)?;
            let mut values = Vec::with_capacity(kinds.len());
            for (i, kind) in kinds.iter().enumerate() {
                values.push(read_value(row, i + 2, *kind)?);
            }
            let record = Found { id, values };
            for &i in slots {
                found[i].push(record.clone());
            }
        }
        Ok(found)
    }

    fn get(&self, workspace: &str, object: &ObjectDef, ids: &[RecordId]) -> Result<Vec<Option<Record>>> {
        let names = stored_fields(object);
        let columns: Vec<String> = names.iter().map(|(n, _)| quoted(n)).collect();
        let sql = format!(
            "SELECT id, {} FROM {} WHERE id = ANY($1)",
            columns.join(", "),
            table(workspace, &object.name)
        );
        let conn = self.conn()?;
        let rows = self.wait(conn.query(&sql, &[&ids])).map_err(store_error)?;
        let mut by_id: HashMap<RecordId, Record> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = read_record(row, &names)?;
            by_id.insert(record.id, record);
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
        let names = stored_fields(object);
        let columns: Vec<String> = names.iter().map(|(n, _)| quoted(n)).collect();
        let mut params: Vec<Box<dyn ToSql + Sync + Send + '_>> = Vec::new();
        let mut conditions = Vec::new();
        for (field, value) in filters {
            match Cell::on(object, field, value) {
                // Equal to null, or to a value of another type: nothing.
                Some(Cell::Null) | None => return Ok(Vec::new()),
                Some(cell) => {
                    params.push(Box::new(cell));
                    conditions.push(format!("{} = ${}", quoted(field), params.len()));
                }
            }
        }
        if let Some(before) = before {
            params.push(Box::new(before));
            conditions.push(format!("id < ${}", params.len()));
        }
        params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT id, {} FROM {} {filter} ORDER BY id DESC LIMIT ${}",
            columns.join(", "),
            table(workspace, &object.name),
            params.len()
        );
        let conn = self.conn()?;
        let rows = self.wait(conn.query(&sql, &refs(&params))).map_err(store_error)?;
        rows.iter().map(|row| read_record(row, &names)).collect()
    }

    fn commit(&self, workspace: &str, object: &str, batch: &WriteBatch) -> Result<()> {
        let t = table(workspace, object);
        let mut conn = self.conn()?;
        let kinds = self.column_kinds(&conn, workspace, object, &batch.fields)?;
        let tx = self.wait(conn.transaction()).map_err(store_error)?;
        if let Some(tally) = &batch.tally {
            // Shared with the run's other commits, exclusive with its
            // revocation (see the module's documentation); the check is a
            // statement of its own, so that it reads what was committed
            // while it waited for the lock.
            self.wait(tx.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
                &[&tally.execution_id],
            ))
            .map_err(store_error)?;
            let revoked: bool = self
                .wait(tx.query_one(
                    "SELECT EXISTS (SELECT 1 FROM weir_revoked_runs WHERE execution_id = $1)",
                    &[&tally.execution_id],
                ))
                .map_err(store_error)?
                .get(0);
            if revoked {
                return Err(Error::Revoked(tally.execution_id.clone()));
            }
        }
        if !batch.creates.is_empty() {
            let columns: Vec<String> = std::iter::once("id".to_string())
                .chain(batch.fields.iter().map(|f| quoted(f)))
                .collect();
            let types: Vec<Type> = std::iter::once(Type::UUID)
                .chain(kinds.iter().map(|k| pg_type(*k)))
                .collect();
            let sql = format!("COPY {t} ({}) FROM STDIN BINARY", columns.join(", "));
            self.wait(async {
                let sink = tx.copy_in(sql.as_str()).await.map_err(store_error)?;
                let writer = BinaryCopyInWriter::new(sink, &types);
                futures::pin_mut!(writer);
                let mut row: Vec<Cell<'_>> = Vec::with_capacity(kinds.len() + 1);
                for w in &batch.creates {
                    row.clear();
                    row.push(Cell::Id(w.id));
                    for ((kind, field), value) in kinds.iter().zip(&batch.fields).zip(&w.values) {
                        row.push(Cell::written(*kind, field, value.as_ref())?);
                    }
                    writer.as_mut().write_raw(row.iter()).await.map_err(store_error)?;
                }
                writer.as_mut().finish().await.map_err(store_error)?;
                Ok::<_, Error>(())
            })?;
        }
        for (written, run) in super::runs(&batch.updates, |_| usize::MAX) {
            if written.is_empty() {
                continue;
            }
            // One array per column: the ids, then each written field.
            let ids: Vec<RecordId> = run.iter().map(|w| w.id).collect();
            let mut arrays: Vec<Vec<Cell<'_>>> = Vec::with_capacity(written.len());
            for &i in &written {
                let mut column = Vec::with_capacity(run.len());
                for w in run {
                    column.push(Cell::written(kinds[i], &batch.fields[i], w.values[i].as_ref())?);
                }
                arrays.push(column);
            }
            let sets: Vec<String> = written
                .iter()
                .map(|&i| format!("{c} = v.{c}", c = quoted(&batch.fields[i])))
                .collect();
            let unnest: Vec<String> = std::iter::once("$1::uuid[]".to_string())
                .chain(
                    written
                        .iter()
                        .enumerate()
                        .map(|(k, &i)| format!("${}::{}[]", k + 2, column_type(kinds[i]))),
                )
                .collect();
            let names: Vec<String> = std::iter::once("id".to_string())
                .chain(written.iter().map(|&i| quoted(&batch.fields[i])))
                .collect();
            let sql = format!(
                "UPDATE {t} SET {} FROM unnest({}) AS v ({}) WHERE {t}.id = v.id",
                sets.join(", "),
                unnest.join(", "),
                names.join(", ")
            );
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
            params.extend(arrays.iter().map(|a| a as &(dyn ToSql + Sync)));
            self.wait(tx.execute(&sql, &params)).map_err(store_error)?;
        }
        if let Some(t) = &batch.tally {
            let counts = [t.total, t.created, t.updated, t.skipped, t.failed].map(|n| n as i64);
            self.wait(tx.execute(
                "INSERT INTO weir_load_tallies (execution_id, step, total, created, updated, skipped, failed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (execution_id, step) DO UPDATE SET
                   total = weir_load_tallies.total + excluded.total,
                   created = weir_load_tallies.created + excluded.created,
                   updated = weir_load_tallies.updated + excluded.updated,
                   skipped = weir_load_tallies.skipped + excluded.skipped,
                   failed = weir_load_tallies.failed + excluded.failed",
                &[
                    &t.execution_id,
                    &i64::from(t.order),
                    &counts[0],
                    &counts[1],
                    &counts[2],
                    &counts[3],
                    &counts[4],
                ],
            ))
            .map_err(store_error)?;
        }
        self.wait(tx.commit()).map_err(store_error)
    }

    fn snapshot(&self) -> Result<Arc<dyn RecordSnapshot>> {
        let client = self.pool.open().map_err(connect_error)?;
        // A repeatable-read transaction reads the state of its first
        // statement until it ends.
        self.wait(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1"))
            .map_err(store_error)?;
        Ok(Arc::new(PgSnapshot {
            pool: self.pool.clone(),
            client: Mutex::new(client),
        }))
    }

    fn revoke(&self, execution_id: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = self.wait(conn.transaction()).map_err(store_error)?;
        // Waits for the run's commits in flight; those after see the row.
        self.wait(tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&execution_id],
        ))
        .map_err(store_error)?;
        self.wait(tx.execute(
            "INSERT INTO weir_revoked_runs (execution_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&execution_id],
        ))
        .map_err(store_error)?;
        self.wait(tx.commit()).map_err(store_error)
    }

    fn tallies(&self, execution_id: &str) -> Result<Vec<Tally>> {
        let conn = self.conn()?;
        let rows = self
            .wait(conn.query(
                "SELECT step, total, created, updated, skipped, failed FROM weir_load_tallies
                 WHERE execution_id = $1 ORDER BY step",
                &[&execution_id],
            ))
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| Tally {
                execution_id: execution_id.to_string(),
                order: u32::try_from(r.get::<_, i64>(0)).unwrap_or(u32::MAX),
                total: r.get::<_, i64>(1).max(0) as u64,
                created: r.get::<_, i64>(2).max(0) as u64,
                updated: r.get::<_, i64>(3).max(0) as u64,
                skipped: r.get::<_, i64>(4).max(0) as u64,
                failed: r.get::<_, i64>(5).max(0) as u64,
            })
            .collect())
    }

    fn count(&self, workspace: &str, object: &str) -> Result<u64> {
        let conn = self.conn()?;
        let row = self
            .wait(conn.query_one(&format!("SELECT count(*) FROM {}", table(workspace, object)), &[]))
            .map_err(store_error)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}

/// A snapshot on PostgreSQL: one repeatable-read transaction on a
/// connection of its own, read a batch at a time in id order (each batch a
/// query of its own), so scans of it can interleave and none holds the
/// connection while its reader waits.
struct PgSnapshot {
    pool: Arc<PgPool>,
    client: Mutex<Client>,
}

impl RecordSnapshot for PgSnapshot {
    fn scan(
        &self,
        workspace: &str,
        object: &ObjectDef,
        scan: &Scan,
        each: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> Result<()> {
        let (schema, kinds) = scan_schema(object, scan)?;
        let columns: String = scan.fields.iter().map(|f| format!(", {}", selected(f))).collect();
        let mut params: Vec<Box<dyn ToSql + Sync + Send + '_>> = Vec::new();
        let mut clauses = vec!["true".to_string()];
        let mut all_applied = true;
        for condition in &scan.conditions {
            let field = condition.field();
            match condition {
                Condition::Compare(_, op, v) => match Cell::on(object, field, v) {
                    // A null value meets no comparison.
                    Some(Cell::Null) => clauses.push("false".into()),
                    Some(cell) => {
                        params.push(Box::new(cell));
                        clauses.push(format!("{} {} ${}", quoted(field), op.sql(), params.len()));
                    }
                    None => all_applied = false,
                },
                Condition::Null(_, true) => clauses.push(format!("{} IS NULL", quoted(field))),
                Condition::Null(_, false) => clauses.push(format!("{} IS NOT NULL", quoted(field))),
                Condition::In(_, values) => {
                    let cells: Option<Vec<Cell<'_>>> = values.iter().map(|v| Cell::on(object, field, v)).collect();
                    match cells {
                        Some(cells) => {
                            params.push(Box::new(cells));
                            clauses.push(format!("{} = ANY(${})", quoted(field), params.len()));
                        }
                        None => all_applied = false,
                    }
                }
            }
        }
        let t = table(workspace, &object.name);
        let first = format!(
            "SELECT r.id{columns} FROM {t} AS r WHERE {} ORDER BY r.id LIMIT ${}",
            clauses.join(" AND "),
            params.len() + 1
        );
        let next = format!(
            "SELECT r.id{columns} FROM {t} AS r WHERE {} AND r.id > ${} ORDER BY r.id LIMIT ${}",
            clauses.join(" AND "),
            params.len() + 1,
            params.len() + 2
        );
        let batch_rows = scan.batch_rows.max(1);
        // The limit holds only once every condition is applied.
        let mut left = scan.limit.filter(|_| all_applied).unwrap_or(usize::MAX);
        let mut after: Option<RecordId> = None;
        while left > 0 {
            let want = batch_rows.min(left);
            let want_rows = i64::try_from(want).unwrap_or(i64::MAX);
            let mut bound = refs(&params);
            if let Some(after) = &after {
                bound.push(after);
            }
            bound.push(&want_rows);
            let rows = {
                let client = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let sql = if after.is_some() { &next } else { &first };
                self.pool
                    .wait(client.query(sql.as_str(), &bound))
                    .map_err(store_error)?
            };
            let n = rows.len();
            if n == 0 {
                break;
            }
            let mut builders: Vec<Builder> = kinds.iter().map(|k| Builder::new(*k)).collect();
            for row in &rows {
                for (i, b) in builders.iter_mut().enumerate() {
                    b.push(read_value(row, i + 1, kinds[i])?);
                }
            }
            after = Some(read_id(&rows[n - 1], 0)?);
            drop(rows);
            let batch = scanned_batch(&schema, builders, n)?;
            if !each(batch) || n < want {
                break;
            }
            left -= n;
        }
        Ok(())
    }
}
