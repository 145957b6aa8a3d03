//! Dates and date-times: `input_format` patterns, ISO forms with or without an
//! offset, Unix and Excel serial times.

use super::*;

/// Microseconds in a day.
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `NaiveDate::num_days_from_ce` of 1970-01-01, the Date32 epoch.
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Days from 1970-01-01 back to 1899-12-30, the base of Excel serials after
/// the fake 1900-02-29.
const EXCEL_BASE_AFTER_LEAP_BUG: i64 = -25_569;

/// Days from 1970-01-01 back to 1899-12-31, the base of Excel serials before it.
const EXCEL_BASE_BEFORE_LEAP_BUG: i64 = -25_568;

/// Excel serial of 9999-12-31 plus one: the end of Excel's calendar.
const EXCEL_SERIAL_END: f64 = 2_958_466.0;

/// Date `input_format`s.
#[derive(Debug)]
pub(super) enum DateFormat {
    /// ISO dates and date-times, `YYYY/MM/DD`, `DD.MM.YYYY`.
    Auto,
    /// Seconds since 1970-01-01T00:00:00Z (fractions allowed).
    UnixEpoch,
    /// Excel serial day numbers (1900 date system).
    ExcelEpoch,
    /// A strftime pattern, parsed once.
    Pattern { pattern: String, items: Vec<Item<'static>> },
}

impl DateFormat {
    pub(super) fn new(input_format: &str) -> Result<Self, (&'static str, String)> {
        Ok(match input_format {
            "auto" => DateFormat::Auto,
            "unix_epoch" => DateFormat::UnixEpoch,
            "excel_epoch" => DateFormat::ExcelEpoch,
            pattern => match StrftimeItems::new(pattern).parse_to_owned() {
                Ok(items) => DateFormat::Pattern {
                    pattern: pattern.to_owned(),
                    items,
                },
                Err(_) => {
                    return Err((
                        "input_format",
                        format!("`{pattern}` is not a strftime pattern (or auto, unix_epoch, excel_epoch)"),
                    ));
                }
            },
        })
    }

    /// Parses `text` with the pattern's items.
    fn parse_pattern(items: &[Item<'static>], text: &str) -> Option<Parsed> {
        let mut parsed = Parsed::new();
        chrono::format::parse(&mut parsed, text, items.iter()).ok()?;
        Some(parsed)
    }

    fn mismatch(pattern: &str, text: &str) -> String {
        format!("{} does not match input_format `{pattern}`", quote(text))
    }
}

#[derive(Debug)]
pub(super) struct DateElement {
    pub(super) format: DateFormat,
}

impl Element for DateElement {
    type Builder = Date32Builder;
    type Value<'a> = i32;

    fn data_type(&self) -> DataType {
        DataType::Date32
    }

    fn builder(&self, capacity: usize) -> Date32Builder {
        Date32Builder::with_capacity(capacity)
    }

    fn append(builder: &mut Date32Builder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut Date32Builder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        match &self.format {
            DateFormat::Auto => auto_date(text).map(days_from_date),
            DateFormat::UnixEpoch => unix_micros(text).map(days_from_micros),
            DateFormat::ExcelEpoch => excel_micros(text).map(days_from_micros),
            DateFormat::Pattern { pattern, items } => DateFormat::parse_pattern(items, text)
                .and_then(|parsed| parsed.to_naive_date().ok())
                .map(days_from_date)
                .ok_or_else(|| DateFormat::mismatch(pattern, text)),
        }
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Date(days) => Ok(days),
            Typed::Datetime(micros) => Ok(days_from_micros(micros)),
            other => self.parse(&other.to_string()),
        }
    }
}

#[derive(Debug)]
pub(super) struct DatetimeElement {
    pub(super) format: DateFormat,
}

impl Element for DatetimeElement {
    type Builder = TimestampMicrosecondBuilder;
    type Value<'a> = i64;

    fn data_type(&self) -> DataType {
        utc_micros()
    }

    fn builder(&self, capacity: usize) -> TimestampMicrosecondBuilder {
        TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
    }

