//! Bundles as this server writes them (history, searchset, batch- and transaction-response),
//! and the ids and instants it assigns. Shared by the interactions, search and the Bundle
//! processor, so it depends on none of them.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use fhirlake_schema::outcome::OperationOutcome;

/// A new server-assigned id (a UUID, as HealthLake assigns).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A Bundle as this server writes it (history, batch-response, transaction-response).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleOut {
    pub resource_type: &'static str,
    pub id: String,
    pub meta: BundleMeta,
    #[serde(rename = "type")]
    pub bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<BundleLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<EntryOut>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleMeta {
    pub last_updated: String,
}

#[derive(Debug, Serialize)]
pub struct BundleLink {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<EntrySearchOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequestOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponseOut>,
}

/// `Bundle.entry.search` of a searchset: `match`, `include` or `outcome`.
#[derive(Debug, Serialize)]
pub struct EntrySearchOut {
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct EntryRequestOut {
    pub method: &'static str,
    pub url: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryResponseOut {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OperationOutcome>,
}

impl BundleOut {
    pub fn new(bundle_type: &'static str) -> Self {
        Self {
            resource_type: "Bundle",
            id: new_id(),
            meta: BundleMeta {
                last_updated: now(),
            },
            bundle_type,
            timestamp: None,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Result<String, ApiError> {
        serde_json::to_string(self).map_err(ApiError::internal)
    }
}

/// The current time as a FHIR instant.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A stored JSON text as an embeddable raw value.
pub fn raw(json: String) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(json).map_err(ApiError::internal)
}

/// An HTTP status line as Bundle responses carry it (`201 Created`).
pub fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}
