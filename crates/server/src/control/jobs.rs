//! Import jobs: StartFHIRImportJob, DescribeFHIRImportJob, ListFHIRImportJobs.
//!
//! A job is recorded (SUBMITTED) before it starts, runs the same ingest as `fhirlake import`
//! on a background task (IN_PROGRESS, with its counters written back every few seconds), waits
//! until its data is queryable in the lake, and ends COMPLETED, COMPLETED_WITH_ERRORS (some
//! lines failed; see `FAILURE/`) or FAILED (with a Message). Jobs left unfinished by a crash
//! or restart are marked FAILED when the control plane starts, never silently dropped.
//!
//! Locations are `file://` or `s3://` URIs under the configured allowed roots
//! ([`super::location`]); an S3 input is staged in the installation's `staging/` directory and
//! the job's report uploaded to its S3 output when the job ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::location::Location;
use super::records::{InputDataConfig, JobProgressReport, JobRecord, OutputDataConfig};
use super::requests::{JobIdRequest, ListJobsRequest, StartImportRequest, StartJobRequest};
use super::responses::{
    self, DescribeImportJobResponse, EpochSeconds, ImportJobProperties, JobSummary,
    ListImportJobsResponse,
};
use super::staging::{Staging, import_report_name};
use super::{ControlError, ControlPlane, now};
use crate::ingest::{ImportOptions, ImportProgress};
use fhirlake_store::{DatastoreStatus, Job, JobKind, JobStatus};

/// Limits of one import job (HealthLake's quotas).
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self {
            max_files: 10_000,
            max_file_bytes: 5 << 30,
            max_total_bytes: 500 << 30,
        }
    }
}

/// Where jobs stage S3 data, under the installation's data directory.
const STAGING_DIR: &str = "staging";

/// Why an input of these (name, size) files breaks the job limits, if it does.
fn limit_error(files: &[(String, u64)], limits: &ImportLimits) -> Option<String> {
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    if files.is_empty() {
        Some("The input location holds no .ndjson or .ndjson.gz files".to_string())
    } else if files.len() > limits.max_files {
        Some(format!(
            "The input holds {} files; an import job reads at most {}",
            files.len(),
            limits.max_files
        ))
    } else if let Some((f, s)) = files.iter().find(|(_, s)| *s > limits.max_file_bytes) {
        Some(format!(
            "{f} is {s} bytes; files may be at most {} bytes",
            limits.max_file_bytes
        ))
    } else if total > limits.max_total_bytes {
        Some(format!(
            "The input is {total} bytes; an import job reads at most {} bytes",
            limits.max_total_bytes
        ))
    } else {
        None
    }
}

fn progress_report(progress: &ImportProgress, files: usize, bytes: u64) -> JobProgressReport {
    let imported = progress.resources.load(Ordering::Relaxed);
    let errors = progress.errors.load(Ordering::Relaxed);
    JobProgressReport {
        total_number_of_scanned_files: files as u64,
        total_size_of_scanned_files_in_mb: bytes as f64 / 1e6,
        total_number_of_resources_scanned: imported + errors,
        total_number_of_resources_imported: imported,
        total_number_of_resources_with_customer_error: errors,
    }
}

/// The answer of a job start or cancel.
pub(super) fn summary(job: &Job) -> JobSummary {
    JobSummary {
        job_id: job.job_id.clone(),
        job_status: job.status,
        datastore_id: job.datastore_id.clone(),
    }
}

impl ControlPlane {
    /// Marks jobs a previous run left unfinished as FAILED (their partial imports stay: every
    /// imported line is a committed version).
    pub async fn fail_interrupted_jobs(&self) -> Result<usize, ControlError> {
        let store = &self.installation().store;
        let jobs = store.unfinished_jobs().await?;
        for mut job in jobs.iter().cloned() {
            job.status = JobStatus::Failed;
            job.end_time = Some(now());
            let mut record = JobRecord::of(&job);
            record.message = Some(String::from(match job.kind {
                JobKind::Import => {
                    "The server stopped while this job was running; resources \
                        imported before that are kept. Start the job again to import the rest \
                        (re-importing is idempotent per resource id)."
                }
                JobKind::Export => {
                    "The server stopped while this job was running; files \
                        written before that are incomplete. Start the export again."
                }
            }));
            record.store_in(&mut job);
            store.update_job(&job).await?;
        }
        // Nothing runs yet: whatever interrupted jobs staged is garbage.
        let staging = self.installation().data_dir.join(STAGING_DIR);
        if staging.exists()
            && let Err(e) = std::fs::remove_dir_all(&staging)
        {
            tracing::warn!("cannot clear {}: {e}", staging.display());
        }
        Ok(jobs.len())
    }

