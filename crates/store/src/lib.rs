//! The resource store: the transactional source of truth for every resource version.
//!
//! The lake is derived from the store, never the other way round. Each write appends a row to
//! `resource_versions` whose `seq` is the global change sequence; the lake committer reads the
//! changes after its watermark and turns them into Iceberg commits. The store also remembers
//! where each resource's current row lives in the lake (`lake_rows`), so a replacement or a
//! delete can be expressed as an Iceberg position delete without scanning the table.
//!
//! SQLite (through sqlx) is the embedded default; the SQL stays portable so a Postgres pool
//! can take its place.

mod checkpointer;
mod codec;
mod datastores;
mod jobs;
mod lake_rows;
mod point_reads;
pub mod reads;
mod resources;
mod snapshot;
mod version_cache;
mod writer;
pub mod writes;

pub use datastores::{Datastore, DatastoreStatus, validate_name as validate_datastore_name};
pub use jobs::{Job, JobKind, JobStatus};
pub use lake_rows::{AddedFile, LakeCommitRecord, LakeFile, LakeRow};
pub use resources::{Change, NewResource, WrittenVersion};
pub use snapshot::SnapshotResource;
pub use writes::{
    AppliedWrite, ConditionalWrite, ConditionalWriteError, PreviousVersion, VersionConflict,
};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};

use writer::Writer;

/// Errors of the resource store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or a statement failed.
    #[error("resource store: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored JSON document does not parse: the store is corrupt.
    #[error("resource store holds invalid JSON for {resource_type}/{id}: {source}")]
    CorruptJson {
        resource_type: String,
        id: String,
        source: serde_json::Error,
    },
    /// A stored blob does not decompress: the store is corrupt.
    #[error("resource store holds a corrupt blob for {resource_type}/{id}: {message}")]
    CorruptBlob {
        resource_type: String,
        id: String,
        message: String,
    },
    /// A data store name that is not allowed.
    #[error(
        "invalid data store name '{0}': use 1-63 characters a-z, 0-9 and _, starting with a letter"
    )]
    InvalidDatastoreName(String),
    /// No data store with that name or id.
    #[error("no data store named or with id '{0}'")]
    NoSuchDatastore(String),
    /// Several live data stores were created with this DatastoreName.
    #[error(
        "several data stores are named '{name}' (ids {}); name one by its id or SQL name",
        ids.join(", ")
    )]
    AmbiguousDatastore { name: String, ids: Vec<String> },
    /// A data store name already in use.
    #[error("a data store named '{0}' already exists")]
    DuplicateDatastore(String),
    /// No job with that id.
    #[error("no job with id '{0}'")]
    NoSuchJob(String),
    /// A point read failed.
    #[error("resource store: {0}")]
    Read(#[source] rusqlite::Error),
    /// The writer task is gone (the runtime that opened the store is shutting down).
    #[error("resource store: the writer has stopped; the write was not applied")]
    WriterStopped,
}

/// Handle to the embedded resource store.
///
/// Reads go through a pool of read-only connections; every write goes to the one writing
/// connection owned by the writer task (`writer.rs`), so no caller can leave a transaction
/// open by being cancelled.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// Reads of one resource, inline on the caller's thread (the REST hot path).
    point: std::sync::Arc<point_reads::PointReader>,
    writer: Writer,
    /// Bumped after every committed resource write, so readers that need their own writes
    /// in the lake (search) can tell cheaply whether a lake sync is due.
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Checkpoints the write-ahead log in the background while any handle lives.
    _checkpointer: std::sync::Arc<checkpointer::Checkpointer>,
    /// Decompressed versions recently read (versions are immutable, so never stale).
    versions: version_cache::VersionCache,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS datastores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0
);
-- The control plane's view of a data store (HealthLake's DatastoreName, preload, SSE and
-- identity-provider settings, tags, client token, deletion time), as one JSON document.
CREATE TABLE IF NOT EXISTS datastore_properties (
    id TEXT PRIMARY KEY,
    properties TEXT NOT NULL
);
-- Import and export jobs; `properties` holds the request and progress as JSON.
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    datastore_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_time TEXT NOT NULL,
    end_time TEXT,
    client_token TEXT,
    properties TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_datastore ON jobs (datastore_id, kind, submit_time);
