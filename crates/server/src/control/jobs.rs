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

use serde_json::{Value, json};

use super::location::Location;
use super::requests::{JobIdRequest, ListJobsRequest, StartImportRequest, StartJobRequest};
use super::shapes;
use super::staging::{Staging, import_report_name};
use super::{ControlError, ControlPlane, epoch_seconds, now};
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

/// Adds a job's EndTime and those of `keys` its properties hold to a job description.
pub(super) fn with_optional_members(out: &mut Value, job: &Job, keys: &[&str]) {
    if let Some(end) = &job.end_time {
        out["EndTime"] = epoch_seconds(end);
    }
    for key in keys {
        if !job.properties[*key].is_null() {
            out[*key] = job.properties[*key].clone();
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

fn progress_report(progress: &ImportProgress, files: usize, bytes: u64) -> Value {
    let scanned =
        progress.resources.load(Ordering::Relaxed) + progress.errors.load(Ordering::Relaxed);
    json!({
        "TotalNumberOfScannedFiles": files,
        "TotalSizeOfScannedFilesInMB": bytes as f64 / 1e6,
        "TotalNumberOfResourcesScanned": scanned,
        "TotalNumberOfResourcesImported": progress.resources.load(Ordering::Relaxed),
        "TotalNumberOfResourcesWithCustomerError": progress.errors.load(Ordering::Relaxed),
    })
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
            job.properties["Message"] = json!(match job.kind {
                JobKind::Import =>
                    "The server stopped while this job was running; resources \
                        imported before that are kept. Start the job again to import the rest \
                        (re-importing is idempotent per resource id).",
                JobKind::Export =>
                    "The server stopped while this job was running; files \
                        written before that are incomplete. Start the export again.",
            });
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
    ) -> Result<Option<Value>, ControlError> {
        let Some(token) = &req.client_token else {
            return Ok(None);
        };
        let store = &self.installation().store;
        let job = store
            .job_by_client_token(&req.datastore_id, kind, token)
            .await?;
        Ok(job.map(|job| {
            json!({"JobId": job.job_id, "JobStatus": job.status, "DatastoreId": req.datastore_id})
        }))
    }

    /// Where job `job_id` stages S3 input and output.
    pub(super) fn staging_dir(&self, job_id: &str) -> PathBuf {
        self.installation().data_dir.join(STAGING_DIR).join(job_id)
    }

    /// StartFHIRImportJob.
    pub async fn start_import(&self, req: &StartImportRequest) -> Result<Value, ControlError> {
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
        let job = Job {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            datastore_id: ds_id.to_string(),
            kind: JobKind::Import,
            status: JobStatus::Submitted,
            submit_time: now(),
            end_time: None,
            client_token: req.job.client_token.clone(),
            properties: json!({
                "JobName": req.job.job_name,
                "InputDataConfig": {"S3Uri": req.input_s3_uri},
                "JobOutputDataConfig": req.job.output.to_json(),
                "DataAccessRoleArn": req.job.data_access_role_arn,
            }),
        };
        if let Err(running) = store.insert_job(&job).await? {
            return Err(ControlError::Conflict(format!(
                "Datastore {ds_id} already has a running {} job ({}); one import or export \
                 runs at a time per data store",
                running.kind.as_str().to_lowercase(),
                running.job_id
            )));
        }
        let response = json!({"JobId": job.job_id, "JobStatus": job.status, "DatastoreId": ds_id});
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
        if let Some(m) = message {
            job.properties["Message"] = json!(m);
        }
        if let Err(e) = self.installation().store.update_job(&job).await {
            tracing::error!(job = %job.job_id, "cannot record the end of a job: {e}");
        }
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
        let reporter = {
            let (store, progress, mut job) = (store.clone(), progress.clone(), job.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    job.properties["JobProgressReport"] =
                        progress_report(&progress, file_count, total);
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
        job.properties["JobProgressReport"] = progress_report(&progress, file_count, total);
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

    fn import_properties(job: &Job) -> Value {
        let p = &job.properties;
        let mut out = json!({
            "JobId": job.job_id,
            "JobStatus": job.status,
            "SubmitTime": epoch_seconds(&job.submit_time),
            "DatastoreId": job.datastore_id,
            "InputDataConfig": p["InputDataConfig"],
            "JobOutputDataConfig": p["JobOutputDataConfig"],
            "DataAccessRoleArn": p["DataAccessRoleArn"],
        });
        with_optional_members(&mut out, job, &["JobName", "Message", "JobProgressReport"]);
        out
    }

    /// DescribeFHIRImportJob.
    pub async fn describe_import(&self, req: &JobIdRequest) -> Result<Value, ControlError> {
        let job = self.job_of(req, JobKind::Import).await?;
        Ok(json!({ "ImportJobProperties": Self::import_properties(&job) }))
    }

    /// ListFHIRImportJobs.
    pub async fn list_imports(&self, req: &ListJobsRequest) -> Result<Value, ControlError> {
        self.list_jobs_of(
            req,
            JobKind::Import,
            Self::import_properties,
            "ImportJobPropertiesList",
        )
        .await
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

    /// A List request's page of the data store's jobs of `kind`, rendered by `show`, filtered
    /// by `JobName`, `JobStatus`, `SubmittedBefore`/`SubmittedAfter`.
    pub(super) async fn list_jobs_of(
        &self,
        req: &ListJobsRequest,
        kind: JobKind,
        show: fn(&Job) -> Value,
        member: &str,
    ) -> Result<Value, ControlError> {
        let ds_id = req.datastore_id.as_str();
        self.visible_datastore(ds_id).await?;
        let name = req.job_name.as_deref();
        let (status, before, after) = (req.job_status, req.submitted_before, req.submitted_after);
        let items: Vec<Value> = self
            .installation()
            .store
            .list_jobs(ds_id, kind)
            .await?
            .iter()
            .filter(|job| status.is_none_or(|s| job.status == s))
            .map(show)
            .filter(|p| {
                let submitted = p["SubmitTime"].as_f64().unwrap_or(0.0);
                name.is_none_or(|n| p["JobName"].as_str() == Some(n))
                    && before.is_none_or(|b| submitted < b)
                    && after.is_none_or(|a| submitted > a)
            })
            .collect();
        Ok(shapes::paged(member, items, req.page.offset, req.page.max))
    }
}
