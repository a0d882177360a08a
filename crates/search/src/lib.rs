//! FHIR search, compiled to DataFusion plans over the lake tables.
//!
//! The catalogue ([`catalog`]) holds every R4 search parameter resolved to column paths at
//! generation time (by the `fhirlake-gen` tool). A request's parameters are parsed into criteria
//! ([`query`]), each criterion becomes a filter evaluated directly on the nested Arrow
//! columns ([`eval`]), and [`execute`] runs the plan against one Iceberg snapshot so that
//! paging is stable under concurrent writes.

pub mod catalog;
pub mod compartment;
pub mod fhirpath;

pub use catalog::{Catalog, ParamType, SearchParam};
pub mod eval;
pub mod execute;
pub mod query;
pub mod value;

pub use execute::{ExecError, SearchPage, Searcher};
pub use query::{SearchError, SearchRequest};
