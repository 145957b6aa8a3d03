//! Streaming text tables: CSV/TSV and JSON (lines or array).
//!
//! A text table is re-read from its file each time DataFusion scans it, on a
//! blocking thread that hands batches over a bounded channel, so memory stays
//! bounded whatever the file size. Rows that cannot be read (ragged, bad
//! quoting, invalid UTF-8, a value that does not fit its column) are sent to
//! the reject sink with their line number, on the first scan only, and the
//! rest of the file goes on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::streaming::PartitionStream;
use serde_json::Value;

use super::encoding::{Detected, utf8_reader};
use super::infer::{ColumnType, RowBuilder, infer_column};
use super::{IntakeOptions, TableContext};
use crate::error::{Error, Limit, Result, Stage, json_reason};
use crate::naming::normalise_headers;
use crate::report::RejectedRow;

mod parallel;

/// The column of each JSON key (hashed with a fast hasher: every key of
/// every line is looked up).
type KeyIndex<'k> = HashMap<&'k str, usize, foldhash::fast::RandomState>;

fn key_index(keys: &[String]) -> KeyIndex<'_> {
    keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect()
}

/// The syntax of a text table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Delimited values with this delimiter.
    Delimited(u8),
    /// One JSON object per line.
    JsonLines,
    /// A JSON array of objects, or a single object.
    JsonArray,
}

/// What a reader does with each record: `Ok(true)` to go on.
type Emit<'a> = dyn FnMut(Record<'_>) -> Result<bool> + 'a;

/// One record as read from the file.
enum Record<'a> {
    /// Cells of a well-formed record.
    Cells { line: Option<u64>, cells: Cells<'a> },
    /// A record that could not be read, and why.
    Bad {
        line: Option<u64>,
        reason: String,
        raw: Vec<String>,
    },
}

/// The cells of one record: borrowed straight from the CSV reader (no copy
/// per row), split in place from the text, or built from a JSON object.
enum Cells<'a> {
    Csv(&'a csv::StringRecord),
    Split(&'a [&'a str]),
    Owned(Vec<Option<Cow<'a, str>>>),
}

impl Cells<'_> {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Cells::Csv(r) => r.len(),
            Cells::Split(v) => v.len(),
            Cells::Owned(v) => v.len(),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Cells::Csv(r) => r.get(i),
            Cells::Split(v) => v.get(i).copied(),
            Cells::Owned(v) => v.get(i).and_then(|c| c.as_deref()),
        }
    }

    fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A text input table.
#[derive(Debug)]
pub struct TextTable {
    path: PathBuf,
    kind: TextKind,
    detected: Detected,
    header: bool,
    /// Column keys as they appear in the file (JSON object keys).
    keys: Vec<String>,
    ctx: Arc<TableContext>,
    schema: SchemaRef,
    types: Vec<ColumnType>,
    names: Vec<String>,
    options: IntakeOptions,
    scanned: AtomicBool,
}

impl TextTable {
    /// Opens a text table: reads its header and a sample to infer types.
    pub fn open(
        path: PathBuf,
        kind: TextKind,
        detected: Detected,
        options: &IntakeOptions,
        ctx: Arc<TableContext>,
    ) -> Result<Self> {
        let mut table = Self {
            path,
            kind,
            detected,
            header: options.header,
            keys: Vec::new(),
            ctx,
            schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            types: Vec::new(),
            names: Vec::new(),
            options: options.clone(),
            scanned: AtomicBool::new(false),
        };
        let (names, keys, sample) = table.sample()?;
        if names.is_empty() {
            return Err(Error::unreadable(format!(
                "`{}` has no columns: the file holds no header and no data",
                table.ctx.file_name
            )));
        }
        let types: Vec<ColumnType> = (0..names.len())
            .map(|i| {
                if options.infer {
                    infer_column(sample.iter().map(|row| row.get(i).and_then(|c| c.as_deref())))
                } else {
                    ColumnType::Text
                }
            })
            .collect();
        let builder = RowBuilder::new(&names, &types);
        table.schema = builder.schema().clone();
        table.types = types;
        table.names = names;
        table.keys = keys;
        Ok(table)
    }

