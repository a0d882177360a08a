//! The audit log: one record per API call (REST, Bulk Data, control plane, Flight SQL) and per
//! job start and end, appended to JSON Lines files under `<data-dir>/audit/` and chained by
//! SHA-256 so that editing, deleting or reordering a record is detected (`fhirlake audit
//! verify`).
//!
//! Each record carries `prev_hash` (the previous record's `hash`, [`GENESIS`] for the first)
//! and `hash` = SHA-256 of the record's canonical serialization without `hash` (every other
//! field, in declaration order, compact JSON). Records are typed ([`AuditRecord`]); front ends
//! build them unsealed and [`AuditLog`] seals them in arrival order on its one writer task
//! ([`writer`]), so the chain order is the file order. [`verify`] walks the files again;
//! [`table`] makes them a SQL table (`fhirlake_audit.log`).

pub mod http;
pub mod table;
pub mod verify;
pub mod writer;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use verify::{Problem, VerifyError, tail, verify};
pub use writer::{AuditLog, WriterConfig};

use fhirlake_store::{Job, JobKind, JobStatus};

/// `prev_hash` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The directory under the data directory holding the audit files.
pub const AUDIT_DIR: &str = "audit";

/// Errors opening or writing the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path}, line {line}: the last record cannot be read ({message}); run \
         `fhirlake audit verify` and move the damaged file aside to start a new chain"
    )]
    Corrupt {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
}

/// How a call ended, from its HTTP status (or a gRPC/job result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    ClientError,
    ServerError,
    /// 401 or 403: the caller was not authenticated or not allowed.
    Denied,
    /// The client went away before the answer was ready (the call's work may have happened).
    Aborted,
}

impl Outcome {
    pub fn of_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::Denied,
            400..=499 => Self::ClientError,
            500.. => Self::ServerError,
            _ => Self::Success,
        }
    }
}

/// One audit record, as one line of an audit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1, across files and restarts.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds: when the call arrived.
    pub time: String,
    /// HealthLake-style operation name (`ReadResource`, `CreateFHIRDatastore`, ...).
    pub operation: String,
    /// The caller: a SMART token's subject or client id, an access key id, or `anonymous`.
    pub principal: String,
    /// The peer's `ip:port`.
    pub source: Option<String>,
    /// The `X-Forwarded-For` header as sent (client-controlled unless a proxy sets it).
    pub forwarded_for: Option<String>,
    pub datastore_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Import or export job the call or event concerns.
    pub job_id: Option<String>,
    /// SHA-256 (hex) of a Flight SQL statement's text; the text itself may hold PHI.
    pub sql_sha256: Option<String>,
    /// HTTP status; none for Flight SQL, job events and aborted calls.
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// An unsealed record of `operation` by `principal`, timed now.
    pub fn new(operation: impl Into<String>, principal: impl Into<String>) -> Self {
        Self {
            seq: 0,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            operation: operation.into(),
            principal: principal.into(),
            source: None,
            forwarded_for: None,
            datastore_id: None,
            resource_type: None,
            resource_id: None,
            job_id: None,
            sql_sha256: None,
            status: None,
            outcome: Outcome::Success,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// Records an HTTP status and the outcome it means.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self.outcome = Outcome::of_status(status);
        self
    }

    /// The hash this record must carry: SHA-256 over its canonical serialization, which is
    /// every field but `hash` (so `prev_hash` and `seq` are covered) as compact JSON in
    /// declaration order. Computed from the typed record, so it does not depend on how a
    /// line happens to be spelled, only on what it says.
    pub fn compute_hash(&self) -> String {
        let mut value = serde_json::to_value(self).expect("an audit record serializes");
        if let Some(fields) = value.as_object_mut() {
            fields.shift_remove("hash");
        }
        let canonical = serde_json::to_vec(&value).expect("a JSON value serializes");
        hex::encode(Sha256::digest(canonical))
    }

    /// Links the record after `prev_hash` at position `seq` and sets its hash.
    pub fn seal(&mut self, seq: u64, prev_hash: &str) {
        self.seq = seq;
        self.prev_hash = prev_hash.to_string();
        self.hash = self.compute_hash();
    }
}

/// SHA-256 (hex) of a text, for records that must not hold the text.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Appends `record` to the process's audit log, if it keeps one (`Registry::audit`: servers
/// do; CLI commands do not, so they never write a second chain into a served installation).
pub async fn record(log: Option<AuditLog>, record: AuditRecord) {
    if let Some(log) = log {
        log.append(record).await;
    }
}

/// Records a job's start or end (`ImportJobSubmitted`, `ExportJobCompleted`, ...): the work
/// happens after the API call that started it returned, so its end needs a record of its own.
pub async fn record_job(log: Option<AuditLog>, job: &Job) {
    let mut entry = AuditRecord::new(job_operation(job.kind, job.status), "system");
    entry.datastore_id = Some(job.datastore_id.clone());
    entry.job_id = Some(job.job_id.clone());
    if matches!(job.status, JobStatus::Failed | JobStatus::CancelFailed) {
        entry.outcome = Outcome::ServerError;
    }
    record(log, entry).await;
}

/// `ImportJobCompletedWithErrors` for an import that is COMPLETED_WITH_ERRORS.
fn job_operation(kind: JobKind, status: JobStatus) -> String {
    let kind = match kind {
        JobKind::Import => "Import",
        JobKind::Export => "Export",
    };
    let status: String = status
        .as_str()
        .split('_')
        .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
        .collect();
    format!("{kind}Job{status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let mut a = AuditRecord::new("ReadResource", "anonymous").with_status(200);
        a.seal(1, GENESIS);
        assert_eq!(a.hash.len(), 64);
        assert_eq!(a.hash, a.compute_hash());
        let mut edited = a.clone();
        edited.status = Some(404);
        assert_ne!(edited.compute_hash(), a.hash);
        let mut relinked = a.clone();
        relinked.seal(1, &"1".repeat(64));
        assert_ne!(relinked.hash, a.hash);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::of_status(201), Outcome::Success);
        assert_eq!(Outcome::of_status(304), Outcome::Success);
        assert_eq!(Outcome::of_status(401), Outcome::Denied);
        assert_eq!(Outcome::of_status(403), Outcome::Denied);
        assert_eq!(Outcome::of_status(404), Outcome::ClientError);
        assert_eq!(Outcome::of_status(503), Outcome::ServerError);
    }

    #[test]
    fn job_events_are_named_by_kind_and_status() {
        assert_eq!(
            job_operation(JobKind::Import, JobStatus::CompletedWithErrors),
            "ImportJobCompletedWithErrors"
        );
        assert_eq!(
            job_operation(JobKind::Export, JobStatus::Submitted),
            "ExportJobSubmitted"
        );
    }
}
