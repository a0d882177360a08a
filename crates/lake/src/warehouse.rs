//! Where a lake keeps its Iceberg files: a local directory (the embedded default) or an S3
//! prefix.
//!
//! The catalog database stays local in both cases (it is the installation's sqlite file); only
//! data, delete, manifest and metadata files move. Table locations recorded in the catalog are
//! absolute URIs, so every reader (DataFusion through iceberg's FileIO, the search scanner,
//! pyiceberg) finds the files from the catalog alone.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::{LocalFsStorageFactory, StorageFactory};
use iceberg_storage_opendal::OpenDalStorageFactory;

/// A warehouse location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warehouse {
    /// A directory; made absolute when the lake opens it.
    Local(PathBuf),
    /// `s3://bucket/prefix`, reached with the AWS environment ([`crate::s3::iceberg_props`])
    /// and `properties` (Iceberg `s3.*` keys) on top.
    S3 {
        bucket: String,
        prefix: String,
        properties: BTreeMap<String, String>,
    },
}

impl Warehouse {
    /// Parses a directory path, a `file://` URI or an `s3://bucket/prefix` URI.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) =
                crate::s3::split_uri(rest).map_err(|e| format!("warehouse '{s}': {e}"))?;
            return Ok(Warehouse::S3 {
                bucket,
                prefix,
                properties: BTreeMap::new(),
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Warehouse::Local(PathBuf::from(path)));
        }
        match s.split_once("://") {
            Some((scheme, _)) => Err(format!(
                "warehouse '{s}': the '{scheme}' scheme is not supported; use a directory or \
                 s3://bucket/prefix"
            )),
            None if s.is_empty() => Err("the warehouse location is empty".into()),
            None => Ok(Warehouse::Local(PathBuf::from(s))),
        }
    }

    /// The same warehouse with extra Iceberg storage properties (S3 only; a local directory
    /// has none).
    pub fn with_properties(mut self, extra: BTreeMap<String, String>) -> Self {
        if let Warehouse::S3 { properties, .. } = &mut self {
            properties.extend(extra);
        }
        self
    }

    /// The local directory, if the warehouse is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Warehouse::Local(p) => Some(p),
            Warehouse::S3 { .. } => None,
        }
    }

    /// The warehouse URI Iceberg records table locations under (no trailing slash).
    pub fn uri(&self) -> String {
        match self {
            Warehouse::Local(p) => format!("file://{}", p.display()),
            Warehouse::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            Warehouse::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// Where a namespace's tables live (`{warehouse}/{namespace}`), as the catalog lays them out.
    pub fn namespace_uri(&self, namespace: &str) -> String {
        format!("{}/{namespace}", self.uri())
    }

    /// The storage iceberg reads and writes this warehouse with.
    pub(crate) fn storage_factory(&self) -> Arc<dyn StorageFactory> {
        match self {
            Warehouse::Local(_) => Arc::new(LocalFsStorageFactory),
            Warehouse::S3 { .. } => Arc::new(OpenDalStorageFactory::S3 {
                customized_credential_load: None,
            }),
        }
    }

    /// Storage properties for iceberg's FileIO: the environment's S3 settings overridden by
    /// the configured ones.
    pub(crate) fn file_io_props(&self) -> HashMap<String, String> {
        match self {
            Warehouse::Local(_) => HashMap::new(),
            Warehouse::S3 { properties, .. } => {
                let mut props = crate::s3::iceberg_props(|n| std::env::var(n).ok());
                props.extend(properties.clone());
                props
            }
        }
    }
}

impl fmt::Display for Warehouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warehouse::Local(p) => write!(f, "{}", p.display()),
            Warehouse::S3 { .. } => f.write_str(&self.uri()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_by_scheme() {
        assert_eq!(
            Warehouse::parse("/tmp/wh").unwrap(),
            Warehouse::Local("/tmp/wh".into())
        );
        assert_eq!(
            Warehouse::parse("file:///tmp/wh").unwrap(),
            Warehouse::Local("/tmp/wh".into())
        );
        let s3 = Warehouse::parse("s3://lake/fhir/wh/").unwrap();
        assert_eq!(s3.uri(), "s3://lake/fhir/wh");
        assert_eq!(s3.namespace_uri("cohort"), "s3://lake/fhir/wh/cohort");
        assert_eq!(
            Warehouse::parse("s3://lake").unwrap().uri(),
            "s3://lake".to_string()
        );
        assert!(Warehouse::parse("gs://b/p").unwrap_err().contains("'gs'"));
        assert!(Warehouse::parse("s3://Bad_Bucket/x").is_err());
        assert!(Warehouse::parse("").is_err());
    }

    #[test]
    fn configured_properties_override_the_environment() {
        let wh = Warehouse::parse("s3://lake/wh")
            .unwrap()
            .with_properties(BTreeMap::from([(
                "s3.region".to_string(),
                "eu-central-1".to_string(),
            )]));
        assert_eq!(wh.file_io_props()["s3.region"], "eu-central-1");
        assert!(Warehouse::parse("/x").unwrap().file_io_props().is_empty());
    }
}
