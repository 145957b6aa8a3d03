//! The connector definition (SPEC §2): parsing from TOML or JSON, and
//! validation that lists every problem with its path.
//!
//! This module owns the document's shape and its self-contained rules. It
//! does not look at input files or SQL results: references to scopes and
//! columns are checked by [`Connector::check_scopes`] once the SQL output is
//! known.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::{self, Document};
use crate::error::{Error, Problem, Result};
use crate::sources::SourceDef;
use crate::written::{Bytes, EncodingChoice, Written};

/// How a connector is triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorType {
    /// Runs on an uploaded file.
    Spreadsheet,
    /// Runs on buffered webhook payloads.
    Webhook,
    /// Runs on a cron schedule.
    Schedule,
}

/// Whether a connector runs live triggers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorStatus {
    /// Incomplete; cannot run live.
    #[default]
    Setup,
    /// Runs.
    Operational,
    /// Live triggers are queued, not run.
    Inactive,
}

/// Input file formats (`input.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Sniffed from extension, magic bytes and content.
    #[default]
    Auto,
    /// Comma (or `delimiter`) separated values.
    Csv,
    /// Tab separated values.
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// A JSON array of objects (or one object).
    Json,
    /// Apache Parquet.
    Parquet,
    /// Excel workbook; every sheet is a table.
    Xlsx,
    /// Zip archive; every member is a table.
    Zip,
}

impl InputFormat {
    /// The value `input.format` takes for it.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Auto => "auto",
            InputFormat::Csv => "csv",
            InputFormat::Tsv => "tsv",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Json => "json",
            InputFormat::Parquet => "parquet",
            InputFormat::Xlsx => "xlsx",
            InputFormat::Zip => "zip",
        }
    }
}

/// How input files are read (`[input]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct InputOptions {
    /// The format, or `auto`.
    pub format: InputFormat,
    /// The CSV delimiter (one character); sniffed when absent.
    pub delimiter: Option<String>,
    /// `auto` or an encoding label (`utf-8`, `latin-1`, `windows-1252`, `utf-16`, …).
    #[schema(value_type = String)]
    pub encoding: Written<EncodingChoice>,
    /// Whether the first row is a header.
    pub header: bool,
    /// `false`: every column is text.
    pub infer: bool,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            format: InputFormat::Auto,
            delimiter: None,
            encoding: "auto".into(),
            header: true,
            infer: true,
        }
    }
}

/// Where the SQL script comes from: a file of a package, or the text itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct SqlSource {
    /// Path of the script, relative to the connector directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The script text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl SqlSource {
    /// Neither a file nor a text.
    pub fn is_empty(&self) -> bool {
        self.file.is_none() && self.text.is_none()
    }
}

/// A parameter value; TOML/JSON scalars are accepted and seen by SQL as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// Documented as a string, a number or a boolean. Integers and floats are
/// one `number`: JSON Schema counts an integral float (`2.0`, or an integer
/// past 64 bits read as a float) as an integer too, so separate branches
/// under `oneOf` would both match it.
impl utoipa::PartialSchema for ParamValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let of = |t: Type, what: &str| ObjectBuilder::new().schema_type(t).description(Some(what));
        OneOfBuilder::new()
            .item(of(Type::String, "A string."))
            .item(of(Type::Number, "An integer or a float."))
            .item(of(Type::Boolean, "A boolean."))
            .description(Some("A parameter value; SQL sees it as text."))
            .into()
    }
}

impl utoipa::ToSchema for ParamValue {}

impl ParamValue {
    /// What kind of value it is, for a person: `text`, `an integer`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            ParamValue::Text(_) => "text",
            ParamValue::Int(_) => "an integer",
            ParamValue::Float(_) => "a number",
            ParamValue::Bool(_) => "a boolean",
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Text(s) => f.write_str(s),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// `[limits]` as written; see [`Limits`] for the parsed values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct LimitsDef {
    /// Wall-clock limit of a run, e.g. `"5m"`.
    #[schema(value_type = String)]
    pub max_runtime: Written<Duration>,
    /// Memory limit of the SQL engine, e.g. `"2GiB"`.
    #[schema(value_type = String)]
    pub max_memory: Written<Bytes>,
    /// Most rows an input table or a scope may have.
    pub max_rows: u64,
    /// Executions of this connector at once.
    pub max_concurrency: u32,
    /// Fail the run when invalid/total exceeds this.
    pub max_invalid_ratio: f64,
}

impl Default for LimitsDef {
    fn default() -> Self {
        Self {
            max_runtime: "5m".into(),
            max_memory: "2GiB".into(),
            max_rows: 10_000_000,
            max_concurrency: 1,
            max_invalid_ratio: 1.0,
        }
    }
}

/// Parsed run limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Wall-clock limit of a run.
    pub max_runtime: Duration,
    /// Memory limit of the SQL engine, in bytes.
    pub max_memory: u64,
    /// Most rows an input table or a scope may have.
    pub max_rows: u64,
    /// Executions of this connector at once.
    pub max_concurrency: u32,
    /// Fail the run when invalid/total exceeds this.
    pub max_invalid_ratio: f64,
}

