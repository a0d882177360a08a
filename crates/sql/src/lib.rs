//! SQL over the lake in HealthLake's Athena dialect.
//!
//! [`SqlEngine`] owns a DataFusion session with one catalog, `fhirlake`, holding one schema per
//! data store and one table per resource type (`patient`, `medicationrequest`). Tables are
//! shown as Athena shows them: every column and nested field in lower case ([`lowercase`]), so
//! unquoted identifiers match case-insensitively. Statements are parsed and rewritten for
//! Trino syntax by [`dialect`] and must be read-only; Trino's functions and cast semantics come
//! from [`functions`].
//!
//! The schema name `database` always means the current data store, so the guide's examples
//! (`FROM database.patient`) run verbatim; unqualified table names resolve there too.

mod catalog;
mod cooperative;
pub mod dialect;
pub mod functions;
pub mod lowercase;
mod nested;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use fhirlake_schema::{Registry, SchemaError};

pub use catalog::DATASTORE_ALIAS;
pub use catalog::TableFactory;
use catalog::{DatastoreSchema, DatastoreTable, FhirlakeCatalog};

/// Name of the SQL catalog holding the data stores.
pub const CATALOG_NAME: &str = "fhirlake";

/// Errors of the SQL layer. Messages name the problem; DataFusion's own messages (unknown
/// table or column, ambiguous reference, type mismatch) are passed on as they are.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The text does not parse; the message carries the line and column.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// The statement would change data or the catalog.
    #[error(
        "fhirlake SQL is read-only: {0} is not allowed; write through the FHIR API or an import"
    )]
    ReadOnly(String),
    /// Zero or several statements where one was expected.
    #[error("expected exactly one SQL statement, found {0}")]
    StatementCount(usize),
    /// Planning failed: unknown table or column, ambiguous name, wrong argument types.
    #[error("{}", .0.strip_backtrace())]
    Plan(DataFusionError),
    /// Running the query failed.
    #[error("query failed: {}", .0.strip_backtrace())]
    Execution(DataFusionError),
    /// An unqualified name (`meta.tag[1]`) is a column of several joined tables. DataFusion
    /// reports this as a missing field `meta.tag`; this names the real problem, as Trino does.
    #[error(
        "column '{column}' is ambiguous: it exists in {}; qualify it with a table name, e.g. {}.{column}",
        .tables.join(" and "),
        .tables.last().map(String::as_str).unwrap_or("table")
    )]
    Ambiguous {
        /// The column name.
        column: String,
        /// The tables having it, as qualified in the query.
        tables: Vec<String>,
    },
    /// No data store of that name is registered.
    #[error("unknown data store '{0}'")]
    UnknownDatastore(String),
    /// No current data store, and the request needs one.
    #[error("no data store is selected")]
    NoDatastore,
    /// No table of that name in the data store.
    #[error("data store '{datastore}' has no table '{table}'")]
    UnknownTable {
        /// The data store searched.
        datastore: String,
        /// The table asked for.
        table: String,
    },
    /// A data store name SQL cannot use.
    #[error("'{0}' cannot be used as a data store name: {1}")]
    InvalidDatastoreName(String, &'static str),
    /// Two field names of one table differ only in case, so SQL could not tell them apart.
    #[error("field name '{0}' occurs twice when names are compared case-insensitively")]
    NameCollision(String),
    /// The resource type has no schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A registered table could not be built when first used.
    #[error("table '{table}' cannot be read: {reason}")]
    TableUnavailable {
        /// The resource type.
        table: String,
        /// Why.
        reason: String,
    },
}

/// Resource limits of one query (see [`SqlEngine::execute_plan`]).
#[derive(Debug, Clone, Default)]
pub struct QueryLimits {
    /// Most memory the query's sorts, joins and aggregations may hold; `None` for no limit.
    pub memory_bytes: Option<usize>,
}

/// A table as SQL sees it, for listings such as the REPL's `\d`.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// SQL table name (lower-case resource type, `medicationrequest`).
    pub name: String,
    /// FHIR resource type as registered (`MedicationRequest`).
    pub resource_type: String,
    /// SQL-visible Arrow schema: lower-case names at every depth.
    pub schema: SchemaRef,
}

/// An empty table with the full schema of `resource_type` (matched case-insensitively), so
/// every R4 type is queryable before it has data.
pub fn empty_table(resource_type: &str) -> Result<Arc<dyn TableProvider>, SqlError> {
    let registry = Registry::global();
    let name = registry
        .canonical_name(resource_type)
        .ok_or_else(|| SchemaError::UnknownType(resource_type.to_string()))?;
    let schema = registry.get(name)?.arrow_schema();
    Ok(Arc::new(EmptyTable::new(Arc::new(schema))))
}

