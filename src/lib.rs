//! fhirlake: an analytics-first FHIR R4 lakehouse.
//!
//! Data flows one way: [`ingest`] validates and versions resources into the [`store`], the
//! [`lake`] committer turns store changes into Iceberg commits, and [`sql`] serves the tables.
//! Each layer is a crate of the workspace (`crates/`); this crate is the `fhirlake` command
//! ([`cli`]: the SQL REPL and its output) and names the layers under one roof.

pub mod cli;

pub use fhirlake_lake as lake;
pub use fhirlake_lake::s3;
pub use fhirlake_schema as schema;
pub use fhirlake_schema::outcome;
pub use fhirlake_search as search;
pub use fhirlake_server::{
    api, audit, auth, control, export, flight, ingest, install_tls_provider, installation, limits,
    operation_name, origin, registry, tls,
};
pub use fhirlake_sql as sql;
pub use fhirlake_store as store;
