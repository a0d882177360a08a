//! A data store's `IdentityProviderConfiguration`, as HealthLake's CreateFHIRDatastore takes
//! it, and the SMART discovery metadata inside it.
//!
//! HealthLake records `Metadata` as a JSON *string* (the guide's CLI example quotes it) and
//! serves it unchanged at `.well-known/smart-configuration`; it requires the authorization and
//! token endpoints in it. HealthLake verifies tokens by calling the `IdpLambdaArn` Lambda; a
//! self-hosted server has no Lambda, so fhirlake verifies JWT access tokens against the
//! metadata's `jwks_uri` (and its `issuer`) instead, or, without one, asks the metadata's
//! `introspection_endpoint` (RFC 7662) as the guide's sample Lambda does. A configuration with
//! neither is accepted like HealthLake accepts it, but its data store then refuses every
//! bearer token with a message saying why (fail closed).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How requests to a data store's FHIR API are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuthorizationStrategy {
    /// SMART App Launch 1.0 scopes on bearer tokens.
    #[serde(rename = "SMART_ON_FHIR_V1")]
    SmartOnFhirV1,
    /// SMART App Launch 2.0 (v2 `.cruds` scopes; v1 scopes keep working).
    #[serde(rename = "SMART_ON_FHIR")]
    SmartOnFhir,
    /// AWS Signature Version 4 (HealthLake's default).
    #[default]
    #[serde(rename = "AWS_AUTH")]
    AwsAuth,
}

impl AuthorizationStrategy {
    pub fn is_smart(self) -> bool {
        !matches!(self, Self::AwsAuth)
    }
}

/// `IdentityProviderConfiguration`, members as the AWS API names them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdentityProviderConfiguration {
    #[serde(default)]
    pub authorization_strategy: AuthorizationStrategy,
    #[serde(default)]
    pub fine_grained_authorization_enabled: bool,
    /// The SMART discovery document, as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Recorded and shown; fhirlake cannot invoke AWS Lambda (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_lambda_arn: Option<String>,
}

/// Why an `IdentityProviderConfiguration` is refused; the message names the member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The SMART discovery metadata of a data store, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SmartMetadata {
    /// The document as given, served at `.well-known/smart-configuration`.
    pub document: Map<String, Value>,
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    /// RFC 7662 introspection of opaque tokens (used when there is no `jwks_uri`).
    pub introspection_endpoint: Option<String>,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

impl IdentityProviderConfiguration {
    /// Parses the request member, refusing unknown strategies and wrong kinds like the AWS
    /// API's validation does, then checks it (see [`Self::smart_metadata`]).
    pub fn from_request(value: &Value) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_value(value.clone()).map_err(|e| {
            ConfigError(format!(
                "1 validation error detected: Value at 'identityProviderConfiguration' failed \
                 to satisfy constraint: {e} (AuthorizationStrategy must be one of \
                 [SMART_ON_FHIR_V1, SMART_ON_FHIR, AWS_AUTH])"
            ))
        })?;
        config.smart_metadata()?;
        Ok(config)
    }

    /// The checked metadata of a SMART strategy; `None` for AWS_AUTH.
    pub fn smart_metadata(&self) -> Result<Option<SmartMetadata>, ConfigError> {
        if !self.authorization_strategy.is_smart() {
            return Ok(None);
        }
        let Some(text) = &self.metadata else {
            return Err(ConfigError(
                "IdentityProviderConfiguration.Metadata is required for a SMART on FHIR data \
                 store (a JSON document with authorization_endpoint and token_endpoint)"
                    .into(),
            ));
        };
        SmartMetadata::parse(text).map(Some)
    }
}

impl SmartMetadata {
    /// Parses the `Metadata` string: a JSON object whose `authorization_endpoint` and
    /// `token_endpoint` are URLs; `issuer` and `jwks_uri`, when present, URLs too.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let Ok(Value::Object(document)) = serde_json::from_str::<Value>(text) else {
            return Err(ConfigError(
                "IdentityProviderConfiguration.Metadata must be a JSON object (given as a string)"
                    .into(),
            ));
        };
        let url = |key: &str, required: bool| -> Result<Option<String>, ConfigError> {
            match document.get(key) {
                None | Some(Value::Null) if !required => Ok(None),
                Some(Value::String(s)) if is_url(s) => Ok(Some(s.clone())),
                None | Some(Value::Null) => Err(ConfigError(format!(
                    "IdentityProviderConfiguration.Metadata must contain '{key}'"
                ))),
                Some(other) => Err(ConfigError(format!(
                    "IdentityProviderConfiguration.Metadata '{key}' must be an http(s) URL, \
                     not {other}"
                ))),
            }
        };
        let required = |key: &str| url(key, true).map(Option::unwrap_or_default);
        Ok(Self {
            authorization_endpoint: required("authorization_endpoint")?,
            token_endpoint: required("token_endpoint")?,
            issuer: url("issuer", false)?,
            jwks_uri: url("jwks_uri", false)?,
            introspection_endpoint: url("introspection_endpoint", false)?,
            document,
        })
    }
}

fn is_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() > "http://".len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smart(metadata: Value) -> Value {
        json!({"AuthorizationStrategy": "SMART_ON_FHIR_V1", "Metadata": metadata.to_string()})
    }

    #[test]
    fn accepts_the_guides_example_and_keeps_the_document() {
        let metadata = json!({
            "issuer": "https://ehr.example.com",
            "jwks_uri": "https://ehr.example.com/.well-known/jwks.json",
            "authorization_endpoint": "https://ehr.example.com/auth/authorize",
            "token_endpoint": "https://ehr.token.com/auth/token",
            "capabilities": ["launch-ehr", "sso-openid-connect", "client-public"]
        });
        let config = IdentityProviderConfiguration::from_request(&smart(metadata.clone())).unwrap();
        let m = config.smart_metadata().unwrap().unwrap();
        assert_eq!(Value::Object(m.document), metadata);
        assert_eq!(m.issuer.as_deref(), Some("https://ehr.example.com"));
        assert!(!config.fine_grained_authorization_enabled);
    }

    #[test]
    fn refuses_missing_endpoints_bad_documents_and_unknown_strategies() {
        let no_token = json!({"authorization_endpoint": "https://a/authorize"});
        let e = IdentityProviderConfiguration::from_request(&smart(no_token)).unwrap_err();
        assert!(e.0.contains("token_endpoint"), "{e}");
        let not_object = json!({"AuthorizationStrategy": "SMART_ON_FHIR", "Metadata": "[1]"});
        assert!(IdentityProviderConfiguration::from_request(&not_object).is_err());
        let missing = json!({"AuthorizationStrategy": "SMART_ON_FHIR"});
        assert!(IdentityProviderConfiguration::from_request(&missing).is_err());
        let unknown = json!({"AuthorizationStrategy": "OAUTH"});
        let e = IdentityProviderConfiguration::from_request(&unknown).unwrap_err();
        assert!(e.0.contains("SMART_ON_FHIR_V1"), "{e}");
        let aws = json!({"AuthorizationStrategy": "AWS_AUTH"});
        let config = IdentityProviderConfiguration::from_request(&aws).unwrap();
        assert_eq!(config.smart_metadata().unwrap(), None);
    }
}
