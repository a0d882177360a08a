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
mod immutable;
pub mod interactions;
pub mod json;
pub mod lake_status;
mod routes;
pub mod search;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use crate::auth::sigv4::AccessKey;
use crate::installation::{Installation, InstallationError};
use crate::origin::HttpOrigin;
use crate::registry::{Live, Registry, RegistryError};
use crate::tls::TlsListener;
use fhirlake_store::{Datastore, StoreError};

pub use error::ApiError;

/// Tunables of the REST server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Most entries in a batch or transaction Bundle (HealthLake's quota is 160).
    pub max_bundle_entries: usize,
    /// How often each data store's changes are committed to the lake (the registry's
    /// interval when [`Server::bind`] opens it).
    pub sync_interval: Duration,
    /// The key AWS_AUTH data stores' requests must be signed with (SigV4).
    pub access_key: Option<AccessKey>,
    /// Whether AWS_AUTH data stores answer unsigned requests when there is no key (the
    /// server allows it on loopback, or off it with `--insecure`).
    pub open: bool,
    /// Request-rate quotas per data store and operation (`--quotas`, `--quota`); off by
    /// default, since a self-hosted server should not throttle unless asked.
    pub quotas: crate::limits::Quotas,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 16 << 20,
            max_bundle_entries: 160,
            sync_interval: Duration::from_millis(500),
            access_key: None,
            open: true,
            quotas: crate::limits::Quotas::off(),
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
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// Shared state of the handlers: the live data stores, the REST settings and the origin its
/// URLs name.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

struct StateInner {
    registry: Registry,
    config: ApiConfig,
    origin: HttpOrigin,
    /// Per-operation metrics and quota buckets (see [`crate::limits`]).
    limits: Arc<crate::limits::Limits>,
}

impl ApiState {
    pub fn new(registry: Registry, config: ApiConfig, origin: HttpOrigin) -> Self {
        Self {
            inner: Arc::new(StateInner {
                registry,
                limits: Arc::new(crate::limits::Limits::new(config.quotas.clone())),
                config,
                origin,
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn installation(&self) -> &Installation {
        self.inner.registry.installation()
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    pub fn origin(&self) -> &HttpOrigin {
        &self.inner.origin
    }

    pub fn limits(&self) -> &crate::limits::Limits {
        &self.inner.limits
    }

    /// The served data store with this id.
    pub fn datastore(&self, id: &str) -> Option<Arc<Live>> {
        self.inner.registry.get(id)
    }
}

/// The FHIR router over `state` (without the listener; see [`Server`]).
pub fn router(state: ApiState) -> Router {
    routes::router(state)
}

/// A bound, not yet running server.
pub struct Server {
    listener: tokio::net::TcpListener,
    /// Set when the listener serves TLS (its URLs then say `https`).
    tls: Option<Arc<rustls::ServerConfig>>,
    state: ApiState,
    local_addr: SocketAddr,
    /// More routes served next to the FHIR API (the control plane).
    extra: Vec<Router>,
}

impl Server {
    /// Serves the installation's data stores (creating the default one if there is none) on
    /// `addr` (port 0 picks a free port), with a registry of its own.
    pub async fn bind(
        installation: Installation,
        addr: SocketAddr,
        config: ApiConfig,
    ) -> Result<Self, ServeError> {
        installation.datastore(None).await?;
        let registry = Registry::open(installation, config.sync_interval).await?;
        Self::bind_registry(registry, addr, config).await
    }

    /// Serves the data stores of `registry`, which other front ends may share, on `addr`.
    pub async fn bind_registry(
        registry: Registry,
        addr: SocketAddr,
        config: ApiConfig,
    ) -> Result<Self, ServeError> {
        Self::bind_listener(registry, addr, config, None).await
    }

    /// Like [`Server::bind_registry`], but serves HTTPS only, with `tls` (see
    /// [`crate::tls::server_config`]); every URL the server hands out says `https`.
    pub async fn bind_registry_tls(
        registry: Registry,
        addr: SocketAddr,
        config: ApiConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Self, ServeError> {
        Self::bind_listener(registry, addr, config, Some(tls)).await
    }

    async fn bind_listener(
        registry: Registry,
        addr: SocketAddr,
        config: ApiConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Bind(addr, e))?;
        let local_addr = listener.local_addr()?;
        registry.enable_audit()?;
        let origin = match tls {
            Some(_) => HttpOrigin::https(local_addr.to_string()),
            None => HttpOrigin::new(local_addr.to_string()),
        };
        Ok(Self {
            listener,
            tls,
            state: ApiState::new(registry, config, origin),
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

    /// Each served data store with its full FHIR base URL (`http(s)://…/datastore/<id>/r4/`).
    pub fn base_urls(&self) -> Vec<(Arc<Datastore>, String)> {
        let origin = self.state.origin();
        self.state
            .registry()
            .datastores()
            .into_iter()
            .map(|ds| {
                let url = format!("{}/", origin.default_fhir_base(&ds.id));
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
                crate::limits::Tracker {
                    limits: state.inner.limits.clone(),
                    registry: state.registry().clone(),
                },
                crate::limits::track,
            ))
            // Inside the detach layer, so a write whose client left is recorded with its status.
            .layer(axum::middleware::from_fn_with_state(
                state.registry().audit(),
                crate::audit::http::record,
            ))
            .layer(axum::middleware::from_fn_with_state(
                writes.clone(),
                detach::run_to_completion,
            ));
        let served = match self.tls {
            None => serve_on(self.listener, app, shutdown).await,
            Some(tls) => serve_on(TlsListener::new(self.listener, tls)?, app, shutdown).await,
        };
        // Writes whose clients left are still running on their own tasks.
        writes.close();
        writes.wait().await;
        tracing::info!("HTTP server stopped; flushing the lake");
        let flushed = state.registry().flush().await;
        if let Some(audit) = state.registry().audit() {
            audit.flush().await;
        }
        served?;
        Ok(flushed?)
    }
}

/// Serves `app` on `listener` (plain TCP or [`TlsListener`]) until `shutdown`, then waits for
/// in-flight requests.
async fn serve_on<L>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    crate::audit::http::PeerAddr: for<'a> Connected<IncomingStream<'a, L>>,
{
    // The peer address reaches the audit log as `ConnectInfo<PeerAddr>`.
    let app = app.into_make_service_with_connect_info::<crate::audit::http::PeerAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