    /// The response of the job an earlier start request of `kind` with the same ClientToken
    /// started, if any (HealthLake's idempotent starts).
    pub(super) async fn started_before(
        &self,
        req: &StartJobRequest,
        kind: JobKind,
    ) -> Result<Option<JobSummary>, ControlError> {
        let Some(token) = &req.client_token else {
            return Ok(None);
        };
        let store = &self.installation().store;
        let job = store
            .job_by_client_token(&req.datastore_id, kind, token)
            .await?;
        Ok(job.as_ref().map(summary))
    }

    /// Where job `job_id` stages S3 input and output.
    pub(super) fn staging_dir(&self, job_id: &str) -> PathBuf {
        self.installation().data_dir.join(STAGING_DIR).join(job_id)
    }

    /// StartFHIRImportJob.
    pub async fn start_import(&self, req: &StartImportRequest) -> Result<JobSummary, ControlError> {
        let ds_id = req.job.datastore_id.as_str();
        let (ds, _) = self.visible_datastore(ds_id).await?;
        if ds.status != DatastoreStatus::Active {
            return Err(ControlError::Validation(format!(
                "Datastore {ds_id} is {}; imports need an ACTIVE data store",
                ds.status.as_str()
            )));
        }
        if let Some(response) = self.started_before(&req.job, JobKind::Import).await? {
            return Ok(response);
        }
        let store = &self.installation().store;
        let roots = &self.config().allowed_roots;
        let input = Location::parse(&req.input_s3_uri, roots, "InputDataConfig.S3Uri")?;
        let output = Location::parse(
            &req.job.output.s3_uri,
            roots,
            "JobOutputDataConfig.S3Configuration.S3Uri",
        )?;
        let record = JobRecord {
            job_name: req.job.job_name.clone(),
            input_data_config: Some(InputDataConfig {
                s3_uri: req.input_s3_uri.clone(),
            }),
            job_output_data_config: Some(OutputDataConfig {
                s3_configuration: req.job.output.clone(),
            }),
            data_access_role_arn: Some(req.job.data_access_role_arn.clone()),
            ..JobRecord::default()
        };
        let mut job = Job {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            datastore_id: ds_id.to_string(),
            kind: JobKind::Import,
            status: JobStatus::Submitted,
            submit_time: now(),
            end_time: None,
            client_token: req.job.client_token.clone(),
            properties: serde_json::Value::Null,
        };
        record.store_in(&mut job);
        if let Err(running) = store.insert_job(&job).await? {
            return Err(ControlError::Conflict(format!(
                "Datastore {ds_id} already has a running {} job ({}); one import or export \
                 runs at a time per data store",
                running.kind.as_str().to_lowercase(),
                running.job_id
            )));
        }
        let response = summary(&job);
        crate::audit::record_job(self.registry().audit(), &job).await;
        let this = self.clone();
        tokio::spawn(async move { this.run_import(job, ds, input, output).await });
        Ok(response)
    }

    async fn run_import(
        &self,
        mut job: Job,
        ds: fhirlake_store::Datastore,
        input: Location,
        output: Location,
    ) {
        let staging = Staging::new(self.staging_dir(&job.job_id));
        let result = self
            .import_job(&mut job, &ds, &input, &output, &staging)
            .await;
        staging.remove().await;
        let (status, message) = match result {
            Ok(status) => (status, None),
            Err(message) => (JobStatus::Failed, Some(message)),
        };
        job.status = status;
        job.end_time = Some(now());
        if message.is_some() {
            let mut record = JobRecord::of(&job);
            record.message = message;
            record.store_in(&mut job);
        }
        if let Err(e) = self.installation().store.update_job(&job).await {
            tracing::error!(job = %job.job_id, "cannot record the end of a job: {e}");
        }
        crate::audit::record_job(self.registry().audit(), &job).await;
    }

