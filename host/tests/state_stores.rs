//! The state store's backends answer alike: every check here runs on the
//! embedded SQLite store and on PostgreSQL (a cluster the test starts),
//! through the same traits the server uses.

use crate::common;

use chrono::{Timelike, Utc};
use common::services::Postgres;
use serde_json::json;
use weir_engine::connector::Connector;
use weir_engine::execution::{ConnectorRef, Execution, Status, TriggerType};
use weir_engine::objects::ObjectDef;
use weir_host::server::state::{
    AfterAttempt, AttemptRow, ConnectorRow, Db, ExecutionFilter, ExecutionRow, ExecutionState, FileDeletion, FileRow,
    IdempotencyKey, KeyRow, KeyState, Lease, LeaseState, PgState, PluginRow, SessionRow, StateError, StateFault,
    StateStore, WebhookRow, Workspace,
};

const PASSWORD: &str = "state-store-test";

/// Runs `check` on a new embedded store and on a new PostgreSQL database;
/// false (the test is skipped) when PostgreSQL is not installed.
fn on_both(check: fn(&dyn StateStore)) -> bool {
    let Some(pg) = Postgres::start(PASSWORD) else {
        return false;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = Db::open(&dir.path().join("state.db")).unwrap_or_else(|e| panic!("{e}"));
    check(&db);
    let store = PgState::connect(&pg.database("weir", PASSWORD), 4).unwrap_or_else(|e| panic!("{e}"));
    check(&store);
    true
}

fn key(workspace: &Workspace, id: &str, hash: &str) -> KeyRow {
    KeyRow {
        id: id.into(),
        workspace_id: workspace.id.clone(),
        name: format!("key {id}"),
        role: "operator".into(),
        connectors: Some(vec!["orders".into()]),
        secret_sha256: hash.into(),
        created_at: Utc::now(),
        revoked_at: None,
    }
}

fn kind(e: StateError) -> StateFault {
    e.kind()
}

fn workspaces_and_keys(store: &dyn StateStore) {
    assert!(store.is_empty().unwrap_or(false));
    let acme = store.workspace_named("acme").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.workspace_named("acme").ok(), Some(acme.clone()), "named once");
    let other = store.workspace_named("other").unwrap_or_else(|e| panic!("{e}"));
    assert!(!store.is_empty().unwrap_or(true));
    assert_eq!(store.workspace(&acme.id).ok().flatten(), Some(acme.clone()));
    assert_eq!(store.workspace("acme").ok().flatten(), Some(acme.clone()));
    assert_eq!(store.workspace("nobody").ok().flatten(), None);
    let names: Vec<String> = store
        .workspaces()
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["acme", "other"]);

    store
        .insert_key(&key(&acme, "k1", "h1"))
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .insert_key(&key(&acme, "k2", "h2"))
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .insert_key(&key(&other, "k3", "h3"))
        .unwrap_or_else(|e| panic!("{e}"));
    // A secret's hash names one key.
    let taken = store.insert_key(&key(&other, "k4", "h1")).err();
    assert_eq!(taken.map(kind), Some(StateFault::Conflict));

    let found = store.key_by_hash("h2").ok().flatten().unwrap_or_else(|| panic!("k2"));
    assert_eq!(
        (found.id.as_str(), found.connectors.clone()),
        ("k2", Some(vec!["orders".into()]))
    );
    let ids: Vec<String> = store
        .keys(&acme.id)
        .unwrap_or_default()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["k2", "k1"], "newest first");
    assert!(store.revoke_key(&acme.id, "k1").unwrap_or(false));
    assert!(
        !store.revoke_key(&other.id, "k1").unwrap_or(true),
        "another workspace's key"
    );
    let revoked = store.key_by_hash("h1").ok().flatten().and_then(|k| k.revoked_at);
    assert!(revoked.is_some());
    // Revoking again keeps the first time.
    assert!(store.revoke_key(&acme.id, "k1").unwrap_or(false));
    assert_eq!(
        store.key_by_hash("h1").ok().flatten().and_then(|k| k.revoked_at),
        revoked
    );

    // Console sessions: found until they end or are deleted; an ended one
    // is forgotten when the next session starts.
    let session = |token: &str, hours: i64| SessionRow {
        token_sha256: token.into(),
        key_sha256: "h2".into(),
        csrf: format!("csrf of {token}"),
        expires_at: Utc::now() + chrono::TimeDelta::hours(hours),
    };
    store
        .insert_session(&session("s1", 1))
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .insert_session(&session("ended", -1))
        .unwrap_or_else(|e| panic!("{e}"));
    let found = store.session("s1").ok().flatten();
    assert_eq!(found.as_ref().map(|s| s.csrf.as_str()), Some("csrf of s1"));
    assert_eq!(found.map(|s| s.key_sha256), Some("h2".to_string()));
    assert!(store.session("ended").ok().flatten().is_none(), "an ended session");
    assert!(store.session("s0").ok().flatten().is_none());
    store
        .insert_session(&session("s2", 1))
        .unwrap_or_else(|e| panic!("{e}"));
    store.delete_session("s1").unwrap_or_else(|e| panic!("{e}"));
    assert!(store.session("s1").ok().flatten().is_none(), "signed out");
    assert!(store.session("s2").ok().flatten().is_some());
}

