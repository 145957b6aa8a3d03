//! Run limits and cancellation through the engine.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use weir_engine::error::Stage;
use weir_engine::execution::{Execution, StepProgress};
use weir_engine::pipeline::InputFile;
use weir_tests::{PASS_THROUGH, connector, input, run, run_path};

#[tokio::test]
async fn max_rows_on_an_input_table() {
    let mut csv = String::from("n\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{i}\n"));
    }
    let o = run(
        connector("[limits]\nmax_rows = 10000\n"),
        PASS_THROUGH,
        "x.csv",
        csv.as_bytes(),
    )
    .await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "limit_exceeded");
    assert!(e.message.contains("max_rows"), "{}", e.message);
    // The limit is intake's, though the SQL stage was reading the table:
    // intake failed, with the rows it read within the limit; the stages
    // after it never got their rows.
    assert_eq!(e.stage, Stage::Intake, "{:?}", o.doc.step_progress);
    assert_eq!(statuses(&o.doc), ["failed", "skipped", "skipped", "skipped", "skipped"]);
    let StepProgress::Intake { tables, .. } = &o.doc.step_progress[0] else {
        panic!("{:?}", o.doc.step_progress)
    };
    assert_eq!(tables[0].rows, 10_000);
}

/// Each stage's status, in pipeline order.
fn statuses(doc: &Execution) -> Vec<String> {
    doc.step_progress
        .iter()
        .map(|p| {
            serde_json::to_value(p.status())
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn max_rows_on_a_scope() {
    let script = "CREATE VIEW output.many AS SELECT * FROM input.data CROSS JOIN generate_series(1, 50000)";
    let o = run(connector("[limits]\nmax_rows = 1000\n"), script, "x.csv", b"a\n1\n").await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "limit_exceeded");
    assert!(e.message.contains("scope `many`"), "{}", e.message);
    // Intake read its row and handed it on: it completed; only the SQL
    // stage, whose scope went past the limit, failed.
    assert_eq!(e.stage, Stage::Sql);
    assert_eq!(
        statuses(&o.doc),
        ["completed", "failed", "skipped", "skipped", "skipped"]
    );
}

#[tokio::test]
async fn a_stage_that_fails_before_rows_flow_leaves_the_others_skipped() {
    let o = run(
        connector("[[variables]]\nname = \"x\"\nscope = \"rows\"\ncolumn = \"nope\"\ntype = \"string\"\n"),
        PASS_THROUGH,
        "x.csv",
        b"a\n1\n",
    )
    .await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.stage, Stage::Variables, "{}", e.message);
    assert_eq!(statuses(&o.doc), ["skipped", "skipped", "skipped", "failed", "skipped"]);
}

#[tokio::test]
async fn max_runtime_stops_a_long_query() {
    let script = "CREATE VIEW output.slow AS SELECT count(*) AS n FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b";
    let started = Instant::now();
    let o = run(
        connector("[limits]\nmax_runtime = \"1s\"\n"),
        script,
        "x.csv",
        b"a\n1\n",
    )
    .await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "limit_exceeded");
    assert!(e.message.contains("max_runtime"), "{}", e.message);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped promptly: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn max_memory_is_enforced_by_the_memory_pool() {
    // array_agg cannot spill: it must hold every value.
    let script = "CREATE VIEW output.big AS SELECT array_agg(repeat('x', 100)) AS a FROM generate_series(1, 2000000)";
    let o = run(
        connector("[limits]\nmax_memory = \"16MiB\"\n"),
        script,
        "x.csv",
        b"a\n1\n",
    )
    .await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "limit_exceeded", "{}", e.message);
    assert!(e.message.contains("max_memory"), "{}", e.message);
}

#[tokio::test]
async fn cancel_stops_a_run_promptly() {
    let script = "CREATE VIEW output.slow AS SELECT count(*) AS n FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b";
    let (_dir, path) = input("x.csv", b"a\n1\n");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let started = Instant::now();
    let o = run_path(
        connector(""),
        script,
        Some(InputFile {
            path,
            name: "x.csv".into(),
        }),
        cancel,
    )
    .await;
    assert_eq!(o.status(), "canceled");
    assert!(o.doc.error.is_none());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Artifacts exist after a cancel too.
    assert!(o.out.path().join("report.xlsx").exists());
    assert!(o.out.path().join("rejected.csv").exists());
}

#[tokio::test]
async fn max_invalid_ratio_fails_the_run() {
    let csv = "email\na@example.com\nnot-an-email\nalso bad\n";
    let extra = "[limits]\nmax_invalid_ratio = 0.5\n[[variables]]\nname = \"email\"\nscope = \"rows\"\ncolumn = \"email\"\ntype = \"email\"\n";
    let o = run(connector(extra), PASS_THROUGH, "x.csv", csv.as_bytes()).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "invalid_ratio_exceeded");
    assert!(e.message.contains("2 of 3"), "{}", e.message);
    // The same data under the default ratio is a partial success.
    let extra = extra.replace("max_invalid_ratio = 0.5", "max_invalid_ratio = 1.0");
    let o = run(connector(&extra), PASS_THROUGH, "x.csv", csv.as_bytes()).await;
    assert_eq!(o.status(), "partial_success");
}
