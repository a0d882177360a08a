//! Typed requests of the control plane's operations, parsed and validated once at the AWS
//! JSON 1.0 edge (`wire.rs`) with HealthLake's ValidationException wording; the operations
//! themselves and the CLI work with these types, never with request JSON.

use crate::auth::config::IdentityProviderConfiguration;
use std::collections::BTreeMap;

use serde_json::Value;

use super::ControlError;
use super::operation::Operation;
use super::records::{DatastoreState, S3Configuration, SseConfiguration};
use super::shapes;
use fhirlake_store::JobStatus;

/// A page of a List operation: `NextToken` (our opaque `offset-N`) and `MaxResults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub max: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            offset: 0,
            max: shapes::MAX_RESULTS,
        }
    }
}

/// DescribeFHIRDatastore and DeleteFHIRDatastore: the data store they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreIdRequest {
    pub datastore_id: String,
}

/// ListFHIRDatastores: `Filter` and the page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListDatastoresRequest {
    pub name: Option<String>,
    /// A data store status name (`ACTIVE`, ..., or `CREATE_FAILED`).
    pub status: Option<DatastoreState>,
    /// Epoch seconds.
    pub created_before: Option<f64>,
    pub created_after: Option<f64>,
    pub page: Page,
}

/// TagResource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagResourceRequest {
    pub resource_arn: String,
    pub tags: BTreeMap<String, String>,
}

/// UntagResource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntagResourceRequest {
    pub resource_arn: String,
    pub tag_keys: Vec<String>,
}

/// ListTagsForResource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceArnRequest {
    pub resource_arn: String,
}

/// DescribeFHIRImportJob, DescribeFHIRExportJob and CancelFHIRExportJob: the job they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdRequest {
    pub datastore_id: String,
    pub job_id: String,
}

/// ListFHIRImportJobs and ListFHIRExportJobs.
#[derive(Debug, Clone, PartialEq)]
pub struct ListJobsRequest {
    pub datastore_id: String,
    pub job_name: Option<String>,
    pub job_status: Option<JobStatus>,
    /// Epoch seconds.
    pub submitted_before: Option<f64>,
    pub submitted_after: Option<f64>,
    pub page: Page,
}

/// CreateFHIRDatastore.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateDatastoreRequest {
    /// `DatastoreName`: the name the user gave (the SQL name is derived from it).
    pub name: Option<String>,
    /// `PreloadDataConfig` with `PreloadDataType: SYNTHEA`.
    pub preload_synthea: bool,
    /// `SseConfiguration`, checked and recorded as given (the lake is not encrypted by us).
    pub sse: Option<SseConfiguration>,
    /// `IdentityProviderConfiguration`, checked (a SMART strategy needs its metadata).
    pub identity_provider: Option<IdentityProviderConfiguration>,
    pub tags: BTreeMap<String, String>,
    pub client_token: Option<String>,
}

/// The members StartFHIRImportJob and StartFHIRExportJob share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartJobRequest {
    pub datastore_id: String,
    /// `JobOutputDataConfig` (import: where the report goes) or `OutputDataConfig` (export).
    pub output: S3Configuration,
    pub data_access_role_arn: String,
    pub job_name: Option<String>,
    pub client_token: Option<String>,
}

/// StartFHIRImportJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartImportRequest {
    pub job: StartJobRequest,
    /// `InputDataConfig.S3Uri`: an `s3://` prefix or a `file://` directory.
    pub input_s3_uri: String,
}

/// A request of any operation, for callers that dispatch by operation: the AWS JSON 1.0
/// edge parses one from the body, the CLI builds one from its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    CreateDatastore(CreateDatastoreRequest),
    DescribeDatastore(DatastoreIdRequest),
    ListDatastores(ListDatastoresRequest),
    DeleteDatastore(DatastoreIdRequest),
    TagResource(TagResourceRequest),
    UntagResource(UntagResourceRequest),
    ListTagsForResource(ResourceArnRequest),
    StartImportJob(StartImportRequest),
    DescribeImportJob(JobIdRequest),
    ListImportJobs(ListJobsRequest),
    StartExportJob(StartJobRequest),
    DescribeExportJob(JobIdRequest),
    ListExportJobs(ListJobsRequest),
    CancelExportJob(JobIdRequest),
}

