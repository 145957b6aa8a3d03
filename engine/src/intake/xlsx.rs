//! XLSX workbooks: every non-empty sheet becomes a table named by its
//! normalised sheet name. Cells are turned into text the way a person reads
//! them (dates as ISO dates, whole numbers without `.0`) and then typed by
//! the same inference as CSV, so a sheet and its CSV export give the same
//! table.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use calamine::{Data, DataRef, Range, Reader, Sheets, XlsxError};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio_util::sync::CancellationToken;

use super::infer::{ColumnType, RowBuilder, infer_column};
use super::{IntakeOptions, TableContext, TableStats};
use crate::error::{Error, Limit, Result, Stage};
use crate::naming;
use crate::report::RejectedRow;

/// How many cells (or rows) are read between looks at the run's cancel.
const CANCEL_EVERY: usize = 4096;

/// The cells of one sheet. An XLSX sheet is read cell by cell so that a
/// cancel stops the reading (a large sheet takes seconds to parse); other
/// workbook kinds are read whole.
fn sheet_range(
    workbook: &mut Sheets<BufReader<File>>,
    file_name: &str,
    sheet: &str,
    cancel: &CancellationToken,
) -> Result<Range<Data>> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::unreadable(format!("`{file_name}`: sheet `{sheet}` cannot be read: {e}"));
    if cancel.is_cancelled() {
        return Err(Error::Canceled);
    }
    let Sheets::Xlsx(xlsx) = workbook else {
        return workbook.worksheet_range(sheet).map_err(|e| unreadable(&e));
    };
    let mut reader = match xlsx.worksheet_cells_reader(sheet) {
        Ok(reader) => reader,
        Err(XlsxError::NotAWorksheet(_)) => return Ok(Range::default()),
        Err(e) => return Err(unreadable(&e)),
    };
    let mut cells = Vec::new();
    let mut seen = 0usize;
    while let Some(cell) = reader.next_cell().map_err(|e| unreadable(&e))? {
        seen += 1;
        if seen.is_multiple_of(CANCEL_EVERY) && cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        if !matches!(cell.get_value(), DataRef::Empty) {
            cells.push(calamine::Cell::new(
                cell.get_position(),
                Data::from(cell.get_value().clone()),
            ));
        }
    }
    Ok(Range::from_sparse(cells))
}

/// A sheet read into batches: name, counters, schema, batches.
pub type Sheet = (String, Arc<TableStats>, SchemaRef, Vec<RecordBatch>);

