//! Narrowing nested columns to the fields a query uses.
//!
//! FHIR columns are deep: `code` holds codings, each with system, version, display and
//! extensions. A query that only reads `code.coding[1].code` should decode that one leaf, not
//! the whole CodeableConcept, and should not carry the rest through joins and projections.
//! DataFusion hands a table provider top-level columns only, so this optimizer rule looks at
//! the whole plan, collects the dotted paths through which each column is used (struct field
//! access and list indexing), and replaces lake table scans with providers narrowed to those
//! paths ([`LowercaseTable::with_nested_paths`]); the plan above is then re-typed.
//!
//! Usage is collected by column name across the whole plan, whatever the table or alias: a
//! name used whole anywhere (selected, compared, grouped, unnested, output, de-duplicated) is
//! read whole everywhere, so the rule can only ever read more than needed, never less.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DFResult, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::lowercase::LowercaseTable;
use fhirlake_lake::provider::FieldUse;

/// How a column name is used in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Use {
    Whole,
    /// Only through these dotted paths, each starting with the column name.
    Paths(BTreeSet<FieldUse>),
}

/// What a use needs of the value it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The value itself.
    Data,
    /// Only whether it is null (one leaf tells).
    Presence,
}

/// Where an alias made by a projection points: a column and the fields walked into it.
type Origin = (String, Vec<String>);

/// Column uses by (lower-case) name.
#[derive(Debug, Default)]
struct Usage {
    columns: HashMap<String, Use>,
    /// Names projections gave to access chains (DataFusion itself extracts chains into
    /// `__datafusion_extracted_N` columns), by alias.
    aliases: HashMap<String, Vec<Origin>>,
    /// Something in the plan may use columns in ways this rule does not see.
    opaque: bool,
}

/// How deep alias chains are followed (an alias of an alias of ...).
const MAX_ALIAS_DEPTH: usize = 8;

impl Usage {
    /// Records that `name` is used through `segments` (none: whole), for its data or only
    /// for whether it is null; a use of an alias is also a use of what it points to. Raw
    /// names are recorded too, so a name that is both an alias and a column is read at least
    /// as much as either needs.
    fn record(&mut self, name: &str, segments: &[String], need: Need, depth: usize) {
        if segments.is_empty() && need == Need::Data {
            self.columns.insert(name.to_string(), Use::Whole);
        } else {
            let mut path = name.to_string();
            for segment in segments {
                path.push('.');
                path.push_str(segment);
            }
            let path = match need {
                Need::Data => FieldUse::Value(path),
                Need::Presence => FieldUse::Presence(path),
            };
            match self
                .columns
                .entry(name.to_string())
                .or_insert_with(|| Use::Paths(BTreeSet::new()))
            {
                Use::Whole => {}
                Use::Paths(paths) => {
                    paths.insert(path);
                }
            }
        }
        if depth >= MAX_ALIAS_DEPTH {
            return;
        }
        for (column, prefix) in self.aliases.get(name).cloned().unwrap_or_default() {
            let mut full = prefix;
            full.extend_from_slice(segments);
            self.record(&column, &full, need, depth + 1);
        }
    }

    fn whole(&mut self, name: &str) {
        self.record(name, &[], Need::Data, 0);
    }

