//! `report.xlsx`: a bounded sample of rows per scope or table with their status
//! and errors, and a summary sheet from the execution document.

use super::*;

/// Excel's longest cell text, in UTF-16 code units.
pub(super) const MAX_CELL_TEXT: usize = 32_767;

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

/// One row of a row sheet.
#[derive(Debug, Clone)]
pub(super) struct ReportRow {
    /// Order of arrival within the sheet, to show kept rows in that order.
    pub(super) seq: u64,
    /// The row number shown in the `row` column.
    pub(super) row: u64,
    /// The line of the input file it came from, when known.
    pub(super) line: Option<u64>,
    pub(super) status: String,
    pub(super) errors: String,
    pub(super) values: Vec<Option<String>>,
}

/// The rows kept for one sheet, and what was left out.
#[derive(Debug, Clone)]
pub(super) struct SheetRows {
    /// The scope or input table name, as given.
    pub(super) name: String,
    pub(super) columns: Vec<String>,
    pub(super) column_index: HashMap<String, usize>,
    /// The columns whose values are numbers: written as number cells.
    /// Every other value is text as it was read (a zip code `94107` as
    /// much as `01002`).
    pub(super) numeric: std::collections::HashSet<usize>,
    /// Rows added so far (kept or not).
    pub(super) added: u64,
    /// Kept rows with status `ok`.
    pub(super) ok: Vec<ReportRow>,
    /// Kept rows with any other status.
    pub(super) problems: Vec<ReportRow>,
    /// Rows not kept because of the cap.
    pub(super) dropped: u64,
    /// Of those, rows whose status is not `ok`.
    pub(super) dropped_problems: u64,
}

impl SheetRows {
    pub(super) fn new(name: &str, columns: Vec<String>) -> Self {
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
    pub(super) fn column(&mut self, name: &str) -> usize {
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
    pub(super) fn push(&mut self, max_rows: usize, row: ReportRow) {
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
    pub(super) fn rows(&self) -> Vec<&ReportRow> {
        let mut rows: Vec<&ReportRow> = self.ok.iter().chain(&self.problems).collect();
        rows.sort_by_key(|r| (r.row, r.seq));
        rows
    }

    pub(super) fn kept(&self) -> usize {
        self.ok.len() + self.problems.len()
    }
}

/// Collects what `report.xlsx` shows and writes it at the end.
///
/// Memory is bounded by `max_rows_per_sheet` rows per sheet; rows beyond it
/// are counted, and the summary says how many are not shown.
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    pub(super) max_rows: usize,
    pub(super) sheets: Vec<SheetRows>,
    pub(super) index: HashMap<String, usize>,
    /// The input file's name, as it was uploaded.
    pub(super) source_name: Option<String>,
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
    pub(super) fn sheet(&mut self, name: &str) -> usize {
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
pub(super) enum Value {
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
pub(super) fn excel_text(text: &str) -> &str {
    truncate_utf16(text, MAX_CELL_TEXT)
}

/// The number in `text`, when writing it as a number loses nothing a
/// person would miss: plain decimal notation (`-12`, `3.5`), no leading zero
/// (zip codes and phone numbers stay text), at most 15 digits (Excel's
/// precision; longer ids stay text).
pub(super) fn as_number(text: &str) -> Option<f64> {
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
pub(super) fn truncate_utf16(text: &str, max: usize) -> &str {
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
pub(super) fn sheet_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
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

/// An I/O failure stays an [`Error::Io`]; anything else from the XLSX writer
/// (a limit we failed to respect) is a bug.
fn xlsx_error(path: &Path, error: XlsxError) -> Error {
    match error {
        XlsxError::IoError(source) => Error::io(format!("writing {}", path.display()), source),
        other => Error::Internal(format!("writing {}: {other}", path.display())),
    }
}
