//! One pass over a JSON text for all the fields a projection reads from it.
//!
//! A webhook script typically pulls many fields out of one `body`:
//! `json_get_str(body, 'id')`, `json_get_str(body, 'customer', 'email')`,
//! `json_length(body, 'lines')`, … Each JSON function parses the text
//! again from its start, so seven fields cost seven parses of every body.
//! This physical optimizer rule finds, in each projection, the JSON
//! function calls that read the same text column with literal paths and
//! replaces them with one walk of the text ([`JsonPaths`]) that finds the
//! value of every path at once, followed by the original functions applied
//! to those values alone (`json_get_str(<the value>)`). The functions'
//! own semantics (types, conversions, what a malformed text gives) are
//! therefore unchanged; only the search for the values is shared.
//!
//! The walk reads the text in order and stops at its first malformed byte,
//! keeping the values it has already passed — as each function does when
//! it stops at the value it looks for. Paths the walk cannot mirror
//! exactly (negative indexes, keys that spell a number and so may index
//! an array, path arguments that are columns or nulls) stay with the
//! original calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use jiter::{Jiter, JiterResult, Peek};

/// The JSON functions whose search is shared: each gives, for a text and a
/// path, what it gives for the value at that path and no path.
const SHARED_FUNCTIONS: &[&str] = &[
    "json_get",
    "json_get_str",
    "json_get_int",
    "json_get_float",
    "json_get_bool",
    "json_get_json",
    "json_as_text",
    "json_length",
];

/// The name of the column that carries a text's found values between the
/// two projections.
const VALUES_COLUMN: &str = "__weir_json_values";

/// The rule; add it after DataFusion's own physical optimizer rules.
#[derive(Debug, Default)]
pub struct ShareJsonPaths;

impl PhysicalOptimizerRule for ShareJsonPaths {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        let config = Arc::new(config.clone());
        plan.transform_up(|node| {
            let Some(projection) = node.downcast_ref::<ProjectionExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match share(projection, &config)? {
                Some(shared) => Transformed::yes(shared),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "share_json_paths"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One step of a path: an object's key or an array's position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

/// A JSON function call the walk can serve: its text column, function and
/// path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Call {
    column: usize,
    function: ScalarUDF,
    path: Vec<Step>,
    field: FieldRef,
}

/// The call `expr` is, when the walk can serve it.
fn call_of(expr: &dyn PhysicalExpr, input: &datafusion::arrow::datatypes::Schema) -> Option<Call> {
    let call = expr.downcast_ref::<ScalarFunctionExpr>()?;
    if !SHARED_FUNCTIONS.contains(&call.fun().name()) {
        return None;
    }
    let (text, path) = call.args().split_first()?;
    if path.is_empty() {
        return None;
    }
    let column = text.downcast_ref::<Column>()?;
    let text_type = input.fields().get(column.index())?.data_type();
    if !matches!(text_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        return None;
    }
    let path = path.iter().map(|p| step(p.as_ref())).collect::<Option<Vec<_>>>()?;
    // The values reach the function as `Utf8`; it must answer the type it
    // answered for the column.
    if call.fun().return_type(&[DataType::Utf8]).ok()? != *call.return_type() {
        return None;
    }
    Some(Call {
        column: column.index(),
        function: call.fun().clone(),
        path,
        field: call.return_field(input).ok()?,
    })
}

fn step(arg: &dyn PhysicalExpr) -> Option<Step> {
    match arg.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(key)) | ScalarValue::LargeUtf8(Some(key)) | ScalarValue::Utf8View(Some(key))
            // A key that spells a number indexes an array it meets.
            if key.trim().parse::<i128>().is_err() =>
        {
            Some(Step::Key(key.clone()))
        }
        ScalarValue::Int64(Some(i)) => usize::try_from(*i).ok().map(Step::Index),
        ScalarValue::UInt64(Some(i)) => usize::try_from(*i).ok().map(Step::Index),
        _ => None,
    }
}

/// The projection with its shared calls split off into a projection below
/// it, or `None` when no text column has two calls to share.
fn share(projection: &ProjectionExec, config: &Arc<ConfigOptions>) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let input = projection.input();
    let input_schema = input.schema();
    let mut by_column: BTreeMap<usize, Vec<Call>> = BTreeMap::new();
    for e in projection.expr() {
        e.expr.apply(|node| {
            Ok(match call_of(node.as_ref(), &input_schema) {
                Some(call) => {
                    let calls = by_column.entry(call.column).or_default();
                    if !calls.contains(&call) {
                        calls.push(call);
                    }
                    TreeNodeRecursion::Jump
                }
                None => TreeNodeRecursion::Continue,
            })
        })?;
    }
    by_column.retain(|_, calls| calls.len() >= 2);
    if by_column.is_empty() {
        return Ok(None);
    }

