//! Folds the write-ahead log into the database file off the writer's path.
//!
//! Why: SQLite checkpoints automatically inside the commit that pushes the log past its
//! threshold (1,000 pages by default), so that one write waits for copying the log into the
//! database and an `fsync`. In a create benchmark that was a quarter of the writer thread's
//! time and the source of its slowest commits. Here a thread of its own runs passive
//! checkpoints about once a second while writes arrive; a passive checkpoint takes no lock a
//! writer or reader waits for. Pages that many commits rewrote (index interior pages, the
//! tail of a table) reach the database once per checkpoint instead of once per 1,000 pages.
//! The writer keeps a far higher automatic threshold as a backstop in case this thread falls
//! behind.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How often the thread looks for new writes.
const INTERVAL: Duration = Duration::from_secs(1);

/// Log size (pages) at which the writer checkpoints inside a commit anyway.
pub(super) const BACKSTOP_PAGES: u32 = 16_384;

/// Owns the checkpoint thread; it stops when this is dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` whenever `writes` (the count of committed
    /// resource transactions) has moved since the last checkpoint.
    pub(super) fn start(path: &Path, writes: Arc<AtomicU64>) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("fhirlake-checkpoint".into())
            .spawn(move || {
                let mut seen = writes.load(Ordering::Acquire);
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    let now = writes.load(Ordering::Acquire);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    if let Err(e) = checkpoint(&path) {
                        tracing::warn!("resource store: background checkpoint failed: {e}");
                    }
                }
            })?;
        Ok(Self { _stop: stop })
    }
}

/// One passive checkpoint; returns (log pages, pages copied into the database).
pub(super) fn checkpoint(path: &Path) -> rusqlite::Result<(i64, i64)> {
    // A connection per checkpoint: once a second is cheap, and it holds no file handle or
    // shared-memory mapping between checkpoints.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passive_checkpoint_copies_the_whole_log_when_nobody_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x BLOB); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
             INSERT INTO t SELECT randomblob(1000) FROM n;",
        )
        .unwrap();
        let (log, copied) = checkpoint(&path).unwrap();
        assert!(log > 100, "the inserts went to the log: {log} pages");
        assert_eq!(copied, log);
        // The writer's connection sees its rows, now in the database file itself.
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }
}
