//! `rejected.csv`: every row that did not make it, as the run goes, and the
//! rejected-row types the stages hand over.

use super::*;

/// The columns of `rejected.csv`.
pub(super) const REJECTED_HEADER: [&str; 6] = ["stage", "source", "row", "line", "reasons", "values"];

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
    pub(super) fn status(&self) -> &'static str {
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
    pub(super) batch: &'a RecordBatch,
    pub(super) names: Vec<String>,
    pub(super) formatters: Vec<ArrayFormatter<'a>>,
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
    pub(super) path: PathBuf,
    pub(super) writer: csv::Writer<File>,
    pub(super) count: u64,
    /// Every value name met, in the order met.
    pub(super) names: Vec<String>,
    pub(super) known: HashSet<String>,
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

/// An I/O failure stays an [`Error::Io`]; anything else from the CSV writer
/// is a bug.
fn csv_error(path: &Path, error: csv::Error) -> Error {
    let message = error.to_string();
    match error.into_kind() {
        csv::ErrorKind::Io(source) => Error::io(format!("writing {}", path.display()), source),
        _ => Error::Internal(format!("writing {}: {message}", path.display())),
    }
}