    /// Records every column use in `expr`.
    fn expr(&mut self, expr: &Expr) -> DFResult<()> {
        expr.apply(|e| {
            // `x IS [NOT] NULL` needs x's presence, which any one of its leaves carries.
            if let Expr::IsNull(inner) | Expr::IsNotNull(inner) = e
                && let Some((column, segments, side)) = chain(inner)
            {
                self.record(&column, &segments, Need::Presence, 0);
                for s in side {
                    self.expr(s)?;
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            if let Some((column, segments, side)) = chain(e) {
                self.record(&column, &segments, Need::Data, 0);
                for s in side {
                    self.expr(s)?;
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            match e {
                Expr::OuterReferenceColumn(_, c) => self.whole(&c.name),
                Expr::ScalarSubquery(s) => self.output(&s.subquery),
                Expr::Exists(e) => self.output(&e.subquery.subquery),
                Expr::InSubquery(s) => self.output(&s.subquery.subquery),
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map(|_| ())
    }

    /// Records that everything `plan` outputs is used whole: columns passed through from
    /// below, and the access chains its projections output under an alias.
    fn output(&mut self, plan: &LogicalPlan) {
        match plan {
            LogicalPlan::Projection(p) => {
                for e in &p.expr {
                    let value = match e {
                        Expr::Alias(a) => a.expr.as_ref(),
                        other => other,
                    };
                    if let Some((column, segments, _)) = chain(value) {
                        self.record(&column, &segments, Need::Data, 0);
                    }
                }
            }
            LogicalPlan::Aggregate(_) => {}
            LogicalPlan::TableScan(scan) => {
                for field in scan.projected_schema.fields() {
                    self.whole(field.name());
                }
            }
            other => {
                for input in other.inputs() {
                    self.output(input);
                }
            }
        }
    }

    /// The aliases of access chains made by the projections of `plan`.
    fn collect_aliases(&mut self, plan: &LogicalPlan) -> DFResult<()> {
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::Projection(p) = node {
                for e in &p.expr {
                    if let Expr::Alias(a) = e
                        && let Some((column, segments, _)) = chain(&a.expr)
                    {
                        self.aliases
                            .entry(a.name.clone())
                            .or_default()
                            .push((column, segments));
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map(|_| ())
    }

    /// The uses in every node and expression of `plan`, its subqueries included.
    fn of(plan: &LogicalPlan) -> DFResult<Self> {
        let mut usage = Usage::default();
        usage.collect_aliases(plan)?;
        let root = match plan {
            LogicalPlan::Explain(e) => e.plan.as_ref(),
            LogicalPlan::Analyze(a) => a.input.as_ref(),
            other => other,
        };
        usage.output(root);
        plan.apply_with_subqueries(|node| {
            match node {
                LogicalPlan::Extension(_) | LogicalPlan::RecursiveQuery(_) => {
                    usage.opaque = true;
                }
                // Rows compared whole, or columns taken apart by position.
                LogicalPlan::Distinct(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::Unnest(_)
                | LogicalPlan::Subquery(_) => {
                    for input in node.inputs() {
                        usage.output(input);
                    }
                }
                _ => {}
            }
            match node {
                // A column passed through, or an aliased chain, is used as far as the nodes
                // above use its name (recorded through the alias), or whole when it is output.
                LogicalPlan::Projection(p) => {
                    for e in &p.expr {
                        match e {
                            Expr::Column(_) => {}
                            Expr::Alias(a) if chain(&a.expr).is_some() => {
                                let (_, _, side) = chain(&a.expr).expect("checked");
                                for s in side {
                                    usage.expr(s)?;
                                }
                            }
                            other => usage.expr(other)?,
                        }
                    }
                }
                _ => {
                    for e in node.expressions() {
                        usage.expr(&e)?;
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(usage)
    }

    /// The narrowed paths of each column used only through paths.
    fn paths(&self) -> HashMap<String, Vec<FieldUse>> {
        self.columns
            .iter()
            .filter_map(|(name, u)| match u {
                Use::Whole => None,
                Use::Paths(p) => Some((name.clone(), p.iter().cloned().collect())),
            })
            .collect()
    }
}

/// `expr` as an access chain on a column: the column's name, the struct fields it walks
/// (list indexing keeps the path), and the other expressions it evaluates (indexes).
fn chain(expr: &Expr) -> Option<(String, Vec<String>, Vec<&Expr>)> {
    match expr {
        Expr::Column(c) => Some((c.name.clone(), Vec::new(), Vec::new())),
        Expr::ScalarFunction(f) if f.func.name() == "get_field" && f.args.len() >= 2 => {
            let (column, mut segments, side) = chain(&f.args[0])?;
            for arg in &f.args[1..] {
                match arg {
                    Expr::Literal(ScalarValue::Utf8(Some(s)), _) => segments.push(s.clone()),
                    _ => return None,
                }
            }
            Some((column, segments, side))
        }
        Expr::ScalarFunction(f) if f.func.name() == "array_element" && f.args.len() == 2 => {
            let (column, segments, mut side) = chain(&f.args[0])?;
            side.push(&f.args[1]);
            Some((column, segments, side))
        }
        _ => None,
    }
}

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct NestedProjection;

impl OptimizerRule for NestedProjection {
    fn name(&self) -> &str {
        "fhirlake_nested_projection"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DFResult<Transformed<LogicalPlan>> {
        let usage = Usage::of(&plan)?;
        let paths = usage.paths();
        if usage.opaque || paths.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let mut narrowed = false;
        let plan = plan
            .transform_up_with_subqueries(|node| match node {
                LogicalPlan::TableScan(scan) => match narrow(&scan, &paths)? {
                    Some(scan) => {
                        narrowed = true;
                        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                    }
                    None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
                },
                other if narrowed => other.recompute_schema().map(Transformed::yes),
                other => Ok(Transformed::no(other)),
            })?
            .data;
        Ok(if narrowed {
            Transformed::yes(plan)
        } else {
            Transformed::no(plan)
        })
    }
}

/// `scan` over a narrowed provider, if its table is a lake table with something to narrow.
fn narrow(scan: &TableScan, paths: &HashMap<String, Vec<FieldUse>>) -> DFResult<Option<TableScan>> {
    let Ok(provider) = source_as_provider(&scan.source) else {
        return Ok(None);
    };
    let Some(table) = provider.as_any().downcast_ref::<LowercaseTable>() else {
        return Ok(None);
    };
    let Some(narrowed) = table.with_nested_paths(paths) else {
        return Ok(None);
    };
    let source = provider_as_source(Arc::new(narrowed));
    TableScan::try_new(
        scan.table_name.clone(),
        source,
        scan.projection.clone(),
        scan.filters.clone(),
        scan.fetch,
    )
    .map(Some)
}
