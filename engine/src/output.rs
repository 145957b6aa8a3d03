//! Scope output CSVs (SPEC §7, "Output CSVs").
//!
//! This module owns the on-disk text form of a scope's SQL output: a header
//! row of column names, RFC 4180 quoting, UTF-8, null as an empty field (and
//! a non-null empty string as `""`, so the two stay apart), dates and
//! timestamps in ISO 8601, numbers in their shortest exact form, nested
//! values as JSON text and binary as lower-case hex.
//!
//! It writes what it is given, in the order given, up to a row cap. It must
//! not decide which rows a scope has, run SQL, or know about variables,
//! loads or the report.
//!
//! # Why not `arrow_csv::Writer`
//!
//! The per-value formatting is Arrow's own [`ArrayFormatter`] (the same one
//! `arrow_csv` uses), but the row loop is ours, because `arrow_csv` cannot do
//! what the format asks: it prints floats with `ryu` (`100.0`, not `100`),
//! refuses nested columns, writes an empty string exactly like a null, and
//! flushes the underlying file after every batch. Writing the rows here costs
//! the same per value and lets one 1 MiB buffer go to the file in large
//! writes.

use std::fmt::{Display, LowerExp, Write as _};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::TimestampMicrosecondArray;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray, StringArray,
    StringViewArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Float32Type, Float64Type, Int32Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::json::writer::{EncoderOptions, NullableEncoder, make_encoder};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::connector::is_identifier;
use crate::error::{Error, Result};
use crate::intake::infer::LINE_COLUMN;

/// Bytes gathered before one write to the file.
const BUFFER_SIZE: usize = 1 << 20;

/// Where a scope's output CSV goes in a run directory: `output/<scope>.csv`.
///
/// The SQL policy admits only identifiers as scope names; this checks again
/// where the name becomes a path, so no name can reach outside `out_dir`.
pub fn scope_file(out_dir: &Path, scope: &str) -> Result<PathBuf> {
    if !is_identifier(scope) {
        return Err(Error::Internal(format!(
            "scope `{scope}` is not an identifier and cannot name an output file"
        )));
    }
    Ok(out_dir.join("output").join(format!("{scope}.csv")))
}

/// Writes one scope's SQL output as CSV.
///
/// The format: a header row of column names (written at [`CsvOutput::create`],
/// so an empty scope still gets one), RFC 4180 quoting (a field is quoted
/// when it holds `,`, `"`, CR or LF), LF line ends, UTF-8, null as an empty
/// field and a non-null empty string as `""`. Per type:
///
/// - dates `2024-01-31`; timestamps `2024-01-31T12:00:00`, with fractional
///   seconds only when they are non-zero (`.500`, `.123456`: 3, 6 or 9
///   digits) and `Z` or `+01:00` when the column has a time zone;
/// - integers and decimals as they are; floats in the shortest form that
///   reads back to the same value (`1.5`, `0.1`, `100`), with an exponent
///   only outside `1e-6 ..< 1e21` (`1e21`, `1.5e-7`), and `NaN`, `inf`,
///   `-inf`;
/// - booleans `true` / `false`; binary as lower-case hex;
/// - lists, structs and maps as compact JSON text (`[1,2]`,
///   `{"a":1,"b":null}`).
///
/// Call [`CsvOutput::finish`] at the end: rows still in the buffer are lost
/// if the writer is dropped instead.
pub struct CsvOutput {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    columns: usize,
    /// The columns written: all but the line a row came from.
    keep: Vec<usize>,
    row_cap: Option<u64>,
    rows_written: u64,
    rows_capped: u64,
    /// Reused text of one value.
    text: String,
    /// Reused JSON of one nested value.
    json: Vec<u8>,
}

