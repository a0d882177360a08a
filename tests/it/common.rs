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

/// (id, _version_id) of every live row of a table, via iceberg's reader (honours deletes).
pub async fn scan_ids(
    inst: &fhirlake::installation::Installation,
    ds: &str,
    ty: &str,
) -> Vec<(String, i64)> {
    let Some(table) = inst.lake.table(ds, ty).await.unwrap() else {
        return Vec::new();
    };
    let stream = table
        .scan()
        .select(["id", "_version_id"])
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap();
    let batches: Vec<_> = futures::TryStreamExt::try_collect(stream).await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let ids = arrow::array::AsArray::as_string::<i32>(b.column(0));
        let v = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(1));
        for i in 0..b.num_rows() {
            out.push((ids.value(i).to_string(), v.value(i)));
        }
    }
    out.sort();
    out
}

/// Runs the `fhirlake` binary on the data directory `dir`: (success, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhirlake"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}
