//! The README's `weir serve` walkthrough as a reader pastes it: every `sh`
//! block of that section, in order, in one shell, against the binary and
//! the plugin cargo built for the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `sh` blocks of the README's section `heading`, in order.
fn blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("no section {heading}"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap_or_default().to_string())
        .collect()
}

fn link(target: &Path, link: &Path) {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
}

#[test]
fn the_serve_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap_or_else(|e| panic!("{e}"));
    let blocks = blocks(&readme, "## `weir serve`");
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    assert!(
        blocks.last().is_some_and(|b| b.trim() == "kill %1"),
        "the last block stops the server"
    );

    // A checkout as the walkthrough sees it, with what cargo built for
    // this test in place of what its `cargo build` lines build.
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = work.path();
    link(&repo().join("examples"), &dir.join("examples"));
    link(Path::new(env!("CARGO_BIN_EXE_weir")), &dir.join("target/debug/weir"));
    link(
        &weir_tests::plugin_wasm("phone-normalize"),
        &dir.join("plugins/target/wasm32-wasip2/release/phone_normalize.wasm"),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let script: String = blocks
        .join("\n")
        .lines()
        .filter(|line| !line.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace(
            "weir serve --data-dir",
            &format!("weir serve --listen 127.0.0.1:{port} --data-dir"),
        )
        .replace("/tmp/weir-demo", &dir.join("data").to_string_lossy())
        .replace("/tmp/try", &dir.join("try").to_string_lossy());
    // Whatever fails, the server does not outlive the test.
    let script = format!("set -e\ntrap 'kill %1 2>/dev/null || true' EXIT\n{script}\n");
    let o = Command::new("timeout")
        .args(["300", "bash", "-c", &script])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the walkthrough stopped:\n{out}\n{err}");

    // What a reader sees along the way.
    assert!(
        out.contains("\"email\":\"") && out.contains("\"country\":"),
        "records: {out}"
    );
    assert!(
        out.contains("\"timed_out\":false") && out.contains("\"columns\":[\"email\",\"country\"]"),
        "the fixed draft's preview: {out}"
    );
    // The package's edit, pushed as the draft and published, went live.
    assert!(
        out.split("\"live\":").skip(1).any(|live| live
            .split("\"draft\":")
            .next()
            .is_some_and(|l| l.contains("lower(country)"))),
        "the pushed edit is live: {out}"
    );
    assert!(
        out.contains("\"reference\":\"phone-normalize@0.1.0\""),
        "the plugin: {out}"
    );
    assert!(out.contains("\"execution_id\":\""), "the webhook's receipt: {out}");
    assert!(out.contains("event: end"), "the events stream: {out}");
    assert!(!out.contains("internal_error"), "{out}");
    // The last two execution ids printed alone on a line (the server's own
    // lines go to the same output).
    let ids: Vec<&str> = out
        .lines()
        .rev()
        .filter(|l| l.len() == 36 && l.matches('-').count() == 4)
        .take(2)
        .collect();
    assert!(
        ids.len() == 2 && ids[0] == ids[1],
        "a retried trigger names one execution: {ids:?}"
    );
    assert!(
        dir.join("local-out/report.xlsx").exists(),
        "weir run of the dev package"
    );
    assert!(dir.join("report.xlsx").exists(), "the server's report");
}
