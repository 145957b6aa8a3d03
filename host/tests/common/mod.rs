//! What the tests of `weir serve` as a process share: starting it, and
//! calling its API with the bootstrap admin key.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod kills;
pub mod receiver;
pub mod services;

pub const ADMIN: &str = "weir_restart_test_admin_key_0123456789abcdef";

/// A server process and its base URL.
pub struct Process {
    /// The process.
    pub child: Child,
    /// Its API base URL.
    pub base: String,
}

impl Process {
    /// Kills the server (SIGKILL) and reaps it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test that fails half-way leaves no server behind.
impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn serve(data_dir: &Path, extra_env: &[(&str, &str)]) -> Process {
    serve_logged(data_dir, extra_env, None).unwrap_or_else(|log| panic!("weir serve ended before listening: {log}"))
}

/// `weir serve` on `data_dir` with `extra_env` (and never a secrets key it
/// was not given), its log lines to `log` when given. The process once it
/// listens, or what it logged when it ended instead.
pub fn serve_logged(data_dir: &Path, extra_env: &[(&str, &str)], log: Option<&Path>) -> Result<Process, String> {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"))),
        None => Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("WEIR_BOOTSTRAP_KEY", ADMIN)
        .env("WEIR_WORKERS", "1")
        .env("WEIR_THREADS_PER_RUN", "1")
        .env_remove("WEIR_SECRETS_KEY")
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting weir serve: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("weir listening on ") {
                    break format!("{addr}/api/v1");
                }
            }
            _ => {
                let _ = child.wait();
                return Err(log.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default());
            }
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Process { child, base })
}

pub async fn call(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(base, ADMIN, method, path, body).await
}

