//! The Arrow Flight SQL endpoint (`fhirlake serve --flight-sql ADDR`).
//!
//! ADBC, the Flight SQL JDBC driver and any other Flight SQL client reach the same tables,
//! dialect, functions and read-only policy as the REPL: every statement goes through
//! [`fhirlake_sql::SqlEngine`]. What this module adds is the protocol (arrow-flight's
//! [`FlightSqlService`](arrow_flight::sql::server::FlightSqlService) trait, implemented in
//! [`service`]), authentication ([`auth`]), per-query limits, cancellation and per-connection
//! data store selection (`state`).
//!
//! Choosing a data store: the `x-fhirlake-datastore` call header (a connection property in
//! ADBC and JDBC), or `USE name` in a session kept by cookie; otherwise the installation's
//! default data store. Qualified names (`research.patient`) work everywhere.

mod access;
mod audit;
pub mod auth;
mod metadata;
pub mod service;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use auth::{AuthConfig, Authenticator};
pub use service::{DATASTORE_HEADER, FhirlakeFlightSql, SESSION_COOKIE, ServiceConfig};

use crate::registry::Registry;
use fhirlake_sql::{QueryLimits, SqlError};
use fhirlake_store::StoreError;

/// Settings of the Flight SQL endpoint.
#[derive(Debug, Clone)]
pub struct FlightSqlConfig {
    /// Address to listen on; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Required credentials; none means open, which only a loopback address allows.
    pub auth: AuthConfig,
    /// PEM certificate chain and private key to serve TLS (`grpc+tls://`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Most memory one query's operators may hold.
    pub memory_limit: Option<usize>,
    /// Longest one query may run.
    pub timeout: Option<Duration>,
    /// The REST API's origin: SMART data stores' access tokens name its endpoints, so with
    /// it Flight SQL accepts them ([`access`]).
    pub http_origin: Option<crate::origin::HttpOrigin>,
}

impl Default for FlightSqlConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            auth: AuthConfig::default(),
            tls: None,
            memory_limit: Some(2 << 30),
            timeout: Some(Duration::from_secs(600)),
            http_origin: None,
        }
    }
}

/// Errors starting or running the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum FlightSqlError {
    #[error(
        "refusing to serve Flight SQL on {0} without authentication: set a token \
         (--flight-sql-token) or a user and password (--flight-sql-user/--flight-sql-password), \
         or listen on a loopback address"
    )]
    Unauthenticated(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot read TLS file {}: {source}", path.display())]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Flight SQL server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sql(#[from] SqlError),
}

/// A bound, not yet running Flight SQL endpoint.
pub struct FlightSqlServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
    service: FhirlakeFlightSql,
}

impl FlightSqlServer {
    /// Serves the data stores of `registry` on `config.addr`.
    pub async fn bind(registry: Registry, config: FlightSqlConfig) -> Result<Self, FlightSqlError> {
        if !config.addr.ip().is_loopback() && !config.auth.is_enabled() {
            return Err(FlightSqlError::Unauthenticated(config.addr));
        }
        let tls = match &config.tls {
            None => None,
            Some((cert, key)) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| FlightSqlError::TlsFile {
                        path: path.clone(),
                        source,
                    })
                };
                crate::install_tls_provider();
                Some(ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?)))
            }
        };
        let default = registry
            .installation()
            .datastore(None)
            .await
            .map(|d| d.name.to_lowercase())
            .unwrap_or_default();
        let service = FhirlakeFlightSql::new(
            registry,
            default,
            Authenticator::new(config.auth.clone()),
            ServiceConfig {
                limits: QueryLimits {
                    memory_bytes: config.memory_limit,
                },
                timeout: config.timeout,
                http_origin: config.http_origin.clone(),
            },
        );
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|e| FlightSqlError::Bind(config.addr, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| FlightSqlError::Bind(config.addr, e))?;
        Ok(Self {
            listener,
            local_addr,
            tls,
            service,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URI clients connect to (`grpc://127.0.0.1:50051`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() {
            "grpc+tls"
        } else {
            "grpc"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), FlightSqlError> {
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        builder
            .add_service(FlightServiceServer::new(self.service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}