fn objects(store: &dyn StateStore) {
    let ws = store.workspace_named("acme").unwrap_or_else(|e| panic!("{e}"));
    let contact: ObjectDef = serde_json::from_value(serde_json::json!({
        "name": "contact",
        "fields": [{"name": "email", "type": "text", "unique": true}, {"name": "city", "type": "text"}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut company = contact.clone();
    company.name = "company".into();
    assert!(store.insert_object(&ws.id, &contact).unwrap_or(false));
    assert!(
        !store.insert_object(&ws.id, &contact).unwrap_or(true),
        "a name is taken once"
    );
    assert!(store.insert_object(&ws.id, &company).unwrap_or(false));
    let names: Vec<String> = store
        .objects(&ws.id)
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.def.name)
        .collect();
    assert_eq!(names, ["company", "contact"]);
    let mut changed = contact.clone();
    changed.fields.truncate(1);
    store.update_object(&ws.id, &changed).unwrap_or_else(|e| panic!("{e}"));
    let stored = store
        .object(&ws.id, "contact")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("contact"));
    assert_eq!(stored.def, changed);
    assert!(stored.updated_at >= stored.created_at);
    assert_eq!(store.object_defs(&ws.id).map(|o| o.objects.len()).ok(), Some(2));
    assert!(store.object("nobody", "contact").ok().flatten().is_none());
}

fn secrets(store: &dyn StateStore) {
    let ws = store.workspace_named("acme").unwrap_or_else(|e| panic!("{e}"));
    let t0 = Utc::now();
    assert!(
        store.put_secret(&ws.id, "token", b"sealed-1", t0).unwrap_or(false),
        "created"
    );
    assert!(
        !store
            .put_secret(&ws.id, "token", b"sealed-2", t0 + chrono::TimeDelta::seconds(5))
            .unwrap_or(true),
        "replaced"
    );
    store
        .put_secret(&ws.id, "api", b"sealed-3", t0)
        .unwrap_or_else(|e| panic!("{e}"));
    let token = store
        .secret(&ws.id, "token")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("token"));
    assert_eq!(token.sealed, b"sealed-2");
    assert!(token.updated_at > token.created_at, "{token:?}");
    let names: Vec<String> = store
        .secrets(&ws.id)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["api", "token"]);
    assert!(store.any_secret().ok().flatten().is_some());
    assert!(store.delete_secret(&ws.id, "token").unwrap_or(false));
    assert!(!store.delete_secret(&ws.id, "token").unwrap_or(true));
    assert!(store.secret(&ws.id, "token").ok().flatten().is_none());
}

#[test]
fn workspaces_and_keys_are_kept_alike() {
    on_both(|s| workspaces_and_keys(s));
}

#[test]
fn objects_and_secrets_are_kept_alike() {
    on_both(|s| {
        objects(s);
        secrets(s);
    });
}

