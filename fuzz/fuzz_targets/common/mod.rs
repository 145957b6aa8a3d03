//! What the fuzz targets share: one runtime and one engine session for
//! every case, and reading a file through the intake to the end.
#![allow(dead_code, reason = "each target uses some of these")]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use datafusion::prelude::SessionContext;
use tokio_util::sync::CancellationToken;
use weir_engine::intake::{self, IntakeOptions, RejectSink};
use weir_engine::report::RejectedRow;
use weir_engine::sql::{self, SessionSettings};

struct Discard;

impl RejectSink for Discard {
    fn reject(&self, _row: RejectedRow) {}
}

/// A current-thread runtime, made once.
pub fn runtime() -> &'static tokio::runtime::Runtime {
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

/// Opens `content`, written as a file named `name`, with the intake and
/// scans every table it yields. Errors are expected and dropped.
pub fn read_to_the_end(name: &str, content: &[u8], options: &IntakeOptions) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("writing the case");
    runtime().block_on(scan(&path, name, options));
}

async fn scan(path: &Path, name: &str, options: &IntakeOptions) {
    let ctx = session();
    let Ok(intake) = intake::open(ctx, path, name, options, Arc::new(Discard), CancellationToken::new()).await else {
        return;
    };
    for table in &intake.tables {
        if let Ok(frame) = ctx.read_table(table.provider.clone()) {
            let _ = frame.collect().await;
        }
    }
}
