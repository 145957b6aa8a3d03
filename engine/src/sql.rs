//! The SQL stage (SPEC §3.3): splitting a script into statements with their
//! positions, the policy of what a script may do, the session with schemas
//! `input`, `output` and `meta`, and mapping DataFusion errors to engine
//! errors with line and column.
//!
//! The policy is checked on the syntax tree before anything runs: a script
//! may create views and tables in `output` (its scopes) or temporary ones in
//! the default schema, insert into and drop those, and set an allow-listed
//! option. It may not read files or URLs, create external tables, copy, or
//! touch `input`/`meta`. This module does not consume scope streams; the
//! pipeline does.

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryConsumer, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateMemoryTable, DdlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    ObjectName, ObjectNamePart, ObjectType, Set, SetExpr, Statement, TableFactor, TableObject, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
use futures::StreamExt;

use crate::connector::{ParamValue, is_identifier};
use crate::error::{Error, Limit, Position, Result};

/// The longest script accepted, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
/// The deepest nesting of expressions (and subqueries) in a statement:
/// `1+1+…` with 2,000 terms is 2,000 levels deep.
pub const MAX_EXPR_DEPTH: usize = 128;
/// The most expressions in one statement.
pub const MAX_EXPR_NODES: usize = 200_000;
/// The most `UNION`/`INTERSECT`/`EXCEPT` operations in one query.
pub const MAX_SET_OPERATIONS: usize = 64;
/// The stack of the parsing thread: enough to build and drop the deepest
/// tree a script of [`MAX_SCRIPT_BYTES`] can spell.
const PARSE_STACK: usize = 1 << 30;

/// Engine options a SET statement may change.
const SETTABLE: &[&str] = &["datafusion.execution.time_zone"];
/// Table functions a script may call.
const TABLE_FUNCTIONS: &[&str] = &["generate_series", "range", "unnest"];
/// The schema of the run's input tables.
pub const INPUT_SCHEMA: &str = "input";
/// The schema of scopes.
pub const OUTPUT_SCHEMA: &str = "output";
/// The schema of the workspace's existing records (read-only).
pub const RECORDS_SCHEMA: &str = "records";
/// The schema of `current_execution` and `parameters`.
pub const META_SCHEMA: &str = "meta";
/// The schemas every run's session has.
const SCRIPT_SCHEMAS: [&str; 4] = [INPUT_SCHEMA, OUTPUT_SCHEMA, META_SCHEMA, RECORDS_SCHEMA];

/// Whether `name` is a schema of the session itself (the script's own, or
/// the engine's), which nothing else may take.
pub fn is_reserved_schema(name: &str) -> bool {
    SCRIPT_SCHEMAS.contains(&name) || [CATALOG, DEFAULT_SCHEMA, "information_schema"].contains(&name)
}
const CATALOG: &str = "datafusion";
const DEFAULT_SCHEMA: &str = "public";

/// One statement of a script, parsed and allowed by the policy.
#[derive(Debug, Clone)]
pub struct ScriptStatement {
    /// The statement's text.
    pub text: String,
    /// Where it starts in the script.
    pub start: Position,
    /// The parsed statement.
    pub statement: DfStatement,
    /// The scope it creates, for `CREATE VIEW/TABLE output.<scope>`.
    pub creates_scope: Option<String>,
}

/// A parsed, allowed script.
#[derive(Debug, Clone)]
pub struct Script {
    /// Statements in order.
    pub statements: Vec<ScriptStatement>,
}

impl Script {
    /// Splits, parses and checks `text` against the policy. Every refused
    /// form is `sql_not_allowed` with the statement's position; syntax errors
    /// carry the line and column in the whole script.
    ///
    /// A script is bounded in size and shape ([`MAX_SCRIPT_BYTES`],
    /// [`MAX_EXPR_DEPTH`], [`MAX_EXPR_NODES`], [`MAX_SET_OPERATIONS`]), so
    /// that whatever is accepted plans and runs within an ordinary stack.
    /// Parsing happens on a thread with a large stack of its own: a refused
    /// script may be a tree tens of thousands of levels deep, and even
    /// dropping it recurses that deep.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_SCRIPT_BYTES {
            return Err(Error::SqlNotAllowed {
                message: format!(
                    "the SQL script is {} bytes; a script may be at most {MAX_SCRIPT_BYTES} bytes",
                    text.len()
                ),
                position: None,
            });
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sql-parse".into())
                .stack_size(PARSE_STACK)
                .spawn_scoped(scope, || Self::parse_here(text))
                .map_err(|e| Error::Internal(format!("starting the SQL parser: {e}")))?
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the SQL parser panicked".into())))
        })
    }

    fn parse_here(text: &str) -> Result<Self> {
        let mut statements = Vec::new();
        for (piece, start) in split(text)? {
            let parsed = parse_statement(&piece, start)?;
            for mut statement in parsed {
                check_shape(&statement, start)?;
                let creates_scope = check_policy(&statement, start)?;
                forget_temporary(&mut statement);
                statements.push(ScriptStatement {
                    text: piece.clone(),
                    start,
                    statement,
                    creates_scope,
                });
            }
        }
        if statements.is_empty() {
            return Err(Error::Sql {
                message: "the SQL script is empty; create at least one scope with CREATE VIEW output.<scope> AS …"
                    .into(),
                position: None,
            });
        }
        Ok(Self { statements })
    }
}

