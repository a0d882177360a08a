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

#[derive(Debug, Default)]
struct CatalogState {
    datastores: BTreeMap<String, Arc<DatastoreSchema>>,
    current: Option<String>,
}

/// The catalog holding every registered data store.
#[derive(Debug, Default)]
pub(crate) struct FhirlakeCatalog {
    state: RwLock<CatalogState>,
}

impl FhirlakeCatalog {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CatalogState> {
        // A panic while holding the lock cannot leave the maps half-updated (every update is a
        // single insert/assignment), so a poisoned lock is still consistent.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CatalogState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces data store `name` (already lower-case). The first data store
    /// registered becomes the current one.
    pub fn insert(&self, name: String, schema: Arc<DatastoreSchema>) {
        let mut state = self.write();
        state.datastores.insert(name.clone(), schema);
        if state.current.is_none() {
            state.current = Some(name);
        }
    }

    /// Removes data store `name`; when it was current, no data store is current afterwards.
    pub fn remove(&self, name: &str) -> bool {
        let mut state = self.write();
        let removed = state.datastores.remove(name).is_some();
        if state.current.as_deref() == Some(name) {
            state.current = None;
        }
        removed
    }

    /// Makes `name` the current data store; false when it is not registered.
    pub fn set_current(&self, name: &str) -> bool {
        let mut state = self.write();
        if state.datastores.contains_key(name) {
            state.current = Some(name.to_string());
            true
        } else {
            false
        }
    }

    pub fn current(&self) -> Option<String> {
        self.read().current.clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().datastores.keys().cloned().collect()
    }

    /// The data store `name`, where the alias `database` means the current one.
    pub fn get(&self, name: &str) -> Option<Arc<DatastoreSchema>> {
        let state = self.read();
        if let Some(schema) = state.datastores.get(name) {
            return Some(Arc::clone(schema));
        }
        if name == DATASTORE_ALIAS {
            let current = state.current.as_ref()?;
            return state.datastores.get(current).cloned();
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
