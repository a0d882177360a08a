//! A leaf-projected, cached reader of one table snapshot, for point lookups such as search.
//!
//! iceberg-rust's scan projects whole top-level columns: reading `subject.reference` decodes
//! every leaf of the `subject` struct (identifier, period, extensions, ...), and every scan
//! re-reads the manifests and the Parquet footers (large for wide FHIR types). Both are
//! immutable per snapshot and per file, so this reader caches the snapshot's file list (with
//! each file's deleted positions, read once from its position-delete files) and each file's
//! parsed footer, and decodes only the Parquet leaves the caller asks for, keeping recently
//! decoded leaves in memory within a budget. Rows removed by position deletes are skipped
//! with a row selection.
//!
//! Files in a local warehouse are read with blocking file I/O, the fastest path; files in an
//! object store (an S3 warehouse) through the table's iceberg FileIO, fetching only the
//! footer and the byte ranges of the wanted column chunks.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use iceberg::arrow::ArrowFileReader;
use iceberg::io::{FileIO, FileMetadata};
use iceberg::spec::DataContentType;
use iceberg::table::Table;
use parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowSelection, RowSelector,
};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::reader::ChunkReader;

use super::LakeError;

/// One live data file of a snapshot.
#[derive(Debug)]
pub struct ScanFile {
    /// Local path of the Parquet file, or its URI when it is in an object store.
    pub path: String,
    /// Size in bytes, from the manifest.
    pub size: u64,
    /// Whether `path` is a local file (else it is read through the table's FileIO).
    pub local: bool,
    /// Positions removed by position deletes, sorted.
    pub deleted: Vec<i64>,
}

/// The data files of one snapshot.
pub struct SnapshotFiles {
    pub snapshot_id: i64,
    pub files: Vec<ScanFile>,
    /// The table's storage, for files not on the local file system.
    file_io: FileIO,
    /// The runtime object-store reads run on; scans themselves run on blocking threads.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SnapshotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFiles")
            .field("snapshot_id", &self.snapshot_id)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl SnapshotFiles {
    /// An async reader of a file in an object store.
    pub(crate) fn remote(&self, file: &ScanFile) -> Result<ArrowFileReader, LakeError> {
        let input = self.file_io.new_input(&file.path)?;
        let reader = self.runtime.block_on(input.reader())?;
        Ok(ArrowFileReader::new(
            FileMetadata { size: file.size },
            reader,
        ))
    }
}

/// Narrows a scan to candidate rows found through one column (an index lookup).
pub struct Probe<'a> {
    /// Top-level column the lookup reads.
    pub column: &'a str,
    /// Identifies the lookup's index (column path and normalization) in cache keys.
    pub id: String,
    /// Given a cache key for (file, deletes, index) and the file's decoded batches of
    /// `column`, the `(batch, row)` pairs that may match.
    #[allow(clippy::type_complexity)]
    pub candidates: &'a dyn Fn(&str, &[RecordBatch]) -> Result<Vec<(u32, u32)>, LakeError>,
}

/// A parsed footer and the FHIR path of each of its leaf columns (list wrappers removed),
/// derived once per file rather than on every scan.
#[derive(Clone)]
pub(crate) struct Footer {
    pub(crate) metadata: ArrowReaderMetadata,
    pub(crate) leaf_paths: Arc<Vec<String>>,
}

/// Cached snapshot plans, footers and decoded leaves; cheap to clone (shared caches).
#[derive(Clone)]
pub struct LeafScanner {
    plans: Arc<Mutex<PlanCache>>,
    footers: Arc<Mutex<HashMap<String, Footer>>>,
    batches: Arc<Mutex<BatchCache>>,
}

impl Default for LeafScanner {
    fn default() -> Self {
        Self::with_cache_bytes(DEFAULT_CACHE_BYTES)
    }
}

/// Planned snapshots by (table, snapshot id).
type PlanCache = HashMap<(String, i64), Arc<SnapshotFiles>>;

/// Rows per decoded batch; every column of a file is read with the same size, so batches of
/// different columns line up.
const BATCH_ROWS: usize = 8192;

/// Default memory for decoded leaves.
pub const DEFAULT_CACHE_BYTES: usize = 512 << 20;

/// Decoded batches by (file, number of deleted rows, leaf indices). A data file never changes
/// and its deletes only grow, so the key identifies the content exactly. Evicted oldest first
/// when over budget.
struct BatchCache {
    map: HashMap<BatchKey, Arc<Vec<RecordBatch>>>,
    order: std::collections::VecDeque<(BatchKey, usize)>,
    bytes: usize,
    budget: usize,
}

type BatchKey = (String, usize, Vec<usize>);

