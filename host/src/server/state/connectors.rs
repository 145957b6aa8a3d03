//! Connectors, their SQL versions, and a package push written at once.

use super::*;
use weir_engine::connector::Connector;
use weir_engine::objects::ObjectDef;

/// What a package push writes (see [`ConnectorState::write_package`]).
#[derive(Debug, Clone)]
pub struct PackageWrite {
    /// New objects. One that exists meanwhile is left as it is.
    pub objects: Vec<ObjectDef>,
    /// New plugin versions; their content is in the file store already.
    pub plugins: Vec<PluginRow>,
    /// The sample file and the key that pushed it.
    pub sample: Option<(FileRow, String)>,
    /// The connector.
    pub connector: ConnectorWrite,
}

/// The connector a package push writes.
#[derive(Debug, Clone)]
pub enum ConnectorWrite {
    /// A new connector with its first draft.
    Insert {
        /// The row.
        row: ConnectorRow,
        /// The draft's text.
        draft: String,
    },
    /// An existing connector, and its draft when the package has one.
    Update {
        /// The row as it is to be.
        row: ConnectorRow,
        /// The draft's text.
        draft: Option<String>,
    },
}

/// Why a package push was refused by what another request wrote meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefused {
    /// The api_name is taken.
    NameTaken,
    /// This plugin version was published with other content.
    PluginTaken(String),
}

/// A connector as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorRow {
    /// Id (UUID).
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// `api_name`.
    pub api_name: String,
    /// The definition, parsed (its SQL lives in the SQL versions).
    pub connector: Connector,
    /// The sample file.
    pub sample_file_id: Option<String>,
    /// The draft SQL version.
    pub draft_version: u32,
    /// The live SQL version.
    pub live_version: Option<u32>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One SQL version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlVersion {
    /// Number, from 1.
    pub version: u32,
    /// Script text.
    pub text: String,
    /// When it was saved.
    pub created_at: DateTime<Utc>,
    /// When it was published (`None` for the draft).
    pub published_at: Option<DateTime<Utc>>,
}

/// Connectors, their SQL versions and package writes.
pub trait ConnectorState {
    /// Creates a connector with its first draft; false when the api_name is taken.
    fn insert_connector(&self, row: &ConnectorRow, draft: &str) -> Result<bool>;

    /// The connector with this id or api_name in the workspace.
    fn connector(&self, workspace_id: &str, id_or_name: &str) -> Result<Option<ConnectorRow>>;

    /// The connector with this id, in any workspace (workers use it).
    fn connector_by_id(&self, id: &str) -> Result<Option<ConnectorRow>>;

    /// A page of the workspace's connectors, newest first, after `cursor`.
    fn connectors(
        &self,
        workspace_id: &str,
        only: Option<&[String]>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConnectorRow>>;

    /// Saves a connector's definition, api_name and sample file; false when
    /// the new api_name is taken.
    fn update_connector(&self, row: &ConnectorRow) -> Result<bool>;

    /// Deletes a connector and its SQL versions (its executions stay).
    fn delete_connector(&self, id: &str) -> Result<()>;

    /// Replaces the draft's text.
    fn save_draft(&self, connector_id: &str, text: &str) -> Result<u32>;

    /// Writes what a package push brings in one transaction: its new
    /// objects, its new plugin versions, its sample file and the connector
    /// with its draft. Nothing is written when any part is refused.
    fn write_package(&self, workspace_id: &str, push: &PackageWrite) -> Result<Result<(), PushRefused>>;

    /// Makes draft `version` live and starts a new draft with the same
    /// text; refused (false) when the draft moved on meanwhile.
    fn publish(&self, connector_id: &str, version: u32) -> Result<bool>;

    /// Every SQL version of a connector, newest first.
    fn sql_versions(&self, connector_id: &str) -> Result<Vec<SqlVersion>>;

    /// One SQL version.
    fn sql_version(&self, connector_id: &str, version: u32) -> Result<Option<SqlVersion>>;
}
