//! Hostile input through the real import path: clear errors, no panic, nothing valid lost.

use std::io::Write;
use std::sync::Arc;

use fhirlake::ingest::{self, ImportOptions, ImportProgress};
use fhirlake::installation::Installation;

fn patient(i: usize) -> String {
    format!(r#"{{"resourceType":"Patient","id":"p{i}","gender":"female"}}"#)
}

#[tokio::test]
async fn huge_line_non_utf8_blank_lines_and_truncated_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();

    // a.ndjson: a 50 MB line, a non-UTF-8 line, blank lines, and good lines around them.
    let mut a = std::fs::File::create(input.join("a.ndjson")).unwrap();
    writeln!(a, "{}", patient(1)).unwrap();
    let huge = format!(
        r#"{{"resourceType":"Patient","id":"big","text":{{"status":"generated","div":"{}"}}}}"#,
        "x".repeat(50 << 20)
    );
    writeln!(a, "{huge}").unwrap();
    a.write_all(b"{\"resourceType\":\"Patient\",\"id\":\"\xff\"}\n\n   \n")
        .unwrap();
    writeln!(a, "{}", patient(2)).unwrap();
    drop(a);

    // b.ndjson.gz: cut in the middle of the stream.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 100..3000 {
        writeln!(enc, "{}", patient(i)).unwrap();
    }
    let gz = enc.finish().unwrap();
    std::fs::write(input.join("b.ndjson.gz"), &gz[..gz.len() * 2 / 3]).unwrap();

    let inst = Installation::open(&dir.path().join("inst")).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    let report = ingest::import(
        &inst.store,
        &ds,
        &input,
        &ImportOptions::new(dir.path().join("report")),
        Arc::new(ImportProgress::default()),
    )
    .await
    .unwrap();

    let a = &report.files[0];
    assert_eq!((a.lines_scanned, a.imported, a.failed), (4, 2, 2), "{a:?}");
    let failures = std::fs::read_to_string(dir.path().join("report/FAILURE/a.ndjson")).unwrap();
    let lines: Vec<serde_json::Value> = failures
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let diag = |i: usize| {
        lines[i]["UpdateResourceResponse"]["jsonBlob"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(lines[0]["lineId"], 2);
    assert!(diag(0).contains("over the limit"), "{}", diag(0));
    assert_eq!(lines[1]["lineId"], 3);
    assert!(diag(1).contains("Invalid UTF-8"), "{}", diag(1));

    let b = &report.files[1];
    assert!(
        b.read_error
            .as_deref()
            .unwrap()
            .contains("reading stopped after line"),
        "{b:?}"
    );
    assert!(
        b.imported > 0 && b.imported < 2900,
        "lines before the cut are imported: {b:?}"
    );
    let stored = inst.store.current_counts(&ds.id).await.unwrap();
    assert_eq!(
        stored,
        vec![("Patient".to_string(), (2 + b.imported) as i64)]
    );
}
