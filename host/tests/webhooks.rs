//! Webhooks into `weir serve` as a process (its signing secret comes from
//! its environment): Standard Webhooks signatures made by the reference
//! implementation (`standardwebhooks` from PyPI), batch windows, a window of
//! zero, buffering while inactive, and batches across a restart.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{ADMIN, call, serve, upload_named, wait};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET_ENV: &str = "WEIR_WEBHOOK_SECRET_TEST";

fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"weir webhook test secret, 32 bytes")
    )
}

/// `webhook-signature` for `body`, made by the `standardwebhooks` package
/// (installed with pip when missing).
fn reference_signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    const SIGN: &str = "import sys, datetime\n\
        from standardwebhooks.webhooks import Webhook\n\
        when = datetime.datetime.fromtimestamp(int(sys.argv[3]), tz=datetime.timezone.utc)\n\
        print(Webhook(sys.argv[1]).sign(sys.argv[2], when, sys.stdin.read()))\n";
    let run = || {
        let mut child = Command::new("python3")
            .args(["-c", SIGN, secret, id, &timestamp.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 is needed to sign with standardwebhooks: {e}"));
        child
            .stdin
            .take()
            .map(|mut i| i.write_all(body.as_bytes()))
            .transpose()
            .unwrap_or_else(|e| panic!("{e}"));
        child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
    };
    common::ensure_standardwebhooks();
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Posts a payload signed with `signature` (or with the admin key when
/// `None`).
async fn post(base: &str, connector: &str, body: Vec<u8>, signed: Option<(&str, i64, String)>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{base}/connectors/{connector}/webhook?source=crm"))
        .header("content-type", "application/json")
        .body(body);
    r = match signed {
        Some((id, ts, signature)) => r
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature),
        None => r.bearer_auth(ADMIN),
    };
    let response = r.send().await.unwrap_or_else(|e| panic!("{e}"));
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// An operational webhook connector with `window`, listing what it got.
async fn hooks(base: &str, api_name: &str, window: &str, status: &str) -> String {
    let sample = b"{\"received_at\":\"2026-01-01T00:00:00Z\",\"webhook_id\":\"s\",\"content_type\":\"application/json\",\"querystring\":\"\",\"body\":\"{}\"}\n";
    let (_, file) = upload_named(base, "/files", "webhooks.jsonl", sample).await;
    let (s, b) = call(
        base,
        Method::POST,
        "/connectors",
        Some(json!({
            "api_name": api_name, "type": "webhook", "sample_file_id": file["id"],
            "webhook": {"batch_window": window, "secret_env": SECRET_ENV},
            "sql": {"text": "CREATE VIEW output.events AS SELECT webhook_id, content_type, querystring, body FROM input.webhooks"},
        })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap_or_default().to_string();
    let (s, b) = call(
        base,
        Method::POST,
        &format!("/connectors/{api_name}/sql/publish"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        base,
        Method::PATCH,
        &format!("/connectors/{api_name}"),
        Some(json!({"status": status})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    id
}

/// The live executions of a connector, oldest first.
async fn executions(base: &str, connector: &str) -> Vec<Value> {
    let (_, b) = call(
        base,
        Method::GET,
        &format!("/connectors/{connector}/executions?is_dry_run=false"),
        None,
    )
    .await;
    let mut list = b["data"].as_array().cloned().unwrap_or_default();
    list.reverse();
    list
}

/// Waits until the connector has `n` live executions.
async fn executions_reach(base: &str, connector: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = executions(base, connector).await;
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "{connector} has {} executions", list.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `events` output of an execution.
async fn events(base: &str, id: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("{base}/executions/{id}/output.zip"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bytes = response.bytes().await.unwrap_or_else(|e| panic!("{e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("output/events.csv").unwrap_or_else(|e| panic!("{e}")),
        &mut text,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_are_checked_batched_into_one_run_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = secret();
    let p = serve(dir.path(), &[(SECRET_ENV, &secret)]);
    let base = p.base.clone();
    let id = hooks(&base, "crm_events", "2s", "operational").await;

    // Three payloads signed by the reference implementation, one batch.
    // All are signed first, so that only their posts fall in the window.
    let signed: Vec<_> = (1..=3)
        .map(|n| {
            let body = format!("{{\"name\":\"ada {n}\"}}");
            let msg = format!("msg_{n}");
            let ts = now();
            let sig = reference_signature(&secret, &msg, ts, &body);
            (body, msg, ts, sig)
        })
        .collect();
    let mut closes = Vec::new();
    for (body, msg, ts, sig) in signed {
        // By id: a signed sender needs no key.
        let (s, b) = post(&base, &id, body.into_bytes(), Some((&msg, ts, sig))).await;
        assert_eq!(s, 202, "{b}");
        assert_eq!(
            (b["webhook_id"].as_str(), b["duplicate"].as_bool()),
            (Some(msg.as_str()), Some(false))
        );
        assert!(b["execution_id"].is_null(), "{b}");
        closes.push(b["batch_closes_at"].clone());
    }
    assert!(closes.windows(2).all(|w| w[0] == w[1]), "one batch: {closes:?}");

    // A replayed id is not stored again; its receipt is the first one.
    let ts = now();
    let sig = reference_signature(&secret, "msg_1", ts, "{\"name\":\"ada 1\"}");
    let (s, b) = post(&base, &id, b"{\"name\":\"ada 1\"}".to_vec(), Some(("msg_1", ts, sig))).await;
    assert_eq!((s, b["duplicate"].as_bool()), (202, Some(true)), "{b}");
    // The same id with another body is another request: refused.
    let sig = reference_signature(&secret, "msg_2", ts, "{\"name\":\"bob\"}");
    let (s, b) = post(&base, &id, b"{\"name\":\"bob\"}".to_vec(), Some(("msg_2", ts, sig))).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("idempotency_key_reused")), "{b}");

    // Refused: another secret, a stale or future timestamp, a changed body,
    // a missing signature, too large a body, a body that is not UTF-8.
    let other = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"another secret entirely, 32 byte")
    );
    let body = "{\"name\":\"eve\"}";
    // One timestamp for all, so a second passing between signing and
    // sending changes nothing.
    let ts = now();
    let cases = [
        ("wrong secret", ts, reference_signature(&other, "msg_9", ts, body), body),
        (
            "stale",
            ts - 600,
            reference_signature(&secret, "msg_9", ts - 600, body),
            body,
        ),
        (
            "future",
            ts + 600,
            reference_signature(&secret, "msg_9", ts + 600, body),
            body,
        ),
        (
            "changed body",
            ts,
            reference_signature(&secret, "msg_9", ts, body),
            "{\"name\":\"mallory\"}",
        ),
    ];
    for (what, ts, sig, sent) in cases {
        let (s, b) = post(&base, &id, sent.as_bytes().to_vec(), Some(("msg_9", ts, sig))).await;
        assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")), "{what}: {b}");
    }
    let unsigned = reqwest::Client::new()
        .post(format!("{base}/connectors/{id}/webhook"))
        .body("{}")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unsigned.status().as_u16(), 401);
    let big = vec![b'a'; 256 * 1024 + 1];
    let (s, b) = post(&base, "crm_events", big, None).await;
    assert_eq!((s, b["code"].as_str()), (413, Some("payload_too_large")), "{b}");
    let (s, b) = post(&base, "crm_events", vec![b'{', 0xff, 0xfe, b'}'], None).await;
    assert_eq!((s, b["code"].as_str()), (422, Some("invalid_payload")), "{b}");

    // The window closes into one execution over input.webhooks, in order.
    let list = executions_reach(&base, "crm_events", 1).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["trigger_type"], "webhook");
    let run = list[0]["id"].as_str().unwrap_or_default().to_string();
    let done = wait(&base, &run, |s| s == "success" || s == "failed").await;
    assert_eq!(done["status"], "success", "{done}");
    let csv = events(&base, &run).await;
    let ids: Vec<&str> = csv.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
    assert_eq!(ids, ["msg_1", "msg_2", "msg_3"], "{csv}");
    assert!(csv.contains("application/json,source=crm,"), "{csv}");
    assert!(csv.contains("\"{\"\"name\"\":\"\"ada 2\"\"}\""), "{csv}");
    // The replayed and refused payloads made no second execution.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(executions(&base, "crm_events").await.len(), 1);
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_runs_each_webhook_and_an_inactive_connector_buffers_across_a_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = secret();
    let p = serve(dir.path(), &[(SECRET_ENV, &secret)]);
    let base = p.base.clone();

    // batch_window = "0": an execution per payload, named in the answer.
    hooks(&base, "each", "0", "operational").await;
    let mut runs = Vec::new();
    for n in 0..2 {
        let (s, b) = post(&base, "each", format!("{{\"n\":{n}}}").into_bytes(), None).await;
        assert_eq!(s, 202, "{b}");
        runs.push(b["execution_id"].as_str().unwrap_or_else(|| panic!("{b}")).to_string());
    }
    assert_ne!(runs[0], runs[1]);
    // A keyed retry under its Idempotency-Key: the first receipt, no run.
    let retry = |body: &'static str| {
        reqwest::Client::new()
            .post(format!("{base}/connectors/each/webhook"))
            .bearer_auth(ADMIN)
            .header("idempotency-key", "order-7")
            .body(body)
            .send()
    };
    let first = retry("{\"order\":7}").await.unwrap_or_else(|e| panic!("{e}"));
    let first: Value = first.json().await.unwrap_or(Value::Null);
    let again = retry("{\"order\":7}").await.unwrap_or_else(|e| panic!("{e}"));
    let again: Value = again.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (again["duplicate"].as_bool(), &again["execution_id"]),
        (Some(true), &first["execution_id"]),
        "{again}"
    );
    let other = retry("{\"order\":8}").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other.status().as_u16(), 422);
    runs.push(first["execution_id"].as_str().unwrap_or_default().to_string());
    for run in &runs {
        assert_eq!(
            wait(&base, run, |s| s == "success" || s == "failed").await["status"],
            "success"
        );
    }

    // Inactive: payloads are kept past the window, through a crash.
    hooks(&base, "held", "500ms", "inactive").await;
    for n in 0..2 {
        let (s, b) = post(&base, "held", format!("{{\"n\":{n}}}").into_bytes(), None).await;
        assert_eq!(s, 202, "{b}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        executions(&base, "held").await.is_empty(),
        "an inactive connector buffers"
    );
    p.stop();

    let p = serve(dir.path(), &[(SECRET_ENV, &secret)]);
    let base = p.base.clone();
    let (s, b) = call(
        &base,
        Method::PATCH,
        "/connectors/held",
        Some(json!({"status": "operational"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let list = executions_reach(&base, "held", 1).await;
    let run = list[0]["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        wait(&base, &run, |s| s == "success" || s == "failed").await["status"],
        "success"
    );
    assert_eq!(events(&base, &run).await.lines().count(), 3, "both payloads, one run");
    p.stop();

    // Started again, the closed batch does not run a second time.
    let p = serve(dir.path(), &[(SECRET_ENV, &secret)]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(executions(&p.base, "held").await.len(), 1);
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_sent_to_two_processes_each_land_in_exactly_one_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = secret();
    let p0 = serve(dir.path(), &[(SECRET_ENV, &secret), ("WEIR_WORKER_ID", "p0")]);
    let p1 = serve(dir.path(), &[(SECRET_ENV, &secret), ("WEIR_WORKER_ID", "p1")]);
    hooks(&p0.base, "shared", "1s", "operational").await;
    const SENT: usize = 40;
    for i in 0..SENT {
        let base = if i % 2 == 0 { &p0.base } else { &p1.base };
        let (s, b) = post(base, "shared", format!("{{\"n\":\"marker-{i}\"}}").into_bytes(), None).await;
        assert_eq!(s, 202, "{b}");
    }
    // Either process closes the batches; every payload is in one ended run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let texts = loop {
        let list = executions(&p1.base, "shared").await;
        let ended = list
            .iter()
            .all(|e| matches!(e["status"].as_str(), Some("success" | "partial_success" | "failed")));
        if ended && !list.is_empty() {
            let mut texts = Vec::new();
            for e in &list {
                assert_eq!(e["status"], "success", "{e}");
                texts.push(events(&p0.base, e["id"].as_str().unwrap_or_default()).await);
            }
            let rows: usize = texts.iter().map(|t| t.lines().count().saturating_sub(1)).sum();
            if rows >= SENT {
                break texts;
            }
        }
        assert!(Instant::now() < deadline, "not every payload ran: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all = texts.concat();
    for i in 0..SENT {
        assert_eq!(
            all.matches(&format!("marker-{i}\"")).count(),
            1,
            "payload {i} must be in exactly one run"
        );
    }
}
