//! FHIR search over HTTP against the real server, on hand-made fixtures whose expected
//! matches were worked out by hand from FHIR R4's rules (noted next to each case).

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::api::{TestServer, outcome};

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The ids of every `match` entry of a search, across all pages.
async fn matches(s: &TestServer, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut url = s.url(query);
    loop {
        let (st, _, b) = s.send(s.http.get(&url)).await;
        assert_eq!(st, StatusCode::OK, "{query}: {b}");
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                out.push(e["resource"]["id"].as_str().unwrap().to_string());
            }
        }
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => return out,
        }
    }
}

async fn found(s: &TestServer, query: &str) -> BTreeSet<String> {
    matches(s, query).await.into_iter().collect()
}

async fn put(s: &TestServer, resource: Value) {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    let (st, _, b) = s.put(&path, &resource).await;
    assert!(st.is_success(), "{path}: {b}");
}

fn quantity(value: f64, code: &str) -> Value {
    json!({"value": value, "unit": code, "system": "http://unitsofmeasure.org", "code": code})
}

fn loinc(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display})
}

async fn fixtures(s: &TestServer) {
    put(
        s,
        json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "female",
        "meta": {"profile": ["http://example.org/Patient"]},
        "name": [{"family": "Müller", "given": ["Zoë"]}], "birthDate": "1970-05-20",
        "identifier": [{"system": "http://mrn", "value": "A1", "type": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "telecom": [{"system": "phone", "value": "555-1"}],
        "address": [{"city": "BOSTON", "line": ["1 Main St"]}]}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Patient", "id": "p2", "active": false, "gender": "male",
        "meta": {"source": "http://example.org/feed"},
        "name": [{"family": "Mueller", "given": ["Zack"]}], "birthDate": "1969-12-31",
        "identifier": [{"system": "http://mrn", "value": "A2"}],
        "address": [{"city": "Cambridge"}]}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Patient", "id": "p3", "gender": "female",
        "meta": {"security": [{"system": "http://example.org/sec", "code": "R"}]},
        "name": [{"family": "Smith", "given": ["Anna"]}], "birthDate": "1970"}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Patient", "id": "p4", "gender": "other",
        "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">The Smithson family</div>"},
        "name": [{"family": "Smithson"}], "birthDate": "1985-03"}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "ValueSet", "id": "vs1", "status": "active",
        "url": "http://acme.org/fhir/ValueSet/123"}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
        "subject": {"reference": "Patient/p1"}, "prediction": [{"probabilityDecimal": 0.8}]}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "meta": {"tag": [{"system": "http://example.org/tags", "code": "x"}]},
        "code": loinc("8302-2", "Body Height"), "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-01-01T23:30:00-05:00", "valueQuantity": quantity(180.5, "cm")}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Observation", "id": "o2", "status": "amended",
        "code": loinc("29463-7", "Body Weight"), "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2019-06-01", "end": "2019-06-30"},
        "valueQuantity": quantity(70.0, "kg")}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
        "code": loinc("8302-2", "Body Height"), "subject": {"reference": "Patient/p2"},
        "effectiveDateTime": "2020-01-02", "valueQuantity": quantity(175.0, "cm")}),
    )
    .await;
    put(
        s,
        json!({"resourceType": "Observation", "id": "o4", "status": "final",
        "code": loinc("85354-9", "Blood pressure panel"), "subject": {"reference": "Patient/p3"},
        "effectiveDateTime": "2021-03-04T10:00:00Z",
        "component": [
            {"code": loinc("8480-6", "Systolic"), "valueQuantity": quantity(120.0, "mm[Hg]")},
            {"code": loinc("8462-4", "Diastolic"), "valueQuantity": quantity(80.0, "mm[Hg]")}]}),
    )
    .await;
    put(s, json!({"resourceType": "Observation", "id": "o5", "status": "final",
        "code": loinc("72166-2", "Tobacco smoking status"), "subject": {"reference": "Patient/p2"},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "266919005"}]}}))
    .await;
}