/// Every object a script creates outside `output` lives only as long as
/// the run, so `TEMP`/`TEMPORARY` changes nothing; DataFusion refuses the
/// keyword, so it is dropped.
fn forget_temporary(statement: &mut DfStatement) {
    if let DfStatement::Statement(s) = statement {
        match s.as_mut() {
            Statement::CreateView(v) => v.temporary = false,
            Statement::CreateTable(t) => t.temporary = false,
            _ => {}
        }
    }
}

/// Splits a script at top-level semicolons, returning each non-empty
/// statement's text and start position.
fn split(script: &str) -> Result<Vec<(String, Position)>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, script)
        .tokenize_with_location()
        .map_err(|e| Error::Sql {
            message: e.message.clone(),
            position: Some(position(e.location)),
        })?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(script.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |loc: Location| -> usize {
        let Some(&line_start) = line_starts.get(loc.line.saturating_sub(1) as usize) else {
            return script.len();
        };
        script[line_start..]
            .char_indices()
            .nth(loc.column.saturating_sub(1) as usize)
            .map_or(script.len(), |(i, _)| line_start + i)
    };
    let mut pieces = Vec::new();
    let mut first: Option<Location> = None;
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                if let Some(start) = first.take() {
                    pieces.push((script[offset(start)..offset(t.span.start)].to_string(), position(start)));
                }
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => {
                if first.is_none() {
                    first = Some(t.span.start);
                }
            }
        }
    }
    if let Some(start) = first {
        pieces.push((script[offset(start)..].to_string(), position(start)));
    }
    Ok(pieces)
}

fn position(loc: Location) -> Position {
    Position {
        line: loc.line.max(1),
        column: loc.column.max(1),
    }
}

/// Maps a position inside a statement to the whole script.
fn in_script(start: Position, line: u64, column: u64) -> Position {
    if line <= 1 {
        Position {
            line: start.line,
            column: start.column + column.saturating_sub(1),
        }
    } else {
        Position {
            line: start.line + line - 1,
            column,
        }
    }
}

fn parse_statement(text: &str, start: Position) -> Result<VecDeque<DfStatement>> {
    let dialect = GenericDialect {};
    DFParserBuilder::new(text)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            let message = e.strip_backtrace();
            let position = parse_line_column(&message)
                .map(|(l, c)| in_script(start, l, c))
                .or(Some(start));
            Error::Sql {
                message: strip_location(&message),
                position,
            }
        })
}

/// Finds "Line: L, Column: C" in a parser message.
fn parse_line_column(message: &str) -> Option<(u64, u64)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

fn strip_location(message: &str) -> String {
    let message = message.strip_prefix("SQL error: ").unwrap_or(message);
    let message = match message.rfind(" at Line: ") {
        Some(i) => &message[..i],
        None => message,
    };
    message.replace("ParserError(\"", "").replace("\")", "")
}

fn not_allowed(start: Position, message: impl Into<String>) -> Error {
    Error::SqlNotAllowed {
        message: message.into(),
        position: Some(start),
    }
}

fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) if i.quote_style.is_some() => i.value.clone(),
            ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
            ObjectNamePart::Function(f) => format!("{}()", f.name.value),
        })
        .collect()
}

/// Where a script may create, insert into or drop: `output.<scope>` (a
/// scope) or the default schema (temporary). Returns the scope name.
fn writable_target(name: &ObjectName, start: Position, what: &str) -> Result<Option<String>> {
    let p = parts(name);
    let refuse = || {
        not_allowed(
            start,
            format!(
                "{what} `{name}` is not allowed: a script may only create objects in schema `output` (its scopes) or temporary ones without a schema"
            ),
        )
    };
    let (scope, table) = match p.as_slice() {
        [table] => (None, table),
        [schema, table] if schema == DEFAULT_SCHEMA => (None, table),
        [schema, scope] if schema == OUTPUT_SCHEMA => (Some(scope.clone()), scope),
        [catalog, schema, table] if catalog == CATALOG && schema == DEFAULT_SCHEMA => (None, table),
        [catalog, schema, scope] if catalog == CATALOG && schema == OUTPUT_SCHEMA => (Some(scope.clone()), scope),
        _ => return Err(refuse()),
    };
    // A scope names its output file, so its name must be a plain identifier
    // (docs/reliability.md, "Hostile connectors"): nothing like `../x` or `/x` ever reaches a path.
    if !is_identifier(table) {
        return Err(not_allowed(
            start,
            format!(
                "{what} `{name}`: `{table}` is not a valid {kind} name; use lowercase letters, digits and `_`, starting with a letter (at most 63 characters)",
                kind = if scope.is_some() { "scope" } else { "table" }
            ),
        ));
    }
    Ok(scope)
}

