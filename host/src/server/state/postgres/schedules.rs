//! Schedule connectors and their ticks, in PostgreSQL.

use super::*;

impl ScheduleState for PgState {
    fn schedule_connectors(&self) -> Result<Vec<ConnectorRow>> {
        self.connectors_where("kind = 'schedule'", &[])
    }

    fn last_tick(&self, connector_id: &str) -> Result<Option<DateTime<Utc>>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_one(
            "SELECT MAX(tick_at) FROM schedule_ticks WHERE connector_id = $1",
            &[&connector_id],
        ))?;
        Ok(row.get(0))
    }

    fn last_successful_tick(&self, connector_id: &str, before: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let conn = self.conn()?;
        let row = self.wait(conn.query_one(
            "SELECT MAX(t.tick_at) FROM schedule_ticks AS t JOIN executions AS e ON e.id = t.execution_id
             WHERE t.connector_id = $1 AND t.tick_at < $2 AND e.status IN ('success', 'partial_success')",
            &[&connector_id, &before],
        ))?;
        Ok(row.get(0))
    }

    fn record_tick(&self, connector_id: &str, tick: DateTime<Utc>, row: &ExecutionRow) -> Result<bool> {
        self.insert_execution_claiming(
            None,
            "INSERT INTO schedule_ticks (connector_id, tick_at, execution_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&connector_id, &tick, &row.document.id],
            row,
        )
    }
}
