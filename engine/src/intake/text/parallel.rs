//! A CSV/TSV or JSON Lines file parsed on several threads. One thread cuts
//! the text into runs of whole records (`batch_size` records, or fewer in
//! about [`RUN_BYTES`]), each worker makes a run into rows, and the runs
//! are delivered in file order: rows, their lines and the rejected rows
//! with their numbers are what one thread gives. At most two runs per
//! worker are in flight, so memory stays bounded whatever the file size.
//!
//! A JSON Lines record ends at every line end. A delimited record ends at
//! a line end outside a quoted field; the cutter follows quoting as the
//! CSV reader does: a quote opens a quoted field only at the start of a
//! field, and a doubled quote inside one is a quote.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use super::{
    Delivery, JsonStop, KeyIndex, Record, Rows, TextKind, TextTable, key_index, scan_delimited_text,
    scan_json_line_cells,
};
use crate::error::{Error, Result};

/// The most bytes a run holds, unless one line is longer.
const RUN_BYTES: usize = 4 << 20;

/// The most threads a file is parsed on: with two runs in flight per
/// thread (each its text and its rows), this bounds the reader's memory to
/// a few hundred MiB on any machine.
const MAX_THREADS: usize = 8;

/// A run of whole lines of the file.
struct Run {
    /// Its place among the runs, from 0.
    seq: u64,
    /// The file's line it starts on.
    first_line: u64,
    text: Vec<u8>,
}

/// A run made into rows, or why the file could not be read there.
type Part<'t> = (u64, Result<Rows<'t>>);

/// Whether `table` is read by [`read`].
pub(super) fn applies(table: &TextTable) -> bool {
    table.options.threads > 1
        && match table.kind {
            TextKind::Delimited(_) => true,
            TextKind::JsonLines => !table.keys.is_empty(),
            TextKind::JsonArray => false,
        }
}

