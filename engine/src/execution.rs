//! The execution document (SPEC §3 "The execution document") and the status
//! state machine.
//!
//! One serialisable type describes an execution everywhere: the CLI prints
//! it with `--json`, the server returns it. Status changes go through
//! [`Status::can_become`] so that the allowed transitions live in one place.
//! This module knows nothing about how stages run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connector::ParamValue;
use crate::error::{Error, ErrorCode, Stage};

/// Status of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// Running.
    Running,
    /// Finished; every row was loaded.
    Success,
    /// Finished; some rows were invalid, rejected or not uploaded.
    PartialSuccess,
    /// Stopped on an error.
    Failed,
    /// A cancel was requested; the run is stopping.
    Canceling,
    /// Stopped by a cancel.
    Canceled,
}

impl Status {
    /// Whether the status is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Success | Status::PartialSuccess | Status::Failed | Status::Canceled
        )
    }

    /// The allowed transitions:
    /// `queued → running → success | partial_success | failed`,
    /// `queued|running → canceling → canceled`, and `queued → canceled`
    /// directly, and `queued → failed` (a run that could not start).
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Canceling)
                | (Queued, Canceled)
                | (Queued, Failed)
                | (Running, Success)
                | (Running, PartialSuccess)
                | (Running, Failed)
                | (Running, Canceling)
                | (Canceling, Canceled)
                | (Canceling, Failed)
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Success => "success",
            Status::PartialSuccess => "partial_success",
            Status::Failed => "failed",
            Status::Canceling => "canceling",
            Status::Canceled => "canceled",
        }
    }
}

/// How an execution was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerType {
    /// A file upload.
    FileUpload,
    /// Buffered webhooks.
    Webhook,
    /// A schedule tick.
    Schedule,
    /// `weir run` on a developer's machine.
    Local,
    /// The dry run on the sample that publishing a draft makes first.
    Publish,
}

impl TriggerType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerType::FileUpload => "file_upload",
            TriggerType::Webhook => "webhook",
            TriggerType::Schedule => "schedule",
            TriggerType::Local => "local",
            TriggerType::Publish => "publish",
        }
    }
}

/// Status of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Not started.
    Pending,
    /// In progress.
    Running,
    /// Done.
    Completed,
    /// Stopped on an error.
    Failed,
    /// Stopped by a cancel.
    Canceled,
    /// Not needed by this run.
    Skipped,
}

/// Rows read from one input table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TableCount {
    /// Table name (without the `input.` schema).
    pub table: String,
    /// Rows read (valid ones).
    pub rows: u64,
    /// Rows that could not be read (ragged, bad quoting, bad encoding, wrong type).
    pub invalid: u64,
}

/// Rows produced by one scope of the SQL script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScopeCount {
    /// Scope name.
    pub scope: String,
    /// Rows.
    pub rows: u64,
}

/// Counts of one transform step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransformCount {
    /// Scope.
    pub scope: String,
    /// `name@version` of the plugin.
    pub plugin: String,
    /// Rows in.
    pub rows_in: u64,
    /// Rows out.
    pub rows_out: u64,
    /// Rows rejected by the plugin.
    pub rejected: u64,
}

/// Counts of the variables stage for one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VariableCount {
    /// Scope.
    pub scope: String,
    /// Rows seen.
    pub total: u64,
    /// Rows whose variables are all valid.
    pub valid: u64,
    /// Rows with at least one invalid variable.
    pub invalid: u64,
}

/// Counts of one load step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadCount {
    /// Step order.
    pub order: u32,
    /// Scope.
    pub scope: String,
    /// Target object.
    pub object: String,
    /// Rows handled.
    pub total: u64,
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Rows skipped by a `do_not_upload` action.
    pub skipped: u64,
    /// Rows that failed to load.
    pub failed: u64,
}

