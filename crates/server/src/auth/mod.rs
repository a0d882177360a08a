//! The identity layer every front end shares: who a caller is (a SMART bearer token's
//! principal, a SigV4 access key, or nobody where the server allows that) and what they may
//! do to which resources.
//!
//! Each data store carries its `IdentityProviderConfiguration` ([`config`]); the REST API asks
//! [`DatastoreAuth::authenticate`] for the caller of each request and [`Caller::grant`] before
//! each interaction. A grant is either everything of a type or only what lies in some
//! patients' compartments (SMART `patient/` scopes with a launch patient, or `user/` scopes
//! under fine-grained authorization, [`fine_grained`]); the interactions and the search
//! engine enforce the latter on every resource they read or write.

pub mod claims;
pub mod config;
pub mod fine_grained;
pub mod http;
pub mod introspect;
pub mod scopes;
pub mod sigv4;
pub mod token;

use std::collections::BTreeSet;
use std::sync::Arc;

use claims::TokenError;
use config::{ConfigError, IdentityProviderConfiguration, SmartMetadata};
use introspect::{ClientCredentials, Introspector};
use scopes::{Action, Level, ScopeSet};
use token::TokenVerifier;

/// Who is calling, as the data store's authorization strategy established it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credentials were required: an AWS_AUTH data store on a server without access keys
    /// (allowed on loopback, or off it with `--insecure`).
    Anonymous,
    /// A request signed (SigV4) with this access key id.
    AccessKey(String),
    /// A SMART bearer token's principal.
    Smart(Arc<Principal>),
}

/// The verified claims of a SMART access token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: ScopeSet,
    /// The launch context's patient (`patient` claim).
    pub patient: Option<String>,
    /// The user's FHIR resource (`fhirUser` claim), e.g. `Patient/123`.
    pub fhir_user: Option<String>,
    /// The data store has `FineGrainedAuthorizationEnabled`.
    pub fine_grained: bool,
    /// With fine-grained authorization, the patients the `fhirUser` reaches (resolved per
    /// request by [`fine_grained::CareTeams`]).
    pub care_of: Option<Arc<BTreeSet<String>>>,
}

/// What a caller may touch of one resource type for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every resource of the type.
    All,
    /// Only resources in these patients' compartments.
    Patients(Arc<BTreeSet<String>>),
}

/// Why an authenticated caller may not do something (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the access token's scopes do not allow {action} on {resource_type}")]
    Scope {
        resource_type: String,
        action: &'static str,
    },
    #[error(
        "the access token grants only patient-level access but names no patient \
         (a 'patient' claim from launch/patient, or a Patient fhirUser)"
    )]
    NoPatient,
    #[error("the resource is outside the compartment of the patient this access token is for")]
    OutsideCompartment,
    #[error("{0} needs a system-level scope (e.g. system/*.read)")]
    SystemOnly(&'static str),
    #[error(
        "this data store uses fine-grained authorization: user-level scopes need a fhirUser \
         claim naming a Practitioner, Patient or RelatedPerson"
    )]
    NoFhirUser,
}

