//! A small Iceberg commit module: row-level deletes and file rewrites that iceberg-rust 0.10
//! does not offer yet (it has only fast-append).
//!
//! A commit builds the next snapshot from iceberg's public spec types: it writes a manifest
//! for the added data files, one for the added position-delete files, rewrites the manifests
//! that hold files being dropped (compaction), carries every other manifest over unchanged,
//! writes the manifest list and the new metadata file, and finally swaps the catalog pointer
//! with the JDBC catalog protocol's compare-and-set
//! (`UPDATE iceberg_tables SET metadata_location = new WHERE metadata_location = old`).
//! A lost race reloads the table and retries, unless the changes depend on the snapshot they
//! were computed against (position deletes, rewrites; see [`Base`]): those fail as stale.
//! Kept in one place so it can be replaced by upstream row-delta / rewrite actions when they
//! exist.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::Runtime;
use iceberg::spec::TableMetadata;
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile,
    ManifestList, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotReference, SnapshotRetention, Summary, TableMetadataBuilder,
};
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation, TableIdent};
use sqlx::SqlitePool;

/// Snapshot summary key holding the highest change sequence a snapshot applied.
pub const WATERMARK_PROPERTY: &str = "fhirlake.watermark";

/// Errors committing to a table.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("catalog database: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("table {0} changed concurrently {1} times in a row; giving up")]
    TooManyConflicts(String, usize),
    #[error(
        "table {table} moved from snapshot {} to {} while this change was prepared \
         (another writer?); nothing was committed, the next sync starts over",
        snapshot_name(.expected), snapshot_name(.found)
    )]
    Stale {
        table: String,
        expected: Option<i64>,
        found: Option<i64>,
    },
}

fn snapshot_name(id: &Option<i64>) -> String {
    id.map_or_else(|| "(none)".to_string(), |id| id.to_string())
}

/// What a commit's changes were computed against.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// Nothing: the changes commute with any concurrent commit (a blind append), so a
    /// conflict is resolved by rebuilding them on the newer snapshot.
    #[default]
    Any,
    /// This current snapshot (`None`: the table had none). Position deletes name rows of
    /// that snapshot's files and a rewrite replaces its live files, so on top of anything
    /// else they would delete the wrong rows or resurrect deleted ones: the commit fails with
    /// [`CommitError::Stale`] instead.
    Snapshot(Option<i64>),
}

/// What one commit changes in a table.
#[derive(Debug, Default, Clone)]
pub struct TableChanges {
    /// New data files.
    pub added_data: Vec<DataFile>,
    /// New position-delete files.
    pub added_deletes: Vec<DataFile>,
    /// Paths of data and delete files to drop from the table (their rows are rewritten
    /// elsewhere or all deleted).
    pub dropped_files: HashSet<String>,
    /// Extra snapshot summary properties (the watermark, ...).
    pub properties: HashMap<String, String>,
    /// What the changes were computed against.
    pub base: Base,
}

impl TableChanges {
    fn operation(&self) -> Operation {
        match (
            self.added_data.is_empty(),
            self.added_deletes.is_empty(),
            self.dropped_files.is_empty(),
        ) {
            (false, true, true) => Operation::Append,
            (true, false, true) => Operation::Delete,
            (_, _, false) if self.added_deletes.is_empty() => Operation::Replace,
            _ => Operation::Overwrite,
        }
    }
}

/// Commits table changes through a SQL (JDBC-protocol) catalog.
#[derive(Clone)]
pub struct Committer {
    catalog: Arc<dyn Catalog>,
    /// The catalog's own database, for the compare-and-set pointer swap.
    pool: SqlitePool,
    catalog_name: String,
    /// Loaded tables by identifier. An entry is used only while the catalog still points at
    /// its metadata file, so it saves re-reading and re-parsing the metadata JSON on every
    /// commit, scan and search without ever serving a stale snapshot.
    tables: Arc<std::sync::Mutex<HashMap<TableIdent, Table>>>,
}

const MAX_ATTEMPTS: usize = 30;