    fn append(builder: &mut TimestampMicrosecondBuilder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut TimestampMicrosecondBuilder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        match &self.format {
            DateFormat::Auto => auto_datetime(text),
            DateFormat::UnixEpoch => unix_micros(text),
            DateFormat::ExcelEpoch => excel_micros(text),
            DateFormat::Pattern { pattern, items } => {
                let parsed =
                    DateFormat::parse_pattern(items, text).ok_or_else(|| DateFormat::mismatch(pattern, text))?;
                // With an offset: that instant. Without: taken as UTC. A
                // pattern without time fields: midnight UTC.
                if let Ok(t) = parsed.to_datetime() {
                    Ok(t.timestamp_micros())
                } else if let Ok(t) = parsed.to_naive_datetime_with_offset(0) {
                    Ok(t.and_utc().timestamp_micros())
                } else {
                    parsed
                        .to_naive_date()
                        .map(|date| date.and_time(NaiveTime::MIN).and_utc().timestamp_micros())
                        .map_err(|_| DateFormat::mismatch(pattern, text))
                }
            }
        }
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Datetime(micros) => Ok(micros),
            Typed::Date(days) => i64::from(days)
                .checked_mul(MICROS_PER_DAY)
                .ok_or_else(|| format!("{} is out of range", quote(&value.to_string()))),
            other => self.parse(&other.to_string()),
        }
    }
}

/// `Timestamp(Microsecond, "UTC")`, the type of `datetime` variables.
fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(super) fn days_from_date(date: NaiveDate) -> i32 {
    Datelike::num_days_from_ce(&date) - EPOCH_DAYS_FROM_CE
}

pub(super) fn date_from_days(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(days.checked_add(EPOCH_DAYS_FROM_CE)?)
}

fn days_from_micros(micros: i64) -> i32 {
    // |i64::MAX / MICROS_PER_DAY| is about 1.07e8, well inside i32.
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// Why text is not an automatic date.
enum DateError {
    NotADate,
    /// `NN/NN/YYYY`: day/month or month/day cannot be told apart.
    Ambiguous(char),
    /// The fields are a date that does not exist (2024-02-30).
    NoSuchDate,
}

impl DateError {
    pub(super) fn message(&self, text: &str, datetime: bool) -> String {
        match self {
            DateError::NotADate if datetime => format!(
                "{} is not a date-time (expected ISO 8601 such as 2024-03-01T12:30:00Z, or set input_format)",
                quote(text)
            ),
            DateError::NotADate => format!(
                "{} is not a date (expected YYYY-MM-DD, YYYY/MM/DD or DD.MM.YYYY, or set input_format)",
                quote(text)
            ),
            DateError::Ambiguous(sep) => format!(
                "{} is ambiguous (day{sep}month or month{sep}day?): set input_format to \
                 \"%d{sep}%m{sep}%Y\" or \"%m{sep}%d{sep}%Y\"",
                quote(text)
            ),
            DateError::NoSuchDate => format!("{} is not a valid date", quote(text)),
        }
    }
}

/// Splits the leading ASCII digits off `text`.
fn split_digits(text: &str) -> (&str, &str) {
    let n = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at_checked(n).unwrap_or(("", text))
}

/// Reads `YYYY-MM-DD`, `YYYY/MM/DD` or `DD.MM.YYYY` at the start of `text`,
/// returning the date and what follows it.
fn date_prefix(text: &str) -> Result<(NaiveDate, &str), DateError> {
    let (a, rest) = split_digits(text);
    let Some(sep) = rest.chars().next().filter(|&c| matches!(c, '-' | '/' | '.')) else {
        return Err(DateError::NotADate);
    };
    let (b, rest) = split_digits(rest.get(1..).unwrap_or(""));
    let Some(rest) = rest.strip_prefix(sep) else {
        return Err(DateError::NotADate);
    };
    let (c, rest) = split_digits(rest);
    let (year, month, day) = match (a.len(), b.len(), c.len(), sep) {
        (4, 1..=2, 1..=2, '-' | '/') => (a, b, c),
        (1..=2, 1..=2, 4, '.') => (c, b, a),
        (1..=2, 1..=2, 4, '-' | '/') => return Err(DateError::Ambiguous(sep)),
        _ => return Err(DateError::NotADate),
    };
    match (year.parse::<i32>(), month.parse::<u32>(), day.parse::<u32>()) {
        (Ok(year), Ok(month), Ok(day)) => NaiveDate::from_ymd_opt(year, month, day)
            .map(|date| (date, rest))
            .ok_or(DateError::NoSuchDate),
        _ => Err(DateError::NotADate),
    }
}

/// Reads `HH:MM[:SS[.fraction]]` and an optional offset (`Z`, `UTC`,
/// `+HH`, `+HHMM`, `+HH:MM`) that make up all of `text`; the offset is in
/// seconds east of UTC.
fn time_and_offset(text: &str) -> Option<(NaiveTime, i32)> {
    let (hour, rest) = split_digits(text);
    if !(1..=2).contains(&hour.len()) {
        return None;
    }
    let (minute, mut rest) = split_digits(rest.strip_prefix(':')?);
    if minute.len() != 2 {
        return None;
    }
    let mut second = 0;
    let mut nano = 0;
    if let Some(after) = rest.strip_prefix(':') {
        let (digits, after) = split_digits(after);
        if digits.len() != 2 {
            return None;
        }
        second = digits.parse::<u32>().ok()?;
        rest = after;
        if let Some(after) = rest.strip_prefix(['.', ',']) {
            let (fraction, after) = split_digits(after);
            if fraction.is_empty() {
                return None;
            }
            // Digits past nanoseconds are below what a timestamp keeps.
            let head = fraction.get(..9).unwrap_or(fraction);
            let scale = 10u32.pow(9 - head.len() as u32);
            nano = head.parse::<u32>().ok()? * scale;
            rest = after;
        }
    }
    let time = NaiveTime::from_hms_nano_opt(hour.parse::<u32>().ok()?, minute.parse::<u32>().ok()?, second, nano)?;
    Some((time, utc_offset(rest.trim_start())?))
}

/// Seconds east of UTC of an offset suffix; empty means UTC.
fn utc_offset(text: &str) -> Option<i32> {
    if text.is_empty() || ["z", "utc", "gmt"].iter().any(|z| text.eq_ignore_ascii_case(z)) {
        return Some(0);
    }
    let sign = match text.as_bytes().first().copied()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hh, rest) = split_digits(text.get(1..)?);
    let (hours, minutes) = match (hh.len(), rest) {
        (2, "") => (hh, "00"),
        (4, "") => (hh.get(..2)?, hh.get(2..)?),
        (2, rest) => {
            let mm = rest.strip_prefix(':')?;
            if mm.len() != 2 || !mm.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (hh, mm)
        }
        _ => return None,
    };
    let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours <= 23 && minutes <= 59).then_some(sign * (hours * 3600 + minutes * 60))
}

