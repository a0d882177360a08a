//! The live data stores of one process: each served data store with its lake sync, its
//! searcher and its SQL tables.
//!
//! One registry sits under every front end (the REST API, the control plane, Flight SQL and
//! the CLI's control commands), so a data store the control plane activates or deletes
//! appears in or disappears from all of them at once, and every front end names a data store
//! the same way (its id, the name it was created with, or its SQL name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use fhirlake_lake::LakeError;
use fhirlake_lake::background::{BackgroundSync, SyncHandle};
use fhirlake_lake::provider::LakeTable;
use fhirlake_lake::sync::BatchLimits;
use fhirlake_search::Searcher;
use fhirlake_sql::{SqlEngine, SqlError};
use fhirlake_store::{Datastore, StoreError};

use crate::audit::{AUDIT_DIR, AuditError, AuditLog, WriterConfig, table as audit_table};
use crate::auth::DatastoreAuth;
use crate::auth::config::ConfigError;
use crate::installation::Installation;

/// Errors activating data stores or flushing their lake syncs.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("data store '{datastore}' cannot be queried with SQL: {source}")]
    Sql { datastore: String, source: SqlError },
    #[error("data store '{datastore}' has an unusable identity configuration: {source}")]
    Identity {
        datastore: String,
        source: ConfigError,
    },
    #[error("final lake sync of data store '{datastore}' failed: {source}")]
    FinalSync {
        datastore: String,
        source: Box<LakeError>,
    },
}

/// A served data store: the state every front end needs to answer for it.
pub struct Live {
    pub ds: Arc<Datastore>,
    /// Its background lake sync (`catch_up` makes earlier writes visible to SQL and search).
    pub sync: SyncHandle,
    pub searcher: Arc<Searcher>,
    /// Who may call it: its identity provider configuration (immutable after creation).
    pub auth: Arc<DatastoreAuth>,
}

