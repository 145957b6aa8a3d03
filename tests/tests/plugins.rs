//! Wasm transform steps through the engine: every example plugin's
//! behaviour on real rows, and every hostile plugin ending its run with the
//! right code while the process stays healthy for the next run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use tokio_util::sync::CancellationToken;
use weir_engine::objects::Objects;
use weir_engine::pipeline::{InputFile, Records, RunSettings};
use weir_engine::store::{RecordStore, SqliteStore};
use weir_tests::{Outcome, Run, connector, input, plugin_dir, plugins_from, run_full};

const PEOPLE: &str = r#"id,name,email,phone,country,payload
1,Ada,ada@example.com,(202) 555-0143,US,"{""address"": {""city"": ""Berlin"", ""zip"": ""10115""}, ""tags"": [""vip"", ""new""]}"
2,Grace,grace@example.com,+44 20 7946 0958,GB,"{""address"": {""city"": ""London""}, ""tags"": []}"
3,Linus,linus@example.com,12,FI,not json
4,Ada Again,ADA@example.com,(202) 555-0199,US,"{""address"": null}"
"#;

/// Variables and a load of `columns` (text) into object `item` (field
/// `f_<column>`), matched by `f_id`, so that the test can read back exactly what reached the records.
fn load_all(columns: &[&str]) -> (String, Objects) {
    let mut toml = String::new();
    let mut objects = String::from("[[objects]]\nname = \"item\"\n");
    for c in columns {
        toml.push_str(&format!(
            "[[variables]]\nname = \"{c}\"\nscope = \"people\"\ncolumn = \"{c}\"\ntype = \"string\"\n"
        ));
        objects.push_str(&format!(
            "[[objects.fields]]\nname = \"f_{c}\"\ntype = \"text\"\n{}",
            if *c == "id" { "unique = true\n" } else { "" }
        ));
    }
    toml.push_str(
        "[[loads]]\norder = 1\nscope = \"people\"\nobject = \"item\"\n  [[loads.match]]\n  field = \"f_id\"\n  variable = \"id\"\n  no_match = \"create_new\"\n  single_match = \"update_current\"\n  multiple_match = \"do_not_upload\"\n",
    );
    for c in columns {
        toml.push_str(&format!(
            "  [[loads.fields]]\n  field = \"f_{c}\"\n  variables = [\"{c}\"]\n"
        ));
    }
    let objects = Objects::from_toml(&objects).unwrap_or_else(|e| panic!("{e}"));
    (toml, objects)
}

/// What a run with transforms did: the outcome and the loaded rows.
struct Ran {
    outcome: Outcome,
    /// Loaded rows, by `id`, as column → text.
    rows: Vec<Vec<(String, Option<String>)>>,
    elapsed: Duration,
}

impl Ran {
    fn column(&self, name: &str) -> Vec<Option<String>> {
        self.rows
            .iter()
            .map(|r| r.iter().find(|(c, _)| c == name).and_then(|(_, v)| v.clone()))
            .collect()
    }

    fn step(&self, i: usize) -> serde_json::Value {
        let doc = self.outcome.json();
        doc["step_progress"]
            .as_array()
            .and_then(|s| s.iter().find(|p| p["stage"] == "transform"))
            .map(|p| p["steps"][i].clone())
            .unwrap_or_default()
    }

    fn error(&self) -> serde_json::Value {
        self.outcome.json()["error"].clone()
    }
}

