//! Kill -9 of the real `fhirlake serve` process in the middle of a burst of concurrent REST
//! writes (creates, updates with and without If-Match, deletes, contended updates of shared
//! ids, small transactions), several times over, then a restart on the same data directory:
//! every acknowledged write is still there with its version, histories have no gaps,
//! transactions are whole, and once the lake has caught up the SQL tables (read through the
//! `sql` command after a graceful stop) equal the store.
//!
//! Next to the writers, clients abandon writes mid-request (reset during the body, right after
//! the request, during the response), as in `disconnect.rs`.
//!
//! `CRASH_SEED=<n>` repeats a run's choices (kill times, operations; not the interleaving).
//! `CRASH_ROUNDS=<n>` sets the number of kill -9 cycles (default 4; the soak bench runs 20),
//! and `FHIRLAKE_BIN` runs another server binary (the bench's release build).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const DEFAULT_BIN: &str = env!("CARGO_BIN_EXE_fhirlake");

/// The server binary: `FHIRLAKE_BIN`, else the one cargo built with this test.
fn bin() -> String {
    std::env::var("FHIRLAKE_BIN").unwrap_or_else(|_| DEFAULT_BIN.to_string())
}
/// Concurrent writers.
const TASKS: usize = 8;
/// Ids every writer updates (contention on one resource from several clients).
const SHARED_IDS: usize = 3;
/// Kill -9 / restart cycles before the checks (`CRASH_ROUNDS` overrides).
const ROUNDS: usize = 4;
/// Clients abandoning writes next to the writers.
const ABANDONING: usize = 4;
const TYPES: [&str; 2] = ["Patient", "Observation"];

/// A running `fhirlake serve` child process.
struct ServerProc {
    child: Child,
    /// Data store base URL without the trailing slash.
    base: String,
}

impl ServerProc {
    async fn start(data_dir: &Path, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(bin())
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--flight-sql",
                "127.0.0.1:0",
            ])
            .env("FHIRLAKE_LOG", "warn,sqlx=error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let prefix = "FHIR R4 base URL of data store 'fhir': ";
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix(prefix) {
                    return url.trim().trim_end_matches('/').to_string();
                }
            }
            panic!("the server exited without printing its base URL");
        })
        .await
        .expect("the server prints its base URL within 60 s");
        // Keep draining stdout so a later print never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }

    async fn kill9(mut self) {
        self.child.start_kill().unwrap(); // SIGKILL
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, then waits for a clean exit (the server flushes the lake first).
    async fn terminate(mut self) {
        let pid = self.child.id().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the server stops within 60 s of SIGTERM")
            .unwrap();
        assert!(exit.success(), "graceful stop exits 0, got {exit}");
    }
}

/// xorshift64*: the tests have no rand crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What an acknowledged write wrote.
#[derive(Debug, Clone)]
enum Written {
    /// A version with this marker in `identifier[0].value`.
    Body(String),
    Deletion,
}

/// One acknowledged write: the server answered 200/201/204 with this version.
#[derive(Debug, Clone)]
struct Ack {
    ty: &'static str,
    id: String,
    version: i64,
    written: Written,
    /// The id was assigned by the server (POST).
    server_assigned: bool,
}

#[derive(Default)]
struct Outcome {
    acks: Vec<Ack>,
    /// Requests without a response (the server was killed under them).
    transport_errors: usize,
    /// Responses that were not the expected success, while the server was alive.
    unexpected: Vec<String>,
}

fn etag_version(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let v = headers.get("etag")?.to_str().ok()?;
    v.trim_start_matches("W/").trim_matches('"').parse().ok()
}

fn etag_of(s: &str) -> Option<i64> {
    s.trim_start_matches("W/").trim_matches('"').parse().ok()
}

/// `meta.versionId` of a resource, as a number (it is a JSON string).
fn version_id(resource: &Value) -> Option<i64> {
    resource["meta"]["versionId"].as_str()?.parse().ok()
}