/// Snapshots a table keeps unless its `history.expire.min-snapshots-to-keep` property says
/// otherwise. The lake sync commits every half second under load, so Iceberg's default of
/// keeping five days of snapshots would grow the metadata file (read and rewritten by every
/// commit) without bound.
pub const DEFAULT_SNAPSHOTS_TO_KEEP: usize = 100;

impl Committer {
    pub fn new(catalog: Arc<dyn Catalog>, pool: SqlitePool, catalog_name: String) -> Self {
        Self {
            catalog,
            pool,
            catalog_name,
            tables: Default::default(),
        }
    }

    /// The table as the catalog currently points at it, `None` when it does not exist;
    /// parsed from its metadata file only when that changed since the last call.
    pub async fn load(&self, ident: &TableIdent) -> Result<Option<Table>, CommitError> {
        let Some(location) = self.metadata_location(ident).await? else {
            return Ok(None);
        };
        let cached = self
            .tables
            .lock()
            .expect("table cache lock")
            .get(ident)
            .filter(|t| t.metadata_location() == Some(location.as_str()))
            .cloned();
        if let Some(table) = cached {
            return Ok(Some(table));
        }
        let table = self.catalog.load_table(ident).await?;
        self.remember(table.clone());
        Ok(Some(table))
    }

    /// Drops `ident` from the cache (its table was dropped).
    pub fn forget(&self, ident: &TableIdent) {
        self.tables.lock().expect("table cache lock").remove(ident);
    }

    fn remember(&self, table: Table) {
        self.tables
            .lock()
            .expect("table cache lock")
            .insert(table.identifier().clone(), table);
    }

