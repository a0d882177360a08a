//! Shared helpers for the integration tests.

use std::io::Read;
use std::path::{Path, PathBuf};

/// `../shared/data` next to the project, or None (tests then skip with a message).
pub fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} is absent; this test needs the shared Synthea data",
            p.display()
        );
        None
    }
}

/// Lines of a gzipped NDJSON file.
pub fn gz_lines(path: &Path) -> Vec<String> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Imports `path` into `ds` and commits it to the lake, as `fhirlake import` does.
pub async fn import_and_sync(
    inst: &fhirlake::installation::Installation,
    ds: &fhirlake::store::Datastore,
    path: &Path,
) -> fhirlake::ingest::ImportReport {
    let report_dir = tempfile::tempdir().unwrap().keep();
    let report = fhirlake::ingest::import(
        &inst.store,
        ds,
        path,
        &fhirlake::ingest::ImportOptions::new(report_dir),
        std::sync::Arc::new(fhirlake::ingest::ImportProgress::default()),
    )
    .await
    .unwrap();
    fhirlake::lake::sync::sync_datastore(
        &inst.store,
        &inst.lake,
        ds,
        fhirlake::lake::sync::BatchLimits::default(),
    )
    .await
    .unwrap();
    report
}