/// Checks one statement; returns the scope it creates, if any.
fn check_policy(statement: &DfStatement, start: Position) -> Result<Option<String>> {
    let sql = match statement {
        DfStatement::Statement(s) => s.as_ref(),
        DfStatement::CreateExternalTable(_) => {
            return Err(not_allowed(
                start,
                "CREATE EXTERNAL TABLE is not allowed: a script reads only its input tables",
            ));
        }
        DfStatement::CopyTo(_) => {
            return Err(not_allowed(
                start,
                "COPY is not allowed: a script cannot write files; create output.<scope> views instead",
            ));
        }
        DfStatement::Explain(_) => return Err(not_allowed(start, "EXPLAIN is not allowed in a connector script")),
        DfStatement::Reset(_) => {
            return Err(not_allowed(
                start,
                "RESET is not allowed: engine options are managed by Weir",
            ));
        }
    };
    let scope = match sql {
        Statement::CreateView(v) => writable_target(&v.name, start, "CREATE VIEW")?,
        Statement::CreateTable(t) => writable_target(&t.name, start, "CREATE TABLE")?,
        Statement::Insert(i) => match &i.table {
            TableObject::TableName(name) => {
                writable_target(name, start, "INSERT INTO")?;
                None
            }
            TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
                return Err(not_allowed(
                    start,
                    "INSERT INTO a table function or query is not allowed",
                ));
            }
        },
        Statement::Drop { object_type, names, .. } => {
            if !matches!(object_type, ObjectType::Table | ObjectType::View) {
                return Err(not_allowed(start, format!("DROP {object_type} is not allowed")));
            }
            for n in names {
                writable_target(n, start, "DROP")?;
            }
            None
        }
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = parts(variable).join(".");
            if !SETTABLE.contains(&name.as_str()) {
                return Err(not_allowed(
                    start,
                    format!(
                        "SET {name} is not allowed; a script may set only: {}",
                        SETTABLE.join(", ")
                    ),
                ));
            }
            None
        }
        Statement::Query(_) => {
            return Err(not_allowed(
                start,
                "a bare SELECT has no effect in a connector script; create a scope with CREATE VIEW output.<scope> AS SELECT …",
            ));
        }
        other => {
            let kind = other.to_string();
            let kind: String = kind.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            return Err(not_allowed(
                start,
                format!("`{kind} …` is not allowed; a script may CREATE VIEW/TABLE, INSERT, DROP and SET time zone"),
            ));
        }
    };
    let mut policy = ReadPolicy { start, error: None };
    let _ = sql.visit(&mut policy);
    if let Some(e) = policy.error {
        return Err(e);
    }
    Ok(scope)
}

/// Refuses relations that name files or URLs, unknown catalogs and table
/// functions outside the allow-list.
/// Refuses statements deeper or wider than an ordinary stack can plan.
fn check_shape(statement: &DfStatement, start: Position) -> Result<()> {
    let DfStatement::Statement(sql) = statement else {
        return Ok(());
    };
    let mut shape = Shape::default();
    if let ControlFlow::Break(message) = sql.visit(&mut shape) {
        return Err(not_allowed(start, message));
    }
    Ok(())
}

/// Counts depth and width while visiting, and stops at the first bound
/// crossed, so the visit itself never goes deeper than the bound.
#[derive(Default)]
struct Shape {
    depth: usize,
    nodes: usize,
}

