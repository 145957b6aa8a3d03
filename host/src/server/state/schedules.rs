//! Schedule ticks, each run once.

use super::*;

/// Schedule connectors and their ticks.
pub trait ScheduleState {
    /// Every schedule connector, in every workspace.
    fn schedule_connectors(&self) -> Result<Vec<ConnectorRow>>;

    /// The latest tick of a schedule connector that ran.
    fn last_tick(&self, connector_id: &str) -> Result<Option<DateTime<Utc>>>;

    /// The latest tick before `before` whose run succeeded (fully or in
    /// part): where the window of the next tick starts.
    fn last_successful_tick(&self, connector_id: &str, before: DateTime<Utc>) -> Result<Option<DateTime<Utc>>>;

    /// Records a tick with its execution, both or neither; false when the
    /// tick was recorded before.
    fn record_tick(&self, connector_id: &str, tick: DateTime<Utc>, row: &ExecutionRow) -> Result<bool>;
}
