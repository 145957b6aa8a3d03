//! Schedule connectors and their ticks, in SQLite.

use super::*;

impl ScheduleState for Db {
    fn schedule_connectors(&self) -> Result<Vec<ConnectorRow>> {
        self.connectors_where("json_extract(definition, '$.type') = 'schedule'", [])
    }

    fn last_tick(&self, connector_id: &str) -> Result<Option<DateTime<Utc>>> {
        let conn = self.lock();
        let last: Option<String> = conn.query_row(
            "SELECT MAX(tick_at) FROM schedule_ticks WHERE connector_id = ?1",
            [connector_id],
            |r| r.get(0),
        )?;
        Ok(last.map(|t| time(&t)))
    }

    fn last_successful_tick(&self, connector_id: &str, before: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let conn = self.lock();
        let last: Option<String> = conn.query_row(
            "SELECT MAX(t.tick_at) FROM schedule_ticks AS t JOIN executions AS e ON e.id = t.execution_id
             WHERE t.connector_id = ?1 AND t.tick_at < ?2 AND e.status IN ('success', 'partial_success')",
            params![connector_id, before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)],
            |r| r.get(0),
        )?;
        Ok(last.map(|t| time(&t)))
    }

    fn record_tick(&self, connector_id: &str, tick: DateTime<Utc>, row: &ExecutionRow) -> Result<bool> {
        self.insert_execution_claiming(
            "INSERT INTO schedule_ticks (connector_id, tick_at, execution_id) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![
                connector_id,
                tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                row.document.id
            ],
            row,
        )
    }
}
