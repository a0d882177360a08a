//! Running a parsed search against one Iceberg snapshot of the lake.
//!
//! The lake answers *which* resources match (and in which order): the filters run as
//! DataFusion scalar functions over only the columns they read, plus `id` and
//! `_version_id`. The resources themselves come from the store by `(id, version)`, so a page
//! shows exactly the versions that matched in that snapshot. The paging cursor names the
//! snapshot, so later pages do not shift under concurrent writes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Expr, ScalarUDF, SortExpr, lit};
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergStaticTableProvider;
use serde_json::Value;

use super::catalog::{ParamType, Path, SearchParam, Step};
use super::eval::{Criterion, CriterionUdf, SortKeyUdf, SortKind, Test};
use super::query::{
    Filter, Include, MAX_CHAIN_MATCHES, SearchError, SearchRequest, Summary, Total,
};
use super::value;
use crate::lake::Lake;
use crate::schema::{ID_COLUMN, VERSION_COLUMN};
use crate::store::reads::StoredVersion;
use crate::store::{Store, StoreError};

/// Failures while running a search.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("lake: {0}")]
    Lake(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<datafusion::error::DataFusionError> for ExecError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        ExecError::Lake(e.to_string())
    }
}

impl From<crate::lake::LakeError> for ExecError {
    fn from(e: crate::lake::LakeError) -> Self {
        ExecError::Lake(e.to_string())
    }
}

/// How included resources are limited per page.
pub const MAX_INCLUDES: usize = 1000;

/// A searchset page.
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub matches: Vec<StoredVersion>,
    pub included: Vec<StoredVersion>,
    pub total: Option<usize>,
    /// Cursor of this page, the next one and the previous one.
    pub this_cursor: String,
    pub next_cursor: Option<String>,
    pub previous_cursor: Option<String>,
}

/// Searches one data store.
#[derive(Clone)]
pub struct Searcher {
    store: Store,
    lake: Lake,
    datastore_id: String,
    datastore_name: String,
    ctx: SessionContext,
}

impl Searcher {
    pub fn new(store: Store, lake: Lake, datastore_id: &str, datastore_name: &str) -> Self {
        let config = SessionConfig::new().with_target_partitions(2);
        Self {
            store,
            lake,
            datastore_id: datastore_id.to_string(),
            datastore_name: datastore_name.to_string(),
            ctx: SessionContext::new_with_config(config),
        }
    }

    /// Runs `req` and returns one page.
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchPage, ExecError> {
        let (snapshot, offset) = match &req.cursor {
            Some(c) => parse_cursor(c)?,
            None => (None, 0),
        };
        let Some((df, snapshot)) = self.frame(req.resource_type, snapshot).await? else {
            return Ok(SearchPage {
                matches: Vec::new(),
                included: Vec::new(),
                total: (req.total == Total::Accurate || req.summary == Summary::Count).then_some(0),
                this_cursor: cursor(0, 0),
                next_cursor: None,
                previous_cursor: None,
            });
        };
        let df = self
            .apply_filters(df, req.resource_type, &req.filters)
            .await?;
        let total = if req.total == Total::Accurate || req.summary == Summary::Count {
            Some(df.clone().count().await?)
        } else {
            None
        };
        if req.summary == Summary::Count {
            return Ok(SearchPage {
                matches: Vec::new(),
                included: Vec::new(),
                total,
                this_cursor: cursor(snapshot, 0),
                next_cursor: None,
                previous_cursor: None,
            });
        }
        let keys = self
            .ordered_keys(df, req, offset, Some(req.count + 1))
            .await?;
        let more = keys.len() > req.count;
        let keys = &keys[..keys.len().min(req.count)];
        let matches = self.load(req.resource_type, keys).await?;
        let included = self.includes(req, &matches).await?;
        Ok(SearchPage {
            matches,
            included,
            total,
            this_cursor: cursor(snapshot, offset),
            next_cursor: more.then(|| cursor(snapshot, offset + req.count)),
            previous_cursor: (offset > 0)
                .then(|| cursor(snapshot, offset.saturating_sub(req.count))),
        })
    }

    /// The ids and versions matching `filters` (unordered), at most `limit`.
    pub async fn matching_ids(
        &self,
        resource_type: &str,
        filters: &[Filter],
        limit: usize,
    ) -> Result<Vec<(String, i64)>, ExecError> {
        let Some((df, _)) = self.frame(resource_type, None).await? else {
            return Ok(Vec::new());
        };
        let df = self.apply_filters(df, resource_type, filters).await?;
        let df = df
            .select(vec![column(ID_COLUMN), column(VERSION_COLUMN)])?
            .limit(0, Some(limit))?;
        collect_keys(df).await
    }

