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
async fn a_planning_error_of_a_function_call_points_at_the_call() {
    // Wrong argument types, a wrong count and an unknown function: each
    // points at the call, and no message carries the engine's own words.
    for (call, needle) in [
        ("get_field(customer, 'name')", "get_field"),
        ("round(customer, 1, 2, 3)", "round"),
        ("no_such_fn(amount)", "no_such_fn"),
        ("upper(amount, customer)", "upper"),
    ] {
        let script = format!(
            "CREATE VIEW output.a AS SELECT 1 AS x;\nCREATE VIEW output.b AS\n  SELECT order_id,\n    {call} AS v FROM input.data"
        );
        let o = run(connector(""), &script, "orders.csv", ORDERS.as_bytes()).await;
        let e = o.doc.error.clone().unwrap_or_else(|| panic!("{call}: no error"));
        assert_eq!(e.code.as_str(), "sql_error", "{call}: {}", e.message);
        assert_eq!((e.line, e.column), (Some(4), Some(5)), "{call}: {}", e.message);
        assert!(e.message.contains(needle), "{call}: {}", e.message);
        assert!(!e.message.contains('\n'), "{call}: one line: {:?}", e.message);
        for internal in [
            "datafusion",
            "DataFusion",
            "Error during",
            "Internal error",
            "public.",
            "Candidate functions",
        ] {
            assert!(!e.message.contains(internal), "{call}: {internal} in {:?}", e.message);
        }
    }
}

