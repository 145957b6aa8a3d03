//! A hostile connector against `weir serve` and `weir run`: what it tries,
//! with an ordinary key of its own workspace or as a dev package someone
//! else runs, and what must hold (docs/reliability.md, "Hostile
//! connectors").

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, call, call_as, get_bytes, importer, key_in, post_bytes_as, serve, upload, wait, wait_end};
use reqwest::Method;
use serde_json::{Value, json};

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            out.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_name_cannot_write_outside_its_run_through_the_api() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let elsewhere = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let base = server.base.clone();

    // The victim's run leaves a rejected.csv with one bad row.
    importer(&base).await;
    let (s, run) = upload(
        &base,
        "/connectors/people/runs",
        b"email,city\nnot-an-email,Oslo\nb@x.io,Rome\n",
    )
    .await;
    assert_eq!(s, 202, "{run}");
    let victim = run["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(wait_end(&base, &victim).await["status"], "partial_success");
    let rejected = format!("/executions/{victim}/rejected.csv");
    let (s, before) = get_bytes(&base, &rejected).await;
    assert_eq!(s, 200);

    // The attacker has an admin key of a workspace of its own.
    let evil = key_in(&dir.path().join("data"), "evil", "admin");
    let (s, sample) = post_bytes_as(&base, &evil, "/files?filename=s.csv", "text/csv", "x\n1\n").await;
    assert_eq!(s, 201, "{sample}");
    let outside = elsewhere.path().join("made").join("by").join("attacker");
    let scripts = [
        format!("CREATE VIEW output.\"../../../executions/{victim}/rejected\" AS SELECT 'pwned' AS x"),
        format!("CREATE TABLE output.\"{}\" AS SELECT 'pwned' AS x", outside.display()),
        "CREATE VIEW \"../t\" AS SELECT 1 AS x;\nCREATE VIEW output.ok AS SELECT * FROM \"../t\"".to_string(),
    ];
    for script in &scripts {
        let doc = json!({"api_name": "evil", "type": "spreadsheet", "sample_file_id": sample["id"],
                         "sql": {"text": script}});
        let (s, b) = call_as(&base, &evil, Method::POST, "/connectors", Some(doc)).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("sql_not_allowed")), "{script}: {b}");
    }
    // A connector with a harmless script, whose draft then turns hostile:
    // the draft is kept (as every refused draft is) but never runs.
    let doc = json!({"api_name": "evil", "type": "spreadsheet", "sample_file_id": sample["id"],
                     "sql": {"text": "CREATE VIEW output.ok AS SELECT x FROM input.data"}});
    let (s, b) = call_as(&base, &evil, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 201, "{b}");
    for script in &scripts {
        let body = json!({"text": script});
        let (s, b) = call_as(&base, &evil, Method::PUT, "/connectors/evil/sql/draft", Some(body)).await;
        assert_eq!((s, b["code"].as_str()), (422, Some("sql_not_allowed")), "{script}: {b}");
        assert!(b["detail"].as_str().unwrap_or_default().contains("not a valid"), "{b}");
        let (s, b) = call_as(&base, &evil, Method::POST, "/connectors/evil/preview", Some(json!({}))).await;
        let failed = (
            b["execution"]["status"].as_str(),
            b["execution"]["error"]["code"].as_str(),
        );
        assert_eq!(
            (s, failed),
            (200, (Some("failed"), Some("sql_not_allowed"))),
            "preview of {script}: {b}"
        );
        let (s, b) = call_as(
            &base,
            &evil,
            Method::POST,
            "/connectors/evil/sql/publish",
            Some(json!({})),
        )
        .await;
        assert!(s >= 400, "publishing {script}: {s} {b}");
    }

    let (_, after) = get_bytes(&base, &rejected).await;
    assert_eq!(String::from_utf8_lossy(&after), String::from_utf8_lossy(&before));
    assert!(!String::from_utf8_lossy(&after).contains("pwned"));
    assert_eq!(
        tree(elsewhere.path()),
        Vec::<String>::new(),
        "nothing is written outside"
    );
    let (s, doc) = call(&base, Method::GET, &format!("/executions/{victim}"), None).await;
    assert_eq!((s, &doc["status"]), (200, &Value::from("partial_success")));
    server.stop();
}

