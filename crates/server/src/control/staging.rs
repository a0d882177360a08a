//! Job I/O shared by the control plane's jobs and the `import`/`export` commands: where a job
//! reads its input, where it writes its output, and how S3 locations are staged.
//!
//! Import and export work on local files. An S3 input is listed (so limits can be checked
//! before anything is read), then downloaded into the job's staging directory; an S3 output is
//! written to the staging directory and uploaded once complete, so a failed job leaves no
//! partial objects behind. Report and output directories are named as HealthLake names them.

use std::path::{Path, PathBuf};

use super::location::{Location, Object, S3Prefix, TransferError};
use crate::ingest::reader::{input_files, is_ndjson_name};

/// The directory an import job's report goes to, under its output location.
pub fn import_report_name(datastore_id: &str, job_id: &str) -> String {
    format!("{datastore_id}-FHIR_IMPORT-{job_id}")
}

/// The directory an export job's files go to, under its output location.
pub fn export_output_name(datastore_id: &str, job_id: &str) -> String {
    format!("{datastore_id}-FHIR_EXPORT-{job_id}")
}

impl Location {
    /// `name` below this location.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(dir) => Location::Local(dir.join(name)),
            Location::S3(prefix) => Location::S3(prefix.join(name)),
        }
    }
}

/// What an import input holds, listed before anything is read.
pub struct InputListing {
    /// Each file or object with its size in bytes, named as the user would name it.
    pub files: Vec<(String, u64)>,
    source: Source,
}

enum Source {
    Local(PathBuf),
    S3(S3Prefix, Vec<Object>),
}

impl InputListing {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// One job's local working directory; [`Staging::remove`] deletes it when the job ends.
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The NDJSON files (or objects) an import of `input` would read.
    pub async fn list(&self, input: &Location) -> Result<InputListing, TransferError> {
        match input {
            Location::Local(path) => {
                let files = input_files(path)?
                    .iter()
                    .map(|f| {
                        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                        (f.display().to_string(), size)
                    })
                    .collect();
                Ok(InputListing {
                    files,
                    source: Source::Local(path.clone()),
                })
            }
            Location::S3(prefix) => {
                let objects: Vec<Object> = prefix
                    .list()
                    .await?
                    .into_iter()
                    .filter(|o| is_ndjson_name(Path::new(&o.name)))
                    .collect();
                let files = objects
                    .iter()
                    .map(|o| (format!("s3://{}/{}", prefix.bucket, o.key), o.size))
                    .collect();
                Ok(InputListing {
                    files,
                    source: Source::S3(prefix.clone(), objects),
                })
            }
        }
    }

    /// The local path an import reads: the input itself, or its S3 objects downloaded.
    pub async fn fetch(&self, input: &InputListing) -> Result<PathBuf, TransferError> {
        match &input.source {
            Source::Local(path) => Ok(path.clone()),
            Source::S3(prefix, objects) => {
                let dir = self.dir.join("input");
                prefix.download(objects, &dir).await?;
                Ok(dir)
            }
        }
    }

    /// The local directory a job writes what goes to `output`.
    pub fn writable(&self, output: &Location) -> PathBuf {
        match output {
            Location::Local(dir) => dir.clone(),
            Location::S3(_) => self.dir.join("output"),
        }
    }

    /// Delivers what was written to [`Staging::writable`]: uploads it when `output` is S3.
    pub async fn publish(&self, output: &Location) -> Result<(), TransferError> {
        match output {
            Location::Local(_) => Ok(()),
            Location::S3(prefix) => prefix.upload_dir(&self.writable(output)).await.map(|_| ()),
        }
    }

    /// Deletes the staging directory (downloads and not yet uploaded output).
    pub async fn remove(self) {
        if self.dir.exists()
            && let Err(e) = tokio::fs::remove_dir_all(&self.dir).await
        {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn s3_input_is_listed_then_downloaded_and_s3_output_uploaded_on_publish() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let bucket = S3Prefix::new("bucket", "", store);
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("Patient.ndjson"), "{}\n").unwrap();
        std::fs::write(src.path().join("notes.txt"), "x").unwrap();
        bucket.join("in").upload_dir(src.path()).await.unwrap();

        let work = tempfile::tempdir().unwrap();
        let staging = Staging::new(work.path().join("job"));
        let input = Location::S3(bucket.join("in"));
        let listing = staging.list(&input).await.unwrap();
        assert_eq!(
            listing.files,
            [("s3://bucket/in/Patient.ndjson".to_string(), 3)]
        );
        let dir = staging.fetch(&listing).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("Patient.ndjson")).unwrap(),
            "{}\n"
        );

        let output = Location::S3(bucket.join("out")).join(&export_output_name("d", "j"));
        let out_dir = staging.writable(&output);
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::write(out_dir.join("manifest.json"), "{}").unwrap();
        staging.publish(&output).await.unwrap();
        let uploaded = bucket.join("out").list().await.unwrap();
        assert_eq!(uploaded.len(), 1);
        assert_eq!(uploaded[0].key, "out/d-FHIR_EXPORT-j/manifest.json");
        staging.remove().await;
        assert!(!work.path().join("job").exists());
    }
}
