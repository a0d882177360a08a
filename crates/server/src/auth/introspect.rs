//! OAuth 2.0 Token Introspection (RFC 7662) for opaque access tokens: the self-hosted
//! counterpart of HealthLake's token-validation Lambda (`IdpLambdaArn`), which the guide's
//! sample implements the same way (POST the token to the authorization server's
//! `introspection_endpoint` with the client's credentials, require `active`).
//!
//! Used when a SMART data store's metadata has an `introspection_endpoint` and no `jwks_uri`.
//! The server authenticates to the endpoint with HTTP Basic credentials from the environment
//! (`FHIRLAKE_SMART_CLIENT_ID`, `FHIRLAKE_SMART_CLIENT_SECRET`). As HealthLake requires of its
//! Lambda, the answer must come within [`TIMEOUT`]. An active token must name this data store
//! in `aud` and, when the metadata has an issuer, that issuer in `iss`. Positive answers are
//! remembered for at most [`REMEMBER`] (and never past `exp`), so a revoked token stops working
//! within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::claims::{Claims, TokenError, fetch_json};

/// Longest the introspection endpoint may take (HealthLake: the Lambda must answer in 1 s).
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a positive answer is reused without asking again.
const REMEMBER: Duration = Duration::from_secs(30);
/// Most remembered answers (forgotten all at once beyond it).
const REMEMBERED_MAX: usize = 16_384;

/// The client credentials the server introspects with.
#[derive(Clone)]
pub struct ClientCredentials {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientCredentials {
    /// `FHIRLAKE_SMART_CLIENT_ID` / `FHIRLAKE_SMART_CLIENT_SECRET`, when both are set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var("FHIRLAKE_SMART_CLIENT_ID").ok()?;
        let secret = std::env::var("FHIRLAKE_SMART_CLIENT_SECRET").ok()?;
        Some(Self { id, secret })
    }
}

/// An introspection response: RFC 7662's members plus the SMART claims.
#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    active: bool,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(flatten)]
    claims: Claims,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names_any(&self, audiences: &[String]) -> bool {
        match self {
            Audience::One(a) => audiences.contains(a),
            Audience::Many(list) => list.iter().any(|a| audiences.contains(a)),
        }
    }
}

/// Asks one data store's introspection endpoint about tokens.
pub struct Introspector {
    endpoint: String,
    issuer: Option<String>,
    credentials: Option<ClientCredentials>,
    http: reqwest::Client,
    remembered: Mutex<HashMap<[u8; 32], (Instant, Claims)>>,
}

impl Introspector {
    pub fn new(
        endpoint: String,
        issuer: Option<String>,
        credentials: Option<ClientCredentials>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            endpoint,
            issuer,
            credentials,
            http,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    /// The claims of an active token issued for one of `audiences`.
    pub async fn introspect(
        &self,
        token: &str,
        audiences: &[String],
        digest: [u8; 32],
    ) -> Result<Claims, TokenError> {
        if let Some(claims) = self.recall(&digest) {
            return Ok(claims);
        }
        let response = self.ask(token).await?;
        let claims = self.check(response, audiences)?;
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBERED_MAX {
            remembered.clear();
        }
        remembered.insert(digest, (Instant::now(), claims.clone()));
        Ok(claims)
    }

    fn recall(&self, digest: &[u8; 32]) -> Option<Claims> {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let (at, claims) = remembered.get(digest)?;
        let unexpired = claims.exp == 0 || claims.exp > chrono::Utc::now().timestamp();
        (at.elapsed() < REMEMBER && unexpired).then(|| claims.clone())
    }

    async fn ask(&self, token: &str) -> Result<Response, TokenError> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(format!(
                "token={}&token_type_hint=access_token",
                form_encode(token)
            ));
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.id, Some(&c.secret));
        }
        fetch_json(request, &self.endpoint, "an introspection response").await
    }

    fn check(&self, r: Response, audiences: &[String]) -> Result<Claims, TokenError> {
        let invalid = |m: &str| TokenError::Invalid(m.to_string());
        if !r.active {
            return Err(invalid("the identity provider says it is not active"));
        }
        if !r.aud.as_ref().is_some_and(|a| a.names_any(audiences)) {
            return Err(invalid(
                "its audience (aud) is not this data store's endpoint",
            ));
        }
        if let Some(issuer) = &self.issuer
            && r.iss.as_ref().is_some_and(|iss| iss != issuer)
        {
            return Err(invalid(
                "its issuer (iss) is not the data store's identity provider",
            ));
        }
        if r.claims.exp != 0 && r.claims.exp <= chrono::Utc::now().timestamp() {
            return Err(invalid("it has expired (exp)"));
        }
        Ok(r.claims)
    }
}

/// `application/x-www-form-urlencoded` encoding of a value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
