//! The HTTP API over real HTTP: a server on 127.0.0.1:0 with a fresh data
//! directory per test, driven with reqwest as an integrator would.
//!
//! The same tests run twice: here on the embedded default, and in
//! `server_postgres.rs` with the state in PostgreSQL and the files in an
//! S3 bucket (a database and a bucket of their own per test).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weir_engine::execution::Status;
use weir_host::server::auth::Role;
use weir_host::server::config::ServerConfig;
use weir_host::server::schedules::{Clock, ManualClock, SystemClock};
use weir_host::server::{self, App};

const ADMIN: &str = "weir_test_bootstrap_admin_key_0123456789abcdef";

/// Whether this is the run of the suite on PostgreSQL and S3.
fn on_postgres() -> bool {
    module_path!().contains("server_postgres")
}

/// A store on `bucket` of the S3-compatible server at `endpoint`.
fn s3_store(endpoint: &str, bucket: &str) -> Arc<dyn object_store::ObjectStore> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("weir-test")
        .with_secret_access_key("weir-test-secret")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(store)
}

/// For the run on PostgreSQL and S3: a new database and a new bucket.
/// Where PostgreSQL or the S3 server is not installed (never under CI,
/// which fails instead), the test says so and runs on the embedded default.
fn postgres_and_bucket() -> Option<(String, Arc<dyn object_store::ObjectStore>)> {
    let database = common::services::shared_database();
    let bucket = common::services::shared_bucket();
    match (database, bucket) {
        (Some(database), Some((s3, bucket))) => Some((database, s3_store(&s3.endpoint, &bucket))),
        _ => {
            eprintln!("this run of the test is on the embedded default: PostgreSQL or an S3 server is missing");
            None
        }
    }
}

struct Server {
    base: String,
    client: reqwest::Client,
    app: Arc<App>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> Server {
    start_clocked(edit, Arc::new(SystemClock)).await
}

async fn start_clocked(edit: impl FnOnce(&mut ServerConfig), clock: Arc<dyn Clock>) -> Server {
    start_full(edit, clock, None).await
}

/// A server keeping files, plugins and artifacts in `store`.
async fn start_on_blob_store(store: Arc<dyn object_store::ObjectStore>) -> Server {
    start_full(|_| {}, Arc::new(SystemClock), Some(store)).await
}

async fn start_full(
    edit: impl FnOnce(&mut ServerConfig),
    clock: Arc<dyn Clock>,
    blob_store: Option<Arc<dyn object_store::ObjectStore>>,
) -> Server {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        workers: 4,
        threads_per_run: 1,
        bootstrap_key: Some(ADMIN.into()),
        ..ServerConfig::default()
    };
    edit(&mut config);
    let mut bucket = None;
    if on_postgres()
        && let Some((database, store)) = postgres_and_bucket()
    {
        config.database = Some(database);
        bucket = Some(store);
    }
    let mut settings = config.settings().unwrap_or_else(|e| panic!("{e}"));
    // Runs execute in worker processes of the weir binary, not of this test.
    settings.worker_program = env!("CARGO_BIN_EXE_weir").into();
    settings.blob_store = blob_store.or(bucket);
    let on_database = settings.config.database.is_some();
    let server = server::start_with_clock(settings, clock)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dir.path().join("state.db").exists(),
        !on_database,
        "the state is where the server was told to keep it"
    );
    let addr = server.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = server.app.clone();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        server.run(stop).await.unwrap_or_else(|e| panic!("{e}"));
    });
    Server {
        base: format!("http://{addr}/api/v1"),
        client: reqwest::Client::new(),
        app,
        shutdown,
        task,
        _dir: dir,
    }
}

async fn start() -> Server {
    start_with(|_| {}).await
}

/// An answer: status, headers' content type, and the body as JSON (or text).
struct Answer {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    /// `Idempotent-Replayed: true` was sent.
    replayed: bool,
    body: Value,
    bytes: Vec<u8>,
}

impl Server {
    async fn send(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))).await
    }

    async fn get(&self, path: &str, key: &str) -> Answer {
        self.send(Method::GET, path, Some(key), None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(key), Some(body)).await
    }

    async fn upload(&self, path: &str, key: &str, name: &str, bytes: &[u8]) -> Answer {
        self.upload_once(path, key, None, name, bytes).await
    }

    /// An upload, with an `Idempotency-Key` when given.
    async fn upload_once(&self, path: &str, key: &str, once: Option<&str>, name: &str, bytes: &[u8]) -> Answer {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut request = self
            .client
            .post(format!("{}{path}{sep}filename={name}", self.base))
            .bearer_auth(key)
            .header("content-type", "text/csv")
            .body(bytes.to_vec());
        if let Some(once) = once {
            request = request.header("idempotency-key", once);
        }
        answer(request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))).await
    }

    /// A key of `role` in workspace `workspace` (created when new).
    /// `output/<scope>.csv` of execution `id`, from its `output.zip`.
    async fn output_csv(&self, id: &str, scope: &str) -> String {
        let out = self.get(&format!("/executions/{id}/output.zip"), ADMIN).await;
        common::scope_csv(out.bytes, scope)
    }

    fn key(&self, workspace: &str, role: Role, connectors: Option<Vec<String>>) -> String {
        self.app
            .keys
            .create_in(workspace, "test", role, connectors, None)
            .unwrap_or_else(|e| panic!("{e}"))
            .secret
    }

    async fn wait_status(&self, id: &str, done: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.get(&format!("/executions/{id}"), ADMIN).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            let status = a.body["status"].as_str().unwrap_or_default().to_string();
            if done(&status) {
                return a.body;
            }
            assert!(Instant::now() < deadline, "execution stuck: {}", a.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the execution runs stage `i` (0 intake … 4 load), so that
    /// a cancel is sure to find that stage under way.
    async fn wait_stage(&self, id: &str, i: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let doc = self.get(&format!("/executions/{id}"), ADMIN).await.body;
            if doc["status"] == "running" && doc["step_progress"][i]["status"] == "running" {
                return doc;
            }
            assert!(
                doc["status"] == "queued" || doc["status"] == "running",
                "the run ended before stage {i}: {doc}"
            );
            assert!(Instant::now() < deadline, "execution stuck: {doc}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_end(&self, id: &str) -> Value {
        self.wait_status(id, |s| {
            matches!(s, "success" | "partial_success" | "failed" | "canceled")
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let location = header("location");
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let bytes = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        location,
        replayed,
        body,
        bytes,
    }
}

fn assert_problem(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.content_type, "application/problem+json", "{}", a.body);
    assert_eq!(a.body["code"], code, "{}", a.body);
    assert_eq!(a.body["status"], status.as_u16());
    assert!(a.body["title"].is_string() && a.body["detail"].is_string() && a.body["type"].is_string());
}

const CONTACT: &str = r#"{"name": "contact", "label": "Contact", "fields": [
    {"name": "email", "type": "email", "unique": true},
    {"name": "city", "type": "text"}
]}"#;

const CONTACTS_CSV: &[u8] = b"Email,City\nada@example.com,London\nalan@example.com,Wilmslow\nnot-an-email,Nowhere\n";

const IMPORT_SQL: &str = "CREATE VIEW output.people AS SELECT email, city FROM input.data";

fn importer(status: &str) -> Value {
    json!({
        "api_name": "contacts_import",
        "name": "Contacts import",
        "type": "spreadsheet",
        "status": status,
        "sql": {"text": IMPORT_SQL},
        "variables": [
            {"name": "email", "scope": "people", "column": "email", "type": "email", "required": true},
            {"name": "city", "scope": "people", "column": "city", "type": "string"}
        ],
        "loads": [{
            "order": 1, "scope": "people", "object": "contact",
            "match": [{"field": "email", "variable": "email", "no_match": "create_new",
                       "single_match": "update_current", "multiple_match": "do_not_upload"}],
            "fields": [{"field": "email", "variables": ["email"]}, {"field": "city", "variables": ["city"]}]
        }]
    })
}

/// [`operational_importer`] whose scope goes through the published
/// `phone-normalize@0.1.0` plugin.
async fn phone_importer(s: &Server) -> Value {
    operational_importer_with(s, |doc| {
        doc["sql"]["text"] =
            json!("CREATE VIEW output.people AS SELECT email, city, '(202) 555-0143' AS phone FROM input.data");
        doc["transforms"] =
            json!([{"scope": "people", "plugin": "phone-normalize@0.1.0", "config": {"column": "phone"}}]);
    })
    .await
}

/// An operational connector with a published script: object, sample,
/// connector, publish, status.
async fn operational_importer(s: &Server) -> Value {
    operational_importer_with(s, |_| {}).await
}

/// [`operational_importer`] with its definition changed by `edit` first.
async fn operational_importer_with(s: &Server, edit: impl FnOnce(&mut Value)) -> Value {
    importer_in(s, ADMIN, edit).await
}

/// The operational importer in the workspace of admin key `key`.
async fn operational_importer_as(s: &Server, key: &str) -> Value {
    importer_in(s, key, |_| {}).await
}

async fn importer_in(s: &Server, key: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let o = s
        .post("/objects", key, serde_json::from_str(CONTACT).unwrap_or(Value::Null))
        .await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.body);
    let f = s.upload("/files", key, "contacts.csv", CONTACTS_CSV).await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.body);
    let mut doc = importer("setup");
    doc["sample_file_id"] = f.body["id"].clone();
    edit(&mut doc);
    let c = s.post("/connectors", key, doc).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let p = s.post("/connectors/contacts_import/sql/publish", key, json!({})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    set_status_of(s, key, "contacts_import", "operational").await
}

/// A connector whose script runs for a long time (for cancel tests).
async fn slow_connector(s: &Server, api_name: &str, status: &str) {
    let doc = json!({
        "api_name": api_name, "type": "spreadsheet", "status": "setup",
        "sql": {"text": "CREATE TABLE output.total AS SELECT count(*) AS n FROM generate_series(1, 20000000000) AS t(v) WHERE v % 7 = 3"},
    });
    live_without_dry_run(s, doc, status).await;
}

/// Creates the connector `doc` and, unless `status` is `setup`, makes its
/// script live without the publishing dry run (which would not end for a
/// script or plugin that never ends) and sets `status`.
async fn live_without_dry_run(s: &Server, doc: Value, status: &str) {
    let api_name = doc["api_name"].as_str().unwrap_or_default().to_string();
    let c = s.post("/connectors", ADMIN, doc).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    if status != "setup" {
        let row = s
            .app
            .db
            .connector(&workspace_id(s), &api_name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("connector"));
        assert_eq!(s.app.db.publish(&row.id, 1).ok(), Some(true));
        let p = s
            .send(
                Method::PATCH,
                &format!("/connectors/{api_name}"),
                Some(ADMIN),
                Some(json!({"status": status})),
            )
            .await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    }
}

