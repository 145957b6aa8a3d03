//! A PostgreSQL source's `queries` (docs/sources.md "Queries"): a query the
//! database runs, read as a table. Its columns come from the database's own
//! description of the query (so a query with no rows still has them); a
//! scan runs `SELECT <columns> FROM (<query>) AS weir_query WHERE <filters>`,
//! so the database sees the columns and the simple conditions the script
//! puts on it. Wrapped as a subquery, the query can only read: PostgreSQL
//! refuses a data-modifying `WITH` below the top level, and the extended
//! protocol takes one statement.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion_table_providers::sql::arrow_sql_gen::postgres::rows_to_arrow;
use datafusion_table_providers::sql::db_connection_pool::postgrespool::PostgresConnectionPool;
use futures::{StreamExt, TryStreamExt};
use tokio_postgres::types::Type;

use crate::pushdown;

/// The scale of a `numeric` column declared without one: the table
/// provider reads such columns with this scale too.
const NUMERIC_SCALE: i8 = 20;

/// Opens query `name` of a source: asks the database for its columns.
pub(super) async fn open(
    pool: Arc<PostgresConnectionPool>,
    name: &str,
    query: &str,
) -> std::result::Result<Arc<dyn TableProvider>, String> {
    let query = query.trim().trim_end_matches(';').trim_end().to_string();
    let session = pool.connect_direct().await.map_err(|e| e.to_string())?;
    let statement = session
        .conn
        .prepare(&format!("SELECT * FROM ({query}) AS weir_query"))
        .await
        .map_err(|e| format!("query `{name}`: {}", database_message(&e)))?;
    let mut fields: Vec<Field> = Vec::new();
    for column in statement.columns() {
        if fields.iter().any(|f| f.name() == column.name()) {
            return Err(format!(
                "query `{name}`: two columns are named `{}`; give each its own name",
                column.name()
            ));
        }
        let kind = arrow_type(column.type_()).ok_or_else(|| {
            format!(
                "query `{name}`: column `{}` is of type `{}`, which a source cannot read; cast it in the query (`{}::text`)",
                column.name(),
                column.type_(),
                column.name()
            )
        })?;
        fields.push(Field::new(column.name(), kind, true));
    }
    Ok(Arc::new(QueryTable {
        pool,
        query,
        schema: Arc::new(Schema::new(fields)),
    }))
}

/// The Arrow type the table provider reads a PostgreSQL type as, for the
/// types a query's columns may have.
fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::MONEY => DataType::Int64,
        Type::OID | Type::XID => DataType::UInt32,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::UUID | Type::NAME | Type::JSON | Type::JSONB => {
            DataType::Utf8
        }
        Type::BYTEA => DataType::Binary,
        Type::BOOL => DataType::Boolean,
        Type::NUMERIC => DataType::Decimal128(38, NUMERIC_SCALE),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Nanosecond, None),
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Nanosecond),
        Type::INTERVAL => DataType::Interval(IntervalUnit::MonthDayNano),
        _ => return None,
    })
}

/// The first line of a database error with its detail, as the database
/// gives it (a syntax error names the position).
fn database_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// A query read as a table.
struct QueryTable {
    pool: Arc<PostgresConnectionPool>,
    query: String,
    schema: SchemaRef,
}

impl std::fmt::Debug for QueryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryTable")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TableProvider for QueryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    /// Simple conditions go to the database too; DataFusion applies every
    /// filter again (inexact).
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
        let columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        let mut sql = format!("SELECT {} FROM ({}) AS weir_query", columns.join(", "), self.query);
        let conditions: Vec<String> = filters.iter().filter_map(|f| condition(f, &self.schema)).collect();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let partition = Arc::new(QueryPartition {
            pool: self.pool.clone(),
            sql,
            schema: schema.clone(),
            batch_rows: state.config().batch_size(),
        });
        pushdown::one_stream(schema, partition, limit)
    }
}

/// One run of a query.
struct QueryPartition {
    pool: Arc<PostgresConnectionPool>,
    sql: String,
    schema: SchemaRef,
    batch_rows: usize,
}

impl std::fmt::Debug for QueryPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryPartition")
            .field("sql", &self.sql)
            .finish_non_exhaustive()
    }
}

impl PartitionStream for QueryPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (pool, sql, schema, batch_rows) = (
            self.pool.clone(),
            self.sql.clone(),
            self.schema.clone(),
            self.batch_rows.max(1),
        );
        let external = |e: String| DataFusionError::External(e.into());
        let rows = futures::stream::once(async move {
            let session = pool.connect_direct().await.map_err(|e| external(e.to_string()))?;
            let rows = session
                .conn
                .query_raw(sql.as_str(), std::iter::empty::<i32>())
                .await
                .map_err(|e| external(database_message(&e)))?;
            // The session lives as long as its rows are read.
            let batches = rows.chunks(batch_rows).map(move |chunk| {
                let _session = &session;
                let rows = chunk
                    .into_iter()
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| external(database_message(&e)))?;
                batch(&rows, &schema).map_err(external)
            });
            Ok::<_, DataFusionError>(batches)
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }
}

