//! Converting scope rows into typed variables (SPEC §2 `[[variables]]`, §3.5).
//!
//! This module owns one job: given the `[[variables]]` of a scope and the
//! scope's Arrow schema, turn every batch of scope rows into one typed column
//! per variable, and say which rows are invalid and why. It parses and
//! validates every type (numbers, booleans, dates and date-times with their
//! `input_format`, e-mails, phone numbers, UUIDs), normalises e-mails
//! (lower case), phone numbers (E.164) and UUIDs (lower-case hyphenated), and
//! splits array variables.
//!
//! It must not decide what happens to an invalid row (the pipeline drops it
//! and the report lists it), load anything, or look at connector state beyond
//! the definitions and parameters it is given. Conversion never fails and
//! never panics on input: a value that does not parse is a
//! [`VariableIssue`], not an error.
//!
//! Work is column-wise: each variable's source column is downcast once per
//! batch, typed sources (numbers, booleans, dates, timestamps) are taken as
//! they are, and only other columns go through their text form.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime};
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Float64Array,
    Float64Builder, LargeStringArray, ListBuilder, StringArray, StringBuilder, StringViewArray,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::connector::{BOOLEAN_FORMATS, ParamValue, VariableDef, VariableType};
use crate::error::{Problem, json_reason};

/// Runs `$body` with `$el` bound to the parser's element, whatever its type.
macro_rules! with_element {
    ($parser:expr, |$el:ident| $body:expr) => {
        match $parser {
            Parser::Text($el) => $body,
            Parser::Number($el) => $body,
            Parser::Boolean($el) => $body,
            Parser::Date($el) => $body,
            Parser::Datetime($el) => $body,
        }
    };
}

/// Microseconds in a day.
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// `NaiveDate::num_days_from_ce` of 1970-01-01, the Date32 epoch.
const EPOCH_DAYS_FROM_CE: i32 = 719_163;
/// Days from 1970-01-01 back to 1899-12-30, the base of Excel serials after
/// the fake 1900-02-29.
const EXCEL_BASE_AFTER_LEAP_BUG: i64 = -25_569;
/// Days from 1970-01-01 back to 1899-12-31, the base of Excel serials before it.
const EXCEL_BASE_BEFORE_LEAP_BUG: i64 = -25_568;
/// Excel serial of 9999-12-31 plus one: the end of Excel's calendar.
const EXCEL_SERIAL_END: f64 = 2_958_466.0;
/// Longest quoted value in a message; the issue keeps the whole value.
const MAX_QUOTED_CHARS: usize = 80;

/// Compiled variables of one scope.
#[derive(Debug)]
pub struct ScopeVariables {
    scope: String,
    variables: Vec<Variable>,
    schema: SchemaRef,
}

/// The result of converting one batch.
#[derive(Debug)]
pub struct Converted {
    /// One column per variable (types as in [`ScopeVariables::schema`]); null
    /// where the value is missing or invalid.
    pub values: RecordBatch,
    /// For each row of the batch: true when every variable of the row is valid.
    pub valid: Vec<bool>,
    /// Problems, in row order (then declaration order): (row index in the
    /// batch, issue).
    pub issues: Vec<(usize, VariableIssue)>,
}

/// Why one variable of one row is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableIssue {
    /// The variable's name.
    pub variable: String,
    /// The offending value as read (trimmed); `None` when it was missing.
    pub value: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

/// What is wrong with which value first, the variable it was read for
/// after: ``"`x` is not a valid e-mail address (variable `email`)"``.
impl fmt::Display for VariableIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (variable `{}`)", self.message, self.variable)
    }
}