    /// The table's schema.
    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }

    fn reader(&self) -> Result<Box<dyn Read + Send>> {
        let file = File::open(&self.path).map_err(|e| Error::io(format!("opening {}", self.ctx.file_name), e))?;
        utf8_reader(file, self.detected).map_err(|e| Error::io(format!("reading {}", self.ctx.file_name), e))
    }

    /// Column names, keys and up to `sample_rows` rows of cells.
    #[expect(clippy::type_complexity, reason = "a private triple used once")]
    fn sample(&self) -> Result<(Vec<String>, Vec<String>, Vec<Vec<Option<String>>>)> {
        let mut rows: Vec<Vec<Option<String>>> = Vec::new();
        let limit = self.options.sample_rows;
        match self.kind {
            TextKind::Delimited(_) => {
                let mut header: Option<Vec<String>> = None;
                let mut width = 0;
                self.scan(&[], &mut |record| {
                    if let Record::Cells { cells, .. } = record {
                        if header.is_none() && self.header {
                            header = Some(cells.iter().map(|c| c.unwrap_or("").to_string()).collect());
                            return Ok(true);
                        }
                        width = width.max(cells.len());
                        rows.push(cells.iter().map(|c| c.map(str::to_string)).collect());
                    }
                    Ok(rows.len() < limit)
                })?;
                let raw = match header {
                    Some(h) => h,
                    None => (1..=width).map(|i| format!("_{i}")).collect(),
                };
                let names = normalise_headers(&raw);
                rows.retain(|r| r.len() == names.len());
                Ok((names, raw, rows))
            }
            TextKind::JsonLines | TextKind::JsonArray => {
                let mut keys: Vec<String> = Vec::new();
                let mut objects: Vec<serde_json::Map<String, Value>> = Vec::new();
                self.scan_json(
                    &mut |object| {
                        for k in object.keys() {
                            if !keys.contains(k) {
                                keys.push(k.clone());
                            }
                        }
                        objects.push(object);
                        Ok(objects.len() < limit)
                    },
                    &mut |_| Ok(true),
                )?;
                let index = key_index(&keys);
                for object in &objects {
                    rows.push(
                        json_cells(object, &index, keys.len())
                            .into_iter()
                            .map(|c| c.map(Cow::into_owned))
                            .collect(),
                    );
                }
                Ok((normalise_headers(&keys), keys, rows))
            }
        }
    }

    /// Reads every record, calling `emit` with it.
    fn scan(&self, keys: &[String], emit: &mut Emit<'_>) -> Result<()> {
        match self.kind {
            TextKind::Delimited(delimiter) => self.scan_delimited(delimiter, emit),
            TextKind::JsonLines if !keys.is_empty() => {
                let index = key_index(keys);
                let reader = BufReader::with_capacity(1 << 20, self.reader()?);
                scan_json_line_cells(reader, 1, &index, self.options.sample_rows, emit).map_err(|e| match e {
                    JsonStop::Io(e) => Error::io(format!("reading {}", self.ctx.file_name), e),
                    JsonStop::Error(e) => e,
                })
            }
            TextKind::JsonLines | TextKind::JsonArray => {
                let index = key_index(keys);
                // Both callbacks below report records; they are never called
                // at the same time, so they share `emit` through a RefCell.
                let emit = std::cell::RefCell::new(emit);
                let line_of_object = std::cell::Cell::new(None);
                self.scan_json(
                    &mut |object| {
                        let cells = json_cells(&object, &index, keys.len());
                        let unknown: Vec<&String> = object.keys().filter(|k| !index.contains_key(k.as_str())).collect();
                        if !unknown.is_empty() {
                            return (emit.borrow_mut())(Record::Bad {
                                line: line_of_object.get(),
                                reason: format!(
                                    "keys not seen in the first {} objects: {}",
                                    self.options.sample_rows,
                                    unknown.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                                ),
                                raw: vec![Value::Object(object.clone()).to_string()],
                            });
                        }
                        (emit.borrow_mut())(Record::Cells {
                            line: line_of_object.get(),
                            cells: Cells::Owned(cells),
                        })
                    },
                    &mut |bad| match bad {
                        JsonEvent::Line(l) => {
                            line_of_object.set(Some(l));
                            Ok(true)
                        }
                        JsonEvent::Bad { line, reason, raw } => (emit.borrow_mut())(Record::Bad {
                            line,
                            reason,
                            raw: vec![raw],
                        }),
                    },
                )
            }
        }
    }

    fn scan_delimited(&self, delimiter: u8, emit: &mut Emit<'_>) -> Result<()> {
        scan_delimited(self.reader()?, delimiter, 1, &self.ctx.file_name, emit)
    }

    fn scan_json(
        &self,
        object: &mut dyn FnMut(serde_json::Map<String, Value>) -> Result<bool>,
        event: &mut dyn FnMut(JsonEvent) -> Result<bool>,
    ) -> Result<()> {
        let reader = self.reader()?;
        match self.kind {
            TextKind::JsonLines => scan_json_lines(BufReader::with_capacity(1 << 20, reader), object, event),
            _ => scan_json_array(BufReader::with_capacity(1 << 20, reader), object, event),
        }
        .map_err(|e| match e {
            JsonStop::Io(e) => Error::io(format!("reading {}", self.ctx.file_name), e),
            JsonStop::Error(e) => e,
        })
    }

    /// Reads the whole table, sending batches until the file ends or the
    /// receiver is gone. Rejected rows and counts are reported when `report`.
    /// A CSV/TSV or JSON Lines file is parsed on `threads` threads, a run
    /// of records each, and its rows arrive in file order all the same.
    fn read(&self, report: bool, send: &mut dyn FnMut(RecordBatch) -> bool) -> Result<()> {
        let mut out = Delivery {
            table: self,
            report,
            send,
            records: 0,
            good: 0,
            counted: 0,
        };
        if parallel::applies(self) {
            return parallel::read(self, &mut out);
        }
        let mut rows = Rows::new(self);
        let mut seen_header = !(self.header && matches!(self.kind, TextKind::Delimited(_)));
        self.scan(&self.keys, &mut |record| {
            if !seen_header {
                seen_header = true;
                return Ok(true);
            }
            rows.take(record);
            out.deliver(&mut rows)
        })?;
        rows.flush();
        out.deliver(&mut rows)?;
        Ok(())
    }
}

