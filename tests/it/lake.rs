//! Import -> store -> Iceberg, checked by scanning the tables with iceberg's own reader.

use std::collections::HashSet;
use std::sync::Arc;

use fhirlake::ingest::{self, ImportOptions, ImportProgress};
use fhirlake::installation::Installation;
use fhirlake::lake::sync::{BatchLimits, sync_datastore};
use fhirlake::store::NewResource;

use crate::common::{gz_lines, scan_ids, shared_data};

async fn import_file(inst: &Installation, path: &std::path::Path) -> ingest::ImportReport {
    let ds = inst.datastore(None).await.unwrap();
    crate::common::import_and_sync(inst, &ds, path).await
}

/// Deletes one resource in the store and commits the change to the lake.
async fn delete_and_sync(
    inst: &Installation,
    ds: &fhirlake::store::Datastore,
    resource_type: &str,
    id: &str,
) {
    inst.store
        .put_resources(
            &ds.id,
            vec![NewResource {
                resource_type: resource_type.into(),
                id: id.to_string(),
                json: None,
            }],
        )
        .await
        .unwrap();
    sync_datastore(&inst.store, &inst.lake, ds, BatchLimits::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn import_replace_delete_and_recover() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let file = data.join("synthea-r4-100p/Patient.ndjson.gz");
    let expected: HashSet<String> = gz_lines(&file)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let report = import_file(&inst, &file).await;
    assert_eq!(report.imported() as usize, expected.len());
    let first_location = inst
        .lake
        .table("fhir", "Patient")
        .await
        .unwrap()
        .unwrap()
        .metadata_location()
        .unwrap()
        .to_string();
    assert_eq!(report.failed(), 0);
    let rows = scan_ids(&inst, "fhir", "Patient").await;
    assert_eq!(rows.len(), expected.len());
    assert!(rows.iter().all(|(_, v)| *v == 1));

    // Re-importing the same file makes version 2 of every patient: still one row per id.
    import_file(&inst, &file).await;
    let rows = scan_ids(&inst, "fhir", "Patient").await;
    assert_eq!(rows.len(), expected.len());
    assert!(
        rows.iter().all(|(_, v)| *v == 2),
        "old rows must be deleted"
    );
    assert_eq!(
        rows.iter()
            .map(|(id, _)| id.clone())
            .collect::<HashSet<_>>(),
        expected
    );

    // Each commit writes a new metadata file and swaps the pointer; the old file stays intact.
    let table = inst.lake.table("fhir", "Patient").await.unwrap().unwrap();
    let second_location = table.metadata_location().unwrap().to_string();
    assert_ne!(first_location, second_location);
    assert!(std::path::Path::new(first_location.trim_start_matches("file://")).exists());
    assert!(
        table.metadata().snapshots().count() >= 2,
        "one snapshot per commit"
    );

    // Deleting one resource removes its row.
    let ds = inst.datastore(None).await.unwrap();
    let victim = rows[0].0.clone();
    delete_and_sync(&inst, &ds, "Patient", &victim).await;
    let rows = scan_ids(&inst, "fhir", "Patient").await;
    assert_eq!(rows.len(), expected.len() - 1);
    assert!(!rows.iter().any(|(id, _)| *id == victim));

    // Simulate a crash between the Iceberg commit and the store's record of it: the store
    // forgets its row index. The next sync rebuilds it from the table, so a further
    // replacement still removes the old rows instead of duplicating them.
    sqlx_reset(&dir.path().join("store.db")).await;
    import_file(&inst, &file).await;
    let rows = scan_ids(&inst, "fhir", "Patient").await;
    assert_eq!(rows.len(), expected.len());
    // Version 3 everywhere, except the deleted patient, which came back as version 4.
    assert!(
        rows.iter()
            .all(|(id, v)| *v == if *id == victim { 4 } else { 3 }),
        "{rows:?}"
    );
}

async fn sqlx_reset(db: &std::path::Path) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM lake_rows")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM lake_state")
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_lines_are_reported_and_the_rest_imported() {
    let Some(data) = shared_data() else { return };
    let lines = gz_lines(&data.join("synthea-r4-100p/Patient.ndjson.gz"));
    // ACC-28: lines 3, 5, 7, 9 and 15 are bad, the others good.
    let mut text = String::new();
    for i in 1..=16 {
        let line = match i {
            3 => "{not json".to_string(),
            5 => lines[4].replace(
                "\"resourceType\":\"Patient\"",
                "\"resourceType\":\"Patient123\"",
            ),
            7 => lines[6].replacen("\"id\":", "\"xid\":", 1),
            9 => lines[8].replacen("\"gender\":", "\"xgender\":", 1),
            15 => lines[14].replacen("\"id\":\"", "\"id\":\"bad id ", 1),
            _ => lines[i - 1].clone(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("patients.ndjson");
    std::fs::write(&input, text).unwrap();
    let inst = Installation::open(&dir.path().join("inst")).await.unwrap();
    let report = import_file(&inst, &input).await;
    assert_eq!(report.imported(), 11);
    assert_eq!(report.failed(), 5);
    let failures =
        std::fs::read_to_string(report.report_dir.join("FAILURE/patients.ndjson")).unwrap();
    let got: Vec<serde_json::Value> = failures
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line_ids: Vec<u64> = got.iter().map(|v| v["lineId"].as_u64().unwrap()).collect();
    assert_eq!(line_ids, [3, 5, 7, 9, 15]);
    assert!(got.iter().all(|v| v["statusCode"] == 400));
    let diag = |i: usize| {
        got[i]["UpdateResourceResponse"]["jsonBlob"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(diag(0), "Invalid JSON found in input file");
    assert!(diag(1).contains("'Patient123' at 'resourceType'"));
    assert_eq!(diag(2), "Missing required id field in resource json");
    assert_eq!(diag(3), "Unrecognised property '@xgender'");
    assert!(diag(4).contains("[A-Za-z0-9-.]{1,64}"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.report_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["numberOfResourcesScanned"], 16);
    assert_eq!(manifest["numberOfResourcesImportedSuccessfully"], 11);
    assert_eq!(manifest["numberOfResourcesWithCustomerError"], 5);
    assert_eq!(scan_ids(&inst, "fhir", "Patient").await.len(), 11);
}

#[tokio::test]
async fn compaction_rewrites_small_files_and_keeps_every_row() {
    use fhirlake::lake::compact::{CompactionPolicy, compact_table};
    use fhirlake::lake::sync::sync_table;
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    let file = data.join("synthea-r4-100p/Condition.ndjson.gz");
    let tiny = BatchLimits {
        max_changes: 100,
        max_json_bytes: 1 << 30,
    };
    // Two imports in 100-row micro-batches: many data files, and delete files for the second.
    for _ in 0..2 {
        ingest::import(
            &inst.store,
            &ds,
            &file,
            &ImportOptions::new(dir.path().join("report")),
            Arc::new(ImportProgress::default()),
        )
        .await
        .unwrap();
        let stats = sync_table(&inst.store, &inst.lake, &ds, "Condition", tiny)
            .await
            .unwrap();
        assert!(stats.commits > 5);
    }
    let before = scan_ids(&inst, "fhir", "Condition").await;
    let table = inst.lake.table("fhir", "Condition").await.unwrap().unwrap();
    let (data_files, delete_files) = fhirlake::lake::compact::live_files(&table).await.unwrap();
    assert!(data_files.len() > 10 && !delete_files.is_empty());

    let done = compact_table(
        &inst.store,
        &inst.lake,
        &ds,
        "Condition",
        CompactionPolicy::default(),
        false,
    )
    .await
    .unwrap()
    .expect("policy asks for compaction");
    assert_eq!(done.rows, before.len());
    assert_eq!(done.files_after, 1);
    let table = inst.lake.table("fhir", "Condition").await.unwrap().unwrap();
    let (data_files, delete_files) = fhirlake::lake::compact::live_files(&table).await.unwrap();
    assert_eq!((data_files.len(), delete_files.len()), (1, 0));
    assert_eq!(
        scan_ids(&inst, "fhir", "Condition").await,
        before,
        "same rows, same versions"
    );
    let summary = &table.metadata().current_snapshot().unwrap().summary();
    assert_eq!(summary.operation, iceberg::spec::Operation::Replace);

    // The row index now points into the compacted file: replacing everything once more still
    // leaves exactly one row per id, all at version 3.
    ingest::import(
        &inst.store,
        &ds,
        &file,
        &ImportOptions::new(dir.path().join("report")),
        Arc::new(ImportProgress::default()),
    )
    .await
    .unwrap();
    sync_table(
        &inst.store,
        &inst.lake,
        &ds,
        "Condition",
        BatchLimits::default(),
    )
    .await
    .unwrap();
    let after = scan_ids(&inst, "fhir", "Condition").await;
    assert_eq!(after.len(), before.len());
    assert!(after.iter().all(|(_, v)| *v == 3));
}

#[tokio::test]
async fn background_sync_commits_on_its_own_and_on_flush() {
    use fhirlake::lake::background::BackgroundSync;
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    let sync = BackgroundSync::spawn(
        inst.store.clone(),
        inst.lake.clone(),
        ds.clone(),
        std::time::Duration::from_millis(100),
        BatchLimits::default(),
    );
    let put = |id: &str| NewResource {
        resource_type: "Patient".into(),
        id: id.into(),
        json: Some(format!(
            r#"{{"resourceType":"Patient","id":"{id}","gender":"female"}}"#
        )),
    };
    inst.store
        .put_resources(&ds.id, vec![put("a")])
        .await
        .unwrap();
    // The interval alone makes it visible.
    let mut seen = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if scan_ids(&inst, "fhir", "Patient").await.len() == 1 {
            seen = true;
            break;
        }
    }
    assert!(seen, "the background sync never committed");
    // flush makes everything written so far visible at once.
    inst.store
        .put_resources(&ds.id, vec![put("b"), put("c")])
        .await
        .unwrap();
    sync.flush().await.unwrap();
    assert_eq!(scan_ids(&inst, "fhir", "Patient").await.len(), 3);
    sync.shutdown().await.unwrap();
}

/// A data file (not yet committed) holding version 1 of Patient `id`.
async fn patient_file(table: &iceberg::table::Table, id: &str) -> iceberg::spec::DataFile {
    use fhirlake::lake::flatten::{FlatInput, flatten};
    let schema = fhirlake::schema::Registry::global().get("Patient").unwrap();
    let json = format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#);
    let batch = flatten(
        &schema,
        &[FlatInput {
            id,
            version: 1,
            last_updated: "2026-01-01T00:00:00Z",
            json: &json,
        }],
    )
    .unwrap();
    fhirlake::lake::write::write_data_file(table, &batch)
        .await
        .unwrap()
}

#[tokio::test]
async fn commits_expire_all_but_the_newest_snapshots() {
    use fhirlake::lake::{DEFAULT_SNAPSHOTS_TO_KEEP, Lake, TableChanges};
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let table = inst.lake.ensure_table("fhir", "Patient").await.unwrap();
    let ident = Lake::table_ident("fhir", "Patient");
    let commits = DEFAULT_SNAPSHOTS_TO_KEEP + 5;
    let mut first = Vec::new();
    for i in 0..commits {
        let changes = TableChanges {
            added_data: vec![patient_file(&table, &format!("p{i}")).await],
            ..Default::default()
        };
        let t = inst
            .lake
            .committer()
            .commit(&ident, &changes)
            .await
            .unwrap();
        if i < 5 {
            first.push(t.metadata().current_snapshot_id().unwrap());
        }
    }
    let table = inst.lake.table("fhir", "Patient").await.unwrap().unwrap();
    let metadata = table.metadata();
    // The metadata (read and rewritten by every commit) stops growing at the retention...
    assert_eq!(metadata.snapshots().count(), DEFAULT_SNAPSHOTS_TO_KEEP);
    assert!(
        first
            .iter()
            .all(|id| metadata.snapshot_by_id(*id).is_none())
    );
    // ...while the current snapshot still has every row, and its totals are carried over.
    assert_eq!(scan_ids(&inst, "fhir", "Patient").await.len(), commits);
    let summary = metadata.current_snapshot().unwrap().summary();
    assert_eq!(
        summary.additional_properties["total-records"],
        commits.to_string()
    );
    // The history names only snapshots the table still has.
    assert!(
        metadata
            .history()
            .iter()
            .all(|e| metadata.snapshot_by_id(e.snapshot_id).is_some())
    );
}

#[tokio::test]
async fn concurrent_commits_to_one_table_all_land() {
    use fhirlake::lake::{Lake, TableChanges};
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let table = inst.lake.ensure_table("fhir", "Patient").await.unwrap();
    let ident = Lake::table_ident("fhir", "Patient");
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (lake, table, ident) = (inst.lake.clone(), table.clone(), ident.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let changes = TableChanges {
                    added_data: vec![patient_file(&table, &format!("w{worker}-{i}")).await],
                    ..Default::default()
                };
                lake.committer().commit(&ident, &changes).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Compare-and-set with retries: no commit is lost, every snapshot builds on the previous.
    let table = inst.lake.table("fhir", "Patient").await.unwrap().unwrap();
    assert_eq!(table.metadata().snapshots().count(), 20);
    assert_eq!(scan_ids(&inst, "fhir", "Patient").await.len(), 20);
    let summary = table.metadata().current_snapshot().unwrap().summary();
    assert_eq!(summary.additional_properties["total-records"], "20");
}

/// Committers racing to create the same table (a server's sync and a CLI import) all get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_table_creation_converges() {
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    let creators: Vec<_> = (0..8)
        .map(|_| {
            let lake = inst.lake.clone();
            let name = ds.name.clone();
            tokio::spawn(async move { lake.ensure_table(&name, "Patient").await })
        })
        .collect();
    let mut locations = std::collections::HashSet::new();
    for c in creators {
        let table = c.await.unwrap().expect("every creator gets the table");
        locations.insert(table.identifier().to_string());
    }
    assert_eq!(locations.len(), 1);
    assert_eq!(inst.lake.table_names(&ds.name).await.unwrap(), ["patient"]);
}

/// Two processes syncing and compacting the same table at once (a server's background sync
/// and a CLI `import` or `compact` on one data directory): every change lands exactly once
/// and the row index stays right, so later replacements still leave one row per id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_syncs_and_compactions_apply_each_change_once() {
    use fhirlake::lake::compact::{CompactionPolicy, compact_table};
    use fhirlake::lake::sync::sync_table;
    let dir = tempfile::tempdir().unwrap();
    let a = Installation::open(dir.path()).await.unwrap();
    let b = Installation::open(dir.path()).await.unwrap();
    let ds = a.datastore(None).await.unwrap();
    let tiny = BatchLimits {
        max_changes: 40,
        max_json_bytes: 1 << 30,
    };
    let ids: Vec<String> = (0..200).map(|i| format!("p{i}")).collect();
    for round in 1..=3i64 {
        let writes = ids
            .iter()
            .map(|id| NewResource {
                resource_type: "Patient".into(),
                id: id.clone(),
                json: Some(format!(
                    r#"{{"resourceType":"Patient","id":"{id}","birthDate":"19{:02}-01-01"}}"#,
                    round
                )),
            })
            .collect();
        a.store.put_resources(&ds.id, writes).await.unwrap();
        let sync = |inst: &Installation| {
            let (store, lake, ds) = (inst.store.clone(), inst.lake.clone(), ds.clone());
            tokio::spawn(async move { sync_table(&store, &lake, &ds, "Patient", tiny).await })
        };
        let compact = {
            let (store, lake, ds) = (b.store.clone(), b.lake.clone(), ds.clone());
            tokio::spawn(async move {
                let policy = CompactionPolicy::default();
                compact_table(&store, &lake, &ds, "Patient", policy, true).await
            })
        };
        let (s1, s2) = (sync(&a), sync(&b));
        let (s1, s2) = (s1.await.unwrap().unwrap(), s2.await.unwrap().unwrap());
        compact.await.unwrap().unwrap();
        assert_eq!(
            s1.rows_written + s2.rows_written,
            ids.len(),
            "round {round}: each change is applied by exactly one of the syncs"
        );
        let rows = scan_ids(&a, "fhir", "Patient").await;
        assert_eq!(rows.len(), ids.len(), "round {round}: one row per id");
        assert!(rows.iter().all(|(_, v)| *v == round), "round {round}");
    }
}

/// A commit computed against an older snapshot is refused, not rebased: its position
/// deletes would name rows of files it never saw.
#[tokio::test]
async fn a_stale_commit_is_refused() {
    use fhirlake::lake::{Base, CommitError, Lake, TableChanges};
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    let table = inst.lake.ensure_table("fhir", "Patient").await.unwrap();
    let ident = Lake::table_ident("fhir", "Patient");
    let first = TableChanges {
        added_data: vec![patient_file(&table, "a").await],
        base: Base::Snapshot(None),
        ..Default::default()
    };
    let committed = inst.lake.committer().commit(&ident, &first).await.unwrap();
    let stale = TableChanges {
        added_data: vec![patient_file(&table, "b").await],
        base: Base::Snapshot(None),
        ..Default::default()
    };
    match inst.lake.committer().commit(&ident, &stale).await {
        Err(CommitError::Stale {
            expected, found, ..
        }) => {
            assert_eq!(expected, None);
            assert_eq!(found, committed.metadata().current_snapshot_id());
        }
        other => panic!("expected a stale-commit error, got {other:?}"),
    }
    let ids: Vec<String> = scan_ids(&inst, "fhir", "Patient")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["a"], "nothing of the stale commit is visible");
}

/// SQL over the lake reads only the nested fields a query uses, and never less than it
/// returns: a column output whole (by `*`, by name, through DISTINCT) stays whole even when
/// a filter reaches into it; deleted rows stay invisible in narrowed scans.
#[tokio::test]
async fn sql_reads_only_the_nested_fields_a_query_uses() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int64Type};
    use fhirlake::lake::provider::LakeTable;
    use fhirlake::sql::SqlEngine;

    use fhirlake::schema::Registry;
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inst = Installation::open(dir.path()).await.unwrap();
    for t in ["Patient", "Condition"] {
        import_file(&inst, &data.join(format!("synthea-r4-100p/{t}.ndjson.gz"))).await;
    }
    let engine = SqlEngine::new().unwrap();
    engine
        .register_datastore("fhir", LakeTable::all_types(&inst.lake, "fhir"))
        .unwrap();
    engine.set_current_datastore("fhir").unwrap();
    let text = |batches: Vec<arrow::array::RecordBatch>| {
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    };
    let count = |batches: &[arrow::array::RecordBatch]| {
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    };

    // The plan reads one leaf of `code` and one of `subject`, not the whole structs.
    let plan = text(
        engine
            .collect(
                "EXPLAIN SELECT code.coding[1].code FROM condition \
                 WHERE subject.reference LIKE 'Patient/%'",
            )
            .await
            .unwrap(),
    );
    assert!(plan.contains("LakeScanExec"), "{plan}");
    assert!(plan.contains("leaves=2,"), "{plan}");

    // Row groups whose statistics rule a filter out are not read; the filter still applies.
    let plan = text(
        engine
            .collect("EXPLAIN SELECT id FROM patient WHERE id = 'zzzz-no-such-patient'")
            .await
            .unwrap(),
    );
    assert!(plan.contains("rows=0"), "{plan}");
    let first = scan_ids(&inst, "fhir", "Patient").await[0].0.clone();
    let one = engine
        .collect(&format!(
            "SELECT count(*) FROM patient WHERE id = '{first}'"
        ))
        .await
        .unwrap();
    assert_eq!(count(&one), 1);

    // `x IS NOT NULL` reads one leaf of x, and agrees with counting x read whole.
    let plan = text(
        engine
            .collect("EXPLAIN SELECT count(*) FROM condition WHERE code IS NOT NULL")
            .await
            .unwrap(),
    );
    assert!(plan.contains("leaves=1,"), "{plan}");
    let present = count(
        &engine
            .collect(
                "SELECT count(*) FROM condition WHERE code IS NOT NULL AND abatementperiod IS NULL",
            )
            .await
            .unwrap(),
    );
    let counted = count(
        &engine
            .collect("SELECT count(code) FROM condition WHERE abatementperiod IS NULL")
            .await
            .unwrap(),
    );
    assert!(present > 0);
    assert_eq!(present, counted);

    // Narrowed and whole reads agree.
    let narrowed = count(
        &engine
            .collect(
                "SELECT count(*) FROM condition WHERE code.coding[1].code IS NOT NULL \
                 AND subject.reference LIKE 'Patient/%'",
            )
            .await
            .unwrap(),
    );
    let whole = count(
        &engine
            .collect(
                "SELECT count(*) FROM condition WHERE code IS NOT NULL AND subject IS NOT NULL",
            )
            .await
            .unwrap(),
    );
    assert!(narrowed > 0);
    assert_eq!(narrowed, whole);

    // A filter into `name` must not narrow the `name` the query returns.
    let full_name = Registry::global()
        .get("Patient")
        .unwrap()
        .arrow_schema()
        .field_with_name("name")
        .unwrap()
        .data_type()
        .clone();
    let field_count = |t: &DataType| match t {
        DataType::List(e) => match e.data_type() {
            DataType::Struct(f) => f.len(),
            _ => 0,
        },
        _ => 0,
    };
    for sql in [
        "SELECT * FROM patient WHERE name[1].family IS NOT NULL",
        "SELECT name FROM patient WHERE name[1].family IS NOT NULL",
        "SELECT d.name FROM (SELECT DISTINCT name FROM patient) d WHERE d.name[1].family IS NOT NULL",
    ] {
        let batches = engine.collect(sql).await.unwrap();
        let schema = batches[0].schema();
        let name = schema.field_with_name("name").unwrap();
        assert_eq!(
            field_count(name.data_type()),
            field_count(&full_name),
            "{sql}"
        );
        assert!(
            batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0,
            "{sql}"
        );
    }

    // Columns passed through a UNION are narrowed alike on both sides, or not at all.
    let conditions = count(
        &engine
            .collect("SELECT count(*) FROM condition")
            .await
            .unwrap(),
    );
    for sql in [
        "SELECT count(*) FROM (SELECT code FROM condition UNION ALL SELECT code FROM condition) t \
         WHERE t.code.coding[1].code IS NOT NULL",
        "SELECT count(*) FROM (SELECT code, subject FROM condition UNION ALL \
         SELECT code, subject FROM condition WHERE subject.reference IS NOT NULL) t \
         WHERE t.code.text IS NOT NULL OR t.subject.reference IS NOT NULL",
    ] {
        let batches = engine.collect(sql).await.unwrap();
        assert_eq!(count(&batches), 2 * conditions, "{sql}");
    }

    // Deleting a patient hides its row from narrowed scans too.
    let ds = inst.datastore(None).await.unwrap();
    let before = count(
        &engine
            .collect("SELECT count(*) FROM patient WHERE name[1].family IS NOT NULL")
            .await
            .unwrap(),
    );
    let victim = scan_ids(&inst, "fhir", "Patient").await[0].0.clone();
    delete_and_sync(&inst, &ds, "Patient", &victim).await;
    let after = engine
        .collect(&format!(
            "SELECT count(*) FROM patient WHERE name[1].family IS NOT NULL AND id = '{victim}'"
        ))
        .await
        .unwrap();
    assert_eq!(count(&after), 0);
    let remaining = engine
        .collect("SELECT count(*) FROM patient WHERE name[1].family IS NOT NULL")
        .await
        .unwrap();
    assert_eq!(count(&remaining), before - 1);
    let names = engine
        .collect("SELECT name[1].given[1] FROM patient")
        .await
        .unwrap();
    assert!(!names[0].column(0).is_empty());
}
