//! Load steps through the engine: what a failing run keeps, and commits
//! of the configured size.

use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;

use tokio_util::sync::CancellationToken;
use weir_engine::objects::ObjectDef;
use weir_engine::objects::Objects;
use weir_engine::pipeline::{InputFile, Records, RunSettings};
use weir_engine::store::{
    Comparison, Condition, Found, Record, RecordId, RecordSnapshot, RecordStore, Scan, SqliteStore, Value, WriteBatch,
};
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

/// Runs `script` over `csv` (as people.csv) with the LOAD connector, loading
/// into `store` (workspace `w`, one `contact` object with a unique email).
async fn load_people(
    store: Arc<dyn RecordStore>,
    csv: &str,
    script: &str,
    settings: RunSettings,
) -> weir_tests::Outcome {
    let objects = Objects::from_toml(
        "[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\nunique = true\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let records = Records {
        store,
        workspace: "w".into(),
        objects,
    };
    let (_dir, path) = input("people.csv", csv.as_bytes());
    run_with(
        connector(LOAD),
        script,
        Some(InputFile {
            path,
            name: "people.csv".into(),
        }),
        CancellationToken::new(),
        Some(records),
        settings,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failing_mid_way_keeps_exactly_the_committed_batches() {
    let store: Arc<dyn RecordStore> = Arc::new(SqliteStore::in_memory().unwrap_or_else(|e| panic!("{e}")));
    // Batches of two rows: [1,2] [3,4] [5 fails]. One thread, so the batches
    // reach the load in input order (more threads repartition them).
    let csv = "email,n\na@x.io,1\nb@x.io,2\nc@x.io,3\nd@x.io,4\ne@x.io,oops\n";
    let script = "CREATE VIEW output.people AS SELECT email, CAST(n AS INT) AS n FROM input.data";
    let settings = RunSettings {
        threads: 1,
        batch_size: 2,
        ..RunSettings::default()
    };
    let o = load_people(store.clone(), csv, script, settings).await;
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

/// A store that records the size of every commit and every scan (the
/// object, what was asked, how many records it handed over), and passes
/// everything on.
struct Recording {
    inner: SqliteStore,
    commits: Mutex<Vec<usize>>,
    scans: Arc<Mutex<Vec<(String, Scan, usize)>>>,
    /// The commit (counted from 1) that fails, if any.
    failing: Option<usize>,
}

impl Recording {
    fn new() -> Self {
        Self::over(SqliteStore::in_memory().unwrap_or_else(|e| panic!("{e}")))
    }

    fn over(inner: SqliteStore) -> Self {
        Self {
            inner,
            commits: Mutex::default(),
            scans: Arc::default(),
            failing: None,
        }
    }

    fn scans(&self) -> Vec<(String, Scan, usize)> {
        self.scans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn objects_scanned(&self) -> Vec<String> {
        self.scans().into_iter().map(|(object, _, _)| object).collect()
    }
}

impl RecordStore for Recording {
    fn ensure_object(&self, workspace: &str, object: &ObjectDef) -> weir_engine::Result<()> {
        self.inner.ensure_object(workspace, object)
    }
    fn ensure_index(&self, workspace: &str, object: &str, field: &str) -> weir_engine::Result<()> {
        self.inner.ensure_index(workspace, object, field)
    }
    fn lookup(
        &self,
        workspace: &str,
        object: &ObjectDef,
        field: &str,
        values: &[Value],
        read: &[String],
    ) -> weir_engine::Result<Vec<Vec<Found>>> {
        self.inner.lookup(workspace, object, field, values, read)
    }
    fn get(&self, workspace: &str, object: &ObjectDef, ids: &[RecordId]) -> weir_engine::Result<Vec<Option<Record>>> {
        self.inner.get(workspace, object, ids)
    }
    fn page(
        &self,
        workspace: &str,
        object: &ObjectDef,
        filters: &[(String, Value)],
        before: Option<RecordId>,
        limit: usize,
    ) -> weir_engine::Result<Vec<Record>> {
        self.inner.page(workspace, object, filters, before, limit)
    }
    fn commit(&self, workspace: &str, object: &str, batch: &WriteBatch) -> weir_engine::Result<()> {
        let n = {
            let mut commits = self.commits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            commits.push(batch.creates.len() + batch.updates.len());
            commits.len()
        };
        if self.failing == Some(n) {
            return Err(weir_engine::Error::store(
                weir_engine::error::StoreFault::Unavailable,
                "disk I/O error",
            ));
        }
        self.inner.commit(workspace, object, batch)
    }
    fn revoke(&self, execution_id: &str) -> weir_engine::Result<()> {
        self.inner.revoke(execution_id)
    }
    fn count(&self, workspace: &str, object: &str) -> weir_engine::Result<u64> {
        self.inner.count(workspace, object)
    }
    fn snapshot(&self) -> weir_engine::Result<Arc<dyn RecordSnapshot>> {
        Ok(Arc::new(RecordingSnapshot {
            inner: self.inner.snapshot()?,
            scans: self.scans.clone(),
        }))
    }
}

/// A snapshot that records every scan of it.
struct RecordingSnapshot {
    inner: Arc<dyn RecordSnapshot>,
    scans: Arc<Mutex<Vec<(String, Scan, usize)>>>,
}

impl RecordSnapshot for RecordingSnapshot {
    fn scan(
        &self,
        workspace: &str,
        object: &ObjectDef,
        scan: &Scan,
        each: &mut dyn FnMut(RecordBatch) -> bool,
    ) -> weir_engine::Result<()> {
        let mut handed = 0;
        let read = self.inner.scan(workspace, object, scan, &mut |batch| {
            handed += batch.num_rows();
            each(batch)
        });
        self.scans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((object.name.clone(), scan.clone(), handed));
        read
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_committed_in_chunks_of_the_load_batch_size() {
    let store = Arc::new(Recording::new());
    let csv = "email,n\na@x.io,1\nb@x.io,2\nc@x.io,3\nd@x.io,4\ne@x.io,5\n";
    let script = "CREATE VIEW output.people AS SELECT email, n FROM input.data";
    let settings = RunSettings {
        threads: 1,
        load_batch_size: 2,
        ..RunSettings::default()
    };
    let o = load_people(store.clone(), csv, script, settings).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    // One SQL batch of five rows, loaded and committed two rows at a time.
    let commits = store
        .commits
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(commits, vec![2, 2, 1]);
    assert_eq!(o.json()["step_progress"][4]["steps"][0]["created"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_records_a_script_reads_are_scanned() {
    let store = Arc::new(Recording::new());
    let csv = "email\na@x.io\nb@x.io\n";
    let plain = "CREATE VIEW output.people AS SELECT email FROM input.data";
    let o = load_people(store.clone(), csv, plain, RunSettings::default()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert!(store.scans().is_empty(), "a script without records.* reads no records");

    // A script joining its input against what is loaded reads that object.
    let joins = "CREATE VIEW output.people AS SELECT d.email FROM input.data d \
                 LEFT JOIN records.contact c ON c.email = d.email WHERE c.id IS NULL";
    let o = load_people(store.clone(), "email\na@x.io\nc@x.io\n", joins, RunSettings::default()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(store.objects_scanned(), ["contact"]);
    let doc = o.json();
    assert_eq!(
        doc["step_progress"][4]["steps"][0]["created"], 1,
        "only c@x.io is new: {doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reads_only_the_columns_and_records_a_script_asks_for() {
    let store = Arc::new(Recording::new());
    let plain = "CREATE VIEW output.people AS SELECT email FROM input.data";
    let o = load_people(
        store.clone(),
        "email\na@x.io\nb@x.io\nc@x.io\n",
        plain,
        RunSettings::default(),
    )
    .await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);

    let filtered = "CREATE VIEW output.people AS SELECT c.email FROM records.contact c \
                    WHERE c.email = 'b@x.io' OR c.email IN ('c@x.io')";
    let o = load_people(store.clone(), "email\nz@x.io\n", filtered, RunSettings::default()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    let scans = store.scans();
    let (object, scan, handed) = scans.last().unwrap_or_else(|| panic!("no scan"));
    assert_eq!(object, "contact");
    assert_eq!(scan.fields, ["email"], "only the column the script uses");
    assert_eq!(
        scan.conditions,
        [Condition::In(
            "email".into(),
            vec![Value::Text("b@x.io".into()), Value::Text("c@x.io".into())]
        )],
        "the WHERE reaches the store"
    );
    assert_eq!(*handed, 2, "the store applied it");
    assert_eq!(o.json()["step_progress"][4]["steps"][0]["updated"], 2);

    let ranged =
        "CREATE VIEW output.people AS SELECT email FROM records.contact WHERE email > 'a@x.io' AND name IS NULL";
    let o = load_people(store.clone(), "email\nz@x.io\n", ranged, RunSettings::default()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    let scans = store.scans();
    let (_, scan, handed) = scans.last().unwrap_or_else(|| panic!("no scan"));
    assert_eq!(
        scan.conditions,
        [
            Condition::Compare("email".into(), Comparison::Gt, Value::Text("a@x.io".into())),
            Condition::Null("name".into(), true),
        ]
    );
    assert_eq!(*handed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_is_read_as_the_script_goes_not_whole() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(Recording::over(
        SqliteStore::open(&dir.path().join("records.db")).unwrap_or_else(|e| panic!("{e}")),
    ));
    let objects =
        Objects::from_toml("[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
    let contact = &objects.objects[0];
    store.ensure_object("w", contact).unwrap_or_else(|e| panic!("{e}"));
    const RECORDS: usize = 100_000;
    let creates = (0..RECORDS)
        .map(|i| weir_engine::store::Write {
            id: RecordId::now_v7(),
            values: vec![Some(Value::Text(format!("u{i}@x.io")))],
        })
        .collect();
    let batch = WriteBatch {
        fields: vec!["email".into()],
        creates,
        ..WriteBatch::default()
    };
    store.commit("w", "contact", &batch).unwrap_or_else(|e| panic!("{e}"));

    // `lower(...)` stays with DataFusion, so the limit cannot reach the
    // store: the read stops because the query stops asking.
    let script = "CREATE VIEW output.people AS SELECT email FROM records.contact \
                  WHERE lower(email) LIKE '%@x.io' LIMIT 3";
    let settings = RunSettings {
        threads: 1,
        ..RunSettings::default()
    };
    let o = load_people(store.clone(), "email\nz@x.io\n", script, settings).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(o.json()["step_progress"][4]["steps"][0]["updated"], 3);
    // The read ends on its own thread once the query has let it go.
    let started = std::time::Instant::now();
    while store.scans().is_empty() && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let scans = store.scans();
    let (_, scan, handed) = scans.last().unwrap_or_else(|| panic!("no scan"));
    assert_eq!(scan.limit, None);
    assert!(
        *handed < RECORDS / 2,
        "{handed} of {RECORDS} records read for three rows: the object was read whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_repeated_across_commits_load_as_if_one_after_the_other() {
    // A file store: lookups read on their own connection while the chunk
    // before commits on the writer's.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(SqliteStore::open(&dir.path().join("records.db")).unwrap_or_else(|e| panic!("{e}")));
    let csv = "email,n\na@x.io,1\na@x.io,2\nb@x.io,3\na@x.io,4\nb@x.io,5\nc@x.io,6\nc@x.io,7\n";
    let script = "CREATE VIEW output.people AS SELECT email, n FROM input.data";
    let settings = RunSettings {
        threads: 1,
        load_batch_size: 1,
        ..RunSettings::default()
    };
    let o = load_people(store.clone(), csv, script, settings).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    let doc = o.json();
    let counts = &doc["step_progress"][4]["steps"][0];
    assert_eq!(counts["created"], 3, "{doc}");
    assert_eq!(counts["updated"], 4, "{doc}");
    assert_eq!(store.count("w", "contact").unwrap_or_else(|e| panic!("{e}")), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_commit_leaves_the_counts_of_the_commits_before_it() {
    // The third chunk is decided while the second commits, and fails.
    let store = Arc::new(Recording {
        failing: Some(2),
        ..Recording::new()
    });
    let csv = "email,n\na@x.io,1\nb@x.io,2\nc@x.io,3\nd@x.io,4\ne@x.io,5\n";
    let script = "CREATE VIEW output.people AS SELECT email, n FROM input.data";
    let settings = RunSettings {
        threads: 1,
        load_batch_size: 2,
        ..RunSettings::default()
    };
    let o = load_people(store.clone(), csv, script, settings).await;
    assert_eq!(o.status(), "failed");
    assert_eq!(o.code().as_deref(), Some("store_error"), "{:?}", o.doc.error);
    let doc = o.json();
    let counts = &doc["step_progress"][4]["steps"][0];
    assert_eq!(counts["created"], 2, "only the first commit landed: {doc}");
    assert_eq!(counts["total"], 2, "{doc}");
    assert_eq!(store.count("w", "contact").unwrap_or_else(|e| panic!("{e}")), 2);
}

/// A row the load could not write (a dropdown value that is no option)
/// is `failed` in the report, as the summary counts it; one a rule left
/// out is `skipped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_failed_and_skipped_load_rows_as_the_summary_counts_them() {
    let objects = Objects::from_toml(
        "[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\nunique = true\n\
         [[objects.fields]]\nname = \"stage\"\ntype = \"dropdown\"\noptions = [\"Lead\", \"Customer\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let store: Arc<dyn RecordStore> = Arc::new(SqliteStore::in_memory().unwrap_or_else(|e| panic!("{e}")));
    let connector_toml = "[[variables]]\nname = \"email\"\nscope = \"people\"\ncolumn = \"email\"\ntype = \"email\"\n\
        [[variables]]\nname = \"stage\"\nscope = \"people\"\ncolumn = \"stage\"\ntype = \"string\"\n\
        [[loads]]\norder = 1\nscope = \"people\"\nobject = \"contact\"\n\
        [[loads.match]]\nfield = \"email\"\nvariable = \"email\"\nsingle_match = \"do_not_upload\"\n\
        [[loads.fields]]\nfield = \"stage\"\nvariables = [\"stage\"]\n";
    let csv = "email,stage\na@x.io,Lead\nb@x.io,Nope\na@x.io,Customer\n";
    let (_dir, path) = input("people.csv", csv.as_bytes());
    let o = run_with(
        connector(connector_toml),
        "CREATE VIEW output.people AS SELECT email, stage FROM input.data",
        Some(InputFile {
            path,
            name: "people.csv".into(),
        }),
        CancellationToken::new(),
        Some(Records {
            store,
            workspace: "w".into(),
            objects,
        }),
        RunSettings {
            threads: 1,
            ..RunSettings::default()
        },
    )
    .await;
    let doc = o.json();
    let load = &doc["step_progress"][4]["steps"][0];
    assert_eq!(
        (load["failed"].as_u64(), load["skipped"].as_u64()),
        (Some(1), Some(1)),
        "{doc}"
    );
    use calamine::Reader;
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook(o.out.path().join("report.xlsx")).unwrap_or_else(|e| panic!("{e}"));
    let sheet = book.worksheet_range("people").unwrap_or_else(|e| panic!("{e}"));
    let statuses: Vec<(String, String)> = sheet
        .rows()
        .skip(1)
        .map(|r| (r[0].to_string(), r[2].to_string()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("2".to_string(), "failed".to_string()),
            ("3".to_string(), "skipped".to_string())
        ],
        "{statuses:?}"
    );
}