impl BatchCache {
    fn insert(&mut self, key: BatchKey, batches: Arc<Vec<RecordBatch>>) {
        let size: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        if size > self.budget / 4 || self.map.contains_key(&key) {
            return;
        }
        while self.bytes + size > self.budget {
            let Some((old, old_size)) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
            self.bytes -= old_size;
        }
        self.bytes += size;
        self.order.push_back((key.clone(), size));
        self.map.insert(key, batches);
    }
}

/// Most cached entries of each kind; the caches are cleared when full (files and snapshots are
/// immutable, so an entry is never stale, only unused).
const MAX_PLANS: usize = 256;
const MAX_FOOTERS: usize = 2048;

/// The local path of a file URI, or `None` for a file in an object store.
fn local_path(uri: &str) -> Option<&str> {
    match uri.strip_prefix("file://") {
        Some(path) => Some(path),
        None if !uri.contains("://") => Some(uri),
        None => None,
    }
}

pub(crate) fn lake_err(what: &str, e: impl std::fmt::Display) -> LakeError {
    LakeError::Background(format!("{what}: {e}"))
}

impl LeafScanner {
    /// A scanner keeping up to `bytes` of decoded leaves in memory (0 disables that cache).
    pub fn with_cache_bytes(bytes: usize) -> Self {
        Self {
            plans: Default::default(),
            footers: Default::default(),
            batches: Arc::new(Mutex::new(BatchCache {
                map: HashMap::new(),
                order: Default::default(),
                bytes: 0,
                budget: bytes,
            })),
        }
    }

