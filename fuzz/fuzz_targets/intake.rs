//! Intake of an untrusted upload: sniffing (format, delimiter, encoding) and
//! parsing of CSV, TSV, JSON, JSON lines, Parquet, XLSX and ZIP, then a full
//! scan of every table it yields. Errors are expected; a panic, a hang or a
//! crash is a bug.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_engine::connector::{InputOptions, LimitsDef};
use weir_engine::intake::IntakeOptions;

/// File names the first byte picks from: the extension steers sniffing.
const NAMES: &[&str] = &[
    "input.csv",
    "input.tsv",
    "input.txt",
    "input.json",
    "input.jsonl",
    "input.xlsx",
    "input.zip",
    "input.parquet",
    "input",
];

fn options() -> &'static IntakeOptions {
    static OPTIONS: OnceLock<IntakeOptions> = OnceLock::new();
    OPTIONS.get_or_init(make_options)
}

fn make_options() -> IntakeOptions {
    let limits = LimitsDef {
        max_rows: 100_000,
        ..LimitsDef::default()
    }
    .parse()
    .expect("default limits parse");
    let mut options = IntakeOptions::new(&InputOptions::default(), &limits).expect("default input options");
    // A small input may not unpack into a large one: keep each case fast.
    options.max_unpacked_bytes = 4 * 1024 * 1024;
    options
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, content)) = data.split_first() else {
        return;
    };
    common::read_to_the_end(NAMES[usize::from(pick) % NAMES.len()], content, options());
});
