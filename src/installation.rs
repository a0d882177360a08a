//! An installation: one directory holding the resource store, the Iceberg catalog and the
//! warehouse. Every command opens one.
//!
//! ```text
//! <data-dir>/store.db       resource store (current + history, change feed)
//! <data-dir>/catalog.db     Iceberg SQL catalog (pyiceberg: SqlCatalog("fhirlake", uri=sqlite:///...))
//! <data-dir>/warehouse/     Iceberg tables: <datastore>/<type>/{data,metadata}
//! <data-dir>/imports/       import reports (manifest.json, FAILURE/<file>)
//! ```

use std::path::{Path, PathBuf};

use crate::lake::{Lake, LakeError};
use crate::store::{Datastore, Store, StoreError};

/// Name of the data store created on first use when none is named.
pub const DEFAULT_DATASTORE: &str = "fhir";

/// Errors opening an installation.
#[derive(Debug, thiserror::Error)]
pub enum InstallationError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// An opened installation.
#[derive(Clone)]
pub struct Installation {
    pub data_dir: PathBuf,
    pub store: Store,
    pub lake: Lake,
}

impl Installation {
    /// Opens (creating if needed) the installation in `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Self, InstallationError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| InstallationError::DataDir(data_dir.to_path_buf(), e))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| InstallationError::DataDir(data_dir.to_path_buf(), e))?;
        let store = Store::open(&data_dir.join("store.db")).await?;
        let lake = Lake::open(&data_dir.join("catalog.db"), &data_dir.join("warehouse")).await?;
        Ok(Self {
            data_dir,
            store,
            lake,
        })
    }

    /// The named data store, or the default one (created on first use).
    pub async fn datastore(&self, name: Option<&str>) -> Result<Datastore, InstallationError> {
        if let Some(name) = name {
            return Ok(self.store.datastore(name).await?);
        }
        if let Some(ds) = self.store.default_datastore().await? {
            return Ok(ds);
        }
        Ok(self.store.create_datastore(DEFAULT_DATASTORE).await?)
    }

    /// The named data store, created if it does not exist yet.
    pub async fn datastore_or_create(
        &self,
        name: Option<&str>,
    ) -> Result<Datastore, InstallationError> {
        match name {
            Some(n) => match self.store.datastore(n).await {
                Ok(ds) => Ok(ds),
                Err(StoreError::NoSuchDatastore(_)) => Ok(self.store.create_datastore(n).await?),
                Err(e) => Err(e.into()),
            },
            None => self.datastore(None).await,
        }
    }
}