    /// The live files of `snapshot_id` of `table`, planned once per snapshot.
    pub async fn files(
        &self,
        table: &Table,
        snapshot_id: i64,
    ) -> Result<Arc<SnapshotFiles>, LakeError> {
        let key = (table.identifier().to_string(), snapshot_id);
        if let Some(plan) = self.plans.lock().expect("plan cache").get(&key) {
            return Ok(plan.clone());
        }
        let tasks: Vec<_> = table
            .scan()
            .snapshot_id(snapshot_id)
            .select_empty()
            .build()?
            .plan_files()
            .await?
            .try_collect()
            .await?;
        let mut delete_cache: HashMap<String, Arc<HashMap<String, Vec<i64>>>> = HashMap::new();
        let mut files = Vec::with_capacity(tasks.len());
        for task in tasks {
            let mut deleted = Vec::new();
            for d in &task.deletes {
                if d.file_type != DataContentType::PositionDeletes {
                    return Err(lake_err(
                        "unsupported delete file",
                        format!("{} is not a position-delete file", d.file_path),
                    ));
                }
                let by_file = match delete_cache.get(&d.file_path) {
                    Some(m) => m.clone(),
                    None => {
                        let uri = d.file_path.clone();
                        let parsed = match local_path(&uri) {
                            Some(path) => {
                                let path = path.to_string();
                                tokio::task::spawn_blocking(move || {
                                    let file = File::open(&path).map_err(|e| lake_err(&uri, e))?;
                                    read_position_deletes(&uri, file)
                                })
                                .await
                            }
                            None => {
                                // Delete files are small: fetched whole.
                                let bytes = table.file_io().new_input(&uri)?.read().await?;
                                tokio::task::spawn_blocking(move || {
                                    read_position_deletes(&uri, bytes)
                                })
                                .await
                            }
                        };
                        let m = Arc::new(parsed.map_err(|e| lake_err("delete reader", e))??);
                        delete_cache.insert(d.file_path.clone(), m.clone());
                        m
                    }
                };
                if let Some(p) = by_file.get(&task.data_file_path) {
                    deleted.extend_from_slice(p);
                }
            }
            deleted.sort_unstable();
            deleted.dedup();
            let (path, local) = match local_path(&task.data_file_path) {
                Some(path) => (path.to_string(), true),
                None => (task.data_file_path.clone(), false),
            };
            files.push(ScanFile {
                path,
                size: task.file_size_in_bytes,
                local,
                deleted,
            });
        }
        let plan = Arc::new(SnapshotFiles {
            snapshot_id,
            files,
            file_io: table.file_io().clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        let mut plans = self.plans.lock().expect("plan cache");
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Reads the leaves `wanted` selects (by their dotted FHIR path, list wrappers removed)
    /// from every live row of `files`, calling `visit` with each batch.
    ///
    /// Blocking: call it from a blocking thread (`spawn_blocking`), never on an async worker,
    /// since reads from an object store wait on the runtime that planned `files`.
    pub fn scan(
        &self,
        files: &SnapshotFiles,
        wanted: &dyn Fn(&str) -> bool,
        visit: &mut dyn FnMut(RecordBatch) -> Result<(), LakeError>,
    ) -> Result<(), LakeError> {
        self.scan_probed(files, wanted, None, visit)
    }

    /// Like [`Self::scan`], but when `probe` is given only the rows it names are read: it
    /// gets the file's decoded batches of the probe column (keyed for caching by the file
    /// and its deletes) and returns `(batch, row)` candidates, which are the only rows
    /// assembled from the other columns and visited. Files without candidates are skipped
    /// without decoding anything else.
    pub fn scan_probed(
        &self,
        files: &SnapshotFiles,
        wanted: &dyn Fn(&str) -> bool,
        probe: Option<&Probe<'_>>,
        visit: &mut dyn FnMut(RecordBatch) -> Result<(), LakeError>,
    ) -> Result<(), LakeError> {
        for file in &files.files {
            let Footer {
                metadata,
                leaf_paths,
            } = self.footer(files, file)?;
            let schema = metadata.metadata().file_metadata().schema_descr();
            // Leaves grouped by top-level column: each column is decoded and cached on its
            // own, so searches reading different column sets share what they have in common.
            let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
            for (i, leaf_path) in leaf_paths.iter().enumerate() {
                if !wanted(leaf_path) {
                    continue;
                }
                let root = schema.get_column_root_idx(i);
                match groups.last_mut() {
                    Some((r, leaves)) if *r == root => leaves.push(i),
                    _ => groups.push((root, vec![i])),
                }
            }
            let candidates = match probe {
                None => None,
                Some(probe) => {
                    let Some((_, leaves)) = groups.iter().find(|(root, _)| {
                        schema.root_schema().get_fields()[*root].name() == probe.column
                    }) else {
                        return Err(lake_err(&file.path, "the probe column is not read"));
                    };
                    let batches = self.column(files, file, &metadata, leaves.clone())?;
                    let key = format!("{}#{}#{}", file.path, file.deleted.len(), probe.id);
                    let found = (probe.candidates)(&key, &batches)?;
                    if found.is_empty() {
                        continue;
                    }
                    Some(found)
                }
            };
            let mut columns = Vec::with_capacity(groups.len());
            for (_, leaves) in groups {
                columns.push(self.column(files, file, &metadata, leaves)?);
            }
            let Some(first) = columns.first() else {
                continue;
            };
            for i in 0..first.len() {
                let rows: Option<Vec<u32>> = match &candidates {
                    None => None,
                    Some(c) => {
                        let rows: Vec<u32> = c
                            .iter()
                            .filter(|(b, _)| *b as usize == i)
                            .map(|(_, r)| *r)
                            .collect();
                        if rows.is_empty() {
                            continue;
                        }
                        Some(rows)
                    }
                };
                let take = rows.map(arrow::array::UInt32Array::from);
                let mut fields = Vec::with_capacity(columns.len());
                let mut arrays = Vec::with_capacity(columns.len());
                for c in &columns {
                    let b = c.get(i).ok_or_else(|| {
                        lake_err(&file.path, "column reads returned different batch counts")
                    })?;
                    fields.push(b.schema().field(0).clone());
                    let array = match &take {
                        Some(idx) => arrow::compute::take(b.column(0), idx, None)
                            .map_err(|e| lake_err(&file.path, e))?,
                        None => b.column(0).clone(),
                    };
                    arrays.push(array);
                }
                let schema = Arc::new(arrow::datatypes::Schema::new(fields));
                let batch =
                    RecordBatch::try_new(schema, arrays).map_err(|e| lake_err(&file.path, e))?;
                visit(batch)?;
            }
        }
        Ok(())
    }

    /// The live rows of one top-level column (only `leaves` of it), decoded or cached.
    fn column(
        &self,
        files: &SnapshotFiles,
        file: &ScanFile,
        metadata: &ArrowReaderMetadata,
        leaves: Vec<usize>,
    ) -> Result<Arc<Vec<RecordBatch>>, LakeError> {
        let key = (file.path.clone(), file.deleted.len(), leaves.clone());
        if let Some(b) = self.batches.lock().expect("batch cache").map.get(&key) {
            return Ok(b.clone());
        }
        let schema = metadata.metadata().file_metadata().schema_descr();
        let rows = metadata.metadata().file_metadata().num_rows() as usize;
        let mask = ProjectionMask::leaves(schema, leaves);
        let skip = (!file.deleted.is_empty()).then(|| selection(&file.deleted, rows));
        let batches = if file.local {
            let handle = File::open(&file.path).map_err(|e| lake_err(&file.path, e))?;
            configure(
                ParquetRecordBatchReaderBuilder::new_with_metadata(handle, metadata.clone()),
                mask,
                skip,
            )
            .build()
            .map_err(|e| lake_err(&file.path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| lake_err(&file.path, e))?
        } else {
            let stream = configure(
                ParquetRecordBatchStreamBuilder::new_with_metadata(
                    files.remote(file)?,
                    metadata.clone(),
                ),
                mask,
                skip,
            )
            .build()
            .map_err(|e| lake_err(&file.path, e))?;
            files
                .runtime
                .block_on(stream.try_collect::<Vec<_>>())
                .map_err(|e| lake_err(&file.path, e))?
        };
        let batches = Arc::new(batches);
        self.batches
            .lock()
            .expect("batch cache")
            .insert(key, batches.clone());
        Ok(batches)
    }

    pub(crate) fn footer(
        &self,
        files: &SnapshotFiles,
        file: &ScanFile,
    ) -> Result<Footer, LakeError> {
        let path = file.path.as_str();
        if let Some(m) = self.footers.lock().expect("footer cache").get(path) {
            return Ok(m.clone());
        }
        let metadata = if file.local {
            let handle = File::open(path).map_err(|e| lake_err(path, e))?;
            ArrowReaderMetadata::load(&handle, ArrowReaderOptions::new())
        } else {
            let mut reader = files.remote(file)?;
            files.runtime.block_on(ArrowReaderMetadata::load_async(
                &mut reader,
                ArrowReaderOptions::new(),
            ))
        }
        .map_err(|e| lake_err(path, e))?;
        let schema = metadata.metadata().file_metadata().schema_descr();
        let leaf_paths = Arc::new(
            (0..schema.num_columns())
                .map(|i| fhir_path(schema.column(i).path().parts()))
                .collect(),
        );
        let m = Footer {
            metadata,
            leaf_paths,
        };
        let mut footers = self.footers.lock().expect("footer cache");
        if footers.len() >= MAX_FOOTERS {
            footers.clear();
        }
        footers.insert(path.to_string(), m.clone());
        Ok(m)
    }
}

/// The read of one column's leaves, the same for the blocking and the async reader: `mask`
/// projected, [`BATCH_ROWS`] per batch, deleted rows skipped by `skip`.
fn configure<T>(
    builder: ArrowReaderBuilder<T>,
    mask: ProjectionMask,
    skip: Option<RowSelection>,
) -> ArrowReaderBuilder<T> {
    let builder = builder.with_projection(mask).with_batch_size(BATCH_ROWS);
    match skip {
        Some(skip) => builder.with_row_selection(skip),
        None => builder,
    }
}

/// `code.coding.list.element.system` -> `code.coding.system`.
fn fhir_path(parts: &[String]) -> String {
    let mut out: Vec<&str> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        if parts[i] == "list" && parts.get(i + 1).is_some_and(|p| p == "element") {
            i += 2;
            continue;
        }
        out.push(&parts[i]);
        i += 1;
    }
    out.join(".")
}

/// A row selection skipping the sorted `deleted` positions of a file with `rows` rows.
fn selection(deleted: &[i64], rows: usize) -> RowSelection {
    super::exec::unit_selection(deleted, &[(0, rows as i64)], &[0])
        .unwrap_or_else(|| RowSelection::from(vec![RowSelector::select(rows)]))
}

/// Position deletes of one delete file (`uri`, read from `file`), by data file path.
fn read_position_deletes(
    uri: &str,
    file: impl ChunkReader + 'static,
) -> Result<HashMap<String, Vec<i64>>, LakeError> {
    let path = uri;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| lake_err(path, e))?
        .build()
        .map_err(|e| lake_err(path, e))?;
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| lake_err(path, e))?;
        let (Some(files), Some(pos)) = (
            batch.column_by_name("file_path"),
            batch.column_by_name("pos"),
        ) else {
            return Err(lake_err(
                path,
                "not a position-delete file (file_path, pos)",
            ));
        };
        let files = arrow::compute::cast(files, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| lake_err(path, e))?;
        let files = files.as_string::<i32>();
        let pos = pos.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if files.is_valid(i) && pos.is_valid(i) {
                out.entry(files.value(i).to_string())
                    .or_default()
                    .push(pos.value(i));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_wrappers_are_removed_from_paths() {
        let parts: Vec<String> = ["code", "coding", "list", "element", "system"]
            .map(String::from)
            .to_vec();
        assert_eq!(fhir_path(&parts), "code.coding.system");
    }

    #[test]
    fn selections_skip_deleted_rows() {
        let selectors: Vec<RowSelector> = selection(&[0, 3, 4, 9], 10).into();
        let mut kept = Vec::new();
        let mut at = 0;
        for r in selectors {
            if !r.skip {
                kept.extend(at..at + r.row_count);
            }
            at += r.row_count;
        }
        assert_eq!(at, 10);
        assert_eq!(kept, [1, 2, 5, 6, 7, 8]);
    }
}
