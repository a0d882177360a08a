//! The FHIR R4 REST API (`fhirlake serve`): CRUD, versions, history, batch/transaction
//! Bundles and the capability statement, per data store at `/datastore/{id}/r4/`.
//!
//! Writes go to the resource store in one transaction each and reach the Iceberg tables
//! through one [`BackgroundSync`] per data store, so SQL sees them within about a second.
//! See `docs/rest-api.md` for the endpoints and the decisions where FHIR leaves a choice.

pub mod bundle;
pub mod capability;
pub mod error;
pub mod format;
pub mod interactions;
pub mod json;
pub mod lake_status;
mod routes;
pub mod search;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::installation::{Installation, InstallationError};
use crate::lake::LakeError;
use crate::lake::background::{BackgroundSync, SyncHandle};
use crate::lake::sync::BatchLimits;
use crate::search::Searcher;
use crate::store::{Datastore, StoreError};

pub use error::ApiError;

/// Tunables of the REST server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Most entries in a batch or transaction Bundle (HealthLake's quota is 160).
    pub max_bundle_entries: usize,
    /// How often each data store's changes are committed to the lake.
    pub sync_interval: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 16 << 20,
            max_bundle_entries: 160,
            sync_interval: Duration::from_millis(500),
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Installation(#[from] InstallationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("final lake sync of data store '{datastore}' failed: {source}")]
    FinalSync {
        datastore: String,
        source: LakeError,
    },
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

struct StateInner {
    installation: Installation,
    /// Served data stores by id, fixed at start (a data store created later needs a restart).
    datastores: HashMap<String, Arc<Datastore>>,
    config: ApiConfig,
    /// `host:port` for absolute URLs when a request has no Host header.
    default_host: String,
    /// Per data store: its lake sync (taken by [`Server::run`] to shut it down), a handle
    /// to flush it, and its searcher.
    syncs: std::sync::Mutex<Vec<(Arc<Datastore>, BackgroundSync)>>,
    sync_handles: HashMap<String, SyncHandle>,
    searchers: HashMap<String, Searcher>,
}

impl ApiState {
    /// Loads the installation's data stores (creating the default one if there is none).
    pub async fn new(
        installation: Installation,
        config: ApiConfig,
        default_host: String,
    ) -> Result<Self, ServeError> {
        installation.datastore(None).await?;
        let datastores: HashMap<String, Arc<Datastore>> = installation
            .store
            .list_datastores()
            .await?
            .into_iter()
            .map(|ds| (ds.id.clone(), Arc::new(ds)))
            .collect();
        let mut syncs = Vec::new();
        let mut sync_handles = HashMap::new();
        let mut searchers = HashMap::new();
        for ds in datastores.values() {
            let sync = BackgroundSync::spawn(
                installation.store.clone(),
                installation.lake.clone(),
                (**ds).clone(),
                config.sync_interval,
                BatchLimits::default(),
            );
            sync_handles.insert(ds.id.clone(), sync.handle());
            searchers.insert(
                ds.id.clone(),
                Searcher::new(
                    installation.store.clone(),
                    installation.lake.clone(),
                    &ds.id,
                    &ds.name,
                ),
            );
            syncs.push((ds.clone(), sync));
        }
        Ok(Self {
            inner: Arc::new(StateInner {
                installation,
                datastores,
                config,
                default_host,
                syncs: std::sync::Mutex::new(syncs),
                sync_handles,
                searchers,
            }),
        })
    }

    /// The lake sync of data store `id`.
    pub fn sync_handle(&self, id: &str) -> Option<&SyncHandle> {
        self.inner.sync_handles.get(id)
    }

    /// The searcher of data store `id`.
    pub fn searcher(&self, id: &str) -> Option<&Searcher> {
        self.inner.searchers.get(id)
    }

    pub fn installation(&self) -> &Installation {
        &self.inner.installation
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// The served data store with this id.
    pub fn datastore(&self, id: &str) -> Option<&Arc<Datastore>> {
        self.inner.datastores.get(id)
    }

    /// Served data stores, oldest first.
    pub fn datastores(&self) -> Vec<Arc<Datastore>> {
        let mut all: Vec<_> = self.inner.datastores.values().cloned().collect();
        all.sort_by(|a, b| (&a.created_at, &a.name).cmp(&(&b.created_at, &b.name)));
        all
    }

    pub(crate) fn default_host(&self) -> &str {
        &self.inner.default_host
    }
}

/// The FHIR router over `state` (without the listener; see [`Server`]).
pub fn router(state: ApiState) -> Router {
    routes::router(state)
}

/// A bound, not yet running server.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: ApiState,
    local_addr: SocketAddr,
}

impl Server {
    /// Opens the data stores and binds `addr` (port 0 picks a free port).
    pub async fn bind(
        installation: Installation,
        addr: SocketAddr,
        config: ApiConfig,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Bind(addr, e))?;
        let local_addr = listener.local_addr()?;
        let state = ApiState::new(installation, config, local_addr.to_string()).await?;
        Ok(Self {
            listener,
            state,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &ApiState {
        &self.state
    }

    /// Each served data store with its full FHIR base URL (`http://…/datastore/<id>/r4/`).
    pub fn base_urls(&self) -> Vec<(Arc<Datastore>, String)> {
        self.state
            .datastores()
            .into_iter()
            .map(|ds| {
                let url = format!("http://{}/datastore/{}/r4/", self.local_addr, ds.id);
                (ds, url)
            })
            .collect()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish and flushes
    /// every data store's changes into the lake.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let syncs: Vec<(Arc<Datastore>, BackgroundSync)> =
            std::mem::take(&mut *self.state.inner.syncs.lock().expect("sync list lock"));
        let app = router(self.state);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        tracing::info!("HTTP server stopped; flushing the lake");
        let mut first_error = None;
        for (ds, sync) in syncs {
            if let Err(source) = sync.shutdown().await {
                tracing::error!(datastore = %ds.name, "final lake sync failed: {source}");
                first_error.get_or_insert(ServeError::FinalSync {
                    datastore: ds.name.clone(),
                    source,
                });
            }
        }
        served?;
        first_error.map_or(Ok(()), Err)
    }
}

/// Binds `addr`, prints each data store's base URL on stdout, and serves until `shutdown`
/// (for example [`shutdown_signal`]); see [`Server::run`].
pub async fn serve(
    installation: Installation,
    addr: SocketAddr,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let server = Server::bind(installation, addr, config).await?;
    for (ds, url) in server.base_urls() {
        println!("FHIR R4 base URL of data store '{}': {url}", ds.name);
    }
    server.run(shutdown).await
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
