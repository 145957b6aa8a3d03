//! The state store's backends answer alike: every check here runs on the
//! embedded SQLite store and on PostgreSQL (a cluster the test starts),
//! through the same traits the server uses.

mod common;

use chrono::Utc;
use common::services::Postgres;
use weir_engine::objects::ObjectDef;
use weir_host::server::state::{
    Db, KeyRow, KeyState, ObjectState, PgState, SecretState, StateError, StateFault, Workspace,
};

const PASSWORD: &str = "state-store-test";

/// The embedded store in `dir`, and a PostgreSQL store in a new database of
/// `pg`.
fn stores(dir: &std::path::Path, pg: &Postgres, name: &str) -> (Db, PgState) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    let db = Db::open(&dir.join("state.db")).unwrap_or_else(|e| panic!("{e}"));
    let pg = PgState::connect(&pg.database(name, PASSWORD), 4).unwrap_or_else(|e| panic!("{e}"));
    (db, pg)
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

fn workspaces_and_keys(store: &dyn KeyState) {
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
}

fn objects(store: &(impl KeyState + ObjectState)) {
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

fn secrets(store: &(impl KeyState + SecretState)) {
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
fn workspaces_keys_objects_and_secrets_are_kept_alike_by_both_backends() {
    let Some(pg) = Postgres::start(PASSWORD) else { return };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (db, store) = stores(&dir.path().join("keys"), &pg, "keys");
    workspaces_and_keys(&db);
    workspaces_and_keys(&store);
    let (db, store) = stores(&dir.path().join("objects"), &pg, "objects");
    objects(&db);
    objects(&store);
    let (db, store) = stores(&dir.path().join("secrets"), &pg, "secrets");
    secrets(&db);
    secrets(&store);
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
