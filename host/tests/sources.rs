//! External sources (docs/sources.md) against real servers the tests start:
//! a PostgreSQL table with its filter and columns pushed down, a MariaDB
//! table, CSV and Parquet files over HTTP, Parquet in an S3 bucket; an
//! unreachable source and a missing secret fail `source_unavailable`
//! without the secret; a cancel ends a slow remote query; a script still
//! cannot name a file or URL the connector does not declare.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::{Mariadb, Postgres, S3};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use tokio_util::sync::CancellationToken;
use weir_engine::pipeline::RunSettings;
use weir_engine::sources::SecretValues;
use weir_tests::{Outcome, Run, connector, run_full};

const PASSWORD: &str = "pw-7f3a-never-shown";

async fn run_sources(sources: &str, script: &str, secrets: &[(&str, &str)], cancel: CancellationToken) -> Outcome {
    let secrets = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    run_full(Run {
        connector: connector(sources),
        script: script.into(),
        input: None,
        cancel,
        records: None,
        plugins: None,
        settings: RunSettings {
            threads: 2,
            ..RunSettings::default()
        },
        secrets: SecretValues::new(secrets),
    })
    .await
}

/// The message of a run that failed `source_unavailable`.
fn unavailable(outcome: &Outcome) -> String {
    let doc = outcome.json();
    assert_eq!(doc["error"]["code"], "source_unavailable", "{doc}");
    doc["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn succeeded(outcome: &Outcome) {
    assert_eq!(outcome.status(), "success", "{}", outcome.json());
}

/// Nothing the run left behind holds the password: document, log, files.
fn holds_no_password(outcome: &Outcome) {
    assert!(!outcome.json().to_string().contains(PASSWORD), "{}", outcome.json());
    assert!(!outcome.logs.join("\n").contains(PASSWORD));
    for entry in common::walk(outcome.out.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PASSWORD),
            "{} holds the password",
            entry.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_is_read_with_its_filter_and_columns_pushed_down() {
    let Some(pg) = Postgres::start(PASSWORD) else { return };
    pg.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, email text, country text, notes text);
         INSERT INTO customers VALUES (1, 'ana@example.com', 'FR', 'a long note'), (2, 'bo@example.com', 'DE', 'x'),
           (3, 'cy@example.com', 'FR', 'y'), (4, 'di@example.com', 'US', 'z');
         ALTER TABLE customers OWNER TO weir;",
    );
    let outcome = run_sources(
        "[[sources]]\nname = \"crm\"\nkind = \"postgres\"\nsecret = \"crm_db\"\ntables = [\"public.customers\"]\n",
        "CREATE VIEW output.fr AS SELECT id, email FROM crm.customers WHERE country = 'FR' ORDER BY id",
        &[("crm_db", &pg.url(PASSWORD))],
        CancellationToken::new(),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(outcome.output("fr"), "id,email\n1,ana@example.com\n3,cy@example.com\n");
    // The server ran the filter and read only the columns the script uses.
    let log = pg.log();
    let query = log
        .lines()
        .find(|l| l.contains("SELECT") && l.contains("customers") && l.contains("'FR'"))
        .unwrap_or_else(|| panic!("no statement with the filter reached the server:\n{log}"));
    assert!(query.contains("WHERE"), "{query}");
    assert!(!query.contains("notes"), "the unused column was read: {query}");
    holds_no_password(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_query_is_read_as_a_table_that_only_reads() {
    let Some(pg) = Postgres::start(PASSWORD) else { return };
    pg.sql(
        "CREATE TABLE buyers (id int PRIMARY KEY, country text);
         CREATE TABLE purchases (id int PRIMARY KEY, buyer int, total numeric(10,2));
         INSERT INTO buyers VALUES (1, 'FR'), (2, 'DE'), (3, 'FR');
         INSERT INTO purchases VALUES (1, 1, 10.50), (2, 1, 5.00), (3, 2, 7.25), (4, 3, 1.25);
         ALTER TABLE buyers OWNER TO weir; ALTER TABLE purchases OWNER TO weir;",
    );
    let sources = r#"
[[sources]]
name = "crm"
kind = "postgres"
secret = "crm_db"
  [sources.queries]
  spend = """
    SELECT b.country, sum(p.total) AS spent, count(*) AS purchases
    FROM purchases p JOIN buyers b ON b.id = p.buyer GROUP BY b.country;
  """
  nobody = "SELECT id, country FROM buyers WHERE false"
"#;
    let secrets = [("crm_db", pg.url(PASSWORD))];
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let outcome = run_sources(
        sources,
        "CREATE VIEW output.fr AS SELECT country, CAST(spent AS DOUBLE) AS spent, purchases \
           FROM crm.spend WHERE country = 'FR';
         CREATE VIEW output.none AS SELECT id, country FROM crm.nobody",
        &secrets,
        CancellationToken::new(),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(outcome.output("fr"), "country,spent,purchases\nFR,16.75,3\n");
    // A query with no rows still has its columns.
    assert_eq!(outcome.output("none"), "id,country\n");
    let log = pg.log();
    assert!(
        log.lines()
            .any(|l| l.contains("AS weir_query WHERE \"country\" = 'FR'")),
        "the filter did not reach the server:\n{log}"
    );
    holds_no_password(&outcome);

    // A query that does not describe, or that would write, fails the run
    // before anything runs, naming the query.
    for (query, says) in [
        ("SELECT nope FROM buyers", "nope"),
        (
            "WITH gone AS (DELETE FROM purchases RETURNING id) SELECT id FROM gone",
            "data-modifying",
        ),
        ("SELECT 1; DELETE FROM purchases", "syntax error"),
    ] {
        let sources = format!(
            "[[sources]]\nname = \"crm\"\nkind = \"postgres\"\nsecret = \"crm_db\"\n[sources.queries]\nbad = {query:?}\n"
        );
        let outcome = run_sources(
            &sources,
            "CREATE VIEW output.x AS SELECT * FROM crm.bad",
            &secrets,
            CancellationToken::new(),
        )
        .await;
        let message = unavailable(&outcome);
        assert!(
            message.contains("crm") && message.contains("query `bad`") && message.contains(says),
            "{message}"
        );
    }
    assert_eq!(
        pg.sql("SELECT count(*) FROM purchases").trim(),
        "4",
        "nothing was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_table_is_read() {
    let Some(db) = Mariadb::start(PASSWORD) else { return };
    db.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(40), total DECIMAL(10,2), placed DATE);
         INSERT INTO orders VALUES (1, 'ana', 10.50, '2026-11-01'), (2, 'bo', 4.25, '2026-11-02'), (3, 'ana', 1.00, '2026-12-01');",
    );
    let outcome = run_sources(
        "[[sources]]\nname = \"shop\"\nkind = \"mysql\"\nsecret = \"shop_db\"\ntables = [\"orders\"]\n",
        "CREATE VIEW output.totals AS SELECT customer, CAST(SUM(total) AS VARCHAR) AS spent, COUNT(*) AS n \
         FROM shop.orders WHERE placed >= DATE '2026-11-01' GROUP BY customer ORDER BY customer",
        &[("shop_db", &db.url(PASSWORD))],
        CancellationToken::new(),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(outcome.output("totals"), "customer,spent,n\nana,11.50,2\nbo,4.25,1\n");
    holds_no_password(&outcome);
}

/// Orders as Parquet: id, sku, quantity.
fn orders_parquet(ids: &[i64]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("quantity", DataType::Float64, false),
    ]));
    let skus: Vec<String> = ids.iter().map(|i| format!("sku-{}", i % 2)).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(skus)),
            Arc::new(Float64Array::from(ids.iter().map(|i| *i as f64).collect::<Vec<_>>())),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, None).unwrap_or_else(|e| panic!("{e}"));
    writer.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    writer.close().unwrap_or_else(|e| panic!("{e}"));
    bytes
}