impl Request {
    /// Parses and validates the JSON body of `operation`.
    pub fn parse(operation: Operation, body: &Value) -> Result<Self, ControlError> {
        Ok(match operation {
            Operation::CreateDatastore => {
                Self::CreateDatastore(CreateDatastoreRequest::parse(body)?)
            }
            Operation::DescribeDatastore => {
                Self::DescribeDatastore(DatastoreIdRequest::parse(body)?)
            }
            Operation::ListDatastores => Self::ListDatastores(ListDatastoresRequest::parse(body)?),
            Operation::DeleteDatastore => Self::DeleteDatastore(DatastoreIdRequest::parse(body)?),
            Operation::TagResource => Self::TagResource(TagResourceRequest::parse(body)?),
            Operation::UntagResource => Self::UntagResource(UntagResourceRequest::parse(body)?),
            Operation::ListTagsForResource => {
                Self::ListTagsForResource(ResourceArnRequest::parse(body)?)
            }
            Operation::StartImportJob => Self::StartImportJob(StartImportRequest::parse(body)?),
            Operation::DescribeImportJob => Self::DescribeImportJob(JobIdRequest::parse(body)?),
            Operation::ListImportJobs => Self::ListImportJobs(ListJobsRequest::parse(body)?),
            Operation::StartExportJob => {
                Self::StartExportJob(StartJobRequest::parse(body, "OutputDataConfig")?)
            }
            Operation::DescribeExportJob => Self::DescribeExportJob(JobIdRequest::parse(body)?),
            Operation::ListExportJobs => Self::ListExportJobs(ListJobsRequest::parse(body)?),
            Operation::CancelExportJob => Self::CancelExportJob(JobIdRequest::parse(body)?),
        })
    }
}

fn required(req: &Value, member: &str) -> Result<String, ControlError> {
    Ok(shapes::required_str(shapes::object(req)?, member)?.to_string())
}

impl CreateDatastoreRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        let obj = shapes::object(req)?;
        match obj.get("DatastoreTypeVersion").and_then(Value::as_str) {
            Some("R4") => {}
            Some(other) => {
                return Err(ControlError::Validation(format!(
                    "1 validation error detected: Value '{other}' at 'datastoreTypeVersion' \
                     failed to satisfy constraint: Member must satisfy enum value set: [R4]"
                )));
            }
            None => return Err(shapes::missing("DatastoreTypeVersion")),
        }
        let present = |m: &str| obj.get(m).filter(|v| !v.is_null());
        let preload_synthea = match present("PreloadDataConfig") {
            None => false,
            Some(v) if v["PreloadDataType"] == "SYNTHEA" => true,
            Some(_) => {
                return Err(ControlError::Validation(
                    "1 validation error detected: Value at 'preloadDataConfig.preloadDataType' \
                     failed to satisfy constraint: Member must satisfy enum value set: [SYNTHEA]"
                        .into(),
                ));
            }
        };
        Ok(Self {
            client_token: shapes::client_token(obj)?,
            name: present("DatastoreName")
                .map(|v| shapes::name_field("DatastoreName", v, 256))
                .transpose()?,
            preload_synthea,
            sse: present("SseConfiguration").map(shapes::sse).transpose()?,
            identity_provider: present("IdentityProviderConfiguration")
                .map(IdentityProviderConfiguration::from_request)
                .transpose()
                .map_err(|e| ControlError::Validation(e.0))?,
            tags: match present("Tags") {
                None => BTreeMap::new(),
                Some(v) => shapes::tags(v)?,
            },
        })
    }
}