    /// Runs an import job to its end status, or the message it failed with.
    async fn import_job(
        &self,
        job: &mut Job,
        ds: &fhirlake_store::Datastore,
        input: &Location,
        output: &Location,
        staging: &Staging,
    ) -> Result<JobStatus, String> {
        let store = self.installation().store.clone();
        let cannot_read = |e: &dyn std::fmt::Display| format!("Cannot read the input: {e}");
        // What the input holds, checked against the limits before anything is read.
        let listing = staging.list(input).await.map_err(|e| cannot_read(&e))?;
        if let Some(message) = limit_error(&listing.files, &ImportLimits::default()) {
            return Err(message);
        }
        let total = listing.total_bytes();
        let file_count = listing.files.len();

        job.status = JobStatus::InProgress;
        let _ = store.update_job(job).await;
        let input_dir = staging.fetch(&listing).await.map_err(|e| cannot_read(&e))?;
        let output = output.join(&import_report_name(&ds.id, &job.job_id));
        let report_dir = staging.writable(&output);
        let progress = Arc::new(ImportProgress::default());
        // Counters reach DescribeFHIRImportJob every two seconds while the job runs.
        let record = JobRecord::of(job);
        let report = move |job: &mut Job, progress: &ImportProgress| {
            let mut record = record.clone();
            record.job_progress_report = Some(progress_report(progress, file_count, total));
            record.store_in(job);
        };
        let reporter = {
            let (store, progress, mut job) = (store.clone(), progress.clone(), job.clone());
            let report = report.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    report(&mut job, &progress);
                    let _ = store.update_job(&job).await;
                }
            })
        };
        let result = crate::ingest::import(
            &store,
            ds,
            &input_dir,
            &ImportOptions::new(report_dir.clone()),
            progress.clone(),
        )
        .await;
        reporter.abort();
        report(job, &progress);
        let report = result.map_err(|e| format!("Import failed: {e}"))?;
        staging
            .publish(&output)
            .await
            .map_err(|e| format!("Cannot write the job report: {e}"))?;
        // Done means queryable: wait for the data store's lake sync to commit everything.
        if let Some(live) = self.registry().get(&ds.id) {
            live.sync
                .catch_up()
                .await
                .map_err(|e| format!("The import could not be committed to the lake: {e}"))?;
        }
        Ok(if report.failed() > 0 {
            JobStatus::CompletedWithErrors
        } else {
            JobStatus::Completed
        })
    }

    fn import_properties(job: &Job) -> ImportJobProperties {
        let record = JobRecord::of(job);
        ImportJobProperties {
            job_id: job.job_id.clone(),
            job_status: job.status,
            submit_time: EpochSeconds::parse(&job.submit_time),
            datastore_id: job.datastore_id.clone(),
            input_data_config: record.input_data_config,
            job_output_data_config: record.job_output_data_config,
            data_access_role_arn: record.data_access_role_arn,
            end_time: job.end_time.as_deref().map(EpochSeconds::parse),
            job_name: record.job_name,
            message: record.message,
            job_progress_report: record.job_progress_report,
        }
    }

    /// DescribeFHIRImportJob.
    pub async fn describe_import(
        &self,
        req: &JobIdRequest,
    ) -> Result<DescribeImportJobResponse, ControlError> {
        let job = self.job_of(req, JobKind::Import).await?;
        Ok(DescribeImportJobResponse {
            import_job_properties: Self::import_properties(&job),
        })
    }

    /// ListFHIRImportJobs.
    pub async fn list_imports(
        &self,
        req: &ListJobsRequest,
    ) -> Result<ListImportJobsResponse, ControlError> {
        let (list, next_token) = self
            .list_jobs_of(req, JobKind::Import, Self::import_properties)
            .await?;
        Ok(ListImportJobsResponse {
            import_job_properties_list: list,
            next_token,
        })
    }

    /// The job a Describe request names (`DatastoreId`, `JobId`), if it is of `kind`.
    pub(super) async fn job_of(
        &self,
        req: &JobIdRequest,
        kind: JobKind,
    ) -> Result<Job, ControlError> {
        let (ds_id, job_id) = (req.datastore_id.as_str(), req.job_id.as_str());
        self.visible_datastore(ds_id).await?;
        let job = self.installation().store.job(job_id).await?;
        if job.datastore_id != ds_id || job.kind != kind {
            return Err(ControlError::ResourceNotFound(format!(
                "{} job {job_id} not found in datastore {ds_id}",
                match kind {
                    JobKind::Import => "Import",
                    JobKind::Export => "Export",
                }
            )));
        }
        Ok(job)
    }

    /// A List request's page of the data store's jobs of `kind`, filtered by `JobName`,
    /// `JobStatus`, `SubmittedBefore`/`SubmittedAfter`, each shown by `show`; and the token
    /// of the next page.
    pub(super) async fn list_jobs_of<T>(
        &self,
        req: &ListJobsRequest,
        kind: JobKind,
        show: fn(&Job) -> T,
    ) -> Result<(Vec<T>, Option<String>), ControlError> {
        let ds_id = req.datastore_id.as_str();
        self.visible_datastore(ds_id).await?;
        let name = req.job_name.as_deref();
        let (status, before, after) = (req.job_status, req.submitted_before, req.submitted_after);
        let items: Vec<T> = self
            .installation()
            .store
            .list_jobs(ds_id, kind)
            .await?
            .iter()
            .filter(|job| {
                let submitted = EpochSeconds::parse(&job.submit_time).0;
                status.is_none_or(|s| job.status == s)
                    && name.is_none_or(|n| JobRecord::of(job).job_name.as_deref() == Some(n))
                    && before.is_none_or(|b| submitted < b)
                    && after.is_none_or(|a| submitted > a)
            })
            .map(show)
            .collect();
        Ok(responses::page(items, req.page.offset, req.page.max))
    }
}
