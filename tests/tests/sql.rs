//! The SQL stage through the engine: golden results of scripts over a
//! fixture, refused forms, and errors with line and column.

use std::path::Path;

use weir_tests::{PASS_THROUGH, connector, run};

const ORDERS: &str = include_str!("../fixtures/orders.csv");

/// Every script under `golden/` runs on `fixtures/orders.csv`; the outputs of
/// all its scopes are the snapshot.
#[tokio::test]
async fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5);
    let params = "[parameters]\ndefault_country = \"US\"\nthreshold = 100\n";
    for script in scripts {
        let name = script
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let sql = std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{e}"));
        let o = run(connector(params), &sql, "orders.csv", ORDERS.as_bytes()).await;
        assert_eq!(o.status(), "success", "{name}: {:?}", o.doc.error);
        let mut snapshot = String::new();
        let sql_progress = &o.json()["step_progress"][1]["scopes"];
        for scope in sql_progress.as_array().into_iter().flatten() {
            let scope = scope["scope"].as_str().unwrap_or_default();
            snapshot.push_str(&format!("== output.{scope} ==\n{}", o.output(scope)));
        }
        insta::assert_snapshot!(name, snapshot);
    }
}

#[tokio::test]
async fn a_refused_script_fails_before_reading_input() {
    let script = "CREATE VIEW output.a AS SELECT 1 AS x;\n\nCOPY (SELECT * FROM input.data) TO '/tmp/stolen.csv'";
    let o = run(connector(""), script, "orders.csv", ORDERS.as_bytes()).await;
    assert_eq!(o.status(), "failed");
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "sql_not_allowed");
    assert_eq!(e.stage.as_str(), "sql");
    assert_eq!((e.line, e.column), (Some(3), Some(1)));
    assert_eq!(o.json()["step_progress"][0]["status"], "skipped", "intake never ran");
    assert!(!Path::new("/tmp/stolen.csv").exists());
}

#[tokio::test]
async fn syntax_errors_have_line_and_column() {
    let script = "CREATE VIEW output.a AS\nSELECT order_id\n  FROM input.data\n WHERE amount > > 3";
    let o = run(connector(""), script, "orders.csv", ORDERS.as_bytes()).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "sql_error");
    assert_eq!(e.line, Some(4), "{}", e.message);
    assert!(e.column.is_some_and(|c| c >= 15), "{:?} {}", e.column, e.message);
}

#[tokio::test]
async fn plan_errors_point_at_the_offending_name() {
    let script = "CREATE VIEW output.a AS SELECT 1 AS x;\nCREATE VIEW output.b AS\n  SELECT order_id, no_such_column FROM input.data";
    let o = run(connector(""), script, "orders.csv", ORDERS.as_bytes()).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "sql_error");
    assert!(e.message.contains("no_such_column"), "{}", e.message);
    assert_eq!((e.line, e.column), (Some(3), Some(20)), "{}", e.message);
}

#[tokio::test]
async fn run_time_errors_name_the_statement_of_the_scope() {
    let script = "CREATE VIEW output.ok AS SELECT 1 AS x;\n\nCREATE VIEW output.bad AS SELECT CAST(customer AS INT) AS n FROM input.data";
    let o = run(connector(""), script, "orders.csv", ORDERS.as_bytes()).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "sql_error", "{}", e.message);
    assert_eq!(e.line, Some(3), "{}", e.message);
    assert!(e.message.contains("Ada Lovelace"), "{}", e.message);
}

#[tokio::test]
async fn a_script_without_scopes_is_an_error() {
    let o = run(
        connector(""),
        "CREATE TEMP VIEW t AS SELECT 1",
        "orders.csv",
        ORDERS.as_bytes(),
    )
    .await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "sql_error");
    assert!(e.message.contains("no scope"), "{}", e.message);
}

#[tokio::test]
async fn input_tables_are_read_only() {
    for sql in [
        "DROP TABLE input.data",
        "CREATE TABLE input.x AS SELECT 1",
        "INSERT INTO input.data SELECT * FROM input.data",
    ] {
        let o = run(
            connector(""),
            &format!("{PASS_THROUGH};\n{sql}"),
            "orders.csv",
            ORDERS.as_bytes(),
        )
        .await;
        assert_eq!(o.code().as_deref(), Some("sql_not_allowed"), "{sql}");
    }
}

/// The check a draft gets on save: planned against the sample's columns and
/// the objects' records, without reading the sample's rows.
#[tokio::test]
async fn scripts_are_planned_against_a_sample_without_reading_its_rows() {
    use weir_engine::check;
    use weir_engine::objects::Objects;
    use weir_engine::pipeline::InputFile;

    let (_dir, path) = weir_tests::input("orders.csv", ORDERS.as_bytes());
    let sample = InputFile {
        path,
        name: "orders.csv".into(),
    };
    let params = connector("[parameters]\ndefault_country = \"US\"\nthreshold = 100\n");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    for entry in std::fs::read_dir(&golden).unwrap_or_else(|e| panic!("{e}")) {
        let script =
            std::fs::read_to_string(entry.unwrap_or_else(|e| panic!("{e}")).path()).unwrap_or_else(|e| panic!("{e}"));
        check::script(&params, &script, Some(&sample), None)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"));
    }

    let unknown = "CREATE VIEW output.o AS\n  SELECT order_id,\n    no_such_column\n  FROM input.data";
    let e = check::script(&connector(""), unknown, Some(&sample), None)
        .await
        .expect_err("an unknown column is refused");
    assert_eq!(e.code().as_str(), "sql_error");
    assert!(e.to_string().contains("no_such_column"), "{e}");
    let at = e.position().map(|p| (p.line, p.column));
    assert_eq!(at, Some((3, 5)), "{e}");
    // Without a sample only the parse counts.
    check::script(&connector(""), unknown, None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // `records.<object>` is known when the objects are given.
    let joins = "CREATE VIEW output.o AS SELECT d.order_id, c.id AS contact FROM input.data d \
                 LEFT JOIN records.contact c ON c.email = d.customer";
    let objects =
        Objects::from_toml("[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
    check::script(&connector(""), joins, Some(&sample), Some(&objects))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let e = check::script(&connector(""), joins, Some(&sample), None)
        .await
        .expect_err("records.contact is unknown without objects");
    assert!(e.to_string().contains("contact"), "{e}");

    // Rows are not read: a value that only fails when cast passes the check
    // and fails the run.
    let cast =
        "CREATE TABLE t AS SELECT CAST(customer AS INT) AS n FROM input.data;\nCREATE VIEW output.o AS SELECT n FROM t";
    check::script(&connector(""), cast, Some(&sample), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let o = run(connector(""), cast, "orders.csv", ORDERS.as_bytes()).await;
    assert_eq!(o.status(), "failed");
}
