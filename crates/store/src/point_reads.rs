//! Point reads (one resource's current version, or one given version) on the caller's thread.
//!
//! Why not the sqlx pool: in the read-by-id benchmark (585 patients, 2 cores) 39% of the
//! server's time was the kernel switching threads. sqlx runs each SQLite connection on a
//! worker thread of its own, so every query is a round trip through a channel, and every
//! release back to the pool is a second one (a ping). A point read is a B-tree lookup on
//! cached pages, a few microseconds, so it runs inline over a small free list of read-only
//! connections with cached statements. It cannot be cancelled halfway (nothing awaits inside)
//! and opens no transaction beyond the statement itself.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::StoreError;
use super::codec::decompress;
use super::reads::{StoredVersion, VERSION_COLUMNS as COLUMNS};

/// Idle connections kept (more are opened under load and closed when returned).
const KEEP: usize = 8;

/// Read-only connections for point reads.
#[derive(Debug)]
pub(super) struct PointReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl PointReader {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The current version of a resource (possibly a deletion), `None` if it never existed.
    pub(super) fn current(
        &self,
        datastore_id: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM resources_current c JOIN resource_versions v ON v.seq = c.seq \
             WHERE c.datastore_id = ?1 AND c.resource_type = ?2 AND c.id = ?3"
        );
        self.one(&sql, (datastore_id, resource_type, id))
    }

    /// One version of a resource, `None` if that version does not exist.
    pub(super) fn version(
        &self,
        datastore_id: &str,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM resource_versions v \
             WHERE v.datastore_id = ?1 AND v.resource_type = ?2 AND v.id = ?3 AND v.version = ?4"
        );
        self.one(&sql, (datastore_id, resource_type, id, version))
    }

    fn one(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let conn = self.take()?;
        let row = conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.query_row(params, raw_row).optional());
        self.give_back(conn);
        row.map_err(StoreError::Read)?
            .map(RawVersion::decode)
            .transpose()
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open().map_err(StoreError::Read),
        }
    }

    fn give_back(&self, conn: Connection) {
        // A statement that failed still ends its implicit transaction; anything else is not
        // trusted again.
        if !conn.is_autocommit() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP {
            idle.push(conn);
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Readers of a WAL database are not blocked by the writer; a busy answer is rare
        // (WAL recovery after a crash) and short. Inline on the caller's thread, so bounded.
        conn.busy_timeout(Duration::from_secs(1))?;
        // Each write invalidates a reader's page cache; a small cache is cheap to reset.
        conn.pragma_update(None, "cache_size", -8192)?;
        Ok(conn)
    }
}

/// A row as read, before decompression (which needs no connection).
struct RawVersion {
    seq: i64,
    resource_type: String,
    id: String,
    version: i64,
    last_updated: String,
    deleted: bool,
    blob: Option<Vec<u8>>,
}

fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawVersion> {
    Ok(RawVersion {
        seq: row.get(0)?,
        resource_type: row.get(1)?,
        id: row.get(2)?,
        version: row.get(3)?,
        last_updated: row.get(4)?,
        deleted: row.get::<_, i64>(5)? != 0,
        blob: row.get(6)?,
    })
}

impl RawVersion {
    fn decode(self) -> Result<StoredVersion, StoreError> {
        let json = match &self.blob {
            Some(blob) => Some(decompress(blob).map_err(|message| StoreError::CorruptBlob {
                resource_type: self.resource_type.clone(),
                id: self.id.clone(),
                message,
            })?),
            None => None,
        };
        Ok(StoredVersion {
            resource_type: self.resource_type,
            id: self.id,
            version: self.version,
            last_updated: self.last_updated,
            deleted: self.deleted,
            json,
            seq: self.seq,
        })
    }
}
