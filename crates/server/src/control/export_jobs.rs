//! Export jobs: StartFHIRExportJob, DescribeFHIRExportJob, ListFHIRExportJobs and
//! CancelFHIRExportJob (the SDK has no cancel operation; HealthLake cancels through the FHIR
//! API's `DELETE .../export/{jobId}`, which [`super::bulk`] serves with the same code).
//!
//! A job is recorded SUBMITTED, runs [`crate::export::export`] in the background
//! (IN_PROGRESS with counters), and ends COMPLETED, FAILED (with a Message) or, when cancelled,
//! CANCEL_COMPLETED. Output goes to `{S3Uri}/{datastoreId}-FHIR_EXPORT-{jobId}/`, with a
//! `manifest.json` listing the files; an `s3://` output is written to the job's staging
//! directory and uploaded once complete, so readers never see a partial export there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::jobs::summary;
use super::location::Location;
use super::records::{ExportCounters, ExportSpec, JobRecord, OutputDataConfig, S3Configuration};
use super::requests::{JobIdRequest, ListJobsRequest, StartJobRequest};
use super::responses::{
    DescribeExportJobResponse, EpochSeconds, ExportJobProperties, JobSummary,
    ListExportJobsResponse,
};
use super::staging::{Staging, export_output_name};
use super::{ControlError, ControlPlane, now};
use crate::export::{ExportError, ExportLimits, ExportProgress, ExportRequest, ExportScope};
use fhirlake_store::{Datastore, DatastoreStatus, Job, JobKind, JobStatus};

fn scope_json(scope: &ExportScope) -> Value {
    match scope {
        ExportScope::System => json!({"level": "system"}),
        ExportScope::Patient => json!({"level": "patient"}),
        ExportScope::Group(id) => json!({"level": "group", "group": id}),
    }
}