fn body(ty: &str, id: Option<&str>, marker: &str, subject: Option<&str>) -> Value {
    let mut v = match ty {
        "Patient" => json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:crash-test", "value": marker}],
            "name": [{"family": format!("F{marker}"), "given": ["Crash"]}],
            "gender": "unknown",
            "birthDate": "1970-01-01"
        }),
        _ => json!({
            "resourceType": "Observation",
            "identifier": [{"system": "urn:crash-test", "value": marker}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": subject.unwrap_or("Patient/none")},
            "valueQuantity": {"value": 72.50, "unit": "/min"}
        }),
    };
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}

/// One writer: creates, updates (sometimes with If-Match) and deletes its own resources,
/// updates the shared ids, and posts small transactions, until a request gets no response
/// (the server was killed).
async fn writer(
    tag: String,
    seed: u64,
    http: reqwest::Client,
    base: String,
    sent: Arc<AtomicUsize>,
) -> Outcome {
    let mut rng = Rng(seed | 1);
    let mut out = Outcome::default();
    // Live resources this task owns: (type, id, current version).
    let mut own: Vec<(&'static str, String, i64)> = Vec::new();
    let mut n = 0usize;
    let fhir = "application/fhir+json";
    loop {
        n += 1;
        let marker = format!("{tag}-{n}");
        let roll = rng.below(100);
        sent.fetch_add(1, Ordering::Relaxed);
        if roll < 35 || own.is_empty() {
            // create
            let ty = TYPES[rng.below(2)];
            let subject = own
                .iter()
                .find(|(t, ..)| *t == "Patient")
                .map(|(_, id, _)| format!("Patient/{id}"));
            let req = http
                .post(format!("{base}/{ty}"))
                .header("content-type", fhir)
                .body(body(ty, None, &marker, subject.as_deref()).to_string());
            let resp = match req.send().await {
                Ok(r) => r,
                Err(_) => {
                    out.transport_errors += 1;
                    break;
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let Ok(text) = resp.text().await else {
                out.transport_errors += 1;
                break;
            };
            if status != StatusCode::CREATED {
                out.unexpected.push(format!("POST {ty}: {status} {text}"));
                continue;
            }
            let v: Value = serde_json::from_str(&text).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            let version = etag_version(&headers).expect("ETag on 201");
            assert_eq!(version, 1, "a create is version 1");
            let location = headers["location"].to_str().unwrap();
            assert_eq!(
                location,
                format!("{base}/{ty}/{id}/_history/1"),
                "Location of a create"
            );
            out.acks.push(Ack {
                ty,
                id: id.clone(),
                version,
                written: Written::Body(marker),
                server_assigned: true,
            });
            own.push((ty, id, version));
        } else if roll < 70 {
            // update of an own resource, half of the time with If-Match
            let i = rng.below(own.len());
            let (ty, id, current) = own[i].clone();
            let subject = own
                .iter()
                .find(|(t, ..)| *t == "Patient")
                .map(|(_, id, _)| format!("Patient/{id}"));
            let mut req = http
                .put(format!("{base}/{ty}/{id}"))
                .header("content-type", fhir)
                .body(body(ty, Some(&id), &marker, subject.as_deref()).to_string());
            if rng.below(2) == 0 {
                req = req.header("if-match", format!("W/\"{current}\""));
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(_) => {
                    out.transport_errors += 1;
                    break;
                }
            };
            let status = resp.status();
            let version = etag_version(resp.headers());
            let Ok(text) = resp.text().await else {
                out.transport_errors += 1;
                break;
            };
            if status != StatusCode::OK {
                out.unexpected
                    .push(format!("PUT {ty}/{id}: {status} {text}"));
                continue;
            }
            let version = version.expect("ETag on 200");
            if version != current + 1 {
                out.unexpected.push(format!(
                    "PUT {ty}/{id}: version {version} after {current} (only this task writes it)"
                ));
            }
            out.acks.push(Ack {
                ty,
                id: id.clone(),
                version,
                written: Written::Body(marker),
                server_assigned: false,
            });
            own[i].2 = version;
        } else if roll < 82 {
            // delete of an own resource
            let i = rng.below(own.len());
            let (ty, id, current) = own.swap_remove(i);
            let resp = match http.delete(format!("{base}/{ty}/{id}")).send().await {
                Ok(r) => r,
                Err(_) => {
                    out.transport_errors += 1;
                    break;
                }
            };
            let status = resp.status();
            let version = etag_version(resp.headers());
            let Ok(text) = resp.text().await else {
                out.transport_errors += 1;
                break;
            };
            if status != StatusCode::NO_CONTENT {
                out.unexpected
                    .push(format!("DELETE {ty}/{id}: {status} {text}"));
                continue;
            }
            let Some(version) = version else {
                out.unexpected.push(format!(
                    "DELETE {ty}/{id}: 204 without an ETag for a live resource"
                ));
                continue;
            };
            if version != current + 1 {
                out.unexpected.push(format!(
                    "DELETE {ty}/{id}: version {version} after {current}"
                ));
            }
            out.acks.push(Ack {
                ty,
                id,
                version,
                written: Written::Deletion,
                server_assigned: false,
            });
        } else if roll < 94 {
            // update (or update-as-create) of a shared id, written by every task
            let id = format!("shared-{}", rng.below(SHARED_IDS));
            let req = http
                .put(format!("{base}/Patient/{id}"))
                .header("content-type", fhir)
                .body(body("Patient", Some(&id), &marker, None).to_string());
            let resp = match req.send().await {
                Ok(r) => r,
                Err(_) => {
                    out.transport_errors += 1;
                    break;
                }
            };
            let status = resp.status();
            let version = etag_version(resp.headers());
            let Ok(text) = resp.text().await else {
                out.transport_errors += 1;
                break;
            };
            if status != StatusCode::OK && status != StatusCode::CREATED {
                out.unexpected
                    .push(format!("PUT Patient/{id}: {status} {text}"));
                continue;
            }
            out.acks.push(Ack {
                ty: "Patient",
                id,
                version: version.expect("ETag on update"),
                written: Written::Body(marker),
                server_assigned: false,
            });
        } else {
            // transaction: a Patient and an Observation referencing it through urn:uuid
            let full_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            let pm = format!("{marker}-p");
            let om = format!("{marker}-o");
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"fullUrl": full_url, "resource": body("Patient", None, &pm, None),
                     "request": {"method": "POST", "url": "Patient"}},
                    {"resource": body("Observation", None, &om, Some(&full_url)),
                     "request": {"method": "POST", "url": "Observation"}}
                ]
            });
            let req = http
                .post(base.clone())
                .header("content-type", fhir)
                .body(bundle.to_string());
            let resp = match req.send().await {
                Ok(r) => r,
                Err(_) => {
                    out.transport_errors += 1;
                    break;
                }
            };
            let status = resp.status();
            let Ok(text) = resp.text().await else {
                out.transport_errors += 1;
                break;
            };
            if status != StatusCode::OK {
                out.unexpected.push(format!("transaction: {status} {text}"));
                continue;
            }
            let v: Value = serde_json::from_str(&text).unwrap();
            let entries = v["entry"].as_array().unwrap();
            assert_eq!(entries.len(), 2, "{v}");
            for (entry, (ty, m)) in entries.iter().zip([("Patient", pm), ("Observation", om)]) {
                let resp = &entry["response"];
                assert!(
                    resp["status"].as_str().unwrap().starts_with("201"),
                    "{entry}"
                );
                let location = resp["location"].as_str().unwrap();
                // Type/id/_history/1
                let parts: Vec<&str> = location.rsplit('/').collect();
                assert!(parts.len() >= 4, "location {location}");
                assert_eq!(parts[3], ty);
                let id = parts[2].to_string();
                let version = etag_of(resp["etag"].as_str().unwrap()).unwrap();
                out.acks.push(Ack {
                    ty,
                    id: id.clone(),
                    version,
                    written: Written::Body(m),
                    server_assigned: true,
                });
                own.push((ty, id, version));
            }
        }
    }
    out
}