/// Serves `dir` on a free loopback port (with ranges, as a web server
/// does); the base URL.
async fn serve_files(dir: &std::path::Path) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = axum::Router::new().nest_service("/exports", tower_http::services::ServeDir::new(dir));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/exports/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_parquet_files_are_read_over_http() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("prices.csv"), "sku,price\nsku-0,2.5\nsku-1,10\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("orders.parquet"), orders_parquet(&[1, 2, 3, 4])).unwrap_or_else(|e| panic!("{e}"));
    let base = serve_files(dir.path()).await;
    let sources = format!(
        "[[sources]]\nname = \"web\"\nkind = \"http\"\nurl = \"{base}\"\nfiles = {{ prices = \"prices.csv\", orders = \"orders.parquet\" }}\n"
    );
    let outcome = run_sources(
        &sources,
        "CREATE VIEW output.revenue AS SELECT o.sku, SUM(o.quantity * p.price) AS revenue \
         FROM web.orders o JOIN web.prices p ON p.sku = o.sku GROUP BY o.sku ORDER BY o.sku",
        &[],
        CancellationToken::new(),
    )
    .await;
    succeeded(&outcome);
    // sku-0: ids 2 and 4 (6 × 2.5); sku-1: ids 1 and 3 (4 × 10).
    assert_eq!(outcome.output("revenue"), "sku,revenue\nsku-0,15\nsku-1,40\n");

    // A file that is not there is an unavailable source, named.
    let missing =
        format!("[[sources]]\nname = \"web\"\nkind = \"http\"\nurl = \"{base}\"\nfiles = {{ gone = \"gone.csv\" }}\n");
    let outcome = run_sources(
        &missing,
        "CREATE VIEW output.x AS SELECT * FROM web.gone",
        &[],
        CancellationToken::new(),
    )
    .await;
    let message = unavailable(&outcome);
    assert!(message.contains("`web`") && message.contains("gone.csv"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_in_an_s3_bucket_is_read() {
    let Some(s3) = S3::start() else { return };
    s3.put("lake", "exports/orders.parquet", &orders_parquet(&[1, 2, 3]));
    // A folder of parts is one table.
    s3.put(
        "lake",
        "exports/events.parquet/part-0.parquet",
        &orders_parquet(&[10, 11]),
    );
    s3.put("lake", "exports/events.parquet/part-1.parquet", &orders_parquet(&[12]));
    let sources = format!(
        "[[sources]]\nname = \"lake\"\nkind = \"s3\"\nbucket = \"lake\"\nendpoint = \"{}\"\nsecret = \"lake_keys\"\n\
         files = {{ orders = \"exports/orders.parquet\", events = \"exports/events.parquet/\" }}\n",
        s3.endpoint
    );
    let outcome = run_sources(
        &sources,
        "CREATE VIEW output.counts AS SELECT (SELECT COUNT(*) FROM lake.orders) AS orders, \
         (SELECT SUM(id) FROM lake.events) AS event_ids",
        &[("lake_keys", &format!("AKIDTEST:{PASSWORD}"))],
        CancellationToken::new(),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(outcome.output("counts"), "orders,event_ids\n3,33\n");
    holds_no_password(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_or_a_missing_secret_fails_naming_the_source_never_the_secret() {
    let port = common::services::free_port();
    let sources = "[[sources]]\nname = \"crm\"\nkind = \"postgres\"\nsecret = \"crm_db\"\ntables = [\"customers\"]\n";
    let script = "CREATE VIEW output.c AS SELECT * FROM crm.customers";
    let url = format!("postgres://weir:{PASSWORD}@127.0.0.1:{port}/shop?sslmode=disable");
    let started = Instant::now();
    let outcome = run_sources(sources, script, &[("crm_db", &url)], CancellationToken::new()).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(outcome.status(), "failed");
    let message = unavailable(&outcome);
    assert!(message.starts_with("source `crm` is unavailable"), "{message}");
    holds_no_password(&outcome);

    let outcome = run_sources(sources, script, &[], CancellationToken::new()).await;
    let message = unavailable(&outcome);
    assert!(message.contains("`crm_db`") && message.contains("not set"), "{message}");

    // A source the script does not read is never reached.
    let outcome = run_sources(
        sources,
        "CREATE VIEW output.one AS SELECT 1 AS x",
        &[("crm_db", &url)],
        CancellationToken::new(),
    )
    .await;
    succeeded(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_slow_remote_query_on_the_server_too() {
    let Some(pg) = Postgres::start(PASSWORD) else { return };
    pg.sql("CREATE VIEW slow AS SELECT 1 AS x, pg_sleep(60)::text AS waited; ALTER VIEW slow OWNER TO weir;");
    let cancel = CancellationToken::new();
    let run = {
        let (cancel, url) = (cancel.clone(), pg.url(PASSWORD));
        tokio::spawn(async move {
            run_sources(
                "[[sources]]\nname = \"crm\"\nkind = \"postgres\"\nsecret = \"crm_db\"\ntables = [\"slow\"]\n",
                "CREATE VIEW output.s AS SELECT x FROM crm.slow",
                &[("crm_db", &url)],
                cancel,
            )
            .await
        })
    };
    let active = || {
        pg.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'weir %' AND query LIKE '%slow%' AND state = 'active'")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while active().trim() != "1" {
        assert!(Instant::now() < deadline, "the slow query never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let canceled_at = Instant::now();
    cancel.cancel();
    let outcome = run.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status(), "canceled", "{}", outcome.json());
    assert!(
        canceled_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        canceled_at.elapsed()
    );
    // The run canceled the query on the server, which would otherwise
    // sleep on with nobody reading.
    assert_eq!(active().trim(), "0", "the remote query still runs after the cancel");
    assert!(
        pg.log().contains("canceling statement due to user request"),
        "{}",
        pg.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_slow_mysql_query_on_the_server_too() {
    let Some(db) = Mariadb::start(PASSWORD) else { return };
    // The condition is evaluated for the row whatever columns are read.
    db.sql("CREATE VIEW slow AS SELECT 1 AS x FROM DUAL WHERE SLEEP(60) = 0");
    let cancel = CancellationToken::new();
    let run = {
        let (cancel, url) = (cancel.clone(), db.url(PASSWORD));
        tokio::spawn(async move {
            run_sources(
                "[[sources]]\nname = \"shop\"\nkind = \"mysql\"\nsecret = \"shop_db\"\ntables = [\"slow\"]\n",
                "CREATE VIEW output.s AS SELECT x FROM shop.slow",
                &[("shop_db", &url)],
                cancel,
            )
            .await
        })
    };
    let active = || {
        db.sql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE USER = 'weir' AND INFO LIKE 'SELECT%slow%'",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while active().trim() != "1" {
        assert!(Instant::now() < deadline, "the slow query never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let canceled_at = Instant::now();
    cancel.cancel();
    let outcome = run.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status(), "canceled", "{}", outcome.json());
    assert!(
        canceled_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        canceled_at.elapsed()
    );
    // The run killed the query on the server, which would otherwise sleep
    // on with nobody reading.
    assert_eq!(active().trim(), "0", "the remote query still runs after the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_still_cannot_read_a_file_or_url_the_connector_does_not_declare() {
    let sources = "[[sources]]\nname = \"web\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\nfiles = { prices = \"prices.csv\" }\n";
    for script in [
        "CREATE VIEW output.x AS SELECT * FROM 'http://127.0.0.1:9/other.csv'",
        "CREATE VIEW output.x AS SELECT * FROM '/etc/passwd'",
        "CREATE VIEW output.x AS SELECT * FROM read_parquet('s3://lake/x.parquet')",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'http://127.0.0.1:9/prices.csv'",
    ] {
        let outcome = run_sources(sources, script, &[], CancellationToken::new()).await;
        assert_eq!(
            outcome.code().as_deref(),
            Some("sql_not_allowed"),
            "{script}: {}",
            outcome.json()
        );
    }
}

/// The tests' secrets key (32 bytes, base64).
const KEY: &str = "c291cmNlcyB0ZXN0cyBzZWNyZXRzIGtleSwgMzIgYiE=";

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    common::walk(dir)
        .into_iter()
        .filter(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).contains(needle))
        .collect()
}

/// The id of tick run number `n` (from 0, oldest first) of connector
/// `id`, once there is one.
async fn next_run(base: &str, id: &str, n: usize) -> Option<String> {
    let path = format!("/connectors/{id}/executions?limit=100");
    let (_, list) = common::call(base, reqwest::Method::GET, &path, None).await;
    let mut runs: Vec<String> = list["data"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|e| e["trigger_type"] == "schedule")
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    // Newest first in the list; oldest first here (the ticks only, not the
    // publish check).
    runs.reverse();
    runs.get(n).cloned()
}

/// The output of the next run of connector `id` that pulled anything,
/// after the `done` runs seen so far; each run must succeed as a tick.
async fn next_change(base: &str, id: &str, done: &mut usize) -> String {
    use common::{output_csv, wait_end};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no tick pulled the change");
        if let Some(run) = next_run(base, id, *done).await {
            *done += 1;
            let end = wait_end(base, &run).await;
            assert_eq!(end["status"], "success", "{end}");
            let csv = output_csv(base, &run, "changed").await;
            if csv.lines().count() > 1 {
                return csv;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_pulls_each_change_once_through_a_source_with_a_workspace_secret() {
    use common::{call, get_bytes, serve_logged};
    use reqwest::Method;
    use serde_json::json;

    let Some(pg) = Postgres::start(PASSWORD) else { return };
    pg.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, email text, updated_at timestamptz NOT NULL);
         INSERT INTO customers SELECT i, 'c' || i || '@example.com', now() - interval '1 hour' FROM generate_series(1, 3) i;
         ALTER TABLE customers OWNER TO weir;",
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (data, log) = (dir.path().join("data"), dir.path().join("serve.log"));
    let server = serve_logged(&data, &[("WEIR_SECRETS_KEY", KEY), ("WEIR_LOG", "debug")], Some(&log))
        .unwrap_or_else(|l| panic!("{l}"));
    let base = server.base.clone();
    let (s, b) = call(
        &base,
        Method::PUT,
        "/secrets/crm_db",
        Some(json!({"value": pg.url(PASSWORD)})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let doc = json!({"api_name": "crm_sync", "type": "schedule",
        "schedule": {"cron": "*/5 * * * * *", "timezone": "UTC"},
        "sources": [{"name": "crm", "kind": "postgres", "secret": "crm_db", "tables": ["customers"]}],
        "sql": {"text": "CREATE VIEW output.changed AS SELECT c.id, c.email FROM crm.customers c \
            CROSS JOIN meta.current_execution e \
            WHERE (e.window_start IS NULL OR c.updated_at > e.window_start) AND c.updated_at <= e.window_end ORDER BY c.id"}});
    let (s, c) = call(&base, Method::POST, "/connectors", Some(doc)).await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap_or_default().to_string();
    common::go_live(&base, &id).await;

    // Ticks come every five seconds; a tick with nothing new pulls nothing.
    // What the ticks pull, in order, is each change exactly once.
    let mut done = 0;
    assert_eq!(
        next_change(&base, &id, &mut done).await,
        "id,email\n1,c1@example.com\n2,c2@example.com\n3,c3@example.com\n"
    );
    pg.sql("INSERT INTO customers VALUES (4, 'c4@example.com', now()), (5, 'c5@example.com', now())");
    assert_eq!(
        next_change(&base, &id, &mut done).await,
        "id,email\n4,c4@example.com\n5,c5@example.com\n"
    );
    pg.sql("UPDATE customers SET email = 'new2@example.com', updated_at = now() WHERE id = 2");
    assert_eq!(
        next_change(&base, &id, &mut done).await,
        "id,email\n2,new2@example.com\n"
    );
    // The next tick has nothing new.
    let quiet = loop {
        match next_run(&base, &id, done).await {
            Some(run) => break run,
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(common::wait_end(&base, &quiet).await["status"], "success");
    assert_eq!(common::output_csv(&base, &quiet, "changed").await, "id,email\n");
    let (s, b) = call(
        &base,
        Method::PATCH,
        &format!("/connectors/{id}"),
        Some(json!({"status": "setup"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // The password is in no answer, log line, package or stored file.
    let (_, list) = call(
        &base,
        Method::GET,
        &format!("/connectors/{id}/executions?limit=100"),
        None,
    )
    .await;
    let mut answers = vec![list.to_string()];
    for run in list["data"].as_array().cloned().unwrap_or_default() {
        let run = run["id"].as_str().unwrap_or_default().to_string();
        answers.push(
            call(&base, Method::GET, &format!("/executions/{run}"), None)
                .await
                .1
                .to_string(),
        );
        answers.push(
            call(&base, Method::GET, &format!("/executions/{run}/logs?limit=500"), None)
                .await
                .1
                .to_string(),
        );
    }
    answers.push(call(&base, Method::GET, "/secrets", None).await.1.to_string());
    answers.push(
        call(&base, Method::GET, &format!("/connectors/{id}"), None)
            .await
            .1
            .to_string(),
    );
    let (s, package) = get_bytes(&base, &format!("/connectors/{id}/dev-package")).await;
    assert_eq!(s, 200);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap_or_else(|e| panic!("{e}"));
    let mut manifest = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("manifest.json").unwrap_or_else(|e| panic!("{e}")),
        &mut manifest,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(manifest.contains("\"secrets\": [\n    \"crm_db\"\n  ]"), "{manifest}");
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).unwrap_or_else(|e| panic!("{e}"));
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut text).unwrap_or_else(|e| panic!("{e}"));
        answers.push(String::from_utf8_lossy(&text).into_owned());
    }
    server.stop();
    for answer in &answers {
        assert!(!answer.contains(PASSWORD), "an answer shows the password: {answer}");
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("execution"), "the server logged nothing");
    assert!(!logged.contains(PASSWORD), "the log shows the password");
    assert_eq!(files_holding(&data, PASSWORD), Vec::<std::path::PathBuf>::new());
}
