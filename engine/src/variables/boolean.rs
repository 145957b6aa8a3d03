//! Booleans, in the forms `input_format` names (true/false, yes/no, 1/0, ...).

use super::*;

#[derive(Debug)]
pub(super) struct BooleanElement {
    pub(super) format: BoolFormat,
}

/// Boolean `input_format`s.
#[derive(Debug, Clone, Copy)]
pub(super) enum BoolFormat {
    Auto,
    YesNo,
    TrueFalse,
    OnOff,
    OneZero,
    Tf,
}

impl BoolFormat {
    pub(super) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => BoolFormat::Auto,
            "yes_no" => BoolFormat::YesNo,
            "true_false" => BoolFormat::TrueFalse,
            "on_off" => BoolFormat::OnOff,
            "one_zero" => BoolFormat::OneZero,
            "t_f" => BoolFormat::Tf,
            _ => return None,
        })
    }

    /// The accepted words (compared case-insensitively).
    fn words(self) -> &'static [(&'static str, bool)] {
        match self {
            BoolFormat::Auto => &[
                ("true", true),
                ("false", false),
                ("yes", true),
                ("no", false),
                ("on", true),
                ("off", false),
                ("1", true),
                ("0", false),
                ("t", true),
                ("f", false),
                ("y", true),
                ("n", false),
            ],
            BoolFormat::YesNo => &[("yes", true), ("no", false), ("y", true), ("n", false)],
            BoolFormat::TrueFalse => &[("true", true), ("false", false)],
            BoolFormat::OnOff => &[("on", true), ("off", false)],
            BoolFormat::OneZero => &[("1", true), ("0", false)],
            BoolFormat::Tf => &[("t", true), ("f", false)],
        }
    }

    pub(super) fn expected(self) -> &'static str {
        match self {
            BoolFormat::Auto => "true/false, yes/no, on/off, 1/0, t/f or y/n",
            BoolFormat::YesNo => "yes/no or y/n",
            BoolFormat::TrueFalse => "true/false",
            BoolFormat::OnOff => "on/off",
            BoolFormat::OneZero => "1/0",
            BoolFormat::Tf => "t/f",
        }
    }
}

impl Element for BooleanElement {
    type Builder = BooleanBuilder;
    type Value<'a> = bool;

    fn data_type(&self) -> DataType {
        DataType::Boolean
    }

    fn builder(&self, capacity: usize) -> BooleanBuilder {
        BooleanBuilder::with_capacity(capacity)
    }

    fn append(builder: &mut BooleanBuilder, value: &Self::Value<'_>) {
        builder.append_value(*value);
    }

    fn append_null(builder: &mut BooleanBuilder) {
        builder.append_null();
    }

    fn parse<'a>(&self, text: &'a str) -> Result<Self::Value<'a>, String> {
        self.format
            .words()
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(text))
            .map(|&(_, value)| value)
            .ok_or_else(|| format!("{} is not a boolean (expected {})", quote(text), self.format.expected()))
    }

    fn typed<'a>(&self, value: Typed) -> Result<Self::Value<'a>, String> {
        match value {
            Typed::Bool(b) => Ok(b),
            other => self.parse(&other.to_string()),
        }
    }
}
