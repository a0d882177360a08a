//! The audit log as a SQL table, `fhirlake_audit.log`: DataFusion's NDJSON listing table
//! over `<data-dir>/audit/` with the record's schema, so every query reads the files as they
//! are then (the table is never stale). `fhirlake_audit` cannot be a data store's name
//! (`fhirlake_store::validate_datastore_name` refuses it).

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use fhirlake_sql::SqlEngine;

use super::AUDIT_DIR;

/// The SQL schema holding the audit table.
pub const SQL_SCHEMA: &str = "fhirlake_audit";
/// The audit table's name in [`SQL_SCHEMA`].
pub const SQL_TABLE: &str = "log";

/// The columns: [`super::AuditRecord`]'s fields, `time` as a UTC timestamp.
pub fn schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        text("operation", false),
        text("principal", false),
        text("source", true),
        text("forwarded_for", true),
        text("datastore_id", true),
        text("resource_type", true),
        text("resource_id", true),
        text("job_id", true),
        text("sql_sha256", true),
        Field::new("status", DataType::Int32, true),
        text("outcome", false),
        text("prev_hash", false),
        text("hash", false),
    ]))
}

/// Registers `fhirlake_audit.log` over the audit files of `data_dir` in `engine` (and every
/// engine sharing its data stores). Creates the audit directory so an installation that has
/// served nothing yet shows an empty table.
pub fn register(engine: &SqlEngine, data_dir: &Path) -> Result<(), DataFusionError> {
    let dir = data_dir.join(AUDIT_DIR);
    std::fs::create_dir_all(&dir)?;
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let options =
        ListingOptions::new(Arc::new(JsonFormat::default())).with_file_extension(".ndjson");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema());
    let table = ListingTable::try_new(config)?;
    let provider = MemorySchemaProvider::new();
    provider.register_table(SQL_TABLE.to_string(), Arc::new(table))?;
    engine.register_system_schema(SQL_SCHEMA, Arc::new(provider));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditRecord, WriterConfig};
    use arrow::array::AsArray;

    #[tokio::test]
    async fn the_log_is_queryable_with_sql() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join(AUDIT_DIR), WriterConfig::default()).unwrap();
        for op in ["ReadResource", "ReadResource", "CreateResource"] {
            log.append(AuditRecord::new(op, "anonymous").with_status(200))
                .await;
        }
        log.flush().await;
        let engine = SqlEngine::new().unwrap();
        register(&engine, dir.path()).unwrap();
        let batches = engine
            .collect(
                "SELECT operation, count(*) AS n, max(time) > TIMESTAMP '2020-01-01 00:00:00' \
                 FROM fhirlake_audit.log GROUP BY 1 ORDER BY 1",
            )
            .await
            .unwrap();
        let ops = batches[0].column(0).as_string::<i32>();
        assert_eq!(ops.value(0), "CreateResource");
        assert_eq!(ops.value(1), "ReadResource");
        let counts = batches[0]
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(counts.value(1), 2);
    }
}
