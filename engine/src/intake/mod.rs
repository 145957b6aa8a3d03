//! Intake (SPEC §3.1–3.2): from an input file to named, typed, streaming
//! input tables.
//!
//! The format comes from `input.format` or is sniffed (magic bytes,
//! extension, content); the encoding is detected and text is transcoded to
//! UTF-8. CSV/TSV/JSON tables stream from disk on every scan; Parquet is read
//! by DataFusion's own reader; XLSX sheets are read once (a workbook is
//! bounded by Excel's row limit); ZIP members are unpacked, with limits, into
//! a private directory and opened as files of their own. This module never
//! runs SQL and never writes outside that private directory.

pub mod encoding;
pub mod infer;
pub mod text;
mod xlsx;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext, col};
use encoding_rs::Encoding;
use tokio_util::sync::CancellationToken;

use crate::connector::{InputFormat, InputOptions, Limits};
use crate::error::{Error, Limit, Result};
use crate::naming;
use crate::report::RejectedRow;

/// Where rows that could not be read go (the run's rejected-rows report).
pub trait RejectSink: Send + Sync {
    /// Records one row that was not read.
    fn reject(&self, row: RejectedRow);
}

/// Live counters of one input table.
#[derive(Debug, Default)]
pub struct TableStats {
    rows: AtomicU64,
    invalid: AtomicU64,
    failed: AtomicBool,
}