impl ScopeVariables {
    /// Resolves the scope's variable definitions against the scope's Arrow
    /// schema.
    ///
    /// `defs` pairs each definition with its index in the connector's full
    /// `variables` list, so problems carry paths like `variables[3].column`.
    /// Every problem is reported (a column missing from the schema, a bad
    /// `input_format` or `default_region`, a literal `value` that does not
    /// parse as its type).
    pub fn compile(
        scope: &str,
        defs: &[(usize, &VariableDef)],
        schema: &SchemaRef,
        parameters: &BTreeMap<String, ParamValue>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut variables = Vec::with_capacity(defs.len());
        for &(index, def) in defs {
            let path = |key: &str| format!("variables[{index}].{key}");
            let before = problems.len();
            if def.scope != scope {
                problems.push(Problem::new(
                    path("scope"),
                    format!(
                        "variable `{}` belongs to scope `{}`, not `{scope}`",
                        def.name, def.scope
                    ),
                ));
                continue;
            }
            let source = match (&def.column, &def.value) {
                (Some(column), None) => match schema.index_of(column) {
                    Ok(index) => Some(Source::Column {
                        name: column.clone(),
                        index,
                    }),
                    Err(_) => {
                        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                        problems.push(Problem::new(
                            path("column"),
                            format!(
                                "scope `{scope}` has no column `{column}` (it has: {})",
                                columns.join(", ")
                            ),
                        ));
                        None
                    }
                },
                (None, Some(value)) => Some(Source::Literal(value.clone())),
                (Some(_), Some(_)) => {
                    problems.push(Problem::new(path("value"), "give `column` or `value`, not both"));
                    None
                }
                (None, None) => {
                    problems.push(Problem::new(path("column"), "give `column` or `value`"));
                    None
                }
            };
            let array_delimiter = if def.is_array {
                if def.array_delimiter.is_empty() {
                    problems.push(Problem::new(path("array_delimiter"), "must not be empty"));
                }
                Some(def.array_delimiter.clone())
            } else {
                None
            };
            let parser = match Parser::new(def, parameters) {
                Ok(parser) => Some(parser),
                Err((key, message)) => {
                    problems.push(Problem::new(path(key), message));
                    None
                }
            };
            let (Some(source), Some(parser)) = (source, parser) else {
                continue;
            };
            if problems.len() > before {
                continue;
            }
            let variable = Variable {
                name: def.name.clone(),
                source,
                parser,
                required: def.required,
                array_delimiter,
            };
            if let Some(message) = variable.literal_problem() {
                problems.push(Problem::new(path("value"), message));
                continue;
            }
            variables.push(variable);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let fields: Vec<Field> = variables
            .iter()
            .map(|v| Field::new(v.name.as_str(), v.data_type(), true))
            .collect();
        Ok(Self {
            scope: scope.to_owned(),
            variables,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The output schema: one field per variable, in declaration order,
    /// nullable. `string`/`email`/`phone_number`/`uuid` are `Utf8`, `number`
    /// is `Float64`, `boolean` is `Boolean`, `date` is `Date32`, `datetime`
    /// is `Timestamp(Microsecond, "UTC")`; array variables are `List` of
    /// that type.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Converts one batch of scope rows.
    pub fn convert(&self, batch: &RecordBatch) -> Converted {
        let rows = batch.num_rows();
        let mut issues = Vec::new();
        let mut columns = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let cells = Cells::new(var, batch);
            let column = match reuse_clean_strings(var, &cells, rows, &mut issues) {
                Some(column) => column,
                None => with_element!(&var.parser, |el| convert_column(el, var, &cells, rows, &mut issues)),
            };
            columns.push(column);
        }
        // Stable: within a row, issues stay in declaration order.
        issues.sort_by_key(|(row, _)| *row);
        let mut valid = vec![true; rows];
        for (row, _) in &issues {
            if let Some(v) = valid.get_mut(*row) {
                *v = false;
            }
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        match RecordBatch::try_new_with_options(self.schema(), columns, &options) {
            Ok(values) => Converted { values, valid, issues },
            // Every column is built for its field's type and the batch's row
            // count, so this cannot happen; if it does, no row is loaded and
            // the report says why instead of the worker crashing.
            Err(error) => {
                tracing::error!(scope = %self.scope, %error, "variables batch could not be assembled");
                let variable = self.variables.first().map(|v| v.name.clone()).unwrap_or_default();
                let issues = (0..rows)
                    .map(|row| {
                        let issue = VariableIssue {
                            variable: variable.clone(),
                            value: None,
                            message: format!("internal error while converting variables: {error}"),
                        };
                        (row, issue)
                    })
                    .collect();
                Converted {
                    values: RecordBatch::new_empty(self.schema()),
                    valid: vec![false; rows],
                    issues,
                }
            }
        }
    }
}

/// One compiled variable.
#[derive(Debug)]
struct Variable {
    name: String,
    source: Source,
    parser: Parser,
    required: bool,
    /// `Some` for array variables.
    array_delimiter: Option<String>,
}

/// Where a variable's value comes from.
#[derive(Debug)]
enum Source {
    /// A column of the scope; `index` is its position in the compiled schema,
    /// checked by name on every batch.
    Column { name: String, index: usize },
    /// The same text for every row.
    Literal(String),
}

impl Variable {
    fn data_type(&self) -> DataType {
        let element = with_element!(&self.parser, |el| el.data_type());
        match self.array_delimiter {
            Some(_) => DataType::List(Arc::new(Field::new_list_field(element, true))),
            None => element,
        }
    }

    /// Why a literal `value` cannot be used, if it cannot.
    fn literal_problem(&self) -> Option<String> {
        let Source::Literal(text) = &self.source else {
            return None;
        };
        let outcome = with_element!(&self.parser, |el| match &self.array_delimiter {
            Some(delimiter) => parse_list(el, delimiter, text).map(|_| ()),
            None => parse_scalar(el, text).map(|_| ()),
        });
        match outcome {
            Ok(()) => None,
            Err(Fault::Missing) if self.required => Some("the value is empty but the variable is required".into()),
            Err(Fault::Missing) => None,
            Err(Fault::Invalid { message, .. }) => Some(message),
        }
    }

    /// The column of `batch` this variable reads, if the batch has it.
    fn column<'b>(&self, batch: &'b RecordBatch) -> Option<&'b ArrayRef> {
        let Source::Column { name, index } = &self.source else {
            return None;
        };
        let same_place = batch
            .schema_ref()
            .fields()
            .get(*index)
            .is_some_and(|f| f.name() == name);
        if same_place {
            batch.columns().get(*index)
        } else {
            batch.column_by_name(name)
        }
    }

    /// Notes a row's missing or invalid value.
    fn record(&self, row: usize, fault: &Fault, issues: &mut Vec<(usize, VariableIssue)>) {
        let issue = match fault {
            Fault::Missing if !self.required => return,
            Fault::Missing => VariableIssue {
                variable: self.name.clone(),
                value: None,
                message: "required value is missing".into(),
            },
            Fault::Invalid { value, message } => VariableIssue {
                variable: self.name.clone(),
                value: value.clone(),
                message: message.clone(),
            },
        };
        issues.push((row, issue));
    }
}

/// Why a value is not there.
#[derive(Debug, Clone)]
enum Fault {
    /// Null, empty or only whitespace.
    Missing,
    /// Present but not of the variable's type.
    Invalid { value: Option<String>, message: String },
}

/// The parser of one variable type, with its options resolved.
#[derive(Debug)]
enum Parser {
    Text(TextElement),
    Number(NumberElement),
    Boolean(BooleanElement),
    Date(DateElement),
    Datetime(DatetimeElement),
}

impl Parser {
    /// The parser for `def`; an error names the offending key and says why.
    fn new(def: &VariableDef, parameters: &BTreeMap<String, ParamValue>) -> Result<Self, (&'static str, String)> {
        let text = |kind| Ok(Parser::Text(TextElement { kind }));
        match def.kind {
            VariableType::String => text(TextKind::Plain),
            VariableType::Email => text(TextKind::Email),
            VariableType::Uuid => text(TextKind::Uuid),
            VariableType::Json => text(TextKind::Json),
            VariableType::PhoneNumber => text(TextKind::Phone(phone_region(def, parameters)?)),
            VariableType::Number => Ok(Parser::Number(NumberElement)),
            VariableType::Boolean => match BoolFormat::from_name(&def.input_format) {
                Some(format) => Ok(Parser::Boolean(BooleanElement { format })),
                None => Err((
                    "input_format",
                    format!("boolean formats are {}", BOOLEAN_FORMATS.join(", ")),
                )),
            },
            VariableType::Date => Ok(Parser::Date(DateElement {
                format: DateFormat::new(&def.input_format)?,
            })),
            VariableType::Datetime => Ok(Parser::Datetime(DatetimeElement {
                format: DateFormat::new(&def.input_format)?,
            })),
        }
    }
}

/// The region phone numbers without a country code are read in:
/// `default_region`, else the `default_country` parameter, else none.
fn phone_region(
    def: &VariableDef,
    parameters: &BTreeMap<String, ParamValue>,
) -> Result<Option<phonenumber::country::Id>, (&'static str, String)> {
    let parse = |code: &str| code.trim().to_ascii_uppercase().parse::<phonenumber::country::Id>();
    if let Some(region) = &def.default_region {
        return parse(region.as_str())
            .map(Some)
            .map_err(|_| ("default_region", format!("`{region}` is not an ISO 3166 country code")));
    }
    match parameters.get("default_country") {
        None => Ok(None),
        Some(ParamValue::Text(code)) if code.trim().is_empty() => Ok(None),
        Some(value) => parse(value.to_string().as_str()).map(Some).map_err(|_| {
            (
                "default_region",
                format!(
                    "no default_region, and the parameter default_country = `{value}` \
                     is not an ISO 3166 country code"
                ),
            )
        }),
    }
}

/// A variable type's parsing and its Arrow builder.
///
/// `Value` may borrow from the text it was parsed from, so plain strings are
/// copied once, straight into the builder.
trait Element {
    /// Builds the output column (or the values of a list column).
    type Builder: ArrayBuilder;
    /// One parsed value.
    type Value<'a>;
    /// The Arrow type of one value.
    fn data_type(&self) -> DataType;
    /// A builder for `capacity` values.
    fn builder(&self, capacity: usize) -> Self::Builder;
    /// Appends a value.
    fn append(builder: &mut Self::Builder, value: &Self::Value<'_>);
    /// Appends a null.
    fn append_null(builder: &mut Self::Builder);
    /// Parses trimmed, non-empty text; the error is the message for a person.
    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String>;
    /// Takes a value of a typed source column.
    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String>;
}

/// A value read from a typed (non-text) source column, already converted to
/// the variable's Arrow representation.
#[derive(Debug, Clone, Copy)]
enum Typed {
    Number(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Datetime(i64),
}

impl fmt::Display for Typed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Typed::Number(v) => write!(f, "{v}"),
            Typed::Bool(b) => write!(f, "{b}"),
            Typed::Date(days) => match date_from_days(days) {
                Some(date) => write!(f, "{date}"),
                None => write!(f, "day {days}"),
            },
            Typed::Datetime(micros) => match DateTime::from_timestamp_micros(micros) {
                Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.fZ")),
                None => write!(f, "{micros} µs"),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Text-like types: string, email, phone_number, uuid.

#[derive(Debug)]
struct TextElement {
    kind: TextKind,
}

#[derive(Debug)]
enum TextKind {
    Plain,
    Email,
    Phone(Option<phonenumber::country::Id>),
    Uuid,
    Json,
}

/// A text value: the input itself when it needs no change.
enum TextValue<'a> {
    Borrowed(&'a str),
    Owned(String),
    Uuid(uuid::Uuid),
}

impl TextValue<'_> {
    fn into_owned(self) -> TextValue<'static> {
        match self {
            TextValue::Borrowed(s) => TextValue::Owned(s.to_owned()),
            TextValue::Owned(s) => TextValue::Owned(s),
            TextValue::Uuid(u) => TextValue::Uuid(u),
        }
    }
}

impl Element for TextElement {
    type Builder = StringBuilder;
    type Value<'a> = TextValue<'a>;

    fn data_type(&self) -> DataType {
        DataType::Utf8
    }

    fn builder(&self, capacity: usize) -> StringBuilder {
        StringBuilder::with_capacity(capacity, capacity.saturating_mul(16))
    }

    fn append(builder: &mut StringBuilder, value: &Self::Value<'_>) {
        match value {
            TextValue::Borrowed(s) => builder.append_value(s),
            TextValue::Owned(s) => builder.append_value(s),
            TextValue::Uuid(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                builder.append_value(&*u.hyphenated().encode_lower(&mut buf));
            }
        }
    }

    fn append_null(builder: &mut StringBuilder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        match self.kind {
            TextKind::Plain => Ok(TextValue::Borrowed(text)),
            TextKind::Email => {
                parse_email(text).ok_or_else(|| format!("{} is not a valid e-mail address", quote(text)))
            }
            TextKind::Phone(region) => parse_phone(text, region).map(TextValue::Owned).ok_or_else(|| {
                let hint = if region.is_none() {
                    " (no default region: write it with +country code or set default_region)"
                } else {
                    ""
                };
                format!("{} is not a valid phone number{hint}", quote(text))
            }),
            TextKind::Uuid => uuid::Uuid::parse_str(text)
                .map(TextValue::Uuid)
                .map_err(|_| format!("{} is not a UUID", quote(text))),
            TextKind::Json => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Ok(TextValue::Borrowed(text)),
                Err(e) => Err(format!(
                    "{} is not valid JSON ({} at line {}, column {})",
                    quote(text),
                    json_reason(&e),
                    e.line(),
                    e.column()
                )),
            },
        }
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        let text = value.to_string();
        self.parse(&text).map(TextValue::into_owned)
    }
}

/// A valid address with a dot in its domain, lower-cased (integrators match
/// on it, and mail systems treat addresses case-insensitively in practice).
fn parse_email(text: &str) -> Option<TextValue<'_>> {
    let options = email_address::Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    email_address::EmailAddress::parse_with_options(text, options).ok()?;
    Some(if text.chars().any(char::is_uppercase) {
        TextValue::Owned(text.to_lowercase())
    } else {
        TextValue::Borrowed(text)
    })
}

/// A valid phone number in E.164, read in `region` when it has no country code.
fn parse_phone(text: &str, region: Option<phonenumber::country::Id>) -> Option<String> {
    // The phonenumber crate has panicked on malformed input before (its
    // issues #32, #43); a bad cell must make a row invalid, not kill the run.
    // A number written with `+` carries its country code; reading it "in" a
    // region makes the phonenumber crate strip that region's national prefix
    // from it (`+33 1 42 …` read in US loses its `1`), so it is read alone.
    let region = if text.trim_start().starts_with('+') {
        None
    } else {
        region
    };
    std::panic::catch_unwind(|| {
        let number = phonenumber::parse(region, text).ok()?;
        phonenumber::is_valid(&number).then(|| number.format().mode(phonenumber::Mode::E164).to_string())
    })
    .ok()
    .flatten()
}

// ---------------------------------------------------------------------------
// number

#[derive(Debug)]
struct NumberElement;

impl Element for NumberElement {
    type Builder = Float64Builder;
    type Value<'a> = f64;