impl Shape {
    fn enter(&mut self) -> ControlFlow<String> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(format!(
                "the statement nests expressions more than {MAX_EXPR_DEPTH} levels deep (a long chain of `+`, `OR` or `||` is one level per term); split it with a CTE or a temporary view"
            ));
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for Shape {
    type Break = String;

    fn pre_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> ControlFlow<String> {
        self.nodes += 1;
        if self.nodes > MAX_EXPR_NODES {
            return ControlFlow::Break(format!(
                "the statement has more than {MAX_EXPR_NODES} expressions; split it into several statements"
            ));
        }
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> ControlFlow<String> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &datafusion::sql::sqlparser::ast::Query) -> ControlFlow<String> {
        // A chain of set operations is a left-deep tree the visitor does
        // not see as nesting, so it is measured here, without recursion.
        let mut pending = vec![query.body.as_ref()];
        let mut operations = 0;
        while let Some(body) = pending.pop() {
            if let SetExpr::SetOperation { left, right, .. } = body {
                operations += 1;
                if operations > MAX_SET_OPERATIONS {
                    return ControlFlow::Break(format!(
                        "a query combines more than {MAX_SET_OPERATIONS} parts with UNION, INTERSECT or EXCEPT; build it in several statements (INSERT INTO a table)"
                    ));
                }
                pending.push(left);
                pending.push(right);
            }
        }
        self.enter()
    }

    fn post_visit_query(&mut self, _: &datafusion::sql::sqlparser::ast::Query) -> ControlFlow<String> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

struct ReadPolicy {
    start: Position,
    error: Option<Error>,
}

impl Visitor for ReadPolicy {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let looks_like_path = relation.0.iter().any(|p| match p {
            ObjectNamePart::Identifier(i) => {
                i.quote_style == Some('\'')
                    || i.value.contains("://")
                    || i.value.contains('/')
                    || i.value.contains('\\')
                    || [".csv", ".parquet", ".json", ".arrow", ".avro", ".txt"]
                        .iter()
                        .any(|ext| i.value.to_lowercase().ends_with(ext))
            }
            ObjectNamePart::Function(_) => true,
        });
        if looks_like_path {
            self.error = Some(not_allowed(
                self.start,
                format!(
                    "reading `{relation}` is not allowed: a script cannot read files or URLs, only its input tables"
                ),
            ));
            return ControlFlow::Break(());
        }
        let p = parts(relation);
        if p.len() > 3 || (p.len() == 3 && p[0] != CATALOG) {
            self.error = Some(not_allowed(
                self.start,
                format!("`{relation}` is not a table a script can read"),
            ));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name, args: Some(_), ..
            } => {
                let fname = parts(name).join(".");
                if !TABLE_FUNCTIONS.contains(&fname.as_str()) {
                    self.error = Some(not_allowed(
                        self.start,
                        format!(
                            "the table function `{fname}` is not allowed (allowed: {})",
                            TABLE_FUNCTIONS.join(", ")
                        ),
                    ));
                    return ControlFlow::Break(());
                }
            }
            TableFactor::TableFunction { .. } | TableFactor::Function { .. } => {
                self.error = Some(not_allowed(self.start, "table functions of this form are not allowed"));
                return ControlFlow::Break(());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// What `meta.current_execution` shows.
#[derive(Debug, Clone)]
pub struct ExecutionMeta {
    /// Execution id.
    pub execution_id: String,
    /// Connector id, when known.
    pub connector_id: Option<String>,
    /// Connector api_name.
    pub connector_api_name: String,
    /// Trigger type (wire name).
    pub trigger_type: String,
    /// Whether records are written.
    pub is_dry_run: bool,
    /// Source file id.
    pub source_file_id: Option<String>,
    /// Source file name.
    pub source_file_name: Option<String>,
    /// Source file size in bytes.
    pub source_file_size: Option<u64>,
    /// The id and name of the API key that started the run, when one did.
    pub triggered_by: Option<(String, String)>,
    /// A schedule tick's window: the previous successful tick and this one.
    pub window: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    /// Start time.
    pub started_at: DateTime<Utc>,
}

/// Session settings of one run.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Threads (DataFusion target partitions).
    pub threads: usize,
    /// Memory pool size in bytes; operators spill to disk beyond it.
    pub max_memory: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Directory for spill files (the OS temp dir when `None`).
    pub spill_dir: Option<std::path::PathBuf>,
}

/// Creates the session of one run, with schemas `input`, `output`, `meta`.
pub fn session(settings: &SessionSettings) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(settings.threads.max(1))
        .with_batch_size(settings.batch_size)
        .with_information_schema(false)
        .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA);
    config.options_mut().sql_parser.collect_spans = true;
    let mut runtime =
        RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(settings.max_memory as usize)));
    if let Some(dir) = &settings.spill_dir {
        runtime = runtime.with_temp_file_path(dir.clone());
    }
    let runtime = runtime.build_arc().map_err(|e| Error::Internal(e.to_string()))?;
    let config = config.with_extension(Arc::new(HeldRows::default()));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        // Many JSON fields read from one text share one walk of it.
        .with_physical_optimizer_rule(Arc::new(crate::json_paths::ShareJsonPaths))
        // A single stream's function calls run on the run's threads.
        .with_physical_optimizer_rule(Arc::new(crate::in_order::ProjectOnThreads))
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    // JSON in text columns (a webhook's `body`, a nested JSON-lines value):
    // `json_get_str(body, 'a', 0)`, `body->'a'->>'b'`, `json_length`, …
    datafusion_functions_json::register_all(&mut ctx).map_err(|e| Error::Internal(e.to_string()))?;
    let catalog = ctx
        .catalog(CATALOG)
        .ok_or_else(|| Error::Internal("default catalog missing".into()))?;
    for schema in SCRIPT_SCHEMAS {
        catalog
            .register_schema(schema, Arc::new(MemorySchemaProvider::new()))
            .map_err(|e| Error::Internal(e.to_string()))?;
    }
    Ok(ctx)
}

fn schema_of(ctx: &SessionContext, name: &str) -> Result<Arc<dyn SchemaProvider>> {
    ctx.catalog(CATALOG)
        .and_then(|c| c.schema(name))
        .ok_or_else(|| Error::Internal(format!("schema {name} missing")))
}

/// Registers the input tables of a file; a file with one table is also
/// `input.data`.
pub fn register_inputs(ctx: &SessionContext, tables: &[(&str, Arc<dyn TableProvider>)]) -> Result<()> {
    let input = schema_of(ctx, INPUT_SCHEMA)?;
    let register = |name: &str, table: &Arc<dyn TableProvider>| {
        input
            .register_table(name.to_string(), table.clone())
            .map(|_| ())
            .map_err(|e| Error::Internal(e.to_string()))
    };
    for (name, table) in tables {
        register(name, table)?;
    }
    if let [(name, table)] = tables
        && *name != "data"
    {
        register("data", table)?;
    }
    Ok(())
}

/// The tables a script names, each reference resolved once.
pub struct Named(Vec<datafusion::common::TableReference>);

impl Named {
    /// The references of `script` as `ctx` resolves them.
    pub fn in_session(ctx: &SessionContext, script: &Script) -> Result<Self> {
        let state = ctx.state();
        let mut all = Vec::new();
        for s in &script.statements {
            let references = state
                .resolve_table_references(&s.statement)
                .map_err(|e| map_error(e, Some(s)))?;
            all.extend(references);
        }
        Ok(Self(all))
    }

    /// The references of `script`, outside a run.
    pub fn in_script(script: &Script) -> Result<Self> {
        Self::in_session(&SessionContext::new(), script)
    }

