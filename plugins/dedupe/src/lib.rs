//! Keeps one row per key across the whole stream; emits the survivors at the
//! end (`finish`), because the last occurrence of a key is only known then.
//!
//! Config: `key` (one or more columns), `keep` (`first`, the default, or
//! `last`), `ignore_case` (compare text keys case-insensitively, default
//! false). Rows whose key columns are all null are kept as they are, never
//! merged. Dropped duplicates are counted in the log.

use std::collections::HashMap;

use weir_plugin::arrow_array::{Array, RecordBatch};
use weir_plugin::arrow_schema::SchemaRef;
use weir_plugin::arrow_select::interleave::interleave_record_batch;
use weir_plugin::{Error, Output, Transform, column_index, log, text};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    key: Keys,
    #[serde(default)]
    keep: Keep,
    #[serde(default)]
    ignore_case: bool,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Keys {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Keep {
    #[default]
    First,
    Last,
}

struct Dedupe {
    schema: SchemaRef,
    keys: Vec<usize>,
    keep: Keep,
    ignore_case: bool,
    batches: Vec<RecordBatch>,
    /// Key → (batch, row) of the survivor, plus the order keys were first seen.
    survivors: HashMap<Vec<Option<String>>, usize>,
    order: Vec<(usize, usize)>,
    dropped: u64,
}

impl Transform for Dedupe {
    type Config = Config;

    fn new(config: Config, input: SchemaRef) -> Result<Self, Error> {
        let names = match config.key {
            Keys::One(k) => vec![k],
            Keys::Many(k) => k,
        };
        if names.is_empty() {
            return Err(Error::config("`key` names no column"));
        }
        let keys = names
            .iter()
            .map(|n| column_index(&input, n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            schema: input,
            keys,
            keep: config.keep,
            ignore_case: config.ignore_case,
            batches: Vec::new(),
            survivors: HashMap::new(),
            order: Vec::new(),
            dropped: 0,
        })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, Error> {
        let index = self.batches.len();
        let columns = self
            .keys
            .iter()
            .map(|&k| text(batch.column(k)))
            .collect::<Result<Vec<_>, Error>>()?;
        for row in 0..batch.num_rows() {
            let key: Vec<Option<String>> = columns
                .iter()
                .map(|c| {
                    c.is_valid(row).then(|| {
                        let v = c.value(row).trim();
                        if self.ignore_case {
                            v.to_lowercase()
                        } else {
                            v.to_string()
                        }
                    })
                })
                .collect();
            if key.iter().all(Option::is_none) {
                self.order.push((index, row));
                continue;
            }
            match self.survivors.get(&key) {
                Some(&slot) => {
                    self.dropped += 1;
                    if self.keep == Keep::Last {
                        self.order[slot] = (index, row);
                    }
                }
                None => {
                    self.survivors.insert(key, self.order.len());
                    self.order.push((index, row));
                }
            }
        }
        self.batches.push(batch);
        Ok(RecordBatch::new_empty(self.schema.clone()).into())
    }

    fn finish(&mut self) -> Result<Option<Output>, Error> {
        log::info(format!("dropped {} duplicate rows", self.dropped));
        if self.order.is_empty() {
            return Ok(None);
        }
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        let survivors = interleave_record_batch(&batches, &self.order)?;
        self.batches.clear();
        self.order.clear();
        Ok(Some(survivors.into()))
    }
}

weir_plugin::export!(Dedupe);