impl LoadCount {
    /// The counts of load step `def`, before any row.
    pub fn of(def: &crate::connector::LoadDef) -> Self {
        Self {
            order: def.order,
            scope: def.scope.clone(),
            object: def.object.clone(),
            ..Self::default()
        }
    }
}

/// Progress of one stage, tagged by `stage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum StepProgress {
    /// Intake.
    Intake {
        /// Stage status.
        status: StageStatus,
        /// Per input table.
        tables: Vec<TableCount>,
    },
    /// SQL script.
    Sql {
        /// Stage status.
        status: StageStatus,
        /// Per scope.
        scopes: Vec<ScopeCount>,
    },
    /// Transform steps.
    Transform {
        /// Stage status.
        status: StageStatus,
        /// Per step.
        steps: Vec<TransformCount>,
    },
    /// Variables.
    Variables {
        /// Stage status.
        status: StageStatus,
        /// Per scope.
        scopes: Vec<VariableCount>,
    },
    /// Load steps.
    Load {
        /// Stage status.
        status: StageStatus,
        /// Per step.
        steps: Vec<LoadCount>,
    },
}

impl StepProgress {
    /// The stage this entry describes.
    pub fn stage(&self) -> Stage {
        match self {
            StepProgress::Intake { .. } => Stage::Intake,
            StepProgress::Sql { .. } => Stage::Sql,
            StepProgress::Transform { .. } => Stage::Transform,
            StepProgress::Variables { .. } => Stage::Variables,
            StepProgress::Load { .. } => Stage::Load,
        }
    }

    /// Whether the stage has handled any row.
    pub fn handled_rows(&self) -> bool {
        match self {
            StepProgress::Intake { tables, .. } => tables.iter().any(|t| t.rows + t.invalid > 0),
            StepProgress::Sql { scopes, .. } => scopes.iter().any(|s| s.rows > 0),
            StepProgress::Transform { steps, .. } => steps.iter().any(|s| s.rows_in > 0),
            StepProgress::Variables { scopes, .. } => scopes.iter().any(|s| s.total > 0),
            StepProgress::Load { steps, .. } => steps.iter().any(|s| s.total > 0),
        }
    }

    /// The stage's status.
    pub fn status(&self) -> StageStatus {
        match self {
            StepProgress::Intake { status, .. }
            | StepProgress::Sql { status, .. }
            | StepProgress::Transform { status, .. }
            | StepProgress::Variables { status, .. }
            | StepProgress::Load { status, .. } => *status,
        }
    }

    fn set_status(&mut self, new: StageStatus) {
        match self {
            StepProgress::Intake { status, .. }
            | StepProgress::Sql { status, .. }
            | StepProgress::Transform { status, .. }
            | StepProgress::Variables { status, .. }
            | StepProgress::Load { status, .. } => *status = new,
        }
    }
}

/// The `error` object of a failed execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionError {
    /// Stage that failed.
    pub stage: Stage,
    /// Stable code.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
    /// SQL line, when the error is in the script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// SQL column, when the error is in the script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// The plugin, when a plugin failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

impl ExecutionError {
    /// The document form of an engine error raised in `stage`.
    pub fn from_error(stage: Stage, error: &Error) -> Self {
        let position = error.position();
        Self {
            stage,
            code: error.code(),
            message: error.to_string(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            plugin: error.plugin().map(str::to_string),
        }
    }
}

/// The connector an execution ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectorRef {
    /// Connector id (UUID), or `null` for a hand-made local directory.
    pub id: Option<String>,
    /// `api_name`.
    pub api_name: String,
    /// Version number, when known.
    pub version: Option<u32>,
}

/// Links to the execution and its artifacts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Links {
    /// The execution itself.
    #[serde(rename = "self")]
    pub self_: String,
    /// `report.xlsx`.
    pub report: String,
    /// `rejected.csv`.
    pub rejected: String,
    /// The SQL output (`output.zip` on a server, a directory locally).
    pub output: String,
}

/// The API key that started an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggeredBy {
    /// The key's id.
    pub key_id: String,
    /// The key's name.
    pub key_name: String,
}

