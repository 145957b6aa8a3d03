//! Normalises a phone number column to E.164 (`+14155550123`).
//!
//! Config: `column` (required), `default_region` (ISO 3166 code used for
//! numbers written without a country code, default `US`), `invalid`
//! (`reject` — the row is refused with the reason, the default; `null` — the
//! value becomes null; `keep` — the value is kept as written).

use std::sync::Arc;

use phonenumber::country::Id;
use weir_plugin::arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use weir_plugin::arrow_schema::{DataType, Field, Schema, SchemaRef};
use weir_plugin::arrow_select::filter::filter_record_batch;
use weir_plugin::{Error, Output, Rejected, Transform, column_index, text};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    column: String,
    #[serde(default = "us")]
    default_region: String,
    #[serde(default)]
    invalid: Invalid,
}

fn us() -> String {
    "US".to_string()
}

#[derive(serde::Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Invalid {
    #[default]
    Reject,
    Null,
    Keep,
}

struct PhoneNormalize {
    column: usize,
    region: Id,
    invalid: Invalid,
    schema: SchemaRef,
}

impl Transform for PhoneNormalize {
    type Config = Config;

    fn new(config: Config, input: SchemaRef) -> Result<Self, Error> {
        let column = column_index(&input, &config.column)?;
        let region: Id = config.default_region.to_ascii_uppercase().parse().map_err(|_| {
            Error::config(format!(
                "`{}` is not a region code such as US or DE",
                config.default_region
            ))
        })?;
        // The column becomes text, nullable.
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == column {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        Ok(Self {
            column,
            region,
            invalid: config.invalid,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, Error> {
        let text = text(batch.column(self.column))?;
        let mut rejected = Vec::new();
        let mut out: Vec<Option<String>> = Vec::with_capacity(text.len());
        for (row, value) in text.iter().enumerate() {
            let Some(raw) = value.map(str::trim).filter(|v| !v.is_empty()) else {
                out.push(None);
                continue;
            };
            // A number written with `+` carries its country code; parsing it
            // "in" a region makes the phonenumber crate strip that region's
            // national prefix from it (`+33 1 42 …` read in US loses its `1`).
            let region = if raw.starts_with('+') { None } else { Some(self.region) };
            match phonenumber::parse(region, raw) {
                Ok(number) if phonenumber::is_valid(&number) => {
                    out.push(Some(number.format().mode(phonenumber::Mode::E164).to_string()));
                }
                _ => match self.invalid {
                    Invalid::Reject => {
                        rejected.push(Rejected::new(row, format!("`{raw}` is not a valid phone number")));
                        out.push(None);
                    }
                    Invalid::Null => out.push(None),
                    Invalid::Keep => out.push(Some(raw.to_string())),
                },
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[self.column] = Arc::new(StringArray::from(out));
        let mut normalised = RecordBatch::try_new(self.schema.clone(), columns)?;
        if !rejected.is_empty() {
            // Refused rows go no further.
            let mut keep = vec![true; normalised.num_rows()];
            for r in &rejected {
                keep[r.row] = false;
            }
            normalised = filter_record_batch(&normalised, &BooleanArray::from(keep))?;
        }
        Ok(Output {
            batch: normalised,
            rejected,
        })
    }
}

weir_plugin::export!(PhoneNormalize);