impl StartJobRequest {
    /// Parses the shared members, the output under `output_member`.
    pub fn parse(req: &Value, output_member: &str) -> Result<Self, ControlError> {
        let obj = shapes::object(req)?;
        let datastore_id = required(req, "DatastoreId")?;
        let s3 = &req[output_member]["S3Configuration"];
        let member = |m: &str| format!("{output_member}.S3Configuration.{m}");
        let s3_uri = s3["S3Uri"]
            .as_str()
            .ok_or_else(|| shapes::missing(&member("S3Uri")))?;
        let kms_key_id = s3["KmsKeyId"]
            .as_str()
            .ok_or_else(|| shapes::missing(&member("KmsKeyId")))?;
        let data_access_role_arn = shapes::required_str(obj, "DataAccessRoleArn")?.to_string();
        let job_name = match obj.get("JobName") {
            None | Some(Value::Null) => None,
            Some(v) => Some(shapes::name_field("JobName", v, 64)?),
        };
        Ok(Self {
            datastore_id,
            output: S3Configuration {
                s3_uri: s3_uri.to_string(),
                kms_key_id: kms_key_id.to_string(),
            },
            data_access_role_arn,
            job_name,
            client_token: shapes::client_token(obj)?,
        })
    }
}

impl StartImportRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        shapes::object(req)?;
        required(req, "DatastoreId")?;
        let input_s3_uri = req["InputDataConfig"]["S3Uri"]
            .as_str()
            .ok_or_else(|| shapes::missing("InputDataConfig.S3Uri"))?
            .to_string();
        Ok(Self {
            job: StartJobRequest::parse(req, "JobOutputDataConfig")?,
            input_s3_uri,
        })
    }
}

impl Page {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        let (offset, max) = shapes::page(shapes::object(req)?)?;
        Ok(Self { offset, max })
    }
}

impl DatastoreIdRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        Ok(Self {
            datastore_id: required(req, "DatastoreId")?,
        })
    }
}

impl ListDatastoresRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        let filter = &req["Filter"];
        Ok(Self {
            name: filter["DatastoreName"].as_str().map(str::to_string),
            status: match filter["DatastoreStatus"].as_str() {
                None => None,
                Some(s) => Some(shapes::datastore_status(s)?),
            },
            created_before: shapes::optional_time(
                &filter["CreatedBefore"],
                "Filter.CreatedBefore",
            )?,
            created_after: shapes::optional_time(&filter["CreatedAfter"], "Filter.CreatedAfter")?,
            page: Page::parse(req)?,
        })
    }
}

impl TagResourceRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        let resource_arn = required(req, "ResourceARN")?;
        let tags = shapes::tags(req.get("Tags").ok_or_else(|| shapes::missing("Tags"))?)?;
        Ok(Self { resource_arn, tags })
    }
}

impl UntagResourceRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        let resource_arn = required(req, "ResourceARN")?;
        let keys = req
            .get("TagKeys")
            .and_then(Value::as_array)
            .ok_or_else(|| shapes::missing("TagKeys"))?;
        let tag_keys = keys
            .iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ControlError::Validation("TagKeys must be strings".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            resource_arn,
            tag_keys,
        })
    }
}

impl ResourceArnRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        Ok(Self {
            resource_arn: required(req, "ResourceARN")?,
        })
    }
}

impl JobIdRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        Ok(Self {
            datastore_id: required(req, "DatastoreId")?,
            job_id: required(req, "JobId")?,
        })
    }
}