/// Reads `table` (see [`applies`]) on its threads.
pub(super) fn read(table: &TextTable, out: &mut Delivery<'_, '_>) -> Result<()> {
    let threads = table.options.threads.clamp(1, MAX_THREADS);
    let index = key_index(&table.keys);
    let reader = table.reader()?;
    let in_flight = threads * 2;
    let (runs_tx, runs_rx) = sync_channel::<Run>(threads);
    let runs_rx = Mutex::new(runs_rx);
    std::thread::scope(|scope| {
        let (parts_tx, parts_rx) = channel::<Part<'_>>();
        // A run is cut only when a token is free; delivering it frees one.
        let (tokens_tx, tokens_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = tokens_tx.send(());
        }
        // A parsed run's buffer goes back to the cutter for a later run, so
        // the text is read into memory already mapped.
        let (spare_tx, spare_rx) = channel::<Vec<u8>>();
        {
            let parts_tx = parts_tx.clone();
            scope.spawn(move || cut(reader, table, &runs_tx, &tokens_rx, &parts_tx, &spare_rx));
        }
        for _ in 0..threads {
            let (parts_tx, spare_tx) = (parts_tx.clone(), spare_tx.clone());
            let (runs_rx, index) = (&runs_rx, &index);
            scope.spawn(move || {
                loop {
                    let run = runs_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    let Ok(run) = run else { return };
                    let part = parse(table, index, &run);
                    let _ = spare_tx.send(run.text);
                    if parts_tx.send((run.seq, part)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(spare_tx);
        drop(parts_tx);
        // In file order; the loop ends once every thread is done.
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        for (seq, part) in &parts_rx {
            waiting.insert(seq, part);
            while let Some(part) = waiting.remove(&next) {
                next += 1;
                if !out.deliver_part(part?)? {
                    return Ok(());
                }
                let _ = tokens_tx.send(());
            }
        }
        Ok(())
    })
}

/// Cuts the text into runs until it ends, a cancel, or the reader stops
/// taking runs (its tokens are gone).
fn cut(
    mut reader: Box<dyn Read + Send>,
    table: &TextTable,
    runs: &SyncSender<Run>,
    tokens: &Receiver<()>,
    parts: &Sender<Part<'_>>,
    spare: &Receiver<Vec<u8>>,
) {
    let lines_per_run = table.options.batch_size.max(1);
    let mut carry: Vec<u8> = Vec::new();
    let mut first_line = 1u64;
    let mut seq = 0u64;
    // What is read past a run's end is copied into the next run's text, so
    // a run reads about what its records took in the run before.
    let mut run_bytes = RUN_BYTES;
    loop {
        if tokens.recv().is_err() {
            return;
        }
        if table.ctx.cancel.is_cancelled() {
            let _ = parts.send((seq, Err(Error::Canceled)));
            return;
        }
        let mut text = spare.try_recv().unwrap_or_default();
        text.clear();
        text.extend_from_slice(&carry);
        let mut target = run_bytes;
        let mut ended;
        let (end, lines) = loop {
            ended = match fill(&mut reader, &mut text, target) {
                Ok(ended) => ended,
                Err(e) => {
                    let _ = parts.send((seq, Err(Error::io(format!("reading {}", table.ctx.file_name), e))));
                    return;
                }
            };
            if let Some(end) = record_end(table.kind, &text, lines_per_run) {
                break (end, memchr::memchr_iter(b'\n', &text[..end]).count() as u64);
            }
            if ended {
                // The last run takes what is left.
                break (text.len(), 0);
            }
            // One record longer than a run: read on.
            target *= 2;
        };
        if text.is_empty() {
            return;
        }
        run_bytes = (end + end / 8).clamp(64 << 10, RUN_BYTES);
        carry.clear();
        carry.extend_from_slice(&text[end..]);
        text.truncate(end);
        if runs.send(Run { seq, first_line, text }).is_err() {
            return;
        }
        if ended && carry.is_empty() {
            return;
        }
        seq += 1;
        first_line += lines;
    }
}

/// Reads into `text` until it holds `target` bytes (`Ok(false)`) or the
/// text ends (`Ok(true)`).
fn fill(reader: &mut dyn Read, text: &mut Vec<u8>, target: usize) -> std::io::Result<bool> {
    let want = target.saturating_sub(text.len());
    if want == 0 {
        return Ok(false);
    }
    text.reserve(want);
    let n = reader.take(want as u64).read_to_end(text)?;
    Ok(n < want)
}

/// Where a run of `text` (which starts at a record's start) should end:
/// after its `records`-th record, or after the last whole record in it;
/// `None` when no record ends in it.
fn record_end(kind: TextKind, text: &[u8], records: usize) -> Option<usize> {
    match kind {
        TextKind::Delimited(delimiter) => delimited_record_end(text, delimiter, records),
        TextKind::JsonLines | TextKind::JsonArray => match memchr::memchr_iter(b'\n', text).nth(records - 1) {
            Some(at) => Some(at + 1),
            None => memchr::memrchr(b'\n', text).map(|at| at + 1),
        },
    }
}

/// [`record_end`] of a delimited text: line ends outside quoted fields.
fn delimited_record_end(text: &[u8], delimiter: u8, records: usize) -> Option<usize> {
    let mut last = None;
    let mut seen = 0;
    let mut i = 0;
    while i < text.len() {
        let Some(at) = memchr::memchr2(b'"', b'\n', &text[i..]).map(|p| i + p) else {
            break;
        };
        if text[at] == b'\n' {
            last = Some(at + 1);
            seen += 1;
            if seen == records {
                break;
            }
            i = at + 1;
            continue;
        }
        // A quote opens a quoted field only where a field starts.
        let starts_field = at == 0 || matches!(text[at - 1], b'\n' | b'\r') || text[at - 1] == delimiter;
        if !starts_field {
            i = at + 1;
            continue;
        }
        // Inside the field: a doubled quote is a quote, a single one ends it.
        let mut j = at + 1;
        loop {
            match memchr::memchr(b'"', &text[j..]) {
                Some(p) if text.get(j + p + 1) == Some(&b'"') => j += p + 2,
                // A quote at the very end may be doubled by the next byte.
                Some(p) if j + p + 1 < text.len() => {
                    i = j + p + 1;
                    break;
                }
                _ => return last,
            }
        }
    }
    last
}

/// Makes one run into rows.
fn parse<'t>(table: &'t TextTable, index: &KeyIndex<'_>, run: &Run) -> Result<Rows<'t>> {
    let mut rows = Rows::new(table);
    // The file's first record is its header, when it has one.
    let mut skip = run.seq == 0 && table.header && matches!(table.kind, TextKind::Delimited(_));
    let mut take = |record: Record<'_>| {
        if std::mem::take(&mut skip) {
            return Ok(true);
        }
        rows.take(record);
        Ok(true)
    };
    match table.kind {
        TextKind::Delimited(delimiter) => {
            scan_delimited_text(
                &run.text[..],
                delimiter,
                run.first_line,
                &table.ctx.file_name,
                &mut take,
            )?;
        }
        TextKind::JsonLines | TextKind::JsonArray => {
            scan_json_line_cells(
                &run.text[..],
                run.first_line,
                index,
                table.options.sample_rows,
                &mut take,
            )
            .map_err(|e| match e {
                JsonStop::Io(e) => Error::io(format!("reading {}", table.ctx.file_name), e),
                JsonStop::Error(e) => e,
            })?;
        }
    }
    rows.flush();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delimited_run_ends_at_a_line_end_outside_quotes() {
        let text = b"a,b\n\"x\ny\",2\n5\" screen,\"q\"\"\n\"\n3,4\n";
        // Records: `a,b`, `"x\ny",2`, `5" screen,"q""\n"` (a quote inside an
        // unquoted field is a character; a doubled one inside quotes too),
        // `3,4`.
        let ends: Vec<usize> = (1..=4)
            .map(|n| delimited_record_end(text, b',', n).unwrap_or(0))
            .collect();
        let records: Vec<&str> = std::iter::once(0)
            .chain(ends.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| std::str::from_utf8(&text[w[0]..w[1]]).unwrap_or(""))
            .collect();
        assert_eq!(records, ["a,b\n", "\"x\ny\",2\n", "5\" screen,\"q\"\"\n\"\n", "3,4\n"]);
        // A text cut inside a quoted field ends after its last whole record.
        assert_eq!(delimited_record_end(b"a\n\"open\nfield", b',', 5), Some(2));
        assert_eq!(delimited_record_end(b"\"open\nfield", b',', 5), None);
        // A quote at the very end may be the first of a doubled one.
        assert_eq!(delimited_record_end(b"a\n\"x\"", b',', 5), Some(2));
        // Tab-separated: a quote after a tab opens a field.
        assert_eq!(delimited_record_end(b"a\t\"b\nc\"\nd\n", b'\t', 1), Some(8));
    }
}
