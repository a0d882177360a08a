//! The REPL backend for an embedded installation: SQL runs in-process over the lake.

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, SchemaRef};
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
                .register_datastore(&ds.name, LakeTable::all_types(&installation.lake, &ds.name))
                .map_err(BackendError::other)?;
        }
        engine
            .set_current_datastore(&current.name)
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
            // Only types with a lake table can have rows; count those with SQL.
            let with_data = self
                .installation
                .lake
                .table_names(&current)
                .await
                .map_err(BackendError::other)?;
            let mut out = Vec::new();
            for t in self.engine.tables(None).map_err(sql_error)? {
                let rows = if with_data.contains(&t.name) {
                    let batches = self
                        .engine
                        .collect(&format!("SELECT count(*) FROM \"{}\"", t.name))
                        .await
                        .map_err(sql_error)?;
                    batches
                        .first()
                        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0) as u64)
                        .unwrap_or(0)
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

/// A shareable backend.
pub async fn local_backend(
    installation: Installation,
    current: &Datastore,
) -> Result<Arc<dyn QueryBackend>, BackendError> {
    Ok(Arc::new(LocalBackend::open(installation, current).await?))
}
