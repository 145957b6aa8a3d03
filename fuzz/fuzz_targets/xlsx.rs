//! Intake of an untrusted workbook: the ZIP container, the sheet XML, the
//! shared strings and styles, measured against the run's memory before
//! they are laid out, then every sheet scanned to the end. Errors
//! (`unreadable_input`, `limit_exceeded`) are expected; a panic, a hang,
//! an allocation past the limit or a crash is a bug.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_engine::connector::{InputOptions, LimitsDef};
use weir_engine::intake::IntakeOptions;

/// A run's options with a 256 MiB memory limit: a workbook may take half.
fn options() -> &'static IntakeOptions {
    static OPTIONS: OnceLock<IntakeOptions> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let limits = LimitsDef {
            max_rows: 100_000,
            max_memory: "256MiB".into(),
            ..LimitsDef::default()
        }
        .parse()
        .expect("the limits parse");
        IntakeOptions::new(&InputOptions::default(), &limits).expect("default input options")
    })
}

fuzz_target!(|data: &[u8]| {
    common::read_to_the_end("input.xlsx", data, options());
});
