//! fhirlake's front ends and the jobs behind them: the FHIR REST API ([`api`]), HealthLake's
//! control plane ([`control`]), Arrow Flight SQL ([`flight`]), NDJSON import ([`ingest`]) and
//! Bulk Data export ([`export`]), all over one [`installation`] (the resource store and the
//! lake of a data directory) and, while serving, one [`registry`] of live data stores.

pub mod api;
pub mod audit;
pub mod auth;
pub mod control;
pub mod export;
pub mod flight;
pub mod ingest;
pub mod installation;
pub mod limits;
pub mod operation_name;
pub mod origin;
pub mod registry;
pub mod tls;

/// Selects rustls' process-wide crypto provider (ring) before any TLS is set up; idempotent.
///
/// Two providers are compiled in (ring for tonic and object_store, aws-lc-rs through opendal's
/// HTTP client), and rustls then refuses to choose one itself: without this, the Flight SQL
/// TLS listener and object_store's HTTPS client (S3 job locations) panic on first use.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
