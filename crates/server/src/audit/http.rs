//! The audit middleware of the HTTP server: one record per request, with the operation named
//! from the method and path (HealthLake's names), the caller the routers' authentication put
//! into the response extensions ([`Caller`]), and the status.
//!
//! It sits outside every router (FHIR, Bulk Data, control plane) but inside the layer that
//! runs writes on their own tasks, so a write whose client leaves is still recorded with its
//! status. A read whose client leaves is recorded as `aborted` (a guard records it when the
//! request's future is dropped).

use std::net::SocketAddr;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;

use super::{AuditLog, AuditRecord, Outcome};
use crate::auth::Caller;
use crate::operation_name;
use crate::tls::TlsListener;

/// The peer address of a connection, for plain TCP and TLS listeners alike (axum's own
/// `SocketAddr` connect info covers only `TcpListener`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Added by a router to its response to say what the call concerned, where the path does
/// not (the control plane's data store and job ids are in its JSON body).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub datastore_id: Option<String>,
    pub job_id: Option<String>,
}

/// The middleware; `None` (no audit log) passes requests through.
pub async fn record(State(log): State<Option<AuditLog>>, req: Request, next: Next) -> Response {
    let Some(log) = log else {
        return next.run(req).await;
    };
    let Some(entry) = describe(&req) else {
        return next.run(req).await;
    };
    let mut pending = Pending(Some((log, entry)));
    let response = next.run(req).await;
    let (log, mut entry) = pending.0.take().expect("taken once");
    complete(&mut entry, &response);
    log.append(entry).await;
    response
}

/// Records the call as aborted if its future is dropped before the answer.
struct Pending(Option<(AuditLog, AuditRecord)>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((log, mut entry)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            entry.outcome = Outcome::Aborted;
            runtime.spawn(async move { log.append(entry).await });
        }
    }
}

/// The record of a request before its answer; `None` for requests that are not API calls
/// (Prometheus scraping `/metrics`).
fn describe(req: &Request) -> Option<AuditRecord> {
    let path = req.uri().path();
    if path == "/metrics" {
        return None;
    }
    let mut entry = match path.strip_prefix("/datastore/") {
        Some(_) => fhir_call(req.method(), path),
        None if path == "/" && req.method() == Method::POST => control_call(req),
        None if path == "/metadata" => AuditRecord::new("Capabilities", "anonymous"),
        None => AuditRecord::new("Unknown", "anonymous"),
    };
    entry.source = req
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(addr))| addr.to_string());
    entry.forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    Some(entry)
}

/// The control plane: the operation is `X-Amz-Target`'s `HealthLake.<Operation>` (an
/// unknown target is recorded as sent, cut to 64 bytes, so probing shows up too).
fn control_call(req: &Request) -> AuditRecord {
    let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
    let operation = operation_name::control_operation(method, path, headers)
        .map(String::from)
        .or_else(|| {
            let target = headers.get("x-amz-target")?.to_str().ok()?;
            Some(target.chars().take(64).collect())
        })
        .unwrap_or_else(|| "UnknownOperation".into());
    AuditRecord::new(operation, "anonymous")
}

/// A request under `/datastore/`, named by the shared mapping ([`operation_name`]).
fn fhir_call(method: &Method, path: &str) -> AuditRecord {
    let operation = operation_name::fhir_operation(method, path).map_or("Unknown", |(_, op)| op);
    let mut entry = AuditRecord::new(operation, "anonymous");
    let rest = path.strip_prefix("/datastore/").unwrap_or(path);
    let (ds, rest) = rest.split_once('/').unwrap_or((rest, ""));
    entry.datastore_id = Some(ds.to_string()).filter(|d| !d.is_empty());
    let segments: Vec<&str> = rest.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["export", job, ..] => entry.job_id = Some(job.to_string()),
        [ty, rest @ ..] if ty.starts_with(|c: char| c.is_ascii_uppercase()) => {
            entry.resource_type = Some(ty.to_string());
            entry.resource_id = rest
                .first()
                .filter(|id| !id.starts_with(['_', '$']))
                .map(|id| id.to_string());
        }
        _ => {}
    }
    entry
}

/// Fills in what only the answer tells: status, outcome, caller, and the subject a router
/// named.
fn complete(entry: &mut AuditRecord, response: &Response) {
    let status = response.status().as_u16();
    entry.status = Some(status);
    entry.outcome = Outcome::of_status(status);
    if let Some(caller) = response.extensions().get::<Caller>() {
        entry.principal = caller.name();
    }
    if let Some(subject) = response.extensions().get::<Subject>() {
        entry.datastore_id = subject.datastore_id.clone().or(entry.datastore_id.take());
        entry.job_id = subject.job_id.clone().or(entry.job_id.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_come_from_the_shared_mapping() {
        let e = fhir_call(&Method::GET, "/datastore/abc/r4/Patient/1/_history/2");
        assert_eq!(e.operation, "VReadResource");
        let e = fhir_call(&Method::PATCH, "/datastore/abc/r4/Patient/1");
        assert_eq!(e.operation, "Unknown");
    }

    #[test]
    fn records_name_the_data_store_resource_and_job() {
        let e = fhir_call(&Method::GET, "/datastore/abc/r4/Observation/o-1");
        assert_eq!(e.datastore_id.as_deref(), Some("abc"));
        assert_eq!(e.resource_type.as_deref(), Some("Observation"));
        assert_eq!(e.resource_id.as_deref(), Some("o-1"));
        let e = fhir_call(
            &Method::GET,
            "/datastore/abc/r4/export/job9/Patient-1.ndjson",
        );
        assert_eq!(e.job_id.as_deref(), Some("job9"));
        assert_eq!(e.resource_type, None);
        let e = fhir_call(&Method::GET, "/datastore/abc/r4/Patient/_history");
        assert_eq!(e.resource_type.as_deref(), Some("Patient"));
        assert_eq!(e.resource_id, None);
        let e = fhir_call(&Method::GET, "/datastore/abc/r4/Group/g1/$export");
        assert_eq!(e.resource_id.as_deref(), Some("g1"));
    }
}