impl LimitsDef {
    /// The limits, or every problem of them.
    pub fn parse(&self) -> std::result::Result<Limits, Vec<Problem>> {
        let mut problems = Vec::new();
        if let Some(p) = self.max_runtime.problem() {
            problems.push(Problem::new("limits.max_runtime", p));
        }
        if let Some(p) = self.max_memory.problem() {
            problems.push(Problem::new("limits.max_memory", p));
        }
        let max_runtime = self.max_runtime.get().copied().unwrap_or_default();
        let max_memory = self.max_memory.get().map_or(0, |b| b.0);
        if max_runtime.is_zero() && problems.is_empty() {
            problems.push(Problem::new("limits.max_runtime", "must be more than zero"));
        }
        if max_memory < 16 * 1024 * 1024 && !self.max_memory.text().trim().is_empty() && problems.is_empty() {
            problems.push(Problem::new("limits.max_memory", "must be at least 16MiB"));
        }
        if self.max_rows == 0 {
            problems.push(Problem::new("limits.max_rows", "must be more than zero"));
        }
        if self.max_concurrency == 0 {
            problems.push(Problem::new("limits.max_concurrency", "must be more than zero"));
        }
        if !(0.0..=1.0).contains(&self.max_invalid_ratio) {
            problems.push(Problem::new("limits.max_invalid_ratio", "must be between 0.0 and 1.0"));
        }
        if problems.is_empty() {
            Ok(Limits {
                max_runtime,
                max_memory,
                max_rows: self.max_rows,
                max_concurrency: self.max_concurrency,
                max_invalid_ratio: self.max_invalid_ratio,
            })
        } else {
            Err(problems)
        }
    }
}

/// The most a server lets any connector's limits be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitCaps {
    /// Highest `max_runtime`.
    pub max_runtime: Duration,
    /// Highest `max_memory`, in bytes.
    pub max_memory: u64,
    /// Highest `max_rows`.
    pub max_rows: u64,
}

impl LimitsDef {
    /// The limits over `caps`, each a problem with its path: a connector
    /// asking for more than the server allows is refused when saved. A
    /// limit left at its default is not asked for: it runs with the cap
    /// ([`LimitsDef::capped`]).
    pub fn over(&self, caps: &LimitCaps) -> Vec<Problem> {
        let Ok(limits) = self.parse() else {
            return Vec::new();
        };
        let default = LimitsDef::default();
        let mut problems = Vec::new();
        if self.max_runtime != default.max_runtime && limits.max_runtime > caps.max_runtime {
            problems.push(Problem::new(
                "limits.max_runtime",
                format!(
                    "`{}` is more than this server allows ({})",
                    self.max_runtime,
                    humantime::format_duration(caps.max_runtime)
                ),
            ));
        }
        if self.max_memory != default.max_memory && limits.max_memory > caps.max_memory {
            problems.push(Problem::new(
                "limits.max_memory",
                format!(
                    "`{}` is more than this server allows ({})",
                    self.max_memory,
                    bytesize::ByteSize::b(caps.max_memory).display().iec()
                ),
            ));
        }
        if self.max_rows != default.max_rows && limits.max_rows > caps.max_rows {
            problems.push(Problem::new(
                "limits.max_rows",
                format!("{} is more than this server allows ({})", self.max_rows, caps.max_rows),
            ));
        }
        problems
    }

    /// These limits with each at most its cap: what a run of a connector
    /// saved before the server's caps were lowered gets.
    pub fn capped(&self, caps: &LimitCaps) -> LimitsDef {
        let mut capped = self.clone();
        if let Ok(limits) = self.parse() {
            if limits.max_runtime > caps.max_runtime {
                capped.max_runtime = Written::of(caps.max_runtime);
            }
            if limits.max_memory > caps.max_memory {
                capped.max_memory = Written::of(Bytes(caps.max_memory));
            }
            capped.max_rows = self.max_rows.min(caps.max_rows);
        }
        capped
    }
}

/// `[webhook]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookDef {
    /// How long payloads are buffered into one execution; `"0"` = one each.
    #[serde(default = "default_batch_window")]
    #[schema(value_type = String)]
    pub batch_window: Written<Duration>,
    /// Name of the environment variable holding the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Name of the workspace secret holding the signing secret (set and
    /// rotated with `PUT /api/v1/secrets/{name}`); instead of `secret_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn default_batch_window() -> Written<Duration> {
    "30s".into()
}

impl Default for WebhookDef {
    /// What a webhook connector without `[webhook]` gets.
    fn default() -> Self {
        Self {
            batch_window: default_batch_window(),
            secret_env: None,
            secret: None,
        }
    }
}

impl WebhookDef {
    /// `batch_window` as a duration (`"0"`: one batch per payload); `None`
    /// when it is not one.
    pub fn window(&self) -> Option<Duration> {
        self.batch_window.get().copied()
    }
}

/// `[schedule]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleDef {
    /// Cron expression with seconds.
    #[schema(value_type = String)]
    pub cron: Written<cron::Schedule>,
    /// IANA time zone of the expression.
    #[serde(default = "default_timezone")]
    #[schema(value_type = String)]
    pub timezone: Written<chrono_tz::Tz>,
}

fn default_timezone() -> Written<chrono_tz::Tz> {
    "UTC".into()
}

/// What a transform step does with a row its plugin cannot process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The row is rejected with the plugin's reason.
    #[default]
    RejectRow,
    /// The run fails.
    FailRun,
}

/// One `[[transforms]]` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransformDef {
    /// The scope the step runs on.
    pub scope: String,
    /// `name@version` or `sha256:<hex>`.
    #[schema(value_type = String)]
    pub plugin: Written<PluginRef>,
    /// Configuration handed to the plugin as JSON (absent: `null`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    /// Row-error policy.
    #[serde(default)]
    pub on_error: OnError,
}

