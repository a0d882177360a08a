//! The CapabilityStatement, generated from the same interaction table the router is built
//! from ([`SUPPORTED`]) and from the schema registry's resource types, so it cannot claim
//! more (or less) than the server does.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::bundle_out::now;
use super::error::ApiError;
use super::format::{Body, Reply};
use crate::auth::config::SmartMetadata;
use fhirlake_schema::Registry;
use fhirlake_search::Catalog;
use fhirlake_store::Datastore;

/// A FHIR RESTful interaction the server routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Delete,
    HistoryInstance,
    HistoryType,
    Create,
    Transaction,
    Batch,
    HistorySystem,
    Capabilities,
    SearchType,
    SearchTypePost,
    SearchSystem,
    ConditionalUpdate,
    ConditionalDelete,
}

/// Every interaction the router serves; `routes` builds one route per entry.
pub const SUPPORTED: &[Interaction] = &[
    Interaction::Read,
    Interaction::Vread,
    Interaction::Update,
    Interaction::Delete,
    Interaction::HistoryInstance,
    Interaction::HistoryType,
    Interaction::Create,
    Interaction::Transaction,
    Interaction::Batch,
    Interaction::HistorySystem,
    Interaction::Capabilities,
    Interaction::SearchType,
    Interaction::SearchTypePost,
    Interaction::SearchSystem,
    Interaction::ConditionalUpdate,
    Interaction::ConditionalDelete,
];

impl Interaction {
    /// The FHIR code (`TypeRestfulInteraction` / `SystemRestfulInteraction`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Vread => "vread",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::HistoryInstance => "history-instance",
            Self::HistoryType => "history-type",
            Self::Create => "create",
            Self::Transaction => "transaction",
            Self::Batch => "batch",
            Self::HistorySystem => "history-system",
            Self::Capabilities => "capabilities",
            Self::SearchType | Self::SearchTypePost => "search-type",
            Self::SearchSystem => "search-system",
            Self::ConditionalUpdate => "update",
            Self::ConditionalDelete => "delete",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Self::Read
            | Self::Vread
            | Self::HistoryInstance
            | Self::HistoryType
            | Self::HistorySystem
            | Self::Capabilities
            | Self::SearchType
            | Self::SearchSystem => Method::GET,
            Self::Update | Self::ConditionalUpdate => Method::PUT,
            Self::Delete | Self::ConditionalDelete => Method::DELETE,
            Self::Create | Self::Transaction | Self::Batch | Self::SearchTypePost => Method::POST,
        }
    }

    /// Path below the data store base (`/datastore/{ds}/r4`), in axum's syntax.
    pub fn path(self) -> &'static str {
        match self {
            Self::Read | Self::Update | Self::Delete => "/{type}/{id}",
            Self::Vread => "/{type}/{id}/_history/{vid}",
            Self::HistoryInstance => "/{type}/{id}/_history",
            Self::HistoryType => "/{type}/_history",
            Self::Create | Self::SearchType | Self::ConditionalUpdate | Self::ConditionalDelete => {
                "/{type}"
            }
            Self::SearchTypePost => "/{type}/_search",
            Self::Transaction | Self::Batch | Self::SearchSystem => "/",
            Self::HistorySystem => "/_history",
            Self::Capabilities => "/metadata",
        }
    }

    /// True for interactions on a resource type or instance (listed per resource).
    pub fn is_type_level(self) -> bool {
        self.path().starts_with("/{type}")
    }
}

