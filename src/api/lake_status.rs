//! `GET [base]/$lake-status`: how far the Iceberg tables trail the resource store.
//!
//! Per resource type with pending changes: the store's latest change sequence, the
//! watermark recorded in the table's current Iceberg snapshot, how many versions wait and
//! since when. `lagSeconds` is the age of the oldest waiting version (0 when in sync).

use axum::http::StatusCode;
use serde::Serialize;

use super::error::ApiError;
use super::format::{Body, Reply};
use super::interactions::Ctx;
use crate::lake::table_watermark;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LakeStatus {
    datastore_id: String,
    datastore_name: String,
    /// Latest change sequence of the data store.
    store_seq: i64,
    in_sync: bool,
    pending_changes: i64,
    lag_seconds: f64,
    sync_interval_ms: u128,
    tables: Vec<TableStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TableStatus {
    resource_type: String,
    store_seq: i64,
    lake_watermark: i64,
    pending_changes: i64,
    oldest_pending: String,
}

/// The lake status of the context's data store.
pub async fn reply(ctx: &Ctx) -> Result<Reply, ApiError> {
    let store = ctx.store();
    let lake = &ctx.state.installation().lake;
    let pending = store.pending_lake_changes(&ctx.ds.id).await?;
    let now = chrono::Utc::now();
    let mut tables = Vec::with_capacity(pending.len());
    let mut lag_seconds: f64 = 0.0;
    for p in pending {
        let lake_watermark = match lake
            .table(&ctx.ds.name, &p.resource_type)
            .await
            .map_err(ApiError::internal)?
        {
            Some(table) => table_watermark(&table),
            None => 0,
        };
        // The Iceberg commit lands before the store records it: what SQL sees decides.
        if lake_watermark >= p.store_seq {
            continue;
        }
        if let Ok(oldest) = chrono::DateTime::parse_from_rfc3339(&p.oldest_pending) {
            let age = (now - oldest.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1e3;
            lag_seconds = lag_seconds.max(age.max(0.0));
        }
        tables.push(TableStatus {
            resource_type: p.resource_type,
            store_seq: p.store_seq,
            lake_watermark,
            pending_changes: p.pending,
            oldest_pending: p.oldest_pending,
        });
    }
    let status = LakeStatus {
        datastore_id: ctx.ds.id.clone(),
        datastore_name: ctx.ds.name.clone(),
        store_seq: store.latest_seq(&ctx.ds.id).await?,
        in_sync: tables.is_empty(),
        pending_changes: tables.iter().map(|t| t.pending_changes).sum(),
        lag_seconds,
        sync_interval_ms: ctx.state.config().sync_interval.as_millis(),
        tables,
    };
    let text = serde_json::to_string(&status).map_err(ApiError::internal)?;
    Ok(Reply::new(StatusCode::OK, Body::Json(text)))
}