    /// Where the catalog points for `ident`, `None` when the table does not exist.
    pub async fn metadata_location(
        &self,
        ident: &TableIdent,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
             AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)",
        )
        .bind(&self.catalog_name)
        .bind(ident.namespace().join("."))
        .bind(ident.name())
        .fetch_optional(&self.pool)
        .await
    }

    /// Applies `changes` as one new snapshot. A concurrent commit is retried on top of the
    /// newer snapshot when the changes allow it ([`Base::Any`]) and refused as
    /// [`CommitError::Stale`] when they were computed against the older one.
    pub async fn commit(
        &self,
        ident: &TableIdent,
        changes: &TableChanges,
    ) -> Result<Table, CommitError> {
        for attempt in 0..MAX_ATTEMPTS {
            let table = match self.load(ident).await? {
                Some(table) => table,
                // Not in the catalog: let the catalog say so in its own words.
                None => self.catalog.load_table(ident).await?,
            };
            let current = table.metadata().current_snapshot_id();
            if let Base::Snapshot(expected) = changes.base
                && current != expected
            {
                return Err(CommitError::Stale {
                    table: ident.to_string(),
                    expected,
                    found: current,
                });
            }
            let (new_location, new_metadata) = self.write_next_metadata(&table, changes).await?;
            let old_location = table
                .metadata_location()
                .expect("catalog-loaded tables have a metadata location")
                .to_string();
            let swapped = sqlx::query(
                "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                 WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
                 AND metadata_location = ?",
            )
            .bind(&new_location)
            .bind(&old_location)
            .bind(&self.catalog_name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .bind(&old_location)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if swapped == 1 {
                let table = Table::builder()
                    .file_io(table.file_io().clone())
                    .identifier(ident.clone())
                    .metadata_location(new_location)
                    .metadata(new_metadata)
                    .runtime(Runtime::current())
                    .build()?;
                self.remember(table.clone());
                return Ok(table);
            }
            // Someone else committed first: our files stay unreferenced; build on theirs after
            // a short, growing, jittered pause so competing writers spread out.
            tracing::debug!(table = %ident, attempt, "commit conflict, retrying");
            let jitter = uuid::Uuid::new_v4().as_u64_pair().0 % 5;
            tokio::time::sleep(std::time::Duration::from_millis(
                (attempt as u64 + 1) * 2 + jitter,
            ))
            .await;
        }
        Err(CommitError::TooManyConflicts(
            ident.to_string(),
            MAX_ATTEMPTS,
        ))
    }

    /// Writes manifests, manifest list and metadata for the next snapshot; returns the new
    /// metadata and its location (not yet visible to anyone).
    async fn write_next_metadata(
        &self,
        table: &Table,
        changes: &TableChanges,
    ) -> Result<(String, TableMetadata), CommitError> {
        let metadata = table.metadata();
        let file_io = table.file_io();
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().as_ref().clone();
        let snapshot_id = new_snapshot_id(metadata.snapshots().map(|s| s.snapshot_id()));
        let parent = metadata.current_snapshot();
        let sequence_number = metadata.next_sequence_number();
        let base = metadata.location().trim_end_matches('/').to_string();
        let commit_uuid = uuid::Uuid::new_v4();

        let mut manifests: Vec<ManifestFile> = Vec::new();
        let mut removed = Totals::default();
        if let Some(parent) = parent {
            let bytes = file_io.new_input(parent.manifest_list())?.read().await?;
            let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
            for (i, manifest) in list.entries().iter().enumerate() {
                if changes.dropped_files.is_empty() {
                    manifests.push(manifest.clone());
                    continue;
                }
                let loaded = manifest.load_manifest(file_io).await?;
                let touches = loaded
                    .entries()
                    .iter()
                    .any(|e| e.is_alive() && changes.dropped_files.contains(e.file_path()));
                if !touches {
                    manifests.push(manifest.clone());
                    continue;
                }
                // Rewrite: dropped files become DELETED entries, the rest EXISTING.
                let path = format!("{base}/metadata/{commit_uuid}-r{i}.avro");
                let builder = ManifestWriterBuilder::new(
                    file_io.new_output(&path)?,
                    Some(snapshot_id),
                    schema.clone(),
                    spec.clone(),
                );
                let mut writer = match manifest.content {
                    ManifestContentType::Data => builder.build_v2_data(),
                    ManifestContentType::Deletes => builder.build_v2_deletes(),
                };
                for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
                    let seq = entry.sequence_number().unwrap_or(manifest.sequence_number);
                    let file_seq = entry.file_sequence_number;
                    if changes.dropped_files.contains(entry.file_path()) {
                        removed.add(entry.data_file());
                        writer.add_delete_file(entry.data_file().clone(), seq, file_seq)?;
                    } else {
                        writer.add_existing_file(
                            entry.data_file().clone(),
                            entry.snapshot_id().unwrap_or(manifest.added_snapshot_id),
                            seq,
                            file_seq,
                        )?;
                    }
                }
                manifests.push(writer.write_manifest_file().await?);
            }
        }

        let mut added = Totals::default();
        for (files, content) in [
            (&changes.added_data, ManifestContentType::Data),
            (&changes.added_deletes, ManifestContentType::Deletes),
        ] {
            if files.is_empty() {
                continue;
            }
            let suffix = if content == ManifestContentType::Data {
                "d"
            } else {
                "x"
            };
            let path = format!("{base}/metadata/{commit_uuid}-{suffix}.avro");
            let builder = ManifestWriterBuilder::new(
                file_io.new_output(&path)?,
                Some(snapshot_id),
                schema.clone(),
                spec.clone(),
            );
            let mut writer = match content {
                ManifestContentType::Data => builder.build_v2_data(),
                ManifestContentType::Deletes => builder.build_v2_deletes(),
            };
            for file in files {
                added.add(file);
                writer.add_file(file.clone(), sequence_number)?;
            }
            manifests.push(writer.write_manifest_file().await?);
        }

        let list_path = format!("{base}/metadata/snap-{snapshot_id}-1-{commit_uuid}.avro");
        let mut list_writer = ManifestListWriter::v2(
            file_io.new_output(&list_path)?.writer().await?,
            snapshot_id,
            parent.map(|p| p.snapshot_id()),
            sequence_number,
        );
        list_writer.add_manifests(manifests.into_iter())?;
        list_writer.close().await?;

        let previous = parent
            .map(|p| p.summary().additional_properties.clone())
            .unwrap_or_default();
        let mut properties = summary_properties(&previous, &added, &removed);
        properties.extend(changes.properties.clone());
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
            .with_sequence_number(sequence_number)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path)
            .with_summary(Summary {
                operation: changes.operation(),
                additional_properties: properties,
            })
            .with_schema_id(metadata.current_schema_id())
            .build();

        let current_location = table
            .metadata_location()
            .expect("catalog-loaded tables have a metadata location")
            .to_string();
        let new_metadata = TableMetadataBuilder::new_from_metadata(
            metadata.clone(),
            Some(current_location.clone()),
        )
        .remove_snapshots(&expired_snapshots(metadata))
        .add_snapshot(snapshot)?
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        )?
        .build()?
        .metadata;
        debug_assert_eq!(new_metadata.format_version(), FormatVersion::V2);
        // A new file name (next version, new uuid): the old metadata file is never touched,
        // so the pointer swap below is the only moment the table changes.
        let new_location = MetadataLocation::from_str(&current_location)?
            .with_next_version()
            .with_new_metadata(&new_metadata);
        new_metadata.write_to(file_io, &new_location).await?;
        Ok((new_location.to_string(), new_metadata))
    }
}

