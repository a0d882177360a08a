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
