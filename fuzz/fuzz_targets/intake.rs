//! Intake of an untrusted upload: sniffing (format, delimiter, encoding) and
//! parsing of CSV, TSV, JSON, JSON lines, Parquet, XLSX and ZIP, then a full
//! scan of every table it yields. Errors are expected; a panic, a hang or a
//! crash is a bug.
#![no_main]

use std::sync::{Arc, OnceLock};

use datafusion::prelude::SessionContext;
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;
use weir_engine::connector::{InputOptions, LimitsDef};
use weir_engine::intake::{self, IntakeOptions, RejectSink};
use weir_engine::report::RejectedRow;
use weir_engine::sql::{self, SessionSettings};

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

struct Discard;

impl RejectSink for Discard {
    fn reject(&self, _row: RejectedRow) {}
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// One engine session for every case: intake registers nothing in it.
fn session() -> &'static SessionContext {
    static CTX: OnceLock<SessionContext> = OnceLock::new();
    CTX.get_or_init(|| {
        sql::session(&SessionSettings {
            threads: 1,
            max_memory: 256 * 1024 * 1024,
            batch_size: 1024,
            spill_dir: None,
        })
        .expect("a session")
    })
}

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
    let name = NAMES[usize::from(pick) % NAMES.len()];
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("writing the case");
    runtime().block_on(async {
        let ctx = session();
        let Ok(intake) = intake::open(ctx, &path, name, options(), Arc::new(Discard), CancellationToken::new()).await
        else {
            return;
        };
        for table in &intake.tables {
            if let Ok(frame) = ctx.read_table(table.provider.clone()) {
                let _ = frame.collect().await;
            }
        }
    });
});
