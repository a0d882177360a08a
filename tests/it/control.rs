//! The control plane over real HTTP on loopback: AWS JSON 1.0 requests as an AWS SDK sends
//! them (boto3 itself drives the same operations in tests/interop/test_control.py).

use std::time::Duration;

use fhirlake::api::{ApiConfig, Server};
use fhirlake::control::{ControlConfig, ControlPlane};
use fhirlake::installation::Installation;
use serde_json::{Value, json};

use crate::common::run_cli;

struct Control {
    root: String,
    http: reqwest::Client,
    inst: Installation,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), fhirlake::api::ServeError>>>,
}

impl Control {
    async fn start(config: impl FnOnce(&std::path::Path) -> ControlConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inst = Installation::open(&dir.path().join("inst")).await.unwrap();
        let mut server = Server::bind(
            inst.clone(),
            "127.0.0.1:0".parse().unwrap(),
            ApiConfig::default(),
        )
        .await
        .unwrap();
        let plane = ControlPlane::new(
            server.state().registry().clone(),
            server.state().origin().clone(),
            config(dir.path()),
        );
        server.add_routes(fhirlake::control::bulk::router(plane.clone()));
        server.add_routes(fhirlake::control::wire::router(plane));
        let root = format!("http://{}", server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            root,
            http: reqwest::Client::new(),
            inst,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Sends one operation; returns the HTTP status and the JSON body.
    async fn call(&self, operation: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/", self.root))
            .header("X-Amz-Target", format!("HealthLake.{operation}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(
            r.headers()["content-type"],
            "application/x-amz-json-1.0",
            "{operation}"
        );
        (status, r.json().await.unwrap())
    }

    async fn ok(&self, operation: &str, body: Value) -> Value {
        let (status, out) = self.call(operation, body).await;
        assert_eq!(status, 200, "{operation}: {out}");
        out
    }

    async fn error(&self, operation: &str, body: Value) -> (u16, String, String) {
        let (status, out) = self.call(operation, body).await;
        assert_ne!(status, 200, "{operation} succeeded: {out}");
        (
            status,
            out["__type"].as_str().unwrap().to_string(),
            out["message"].as_str().unwrap().to_string(),
        )
    }

    async fn wait_status(&self, id: &str, want: &str) -> Value {
        for _ in 0..600 {
            let out = self
                .ok("DescribeFHIRDatastore", json!({"DatastoreId": id}))
                .await;
            if out["DatastoreProperties"]["DatastoreStatus"] == want {
                return out["DatastoreProperties"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("data store {id} never became {want}");
    }

    async fn wait_job(&self, ds: &str, job: &str) -> Value {
        for _ in 0..1200 {
            let out = self
                .ok(
                    "DescribeFHIRImportJob",
                    json!({"DatastoreId": ds, "JobId": job}),
                )
                .await;
            let p = out["ImportJobProperties"].clone();
            if p["JobStatus"] != "SUBMITTED" && p["JobStatus"] != "IN_PROGRESS" {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {job} never ended");
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

fn open_config(dir: &std::path::Path) -> ControlConfig {
    ControlConfig {
        allowed_roots: vec![fhirlake::control::location::Root::Local(dir.join("bucket"))],
        create_delete_interval: None,
        max_datastores: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_store_life_cycle_and_import_job() {
    let c = Control::start(open_config).await;

    let created = c
        .ok(
            "CreateFHIRDatastore",
            json!({"DatastoreName": "Cohort A", "DatastoreTypeVersion": "R4",
                   "Tags": [{"Key": "team", "Value": "research"}], "ClientToken": "t-1"}),
        )
        .await;
    let id = created["DatastoreId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        created["DatastoreArn"],
        format!("arn:aws:healthlake:us-east-1:000000000000:datastore/fhir/{id}")
    );
    let again = c
        .ok(
            "CreateFHIRDatastore",
            json!({"DatastoreTypeVersion": "R4", "ClientToken": "t-1"}),
        )
        .await;
    assert_eq!(again["DatastoreId"], created["DatastoreId"]);
    let props = c.wait_status(&id, "ACTIVE").await;
    assert_eq!(props["DatastoreName"], "Cohort A");
    assert_eq!(props["DatastoreTypeVersion"], "R4");
    let base = props["DatastoreEndpoint"].as_str().unwrap().to_string();
    assert!(base.ends_with(&format!("/datastore/{id}/r4/")), "{base}");

    // The new store is served at once, and is its own SQL schema.
    let r = c.http.get(format!("{base}metadata")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ds = c.inst.store.datastore(&id).await.unwrap();
    assert_eq!(ds.name, "cohort_a");

    // An import job: ACC-28's lines 3 and 5 bad, the others good.
    let bucket = c.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("in")).unwrap();
    let lines = crate::common::gz_lines(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/synthea-r4-100p/Patient.ndjson.gz"),
    );
    let mut text = String::new();
    for (i, line) in lines.iter().take(6).enumerate() {
        let line = match i + 1 {
            3 => "{not json".to_string(),
            5 => line.replacen("\"gender\":", "\"xgender\":", 1),
            _ => line.clone(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(bucket.join("in/p.ndjson"), text).unwrap();
    let start = |input: String, output: String| {
        json!({"DatastoreId": id, "JobName": "first", "ClientToken": "job-1",
               "InputDataConfig": {"S3Uri": input},
               "JobOutputDataConfig": {"S3Configuration": {"S3Uri": output, "KmsKeyId": "k"}},
               "DataAccessRoleArn": "arn:aws:iam::000000000000:role/r"})
    };
    let input = format!("file://{}/in/", bucket.display());
    let output = format!("file://{}/out/", bucket.display());
    let job = c
        .ok("StartFHIRImportJob", start(input.clone(), output.clone()))
        .await;
    assert_eq!(job["JobStatus"], "SUBMITTED");
    assert_eq!(job["DatastoreId"], id.as_str());
    let job_id = job["JobId"].as_str().unwrap().to_string();
    let p = c.wait_job(&id, &job_id).await;
    assert_eq!(p["JobStatus"], "COMPLETED_WITH_ERRORS", "{p}");
    assert_eq!(p["JobName"], "first");
    assert_eq!(p["JobProgressReport"]["TotalNumberOfResourcesImported"], 4);
    assert_eq!(
        p["JobProgressReport"]["TotalNumberOfResourcesWithCustomerError"],
        2
    );
    assert!(p["EndTime"].as_f64().unwrap() >= p["SubmitTime"].as_f64().unwrap());
    let out_dir = bucket.join(format!("out/{id}-FHIR_IMPORT-{job_id}"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["numberOfResourcesImportedSuccessfully"], 4);
    let failures = std::fs::read_to_string(out_dir.join("FAILURE/p.ndjson")).unwrap();
    let ids: Vec<u64> = failures
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["lineId"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [3, 5]);
    // Done means readable over REST and in the lake.
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    let r = c
        .http
        .get(format!("{base}Patient/{}", first["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = crate::common::scan_ids(&c.inst, "cohort_a", "Patient").await;
    assert_eq!(rows.len(), 4);
    let same = c
        .ok("StartFHIRImportJob", start(input.clone(), output.clone()))
        .await;
    assert_eq!(
        same["JobId"],
        job_id.as_str(),
        "ClientToken makes it idempotent"
    );
    let listed = c
        .ok(
            "ListFHIRImportJobs",
            json!({"DatastoreId": id, "JobStatus": "COMPLETED_WITH_ERRORS"}),
        )
        .await;
    assert_eq!(
        listed["ImportJobPropertiesList"].as_array().unwrap().len(),
        1
    );

    // Locations outside the allowed roots are refused, local or S3 (only a local root is
    // configured here; tests/interop/test_s3.py covers S3 roots).
    let untokened = |input: &str| {
        let mut req = start(input.to_string(), output.clone());
        req.as_object_mut().unwrap().remove("ClientToken");
        req
    };
    let (status, kind, _) = c
        .error("StartFHIRImportJob", untokened("file:///etc/"))
        .await;
    assert_eq!((status, kind.as_str()), (400, "AccessDeniedException"));
    let (_, kind, message) = c
        .error("StartFHIRImportJob", untokened("s3://bucket/x/"))
        .await;
    assert_eq!(kind, "AccessDeniedException");
    assert!(message.contains("s3://bucket/x/"), "{message}");

    // Tags.
    let arn = created["DatastoreArn"].clone();
    c.ok(
        "TagResource",
        json!({"ResourceARN": arn, "Tags": [{"Key": "owner", "Value": "me"}]}),
    )
    .await;
    c.ok(
        "UntagResource",
        json!({"ResourceARN": arn, "TagKeys": ["team"]}),
    )
    .await;
    let tags = c
        .ok("ListTagsForResource", json!({"ResourceARN": arn}))
        .await;
    assert_eq!(tags["Tags"], json!([{"Key": "owner", "Value": "me"}]));
    let (_, kind, _) = c
        .error(
            "TagResource",
            json!({"ResourceARN": arn, "Tags": [{"Key": "aws:reserved", "Value": "x"}]}),
        )
        .await;
    assert_eq!(kind, "ValidationException");

    // Quota: 3 (the default store, this one and one more).
    c.ok(
        "CreateFHIRDatastore",
        json!({"DatastoreName": "b", "DatastoreTypeVersion": "R4"}),
    )
    .await;
    let (_, kind, message) = c
        .error(
            "CreateFHIRDatastore",
            json!({"DatastoreName": "c", "DatastoreTypeVersion": "R4"}),
        )
        .await;
    assert_eq!(kind, "ValidationException");
    assert!(message.contains("quota"), "{message}");

    // Delete: DELETING, then DELETED and still describable; the endpoint 404s; files purged.
    let deleted = c
        .ok("DeleteFHIRDatastore", json!({"DatastoreId": id}))
        .await;
    assert_eq!(deleted["DatastoreStatus"], "DELETING");
    c.wait_status(&id, "DELETED").await;
    let r = c.http.get(format!("{base}metadata")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        !c.dir.path().join("inst/warehouse/cohort_a").exists(),
        "the Iceberg namespace's files are purged"
    );
    let (_, kind, _) = c
        .error("DeleteFHIRDatastore", json!({"DatastoreId": id}))
        .await;
    assert_eq!(kind, "ConflictException");
    let active = c
        .ok(
            "ListFHIRDatastores",
            json!({"Filter": {"DatastoreStatus": "ACTIVE"}}),
        )
        .await;
    assert!(
        active["DatastorePropertiesList"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["DatastoreId"] != id.as_str())
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_aws_shaped_errors() {
    let c = Control::start(|dir| ControlConfig {
        create_delete_interval: Some(Duration::from_secs(60)),
        ..open_config(dir)
    })
    .await;
    let (status, kind, message) = c
        .error(
            "DescribeFHIRDatastore",
            json!({"DatastoreId": "0".repeat(32)}),
        )
        .await;
    assert_eq!((status, kind.as_str()), (400, "ResourceNotFoundException"));
    assert!(message.contains(&"0".repeat(32)), "{message}");
    let (_, kind, message) = c
        .error("CreateFHIRDatastore", json!({"DatastoreTypeVersion": "R5"}))
        .await;
    assert_eq!(kind, "ValidationException");
    assert!(message.contains("[R4]"), "{message}");
    let (_, kind, _) = c.error("CreateFHIRDatastore", json!({})).await;
    assert_eq!(kind, "ValidationException");
    let (_, kind, _) = c.error("NoSuchOperation", json!({})).await;
    assert_eq!(kind, "ValidationException");
    let r = c
        .http
        .post(format!("{}/", c.root))
        .header("X-Amz-Target", "HealthLake.ListFHIRDatastores")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["__type"], "ValidationException");
    // One create per minute.
    c.ok(
        "CreateFHIRDatastore",
        json!({"DatastoreName": "one", "DatastoreTypeVersion": "R4"}),
    )
    .await;
    let (_, kind, _) = c
        .error(
            "CreateFHIRDatastore",
            json!({"DatastoreName": "two", "DatastoreTypeVersion": "R4"}),
        )
        .await;
    assert_eq!(kind, "ThrottlingException");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_required_when_keys_are_configured() {
    let c = Control::start(|dir| ControlConfig {
        access_key: Some(fhirlake::auth::sigv4::AccessKey {
            id: "AKID".into(),
            secret: "secret".into(),
        }),
        ..open_config(dir)
    })
    .await;
    let (status, kind, _) = c.error("ListFHIRDatastores", json!({})).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "MissingAuthenticationTokenException")
    );
    let r = c
        .http
        .post(format!("{}/", c.root))
        .header("X-Amz-Target", "HealthLake.ListFHIRDatastores")
        .header(
            "X-Amz-Date",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        )
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/healthlake/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=0000",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["__type"], "InvalidSignatureException");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_requests_are_refused_off_loopback_without_keys() {
    let c = Control::start(|dir| ControlConfig {
        open: false,
        ..open_config(dir)
    })
    .await;
    let (status, kind, message) = c.error("ListFHIRDatastores", json!({})).await;
    assert_eq!((status, kind.as_str()), (400, "AccessDeniedException"));
    assert!(message.contains("--aws-access-key-id"), "{message}");
    c.stop().await;
}

/// `fhirlake datastore ...`: the same operations in-process, printing the response body.
#[test]
fn the_cli_creates_lists_tags_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| run_cli(dir.path(), args);
    let (ok, out, err) = run(&[
        "datastore",
        "create",
        "--name",
        "cli",
        "--tag",
        "team=a",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["DatastoreId"].as_str().unwrap();
    assert!(err.contains("is now ACTIVE"), "{err}");
    let (ok, out, _) = run(&["datastore", "list"]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with(id)).expect(&out);
    assert!(line.contains("cli") && line.contains("ACTIVE"), "{line}");
    let (ok, _, _) = run(&["datastore", "tag", id, "owner=me"]);
    assert!(ok);
    let (_, out, _) = run(&["datastore", "tags", id, "--output", "json"]);
    let tags: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        tags,
        json!({"Tags": [{"Key": "owner", "Value": "me"}, {"Key": "team", "Value": "a"}]})
    );
    let (ok, _, err) = run(&["datastore", "delete", id]);
    assert!(ok && err.contains("is now DELETED"), "{err}");
    let (ok, _, err) = run(&["datastore", "describe", "f".repeat(32).as_str()]);
    assert!(!ok);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
}

/// A data store created as `bar-store` answers to that name, its SQL name and its id in
/// every command, and creating it makes no other data store.
#[test]
fn every_command_resolves_a_data_store_by_its_creation_name_sql_name_or_id() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| run_cli(dir.path(), args);
    let (ok, out, err) = run(&[
        "datastore",
        "create",
        "--name",
        "bar-store",
        "--output",
        "json",
    ]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["DatastoreId"].as_str().unwrap().to_string();
    let (_, out, _) = run(&["datastore", "list", "--output", "json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed["DatastorePropertiesList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["DatastoreName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bar-store"], "no unrequested default data store");
    for reference in ["bar-store", "bar_store", id.as_str()] {
        let (ok, out, err) = run(&[
            "sql",
            "--datastore",
            reference,
            "-e",
            "SELECT 1 AS one",
            "--format",
            "csv",
        ]);
        assert!(ok, "sql --datastore {reference}: {err}");
        assert_eq!(out.trim(), "one\n1", "{reference}");
    }
    let (ok, _, err) = run(&["sql", "--datastore", "nope", "-e", "SELECT 1"]);
    assert!(
        !ok && err.contains("no data store named or with id 'nope'"),
        "{err}"
    );
}

/// FHIR Bulk Data `$export` and the SDK's export jobs on the same machinery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_over_rest_and_the_sdk() {
    let c = Control::start(open_config).await;
    let ds = c.inst.datastore(None).await.unwrap();
    crate::common::import_and_sync(
        &c.inst,
        &ds,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/synthea-r4-100p"),
    )
    .await;
    let counts: std::collections::BTreeMap<String, i64> = c
        .inst
        .store
        .current_counts(&ds.id)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let base = format!("{}/datastore/{}/r4/", c.root, ds.id);

    // Kick-off rules.
    let r = c.http.get(format!("{base}$export")).send().await.unwrap();
    assert_eq!(r.status(), 400, "Prefer: respond-async is required");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    let kick = |url: String| {
        c.http
            .get(url)
            .header("Prefer", "respond-async")
            .header("Accept", "application/fhir+json")
    };
    let r = kick(format!("{base}$export?_outputFormat=text/csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = kick(format!("{base}$export?_type=Nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = kick(format!("{base}Group/none/$export"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // System level with _type: 202 + Content-Location, then the manifest.
    let r = kick(format!(
        "{base}$export?_type=Patient,Condition&_outputFormat=application/fhir%2Bndjson"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jobStatus"], "SUBMITTED");
    assert!(location.ends_with(&format!("/export/{}", body["jobId"].as_str().unwrap())));
    let manifest = loop {
        let r = c.http.get(&location).send().await.unwrap();
        match r.status().as_u16() {
            202 => {
                assert!(r.headers().contains_key("x-progress"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => break r.json::<Value>().await.unwrap(),
            other => panic!("status {other}: {}", r.text().await.unwrap()),
        }
    };
    assert_eq!(manifest["requiresAccessToken"], false);
    assert!(
        manifest["request"]
            .as_str()
            .unwrap()
            .contains("$export?_type=Patient,Condition")
    );
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    let output = manifest["output"].as_array().unwrap();
    let types: std::collections::BTreeSet<&str> =
        output.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Condition", "Patient"].into_iter().collect());
    for o in output {
        let text = c
            .http
            .get(o["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap());
        assert!(lines.iter().all(|l| l["resourceType"] == o["type"]));
        assert_eq!(lines.len() as i64, counts[o["type"].as_str().unwrap()]);
    }
    // Cancelling a finished job: HealthLake's "Interaction not supported."
    let r = c.http.delete(&location).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Interaction not supported.")
    );

    // Patient level.
    let r = kick(format!("{base}Patient/$export?_type=Patient,Organization"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let manifest = loop {
        let r = c.http.get(&location).send().await.unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Patient"],
        "Organization is not in the Patient compartment"
    );

    // The SDK's StartFHIRExportJob into an allowed location; it is listed with the REST jobs.
    let bucket = c.dir.path().join("bucket/exports");
    std::fs::create_dir_all(&bucket).unwrap();
    let job = c
        .ok(
            "StartFHIRExportJob",
            json!({"DatastoreId": ds.id, "JobName": "all",
                   "OutputDataConfig": {"S3Configuration": {"S3Uri": format!("file://{}/", bucket.display()), "KmsKeyId": "k"}},
                   "DataAccessRoleArn": "arn:aws:iam::000000000000:role/r"}),
        )
        .await;
    let job_id = job["JobId"].as_str().unwrap().to_string();
    let props = loop {
        let out = c
            .ok(
                "DescribeFHIRExportJob",
                json!({"DatastoreId": ds.id, "JobId": job_id}),
            )
            .await;
        let p = out["ExportJobProperties"].clone();
        if p["JobStatus"] != "SUBMITTED" && p["JobStatus"] != "IN_PROGRESS" {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(props["JobStatus"], "COMPLETED", "{props}");
    assert_eq!(props["JobName"], "all");
    let dir = bucket.join(format!("{}-FHIR_EXPORT-{job_id}", ds.id));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["numberOfResourcesExported"].as_i64().unwrap(),
        counts.values().sum::<i64>()
    );
    let listed = c
        .ok(
            "ListFHIRExportJobs",
            json!({"DatastoreId": ds.id, "JobStatus": "COMPLETED"}),
        )
        .await;
    assert_eq!(
        listed["ExportJobPropertiesList"].as_array().unwrap().len(),
        3
    );
    let (_, kind, _) = c
        .error(
            "StartFHIRExportJob",
            json!({"DatastoreId": ds.id,
                   "OutputDataConfig": {"S3Configuration": {"S3Uri": "file:///tmp/", "KmsKeyId": "k"}},
                   "DataAccessRoleArn": "arn:aws:iam::000000000000:role/r"}),
        )
        .await;
    assert_eq!(kind, "AccessDeniedException");
    c.stop().await;
}