/// The SQL engine: a DataFusion session over the registered data stores.
///
/// Cheap to share behind an `Arc`; every method takes `&self` and queries run concurrently.
pub struct SqlEngine {
    ctx: SessionContext,
    catalog: Arc<FhirlakeCatalog>,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine")
            .field("datastores", &self.catalog.names())
            .field("current", &self.catalog.current())
            .finish()
    }
}

/// What a statement may plan into: queries only (checked again after planning, in case a
/// read-only-looking statement plans into something else).
fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A planning error, with DataFusion's "no field named `meta.tag`" for an ambiguous column
/// turned into [`SqlError::Ambiguous`].
fn planning_error(error: DataFusionError) -> SqlError {
    if let DataFusionError::SchemaError(e, _) = error.find_root()
        && let datafusion::common::SchemaError::FieldNotFound {
            field,
            valid_fields,
        } = e.as_ref()
        && let Some(relation) = &field.relation
        && let datafusion::common::TableReference::Bare { table } = relation
    {
        let tables: Vec<String> = valid_fields
            .iter()
            .filter(|c| c.name == table.as_ref())
            .filter_map(|c| c.relation.as_ref().map(ToString::to_string))
            .collect();
        if tables.len() > 1 {
            return SqlError::Ambiguous {
                column: table.to_string(),
                tables,
            };
        }
    }
    SqlError::Plan(error)
}

impl SqlEngine {
    /// A session with the `fhirlake` catalog (no data stores yet), Trino functions and
    /// `information_schema` (for `SHOW TABLES` and `DESCRIBE`).
    pub fn new() -> Result<Self, SqlError> {
        Self::with_catalog(Arc::new(FhirlakeCatalog::default()))
    }

