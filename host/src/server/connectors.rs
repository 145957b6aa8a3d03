//! The connectors service: connectors (by id or api_name) and their SQL
//! versions. A connector is parsed and checked whole before anything is
//! written (its document's rules, its sample file, its load steps against
//! the workspace's objects, the caps on its limits, the variables its
//! webhook secret may be read from); an operational connector's edit must
//! fit its live script's output; a draft is kept even when refused, and
//! publishing makes it live only after a dry run of it did not fail. It
//! holds the state store, the files and objects services, the executions
//! service (for the publish dry run) and the wake-ups of the dispatcher and
//! the scheduler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value as Json_};
use weir_engine::Error as EngineError;
use weir_engine::check;
use weir_engine::connector::{Connector, ConnectorStatus, SqlSource};
use weir_engine::error::Problem;
use weir_engine::execution::{Status, TriggerType};
use weir_engine::objects::Objects;
use weir_engine::pipeline::InputFile;
use weir_engine::sql::Script;

use super::auth::Caller;
use super::blobs::Blobs;
use super::config::Settings;
use super::executions::{Executions, Trigger};
use super::files::Files;
use super::objects::ObjectService;
use super::queue::Runs;
use super::refusal::{Refusal, Refused};
use super::schedules::Schedules;
use super::state::{ConnectorRow, SqlVersion, StateStore};
use super::triggers::Version;

/// A connector's scripts: the live one (once published) and the draft.
#[derive(Debug)]
pub struct Scripts {
    /// The live version.
    pub live: Option<SqlVersion>,
    /// The draft.
    pub draft: SqlVersion,
}

/// Where a publish's dry run reads its input.
#[derive(Debug, Default)]
pub struct PublishInput {
    /// This file instead of the sample.
    pub source_file_id: Option<String>,
    /// A webhook connector's sample payloads.
    pub payloads: Option<Vec<serde_json::Value>>,
}

/// Connectors and their SQL.
#[derive(Clone)]
pub struct Connectors {
    db: Arc<dyn StateStore>,
    blobs: Blobs,
    files: Files,
    objects: ObjectService,
    executions: Executions,
    runs: Arc<Runs>,
    schedules: Arc<Schedules>,
    settings: Arc<Settings>,
}

