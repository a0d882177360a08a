//! Import jobs: StartFHIRImportJob, DescribeFHIRImportJob, ListFHIRImportJobs.
//!
//! A job is recorded (SUBMITTED) before it starts, runs the same ingest as `fhirlake import`
//! on a background task (IN_PROGRESS, with its counters written back every few seconds), waits
//! until its data is queryable in the lake, and ends COMPLETED, COMPLETED_WITH_ERRORS (some
//! lines failed; see `FAILURE/`) or FAILED (with a Message). Jobs left unfinished by a crash
//! or restart are marked FAILED when the control plane starts, never silently dropped.
//!
//! Locations are `file://` URIs under the configured allowed roots; `s3://` needs object
//! storage support, which is not built yet, and is refused with a message saying so.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::shapes;
use super::{ControlError, ControlPlane, epoch_seconds, now};
use crate::ingest::{ImportOptions, ImportProgress};
use crate::store::{DatastoreStatus, Job, JobKind};

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

/// A `file://` URI as a local path inside one of `roots`, or why it may not be used.
pub fn local_location(uri: &str, roots: &[PathBuf], member: &str) -> Result<PathBuf, ControlError> {
    if uri.starts_with("s3://") {
        return Err(ControlError::Validation(format!(
            "{member} '{uri}': s3:// locations are not supported by this server yet; use a \
             file:// URI under an allowed root"
        )));
    }
    let Some(path) = uri.strip_prefix("file://") else {
        return Err(ControlError::Validation(format!(
            "{member} '{uri}' must be a file:// URI"
        )));
    };
    if roots.is_empty() {
        return Err(ControlError::AccessDenied(format!(
            "{member} '{uri}': no local locations are allowed; start the server with \
             --allowed-root DIR"
        )));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(ControlError::Validation(format!(
            "{member} '{uri}' must be an absolute path without '.' or '..'"
        )));
    }
    // Resolve symbolic links before the check; a location that does not exist yet (an output
    // prefix) is checked through its nearest existing ancestor.
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        if let Some(name) = existing.file_name() {
            rest.push(name.to_os_string());
        }
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let mut resolved = existing
        .canonicalize()
        .map_err(|e| ControlError::Validation(format!("{member} '{uri}': {e}")))?;
    for part in rest.iter().rev() {
        resolved.push(part);
    }
    let allowed = roots.iter().any(|root| {
        root.canonicalize()
            .map(|r| resolved.starts_with(r))
            .unwrap_or(false)
    });
    if !allowed {
        return Err(ControlError::AccessDenied(format!(
            "{member} '{uri}' is outside the locations this server may use"
        )));
    }
    Ok(resolved)
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
            job.status = "FAILED".into();
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
        Ok(jobs.len())
    }

    /// StartFHIRImportJob.
    pub async fn start_import(&self, req: &Value) -> Result<Value, ControlError> {
        let obj = shapes::object(req)?;
        let ds_id = shapes::required_str(obj, "DatastoreId")?;
        let (ds, _) = self.visible_datastore(ds_id).await?;
        if ds.status != DatastoreStatus::Active {
            return Err(ControlError::Validation(format!(
                "Datastore {ds_id} is {}; imports need an ACTIVE data store",
                ds.status.as_str()
            )));
        }
        let input_uri = req["InputDataConfig"]["S3Uri"]
            .as_str()
            .ok_or_else(|| shapes::missing("InputDataConfig.S3Uri"))?;
        let output_uri = req["JobOutputDataConfig"]["S3Configuration"]["S3Uri"]
            .as_str()
            .ok_or_else(|| shapes::missing("JobOutputDataConfig.S3Configuration.S3Uri"))?;
        if req["JobOutputDataConfig"]["S3Configuration"]["KmsKeyId"]
            .as_str()
            .is_none()
        {
            return Err(shapes::missing(
                "JobOutputDataConfig.S3Configuration.KmsKeyId",
            ));
        }
        shapes::required_str(obj, "DataAccessRoleArn")?;
        let job_name = match obj.get("JobName") {
            None | Some(Value::Null) => None,
            Some(v) => Some(shapes::name_field("JobName", v, 64)?),
        };
        let token = shapes::client_token(obj)?;
        let store = &self.installation().store;
        if let Some(token) = &token
            && let Some(job) = store
                .job_by_client_token(ds_id, JobKind::Import, token)
                .await?
        {
            return Ok(json!({"JobId": job.job_id, "JobStatus": job.status, "DatastoreId": ds_id}));
        }
        let roots = &self.config().allowed_roots;
        let input = local_location(input_uri, roots, "InputDataConfig.S3Uri")?;
        let output = local_location(
            output_uri,
            roots,
            "JobOutputDataConfig.S3Configuration.S3Uri",
        )?;
        let job = Job {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            datastore_id: ds_id.to_string(),
            kind: JobKind::Import,
            status: "SUBMITTED".into(),
            submit_time: now(),
            end_time: None,
            client_token: token,
            properties: json!({
                "JobName": job_name,
                "InputDataConfig": req["InputDataConfig"],
                "JobOutputDataConfig": req["JobOutputDataConfig"],
                "DataAccessRoleArn": req["DataAccessRoleArn"],
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
        let response = json!({"JobId": job.job_id, "JobStatus": "SUBMITTED", "DatastoreId": ds_id});
        let this = self.clone();
        tokio::spawn(async move { this.run_import(job, ds, input, output).await });
        Ok(response)
    }

    async fn run_import(
        &self,
        mut job: Job,
        ds: crate::store::Datastore,
        input: PathBuf,
        output: PathBuf,
    ) {
        let store = self.installation().store.clone();
        let finish = |mut job: Job, status: &str, message: Option<String>| {
            let store = store.clone();
            let status = status.to_string();
            async move {
                job.status = status;
                job.end_time = Some(now());
                if let Some(m) = message {
                    job.properties["Message"] = json!(m);
                }
                if let Err(e) = store.update_job(&job).await {
                    tracing::error!(job = %job.job_id, "cannot record the end of a job: {e}");
                }
            }
        };
        let files = match crate::ingest::reader::input_files(&input) {
            Ok(f) => f,
            Err(e) => {
                return finish(job, "FAILED", Some(format!("Cannot read the input: {e}"))).await;
            }
        };
        let limits = ImportLimits::default();
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .collect();
        let total: u64 = sizes.iter().sum();
        let limit_error = if files.is_empty() {
            Some("The input location holds no .ndjson or .ndjson.gz files".to_string())
        } else if files.len() > limits.max_files {
            Some(format!(
                "The input holds {} files; an import job reads at most {}",
                files.len(),
                limits.max_files
            ))
        } else if let Some((f, s)) = files
            .iter()
            .zip(&sizes)
            .find(|(_, s)| **s > limits.max_file_bytes)
        {
            Some(format!(
                "{} is {s} bytes; files may be at most {} bytes",
                f.display(),
                limits.max_file_bytes
            ))
        } else if total > limits.max_total_bytes {
            Some(format!(
                "The input is {total} bytes; an import job reads at most {} bytes",
                limits.max_total_bytes
            ))
        } else {
            None
        };
        if let Some(message) = limit_error {
            return finish(job, "FAILED", Some(message)).await;
        }

        job.status = "IN_PROGRESS".into();
        let _ = store.update_job(&job).await;
        let report_dir = output.join(format!("{}-FHIR_IMPORT-{}", ds.id, job.job_id));
        let progress = Arc::new(ImportProgress::default());
        // Counters reach DescribeFHIRImportJob every two seconds while the job runs.
        let reporter = {
            let (store, progress, mut job) = (store.clone(), progress.clone(), job.clone());
            let file_count = files.len();
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
            &ds,
            &input,
            &ImportOptions::new(report_dir),
            progress.clone(),
        )
        .await;
        reporter.abort();
        job.properties["JobProgressReport"] = progress_report(&progress, files.len(), total);
        let report = match result {
            Ok(r) => r,
            Err(e) => return finish(job, "FAILED", Some(format!("Import failed: {e}"))).await,
        };
        // Done means queryable: wait for the data store's lake sync to commit everything.
        if let Some(sync) = self.api().sync_handle(&ds.id)
            && let Err(e) = sync.catch_up().await
        {
            return finish(
                job,
                "FAILED",
                Some(format!(
                    "The import could not be committed to the lake: {e}"
                )),
            )
            .await;
        }
        let status = if report.failed() > 0 {
            "COMPLETED_WITH_ERRORS"
        } else {
            "COMPLETED"
        };
        finish(job, status, None).await
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
        if let Some(end) = &job.end_time {
            out["EndTime"] = epoch_seconds(end);
        }
        for key in ["JobName", "Message", "JobProgressReport"] {
            if !p[key].is_null() {
                out[key] = p[key].clone();
            }
        }
        out
    }

    /// DescribeFHIRImportJob.
    pub async fn describe_import(&self, req: &Value) -> Result<Value, ControlError> {
        let job = self.job_of(req, JobKind::Import).await?;
        Ok(json!({ "ImportJobProperties": Self::import_properties(&job) }))
    }

    /// ListFHIRImportJobs.
    pub async fn list_imports(&self, req: &Value) -> Result<Value, ControlError> {
        self.list_jobs_of(
            req,
            JobKind::Import,
            Self::import_properties,
            "ImportJobPropertiesList",
        )
        .await
    }

    /// The job a Describe request names (`DatastoreId`, `JobId`), if it is of `kind`.
    pub(super) async fn job_of(&self, req: &Value, kind: JobKind) -> Result<Job, ControlError> {
        let obj = shapes::object(req)?;
        let ds_id = shapes::required_str(obj, "DatastoreId")?;
        let job_id = shapes::required_str(obj, "JobId")?;
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
        req: &Value,
        kind: JobKind,
        show: fn(&Job) -> Value,
        member: &str,
    ) -> Result<Value, ControlError> {
        let obj = shapes::object(req)?;
        let ds_id = shapes::required_str(obj, "DatastoreId")?;
        self.visible_datastore(ds_id).await?;
        let name = obj.get("JobName").and_then(Value::as_str);
        let status = obj.get("JobStatus").and_then(Value::as_str);
        let before = shapes::optional_time(&req["SubmittedBefore"], "SubmittedBefore")?;
        let after = shapes::optional_time(&req["SubmittedAfter"], "SubmittedAfter")?;
        let (offset, max) = shapes::page(obj)?;
        let items: Vec<Value> = self
            .installation()
            .store
            .list_jobs(ds_id, kind)
            .await?
            .iter()
            .map(show)
            .filter(|p| {
                let submitted = p["SubmitTime"].as_f64().unwrap_or(0.0);
                name.is_none_or(|n| p["JobName"].as_str() == Some(n))
                    && status.is_none_or(|s| p["JobStatus"].as_str() == Some(s))
                    && before.is_none_or(|b| submitted < b)
                    && after.is_none_or(|a| submitted > a)
            })
            .collect();
        Ok(shapes::paged(member, items, offset, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_be_under_an_allowed_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        std::fs::create_dir_all(&root).unwrap();
        let roots = vec![root.clone()];
        let inside = format!("file://{}/data", root.display());
        assert!(local_location(&inside, &roots, "S3Uri").is_ok());
        for bad in [
            "file:///etc/passwd".to_string(),
            format!("file://{}/../secret", root.display()),
            format!("file://{}/new/../../x", root.display()),
        ] {
            assert!(local_location(&bad, &roots, "S3Uri").is_err(), "{bad}");
        }
        assert!(matches!(
            local_location("s3://bucket/x", &roots, "S3Uri"),
            Err(ControlError::Validation(_))
        ));
        assert!(matches!(
            local_location(&inside, &[], "S3Uri"),
            Err(ControlError::AccessDenied(_))
        ));
    }
}