/// The CapabilityStatement for `base` (a data store's base URL, or the server root).
pub fn statement(
    base: &str,
    datastore: Option<&Datastore>,
    smart: Option<&SmartMetadata>,
) -> Value {
    let codes = |type_level: bool| -> Vec<Value> {
        let mut seen = Vec::new();
        for i in SUPPORTED {
            if i.is_type_level() == type_level
                && *i != Interaction::Capabilities
                && !seen.contains(&i.code())
            {
                seen.push(i.code());
            }
        }
        seen.into_iter().map(|c| json!({ "code": c })).collect()
    };
    let type_interactions = codes(true);
    let system_interactions = codes(false);
    let catalog = Catalog::global();
    let supports = |i: Interaction| SUPPORTED.contains(&i);
    let resources: Vec<Value> = Registry::global()
        .resource_types()
        .map(|t| {
            let search_params: Vec<Value> = catalog
                .params_of(t)
                .map(|p| {
                    json!({
                        "name": p.code,
                        "definition": format!("http://hl7.org/fhir/SearchParameter/{}", p.id),
                        "type": p.param_type.as_str(),
                    })
                })
                .collect();
            let unsupported: Vec<String> = catalog
                .unsupported
                .iter()
                .filter(|u| u.resource_type == t)
                .map(|u| format!("{} ({})", u.code, u.reason))
                .collect();
            let documentation = if unsupported.is_empty() {
                "Every R4 search parameter of this type is supported.".to_string()
            } else {
                format!("Unsupported search parameters: {}.", unsupported.join("; "))
            };
            json!({
                "type": t,
                "documentation": documentation,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": type_interactions,
                "versioning": "versioned-update",
                "readHistory": supports(Interaction::Vread),
                "updateCreate": supports(Interaction::Update),
                "conditionalCreate": supports(Interaction::Create),
                "conditionalRead": if supports(Interaction::Read) { "full-support" } else { "not-supported" },
                "conditionalUpdate": supports(Interaction::ConditionalUpdate),
                "conditionalDelete": if supports(Interaction::ConditionalDelete) { "single" } else { "not-supported" },
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "searchParam": search_params,
            })
        })
        .collect();
    let description = match datastore {
        Some(ds) => format!("fhirlake FHIR R4 data store '{}' ({})", ds.name, ds.id),
        None => "fhirlake FHIR R4 server; data stores are served at /datastore/{datastoreId}/r4/"
            .to_string(),
    };
    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now(),
        "publisher": "fhirlake",
        "kind": "instance",
        "software": { "name": "fhirlake", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": description, "url": base },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "JSON only. Every error is an OperationOutcome. ETags are weak version ids (W/\"n\"); If-Match is checked atomically.",
            "resource": resources,
            "interaction": system_interactions,
        }],
    });
    if let Some(smart) = smart {
        statement["rest"][0]["security"] = security(smart);
    }
    statement
}

/// `rest.security` of a SMART on FHIR data store: the SMART service coding and the OAuth
/// endpoints (SMART App Launch 1.0's `oauth-uris` extension; 2.0 clients read
/// `.well-known/smart-configuration`).
fn security(smart: &SmartMetadata) -> Value {
    let mut uris = vec![
        json!({"url": "authorize", "valueUri": smart.authorization_endpoint}),
        json!({"url": "token", "valueUri": smart.token_endpoint}),
    ];
    for (url, key) in [
        ("register", "registration_endpoint"),
        ("manage", "management_endpoint"),
        ("introspect", "introspection_endpoint"),
        ("revoke", "revocation_endpoint"),
    ] {
        if let Some(uri) = smart.document.get(key).and_then(Value::as_str) {
            uris.push(json!({"url": url, "valueUri": uri}));
        }
    }
    json!({
        "cors": true,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR",
            }],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": uris,
        }],
    })
}

/// The CapabilityStatement as a reply.
pub fn reply(
    base: &str,
    datastore: Option<&Datastore>,
    smart: Option<&SmartMetadata>,
) -> Result<Reply, ApiError> {
    let text =
        serde_json::to_string(&statement(base, datastore, smart)).map_err(ApiError::internal)?;
    Ok(Reply::new(StatusCode::OK, Body::Json(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_registry_type_and_routed_interaction() {
        let cs = statement("http://x/datastore/d/r4", None, None);
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        assert_eq!(resources.len(), Registry::global().resource_types().count());
        let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
        let codes: Vec<&str> = patient["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert_eq!(
            codes,
            [
                "read",
                "vread",
                "update",
                "delete",
                "history-instance",
                "history-type",
                "create",
                "search-type"
            ]
        );
        let params = patient["searchParam"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "birthdate" && p["type"] == "date")
        );
        assert!(params.iter().any(|p| p["name"] == "_id"));
        assert_eq!(patient["conditionalUpdate"], true);
        let system: Vec<&str> = cs["rest"][0]["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert_eq!(
            system,
            ["transaction", "batch", "history-system", "search-system"]
        );
    }
}