/// Runs `transforms` (TOML) on `csv` with the plugin crates `plugins`
/// installed, loading `columns` of the final rows.
async fn run_transforms(
    transforms: &str,
    plugins: &[&str],
    csv: &str,
    columns: &[&str],
    settings: RunSettings,
    cancel: CancellationToken,
) -> Ran {
    let dir = plugin_dir(plugins);
    let (loads, objects) = load_all(columns);
    let store: Arc<dyn RecordStore> = Arc::new(SqliteStore::in_memory().unwrap_or_else(|e| panic!("{e}")));
    let (_input, path) = input("people.csv", csv.as_bytes());
    let started = Instant::now();
    let outcome = run_full(Run {
        connector: connector(&format!("{transforms}\n{loads}")),
        script: "CREATE VIEW output.people AS SELECT * FROM input.data".into(),
        input: Some(InputFile {
            path,
            name: "people.csv".into(),
        }),
        cancel,
        records: Some(Records {
            store: store.clone(),
            workspace: "w".into(),
            objects: objects.clone(),
        }),
        plugins: Some(plugins_from(dir.path())),
        settings,
        secrets: Default::default(),
    })
    .await;
    let elapsed = started.elapsed();
    let object = objects.get("item").unwrap_or_else(|| panic!("no item object"));
    let batch = store.scan_all("w", object).unwrap_or_else(|e| panic!("{e}"));
    Ran {
        outcome,
        rows: rows_by_id(&batch, columns),
        elapsed,
    }
}

fn rows_by_id(batch: &RecordBatch, columns: &[&str]) -> Vec<Vec<(String, Option<String>)>> {
    let mut rows: Vec<Vec<(String, Option<String>)>> = (0..batch.num_rows())
        .map(|r| {
            columns
                .iter()
                .map(|c| {
                    let array = batch
                        .column_by_name(&format!("f_{c}"))
                        .unwrap_or_else(|| panic!("no column f_{c}"));
                    let text = array.as_string::<i32>();
                    (c.to_string(), text.is_valid(r).then(|| text.value(r).to_string()))
                })
                .collect()
        })
        .collect();
    rows.sort_by_key(|r| r[0].1.clone().unwrap_or_default().parse::<u64>().unwrap_or(u64::MAX));
    rows
}

fn settings() -> RunSettings {
    RunSettings {
        threads: 1,
        ..RunSettings::default()
    }
}

