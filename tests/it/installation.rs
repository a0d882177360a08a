//! An installation keeps the warehouse it was created with (fhirlake.json), wherever it is.

use fhirlake::installation::{CONFIG_FILE, Installation, InstallationError};
use fhirlake::lake::Warehouse;

fn sample_patients() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea3-10p/Patient.000.ndjson.gz")
}

#[tokio::test]
async fn a_new_installation_records_its_warehouse_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("inst");
    let elsewhere = dir.path().join("tables");
    let chosen = Warehouse::Local(elsewhere.clone());

    let inst = Installation::open_with(&data, Some(&chosen)).await.unwrap();
    let ds = inst.datastore(None).await.unwrap();
    crate::common::import_and_sync(&inst, &ds, &sample_patients()).await;
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"warehouse": format!("file://{}", elsewhere.display())})
    );
    let metadata = std::fs::read_dir(elsewhere.join("fhir/patient/metadata")).unwrap();
    assert!(
        metadata.count() > 0,
        "the table lives in the chosen warehouse"
    );
    assert!(!data.join("warehouse").exists());
    drop(inst);

    // Reopened without naming it: the recorded warehouse, with its table.
    let inst = Installation::open(&data).await.unwrap();
    assert_eq!(inst.lake.warehouse().uri(), chosen.uri());
    assert!(inst.lake.table("fhir", "Patient").await.unwrap().is_some());
    drop(inst);

    // Another warehouse is refused, naming both.
    let other = Warehouse::parse("s3://some-bucket/wh").unwrap();
    let err = Installation::open_with(&data, Some(&other))
        .await
        .err()
        .expect("a second warehouse is refused");
    assert!(matches!(err, InstallationError::WarehouseMoved { .. }));
    let message = err.to_string();
    assert!(message.contains("s3://some-bucket/wh") && message.contains("tables"));

    // Dropping the data store deletes its files from that warehouse.
    let inst = Installation::open(&data).await.unwrap();
    inst.lake.drop_datastore("fhir").await.unwrap();
    assert!(!elsewhere.join("fhir").exists());
}

#[tokio::test]
async fn an_existing_installation_without_settings_keeps_the_default_directory() {
    let dir = tempfile::tempdir().unwrap();
    drop(Installation::open(dir.path()).await.unwrap());
    let default = Warehouse::Local(dir.path().join("warehouse"));
    assert!(
        Installation::open_with(dir.path(), Some(&default))
            .await
            .is_ok()
    );
    let err = Installation::open_with(dir.path(), Some(&Warehouse::Local(dir.path().join("x"))))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, InstallationError::WarehouseMoved { .. }));
    assert!(!dir.path().join(CONFIG_FILE).exists());
}

#[tokio::test]
async fn a_malformed_settings_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        r#"{"warehouse": "s3://lake/wh", "wharehouse_properties": {}}"#,
    )
    .unwrap();
    let err = Installation::open(dir.path()).await.err().expect("refused");
    let message = err.to_string();
    assert!(
        message.contains(CONFIG_FILE) && message.contains("wharehouse_properties"),
        "{message}"
    );
    std::fs::write(dir.path().join(CONFIG_FILE), r#"{"warehouse": "gs://b/p"}"#).unwrap();
    let message = Installation::open(dir.path())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("'gs'"), "{message}");
}
