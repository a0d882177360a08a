//! The FHIR REST API, driven over HTTP against the real server on an ephemeral loopback port.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use fhirlake::api::{ApiConfig, ServeError, Server};
use fhirlake::installation::Installation;
use fhirlake::lake::provider::LakeTable;
use fhirlake::sql::SqlEngine;

use crate::common::shared_data;

pub(crate) struct TestServer {
    /// Data store base URL without the trailing slash.
    pub(crate) base: String,
    root: String,
    pub(crate) http: reqwest::Client,
    pub(crate) inst: Installation,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub(crate) async fn start(config: ApiConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inst = Installation::open(dir.path()).await.unwrap();
        let server = Server::bind(inst.clone(), "127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let urls = server.base_urls();
        assert_eq!(urls.len(), 1, "the default data store is served");
        let base = urls[0].1.trim_end_matches('/').to_string();
        let root = format!("http://{}", server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            base,
            root,
            http: reqwest::Client::new(),
            inst,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub(crate) async fn default() -> Self {
        Self::start(ApiConfig::default()).await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (StatusCode, HeaderMap, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"))
        };
        (status, headers, body)
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> (StatusCode, HeaderMap, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> (StatusCode, HeaderMap, Value) {
        self.send(
            self.http
                .put(self.url(path))
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub(crate) async fn delete(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        self.send(self.http.delete(self.url(path))).await
    }

    /// Stops gracefully; returns the data directory so the caller can inspect it.
    pub(crate) async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self._dir
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

/// Asserts an OperationOutcome error body with FHIR JSON content type; returns its diagnostics.
pub(crate) fn outcome(
    status: StatusCode,
    h: &HeaderMap,
    body: &Value,
    expected: StatusCode,
) -> String {
    assert_eq!(status, expected, "body: {body}");
    assert!(
        header(h, "content-type").starts_with("application/fhir+json"),
        "content type {:?}",
        h.get("content-type")
    );
    assert_eq!(body["resourceType"], "OperationOutcome", "body: {body}");
    let issue = &body["issue"][0];
    assert_eq!(issue["severity"], "error");
    assert!(issue["code"].is_string());
    issue["diagnostics"].as_str().unwrap().to_string()
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ana"]}], "birthDate": "1990-01-01"})
}

#[tokio::test]
async fn crud_versions_and_conditional_reads() {
    let s = TestServer::default().await;

    // create
    let (st, h, body) = s.post("Patient", &patient("Silva")).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "server ids are UUIDs");
    assert_eq!(header(&h, "etag"), "W/\"1\"");
    assert_eq!(
        header(&h, "location"),
        format!("{}/Patient/{id}/_history/1", s.base)
    );
    assert!(header(&h, "last-modified").ends_with(" GMT"));
    assert!(header(&h, "x-request-id").len() >= 32);
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["name"][0]["family"], "Silva");

    // read
    let (st, h, read) = s.get(&format!("Patient/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(read, body);
    assert_eq!(header(&h, "etag"), "W/\"1\"");
    let last_modified = header(&h, "last-modified").to_string();

    // conditional reads
    let (st, h, b) = s
        .send(
            s.http
                .get(s.url(&format!("Patient/{id}")))
                .header("if-none-match", "W/\"1\""),
        )
        .await;
    assert_eq!((st, b), (StatusCode::NOT_MODIFIED, Value::Null));
    assert_eq!(header(&h, "etag"), "W/\"1\"");
    let (st, _, _) = s
        .send(
            s.http
                .get(s.url(&format!("Patient/{id}")))
                .header("if-modified-since", &last_modified),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    let (st, _, _) = s
        .send(
            s.http
                .get(s.url(&format!("Patient/{id}")))
                .header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT"),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    // update
    let mut changed = body.clone();
    changed["birthDate"] = json!("1991-02-03");
    let (st, h, updated) = s.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(st, StatusCode::OK, "{updated}");
    assert_eq!(header(&h, "etag"), "W/\"2\"");
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["birthDate"], "1991-02-03");
    let (st, _, _) = s
        .send(
            s.http
                .get(s.url(&format!("Patient/{id}")))
                .header("if-none-match", "W/\"1\""),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "a stale ETag does not give 304");

    // vread
    let (st, h, v1) = s.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(header(&h, "etag"), "W/\"1\"");
    assert_eq!(v1["birthDate"], "1990-01-01");
    let (st, h, b) = s.get(&format!("Patient/{id}/_history/9")).await;
    outcome(st, &h, &b, StatusCode::NOT_FOUND);

    // If-Match
    let (st, h, b) = s
        .send(
            s.http
                .put(s.url(&format!("Patient/{id}")))
                .header("if-match", "W/\"1\"")
                .body(changed.to_string()),
        )
        .await;
    let d = outcome(st, &h, &b, StatusCode::PRECONDITION_FAILED);
    assert!(d.contains("current version is 2"), "{d}");
    let (st, h, _) = s
        .send(
            s.http
                .put(s.url(&format!("Patient/{id}")))
                .header("if-match", "W/\"2\"")
                .body(changed.to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(header(&h, "etag"), "W/\"3\"");

    // delete
    let (st, h, b) = s
        .send(
            s.http
                .delete(s.url(&format!("Patient/{id}")))
                .header("if-match", "W/\"2\""),
        )
        .await;
    outcome(st, &h, &b, StatusCode::PRECONDITION_FAILED);
    let (st, h, b) = s.delete(&format!("Patient/{id}")).await;
    assert_eq!((st, b), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(header(&h, "etag"), "W/\"4\"");
    let (st, h, b) = s.get(&format!("Patient/{id}")).await;
    let d = outcome(st, &h, &b, StatusCode::GONE);
    assert!(d.contains("deleted"), "{d}");
    let (st, h, b) = s.get(&format!("Patient/{id}/_history/4")).await;
    outcome(st, &h, &b, StatusCode::GONE);
    // Deleting again, or deleting an id that never existed: 204, nothing written.
    let (st, h, _) = s.delete(&format!("Patient/{id}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(h.get("etag").is_none());
    let (st, _, _) = s.delete("Patient/never-existed").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, h, b) = s.get("Patient/never-existed").await;
    outcome(st, &h, &b, StatusCode::NOT_FOUND);

    // update-as-create with the client's id, and re-creating a deleted resource
    let (st, h, b) = s
        .put(
            "Patient/new-id-1",
            &json!({"resourceType": "Patient", "id": "new-id-1", "gender": "female"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(
        header(&h, "location"),
        format!("{}/Patient/new-id-1/_history/1", s.base)
    );
    let (st, _, b) = s.get("Patient/new-id-1").await;
    assert_eq!((st, &b["gender"]), (StatusCode::OK, &json!("female")));
    changed["id"] = json!(id);
    let (st, h, _) = s.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(header(&h, "etag"), "W/\"5\"");
    s.stop().await;
}

#[tokio::test]
async fn errors_are_operation_outcomes_with_the_right_status() {
    let s = TestServer::start(ApiConfig {
        body_limit: 4096,
        ..ApiConfig::default()
    })
    .await;
    let (st, h, b) = s.post("Foo", &json!({"resourceType": "Foo"})).await;
    outcome(st, &h, &b, StatusCode::NOT_FOUND);
    let (st, h, b) = s
        .send(
            s.http
                .post(s.url("Patient"))
                .header("content-type", "application/fhir+json")
                .body("{not json"),
        )
        .await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    let (st, h, b) = s
        .post("Patient", &json!({"resourceType": "Patient", "bogus": 1}))
        .await;
    assert_eq!(
        outcome(st, &h, &b, StatusCode::BAD_REQUEST),
        "Unrecognised property '@bogus'"
    );
    assert_eq!(b["issue"][0]["code"], "processing");
    assert_eq!(b["issue"][0]["location"][0], "/Patient");
    let (st, h, b) = s
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": {"family": "x"}}),
        )
        .await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert_eq!(b["issue"][0]["expression"][0], "Patient.name");
    let (st, h, b) = s
        .post("Patient", &json!({"resourceType": "Observation"}))
        .await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(d.contains("does not match 'Patient'"), "{d}");
    let (st, h, b) = s
        .put("Patient/a", &json!({"resourceType": "Patient", "id": "b"}))
        .await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(d.contains("does not match the id 'a'"), "{d}");
    let long = "x".repeat(65);
    let (st, h, b) = s
        .put(
            &format!("Patient/{long}"),
            &json!({"resourceType": "Patient", "id": long}),
        )
        .await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(
        d.contains("Member must satisfy regular expression pattern: [A-Za-z0-9-.]{1,64}"),
        "{d}"
    );
    let (st, h, b) = s
        .send(
            s.http
                .put(s.url("Patient/a"))
                .header("if-match", "yesterday")
                .body(json!({"resourceType": "Patient", "id": "a"}).to_string()),
        )
        .await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    let (st, h, b) = s
        .send(
            s.http
                .post(s.url("Patient"))
                .header("content-type", "application/fhir+xml")
                .body("<Patient/>"),
        )
        .await;
    outcome(st, &h, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (st, h, b) = s
        .send(
            s.http
                .get(s.url("Patient/a"))
                .header("accept", "application/fhir+xml"),
        )
        .await;
    outcome(st, &h, &b, StatusCode::NOT_ACCEPTABLE);
    let (st, h, b) = s.get("Patient/a?_format=xml").await;
    outcome(st, &h, &b, StatusCode::NOT_ACCEPTABLE);
    let big = json!({"resourceType": "Patient", "name": [{"family": "x".repeat(5000)}]});
    let (st, h, b) = s.post("Patient", &big).await;
    outcome(st, &h, &b, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, h, b) = s.send(s.http.patch(s.url("Patient/a")).body("[]")).await;
    assert_eq!(
        outcome(st, &h, &b, StatusCode::METHOD_NOT_ALLOWED),
        "Interaction not supported."
    );
    let (st, h, b) = s
        .send(s.http.patch(s.url("Patient?name=x")).body("[]"))
        .await;
    outcome(st, &h, &b, StatusCode::METHOD_NOT_ALLOWED);
    let (st, h, b) = s.send(s.http.get(format!("{}/nothing/here", s.root))).await;
    outcome(st, &h, &b, StatusCode::NOT_FOUND);
    let (st, h, b) = s
        .send(s.http.get(format!(
            "{}/datastore/{}/r4/Patient/a",
            s.root,
            "0".repeat(32)
        )))
        .await;
    let d = outcome(st, &h, &b, StatusCode::NOT_FOUND);
    assert!(d.contains("No data store"), "{d}");
    let (st, h, b) = s.get("_history?_count=0").await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    let (st, h, b) = s.get("_history?_at=2020").await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn prefer_pretty_and_content_negotiation() {
    let s = TestServer::default().await;
    let (st, h, b) = s
        .send(
            s.http
                .post(s.url("Patient"))
                .header("content-type", "application/json")
                .header("prefer", "return=minimal")
                .body(patient("Min").to_string()),
        )
        .await;
    assert_eq!((st, b), (StatusCode::CREATED, Value::Null));
    let location = header(&h, "location").to_string();
    let id = location.split('/').rev().nth(2).unwrap().to_string();
    let (st, _, b) = s
        .send(
            s.http
                .put(s.url(&format!("Patient/{id}")))
                .header("prefer", "return=OperationOutcome")
                .body(json!({"resourceType": "Patient", "id": id, "gender": "male"}).to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["severity"], "information");

    let resp = s
        .http
        .get(s.url(&format!("Patient/{id}?_pretty=true")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("\n  \"resourceType\": \"Patient\""), "{text}");
    let resp = s
        .http
        .get(s.url(&format!("Patient/{id}?_format=application/fhir%2Bjson")))
        .header("accept", "application/xml")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(!text.contains('\n'));

    // Decimals keep their exact text through the store.
    let (st, _, _) = s
        .send(s.http.put(s.url("Observation/o1")).body(
            r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#,
        ))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let text = s
        .http
        .get(s.url("Observation/o1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""value":1.50"#), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn conditional_create_with_id() {
    let s = TestServer::default().await;
    let (st, _, _) = s
        .put(
            "Patient/known",
            &json!({"resourceType": "Patient", "id": "known"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let create = |cond: &'static str| {
        s.send(
            s.http
                .post(s.url("Patient"))
                .header("if-none-exist", cond)
                .body(patient("Cond").to_string()),
        )
    };
    let (st, h, b) = create("_id=known").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["id"], "known");
    assert_eq!(header(&h, "etag"), "W/\"1\"");
    let (st, _, b) = create("_id=unknown").await;
    assert_eq!(st, StatusCode::CREATED);
    assert_ne!(b["id"], "unknown", "the server assigns the id");
    // Any search parameter works: the first create with this identifier creates, the
    // second finds it.
    let (st, _, first) = create("identifier=http://x|1").await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let (st, _, b) = s
        .send(
            s.http
                .post(s.url("Patient"))
                .header("if-none-exist", "identifier=http://x|1")
                .body(
                    json!({"resourceType": "Patient", "identifier": [{"system": "http://x", "value": "1"}]})
                        .to_string(),
                ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let (st, _, b) = s
        .send(
            s.http
                .post(s.url("Patient"))
                .header("if-none-exist", "identifier=http://x|1")
                .body(patient("Again").to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["identifier"][0]["value"], "1");
    let (st, h, b) = create("nonsense=1").await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(d.contains("unknown search parameter 'nonsense'"), "{d}");
    s.stop().await;
}

#[tokio::test]
async fn history_at_every_level_with_paging() {
    let s = TestServer::default().await;
    for i in 0..5 {
        let (st, _, _) = s
            .put(
                "Patient/h1",
                &json!({"resourceType": "Patient", "id": "h1", "birthDate": format!("200{i}-01-01")}),
            )
            .await;
        assert!(st.is_success());
    }
    let (st, _, _) = s.delete("Patient/h1").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, obs) = s
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);

    // Instance history, two per page, following next links.
    let mut url = s.url("Patient/h1/_history?_count=2");
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let (st, _, b) = s.send(s.http.get(&url)).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "history");
        pages += 1;
        for e in b["entry"].as_array().unwrap() {
            let method = e["request"]["method"].as_str().unwrap().to_string();
            let etag = e["response"]["etag"].as_str().unwrap().to_string();
            assert_eq!(e["fullUrl"], format!("{}/Patient/h1", s.base));
            if method == "DELETE" {
                assert!(e.get("resource").is_none());
            } else {
                assert_eq!(e["resource"]["meta"]["versionId"], etag[3..etag.len() - 1]);
            }
            versions.push((method, etag));
        }
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next");
        match next {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<(String, String)> = [
        ("DELETE", 6),
        ("PUT", 5),
        ("PUT", 4),
        ("PUT", 3),
        ("PUT", 2),
        ("POST", 1),
    ]
    .iter()
    .map(|(m, v)| (m.to_string(), format!("W/\"{v}\"")))
    .collect();
    assert_eq!(versions, expected);

    let (_, _, b) = s.get("Patient/_history").await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 6);
    let (_, _, b) = s.get("_history").await;
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0]["resource"]["id"], obs["id"], "newest first");

    // _since: only what changed at or after the Observation's timestamp.
    let since = obs["meta"]["lastUpdated"].as_str().unwrap();
    let (st, _, b) = s
        .get(&format!("_history?_since={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(st, StatusCode::OK);
    let entries = b["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(
        entries
            .iter()
            .all(|e| e["response"]["lastModified"].as_str().unwrap() >= since)
    );
    let (_, _, b) = s.get("_history?_since=2999-01-01").await;
    assert!(b.get("entry").is_none());
    s.stop().await;
}

#[tokio::test]
async fn concurrent_if_match_updates_have_one_winner_per_version() {
    let s = TestServer::default().await;
    let (st, _, _) = s
        .put("Patient/c", &json!({"resourceType": "Patient", "id": "c"}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let attempt = |n: usize, version: i64| {
        let req = s
            .http
            .put(s.url("Patient/c"))
            .header("content-type", "application/fhir+json")
            .header("if-match", format!("W/\"{version}\""))
            .body(
                json!({"resourceType": "Patient", "id": "c", "birthDate": format!("19{:02}-01-01", n)})
                    .to_string(),
            );
        async move {
            let resp = req.send().await.unwrap();
            let etag = resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_string());
            (resp.status(), etag)
        }
    };
    let results = futures::future::join_all((0..50).map(|n| attempt(n, 1))).await;
    let winners: Vec<_> = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::OK)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].1.as_deref(), Some("W/\"2\""));
    assert_eq!(
        results
            .iter()
            .filter(|(st, _)| *st == StatusCode::PRECONDITION_FAILED)
            .count(),
        49
    );

    // 50 clients that retry on 412: every success is its own version, none lost.
    let (sr, attempt) = (&s, &attempt);
    let retrying = (0..50).map(|n| async move {
        let s = sr;
        loop {
            let resp = s.http.get(s.url("Patient/c")).send().await.unwrap();
            let etag = resp.headers()["etag"].to_str().unwrap().to_string();
            let version: i64 = etag[3..etag.len() - 1].parse().unwrap();
            match attempt(n, version).await {
                (StatusCode::OK, Some(new)) => return new,
                (StatusCode::PRECONDITION_FAILED, _) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let etags: HashSet<String> = futures::future::join_all(retrying)
        .await
        .into_iter()
        .collect();
    assert_eq!(etags.len(), 50);
    let (_, h, _) = s.get("Patient/c").await;
    assert_eq!(header(&h, "etag"), "W/\"52\"");
    let (_, _, b) = s.get("Patient/c/_history?_count=500").await;
    let versions: Vec<i64> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(versions, (1..=52).rev().collect::<Vec<i64>>());
    s.stop().await;
}

#[tokio::test]
async fn capability_statement_matches_the_router() {
    let s = TestServer::default().await;
    let (st, _, root) = s.send(s.http.get(format!("{}/metadata", s.root))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(root["resourceType"], "CapabilityStatement");
    let (st, _, cs) = s.get("metadata").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["implementation"]["url"], s.base);
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() >= 140, "every R4 type is served");
    // Every advertised interaction is routed: the request reaches the interaction (no 405,
    // no unknown-path 404) for every type.
    for r in resources {
        let ty = r["type"].as_str().unwrap();
        for i in r["interaction"].as_array().unwrap() {
            let (method, path) = match i["code"].as_str().unwrap() {
                "read" => ("GET", format!("{ty}/x")),
                "vread" => ("GET", format!("{ty}/x/_history/1")),
                "update" => ("PUT", format!("{ty}/x")),
                "delete" => ("DELETE", format!("{ty}/x")),
                "history-instance" => ("GET", format!("{ty}/x/_history")),
                "history-type" => ("GET", format!("{ty}/_history")),
                "create" => ("POST", ty.to_string()),
                "search-type" => ("GET", format!("{ty}?_id=x")),
                other => panic!("unexpected interaction {other}"),
            };
            if ty != "Patient" && ty != "Bundle" && method != "GET" {
                continue; // one type per write interaction keeps the test fast
            }
            let req = s
                .http
                .request(method.parse().unwrap(), s.url(&path))
                .body("{}");
            let (st, _, b) = s.send(req).await;
            assert_ne!(st, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {b}");
            if st == StatusCode::NOT_FOUND {
                let d = b["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(d.contains("is not known"), "{method} {path}: {d}");
            }
        }
    }
    let system: Vec<&str> = cs["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        system,
        ["transaction", "batch", "history-system", "search-system"]
    );
    s.stop().await;
}

#[tokio::test]
async fn batch_entries_are_independent() {
    let s = TestServer::default().await;
    let batch = json!({
        "resourceType": "Bundle",
        "id": "bundle-batch",
        "type": "batch",
        "entry": [
            {"resource": patient("Batch"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {
                "resourceType": "Medication",
                "contained": [{"resourceType": "Substance", "id": "sub03",
                               "code": {"text": "Amoxicillin"}}],
                "ingredient": [{"itemReference": {"reference": "#sub03"}}]
             }, "request": {"method": "POST", "url": "Medication"}},
            {"resource": {"resourceType": "Patient", "bogus": true},
             "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/missing"}},
            {"resource": {"resourceType": "Patient", "id": "b1"},
             "request": {"method": "PUT", "url": "Patient/b1"}},
            {"request": {"method": "DELETE", "url": "Patient/b1"}},
        ]
    });
    let (st, _, b) = s.post("", &batch).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["type"], "batch-response");
    assert!(b["timestamp"].is_string());
    let statuses: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "201 Created",
            "204 No Content"
        ]
    );
    let e0 = &b["entry"][0]["response"];
    assert!(e0["location"].as_str().unwrap().starts_with("Patient/"));
    assert_eq!(e0["etag"], "W/\"1\"");
    assert!(e0["lastModified"].is_string());
    let failed = &b["entry"][2]["response"]["outcome"];
    assert_eq!(failed["resourceType"], "OperationOutcome");
    assert!(
        failed["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry[2]: Unrecognised property")
    );
    let med_location = b["entry"][1]["response"]["location"].as_str().unwrap();
    let (st, _, med) = s.get(med_location.split("/_history").next().unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(med["contained"][0]["id"], "sub03");

    // Over the entry limit.
    let too_many = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": (0..161).map(|_| json!({"request": {"method": "GET", "url": "Patient/x"}})).collect::<Vec<_>>()
    });
    let (st, h, b) = s.post("", &too_many).await;
    let d = outcome(st, &h, &b, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(d.contains("161 entries; at most 160"), "{d}");
    let (st, h, b) = s
        .post("", &json!({"resourceType": "Bundle", "type": "document"}))
        .await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);

    // POST [base]/Bundle stores a document Bundle as one resource.
    let document = json!({"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient", "id": "in-doc"}}
    ]});
    let (st, _, b) = s.post("Bundle", &document).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(b["type"], "document");
    let (st, _, _) = s.get("Patient/in-doc").await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "inner resources are not stored separately"
    );
    s.stop().await;
}

#[tokio::test]
async fn transactions_are_all_or_nothing() {
    let s = TestServer::default().await;
    let (st, _, _) = s
        .put(
            "Patient/t1",
            &json!({"resourceType": "Patient", "id": "t1"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let tx =
        |entries: Value| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});

    // An invalid entry rolls everything back.
    let (st, h, b) = s
        .post(
            "",
            &tx(json!([
                {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                 "resource": patient("Tx"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Patient", "id": "t1", "gender": "other"},
                 "request": {"method": "PUT", "url": "Patient/t1"}},
                {"resource": {"resourceType": "Observation", "status": 7},
                 "request": {"method": "POST", "url": "Observation"}},
            ])),
        )
        .await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(d.starts_with("Bundle.entry[2]:"), "{d}");
    let (_, h, _) = s.get("Patient/t1").await;
    assert_eq!(header(&h, "etag"), "W/\"1\"", "nothing was written");
    let (_, _, b) = s.get("Patient/_history").await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);

    // A stale ifMatch rolls back too.
    let (st, h, b) = s
        .post(
            "",
            &tx(json!([
                {"resource": patient("Tx"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Patient", "id": "t1", "gender": "other"},
                 "request": {"method": "PUT", "url": "Patient/t1", "ifMatch": "W/\"7\""}},
            ])),
        )
        .await;
    outcome(st, &h, &b, StatusCode::PRECONDITION_FAILED);
    let (_, _, b) = s.get("Patient/_history").await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);

    // Two entries for one resource are refused.
    let (st, h, b) = s
        .post(
            "",
            &tx(json!([
                {"request": {"method": "DELETE", "url": "Patient/t1"}},
                {"resource": {"resourceType": "Patient", "id": "t1"},
                 "request": {"method": "PUT", "url": "Patient/t1"}},
            ])),
        )
        .await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);

    // A good one: urn:uuid references rewritten, processing order DELETE, POST, PUT, GET.
    let (st, _, b) = s
        .post(
            "",
            &tx(json!([
                {"request": {"method": "GET", "url": "Patient/t1"}},
                {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
                 "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                 "resource": patient("Tx"), "request": {"method": "POST", "url": "Patient"}},
                {"request": {"method": "DELETE", "url": "Patient/t1"}},
            ])),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["type"], "transaction-response");
    let entries = b["entry"].as_array().unwrap();
    let statuses: Vec<&str> = entries
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["410 Gone", "201 Created", "201 Created", "204 No Content"],
        "GET runs after the DELETE"
    );
    let patient_id = entries[2]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        entries[1]["resource"]["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    s.stop().await;
}

/// The shared Synthea transaction Bundles: refused at the default 160-entry limit, accepted
/// with a larger one, every reference resolved to a stored resource.
#[tokio::test]
async fn synthea_transaction_bundles() {
    let Some(data) = shared_data() else { return };
    let dir = data.join("synthea-r4-bundles");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let read = |p: &std::path::Path| {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()),
            &mut text,
        )
        .unwrap();
        text
    };

    let strict = TestServer::default().await;
    let first = read(&files[0]);
    let resp = strict
        .http
        .post(strict.url(""))
        .header("content-type", "application/fhir+json")
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    strict.stop().await;

    let s = TestServer::start(ApiConfig {
        max_bundle_entries: 1000,
        ..ApiConfig::default()
    })
    .await;
    for file in &files {
        let text = read(file);
        let bundle: Value = serde_json::from_str(&text).unwrap();
        let n = bundle["entry"].as_array().unwrap().len();
        let started = Instant::now();
        let resp = s
            .http
            .post(s.url(""))
            .header("content-type", "application/fhir+json")
            .body(text)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let b: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}: {b}", file.display());
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), n);
        assert!(
            entries
                .iter()
                .all(|e| e["response"]["status"] == "201 Created")
        );
        eprintln!(
            "{}: {n} entries in {:?}",
            file.file_name().unwrap().to_string_lossy(),
            started.elapsed()
        );
        // No urn:uuid is left, and every reference points at a stored resource.
        let text = b.to_string();
        assert!(!text.contains("urn:uuid:"), "unresolved urn:uuid reference");
        let mut refs = HashSet::new();
        collect_references(&b, &mut refs);
        assert!(refs.len() > 5);
        for r in refs {
            let (st, _, _) = s.get(&r).await;
            assert_eq!(st, StatusCode::OK, "reference {r} does not resolve");
        }
    }
    s.stop().await;
}

fn collect_references(v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) if !r.starts_with('#') => {
                        out.insert(r.clone());
                    }
                    _ => collect_references(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_references(v, out)),
        _ => {}
    }
}

/// SQL over the installation's default data store, as `fhirlake sql` runs it.
async fn sql_engine(inst: &Installation) -> SqlEngine {
    let ds = inst.datastore(None).await.unwrap();
    let engine = SqlEngine::new().unwrap();
    engine
        .register_datastore(&ds.name, LakeTable::all_types(&inst.lake, &ds.name))
        .unwrap();
    engine.set_current_datastore(&ds.name).unwrap();
    engine
}

async fn sql_count(engine: &SqlEngine, table: &str, id: &str) -> usize {
    let batches = engine
        .collect(&format!("SELECT count(*) FROM {table} WHERE id = '{id}'"))
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0) as usize
}

/// Polls SQL until `table` has `expected` rows with `id`; fails after 2 s.
async fn wait_for_sql(engine: &SqlEngine, table: &str, id: &str, expected: usize) -> Duration {
    let started = Instant::now();
    loop {
        let n = sql_count(engine, table, id).await;
        let elapsed = started.elapsed();
        if n == expected {
            return elapsed;
        }
        assert!(
            elapsed < Duration::from_secs(2),
            "SQL did not see {table}/{id} x{expected} within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_reach_sql_within_two_seconds() {
    let s = TestServer::default().await;
    let engine = sql_engine(&s.inst).await;
    // Warm up: the first query of a session plans slowly in debug builds.
    assert_eq!(sql_count(&engine, "patient", "none").await, 0);
    let (st, _, b) = s.post("Patient", &patient("Lake")).await;
    assert_eq!(st, StatusCode::CREATED);
    let id = b["id"].as_str().unwrap().to_string();
    let lag = wait_for_sql(&engine, "patient", &id, 1).await;
    eprintln!("create visible in SQL after {lag:?}");

    let (_, _, status) = s.get("$lake-status").await;
    assert_eq!(status["inSync"], true, "{status}");
    assert_eq!(status["pendingChanges"], 0);
    assert!(status["storeSeq"].as_i64().unwrap() >= 1);
    // The same figures as Prometheus metrics at the server root.
    let metrics = s
        .http
        .get(format!("{}/metrics", s.root))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE fhirlake_lake_lag_seconds gauge")
            && metrics.contains("fhirlake_lake_pending_changes{datastore=\"fhir\"")
            && metrics.contains("fhirlake_lake_lag_seconds{datastore=\"fhir\""),
        "{metrics}"
    );

    let (st, _, _) = s.delete(&format!("Patient/{id}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let lag = wait_for_sql(&engine, "patient", &id, 0).await;
    eprintln!("delete visible in SQL after {lag:?}");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_the_lake() {
    let s = TestServer::start(ApiConfig {
        sync_interval: Duration::from_secs(3600),
        ..ApiConfig::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (st, _, b) = s.post("Patient", &patient(&format!("Flush{i}"))).await;
        assert_eq!(st, StatusCode::CREATED);
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let (_, _, status) = s.get("$lake-status").await;
    assert_eq!(status["inSync"], false);
    assert_eq!(status["tables"][0]["resourceType"], "Patient");
    assert_eq!(status["tables"][0]["pendingChanges"], 20);
    let inst = s.inst.clone();
    let _dir = s.stop().await;
    // After a graceful stop every acknowledged write is in the lake.
    let ds = inst.datastore(None).await.unwrap();
    assert!(inst.store.pending_types(&ds.id).await.unwrap().is_empty());
    let engine = sql_engine(&inst).await;
    for id in &ids {
        assert_eq!(sql_count(&engine, "patient", id).await, 1);
    }
}