fn connector(workspace: &str, id: &str, name: &str, kind: &str) -> ConnectorRow {
    let connector = Connector::parse_json_value(serde_json::json!({"api_name": name, "type": kind}))
        .document
        .unwrap_or_else(|| panic!("a connector"));
    ConnectorRow {
        id: id.into(),
        workspace_id: workspace.into(),
        api_name: name.into(),
        connector,
        sample_file_id: None,
        draft_version: 1,
        live_version: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[test]
fn connectors_publish_keep_every_version_and_list_by_reach() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}"));
        let row = connector(&ws.id, "c1", "orders", "spreadsheet");
        assert_eq!(db.insert_connector(&row, "v1").ok(), Some(true));
        assert_eq!(db.insert_connector(&row, "v1").ok(), Some(false), "api_name is unique");
        assert_eq!(db.publish("c1", 1).ok(), Some(true));
        assert_eq!(
            db.publish("c1", 1).ok(),
            Some(false),
            "a stale draft is not published twice"
        );
        assert_eq!(db.save_draft("c1", "v2").ok(), Some(2));
        let c = db.connector(&ws.id, "orders").ok().flatten();
        assert_eq!(
            c.as_ref().map(|c| &c.connector),
            Some(&row.connector),
            "comes back parsed"
        );
        assert_eq!(c.map(|c| (c.live_version, c.draft_version)), Some((Some(1), 2)));
        let texts: Vec<_> = db
            .sql_versions("c1")
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.version, v.text, v.published_at.is_some()))
            .collect();
        assert_eq!(texts, vec![(2, "v2".to_string(), false), (1, "v1".to_string(), true)]);

        // A rename onto another connector's name is refused.
        assert_eq!(
            db.insert_connector(&connector(&ws.id, "c2", "ticks", "schedule"), "")
                .ok(),
            Some(true)
        );
        let mut renamed = db.connector_by_id("c2").ok().flatten().unwrap_or_else(|| panic!("c2"));
        renamed.api_name = "orders".into();
        assert_eq!(db.update_connector(&renamed).ok(), Some(false));
        renamed.api_name = "nightly".into();
        assert_eq!(db.update_connector(&renamed).ok(), Some(true));
        let schedules: Vec<_> = db
            .schedule_connectors()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(schedules, ["c2"]);

        // Pages, newest first, and only what a limited key reaches.
        let all: Vec<_> = db
            .connectors(&ws.id, None, None, 10)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(all, ["c2", "c1"]);
        let after: Vec<_> = db
            .connectors(&ws.id, None, Some("c2"), 10)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(after, ["c1"]);
        let only = ["orders".to_string()];
        let reached: Vec<_> = db
            .connectors(&ws.id, Some(&only), None, 10)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(reached, ["c1"]);
        db.delete_connector("c2").unwrap_or_else(|e| panic!("{e}"));
        assert!(db.connector_by_id("c2").ok().flatten().is_none());
        assert!(
            db.sql_versions("c2").unwrap_or_default().is_empty(),
            "its versions go with it"
        );
    });
}

fn queued(workspace_id: &str, id: &str) -> ExecutionRow {
    let doc = Execution::new(
        id.into(),
        ConnectorRef {
            id: Some("c1".into()),
            api_name: "hooks".into(),
            version: Some(1),
        },
        TriggerType::Webhook,
        false,
    );
    ExecutionRow {
        workspace_id: workspace_id.into(),
        connector_id: "c1".into(),
        definition: "{}".into(),
        script: String::new(),
        input_name: None,
        document: doc,
    }
}

