//! The web console (docs/console.md): sessions, CSRF, roles and tenancy
//! over HTTP, and the whole console in headless Chromium
//! (`console/e2e.mjs`, with Playwright and axe-core).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::services::missing;
use common::{ADMIN, Process, call, call_as, importer, key_in, serve, slow, upload};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

/// The server's own address (without `/api/v1`).
fn origin(server: &Process) -> String {
    server.base.trim_end_matches("/api/v1").to_string()
}

/// A client that does not follow redirects, as a browser's fetch of a
/// form's answer would be seen.
fn browser() -> reqwest::Client {
    browser_with(HeaderMap::new())
}

fn browser_with(headers: HeaderMap) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Signs in with `key` (sending `headers`); a client that sends the
/// session's cookie, and the `Set-Cookie` answered.
async fn sign_in(origin: &str, key: &str, headers: HeaderMap) -> (reqwest::Client, String) {
    let response = browser()
        .post(format!("{origin}/sign-in"))
        .headers(headers)
        .form(&[("key", key), ("next", "/runs")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 303, "signing in");
    assert_eq!(response.headers()["location"], "/runs");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    let session = set_cookie.split(';').next().unwrap_or_default();
    let mut cookie = HeaderMap::new();
    cookie.insert(
        "cookie",
        HeaderValue::from_str(session).unwrap_or_else(|e| panic!("{e}")),
    );
    (browser_with(cookie), set_cookie)
}

/// A page's status and body.
async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The CSRF token of a signed-in page.
async fn csrf(client: &reqwest::Client, origin: &str) -> String {
    let (status, page) = get(client, &format!("{origin}/runs")).await;
    assert_eq!(status, 200, "{page}");
    let start = page.find("name=\"csrf-token\" content=\"").map(|i| i + 27);
    start
        .and_then(|i| page.get(i..i + 64))
        .unwrap_or_else(|| panic!("no csrf token in {page}"))
        .to_string()
}

/// Posts a form; the status and the `Location`.
async fn post(client: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, String) {
    let response = client
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), location)
}