impl Connectors {
    /// The service.
    #[expect(clippy::too_many_arguments, reason = "what the service holds, each once")]
    pub fn new(
        db: Arc<dyn StateStore>,
        blobs: Blobs,
        files: Files,
        objects: ObjectService,
        executions: Executions,
        runs: Arc<Runs>,
        schedules: Arc<Schedules>,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            db,
            blobs,
            files,
            objects,
            executions,
            runs,
            schedules,
            settings,
        }
    }

    /// The connector `id_or_name` of the caller's workspace; refused to a
    /// key limited to other connectors.
    pub fn find(&self, caller: &Caller, id_or_name: &str) -> Refused<ConnectorRow> {
        let row = self
            .db
            .connector(&caller.workspace_id, id_or_name)?
            .ok_or_else(|| Refusal::not_found("connector"))?;
        if !caller.reaches(&row.id, &row.api_name) {
            return Err(Refusal::forbidden("this key is limited to other connectors"));
        }
        Ok(row)
    }

    /// Up to `limit` of the connectors the caller reaches, newest first,
    /// after `cursor`.
    pub fn list(&self, caller: &Caller, cursor: Option<&str>, limit: usize) -> Refused<Vec<ConnectorRow>> {
        Ok(self
            .db
            .connectors(&caller.workspace_id, caller.connectors.as_deref(), cursor, limit)?)
    }

    /// Creates a connector from its JSON document; `sql.text` becomes its
    /// first draft.
    pub fn create(&self, caller: &Caller, doc: Json_) -> Refused<ConnectorRow> {
        let submitted = self.parse(caller, doc, false)?;
        self.insert(caller, submitted)
    }

    /// Changes a connector by a JSON merge patch (RFC 7396) of its
    /// document; `sql.text` replaces the draft.
    pub async fn update(&self, caller: &Caller, row: &ConnectorRow, patch: Json_) -> Refused<ConnectorRow> {
        let mut doc = serde_json::to_value(&row.connector).map_err(Refusal::internal)?;
        if let Json_::Object(map) = &mut doc {
            map.insert(
                "sample_file_id".into(),
                row.sample_file_id.clone().map_or(Json_::Null, Json_::String),
            );
        }
        merge_patch(&mut doc, patch);
        let submitted = self.parse(caller, doc, row.live_version.is_some())?;
        self.replace(caller, row, submitted).await
    }

    /// Deletes a connector and its SQL versions; its executions stay.
    pub fn delete(&self, row: &ConnectorRow) -> Refused<()> {
        self.db.delete_connector(&row.id)?;
        Ok(())
    }

    /// The live and draft scripts.
    pub fn scripts(&self, row: &ConnectorRow) -> Refused<Scripts> {
        let draft = self
            .db
            .sql_version(&row.id, row.draft_version)?
            .ok_or_else(|| Refusal::internal("the draft version is missing"))?;
        let live = match row.live_version {
            Some(v) => self.db.sql_version(&row.id, v)?,
            None => None,
        };
        Ok(Scripts { live, draft })
    }

    /// Every SQL version, oldest first.
    pub fn versions(&self, row: &ConnectorRow) -> Refused<Vec<SqlVersion>> {
        Ok(self.db.sql_versions(&row.id)?)
    }

    /// SQL version `n`.
    pub fn version(&self, row: &ConnectorRow, n: u32) -> Refused<SqlVersion> {
        self.db
            .sql_version(&row.id, n)?
            .ok_or_else(|| Refusal::not_found("SQL version"))
    }

    /// Saves `text` as the draft, then checks it: parsed, and planned
    /// against the connector's sample file when it has one. A refused
    /// script is still kept as the draft, and the refusal says its version
    /// with the line and column of the problem.
    pub async fn save_draft(&self, caller: &Caller, row: &ConnectorRow, text: &str) -> Refused<Scripts> {
        self.objects.keep_within_reach(caller, row, None, Some(text))?;
        let version = self.db.save_draft(&row.id, text)?;
        self.check_draft(caller, row, text)
            .await
            .map_err(|e| e.with_draft_version(version))?;
        self.scripts(row)
    }

    /// Publishes the draft: runs it as a dry run on the sample (or the
    /// given file, or a batch of sample payloads) and makes it live only
    /// if that run did not fail; refused with the run when it did.
    pub async fn publish(&self, caller: &Caller, row: &ConnectorRow, input: PublishInput) -> Refused<Scripts> {
        let file = self
            .executions
            .run_input(
                caller,
                row,
                input.source_file_id,
                input.payloads,
                "publishing runs the draft on a file first",
                "no_sample_file",
            )
            .await?;
        let draft = self
            .db
            .sql_version(&row.id, row.draft_version)?
            .ok_or_else(|| Refusal::internal("the draft version is missing"))?;
        check_script(&draft.text)?;
        let trigger = Trigger {
            version: Version::Draft,
            dry_run: true,
            kind: TriggerType::Publish,
        };
        let doc = self
            .executions
            .start(caller, row, trigger, Some(file), None, &BTreeMap::new())?
            .doc;
        let limit = row
            .connector
            .limits
            .capped(&self.settings.limit_caps)
            .parse()
            .ok()
            .map_or(Duration::from_secs(300), |l| l.max_runtime);
        let done = self
            .executions
            .wait_for_end(&doc.id, limit + Duration::from_secs(30))
            .await?;
        if !matches!(done.status, Status::Success | Status::PartialSuccess) {
            let e = done.error.clone();
            let detail = e.as_ref().map_or_else(
                || format!("the dry run of the draft ended {}", done.status.as_str()),
                |e| format!("the dry run of the draft failed: {}", e.message),
            );
            let code = e.as_ref().map_or("publish_check_failed", |e| e.code.as_str());
            return Err(Refusal::invalid(code, detail, vec![])
                .at(e.as_ref().and_then(|e| e.line), e.as_ref().and_then(|e| e.column))
                .with_execution(done));
        }
        if !self.db.publish(&row.id, draft.version)? {
            return Err(Refusal::conflict(
                "draft_changed",
                "the draft changed while it was checked; publish again",
            ));
        }
        let row = self.find(caller, &row.id)?;
        self.scripts(&row)
    }

    /// Parses a connector document and checks everything that does not need
    /// the SQL's output: the document's own rules, the sample file, the load
    /// steps against the workspace's objects, and whether it may be operational.
    pub fn parse(&self, caller: &Caller, doc: Json_, has_live: bool) -> Refused<Submitted> {
        let objects = self.db.object_defs(&caller.workspace_id)?;
        self.parse_among(caller, doc, has_live, &objects)
    }

    /// [`parse`], with the load steps checked against `objects` (the
    /// workspace's, and those a package brings).
    pub fn parse_among(
        &self,
        caller: &Caller,
        mut doc: Json_,
        has_live: bool,
        objects: &Objects,
    ) -> Refused<Submitted> {
        let Json_::Object(map) = &mut doc else {
            return Err(invalid(vec![Problem::new("", "the connector must be a JSON object")]));
        };
        for k in READ_ONLY {
            map.remove(*k);
        }
        let sample_file_id = match map.remove("sample_file_id") {
            None | Some(Json_::Null) => None,
            Some(Json_::String(s)) => Some(s),
            Some(_) => return Err(invalid(vec![Problem::new("sample_file_id", "must be a file id")])),
        };
        // Every problem in one answer: unknown keys and broken rules do not
        // hide the checks against the workspace below.
        let parsed = Connector::parse_json_value(doc);
        let mut problems = parsed.problems;
        let Some(mut connector) = parsed.document else {
            return Err(invalid(problems));
        };
        if connector.sql.file.is_some() {
            problems.push(Problem::new(
                "sql.file",
                "the API carries the script itself: use sql.text",
            ));
        }
        let draft = connector.sql.text.take();
        connector.sql = SqlSource::default();
        if let Some(id) = &sample_file_id
            && self.files.reached(caller, id)?.is_none()
        {
            problems.push(Problem::new("sample_file_id", format!("there is no file `{id}`")));
        }
        problems.extend(objects.check_loads(&connector));
        problems.extend(connector.limits.over(&self.settings.limit_caps));
        if let Some(name) = connector.webhook.as_ref().and_then(|w| w.secret_env.as_deref()) {
            let workspace = self
                .db
                .workspace(&caller.workspace_id)?
                .ok_or_else(|| Refusal::internal("the caller's workspace is missing"))?;
            let prefixes = &self.settings.config.webhook_secret_prefixes;
            if let Err(e) = crate::server::webhooks::check_secret_env(prefixes, &workspace.name, name) {
                problems.push(Problem::new("webhook.secret_env", e));
            }
        }
        if !connector.notifications.is_empty() {
            let secrets = self.db.secrets(&caller.workspace_id)?;
            problems.extend(crate::server::notifications::problems(
                &connector,
                &self.settings.notification_policy,
                |name| secrets.iter().any(|s| s.name == name),
            ));
        }
        if connector.status == ConnectorStatus::Operational && !has_live {
            problems.push(Problem::new(
                "status",
                "a connector can be operational only once it has a live SQL script (publish the draft first)",
            ));
        }
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(Submitted {
            connector,
            sample_file_id,
            draft,
        })
    }

    /// Stores a new connector; its draft is checked first.
    fn insert(&self, caller: &Caller, submitted: Submitted) -> Refused<ConnectorRow> {
        let (row, draft) = new_row(caller, submitted)?;
        if !self.db.insert_connector(&row, &draft)? {
            return Err(taken(&row.api_name));
        }
        self.db
            .connector(&caller.workspace_id, &row.id)?
            .ok_or_else(|| Refusal::not_found("connector"))
    }

    /// Replaces a connector's definition (an update, a package push); a draft
    /// in it becomes the next draft. An operational connector's new definition
    /// must fit its live script's output.
    pub async fn replace(&self, caller: &Caller, row: &ConnectorRow, submitted: Submitted) -> Refused<ConnectorRow> {
        // What an operational connector's edit is checked against, read only
        // when it is checked.
        let (objects, sample) = if needs_live_check(row, &submitted) {
            let sample = match &submitted.sample_file_id {
                Some(id) => match self.files.reached(caller, id)? {
                    Some(f) => Some((self.blobs.on_disk(&f.sha256).await.map_err(Refusal::internal)?, f.name)),
                    None => None,
                },
                None => None,
            };
            (self.db.object_defs(&caller.workspace_id)?, sample)
        } else {
            (Objects::default(), None)
        };
        let sample_file = sample.as_ref().map(|(on_disk, name)| InputFile {
            path: on_disk.path().to_path_buf(),
            name: name.clone(),
        });
        let updated = self
            .check_replace(caller, row, &submitted, &objects, sample_file.as_ref())
            .await?;
        if !self.db.update_connector(&updated)? {
            return Err(taken(&updated.api_name));
        }
        if let Some(draft) = &submitted.draft {
            self.db.save_draft(&row.id, draft)?;
        }
        self.replaced(caller, row)
    }

    /// After a connector was replaced: an inactive connector that became
    /// operational runs what it queued, and a schedule may have changed.
    pub fn replaced(&self, caller: &Caller, row: &ConnectorRow) -> Refused<ConnectorRow> {
        self.runs.wake();
        self.schedules.wake();
        self.db
            .connector(&caller.workspace_id, &row.id)?
            .ok_or_else(|| Refusal::not_found("connector"))
    }

    /// Checks a replacement of `row` against `objects` and the connector's
    /// `sample` (both read only for an operational connector with a live
    /// script), and gives the row as it is to be; nothing is written.
    pub async fn check_replace(
        &self,
        caller: &Caller,
        row: &ConnectorRow,
        submitted: &Submitted,
        objects: &Objects,
        sample: Option<&InputFile>,
    ) -> Refused<ConnectorRow> {
        if let Some(draft) = &submitted.draft {
            check_script(draft)?;
        }
        self.objects
            .keep_within_reach(caller, row, Some(&submitted.connector), submitted.draft.as_deref())?;
        // A source decides where its secret is sent: only a key of the whole
        // workspace, which may manage the secrets, may point one elsewhere.
        let uses_secrets = submitted.connector.sources.iter().any(|s| s.secret.is_some());
        if uses_secrets && submitted.connector.sources != row.connector.sources && caller.connectors.is_some() {
            return Err(Refusal::forbidden(
                "sources that use workspace secrets decide where those secrets are sent; \
                 changing them needs a key of the whole workspace",
            ));
        }
        if let Some(live) = row.live_version.filter(|_| needs_live_check(row, submitted)) {
            self.check_live(row, submitted, live, objects, sample).await?;
        }
        Ok(ConnectorRow {
            api_name: submitted.connector.api_name.clone(),
            connector: submitted.connector.clone(),
            sample_file_id: submitted.sample_file_id.clone(),
            ..row.clone()
        })
    }

    /// Plans `text` against the connector's sample file, with the workspace's
    /// objects when the connector loads records (as a run would see them).
    /// Without a sample only the parse is checked.
    async fn check_draft(&self, caller: &Caller, row: &ConnectorRow, text: &str) -> Refused<()> {
        let connector = &row.connector;
        let stored = match &row.sample_file_id {
            Some(id) => match self.db.file(&caller.workspace_id, id)? {
                Some(f) => Some((self.blobs.on_disk(&f.sha256).await.map_err(Refusal::internal)?, f.name)),
                None => None,
            },
            None => None,
        };
        let sample = stored.as_ref().map(|(on_disk, name)| InputFile {
            path: on_disk.path().to_path_buf(),
            name: name.clone(),
        });
        // A script reads `records.<object>` of every object of the workspace.
        let objects = self.db.object_defs(&caller.workspace_id)?;
        check::script(connector, text, sample.as_ref(), Some(&objects))
            .await
            .map_err(refused_script)
    }

    /// Refuses an edit of an operational connector that its live script's
    /// output would not satisfy: a variable of a column or scope the script
    /// does not make, a load step of a scope it does not make. Planned against
    /// the sample, as a draft is; without a sample there is nothing to plan
    /// against, and the next run says it.
    async fn check_live(
        &self,
        row: &ConnectorRow,
        submitted: &Submitted,
        live: u32,
        objects: &Objects,
        sample: Option<&InputFile>,
    ) -> Refused<()> {
        let script = self
            .db
            .sql_version(&row.id, live)?
            .ok_or_else(|| Refusal::internal("the live SQL version is missing"))?;
        let objects = Some(objects);
        let Err(refused) = check::connector(&submitted.connector, &script.text, sample, objects).await else {
            return Ok(());
        };
        // An edit is refused for what it breaks, not for what was broken
        // before it (a sample the live script no longer reads, a variable
        // already missing its column): the next run says those.
        match (
            refused,
            check::connector(&row.connector, &script.text, sample, objects).await,
        ) {
            (EngineError::InvalidConnector(problems), before) => {
                let before = match before {
                    Ok(()) => Vec::new(),
                    Err(EngineError::InvalidConnector(before)) => before,
                    Err(_) => return Ok(()),
                };
                let new: Vec<Problem> = problems.into_iter().filter(|p| !before.contains(p)).collect();
                if new.is_empty() {
                    return Ok(());
                }
                Err(Refusal::invalid(
                    "invalid_connector",
                    "the edit does not fit the output of the connector's live SQL script",
                    new,
                ))
            }
            (e, Ok(())) => Err(refused_script(e)),
            (_, Err(_)) => Ok(()),
        }
    }
}