impl TableStats {
    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Rows that could not be read so far.
    pub fn invalid(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    fn add_rows(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }

    fn add_invalid(&self, n: u64) {
        self.invalid.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether reading the table failed (past a limit, unreadable input):
    /// the run's failure is intake's, whichever stage was reading it.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// What a table reader needs besides its file: names, counters, the reject
/// sink and the run's cancellation.
pub struct TableContext {
    /// The input file's name as uploaded.
    pub file_name: String,
    /// The table's name in schema `input`.
    pub table: String,
    /// Live counters.
    pub stats: Arc<TableStats>,
    /// Where unreadable rows go.
    pub sink: Arc<dyn RejectSink>,
    /// The run's cancellation.
    pub cancel: CancellationToken,
}

impl std::fmt::Debug for TableContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableContext")
            .field("file_name", &self.file_name)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// How input files are read, resolved from the connector's `[input]` and limits.
#[derive(Debug, Clone)]
pub struct IntakeOptions {
    /// Format, or auto.
    pub format: InputFormat,
    /// CSV delimiter; sniffed when `None`.
    pub delimiter: Option<u8>,
    /// Declared encoding; detected when `None`.
    pub encoding: Option<&'static Encoding>,
    /// First row is a header.
    pub header: bool,
    /// Infer column types (else all text).
    pub infer: bool,
    /// Rows per Arrow batch.
    pub batch_size: usize,
    /// Threads a CSV/TSV or JSON Lines file is parsed on.
    pub threads: usize,
    /// Rows sampled for type inference.
    pub sample_rows: usize,
    /// Most rows a table may have.
    pub max_rows: u64,
    /// Most bytes a ZIP may unpack to.
    pub max_unpacked_bytes: u64,
    /// Where a ZIP's members are unpacked (in a directory of their own,
    /// removed with the intake): the run's directory, so that they count
    /// with the run's files. `None` unpacks into the system's temporary
    /// directory.
    pub unpack_dir: Option<PathBuf>,
    /// The run's memory limit: what a reader that holds a whole table
    /// (a workbook's sheet) may take.
    pub max_memory: u64,
}

impl IntakeOptions {
    /// Options from the connector's `[input]` and limits.
    pub fn new(input: &InputOptions, limits: &Limits) -> Result<Self> {
        let delimiter = match input.delimiter.as_deref() {
            None => None,
            Some(d) if d.len() == 1 => Some(d.as_bytes()[0]),
            Some(d) => {
                return Err(Error::InvalidConnector(vec![crate::error::Problem::new(
                    "input.delimiter",
                    format!("`{d}` must be one ASCII character"),
                )]));
            }
        };
        let encoding = match input.encoding.get() {
            Some(choice) => choice.named(),
            None => {
                let why = input.encoding.problem().unwrap_or_default();
                return Err(Error::InvalidConnector(vec![crate::error::Problem::new(
                    "input.encoding",
                    why,
                )]));
            }
        };
        Ok(Self {
            format: input.format,
            delimiter,
            encoding,
            header: input.header,
            infer: input.infer,
            batch_size: 8192,
            threads: 1,
            sample_rows: 1000,
            max_rows: limits.max_rows,
            max_unpacked_bytes: 16 * 1024 * 1024 * 1024,
            unpack_dir: None,
            max_memory: limits.max_memory,
        })
    }
}

/// One input table, ready to register in schema `input`.
pub struct InputTable {
    /// Table name.
    pub name: String,
    /// Live counters.
    pub stats: Arc<TableStats>,
    /// The table.
    pub provider: Arc<dyn TableProvider>,
}

/// The input tables of one run. Holds the directory ZIP members were
/// unpacked into for as long as the tables live.
pub struct Intake {
    /// Tables, in file order.
    pub tables: Vec<InputTable>,
    _unpacked: Option<tempfile::TempDir>,
}

/// A table found in a file, before registration (Parquet is registered
/// through DataFusion, which needs an async context).
enum Found {
    Ready(InputTable),
    Parquet {
        name: String,
        path: PathBuf,
        stats: Arc<TableStats>,
    },
}

/// Sniffed file kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Delimited(u8),
    JsonLines,
    JsonArray,
    Parquet,
    Xlsx,
    Zip,
}

/// Opens an input file into tables. Blocking work (unpacking, reading
/// workbooks, sampling) happens here; call from a blocking context.
pub async fn open(
    ctx: &SessionContext,
    path: &Path,
    file_name: &str,
    options: &IntakeOptions,
    sink: Arc<dyn RejectSink>,
    cancel: CancellationToken,
) -> Result<Intake> {
    let (path, file_name, options) = (path.to_path_buf(), file_name.to_string(), options.clone());
    let (found, unpacked) = tokio::task::spawn_blocking(move || {
        let mut unpacked = None;
        let found = open_file(&path, &file_name, &options, &sink, &cancel, &mut unpacked, 0)?;
        Ok::<_, Error>((found, unpacked))
    })
    .await
    .map_err(|e| Error::Internal(format!("intake task failed: {e}")))??;

    let mut tables = Vec::new();
    for f in found {
        match f {
            Found::Ready(t) => tables.push(t),
            Found::Parquet { name, path, stats } => {
                let provider = parquet_table(ctx, &path, &stats).await?;
                tables.push(InputTable { name, stats, provider });
            }
        }
    }
    let names = naming::dedupe(tables.iter().map(|t| t.name.clone()).collect());
    for (t, n) in tables.iter_mut().zip(names) {
        t.name = n;
    }
    Ok(Intake {
        tables,
        _unpacked: unpacked,
    })
}

const SAMPLE_BYTES: usize = 64 * 1024;

fn read_sample(path: &Path, file_name: &str) -> Result<Vec<u8>> {
    let mut sample = Vec::with_capacity(SAMPLE_BYTES);
    File::open(path)
        .and_then(|f| f.take(SAMPLE_BYTES as u64).read_to_end(&mut sample))
        .map_err(|e| Error::io(format!("reading {file_name}"), e))?;
    Ok(sample)
}

fn open_file(
    path: &Path,
    file_name: &str,
    options: &IntakeOptions,
    sink: &Arc<dyn RejectSink>,
    cancel: &CancellationToken,
    unpacked: &mut Option<tempfile::TempDir>,
    depth: u32,
) -> Result<Vec<Found>> {
    let sample = read_sample(path, file_name)?;
    if sample.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::unreadable(format!("`{file_name}` is empty")));
    }
    let kind = sniff(&sample, file_name, options)?;
    let table = naming::table_name(file_name);
    let context = |table: String| {
        Arc::new(TableContext {
            file_name: file_name.to_string(),
            table,
            stats: Arc::new(TableStats::default()),
            sink: sink.clone(),
            cancel: cancel.clone(),
        })
    };
    match kind {
        Kind::Delimited(_) | Kind::JsonLines | Kind::JsonArray => {
            let detected = encoding::detect(&sample, options.encoding);
            let text_kind = match kind {
                Kind::Delimited(d) => text::TextKind::Delimited(d),
                Kind::JsonLines => text::TextKind::JsonLines,
                _ => text::TextKind::JsonArray,
            };
            let ctx = context(table.clone());
            let stats = ctx.stats.clone();
            let t = text::TextTable::open(path.to_path_buf(), text_kind, detected, options, ctx)?;
            let schema = t.schema_ref().clone();
            let provider =
                StreamingTable::try_new(schema, vec![Arc::new(t)]).map_err(|e| Error::Internal(e.to_string()))?;
            Ok(vec![Found::Ready(InputTable {
                name: table,
                stats,
                provider: Arc::new(provider),
            })])
        }
        Kind::Parquet => Ok(vec![Found::Parquet {
            name: table,
            path: path.to_path_buf(),
            stats: Arc::new(TableStats::default()),
        }]),
        Kind::Xlsx => {
            let sheets = xlsx::read(path, file_name, options, &|sheet| context(sheet.to_string()))?;
            sheets
                .into_iter()
                .map(|(name, stats, schema, batches)| {
                    let mem = MemTable::try_new(schema, vec![batches]).map_err(|e| Error::Internal(e.to_string()))?;
                    Ok(Found::Ready(InputTable {
                        name,
                        stats,
                        provider: Arc::new(mem),
                    }))
                })
                .collect()
        }
        Kind::Zip => {
            if depth > 0 {
                return Err(Error::unreadable(format!(
                    "`{file_name}` is a ZIP inside a ZIP; nested archives are not read"
                )));
            }
            let dir = match unpacked {
                Some(d) => d.path().to_path_buf(),
                None => {
                    let mut builder = tempfile::Builder::new();
                    builder.prefix("unpacked-");
                    let d = match &options.unpack_dir {
                        Some(dir) => builder.tempdir_in(dir),
                        None => builder.tempdir(),
                    }
                    .map_err(|e| Error::io("creating a directory to unpack into", e))?;
                    let p = d.path().to_path_buf();
                    *unpacked = Some(d);
                    p
                }
            };
            let members = unzip(path, file_name, &dir, options.max_unpacked_bytes, cancel)?;
            if members.is_empty() {
                return Err(Error::unreadable(format!("`{file_name}` holds no files")));
            }
            let mut found = Vec::new();
            for (member_path, member_name) in members {
                found.extend(open_file(
                    &member_path,
                    &member_name,
                    options,
                    sink,
                    cancel,
                    unpacked,
                    depth + 1,
                )?);
            }
            Ok(found)
        }
    }
}

