//! FHIR Bulk Data export (`$export`) on each data store's FHIR base URL.
//!
//! * kick-off: `GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/{id}/$export`
//!   with `Prefer: respond-async`, `_type`, `_since` and `_outputFormat` (NDJSON); a POST body
//!   may carry HealthLake's `OutputDataConfig` (a `file://` location under an allowed root;
//!   the default is `<data-dir>/exports`). Answer: 202, `Content-Location: [base]/export/{job}`
//!   and HealthLake's `{datastoreId, jobStatus, jobId}`.
//! * status: `GET [base]/export/{job}`: 202 with `X-Progress` while running, then 200 with the
//!   Bulk Data manifest (`transactionTime`, `request`, `requiresAccessToken`, `output[]`,
//!   `error[]`); a failed job answers 500 with an OperationOutcome.
//! * files: `GET [base]/export/{job}/{file}` (NDJSON), the URLs the manifest lists.
//! * cancel: `DELETE [base]/export/{job}`: 202, HealthLake's `exportJobProperties` with
//!   `CANCEL_SUBMITTED`.
//!
//! Jobs are the control plane's export jobs, so they are also visible to
//! DescribeFHIRExportJob / ListFHIRExportJobs and hold the data store's single job slot.

use std::collections::HashMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::location::Location;
use super::records::JobRecord;
use super::staging::export_output_name;
use super::{ControlError, ControlPlane};
use crate::auth::Caller;
use crate::auth::http::{Authn, authenticate};
use crate::export::{ExportRequest, ExportScope};
use fhirlake_schema::outcome::{Issue, OperationOutcome};
use fhirlake_store::{Datastore, JobKind, JobStatus};

const FHIR_JSON: &str = "application/fhir+json";
const NDJSON_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// The Bulk Data routes, to merge into the REST API's router.
pub fn router(control: ControlPlane) -> Router {
    let base = "/datastore/{ds}/r4";
    Router::new()
        .route(&format!("{base}/$export"), get(system).post(system))
        .route(
            &format!("{base}/Patient/$export"),
            get(patient).post(patient),
        )
        .route(
            &format!("{base}/Group/{{group}}/$export"),
            get(group).post(group),
        )
        .route(
            &format!("{base}/export/{{job}}"),
            get(status).delete(cancel),
        )
        .route(&format!("{base}/export/{{job}}/{{file}}"), get(file))
        .with_state(control.clone())
        .layer(middleware::from_fn_with_state(
            authn(&control),
            authenticate,
        ))
}

/// Bulk Data authenticates like the FHIR API of the same data store.
fn authn(control: &ControlPlane) -> Authn {
    let config = control.config();
    Authn::new(
        control.registry().clone(),
        control.origin().clone(),
        config.access_key.clone(),
        config.open,
        1 << 20,
    )
}

/// Exports read every resource they write out, so SMART callers need system-level scopes.
fn permitted(caller: &Caller, types: Option<&[String]>) -> Result<(), Problem> {
    // Without `_type` an export reads every type.
    let all = ["*".to_string()];
    let types = types.unwrap_or(&all);
    caller
        .system_read("$export", types.iter().map(String::as_str))
        .map_err(|e| Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()))
}

fn outcome(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let outcome = OperationOutcome::new(vec![Issue::error(code, message)]);
    json_response(status, &serde_json::to_value(outcome).unwrap_or_default())
}

/// An OperationOutcome to answer with, kept small until it becomes the response.
struct Problem {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        outcome(self.status, self.code, self.message)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

fn control_error(e: ControlError) -> Response {
    let (status, code) = match &e {
        ControlError::ResourceNotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        ControlError::Conflict(_) | ControlError::Throttling(_) => {
            (StatusCode::TOO_MANY_REQUESTS, "throttled")
        }
        ControlError::AccessDenied(_) => (StatusCode::FORBIDDEN, "forbidden"),
        ControlError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
        _ => (StatusCode::BAD_REQUEST, "invalid"),
    };
    outcome(status, code, e.to_string())
}

/// The served data store `id`, or the 404 the FHIR API gives for an unknown one.
fn served(control: &ControlPlane, id: &str) -> Result<std::sync::Arc<Datastore>, Problem> {
    control
        .registry()
        .get(id)
        .map(|l| l.ds.clone())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("Datastore {id} does not exist or is not active"),
            )
        })
}

fn base_url(headers: &HeaderMap, control: &ControlPlane, ds: &str) -> String {
    format!("{}/", control.origin().fhir_base(headers, ds))
}