fn workspace_id(s: &Server) -> String {
    s.app
        .db
        .workspace("default")
        .ok()
        .flatten()
        .map(|w| w.id)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_the_only_route_without_auth_and_every_route_is_in_the_openapi_document() {
    let s = start().await;
    let h = s.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(h.status, StatusCode::OK);
    let doc = s.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(
        doc.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc.body["openapi"]
    );
    let paths = doc.body["paths"].as_object().cloned().unwrap_or_default();
    let expected = [
        ("get", "/api/v1/healthz"),
        ("get", "/api/v1/metrics"),
        ("get", "/api/v1/keys"),
        ("post", "/api/v1/keys"),
        ("delete", "/api/v1/keys/{id}"),
        ("get", "/api/v1/objects"),
        ("post", "/api/v1/objects"),
        ("get", "/api/v1/objects/{object}"),
        ("patch", "/api/v1/objects/{object}"),
        ("get", "/api/v1/objects/{object}/records"),
        ("get", "/api/v1/objects/{object}/records/{id}"),
        ("post", "/api/v1/files"),
        ("get", "/api/v1/files/{id}/download"),
        ("delete", "/api/v1/files/{id}"),
        ("post", "/api/v1/plugins"),
        ("get", "/api/v1/plugins"),
        ("get", "/api/v1/secrets"),
        ("put", "/api/v1/secrets/{name}"),
        ("delete", "/api/v1/secrets/{name}"),
        ("get", "/api/v1/connectors"),
        ("post", "/api/v1/connectors"),
        ("get", "/api/v1/connectors/{connector}"),
        ("patch", "/api/v1/connectors/{connector}"),
        ("delete", "/api/v1/connectors/{connector}"),
        ("get", "/api/v1/connectors/{connector}/sql"),
        ("put", "/api/v1/connectors/{connector}/sql/draft"),
        ("post", "/api/v1/connectors/{connector}/sql/publish"),
        ("get", "/api/v1/connectors/{connector}/sql/versions"),
        ("get", "/api/v1/connectors/{connector}/sql/versions/{n}"),
        ("post", "/api/v1/connectors/{connector}/runs"),
        ("get", "/api/v1/connectors/{connector}/executions"),
        ("get", "/api/v1/executions/{id}"),
        ("delete", "/api/v1/executions/{id}"),
        ("get", "/api/v1/executions/{id}/logs"),
        ("post", "/api/v1/executions/{id}/cancel"),
        ("get", "/api/v1/executions/{id}/input"),
        ("get", "/api/v1/executions/{id}/output.zip"),
        ("get", "/api/v1/executions/{id}/report.xlsx"),
        ("get", "/api/v1/executions/{id}/rejected.csv"),
        ("get", "/api/v1/executions/{id}/sql"),
        ("get", "/api/v1/executions/{id}/events"),
        ("get", "/api/v1/executions/{id}/notifications"),
        ("post", "/api/v1/executions/{id}/notifications/{n}/redeliver"),
        ("post", "/api/v1/connectors/{connector}/preview"),
        ("get", "/api/v1/connectors/{connector}/dev-package"),
        ("put", "/api/v1/connectors/{connector}/package"),
        ("post", "/api/v1/connectors/{connector}/webhook"),
    ];
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in the document"
        );
    }
    // Every documented operation answers 401 without a key, except healthz.
    let mut checked = 0;
    for (path, ops) in &paths {
        for method in ops
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let concrete = path
                .replace("/api/v1", "")
                .replace("{connector}", "c")
                .replace("{object}", "o")
                .replace("{id}", "i")
                .replace("{n}", "1")
                .replace("{name}", "n");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap_or(Method::GET);
            let a = s.send(m, &concrete, None, None).await;
            if path.ends_with("/healthz") {
                assert_eq!(a.status, StatusCode::OK);
            } else {
                assert_problem(&a, StatusCode::UNAUTHORIZED, "unauthorized");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, expected.len() - 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_key_can_do() {
    let s = start().await;
    let viewer = s.key("default", Role::Viewer, None);
    let operator = s.key("default", Role::Operator, None);
    let webhook = s.key("default", Role::Webhook, Some(vec!["contacts_import".into()]));
    operational_importer(&s).await;

    // Viewers read, and cannot change or trigger.
    assert_eq!(
        s.get("/connectors/contacts_import", &viewer).await.status,
        StatusCode::OK
    );
    let a = s.post("/connectors", &viewer, importer("setup")).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = s
        .upload("/connectors/contacts_import/runs", &viewer, "c.csv", CONTACTS_CSV)
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    // A webhook starts an execution: a viewer may not post one, where a
    // webhook key gets as far as the connector (not a webhook connector).
    let a = s
        .post("/connectors/contacts_import/webhook", &viewer, json!({"a": 1}))
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = s
        .post("/connectors/contacts_import/webhook", &webhook, json!({"a": 1}))
        .await;
    assert_problem(&a, StatusCode::CONFLICT, "wrong_connector_type");
    // Operators trigger but do not manage keys or connectors.
    let a = s
        .upload("/connectors/contacts_import/runs", &operator, "c.csv", CONTACTS_CSV)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let a = s.get("/keys", &operator).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = s
        .send(Method::DELETE, "/connectors/contacts_import", Some(&operator), None)
        .await;
    assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    // Webhook keys reach nothing but webhooks.
    let a = s.get("/connectors/contacts_import", &webhook).await;
    assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
    // X-API-KEY works like a bearer token; a wrong key is 401.
    let a = s
        .client
        .get(format!("{}/connectors", s.base))
        .header("X-API-KEY", &viewer)
        .send()
        .await
        .map(|r| r.status());
    assert_eq!(a.ok(), Some(StatusCode::OK));
    let a = s.get("/connectors", "weir_not_a_key").await;
    assert_problem(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_key_pages_through_its_own_connectors() {
    let s = start().await;
    for name in ["oldest", "middle", "newest"] {
        let c = s
            .post("/connectors", ADMIN, json!({"api_name": name, "type": "spreadsheet"}))
            .await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    }
    // Limited to the oldest, which two newer ones come before.
    let limited = s.key("default", Role::Viewer, Some(vec!["oldest".into()]));
    let page = s.get("/connectors?limit=1", &limited).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body["data"][0]["api_name"], "oldest", "{}", page.body);
    assert_eq!(page.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page.body["next_cursor"], Value::Null, "{}", page.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_key_of_the_whole_workspace_points_a_source_and_its_secret_elsewhere() {
    let s = start().await;
    let source = json!({"name": "crm", "kind": "postgres", "secret": "crm_db", "tables": ["customers"]});
    let c = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "sync", "type": "schedule", "schedule": {"cron": "0 0 * * * *"}, "sources": [source]}),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    // An admin of this connector only may change what it does, but not
    // send the workspace's secret to a server of its choosing.
    let limited = s.key("default", Role::Admin, Some(vec!["sync".into()]));
    let patch = |sources: Value| Some(json!({ "sources": sources }));
    let elsewhere = json!([{"name": "crm", "kind": "http", "url": "https://collector.example/", "secret": "crm_db",
        "files": {"customers": "c.csv"}}]);
    let p = s
        .send(
            Method::PATCH,
            "/connectors/sync",
            Some(&limited),
            patch(elsewhere.clone()),
        )
        .await;
    assert_problem(&p, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        p.body["detail"].as_str().is_some_and(|d| d.contains("whole workspace")),
        "{}",
        p.body
    );
    let p = s
        .send(
            Method::PATCH,
            "/connectors/sync",
            Some(&limited),
            Some(json!({"description": "nightly"})),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let p = s
        .send(Method::PATCH, "/connectors/sync", Some(ADMIN), patch(elsewhere))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shown_once_listed_without_secrets_and_revoked_at_once() {
    let s = start().await;
    let created = s.post("/keys", ADMIN, json!({"name": "ci", "role": "operator"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap_or_default().to_string();
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    assert!(secret.starts_with("weir_"));
    assert_eq!(s.get("/connectors", &secret).await.status, StatusCode::OK);
    let listed = s.get("/keys", ADMIN).await;
    assert!(
        !listed.body.to_string().contains(&secret),
        "a listing never shows a secret"
    );
    assert!(
        listed.body["data"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["id"] == id.as_str()))
    );
    let bad = s
        .post("/keys", ADMIN, json!({"name": "hooks", "role": "webhook"}))
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(bad.body["errors"][0]["path"], "connectors");
    let r = s.send(Method::DELETE, &format!("/keys/{id}"), Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_problem(
        &s.get("/connectors", &secret).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let r = s.send(Method::DELETE, "/keys/nope", Some(ADMIN), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_sees_nothing_of_this_one() {
    let s = start().await;
    operational_importer(&s).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "c.csv", CONTACTS_CSV)
        .await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let sample = s.upload("/files", ADMIN, "s.csv", b"a\n1\n").await;
    let file_id = sample.body["id"].as_str().unwrap_or_default().to_string();
    let other = s.key("globex", Role::Admin, None);
    for path in [
        "/connectors/contacts_import".to_string(),
        "/connectors/contacts_import/sql".to_string(),
        "/connectors/contacts_import/executions".to_string(),
        format!("/executions/{id}"),
        format!("/executions/{id}/logs"),
        format!("/executions/{id}/sql"),
        format!("/files/{file_id}/download"),
        "/objects/contact".to_string(),
        "/objects/contact/records".to_string(),
    ] {
        assert_problem(&s.get(&path, &other).await, StatusCode::NOT_FOUND, "not_found");
    }
    let a = s.post(&format!("/executions/{id}/cancel"), &other, json!({})).await;
    assert_problem(&a, StatusCode::NOT_FOUND, "not_found");
    let listed = s.get("/connectors", &other).await;
    assert_eq!(listed.body["data"], json!([]));
    // The same api_name is free in the other workspace.
    let mut doc = importer("setup");
    doc["loads"] = json!([]);
    doc["variables"] = json!([]);
    assert_eq!(s.post("/connectors", &other, doc).await.status, StatusCode::CREATED);
    s.stop().await;
}

/// Every documented route that names a resource, called with another
/// workspace's admin key on this workspace's resources: 404, and nothing
/// of this workspace changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_reaches_another_workspaces_resources() {
    let s = start().await;
    operational_importer(&s).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "c.csv", CONTACTS_CSV)
        .await;
    let execution = run.body["id"].as_str().unwrap_or_default().to_string();
    s.wait_end(&execution).await;
    let file = s.upload("/files", ADMIN, "s.csv", b"a\n1\n").await.body["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let record = s.get("/objects/contact/records?limit=1", ADMIN).await.body["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = s.get("/keys", ADMIN).await.body["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(![&execution, &file, &record, &key].iter().any(|v| v.is_empty()));
    let before = s.get("/connectors/contacts_import", ADMIN).await.body;
    let other = s.key("globex", Role::Admin, None);

    let doc = s.send(Method::GET, "/openapi.json", None, None).await.body;
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().cloned().unwrap_or_default() {
        // A pushed package makes or updates a connector of the caller's own
        // workspace, whatever its name: nothing of this one to reach.
        if !path.contains('{') || path.ends_with("/package") {
            continue;
        }
        let concrete = path
            .replace("/api/v1", "")
            .replace("{connector}", "contacts_import")
            .replace("{object}", "contact")
            .replace("{n}", "1")
            .replace("{name}", "shop_whsec")
            .replace(
                "{id}",
                match path.split('/').nth(3) {
                    Some("executions") => &execution,
                    Some("files") => &file,
                    Some("keys") => &key,
                    _ => &record,
                },
            );
        for method in ops
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            // Setting a secret sets one of the caller's own workspace, as a
            // pushed package does: nothing of this one to reach.
            if method == "put" && path.starts_with("/api/v1/secrets/") {
                continue;
            }
            let body = match (method.as_str(), path.rsplit('/').next()) {
                ("put", Some("draft")) => Some(json!({"text": "CREATE VIEW output.x AS SELECT 1 AS a"})),
                ("post", Some("runs")) => Some(json!({"source_file_id": file})),
                ("patch", Some("{connector}")) => Some(json!({"status": "inactive"})),
                ("patch", Some("{object}")) => Some(json!({"label": "Taken"})),
                ("post" | "put" | "patch", _) => Some(json!({})),
                _ => None,
            };
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap_or(Method::GET);
            let a = s.send(m, &concrete, Some(&other), body).await;
            assert_eq!(
                (a.status, a.body["code"].as_str()),
                (StatusCode::NOT_FOUND, Some("not_found")),
                "{method} {concrete}: {}",
                a.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} routes were tried");
    // Lists of the other workspace show none of this one.
    for list in ["/connectors", "/objects", "/plugins", "/keys"] {
        let a = s.get(list, &other).await;
        let text = a.body.to_string();
        assert!(
            !text.contains("contacts_import") && !text.contains(&key) && !text.contains("\"contact\""),
            "{list}: {text}"
        );
    }
    // Nothing here moved.
    assert_eq!(s.get("/connectors/contacts_import", ADMIN).await.body, before);
    assert_eq!(
        s.get(&format!("/objects/contact/records/{record}"), ADMIN).await.status,
        StatusCode::OK
    );
    assert_eq!(s.get("/keys", ADMIN).await.body["data"][0]["id"], json!(key));
    s.stop().await;
}

/// Found by the crash test: a run killed right after its first commit, whose
/// last saved document did not list its load steps yet, came back with
/// counts of zero beside the records it had written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_gets_its_committed_counts_even_before_its_steps_were_saved() {
    use weir_engine::execution::{ConnectorRef, Execution, TriggerType};
    use weir_engine::store::{RecordId, Tally, Value as Field, Write, WriteBatch};
    use weir_host::server::state::ExecutionRow;

    let s = start().await;
    operational_importer(&s).await;
    let ws = workspace_id(&s);
    let connector = s
        .app
        .db
        .connector(&ws, "contacts_import")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no connector"));
    // Stored as running, its load stage listing no step.
    let mut doc = Execution::new(
        "lost".into(),
        ConnectorRef {
            id: Some(connector.id.clone()),
            api_name: connector.api_name.clone(),
            version: Some(1),
        },
        TriggerType::FileUpload,
        false,
    );
    doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
    let row = ExecutionRow {
        workspace_id: ws.clone(),
        connector_id: connector.id.clone(),
        definition: serde_json::to_string(&connector.connector).unwrap_or_else(|e| panic!("{e}")),
        script: String::new(),
        input_name: Some("c.csv".into()),
        document: doc,
    };
    s.app.db.insert_execution(&row).unwrap_or_else(|e| panic!("{e}"));
    // Its one commit: two records and their tally.
    let write = |email: &str| Write {
        id: RecordId::now_v7(),
        values: vec![Some(Field::Text(email.into())), Some(Field::Text("Oslo".into()))],
    };
    let batch = WriteBatch {
        fields: vec!["email".into(), "city".into()],
        creates: vec![write("a@x.io"), write("b@x.io")],
        updates: vec![],
        tally: Some(Tally {
            execution_id: "lost".into(),
            order: 1,
            total: 2,
            created: 2,
            ..Tally::default()
        }),
    };
    s.app
        .records
        .commit(&ws, "contact", &batch)
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(server::leases::sweep(&s.app).ok(), Some(1));
    let lost = s.get("/executions/lost", ADMIN).await.body;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    assert_eq!(
        lost["step_progress"][4]["status"], "failed",
        "it committed: the load ran"
    );
    let step = &lost["step_progress"][4]["steps"][0];
    assert_eq!(
        (
            step["order"].as_u64(),
            step["object"].as_str(),
            step["created"].as_u64()
        ),
        (Some(1), Some("contact"), Some(2)),
        "{lost}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_validated_with_paths_and_only_grow() {
    let s = start().await;
    let bad = s
        .post(
            "/objects",
            ADMIN,
            json!({"name": "Bad Name", "fields": [{"name": "x", "type": "colour"}, {"name": "c", "type": "relation", "object": "nope"}]}),
        )
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_object");
    let paths: Vec<String> = bad.body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["path"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        paths.iter().any(|p| p.starts_with("fields[0]")),
        "{paths:?} {}",
        bad.body
    );
    let ok = s
        .post("/objects", ADMIN, serde_json::from_str(CONTACT).unwrap_or(Value::Null))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let again = s
        .post("/objects", ADMIN, serde_json::from_str(CONTACT).unwrap_or(Value::Null))
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "object_exists");
    let grown = s
        .send(
            Method::PATCH,
            "/objects/contact",
            Some(ADMIN),
            Some(json!({"fields": [{"name": "email", "type": "email", "unique": true}, {"name": "city", "type": "text"}, {"name": "score", "type": "number"}]})),
        )
        .await;
    assert_eq!(grown.status, StatusCode::OK, "{}", grown.body);
    assert_eq!(grown.body["fields"][2]["name"], "score");
    let retyped = s
        .send(
            Method::PATCH,
            "/objects/contact",
            Some(ADMIN),
            Some(json!({"fields": [{"name": "email", "type": "text"}]})),
        )
        .await;
    assert_problem(&retyped, StatusCode::UNPROCESSABLE_ENTITY, "invalid_object");
    assert_eq!(
        s.get("/objects", ADMIN).await.body["data"].as_array().map(Vec::len),
        Some(1)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_raw_or_multipart_and_download_byte_for_byte() {
    let s = start_with(|c| c.max_upload = "64B".into()).await;
    let raw = s.upload("/files", ADMIN, "a.csv", b"x,y\n1,2\n").await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.body);
    assert_eq!(raw.body["size"], 8);
    assert_eq!(raw.body["name"], "a.csv");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"x,y\n3,4\n".to_vec())
            .file_name("../../b.csv")
            .mime_str("text/csv")
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let multipart = answer(
        s.client
            .post(format!("{}/files", s.base))
            .bearer_auth(ADMIN)
            .multipart(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(multipart.status, StatusCode::CREATED, "{}", multipart.body);
    assert_eq!(multipart.body["name"], "b.csv", "path parts of a file name are dropped");
    let id = multipart.body["id"].as_str().unwrap_or_default();
    let down = s.get(&format!("/files/{id}/download"), ADMIN).await;
    assert_eq!(down.bytes, b"x,y\n3,4\n");
    let big = s.upload("/files", ADMIN, "big.csv", &[b'a'; 65]).await;
    assert_problem(&big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let empty = s.upload("/files", ADMIN, "e.csv", b"").await;
    assert_problem(&empty, StatusCode::UNPROCESSABLE_ENTITY, "empty_file");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_are_validated_addressed_by_id_or_name_and_patched() {
    let s = start().await;
    let bad = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "x", "type": "spreadsheet", "colour": "red", "loads": [{"order": 1, "scope": "s", "object": "nope", "match": [], "fields": [], "recordid_variable": "v"}]}),
        )
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_connector");
    let text = bad.body["errors"].to_string();
    assert!(text.contains("colour"), "unknown keys are named: {text}");
    // Paths are written one way, and a misspelt key names the one meant.
    assert!(
        bad.body["errors"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e["path"] == "loads[0].recordid_variable"
                && e["message"] == "unknown key; did you mean `record_id_variable`?")),
        "{text}"
    );
    assert!(
        text.contains("there is no object `nope`"),
        "an unknown key hides no other problem: {text}"
    );
    // A matching rule's actions have defaults, in the engine and in the
    // API's schema alike.
    let o = s
        .post("/objects", ADMIN, serde_json::from_str(CONTACT).unwrap_or(Value::Null))
        .await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.body);
    let mut doc = importer("setup");
    doc["api_name"] = json!("defaults");
    doc["loads"][0]["match"] = json!([{"field": "email", "variable": "email"}]);
    let created = s.post("/connectors", ADMIN, doc).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["loads"][0]["match"][0],
        json!({"field": "email", "variable": "email", "no_match": "create_new",
               "single_match": "update_current", "multiple_match": "do_not_upload"})
    );
    let api = s.send(Method::GET, "/openapi.json", None, None).await.body;
    let rule = &api["components"]["schemas"]["MatchRule"];
    assert_eq!(rule["required"], json!(["field", "variable"]), "{rule}");
    assert_eq!(
        [
            &rule["properties"]["no_match"]["default"],
            &rule["properties"]["single_match"]["default"],
            &rule["properties"]["multiple_match"]["default"]
        ],
        [&json!("create_new"), &json!("update_current"), &json!("do_not_upload")],
        "{rule}"
    );
    let operational = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "x", "type": "spreadsheet", "status": "operational"}),
        )
        .await;
    assert_problem(&operational, StatusCode::UNPROCESSABLE_ENTITY, "invalid_connector");
    assert_eq!(operational.body["errors"][0]["path"], "status");
    let bad_sql = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "x", "type": "spreadsheet", "sql": {"text": "CREATE VIEW output.a AS\nSELECT * FROM read_csv('/etc/passwd')"}}),
        )
        .await;
    assert_problem(&bad_sql, StatusCode::UNPROCESSABLE_ENTITY, "sql_not_allowed");
    assert_eq!(
        (bad_sql.body["line"].as_u64(), bad_sql.body["column"].as_u64()),
        (Some(1), Some(1)),
        "the statement's position"
    );

    let created = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "orders", "type": "spreadsheet"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(created.body["draft_version"], 1);
    assert_eq!(created.body["live_version"], Value::Null);
    let by_id = s.get(&format!("/connectors/{id}"), ADMIN).await;
    let by_name = s.get("/connectors/orders", ADMIN).await;
    assert_eq!(by_id.body, by_name.body);
    let dup = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "orders", "type": "spreadsheet"}),
        )
        .await;
    assert_problem(&dup, StatusCode::CONFLICT, "connector_exists");
    // A GET document can be sent back as a patch.
    let mut back = by_id.body.clone();
    back["name"] = json!("Orders");
    let patched = s
        .send(Method::PATCH, &format!("/connectors/{id}"), Some(ADMIN), Some(back))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["name"], "Orders");
    for n in 0..3 {
        let c = s
            .post(
                "/connectors",
                ADMIN,
                json!({"api_name": format!("c{n}"), "type": "spreadsheet"}),
            )
            .await;
        assert_eq!(c.status, StatusCode::CREATED);
    }
    let page1 = s.get("/connectors?limit=3", ADMIN).await;
    assert_eq!(page1.body["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(page1.body["data"][0]["api_name"], "c2", "newest first");
    let cursor = page1.body["next_cursor"].as_str().unwrap_or_default().to_string();
    let page2 = s.get(&format!("/connectors?limit=3&cursor={cursor}"), ADMIN).await;
    // `orders` and `defaults`, made before the three.
    assert_eq!(page2.body["data"].as_array().map(Vec::len), Some(2), "{}", page2.body);
    assert_eq!(page2.body["next_cursor"], Value::Null);
    assert_problem(
        &s.get("/connectors?limit=501", ADMIN).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let gone = s.send(Method::DELETE, "/connectors/orders", Some(ADMIN), None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_problem(
        &s.get(&format!("/connectors/{id}"), ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    s.stop().await;
}

/// Saves `text` as the draft of connector `orders`.
async fn put_draft(s: &Server, text: &str) -> Answer {
    s.send(
        Method::PUT,
        "/connectors/orders/sql/draft",
        Some(ADMIN),
        Some(json!({ "text": text })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_drafts_are_checked_and_publishing_needs_a_successful_dry_run() {
    let s = start().await;
    let f = s
        .upload("/files", ADMIN, "orders.csv", b"id,amount\n1,10\n2,20\n")
        .await;
    let c = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "orders", "type": "spreadsheet", "sql": {"text": "CREATE VIEW output.o AS SELECT id FROM input.data"}}),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let none = s.post("/connectors/orders/sql/publish", ADMIN, json!({})).await;
    assert_problem(&none, StatusCode::UNPROCESSABLE_ENTITY, "no_sample_file");

    // A script that does not parse is refused with its position, and kept
    // as the draft.
    let broken = "CREATE VIEW output.o AS\nSELEC id FROM input.data";
    let syntax = put_draft(&s, broken).await;
    assert_problem(&syntax, StatusCode::UNPROCESSABLE_ENTITY, "sql_error");
    assert_eq!(syntax.body["line"], 2, "{}", syntax.body);
    assert_eq!(syntax.body["draft_version"], 1, "{}", syntax.body);
    assert_eq!(
        s.get("/connectors/orders/sql", ADMIN).await.body["draft"]["text"],
        broken
    );

    // Without a sample the input's columns are unknown: only the parse counts.
    let unknown_column = "CREATE VIEW output.o AS\n  SELECT id,\n    no_such_column\n  FROM input.data";
    let unplanned = put_draft(&s, unknown_column).await;
    assert_eq!(unplanned.status, StatusCode::OK, "{}", unplanned.body);

    // With a sample the draft is planned against its columns: refused with
    // the position of the unknown column, kept as the draft.
    let file_id = f.body["id"].clone();
    let patched = s
        .send(
            Method::PATCH,
            "/connectors/orders",
            Some(ADMIN),
            Some(json!({ "sample_file_id": file_id })),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let planned = put_draft(&s, unknown_column).await;
    assert_problem(&planned, StatusCode::UNPROCESSABLE_ENTITY, "sql_error");
    assert!(
        planned.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no_such_column")),
        "{}",
        planned.body
    );
    assert_eq!(
        (planned.body["line"].clone(), planned.body["column"].clone()),
        (json!(3), json!(5)),
        "{}",
        planned.body
    );
    assert_eq!(planned.body["draft_version"], 1, "{}", planned.body);
    assert_eq!(
        s.get("/connectors/orders/sql", ADMIN).await.body["draft"]["text"],
        unknown_column
    );
    // Types are planned too, and tables that do not exist.
    for (text, needle) in [
        (
            "CREATE VIEW output.o AS SELECT id FROM input.nothing_here",
            "nothing_here",
        ),
        (
            "CREATE VIEW output.o AS SELECT id + true AS x FROM input.data",
            "Boolean",
        ),
        (
            "CREATE TABLE t AS SELECT id FROM input.data;\nCREATE VIEW output.o AS SELECT amount FROM t",
            "amount",
        ),
    ] {
        let refused = put_draft(&s, text).await;
        assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "sql_error");
        assert!(
            refused.body["detail"].as_str().is_some_and(|d| d.contains(needle)),
            "{text}: {}",
            refused.body
        );
    }

    // A draft that fails its check is not published.
    put_draft(&s, unknown_column).await;
    let refused = s
        .post(
            "/connectors/orders/sql/publish",
            ADMIN,
            json!({"source_file_id": file_id}),
        )
        .await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "sql_error");
    assert_eq!(refused.body["execution"]["status"], "failed");
    assert_eq!(refused.body["execution"]["is_dry_run"], true);
    // The list tells a publish's dry run from an upload's run.
    assert_eq!(refused.body["execution"]["trigger_type"], "publish");
    let listed = s.get("/connectors/orders/executions?trigger_type=publish", ADMIN).await;
    assert_eq!(
        listed.body["data"][0]["id"], refused.body["execution"]["id"],
        "{}",
        listed.body
    );
    assert_eq!(s.get("/connectors/orders/sql", ADMIN).await.body["live"], Value::Null);

    let good = "CREATE VIEW output.o AS SELECT id, amount * 2 AS double FROM input.data";
    let saved = put_draft(&s, good).await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.body);
    let published = s
        .post(
            "/connectors/orders/sql/publish",
            ADMIN,
            json!({"source_file_id": file_id}),
        )
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    assert_eq!(published.body["live"]["version"], 1);
    assert_eq!(published.body["live"]["text"], good);
    assert_eq!(published.body["draft"]["version"], 2);
    let versions = s.get("/connectors/orders/sql/versions", ADMIN).await;
    assert_eq!(versions.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(versions.body["data"][0]["version"], 2, "newest first");
    // Lists are pages everywhere: one at a time, then the cursor.
    let first = s.get("/connectors/orders/sql/versions?limit=1", ADMIN).await;
    assert_eq!(first.body["data"][0]["version"], 2, "{}", first.body);
    let cursor = first.body["next_cursor"].as_str().unwrap_or_default().to_string();
    assert!(!cursor.is_empty(), "{}", first.body);
    let second = s
        .get(
            &format!("/connectors/orders/sql/versions?limit=1&cursor={cursor}"),
            ADMIN,
        )
        .await;
    assert_eq!(second.body["data"][0]["version"], 1, "{}", second.body);
    assert_eq!(second.body["next_cursor"], Value::Null, "{}", second.body);
    let v1 = s.get("/connectors/orders/sql/versions/1", ADMIN).await;
    assert_eq!(v1.body["text"], good);
    assert_problem(
        &s.get("/connectors/orders/sql/versions/9", ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_run_loads_records_and_serves_its_artifacts() {
    let s = start().await;
    operational_importer(&s).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "contacts.csv", CONTACTS_CSV)
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        run.location.as_deref(),
        Some(format!("/api/v1/executions/{id}").as_str())
    );
    assert_eq!(run.body["trigger_type"], "file_upload");
    assert_eq!(run.body["connector"]["version"], 1);
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "partial_success", "{done}");
    let stored = s.app.db.execution(&id).ok().flatten().map(|r| r.document.status);
    assert_eq!(
        stored,
        Some(Status::PartialSuccess),
        "an end is shown once it is stored"
    );
    let load = &done["step_progress"][4]["steps"][0];
    assert_eq!(
        (load["created"].as_u64(), load["total"].as_u64()),
        (Some(2), Some(2)),
        "{done}"
    );
    assert_eq!(done["step_progress"][3]["scopes"][0]["invalid"], 1);
    // No transform steps: the stage is skipped, not completed.
    assert_eq!(done["step_progress"][2]["status"], "skipped", "{done}");

    let records = s.get("/objects/contact/records?city=London", ADMIN).await;
    assert_eq!(
        records.body["data"].as_array().map(Vec::len),
        Some(1),
        "{}",
        records.body
    );
    assert_eq!(records.body["data"][0]["email"], "ada@example.com");
    let rid = records.body["data"][0]["id"].as_str().unwrap_or_default().to_string();
    let one = s.get(&format!("/objects/contact/records/{rid}"), ADMIN).await;
    assert_eq!(one.body["city"], "London");

    assert_eq!(
        s.get(&format!("/executions/{id}/input"), ADMIN).await.bytes,
        CONTACTS_CSV
    );
    assert_eq!(
        s.get(&format!("/executions/{id}/sql"), ADMIN).await.bytes,
        IMPORT_SQL.as_bytes()
    );
    let report = s.get(&format!("/executions/{id}/report.xlsx"), ADMIN).await;
    assert!(report.bytes.starts_with(b"PK"), "report.xlsx is a zip");
    let rejected = s.get(&format!("/executions/{id}/rejected.csv"), ADMIN).await;
    assert!(String::from_utf8_lossy(&rejected.bytes).contains("not-an-email"));
    let output = s.get(&format!("/executions/{id}/output.zip"), ADMIN).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(output.bytes)).unwrap_or_else(|e| panic!("{e}"));
    let mut csv = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("output/people.csv").unwrap_or_else(|e| panic!("{e}")),
        &mut csv,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        csv.starts_with("email,city\n") && csv.contains("ada@example.com,London"),
        "{csv}"
    );
    let logs = s.get(&format!("/executions/{id}/logs"), ADMIN).await;
    let lines = logs.body["data"].to_string();
    assert!(lines.contains("queued") && lines.contains("partial_success"), "{lines}");

    // The same file again updates instead of duplicating.
    let again = s
        .upload("/connectors/contacts_import/runs", ADMIN, "contacts.csv", CONTACTS_CSV)
        .await;
    let again = s.wait_end(again.body["id"].as_str().unwrap_or_default()).await;
    assert_eq!(again["step_progress"][4]["steps"][0]["updated"], 2, "{again}");
    let all = s.get("/objects/contact/records", ADMIN).await;
    assert_eq!(all.body["data"].as_array().map(Vec::len), Some(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_follow_the_connector_status_and_dry_runs_write_nothing() {
    let s = start().await;
    operational_importer(&s).await;
    s.send(
        Method::PATCH,
        "/connectors/contacts_import",
        Some(ADMIN),
        Some(json!({"status": "setup"})),
    )
    .await;
    let live = s
        .upload("/connectors/contacts_import/runs", ADMIN, "c.csv", CONTACTS_CSV)
        .await;
    assert_problem(&live, StatusCode::CONFLICT, "connector_not_operational");
    let dry = s
        .upload(
            "/connectors/contacts_import/runs?dry_run=true",
            ADMIN,
            "c.csv",
            CONTACTS_CSV,
        )
        .await;
    assert_eq!(dry.status, StatusCode::ACCEPTED, "{}", dry.body);
    let dry = s.wait_end(dry.body["id"].as_str().unwrap_or_default()).await;
    assert_eq!(dry["is_dry_run"], true);
    assert_eq!(
        dry["step_progress"][4]["steps"][0]["created"], 2,
        "a dry run computes outcomes: {dry}"
    );
    let records = s.get("/objects/contact/records", ADMIN).await;
    assert_eq!(records.body["data"], json!([]), "a dry run writes nothing");

    // Inactive: accepted and held in the queue until operational again.
    s.send(
        Method::PATCH,
        "/connectors/contacts_import",
        Some(ADMIN),
        Some(json!({"status": "inactive"})),
    )
    .await;
    let held = s
        .upload("/connectors/contacts_import/runs", ADMIN, "c.csv", CONTACTS_CSV)
        .await;
    assert_eq!(held.status, StatusCode::ACCEPTED);
    let id = held.body["id"].as_str().unwrap_or_default().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = s.get(&format!("/executions/{id}"), ADMIN).await;
    assert_eq!(still.body["status"], "queued");
    assert_eq!(still.body["queue_position"], 0);
    s.send(
        Method::PATCH,
        "/connectors/contacts_import",
        Some(ADMIN),
        Some(json!({"status": "operational"})),
    )
    .await;
    let ran = s.wait_end(&id).await;
    assert_eq!(ran["status"], "partial_success", "{ran}");

    // Runs on a stored file, and the list with filters.
    let file = s.upload("/files", ADMIN, "c.csv", CONTACTS_CSV).await;
    let by_ref = s
        .post(
            "/connectors/contacts_import/runs",
            ADMIN,
            json!({"source_file_id": file.body["id"]}),
        )
        .await;
    assert_eq!(by_ref.status, StatusCode::ACCEPTED, "{}", by_ref.body);
    s.wait_end(by_ref.body["id"].as_str().unwrap_or_default()).await;
    let missing = s
        .post(
            "/connectors/contacts_import/runs",
            ADMIN,
            json!({"source_file_id": "nope"}),
        )
        .await;
    assert_problem(&missing, StatusCode::UNPROCESSABLE_ENTITY, "unknown_file");
    let dry_list = s
        .get("/connectors/contacts_import/executions?is_dry_run=true", ADMIN)
        .await;
    // The publish check and the explicit dry run.
    assert_eq!(
        dry_list.body["data"].as_array().map(Vec::len),
        Some(2),
        "{}",
        dry_list.body
    );
    let live_list = s
        .get("/connectors/contacts_import/executions?is_dry_run=false&limit=1", ADMIN)
        .await;
    assert_eq!(live_list.body["data"][0]["id"], by_ref.body["id"], "newest first");
    assert!(live_list.body["next_cursor"].is_string());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_follows_the_contract_in_every_state() {
    let s = start().await;
    slow_connector(&s, "slow", "operational").await;
    // Running in SQL: 202 with canceling, then canceled; again 202, however
    // quickly the run stopped.
    let run = s.upload("/connectors/slow/runs", ADMIN, "x.csv", b"a\n1\n").await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    s.wait_stage(&id, 1).await;
    let asked = Instant::now();
    let c = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{}", c.body);
    assert_eq!(c.body["status"], "canceling");
    let twice = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(twice.status, StatusCode::ACCEPTED);
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(done["step_progress"][1]["status"], "canceled", "{done}");
    let late = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(late.status, StatusCode::ACCEPTED, "{}", late.body);
    assert_eq!(late.body["status"], "canceled");
    // Finished otherwise: 409.
    operational_importer(&s).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "contacts.csv", CONTACTS_CSV)
        .await;
    let ended = run.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(s.wait_end(&ended).await["status"], "partial_success");
    let late = s.post(&format!("/executions/{ended}/cancel"), ADMIN, json!({})).await;
    assert_problem(&late, StatusCode::CONFLICT, "execution_finished");
    // Queued (inactive connector): canceled at once.
    slow_connector(&s, "held", "inactive").await;
    let queued = s.upload("/connectors/held/runs", ADMIN, "x.csv", b"a\n1\n").await;
    let qid = queued.body["id"].as_str().unwrap_or_default().to_string();
    let c = s.post(&format!("/executions/{qid}/cancel"), ADMIN, json!({})).await;
    assert_eq!(c.status, StatusCode::ACCEPTED);
    assert_eq!(c.body["status"], "canceled");
    let stored = s.get(&format!("/executions/{qid}"), ADMIN).await;
    assert_eq!(stored.body["status"], "canceled");
    let viewer = s.key("default", Role::Viewer, None);
    let c = s.post(&format!("/executions/{qid}/cancel"), &viewer, json!({})).await;
    assert_problem(&c, StatusCode::FORBIDDEN, "forbidden");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_load_keeps_exactly_what_was_committed() {
    // Small commits leave the cancel hundreds of them to land in, however
    // slowly this test is scheduled. (512 divides the 8192-row batches the
    // load receives, so every commit is whole.)
    let s = start_with(|c| c.load_batch_size = 512).await;
    operational_importer(&s).await;
    let mut csv = String::from("email,city\n");
    for i in 0..120_000 {
        csv.push_str(&format!("user{i}@example.com,City {}\n", i % 97));
    }
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "many.csv", csv.as_bytes())
        .await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc = s.get(&format!("/executions/{id}"), ADMIN).await.body;
        let created = doc["step_progress"][4]["steps"][0]["created"].as_u64().unwrap_or(0);
        if created > 0 {
            break;
        }
        assert!(
            doc["status"] == "running" || doc["status"] == "queued",
            "the run ended before its load could be canceled: {doc}"
        );
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(c.status, StatusCode::ACCEPTED);
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    let created = done["step_progress"][4]["steps"][0]["created"].as_u64().unwrap_or(0);
    assert!(created > 0 && created < 120_000, "{done}");
    assert_eq!(created % 512, 0, "whole commits of load_batch_size rows: {done}");
    let stored = s
        .app
        .records
        .count(&workspace_id(&s), "contact")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored, created, "the counts say exactly what was written");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_runs_of_one_connector_in_the_queue() {
    let s = start().await;
    operational_importer(&s).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let run = s
            .upload("/connectors/contacts_import/runs", ADMIN, "c.csv", CONTACTS_CSV)
            .await;
        assert_eq!(run.status, StatusCode::ACCEPTED);
        ids.push(run.body["id"].as_str().unwrap_or_default().to_string());
    }
    let mut spans = Vec::new();
    for id in &ids {
        let done = s.wait_end(id).await;
        assert_eq!(done["status"], "partial_success");
        let t = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(done[k].as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"))
        };
        spans.push((t("started_at"), t("ended_at")));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two runs of a max_concurrency = 1 connector overlapped: {pair:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_documents() {
    let s = start().await;
    let unknown = s.get("/nowhere", ADMIN).await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "not_found");
    // A method the route does not take: 405 as a problem, saying which it takes.
    let trace = s
        .client
        .request(reqwest::Method::TRACE, format!("{}/keys", s.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let allow = trace
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    assert_eq!(allow.as_deref(), Some("GET,HEAD,POST"));
    let trace = answer(trace).await;
    assert_problem(&trace, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let not_json = answer(
        s.client
            .post(format!("{}/connectors", s.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_problem(&not_json, StatusCode::BAD_REQUEST, "bad_request");
    let no_type = answer(
        s.client
            .post(format!("{}/keys", s.base))
            .bearer_auth(ADMIN)
            .body("{}")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_problem(&no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let no_name = s.upload("/files", ADMIN, "", b"a\n").await;
    assert_eq!(
        no_name.status,
        StatusCode::CREATED,
        "an empty name falls back to a default"
    );
    let raw_no_name = answer(
        s.client
            .post(format!("{}/files", s.base))
            .bearer_auth(ADMIN)
            .body("a\n1\n")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_problem(&raw_no_name, StatusCode::BAD_REQUEST, "bad_request");
    let metrics = s.get("/metrics", ADMIN).await;
    assert!(String::from_utf8_lossy(&metrics.bytes).contains("weir_http_requests_total"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_upload_fails_its_run_and_keeps_the_file() {
    let s = start().await;
    operational_importer(&s).await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "data.bin", &binary)
        .await;
    assert_eq!(
        run.status,
        StatusCode::ACCEPTED,
        "a file is accepted before it is read: {}",
        run.body
    );
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "unreadable_input", "{done}");
    assert_eq!(done["error"]["stage"], "intake", "{done}");
    assert_eq!(
        s.get(&format!("/executions/{id}/input"), ADMIN).await.bytes,
        binary,
        "nothing accepted is lost"
    );
    let logs = s.get(&format!("/executions/{id}/logs"), ADMIN).await;
    assert!(
        logs.body["data"].to_string().contains("unreadable_input"),
        "{}",
        logs.body
    );
    s.stop().await;
}

impl Server {
    async fn publish_plugin(&self, key: &str, name: &str, version: &str, bytes: &[u8]) -> Answer {
        let request = self
            .client
            .post(format!("{}/plugins?name={name}&version={version}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/wasm")
            .body(bytes.to_vec());
        answer(request.send().await.unwrap_or_else(|e| panic!("publish: {e}"))).await
    }
}

/// How many files are under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> usize {
    common::walk(dir).len()
}

fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(weir_tests::plugin_wasm(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_published_immutable_checked_before_acceptance_and_listed() {
    let s = start().await;
    let identity = plugin_bytes("identity");
    let cache = s.app.settings.config.data_dir.join("plugin-cache");
    assert_eq!(
        files_under(&cache),
        0,
        "nothing is compiled before a plugin is published"
    );
    let first = s.publish_plugin(ADMIN, "identity", "0.1.0", &identity).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // Compiled at publish, on disk where the workers running it look: its
    // first run does not compile it.
    assert!(
        files_under(&cache) > 0,
        "the published plugin is compiled into the cache"
    );
    assert_eq!(first.body["reference"], "identity@0.1.0");
    assert_eq!(first.body["id"], first.body["sha256"]);
    assert_eq!(first.body["size"].as_u64(), Some(identity.len() as u64));
    let again = s.publish_plugin(ADMIN, "identity", "0.1.0", &identity).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["sha256"], first.body["sha256"]);
    let other = s
        .publish_plugin(ADMIN, "identity", "0.1.0", &plugin_bytes("row-filter"))
        .await;
    assert_problem(&other, StatusCode::CONFLICT, "plugin_version_exists");
    let garbage = s.publish_plugin(ADMIN, "junk", "0.1.0", b"\0asm\x01\0\0\0 nope").await;
    assert_problem(&garbage, StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin");
    let bad_name = s.publish_plugin(ADMIN, "Bad..Name", "0.1.0", &identity).await;
    assert_problem(&bad_name, StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin");
    let operator = s.key("default", Role::Operator, None);
    let refused = s.publish_plugin(&operator, "identity", "0.2.0", &identity).await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    let list = s.get("/plugins", &operator).await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<&str> = list.body["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["reference"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["identity@0.1.0"]);
    let elsewhere = s.key("other", Role::Admin, None);
    let theirs = s.get("/plugins", &elsewhere).await;
    assert_eq!(theirs.body, json!({"data": [], "next_cursor": null}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_blob_store_that_is_not_a_directory_keeps_and_serves_everything_from_it() {
    keeps_and_serves_everything_from(Arc::new(object_store::memory::InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_an_s3_bucket_keeps_and_serves_everything_from_it() {
    let Some(s3) = common::services::S3::start() else {
        return;
    };
    s3.bucket("weir");
    keeps_and_serves_everything_from(s3_store(&s3.endpoint, "weir")).await;
}

/// A whole server on `store`: a run with a plugin, its input, artifacts,
/// `output.zip`, a preview and a dev package from the store, and nothing
/// left of an execution or a file once deleted.
async fn keeps_and_serves_everything_from(store: Arc<dyn object_store::ObjectStore>) {
    use futures::TryStreamExt;
    let s = start_on_blob_store(store.clone()).await;
    let keys = || async {
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap_or_else(|e| panic!("{e}"));
        listed.into_iter().map(|m| m.location.to_string()).collect::<Vec<_>>()
    };
    let p = s
        .publish_plugin(ADMIN, "phone-normalize", "0.1.0", &plugin_bytes("phone-normalize"))
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    phone_importer(&s).await;

    // A run reads its input and plugin from the store and leaves its
    // artifacts there; the data directory holds none of them.
    let csv = b"Email,City\nada@example.com,London\nbad-email,Paris\n";
    let id = trigger(&s, "june.csv", csv).await;
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "partial_success", "{done}");
    assert_eq!(done["step_progress"][2]["status"], "completed", "{done}");
    let data_dir = &s.app.settings.config.data_dir;
    for local in ["files", "executions"] {
        assert_eq!(files_under(&data_dir.join(local)), 0, "{local}/ in the data directory");
    }
    let stored = keys().await;
    let input = done["source_file_id"].as_str().unwrap_or_default();
    assert!(stored.contains(&format!("files/{}/{input}", &input[..2])), "{stored:?}");
    for artifact in ["report.xlsx", "rejected.csv", "output/people.csv"] {
        assert!(
            stored.contains(&format!("executions/{id}/{artifact}")),
            "{artifact}: {stored:?}"
        );
    }

    // Served from the store: the input, each artifact, output.zip.
    assert_eq!(s.get(&format!("/executions/{id}/input"), ADMIN).await.bytes, csv);
    let rejected = s.get(&format!("/executions/{id}/rejected.csv"), ADMIN).await;
    assert_eq!(rejected.status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&rejected.bytes).contains("bad-email"),
        "{}",
        rejected.body
    );
    let report = s.get(&format!("/executions/{id}/report.xlsx"), ADMIN).await;
    assert_eq!(report.status, StatusCode::OK);
    assert!(report.bytes.starts_with(b"PK"), "report.xlsx is a zip");
    let zip = s.get(&format!("/executions/{id}/output.zip"), ADMIN).await;
    assert_eq!(zip.status, StatusCode::OK, "{}", zip.body);
    let people = common::scope_csv(zip.bytes, "people");
    assert!(
        people.starts_with("email,city,phone") && people.contains("ada@example.com"),
        "{people}"
    );
    assert!(
        keys().await.contains(&format!("executions/{id}/output.zip")),
        "output.zip is kept"
    );

    // A preview and a dev package read the same store.
    let preview = s.post("/connectors/contacts_import/preview", ADMIN, json!({})).await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    let package = s
        .get("/connectors/contacts_import/dev-package?version=draft", ADMIN)
        .await;
    assert_eq!(package.status, StatusCode::OK, "{}", package.body);
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(package.bytes.clone())).unwrap_or_else(|e| panic!("{e}"));
    for name in ["plugins/phone-normalize-0.1.0.wasm", "data/contacts.csv"] {
        let mut bytes = Vec::new();
        let mut entry = archive.by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(!bytes.is_empty(), "{name}");
    }

    // Deleting the execution and the file takes them out of the store.
    assert_eq!(
        s.send(Method::DELETE, &format!("/executions/{id}"), Some(ADMIN), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.send(Method::DELETE, &format!("/files/{input}"), Some(ADMIN), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let left = keys().await;
    assert!(
        !left.iter().any(|k| k.starts_with(&format!("executions/{id}"))),
        "{left:?}"
    );
    assert!(!left.iter().any(|k| k.ends_with(input)), "{left:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_uses_the_workspaces_plugins_and_a_cancel_interrupts_a_looping_one() {
    let s = start().await;
    for name in ["phone-normalize", "hostile"] {
        let p = s.publish_plugin(ADMIN, name, "0.1.0", &plugin_bytes(name)).await;
        assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    }
    // A connector whose scope goes through the phone normaliser.
    phone_importer(&s).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "contacts.csv", CONTACTS_CSV)
        .await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_ne!(done["status"], "failed", "{done}");
    let transform = &done["step_progress"][2];
    assert_eq!(transform["status"], "completed", "{done}");
    assert_eq!(transform["steps"][0]["plugin"], "phone-normalize@0.1.0");
    assert!(
        transform["steps"][0]["rows_out"].as_u64().unwrap_or_default() > 0,
        "{done}"
    );

    // A looping plugin: the cancel interrupts it.
    let looping = json!({
        "api_name": "looping", "type": "spreadsheet", "status": "setup",
        "sql": {"text": "CREATE VIEW output.people AS SELECT * FROM input.data"},
        "transforms": [{"scope": "people", "plugin": "hostile@0.1.0", "config": {"mode": "loop"}}],
    });
    live_without_dry_run(&s, looping, "operational").await;
    let run = s.upload("/connectors/looping/runs", ADMIN, "x.csv", b"a\n1\n").await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    s.wait_stage(&id, 2).await;
    // Let the guest enter its loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let c = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{}", c.body);
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    assert_eq!(done["step_progress"][2]["status"], "canceled", "{done}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the cancel took {:?}",
        asked.elapsed()
    );

    // The server is healthy: the good connector runs again.
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "contacts.csv", CONTACTS_CSV)
        .await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_ne!(done["status"], "failed", "{done}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_caps_bound_connector_limits_plugins_and_outputs() {
    let s = start_with(|c| {
        c.connector_max_memory = "1GiB".into();
        c.connector_max_rows = 1000;
        c.plugin_memory = "64MiB".into();
        c.output_row_cap = Some(1);
    })
    .await;
    // A connector asking for more than the server allows is refused, every
    // limit named.
    let greedy = json!({"api_name": "greedy", "type": "spreadsheet",
                        "limits": {"max_memory": "4GiB", "max_rows": 5000}});
    let refused = s.post("/connectors", ADMIN, greedy).await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_connector");
    let text = refused.body["errors"].to_string();
    assert!(text.contains("limits.max_memory") && text.contains("1.0 GiB"), "{text}");
    assert!(text.contains("limits.max_rows") && text.contains("1000"), "{text}");

    // Every row is loaded; the output CSV keeps output_row_cap of them.
    operational_importer_with(&s, |doc| doc["limits"] = json!({"max_memory": "512MiB"})).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "c.csv", CONTACTS_CSV)
        .await;
    let done = s.wait_end(run.body["id"].as_str().unwrap_or_default()).await;
    assert_eq!(done["step_progress"][4]["steps"][0]["created"], 2, "{done}");
    let id = done["id"].as_str().unwrap_or_default();
    let outputs = s.get(&format!("/executions/{id}/output.zip"), ADMIN).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(outputs.bytes)).unwrap_or_else(|e| panic!("{e}"));
    let mut csv = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("output/people.csv").unwrap_or_else(|e| panic!("{e}")),
        &mut csv,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(csv.lines().count(), 2, "a header and one row: {csv}");
    // A preview cut by the cap says it is cut.
    let p = s.post("/connectors/contacts_import/preview", ADMIN, json!({})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let scope = &p.body["scopes"][0];
    assert_eq!(
        (scope["rows"].as_array().map(Vec::len), &scope["truncated"]),
        (Some(1), &json!(true)),
        "{}",
        p.body
    );

    // A plugin instance has the server's plugin_memory.
    let p = s
        .publish_plugin(ADMIN, "hostile", "0.1.0", &plugin_bytes("hostile"))
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    let hoarding = json!({
        "api_name": "hoarding", "type": "spreadsheet", "status": "setup",
        "sql": {"text": "CREATE VIEW output.people AS SELECT * FROM input.data"},
        "transforms": [{"scope": "people", "plugin": "hostile@0.1.0", "config": {"mode": "memory"}}],
    });
    live_without_dry_run(&s, hoarding, "operational").await;
    let run = s.upload("/connectors/hoarding/runs", ADMIN, "x.csv", b"a\n1\n").await;
    let done = s.wait_end(run.body["id"].as_str().unwrap_or_default()).await;
    assert_eq!(done["error"]["code"], "plugin_trap", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("64.0 MiB"),
        "{done}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_breaks_the_live_scripts_output_is_refused() {
    let s = start().await;
    operational_importer(&s).await;
    let broken = s
        .send(
            Method::PATCH,
            "/connectors/contacts_import",
            Some(ADMIN),
            Some(json!({"variables": [
                {"name": "email", "scope": "people", "column": "mail", "type": "email", "required": true},
                {"name": "city", "scope": "people", "column": "city", "type": "string"}]})),
        )
        .await;
    assert_problem(&broken, StatusCode::UNPROCESSABLE_ENTITY, "invalid_connector");
    assert_eq!(
        broken.body["errors"][0]["path"], "variables[0].column",
        "{}",
        broken.body
    );
    let elsewhere = s
        .send(
            Method::PATCH,
            "/connectors/contacts_import",
            Some(ADMIN),
            Some(json!({"loads": [{"order": 1, "scope": "persons", "object": "contact",
                                   "match": [{"field": "email", "variable": "email"}],
                                   "fields": [{"field": "city", "variables": ["city"]}]}]})),
        )
        .await;
    assert_problem(&elsewhere, StatusCode::UNPROCESSABLE_ENTITY, "invalid_connector");
    assert!(
        elsewhere.body["errors"].to_string().contains("persons"),
        "{}",
        elsewhere.body
    );
    // Nothing changed, and an edit that fits is taken.
    let now = s.get("/connectors/contacts_import", ADMIN).await;
    assert_eq!(now.body["variables"][0]["column"], "email");
    let fits = s
        .send(
            Method::PATCH,
            "/connectors/contacts_import",
            Some(ADMIN),
            Some(json!({"variables": [
                {"name": "email", "scope": "people", "column": "email", "type": "email", "required": true},
                {"name": "city", "scope": "people", "column": "city", "type": "string", "required": true}]})),
        )
        .await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.body);
    s.stop().await;
}

/// Checks `doc` against an OpenAPI 3.1 schema of `api`: types, enums,
/// required properties, no undeclared ones, and everything nested. Enough of
/// JSON Schema for what the document generates ($ref, allOf, oneOf (exactly
/// one branch), anyOf, type, enum, properties, required, items,
/// additionalProperties), with JSON Schema's numbers: an integral float is
/// an integer too.
fn conforms(api: &Value, schema: &Value, doc: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(api, schema);
    if let Some(all) = schema["allOf"].as_array() {
        // A flattened struct: each part declares some of the properties.
        let mut merged = json!({"type": "object", "properties": {}, "required": []});
        for part in all {
            let part = resolve(api, part);
            for (k, v) in part["properties"].as_object().into_iter().flatten() {
                merged["properties"][k] = v.clone();
            }
            for r in part["required"].as_array().into_iter().flatten() {
                if let Some(list) = merged["required"].as_array_mut() {
                    list.push(r.clone());
                }
            }
        }
        return conforms(api, &merged, doc, at);
    }
    let one_of = schema["oneOf"].as_array();
    if let Some(branches) = one_of.or(schema["anyOf"].as_array()) {
        let errors: Vec<String> = branches
            .iter()
            .filter_map(|b| conforms(api, b, doc, at).err())
            .collect();
        let matched = branches.len() - errors.len();
        return match matched {
            0 => Err(format!("{at}: matches no branch: {}", errors.join(" | "))),
            1 => Ok(()),
            _ if one_of.is_some() => Err(format!("{at}: {doc} matches {matched} branches of a oneOf")),
            _ => Ok(()),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind = match doc {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = types.is_empty() || types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !allowed {
        return Err(format!("{at}: {kind} where the schema says {types:?}"));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(doc)
    {
        return Err(format!("{at}: {doc} is not one of {values:?}"));
    }
    match doc {
        Value::Object(map) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !map.contains_key(r) {
                    return Err(format!("{at}: required `{r}` is missing"));
                }
            }
            let declared = schema["properties"].as_object();
            for (k, v) in map {
                match (declared.and_then(|d| d.get(k)), &schema["additionalProperties"]) {
                    (Some(s), _) => conforms(api, s, v, &format!("{at}.{k}"))?,
                    (None, extra) if extra.is_object() => conforms(api, extra, v, &format!("{at}.{k}"))?,
                    (None, _) if declared.is_some() => return Err(format!("{at}: `{k}` is not in the schema")),
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                conforms(api, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn resolve<'a>(api: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => resolve(api, &api["components"]["schemas"][name]),
        None => schema,
    }
}

/// The schema of the `status` answer of `method path` in the document.
fn response_schema<'a>(api: &'a Value, method: &str, path: &str, status: &str) -> &'a Value {
    &api["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_schemas_of_the_openapi_document() {
    let s = start().await;
    // Parameters of every kind, an integral float and an integer past 64
    // bits (which JSON reads as a float) among them.
    operational_importer_with(&s, |doc| {
        doc["parameters"] = serde_json::from_str(
            r#"{"region": "EU", "limit": 10, "ratio": 0.5, "whole": 2.0, "huge": -9223372036854775809, "dry": false}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
    let api = s.send(Method::GET, "/openapi.json", None, None).await.body;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "contacts.csv", CONTACTS_CSV)
        .await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "partial_success", "{done}");
    let checks = [
        ("post", "/api/v1/connectors/{connector}/runs", "202", run.body.clone()),
        ("get", "/api/v1/executions/{id}", "200", done),
        (
            "get",
            "/api/v1/connectors/{connector}/executions",
            "200",
            s.get("/connectors/contacts_import/executions", ADMIN).await.body,
        ),
        (
            "get",
            "/api/v1/connectors/{connector}",
            "200",
            s.get("/connectors/contacts_import", ADMIN).await.body,
        ),
        (
            "get",
            "/api/v1/connectors",
            "200",
            s.get("/connectors", ADMIN).await.body,
        ),
        (
            "get",
            "/api/v1/objects/{object}",
            "200",
            s.get("/objects/contact", ADMIN).await.body,
        ),
        ("get", "/api/v1/objects", "200", s.get("/objects", ADMIN).await.body),
        (
            "get",
            "/api/v1/connectors/{connector}/sql",
            "200",
            s.get("/connectors/contacts_import/sql", ADMIN).await.body,
        ),
        (
            "post",
            "/api/v1/connectors/{connector}/preview",
            "200",
            s.post("/connectors/contacts_import/preview", ADMIN, json!({}))
                .await
                .body,
        ),
    ];
    for (method, path, status, doc) in &checks {
        let schema = response_schema(&api, method, path, status);
        assert!(schema.is_object(), "{method} {path} {status} has no JSON schema");
        // A typed schema, not a free-form object.
        assert!(
            !resolve(&api, schema)
                .as_object()
                .is_some_and(|o| o.is_empty() || o.keys().all(|k| k == "type")),
            "{method} {path} is documented as a free-form object: {schema}"
        );
        if let Err(e) = conforms(&api, schema, doc, "$") {
            panic!("{method} {path} {status}: {e}\n{doc}");
        }
    }
    // The checker itself refuses what does not match.
    let mut wrong = checks[1].3.clone();
    wrong["status"] = json!("exploded");
    assert!(
        conforms(
            &api,
            response_schema(&api, "get", "/api/v1/executions/{id}", "200"),
            &wrong,
            "$"
        )
        .is_err()
    );
    let mut extra = checks[3].3.clone();
    extra["surprise"] = json!(1);
    assert!(
        conforms(
            &api,
            response_schema(&api, "get", "/api/v1/connectors/{connector}", "200"),
            &extra,
            "$"
        )
        .is_err()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_trigger_with_its_idempotency_key_starts_one_execution() {
    let s = start().await;
    operational_importer(&s).await;
    let path = "/connectors/contacts_import/runs";
    let first = s
        .upload_once(path, ADMIN, Some("order-42"), "c.csv", CONTACTS_CSV)
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert!(!first.replayed);
    let id = first.body["id"].as_str().unwrap_or_default().to_string();

    // The same request again: the same execution, said to be a replay.
    let again = s
        .upload_once(path, ADMIN, Some("order-42"), "c.csv", CONTACTS_CSV)
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert!(again.replayed);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.location, first.location);

    // Retries racing each other still make one execution.
    let racing =
        futures::future::join_all((0..6).map(|_| s.upload_once(path, ADMIN, Some("order-43"), "c.csv", CONTACTS_CSV)))
            .await;
    let ids: std::collections::BTreeSet<String> = racing
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
            a.body["id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(racing.iter().filter(|a| !a.replayed).count(), 1);

    // The key with another body, another name or as a dry run: 422.
    let other = s
        .upload_once(
            path,
            ADMIN,
            Some("order-42"),
            "c.csv",
            b"Email,City\nx@example.com,Oslo\n",
        )
        .await;
    assert_problem(&other, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    let renamed = s
        .upload_once(path, ADMIN, Some("order-42"), "d.csv", CONTACTS_CSV)
        .await;
    assert_problem(&renamed, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    let dry = s
        .upload_once(
            &format!("{path}?dry_run=true"),
            ADMIN,
            Some("order-42"),
            "c.csv",
            CONTACTS_CSV,
        )
        .await;
    assert_problem(&dry, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");

    // Keys belong to a workspace: another one's is new there.
    let elsewhere = s.key("other", Role::Admin, None);
    operational_importer_as(&s, &elsewhere).await;
    let theirs = s
        .upload_once(path, &elsewhere, Some("order-42"), "c.csv", CONTACTS_CSV)
        .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.body);
    assert!(!theirs.replayed);
    assert_ne!(theirs.body["id"], id.as_str());

    // Without a key, every request is a new execution; a bad key is refused.
    let plain = s.upload(path, ADMIN, "c.csv", CONTACTS_CSV).await;
    assert_ne!(plain.body["id"], id.as_str());
    let long = "k".repeat(256);
    let bad = s.upload_once(path, ADMIN, Some(&long), "c.csv", CONTACTS_CSV).await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "bad_request");
    let executions = s
        .get("/connectors/contacts_import/executions?is_dry_run=false", ADMIN)
        .await
        .body;
    assert_eq!(executions["data"].as_array().map(Vec::len), Some(3), "{executions}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_forgotten_after_its_retention() {
    let s = start_with(|c| c.idempotency_retention = "1s".into()).await;
    operational_importer(&s).await;
    let path = "/connectors/contacts_import/runs";
    let first = s.upload_once(path, ADMIN, Some("nightly"), "c.csv", CONTACTS_CSV).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = s.upload_once(path, ADMIN, Some("nightly"), "c.csv", CONTACTS_CSV).await;
    assert_eq!(later.status, StatusCode::ACCEPTED, "{}", later.body);
    assert!(!later.replayed);
    assert_ne!(later.body["id"], first.body["id"]);
    s.stop().await;
}

/// One Server-Sent Event: its kind, id and data.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: String,
    data: String,
}

/// The complete events of an event stream's text so far.
fn sse_events(text: &str) -> Vec<Sse> {
    let mut out = Vec::new();
    let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
    for block in complete.split("\n\n") {
        let mut e = Sse {
            event: String::new(),
            id: String::new(),
            data: String::new(),
        };
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                e.event = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                e.id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                e.data.push_str(v);
            }
        }
        if !e.event.is_empty() {
            out.push(e);
        }
    }
    out
}

impl Server {
    /// Opens the event stream of execution `id`, resuming after `last`.
    async fn events(&self, id: &str, last: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .get(format!("{}/executions/{id}/events", self.base))
            .bearer_auth(ADMIN);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::OK);
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(kind, Some("text/event-stream"));
        response
    }
}

/// Reads an event stream until `until` holds for its events, or it ends.
async fn read_events(response: &mut reqwest::Response, text: &mut String, until: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = sse_events(text);
        if until(&events) {
            return events;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => return sse_events(text),
            Ok(Err(e)) => panic!("the event stream broke: {e}"),
            Err(_) => panic!("no event in time; so far: {text}"),
        }
    }
}

fn status_of(e: &Sse) -> String {
    serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_run_to_its_end_and_resume_after_the_last_one_seen() {
    let s = start().await;
    slow_connector(&s, "slow", "operational").await;
    let run = s.upload("/connectors/slow/runs", ADMIN, "x.csv", b"a\n1\n").await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();

    let mut stream = s.events(&id, None).await;
    let mut text = String::new();
    let running = read_events(&mut stream, &mut text, |events| {
        events
            .iter()
            .any(|e| e.event == "execution" && status_of(e) == "running")
    })
    .await;
    assert!(running.iter().any(|e| e.event == "log"), "{running:?}");
    let c = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{}", c.body);
    let all = read_events(&mut stream, &mut text, |_| false).await;

    // Log lines in order, each once; every id is the last line's seq.
    let seqs: Vec<u64> = all
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null)["seq"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{all:?}");
    let mut last = 0;
    for e in &all {
        let n: u64 = e.id.parse().unwrap_or_else(|_| panic!("{e:?}"));
        assert!(n >= last, "{all:?}");
        if e.event == "log" {
            assert_eq!(n, last + 1, "{e:?}");
        }
        last = n;
    }
    // The stream ends with the final document and `end`.
    let [.., final_doc, end] = all.as_slice() else {
        panic!("{all:?}")
    };
    assert_eq!(
        (final_doc.event.as_str(), status_of(final_doc).as_str()),
        ("execution", "canceled")
    );
    assert_eq!((end.event.as_str(), end.data.as_str()), ("end", "canceled"));
    let logs = s.get(&format!("/executions/{id}/logs?limit=500"), ADMIN).await.body;
    assert_eq!(logs["data"].as_array().map(Vec::len), Some(seqs.len()), "{logs}");

    // Resuming after the second line: the lines after it, then the
    // document as it is now, then `end`.
    assert!(seqs.len() >= 3, "{seqs:?}");
    let mut again = s.events(&id, Some("2")).await;
    let mut text = String::new();
    let resumed = read_events(&mut again, &mut text, |_| false).await;
    let kinds: Vec<&str> = resumed.iter().map(|e| e.event.as_str()).collect();
    let mut want = vec!["log"; seqs.len() - 2];
    want.extend(["execution", "end"]);
    assert_eq!(kinds, want, "{resumed:?}");
    assert_eq!(resumed[0].id, "3");
    assert_eq!(status_of(&resumed[resumed.len() - 2]), "canceled");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_queued_execution_start_with_it_queued() {
    let s = start().await;
    slow_connector(&s, "held", "inactive").await;
    let queued = s.upload("/connectors/held/runs", ADMIN, "x.csv", b"a\n1\n").await;
    let id = queued.body["id"].as_str().unwrap_or_default().to_string();
    let mut stream = s.events(&id, None).await;
    let mut text = String::new();
    let first = read_events(&mut stream, &mut text, |events| {
        events.iter().any(|e| e.event == "execution")
    })
    .await;
    let doc = first.iter().find(|e| e.event == "execution").map(status_of);
    assert_eq!(doc.as_deref(), Some("queued"), "{first:?}");
    let c = s.post(&format!("/executions/{id}/cancel"), ADMIN, json!({})).await;
    assert_eq!(c.status, StatusCode::ACCEPTED, "{}", c.body);
    let all = read_events(&mut stream, &mut text, |_| false).await;
    assert_eq!(
        all.last().map(|e| (e.event.as_str(), e.data.as_str())),
        Some(("end", "canceled")),
        "{all:?}"
    );

    let missing = s.get("/executions/nope/events", ADMIN).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not_found");
    let anonymous = s
        .send(Method::GET, &format!("/executions/{id}/events"), None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_shows_the_first_rows_of_the_draft_and_writes_nothing() {
    let s = start().await;
    operational_importer(&s).await;
    let executions = || async {
        s.get("/connectors/contacts_import/executions", ADMIN).await.body["data"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let stored_before = executions().await;
    let draft = s
        .send(
            Method::PUT,
            "/connectors/contacts_import/sql/draft",
            Some(ADMIN),
            Some(json!({"text": "CREATE VIEW output.people AS SELECT email, upper(city) AS city FROM input.data"})),
        )
        .await;
    assert_eq!(draft.status, StatusCode::OK, "{}", draft.body);

    let p = s
        .post("/connectors/contacts_import/preview?rows=1", ADMIN, json!({}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let scope = &p.body["scopes"][0];
    assert_eq!(scope["scope"], "people", "{}", p.body);
    assert_eq!(scope["columns"], json!(["email", "city"]));
    assert_eq!(
        scope["rows"],
        json!([["ada@example.com", "LONDON"]]),
        "the draft, one row"
    );
    assert_eq!(scope["truncated"], true);
    assert_eq!(p.body["rejected"].as_array().map(Vec::len), Some(1), "{}", p.body);
    assert_eq!(p.body["rejected"][0]["stage"], "variables");
    let doc = &p.body["execution"];
    assert_eq!(
        (doc["status"].as_str(), doc["is_dry_run"].as_bool()),
        (Some("partial_success"), Some(true))
    );
    assert_eq!(
        doc["step_progress"][4]["steps"][0]["created"], 2,
        "the load decided: {doc}"
    );
    assert_eq!(p.body["timed_out"], false);
    // Its log has the lines an execution's log has: each stage, the end.
    let log: Vec<&str> = p.body["log"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(log.contains(&"info: load: completed"), "{log:?}");
    assert_eq!(log.last(), Some(&"info: status: partial_success"), "{log:?}");

    // Nothing was stored: no execution, no record.
    assert_eq!(executions().await, stored_before);
    let records = s.app.records.count(&workspace_id(&s), "contact").unwrap_or(u64::MAX);
    assert_eq!(records, 0);

    // The live script, all rows.
    let live = s
        .post("/connectors/contacts_import/preview", ADMIN, json!({"version": "live"}))
        .await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.body);
    let rows = &live.body["scopes"][0]["rows"];
    assert_eq!(rows[0], json!(["ada@example.com", "London"]), "{}", live.body);
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    assert_eq!(live.body["scopes"][0]["truncated"], false);

    // A draft that fails shows its error where it is.
    let broken = s
        .send(
            Method::PUT,
            "/connectors/contacts_import/sql/draft",
            Some(ADMIN),
            Some(json!({"text": "CREATE VIEW output.people AS SELECT email, 1/0 AS boom FROM input.data"})),
        )
        .await;
    assert!(broken.status.is_success(), "{}", broken.body);
    let failed = s.post("/connectors/contacts_import/preview", ADMIN, json!({})).await;
    assert_eq!(failed.status, StatusCode::OK, "{}", failed.body);
    assert_eq!(failed.body["execution"]["status"], "failed", "{}", failed.body);
    assert!(
        failed.body["execution"]["error"]["message"].is_string(),
        "{}",
        failed.body
    );

    let too_many = s
        .post("/connectors/contacts_import/preview?rows=501", ADMIN, json!({}))
        .await;
    assert_problem(&too_many, StatusCode::BAD_REQUEST, "bad_request");
    let version = s
        .post("/connectors/contacts_import/preview", ADMIN, json!({"version": "v2"}))
        .await;
    assert_problem(&version, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let viewer = s.key("default", Role::Viewer, None);
    let refused = s.post("/connectors/contacts_import/preview", &viewer, json!({})).await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_that_runs_out_of_time_answers_with_what_it_had() {
    let s = start_with(|c| c.preview_timeout = "1s".into()).await;
    slow_connector(&s, "slow", "operational").await;
    let f = s.upload("/files", ADMIN, "x.csv", b"a\n1\n").await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.body);
    let asked = Instant::now();
    let p = s
        .post(
            "/connectors/slow/preview",
            ADMIN,
            json!({"source_file_id": f.body["id"]}),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.body["timed_out"], true, "{}", p.body);
    assert_eq!(p.body["execution"]["status"], "canceled", "{}", p.body);
    assert!(asked.elapsed() < Duration::from_secs(15), "{:?}", asked.elapsed());
    s.stop().await;
}

/// Every sheet of a workbook as rows of cell texts, leaving out the summary
/// rows that name the run itself (its id, trigger and times).
fn workbook_cells(path: &std::path::Path) -> Vec<(String, Vec<Vec<String>>)> {
    use calamine::Reader;
    const OF_THE_RUN: &[&str] = &[
        "Execution",
        "Connector version",
        "Trigger",
        "Source file",
        "Source file id",
        "Started",
        "Ended",
        "Duration",
    ];
    let mut book = calamine::open_workbook_auto(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for name in book.sheet_names() {
        let range = book.worksheet_range(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rows = range
            .rows()
            .map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>())
            .filter(|r| !OF_THE_RUN.contains(&r.first().map_or("", String::as_str)))
            .collect();
        out.push((name, rows));
    }
    out
}

/// Unzips `bytes` into `dir` and runs it there with `weir run`, returning
/// the execution document.
fn run_package(bytes: &[u8], dir: &std::path::Path) -> Value {
    let zip_path = dir.join("package.zip");
    std::fs::write(&zip_path, bytes).unwrap_or_else(|e| panic!("{e}"));
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "run",
            &zip_path.to_string_lossy(),
            "--out",
            &dir.join("out").to_string_lossy(),
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&local.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&local.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_package_with_records_counts_what_the_server_counts() {
    let s = start_with(|c| c.package_records_max = "4KiB".into()).await;
    operational_importer(&s).await;
    let csv = b"Email,City\nada@example.com,London\ngrace@example.com,Arlington\n";
    let first = s
        .upload("/connectors/contacts_import/runs", ADMIN, "june.csv", csv)
        .await;
    let first = s.wait_end(first.body["id"].as_str().unwrap_or_default()).await;
    assert_eq!(first["status"], "success", "{first}");
    // The same file again updates what the first run created.
    let again = s
        .upload("/connectors/contacts_import/runs", ADMIN, "june.csv", csv)
        .await;
    let again = s.wait_end(again.body["id"].as_str().unwrap_or_default()).await;
    let load = |doc: &Value| doc["step_progress"][4]["steps"][0].clone();
    assert_eq!(
        (load(&again)["created"].as_u64(), load(&again)["updated"].as_u64()),
        (Some(0), Some(2))
    );
    let source = again["source_file_id"].as_str().unwrap_or_default().to_string();

    // With the records, a local run counts what the server's second run did.
    let with = s
        .get(
            &format!("/connectors/contacts_import/dev-package?source_file_id={source}&records=true"),
            ADMIN,
        )
        .await;
    assert_eq!(with.status, StatusCode::OK, "{}", String::from_utf8_lossy(&with.bytes));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(with.bytes.clone())).unwrap_or_else(|e| panic!("{e}"));
    let mut snapshot = String::new();
    std::io::Read::read_to_string(
        &mut archive
            .by_name("records/contact.jsonl")
            .unwrap_or_else(|e| panic!("{e}")),
        &mut snapshot,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.lines().count(), 2, "{snapshot}");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let local = run_package(&with.bytes, dir.path());
    assert_eq!(local["step_progress"][4], again["step_progress"][4], "{local}\n{again}");

    // Without them it counts creates, as its README says.
    let without = s
        .get(
            &format!("/connectors/contacts_import/dev-package?source_file_id={source}"),
            ADMIN,
        )
        .await;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(without.bytes.clone())).unwrap_or_else(|e| panic!("{e}"));
    assert!(archive.by_name("records/contact.jsonl").is_err());
    let mut readme = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name("README.md").unwrap_or_else(|e| panic!("{e}")),
        &mut readme,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        readme.contains("counts\ncreates where the server would count updates"),
        "{readme}"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let local = run_package(&without.bytes, dir.path());
    assert_eq!(
        (load(&local)["created"].as_u64(), load(&local)["updated"].as_u64()),
        (Some(2), Some(0))
    );

    // Past package_records_max the download is refused, naming the cap.
    let many: String = (0..100).map(|i| format!("person{i}@example.com,Oslo\n")).collect();
    let many = format!("Email,City\n{many}");
    let big = s
        .upload("/connectors/contacts_import/runs", ADMIN, "many.csv", many.as_bytes())
        .await;
    s.wait_end(big.body["id"].as_str().unwrap_or_default()).await;
    let refused = s
        .get("/connectors/contacts_import/dev-package?records=true", ADMIN)
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["code"], "records_too_large", "{}", refused.body);
    assert!(
        refused.body["detail"].as_str().unwrap_or_default().contains("4.0 KiB"),
        "{}",
        refused.body
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_package_runs_locally_with_the_results_of_the_server() {
    let s = start().await;
    operational_importer(&s).await;
    // A source file other than the sample, so the package must carry it.
    let csv =
        b"Email,City\nada@example.com,London\ngrace@example.com,Arlington\nbad-email,Paris\ngrace@example.com,Boston\n";
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "june.csv", csv)
        .await;
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "partial_success", "{done}");
    let source = done["source_file_id"].as_str().unwrap_or_default().to_string();

    let package = s
        .get(
            &format!("/connectors/contacts_import/dev-package?source_file_id={source}"),
            ADMIN,
        )
        .await;
    assert_eq!(
        package.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&package.bytes)
    );
    assert_eq!(package.content_type, "application/zip");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let zip_path = dir.path().join("contacts_import.zip");
    std::fs::write(&zip_path, &package.bytes).unwrap_or_else(|e| panic!("{e}"));

    // The manifest names every file with its hash, and the source file.
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(package.bytes.clone())).unwrap_or_else(|e| panic!("{e}"));
    let mut read = |name: &str| {
        let mut f = archive.by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        bytes
    };
    let manifest: Value = serde_json::from_slice(&read("manifest.json")).unwrap_or(Value::Null);
    assert_eq!(manifest["source_file"]["name"], "june.csv", "{manifest}");
    assert_eq!(manifest["connector"]["api_name"], "contacts_import");
    let files = manifest["files"].as_object().cloned().unwrap_or_default();
    for name in [
        "connector.toml",
        "script.sql",
        "objects.toml",
        "data/june.csv",
        "README.md",
    ] {
        let bytes = read(name);
        let sha = sha256_hex(&bytes);
        assert_eq!(
            files.get(name).and_then(Value::as_str),
            Some(sha.as_str()),
            "{name}: {manifest}"
        );
    }
    assert_eq!(read("data/june.csv"), csv);

    // `weir run` of the package: the same outputs, rejected rows, report
    // and counts as the server's run.
    let out = dir.path().join("out");
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "run",
            &zip_path.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let doc: Value = serde_json::from_slice(&local.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&local.stderr)));
    assert_eq!(doc["status"], done["status"], "{doc}");
    assert_eq!(doc["step_progress"], done["step_progress"], "{doc}\n{done}");

    let outputs = s.get(&format!("/executions/{id}/output.zip"), ADMIN).await;
    let mut served = zip::ZipArchive::new(std::io::Cursor::new(outputs.bytes)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!served.is_empty());
    for i in 0..served.len() {
        let mut f = served.by_index(i).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        let name = f
            .name()
            .map(|n| n.trim_start_matches("output/").to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let mine = std::fs::read(out.join("output").join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(mine, bytes, "output {name}");
    }
    let rejected = s.get(&format!("/executions/{id}/rejected.csv"), ADMIN).await;
    assert_eq!(std::fs::read(out.join("rejected.csv")).ok(), Some(rejected.bytes));
    let report = s.get(&format!("/executions/{id}/report.xlsx"), ADMIN).await;
    let served_report = dir.path().join("served.xlsx");
    std::fs::write(&served_report, &report.bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(workbook_cells(&out.join("report.xlsx")), workbook_cells(&served_report));

    // And back: pull with the CLI, edit the script, push, publish, run
    // again on the server.
    let weir = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .env("WEIR_SERVER", &s.base)
            .env("WEIR_KEY", ADMIN)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "weir {args:?}: {text}");
        text
    };
    let pulled = dir.path().join("pulled.zip");
    weir(&[
        "package",
        "pull",
        "contacts_import",
        "--source-file-id",
        &source,
        "-o",
        &pulled.to_string_lossy(),
    ]);
    let work = dir.path().join("work");
    zip::ZipArchive::new(std::fs::File::open(&pulled).unwrap_or_else(|e| panic!("{e}")))
        .and_then(|mut z| z.extract(&work))
        .unwrap_or_else(|e| panic!("{e}"));
    let edited = IMPORT_SQL.replace("SELECT email, city", "SELECT email, upper(city) AS city");
    std::fs::write(work.join("script.sql"), &edited).unwrap_or_else(|e| panic!("{e}"));
    let pushed = weir(&["package", "push", &work.to_string_lossy()]);
    assert!(pushed.contains("updated contacts_import: draft version 2"), "{pushed}");
    let sql = s.get("/connectors/contacts_import/sql", ADMIN).await.body;
    assert_eq!(sql["draft"]["text"], edited.as_str(), "{sql}");
    let p = s
        .post("/connectors/contacts_import/sql/publish", ADMIN, json!({}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let again = s
        .upload("/connectors/contacts_import/runs", ADMIN, "june.csv", csv)
        .await;
    let again_id = again.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(s.wait_end(&again_id).await["status"], "partial_success");
    let outputs = s.get(&format!("/executions/{again_id}/output.zip"), ADMIN).await;
    let mut served = zip::ZipArchive::new(std::io::Cursor::new(outputs.bytes)).unwrap_or_else(|e| panic!("{e}"));
    let mut people = String::new();
    std::io::Read::read_to_string(
        &mut served.by_name("output/people.csv").unwrap_or_else(|e| panic!("{e}")),
        &mut people,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(people.contains("ada@example.com,LONDON"), "{people}");

    // An unknown connector has no package, and viewers may not take one.
    let missing = s.get("/connectors/nope/dev-package", ADMIN).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not_found");
    let viewer = s.key("default", Role::Viewer, None);
    let refused = s.get("/connectors/contacts_import/dev-package", &viewer).await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    s.stop().await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A zip of `entries`; `link` entries are symbolic links.
fn zip_of(entries: &[(&str, &[u8])], link: Option<&str>) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap_or_else(|e| panic!("{e}"));
        zip.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(link) = link {
        zip.add_symlink(link, "/etc/passwd", options)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    zip.finish().unwrap_or_else(|e| panic!("{e}")).into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_package_creates_the_connector_and_hostile_zips_are_refused() {
    let s = start_with(|c| c.max_upload = "1MiB".into()).await;
    let object = s
        .post("/objects", ADMIN, serde_json::from_str(CONTACT).unwrap_or(Value::Null))
        .await;
    assert_eq!(object.status, StatusCode::CREATED, "{}", object.body);
    let connector =
        "api_name = \"pushed\"\ntype = \"spreadsheet\"\nstatus = \"operational\"\n[sql]\nfile = \"script.sql\"\n";
    let put = |bytes: Vec<u8>| {
        let request = s
            .client
            .put(format!("{}/connectors/pushed/package", s.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/zip")
            .body(bytes);
        async move { answer(request.send().await.unwrap_or_else(|e| panic!("{e}"))).await }
    };
    let good = zip_of(
        &[
            ("connector.toml", connector.as_bytes()),
            ("script.sql", IMPORT_SQL.as_bytes()),
            ("data/sample.csv", CONTACTS_CSV),
        ],
        None,
    );
    let created = put(good.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["status"], "setup",
        "a new connector starts in setup: {}",
        created.body
    );
    assert!(created.body["sample_file_id"].is_string(), "{}", created.body);
    // Again, with an edited script: the draft is the edited one.
    let same = put(good).await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
    let edited = format!("{IMPORT_SQL} WHERE email IS NOT NULL");
    let again = put(zip_of(
        &[
            ("connector.toml", connector.as_bytes()),
            ("script.sql", edited.as_bytes()),
        ],
        None,
    ))
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let draft = || async { s.get("/connectors/pushed/sql", ADMIN).await.body["draft"]["text"].clone() };
    assert_eq!(draft().await, edited.as_str());
    assert!(
        again.body["sample_file_id"].is_string(),
        "the sample stays: {}",
        again.body
    );

    // Hostile zips change nothing and say why.
    let bomb = vec![0u8; 2 << 20];
    let hostile = [
        (
            "traversal",
            zip_of(&[("connector.toml", connector.as_bytes()), ("../evil.sql", b"x")], None),
        ),
        (
            "absolute",
            zip_of(
                &[("/tmp/evil.sql", b"x"), ("connector.toml", connector.as_bytes())],
                None,
            ),
        ),
        (
            "link",
            zip_of(&[("connector.toml", connector.as_bytes())], Some("script.sql")),
        ),
        (
            "bomb",
            zip_of(
                &[("connector.toml", connector.as_bytes()), ("data/zeros.csv", &bomb)],
                None,
            ),
        ),
        ("not a zip", b"PK but not really".to_vec()),
    ];
    for (what, bytes) in hostile {
        assert!(
            bytes.len() < 1 << 20,
            "{what} must pass the upload limit to reach the unpacking"
        );
        let a = put(bytes).await;
        assert_problem(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_package");
        assert!(
            !a.body["errors"].as_array().is_none_or(Vec::is_empty),
            "{what}: {}",
            a.body
        );
    }
    assert_eq!(draft().await, edited.as_str());
    assert!(!s._dir.path().join("evil.sql").exists());
    let viewer = s.key("default", Role::Operator, None);
    let refused = s
        .client
        .put(format!("{}/connectors/pushed/package", s.base))
        .bearer_auth(&viewer)
        .body(Vec::new())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_problem(&answer(refused).await, StatusCode::FORBIDDEN, "forbidden");
    s.stop().await;
}

/// The live importer as a package's `connector.toml`, with a second load
/// step into `lead` (filling `lead_field`) and a transform on `plugin`.
fn importer_package_toml(lead_field: &str, plugin: &str) -> String {
    let step = |order: u32, object: &str, fields: &[(&str, &str)]| {
        let mut text = format!(
            "[[loads]]\norder = {order}\nscope = \"people\"\nobject = \"{object}\"\n\
             [[loads.match]]\nfield = \"email\"\nvariable = \"email\"\nno_match = \"create_new\"\n\
             single_match = \"update_current\"\nmultiple_match = \"do_not_upload\"\n"
        );
        for (field, variable) in fields {
            text.push_str(&format!(
                "[[loads.fields]]\nfield = \"{field}\"\nvariables = [\"{variable}\"]\n"
            ));
        }
        text
    };
    format!(
        "api_name = \"contacts_import\"\nname = \"Contacts import\"\ntype = \"spreadsheet\"\n\
         [sql]\nfile = \"script.sql\"\n\
         [[variables]]\nname = \"email\"\nscope = \"people\"\ncolumn = \"email\"\ntype = \"email\"\nrequired = true\n\
         [[variables]]\nname = \"city\"\nscope = \"people\"\ncolumn = \"city\"\ntype = \"string\"\n\
         {}{}[[transforms]]\nscope = \"people\"\nplugin = \"{plugin}\"\n",
        step(1, "contact", &[("email", "email"), ("city", "city")]),
        step(2, "lead", &[(lead_field, "email")]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_package_leaves_objects_plugins_and_the_connector_as_they_were() {
    let s = start().await;
    operational_importer(&s).await;
    let identity = plugin_bytes("identity");
    let published = s.publish_plugin(ADMIN, "identity", "1.0.0", &identity).await;
    assert_eq!(published.status, StatusCode::CREATED, "{}", published.body);
    let put = |bytes: Vec<u8>| {
        let request = s
            .client
            .put(format!("{}/connectors/contacts_import/package", s.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/zip")
            .body(bytes);
        async move { answer(request.send().await.unwrap_or_else(|e| panic!("{e}"))).await }
    };
    let files = s.app.settings.config.data_dir.join("files");
    let state = || async {
        (
            s.get("/objects", ADMIN).await.body,
            s.get("/plugins", ADMIN).await.body,
            s.get("/connectors/contacts_import", ADMIN).await.body,
            s.get("/connectors/contacts_import/sql", ADMIN).await.body,
            files_under(&files),
        )
    };
    let before = state().await;

    // The good package: a new object `lead`, a new plugin version, a new
    // sample and a connector that loads into `lead` through the plugin.
    // Each refused one below breaks exactly one part of it.
    let lead = "[[objects]]\nname = \"lead\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\nunique = true\n";
    let contact = "[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\nunique = true\n\
                   [[objects.fields]]\nname = \"city\"\ntype = \"text\"\n";
    let objects = format!("{contact}{lead}");
    let sample = b"Email,City\nada@example.com,Paris\n".as_slice();
    let package = |toml: &str, script: &str, objects: &str, plugins: &[(&str, &[u8])]| {
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("connector.toml", toml.as_bytes()),
            ("script.sql", script.as_bytes()),
            ("objects.toml", objects.as_bytes()),
            ("data/fresh.csv", sample),
        ];
        entries.extend(plugins.iter().map(|(name, bytes)| (*name, *bytes)));
        zip_of(&entries, None)
    };
    let good_toml = importer_package_toml("email", "identity@2.0.0");
    let good_plugin: &[(&str, &[u8])] = &[("plugins/identity-2.0.0.wasm", &identity)];
    let row_filter = plugin_bytes("row-filter");
    let with_ghost =
        format!("{objects}[[objects.fields]]\nname = \"owner\"\ntype = \"relation\"\nobject = \"ghost\"\n");
    let refused: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "a load into a field the package's object lacks",
            package(
                &importer_package_toml("nope", "identity@2.0.0"),
                IMPORT_SQL,
                &objects,
                good_plugin,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_package",
        ),
        (
            "limits beyond what the server allows",
            package(
                &format!("{good_toml}[limits]\nmax_memory = \"64GiB\"\n"),
                IMPORT_SQL,
                &objects,
                good_plugin,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_connector",
        ),
        (
            "a script that does not parse",
            package(
                &good_toml,
                "CREATE VIEW output.people AS SELEC email",
                &objects,
                good_plugin,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "sql_error",
        ),
        (
            "an edit that does not fit the live script's output",
            package(
                // The check reads the scopes a plugin does not reshape.
                &good_toml
                    .replace("[[transforms]]\nscope = \"people\"\nplugin = \"identity@2.0.0\"\n", "")
                    .replace("column = \"email\"", "column = \"mail\""),
                IMPORT_SQL,
                &objects,
                good_plugin,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_connector",
        ),
        (
            "a file that is not a component",
            package(
                &good_toml,
                IMPORT_SQL,
                &objects,
                &[("plugins/identity-2.0.0.wasm", b"\0asm not really")],
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
        ),
        (
            "a published version with other content",
            package(
                &importer_package_toml("email", "identity@1.0.0"),
                IMPORT_SQL,
                &objects,
                &[("plugins/identity-1.0.0.wasm", &row_filter)],
            ),
            StatusCode::CONFLICT,
            "plugin_version_exists",
        ),
        (
            "a plugin neither the package nor the workspace has",
            package(
                &importer_package_toml("email", "absent@1.0.0"),
                IMPORT_SQL,
                &objects,
                good_plugin,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_package",
        ),
        (
            "an object related to an object that does not exist",
            package(&good_toml, IMPORT_SQL, &with_ghost, good_plugin),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_package",
        ),
        (
            "another connector's package",
            package(
                &good_toml.replace("api_name = \"contacts_import\"", "api_name = \"elsewhere\""),
                IMPORT_SQL,
                &objects,
                good_plugin,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_package",
        ),
    ];
    for (what, bytes, status, code) in refused {
        let a = put(bytes).await;
        assert_problem(&a, status, code);
        assert!(before == state().await, "{what} changed something: {}", a.body);
    }

    let good = put(package(&good_toml, IMPORT_SQL, &objects, good_plugin)).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    let after = state().await;
    let names = |list: &Value, key: &str| -> Vec<String> {
        list["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|o| o[key].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    assert!(names(&after.0, "name").contains(&"lead".to_string()), "{}", after.0);
    assert!(names(&after.1, "version").contains(&"2.0.0".to_string()), "{}", after.1);
    assert_ne!(after.2["sample_file_id"], before.2["sample_file_id"], "the new sample");
    assert_eq!(after.2["status"], "operational", "{}", after.2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_each_tick_once_and_only_the_latest_of_missed_ones() {
    // A quarter-hourly schedule on a clock the test moves.
    let now = chrono::Utc::now();
    let quarter = chrono::TimeDelta::minutes(15);
    let secs = now.timestamp();
    let first = chrono::DateTime::from_timestamp(secs - secs % 900 + 900, 0).unwrap_or(now);
    let clock = Arc::new(ManualClock::new(now));
    let s = start_clocked(|_| {}, clock.clone()).await;
    let bad = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "nightly", "type": "schedule", "schedule": {"cron": "every night", "timezone": "Mars/Base"}}),
        )
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_connector");
    let paths: Vec<&str> = bad.body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|p| p["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(paths, ["schedule.cron", "schedule.timezone"], "{}", bad.body);

    let doc = json!({
        "api_name": "quarterly", "type": "schedule", "status": "setup",
        "schedule": {"cron": "0 */15 * * * *", "timezone": "UTC"},
        "sql": {"text": "CREATE VIEW output.tick AS SELECT CAST(schedule_trigger_time AS VARCHAR) AS at, \
            to_char(e.window_start, '%Y-%m-%dT%H:%M:%S') AS window_start, to_char(e.window_end, '%Y-%m-%dT%H:%M:%S') AS window_end \
            FROM input.schedule CROSS JOIN meta.current_execution AS e"},
    });
    live_without_dry_run(&s, doc, "operational").await;
    let window = |id: String| {
        let s = &s;
        async move {
            let csv = s.output_csv(&id, "tick").await;
            let row = csv.lines().nth(1).unwrap_or_default().to_string();
            let cells: Vec<String> = row.split(',').map(str::to_string).collect();
            (
                cells.get(1).cloned().unwrap_or_default(),
                cells.get(2).cloned().unwrap_or_default(),
            )
        }
    };
    let stamp_of = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let runs = || async {
        let list = s.get("/connectors/quarterly/executions", ADMIN).await.body["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.into_iter().rev().collect::<Vec<Value>>()
    };
    let settle = || async {
        s.app.schedules.wake();
        weir_host::server::schedules::run_due(&s.app)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    settle().await;
    assert!(runs().await.is_empty(), "no tick yet");

    // The first tick: one execution, over input.schedule.
    clock.set(first + chrono::TimeDelta::seconds(5));
    settle().await;
    settle().await;
    let list = runs().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["trigger_type"], "schedule");
    let id = list[0]["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "success", "{done}");
    let csv = s.output_csv(&id, "tick").await;
    let stamp = first.format("%Y-%m-%dT%H:%M:%S").to_string();
    assert!(csv.contains(&stamp), "{csv} should name {stamp}");
    // The first tick's window opens at no earlier tick and ends at itself.
    assert_eq!(window(id.clone()).await, (String::new(), stamp_of(first)));

    // Two hours later (the server "down"): the latest tick runs, once.
    clock.set(first + quarter * 8 + chrono::TimeDelta::seconds(5));
    settle().await;
    settle().await;
    let list = runs().await;
    assert_eq!(list.len(), 2, "{list:?}");
    let latest = list[1]["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(s.wait_end(&latest).await["status"], "success");
    // Its window starts at the last tick that ran well: what changed since
    // is what it pulls.
    let second = first + quarter * 8;
    assert_eq!(window(latest.clone()).await, (stamp_of(first), stamp_of(second)));
    assert_eq!(
        list[1]["window_end"].as_str().map(|t| t.starts_with(&stamp_of(second))),
        Some(true),
        "{}",
        list[1]
    );
    let logs = s.get(&format!("/executions/{latest}/logs?limit=500"), ADMIN).await.body;
    assert!(
        logs["data"]
            .as_array()
            .is_some_and(|l| l.iter().any(|line| line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("7 earlier ticks")))),
        "{logs}"
    );
    // A third tick in a row takes up where the second left off.
    clock.set(second + quarter + chrono::TimeDelta::seconds(5));
    settle().await;
    settle().await;
    let list = runs().await;
    assert_eq!(list.len(), 3, "{list:?}");
    let third = list[2]["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(s.wait_end(&third).await["status"], "success");
    assert_eq!(window(third).await, (stamp_of(second), stamp_of(second + quarter)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_bytes_uploaded_before_under_another_name_uses_its_own_name() {
    let s = start().await;
    // The sample is CONTACTS_CSV as contacts.csv; the run sends the same
    // bytes as leads.csv.
    operational_importer(&s).await;
    let run = s
        .upload("/connectors/contacts_import/runs", ADMIN, "leads.csv", CONTACTS_CSV)
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    let tables: Vec<&str> = done["step_progress"][0]["tables"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["table"].as_str()).collect())
        .unwrap_or_default();
    assert!(tables.contains(&"leads"), "{done}");
    assert!(!tables.contains(&"contacts"), "{done}");
    // Its dev package names the input as the run did, so a local run reads
    // the same table.
    let sha = done["source_file_id"].as_str().unwrap_or_default();
    let package = s
        .get(
            &format!("/connectors/contacts_import/dev-package?source_file_id={sha}"),
            ADMIN,
        )
        .await;
    assert_eq!(package.status, StatusCode::OK, "{}", package.body);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package.bytes)).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().unwrap_or_default().to_string()))
        .filter(|n| n.starts_with("data/"))
        .collect();
    assert_eq!(names, ["data/leads.csv"]);
    s.stop().await;
}

/// A body sent as `count` chunks of `size` bytes, one every `every`.
fn trickle(count: usize, size: usize, every: Duration) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::unfold(0, move |sent| async move {
        if sent == count {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(vec![b'x'; size]), sent + 1))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_held_to_a_pace_not_to_the_request_timeout() {
    let s = start_with(|c| {
        c.request_timeout = "1s".into();
        c.upload_min_rate = "1KiB".into();
        c.upload_rate_window = "500ms".into();
    })
    .await;
    // 2.4 s of steady sending, far above the pace: stored whole, although
    // it takes longer than request_timeout.
    let steady = s
        .post_body(
            "/files?filename=steady.csv",
            "text/csv",
            trickle(24, 2048, Duration::from_millis(100)),
        )
        .await;
    assert_eq!(steady.status, StatusCode::CREATED, "{}", steady.body);
    assert_eq!(steady.body["size"], 24 * 2048);
    // A trickle below the pace is let go within about a window.
    let started = Instant::now();
    let slow = s
        .post_body(
            "/files?filename=slow.csv",
            "text/csv",
            trickle(100, 10, Duration::from_millis(100)),
        )
        .await;
    assert_problem(&slow, StatusCode::REQUEST_TIMEOUT, "upload_too_slow");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let leftovers = std::fs::read_dir(s.app.settings.config.data_dir.join("tmp")).map_or(1, Iterator::count);
    assert_eq!(leftovers, 0, "a refused upload leaves nothing behind");

    // What is not the file itself keeps request_timeout: a trigger's JSON
    // body, and the parts of a form before its `file` part.
    operational_importer(&s).await;
    let started = Instant::now();
    for (path, content_type) in [
        ("/connectors/contacts_import/runs", "application/json"),
        ("/files", "multipart/form-data; boundary=XYZ"),
    ] {
        let a = s
            .post_body(path, content_type, trickle(100, 1, Duration::from_millis(100)))
            .await;
        assert_problem(&a, StatusCode::REQUEST_TIMEOUT, "request_timeout");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());

    // A client that waits for 100 Continue and is refused gets its answer
    // at once, not a Continue for a body the server would throw away.
    let addr = s
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .to_string();
    let mut raw = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"POST /api/v1/files?filename=a.csv HTTP/1.1\r\nHost: weir\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut first = vec![0u8; 12];
    let asked = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut raw, &mut first),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&first, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&first));
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    s.stop().await;
}

impl Server {
    /// POSTs `body` to `path` as `content_type` with the admin key.
    async fn post_body(&self, path: &str, content_type: &str, body: reqwest::Body) -> Answer {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        answer(response).await
    }
}

/// Polls `path` until it answers `status`.
async fn wait_answer(s: &Server, path: &str, key: &str, status: StatusCode) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = s.get(path, key).await;
        if a.status == status {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {}: {}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Triggers a run of the importer on `csv` and returns its id.
async fn trigger(s: &Server, name: &str, csv: &[u8]) -> String {
    let run = s.upload("/connectors/contacts_import/runs", ADMIN, name, csv).await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    run.body["id"].as_str().unwrap_or_default().to_string()
}

async fn set_status(s: &Server, status: &str) {
    set_status_of(s, ADMIN, "contacts_import", status).await;
}

/// Sets connector `c`'s status as `key`; the connector as it is then.
async fn set_status_of(s: &Server, key: &str, c: &str, status: &str) -> Value {
    let a = s
        .send(
            Method::PATCH,
            &format!("/connectors/{c}"),
            Some(key),
            Some(json!({"status": status})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_and_files_are_deleted_on_request_unless_in_use() {
    let s = start().await;
    let connector = operational_importer(&s).await;
    let sample = connector["sample_file_id"].as_str().unwrap_or_default().to_string();
    let server = &s;
    let delete =
        move |path: String, key: &'static str| async move { server.send(Method::DELETE, &path, Some(key), None).await };

    // A connector's sample stays.
    let kept = delete(format!("/files/{sample}"), ADMIN).await;
    assert_problem(&kept, StatusCode::CONFLICT, "file_in_use");
    assert!(
        kept.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("contacts_import")),
        "{}",
        kept.body
    );

    // An ended run goes with its artifacts and logs; its input stays a file.
    let id = trigger(&s, "run.csv", b"Email,City\nx@example.com,Paris\n").await;
    let done = s.wait_end(&id).await;
    let input = done["source_file_id"].as_str().unwrap_or_default().to_string();
    let artifacts = || async {
        s.app
            .blobs
            .artifact_names(&id, "")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(
        artifacts().await.contains(&"report.xlsx".to_string()),
        "{:?}",
        artifacts().await
    );
    let viewer = s.key("default", Role::Viewer, None);
    let refused = s
        .send(Method::DELETE, &format!("/executions/{id}"), Some(&viewer), None)
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        delete(format!("/executions/{id}"), ADMIN).await.status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &s.get(&format!("/executions/{id}"), ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &s.get(&format!("/executions/{id}/logs"), ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(artifacts().await, Vec::<String>::new(), "the artifacts are gone");
    assert_problem(
        &delete(format!("/executions/{id}"), ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        s.get(&format!("/files/{input}/download"), ADMIN).await.status,
        StatusCode::OK
    );

    // The same content in another workspace stays there when this one
    // deletes its file.
    let acme = s.key("acme", Role::Admin, None);
    let theirs = s
        .upload("/files", &acme, "same.csv", b"Email,City\nx@example.com,Paris\n")
        .await;
    assert_eq!(theirs.body["id"], json!(input));
    assert_eq!(
        delete(format!("/files/{input}"), ADMIN).await.status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &s.get(&format!("/files/{input}/download"), ADMIN).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        s.get(&format!("/files/{input}/download"), &acme).await.bytes,
        b"Email,City\nx@example.com,Paris\n"
    );
    let a = s
        .send(Method::DELETE, &format!("/files/{input}"), Some(&acme), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(
        !s.app.blobs.contains(&input).await.unwrap_or(true),
        "no workspace holds it: its content is gone"
    );

    // A run waiting in the queue keeps itself and its input.
    set_status(&s, "inactive").await;
    let held = trigger(&s, "held.csv", b"Email,City\nheld@example.com,Rome\n").await;
    let held_input = s.get(&format!("/executions/{held}"), ADMIN).await.body["source_file_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_problem(
        &delete(format!("/executions/{held}"), ADMIN).await,
        StatusCode::CONFLICT,
        "execution_not_finished",
    );
    assert_problem(
        &delete(format!("/files/{held_input}"), ADMIN).await,
        StatusCode::CONFLICT,
        "file_in_use",
    );
    let canceled = s.post(&format!("/executions/{held}/cancel"), ADMIN, json!({})).await;
    assert_eq!(canceled.status, StatusCode::ACCEPTED, "{}", canceled.body);
    s.wait_end(&held).await;
    assert_eq!(
        delete(format!("/executions/{held}"), ADMIN).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(format!("/files/{held_input}"), ADMIN).await.status,
        StatusCode::NO_CONTENT
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_a_removal_takes_while_its_new_holder_is_recorded_is_placed_again() {
    use weir_host::server::state::FileRow;
    let s = start().await;
    let app = &s.app;
    let workspace = app.db.workspaces().unwrap_or_else(|e| panic!("{e}"))[0].id.clone();
    let row = |sha256: &str, name: &str| FileRow {
        sha256: sha256.to_string(),
        size: 4,
        name: name.into(),
        content_type: "text/csv".into(),
        created_at: chrono::Utc::now(),
    };
    let contains = |sha256: String| async move { app.blobs.contains(&sha256).await.unwrap_or(false) };
    let stage =
        |bytes: &'static [u8]| async move { app.blobs.stage(bytes.to_vec()).await.unwrap_or_else(|e| panic!("{e}")) };
    let place = |bytes: &'static [u8]| async move {
        let (tmp, sha256) = stage(bytes).await;
        let placing = app
            .files
            .place_content(vec![(tmp, sha256.clone())])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (placing, sha256)
    };
    let hold = |sha256: &str, name: &str| {
        app.db
            .insert_file(&workspace, &row(sha256, name))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    // What a removal in another process does once it has begun.
    let finish_removal = |sha256: String| async move {
        app.blobs.remove(&sha256).await.unwrap_or_else(|e| panic!("{e}"));
        app.db.end_content_removal(&sha256).unwrap_or_else(|e| panic!("{e}"));
    };
    let later = |sha256: String| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        finish_removal(sha256).await;
    };

    // A removal (here, or in another process) that runs whole between
    // placing content and recording its holder: the content comes back.
    let (placing, first) = place(b"a\n1\n").await;
    app.files.forget_content(&first).await;
    assert!(!contains(first.clone()).await, "nothing held it yet: it was removed");
    hold(&first, "first.csv");
    placing.settle().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        contains(first.clone()).await,
        "placed again once its holder is recorded"
    );
    assert_eq!(s.get(&format!("/files/{first}/download"), ADMIN).await.bytes, b"a\n1\n");

    // A removal under way when the holder is recorded: placing waits for
    // its end, then places the content again.
    let (placing, second) = place(b"b\n2\n").await;
    assert_eq!(app.db.begin_content_removal(&second).ok(), Some(true));
    hold(&second, "second.csv");
    let started = Instant::now();
    let (settled, ()) = tokio::join!(placing.settle(), later(second.clone()));
    settled.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the removal"
    );
    assert!(contains(second.clone()).await, "placed again after the removal ended");

    // A removal already under way when placing begins, over content that
    // is there: placing finds it placed, the removal takes it, and settling
    // places it again.
    let (tmp, third) = stage(b"c\n3\n").await;
    let unheld = [(tmp, third.clone())];
    app.blobs.place_all(&unheld).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(app.db.begin_content_removal(&third).ok(), Some(true));
    let (placing, _) = place(b"c\n3\n").await;
    finish_removal(third.clone()).await;
    hold(&third, "third.csv");
    placing.settle().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(contains(third.clone()).await, "placed again: the removal was under way");

    // Two removals of the same content at once: placing waits for both.
    let (placing, fourth) = place(b"d\n4\n").await;
    assert_eq!(app.db.begin_content_removal(&fourth).ok(), Some(true));
    assert_eq!(app.db.begin_content_removal(&fourth).ok(), Some(true));
    hold(&fourth, "fourth.csv");
    finish_removal(fourth.clone()).await;
    let started = Instant::now();
    let (settled, ()) = tokio::join!(placing.settle(), later(fourth.clone()));
    settled.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the second removal"
    );
    assert!(contains(fourth.clone()).await, "placed again after both removals ended");

    // A removal that begins once the holder is recorded finds it.
    app.files.forget_content(&second).await;
    assert_eq!(app.db.begin_content_removal(&second).ok(), Some(false));
    assert!(contains(second.clone()).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_past_its_workspaces_retention_goes_and_what_is_in_use_stays() {
    // The default workspace keeps what has ended for 2 s, `acme` for 30
    // days; the sweep runs every 100 ms.
    let s = start_with(|c| {
        c.retention = "2s".into();
        c.retention_sweep = "100ms".into();
        c.workspace_retention = std::collections::BTreeMap::from([("acme".into(), "30days".into())]);
    })
    .await;
    let connector = operational_importer(&s).await;
    let sample = connector["sample_file_id"].as_str().unwrap_or_default().to_string();
    let ended = trigger(&s, "run.csv", b"Email,City\nx@example.com,Paris\n").await;
    let input = s.wait_end(&ended).await["source_file_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let loose = s.upload("/files", ADMIN, "loose.csv", b"a\n1\n").await.body["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let acme = s.key("acme", Role::Admin, None);
    let theirs = s.upload("/files", &acme, "theirs.csv", b"b\n2\n").await.body["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    set_status(&s, "inactive").await;
    let held = trigger(&s, "held.csv", b"Email,City\nheld@example.com,Rome\n").await;

    // Everything above is past 2 s old: the ended run goes, with its input
    // and the file no one used.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_answer(&s, &format!("/executions/{ended}"), ADMIN, StatusCode::NOT_FOUND).await;
    let artifacts = s
        .app
        .blobs
        .artifact_names(&ended, "")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(artifacts.is_empty(), "{artifacts:?}");
    for file in [&input, &loose] {
        wait_answer(&s, &format!("/files/{file}/download"), ADMIN, StatusCode::NOT_FOUND).await;
        assert!(
            !s.app.blobs.contains(file).await.unwrap_or(true),
            "{file}: its content is gone"
        );
    }
    // A few more sweeps change nothing of what is in use or kept longer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.get(&format!("/files/{sample}/download"), ADMIN).await.bytes,
        CONTACTS_CSV
    );
    assert_eq!(
        s.get(&format!("/executions/{held}"), ADMIN).await.body["status"],
        "queued"
    );
    let held_input = s.get(&format!("/executions/{held}/input"), ADMIN).await;
    assert_eq!(held_input.bytes, b"Email,City\nheld@example.com,Rome\n");
    assert_eq!(
        s.get(&format!("/files/{theirs}/download"), &acme).await.bytes,
        b"b\n2\n"
    );

    // Once the held run has ended (it is old enough already), it goes too.
    set_status(&s, "operational").await;
    wait_answer(&s, &format!("/executions/{held}"), ADMIN, StatusCode::NOT_FOUND).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_without_load_steps_reads_what_is_loaded() {
    let s = start().await;
    let importer = operational_importer(&s).await;
    let id = trigger(&s, "contacts.csv", CONTACTS_CSV).await;
    assert_eq!(s.wait_end(&id).await["status"], "partial_success");
    // A report over the loaded contacts: no load step of its own.
    let doc = json!({
        "api_name": "contacts_report", "type": "spreadsheet", "sample_file_id": importer["sample_file_id"],
        "sql": {"text": "CREATE VIEW output.n AS SELECT count(*) AS contacts FROM records.contact"},
    });
    let c = s.post("/connectors", ADMIN, doc).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let p = s.post("/connectors/contacts_report/preview", ADMIN, json!({})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let n = &p.body["scopes"][0]["rows"][0][0];
    assert_eq!(
        n.as_str().map(str::to_string).unwrap_or_else(|| n.to_string()),
        "2",
        "{}",
        p.body
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_connector_is_previewed_and_published_on_sample_payloads() {
    let s = start().await;
    let doc = json!({
        "api_name": "crm_events", "type": "webhook",
        "sql": {"text": "CREATE VIEW output.events AS SELECT webhook_id, body FROM input.webhooks ORDER BY webhook_id;\n\
            CREATE VIEW output.tags AS SELECT webhook_id, body->>'event' AS event, json_get_str(body, 'user', 'email') AS email, \
            unnest(json_get_array(body, 'user', 'tags')) AS tag FROM input.webhooks ORDER BY webhook_id, tag"},
    });
    let c = s.post("/connectors", ADMIN, doc).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    // Without a sample, publishing says what it needs.
    let none = s.post("/connectors/crm_events/sql/publish", ADMIN, json!({})).await;
    assert_problem(&none, StatusCode::UNPROCESSABLE_ENTITY, "no_sample_file");
    // Sample payloads make the input.webhooks a batch of them would.
    let payloads =
        json!([{"event": "signup", "user": {"email": "a@x.io", "tags": ["vip", "beta"]}}, {"event": "churn"}]);
    let p = s
        .post("/connectors/crm_events/preview", ADMIN, json!({"payloads": payloads}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let scope = &p.body["scopes"][0];
    assert_eq!(scope["columns"], json!(["webhook_id", "body"]), "{}", p.body);
    assert_eq!(scope["rows"][0][0], "sample_1", "{}", p.body);
    let first: Value = serde_json::from_str(scope["rows"][0][1].as_str().unwrap_or_default()).unwrap_or(Value::Null);
    assert_eq!(first, payloads[0]);
    // The body's nested object and array map to columns and rows.
    let tags = &p.body["scopes"][1];
    assert_eq!(
        tags["columns"],
        json!(["webhook_id", "event", "email", "tag"]),
        "{}",
        p.body
    );
    assert_eq!(
        tags["rows"],
        json!([
            ["sample_1", "signup", "a@x.io", "\"beta\""],
            ["sample_1", "signup", "a@x.io", "\"vip\""]
        ]),
        "{}",
        p.body
    );
    let published = s
        .post(
            "/connectors/crm_events/sql/publish",
            ADMIN,
            json!({"payloads": payloads}),
        )
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    assert_eq!(published.body["live"]["version"], 1, "{}", published.body);
    // Payloads are for webhook connectors, and not beside a file.
    operational_importer(&s).await;
    let refused = s
        .post(
            "/connectors/contacts_import/preview",
            ADMIN,
            json!({"payloads": payloads}),
        )
        .await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let both = s
        .post(
            "/connectors/crm_events/preview",
            ADMIN,
            json!({"payloads": payloads, "source_file_id": "abc"}),
        )
        .await;
    assert_problem(&both, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_secret_that_is_not_set_is_warned_of_when_saved() {
    let s = start().await;
    let doc = json!({
        "api_name": "signed_events", "type": "webhook",
        "webhook": {"secret_env": "WEIR_WEBHOOK_SECRET_NEVER_SET_IN_TESTS"},
    });
    let c = s.post("/connectors", ADMIN, doc).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    assert_eq!(c.body["warnings"][0]["path"], "webhook.secret_env", "{}", c.body);
    assert!(
        c.body["warnings"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("WEIR_WEBHOOK_SECRET_NEVER_SET_IN_TESTS")),
        "{}",
        c.body
    );
    // A GET shows it too, and the document goes back as a patch as it is.
    let got = s.get("/connectors/signed_events", ADMIN).await;
    assert_eq!(got.body["warnings"], c.body["warnings"]);
    let back = s
        .send(
            Method::PATCH,
            "/connectors/signed_events",
            Some(ADMIN),
            Some(got.body.clone()),
        )
        .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    // Without a secret to read, there is nothing to warn of.
    let plain = s
        .post(
            "/connectors",
            ADMIN,
            json!({"api_name": "plain", "type": "spreadsheet"}),
        )
        .await;
    assert_eq!(plain.body["warnings"], json!([]), "{}", plain.body);
    s.stop().await;
}

/// A trigger's parameters override the connector's declared ones, of their
/// declared kind only; the run sees them in `meta.parameters`, and
/// `meta.current_execution` and the document name the key that started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_gives_parameters_of_their_declared_kind_and_the_run_knows_its_key() {
    let s = start().await;
    let f = s.upload("/files", ADMIN, "one.csv", b"a\n1\n").await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.body);
    let file = f.body["id"].clone();
    let doc = json!({
        "api_name": "params", "type": "spreadsheet", "sample_file_id": file,
        "parameters": {"country": "US", "limit": 10},
        "sql": {"text": "CREATE VIEW output.p AS SELECT p.name, p.value, e.trigger_type, e.triggered_by_key_name, \
            e.source_file_name, e.source_file_size \
            FROM meta.parameters AS p CROSS JOIN meta.current_execution AS e ORDER BY p.name"},
    });
    let c = s.post("/connectors", ADMIN, doc).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let p = s.post("/connectors/params/sql/publish", ADMIN, json!({})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    set_status_of(&s, ADMIN, "params", "operational").await;
    let operator = s.key("default", Role::Operator, None);

    let run = s
        .post(
            "/connectors/params/runs",
            &operator,
            json!({"source_file_id": file, "parameters": {"country": "NO"}}),
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    assert_eq!(run.body["parameters"], json!({"country": "NO"}), "{}", run.body);
    assert_eq!(run.body["triggered_by"]["key_name"], "test", "{}", run.body);
    let id = run.body["id"].as_str().unwrap_or_default().to_string();
    let done = s.wait_end(&id).await;
    assert_eq!(done["status"], "success", "{done}");
    let csv = s.output_csv(&id, "p").await;
    assert_eq!(
        csv,
        "name,value,trigger_type,triggered_by_key_name,source_file_name,source_file_size\n\
         country,NO,file_upload,test,one.csv,4\nlimit,10,file_upload,test,one.csv,4\n"
    );

    // An uploaded file's run takes them in `?parameters=`.
    let upload = s
        .upload(
            "/connectors/params/runs?parameters=%7B%22limit%22%3A3%7D",
            &operator,
            "two.csv",
            b"a\n2\n",
        )
        .await;
    assert_eq!(upload.status, StatusCode::ACCEPTED, "{}", upload.body);
    assert_eq!(upload.body["parameters"], json!({"limit": 3}), "{}", upload.body);
    let uploaded = upload.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(s.wait_end(&uploaded).await["status"], "success");
    let broken = s
        .upload(
            "/connectors/params/runs?parameters=limit%3D3",
            &operator,
            "two.csv",
            b"a\n2\n",
        )
        .await;
    assert_problem(&broken, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameters");

    // Undeclared and ill-typed ones are refused, each with its path, and
    // nothing is queued.
    let bad = s
        .post(
            "/connectors/params/runs",
            &operator,
            json!({"source_file_id": file, "parameters": {"limit": "ten", "contry": "SE"}}),
        )
        .await;
    assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameters");
    let paths: Vec<&str> = bad.body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(paths, ["parameters.contry", "parameters.limit"], "{}", bad.body);
    let list = s.get("/connectors/params/executions", ADMIN).await;
    let triggered = list.body["data"]
        .as_array()
        .map_or(0, |d| d.iter().filter(|e| e["trigger_type"] == "file_upload").count());
    assert_eq!(triggered, 2, "{}", list.body);
    s.stop().await;
}
