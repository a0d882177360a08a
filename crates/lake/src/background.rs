//! A background lake sync per data store: commits store changes every interval and on demand.
//!
//! One task owns all syncing of its data store, so commits of a table never race each other;
//! writers only add to the store. `flush` makes everything written so far queryable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::sync::{BatchLimits, TableSync, sync_datastore};
use super::{Lake, LakeError};
use fhirlake_store::{Datastore, Store};

type FlushReply = oneshot::Sender<Result<Vec<TableSync>, String>>;

/// Handle to a running background sync.
pub struct BackgroundSync {
    handle: SyncHandle,
    task: JoinHandle<()>,
}

/// A cloneable way to ask a running background sync for a flush.
#[derive(Clone)]
pub struct SyncHandle {
    requests: mpsc::Sender<FlushReply>,
    store: Store,
    /// The store's write generation when the last successful sync started.
    synced: Arc<AtomicU64>,
}

impl SyncHandle {
    /// Syncs everything written so far and returns what that last sync did.
    pub async fn flush(&self) -> Result<Vec<TableSync>, LakeError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || LakeError::Background("the background lake sync has stopped".into());
        self.requests.send(tx).await.map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(LakeError::Background)
    }

    /// Flushes only when the store committed writes the last sync did not cover, so readers
    /// that must see their own writes pay for a commit only after a write.
    pub async fn catch_up(&self) -> Result<(), LakeError> {
        if self.store.write_generation() > self.synced.load(Ordering::Acquire) {
            self.flush().await?;
        }
        Ok(())
    }
}

/// Runs `work` on a thread of its own when the runtime has several workers.
///
/// A sync flattens JSON and encodes Parquet for tens to hundreds of milliseconds at a time
/// (a compaction for seconds) without an await that yields. On an async worker that stalls
/// every request queued behind it on that worker: in a create benchmark the p99 latency was
/// the length of a sync. `block_in_place` hands the worker's queue to another thread first, so
/// the operating system shares the cores between request handling and the sync instead.
async fn off_the_workers<F: std::future::Future>(work: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = Handle::current();
    match handle.runtime_flavor() {
        RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| handle.block_on(work)),
        _ => work.await,
    }
}

impl BackgroundSync {
    /// Starts syncing `datastore` every `interval`.
    pub fn spawn(
        store: Store,
        lake: Lake,
        datastore: Datastore,
        interval: Duration,
        limits: BatchLimits,
    ) -> Self {
        let (requests, mut rx) = mpsc::channel::<FlushReply>(16);
        let synced = Arc::new(AtomicU64::new(0));
        let handle = SyncHandle {
            requests,
            store: store.clone(),
            synced: synced.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let reply = tokio::select! {
                    r = rx.recv() => match r {
                        Some(reply) => Some(reply),
                        None => return,
                    },
                    _ = tokio::time::sleep(interval) => None,
                };
                let generation = store.write_generation();
                let result =
                    off_the_workers(sync_datastore(&store, &lake, &datastore, limits)).await;
                if result.is_ok() {
                    synced.fetch_max(generation, Ordering::AcqRel);
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result.map_err(|e| e.to_string()));
                    }
                    None => {
                        if let Err(e) = result {
                            tracing::error!(datastore = %datastore.name, "background lake sync failed: {e}");
                        }
                    }
                }
            }
        });
        Self { handle, task }
    }

    /// A handle for flushing from elsewhere.
    pub fn handle(&self) -> SyncHandle {
        self.handle.clone()
    }

    /// Syncs everything written so far and returns what that last sync did.
    pub async fn flush(&self) -> Result<Vec<TableSync>, LakeError> {
        self.handle.flush().await
    }

    /// Flushes, then stops the task once every other handle is dropped too.
    pub async fn shutdown(self) -> Result<Vec<TableSync>, LakeError> {
        let result = self.flush().await;
        drop(self.handle);
        // Clones held elsewhere keep the channel open; the flush above covered every write,
        // so the task may be stopped outright.
        self.task.abort();
        let _ = self.task.await;
        result
    }
}