    // Below: every input column, then one struct of found values per text.
    let mut below: Vec<ProjectionExpr> = input_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| ProjectionExpr::new(Arc::new(Column::new(f.name(), i)), f.name().clone()))
        .collect();
    let mut values_of = BTreeMap::new();
    for (&column, calls) in &by_column {
        let paths = JsonPaths::new(calls);
        let field = Arc::new(Field::new(VALUES_COLUMN, paths.return_type.clone(), true));
        let text: Arc<dyn PhysicalExpr> = Arc::new(Column::new(input_schema.field(column).name(), column));
        let values = ScalarFunctionExpr::new(
            "json_values",
            Arc::new(ScalarUDF::new_from_impl(paths)),
            vec![text],
            field,
            config.clone(),
        );
        let name = format!("{VALUES_COLUMN}_{column}");
        values_of.insert(column, (below.len(), name.clone()));
        below.push(ProjectionExpr::new(Arc::new(values), name));
    }
    let below = Arc::new(ProjectionExec::try_new(below, input.clone())?);

    // Above: each shared call becomes a field of its text's struct.
    let get_field = datafusion::functions::core::get_field();
    let mut above = Vec::with_capacity(projection.expr().len());
    for e in projection.expr() {
        let expr = e
            .expr
            .clone()
            .transform_down(|node| {
                let Some(call) = call_of(node.as_ref(), &input_schema) else {
                    return Ok(Transformed::no(node));
                };
                let Some(position) = by_column
                    .get(&call.column)
                    .and_then(|calls| calls.iter().position(|c| *c == call))
                else {
                    return Ok(Transformed::no(node));
                };
                let (index, name) = &values_of[&call.column];
                let field: Arc<dyn PhysicalExpr> = Arc::new(ScalarFunctionExpr::new(
                    "get_field",
                    get_field.clone(),
                    vec![
                        Arc::new(Column::new(name, *index)),
                        Arc::new(Literal::new(ScalarValue::Utf8(Some(field_name(position))))),
                    ],
                    call.field.clone(),
                    config.clone(),
                ));
                Ok(Transformed::new(field, true, TreeNodeRecursion::Jump))
            })
            .data()?;
        above.push(ProjectionExpr::new(expr, e.alias.clone()));
    }
    let above = ProjectionExec::try_new(above, below)?;
    // The rewrite must not change what the projection answers.
    if above.schema() != projection.schema() {
        return Ok(None);
    }
    Ok(Some(Arc::new(above)))
}

fn field_name(position: usize) -> String {
    format!("v{position}")
}

/// The paths wanted from one text, as a tree: what a value answers, and
/// where to look inside it.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct Node {
    /// The calls whose path ends here.
    calls: Vec<usize>,
    /// Children by key, in the order first asked for.
    keys: Vec<(String, Node)>,
    /// Children by array position.
    indexes: Vec<(usize, Node)>,
}