/// The separator between a date and a time in ISO forms.
const DATE_TIME_SEPARATORS: [char; 3] = ['T', 't', ' '];

/// An automatic date; a date-time gives its date as written (before any
/// offset is applied).
fn auto_date(text: &str) -> Result<NaiveDate, String> {
    let (date, rest) = date_prefix(text).map_err(|e| e.message(text, false))?;
    if rest.is_empty()
        || rest
            .strip_prefix(DATE_TIME_SEPARATORS)
            .and_then(time_and_offset)
            .is_some()
    {
        Ok(date)
    } else {
        Err(DateError::NotADate.message(text, false))
    }
}

/// An automatic date-time in microseconds since the epoch, UTC.
fn auto_datetime(text: &str) -> Result<i64, String> {
    let (date, rest) = date_prefix(text).map_err(|e| e.message(text, true))?;
    if rest.is_empty() {
        return Ok(date.and_time(NaiveTime::MIN).and_utc().timestamp_micros());
    }
    let (time, offset) = rest
        .strip_prefix(DATE_TIME_SEPARATORS)
        .and_then(time_and_offset)
        .ok_or_else(|| DateError::NotADate.message(text, true))?;
    Ok(date.and_time(time).and_utc().timestamp_micros() - i64::from(offset) * 1_000_000)
}

/// Seconds since the Unix epoch, as microseconds.
fn unix_micros(text: &str) -> Result<i64, String> {
    let micros = match text.parse::<i64>() {
        Ok(seconds) => seconds.checked_mul(1_000_000),
        Err(_) => plain_float(text)
            .map(|seconds| (seconds * 1e6).round())
            .filter(|micros| micros.abs() < 9.0e18)
            .map(|micros| micros as i64),
    };
    micros
        .filter(|&m| DateTime::from_timestamp_micros(m).is_some())
        .ok_or_else(|| format!("{} is not a Unix timestamp (seconds since 1970-01-01 UTC)", quote(text)))
}

/// An Excel serial day number (1900 date system) as microseconds since the
/// Unix epoch; the fraction is the time of day, kept to the millisecond as
/// Excel does.
fn excel_micros(text: &str) -> Result<i64, String> {
    let serial = plain_float(text)
        .filter(|s| (1.0..EXCEL_SERIAL_END).contains(s))
        .ok_or_else(|| format!("{} is not an Excel serial date (a day number from 1)", quote(text)))?;
    let day = serial.floor();
    // Excel counts 1900 as a leap year: serial 60 is 1900-02-29, which did
    // not exist; the days before it are off by one.
    let base = if day < 60.0 {
        EXCEL_BASE_BEFORE_LEAP_BUG
    } else if day > 60.0 {
        EXCEL_BASE_AFTER_LEAP_BUG
    } else {
        return Err(format!(
            "{} is Excel's 1900-02-29, a day that does not exist",
            quote(text)
        ));
    };
    // `day` is in [1, EXCEL_SERIAL_END), so the casts are exact.
    let millis = ((serial - day) * 86_400_000.0).round() as i64;
    Ok((base + day as i64) * MICROS_PER_DAY + millis * 1000)
}
