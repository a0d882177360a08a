//! One committer per table at a time, across the processes that share an installation.
//!
//! A sync computes its position deletes from the store's row index and a compaction rewrites
//! the live files it listed; both must see the table as they leave it, from the first read to
//! the store's record of the commit. A server's background sync and a CLI `import` or
//! `compact` on the same data directory would otherwise interleave, so each takes an
//! exclusive advisory lock (`flock`) on a file per table under `<data-dir>/locks/`. The
//! catalog is a local sqlite file, so every committer runs on this host. The commit module's
//! stale-snapshot check backs this up against writers that do not take the lock.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use iceberg::TableIdent;

use super::LakeError;

/// Held while committing to one table; released on drop (also when the process dies).
#[derive(Debug)]
pub struct TableLock {
    _file: File,
}

/// The lock file of `ident` under `dir`.
pub(super) fn lock_path(dir: &Path, ident: &TableIdent) -> PathBuf {
    // Namespaces are data store names and table names resource types: both plain
    // identifiers, so the file name needs no escaping.
    dir.join(format!(
        "{}.{}.lock",
        ident.namespace().join("."),
        ident.name()
    ))
}

/// Waits for and takes the lock at `path` (created with its directory if missing).
pub(super) async fn acquire(path: PathBuf) -> Result<TableLock, LakeError> {
    let locked = tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LakeError::Lock(dir.to_path_buf(), e))?;
        }
        let fail = |e| LakeError::Lock(path.clone(), e);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(fail)?;
        file.lock().map_err(fail)?;
        Ok(TableLock { _file: file })
    })
    .await;
    locked.map_err(|e| LakeError::Background(format!("table lock task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::NamespaceIdent;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ident = TableIdent::new(NamespaceIdent::new("fhir".into()), "patient".into());
        let path = lock_path(&dir.path().join("locks"), &ident);
        assert!(path.ends_with("locks/fhir.patient.lock"));
        let first = acquire(path.clone()).await.unwrap();
        let second = tokio::spawn(acquire(path.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the lock is exclusive");
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("released on drop")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_unusable_lock_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::write(&locks, "not a directory").unwrap();
        let ident = TableIdent::new(NamespaceIdent::new("fhir".into()), "patient".into());
        let err = acquire(lock_path(&locks, &ident)).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("table lock {}: ", locks.display())),
            "{err}"
        );
    }
}
