//! The compiled search parameter catalogue.
//!
//! Generated from the official R4 `SearchParameter` definitions by [`super::generate`] and
//! committed as `schemas/search/parameters.json`; the binary embeds it. Each entry is one
//! `(resource type, code)` pair whose FHIRPath expression has been resolved to column paths of
//! the lake table, so a search never interprets FHIRPath at run time.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The embedded catalogue text.
const EMBEDDED: &str = include_str!("../../../schemas/search/parameters.json");

/// The search parameter types of FHIR R4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One navigation step below a column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Descend into a struct field (lists are traversed implicitly).
    Field(String),
    /// Keep only references whose target type is this resource type.
    Resolves(String),
    /// Keep only elements whose string child `element` equals `value`.
    Where { element: String, value: String },
}

/// A compiled path: a top-level column (absent for paths relative to a composite's element)
/// and the steps below it, ending at a value of FHIR type `fhir`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Path {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    pub fhir: String,
}

/// One component of a composite parameter, relative to the composite's element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub code: String,
    #[serde(rename = "type")]
    pub param_type: ParamType,
    pub paths: Vec<Path>,
}

/// A search parameter of one resource type, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchParam {
    /// The `SearchParameter.id` it came from (`Patient-name`, `clinical-patient`).
    pub id: String,
    pub code: String,
    #[serde(rename = "type")]
    pub param_type: ParamType,
    pub expression: String,
    pub paths: Vec<Path>,
    /// Allowed target types of a reference parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Component>,
}

/// A definition (or one base type of it) that did not compile, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsupported {
    pub id: String,
    pub resource_type: String,
    pub code: String,
    pub reason: String,
}

/// Counts reported by the generator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSummary {
    /// `SearchParameter` definitions read.
    pub definitions: usize,
    /// Definitions that compiled for every R4 resource type they apply to.
    pub compiled_definitions: usize,
    /// `(resource type, code)` pairs that compiled.
    pub compiled_parameters: usize,
    /// `(resource type, code)` pairs that did not.
    pub unsupported_parameters: usize,
}

/// The whole catalogue as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    pub fhir_version: String,
    pub summary: CatalogSummary,
    /// Parameters every resource type has (`_id`, `_lastUpdated`, `_tag`, ...).
    pub common: Vec<SearchParam>,
    /// Resource-specific parameters, by resource type.
    pub resources: std::collections::BTreeMap<String, Vec<SearchParam>>,
    pub unsupported: Vec<Unsupported>,
    /// Top-level elements of each type that `_summary=true` returns (`isSummary`), with
    /// choice elements as `value[x]`.
    pub summary_elements: std::collections::BTreeMap<String, Vec<String>>,
    /// Top-level elements of each type with a minimum cardinality of 1, which `_elements` and
    /// `_summary=text` always keep.
    pub mandatory_elements: std::collections::BTreeMap<String, Vec<String>>,
}

impl Catalog {
    /// The embedded catalogue, parsed once.
    pub fn global() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            serde_json::from_str(EMBEDDED).expect("embedded search catalogue is valid JSON")
        })
    }

    /// The parameter `code` of `resource_type`: its own, else a common one.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        if let Some(params) = self.resources.get(resource_type)
            && let Some(p) = params.iter().find(|p| p.code == code)
        {
            return Some(p);
        }
        self.common.iter().find(|p| p.code == code)
    }

    /// Every parameter `resource_type` supports, common ones first.
    pub fn params_of<'a>(&'a self, resource_type: &str) -> impl Iterator<Item = &'a SearchParam> {
        self.common
            .iter()
            .chain(self.resources.get(resource_type).into_iter().flatten())
    }

    /// Why `code` is not supported on `resource_type`, when the definitions have it.
    pub fn unsupported_reason(&self, resource_type: &str, code: &str) -> Option<&str> {
        self.unsupported
            .iter()
            .find(|u| {
                u.code == code
                    && (u.resource_type == resource_type
                        || u.resource_type == "Resource"
                        || u.resource_type == "DomainResource")
            })
            .map(|u| u.reason.as_str())
    }
}
