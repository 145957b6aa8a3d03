//! Days since 1970-01-01 to and from proleptic Gregorian dates, for the
//! two places that do it once per value of a column: reading dates and
//! timestamps in intake, and writing timestamps in output CSVs.
//!
//! The arithmetic is Howard Hinnant's (`days_from_civil` and
//! `civil_from_days`, <https://howardhinnant.github.io/date_algorithms.html>):
//! a few integer operations where going through `chrono`'s general types
//! costs several times more per value. The tests hold both to `chrono`.

/// The days from 1970-01-01 to `year-month-day`, or `None` when there is
/// no such date (month outside 1–12, day past the month's end).
pub fn days_from_civil(year: i32, month: u32, day: u32) -> Option<i32> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    i32::try_from(era * 146_097 + day_of_era - 719_468).ok()
}

/// The date `days` after 1970-01-01, as (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate};

    const EPOCH_DAYS_FROM_CE: i32 = 719_163;

    #[test]
    fn every_day_of_years_0_to_9999_agrees_with_chrono() {
        let first = NaiveDate::from_ymd_opt(0, 1, 1).map(|d| d.num_days_from_ce() - EPOCH_DAYS_FROM_CE);
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).map(|d| d.num_days_from_ce() - EPOCH_DAYS_FROM_CE);
        let (Some(first), Some(last)) = (first, last) else {
            panic!("chrono has years 0 and 9999");
        };
        for days in first - 400..=last + 400 {
            let Some(date) = NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_FROM_CE) else {
                panic!("chrono has day {days}");
            };
            let (y, m, d) = civil_from_days(i64::from(days));
            assert_eq!(
                (y, m, d),
                (i64::from(date.year()), date.month(), date.day()),
                "day {days}"
            );
            assert_eq!(
                days_from_civil(date.year(), date.month(), date.day()),
                Some(days),
                "{date}"
            );
        }
    }

    #[test]
    fn dates_that_do_not_exist_are_refused_as_chrono_refuses_them() {
        for year in [1900, 1999, 2000, 2023, 2024, 2100, 0, 9999] {
            for month in 0..=13 {
                for day in 0..=32 {
                    assert_eq!(
                        days_from_civil(year, month, day).is_some(),
                        NaiveDate::from_ymd_opt(year, month, day).is_some(),
                        "{year}-{month}-{day}"
                    );
                }
            }
        }
    }
}
