//! fhirlake: an analytics-first FHIR R4 lakehouse.
//!
//! Data flows one way: [`ingest`] validates and versions resources into the [`store`], the
//! [`lake`] committer turns store changes into Iceberg commits, and [`sql`] serves the tables.

pub mod api;
pub mod cli;
pub mod control;
pub mod export;
pub mod flight;
pub mod ingest;
pub mod installation;
pub mod lake;
pub mod outcome;
pub mod s3;
pub mod schema;
pub mod search;
pub mod sql;
pub mod store;

/// Selects rustls' process-wide crypto provider (ring) before any TLS is set up; idempotent.
///
/// Two providers are compiled in (ring for tonic and object_store, aws-lc-rs through opendal's
/// HTTP client), and rustls then refuses to choose one itself: without this, the Flight SQL
/// TLS listener and object_store's HTTPS client (S3 job locations) panic on first use.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
