//! The two artifacts a person reads after a run (SPEC §3.7, "Report"):
//! `rejected.csv` and `report.xlsx`.
//!
//! [`RejectedWriter`] streams every row that did not make it (invalid at
//! intake, rejected by a transform, invalid variables, not loaded) to
//! `rejected.csv` as the run goes. [`ReportBuilder`] collects, per scope or
//! input table, a bounded number of rows with their status and errors,
//! and writes `report.xlsx` at the end with a summary sheet drawn
//! from the [`Execution`] document.
//!
//! This module only presents: it must not decide whether a row is valid,
//! compute the run's counts (it reads them from the execution document), or
//! touch the SQL output CSVs (that is [`crate::output`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use rust_xlsxwriter::{ColNum, Format, RowNum, Workbook, Worksheet, XlsxError};
use serde::Serialize;

use crate::error::{Error, Result, Stage};
use crate::execution::{Execution, StepProgress};

/// The columns of `rejected.csv`.
const REJECTED_HEADER: [&str; 6] = ["stage", "source", "row", "line", "reasons", "values"];

/// Excel's longest cell text, in UTF-16 code units.
const MAX_CELL_TEXT: usize = 32_767;

/// Excel's longest sheet name, in UTF-16 code units.
const MAX_SHEET_NAME: usize = 31;

/// Excel's last row index (0-based); row 0 is the header.
const MAX_ROW: usize = 1_048_575;

/// Excel's column count.
const MAX_COLUMNS: usize = 16_384;

/// The columns every row sheet starts with, before the data columns.
const ROW_SHEET_COLUMNS: [&str; 4] = ["row", "line", "status", "errors"];

/// The columns of the summary's table of stages; the count columns match
/// [`stage_items`].
const STAGE_HEADER: [&str; 12] = [
    "Stage", "Status", "Item", "Rows", "Rows out", "Valid", "Invalid", "Rejected", "Created", "Updated", "Skipped",
    "Failed",
];

/// The name of the first sheet.
const SUMMARY_SHEET: &str = "Summary";

/// One row that did not make it: invalid at intake, rejected by a transform,
/// invalid variables, or not loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// Where it was stopped: `Intake`, `Transform`, `Variables` or `Load`.
    pub stage: Stage,
    /// The input table name for intake, the scope name otherwise.
    pub source: String,
    /// 1-based row number within the table or scope (for intake: the data
    /// row number).
    pub row: u64,
    /// Line number in the input file, when known (intake).
    pub line: Option<u64>,
    /// Why, for a person, e.g. ``email: `x` is not a valid e-mail address``.
    pub reasons: Vec<String>,
    /// The row's columns as text, in column order (`None` = null).
    pub values: Vec<(String, Option<String>)>,
    /// The row failed to load (an error), rather than being left out by
    /// a rule's `do_not_upload`: the load stage counts it as failed.
    pub failed: bool,
}

impl RejectedRow {
    /// The report status of a row stopped at this row's stage.
    fn status(&self) -> &'static str {
        match self.stage {
            Stage::Intake | Stage::Variables => "invalid",
            Stage::Transform => "rejected",
            // The words of the load stage's counts in the summary.
            Stage::Load if self.failed => "failed",
            Stage::Load => "skipped",
            Stage::Sql | Stage::Report => "failed",
        }
    }
}

/// The values of a batch's rows as a report shows them (column name →
/// text, null as `None`), for rows that are rejected.
pub(crate) struct RowValues<'a> {
    batch: &'a RecordBatch,
    names: Vec<String>,
    formatters: Vec<ArrayFormatter<'a>>,
}

impl<'a> RowValues<'a> {
    /// Formatters for every column of `batch`.
    pub(crate) fn new(batch: &'a RecordBatch) -> Result<Self> {
        let options = FormatOptions::default();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).map_err(|e| Error::Internal(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let names = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        Ok(Self {
            batch,
            names,
            formatters,
        })
    }

    /// The values of row `row`.
    pub(crate) fn row(&self, row: usize) -> Vec<(String, Option<String>)> {
        self.names
            .iter()
            .zip(&self.formatters)
            .zip(self.batch.columns())
            .map(|((n, f), c)| (n.clone(), (!c.is_null(row)).then(|| f.value(row).to_string())))
            .collect()
    }
}

/// Streams rejected rows to `rejected.csv`.
///
/// Columns: `stage,source,row,line,reasons,values`, then one column per
/// value name met (in the order met), so the file opens and filters in a
/// spreadsheet as it is. `line` is empty when unknown, `reasons` are joined
/// with `"; "`, and `values` is the same values as a JSON object
/// `{"col":"text"|null}` with keys in column order, for programs. Rows are
/// streamed as they come; [`RejectedWriter::finish`] spreads the values
/// into their columns and starts the file with a UTF-8 byte order mark
/// (which spreadsheets read as "this is UTF-8"). The file always exists
/// after `finish`, with its header, even when no row was rejected; a run
/// stopped before `finish` leaves the streamed rows without the spread.
#[derive(Debug)]
pub struct RejectedWriter {
    path: PathBuf,
    writer: csv::Writer<File>,
    count: u64,
    /// Every value name met, in the order met.
    names: Vec<String>,
    known: HashSet<String>,
}

impl RejectedWriter {
    /// Creates the file at `path` (and its parent directories) and writes
    /// the header.
    pub fn create(path: &Path) -> Result<Self> {
        create_parent(path)?;
        let file = File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut writer = csv::WriterBuilder::new().buffer_capacity(1 << 16).from_writer(file);
        writer.write_record(REJECTED_HEADER).map_err(|e| csv_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            count: 0,
            names: Vec::new(),
            known: HashSet::new(),
        })
    }

    /// Appends one rejected row.
    pub fn write(&mut self, row: &RejectedRow) -> Result<()> {
        let number = row.row.to_string();
        let line = row.line.map(|l| l.to_string()).unwrap_or_default();
        let reasons = row.reasons.join("; ");
        let values = values_json(&row.values)?;
        for (name, _) in &row.values {
            if !self.known.contains(name) {
                self.known.insert(name.clone());
                self.names.push(name.clone());
            }
        }
        self.writer
            .write_record([
                row.stage.as_str(),
                row.source.as_str(),
                number.as_str(),
                line.as_str(),
                reasons.as_str(),
                values.as_str(),
            ])
            .map_err(|e| csv_error(&self.path, e))?;
        self.count += 1;
        Ok(())
    }

