//! Moving store changes into the lake, exactly once.
//!
//! Per table, the last applied change sequence (the watermark) is written into each
//! snapshot's summary in the same atomic catalog swap that publishes the data, so the lake
//! itself says what it contains. The store keeps a copy together with the row positions;
//! if a crash lands between the Iceberg commit and the store update, the next sync sees the
//! lake ahead of the store and rebuilds the row index from the table before going on.
//!
//! A sync holds its table's lock ([`Lake::lock_table`]) throughout, so syncs and compactions
//! of one table in other tasks or processes wait for each other instead of computing deletes
//! from an index another commit is about to change.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, AsArray};
use futures::TryStreamExt;
use iceberg::spec::DataContentType;
use iceberg::table::Table;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use super::compact::{Compaction, CompactionPolicy, compact_table, live_files};
use super::flatten::{FlatInput, flatten};
use super::write::{DataFileWriter, write_position_deletes};
use super::{Base, Lake, LakeError, TableChanges, WATERMARK_PROPERTY, table_watermark};
use fhirlake_schema::Registry;
use fhirlake_store::{AddedFile, Change, Datastore, LakeCommitRecord, Store};

/// Resources flattened into one Arrow batch at a time.
const FLATTEN_SLICE: usize = 2000;

/// Limits of one micro-batch (one Iceberg commit).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_changes: i64,
    pub max_json_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        // Parsed JSON takes several times its text size in memory; these bounds keep a sync
        // of any backlog well under 1 GB.
        Self {
            max_changes: 20_000,
            max_json_bytes: 24 << 20,
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
    /// Set when the sync ended with a compaction of the table.
    pub compaction: Option<Compaction>,
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
        let mut stats = sync_table(store, lake, datastore, &resource_type, limits).await?;
        stats.compaction = compact_table(
            store,
            lake,
            datastore,
            &resource_type,
            CompactionPolicy::default(),
            false,
        )
        .await?;
        out.push(stats);
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
    let _lock = lake.lock_table(&datastore.name, resource_type).await?;
    let mut table = lake.ensure_table(&datastore.name, resource_type).await?;
    let mut stats = TableSync {
        resource_type: resource_type.to_string(),
        ..Default::default()
    };
    let lake_snapshot = table.metadata().current_snapshot_id();
    if lake_snapshot.is_some()
        && lake_snapshot != store.lake_snapshot_id(&datastore.id, resource_type).await?
    {
        tracing::warn!(
            table = resource_type,
            "the store's row index does not describe the table's current snapshot (a crash between \
             a lake commit and its record, or a writer outside fhirlake?); rebuilding it from the \
             table"
        );
        rebuild_row_index(store, &table, &datastore.id, resource_type).await?;
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

        // The deletes below name rows of this snapshot's files.
        let mut changes_out = TableChanges {
            base: Base::Snapshot(table.metadata().current_snapshot_id()),
            ..Default::default()
        };
        let mut added_files = Vec::new();
        if !live.is_empty() {
            // Flatten and write in slices: only one slice's parsed JSON and Arrow arrays are
            // in memory at a time, whatever the batch size.
            let present = top_level_members(&live);
            let null_columns: HashSet<&str> = schema
                .fields
                .iter()
                .filter(|f| f.fhir != "system" && !present.contains(f.name.as_str()))
                .map(|f| f.name.as_str())
                .collect();
            let mut writer =
                DataFileWriter::open(&table, &schema.arrow_schema(), &null_columns).await?;
            for slice in live.chunks(FLATTEN_SLICE) {
                let inputs: Vec<FlatInput<'_>> = slice
                    .iter()
                    .map(|c| FlatInput {
                        id: &c.id,
                        version: c.version,
                        last_updated: &c.last_updated,
                        json: c.json.as_deref().expect("live"),
                    })
                    .collect();
                writer.write(&flatten(&schema, &inputs)?).await?;
            }
            let file = writer.finish().await?;
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
                LakeCommitRecord {
                    applied_seq,
                    snapshot_id: table.metadata().current_snapshot_id().unwrap_or_default(),
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

/// Rebuilds the store's row index of one table from the table's live files, recording the
/// table's watermark and snapshot.
async fn rebuild_row_index(
    store: &Store,
    table: &Table,
    datastore_id: &str,
    resource_type: &str,
) -> Result<(), LakeError> {
    let watermark = table_watermark(table);
    let snapshot_id = table.metadata().current_snapshot_id().unwrap_or_default();
    let (data, deletes) = live_files(table).await?;
    let data_files: Vec<String> = data.iter().map(|f| f.file_path().to_string()).collect();
    let mut deleted: HashSet<(String, i64)> = HashSet::new();
    for file in &deletes {
        if file.content_type() == DataContentType::PositionDeletes {
            deleted.extend(read_position_deletes(table, file.file_path()).await?);
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
        .reset_lake_index(
            datastore_id,
            resource_type,
            watermark,
            snapshot_id,
            added_files,
        )
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

/// The top-level member names found in any of the changes' JSON (a column named otherwise
/// holds only nulls in their data file). Values are skipped, not parsed.
fn top_level_members<'a>(changes: &[&'a Change]) -> HashSet<&'a str> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys<'s, 'a>(&'s mut HashSet<&'a str>);
    impl<'de: 'a, 'a> Visitor<'de> for Keys<'_, 'a> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<&'de str>()? {
                self.0.insert(key);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut keys = HashSet::new();
    for json in changes.iter().filter_map(|c| c.json.as_deref()) {
        // A member name with escapes cannot borrow; such a name is no FHIR element anyway.
        let _ = serde_json::Deserializer::from_str(json).deserialize_map(Keys(&mut keys));
    }
    keys
}
