//! The check a draft gets when it is saved, published or previewed: an
//! untrusted script parsed, bounded and planned against a sample's tables,
//! running no statement. Errors (`sql_error`, `sql_not_allowed`) are
//! expected; a panic, a stack overflow, a hang or a crash is a bug.
#![no_main]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_engine::check;
use weir_engine::connector::Connector;
use weir_engine::pipeline::InputFile;

fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| {
        Connector::from_toml("api_name = \"fuzz\"\ntype = \"spreadsheet\"\n[limits]\nmax_memory = \"256MiB\"\n")
            .expect("the fuzz connector parses")
    })
}

/// The sample every script is planned against: two columns of two types.
fn sample() -> &'static InputFile {
    static SAMPLE: OnceLock<(tempfile::TempDir, InputFile)> = OnceLock::new();
    &SAMPLE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temp dir");
            let path: PathBuf = dir.path().join("data.csv");
            std::fs::write(&path, "id,name,amount\n1,ada,1.5\n2,grace,\n").expect("writing the sample");
            let file = InputFile {
                path,
                name: "data.csv".into(),
            };
            (dir, file)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    common::runtime().block_on(async {
        let _ = check::script(connector(), text, Some(sample()), None).await;
    });
});