    fn data_type(&self) -> DataType {
        DataType::Float64
    }

    fn builder(&self, capacity: usize) -> Float64Builder {
        Float64Builder::with_capacity(capacity)
    }

    fn append(builder: &mut Float64Builder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut Float64Builder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        parse_number(text).ok_or_else(|| format!("{} is not a number", quote(text)))
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Number(v) if v.is_finite() => Ok(v),
            other => self.parse(&other.to_string()),
        }
    }
}

/// A finite decimal number; a thousands separator is accepted only in the
/// strict form `1,234,567.89`, so `1,5` (a decimal comma) is not misread.
fn parse_number(text: &str) -> Option<f64> {
    let value: f64 = if text.contains(',') {
        if !is_thousands_form(text) {
            return None;
        }
        text.replace(',', "").parse().ok()?
    } else {
        // Rust also reads `inf` and `NaN`; they are refused below.
        text.parse().ok()?
    };
    value.is_finite().then_some(value)
}

/// Whether `text` is `[+-]?\d{1,3}(,\d{3})+(\.\d+)?`.
fn is_thousands_form(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (integer, fraction) = match body.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (body, None),
    };
    if fraction.is_some_and(|f| !digits(f)) {
        return false;
    }
    let mut groups = integer.split(',');
    let Some(first) = groups.next() else {
        return false;
    };
    let mut grouped = false;
    for group in groups {
        if group.len() != 3 || !digits(group) {
            return false;
        }
        grouped = true;
    }
    first.len() <= 3 && digits(first) && grouped
}

/// A finite number without thousands separators (epoch values).
fn plain_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

// ---------------------------------------------------------------------------
// boolean

#[derive(Debug)]
struct BooleanElement {
    format: BoolFormat,
}

/// Boolean `input_format`s.
#[derive(Debug, Clone, Copy)]
enum BoolFormat {
    Auto,
    YesNo,
    TrueFalse,
    OnOff,
    OneZero,
    Tf,
}

impl BoolFormat {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => BoolFormat::Auto,
            "yes_no" => BoolFormat::YesNo,
            "true_false" => BoolFormat::TrueFalse,
            "on_off" => BoolFormat::OnOff,
            "one_zero" => BoolFormat::OneZero,
            "t_f" => BoolFormat::Tf,
            _ => return None,
        })
    }

    /// The accepted words (compared case-insensitively).
    fn words(self) -> &'static [(&'static str, bool)] {
        match self {
            BoolFormat::Auto => &[
                ("true", true),
                ("false", false),
                ("yes", true),
                ("no", false),
                ("on", true),
                ("off", false),
                ("1", true),
                ("0", false),
                ("t", true),
                ("f", false),
                ("y", true),
                ("n", false),
            ],
            BoolFormat::YesNo => &[("yes", true), ("no", false), ("y", true), ("n", false)],
            BoolFormat::TrueFalse => &[("true", true), ("false", false)],
            BoolFormat::OnOff => &[("on", true), ("off", false)],
            BoolFormat::OneZero => &[("1", true), ("0", false)],
            BoolFormat::Tf => &[("t", true), ("f", false)],
        }
    }

    fn expected(self) -> &'static str {
        match self {
            BoolFormat::Auto => "true/false, yes/no, on/off, 1/0, t/f or y/n",
            BoolFormat::YesNo => "yes/no or y/n",
            BoolFormat::TrueFalse => "true/false",
            BoolFormat::OnOff => "on/off",
            BoolFormat::OneZero => "1/0",
            BoolFormat::Tf => "t/f",
        }
    }
}

impl Element for BooleanElement {
    type Builder = BooleanBuilder;
    type Value<'a> = bool;

    fn data_type(&self) -> DataType {
        DataType::Boolean
    }

    fn builder(&self, capacity: usize) -> BooleanBuilder {
        BooleanBuilder::with_capacity(capacity)
    }