impl ListJobsRequest {
    pub fn parse(req: &Value) -> Result<Self, ControlError> {
        let obj = shapes::object(req)?;
        let job_status = match obj.get("JobStatus") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().and_then(JobStatus::from_name).ok_or_else(|| {
                ControlError::Validation(format!(
                    "JobStatus {v} is not one of SUBMITTED, QUEUED, IN_PROGRESS, \
                     COMPLETED_WITH_ERRORS, COMPLETED, FAILED, CANCEL_SUBMITTED, \
                     CANCEL_IN_PROGRESS, CANCEL_COMPLETED, CANCEL_FAILED"
                ))
            })?),
        };
        Ok(Self {
            datastore_id: required(req, "DatastoreId")?,
            job_name: obj
                .get("JobName")
                .and_then(Value::as_str)
                .map(str::to_string),
            job_status,
            submitted_before: shapes::optional_time(&req["SubmittedBefore"], "SubmittedBefore")?,
            submitted_after: shapes::optional_time(&req["SubmittedAfter"], "SubmittedAfter")?,
            page: Page::parse(req)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_validated_with_healthlake_wording() {
        let err = DatastoreIdRequest::parse(&json!({})).unwrap_err();
        assert!(err.to_string().contains("at 'datastoreId'"), "{err}");
        let err =
            ListJobsRequest::parse(&json!({"DatastoreId": "d", "JobStatus": "DONE"})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("JobStatus \"DONE\" is not one of")
        );
        let list = ListJobsRequest::parse(&json!({"DatastoreId": "d", "JobStatus": "COMPLETED",
            "MaxResults": 2, "NextToken": "offset-4"}))
        .unwrap();
        assert_eq!(list.job_status, Some(JobStatus::Completed));
        assert_eq!(list.page, Page { offset: 4, max: 2 });
        let untag = UntagResourceRequest::parse(&json!({"ResourceARN": "a", "TagKeys": [1]}));
        assert!(untag.is_err());
        let filter =
            ListDatastoresRequest::parse(&json!({"Filter": {"DatastoreStatus": "ACTIVE"}}))
                .unwrap();
        assert_eq!(filter.status, Some(DatastoreState::Active));
        assert_eq!(filter.page, Page::default());
    }

    #[test]
    fn create_requests_check_version_preload_and_tags() {
        let err = CreateDatastoreRequest::parse(&json!({"DatastoreTypeVersion": "R5"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[R4]"), "{err}");
        let err = CreateDatastoreRequest::parse(&json!({"DatastoreTypeVersion": "R4",
            "PreloadDataConfig": {"PreloadDataType": "OTHER"}}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("[SYNTHEA]"), "{err}");
        let req = CreateDatastoreRequest::parse(&json!({"DatastoreTypeVersion": "R4",
            "DatastoreName": "bar-store", "PreloadDataConfig": {"PreloadDataType": "SYNTHEA"},
            "Tags": [{"Key": "team", "Value": "cardio"}], "ClientToken": "t-1"}))
        .unwrap();
        assert_eq!(req.name.as_deref(), Some("bar-store"));
        assert!(req.preload_synthea);
        assert_eq!(req.tags["team"], "cardio");
        assert_eq!(req.client_token.as_deref(), Some("t-1"));
    }

    #[test]
    fn start_requests_name_the_missing_member() {
        let base = json!({"DatastoreId": "d", "DataAccessRoleArn": "r",
            "InputDataConfig": {"S3Uri": "s3://b/in"},
            "JobOutputDataConfig": {"S3Configuration": {"S3Uri": "s3://b/out"}}});
        let err = StartImportRequest::parse(&base).unwrap_err().to_string();
        assert!(
            err.contains("at 'jobOutputDataConfig.S3Configuration.KmsKeyId'"),
            "{err}"
        );
        let mut ok = base.clone();
        ok["JobOutputDataConfig"]["S3Configuration"]["KmsKeyId"] = json!("k");
        ok["JobName"] = json!("nightly");
        let req = StartImportRequest::parse(&ok).unwrap();
        assert_eq!(req.input_s3_uri, "s3://b/in");
        assert_eq!(req.job.job_name.as_deref(), Some("nightly"));
        assert_eq!(
            req.job.output,
            S3Configuration {
                s3_uri: "s3://b/out".into(),
                kms_key_id: "k".into()
            }
        );
        let export = StartJobRequest::parse(&ok, "OutputDataConfig").unwrap_err();
        assert!(
            export
                .to_string()
                .contains("'outputDataConfig.S3Configuration.S3Uri'")
        );
    }
}
