//! The one writer of the audit files: a task fed by a bounded channel.
//!
//! Calls hand their record to the channel and go on; they wait only when the channel is full
//! (never dropping a record). The task takes whatever is queued, seals each record onto the
//! chain, appends the batch (blocking I/O on tokio's blocking pool) and `fsync`s at least
//! every `sync_interval` while records arrive, and at once when asked to flush (graceful
//! shutdown). A `kill -9` can therefore lose the records of the last `sync_interval`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{AuditError, AuditRecord, GENESIS};

/// Tunables of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// A new file is started once the current one reaches this size.
    pub max_file_bytes: u64,
    /// Longest a written record waits for its `fsync`.
    pub sync_interval: Duration,
    /// Records queued before callers wait.
    pub capacity: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            sync_interval: Duration::from_millis(200),
            capacity: 8192,
        }
    }
}

enum Msg {
    Record(Box<AuditRecord>),
    /// Answered once everything sent before it is on disk.
    Flush(oneshot::Sender<()>),
}

/// A handle on the audit log; cheap to clone (all clones feed the same writer).
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    dir: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens the log in `dir` (created if needed), continuing the chain of its last record,
    /// and starts the writer task (needs a tokio runtime).
    pub fn open(dir: &Path, config: WriterConfig) -> Result<Self, AuditError> {
        let files = Files::open(dir, config.max_file_bytes)?;
        let (tx, rx) = mpsc::channel(config.capacity);
        tokio::spawn(run(rx, files, config.sync_interval));
        Ok(Self {
            tx,
            dir: dir.to_path_buf(),
        })
    }

    /// The directory of the audit files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `record` (waiting only while the queue is full).
    pub async fn append(&self, record: AuditRecord) {
        if self.tx.send(Msg::Record(Box::new(record))).await.is_err() {
            tracing::error!("the audit log writer has stopped; an audit record was lost");
        }
    }

    /// Waits until every record queued so far is written and synced.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_err() || rx.await.is_err() {
            tracing::error!("the audit log writer has stopped; cannot flush the audit log");
        }
    }
}

/// The writer task: batches what is queued, syncs on time and on request.
async fn run(mut rx: mpsc::Receiver<Msg>, mut files: Files, interval: Duration) {
    let mut batch = Vec::with_capacity(256);
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let received = match unsynced_since {
            None => Some(rx.recv_many(&mut batch, 256).await),
            Some(t) => tokio::time::timeout_at(t + interval, rx.recv_many(&mut batch, 256))
                .await
                .ok(),
        };
        let closed = received == Some(0);
        let due = closed || unsynced_since.is_some_and(|t| t.elapsed() >= interval);
        let msgs = std::mem::take(&mut batch);
        let wrote = msgs.iter().any(|m| matches!(m, Msg::Record(_)));
        files = blocking(files, move |f| f.write_batch(msgs, due)).await;
        if due || files.synced {
            unsynced_since = None;
        } else if wrote && unsynced_since.is_none() {
            unsynced_since = Some(Instant::now());
        }
        if closed {
            return;
        }
    }
}

/// Runs `work` on the blocking pool with the files, and hands them back.
async fn blocking(mut files: Files, work: impl FnOnce(&mut Files) + Send + 'static) -> Files {
    tokio::task::spawn_blocking(move || {
        work(&mut files);
        files
    })
    .await
    .expect("the audit writer does not panic")
}

/// The open audit file and the chain's head.
struct Files {
    dir: PathBuf,
    max_file_bytes: u64,
    number: u32,
    out: BufWriter<File>,
    size: u64,
    seq: u64,
    last_hash: String,
    /// The last write ended with an fsync.
    synced: bool,
}

/// `audit-000001.ndjson`.
pub(crate) fn file_name(number: u32) -> String {
    format!("audit-{number:06}.ndjson")
}

