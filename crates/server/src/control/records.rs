//! What the control plane records about a data store and a job, typed.
//!
//! The resource store keeps these as JSON documents next to each data store and job (it knows
//! nothing of HealthLake's shapes); the control plane reads them into these types once and
//! writes them back whole, so no operation indexes into untyped JSON. Member names are
//! HealthLake's, which keeps records written by earlier versions readable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ControlError;
use crate::export::ExportedFile;
use fhirlake_store::Job;

/// `PreloadDataConfig.PreloadDataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreloadDataType {
    #[serde(rename = "SYNTHEA")]
    Synthea,
}

/// `PreloadDataConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PreloadDataConfig {
    pub preload_data_type: PreloadDataType,
}

/// `SseConfiguration.KmsEncryptionConfig.CmkType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CmkType {
    CustomerManagedKmsKey,
    AwsOwnedKmsKey,
}

/// `SseConfiguration.KmsEncryptionConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KmsEncryptionConfig {
    pub cmk_type: CmkType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// `SseConfiguration`: recorded and shown; encryption at rest is the file system's business
/// here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SseConfiguration {
    pub kms_encryption_config: KmsEncryptionConfig,
}

impl Default for SseConfiguration {
    /// What HealthLake reports when a create named no key.
    fn default() -> Self {
        Self {
            kms_encryption_config: KmsEncryptionConfig {
                cmk_type: CmkType::AwsOwnedKmsKey,
                kms_key_id: None,
            },
        }
    }
}

/// `ErrorCause` of a data store whose creation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorCause {
    pub error_message: String,
    pub error_category: String,
}

/// A data store's status as the control plane reports it: the store's lifecycle, plus
/// CREATE_FAILED (recorded as DELETED in the store, with this status in the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DatastoreState {
    Creating,
    Active,
    Deleting,
    Deleted,
    CreateFailed,
}

impl DatastoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "CREATING",
            Self::Active => "ACTIVE",
            Self::Deleting => "DELETING",
            Self::Deleted => "DELETED",
            Self::CreateFailed => "CREATE_FAILED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(Value::String(name.to_string())).ok()
    }
}

impl From<fhirlake_store::DatastoreStatus> for DatastoreState {
    fn from(s: fhirlake_store::DatastoreStatus) -> Self {
        use fhirlake_store::DatastoreStatus as S;
        match s {
            S::Creating => Self::Creating,
            S::Active => Self::Active,
            S::Deleting => Self::Deleting,
            S::Deleted => Self::Deleted,
        }
    }
}

impl std::fmt::Display for DatastoreState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the control plane records about a data store beyond the store's own columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatastoreRecord {
    /// The DatastoreName it was created with (the store's name is the derived SQL name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload_data_config: Option<PreloadDataConfig>,
    /// Enforced by the identity layer ([`crate::auth`]) of every front end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_provider_configuration: Option<crate::auth::config::IdentityProviderConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_configuration: Option<SseConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Overrides the store's status (only CREATE_FAILED is recorded here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DatastoreState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_cause: Option<ErrorCause>,
    /// When deletion finished (RFC 3339), for the retention of deleted data stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

impl DatastoreRecord {
    /// Reads a stored record; one the control plane cannot read is an internal error (it
    /// wrote it).
    pub fn from_stored(props: &Value) -> Result<Self, ControlError> {
        if props.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(props.clone())
            .map_err(|e| ControlError::Internal(format!("unreadable data store record: {e}")))
    }

    pub fn to_stored(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// `S3Configuration` (`S3Uri`, `KmsKeyId`): where a job writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct S3Configuration {
    #[serde(rename = "S3Uri")]
    pub s3_uri: String,
    #[serde(default)]
    pub kms_key_id: String,
}

/// `JobOutputDataConfig` / `OutputDataConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OutputDataConfig {
    pub s3_configuration: S3Configuration,
}

/// `InputDataConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDataConfig {
    #[serde(rename = "S3Uri")]
    pub s3_uri: String,
}

