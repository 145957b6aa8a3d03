//! `weir serve` on PostgreSQL and an S3 bucket (docs/deployment.md):
//! several processes keep their state in one database and their files and
//! artifacts in one bucket, share the queue, answer for each other's
//! executions, and resolve the runs of a process that is lost.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::kills::{Rng, TARGETS, Target, reach};
use common::services::{Postgres, S3};
use common::{
    ADMIN, Process, call, call_as, get_bytes, importer, log_lines, post_bytes_as, quick_named, serve, slow_on,
    status_of, trigger, upload, wait, wait_end,
};
use weir_host::server::state::PgState;

const PASSWORD: &str = "weir-postgres-test";

/// PostgreSQL with a new database, and an S3-compatible server with a
/// bucket; `None` (the test is skipped) when either is not installed.
fn services() -> Option<(Postgres, String, S3)> {
    let pg = Postgres::start(PASSWORD)?;
    let url = pg.database("weir", PASSWORD);
    let s3 = S3::start()?;
    s3.bucket("weir");
    Some((pg, url, s3))
}

/// A process on `dir` with its state in `database` and its files under
/// `prefix` of the bucket, with the settings in `env`.
fn serve_on(dir: &Path, database: &str, s3: &S3, prefix: &str, env: &[(&str, &str)]) -> Process {
    let aws = s3.env();
    let store = format!("s3://weir/{prefix}");
    let mut all: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend([("WEIR_DATABASE", database), ("WEIR_OBJECT_STORE", store.as_str())]);
    all.extend_from_slice(env);
    serve(dir, &all)
}

