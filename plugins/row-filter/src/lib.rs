//! Keeps the rows whose column matches a condition; drops the others.
//!
//! Config: `column`, `op` (`eq`, `ne`, `lt`, `le`, `gt`, `ge`, `contains`,
//! `starts_with`, `in`, `is_null`, `not_null`) and `value` (a number
//! compares numerically, a string as text; `in` takes a list). A null value
//! matches only `is_null`. With `reject = true` the dropped rows are refused
//! with the reason instead of dropped silently.

use weir_plugin::arrow_array::{Array, BooleanArray, Float64Array, RecordBatch};
use weir_plugin::arrow_cast::cast;
use weir_plugin::arrow_schema::{DataType, SchemaRef};
use weir_plugin::arrow_select::filter::filter_record_batch;
use weir_plugin::serde_json::Value;
use weir_plugin::{Error, Output, Rejected, Transform, column_index, text};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    column: String,
    op: Op,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    reject: bool,
}

#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
    In,
    IsNull,
    NotNull,
}

/// What the column is compared with.
enum Operand {
    None,
    Number(f64),
    Text(String),
    Texts(Vec<String>),
}

struct RowFilter {
    schema: SchemaRef,
    column: usize,
    column_name: String,
    op: Op,
    operand: Operand,
    reject: bool,
}

impl Transform for RowFilter {
    type Config = Config;

    fn new(config: Config, input: SchemaRef) -> Result<Self, Error> {
        let column = column_index(&input, &config.column)?;
        let operand = match (config.op, &config.value) {
            (Op::IsNull | Op::NotNull, _) => Operand::None,
            (Op::In, Value::Array(items)) => Operand::Texts(items.iter().map(text_of).collect()),
            (Op::In, _) => return Err(Error::config("`in` takes a list as `value`")),
            (Op::Contains | Op::StartsWith, Value::String(s)) => Operand::Text(s.clone()),
            (Op::Contains | Op::StartsWith, _) => {
                return Err(Error::config("`contains` and `starts_with` take a string `value`"));
            }
            (_, Value::Number(n)) => Operand::Number(n.as_f64().unwrap_or(f64::NAN)),
            (_, Value::String(s)) => Operand::Text(s.clone()),
            (op, other) => {
                return Err(Error::config(format!(
                    "`{op:?}` needs a number or string `value`, not {other}"
                )));
            }
        };
        Ok(Self {
            schema: input,
            column,
            column_name: config.column,
            op: config.op,
            operand,
            reject: config.reject,
        })
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, Error> {
        let column = batch.column(self.column);
        let keep: Vec<bool> = match &self.operand {
            Operand::None => (0..column.len())
                .map(|i| column.is_null(i) == (self.op == Op::IsNull))
                .collect(),
            Operand::Number(n) => {
                let numbers = cast(column, &DataType::Float64)?;
                let numbers = numbers
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| Error::failed("cast to a number did not give numbers"))?;
                numbers
                    .iter()
                    .map(|v| v.is_some_and(|v| self.compare(v.partial_cmp(n))))
                    .collect()
            }
            Operand::Text(t) => text(column)?
                .iter()
                .map(|v| {
                    v.is_some_and(|v| match self.op {
                        Op::Contains => v.contains(t.as_str()),
                        Op::StartsWith => v.starts_with(t.as_str()),
                        _ => self.compare(Some(v.cmp(t.as_str()))),
                    })
                })
                .collect(),
            Operand::Texts(list) => text(column)?
                .iter()
                .map(|v| v.is_some_and(|v| list.iter().any(|t| t == v)))
                .collect(),
        };
        let rejected = if self.reject {
            keep.iter()
                .enumerate()
                .filter(|(_, k)| !**k)
                .map(|(row, _)| Rejected::new(row, format!("`{}` does not pass the filter", self.column_name)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Output {
            batch: filter_record_batch(&batch, &BooleanArray::from(keep))?,
            rejected,
        })
    }
}

impl RowFilter {
    fn compare(&self, ordering: Option<std::cmp::Ordering>) -> bool {
        use std::cmp::Ordering::*;
        match (self.op, ordering) {
            (_, None) => false,
            (Op::Eq, Some(o)) => o == Equal,
            (Op::Ne, Some(o)) => o != Equal,
            (Op::Lt, Some(o)) => o == Less,
            (Op::Le, Some(o)) => o != Greater,
            (Op::Gt, Some(o)) => o == Greater,
            (Op::Ge, Some(o)) => o != Less,
            _ => false,
        }
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

weir_plugin::export!(RowFilter);
