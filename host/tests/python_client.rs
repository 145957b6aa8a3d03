//! The Python client (`clients/python`) against a live `weir serve`: its
//! operations and models checked against the server's OpenAPI document,
//! then its pytest suite (upload, trigger with wait, records, cancel, typed
//! errors).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::services::missing;
use common::{ADMIN, importer, serve, slow};

fn client_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

fn has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_matches_the_api_document_and_drives_a_live_server() {
    for module in ["httpx", "pytest"] {
        if !has(module) {
            missing(&format!("Python's {module}"), "python3 -m pip install httpx pytest");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    importer(&server.base).await;
    slow(&server.base, dir.path()).await;
    let base = server.base.clone();
    let (check, suite) = tokio::task::spawn_blocking(move || {
        let check = Command::new("python3")
            .arg(client_dir().join("check_openapi.py"))
            .arg(format!("{base}/openapi.json"))
            .output();
        let suite = Command::new("python3")
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(client_dir())
            .env("WEIR_SERVER", &base)
            .env("WEIR_KEY", ADMIN)
            .env("PYTHONPATH", client_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output();
        (check, suite)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let shown = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let check = check.unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(
        check.status.success(),
        "the client drifted from the API:\n{}",
        shown(&check)
    );
    let suite = suite.unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(suite.status.success(), "the client's tests failed:\n{}", shown(&suite));
    assert!(shown(&suite).contains("4 passed"), "{}", shown(&suite));
    server.stop();
}
