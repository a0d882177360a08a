//! DataFusion access to a resource type's Iceberg table.
//!
//! The provider is registered once per session but resolves the table's current snapshot at
//! every scan, so a long-running REPL or server sees new commits without re-registering.
//! Before the type has data (no table yet, or no snapshot) it scans as empty with the full
//! schema, so every R4 type is queryable from the start.
//!
//! Scans are [`LakeScanExec`]s: the snapshot's file list and each file's footer come from a
//! cache shared by all types of a data store, and a provider narrowed with
//! [`LakeTable::with_nested_paths`] (the SQL engine does this for the paths a query touches)
//! decodes only those Parquet leaves.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::conjunction_opt;
use datafusion::physical_optimizer::pruning::PruningPredicate;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use super::Lake;
use super::exec::{LakeScanExec, covered, prune};
use super::scan::LeafScanner;
use fhirlake_schema::{Registry, SchemaError};

/// How a query uses a nested field, by its dotted path (starting with the column's name,
/// e.g. `code.coding.code`), for [`LakeTable::with_nested_paths`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldUse {
    /// The value at the path, with everything under it.
    Value(String),
    /// Only whether the value at the path is null (`x IS NULL`): any one leaf under it
    /// carries that, so one is read.
    Presence(String),
}

impl FieldUse {
    pub fn path(&self) -> &str {
        match self {
            Self::Value(p) | Self::Presence(p) => p,
        }
    }

    /// The same use of another path.
    pub fn with_path(&self, path: String) -> Self {
        match self {
            Self::Value(_) => Self::Value(path),
            Self::Presence(_) => Self::Presence(path),
        }
    }
}

/// The dotted path of the first leaf under `path` (of type `data_type`), lists transparent.
fn first_leaf(data_type: &DataType, path: &str) -> String {
    match data_type {
        DataType::Struct(fields) => match fields.first() {
            Some(f) => first_leaf(f.data_type(), &format!("{path}.{}", f.name())),
            None => path.to_string(),
        },
        DataType::List(element) | DataType::LargeList(element) => {
            first_leaf(element.data_type(), path)
        }
        _ => path.to_string(),
    }
}

/// The type at dotted `path` inside a column of type `data_type` (its first segment being
/// the column), lists transparent.
fn nested_type<'a>(data_type: &'a DataType, path: &str) -> Option<&'a DataType> {
    let mut current = data_type;
    for segment in path.split('.').skip(1) {
        while let DataType::List(e) | DataType::LargeList(e) = current {
            current = e.data_type();
        }
        let DataType::Struct(fields) = current else {
            return None;
        };
        current = fields.iter().find(|f| f.name() == segment)?.data_type();
    }
    Some(current)
}

/// The paths whose leaves `uses` read: each presence use replaced by a leaf under it (none
/// when another use already reads something under it, else its first leaf).
fn resolve_presence(data_type: &DataType, uses: &[FieldUse]) -> Vec<String> {
    let mut out: Vec<String> = uses
        .iter()
        .filter_map(|u| match u {
            FieldUse::Value(p) => Some(p.clone()),
            FieldUse::Presence(_) => None,
        })
        .collect();
    for u in uses {
        let FieldUse::Presence(path) = u else {
            continue;
        };
        let path = path.as_str();
        let path_prefix = [path.to_string()];
        if out
            .iter()
            .any(|d| covered(d, &path_prefix) || covered(path, std::slice::from_ref(d)))
        {
            continue;
        }
        if let Some(field_type) = nested_type(data_type, path) {
            out.push(first_leaf(field_type, path));
        }
    }
    out
}

/// A resource type's lake table as a DataFusion table.
#[derive(Clone)]
pub struct LakeTable {
    lake: Lake,
    datastore: String,
    resource_type: String,
    /// The table's columns, nested types narrowed to `prefixes`.
    schema: SchemaRef,
    /// Per column: the dotted FHIR paths whose leaves are read (the column itself when whole).
    prefixes: Arc<Vec<Vec<String>>>,
    /// Snapshot plans and footers, shared by the data store's tables; decoded data is not
    /// cached (SQL scans stream).
    scanner: LeafScanner,
}

impl std::fmt::Debug for LakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LakeTable({}.{})", self.datastore, self.resource_type)
    }
}

impl LakeTable {
    pub fn new(lake: Lake, datastore: &str, resource_type: &str) -> Result<Self, SchemaError> {
        Self::with_scanner(
            lake,
            datastore,
            resource_type,
            LeafScanner::with_cache_bytes(0),
        )
    }

    fn with_scanner(
        lake: Lake,
        datastore: &str,
        resource_type: &str,
        scanner: LeafScanner,
    ) -> Result<Self, SchemaError> {
        let schema = Arc::new(Registry::global().get(resource_type)?.arrow_schema());
        let prefixes = schema
            .fields()
            .iter()
            .map(|f| vec![f.name().clone()])
            .collect();
        Ok(Self {
            lake,
            datastore: datastore.to_string(),
            resource_type: resource_type.to_string(),
            schema,
            prefixes: Arc::new(prefixes),
            scanner,
        })
    }

