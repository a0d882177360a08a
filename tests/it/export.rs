//! Bulk export: the exported NDJSON against the store, a point-in-time read under writes,
//! compartment levels, and the round trip export -> import into another data store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use fhirlake::export::{ExportLimits, ExportProgress, ExportRequest, ExportScope, export};
use fhirlake::installation::Installation;
use fhirlake::store::NewResource;
use serde_json::{Value, json};

use crate::common::import_and_sync;

fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea-r4-100p")
}

/// Every line of every `.ndjson` file in `dir`, parsed, by resource type.
fn read_export(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            out.entry(v["resourceType"].as_str().unwrap().to_string())
                .or_default()
                .push(v);
        }
    }
    out
}

/// A resource without the server-assigned `meta.versionId`/`meta.lastUpdated`.
fn content(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().unwrap().remove("meta");
        }
    }
    v
}

async fn run(
    inst: &Installation,
    ds: &fhirlake::store::Datastore,
    request: &ExportRequest,
    dir: &Path,
    max_file_bytes: u64,
) -> fhirlake::export::ExportReport {
    export(
        &inst.store,
        ds,
        request,
        dir,
        &ExportLimits { max_file_bytes },
        &ExportProgress::default(),
        &AtomicBool::new(false),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_the_data_store() {
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(&dir.path().join("inst")).await.unwrap();
    let a = inst.datastore(None).await.unwrap();
    import_and_sync(&inst, &a, &sample()).await;

    // Small files, so every type with more than a few resources rolls over.
    let out = dir.path().join("export");
    let report = run(&inst, &a, &ExportRequest::system(), &out, 256 * 1024).await;
    let counts: BTreeMap<String, i64> = inst
        .store
        .current_counts(&a.id)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let exported = read_export(&out);
    assert_eq!(
        exported
            .iter()
            .map(|(t, v)| (t.clone(), v.len() as i64))
            .collect::<BTreeMap<_, _>>(),
        counts,
        "one line per current resource, per type"
    );
    assert_eq!(report.resources() as i64, counts.values().sum::<i64>());
    assert!(
        report
            .files
            .iter()
            .all(|f| f.bytes <= 256 * 1024 || f.count == 1)
    );
    let observation_files = report
        .files
        .iter()
        .filter(|f| f.resource_type == "Observation")
        .count();
    assert!(
        observation_files > 1,
        "Observation rolled over ({observation_files} files)"
    );
    // Byte for byte the stored JSON.
    let raw = std::fs::read_to_string(out.join("Patient-1.ndjson")).unwrap();
    let line = raw.lines().next().unwrap();
    let id = serde_json::from_str::<Value>(line).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = inst
        .store
        .read_current(&a.id, "Patient", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, stored.json.unwrap());

    // Import the export into data store B: the same resources, ids and content.
    let b = inst.store.create_datastore("copy").await.unwrap();
    let imported = import_and_sync(&inst, &b, &out).await;
    assert_eq!(imported.failed(), 0);
    for (ty, n) in &counts {
        let mut ra = Vec::new();
        let mut rb = Vec::new();
        for (ds, into) in [(&a, &mut ra), (&b, &mut rb)] {
            let seq = inst.store.latest_seq(&ds.id).await.unwrap();
            for r in inst
                .store
                .resources_at(&ds.id, ty, seq, "", 1_000_000)
                .await
                .unwrap()
            {
                into.push(content(serde_json::from_str(&r.json).unwrap()));
            }
        }
        assert_eq!(ra.len() as i64, *n, "{ty}");
        assert_eq!(ra, rb, "{ty}: data store B equals A");
    }
    // ... and so do the SQL tables, row counts and ids.
    let engine = fhirlake::sql::SqlEngine::new().unwrap();
    for ds in [&a, &b] {
        engine
            .register_datastore(
                &ds.name,
                fhirlake::lake::provider::LakeTable::all_types(&inst.lake, &ds.name),
            )
            .unwrap();
    }
    for ty in counts.keys() {
        let sql = format!(
            "SELECT count(*) FROM (SELECT id FROM {0}.{2} EXCEPT SELECT id FROM {1}.{2}) \
             UNION ALL SELECT count(*) FROM {1}.{2}",
            a.name,
            b.name,
            ty.to_lowercase()
        );
        let batches = engine.collect(&sql).await.unwrap();
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0))
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values.iter().sum::<i64>(), counts[ty], "{ty}: {values:?}");
        assert!(
            values.contains(&0),
            "{ty}: every id of A is in B: {values:?}"
        );
    }
}

