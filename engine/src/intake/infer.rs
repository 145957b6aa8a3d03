//! Column type inference over text values, and the builder that turns text
//! rows into typed Arrow batches.
//!
//! Inference never loses information (SPEC §3.2): a column becomes a number,
//! boolean, date or timestamp only when every sampled value survives the
//! round trip; leading zeros, over-long digit strings and mixed values keep it
//! text. A later value that does not parse as the column's type makes its row
//! invalid (with the value and the expected type) instead of being coerced.

use std::sync::Arc;

use chrono::NaiveTime;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

/// The type inferred for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// `true`/`false`.
    Bool,
    /// `YYYY-MM-DD`.
    Date,
    /// ISO timestamp without offset.
    Timestamp,
    /// ISO timestamp with `Z` or an offset (stored as UTC).
    TimestampTz,
    /// Anything else.
    Text,
}

impl ColumnType {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Text => DataType::Utf8,
        }
    }

    /// The name used in messages.
    pub fn describe(self) -> &'static str {
        match self {
            ColumnType::Int => "an integer",
            ColumnType::Float => "a number",
            ColumnType::Bool => "true or false",
            ColumnType::Date => "a date (YYYY-MM-DD)",
            ColumnType::Timestamp | ColumnType::TimestampTz => "a timestamp (ISO 8601)",
            ColumnType::Text => "text",
        }
    }
}

/// The narrowest type for one value, or `None` for text.
fn classify(v: &str) -> ColumnType {
    if parse_int(v).is_some() {
        ColumnType::Int
    } else if parse_float(v).is_some() {
        ColumnType::Float
    } else if parse_bool(v).is_some() {
        ColumnType::Bool
    } else if parse_date(v).is_some() {
        ColumnType::Date
    } else if parse_timestamp(v).is_some() {
        ColumnType::Timestamp
    } else if parse_timestamp_tz(v).is_some() {
        ColumnType::TimestampTz
    } else {
        ColumnType::Text
    }
}

/// Combines the types of two values of one column.
fn unify(a: ColumnType, b: ColumnType) -> ColumnType {
    use ColumnType::*;
    match (a, b) {
        (x, y) if x == y => x,
        (Int, Float) | (Float, Int) => Float,
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        _ => Text,
    }
}

/// Infers one column's type from its sampled values (nulls ignored). A
/// column with no values is text.
pub fn infer_column<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ColumnType {
    let mut current: Option<ColumnType> = None;
    for v in values.into_iter().flatten().filter(|v| !v.is_empty()) {
        let t = classify(v);
        current = Some(match current {
            None => t,
            Some(c) => unify(c, t),
        });
        if current == Some(ColumnType::Text) {
            break;
        }
    }
    current.unwrap_or(ColumnType::Text)
}

/// An integer that prints back exactly as written: no sign but `-`, no
/// leading zeros, at most 18 digits.
fn parse_int(v: &str) -> Option<i64> {
    let (negative, digits) = match v.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') || (negative && digits == b"0")
    {
        return None;
    }
    // At most 18 digits: the sum cannot overflow.
    let mut n = 0i64;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + i64::from(d);
    }
    Some(if negative { -n } else { n })
}