/// Reads the records of a delimited text whose first line is line
/// `first_line` of file `file_name`, calling `emit` with each.
fn scan_delimited(text: impl Read, delimiter: u8, first_line: u64, file_name: &str, emit: &mut Emit<'_>) -> Result<()> {
    let skipped = SkippedLines::default();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(skipped.watch(text));
    let line = |p: &csv::Position| skipped.line(p) + first_line - 1;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = record.position().map(line);
                if !emit(Record::Cells {
                    line,
                    cells: Cells::Csv(&record),
                })? {
                    return Ok(());
                }
            }
            Err(e) => {
                let line = e.position().map(line);
                let reason = match e.kind() {
                    csv::ErrorKind::Utf8 { err, .. } => {
                        format!("invalid UTF-8 in field {}", err.field() + 1)
                    }
                    csv::ErrorKind::Io(io) => {
                        return Err(Error::io(format!("reading {file_name}"), clone_io(io)));
                    }
                    _ => e.to_string(),
                };
                if !emit(Record::Bad {
                    line,
                    reason,
                    raw: Vec::new(),
                })? {
                    return Ok(());
                }
            }
        }
    }
}

/// [`scan_delimited`] over a text in memory, with the same records, lines
/// and errors, faster: a record with no quote and no carriage return but
/// one before its line end is split where it lies (its fields borrowed
/// from `text`, no copy, one UTF-8 check for the line), which is what the
/// csv reader would make of it. At the first record with a quote, another
/// carriage return or invalid UTF-8, the csv reader reads the rest of the
/// text.
fn scan_delimited_text(
    text: &[u8],
    delimiter: u8,
    first_line: u64,
    file_name: &str,
    emit: &mut Emit<'_>,
) -> Result<()> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if !delimiter.is_ascii() || matches!(delimiter, b'"' | b'\r' | b'\n') || text.starts_with(BOM) {
        return scan_delimited(text, delimiter, first_line, file_name, emit);
    }
    let mut fields: Vec<&str> = Vec::new();
    // Where the next line starts, and its number.
    let (mut at, mut line) = (0, first_line);
    while at < text.len() {
        let rest = &text[at..];
        let line_text = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
        // A `\r` just before the line end ends the record as the `\n` does
        // (the reader then skips the `\n` as an empty line).
        let record = line_text.strip_suffix(b"\r").unwrap_or(line_text);
        let plain = memchr::memchr2(b'"', b'\r', record).is_none();
        let Some(record) = plain.then(|| std::str::from_utf8(record).ok()).flatten() else {
            return scan_delimited(&text[at..], delimiter, line, file_name, emit);
        };
        let record_line = line;
        at += line_text.len() + 1;
        line += 1;
        if record.is_empty() {
            continue;
        }
        fields.clear();
        let mut start = 0;
        for end in memchr::memchr_iter(delimiter, record.as_bytes()) {
            fields.push(&record[start..end]);
            start = end + 1;
        }
        fields.push(&record[start..]);
        if !emit(Record::Cells {
            line: Some(record_line),
            cells: Cells::Split(&fields),
        })? {
            return Ok(());
        }
    }
    Ok(())
}

/// Records made into rows of a table's batches (a batch each
/// `batch_size` rows), and the records that cannot be rows, each with its
/// place.
struct Rows<'t> {
    names: &'t [String],
    batch_size: usize,
    builder: RowBuilder,
    batches: Vec<RecordBatch>,
    /// Records taken, good and bad.
    records: u64,
    /// Rows made.
    good: u64,
    rejected: Vec<Rejected>,
}

/// A record that is no row.
struct Rejected {
    /// Its number among the records taken, from 1.
    record: u64,
    /// Rows made before it.
    good_before: u64,
    line: Option<u64>,
    reason: String,
    values: Vec<(String, Option<String>)>,
}

impl<'t> Rows<'t> {
    fn new(table: &'t TextTable) -> Self {
        Self {
            names: &table.names,
            batch_size: table.options.batch_size.max(1),
            builder: RowBuilder::new(&table.names, &table.types),
            batches: Vec::new(),
            records: 0,
            good: 0,
            rejected: Vec::new(),
        }
    }