    /// The tables of `schema` named, each once.
    pub fn tables_in(&self, schema: &str) -> Vec<String> {
        let mut tables: Vec<String> = Vec::new();
        for r in &self.0 {
            if r.schema() == Some(schema) && !tables.iter().any(|t| t == r.table()) {
                tables.push(r.table().to_string());
            }
        }
        tables
    }

    /// The schemas whose tables are named, each once.
    pub fn schemas(&self) -> Vec<String> {
        let mut schemas: Vec<String> = Vec::new();
        for r in &self.0 {
            if let Some(schema) = r.schema()
                && !schemas.iter().any(|x| x == schema)
            {
                schemas.push(schema.to_string());
            }
        }
        schemas
    }
}

/// The objects a script names as `records.<object>`, outside a run (what
/// an edit makes a connector read).
pub fn records_named(script: &Script) -> Result<Vec<String>> {
    Ok(Named::in_script(script)?.tables_in(RECORDS_SCHEMA))
}

/// The input tables a script names (`input.<table>`), outside a run.
pub fn inputs_named(script: &Script) -> Result<Vec<String>> {
    Ok(Named::in_script(script)?.tables_in(INPUT_SCHEMA))
}

/// Registers `records.<object>`: the object's records, read from the store
/// as the script runs.
pub fn register_records(ctx: &SessionContext, object: &str, table: Arc<dyn TableProvider>) -> Result<()> {
    schema_of(ctx, RECORDS_SCHEMA)?
        .register_table(object.to_string(), table)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(())
}

/// Registers `meta.current_execution` and `meta.parameters`.
pub fn register_meta(
    ctx: &SessionContext,
    meta: &ExecutionMeta,
    parameters: &BTreeMap<String, ParamValue>,
) -> Result<()> {
    let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(e.to_string());
    let text = |v: Option<&str>| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    let time = |v: Option<DateTime<Utc>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![v.map(|t| t.timestamp_micros())]).with_timezone("UTC"))
    };
    let exec_schema = Arc::new(Schema::new(vec![
        Field::new("execution_id", DataType::Utf8, false),
        Field::new("connector_id", DataType::Utf8, true),
        Field::new("connector_api_name", DataType::Utf8, false),
        Field::new("trigger_type", DataType::Utf8, false),
        Field::new("is_dry_run", DataType::Boolean, false),
        Field::new("source_file_id", DataType::Utf8, true),
        Field::new("source_file_name", DataType::Utf8, true),
        Field::new("source_file_size", DataType::Int64, true),
        Field::new("triggered_by_key_id", DataType::Utf8, true),
        Field::new("triggered_by_key_name", DataType::Utf8, true),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            "started_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let exec = RecordBatch::try_new(
        exec_schema.clone(),
        vec![
            text(Some(&meta.execution_id)),
            text(meta.connector_id.as_deref()),
            text(Some(&meta.connector_api_name)),
            text(Some(&meta.trigger_type)),
            Arc::new(BooleanArray::from(vec![meta.is_dry_run])),
            text(meta.source_file_id.as_deref()),
            text(meta.source_file_name.as_deref()),
            Arc::new(Int64Array::from(vec![
                meta.source_file_size.and_then(|n| i64::try_from(n).ok()),
            ])),
            text(meta.triggered_by.as_ref().map(|(id, _)| id.as_str())),
            text(meta.triggered_by.as_ref().map(|(_, name)| name.as_str())),
            time(meta.window.0),
            time(meta.window.1),
            Arc::new(TimestampMicrosecondArray::from(vec![meta.started_at.timestamp_micros()]).with_timezone("UTC")),
        ],
    )
    .map_err(internal)?;
    let param_schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ]));
    let params = RecordBatch::try_new(
        param_schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(parameters.keys())),
            Arc::new(StringArray::from_iter_values(
                parameters.values().map(ParamValue::to_string),
            )),
        ],
    )
    .map_err(internal)?;
    let meta_schema = schema_of(ctx, META_SCHEMA)?;
    for (name, schema, batch) in [
        ("current_execution", exec_schema, exec),
        ("parameters", param_schema, params),
    ] {
        let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(|e| Error::Internal(e.to_string()))?;
        meta_schema
            .register_table(name.to_string(), Arc::new(table))
            .map_err(|e| Error::Internal(e.to_string()))?;
    }
    Ok(())
}

/// Whether [`run_script`] runs the statements or only plans them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptMode {
    /// Run every statement: tables are filled, inserts insert.
    Run,
    /// Plan every statement and run none that reads rows: a table is
    /// created empty with the schema its query would give, an insert is
    /// planned and dropped. A draft check runs in this mode, so no script
    /// can make a check do work (docs/reliability.md, "Hostile
    /// connectors").
    Check,
}

/// Runs every statement of the script, in order. Returns the scopes in the
/// order they were created (every object left in `output`).
///
/// `CREATE TABLE … AS` and `INSERT` are run here rather than by DataFusion,
/// because DataFusion collects their rows outside the memory pool: here
/// every batch they keep is reserved from the pool first, so `max_memory`
/// bounds them as it bounds joins and sorts.
pub async fn run_script(ctx: &SessionContext, script: &Script, mode: ScriptMode) -> Result<Vec<String>> {
    let mut created: Vec<String> = Vec::new();
    for s in &script.statements {
        let state = ctx.state();
        let plan = state
            .statement_to_plan(s.statement.clone())
            .await
            .map_err(|e| map_error(e, Some(s)))?;
        run_statement(ctx, plan, mode)
            .await
            .map_err(|e| map_error(e, Some(s)))?;
        if let Some(scope) = &s.creates_scope
            && !created.contains(scope)
        {
            created.push(scope.clone());
        }
    }
    let output = schema_of(ctx, OUTPUT_SCHEMA)?;
    let mut names = output.table_names();
    names.sort();
    let mut scopes: Vec<String> = created.into_iter().filter(|s| names.contains(s)).collect();
    for n in names {
        if !scopes.contains(&n) {
            scopes.push(n);
        }
    }
    if scopes.is_empty() {
        return Err(Error::Sql {
            message: "the script creates no scope; add CREATE VIEW output.<scope> AS SELECT …".into(),
            position: None,
        });
    }
    Ok(scopes)
}

