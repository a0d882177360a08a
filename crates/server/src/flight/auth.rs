//! Who may use the Flight SQL endpoint.
//!
//! Flight SQL clients authenticate in one of two ways, and both are accepted:
//!
//! * a bearer token sent as `authorization: Bearer <token>` on every call (ADBC:
//!   `adbc.flight.sql.authorization_header`), compared with the configured token;
//! * a user name and password sent as `authorization: Basic <base64>` on the `Handshake`
//!   call (ADBC's `username`/`password` options, the Flight SQL JDBC driver), answered with a
//!   session token that the client then sends as a bearer token.
//!
//! With neither configured, every call is accepted; the server only allows that on a loopback
//! address (see [`super::FlightSqlConfig`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use base64::Engine;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Most session tokens kept; the oldest is forgotten first (its client handshakes again).
const MAX_SESSION_TOKENS: usize = 10_000;

/// Credentials the server requires.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// A static bearer token.
    pub token: Option<String>,
    /// A user name and password for basic authentication.
    pub basic: Option<(String, String)>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("AuthConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("user", &self.basic.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl AuthConfig {
    /// True when some credential is required.
    pub fn is_enabled(&self) -> bool {
        self.token.is_some() || self.basic.is_some()
    }
}

/// Checks credentials and hands out session tokens after a basic-auth handshake.
#[derive(Debug, Default)]
pub struct Authenticator {
    config: AuthConfig,
    sessions: Mutex<SessionTokens>,
}

#[derive(Debug, Default)]
struct SessionTokens {
    known: HashSet<String>,
    order: VecDeque<String>,
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Self {
            config,
            sessions: Mutex::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.config.is_enabled()
    }

    fn authorization(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
        match metadata.get("authorization") {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| {
                Status::unauthenticated("the authorization header is not valid ASCII")
            }),
        }
    }

    fn basic_matches(&self, encoded: &str) -> Result<bool, Status> {
        let Some((user, password)) = &self.config.basic else {
            return Ok(false);
        };
        // Padding is optional in practice: arrow-go's client (ADBC) sends it unpadded.
        let decoded = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::general_purpose::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            Status::unauthenticated("basic credentials are not base64 of 'user:password'")
        })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            Status::unauthenticated("basic credentials are not base64 of 'user:password'")
        })?;
        Ok(same_secret(u, user) & same_secret(p, password))
    }

    fn token_matches(&self, token: &str) -> bool {
        let configured = self
            .config
            .token
            .as_deref()
            .is_some_and(|t| same_secret(t, token));
        configured
            || self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .known
                .contains(token)
    }

    /// Accepts the call when no credentials are required or the call carries valid ones.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if !self.is_enabled() {
            return Ok(());
        }
        let Some(header) = Self::authorization(metadata)? else {
            return Err(Status::unauthenticated(
                "this Flight SQL server requires authentication: send a bearer token \
                 (authorization: Bearer ...) or a user name and password",
            ));
        };
        let ok = if let Some(token) = header.strip_prefix("Bearer ") {
            self.token_matches(token.trim())
        } else if let Some(encoded) = header.strip_prefix("Basic ") {
            self.basic_matches(encoded)?
        } else {
            false
        };
        if ok {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "invalid credentials: the token, user name or password was not accepted",
            ))
        }
    }

    /// Who a call is, for the audit log: the basic-auth user (also for the session tokens its
    /// handshake issued), `bearer-token` for the static token, `anonymous` when open.
    pub fn principal(&self, metadata: &MetadataMap) -> String {
        if !self.is_enabled() {
            return "anonymous".into();
        }
        let header = Self::authorization(metadata)
            .ok()
            .flatten()
            .unwrap_or_default();
        let static_token = header.strip_prefix("Bearer ").is_some_and(|t| {
            (self.config.token.as_deref()).is_some_and(|c| same_secret(c, t.trim()))
        });
        match &self.config.basic {
            _ if static_token => "bearer-token".into(),
            Some((user, _)) if !header.is_empty() => user.clone(),
            _ => "anonymous".into(),
        }
    }

    /// The handshake: validates the credentials and returns the bearer token the client
    /// should send from now on (`None` when authentication is off).
    pub fn handshake(&self, metadata: &MetadataMap) -> Result<Option<String>, Status> {
        if !self.is_enabled() {
            return Ok(None);
        }
        self.check(metadata)?;
        let header = Self::authorization(metadata)?.unwrap_or_default();
        if let Some(token) = header.strip_prefix("Bearer ") {
            return Ok(Some(token.trim().to_string()));
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.known.insert(token.clone());
        sessions.order.push_back(token.clone());
        while sessions.order.len() > MAX_SESSION_TOKENS {
            if let Some(old) = sessions.order.pop_front() {
                sessions.known.remove(&old);
            }
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn open_when_nothing_is_configured() {
        let auth = Authenticator::new(AuthConfig::default());
        assert!(auth.check(&MetadataMap::new()).is_ok());
        assert_eq!(auth.handshake(&MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn bearer_token_must_match() {
        let auth = Authenticator::new(AuthConfig {
            token: Some("s3cret".into()),
            basic: None,
        });
        assert!(auth.check(&with_header("Bearer s3cret")).is_ok());
        let err = auth.check(&with_header("Bearer s3cres")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("invalid credentials"), "{err}");
        let err = auth.check(&MetadataMap::new()).unwrap_err();
        assert!(err.message().contains("requires authentication"), "{err}");
    }

    #[test]
    fn basic_handshake_issues_a_session_token() {
        let auth = Authenticator::new(AuthConfig {
            token: None,
            basic: Some(("analyst".into(), "pw".into())),
        });
        let token = auth
            .handshake(&with_header(&basic("analyst", "pw")))
            .unwrap()
            .unwrap();
        assert!(auth.check(&with_header(&format!("Bearer {token}"))).is_ok());
        assert!(auth.check(&with_header(&basic("analyst", "pw"))).is_ok());
        for wrong in [basic("analyst", "pW"), basic("other", "pw")] {
            assert_eq!(
                auth.handshake(&with_header(&wrong)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert!(auth.check(&with_header("Bearer made-up")).is_err());
        assert!(auth.check(&with_header("Basic !!!")).is_err());
    }

    #[test]
    fn basic_credentials_may_omit_base64_padding() {
        let auth = Authenticator::new(AuthConfig {
            token: None,
            basic: Some(("analyst".into(), "pw".into())),
        });
        // "analyst:pw" is 10 bytes, so its padded base64 ends in "==".
        let padded = basic("analyst", "pw");
        assert!(padded.ends_with("=="));
        let unpadded = padded.trim_end_matches('=');
        assert!(auth.check(&with_header(unpadded)).is_ok());
        assert!(auth.handshake(&with_header(unpadded)).unwrap().is_some());
    }
}
