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

mod boolean;
mod columns;
mod number;
mod text;
mod time;

use boolean::*;
use columns::*;
use number::*;
use text::*;
use time::*;

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