/// Decides the format: `input.format` when given, else magic bytes, else the
/// extension, else the content.
fn sniff(sample: &[u8], file_name: &str, options: &IntakeOptions) -> Result<Kind> {
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let delimiter = |default: Option<u8>| options.delimiter.or(default).unwrap_or_else(|| sniff_delimiter(sample));
    let explicit = match options.format {
        InputFormat::Auto => None,
        InputFormat::Csv => Some(Kind::Delimited(delimiter(None))),
        InputFormat::Tsv => Some(Kind::Delimited(options.delimiter.unwrap_or(b'\t'))),
        InputFormat::Jsonl => Some(Kind::JsonLines),
        InputFormat::Json => Some(Kind::JsonArray),
        InputFormat::Parquet => Some(Kind::Parquet),
        InputFormat::Xlsx => Some(Kind::Xlsx),
        InputFormat::Zip => Some(Kind::Zip),
    };
    if let Some(k) = explicit {
        // A text format forced on a file that is not text reads garbage:
        // say what the file is instead.
        if matches!(k, Kind::Delimited(_) | Kind::JsonLines | Kind::JsonArray)
            && let Some(what) = binary_kind(sample)
        {
            return Err(Error::unreadable(format!(
                "`{file_name}` is {what}, but the connector reads it as {} (`input.format`); \
                 set `input.format` to \"auto\" or to the file's format",
                options.format.as_str()
            )));
        }
        return Ok(k);
    }
    if sample.starts_with(b"PAR1") {
        return Ok(Kind::Parquet);
    }
    if sample.starts_with(b"PK\x03\x04") || sample.starts_with(b"PK\x05\x06") {
        let xlsx_hint = contains(sample, b"xl/") || contains(sample, b"[Content_Types].xml");
        return Ok(
            if matches!(ext.as_str(), "xlsx" | "xlsm") || (ext != "zip" && xlsx_hint && contains(sample, b"xl/")) {
                Kind::Xlsx
            } else {
                Kind::Zip
            },
        );
    }
    if sample.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        return Err(Error::unreadable(format!(
            "`{file_name}` is a legacy Excel (.xls) or other OLE file; save it as .xlsx or CSV"
        )));
    }
    if encoding::is_binary(sample) {
        return Err(Error::unreadable(format!(
            "`{file_name}` is binary data of an unknown format; Weir reads CSV, TSV, JSON, JSON lines, Parquet, XLSX and ZIP"
        )));
    }
    match ext.as_str() {
        "csv" => return Ok(Kind::Delimited(delimiter(None))),
        "tsv" | "tab" => return Ok(Kind::Delimited(options.delimiter.unwrap_or(b'\t'))),
        "jsonl" | "ndjson" => return Ok(Kind::JsonLines),
        _ => {}
    }
    let text = String::from_utf8_lossy(&sample[encoding::detect(sample, None).bom_len..]);
    let trimmed = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\0');
    if trimmed.starts_with('[') {
        return Ok(Kind::JsonArray);
    }
    if trimmed.starts_with('{') {
        let first = trimmed.lines().next().unwrap_or_default();
        return Ok(if serde_json::from_str::<serde_json::Value>(first).is_ok() {
            Kind::JsonLines
        } else {
            Kind::JsonArray
        });
    }
    Ok(Kind::Delimited(delimiter(None)))
}