#[tokio::test]
async fn an_unknown_table_is_named_as_written() {
    let script = "CREATE VIEW output.a AS SELECT * FROM dta";
    let o = run(connector(""), script, "orders.csv", ORDERS.as_bytes()).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert!(
        e.message.contains("`dta`") || e.message.contains("'dta'"),
        "{}",
        e.message
    );
    assert!(
        !e.message.contains("public") && !e.message.contains("datafusion"),
        "{}",
        e.message
    );
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

    // A source's tables are known only by reaching it, which a check does
    // not: a script that reads a declared source is left to its run, and
    // one naming an undeclared schema is still refused.
    let sourced =
        connector("[[sources]]\nname = \"crm\"\nkind = \"postgres\"\nsecret = \"crm_db\"\ntables = [\"customers\"]\n");
    let reads = "CREATE VIEW output.o AS SELECT d.order_id, c.email FROM input.data d JOIN crm.customers c ON c.id = d.customer";
    check::script(&sourced, reads, Some(&sample), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let e = check::script(&sourced, &reads.replace("crm.", "erp."), Some(&sample), None)
        .await
        .expect_err("an undeclared schema is unknown");
    assert!(e.to_string().contains("erp"), "{e}");

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

/// `1+1+…`, a long `OR` and a long `UNION ALL`: the shapes that overflowed
/// the stack of whatever planned them. Past the bounds they are refused
/// before anything runs, with the statement's position; at the bounds they
/// plan and run on an ordinary thread's stack.
#[tokio::test]
async fn scripts_past_the_bounds_are_refused() {
    let terms = |n: usize, term: &str, op: &str| vec![term; n].join(op);
    let unions = |n: usize| vec!["SELECT 1 AS x"; n + 1].join(" UNION ALL ");
    let refused = [
        format!("CREATE VIEW output.a AS SELECT {} AS s", terms(2_000, "1", "+")),
        format!(
            "CREATE VIEW output.a AS SELECT * FROM input.data WHERE {}",
            terms(2_000, "amount > 1", " OR ")
        ),
        format!("CREATE VIEW output.a AS {}", unions(2_000)),
        format!("CREATE VIEW output.a AS SELECT {} AS s", terms(200_001, "1", ",")),
        // The largest script accepted, all one expression: refused for its
        // depth, and neither parsing nor dropping it overflows.
        format!(
            "CREATE VIEW output.a AS SELECT {} AS s",
            terms((1 << 20) / 2 - 40, "1", "+")
        ),
        format!("CREATE VIEW output.a AS SELECT 1 AS s; -- {}", "x".repeat(1 << 20)),
    ];
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile");
    let files = ["deep-plus.sql", "or-chain.sql", "union-chain.sql"]
        .map(|name| std::fs::read_to_string(corpus.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")));
    for script in refused.iter().chain(&files) {
        let script = format!("CREATE VIEW output.ok AS SELECT 1 AS x;\n{script}");
        let o = run(connector(""), &script, "orders.csv", ORDERS.as_bytes()).await;
        let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
        assert_eq!(e.code.as_str(), "sql_not_allowed", "{}", e.message);
        assert!(
            e.message.contains("more than") || e.message.contains("at most"),
            "{}",
            e.message
        );
        if script.len() <= 1 << 20 {
            assert_eq!((e.line, e.column), (Some(2), Some(1)), "{}", e.message);
        }
    }
}

/// At the bounds, those shapes plan and run on an ordinary thread's stack.
#[tokio::test]
async fn scripts_at_the_bounds_run() {
    let terms = |n: usize, term: &str, op: &str| vec![term; n].join(op);
    let unions = |n: usize| vec!["SELECT 1 AS x"; n + 1].join(" UNION ALL ");
    let at_the_bounds = format!(
        "CREATE VIEW output.deep AS SELECT {} AS s;\n\
         CREATE VIEW output.ors AS SELECT order_id FROM input.data WHERE {};\n\
         CREATE VIEW output.unions AS SELECT count(*) AS n FROM ({})",
        terms(120, "1", "+"),
        terms(120, "amount > 1", " OR "),
        unions(64),
    );
    let o = run(connector(""), &at_the_bounds, "orders.csv", ORDERS.as_bytes()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(o.output("deep"), "s\n120\n");
    assert_eq!(o.output("unions"), "n\n65\n");
}

/// DataFusion keeps the rows of `CREATE TABLE … AS` and `INSERT` outside
/// its memory pool; Weir reserves them, so `max_memory` stops both.
#[tokio::test]
async fn max_memory_bounds_the_rows_a_table_keeps() {
    let limits = "[limits]\nmax_memory = \"32MiB\"\n";
    let scripts = [
        "CREATE TABLE output.t AS SELECT value AS v, value * 2 AS w FROM generate_series(1, 20000000)",
        "CREATE TABLE output.t AS SELECT 1 AS v, 1 AS w;\n\
         INSERT INTO output.t SELECT value, value * 2 FROM generate_series(1, 20000000)",
    ];
    for script in scripts {
        let o = run(connector(limits), script, "orders.csv", ORDERS.as_bytes()).await;
        let e = o.doc.error.clone().unwrap_or_else(|| panic!("{script}: no error"));
        assert_eq!(e.code.as_str(), "limit_exceeded", "{script}: {}", e.message);
        assert!(e.message.contains("max_memory"), "{}", e.message);
    }
    // Within the limit, both still work.
    let script = "CREATE TABLE output.t AS SELECT value AS v FROM generate_series(1, 3);\n\
                  INSERT INTO output.t SELECT value + 10 FROM generate_series(1, 2)";
    let o = run(connector(limits), script, "orders.csv", ORDERS.as_bytes()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(o.output("t"), "v\n1\n2\n3\n11\n12\n");
}

/// A draft check plans every statement and runs none that reads rows: a
/// table over two `range(1e9)` is created empty at once.
#[tokio::test]
async fn a_check_plans_statements_without_running_them() {
    let (_dir, path) = weir_tests::input("orders.csv", ORDERS.as_bytes());
    let sample = weir_engine::pipeline::InputFile {
        path,
        name: "orders.csv".into(),
    };
    let script = "CREATE TABLE output.t AS SELECT count(*) AS n FROM range(1000000000) a CROSS JOIN range(1000000000) b;\n\
                  INSERT INTO output.t SELECT count(*) FROM range(1000000000) a CROSS JOIN range(1000000000) b;\n\
                  CREATE VIEW output.v AS SELECT n FROM output.t";
    let started = std::time::Instant::now();
    weir_engine::check::script(&connector(""), script, Some(&sample), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Running it would take hours; planning takes milliseconds. A minute
    // leaves any machine room while still telling the two apart.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // What a check still finds: a column that is not there, with its line.
    let broken = "CREATE TABLE output.t AS SELECT 1 AS n;\nINSERT INTO output.t SELECT no_such FROM input.data";
    let e = weir_engine::check::script(&connector(""), broken, Some(&sample), None)
        .await
        .err()
        .unwrap_or_else(|| panic!("a missing column passed the check"));
    assert_eq!(e.code().as_str(), "sql_error", "{e}");
}

/// Every family of JSON functions, on a document, on text that is not JSON
/// and on a missing value: the broken ones give NULL, the run goes on.
#[tokio::test]
async fn json_functions_read_documents_and_give_null_on_broken_ones() {
    let docs = [
        r#"{"id": 7, "name": "Ada", "score": 2.5, "vip": true, "tags": ["a", "b"], "address": {"city": "Oslo", "zip": "0150"}}"#,
        r#"{"id": "#,
        "not json at all",
    ];
    let mut file = String::new();
    for (i, doc) in docs.iter().enumerate() {
        file.push_str(&serde_json::json!({"n": i + 1, "doc": doc}).to_string());
        file.push('\n');
    }
    let script = "CREATE VIEW output.j AS SELECT n,\n\
        json_get_int(doc, 'id') AS id,\n\
        json_get_str(doc, 'name') AS name,\n\
        json_get_float(doc, 'score') AS score,\n\
        json_get_bool(doc, 'vip') AS vip,\n\
        json_get_str(doc, 'tags', 1) AS second_tag,\n\
        json_get_json(doc, 'address') AS address,\n\
        json_as_text(doc, 'address', 'zip') AS zip,\n\
        doc->'address'->>'city' AS city,\n\
        json_length(doc, 'tags') AS tag_count,\n\
        json_contains(doc, 'vip') AS has_vip,\n\
        json_get(doc, 'missing') IS NULL AS no_missing\n\
        FROM input.data ORDER BY n;\n\
        CREATE VIEW output.tags AS SELECT n, json_as_text(tag) AS tag\n\
        FROM (SELECT n, unnest(json_get_array(doc, 'tags')) AS tag FROM input.data) AS t ORDER BY n, tag";
    let o = run(connector(""), script, "docs.jsonl", file.as_bytes()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("j"),
        "n,id,name,score,vip,second_tag,address,zip,city,tag_count,has_vip,no_missing\n\
         1,7,Ada,2.5,true,b,\"{\"\"city\"\": \"\"Oslo\"\", \"\"zip\"\": \"\"0150\"\"}\",0150,Oslo,2,true,true\n\
         2,,,,,,,,,,false,true\n\
         3,,,,,,,,,,false,true\n"
    );
    assert_eq!(o.output("tags"), "n,tag\n1,a\n1,b\n");
}
