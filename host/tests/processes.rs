//! Several `weir serve` processes share the queue: each execution runs
//! once, in one process, under a lease; any process answers for any
//! execution, cancels it, and resolves it when the process running it is
//! lost (docs/architecture.md, "Leased runs"). On the embedded default the
//! processes share one data directory; `processes_postgres.rs` runs every
//! test again with the processes on one PostgreSQL database and one bucket,
//! each with a data directory of its own.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Process, call, get_bytes, log_lines, quick_named, status_of, trigger, wait, wait_end};
use serde_json::Value;
use weir_engine::store::{PgStore, RecordStore, SqliteStore};
use weir_host::server::state::{Db, PgState, StateStore};

/// Whether this is the run of the suite on PostgreSQL and S3.
fn on_postgres() -> bool {
    module_path!().contains("processes_postgres")
}

/// What one test's processes share: a data directory on the embedded
/// default; on PostgreSQL a database and a bucket of the test's own.
struct Shared {
    dir: tempfile::TempDir,
    /// The database's URL, on PostgreSQL.
    database: Option<String>,
    /// What each process is told of the database and the bucket.
    env: Vec<(&'static str, String)>,
}

impl Shared {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let services = on_postgres()
            .then(|| common::services::shared_database().zip(common::services::shared_bucket()))
            .flatten();
        let Some((database, (s3, bucket))) = services else {
            if on_postgres() {
                eprintln!("this run of the test is on the embedded default: PostgreSQL or an S3 server is missing");
            }
            return Self {
                dir,
                database: None,
                env: Vec::new(),
            };
        };
        let mut env = s3.env();
        env.push(("WEIR_DATABASE", database.clone()));
        env.push(("WEIR_OBJECT_STORE", format!("s3://{bucket}/weir")));
        Self {
            dir,
            database: Some(database),
            env,
        }
    }

    /// Process `name` with `workers` workers and short leases.
    fn process(&self, name: &str, workers: &str) -> Process {
        self.serve(
            name,
            &[
                ("WEIR_WORKERS", workers),
                ("WEIR_LEASE", "2s"),
                ("WEIR_HEARTBEAT", "200ms"),
            ],
        )
    }

    /// Process `name` with `env`.
    fn serve(&self, name: &str, env: &[(&str, &str)]) -> Process {
        let mut all: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("WEIR_WORKER_ID", name));
        all.extend_from_slice(env);
        let process = common::serve(&self.data_dir(name), &all);
        assert_eq!(
            self.data_dir(name).join("state.db").exists(),
            self.database.is_none(),
            "the state is where the process was told to keep it"
        );
        process
    }

    /// Where process `name` keeps its files: its own directory when the
    /// processes share a database and a bucket.
    fn data_dir(&self, name: &str) -> PathBuf {
        match self.database {
            Some(_) => self.dir.path().join(name),
            None => self.dir.path().to_path_buf(),
        }
    }

    /// The state store the processes share.
    fn state(&self) -> Box<dyn StateStore> {
        match &self.database {
            Some(url) => Box::new(PgState::connect(url, 1).unwrap_or_else(|e| panic!("{e}"))),
            None => Box::new(Db::open(&self.dir.path().join("state.db")).unwrap_or_else(|e| panic!("{e}"))),
        }
    }

    /// The record store the processes share.
    fn records(&self) -> Arc<dyn RecordStore> {
        match &self.database {
            Some(url) => Arc::new(PgStore::connect(url, 1).unwrap_or_else(|e| panic!("{e}"))),
            None => Arc::new(SqliteStore::open(&self.dir.path().join("records.db")).unwrap_or_else(|e| panic!("{e}"))),
        }
    }

    /// An operational connector `slow` whose script runs for minutes.
    async fn slow(&self, base: &str) {
        common::slow_on(base, self.state().as_ref()).await;
    }
}

