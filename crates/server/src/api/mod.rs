//! The FHIR R4 REST API (`fhirlake serve`): CRUD, versions, history, batch/transaction
//! Bundles and the capability statement, per data store at `/datastore/{id}/r4/`.
//!
//! Writes go to the resource store in one transaction each and reach the Iceberg tables
//! through one [`BackgroundSync`] per data store, so SQL sees them within about a second.
//! See `docs/rest-api.md` for the endpoints and the decisions where FHIR leaves a choice.

pub mod bundle;
pub mod bundle_out;
pub mod capability;
pub mod context;
mod detach;
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
use fhirlake_lake::LakeError;
use fhirlake_lake::background::{BackgroundSync, SyncHandle};
use fhirlake_lake::sync::BatchLimits;
use fhirlake_search::Searcher;
use fhirlake_store::{Datastore, StoreError};

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

/// A served data store with its lake sync handle and searcher.
struct Served {
    ds: Arc<Datastore>,
    sync: SyncHandle,
    searcher: Arc<Searcher>,
}

struct StateInner {
    installation: Installation,
    /// Served data stores by id; the control plane adds and removes them while serving.
    served: std::sync::RwLock<HashMap<String, Arc<Served>>>,
    config: ApiConfig,
    /// `host:port` for absolute URLs when a request has no Host header.
    default_host: String,
    /// The background lake sync of each served data store, shut down (flushed) by
    /// [`Server::run`] or when the data store stops being served.
    syncs: std::sync::Mutex<Vec<(Arc<Datastore>, BackgroundSync)>>,
}

impl ApiState {
    /// Loads the installation's data stores (creating the default one if there is none).
    pub async fn new(
        installation: Installation,
        config: ApiConfig,
        default_host: String,
    ) -> Result<Self, ServeError> {
        installation.datastore(None).await?;
        let state = Self::detached(installation, config, default_host).await?;
        for ds in state.inner.installation.store.list_datastores().await? {
            if ds.status.is_served() {
                state.serve_datastore(ds);
            }
        }
        Ok(state)
    }

    /// A state serving no data store yet: for in-process control-plane commands, which
    /// serve only the data stores they create (so their lake sync runs) and must not start
    /// syncs for the others, which a running server may be syncing. Creates no data store
    /// (`datastore create --name x` on a fresh installation makes `x` and nothing else).
    pub async fn detached(
        installation: Installation,
        config: ApiConfig,
        default_host: String,
    ) -> Result<Self, ServeError> {
        Ok(Self {
            inner: Arc::new(StateInner {
                installation,
                served: Default::default(),
                config,
                default_host,
                syncs: Default::default(),
            }),
        })
    }

    /// Stops every lake sync after a final commit of pending changes; the first failure is
    /// returned after all were tried.
    pub async fn flush(&self) -> Result<(), ServeError> {
        // Taken only now: data stores created while serving have syncs too.
        let syncs: Vec<(Arc<Datastore>, BackgroundSync)> =
            std::mem::take(&mut *self.inner.syncs.lock().unwrap_or_else(|e| e.into_inner()));
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
        first_error.map_or(Ok(()), Err)
    }

    /// Starts serving `ds` (its FHIR endpoint, lake sync and search); replaces an earlier
    /// registration of the same id.
    pub fn serve_datastore(&self, ds: Datastore) {
        let inst = &self.inner.installation;
        let ds = Arc::new(ds);
        let sync = BackgroundSync::spawn(
            inst.store.clone(),
            inst.lake.clone(),
            (*ds).clone(),
            self.inner.config.sync_interval,
            BatchLimits::default(),
        );
        let served = Arc::new(Served {
            ds: ds.clone(),
            sync: sync.handle(),
            searcher: Arc::new(Searcher::new(
                inst.store.clone(),
                inst.lake.clone(),
                &ds.id,
                &ds.name,
            )),
        });
        self.inner
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ds.id.clone(), served);
        self.inner
            .syncs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ds, sync));
    }

    /// Stops serving data store `id`: its endpoint answers 404 from now on, and its pending
    /// changes are flushed to the lake.
    pub async fn stop_serving(&self, id: &str) -> Result<(), LakeError> {
        self.inner
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let sync = {
            let mut syncs = self.inner.syncs.lock().unwrap_or_else(|e| e.into_inner());
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

    fn served(&self, id: &str) -> Option<Arc<Served>> {
        self.inner
            .served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The lake sync of data store `id`.
    pub fn sync_handle(&self, id: &str) -> Option<SyncHandle> {
        self.served(id).map(|s| s.sync.clone())
    }

    /// The searcher of data store `id`.
    pub fn searcher(&self, id: &str) -> Option<Arc<Searcher>> {
        self.served(id).map(|s| s.searcher.clone())
    }

    pub fn installation(&self) -> &Installation {
        &self.inner.installation
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// The served data store with this id.
    pub fn datastore(&self, id: &str) -> Option<Arc<Datastore>> {
        self.served(id).map(|s| s.ds.clone())
    }

    /// Served data stores, oldest first.
    pub fn datastores(&self) -> Vec<Arc<Datastore>> {
        let mut all: Vec<_> = self
            .inner
            .served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.ds.clone())
            .collect();
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
    /// More routes served next to the FHIR API (the control plane).
    extra: Vec<Router>,
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
            extra: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &ApiState {
        &self.state
    }

    /// Serves `routes` next to the FHIR API (paths must not overlap).
    pub fn add_routes(&mut self, routes: Router) {
        self.extra.push(routes);
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
        let state = self.state.clone();
        let writes = tokio_util::task::TaskTracker::new();
        let app = self
            .extra
            .into_iter()
            .fold(router(self.state), |app, extra| app.merge(extra))
            .layer(axum::middleware::from_fn_with_state(
                writes.clone(),
                detach::run_to_completion,
            ));
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        // Writes whose clients left are still running on their own tasks.
        writes.close();
        writes.wait().await;
        tracing::info!("HTTP server stopped; flushing the lake");
        let flushed = state.flush().await;
        served?;
        flushed
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
