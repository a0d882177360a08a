//! Moving store changes into the lake, exactly once.
//!
//! Per table, the last applied change sequence (the watermark) is written into each
//! snapshot's summary in the same atomic catalog swap that publishes the data, so the lake
//! itself says what it contains. The store keeps a copy together with the row positions;
//! if a crash lands between the Iceberg commit and the store update, the next sync sees the
//! lake ahead of the store and rebuilds the row index from the table before going on.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, AsArray};
use futures::TryStreamExt;
use iceberg::spec::{DataContentType, ManifestList};
use iceberg::table::Table;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use super::flatten::{FlatInput, flatten};
use super::write::{write_data_file, write_position_deletes};
use super::{Lake, LakeError, TableChanges, WATERMARK_PROPERTY, table_watermark};
use crate::schema::Registry;
use crate::store::{AddedFile, Change, Datastore, LakeCommitRecord, Store};

/// Limits of one micro-batch (one Iceberg commit).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_changes: i64,
    pub max_json_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_changes: 50_000,
            max_json_bytes: 96 << 20,
        }
    }
}

/// What one sync did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSync {
    pub resource_type: String,
    pub commits: usize,
    pub rows_written: usize,
    pub rows_removed: usize,
}

/// Applies every pending store change of `datastore` to its tables; returns per-table stats.
pub async fn sync_datastore(
    store: &Store,
    lake: &Lake,
    datastore: &Datastore,
    limits: BatchLimits,
) -> Result<Vec<TableSync>, LakeError> {
    let mut out = Vec::new();
    for (resource_type, _) in store.pending_types(&datastore.id).await? {
        out.push(sync_table(store, lake, datastore, &resource_type, limits).await?);
    }
    Ok(out)
}

/// Applies the pending changes of one table in micro-batches.
pub async fn sync_table(
    store: &Store,
    lake: &Lake,
    datastore: &Datastore,
    resource_type: &str,
    limits: BatchLimits,
) -> Result<TableSync, LakeError> {
    let schema = Registry::global().get(resource_type)?;
    let mut table = lake.ensure_table(&datastore.name, resource_type).await?;
    let mut stats = TableSync {
        resource_type: resource_type.to_string(),
        ..Default::default()
    };
    let lake_wm = table_watermark(&table);
    if lake_wm != store.lake_applied_seq(&datastore.id, resource_type).await? {
        tracing::warn!(
            table = resource_type,
            lake_wm,
            "lake and store disagree on the applied changes; rebuilding the row index from the table"
        );
        rebuild_row_index(store, &table, &datastore.id, resource_type, lake_wm).await?;
    }
    loop {
        let applied = table_watermark(&table);
        let mut changes = store
            .changes(&datastore.id, resource_type, applied, limits.max_changes)
            .await?;
        if changes.is_empty() {
            return Ok(stats);
        }
        // Cap the batch by JSON volume too, keeping at least one change.
        let mut bytes = 0;
        let keep = changes
            .iter()
            .position(|c| {
                bytes += c.json.as_ref().map_or(0, String::len);
                bytes > limits.max_json_bytes
            })
            .unwrap_or(changes.len())
            .max(1);
        changes.truncate(keep);
        let applied_seq = changes.last().expect("non-empty").seq;
        let latest = latest_per_id(changes);

        let ids: Vec<&str> = latest.iter().map(|c| c.id.as_str()).collect();
        let old_rows = store.lake_rows(&datastore.id, resource_type, &ids).await?;
        let live: Vec<&Change> = latest.iter().filter(|c| c.json.is_some()).collect();

        let mut changes_out = TableChanges::default();
        let mut added_files = Vec::new();
        if !live.is_empty() {
            let inputs: Vec<FlatInput<'_>> = live
                .iter()
                .map(|c| FlatInput {
                    id: &c.id,
                    version: c.version,
                    last_updated: &c.last_updated,
                    json: c.json.as_deref().expect("live"),
                })
                .collect();
            let batch = flatten(&schema, &inputs)?;
            let file = write_data_file(&table, &batch).await?;
            added_files.push(AddedFile {
                path: file.file_path().to_string(),
                ids: live.iter().map(|c| c.id.clone()).collect(),
            });
            changes_out.added_data.push(file);
        }
        let mut removed_ids = Vec::new();
        if !old_rows.is_empty() {
            let positions: Vec<(String, i64)> =
                old_rows.values().map(|r| (r.path.clone(), r.pos)).collect();
            removed_ids = old_rows.keys().cloned().collect();
            changes_out
                .added_deletes
                .push(write_position_deletes(&table, positions).await?);
        }
        changes_out
            .properties
            .insert(WATERMARK_PROPERTY.to_string(), applied_seq.to_string());
        let ident = Lake::table_ident(&datastore.name, resource_type);
        table = lake.committer().commit(&ident, &changes_out).await?;
        stats.commits += 1;
        stats.rows_written += live.len();
        stats.rows_removed += removed_ids.len();
        store
            .record_lake_commit(
                &datastore.id,
                resource_type,
                &LakeCommitRecord {
                    applied_seq,
                    added_files,
                    removed_ids,
                    dropped_files: Vec::new(),
                },
            )
            .await?;
    }
}

