//! `weir run` as a user runs it: the example connectors, `--json`, exit
//! codes, zip packages, `--input`, and clear errors for broken packages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weir(args: &[&str]) -> Output {
    weir_command(args)
        .output()
        .unwrap_or_else(|e| panic!("running weir: {e}"))
}

/// `weir` with `args`, run from the repository.
fn weir_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .args(args)
        .current_dir(repo())
        // Compiled plugins are cached here, not in the user's cache.
        .env("XDG_CACHE_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("cache"));
    command
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the execution document: {e}\n{}\n{}",
            stdout(o),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn help_says_what_weir_does_today() {
    let o = weir(&["--help"]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("weir serve") && text.contains("weir run"), "{text}");
    assert!(!text.contains("later"), "{text}");
}

#[test]
fn the_contacts_example_runs_with_a_summary() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        "examples/contacts-import",
        "--out",
        &out.path().to_string_lossy(),
    ]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.starts_with("contacts_import  partial_success"), "{text}");
    assert!(text.contains("contacts: 30 rows, 24 valid, 6 invalid"), "{text}");
    let csv = std::fs::read_to_string(out.path().join("output/contacts.csv")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(csv.lines().count(), 31);
    assert!(csv.starts_with("email,"), "the line is not an output column: {csv}");
    let mut rejected = csv::Reader::from_path(out.path().join("rejected.csv")).unwrap_or_else(|e| panic!("{e}"));
    // Each rejected contact at its line of the (CRLF) export: the last six.
    let lines: Vec<String> = rejected
        .records()
        .map(|r| r.map(|r| r[3].to_string()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(lines, ["26", "27", "28", "29", "30", "31"]);
    assert!(out.path().join("report.xlsx").exists());
}

#[test]
fn json_prints_the_execution_document() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        "examples/orders-summary",
        "--out",
        &out.path().to_string_lossy(),
        "--json",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc = json(&o);
    assert_eq!(doc["status"], "success");
    assert_eq!(doc["trigger_type"], "local");
    assert_eq!(doc["is_dry_run"], true);
    assert_eq!(doc["connector"]["api_name"], "orders_summary");
    let file_id = doc["source_file_id"].as_str().unwrap_or_default().to_string();
    assert!(uuid::Uuid::parse_str(&file_id).is_ok(), "{doc}");
    let stages: Vec<&str> = doc["step_progress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(stages, ["intake", "sql", "transform", "variables", "load"]);
    assert_eq!(doc["step_progress"][0]["status"], "completed");
    assert_eq!(doc["step_progress"][2]["status"], "skipped");
    // The same unchanged file keeps its id.
    let again = weir(&[
        "run",
        "examples/orders-summary",
        "--out",
        &out.path().join("again").to_string_lossy(),
        "--json",
        "--dry-run",
    ]);
    assert_eq!(json(&again)["source_file_id"], file_id.as_str());
}

fn connector_dir(script: &str, data: Option<(&str, &[u8])>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("connector.toml"),
        "api_name = \"t\"\ntype = \"spreadsheet\"\n[sql]\nfile = \"script.sql\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("script.sql"), script).unwrap_or_else(|e| panic!("{e}"));
    if let Some((name, bytes)) = data {
        std::fs::create_dir(dir.path().join("data")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("data").join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

#[test]
fn a_failed_run_exits_non_zero_with_the_error() {
    let dir = connector_dir(
        "CREATE VIEW output.a AS\nSELECT nope FROM input.data",
        Some(("x.csv", b"a\n1\n")),
    );
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        &dir.path().to_string_lossy(),
        "--out",
        &out.path().to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains("error: sql failed [sql_error] (line 2, column 8)"),
        "{text}"
    );
    // The failed run still leaves its report behind.
    assert!(out.path().join("report.xlsx").exists());
}

#[test]
fn input_overrides_data_and_zip_packages_run() {
    let dir = connector_dir(
        "CREATE VIEW output.a AS SELECT count(*) AS n FROM input.data",
        Some(("x.csv", b"a\n1\n")),
    );
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "a\n1\n2\n3\n").unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        &dir.path().to_string_lossy(),
        "--input",
        &other.to_string_lossy(),
        "--out",
        &out.path().to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let csv = std::fs::read_to_string(out.path().join("output/a.csv")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(csv, "n\n3\n");

    // The same directory as a zip.
    let zip_path = dir.path().join("package.zip");
    {
        let file = std::fs::File::create(&zip_path).unwrap_or_else(|e| panic!("{e}"));
        let mut z = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default();
        for name in ["connector.toml", "script.sql", "data/x.csv"] {
            z.start_file(name, opts).unwrap_or_else(|e| panic!("{e}"));
            z.write_all(&std::fs::read(dir.path().join(name)).unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        z.finish().unwrap_or_else(|e| panic!("{e}"));
    }
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        &zip_path.to_string_lossy(),
        "--out",
        &out.path().to_string_lossy(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["step_progress"][1]["scopes"][0]["rows"], 1);
}

#[test]
fn a_broken_package_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("connector.toml"),
        "api_name = \"t\"\ntype = \"spreadsheet\"\ncolour = 1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&["run", &dir.path().to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("connector.toml:3:1: colour: unknown key"), "{err}");
}

#[test]
fn loads_upsert_into_the_local_store_and_a_second_run_updates() {
    let csv = "company,domain,email,name\nAcme,acme.io,ada@acme.io,Ada\nAcme,acme.io,bob@acme.io,Bob\nGlobex,globex.com,ada@acme.io,Ada L.\n";
    let script = "CREATE VIEW output.people AS SELECT * FROM input.data;\n\
        CREATE VIEW output.known AS SELECT count(r.id) AS known FROM input.data d JOIN records.contact r ON r.email = d.email";
    let dir = connector_dir(script, Some(("people.csv", csv.as_bytes())));
    let toml = r#"api_name = "people"
type = "spreadsheet"
[sql]
file = "script.sql"
[[variables]]
name = "company"
scope = "people"
column = "company"
type = "string"
[[variables]]
name = "domain"
scope = "people"
column = "domain"
type = "string"
[[variables]]
name = "email"
scope = "people"
column = "email"
type = "email"
required = true
[[variables]]
name = "name"
scope = "people"
column = "name"
type = "string"
[[loads]]
order = 1
scope = "people"
object = "company"
record_id_variable = "company_id"
  [[loads.match]]
  field = "domain"
  variable = "domain"
  no_match = "create_new"
  single_match = "update_current"
  multiple_match = "do_not_upload"
  [[loads.fields]]
  field = "name"
  variables = ["company"]
  [[loads.fields]]
  field = "domain"
  variables = ["domain"]
[[loads]]
order = 2
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
  [[loads.fields]]
  field = "name"
  variables = ["name"]
  [[loads.fields]]
  field = "company"
  variables = ["company_id"]
"#;
    std::fs::write(dir.path().join("connector.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
    let objects = r#"[[objects]]
name = "company"
  [[objects.fields]]
  name = "domain"
  type = "text"
  unique = true
[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  unique = true
  [[objects.fields]]
  name = "company"
  type = "relation"
  object = "company"
"#;
    std::fs::write(dir.path().join("objects.toml"), objects).unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = out.path().join("crm.db");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            dir.path().to_str().unwrap_or_default(),
            "--out",
            out.path().to_str().unwrap_or_default(),
            "--db",
            db.to_str().unwrap_or_default(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = weir(&args);
        assert!(
            o.status.success(),
            "{}\n{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        json(&o)
    };
    let counts = |doc: &serde_json::Value, i: usize| {
        let s = &doc["step_progress"][4]["steps"][i];
        (
            s["created"].as_u64(),
            s["updated"].as_u64(),
            s["skipped"].as_u64(),
            s["failed"].as_u64(),
        )
    };
    // A dry run computes every outcome and writes nothing.
    let dry = run(&["--dry-run"]);
    assert_eq!(counts(&dry, 0), (Some(2), Some(1), Some(0), Some(0)), "{dry}");
    assert_eq!(counts(&dry, 1), (Some(2), Some(1), Some(0), Some(0)), "{dry}");
    // The first real run creates; rows with the same key inside the run update.
    let first = run(&[]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("output/known.csv")).unwrap_or_else(|e| panic!("{e}")),
        "known\n0\n"
    );
    assert_eq!(first["status"], "success");
    assert_eq!(counts(&first, 0), (Some(2), Some(1), Some(0), Some(0)), "{first}");
    assert_eq!(counts(&first, 1), (Some(2), Some(1), Some(0), Some(0)), "{first}");
    // The same input again only updates.
    let second = run(&[]);
    assert_eq!(counts(&second, 0), (Some(0), Some(3), Some(0), Some(0)), "{second}");
    assert_eq!(counts(&second, 1), (Some(0), Some(3), Some(0), Some(0)), "{second}");
    assert_eq!(second["step_progress"][4]["status"], "completed");
    // records.<object> is the store as the run started: nothing before the
    // first real run, every contact on the second.
    assert_eq!(
        std::fs::read_to_string(out.path().join("output/known.csv")).unwrap_or_else(|e| panic!("{e}")),
        "known\n3\n"
    );
}

const AIRPORTS: &str = r#"[[objects]]
name = "airport"
  [[objects.fields]]
  name = "iata"
  type = "text"
  unique = true
"#;

#[test]
fn a_rule_that_creates_carries_its_key_and_a_run_without_loads_reads_the_records() {
    let dir = connector_dir(
        "CREATE VIEW output.airports AS SELECT * FROM input.data",
        Some(("airports.csv", b"iata,city\nOSL,Oslo\nBGO,Bergen\n")),
    );
    // Matched on iata, which no mapping writes, with the rule's actions
    // left to their defaults.
    let toml = "api_name = \"airports\"\ntype = \"spreadsheet\"\n[sql]\nfile = \"script.sql\"\n\
        [[variables]]\nname = \"iata\"\nscope = \"airports\"\ncolumn = \"iata\"\ntype = \"string\"\n\
        [[variables]]\nname = \"city\"\nscope = \"airports\"\ncolumn = \"city\"\ntype = \"string\"\n\
        [[loads]]\norder = 1\nscope = \"airports\"\nobject = \"airport\"\n\
        [[loads.match]]\nfield = \"iata\"\nvariable = \"iata\"\n\
        [[loads.fields]]\nfield = \"name\"\nvariables = [\"city\"]\n";
    std::fs::write(dir.path().join("connector.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("objects.toml"), AIRPORTS).unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = out.path().join("store.db");
    let run = || {
        let o = weir(&[
            "run",
            &dir.path().to_string_lossy(),
            "--out",
            &out.path().to_string_lossy(),
            "--db",
            &db.to_string_lossy(),
            "--json",
        ]);
        assert!(
            o.status.success(),
            "{}\n{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        json(&o)
    };
    let step = |doc: &serde_json::Value| {
        let s = &doc["step_progress"][4]["steps"][0];
        (s["created"].as_u64(), s["updated"].as_u64())
    };
    assert_eq!(step(&run()), (Some(2), Some(0)));
    // The second run finds the records by the key they were created with.
    assert_eq!(step(&run()), (Some(0), Some(2)));

    // A connector without load steps reads the store's records of the
    // package's objects.
    std::fs::write(
        dir.path().join("connector.toml"),
        "api_name = \"report\"\ntype = \"spreadsheet\"\n[sql]\nfile = \"script.sql\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("script.sql"),
        "CREATE VIEW output.known AS SELECT iata, name FROM records.airport ORDER BY iata",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let report = run();
    assert_eq!(report["status"], "success", "{report}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("output/known.csv")).unwrap_or_else(|e| panic!("{e}")),
        "iata,name\nBGO,Bergen\nOSL,Oslo\n"
    );
}

#[test]
fn every_problem_of_a_package_is_reported_at_once() {
    let dir = connector_dir(
        "CREATE VIEW output.a AS SELECT * FROM input.data",
        Some(("a.csv", b"iata\nOSL\n")),
    );
    let toml = "api_name = \"t\"\ntype = \"spreadsheet\"\nbogus_key = 1\n[sql]\nfile = \"script.sql\"\n\
        [[variables]]\nname = \"iata\"\nscope = \"a\"\ncolumn = \"iata\"\ntype = \"string\"\n\
        [[loads]]\norder = 1\nscope = \"a\"\nobject = \"airprot\"\n  recod_id_variable = \"iata\"\n\
        [[loads.fields]]\nfield = \"iata\"\nvariables = [\"iata\"]\n";
    std::fs::write(dir.path().join("connector.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("objects.toml"), AIRPORTS).unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&["run", &dir.path().to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    // Each problem on a line of its own, where editors link to: the file,
    // line and column, the path as the API writes it, and the name meant.
    let lines: Vec<&str> = err.lines().map(str::trim).collect();
    assert!(lines.contains(&"connector.toml:3:1: bogus_key: unknown key"), "{err}");
    assert!(
        lines.contains(
            &"connector.toml:15:3: loads[0].recod_id_variable: unknown key; did you mean `record_id_variable`?"
        ),
        "{err}"
    );
    assert!(
        lines.contains(&"connector.toml:14:1: loads[0].object: there is no object `airprot`; did you mean `airport`?"),
        "{err}"
    );
}

/// The server refuses this schedule with the same paths
/// (`host/tests/server.rs::a_schedule_runs_each_tick_once_and_only_the_latest_of_missed_ones`).
#[test]
fn a_bad_cron_or_time_zone_is_refused_by_weir_run_as_by_the_server() {
    let dir = connector_dir("CREATE VIEW output.a AS SELECT * FROM input.schedule", None);
    let toml = "api_name = \"nightly\"\ntype = \"schedule\"\n[sql]\nfile = \"script.sql\"\n\
        [schedule]\ncron = \"every night\"\ntimezone = \"Mars/Base\"\n";
    std::fs::write(dir.path().join("connector.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&["run", &dir.path().to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().map(str::trim).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("connector.toml:6:")
            && l.contains("schedule.cron: `every night` is not a cron expression")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("connector.toml:7:")
            && l.contains("schedule.timezone: `Mars/Base` is not an IANA time zone")),
        "{err}"
    );
}

#[test]
fn loads_without_objects_are_a_clear_error() {
    let dir = connector_dir(
        "CREATE VIEW output.a AS SELECT a AS email FROM input.data",
        Some(("x.csv", b"a\nx@y.io\n")),
    );
    let toml = "api_name = \"t\"\ntype = \"spreadsheet\"\n[sql]\nfile = \"script.sql\"\n\
        [[variables]]\nname = \"email\"\nscope = \"a\"\ncolumn = \"email\"\ntype = \"email\"\n\
        [[loads]]\norder = 1\nscope = \"a\"\nobject = \"contact\"\n\
        [[loads.fields]]\nfield = \"email\"\nvariables = [\"email\"]\n";
    std::fs::write(dir.path().join("connector.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        &dir.path().to_string_lossy(),
        "--out",
        &out.path().to_string_lossy(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let doc = json(&o);
    assert_eq!(doc["error"]["code"], "invalid_connector");
    assert_eq!(doc["error"]["stage"], "load");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("objects.toml"),
        "{doc}"
    );
}

#[test]
fn the_crm_example_loads_then_updates() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let args = [
        "run",
        "examples/crm-load",
        "--out",
        out.path().to_str().unwrap_or_default(),
        "--json",
    ];
    let first = json(&weir(&args));
    let step = |doc: &serde_json::Value, i: usize| {
        let s = &doc["step_progress"][4]["steps"][i];
        [&s["created"], &s["updated"], &s["skipped"], &s["failed"]].map(|v| v.as_u64().unwrap_or(u64::MAX))
    };
    assert_eq!(first["status"], "partial_success", "{first}");
    assert_eq!(step(&first, 0), [4, 4, 0, 0]);
    assert_eq!(step(&first, 1), [6, 1, 0, 1]);
    let second = json(&weir(&args));
    assert_eq!(step(&second, 0), [0, 8, 0, 0]);
    assert_eq!(step(&second, 1), [0, 7, 0, 1]);
    let mut rejected = csv::Reader::from_path(out.path().join("rejected.csv")).unwrap_or_else(|e| panic!("{e}"));
    let reasons: Vec<String> = rejected
        .records()
        .filter_map(|r| r.ok())
        .map(|r| r[4].to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`Churned` is not one of Lead, Customer")),
        "{reasons:?}"
    );
}

/// The webhook example maps JSON bodies to orders and, with `unnest`, to
/// order lines; the body that is not JSON is one invalid row at its line.
#[test]
fn the_webhook_orders_example_maps_json_bodies_to_orders_and_lines() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let args = [
        "run",
        "examples/webhook-orders",
        "--out",
        out.path().to_str().unwrap_or_default(),
        "--json",
    ];
    let doc = json(&weir(&args));
    assert_eq!(doc["status"], "partial_success", "{doc}");
    let vars = &doc["step_progress"][3]["scopes"];
    let counts = |i: usize| [&vars[i]["total"], &vars[i]["valid"], &vars[i]["invalid"]].map(|v| v.as_u64());
    assert_eq!(counts(0), [Some(4), Some(3), Some(1)], "{doc}");
    assert_eq!(counts(1), [Some(5), Some(5), Some(0)], "{doc}");
    let step = |i: usize| {
        let s = &doc["step_progress"][4]["steps"][i];
        [&s["created"], &s["updated"], &s["skipped"], &s["failed"]].map(|v| v.as_u64().unwrap_or(u64::MAX))
    };
    assert_eq!(step(0), [2, 1, 0, 0]);
    assert_eq!(step(1), [3, 2, 0, 0]);
    let lines = std::fs::read_to_string(out.path().join("output/order_lines.csv")).unwrap_or_else(|e| panic!("{e}"));
    assert!(lines.contains("ord_1001,ord_1001/TEA-01,TEA-01,3,4.5\n"), "{lines}");
    let mut rejected = csv::Reader::from_path(out.path().join("rejected.csv")).unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(String, String)> = rejected
        .records()
        .filter_map(|r| r.ok())
        .map(|r| (r[3].to_string(), r[4].to_string()))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "3", "the delivery's line in the batch");
    assert!(
        rows[0]
            .1
            .contains("is not valid JSON (EOF while parsing a list at line 1, column 67) (variable `payload`)"),
        "{rows:?}"
    );
}

#[test]
fn keys_are_created_listed_and_revoked_in_a_data_directory() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().to_string_lossy().to_string();
    let created = weir(&[
        "keys",
        "create",
        "--data-dir",
        &data,
        "--workspace",
        "acme",
        "--role",
        "operator",
        "--name",
        "ci",
    ]);
    let text = stdout(&created);
    assert!(created.status.success(), "{text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let (id, secret) = (field("id:"), field("secret (shown once):"));
    assert!(secret.starts_with("weir_"), "{text}");
    let listed = stdout(&weir(&["keys", "list", "--data-dir", &data, "--workspace", "acme"]));
    assert!(listed.contains(&id) && listed.contains("operator\tactive"), "{listed}");
    assert!(!listed.contains(&secret), "a listing never shows the secret");
    let revoked = weir(&["keys", "revoke", "--data-dir", &data, "--workspace", "acme", &id]);
    assert!(revoked.status.success());
    let listed = stdout(&weir(&["keys", "list", "--data-dir", &data, "--workspace", "acme"]));
    assert!(listed.contains("operator\trevoked"), "{listed}");
    let bad = weir(&[
        "keys",
        "create",
        "--data-dir",
        &data,
        "--workspace",
        "acme",
        "--role",
        "root",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role `root`"));
    let nobody = weir(&["keys", "list", "--data-dir", &data, "--workspace", "nope"]);
    assert_eq!(nobody.status.code(), Some(2));
}

/// Copies plugin crates' components into `package/plugins/` under the
/// given file names.
fn install_plugins(package: &Path, plugins: &[(&str, &str)]) {
    std::fs::create_dir_all(package.join("plugins")).unwrap_or_else(|e| panic!("{e}"));
    for (name, file) in plugins {
        std::fs::copy(weir_tests::plugin_wasm(name), package.join("plugins").join(file))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// `weir run PACKAGE --json` into a fresh output directory.
fn run_json(package: &Path) -> (serde_json::Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&[
        "run",
        &package.display().to_string(),
        "--out",
        &out.path().display().to_string(),
        "--json",
    ]);
    (json(&o), out)
}

#[test]
fn plugin_check_validates_a_component_and_runs_it_on_a_file() {
    let (dir, csv) = {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv = dir.path().join("people.csv");
        std::fs::write(&csv, "id,phone\n1,(202) 555-0143\n2,12\n3,+44 20 7946 0958\n")
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, csv)
    };
    let wasm = weir_tests::plugin_wasm("phone-normalize");
    let wasm_arg = wasm.display().to_string();
    let csv_arg = csv.display().to_string();
    let o = weir(&[
        "plugin",
        "check",
        &wasm_arg,
        "--input",
        &csv_arg,
        "--config",
        r#"{"column":"phone"}"#,
    ]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("rows       3 in, 2 out, 1 refused"), "{text}");
    assert!(
        text.contains("+12025550143") && text.contains("+442079460958"),
        "{text}"
    );
    assert!(
        text.contains("refused row 2: `12` is not a valid phone number"),
        "{text}"
    );
    assert!(text.contains("ok         implements weir:transform@0.1.0"), "{text}");

    // A config the plugin refuses, as JSON: exit 1 with the code.
    let o = weir(&[
        "plugin",
        "check",
        &wasm_arg,
        "--input",
        &csv_arg,
        "--config",
        r#"{"column":"nope"}"#,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let summary = json(&o);
    assert!(
        summary["error"]
            .as_str()
            .unwrap_or_default()
            .contains("(invalid_config)"),
        "{summary}"
    );
    assert!(summary["instantiate_ms"].as_f64().is_some(), "{summary}");

    // Not a component: refused with the reason.
    let fake = dir.path().join("fake.wasm");
    std::fs::write(&fake, b"not wasm").unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&["plugin", "check", &fake.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("not a WebAssembly component"), "{}", stdout(&o));
}

#[test]
fn a_package_with_a_plugin_runs_it_from_its_plugins_directory() {
    // The file is named as the reference spells it (`name@version.wasm`);
    // the engine tests use the package form `name-version.wasm`.
    let dir = connector_dir(
        "CREATE VIEW output.people AS SELECT * FROM input.data",
        Some(("people.csv", b"id,country\n1,US\n2,DE\n3,US\n")),
    );
    let mut toml = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("connector.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    writeln!(
        toml,
        "[[transforms]]\nscope = \"people\"\nplugin = \"row-filter@0.1.0\"\nconfig = {{ column = \"country\", op = \"eq\", value = \"US\" }}"
    )
    .unwrap_or_else(|e| panic!("{e}"));
    install_plugins(dir.path(), &[("row-filter", "row-filter@0.1.0.wasm")]);
    let (doc, _out) = run_json(dir.path());
    assert_eq!(doc["status"], "success", "{doc}");
    let step = &doc["step_progress"][2]["steps"][0];
    assert_eq!(step["plugin"], "row-filter@0.1.0");
    assert_eq!(
        (step["rows_in"].as_u64(), step["rows_out"].as_u64()),
        (Some(3), Some(2)),
        "{doc}"
    );
}

#[test]
fn the_plugins_example_normalises_phones_and_drops_the_duplicate() {
    // The example's plugins are built, not committed: copy the example and
    // put the components built for this commit where it expects them.
    let example = repo().join("examples").join("contacts-plugins");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for file in ["connector.toml", "script.sql", "data/contacts_export.csv"] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap_or(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(example.join(file), &to).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    install_plugins(
        dir.path(),
        &[
            ("phone-normalize", "phone-normalize-0.1.0.wasm"),
            ("dedupe", "dedupe-0.1.0.wasm"),
        ],
    );
    let (doc, out) = run_json(dir.path());
    assert_eq!(doc["status"], "partial_success", "{doc}");
    let steps = &doc["step_progress"][2]["steps"];
    let counts = |i: usize| {
        (
            steps[i]["rows_in"].as_u64(),
            steps[i]["rows_out"].as_u64(),
            steps[i]["rejected"].as_u64(),
        )
    };
    assert_eq!(counts(0), (Some(31), Some(29), Some(2)), "{doc}");
    assert_eq!(counts(1), (Some(29), Some(28), Some(0)), "{doc}");
    let variables = &doc["step_progress"][3]["scopes"][0];
    assert_eq!(
        (variables["valid"].as_u64(), variables["invalid"].as_u64()),
        (Some(25), Some(3)),
        "{doc}"
    );
    let rejected = std::fs::read_to_string(out.path().join("rejected.csv")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rejected.contains("`call after 5pm` is not a valid phone number"),
        "{rejected}"
    );
    assert!(rejected.contains("`12345` is not a valid phone number"), "{rejected}");
}

#[test]
fn a_start_that_cannot_listen_changes_nothing_and_the_next_one_shows_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let serve = |listen: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&data)
            .env_remove("WEIR_BOOTSTRAP_KEY");
        command
    };
    let o = serve(&addr).output().unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(&format!("listening on {addr}")), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "the cause once: {err}");
    assert!(!stdout(&o).contains("admin key"), "{}", stdout(&o));
    assert!(!data.join("state.db").exists(), "no workspace or key was made");
    drop(taken);

    // The next start creates the workspace and shows its key.
    let mut child = serve("127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let out = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut shown = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line.unwrap_or_else(|e| panic!("{e}"));
        if let Some(key) = line.split("admin key (shown once): ").nth(1) {
            shown = Some(key.to_string());
        }
        if line.starts_with("weir listening on ") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        shown.is_some_and(|k| k.starts_with("weir_")),
        "the first start that serves shows the key"
    );
}

#[test]
fn a_missing_package_or_input_file_is_a_usage_error_that_says_so() {
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out_dir = out.path().to_string_lossy().to_string();
    let missing = weir(&["run", "no/such/package", "--out", &out_dir]);
    let err = String::from_utf8_lossy(&missing.stderr).to_string();
    assert_eq!(missing.status.code(), Some(2), "{err}");
    assert!(err.contains("there is no package at no/such/package"), "{err}");

    // No data/ and no --input: the run says there is no input file.
    let dir = connector_dir("CREATE VIEW output.a AS SELECT * FROM input.data", None);
    let o = weir(&["run", &dir.path().to_string_lossy(), "--out", &out_dir]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("reads `input.data`, but there is no input file") && err.contains("--input"),
        "{err}"
    );

    // A misspelt table is named as the script names it.
    let dir = connector_dir(
        "CREATE VIEW output.a AS SELECT * FROM input.dta",
        Some(("x.csv", b"a\n1\n")),
    );
    let o = weir(&["run", &dir.path().to_string_lossy(), "--out", &out_dir]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("table 'input.dta' not found") && !text.contains("datafusion"),
        "{text}"
    );
}

/// The stderr of a `weir serve` that answered one request, with `env`.
fn serve_logs(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let out = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let addr = std::io::BufRead::lines(std::io::BufReader::new(out))
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("weir listening on http://").map(str::to_string))
        .unwrap_or_else(|| panic!("weir serve did not start"));
    let mut stream = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap_or_else(|e| panic!("{e}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The request's log line is written as the answer goes out.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = child.kill();
    let mut logs = String::new();
    if let Some(mut err) = child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut logs).unwrap_or_else(|e| panic!("{e}"));
    }
    let _ = child.wait();
    logs
}

#[test]
fn logs_to_a_pipe_are_plain_text_or_one_json_object_a_line() {
    let text = serve_logs(&[]);
    assert!(text.contains("/api/v1/healthz"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes in a pipe: {text:?}");
    let json = serve_logs(&[("WEIR_LOG_FORMAT", "json")]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l.to_string().contains("/api/v1/healthz")),
        "{json}"
    );
}

#[test]
fn weir_run_takes_source_secrets_from_the_environment_or_a_file_and_names_a_missing_one() {
    const PASSWORD: &str = "cli-pw-never-printed";
    let dir = connector_dir("CREATE VIEW output.c AS SELECT * FROM crm.customers", None);
    let toml = dir.path().join("connector.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap_or_default();
    text.push_str("[[sources]]\nname = \"crm\"\nkind = \"postgres\"\nsecret = \"crm_db\"\ntables = [\"customers\"]\n");
    std::fs::write(&toml, text).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("out");
    let package = dir.path().to_string_lossy().to_string();
    let out = out.to_string_lossy().to_string();

    let o = weir(&["run", &package, "--out", &out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("`crm_db`") && err.contains("WEIR_SECRET_CRM_DB"), "{err}");

    // From a file: the run starts, and a database that is not there fails
    // it as an unavailable source, the password never printed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(
        &secrets,
        format!("crm_db = \"postgres://weir:{PASSWORD}@127.0.0.1:{port}/shop?sslmode=disable\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let file = secrets.to_string_lossy().to_string();
    let o = weir(&["run", &package, "--out", &out, "--json", "--secrets", &file]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json(&o)["error"]["code"], "source_unavailable");
    let printed = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(!printed.contains(PASSWORD), "{printed}");

    // The environment wins over the file.
    std::fs::write(&secrets, "crm_db = \"not a url\"\n").unwrap_or_else(|e| panic!("{e}"));
    let o = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", &package, "--out", &out, "--json", "--secrets", &file])
        .env(
            "WEIR_SECRET_CRM_DB",
            format!("postgres://weir:{PASSWORD}@127.0.0.1:{port}/shop?sslmode=disable"),
        )
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let message = json(&o)["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.starts_with("source `crm` is unavailable"), "{message}");
    assert!(!message.contains("not a postgres:// URL"), "the file won: {message}");

    // A broken secrets file is named; its text is not repeated.
    std::fs::write(&secrets, format!("crm_db = {PASSWORD}\n")).unwrap_or_else(|e| panic!("{e}"));
    let o = weir(&["run", &package, "--out", &out, "--secrets", &file]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is not a secrets file") && !err.contains(PASSWORD),
        "{err}"
    );
}

/// Runs `weir` with `args` to its end, watching its peak resident memory
/// (`VmHWM`, which only grows) as it goes: its output and the peak in bytes.
fn weir_with_peak(args: &[&str]) -> (Output, u64) {
    let logs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let file = |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{e}"));
    let mut child = weir_command(args)
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .unwrap_or_else(|e| panic!("running weir: {e}"));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib * 1024);
        }
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{e}"));
    (
        Output {
            status,
            stdout: read(&out),
            stderr: read(&err),
        },
        peak,
    )
}

#[test]
fn a_selective_where_over_two_million_records_runs_in_64_mib() {
    use weir_engine::objects::Objects;
    use weir_engine::store::{RecordId, RecordStore, SqliteStore, Value, Write, WriteBatch};
    const RECORDS: usize = 2_000_000;
    const OBJECTS: &str = "[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\n\
                           [[objects.fields]]\nname = \"note\"\ntype = \"text\"\n";
    let dir = connector_dir("", Some(("probe.csv", b"a\n1\n")));
    std::fs::write(
        dir.path().join("connector.toml"),
        "api_name = \"t\"\ntype = \"spreadsheet\"\n[sql]\nfile = \"script.sql\"\n[limits]\nmax_memory = \"64MiB\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("objects.toml"), OBJECTS).unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("records.db");
    {
        let store = SqliteStore::open(&db).unwrap_or_else(|e| panic!("{e}"));
        let objects = Objects::from_toml(OBJECTS).unwrap_or_else(|e| panic!("{e}"));
        store
            .ensure_object("local", &objects.objects[0])
            .unwrap_or_else(|e| panic!("{e}"));
        // About 200 MB of Arrow if the object were read whole.
        for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(100_000) {
            let creates = chunk
                .iter()
                .map(|i| Write {
                    id: RecordId::now_v7(),
                    values: vec![
                        Some(Value::Text(format!("u{i}@example.com"))),
                        Some(Value::Text(format!("a note long enough to weigh something, {i}"))),
                    ],
                })
                .collect();
            let batch = WriteBatch {
                fields: vec!["email".into(), "note".into()],
                creates,
                ..WriteBatch::default()
            };
            store
                .commit("local", "contact", &batch)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let run = |script: &str| {
        std::fs::write(dir.path().join("script.sql"), script).unwrap_or_else(|e| panic!("{e}"));
        let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (o, peak) = weir_with_peak(&[
            "run",
            &dir.path().to_string_lossy(),
            "--db",
            &db.to_string_lossy(),
            "--out",
            &out.path().to_string_lossy(),
            "--threads",
            "1",
        ]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (out, err, peak)
    };
    // The same process reading nothing of the object: what a run costs.
    let (_, _, before) = run("CREATE VIEW output.found AS SELECT a FROM input.data");
    let (out, err, peak) =
        run("CREATE VIEW output.found AS SELECT email, note FROM records.contact WHERE email = 'u1234567@example.com'");
    let found = std::fs::read_to_string(out.path().join("output/found.csv")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        found,
        "email,note\nu1234567@example.com,\"a note long enough to weigh something, 1234567\"\n"
    );
    assert!(
        err.contains("records.contact: 1 record read from the store, which applied the conditions on email"),
        "{err}"
    );
    let mib = |b: u64| b / (1024 * 1024);
    eprintln!(
        "peak: {} MiB reading one record, {} MiB reading none",
        mib(peak),
        mib(before)
    );
    assert!(
        peak < before + 64 * 1024 * 1024,
        "reading one record of {RECORDS} took {} MiB at its peak, a run that reads none {} MiB",
        mib(peak),
        mib(before)
    );
}
