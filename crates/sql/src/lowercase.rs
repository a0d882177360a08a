//! A lower-case view of a table.
//!
//! Athena shows every column and nested struct field of a HealthLake table in lower case
//! (`birthdate`, `maritalstatus.coding`, `valuequantity.value`), while the Iceberg/Parquet files
//! keep FHIR's camelCase names. [`LowercaseTable`] wraps any [`TableProvider`] and exposes the
//! same data with every field name lower-cased at every depth. Combined with DataFusion's
//! default identifier normalization (unquoted identifiers are lower-cased), SQL then matches
//! names case-insensitively, as Athena does.
//!
//! The data is not copied: each batch's arrays are re-labelled with the lower-case type by
//! rebuilding only the `ArrayData` nodes whose type changes (structs and the lists containing
//! them); leaf buffers are shared as they are.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Constraints, Result as DFResult, Statistics};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use fhirlake_lake::provider::{FieldUse, LakeTable};
use fhirlake_lake::relabel::relabel_array;
use futures::StreamExt;

use super::SqlError;

/// The lower-case spelling of a field name, as SQL sees it.
///
/// Uses the same folding as DataFusion's identifier normalization so an unquoted identifier
/// always matches the folded name.
pub fn fold_name(name: &str) -> String {
    name.to_lowercase()
}

/// `fields` with every name lower-cased at every depth.
///
/// Fails when two names of one struct fold to the same spelling, because SQL could then not
/// tell them apart; `path` names the struct in that error.
fn lowercase_fields(fields: &Fields, path: &str) -> Result<Fields, SqlError> {
    let mut seen = HashSet::with_capacity(fields.len());
    let mut out = Vec::with_capacity(fields.len());
    for field in fields.iter() {
        let folded = fold_name(field.name());
        let child_path = if path.is_empty() {
            folded.clone()
        } else {
            format!("{path}.{folded}")
        };
        if !seen.insert(folded.clone()) {
            return Err(SqlError::NameCollision(child_path));
        }
        out.push(lowercase_field(field, folded, &child_path)?);
    }
    Ok(Fields::from(out))
}

fn lowercase_field(field: &Field, name: String, path: &str) -> Result<FieldRef, SqlError> {
    let data_type = lowercase_type(field.data_type(), path)?;
    Ok(Arc::new(
        Field::new(name, data_type, field.is_nullable()).with_metadata(field.metadata().clone()),
    ))
}

/// `data_type` with every nested field name lower-cased.
fn lowercase_type(data_type: &DataType, path: &str) -> Result<DataType, SqlError> {
    // List elements get Arrow's canonical field (`item`, no metadata): the name is not
    // addressable in SQL, and DataFusion's list functions coerce their arguments to that
    // canonical type, so any other spelling would make every `name[1]` a cast (a copy).
    let element = |f: &FieldRef| -> Result<FieldRef, SqlError> {
        let data_type = lowercase_type(f.data_type(), path)?;
        Ok(Arc::new(Field::new_list_field(data_type, f.is_nullable())))
    };
    let map_entry = |f: &FieldRef| -> Result<FieldRef, SqlError> {
        let data_type = lowercase_type(f.data_type(), path)?;
        Ok(Arc::new(
            Field::new(f.name(), data_type, f.is_nullable()).with_metadata(f.metadata().clone()),
        ))
    };
    Ok(match data_type {
        DataType::Struct(fields) => DataType::Struct(lowercase_fields(fields, path)?),
        DataType::List(f) => DataType::List(element(f)?),
        DataType::LargeList(f) => DataType::LargeList(element(f)?),
        DataType::ListView(f) => DataType::ListView(element(f)?),
        DataType::LargeListView(f) => DataType::LargeListView(element(f)?),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(element(f)?, *n),
        DataType::Map(f, sorted) => DataType::Map(map_entry(f)?, *sorted),
        DataType::Dictionary(k, v) => {
            DataType::Dictionary(k.clone(), Box::new(lowercase_type(v, path)?))
        }
        other => other.clone(),
    })
}

