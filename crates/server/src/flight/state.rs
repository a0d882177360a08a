//! Server-side state of the Flight SQL endpoint: query tickets and their cancellation,
//! prepared statements with bound parameters, and `USE` sessions.
//!
//! Everything here is bounded: entries a client never comes back for (a ticket never
//! fetched, a prepared statement never closed, a session never resumed) are dropped oldest
//! first, so a misbehaving client cannot grow the server's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Most tickets, prepared statements and sessions each kept at once.
const MAX_ENTRIES: usize = 10_000;

/// What a statement ticket carries: enough to run the query on any request, so tickets
/// stay valid however the client spreads its calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryTicket {
    /// Identifies the query for cancellation.
    pub id: String,
    /// The statement text.
    pub sql: String,
    /// The data store unqualified names resolve to, fixed when the ticket was issued.
    pub datastore: String,
    /// The prepared statement whose bound parameters apply, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
}

/// A prepared statement: its text, data store and currently bound parameters.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    pub datastore: String,
    pub params: Vec<ScalarValue>,
}

/// A map that forgets its oldest entries beyond [`MAX_ENTRIES`].
#[derive(Debug)]
struct Bounded<V> {
    entries: HashMap<String, (Instant, V)>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<V> Bounded<V> {
    fn insert(&mut self, key: String, value: V) {
        if self.entries.len() >= MAX_ENTRIES
            && !self.entries.contains_key(&key)
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (Instant::now(), value));
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }
}