/// What a file that is not text is, by its first bytes; `None` for text.
fn binary_kind(sample: &[u8]) -> Option<&'static str> {
    if sample.starts_with(b"PAR1") {
        Some("a Parquet file")
    } else if sample.starts_with(b"PK\x03\x04") || sample.starts_with(b"PK\x05\x06") {
        Some(if contains(sample, b"xl/") {
            "an XLSX workbook"
        } else {
            "a ZIP archive"
        })
    } else if sample.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        Some("a legacy Excel (.xls) or other OLE file")
    } else if encoding::is_binary(sample) {
        Some("binary data")
    } else {
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Picks the delimiter that splits the first lines most consistently.
fn sniff_delimiter(sample: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(sample);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(20).collect();
    let mut best = (b',', 0usize);
    for d in [b',', b';', b'\t', b'|'] {
        let counts: Vec<usize> = lines.iter().map(|l| count_outside_quotes(l, d as char)).collect();
        let Some(&first) = counts.first() else { continue };
        if first == 0 {
            continue;
        }
        let consistent = counts.iter().filter(|c| **c == first).count();
        let score = consistent * 1000 + first;
        if score > best.1 {
            best = (d, score);
        }
    }
    best.0
}

fn count_outside_quotes(line: &str, d: char) -> usize {
    let mut quoted = false;
    line.chars()
        .filter(|c| {
            if *c == '"' {
                quoted = !quoted;
            }
            !quoted && *c == d
        })
        .count()
}

/// Unpacks every file member of a ZIP into `dir`, refusing unsafe names and
/// anything that would unpack past `max_bytes` (zip bombs).
/// A reader that fails once the run is canceled, so that unpacking a large
/// member stops with the run.
struct Cancelable<'a, R> {
    inner: R,
    cancel: &'a CancellationToken,
}