/// A decimal number: optional `-`, digits with no leading zero (but `0.x`),
/// a fraction and/or exponent, at most 15 significant digits so that the
/// float keeps every digit.
fn parse_float(v: &str) -> Option<f64> {
    let body = v.strip_prefix('-').unwrap_or(v);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
        None => (mantissa, None),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || (int.len() > 1 && int.starts_with('0'))
        || frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    if let Some(e) = exponent {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        if e.is_empty() || e.len() > 3 || !e.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let significant = int.trim_start_matches('0').len() + frac.map_or(0, str::len);
    if significant > 15 {
        return None;
    }
    v.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// `YYYY-MM-DD`, days since the epoch.
fn parse_date(v: &str) -> Option<i32> {
    let b = v.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    crate::calendar::days_from_civil(num(&b[0..4])? as i32, num(&b[5..7])?, num(&b[8..10])?)
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.f]]` without offset, microseconds since epoch.
fn parse_timestamp(v: &str) -> Option<i64> {
    use chrono::Timelike;
    if v.len() < 16 || !v.is_char_boundary(10) {
        return None;
    }
    let (date, rest) = v.split_at(10);
    let sep = rest.as_bytes().first()?;
    if *sep != b'T' && *sep != b' ' {
        return None;
    }
    let days = i64::from(parse_date(date)?);
    let time = parse_time(&rest[1..])?;
    // A leap second's extra second is in its nanoseconds, as chrono counts it.
    Some(
        days * 86_400_000_000
            + i64::from(time.num_seconds_from_midnight()) * 1_000_000
            + i64::from(time.nanosecond() / 1000),
    )
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.f` (up to nanoseconds). Hand-written
/// because timestamps are the most common typed column and a format-string
/// parser costs several times more per value.
fn parse_time(t: &str) -> Option<NaiveTime> {
    let b = t.as_bytes();
    let two = |i: usize| -> Option<u32> {
        let (h, l) = (*b.get(i)?, *b.get(i + 1)?);
        (h.is_ascii_digit() && l.is_ascii_digit()).then(|| u32::from(h - b'0') * 10 + u32::from(l - b'0'))
    };
    if b.len() < 5 || b[2] != b':' {
        return None;
    }
    let (hour, minute) = (two(0)?, two(3)?);
    if b.len() == 5 {
        return NaiveTime::from_hms_opt(hour, minute, 0);
    }
    if b.len() < 8 || b[5] != b':' {
        return None;
    }
    let second = two(6)?;
    let nanos = match &b[8..] {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() && digits.len() <= 9 && digits.iter().all(u8::is_ascii_digit) => {
            let value = digits.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
            value * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
}

/// RFC 3339 with `Z` or an offset, microseconds since epoch (UTC).
fn parse_timestamp_tz(v: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .or_else(|| chrono::DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%:z").ok())
        .map(|d| d.timestamp_micros())
}

/// Why a value did not fit its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellError {
    /// Column name.
    pub column: String,
    /// The value as read.
    pub value: String,
    /// The type the column has.
    pub expected: ColumnType,
}

impl std::fmt::Display for CellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` is not {} (column `{}`)",
            self.value,
            self.expected.describe(),
            self.column
        )
    }
}

enum Column {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Text(StringBuilder),
}

#[derive(Clone, Copy)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(i32),
    Micros(i64),
    Text,
}

/// The column every input table read from text or a workbook ends with:
/// the line (or sheet row) each row starts on in the file, so a person finds
/// a rejected row where they put it. A scope that carries it keeps it out
/// of its output; its rejected rows show it. No column of a file takes its
/// name (see [`crate::naming::normalise_headers`]).
pub use crate::naming::LINE_COLUMN;

/// Builds typed record batches from rows of text cells, with the
/// [`LINE_COLUMN`] after them.
pub struct RowBuilder {
    schema: SchemaRef,
    types: Vec<ColumnType>,
    columns: Vec<Column>,
    cells: Vec<Cell>,
    lines: Option<Int64Builder>,
    rows: usize,
}

impl RowBuilder {
    /// A builder for columns `names` of `types`.
    pub fn new(names: &[String], types: &[ColumnType]) -> Self {
        let mut fields: Vec<Field> = names
            .iter()
            .zip(types)
            .map(|(n, t)| Field::new(n, t.data_type(), true))
            .collect();
        let lines = (!names.iter().any(|n| n == LINE_COLUMN)).then(Int64Builder::new);
        if lines.is_some() {
            fields.push(Field::new(LINE_COLUMN, DataType::Int64, true));
        }
        let mut b = Self {
            schema: Arc::new(Schema::new(fields)),
            types: types.to_vec(),
            columns: Vec::new(),
            cells: vec![Cell::Null; types.len()],
            lines,
            rows: 0,
        };
        b.columns = b.fresh_columns();
        b
    }

    fn fresh_columns(&self) -> Vec<Column> {
        self.types
            .iter()
            .map(|t| match t {
                ColumnType::Int => Column::Int(Int64Builder::new()),
                ColumnType::Float => Column::Float(Float64Builder::new()),
                ColumnType::Bool => Column::Bool(BooleanBuilder::new()),
                ColumnType::Date => Column::Date(Date32Builder::new()),
                ColumnType::Timestamp => Column::Timestamp(TimestampMicrosecondBuilder::new(), false),
                ColumnType::TimestampTz => Column::Timestamp(TimestampMicrosecondBuilder::new(), true),
                ColumnType::Text => Column::Text(StringBuilder::new()),
            })
            .collect()
    }

    /// The schema of the batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows buffered in the current batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds a row of `count` cells, cell `i` given by `cell(i)` (`None` or
    /// `""` = null; cells past the columns are ignored, missing ones are
    /// null), which starts on `line` of the file when known. A value that
    /// does not parse as its column's type leaves the batch untouched and
    /// returns why.
    pub fn push<'a>(
        &mut self,
        line: Option<u64>,
        count: usize,
        cell: impl Fn(usize) -> Option<&'a str>,
    ) -> Result<(), CellError> {
        let text = |i: usize| {
            if i < count {
                cell(i).filter(|s| !s.is_empty())
            } else {
                None
            }
        };
        // First pass: parse every cell, so that a bad cell rejects the whole
        // row. Text cells are read again when appended.
        for (i, (t, parsed)) in self.types.iter().zip(self.cells.iter_mut()).enumerate() {
            let v = text(i);
            let value = match (v, t) {
                (None, _) => Some(Cell::Null),
                (Some(_), ColumnType::Text) => Some(Cell::Text),
                (Some(s), ColumnType::Int) => parse_int(s).map(Cell::Int),
                (Some(s), ColumnType::Float) => parse_float(s)
                    .or_else(|| s.parse::<f64>().ok().filter(|f| f.is_finite()))
                    .map(Cell::Float),
                (Some(s), ColumnType::Bool) => parse_bool(s).map(Cell::Bool),
                (Some(s), ColumnType::Date) => parse_date(s).map(Cell::Date),
                (Some(s), ColumnType::Timestamp) => parse_timestamp(s)
                    .or_else(|| parse_date(s).map(|d| i64::from(d) * 86_400_000_000))
                    .map(Cell::Micros),
                (Some(s), ColumnType::TimestampTz) => parse_timestamp_tz(s).map(Cell::Micros),
            };
            match value {
                Some(c) => *parsed = c,
                None => {
                    return Err(CellError {
                        column: self.schema.field(i).name().clone(),
                        value: v.unwrap_or_default().to_string(),
                        expected: *t,
                    });
                }
            }
        }
        // Second pass: append.
        for (i, (column, parsed)) in self.columns.iter_mut().zip(&self.cells).enumerate() {
            match (column, parsed) {
                (Column::Int(b), Cell::Int(v)) => b.append_value(*v),
                (Column::Float(b), Cell::Float(v)) => b.append_value(*v),
                (Column::Bool(b), Cell::Bool(v)) => b.append_value(*v),
                (Column::Date(b), Cell::Date(v)) => b.append_value(*v),
                (Column::Timestamp(b, _), Cell::Micros(v)) => b.append_value(*v),
                (Column::Text(b), Cell::Text) => b.append_value(text(i).unwrap_or_default()),
                (Column::Int(b), _) => b.append_null(),
                (Column::Float(b), _) => b.append_null(),
                (Column::Bool(b), _) => b.append_null(),
                (Column::Date(b), _) => b.append_null(),
                (Column::Timestamp(b, _), _) => b.append_null(),
                (Column::Text(b), _) => b.append_null(),
            }
        }
        if let Some(lines) = &mut self.lines {
            lines.append_option(line.and_then(|l| i64::try_from(l).ok()));
        }
        self.rows += 1;
        Ok(())
    }

    /// Takes the buffered rows as a batch. The next batch's builders start
    /// with room for as many rows (and as much text), so they do not grow
    /// by copying row after row.
    pub fn finish(&mut self) -> RecordBatch {
        let rows = std::mem::take(&mut self.rows);
        let mut columns: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Int(b) => Arc::new(std::mem::replace(b, Int64Builder::with_capacity(rows)).finish()),
                    Column::Float(b) => Arc::new(std::mem::replace(b, Float64Builder::with_capacity(rows)).finish()),
                    Column::Bool(b) => Arc::new(std::mem::replace(b, BooleanBuilder::with_capacity(rows)).finish()),
                    Column::Date(b) => Arc::new(std::mem::replace(b, Date32Builder::with_capacity(rows)).finish()),
                    Column::Timestamp(b, zoned) => {
                        let array = std::mem::replace(b, TimestampMicrosecondBuilder::with_capacity(rows)).finish();
                        if *zoned {
                            Arc::new(array.with_timezone("UTC"))
                        } else {
                            Arc::new(array)
                        }
                    }
                    Column::Text(b) => {
                        let array = b.finish();
                        *b = StringBuilder::with_capacity(rows, array.value_data().len());
                        Arc::new(array)
                    }
                }
            })
            .collect();
        if let Some(lines) = &mut self.lines {
            columns.push(Arc::new(
                std::mem::replace(lines, Int64Builder::with_capacity(rows)).finish(),
            ));
        }
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .unwrap_or_else(|_| RecordBatch::new_empty(self.schema.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};

    fn infer(values: &[&str]) -> ColumnType {
        infer_column(values.iter().map(|v| Some(*v)))
    }

    #[test]
    fn inference_keeps_information() {
        assert_eq!(infer(&["1", "-20", "300"]), ColumnType::Int);
        assert_eq!(infer(&["1", "2.5"]), ColumnType::Float);
        assert_eq!(infer(&["1.50", "1e3"]), ColumnType::Float);
        assert_eq!(
            infer(&["01234", "12345"]),
            ColumnType::Text,
            "zip codes keep leading zeros"
        );
        assert_eq!(infer(&["0", "1"]), ColumnType::Int);
        assert_eq!(infer(&["+4915112345678"]), ColumnType::Text, "phone numbers stay text");
        assert_eq!(
            infer(&["1234567890123456789"]),
            ColumnType::Text,
            "over-long digits stay text"
        );
        assert_eq!(
            infer(&["0.1234567890123456"]),
            ColumnType::Text,
            "too many digits for a float"
        );
        assert_eq!(infer(&["1", "x"]), ColumnType::Text, "mixed types stay text");
        assert_eq!(infer(&["true", "FALSE"]), ColumnType::Bool);
        assert_eq!(infer(&["2024-02-29", "2023-12-31"]), ColumnType::Date);
        assert_eq!(infer(&["2024-02-30"]), ColumnType::Text, "not a real date");
        assert_eq!(infer(&["2024-02-29 10:00:00", "2024-03-01"]), ColumnType::Timestamp);
        assert_eq!(
            infer(&["2024-02-29T10:00:00Z", "2024-02-29T10:00:00+02:00"]),
            ColumnType::TimestampTz
        );
        assert_eq!(
            infer(&["2024-02-29T10:00:00Z", "2024-02-29T10:00:00"]),
            ColumnType::Text
        );
        assert_eq!(infer(&["NaN"]), ColumnType::Text);
        assert_eq!(
            infer(&["2024-02-29 10:00", "2024-02-29T23:59:59.123456"]),
            ColumnType::Timestamp
        );
        assert_eq!(infer(&["2024-02-29 24:00:00"]), ColumnType::Text, "no hour 24");
        assert_eq!(infer(&["2024-02-29 10:00:00."]), ColumnType::Text);
        assert_eq!(infer_column([None, None]), ColumnType::Text);
        assert_eq!(
            infer_column([Some("1"), Some(""), None]),
            ColumnType::Int,
            "empty is null"
        );
    }

    #[test]
    fn timestamps_parse_to_microseconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(parse_timestamp("2024-01-31T12:30"), Some(1_706_704_200_000_000));
        assert_eq!(
            parse_timestamp("2024-01-31T12:30:00.000001"),
            Some(1_706_704_200_000_001)
        );
        assert_eq!(parse_timestamp("2024-01-31 12:3"), None);
        assert_eq!(parse_timestamp("2024-01-31 12:30:61"), None);
    }

    #[test]
    fn integers_parse_only_when_they_print_back_as_written() {
        for (text, value) in [
            ("0", Some(0)),
            ("-12", Some(-12)),
            ("123456789012345678", Some(123_456_789_012_345_678)),
            ("-123456789012345678", Some(-123_456_789_012_345_678)),
            ("1234567890123456789", None),
            ("-0", None),
            ("007", None),
            ("-", None),
            ("", None),
            ("+5", None),
            ("1a", None),
            ("1 ", None),
            ("\u{663}", None),
        ] {
            assert_eq!(parse_int(text), value, "{text:?}");
        }
    }

    #[test]
    fn builder_types_values_and_rejects_bad_rows_whole() {
        let names = vec!["id".to_string(), "amount".to_string(), "name".to_string()];
        let mut b = RowBuilder::new(&names, &[ColumnType::Int, ColumnType::Float, ColumnType::Text]);
        let mut push = |line, cells: &[Option<&'static str>]| b.push(line, cells.len(), |i| cells[i]);
        push(Some(2), &[Some("1"), Some("2.5"), Some("a")]).expect("good row");
        let err = push(Some(3), &[Some("x"), Some("1"), Some("b")]).expect_err("bad row");
        assert_eq!(err.to_string(), "`x` is not an integer (column `id`)");
        push(Some(4), &[Some("3"), None]).expect("short rows are padded with nulls");
        push(None, &[Some(""), Some("7"), Some("")]).expect("empty is null");
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.value(0), 1);
        assert_eq!(ids.value(1), 3);
        assert!(ids.is_null(2));
        assert_eq!(batch.column(1).as_primitive::<Float64Type>().value(2), 7.0);
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "a");
        assert!(batch.column(2).is_null(1));
        let lines = batch.column(3).as_primitive::<Int64Type>();
        assert_eq!(batch.schema().field(3).name(), LINE_COLUMN);
        assert_eq!((lines.value(0), lines.value(1), lines.is_null(2)), (2, 4, true));
        assert_eq!(b.finish().num_rows(), 0);
    }
}
