//! The `fhirlake` SQL catalog: one schema per data store, one table per resource type.
//!
//! Athena shows each HealthLake data store as a database whose tables are the resource types.
//! The guide's example queries write `FROM database.patient`, with `database` standing for the
//! data store's name; the catalog resolves the schema name `database` to the current data
//! store so those queries run verbatim. A data store really named `database` takes precedence.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DFResult};

use super::SqlError;
use super::lowercase::LowercaseTable;

/// Schema name that always resolves to the current data store.
pub const DATASTORE_ALIAS: &str = "database";

/// Builds a table's provider when SQL first needs it; an error says why the table cannot be
/// read.
pub type TableFactory = Arc<dyn Fn() -> Result<Arc<dyn TableProvider>, String> + Send + Sync>;

/// One resource-type table of a data store, as SQL sees it.
///
/// Built on first use: a data store has ~150 resource-type tables with wide generated
/// schemas, and a query touches a few, so a CLI run or a new data store should not pay for
/// the rest.
pub(crate) struct DatastoreTable {
    /// FHIR resource type as registered (`MedicationRequest`).
    pub resource_type: String,
    factory: TableFactory,
    /// The lower-case view registered under the lower-case type name, once built.
    table: OnceLock<Result<Arc<LowercaseTable>, String>>,
}

impl std::fmt::Debug for DatastoreTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreTable")
            .field("resource_type", &self.resource_type)
            .finish_non_exhaustive()
    }
}

impl DatastoreTable {
    pub fn new(resource_type: String, factory: TableFactory) -> Self {
        Self {
            resource_type,
            factory,
            table: OnceLock::new(),
        }
    }

    /// The table, built now if it was not yet.
    pub fn table(&self) -> Result<Arc<LowercaseTable>, SqlError> {
        let built = self.table.get_or_init(|| {
            let provider = (self.factory)()?;
            LowercaseTable::try_new(provider)
                .map(Arc::new)
                .map_err(|e| match e {
                    SqlError::NameCollision(path) => format!(
                        "field name '{}.{path}' occurs twice when names are compared \
                         case-insensitively",
                        self.resource_type
                    ),
                    other => other.to_string(),
                })
        });
        built.clone().map_err(|reason| SqlError::TableUnavailable {
            table: self.resource_type.clone(),
            reason,
        })
    }
}

/// The tables of one data store, fixed at registration (re-registering replaces the schema).
#[derive(Debug)]
pub(crate) struct DatastoreSchema {
    /// Lower-case table name -> table.
    pub tables: BTreeMap<String, DatastoreTable>,
}

impl DatastoreSchema {
    /// The SQL-visible Arrow schema of every table, in name order (building them all).
    pub fn table_schemas(&self) -> Result<Vec<(&str, &DatastoreTable, SchemaRef)>, SqlError> {
        self.tables
            .iter()
            .map(|(name, t)| Ok((name.as_str(), t, t.table()?.schema())))
            .collect()
    }
}

#[async_trait]
impl SchemaProvider for DatastoreSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        match self.tables.get(name) {
            None => Ok(None),
            Some(t) => match t.table() {
                Ok(table) => Ok(Some(table as Arc<dyn TableProvider>)),
                Err(e) => Err(DataFusionError::Plan(e.to_string())),
            },
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// The registered data stores, shared by every engine opened from the same root engine.
type DatastoreMap = Arc<RwLock<BTreeMap<String, Arc<DatastoreSchema>>>>;

/// Schemas that are not data stores (the audit log), by name; shared like [`DatastoreMap`].
type SystemMap = Arc<RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>>;

/// The catalog holding every registered data store, with this engine's current one.
///
/// The data store map is shared between engines made with [`FhirlakeCatalog::view`], so a
/// server can give each connection its own current data store while registering tables once.
#[derive(Debug, Default)]
pub(crate) struct FhirlakeCatalog {
    datastores: DatastoreMap,
    current: RwLock<Option<String>>,
    /// Never current and never listed as data stores, so `USE` and the data store lists
    /// ignore them; a data store of the same name takes precedence (names are reserved).
    system: SystemMap,
}

/// Reads or writes a lock whose holder panicked: every update here is a single insert or
/// assignment, so the data is consistent even then.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl FhirlakeCatalog {
    /// A catalog over the same data stores with `current` as its current one.
    pub fn view(&self, current: Option<String>) -> Self {
        Self {
            datastores: Arc::clone(&self.datastores),
            current: RwLock::new(current),
            system: Arc::clone(&self.system),
        }
    }

    /// Adds or replaces the system schema `name` (already lower-case).
    pub fn insert_system(&self, name: String, schema: Arc<dyn SchemaProvider>) {
        write(&self.system).insert(name, schema);
    }

    /// Adds or replaces data store `name` (already lower-case). The first data store
    /// registered becomes the current one.
    pub fn insert(&self, name: String, schema: Arc<DatastoreSchema>) {
        write(&self.datastores).insert(name.clone(), schema);
        let mut current = write(&self.current);
        if current.is_none() {
            *current = Some(name);
        }
    }

    /// Removes data store `name`; when it was current, no data store is current afterwards.
    pub fn remove(&self, name: &str) -> bool {
        let removed = write(&self.datastores).remove(name).is_some();
        let mut current = write(&self.current);
        if current.as_deref() == Some(name) {
            *current = None;
        }
        removed
    }

    /// Makes `name` the current data store; false when it is not registered.
    pub fn set_current(&self, name: &str) -> bool {
        if read(&self.datastores).contains_key(name) {
            *write(&self.current) = Some(name.to_string());
            true
        } else {
            false
        }
    }

    pub fn current(&self) -> Option<String> {
        read(&self.current).clone()
    }

    pub fn names(&self) -> Vec<String> {
        read(&self.datastores).keys().cloned().collect()
    }

    /// The data store `name`, where the alias `database` means the current one.
    pub fn get(&self, name: &str) -> Option<Arc<DatastoreSchema>> {
        let datastores = read(&self.datastores);
        if let Some(schema) = datastores.get(name) {
            return Some(Arc::clone(schema));
        }
        if name == DATASTORE_ALIAS {
            let current = self.current()?;
            return datastores.get(&current).cloned();
        }
        None
    }
}

impl CatalogProvider for FhirlakeCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    /// Real data stores and system schemas: the alias would list every table twice.
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.names();
        names.extend(read(&self.system).keys().cloned());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match self.get(name) {
            Some(s) => Some(s as Arc<dyn SchemaProvider>),
            None => read(&self.system).get(name).cloned(),
        }
    }
}