impl CsvOutput {
    /// Creates the file at `path` (and its parent directories) and writes the
    /// header row. `row_cap`: at most this many data rows are written
    /// (`None` = all); the rest are counted in [`CsvOutput::rows_capped`].
    pub fn create(path: &Path, schema: &SchemaRef, row_cap: Option<u64>) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating directory {}", parent.display()), e))?;
        }
        let file = File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut buf = Vec::with_capacity(BUFFER_SIZE + BUFFER_SIZE / 8);
        let columns = schema.fields().len();
        let keep: Vec<usize> = (0..columns)
            .filter(|&i| schema.field(i).name() != LINE_COLUMN)
            .collect();
        if !keep.is_empty() {
            for (n, &i) in keep.iter().enumerate() {
                if n > 0 {
                    buf.push(b',');
                }
                push_field(&mut buf, schema.field(i).name().as_bytes());
            }
            buf.push(b'\n');
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            buf,
            columns,
            keep,
            row_cap,
            rows_written: 0,
            rows_capped: 0,
            text: String::new(),
            json: Vec::new(),
        })
    }

    /// Writes the rows of `batch`, or the part of them under the row cap.
    ///
    /// The batch must have the columns of the schema given to
    /// [`CsvOutput::create`], in the same order.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_columns() != self.columns {
            return Err(Error::Internal(format!(
                "output {}: a batch has {} columns, the scope has {}",
                self.path.display(),
                batch.num_columns(),
                self.columns
            )));
        }
        let available = batch.num_rows();
        let take = match self.row_cap {
            Some(cap) => {
                let room = cap.saturating_sub(self.rows_written);
                usize::try_from(room).map_or(available, |room| room.min(available))
            }
            None => available,
        };
        self.rows_capped += (available - take) as u64;
        if take == 0 {
            return Ok(());
        }
        if self.keep.is_empty() {
            // Nothing to show for a row without columns; count it all the same.
            self.rows_written += take as u64;
            return Ok(());
        }
        let projected;
        let batch = if self.keep.len() == self.columns {
            batch
        } else {
            projected = batch
                .project(&self.keep)
                .map_err(|e| Error::Internal(format!("output {}: {e}", self.path.display())))?;
            &projected
        };

        let arrays: Vec<ArrayRef> = batch.columns().iter().map(plain_array).collect();
        let fields: Vec<FieldRef> = batch
            .schema_ref()
            .fields()
            .iter()
            .zip(&arrays)
            .map(|(field, array)| Arc::new(Field::new(field.name(), array.data_type().clone(), true)))
            .collect();
        let nulls: Vec<Option<NullBuffer>> = arrays.iter().map(|a| a.logical_nulls()).collect();
        let format_options = FormatOptions::new();
        let json_options = EncoderOptions::default().with_explicit_nulls(true);
        let mut cells = arrays
            .iter()
            .zip(&fields)
            .map(|(array, field)| Cell::new(array.as_ref(), field, &format_options, &json_options))
            .collect::<Result<Vec<_>>>()?;

        for row in 0..take {
            for (i, (cell, column_nulls)) in cells.iter_mut().zip(&nulls).enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                if column_nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                    continue;
                }
                cell.write(row, &mut self.buf, &mut self.text, &mut self.json)
                    .map_err(|message| {
                        Error::Internal(format!(
                            "output {}: column `{}`, row {}: {message}",
                            self.path.display(),
                            fields[i].name(),
                            self.rows_written + row as u64 + 1
                        ))
                    })?;
            }
            self.buf.push(b'\n');
            if self.buf.len() >= BUFFER_SIZE {
                self.flush_buffer()?;
            }
        }
        self.rows_written += take as u64;
        Ok(())
    }

    /// Data rows written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Data rows dropped by the row cap so far.
    pub fn rows_capped(&self) -> u64 {
        self.rows_capped
    }

    /// Writes what is buffered and closes the file.
    pub fn finish(mut self) -> Result<()> {
        self.flush_buffer()?;
        self.file
            .flush()
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    fn flush_buffer(&mut self) -> Result<()> {
        self.file
            .write_all(&self.buf)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        self.buf.clear();
        Ok(())
    }
}

