//! From `CREATE MATERIALIZED VIEW ... AS SELECT ...` to what the view's task evaluates.
//!
//! DataFusion plans the SELECT (with `tumble`, `hop` and `session` registered as planning-only
//! functions); this module takes the plan apart: the source topic, the WHERE predicate, the
//! window and its event-time expression, the group keys, the aggregates and the final
//! projection. Every expression is compiled to a DataFusion `PhysicalExpr` and evaluated on
//! Arrow batches; grouping, windows, watermarks and state are ours (`state`), because
//! DataFusion's aggregation is not incremental.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};

use datafusion::common::TableReference;
use datafusion::datasource::empty::EmptyTable;

use super::super::catalog::{timestamp_type, TableLayout};
use super::super::query::parse_one;
use super::super::SqlError;
use super::window::WindowSpec;

/// An aggregate the view maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum AggregateKind {
    Count,
    CountDistinct,
    Sum,
    Min,
    Max,
    Avg,
}

/// One aggregate: its kind, its argument (none for `COUNT(*)`) and its output type.
pub(crate) struct AggregateSpec {
    pub(crate) kind: AggregateKind,
    pub(crate) argument: Option<Arc<dyn PhysicalExpr>>,
    pub(crate) output_type: DataType,
}

/// A compiled view: everything the task evaluates per batch.
pub(crate) struct CompiledView {
    pub(crate) source: String,
    /// The source's layout, as decoded for the view (every column nullable).
    pub(crate) layout: TableLayout,
    /// Source columns the expressions read (others are decoded as nulls, cheaply).
    pub(crate) columns_used: Vec<usize>,
    pub(crate) predicate: Option<Arc<dyn PhysicalExpr>>,
    pub(crate) shape: Shape,
}

/// What the view computes.
pub(crate) enum Shape {
    /// No GROUP BY: each input row becomes one output row (a projection and filter).
    Stream { projection: Vec<Arc<dyn PhysicalExpr>>, output_schema: SchemaRef },
    /// GROUP BY, windowed or not.
    Aggregate(AggregatePlan),
}

pub(crate) struct AggregatePlan {
    pub(crate) window: Option<WindowPlan>,
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Types of the keys (in group order, window excluded).
    pub(crate) key_fields: Vec<Field>,
    pub(crate) aggregates: Vec<AggregateSpec>,
    /// The aggregate node's output: group columns (the window's as its start) then aggregates.
    pub(crate) aggregate_schema: SchemaRef,
    /// Position of the window column among the group columns.
    pub(crate) window_position: Option<usize>,
    /// The SELECT list, evaluated over the aggregate output.
    pub(crate) projection: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) output_schema: SchemaRef,
}

pub(crate) struct WindowPlan {
    pub(crate) spec: WindowSpec,
    pub(crate) event_time: Arc<dyn PhysicalExpr>,
}