/// The schema SQL sees for a table with `schema`: every field name lower-cased, metadata kept.
pub fn lowercase_schema(schema: &Schema) -> Result<Schema, SqlError> {
    Ok(Schema::new_with_metadata(
        lowercase_fields(schema.fields(), "")?,
        schema.metadata().clone(),
    ))
}

/// `batch` re-labelled with `schema` column by column.
fn relabel_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.num_columns() != schema.fields().len() {
        return Err(ArrowError::SchemaError(format!(
            "scan produced {} columns where {} were planned",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| relabel_array(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// The original spelling of the lower-case dotted `path` into `field` (whose name is its first
/// segment), or `None` when some segment names nothing. Lists are transparent.
fn camel_path(path: &str, field: &Field) -> Option<String> {
    let mut segments = path.split('.');
    segments.next()?;
    let mut out = vec![field.name().clone()];
    let mut current = field.data_type();
    for segment in segments {
        while let DataType::List(element) | DataType::LargeList(element) = current {
            current = element.data_type();
        }
        let DataType::Struct(fields) = current else {
            return None;
        };
        let child = fields.iter().find(|f| fold_name(f.name()) == segment)?;
        out.push(child.name().clone());
        current = child.data_type();
    }
    Some(out.join("."))
}

/// A table whose columns and nested fields all have lower-case names.
///
/// Projections and limits pass through unchanged (column positions are the same). Filters on
/// top-level columns are offered to the inner table with their original names; filters that
/// reach into structs are reported as unsupported, so DataFusion always evaluates them itself
/// and results never depend on what the inner table can push down.
#[derive(Debug)]
pub struct LowercaseTable {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl LowercaseTable {
    /// Wraps `inner`; fails when two names of one struct differ only in case.
    pub fn try_new(inner: Arc<dyn TableProvider>) -> Result<Self, SqlError> {
        let schema = Arc::new(lowercase_schema(&inner.schema())?);
        Ok(Self { inner, schema })
    }

    /// The wrapped table, with its original names.
    pub fn inner(&self) -> &Arc<dyn TableProvider> {
        &self.inner
    }

    /// This table reading only the nested fields at `paths` (lower-case dotted paths by
    /// lower-case column name), when the inner table is a lake table and that narrows
    /// anything; paths naming nothing in this table are ignored.
    pub fn with_nested_paths(&self, paths: &HashMap<String, Vec<FieldUse>>) -> Option<Self> {
        let lake = self.inner.as_any().downcast_ref::<LakeTable>()?;
        let inner_schema = self.inner.schema();
        let mut camel: HashMap<String, Vec<FieldUse>> = HashMap::new();
        for (lower, field) in self.schema.fields().iter().zip(inner_schema.fields()) {
            let Some(wanted) = paths.get(lower.name()) else {
                continue;
            };
            let mapped: Vec<FieldUse> = wanted
                .iter()
                .filter_map(|u| camel_path(u.path(), field).map(|c| u.with_path(c)))
                .collect();
            if !mapped.is_empty() {
                camel.insert(field.name().clone(), mapped);
            }
        }
        let narrowed = lake.with_nested_paths(&camel);
        if narrowed.schema() == inner_schema {
            return None;
        }
        Self::try_new(Arc::new(narrowed)).ok()
    }

    /// `filter` with its column names mapped back to the inner table's spelling, or `None`
    /// when it cannot be mapped exactly (it reaches into a struct, or names an unknown column).
    fn map_filter(&self, filter: &Expr) -> Option<Expr> {
        let inner_schema = self.inner.schema();
        let mut mappable = true;
        // Struct field access is a function call whose literal names would need mapping too;
        // leave those to DataFusion rather than risk a wrong pushdown.
        filter
            .apply(|e| {
                if matches!(e, Expr::ScalarFunction(f) if f.func.name() == "get_field")
                    || matches!(
                        e,
                        Expr::OuterReferenceColumn(..)
                            | Expr::ScalarSubquery(_)
                            | Expr::Exists(_)
                            | Expr::InSubquery(_)
                    )
                {
                    mappable = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .ok()?;
        if !mappable {
            return None;
        }
        let mapped = filter
            .clone()
            .transform_up(|e| match e {
                Expr::Column(mut column) => {
                    let index = self.schema.index_of(&column.name).map_err(|e| {
                        datafusion::error::DataFusionError::ArrowError(Box::new(e), None)
                    })?;
                    column.name = inner_schema.field(index).name().clone();
                    Ok(Transformed::yes(Expr::Column(column)))
                }
                other => Ok(Transformed::no(other)),
            })
            .ok()?;
        Some(mapped.data)
    }
}

#[async_trait]
impl TableProvider for LowercaseTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        let mapped: Vec<Option<Expr>> = filters.iter().map(|f| self.map_filter(f)).collect();
        let offered: Vec<&Expr> = mapped.iter().flatten().collect();
        let mut answers = if offered.is_empty() {
            Vec::new()
        } else {
            self.inner.supports_filters_pushdown(&offered)?
        }
        .into_iter();
        Ok(mapped
            .iter()
            .map(|m| match m {
                Some(_) => answers
                    .next()
                    .unwrap_or(TableProviderFilterPushDown::Unsupported),
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        // DataFusion only hands over filters this table accepted, and only mappable ones
        // are accepted.
        let filters: Vec<Expr> = filters.iter().filter_map(|f| self.map_filter(f)).collect();
        let input = self.inner.scan(state, projection, &filters, limit).await?;
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        Ok(Arc::new(LowercaseExec::try_new(input, schema)?))
    }
}

/// Execution node that re-labels its input's batches with lower-case field names.
#[derive(Debug)]
pub struct LowercaseExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl LowercaseExec {
    /// Wraps `input`, whose batches are re-labelled with `schema`: the table's lower-case
    /// schema, projected as the scan was. Using the table's schema rather than the scan's
    /// keeps the plan exactly as DataFusion planned it even when a scan reports slightly
    /// different field names or metadata; the physical layout must match.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef) -> DFResult<Self> {
        let produced = input.schema().fields().len();
        if produced != schema.fields().len() {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "table scan produces {produced} columns where {} were requested",
                schema.fields().len()
            )));
        }
        // Orderings and hash partitioning name columns of the input schema; restating them
        // with the new names buys nothing for an Iceberg scan, so only the partition count is
        // kept.
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Ok(Self {
            input,
            schema,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for LowercaseExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LowercaseExec")
    }
}

impl ExecutionPlan for LowercaseExec {
    fn name(&self) -> &str {
        "LowercaseExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(child), true) => Ok(Arc::new(Self::try_new(child, Arc::clone(&self.schema))?)),
            _ => Err(datafusion::error::DataFusionError::Internal(
                "LowercaseExec takes exactly one child".to_string(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = Arc::clone(&self.schema);
        let out_schema = Arc::clone(&schema);
        let relabelled = stream.map(move |batch| {
            batch.and_then(|b| {
                relabel_batch(&b, &schema)
                    .map_err(|e| datafusion::error::DataFusionError::ArrowError(Box::new(e), None))
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            out_schema, relabelled,
        )))
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        // Column statistics are positional, so the input's apply unchanged.
        self.input.partition_statistics(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int32Array, ListArray, StringArray, StructArray};
    use arrow::buffer::OffsetBuffer;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    fn camel_batch() -> RecordBatch {
        let given = Arc::new(Field::new("element", DataType::Utf8, true));
        let name_fields = Fields::from(vec![
            Field::new("family", DataType::Utf8, true),
            Field::new("givenName", DataType::List(given.clone()), true),
        ]);
        let given_values = ListArray::new(
            given,
            OffsetBuffer::from_lengths([1, 2]),
            Arc::new(StringArray::from(vec!["Ann", "Bo", "Cy"])),
            None,
        );
        let names = StructArray::new(
            name_fields.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("Smith"), None])),
                Arc::new(given_values),
            ],
            None,
        );
        let name_item = Arc::new(Field::new("element", DataType::Struct(name_fields), true));
        let name_list = ListArray::new(
            name_item.clone(),
            OffsetBuffer::from_lengths([1, 1]),
            Arc::new(names),
            None,
        );
        let schema = Schema::new(vec![
            Field::new("birthDate", DataType::Utf8, true),
            Field::new("multipleBirthInteger", DataType::Int32, true),
            Field::new("name", DataType::List(name_item), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["1990-01-02", "2001-03-04"])),
                Arc::new(Int32Array::from(vec![Some(2), None])),
                Arc::new(name_list),
            ],
        )
        .unwrap()
    }

    #[test]
    fn schema_is_lowercased_at_every_depth() {
        let batch = camel_batch();
        let lower = lowercase_schema(&batch.schema()).unwrap();
        let names: Vec<_> = lower.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["birthdate", "multiplebirthinteger", "name"]);
        let DataType::List(item) = lower.field(2).data_type() else {
            panic!("name is a list")
        };
        let DataType::Struct(children) = item.data_type() else {
            panic!("name element is a struct")
        };
        assert_eq!(children[1].name(), "givenname");
    }

    #[test]
    fn collisions_are_reported_with_their_path() {
        let schema = Schema::new(vec![Field::new(
            "meta",
            DataType::Struct(Fields::from(vec![
                Field::new("Tag", DataType::Utf8, true),
                Field::new("tag", DataType::Utf8, true),
            ])),
            true,
        )]);
        let err = lowercase_schema(&schema).unwrap_err();
        assert!(err.to_string().contains("meta.tag"), "{err}");
    }

    #[test]
    fn relabelling_shares_leaf_buffers() {
        let batch = camel_batch();
        let schema = Arc::new(lowercase_schema(&batch.schema()).unwrap());
        let out = relabel_batch(&batch, &schema).unwrap();
        assert_eq!(out.schema(), schema);
        // Leaves are the very same arrays.
        let before = batch.column(0).to_data();
        let after = out.column(0).to_data();
        assert_eq!(before.buffers()[1].as_ptr(), after.buffers()[1].as_ptr());
        let names = out.column(2).as_list::<i32>();
        let first = names.value(0);
        let given = first.as_struct().column_by_name("givenname").unwrap();
        assert_eq!(
            given.as_list::<i32>().value(0).as_string::<i32>().value(0),
            "Ann"
        );
    }

    /// A table that accepts every filter as inexact and records what its scan received.
    #[derive(Debug)]
    struct RecordingTable {
        inner: MemTable,
        seen: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl TableProvider for RecordingTable {
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn schema(&self) -> SchemaRef {
            self.inner.schema()
        }
        fn table_type(&self) -> TableType {
            TableType::Base
        }
        fn supports_filters_pushdown(
            &self,
            filters: &[&Expr],
        ) -> DFResult<Vec<TableProviderFilterPushDown>> {
            Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
        }
        async fn scan(
            &self,
            state: &dyn Session,
            projection: Option<&Vec<usize>>,
            filters: &[Expr],
            limit: Option<usize>,
        ) -> DFResult<Arc<dyn ExecutionPlan>> {
            self.seen
                .lock()
                .unwrap()
                .extend(filters.iter().map(|f| f.to_string()));
            self.inner.scan(state, projection, &[], limit).await
        }
    }

    #[tokio::test]
    async fn top_level_filters_reach_the_inner_table_with_original_names() {
        let batch = camel_batch();
        let inner = Arc::new(RecordingTable {
            inner: MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap(),
            seen: Default::default(),
        });
        let table = LowercaseTable::try_new(Arc::clone(&inner) as _).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("patient", Arc::new(table)).unwrap();
        let batches = ctx
            .sql("SELECT birthdate FROM patient WHERE birthdate > '2000' AND name[1]['family'] IS NULL")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        let seen = inner.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].contains("birthDate"), "{seen:?}");
    }

    #[tokio::test]
    async fn sql_sees_lowercase_names_and_pushes_limits() {
        let batch = camel_batch();
        let mem = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        let table = LowercaseTable::try_new(Arc::new(mem)).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("patient", Arc::new(table)).unwrap();
        let df = ctx
            .sql("SELECT BirthDate, multipleBirthInteger FROM patient WHERE birthdate > '2000' LIMIT 5")
            .await
            .unwrap();
        let batches = df.collect().await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 1);
        assert_eq!(
            batches[0].column(0).as_string::<i32>().value(0),
            "2001-03-04"
        );
    }
}