impl Node {
    fn insert(&mut self, path: &[Step], call: usize) {
        let Some((first, rest)) = path.split_first() else {
            self.calls.push(call);
            return;
        };
        let child = match first {
            Step::Key(key) => {
                let i = self.keys.iter().position(|(k, _)| k == key).unwrap_or_else(|| {
                    self.keys.push((key.clone(), Node::default()));
                    self.keys.len() - 1
                });
                &mut self.keys[i].1
            }
            Step::Index(index) => {
                let i = self.indexes.iter().position(|(i, _)| i == index).unwrap_or_else(|| {
                    self.indexes.push((*index, Node::default()));
                    self.indexes.len() - 1
                });
                &mut self.indexes[i].1
            }
        };
        child.insert(rest, call);
    }

    /// How many calls this node and its descendants serve.
    fn count(&self) -> usize {
        self.calls.len()
            + self.keys.iter().map(|(_, n)| n.count()).sum::<usize>()
            + self.indexes.iter().map(|(_, n)| n.count()).sum::<usize>()
    }
}

/// The byte range of each call's value in one text, as the walk finds them.
struct Found {
    ranges: Vec<Option<(usize, usize)>>,
    missing: usize,
}

/// Walks the value `jiter` is at (`peek` seen), recording the range of
/// every value a call asks for; stops early once nothing is missing.
fn walk(jiter: &mut Jiter<'_>, peek: Peek, node: &Node, found: &mut Found) -> JiterResult<()> {
    let start = jiter.current_index();
    match peek {
        Peek::Object if !node.keys.is_empty() => {
            let mut seen = vec![false; node.keys.len()];
            let mut key = jiter.known_object()?;
            while let Some(k) = key {
                // The first occurrence of a key is the one read, as the
                // functions do.
                match node.keys.iter().position(|(name, _)| name == k) {
                    Some(i) if !seen[i] => {
                        seen[i] = true;
                        let peek = jiter.peek()?;
                        walk(jiter, peek, &node.keys[i].1, found)?;
                        if found.missing == 0 {
                            return Ok(());
                        }
                    }
                    _ => jiter.next_skip()?,
                }
                key = jiter.next_key()?;
            }
        }
        Peek::Array if !node.indexes.is_empty() => {
            let mut item = jiter.known_array()?;
            let mut position = 0;
            while let Some(peek) = item {
                match node.indexes.iter().find(|(i, _)| *i == position) {
                    Some((_, child)) => {
                        walk(jiter, peek, child, found)?;
                        if found.missing == 0 {
                            return Ok(());
                        }
                    }
                    None => jiter.known_skip(peek)?,
                }
                item = jiter.array_step()?;
                position += 1;
            }
        }
        _ => jiter.known_skip(peek)?,
    }
    for &call in &node.calls {
        found.ranges[call] = Some((start, jiter.current_index()));
        found.missing -= 1;
    }
    Ok(())
}

/// The scalar function of the lower projection: a struct with, for each
/// shared call, what that call answers.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonPaths {
    signature: Signature,
    calls: Vec<Call>,
    root: Node,
    /// How many values the walk looks for.
    wanted: usize,
    return_type: DataType,
}

impl JsonPaths {
    fn new(calls: &[Call]) -> Self {
        let mut root = Node::default();
        for (i, call) in calls.iter().enumerate() {
            root.insert(&call.path, i);
        }
        let fields: Fields = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Field::new(field_name(i), c.field.data_type().clone(), true).with_metadata(c.field.metadata().clone())
            })
            .collect();
        Self {
            signature: Signature::any(1, Volatility::Immutable),
            calls: calls.to_vec(),
            wanted: root.count(),
            root,
            return_type: DataType::Struct(fields),
        }
    }

    /// The value ranges of every call in one text.
    fn find(&self, text: &str) -> Vec<Option<(usize, usize)>> {
        let mut found = Found {
            ranges: vec![None; self.calls.len()],
            missing: self.wanted,
        };
        let mut jiter = Jiter::new(text.as_bytes());
        // A malformed text keeps what was found before the fault.
        if let Ok(peek) = jiter.peek() {
            let _ = walk(&mut jiter, peek, &self.root, &mut found);
        }
        found.ranges
    }

    fn values<'a>(&self, texts: impl Iterator<Item = Option<&'a str>>, rows: usize) -> Vec<ArrayRef> {
        let mut builders: Vec<StringBuilder> = self
            .calls
            .iter()
            .map(|_| StringBuilder::with_capacity(rows, 0))
            .collect();
        for text in texts {
            match text {
                Some(text) => {
                    for (builder, range) in builders.iter_mut().zip(self.find(text)) {
                        builder.append_option(range.and_then(|(s, e)| text.get(s..e)));
                    }
                }
                None => builders.iter_mut().for_each(StringBuilder::append_null),
            }
        }
        builders
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect()
    }
}