    fn append(builder: &mut BooleanBuilder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut BooleanBuilder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        self.format
            .words()
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(text))
            .map(|&(_, value)| value)
            .ok_or_else(|| format!("{} is not a boolean (expected {})", quote(text), self.format.expected()))
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Bool(b) => Ok(b),
            other => self.parse(&other.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------
// date and datetime

/// Date `input_format`s.
#[derive(Debug)]
enum DateFormat {
    /// ISO dates and date-times, `YYYY/MM/DD`, `DD.MM.YYYY`.
    Auto,
    /// Seconds since 1970-01-01T00:00:00Z (fractions allowed).
    UnixEpoch,
    /// Excel serial day numbers (1900 date system).
    ExcelEpoch,
    /// A strftime pattern, parsed once.
    Pattern { pattern: String, items: Vec<Item<'static>> },
}

impl DateFormat {
    fn new(input_format: &str) -> Result<Self, (&'static str, String)> {
        Ok(match input_format {
            "auto" => DateFormat::Auto,
            "unix_epoch" => DateFormat::UnixEpoch,
            "excel_epoch" => DateFormat::ExcelEpoch,
            pattern => match StrftimeItems::new(pattern).parse_to_owned() {
                Ok(items) => DateFormat::Pattern {
                    pattern: pattern.to_owned(),
                    items,
                },
                Err(_) => {
                    return Err((
                        "input_format",
                        format!("`{pattern}` is not a strftime pattern (or auto, unix_epoch, excel_epoch)"),
                    ));
                }
            },
        })
    }

    /// Parses `text` with the pattern's items.
    fn parse_pattern(items: &[Item<'static>], text: &str) -> Option<Parsed> {
        let mut parsed = Parsed::new();
        chrono::format::parse(&mut parsed, text, items.iter()).ok()?;
        Some(parsed)
    }

    fn mismatch(pattern: &str, text: &str) -> String {
        format!("{} does not match input_format `{pattern}`", quote(text))
    }
}

#[derive(Debug)]
struct DateElement {
    format: DateFormat,
}

impl Element for DateElement {
    type Builder = Date32Builder;
    type Value<'a> = i32;

    fn data_type(&self) -> DataType {
        DataType::Date32
    }

    fn builder(&self, capacity: usize) -> Date32Builder {
        Date32Builder::with_capacity(capacity)
    }

    fn append(builder: &mut Date32Builder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut Date32Builder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        match &self.format {
            DateFormat::Auto => auto_date(text).map(days_from_date),
            DateFormat::UnixEpoch => unix_micros(text).map(days_from_micros),
            DateFormat::ExcelEpoch => excel_micros(text).map(days_from_micros),
            DateFormat::Pattern { pattern, items } => DateFormat::parse_pattern(items, text)
                .and_then(|parsed| parsed.to_naive_date().ok())
                .map(days_from_date)
                .ok_or_else(|| DateFormat::mismatch(pattern, text)),
        }
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Date(days) => Ok(days),
            Typed::Datetime(micros) => Ok(days_from_micros(micros)),
            other => self.parse(&other.to_string()),
        }
    }
}

#[derive(Debug)]
struct DatetimeElement {
    format: DateFormat,
}

impl Element for DatetimeElement {
    type Builder = TimestampMicrosecondBuilder;
    type Value<'a> = i64;

    fn data_type(&self) -> DataType {
        utc_micros()
    }

    fn builder(&self, capacity: usize) -> TimestampMicrosecondBuilder {
        TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
    }

    fn append(builder: &mut TimestampMicrosecondBuilder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut TimestampMicrosecondBuilder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        match &self.format {
            DateFormat::Auto => auto_datetime(text),
            DateFormat::UnixEpoch => unix_micros(text),
            DateFormat::ExcelEpoch => excel_micros(text),
            DateFormat::Pattern { pattern, items } => {
                let parsed =
                    DateFormat::parse_pattern(items, text).ok_or_else(|| DateFormat::mismatch(pattern, text))?;
                // With an offset: that instant. Without: taken as UTC. A
                // pattern without time fields: midnight UTC.
                if let Ok(t) = parsed.to_datetime() {
                    Ok(t.timestamp_micros())
                } else if let Ok(t) = parsed.to_naive_datetime_with_offset(0) {
                    Ok(t.and_utc().timestamp_micros())
                } else {
                    parsed
                        .to_naive_date()
                        .map(|date| date.and_time(NaiveTime::MIN).and_utc().timestamp_micros())
                        .map_err(|_| DateFormat::mismatch(pattern, text))
                }
            }
        }
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Datetime(micros) => Ok(micros),
            Typed::Date(days) => i64::from(days)
                .checked_mul(MICROS_PER_DAY)
                .ok_or_else(|| format!("{} is out of range", quote(&value.to_string()))),
            other => self.parse(&other.to_string()),
        }
    }
}

/// `Timestamp(Microsecond, "UTC")`, the type of `datetime` variables.
fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn days_from_date(date: NaiveDate) -> i32 {
    Datelike::num_days_from_ce(&date) - EPOCH_DAYS_FROM_CE
}

fn date_from_days(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(days.checked_add(EPOCH_DAYS_FROM_CE)?)
}

fn days_from_micros(micros: i64) -> i32 {
    // |i64::MAX / MICROS_PER_DAY| is about 1.07e8, well inside i32.
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// Why text is not an automatic date.
enum DateError {
    NotADate,
    /// `NN/NN/YYYY`: day/month or month/day cannot be told apart.
    Ambiguous(char),
    /// The fields are a date that does not exist (2024-02-30).
    NoSuchDate,
}

impl DateError {
    fn message(&self, text: &str, datetime: bool) -> String {
        match self {
            DateError::NotADate if datetime => format!(
                "{} is not a date-time (expected ISO 8601 such as 2024-03-01T12:30:00Z, or set input_format)",
                quote(text)
            ),
            DateError::NotADate => format!(
                "{} is not a date (expected YYYY-MM-DD, YYYY/MM/DD or DD.MM.YYYY, or set input_format)",
                quote(text)
            ),
            DateError::Ambiguous(sep) => format!(
                "{} is ambiguous (day{sep}month or month{sep}day?): set input_format to \
                 \"%d{sep}%m{sep}%Y\" or \"%m{sep}%d{sep}%Y\"",
                quote(text)
            ),
            DateError::NoSuchDate => format!("{} is not a valid date", quote(text)),
        }
    }
}

/// Splits the leading ASCII digits off `text`.
fn split_digits(text: &str) -> (&str, &str) {
    let n = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at_checked(n).unwrap_or(("", text))
}

/// Reads `YYYY-MM-DD`, `YYYY/MM/DD` or `DD.MM.YYYY` at the start of `text`,
/// returning the date and what follows it.
fn date_prefix(text: &str) -> Result<(NaiveDate, &str), DateError> {
    let (a, rest) = split_digits(text);
    let Some(sep) = rest.chars().next().filter(|&c| matches!(c, '-' | '/' | '.')) else {
        return Err(DateError::NotADate);
    };
    let (b, rest) = split_digits(rest.get(1..).unwrap_or(""));
    let Some(rest) = rest.strip_prefix(sep) else {
        return Err(DateError::NotADate);
    };
    let (c, rest) = split_digits(rest);
    let (year, month, day) = match (a.len(), b.len(), c.len(), sep) {
        (4, 1..=2, 1..=2, '-' | '/') => (a, b, c),
        (1..=2, 1..=2, 4, '.') => (c, b, a),
        (1..=2, 1..=2, 4, '-' | '/') => return Err(DateError::Ambiguous(sep)),
        _ => return Err(DateError::NotADate),
    };
    match (year.parse::<i32>(), month.parse::<u32>(), day.parse::<u32>()) {
        (Ok(year), Ok(month), Ok(day)) => NaiveDate::from_ymd_opt(year, month, day)
            .map(|date| (date, rest))
            .ok_or(DateError::NoSuchDate),
        _ => Err(DateError::NotADate),
    }
}

/// Reads `HH:MM[:SS[.fraction]]` and an optional offset (`Z`, `UTC`,
/// `+HH`, `+HHMM`, `+HH:MM`) that make up all of `text`; the offset is in
/// seconds east of UTC.
fn time_and_offset(text: &str) -> Option<(NaiveTime, i32)> {
    let (hour, rest) = split_digits(text);
    if !(1..=2).contains(&hour.len()) {
        return None;
    }
    let (minute, mut rest) = split_digits(rest.strip_prefix(':')?);
    if minute.len() != 2 {
        return None;
    }
    let mut second = 0;
    let mut nano = 0;
    if let Some(after) = rest.strip_prefix(':') {
        let (digits, after) = split_digits(after);
        if digits.len() != 2 {
            return None;
        }
        second = digits.parse::<u32>().ok()?;
        rest = after;
        if let Some(after) = rest.strip_prefix(['.', ',']) {
            let (fraction, after) = split_digits(after);
            if fraction.is_empty() {
                return None;
            }
            // Digits past nanoseconds are below what a timestamp keeps.
            let head = fraction.get(..9).unwrap_or(fraction);
            let scale = 10u32.pow(9 - head.len() as u32);
            nano = head.parse::<u32>().ok()? * scale;
            rest = after;
        }
    }
    let time = NaiveTime::from_hms_nano_opt(hour.parse::<u32>().ok()?, minute.parse::<u32>().ok()?, second, nano)?;
    Some((time, utc_offset(rest.trim_start())?))
}

/// Seconds east of UTC of an offset suffix; empty means UTC.
fn utc_offset(text: &str) -> Option<i32> {
    if text.is_empty() || ["z", "utc", "gmt"].iter().any(|z| text.eq_ignore_ascii_case(z)) {
        return Some(0);
    }
    let sign = match text.as_bytes().first().copied()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hh, rest) = split_digits(text.get(1..)?);
    let (hours, minutes) = match (hh.len(), rest) {
        (2, "") => (hh, "00"),
        (4, "") => (hh.get(..2)?, hh.get(2..)?),
        (2, rest) => {
            let mm = rest.strip_prefix(':')?;
            if mm.len() != 2 || !mm.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (hh, mm)
        }
        _ => return None,
    };
    let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours <= 23 && minutes <= 59).then_some(sign * (hours * 3600 + minutes * 60))
}

/// The separator between a date and a time in ISO forms.
const DATE_TIME_SEPARATORS: [char; 3] = ['T', 't', ' '];

/// An automatic date; a date-time gives its date as written (before any
/// offset is applied).
fn auto_date(text: &str) -> Result<NaiveDate, String> {
    let (date, rest) = date_prefix(text).map_err(|e| e.message(text, false))?;
    if rest.is_empty()
        || rest
            .strip_prefix(DATE_TIME_SEPARATORS)
            .and_then(time_and_offset)
            .is_some()
    {
        Ok(date)
    } else {
        Err(DateError::NotADate.message(text, false))
    }
}

/// An automatic date-time in microseconds since the epoch, UTC.
fn auto_datetime(text: &str) -> Result<i64, String> {
    let (date, rest) = date_prefix(text).map_err(|e| e.message(text, true))?;
    if rest.is_empty() {
        return Ok(date.and_time(NaiveTime::MIN).and_utc().timestamp_micros());
    }
    let (time, offset) = rest
        .strip_prefix(DATE_TIME_SEPARATORS)
        .and_then(time_and_offset)
        .ok_or_else(|| DateError::NotADate.message(text, true))?;
    Ok(date.and_time(time).and_utc().timestamp_micros() - i64::from(offset) * 1_000_000)
}

/// Seconds since the Unix epoch, as microseconds.
fn unix_micros(text: &str) -> Result<i64, String> {
    let micros = match text.parse::<i64>() {
        Ok(seconds) => seconds.checked_mul(1_000_000),
        Err(_) => plain_float(text)
            .map(|seconds| (seconds * 1e6).round())
            .filter(|micros| micros.abs() < 9.0e18)
            .map(|micros| micros as i64),
    };
    micros
        .filter(|&m| DateTime::from_timestamp_micros(m).is_some())
        .ok_or_else(|| format!("{} is not a Unix timestamp (seconds since 1970-01-01 UTC)", quote(text)))
}

/// An Excel serial day number (1900 date system) as microseconds since the
/// Unix epoch; the fraction is the time of day, kept to the millisecond as
/// Excel does.
fn excel_micros(text: &str) -> Result<i64, String> {
    let serial = plain_float(text)
        .filter(|s| (1.0..EXCEL_SERIAL_END).contains(s))
        .ok_or_else(|| format!("{} is not an Excel serial date (a day number from 1)", quote(text)))?;
    let day = serial.floor();
    // Excel counts 1900 as a leap year: serial 60 is 1900-02-29, which did
    // not exist; the days before it are off by one.
    let base = if day < 60.0 {
        EXCEL_BASE_BEFORE_LEAP_BUG
    } else if day > 60.0 {
        EXCEL_BASE_AFTER_LEAP_BUG
    } else {
        return Err(format!(
            "{} is Excel's 1900-02-29, a day that does not exist",
            quote(text)
        ));
    };
    // `day` is in [1, EXCEL_SERIAL_END), so the casts are exact.
    let millis = ((serial - day) * 86_400_000.0).round() as i64;
    Ok((base + day as i64) * MICROS_PER_DAY + millis * 1000)
}

// ---------------------------------------------------------------------------
// Reading source columns.

/// A variable's source in one batch, downcast once.
enum Cells<'a> {
    /// The literal `value`.
    Literal(&'a str),
    /// The column is not there or cannot be read: every row has this fault.
    Broken(Fault),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    /// Any other type, read through its text form.
    Formatted(&'a dyn Array, ArrayFormatter<'a>),
    Number(Float64Array),
    Boolean(&'a BooleanArray),
    Date(Date32Array),
    /// Microseconds; UTC for zoned sources, taken as UTC for naive ones.
    Datetime(TimestampMicrosecondArray),
}

/// One row of a source.
enum Cell<'s> {
    Null,
    Text(&'s str),
    Typed(Typed),
    Unprintable,
}

impl<'a> Cells<'a> {
    fn new(var: &'a Variable, batch: &'a RecordBatch) -> Self {
        if let Source::Literal(text) = &var.source {
            return Cells::Literal(text.as_str());
        }
        match var.column(batch) {
            Some(array) => Cells::of(&var.parser, array),
            None => {
                let name = match &var.source {
                    Source::Column { name, .. } => name.as_str(),
                    Source::Literal(_) => "",
                };
                Cells::Broken(Fault::Invalid {
                    value: None,
                    message: format!("the scope has no column `{name}`"),
                })
            }
        }
    }

    fn of(parser: &Parser, array: &'a ArrayRef) -> Self {
        if let Some(typed) = Cells::typed(parser, array) {
            return typed;
        }
        if let Some(strings) = array.as_string_opt::<i32>() {
            return Cells::Utf8(strings);
        }
        if let Some(strings) = array.as_string_opt::<i64>() {
            return Cells::LargeUtf8(strings);
        }
        if let Some(strings) = array.as_string_view_opt() {
            return Cells::Utf8View(strings);
        }
        match ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()) {
            Ok(formatter) => Cells::Formatted(array.as_ref(), formatter),
            Err(_) => Cells::Broken(Fault::Invalid {
                value: None,
                message: format!("values of type {} cannot be read", array.data_type()),
            }),
        }
    }

    /// A typed source taken as it is, when the variable's type fits it; a
    /// failed cast falls back to the text form.
    fn typed(parser: &Parser, array: &'a ArrayRef) -> Option<Self> {
        let data_type = array.data_type();
        match parser {
            Parser::Number(_) if data_type.is_numeric() => cast(array, &DataType::Float64)
                .ok()
                .and_then(|a| a.as_primitive_opt::<Float64Type>().cloned())
                .map(Cells::Number),
            Parser::Boolean(_) => array.as_boolean_opt().map(Cells::Boolean),
            Parser::Date(_) => match data_type {
                DataType::Date32 => array.as_primitive_opt::<Date32Type>().cloned().map(Cells::Date),
                DataType::Date64 | DataType::Timestamp(_, _) => cast(array, &DataType::Date32)
                    .ok()
                    .and_then(|a| a.as_primitive_opt::<Date32Type>().cloned())
                    .map(Cells::Date),
                _ => None,
            },
            // Casting to a naive timestamp keeps the stored values: UTC
            // instants for zoned sources, wall-clock (taken as UTC) for naive.
            Parser::Datetime(_) => match data_type {
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                    cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))
                        .ok()
                        .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>().cloned())
                        .map(Cells::Datetime)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Row `row`; text of formatted sources is written into `buf`.
    fn cell<'s>(&'s self, row: usize, buf: &'s mut String) -> Cell<'s> {
        match self {
            Cells::Literal(text) => Cell::Text(text),
            Cells::Broken(_) => Cell::Null,
            Cells::Utf8(a) => text_cell(a.is_null(row), || a.value(row)),
            Cells::LargeUtf8(a) => text_cell(a.is_null(row), || a.value(row)),
            Cells::Utf8View(a) => text_cell(a.is_null(row), || a.value(row)),
            Cells::Formatted(array, formatter) => {
                if array.is_null(row) {
                    return Cell::Null;
                }
                buf.clear();
                if write!(buf, "{}", formatter.value(row)).is_err() {
                    return Cell::Unprintable;
                }
                Cell::Text(buf.as_str())
            }
            Cells::Number(a) => typed_cell(a.is_null(row), || Typed::Number(a.value(row))),
            Cells::Boolean(a) => typed_cell(a.is_null(row), || Typed::Bool(a.value(row))),
            Cells::Date(a) => typed_cell(a.is_null(row), || Typed::Date(a.value(row))),
            Cells::Datetime(a) => typed_cell(a.is_null(row), || Typed::Datetime(a.value(row))),
        }
    }

    /// The one outcome of every row, for sources that do not vary by row.
    fn uniform(&self) -> Option<Result<&'a str, Fault>> {
        match self {
            Cells::Literal(text) => Some(Ok(*text)),
            Cells::Broken(fault) => Some(Err(fault.clone())),
            _ => None,
        }
    }
}