/// Reservations of the rows that tables hold, kept as long as the session.
#[derive(Debug, Default)]
struct HeldRows(Mutex<Vec<MemoryReservation>>);

impl HeldRows {
    fn of(ctx: &SessionContext) -> Arc<HeldRows> {
        ctx.state().config().get_extension::<HeldRows>().unwrap_or_default()
    }

    fn keep(&self, reservation: MemoryReservation) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reservation);
    }
}

async fn run_statement(ctx: &SessionContext, plan: LogicalPlan, mode: ScriptMode) -> datafusion::error::Result<()> {
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => create_table(ctx, create, mode).await,
        LogicalPlan::Dml(insert) if insert.op == WriteOp::Insert(InsertOp::Append) => {
            if mode == ScriptMode::Check {
                ctx.state().create_physical_plan(&LogicalPlan::Dml(insert)).await?;
                return Ok(());
            }
            let provider = ctx.table_provider(insert.table_name.clone()).await?;
            let state = ctx.state();
            let rows = collect_reserved(ctx, &insert.table_name, Arc::unwrap_or_clone(insert.input)).await?;
            let input = MemorySourceConfig::try_new_exec(&[rows], provider.schema(), None)?;
            let sink = provider.insert_into(&state, input, InsertOp::Append).await?;
            datafusion::physical_plan::collect(sink, state.task_ctx()).await?;
            Ok(())
        }
        other => {
            ctx.execute_logical_plan(other).await?.collect().await?;
            Ok(())
        }
    }
}

/// `CREATE TABLE … AS`, as DataFusion does it but with the rows reserved
/// from the memory pool (or, in a check, none).
async fn create_table(
    ctx: &SessionContext,
    create: CreateMemoryTable,
    mode: ScriptMode,
) -> datafusion::error::Result<()> {
    let exists = ctx.table_exist(create.name.clone())?;
    if exists && create.if_not_exists && create.or_replace {
        return Err(DataFusionError::Execution(
            "'IF NOT EXISTS' cannot coexist with 'REPLACE'".into(),
        ));
    }
    if exists && create.if_not_exists {
        return Ok(());
    }
    if exists && !create.or_replace {
        return Err(DataFusionError::Execution(format!(
            "Table '{}' already exists",
            create.name
        )));
    }
    let input = ctx.state().optimize(&create.input)?;
    let schema = Arc::clone(input.schema().inner());
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = schema.fields().iter().find(|f| !names.insert(f.name())) {
        return Err(DataFusionError::Plan(format!(
            "the table's columns must have distinct names; `{}` appears twice",
            twice.name()
        )));
    }
    let rows = match mode {
        ScriptMode::Check => {
            ctx.state().create_physical_plan(&input).await?;
            Vec::new()
        }
        ScriptMode::Run => collect_reserved(ctx, &create.name, input).await?,
    };
    let table = MemTable::try_new(schema, vec![rows])?
        .with_constraints(create.constraints)
        .with_column_defaults(create.column_defaults.into_iter().collect());
    if exists {
        ctx.deregister_table(create.name.clone())?;
    }
    ctx.register_table(create.name, Arc::new(table))?;
    Ok(())
}

/// The rows of `plan`, each batch reserved from the memory pool before it
/// is kept; the reservation lives as long as the session.
async fn collect_reserved(
    ctx: &SessionContext,
    table: &datafusion::common::TableReference,
    plan: LogicalPlan,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let reservation = MemoryConsumer::new(format!("rows of table {table}")).register(&ctx.runtime_env().memory_pool);
    let mut stream = ctx.execute_logical_plan(plan).await?.execute_stream().await?;
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        reservation.try_grow(batch.get_array_memory_size())?;
        rows.push(batch);
    }
    HeldRows::of(ctx).keep(reservation);
    Ok(rows)
}

/// The statement that created `scope`, for positions of run-time errors.
pub fn statement_of<'a>(script: &'a Script, scope: &str) -> Option<&'a ScriptStatement> {
    script
        .statements
        .iter()
        .rev()
        .find(|s| s.creates_scope.as_deref() == Some(scope))
}

/// Streams the rows of one scope.
pub async fn scope_stream(ctx: &SessionContext, scope: &str, script: &Script) -> Result<SendableRecordBatchStream> {
    let table = datafusion::common::TableReference::partial(OUTPUT_SCHEMA, scope);
    let df = ctx
        .table(table)
        .await
        .map_err(|e| map_error(e, statement_of(script, scope)))?;
    df.execute_stream()
        .await
        .map_err(|e| map_error(e, statement_of(script, scope)))
}

