//! XLSX workbooks: every non-empty sheet becomes a table named by its
//! normalised sheet name. Cells are turned into text the way a person reads
//! them (dates as ISO dates, whole numbers without `.0`) and then typed by
//! the same inference as CSV, so a sheet and its CSV export give the same
//! table.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use std::io::Read as _;

use calamine::{DataRef, Reader, Xlsx, XlsxError};
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

/// What one kept cell costs beyond its text: the cell as read, and as text
/// in its row.
const CELL_COST: u64 = (std::mem::size_of::<(u32, u32, Cell)>() + std::mem::size_of::<Cell>()) as u64;

/// The most parts a workbook's archive may hold.
const MAX_PARTS: usize = 10_000;

/// The non-empty rows of one sheet, each `width` cells wide from the
/// sheet's first used column, with their 1-based row numbers.
///
/// Rows are kept sparse: a sheet with cells at A1 and XFD1048576 is two
/// rows, not the 17 billion cells of its rectangle. What is kept is
/// counted against `budget` bytes as it is read, the rows as laid out too.
fn sheet_rows(
    xlsx: &mut Xlsx<BufReader<File>>,
    file_name: &str,
    sheet: &str,
    budget: u64,
    cancel: &CancellationToken,
) -> Result<Vec<(u64, Vec<Cell>)>> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::unreadable(format!("`{file_name}`: sheet `{sheet}` cannot be read: {e}"));
    let over = |what: String| Error::LimitExceeded {
        limit: Limit::MaxMemory,
        message: format!(
            "`{file_name}`: sheet `{sheet}` {what}, more than limits.max_memory allows a sheet ({} MiB)",
            budget >> 20
        ),
    };
    if cancel.is_cancelled() {
        return Err(Error::Canceled);
    }
    let mut reader = match xlsx.worksheet_cells_reader(sheet) {
        Ok(reader) => reader,
        Err(XlsxError::NotAWorksheet(_)) => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(&e)),
    };
    let mut cells: Vec<(u32, u32, Cell)> = Vec::new();
    let mut used = 0u64;
    let mut seen = 0usize;
    while let Some(cell) = reader.next_cell().map_err(|e| unreadable(&e))? {
        seen += 1;
        if seen.is_multiple_of(CANCEL_EVERY) && cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        let text = cell_text(cell.get_value());
        if text.text.is_none() && text.error.is_none() {
            continue;
        }
        used += CELL_COST + text.text.as_ref().or(text.error.as_ref()).map_or(0, |t| t.len() as u64);
        if used > budget {
            return Err(over(format!("holds more than {} cells or text", cells.len())));
        }
        let (row, col) = cell.get_position();
        cells.push((row, col, text));
    }
    drop(reader);
    cells.sort_by_key(|(row, col, _)| (*row, *col));
    let (Some(first), Some(last)) = (cells.iter().map(|c| c.1).min(), cells.iter().map(|c| c.1).max()) else {
        return Ok(Vec::new());
    };
    let width = (last - first) as u64 + 1;
    let mut rows_count = 0u64;
    let mut previous = None;
    for (row, _, _) in &cells {
        if previous != Some(*row) {
            rows_count += 1;
            previous = Some(*row);
        }
    }
    let laid_out = rows_count
        .saturating_mul(width)
        .saturating_mul(std::mem::size_of::<Cell>() as u64);
    if used.saturating_add(laid_out) > budget {
        return Err(over(format!("is {rows_count} rows of {width} columns")));
    }
    let mut rows: Vec<(u64, Vec<Cell>)> = Vec::with_capacity(rows_count as usize);
    for (row, col, cell) in cells {
        let number = u64::from(row) + 1;
        if rows.last().is_none_or(|(n, _)| *n != number) {
            rows.push((number, vec![Cell::default(); width as usize]));
        }
        if let Some((_, r)) = rows.last_mut() {
            r[(col - first) as usize] = cell;
        }
    }
    Ok(rows)
}