#[test]
fn executions_are_saved_conditionally_listed_and_keyed_once() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let row = queued(&ws, "e1");
        db.insert_execution(&row).unwrap_or_else(|e| panic!("{e}"));
        let mut canceled = row.document.clone();
        canceled.transition(Status::Canceled).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.save_document(&canceled, Some(Status::Queued)).ok(), Some(true));
        let mut running = row.document.clone();
        running.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.save_document(&running, Some(Status::Queued)).ok(), Some(false));
        let stored = db.execution("e1").ok().flatten().unwrap_or_else(|| panic!("e1"));
        assert_eq!(stored.document.status, Status::Canceled);
        assert_eq!((stored.connector_id.as_str(), stored.definition.as_str()), ("c1", "{}"));

        // An idempotency key stores its execution once.
        let key = IdempotencyKey {
            key: "k".into(),
            fingerprint: "f".into(),
        };
        let expired = Utc::now() - chrono::TimeDelta::hours(1);
        assert_eq!(
            db.insert_execution_once(&queued(&ws, "e2"), &key, expired).ok(),
            Some(None)
        );
        let used = db
            .insert_execution_once(&queued(&ws, "e3"), &key, expired)
            .ok()
            .flatten();
        assert_eq!(used.map(|u| u.execution_id), Some("e2".to_string()));
        assert!(db.execution("e3").ok().flatten().is_none());
        assert_eq!(
            db.key_use("c1", "k", expired).ok().flatten().map(|u| u.fingerprint),
            Some("f".into())
        );

        let mut dry = queued(&ws, "e4");
        dry.document.is_dry_run = true;
        db.insert_execution(&dry).unwrap_or_else(|e| panic!("{e}"));
        let filter = ExecutionFilter {
            is_dry_run: Some(true),
            ..ExecutionFilter::default()
        };
        let ids = |f: &ExecutionFilter, cursor: Option<&str>| -> Vec<String> {
            db.executions(&ws, f, cursor, 10)
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(ids(&filter, None), ["e4"]);
        assert_eq!(ids(&ExecutionFilter::default(), None), ["e4", "e2", "e1"]);
        assert_eq!(ids(&ExecutionFilter::default(), Some("e2")), ["e1"]);
        let status = ExecutionFilter {
            status: Some("canceled".into()),
            ..ExecutionFilter::default()
        };
        assert_eq!(ids(&status, None), ["e1"]);
        // The workspace's runs by connector, and found by id or by the
        // idempotency key that created them.
        let filter = |connector: Option<&str>, search: Option<&str>| ExecutionFilter {
            connector_ids: connector.map(|c| vec![c.to_string()]),
            search: search.map(str::to_string),
            ..ExecutionFilter::default()
        };
        assert_eq!(ids(&filter(Some("c1"), None), None), ["e4", "e2", "e1"]);
        assert!(ids(&filter(Some("c2"), None), None).is_empty());
        assert_eq!(ids(&filter(None, Some("k")), None), ["e2"]);
        assert_eq!(ids(&filter(None, Some("e4")), None), ["e4"]);
        assert!(ids(&filter(None, Some("nothing")), None).is_empty());
        let other = db.workspace_named("other").unwrap_or_else(|e| panic!("{e}")).id;
        assert!(
            db.executions(&other, &ExecutionFilter::default(), None, 10)
                .unwrap_or_default()
                .is_empty()
        );

        // Only an ended execution is deleted, with its log.
        db.append_log("e1", "info", "a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.delete_execution("e2").ok(), Some(false), "queued");
        assert_eq!(db.delete_execution("e1").ok(), Some(true));
        assert!(db.logs("e1", 0, 10).unwrap_or_default().is_empty());
        let future = Utc::now() + chrono::TimeDelta::hours(1);
        assert!(db.ended_before(&ws, future).unwrap_or_default().is_empty());
    });
}