    /// Rows written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the file whole: the streamed rows with their values spread
    /// into columns, behind a byte order mark.
    /// Spreading is presentation only: when it cannot be done (a full
    /// disk), the streamed file stays as it is, whole, and the run goes on.
    pub fn finish(mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
        let spread = self.path.with_extension("csv.spread");
        let result = self
            .spread(&spread)
            .and_then(|()| std::fs::rename(&spread, &self.path).map_err(|e| Error::io("renaming rejected.csv", e)));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&spread);
            tracing::warn!(error = %e, "rejected.csv keeps its values in the `values` column only");
        }
        Ok(())
    }

    fn spread(&self, to: &Path) -> Result<()> {
        let file = File::create(to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all("\u{feff}".as_bytes())
            .map_err(|e| Error::io(format!("writing {}", to.display()), e))?;
        let mut writer = csv::WriterBuilder::new().from_writer(out);
        // A value column named like a fixed one is told apart.
        let mut header: Vec<String> = REJECTED_HEADER.iter().map(|h| h.to_string()).collect();
        header.extend(self.names.iter().map(|n| {
            if REJECTED_HEADER.contains(&n.as_str()) {
                format!("{n} (value)")
            } else {
                n.clone()
            }
        }));
        writer.write_record(&header).map_err(|e| csv_error(to, e))?;
        let mut reader = csv::Reader::from_path(&self.path).map_err(|e| csv_error(&self.path, e))?;
        let index: HashMap<&str, usize> = self.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        for record in reader.records() {
            let record = record.map_err(|e| csv_error(&self.path, e))?;
            let mut cells: Vec<String> = vec![String::new(); self.names.len()];
            let values: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(record.get(5).unwrap_or("{}")).unwrap_or_default();
            for (name, value) in values {
                if let (Some(&i), Some(text)) = (index.get(name.as_str()), value.as_str()) {
                    cells[i] = spreadsheet_safe(text);
                }
            }
            let fixed = record.iter().take(REJECTED_HEADER.len());
            writer
                .write_record(fixed.chain(cells.iter().map(String::as_str)))
                .map_err(|e| csv_error(to, e))?;
        }
        writer
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", to.display()), e.into_error()))?
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", to.display()), e.into_error()))?
            .sync_all()
            .map_err(|e| Error::io(format!("writing {}", to.display()), e))
    }
}

/// A value as a spreadsheet cell that is never run as a formula: text that
/// a spreadsheet would read as one (`=`, `+`, `@`, a tab or carriage
/// return, or `-` not starting a number) gets a leading `'`. The `values`
/// column keeps the value as it was.
fn spreadsheet_safe(text: &str) -> String {
    let mut chars = text.chars();
    let formula = match chars.next() {
        Some('=' | '+' | '@' | '\t' | '\r') => true,
        Some('-') => !chars.next().is_some_and(|c| c.is_ascii_digit() || c == '.'),
        _ => false,
    };
    if formula { format!("'{text}") } else { text.to_string() }
}

/// `{"col":"text"|null,…}` with keys in the given order (a JSON map would
/// sort or hash them).
fn values_json(values: &[(String, Option<String>)]) -> Result<String> {
    let json =
        |text: &str| serde_json::to_string(text).map_err(|e| Error::Internal(format!("encoding a rejected row: {e}")));
    let mut out = String::from("{");
    for (i, (name, value)) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json(name.as_str())?);
        out.push(':');
        match value {
            Some(value) => out.push_str(&json(value.as_str())?),
            None => out.push_str("null"),
        }
    }
    out.push('}');
    Ok(out)
}

/// One row of a row sheet.
#[derive(Debug, Clone)]
struct ReportRow {
    /// Order of arrival within the sheet, to show kept rows in that order.
    seq: u64,
    /// The row number shown in the `row` column.
    row: u64,
    /// The line of the input file it came from, when known.
    line: Option<u64>,
    status: String,
    errors: String,
    values: Vec<Option<String>>,
}

/// The rows kept for one sheet, and what was left out.
#[derive(Debug, Clone)]
struct SheetRows {
    /// The scope or input table name, as given.
    name: String,
    columns: Vec<String>,
    column_index: HashMap<String, usize>,
    /// The columns whose values are numbers: written as number cells.
    /// Every other value is text as it was read (a zip code `94107` as
    /// much as `01002`).
    numeric: std::collections::HashSet<usize>,
    /// Rows added so far (kept or not).
    added: u64,
    /// Kept rows with status `ok`.
    ok: Vec<ReportRow>,
    /// Kept rows with any other status.
    problems: Vec<ReportRow>,
    /// Rows not kept because of the cap.
    dropped: u64,
    /// Of those, rows whose status is not `ok`.
    dropped_problems: u64,
}

impl SheetRows {
    fn new(name: &str, columns: Vec<String>) -> Self {
        let mut sheet = Self {
            name: name.to_string(),
            columns: Vec::new(),
            column_index: HashMap::new(),
            numeric: std::collections::HashSet::new(),
            added: 0,
            ok: Vec::new(),
            problems: Vec::new(),
            dropped: 0,
            dropped_problems: 0,
        };
        for column in columns {
            sheet.column(&column);
        }
        sheet
    }

    /// The index of column `name`, adding it after the known ones if new.
    fn column(&mut self, name: &str) -> usize {
        if let Some(&i) = self.column_index.get(name) {
            return i;
        }
        let i = self.columns.len();
        self.columns.push(name.to_string());
        self.column_index.insert(name.to_string(), i);
        i
    }

