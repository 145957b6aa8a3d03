//! Schedule connectors (SPEC §2 `[schedule]`): an execution per cron tick,
//! over `input.schedule` (one row, `schedule_trigger_time`).
//!
//! The cron expression and its time zone are read by
//! [`weir_engine::schedule`], which checks them with the rest of the
//! connector.
//!
//! Every tick is recorded with its execution in one transaction, keyed by
//! connector and tick time: a tick runs once, also across restarts and
//! with several schedulers. Ticks missed while the server was down are not
//! replayed one after the other: the latest of them runs (once), and the
//! log of that execution says how many were skipped. A connector's ticks
//! start after it is created. `setup` connectors do not tick; `inactive`
//! ones queue their ticks' executions without running them, as for any
//! trigger.
//!
//! The time comes from a [`Clock`], so tests can move it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use weir_engine::connector::ConnectorStatus;
use weir_engine::execution::TriggerType;
use weir_engine::schedule::parse;

use super::App;
use super::files::Files;
use super::state::{ConnectorRow, FileRow};
use super::triggers::{Version, prepare};

/// The longest the scheduler sleeps between two looks.
const IDLE: Duration = Duration::from_secs(1);

/// Where the time comes from.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Mutex::new(at))
    }

    /// Shows `at` from now on.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The scheduler's clock and its wake-up.
pub struct Schedules {
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
    wake: Notify,
}

impl Schedules {
    /// Schedules on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            wake: Notify::new(),
        }
    }

    /// Something changed (a connector, the clock): the scheduler looks again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Queues the executions of every tick due now, until the server drains.
pub async fn scheduler(app: Arc<App>) {
    loop {
        let next = match run_due(&app).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "running due schedule ticks failed");
                None
            }
        };
        let now = app.schedules.clock.now();
        let sleep = next.map_or(IDLE, |at| (at - now).to_std().unwrap_or(Duration::ZERO).min(IDLE));
        tokio::select! {
            () = app.schedules.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            () = app.runs.draining().cancelled() => return,
        }
    }
}

/// Queues an execution for each schedule connector whose tick is due;
/// returns when the next tick of any of them comes.
pub async fn run_due(app: &App) -> anyhow::Result<Option<DateTime<Utc>>> {
    let now = app.schedules.clock.now();
    let mut next: Option<DateTime<Utc>> = None;
    for row in app.db.schedule_connectors()? {
        let connector = &row.connector;
        let Some(def) = &connector.schedule else { continue };
        if connector.status == ConnectorStatus::Setup || row.live_version.is_none() {
            continue;
        }
        let Ok(parsed) = parse(def) else { continue };
        let last = app.db.last_tick(&row.id)?.unwrap_or(row.created_at);
        if let Some((tick, skipped)) = parsed.latest_due(last, now) {
            tick_once(app, &row, tick, skipped).await?;
        }
        let after = parsed.next_after(now.max(last));
        next = match (next, after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(next)
}

/// The input of a tick at `tick`: `input.schedule`, one row with
/// `schedule_trigger_time`.
pub async fn tick_file(files: &Files, workspace_id: &str, tick: DateTime<Utc>) -> anyhow::Result<FileRow> {
    let csv = format!(
        "schedule_trigger_time\n{}\n",
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(files
        .keep_bytes(workspace_id, "schedule.csv", "text/csv", csv.into_bytes())
        .await?)
}

/// Records `tick` of `row` with its queued execution; nothing when the tick
/// ran already.
async fn tick_once(app: &App, row: &ConnectorRow, tick: DateTime<Utc>, skipped: usize) -> anyhow::Result<()> {
    let file = tick_file(&app.files, &row.workspace_id, tick).await?;
    let mut execution = prepare(
        app.db.as_ref(),
        &row.workspace_id,
        row,
        Version::Live,
        Some(file),
        false,
        TriggerType::Schedule,
    )?;
    execution.document.window_start = app.db.last_successful_tick(&row.id, tick)?;
    execution.document.window_end = Some(tick);
    if !app.db.record_tick(&row.id, tick, &execution)? {
        return Ok(());
    }
    app.executions.queued(&execution)?;
    if skipped > 0 {
        app.db.append_log(
            &execution.document.id,
            "warn",
            &format!("{skipped} earlier ticks were missed while the server was down; only this latest one runs"),
        )?;
    }
    Ok(())
}