/// An import job's `JobProgressReport`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobProgressReport {
    pub total_number_of_scanned_files: u64,
    #[serde(rename = "TotalSizeOfScannedFilesInMB")]
    pub total_size_of_scanned_files_in_mb: f64,
    pub total_number_of_resources_scanned: u64,
    pub total_number_of_resources_imported: u64,
    pub total_number_of_resources_with_customer_error: u64,
}

/// What an export job asked for (its scope, types, `_since`) and where it writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportSpec {
    #[serde(default)]
    pub scope: Value,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub since: Option<String>,
    /// The output location (a URI; records before S3 support hold a local path).
    #[serde(default)]
    pub output: String,
}

/// A running export's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportCounters {
    pub resources: u64,
    pub bytes: u64,
    pub types_done: u64,
    pub types_total: u64,
}

/// What the control plane records about a job beyond the store's own columns (id, kind,
/// status, times, client token). Import and export jobs share it; each fills its members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_access_role_arn: Option<String>,
    /// Why the job failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    // Import jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_data_config: Option<InputDataConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_output_data_config: Option<OutputDataConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_progress_report: Option<JobProgressReport>,
    // Export jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_data_config: Option<OutputDataConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSpec>,
    /// The FHIR `$export` kick-off URL, for exports started through the FHIR API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ExportCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Vec<ExportedFile>>,
}

impl JobRecord {
    /// The record of `job`; one that cannot be read (the control plane wrote it) reads as
    /// empty rather than hiding the job.
    pub fn of(job: &Job) -> Self {
        if job.properties.is_null() {
            return Self::default();
        }
        serde_json::from_value(job.properties.clone()).unwrap_or_else(|e| {
            tracing::warn!(job = %job.job_id, "unreadable job record: {e}");
            Self::default()
        })
    }

    /// Writes this record into `job` (to be saved with `Store::update_job`).
    pub fn store_in(&self, job: &mut Job) {
        job.properties = serde_json::to_value(self).unwrap_or(Value::Null);
    }

    /// The output location of an export (a URI; a plain local path of an older record is
    /// shown as a `file://` URI).
    pub fn export_output(&self) -> String {
        let output = self
            .export
            .as_ref()
            .map(|e| e.output.as_str())
            .unwrap_or("");
        if output.starts_with('/') {
            format!("file://{output}")
        } else {
            output.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_written_by_earlier_versions_read() {
        let stored = json!({
            "DatastoreName": "cohort", "PreloadDataConfig": null,
            "IdentityProviderConfiguration": null, "ClientToken": null,
            "Tags": {"team": "a"}, "Status": "CREATE_FAILED",
            "ErrorCause": {"ErrorMessage": "m", "ErrorCategory": "NON_RETRYABLE_ERROR"},
        });
        let record = DatastoreRecord::from_stored(&stored).unwrap();
        assert_eq!(record.datastore_name.as_deref(), Some("cohort"));
        assert_eq!(record.status, Some(DatastoreState::CreateFailed));
        assert_eq!(record.tags["team"], "a");
        assert_eq!(
            DatastoreRecord::from_stored(&record.to_stored()).unwrap(),
            record
        );
    }

    #[test]
    fn job_records_round_trip() {
        let stored = json!({
            "JobName": "j", "DataAccessRoleArn": "arn",
            "Export": {"scope": {"level": "system"}, "types": null, "since": null,
                       "output": "/tmp/out"},
            "Progress": {"resources": 3, "bytes": 10, "typesDone": 1, "typesTotal": 2},
            "Output": [{"type": "Patient", "name": "Patient-1.ndjson", "count": 3}],
        });
        let mut job = Job {
            job_id: "j1".into(),
            datastore_id: "d".into(),
            kind: fhirlake_store::JobKind::Export,
            status: fhirlake_store::JobStatus::Completed,
            submit_time: String::new(),
            end_time: None,
            client_token: None,
            properties: stored,
        };
        let record = JobRecord::of(&job);
        assert_eq!(record.export_output(), "file:///tmp/out");
        assert_eq!(record.progress.as_ref().unwrap().types_total, 2);
        record.store_in(&mut job);
        assert_eq!(JobRecord::of(&job), record);
    }
}
