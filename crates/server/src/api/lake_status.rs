//! `GET [base]/$lake-status`: how far the Iceberg tables trail the resource store.
//!
//! Per resource type with pending changes: the store's latest change sequence, the
//! watermark recorded in the table's current Iceberg snapshot, how many versions wait and
//! since when. `lagSeconds` is the age of the oldest waiting version (0 when in sync).
//! `GET /metrics` gives the same figures for every data store in Prometheus' text format,
//! followed by the per-operation request metrics ([`crate::limits`]).

use axum::http::StatusCode;
use serde::Serialize;

use super::ApiState;
use super::context::Ctx;
use super::error::ApiError;
use super::format::{Body, Reply};
use fhirlake_lake::table_watermark;
use fhirlake_store::Datastore;

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
    let status = status(&ctx.state, &ctx.ds).await?;
    let text = serde_json::to_string(&status).map_err(ApiError::internal)?;
    Ok(Reply::new(StatusCode::OK, Body::Json(text)))
}

/// `GET /metrics`: the lake status of every data store and the per-operation request
/// metrics, in Prometheus' text format.
pub async fn metrics(state: &ApiState) -> Result<String, ApiError> {
    let mut lag = String::new();
    let mut pending = String::new();
    let mut seq = String::new();
    for ds in state.registry().datastores() {
        let s = status(state, &ds).await?;
        let label = format!("{{datastore=\"{}\",datastore_id=\"{}\"}}", ds.name, ds.id);
        lag.push_str(&format!(
            "fhirlake_lake_lag_seconds{label} {}\n",
            s.lag_seconds
        ));
        pending.push_str(&format!(
            "fhirlake_lake_pending_changes{label} {}\n",
            s.pending_changes
        ));
        seq.push_str(&format!(
            "fhirlake_store_change_sequence{label} {}\n",
            s.store_seq
        ));
    }
    Ok(format!(
        "# HELP fhirlake_lake_lag_seconds Age of the oldest acknowledged write not yet queryable in the lake.\n\
         # TYPE fhirlake_lake_lag_seconds gauge\n{lag}\
         # HELP fhirlake_lake_pending_changes Resource versions written but not yet committed to the lake.\n\
         # TYPE fhirlake_lake_pending_changes gauge\n{pending}\
         # HELP fhirlake_store_change_sequence Latest change sequence number of the resource store.\n\
         # TYPE fhirlake_store_change_sequence counter\n{seq}{}",
        state.limits().render()
    ))
}

async fn status(state: &ApiState, ds: &Datastore) -> Result<LakeStatus, ApiError> {
    let store = &state.installation().store;
    let lake = &state.installation().lake;
    let pending = store.pending_lake_changes(&ds.id).await?;
    let now = chrono::Utc::now();
    let mut tables = Vec::with_capacity(pending.len());
    let mut lag_seconds: f64 = 0.0;
    for p in pending {
        let lake_watermark = match lake
            .table(&ds.name, &p.resource_type)
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
    Ok(LakeStatus {
        datastore_id: ds.id.clone(),
        datastore_name: ds.name.clone(),
        store_seq: store.latest_seq(&ds.id).await?,
        in_sync: tables.is_empty(),
        pending_changes: tables.iter().map(|t| t.pending_changes).sum(),
        lag_seconds,
        sync_interval_ms: state.config().sync_interval.as_millis(),
        tables,
    })
}