/// The worker that claimed execution `id`, from its log.
async fn claimer(base: &str, id: &str) -> String {
    let lines = log_lines(base, id).await;
    let claims: Vec<&String> = lines.iter().filter(|l| l.starts_with("claimed by worker ")).collect();
    assert_eq!(claims.len(), 1, "claimed once: {lines:?}");
    claims[0].trim_start_matches("claimed by worker ").to_string()
}

fn signal(p: &Process, name: &str) {
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -{name} {}", p.child.id())])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sent.success(), "kill -{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_sent_round_robin_to_three_processes_each_run_exactly_once() {
    let shared = Shared::new();
    let processes: Vec<Process> = ["p0", "p1", "p2"].iter().map(|n| shared.process(n, "2")).collect();
    quick_named(&processes[0].base, "quick", 6).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(trigger(&processes[i % 3].base, "quick").await);
    }
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let base = &processes[(i + 1) % 3].base;
        let doc = wait_end(base, id).await;
        assert_eq!(doc["status"], "success", "{doc}");
        assert_eq!(doc["step_progress"][1]["scopes"][0]["rows"], 2, "{doc}");
        *by_worker.entry(claimer(base, id).await).or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 300);
    assert!(by_worker.len() >= 2, "the processes share the work: {by_worker:?}");
    for p in processes {
        p.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_process_cancels_follows_and_serves_a_run_another_process_runs() {
    let shared = Shared::new();
    let a = shared.process("a", "1");
    shared.slow(&a.base).await;
    quick_named(&a.base, "quick", 1).await;
    // Only `a` is up: it claims the slow run.
    let id = trigger(&a.base, "slow").await;
    wait(&a.base, &id, |s| s == "running").await;
    let b = shared.process("b", "1");
    assert_eq!(
        status_of(&b.base, &id).await["status"],
        "running",
        "starting a process leaves another's live run alone"
    );
    assert_eq!(claimer(&b.base, &id).await, "a");

    // Events from the process that does not run it, to the end.
    let events = tokio::spawn({
        let url = format!("{}/executions/{id}/events", b.base);
        async move {
            let mut response = reqwest::Client::new()
                .get(url)
                .bearer_auth(common::ADMIN)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut text = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let (s, body) = call(
        &b.base,
        reqwest::Method::POST,
        &format!("/executions/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["status"], "canceling", "{body}");
    // The owner shows it stopping, or already stopped (its poll is quick).
    let at_owner = status_of(&a.base, &id).await;
    assert!(
        matches!(at_owner["status"].as_str(), Some("canceling" | "canceled")),
        "{at_owner}"
    );
    let end = wait_end(&b.base, &id).await;
    assert_eq!(end["status"], "canceled", "{end}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the cancel reached the other process: {:?}",
        asked.elapsed()
    );
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .unwrap_or_else(|_| panic!("the event stream did not end"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        events.contains("event: end") && events.contains("data: canceled"),
        "{events}"
    );
    assert!(
        events.contains("canceling at the request") || events.contains("cancel requested"),
        "{events}"
    );

    // A run's artifacts from the process that did not run it.
    let ran = trigger(&a.base, "quick").await;
    let doc = wait_end(&a.base, &ran).await;
    assert_eq!(doc["status"], "success", "{doc}");
    let other = if claimer(&a.base, &ran).await == "a" {
        &b.base
    } else {
        &a.base
    };
    assert_eq!(common::output_csv(other, &ran, "a").await, "a\n1\n2\n");
    let (s, report) = get_bytes(other, &format!("/executions/{ran}/report.xlsx")).await;
    assert_eq!(s, 200);
    assert!(report.starts_with(b"PK"), "a workbook");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_run_is_resolved_by_another_while_the_other_runs_go_on() {
    let shared = Shared::new();
    let a = shared.process("a", "1");
    shared.slow(&a.base).await;
    let on_a = trigger(&a.base, "slow").await;
    wait(&a.base, &on_a, |s| s == "running").await;
    let b = shared.process("b", "1");
    let on_b = trigger(&b.base, "slow").await;
    wait(&b.base, &on_b, |s| s == "running").await;
    assert_eq!(claimer(&b.base, &on_b).await, "b");

    a.stop();
    let lost = wait_end(&b.base, &on_a).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    assert!(
        log_lines(&b.base, &on_a)
            .await
            .iter()
            .any(|l| l.starts_with("resolved by worker b")),
        "resolved by the live process"
    );
    // A new process leaves `b`'s run alone too.
    let c = shared.process("c", "1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_of(&c.base, &on_b).await["status"], "running");
    let (s, _) = call(
        &c.base,
        reqwest::Method::POST,
        &format!("/executions/{on_b}/cancel"),
        None,
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(wait_end(&c.base, &on_b).await["status"], "canceled");
    b.stop();
    c.stop();
}

/// Three processes of one worker each and a connector of two runs at a
/// time: two of its runs may run together only in two processes, and a
/// third never joins them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_across_processes() {
    let shared = Shared::new();
    let processes: Vec<Process> = ["p0", "p1", "p2"].iter().map(|n| shared.process(n, "1")).collect();
    // Long enough that overlapping runs would be seen.
    let sql =
        "CREATE TABLE output.total AS SELECT count(*) AS n FROM generate_series(1, 30000000) AS t(v) WHERE v % 7 = 3";
    common::live_unchecked_on(&processes[0].base, shared.state().as_ref(), "one", sql, 2).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(trigger(&processes[i % 3].base, "one").await);
    }
    let mut spans: Vec<(String, String, String)> = Vec::new();
    for id in &ids {
        let doc = wait_end(&processes[0].base, id).await;
        assert_eq!(doc["status"], "success", "{doc}");
        let at = |k: &str| doc[k].as_str().unwrap_or_default().to_string();
        spans.push((at("started_at"), at("ended_at"), claimer(&processes[0].base, id).await));
    }
    // Starts and ends in time order (an end before a start at the same
    // instant): the most runs at once.
    let mut edges: Vec<(chrono::DateTime<chrono::FixedOffset>, i32)> = Vec::new();
    for (start, end, _) in &spans {
        let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        edges.push((parse(start), 1));
        edges.push((parse(end), -1));
    }
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(most <= 2, "more than max_concurrency at once: {spans:?}");
    let workers: std::collections::BTreeSet<&String> = spans.iter().map(|s| &s.2).collect();
    assert!(workers.len() >= 2, "several processes ran them: {spans:?}");
    for p in processes {
        p.stop();
    }
}

/// A process stopped past its lease: another resolves the run, and once
/// resumed the stopped one commits nothing more of it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_stopped_past_its_lease_commits_nothing_once_resumed() {
    let shared = Shared::new();
    let small_batches = [
        ("WEIR_WORKERS", "1"),
        ("WEIR_LEASE", "2s"),
        ("WEIR_HEARTBEAT", "200ms"),
        ("WEIR_LOAD_BATCH_SIZE", "20"),
    ];
    let a = shared.serve("a", &small_batches);
    common::importer(&a.base).await;
    let rows: String = std::iter::once("email,city\n".to_string())
        .chain((0..200_000).map(|i| format!("u{i}@x.io,Oslo\n")))
        .collect();
    let (s, run) = common::post_bytes_as(
        &a.base,
        common::ADMIN,
        "/connectors/people/runs?filename=people.csv",
        "application/octet-stream",
        rows,
    )
    .await;
    assert_eq!(s, 202, "{run}");
    let id = run["id"].as_str().unwrap_or_default().to_string();
    // Stopped once it has committed some records.
    let committed = |doc: &Value| doc["step_progress"][4]["steps"][0]["created"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&status_of(&a.base, &id).await) == 0 {
        assert!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = shared.process("b", "1");
    signal(&a, "STOP");
    let lost = wait_end(&b.base, &id).await;
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    let counted = committed(&lost);
    assert!(counted > 0 && counted < 200_000, "{lost}");

    signal(&a, "CONT");
    // Time for the resumed process to try whatever it had left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = status_of(&a.base, &id).await;
    assert_eq!(after["status"], "failed", "{after}");
    assert_eq!(after["error"]["code"], "worker_lost", "{after}");
    let store = shared.records();
    let tally = store.tallies(&id).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tally.iter().map(|t| t.created).sum::<u64>(),
        counted,
        "no commit after the run was resolved"
    );
    let workspace = shared
        .state()
        .workspace_named("default")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store.count(&workspace.id, "contact").ok(),
        Some(counted),
        "the records are those the resolved document counts"
    );
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_on_one_data_directory_run_each_tick_once() {
    let shared = Shared::new();
    let p0 = shared.process("p0", "2");
    let p1 = shared.process("p1", "2");
    let (s, b) = call(
        &p0.base,
        reqwest::Method::POST,
        "/connectors",
        Some(serde_json::json!({
            "api_name": "ticks", "type": "schedule",
            "schedule": {"cron": "* * * * * *", "timezone": "UTC"},
            "limits": {"max_concurrency": 4},
            "sql": {"text": "CREATE VIEW output.tick AS SELECT CAST(schedule_trigger_time AS VARCHAR) AS at FROM input.schedule"},
        })),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    common::go_live(&p0.base, "ticks").await;
    // Both processes look at least every second; let several ticks pass.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (s, b) = call(
        &p1.base,
        reqwest::Method::GET,
        "/connectors/ticks/executions?limit=100",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let runs: Vec<Value> = b["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["trigger_type"] == "schedule")
        .collect();
    let mut ticks: Vec<String> = runs.iter().map(|e| e["window_end"].to_string()).collect();
    assert!(ticks.len() >= 2, "ticks ran: {runs:?}");
    let all = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), all, "a tick ran twice: {runs:?}");
    for run in &runs {
        let id = run["id"].as_str().unwrap_or_default();
        let done = wait_end(&p0.base, id).await;
        assert_eq!(done["status"], "success", "{done}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_delivered_once_each_by_whichever_process_claims_them() {
    let shared = Shared::new();
    let receiver = common::receiver::Receiver::start(shared.dir.path(), &[("/hook", "fail:1")]);
    let env = [
        ("WEIR_SECRETS_KEY", common::receiver::KEY),
        ("WEIR_NOTIFICATION_ALLOWED", "127.0.0.1"),
        ("WEIR_NOTIFICATION_BACKOFF", "300ms"),
        ("WEIR_WORKERS", "2"),
    ];
    let a = shared.serve("a", &env);
    let b = shared.serve("b", &env);
    common::receiver::notifying(
        &a.base,
        serde_json::json!([{"on": ["success"], "url": receiver.url("/hook"), "secret": "hooks"}]),
    )
    .await;
    // Runs started on both; each notification's first attempt fails, so
    // its retry is due again for whichever process claims it.
    let mut ids = Vec::new();
    for i in 0..24 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let body = format!("email,city\nn{i}@x.io,Oslo\n");
        let (s, doc) = common::post_bytes_as(
            base,
            common::ADMIN,
            "/connectors/people/runs?filename=n.csv",
            "text/csv",
            body,
        )
        .await;
        assert_eq!(s, 202, "{doc}");
        ids.push(doc["id"].as_str().unwrap_or_default().to_string());
    }
    receiver.wait_for("/hook", 48).await;
    // Nothing more comes: no attempt was sent by two processes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 48, "two attempts each, no more: {got:?}");
    for id in &ids {
        let answers: Vec<i64> = got
            .iter()
            .filter(|r| r["execution"] == id.as_str())
            .map(|r| r["answered"].as_i64().unwrap_or_default())
            .collect();
        assert_eq!(answers, [500, 204], "{id}");
    }
    assert!(got.iter().all(|r| r["verified"] == true));
    a.stop();
    b.stop();
}
