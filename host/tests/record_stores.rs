//! The record store's backends answer alike: every check here runs on the
//! embedded SQLite store and on PostgreSQL (a cluster the test binary
//! starts, a database per check), through the trait load steps and
//! `records.<object>` use. What only one backend has (SQLite's WAL, the
//! PostgreSQL layout) is checked after.

use crate::common;

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::arrow::record_batch::RecordBatch;
use weir_engine::error::{Error, ErrorCode, StoreFault};
use weir_engine::objects::{FieldDef, FieldType, ObjectDef, Objects};
use weir_engine::store::{
    Comparison, Condition, Found, PgStore, RecordId, RecordStore, Scan, SqliteStore, Tally, Value, Write, WriteBatch,
};

/// Two handles on one store, as two processes have: `(runner, other)`.
type Open = Box<dyn Fn() -> Arc<dyn RecordStore>>;

/// Runs `check` on a new embedded store and on a new PostgreSQL
/// database, each given a way to open another handle on the same store;
/// false (the check ran only on SQLite) when PostgreSQL is not installed.
fn on_both(check: fn(&Open)) -> bool {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("records.db");
    let sqlite: Open = Box::new(move || Arc::new(SqliteStore::open(&path).unwrap_or_else(|e| panic!("{e}"))));
    check(&sqlite);
    let Some(url) = common::services::shared_database() else {
        return false;
    };
    let postgres: Open = Box::new(move || Arc::new(PgStore::connect(&url, 4).unwrap_or_else(|e| panic!("{e}"))));
    check(&postgres);
    true
}

