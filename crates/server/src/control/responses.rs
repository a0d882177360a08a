//! Typed responses of the control plane's operations, in the shapes of the AWS HealthLake API
//! model. The operations return these; only the AWS JSON 1.0 edge (`wire.rs`) and the CLI's
//! `--output json` serialize them (timestamps as epoch seconds, as the protocol sends them).

use std::collections::BTreeMap;

use serde::Serialize;

use super::records::{
    ErrorCause, InputDataConfig, JobProgressReport, OutputDataConfig, PreloadDataConfig,
    SseConfiguration,
};
use fhirlake_store::JobStatus;

pub use super::records::DatastoreState;

/// A time as the JSON protocol sends it: epoch seconds with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct EpochSeconds(pub f64);

impl EpochSeconds {
    /// An RFC 3339 time as recorded by the store; an unreadable one is the epoch.
    pub fn parse(rfc3339: &str) -> Self {
        Self(
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .map(|t| t.timestamp_millis() as f64 / 1000.0)
                .unwrap_or(0.0),
        )
    }

    /// The time in RFC 3339, for people.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis((self.0 * 1000.0) as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    }
}

/// `DatastoreProperties`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatastoreProperties {
    pub datastore_id: String,
    pub datastore_arn: String,
    pub datastore_name: String,
    pub datastore_status: DatastoreState,
    pub created_at: EpochSeconds,
    pub datastore_type_version: &'static str,
    pub datastore_endpoint: String,
    pub sse_configuration: SseConfiguration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preload_data_config: Option<PreloadDataConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_provider_configuration: Option<crate::auth::config::IdentityProviderConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_cause: Option<ErrorCause>,
}

/// The answer of CreateFHIRDatastore and DeleteFHIRDatastore.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatastoreSummary {
    pub datastore_id: String,
    pub datastore_arn: String,
    pub datastore_status: DatastoreState,
    pub datastore_endpoint: String,
}

impl From<&DatastoreProperties> for DatastoreSummary {
    fn from(p: &DatastoreProperties) -> Self {
        Self {
            datastore_id: p.datastore_id.clone(),
            datastore_arn: p.datastore_arn.clone(),
            datastore_status: p.datastore_status,
            datastore_endpoint: p.datastore_endpoint.clone(),
        }
    }
}

/// DescribeFHIRDatastore.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeDatastoreResponse {
    pub datastore_properties: DatastoreProperties,
}

/// ListFHIRDatastores.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListDatastoresResponse {
    pub datastore_properties_list: Vec<DatastoreProperties>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// One tag, as ListTagsForResource lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// ListTagsForResource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsResponse {
    pub tags: Vec<Tag>,
}

impl ListTagsResponse {
    pub fn new(tags: &BTreeMap<String, String>) -> Self {
        Self {
            tags: tags
                .iter()
                .map(|(k, v)| Tag {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
}

/// The answer of StartFHIRImportJob, StartFHIRExportJob and CancelFHIRExportJob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobSummary {
    pub job_id: String,
    pub job_status: JobStatus,
    pub datastore_id: String,
}

/// `ImportJobProperties`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportJobProperties {
    pub job_id: String,
    pub job_status: JobStatus,
    pub submit_time: EpochSeconds,
    pub datastore_id: String,
    pub input_data_config: Option<InputDataConfig>,
    pub job_output_data_config: Option<OutputDataConfig>,
    pub data_access_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<EpochSeconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_progress_report: Option<JobProgressReport>,
}

/// `ExportJobProperties`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportJobProperties {
    pub job_id: String,
    pub job_status: JobStatus,
    pub submit_time: EpochSeconds,
    pub datastore_id: String,
    pub output_data_config: OutputDataConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<EpochSeconds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_access_role_arn: Option<String>,
}

/// DescribeFHIRImportJob.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeImportJobResponse {
    pub import_job_properties: ImportJobProperties,
}

/// DescribeFHIRExportJob.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeExportJobResponse {
    pub export_job_properties: ExportJobProperties,
}

/// ListFHIRImportJobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListImportJobsResponse {
    pub import_job_properties_list: Vec<ImportJobProperties>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// ListFHIRExportJobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListExportJobsResponse {
    pub export_job_properties_list: Vec<ExportJobProperties>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// TagResource and UntagResource answer with an empty object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Empty {}

/// One page of `items` from `offset`, with the token of the next page when more remain.
pub fn page<T>(items: Vec<T>, offset: usize, max: usize) -> (Vec<T>, Option<String>) {
    let total = items.len();
    let page = items.into_iter().skip(offset).take(max).collect();
    let next = (offset + max < total).then(|| format!("offset-{}", offset + max));
    (page, next)
}

/// The response of any operation, for callers that dispatch by operation (the wire edge and
/// the CLI). Serializes as the operation's own response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Datastore(DatastoreSummary),
    DescribeDatastore(DescribeDatastoreResponse),
    ListDatastores(ListDatastoresResponse),
    Empty(Empty),
    ListTags(ListTagsResponse),
    Job(JobSummary),
    DescribeImportJob(DescribeImportJobResponse),
    ListImportJobs(ListImportJobsResponse),
    DescribeExportJob(DescribeExportJobResponse),
    ListExportJobs(ListExportJobsResponse),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_a_next_token() {
        let items: Vec<u32> = (0..5).collect();
        assert_eq!(
            page(items.clone(), 0, 2),
            (vec![0, 1], Some("offset-2".into()))
        );
        assert_eq!(
            page(items.clone(), 2, 2),
            (vec![2, 3], Some("offset-4".into()))
        );
        assert_eq!(page(items, 4, 2), (vec![4], None));
    }

    #[test]
    fn times_are_epoch_seconds() {
        let t = EpochSeconds::parse("2020-11-17T00:46:43.209Z");
        assert_eq!(
            serde_json::to_value(t).unwrap(),
            serde_json::json!(1605574003.209)
        );
        assert_eq!(t.to_rfc3339(), "2020-11-17T00:46:43Z");
    }

    #[test]
    fn empty_answers_are_empty_objects() {
        assert_eq!(
            serde_json::to_string(&Response::Empty(Empty {})).unwrap(),
            "{}"
        );
    }
}
