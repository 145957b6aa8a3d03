//! A JSON Lines file parsed on several threads. One thread cuts the text
//! into runs of whole lines (`batch_size` lines, or fewer in at most
//! [`RUN_BYTES`]), each worker makes a run into rows, and the runs are
//! delivered in file order: rows, their lines and the rejected rows with
//! their numbers are what one thread gives. At most two runs per worker
//! are in flight, so memory stays bounded whatever the file size.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use super::{Delivery, JsonStop, Rows, TextTable, scan_json_line_cells};
use crate::error::{Error, Result};

/// The most bytes a run holds, unless one line is longer.
const RUN_BYTES: usize = 4 << 20;

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

/// Reads `table` (JSON Lines with known keys) on its `threads` threads.
pub(super) fn read(table: &TextTable, out: &mut Delivery<'_, '_>) -> Result<()> {
    let threads = table.options.threads.max(1);
    let index: HashMap<&str, usize> = table.keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
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
        {
            let parts_tx = parts_tx.clone();
            scope.spawn(move || cut(reader, table, &runs_tx, &tokens_rx, &parts_tx));
        }
        for _ in 0..threads {
            let parts_tx = parts_tx.clone();
            let (runs_rx, index) = (&runs_rx, &index);
            scope.spawn(move || {
                loop {
                    let run = runs_rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    let Ok(run) = run else { return };
                    if parts_tx.send((run.seq, parse(table, index, &run))).is_err() {
                        return;
                    }
                }
            });
        }
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
) {
    let lines_per_run = table.options.batch_size.max(1);
    let mut carry: Vec<u8> = Vec::new();
    let mut first_line = 1u64;
    let mut seq = 0u64;
    loop {
        if tokens.recv().is_err() {
            return;
        }
        if table.ctx.cancel.is_cancelled() {
            let _ = parts.send((seq, Err(Error::Canceled)));
            return;
        }
        let mut text = std::mem::take(&mut carry);
        let ended = match fill(&mut reader, &mut text) {
            Ok(ended) => ended,
            Err(e) => {
                let _ = parts.send((seq, Err(Error::io(format!("reading {}", table.ctx.file_name), e))));
                return;
            }
        };
        if text.is_empty() {
            return;
        }
        let (end, lines) = match memchr::memchr_iter(b'\n', &text).nth(lines_per_run - 1) {
            Some(at) => (at + 1, lines_per_run as u64),
            None => match memchr::memrchr(b'\n', &text) {
                Some(at) if !ended => (at + 1, memchr::memchr_iter(b'\n', &text[..=at]).count() as u64),
                // The last run takes what is left.
                _ => (text.len(), 0),
            },
        };
        carry = text.split_off(end);
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

/// Reads into `text` until it holds [`RUN_BYTES`] and a line end, or the
/// text ends (`Ok(true)`).
fn fill(reader: &mut dyn Read, text: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut scanned = 0;
    loop {
        if text.len() >= RUN_BYTES && memchr::memchr(b'\n', &text[scanned..]).is_some() {
            return Ok(false);
        }
        scanned = text.len();
        let want = RUN_BYTES.max(text.len() + (64 << 10));
        let start = text.len();
        text.resize(want, 0);
        let n = loop {
            match reader.read(&mut text[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    text.truncate(start);
                    return Err(e);
                }
            }
        };
        text.truncate(start + n);
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Makes one run into rows.
fn parse<'t>(table: &'t TextTable, index: &HashMap<&str, usize>, run: &Run) -> Result<Rows<'t>> {
    let mut rows = Rows::new(table);
    scan_json_line_cells(
        &run.text[..],
        run.first_line,
        index,
        table.options.sample_rows,
        &mut |record| {
            rows.take(record);
            Ok(true)
        },
    )
    .map_err(|e| match e {
        JsonStop::Io(e) => Error::io(format!("reading {}", table.ctx.file_name), e),
        JsonStop::Error(e) => e,
    })?;
    rows.flush();
    Ok(rows)
}