async fn simple(transforms: &str, plugins: &[&str], columns: &[&str]) -> Ran {
    run_transforms(
        transforms,
        plugins,
        PEOPLE,
        columns,
        settings(),
        CancellationToken::new(),
    )
    .await
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_normalize_writes_e164_and_refuses_what_is_not_a_number() {
    let ran = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"phone-normalize@0.1.0\"\nconfig = { column = \"phone\", default_region = \"US\" }\n",
        &["phone-normalize"],
        &["id", "phone"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "partial_success", "{:#}", ran.outcome.json());
    assert_eq!(ran.column("id"), some(&["1", "2", "4"]));
    assert_eq!(
        ran.column("phone"),
        some(&["+12025550143", "+442079460958", "+12025550199"])
    );
    let step = ran.step(0);
    assert_eq!(step["plugin"], "phone-normalize@0.1.0");
    assert_eq!(
        (
            step["rows_in"].as_u64(),
            step["rows_out"].as_u64(),
            step["rejected"].as_u64()
        ),
        (Some(4), Some(3), Some(1))
    );
    let rejected = ran.outcome.rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(&rejected[0][0], "transform");
    assert_eq!(&rejected[0][2], "3");
    assert!(
        rejected[0][4].contains("`12` is not a valid phone number"),
        "{:?}",
        rejected[0]
    );
    assert!(rejected[0][4].contains("phone-normalize@0.1.0"), "{:?}", rejected[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_fail_run_fails_at_the_first_refused_row() {
    let ran = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"phone-normalize@0.1.0\"\nconfig = { column = \"phone\" }\non_error = \"fail_run\"\n",
        &["phone-normalize"],
        &["id"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "failed");
    assert_eq!(ran.error()["code"], "plugin_trap");
    assert_eq!(ran.error()["stage"], "transform");
    assert_eq!(ran.error()["plugin"], "phone-normalize@0.1.0");
    let message = ran.error()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("refused row 3") && message.contains("fail_run"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_filter_keeps_only_the_matching_rows() {
    let ran = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"row-filter@0.1.0\"\nconfig = { column = \"country\", op = \"in\", value = [\"US\", \"FI\"] }\n",
        &["row-filter"],
        &["id", "country"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "success", "{:#}", ran.outcome.json());
    assert_eq!(ran.column("id"), some(&["1", "3", "4"]));
    let step = ran.step(0);
    assert_eq!(
        (step["rows_in"].as_u64(), step["rows_out"].as_u64()),
        (Some(4), Some(3))
    );

    let numeric = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"row-filter@0.1.0\"\nconfig = { column = \"id\", op = \"ge\", value = 3 }\n",
        &["row-filter"],
        &["id"],
    )
    .await;
    assert_eq!(numeric.column("id"), some(&["3", "4"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_flatten_turns_paths_into_columns_and_refuses_rows_that_are_not_json() {
    let ran = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"json-flatten@0.1.0\"\nconfig = { column = \"payload\", fields = { city = \"address.city\", zip = \"address.zip\", first_tag = \"tags.0\" } }\n",
        &["json-flatten"],
        &["id", "city", "zip", "first_tag"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "partial_success", "{:#}", ran.outcome.json());
    assert_eq!(ran.column("id"), some(&["1", "2", "4"]));
    assert_eq!(
        ran.column("city"),
        vec![Some("Berlin".into()), Some("London".into()), None]
    );
    assert_eq!(ran.column("zip"), vec![Some("10115".into()), None, None]);
    assert_eq!(ran.column("first_tag"), vec![Some("vip".into()), None, None]);
    let rejected = ran.outcome.rejected();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0][4].contains("is not JSON"), "{:?}", rejected[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_keeps_one_row_per_key_across_batches_and_emits_at_the_end() {
    // Batches of two rows, so duplicates meet across batches.
    let settings = RunSettings {
        threads: 1,
        batch_size: 2,
        ..RunSettings::default()
    };
    let ran = run_transforms(
        "[[transforms]]\nscope = \"people\"\nplugin = \"dedupe@0.1.0\"\nconfig = { key = \"email\", keep = \"last\", ignore_case = true }\n",
        &["dedupe"],
        PEOPLE,
        &["id", "name"],
        settings,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ran.outcome.status(), "success", "{:#}", ran.outcome.json());
    // Ada's two rows share an email (case aside); the last one wins.
    assert_eq!(ran.column("id"), some(&["2", "3", "4"]));
    assert_eq!(ran.column("name"), some(&["Grace", "Linus", "Ada Again"]));
    let step = ran.step(0);
    assert_eq!(
        (step["rows_in"].as_u64(), step["rows_out"].as_u64()),
        (Some(4), Some(3))
    );
    assert!(
        ran.outcome
            .logs
            .iter()
            .any(|l| l.contains("dropped 1 duplicate rows") && l.contains("dedupe@0.1.0")),
        "{:?}",
        ran.outcome.logs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_in_order_each_on_the_schema_the_one_before_declared() {
    // The filter reads `city`, which only exists after the flattener.
    let ran = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"json-flatten@0.1.0\"\nconfig = { column = \"payload\", fields = { city = \"address.city\" } }\n\
         [[transforms]]\nscope = \"people\"\nplugin = \"row-filter@0.1.0\"\nconfig = { column = \"city\", op = \"eq\", value = \"London\" }\n",
        &["json-flatten", "row-filter"],
        &["id", "city"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "partial_success", "{:#}", ran.outcome.json());
    assert_eq!(ran.column("id"), some(&["2"]));
    assert_eq!(
        (ran.step(0)["rows_out"].as_u64(), ran.step(1)["rows_in"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(ran.step(1)["rows_out"].as_u64(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_plugin_refuses_fails_with_invalid_config() {
    let ran = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"row-filter@0.1.0\"\nconfig = { column = \"nope\", op = \"eq\", value = 1 }\n",
        &["row-filter"],
        &["id"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "failed");
    assert_eq!(ran.error()["code"], "invalid_config");
    assert_eq!(ran.error()["plugin"], "row-filter@0.1.0");
    let message = ran.error()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("no column `nope`") && message.contains("transforms[0] on people"),
        "{message}"
    );
    assert!(ran.rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_plugin_or_a_file_that_is_no_component_is_refused_clearly() {
    let missing = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"phone-normalize@9.9.9\"\nconfig = { column = \"phone\" }\n",
        &["phone-normalize"],
        &["id"],
    )
    .await;
    assert_eq!(missing.error()["code"], "invalid_connector");
    let message = missing.error()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("plugins/phone-normalize-9.9.9.wasm"), "{message}");

    // What the file is, plainly, on one line: no byte dump, the step named.
    for (bytes, says) in [
        (&b"PK\x03\x04 a zip, not wasm"[..], "not WebAssembly at all"),
        (
            &b"\0asm\x01\0\0\0"[..],
            "a core WebAssembly module; build the plugin for the `wasm32-wasip2` target",
        ),
        (
            &b"\0asm\x0d\0\x01\0 cut short"[..],
            "damaged or of a kind Weir cannot read",
        ),
    ] {
        let dir = plugin_dir(&[]);
        std::fs::write(dir.path().join("fake-0.1.0.wasm"), bytes).unwrap_or_else(|e| panic!("{e}"));
        let (_input, path) = input("people.csv", PEOPLE.as_bytes());
        let outcome = run_full(Run {
            connector: connector("[[transforms]]\nscope = \"people\"\nplugin = \"fake@0.1.0\"\n"),
            script: "CREATE VIEW output.people AS SELECT * FROM input.data".into(),
            input: Some(InputFile {
                path,
                name: "people.csv".into(),
            }),
            cancel: CancellationToken::new(),
            records: None,
            plugins: Some(plugins_from(dir.path())),
            settings: settings(),
            secrets: Default::default(),
        })
        .await;
        assert_eq!(outcome.code().as_deref(), Some("plugin_protocol"));
        let message = outcome.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.starts_with("transforms[0] on people: plugin fake@0.1.0: not a WebAssembly component: "),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
        assert!(!message.contains('\n') && !message.contains("0x61"), "{message}");
    }
}

/// A plugin that takes long to compile on its first use says so in the
/// run's log, once; a second use finds it compiled.
#[test]
fn compiling_a_plugin_is_announced_in_the_log() {
    use weir_engine::plugin::{PluginRuntime, PluginSettings};
    use weir_engine::runlog::Collect;
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let runtime = PluginRuntime::new(PluginSettings {
        cache_dir: Some(cache.path().to_path_buf()),
        announce_compile_after: std::time::Duration::ZERO,
        ..PluginSettings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let wasm = std::fs::read(weir_tests::plugin_wasm("phone-normalize")).unwrap_or_else(|e| panic!("{e}"));
    let log = Collect::default();
    runtime
        .load_logged("phone-normalize@0.1.0", &wasm, &log)
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = log.take();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("info: compiling plugin phone-normalize@0.1.0")
                && l.contains("later runs use the cached build")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("info: plugin phone-normalize@0.1.0 ready in ")),
        "{lines:?}"
    );
    runtime
        .load_logged("phone-normalize@0.1.0", &wasm, &log)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        log.take(),
        Vec::<String>::new(),
        "a compiled plugin is not announced again"
    );
}

/// Runs the hostile plugin in `mode` (and `phase`), then checks that a good
/// plugin still runs in this process afterwards.
async fn hostile(mode: &str, phase: &str, extra: &str, limits: &str) -> Ran {
    let ran = run_transforms(
        &format!(
            "{limits}\n[[transforms]]\nscope = \"people\"\nplugin = \"hostile@0.1.0\"\nconfig = {{ mode = \"{mode}\", phase = \"{phase}\"{extra} }}\n"
        ),
        &["hostile"],
        PEOPLE,
        &["id"],
        settings(),
        CancellationToken::new(),
    )
    .await;
    let after = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"identity@0.1.0\"\n",
        &["identity"],
        &["id"],
    )
    .await;
    assert_eq!(
        after.outcome.status(),
        "success",
        "a good plugin after `{mode}`: {:#}",
        after.outcome.json()
    );
    assert_eq!(after.column("id"), some(&["1", "2", "3", "4"]));
    ran
}

fn assert_failed(ran: &Ran, code: &str, words: &[&str]) {
    assert_eq!(ran.outcome.status(), "failed", "{:#}", ran.outcome.json());
    assert_eq!(ran.error()["code"], code, "{:#}", ran.error());
    let error = ran.error();
    let message = error["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(message.contains(w), "`{w}` not in: {message}");
    }
    assert!(ran.rows.is_empty(), "rows were loaded: {:?}", ran.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_traps_at_the_memory_limit() {
    let ran = hostile("memory", "process", "", "").await;
    assert_failed(&ran, "plugin_trap", &["memory limit of 256", "hostile@0.1.0"]);
    assert_eq!(ran.error()["plugin"], "hostile@0.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_traps() {
    let ran = hostile("recursion", "process", "", "").await;
    assert_failed(&ran, "plugin_trap", &["the plugin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_with_the_plugins_own_message() {
    let ran = hostile("panic", "process", "", "").await;
    assert_failed(
        &ran,
        "plugin_trap",
        &["aborted", "the hostile plugin panics on purpose"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_trap_fails_in_init_too() {
    let ran = hostile("trap", "init", "", "").await;
    assert_failed(&ran, "plugin_trap", &["aborted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_arrow_a_wrong_schema_and_a_bad_row_index_are_protocol_errors() {
    let ran = hostile("bad_arrow", "process", "", "").await;
    assert_failed(&ran, "plugin_protocol", &["malformed Arrow IPC"]);
    let ran = hostile("wrong_schema", "process", "", "").await;
    assert_failed(&ran, "plugin_protocol", &["surprise Int64", "init declared"]);
    let ran = hostile("bad_row_index", "process", "", "").await;
    assert_failed(&ran, "plugin_protocol", &["rejected row 4294967295", "has 4 rows"]);
    let ran = hostile("double_reject", "process", "", "").await;
    assert_failed(&ran, "plugin_protocol", &["rejected row 0 twice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_has_no_files_no_environment_and_no_network() {
    let cwd_marker = std::env::current_dir()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("weir-escape.txt");
    let ran = hostile("files", "process", "", "").await;
    assert_failed(
        &ran,
        "plugin_trap",
        &[
            "reading /etc/passwd:",
            "writing weir-escape.txt:",
            "listing .:",
            "0 environment variables",
        ],
    );
    let message = ran.error()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        !message.contains("bytes of /etc/passwd") && !message.contains("wrote"),
        "{message}"
    );
    assert!(!cwd_marker.exists());

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let ran = hostile("network", "process", &format!(", address = \"{address}\""), "").await;
    assert_failed(&ran, "plugin_trap", &[&format!("connecting to {address}:")]);
    assert!(listener.accept().is_err(), "the plugin reached the listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_flood_is_capped_in_the_log_and_the_run_goes_on() {
    let ran = hostile("stdout_flood", "process", "", "").await;
    assert_eq!(ran.outcome.status(), "success", "{:#}", ran.outcome.json());
    assert_eq!(ran.column("id"), some(&["1", "2", "3", "4"]));
    let plugin_lines: Vec<&String> = ran
        .outcome
        .logs
        .iter()
        .filter(|l| l.contains("hostile@0.1.0"))
        .collect();
    assert_eq!(
        plugin_lines.len(),
        1001,
        "1000 lines and one saying how many were dropped"
    );
    assert!(plugin_lines[0].contains("stdout: 00000000 xxx"), "{}", plugin_lines[0]);
    assert!(
        plugin_lines[1000].contains("1099000 more lines of plugin output were dropped"),
        "{}",
        plugin_lines[1000]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_may_not_sleep_where_no_interrupt_could_reach_it() {
    let started = Instant::now();
    let ran = hostile("sleep", "process", "", "").await;
    assert_failed(&ran, "plugin_trap", &["sleep or wait on a clock"]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_interrupted_at_the_deadline() {
    let ran = hostile("loop", "process", "", "[limits]\nmax_runtime = \"1s\"").await;
    assert_failed(&ran, "limit_exceeded", &["max_runtime"]);
    assert!(ran.elapsed < Duration::from_secs(10), "took {:?}", ran.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_interrupted_by_a_cancel_in_process_and_in_init() {
    for phase in ["process", "init"] {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let canceler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            trigger.cancel();
            Instant::now()
        });
        let ran = run_transforms(
            &format!(
                "[[transforms]]\nscope = \"people\"\nplugin = \"hostile@0.1.0\"\nconfig = {{ mode = \"loop\", phase = \"{phase}\" }}\n"
            ),
            &["hostile"],
            PEOPLE,
            &["id"],
            settings(),
            cancel,
        )
        .await;
        let canceled_at = canceler.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ran.outcome.status(), "canceled", "{phase}: {:#}", ran.outcome.json());
        let after_cancel = canceled_at.elapsed();
        assert!(
            after_cancel < Duration::from_secs(5),
            "{phase}: ended {after_cancel:?} after the cancel"
        );
    }
    // The process is healthy: a good plugin runs.
    let after = simple(
        "[[transforms]]\nscope = \"people\"\nplugin = \"identity@0.1.0\"\n",
        &["identity"],
        &["id"],
    )
    .await;
    assert_eq!(after.outcome.status(), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_found_by_its_content_hash() {
    let wasm = std::fs::read(weir_tests::plugin_wasm("identity")).unwrap_or_else(|e| panic!("{e}"));
    let hex: String = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&wasm))
    };
    let ran = simple(
        &format!("[[transforms]]\nscope = \"people\"\nplugin = \"sha256:{hex}\"\n"),
        &["identity"],
        &["id"],
    )
    .await;
    assert_eq!(ran.outcome.status(), "success", "{:#}", ran.outcome.json());
    assert_eq!(ran.column("id"), some(&["1", "2", "3", "4"]));
}

/// The in-memory compile cache keeps the most recently used components up
/// to its size and drops the oldest; a dropped one compiles again.
#[test]
fn the_compile_cache_keeps_the_most_recently_used_components() {
    use std::sync::Arc;
    use weir_engine::plugin::{PluginRuntime, PluginSettings};
    let runtime = PluginRuntime::new(PluginSettings {
        max_compiled: 2,
        ..PluginSettings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Three different components that compile quickly: the small one with
    // a custom section of its own appended (id 0, size, name).
    let base = std::fs::read(weir_tests::plugin_wasm("hostile")).unwrap_or_else(|e| panic!("{e}"));
    let variant = |name: &[u8; 6]| {
        let mut bytes = base.clone();
        bytes.extend([0u8, 7, 6]);
        bytes.extend(name);
        bytes
    };
    let (a, b, c) = (variant(b"cache1"), variant(b"cache2"), variant(b"cache3"));
    let load = |bytes: &[u8]| runtime.load("p", bytes).unwrap_or_else(|e| panic!("{e}"));
    let first_a = load(&a);
    let first_b = load(&b);
    assert!(Arc::ptr_eq(&first_a, &load(&a)), "a cached component is reused");
    // `a` was used last: a third component drops `b`, not `a`.
    load(&c);
    assert!(Arc::ptr_eq(&first_a, &load(&a)));
    assert!(
        !Arc::ptr_eq(&first_b, &load(&b)),
        "`b` was the oldest and compiled again"
    );
}