/// Process `name` on `dir` with its state in `database` and its files in
/// the bucket.
fn process(dir: &Path, database: &str, s3: &S3, name: &str) -> Process {
    let env = [
        ("WEIR_WORKER_ID", name),
        ("WEIR_WORKERS", "2"),
        ("WEIR_LEASE", "2s"),
        ("WEIR_HEARTBEAT", "200ms"),
    ];
    serve_on(dir, database, s3, "shared", &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_on_postgres_and_s3_share_the_queue_and_answer_for_each_other() {
    let Some((pg, url, s3)) = services() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let processes: Vec<Process> = ["p0", "p1"].iter().map(|n| process(dir.path(), &url, &s3, n)).collect();
    for p in &processes {
        let (s, h) = call(&p.base, reqwest::Method::GET, "/healthz", None).await;
        assert_eq!(s, 200, "{h}");
        assert_eq!(h["database"], "ok");
    }
    // The state is in the database, not in the data directory.
    assert!(!dir.path().join("state.db").exists());

    quick_named(&processes[0].base, "quick", 4).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(trigger(&processes[i % 2].base, "quick").await);
    }
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let done = wait_end(&processes[0].base, id).await;
        assert_eq!(done["status"], "success", "{done}");
        let claims: Vec<String> = log_lines(&processes[1].base, id)
            .await
            .into_iter()
            .filter(|l| l.starts_with("claimed by worker "))
            .collect();
        assert_eq!(claims.len(), 1, "{id} claimed once: {claims:?}");
        *by_worker
            .entry(claims[0].trim_start_matches("claimed by worker ").to_string())
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 40, "{by_worker:?}");

    // Artifacts from the process that did not run the execution.
    let first = &ids[0];
    let ran = log_lines(&processes[0].base, first)
        .await
        .into_iter()
        .find_map(|l| l.strip_prefix("claimed by worker ").map(str::to_string))
        .unwrap_or_default();
    let other = if ran == "p0" { &processes[1] } else { &processes[0] };
    let (s, zip) = get_bytes(&other.base, &format!("/executions/{first}/output.zip")).await;
    assert_eq!(s, 200);
    assert_eq!(common::scope_csv(zip, "a"), "a\n1\n2\n");

    // What the API says is what a team reads in the database.
    let counted = pg.sql_in("weir", "SELECT count(*) FROM executions WHERE status = 'success'");
    assert!(counted.lines().any(|l| l.trim() == "41"), "{counted}");

    // `weir keys` works against the same database.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "keys",
            "create",
            "--workspace",
            "default",
            "--role",
            "viewer",
            "--database",
            &url,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let (s, listed) = call_as(&processes[1].base, secret, reqwest::Method::GET, "/connectors", None).await;
    assert_eq!(s, 200, "{listed}");
    let (s, _) = call_as(&processes[1].base, ADMIN, reqwest::Method::GET, "/connectors", None).await;
    assert_eq!(s, 200);
    for p in processes {
        p.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_run_in_another_process_and_a_lost_process_is_resolved() {
    let Some((_pg, url, s3)) = services() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = process(dir.path(), &url, &s3, "a");
    let store = PgState::connect(&url, 1).unwrap_or_else(|e| panic!("{e}"));
    slow_on(&a.base, &store).await;
    // Both run on `a` (two workers) before `b` starts.
    let first = trigger(&a.base, "slow").await;
    let second = trigger(&a.base, "slow").await;
    wait(&a.base, &first, |s| s == "running").await;
    wait(&a.base, &second, |s| s == "running").await;
    let b = process(dir.path(), &url, &s3, "b");

    // A cancel sent to `b` stops the run `a` executes.
    let (s, doc) = call(
        &b.base,
        reqwest::Method::POST,
        &format!("/executions/{first}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202, "{doc}");
    let canceled = wait_end(&b.base, &first).await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");

    // `a` is killed: `b` resolves its other run as lost.
    a.stop();
    let lost = wait_end(&b.base, &second).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    assert!(
        log_lines(&b.base, &second)
            .await
            .iter()
            .any(|l| l.starts_with("resolved by worker b")),
        "resolved by the live process"
    );
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_loses_the_database_answers_503_and_recovers_by_itself() {
    let Some((pg, url, s3)) = services() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = process(dir.path(), &url, &s3, "p");
    quick_named(&p.base, "quick", 2).await;
    let before = trigger(&p.base, "quick").await;
    assert_eq!(wait_end(&p.base, &before).await["status"], "success");

    pg.pause();
    let (s, h) = call(&p.base, reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(s, 503, "{h}");
    assert_eq!(
        (h["database"].as_str(), h["object_store"].as_str()),
        (Some("unavailable"), Some("ok"))
    );
    let (s, b) = call(&p.base, reqwest::Method::GET, "/connectors", None).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["code"], "database_unavailable", "{b}");
    let (s, b) = upload(&p.base, "/connectors/quick/runs", b"a\n3\n").await;
    assert_eq!(s, 503, "{b}");

    // Back, without a restart: the process answers and runs again.
    pg.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, _) = call(&p.base, reqwest::Method::GET, "/connectors", None).await;
        if s == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {s}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (s, h) = call(&p.base, reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(s, 200, "{h}");
    let after = trigger(&p.base, "quick").await;
    assert_eq!(wait_end(&p.base, &after).await["status"], "success");
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_acknowledged_triggers_outlive_ten_seconds_without_the_database() {
    let Some((pg, url, s3)) = services() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Default lease and heartbeat: an outage shorter than the lease loses no
    // run. One worker, held by the long run: the triggers wait in the queue.
    let p = serve_on(dir.path(), &url, &s3, "outage", &[("WEIR_WORKERS", "1")]);
    let store = PgState::connect(&url, 1).unwrap_or_else(|e| panic!("{e}"));
    slow_on(&p.base, &store).await;
    drop(store);
    quick_named(&p.base, "quick", 1).await;
    let long = trigger(&p.base, "slow").await;
    wait(&p.base, &long, |s| s == "running").await;
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        acknowledged.push(trigger(&p.base, "quick").await);
    }
    for id in &acknowledged {
        assert_eq!(status_of(&p.base, id).await["status"], "queued", "{id}");
    }

    pg.pause();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let (s, b) = call(&p.base, reqwest::Method::GET, &format!("/executions/{long}"), None).await;
    assert_eq!(s, 503, "{b}");
    pg.resume();

    // The run that went on through the outage is still this process's, and
    // the triggers still wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let doc = loop {
        let (s, doc) = call(&p.base, reqwest::Method::GET, &format!("/executions/{long}"), None).await;
        if s == 200 {
            break doc;
        }
        assert!(std::time::Instant::now() < deadline, "still {s}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(doc["status"], "running", "{doc}");
    for id in &acknowledged {
        assert_eq!(status_of(&p.base, id).await["status"], "queued", "{id}");
    }
    let (s, b) = call(
        &p.base,
        reqwest::Method::POST,
        &format!("/executions/{long}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(wait_end(&p.base, &long).await["status"], "canceled");
    // Every trigger answered 202 before the outage runs once, after it.
    for id in &acknowledged {
        let done = wait_end(&p.base, id).await;
        assert_eq!(done["status"], "success", "{done}");
    }
    p.stop();
}

/// How many triggers the three processes share.
const TRIGGERS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_their_own_disks_run_a_thousand_triggers_once_with_their_records() {
    let Some((pg, url, s3)) = services() else { return };
    // Nothing shared but the database and the bucket.
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let processes: Vec<Process> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| process(d.path(), &url, &s3, &format!("p{i}")))
        .collect();
    importer(&processes[0].base).await;
    let (s, b) = call(
        &processes[1].base,
        reqwest::Method::PATCH,
        "/connectors/people",
        Some(serde_json::json!({"limits": {"max_concurrency": 4}})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Each trigger loads one contact of its own.
    let mut ids = Vec::with_capacity(TRIGGERS);
    for i in 0..TRIGGERS {
        let body = format!("email,city\nu{i}@x.io,City {i}\n");
        let (s, b) = post_bytes_as(
            &processes[i % 3].base,
            ADMIN,
            "/connectors/people/runs?filename=one.csv",
            "application/octet-stream",
            body,
        )
        .await;
        assert_eq!(s, 202, "{b}");
        ids.push(b["id"].as_str().unwrap_or_default().to_string());
    }
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let done = wait_end(&processes[(i + 1) % 3].base, id).await;
        assert_eq!(done["status"], "success", "{done}");
        let load = &done["step_progress"][4]["steps"][0];
        assert_eq!(
            (load["created"].as_u64(), load["updated"].as_u64()),
            (Some(1), Some(0)),
            "{done}"
        );
        let claims: Vec<String> = log_lines(&processes[(i + 2) % 3].base, id)
            .await
            .into_iter()
            .filter_map(|l| l.strip_prefix("claimed by worker ").map(str::to_string))
            .collect();
        assert_eq!(claims.len(), 1, "{id} claimed once: {claims:?}");
        *by_worker.entry(claims[0].clone()).or_default() += 1;
    }
    assert_eq!(by_worker.len(), 3, "every process ran some: {by_worker:?}");

    // The records, as a team reads them: one per trigger, each as loaded.
    let workspace = pg.sql_in("weir", "SELECT id FROM workspaces WHERE name = 'default'");
    let schema = weir_engine::store::schema_name(workspace.trim());
    let counted = pg.sql_in(
        "weir",
        &format!(
            "SELECT count(*), count(DISTINCT email), count(*) FILTER (WHERE city = 'City ' || substr(split_part(email, '@', 1), 2)) FROM {schema}.contact"
        ),
    );
    assert_eq!(counted.trim(), format!("{TRIGGERS}|{TRIGGERS}|{TRIGGERS}"), "{counted}");
    let tallied = pg.sql_in(
        "weir",
        "SELECT sum(created), count(DISTINCT execution_id) FROM weir_load_tallies",
    );
    assert_eq!(tallied.trim(), format!("{TRIGGERS}|{TRIGGERS}"));
    // No process wrote to another's disk, nor kept records on its own.
    for d in &dirs {
        assert!(!d.path().join("records.db").exists());
        assert!(!d.path().join("state.db").exists());
    }
    for p in processes {
        p.stop();
    }
}

/// Kills over the campaign.
const KILLS: usize = 102;

/// Distinct e-mails each run loads.
const PEOPLE: usize = 3_000;

/// Process `name` of the campaign: short leases, small load commits.
fn campaigner(dir: &Path, database: &str, s3: &S3, name: &str) -> Process {
    let env = [
        ("WEIR_WORKER_ID", name),
        ("WEIR_WORKERS", "2"),
        ("WEIR_LEASE", "1s"),
        ("WEIR_HEARTBEAT", "100ms"),
        ("WEIR_LOAD_BATCH_SIZE", "100"),
    ];
    serve_on(dir, database, s3, "campaign", &env)
}

/// The records of `contact`, the distinct e-mails among them, and what the
/// stored documents of every run (as the API shows them) say they created.
fn loaded(pg: &Postgres, schema: &str) -> (u64, u64, u64) {
    let out = pg.sql_in(
        "weir",
        &format!(
            "SELECT (SELECT count(*) FROM {schema}.contact), (SELECT count(DISTINCT email) FROM {schema}.contact),
                    (SELECT coalesce(sum((document #>> '{{step_progress,4,steps,0,created}}')::bigint), 0)
                     FROM executions WHERE NOT is_dry_run)"
        ),
    );
    let n: Vec<u64> = out.trim().split('|').map(|v| v.parse().unwrap_or(u64::MAX)).collect();
    (n[0], n[1], n[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_a_hundred_times_across_three_processes_nothing_acknowledged_is_lost_or_written_twice() {
    let Some((pg, url, s3)) = services() else { return };
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let names = ["p0", "p1", "p2"];
    let mut processes: Vec<Process> = (0..3)
        .map(|i| campaigner(dirs[i].path(), &url, &s3, names[i]))
        .collect();
    common::publish_plugin(&processes[0].base, "identity").await;
    common::importer_with(
        &processes[0].base,
        serde_json::json!([{"scope": "people", "plugin": "identity@0.1.0"}]),
    )
    .await;
    let workspace = pg.sql_in("weir", "SELECT id FROM workspaces WHERE name = 'default'");
    let schema = weir_engine::store::schema_name(workspace.trim());
    let mut csv = String::from("email,city\n");
    for i in 0..PEOPLE {
        csv.push_str(&format!("user{i}@example.com,City {}\n", i % 97));
    }

    let mut accepted: Vec<String> = Vec::new();
    let mut hit: Vec<Target> = Vec::new();
    for kill in 0..KILLS {
        // Everything acknowledged before has ended, nothing twice, and the
        // counts of every run, those the kills cut short too, are the
        // records.
        for id in &accepted {
            let done = wait_end(&processes[kill % 3].base, id).await;
            assert!(
                matches!(done["status"].as_str(), Some("success" | "partial_success" | "failed")),
                "seed {seed}, kill {kill}: {done}"
            );
        }
        let (count, distinct, created) = loaded(&pg, &schema);
        assert_eq!(count, distinct, "seed {seed}, kill {kill}: a record written twice");
        assert_eq!(
            created, count,
            "seed {seed}, kill {kill}: the counts disagree with the records"
        );

        let target = TARGETS[kill % TARGETS.len()];
        let runs = if target == Target::Queued { 2 } else { 1 };
        let mut id = String::new();
        for _ in 0..runs {
            let at = &processes[rng.below(3) as usize].base;
            let (s, b) = post_bytes_as(
                at,
                ADMIN,
                "/connectors/people/runs?filename=people.csv",
                "application/octet-stream",
                csv.clone(),
            )
            .await;
            assert_eq!(s, 202, "{b}");
            id = b["id"].as_str().unwrap_or_default().to_string();
            accepted.push(id.clone());
        }
        let watcher = &processes[rng.below(3) as usize].base;
        let reached = reach(watcher, &id, target).await;
        if reached {
            hit.push(target);
        }
        // The process running it, or any for a queued run.
        let victim = match (target, reached) {
            (Target::Stage(..), true) => log_lines(watcher, &id)
                .await
                .iter()
                .find_map(|l| l.strip_prefix("claimed by worker "))
                .and_then(|w| names.iter().position(|n| *n == w))
                .unwrap_or(0),
            _ => rng.below(3) as usize,
        };
        let spread = if target == Target::Stage(4, "load") { 400 } else { 30 };
        tokio::time::sleep(std::time::Duration::from_millis(rng.below(spread))).await;
        let _ = processes[victim].child.kill();
        let _ = processes[victim].child.wait();
        processes[victim] = campaigner(dirs[victim].path(), &url, &s3, names[victim]);
    }
    for target in TARGETS.into_iter().filter(|t| *t != Target::Stage(3, "variables")) {
        assert!(
            hit.contains(&target),
            "seed {seed}: no kill landed at {target:?}; hit {hit:?}"
        );
    }

    // Loaded once more, to its end: one record per distinct e-mail.
    for id in &accepted {
        wait_end(&processes[0].base, id).await;
    }
    let (s, b) = post_bytes_as(
        &processes[1].base,
        ADMIN,
        "/connectors/people/runs?filename=people.csv",
        "application/octet-stream",
        csv,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let last = b["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        wait_end(&processes[2].base, &last).await["status"],
        "success",
        "seed {seed}"
    );
    let (count, distinct, created) = loaded(&pg, &schema);
    assert_eq!(
        (count, distinct, created),
        (PEOPLE as u64, PEOPLE as u64, PEOPLE as u64),
        "seed {seed}"
    );
    let stuck = pg.sql_in(
        "weir",
        "SELECT count(*) FROM executions WHERE status IN ('queued', 'running', 'canceling')",
    );
    assert_eq!(stuck.trim(), "0", "seed {seed}");
    // The kills cut runs short: the runs of a killed process were resolved
    // by the others (or by itself, started again).
    let lost = pg.sql_in(
        "weir",
        "SELECT count(*) FROM executions WHERE document #>> '{error,code}' = 'worker_lost'",
    );
    let lost: usize = lost.trim().parse().unwrap_or(0);
    eprintln!(
        "seed {seed}: {KILLS} kills, {} where aimed, {lost} runs lost, {} acknowledged",
        hit.len(),
        accepted.len()
    );
    assert!(lost >= KILLS / 3, "seed {seed}: only {lost} runs were cut short");
    let known = pg.sql_in("weir", "SELECT count(*) FROM executions WHERE is_dry_run = false");
    assert_eq!(
        known.trim().parse::<usize>().ok(),
        Some(accepted.len() + 1),
        "seed {seed}: every acknowledged trigger is stored, once"
    );
    for p in processes {
        p.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_stopped_gracefully_ends_its_runs_itself_and_leaves_its_queue_to_the_others() {
    let Some((pg, url, s3)) = services() else { return };
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let graceful = |dir: &Path, name: &str| {
        let env = [
            ("WEIR_WORKER_ID", name),
            ("WEIR_WORKERS", "1"),
            ("WEIR_SHUTDOWN_GRACE", "500ms"),
        ];
        serve_on(dir, &url, &s3, "graceful", &env)
    };
    let a = graceful(dirs[0].path(), "a");
    let store = PgState::connect(&url, 1).unwrap_or_else(|e| panic!("{e}"));
    slow_on(&a.base, &store).await;
    let running = trigger(&a.base, "slow").await;
    wait(&a.base, &running, |s| s == "running").await;
    // One worker: the second waits in the queue.
    let queued = trigger(&a.base, "slow").await;
    assert_eq!(status_of(&a.base, &queued).await["status"], "queued");

    let mut a = a;
    let sent = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", a.child.id())])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = a.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    // Its run ended by its own hand before it exited (a sweeper resolves
    // only runs still running); the queued run waits for another process.
    let rows = pg.sql_in(
        "weir",
        &format!("SELECT id, status FROM executions WHERE id IN ('{running}', '{queued}') ORDER BY id"),
    );
    assert_eq!(
        rows.trim(),
        format!("{running}|canceled\n{queued}|queued"),
        "a graceful stop leaves nothing to a sweeper"
    );

    let b = graceful(dirs[1].path(), "b");
    wait(&b.base, &queued, |s| s == "running").await;
    let claims: Vec<String> = log_lines(&b.base, &queued)
        .await
        .into_iter()
        .filter(|l| l.starts_with("claimed by worker "))
        .collect();
    assert_eq!(claims, ["claimed by worker b"]);
    assert!(
        !log_lines(&b.base, &running)
            .await
            .iter()
            .any(|l| l.starts_with("resolved by worker")),
        "nothing was resolved by another process"
    );
    let (s, _) = call(
        &b.base,
        reqwest::Method::POST,
        &format!("/executions/{queued}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(wait_end(&b.base, &queued).await["status"], "canceled");
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_cut_off_by_a_database_outage_ends_clearly_with_its_counts_equal_to_its_records() {
    let Some((pg, url, s3)) = services() else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let p = serve_on(dir.path(), &url, &s3, "outage-load", &[("WEIR_LOAD_BATCH_SIZE", "20")]);
    importer(&p.base).await;
    let rows: String = std::iter::once("email,city\n".to_string())
        .chain((0..200_000).map(|i| format!("u{i}@x.io,Oslo\n")))
        .collect();
    let (s, run) = post_bytes_as(
        &p.base,
        ADMIN,
        "/connectors/people/runs?filename=people.csv",
        "application/octet-stream",
        rows,
    )
    .await;
    assert_eq!(s, 202, "{run}");
    let id = run["id"].as_str().unwrap_or_default().to_string();
    let committed = |doc: &serde_json::Value| doc["step_progress"][4]["steps"][0]["created"].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while committed(&status_of(&p.base, &id).await) == 0 {
        assert!(std::time::Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    pg.pause();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    pg.resume();

    let done = wait_end(&p.base, &id).await;
    let status = done["status"].as_str().unwrap_or_default();
    assert!(
        status == "success" || (status == "failed" && done["error"]["message"].as_str().is_some_and(|m| !m.is_empty())),
        "it finishes or ends with a clear error: {done}"
    );
    let workspace = pg.sql_in("weir", "SELECT id FROM workspaces WHERE name = 'default'");
    let schema = weir_engine::store::schema_name(workspace.trim());
    let records = pg.sql_in("weir", &format!("SELECT count(*) FROM {schema}.contact"));
    assert_eq!(
        records.trim().parse::<u64>().ok(),
        Some(committed(&done)),
        "the counts are the records: {done}"
    );
    eprintln!("after the outage: {status}: {}", done["error"]);
    p.stop();
}