#[tokio::test]
async fn every_parameter_type_modifier_and_prefix() {
    let s = TestServer::default().await;
    fixtures(&s).await;
    let cases: &[(&str, &[&str])] = &[
        // string: case- and accent-insensitive prefix; :exact; :contains; HumanName parts
        ("Patient?family=mul", &["p1"]),
        ("Patient?family=MÜL", &["p1"]),
        ("Patient?family=mue", &["p2"]),
        ("Patient?family:exact=Müller", &["p1"]),
        ("Patient?family:exact=müller", &[]),
        ("Patient?name:contains=ulle", &["p1"]),
        ("Patient?given=zo", &["p1"]),
        ("Patient?name=smith", &["p3", "p4"]),
        ("Patient?address=bost", &["p1"]),
        ("Patient?address-city=boston", &["p1"]),
        // date: ranges at the value's precision, prefixes
        ("Patient?birthdate=1970", &["p1", "p3"]),
        ("Patient?birthdate=eq1970", &["p1", "p3"]),
        ("Patient?birthdate=ge1970-01-01", &["p1", "p3", "p4"]),
        ("Patient?birthdate=lt1970", &["p2"]),
        ("Patient?birthdate=sa1969-12-31", &["p1", "p3", "p4"]),
        ("Patient?birthdate=eb1970-06", &["p1", "p2"]),
        ("Patient?birthdate=ne1970", &["p2", "p4"]),
        // dateTime with an offset: 2020-01-01T23:30-05:00 is 2020-01-02 in UTC
        ("Observation?date=2020-01-02", &["o1", "o3"]),
        ("Observation?date=2020-01-01", &[]),
        // Period: eq needs the period inside the value, ap only an overlap
        ("Observation?date=2019-06", &["o2"]),
        ("Observation?date=2019-06-15", &[]),
        ("Observation?date=ap2019-06-15", &["o2"]),
        ("Observation?date:missing=true", &["o5"]),
        // token: code, system|code, |code, system|, :not, :text, OR
        ("Observation?code=8302-2", &["o1", "o3"]),
        ("Observation?code=http://loinc.org|8302-2", &["o1", "o3"]),
        ("Observation?code=http://other|8302-2", &[]),
        ("Observation?code=|8302-2", &[]),
        ("Observation?code:not=8302-2", &["o2", "o4", "o5"]),
        ("Observation?code=8302-2,29463-7", &["o1", "o2", "o3"]),
        ("Observation?code:text=body", &["o1", "o2", "o3"]),
        ("Observation?value-concept=266919005", &["o5"]),
        ("Observation?status=amended", &["o2"]),
        ("Patient?identifier=http://mrn|A1", &["p1"]),
        ("Patient?identifier=A2", &["p2"]),
        ("Patient?identifier:missing=true", &["p3", "p4"]),
        ("Patient?active=true", &["p1"]),
        ("Patient?phone=555-1", &["p1"]),
        ("Patient?_id=p1,p3", &["p1", "p3"]),
        // quantity: number with implicit precision, prefixes, system and code
        ("Observation?value-quantity=180.5", &["o1"]),
        (
            "Observation?value-quantity=gt176|http://unitsofmeasure.org|cm",
            &["o1"],
        ),
        ("Observation?value-quantity=lt100||kg", &["o2"]),
        (
            "Observation?value-quantity=le175|http://unitsofmeasure.org|cm",
            &["o3"],
        ),
        // reference: Type/id, id, :Type, the patient parameter
        ("Observation?subject=Patient/p1", &["o1", "o2"]),
        ("Observation?subject=p1", &["o1", "o2"]),
        ("Observation?patient=p2", &["o3", "o5"]),
        ("Observation?subject:Patient=p3", &["o4"]),
        // chaining and reverse chaining
        ("Observation?subject:Patient.family=smith", &["o4"]),
        ("Observation?patient.gender=male", &["o3", "o5"]),
        (
            "Patient?_has:Observation:patient:code=8302-2",
            &["p1", "p2"],
        ),
        // composite: both components in the same element
        (
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100",
            &["o4"],
        ),
        (
            "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt100",
            &[],
        ),
        (
            "Observation?code-value-quantity=http://loinc.org|8302-2$gt178",
            &["o1"],
        ),
        // common parameters
        ("Observation?_tag=http://example.org/tags|x", &["o1"]),
        ("Patient?_profile=http://example.org/Patient", &["p1"]),
        ("Patient?_source=http://example.org/feed", &["p2"]),
        ("Patient?_security=http://example.org/sec|R", &["p3"]),
        ("Patient?_lastUpdated=gt2000", &["p1", "p2", "p3", "p4"]),
        ("Patient?_lastUpdated=lt2000", &[]),
        ("Patient?_text=smithson", &["p4"]),
        ("Patient?_content=zack", &["p2"]),
        // token :of-type
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1",
            &["p1"],
        ),
        // uri: exact, :below, :above
        ("ValueSet?url=http://acme.org/fhir/ValueSet/123", &["vs1"]),
        ("ValueSet?url:below=http://acme.org/fhir/", &["vs1"]),
        (
            "ValueSet?url:above=http://acme.org/fhir/ValueSet/123/_history/5",
            &["vs1"],
        ),
        ("ValueSet?url:below=http://other.org/", &[]),
        // number with implicit precision
        ("RiskAssessment?probability=0.8", &["ra1"]),
        ("RiskAssessment?probability=gt0.5", &["ra1"]),
        ("RiskAssessment?probability=lt0.5", &[]),
        // repeated parameters are ANDed
        ("Observation?code=8302-2&subject=Patient/p2", &["o3"]),
        ("Patient?birthdate=ge1970&birthdate=lt1971", &["p1", "p3"]),
    ];
    let mut failures = Vec::new();
    for (query, expected) in cases {
        let got = found(&s, query).await;
        if got != set(expected) {
            failures.push(format!("{query}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    s.stop().await;
}

#[tokio::test]
async fn sorting_paging_includes_and_subsets() {
    let s = TestServer::default().await;
    fixtures(&s).await;
    // Ascending by the start of each birth date's range, descending by its end.
    assert_eq!(
        matches(&s, "Patient?_sort=birthdate").await,
        ["p2", "p3", "p1", "p4"]
    );
    assert_eq!(
        matches(&s, "Patient?_sort=-birthdate").await,
        ["p4", "p3", "p1", "p2"]
    );
    assert_eq!(
        matches(&s, "Patient?_sort=gender,-birthdate").await,
        ["p3", "p1", "p2", "p4"]
    );

    // Pages come from one snapshot: a write between pages does not shift them.
    let (_, _, first) = s
        .get("Patient?_sort=birthdate&_count=2&_total=accurate")
        .await;
    assert_eq!(first["total"], 4);
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    put(
        &s,
        json!({"resourceType": "Patient", "id": "p0", "birthDate": "1950"}),
    )
    .await;
    let (_, _, second) = s.send(s.http.get(&next)).await;
    let ids: Vec<&str> = second["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p4"]);
    assert!(
        second["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "previous")
    );
    // A new search sees the write at once (read-your-writes).
    assert_eq!(
        matches(&s, "Patient?_sort=birthdate&_count=1").await[0],
        "p0"
    );

    // _include and _revinclude
    let (_, _, b) = s
        .get("Observation?code=8302-2&_include=Observation:subject")
        .await;
    let mut included: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    included.sort();
    assert_eq!(included, ["p1", "p2"]);
    let (_, _, b) = s
        .get("Patient?_id=p3&_revinclude=Observation:subject")
        .await;
    let entries: Vec<(String, String)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap().to_string(),
                e["search"]["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("p3".into(), "match".into()),
            ("o4".into(), "include".into())
        ]
    );

    // _summary=count, _elements with the SUBSETTED tag, _summary=true
    let (_, _, b) = s.get("Patient?_summary=count").await;
    assert_eq!(b["total"], 5);
    assert!(b.get("entry").is_none());
    let (_, _, b) = s.get("Patient?_id=p1&_elements=gender").await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["gender"], "female");
    assert!(r.get("name").is_none() && r.get("birthDate").is_none());
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    let (_, _, b) = s.get("Patient?_id=p1&_summary=true").await;
    let r = &b["entry"][0]["resource"];
    assert!(r.get("name").is_some() && r.get("birthDate").is_some());

    // POST _search with a form body, and the guide's braces
    let (st, _, b) = s
        .send(
            s.http
                .post(s.url("Patient/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("{birthdate=eq1970}"),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn search_errors_are_operation_outcomes() {
    let s = TestServer::default().await;
    fixtures(&s).await;
    let bad = [
        ("Patient?_count=0", "_count=0"),
        ("Patient?_count=501", "_count"),
        ("Patient?foo=bar", "unknown search parameter 'foo'"),
        ("Patient?birthdate=tomorrow", "invalid date"),
        (
            "Patient?_sort=name,address,gender,birthdate,family,given",
            "at most 5",
        ),
        ("Patient?_total=estimate", "estimate"),
        ("Patient?_summary=maybe", "_summary"),
        ("Patient?gender:below=x", "not supported"),
        ("Location?near=1|2|3|km", "not supported"),
        ("Patient?_cursor=garbage", "cursor"),
    ];
    for (query, needle) in bad {
        let (st, h, b) = s.get(query).await;
        let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
        assert!(d.contains(needle), "{query}: {d}");
    }
    // Lenient handling ignores unknown parameters and says so.
    let (st, _, b) = s
        .send(
            s.http
                .get(s.url("Patient?foo=bar&gender=male"))
                .header("prefer", "handling=lenient"),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries[0]["resource"]["id"], "p2");
    let last = entries.last().unwrap();
    assert_eq!(last["search"]["mode"], "outcome");
    assert!(
        last["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("foo")
    );
    // Parameters in both the URL and the body are refused.
    let (st, h, b) = s
        .send(
            s.http
                .post(s.url("Patient/_search?gender=male"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("birthdate=1970"),
        )
        .await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(d.contains("both"), "{d}");
    // Chains matching more than 100 resources are refused (the guide's limit).
    for i in 0..101 {
        put(
            &s,
            json!({"resourceType": "Patient", "id": format!("many{i}"), "gender": "unknown"}),
        )
        .await;
    }
    let (st, h, b) = s.get("Observation?patient.gender=unknown").await;
    let d = outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    assert!(d.contains("more than 100"), "{d}");
    s.stop().await;
}

/// The reference guide's conditional update matrix (ACC-10) and conditional delete.
#[tokio::test]
async fn conditional_update_and_delete() {
    let s = TestServer::default().await;
    fixtures(&s).await;
    let query = "Patient?name=peter&birthdate=2000-01-01";
    let peter = |id: Option<&str>, phone: &str| {
        let mut p = json!({"resourceType": "Patient", "name": [{"given": ["Peter"]}],
            "birthDate": "2000-01-01", "telecom": [{"system": "phone", "value": phone}]});
        if let Some(id) = id {
            p["id"] = json!(id);
        }
        p
    };
    // 0 matches, no id: created with a server id
    let (st, _, created) = s.put(query, &peter(None, "1")).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // 1 match, no id: updated
    let (st, _, b) = s.put(query, &peter(None, "2")).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["meta"]["versionId"], "2");
    // 1 match, same id: updated
    let (st, _, b) = s.put(query, &peter(Some(&id), "3")).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // 1 match, another id: 409
    let (st, h, b) = s.put(query, &peter(Some("someone-else"), "4")).await;
    outcome(st, &h, &b, StatusCode::CONFLICT);
    // 0 matches, the body's id exists: 409
    let (st, h, b) = s
        .put(
            "Patient?name=nobody",
            &json!({"resourceType": "Patient", "id": "p1"}),
        )
        .await;
    outcome(st, &h, &b, StatusCode::CONFLICT);
    // 0 matches, a free id in the body: created with it
    let (st, _, b) = s
        .put(
            "Patient?name=nobody",
            &json!({"resourceType": "Patient", "id": "fresh"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(b["id"], "fresh");
    // 2 matches: 412
    let (st, _, _) = s.post("Patient", &peter(None, "5")).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, h, b) = s.put(query, &peter(None, "6")).await;
    outcome(st, &h, &b, StatusCode::PRECONDITION_FAILED);

    // Conditional delete: one match is deleted, several are 412, none is 204.
    let (st, _, _) = s.delete("Patient?identifier=http://mrn|A2").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = s.get("Patient/p2").await;
    assert_eq!(st, StatusCode::GONE);
    let (st, h, b) = s.delete("Patient?gender=female").await;
    outcome(st, &h, &b, StatusCode::PRECONDITION_FAILED);
    let (st, _, _) = s.delete("Patient?identifier=http://mrn|none").await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, h, b) = s.delete("Patient?foo=1").await;
    outcome(st, &h, &b, StatusCode::BAD_REQUEST);
    s.stop().await;
}

/// The reference guide's search examples (checklist 5.8) on the shipped Synthea sample, with
/// expected counts computed from the NDJSON files.
#[tokio::test]
async fn the_guides_examples_on_the_sample() {
    use fhirlake::ingest::{self, ImportOptions, ImportProgress};
    use std::sync::Arc;

    let s = TestServer::default().await;
    let ds = s.inst.datastore(None).await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for dir in ["synthea-r4-100p", "synthea3-10p"] {
        let report = ingest::import(
            &s.inst.store,
            &ds,
            &root.join(dir),
            &ImportOptions::new(tempfile::tempdir().unwrap().keep()),
            Arc::new(ImportProgress::default()),
        )
        .await
        .unwrap();
        assert_eq!(report.failed(), 0);
    }
    let resources = |prefix: &str| -> Vec<Value> {
        let mut out = Vec::new();
        for dir in ["synthea-r4-100p", "synthea3-10p"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with(&format!("{prefix}.")) {
                    out.extend(
                        crate::common::gz_lines(&path)
                            .iter()
                            .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                    );
                }
            }
        }
        out
    };
    let has_code = |cc: &Value, code: &str| {
        cc["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["code"] == code)
    };
    let expect_1997 = resources("Patient")
        .iter()
        .filter(|p| p["birthDate"].as_str().unwrap_or("").starts_with("1997"))
        .count();
    let expect_pregnancy = resources("Condition")
        .iter()
        .filter(|c| has_code(&c["code"], "72892002"))
        .count();
    // The guide searches `address=boston`; the shipped sample's locations are in Kansas, so the
    // same upper-case city match is checked with TOPEKA.
    let expect_boston = resources("Location")
        .iter()
        .filter(|l| {
            let a = &l["address"];
            ["city", "state", "district", "postalCode", "country", "text"]
                .iter()
                .any(|k| {
                    a[*k]
                        .as_str()
                        .is_some_and(|v| v.to_lowercase().starts_with("topeka"))
                })
                || a["line"].as_array().into_iter().flatten().any(|v| {
                    v.as_str()
                        .is_some_and(|v| v.to_lowercase().starts_with("topeka"))
                })
        })
        .count();
    let expect_smoker = resources("Observation")
        .iter()
        .filter(|o| has_code(&o["valueCodeableConcept"], "266919005"))
        .count();
    assert!(expect_pregnancy > 0 && expect_boston > 0 && expect_smoker > 0);
    for (query, expected) in [
        ("Patient?birthdate=eq1997", expect_1997),
        ("Condition?code=72892002", expect_pregnancy),
        ("Location?address=topeka", expect_boston),
        ("Observation?value-concept=266919005", expect_smoker),
    ] {
        assert_eq!(matches(&s, query).await.len(), expected, "{query}");
        let (_, _, b) = s.get(&format!("{query}&_summary=count")).await;
        assert_eq!(b["total"], expected, "{query}");
        // The guide's POST form: the query in braces as the body.
        let (ty, params) = query.split_once('?').unwrap();
        let (st, _, b) = s
            .send(
                s.http
                    .post(s.url(&format!("{ty}/_search?_total=accurate")))
                    .header("content-type", "application/json")
                    .body(format!("{{{params}}}")),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "URL and body together: {b}");
        let (st, _, b) = s
            .send(
                s.http
                    .post(s.url(&format!("{ty}/_search")))
                    .header("content-type", "application/json")
                    .body(format!("{{{params}}}")),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let first_page = b["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(first_page, expected.min(100), "{query}");
    }
    s.stop().await;
}
