//! DataFusion access to a resource type's Iceberg table.
//!
//! The provider is registered once per session but resolves the table's current snapshot at
//! every scan, so a long-running REPL or server sees new commits without re-registering.
//! Before the type has data (no table yet, or no snapshot) it scans as empty with the full
//! schema, so every R4 type is queryable from the start.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use iceberg_datafusion::IcebergStaticTableProvider;

use super::Lake;
use fhirlake_schema::{Registry, SchemaError};

/// A resource type's lake table as a DataFusion table.
#[derive(Clone)]
pub struct LakeTable {
    lake: Lake,
    datastore: String,
    resource_type: String,
    schema: SchemaRef,
}

impl std::fmt::Debug for LakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LakeTable({}.{})", self.datastore, self.resource_type)
    }
}

impl LakeTable {
    pub fn new(lake: Lake, datastore: &str, resource_type: &str) -> Result<Self, SchemaError> {
        let schema = Arc::new(Registry::global().get(resource_type)?.arrow_schema());
        Ok(Self {
            lake,
            datastore: datastore.to_string(),
            resource_type: resource_type.to_string(),
            schema,
        })
    }

    /// One provider per R4 type for `datastore`, in the shape `SqlEngine` registers.
    pub fn all_types(lake: &Lake, datastore: &str) -> Vec<(String, Arc<dyn TableProvider>)> {
        Registry::global()
            .resource_types()
            .filter_map(|t| {
                LakeTable::new(lake.clone(), datastore, t)
                    .ok()
                    .map(|p| (t.to_string(), Arc::new(p) as Arc<dyn TableProvider>))
            })
            .collect()
    }
}

impl LakeTable {
    /// True when every column `filter` references is a top-level primitive column.
    fn on_primitive_columns(&self, filter: &Expr) -> bool {
        filter.column_refs().iter().all(|c| {
            self.schema.field_with_name(&c.name).is_ok_and(|f| {
                f.data_type().is_primitive()
                    || f.data_type() == &DataType::Utf8
                    || f.data_type() == &DataType::Boolean
            })
        })
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
        let table = self
            .lake
            .table(&self.datastore, &self.resource_type)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(table) = table.filter(|t| t.metadata().current_snapshot().is_some()) else {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        };
        let provider = IcebergStaticTableProvider::try_new_from_table(table)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let prunable: Vec<Expr> = filters
            .iter()
            .filter(|f| self.on_primitive_columns(f))
            .cloned()
            .collect();
        provider.scan(state, projection, &prunable, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Iceberg prunes files by statistics only (Inexact: DataFusion still applies every
        // filter). Its predicates cannot address struct or list columns, so filters on those
        // stay with DataFusion alone.
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
