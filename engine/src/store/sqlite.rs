//! The embedded record store: one SQLite database file behind
//! [`RecordStore`].
//!
//! SQLite settings: WAL journal (readers never block the writer, a crash
//! never corrupts), `synchronous = NORMAL` (a committed batch survives a
//! process crash; only an OS crash or power loss can lose the last
//! transactions, never corrupt the file), a busy timeout so a second
//! process waits instead of failing, and checkpoints on a thread of their
//! own instead of inside commits (see `Checkpointer`).
//!
//! Values are stored as SQLite's own types (text, real, integer for
//! booleans, days and microseconds), so SQLite's equality is the engine's
//! match-key equality.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, params_from_iter};

use super::{
    Builder, Condition, Found, MatchKey, Record, RecordId, RecordSnapshot, RecordStore, Scan, Tally, Value, Write,
    WriteBatch, scan_schema, scanned_batch, stored_fields,
};
use crate::error::{Error, Result, StoreFault};
use crate::objects::{FieldType, ObjectDef};

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

/// A value bound as a statement parameter, without copying text.
struct Bound<'a>(&'a Value);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(bind(self.0)))
    }
}

/// A value as SQLite stores it.
fn bind(value: &Value) -> ValueRef<'_> {
    match value {
        Value::Null => ValueRef::Null,
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Number(f) => ValueRef::Real(*f),
        Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
        Value::Date(d) => ValueRef::Integer(i64::from(*d)),
        Value::Datetime(m) => ValueRef::Integer(*m),
    }
}

/// A stored value read back as a value of a field of type `kind`.
fn read_value(kind: FieldType, v: SqlValue) -> Value {
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

/// Runs of writes small enough for one statement of `written + 1`
/// parameters a row (the id and the written values): a statement per row
/// costs SQLite far more than a row of VALUES.
fn runs(writes: &[Write]) -> impl Iterator<Item = (Vec<usize>, &[Write])> {
    super::runs(writes, |written| (MAX_PARAMS / (written + 1)).max(1))
}

static NULL: Value = Value::Null;

/// Runs `sql` with each write's id and `written` values as its parameters.
fn execute(tx: &rusqlite::Transaction<'_>, sql: &str, run: &[Write], written: &[usize]) -> Result<()> {
    let ids: Vec<IdText> = run.iter().map(|w| IdText::of(w.id)).collect();
    let params = run.iter().zip(&ids).flat_map(|(w, id)| {
        std::iter::once(Param::Id(id)).chain(
            written
                .iter()
                .map(|&i| Param::Value(Bound(w.values[i].as_ref().unwrap_or(&NULL)))),
        )
    });
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute(params_from_iter(params)))
        .map(|_| ())
        .map_err(store_error)
}

/// A statement parameter: a record's id, a value, or a number of the
/// statement's own (a rowid, a limit).
enum Param<'a> {
    Id(&'a IdText),
    Value(Bound<'a>),
    Int(i64),
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Param::Id(id) => id.to_sql(),
            Param::Value(value) => value.to_sql(),
            Param::Int(n) => n.to_sql(),
        }
    }
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

/// The embedded record store: one SQLite database file.
pub struct SqliteStore {
    /// Checkpoints a file's WAL in the background (none in memory). Dropped
    /// first, so the writer's connection closes last and copies the rest.
    checkpoints: Option<Checkpointer>,
    /// Reads of a file's records (none in memory): WAL lets them run while
    /// the writer commits, each seeing the last commit before it began.
    reader: Option<Mutex<Connection>>,
    conn: Mutex<Connection>,
    /// The database file (none in memory): a snapshot reads on a
    /// connection of its own, so a long read blocks neither lookups nor
    /// commits.
    path: Option<std::path::PathBuf>,
}

/// Copies the WAL into the database file on a thread of its own, so a
/// load goes on while the copy and its syncs (a second in every ten of a
/// large load, when SQLite checkpointed inside commits) run beside it.
///
/// Checkpoints are passive: they never block the writer. A WAL that keeps
/// growing while commits follow each other (it restarts only once fully
/// copied) is bounded by the writer, which checkpoints and truncates it
/// itself past `wal_limit`.
struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    /// Held while a checkpoint runs: SQLite refuses a second checkpoint
    /// at once, so the writer's own waits for the thread's to end.
    running: Arc<Mutex<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    wal: std::path::PathBuf,
    wal_limit: u64,
}

