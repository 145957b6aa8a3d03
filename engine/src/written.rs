//! Values a connector writes as text — a duration (`"5m"`), a size
//! (`"2GiB"`), a cron expression, a time zone, a plugin reference, an
//! encoding — kept with what they mean. The text is read once, when the
//! connector is read; what uses the value gets it typed, and what writes the
//! connector back (its JSON view, a dev package's `connector.toml`) writes
//! the text as it was given.
//!
//! Text that means nothing is not refused while reading: the connector's
//! checks ([`crate::connector::Connector::validate`]) report it with its
//! path beside every other problem, the same for `weir run` and the server.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type a connector writes as text.
pub trait Reading: Sized {
    /// What `text` means, or why it means nothing (for a person: it names
    /// the text and what was expected).
    fn read(text: &str) -> Result<Self, String>;

    /// How the value is written, for values Weir makes (a capped limit).
    fn write(&self) -> String;
}

/// Text of a connector and what it means.
#[derive(Clone)]
pub struct Written<T> {
    text: String,
    read: Result<T, String>,
}

impl<T: Reading> Written<T> {
    /// Reads `text`.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let read = T::read(&text);
        Self { text, read }
    }

    /// `value`, written the way Weir writes it.
    pub fn of(value: T) -> Self {
        Self {
            text: value.write(),
            read: Ok(value),
        }
    }
}

impl<T> Written<T> {
    /// The text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What the text means; `None` when it means nothing (a connector that
    /// passed its checks has every value).
    pub fn get(&self) -> Option<&T> {
        self.read.as_ref().ok()
    }

    /// What the text means, or why it means nothing.
    pub fn value(&self) -> Result<&T, String> {
        self.read.as_ref().map_err(Clone::clone)
    }

    /// Why the text means nothing.
    pub fn problem(&self) -> Option<&str> {
        self.read.as_ref().err().map(String::as_str)
    }
}

/// Two written values are the same when their texts are.
impl<T> PartialEq for Written<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Written<T> {}

impl<T> fmt::Debug for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<T> fmt::Display for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T: Reading> From<&str> for Written<T> {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl<T: Reading> From<String> for Written<T> {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl<T> Serialize for Written<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, T: Reading> Deserialize<'de> for Written<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl Reading for Duration {
    fn read(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration like \"5m\" or \"30s\": {e}"))
    }

    fn write(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

/// A size in bytes, written with its unit (`"2GiB"`, `"512MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl Reading for Bytes {
    fn read(text: &str) -> Result<Self, String> {
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Bytes(b.as_u64()))
            .map_err(|e| format!("`{text}` is not a size like \"2GiB\": {e}"))
    }

    fn write(&self) -> String {
        format!("{}B", self.0)
    }
}

impl Reading for cron::Schedule {
    fn read(text: &str) -> Result<Self, String> {
        cron::Schedule::from_str(text.trim()).map_err(|e| {
            format!("`{text}` is not a cron expression with seconds (sec min hour day month weekday): {e}")
        })
    }

    fn write(&self) -> String {
        self.to_string()
    }
}

impl Reading for chrono_tz::Tz {
    fn read(text: &str) -> Result<Self, String> {
        chrono_tz::Tz::from_str(text.trim())
            .map_err(|_| format!("`{text}` is not an IANA time zone (e.g. Europe/Oslo)"))
    }

    fn write(&self) -> String {
        self.name().to_string()
    }
}

/// `input.encoding`: sniffed from the file, or the one named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingChoice {
    /// `"auto"`: detected from the bytes.
    Auto,
    /// A label `encoding_rs` (or Weir: `latin-1`, `utf-16`) knows.
    Named(&'static encoding_rs::Encoding),
}

impl EncodingChoice {
    /// The encoding named, `None` for `auto`.
    pub fn named(self) -> Option<&'static encoding_rs::Encoding> {
        match self {
            EncodingChoice::Auto => None,
            EncodingChoice::Named(encoding) => Some(encoding),
        }
    }
}

impl Reading for EncodingChoice {
    fn read(text: &str) -> Result<Self, String> {
        if text.trim() == "auto" {
            return Ok(EncodingChoice::Auto);
        }
        crate::intake::encoding::lookup(text)
            .map(EncodingChoice::Named)
            .ok_or_else(|| format!("unknown encoding `{text}`"))
    }

    fn write(&self) -> String {
        match self {
            EncodingChoice::Auto => "auto".into(),
            EncodingChoice::Named(encoding) => encoding.name().to_ascii_lowercase(),
        }
    }
}

impl Reading for crate::connector::PluginRef {
    fn read(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }

    fn write(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_read_once_and_written_back_as_it_was_given() {
        let runtime: Written<Duration> = " 90s".into();
        assert_eq!(runtime.get(), Some(&Duration::from_secs(90)));
        assert_eq!(runtime.text(), " 90s");
        assert_eq!(serde_json::to_string(&runtime).ok().as_deref(), Some("\" 90s\""));
        let back: Written<Duration> = serde_json::from_str("\" 90s\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, runtime);
        let size = Written::of(Bytes(64 << 20));
        assert_eq!(size.text(), "67108864B");
        assert_eq!(Written::<Bytes>::new(size.text()).get(), Some(&Bytes(64 << 20)));
    }

    #[test]
    fn text_that_means_nothing_is_kept_with_why() {
        let bad: Written<Duration> = serde_json::from_str("\"soon\"").unwrap_or_else(|e| panic!("{e}"));
        assert!(bad.get().is_none());
        assert!(
            bad.problem().is_some_and(|p| p.starts_with("`soon` is not a duration")),
            "{bad:?}"
        );
        assert_eq!(bad.to_string(), "soon");
        let zone: Written<chrono_tz::Tz> = "Mars/Olympus".into();
        assert!(zone.problem().is_some_and(|p| p.contains("IANA")));
        let encoding: Written<EncodingChoice> = "latin-1".into();
        assert_eq!(encoding.get(), Some(&EncodingChoice::Named(encoding_rs::WINDOWS_1252)));
        assert_eq!(
            Written::<EncodingChoice>::new("auto").get(),
            Some(&EncodingChoice::Auto)
        );
    }
}
