//! The audit log: a scripted REST session against the real server, then the log on disk,
//! `fhirlake audit verify` (intact, then after an edit), and the log as a SQL table.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::api::TestServer;
use crate::common::run_cli;

/// The calls of the session, answered as expected.
async fn scripted_session(server: &TestServer) -> String {
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Audit"}]});
    let (status, _, created) = server.post("Patient", &patient).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(server.get(&format!("Patient/{id}")).await.0, StatusCode::OK);
    assert_eq!(server.get("Patient?family=Audit").await.0, StatusCode::OK);
    let deleted = server.delete(&format!("Patient/{id}")).await.0;
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    let missing = server.get("Patient/no-such-patient").await.0;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    id
}

/// AuditEvents may be created, never replaced or deleted.
async fn audit_events_are_immutable(server: &TestServer) {
    let event = json!({
        "resourceType": "AuditEvent",
        "id": "ae-1",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2024-01-01T00:00:00Z",
        "agent": [{"requestor": true}],
        "source": {"observer": {"display": "fhirlake"}}
    });
    let (status, _, body) = server.put("AuditEvent/ae-1", &event).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = server.put("AuditEvent/ae-1", &event).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(
        body.to_string()
            .contains("AuditEvent resources are immutable")
    );
    let (status, _, _) = server.delete("AuditEvent/ae-1").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = server.get("AuditEvent/ae-1").await;
    assert_eq!(status, StatusCode::OK, "the refused delete left it");
}

fn records(dir: &Path) -> (std::path::PathBuf, Vec<Value>) {
    let file = dir.join("audit").join("audit-000001.ndjson");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (file, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_is_audited_and_the_chain_detects_an_edit() {
    let server = TestServer::default().await;
    let ds_id = server.base.rsplit('/').nth(1).unwrap().to_string();
    let id = scripted_session(&server).await;
    audit_events_are_immutable(&server).await;
    let dir = server.stop().await;

    let (file, records) = records(dir.path());
    let calls: Vec<(&str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("CreateResource", 201),
            ("ReadResource", 200),
            ("SearchWithGet", 200),
            ("DeleteResource", 204),
            ("ReadResource", 404),
            ("UpdateResource", 201),
            ("UpdateResource", 405),
            ("DeleteResource", 405),
            ("ReadResource", 200),
        ]
    );
    let read = &records[1];
    assert_eq!(read["resource_type"], "Patient");
    assert_eq!(read["resource_id"], id.as_str());
    assert_eq!(read["datastore_id"], ds_id.as_str());
    assert_eq!(read["principal"], "anonymous");
    assert_eq!(read["outcome"], "success");
    assert!(read["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(records[4]["outcome"], "client-error");
    assert_eq!(records[1]["prev_hash"], records[0]["hash"]);

    let (ok, out, err) = run_cli(dir.path(), &["audit", "verify"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("9 records"), "{out}");

    let (ok, out, err) = run_cli(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT operation, count(*) AS n FROM fhirlake_audit.log GROUP BY 1 ORDER BY 1",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("ReadResource") && out.contains("CreateResource"),
        "{out}"
    );

    // Change the status of the third record (the search) by hand.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(lines[2].contains("\"status\":200"));
    lines[2] = lines[2].replace("\"status\":200", "\"status\":500");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let (ok, out, err) = run_cli(dir.path(), &["audit", "verify"]);
    assert!(!ok, "an edited log verifies: {out}{err}");
    assert!(out.contains("audit-000001.ndjson:3"), "{out}");
    assert!(out.contains("hash mismatch"), "{out}");
}

/// Flight SQL statements are recorded by the SHA-256 of their text, and the log is a table
/// Flight SQL can query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_statements_are_audited_by_hash() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use fhirlake::flight::{FlightSqlConfig, FlightSqlServer};
    use futures::TryStreamExt;
    use sha2::{Digest, Sha256};

    let dir = tempfile::tempdir().unwrap();
    let inst = fhirlake::installation::Installation::open(dir.path())
        .await
        .unwrap();
    inst.datastore(None).await.unwrap();
    let registry = fhirlake::registry::Registry::open(inst, std::time::Duration::from_millis(500))
        .await
        .unwrap();
    let audit = registry.enable_audit().unwrap();
    let config = FlightSqlConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..FlightSqlConfig::default()
    };
    let server = FlightSqlServer::bind(registry, config).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut client = FlightSqlServiceClient::new(channel);
    let sql = "SELECT operation FROM fhirlake_audit.log";
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let _: Vec<_> = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    audit.flush().await;

    let (_, records) = records(dir.path());
    let statement = records.last().unwrap();
    assert_eq!(statement["operation"], "FlightSqlStatement");
    assert_eq!(statement["outcome"], "success");
    assert_eq!(statement["principal"], "anonymous");
    let hash = hex_of(&Sha256::digest(sql.as_bytes()));
    assert_eq!(statement["sql_sha256"], hash.as_str());
    assert!(!statement.to_string().contains("fhirlake_audit.log"));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