    /// The table at `snapshot` (default: current) as a DataFrame; `None` before any data.
    async fn frame(
        &self,
        resource_type: &str,
        snapshot: Option<i64>,
    ) -> Result<Option<(DataFrame, i64)>, ExecError> {
        let Some(table) = self.lake.table(&self.datastore_name, resource_type).await? else {
            return Ok(None);
        };
        let snapshot = match snapshot {
            Some(s) => {
                if table.metadata().snapshot_by_id(s).is_none() {
                    return Err(SearchError::invalid(
                        "the paging cursor refers to a lake snapshot that no longer exists; \
                         run the search again",
                    )
                    .into());
                }
                s
            }
            None => match table.metadata().current_snapshot() {
                Some(s) => s.snapshot_id(),
                None => return Ok(None),
            },
        };
        let provider = IcebergStaticTableProvider::try_new_from_table_snapshot(table, snapshot)
            .await
            .map_err(|e| ExecError::Lake(e.to_string()))?;
        let df = self.ctx.read_table(Arc::new(provider))?;
        Ok(Some((df, snapshot)))
    }

    async fn apply_filters(
        &self,
        mut df: DataFrame,
        resource_type: &str,
        filters: &[Filter],
    ) -> Result<DataFrame, ExecError> {
        for filter in filters {
            let expr = Box::pin(self.filter_expr(resource_type, filter)).await?;
            df = df.filter(expr)?;
        }
        Ok(df)
    }