    /// Keeps `row` if there is room. When the sheet is full, a row with a
    /// problem takes the place of the latest `ok` row, so that the rows a
    /// person must look at are the last to be left out.
    fn push(&mut self, max_rows: usize, row: ReportRow) {
        let is_problem = row.status != "ok";
        if self.ok.len() + self.problems.len() < max_rows {
            if is_problem {
                self.problems.push(row);
            } else {
                self.ok.push(row);
            }
        } else if is_problem && self.ok.pop().is_some() {
            self.problems.push(row);
            self.dropped += 1;
        } else {
            self.dropped += 1;
            if is_problem {
                self.dropped_problems += 1;
            }
        }
    }

    /// Kept rows by row number (rows of a scope reach the report from
    /// several stages, each in its own order), then in order of arrival.
    fn rows(&self) -> Vec<&ReportRow> {
        let mut rows: Vec<&ReportRow> = self.ok.iter().chain(&self.problems).collect();
        rows.sort_by_key(|r| (r.row, r.seq));
        rows
    }

    fn kept(&self) -> usize {
        self.ok.len() + self.problems.len()
    }
}

/// Collects what `report.xlsx` shows and writes it at the end.
///
/// Memory is bounded by `max_rows_per_sheet` rows per sheet; rows beyond it
/// are counted, and the summary says how many are not shown.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    max_rows: usize,
    sheets: Vec<SheetRows>,
    index: HashMap<String, usize>,
    /// The input file's name, as it was uploaded.
    source_name: Option<String>,
}

impl ReportBuilder {
    /// A report keeping at most `max_rows_per_sheet` rows per sheet (the rest
    /// are counted, and the summary says so). Excel's own limit of 1,048,575
    /// data rows applies on top.
    pub fn new(max_rows_per_sheet: usize) -> Self {
        Self {
            max_rows: max_rows_per_sheet.min(MAX_ROW),
            sheets: Vec::new(),
            index: HashMap::new(),
            source_name: None,
        }
    }

    /// The report names the input file by `name` (its id beside it).
    pub fn with_source_name(mut self, name: Option<String>) -> Self {
        self.source_name = name;
        self
    }

    /// Declares the columns of the sheet of a scope or input table. Call it
    /// before adding rows to the sheet; the order of declarations is the
    /// order of sheets. Declaring a sheet again adds the columns it did not
    /// have yet.
    pub fn add_sheet(&mut self, name: &str, columns: Vec<String>) {
        match self.index.get(name) {
            Some(&i) => {
                for column in columns {
                    self.sheets[i].column(&column);
                }
            }
            None => {
                self.index.insert(name.to_string(), self.sheets.len());
                self.sheets.push(SheetRows::new(name, columns));
            }
        }
    }