/// The snapshots the next commit expires so that `keep` remain after it: the current one, the
/// one the commit adds and the newest others, where `keep` is the table's
/// `history.expire.min-snapshots-to-keep` or [`DEFAULT_SNAPSHOTS_TO_KEEP`]. Their files stay on
/// storage; only the metadata forgets them.
fn expired_snapshots(metadata: &TableMetadata) -> Vec<i64> {
    let keep = metadata
        .properties()
        .get("history.expire.min-snapshots-to-keep")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_SNAPSHOTS_TO_KEEP)
        .max(1);
    let current = metadata.current_snapshot_id();
    let mut snapshots: Vec<(i64, i64)> = metadata
        .snapshots()
        .filter(|s| Some(s.snapshot_id()) != current)
        .map(|s| (s.timestamp_ms(), s.snapshot_id()))
        .collect();
    // Newest first; the current snapshot counts as one of the kept ones.
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    snapshots
        .into_iter()
        .skip(keep.saturating_sub(2))
        .map(|(_, id)| id)
        .collect()
}

/// A positive snapshot id not used by the table yet.
fn new_snapshot_id(existing: impl Iterator<Item = i64>) -> i64 {
    let existing: HashSet<i64> = existing.collect();
    loop {
        let id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
        if id != 0 && !existing.contains(&id) {
            return id;
        }
    }
}

#[derive(Default)]
struct Totals {
    data_files: u64,
    records: u64,
    delete_files: u64,
    position_deletes: u64,
    size: u64,
}

impl Totals {
    fn add(&mut self, file: &DataFile) {
        self.size += file.file_size_in_bytes();
        match file.content_type() {
            DataContentType::Data => {
                self.data_files += 1;
                self.records += file.record_count();
            }
            _ => {
                self.delete_files += 1;
                self.position_deletes += file.record_count();
            }
        }
    }
}

/// The standard Iceberg summary counters for a snapshot, totals carried from the parent.
fn summary_properties(
    previous: &HashMap<String, String>,
    added: &Totals,
    removed: &Totals,
) -> HashMap<String, String> {
    let prev = |k: &str| {
        previous
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut p = HashMap::new();
    let mut set = |k: &str, v: u64| {
        p.insert(k.to_string(), v.to_string());
    };
    set("added-data-files", added.data_files);
    set("added-records", added.records);
    set("added-delete-files", added.delete_files);
    set("added-position-deletes", added.position_deletes);
    set("added-files-size", added.size);
    set("deleted-data-files", removed.data_files);
    set("deleted-records", removed.records);
    set("removed-delete-files", removed.delete_files);
    set("removed-position-deletes", removed.position_deletes);
    set("removed-files-size", removed.size);
    let total = |k: &str, add: u64, sub: u64| (prev(k) + add).saturating_sub(sub);
    set(
        "total-data-files",
        total("total-data-files", added.data_files, removed.data_files),
    );
    set(
        "total-records",
        total("total-records", added.records, removed.records),
    );
    set(
        "total-delete-files",
        total(
            "total-delete-files",
            added.delete_files,
            removed.delete_files,
        ),
    );
    set(
        "total-position-deletes",
        total(
            "total-position-deletes",
            added.position_deletes,
            removed.position_deletes,
        ),
    );
    set("total-equality-deletes", 0);
    set(
        "total-files-size",
        total("total-files-size", added.size, removed.size),
    );
    p
}
