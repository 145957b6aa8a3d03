//! Notifications of ended executions (docs/notifications.md), delivered to a
//! local receiver (`notifications/receiver.py`) that checks every signature
//! with the reference `standardwebhooks` package.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::receiver::{KEY, Receiver, SECRET, notifying};
use common::{Process, call, serve, upload_named, wait_end};
use reqwest::Method;
use serde_json::{Value, json};

/// `weir serve` that may notify loopback, retrying after `backoff`.
fn server(dir: &Path, backoff: &str) -> Process {
    serve(
        dir,
        &[
            ("WEIR_SECRETS_KEY", KEY),
            ("WEIR_NOTIFICATION_ALLOWED", "127.0.0.1"),
            ("WEIR_NOTIFICATION_BACKOFF", backoff),
        ],
    )
}

/// A run of `people` on `csv`; its execution id.
async fn run(base: &str, csv: &'static [u8]) -> String {
    let (s, b) = upload_named(base, "/connectors/people/runs", "in.csv", csv).await;
    assert_eq!(s, 202, "{b}");
    b["id"].as_str().unwrap_or_default().to_string()
}

/// Execution `id`'s notifications.
async fn notifications(base: &str, id: &str) -> Vec<Value> {
    let (s, b) = call(base, Method::GET, &format!("/executions/{id}/notifications"), None).await;
    assert_eq!(s, 200, "{b}");
    b["data"].as_array().cloned().unwrap_or_default()
}

