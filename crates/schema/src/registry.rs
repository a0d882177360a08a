//! The embedded schema set: every committed `schemas/<Type>.json`, parsed on first use.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use super::ResourceSchema;

// `EMBEDDED_SCHEMAS: &[(&str, &str)]`, (resource type, schema JSON), written by build.rs.
include!(concat!(env!("OUT_DIR"), "/embedded_schemas.rs"));

/// Errors looking up a resource type's schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The name is not an R4 resource type.
    #[error("'{0}' is not a FHIR R4 resource type")]
    UnknownType(String),
    /// The embedded schema file does not parse: a build defect, not a user error.
    #[error("embedded schema for {0} is corrupt: {1}")]
    Corrupt(String, serde_json::Error),
}

/// All resource schemas known to this build, keyed by resource type.
pub struct Registry {
    entries: BTreeMap<&'static str, (&'static str, OnceLock<Arc<ResourceSchema>>)>,
}

impl Registry {
    /// The registry of the schemas embedded in this binary.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(|| Registry {
            entries: EMBEDDED_SCHEMAS
                .iter()
                .map(|(name, json)| (*name, (*json, OnceLock::new())))
                .collect(),
        })
    }

    /// Resource type names in alphabetical order.
    pub fn resource_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.keys().copied()
    }

    /// True when `name` is exactly an R4 resource type.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The canonical type name matching `name` case-insensitively (`observation` -> `Observation`).
    pub fn canonical_name(&self, name: &str) -> Option<&'static str> {
        self.entries
            .keys()
            .copied()
            .find(|k| k.eq_ignore_ascii_case(name))
    }

    /// The schema of `resource_type` (exact name).
    pub fn get(&self, resource_type: &str) -> Result<Arc<ResourceSchema>, SchemaError> {
        let (json, cell) = self
            .entries
            .get(resource_type)
            .ok_or_else(|| SchemaError::UnknownType(resource_type.to_string()))?;
        if let Some(schema) = cell.get() {
            return Ok(schema.clone());
        }
        let parsed: ResourceSchema = serde_json::from_str(json)
            .map_err(|e| SchemaError::Corrupt(resource_type.to_string(), e))?;
        Ok(cell.get_or_init(|| Arc::new(parsed)).clone())
    }
}
