//! `records.<object>` in connector SQL (docs/loads.md "Reading what is
//! loaded"): a table that reads a snapshot of the record store taken when
//! the run starts, batch by batch as the query runs, with the columns the query uses and the conditions on them
//! that the store can apply, so a script can join its input against a large
//! object without holding the object in memory.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use crate::objects::ObjectDef;
use crate::pushdown;
use crate::runlog::{LogLevel, RunLog};
use crate::store::{Comparison, Condition, RecordSnapshot, Scan, Value, arrow_schema};

/// Batches read ahead of the query: the memory a scan holds beyond the
/// batch the query works on.
const READ_AHEAD: usize = 2;

/// An object's records as a table.
#[derive(Debug)]
pub struct RecordsTable {
    records: Arc<Records>,
    schema: SchemaRef,
}

/// Where an object's records are, and the run's log, which hears how many
/// records each read took from the store.
struct Records {
    snapshot: Arc<dyn RecordSnapshot>,
    workspace: String,
    object: ObjectDef,
    log: Arc<dyn RunLog>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("workspace", &self.workspace)
            .field("object", &self.object.name)
            .finish_non_exhaustive()
    }
}

impl RecordsTable {
    /// The records of `object` in `workspace`, as `snapshot` holds them.
    pub fn new(snapshot: Arc<dyn RecordSnapshot>, workspace: &str, object: &ObjectDef, log: Arc<dyn RunLog>) -> Self {
        Self {
            records: Arc::new(Records {
                snapshot,
                workspace: workspace.to_string(),
                object: object.clone(),
                log,
            }),
            schema: arrow_schema(object),
        }
    }
}

#[async_trait::async_trait]
impl TableProvider for RecordsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// The store applies what it can; DataFusion applies every filter again
    /// (inexact), so a store that leaves one out is still right.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(pushdown::inexact(filters, |f| condition(f, &self.schema).is_some()))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = pushdown::projected(&self.schema, projection)?;
        let scan = Scan {
            fields: schema.fields().iter().map(|f| f.name().clone()).collect(),
            conditions: filters.iter().filter_map(|f| condition(f, &self.schema)).collect(),
            limit,
            batch_rows: state.config().batch_size(),
        };
        let partition = Arc::new(RecordsPartition {
            records: self.records.clone(),
            schema: schema.clone(),
            scan,
        });
        pushdown::one_stream(schema, partition, limit)
    }
}

/// One read of the records, run on a blocking thread that hands batches
/// over as the query asks for them.
#[derive(Debug)]
struct RecordsPartition {
    records: Arc<Records>,
    schema: SchemaRef,
    scan: Scan,
}

impl PartitionStream for RecordsPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<DfResult<_>>(READ_AHEAD);
        let (records, scan) = (self.records.clone(), self.scan.clone());
        // A query that stops reading (a limit reached, a run canceled) drops
        // the receiver; the next hand-over fails and the read ends.
        tokio::task::spawn_blocking(move || {
            let Records {
                snapshot,
                workspace,
                object,
                log,
            } = records.as_ref();
            let mut handed = 0usize;
            let read = snapshot.scan(workspace, object, &scan, &mut |batch| {
                handed += batch.num_rows();
                tx.blocking_send(Ok(batch)).is_ok()
            });
            match read {
                Ok(()) => log.line(LogLevel::Info, &read_line(&object.name, handed, &scan)),
                Err(e) => {
                    let _ = tx.blocking_send(Err(DataFusionError::External(Box::new(e))));
                }
            }
        });
        let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// What a read of `records.<object>` took from the store, for the run's log:
/// how a script sees that its `WHERE` reached the store.
fn read_line(object: &str, records: usize, scan: &Scan) -> String {
    let noun = if records == 1 { "record" } else { "records" };
    let mut fields: Vec<&str> = Vec::new();
    for field in scan.conditions.iter().map(Condition::field) {
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    if fields.is_empty() {
        format!("records.{object}: {records} {noun} read from the store")
    } else {
        format!(
            "records.{object}: {records} {noun} read from the store, which applied the conditions on {}",
            fields.join(", ")
        )
    }
}

/// The store condition a filter is, when it is one: a column compared
/// with a literal of the column's own type, a null test, or a list of such
/// literals.
fn condition(filter: &Expr, schema: &SchemaRef) -> Option<Condition> {
    let column_of = |e: &Expr| pushdown::column(e, schema).map(|f| (f.name().clone(), f.data_type()));
    match filter {
        // `a = 1 OR a = 2 OR a IN (3)`: one list of values of one column.
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let (field, mut values) = one_of(condition(left, schema)?)?;
            let (other, more) = one_of(condition(right, schema)?)?;
            (field == other).then(|| {
                values.extend(more);
                Condition::In(field, values)
            })
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, op, literal) = pushdown::compared(left, *op, right, schema)?;
            let comparison = match op {
                Operator::Eq => Comparison::Eq,
                Operator::NotEq => Comparison::NotEq,
                Operator::Lt => Comparison::Lt,
                Operator::LtEq => Comparison::LtEq,
                Operator::Gt => Comparison::Gt,
                Operator::GtEq => Comparison::GtEq,
                _ => return None,
            };
            let value = value_of(literal, column.data_type())?;
            Some(Condition::Compare(column.name().clone(), comparison, value))
        }
        Expr::IsNull(e) => column_of(e).map(|(name, _)| Condition::Null(name, true)),
        Expr::IsNotNull(e) => column_of(e).map(|(name, _)| Condition::Null(name, false)),
        Expr::InList(list) if !list.negated => {
            let (name, kind) = column_of(&list.expr)?;
            let values = list
                .list
                .iter()
                .map(|e| value_of(e, kind))
                .collect::<Option<Vec<_>>>()?;
            Some(Condition::In(name, values))
        }
        _ => None,
    }
}

/// The values a condition lets a field equal, when it is a list of them.
fn one_of(c: Condition) -> Option<(String, Vec<Value>)> {
    match c {
        Condition::Compare(field, Comparison::Eq, value) => Some((field, vec![value])),
        Condition::In(field, values) => Some((field, values)),
        _ => None,
    }
}

/// A non-null literal of a column's type as a stored value.
fn value_of(e: &Expr, kind: &DataType) -> Option<Value> {
    let Expr::Literal(scalar, _) = e else { return None };
    match (kind, scalar) {
        (
            DataType::Utf8,
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
        ) => Some(Value::Text(s.clone())),
        (DataType::Float64, ScalarValue::Float64(Some(f))) => Some(Value::Number(*f)),
        (DataType::Boolean, ScalarValue::Boolean(Some(b))) => Some(Value::Bool(*b)),
        (DataType::Date32, ScalarValue::Date32(Some(d))) => Some(Value::Date(*d)),
        (DataType::Timestamp(TimeUnit::Microsecond, Some(_)), ScalarValue::TimestampMicrosecond(Some(m), Some(tz)))
            if tz.as_ref() == "UTC" || tz.as_ref() == "+00:00" =>
        {
            Some(Value::Datetime(*m))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn schema() -> SchemaRef {
        let objects = crate::objects::Objects::from_toml(
            r#"
[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  [[objects.fields]]
  name = "score"
  type = "number"
"#,
        )
        .expect("objects");
        arrow_schema(&objects.objects[0])
    }

    #[test]
    fn filters_of_a_column_and_a_literal_of_its_type_become_conditions() {
        let s = schema();
        assert_eq!(
            condition(&col("email").eq(lit("a@x.io")), &s),
            Some(Condition::Compare(
                "email".into(),
                Comparison::Eq,
                Value::Text("a@x.io".into())
            ))
        );
        // A literal on the left flips the comparison.
        assert_eq!(
            condition(&lit(5.0).lt(col("score")), &s),
            Some(Condition::Compare("score".into(), Comparison::Gt, Value::Number(5.0)))
        );
        assert_eq!(
            condition(&col("score").is_null(), &s),
            Some(Condition::Null("score".into(), true))
        );
        assert_eq!(
            condition(&col("email").in_list(vec![lit("a"), lit("b")], false), &s),
            Some(Condition::In(
                "email".into(),
                vec![Value::Text("a".into()), Value::Text("b".into())]
            ))
        );
        assert_eq!(
            condition(
                &col("email")
                    .eq(lit("a"))
                    .or(col("email").in_list(vec![lit("b")], false)),
                &s
            ),
            Some(Condition::In(
                "email".into(),
                vec![Value::Text("a".into()), Value::Text("b".into())]
            ))
        );
    }

    #[test]
    fn other_filters_stay_with_datafusion() {
        let s = schema();
        // A literal of another type (compared after a cast), a negated
        // list, a function of the column, two columns: none is pushed.
        for filter in [
            col("score").eq(lit("5")),
            col("email").in_list(vec![lit("a")], true),
            datafusion::functions::string::expr_fn::lower(col("email")).eq(lit("a")),
            col("email").eq(col("name")),
            col("email").like(lit("a%")),
            col("email").eq(lit("a")).or(col("name").eq(lit("b"))),
            col("score").gt(lit(1.0)).or(col("score").eq(lit(0.0))),
        ] {
            assert_eq!(condition(&filter, &s), None, "{filter}");
        }
    }
}