#[tokio::test]
async fn an_export_reads_one_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    let put = |id: &str, json: Option<Value>| NewResource {
        resource_type: "Patient".into(),
        id: id.into(),
        json: json.map(|j| j.to_string()),
    };
    let patient =
        |id: &str, gender: &str| json!({"resourceType": "Patient", "id": id, "gender": gender});
    inst.store
        .put_resources(
            &ds.id,
            vec![
                put("a", Some(patient("a", "male"))),
                put("b", Some(patient("b", "female"))),
            ],
        )
        .await
        .unwrap();
    let pinned = inst.store.latest_seq(&ds.id).await.unwrap();
    // After the pin: a changes, b is deleted, c is created.
    inst.store
        .put_resources(
            &ds.id,
            vec![
                put("a", Some(patient("a", "other"))),
                put("b", None),
                put("c", Some(patient("c", "male"))),
            ],
        )
        .await
        .unwrap();
    let at = inst
        .store
        .resources_at(&ds.id, "Patient", pinned, "", 100)
        .await
        .unwrap();
    let got: Vec<(String, String)> = at
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.json).unwrap();
            (r.id.clone(), v["gender"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        got,
        [("a".into(), "male".into()), ("b".into(), "female".into())]
    );
    let now = inst.store.latest_seq(&ds.id).await.unwrap();
    let ids: Vec<String> = inst
        .store
        .resources_at(&ds.id, "Patient", now, "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
}

#[tokio::test]
async fn patient_group_type_and_since_narrow_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(&dir.path().join("inst")).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    let r = |ty: &str, id: &str, body: Value| {
        let mut v = body;
        v["resourceType"] = json!(ty);
        v["id"] = json!(id);
        NewResource {
            resource_type: ty.into(),
            id: id.into(),
            json: Some(v.to_string()),
        }
    };
    inst.store
        .put_resources(
            &ds.id,
            vec![
                r("Patient", "p1", json!({})),
                r("Patient", "p2", json!({})),
                r("Observation", "o1", json!({"status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}})),
                r("Observation", "o2", json!({"status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p2"}})),
                r("Observation", "o3", json!({"status": "final", "code": {"text": "x"}, "subject": {"reference": "Group/g1"}})),
                r("Organization", "org", json!({"name": "Hospital"})),
                r("Group", "g1", json!({"type": "person", "actual": true, "member": [{"entity": {"reference": "Patient/p2"}}]})),
            ],
        )
        .await
        .unwrap();
    let ids = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = read_export(dir)
            .into_values()
            .flatten()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    };
    let level = |scope| ExportRequest {
        scope,
        ..ExportRequest::system()
    };
    let out = dir.path().join("patient");
    run(&inst, &ds, &level(ExportScope::Patient), &out, 1 << 30).await;
    assert_eq!(
        ids(&out),
        [
            "Group/g1",
            "Observation/o1",
            "Observation/o2",
            "Patient/p1",
            "Patient/p2"
        ],
        "the Patient level leaves out the Organization and what only a Group references \
         (a Group is in its members' compartments)"
    );
    let out = dir.path().join("group");
    run(
        &inst,
        &ds,
        &level(ExportScope::Group("g1".into())),
        &out,
        1 << 30,
    )
    .await;
    assert_eq!(ids(&out), ["Group/g1", "Observation/o2", "Patient/p2"]);
    let out = dir.path().join("typed");
    let typed = ExportRequest {
        types: Some(vec!["Organization".into(), "Group".into()]),
        ..ExportRequest::system()
    };
    run(&inst, &ds, &typed, &out, 1 << 30).await;
    assert_eq!(ids(&out), ["Group/g1", "Organization/org"]);
    let err = export(
        &inst.store,
        &ds,
        &level(ExportScope::Group("nope".into())),
        &dir.path().join("x"),
        &ExportLimits::default(),
        &ExportProgress::default(),
        &AtomicBool::new(false),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("Group/nope"), "{err}");

    // _since: only what changed at or after the instant.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    inst.store
        .put_resources(&ds.id, vec![r("Patient", "p1", json!({"gender": "male"}))])
        .await
        .unwrap();
    let out = dir.path().join("since");
    let recent = ExportRequest {
        since: Some(since),
        ..ExportRequest::system()
    };
    run(&inst, &ds, &recent, &out, 1 << 30).await;
    assert_eq!(ids(&out), ["Patient/p1"]);

    // A cancelled export stops with Cancelled.
    let err = export(
        &inst.store,
        &ds,
        &ExportRequest::system(),
        &dir.path().join("cancelled"),
        &ExportLimits::default(),
        &ExportProgress::default(),
        &AtomicBool::new(true),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, fhirlake::export::ExportError::Cancelled));
}
