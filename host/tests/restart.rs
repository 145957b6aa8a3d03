//! `weir serve` as a process: killed mid-run and started again on the same
//! data directory, and stopped gracefully with SIGTERM.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{quick, serve, slow, status_of, upload, wait};
use weir_host::server::state::{Db, ExecutionState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_its_running_execution_and_runs_the_queued_one_after_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut first = serve(dir.path(), &[]);
    slow(&first.base, dir.path()).await;
    quick(&first.base).await;
    let (_, running) = upload(&first.base, "/connectors/slow/runs", b"a\n1\n").await;
    let running = running["id"].as_str().unwrap_or_default().to_string();
    wait(&first.base, &running, |s| s == "running").await;
    // One worker: this one waits behind the slow run.
    let (_, queued) = upload(&first.base, "/connectors/quick/runs", b"a\n2\n").await;
    let queued = queued["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(status_of(&first.base, &queued).await["status"], "queued");

    first.child.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = first.child.wait();

    let mut second = serve(dir.path(), &[]);
    let lost = status_of(&second.base, &running).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    assert!(lost["ended_at"].is_string());
    let ran = wait(&second.base, &queued, |s| s == "success").await;
    assert_eq!(ran["step_progress"][1]["scopes"][0]["rows"], 1, "{ran}");
    let _ = second.child.kill();
    let _ = second.child.wait();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_what_is_still_running_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut p = serve(dir.path(), &[("WEIR_SHUTDOWN_GRACE", "500ms")]);
    slow(&p.base, dir.path()).await;
    let (_, run) = upload(&p.base, "/connectors/slow/runs", b"a\n1\n").await;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    wait(&p.base, &id, |s| s == "running").await;
    // The shell's own `kill`, so no extra package is needed.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", p.child.id())])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = p.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let db = Db::open(&dir.path().join("state.db")).unwrap_or_else(|e| panic!("{e}"));
    let doc = db.execution(&id).ok().flatten().map(|r| r.document);
    assert_eq!(
        doc.map(|d| d.status.as_str()),
        Some("canceled"),
        "a graceful stop cancels the run and stores that"
    );
}
