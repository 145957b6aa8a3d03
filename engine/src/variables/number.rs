//! Numbers: plain, with thousands separators, or as a float's text.

use super::*;

#[derive(Debug)]
pub(super) struct NumberElement;

impl Element for NumberElement {
    type Builder = Float64Builder;
    type Value<'a> = f64;

    fn data_type(&self) -> DataType {
        DataType::Float64
    }

    fn builder(&self, capacity: usize) -> Float64Builder {
        Float64Builder::with_capacity(capacity)
    }

    fn append(builder: &mut Float64Builder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut Float64Builder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        parse_number(text).ok_or_else(|| format!("{} is not a number", quote(text)))
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Number(v) if v.is_finite() => Ok(v),
            other => self.parse(&other.to_string()),
        }
    }
}

/// A finite decimal number; a thousands separator is accepted only in the
/// strict form `1,234,567.89`, so `1,5` (a decimal comma) is not misread.
fn parse_number(text: &str) -> Option<f64> {
    let value: f64 = if text.contains(',') {
        if !is_thousands_form(text) {
            return None;
        }
        text.replace(',', "").parse().ok()?
    } else {
        // Rust also reads `inf` and `NaN`; they are refused below.
        text.parse().ok()?
    };
    value.is_finite().then_some(value)
}

/// Whether `text` is `[+-]?\d{1,3}(,\d{3})+(\.\d+)?`.
fn is_thousands_form(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (integer, fraction) = match body.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (body, None),
    };
    if fraction.is_some_and(|f| !digits(f)) {
        return false;
    }
    let mut groups = integer.split(',');
    let Some(first) = groups.next() else {
        return false;
    };
    let mut grouped = false;
    for group in groups {
        if group.len() != 3 || !digits(group) {
            return false;
        }
        grouped = true;
    }
    first.len() <= 3 && digits(first) && grouped
}

/// A finite number without thousands separators (epoch values).
pub(super) fn plain_float(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}