/// [`call`] with another key.
pub async fn call_as(base: &str, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let response = r.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Publishes the test plugin `name` (built from `plugins/`) as `name@0.1.0`.
pub async fn publish_plugin(base: &str, name: &str) {
    let bytes = std::fs::read(weir_tests::plugin_wasm(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = format!("/plugins?name={name}&version=0.1.0");
    let (s, b) = post_bytes(base, &path, "application/wasm", bytes).await;
    assert_eq!(s, 201, "publishing {name}: {b}");
}

/// POSTs `bytes` as `content_type` with the admin key.
async fn post_bytes(base: &str, path: &str, content_type: &str, bytes: impl Into<reqwest::Body>) -> (u16, Value) {
    post_bytes_as(base, ADMIN, path, content_type, bytes).await
}

/// POSTs `bytes` as `content_type` with `key`.
pub async fn post_bytes_as(
    base: &str,
    key: &str,
    path: &str,
    content_type: &str,
    bytes: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

pub async fn upload(base: &str, path: &str, bytes: &'static [u8]) -> (u16, Value) {
    upload_named(base, path, "x.csv", bytes).await
}

pub async fn upload_named(base: &str, path: &str, name: &str, bytes: &'static [u8]) -> (u16, Value) {
    post_bytes(
        base,
        &format!("{path}?filename={name}"),
        "application/octet-stream",
        bytes,
    )
    .await
}

pub async fn status_of(base: &str, id: &str) -> Value {
    call(base, reqwest::Method::GET, &format!("/executions/{id}"), None)
        .await
        .1
}

/// Waits until execution `id` has ended.
pub async fn wait_end(base: &str, id: &str) -> Value {
    wait(base, id, |s| !matches!(s, "queued" | "running" | "canceling")).await
}

pub async fn wait(base: &str, id: &str, done: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = status_of(base, id).await;
        if done(doc["status"].as_str().unwrap_or_default()) {
            return doc;
        }
        assert!(Instant::now() < deadline, "stuck: {doc}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An operational connector `people` loading `email,city` rows into the
/// object `contact`, matched on its unique `email`.
pub async fn importer(base: &str) {
    importer_with(base, serde_json::json!([])).await;
}

/// [`importer`] with `transforms` between its SQL and its variables.
pub async fn importer_with(base: &str, transforms: Value) {
    importer_extra(base, serde_json::json!({"transforms": transforms})).await;
}

/// [`importer`] with the connector's `extra` fields (transforms,
/// notifications) over its own.
pub async fn importer_extra(base: &str, extra: Value) {
    let (s, b) = call(
        base,
        reqwest::Method::POST,
        "/objects",
        Some(serde_json::json!({"name": "contact", "fields": [
            {"name": "email", "type": "email", "unique": true}, {"name": "city", "type": "text"}]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (_, file) = upload_named(base, "/files", "sample.csv", b"email,city\na@x.io,Oslo\n").await;
    let mut doc = serde_json::json!({
            "api_name": "people", "type": "spreadsheet", "sample_file_id": file["id"],
            "sql": {"text": "CREATE VIEW output.people AS SELECT email, city FROM input.data"},
            "variables": [
                {"name": "email", "scope": "people", "column": "email", "type": "email", "required": true},
                {"name": "city", "scope": "people", "column": "city", "type": "string"}],
            "loads": [{"order": 1, "scope": "people", "object": "contact",
                "match": [{"field": "email", "variable": "email", "no_match": "create_new",
                           "single_match": "update_current", "multiple_match": "do_not_upload"}],
                "fields": [{"field": "email", "variables": ["email"]}, {"field": "city", "variables": ["city"]}]}],
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        doc.extend(extra.clone());
    }
    let (s, b) = call(base, reqwest::Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        base,
        reqwest::Method::POST,
        "/connectors/people/sql/publish",
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        base,
        reqwest::Method::PATCH,
        "/connectors/people",
        Some(serde_json::json!({"status": "operational"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

/// Makes sure `python3` has the `standardwebhooks` package (the reference
/// implementation of the signatures), installing it with pip when missing.
pub fn ensure_standardwebhooks() {
    let has = || {
        Command::new("python3")
            .args(["-c", "import standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        return;
    }
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "standardwebhooks==1.1.0"])
            .args(extra)
            .status()
            .is_ok_and(|s| s.success())
    };
    // A system Python may want its packages marked as not its own.
    assert!(
        pip(&[]) || pip(&["--break-system-packages"]),
        "pip install standardwebhooks failed"
    );
    assert!(has(), "standardwebhooks is still missing after pip install");
}

/// GETs `path` with the admin key and returns the body as bytes.
pub async fn get_bytes(base: &str, path: &str) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    (status, bytes.to_vec())
}

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Publishes connector `id`'s draft (a dry run on its sample) and makes it
/// operational.
pub async fn go_live(base: &str, id: &str) {
    let (s, b) = call(
        base,
        reqwest::Method::POST,
        &format!("/connectors/{id}/sql/publish"),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let status = serde_json::json!({"status": "operational"});
    let (s, b) = call(base, reqwest::Method::PATCH, &format!("/connectors/{id}"), Some(status)).await;
    assert_eq!(s, 200, "{b}");
}

/// Scope `scope`'s output CSV of execution `id`, from its `output.zip`.
pub async fn output_csv(base: &str, id: &str, scope: &str) -> String {
    let (status, bytes) = get_bytes(base, &format!("/executions/{id}/output.zip")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    scope_csv(bytes, scope)
}

/// Scope `scope`'s CSV in the bytes of an `output.zip`.
pub fn scope_csv(output_zip: Vec<u8>, scope: &str) -> String {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(output_zip)).unwrap_or_else(|e| panic!("{e}"));
    let mut csv = String::new();
    std::io::Read::read_to_string(
        &mut zip
            .by_name(&format!("output/{scope}.csv"))
            .unwrap_or_else(|e| panic!("{e}")),
        &mut csv,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    csv
}

/// Creates a key of `role` in `workspace` with `weir keys create` and
/// returns its secret.
pub fn key_in(data_dir: &Path, workspace: &str, role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["keys", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--workspace", workspace, "--role", role])
        .output()
        .unwrap_or_else(|e| panic!("weir keys create: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "weir keys create: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("secret (shown once):"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no secret in {text}"))
}

/// `webhook-signature` (Standard Webhooks `v1`) of `body` sent as `id` at
/// `ts` under `secret` (`whsec_<base64>`).
pub fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use hmac::Mac;
    let key = BASE64
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// An operational connector `slow` whose script runs for minutes, up to
/// four runs at a time. Publishing
/// would run it, so the test makes version 1 live in the state database
/// directly (the server allows a second writer).
pub async fn slow(base: &str, data_dir: &Path) {
    let db = weir_host::server::state::Db::open(&data_dir.join("state.db")).unwrap_or_else(|e| panic!("{e}"));
    slow_on(base, &db).await;
}

/// [`slow`], its version made live in `store`.
pub async fn slow_on(base: &str, store: &dyn weir_host::server::state::StateStore) {
    let sql = "CREATE TABLE output.total AS SELECT count(*) AS n FROM generate_series(1, 20000000000) AS t(v) WHERE v % 7 = 3";
    live_unchecked_on(base, store, "slow", sql, 4).await;
}

/// An operational connector `name` running `sql`, `concurrency` runs at a
/// time, whose version 1 is made live in the state store `store` directly
/// (publishing would dry-run a script that takes long).
pub async fn live_unchecked_on(
    base: &str,
    store: &dyn weir_host::server::state::StateStore,
    name: &str,
    sql: &str,
    concurrency: u32,
) {
    let (s, b) = call(
        base,
        reqwest::Method::POST,
        "/connectors",
        Some(json!({"api_name": name, "type": "spreadsheet", "sql": {"text": sql},
                    "limits": {"max_concurrency": concurrency}})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap_or_default();
    assert_eq!(store.publish(id, 1).ok(), Some(true));
    let (s, b) = call(
        base,
        reqwest::Method::PATCH,
        &format!("/connectors/{name}"),
        Some(json!({"status": "operational"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

/// An operational connector `quick` that runs in a moment, one run at a
/// time.
pub async fn quick(base: &str) {
    quick_named(base, "quick", 1).await;
}

/// An operational connector `name` that runs in a moment, `concurrency`
/// runs at a time.
pub async fn quick_named(base: &str, name: &str, concurrency: u32) {
    let (_, file) = upload(base, "/files", b"a\n1\n").await;
    let (s, b) = call(
        base,
        reqwest::Method::POST,
        "/connectors",
        Some(
            json!({"api_name": name, "type": "spreadsheet", "sample_file_id": file["id"],
                    "limits": {"max_concurrency": concurrency},
                    "sql": {"text": "CREATE VIEW output.a AS SELECT * FROM input.data"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    go_live(base, name).await;
}

/// Triggers a run of `connector` on a small CSV upload; its execution id.
pub async fn trigger(base: &str, connector: &str) -> String {
    let (s, b) = upload(base, &format!("/connectors/{connector}/runs"), b"a\n1\n2\n").await;
    assert_eq!(s, 202, "{b}");
    b["id"].as_str().unwrap_or_default().to_string()
}

/// The messages of execution `id`'s log.
pub async fn log_lines(base: &str, id: &str) -> Vec<String> {
    let (s, b) = call(
        base,
        reqwest::Method::GET,
        &format!("/executions/{id}/logs?limit=500"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["data"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