async fn system(
    State(c): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    kick_off(c, caller, ds, ExportScope::System, uri, headers, q, body).await
}

async fn patient(
    State(c): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    Path(ds): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    kick_off(c, caller, ds, ExportScope::Patient, uri, headers, q, body).await
}

async fn group(
    State(c): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    Path((ds, group)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    kick_off(
        c,
        caller,
        ds,
        ExportScope::Group(group),
        uri,
        headers,
        q,
        body,
    )
    .await
}

/// The export request of a kick-off's parameters, or the 400 explaining what is wrong.
fn parse_request(
    scope: ExportScope,
    q: &HashMap<String, String>,
) -> Result<ExportRequest, Problem> {
    let invalid = |m: String| Problem::new(StatusCode::BAD_REQUEST, "invalid", m);
    if let Some(format) = q.get("_outputFormat")
        && !NDJSON_FORMATS.contains(&format.as_str())
    {
        return Err(invalid(format!(
            "_outputFormat '{format}' is not supported; use application/fhir+ndjson"
        )));
    }
    for key in q.keys() {
        if !["_type", "_since", "_outputFormat"].contains(&key.as_str()) {
            return Err(invalid(format!(
                "parameter '{key}' is not supported by $export (supported: _type, _since, \
                 _outputFormat)"
            )));
        }
    }
    let types = q.get("_type").map(|t| {
        t.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
    });
    let since = match q.get("_since") {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    invalid(format!(
                        "_since '{s}' is not a FHIR instant (e.g. 2026-01-01T00:00:00Z)"
                    ))
                })?
                .with_timezone(&chrono::Utc),
        ),
    };
    Ok(ExportRequest {
        scope,
        types,
        since,
    })
}

#[allow(clippy::too_many_arguments)]
async fn kick_off(
    c: ControlPlane,
    caller: Caller,
    ds_id: String,
    scope: ExportScope,
    uri: Uri,
    headers: HeaderMap,
    q: HashMap<String, String>,
    body: Bytes,
) -> Response {
    let ds = match served(&c, &ds_id) {
        Ok(ds) => ds,
        Err(p) => return p.into_response(),
    };
    let request = match parse_request(scope, &q) {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    if let Err(p) = permitted(&caller, request.types.as_deref()) {
        return p.into_response();
    }
    let prefer = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !prefer
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
    {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "$export runs asynchronously: send the header 'Prefer: respond-async'",
        );
    }
    let config: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("the request body is not JSON: {e}"),
                );
            }
        }
    };
    let output = match config["OutputDataConfig"]["S3Configuration"]["S3Uri"].as_str() {
        Some(uri) => match Location::parse(
            uri,
            &c.config().allowed_roots,
            "OutputDataConfig.S3Configuration.S3Uri",
        ) {
            Ok(p) => p,
            Err(e) => return control_error(e),
        },
        None => Location::Local(c.installation().data_dir.join("exports")),
    };
    let registry = fhirlake_schema::Registry::global();
    if let Some(unknown) = request
        .types
        .iter()
        .flatten()
        .find(|t| registry.canonical_name(t) != Some(t.as_str()))
    {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("_type '{unknown}' is not an R4 resource type"),
        );
    }
    if let ExportScope::Group(id) = &request.scope {
        match c
            .installation()
            .store
            .read_current(&ds.id, "Group", id)
            .await
        {
            Ok(Some(v)) if !v.deleted => {}
            Ok(_) => {
                return outcome(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    format!("Group/{id} does not exist in this data store"),
                );
            }
            Err(e) => return control_error(e.into()),
        }
    }
    let request_url = format!(
        "{}{}",
        c.origin().root(&headers),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    let job = match c
        .start_export_job(
            &ds,
            request,
            output,
            None,
            JobRecord {
                job_name: config["JobName"].as_str().map(str::to_string),
                data_access_role_arn: config["DataAccessRoleArn"].as_str().map(str::to_string),
                output_data_config: serde_json::from_value(config["OutputDataConfig"].clone()).ok(),
                request: Some(request_url),
                ..JobRecord::default()
            },
        )
        .await
    {
        Ok(job) => job,
        Err(e) => return control_error(e),
    };
    let location = format!("{}export/{}", base_url(&headers, &c, &ds.id), job.job_id);
    let mut r = json_response(
        StatusCode::ACCEPTED,
        &json!({"datastoreId": ds.id, "jobStatus": job.status, "jobId": job.job_id}),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    r
}

async fn export_job(
    c: &ControlPlane,
    ds: &str,
    job: &str,
) -> Result<fhirlake_store::Job, Response> {
    served(c, ds).map_err(IntoResponse::into_response)?;
    let not_found = || {
        outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("export job {job} does not exist in this data store"),
        )
    };
    match c.installation().store.job(job).await {
        Ok(j) if j.datastore_id == ds && j.kind == JobKind::Export => Ok(j),
        Ok(_) | Err(fhirlake_store::StoreError::NoSuchJob(_)) => Err(not_found()),
        Err(e) => Err(control_error(e.into())),
    }
}

