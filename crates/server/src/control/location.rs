//! Where import and export jobs read and write: `file://` directories and `s3://` prefixes,
//! each confined to the roots the server was started with.
//!
//! HealthLake jobs always name S3 locations, so scripts written for it pass `s3://` URIs;
//! those go to any S3-compatible store through object_store, configured from the usual
//! environment (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP`, ...). The ingest and export code works on local files, so an S3 input is
//! downloaded to a staging directory first and an S3 output is written there and uploaded
//! when the job's files are complete: a job never leaves half-written objects behind, at the
//! cost of local disk for one job's data.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::ControlError;

/// A location jobs may use, given to the server with `--allowed-root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// A local directory.
    Local(PathBuf),
    /// A bucket, or a key prefix within one (whole path segments).
    S3 { bucket: String, prefix: String },
}

impl FromStr for Root {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) =
                fhirlake_lake::s3::split_uri(rest).map_err(|e| format!("'{s}': {e}"))?;
            Ok(Root::S3 { bucket, prefix })
        } else {
            Ok(Root::Local(PathBuf::from(
                s.strip_prefix("file://").unwrap_or(s),
            )))
        }
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Root::Local(p) => write!(f, "{}", p.display()),
            Root::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A checked job location.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    S3(S3Prefix),
}

/// A key prefix in one bucket, with the store that reaches it.
#[derive(Clone)]
pub struct S3Prefix {
    pub bucket: String,
    /// Without leading or trailing slashes; empty for the whole bucket.
    pub key: String,
    store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for S3Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl Location {
    /// Parses `uri` (`file://` or `s3://`) and checks it lies under one of `roots`; `member`
    /// names the request field in errors.
    pub fn parse(uri: &str, roots: &[Root], member: &str) -> Result<Location, ControlError> {
        if roots.is_empty() {
            return Err(ControlError::AccessDenied(format!(
                "{member} '{uri}': this server may not read or write any location; start it \
                 with --allowed-root DIR or --allowed-root s3://BUCKET/PREFIX"
            )));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = fhirlake_lake::s3::split_uri(rest)
                .map_err(|e| ControlError::Validation(format!("{member} '{uri}': {e}")))?;
            let allowed = roots.iter().any(|root| match root {
                Root::S3 { bucket: b, prefix } => {
                    *b == bucket
                        && (prefix.is_empty()
                            || key == *prefix
                            || key.starts_with(&format!("{prefix}/")))
                }
                Root::Local(_) => false,
            });
            if !allowed {
                return Err(outside(member, uri));
            }
            return S3Prefix::from_uri(uri)
                .map(Location::S3)
                .map_err(|e| ControlError::Validation(format!("{member} {e}")));
        }
        let Some(path) = uri.strip_prefix("file://") else {
            return Err(ControlError::Validation(format!(
                "{member} '{uri}' must be an s3:// or file:// URI"
            )));
        };
        local(path, uri, roots, member).map(Location::Local)
    }

    /// The location as a URI (`file:///dir` or `s3://bucket/key`).
    pub fn uri(&self) -> String {
        match self {
            Location::Local(p) => format!("file://{}", p.display()),
            Location::S3(s) => format!("s3://{}/{}", s.bucket, s.key),
        }
    }
}

fn outside(member: &str, uri: &str) -> ControlError {
    ControlError::AccessDenied(format!(
        "{member} '{uri}' is outside the locations this server may use"
    ))
}

/// A local path inside one of the local `roots`, symbolic links resolved.
fn local(path: &str, uri: &str, roots: &[Root], member: &str) -> Result<PathBuf, ControlError> {
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
    // A location that does not exist yet (an output prefix) is checked through its nearest
    // existing ancestor.
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
    let allowed = roots.iter().any(|root| match root {
        Root::Local(dir) => dir
            .canonicalize()
            .map(|r| resolved.starts_with(r))
            .unwrap_or(false),
        Root::S3 { .. } => false,
    });
    if !allowed {
        return Err(outside(member, uri));
    }
    Ok(resolved)
}

/// An object store failure, naming the location.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("S3 {what} {uri}: {source}")]
    Store {
        what: &'static str,
        uri: String,
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Input(#[from] crate::ingest::reader::InputError),
}

impl S3Prefix {
    /// A prefix over `store` (any object store; tests use an in-memory one).
    pub fn new(bucket: &str, key: &str, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            bucket: bucket.to_string(),
            key: key.trim_matches('/').to_string(),
            store,
        }
    }

    /// The prefix an `s3://bucket/key` URI names, reached with the AWS_* environment (no
    /// allowed-root check: for the operator's own CLI; servers go through [`Location::parse`]).
    pub fn from_uri(uri: &str) -> Result<S3Prefix, String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| format!("'{uri}' is not an s3:// URI"))?;
        let (bucket, key) =
            fhirlake_lake::s3::split_uri(rest).map_err(|e| format!("'{uri}': {e}"))?;
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .map_err(|e| format!("'{uri}': cannot reach S3: {e}"))?;
        Ok(S3Prefix::new(&bucket, &key, Arc::new(store)))
    }

    pub fn join(&self, name: &str) -> S3Prefix {
        let key = if self.key.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.key)
        };
        S3Prefix {
            key,
            ..self.clone()
        }
    }

    fn uri_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn store_err(
        &self,
        what: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> TransferError {
        let uri = self.uri_of(key);
        move |source| TransferError::Store { what, uri, source }
    }

    /// The objects under the prefix (or the one object it names), sorted by name.
    pub async fn list(&self) -> Result<Vec<Object>, TransferError> {
        let prefix = ObjectPath::from(self.key.as_str());
        let listed: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.store_err("listing", &self.key))?;
        let mut out: Vec<Object> = listed
            .into_iter()
            .map(|meta| {
                let key = meta.location.to_string();
                let name = key
                    .strip_prefix(&self.key)
                    .map(|r| r.trim_start_matches('/'))
                    .unwrap_or(&key)
                    .to_string();
                Object {
                    name,
                    key,
                    size: meta.size,
                }
            })
            .collect();
        if out.is_empty() && !self.key.is_empty() {
            // `list` matches whole segments: a prefix naming one object lists nothing.
            if let Ok(meta) = self.store.head(&prefix).await {
                out.push(Object {
                    name: self.key.rsplit('/').next().unwrap_or(&self.key).to_string(),
                    key: self.key.clone(),
                    size: meta.size,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Downloads `objects` (from [`Self::list`]) into `dir`, keeping their names.
    pub async fn download(&self, objects: &[Object], dir: &Path) -> Result<(), TransferError> {
        for Object { name, key, .. } in objects {
            let target = dir.join(name);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|source| TransferError::Local {
                        path: parent.to_path_buf(),
                        source,
                    })?;
            }
            let local_err = |source| TransferError::Local {
                path: target.clone(),
                source,
            };
            let mut file = tokio::fs::File::create(&target).await.map_err(local_err)?;
            let mut stream = self
                .store
                .get(&ObjectPath::from(key.as_str()))
                .await
                .map_err(self.store_err("reading", key))?
                .into_stream();
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(self.store_err("reading", key))?
            {
                file.write_all(&chunk)
                    .await
                    .map_err(|source| TransferError::Local {
                        path: target.clone(),
                        source,
                    })?;
            }
            file.flush().await.map_err(|source| TransferError::Local {
                path: target.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Uploads every file under `dir` to the prefix, keeping relative paths (multipart for
    /// large files). Returns the number of objects written.
    pub async fn upload_dir(&self, dir: &Path) -> Result<usize, TransferError> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        for rel in &files {
            let key = self.join(rel).key;
            let path = dir.join(rel);
            let mut file =
                tokio::fs::File::open(&path)
                    .await
                    .map_err(|source| TransferError::Local {
                        path: path.clone(),
                        source,
                    })?;
            let mut writer = object_store::buffered::BufWriter::new(
                self.store.clone(),
                ObjectPath::from(key.as_str()),
            );
            let copied = tokio::io::copy(&mut file, &mut writer).await;
            let closed = match copied {
                Ok(_) => writer.shutdown().await,
                Err(e) => {
                    let _ = writer.abort().await;
                    Err(e)
                }
            };
            closed.map_err(|e| TransferError::Store {
                what: "writing",
                uri: self.uri_of(&key),
                source: object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                },
            })?;
        }
        Ok(files.len())
    }

    /// Streams one object below the prefix.
    pub async fn get(
        &self,
        name: &str,
    ) -> Result<
        futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
        TransferError,
    > {
        let key = self.join(name).key;
        Ok(self
            .store
            .get(&ObjectPath::from(key.as_str()))
            .await
            .map_err(self.store_err("reading", &key))?
            .into_stream())
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Path relative to the listed prefix (`sub/Patient.ndjson`); the file name when the
    /// prefix names the object itself.
    pub name: String,
    /// The object's full key.
    pub key: String,
    pub size: u64,
}

/// Relative paths (with `/`) of the regular files under `dir`.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), TransferError> {
    let io = |source| TransferError::Local {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_type().map_err(io)?.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn local_locations_must_be_under_an_allowed_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        std::fs::create_dir_all(&root).unwrap();
        let roots = vec![Root::Local(root.clone())];
        let inside = format!("file://{}/data", root.display());
        assert!(matches!(
            Location::parse(&inside, &roots, "S3Uri"),
            Ok(Location::Local(_))
        ));
        for bad in [
            "file:///etc/passwd".to_string(),
            format!("file://{}/../secret", root.display()),
            format!("file://{}/new/../../x", root.display()),
            "s3://bucket/x".to_string(),
        ] {
            assert!(Location::parse(&bad, &roots, "S3Uri").is_err(), "{bad}");
        }
        assert!(matches!(
            Location::parse("/plain/path", &roots, "S3Uri"),
            Err(ControlError::Validation(_))
        ));
        assert!(matches!(
            Location::parse(&inside, &[], "S3Uri"),
            Err(ControlError::AccessDenied(_))
        ));
    }

    #[test]
    fn s3_locations_must_be_under_an_allowed_prefix() {
        let roots: Vec<Root> = ["s3://lake-in/hospital", "s3://whole-bucket"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        for ok in [
            "s3://lake-in/hospital",
            "s3://lake-in/hospital/",
            "s3://lake-in/hospital/2026/batch-1",
            "s3://whole-bucket/anything/at/all",
        ] {
            assert!(
                matches!(Location::parse(ok, &roots, "S3Uri"), Ok(Location::S3(_))),
                "{ok}"
            );
        }
        for (bad, denied) in [
            ("s3://lake-in/hospital-other", true),
            ("s3://lake-in/", true),
            ("s3://other-bucket/hospital", true),
            ("s3://lake-in/hospital/../secrets", false),
            ("s3://lake-in/hospital//x", false),
            ("s3://UPPER/x", false),
        ] {
            let r = Location::parse(bad, &roots, "S3Uri");
            assert!(
                if denied {
                    matches!(r, Err(ControlError::AccessDenied(_)))
                } else {
                    matches!(r, Err(ControlError::Validation(_)))
                },
                "{bad}: {r:?}"
            );
        }
        assert!("s3://x".parse::<Root>().is_err());
        assert_eq!(
            "s3://lake-in/hospital/"
                .parse::<Root>()
                .unwrap()
                .to_string(),
            "s3://lake-in/hospital"
        );
    }

    #[tokio::test]
    async fn lists_downloads_and_uploads_keeping_relative_paths() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for (key, body) in [
            (
                "in/batch/Patient.ndjson",
                "{\"resourceType\":\"Patient\"}\n",
            ),
            ("in/batch/sub/Observation.ndjson", "{}\n{}\n"),
            ("in/batch-2/Other.ndjson", "not under the prefix"),
        ] {
            store
                .put(&ObjectPath::from(key), body.as_bytes().to_vec().into())
                .await
                .unwrap();
        }
        let prefix = S3Prefix::new("bucket", "in/batch", store.clone());
        let listed = prefix.list().await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|o| (o.name.as_str(), o.size))
                .collect::<Vec<_>>(),
            [("Patient.ndjson", 27), ("sub/Observation.ndjson", 6)]
        );
        let dir = tempfile::tempdir().unwrap();
        prefix.download(&listed, dir.path()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/Observation.ndjson")).unwrap(),
            "{}\n{}\n"
        );

        // A prefix naming one object lists and downloads just it.
        let one = S3Prefix::new("bucket", "in/batch/Patient.ndjson", store.clone());
        let listed = one.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].size),
            ("Patient.ndjson", 27)
        );
        let dir2 = tempfile::tempdir().unwrap();
        one.download(&listed, dir2.path()).await.unwrap();
        assert!(dir2.path().join("Patient.ndjson").is_file());

        // Upload a tree (one file large enough for a multipart upload) and read it back.
        let out = S3Prefix::new("bucket", "out/job-1", store.clone());
        let big = "x".repeat(12 << 20);
        std::fs::write(dir.path().join("big.ndjson"), &big).unwrap();
        assert_eq!(out.upload_dir(dir.path()).await.unwrap(), 3);
        let uploaded = out.list().await.unwrap();
        assert_eq!(
            uploaded.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["Patient.ndjson", "big.ndjson", "sub/Observation.ndjson"]
        );
        let back: Vec<bytes::Bytes> = out
            .get("big.ndjson")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(back.iter().map(|b| b.len()).sum::<usize>(), big.len());
    }
}