    fn take(&mut self, record: Record<'_>) {
        self.records += 1;
        let width = self.names.len();
        let (line, reason, values) = match record {
            Record::Bad { line, reason, raw } => {
                let values = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("_raw{}", i + 1), Some(v)))
                    .collect();
                (line, reason, values)
            }
            Record::Cells { line, cells } if cells.len() != width => {
                let values = cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let name = self
                            .names
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("_extra{}", i + 1 - width));
                        (name, c.map(str::to_string))
                    })
                    .collect();
                (line, format!("expected {width} fields, found {}", cells.len()), values)
            }
            Record::Cells { line, cells } => match self.builder.push(line, cells.len(), |i| cells.get(i)) {
                Ok(()) => {
                    self.good += 1;
                    if self.builder.len() >= self.batch_size {
                        self.flush();
                    }
                    return;
                }
                Err(e) => {
                    let values = self
                        .names
                        .iter()
                        .cloned()
                        .zip(cells.iter().map(|c| c.map(str::to_string)))
                        .collect();
                    (line, e.to_string(), values)
                }
            },
        };
        self.rejected.push(Rejected {
            record: self.records,
            good_before: self.good,
            line,
            reason,
            values,
        });
    }

    /// Makes the rows not yet in a batch one.
    fn flush(&mut self) {
        if !self.builder.is_empty() {
            self.batches.push(self.builder.finish());
        }
    }
}

/// Where a table's rows go, in file order: batches to the scan, rejected
/// rows and counts to the report (when `report`), within `max_rows`.
struct Delivery<'a, 't> {
    table: &'t TextTable,
    report: bool,
    send: &'a mut dyn FnMut(RecordBatch) -> bool,
    /// Records and rows of the parts delivered whole.
    records: u64,
    good: u64,
    /// Rows counted in the table's stats.
    counted: u64,
}

impl Delivery<'_, '_> {
    /// Delivers what `rows` holds (they follow every record delivered
    /// before): `Ok(false)` once the receiver is gone.
    fn deliver(&mut self, rows: &mut Rows<'_>) -> Result<bool> {
        let max_rows = self.table.options.max_rows;
        for r in rows.rejected.drain(..) {
            // Past the limit, the run has already failed.
            if self.good + r.good_before > max_rows {
                break;
            }
            if self.report {
                self.table.ctx.stats.add_invalid(1);
                self.table.ctx.sink.reject(RejectedRow {
                    stage: Stage::Intake,
                    source: self.table.ctx.table.clone(),
                    row: self.records + r.record,
                    line: r.line,
                    reasons: vec![r.reason],
                    values: r.values,
                    failed: false,
                });
            }
        }
        if self.good + rows.good > max_rows {
            // The rows within the limit were read.
            if self.report {
                self.table.ctx.stats.add_rows(max_rows - self.counted);
            }
            return Err(Error::LimitExceeded {
                limit: Limit::MaxRows,
                message: format!("input table `{}` has more than {max_rows} rows", self.table.ctx.table),
            });
        }
        for batch in rows.batches.drain(..) {
            if self.table.ctx.cancel.is_cancelled() {
                return Err(Error::Canceled);
            }
            let n = batch.num_rows() as u64;
            if !(self.send)(batch) {
                return Ok(false);
            }
            if self.report {
                self.table.ctx.stats.add_rows(n);
                self.counted += n;
            }
        }
        Ok(true)
    }

    /// Delivers a whole part of the file, read on its own.
    fn deliver_part(&mut self, mut rows: Rows<'_>) -> Result<bool> {
        let going = self.deliver(&mut rows)?;
        self.records += rows.records;
        self.good += rows.good;
        Ok(going)
    }
}

/// The line ends the csv reader passes over before a record. The reader
/// gives a record the position its read started at, which is before the
/// empty lines it skips and, after a record it ended at a `\r`, at that
/// `\r\n`'s `\n`, which it has not counted as a line yet. A record is on
/// the line the reader says plus the `\n`s between that position and the
/// record's first byte, all in one run of line-end bytes.
#[derive(Debug, Default, Clone)]
struct SkippedLines(std::rc::Rc<std::cell::RefCell<LineEnds>>);

/// Runs of line-end bytes (`\r`, `\n`) as a [`LineWatch`] reads them.
#[derive(Debug, Default)]
struct LineEnds {
    /// The `\n`s read: (offset, its run's start, its run's end), the end
    /// [`OPEN`] while the run is still being read.
    newlines: std::collections::VecDeque<(u64, u64, u64)>,
    /// The start of the run still being read.
    open: Option<u64>,
    /// Where the last line-end byte read is.
    last: Option<u64>,
}

/// The end of a run not yet known.
const OPEN: u64 = u64::MAX;

impl LineEnds {
    /// Ends the open run at `end`.
    fn close(&mut self, end: u64) {
        if self.open.take().is_some() {
            for newline in self.newlines.iter_mut().rev().take_while(|n| n.2 == OPEN) {
                newline.2 = end;
            }
        }
    }
}

