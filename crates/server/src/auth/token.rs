//! Verification of SMART access tokens: JWTs signed by the identity provider's keys.
//!
//! The keys come from the data store's `jwks_uri`, fetched on first use and again when a
//! token names a key id the cached set lacks (the provider rotated its keys). So that tokens
//! with made-up key ids cannot make the server hammer the provider, such refetches happen at
//! most once per [`REFETCH_INTERVAL`], and a key id a refetch did not find is not looked for
//! again for [`MISSING_TTL`].
//! Only asymmetric algorithms are accepted and the algorithm must fit the key: `alg: none` and
//! an HMAC "signed" with a public key (the classic confusion attack) are refused before any
//! key is looked at.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::claims::{Claims, TokenError, fetch_json};
use super::introspect::Introspector;

/// How far `exp`/`nbf` may be off the server's clock.
const LEEWAY_SECS: u64 = 60;
/// Least time between two JWKS fetches caused by unknown key ids.
const REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a key id that a refetch did not find stays refused without asking again.
const MISSING_TTL: Duration = Duration::from_secs(60);
/// Most remembered missing key ids (forgotten all at once beyond it).
const MISSING_MAX: usize = 1024;
/// Most verified tokens remembered (forgotten all at once beyond it).
const VERIFIED_MAX: usize = 16_384;
/// Longest a fetched key set is trusted without refetching.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// Longest the identity provider may take to answer a JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Verifies tokens for one data store.
pub struct TokenVerifier {
    issuer: Option<String>,
    jwks_uri: Option<String>,
    /// Opaque tokens: asked about at the identity provider when there is no `jwks_uri`.
    introspector: Option<Introspector>,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Option<Fetched>>,
    missing: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// Tokens verified for an audience list, by digest: a client sends the same token with
    /// every request until it expires, and the signature check is most of the cost of a read.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
}

struct Fetched {
    at: Instant,
    keys: Arc<JwkSet>,
    /// When an unknown key id last caused a fetch.
    refetched: Option<Instant>,
}

impl TokenVerifier {
    pub fn new(
        issuer: Option<String>,
        jwks_uri: Option<String>,
        introspector: Option<Introspector>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            issuer,
            jwks_uri,
            introspector,
            http,
            keys: tokio::sync::Mutex::new(None),
            missing: Default::default(),
            verified: Default::default(),
        }
    }

    /// Checks `token`'s signature, algorithm, issuer, audience (one of `audiences`) and
    /// validity period, and returns its claims.
    pub async fn verify(&self, token: &str, audiences: &[String]) -> Result<Claims, TokenError> {
        let digest = digest(token, audiences);
        if self.jwks_uri.is_none()
            && let Some(introspector) = &self.introspector
        {
            return introspector.introspect(token, audiences, digest).await;
        }
        // Say what is missing on the server's side before judging the token itself.
        if self.jwks_uri.is_none() {
            return Err(TokenError::NoKeys);
        }
        if let Some(claims) = self.remembered(&digest) {
            return Ok(claims);
        }
        let claims = self.verify_uncached(token, audiences).await?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    /// A token verified earlier that has not expired since (with the same leeway).
    fn remembered(&self, digest: &[u8; 32]) -> Option<Claims> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let claims = verified.get(digest)?;
        let now = chrono::Utc::now().timestamp();
        (claims.exp + LEEWAY_SECS as i64 > now).then(|| claims.clone())
    }

    async fn verify_uncached(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::Algorithm(header_alg(token)),
            _ => TokenError::Malformed,
        })?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let jwk = self.key(header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| TokenError::Invalid(format!("the JWKS key is unusable: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.set_audience(audiences);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(describe(&e)))
    }

    /// The key `kid` names (or the only key fitting `alg` when the token names none).
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, TokenError> {
        let keys = self.keys(false).await?;
        if let Some(jwk) = pick(&keys, kid, alg) {
            return Ok(jwk.clone());
        }
        let unknown = || TokenError::UnknownKey(kid.unwrap_or("(none)").to_string());
        if kid.is_some_and(|k| self.recently_missing(k)) {
            return Err(unknown());
        }
        let keys = self.keys(true).await?;
        let found = pick(&keys, kid, alg).cloned();
        if found.is_none()
            && let Some(kid) = kid
        {
            let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
            if missing.len() >= MISSING_MAX {
                missing.clear();
            }
            missing.insert(kid.to_string(), Instant::now());
        }
        found.ok_or_else(unknown)
    }

    fn recently_missing(&self, kid: &str) -> bool {
        let missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        missing
            .get(kid)
            .is_some_and(|at| at.elapsed() < MISSING_TTL)
    }

    /// The cached key set, fetched when missing, stale, or (`refresh`) not fetched lately.
    async fn keys(&self, refresh: bool) -> Result<Arc<JwkSet>, TokenError> {
        let uri = self.jwks_uri.as_deref().ok_or(TokenError::NoKeys)?;
        let mut cached = self.keys.lock().await;
        if let Some(f) = cached.as_ref() {
            let fresh = if refresh {
                f.refetched.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL)
            } else {
                f.at.elapsed() < KEYS_TTL
            };
            if fresh {
                return Ok(f.keys.clone());
            }
        }
        let keys = Arc::new(self.fetch(uri).await?);
        let now = Instant::now();
        *cached = Some(Fetched {
            at: now,
            keys: keys.clone(),
            refetched: refresh.then_some(now),
        });
        Ok(keys)
    }

    async fn fetch(&self, uri: &str) -> Result<JwkSet, TokenError> {
        fetch_json(self.http.get(uri), uri, "a JWK Set").await
    }
}

fn digest(token: &str, audiences: &[String]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    for a in audiences {
        h.update(b"\n");
        h.update(a.as_bytes());
    }
    h.finalize().into()
}

/// A signing key of the set that fits `alg` (asymmetric keys only; a key that declares its
/// algorithm must declare this one).
fn pick<'a>(keys: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    let fits = |jwk: &&Jwk| {
        let family_fits = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => matches!(
                alg,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256
            ),
            AlgorithmParameters::EllipticCurve(_) => {
                matches!(alg, Algorithm::ES256 | Algorithm::ES384)
            }
            _ => false,
        };
        let declared_fits = jwk
            .common
            .key_algorithm
            .is_none_or(|k| format!("{k:?}") == format!("{alg:?}"));
        family_fits && declared_fits
    };
    match kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(fits)
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => {
            let mut candidates = keys.keys.iter().filter(fits);
            let only = candidates.next();
            candidates.next().is_none().then_some(only).flatten()
        }
    }
}

/// The `alg` a header names, for the error message when the JWT library refuses it (`none`).
fn header_alg(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["alg"].as_str().map(String::from))
        .unwrap_or_else(|| "(unreadable)".into())
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "it has expired (exp)".into(),
        K::ImmatureSignature => "it is not valid yet (nbf)".into(),
        K::InvalidAudience => "its audience (aud) is not this data store's endpoint".into(),
        K::InvalidIssuer => "its issuer (iss) is not the data store's identity provider".into(),
        K::InvalidSignature => "its signature does not verify".into(),
        K::MissingRequiredClaim(c) => format!("it lacks the '{c}' claim"),
        K::InvalidAlgorithm => "its algorithm does not fit the signing key".into(),
        _ => e.to_string(),
    }
}
