//! A background lake sync per data store: commits store changes every interval and on demand.
//!
//! One task owns all syncing of its data store, so commits of a table never race each other;
//! writers only add to the store. `flush` makes everything written so far queryable.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::sync::{BatchLimits, TableSync, sync_datastore};
use super::{Lake, LakeError};
use crate::store::{Datastore, Store};

type FlushReply = oneshot::Sender<Result<Vec<TableSync>, String>>;

/// Handle to a running background sync.
pub struct BackgroundSync {
    requests: mpsc::Sender<FlushReply>,
    task: JoinHandle<()>,
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
        let task = tokio::spawn(async move {
            loop {
                let reply = tokio::select! {
                    r = rx.recv() => match r {
                        Some(reply) => Some(reply),
                        None => return,
                    },
                    _ = tokio::time::sleep(interval) => None,
                };
                let result = sync_datastore(&store, &lake, &datastore, limits).await;
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
        Self { requests, task }
    }

    /// Syncs everything written so far and returns what that last sync did.
    pub async fn flush(&self) -> Result<Vec<TableSync>, LakeError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || LakeError::Background("the background lake sync has stopped".into());
        self.requests.send(tx).await.map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(LakeError::Background)
    }

    /// Flushes, then stops the task.
    pub async fn shutdown(self) -> Result<Vec<TableSync>, LakeError> {
        let result = self.flush().await;
        drop(self.requests);
        let _ = self.task.await;
        result
    }
}
