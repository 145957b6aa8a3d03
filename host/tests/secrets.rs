//! Workspace secrets against `weir serve`: set, listed by name, used as a
//! webhook's signing secret, rotated over the API, never shown again, sealed
//! at rest, and a server that cannot open them refuses to start
//! (docs/secrets.md).

use crate::common;

use std::path::Path;

use common::{ADMIN, Process, call, call_as, get_bytes, key_in, post_bytes_as, serve_logged, sign, wait_end};
use reqwest::Method;
use serde_json::{Value, json};

/// The secrets key of the tests' server, and another.
const KEY: &str = "c2VjcmV0cyBrZXkgb2YgdGhlIHRlc3RzLCAzMiBiISE=";
const OTHER_KEY: &str = "YW5vdGhlciBrZXksIG5vdCB0aGUgdGVzdHMsIDMyIGI=";
/// The shop's signing secret, then the one it rotates to.
const FIRST: &str = "whsec_Zmlyc3Qgc2hvcCBzaWduaW5nIHNlY3JldCwgMzIgYnl0ZXM=";
const SECOND: &str = "whsec_c2Vjb25kIHNob3Agc2lnbmluZyBzZWNyZXQsIDMyIGJ5dGU=";

/// `weir serve` on `data` with `env`, logging at debug level to `log`.
fn serve(data: &Path, log: &Path, env: &[(&str, &str)]) -> Result<(Process, String), String> {
    let env: Vec<(&str, &str)> = [("WEIR_LOG", "debug")].into_iter().chain(env.iter().copied()).collect();
    serve_logged(data, &env, Some(log)).map(|p| {
        let base = p.base.clone();
        (p, base)
    })
}

