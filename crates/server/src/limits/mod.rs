//! Per-operation metrics and quotas, HealthLake style: one middleware names every request's
//! operation ([`crate::operation_name`]), refuses it when its data store's bucket for that
//! operation is empty (before any handler, so a throttled write never reaches the store),
//! and counts it with its latency. `GET /metrics` renders the counters.
//!
//! Requests are counted per live data store; control-plane requests (which name their data
//! store in the body) and requests for unknown data stores share the series with an empty
//! `datastore_id`, so a client cannot grow the series set by inventing ids.

pub mod metrics;
pub mod quota;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::control::ControlError;
use crate::operation_name::{control_operation, fhir_operation};
use crate::registry::Registry;
use fhirlake_schema::outcome::{Issue, OperationOutcome};
use metrics::{OpMetrics, Outcome, Series};
pub use quota::{Quota, Quotas, TokenBucket};

/// The metrics and quota bucket of one data store and operation.
struct Entry {
    /// The data store's name for the `datastore` label (empty without one).
    datastore_name: String,
    metrics: OpMetrics,
    /// `None` when the operation has no quota.
    bucket: Option<TokenBucket>,
}

/// Data store id -> operation -> entry. Entries are made once and never removed, so the
/// per-request path is a read lock and two lookups without allocating.
type Entries = HashMap<String, HashMap<&'static str, Arc<Entry>>>;

/// The counters and buckets of a server.
pub struct Limits {
    quotas: Quotas,
    entries: RwLock<Entries>,
}

impl Limits {
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            entries: RwLock::default(),
        }
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The entry of `operation` on data store `datastore` ("" for none), made on first use.
    fn entry(&self, registry: &Registry, datastore: &str, operation: &'static str) -> Arc<Entry> {
        if let Some(entry) = self.find(datastore, operation) {
            return entry;
        }
        // Only live data stores get series of their own.
        let live = registry.get(datastore);
        let id = live.as_ref().map_or("", |l| l.ds.id.as_str());
        if let Some(entry) = self.find(id, operation) {
            return entry;
        }
        let name = live.as_ref().map_or("", |l| l.ds.name.as_str());
        self.insert(id, name, operation)
    }

    fn insert(&self, id: &str, name: &str, operation: &'static str) -> Arc<Entry> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(id.to_string()).or_default().entry(operation);
        let entry = entry.or_insert_with(|| {
            Arc::new(Entry {
                datastore_name: name.to_string(),
                metrics: OpMetrics::default(),
                bucket: self.quotas.get(operation).map(TokenBucket::new),
            })
        });
        Arc::clone(entry)
    }

    fn find(&self, datastore: &str, operation: &'static str) -> Option<Arc<Entry>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(datastore)?.get(operation).cloned()
    }

    /// Every series in Prometheus' text format, ordered by data store and operation.
    pub fn render(&self) -> String {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut series: Vec<(&str, &str, &Entry)> = entries
            .iter()
            .flat_map(|(id, ops)| ops.iter().map(move |(op, e)| (id.as_str(), *op, &**e)))
            .collect();
        series.sort_by_key(|(id, op, _)| (*id, *op));
        let series: Vec<Series> = series
            .into_iter()
            .map(|(id, op, e)| (labels(&e.datastore_name, id, op), e.metrics.snapshot()))
            .collect();
        metrics::render(&series)
    }
}

fn labels(name: &str, id: &str, operation: &str) -> String {
    format!(
        "datastore=\"{}\",datastore_id=\"{}\",operation=\"{operation}\"",
        metrics::escape(name),
        metrics::escape(id)
    )
}

/// Which front end answers a request, which decides how a refusal looks.
#[derive(Clone, Copy)]
enum Plane {
    Fhir,
    Control,
}

/// What the middleware needs: the server's counters and the live data stores.
#[derive(Clone)]
pub struct Tracker {
    pub limits: Arc<Limits>,
    pub registry: Registry,
}

/// Middleware (layered in [`crate::api::Server::run`]): throttles and counts every request
/// that names a known operation; anything else passes untouched.
pub async fn track(State(state): State<Tracker>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let (method, path) = (request.method(), request.uri().path());
    let named = match fhir_operation(method, path) {
        Some((ds, op)) => Some((ds, op, Plane::Fhir)),
        None => {
            control_operation(method, path, request.headers()).map(|op| ("", op, Plane::Control))
        }
    };
    let Some((datastore, operation, plane)) = named else {
        return next.run(request).await;
    };
    let entry = state.limits.entry(&state.registry, datastore, operation);
    if let Some(Err(wait)) = entry.bucket.as_ref().map(TokenBucket::try_take) {
        entry.metrics.record(Outcome::Throttled, start.elapsed());
        return throttled(plane, operation, wait);
    }
    let response = next.run(request).await;
    entry.metrics.record(outcome(&response), start.elapsed());
    response
}

/// The outcome of an answered request. The control plane reports its own throttling
/// (ThrottlingException) with 400, as the AWS JSON protocol does, and names it in
/// `x-amzn-ErrorType`.
fn outcome(response: &Response) -> Outcome {
    let status = response.status();
    let aws_throttling = status == StatusCode::BAD_REQUEST
        && response
            .headers()
            .get("x-amzn-errortype")
            .is_some_and(|v| v.as_bytes().starts_with(b"ThrottlingException"));
    match aws_throttling {
        true => Outcome::Throttled,
        false => Outcome::of(status),
    }
}

/// The refusal of a request over quota: 429 with an OperationOutcome (`throttled`) for FHIR,
/// HealthLake's ThrottlingException for the control plane; both say when to retry.
fn throttled(plane: Plane, operation: &str, wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let message = format!(
        "Rate exceeded: the quota of {operation} is used up; retry in {seconds} s \
         (see fhirlake serve --quota)"
    );
    let mut response = match plane {
        Plane::Fhir => {
            let outcome = OperationOutcome::new(vec![Issue::error("throttled", message)]);
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(serde_json::to_string(&outcome).unwrap_or_default().into())
                .expect("static response parts")
        }
        Plane::Control => crate::control::wire::error_reply(&ControlError::Throttling(message)),
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_throttling_is_counted_as_throttled() {
        let reply = crate::control::wire::error_reply(&ControlError::Throttling("x".into()));
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
        assert_eq!(outcome(&reply), Outcome::Throttled);
        let reply = crate::control::wire::error_reply(&ControlError::Validation("x".into()));
        assert_eq!(outcome(&reply), Outcome::UserError);
    }

    #[test]
    fn fhir_refusals_are_429_outcomes_with_retry_after() {
        let reply = throttled(Plane::Fhir, "CreateResource", Duration::from_millis(300));
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers()[header::RETRY_AFTER], "1");
        let reply = throttled(
            Plane::Control,
            "CreateFHIRDatastore",
            Duration::from_secs(59),
        );
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
        assert_eq!(reply.headers()[header::RETRY_AFTER], "59");
    }
}
