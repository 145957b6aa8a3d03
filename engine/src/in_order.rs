//! Costly projections of a single stream, evaluated on several threads
//! with the rows kept in order.
//!
//! A scope that only maps its input (`SELECT json_get_str(body, 'id'), …
//! FROM input.data`) is one stream from start to end: DataFusion spreads
//! rows over threads only by repartitioning them, which loses their order,
//! and it does not repartition for a projection of function calls it
//! deems cheap. The functions of such a projection (JSON extraction above
//! all) are then the run's serial part. This rule evaluates each such
//! projection on up to the session's number of threads, a batch per
//! thread, and yields the batches in the order they came.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// The rule; add it last.
#[derive(Debug, Default)]
pub struct ProjectOnThreads;

impl PhysicalOptimizerRule for ProjectOnThreads {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        let threads = config.execution.target_partitions;
        if threads < 2 {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(projection) = node.downcast_ref::<ProjectionExec>() else {
                return Ok(Transformed::no(node));
            };
            if projection.input().output_partitioning().partition_count() != 1 || !costly(projection.expr()) {
                return Ok(Transformed::no(node));
            }
            let projection = Arc::new(projection.clone());
            Ok(Transformed::yes(
                Arc::new(InOrderExec { projection, threads }) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "project_on_threads"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether evaluating `exprs` calls a function (other than reading a
/// field of a struct).
fn costly(exprs: &[ProjectionExpr]) -> bool {
    exprs.iter().any(|e| {
        e.expr
            .exists(|node| {
                Ok(node
                    .downcast_ref::<ScalarFunctionExpr>()
                    .is_some_and(|f| f.name() != "get_field"))
            })
            .unwrap_or(false)
    })
}

/// A projection evaluated a batch per thread, on up to `threads` threads,
/// its batches yielded in their input's order.
#[derive(Debug)]
struct InOrderExec {
    projection: Arc<ProjectionExec>,
    threads: usize,
}

impl DisplayAs for InOrderExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InOrderExec: threads={}, ", self.threads)?;
        self.projection.fmt_as(t, f)
    }
}

impl ExecutionPlan for InOrderExec {
    fn name(&self) -> &str {
        "InOrderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.projection.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.projection.maintains_input_order()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.projection.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.projection.apply_expressions(f)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection = self
            .projection
            .clone()
            .replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?;
        let projection = projection
            .downcast_ref::<ProjectionExec>()
            .ok_or_else(|| DataFusionError::Internal("a projection's new children gave no projection".into()))?
            .clone();
        Ok(Arc::new(Self {
            projection: Arc::new(projection),
            threads: self.threads,
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.projection.input().execute(partition, context)?;
        let exprs: Arc<[ProjectionExpr]> = self.projection.expr().to_vec().into();
        let schema = self.projection.schema();
        let each = {
            let schema = schema.clone();
            move |batch: DfResult<RecordBatch>| {
                let (exprs, schema) = (exprs.clone(), schema.clone());
                async move {
                    let batch = batch?;
                    tokio::task::spawn_blocking(move || project(&exprs, &schema, &batch))
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?
                }
            }
        };
        let batches = input.map(each).buffered(self.threads);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// `exprs` evaluated on `batch`.
fn project(exprs: &[ProjectionExpr], schema: &SchemaRef, batch: &RecordBatch) -> DfResult<RecordBatch> {
    let rows = batch.num_rows();
    let columns = exprs
        .iter()
        .map(|e| e.expr.evaluate(batch)?.into_array(rows))
        .collect::<DfResult<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::catalog::streaming::StreamingTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::streaming::PartitionStream;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_costly_projection_runs_on_threads_and_keeps_its_rows_in_order() {
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(3).with_batch_size(100))
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(ProjectOnThreads))
            .build();
        let mut ctx = SessionContext::new_with_state(state);
        datafusion_functions_json::register_all(&mut ctx).unwrap_or_else(|e| panic!("{e}"));
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        // Many small batches in one partition.
        let batches: Vec<RecordBatch> = (0..200_i64)
            .map(|b| {
                let n: Vec<i64> = (b * 50..b * 50 + 50).collect();
                let s: Vec<String> = n.iter().map(|i| format!(r#"{{"a":"row {i}"}}"#)).collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(n)), Arc::new(StringArray::from(s))],
                )
                .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        // One stream, as an input file is.
        #[derive(Debug)]
        struct Stream(SchemaRef, Vec<RecordBatch>);
        impl PartitionStream for Stream {
            fn schema(&self) -> &SchemaRef {
                &self.0
            }
            fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
                let batches = futures::stream::iter(self.1.clone().into_iter().map(Ok));
                Box::pin(RecordBatchStreamAdapter::new(self.0.clone(), batches))
            }
        }
        let table = StreamingTable::try_new(schema.clone(), vec![Arc::new(Stream(schema, batches))])
            .unwrap_or_else(|e| panic!("{e}"));
        ctx.register_table("t", Arc::new(table))
            .unwrap_or_else(|e| panic!("{e}"));
        let plan = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{e}"));
                df.create_physical_plan().await.unwrap_or_else(|e| panic!("{e}"))
            }
        };

        let projected = plan("SELECT n, json_get_str(s, 'a') AS s FROM t").await;
        let shown = displayable(projected.as_ref()).indent(false).to_string();
        assert!(shown.contains("InOrderExec: threads=3"), "{shown}");
        let out = collect(projected, ctx.task_ctx())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut next = 0_i64;
        for batch in &out {
            let n = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap_or_else(|| panic!("n"));
            let s = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap_or_else(|| panic!("s"));
            for i in 0..batch.num_rows() {
                assert_eq!(n.value(i), next, "rows out of order");
                assert_eq!(s.value(i), format!("row {next}"));
                next += 1;
            }
        }
        assert_eq!(next, 10_000);

        // A projection of columns only stays as it is.
        let columns = plan("SELECT s, n FROM t").await;
        assert!(
            !displayable(columns.as_ref())
                .indent(false)
                .to_string()
                .contains("InOrderExec")
        );
    }
}
