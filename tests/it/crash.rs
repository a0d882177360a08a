//! Kill -9 in the middle of an import, restart: no half-applied batch, one row per id.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use futures::TryStreamExt;

use fhirlake::installation::Installation;

use crate::common::{gz_lines, shared_data};

#[tokio::test]
async fn kill_during_import_then_rerun_converges() {
    let Some(data) = shared_data() else { return };
    let input = data.join("synthea-r4-100p");
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_fhirlake");
    let import = || {
        Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["import", "--quiet"])
            .arg(&input)
            .spawn()
            .unwrap()
    };
    // Kill at a few points: while reading, while committing.
    for delay_ms in [700, 2500] {
        let mut child = import();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let status = import().wait().unwrap();
    assert!(status.success());

    let inst = Installation::open(dir.path()).await.unwrap();
    for ty in ["Patient", "Condition", "Observation", "Encounter"] {
        let expected: HashSet<String> = gz_lines(&input.join(format!("{ty}.ndjson.gz")))
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let table = inst.lake.table("fhir", ty).await.unwrap().unwrap();
        let batches: Vec<_> = table
            .scan()
            .select(["id"])
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut ids = Vec::new();
        for b in &batches {
            let col = arrow::array::AsArray::as_string::<i32>(b.column(0));
            ids.extend(col.iter().map(|v| v.unwrap().to_string()));
        }
        assert_eq!(
            ids.len(),
            expected.len(),
            "{ty}: one row per id after the rerun"
        );
        assert_eq!(ids.into_iter().collect::<HashSet<_>>(), expected, "{ty}");
    }
}