/// The execution document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Execution {
    /// Execution id (UUID).
    pub id: String,
    /// The connector and version.
    pub connector: ConnectorRef,
    /// Current status.
    pub status: Status,
    /// How it was started.
    pub trigger_type: TriggerType,
    /// Whether records are written.
    pub is_dry_run: bool,
    /// sha256 of the source file, when there is one.
    pub source_file_id: Option<String>,
    /// The key that started it (a trigger, a publish), for audit; `null`
    /// for a schedule tick, a webhook batch and a local run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<TriggeredBy>,
    /// The parameters its trigger gave, over the connector's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParamValue>,
    /// For a schedule tick: the previous tick whose run succeeded (`null`
    /// for the first), so a script can pull only what changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<DateTime<Utc>>,
    /// For a schedule tick: this tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub ended_at: Option<DateTime<Utc>>,
    /// Place in the queue while queued.
    pub queue_position: Option<u64>,
    /// The error of a failed run.
    pub error: Option<ExecutionError>,
    /// Per-stage progress; counts move while the run runs.
    pub step_progress: Vec<StepProgress>,
    /// Links to artifacts.
    pub links: Links,
}

/// A status change that the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an execution cannot go from {} to {}", .from.as_str(), .to.as_str())]
pub struct InvalidTransition {
    /// Current status.
    pub from: Status,
    /// Refused status.
    pub to: Status,
}

impl Execution {
    /// A new queued execution with every stage pending.
    pub fn new(id: String, connector: ConnectorRef, trigger_type: TriggerType, is_dry_run: bool) -> Self {
        Self {
            id,
            connector,
            status: Status::Queued,
            trigger_type,
            is_dry_run,
            source_file_id: None,
            triggered_by: None,
            parameters: BTreeMap::new(),
            window_start: None,
            window_end: None,
            created_at: Utc::now(),
            started_at: None,
            ended_at: None,
            queue_position: None,
            error: None,
            step_progress: vec![
                StepProgress::Intake {
                    status: StageStatus::Pending,
                    tables: vec![],
                },
                StepProgress::Sql {
                    status: StageStatus::Pending,
                    scopes: vec![],
                },
                StepProgress::Transform {
                    status: StageStatus::Pending,
                    steps: vec![],
                },
                StepProgress::Variables {
                    status: StageStatus::Pending,
                    scopes: vec![],
                },
                StepProgress::Load {
                    status: StageStatus::Pending,
                    steps: vec![],
                },
            ],
            links: Links::default(),
        }
    }

    /// Moves to `next`, refusing transitions the state machine forbids.
    pub fn transition(&mut self, next: Status) -> Result<(), InvalidTransition> {
        if !self.status.can_become(next) {
            return Err(InvalidTransition {
                from: self.status,
                to: next,
            });
        }
        let now = Utc::now();
        if next == Status::Running {
            self.started_at = Some(now);
            self.queue_position = None;
        }
        if next.is_terminal() {
            self.ended_at = Some(now);
            self.queue_position = None;
        }
        self.status = next;
        Ok(())
    }

    /// The progress entry of `stage`.
    pub fn stage_mut(&mut self, stage: Stage) -> Option<&mut StepProgress> {
        self.step_progress.iter_mut().find(|p| p.stage() == stage)
    }

    /// The progress entry of `stage`.
    pub fn stage(&self, stage: Stage) -> Option<&StepProgress> {
        self.step_progress.iter().find(|p| p.stage() == stage)
    }

    /// Sets the status of one stage.
    pub fn set_stage_status(&mut self, stage: Stage, status: StageStatus) {
        if let Some(p) = self.stage_mut(stage) {
            p.set_status(status);
        }
    }