impl<R: Read> Read for Cancelable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("canceled"));
        }
        self.inner.read(buf)
    }
}

/// The most entries (files and directories) a ZIP input may hold.
pub const MAX_MEMBERS: usize = 1000;

fn unzip(
    path: &Path,
    file_name: &str,
    dir: &Path,
    max_bytes: u64,
    cancel: &CancellationToken,
) -> Result<Vec<(PathBuf, String)>> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {file_name}"), e))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::unreadable(format!("`{file_name}` is not a readable ZIP archive: {e}")))?;
    if archive.len() > MAX_MEMBERS {
        return Err(Error::unreadable(format!(
            "`{file_name}` holds {} entries; at most {MAX_MEMBERS} are read",
            archive.len()
        )));
    }
    let mut members = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| Error::unreadable(format!("`{file_name}`: member {i} cannot be read: {e}")))?;
        if member.is_dir() {
            continue;
        }
        let Some(relative) = member.enclosed_name() else {
            return Err(Error::unreadable(format!(
                "`{file_name}` has a member with an unsafe path; it was not unpacked"
            )));
        };
        if member.is_symlink() {
            return Err(Error::unreadable(format!(
                "`{file_name}` has a symbolic link; it was not unpacked"
            )));
        }
        let name = relative.to_string_lossy().to_string();
        let base = relative
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.starts_with("__MACOSX") || base.starts_with('.') || base.is_empty() {
            continue;
        }
        let target = dir.join(format!("{i}-{}", base.replace(['/', '\\'], "_")));
        let mut out = File::create(&target).map_err(|e| Error::io(format!("unpacking {name}"), e))?;
        let budget = max_bytes.saturating_sub(total);
        let mut reader = Cancelable {
            inner: (&mut member).take(budget + 1),
            cancel,
        };
        let written = std::io::copy(&mut reader, &mut out).map_err(|e| {
            if cancel.is_cancelled() {
                Error::Canceled
            } else {
                Error::unreadable(format!("`{file_name}`: member `{name}` cannot be unpacked: {e}"))
            }
        })?;
        total += written;
        if total > max_bytes {
            return Err(Error::LimitExceeded {
                limit: Limit::MaxMemory,
                message: format!("`{file_name}` unpacks to more than {max_bytes} bytes"),
            });
        }
        members.push((target, base));
    }
    Ok(members)
}