/// Reads every sheet of the workbook at `path`.
pub fn read(
    path: &Path,
    file_name: &str,
    options: &IntakeOptions,
    context: &dyn Fn(&str) -> Arc<TableContext>,
) -> Result<Vec<Sheet>> {
    let mut workbook = calamine::open_workbook_auto(path)
        .map_err(|e| Error::unreadable(format!("`{file_name}` is not a readable workbook: {e}")))?;
    let names = workbook.sheet_names();
    let table_names = naming::dedupe(names.iter().map(|n| table_name(n)).collect());
    let mut sheets = Vec::new();
    for (sheet, table) in names.iter().zip(table_names) {
        let ctx = context(&table);
        let range = sheet_range(&mut workbook, file_name, sheet, &ctx.cancel)?;
        let first_row = range.start().map_or(0, |(r, _)| r as u64);
        let mut rows = range.rows().enumerate().map(|(i, cells)| {
            (
                first_row + i as u64 + 1,
                cells.iter().map(cell_text).collect::<Vec<_>>(),
            )
        });
        let Some((_, first)) = rows.next() else { continue };
        let (names, data): (Vec<String>, Vec<(u64, Vec<Cell>)>) = if options.header {
            let raw: Vec<String> = first.iter().map(|c| c.text.clone().unwrap_or_default()).collect();
            (naming::normalise_headers(&raw), rows.collect())
        } else {
            let width = first.len();
            let mut all = vec![(first_row + 1, first)];
            all.extend(rows);
            (
                naming::normalise_headers(&(1..=width).map(|_| "").collect::<Vec<_>>()),
                all,
            )
        };
        let sample = options.sample_rows.max(data.len().min(100_000));
        let types: Vec<ColumnType> = (0..names.len())
            .map(|i| {
                if options.infer {
                    infer_column(
                        data.iter()
                            .take(sample)
                            .map(|(_, r)| r.get(i).and_then(|c| c.text.as_deref())),
                    )
                } else {
                    ColumnType::Text
                }
            })
            .collect();
        let mut builder = RowBuilder::new(&names, &types);
        let mut batches = Vec::new();
        let mut good = 0u64;
        for (row_number, (line, cells)) in data.iter().enumerate() {
            if row_number.is_multiple_of(CANCEL_EVERY) && ctx.cancel.is_cancelled() {
                return Err(Error::Canceled);
            }
            let row_number = row_number as u64 + 1;
            if cells.iter().all(|c| c.text.is_none() && c.error.is_none()) {
                continue;
            }
            let values = || {
                names
                    .iter()
                    .cloned()
                    .zip(cells.iter().map(|c| c.text.clone()))
                    .collect::<Vec<_>>()
            };
            let reject = |reason: String| {
                ctx.stats.add_invalid(1);
                ctx.sink.reject(RejectedRow {
                    stage: Stage::Intake,
                    source: table.clone(),
                    row: row_number,
                    line: Some(*line),
                    reasons: vec![format!("row {line}: {reason}")],
                    values: values(),
                });
            };
            if let Some((i, e)) = cells
                .iter()
                .enumerate()
                .find_map(|(i, c)| c.error.as_ref().map(|e| (i, e)))
            {
                reject(format!(
                    "column `{}` holds the spreadsheet error {e}",
                    names.get(i).map_or("?", String::as_str)
                ));
                continue;
            }
            if let Err(e) = builder.push((0..names.len()).map(|i| cells.get(i).and_then(|c| c.text.as_deref()))) {
                reject(e.to_string());
                continue;
            }
            good += 1;
            if good > options.max_rows {
                return Err(Error::LimitExceeded {
                    limit: Limit::MaxRows,
                    message: format!("sheet `{sheet}` has more than {} rows", options.max_rows),
                });
            }
            if builder.len() >= options.batch_size {
                batches.push(builder.finish());
            }
        }
        if !builder.is_empty() {
            batches.push(builder.finish());
        }
        ctx.stats.add_rows(good);
        sheets.push((table, ctx.stats.clone(), builder.schema().clone(), batches));
    }
    if sheets.is_empty() {
        return Err(Error::unreadable(format!("`{file_name}` has no sheet with data")));
    }
    Ok(sheets)
}

fn table_name(sheet: &str) -> String {
    let n = naming::normalise(sheet);
    if n.is_empty() { "sheet".into() } else { n }
}

/// A cell as text, or the spreadsheet error it holds.
#[derive(Debug, Clone, Default)]
struct Cell {
    text: Option<String>,
    error: Option<String>,
}

fn cell_text(data: &Data) -> Cell {
    let text = |s: String| Cell {
        text: Some(s),
        error: None,
    };
    match data {
        Data::Empty => Cell::default(),
        Data::String(s) if s.trim().is_empty() => Cell::default(),
        Data::String(s) => text(s.clone()),
        Data::Int(i) => text(i.to_string()),
        Data::Float(f) => text(format_float(*f)),
        Data::Bool(b) => text(b.to_string()),
        Data::DateTime(dt) => match dt.as_datetime() {
            Some(d) if dt.is_datetime() => {
                if d.time() == chrono::NaiveTime::MIN {
                    text(d.date().format("%Y-%m-%d").to_string())
                } else {
                    text(d.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
                }
            }
            _ => text(format_float(dt.as_f64())),
        },
        Data::DateTimeIso(s) | Data::DurationIso(s) => text(s.clone()),
        Data::Error(e) => Cell {
            text: None,
            error: Some(e.to_string()),
        },
    }
}

/// Whole numbers print without a fraction; others in their shortest form.
fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}