    /// Marks `columns` of sheet `name` as numbers: their values are
    /// written as number cells. Values of other columns are text.
    pub fn numeric_columns<'a>(&mut self, name: &str, columns: impl IntoIterator<Item = &'a str>) {
        let i = self.sheet(name);
        let sheet = &mut self.sheets[i];
        for column in columns {
            let c = sheet.column(column);
            sheet.numeric.insert(c);
        }
    }

    /// Adds one row to sheet `name` with its status (`invalid`, `rejected`,
    /// `skipped`, `failed` or `ok`), errors, and values aligned
    /// with the sheet's columns. Its `row` number is its position among the
    /// rows added to the sheet (1-based), which is the row number within the
    /// scope when every row of the scope is added; use
    /// [`ReportBuilder::add_row_at`] otherwise. An undeclared sheet is
    /// declared on the way; values beyond the declared columns get columns
    /// named `_5`, `_6`, … by position.
    pub fn add_row(&mut self, name: &str, status: &str, errors: &[String], values: Vec<Option<String>>) {
        self.push_row(name, None, None, status, errors, values);
    }

    /// Like [`ReportBuilder::add_row`], with the row number to show (1-based,
    /// within the scope or table).
    pub fn add_row_at(&mut self, name: &str, row: u64, status: &str, errors: &[String], values: Vec<Option<String>>) {
        self.push_row(name, Some(row), None, status, errors, values);
    }

    /// Adds a [`RejectedRow`] to the sheet named by its `source` (declaring
    /// the sheet with the row's value names if needed), matching values to
    /// columns by name. The status follows the stage: intake and variables →
    /// `invalid`, transform → `rejected`, load → `skipped`.
    pub fn add_rejected(&mut self, row: &RejectedRow) {
        let i = self.sheet(&row.source);
        let sheet = &mut self.sheets[i];
        let mut values: Vec<Option<String>> = vec![None; sheet.columns.len()];
        for (name, value) in &row.values {
            let column = sheet.column(name);
            if column >= values.len() {
                values.resize(column + 1, None);
            }
            values[column] = value.clone();
        }
        self.push_row(&row.source, Some(row.row), row.line, row.status(), &row.reasons, values);
    }

    /// The index of sheet `name`, declaring it without columns if new.
    fn sheet(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.add_sheet(name, Vec::new());
        self.sheets.len() - 1
    }

    fn push_row(
        &mut self,
        name: &str,
        row: Option<u64>,
        line: Option<u64>,
        status: &str,
        errors: &[String],
        values: Vec<Option<String>>,
    ) {
        let i = self.sheet(name);
        let max_rows = self.max_rows;
        let sheet = &mut self.sheets[i];
        sheet.added += 1;
        for extra in sheet.columns.len()..values.len() {
            sheet.column(&format!("_{}", ROW_SHEET_COLUMNS.len() + extra + 1));
        }
        let row = ReportRow {
            seq: sheet.added,
            row: row.unwrap_or(sheet.added),
            line,
            status: status.to_string(),
            errors: errors.join("; "),
            values,
        };
        sheet.push(max_rows, row);
    }

    /// Writes `report.xlsx` at `path` (creating parent directories): a
    /// `Summary` sheet (the execution, its error if any, every stage's counts
    /// from `exec.step_progress`, and every row sheet with how many of its
    /// rows are not shown), then one sheet per declared sheet with columns
    /// `row`, `status`, `errors` and the data columns; header row
    /// bold and frozen, with an autofilter. Sheet names are made valid for
    /// Excel (at most 31 characters, none of `[]:*?/\`, unique regardless of
    /// case).
    pub fn write(&self, exec: &Execution, path: &Path) -> Result<()> {
        create_parent(path)?;
        self.build(exec, path).map_err(|e| xlsx_error(path, e))
    }

    fn build(&self, exec: &Execution, path: &Path) -> Result<(), XlsxError> {
        let names = sheet_names(self.sheets.iter().map(|s| s.name.as_str()));
        let bold = Format::new().set_bold();
        let mut workbook = Workbook::new();

        let summary = workbook.add_worksheet();
        summary.set_name(SUMMARY_SHEET)?;
        self.write_summary(summary, exec, &names, &bold)?;

        for (sheet, name) in self.sheets.iter().zip(&names) {
            let worksheet = workbook.add_worksheet();
            worksheet.set_name(name.as_str())?;
            write_row_sheet(worksheet, sheet, &bold)?;
        }
        workbook.save(path)
    }

    fn write_summary(
        &self,
        ws: &mut Worksheet,
        exec: &Execution,
        names: &[String],
        bold: &Format,
    ) -> Result<(), XlsxError> {
        let mut row: RowNum = 0;
        ws.write_string_with_format(row, 0, "Weir execution report", bold)?;
        row += 2;

        let mut pairs: Vec<(&str, Value)> = vec![
            ("Execution", Value::Text(exec.id.clone())),
            ("Connector", Value::Text(exec.connector.api_name.clone())),
        ];
        if let Some(version) = exec.connector.version {
            pairs.push(("Connector version", Value::Number(f64::from(version))));
        }
        pairs.push(("Status", Value::Text(exec.status.as_str().to_string())));
        pairs.push(("Trigger", Value::Text(wire_name(&exec.trigger_type))));
        pairs.push((
            "Dry run",
            Value::Text(if exec.is_dry_run { "yes" } else { "no" }.to_string()),
        ));
        // A person knows the file by its name; the id finds it in the API.
        if let Some(name) = &self.source_name {
            pairs.push(("Source file", Value::Text(name.clone())));
        }
        if let Some(source) = &exec.source_file_id {
            pairs.push(("Source file id", Value::Text(source.clone())));
        }
        pairs.push(("Started", Value::Text(timestamp(exec.started_at))));
        pairs.push(("Ended", Value::Text(timestamp(exec.ended_at))));
        if let Some(started) = exec.started_at {
            let ended = exec.ended_at.unwrap_or_else(Utc::now);
            let millis = (ended - started).num_milliseconds().max(0);
            pairs.push((
                "Duration",
                Value::Text(format!("{}.{:03} s", millis / 1000, millis % 1000)),
            ));
        }
        pairs.push((
            "Rows invalid, rejected or not loaded",
            Value::Number(exec.invalid_rows() as f64),
        ));
        if let Some(error) = &exec.error {
            pairs.push(("Error stage", Value::Text(error.stage.as_str().to_string())));
            pairs.push(("Error code", Value::Text(error.code.as_str().to_string())));
            pairs.push(("Error message", Value::Text(error.message.clone())));
            if let Some(line) = error.line {
                pairs.push(("Error line", Value::Number(line as f64)));
            }
            if let Some(column) = error.column {
                pairs.push(("Error column", Value::Number(column as f64)));
            }
            if let Some(plugin) = &error.plugin {
                pairs.push(("Error plugin", Value::Text(plugin.clone())));
            }
        }
        for (label, value) in pairs {
            ws.write_string_with_format(row, 0, label, bold)?;
            match value {
                Value::Text(text) => write_text(ws, row, 1, &text)?,
                Value::Number(n) => {
                    ws.write_number(row, 1, n)?;
                }
            }
            row += 1;
        }
        row += 1;

        write_header(ws, row, &STAGE_HEADER, bold)?;
        row += 1;
        for progress in &exec.step_progress {
            let stage = progress.stage().as_str();
            let status = wire_name(&progress.status());
            let items = stage_items(progress);
            if items.is_empty() {
                ws.write_string(row, 0, stage)?;
                ws.write_string(row, 1, status.as_str())?;
                row += 1;
            }
            for (item, counts) in items {
                ws.write_string(row, 0, stage)?;
                ws.write_string(row, 1, status.as_str())?;
                write_text(ws, row, 2, &item)?;
                for (col, count) in (3..).zip(counts) {
                    if let Some(count) = count {
                        ws.write_number(row, col, count as f64)?;
                    }
                }
                row += 1;
            }
        }
        row += 1;

        write_header(
            ws,
            row,
            &["Sheet", "Source", "Rows shown", "Rows not shown", "Note"],
            bold,
        )?;
        row += 1;
        for (sheet, name) in self.sheets.iter().zip(names) {
            write_text(ws, row, 0, name)?;
            write_text(ws, row, 1, &sheet.name)?;
            ws.write_number(row, 2, sheet.kept() as f64)?;
            ws.write_number(row, 3, sheet.dropped as f64)?;
            if sheet.dropped > 0 {
                let note = format!(
                    "only {} rows are kept per sheet, rows with errors first: {} more rows are not shown, \
                     {} of them with a status other than ok; rejected.csv lists every rejected row",
                    self.max_rows, sheet.dropped, sheet.dropped_problems
                );
                write_text(ws, row, 4, &note)?;
            }
            row += 1;
        }

        for (col, width) in [(0, 36.0), (1, 38.0), (2, 28.0)] {
            ws.set_column_width(col, width)?;
        }
        for col in 3..12 {
            ws.set_column_width(col, 10.0)?;
        }
        Ok(())
    }
}

/// A summary value.
enum Value {
    Text(String),
    Number(f64),
}

