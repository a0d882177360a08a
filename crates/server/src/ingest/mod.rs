//! Ingest: NDJSON in, validated and versioned resources in the store.
//!
//! A reader thread streams lines and validates them (CPU work off the async runtime); valid
//! resources are written to the store in transactional chunks, invalid lines go to a failure
//! report in HealthLake's format. Memory stays bounded: at most a few chunks are in flight.

pub mod reader;
pub mod validate;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use fhirlake_schema::outcome::OperationOutcome;
use fhirlake_store::{Datastore, NewResource, Store, StoreError};
use reader::{InputError, Line, LineReader};
use validate::validate_resource;

pub use validate::ValidResource;

/// Errors that stop an import (bad lines do not: they are reported and skipped).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the import report in {0}: {1}")]
    Report(PathBuf, std::io::Error),
    #[error("import reader thread failed: {0}")]
    Reader(String),
}

/// Import settings.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Lines larger than this are rejected (and skipped without buffering them).
    pub max_line_bytes: usize,
    /// Resources per store transaction.
    pub chunk_size: usize,
    /// Directory receiving `manifest.json` and `FAILURE/<input file>` reports.
    pub report_dir: PathBuf,
}

impl ImportOptions {
    pub fn new(report_dir: PathBuf) -> Self {
        Self {
            max_line_bytes: 32 << 20,
            chunk_size: 5000,
            report_dir,
        }
    }
}

/// Live counters, for progress display.
#[derive(Debug, Default)]
pub struct ImportProgress {
    pub bytes_read: Arc<AtomicU64>,
    pub total_bytes: AtomicU64,
    pub resources: AtomicU64,
    pub errors: AtomicU64,
}

/// Outcome of one input file.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileReport {
    pub path: PathBuf,
    pub lines_scanned: u64,
    pub imported: u64,
    pub failed: u64,
    /// Set when reading stopped early (e.g. a truncated gzip stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
}

/// Outcome of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub files: Vec<FileReport>,
    /// Imported resources per type.
    pub per_type: BTreeMap<String, u64>,
    pub report_dir: PathBuf,
    pub bytes_scanned: u64,
}

impl ImportReport {
    pub fn imported(&self) -> u64 {
        self.files.iter().map(|f| f.imported).sum()
    }
    pub fn failed(&self) -> u64 {
        self.files.iter().map(|f| f.failed).sum()
    }
}

/// What the reader thread sends: validated chunks and per-file failures.
enum Message {
    Valid(Vec<ValidResource>),
    Failed {
        file: usize,
        line: u64,
        outcome: OperationOutcome,
    },
    FileDone {
        file: usize,
        scanned: u64,
        read_error: Option<String>,
    },
}

/// Imports `input` (a file or a directory of NDJSON files) into `datastore`.
pub async fn import(
    store: &Store,
    datastore: &Datastore,
    input: &Path,
    options: &ImportOptions,
    progress: Arc<ImportProgress>,
) -> Result<ImportReport, ImportError> {
    let files = reader::input_files(input)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    progress.total_bytes.store(total, Ordering::Relaxed);
    let failure_dir = options.report_dir.join("FAILURE");
    std::fs::create_dir_all(&failure_dir)
        .map_err(|e| ImportError::Report(failure_dir.clone(), e))?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(4);
    let reader_files = files.clone();
    let opts = options.clone();
    let bytes_read = progress.bytes_read.clone();
    let reader = std::thread::Builder::new()
        .name("fhirlake-import-reader".into())
        .spawn(move || read_and_validate(&reader_files, &opts, bytes_read, tx))
        .map_err(|e| ImportError::Reader(e.to_string()))?;

    let mut report = ImportReport {
        files: files
            .iter()
            .map(|p| FileReport {
                path: p.clone(),
                ..Default::default()
            })
            .collect(),
        report_dir: options.report_dir.clone(),
        bytes_scanned: total,
        ..Default::default()
    };
    let mut failure_writers: BTreeMap<usize, BufWriter<File>> = BTreeMap::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Message::Valid(chunk) => {
                let n = chunk.len() as u64;
                let items: Vec<NewResource> = chunk
                    .into_iter()
                    .map(|v| {
                        *report
                            .per_type
                            .entry(v.resource_type.to_string())
                            .or_default() += 1;
                        NewResource {
                            resource_type: v.resource_type.to_string(),
                            id: v.id,
                            json: Some(v.json),
                        }
                    })
                    .collect();
                store.put_resources(&datastore.id, items).await?;
                progress.resources.fetch_add(n, Ordering::Relaxed);
            }
            Message::Failed {
                file,
                line,
                outcome,
            } => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                report.files[file].failed += 1;
                let writer = match failure_writers.entry(file) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let name = files[file]
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| format!("input-{file}"));
                        let path = failure_dir.join(name);
                        let f = File::create(&path).map_err(|e| ImportError::Report(path, e))?;
                        e.insert(BufWriter::new(f))
                    }
                };
                let entry = serde_json::json!({
                    "lineId": line,
                    "UpdateResourceResponse": { "jsonBlob": outcome },
                    "statusCode": 400,
                });
                writeln!(writer, "{entry}")
                    .map_err(|e| ImportError::Report(failure_dir.clone(), e))?;
            }
            Message::FileDone {
                file,
                scanned,
                read_error,
            } => {
                let f = &mut report.files[file];
                f.lines_scanned = scanned;
                f.imported = scanned - f.failed;
                f.read_error = read_error;
            }
        }
    }
    for (_, mut w) in failure_writers {
        w.flush()
            .map_err(|e| ImportError::Report(failure_dir.clone(), e))?;
    }
    reader
        .join()
        .map_err(|_| ImportError::Reader("reader thread panicked".into()))?;
    write_manifest(&report, input)?;
    Ok(report)
}