impl SkippedLines {
    /// `inner`, noting its runs of line ends as they are read.
    fn watch<R: Read>(&self, inner: R) -> LineWatch<R> {
        LineWatch {
            inner,
            offset: 0,
            lines: self.clone(),
        }
    }

    /// The physical line of a record (or error) at `position`. Positions
    /// come in order, so the runs before it are no longer needed.
    fn line(&self, position: &csv::Position) -> u64 {
        let at = position.byte();
        let mut ends = self.0.borrow_mut();
        while ends.newlines.front().is_some_and(|&(_, _, end)| end <= at) {
            ends.newlines.pop_front();
        }
        let skipped = ends
            .newlines
            .iter()
            .take_while(|&&(_, start, _)| start <= at)
            .filter(|&&(newline, ..)| newline >= at)
            .count();
        position.line() + skipped as u64
    }
}

/// A reader that notes in [`SkippedLines`] where its runs of line ends are.
struct LineWatch<R> {
    inner: R,
    offset: u64,
    lines: SkippedLines,
}

impl<R: Read> Read for LineWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = &buf[..n];
        let mut ends = self.lines.0.borrow_mut();
        for i in memchr::memchr2_iter(b'\r', b'\n', read) {
            let at = self.offset + i as u64;
            if ends.last.is_none_or(|last| last + 1 != at) {
                let end = ends.last.map_or(0, |last| last + 1);
                ends.close(end);
                ends.open = Some(at);
            }
            if read[i] == b'\n' {
                let start = ends.open.unwrap_or(at);
                ends.newlines.push_back((at, start, OPEN));
            }
            ends.last = Some(at);
        }
        self.offset += n as u64;
        // A run that does not reach the end of what was read has ended.
        if n == 0 || ends.last.is_some_and(|last| last + 1 != self.offset) {
            let end = ends.last.map_or(0, |last| last + 1);
            ends.close(end);
        }
        Ok(n)
    }
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// The cells of one JSON object in column order: strings as they are,
/// numbers and booleans as written, nested values as JSON text.
fn json_cells<'a>(
    object: &'a serde_json::Map<String, Value>,
    index: &KeyIndex<'_>,
    width: usize,
) -> Vec<Option<Cow<'a, str>>> {
    let mut cells = vec![None; width];
    for (k, v) in object {
        if let Some(&i) = index.get(k.as_str()) {
            cells[i] = match v {
                Value::Null => None,
                Value::String(s) => Some(Cow::Borrowed(s.as_str())),
                Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                Value::Number(n) => Some(Cow::Owned(n.to_string())),
                nested => Some(Cow::Owned(nested.to_string())),
            };
        }
    }
    cells
}

enum JsonEvent {
    /// The line the next object starts on.
    Line(u64),
    /// A line or element that is not a JSON object.
    Bad {
        line: Option<u64>,
        reason: String,
        raw: String,
    },
}

enum JsonStop {
    Io(std::io::Error),
    Error(Error),
}

impl From<Error> for JsonStop {
    fn from(e: Error) -> Self {
        JsonStop::Error(e)
    }
}

/// A line of a JSON Lines file: its text (trimmed), or, when it is not
/// UTF-8, why and its text.
type LineText<'a> = std::result::Result<&'a str, (String, String)>;

/// Calls `each` with the number and text of every non-blank line of a JSON
/// Lines text whose first line is line `first_line` of its file; stops when
/// `each` returns false.
fn for_each_json_line(
    mut reader: impl BufRead,
    first_line: u64,
    each: &mut dyn FnMut(u64, LineText<'_>) -> std::result::Result<bool, JsonStop>,
) -> std::result::Result<(), JsonStop> {
    let mut buf = Vec::with_capacity(4096);
    let mut line = first_line.saturating_sub(1);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(JsonStop::Io)?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => Ok(t.trim()),
            Err(e) => Err((
                format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
                String::from_utf8_lossy(&buf).trim().to_string(),
            )),
        };
        if !each(line, text)? {
            return Ok(());
        }
    }
}

fn scan_json_lines(
    reader: impl BufRead,
    object: &mut dyn FnMut(serde_json::Map<String, Value>) -> Result<bool>,
    event: &mut dyn FnMut(JsonEvent) -> Result<bool>,
) -> std::result::Result<(), JsonStop> {
    for_each_json_line(reader, 1, &mut |line, text| {
        let bad = |reason: String, raw: String| JsonEvent::Bad {
            line: Some(line),
            reason,
            raw,
        };
        let text = match text {
            Ok(t) => t,
            Err((reason, raw)) => return Ok(event(bad(reason, raw))?),
        };
        Ok(match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => event(JsonEvent::Line(line))? && object(map)?,
            Ok(other) => event(bad(
                format!("expected a JSON object, found {}", json_kind(&other)),
                text.to_string(),
            ))?,
            // The line is the row's own; serde's position within it is
            // only its column.
            Err(e) => event(bad(
                format!("invalid JSON: {} at column {}", json_reason(&e), e.column()),
                text.to_string(),
            ))?,
        })
    })
}