/// Refuses a workbook whose archive unpacks past what a run may hold,
/// before the reader unpacks it: the shared strings are read whole when
/// the workbook opens, and one sheet part is streamed but can hold a single
/// string of any size. Sizes are counted as the parts unpack (a declared
/// size can lie), so the check costs one pass of decompression.
fn check_parts(path: &Path, file_name: &str, budget: u64) -> Result<()> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::unreadable(format!("`{file_name}` is not a readable workbook: {e}"));
    let file = File::open(path).map_err(|e| Error::io(format!("opening {file_name}"), e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| unreadable(&e))?;
    if archive.len() > MAX_PARTS {
        return Err(Error::unreadable(format!(
            "`{file_name}` holds {} parts; a workbook may hold at most {MAX_PARTS}",
            archive.len()
        )));
    }
    for i in 0..archive.len() {
        let mut part = archive.by_index(i).map_err(|e| unreadable(&e))?;
        let name = part.name().map_or_else(|_| format!("part {i}"), |n| n.to_string());
        // The shared strings are held whole, and the reader's peak is a
        // multiple of their text: they get an eighth of the budget.
        let bound = if name.ends_with("sharedStrings.xml") {
            budget / 8
        } else {
            budget
        };
        let unpacked = std::io::copy(&mut (&mut part).take(bound + 1), &mut std::io::sink())
            .map_err(|e| unreadable(&format!("{name}: {e}")))?;
        if unpacked > bound {
            return Err(Error::LimitExceeded {
                limit: Limit::MaxMemory,
                message: format!(
                    "`{file_name}`: the part `{name}` unpacks to more than {} MiB, more than limits.max_memory allows",
                    bound >> 20
                ),
            });
        }
    }
    Ok(())
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
    // Half the run's memory for the sheet as read; the rest is for its
    // batches and the SQL over them.
    let budget = options.max_memory / 2;
    check_parts(path, file_name, budget)?;
    let mut workbook: Xlsx<_> = calamine::open_workbook(path)
        .map_err(|e| Error::unreadable(format!("`{file_name}` is not a readable workbook: {e}")))?;
    let names = workbook.sheet_names();
    let table_names = naming::dedupe(names.iter().map(|n| table_name(n)).collect());
    let mut sheets = Vec::new();
    for (sheet, table) in names.iter().zip(table_names) {
        let ctx = context(&table);
        let mut rows = sheet_rows(&mut workbook, file_name, sheet, budget, &ctx.cancel)?.into_iter();
        let Some((first_line, first)) = rows.next() else {
            continue;
        };
        let (names, data): (Vec<String>, Vec<(u64, Vec<Cell>)>) = if options.header {
            let raw: Vec<String> = first.iter().map(|c| c.text.clone().unwrap_or_default()).collect();
            (naming::normalise_headers(&raw), rows.collect())
        } else {
            let width = first.len();
            let mut all = vec![(first_line, first)];
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
        // Rows are numbered from the first one after the header (or from
        // the first one), blank rows included, as the sheet shows them.
        let first_data_line = if options.header { first_line + 1 } else { first_line };
        for (i, (line, cells)) in data.iter().enumerate() {
            if i.is_multiple_of(CANCEL_EVERY) && ctx.cancel.is_cancelled() {
                return Err(Error::Canceled);
            }
            let row_number = line - first_data_line + 1;
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
                    reasons: vec![reason],
                    values: values(),
                    failed: false,
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
            if let Err(e) = builder.push(Some(*line), names.len(), |i| {
                cells.get(i).and_then(|c| c.text.as_deref())
            }) {
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

fn cell_text(data: &DataRef<'_>) -> Cell {
    let text = |s: String| Cell {
        text: Some(s),
        error: None,
    };
    match data {
        DataRef::Empty => Cell::default(),
        DataRef::String(s) if s.trim().is_empty() => Cell::default(),
        DataRef::SharedString(s) if s.trim().is_empty() => Cell::default(),
        DataRef::String(s) => text(s.clone()),
        DataRef::SharedString(s) => text((*s).to_string()),
        DataRef::Int(i) => text(i.to_string()),
        DataRef::Float(f) => text(format_float(*f)),
        DataRef::Bool(b) => text(b.to_string()),
        DataRef::DateTime(dt) => match dt.as_datetime() {
            Some(d) if dt.is_datetime() => {
                if d.time() == chrono::NaiveTime::MIN {
                    text(d.date().format("%Y-%m-%d").to_string())
                } else {
                    text(d.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
                }
            }
            _ => text(format_float(dt.as_f64())),
        },
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => text(s.clone()),
        DataRef::Error(e) => Cell {
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
