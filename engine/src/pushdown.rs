//! What the tables of Weir's own have in common (`records.<object>`, a
//! PostgreSQL source's queries): each reads one stream with the columns a
//! query uses, and takes the simple filters it can apply itself as a hint
//! (inexact: DataFusion applies every filter again).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

/// The columns a scan reads.
pub(crate) fn projected(schema: &SchemaRef, projection: Option<&Vec<usize>>) -> DfResult<SchemaRef> {
    Ok(match projection {
        Some(columns) => Arc::new(schema.project(columns)?),
        None => schema.clone(),
    })
}

/// Each filter the table applies (`applies`) is pushed as a hint; the rest
/// stay with DataFusion.
pub(crate) fn inexact(filters: &[&Expr], applies: impl Fn(&Expr) -> bool) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            if applies(f) {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Unsupported
            }
        })
        .collect()
}

/// A plan that reads one stream.
pub(crate) fn one_stream(
    schema: SchemaRef,
    partition: Arc<dyn PartitionStream>,
    limit: Option<usize>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        vec![partition],
        None,
        [],
        false,
        limit,
    )?))
}

/// The field of `schema` an expression is, when it is a bare column.
pub(crate) fn column<'s>(e: &Expr, schema: &'s SchemaRef) -> Option<&'s Field> {
    let Expr::Column(c) = e else { return None };
    schema.field_with_name(&c.name).ok()
}

/// `left op right` as a column of `schema` compared with something else:
/// the column, the comparison read from the column's side (`5 < a` is
/// `a > 5`), and the other side.
pub(crate) fn compared<'e, 's>(
    left: &'e Expr,
    op: Operator,
    right: &'e Expr,
    schema: &'s SchemaRef,
) -> Option<(&'s Field, Operator, &'e Expr)> {
    match (column(left, schema), column(right, schema)) {
        (Some(c), None) => Some((c, op, right)),
        (None, Some(c)) => Some((c, op.swap()?, left)),
        _ => None,
    }
}
