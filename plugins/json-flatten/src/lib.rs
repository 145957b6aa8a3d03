//! Flattens a JSON text column into columns, one per path.
//!
//! Config: `column` (the JSON text), `fields` (output column → dotted path
//! into the document, numeric segments index arrays: `"address.city"`,
//! `"tags.0"`), `keep_source` (keep the JSON column, default false). Values
//! become text: strings as they are, numbers and booleans as written,
//! objects and arrays as JSON, missing paths and JSON null as null. A row
//! whose column is not valid JSON is refused with the parser's message.

use std::sync::Arc;

use weir_plugin::arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use weir_plugin::arrow_schema::{DataType, Field, Schema, SchemaRef};
use weir_plugin::arrow_select::filter::filter_record_batch;
use weir_plugin::serde_json::{self, Value};
use weir_plugin::{Error, Output, Rejected, Transform, column_index, text};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    column: String,
    fields: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    keep_source: bool,
}

struct JsonFlatten {
    schema: SchemaRef,
    column: usize,
    keep_source: bool,
    paths: Vec<Vec<String>>,
}

impl Transform for JsonFlatten {
    type Config = Config;

    fn new(config: Config, input: SchemaRef) -> Result<Self, Error> {
        let column = column_index(&input, &config.column)?;
        if config.fields.is_empty() {
            return Err(Error::config("`fields` lists no output column"));
        }
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| config.keep_source || *i != column)
            .map(|(_, f)| f.as_ref().clone())
            .collect();
        let mut paths = Vec::new();
        for (name, path) in &config.fields {
            if fields.iter().any(|f| f.name() == name) {
                return Err(Error::config(format!("output column `{name}` already exists")));
            }
            fields.push(Field::new(name, DataType::Utf8, true));
            paths.push(path.split('.').map(str::to_string).collect());
        }
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            column,
            keep_source: config.keep_source,
            paths,
        })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, Error> {
        let text = text(batch.column(self.column))?;
        let mut outputs: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(text.len()); self.paths.len()];
        let mut keep = vec![true; text.len()];
        let mut rejected = Vec::new();
        for (row, value) in text.iter().enumerate() {
            let document = match value.map(serde_json::from_str::<Value>) {
                None => Value::Null,
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    rejected.push(Rejected::new(
                        row,
                        format!("`{}` is not JSON: {e}", self.source_name(&batch)),
                    ));
                    keep[row] = false;
                    Value::Null
                }
            };
            for (path, out) in self.paths.iter().zip(outputs.iter_mut()) {
                out.push(lookup(&document, path).and_then(text_of));
            }
        }
        let mut columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| self.keep_source || *i != self.column)
            .map(|(_, c)| c.clone())
            .collect();
        columns.extend(outputs.into_iter().map(|o| Arc::new(StringArray::from(o)) as ArrayRef));
        let mut flat = RecordBatch::try_new(self.schema.clone(), columns)?;
        if !rejected.is_empty() {
            flat = filter_record_batch(&flat, &BooleanArray::from(keep))?;
        }
        Ok(Output { batch: flat, rejected })
    }
}

impl JsonFlatten {
    fn source_name(&self, batch: &RecordBatch) -> String {
        batch.schema().field(self.column).name().clone()
    }
}

fn lookup<'a>(document: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(document, |v, segment| match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

weir_plugin::export!(JsonFlatten);