impl ControlPlane {
    /// Records and starts an export job of `ds` into `output` (a checked location).
    /// `record` carries what the caller wants to show later (the SDK request members, or
    /// the FHIR kick-off URL).
    pub(crate) async fn start_export_job(
        &self,
        ds: &Datastore,
        request: ExportRequest,
        output: Location,
        client_token: Option<String>,
        mut record: JobRecord,
    ) -> Result<Job, ControlError> {
        if ds.status != DatastoreStatus::Active {
            return Err(ControlError::Validation(format!(
                "Datastore {} is {}; exports need an ACTIVE data store",
                ds.id,
                ds.status.as_str()
            )));
        }
        record.export = Some(ExportSpec {
            scope: scope_json(&request.scope),
            types: request.types.clone(),
            since: request
                .since
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            output: output.uri(),
        });
        let mut job = Job {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            datastore_id: ds.id.clone(),
            kind: JobKind::Export,
            status: JobStatus::Submitted,
            submit_time: now(),
            end_time: None,
            client_token,
            properties: Value::Null,
        };
        record.store_in(&mut job);
        if let Err(running) = self.installation().store.insert_job(&job).await? {
            return Err(ControlError::Conflict(format!(
                "Datastore {} already has a running {} job ({}); one import or export runs \
                 at a time per data store",
                ds.id,
                running.kind.as_str().to_lowercase(),
                running.job_id
            )));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.register_cancel(&job.job_id, cancel.clone());
        crate::audit::record_job(self.registry().audit(), &job).await;
        let this = self.clone();
        let (ds, running) = (ds.clone(), job.clone());
        tokio::spawn(async move { this.run_export(running, ds, request, output, cancel).await });
        Ok(job)
    }

    async fn run_export(
        &self,
        mut job: Job,
        ds: Datastore,
        request: ExportRequest,
        output: Location,
        cancel: Arc<AtomicBool>,
    ) {
        let store = self.installation().store.clone();
        job.status = JobStatus::InProgress;
        let _ = store.update_job(&job).await;
        let staging = Staging::new(self.staging_dir(&job.job_id));
        let target = output.join(&export_output_name(&ds.id, &job.job_id));
        let dir = staging.writable(&target);
        let progress = Arc::new(ExportProgress::default());
        let mut record = JobRecord::of(&job);
        let reporter = {
            let (store, progress, mut job) = (store.clone(), progress.clone(), job.clone());
            let mut record = record.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    record.progress = Some(counters(&progress));
                    record.store_in(&mut job);
                    // A cancel recorded meanwhile must not be overwritten.
                    if let Ok(current) = store.job(&job.job_id).await {
                        job.status = current.status;
                    }
                    let _ = store.update_job(&job).await;
                }
            })
        };
        let result = crate::export::export(
            &store,
            &ds,
            &request,
            &dir,
            &ExportLimits::default(),
            &progress,
            &cancel,
        )
        .await;
        reporter.abort();
        self.unregister_cancel(&job.job_id);
        record.progress = Some(counters(&progress));
        job.end_time = Some(now());
        // Err(None): cancelled; Err(Some(message)): failed.
        let result: Result<_, Option<String>> = match result {
            Ok(report) => match report.write_manifest(&dir, &ds.id, Some(&job.job_id)).await {
                Err(e) => Err(Some(e.to_string())),
                Ok(()) => match staging.publish(&target).await {
                    Ok(()) => Ok(report),
                    Err(e) => Err(Some(e.to_string())),
                },
            },
            Err(ExportError::Cancelled) => Err(None),
            Err(e) => Err(Some(e.to_string())),
        };
        staging.remove().await;
        match result {
            Ok(report) => {
                job.status = JobStatus::Completed;
                record.transaction_time = Some(report.transaction_time);
                record.output = Some(report.files);
            }
            Err(Some(message)) => {
                job.status = JobStatus::Failed;
                record.message = Some(format!("Export failed: {message}"));
            }
            Err(None) => {
                job.status = JobStatus::CancelCompleted;
                record.message = Some(String::from(match output {
                    Location::Local(_) => {
                        "The export was cancelled; files written before the cancel are left \
                         in the output location."
                    }
                    Location::S3(_) => "The export was cancelled; nothing was uploaded.",
                }));
            }
        }
        record.store_in(&mut job);
        if let Err(e) = store.update_job(&job).await {
            tracing::error!(job = %job.job_id, "cannot record the end of an export: {e}");
        }
        crate::audit::record_job(self.registry().audit(), &job).await;
    }

    /// Asks a running export to stop. Errors if the job is unknown or already finished.
    pub(crate) async fn cancel_export_job(
        &self,
        ds_id: &str,
        job_id: &str,
    ) -> Result<Job, ControlError> {
        let store = &self.installation().store;
        let mut job = store.job(job_id).await?;
        if job.datastore_id != ds_id || job.kind != JobKind::Export {
            return Err(ControlError::ResourceNotFound(format!(
                "Export job {job_id} not found in datastore {ds_id}"
            )));
        }
        if !matches!(job.status, JobStatus::Submitted | JobStatus::InProgress) {
            return Err(ControlError::Validation(format!(
                "Export job {job_id} is {}; only a running job can be cancelled",
                job.status
            )));
        }
        match self.cancel_flag(job_id) {
            Some(flag) => flag.store(true, Ordering::Relaxed),
            None => {
                return Err(ControlError::Conflict(format!(
                    "Export job {job_id} is not running in this server"
                )));
            }
        }
        job.status = JobStatus::CancelSubmitted;
        store.update_job(&job).await?;
        Ok(job)
    }

    /// StartFHIRExportJob.
    pub async fn start_export(&self, req: &StartJobRequest) -> Result<JobSummary, ControlError> {
        let ds_id = req.datastore_id.as_str();
        let (ds, _) = self.visible_datastore(ds_id).await?;
        if let Some(response) = self.started_before(req, JobKind::Export).await? {
            return Ok(response);
        }
        let output = Location::parse(
            &req.output.s3_uri,
            &self.config().allowed_roots,
            "OutputDataConfig.S3Configuration.S3Uri",
        )?;
        let record = JobRecord {
            job_name: req.job_name.clone(),
            output_data_config: Some(OutputDataConfig {
                s3_configuration: req.output.clone(),
            }),
            data_access_role_arn: Some(req.data_access_role_arn.clone()),
            ..JobRecord::default()
        };
        let job = self
            .start_export_job(
                &ds,
                ExportRequest::system(),
                output,
                req.client_token.clone(),
                record,
            )
            .await?;
        Ok(summary(&job))
    }

    pub(crate) fn export_properties(job: &Job) -> ExportJobProperties {
        let record = JobRecord::of(job);
        let output_data_config =
            record
                .output_data_config
                .clone()
                .unwrap_or_else(|| OutputDataConfig {
                    s3_configuration: S3Configuration {
                        s3_uri: record.export_output(),
                        kms_key_id: String::new(),
                    },
                });
        ExportJobProperties {
            job_id: job.job_id.clone(),
            job_status: job.status,
            submit_time: EpochSeconds::parse(&job.submit_time),
            datastore_id: job.datastore_id.clone(),
            output_data_config,
            end_time: job.end_time.as_deref().map(EpochSeconds::parse),
            job_name: record.job_name,
            message: record.message,
            data_access_role_arn: record.data_access_role_arn,
        }
    }

    /// DescribeFHIRExportJob.
    pub async fn describe_export(
        &self,
        req: &JobIdRequest,
    ) -> Result<DescribeExportJobResponse, ControlError> {
        let job = self.job_of(req, JobKind::Export).await?;
        Ok(DescribeExportJobResponse {
            export_job_properties: Self::export_properties(&job),
        })
    }

    /// CancelFHIRExportJob (a fhirlake addition; see the module documentation).
    pub async fn cancel_export(&self, req: &JobIdRequest) -> Result<JobSummary, ControlError> {
        let job = self.job_of(req, JobKind::Export).await?;
        let job = self
            .cancel_export_job(&job.datastore_id, &job.job_id)
            .await?;
        Ok(summary(&job))
    }

    /// ListFHIRExportJobs.
    pub async fn list_exports(
        &self,
        req: &ListJobsRequest,
    ) -> Result<ListExportJobsResponse, ControlError> {
        let (list, next_token) = self
            .list_jobs_of(req, JobKind::Export, Self::export_properties)
            .await?;
        Ok(ListExportJobsResponse {
            export_job_properties_list: list,
            next_token,
        })
    }
}

fn counters(progress: &ExportProgress) -> ExportCounters {
    ExportCounters {
        resources: progress.resources.load(Ordering::Relaxed),
        bytes: progress.bytes.load(Ordering::Relaxed),
        types_done: progress.types_done.load(Ordering::Relaxed),
        types_total: progress.types_total.load(Ordering::Relaxed),
    }
}