/// Every version of a type from type-level history (all pages), newest first.
async fn type_history(http: &reqwest::Client, server: &ServerProc, ty: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut url = server.url(&format!("{ty}/_history?_count=500"));
    loop {
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let page: Value = resp.json().await.unwrap();
        entries.extend(page["entry"].as_array().cloned().unwrap_or_default());
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(n) => url = n,
            None => return entries,
        }
    }
}

/// One history entry: (id, version, deleted, lastModified).
fn history_item(ty: &str, e: &Value) -> (String, i64, bool, String) {
    let full_url = e["fullUrl"].as_str().unwrap();
    let (prefix, id) = full_url.rsplit_once('/').unwrap();
    assert!(prefix.ends_with(ty), "{full_url}");
    let resp = &e["response"];
    let version = etag_of(resp["etag"].as_str().unwrap()).unwrap();
    let deleted = e["request"]["method"] == "DELETE";
    assert_eq!(deleted, e.get("resource").is_none(), "{e}");
    if let Some(r) = e.get("resource") {
        assert_eq!(r["id"], id, "{e}");
        assert_eq!(version_id(r), Some(version), "{e}");
    }
    (
        id.to_string(),
        version,
        deleted,
        resp["lastModified"].as_str().unwrap().to_string(),
    )
}