async fn status(
    State(c): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    Path((ds, job_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = caller.system_any("$export") {
        return Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()).into_response();
    }
    let job = match export_job(&c, &ds, &job_id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    match job.status {
        JobStatus::Submitted | JobStatus::Queued | JobStatus::InProgress => {
            let p = JobRecord::of(&job).progress.unwrap_or_default();
            let progress = format!(
                "{} resources, {}/{} resource types",
                p.resources, p.types_done, p.types_total
            );
            let mut r = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                r.headers_mut().insert("x-progress", v);
            }
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        JobStatus::Completed => {
            let requires_token = matches!(caller, Caller::Smart(_));
            let base = base_url(&headers, &c, &ds);
            let record = JobRecord::of(&job);
            let output: Vec<Value> = record
                .output
                .iter()
                .flatten()
                .map(|f| {
                    json!({
                        "type": f.resource_type,
                        "url": format!("{base}export/{job_id}/{}", f.name),
                        "count": f.count,
                    })
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({
                    "transactionTime": record.transaction_time,
                    "request": record.request.unwrap_or_default(),
                    "requiresAccessToken": requires_token,
                    "output": output,
                    "error": [],
                }),
            )
        }
        JobStatus::CancelSubmitted | JobStatus::CancelInProgress | JobStatus::CancelCompleted => {
            outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("export job {job_id} was cancelled"),
            )
        }
        _ => outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            JobRecord::of(&job)
                .message
                .unwrap_or_else(|| "the export failed".to_string()),
        ),
    }
}

async fn cancel(
    State(c): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    Path((ds, job_id)): Path<(String, String)>,
) -> Response {
    if let Err(e) = caller.system_any("$export") {
        return Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()).into_response();
    }
    if let Err(r) = export_job(&c, &ds, &job_id).await {
        return r;
    }
    match c.cancel_export_job(&ds, &job_id).await {
        Ok(job) => {
            let mut props = json!(ControlPlane::export_properties(&job));
            props["jobStatus"] = json!(job.status);
            json_response(StatusCode::ACCEPTED, &json!({"exportJobProperties": props}))
        }
        // HealthLake's answer for cancelling a finished or unknown job.
        Err(_) => outcome(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "Interaction not supported.",
        ),
    }
}

async fn file(
    State(c): State<ControlPlane>,
    Extension(caller): Extension<Caller>,
    Path((ds, job_id, name)): Path<(String, String, String)>,
) -> Response {
    if let Err(e) = caller.system_any("$export") {
        return Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()).into_response();
    }
    let job = match export_job(&c, &ds, &job_id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    let record = JobRecord::of(&job);
    let listed = record.output.iter().flatten().any(|f| f.name == name);
    if !listed {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("export job {job_id} has no file '{name}'"),
        );
    }
    let gone = |e: &dyn std::fmt::Display| {
        outcome(
            StatusCode::GONE,
            "not-found",
            format!("export file {name} is no longer available: {e}"),
        )
    };
    let output = record.export_output();
    let file = format!("{}/{name}", export_output_name(&ds, &job_id));
    let stream = match output.strip_prefix("file://") {
        Some(dir) => match tokio::fs::File::open(std::path::Path::new(dir).join(&file)).await {
            Ok(f) => Body::from_stream(tokio_util::io::ReaderStream::new(f)),
            Err(e) => return gone(&e),
        },
        // Checked against today's roots: a root removed since the export closes its files.
        None => match Location::parse(&output, &c.config().allowed_roots, "output") {
            Ok(Location::S3(prefix)) => match prefix.get(&file).await {
                Ok(s) => Body::from_stream(s),
                Err(e) => return gone(&e),
            },
            Ok(Location::Local(_)) => return gone(&"not an S3 location"),
            Err(e) => return gone(&e),
        },
    };
    let mut r = stream.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    r
}
