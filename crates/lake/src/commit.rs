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
use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, MAIN_BRANCH, Manifest, ManifestContentType,
    ManifestFile, ManifestList, ManifestListWriter, ManifestWriter, ManifestWriterBuilder,
    Operation, PartitionSpec, SchemaRef, Snapshot, SnapshotRef, SnapshotReference,
    SnapshotRetention, Summary, TableMetadataBuilder,
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
        let next = NextSnapshot::new(table);
        let (mut manifests, removed) = next.carry_over_manifests(&changes.dropped_files).await?;
        let added = next.write_added_manifests(changes, &mut manifests).await?;
        let manifest_list = next.write_manifest_list(manifests).await?;
        let snapshot = next.snapshot(manifest_list, next.summary(changes, &added, &removed));
        let current_location = table
            .metadata_location()
            .expect("catalog-loaded tables have a metadata location")
            .to_string();
        let new_metadata = next.table_metadata(&current_location, snapshot)?;
        let new_location =
            write_metadata_file(next.file_io, &current_location, &new_metadata).await?;
        Ok((new_location, new_metadata))
    }
}

/// The snapshot a commit is building on top of the table's current one, and what every file
/// it writes shares. Manifest entries and the manifest list carry the new snapshot id and
/// sequence number (Iceberg v2 orders deletes against data by sequence number), and all file
/// names carry one fresh commit uuid, so a writer that loses the race and retries never
/// overwrites files the winner references.
struct NextSnapshot<'a> {
    metadata: &'a TableMetadata,
    file_io: &'a FileIO,
    schema: SchemaRef,
    spec: PartitionSpec,
    snapshot_id: i64,
    /// The snapshot this one follows on the main branch, `None` for the table's first.
    parent: Option<&'a SnapshotRef>,
    sequence_number: i64,
    /// The table location without a trailing slash; files go under its `metadata/`.
    base: String,
    commit_uuid: uuid::Uuid,
}

impl<'a> NextSnapshot<'a> {
    /// The snapshot following `table`'s current one, written with its current schema and
    /// default partition spec.
    fn new(table: &'a Table) -> Self {
        let metadata = table.metadata();
        Self {
            metadata,
            file_io: table.file_io(),
            schema: metadata.current_schema().clone(),
            spec: metadata.default_partition_spec().as_ref().clone(),
            snapshot_id: new_snapshot_id(metadata.snapshots().map(|s| s.snapshot_id())),
            parent: metadata.current_snapshot(),
            sequence_number: metadata.next_sequence_number(),
            base: metadata.location().trim_end_matches('/').to_string(),
            commit_uuid: uuid::Uuid::new_v4(),
        }
    }

    /// Where this commit's manifest tagged `tag` goes.
    fn manifest_path(&self, tag: &str) -> String {
        format!("{}/metadata/{}-{tag}.avro", self.base, self.commit_uuid)
    }

