//! Offline generators: everything under `schemas/` comes from the official FHIR R4 definitions
//! (`profiles-resources.json`, `profiles-types.json`, `search-parameters.json`, the Patient
//! CompartmentDefinition) through this crate, and is committed. The libraries only embed the
//! output, so they never compile these generators or need the definitions at run time.

pub mod compartment;
pub mod schema;
pub mod search;