/// The items of a stage and their counts, in the summary's count columns:
/// rows, rows out, valid, invalid, rejected, created, updated, skipped,
/// failed.
fn stage_items(progress: &StepProgress) -> Vec<(String, [Option<u64>; 9])> {
    match progress {
        StepProgress::Intake { tables, .. } => tables
            .iter()
            .map(|t| {
                (
                    t.table.clone(),
                    [Some(t.rows), None, None, Some(t.invalid), None, None, None, None, None],
                )
            })
            .collect(),
        StepProgress::Sql { scopes, .. } => scopes
            .iter()
            .map(|s| {
                (
                    s.scope.clone(),
                    [Some(s.rows), None, None, None, None, None, None, None, None],
                )
            })
            .collect(),
        StepProgress::Transform { steps, .. } => steps
            .iter()
            .map(|s| {
                (
                    format!("{} · {}", s.scope, s.plugin),
                    [
                        Some(s.rows_in),
                        Some(s.rows_out),
                        None,
                        None,
                        Some(s.rejected),
                        None,
                        None,
                        None,
                        None,
                    ],
                )
            })
            .collect(),
        StepProgress::Variables { scopes, .. } => scopes
            .iter()
            .map(|s| {
                (
                    s.scope.clone(),
                    [
                        Some(s.total),
                        None,
                        Some(s.valid),
                        Some(s.invalid),
                        None,
                        None,
                        None,
                        None,
                        None,
                    ],
                )
            })
            .collect(),
        StepProgress::Load { steps, .. } => steps
            .iter()
            .map(|s| {
                (
                    format!("{}. {} → {}", s.order, s.scope, s.object),
                    [
                        Some(s.total),
                        None,
                        None,
                        None,
                        None,
                        Some(s.created),
                        Some(s.updated),
                        Some(s.skipped),
                        Some(s.failed),
                    ],
                )
            })
            .collect(),
    }
}

/// Writes one row sheet: header, kept rows, frozen header, autofilter.
fn write_row_sheet(ws: &mut Worksheet, sheet: &SheetRows, bold: &Format) -> Result<(), XlsxError> {
    let data_columns = sheet.columns.len().min(MAX_COLUMNS - ROW_SHEET_COLUMNS.len());
    let mut header: Vec<&str> = ROW_SHEET_COLUMNS.to_vec();
    header.extend(sheet.columns[..data_columns].iter().map(String::as_str));
    write_header(ws, 0, &header, bold)?;

    let rows = sheet.rows();
    for (r, report_row) in (1..).zip(&rows) {
        ws.write_number(r, 0, report_row.row as f64)?;
        if let Some(line) = report_row.line {
            ws.write_number(r, 1, line as f64)?;
        }
        write_text(ws, r, 2, &report_row.status)?;
        write_text(ws, r, 3, &report_row.errors)?;
        for (i, value) in report_row.values.iter().take(data_columns).enumerate() {
            let Ok(col) = ColNum::try_from(ROW_SHEET_COLUMNS.len() + i) else {
                continue;
            };
            match value {
                Some(value) if sheet.numeric.contains(&i) => write_value(ws, r, col, value)?,
                Some(value) => write_text(ws, r, col, value)?,
                None => {}
            }
        }
    }

    let last_row = RowNum::try_from(rows.len()).unwrap_or(RowNum::MAX);
    let last_col = ColNum::try_from(header.len() - 1).unwrap_or(ColNum::MAX);
    ws.set_freeze_panes(1, 0)?;
    ws.autofilter(0, 0, last_row, last_col)?;
    ws.set_autofit_max_width(300);
    ws.autofit();
    Ok(())
}

fn write_header(ws: &mut Worksheet, row: RowNum, names: &[&str], bold: &Format) -> Result<(), XlsxError> {
    for (col, name) in (0..).zip(names) {
        ws.write_string_with_format(row, col, excel_text(name), bold)?;
    }
    Ok(())
}

/// Writes `text` as a number when it is one, as text otherwise.
fn write_value(ws: &mut Worksheet, row: RowNum, col: ColNum, text: &str) -> Result<(), XlsxError> {
    match as_number(text) {
        Some(n) => ws.write_number(row, col, n).map(|_| ()),
        None => write_text(ws, row, col, text),
    }
}

/// Writes `text` as a string cell, cut to Excel's limit.
fn write_text(ws: &mut Worksheet, row: RowNum, col: ColNum, text: &str) -> Result<(), XlsxError> {
    ws.write_string(row, col, excel_text(text)).map(|_| ())
}

/// `text` cut to what one Excel cell holds.
fn excel_text(text: &str) -> &str {
    truncate_utf16(text, MAX_CELL_TEXT)
}

/// The number in `text`, when writing it as a number loses nothing a
/// person would miss: plain decimal notation (`-12`, `3.5`), no leading zero
/// (zip codes and phone numbers stay text), at most 15 digits (Excel's
/// precision; longer ids stay text).
fn as_number(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (integer, fraction) = match unsigned.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || (integer.len() > 1 && integer.starts_with('0')) {
        return None;
    }
    if fraction.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    if integer.len() + fraction.map_or(0, str::len) > 15 {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// The longest prefix of `text` of at most `max` UTF-16 code units (the unit
/// Excel counts in), cut on a character boundary.
fn truncate_utf16(text: &str, max: usize) -> &str {
    if text.len() <= max {
        // UTF-16 never needs more units than UTF-8 needs bytes.
        return text;
    }
    let mut units = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &text[..i];
        }
    }
    text
}

/// Valid, unique Excel sheet names for `names`, in order: characters Excel
/// refuses (`[]:*?/\`) become `_`, a leading or trailing apostrophe becomes
/// `_`, names are cut to 31 characters, and a name already taken (Excel
/// compares without case; `Summary` and Excel's reserved `History` are
/// taken) gets a `_2`, `_3`, … suffix.
fn sheet_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken: HashSet<String> = [SUMMARY_SHEET, "History"].iter().map(|n| n.to_lowercase()).collect();
    let mut out = Vec::new();
    for name in names {
        let cleaned: String = name
            .chars()
            .map(|c| {
                if matches!(c, '[' | ']' | ':' | '*' | '?' | '/' | '\\') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let base = if cleaned.trim().is_empty() {
            "sheet".to_string()
        } else {
            cleaned
        };
        let mut candidate = fix_apostrophes(truncate_utf16(&base, MAX_SHEET_NAME));
        let mut n = 2;
        while taken.contains(&candidate.to_lowercase()) {
            let suffix = format!("_{n}");
            let stem = truncate_utf16(&base, MAX_SHEET_NAME - suffix.len());
            candidate = fix_apostrophes(&format!("{stem}{suffix}"));
            n += 1;
        }
        taken.insert(candidate.to_lowercase());
        out.push(candidate);
    }
    out
}

/// Excel refuses a sheet name that starts or ends with an apostrophe.
fn fix_apostrophes(name: &str) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    if let Some(first) = chars.first_mut().filter(|c| **c == '\'') {
        *first = '_';
    }
    if let Some(last) = chars.last_mut().filter(|c| **c == '\'') {
        *last = '_';
    }
    chars.into_iter().collect()
}