/// Waits until `$lake-status` reports the lake in sync with the store (at most 30 s).
async fn wait_in_sync(http: &reqwest::Client, server: &ServerProc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = http
            .get(server.url("$lake-status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["inSync"] == true {
            assert_eq!(status["pendingChanges"], 0, "{status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the lake is not in sync 30 s after the restart: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of `SELECT id, _version_id, meta.versionid, meta.lastupdated FROM <table>` through
/// the CLI (the server is stopped).
fn sql_rows(data_dir: &Path, table: &str) -> Vec<(String, i64, String, String)> {
    let out = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "sql",
            "-e",
            &format!(
                "SELECT id, _version_id, meta.versionid AS vid, meta.lastupdated AS lu FROM {table}"
            ),
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,_version_id,vid,lu"), "{text}");
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 4, "{l}");
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_rest_writes_loses_no_acknowledged_write() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log = dir.path().join("server.log");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    let mut rng = Rng(seed);
    eprintln!("crash test: seed {seed} (CRASH_SEED to repeat)");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // --- bursts, each killed in the middle; the next round restarts on the same data ---
    let rounds = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    let mut acks = Vec::new();
    let mut abandoned = 0;
    for round in 0..rounds {
        let server = ServerProc::start(&data_dir, &log).await;
        // Start each burst with the lake caught up (after a restart it first commits what
        // the killed server left behind), so that lake syncs complete during the burst and
        // the kill can land in one: the first sync starts 0.5 s in and takes about as long.
        wait_in_sync(&http, &server).await;
        let kill_after = Duration::from_millis(600 + rng.below(1000) as u64);
        let sent = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..TASKS)
            .map(|t| {
                tokio::spawn(writer(
                    format!("r{round}t{t}"),
                    rng.next(),
                    http.clone(),
                    server.base.clone(),
                    sent.clone(),
                ))
            })
            .collect();
        let stop_abandoning = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let abandoning = tokio::spawn(crate::disconnect::abandon_until(
            server.base.clone(),
            rng.next(),
            ABANDONING,
            stop_abandoning.clone(),
        ));
        tokio::time::sleep(kill_after).await;
        let lake: Value = http
            .get(server.url("$lake-status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sent_at_kill = sent.load(Ordering::Relaxed);
        server.kill9().await;
        stop_abandoning.store(true, Ordering::Relaxed);
        abandoned += abandoning.await.unwrap();
        let mut round_acks = Vec::new();
        let mut transport_errors = 0;
        let mut unexpected = Vec::new();
        for w in writers {
            let o = tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("writers stop once the server is gone")
                .unwrap();
            round_acks.extend(o.acks);
            transport_errors += o.transport_errors;
            unexpected.extend(o.unexpected);
        }
        assert!(
            unexpected.is_empty(),
            "unexpected answers while the server was up:\n{}",
            unexpected.join("\n")
        );
        assert_eq!(
            transport_errors, TASKS,
            "every writer was still running when the server was killed"
        );
        let deletes = round_acks
            .iter()
            .filter(|a| matches!(a.written, Written::Deletion))
            .count();
        eprintln!(
            "crash test: round {round}: killed after {kill_after:?}, {sent_at_kill} requests sent by then, {} acknowledged writes ({deletes} deletions), lake {} changes behind",
            round_acks.len(),
            lake["pendingChanges"]
        );
        assert!(
            round_acks.len() > 50,
            "the burst acknowledged only {} writes",
            round_acks.len()
        );
        acks.extend(round_acks);
    }
    let burst_done = started.elapsed();

    // Server-assigned ids are never handed out twice.
    let mut assigned = HashSet::new();
    for a in acks.iter().filter(|a| a.server_assigned) {
        assert!(
            assigned.insert((a.ty, a.id.clone())),
            "server id {}/{} assigned twice",
            a.ty,
            a.id
        );
    }

    // --- restart on the same data directory ---
    let server = ServerProc::start(&data_dir, &log).await;
    let restarted = started.elapsed();
    let status: Value = http
        .get(server.url("$lake-status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!(
        "crash test: after the restart the lake is {} changes behind the store",
        status["pendingChanges"]
    );

    // Every acknowledged version is readable (vread) with what was written.
    let failures: Vec<String> = futures::stream::iter(acks.iter().cloned())
        .map(|a| {
            let http = http.clone();
            let url = server.url(&format!("{}/{}/_history/{}", a.ty, a.id, a.version));
            async move {
                let resp = http.get(&url).send().await.unwrap();
                let status = resp.status();
                let etag = etag_version(resp.headers());
                let text = resp.text().await.unwrap();
                match &a.written {
                    Written::Deletion if status == StatusCode::GONE => None,
                    Written::Deletion => Some(format!(
                        "vread of acknowledged deletion {url}: {status}, expected 410"
                    )),
                    Written::Body(marker) => {
                        if status != StatusCode::OK {
                            return Some(format!(
                                "vread of acknowledged version {url}: {status} {text}"
                            ));
                        }
                        let v: Value = serde_json::from_str(&text).unwrap();
                        let ok = version_id(&v) == Some(a.version)
                            && v["identifier"][0]["value"] == marker.as_str()
                            && etag == Some(a.version);
                        (!ok).then(|| {
                            format!("vread {url}: expected marker {marker}, got {etag:?} {v}")
                        })
                    }
                }
            }
        })
        .buffer_unordered(16)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} acknowledged versions lost or wrong after kill -9:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Per resource, the newest acknowledged write.
    let mut newest: HashMap<(&str, String), &Ack> = HashMap::new();
    for a in &acks {
        let e = newest.entry((a.ty, a.id.clone())).or_insert(a);
        if a.version > e.version {
            *e = a;
        }
    }

    // History: per id, versions n, n-1, ..., 1 (newest first), no (id, version) twice,
    // lastModified never older than the version before it.
    let mut store: BTreeMap<(&str, String), (i64, bool, String)> = BTreeMap::new();
    let mut order_problems = Vec::new();
    let mut tx_patients: BTreeMap<String, String> = BTreeMap::new();
    let mut tx_subjects: BTreeMap<String, String> = BTreeMap::new();
    for ty in TYPES {
        let entries = type_history(&http, &server, ty).await;
        let mut per_id: HashMap<String, Vec<(i64, bool, String)>> = HashMap::new();
        for e in &entries {
            let (id, version, deleted, last_modified) = history_item(ty, e);
            // Transaction entries (acknowledged or not): markers "<tag>-<n>-p" / "-o".
            if let Some(marker) = e["resource"]["identifier"][0]["value"].as_str() {
                if let Some(tx) = marker.strip_suffix("-p") {
                    tx_patients.insert(tx.to_string(), format!("Patient/{id}"));
                } else if let Some(tx) = marker.strip_suffix("-o") {
                    let subject = e["resource"]["subject"]["reference"].as_str().unwrap();
                    tx_subjects.insert(tx.to_string(), subject.to_string());
                }
            }
            per_id
                .entry(id)
                .or_default()
                .push((version, deleted, last_modified));
        }
        for (id, versions) in per_id {
            let numbers: Vec<i64> = versions.iter().map(|v| v.0).collect();
            let expected: Vec<i64> = (1..=numbers.len() as i64).rev().collect();
            assert_eq!(
                numbers, expected,
                "{ty}/{id}: history versions are not n..1 without gaps or repeats"
            );
            for w in versions.windows(2) {
                // w[0] is the newer version.
                if w[0].2 < w[1].2 {
                    order_problems.push(format!(
                        "{ty}/{id}: version {} lastUpdated {} is older than version {}'s {}",
                        w[0].0, w[0].2, w[1].0, w[1].2
                    ));
                }
            }
            for w in versions.windows(2) {
                assert!(
                    !(w[0].1 && w[1].1),
                    "{ty}/{id}: two deletions in a row in history"
                );
            }
            let (v, deleted, lu) = versions[0].clone();
            store.insert((ty, id), (v, deleted, lu));
        }
    }
    // Transactions are all or nothing, also the ones cut off by the kill, and the
    // urn:uuid reference points at the Patient of the same transaction.
    assert_eq!(
        tx_patients, tx_subjects,
        "transaction Patients and their Observations' subjects"
    );
    eprintln!(
        "crash test: {} transactions in the store, each complete",
        tx_patients.len()
    );
    for ((ty, id), a) in &newest {
        let (current, deleted, _) = store
            .get(&(*ty, id.clone()))
            .unwrap_or_else(|| panic!("{ty}/{id} acknowledged but absent from _history"));
        assert!(
            *current >= a.version,
            "{ty}/{id}: history ends at version {current}, acknowledged {}",
            a.version
        );
        if matches!(a.written, Written::Deletion) {
            // Nothing writes a resource after deleting it.
            assert!(
                *deleted && *current == a.version,
                "{ty}/{id}: acknowledged deletion at {} but current is {current}",
                a.version
            );
        }
    }

    // Instance history agrees with type history (a sample of the acknowledged resources).
    for ((ty, id), _) in newest.iter().take(40) {
        let resp = http
            .get(server.url(&format!("{ty}/{id}/_history")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        let versions: Vec<i64> = page["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| history_item(ty, e).1)
            .collect();
        let n = store[&(*ty, id.clone())].0;
        assert_eq!(versions, (1..=n).rev().collect::<Vec<_>>(), "{ty}/{id}");
    }

    // Reads agree with history: live resources at their current version, deleted ones 410.
    let read_failures: Vec<String> = futures::stream::iter(store.clone())
        .map(|((ty, id), (version, deleted, last_updated))| {
            let http = http.clone();
            let url = server.url(&format!("{ty}/{id}"));
            async move {
                let resp = http.get(&url).send().await.unwrap();
                let status = resp.status();
                let etag = etag_version(resp.headers());
                let text = resp.text().await.unwrap();
                if deleted {
                    return (status != StatusCode::GONE)
                        .then(|| format!("GET {url}: {status}, expected 410 (deleted)"));
                }
                if status != StatusCode::OK {
                    return Some(format!("GET {url}: {status} {text}"));
                }
                let v: Value = serde_json::from_str(&text).unwrap();
                let ok = version_id(&v) == Some(version)
                    && v["meta"]["lastUpdated"] == last_updated.as_str()
                    && etag == Some(version);
                (!ok).then(|| format!("GET {url}: expected version {version}, got {v}"))
            }
        })
        .buffer_unordered(16)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(read_failures.is_empty(), "{}", read_failures.join("\n"));

    // The lake catches up with everything, including writes from before the kill.
    wait_in_sync(&http, &server).await;
    let synced = started.elapsed();
    server.terminate().await;

    // SQL tables equal the store: one row per live id, at its current version.
    for ty in TYPES {
        let rows = sql_rows(&data_dir, &ty.to_lowercase());
        let mut sql: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for (id, version, vid, lu) in rows {
            assert_eq!(
                vid,
                version.to_string(),
                "{ty}/{id}: meta.versionid and _version_id differ"
            );
            assert!(
                sql.insert(id.clone(), (version, lu)).is_none(),
                "{ty}/{id} appears twice in SQL"
            );
        }
        let live: BTreeMap<String, (i64, String)> = store
            .iter()
            .filter(|((t, _), (_, deleted, _))| *t == ty && !deleted)
            .map(|((_, id), (v, _, lu))| (id.clone(), (*v, lu.clone())))
            .collect();
        let missing: Vec<_> = live.keys().filter(|k| !sql.contains_key(*k)).collect();
        let extra: Vec<_> = sql.keys().filter(|k| !live.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{ty}: SQL ids differ from the store: missing {missing:?}, extra (deleted or unknown) {extra:?}"
        );
        for (id, (v, lu)) in &live {
            assert_eq!(
                &sql[id],
                &(*v, lu.clone()),
                "{ty}/{id}: SQL row is not the current version"
            );
        }
        eprintln!("crash test: {ty}: {} live rows in SQL = store", live.len());
    }

    assert!(
        order_problems.is_empty(),
        "meta.lastUpdated goes backwards between versions ({} cases):\n{}",
        order_problems.len(),
        order_problems.join("\n")
    );
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = server_log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the server logged errors:\n{}",
        errors.join("\n")
    );
    let warnings = server_log.lines().filter(|l| l.contains("WARN")).count();
    eprintln!("crash test: {warnings} warnings in the server log");
    eprintln!(
        "crash test: {} lake row-index rebuilds after a crash between a lake commit and its record",
        server_log.matches("rebuilding it from the table").count()
    );
    eprintln!(
        "crash test: {rounds} kill -9 rounds, {} acknowledged writes, {abandoned} abandoned requests; bursts done {burst_done:?}, restarted {restarted:?}, in sync {synced:?}, done {:?}",
        acks.len(),
        started.elapsed()
    );
}

/// Concurrent updates of one resource: each version's `meta.lastUpdated` must not be older
/// than the previous version's (FHIR: the instant the version was made; `_since` filters on it).
///
/// The store reads the clock after taking SQLite's write lock, where versions are numbered; a
/// clock read before waiting for the lock once gave later versions earlier instants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_updated_follows_version_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &dir.path().join("server.log")).await;
    let http = reqwest::Client::new();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let http = http.clone();
            let url = server.url("Patient/hot");
            tokio::spawn(async move {
                for n in 0..25 {
                    let body = body("Patient", Some("hot"), &format!("c{c}-{n}"), None);
                    let resp = http
                        .put(&url)
                        .header("content-type", "application/fhir+json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    assert!(resp.status().is_success(), "{}", resp.status());
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let entries = type_history(&http, &server, "Patient").await;
    server.terminate().await;
    let versions: Vec<_> = entries.iter().map(|e| history_item("Patient", e)).collect();
    assert_eq!(versions.len(), 400);
    let backwards: Vec<String> = versions
        .windows(2)
        .filter(|w| w[0].3 < w[1].3)
        .map(|w| {
            format!(
                "version {} lastUpdated {} < version {} lastUpdated {}",
                w[0].1, w[0].3, w[1].1, w[1].3
            )
        })
        .collect();
    assert!(
        backwards.is_empty(),
        "{} of 399 version steps go back in time:\n{}",
        backwards.len(),
        backwards.join("\n")
    );
}
