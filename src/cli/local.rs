//! The REPL backend for an embedded installation: SQL runs in-process over the lake.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::future::BoxFuture;

use super::repl::{BackendError, QueryBackend, TableInfo};
use crate::installation::Installation;
use crate::lake::provider::LakeTable;
use crate::sql::{SqlEngine, SqlError};
use crate::store::Datastore;

/// SQL over the Iceberg tables of one installation, every data store registered as a schema.
pub struct LocalBackend {
    engine: SqlEngine,
    installation: Installation,
}

impl LocalBackend {
    /// Registers every data store of `installation` and makes `current` the default schema.
    pub async fn open(
        installation: Installation,
        current: &Datastore,
    ) -> Result<Self, BackendError> {
        let engine = SqlEngine::new().map_err(BackendError::other)?;
        for ds in installation
            .store
            .list_datastores()
            .await
            .map_err(BackendError::other)?
        {
            engine
                .register_datastore_lazy(
                    &ds.name,
                    LakeTable::factories(&installation.lake, &ds.name),
                )
                .map_err(BackendError::other)?;
        }
        engine
            .set_current_datastore(&current.name)
            .map_err(BackendError::other)?;
        // The server's audit log, as `fhirlake_audit.log`.
        crate::audit::table::register(&engine, &installation.data_dir)
            .map_err(BackendError::other)?;
        Ok(Self {
            engine,
            installation,
        })
    }

    pub fn engine(&self) -> &SqlEngine {
        &self.engine
    }
}

fn sql_error(e: SqlError) -> BackendError {
    BackendError::other(e)
}

impl QueryBackend for LocalBackend {
    fn execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<SendableRecordBatchStream, BackendError>> {
        Box::pin(async move { self.engine.execute_stream(sql).await.map_err(sql_error) })
    }

    fn tables(&self) -> BoxFuture<'_, Result<Vec<TableInfo>, BackendError>> {
        Box::pin(async move {
            let current = self.engine.current_datastore().unwrap_or_default();
            // Only types with a lake table can have rows. The snapshot summary gives live rows
            // without a scan: our deletes each remove one distinct live row.
            let with_data = self
                .installation
                .lake
                .table_names(&current)
                .await
                .map_err(BackendError::other)?;
            let mut out = Vec::new();
            for t in self.engine.tables(None).map_err(sql_error)? {
                let rows = if with_data.contains(&t.name) {
                    match self
                        .installation
                        .lake
                        .table(&current, &t.resource_type)
                        .await
                        .map_err(BackendError::other)?
                    {
                        Some(table) => live_rows(&table),
                        None => 0,
                    }
                } else {
                    0
                };
                out.push(TableInfo { name: t.name, rows });
            }
            Ok(out)
        })
    }

    fn describe<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<SchemaRef>, BackendError>> {
        Box::pin(async move { Ok(self.engine.table(None, table).ok().map(|t| t.schema)) })
    }
}

/// Live rows of a table from its current snapshot's summary counters.
fn live_rows(table: &iceberg::table::Table) -> u64 {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return 0;
    };
    let props = &snapshot.summary().additional_properties;
    let get = |k: &str| {
        props
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get("total-records").saturating_sub(get("total-position-deletes"))
}

/// A shareable backend.
pub async fn local_backend(
    installation: Installation,
    current: &Datastore,
) -> Result<Arc<dyn QueryBackend>, BackendError> {
    Ok(Arc::new(LocalBackend::open(installation, current).await?))
}