/// Rows as a batch of exactly `schema`.
fn batch(rows: &[tokio_postgres::Row], schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    if schema.fields().is_empty() {
        // Only how many rows (`count(*)`).
        return RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )
        .map_err(|e| e.to_string());
    }
    let read = rows_to_arrow(rows, &Some(schema.clone())).map_err(|e| e.to_string())?;
    RecordBatch::try_new(schema.clone(), read.columns().to_vec())
        .map_err(|e| format!("the query's rows do not have the columns it described: {e}"))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A filter as PostgreSQL SQL, when it is simple enough to mean the same
/// there: a column compared with a literal (text only for `=` and `<>`:
/// the database's collation may order text differently), a null test, a
/// list of literals, and `OR`s of those.
fn condition(filter: &Expr, schema: &SchemaRef) -> Option<String> {
    let column = |e: &Expr| pushdown::column(e, schema).map(|f| quote(f.name()));
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => Some(format!(
            "({} OR {})",
            condition(left, schema)?,
            condition(right, schema)?
        )),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (c, op, literal) = pushdown::compared(left, *op, right, schema)?;
            let c = quote(c.name());
            let (value, ordered) = literal_sql(literal)?;
            let op = match op {
                Operator::Eq => "=",
                Operator::NotEq => "<>",
                Operator::Lt if ordered => "<",
                Operator::LtEq if ordered => "<=",
                Operator::Gt if ordered => ">",
                Operator::GtEq if ordered => ">=",
                _ => return None,
            };
            Some(format!("{c} {op} {value}"))
        }
        Expr::IsNull(e) => Some(format!("{} IS NULL", column(e)?)),
        Expr::IsNotNull(e) => Some(format!("{} IS NOT NULL", column(e)?)),
        Expr::InList(list) if !list.negated && !list.list.is_empty() => {
            let values = list
                .list
                .iter()
                .map(|e| literal_sql(e).map(|(v, _)| v))
                .collect::<Option<Vec<_>>>()?;
            Some(format!("{} IN ({})", column(&list.expr)?, values.join(", ")))
        }
        _ => None,
    }
}

/// A literal as PostgreSQL SQL, and whether ordering it means the same
/// there. Text is quoted (a backslash or NUL is left to DataFusion).
fn literal_sql(e: &Expr) -> Option<(String, bool)> {
    let Expr::Literal(scalar, _) = e else { return None };
    match scalar {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))
            if !s.contains(['\\', '\0']) =>
        {
            Some((format!("'{}'", s.replace('\'', "''")), false))
        }
        ScalarValue::Int8(Some(_))
        | ScalarValue::Int16(Some(_))
        | ScalarValue::Int32(Some(_))
        | ScalarValue::Int64(Some(_))
        | ScalarValue::UInt8(Some(_))
        | ScalarValue::UInt16(Some(_))
        | ScalarValue::UInt32(Some(_))
        | ScalarValue::UInt64(Some(_)) => Some((scalar.to_string(), true)),
        ScalarValue::Float64(Some(f)) if f.is_finite() => Some((format!("{f:?}"), true)),
        ScalarValue::Boolean(Some(b)) => Some((b.to_string(), false)),
        ScalarValue::Date32(Some(_)) => Some((format!("DATE '{scalar}'"), true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, ident, lit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("Region", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn simple_filters_become_postgresql_conditions() {
        let s = schema();
        let cases = [
            (col("id").gt(lit(5_i64)), "\"id\" > 5"),
            (lit(5_i64).lt_eq(col("id")), "\"id\" >= 5"),
            (ident("Region").eq(lit("it's")), "\"Region\" = 'it''s'"),
            (col("id").is_null(), "\"id\" IS NULL"),
            (
                col("id").gt_eq(lit(ScalarValue::Date32(Some(19_000)))),
                "\"id\" >= DATE '2022-01-08'",
            ),
            (
                col("id").in_list(vec![lit(1_i64), lit(2_i64)], false),
                "\"id\" IN (1, 2)",
            ),
            (
                ident("Region").eq(lit("eu")).or(col("id").eq(lit(3_i64))),
                "(\"Region\" = 'eu' OR \"id\" = 3)",
            ),
        ];
        for (filter, sql) in cases {
            assert_eq!(condition(&filter, &s).as_deref(), Some(sql), "{filter}");
        }
    }

    #[test]
    fn filters_that_could_mean_something_else_there_stay_with_datafusion() {
        let s = schema();
        for filter in [
            // Text order follows the database's collation.
            ident("Region").gt(lit("m")),
            ident("Region").eq(lit("a\\b")),
            ident("Region").like(lit("e%")),
            col("id").in_list(vec![lit(1_i64)], true),
            col("id").eq(col("id")),
            ident("Region").eq(lit("eu")).or(ident("Region").like(lit("a%"))),
        ] {
            assert_eq!(condition(&filter, &s), None, "{filter}");
        }
    }
}
