//! `weir serve --object-store s3://bucket/prefix` on an S3-compatible server
//! (moto): files, plugins and artifacts are kept in the bucket under the
//! prefix, `/healthz` says whether the database and the object store
//! answer, and while the store does not answer an upload is refused 503
//! with nothing kept (docs/deployment.md).

use crate::common;

use std::time::{Duration, Instant};

use common::services::S3;
use common::{ADMIN, Process, call, get_bytes, post_bytes_as, quick, serve, upload, wait_end, walk};
use serde_json::Value;

fn serve_on(dir: &std::path::Path, s3: &S3, url: &str) -> Process {
    let env = s3.env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("WEIR_OBJECT_STORE", url));
    serve(dir, &pairs)
}

async fn health(base: &str) -> (u16, Value) {
    call(base, reqwest::Method::GET, "/healthz", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_s3_keeps_everything_under_its_prefix_and_refuses_uploads_while_the_store_is_down() {
    let Some(s3) = S3::start() else { return };
    s3.bucket("weir");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = serve_on(dir.path(), &s3, "s3://weir/team-a");

    let (s, h) = health(&p.base).await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(
        h,
        serde_json::json!({"status": "ok", "database": "ok", "object_store": "ok"})
    );

    // A run's input and artifacts are in the bucket, under the prefix.
    quick(&p.base).await;
    let (s, b) = upload(&p.base, "/connectors/quick/runs", b"a\n1\n2\n").await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap_or_default().to_string();
    let done = wait_end(&p.base, &id).await;
    assert_eq!(done["status"], "success", "{done}");
    let (s, zip) = get_bytes(&p.base, &format!("/executions/{id}/output.zip")).await;
    assert_eq!(s, 200);
    assert_eq!(common::scope_csv(zip, "a"), "a\n1\n2\n");
    let keys = s3.keys("weir", "");
    let input = done["source_file_id"].as_str().unwrap_or_default();
    for wanted in [
        format!("team-a/files/{}/{input}", &input[..2]),
        format!("team-a/executions/{id}/output/a.csv"),
        format!("team-a/executions/{id}/output.zip"),
    ] {
        assert!(keys.contains(&wanted), "{wanted} in {keys:?}");
    }
    assert!(keys.iter().all(|k| k.starts_with("team-a/")), "{keys:?}");
    for local in ["files", "executions"] {
        assert!(
            walk(&dir.path().join(local)).is_empty(),
            "{local}/ in the data directory"
        );
    }
    let (_, files) = call(&p.base, reqwest::Method::GET, "/files", None).await;
    let kept = files["data"].as_array().map_or(0, Vec::len);

    // The store goes away: health says so, an upload is refused 503 and
    // leaves nothing behind.
    drop(s3);
    let (s, h) = health(&p.base).await;
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["database"], "ok", "{h}");
    assert_eq!(h["object_store"], "unavailable", "{h}");
    let started = Instant::now();
    let (s, b) = upload(&p.base, "/files", b"new,content\n1,2\n").await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["code"], "blob_store_unavailable", "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered in {:?}",
        started.elapsed()
    );
    let (_, files) = call(&p.base, reqwest::Method::GET, "/files", None).await;
    assert_eq!(files["data"].as_array().map_or(0, Vec::len), kept, "{files}");
    assert!(
        walk(&dir.path().join("tmp")).is_empty(),
        "scratch space left: {:?}",
        walk(&dir.path().join("tmp"))
    );
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_goes_to_s3_in_parts_and_comes_back_whole() {
    let Some(s3) = S3::start() else { return };
    s3.bucket("weir");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = serve_on(dir.path(), &s3, "s3://weir");
    // 20 MiB: three parts of 8 MiB at most.
    let body: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let (s, file) = post_bytes_as(
        &p.base,
        ADMIN,
        "/files?filename=big.bin",
        "application/octet-stream",
        body.clone(),
    )
    .await;
    assert_eq!(s, 201, "{file}");
    let id = file["id"].as_str().unwrap_or_default().to_string();
    assert!(s3.keys("weir", "files/").contains(&format!("files/{}/{id}", &id[..2])));
    let (s, back) = get_bytes(&p.base, &format!("/files/{id}/download")).await;
    assert_eq!(s, 200);
    assert!(back == body, "the file came back changed ({} bytes)", back.len());
    // The same content again is the same file, and the store is not written
    // over.
    let (s, again) = post_bytes_as(
        &p.base,
        ADMIN,
        "/files?filename=again.bin",
        "application/octet-stream",
        body,
    )
    .await;
    assert!(s == 200 || s == 201, "{again}");
    assert_eq!(again["id"], file["id"]);
    p.stop();
}

#[test]
fn an_object_store_url_that_names_nothing_usable_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (url, said) in [
        ("gs://bucket", "give s3://bucket/prefix or file:///dir"),
        ("s3://", "name the bucket"),
        ("file://relative/dir", "absolute directory"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--object-store", url])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.status.success(), "{url} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{url}: {stderr}");
    }
}