/// The endpoint's mutable state.
#[derive(Debug, Default)]
pub struct ServerState {
    /// Issued tickets by query id, each with the switch that cancels it.
    queries: Mutex<Bounded<watch::Sender<bool>>>,
    prepared: Mutex<Bounded<Prepared>>,
    /// Session id (cookie) -> data store chosen with `USE`.
    sessions: Mutex<Bounded<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a single map operation, so a poisoned map is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServerState {
    /// Registers a new query and returns its ticket.
    pub fn issue_ticket(
        &self,
        sql: String,
        datastore: String,
        prepared: Option<String>,
    ) -> QueryTicket {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (cancel, _) = watch::channel(false);
        lock(&self.queries).insert(id.clone(), cancel);
        QueryTicket {
            id,
            sql,
            datastore,
            prepared,
        }
    }

    /// The cancellation signal of query `id`, registering it if the ticket was issued by an
    /// earlier run of the server (tickets are self-contained) or forgotten.
    pub fn watch_query(&self, id: &str) -> watch::Receiver<bool> {
        let mut queries = lock(&self.queries);
        if let Some(sender) = queries.get(id) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(false);
        queries.insert(id.to_string(), sender);
        receiver
    }

    /// Forgets query `id` once its results have been sent.
    pub fn finish_query(&self, id: &str) {
        lock(&self.queries).remove(id);
    }

    /// Cancels query `id`: a running fetch stops with CANCELLED, a later fetch is refused.
    /// False when the query is unknown (finished, or never issued here).
    pub fn cancel_query(&self, id: &str) -> bool {
        match lock(&self.queries).get(id) {
            Some(sender) => {
                sender.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Stores a prepared statement and returns its handle.
    pub fn prepare(&self, sql: String, datastore: String) -> String {
        let handle = uuid::Uuid::new_v4().simple().to_string();
        lock(&self.prepared).insert(
            handle.clone(),
            Prepared {
                sql,
                datastore,
                params: Vec::new(),
            },
        );
        handle
    }

    pub fn prepared(&self, handle: &str) -> Option<Prepared> {
        lock(&self.prepared).get(handle).cloned()
    }

    /// Replaces the bound parameters; false when the handle is unknown.
    pub fn bind(&self, handle: &str, params: Vec<ScalarValue>) -> bool {
        match lock(&self.prepared).get_mut(handle) {
            Some(p) => {
                p.params = params;
                true
            }
            None => false,
        }
    }

    pub fn close_prepared(&self, handle: &str) -> bool {
        lock(&self.prepared).remove(handle).is_some()
    }

    /// The data store a session chose with `USE`.
    pub fn session_datastore(&self, session: &str) -> Option<String> {
        lock(&self.sessions).get(session).cloned()
    }

    pub fn set_session_datastore(&self, session: &str, datastore: String) {
        lock(&self.sessions).insert(session.to_string(), datastore);
    }
}

/// Why a guarded query stream stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// A client cancelled the query.
    Cancelled,
    /// The query ran past the time limit.
    TimedOut(Duration),
}

/// The error a [`guard`]ed stream ends with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InterruptedError {
    pub why: Interrupted,
    message: String,
}

impl InterruptedError {
    fn new(why: Interrupted) -> Self {
        let message = match why {
            Interrupted::Cancelled => "query cancelled by the client".to_string(),
            Interrupted::TimedOut(limit) => format!(
                "query exceeded the server's time limit of {}s and was stopped",
                limit.as_secs_f64()
            ),
        };
        Self { why, message }
    }
}

/// Completes once `cancel` reads true; never when its sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A query's batches, cut off with an [`InterruptedError`] when the query is cancelled or
/// runs past `timeout` (counted from now, including the time the client takes to read).
/// Stopping drops the inner stream, which stops DataFusion's work on it.
pub fn guard(
    inner: SendableRecordBatchStream,
    cancel: watch::Receiver<bool>,
    timeout: Option<Duration>,
) -> SendableRecordBatchStream {
    let schema = inner.schema();
    let deadline = timeout.map(|t| (tokio::time::Instant::now() + t, t));
    let stream = futures::stream::unfold(Some((inner, cancel)), move |state| async move {
        let (mut inner, mut cancel) = state?;
        let expired = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let interrupted = |why| {
            Some((
                Err(DataFusionError::External(Box::new(InterruptedError::new(
                    why,
                )))),
                None,
            ))
        };
        // Cancellation and the deadline win over a stream that always has a batch ready.
        tokio::select! {
            biased;
            () = cancelled(&mut cancel) => interrupted(Interrupted::Cancelled),
            () = expired => interrupted(Interrupted::TimedOut(deadline.map(|d| d.1).unwrap_or_default())),
            item = inner.next() => item.map(|i| (i, Some((inner, cancel)))),
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;
    use std::sync::Arc;

    fn never_ending() -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::new(Schema::empty()),
            futures::stream::pending::<Result<arrow::array::RecordBatch, DataFusionError>>(),
        ))
    }

    #[tokio::test]
    async fn cancelling_a_ticket_stops_its_stream() {
        let state = ServerState::default();
        let ticket = state.issue_ticket("SELECT 1".into(), "fhir".into(), None);
        let mut stream = guard(never_ending(), state.watch_query(&ticket.id), None);
        let canceller = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(state.cancel_query(&ticket.id));
        };
        let (item, ()) = tokio::join!(stream.next(), canceller);
        let err = item.unwrap().unwrap_err().to_string();
        assert!(err.contains("cancelled"), "{err}");
        assert!(stream.next().await.is_none());
        state.finish_query(&ticket.id);
        assert!(!state.cancel_query(&ticket.id));
    }

    #[tokio::test]
    async fn a_deadline_stops_a_slow_stream() {
        let (_tx, rx) = watch::channel(false);
        let mut stream = guard(never_ending(), rx, Some(Duration::from_millis(30)));
        let err = stream.next().await.unwrap().unwrap_err().to_string();
        assert!(err.contains("time limit"), "{err}");
    }

    #[test]
    fn prepared_statements_bind_and_close() {
        let state = ServerState::default();
        let h = state.prepare("SELECT ?".into(), "fhir".into());
        assert!(state.bind(&h, vec![ScalarValue::from(3i64)]));
        assert_eq!(state.prepared(&h).unwrap().params.len(), 1);
        assert!(state.close_prepared(&h));
        assert!(state.prepared(&h).is_none());
        assert!(!state.bind(&h, Vec::new()));
    }

    #[test]
    fn bounded_map_forgets_the_oldest() {
        let mut map = Bounded::default();
        for i in 0..MAX_ENTRIES + 5 {
            map.insert(i.to_string(), i);
        }
        assert_eq!(map.entries.len(), MAX_ENTRIES);
        assert!(map.get(&(MAX_ENTRIES + 4).to_string()).is_some());
    }
}
