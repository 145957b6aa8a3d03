//! Passes every batch through unchanged: the baseline for measuring what a
//! transform step costs.

use weir_plugin::arrow_array::RecordBatch;
use weir_plugin::arrow_schema::SchemaRef;
use weir_plugin::{Error, Output, Transform};

/// Takes no configuration.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

struct Identity {
    schema: SchemaRef,
}

impl Transform for Identity {
    type Config = Config;

    fn new(_config: Config, input: SchemaRef) -> Result<Self, Error> {
        Ok(Self { schema: input })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, Error> {
        Ok(batch.into())
    }
}

weir_plugin::export!(Identity);