#[test]
fn weir_run_of_a_hostile_package_writes_nothing_outside_its_out_directory() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let package = root.path().join("package");
    let target = root.path().join("target");
    std::fs::create_dir_all(package.join("data")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&target).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(package.join("data/in.csv"), "x\n1\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        package.join("connector.toml"),
        "api_name = \"evil\"\ntype = \"spreadsheet\"\n\n[sql]\nfile = \"script.sql\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let escapes = [
        "CREATE VIEW output.\"../../target/escaped\" AS SELECT x FROM input.data".to_string(),
        format!(
            "CREATE VIEW output.\"{}\" AS SELECT x FROM input.data",
            target.join("absolute").display()
        ),
    ];
    for script in escapes {
        std::fs::write(package.join("script.sql"), &script).unwrap_or_else(|e| panic!("{e}"));
        let out = root.path().join("runs").join("out");
        let o = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("run")
            .arg(&package)
            .arg("--out")
            .arg(&out)
            .arg("--json")
            .output()
            .unwrap_or_else(|e| panic!("weir run: {e}"));
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc["status"], "failed");
        assert_eq!(doc["error"]["code"], "sql_not_allowed", "{doc}");
        assert_eq!(tree(&target), Vec::<String>::new(), "{script}");
        // Inside the run directory, only the run's own files.
        for path in tree(root.path().join("runs").as_path()) {
            assert!(
                path == "out" || path.starts_with("out/"),
                "{script}: {path} is outside the out directory"
            );
        }
    }
}

/// The hostile corpus kept with the engine's tests.
fn corpus(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/hostile")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The processes whose parent is `pid`: the server's workers.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// The peak resident memory (`VmHWM`) of process `pid`, in bytes.
fn peak_memory(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Answers `/healthz` every 20 ms until stopped; keeps every latency.
struct Health {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl Health {
    fn watch(base: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{base}/healthz");
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let client = reqwest::Client::new();
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let answer = client.get(&url).timeout(Duration::from_secs(5)).send().await;
                    let ok = answer.is_ok_and(|r| r.status().is_success());
                    latencies.push(if ok { t.elapsed() } else { Duration::MAX });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                latencies
            }
        });
        Self { stop, task }
    }

    /// Stops watching; asserts `/healthz` answered within 100 ms at the
    /// 95th percentile and within a second every time.
    async fn assert_answered(self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = self.task.await.unwrap_or_else(|e| panic!("{e}"));
        latencies.sort();
        assert!(latencies.len() > 20, "{} health checks", latencies.len());
        let p95 = latencies[latencies.len() * 95 / 100];
        let max = latencies[latencies.len() - 1];
        eprintln!("healthz: {} checks, p95 {p95:?}, max {max:?}", latencies.len());
        assert!(p95 <= Duration::from_millis(100), "healthz p95 {p95:?}");
        assert!(max <= Duration::from_secs(1), "healthz max {max:?}");
    }
}