/// What a `[[transforms]]` step's `plugin` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// `name@version`: a plugin published under a name.
    Named {
        /// Lower-case letters, digits, `-` and `_`.
        name: String,
        /// A version such as `0.1.0` (letters, digits, `.`, `-`, `+`).
        version: String,
    },
    /// `sha256:<hex>`: the exact component by content.
    Sha256(String),
}

impl PluginRef {
    /// Parses a reference; the error says what form is expected. The forms
    /// allowed can never name a path outside a plugin directory.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(hex) = text.strip_prefix("sha256:") {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Ok(PluginRef::Sha256(hex.to_string()));
            }
            return Err("`sha256:` must be followed by 64 lower-case hex digits".into());
        }
        let Some((name, version)) = text.split_once('@') else {
            return Err(format!("`{text}` must be `name@version` or `sha256:<hex>`"));
        };
        let name_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!(
                "plugin name `{name}` must be lower-case letters, digits, `-` and `_`"
            ));
        }
        let version_ok = version.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+');
        if !version_ok {
            return Err(format!(
                "plugin version `{version}` must be letters, digits, `.`, `-` and `+`"
            ));
        }
        Ok(PluginRef::Named {
            name: name.to_string(),
            version: version.to_string(),
        })
    }
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginRef::Named { name, version } => write!(f, "{name}@{version}"),
            PluginRef::Sha256(hex) => write!(f, "sha256:{hex}"),
        }
    }
}

/// Types of variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VariableType {
    /// Any text.
    String,
    /// A number (64-bit float).
    Number,
    /// A boolean.
    Boolean,
    /// A calendar date.
    Date,
    /// A point in time.
    Datetime,
    /// A validated, normalised e-mail address.
    Email,
    /// A validated phone number, normalised to E.164.
    PhoneNumber,
    /// A UUID.
    Uuid,
    /// A JSON document as text (a payload kept whole, a nested value); a
    /// value that does not parse as JSON makes its row invalid.
    Json,
}

impl VariableType {
    /// The wire name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            VariableType::String => "string",
            VariableType::Number => "number",
            VariableType::Boolean => "boolean",
            VariableType::Date => "date",
            VariableType::Datetime => "datetime",
            VariableType::Email => "email",
            VariableType::PhoneNumber => "phone_number",
            VariableType::Uuid => "uuid",
            VariableType::Json => "json",
        }
    }
}

/// One `[[variables]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VariableDef {
    /// Variable name, unique per scope.
    pub name: String,
    /// The scope it is read from.
    pub scope: String,
    /// The output column it is read from (or `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// A literal value (or `column`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The type.
    #[serde(rename = "type")]
    pub kind: VariableType,
    /// A missing value makes the row invalid.
    #[serde(default)]
    pub required: bool,
    /// How text is parsed: `auto`, a strftime pattern, `unix_epoch`,
    /// `excel_epoch` (dates); `yes_no`, `true_false`, `on_off`, `one_zero`,
    /// `t_f` (booleans).
    #[serde(default = "default_auto")]
    pub input_format: String,
    /// The value is a list split by `array_delimiter`.
    #[serde(default)]
    pub is_array: bool,
    /// Separator of array elements.
    #[serde(default = "default_array_delimiter")]
    pub array_delimiter: String,
    /// Region for phone numbers written without a country code (ISO 3166
    /// alpha-2); defaults to the `default_country` parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
}

fn default_auto() -> String {
    "auto".into()
}

fn default_array_delimiter() -> String {
    ",".into()
}

/// What a matching rule does when it finds no record (default
/// `create_new`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoMatchAction {
    /// Create a record.
    #[default]
    CreateNew,
    /// Try the next rule.
    NextRule,
    /// Skip the row.
    DoNotUpload,
}

/// What a matching rule does when it finds one record (default
/// `update_current`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SingleMatchAction {
    /// Update that record.
    #[default]
    UpdateCurrent,
    /// Try the next rule.
    NextRule,
    /// Skip the row.
    DoNotUpload,
}

/// What a matching rule does when it finds several records (default
/// `do_not_upload`: which of them to update is not the engine's guess).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MultipleMatchAction {
    /// Skip the row.
    #[default]
    DoNotUpload,
    /// Try the next rule.
    NextRule,
}

/// One `[[loads.match]]` rule. A record a step creates carries the values
/// of its rules' variables in their fields that no mapping writes, so the
/// next run of the same rows matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MatchRule {
    /// Object field compared.
    pub field: String,
    /// Variable compared with it.
    pub variable: String,
    /// Action on no match.
    #[serde(default)]
    #[schema(default = NoMatchAction::default)]
    pub no_match: NoMatchAction,
    /// Action on one match.
    #[serde(default)]
    #[schema(default = SingleMatchAction::default)]
    pub single_match: SingleMatchAction,
    /// Action on several matches.
    #[serde(default)]
    #[schema(default = MultipleMatchAction::default)]
    pub multiple_match: MultipleMatchAction,
}

/// How a mapped field is written over an existing value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictRule {
    /// Always write.
    #[default]
    Overwrite,
    /// Write only when the field is empty.
    OnlyUpdateBlank,
    /// Write unless the new value is null.
    OverwriteExceptNull,
}