    /// One provider per R4 type for `datastore`, in the shape `SqlEngine` registers.
    pub fn all_types(lake: &Lake, datastore: &str) -> Vec<(String, Arc<dyn TableProvider>)> {
        let scanner = LeafScanner::with_cache_bytes(0);
        Registry::global()
            .resource_types()
            .filter_map(|t| {
                LakeTable::with_scanner(lake.clone(), datastore, t, scanner.clone())
                    .ok()
                    .map(|p| (t.to_string(), Arc::new(p) as Arc<dyn TableProvider>))
            })
            .collect()
    }

    /// One provider factory per R4 type for `datastore`, for `SqlEngine::register_datastore_lazy`:
    /// building a table's schema costs, and a query touches few of the ~150 types.
    #[allow(clippy::type_complexity)]
    pub fn factories(
        lake: &Lake,
        datastore: &str,
    ) -> Vec<(
        String,
        Arc<dyn Fn() -> Result<Arc<dyn TableProvider>, String> + Send + Sync>,
    )> {
        let scanner = LeafScanner::with_cache_bytes(0);
        Registry::global()
            .resource_types()
            .map(|t| {
                let (lake, datastore, scanner) =
                    (lake.clone(), datastore.to_string(), scanner.clone());
                let resource_type = t.to_string();
                let factory = move || {
                    LakeTable::with_scanner(
                        lake.clone(),
                        &datastore,
                        &resource_type,
                        scanner.clone(),
                    )
                    .map(|p| Arc::new(p) as Arc<dyn TableProvider>)
                    .map_err(|e| e.to_string())
                };
                (
                    t.to_string(),
                    Arc::new(factory)
                        as Arc<dyn Fn() -> Result<Arc<dyn TableProvider>, String> + Send + Sync>,
                )
            })
            .collect()
    }

    /// This table with the columns named in `paths` narrowed to the dotted paths given for
    /// them ([`FieldUse`]); other columns stay whole. Paths that name nothing in a column are ignored, and a column none of whose
    /// paths names anything stays whole.
    pub fn with_nested_paths(&self, paths: &HashMap<String, Vec<FieldUse>>) -> Self {
        let mut fields = Vec::with_capacity(self.schema.fields().len());
        let mut prefixes = Vec::with_capacity(fields.capacity());
        for (field, current) in self.schema.fields().iter().zip(self.prefixes.iter()) {
            let narrowed = paths.get(field.name()).and_then(|wanted| {
                let wanted = resolve_presence(field.data_type(), wanted);
                prune(field.data_type(), field.name(), &wanted).map(|t| (t, wanted))
            });
            match narrowed {
                Some((data_type, wanted)) => {
                    fields.push(Arc::new(Field::clone(field).with_data_type(data_type)));
                    prefixes.push(wanted);
                }
                None => {
                    fields.push(field.clone());
                    prefixes.push(current.clone());
                }
            }
        }
        Self {
            schema: Arc::new(Schema::new_with_metadata(
                fields,
                self.schema.metadata().clone(),
            )),
            prefixes: Arc::new(prefixes),
            ..self.clone()
        }
    }
}

impl LakeTable {
    /// True when every column `filter` references is a top-level primitive column.
    fn on_primitive_columns(&self, filter: &Expr) -> bool {
        filter.column_refs().iter().all(|c| {
            self.schema
                .field_with_name(&c.name)
                .is_ok_and(|f| f.data_type().is_primitive() || !f.data_type().is_nested())
        })
    }

    /// The filters on primitive columns as a predicate over row-group statistics; `None`
    /// when there are none (or none DataFusion can turn into one).
    fn pruning_predicate(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> Option<Arc<PruningPredicate>> {
        let schema = DFSchema::try_from(self.schema.as_ref().clone()).ok()?;
        let exprs: Vec<_> = filters
            .iter()
            .filter(|f| self.on_primitive_columns(f))
            .filter_map(|f| {
                state
                    .create_physical_expr(unnormalize_col(f.clone()), &schema)
                    .ok()
            })
            .collect();
        let predicate = conjunction_opt(exprs)?;
        PruningPredicate::try_new(predicate, self.schema.clone())
            .ok()
            .filter(|p| !p.always_true())
            .map(Arc::new)
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let external = |e: super::LakeError| DataFusionError::External(Box::new(e));
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projected = Arc::new(self.schema.project(&columns)?);
        let table = self
            .lake
            .table(&self.datastore, &self.resource_type)
            .await
            .map_err(external)?;
        let Some(snapshot) = table
            .as_ref()
            .and_then(|t| t.metadata().current_snapshot().map(|s| s.snapshot_id()))
        else {
            return Ok(Arc::new(EmptyExec::new(projected)));
        };
        let table = table.expect("a snapshot implies a table");
        let files = self
            .scanner
            .files(&table, snapshot)
            .await
            .map_err(external)?;
        let prefixes = columns.iter().map(|&i| self.prefixes[i].clone()).collect();
        let predicate = self.pruning_predicate(state, filters);
        let exec = LakeScanExec::try_new(
            files,
            self.scanner.clone(),
            projected,
            prefixes,
            state.config_options().execution.target_partitions,
            limit,
            predicate,
        )
        .await
        .map_err(external)?;
        Ok(Arc::new(exec))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Row groups are skipped by their statistics (Inexact: DataFusion still applies every
        // filter). Statistics exist for primitive columns only, so filters reaching into
        // structs or lists stay with DataFusion alone.
        Ok(filters
            .iter()
            .map(|f| {
                if self.on_primitive_columns(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }
}