/// How one column's values become text.
enum Cell<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Float64(&'a Float64Array),
    Float32(&'a Float32Array),
    Int64(&'a Int64Array),
    Int32(&'a Int32Array),
    /// Timestamps without a zone in microseconds: the type every inferred
    /// timestamp column has, formatted by hand because it is the hottest
    /// non-text column.
    NaiveMicros(&'a TimestampMicrosecondArray),
    /// Lists, structs, maps.
    Json(NullableEncoder<'a>),
    /// Everything else, with Arrow's formatter (ISO dates and times, hex
    /// binary, exact decimals).
    Display(ArrayFormatter<'a>),
}

impl<'a> Cell<'a> {
    fn new(
        array: &'a dyn Array,
        field: &'a FieldRef,
        format_options: &FormatOptions<'a>,
        json_options: &'a EncoderOptions,
    ) -> Result<Self> {
        let display = |array: &'a dyn Array| {
            ArrayFormatter::try_new(array, format_options)
                .map_err(|e| Error::Internal(format!("output: column `{}` cannot be written: {e}", field.name())))
        };
        Ok(match array.data_type() {
            DataType::Utf8 => Cell::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Cell::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Cell::Utf8View(array.as_string_view()),
            DataType::Float64 => Cell::Float64(array.as_primitive::<Float64Type>()),
            DataType::Float32 => Cell::Float32(array.as_primitive::<Float32Type>()),
            DataType::Int64 => Cell::Int64(array.as_primitive::<Int64Type>()),
            DataType::Int32 => Cell::Int32(array.as_primitive::<Int32Type>()),
            DataType::Timestamp(TimeUnit::Microsecond, None) => {
                Cell::NaiveMicros(array.as_primitive::<TimestampMicrosecondType>())
            }
            t if t.is_nested() => match make_encoder(field, array, json_options) {
                Ok(encoder) => Cell::Json(encoder),
                // Unions have no JSON form; Arrow's text is better than nothing.
                Err(_) => Cell::Display(display(array)?),
            },
            _ => Cell::Display(display(array)?),
        })
    }

    /// Appends the non-null value at `row` to `out` as one CSV field.
    fn write(
        &mut self,
        row: usize,
        out: &mut Vec<u8>,
        text: &mut String,
        json: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        match self {
            Cell::Utf8(a) => push_field(out, a.value(row).as_bytes()),
            Cell::LargeUtf8(a) => push_field(out, a.value(row).as_bytes()),
            Cell::Utf8View(a) => push_field(out, a.value(row).as_bytes()),
            Cell::Float64(a) => push_f64(out, a.value(row)),
            Cell::Int64(a) => out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes()),
            Cell::Int32(a) => out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes()),
            Cell::NaiveMicros(a) => {
                if !write_naive_micros(out, a.value(row)) {
                    text.clear();
                    write!(text, "{}", a.value(row)).map_err(|e| e.to_string())?;
                    out.extend_from_slice(text.as_bytes());
                }
            }
            Cell::Float32(a) => {
                text.clear();
                write_float(text, a.value(row)).map_err(|e| e.to_string())?;
                out.extend_from_slice(text.as_bytes());
            }
            Cell::Json(encoder) => {
                json.clear();
                encoder.encode(row, json);
                push_field(out, json);
            }
            Cell::Display(formatter) => {
                text.clear();
                formatter.value(row).write(text).map_err(|e| e.to_string())?;
                push_field(out, text.as_bytes());
            }
        }
        Ok(())
    }
}

/// Writes `2024-01-31T12:00:00[.mmm|.uuuuuu]` as Arrow's formatter would;
/// false (nothing written) for years outside 0..=9999.
fn write_naive_micros(out: &mut Vec<u8>, micros: i64) -> bool {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000) as u32);
    let (days, second_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    let (year, month, day) = crate::calendar::civil_from_days(days);
    let Ok(year) = u32::try_from(year) else {
        return false;
    };
    if year > 9999 {
        return false;
    }
    let mut text = *b"0000-00-00T00:00:00.000000";
    for (at, value) in [
        (0, year / 100),
        (2, year % 100),
        (5, month),
        (8, day),
        (11, second_of_day / 3600),
        (14, second_of_day / 60 % 60),
        (17, second_of_day % 60),
        (22, frac / 100 % 100),
        (24, frac % 100),
    ] {
        put_two_digits(&mut text, at, value);
    }
    let len = if frac == 0 {
        19
    } else if frac.is_multiple_of(1000) {
        // Milliseconds: the digits at 20..23 are the thousands of frac.
        let millis = frac / 1000;
        text[20] = b'0' + (millis / 100) as u8;
        put_two_digits(&mut text, 21, millis % 100);
        23
    } else {
        text[20] = b'0' + (frac / 100_000) as u8;
        text[21] = b'0' + (frac / 10_000 % 10) as u8;
        26
    };
    out.extend_from_slice(&text[..len]);
    true
}

/// The two digits of every number below 100.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// Writes `value % 100` as two digits at `at` in `text`.
fn put_two_digits(text: &mut [u8], at: usize, value: u32) {
    let pair = (value % 100) as usize * 2;
    text[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
}

/// The array itself, or its plain values for a dictionary or run-end encoded
/// column, so that every value type is formatted the same way however it is
/// encoded.
fn plain_array(array: &ArrayRef) -> ArrayRef {
    let value_type = match array.data_type() {
        DataType::Dictionary(_, value) => value.as_ref().clone(),
        DataType::RunEndEncoded(_, values) => values.data_type().clone(),
        _ => return Arc::clone(array),
    };
    // Arrow's formatter handles the encoded form too, if a cast is missing.
    cast(array, &value_type).unwrap_or_else(|_| Arc::clone(array))
}

/// The shortest text that reads back as the same float: Rust's `Display`
/// (shortest round-trip digits, no `.0` on whole numbers), switching to an
/// exponent where JavaScript's `Number#toString` does (at `1e21` and below
/// `1e-6`), so that huge and tiny values do not become hundreds of digits.
fn write_float<F>(out: &mut String, value: F) -> std::fmt::Result
where
    F: Display + LowerExp + Copy + Into<f64>,
{
    let v: f64 = value.into();
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "inf" } else { "-inf" });
    } else {
        let magnitude = v.abs();
        if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
            write!(out, "{value:e}")?;
        } else {
            write!(out, "{value}")?;
        }
    }
    Ok(())
}

