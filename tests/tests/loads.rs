//! Load steps through the engine: what a failing run keeps.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use weir_engine::objects::Objects;
use weir_engine::pipeline::{InputFile, Records, RunSettings};
use weir_engine::store::{RecordStore, SqliteStore};
use weir_tests::{connector, input, run_with};

const LOAD: &str = r#"
[[variables]]
name = "email"
scope = "people"
column = "email"
type = "email"
[[loads]]
order = 1
scope = "people"
object = "contact"
  [[loads.match]]
  field = "email"
  variable = "email"
  no_match = "create_new"
  single_match = "update_current"
  multiple_match = "do_not_upload"
  [[loads.fields]]
  field = "email"
  variables = ["email"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failing_mid_way_keeps_exactly_the_committed_batches() {
    let objects = Objects::from_toml(
        "[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\nunique = true\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let store: Arc<dyn RecordStore> = Arc::new(SqliteStore::in_memory().unwrap_or_else(|e| panic!("{e}")));
    let records = Records {
        store: store.clone(),
        workspace: "w".into(),
        objects,
    };
    // Batches of two rows: [1,2] [3,4] [5 fails]. One thread, so the batches
    // reach the load in input order (more threads repartition them).
    let csv = "email,n\na@x.io,1\nb@x.io,2\nc@x.io,3\nd@x.io,4\ne@x.io,oops\n";
    let (_dir, path) = input("people.csv", csv.as_bytes());
    let script = "CREATE VIEW output.people AS SELECT email, CAST(n AS INT) AS n FROM input.data";
    let o = run_with(
        connector(LOAD),
        script,
        Some(InputFile {
            path,
            name: "people.csv".into(),
        }),
        CancellationToken::new(),
        Some(records),
        RunSettings {
            threads: 1,
            batch_size: 2,
            ..RunSettings::default()
        },
    )
    .await;
    assert_eq!(o.status(), "failed");
    assert_eq!(o.code().as_deref(), Some("sql_error"), "{:?}", o.doc.error);
    let doc = o.json();
    assert_eq!(doc["step_progress"][4]["steps"][0]["created"], 4, "{doc}");
    assert_eq!(
        store.count("w", "contact").unwrap_or_else(|e| panic!("{e}")),
        4,
        "the committed batches stay"
    );
}