/// Maps a DataFusion error to an engine error: engine errors raised inside
/// DataFusion (intake limits, cancel) come back as themselves; memory
/// exhaustion is the memory limit; the rest are SQL errors with the best
/// position known.
pub fn map_error(e: DataFusionError, statement: Option<&ScriptStatement>) -> Error {
    let span = e.diagnostic().and_then(|d| d.span);
    match unwrap_engine(e) {
        Ok(engine) => engine,
        Err(e) => {
            if let DataFusionError::ResourcesExhausted(msg) = e.find_root() {
                return Error::LimitExceeded {
                    limit: Limit::MaxMemory,
                    message: format!("the SQL script needs more memory than max_memory allows: {msg}"),
                };
            }
            let mut message = clean_message(&e.find_root().strip_backtrace());
            let position = match (statement, span) {
                (Some(s), Some(span)) if span.start.line > 0 => {
                    Some(in_script(s.start, span.start.line, span.start.column))
                }
                // DataFusion places few of its errors; one about a call
                // (its arguments, their types) is placed at the call.
                (Some(s), _) => match call_of(&s.statement, &message) {
                    Some((name, line, column)) => {
                        if !mentions(&message.to_ascii_lowercase(), &name) {
                            message = format!("{name}(…): {message}");
                        }
                        Some(in_script(s.start, line, column))
                    }
                    None => Some(s.start),
                },
                (None, _) => None,
            };
            Error::Sql { message, position }
        }
    }
}

/// The function call an error without a place is about: the call the
/// message names, or the statement's only call. Its name (as written, in
/// lower case) and its line and column in the statement.
fn call_of(statement: &DfStatement, message: &str) -> Option<(String, u64, u64)> {
    use datafusion::sql::sqlparser::ast::{Expr, Spanned, visit_expressions};
    let DfStatement::Statement(sql) = statement else {
        return None;
    };
    let mut calls = Vec::new();
    let _ = visit_expressions(sql.as_ref(), |e| {
        if let Expr::Function(f) = e {
            let span = f.name.span();
            calls.push((
                f.name.to_string().to_ascii_lowercase(),
                span.start.line,
                span.start.column,
            ));
        }
        ControlFlow::<()>::Continue(())
    });
    let message = message.to_ascii_lowercase();
    let named = calls.iter().find(|(name, ..)| mentions(&message, name));
    // A message that names no function is the only call's only when it is
    // about arguments (`get_field` says "at argument 1").
    let about_arguments = ["argument", "signature", "coerce"].iter().any(|w| message.contains(w));
    let (name, line, column) = match named {
        Some(call) => call.clone(),
        None if calls.len() == 1 && about_arguments => calls.remove(0),
        None => return None,
    };
    (line > 0).then_some((name, line, column))
}

/// Whether `message` names function `name` as a word (`'round'`,
/// `round(`), not inside another name (`to_round`).
fn mentions(message: &str, name: &str) -> bool {
    message.match_indices(name).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + name.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

/// The engine's message in the script's words: no engine prefix, no
/// request to report a bug to DataFusion, tables as the script names them,
/// and one line.
fn clean_message(message: &str) -> String {
    let mut m = message
        .split(".\nThis issue was likely caused by a bug in DataFusion")
        .next()
        .unwrap_or(message)
        .to_string();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "Execution error: ",
        "SQL error: ",
        "Arrow error: ",
        "Internal error: ",
    ] {
        m = m.replace(prefix, "");
    }
    if let Some(rest) = m.strip_prefix("This feature is not implemented: ") {
        m = format!("not supported: {rest}");
    }
    // The signatures a function takes, on the line of the message.
    if let Some((head, candidates)) = m.split_once("\n\tCandidate functions:\n") {
        let candidates: Vec<&str> = candidates.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        m = format!("{head} It takes: {}", candidates.join(" or "));
    }
    // "failed to match any signature, errors: a,b,a,b": each reason once.
    if let Some((head, errors)) = m.split_once(" failed to match any signature, errors: ") {
        let mut reasons: Vec<&str> = Vec::new();
        for reason in errors.split(',').map(str::trim) {
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        m = format!("{head} failed to match any signature: {}", reasons.join("; "));
    }
    // Tables are named as the script names them (`input.data`, `dta`),
    // not by the engine's catalog and default schema.
    let m = m
        .replace(&format!("'{CATALOG}."), "'")
        .replace(&format!("{CATALOG}.{INPUT_SCHEMA}."), "input.")
        .replace(&format!("'{DEFAULT_SCHEMA}."), "'");
    let mut line = String::new();
    for part in m.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !line.is_empty() {
            line.push_str(if line.ends_with(['.', ':']) { " " } else { "; " });
        }
        line.push_str(part);
    }
    line
}