    fn with_catalog(catalog: Arc<FhirlakeCatalog>) -> Result<Self, SqlError> {
        let default_schema = catalog
            .current()
            .unwrap_or_else(|| DATASTORE_ALIAS.to_string());
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, default_schema)
            .with_information_schema(true);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rule(Arc::new(nested::NestedProjection))
            .with_physical_optimizer_rule(Arc::new(cooperative::YieldAfterJoins))
            .build();
        functions::register(&mut state).map_err(SqlError::Plan)?;
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(CATALOG_NAME, Arc::clone(&catalog) as _);
        Ok(Self { ctx, catalog })
    }

    /// A new engine over the same data stores (registrations made through either engine are
    /// seen by both) with its own current data store, `datastore`. A server opens one per
    /// connection or data store so that `USE` on one does not change another.
    pub fn for_datastore(&self, datastore: &str) -> Result<Self, SqlError> {
        let name = lowercase::fold_name(datastore);
        if !self.catalog.names().contains(&name) {
            return Err(SqlError::UnknownDatastore(name));
        }
        Self::with_catalog(Arc::new(self.catalog.view(Some(name))))
    }

    /// The underlying DataFusion session (for registering more functions or tables in tests;
    /// statements sent to it directly bypass the read-only check and the dialect rewrite).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Registers data store `name` (lower-cased) with one table per `(resource type,
    /// provider)`, each shown under its lower-case type name with lower-case fields. Replaces
    /// an earlier registration of the same name; the first data store registered becomes the
    /// current one.
    pub fn register_datastore(
        &self,
        name: &str,
        tables: Vec<(String, Arc<dyn TableProvider>)>,
    ) -> Result<(), SqlError> {
        let tables: Vec<(String, TableFactory)> = tables
            .into_iter()
            .map(|(t, provider)| {
                let factory: TableFactory = Arc::new(move || Ok(Arc::clone(&provider)));
                (t, factory)
            })
            .collect();
        let schema = self.datastore_schema(name, tables)?;
        // Tables given as providers are checked now, as callers expect.
        for table in schema.tables.values() {
            table.table()?;
        }
        self.insert_datastore(name, schema);
        Ok(())
    }

    /// Registers data store `name` like [`Self::register_datastore`], building each table
    /// only when a statement first uses it (a lake data store has one per R4 type).
    pub fn register_datastore_lazy(
        &self,
        name: &str,
        tables: Vec<(String, TableFactory)>,
    ) -> Result<(), SqlError> {
        let schema = self.datastore_schema(name, tables)?;
        self.insert_datastore(name, schema);
        Ok(())
    }

    fn datastore_schema(
        &self,
        name: &str,
        tables: Vec<(String, TableFactory)>,
    ) -> Result<DatastoreSchema, SqlError> {
        let name = lowercase::fold_name(name);
        if name.is_empty() {
            return Err(SqlError::InvalidDatastoreName(name, "it is empty"));
        }
        if name == "information_schema" {
            return Err(SqlError::InvalidDatastoreName(
                name,
                "it is reserved for the catalog's own tables",
            ));
        }
        let mut schema = DatastoreSchema {
            tables: Default::default(),
        };
        for (resource_type, factory) in tables {
            schema.tables.insert(
                lowercase::fold_name(&resource_type),
                DatastoreTable::new(resource_type, factory),
            );
        }
        Ok(schema)
    }

    fn insert_datastore(&self, name: &str, schema: DatastoreSchema) {
        let name = lowercase::fold_name(name);
        self.catalog.insert(name.clone(), Arc::new(schema));
        if self.catalog.current().as_deref() == Some(name.as_str()) {
            self.set_default_schema(&name);
        }
    }

    /// Registers `schema` as the schema `name` (lower-cased) of every engine sharing this
    /// one's data stores, without making it a data store: it is never current and is not in
    /// [`Self::datastores`]. For tables the server itself keeps (the audit log).
    pub fn register_system_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) {
        self.catalog
            .insert_system(lowercase::fold_name(name), schema);
    }

    /// Removes data store `name`; false when it was not registered.
    pub fn deregister_datastore(&self, name: &str) -> bool {
        let name = lowercase::fold_name(name);
        let was_current = self.catalog.current().as_deref() == Some(name.as_str());
        let removed = self.catalog.remove(&name);
        if was_current {
            self.set_default_schema(DATASTORE_ALIAS);
        }
        removed
    }

    /// Makes `name` the current data store: unqualified table names and the `database`
    /// schema resolve to it.
    pub fn set_current_datastore(&self, name: &str) -> Result<(), SqlError> {
        let name = lowercase::fold_name(name);
        if !self.catalog.set_current(&name) {
            return Err(SqlError::UnknownDatastore(name));
        }
        self.set_default_schema(&name);
        Ok(())
    }

    /// The current data store's SQL name, if any.
    pub fn current_datastore(&self) -> Option<String> {
        self.catalog.current()
    }

    /// SQL names of all registered data stores, sorted.
    pub fn datastores(&self) -> Vec<String> {
        self.catalog.names()
    }

    /// Unqualified names resolve in the session's default schema; naming the data store
    /// there (rather than the alias) makes DataFusion's messages name it too.
    fn set_default_schema(&self, schema: &str) {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        state.config_mut().options_mut().catalog.default_schema = schema.to_string();
    }

    fn datastore(
        &self,
        datastore: Option<&str>,
    ) -> Result<(String, Arc<DatastoreSchema>), SqlError> {
        let name = match datastore {
            Some(n) => lowercase::fold_name(n),
            None => self.catalog.current().ok_or(SqlError::NoDatastore)?,
        };
        let schema = self
            .catalog
            .get(&name)
            .ok_or_else(|| SqlError::UnknownDatastore(name.clone()))?;
        Ok((name, schema))
    }

    /// Every table of `datastore` (the current one when `None`) with its SQL-visible schema,
    /// in name order.
    pub fn tables(&self, datastore: Option<&str>) -> Result<Vec<TableInfo>, SqlError> {
        let (_, schema) = self.datastore(datastore)?;
        Ok(schema
            .table_schemas()?
            .into_iter()
            .map(|(name, table, schema)| TableInfo {
                name: name.to_string(),
                resource_type: table.resource_type.clone(),
                schema,
            })
            .collect())
    }

    /// One table of `datastore` (the current one when `None`), by name or resource type,
    /// case-insensitively.
    pub fn table(&self, datastore: Option<&str>, table: &str) -> Result<TableInfo, SqlError> {
        let (name, schema) = self.datastore(datastore)?;
        let key = lowercase::fold_name(table);
        let entry = schema
            .tables
            .get(&key)
            .ok_or_else(|| SqlError::UnknownTable {
                datastore: name,
                table: table.to_string(),
            })?;
        Ok(TableInfo {
            name: key,
            resource_type: entry.resource_type.clone(),
            schema: entry.table()?.schema(),
        })
    }

    /// Plans one read-only statement. Errors in the statement itself (syntax, writes,
    /// unknown names, types) are reported here rather than when the result is read.
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan, SqlError> {
        let statement = dialect::parse(sql)?;
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(planning_error)?;
        read_only_options()
            .verify_plan(&plan)
            .map_err(SqlError::Plan)?;
        // Run the analyzer now so type errors surface at planning time.
        state
            .analyzer()
            .execute_and_check(plan.clone(), state.config_options(), |_, _| {})
            .map_err(SqlError::Plan)?;
        Ok(plan)
    }

    /// The result of one read-only statement as a DataFrame (not yet executed).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame, SqlError> {
        let plan = self.plan(sql).await?;
        Ok(DataFrame::new(self.ctx.state(), plan))
    }

    /// Runs a plan made by [`SqlEngine::plan`], after replacing its `?`/`$n` placeholders
    /// with `params` (in order), under `limits`.
    ///
    /// With a memory limit the query gets its own memory pool and cannot spill to disk, so
    /// a sort, join or aggregation that needs more fails with DataFusion's "resources
    /// exhausted" error instead of starving other queries.
    pub async fn execute_plan(
        &self,
        plan: LogicalPlan,
        params: Vec<ScalarValue>,
        limits: &QueryLimits,
    ) -> Result<SendableRecordBatchStream, SqlError> {
        let plan = if params.is_empty() {
            plan
        } else {
            plan.with_param_values(params).map_err(SqlError::Plan)?
        };
        let state = match limits.memory_bytes {
            None => self.ctx.state(),
            Some(bytes) => {
                let runtime = RuntimeEnvBuilder::new()
                    .with_memory_limit(bytes, 1.0)
                    .with_disk_manager_builder(
                        DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                    )
                    .build_arc()
                    .map_err(SqlError::Execution)?;
                SessionStateBuilder::new_from_existing(self.ctx.state())
                    .with_runtime_env(runtime)
                    .build()
            }
        };
        let announced = Arc::new(plan.schema().as_arrow().clone());
        let stream = DataFrame::new(state, plan)
            .execute_stream()
            .await
            .map_err(SqlError::Execution)?;
        Ok(conform(stream, announced))
    }

    /// Runs one read-only statement, streaming its batches.
    pub async fn execute_stream(&self, sql: &str) -> Result<SendableRecordBatchStream, SqlError> {
        let df = self.sql(sql).await?;
        df.execute_stream().await.map_err(SqlError::Execution)
    }

    /// Runs one read-only statement and collects all its batches.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        let df = self.sql(sql).await?;
        df.collect().await.map_err(SqlError::Execution)
    }
}

