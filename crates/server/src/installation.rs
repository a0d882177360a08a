//! An installation: one directory holding the resource store, the Iceberg catalog and the
//! warehouse. Every command opens one.
//!
//! ```text
//! <data-dir>/store.db       resource store (current + history, change feed)
//! <data-dir>/catalog.db     Iceberg SQL catalog (pyiceberg: SqlCatalog("fhirlake", uri=sqlite:///...))
//! <data-dir>/warehouse/     Iceberg tables: <datastore>/<type>/{data,metadata}
//! <data-dir>/imports/       import reports (manifest.json, FAILURE/<file>)
//! <data-dir>/fhirlake.json  installation settings, when not the defaults (see below)
//! ```
//!
//! The warehouse can live elsewhere, typically on S3: `fhirlake.json` records it as
//! `{"warehouse": "s3://bucket/prefix", "warehouse_properties": {"s3.region": "..."}}`, written
//! by hand or by the first command run with `--warehouse`. The catalog stores absolute file
//! locations, so an installation keeps its warehouse for life; naming another one later is
//! refused rather than silently starting an empty lake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirlake_lake::{Lake, LakeError, Warehouse};
use fhirlake_store::{Datastore, Store, StoreError};

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
    #[error("{0}: {1}")]
    Config(PathBuf, String),
    #[error(
        "this installation keeps its tables in {recorded}; it cannot use the warehouse \
         {requested} (move the data with an export and an import into a new installation)"
    )]
    WarehouseMoved { recorded: String, requested: String },
}

/// Name of the settings file in the data directory.
pub const CONFIG_FILE: &str = "fhirlake.json";

/// The settings file: only what differs from the defaults.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// A directory (relative to the data directory) or an `s3://bucket/prefix` URI.
    warehouse: String,
    /// Iceberg storage properties (`s3.endpoint`, `s3.region`, ...) over the environment's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    warehouse_properties: BTreeMap<String, String>,
}

/// An opened installation.
#[derive(Clone)]
pub struct Installation {
    pub data_dir: PathBuf,
    pub store: Store,
    pub lake: Lake,
}

impl Installation {
    /// Opens (creating if needed) the installation in `data_dir`, with the warehouse its
    /// settings name (by default `<data-dir>/warehouse`).
    pub async fn open(data_dir: &Path) -> Result<Self, InstallationError> {
        Self::open_with(data_dir, None).await
    }

    /// Opens the installation in `data_dir`; `warehouse`, when given, must be the one the
    /// installation already uses, or becomes its warehouse if the installation is new.
    pub async fn open_with(
        data_dir: &Path,
        warehouse: Option<&Warehouse>,
    ) -> Result<Self, InstallationError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| InstallationError::DataDir(data_dir.to_path_buf(), e))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| InstallationError::DataDir(data_dir.to_path_buf(), e))?;
        let warehouse = resolve_warehouse(&data_dir, warehouse)?;
        let store = Store::open(&data_dir.join("store.db")).await?;
        let lake = Lake::open(&data_dir.join("catalog.db"), &warehouse).await?;
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

/// The warehouse of the installation in `data_dir` (absolute): the recorded one, the requested
/// one for a new installation (then recorded), or the default directory.
fn resolve_warehouse(
    data_dir: &Path,
    requested: Option<&Warehouse>,
) -> Result<Warehouse, InstallationError> {
    let config_path = data_dir.join(CONFIG_FILE);
    let config_err = |e: String| InstallationError::Config(config_path.clone(), e);
    let absolute = |w: &Warehouse| match w {
        Warehouse::Local(p) => Warehouse::Local(data_dir.join(p)),
        other => other.clone(),
    };
    let default = Warehouse::Local(data_dir.join("warehouse"));
    let recorded = match std::fs::read_to_string(&config_path) {
        Ok(text) => {
            let config: Config =
                serde_json::from_str(&text).map_err(|e| config_err(e.to_string()))?;
            let warehouse = Warehouse::parse(&config.warehouse).map_err(config_err)?;
            Some(absolute(&warehouse).with_properties(config.warehouse_properties))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(config_err(e.to_string())),
    };
    // An installation that already has a catalog but no settings uses the default.
    let existing = recorded.or_else(|| {
        data_dir
            .join("catalog.db")
            .exists()
            .then(|| default.clone())
    });
    let Some(requested) = requested.map(|w| {
        // Relative directories on the command line are relative to where it runs.
        match w {
            Warehouse::Local(p) => Warehouse::Local(std::path::absolute(p).unwrap_or(p.clone())),
            other => other.clone(),
        }
    }) else {
        return Ok(existing.unwrap_or(default));
    };
    match existing {
        Some(existing) if existing.uri() == requested.uri() => Ok(existing),
        Some(existing) => Err(InstallationError::WarehouseMoved {
            recorded: existing.to_string(),
            requested: requested.to_string(),
        }),
        None if requested.uri() == default.uri() => Ok(default),
        None => {
            let config = Config {
                warehouse: requested.uri(),
                warehouse_properties: BTreeMap::new(),
            };
            let text = serde_json::to_string_pretty(&config).expect("settings serialize");
            std::fs::write(&config_path, text + "\n").map_err(|e| config_err(e.to_string()))?;
            Ok(requested)
        }
    }
}