/// Reads a JSON Lines file's records as cells: each line is parsed straight
/// into the cells of its keys (a string without escapes borrowed from the
/// line), with no JSON value built per line. Cells, messages and rejected
/// rows are those the value-by-value reading gives.
fn scan_json_line_cells(
    reader: impl BufRead,
    first_line: u64,
    index: &KeyIndex<'_>,
    sample_rows: usize,
    emit: &mut Emit<'_>,
) -> std::result::Result<(), JsonStop> {
    for_each_json_line(reader, first_line, &mut |line, text| {
        let bad = |reason: String, raw: String| Record::Bad {
            line: Some(line),
            reason,
            raw: vec![raw],
        };
        let text = match text {
            Ok(t) => t,
            Err((reason, raw)) => return Ok(emit(bad(reason, raw))?),
        };
        Ok(match parse_line(text, index) {
            Ok(JsonLine::Cells(cells)) => emit(Record::Cells {
                line: Some(line),
                cells: Cells::Owned(cells),
            })?,
            Ok(JsonLine::Unknown(keys)) => {
                // As the object reads back: keys sorted, values compact.
                let raw = serde_json::from_str::<Value>(text).map_or_else(|_| text.to_string(), |v| v.to_string());
                emit(bad(
                    format!(
                        "keys not seen in the first {sample_rows} objects: {}",
                        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ),
                    raw,
                ))?
            }
            Ok(JsonLine::NotObject(kind)) => {
                emit(bad(format!("expected a JSON object, found {kind}"), text.to_string()))?
            }
            // The line is the row's own; serde's position within it is
            // only its column.
            Err(e) => emit(bad(
                format!("invalid JSON: {} at column {}", json_reason(&e), e.column()),
                text.to_string(),
            ))?,
        })
    })
}

/// One line of a JSON Lines file, parsed for its cells.
enum JsonLine<'a> {
    /// The cells of an object whose keys are all columns.
    Cells(Vec<Option<Cow<'a, str>>>),
    /// An object with keys that are not columns (sorted).
    Unknown(Vec<String>),
    /// Not an object: what it is.
    NotObject(&'static str),
}

fn parse_line<'a>(text: &'a str, index: &KeyIndex<'_>) -> serde_json::Result<JsonLine<'a>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let line = serde::Deserializer::deserialize_any(&mut de, LineVisitor { index })?;
    de.end()?;
    Ok(line)
}

struct LineVisitor<'i, 'k> {
    index: &'i KeyIndex<'k>,
}

impl<'de> serde::de::Visitor<'de> for LineVisitor<'_, '_> {
    type Value = JsonLine<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<JsonLine<'de>, A::Error> {
        let mut cells = vec![None; self.index.len()];
        let mut unknown: Vec<String> = Vec::new();
        while let Some(key) = map.next_key_seed(TextSeed)? {
            match self.index.get(key.as_ref()) {
                Some(&i) => cells[i] = map.next_value_seed(CellSeed)?,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    unknown.push(key.into_owned());
                }
            }
        }
        if unknown.is_empty() {
            Ok(JsonLine::Cells(cells))
        } else {
            unknown.sort();
            unknown.dedup();
            Ok(JsonLine::Unknown(unknown))
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<JsonLine<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(JsonLine::NotObject("an array"))
    }

    fn visit_unit<E>(self) -> std::result::Result<JsonLine<'de>, E> {
        Ok(JsonLine::NotObject("null"))
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<JsonLine<'de>, E> {
        Ok(JsonLine::NotObject("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<JsonLine<'de>, E> {
        Ok(JsonLine::NotObject("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<JsonLine<'de>, E> {
        Ok(JsonLine::NotObject("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<JsonLine<'de>, E> {
        Ok(JsonLine::NotObject("a number"))
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<JsonLine<'de>, E> {
        Ok(JsonLine::NotObject("a string"))
    }
}

/// A string borrowed from the line when it holds no escape.
struct TextSeed;

impl<'de> serde::de::DeserializeSeed<'de> for TextSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> std::result::Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> std::result::Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

/// A value as the text of its cell, as [`json_cells`] gives it: null is no
/// cell, a string its text, a number or boolean as JSON writes it, an array
/// or object as compact JSON.
struct CellSeed;

impl<'de> serde::de::DeserializeSeed<'de> for CellSeed {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> serde::de::Visitor<'de> for CellVisitor {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, b: bool) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(if b { "true" } else { "false" })))
    }

    fn visit_i64<E>(self, n: i64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(n.to_string())))
    }

    fn visit_u64<E>(self, n: u64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(n.to_string())))
    }

    fn visit_f64<E>(self, f: f64) -> std::result::Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(f).map(|n| Cow::Owned(n.to_string())))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(s)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Some(Cow::Owned(v.to_string())))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Some(Cow::Owned(v.to_string())))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Streams the elements of a top-level JSON array (or one top-level object)