/// `stream` with the schema its logical plan announced.
///
/// Physical operators may choose other encodings of the same values (DataFusion reads
/// strings from Parquet as `Utf8View` while the plan says `Utf8`). Clients that were told
/// the schema up front (Flight SQL's `FlightInfo`, a prepared statement's dataset schema)
/// reject batches that differ from it, so the values are cast back.
fn conform(stream: SendableRecordBatchStream, announced: SchemaRef) -> SendableRecordBatchStream {
    let physical = stream.schema();
    let same_types = physical.fields().len() == announced.fields().len()
        && physical
            .fields()
            .iter()
            .zip(announced.fields())
            .all(|(p, a)| p.data_type() == a.data_type());
    if same_types && physical.fields() == announced.fields() {
        return stream;
    }
    let schema = Arc::clone(&announced);
    let batches = stream.map(move |batch| {
        let batch = batch?;
        let columns = batch
            .columns()
            .iter()
            .zip(announced.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(Arc::clone(column))
                } else {
                    arrow::compute::cast(column, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&announced), columns)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SqlEngine>();
    }

    #[test]
    fn every_registered_schema_has_a_lowercase_view() {
        // Guards against two FHIR element names differing only in case, which the
        // lower-case view could not show.
        for resource_type in Registry::global().resource_types() {
            let table = empty_table(resource_type).unwrap();
            lowercase::LowercaseTable::try_new(table)
                .unwrap_or_else(|e| panic!("{resource_type}: {e}"));
        }
        assert!(matches!(
            empty_table("NoSuchType"),
            Err(SqlError::Schema(SchemaError::UnknownType(_)))
        ));
    }

    #[tokio::test]
    async fn queries_run_without_any_datastore() {
        let engine = SqlEngine::new().unwrap();
        assert_eq!(engine.current_datastore(), None);
        assert!(matches!(engine.tables(None), Err(SqlError::NoDatastore)));
        let batches = engine
            .collect("SELECT concat('a', 'b') AS x, year(DATE '2020-02-03') AS y")
            .await
            .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
        let err = engine.sql("SELECT * FROM patient").await.unwrap_err();
        assert!(err.to_string().contains("patient"), "{err}");
        assert!(matches!(
            engine.register_datastore("information_schema", Vec::new()),
            Err(SqlError::InvalidDatastoreName(..))
        ));
    }
}