/// Compiles the SELECT of a view over `layout` (the source topic's table).
pub(crate) async fn compile(select_sql: &str, source: &str, layout: TableLayout) -> Result<CompiledView, SqlError> {
    let layout = relaxed_layout(&layout);
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    for name in ["tumble", "hop", "session"] {
        ctx.register_udf(ScalarUDF::new_from_impl(WindowFunction::new(name)));
    }
    let table = Arc::new(EmptyTable::new(Arc::clone(&layout.schema)));
    ctx.register_table(TableReference::bare(source), table).map_err(SqlError::from_datafusion)?;
    let statement = parse_one(select_sql)?;
    let plan = ctx.state().statement_to_plan(statement).await.map_err(SqlError::from_datafusion)?;
    let LogicalPlan::Projection(projection) = plan else {
        return Err(SqlError::Plan(
            "a materialized view is SELECT ... FROM <topic> [WHERE ...] [GROUP BY ...] (no ORDER BY, LIMIT, HAVING or DISTINCT)".into(),
        ));
    };
    let state = ctx.state();
    let physical = |expr: &Expr, schema: &DFSchema| {
        state.create_physical_expr(expr.clone(), schema).map_err(SqlError::from_datafusion)
    };
    let mut used = vec![0, 1]; // partition and offset: where a late record came from
    let (shape, predicate) = match projection.input.as_ref() {
        LogicalPlan::Aggregate(aggregate) => {
            let (predicate, scan_schema) = source_input(&aggregate.input)?;
            let mut exprs: Vec<&Expr> = aggregate.group_expr.iter().chain(aggregate.aggr_expr.iter()).collect();
            exprs.extend(predicate.iter());
            note_columns(&exprs, &scan_schema, &mut used);
            let plan = compile_aggregate(aggregate, &projection.expr, &physical)?;
            let predicate = predicate.map(|p| physical(&p, &scan_schema)).transpose()?;
            (Shape::Aggregate(plan), predicate)
        }
        input => {
            // A stream view's rows keep their input record's timestamp and key.
            used.extend([2, 3]);
            let (predicate, scan_schema) = source_input(input)?;
            let mut exprs: Vec<&Expr> = projection.expr.iter().collect();
            exprs.extend(predicate.iter());
            note_columns(&exprs, &scan_schema, &mut used);
            let compiled =
                projection.expr.iter().map(|e| physical(e, input.schema().as_ref())).collect::<Result<Vec<_>, _>>()?;
            let output_schema = Arc::new(projection.schema.as_arrow().clone());
            let predicate = predicate.map(|p| physical(&p, &scan_schema)).transpose()?;
            (Shape::Stream { projection: compiled, output_schema }, predicate)
        }
    };
    used.sort_unstable();
    used.dedup();
    Ok(CompiledView { source: source.to_string(), layout, columns_used: used, predicate, shape })
}

/// The WHERE predicate under an aggregate or projection, and the schema of the topic's table.
fn source_input(plan: &LogicalPlan) -> Result<(Option<Expr>, DFSchema), SqlError> {
    match plan {
        LogicalPlan::Filter(filter) => {
            let (inner, schema) = source_input(&filter.input)?;
            if inner.is_some() {
                return Err(SqlError::Plan("one WHERE clause per view".into()));
            }
            Ok((Some(filter.predicate.clone()), schema))
        }
        LogicalPlan::SubqueryAlias(alias) => source_input(&alias.input),
        LogicalPlan::TableScan(scan) if scan.projection.is_none() => Ok((None, scan.projected_schema.as_ref().clone())),
        other => Err(SqlError::Plan(format!(
            "a materialized view reads one topic directly (no joins, subqueries or nested SELECTs); found {}",
            other.display()
        ))),
    }
}

