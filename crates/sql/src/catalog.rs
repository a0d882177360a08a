//! The `fhirlake` SQL catalog: one schema per data store, one table per resource type.
//!
//! Athena shows each HealthLake data store as a database whose tables are the resource types.
//! The guide's example queries write `FROM database.patient`, with `database` standing for the
//! data store's name; the catalog resolves the schema name `database` to the current data
//! store so those queries run verbatim. A data store really named `database` takes precedence.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::Result as DFResult;

use super::lowercase::LowercaseTable;

/// Schema name that always resolves to the current data store.
pub const DATASTORE_ALIAS: &str = "database";

/// One resource-type table of a data store, as SQL sees it.
#[derive(Debug)]
pub(crate) struct DatastoreTable {
    /// FHIR resource type as registered (`MedicationRequest`).
    pub resource_type: String,
    /// The lower-case view registered under the lower-case type name.
    pub table: Arc<LowercaseTable>,
}

/// The tables of one data store, fixed at registration (re-registering replaces the schema).
#[derive(Debug)]
pub(crate) struct DatastoreSchema {
    /// Lower-case table name -> table.
    pub tables: BTreeMap<String, DatastoreTable>,
}

impl DatastoreSchema {
    /// The SQL-visible Arrow schema of every table, in name order.
    pub fn table_schemas(&self) -> impl Iterator<Item = (&str, &DatastoreTable, SchemaRef)> {
        self.tables
            .iter()
            .map(|(name, t)| (name.as_str(), t, t.table.schema()))
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
        Ok(self
            .tables
            .get(name)
            .map(|t| Arc::clone(&t.table) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

/// The registered data stores, shared by every engine opened from the same root engine.
type DatastoreMap = Arc<RwLock<BTreeMap<String, Arc<DatastoreSchema>>>>;

/// The catalog holding every registered data store, with this engine's current one.
///
/// The data store map is shared between engines made with [`FhirlakeCatalog::view`], so a
/// server can give each connection its own current data store while registering tables once.
#[derive(Debug, Default)]
pub(crate) struct FhirlakeCatalog {
    datastores: DatastoreMap,
    current: RwLock<Option<String>>,
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
        }
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

    /// Real data stores only: the alias would list every table twice.
    fn schema_names(&self) -> Vec<String> {
        self.names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.get(name).map(|s| s as Arc<dyn SchemaProvider>)
    }
}