/// Why a request could not be authenticated (401, or 503 when the identity provider is down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this data store requires an 'Authorization: Bearer' access token")]
    MissingToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the access token has no FHIR resource scope (e.g. patient/*.read)")]
    NoResourceScope,
    /// The data store could not tell which patients a fine-grained user reaches.
    #[error("cannot resolve the patients of the token's fhirUser: {0}")]
    Unresolved(String),
}

impl AuthError {
    /// Whether the failure is the identity provider's, not the token's.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::Token(TokenError::Unreachable { .. }) | AuthError::Unresolved(_)
        )
    }
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Search => "search",
        }
    }
}

impl Caller {
    /// What the caller may do with `resource_type` for `action`.
    pub fn grant(&self, resource_type: &str, action: Action) -> Result<Grant, Denied> {
        match self {
            Caller::Anonymous | Caller::AccessKey(_) => Ok(Grant::All),
            Caller::Smart(p) => p.grant(resource_type, action),
        }
    }

    /// Whether the caller may run a system-level operation reading `types` (Bulk Data export,
    /// lake status): SMART callers need a `system/` read scope for each.
    pub fn system_read<'a>(
        &self,
        operation: &'static str,
        mut types: impl Iterator<Item = &'a str>,
    ) -> Result<(), Denied> {
        match self {
            Caller::Smart(p) => types
                .all(|t| p.scopes.grants(t, Action::Read) == Some(Level::System))
                .then_some(())
                .ok_or(Denied::SystemOnly(operation)),
            _ => Ok(()),
        }
    }

    /// Whether the caller may follow up a system-level operation (an export's status and
    /// files): SMART callers need some `system/` read scope.
    pub fn system_any(&self, operation: &'static str) -> Result<(), Denied> {
        match self {
            Caller::Smart(p) if !p.scopes.grants_any(Level::System, Action::Read) => {
                Err(Denied::SystemOnly(operation))
            }
            _ => Ok(()),
        }
    }

    /// A short name for logs: the token's subject or client, or the access key id.
    pub fn name(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::AccessKey(id) => format!("key:{id}"),
            Caller::Smart(p) => p
                .subject
                .clone()
                .or_else(|| p.client_id.clone())
                .unwrap_or_else(|| "smart".into()),
        }
    }
}

impl Principal {
    fn grant(&self, resource_type: &str, action: Action) -> Result<Grant, Denied> {
        let levels = self.scopes.levels(resource_type, action);
        let denied = || Denied::Scope {
            resource_type: resource_type.to_string(),
            action: action.name(),
        };
        if levels.contains(&Level::System) {
            return Ok(Grant::All);
        }
        if levels.contains(&Level::User) {
            if !self.fine_grained {
                return Ok(Grant::All);
            }
            return self
                .care_of
                .clone()
                .map(Grant::Patients)
                .ok_or(Denied::NoFhirUser);
        }
        if !levels.contains(&Level::Patient) {
            return Err(denied());
        }
        let patient = self
            .patient
            .clone()
            .or_else(|| self.fhir_user_patient())
            .ok_or(Denied::NoPatient)?;
        Ok(Grant::Patients(Arc::new(BTreeSet::from([patient]))))
    }

    fn fhir_user_patient(&self) -> Option<String> {
        let user = self.fhir_user.as_deref()?;
        fhirlake_search::compartment::patient_id(user).map(String::from)
    }
}

/// A served data store's identity configuration, ready to authenticate requests.
pub struct DatastoreAuth {
    pub config: IdentityProviderConfiguration,
    smart: Option<SmartAuth>,
    /// Fine-grained users' patients, remembered briefly.
    pub care_teams: fine_grained::CareTeams,
}

struct SmartAuth {
    metadata: SmartMetadata,
    verifier: TokenVerifier,
}

impl DatastoreAuth {
    /// The configuration recorded in a data store's control-plane properties (AWS_AUTH
    /// when it has none).
    pub fn from_properties(properties: &serde_json::Value) -> Result<Self, ConfigError> {
        let config = match &properties["IdentityProviderConfiguration"] {
            serde_json::Value::Null => IdentityProviderConfiguration::default(),
            v => serde_json::from_value(v.clone()).map_err(|e| {
                ConfigError(format!("unreadable IdentityProviderConfiguration: {e}"))
            })?,
        };
        Self::new(config)
    }

    pub fn new(config: IdentityProviderConfiguration) -> Result<Self, ConfigError> {
        let smart = config.smart_metadata()?.map(|metadata| {
            let introspector = metadata.introspection_endpoint.clone().map(|endpoint| {
                Introspector::new(
                    endpoint,
                    metadata.issuer.clone(),
                    ClientCredentials::from_env(),
                )
            });
            if metadata.jwks_uri.is_none() && introspector.is_none() {
                tracing::warn!(
                    "a SMART data store's metadata has neither jwks_uri nor \
                     introspection_endpoint: it will refuse every token"
                );
            }
            SmartAuth {
                verifier: TokenVerifier::new(
                    metadata.issuer.clone(),
                    metadata.jwks_uri.clone(),
                    introspector,
                ),
                metadata,
            }
        });
        Ok(Self {
            config,
            smart,
            care_teams: Default::default(),
        })
    }

    /// An AWS_AUTH data store.
    pub fn aws() -> Self {
        Self {
            config: IdentityProviderConfiguration::default(),
            smart: None,
            care_teams: Default::default(),
        }
    }

    /// The SMART discovery document (`.well-known/smart-configuration`), for SMART stores.
    pub fn smart_metadata(&self) -> Option<&SmartMetadata> {
        self.smart.as_ref().map(|s| &s.metadata)
    }

    /// Authenticates a request to a SMART data store from its `Authorization` header value;
    /// `audiences` are the data store endpoints a token may name.
    pub async fn authenticate_bearer(
        &self,
        authorization: Option<&str>,
        audiences: &[String],
    ) -> Result<Option<Principal>, AuthError> {
        let Some(smart) = &self.smart else {
            return Ok(None);
        };
        let token = authorization
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let claims = smart.verifier.verify(token, audiences).await?;
        let scopes = claims.scopes();
        if !scopes.has_resource_scope() {
            return Err(AuthError::NoResourceScope);
        }
        Ok(Some(Principal {
            subject: claims.sub,
            client_id: claims.client_id,
            scopes,
            patient: claims.patient,
            fhir_user: claims.fhir_user,
            fine_grained: self.config.fine_grained_authorization_enabled,
            care_of: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scope: &str, patient: Option<&str>, fhir_user: Option<&str>) -> Caller {
        Caller::Smart(Arc::new(Principal {
            subject: None,
            client_id: None,
            scopes: ScopeSet::parse(scope),
            patient: patient.map(String::from),
            fhir_user: fhir_user.map(String::from),
            fine_grained: fhir_user.is_some(),
            care_of: fhir_user.map(|_| Arc::new(BTreeSet::from(["p1".to_string()]))),
        }))
    }

    fn only(p: &str) -> Grant {
        Grant::Patients(Arc::new(BTreeSet::from([p.to_string()])))
    }

    #[test]
    fn grants_follow_the_broadest_level() {
        let c = principal(
            "launch/patient patient/*.read system/Patient.read",
            Some("a"),
            None,
        );
        assert_eq!(c.grant("Patient", Action::Read), Ok(Grant::All));
        assert_eq!(c.grant("Observation", Action::Search), Ok(only("a")));
        assert!(matches!(
            c.grant("Observation", Action::Create),
            Err(Denied::Scope { .. })
        ));
        let no_patient = principal("patient/*.read", None, None);
        assert_eq!(
            no_patient.grant("Observation", Action::Read),
            Err(Denied::NoPatient)
        );
        let user = principal("user/*.*", None, None);
        assert_eq!(user.grant("Condition", Action::Delete), Ok(Grant::All));
        let fine = principal("user/*.read", None, Some("Patient/p1"));
        assert_eq!(fine.grant("Condition", Action::Read), Ok(only("p1")));
        assert!(Caller::Anonymous.grant("Patient", Action::Delete).is_ok());
    }

    #[test]
    fn system_operations_need_system_scopes() {
        let system = principal("system/*.read", None, None);
        assert!(
            system
                .system_read("$export", ["Patient"].into_iter())
                .is_ok()
        );
        let patient = principal("patient/*.read", Some("a"), None);
        assert_eq!(
            patient.system_read("$export", ["Patient"].into_iter()),
            Err(Denied::SystemOnly("$export"))
        );
    }
}