fn contact() -> ObjectDef {
    let objects = Objects::from_toml(
        r#"
[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  unique = true
  [[objects.fields]]
  name = "score"
  type = "number"
  [[objects.fields]]
  name = "vip"
  type = "boolean"
  [[objects.fields]]
  name = "born"
  type = "date"
  [[objects.fields]]
  name = "seen"
  type = "datetime"
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    objects.objects[0].clone()
}

/// The fields `create` writes.
fn fields() -> Vec<String> {
    ["name", "email", "score"].map(String::from).to_vec()
}

fn create(email: &str, score: f64) -> Write {
    Write {
        id: RecordId::now_v7(),
        values: vec![
            Some(Value::Text(format!("N {email}"))),
            Some(Value::Text(email.into())),
            Some(Value::Number(score)),
        ],
    }
}

fn creates(writes: Vec<Write>) -> WriteBatch {
    WriteBatch {
        fields: fields(),
        creates: writes,
        updates: vec![],
        tally: None,
    }
}

fn ids(found: Vec<Vec<Found>>) -> Vec<Vec<RecordId>> {
    found
        .into_iter()
        .map(|f| f.into_iter().map(|r| r.id).collect())
        .collect()
}

fn ok<T>(r: weir_engine::error::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn create_lookup_get_update(open: &Open) {
    let store = open();
    let def = contact();
    ok(store.ensure_object("w1", &def));
    let a = create("a@x.io", 1.0);
    let b = create("b@x.io", 2.5);
    ok(store.commit("w1", "contact", &creates(vec![a.clone(), b.clone()])));
    assert_eq!(ok(store.count("w1", "contact")), 2);
    let found = ok(store.lookup(
        "w1",
        &def,
        "email",
        &[
            Value::Text("b@x.io".into()),
            Value::Text("zz".into()),
            Value::Null,
            Value::Text("a@x.io".into()),
            Value::Text("b@x.io".into()),
            Value::Text("A@x.io".into()),
        ],
        &["score".into(), "name".into()],
    ));
    let b_found = Found {
        id: b.id,
        values: vec![Value::Number(2.5), Value::Text("N b@x.io".into())],
    };
    let a_found = Found {
        id: a.id,
        values: vec![Value::Number(1.0), Value::Text("N a@x.io".into())],
    };
    // Every row with a key gets the record, repeated keys included; text
    // matches exactly.
    assert_eq!(
        found,
        vec![
            vec![b_found.clone()],
            vec![],
            vec![],
            vec![a_found],
            vec![b_found],
            vec![]
        ]
    );
    // Numbers by value; the id by its text.
    let by_score = ok(store.lookup("w1", &def, "score", &[Value::Number(1.0), Value::Number(2.5)], &[]));
    assert_eq!(ids(by_score), vec![vec![a.id], vec![b.id]]);
    let by_id = ok(store.lookup(
        "w1",
        &def,
        "id",
        &[Value::Text(b.id.to_string()), Value::Text("not an id".into())],
        &["email".into()],
    ));
    assert_eq!(
        by_id[0].first().map(|f| &f.values),
        Some(&vec![Value::Text("b@x.io".into())])
    );
    assert!(by_id[1].is_empty());

    let seen = 1_700_000_000_123_456;
    ok(store.commit(
        "w1",
        "contact",
        &WriteBatch {
            fields: vec!["vip".into(), "born".into(), "score".into(), "seen".into()],
            creates: vec![],
            updates: vec![
                Write {
                    id: a.id,
                    values: vec![
                        Some(Value::Bool(true)),
                        Some(Value::Date(-5000)),
                        None,
                        Some(Value::Datetime(seen)),
                    ],
                },
                Write {
                    id: b.id,
                    values: vec![None, None, Some(Value::Number(7.0)), None],
                },
                Write {
                    id: RecordId::now_v7(),
                    values: vec![None, None, None, None],
                },
            ],
            tally: Some(Tally {
                execution_id: "e1".into(),
                order: 1,
                total: 3,
                updated: 2,
                skipped: 1,
                ..Tally::default()
            }),
        },
    ));
    // The tally is kept with the commit, and added to by the next.
    let tallies = ok(store.tallies("e1"));
    assert_eq!(
        tallies
            .iter()
            .map(|t| (t.order, t.total, t.updated, t.skipped))
            .collect::<Vec<_>>(),
        [(1, 3, 2, 1)]
    );
    assert!(ok(store.tallies("e2")).is_empty());
    let got = ok(store.get("w1", &def, &[a.id, RecordId::now_v7()]));
    let rec = got[0].as_ref().unwrap_or_else(|| panic!("a exists"));
    assert_eq!(rec.fields["vip"], Value::Bool(true));
    assert_eq!(rec.fields["born"], Value::Date(-5000));
    assert_eq!(rec.fields["seen"], Value::Datetime(seen));
    assert_eq!(rec.fields["score"], Value::Number(1.0), "left as it was");
    assert_eq!(rec.fields["name"], Value::Text("N a@x.io".into()));
    assert!(got[1].is_none());
    let b = ok(store.get("w1", &def, &[b.id]))
        .remove(0)
        .unwrap_or_else(|| panic!("b exists"));
    assert_eq!(
        (&b.fields["score"], &b.fields["vip"]),
        (&Value::Number(7.0), &Value::Null)
    );

    // Pages, newest first, with equality filters.
    let more: Vec<Write> = (0..5).map(|i| create(&format!("p{i}@x.io"), 9.0)).collect();
    ok(store.commit("w1", "contact", &creates(more.clone())));
    let page = |filters: &[(String, Value)], before: Option<RecordId>| -> Vec<RecordId> {
        ok(store.page("w1", &def, filters, before, 3))
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    let nines = [("score".to_string(), Value::Number(9.0))];
    let first = page(&nines, None);
    assert_eq!(first, [more[4].id, more[3].id, more[2].id]);
    assert_eq!(page(&nines, first.last().copied()), [more[1].id, more[0].id]);
    assert_eq!(page(&[("vip".into(), Value::Bool(true))], None), [a.id]);
    assert!(page(&[("score".into(), Value::Text("9".into()))], None).is_empty());
}

#[test]
fn records_are_created_found_read_and_updated_alike() {
    on_both(create_lookup_get_update);
}

fn scans(open: &Open) {
    let store = open();
    let def = contact();
    ok(store.ensure_object("w", &def));
    let writes: Vec<Write> = (0..10).map(|i| create(&format!("u{i}@x.io"), f64::from(i))).collect();
    ok(store.commit("w", "contact", &creates(writes.clone())));
    let snapshot = ok(store.snapshot());
    // Committed after the snapshot, from another handle: never read from it.
    let later = (10..20).map(|i| create(&format!("u{i}@x.io"), f64::from(i))).collect();
    ok(open().commit("w", "contact", &creates(later)));
    let read = |scan: Scan| -> Vec<RecordBatch> {
        let mut batches = Vec::new();
        ok(snapshot.scan("w", &def, &scan, &mut |b| {
            batches.push(b);
            true
        }));
        batches
    };
    let emails = |batches: &[RecordBatch]| -> Vec<String> {
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    };
    let batches = read(Scan {
        fields: vec!["email".into(), "score".into()],
        conditions: vec![
            Condition::Compare("score".into(), Comparison::GtEq, Value::Number(3.0)),
            Condition::Compare("score".into(), Comparison::Lt, Value::Number(8.0)),
            Condition::In(
                "email".into(),
                ["u3@x.io", "u5@x.io", "u9@x.io"]
                    .map(|e| Value::Text(e.into()))
                    .to_vec(),
            ),
            Condition::Null("vip".into(), true),
        ],
        limit: None,
        batch_rows: 1,
    });
    assert_eq!(batches.len(), 2, "one record a batch");
    assert_eq!(batches[0].schema().field(1).name(), "score");
    assert_eq!(
        batches[0].column(1).as_primitive::<Float64Type>().value(0)
            + batches[1].column(1).as_primitive::<Float64Type>().value(0),
        8.0
    );
    assert_eq!(emails(&batches), ["u3@x.io", "u5@x.io"]);
    // The id reads as its text.
    let by_id = read(Scan {
        fields: vec!["id".into(), "vip".into()],
        conditions: vec![Condition::Compare(
            "id".into(),
            Comparison::Eq,
            Value::Text(writes[4].id.to_string()),
        )],
        ..Scan::default()
    });
    assert_eq!(by_id.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    assert_eq!(by_id[0].column(0).as_string::<i32>().value(0), writes[4].id.to_string());
    assert!(by_id[0].column(1).is_null(0));

    // No fields: only how many; a limit; an empty list matches nothing.
    let counted = read(Scan {
        limit: Some(4),
        batch_rows: 3,
        ..Scan::default()
    });
    assert_eq!(counted.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), [3, 1]);
    assert_eq!(counted[0].num_columns(), 0);
    let every = read(Scan {
        batch_rows: 4,
        ..Scan::default()
    });
    assert_eq!(
        every.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
        [4, 4, 2],
        "the ten records of the snapshot, not the twenty of the store"
    );
    assert_eq!(ok(store.count("w", "contact")), 20);
    let none = read(Scan {
        fields: vec!["email".into()],
        conditions: vec![Condition::In("email".into(), vec![])],
        ..Scan::default()
    });
    assert!(none.is_empty());
    // A condition the store cannot apply is the caller's, with the limit.
    let mixed = read(Scan {
        fields: vec!["email".into()],
        conditions: vec![Condition::Compare(
            "score".into(),
            Comparison::Eq,
            Value::Text("3".into()),
        )],
        limit: Some(2),
        batch_rows: 100,
    });
    let rows: usize = mixed.iter().map(RecordBatch::num_rows).sum();
    assert!(rows == 0 || rows == 10, "either applied (none) or left whole: {rows}");

    // Stopping early reads no further.
    let mut handed = 0;
    let one_at_a_time = Scan {
        fields: vec!["id".into()],
        batch_rows: 1,
        ..Scan::default()
    };
    ok(snapshot.scan("w", &def, &one_at_a_time, &mut |_| {
        handed += 1;
        handed < 2
    }));
    assert_eq!(handed, 2);
}

#[test]
fn a_snapshot_is_read_in_batches_of_the_fields_and_conditions_asked_for() {
    on_both(scans);
}

fn all_or_nothing(open: &Open) {
    let store = open();
    let def = contact();
    ok(store.ensure_object("w1", &def));
    ok(store.ensure_object("w2", &def));
    let taken = create("same@x.io", 1.0);
    ok(store.commit("w1", "contact", &creates(vec![taken])));
    let err = store
        .commit(
            "w1",
            "contact",
            &creates(vec![create("new@x.io", 1.0), create("same@x.io", 2.0)]),
        )
        .err();
    assert!(
        matches!(
            err,
            Some(Error::Store {
                kind: StoreFault::Conflict,
                ..
            })
        ),
        "a unique field refuses a second record: {err:?}"
    );
    assert_eq!(ok(store.count("w1", "contact")), 1, "nothing of the failed batch stays");
    // Workspaces do not see each other.
    assert_eq!(ok(store.count("w2", "contact")), 0);
    let found = ok(store.lookup("w2", &def, "email", &[Value::Text("same@x.io".into())], &[]));
    assert_eq!(found, vec![Vec::<Found>::new()]);
    ok(store.commit("w2", "contact", &creates(vec![create("same@x.io", 1.0)])));
}

#[test]
fn a_batch_is_all_or_nothing_and_workspaces_are_apart() {
    on_both(all_or_nothing);
}

fn fields_and_many_keys(open: &Open) {
    let mut def = contact();
    let a = create("a@x.io", 1.0);
    {
        let store = open();
        ok(store.ensure_object("w", &def));
        ok(store.ensure_index("w", "contact", "score"));
        ok(store.ensure_index("w", "contact", "score"));
        ok(store.commit("w", "contact", &creates(vec![a.clone()])));
    }
    def.fields.push(FieldDef {
        name: "city".into(),
        kind: FieldType::Text,
        unique: false,
        options: vec![],
        object: None,
    });
    let store = open();
    ok(store.ensure_object("w", &def));
    let rec = ok(store.get("w", &def, &[a.id]))
        .remove(0)
        .unwrap_or_else(|| panic!("kept"));
    assert_eq!(rec.fields["email"], Value::Text("a@x.io".into()));
    assert_eq!(rec.fields["city"], Value::Null);
    // Creates writing differing fields in one batch, and more keys than
    // one statement binds.
    let writes: Vec<Write> = (0..2500)
        .map(|i| {
            let mut w = create(&format!("u{i}@x.io"), f64::from(i));
            w.values.push((i % 7 == 0).then(|| Value::Text("Oslo".into())));
            w
        })
        .collect();
    let mut batch = creates(writes.clone());
    batch.fields.push("city".into());
    ok(store.commit("w", "contact", &batch));
    let keys: Vec<Value> = (0..2500).rev().map(|i| Value::Text(format!("u{i}@x.io"))).collect();
    let found = ids(ok(store.lookup("w", &def, "email", &keys, &[])));
    assert_eq!(found.len(), 2500);
    assert_eq!(found[0], vec![writes[2499].id]);
    assert_eq!(found[2499], vec![writes[0].id]);
    // A batch that writes no field makes records of only an id.
    let bare = RecordId::now_v7();
    let nothing = WriteBatch {
        fields: vec![],
        creates: vec![Write {
            id: bare,
            values: vec![],
        }],
        updates: vec![],
        tally: None,
    };
    ok(store.commit("w", "contact", &nothing));
    let found = ok(store.get("w", &def, &[bare])).remove(0);
    assert_eq!(found.map(|r| r.fields["email"].clone()), Some(Value::Null));
    let got = ok(store.get("w", &def, &writes.iter().map(|w| w.id).collect::<Vec<_>>()));
    for (i, rec) in got.into_iter().enumerate() {
        let rec = rec.unwrap_or_else(|| panic!("record {i} missing"));
        let city = if i % 7 == 0 {
            Value::Text("Oslo".into())
        } else {
            Value::Null
        };
        assert_eq!(rec.fields["city"], city, "record {i}");
    }
}

#[test]
fn new_fields_are_added_and_many_keys_are_found() {
    on_both(fields_and_many_keys);
}

fn revoked(open: &Open) {
    let runner = open();
    let def = contact();
    ok(runner.ensure_object("w", &def));
    let batch = |email: &str, execution: &str| WriteBatch {
        tally: Some(Tally {
            execution_id: execution.into(),
            order: 1,
            total: 1,
            created: 1,
            ..Tally::default()
        }),
        ..creates(vec![create(email, 1.0)])
    };
    ok(runner.commit("w", "contact", &batch("a@x.io", "e1")));
    // Another process resolves the run.
    let resolver = open();
    ok(resolver.revoke("e1"));
    ok(resolver.revoke("e1"));
    let refused = runner.commit("w", "contact", &batch("b@x.io", "e1"));
    assert!(matches!(&refused, Err(Error::Revoked(id)) if id == "e1"), "{refused:?}");
    assert_eq!(refused.err().map(|e| e.code()), Some(ErrorCode::WorkerLost));
    // Nothing of the refused batch is applied, its tally included.
    assert_eq!(ok(resolver.count("w", "contact")), 1);
    assert_eq!(ok(resolver.tallies("e1"))[0].created, 1);
    ok(runner.commit("w", "contact", &batch("c@x.io", "e2")));
    assert_eq!(ok(resolver.count("w", "contact")), 2);
}

#[test]
fn a_revoked_execution_commits_nothing_more_from_any_process() {
    on_both(revoked);
}

fn revoke_while_committing(open: &Open) {
    // Commits of one run from one handle while another revokes it: every
    // commit either lands whole before the revocation returns or is
    // refused, and the tally is exactly the records that landed.
    let def = contact();
    let runner = open();
    ok(runner.ensure_object("w", &def));
    let resolver = open();
    let committer = {
        let runner = runner.clone();
        std::thread::spawn(move || {
            let mut landed = 0u64;
            for i in 0..200 {
                let writes: Vec<Write> = (0..20).map(|k| create(&format!("r{i}-{k}@x.io"), 1.0)).collect();
                let batch = WriteBatch {
                    tally: Some(Tally {
                        execution_id: "race".into(),
                        order: 1,
                        total: 20,
                        created: 20,
                        ..Tally::default()
                    }),
                    ..creates(writes)
                };
                match runner.commit("w", "contact", &batch) {
                    Ok(()) => landed += 20,
                    Err(Error::Revoked(_)) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            landed
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(30));
    ok(resolver.revoke("race"));
    let at_revoke = ok(resolver.count("w", "contact"));
    let landed = committer.join().unwrap_or_else(|_| panic!("committer panicked"));
    assert_eq!(
        ok(resolver.count("w", "contact")),
        at_revoke,
        "nothing lands after the revocation"
    );
    assert_eq!(landed, at_revoke);
    let tally = ok(resolver.tallies("race")).first().map_or(0, |t| t.created);
    assert_eq!(tally, landed, "counts equal records");
}

#[test]
fn a_revocation_waits_for_the_commit_in_flight_and_refuses_the_rest() {
    on_both(revoke_while_committing);
}

#[test]
fn records_on_postgres_are_tables_a_team_reads_with_plain_sql() {
    let Some(pg) = common::services::shared_postgres() else {
        return;
    };
    let Some(url) = common::services::shared_database() else {
        return;
    };
    let name = url
        .rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .unwrap_or_default()
        .to_string();
    let store = ok(PgStore::connect(&url, 2));
    let def = contact();
    ok(store.ensure_object("0193-Acme", &def));
    let a = create("a@x.io", 2.5);
    ok(store.commit("0193-Acme", "contact", &creates(vec![a.clone()])));
    let rows = pg.sql_in(
        &name,
        "SELECT id, email, score + 1 FROM records_0193_acme.contact WHERE score > 2",
    );
    assert_eq!(rows.trim(), format!("{}|a@x.io|3.5", a.id));
    let types = pg.sql_in(
        &name,
        "SELECT column_name || ':' || data_type FROM information_schema.columns
         WHERE table_schema = 'records_0193_acme' AND table_name = 'contact' ORDER BY ordinal_position",
    );
    assert_eq!(
        types.lines().collect::<Vec<_>>(),
        [
            "id:uuid",
            "name:text",
            "email:text",
            "score:double precision",
            "vip:boolean",
            "born:date",
            "seen:timestamp with time zone"
        ]
    );
    let unique = pg.sql_in(
        &name,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'records_0193_acme' AND indexname = 'contact_email_key'",
    );
    assert!(
        unique.contains("UNIQUE INDEX") && unique.contains("(email)"),
        "{unique}"
    );
}