    async fn filter_expr(&self, resource_type: &str, filter: &Filter) -> Result<Expr, ExecError> {
        Ok(match filter {
            Filter::Criterion(c) => criterion_expr(c.clone()),
            Filter::Ids(ids) => {
                column(ID_COLUMN).in_list(ids.iter().map(|i| lit(i.clone())).collect(), false)
            }
            Filter::Chain {
                param,
                target,
                inner,
            } => {
                let found = self
                    .matching_ids(target, inner, MAX_CHAIN_MATCHES + 1)
                    .await?;
                guard_chain(found.len(), &format!("{}:{target}", param.code))?;
                if found.is_empty() {
                    return Ok(lit(false));
                }
                criterion_expr(Criterion::Paths {
                    paths: param.paths.clone(),
                    test: Test::Reference(
                        found
                            .into_iter()
                            .map(|(id, _)| (Some(target.to_string()), id))
                            .collect(),
                    ),
                    negate: false,
                })
            }
            Filter::Has {
                source,
                param,
                inner,
            } => {
                let found = self
                    .matching_ids(source, inner, MAX_CHAIN_MATCHES + 1)
                    .await?;
                guard_chain(found.len(), &format!("_has:{source}:{}", param.code))?;
                let versions = self.load(source, &found).await?;
                let mut ids: Vec<String> = Vec::new();
                for v in &versions {
                    for (ty, id) in references_of(v, &param.paths) {
                        if ty == resource_type && !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                if ids.is_empty() {
                    return Ok(lit(false));
                }
                column(ID_COLUMN).in_list(ids.into_iter().map(lit).collect(), false)
            }
        })
    }

    /// `(id, version)` of the matches in sort order, from `offset`.
    async fn ordered_keys(
        &self,
        df: DataFrame,
        req: &SearchRequest,
        offset: usize,
        limit: Option<usize>,
    ) -> Result<Vec<(String, i64)>, ExecError> {
        let mut select = vec![column(ID_COLUMN), column(VERSION_COLUMN)];
        let mut order = Vec::new();
        for (i, key) in req.sort.iter().enumerate() {
            let name = format!("__sort{i}");
            select.push(sort_expr(&key.param, key.descending).alias(&name));
            order.push(SortExpr::new(
                Expr::Column(Column::new_unqualified(name)),
                !key.descending,
                false,
            ));
        }
        order.push(SortExpr::new(column(ID_COLUMN), true, false));
        let df = df.select(select)?.sort(order)?.limit(offset, limit)?;
        collect_keys(df).await
    }

    /// The stored versions of `keys`, in order.
    pub async fn load(
        &self,
        resource_type: &str,
        keys: &[(String, i64)],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        let mut out = Vec::with_capacity(keys.len());
        for (id, version) in keys {
            if let Some(v) = self
                .store
                .read_version(&self.datastore_id, resource_type, id, *version)
                .await?
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// `_include` and `_revinclude` of a page (with `:iterate` over what they add).
    async fn includes(
        &self,
        req: &SearchRequest,
        matches: &[StoredVersion],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        if req.includes.is_empty() && req.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<(String, String)> = matches
            .iter()
            .map(|m| (m.resource_type.clone(), m.id.clone()))
            .collect();
        let mut out: Vec<StoredVersion> = Vec::new();
        let mut frontier: Vec<StoredVersion> = matches.to_vec();
        let mut first = true;
        while !frontier.is_empty() && out.len() < MAX_INCLUDES {
            let mut added = Vec::new();
            for inc in req.includes.iter().filter(|i| first || i.iterate) {
                for v in self.forward(inc, &frontier).await? {
                    if seen.insert((v.resource_type.clone(), v.id.clone())) {
                        added.push(v);
                    }
                }
            }
            for inc in req.revincludes.iter().filter(|i| first || i.iterate) {
                for v in self.reverse(inc, &frontier).await? {
                    if seen.insert((v.resource_type.clone(), v.id.clone())) {
                        added.push(v);
                    }
                }
            }
            first = false;
            out.extend(added.iter().cloned());
            frontier = added;
        }
        out.truncate(MAX_INCLUDES);
        Ok(out)
    }

    async fn forward(
        &self,
        inc: &Include,
        from: &[StoredVersion],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in from.iter().filter(|v| v.resource_type == inc.source) {
            for (ty, id) in references_of(v, &inc.param.paths) {
                if inc.target.is_none_or(|t| t == ty) {
                    let ids = targets.entry(ty).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (ty, ids) in targets {
            if crate::schema::Registry::global()
                .canonical_name(&ty)
                .is_none()
            {
                continue;
            }
            for id in ids {
                if let Some(v) = self
                    .store
                    .read_current(&self.datastore_id, &ty, &id)
                    .await?
                    && !v.deleted
                {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    async fn reverse(
        &self,
        inc: &Include,
        from: &[StoredVersion],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        let keys: Vec<(Option<String>, String)> = from
            .iter()
            .filter(|v| inc.target.is_none_or(|t| t == v.resource_type))
            .map(|v| (Some(v.resource_type.clone()), v.id.clone()))
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::Criterion(Criterion::Paths {
            paths: inc.param.paths.clone(),
            test: Test::Reference(keys),
            negate: false,
        });
        let found = self
            .matching_ids(inc.source, &[filter], MAX_INCLUDES)
            .await?;
        self.load(inc.source, &found).await
    }
}

fn guard_chain(found: usize, what: &str) -> Result<(), SearchError> {
    if found > MAX_CHAIN_MATCHES {
        return Err(SearchError::too_costly(format!(
            "the chained search {what} matches more than {MAX_CHAIN_MATCHES} resources; narrow it down"
        )));
    }
    Ok(())
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

fn criterion_expr(c: Criterion) -> Expr {
    let udf = CriterionUdf::new(c);
    let args = udf.columns().iter().map(|c| column(c)).collect();
    ScalarUDF::new_from_impl(udf).call(args)
}

fn sort_expr(param: &SearchParam, descending: bool) -> Expr {
    let kind = match param.param_type {
        ParamType::Date => SortKind::Date,
        ParamType::Number | ParamType::Quantity => SortKind::Number,
        _ => SortKind::Text,
    };
    if param.code == "_id" {
        return column(ID_COLUMN);
    }
    let udf = SortKeyUdf::new(param.paths.clone(), kind, descending);
    let args = udf.columns().iter().map(|c| column(c)).collect();
    ScalarUDF::new_from_impl(udf).call(args)
}

async fn collect_keys(df: DataFrame) -> Result<Vec<(String, i64)>, ExecError> {
    let mut out = Vec::new();
    for batch in df.collect().await? {
        let ids = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| ExecError::Lake(e.to_string()))?;
        let ids = ids.as_string::<i32>();
        let versions = batch.column(1).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if ids.is_valid(i) {
                out.push((ids.value(i).to_string(), versions.value(i)));
            }
        }
    }
    Ok(out)
}

fn cursor(snapshot: i64, offset: usize) -> String {
    format!("{snapshot}_{offset}")
}

fn parse_cursor(c: &str) -> Result<(Option<i64>, usize), SearchError> {
    let bad = || SearchError::invalid(format!("invalid paging cursor '{c}'"));
    let (s, o) = c.split_once('_').ok_or_else(bad)?;
    let snapshot: i64 = s.parse().map_err(|_| bad())?;
    let offset: usize = o.parse().map_err(|_| bad())?;
    Ok(((snapshot != 0).then_some(snapshot), offset))
}

/// The `(type, id)` of every reference the parameter's paths reach in a stored resource.
pub fn references_of(v: &StoredVersion, paths: &[Path]) -> Vec<(String, String)> {
    let Some(json) = v.json.as_deref() else {
        return Vec::new();
    };
    let Ok(doc) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in paths {
        let Some(col) = &path.column else { continue };
        let mut values: Vec<&Value> = Vec::new();
        push_flat(&doc[col.as_str()], &mut values);
        for step in &path.steps {
            let mut next = Vec::new();
            for v in values {
                match step {
                    Step::Field(name) => push_flat(&v[name.as_str()], &mut next),
                    Step::Resolves(t) => {
                        let ty = v["type"].as_str().map(String::from).or_else(|| {
                            v["reference"]
                                .as_str()
                                .and_then(value::reference_key)
                                .map(|(t, _)| t.to_string())
                        });
                        if ty.as_deref() == Some(t.as_str()) {
                            next.push(v);
                        }
                    }
                    Step::Where { element, value } => {
                        if v[element.as_str()].as_str() == Some(value.as_str()) {
                            next.push(v);
                        }
                    }
                }
            }
            values = next;
        }
        for v in values {
            let text = if path.fhir == "Reference" {
                v["reference"].as_str()
            } else {
                v.as_str()
            };
            if let Some((ty, id)) = text.and_then(value::reference_key) {
                out.push((ty.to_string(), id.to_string()));
            }
        }
    }
    out
}

fn push_flat<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Null => {}
        Value::Array(items) => out.extend(items.iter().filter(|i| !i.is_null())),
        other => out.push(other),
    }
}