/// Posts `body` to the connector's webhook, signed under `secret`.
async fn deliver(base: &str, connector: &str, id: &str, body: &str, secret: &str) -> (u16, Value) {
    let ts = chrono::Utc::now().timestamp();
    let response = reqwest::Client::new()
        .post(format!("{base}/connectors/{connector}/webhook"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign(secret, id, ts, body))
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn put_secret(base: &str, name: &str, value: &str) -> (u16, Value) {
    call(
        base,
        Method::PUT,
        &format!("/secrets/{name}"),
        Some(json!({"value": value})),
    )
    .await
}

/// Whether `text` holds any part of a signing secret that would give it
/// away: the secret as written, or its key bytes in base64.
fn shows(text: &str, secret: &str) -> bool {
    text.contains(secret) || text.contains(secret.trim_start_matches("whsec_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sign_webhooks_rotate_and_are_never_shown_or_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");

    // A server without a secrets key keeps none, and says why.
    let (child, base) = serve(&data, &log, &[]).unwrap_or_else(|l| panic!("{l}"));
    let (s, b) = put_secret(&base, "shop_whsec", FIRST).await;
    assert_eq!((s, b["code"].as_str()), (503, Some("secrets_unavailable")), "{b}");
    assert!(
        b["detail"].as_str().unwrap_or_default().contains("WEIR_SECRETS_KEY"),
        "{b}"
    );
    child.stop();

    let (child, base) = serve(&data, &log, &[("WEIR_SECRETS_KEY", KEY)]).unwrap_or_else(|l| panic!("{l}"));
    let (s, b) = put_secret(&base, "shop_whsec", FIRST).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["name"], "shop_whsec");
    // Only an admin of the whole workspace sets or reads the list.
    let operator = key_in(&data, "default", "operator");
    for (method, path) in [(Method::PUT, "/secrets/shop_whsec"), (Method::GET, "/secrets")] {
        let (s, b) = call_as(&base, &operator, method, path, Some(json!({"value": "x"}))).await;
        assert_eq!(s, 403, "{b}");
    }
    let (s, b) = put_secret(&base, "Bad Name", "x").await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = put_secret(&base, "empty", "").await;
    assert_eq!(s, 422, "{b}");

    // A webhook connector signed with the workspace secret.
    let sample = "{\"received_at\":\"2026-01-01T00:00:00Z\",\"webhook_id\":\"s\",\"content_type\":\"application/json\",\"querystring\":\"\",\"body\":\"{}\"}\n";
    let (s, file) = post_bytes_as(
        &base,
        ADMIN,
        "/files?filename=webhooks.jsonl",
        "application/octet-stream",
        sample,
    )
    .await;
    assert_eq!(s, 201, "{file}");
    let doc = json!({"api_name": "shop", "type": "webhook", "sample_file_id": file["id"],
        "webhook": {"batch_window": "0", "secret": "shop_whsec"},
        "sql": {"text": "CREATE VIEW output.orders AS SELECT webhook_id, json_get_str(body, 'id') AS order_id FROM input.webhooks"}});
    let (s, c) = call(&base, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap_or_default().to_string();
    common::go_live(&base, &id).await;
    let (s, b) = deliver(&base, &id, "msg_1", "{\"id\":\"o1\"}", FIRST).await;
    assert_eq!(s, 202, "{b}");
    let first_run = b["execution_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(wait_end(&base, &first_run).await["status"], "success");

    // Rotation over the API: the old secret is refused from then on.
    let (s, b) = put_secret(&base, "shop_whsec", SECOND).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = deliver(&base, &id, "msg_2", "{\"id\":\"o2\"}", FIRST).await;
    assert_eq!(s, 401);
    let (s, b) = deliver(&base, &id, "msg_3", "{\"id\":\"o3\"}", SECOND).await;
    assert_eq!(s, 202, "{b}");
    let second_run = b["execution_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(wait_end(&base, &second_run).await["status"], "success");

    // Listed by name and times, never by value.
    let (s, list) = call(&base, Method::GET, "/secrets", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"][0]["name"], "shop_whsec", "{list}");
    let keys: Vec<&String> = list["data"][0]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["created_at", "name", "updated_at"], "{list}");

    // Nothing the server answers, logs or keeps shows either value.
    let mut seen = String::new();
    for path in [
        "/secrets".to_string(),
        "/connectors".to_string(),
        format!("/connectors/{id}"),
        format!("/connectors/{id}/executions"),
        format!("/executions/{first_run}"),
        format!("/executions/{first_run}/logs"),
        format!("/executions/{second_run}"),
        format!("/executions/{second_run}/logs"),
        format!("/executions/{second_run}/rejected.csv"),
        "/openapi.json".to_string(),
    ] {
        let (_, bytes) = get_bytes(&base, &path).await;
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    let (s, package) = get_bytes(&base, &format!("/connectors/{id}/dev-package")).await;
    assert_eq!(s, 200);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap_or_else(|e| panic!("{e}"));
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut text).unwrap_or_else(|e| panic!("{e}"));
        seen.push_str(&String::from_utf8_lossy(&text));
    }
    assert!(seen.contains("shop_whsec"), "the checks above read what they should");
    child.stop();
    seen.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
    for secret in [FIRST, SECOND] {
        assert!(!shows(&seen, secret), "a secret was shown");
    }
    let mut stored = Vec::new();
    for entry in common::walk(&data) {
        stored.extend(std::fs::read(entry).unwrap_or_default());
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains("shop_whsec"), "the store was read");
    for secret in [FIRST, SECOND] {
        assert!(!shows(&stored, secret), "a secret is stored in clear");
    }

    // Secrets are stored: no key, or another key, and the server does not
    // start, saying why; the right key and the rotated secret works again.
    let refused = serve(&data, &log, &[])
        .err()
        .unwrap_or_else(|| panic!("started without its key"));
    assert!(refused.contains("WEIR_SECRETS_KEY"), "{refused}");
    let refused = serve(&data, &log, &[("WEIR_SECRETS_KEY", OTHER_KEY)])
        .err()
        .unwrap_or_else(|| panic!("started with another key"));
    assert!(refused.contains("does not open"), "{refused}");
    let (child, base) = serve(&data, &log, &[("WEIR_SECRETS_KEY", KEY)]).unwrap_or_else(|l| panic!("{l}"));
    let (s, b) = deliver(&base, &id, "msg_4", "{\"id\":\"o4\"}", SECOND).await;
    assert_eq!(s, 202, "{b}");
    let (s, _) = call(&base, Method::DELETE, "/secrets/shop_whsec", None).await;
    assert_eq!(s, 204);
    let (s, _) = deliver(&base, &id, "msg_5", "{\"id\":\"o5\"}", SECOND).await;
    assert_eq!(s, 401, "a deleted secret signs nothing");
    let (s, _) = call(&base, Method::DELETE, "/secrets/shop_whsec", None).await;
    assert_eq!(s, 404);
    child.stop();
}
