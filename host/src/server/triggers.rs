//! Making an execution of a connector, whatever triggered it (the API, a
//! webhook batch, a schedule tick): which script it runs, and whether the
//! connector may run it now. The caller stores and queues it.

use weir_engine::connector::{ConnectorStatus, ConnectorType};
use weir_engine::execution::{ConnectorRef, Execution, Links, TriggerType};

use super::state::{ConnectorRow, ExecutionRow, FileRow, StateError, StateStore};

/// Which script a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The live script (the draft for a dry run when nothing is live).
    Live,
    /// The draft.
    Draft,
}

/// Why an execution cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CannotRun {
    /// A real run of a connector in setup.
    #[error("the connector is in setup; only dry runs are possible until it is operational")]
    NotOperational,
    /// A real run of an uploaded file by a connector of another type.
    #[error("only spreadsheet connectors run on uploaded files (dry runs excepted)")]
    NotASpreadsheet,
    /// A real run of a connector that has published nothing.
    #[error("the connector has no live SQL script; publish the draft first")]
    NoLiveScript,
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The definition cannot be written into the execution.
    #[error("the connector's definition cannot be written as JSON: {0}")]
    Definition(#[from] serde_json::Error),
    /// The SQL version the connector names is not stored.
    #[error("SQL version {0} is missing")]
    MissingVersion(u32),
}

/// Links of an execution's document.
pub fn links(id: &str) -> Links {
    let base = format!("/api/v1/executions/{id}");
    Links {
        report: format!("{base}/report.xlsx"),
        rejected: format!("{base}/rejected.csv"),
        output: format!("{base}/output.zip"),
        self_: base,
    }
}

/// A new queued execution of `row` on `file`, not stored yet.
pub fn prepare(
    db: &dyn StateStore,
    workspace_id: &str,
    row: &ConnectorRow,
    version: Version,
    file: Option<FileRow>,
    dry_run: bool,
    trigger: TriggerType,
) -> Result<ExecutionRow, CannotRun> {
    let connector = &row.connector;
    if !dry_run {
        if connector.status == ConnectorStatus::Setup {
            return Err(CannotRun::NotOperational);
        }
        if trigger == TriggerType::FileUpload && connector.kind != ConnectorType::Spreadsheet {
            return Err(CannotRun::NotASpreadsheet);
        }
    }
    let number = match (version, row.live_version) {
        (Version::Live, Some(live)) => live,
        (Version::Live, None) if dry_run => row.draft_version,
        (Version::Live, None) => {
            return Err(CannotRun::NoLiveScript);
        }
        (Version::Draft, _) => row.draft_version,
    };
    let script = db
        .sql_version(&row.id, number)?
        .ok_or(CannotRun::MissingVersion(number))?;
    let id = uuid::Uuid::now_v7().to_string();
    let mut doc = Execution::new(
        id.clone(),
        ConnectorRef {
            id: Some(row.id.clone()),
            api_name: row.api_name.clone(),
            version: Some(number),
        },
        trigger,
        dry_run,
    );
    doc.source_file_id = file.as_ref().map(|f| f.sha256.clone());
    doc.links = links(&id);
    Ok(ExecutionRow {
        workspace_id: workspace_id.to_string(),
        connector_id: row.id.clone(),
        definition: serde_json::to_string(&row.connector)?,
        script: script.text,
        input_name: file.map(|f| f.name),
        document: doc,
    })
}
