//! Text-like variable types: strings, e-mails (lower case), phone numbers
//! (E.164) and UUIDs (lower-case hyphenated).

use super::*;

#[derive(Debug)]
pub(super) struct TextElement {
    pub(super) kind: TextKind,
}

#[derive(Debug)]
pub(super) enum TextKind {
    Plain,
    Email,
    Phone(Option<phonenumber::country::Id>),
    Uuid,
    Json,
}

/// A text value: the input itself when it needs no change.
pub(super) enum TextValue<'a> {
    Borrowed(&'a str),
    Owned(String),
    Uuid(uuid::Uuid),
}

impl TextValue<'_> {
    fn into_owned(self) -> TextValue<'static> {
        match self {
            TextValue::Borrowed(s) => TextValue::Owned(s.to_owned()),
            TextValue::Owned(s) => TextValue::Owned(s),
            TextValue::Uuid(u) => TextValue::Uuid(u),
        }
    }
}

impl Element for TextElement {
    type Builder = StringBuilder;
    type Value<'a> = TextValue<'a>;

    fn data_type(&self) -> DataType {
        DataType::Utf8
    }

    fn builder(&self, capacity: usize) -> StringBuilder {
        StringBuilder::with_capacity(capacity, capacity.saturating_mul(16))
    }

    fn append(builder: &mut StringBuilder, value: &Self::Value<'_>) {
        match value {
            TextValue::Borrowed(s) => builder.append_value(s),
            TextValue::Owned(s) => builder.append_value(s),
            TextValue::Uuid(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                builder.append_value(&*u.hyphenated().encode_lower(&mut buf));
            }
        }
    }

    fn append_null(builder: &mut StringBuilder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        match self.kind {
            TextKind::Plain => Ok(TextValue::Borrowed(text)),
            TextKind::Email => {
                parse_email(text).ok_or_else(|| format!("{} is not a valid e-mail address", quote(text)))
            }
            TextKind::Phone(region) => parse_phone(text, region).map(TextValue::Owned).ok_or_else(|| {
                let hint = if region.is_none() {
                    " (no default region: write it with +country code or set default_region)"
                } else {
                    ""
                };
                format!("{} is not a valid phone number{hint}", quote(text))
            }),
            TextKind::Uuid => uuid::Uuid::parse_str(text)
                .map(TextValue::Uuid)
                .map_err(|_| format!("{} is not a UUID", quote(text))),
            TextKind::Json => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Ok(TextValue::Borrowed(text)),
                Err(e) => Err(format!(
                    "{} is not valid JSON ({} at line {}, column {})",
                    quote(text),
                    json_reason(&e),
                    e.line(),
                    e.column()
                )),
            },
        }
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        let text = value.to_string();
        self.parse(&text).map(TextValue::into_owned)
    }
}

/// A valid address with a dot in its domain, lower-cased (integrators match
/// on it, and mail systems treat addresses case-insensitively in practice).
fn parse_email(text: &str) -> Option<TextValue<'_>> {
    let options = email_address::Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    email_address::EmailAddress::parse_with_options(text, options).ok()?;
    Some(if text.chars().any(char::is_uppercase) {
        TextValue::Owned(text.to_lowercase())
    } else {
        TextValue::Borrowed(text)
    })
}

/// A valid phone number in E.164, read in `region` when it has no country code.
pub(super) fn parse_phone(text: &str, region: Option<phonenumber::country::Id>) -> Option<String> {
    // The phonenumber crate has panicked on malformed input before (its
    // issues #32, #43); a bad cell must make a row invalid, not kill the run.
    // A number written with `+` carries its country code; reading it "in" a
    // region makes the phonenumber crate strip that region's national prefix
    // from it (`+33 1 42 …` read in US loses its `1`), so it is read alone.
    let region = if text.trim_start().starts_with('+') {
        None
    } else {
        region
    };
    std::panic::catch_unwind(|| {
        let number = phonenumber::parse(region, text).ok()?;
        phonenumber::is_valid(&number).then(|| number.format().mode(phonenumber::Mode::E164).to_string())
    })
    .ok()
    .flatten()
}