CREATE TABLE IF NOT EXISTS resource_versions (
    seq INTEGER PRIMARY KEY,
    datastore_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    -- zstd-compressed JSON text; NULL for a deletion
    json_zstd BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS resource_versions_by_id
    ON resource_versions (datastore_id, resource_type, id, version);
CREATE INDEX IF NOT EXISTS resource_versions_by_type_seq
    ON resource_versions (datastore_id, resource_type, seq);
CREATE TABLE IF NOT EXISTS resources_current (
    datastore_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (datastore_id, resource_type, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lake_files (
    file_id INTEGER PRIMARY KEY,
    datastore_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    record_count INTEGER NOT NULL,
    live_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lake_files_by_type ON lake_files (datastore_id, resource_type);
CREATE TABLE IF NOT EXISTS lake_rows (
    datastore_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    file_id INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (datastore_id, resource_type, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lake_state (
    datastore_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    applied_seq INTEGER NOT NULL,
    snapshot_id INTEGER NOT NULL,
    PRIMARY KEY (datastore_id, resource_type)
) WITHOUT ROWID;
"#;

impl Store {
    /// Opens (creating if needed) the store at `path` and starts its writer task on the
    /// current runtime.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a committed transaction survives a process crash (kill -9);
            // only a power loss may drop the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            // A background thread checkpoints (see `checkpointer`); a commit does only when
            // the log outgrows this backstop.
            .pragma(
                "wal_autocheckpoint",
                checkpointer::BACKSTOP_PAGES.to_string(),
            )
            // Enough for the hot index pages of the 585-patient set; every commit scans the
            // writer's page cache (pcache1TruncateUnsafe: 16% of the writer thread at 64 MB).
            .pragma("cache_size", "-16384");
        let mut conn = options.connect().await?;
        sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
        let writes = std::sync::Arc::<std::sync::atomic::AtomicU64>::default();
        let writer = Writer::start(conn, options.clone(), writes.clone());
        let checkpointer = checkpointer::Checkpointer::start(path, writes.clone())
            .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // Readers never write; a connection found inside a transaction when it is
            // handed out (a read cancelled at a bad moment) is closed, never reused.
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(!writer::in_transaction(conn).await?) })
            })
            // Every commit resets a reader's page cache, at a cost that grows with its size
            // (pcache1TruncateUnsafe was 4.6% of a create benchmark at 64 MB per reader).
            .connect_with(options.read_only(true).pragma("cache_size", "-8192"))
            .await?;
        Ok(Self {
            pool,
            point: std::sync::Arc::new(point_reads::PointReader::new(path)),
            writer,
            writes,
            _checkpointer: std::sync::Arc::new(checkpointer),
            versions: Default::default(),
        })
    }

    /// How many resource write transactions this handle (and its clones) committed.
    pub fn write_generation(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Folds the write-ahead log into the database file and truncates it (after a bulk
    /// import, so the store's size on disk is its real size).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.exclusive(|conn| {
            Box::pin(async move {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs `work` on the writing connection, to completion even if the caller stops
    /// waiting. Every write other than resource writes goes through here; a transaction
    /// inside `work` starts with [`begin_immediate`].
    pub(crate) async fn exclusive<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.writer.exclusive(work).await
    }

    /// Commits one all-or-nothing group of resource writes through the writer task.
    pub(crate) async fn write(&self, request: writes::WriteRequest) -> writes::WriteOutcome {
        self.writer.write(request).await
    }
}

/// A transaction that holds SQLite's write lock from its first statement.
///
/// A deferred `BEGIN` takes a read snapshot first, and if another process commits before the
/// first write, SQLite refuses the upgrade with SQLITE_BUSY at once (the busy timeout does not
/// apply). IMMEDIATE makes writers of other processes (a CLI import next to a server) queue on
/// the busy timeout instead.
pub(crate) async fn begin_immediate(
    conn: &mut SqliteConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
    use sqlx::Connection;
    conn.begin_with("BEGIN IMMEDIATE").await
}