/// The registry; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    installation: Installation,
    sync_interval: Duration,
    /// Live data stores by id.
    live: RwLock<HashMap<String, Arc<Live>>>,
    /// The lake sync of each live data store, shut down (flushed) by [`Registry::flush`] or
    /// when the data store is deactivated.
    syncs: Mutex<Vec<(Arc<Datastore>, BackgroundSync)>>,
    /// Every live data store's tables; per-data-store engines share its registrations.
    sql: SqlEngine,
    /// One engine per SQL name whose current data store is that one.
    engines: Mutex<HashMap<String, Arc<SqlEngine>>>,
    /// The audit log, once a server enabled it ([`Registry::enable_audit`]).
    audit: Mutex<Option<AuditLog>>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Every update is one map operation, so a poisoned map is still consistent.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// A registry serving every data store of `installation` that is ACTIVE, each with a
    /// lake sync committing its changes every `sync_interval`.
    pub async fn open(
        installation: Installation,
        sync_interval: Duration,
    ) -> Result<Self, RegistryError> {
        let registry = Self::empty(installation, sync_interval)?;
        for ds in registry.installation().store.list_datastores().await? {
            if ds.status.is_served() {
                registry.activate(ds).await?;
            }
        }
        Ok(registry)
    }

    /// A registry serving no data store yet: for in-process control-plane commands, which
    /// serve only the data stores they create (so their lake sync runs) and must not start
    /// syncs for the others, which a running server may be syncing.
    pub fn empty(
        installation: Installation,
        sync_interval: Duration,
    ) -> Result<Self, RegistryError> {
        let sql = SqlEngine::new().map_err(|source| RegistryError::Sql {
            datastore: String::new(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                installation,
                sync_interval,
                live: Default::default(),
                syncs: Default::default(),
                sql,
                engines: Default::default(),
                audit: Default::default(),
            }),
        })
    }

    pub fn installation(&self) -> &Installation {
        &self.inner.installation
    }

    /// The audit log every front end appends to, if this process keeps one.
    pub fn audit(&self) -> Option<AuditLog> {
        lock(&self.inner.audit).clone()
    }

    /// Opens the installation's audit log (once; later calls return the same one) and makes
    /// it SQL's `fhirlake_audit.log`. Servers call this; CLI commands do not, so one process
    /// at a time extends the chain.
    pub fn enable_audit(&self) -> Result<AuditLog, AuditError> {
        let mut audit = lock(&self.inner.audit);
        if let Some(log) = audit.as_ref() {
            return Ok(log.clone());
        }
        let data_dir = &self.inner.installation.data_dir;
        let log = AuditLog::open(&data_dir.join(AUDIT_DIR), WriterConfig::default())?;
        if let Err(e) = audit_table::register(&self.inner.sql, data_dir) {
            tracing::warn!("the audit log is not queryable with SQL: {e}");
        }
        *audit = Some(log.clone());
        Ok(log)
    }

    /// How often each live data store's changes are committed to the lake.
    pub fn sync_interval(&self) -> Duration {
        self.inner.sync_interval
    }

    /// Starts serving `ds` everywhere: its lake sync, its searcher and its SQL tables.
    /// Replaces an earlier activation of the same id. A data store whose identity
    /// configuration cannot be read is not served (fail closed).
    pub async fn activate(&self, ds: Datastore) -> Result<(), RegistryError> {
        let inst = &self.inner.installation;
        let properties = inst.store.datastore_properties(&ds.id).await?;
        let auth = DatastoreAuth::from_properties(&properties).map_err(|source| {
            RegistryError::Identity {
                datastore: ds.name.clone(),
                source,
            }
        })?;
        self.inner
            .sql
            .register_datastore_lazy(&ds.name, LakeTable::factories(&inst.lake, &ds.name))
            .map_err(|source| RegistryError::Sql {
                datastore: ds.name.clone(),
                source,
            })?;
        let ds = Arc::new(ds);
        let sync = BackgroundSync::spawn(
            inst.store.clone(),
            inst.lake.clone(),
            (*ds).clone(),
            self.inner.sync_interval,
            BatchLimits::default(),
        );
        let searcher = Searcher::new(inst.store.clone(), inst.lake.clone(), &ds.id, &ds.name);
        let live = Arc::new(Live {
            ds: ds.clone(),
            sync: sync.handle(),
            searcher: Arc::new(searcher),
            auth: Arc::new(auth),
        });
        write(&self.inner.live).insert(ds.id.clone(), live);
        lock(&self.inner.syncs).push((ds, sync));
        Ok(())
    }

    /// Stops serving data store `id`: every front end answers "not found" for it from now on,
    /// and its pending changes are flushed to the lake.
    pub async fn deactivate(&self, id: &str) -> Result<(), LakeError> {
        if let Some(live) = write(&self.inner.live).remove(id) {
            let name = live.ds.name.to_lowercase();
            self.inner.sql.deregister_datastore(&name);
            lock(&self.inner.engines).remove(&name);
        }
        let sync = {
            let mut syncs = lock(&self.inner.syncs);
            syncs
                .iter()
                .position(|(ds, _)| ds.id == id)
                .map(|i| syncs.remove(i).1)
        };
        match sync {
            Some(sync) => sync.shutdown().await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Stops every lake sync after a final commit of pending changes; the first failure is
    /// returned after all were tried.
    pub async fn flush(&self) -> Result<(), RegistryError> {
        // Taken only now: data stores activated while serving have syncs too.
        let syncs = std::mem::take(&mut *lock(&self.inner.syncs));
        let mut first_error = None;
        for (ds, sync) in syncs {
            if let Err(source) = sync.shutdown().await {
                tracing::error!(datastore = %ds.name, "final lake sync failed: {source}");
                first_error.get_or_insert(RegistryError::FinalSync {
                    datastore: ds.name.clone(),
                    source: Box::new(source),
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The live data store with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Live>> {
        read(&self.inner.live).get(id).cloned()
    }

    /// The live data store a user named: by id, by the name it was created with, or by its
    /// SQL name (case-insensitively).
    pub fn resolve(&self, reference: &str) -> Option<Arc<Live>> {
        let live = read(&self.inner.live);
        if let Some(l) = live.get(reference) {
            return Some(l.clone());
        }
        live.values()
            .find(|l| {
                l.ds.display_name.as_deref() == Some(reference)
                    || l.ds.name.eq_ignore_ascii_case(reference)
            })
            .cloned()
    }

    /// Live data stores, oldest first.
    pub fn datastores(&self) -> Vec<Arc<Datastore>> {
        let mut all: Vec<_> = read(&self.inner.live)
            .values()
            .map(|l| l.ds.clone())
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.name).cmp(&(&b.created_at, &b.name)));
        all
    }

    /// The SQL engine whose current data store is the one `reference` names, with that data
    /// store's SQL name; unknown names fail with [`SqlError::UnknownDatastore`].
    pub fn sql_engine(&self, reference: &str) -> Result<(String, Arc<SqlEngine>), SqlError> {
        let name = self
            .resolve(reference)
            .map(|l| l.ds.name.to_lowercase())
            .unwrap_or_else(|| reference.to_lowercase());
        let mut engines = lock(&self.inner.engines);
        if let Some(engine) = engines.get(&name) {
            return Ok((name, Arc::clone(engine)));
        }
        let engine = Arc::new(self.inner.sql.for_datastore(&name)?);
        engines.insert(name.clone(), Arc::clone(&engine));
        Ok((name, engine))
    }

    /// The SQL engine over every live data store (catalog listings, qualified names).
    pub fn sql(&self) -> &SqlEngine {
        &self.inner.sql
    }
}
