//! What an identity provider says about a token, however it is asked (a JWT's claims, an
//! introspection answer), why a token is refused, and how the provider is asked over HTTP.

use serde::Deserialize;

use super::scopes::ScopeSet;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not a JWT")]
    Malformed,
    #[error("the access token's algorithm {0} is not accepted (RS256/384/512, PS256, ES256/384)")]
    Algorithm(String),
    #[error(
        "the access token is signed with key '{0}', which the identity provider's JWKS does not list"
    )]
    UnknownKey(String),
    #[error("the access token is invalid: {0}")]
    Invalid(String),
    #[error(
        "this data store cannot verify bearer tokens: its SMART metadata has neither a jwks_uri \
         nor an introspection_endpoint"
    )]
    NoKeys,
    /// The identity provider could not be asked (a server-side problem, not the client's).
    #[error("the identity provider's keys cannot be fetched from {uri}: {message}")]
    Unreachable { uri: String, message: String },
}

/// The claims fhirlake reads from an access token.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    /// Some providers (Azure AD, Okta) list scopes as `scp`.
    #[serde(default)]
    scp: Option<ScopeClaim>,
    /// The launch context's patient id (SMART `launch/patient`).
    #[serde(default)]
    pub patient: Option<String>,
    /// The user's FHIR resource (`Practitioner/1`, or an absolute URL).
    #[serde(default, rename = "fhirUser")]
    pub fhir_user: Option<String>,
    /// Expiry (seconds since the epoch); required of JWTs, optional in introspection.
    #[serde(default)]
    pub(super) exp: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl Claims {
    pub fn scopes(&self) -> ScopeSet {
        match self.scope.as_ref().or(self.scp.as_ref()) {
            None => ScopeSet::default(),
            Some(ScopeClaim::Text(s)) => ScopeSet::parse(s),
            Some(ScopeClaim::List(l)) => ScopeSet::from_list(l.iter().map(String::as_str)),
        }
    }
}

/// Sends a request to the identity provider and reads its JSON answer (`what` names it in
/// errors); any failure is the provider's, not the client's ([`TokenError::Unreachable`]).
pub(super) async fn fetch_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    uri: &str,
    what: &str,
) -> Result<T, TokenError> {
    let unreachable = |message: String| TokenError::Unreachable {
        uri: uri.to_string(),
        message,
    };
    let response = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable(e.to_string()))?;
    let body = response
        .bytes()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| unreachable(format!("not {what}: {e}")))
}