/// Runs on the reader thread: reads every file, validates lines, sends results.
fn read_and_validate(
    files: &[PathBuf],
    options: &ImportOptions,
    bytes_read: Arc<AtomicU64>,
    tx: tokio::sync::mpsc::Sender<Message>,
) {
    let send = |m: Message| tx.blocking_send(m).is_ok();
    for (file, path) in files.iter().enumerate() {
        let mut scanned = 0u64;
        let mut chunk = Vec::with_capacity(options.chunk_size);
        let mut reader = match LineReader::open(path, options.max_line_bytes, bytes_read.clone()) {
            Ok(r) => r,
            Err(e) => {
                if !send(Message::FileDone {
                    file,
                    scanned: 0,
                    read_error: Some(e.to_string()),
                }) {
                    return;
                }
                continue;
            }
        };
        let read_error = loop {
            let (line, result) = match reader.next_line() {
                Ok(None) => break None,
                Err(e) => {
                    break Some(format!(
                        "reading stopped after line {scanned}: {e} (truncated or corrupt file?)"
                    ));
                }
                Ok(Some(Line::Bad { line, message })) => {
                    (line, Err(OperationOutcome::error(message)))
                }
                Ok(Some(Line::Text { line, text })) => (line, validate_resource(&text)),
            };
            scanned += 1;
            match result {
                Ok(valid) => {
                    chunk.push(valid);
                    if chunk.len() >= options.chunk_size
                        && !send(Message::Valid(std::mem::take(&mut chunk)))
                    {
                        return;
                    }
                }
                Err(outcome) => {
                    if !send(Message::Failed {
                        file,
                        line,
                        outcome,
                    }) {
                        return;
                    }
                }
            }
        };
        if !chunk.is_empty() && !send(Message::Valid(chunk)) {
            return;
        }
        if !send(Message::FileDone {
            file,
            scanned,
            read_error,
        }) {
            return;
        }
    }
}

/// Writes `manifest.json` with HealthLake's import manifest keys.
fn write_manifest(report: &ImportReport, input: &Path) -> Result<(), ImportError> {
    let mb = |b: u64| (b as f64) / 1_000_000.0;
    let files_imported = report.files.iter().filter(|f| f.imported > 0).count();
    let manifest = serde_json::json!({
        "inputDataConfig": { "s3Uri": format!("file://{}", input.display()) },
        "outputDataConfig": { "s3Uri": format!("file://{}", report.report_dir.display()) },
        "successOutput": { "successOutputS3Uri": format!("file://{}", report.report_dir.join("SUCCESS").display()) },
        "failureOutput": { "failureOutputS3Uri": format!("file://{}", report.report_dir.join("FAILURE").display()) },
        "numberOfScannedFiles": report.files.len(),
        "numberOfFilesImported": files_imported,
        "sizeOfScannedFilesInMB": mb(report.bytes_scanned),
        "numberOfResourcesScanned": report.files.iter().map(|f| f.lines_scanned).sum::<u64>(),
        "numberOfResourcesImportedSuccessfully": report.imported(),
        "numberOfResourcesWithCustomerError": report.failed(),
        "numberOfResourcesWithServerError": 0,
        "files": report.files,
    });
    let path = report.report_dir.join("manifest.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest).expect("serializable"),
    )
    .map_err(|e| ImportError::Report(path, e))
}