/// One `[[loads.fields]]` mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldMapping {
    /// Object field written.
    pub field: String,
    /// Variables written into it (joined with a space).
    pub variables: Vec<String>,
    /// Conflict rule.
    #[serde(default)]
    pub conflict: ConflictRule,
}

/// One `[[loads]]` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadDef {
    /// Steps run in this order.
    pub order: u32,
    /// The scope whose valid rows are loaded.
    pub scope: String,
    /// The target object.
    pub object: String,
    /// Variable that receives the matched/created record id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id_variable: Option<String>,
    /// Matching rules, in order.
    #[serde(default, rename = "match")]
    pub matching: Vec<MatchRule>,
    /// Field mappings.
    #[serde(default)]
    pub fields: Vec<FieldMapping>,
}

/// A `[[notifications]]` entry: who is told when an execution ends
/// (docs/notifications.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationDef {
    /// The end statuses that send it: any of `success`, `partial_success`,
    /// `failed`, `canceled`.
    pub on: Vec<crate::execution::Status>,
    /// Where it is POSTed: an `http` or `https` URL.
    pub url: String,
    /// The workspace secret (`whsec_…`, set with `PUT /api/v1/secrets/{name}`)
    /// that signs it, as Standard Webhooks do.
    pub secret: String,
}

impl NotificationDef {
    /// The problems of the entry at `path`.
    fn problems(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.on.is_empty() {
            problems.push(Problem::new(
                format!("{path}.on"),
                "name at least one end status: success, partial_success, failed, canceled",
            ));
        }
        for (i, status) in self.on.iter().enumerate() {
            if !status.is_terminal() {
                problems.push(Problem::new(
                    format!("{path}.on[{i}]"),
                    format!(
                        "`{}` is not an end status; use success, partial_success, failed or canceled",
                        status.as_str()
                    ),
                ));
            }
        }
        match self.url.split_once("://") {
            Some((scheme, rest)) if (scheme == "http" || scheme == "https") && !rest.is_empty() => {}
            _ => problems.push(Problem::new(
                format!("{path}.url"),
                format!("`{}` is not an http or https URL", self.url),
            )),
        }
        if !is_identifier(&self.secret) {
            problems.push(Problem::new(
                format!("{path}.secret"),
                "must name a workspace secret ([a-z][a-z0-9_]{0,62})",
            ));
        }
        problems
    }
}

/// A connector definition (SPEC §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Connector {
    /// `[a-z][a-z0-9_]{0,62}`, unique per workspace.
    pub api_name: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How it is triggered.
    #[serde(rename = "type")]
    pub kind: ConnectorType,
    /// Whether it runs live.
    #[serde(default)]
    pub status: ConnectorStatus,
    /// How input files are read.
    #[serde(default)]
    pub input: InputOptions,
    /// The SQL script.
    #[serde(default, skip_serializing_if = "SqlSource::is_empty")]
    pub sql: SqlSource,
    /// Parameters, visible to SQL as `meta.parameters`.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
    /// Run limits.
    #[serde(default)]
    pub limits: LimitsDef,
    /// Webhook options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDef>,
    /// Schedule options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleDef>,
    /// Wasm transform steps.
    #[serde(default)]
    pub transforms: Vec<TransformDef>,
    /// Typed variables.
    #[serde(default)]
    pub variables: Vec<VariableDef>,
    /// Load steps.
    #[serde(default)]
    pub loads: Vec<LoadDef>,
    /// External sources the script reads, each as a schema (docs/sources.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceDef>,
    /// Who is told when an execution ends (docs/notifications.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationDef>,
}

/// Date input formats that are not strftime patterns.
const DATE_KEYWORDS: &[&str] = &["auto", "unix_epoch", "excel_epoch"];
/// Boolean input formats.
pub const BOOLEAN_FORMATS: &[&str] = &["auto", "yes_no", "true_false", "on_off", "one_zero", "t_f"];

impl Connector {
    /// Parses `connector.toml` text; unknown keys and every invalid value are
    /// reported together.
    pub fn from_toml(text: &str) -> Result<Self> {
        document::from_toml(text).map_err(Error::InvalidConnector)
    }

    /// Parses the JSON form of the document.
    pub fn from_json(text: &str) -> Result<Self> {
        document::from_json(text).map_err(Error::InvalidConnector)
    }

    /// Parses the JSON form from a value.
    pub fn from_json_value(value: serde_json::Value) -> Result<Self> {
        document::from_json_value(value).map_err(Error::InvalidConnector)
    }

    /// Parses `connector.toml` text, keeping the connector beside its
    /// problems so that checks against other documents can add theirs.
    pub fn parse_toml(text: &str) -> document::Parsed<Self> {
        document::parse_toml(text)
    }

    /// Parses the JSON form from a value, keeping the connector beside its
    /// problems.
    pub fn parse_json_value(value: serde_json::Value) -> document::Parsed<Self> {
        document::parse_json_value(value)
    }