#[test]
fn an_end_is_stored_with_its_notifications_which_one_claim_at_a_time_delivers() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let definition = json!({"api_name": "hooks", "type": "webhook", "notifications": [
            {"on": ["failed"], "url": "https://a.example/x", "secret": "s"},
            {"on": ["success", "failed"], "url": "https://b.example/y", "secret": "s"},
            {"on": ["canceled"], "url": "https://c.example/z", "secret": "s"}]})
        .to_string();
        let mut row = queued(&ws, "e1");
        row.definition = definition.clone();
        db.insert_execution(&row).unwrap_or_else(|e| panic!("{e}"));
        let mut doc = row.document.clone();
        doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
        assert!(db.claim(&doc, "c1", 1, "p1", i64::MAX).unwrap_or(false));
        assert!(db.save_owned(&doc, "p1").unwrap_or(false));
        assert!(
            db.notifications("e1").unwrap_or_default().is_empty(),
            "nothing until it ends"
        );
        doc.transition(Status::Failed).unwrap_or_else(|e| panic!("{e}"));
        assert!(!db.save_owned(&doc, "p2").unwrap_or(true), "not p2's run");
        assert!(
            db.notifications("e1").unwrap_or_default().is_empty(),
            "a refused end makes none"
        );
        assert!(db.save_owned(&doc, "p1").unwrap_or(false));
        // Saved again (a retried write): still one each.
        assert!(db.save_document(&doc, None).unwrap_or(false));
        let stored = db.notifications("e1").unwrap_or_default();
        let made: Vec<(u32, &str)> = stored.iter().map(|(n, _)| (n.n, n.url.as_str())).collect();
        assert_eq!(made, [(0, "https://a.example/x"), (1, "https://b.example/y")]);
        assert!(
            stored
                .iter()
                .all(|(n, a)| n.state == "pending" && a.is_empty() && n.webhook_id.starts_with("msg_e1_"))
        );
        let body: serde_json::Value = serde_json::from_str(&stored[0].0.body).unwrap_or_default();
        assert_eq!(body["type"], "execution.failed");
        assert_eq!(body["data"]["id"], "e1");

        // One claim at a time; an attempt is stored only by its claimant.
        let now = Utc::now().timestamp_millis();
        let claimed = db.claim_notifications("p1", now, now + 60_000, 10).unwrap_or_default();
        assert_eq!(claimed.len(), 2);
        assert!(
            db.claim_notifications("p2", now, now + 60_000, 10)
                .unwrap_or_default()
                .is_empty()
        );
        let attempt = |n: u32| AttemptRow {
            attempt: n,
            at: Utc::now(),
            status: Some(500),
            error: Some("answered 500".into()),
            took_ms: 3,
        };
        assert!(
            !db.record_attempt("e1", 0, "p2", &attempt(1), AfterAttempt::RetryAt(now + 5))
                .unwrap_or(true)
        );
        assert!(
            db.record_attempt("e1", 0, "p1", &attempt(1), AfterAttempt::RetryAt(now + 5))
                .unwrap_or(false)
        );
        assert!(
            db.record_attempt("e1", 1, "p1", &attempt(1), AfterAttempt::Delivered)
                .unwrap_or(false)
        );
        assert_eq!(db.next_notification_due().ok().flatten(), Some(now + 5));
        // Due again, and claimed by whoever asks first; a claim that
        // expires passes to the next.
        let again = db.claim_notifications("p2", now + 10, now + 20, 10).unwrap_or_default();
        assert_eq!(again.iter().map(|n| (n.n, n.attempts)).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(
            db.claim_notifications("p1", now + 30, now + 90, 10)
                .unwrap_or_default()
                .len(),
            1
        );
        assert!(
            db.record_attempt("e1", 0, "p1", &attempt(2), AfterAttempt::GiveUp)
                .unwrap_or(false)
        );
        let stored = db.notifications("e1").unwrap_or_default();
        assert_eq!(stored[0].0.state, "failed");
        assert_eq!(stored[0].1.len(), 2);
        assert_eq!(stored[1].0.state, "delivered");
        assert_eq!(db.next_notification_due().ok().flatten(), None);

        // Redelivered: due now, for one more attempt.
        assert!(db.redeliver("e1", 0, now + 100).unwrap_or(false));
        assert!(!db.redeliver("e1", 9, now + 100).unwrap_or(true));
        let due = db
            .claim_notifications("p1", now + 100, now + 200, 10)
            .unwrap_or_default();
        assert_eq!(
            due.iter().map(|n| (n.n, n.retry_until)).collect::<Vec<_>>(),
            [(0, Some(now + 100))]
        );

        // A publish's dry run tells no one, and deleting an execution
        // deletes its notifications.
        let mut publish = queued(&ws, "e2");
        publish.definition = definition;
        publish.document.trigger_type = TriggerType::Publish;
        db.insert_execution(&publish).unwrap_or_else(|e| panic!("{e}"));
        let mut doc = publish.document.clone();
        doc.transition(Status::Canceled).unwrap_or_else(|e| panic!("{e}"));
        assert!(db.save_document(&doc, Some(Status::Queued)).unwrap_or(false));
        assert!(db.notifications("e2").unwrap_or_default().is_empty());
        assert!(db.delete_execution("e1").unwrap_or(false));
        assert!(db.notifications("e1").unwrap_or_default().is_empty());
    });
}