impl Checkpointer {
    /// Pause between two checkpoints while commits go on.
    const PAUSE: Duration = Duration::from_millis(100);

    fn start(path: &Path, wal_limit: u64) -> Result<Self> {
        let conn = Connection::open(path).map_err(store_error)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let running = Arc::new(Mutex::new(()));
        let held = running.clone();
        let thread = std::thread::Builder::new()
            .name("weir-checkpoint".into())
            .spawn(move || {
                let mut due = woken.recv().is_ok();
                while due {
                    {
                        let _running = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                            tracing::warn!("checkpointing the record store: {e}");
                        }
                    }
                    // Commits during the pause make the next checkpoint due;
                    // the store's drop ends the thread at once.
                    let until = std::time::Instant::now() + Self::PAUSE;
                    let mut woken_since = false;
                    loop {
                        match woken.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                            Ok(()) => woken_since = true,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    due = woken_since || woken.recv().is_ok();
                }
            })
            .map_err(|e| Error::io("starting the record store's checkpoint thread", e))?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Self {
            wake: Some(wake),
            running,
            thread: Some(thread),
            wal: wal.into(),
            wal_limit,
        })
    }

    /// After a commit: wakes the thread, or checkpoints and truncates the
    /// WAL on the writer's connection when it has outgrown the limit.
    fn committed(&self, conn: &Connection) -> Result<()> {
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if size > self.wal_limit {
            // Another process's checkpoint, or a reader of an older state
            // (a run's snapshot, in this process or another), can still
            // refuse this one: it does not wait for them (the WAL keeps the
            // snapshot's pages until it ends), and the next commit tries
            // again.
            let _running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            conn.busy_timeout(Duration::ZERO).map_err(store_error)?;
            let truncated = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            conn.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
            return truncated.map_err(store_error);
        }
        if let Some(wake) = &self.wake {
            // A full channel means a checkpoint is already due.
            let _ = wake.try_send(());
        }
        Ok(())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// A SQLite failure as a record store error of the kind its code says.
fn store_error(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as Code;
    let kind = match e.sqlite_error_code() {
        Some(Code::ConstraintViolation) => StoreFault::Conflict,
        Some(Code::DiskFull) => StoreFault::Full,
        Some(Code::ReadOnly) => StoreFault::ReadOnly,
        Some(Code::DatabaseBusy | Code::DatabaseLocked | Code::CannotOpen) => StoreFault::Unavailable,
        _ => StoreFault::Other,
    };
    Error::store(kind, e.to_string())
}

/// SQLite binds at most this many parameters per statement (older builds).
const MAX_PARAMS: usize = 900;

/// How long a connection waits for a lock another one holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The WAL size past which the writer checkpoints and truncates it itself.
const WAL_LIMIT: u64 = 256 * 1024 * 1024;

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

/// The record id in column `i` of a row.
fn read_id(row: &rusqlite::Row<'_>, i: usize) -> Result<RecordId> {
    let text = row
        .get_ref(i)
        .map_err(store_error)?
        .as_bytes()
        .map_err(|e| Error::store(StoreFault::Other, e.to_string()))?;
    RecordId::try_parse_ascii(text)
        .map_err(|e| Error::store(StoreFault::Other, format!("a stored id is not a UUID: {e}")))
}

/// A record from a row of `SELECT "id", <stored fields>`.
fn read_record(row: &rusqlite::Row<'_>, names: &[(String, FieldType)]) -> Result<Record> {
    let id = read_id(row, 0)?;
    let mut fields = BTreeMap::new();
    for (i, (name, kind)) in names.iter().enumerate() {
        let v: SqlValue = row.get(i + 1).map_err(store_error)?;
        fields.insert(name.clone(), read_value(*kind, v));
    }
    Ok(Record { id, fields })
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        Self::open_with_wal_limit(path, WAL_LIMIT)
    }

    fn open_with_wal_limit(path: &Path, wal_limit: u64) -> Result<Self> {
        let conn = Connection::open(path).map_err(store_error)?;
        let mut store = Self::configure(conn, true)?;
        let reader = Connection::open(path).map_err(store_error)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
        store.reader = Some(Mutex::new(reader));
        store.checkpoints = Some(Checkpointer::start(path, wal_limit)?);
        store.path = Some(path.to_path_buf());
        Ok(store)
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
        // The checkpoint thread copies the WAL, not the commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(store_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS weir_load_tallies (
                execution_id TEXT NOT NULL, step INTEGER NOT NULL,
                total INTEGER NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL,
                skipped INTEGER NOT NULL, failed INTEGER NOT NULL,
                PRIMARY KEY (execution_id, step));
             CREATE TABLE IF NOT EXISTS weir_revoked_runs (execution_id TEXT PRIMARY KEY NOT NULL)",
        )
        .map_err(store_error)?;
        Ok(Self {
            checkpoints: None,
            reader: None,
            conn: Mutex::new(conn),
            path: None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection for reads of records.
    fn read(&self) -> MutexGuard<'_, Connection> {
        self.reader
            .as_ref()
            .unwrap_or(&self.conn)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    fn lookup(
        &self,
        workspace: &str,
        object: &ObjectDef,
        field: &str,
        values: &[Value],
        read: &[String],
    ) -> Result<Vec<Vec<Found>>> {
        let conn = self.read();
        let mut wanted: foldhash::HashMap<MatchKey, Vec<usize>> = foldhash::HashMap::default();
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
        let kinds: Vec<FieldType> = read
            .iter()
            .map(|f| object.field_type(f).unwrap_or(FieldType::Text))
            .collect();
        let columns: String = read.iter().map(|f| format!(", {}", column(f))).collect();
        let mut found: Vec<Vec<Found>> = vec![Vec::new(); values.len()];
        for chunk in params.chunks(MAX_PARAMS) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT {c}, \"id\"{columns} FROM {t} WHERE {c} IN ({marks})",
                c = column(field),
                t = table(workspace, &object.name)
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
            let mut rows = stmt
                .query(params_from_iter(chunk.iter().map(|v| Bound(v))))
                .map_err(store_error)?;
            while let Some(row) = rows.next().map_err(store_error)? {
                let Some(slots) = key(row.get_ref(0).map_err(store_error)?).and_then(|k| wanted.get(&k)) else {
                    continue;
                };
                let id = read_id(row, 1)?;
                let mut values = Vec::with_capacity(kinds.len());
                for (i, kind) in kinds.iter().enumerate() {
                    values.push(read_value(*kind, row.get(i + 2).map_err(store_error)?));
                }
                let record = Found { id, values };
                if let Some((&last, others)) = slots.split_last() {
                    for &i in others {
                        found[i].push(record.clone());
                    }
                    found[last].push(record);
                }
            }
        }
        Ok(found)
    }

    fn get(&self, workspace: &str, object: &ObjectDef, ids: &[RecordId]) -> Result<Vec<Option<Record>>> {
        let conn = self.read();
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
        let conn = self.read();
        let names = stored_fields(object);
        let columns: Vec<String> = names.iter().map(|(n, _)| column(n)).collect();
        let mut conditions = Vec::new();
        let bound: Vec<Bound<'_>> = filters.iter().map(|(_, value)| Bound(value)).collect();
        let mut params: Vec<&dyn ToSql> = Vec::new();
        for ((field, _), value) in filters.iter().zip(&bound) {
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
        let columns: Vec<String> = batch.fields.iter().map(|f| column(f)).collect();
        // Immediate: the write lock first, so the revocation check below
        // reads the newest state.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(store_error)?;
        for (written, run) in runs(&batch.creates) {
            let cols: Vec<&str> = std::iter::once("\"id\"")
                .chain(written.iter().map(|&i| columns[i].as_str()))
                .collect();
            let row = format!("({})", vec!["?"; cols.len()].join(","));
            let sql = format!(
                "INSERT INTO {t} ({}) VALUES {}",
                cols.join(", "),
                vec![row; run.len()].join(",")
            );
            execute(&tx, &sql, run, &written)?;
        }
        for (written, run) in runs(&batch.updates) {
            if written.is_empty() {
                continue;
            }
            // One statement per run: the changed values join the table by
            // id from a VALUES list (`column1` is the id).
            let sets: Vec<String> = written
                .iter()
                .enumerate()
                .map(|(k, &i)| format!("{} = v.column{}", columns[i], k + 2))
                .collect();
            let row = format!("({})", vec!["?"; written.len() + 1].join(","));
            let sql = format!(
                "UPDATE {t} SET {} FROM (VALUES {}) AS v WHERE {t}.\"id\" = v.column1",
                sets.join(", "),
                vec![row; run.len()].join(",")
            );
            execute(&tx, &sql, run, &written)?;
        }
        if let Some(t) = &batch.tally {
            let revoked = tx
                .prepare_cached("SELECT 1 FROM weir_revoked_runs WHERE execution_id = ?1")
                .and_then(|mut stmt| stmt.exists([&t.execution_id]))
                .map_err(store_error)?;
            if revoked {
                return Err(Error::Revoked(t.execution_id.clone()));
            }
            tx.execute(
                "INSERT INTO weir_load_tallies (execution_id, step, total, created, updated, skipped, failed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (execution_id, step) DO UPDATE SET
                   total = total + excluded.total, created = created + excluded.created,
                   updated = updated + excluded.updated, skipped = skipped + excluded.skipped,
                   failed = failed + excluded.failed",
                rusqlite::params![
                    t.execution_id,
                    t.order,
                    t.total as i64,
                    t.created as i64,
                    t.updated as i64,
                    t.skipped as i64,
                    t.failed as i64
                ],
            )
            .map_err(store_error)?;
        }
        tx.commit().map_err(store_error)?;
        match &self.checkpoints {
            Some(c) => c.committed(&conn),
            None => Ok(()),
        }
    }

    fn snapshot(&self) -> Result<Arc<dyn RecordSnapshot>> {
        let conn = match &self.path {
            Some(path) => {
                let conn = Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(store_error)?;
                conn.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
                // A read transaction holds the state of its first read
                // (WAL) until it ends.
                conn.execute_batch("BEGIN").map_err(store_error)?;
                conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                    .map_err(store_error)?;
                conn
            }
            None => {
                // In memory there is no second connection to the same
                // database: the snapshot is a copy.
                let mut copy = Connection::open_in_memory().map_err(store_error)?;
                let source = self.lock();
                rusqlite::backup::Backup::new(&source, &mut copy)
                    .and_then(|b| b.run_to_completion(i32::MAX, Duration::ZERO, None))
                    .map_err(store_error)?;
                drop(source);
                copy
            }
        };
        Ok(Arc::new(SqliteSnapshot { conn: Mutex::new(conn) }))
    }

    fn revoke(&self, execution_id: &str) -> Result<()> {
        // The writer's lock: a commit in flight ends before this, one after
        // it sees the row.
        self.lock()
            .execute(
                "INSERT INTO weir_revoked_runs (execution_id) VALUES (?1) ON CONFLICT DO NOTHING",
                [execution_id],
            )
            .map_err(store_error)?;
        Ok(())
    }

    fn tallies(&self, execution_id: &str) -> Result<Vec<Tally>> {
        let conn = self.read();
        let mut stmt = conn
            .prepare_cached(
                "SELECT step, total, created, updated, skipped, failed FROM weir_load_tallies
                 WHERE execution_id = ?1 ORDER BY step",
            )
            .map_err(store_error)?;
        let rows = stmt
            .query_map([execution_id], |r| {
                Ok(Tally {
                    execution_id: execution_id.to_string(),
                    order: r.get(0)?,
                    total: r.get::<_, i64>(1)? as u64,
                    created: r.get::<_, i64>(2)? as u64,
                    updated: r.get::<_, i64>(3)? as u64,
                    skipped: r.get::<_, i64>(4)? as u64,
                    failed: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(store_error)?;
        rows.collect::<rusqlite::Result<_>>().map_err(store_error)
    }

    fn count(&self, workspace: &str, object: &str) -> Result<u64> {
        self.read()
            .query_row(&format!("SELECT count(*) FROM {}", table(workspace, object)), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(store_error)
    }
}

/// A snapshot of the embedded store: one read transaction (or, in memory,
/// a copy), read a batch at a time in rowid order, so scans of it can
/// interleave and none holds the connection while its reader waits.
struct SqliteSnapshot {
    conn: Mutex<Connection>,
}

impl RecordSnapshot for SqliteSnapshot {
    fn scan(
        &self,
        workspace: &str,
        object: &ObjectDef,
        scan: &Scan,
        each: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> Result<()> {
        let (schema, kinds) = scan_schema(object, scan)?;
        let selected: String = scan.fields.iter().map(|f| format!(", {}", column(f))).collect();
        let mut params: Vec<&Value> = Vec::new();
        let mut clauses = Vec::new();
        let mut all_applied = true;
        for condition in &scan.conditions {
            match condition {
                Condition::Compare(f, op, v) => {
                    clauses.push(format!("{} {} ?", column(f), op.sql()));
                    params.push(v);
                }
                Condition::Null(f, true) => clauses.push(format!("{} IS NULL", column(f))),
                Condition::Null(f, false) => clauses.push(format!("{} IS NOT NULL", column(f))),
                Condition::In(_, values) if values.is_empty() => clauses.push("0".into()),
                Condition::In(f, values) if params.len() + values.len() < MAX_PARAMS => {
                    clauses.push(format!("{} IN ({})", column(f), vec!["?"; values.len()].join(",")));
                    params.extend(values);
                }
                // A list too long to bind is left to the caller, and so is
                // the limit, which only holds after every condition.
                Condition::In(..) => all_applied = false,
            }
        }
        clauses.push("rowid > ?".into());
        let sql = format!(
            "SELECT rowid{selected} FROM {} WHERE {} ORDER BY rowid LIMIT ?",
            table(workspace, &object.name),
            clauses.join(" AND ")
        );
        let batch_rows = scan.batch_rows.max(1);
        let mut left = scan.limit.filter(|_| all_applied).unwrap_or(usize::MAX);
        let mut after: i64 = i64::MIN;
        while left > 0 {
            let want = batch_rows.min(left);
            let mut builders: Vec<Builder> = kinds.iter().map(|k| Builder::new(*k)).collect();
            let mut n = 0usize;
            {
                let conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
                let want_rows = i64::try_from(want).unwrap_or(i64::MAX);
                let page = params
                    .iter()
                    .map(|v| Param::Value(Bound(v)))
                    .chain([Param::Int(after), Param::Int(want_rows)]);
                let mut rows = stmt.query(params_from_iter(page)).map_err(store_error)?;
                while let Some(row) = rows.next().map_err(store_error)? {
                    after = row.get(0).map_err(store_error)?;
                    for (i, (kind, b)) in kinds.iter().zip(builders.iter_mut()).enumerate() {
                        let v: SqlValue = row.get(i + 1).map_err(store_error)?;
                        b.push(read_value(*kind, v));
                    }
                    n += 1;
                }
            }
            if n == 0 {
                break;
            }
            let batch = scanned_batch(&schema, builders, n)?;
            if !each(batch) || n < want {
                break;
            }
            left -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_failures_are_store_errors_of_the_kind_they_are() {
        let kind = |e: Error| match e {
            Error::Store { kind, .. } => kind,
            other => panic!("not a store error: {other}"),
        };
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k TEXT UNIQUE); INSERT INTO t VALUES ('a')")
            .expect("table");
        let taken = conn.execute("INSERT INTO t VALUES ('a')", []).expect_err("unique");
        assert_eq!(kind(store_error(taken)), StoreFault::Conflict);

        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("r.db");
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE t (k TEXT)"))
            .expect("file");
        let read_only =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("read-only");
        let refused = read_only
            .execute("INSERT INTO t VALUES ('a')", [])
            .expect_err("read-only");
        assert_eq!(kind(store_error(refused)), StoreFault::ReadOnly);
    }
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

    /// The fields `create` writes.
    fn fields() -> Vec<String> {
        ["name", "email", "score"].map(String::from).to_vec()
    }

    fn create(email: &str, score: f64) -> Write {
        Write {
            id: RecordId::now_v7(),
            values: vec![
                Some(Value::Text(format!("N {email}"))),
                Some(Value::Text(email.into())),
                Some(Value::Number(score)),
            ],
        }
    }

    fn creates(writes: Vec<Write>) -> WriteBatch {
        WriteBatch {
            fields: fields(),
            creates: writes,
            updates: vec![],
            tally: None,
        }
    }

    #[test]
    fn scan_gives_typed_arrow_columns() {
        use datafusion::arrow::array::{Array, AsArray};
        let store = SqliteStore::in_memory().expect("store");
        let def = contact();
        store.ensure_object("w", &def).expect("ensure");
        store
            .commit("w", "contact", &creates(vec![create("a@x.io", 2.5)]))
            .expect("commit");
        let batch = store.scan_all("w", &def).expect("scan");
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
    fn the_wal_is_copied_in_the_background_and_kept_under_its_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("records.db");
        let wal = dir.path().join("records.db-wal");
        let limit = 256 * 1024;
        let store = SqliteStore::open_with_wal_limit(&path, limit).expect("open");
        let def = contact();
        store.ensure_object("w", &def).expect("ensure");
        let file_at_start = std::fs::metadata(&path).expect("db").len();
        for batch in 0..40 {
            let writes = (0..200)
                .map(|i| create(&format!("u{batch}-{i}@x.io"), f64::from(i)))
                .collect();
            store.commit("w", "contact", &creates(writes)).expect("commit");
            let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
            assert!(size <= limit, "after batch {batch} the WAL is {size} bytes");
        }
        // The database file fills while the store is open: the thread, not a
        // close, copied the WAL into it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).expect("db").len() <= file_at_start {
            assert!(std::time::Instant::now() < deadline, "nothing was checkpointed");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(store.count("w", "contact").expect("count"), 8000);
        drop(store);
        let reopened = SqliteStore::open(&path).expect("reopen");
        assert_eq!(reopened.count("w", "contact").expect("count"), 8000);
    }

    #[test]
    fn a_snapshot_held_elsewhere_lets_the_wal_grow_and_never_stalls_a_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("records.db");
        let wal = dir.path().join("records.db-wal");
        let limit = 64 * 1024;
        let store = SqliteStore::open_with_wal_limit(&path, limit).expect("open");
        let def = contact();
        store.ensure_object("w", &def).expect("ensure");
        store
            .commit("w", "contact", &creates(vec![create("first@x.io", 1.0)]))
            .expect("commit");
        // Another store on the file, as another process's run holds it.
        let other = SqliteStore::open(&path).expect("other");
        let snapshot = other.snapshot().expect("snapshot");
        let mut slowest = Duration::ZERO;
        for batch in 0..20 {
            let writes = (0..200)
                .map(|i| create(&format!("u{batch}-{i}@x.io"), f64::from(i)))
                .collect();
            let started = std::time::Instant::now();
            store.commit("w", "contact", &creates(writes)).expect("commit");
            slowest = slowest.max(started.elapsed());
        }
        // A truncate waiting for the snapshot would take the busy timeout.
        assert!(
            slowest < BUSY_TIMEOUT / 2,
            "a commit waited {slowest:?} for the snapshot"
        );
        assert!(
            std::fs::metadata(&wal).map_or(0, |m| m.len()) > limit,
            "the snapshot keeps the WAL"
        );
        assert_eq!(snapshot_count(snapshot.as_ref(), &def), 1, "the snapshot's state");
        drop(snapshot);
        store
            .commit("w", "contact", &creates(vec![create("last@x.io", 1.0)]))
            .expect("commit");
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert!(
            size <= limit,
            "once the snapshot ends the WAL is truncated again: {size} bytes"
        );
        assert_eq!(store.count("w", "contact").expect("count"), 4002);
    }

    fn snapshot_count(snapshot: &dyn RecordSnapshot, def: &ObjectDef) -> usize {
        let mut n = 0;
        snapshot
            .scan("w", def, &Scan::default(), &mut |b| {
                n += b.num_rows();
                true
            })
            .expect("scan");
        n
    }
}