/// A server with the `people` importer, and the admin signed in to its
/// console: the data directory, the server, its origin, the signed-in
/// client and its CSRF token.
async fn importer_console() -> (tempfile::TempDir, Process, String, reqwest::Client, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    importer(&server.base).await;
    let (client, _) = sign_in(&origin, ADMIN, HeaderMap::new()).await;
    let token = csrf(&client, &origin).await;
    (dir, server, origin, client, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_signs_in_to_a_strict_cookie_and_signing_out_or_revoking_ends_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    let response = browser()
        .get(format!("{origin}/runs?status=failed"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/sign-in?next=%2Fruns%3Fstatus%3Dfailed"
    );

    let refused = browser()
        .post(format!("{origin}/sign-in"))
        .form(&[("key", "weir_0000")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .text()
            .await
            .unwrap_or_default()
            .contains("This key is not valid")
    );

    let (client, cookie) = sign_in(&origin, ADMIN, HeaderMap::new()).await;
    for part in ["weir_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let mut tls = HeaderMap::new();
    tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let (_, behind_tls) = sign_in(&origin, ADMIN, tls).await;
    assert!(behind_tls.contains("; Secure"), "{behind_tls}");

    let (status, page) = get(&client, &format!("{origin}/runs")).await;
    assert_eq!(status, 200);
    assert!(page.contains("bootstrap admin (admin)"), "{page}");

    // The session is the key's: revoking the key ends it.
    let operator = key_in(dir.path(), "default", "operator");
    let (other, _) = sign_in(&origin, &operator, HeaderMap::new()).await;
    assert_eq!(get(&other, &format!("{origin}/runs")).await.0, 200);
    let (_, keys) = call(&server.base, Method::GET, "/keys", None).await;
    let operator_id = keys["data"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["role"] == "operator"))
        .and_then(|k| k["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let (s, _) = call(&server.base, Method::DELETE, &format!("/keys/{operator_id}"), None).await;
    assert_eq!(s, 204);
    assert_eq!(
        get(&other, &format!("{origin}/runs")).await.0,
        303,
        "a revoked key's session ends"
    );

    // Signing out needs the session's token, then ends the session.
    let token = csrf(&client, &origin).await;
    assert_eq!(
        post(&client, &format!("{origin}/sign-out"), &[("csrf", "0")]).await.0,
        403
    );
    assert_eq!(get(&client, &format!("{origin}/runs")).await.0, 200, "still signed in");
    let (status, location) = post(&client, &format!("{origin}/sign-out"), &[("csrf", &token)]).await;
    assert_eq!((status, location.as_str()), (303, "/sign-in"));
    assert_eq!(get(&client, &format!("{origin}/runs")).await.0, 303, "signed out");

    // A webhook key posts webhooks only.
    let (_, created) = call(
        &server.base,
        Method::POST,
        "/keys",
        Some(json!({"name": "hook", "role": "webhook", "connectors": ["x"]})),
    )
    .await;
    let hook = created["secret"].as_str().unwrap_or_default();
    let refused = browser()
        .post(format!("{origin}/sign-in"))
        .form(&[("key", hook)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status(), 401);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_are_refused_without_the_sessions_token_or_from_another_site_and_change_nothing() {
    let (_dir, server, origin, client, token) = importer_console().await;

    let status_url = format!("{origin}/connectors/people/status");
    assert_eq!(
        post(&client, &status_url, &[("csrf", "nope"), ("status", "inactive")])
            .await
            .0,
        403
    );
    let from_elsewhere = client
        .post(&status_url)
        .header("origin", "http://evil.example")
        .form(&[("csrf", token.as_str()), ("status", "inactive")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_elsewhere.status(), 403);
    let (_, connector) = call(&server.base, Method::GET, "/connectors/people", None).await;
    assert_eq!(connector["status"], "operational", "nothing changed");

    // An upload without the token stores nothing and starts nothing.
    let form = |csrf: &str| {
        reqwest::multipart::Form::new().text("csrf", csrf.to_string()).part(
            "file",
            reqwest::multipart::Part::bytes(b"email,city\nz@x.io,Rome\n".to_vec()).file_name("z.csv"),
        )
    };
    let run_url = format!("{origin}/connectors/people/run");
    let refused = client
        .post(&run_url)
        .multipart(form("nope"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status(), 403);
    let (_, runs) = call(&server.base, Method::GET, "/connectors/people/executions", None).await;
    let before = runs["data"].as_array().map_or(0, Vec::len);
    let (_, files) = call(&server.base, Method::GET, "/files", None).await;
    assert!(!files.to_string().contains("z.csv"), "{files}");

    // With its token, the same form runs, and the status form applies.
    let accepted = client
        .post(&run_url)
        .multipart(form(&token))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted.status(), 303);
    let run = accepted.headers()["location"].to_str().unwrap_or_default().to_string();
    assert!(run.starts_with("/runs/"), "{run}");
    let (_, runs) = call(&server.base, Method::GET, "/connectors/people/executions", None).await;
    assert_eq!(runs["data"].as_array().map_or(0, Vec::len), before + 1);
    let (status, location) = post(&client, &status_url, &[("csrf", &token), ("status", "inactive")]).await;
    assert_eq!((status, location.as_str()), (303, "/connectors/people"));
    let (_, connector) = call(&server.base, Method::GET, "/connectors/people", None).await;
    assert_eq!(connector["status"], "inactive");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_actions_and_is_refused_when_it_posts_them() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    slow(&server.base, dir.path()).await;
    let (s, run) = upload(&server.base, "/connectors/slow/runs", b"a\n1\n").await;
    assert_eq!(s, 202, "{run}");
    let id = run["id"].as_str().unwrap_or_default();
    let viewer = key_in(dir.path(), "default", "viewer");
    let (client, _) = sign_in(&origin, &viewer, HeaderMap::new()).await;
    let token = csrf(&client, &origin).await;

    let (status, page) = get(&client, &format!("{origin}/runs/{id}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains("/cancel\""), "no cancel form: {page}");
    assert!(!page.contains("/admin/keys"), "no admin link: {page}");
    let (_, page) = get(&client, &format!("{origin}/connectors/slow/sql")).await;
    assert!(
        !page.contains("id=\"publish\"") && !page.contains("value=\"save\""),
        "{page}"
    );
    let (_, page) = get(&client, &format!("{origin}/connectors/slow")).await;
    assert!(!page.contains("id=\"upload\"") && !page.contains("/status\""), "{page}");

    for (path, form) in [
        (format!("/runs/{id}/cancel"), vec![]),
        ("/connectors/slow/publish".to_string(), vec![]),
        ("/connectors/slow/status".to_string(), vec![("status", "inactive")]),
        ("/admin/keys".to_string(), vec![("name", "x"), ("role", "admin")]),
        (
            "/connectors/slow/sql".to_string(),
            vec![("text", "SELECT 1"), ("action", "save")],
        ),
    ] {
        let mut fields = vec![("csrf", token.as_str())];
        fields.extend(form);
        assert_eq!(
            post(&client, &format!("{origin}{path}"), &fields).await.0,
            403,
            "{path}"
        );
    }
    assert_eq!(get(&client, &format!("{origin}/admin/keys")).await.0, 403);
    let (_, doc) = call(&server.base, Method::GET, &format!("/executions/{id}"), None).await;
    assert!(doc["status"] == "queued" || doc["status"] == "running", "{doc}");
    let (_, sql) = call(&server.base, Method::GET, "/connectors/slow/sql", None).await;
    assert_ne!(sql["draft"]["text"], "SELECT 1");
    let (_, keys) = call(&server.base, Method::GET, "/keys", None).await;
    assert!(!keys.to_string().contains("\"name\":\"x\""), "{keys}");
    call(&server.base, Method::POST, &format!("/executions/{id}/cancel"), None).await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspaces_run_is_not_found_and_a_limited_key_sees_only_its_connectors_runs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    importer(&server.base).await;
    let other = other_workspace_execution(&server, dir.path()).await;
    let (client, _) = sign_in(&origin, ADMIN, HeaderMap::new()).await;
    for path in [
        format!("/runs/{other}"),
        format!("/runs/{other}/panel"),
        format!("/runs/{other}/events"),
        format!("/runs/{other}/files/input"),
        format!("/runs/{other}/files/report.xlsx"),
    ] {
        let (status, page) = get(&client, &format!("{origin}{path}")).await;
        assert_eq!(status, 404, "{path}: {page}");
    }
    let (_, list) = get(&client, &format!("{origin}/runs?q={other}")).await;
    assert!(list.contains("No runs match"), "{list}");

    // A key limited to `quick` sees its runs, not `people`'s.
    common::quick(&server.base).await;
    let quick = common::trigger(&server.base, "quick").await;
    let people = common::trigger(&server.base, "people").await;
    let (_, limited) = call(
        &server.base,
        Method::POST,
        "/keys",
        Some(json!({"name": "q", "role": "viewer", "connectors": ["quick"]})),
    )
    .await;
    let (limited_client, _) = sign_in(
        &origin,
        limited["secret"].as_str().unwrap_or_default(),
        HeaderMap::new(),
    )
    .await;
    let (_, list) = get(&limited_client, &format!("{origin}/runs")).await;
    assert!(list.contains(&quick) && !list.contains(&people), "{list}");
    assert_eq!(get(&limited_client, &format!("{origin}/runs/{people}")).await.0, 403);
    server.stop();
}

/// An execution of a workspace `other` (of its connector's publish).
async fn other_workspace_execution(server: &Process, data_dir: &Path) -> String {
    let key = key_in(data_dir, "other", "admin");
    let (_, file) =
        common::post_bytes_as(&server.base, &key, "/files?filename=a.csv", "text/csv", &b"a\n1\n"[..]).await;
    let (s, b) = call_as(
        &server.base,
        &key,
        Method::POST,
        "/connectors",
        Some(
            json!({"api_name": "theirs", "type": "spreadsheet", "sample_file_id": file["id"],
                    "sql": {"text": "CREATE VIEW output.a AS SELECT * FROM input.data"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call_as(&server.base, &key, Method::POST, "/connectors/theirs/sql/publish", None).await;
    assert_eq!(s, 200, "{b}");
    let (_, runs) = call_as(&server.base, &key, Method::GET, "/connectors/theirs/executions", None).await;
    runs["data"][0]["id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_list_filters_by_status_mode_and_connector_and_finds_an_idempotency_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    common::quick(&server.base).await;
    let first = common::trigger(&server.base, "quick").await;
    common::wait_end(&server.base, &first).await;
    let keyed = reqwest::Client::new()
        .post(format!(
            "{}/connectors/quick/runs?filename=k.csv&dry_run=true",
            server.base
        ))
        .bearer_auth(ADMIN)
        .header("idempotency-key", "nightly-2026-12-07")
        .body("a\n7\n")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keyed.status(), 202);
    let keyed: serde_json::Value = keyed.json().await.unwrap_or_default();
    let keyed = keyed["id"].as_str().unwrap_or_default().to_string();
    common::wait_end(&server.base, &keyed).await;
    let (client, _) = sign_in(&origin, ADMIN, HeaderMap::new()).await;

    let rows = |page: &str, id: &str| page.contains(&format!("href=\"/runs/{id}\""));
    let (_, page) = get(&client, &format!("{origin}/runs?q=nightly-2026-12-07")).await;
    assert!(rows(&page, &keyed) && !rows(&page, &first), "{page}");
    let (_, page) = get(&client, &format!("{origin}/runs?q={first}")).await;
    assert!(rows(&page, &first) && !rows(&page, &keyed), "{page}");
    let (_, page) = get(&client, &format!("{origin}/runs?dry_run=dry")).await;
    assert!(rows(&page, &keyed) && !rows(&page, &first), "{page}");
    let (_, page) = get(&client, &format!("{origin}/runs?dry_run=live&trigger=file_upload")).await;
    assert!(!rows(&page, &keyed) && rows(&page, &first), "{page}");
    let (_, page) = get(&client, &format!("{origin}/runs?status=failed")).await;
    assert!(page.contains("No runs match"), "{page}");
    let (_, page) = get(&client, &format!("{origin}/runs?from=2000-01-01&to=2000-01-02")).await;
    assert!(page.contains("No runs match"), "{page}");
    let (status, page) = get(&client, &format!("{origin}/runs?from=yesterday")).await;
    assert_eq!(status, 400);
    assert!(page.contains("must be a date"), "{page}");
    // The live list's fragment is the same rows.
    let (status, fragment) = get(&client, &format!("{origin}/runs/rows?q={keyed}")).await;
    assert_eq!(status, 200);
    assert!(rows(&fragment, &keyed) && !fragment.contains("<html"), "{fragment}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_with_an_error_is_kept_and_shown_at_its_line_and_column() {
    let (_dir, server, origin, client, token) = importer_console().await;
    let bad = "CREATE VIEW output.people AS\r\nSELECT email, city FROM input.nowhere";
    let response = client
        .post(format!("{origin}/connectors/people/sql"))
        .form(&[("csrf", token.as_str()), ("text", bad), ("action", "save")])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 422);
    let page = response.text().await.unwrap_or_default();
    assert!(page.contains("<strong>Line 2, column "), "{page}");
    assert!(page.contains("data-line=\"2\""), "{page}");
    assert!(page.contains("<li class=\"error\">2</li>"), "{page}");
    let (_, sql) = call(&server.base, Method::GET, "/connectors/people/sql", None).await;
    assert_eq!(
        sql["draft"]["text"], "CREATE VIEW output.people AS\nSELECT email, city FROM input.nowhere",
        "the refused draft is kept, with its line ends as typed"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_runs_again_on_its_file_a_dry_upload_writes_nothing_and_a_key_is_revoked() {
    let (_dir, server, origin, client, token) = importer_console().await;
    let upload = |dry: bool| {
        let mut form = reqwest::multipart::Form::new().text("csrf", token.clone());
        if dry {
            form = form.text("dry_run", "true");
        }
        form.part(
            "file",
            reqwest::multipart::Part::bytes(
                b"email,city
d@x.io,Lima
"
                .to_vec(),
            )
            .file_name("d.csv"),
        )
    };
    let run_url = format!("{origin}/connectors/people/run");
    let dry = client
        .post(&run_url)
        .multipart(upload(true))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dry.status(), 303);
    let dry_id = dry.headers()["location"]
        .to_str()
        .unwrap_or_default()
        .trim_start_matches("/runs/")
        .to_string();
    let doc = common::wait_end(&server.base, &dry_id).await;
    assert_eq!(doc["is_dry_run"], true, "{doc}");
    let (_, records) = call(&server.base, Method::GET, "/objects/contact/records?email=d@x.io", None).await;
    assert_eq!(
        records["data"].as_array().map(Vec::len),
        Some(0),
        "a dry run writes nothing: {records}"
    );

    // Again, on the same file, as a dry run too.
    let (status, location) = post(&client, &format!("{origin}/runs/{dry_id}/again"), &[("csrf", &token)]).await;
    assert_eq!(status, 303);
    let again = location.trim_start_matches("/runs/").to_string();
    assert_ne!(again, dry_id);
    let doc = common::wait_end(&server.base, &again).await;
    let (_, first) = call(&server.base, Method::GET, &format!("/executions/{dry_id}"), None).await;
    assert_eq!(doc["source_file_id"], first["source_file_id"]);
    assert_eq!(doc["is_dry_run"], true);
    assert_eq!(doc["status"], "success", "{doc}");

    // A key made on the page is revoked from it.
    let (_, made) = call(
        &server.base,
        Method::POST,
        "/keys",
        Some(json!({"name": "temp", "role": "viewer"})),
    )
    .await;
    let id = made["id"].as_str().unwrap_or_default();
    let (status, location) = post(
        &client,
        &format!("{origin}/admin/keys/{id}/revoke"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!((status, location.as_str()), (303, "/admin/keys"));
    let (_, keys) = call(&server.base, Method::GET, "/keys", None).await;
    let temp = keys["data"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["id"] == id))
        .cloned();
    assert!(temp.is_some_and(|k| !k["revoked_at"].is_null()), "{keys}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connectors_page_shows_its_webhook_address_and_its_next_schedule_ticks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    let sql = "CREATE VIEW output.events AS SELECT webhook_id FROM input.webhooks";
    let (s, b) = call(
        &server.base,
        Method::POST,
        "/connectors",
        Some(json!({"api_name": "hooks", "type": "webhook", "sql": {"text": sql}})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        &server.base,
        Method::POST,
        "/connectors",
        Some(
            json!({"api_name": "hourly", "type": "schedule", "schedule": {"cron": "0 30 * * * *"},
                    "sql": {"text": "CREATE VIEW output.t AS SELECT * FROM input.schedule"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (client, _) = sign_in(&origin, ADMIN, HeaderMap::new()).await;
    let (_, page) = get(&client, &format!("{origin}/connectors/hooks")).await;
    assert!(
        page.contains(&format!("{origin}/api/v1/connectors/hooks/webhook")),
        "{page}"
    );
    assert!(page.contains("Recent batches"), "{page}");
    let (_, page) = get(&client, &format!("{origin}/connectors/hourly")).await;
    let ticks: Vec<&str> = page
        .split("<time datetime=\"")
        .skip(1)
        .filter_map(|t| t.split('"').next())
        .filter(|t| t.contains(":30:00"))
        .collect();
    assert_eq!(ticks.len(), 5, "the next five ticks, at half past: {page}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_filtered_by_several_fields_and_paged_with_their_filters() {
    let (_dir, server, origin, client, _) = importer_console().await;
    let mut rows = String::from("email,city\n");
    for i in 0..120 {
        rows.push_str(&format!("p{i}@x.io,{}\n", if i % 2 == 0 { "Oslo" } else { "Rome" }));
    }
    let (s, run) = common::post_bytes_as(
        &server.base,
        ADMIN,
        "/connectors/people/runs?filename=p.csv",
        "text/csv",
        rows,
    )
    .await;
    assert_eq!(s, 202, "{run}");
    common::wait_end(&server.base, run["id"].as_str().unwrap_or_default()).await;
    let (status, page) = get(
        &client,
        &format!("{origin}/records/contact?f.city=Oslo&f.email=p4%40x.io"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("p4@x.io") && !page.contains("p2@x.io") && !page.contains("p5@x.io"),
        "{page}"
    );
    assert!(
        page.contains(r#"name="f.city" value="Oslo""#),
        "the form keeps its filters: {page}"
    );
    // 60 in Oslo, 50 a page: a second page, reached with the filter kept.
    let (_, page) = get(&client, &format!("{origin}/records/contact?f.city=Oslo")).await;
    assert!(!page.contains("Rome"), "{page}");
    let next = page
        .split("href=\"")
        .find(|h| h.contains("cursor="))
        .and_then(|h| h.split('"').next())
        .unwrap_or_else(|| panic!("no next page: {page}"))
        .replace("&amp;", "&");
    assert!(next.contains("f.city=Oslo"), "{next}");
    let (_, second) = get(&client, &format!("{origin}{next}")).await;
    assert!(second.contains("@x.io") && !second.contains("Rome"), "{second}");
    let (status, page) = get(&client, &format!("{origin}/records/contact?f.nope=1")).await;
    assert_eq!(status, 400, "{page}");
    server.stop();
}

/// Chromium from Debian's package.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The npm packages of the browser test.
fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_runs_cancels_edits_and_refuses_as_the_api_does() {
    if !Path::new(CHROMIUM).exists() {
        missing("Chromium", "apt-get install chromium");
        return;
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing("Node.js", "apt-get install nodejs npm");
        return;
    }
    if !e2e_dir().join("node_modules/playwright-core").exists() {
        missing("playwright-core and axe-core", "npm ci --prefix host/tests/console");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = serve(dir.path(), &[]);
    let origin = origin(&server);
    importer(&server.base).await;
    slow(&server.base, dir.path()).await;
    let viewer = key_in(dir.path(), "default", "viewer");
    let other = other_workspace_execution(&server, dir.path()).await;
    let people = dir.path().join("people.csv");
    std::fs::write(
        &people,
        "email,city\nann@example.com,Oslo\nbob@example.com,Bergen\ncid@example.com,Oslo\nnot-an-email,Oslo\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let slow_csv = dir.path().join("slow.csv");
    std::fs::write(&slow_csv, "a\n1\n").unwrap_or_else(|e| panic!("{e}"));
    // Kept for CI's artifacts; not part of the repository.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let mut node = Command::new("node");
    node.arg(e2e_dir().join("e2e.mjs"))
        .current_dir(e2e_dir())
        .env("BASE", &origin)
        .env("ADMIN_KEY", ADMIN)
        .env("VIEWER_KEY", &viewer)
        .env("OTHER_EXECUTION", &other)
        .env("PEOPLE_CSV", &people)
        .env("SLOW_CSV", &slow_csv)
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", CHROMIUM);
    // Every wait of the script is bounded (a minute at most).
    let out = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("node: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the browser test failed:\n{text}");
    assert!(shots.join("run.png").exists() && shots.join("sql-error-phone.png").exists());
    server.stop();
}
