//! Hostile requests against `weir serve`: another workspace's key, a key
//! limited to some connectors, an unsigned sender, a client that never
//! finishes its headers (docs/reliability.md, "Hostile connectors").

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ADMIN, call, call_as, importer, key_in, post_bytes_as, serve, sign};
use reqwest::Method;
use serde_json::{Value, json};

/// The default workspace's signing secret.
const SECRET: &str = "whsec_d2VpciBob3N0aWxlIHRlc3Qgc2VjcmV0LCAzMiBieXRlcw==";
/// Another workspace's.
const EVIL_SECRET: &str = "whsec_ZXZpbCBob3N0aWxlIHRlc3Qgc2VjcmV0LCAzMiBieXRlcyE=";

/// Posts `body` to `/connectors/{c}/webhook`, signed as `id` under
/// `secret`, or with `key` (and `id` as its `webhook-id`) when given.
async fn post_hook(base: &str, c: &str, id: &str, body: &str, secret: &str, key: Option<&str>) -> (u16, Value) {
    let ts = chrono::Utc::now().timestamp();
    let mut r = reqwest::Client::new()
        .post(format!("{base}/connectors/{c}/webhook"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .body(body.to_string());
    r = match key {
        Some(key) => r.bearer_auth(key),
        None => r
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(secret, id, ts, body)),
    };
    let response = r.send().await.unwrap_or_else(|e| panic!("{e}"));
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// A webhook connector `name` of `key`'s workspace reading `secret_env`,
/// one execution per payload: its id, or the refusal.
async fn hook_connector(base: &str, key: &str, name: &str, secret_env: &str) -> Result<String, Value> {
    let sample = "{\"received_at\":\"2026-01-01T00:00:00Z\",\"webhook_id\":\"s\",\"content_type\":\"application/json\",\"querystring\":\"\",\"body\":\"{}\"}\n";
    let (s, file) = post_bytes_as(
        base,
        key,
        "/files?filename=webhooks.jsonl",
        "application/octet-stream",
        sample,
    )
    .await;
    assert_eq!(s, 201, "{file}");
    let doc = json!({"api_name": name, "type": "webhook", "sample_file_id": file["id"],
        "webhook": {"batch_window": "0", "secret_env": secret_env},
        "sql": {"text": "CREATE VIEW output.events AS SELECT webhook_id, body FROM input.webhooks"}});
    let (s, b) = call_as(base, key, Method::POST, "/connectors", Some(doc)).await;
    if s != 201 {
        return Err(b);
    }
    let id = b["id"].as_str().unwrap_or_default().to_string();
    let (s, b) = call_as(
        base,
        key,
        Method::POST,
        &format!("/connectors/{id}/sql/publish"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call_as(
        base,
        key,
        Method::PATCH,
        &format!("/connectors/{id}"),
        Some(json!({"status": "operational"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    Ok(id)
}

/// What a refusal says, without what differs per request.
fn refusal(b: &Value) -> (Value, Value, Value) {
    (b["status"].clone(), b["code"].clone(), b["detail"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_addressed_by_id_with_secrets_of_their_own_workspace() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let server = serve(
        &data,
        &[
            ("WEIR_WEBHOOK_SECRET_CRM", SECRET),
            ("EVIL_WHSEC_CRM", EVIL_SECRET),
            ("WEIR_WEBHOOK_SECRET_PREFIXES", "{evil=\"EVIL_WHSEC_\"}"),
        ],
    );
    let base = server.base.clone();
    let crm = hook_connector(&base, ADMIN, "crm", "WEIR_WEBHOOK_SECRET_CRM")
        .await
        .unwrap_or_else(|b| panic!("{b}"));

    // Another workspace may read only the variables under its own prefix.
    let evil = key_in(&data, "evil", "admin");
    for stolen in ["WEIR_WEBHOOK_SECRET_CRM", "HOME", "EVIL_WHSEC_"] {
        let b = hook_connector(&base, &evil, "crm", stolen)
            .await
            .err()
            .unwrap_or_else(|| panic!("{stolen} was taken"));
        let problems = b["errors"].as_array().cloned().unwrap_or_default();
        assert!(
            problems.iter().any(|p| p["path"] == "webhook.secret_env"),
            "{stolen}: {b}"
        );
    }
    // Its connector of the same name takes nothing from the first.
    hook_connector(&base, &evil, "crm", "EVIL_WHSEC_CRM")
        .await
        .unwrap_or_else(|b| panic!("{b}"));
    let (s, b) = post_hook(&base, &crm, "msg_1", "{\"n\":1}", SECRET, None).await;
    assert_eq!(s, 202, "{b}");
    assert!(b["execution_id"].is_string(), "{b}");

    // With another workspace's secret, by name, to an unknown id: one and
    // the same answer.
    let wrong = post_hook(&base, &crm, "msg_2", "{}", EVIL_SECRET, None).await;
    assert_eq!(wrong.0, 401, "{}", wrong.1);
    let by_name = post_hook(&base, "crm", "msg_2", "{}", SECRET, None).await;
    let unknown = post_hook(
        &base,
        "0190c0de-0000-7000-8000-000000000000",
        "msg_2",
        "{}",
        SECRET,
        None,
    )
    .await;
    for (what, answer) in [("by name", by_name), ("unknown", unknown)] {
        assert_eq!(refusal(&answer.1), refusal(&wrong.1), "{what}");
    }

    // A keyed sender's id does not take the signed sender's.
    let (s, b) = post_hook(&base, &crm, "msg_3", "{\"by\":\"key\"}", SECRET, Some(ADMIN)).await;
    assert_eq!((s, b["duplicate"].as_bool()), (202, Some(false)), "{b}");
    let (s, b) = post_hook(&base, &crm, "msg_3", "{\"by\":\"signature\"}", SECRET, None).await;
    assert_eq!((s, b["duplicate"].as_bool()), (202, Some(false)), "{b}");

    // Ids are bounded, signed or keyed.
    let long = "m".repeat(300);
    for key in [None, Some(ADMIN)] {
        let (s, b) = post_hook(&base, &crm, &long, "{}", SECRET, key).await;
        assert_eq!(s, 400, "{b}");
        assert!(b["detail"].as_str().is_some_and(|d| d.contains("255")), "{b}");
    }
    let (_, runs) = call(
        &base,
        Method::GET,
        &format!("/connectors/{crm}/executions?is_dry_run=false"),
        None,
    )
    .await;
    assert_eq!(runs["data"].as_array().map(Vec::len), Some(3), "{runs}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_connectors_reaches_no_further() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let base = server.base.clone();
    importer(&base).await;
    let (_, people) = call(&base, Method::GET, "/connectors/people", None).await;
    let people_id = people["id"].as_str().unwrap_or_default().to_string();
    let limited = people_admin(&base).await;

    // Keys reaching further than its own, in any spelling, are refused.
    for connectors in [json!(null), json!([]), json!(["people", "other"])] {
        let doc = json!({"name": "wider", "role": "admin", "connectors": connectors});
        let (s, b) = call_as(&base, &limited, Method::POST, "/keys", Some(doc)).await;
        assert_eq!(s, 403, "{connectors}: {b}");
    }
    // The same connector by its id is within reach.
    let doc = json!({"name": "narrow", "role": "operator", "connectors": [people_id]});
    let (s, b) = call_as(&base, &limited, Method::POST, "/keys", Some(doc)).await;
    assert_eq!(s, 201, "{b}");

    // What reaches the whole workspace is refused.
    let refused = [
        (Method::GET, "/keys", None),
        (
            Method::POST,
            "/connectors",
            Some(
                json!({"api_name": "more", "type": "spreadsheet", "sql": {"text": "CREATE VIEW output.o AS SELECT 1 AS x"}}),
            ),
        ),
        (
            Method::POST,
            "/objects",
            Some(json!({"name": "more", "fields": [{"name": "a", "type": "text"}]})),
        ),
        (Method::PATCH, "/objects/contact", Some(json!({"fields": []}))),
    ];
    for (method, path, body) in refused {
        let (s, b) = call_as(&base, &limited, method.clone(), path, body).await;
        assert_eq!(s, 403, "{method} {path}: {b}");
    }
    let (s, b) = post_bytes_as(
        &base,
        &limited,
        "/plugins?name=more&version=0.1.0",
        "application/wasm",
        b"\0asm".to_vec(),
    )
    .await;
    assert_eq!(s, 403, "{b}");

    // What its connector needs still works.
    let (s, b) = post_bytes_as(
        &base,
        &limited,
        "/connectors/people/runs?filename=p.csv",
        "application/octet-stream",
        "email,city\nb@x.io,Rome\n",
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = call(&base, Method::GET, "/keys", None).await;
    assert_eq!((s, b["data"].as_array().map(Vec::len)), (200, Some(3)), "{b}");

    // Its connector's package may be pushed back, but not make the
    // connector anew once it is gone.
    let package = reqwest::Client::new()
        .get(format!("{base}/connectors/people/dev-package"))
        .bearer_auth(&limited)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let push = async |key: &str| {
        let response = reqwest::Client::new()
            .put(format!("{base}/connectors/people/package"))
            .bearer_auth(key)
            .header("content-type", "application/zip")
            .body(package.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        response.status().as_u16()
    };
    assert_eq!(push(&limited).await, 200);
    let (s, b) = call(&base, Method::DELETE, "/connectors/people", None).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(push(&limited).await, 403);
    let (s, _) = call(&base, Method::GET, "/connectors/people", None).await;
    assert_eq!(s, 404, "a refused push made nothing");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_key_reads_only_what_its_connectors_use() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let base = server.base.clone();
    importer(&base).await;
    // Beside `people` and its `contact`: an object and a file it does not use.
    let (s, b) = call(
        &base,
        Method::POST,
        "/objects",
        Some(json!({"name": "salary", "fields": [{"name": "amount", "type": "number"}]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (_, secret_file) = post_bytes_as(&base, ADMIN, "/files?filename=pay.csv", "text/csv", "amount\n100\n").await;
    let secret_file = secret_file["id"].as_str().unwrap_or_default().to_string();
    let (_, people) = call(&base, Method::GET, "/connectors/people", None).await;
    let sample = people["sample_file_id"].as_str().unwrap_or_default().to_string();
    let limited = people_admin(&base).await;

    let (s, b) = call_as(&base, &limited, Method::GET, "/objects", None).await;
    let names: Vec<&str> = b["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!((s, names), (200, vec!["contact"]), "{b}");
    for path in ["/objects/salary", "/objects/salary/records"] {
        let (s, b) = call_as(&base, &limited, Method::GET, path, None).await;
        assert_eq!(s, 403, "{path}: {b}");
    }
    let (s, b) = call_as(&base, &limited, Method::GET, "/objects/contact/records", None).await;
    assert_eq!(s, 200, "{b}");

    // Files: its connector's sample and what it uploads, not the others'.
    let download = async |id: &str| {
        reqwest::Client::new()
            .get(format!("{base}/files/{id}/download"))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .status()
            .as_u16()
    };
    assert_eq!(download(&sample).await, 200);
    assert_eq!(download(&secret_file).await, 404);
    let (s, mine) = post_bytes_as(&base, &limited, "/files?filename=mine.csv", "text/csv", "email,city\n").await;
    assert_eq!(s, 201, "{mine}");
    assert_eq!(download(mine["id"].as_str().unwrap_or_default()).await, 200);
    // Nor can it make another's file its connector's sample, or a run's input.
    let (s, b) = call_as(
        &base,
        &limited,
        Method::PATCH,
        "/connectors/people",
        Some(json!({"sample_file_id": secret_file})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = call_as(
        &base,
        &limited,
        Method::POST,
        "/connectors/people/runs",
        Some(json!({"source_file_id": secret_file})),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (422, Some("unknown_file")), "{b}");
    // The file it sends with a run is one it reaches.
    let (s, run) = post_bytes_as(
        &base,
        &limited,
        "/connectors/people/runs?filename=run.csv",
        "text/csv",
        "email,city\nr@x.io,Oslo\n",
    )
    .await;
    assert_eq!(s, 202, "{run}");
    assert_eq!(download(run["source_file_id"].as_str().unwrap_or_default()).await, 200);
    // Nor can it make its connector read or load an object it does not
    // reach, through SQL or a load step; nothing of the edit is kept.
    let (_, before) = call(&base, Method::GET, "/connectors/people/sql", None).await;
    let (s, b) = call_as(
        &base,
        &limited,
        Method::PUT,
        "/connectors/people/sql/draft",
        Some(json!({"text": "CREATE VIEW output.people AS SELECT amount FROM records.salary"})),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    let (_, after) = call(&base, Method::GET, "/connectors/people/sql", None).await;
    assert_eq!(before, after, "a refused draft is not saved");
    let loads = json!([{"order": 1, "scope": "people", "object": "salary",
                        "fields": [{"field": "amount", "variables": ["city"]}]}]);
    let (s, b) = call_as(
        &base,
        &limited,
        Method::PATCH,
        "/connectors/people",
        Some(json!({"loads": loads})),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    // The whole workspace's admin reaches it all.
    let (s, b) = call(&base, Method::GET, "/objects/salary/records", None).await;
    assert_eq!(s, 200, "{b}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_belongs_to_one_connector() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(&dir.path().join("data"), &[]);
    let base = server.base.clone();
    importer(&base).await;
    let (_, sample) = post_bytes_as(&base, ADMIN, "/files?filename=s.csv", "text/csv", "email,city\n").await;
    let doc = json!({"api_name": "other", "type": "spreadsheet", "sample_file_id": sample["id"],
                     "sql": {"text": "CREATE VIEW output.o AS SELECT email FROM input.data"}});
    let (s, b) = call(&base, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 201, "{b}");
    call(&base, Method::POST, "/connectors/other/sql/publish", Some(json!({}))).await;
    let (s, b) = call(
        &base,
        Method::PATCH,
        "/connectors/other",
        Some(json!({"status": "operational"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let mut ids = Vec::new();
    for c in ["people", "other", "people"] {
        let response = reqwest::Client::new()
            .post(format!("{base}/connectors/{c}/runs?filename=p.csv"))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", "nightly-2026-12-05")
            .body("email,city\nb@x.io,Rome\n")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 202, "{c}");
        let b: Value = response.json().await.unwrap_or(Value::Null);
        ids.push(b["id"].as_str().unwrap_or_default().to_string());
    }
    assert_ne!(ids[0], ids[1], "each connector runs under the key");
    assert_eq!(ids[0], ids[2], "a retry on the same connector is the first run");
    server.stop();
}

/// Opens a connection and sends part of a request's headers.
fn slow_client(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("{e}"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_let_go() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(
        &dir.path().join("data"),
        &[("WEIR_HEADER_READ_TIMEOUT", "1s"), ("WEIR_MAX_CONNECTIONS", "4")],
    );
    let base = server.base.clone();
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .to_string();
    // As many slow clients as the server serves connections at once.
    let started = Instant::now();
    let slow: Vec<_> = (0..4).map(|_| slow_client(&addr)).collect();
    // A new client waits for a free connection, which the header timeout
    // makes: it is answered, late but well before the slow clients would
    // have let go.
    let (s, b) = tokio::time::timeout(Duration::from_secs(10), call(&base, Method::GET, "/healthz", None))
        .await
        .unwrap_or_else(|_| panic!("healthz waited behind the slow clients"));
    assert_eq!(s, 200, "{b}");
    // Each slow client was closed by the server soon after the timeout.
    for mut stream in slow {
        let mut buf = Vec::new();
        let read = stream.read_to_end(&mut buf);
        assert!(read.is_ok(), "the server did not close the connection: {read:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
    server.stop();
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_leave_nothing_and_answers_show_no_server_paths() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let server = serve(&data, &[]);
    let base = server.base.clone();
    importer(&base).await;
    let place = data
        .canonicalize()
        .unwrap_or_else(|e| panic!("{e}"))
        .display()
        .to_string();
    let blobs = files_under(&data.join("files"));

    let response = reqwest::Client::new()
        .put(format!("{base}/connectors/people/package"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/zip")
        .body("not a zip at all")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 422);
    let text = response.text().await.unwrap_or_default();
    assert!(!text.contains(&place), "{text}");
    let (s, b) = post_bytes_as(
        &base,
        ADMIN,
        "/plugins?name=junk&version=0.1.0",
        "application/wasm",
        b"\0asm not really".to_vec(),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(files_under(&data.join("files")), blobs, "refused bodies are not kept");
    assert_eq!(files_under(&data.join("tmp")), 0);

    // A run whose input cannot be read says why, not where.
    let (s, run) = post_bytes_as(
        &base,
        ADMIN,
        "/connectors/people/runs?filename=p.parquet",
        "application/octet-stream",
        "PAR1 but not parquet",
    )
    .await;
    assert_eq!(s, 202, "{run}");
    let doc = common::wait_end(&base, run["id"].as_str().unwrap_or_default()).await;
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty() && !message.contains(&place), "{doc}");
    println!("{message}");

    // Upload names that point elsewhere, hide text or never end.
    let names = [
        ("..", "upload"),
        (".", "upload"),
        ("%2E%2E%2F%2E%2E%2Fetc", "etc"),
        ("invoice%E2%80%AEvsc.exe", "invoicevsc.exe"),
    ];
    for (sent, kept) in names {
        let (s, b) = post_bytes_as(&base, ADMIN, &format!("/files?filename={sent}"), "text/csv", "a\n1\n").await;
        assert_eq!((s, b["name"].as_str()), (201, Some(kept)), "{sent}: {b}");
    }
    let long = format!("{}.csv", "n".repeat(5000));
    let (s, b) = post_bytes_as(&base, ADMIN, &format!("/files?filename={long}"), "text/csv", "a\n1\n").await;
    let kept = b["name"].as_str().unwrap_or_default();
    assert_eq!(s, 201, "{b}");
    assert!(kept.len() <= 255 && kept.ends_with(".csv"), "{kept}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_for_the_operator_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let token = "scraper-token-0123456789";
    let server = serve(&data, &[("WEIR_METRICS_TOKEN", token)]);
    let base = server.base.clone();
    let other_admin = key_in(&data, "evil", "admin");
    let viewer = key_in(&data, "default", "viewer");
    let status = async |key: &str| call_as(&base, key, Method::GET, "/metrics", None).await.0;
    assert_eq!(status(&other_admin).await, 403, "another workspace's admin");
    assert_eq!(status(&viewer).await, 403, "a viewer of the operator's workspace");
    assert_eq!(status("not-the-token").await, 401);
    assert_eq!(status(token).await, 200);
    assert_eq!(status(ADMIN).await, 200);
    server.stop();
}

/// An admin key limited to the `people` connector.
async fn people_admin(base: &str) -> String {
    let (s, b) = call(
        base,
        Method::POST,
        "/keys",
        Some(json!({"name": "people admin", "role": "admin", "connectors": ["people"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    b["secret"].as_str().unwrap_or_default().to_string()
}