    /// A v2 writer for a manifest of `content` at `path`. Iceberg v2 keeps data files and
    /// delete files in separate manifests, told apart by the manifest's content type.
    fn manifest_writer(
        &self,
        path: &str,
        content: ManifestContentType,
    ) -> Result<ManifestWriter, CommitError> {
        let builder = ManifestWriterBuilder::new(
            self.file_io.new_output(path)?,
            Some(self.snapshot_id),
            self.schema.clone(),
            self.spec.clone(),
        );
        Ok(match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        })
    }

    /// The parent snapshot's manifests as the new snapshot lists them, and the totals of the
    /// files they stop tracking. Manifests are immutable and shared between snapshots, so one
    /// that holds no file in `dropped` is carried over as it is; only those that do are
    /// rewritten (see [`Self::rewrite_manifest`]).
    async fn carry_over_manifests(
        &self,
        dropped: &HashSet<String>,
    ) -> Result<(Vec<ManifestFile>, Totals), CommitError> {
        let mut manifests: Vec<ManifestFile> = Vec::new();
        let mut removed = Totals::default();
        let Some(parent) = self.parent else {
            return Ok((manifests, removed));
        };
        let bytes = self
            .file_io
            .new_input(parent.manifest_list())?
            .read()
            .await?;
        let list = ManifestList::parse_with_version(&bytes, self.metadata.format_version())?;
        for (i, manifest) in list.entries().iter().enumerate() {
            if dropped.is_empty() {
                manifests.push(manifest.clone());
                continue;
            }
            let loaded = manifest.load_manifest(self.file_io).await?;
            let touches = loaded
                .entries()
                .iter()
                .any(|e| e.is_alive() && dropped.contains(e.file_path()));
            if !touches {
                manifests.push(manifest.clone());
                continue;
            }
            let rewritten = self
                .rewrite_manifest(i, manifest, &loaded, dropped, &mut removed)
                .await?;
            manifests.push(rewritten);
        }
        Ok((manifests, removed))
    }

    /// Rewrites the `i`th manifest of the parent, `loaded` from `manifest`, without the files
    /// in `dropped`, adding them to `removed`. Iceberg removes a file by listing it once more
    /// as DELETED in a manifest of the removing snapshot; the other live files stay EXISTING
    /// with the snapshot id and sequence numbers they were added with, since readers apply
    /// position deletes by comparing sequence numbers. Entries already DELETED are left out.
    async fn rewrite_manifest(
        &self,
        i: usize,
        manifest: &ManifestFile,
        loaded: &Manifest,
        dropped: &HashSet<String>,
        removed: &mut Totals,
    ) -> Result<ManifestFile, CommitError> {
        let path = self.manifest_path(&format!("r{i}"));
        let mut writer = self.manifest_writer(&path, manifest.content)?;
        for entry in loaded.entries().iter().filter(|e| e.is_alive()) {
            let seq = entry.sequence_number().unwrap_or(manifest.sequence_number);
            let file_seq = entry.file_sequence_number;
            if dropped.contains(entry.file_path()) {
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
        Ok(writer.write_manifest_file().await?)
    }

    /// Writes one manifest for the added data files and one for the added position-delete
    /// files (when there are any), appends them to `manifests` and returns the added totals.
    /// The files are ADDED with the new sequence number, so this commit's deletes apply to
    /// data files up to and including its own.
    async fn write_added_manifests(
        &self,
        changes: &TableChanges,
        manifests: &mut Vec<ManifestFile>,
    ) -> Result<Totals, CommitError> {
        let mut added = Totals::default();
        for (files, content, tag) in [
            (&changes.added_data, ManifestContentType::Data, "d"),
            (&changes.added_deletes, ManifestContentType::Deletes, "x"),
        ] {
            if files.is_empty() {
                continue;
            }
            let mut writer = self.manifest_writer(&self.manifest_path(tag), content)?;
            for file in files {
                added.add(file);
                writer.add_file(file.clone(), self.sequence_number)?;
            }
            manifests.push(writer.write_manifest_file().await?);
        }
        Ok(added)
    }

    /// Writes the snapshot's manifest list, named `snap-<id>-<attempt>-<uuid>.avro` like
    /// Iceberg's own writers do, and returns its path. The v2 list records the parent id and
    /// the sequence number, which the manifests written by this commit inherit.
    async fn write_manifest_list(
        &self,
        manifests: Vec<ManifestFile>,
    ) -> Result<String, CommitError> {
        let list_path = format!(
            "{}/metadata/snap-{}-1-{}.avro",
            self.base, self.snapshot_id, self.commit_uuid
        );
        let mut list_writer = ManifestListWriter::v2(
            self.file_io.new_output(&list_path)?.writer().await?,
            self.snapshot_id,
            self.parent.map(|p| p.snapshot_id()),
            self.sequence_number,
        );
        list_writer.add_manifests(manifests.into_iter())?;
        list_writer.close().await?;
        Ok(list_path)
    }

    /// The snapshot summary: the operation the spec requires, the standard counters with
    /// totals carried from the parent's summary, and the commit's own properties on top.
    fn summary(&self, changes: &TableChanges, added: &Totals, removed: &Totals) -> Summary {
        let previous = self
            .parent
            .map(|p| p.summary().additional_properties.clone())
            .unwrap_or_default();
        let mut properties = summary_properties(&previous, added, removed);
        properties.extend(changes.properties.clone());
        Summary {
            operation: changes.operation(),
            additional_properties: properties,
        }
    }

    /// The new snapshot, stamped now (after its manifest list was written).
    fn snapshot(&self, manifest_list: String, summary: Summary) -> Snapshot {
        Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(self.parent.map(|p| p.snapshot_id()))
            .with_sequence_number(self.sequence_number)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(manifest_list)
            .with_summary(summary)
            .with_schema_id(self.metadata.current_schema_id())
            .build()
    }

    /// The table metadata with `snapshot` added and the main branch pointing at it, and the
    /// [`expired_snapshots`] removed. Building from the metadata at `current_location` records
    /// that file in the metadata log, as the spec asks of every new metadata file.
    fn table_metadata(
        &self,
        current_location: &str,
        snapshot: Snapshot,
    ) -> Result<TableMetadata, CommitError> {
        let new_metadata = TableMetadataBuilder::new_from_metadata(
            self.metadata.clone(),
            Some(current_location.to_string()),
        )
        .remove_snapshots(&expired_snapshots(self.metadata))
        .add_snapshot(snapshot)?
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(
                self.snapshot_id,
                SnapshotRetention::branch(None, None, None),
            ),
        )?
        .build()?
        .metadata;
        debug_assert_eq!(new_metadata.format_version(), FormatVersion::V2);
        Ok(new_metadata)
    }
}

/// Writes `metadata` as the file following the one at `current_location` and returns its
/// location. A new file name (next version, new uuid): the old metadata file is never
/// touched, so the catalog's pointer swap is the only moment the table changes.
async fn write_metadata_file(
    file_io: &FileIO,
    current_location: &str,
    metadata: &TableMetadata,
) -> Result<String, CommitError> {
    let new_location = MetadataLocation::from_str(current_location)?
        .with_next_version()
        .with_new_metadata(metadata);
    metadata.write_to(file_io, &new_location).await?;
    Ok(new_location.to_string())
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