/// Digs an engine error out of DataFusion's wrappers.
fn unwrap_engine(e: DataFusionError) -> std::result::Result<Error, DataFusionError> {
    match e {
        DataFusionError::External(boxed) => match boxed.downcast::<Error>() {
            Ok(engine) => Ok(*engine),
            Err(other) => match other.downcast::<DataFusionError>() {
                Ok(df) => unwrap_engine(*df),
                Err(other) => Err(DataFusionError::External(other)),
            },
        },
        DataFusionError::Context(ctx, inner) => {
            unwrap_engine(*inner).map_err(|e| DataFusionError::Context(ctx, Box::new(e)))
        }
        DataFusionError::Shared(shared) => match Arc::try_unwrap(shared) {
            Ok(inner) => unwrap_engine(inner),
            Err(shared) => Err(DataFusionError::Shared(shared)),
        },
        DataFusionError::ArrowError(arrow, bt) => match *arrow {
            datafusion::arrow::error::ArrowError::ExternalError(boxed) => {
                unwrap_engine(DataFusionError::External(boxed))
            }
            other => Err(DataFusionError::ArrowError(Box::new(other), bt)),
        },
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> (String, Option<Position>) {
        match Script::parse(sql) {
            Err(Error::SqlNotAllowed { message, position }) => (message, position),
            other => panic!("expected sql_not_allowed for {sql}, got {other:?}"),
        }
    }

    #[test]
    fn splits_with_positions() {
        let script =
            "-- header\nCREATE VIEW output.a AS SELECT 1 AS x;\n\n  CREATE VIEW output.b AS\n SELECT ';' AS y;;";
        let s = Script::parse(script).expect("parses");
        assert_eq!(s.statements.len(), 2);
        assert_eq!(s.statements[0].start, Position { line: 2, column: 1 });
        assert_eq!(s.statements[1].start, Position { line: 4, column: 3 });
        assert_eq!(s.statements[1].creates_scope.as_deref(), Some("b"));
    }

    #[test]
    fn syntax_errors_carry_script_positions() {
        let script = "CREATE VIEW output.a AS SELECT 1;\nCREATE VIEW output.b AS\nSELEC x FROM y;";
        match Script::parse(script) {
            Err(Error::Sql { position: Some(p), .. }) => assert_eq!(p, Position { line: 3, column: 1 }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_forbidden_form_is_refused_with_its_position() {
        let cases = [
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "CREATE VIEW output.a AS SELECT * FROM '/etc/passwd'",
            "CREATE VIEW output.a AS SELECT * FROM 'https://example.com/x.csv'",
            "CREATE VIEW output.a AS SELECT * FROM \"data.csv\"",
            "CREATE VIEW input.a AS SELECT 1",
            "CREATE TABLE meta.x AS SELECT 1",
            "DROP TABLE input.data",
            "INSERT INTO input.data VALUES (1)",
            "SET datafusion.execution.target_partitions = 64",
            "SET datafusion.runtime.memory_limit = '100G'",
            "RESET datafusion.execution.batch_size",
            "CREATE SCHEMA evil",
            "CREATE FUNCTION f() RETURNS INT RETURN 1",
            "SELECT 1",
            "CREATE VIEW output.a AS SELECT * FROM read_csv('x.csv')",
            "CREATE VIEW output.a AS SELECT * FROM other_catalog.public.t",
            "EXPLAIN SELECT 1",
        ];
        for sql in cases {
            let full = format!("CREATE VIEW output.ok AS SELECT 1 AS x;\n  {sql}");
            let (message, position) = refused(&full);
            assert_eq!(position, Some(Position { line: 2, column: 3 }), "{sql}: {message}");
        }
    }

    #[test]
    fn scope_and_table_names_must_be_identifiers() {
        let cases = [
            r#"CREATE VIEW output."../../../executions/x/rejected" AS SELECT 1"#,
            r#"CREATE TABLE output."/tmp/anywhere/name" AS SELECT 1"#,
            r#"CREATE VIEW datafusion.output."a/b" AS SELECT 1"#,
            r#"CREATE VIEW output."Contacts" AS SELECT 1"#,
            r#"CREATE VIEW output."" AS SELECT 1"#,
            r#"CREATE VIEW "../t" AS SELECT 1"#,
            r#"CREATE TABLE public."a b" AS SELECT 1"#,
            r#"INSERT INTO output."../x" SELECT 1"#,
            r#"DROP VIEW output."..""#,
        ];
        for sql in cases {
            let full = format!("CREATE VIEW output.ok AS SELECT 1 AS x;\n{sql}");
            let (message, position) = refused(&full);
            assert_eq!(position, Some(Position { line: 2, column: 1 }), "{sql}: {message}");
            assert!(message.contains("is not a valid"), "{sql}: {message}");
        }
        let long = format!("CREATE VIEW output.{} AS SELECT 1", "a".repeat(64));
        assert!(refused(&long).0.contains("at most 63"));
        // Unquoted names fold to lowercase and stay allowed.
        let s = Script::parse("CREATE VIEW output.Contacts_2024 AS SELECT 1").expect("allowed");
        assert_eq!(s.statements[0].creates_scope.as_deref(), Some("contacts_2024"));
    }

    #[test]
    fn allowed_forms() {
        let s = Script::parse(
            "CREATE TEMP VIEW t AS SELECT * FROM input.data;\n\
             CREATE TABLE output.a AS SELECT * FROM t JOIN meta.parameters p ON true;\n\
             CREATE VIEW output.b AS SELECT * FROM generate_series(1, 3);\n\
             INSERT INTO output.a SELECT * FROM output.a;\n\
             DROP VIEW t;\n\
             SET datafusion.execution.time_zone = '+02:00'",
        )
        .expect("allowed");
        let scopes: Vec<_> = s.statements.iter().filter_map(|s| s.creates_scope.clone()).collect();
        assert_eq!(scopes, vec!["a", "b"]);
    }
}
