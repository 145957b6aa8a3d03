//! The `weir` commands that drive a server (docs/cli.md), against a live
//! `weir serve`: every command, `--json`, the exit codes, `--wait`
//! following a run to its end, Ctrl-C on `--wait` leaving the run alone,
//! and `connectors apply` twice being a no-op the second time.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN, call, importer, serve, slow};
use reqwest::Method;
use serde_json::Value;

/// `weir ARGS` against `base` with the admin key.
fn weir(base: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_SERVER", base)
        .env("WEIR_KEY", ADMIN)
        .output()
        .unwrap_or_else(|e| panic!("weir: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_waits_for_the_end_and_exits_as_weir_run_does() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    importer(&server.base).await;
    let good = dir.path().join("people.csv");
    std::fs::write(&good, "email,city\nann@x.io,Oslo\nnot-an-email,Oslo\n").unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "name,town\nx,y\n").unwrap_or_else(|e| panic!("{e}"));
    let base = server.base.clone();
    let run = |args: Vec<String>| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || weir(&base, &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let path = |p: &Path| p.display().to_string();

    // --wait: the summary of `weir run`, exit 0 for a partial success.
    let out = run(vec!["trigger".into(), "people".into(), path(&good), "--wait".into()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("people  partial_success"), "{shown}");
    assert!(shown.contains("1 created"), "{shown}");

    // A failed run exits 1; with --json, the execution document.
    let out = run(vec![
        "trigger".into(),
        "people".into(),
        path(&bad),
        "--wait".into(),
        "--json".into(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let doc = json_of(&out);
    assert_eq!(doc["status"], "failed");
    assert!(doc["error"]["message"].is_string(), "{doc}");

    // Without --wait: the queued execution; a key makes retries one run.
    let keyed = |k: &str| {
        run(vec![
            "trigger".into(),
            "people".into(),
            path(&good),
            "--dry-run".into(),
            "--idempotency-key".into(),
            k.into(),
            "--json".into(),
        ])
    };
    let first = json_of(&keyed("nightly-1").await.unwrap_or_else(|e| panic!("{e}")));
    let again = json_of(&keyed("nightly-1").await.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["is_dry_run"], true);
    let id = first["id"].as_str().unwrap_or_default().to_string();

    // watch, get, logs and list of that run.
    let out = run(vec!["executions".into(), "watch".into(), id.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("(dry run)"), "{}", text(&out));
    let out = run(vec!["executions".into(), "get".into(), id.clone(), "--json".into()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&out)["status"], "partial_success");
    let out = run(vec!["executions".into(), "get".into(), id.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text(&out).contains(&id) && text(&out).contains("variables"),
        "{}",
        text(&out)
    );
    let out = run(vec!["executions".into(), "logs".into(), id.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(text(&out).contains("status: partial_success"), "{}", text(&out));
    let out = run(vec!["executions".into(), "logs".into(), id.clone(), "--json".into()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.len() > 3 && lines.iter().all(|l| l["seq"].is_u64()),
        "{}",
        text(&out)
    );
    let out = run(vec![
        "executions".into(),
        "list".into(),
        "people".into(),
        "--json".into(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let listed = json_of(&out);
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["id"] == id.as_str())),
        "{listed}"
    );
    let out = run(vec![
        "executions".into(),
        "list".into(),
        "people".into(),
        "--status".into(),
        "failed".into(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text(&out).lines().count(), 1, "{}", text(&out));

    // What the server refuses exits 2 with its reason.
    let out = run(vec![
        "trigger".into(),
        "people".into(),
        path(&good),
        "--parameter".into(),
        "x=1".into(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("422"), "{}", text(&out));
    let out = run(vec!["executions".into(), "get".into(), "nope".into()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("404"), "{}", text(&out));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_wait_leaves_the_run_alone_and_cancel_ends_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let server = serve(&data, &[]);
    slow(&server.base, &data).await;
    let input = dir.path().join("slow.csv");
    std::fs::write(&input, "a\n1\n").unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["trigger", "slow"])
        .arg(&input)
        .args(["--wait"])
        .env("WEIR_SERVER", &server.base)
        .env("WEIR_KEY", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Once the run is running, Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let (_, page) = call(&server.base, Method::GET, "/connectors/slow/executions", None).await;
        if let Some(run) = page["data"].as_array().and_then(|d| d.first())
            && run["status"] == "running"
        {
            break run["id"].as_str().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signaled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(signaled);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("goes on"), "{}", text(&out));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, doc) = call(&server.base, Method::GET, &format!("/executions/{id}"), None).await;
    assert_eq!(doc["status"], "running", "Ctrl-C left the run alone: {doc}");

    // cancel, then watch ends with the code of a canceled run.
    let base = server.base.clone();
    let (cancel, watched) = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let cancel = weir(&base, &["executions", "cancel", &id, "--json"]);
            let watched = weir(&base, &["executions", "watch", &id]);
            (cancel, watched)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel));
    assert!(["canceling", "canceled"].contains(&json_of(&cancel)["status"].as_str().unwrap_or_default()));
    assert_eq!(watched.status.code(), Some(130), "{}", text(&watched));
    assert!(text(&watched).contains("slow  canceled"), "{}", text(&watched));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_apply_creates_then_changes_nothing_then_updates() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/contacts-import");
    let copy = dir.path().join("contacts-import");
    std::fs::create_dir_all(copy.join("data")).unwrap_or_else(|e| panic!("{e}"));
    for name in ["connector.toml", "script.sql", "data/contacts_export.csv"] {
        std::fs::copy(example.join(name), copy.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let base = server.base.clone();
    let copy_path = copy.display().to_string();
    let apply = move || {
        let (base, copy_path) = (base.clone(), copy_path.clone());
        tokio::task::spawn_blocking(move || weir(&base, &["connectors", "apply", &copy_path, "--json"]))
    };
    let first = apply().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(json_of(&first)["outcome"], "created");
    let (_, before) = call(&server.base, Method::GET, "/connectors/contacts_import", None).await;

    let second = apply().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&second)["outcome"], "unchanged", "{}", text(&second));
    let (_, after) = call(&server.base, Method::GET, "/connectors/contacts_import", None).await;
    assert_eq!(before["updated_at"], after["updated_at"], "nothing was sent");
    assert_eq!(before["draft_version"], after["draft_version"]);

    let script = std::fs::read_to_string(copy.join("script.sql")).unwrap_or_default();
    std::fs::write(copy.join("script.sql"), format!("{script}\n-- reviewed\n")).unwrap_or_else(|e| panic!("{e}"));
    let third = apply().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&third)["outcome"], "updated", "{}", text(&third));
    let (_, sql) = call(&server.base, Method::GET, "/connectors/contacts_import/sql", None).await;
    assert!(
        sql["draft"]["text"]
            .as_str()
            .is_some_and(|t| t.ends_with("-- reviewed\n")),
        "{sql}"
    );

    // list and get.
    let base = server.base.clone();
    let (listed, got, got_json) = tokio::task::spawn_blocking(move || {
        (
            weir(&base, &["connectors", "list"]),
            weir(&base, &["connectors", "get", "contacts_import"]),
            weir(&base, &["connectors", "get", "contacts_import", "--json"]),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(text(&listed).contains("contacts_import"), "{}", text(&listed));
    assert!(text(&got).contains("api_name = \"contacts_import\""), "{}", text(&got));
    assert_eq!(json_of(&got_json)["api_name"], "contacts_import");
    server.stop();
}