#[test]
fn queue_positions_count_one_workspace_and_claims_hold_leases() {
    on_both(|db| {
        let acme = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let other = db.workspace_named("other").unwrap_or_else(|e| panic!("{e}")).id;
        for (ws, id) in [(&other, "e1"), (&acme, "e2"), (&other, "e3"), (&acme, "e4")] {
            db.insert_execution(&queued(ws, id)).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(db.queue_position(&acme, "e4").ok(), Some(1));
        assert_eq!(db.queue_position(&other, "e3").ok(), Some(1));
        assert_eq!(db.queued().map(|q| q.len()).ok(), Some(4));

        let claim = |id: &str, owner: &str| {
            let mut doc = queued(&acme, id).document;
            doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
            db.claim(&doc, "c1", 2, owner, 1_000).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(claim("e1", "p1"));
        assert!(!claim("e1", "p2"), "claimed once");
        assert!(claim("e2", "p2"));
        assert!(!claim("e3", "p3"), "max_concurrency counts every process's runs");

        let leases = db.leases().unwrap_or_else(|e| panic!("{e}"));
        let e1 = leases
            .iter()
            .find(|l| l.id == "e1")
            .cloned()
            .unwrap_or_else(|| panic!("{leases:?}"));
        assert_eq!((e1.owner.as_deref(), e1.until), (Some("p1"), Some(1_000)));
        assert_eq!(db.extend_leases("p1", &["e1".into()], 2_000).ok(), Some(vec![]));
        assert!(
            !db.take_over(&e1, "p2").unwrap_or(true),
            "a lease renewed meanwhile is not taken"
        );
        let renewed = Lease {
            until: Some(2_000),
            ..e1
        };
        assert!(db.take_over(&renewed, "p2").unwrap_or(false));
        assert_eq!(
            db.extend_leases("p1", &["e1".into()], 3_000).ok(),
            Some(vec!["e1".to_string()])
        );
        let doc = db
            .execution("e1")
            .ok()
            .flatten()
            .map(|r| r.document)
            .unwrap_or_else(|| panic!("e1"));
        assert_eq!(
            db.save_owned(&doc, "p1").ok(),
            Some(false),
            "the old owner writes nothing"
        );
        assert_eq!(db.save_owned(&doc, "p2").ok(), Some(true));

        assert_eq!(db.request_cancel("e2").ok(), Some(true));
        let shown = db.execution("e2").ok().flatten().map(|r| r.document.status);
        assert_eq!(shown, Some(Status::Canceling));
        assert_eq!(db.cancel_requests("p2").ok(), Some(vec!["e2".to_string()]));
        assert_eq!(db.request_cancel("e4").ok(), Some(false), "a queued run is not running");

        let mut ended = db
            .execution("e2")
            .ok()
            .flatten()
            .map(|r| r.document)
            .unwrap_or_else(|| panic!("e2"));
        ended.transition(Status::Canceled).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.save_owned(&ended, "p2").ok(), Some(true));
        assert_eq!(db.extend_leases("p2", &["e2".into()], 4_000).ok(), Some(vec![]));
    });
}

#[test]
fn claims_from_many_threads_never_pass_max_concurrency() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let ids: Vec<String> = (0..12).map(|i| format!("e{i:02}")).collect();
        for id in &ids {
            db.insert_execution(&queued(&ws, id)).unwrap_or_else(|e| panic!("{e}"));
        }
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for (n, id) in ids.iter().enumerate() {
                let (won, ws) = (&won, &ws);
                scope.spawn(move || {
                    let mut doc = queued(ws, id).document;
                    doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
                    if db
                        .claim(&doc, "c1", 3, &format!("p{n}"), 1_000)
                        .unwrap_or_else(|e| panic!("{e}"))
                    {
                        won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(won.into_inner(), 3);
    });
}

fn payload(id: &str) -> WebhookRow {
    WebhookRow {
        received_at: Utc::now().to_rfc3339(),
        webhook_id: id.into(),
        content_type: "text/plain".into(),
        querystring: String::new(),
        body: id.into(),
    }
}

#[test]
fn a_due_batch_takes_no_payload_and_never_closes_without_one_it_holds() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let window = std::time::Duration::from_millis(400);
        let receive = |id: &str, buffering: bool| {
            db.receive_webhook(&ws, "c1", &payload(id), true, window, buffering)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = receive("a", false);
        assert_eq!(receive("b", false).batch_id, first.batch_id, "within the window");
        let again = receive("a", false);
        assert!(again.duplicate && !again.differs, "{again:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let due = db.due_batches(Utc::now()).unwrap_or_default();
        assert_eq!(due.len(), 1);
        assert!(db.next_batch_due().ok().flatten().is_some());
        let read = db.batch_payloads(&first.batch_id).unwrap_or_default();
        assert_eq!(read.len(), 2);

        let late = receive("c", false);
        assert_ne!(late.batch_id, first.batch_id, "after the window, the next batch");
        let buffered = receive("d", true);
        assert_eq!(buffered.batch_id, first.batch_id, "buffering, the open batch");
        assert_eq!(
            db.close_batch(&first.batch_id, read.len(), &queued(&ws, "e1")).ok(),
            Some(false)
        );
        assert!(
            db.execution("e1").ok().flatten().is_none(),
            "nothing stored of a refused close"
        );
        let again = db.batch_payloads(&first.batch_id).unwrap_or_default();
        let ids: Vec<_> = again.iter().map(|p| p.webhook_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert_eq!(
            db.close_batch(&first.batch_id, again.len(), &queued(&ws, "e1")).ok(),
            Some(true)
        );
        assert_eq!(
            db.close_batch(&first.batch_id, again.len(), &queued(&ws, "e2")).ok(),
            Some(false),
            "a batch closes once"
        );
        let mut changed = payload("a");
        changed.body = "other".into();
        let differs = db
            .receive_webhook(&ws, "c1", &changed, true, window, false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(differs.duplicate && differs.differs);
        assert_eq!(differs.execution_id.as_deref(), Some("e1"));
    });
}

#[test]
fn schedule_ticks_run_once_and_log_lines_are_numbered_per_execution() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let tick = Utc::now().with_nanosecond(0).unwrap_or_else(Utc::now);
        assert_eq!(db.record_tick("c1", tick, &queued(&ws, "t1")).ok(), Some(true));
        assert_eq!(
            db.record_tick("c1", tick, &queued(&ws, "t2")).ok(),
            Some(false),
            "a tick runs once"
        );
        assert_eq!(db.last_tick("c1").ok().flatten(), Some(tick));
        assert_eq!(
            db.last_successful_tick("c1", tick + chrono::TimeDelta::hours(1))
                .ok()
                .flatten(),
            None
        );

        for m in ["a", "b", "c"] {
            db.append_log("e1", "info", m).unwrap_or_else(|e| panic!("{e}"));
        }
        db.append_log("e2", "info", "x").unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<_> = db
            .logs("e1", 1, 10)
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.seq, l.message))
            .collect();
        assert_eq!(got, vec![(2, "b".to_string()), (3, "c".to_string())]);
        // Writers at once never lose a line.
        std::thread::scope(|scope| {
            for t in 0..4 {
                scope.spawn(move || {
                    for n in 0..10 {
                        db.append_log("e3", "info", &format!("{t}.{n}"))
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                });
            }
        });
        assert_eq!(db.logs("e3", 0, 100).map(|l| l.len()).ok(), Some(40));
    });
}

