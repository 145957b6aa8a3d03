//! `weir serve` killed (SIGKILL) in every stage of loading runs, again and
//! again, each time started again on the same data directory. Each round
//! aims at one point: a run waiting in the queue, or one running in intake,
//! SQL, variables or the load, killed a random few milliseconds after it
//! is seen there (anywhere up to 1.5 s into the load). After every restart: both databases pass SQLite's
//! integrity check, no execution is left `running` or `queued` for good,
//! the records hold no duplicate, what was committed stays, and the counts
//! of every run, those the crashes cut short too, add up to the records. At
//! the end the input loaded once more leaves one record per distinct key.

use crate::common;

use std::fmt::Write as _;
use std::time::Duration;

use common::kills::{Rng, TARGETS, Target, reach};
use common::{call, importer_with, publish_plugin, serve, upload_named, wait_end};
use reqwest::Method;
use serde_json::{Value, json};
use weir_engine::store::{RecordStore, SqliteStore};
use weir_host::server::state::{Db, KeyState, ObjectState};

/// Distinct e-mails in the input.
const PEOPLE: usize = 60_000;

/// One round per target, twice over.
const ROUNDS: usize = 2 * TARGETS.len();

fn people_csv() -> &'static [u8] {
    let mut csv = String::from("email,city\n");
    for i in 0..PEOPLE {
        let _ = writeln!(csv, "user{i}@example.com,City {}", i % 97);
    }
    Box::leak(csv.into_bytes().into_boxed_slice())
}

/// Records of `contact` and how many distinct e-mails they hold.
fn records(dir: &std::path::Path) -> (u64, u64) {
    let db = Db::open(&dir.join("state.db")).unwrap_or_else(|e| panic!("{e}"));
    let ws = db
        .workspace("default")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no workspace"))
        .id;
    let objects = db.object_defs(&ws).unwrap_or_else(|e| panic!("{e}"));
    let contact = objects.get("contact").unwrap_or_else(|| panic!("no contact"));
    let store = SqliteStore::open(&dir.join("records.db")).unwrap_or_else(|e| panic!("{e}"));
    let count = store.count(&ws, "contact").unwrap_or_else(|e| panic!("{e}"));
    let batch = store.scan_all(&ws, contact).unwrap_or_else(|e| panic!("{e}"));
    let emails = batch
        .column_by_name("email")
        .map(|c| {
            let c = datafusion_strings(c);
            c.into_iter().collect::<std::collections::BTreeSet<_>>().len() as u64
        })
        .unwrap_or(0);
    (count, emails)
}

fn datafusion_strings(array: &std::sync::Arc<dyn datafusion::arrow::array::Array>) -> Vec<String> {
    use datafusion::arrow::array::{Array, AsArray};
    let strings = array.as_string::<i32>();
    (0..strings.len()).map(|i| strings.value(i).to_string()).collect()
}

/// Both databases pass SQLite's own check of their pages and indexes.
fn assert_intact(dir: &std::path::Path, seed: u64, round: usize) {
    for name in ["state.db", "records.db"] {
        let conn = rusqlite::Connection::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let verdict: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verdict, "ok", "seed {seed}, round {round}: {name} is corrupt");
    }
}

/// Records the executions say they created.
async fn created(base: &str, ids: &[String]) -> u64 {
    let mut sum = 0;
    for id in ids {
        let (_, doc) = call(base, Method::GET, &format!("/executions/{id}"), None).await;
        sum += doc["step_progress"][4]["steps"][0]["created"].as_u64().unwrap_or(0);
    }
    sum
}

/// Every execution of the connector.
async fn executions(base: &str) -> Vec<Value> {
    let (_, b) = call(
        base,
        Method::GET,
        "/connectors/people/executions?limit=500&is_dry_run=false",
        None,
    )
    .await;
    b["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_every_stage_again_and_again_the_server_keeps_its_records_whole() {
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let csv = people_csv();
    let mut accepted: Vec<String> = Vec::new();
    let mut hit: Vec<Target> = Vec::new();
    for round in 0..ROUNDS {
        let mut p = serve(dir.path(), &[]);
        if round == 0 {
            // A plugin step gives the run a transform stage to be killed in.
            publish_plugin(&p.base, "identity").await;
            importer_with(&p.base, json!([{"scope": "people", "plugin": "identity@0.1.0"}])).await;
        }
        // Everything from before the crash has ended: lost runs failed,
        // queued ones ran.
        for id in &accepted {
            let done = wait_end(&p.base, id).await;
            assert!(
                matches!(done["status"].as_str(), Some("success" | "partial_success" | "failed")),
                "seed {seed}: {done}"
            );
        }
        let (count, distinct) = records(dir.path());
        assert_eq!(count, distinct, "seed {seed}, round {round}: duplicated records");
        // Every record was created by one commit of one run, and the
        // counts, of the runs the crashes cut short too, say so.
        assert_eq!(
            created(&p.base, &accepted).await,
            count,
            "seed {seed}, round {round}: the counts disagree with the records"
        );
        let (s, b) = upload_named(&p.base, "/connectors/people/runs", "people.csv", csv).await;
        assert_eq!(s, 202, "{b}");
        let mut id = b["id"].as_str().unwrap_or_default().to_string();
        accepted.push(id.clone());
        let target = TARGETS[round % TARGETS.len()];
        if target == Target::Queued {
            // One worker: a second run waits behind the first.
            let (s, b) = upload_named(&p.base, "/connectors/people/runs", "people.csv", csv).await;
            assert_eq!(s, 202, "{b}");
            id = b["id"].as_str().unwrap_or_default().to_string();
            accepted.push(id.clone());
        }
        if reach(&p.base, &id, target).await {
            hit.push(target);
        }
        // Stages stream into one another: once the load runs, a kill any
        // time later lands among its commits.
        let spread = if target == Target::Stage(4, "load") { 1500 } else { 40 };
        tokio::time::sleep(Duration::from_millis(rng.below(spread))).await;
        p.child.kill().unwrap_or_else(|e| panic!("{e}"));
        let _ = p.child.wait();
        assert_intact(dir.path(), seed, round);
    }
    // The rounds killed where they aimed: queued, and in intake, SQL, the
    // transform and the load at least (variables run beside the load and
    // may be missed).
    for target in TARGETS.into_iter().filter(|t| *t != Target::Stage(3, "variables")) {
        assert!(
            hit.contains(&target),
            "seed {seed}: no kill landed at {target:?}; hit {hit:?}"
        );
    }

    // Loaded once more, to its end: one record per distinct e-mail.
    let p = serve(dir.path(), &[]);
    for id in &accepted {
        wait_end(&p.base, id).await;
    }
    let (s, b) = upload_named(&p.base, "/connectors/people/runs", "people.csv", csv).await;
    assert_eq!(s, 202, "{b}");
    let last = b["id"].as_str().unwrap_or_default().to_string();
    let done = wait_end(&p.base, &last).await;
    assert_eq!(done["status"], "success", "seed {seed}: {done}");
    let (count, distinct) = records(dir.path());
    assert_eq!((count, distinct), (PEOPLE as u64, PEOPLE as u64), "seed {seed}");
    accepted.push(last);
    assert_eq!(created(&p.base, &accepted).await, count, "seed {seed}");
    let stuck: Vec<Value> = executions(&p.base)
        .await
        .into_iter()
        .filter(|e| matches!(e["status"].as_str(), Some("running" | "queued" | "canceling")))
        .collect();
    assert!(stuck.is_empty(), "seed {seed}: {stuck:?}");
    p.stop();
}