/// Appends what [`write_float`] writes for `value`, from the shortest
/// digits `zmij` finds (the same digits `Display` finds, several times
/// faster), laid out as `Display` and `LowerExp` lay them out.
fn push_f64(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() || value == 0.0 {
        return push_float_by_display(out, value);
    }
    let mut buffer = zmij::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    // Short positional text (at most 15 digits, too few for a tie) is
    // Display's already, but for the `.0` of a whole number. zmij writes
    // positionally only from 1e-5 to 1e16, inside Display's range.
    if text.len() <= 16 && !text.contains(&b'e') {
        out.extend_from_slice(text.strip_suffix(b".0").unwrap_or(text));
        return;
    }
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    // zmij writes `d.ddde±x`, `ddd.ddd` or `0.000ddd`: gather the digits
    // and the power of ten of the first one.
    let (mantissa, mut exponent) = match text.iter().position(|&b| b == b'e') {
        Some(e) => (&text[..e], parse_exponent(&text[e + 1..])),
        None => (text, 0),
    };
    let mut digits = [0u8; 32];
    let mut n = 0;
    let mut point = mantissa.len();
    for (i, &b) in mantissa.iter().enumerate() {
        if b == b'.' {
            point = i;
        } else if let Some(slot) = digits.get_mut(n) {
            *slot = b;
            n += 1;
        }
    }
    exponent += point as i32 - 1;
    let leading = digits[..n].iter().take_while(|&&d| d == b'0').count();
    exponent -= leading as i32;
    let mut digits = &digits[leading..n];
    while let [rest @ .., b'0'] = digits {
        digits = rest;
    }
    if digits.len() >= 16 && may_be_a_tie(value, digits.len()) {
        // Two shortest forms equally near: `Display` rounds the tie up,
        // zmij to even. Let `Display` decide (it is exact and rare).
        return push_float_by_display(out, value);
    }
    if negative {
        out.push(b'-');
    }
    if (1e-6..1e21).contains(&value.abs()) {
        if exponent >= 0 {
            let whole = exponent as usize + 1;
            if digits.len() <= whole {
                out.extend_from_slice(digits);
                out.resize(out.len() + whole - digits.len(), b'0');
            } else {
                out.extend_from_slice(&digits[..whole]);
                out.push(b'.');
                out.extend_from_slice(&digits[whole..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + (-exponent - 1) as usize, b'0');
            out.extend_from_slice(digits);
        }
    } else {
        if let Some((first, rest)) = digits.split_first() {
            out.push(*first);
            if !rest.is_empty() {
                out.push(b'.');
                out.extend_from_slice(rest);
            }
        }
        out.push(b'e');
        out.extend_from_slice(itoa::Buffer::new().format(exponent).as_bytes());
    }
}

/// Appends [`write_float`]'s text for `value`.
fn push_float_by_display(out: &mut Vec<u8>, value: f64) {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = write_float(&mut text, value);
    out.extend_from_slice(text.as_bytes());
}

/// Whether `value` may lie exactly halfway between two decimals of
/// `digits` significant digits: only when its exact decimal expansion has
/// `digits + 1` significant digits, the last a 5. Two shortest forms can be
/// equally near only at 16 or more digits (a double's spacing is about
/// 2.2e-16 of its value), so only those are asked.
fn may_be_a_tie(value: f64, digits: usize) -> bool {
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mut mantissa, mut exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    let zeros = mantissa.trailing_zeros();
    mantissa >>= zeros;
    exponent += zeros as i32;
    // The exact value's significant digits, as an integer.
    let exact = if exponent >= 0 {
        match u32::try_from(exponent)
            .ok()
            .and_then(|e| u128::from(mantissa).checked_mul(1u128.checked_shl(e)?))
        {
            Some(mut n) => {
                while n.is_multiple_of(10) {
                    n /= 10;
                }
                n
            }
            // Beyond 2^128: cannot tell cheaply, so maybe.
            None => return true,
        }
    } else {
        // m × 2^-k = m × 5^k / 10^k: the digits of m × 5^k (odd, so no
        // trailing zeros). Past u128 it has more than 38 digits: no tie.
        match 5u128
            .checked_pow(exponent.unsigned_abs())
            .and_then(|p| p.checked_mul(u128::from(mantissa)))
        {
            Some(n) => n,
            None => return false,
        }
    };
    exact % 10 == 5 && exact.ilog10() as usize + 1 == digits + 1
}

/// `+21`, `-7` or `21` as a number.
fn parse_exponent(text: &[u8]) -> i32 {
    let (sign, digits) = match text.split_first() {
        Some((b'-', rest)) => (-1, rest),
        Some((b'+', rest)) => (1, rest),
        _ => (1, text),
    };
    sign * digits
        .iter()
        .fold(0i32, |acc, d| acc * 10 + i32::from(d.wrapping_sub(b'0')))
}

/// Appends `field` with RFC 4180 quoting: quoted when it holds a comma, a
/// quote or a line break (inner quotes doubled), and `""` when empty so that
/// an empty string is not read back as null.
fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    if field.is_empty() {
        out.extend_from_slice(b"\"\"");
        return;
    }
    if !field.iter().any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for (i, part) in field.split(|&b| b == b'"').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(part);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::NaiveDate;
    use datafusion::arrow::array::{
        BinaryArray, BooleanArray, Date32Array, DictionaryArray, Int32Array, Int64Array, ListArray, StructArray,
        TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{Int32Type, Int64Type, Schema, TimeUnit};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// Writes `batches` through a [`CsvOutput`] in a nested, not yet existing
    /// directory and returns the file's text and the two counters.
    fn write_csv(
        schema: &SchemaRef,
        batches: &[RecordBatch],
        cap: Option<u64>,
    ) -> std::result::Result<(String, u64, u64), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out").join("output").join("scope.csv");
        let mut output = CsvOutput::create(&path, schema, cap)?;
        for batch in batches {
            output.write(batch)?;
        }
        let (written, capped) = (output.rows_written(), output.rows_capped());
        output.finish()?;
        Ok((std::fs::read_to_string(&path)?, written, capped))
    }

    fn one_column(
        name: &str,
        array: ArrayRef,
    ) -> std::result::Result<(SchemaRef, RecordBatch), Box<dyn std::error::Error>> {
        let schema = Arc::new(Schema::new(vec![Field::new(name, array.data_type().clone(), true)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![array])?;
        Ok((schema, batch))
    }

    fn micros(date: (i32, u32, u32), time: (u32, u32, u32, u32)) -> std::result::Result<i64, String> {
        NaiveDate::from_ymd_opt(date.0, date.1, date.2)
            .and_then(|d| d.and_hms_micro_opt(time.0, time.1, time.2, time.3))
            .map(|t| t.and_utc().timestamp_micros())
            .ok_or_else(|| "bad test date".to_string())
    }

    #[test]
    fn text_is_quoted_per_rfc_4180_and_null_is_an_empty_field() -> TestResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some("a,b"),
                    Some("say \"hi\""),
                    Some("line1\nline2"),
                    Some("cr\rhere"),
                    Some(""),
                    None,
                    Some("Zoë ✓"),
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(2),
                    Some(3),
                    Some(4),
                    Some(5),
                    Some(6),
                    Some(7),
                    None,
                ])),
            ],
        )?;
        let (text, written, capped) = write_csv(&schema, &[batch], None)?;
        assert_eq!(
            text,
            "name,n\n\
             plain,1\n\
             \"a,b\",2\n\
             \"say \"\"hi\"\"\",3\n\
             \"line1\nline2\",4\n\
             \"cr\rhere\",5\n\
             \"\",6\n\
             ,7\n\
             Zoë ✓,\n"
        );
        assert_eq!((written, capped), (8, 0));
        Ok(())
    }

    #[test]
    fn header_names_are_quoted_too() -> TestResult {
        let (schema, batch) = one_column("a,b", Arc::new(Int32Array::from(vec![1])))?;
        let (text, _, _) = write_csv(&schema, &[batch], None)?;
        assert_eq!(text, "\"a,b\"\n1\n");
        Ok(())
    }

    #[test]
    fn dates_and_timestamps_are_iso_8601() -> TestResult {
        let days = |y, m, d| -> std::result::Result<i32, String> {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or("epoch")?;
            let date = NaiveDate::from_ymd_opt(y, m, d).ok_or("date")?;
            i32::try_from((date - epoch).num_days()).map_err(|e| e.to_string())
        };
        let noon = micros((2024, 1, 31), (12, 0, 0, 0))?;
        let half = micros((2024, 1, 31), (12, 0, 0, 500_000))?;
        let odd = micros((2024, 1, 31), (12, 0, 0, 123_456))?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new(
                "utc",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "plus1",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+01:00".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Date32Array::from(vec![
                    Some(days(2024, 1, 31)?),
                    Some(days(1999, 12, 1)?),
                    None,
                    None,
                ])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(noon),
                    Some(half),
                    Some(odd),
                    None,
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(noon), Some(half), None, None]).with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(noon), Some(half), None, None]).with_timezone("+01:00"),
                ),
            ],
        )?;
        let (text, _, _) = write_csv(&schema, &[batch], None)?;
        // Fractional seconds appear only when non-zero, in groups of 3 digits
        // (chrono's `AutoSi`): `.500`, not `.5`.
        assert_eq!(
            text,
            "d,ts,utc,plus1\n\
             2024-01-31,2024-01-31T12:00:00,2024-01-31T12:00:00Z,2024-01-31T13:00:00+01:00\n\
             1999-12-01,2024-01-31T12:00:00.500,2024-01-31T12:00:00.500Z,2024-01-31T13:00:00.500+01:00\n\
             ,2024-01-31T12:00:00.123456,,\n\
             ,,,\n"
        );
        Ok(())
    }

    #[test]
    fn floats_are_written_in_their_shortest_exact_form() -> TestResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("f64", DataType::Float64, true),
            Field::new("f32", DataType::Float32, true),
        ]));
        let f64s = vec![
            Some(1.5),
            Some(0.1),
            Some(100.0),
            Some(-0.25),
            Some(123_456.789),
            Some(1e21),
            Some(1.5e-7),
            Some(0.0),
            Some(f64::NAN),
            Some(f64::NEG_INFINITY),
            None,
        ];
        let f32s = vec![
            Some(0.1f32),
            Some(100.0),
            Some(2.5),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ];
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Float64Array::from(f64s)), Arc::new(Float32Array::from(f32s))],
        )?;
        let (text, _, _) = write_csv(&schema, &[batch], None)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "f64,f32",
                "1.5,0.1",
                "0.1,100",
                "100,2.5",
                "-0.25,",
                "123456.789,",
                "1e21,",
                "1.5e-7,",
                "0,",
                "NaN,",
                "-inf,",
                ",",
            ]
        );
        // Every value reads back exactly.
        for (line, expected) in lines[1..6].iter().zip([1.5, 0.1, 100.0, -0.25, 123_456.789]) {
            let field = line.split(',').next().ok_or("field")?;
            assert_eq!(field.parse::<f64>()?, expected);
        }
        Ok(())
    }

    /// A few million doubles of every magnitude, from random bits and from
    /// the money-like products jobs write: the fast path writes what
    /// `Display`/`LowerExp` write, character for character.
    #[test]
    fn the_fast_float_path_writes_what_display_writes() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || crate::xorshift(&mut state);
        let mut values: Vec<f64> = (0..1_000_000).map(|_| f64::from_bits(next())).collect();
        values.extend((0..1_000_000).map(|_| (next() % 10_000_000) as f64 / 100.0 * (next() % 50) as f64));
        for power in -30..30 {
            let p = 10f64.powi(power);
            values.extend([p, -p, p * 0.999_999_999_999, p * 1.000_000_000_001, 1.0 / 3.0 * p]);
        }
        values.extend([
            1e-6,
            f64::from_bits(1e-6f64.to_bits() - 1),
            1e21,
            f64::from_bits(1e21f64.to_bits() - 1),
            f64::MIN_POSITIVE,
            f64::MAX,
        ]);
        values.extend([5e-324, -5e-324, f64::MIN, 0.1 + 0.2, 2f64.powi(53), 2f64.powi(53) + 2.0]);
        // Exactly halfway between two shortest forms, which `Display` rounds up.
        values.extend([
            f64::from_bits(0x4317_9085_685d_83c9),
            1_658_206_780_088_562.0 + 0.25,
            2f64.powi(54) + 4.0,
        ]);
        let (mut fast, mut reference) = (Vec::new(), String::new());
        for v in values.into_iter().filter(|v| v.is_finite()) {
            fast.clear();
            reference.clear();
            push_f64(&mut fast, v);
            write_float(&mut reference, v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(String::from_utf8_lossy(&fast), reference, "bits {:#x}", v.to_bits());
        }
    }

    /// Timestamps across the years 0 to 9999, written by hand, read back by
    /// chrono as the same instant.
    #[test]
    fn hand_written_timestamps_agree_with_chrono() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let (first, last) = (-62_167_219_200_000_000i64, 253_402_300_799_999_999i64);
        let mut out = Vec::new();
        for i in 0..300_000u64 {
            let mut micros = first + (crate::xorshift(&mut state) % (last - first) as u64) as i64;
            // Whole seconds and milliseconds too, which are written shorter.
            match i % 3 {
                0 => micros -= micros.rem_euclid(1_000_000),
                1 => micros -= micros.rem_euclid(1000),
                _ => {}
            }
            out.clear();
            assert!(write_naive_micros(&mut out, micros), "{micros}");
            let text = String::from_utf8_lossy(&out);
            let parsed = chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.and_utc().timestamp_micros(), micros, "{text}");
        }
        assert!(!write_naive_micros(&mut out, first - 1), "year -1");
        assert!(!write_naive_micros(&mut out, last + 1), "year 10000");
    }

    #[test]
    fn integers_booleans_binary_and_dictionaries() -> TestResult {
        let dictionary: DictionaryArray<Int32Type> = vec![Some("x,y"), None, Some("z")].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("bin", DataType::Binary, true),
            Field::new("dict", dictionary.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(0), Some(42)])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(BinaryArray::from(vec![
                    Some(&[0x00u8, 0xab, 0xff][..]),
                    Some(&[][..]),
                    None,
                ])),
                Arc::new(dictionary),
            ],
        )?;
        let (text, _, _) = write_csv(&schema, &[batch], None)?;
        assert_eq!(
            text,
            "i,b,bin,dict\n\
             -9223372036854775808,true,00abff,\"x,y\"\n\
             0,false,\"\",\n\
             42,,,z\n"
        );
        Ok(())
    }

    #[test]
    fn nested_columns_are_json_text() -> TestResult {
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2), Some(3)]),
            Some(vec![]),
            Some(vec![Some(7), None]),
            None,
        ]);
        let structs = StructArray::from(vec![
            (
                Arc::new(Field::new("a", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("s", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![Some("x"), Some("y"), None, Some("q\"")])) as ArrayRef,
            ),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("list", list.data_type().clone(), true),
            Field::new("st", structs.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(list), Arc::new(structs)])?;
        let (text, _, _) = write_csv(&schema, &[batch], None)?;
        assert_eq!(
            text,
            "list,st\n\
             \"[1,2,3]\",\"{\"\"a\"\":1,\"\"s\"\":\"\"x\"\"}\"\n\
             [],\"{\"\"a\"\":null,\"\"s\"\":\"\"y\"\"}\"\n\
             \"[7,null]\",\"{\"\"a\"\":3,\"\"s\"\":null}\"\n\
             ,\"{\"\"a\"\":4,\"\"s\"\":\"\"q\\\"\"\"\"}\"\n"
        );
        // The list field reads back as JSON.
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let first = reader.records().next().ok_or("no row")??;
        let value: serde_json::Value = serde_json::from_str(first.get(0).ok_or("no field")?)?;
        assert_eq!(value, serde_json::json!([1, 2, 3]));
        Ok(())
    }

    #[test]
    fn an_empty_scope_still_gets_its_header() -> TestResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let (text, written, _) = write_csv(&schema, &[], None)?;
        assert_eq!(text, "a,b\n");
        assert_eq!(written, 0);
        let empty = RecordBatch::new_empty(Arc::clone(&schema));
        let (text, written, _) = write_csv(&schema, &[empty], None)?;
        assert_eq!(text, "a,b\n");
        assert_eq!(written, 0);
        Ok(())
    }

    #[test]
    fn the_row_cap_keeps_the_first_rows_and_counts_the_rest() -> TestResult {
        let (schema, first) = one_column("n", Arc::new(Int64Array::from(vec![1, 2])))?;
        let (_, second) = one_column("n", Arc::new(Int64Array::from(vec![3, 4])))?;
        let (_, third) = one_column("n", Arc::new(Int64Array::from(vec![5])))?;
        let (text, written, capped) = write_csv(&schema, &[first, second, third], Some(3))?;
        assert_eq!(text, "n\n1\n2\n3\n");
        assert_eq!((written, capped), (3, 2));
        Ok(())
    }

    #[test]
    fn a_batch_with_other_columns_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let mut output = CsvOutput::create(&dir.path().join("x.csv"), &schema, None)?;
        let (_, batch) = one_column("a", Arc::new(Int64Array::from(vec![1])))?;
        assert!(matches!(output.write(&batch), Err(Error::Internal(_))));
        Ok(())
    }

    #[test]
    fn large_outputs_go_through_the_buffer_intact() -> TestResult {
        let values: Vec<String> = (0..100_000).map(|i| format!("value number {i}, padded")).collect();
        let (schema, batch) = one_column("v", Arc::new(StringArray::from(values.clone())))?;
        let (text, written, _) = write_csv(&schema, &[batch], None)?;
        assert_eq!(written, 100_000);
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut count = 0;
        for (record, expected) in reader.records().zip(&values) {
            assert_eq!(record?.get(0), Some(expected.as_str()));
            count += 1;
        }
        assert_eq!(count, 100_000);
        Ok(())
    }
}