    /// Serialises the document as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Checks the rules that need nothing but the document itself.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !is_identifier(&self.api_name) {
            problems.push(Problem::new(
                "api_name",
                format!("`{}` must match [a-z][a-z0-9_]{{0,62}}", self.api_name),
            ));
        }
        if let Some(d) = &self.input.delimiter
            && d.chars().count() != 1
        {
            problems.push(Problem::new("input.delimiter", "must be exactly one character"));
        }
        if let Some(p) = self.input.encoding.problem() {
            problems.push(Problem::new("input.encoding", p));
        }
        if self.sql.file.is_some() && self.sql.text.is_some() {
            problems.push(Problem::new("sql", "give either `file` or `text`, not both"));
        }
        if let Err(mut p) = self.limits.parse() {
            problems.append(&mut p);
        }
        problems.extend(crate::sources::problems(&self.sources));
        for (i, n) in self.notifications.iter().enumerate() {
            problems.extend(n.problems(&format!("notifications[{i}]")));
        }
        match self.kind {
            ConnectorType::Webhook => {
                if self.schedule.is_some() {
                    problems.push(Problem::new("schedule", "only for type = \"schedule\""));
                }
                if let Some(w) = &self.webhook {
                    if w.window().is_none() {
                        problems.push(Problem::new(
                            "webhook.batch_window",
                            format!("`{}` is not a duration like \"30s\"", w.batch_window),
                        ));
                    }
                    match (&w.secret, &w.secret_env) {
                        (Some(_), Some(_)) => problems.push(Problem::new(
                            "webhook.secret",
                            "give `secret` or `secret_env`, not both",
                        )),
                        (Some(name), None) if !is_identifier(name) => problems.push(Problem::new(
                            "webhook.secret",
                            "must name a workspace secret ([a-z][a-z0-9_]{0,62})",
                        )),
                        _ => {}
                    }
                }
            }
            ConnectorType::Schedule => {
                if self.webhook.is_some() {
                    problems.push(Problem::new("webhook", "only for type = \"webhook\""));
                }
                match &self.schedule {
                    None => problems.push(Problem::new("schedule", "required for type = \"schedule\"")),
                    Some(def) => problems.extend(crate::schedule::parse(def).err().unwrap_or_default()),
                }
            }
            ConnectorType::Spreadsheet => {
                if self.webhook.is_some() {
                    problems.push(Problem::new("webhook", "only for type = \"webhook\""));
                }
                if self.schedule.is_some() {
                    problems.push(Problem::new("schedule", "only for type = \"schedule\""));
                }
            }
        }
        for (i, t) in self.transforms.iter().enumerate() {
            if !is_identifier(&t.scope) {
                problems.push(Problem::new(format!("transforms[{i}].scope"), "not a valid scope name"));
            }
            if let Some(message) = t.plugin.problem() {
                problems.push(Problem::new(format!("transforms[{i}].plugin"), message));
            }
            // A config sent as JSON must still be writable as connector.toml
            // (a dev package), and TOML has no null; a null config as a whole
            // is an absent one.
            if !t.config.is_null()
                && let Some(at) = null_inside(&t.config, format!("transforms[{i}].config"))
            {
                problems.push(Problem::new(
                    at,
                    "null cannot be written to connector.toml; leave the key out",
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, v) in self.variables.iter().enumerate() {
            let path = |key: &str| format!("variables[{i}].{key}");
            if !is_identifier(&v.name) {
                problems.push(Problem::new(path("name"), format!("`{}` is not a valid name", v.name)));
            }
            if !names.insert((v.scope.as_str(), v.name.as_str())) {
                problems.push(Problem::new(
                    path("name"),
                    format!("variable `{}` is declared twice in scope `{}`", v.name, v.scope),
                ));
            }
            match (&v.column, &v.value) {
                (None, None) => problems.push(Problem::new(path("column"), "give `column` or `value`")),
                (Some(_), Some(_)) => problems.push(Problem::new(path("value"), "give `column` or `value`, not both")),
                _ => {}
            }
            if v.is_array && v.array_delimiter.is_empty() {
                problems.push(Problem::new(path("array_delimiter"), "must not be empty"));
            }
            match v.kind {
                VariableType::Boolean if !BOOLEAN_FORMATS.contains(&v.input_format.as_str()) => {
                    problems.push(Problem::new(
                        path("input_format"),
                        format!("boolean formats are {}", BOOLEAN_FORMATS.join(", ")),
                    ))
                }
                VariableType::Date | VariableType::Datetime if !DATE_KEYWORDS.contains(&v.input_format.as_str()) => {
                    if let Err(e) = check_strftime(&v.input_format) {
                        problems.push(Problem::new(path("input_format"), e));
                    }
                }
                VariableType::Boolean | VariableType::Date | VariableType::Datetime => {}
                _ if v.input_format != "auto" => problems.push(Problem::new(
                    path("input_format"),
                    format!("type {} takes no input_format", v.kind.as_str()),
                )),
                _ => {}
            }
            if let Some(region) = &v.default_region
                && region.parse::<phonenumber::country::Id>().is_err()
            {
                problems.push(Problem::new(
                    path("default_region"),
                    format!("`{region}` is not an ISO 3166 country code"),
                ));
            }
        }
        let mut orders = HashSet::new();
        for (i, l) in self.loads.iter().enumerate() {
            if !orders.insert(l.order) {
                problems.push(Problem::new(
                    format!("loads[{i}].order"),
                    "two load steps share this order",
                ));
            }
            if !is_identifier(&l.object) {
                problems.push(Problem::new(format!("loads[{i}].object"), "not a valid object name"));
            }
            let declared = |name: &str| self.variables.iter().any(|v| v.scope == l.scope && v.name == name);
            for (j, m) in l.matching.iter().enumerate() {
                if !declared(&m.variable) {
                    problems.push(Problem::new(
                        format!("loads[{i}].match[{j}].variable"),
                        format!("no variable `{}` in scope `{}`", m.variable, l.scope),
                    ));
                }
            }
            for (j, f) in l.fields.iter().enumerate() {
                if f.variables.is_empty() {
                    problems.push(Problem::new(
                        format!("loads[{i}].fields[{j}].variables"),
                        "must not be empty",
                    ));
                }
                for var in &f.variables {
                    let earlier_id = self.loads.iter().any(|o| {
                        o.order < l.order && o.scope == l.scope && o.record_id_variable.as_deref() == Some(var)
                    });
                    if !declared(var) && !earlier_id {
                        problems.push(Problem::new(
                            format!("loads[{i}].fields[{j}].variables"),
                            format!("no variable `{var}` in scope `{}`", l.scope),
                        ));
                    }
                }
            }
        }
        problems
    }

    /// Checks the references of variables, transforms and loads against the
    /// scopes the SQL script produced (scope name → column names).
    pub fn check_scopes(&self, scopes: &HashMap<String, Vec<String>>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let known = |scope: &str| scopes.contains_key(scope);
        let listed = || {
            let mut names: Vec<_> = scopes.keys().map(String::as_str).collect();
            names.sort_unstable();
            names.join(", ")
        };
        for (i, v) in self.variables.iter().enumerate() {
            match scopes.get(&v.scope) {
                None => problems.push(Problem::new(
                    format!("variables[{i}].scope"),
                    format!(
                        "the SQL script has no output scope `{}` (it has: {})",
                        v.scope,
                        listed()
                    ),
                )),
                Some(columns) => {
                    if let Some(c) = &v.column
                        && !self.transforms.iter().any(|t| t.scope == v.scope)
                        && !columns.iter().any(|col| col == c)
                    {
                        problems.push(Problem::new(
                            format!("variables[{i}].column"),
                            format!(
                                "scope `{}` has no column `{c}` (it has: {})",
                                v.scope,
                                columns.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        for (i, t) in self.transforms.iter().enumerate() {
            if !known(&t.scope) {
                problems.push(Problem::new(
                    format!("transforms[{i}].scope"),
                    format!("the SQL script has no output scope `{}`", t.scope),
                ));
            }
        }
        for (i, l) in self.loads.iter().enumerate() {
            if !known(&l.scope) {
                problems.push(Problem::new(
                    format!("loads[{i}].scope"),
                    format!("the SQL script has no output scope `{}`", l.scope),
                ));
            }
        }
        problems
    }

    /// The parameters a run gets when its trigger gives `given`: each
    /// overrides the declared one of its name, and must be of its kind (the
    /// declared value's: text, integer, number or boolean; an integer is a
    /// number too). An undeclared or ill-typed one is refused with its path.
    pub fn run_parameters(
        &self,
        given: &BTreeMap<String, serde_json::Value>,
    ) -> std::result::Result<BTreeMap<String, ParamValue>, Vec<Problem>> {
        let mut parameters = self.parameters.clone();
        let mut problems = Vec::new();
        for (name, value) in given {
            let path = format!("parameters.{name}");
            let Some(declared) = self.parameters.get(name) else {
                let known: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
                let hint = document::did_you_mean(name, &known);
                problems.push(Problem::new(
                    path,
                    format!("the connector declares no such parameter{hint}"),
                ));
                continue;
            };
            let typed = match (declared, value) {
                (ParamValue::Text(_), serde_json::Value::String(s)) => Some(ParamValue::Text(s.clone())),
                (ParamValue::Int(_), v) => v.as_i64().map(ParamValue::Int),
                (ParamValue::Float(_), v) => v.as_f64().filter(|_| v.is_number()).map(ParamValue::Float),
                (ParamValue::Bool(_), serde_json::Value::Bool(b)) => Some(ParamValue::Bool(*b)),
                _ => None,
            };
            match typed {
                Some(typed) => {
                    parameters.insert(name.clone(), typed);
                }
                None => problems.push(Problem::new(
                    path,
                    format!("must be {}, as declared (`{declared}`)", declared.kind()),
                )),
            }
        }
        if problems.is_empty() {
            Ok(parameters)
        } else {
            Err(problems)
        }
    }

    /// Variables of one scope, in declaration order.
    pub fn variables_of<'a>(&'a self, scope: &'a str) -> impl Iterator<Item = &'a VariableDef> + 'a {
        self.variables.iter().filter(move |v| v.scope == scope)
    }
}

impl Document for Connector {
    fn validate(&self) -> Vec<Problem> {
        Connector::validate(self)
    }

    fn keys_at(table: &str) -> &'static [&'static str] {
        use document::keys_of;
        match table {
            "" => keys_of::<Connector>(),
            "input" => keys_of::<InputOptions>(),
            "sql" => keys_of::<SqlSource>(),
            "limits" => keys_of::<LimitsDef>(),
            "webhook" => keys_of::<WebhookDef>(),
            "schedule" => keys_of::<ScheduleDef>(),
            "transforms" => keys_of::<TransformDef>(),
            "variables" => keys_of::<VariableDef>(),
            "loads" => keys_of::<LoadDef>(),
            "loads.match" => keys_of::<MatchRule>(),
            "loads.fields" => keys_of::<FieldMapping>(),
            "notifications" => keys_of::<NotificationDef>(),
            _ => &[],
        }
    }
}

/// Whether `s` matches `[a-z][a-z0-9_]{0,62}`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z')) && s.len() <= 63 && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn check_strftime(pattern: &str) -> std::result::Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
        Err(format!(
            "`{pattern}` is not a strftime pattern (or one of {})",
            DATE_KEYWORDS.join(", ")
        ))
    } else {
        Ok(())
    }
}

/// The path of the first `null` in `value`, itself included.
fn null_inside(value: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Null => Some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_inside(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| null_inside(v, format!("{path}.{k}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_over_the_servers_caps_are_named_and_capped() {
        let caps = LimitCaps {
            max_runtime: Duration::from_secs(600),
            max_memory: 1 << 30,
            max_rows: 1000,
        };
        let asked = LimitsDef {
            max_runtime: "1h".into(),
            max_memory: "4GiB".into(),
            max_rows: 5000,
            ..LimitsDef::default()
        };
        let paths: Vec<String> = asked.over(&caps).into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["limits.max_runtime", "limits.max_memory", "limits.max_rows"]);
        let capped = asked.capped(&caps).parse().expect("capped limits parse");
        assert_eq!(
            (capped.max_runtime, capped.max_memory, capped.max_rows),
            (caps.max_runtime, caps.max_memory, caps.max_rows)
        );
        let within = LimitsDef {
            max_memory: "512MiB".into(),
            ..LimitsDef::default()
        };
        let small = LimitCaps {
            max_rows: u64::MAX,
            ..caps
        };
        assert!(within.over(&small).is_empty());
        assert_eq!(within.capped(&small), within);
        // Limits left at their defaults are not asked for: they get the caps.
        let defaults = LimitsDef::default();
        assert!(defaults.over(&caps).is_empty());
        let capped = defaults.capped(&caps).parse().expect("capped defaults parse");
        assert_eq!(capped.max_rows, caps.max_rows);
    }

    #[test]
    fn a_missing_key_is_named_by_its_own_path() {
        let missing = problems("type = \"spreadsheet\"\n");
        assert_eq!(missing, vec![Problem::new("api_name", "is required")]);
        let nested =
            problems("api_name = \"c\"\ntype = \"spreadsheet\"\n[[variables]]\nname = \"x\"\ntype = \"string\"\n");
        assert_eq!(nested.len(), 1, "{nested:?}");
        assert!(
            nested[0].path.starts_with("variables[0].") && nested[0].message == "is required",
            "{nested:?}"
        );
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Connector::from_toml(text) {
            Err(Error::InvalidConnector(p)) => p,
            other => panic!("expected invalid connector, got {other:?}"),
        }
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/connector_toml.rs`): a transform
    /// step without `config` validated, but could not be written back, so
    /// its dev package failed.
    #[test]
    fn a_valid_connector_writes_back_and_a_config_with_null_is_refused() {
        let text = "api_name = \"contacts\"\ntype = \"spreadsheet\"\n\n[sql]\ntext = \"CREATE VIEW output.contacts AS SELECT 1 AS a\"\n\n\
                    [[transforms]]\nscope = \"contacts\"\nplugin = \"phone-normalize@0.1.0\"\n";
        let connector = Connector::from_toml(text).expect("valid");
        let written = connector.to_toml().expect("writes back");
        assert!(!written.contains("config"), "{written}");
        assert_eq!(Connector::from_toml(&written).expect("parses again"), connector);

        let json = serde_json::json!({
            "api_name": "contacts", "type": "spreadsheet",
            "sql": {"text": "CREATE VIEW output.contacts AS SELECT 1 AS a"},
            "transforms": [{"scope": "contacts", "plugin": "phone-normalize@0.1.0",
                            "config": {"columns": ["phone", null]}}],
        });
        match Connector::from_json_value(json) {
            Err(Error::InvalidConnector(p)) => {
                assert_eq!(p.len(), 1, "{p:?}");
                assert_eq!(p[0].path, "transforms[0].config.columns[1]");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn plugin_references_cannot_name_paths() {
        assert_eq!(
            PluginRef::parse("phone-normalize@0.1.0"),
            Ok(PluginRef::Named {
                name: "phone-normalize".into(),
                version: "0.1.0".into()
            })
        );
        let hex = "ab".repeat(32);
        assert_eq!(PluginRef::parse(&format!("sha256:{hex}")), Ok(PluginRef::Sha256(hex)));
        for bad in [
            "phone",
            "../x@1",
            "x@../../etc",
            "x@1/2",
            "X@1",
            "@1",
            "x@",
            "sha256:abc",
            "sha256:../etc",
        ] {
            assert!(PluginRef::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let c = Connector::from_toml(
            r#"
api_name = "contacts_import"
name = "Contacts import"
type = "spreadsheet"
status = "operational"
[input]
format = "csv"
delimiter = ";"
[parameters]
default_country = "US"
retries = 3
[limits]
max_runtime = "10m"
max_memory = "512MiB"
[[variables]]
name = "email"
scope = "contacts"
column = "email"
type = "email"
required = true
"#,
        )
        .expect("valid");
        assert_eq!(c.api_name, "contacts_import");
        assert_eq!(c.parameters["retries"].to_string(), "3");
        let limits = c.limits.parse().expect("limits");
        assert_eq!(limits.max_runtime, Duration::from_secs(600));
        assert_eq!(limits.max_memory, 512 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_and_invalid_values_are_all_reported_with_paths() {
        let p = problems(
            r#"
api_name = "Bad Name"
type = "spreadsheet"
colour = "blue"
[input]
delimter = ";"
[limits]
max_runtime = "soon"
[[variables]]
name = "email"
scope = "contacts"
type = "boolean"
input_format = "maybe"
surprise = 1
"#,
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "colour",
            "input.delimter",
            "variables[0].surprise",
            "api_name",
            "limits.max_runtime",
            "variables[0].column",
            "variables[0].input_format",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn toml_problems_carry_line_column_and_the_key_meant() {
        let text = "api_name = \"orders\"\ntype = \"spreadsheet\"\n[limits]\nmax_runtme = \"1m\"\n\n[[variables]]\nname = \"a\"\nscope = \"s\"\ncolumn = \"a\"\ntype = \"string\"\n\n[[variables]]\nname = \"b\"\nscope = \"s\"\ncolumn = \"b\"\ntype = \"string\"\n  input_formt = \"%Y\"\n";
        let unknown = document::parse_toml::<Connector>(text).problems;
        let shown: Vec<String> = unknown
            .iter()
            .map(|p| {
                let at = p.position.expect("every problem of a TOML text has a position");
                format!("{}:{} {}", at.line, at.column, p)
            })
            .collect();
        assert!(
            shown.contains(&"4:1 limits.max_runtme: unknown key; did you mean `max_runtime`?".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"17:3 variables[1].input_formt: unknown key; did you mean `input_format`?".to_string()),
            "{shown:?}"
        );
        // A misspelt value names the value meant, at the value.
        let bad = document::parse_toml::<Connector>("api_name = \"orders\"\ntype = \"spredsheet\"\n").problems;
        let at = bad[0].position.map(|at| (at.line, at.column));
        assert_eq!(at, Some((2, 8)), "{bad:?}");
        assert!(
            bad[0].to_string().starts_with("type: unknown variant `spredsheet`"),
            "{bad:?}"
        );
        assert!(bad[0].message.ends_with("did you mean `spreadsheet`?"), "{bad:?}");
        // A key unlike any other gets no guess; a broken rule points at its key.
        let text = "api_name = \"orders\"\ntype = \"spreadsheet\"\nzebra = 1\n[limits]\nmax_rows = 0\n";
        let problems = document::parse_toml::<Connector>(text).problems;
        let shown: Vec<String> = problems
            .iter()
            .map(|p| format!("{:?} {p}", p.position.map(|at| (at.line, at.column))))
            .collect();
        assert_eq!(
            shown,
            [
                "Some((3, 1)) zebra: unknown key",
                "Some((5, 1)) limits.max_rows: must be more than zero"
            ]
        );
        // A syntax error is one line with its position, no drawing of the text.
        let broken = document::parse_toml::<Connector>("api_name = \"orders\"\ntype = spreadsheet\n").problems;
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].position.map(|at| at.line), Some(2));
        assert!(!broken[0].message.contains('\n'), "{:?}", broken[0].message);
    }

    #[test]
    fn run_parameters_override_declared_ones_of_their_kind_only() {
        let c = Connector::from_toml(
            "api_name = \"c\"\ntype = \"spreadsheet\"\n[parameters]\ncountry = \"US\"\nlimit = 10\nratio = 0.5\nstrict = false\n",
        )
        .expect("valid");
        let given = serde_json::json!({"country": "NO", "limit": 20, "ratio": 2, "strict": true});
        let given: BTreeMap<String, serde_json::Value> = serde_json::from_value(given).expect("map");
        let run = c.run_parameters(&given).expect("all of their kind");
        let shown: Vec<String> = run.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(shown, ["country=NO", "limit=20", "ratio=2", "strict=true"]);
        let bad = serde_json::json!({"limit": "ten", "strict": 1, "contry": "SE", "ratio": "x"});
        let bad: BTreeMap<String, serde_json::Value> = serde_json::from_value(bad).expect("map");
        let problems: Vec<String> = c
            .run_parameters(&bad)
            .expect_err("refused")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "parameters.contry: the connector declares no such parameter; did you mean `country`?",
                "parameters.limit: must be an integer, as declared (`10`)",
                "parameters.ratio: must be a number, as declared (`0.5`)",
                "parameters.strict: must be a boolean, as declared (`false`)",
            ]
        );
    }

    #[test]
    fn json_form_is_the_same_document() {
        let c = Connector::from_json(
            r#"{"api_name":"orders","type":"spreadsheet","sql":{"text":"select 1"},"extra":true}"#,
        );
        let Err(Error::InvalidConnector(p)) = c else {
            panic!("unknown key accepted")
        };
        assert_eq!(p[0].path, "extra");
        let ok = Connector::from_json(r#"{"api_name":"orders","type":"spreadsheet","sql":{"text":"select 1"}}"#)
            .expect("valid");
        assert_eq!(ok.sql.text.as_deref(), Some("select 1"));
    }

    #[test]
    fn scope_references_are_checked_against_sql_output() {
        let c = Connector::from_toml(
            r#"
api_name = "c"
type = "spreadsheet"
[[variables]]
name = "email"
scope = "contacts"
column = "mail"
type = "email"
[[variables]]
name = "x"
scope = "nope"
column = "x"
type = "string"
"#,
        )
        .expect("valid");
        let scopes = HashMap::from([("contacts".to_string(), vec!["email".to_string()])]);
        let p = c.check_scopes(&scopes);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].path, "variables[0].column");
        assert!(p[1].message.contains("no output scope `nope`"));
    }
}
