//! Authentication of every request to a data store's FHIR base (`/datastore/{id}/r4/...`),
//! the REST interactions and Bulk Data alike, as one middleware in front of the handlers.
//!
//! The data store's authorization strategy decides: SMART stores need a bearer token the
//! identity provider signed for this data store; AWS_AUTH stores need a SigV4 signature when
//! the server has access keys, and nothing otherwise (which the server allows only on
//! loopback or with `--insecure`). The established [`Caller`] travels to the handlers as a
//! request extension; what it may do is checked per interaction ([`Caller::grant`]). The
//! capability statement and the SMART discovery document stay public, as SMART requires.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::sigv4::{self, AccessKey};
use super::{AuthError, Caller, Principal};
use crate::origin::HttpOrigin;
use crate::registry::Live;
use crate::registry::Registry;
use fhirlake_schema::outcome::{Issue, OperationOutcome};

/// What the middleware needs: the live data stores, the URLs tokens are issued for, and the
/// server's SigV4 keys.
#[derive(Clone)]
pub struct Authn {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    origin: HttpOrigin,
    access_key: Option<AccessKey>,
    /// Unauthenticated AWS_AUTH requests are served (no keys; loopback or `--insecure`).
    open: bool,
    body_limit: usize,
}

/// Paths under a data store's base that need no credentials.
const PUBLIC: [&str; 2] = ["/metadata", "/.well-known/smart-configuration"];

impl Authn {
    pub fn new(
        registry: Registry,
        origin: HttpOrigin,
        access_key: Option<AccessKey>,
        open: bool,
        body_limit: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                origin,
                access_key,
                open,
                body_limit,
            }),
        }
    }
}

/// The middleware: establishes the caller of requests to a data store or answers 401/403.
pub async fn authenticate(State(authn): State<Authn>, mut req: Request, next: Next) -> Response {
    let Some((ds_id, rest)) = datastore_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(live) = authn.inner.registry.get(ds_id) else {
        // The handler answers 404 for an unknown data store.
        req.extensions_mut().insert(Caller::Anonymous);
        return next.run(req).await;
    };
    if req.method() == axum::http::Method::GET && PUBLIC.contains(&rest) {
        req.extensions_mut().insert(Caller::Anonymous);
        let mut response = next.run(req).await;
        response.extensions_mut().insert(Caller::Anonymous);
        return response;
    }
    let ds_id = ds_id.to_string();
    let (caller, req) = match live.auth.smart_metadata() {
        Some(_) => match bearer(&authn, &live, &ds_id, req.headers()).await {
            Ok(caller) => (caller, req),
            Err(e) => return unauthorized(&e),
        },
        None => match signed(&authn, req).await {
            Ok(pair) => pair,
            Err(response) => return *response,
        },
    };
    let mut req = req;
    req.extensions_mut().insert(caller.clone());
    // Layers outside this one (audit, metrics) learn the caller from the response.
    let mut response = next.run(req).await;
    response.extensions_mut().insert(caller);
    response
}

/// `(datastore id, rest of the path after /r4)` of a FHIR path.
fn datastore_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/datastore/")?;
    let (id, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("r4")?;
    (rest.is_empty() || rest.starts_with('/')).then_some((id, rest.trim_end_matches('/')))
}

async fn bearer(
    authn: &Authn,
    live: &Live,
    ds_id: &str,
    headers: &HeaderMap,
) -> Result<Caller, AuthError> {
    let origin = &authn.inner.origin;
    let audiences: Vec<String> = [
        origin.fhir_base(headers, ds_id),
        origin.default_fhir_base(ds_id),
    ]
    .into_iter()
    .flat_map(|base| [format!("{base}/"), base])
    .collect();
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(Caller::Smart(principal(live, value, &audiences).await?))
}

/// The principal of a SMART access token for `live` (a SMART data store), with the patients
/// a fine-grained user reaches resolved; shared by every front end that takes SMART tokens.
pub async fn principal(
    live: &Live,
    authorization: Option<&str>,
    audiences: &[String],
) -> Result<Arc<Principal>, AuthError> {
    let mut principal = live
        .auth
        .authenticate_bearer(authorization, audiences)
        .await?
        .ok_or(AuthError::MissingToken)?;
    if principal.fine_grained
        && let Some(user) = &principal.fhir_user
    {
        let patients = live
            .auth
            .care_teams
            .patients_of((&live.searcher, &live.sync), user)
            .await;
        principal.care_of = Some(patients.map_err(AuthError::Unresolved)?);
    }
    Ok(Arc::new(principal))
}

/// SigV4 for AWS_AUTH data stores on a server with keys; the body is read (within the body
/// limit) to check its hash and handed on unchanged.
async fn signed(authn: &Authn, req: Request) -> Result<(Caller, Request), Box<Response>> {
    let Some(key) = &authn.inner.access_key else {
        if authn.inner.open {
            return Ok((Caller::Anonymous, req));
        }
        return Err(Box::new(forbidden(
            "this server listens off loopback without access keys; start it with \
             --aws-access-key-id (SigV4) or use a SMART on FHIR data store",
        )));
    };
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, authn.inner.body_limit)
        .await
        .map_err(|_| {
            Box::new(outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                "The request body is larger than this server's limit (see --max-body-bytes)",
            ))
        })?;
    let verified = sigv4::verify_request(
        key,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &bytes,
        chrono::Utc::now(),
    );
    match verified {
        Ok(()) => Ok((
            Caller::AccessKey(key.id.clone()),
            Request::from_parts(parts, Body::from(bytes)),
        )),
        Err(e) => Err(Box::new(forbidden(&e.to_string()))),
    }
}

/// An OperationOutcome response (the FHIR API's error format).
fn outcome(status: StatusCode, code: &str, message: &str) -> Response {
    let outcome = OperationOutcome::new(vec![Issue::error(code, message)]);
    let body = serde_json::to_string(&outcome).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(Body::from(body))
        .expect("static response parts")
}

fn forbidden(message: &str) -> Response {
    outcome(StatusCode::FORBIDDEN, "security", message)
}

/// 401 with RFC 6750's challenge (503 when the identity provider cannot be reached).
fn unauthorized(e: &AuthError) -> Response {
    if e.is_unavailable() {
        tracing::warn!("{e}");
        return outcome(StatusCode::SERVICE_UNAVAILABLE, "transient", &e.to_string());
    }
    let mut response = outcome(StatusCode::UNAUTHORIZED, "login", &e.to_string());
    let challenge = match e {
        AuthError::MissingToken => r#"Bearer realm="fhirlake""#.to_string(),
        _ => format!(
            r#"Bearer realm="fhirlake", error="invalid_token", error_description="{}""#,
            e.to_string().replace(['"', '\\'], "'")
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_data_store_of_a_path() {
        assert_eq!(
            datastore_path("/datastore/abc/r4/Patient/1"),
            Some(("abc", "/Patient/1"))
        );
        assert_eq!(datastore_path("/datastore/abc/r4/"), Some(("abc", "")));
        assert_eq!(
            datastore_path("/datastore/abc/r4/metadata"),
            Some(("abc", "/metadata"))
        );
        assert_eq!(datastore_path("/datastore/abc/r4x"), None);
        assert_eq!(datastore_path("/metadata"), None);
    }
}
