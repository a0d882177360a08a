//! Per-operation metrics on `GET /metrics` and HealthLake-style quotas, over HTTP against the
//! real server.

use reqwest::StatusCode;
use serde_json::{Value, json};

use fhirlake::api::ApiConfig;
use fhirlake::limits::Quotas;

use crate::api::{TestServer, outcome};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}]})
}

/// The data store id in the server's base URL (`.../datastore/{id}/r4`).
fn datastore_id(s: &TestServer) -> String {
    let rest = s.base.split("/datastore/").nth(1).unwrap();
    rest.trim_end_matches("/r4").to_string()
}

/// `GET /metrics` as text.
async fn scrape(s: &TestServer) -> String {
    let root = s.base.split("/datastore/").next().unwrap();
    let response = s.http.get(format!("{root}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The value of `metric` for data store `ds` and `operation` (and `le`, for a bucket).
fn value(text: &str, metric: &str, ds: &str, operation: &str, le: Option<&str>) -> u64 {
    let wanted = [
        format!("datastore_id=\"{ds}\""),
        format!("operation=\"{operation}\""),
    ];
    let line = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .find(|l| le.is_none_or(|le| l.contains(&format!("le=\"{le}\""))))
        .unwrap_or_else(|| panic!("no {metric} for {operation} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// [calls, successful, user errors, server errors, throttled, histogram count, +Inf bucket].
fn counts(text: &str, ds: &str, operation: &str) -> [u64; 7] {
    let v = |metric: &str| value(text, metric, ds, operation, None);
    [
        v("fhirlake_api_calls_total"),
        v("fhirlake_api_successful_requests_total"),
        v("fhirlake_api_user_errors_total"),
        v("fhirlake_api_server_errors_total"),
        v("fhirlake_api_throttled_requests_total"),
        v("fhirlake_api_request_duration_seconds_count"),
        value(
            text,
            "fhirlake_api_request_duration_seconds_bucket",
            ds,
            operation,
            Some("+Inf"),
        ),
    ]
}

#[tokio::test]
async fn metrics_count_every_request_by_operation_and_outcome() {
    let s = TestServer::default().await;
    let ds = datastore_id(&s);
    let (creates, reads) = (3, 5);
    let mut ids = Vec::new();
    for i in 0..creates {
        let (st, _, b) = s.post("Patient", &patient(&format!("M{i}"))).await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    for i in 0..reads {
        let (st, _, _) = s.get(&format!("Patient/{}", ids[i % ids.len()])).await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, h, b) = s.get("Patient/no-such-patient").await;
    outcome(st, &h, &b, StatusCode::NOT_FOUND);
    let bad = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .body("{not json");
    let (st, h, b) = s.send(bad).await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);

    let text = scrape(&s).await;
    let n = |k: usize| k as u64;
    assert_eq!(
        counts(&text, &ds, "CreateResource"),
        [
            n(creates) + 1,
            n(creates),
            1,
            0,
            0,
            n(creates) + 1,
            n(creates) + 1
        ]
    );
    assert_eq!(
        counts(&text, &ds, "ReadResource"),
        [n(reads) + 1, n(reads), 1, 0, 0, n(reads) + 1, n(reads) + 1]
    );
    assert!(text.contains("# TYPE fhirlake_api_request_duration_seconds histogram"));
    assert!(text.contains("le=\"0.005\""));
    // Scrapes are not operations: a second one finds the same figures.
    assert_eq!(
        counts(&scrape(&s).await, &ds, "ReadResource")[0],
        n(reads) + 1
    );
    s.stop().await;
}

#[tokio::test]
async fn a_create_over_quota_is_refused_before_it_writes() {
    let mut quotas = Quotas::off();
    quotas.apply("CreateResource=2/2").unwrap();
    let s = TestServer::start(ApiConfig {
        quotas,
        ..ApiConfig::default()
    })
    .await;
    let ds = datastore_id(&s);
    for family in ["One", "Two"] {
        let (st, _, b) = s.post("Patient", &patient(family)).await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
    }
    let (st, h, b) = s.post("Patient", &patient("Three")).await;
    outcome(st, &h, &b, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b["issue"][0]["code"], "throttled");
    // The next token is at most half a second away, rounded up to whole seconds.
    assert_eq!(h["retry-after"], "1");

    // Nothing of the third create reached the store.
    let (st, _, history) = s.get("Patient/_history").await;
    assert_eq!(st, StatusCode::OK);
    let families: Vec<&Value> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"]["name"][0]["family"])
        .collect();
    assert_eq!(families.len(), 2, "{history}");
    assert!(!families.contains(&&json!("Three")));

    let text = scrape(&s).await;
    assert_eq!(counts(&text, &ds, "CreateResource"), [3, 2, 0, 0, 1, 3, 3]);
    // Operations without a quota are not throttled.
    assert_eq!(counts(&text, &ds, "ReadHistory")[4], 0);
    s.stop().await;
}