/// The audit files of `dir`, in chain order: `(number, path)`.
pub(crate) fn list_files(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("audit-")?.strip_suffix(".ndjson"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(number) = number {
            files.push((number, path));
        }
    }
    files.sort();
    Ok(files)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Files {
    fn open(dir: &Path, max_file_bytes: u64) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let files = list_files(dir).map_err(io_error(dir))?;
        let (mut seq, mut last_hash) = (0, GENESIS.to_string());
        for (_, path) in files.iter().rev() {
            if let Some(last) = last_record(path)? {
                (seq, last_hash) = (last.seq, last.hash);
                break;
            }
        }
        let number = files.last().map_or(1, |(n, _)| *n);
        let path = dir.join(file_name(number));
        let file = append_to(&path)?;
        let size = file.metadata().map_err(io_error(&path))?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            max_file_bytes,
            number,
            out: BufWriter::new(file),
            size,
            seq,
            last_hash,
            synced: true,
        })
    }

    /// Seals and appends the batch's records, then syncs if `sync` or a flush was asked for,
    /// and answers the flushes.
    fn write_batch(&mut self, msgs: Vec<Msg>, sync: bool) {
        let mut waiters = Vec::new();
        for msg in msgs {
            match msg {
                Msg::Record(record) => self.append(*record),
                Msg::Flush(tx) => waiters.push(tx),
            }
        }
        if let Err(e) = self.out.flush() {
            tracing::error!("cannot write the audit log in {}: {e}", self.dir.display());
        }
        self.synced = false;
        if sync || !waiters.is_empty() {
            self.sync();
        }
        for tx in waiters {
            let _ = tx.send(());
        }
    }

    fn append(&mut self, mut record: AuditRecord) {
        if self.size >= self.max_file_bytes
            && let Err(e) = self.rotate()
        {
            tracing::error!("cannot start a new audit file: {e}");
        }
        self.seq += 1;
        record.seal(self.seq, &self.last_hash);
        let mut line = serde_json::to_vec(&record).expect("an audit record serializes");
        line.push(b'\n');
        match self.out.write_all(&line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => tracing::error!("cannot write an audit record: {e}"),
        }
        self.last_hash = record.hash;
    }

    fn sync(&mut self) {
        match self.out.get_ref().sync_data() {
            Ok(()) => self.synced = true,
            Err(e) => tracing::error!("cannot sync the audit log: {e}"),
        }
    }

    /// Closes the current file (synced) and starts the next one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let _ = self.out.flush();
        self.sync();
        let path = self.dir.join(file_name(self.number + 1));
        let file = append_to(&path)?;
        // The new file's directory entry must survive a crash too.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.number += 1;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

fn append_to(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))
}

/// The last record of `path`. A last line without its newline is a write a crash cut short:
/// it is cut off (with a warning) so the chain continues from the last whole record.
fn last_record(path: &Path) -> Result<Option<AuditRecord>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        tracing::warn!(
            "{}: cutting off a partly written last audit record ({} bytes)",
            path.display(),
            text.len() - whole
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        file.set_len(whole as u64).map_err(io_error(path))?;
    }
    let lines: Vec<&str> = text[..whole].lines().collect();
    let Some(last) = lines.last() else {
        return Ok(None);
    };
    serde_json::from_str(last)
        .map(Some)
        .map_err(|e| AuditError::Corrupt {
            path: path.to_path_buf(),
            line: lines.len(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WriterConfig {
        WriterConfig {
            max_file_bytes: 2_000,
            ..WriterConfig::default()
        }
    }

    async fn write(dir: &Path, n: usize) {
        let log = AuditLog::open(dir, config()).unwrap();
        for i in 0..n {
            let mut r = AuditRecord::new("ReadResource", "anonymous").with_status(200);
            r.resource_id = Some(i.to_string());
            log.append(r).await;
        }
        log.flush().await;
    }

    #[tokio::test]
    async fn the_chain_continues_across_restarts_and_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10).await;
        write(dir.path(), 10).await;
        let files = list_files(dir.path()).unwrap();
        assert!(files.len() > 1, "rotated by size: {files:?}");
        let verified = crate::audit::verify(dir.path()).unwrap();
        assert_eq!(verified.records, 20);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 3).await;
        let (_, last) = list_files(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(b"{\"seq\":4,\"ti").unwrap();
        write(dir.path(), 2).await;
        assert_eq!(crate::audit::verify(dir.path()).unwrap().records, 5);
    }
}