#[test]
fn files_plugins_and_content_removals_agree() {
    on_both(|db| {
        let ws = db.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
        let file = FileRow {
            sha256: "a".repeat(64),
            size: 3,
            name: "x.csv".into(),
            content_type: "text/csv".into(),
            created_at: Utc::now(),
        };
        let stored = db.insert_file(&ws, &file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stored.name.as_str(), stored.size), ("x.csv", 3));
        db.note_uploader(&ws, &file.sha256, "k1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.file_reached(&ws, &file.sha256, "k1", &[]).ok(), Some(true));
        assert_eq!(
            db.file_reached(&ws, &file.sha256, "k2", &["orders".into()]).ok(),
            Some(false)
        );
        assert!(db.content_in_use(&file.sha256).unwrap_or(false));
        assert_eq!(
            db.begin_content_removal(&file.sha256).ok(),
            Some(false),
            "held by a file"
        );
        assert_eq!(db.delete_file(&ws, &file.sha256).ok(), Some(FileDeletion::Deleted));
        assert_eq!(db.delete_file(&ws, &file.sha256).ok(), Some(FileDeletion::Missing));
        assert_eq!(db.begin_content_removal(&file.sha256).ok(), Some(true));
        let under_way = db.content_removals(&file.sha256).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((under_way.begun, under_way.active), (1, 1));
        assert!(under_way.active_since.is_some());
        db.end_content_removal(&file.sha256).unwrap_or_else(|e| panic!("{e}"));
        let ended = db.content_removals(&file.sha256).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ended.begun, ended.active, ended.active_since), (1, 0, None));

        let plugin = PluginRow {
            name: "phone".into(),
            version: "0.1.0".into(),
            sha256: "b".repeat(64),
            size: 10,
            created_at: Utc::now(),
        };
        assert_eq!(db.insert_plugin(&ws, &plugin).map(|(_, new)| new).ok(), Some(true));
        assert_eq!(db.insert_plugin(&ws, &plugin).map(|(_, new)| new).ok(), Some(false));
        assert_eq!(
            db.begin_content_removal(&plugin.sha256).ok(),
            Some(false),
            "held by a plugin"
        );
        assert_eq!(
            db.plugin_by_sha(&ws, &plugin.sha256).ok().flatten().map(|p| p.name),
            Some("phone".into())
        );
        assert_eq!(db.plugins(&ws).map(|p| p.len()).ok(), Some(1));
        let future = Utc::now() + chrono::TimeDelta::hours(1);
        assert!(db.unused_files_before(&ws, future).unwrap_or_default().is_empty());
    });
}

