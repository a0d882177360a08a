//! The AWS JSON 1.0 protocol for the control plane: `POST /` with `X-Amz-Target:
//! HealthLake.<Operation>` and a JSON body, answered with the operation's JSON output or
//! `{"__type": "<Error>", "message": "..."}`.
//!
//! This is what the AWS SDKs and CLI speak, so `boto3.client("healthlake",
//! endpoint_url="http://127.0.0.1:8080")` drives fhirlake unchanged. With access keys
//! configured, requests must carry a valid SigV4 signature ([`crate::auth::sigv4`]); without, the
//! signature is not checked, which is allowed only on loopback (the embedded default).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::operation::Operation;
use super::requests::Request;
use super::{ControlError, ControlPlane};
use crate::audit::http::Subject;
use crate::auth::Caller;

/// The content type of the protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// The control plane's routes (`POST /`), to merge into the REST API's router.
pub fn router(control: ControlPlane) -> Router {
    Router::new().route("/", post(handle)).with_state(control)
}

/// Verifies the request's SigV4 signature when access keys are configured. Without keys the
/// control plane is open, which the server allows only when it listens on loopback.
fn authenticate(
    control: &ControlPlane,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ControlError> {
    match &control.config().access_key {
        Some(key) => {
            crate::auth::sigv4::verify(key, &Method::POST, "/", headers, body, chrono::Utc::now())
                .map_err(ControlError::from)
        }
        None if control.config().open => Ok(()),
        None => Err(ControlError::AccessDenied(
            "this server listens beyond loopback, so the control plane requires signed \
             requests: start it with --aws-access-key-id and --aws-secret-access-key"
                .into(),
        )),
    }
}

fn reply(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

/// The AWS JSON error answer; the type is in `x-amzn-ErrorType` too (as AWS sends it), so
/// the metrics middleware can tell a ThrottlingException from other 400s.
pub(crate) fn error_reply(e: &ControlError) -> Response {
    let mut response = reply(
        e.status(),
        &json!({"__type": e.type_name(), "message": e.to_string()}),
    );
    let error_type = HeaderValue::from_static(e.type_name());
    response
        .headers_mut()
        .insert("x-amzn-errortype", error_type);
    response
}

/// Answers a call and tells the audit log (outer middleware) who made it: the access key
/// that signed it, or anonymous on an open server (or when the signature was refused).
async fn handle(control: State<ControlPlane>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match &control.config().access_key {
        Some(key) => Caller::AccessKey(key.id.clone()),
        None => Caller::Anonymous,
    };
    let mut response = answer(control, headers, body).await;
    if !matches!(response.status().as_u16(), 401 | 403) {
        response.extensions_mut().insert(caller);
    }
    response
}

async fn answer(State(control): State<ControlPlane>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = authenticate(&control, &headers, &body) {
        return error_reply(&e);
    }
    let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            &json!({
                "__type": "UnknownOperationException",
                "message": "POST / is the HealthLake control-plane API: send X-Amz-Target: \
                            HealthLake.<Operation> with a JSON body (FHIR requests go to \
                            /datastore/<id>/r4/)"
            }),
        );
    };
    let Some(operation) = target.strip_prefix("HealthLake.") else {
        return reply(
            StatusCode::BAD_REQUEST,
            &json!({
                "__type": "UnknownOperationException",
                "message": format!("Unknown target '{target}'; expected HealthLake.<Operation>")
            }),
        );
    };
    let operation = match operation.parse::<Operation>() {
        Ok(op) => op,
        Err(e) => return error_reply(&e),
    };
    let parsed: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error_reply(&ControlError::Validation(format!(
                    "The request body is not valid JSON: {e}"
                )));
            }
        }
    };
    let request = match Request::parse(operation, &parsed) {
        Ok(r) => r,
        Err(e) => return error_reply(&e),
    };
    let host = control.origin().host(&headers).to_string();
    match control.call(&request, &host).await {
        Ok(out) => {
            let out = json!(out);
            let mut response = reply(StatusCode::OK, &out);
            response.extensions_mut().insert(subject(&parsed, &out));
            response
        }
        Err(e) => {
            if matches!(e, ControlError::Internal(_)) {
                tracing::error!(%operation, "control plane: {e}");
            }
            error_reply(&e)
        }
    }
}

/// The data store and job a call concerned, for the audit log: named in the request or, for
/// what the call created, in its output.
fn subject(request: &Value, output: &Value) -> Subject {
    let member = |name: &str| {
        [request, output]
            .into_iter()
            .find_map(|v| v.get(name)?.as_str().map(String::from))
    };
    Subject {
        datastore_id: member("DatastoreId"),
        job_id: member("JobId"),
    }
}