/// without holding the whole document.
fn scan_json_array(
    reader: impl Read,
    object: &mut dyn FnMut(serde_json::Map<String, Value>) -> Result<bool>,
    event: &mut dyn FnMut(JsonEvent) -> Result<bool>,
) -> std::result::Result<(), JsonStop> {
    use serde::de::{Deserializer, SeqAccess, Visitor};

    struct Elements<'a> {
        object: &'a mut dyn FnMut(serde_json::Map<String, Value>) -> Result<bool>,
        event: &'a mut dyn FnMut(JsonEvent) -> Result<bool>,
        failure: Option<Error>,
    }

    impl<'de> Visitor<'de> for &mut Elements<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            let mut index = 0u64;
            while let Some(v) = seq.next_element::<Value>()? {
                index += 1;
                let go = match v {
                    Value::Object(map) => (self.object)(map),
                    other => (self.event)(JsonEvent::Bad {
                        line: None,
                        reason: format!("element {index}: expected a JSON object, found {}", json_kind(&other)),
                        raw: other.to_string(),
                    }),
                };
                match go {
                    Ok(true) => {}
                    Ok(false) => return Err(serde::de::Error::custom(STOP)),
                    Err(e) => {
                        self.failure = Some(e);
                        return Err(serde::de::Error::custom(STOP));
                    }
                }
            }
            Ok(())
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<(), A::Error> {
            let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            if let Value::Object(map) = value {
                match (self.object)(map) {
                    Ok(_) => {}
                    Err(e) => self.failure = Some(e),
                }
            }
            Ok(())
        }
    }

    use serde::Deserialize;
    const STOP: &str = "\u{0}weir-stop";
    let mut elements = Elements {
        object,
        event,
        failure: None,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let result = (&mut de).deserialize_any(&mut elements);
    if let Some(e) = elements.failure {
        return Err(JsonStop::Error(e));
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().starts_with(STOP) => Ok(()),
        Err(e) if e.is_io() => Err(JsonStop::Io(std::io::Error::other(e.to_string()))),
        Err(e) => {
            (elements.event)(JsonEvent::Bad {
                line: Some(e.line() as u64),
                reason: format!("invalid JSON, the rest of the file could not be read: {e}"),
                raw: String::new(),
            })?;
            Ok(())
        }
    }
}