#[test]
fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let Some(pg) = Postgres::start(PASSWORD) else { return };
    let url = pg.database("schema", PASSWORD);
    // Processes starting together apply each migration once.
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgState::connect(&url, 2).map(|_| ()))
        })
        .collect();
    for start in starts {
        let started = start.join().unwrap_or_else(|_| panic!("a start panicked"));
        assert!(started.is_ok(), "{started:?}");
    }
    let versions = pg.sql_in("schema", "SELECT version FROM weir_schema");
    assert_eq!(versions.lines().count(), 1, "{versions}");
    pg.sql_in("schema", "UPDATE weir_schema SET version = version + 1");
    match PgState::connect(&url, 2) {
        Err(StateError::TooNew { found, known }) => assert_eq!(found, known + 1),
        other => panic!("a newer schema was not refused: {:?}", other.err()),
    }
}

#[test]
fn a_database_that_does_not_answer_is_unavailable() {
    let port = common::services::free_port();
    let refused = PgState::connect(&format!("postgres://weir:x@127.0.0.1:{port}/none"), 2).err();
    assert_eq!(refused.map(kind), Some(StateFault::Unavailable));
}

#[test]
fn a_cancel_asked_anywhere_is_signalled_to_every_listener_on_postgres() {
    let Some(pg) = Postgres::start(PASSWORD) else { return };
    let url = pg.database("signals", PASSWORD);
    let asker = PgState::connect(&url, 2).unwrap_or_else(|e| panic!("{e}"));
    let owner = PgState::connect(&url, 2).unwrap_or_else(|e| panic!("{e}"));
    let mut signals = owner
        .cancel_signals()
        .unwrap_or_else(|| panic!("PostgreSQL signals cancels"));
    let ws = asker.workspace_named("acme").unwrap_or_else(|e| panic!("{e}")).id;
    asker
        .insert_execution(&queued(&ws, "e1"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut doc = queued(&ws, "e1").document;
    doc.transition(Status::Running).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(asker.claim(&doc, "c1", 1, "owner", i64::MAX).ok(), Some(true));
    // The listener may still be connecting: ask until it hears.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let heard = loop {
        assert_eq!(asker.request_cancel("e1").ok(), Some(true));
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Ok(id) = signals.try_recv() {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "no signal");
    };
    assert_eq!(heard, "e1");
    assert_eq!(
        asker.request_cancel("nothing").ok(),
        Some(false),
        "nothing is signalled for no run"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = Db::open(&dir.path().join("state.db")).unwrap_or_else(|e| panic!("{e}"));
    assert!(db.cancel_signals().is_none(), "SQLite is read instead");
}

#[test]
fn one_process_at_a_time_holds_the_sweepers_turn() {
    on_both(|db| {
        assert_eq!(
            db.sweeper_turn("a", 1_000, 3_000).ok(),
            Some(true),
            "the first takes it"
        );
        assert_eq!(
            db.sweeper_turn("b", 2_000, 4_000).ok(),
            Some(false),
            "not while a holds it"
        );
        assert_eq!(
            db.sweeper_turn("a", 2_500, 4_500).ok(),
            Some(true),
            "its holder keeps it"
        );
        assert_eq!(db.sweeper_turn("b", 4_000, 6_000).ok(), Some(false));
        assert_eq!(
            db.sweeper_turn("b", 4_600, 6_600).ok(),
            Some(true),
            "once a's turn has passed"
        );
        assert_eq!(
            db.sweeper_turn("a", 5_000, 7_000).ok(),
            Some(false),
            "and a waits its turn"
        );
    });
}
