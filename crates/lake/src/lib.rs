//! The lake: one Iceberg table per resource type and data store, derived from the store.
//!
//! [`Lake`] owns the Iceberg SQL catalog (sqlite) and the [`Warehouse`] (a local directory or
//! an S3 prefix); [`sync`] moves store changes into the tables through the [`commit`] module,
//! exactly once.

pub mod background;
pub mod commit;
pub mod compact;
pub mod exec;
pub mod flatten;
pub mod lock;
pub mod provider;
pub mod relabel;
pub mod s3;
pub mod scan;
pub mod sync;
pub mod warehouse;
pub mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::io::{FileIO, FileIOBuilder};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalog, SqlCatalogBuilder};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use fhirlake_schema::{Registry, SchemaError};

pub use commit::{
    Base, CommitError, Committer, DEFAULT_SNAPSHOTS_TO_KEEP, TableChanges, WATERMARK_PROPERTY,
};
pub use warehouse::Warehouse;

/// Name of the Iceberg catalog in the catalog database (pyiceberg's `SqlCatalog(name)`).
pub const CATALOG_NAME: &str = "fhirlake";

/// Errors of the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("catalog database: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Flatten(#[from] flatten::FlattenError),
    #[error(transparent)]
    Store(#[from] fhirlake_store::StoreError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("lake sync: {0}")]
    Background(String),
    #[error("cannot create warehouse directory {0}: {1}")]
    Warehouse(PathBuf, std::io::Error),
    #[error("table lock {0}: {1}")]
    Lock(PathBuf, std::io::Error),
}

/// The Iceberg side of an installation.
#[derive(Clone)]
pub struct Lake {
    catalog: Arc<SqlCatalog>,
    committer: Committer,
    warehouse: Warehouse,
    /// The warehouse's storage, for deleting a dropped data store's files.
    file_io: FileIO,
    /// Where the per-table commit locks live (beside the catalog database).
    locks: PathBuf,
}