impl PartitionStream for TextTable {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let tx = builder.tx();
        let report = !self.scanned.swap(true, Ordering::SeqCst);
        let table = TextTable {
            path: self.path.clone(),
            kind: self.kind,
            detected: self.detected,
            header: self.header,
            keys: self.keys.clone(),
            ctx: self.ctx.clone(),
            schema: self.schema.clone(),
            types: self.types.clone(),
            names: self.names.clone(),
            options: self.options.clone(),
            scanned: AtomicBool::new(true),
        };
        builder.spawn_blocking(move || {
            let result = table.read(report, &mut |batch| tx.blocking_send(Ok(batch)).is_ok());
            result.map_err(|e| {
                if !matches!(e, Error::Canceled) {
                    table.ctx.stats.fail();
                }
                datafusion::error::DataFusionError::External(Box::new(e))
            })
        });
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a scan emits, record by record, as text to compare.
    fn emitted(scan: &dyn Fn(&[u8], &mut Emit<'_>) -> Result<()>, text: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let result = scan(text, &mut |record| {
            out.push(match record {
                Record::Cells { line, cells } => format!("{line:?} {:?}", cells.iter().collect::<Vec<_>>()),
                Record::Bad { line, reason, raw } => format!("{line:?} bad: {reason} {raw:?}"),
            });
            Ok(true)
        });
        if let Err(e) = result {
            out.push(format!("error: {e}"));
        }
        out
    }

    /// The in-memory splitter emits what the csv reader emits: the same
    /// records with the same lines, the same bad records, on texts of
    /// plain lines, blank lines, quotes, carriage returns, invalid UTF-8
    /// and a BOM, in every order.
    #[test]
    fn splitting_in_place_reads_what_the_csv_reader_reads() {
        let reader = |text: &[u8], emit: &mut Emit<'_>| scan_delimited(text, b',', 7, "f.csv", emit);
        let split = |text: &[u8], emit: &mut Emit<'_>| scan_delimited_text(text, b',', 7, "f.csv", emit);
        let mut texts: Vec<Vec<u8>> = [
            &b""[..],
            b"a,b\nc,d\n",
            b"a,b\nc,d",
            b"\n\na\n\nb,,\n",
            b"a\r\nb\r\n\r\nc\n",
            b"a,\"b\nc\",d\ne,f\n",
            b"x\ny\"z\nw\n",
            b"\xEF\xBB\xBFa,b\nc\n",
            b"a,\xC3\xA9\nb,\xFF\nc\n",
            b",\n,,\n",
            b"a\rb\nc\n",
            b"a,b\r\nc,d\r\n",
            b"a\r\n\r\n\r\nb\r\n\nc\r",
            b"a\r\r\nb\r\n",
            b"\r\n\ra\r\n",
        ]
        .iter()
        .map(|t| t.to_vec())
        .collect();
        let alphabet: &[&[u8]] = &[
            b"a",
            b"a",
            b"a",
            b"bc",
            b",",
            b",",
            b"\n",
            b"\n",
            b"\n",
            b"\"",
            b"\r",
            b"\xC3\xA9",
            b"\xFF",
        ];
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..20_000 {
            let mut text = Vec::new();
            let len = crate::xorshift(&mut state) % 40;
            // Half the texts are plain for a while, then anything; half of
            // each end their lines with `\r\n`.
            let plain = state >> 32 & 1 == 0;
            let crlf = state >> 33 & 1 == 0;
            for i in 0..len {
                crate::xorshift(&mut state);
                let choices = if plain && i < len / 2 { 7 } else { alphabet.len() as u64 };
                match alphabet[(state % choices) as usize] {
                    b"\n" if crlf => text.extend_from_slice(b"\r\n"),
                    piece => text.extend_from_slice(piece),
                }
            }
            texts.push(text);
        }
        for text in &texts {
            assert_eq!(
                emitted(&split, text),
                emitted(&reader, text),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_json_line_parsed_for_its_cells_gives_what_its_value_gives() {
        let keys = ["a", "b", "c"];
        let index: KeyIndex<'_> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        for line in [
            r#"{"a":"plain","b":"esc\"aped\u00e9\n","c":null}"#,
            r#"{"a":1,"b":-0,"c":1.0}"#,
            r#"{"a":1e3,"b":2.50,"c":-12.5e-3}"#,
            r#"{"a":18446744073709551615,"b":-9223372036854775808,"c":123456789012345678901234}"#,
            r#"{"a":true,"b":false}"#,
            r#"{"a":{"z":1,"y":[1,{"x":"q"}]},"b":[],"c":{}}"#,
            r#"{ "c" : "spaced" , "a" : [ 1 , 2 ] }"#,
            r#"{"a":"first","a":"last"}"#,
            r#"{}"#,
        ] {
            let Ok(JsonLine::Cells(fast)) = parse_line(line, &index) else {
                panic!("{line}: not read as cells");
            };
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
                panic!("{line}: not an object");
            };
            assert_eq!(fast, json_cells(&object, &index, keys.len()), "{line}");
        }
        // Unknown keys are named sorted, once; what is not an object says what it is.
        assert!(matches!(
            parse_line(r#"{"z":1,"a":2,"y":3,"z":4}"#, &index),
            Ok(JsonLine::Unknown(k)) if k == ["y", "z"]
        ));
        for (line, kind) in [
            ("[1,2]", "an array"),
            ("\"s\"", "a string"),
            ("3", "a number"),
            ("null", "null"),
        ] {
            assert!(
                matches!(parse_line(line, &index), Ok(JsonLine::NotObject(k)) if k == kind),
                "{line}"
            );
        }
        // Errors are serde's own, with their column.
        for line in [r#"{"a":1"#, r#"{"a":1} x"#, r#"{"a":nul}"#] {
            let fast = parse_line(line, &index).err().map(|e| (e.to_string(), e.column()));
            let slow = serde_json::from_str::<Value>(line)
                .err()
                .map(|e| (e.to_string(), e.column()));
            assert_eq!(fast, slow, "{line}");
            assert!(fast.is_some(), "{line}");
        }
    }

    #[test]
    fn records_after_crlf_and_empty_lines_are_on_their_physical_lines() {
        for text in [
            "\n\na,b\n1,2\n\n\n3,\"x\ny\"\n4,5\n",
            "\r\na,b\r\n\r\n1,2\r\n\n\r\n3,\"x\r\ny\"\r\n\r\n4,5",
            "a,b\n1,2\n3,\"x\ny\"\n4,5\n",
            "a,b\r\n1,2\r\n3,\"x\r\ny\"\r\n4,5\r\n",
            "a,b\r\n1,2\n3,\"x\ny\"\r\n4,5\n",
        ] {
            // Read whole, and a byte a read (a \r\n split across reads).
            for one_at_a_time in [false, true] {
                let source: Box<dyn Read> = if one_at_a_time {
                    Box::new(OneByte(text.as_bytes()))
                } else {
                    Box::new(text.as_bytes())
                };
                let skipped = SkippedLines::default();
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(skipped.watch(source));
                let lines: Vec<u64> = reader
                    .records()
                    .map(|r| r.map_or(0, |r| r.position().map_or(0, |p| skipped.line(p))))
                    .collect();
                // Each record's line is where its first byte is.
                let expected: Vec<u64> = ["a,b", "1,2", "3,", "4,5"]
                    .iter()
                    .filter_map(|start| text.find(start))
                    .map(|at| 1 + text[..at].matches('\n').count() as u64)
                    .collect();
                assert_eq!(lines, expected, "{text:?}, a byte a read: {one_at_a_time}");
            }
        }
    }

    /// A reader that gives one byte a read.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }
}