/// Creates an operational connector `name` with `script` and `limits`.
async fn connector(base: &str, name: &str, script: &str, limits: Value) {
    let (_, sample) = post_bytes_as(base, ADMIN, "/files?filename=s.csv", "text/csv", "x\n1\n").await;
    let doc = json!({"api_name": name, "type": "spreadsheet", "sample_file_id": sample["id"],
                     "sql": {"text": script}, "limits": limits});
    let (s, b) = call(base, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        base,
        Method::POST,
        &format!("/connectors/{name}/sql/publish"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        base,
        Method::PATCH,
        &format!("/connectors/{name}"),
        Some(json!({"status": "operational"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

/// Triggers a run of `name` on `bytes` named `file`; its id.
async fn trigger(base: &str, name: &str, file: &str, bytes: Vec<u8>) -> String {
    let path = format!("/connectors/{name}/runs?filename={file}");
    let (s, run) = post_bytes_as(base, ADMIN, &path, "application/octet-stream", bytes).await;
    assert_eq!(s, 202, "{run}");
    run["id"].as_str().unwrap_or_default().to_string()
}

fn error_of(doc: &Value) -> (&str, &str) {
    (
        doc["error"]["code"].as_str().unwrap_or_default(),
        doc["error"]["message"].as_str().unwrap_or_default(),
    )
}

/// Seconds from a document's `started_at` to its `ended_at`.
fn run_seconds(doc: &Value) -> f64 {
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(doc[field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field} of {doc}: {e}"))
    };
    (at("ended_at") - at("started_at")).as_seconds_f64()
}

/// A query that never ends on an input whose `x` is above 1; on the
/// sample (`x = 1`), which publishing dry-runs, it ends at once.
const SPIN: &str = "CREATE VIEW output.o AS SELECT count(*) AS n \
    FROM (SELECT x FROM input.data WHERE x > 1) AS d \
    CROSS JOIN generate_series(1, 1000000000) AS a CROSS JOIN generate_series(1, 1000000000) AS b";

/// Every input of the corpus that once crashed or froze the server, run
/// one after the other against one server: each ends its own execution
/// with a clear code, `/healthz` answers throughout, and the next ordinary
/// run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_crash_input_ends_its_own_run_while_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let base = server.base.clone();
    importer(&base).await;
    let health = Health::watch(&base);

    // Scripts past the bounds: refused when saved, and refused again by
    // the worker when the stored draft is previewed.
    connector(
        &base,
        "drafts",
        "CREATE VIEW output.o AS SELECT x FROM input.data",
        json!({}),
    )
    .await;
    for name in ["deep-plus.sql", "or-chain.sql", "union-chain.sql"] {
        let text = String::from_utf8(corpus(name)).unwrap_or_else(|e| panic!("{e}"));
        let (s, b) = call(
            &base,
            Method::PUT,
            "/connectors/drafts/sql/draft",
            Some(json!({"text": text})),
        )
        .await;
        assert_eq!((s, b["code"].as_str()), (422, Some("sql_not_allowed")), "{name}: {b}");
        let (s, b) = call(&base, Method::POST, "/connectors/drafts/preview", Some(json!({}))).await;
        assert_eq!(s, 200, "{name}: {b}");
        assert_eq!(error_of(&b["execution"]).0, "sql_not_allowed", "{name}: {b}");
    }

    // Workbooks: the one spanning the whole sheet reads, the bomb is
    // refused for the run's memory.
    connector(
        &base,
        "sheets",
        "CREATE VIEW output.o AS SELECT count(*) AS n FROM input.data",
        json!({"max_memory": "256MiB"}),
    )
    .await;
    let dense = trigger(&base, "sheets", "dense.xlsx", corpus("dense.xlsx")).await;
    assert_eq!(wait_end(&base, &dense).await["status"], "success");
    let bomb = trigger(&base, "sheets", "huge-string.xlsx", corpus("huge-string.xlsx")).await;
    let doc = wait_end(&base, &bomb).await;
    assert_eq!(error_of(&doc).0, "limit_exceeded", "{doc}");
    // An archive of more entries than are read is refused unopened.
    let many = trigger(&base, "sheets", "many-entries.zip", corpus("many-entries.zip")).await;
    let doc = wait_end(&base, &many).await;
    assert_eq!(
        error_of(&doc),
        (
            "unreadable_input",
            "`many-entries.zip` holds 5000 entries; at most 1000 are read"
        ),
        "{doc}"
    );

    // A query that never ends is stopped at max_runtime, by the worker
    // itself or else by its supervisor a second later.
    let spin = SPIN;
    connector(&base, "spin", spin, json!({"max_runtime": "2s"})).await;
    let id = trigger(&base, "spin", "in.csv", b"x\n2\n".to_vec()).await;
    let doc = wait_end(&base, &id).await;
    assert_eq!(
        (doc["status"].as_str(), error_of(&doc).0),
        (Some("failed"), "limit_exceeded"),
        "{doc}"
    );
    let seconds = run_seconds(&doc);
    eprintln!("a non-yielding query ended after {seconds:.2} s (max_runtime 2 s)");
    assert!(seconds <= 4.0, "{seconds} s");

    // CREATE TABLE … AS is held to max_memory; the worker's peak resident
    // memory is measured while it runs.
    let hoard = "CREATE TABLE t AS SELECT v, repeat('x', 200) AS pad \
                 FROM (SELECT x FROM input.data WHERE x > 1) AS d CROSS JOIN generate_series(1, 100000000) AS s(v);\n\
                 CREATE VIEW output.o AS SELECT count(*) AS n FROM t";
    connector(&base, "hoard", hoard, json!({"max_memory": "128MiB"})).await;
    let id = trigger(&base, "hoard", "in.csv", b"x\n2\n".to_vec()).await;
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, pid, stop) = (peak.clone(), server.child.id(), Arc::new(AtomicBool::new(false)));
        let handle = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for child in children(pid) {
                        peak.fetch_max(peak_memory(child), Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        (stop, handle)
    };
    let doc = wait_end(&base, &id).await;
    sampler.0.store(true, Ordering::Relaxed);
    let _ = sampler.1.join();
    assert_eq!(error_of(&doc).0, "limit_exceeded", "{doc}");
    assert!(error_of(&doc).1.contains("memory"), "{doc}");
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "CREATE TABLE AS under max_memory 128 MiB: worker peak RSS {} MiB",
        peak >> 20
    );
    assert!(peak > 0, "no worker was seen");
    assert!(peak <= 400 << 20, "worker peak {} MiB", peak >> 20);

    let (s, run) = upload(&base, "/connectors/people/runs", b"email,city\nc@x.io,Rome\n").await;
    assert_eq!(s, 202, "{run}");
    let doc = wait_end(&base, run["id"].as_str().unwrap_or_default()).await;
    assert_eq!(doc["status"], "success", "{doc}");
    health.assert_answered().await;
    server.stop();
}

/// A worker killed by a signal (SIGABRT, as a failed allocation aborts)
/// ends its run `worker_crashed` naming the signal; the run is not tried
/// again, and the server runs the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_fails_its_run_alone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let base = server.base.clone();
    importer(&base).await;
    let spin = SPIN;
    connector(&base, "spin", spin, json!({"max_runtime": "60s"})).await;
    let id = trigger(&base, "spin", "in.csv", b"x\n2\n".to_vec()).await;
    wait(&base, &id, |s| s == "running").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let worker = loop {
        if let Some(&pid) = children(server.child.id()).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no worker started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed = Command::new("kill").args(["-ABRT", &worker.to_string()]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let doc = wait_end(&base, &id).await;
    let (code, message) = error_of(&doc);
    assert_eq!(
        (doc["status"].as_str(), code),
        (Some("failed"), "worker_crashed"),
        "{doc}"
    );
    assert!(message.contains("SIGABRT"), "{message}");

    let (s, run) = upload(&base, "/connectors/people/runs", b"email,city\nc@x.io,Rome\n").await;
    assert_eq!(s, 202, "{run}");
    let next = wait_end(&base, run["id"].as_str().unwrap_or_default()).await;
    assert_eq!(next["status"], "success", "{next}");
    // Not retried: the crashed run is the connector's only one (beside
    // the dry run of its publishing).
    let (s, list) = call(&base, Method::GET, "/connectors/spin/executions", None).await;
    assert_eq!(s, 200, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["is_dry_run"] == false)
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "{list}");
    assert_eq!(error_of(&common::status_of(&base, &id).await).0, "worker_crashed");
    server.stop();
}

/// A run that takes long but yields between batches: the engine's own
/// deadline can end it from inside the process that runs it.
const SLOW: &str = "CREATE VIEW output.o AS SELECT count(*) AS n \
    FROM (SELECT x FROM input.data WHERE x > 1) AS d \
    CROSS JOIN generate_series(1, 100000000000) AS a";

/// `isolation = "none"` runs executions inside the server: no worker is
/// started, and the engine's own deadline still ends a run that goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_isolation_runs_execute_inside_the_server() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[("WEIR_ISOLATION", "none")]);
    let base = server.base.clone();
    connector(&base, "slow", SLOW, json!({"max_runtime": "2s"})).await;
    let id = trigger(&base, "slow", "in.csv", b"x\n2\n".to_vec()).await;
    let mut workers = Vec::new();
    let doc = loop {
        workers.extend(children(server.child.id()));
        let doc = common::status_of(&base, &id).await;
        if !matches!(doc["status"].as_str(), Some("queued" | "running" | "canceling")) {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(workers, Vec::<u32>::new());
    let (code, message) = error_of(&doc);
    assert_eq!(code, "limit_exceeded", "{doc}");
    assert!(message.contains("took longer than max_runtime"), "{message}");
    server.stop();
}
