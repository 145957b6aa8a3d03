//! A hostile connector against `weir serve` and `weir run`: what it tries,
//! with an ordinary key of its own workspace or as a dev package someone
//! else runs, and what must hold (docs/reliability.md, "Hostile
//! connectors").

mod common;

use std::path::Path;
use std::process::Command;

use common::{call, call_as, get_bytes, importer, key_in, post_bytes_as, serve, upload, wait_end};
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