/// Keys a client may send back from a `GET` that are not part of the definition.
const READ_ONLY: &[&str] = &[
    "id",
    "live_version",
    "draft_version",
    "created_at",
    "updated_at",
    "warnings",
];

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Json_, patch: Json_) {
    match patch {
        Json_::Object(entries) => {
            if !target.is_object() {
                *target = Json_::Object(Map::new());
            }
            if let Json_::Object(map) = target {
                for (k, v) in entries {
                    if v.is_null() {
                        map.remove(&k);
                    } else {
                        merge_patch(map.entry(k).or_insert(Json_::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// What a connector document sent by a client holds.
pub struct Submitted {
    /// The definition, without its script.
    pub connector: Connector,
    /// The file drafts are planned and published against.
    pub sample_file_id: Option<String>,
    /// The script it brings as the next draft.
    pub draft: Option<String>,
}

fn invalid(problems: Vec<Problem>) -> Refusal {
    Refusal::invalid("invalid_connector", "the connector is not valid", problems)
}

fn taken(api_name: &str) -> Refusal {
    Refusal::conflict("connector_exists", format!("a connector named `{api_name}` exists"))
}

/// The row of a new connector and its first draft, once the draft is
/// checked; nothing is written.
pub fn new_row(caller: &Caller, submitted: Submitted) -> Refused<(ConnectorRow, String)> {
    let draft = submitted.draft.unwrap_or_default();
    if !draft.trim().is_empty() {
        check_script(&draft)?;
    }
    let row = ConnectorRow {
        id: uuid::Uuid::now_v7().to_string(),
        workspace_id: caller.workspace_id.clone(),
        api_name: submitted.connector.api_name.clone(),
        connector: submitted.connector,
        sample_file_id: submitted.sample_file_id,
        draft_version: 1,
        live_version: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    Ok((row, draft))
}

/// Whether a replacement of `row` must fit its live script's output: the
/// connector has one and stays (or becomes) operational.
fn needs_live_check(row: &ConnectorRow, submitted: &Submitted) -> bool {
    row.live_version.is_some() && submitted.connector.status == ConnectorStatus::Operational
}

/// Refuses (422) a script that does not parse or uses a forbidden form,
/// with the line and column of the problem.
fn check_script(text: &str) -> Refused<()> {
    Script::parse(text).map(|_| ()).map_err(refused_script)
}

/// A script the engine refused, as a 422 with its position; failures that
/// are not the script's (the server's own I/O) stay internal.
fn refused_script(e: EngineError) -> Refusal {
    match e {
        EngineError::Internal(_) | EngineError::Io { .. } => Refusal::internal(e),
        EngineError::InvalidConnector(problems) => {
            Refusal::invalid("invalid_connector", "the connector definition is invalid", problems)
        }
        e => {
            let position = e.position();
            Refusal::invalid(e.code().as_str(), e.to_string(), vec![])
                .at(position.map(|p| p.line), position.map(|p| p.column))
        }
    }
}
