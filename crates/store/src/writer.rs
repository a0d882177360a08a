//! The store's one writing connection, owned by a task that no caller can cancel.
//!
//! Why a task: a caller's future can be dropped at any await (axum drops a request's future
//! when its client goes away, a `select!` or a timeout drops the losing branch). A write that
//! is dropped between `BEGIN` and `COMMIT` used to hand its connection back to the pool with
//! the transaction, and SQLite's write lock, still open, and every later write waited for a
//! lock nobody would release. Here a caller only sends a job and waits for the answer;
//! dropping the wait abandons the answer, never the transaction. The task runs each job to
//! its end and checks, after every job, that the connection is outside any transaction.
//!
//! Why one connection: SQLite has one writer at a time anyway. Writers on several pooled
//! connections queue on the busy handler, which sleeps and retries (up to 100 ms a turn),
//! while one task can take every resource write that is waiting and commit them together
//! (group commit, see `writes.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::writes::{ConditionalWriteError, WriteOutcome, WriteRequest, commit_group};

/// Jobs waiting for the writer before senders wait for room.
const QUEUE: usize = 4096;
/// Most requests one group commit takes.
const GROUP_REQUESTS: usize = 512;
/// Most resources one group commit takes (an import chunk alone may exceed it).
const GROUP_RESOURCES: usize = 10_000;

/// Work that runs on the writing connection and reports through its own channel.
pub(super) type Exclusive =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, ()> + Send>;

enum Job {
    /// Resource writes: grouped with the other resource writes that are waiting.
    Resources {
        request: WriteRequest,
        reply: oneshot::Sender<WriteOutcome>,
    },
    /// Any other write, alone on the connection.
    Exclusive(Exclusive),
}

/// Handle to the writer task; cheap to clone. The task ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Resources { request, .. } => f
                .debug_struct("Resources")
                .field("writes", &request.writes.len())
                .finish(),
            Job::Exclusive(_) => f.write_str("Exclusive"),
        }
    }
}

impl Writer {
    /// Starts the writer task on the current runtime with `conn`, reopened from `options`
    /// if it ever breaks. `writes` counts committed resource transactions.
    pub(super) fn start(
        conn: SqliteConnection,
        options: SqliteConnectOptions,
        writes: Arc<AtomicU64>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, options, queue, writes));
        Self { jobs }
    }

    /// Commits `request` (all or nothing) and returns what it wrote.
    pub(super) async fn write(&self, request: WriteRequest) -> WriteOutcome {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Resources { request, reply }).await?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Runs `work` alone on the writing connection and returns its result. `work` must leave
    /// the connection outside any transaction; if it does not, its transaction is rolled back.
    pub(super) async fn exclusive<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Exclusive = Box::new(move |conn| {
            Box::pin(async move {
                // The caller may have gone: the work is done all the same.
                let _ = reply.send(work(conn).await);
            })
        });
        self.send(Job::Exclusive(job)).await?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::WriterStopped)
    }
}

/// The writer loop: one job (or one group of resource writes) at a time, to completion.
async fn run(
    conn: SqliteConnection,
    options: SqliteConnectOptions,
    mut queue: mpsc::Receiver<Job>,
    writes: Arc<AtomicU64>,
) {
    let mut conn = Some(conn);
    // A job taken from the queue while collecting a group, to run next.
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let c = match connection(&mut conn, &options).await {
            Ok(c) => c,
            Err(e) => {
                fail(job, e);
                continue;
            }
        };
        match job {
            Job::Exclusive(work) => work(c).await,
            Job::Resources { request, reply } => {
                let mut group = vec![(request, reply)];
                next = collect_group(&mut queue, &mut group);
                if commit(c, group).await {
                    writes.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        if !settle(c).await {
            conn = None;
        }
    }
}

/// Adds the resource writes already waiting to `group`, up to the group limits; returns the
/// first other job met, which must run next (jobs keep their order).
fn collect_group(
    queue: &mut mpsc::Receiver<Job>,
    group: &mut Vec<(WriteRequest, oneshot::Sender<WriteOutcome>)>,
) -> Option<Job> {
    let mut resources: usize = group.iter().map(|(r, _)| r.writes.len()).sum();
    while group.len() < GROUP_REQUESTS && resources < GROUP_RESOURCES {
        match queue.try_recv() {
            Ok(Job::Resources { request, reply }) => {
                resources += request.writes.len();
                group.push((request, reply));
            }
            Ok(other) => return Some(other),
            Err(_) => break,
        }
    }
    None
}

/// Commits a group and answers each request; true when something was committed. When the
/// group's transaction fails, each request is retried alone so that one request's failure
/// (or a full disk) is reported to exactly the requests it concerns.
fn commit(
    conn: &mut SqliteConnection,
    group: Vec<(WriteRequest, oneshot::Sender<WriteOutcome>)>,
) -> BoxFuture<'_, bool> {
    Box::pin(async move {
        let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        match commit_group(conn, &requests).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
                true
            }
            Err(e) if requests.len() == 1 => {
                let _ = replies
                    .into_iter()
                    .next()
                    .map(|r| r.send(Err(StoreError::Db(e).into())));
                false
            }
            Err(e) => {
                tracing::warn!(
                    "group commit of {} requests failed ({e}); retrying each alone",
                    requests.len()
                );
                let mut committed = false;
                for (request, reply) in requests.into_iter().zip(replies) {
                    let _ = settle(conn).await;
                    let outcome = match commit_group(conn, std::slice::from_ref(&request)).await {
                        Ok(mut outcomes) => {
                            committed = true;
                            outcomes.remove(0)
                        }
                        Err(e) => Err(StoreError::Db(e).into()),
                    };
                    let _ = reply.send(outcome);
                }
                committed
            }
        }
    })
}

