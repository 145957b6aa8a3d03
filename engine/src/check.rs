//! Checking a SQL script before it runs (SPEC §4: a draft is parsed and
//! planned against the sample).
//!
//! The sample's tables and the objects' records are registered *empty* with
//! their real schemas, and every statement is planned exactly as in a run,
//! so a missing table or column, a type mismatch or an unknown function is
//! found with its line and column, without reading the sample's rows. No
//! statement that reads rows is executed: a `CREATE TABLE … AS` makes an
//! empty table of its query's schema, and an `INSERT` is only planned, so a
//! check does no work whatever the script (a cross join of two
//! `range(1e9)` is planned, not counted).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use tokio_util::sync::CancellationToken;

use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::execution::TriggerType;
use crate::intake::{self, IntakeOptions, RejectSink};
use crate::objects::Objects;
use crate::pipeline::InputFile;
use crate::report::RejectedRow;
use crate::sql::{self, ExecutionMeta, Script, SessionSettings};
use crate::store;

/// Rows of the sample are never read here, so nothing is rejected.
struct NothingRead;

impl RejectSink for NothingRead {
    fn reject(&self, _row: RejectedRow) {}
}

fn empty(schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    let table = MemTable::try_new(schema, vec![vec![]]).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Arc::new(table))
}

/// Parses `script` and, with a sample, plans it against the sample's tables
/// and the `objects` whose records the script may read, as in a run.
/// Without a sample only the parse is checked: the input's columns are
/// unknown.
///
/// Errors are the run's own: `sql_error` / `sql_not_allowed` with a
/// position, or the sample's intake error when it cannot be read.
pub async fn script(
    connector: &Connector,
    script: &str,
    sample: Option<&InputFile>,
    objects: Option<&Objects>,
) -> Result<()> {
    plan(connector, script, sample, objects).await.map(drop)
}

/// [`script`], then the connector's variables, transforms and load steps
/// against the scopes the script makes on the sample: what an edit of an
/// operational connector must not break. Without a sample only the parse
/// is checked.
pub async fn connector(
    connector: &Connector,
    script: &str,
    sample: Option<&InputFile>,
    objects: Option<&Objects>,
) -> Result<()> {
    let Some(scopes) = plan(connector, script, sample, objects).await? else {
        return Ok(());
    };
    let problems = connector.check_scopes(&scopes);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidConnector(problems))
    }
}

/// Plans the script; with a sample, gives each scope's columns.
async fn plan(
    connector: &Connector,
    script: &str,
    sample: Option<&InputFile>,
    objects: Option<&Objects>,
) -> Result<Option<HashMap<String, Vec<String>>>> {
    let script = Script::parse(script)?;
    let Some(sample) = sample else {
        return Ok(None);
    };
    // A source's tables and columns are known only by reaching it, which
    // a check does not do; such a script is planned when it runs.
    if !connector.sources.is_empty() {
        let named = sql::Named::in_script(&script)?.schemas();
        if connector.sources.iter().any(|s| named.contains(&s.name)) {
            return Ok(None);
        }
    }
    let limits = connector.limits.parse().map_err(Error::InvalidConnector)?;
    let ctx = sql::session(&SessionSettings {
        threads: 1,
        max_memory: limits.max_memory,
        batch_size: 1024,
        spill_dir: None,
    })?;
    let options = IntakeOptions::new(&connector.input, &limits)?;
    let path =
        std::fs::canonicalize(&sample.path).map_err(|e| Error::io(format!("opening {}", sample.path.display()), e))?;
    let intake = intake::open(
        &ctx,
        &path,
        &sample.name,
        &options,
        Arc::new(NothingRead),
        CancellationToken::new(),
    )
    .await?;
    let mut tables = Vec::with_capacity(intake.tables.len());
    for t in &intake.tables {
        tables.push((t.name.as_str(), empty(t.provider.schema())?));
    }
    sql::register_inputs(&ctx, &tables)?;
    sql::register_meta(
        &ctx,
        &ExecutionMeta {
            execution_id: String::new(),
            connector_id: None,
            connector_api_name: connector.api_name.clone(),
            trigger_type: TriggerType::FileUpload.as_str().into(),
            is_dry_run: true,
            source_file_id: None,
            source_file_name: Some(sample.name.clone()),
            source_file_size: std::fs::metadata(&sample.path).ok().map(|m| m.len()),
            triggered_by: None,
            window: (None, None),
            started_at: chrono::Utc::now(),
        },
        &connector.parameters,
    )?;
    for object in objects.map_or(&[][..], |o| &o.objects) {
        sql::register_records(&ctx, &object.name, empty(store::arrow_schema(object))?)?;
    }
    // Views are planned when created; building each scope's physical plan
    // catches what only shows there.
    let mut scopes = HashMap::new();
    for scope in sql::run_script(&ctx, &script, sql::ScriptMode::Check).await? {
        let stream = sql::scope_stream(&ctx, &scope, &script).await?;
        let columns = stream.schema().fields().iter().map(|f| f.name().clone()).collect();
        scopes.insert(scope, columns);
    }
    Ok(Some(scopes))
}