/// The last change of each id, in first-seen order.
fn latest_per_id(changes: Vec<Change>) -> Vec<Change> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for c in changes {
        match index.get(&c.id) {
            Some(&i) => out[i] = c,
            None => {
                index.insert(c.id.clone(), out.len());
                out.push(c);
            }
        }
    }
    out
}

/// Rebuilds the store's row index of one table from the table's live files, then records
/// `watermark` as applied.
async fn rebuild_row_index(
    store: &Store,
    table: &Table,
    datastore_id: &str,
    resource_type: &str,
    watermark: i64,
) -> Result<(), LakeError> {
    let metadata = table.metadata();
    let file_io = table.file_io();
    let mut data_files = Vec::new();
    let mut deleted: HashSet<(String, i64)> = HashSet::new();
    if let Some(snapshot) = metadata.current_snapshot() {
        let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
        for manifest in list.entries() {
            let loaded = manifest.load_manifest(file_io).await?;
            for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
                match entry.content_type() {
                    DataContentType::Data => data_files.push(entry.file_path().to_string()),
                    DataContentType::PositionDeletes => {
                        for (path, pos) in read_position_deletes(table, entry.file_path()).await? {
                            deleted.insert((path, pos));
                        }
                    }
                    DataContentType::EqualityDeletes => {}
                }
            }
        }
    }
    let mut added_files = Vec::new();
    for path in data_files {
        let ids = read_ids(table, &path).await?;
        // Keep row positions: deleted rows become empty ids that are skipped on insert.
        let live: Vec<String> = ids
            .into_iter()
            .enumerate()
            .map(|(pos, id)| {
                if deleted.contains(&(path.clone(), pos as i64)) {
                    String::new()
                } else {
                    id
                }
            })
            .collect();
        added_files.push(AddedFile { path, ids: live });
    }
    store
        .reset_lake_index(datastore_id, resource_type, watermark, &added_files)
        .await?;
    Ok(())
}

async fn read_parquet_columns(
    table: &Table,
    path: &str,
    columns: &[&str],
) -> Result<Vec<arrow::record_batch::RecordBatch>, LakeError> {
    let input = table.file_io().new_input(path)?;
    let bytes = input.read().await?;
    let builder =
        ParquetRecordBatchStreamBuilder::new(std::io::Cursor::new(bytes.to_vec())).await?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let stream = builder.with_projection(mask).build()?;
    Ok(stream.try_collect().await?)
}

async fn read_ids(table: &Table, path: &str) -> Result<Vec<String>, LakeError> {
    let mut ids = Vec::new();
    for batch in read_parquet_columns(table, path, &["id"]).await? {
        let col = batch.column(0).as_string::<i32>();
        ids.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    Ok(ids)
}

async fn read_position_deletes(table: &Table, path: &str) -> Result<Vec<(String, i64)>, LakeError> {
    let mut out = Vec::new();
    for batch in read_parquet_columns(table, path, &["file_path", "pos"]).await? {
        let paths = batch.column(0).as_string::<i32>();
        let pos = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            out.push((paths.value(i).to_string(), pos.value(i)));
        }
    }
    Ok(out)
}