    /// Ends the stages of a run that failed in stage `failed`. It is
    /// `failed`. A stage before it that handled rows handed on every row
    /// it read, counted, and is `completed`; one that handled none (the
    /// run failed while it was being set up) is `skipped`, as is every
    /// stage after the failed one: the rows they waited for never came.
    pub fn fail_at(&mut self, failed: Stage) {
        for p in &mut self.step_progress {
            let status = p.status();
            let open = matches!(status, StageStatus::Running | StageStatus::Pending);
            let next = match p.stage().cmp(&failed) {
                std::cmp::Ordering::Equal => StageStatus::Failed,
                std::cmp::Ordering::Less if open && status == StageStatus::Running && p.handled_rows() => {
                    StageStatus::Completed
                }
                _ if open => StageStatus::Skipped,
                _ => status,
            };
            p.set_status(next);
        }
    }

    /// Marks every stage still running with `running` and every one still
    /// pending with `pending` (a run that ends or is canceled).
    pub fn close_open_stages(&mut self, running: StageStatus, pending: StageStatus) {
        for p in &mut self.step_progress {
            match p.status() {
                StageStatus::Running => p.set_status(running),
                StageStatus::Pending => p.set_status(pending),
                _ => {}
            }
        }
    }

    /// Total invalid rows over intake tables and variable scopes.
    pub fn invalid_rows(&self) -> u64 {
        self.step_progress
            .iter()
            .map(|p| match p {
                StepProgress::Intake { tables, .. } => tables.iter().map(|t| t.invalid).sum(),
                StepProgress::Variables { scopes, .. } => scopes.iter().map(|s| s.invalid).sum(),
                StepProgress::Transform { steps, .. } => steps.iter().map(|s| s.rejected).sum(),
                StepProgress::Load { steps, .. } => steps.iter().map(|s| s.skipped + s.failed).sum(),
                StepProgress::Sql { .. } => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execution() -> Execution {
        Execution::new(
            "e1".into(),
            ConnectorRef {
                id: None,
                api_name: "c".into(),
                version: None,
            },
            TriggerType::Local,
            true,
        )
    }

    #[test]
    fn every_allowed_transition_and_no_other() {
        use Status::*;
        let all = [Queued, Running, Success, PartialSuccess, Failed, Canceling, Canceled];
        let allowed = [
            (Queued, Running),
            (Queued, Canceling),
            (Queued, Canceled),
            (Queued, Failed),
            (Running, Success),
            (Running, PartialSuccess),
            (Running, Failed),
            (Running, Canceling),
            (Canceling, Canceled),
            (Canceling, Failed),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
        for t in all.iter().filter(|s| s.is_terminal()) {
            assert!(all.iter().all(|to| !t.can_become(*to)), "{t:?} is terminal");
        }
    }

    #[test]
    fn transition_sets_timestamps_and_refuses_illegal_moves() {
        let mut e = execution();
        assert!(e.transition(Status::Success).is_err());
        e.transition(Status::Running).expect("start");
        assert!(e.started_at.is_some());
        e.transition(Status::PartialSuccess).expect("finish");
        assert!(e.ended_at.is_some());
        assert_eq!(
            e.transition(Status::Running),
            Err(InvalidTransition {
                from: Status::PartialSuccess,
                to: Status::Running
            })
        );
    }

    #[test]
    fn document_shape_matches_the_spec() {
        let mut e = execution();
        if let Some(StepProgress::Intake { tables, .. }) = e.stage_mut(Stage::Intake) {
            tables.push(TableCount {
                table: "contacts".into(),
                rows: 10,
                invalid: 2,
            });
        }
        let json = serde_json::to_value(&e).expect("serialise");
        assert_eq!(json["status"], "queued");
        assert_eq!(json["trigger_type"], "local");
        assert_eq!(json["step_progress"][0]["stage"], "intake");
        assert_eq!(json["step_progress"][0]["tables"][0]["invalid"], 2);
        assert_eq!(json["step_progress"][4]["stage"], "load");
        assert!(json["links"].get("self").is_some());
        let back: Execution = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, e);
    }
}
