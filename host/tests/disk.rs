//! `weir serve` on a data directory that fills up, or that is read-only: a
//! small tmpfs the test mounts (as root, where mounts are allowed; elsewhere
//! the tests say on stderr that they were skipped). A full disk is answered
//! 507 `storage_full` with nothing of the request kept, every run it
//! accepted ends with its reason, and once space is freed everything works
//! again; a read-only data directory stops the server at start with a plain
//! message. Either way what was acknowledged before is all there after a
//! restart.

use crate::common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{call, importer, serve, upload_named, wait_end};
use reqwest::Method;
use serde_json::{Value, json};

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, said on stderr, where the test may not mount.
    fn mount(size: &str) -> Option<Self> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("mount: {e}"));
        if !out.status.success() {
            // A container may deny mounts even to root.
            eprintln!(
                "skipped: mount refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self { dir })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.dir.path())
            .status()
            .unwrap_or_else(|e| panic!("mount: {e}"));
        assert!(status.success(), "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn people(from: usize, n: usize) -> &'static [u8] {
    let mut csv = String::from("email,city\n");
    for i in from..from + n {
        csv.push_str(&format!("user{i}@example.com,City {}\n", i % 7));
    }
    Box::leak(csv.into_bytes().into_boxed_slice())
}

/// Runs `csv` to its end; the execution.
async fn run(base: &str, name: &str, csv: &'static [u8]) -> Value {
    let (s, b) = upload_named(base, "/connectors/people/runs", name, csv).await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap_or_default().to_string();
    wait_end(base, &id).await
}

/// Every `contact` record, page by page.
async fn contacts(base: &str) -> usize {
    let (mut n, mut cursor) = (0, String::new());
    loop {
        let (s, b) = call(
            base,
            Method::GET,
            &format!("/objects/contact/records?limit=500{cursor}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{b}");
        n += b["data"].as_array().map_or(0, Vec::len);
        match b["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return n,
        }
    }
}

/// Writes zeros into `path` until the disk is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
            return;
        }
    }
}

