//! Running a job: what a run of the queue and a preview both need to give
//! a worker (its input, plugins, records and secrets) and to hold it to its
//! limits, in a worker process or (`isolation = "none"`) in this one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_engine::connector::Connector;
use weir_engine::error::Stage;
use weir_engine::execution::{Execution, LoadCount, StageStatus, Status, StepProgress};
use weir_engine::pipeline::Progress;
use weir_engine::plugin::PluginRuntime;
use weir_engine::runlog::RunLog;
use weir_engine::sources::SecretValues;
use weir_engine::store::RecordStore;

use super::blobs::{Blobs, OnDisk};
use super::config::{Isolation, Settings};
use super::state::{StateError, StateStore};
use crate::worker::{self, Bounds, Job, JobRecords, RecordsAt};

/// What running a job needs of the server.
#[derive(Clone)]
pub struct Runner {
    db: Arc<dyn StateStore>,
    blobs: Blobs,
    records: Arc<dyn RecordStore>,
    plugin_runtime: Arc<PluginRuntime>,
    settings: Arc<Settings>,
}

impl Runner {
    /// The runner over these stores, runtime and settings.
    pub fn new(
        db: Arc<dyn StateStore>,
        blobs: Blobs,
        records: Arc<dyn RecordStore>,
        plugin_runtime: Arc<PluginRuntime>,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            db,
            blobs,
            records,
            plugin_runtime,
            settings,
        }
    }

    /// Sets a lost run's load counts to what its commits left in the record
    /// store: each commit keeps its step's tally in its own transaction, while
    /// the document was saved up to 100 ms behind.
    pub fn committed_counts(&self, doc: &mut Execution) {
        let tallies = match self.records.tallies(&doc.id) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(execution = %doc.id, error = %e, "reading the load tallies failed");
                return;
            }
        };
        if tallies.is_empty() {
            return;
        }
        // The last saved document may predate the load's start, and list no
        // step yet: the steps are then those of the run's connector.
        let id = doc.id.clone();
        if let Some(StepProgress::Load { steps, .. }) = doc.stage_mut(Stage::Load) {
            if steps.is_empty() {
                *steps = self
                    .db
                    .execution(&id)
                    .ok()
                    .flatten()
                    .and_then(|row| serde_json::from_str::<Connector>(&row.definition).ok())
                    .map(|c| c.loads.iter().map(LoadCount::of).collect())
                    .unwrap_or_default();
            }
            for t in tallies {
                if let Some(c) = steps.iter_mut().find(|c| c.order == t.order) {
                    c.total = t.total;
                    c.created = t.created;
                    c.updated = t.updated;
                    c.skipped = t.skipped;
                    c.failed = t.failed;
                }
            }
        }
        // It committed, so the load ran: it ended with the run, not skipped.
        let ended = if doc.status == Status::Canceled {
            StageStatus::Canceled
        } else {
            StageStatus::Failed
        };
        doc.set_stage_status(Stage::Load, ended);
    }

    /// Runs `job` in a worker process held to the connector's limits (or in
    /// this process under `isolation = "none"`), and shows its end on
    /// `progress`. A worker that died is reconciled with the
    /// record store as a lost run is: its counts are those of its commits.
    pub async fn run(
        &self,
        mut job: Job,
        progress: &Progress,
        log: Arc<dyn RunLog>,
        cancel: &CancellationToken,
    ) -> Execution {
        // The server's caps bound every run, also of a connector saved before
        // they were lowered.
        job.connector.limits = job.connector.limits.capped(&self.settings.limit_caps);
        let mut doc = if self.settings.config.isolation == Isolation::None {
            let (store, plugins) = (self.records.clone(), self.plugin_runtime.clone());
            worker::run_here(job, progress, log, cancel, store, plugins).await
        } else {
            self.supervised(job, progress, log, cancel).await
        };
        if !doc.status.is_terminal() {
            doc.close_open_stages(StageStatus::Failed, StageStatus::Skipped);
            let _ = doc.transition(Status::Failed);
        }
        if let Some(error) = &mut doc.error {
            error.message = self.hide_paths(&error.message);
        }
        progress.update(|d| *d = doc.clone());
        doc
    }

    /// Runs `job` in a worker process held to the connector's limits.
    async fn supervised(
        &self,
        mut job: Job,
        progress: &Progress,
        log: Arc<dyn RunLog>,
        cancel: &CancellationToken,
    ) -> Execution {
        // A connector whose limits do not parse fails inside the worker; the
        // defaults bound that worker meanwhile.
        let limits = job
            .connector
            .limits
            .parse()
            .or_else(|_| weir_engine::connector::LimitsDef::default().parse());
        let (runtime, memory) = limits.map_or((Duration::from_secs(3600), 2 << 30), |l| (l.max_runtime, l.max_memory));
        let bounds = Bounds {
            runtime,
            memory: memory.saturating_add(worker::MEMORY_OVERHEAD),
        };
        // Every thread busy for the whole run, with a little to spare.
        job.cpu_seconds = (runtime.as_secs() + 2).saturating_mul(job.threads as u64 + 2);
        let program = self.settings.worker_program.clone();
        let (progress_for, cancel_for) = (progress.clone(), cancel.clone());
        let supervised = tokio::task::spawn_blocking(move || {
            worker::supervise(&program, &job, &progress_for, log, &cancel_for, bounds)
        })
        .await;
        match supervised {
            Ok(s) if s.reported_end => s.execution,
            Ok(s) => {
                let mut doc = s.execution;
                tracing::warn!(
                    execution = %doc.id,
                    peak_mib = s.peak_memory >> 20,
                    error = ?doc.error.as_ref().map(|e| &e.message),
                    "a worker ended without finishing its run"
                );
                self.committed_counts(&mut doc);
                doc
            }
            Err(e) => {
                tracing::error!(error = %e, "supervising a worker failed");
                progress.snapshot()
            }
        }
    }

    /// Where compiled plugins are cached, shared by every worker.
    pub fn plugin_cache(&self) -> PathBuf {
        self.settings.config.data_dir.join("plugin-cache")
    }

    /// The files of the plugins the connector's transforms name, or why each
    /// cannot be had, resolved before the worker starts; the second part keeps
    /// the files on this machine until the run ends.
    pub async fn plugins(
        &self,
        workspace_id: &str,
        connector: &Connector,
    ) -> (BTreeMap<String, Result<PathBuf, String>>, Vec<OnDisk>) {
        let mut found = BTreeMap::new();
        let mut files = Vec::new();
        for plugin in connector.transforms.iter().filter_map(|t| t.plugin.get().cloned()) {
            let file = match self.db.plugin_by_ref(workspace_id, &plugin) {
                Ok(Some(row)) => self
                    .blobs
                    .on_disk(&row.sha256)
                    .await
                    .map_err(|e| format!("reading plugin {plugin} from the blob store: {e}")),
                Ok(None) => Err(format!(
                    "no plugin {plugin} is published in this workspace (POST /api/v1/plugins)"
                )),
                Err(e) => Err(format!("looking up the plugin: {e}")),
            };
            let path = file.map(|file| {
                let path = file.path().to_path_buf();
                files.push(file);
                path
            });
            found.insert(plugin.to_string(), path);
        }
        (found, files)
    }

    /// The secrets the connector's sources need, opened for the worker (which
    /// never holds the secrets key). One that is not set or cannot be opened is
    /// left out: the run then fails `source_unavailable` naming it.
    pub fn secrets(&self, workspace_id: &str, connector: &Connector) -> SecretValues {
        let mut values = BTreeMap::new();
        for name in weir_engine::sources::secrets_needed(&connector.sources) {
            match super::secrets::open(
                self.db.as_ref(),
                self.settings.secrets_key.as_ref(),
                workspace_id,
                &name,
            ) {
                Ok(Some(value)) => {
                    values.insert(name, value);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(secret = %name, error = %e, "a source's secret cannot be opened"),
            }
        }
        SecretValues::new(values)
    }

    /// The record store and the workspace's objects a worker loads into and
    /// reads `records.<object>` from (with or without load steps).
    pub fn records(&self, workspace_id: &str) -> Result<JobRecords, StateError> {
        Ok(JobRecords {
            store: match &self.settings.config.database {
                Some(url) => RecordsAt::Postgres { url: url.clone() },
                None => RecordsAt::Sqlite {
                    path: self.settings.config.data_dir.join("records.db"),
                },
            },
            workspace: workspace_id.to_string(),
            objects: self.db.object_defs(workspace_id)?,
        })
    }

    /// `text` without the data directory's place on this machine: paths
    /// under it are shown relative to it, as no client needs to know where
    /// the server keeps its files.
    pub fn hide_paths(&self, text: &str) -> String {
        let dir = &self.settings.config.data_dir;
        let mut forms: Vec<String> = Vec::new();
        if let Ok(canonical) = dir.canonicalize() {
            forms.push(canonical.display().to_string());
        }
        if let Ok(absolute) = std::path::absolute(dir) {
            forms.push(absolute.display().to_string());
        }
        // Longest first, so that no form leaves a piece of a longer one.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        let mut text = text.to_string();
        for form in forms.iter().filter(|f| f.len() > 1) {
            text = text.replace(&format!("{form}/"), "").replace(form.as_str(), "");
        }
        text
    }
}