impl ScalarUDFImpl for JsonPaths {
    fn name(&self) -> &str {
        "json_values"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.return_type.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let [text] = args.args.as_slice() else {
            return exec_err!("json_values takes one argument");
        };
        let text = text.to_array(rows)?;
        let values = match text.data_type() {
            DataType::Utf8 => self.values(text.as_string::<i32>().iter(), rows),
            DataType::LargeUtf8 => self.values(text.as_string::<i64>().iter(), rows),
            DataType::Utf8View => self.values(text.as_string_view().iter(), rows),
            other => return exec_err!("json_values reads text, not {other}"),
        };
        let value_field = Arc::new(Field::new("value", DataType::Utf8, true));
        let mut columns = Vec::with_capacity(values.len());
        for (call, value) in self.calls.iter().zip(values) {
            let answer = call.function.invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(value)],
                arg_fields: vec![value_field.clone()],
                number_rows: rows,
                return_field: call.field.clone(),
                config_options: args.config_options.clone(),
            })?;
            columns.push(answer.to_array(rows)?);
        }
        let DataType::Struct(fields) = &self.return_type else {
            unreachable!("the return type is a struct");
        };
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            fields.clone(),
            columns,
            None,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn context(shared: bool) -> SessionContext {
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(1))
            .with_default_features();
        if shared {
            state = state.with_physical_optimizer_rule(Arc::new(ShareJsonPaths));
        }
        let mut ctx = SessionContext::new_with_state(state.build());
        datafusion_functions_json::register_all(&mut ctx).expect("json functions");
        ctx
    }

    /// Texts that exercise every branch of the walk: nesting, arrays,
    /// repeated keys, escapes, wrong types, malformed and cut-off texts.
    const TEXTS: &[Option<&str>] = &[
        Some(
            r#"{"id":"a1","customer":{"email":"x@y.z","address":{"city":"Oslo"}},"lines":[{"qty":2},{"qty":3}],"total":12.5,"paid":true}"#,
        ),
        Some(r#"{"id":7,"customer":{"email":null},"lines":[],"total":"12","paid":"yes"}"#),
        Some(r#"{"id":"dup","id":"second","customer":{"address":{"city":"K\u00f8ge"}},"lines":{"0":{"qty":9}}}"#),
        Some(
            r#"{"id":"esc\"aped\n","c\u0075stomer":{"email":"u@v.w"},"lines":[{"qty":1.5}],"total":1e3,"paid":false}"#,
        ),
        Some(r#"{"id":"cut","customer":{"email":"p@q.r","address":{"ci"#),
        Some(r#"{"lines":[{"qty":4} "total":3}"#),
        Some(r#"{"id":"before","customer":tru,"total":5}"#),
        Some(r#"["not", "an", "object"]"#),
        Some(r#""just text""#),
        Some("not json at all"),
        Some(""),
        Some(r#"  {"total" : 2 , "paid" : true }  trailing"#),
        Some(r#"{"customer":{"address":{"city":["a","b"]},"email":{"nested":1}},"lines":[[1,2],{"qty":null}]}"#),
        None,
    ];

    const SELECT: &str = "SELECT
        json_get_str(body, 'id') AS id,
        json_get_str(body, 'customer', 'email') AS email,
        json_get_str(body, 'customer', 'address', 'city') AS city,
        json_get_json(body, 'customer', 'address') AS address,
        json_get_int(body, 'lines', 0, 'qty') AS qty,
        json_get_float(body, 'lines', 0, 'qty') AS qty_float,
        json_get_float(body, 'total') AS total,
        json_get_int(body, 'total') AS total_int,
        json_length(body, 'lines') AS line_count,
        json_length(body, 'customer') AS customer_keys,
        json_get_bool(body, 'paid') AS paid,
        json_as_text(body, 'customer', 'email') AS email_text,
        json_as_text(body, 'lines', 1) AS second_line,
        body->'customer'->>'email' AS arrow_email,
        json_get(body, 'total') AS total_union,
        json_get_str(body, 'lines', '0', 'qty') AS keyed_index,
        json_get_str(body, 'lines', -1, 'qty') AS from_end,
        upper(json_get_str(body, 'id')) || '!' AS shouted
        FROM t";

    async fn answer(shared: bool) -> (Vec<RecordBatch>, String) {
        let ctx = context(shared);
        let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, true)]));
        let texts = StringArray::from(TEXTS.to_vec());
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(texts)]).expect("batch");
        let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
        ctx.register_table("t", Arc::new(table)).expect("register");
        let plan = ctx
            .sql(SELECT)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical");
        let shown = displayable(plan.as_ref()).indent(false).to_string();
        (collect(plan, ctx.task_ctx()).await.expect("run"), shown)
    }

    #[tokio::test]
    async fn one_walk_answers_what_each_function_answers_on_good_and_malformed_json() {
        let (plain, plain_plan) = answer(false).await;
        let (shared, shared_plan) = answer(true).await;
        assert!(!plain_plan.contains("json_values"), "{plain_plan}");
        assert!(
            shared_plan.contains("json_values"),
            "the rule did not apply:\n{shared_plan}"
        );
        assert_eq!(plain[0].schema(), shared[0].schema());
        let show = |batches: &[RecordBatch]| {
            datafusion::arrow::util::pretty::pretty_format_batches(batches)
                .unwrap()
                .to_string()
        };
        assert_eq!(show(&plain), show(&shared));
        // The corpus is not trivially null: the walk found real values.
        let shown = show(&shared);
        for expected in ["x@y.z", "Køge", r#"{"qty":3}"#, "p@q.r", "before"] {
            assert!(shown.contains(expected), "{expected} missing from\n{shown}");
        }
    }

    #[test]
    fn the_walk_finds_each_value_once_and_stops_at_a_fault() {
        let calls: Vec<Call> = [vec![Step::Key("a".into())], vec![Step::Key("b".into()), Step::Index(1)]]
            .into_iter()
            .map(|path| Call {
                column: 0,
                function: (*datafusion_functions_json::udfs::json_get_json_udf()).clone(),
                path,
                field: Arc::new(Field::new("v", DataType::Utf8, true)),
            })
            .collect();
        let paths = JsonPaths::new(&calls);
        let text = r#"{"a": {"x": 1} , "b": [true, [2, 3]], "a": 0}"#;
        let ranges = paths.find(text);
        let slice = |r: Option<(usize, usize)>| r.map(|(s, e)| &text[s..e]);
        assert_eq!(slice(ranges[0]), Some(r#"{"x": 1}"#));
        assert_eq!(slice(ranges[1]), Some("[2, 3]"));
        // A fault after the first value keeps it and loses the second.
        let text = r#"{"a": 1, "b": [tru, 2]}"#;
        let ranges = paths.find(text);
        assert_eq!(ranges[0].map(|(s, e)| &text[s..e]), Some("1"));
        assert_eq!(ranges[1], None);
    }
}