fn text_cell<'s>(null: bool, value: impl FnOnce() -> &'s str) -> Cell<'s> {
    if null { Cell::Null } else { Cell::Text(value()) }
}

fn typed_cell<'s>(null: bool, value: impl FnOnce() -> Typed) -> Cell<'s> {
    if null { Cell::Null } else { Cell::Typed(value()) }
}

// ---------------------------------------------------------------------------
// Conversion loops.

/// Parses one cell's text as a single value.
fn parse_scalar<'t, E: Element>(el: &E, text: &'t str) -> Result<E::Value<'t>, Fault> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Fault::Missing);
    }
    el.parse(text).map_err(|message| Fault::Invalid {
        value: Some(text.to_owned()),
        message,
    })
}

/// Parses one cell's text as a list: split, trimmed, empty elements dropped;
/// one bad element makes the whole value invalid.
fn parse_list<'t, E: Element>(el: &E, delimiter: &str, text: &'t str) -> Result<Vec<E::Value<'t>>, Fault> {
    let text = text.trim();
    let mut values = Vec::new();
    for part in text.split(delimiter) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match el.parse(part) {
            Ok(value) => values.push(value),
            Err(message) => {
                return Err(Fault::Invalid {
                    value: Some(text.to_owned()),
                    message,
                });
            }
        }
    }
    if values.is_empty() {
        Err(Fault::Missing)
    } else {
        Ok(values)
    }
}

fn parse_typed<'a, E: Element>(el: &E, value: Typed) -> Result<E::Value<'a>, Fault> {
    el.typed(value).map_err(|message| Fault::Invalid {
        value: Some(value.to_string()),
        message,
    })
}

fn unprintable() -> Fault {
    Fault::Invalid {
        value: None,
        message: "the value cannot be read as text".into(),
    }
}