impl Lake {
    /// Opens the catalog database `catalog_db` (created if missing) with its tables in
    /// `warehouse` (a local directory is created and made absolute).
    pub async fn open(catalog_db: &Path, warehouse: &Warehouse) -> Result<Self, LakeError> {
        let warehouse = match warehouse {
            Warehouse::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| LakeError::Warehouse(dir.to_path_buf(), e))?;
                Warehouse::Local(
                    dir.canonicalize()
                        .map_err(|e| LakeError::Warehouse(dir.to_path_buf(), e))?,
                )
            }
            other => other.clone(),
        };
        // Our own pool on the catalog database, for the commit module's pointer swap. WAL lets
        // readers (SQL queries, pyiceberg) proceed while a commit writes.
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(catalog_db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        let uri = format!("sqlite:{}", catalog_db.display());
        // The catalog hands its properties to the FileIO of every table it loads, so the
        // storage settings travel with them.
        let storage = warehouse.file_io_props();
        let mut props = storage.clone();
        props.extend([
            ("uri".to_string(), uri),
            ("warehouse".to_string(), warehouse.uri()),
            ("sql_bind_style".to_string(), "QMark".to_string()),
        ]);
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(warehouse.storage_factory())
            .load(CATALOG_NAME, props)
            .await?;
        let file_io = FileIOBuilder::new(warehouse.storage_factory())
            .with_props(storage)
            .build();
        let catalog = Arc::new(catalog);
        let committer = Committer::new(catalog.clone(), pool, CATALOG_NAME.to_string());
        let locks = catalog_db
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("locks");
        Ok(Self {
            catalog,
            committer,
            warehouse,
            file_io,
            locks,
        })
    }

    pub fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Identifier of a resource type's table: namespace = data store name, table = type in
    /// lower case (Athena's table names).
    pub fn table_ident(datastore: &str, resource_type: &str) -> TableIdent {
        TableIdent::new(
            NamespaceIdent::new(datastore.to_string()),
            resource_type.to_ascii_lowercase(),
        )
    }

    /// Waits for the exclusive right to commit to `resource_type`'s table: sync and
    /// compaction hold it from their first read of the table to the store's record of their
    /// commit (see [`lock`]).
    pub async fn lock_table(
        &self,
        datastore: &str,
        resource_type: &str,
    ) -> Result<lock::TableLock, LakeError> {
        let ident = Self::table_ident(datastore, resource_type);
        lock::acquire(lock::lock_path(&self.locks, &ident)).await
    }

    /// The table of `resource_type`, if it has been created.
    pub async fn table(
        &self,
        datastore: &str,
        resource_type: &str,
    ) -> Result<Option<Table>, LakeError> {
        let ident = Self::table_ident(datastore, resource_type);
        Ok(self.committer.load(&ident).await?)
    }

    /// The table of `resource_type`, created (with its namespace) on first use.
    pub async fn ensure_table(
        &self,
        datastore: &str,
        resource_type: &str,
    ) -> Result<Table, LakeError> {
        if let Some(t) = self.table(datastore, resource_type).await? {
            return Ok(t);
        }
        // Two committers (a server's background sync and a CLI import, say) may create the
        // same namespace or table at once; the loser of the catalog's insert uses the
        // winner's.
        let ns = NamespaceIdent::new(datastore.to_string());
        if !self.catalog.namespace_exists(&ns).await?
            && let Err(e) = self.catalog.create_namespace(&ns, HashMap::new()).await
            && !self.catalog.namespace_exists(&ns).await?
        {
            return Err(e.into());
        }
        let schema = Registry::global().get(resource_type)?;
        let iceberg_schema = iceberg::arrow::arrow_schema_to_schema(&schema.arrow_schema())?;
        let creation = TableCreation::builder()
            .name(resource_type.to_ascii_lowercase())
            .schema(iceberg_schema)
            .properties([
                (
                    "write.parquet.compression-codec".to_string(),
                    "zstd".to_string(),
                ),
                (
                    "fhirlake.resource-type".to_string(),
                    resource_type.to_string(),
                ),
            ])
            .build();
        match self.catalog.create_table(&ns, creation).await {
            Ok(table) => Ok(table),
            Err(e) => match self.table(datastore, resource_type).await? {
                Some(table) => Ok(table),
                None => Err(e.into()),
            },
        }
    }

    /// Drops every table of a data store and its namespace, and deletes their files (every
    /// object under the namespace's location in the warehouse). Dropping a data store that
    /// has no tables is not an error.
    pub async fn drop_datastore(&self, datastore: &str) -> Result<(), LakeError> {
        let ns = NamespaceIdent::new(datastore.to_string());
        if self.catalog.namespace_exists(&ns).await? {
            for ident in self.catalog.list_tables(&ns).await? {
                self.catalog.drop_table(&ident).await?;
                self.committer.forget(&ident);
            }
            self.catalog.drop_namespace(&ns).await?;
        }
        // Data store names are SQL identifiers; refuse anything that could name a location
        // outside the namespace's own.
        if datastore.is_empty() || datastore.contains(['/', '\\']) || datastore.starts_with('.') {
            return Err(LakeError::Background(format!(
                "not purging '{datastore}': not a namespace name"
            )));
        }
        self.file_io
            .delete_prefix(self.warehouse.namespace_uri(datastore))
            .await?;
        Ok(())
    }

    /// Names (resource types, lower case) of the tables that exist for a data store.
    pub async fn table_names(&self, datastore: &str) -> Result<Vec<String>, LakeError> {
        let ns = NamespaceIdent::new(datastore.to_string());
        if !self.catalog.namespace_exists(&ns).await? {
            return Ok(Vec::new());
        }
        Ok(self
            .catalog
            .list_tables(&ns)
            .await?
            .into_iter()
            .map(|t| t.name().to_string())
            .collect())
    }
}

/// The watermark recorded in a table's current snapshot (0 before the first commit).
pub fn table_watermark(table: &Table) -> i64 {
    table
        .metadata()
        .current_snapshot()
        .and_then(|s| {
            s.summary()
                .additional_properties
                .get(WATERMARK_PROPERTY)
                .cloned()
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