/// Refuses what the Parquet reader would panic on rather than report: a
/// decimal stored in more bytes than its Arrow type takes (16 up to
/// precision 38, 32 beyond), in a fixed length of the schema or in a row
/// group's min/max statistics (fixed or variable length). Found by fuzzing
/// intake. A variable-length value that is neither a row group's min nor
/// its max (or has no statistics) is not seen here; its run fails inside
/// the scan.
fn check_parquet_decimals(
    file_name: &str,
    metadata: &datafusion::parquet::file::metadata::ParquetMetaData,
) -> Result<()> {
    use datafusion::parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    let schema = metadata.file_metadata().schema_descr();
    let too_wide = |column: &str, precision: i32, what: String, widest: i32| {
        Error::unreadable(format!(
            "`{file_name}` is not a readable Parquet file: column `{column}` is a decimal of precision {precision} \
             with {what} bytes, more than the {widest} it can take"
        ))
    };
    for (i, column) in schema.columns().iter().enumerate() {
        let fixed = match column.physical_type() {
            Physical::FIXED_LEN_BYTE_ARRAY => true,
            Physical::BYTE_ARRAY => false,
            _ => continue,
        };
        let precision = match column.logical_type_ref() {
            Some(LogicalType::Decimal(decimal)) => decimal.precision,
            _ if column.converted_type() == ConvertedType::DECIMAL => column.type_precision(),
            _ => continue,
        };
        let widest: i32 = if precision <= 38 { 16 } else { 32 };
        let path = column.path().string();
        if fixed && column.type_length() > widest {
            return Err(too_wide(
                &path,
                precision,
                format!("values of {}", column.type_length()),
                widest,
            ));
        }
        for group in metadata.row_groups() {
            let Some(stats) = group.columns().get(i).and_then(|c| c.statistics()) else {
                continue;
            };
            for bound in [stats.min_bytes_opt(), stats.max_bytes_opt()].into_iter().flatten() {
                if bound.len() > widest as usize {
                    return Err(too_wide(
                        &path,
                        precision,
                        format!("a statistic of {}", bound.len()),
                        widest,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A Parquet file as a table, with its columns renamed to normalised names
/// when they differ.
async fn parquet_table(ctx: &SessionContext, path: &Path, stats: &TableStats) -> Result<Arc<dyn TableProvider>> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let rows = {
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
        let file = File::open(path).map_err(|e| Error::io(format!("opening {file_name}"), e))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| Error::unreadable(format!("`{file_name}` is not a readable Parquet file: {e}")))?;
        check_parquet_decimals(&file_name, reader.metadata())?;
        reader.metadata().file_metadata().num_rows().max(0) as u64
    };
    stats.add_rows(rows);
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let options = ParquetReadOptions {
        file_extension: &ext,
        ..Default::default()
    };
    let path_str = path.to_string_lossy().to_string();
    let df = ctx
        .read_parquet(path_str, options)
        .await
        .map_err(|e| Error::unreadable(format!("`{file_name}` is not a readable Parquet file: {e}")))?;
    let raw: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    let normalised = naming::normalise_headers(&raw);
    if raw == normalised {
        return Ok(df.into_view());
    }
    let exprs: Vec<_> = raw
        .iter()
        .zip(&normalised)
        .map(|(r, n)| col(datafusion::common::Column::new_unqualified(r)).alias(n))
        .collect();
    Ok(df
        .select(exprs)
        .map_err(|e| Error::Internal(e.to_string()))?
        .into_view())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> IntakeOptions {
        let limits = crate::connector::LimitsDef::default()
            .parse()
            .unwrap_or_else(|_| unreachable!());
        IntakeOptions::new(&InputOptions::default(), &limits).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn sniffing() {
        let o = options();
        assert_eq!(sniff(b"a;b;c\n1;2;3\n", "x.csv", &o).ok(), Some(Kind::Delimited(b';')));
        assert_eq!(sniff(b"a\tb\n1\t2\n", "x.txt", &o).ok(), Some(Kind::Delimited(b'\t')));
        assert_eq!(
            sniff(b"a,\"b;c\"\n1,\"2;3\"\n", "x", &o).ok(),
            Some(Kind::Delimited(b','))
        );
        assert_eq!(sniff(b"{\"a\":1}\n{\"a\":2}\n", "x", &o).ok(), Some(Kind::JsonLines));
        assert_eq!(sniff(b"{\n \"a\": 1\n}\n", "x", &o).ok(), Some(Kind::JsonArray));
        assert_eq!(sniff(b" [{\"a\":1}]", "x.json", &o).ok(), Some(Kind::JsonArray));
        assert_eq!(sniff(b"PAR1....", "x.bin", &o).ok(), Some(Kind::Parquet));
        assert!(matches!(
            sniff(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0], "x", &o),
            Err(Error::UnreadableInput { .. })
        ));
    }
}