/// Builds one variable's column for a batch of `rows` rows.
fn convert_column<E: Element>(
    el: &E,
    var: &Variable,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> ArrayRef {
    match &var.array_delimiter {
        None => convert_scalars(el, var, cells, rows, issues),
        Some(delimiter) => convert_lists(el, var, delimiter, cells, rows, issues),
    }
}

fn convert_scalars<E: Element>(
    el: &E,
    var: &Variable,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> ArrayRef {
    let mut builder = el.builder(rows);
    if let Some(uniform) = cells.uniform() {
        // Parsed once, however many rows there are.
        let outcome = uniform.and_then(|text| parse_scalar(el, text));
        for row in 0..rows {
            push_scalar::<E>(&mut builder, var, row, &outcome, issues);
        }
        return builder.finish();
    }
    let mut buf = String::new();
    for row in 0..rows {
        let outcome = match cells.cell(row, &mut buf) {
            Cell::Null => Err(Fault::Missing),
            Cell::Text(text) => parse_scalar(el, text),
            Cell::Typed(value) => parse_typed(el, value),
            Cell::Unprintable => Err(unprintable()),
        };
        push_scalar::<E>(&mut builder, var, row, &outcome, issues);
    }
    builder.finish()
}

fn push_scalar<E: Element>(
    builder: &mut E::Builder,
    var: &Variable,
    row: usize,
    outcome: &Result<E::Value<'_>, Fault>,
    issues: &mut Vec<(usize, VariableIssue)>,
) {
    match outcome {
        Ok(value) => E::append(builder, value),
        Err(fault) => {
            E::append_null(builder);
            var.record(row, fault, issues);
        }
    }
}

fn convert_lists<E: Element>(
    el: &E,
    var: &Variable,
    delimiter: &str,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> ArrayRef {
    let mut builder = ListBuilder::with_capacity(el.builder(rows), rows);
    if let Some(uniform) = cells.uniform() {
        let outcome = uniform.and_then(|text| parse_list(el, delimiter, text));
        for row in 0..rows {
            push_list::<E>(&mut builder, var, row, &outcome, issues);
        }
        return Arc::new(builder.finish());
    }
    let mut buf = String::new();
    for row in 0..rows {
        let outcome = match cells.cell(row, &mut buf) {
            Cell::Null => Err(Fault::Missing),
            Cell::Text(text) => parse_list(el, delimiter, text),
            Cell::Typed(value) => parse_typed(el, value).map(|v| vec![v]),
            Cell::Unprintable => Err(unprintable()),
        };
        push_list::<E>(&mut builder, var, row, &outcome, issues);
    }
    Arc::new(builder.finish())
}

fn push_list<E: Element>(
    builder: &mut ListBuilder<E::Builder>,
    var: &Variable,
    row: usize,
    outcome: &Result<Vec<E::Value<'_>>, Fault>,
    issues: &mut Vec<(usize, VariableIssue)>,
) {
    match outcome {
        Ok(values) => {
            for value in values {
                E::append(builder.values(), value);
            }
            builder.append(true);
        }
        Err(fault) => {
            builder.append_null();
            var.record(row, fault, issues);
        }
    }
}

/// A `string` variable read from a `Utf8` column whose values are all
/// trimmed and non-empty is that column: no copy.
fn reuse_clean_strings(
    var: &Variable,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> Option<ArrayRef> {
    let (Parser::Text(TextElement { kind: TextKind::Plain }), None, Cells::Utf8(strings)) =
        (&var.parser, &var.array_delimiter, cells)
    else {
        return None;
    };
    let clean = strings
        .iter()
        .all(|value| value.is_none_or(|s| !s.is_empty() && s.trim().len() == s.len()));
    if !clean {
        return None;
    }
    if var.required {
        for row in (0..rows).filter(|&row| strings.is_null(row)) {
            var.record(row, &Fault::Missing, issues);
        }
    }
    Some(Arc::new(StringArray::clone(strings)))
}

/// A value quoted for a message, shortened when long.
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("`{text}`"),
        Some((end, _)) => format!("`{}…`", text.get(..end).unwrap_or(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray, TimestampSecondArray};

    const SCOPE: &str = "contacts";

    fn s(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    fn def(name: &str, kind: VariableType) -> VariableDef {
        VariableDef {
            name: name.into(),
            scope: SCOPE.into(),
            column: s("c"),
            value: None,
            kind,
            required: false,
            input_format: "auto".into(),
            is_array: false,
            array_delimiter: ",".into(),
            default_region: None,
        }
    }

    fn with_format(kind: VariableType, input_format: &str) -> VariableDef {
        VariableDef {
            input_format: input_format.into(),
            ..def("v", kind)
        }
    }

    fn batch_of(array: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([("c", array)]).expect("batch")
    }

    fn texts(values: &[&str]) -> RecordBatch {
        batch_of(Arc::new(StringArray::from(values.to_vec())))
    }

    fn compile(defs: &[(usize, &VariableDef)], batch: &RecordBatch) -> Result<ScopeVariables, Vec<Problem>> {
        ScopeVariables::compile(SCOPE, defs, batch.schema_ref(), &BTreeMap::new())
    }

    fn convert_with(def: &VariableDef, batch: &RecordBatch, parameters: &BTreeMap<String, ParamValue>) -> Converted {
        ScopeVariables::compile(SCOPE, &[(0, def)], batch.schema_ref(), parameters)
            .expect("compiles")
            .convert(batch)
    }

    fn convert(def: &VariableDef, batch: &RecordBatch) -> Converted {
        convert_with(def, batch, &BTreeMap::new())
    }

    fn run(def: &VariableDef, values: &[&str]) -> Converted {
        convert(def, &texts(values))
    }

    fn strings(c: &Converted) -> Vec<Option<String>> {
        c.values
            .column(0)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    }

    fn numbers(c: &Converted) -> Vec<Option<f64>> {
        c.values.column(0).as_primitive::<Float64Type>().iter().collect()
    }

    fn bools(c: &Converted) -> Vec<Option<bool>> {
        c.values.column(0).as_boolean().iter().collect()
    }

    fn dates(c: &Converted) -> Vec<Option<i32>> {
        c.values.column(0).as_primitive::<Date32Type>().iter().collect()
    }

    fn micros(c: &Converted) -> Vec<Option<i64>> {
        c.values
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect()
    }

    fn messages(c: &Converted) -> Vec<(usize, String)> {
        c.issues
            .iter()
            .map(|(row, issue)| (*row, issue.message.clone()))
            .collect()
    }

    fn day(y: i32, m: u32, d: u32) -> i32 {
        days_from_date(NaiveDate::from_ymd_opt(y, m, d).expect("date"))
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|date| date.and_hms_opt(h, mi, s))
            .expect("date-time")
            .and_utc()
            .timestamp_micros()
    }

    #[test]
    fn strings_are_trimmed_and_blank_is_missing() {
        let c = run(&def("name", VariableType::String), &[" Ada ", "", "   ", "Grace"]);
        assert_eq!(strings(&c), vec![s("Ada"), None, None, s("Grace")]);
        assert_eq!(c.valid, vec![true; 4]);
        assert!(c.issues.is_empty());
    }

    #[test]
    fn clean_string_column_is_reused_without_copy() {
        let source = StringArray::from(vec![Some("a"), None, Some("b c")]);
        let data = source.values().as_ptr();
        let required = VariableDef {
            required: true,
            ..def("name", VariableType::String)
        };
        let c = convert(&required, &batch_of(Arc::new(source)));
        assert_eq!(strings(&c), vec![s("a"), None, s("b c")]);
        assert_eq!(c.values.column(0).as_string::<i32>().values().as_ptr(), data);
        assert_eq!(c.valid, vec![true, false, true]);
        assert_eq!(messages(&c), vec![(1, "required value is missing".to_owned())]);
        assert_eq!(c.issues[0].1.value, None);
    }

    #[test]
    fn required_missing_values_make_rows_invalid() {
        let required = VariableDef {
            required: true,
            ..def("name", VariableType::String)
        };
        let batch = batch_of(Arc::new(StringArray::from(vec![Some("x"), Some("  "), None])));
        let c = convert(&required, &batch);
        assert_eq!(c.valid, vec![true, false, false]);
        assert_eq!(
            c.issues,
            vec![
                (
                    1,
                    VariableIssue {
                        variable: "name".into(),
                        value: None,
                        message: "required value is missing".into()
                    }
                ),
                (
                    2,
                    VariableIssue {
                        variable: "name".into(),
                        value: None,
                        message: "required value is missing".into()
                    }
                ),
            ]
        );
        assert_eq!(c.issues[0].1.to_string(), "required value is missing (variable `name`)");
    }

    #[test]
    fn optional_missing_values_are_null_and_valid() {
        let batch = batch_of(Arc::new(StringArray::from(vec![None, Some(" ")])));
        let c = convert(&def("n", VariableType::Number), &batch);
        assert_eq!(numbers(&c), vec![None, None]);
        assert_eq!(c.valid, vec![true, true]);
    }

    #[test]
    fn numbers_parse_and_refuse_non_numbers() {
        let c = run(
            &def("n", VariableType::Number),
            &[
                "12",
                "-3.5",
                "1e3",
                " 1,234.5 ",
                "12,345,678",
                "-1,000",
                "1,23",
                "1,5",
                "abc",
                "NaN",
                "inf",
            ],
        );
        assert_eq!(
            numbers(&c),
            vec![
                Some(12.0),
                Some(-3.5),
                Some(1000.0),
                Some(1234.5),
                Some(12_345_678.0),
                Some(-1000.0),
                None,
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(
            messages(&c),
            vec![
                (6, "`1,23` is not a number".to_owned()),
                (7, "`1,5` is not a number".to_owned()),
                (8, "`abc` is not a number".to_owned()),
                (9, "`NaN` is not a number".to_owned()),
                (10, "`inf` is not a number".to_owned()),
            ]
        );
        assert_eq!(c.issues[2].1.value.as_deref(), Some("abc"));
        assert_eq!(c.valid.iter().filter(|v| **v).count(), 6);
    }

    #[test]
    fn booleans_auto_accepts_every_pair() {
        let c = run(
            &def("b", VariableType::Boolean),
            &[
                "TRUE", "false", "Yes", "no", "On", "OFF", "1", "0", "t", "F", "y", "N", "maybe",
            ],
        );
        assert_eq!(
            bools(&c),
            vec![
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                None
            ]
        );
        assert_eq!(
            messages(&c),
            vec![(
                12,
                "`maybe` is not a boolean (expected true/false, yes/no, on/off, 1/0, t/f or y/n)".to_owned()
            )]
        );
    }

    #[test]
    fn each_boolean_format_accepts_only_its_pair() {
        let cases: [(&str, [&str; 2], &str, &str); 5] = [
            ("yes_no", ["Yes", "n"], "true", "yes/no or y/n"),
            ("true_false", ["TRUE", "false"], "yes", "true/false"),
            ("on_off", ["on", "Off"], "1", "on/off"),
            ("one_zero", ["1", "0"], "t", "1/0"),
            ("t_f", ["T", "f"], "true", "t/f"),
        ];
        for (format, [yes, no], other, expected) in cases {
            let c = run(&with_format(VariableType::Boolean, format), &[yes, no, other]);
            assert_eq!(bools(&c), vec![Some(true), Some(false), None], "format {format}");
            assert_eq!(
                messages(&c),
                vec![(2, format!("`{other}` is not a boolean (expected {expected})"))],
                "format {format}"
            );
        }
    }

    #[test]
    fn unknown_boolean_format_is_a_problem() {
        let batch = texts(&["yes"]);
        let bad = with_format(VariableType::Boolean, "si_no");
        let problems = compile(&[(2, &bad)], &batch).expect_err("refused");
        assert_eq!(problems[0].path, "variables[2].input_format");
    }

    #[test]
    fn dates_auto() {
        let c = run(
            &def("d", VariableType::Date),
            &[
                "2024-03-01",
                "2024/03/01",
                "01.03.2024",
                "2024-03-01T23:30:00+05:00",
                "2024-03-01 08:00",
                "03/01/2024",
                "2024-02-30",
                "yesterday",
                "2024-03-01Tnoon",
            ],
        );
        assert_eq!(day(2024, 3, 1), 19_783);
        let march_first = Some(19_783);
        assert_eq!(
            dates(&c),
            vec![
                march_first,
                march_first,
                march_first,
                march_first,
                march_first,
                None,
                None,
                None,
                None
            ]
        );
        let m = messages(&c);
        assert_eq!(m[0].0, 5);
        assert!(
            m[0].1.contains("ambiguous") && m[0].1.contains("\"%d/%m/%Y\""),
            "{}",
            m[0].1
        );
        assert_eq!(m[1], (6, "`2024-02-30` is not a valid date".to_owned()));
        assert_eq!(m[2].0, 7);
        assert!(m[2].1.starts_with("`yesterday` is not a date"), "{}", m[2].1);
        assert_eq!(m[3].0, 8);
    }

    #[test]
    fn dates_with_a_strftime_pattern() {
        let c = run(
            &with_format(VariableType::Date, "%d/%m/%Y"),
            &["03/04/2024", "2024-04-03"],
        );
        assert_eq!(dates(&c), vec![Some(day(2024, 4, 3)), None]);
        assert_eq!(
            messages(&c),
            vec![(1, "`2024-04-03` does not match input_format `%d/%m/%Y`".to_owned())]
        );

        let with_time = run(
            &with_format(VariableType::Date, "%d/%m/%Y %H:%M"),
            &["03/04/2024 23:59"],
        );
        assert_eq!(dates(&with_time), vec![Some(day(2024, 4, 3))]);
    }

    #[test]
    fn dates_from_unix_epoch() {
        let c = run(
            &with_format(VariableType::Date, "unix_epoch"),
            &["0", "86400", "1709251200", "-1", "1709251200.9", "soon"],
        );
        assert_eq!(
            dates(&c),
            vec![Some(0), Some(1), Some(19_783), Some(-1), Some(19_783), None]
        );
        assert_eq!(
            messages(&c),
            vec![(
                5,
                "`soon` is not a Unix timestamp (seconds since 1970-01-01 UTC)".to_owned()
            )]
        );
    }

    #[test]
    fn dates_from_excel_serials_with_the_1900_leap_bug() {
        let c = run(
            &with_format(VariableType::Date, "excel_epoch"),
            &["1", "59", "60", "61", "45352", "45352.75", "0", "x"],
        );
        assert_eq!(
            dates(&c),
            vec![
                Some(day(1900, 1, 1)),
                Some(day(1900, 2, 28)),
                None,
                Some(day(1900, 3, 1)),
                Some(day(2024, 3, 1)),
                Some(day(2024, 3, 1)),
                None,
                None
            ]
        );
        let m = messages(&c);
        assert_eq!(
            m[0],
            (2, "`60` is Excel's 1900-02-29, a day that does not exist".to_owned())
        );
        assert_eq!(m[1].0, 6);
        assert_eq!(m[2].0, 7);
    }

    #[test]
    fn datetimes_auto_convert_offsets_to_utc() {
        let c = run(
            &def("t", VariableType::Datetime),
            &[
                "2024-03-01T12:30:00Z",
                "2024-03-01 12:30:00+02:00",
                "2024-03-01T12:30:00.123456-01:00",
                "2024-03-01T12:30",
                "2024-03-01",
                "2024-03-01T12:30:00+0530",
                "2024-03-01T25:00",
                "noon",
            ],
        );
        assert_eq!(
            micros(&c),
            vec![
                Some(at(2024, 3, 1, 12, 30, 0)),
                Some(at(2024, 3, 1, 10, 30, 0)),
                Some(at(2024, 3, 1, 13, 30, 0) + 123_456),
                Some(at(2024, 3, 1, 12, 30, 0)),
                Some(at(2024, 3, 1, 0, 0, 0)),
                Some(at(2024, 3, 1, 7, 0, 0)),
                None,
                None
            ]
        );
        let m = messages(&c);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, 6);
        assert!(m[1].1.starts_with("`noon` is not a date-time"), "{}", m[1].1);
    }

    #[test]
    fn datetimes_from_epochs_and_patterns() {
        let unix = run(&with_format(VariableType::Datetime, "unix_epoch"), &["1709251200.5"]);
        assert_eq!(micros(&unix), vec![Some(1_709_251_200_500_000)]);

        let excel = run(
            &with_format(VariableType::Datetime, "excel_epoch"),
            &["45352.5", "61.25"],
        );
        assert_eq!(
            micros(&excel),
            vec![Some(at(2024, 3, 1, 12, 0, 0)), Some(at(1900, 3, 1, 6, 0, 0))]
        );

        let zoned = run(
            &with_format(VariableType::Datetime, "%d/%m/%Y %H:%M %z"),
            &["01/03/2024 12:30 +0200"],
        );
        assert_eq!(micros(&zoned), vec![Some(at(2024, 3, 1, 10, 30, 0))]);

        let naive = run(
            &with_format(VariableType::Datetime, "%d/%m/%Y %H:%M"),
            &["01/03/2024 12:30", "1/3/24"],
        );
        assert_eq!(micros(&naive), vec![Some(at(2024, 3, 1, 12, 30, 0)), None]);
        assert_eq!(
            messages(&naive),
            vec![(1, "`1/3/24` does not match input_format `%d/%m/%Y %H:%M`".to_owned())]
        );

        let date_only = run(&with_format(VariableType::Datetime, "%d/%m/%Y"), &["01/03/2024"]);
        assert_eq!(micros(&date_only), vec![Some(at(2024, 3, 1, 0, 0, 0))]);
    }

    #[test]
    fn emails_are_validated_and_lower_cased() {
        let c = run(
            &def("email", VariableType::Email),
            &[
                " John.Doe@Example.COM ",
                "ada@example.org",
                "not-an-email",
                "a@localhost",
                "John <j@x.com>",
            ],
        );
        assert_eq!(
            strings(&c),
            vec![s("john.doe@example.com"), s("ada@example.org"), None, None, None]
        );
        assert_eq!(
            c.issues[0].1.to_string(),
            "`not-an-email` is not a valid e-mail address (variable `email`)"
        );
        assert_eq!(c.issues[0].1.value.as_deref(), Some("not-an-email"));
        assert_eq!(c.valid, vec![true, true, false, false, false]);
    }

    #[test]
    fn phones_are_normalised_to_e164() {
        let us = VariableDef {
            default_region: s("US"),
            ..def("phone", VariableType::PhoneNumber)
        };
        let c = run(&us, &["(650) 253-0000", "+44 7912 345678", "+44 791234567", "hello"]);
        assert_eq!(strings(&c), vec![s("+16502530000"), s("+447912345678"), None, None]);
        assert_eq!(
            messages(&c),
            vec![
                (2, "`+44 791234567` is not a valid phone number".to_owned()),
                (3, "`hello` is not a valid phone number".to_owned()),
            ]
        );
    }

    #[test]
    fn phones_use_the_default_country_parameter() {
        let parameters = BTreeMap::from([("default_country".to_owned(), ParamValue::Text("GB".into()))]);
        let c = convert_with(
            &def("phone", VariableType::PhoneNumber),
            &texts(&["07912 345678"]),
            &parameters,
        );
        assert_eq!(strings(&c), vec![s("+447912345678")]);
    }

    #[test]
    fn phones_without_a_region_need_a_country_code() {
        let c = run(
            &def("phone", VariableType::PhoneNumber),
            &["+1 650 253 0000", "650 253 0000"],
        );
        assert_eq!(strings(&c), vec![s("+16502530000"), None]);
        assert_eq!(
            messages(&c),
            vec![(
                1,
                "`650 253 0000` is not a valid phone number \
                 (no default region: write it with +country code or set default_region)"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn bad_regions_are_problems() {
        let batch = texts(&["1"]);
        let bad_region = VariableDef {
            default_region: s("XX"),
            ..def("phone", VariableType::PhoneNumber)
        };
        let problems = compile(&[(5, &bad_region)], &batch).expect_err("refused");
        assert_eq!(problems[0].path, "variables[5].default_region");

        let parameters = BTreeMap::from([("default_country".to_owned(), ParamValue::Text("ZZ".into()))]);
        let plain = def("phone", VariableType::PhoneNumber);
        let problems =
            ScopeVariables::compile(SCOPE, &[(1, &plain)], batch.schema_ref(), &parameters).expect_err("refused");
        assert_eq!(problems[0].path, "variables[1].default_region");
        assert!(problems[0].message.contains("ZZ"), "{}", problems[0].message);
    }

    #[test]
    fn uuids_are_normalised() {
        let c = run(
            &def("id", VariableType::Uuid),
            &[
                "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
                "urn:uuid:A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                "A0EEBC999C0B4EF8BB6D6BB9BD380A11",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "not-a-uuid",
            ],
        );
        let id = Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_owned());
        assert_eq!(strings(&c), vec![id.clone(), id.clone(), id.clone(), id, None]);
        assert_eq!(messages(&c), vec![(4, "`not-a-uuid` is not a UUID".to_owned())]);
    }

    #[test]
    fn json_documents_are_kept_whole_and_broken_ones_refused_with_where() {
        let c = run(
            &def("payload", VariableType::Json),
            &["{\"a\": [1, 2]}", "[]", "\"text\"", "{\"a\": 1,}", "{oops"],
        );
        assert_eq!(
            strings(&c),
            vec![
                Some("{\"a\": [1, 2]}".to_owned()),
                Some("[]".to_owned()),
                Some("\"text\"".to_owned()),
                None,
                None
            ]
        );
        assert_eq!(
            messages(&c),
            vec![
                (
                    3,
                    "`{\"a\": 1,}` is not valid JSON (key must be a string at line 1, column 9)".to_owned()
                ),
                (
                    4,
                    "`{oops` is not valid JSON (key must be a string at line 1, column 2)".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn arrays_split_trim_and_fail_on_one_bad_element() {
        let numbers_def = VariableDef {
            is_array: true,
            array_delimiter: ";".into(),
            ..def("n", VariableType::Number)
        };
        let c = run(&numbers_def, &["1; 2;;3", "1;x", "", " ; "]);
        assert_eq!(
            c.values.schema().field(0).data_type(),
            &DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
        );
        let list = c.values.column(0).as_list::<i32>();
        assert!(list.is_valid(0));
        assert_eq!(
            list.value(0).as_primitive::<Float64Type>().values().to_vec(),
            vec![1.0, 2.0, 3.0]
        );
        assert!(list.is_null(1) && list.is_null(2) && list.is_null(3));
        assert_eq!(c.valid, vec![true, false, true, true]);
        assert_eq!(c.issues.len(), 1);
        assert_eq!(c.issues[0].0, 1);
        assert_eq!(c.issues[0].1.value.as_deref(), Some("1;x"));
        assert_eq!(c.issues[0].1.message, "`x` is not a number");
    }

    #[test]
    fn email_arrays_are_normalised_per_element() {
        let emails = VariableDef {
            is_array: true,
            ..def("emails", VariableType::Email)
        };
        let c = run(&emails, &["A@X.com, b@y.org"]);
        let list = c.values.column(0).as_list::<i32>();
        let first = list.value(0);
        let values: Vec<Option<&str>> = first.as_string::<i32>().iter().collect();
        assert_eq!(values, vec![Some("a@x.com"), Some("b@y.org")]);
    }

    #[test]
    fn literal_values_apply_to_every_row() {
        let batch = texts(&["a", "b", "c"]);
        let flag = VariableDef {
            column: None,
            value: s("yes"),
            ..def("flag", VariableType::Boolean)
        };
        let c = convert(&flag, &batch);
        assert_eq!(bools(&c), vec![Some(true); 3]);
        assert!(c.issues.is_empty());

        let tags = VariableDef {
            column: None,
            value: s(" x, y "),
            is_array: true,
            ..def("tags", VariableType::String)
        };
        let c = convert(&tags, &batch);
        let list = c.values.column(0).as_list::<i32>();
        assert_eq!(list.len(), 3);
        let last = list.value(2);
        let values: Vec<Option<&str>> = last.as_string::<i32>().iter().collect();
        assert_eq!(values, vec![Some("x"), Some("y")]);
    }

    #[test]
    fn bad_literals_are_compile_problems() {
        let batch = texts(&["a"]);
        let bad = VariableDef {
            column: None,
            value: s("abc"),
            ..def("n", VariableType::Number)
        };
        let empty_required = VariableDef {
            column: None,
            value: s("  "),
            required: true,
            ..def("s", VariableType::String)
        };
        let problems = compile(&[(4, &bad), (6, &empty_required)], &batch).expect_err("refused");
        assert_eq!(
            problems,
            vec![
                Problem::new("variables[4].value", "`abc` is not a number"),
                Problem::new("variables[6].value", "the value is empty but the variable is required"),
            ]
        );
    }

    #[test]
    fn typed_number_sources() {
        let ints = batch_of(Arc::new(Int64Array::from(vec![Some(12), None, Some(-3)])));
        let c = convert(&def("n", VariableType::Number), &ints);
        assert_eq!(numbers(&c), vec![Some(12.0), None, Some(-3.0)]);

        let floats = batch_of(Arc::new(Float64Array::from(vec![1.5, f64::NAN])));
        let c = convert(&def("n", VariableType::Number), &floats);
        assert_eq!(numbers(&c), vec![Some(1.5), None]);
        assert_eq!(messages(&c), vec![(1, "`NaN` is not a number".to_owned())]);

        // A string variable reads a number column as its text.
        let c = convert(&def("s", VariableType::String), &ints);
        assert_eq!(strings(&c), vec![s("12"), None, s("-3")]);
    }

    #[test]
    fn typed_boolean_and_date_sources() {
        let flags = batch_of(Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])));
        let c = convert(&def("b", VariableType::Boolean), &flags);
        assert_eq!(bools(&c), vec![Some(true), None, Some(false)]);

        let days = batch_of(Arc::new(Date32Array::from(vec![Some(19_783), None])));
        let c = convert(&def("d", VariableType::Date), &days);
        assert_eq!(dates(&c), vec![Some(19_783), None]);

        let c = convert(&def("t", VariableType::Datetime), &days);
        assert_eq!(micros(&c), vec![Some(at(2024, 3, 1, 0, 0, 0)), None]);
    }

    #[test]
    fn typed_timestamp_sources() {
        // 2024-03-01T23:00:00Z, stored in a +02:00 column.
        let zoned = TimestampMillisecondArray::from(vec![Some(1_709_334_000_000), None]).with_timezone("+02:00");
        let batch = batch_of(Arc::new(zoned));
        let c = convert(&def("t", VariableType::Datetime), &batch);
        assert_eq!(micros(&c), vec![Some(at(2024, 3, 1, 23, 0, 0)), None]);
        assert_eq!(
            c.values.schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        // The date part is the date in the column's zone.
        let c = convert(&def("d", VariableType::Date), &batch);
        assert_eq!(dates(&c), vec![Some(day(2024, 3, 2)), None]);

        let naive = batch_of(Arc::new(TimestampSecondArray::from(vec![1_709_251_200])));
        let c = convert(&def("t", VariableType::Datetime), &naive);
        assert_eq!(micros(&c), vec![Some(at(2024, 3, 1, 0, 0, 0))]);
    }

    #[test]
    fn missing_column_is_a_problem_with_its_path() {
        let batch = texts(&["a"]);
        let missing = VariableDef {
            column: s("nope"),
            ..def("x", VariableType::String)
        };
        let problems = compile(&[(3, &missing)], &batch).expect_err("refused");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "variables[3].column");
        assert_eq!(problems[0].message, "scope `contacts` has no column `nope` (it has: c)");
    }

    #[test]
    fn a_column_gone_at_run_time_makes_rows_invalid() {
        let vars = compile(&[(0, &def("x", VariableType::String))], &texts(&["a"])).expect("compiles");
        let other = RecordBatch::try_from_iter([("d", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef)])
            .expect("batch");
        let c = vars.convert(&other);
        assert_eq!(c.valid, vec![false, false]);
        assert_eq!(c.issues[0].1.message, "the scope has no column `c`");
    }

    #[test]
    fn issues_are_in_row_then_declaration_order() {
        let batch = RecordBatch::try_from_iter([
            (
                "name",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("b")])) as ArrayRef,
            ),
            ("n", Arc::new(StringArray::from(vec!["1", "x", "oops"])) as ArrayRef),
        ])
        .expect("batch");
        let name = VariableDef {
            column: s("name"),
            required: true,
            ..def("name", VariableType::String)
        };
        let n = VariableDef {
            column: s("n"),
            ..def("n", VariableType::Number)
        };
        let vars = compile(&[(0, &name), (1, &n)], &batch).expect("compiles");
        let c = vars.convert(&batch);
        assert_eq!(c.values.num_columns(), 2);
        assert_eq!(c.valid, vec![true, false, false]);
        let order: Vec<(usize, &str)> = c.issues.iter().map(|(row, i)| (*row, i.variable.as_str())).collect();
        assert_eq!(order, vec![(1, "name"), (1, "n"), (2, "n")]);
    }

    #[test]
    fn schema_has_one_nullable_field_per_variable() {
        let batch = texts(&["a"]);
        let kinds = [
            (VariableType::String, DataType::Utf8),
            (VariableType::Number, DataType::Float64),
            (VariableType::Boolean, DataType::Boolean),
            (VariableType::Date, DataType::Date32),
            (
                VariableType::Datetime,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            (VariableType::Email, DataType::Utf8),
            (VariableType::PhoneNumber, DataType::Utf8),
            (VariableType::Uuid, DataType::Utf8),
            (VariableType::Json, DataType::Utf8),
        ];
        let defs: Vec<VariableDef> = kinds
            .iter()
            .enumerate()
            .map(|(i, (kind, _))| def(&format!("v{i}"), *kind))
            .collect();
        let indexed: Vec<(usize, &VariableDef)> = defs.iter().enumerate().collect();
        let schema = compile(&indexed, &batch).expect("compiles").schema();
        for (i, (_, data_type)) in kinds.iter().enumerate() {
            let field = schema.field(i);
            assert_eq!(field.name(), &format!("v{i}"));
            assert_eq!(field.data_type(), data_type);
            assert!(field.is_nullable());
        }
    }

    #[test]
    fn no_variables_still_keep_the_row_count() {
        let vars = compile(&[], &texts(&["a", "b"])).expect("compiles");
        let c = vars.convert(&texts(&["a", "b"]));
        assert_eq!(c.values.num_rows(), 2);
        assert_eq!(c.valid, vec![true, true]);
    }

    #[test]
    fn text_views_and_large_strings_are_read_too() {
        let view = StringViewArray::from(vec![Some(" Ada@Example.org "), None]);
        let c = convert(&def("email", VariableType::Email), &batch_of(Arc::new(view)));
        assert_eq!(strings(&c), vec![s("ada@example.org"), None]);

        let large = LargeStringArray::from(vec!["12.5"]);
        let c = convert(&def("n", VariableType::Number), &batch_of(Arc::new(large)));
        assert_eq!(numbers(&c), vec![Some(12.5)]);
    }

    #[test]
    fn compiled_variables_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ScopeVariables>();
        assert_send_sync::<Converted>();
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "x".repeat(200);
        let c = run(&def("n", VariableType::Number), &[long.as_str()]);
        assert_eq!(c.issues[0].1.value.as_deref(), Some(long.as_str()));
        assert_eq!(c.issues[0].1.message, format!("`{}…` is not a number", "x".repeat(80)));
    }
}

#[cfg(test)]
mod phone_country_code {
    use super::parse_phone;

    #[test]
    fn a_plus_number_keeps_its_country_whatever_the_default_region() {
        let us = "US".parse::<phonenumber::country::Id>().ok();
        assert_eq!(parse_phone("+33 1 42 68 53 00", us).as_deref(), Some("+33142685300"));
        assert_eq!(parse_phone("+1 202 555 0143", us).as_deref(), Some("+12025550143"));
        assert_eq!(parse_phone("(202) 555-0143", us).as_deref(), Some("+12025550143"));
    }
}
