//! Schedule connectors (SPEC §2 `[schedule]`): an execution per cron tick,
//! over `input.schedule` (one row, `schedule_trigger_time`).
//!
//! The cron expression has seconds (`sec min hour day-of-month month
//! day-of-week`, as in `0 */15 * * * *`) and is read in the connector's
//! IANA time zone, so `0 0 9 * * *` in `America/New_York` is 09:00 there
//! all year, across daylight saving changes.
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

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use cron::Schedule;
use tokio::sync::Notify;
use weir_engine::connector::{Connector, ConnectorStatus, ConnectorType, ScheduleDef};
use weir_engine::error::Problem;
use weir_engine::execution::TriggerType;

use super::App;
use super::api::runs::{Version, prepare};
use super::queue;
use super::state::{ConnectorRow, FileRow};

/// The longest the scheduler sleeps between two looks.
const IDLE: Duration = Duration::from_secs(1);

/// Most ticks walked through to find the latest one due; a schedule that
/// fires more often than this over a downtime starts again from now.
const MAX_WALK: usize = 100_000;

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

/// A connector's `[schedule]`, parsed.
pub struct Parsed {
    schedule: Schedule,
    zone: Tz,
}

/// Parses a `[schedule]`; the problems name `schedule.cron` or
/// `schedule.timezone`.
pub fn parse(def: &ScheduleDef) -> Result<Parsed, Vec<Problem>> {
    let mut problems = Vec::new();
    let schedule = Schedule::from_str(def.cron.trim())
        .map_err(|e| {
            problems.push(Problem::new(
                "schedule.cron",
                format!(
                    "`{}` is not a cron expression with seconds (sec min hour day month weekday): {e}",
                    def.cron
                ),
            ));
        })
        .ok();
    let zone = Tz::from_str(def.timezone.trim())
        .map_err(|_| {
            problems.push(Problem::new(
                "schedule.timezone",
                format!("`{}` is not an IANA time zone (e.g. Europe/Oslo)", def.timezone),
            ));
        })
        .ok();
    match (schedule, zone) {
        (Some(schedule), Some(zone)) if problems.is_empty() => Ok(Parsed { schedule, zone }),
        _ => Err(problems),
    }
}

/// The problems of a connector's schedule: a schedule connector needs a
/// valid `[schedule]`.
pub fn check(connector: &Connector) -> Vec<Problem> {
    match (&connector.kind, &connector.schedule) {
        (ConnectorType::Schedule, None) => vec![Problem::new(
            "schedule",
            "a schedule connector needs [schedule] with cron and timezone",
        )],
        (_, Some(def)) => parse(def).err().unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl Parsed {
    /// The latest tick after `after` and at or before `now`, with how many
    /// ticks before it in that span are skipped.
    pub fn latest_due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<(DateTime<Utc>, usize)> {
        let mut latest = None;
        let mut seen = 0usize;
        for tick in self.schedule.after(&after.with_timezone(&self.zone)).take(MAX_WALK) {
            let tick = tick.with_timezone(&Utc);
            if tick > now {
                return latest.map(|t| (t, seen.saturating_sub(1)));
            }
            latest = Some(tick);
            seen += 1;
        }
        // More ticks than walked: the latest one before now.
        let recent = now - chrono::TimeDelta::seconds(1);
        self.schedule
            .after(&recent.with_timezone(&self.zone))
            .next()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t <= now)
            .map(|t| (t, seen))
    }

    /// The next tick after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.zone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Queues the executions of every tick due now, until the server drains.
pub async fn scheduler(app: Arc<App>) {
    loop {
        let next = match run_due(&app) {
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
pub fn run_due(app: &App) -> anyhow::Result<Option<DateTime<Utc>>> {
    let now = app.schedules.clock.now();
    let mut next: Option<DateTime<Utc>> = None;
    for row in app.db.schedule_connectors()? {
        let connector: Connector = serde_json::from_str(&row.definition)?;
        let Some(def) = &connector.schedule else { continue };
        if connector.status == ConnectorStatus::Setup || row.live_version.is_none() {
            continue;
        }
        let Ok(parsed) = parse(def) else { continue };
        let last = app.db.last_tick(&row.id)?.unwrap_or(row.created_at);
        if let Some((tick, skipped)) = parsed.latest_due(last, now) {
            tick_once(app, &row, tick, skipped)?;
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
pub fn tick_file(app: &App, workspace_id: &str, tick: DateTime<Utc>) -> anyhow::Result<FileRow> {
    let csv = format!(
        "schedule_trigger_time\n{}\n",
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    app.keep_file(workspace_id, "schedule.csv", "text/csv", csv.as_bytes())
}

/// Records `tick` of `row` with its queued execution; nothing when the tick
/// ran already.
fn tick_once(app: &App, row: &ConnectorRow, tick: DateTime<Utc>, skipped: usize) -> anyhow::Result<()> {
    let file = tick_file(app, &row.workspace_id, tick)?;
    let mut execution = prepare(
        app,
        &row.workspace_id,
        row,
        Version::Live,
        Some(file),
        false,
        TriggerType::Schedule,
    )
    .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
    execution.document.window_start = app.db.last_successful_tick(&row.id, tick)?;
    execution.document.window_end = Some(tick);
    if !app.db.record_tick(&row.id, tick, &execution)? {
        return Ok(());
    }
    queue::queued(app, &execution)?;
    if skipped > 0 {
        app.db.append_log(
            &execution.document.id,
            "warn",
            &format!("{skipped} earlier ticks were missed while the server was down; only this latest one runs"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn parsed(cron: &str, timezone: &str) -> Parsed {
        parse(&ScheduleDef {
            cron: cron.into(),
            timezone: timezone.into(),
        })
        .unwrap_or_else(|p| panic!("{p:?}"))
    }

    #[test]
    fn nine_in_new_york_follows_daylight_saving() {
        let p = parsed("0 0 9 * * *", "America/New_York");
        // Before the change 09:00 EST is 14:00 UTC; after it, EDT, 13:00.
        assert_eq!(
            p.next_after(at("2026-03-07T12:00:00Z")),
            Some(at("2026-03-07T14:00:00Z"))
        );
        assert_eq!(
            p.next_after(at("2026-03-07T14:00:00Z")),
            Some(at("2026-03-08T13:00:00Z"))
        );
    }

    #[test]
    fn only_the_latest_missed_tick_is_due() {
        let p = parsed("0 */15 * * * *", "UTC");
        let due = p.latest_due(at("2026-11-30T10:00:00Z"), at("2026-11-30T12:07:00Z"));
        // 10:15 … 12:00 are eight ticks: 12:00 runs, seven are skipped.
        assert_eq!(due, Some((at("2026-11-30T12:00:00Z"), 7)));
        assert_eq!(
            p.latest_due(at("2026-11-30T12:00:00Z"), at("2026-11-30T12:07:00Z")),
            None
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let e = parse(&ScheduleDef {
            cron: "every day".into(),
            timezone: "Mars/Olympus".into(),
        })
        .err()
        .unwrap_or_default();
        let paths: Vec<&str> = e.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["schedule.cron", "schedule.timezone"]);
    }
}
