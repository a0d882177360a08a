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
    runner: Runner,
    /// Ends the loop when notified (by `shutdown`).
    stop: Arc<tokio::sync::Notify>,
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

/// Runs a data store's sync loop on a thread of its own, at a lower CPU priority, when the
/// runtime has several workers (otherwise as a task: a current-thread runtime cannot drive
/// timers and I/O for a future polled on another thread).
///
/// A sync flattens JSON and encodes Parquet for tens to hundreds of milliseconds at a time
/// (a compaction for seconds) without an await that yields. On an async worker that stalls
/// every request queued behind it: in a create benchmark the p99 latency was the length of a
/// sync. On its own thread the operating system shares the cores instead, and the lower
/// priority lets request handling go first when the cores are busy; the sync catches up in
/// the gaps (and a flush that a reader waits for still runs, only later under full load).
fn spawn_loop<F>(name: String, work: F) -> Runner
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = Handle::current();
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Runner::Task(tokio::spawn(work));
    }
    let thread = std::thread::Builder::new()
        .name(format!("lake-sync-{name}"))
        .spawn(move || {
            lower_priority();
            handle.block_on(work)
        });
    match thread {
        Ok(thread) => Runner::Thread(thread),
        Err(e) => panic!("cannot start the lake sync thread: {e}"),
    }
}

/// Lowers the calling thread's scheduling priority (Linux: its nice value, +10), best effort.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; failure only leaves the
    // priority as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Where a sync loop runs.
enum Runner {
    Task(JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
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
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let name = datastore.name.clone();
        let work = async move {
            loop {
                let reply = tokio::select! {
                    r = rx.recv() => match r {
                        Some(reply) => Some(reply),
                        None => return,
                    },
                    _ = stopped.notified() => return,
                    _ = tokio::time::sleep(interval) => None,
                };
                let generation = store.write_generation();
                let result = sync_datastore(&store, &lake, &datastore, limits).await;
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
        };
        let runner = spawn_loop(name, work);
        Self {
            handle,
            runner,
            stop,
        }
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
        // so the loop may be stopped outright (between two syncs: it only looks when idle).
        self.stop.notify_one();
        match self.runner {
            Runner::Task(task) => {
                let _ = task.await;
            }
            Runner::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
        result
    }
}