/// The writing connection, reopened when a failure closed it.
async fn connection<'a>(
    conn: &'a mut Option<SqliteConnection>,
    options: &SqliteConnectOptions,
) -> Result<&'a mut SqliteConnection, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(options.connect().await?);
        tracing::info!("resource store: writing connection reopened");
    }
    Ok(conn.as_mut().expect("just opened"))
}

/// Answers a job that cannot run because the connection cannot be opened.
fn fail(job: Job, e: sqlx::Error) {
    tracing::error!("resource store: cannot open the writing connection: {e}");
    match job {
        Job::Resources { reply, .. } => {
            let _ = reply.send(Err(ConditionalWriteError::Store(StoreError::Db(e))));
        }
        // Dropping the work drops its reply sender: the caller sees WriterStopped.
        Job::Exclusive(_) => {}
    }
}

/// Makes sure the connection is outside any transaction after a job; false when it is not
/// usable any more (it is then closed, which rolls back whatever it held).
fn settle(conn: &mut SqliteConnection) -> BoxFuture<'_, bool> {
    Box::pin(async move {
        // A dropped `Transaction` queues its rollback; the ping runs after it.
        if let Err(e) = conn.ping().await {
            tracing::error!("resource store: writing connection failed ({e}); reopening");
            return false;
        }
        match in_transaction(conn).await {
            Ok(false) => true,
            Ok(true) => {
                tracing::error!(
                    "resource store: a write left its transaction open; rolling it back"
                );
                sqlx::Executor::execute(&mut *conn, "ROLLBACK")
                    .await
                    .is_ok()
                    && matches!(in_transaction(conn).await, Ok(false))
            }
            Err(_) => false,
        }
    })
}

/// Whether SQLite itself (not sqlx's bookkeeping) has a transaction open on `conn`.
pub(super) async fn in_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle();
    // SAFETY: `raw` is the live connection handle, locked against the connection's worker
    // thread for the duration of this call; sqlite3_get_autocommit only reads its state.
    let autocommit = unsafe { libsqlite3_sys::sqlite3_get_autocommit(raw.as_ptr()) };
    Ok(autocommit == 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Job as StoredJob, JobKind, JobStatus, NewResource, Store};

    fn patient(id: &str) -> Vec<NewResource> {
        vec![NewResource {
            resource_type: "Patient".into(),
            id: id.into(),
            json: Some(format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#)),
        }]
    }

    fn job(datastore_id: &str) -> StoredJob {
        StoredJob {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            datastore_id: datastore_id.into(),
            kind: JobKind::Import,
            status: JobStatus::Completed,
            submit_time: "2026-01-01T00:00:00.000Z".into(),
            end_time: None,
            client_token: None,
            properties: serde_json::json!({}),
        }
    }

    /// Callers dropped at every point of a write (a request whose client left) neither leave
    /// a transaction open nor half a write behind: later writes and reads go through at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_cancelled_at_any_point_leave_nothing_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let ds = store.create_datastore("t").await.unwrap().id;
        for i in 0..300u64 {
            let wait = Duration::from_micros(i % 40 * 25);
            let id = format!("p{}", i % 7);
            let _ = tokio::time::timeout(wait, store.put_resources(&ds, patient(&id))).await;
            let _ = tokio::time::timeout(wait, store.insert_job(&job(&format!("j{i}")))).await;
            let _ = tokio::time::timeout(wait, store.read_current(&ds, "Patient", &id)).await;
        }
        for i in 0..20 {
            let id = format!("q{i}");
            tokio::time::timeout(
                Duration::from_secs(5),
                store.put_resources(&ds, patient(&id)),
            )
            .await
            .expect("a write after the cancellations is not held up")
            .unwrap();
            let read = store.read_current(&ds, "Patient", &id).await.unwrap();
            assert_eq!(read.unwrap().version, 1);
        }
        // Every write that was applied is whole: versions 1..=n, each with its body.
        for i in 0..7 {
            let id = format!("p{i}");
            let Some(current) = store.read_current(&ds, "Patient", &id).await.unwrap() else {
                continue;
            };
            for v in 1..=current.version {
                let version = store.read_version(&ds, "Patient", &id, v).await.unwrap();
                assert!(
                    version
                        .unwrap()
                        .json
                        .unwrap()
                        .contains(&format!("\"versionId\":\"{v}\""))
                );
            }
        }
    }

    /// Requests waiting together are committed together, each with its own outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_commits_and_keep_their_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let ds = store.create_datastore("t").await.unwrap().id;
        // Hold the writer until all 200 requests wait in its queue.
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let held = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .exclusive(|_| {
                        Box::pin(async move {
                            let _ = gate.await;
                            Ok(())
                        })
                    })
                    .await
            })
        };
        let before = store.write_generation();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (store, ds) = (store.clone(), ds.clone());
                tokio::spawn(
                    async move { store.put_resources(&ds, patient(&format!("g{i}"))).await },
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        open.send(()).unwrap();
        held.await.unwrap().unwrap();
        let mut seqs = Vec::new();
        for t in tasks {
            let written = t.await.unwrap().unwrap();
            assert_eq!(written.len(), 1);
            assert_eq!(written[0].version, 1);
            seqs.push(written[0].seq);
        }
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            200,
            "every write has its own change sequence number"
        );
        let commits = store.write_generation() - before;
        assert!(commits < 10, "{commits} commits for 200 waiting writes");
        let counts = store.current_counts(&ds).await.unwrap();
        assert_eq!(counts, [("Patient".to_string(), 200)]);
    }
}
