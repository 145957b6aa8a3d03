//! A connector's `[schedule]`: a cron expression with seconds (`sec min
//! hour day-of-month month day-of-week`, as in `0 */15 * * * *`) read in an
//! IANA time zone, so `0 0 9 * * *` in `America/New_York` is 09:00 there
//! all year, across daylight saving changes. Checked with the rest of the
//! connector, so `weir run` and the server refuse the same schedules.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use cron::Schedule;

use crate::connector::ScheduleDef;
use crate::error::Problem;

/// Most ticks walked through to find the latest one due; a schedule that
/// fires more often than this over a downtime starts again from now.
const MAX_WALK: usize = 100_000;

/// A connector's `[schedule]`, parsed.
pub struct Parsed {
    schedule: Schedule,
    zone: Tz,
}

/// Parses a `[schedule]`; the problems name `schedule.cron` or
/// `schedule.timezone`.
pub fn parse(def: &ScheduleDef) -> Result<Parsed, Vec<Problem>> {
    match (def.cron.get(), def.timezone.get()) {
        (Some(schedule), Some(zone)) => Ok(Parsed {
            schedule: schedule.clone(),
            zone: *zone,
        }),
        _ => Err([
            ("schedule.cron", def.cron.problem()),
            ("schedule.timezone", def.timezone.problem()),
        ]
        .into_iter()
        .filter_map(|(path, problem)| problem.map(|p| Problem::new(path, p)))
        .collect()),
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