const GOOD: &[u8] = b"email,city\na@x.io,Oslo\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_end_state_asked_for_is_delivered_signed_and_no_other() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let receiver = Receiver::start(dir.path(), &[]);
    let server = server(&dir.path().join("data"), "200ms");
    notifying(
        &server.base,
        json!([
            {"on": ["success", "canceled"], "url": receiver.url("/ok"), "secret": "hooks"},
            {"on": ["failed"], "url": receiver.url("/failed"), "secret": "hooks"},
        ]),
    )
    .await;

    let success = run(&server.base, GOOD).await;
    wait_end(&server.base, &success).await;
    let partial = run(&server.base, b"email,city\nb@x.io,Rome\nnot-an-email,Rome\n").await;
    let doc = wait_end(&server.base, &partial).await;
    assert_eq!(doc["status"], "partial_success");
    let failed = run(&server.base, b"name,town\nx,y\n").await;
    let doc = wait_end(&server.base, &failed).await;
    assert_eq!(doc["status"], "failed");
    // An inactive connector holds live runs queued: one canceled there.
    let (s, b) = call(
        &server.base,
        Method::PATCH,
        "/connectors/people",
        Some(json!({"status": "inactive"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let canceled = run(&server.base, GOOD).await;
    let (s, b) = call(
        &server.base,
        Method::POST,
        &format!("/executions/{canceled}/cancel"),
        None,
    )
    .await;
    assert_eq!((s, b["status"].as_str()), (202, Some("canceled")), "{b}");

    let ok = receiver.wait_for("/ok", 2).await;
    let bad = receiver.wait_for("/failed", 1).await;
    // Nothing else comes: not the partial success, not twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = receiver.received();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.iter().all(|r| r["verified"] == true && r["answered"] == 204),
        "{all:?}"
    );
    let told: Vec<(String, String)> = ok
        .iter()
        .chain(&bad)
        .map(|r| {
            (
                r["execution"].as_str().unwrap_or_default().to_string(),
                r["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (id, kind) in [
        (&success, "execution.success"),
        (&canceled, "execution.canceled"),
        (&failed, "execution.failed"),
    ] {
        assert!(told.contains(&(id.clone(), kind.to_string())), "{id} {kind}: {told:?}");
    }
    assert!(!told.iter().any(|(id, _)| id == &partial));

    let listed = notifications(&server.base, &success).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "delivered");
    assert_eq!(
        listed[0]["webhook_id"],
        ok.iter()
            .find(|r| r["execution"] == success.as_str())
            .map_or(Value::Null, |r| r["id"].clone())
    );
    assert_eq!(listed[0]["attempts"][0]["status"], 204);
    assert!(notifications(&server.base, &partial).await.is_empty());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_fourth_attempt_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let receiver = Receiver::start(dir.path(), &[("/flaky", "fail:3")]);
    let server = server(&dir.path().join("data"), "200ms");
    notifying(
        &server.base,
        json!([{"on": ["success"], "url": receiver.url("/flaky"), "secret": "hooks"}]),
    )
    .await;
    let id = run(&server.base, GOOD).await;
    let got = receiver.wait_for("/flaky", 4).await;
    let answered: Vec<i64> = got.iter().map(|r| r["answered"].as_i64().unwrap_or_default()).collect();
    assert_eq!(answered, [500, 500, 500, 204]);
    assert!(
        got.iter().all(|r| r["id"] == got[0]["id"] && r["verified"] == true),
        "{got:?}"
    );
    // The waits between attempts grow.
    let at: Vec<f64> = got.iter().map(|r| r["at"].as_f64().unwrap_or_default()).collect();
    assert!(at[3] - at[2] > at[1] - at[0], "{at:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = notifications(&server.base, &id).await;
        if listed[0]["state"] == "delivered" || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed[0]["state"], "delivered", "{listed:?}");
    let statuses: Vec<i64> = listed[0]["attempts"]
        .as_array()
        .map(|a| a.iter().map(|a| a["status"].as_i64().unwrap_or_default()).collect())
        .unwrap_or_default();
    assert_eq!(statuses, [500, 500, 500, 204]);
    assert!(
        listed[0]["attempts"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("500"))
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_between_attempts_delivers_after_its_restart_once_per_attempt() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let receiver = Receiver::start(dir.path(), &[("/flaky", "fail:1")]);
    let data = dir.path().join("data");
    let server = server(&data, "3s");
    notifying(
        &server.base,
        json!([{"on": ["success"], "url": receiver.url("/flaky"), "secret": "hooks"}]),
    )
    .await;
    let id = run(&server.base, GOOD).await;
    let first = receiver.wait_for("/flaky", 1).await;
    // The failed attempt is stored, its next due in about 3 s: the server
    // is killed before it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while notifications(&server.base, &id).await[0]["attempts"]
        .as_array()
        .map_or(0, Vec::len)
        < 1
    {
        assert!(Instant::now() < deadline, "the first attempt was not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
    let server = self::server(&data, "3s");
    let got = receiver.wait_for("/flaky", 2).await;
    assert_eq!(got[1]["answered"], 204);
    assert_eq!(got[1]["id"], first[0]["id"], "the same webhook-id after the restart");
    let gap = got[1]["at"].as_f64().unwrap_or_default() - got[0]["at"].as_f64().unwrap_or_default();
    assert!(
        gap >= 2.3,
        "the second attempt kept its schedule: {gap} s after the first"
    );
    // Delivered: nothing more comes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.received().len(), 2, "{:?}", receiver.received());
    let listed = notifications(&server.base, &id).await;
    assert_eq!(listed[0]["state"], "delivered", "{listed:?}");
    assert_eq!(listed[0]["attempts"].as_array().map(Vec::len), Some(2));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_on_a_forbidden_address_or_without_its_secret_is_refused_at_save() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // No notification_allowed: loopback and private networks are refused.
    let server = serve(dir.path(), &[("WEIR_SECRETS_KEY", KEY)]);
    let (s, _) = call(
        &server.base,
        Method::PUT,
        "/secrets/hooks",
        Some(json!({"value": SECRET})),
    )
    .await;
    assert!(s == 201 || s == 200);
    let doc = json!({"api_name": "told", "type": "spreadsheet",
    "sql": {"text": "CREATE VIEW output.a AS SELECT * FROM input.data"},
    "notifications": [
        {"on": ["failed"], "url": "http://127.0.0.1:9/hook", "secret": "hooks"},
        {"on": ["failed"], "url": "http://169.254.169.254/latest/meta-data", "secret": "hooks"},
        {"on": ["failed"], "url": "http://localhost:8080/x", "secret": "hooks"},
        {"on": ["failed"], "url": "ftp://example.com/x", "secret": "hooks"},
        {"on": ["queued"], "url": "https://hooks.example.com/weir", "secret": "nope"},
    ]});
    let (s, b) = call(&server.base, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 422, "{b}");
    let paths: Vec<&str> = b["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default();
    for path in [
        "notifications[0].url",
        "notifications[1].url",
        "notifications[2].url",
        "notifications[3].url",
        "notifications[4].on[0]",
    ] {
        assert!(paths.contains(&path), "{path}: {b}");
    }
    assert!(b.to_string().contains("loopback address 127.0.0.1"), "{b}");
    let (s, _) = call(&server.base, Method::GET, "/connectors/told", None).await;
    assert_eq!(s, 404, "nothing was stored");
    // A missing secret is named at its path too, once the rest is fine.
    let doc = json!({"api_name": "told", "type": "spreadsheet",
        "sql": {"text": "CREATE VIEW output.a AS SELECT * FROM input.data"},
        "notifications": [{"on": ["failed"], "url": "https://hooks.example.com/weir", "secret": "nope"}]});
    let (s, b) = call(&server.base, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["errors"][0]["path"], "notifications[0].secret", "{b}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_a_notification_is_sent_again_on_request() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let receiver = Receiver::start(dir.path(), &[("/moved", "redirect")]);
    let server = server(&dir.path().join("data"), "1h");
    notifying(
        &server.base,
        json!([{"on": ["success"], "url": receiver.url("/moved"), "secret": "hooks"}]),
    )
    .await;
    let id = run(&server.base, GOOD).await;
    let got = receiver.wait_for("/moved", 1).await;
    assert_eq!(got[0]["answered"], 302);
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = notifications(&server.base, &id).await;
        if !listed[0]["attempts"].as_array().is_none_or(Vec::is_empty) || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed[0]["attempts"][0]["status"], 302, "{listed:?}");
    assert!(
        listed[0]["attempts"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("redirect"))
    );
    assert_eq!(listed[0]["state"], "pending", "retried later: {listed:?}");

    // Sent again now, with its webhook-id, rather than in an hour.
    let (s, b) = call(
        &server.base,
        Method::POST,
        &format!("/executions/{id}/notifications/0/redeliver"),
        None,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let got = receiver.wait_for("/moved", 2).await;
    assert_eq!(got[1]["id"], got[0]["id"]);
    assert!(
        receiver.received().iter().all(|r| r["path"] != "/elsewhere"),
        "a redirect was followed"
    );
    let (s, _) = call(
        &server.base,
        Method::POST,
        &format!("/executions/{id}/notifications/7/redeliver"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    server.stop();
}