/// The status the state database holds for execution `id`.
fn stored_status(data: &Path, id: &str) -> String {
    let conn = rusqlite::Connection::open_with_flags(data.join("state.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{e}"));
    conn.query_row("SELECT status FROM executions WHERE id = ?1", [id], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Bytes free on the file system of `path`.
fn available(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("df: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df said {}", String::from_utf8_lossy(&out.stdout)))
}

fn problem(status: u16, body: &Value, want: (u16, &str)) {
    assert_eq!((status, body["code"].as_str()), (want.0, Some(want.1)), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("nothing of this request was kept")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_plainly_and_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount("24m") else { return };
    let data = fs.data();
    let p = serve(&data, &[]);
    importer(&p.base).await;
    let first = run(&p.base, "first.csv", people(0, 200)).await;
    assert_eq!(first["status"], "success", "{first}");

    fill(&fs.dir.path().join("filler"));
    // An upload: 507, and no partial file is left behind.
    let big = people(1000, 20_000);
    let (s, b) = upload_named(&p.base, "/files", "big.csv", big).await;
    problem(s, &b, (507, "storage_full"));
    let (s, b) = upload_named(&p.base, "/connectors/people/runs", "big.csv", big).await;
    problem(s, &b, (507, "storage_full"));
    let leftovers: Vec<_> = std::fs::read_dir(data.join("tmp"))
        .unwrap_or_else(|e| panic!("{e}"))
        .collect();
    assert!(leftovers.is_empty(), "partial uploads were left: {leftovers:?}");
    // What was acknowledged still reads.
    let (s, again) = call(
        &p.base,
        Method::GET,
        &format!("/executions/{}", first["id"].as_str().unwrap_or_default()),
        None,
    )
    .await;
    assert_eq!((s, &again["status"]), (200, &first["status"]));
    assert_eq!(contacts(&p.base).await, 200);

    // Space again: the same upload goes through and runs.
    std::fs::remove_file(fs.dir.path().join("filler")).unwrap_or_else(|e| panic!("{e}"));
    let second = run(&p.base, "big.csv", big).await;
    assert_eq!(second["status"], "success", "{second}");
    p.stop();

    // After a restart everything acknowledged is there.
    let p = serve(&data, &[]);
    for ex in [&first, &second] {
        let id = ex["id"].as_str().unwrap_or_default();
        let (s, doc) = call(&p.base, Method::GET, &format!("/executions/{id}"), None).await;
        assert_eq!(
            (s, &doc["status"], &doc["step_progress"]),
            (200, &ex["status"], &ex["step_progress"])
        );
    }
    let (s, b) = call(
        &p.base,
        Method::GET,
        "/objects/contact/records?limit=1&email=user20999@example.com",
        None,
    )
    .await;
    assert_eq!((s, b["data"].as_array().map(Vec::len)), (200, Some(1)), "{b}");
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fills_the_disk_fails_with_its_reason_and_keeps_its_commits() {
    let Some(fs) = Tmpfs::mount("24m") else { return };
    let data = fs.data();
    let p = serve(&data, &[]);
    importer(&p.base).await;
    let (s, file) = upload_named(&p.base, "/files", "many.csv", people(0, 60_000)).await;
    assert_eq!(s, 201, "{file}");
    // Leave room for the request, not for the run's output and records.
    fill(&fs.dir.path().join("filler"));
    std::fs::write(fs.dir.path().join("filler2"), []).unwrap_or_else(|e| panic!("{e}"));
    let filler = std::fs::OpenOptions::new()
        .write(true)
        .open(fs.dir.path().join("filler"))
        .unwrap_or_else(|e| panic!("{e}"));
    let len = filler.metadata().map(|m| m.len()).unwrap_or(0);
    filler
        .set_len(len.saturating_sub(2 * 1024 * 1024))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(filler);

    let (s, b) = call(
        &p.base,
        Method::POST,
        "/connectors/people/runs",
        Some(json!({"source_file_id": file["id"]})),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap_or_default().to_string();
    // The run fills the disk; the state database then cannot take even its
    // final status. Free the space once the run is stuck there: its end
    // is stored then, with its reason.
    let started = std::time::Instant::now();
    let mut full_since = None;
    loop {
        let doc = common::status_of(&p.base, &id).await;
        if !matches!(doc["status"].as_str(), Some("queued" | "running")) {
            break;
        }
        if available(fs.dir.path()) < 256 * 1024 {
            let since = *full_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > std::time::Duration::from_secs(3) {
                break;
            }
        } else {
            full_since = None;
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the run never filled the disk: {doc}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    std::fs::remove_file(fs.dir.path().join("filler")).unwrap_or_else(|e| panic!("{e}"));
    let done = wait_end(&p.base, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("No space left on device") || message.contains("disk is full"),
        "{done}"
    );
    let created = done["step_progress"][4]["steps"][0]["created"].as_u64().unwrap_or(0);
    assert_eq!(
        stored_status(&data, &id),
        "failed",
        "the API shows an end once it is stored"
    );
    p.stop();

    // The commits before the disk filled are the records, and the counts
    // say so, after a restart too.
    let p = serve(&data, &[]);
    let (_, doc) = call(&p.base, Method::GET, &format!("/executions/{id}"), None).await;
    assert_eq!(
        doc["step_progress"][4]["steps"][0]["created"].as_u64(),
        Some(created),
        "{doc}"
    );
    assert_eq!(contacts(&p.base).await as u64, created);
    // And the same input, run again with room, completes it.
    let (s, b) = call(
        &p.base,
        Method::POST,
        "/connectors/people/runs",
        Some(json!({"source_file_id": file["id"]})),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap_or_default().to_string();
    let done = wait_end(&p.base, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    let load = &done["step_progress"][4]["steps"][0];
    assert_eq!(
        (load["created"].as_u64(), load["updated"].as_u64()),
        (Some(60_000 - created), Some(created)),
        "{done}"
    );
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_stops_the_server_at_start_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount("24m") else { return };
    let data = fs.data();
    let p = serve(&data, &[]);
    importer(&p.base).await;
    let first = run(&p.base, "first.csv", people(0, 50)).await;
    assert_eq!(first["status"], "success", "{first}");
    p.stop();

    fs.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("data directory {}", data.display())) && stderr.contains("Read-only file system"),
        "{stderr}"
    );

    fs.remount("rw");
    let p = serve(&data, &[]);
    let id = first["id"].as_str().unwrap_or_default();
    let (s, doc) = call(&p.base, Method::GET, &format!("/executions/{id}"), None).await;
    assert_eq!((s, &doc["status"]), (200, &first["status"]));
    assert_eq!(contacts(&p.base).await, 50);
    p.stop();
}