/// The wire name of a serde enum (`file_upload`, `completed`), so that the
/// report spells values as the execution document does.
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("({e})"),
    }
}

fn timestamp(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating directory {}", parent.display()), e)),
        None => Ok(()),
    }
}

/// An I/O failure stays an [`Error::Io`]; anything else from the CSV writer
/// is a bug.
fn csv_error(path: &Path, error: csv::Error) -> Error {
    let message = error.to_string();
    match error.into_kind() {
        csv::ErrorKind::Io(source) => Error::io(format!("writing {}", path.display()), source),
        _ => Error::Internal(format!("writing {}: {message}", path.display())),
    }
}

/// An I/O failure stays an [`Error::Io`]; anything else from the XLSX writer
/// (a limit we failed to respect) is a bug.
fn xlsx_error(path: &Path, error: XlsxError) -> Error {
    match error {
        XlsxError::IoError(source) => Error::io(format!("writing {}", path.display()), source),
        other => Error::Internal(format!("writing {}: {other}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read as _;

    use calamine::{Data, Reader as _, Xlsx, open_workbook};

    use crate::error::ErrorCode;
    use crate::execution::{
        ConnectorRef, ExecutionError, LoadCount, StageStatus, Status, TableCount, TriggerType, VariableCount,
    };

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn values(items: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn rejected_csv_has_one_line_per_row_with_reasons_and_json_values() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out").join("rejected.csv");
        let mut writer = RejectedWriter::create(&path)?;
        writer.write(&RejectedRow {
            stage: Stage::Intake,
            source: "contacts".into(),
            row: 5,
            line: Some(6),
            reasons: strings(&["expected 3 fields, found 4", "bad quoting"]),
            values: values(&[("name", Some("Ann, \"A\"")), ("age", None)]),
            failed: false,
        })?;
        writer.write(&RejectedRow {
            stage: Stage::Variables,
            source: "people".into(),
            row: 2,
            line: None,
            reasons: strings(&["email: `x` is not a valid e-mail address"]),
            values: values(&[("email", Some("x")), ("zip", Some("01234"))]),
            failed: false,
        })?;
        assert_eq!(writer.count(), 2);
        writer.finish()?;

        // A spreadsheet reads it as UTF-8 and finds each value in a column
        // of its own after the fixed ones.
        let text = std::fs::read_to_string(&path)?;
        assert!(
            text.starts_with("\u{feff}stage,source,row,line,reasons,values,name,age,email,zip\n"),
            "{text}"
        );
        let mut reader = csv::Reader::from_path(&path)?;
        let mut header = REJECTED_HEADER.to_vec();
        header.extend(["name", "age", "email", "zip"]);
        assert_eq!(reader.headers()?.iter().collect::<Vec<_>>(), header);
        let records = reader.records().collect::<std::result::Result<Vec<_>, _>>()?;
        let records: Vec<Vec<&str>> = records.iter().map(|r| r.iter().collect()).collect();
        assert_eq!(
            records,
            [
                vec![
                    "intake",
                    "contacts",
                    "5",
                    "6",
                    "expected 3 fields, found 4; bad quoting",
                    r#"{"name":"Ann, \"A\"","age":null}"#,
                    "Ann, \"A\"",
                    "",
                    "",
                    "",
                ],
                vec![
                    "variables",
                    "people",
                    "2",
                    "",
                    "email: `x` is not a valid e-mail address",
                    r#"{"email":"x","zip":"01234"}"#,
                    "",
                    "",
                    "x",
                    "01234",
                ],
            ]
        );
        Ok(())
    }

    #[test]
    fn spread_values_are_never_formulas_and_never_take_a_fixed_column_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rejected.csv");
        let mut writer = RejectedWriter::create(&path)?;
        writer.write(&RejectedRow {
            stage: Stage::Variables,
            source: "people".into(),
            row: 1,
            line: Some(2),
            reasons: strings(&["bad"]),
            values: values(&[
                ("source", Some("crm")),
                ("formula", Some("=HYPERLINK(\"http://x\")")),
                ("amount", Some("-12.5")),
                ("dash", Some("-x")),
            ]),
            failed: false,
        })?;
        writer.finish()?;
        let mut reader = csv::Reader::from_path(&path)?;
        let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
        assert_eq!(&header[6..], ["source (value)", "formula", "amount", "dash"]);
        let row = reader.records().next().ok_or("a row")??;
        assert_eq!(
            row.iter().skip(6).collect::<Vec<_>>(),
            ["crm", "'=HYPERLINK(\"http://x\")", "-12.5", "'-x"]
        );
        let json: serde_json::Value = serde_json::from_str(&row[5])?;
        assert_eq!(
            json["formula"], "=HYPERLINK(\"http://x\")",
            "the values column keeps it as it was"
        );
        Ok(())
    }

    #[test]
    fn rejected_csv_exists_with_its_header_when_nothing_was_rejected() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rejected.csv");
        let writer = RejectedWriter::create(&path)?;
        assert_eq!(writer.count(), 0);
        writer.finish()?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "\u{feff}stage,source,row,line,reasons,values\n"
        );
        Ok(())
    }

    fn execution() -> std::result::Result<Execution, Box<dyn std::error::Error>> {
        let mut exec = Execution::new(
            "exec-42".into(),
            ConnectorRef {
                id: None,
                api_name: "contacts_import".into(),
                version: Some(3),
            },
            TriggerType::FileUpload,
            false,
        );
        exec.transition(Status::Running)?;
        if let Some(StepProgress::Intake { status, tables }) = exec.stage_mut(Stage::Intake) {
            *status = StageStatus::Completed;
            tables.push(TableCount {
                table: "contacts".into(),
                rows: 4,
                invalid: 1,
            });
        }
        if let Some(StepProgress::Variables { status, scopes }) = exec.stage_mut(Stage::Variables) {
            *status = StageStatus::Completed;
            scopes.push(VariableCount {
                scope: "contacts".into(),
                total: 4,
                valid: 2,
                invalid: 2,
            });
        }
        if let Some(StepProgress::Load { status, steps }) = exec.stage_mut(Stage::Load) {
            *status = StageStatus::Failed;
            steps.push(LoadCount {
                order: 1,
                scope: "contacts".into(),
                object: "contact".into(),
                total: 2,
                created: 1,
                ..LoadCount::default()
            });
        }
        exec.error = Some(ExecutionError {
            stage: Stage::Load,
            code: ErrorCode::Io,
            message: "disk full".into(),
            line: None,
            column: None,
            plugin: None,
        });
        exec.transition(Status::Failed)?;
        Ok(exec)
    }

    fn report() -> ReportBuilder {
        let mut report = ReportBuilder::new(2).with_source_name(Some("contacts 2024.csv".into()));
        report.add_sheet("contacts", strings(&["name", "email", "zip", "age"]));
        report.numeric_columns("contacts", ["age"]);
        report.add_row(
            "contacts",
            "ok",
            &[],
            vec![
                Some("Ann".into()),
                Some("ann@example.com".into()),
                None,
                Some("42".into()),
            ],
        );
        report.add_rejected(&RejectedRow {
            stage: Stage::Variables,
            source: "contacts".into(),
            row: 2,
            line: Some(3),
            reasons: strings(&["email: `x` is not a valid e-mail address"]),
            values: values(&[
                ("name", Some("Bob")),
                ("email", Some("x")),
                ("zip", Some("94107")),
                ("age", Some("7")),
            ]),
            failed: false,
        });
        // The sheet is full: an ok row is left out...
        report.add_row("contacts", "ok", &[], vec![Some("Cy".into())]);
        // ...and a problem row takes the place of the kept ok row.
        report.add_rejected(&RejectedRow {
            stage: Stage::Variables,
            source: "contacts".into(),
            row: 4,
            line: None,
            reasons: strings(&["age: `abc` is not a number"]),
            values: values(&[("age", Some("abc")), ("name", Some("Dee"))]),
            failed: false,
        });
        report.add_rejected(&RejectedRow {
            stage: Stage::Intake,
            source: "Contacts 2024: [raw]".into(),
            row: 5,
            line: Some(6),
            reasons: strings(&["expected 1 field, found 2"]),
            values: values(&[("a", Some("1"))]),
            failed: false,
        });
        report.add_sheet("summary", strings(&["x"]));
        report.add_sheet("a_very_long_scope_name_that_goes_past_31_chars", strings(&["x"]));
        report.add_sheet("a_very_long_scope_name_that_goes_elsewhere", strings(&["x"]));
        report
    }

    const SHEETS: [&str; 6] = [
        "Summary",
        "contacts",
        "Contacts 2024_ _raw_",
        "summary_2",
        "a_very_long_scope_name_that_goe",
        "a_very_long_scope_name_that_g_2",
    ];

    fn zip_entry(path: &Path, name: &str) -> std::result::Result<String, Box<dyn std::error::Error>> {
        let mut archive = zip::ZipArchive::new(File::open(path)?)?;
        let mut text = String::new();
        archive.by_name(name)?.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn report_xlsx_lists_the_sheets_and_the_errors() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out").join("report.xlsx");
        report().write(&execution()?, &path)?;

        let workbook = zip_entry(&path, "xl/workbook.xml")?;
        let names: Vec<&str> = workbook
            .split("<sheet name=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(names, SHEETS);
        let shared = zip_entry(&path, "xl/sharedStrings.xml")?;
        assert!(shared.contains("email: `x` is not a valid e-mail address"), "{shared}");
        assert!(shared.contains("disk full"), "{shared}");
        assert!(shared.contains(">94107<"), "zip code kept as text: {shared}");
        Ok(())
    }

    fn cell(range: &calamine::Range<Data>, row: u32, col: u32) -> Data {
        range.get_value((row, col)).cloned().unwrap_or(Data::Empty)
    }

    fn text(value: &str) -> Data {
        Data::String(value.to_string())
    }

    /// The first row of `range` whose cell in column `col` is `key`.
    fn row_with(range: &calamine::Range<Data>, col: usize, key: &str) -> Option<Vec<Data>> {
        range
            .rows()
            .find(|r| r.get(col) == Some(&text(key)))
            .map(|r| r.to_vec())
    }

    #[test]
    fn report_xlsx_reads_back_with_the_kept_rows_and_the_summary() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("report.xlsx");
        report().write(&execution()?, &path)?;
        let mut workbook: Xlsx<_> = open_workbook(&path)?;
        assert_eq!(workbook.sheet_names(), SHEETS);

        let contacts = workbook.worksheet_range("contacts")?;
        let header: Vec<Data> = (0..9).map(|c| cell(&contacts, 0, c)).collect();
        assert_eq!(
            header,
            ["row", "line", "status", "errors", "name", "email", "zip", "age"]
                .map(text)
                .into_iter()
                .chain([Data::Empty])
                .collect::<Vec<_>>(),
            "no column after the data's"
        );
        // Rows 2 and 4 are kept (both invalid); the ok rows 1 and 3 are not.
        let bob: Vec<Data> = (0..9).map(|c| cell(&contacts, 1, c)).collect();
        assert_eq!(
            bob,
            [
                Data::Float(2.0),
                Data::Float(3.0),
                text("invalid"),
                text("email: `x` is not a valid e-mail address"),
                text("Bob"),
                text("x"),
                text("94107"),
                Data::Float(7.0),
                Data::Empty,
            ]
        );
        let dee: Vec<Data> = (0..9).map(|c| cell(&contacts, 2, c)).collect();
        assert_eq!(
            dee,
            [
                Data::Float(4.0),
                Data::Empty,
                text("invalid"),
                text("age: `abc` is not a number"),
                text("Dee"),
                Data::Empty,
                Data::Empty,
                text("abc"),
                Data::Empty,
            ]
        );
        assert_eq!(cell(&contacts, 3, 0), Data::Empty);

        let raw = workbook.worksheet_range("Contacts 2024_ _raw_")?;
        assert_eq!(cell(&raw, 0, 4), text("a"));
        assert_eq!(cell(&raw, 1, 0), Data::Float(5.0));
        assert_eq!(cell(&raw, 1, 1), Data::Float(6.0), "the line in the file");
        // An input table's rows are text as they were read.
        assert_eq!(cell(&raw, 1, 4), text("1"));

        let summary = workbook.worksheet_range("Summary")?;
        assert_eq!(
            row_with(&summary, 0, "Execution").map(|r| r[1].clone()),
            Some(text("exec-42"))
        );
        assert_eq!(
            row_with(&summary, 0, "Status").map(|r| r[1].clone()),
            Some(text("failed"))
        );
        assert_eq!(
            row_with(&summary, 0, "Trigger").map(|r| r[1].clone()),
            Some(text("file_upload"))
        );
        assert_eq!(
            row_with(&summary, 0, "Source file").map(|r| r[1].clone()),
            Some(text("contacts 2024.csv")),
            "a person knows the file by its name"
        );
        assert_eq!(
            row_with(&summary, 0, "Connector version").map(|r| r[1].clone()),
            Some(Data::Float(3.0))
        );
        assert_eq!(
            row_with(&summary, 0, "Error code").map(|r| r[1].clone()),
            Some(text("io_error"))
        );
        assert_eq!(
            row_with(&summary, 0, "Error message").map(|r| r[1].clone()),
            Some(text("disk full"))
        );

        let variables = row_with(&summary, 0, "variables").ok_or("no variables line")?;
        assert_eq!(
            variables[1..7],
            [
                text("completed"),
                text("contacts"),
                Data::Float(4.0),
                Data::Empty,
                Data::Float(2.0),
                Data::Float(2.0),
            ]
        );
        let load = row_with(&summary, 0, "load").ok_or("no load line")?;
        assert_eq!(load[2], text("1. contacts → contact"));
        assert_eq!(load[8], Data::Float(1.0));
        let sql = row_with(&summary, 0, "sql").ok_or("no sql line")?;
        assert_eq!(sql[1], text("pending"));

        let contacts_line = row_with(&summary, 0, "contacts").ok_or("no sheet line")?;
        assert_eq!(contacts_line[2..4], [Data::Float(2.0), Data::Float(2.0)]);
        let Data::String(note) = &contacts_line[4] else {
            return Err(format!("no note: {:?}", contacts_line[4]).into());
        };
        assert!(note.contains("2 more rows are not shown, 0 of them"), "{note}");
        let raw_line = row_with(&summary, 0, "Contacts 2024_ _raw_").ok_or("no raw sheet line")?;
        assert_eq!(raw_line[1], text("Contacts 2024: [raw]"));
        assert_eq!(raw_line[3], Data::Float(0.0));
        Ok(())
    }

    #[test]
    fn a_row_that_failed_to_load_is_failed_as_the_summary_counts_it() {
        let row = |failed| RejectedRow {
            stage: Stage::Load,
            source: "people".into(),
            row: 1,
            line: None,
            reasons: strings(&["load 1 into contact: field stage: `x` is not one of Lead, Customer"]),
            values: values(&[("stage", Some("x"))]),
            failed,
        };
        assert_eq!(row(true).status(), "failed");
        assert_eq!(row(false).status(), "skipped");
    }

    #[test]
    fn only_plain_numbers_without_leading_zeros_become_numbers() {
        assert_eq!(as_number("42"), Some(42.0));
        assert_eq!(as_number("-3.5"), Some(-3.5));
        assert_eq!(as_number("0"), Some(0.0));
        assert_eq!(as_number("0.25"), Some(0.25));
        assert_eq!(as_number("01234"), None);
        assert_eq!(as_number("+33612345678"), None);
        assert_eq!(as_number("1e5"), None);
        assert_eq!(as_number("inf"), None);
        assert_eq!(as_number("NaN"), None);
        assert_eq!(as_number(".5"), None);
        assert_eq!(as_number("5."), None);
        assert_eq!(as_number(""), None);
        assert_eq!(as_number("1234567890123456"), None);
        assert_eq!(as_number("123456789012345"), Some(123_456_789_012_345.0));
    }

    #[test]
    fn a_sheet_lists_its_rows_by_row_number_whatever_stage_stopped_them() {
        let mut report = ReportBuilder::new(10);
        report.add_sheet("people", strings(&["email"]));
        for (row, stage) in [(5, Stage::Load), (2, Stage::Variables), (4, Stage::Transform)] {
            report.add_rejected(&RejectedRow {
                stage,
                source: "people".into(),
                row,
                line: None,
                reasons: strings(&["why"]),
                values: values(&[("email", Some("x"))]),
                failed: false,
            });
        }
        let numbers: Vec<u64> = report.sheets[0].rows().iter().map(|r| r.row).collect();
        assert_eq!(numbers, [2, 4, 5]);
    }

    #[test]
    fn sheet_names_are_valid_and_unique_for_excel() {
        assert_eq!(
            sheet_names(["a/b", "A/B", "'quoted'", "", "history", "x".repeat(40).as_str()]),
            [
                "a_b",
                "A_B_2",
                "_quoted_",
                "sheet",
                "history_2",
                "x".repeat(31).as_str()
            ]
        );
    }

    #[test]
    fn text_is_cut_on_utf16_units_and_char_boundaries() {
        assert_eq!(truncate_utf16("abc", 5), "abc");
        assert_eq!(truncate_utf16("héllo", 2), "hé");
        // An emoji is two UTF-16 units: it does not fit in one.
        assert_eq!(truncate_utf16("a😀b", 2), "a");
        assert_eq!(truncate_utf16("a😀b", 3), "a😀");
        let long = "é".repeat(MAX_CELL_TEXT + 10);
        assert_eq!(excel_text(&long).chars().count(), MAX_CELL_TEXT);
    }
}