fn note_columns(exprs: &[&Expr], schema: &DFSchema, used: &mut Vec<usize>) {
    for expr in exprs {
        for column in expr.column_refs() {
            if let Some(index) = schema.maybe_index_of_column(column) {
                used.push(index);
            }
        }
    }
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

type Physical<'a> = dyn Fn(&Expr, &DFSchema) -> Result<Arc<dyn PhysicalExpr>, SqlError> + 'a;

fn compile_aggregate(
    aggregate: &datafusion::logical_expr::Aggregate,
    select: &[Expr],
    physical: &Physical<'_>,
) -> Result<AggregatePlan, SqlError> {
    let input_schema = aggregate.input.schema().as_ref();
    let mut window = None;
    let mut window_position = None;
    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    for (position, group) in aggregate.group_expr.iter().enumerate() {
        match unalias(group) {
            Expr::ScalarFunction(call) if matches!(call.func.name(), "tumble" | "hop" | "session") => {
                if window.is_some() {
                    return Err(SqlError::Plan("one window (tumble, hop or session) per view".into()));
                }
                let (event_time, intervals) = call
                    .args
                    .split_first()
                    .ok_or_else(|| SqlError::Plan(format!("{}() needs an event time", call.func.name())))?;
                let spec = WindowSpec::from_call(call.func.name(), intervals)?;
                window = Some(WindowPlan { spec, event_time: physical(event_time, input_schema)? });
                window_position = Some(position);
            }
            Expr::GroupingSet(_) => {
                return Err(SqlError::Plan("GROUPING SETS, CUBE and ROLLUP are not supported in views".into()))
            }
            other => {
                keys.push(physical(other, input_schema)?);
                key_fields.push(aggregate.schema.field(position).as_ref().clone().with_nullable(true));
            }
        }
    }
    let groups = aggregate.group_expr.len();
    let mut aggregates = Vec::new();
    for (index, expr) in aggregate.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(call) = unalias(expr) else {
            return Err(SqlError::Plan(format!("not an aggregate: {expr}")));
        };
        let params = &call.params;
        if params.filter.is_some() || !params.order_by.is_empty() {
            return Err(SqlError::Plan("FILTER and ORDER BY inside aggregates are not supported in views".into()));
        }
        let name = call.func.name().to_ascii_lowercase();
        let kind = match (name.as_str(), params.distinct) {
            ("count", false) => AggregateKind::Count,
            ("count", true) => AggregateKind::CountDistinct,
            ("sum", false) => AggregateKind::Sum,
            ("min", _) => AggregateKind::Min,
            ("max", _) => AggregateKind::Max,
            ("avg" | "mean", false) => AggregateKind::Avg,
            _ => {
                return Err(SqlError::Plan(format!(
                    "aggregate {expr} is not supported in views (COUNT, COUNT(DISTINCT), SUM, MIN, MAX, AVG are)"
                )))
            }
        };
        let argument = match params.args.as_slice() {
            [] => None,
            [Expr::Literal(..)] if kind == AggregateKind::Count => None,
            [argument] => Some(physical(argument, input_schema)?),
            _ => return Err(SqlError::Plan(format!("{expr}: one argument expected"))),
        };
        let output_type = aggregate.schema.field(groups + index).data_type().clone();
        aggregates.push(AggregateSpec { kind, argument, output_type });
    }
    let projection = select.iter().map(|e| physical(e, aggregate.schema.as_ref())).collect::<Result<Vec<_>, _>>()?;
    let output_fields: Vec<Field> = select
        .iter()
        .map(|e| {
            let (_, field) = e.to_field(aggregate.schema.as_ref()).map_err(SqlError::from_datafusion)?;
            Ok(field.as_ref().clone().with_nullable(true))
        })
        .collect::<Result<_, SqlError>>()?;
    Ok(AggregatePlan {
        window,
        keys,
        key_fields,
        aggregates,
        aggregate_schema: Arc::new(aggregate.schema.as_arrow().clone()),
        window_position,
        projection,
        output_schema: Arc::new(Schema::new(output_fields)),
    })
}

/// The layout with every column nullable: view batches carry nulls for unused columns.
pub(crate) fn relaxed_layout(layout: &TableLayout) -> TableLayout {
    let fields: Vec<Field> = layout.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    TableLayout { schema: Arc::new(Schema::new(fields)), ..layout.clone() }
}

/// `tumble`, `hop`, `session`: known to the planner, never evaluated (the view's window
/// operator interprets them).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    signature: Signature,
}

impl WindowFunction {
    fn new(name: &'static str) -> WindowFunction {
        let arguments = if name == "hop" { 3 } else { 2 };
        WindowFunction { name, signature: Signature::any(arguments, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(timestamp_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        datafusion::common::plan_err!(
            "{}() defines the window of a materialized view's GROUP BY; it has no value elsewhere",
            self.name
        )
    }
}

/// Milliseconds of an interval literal (months are refused: they have no fixed length).
pub(crate) fn interval_ms(expr: &Expr) -> Result<i64, SqlError> {
    let bad = || SqlError::Plan(format!("expected an interval such as INTERVAL '1' MINUTE, got {expr}"));
    let value = match expr {
        Expr::Literal(value, _) => value,
        Expr::Cast(cast) => return interval_ms(&cast.expr),
        _ => return Err(bad()),
    };
    let ms = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds),
        ScalarValue::DurationMillisecond(Some(v)) => *v,
        ScalarValue::DurationSecond(Some(v)) => v * 1000,
        _ => return Err(bad()),
    };
    if ms <= 0 {
        return Err(SqlError::Plan(format!("a window interval must be positive, got {expr}")));
    }
    Ok(ms)
}
