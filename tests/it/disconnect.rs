//! Clients that go away in the middle of a write, as load balancers and impatient clients do:
//! during the body upload, right after the request (while the store writes), and during the
//! response, each closing with a reset (RST) rather than a clean FIN. Afterwards every write
//! must succeed with normal latency and the data must be whole: no half-written version,
//! histories without gaps, transactions all or nothing, and SQL equal to the store.
//!
//! Before the store's writes moved to their own task, one round of this left a pooled SQLite
//! connection inside `BEGIN IMMEDIATE` and every later write failed after 30 s with
//! "database is locked".

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use fhirlake::api::ApiConfig;
use fhirlake::lake::provider::LakeTable;
use fhirlake::sql::SqlEngine;
use fhirlake::store::reads::HistoryQuery;

use crate::api::TestServer;

/// Abandoning clients at once, and rounds of them (the reproduction in the issue).
const CLIENTS: usize = 32;
const ROUNDS: usize = 30;
/// Ids the abandoned PUTs and DELETEs fight over.
const SHARED_IDS: u64 = 8;
/// Patients in each abandoned transaction Bundle.
const BUNDLE: usize = 10;
/// Longest a write may take once the chaos is over (the wedge made every write take 30 s).
const NORMAL_LATENCY: Duration = Duration::from_secs(5);

/// Where a client gives up.
#[derive(Debug, Clone, Copy)]
enum Abort {
    /// Headers and half the body sent.
    MidBody,
    /// The whole request sent, then gone after this many microseconds (0-3 ms).
    AfterRequest(u64),
    /// Gone after the first byte of the response.
    MidResponse,
}

/// A small deterministic generator (xorshift64*), so a failure replays with the same choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// One raw HTTP/1.1 request and where its body starts.
struct RawRequest {
    bytes: Vec<u8>,
    body_start: usize,
}

fn raw(method: &str, path: &str, host: &str, body: &Value) -> RawRequest {
    let body = body.to_string();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let body_start = head.len();
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    RawRequest { bytes, body_start }
}

/// Sends `request` and leaves as `abort` says, with a reset.
async fn abandon(addr: SocketAddr, request: RawRequest, abort: Abort) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    // Linger 0: closing sends RST, as a client that crashes or times out does. (Deprecated
    // because a non-zero linger blocks the thread on drop; zero never does.)
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    let sent = match abort {
        Abort::MidBody => {
            let cut = request.body_start + (request.bytes.len() - request.body_start) / 2;
            stream.write_all(&request.bytes[..cut]).await
        }
        Abort::AfterRequest(_) | Abort::MidResponse => stream.write_all(&request.bytes).await,
    };
    if sent.is_err() {
        return;
    }
    match abort {
        Abort::MidBody => tokio::time::sleep(Duration::from_millis(1)).await,
        Abort::AfterRequest(micros) => tokio::time::sleep(Duration::from_micros(micros)).await,
        Abort::MidResponse => {
            let mut first = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut first)).await;
        }
    }
    drop(stream);
}

fn patient(family: &str, id: Option<&str>) -> Value {
    let mut p =
        json!({"resourceType": "Patient", "name": [{"family": family}], "gender": "female"});
    if let Some(id) = id {
        p["id"] = json!(id);
    }
    p
}

/// A transaction of `BUNDLE` Patient creates, all with family `marker`.
fn transaction(marker: &str) -> Value {
    let entries: Vec<Value> = (0..BUNDLE)
        .map(|_| json!({"resource": patient(marker, None), "request": {"method": "POST", "url": "Patient"}}))
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// One abandoned write: a create, an update or delete of a shared id, or a transaction.
fn chaos_request(rng: &mut Rng, path: &str, host: &str, n: usize) -> RawRequest {
    let shared = format!("d{}", rng.below(SHARED_IDS));
    match rng.below(4) {
        0 => raw(
            "POST",
            &format!("{path}/Patient"),
            host,
            &patient(&format!("c{n}"), None),
        ),
        1 => raw(
            "PUT",
            &format!("{path}/Patient/{shared}"),
            host,
            &patient(&format!("u{n}"), Some(&shared)),
        ),
        2 => raw(
            "DELETE",
            &format!("{path}/Patient/{shared}"),
            host,
            &Value::Null,
        ),
        _ => raw("POST", path, host, &transaction(&format!("tx{n}"))),
    }
}

fn abort_point(rng: &mut Rng) -> Abort {
    match rng.below(3) {
        0 => Abort::MidBody,
        1 => Abort::AfterRequest(rng.below(3_000)),
        _ => Abort::MidResponse,
    }
}

/// The server address and data store path of a base URL (`http://host:port/datastore/x/r4`).
fn target(base: &str) -> (SocketAddr, String, String) {
    let url = reqwest::Url::parse(base).unwrap();
    let addr: SocketAddr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap();
    (addr, addr.to_string(), url.path().to_string())
}

/// Abandons writes against `base`, `clients` at a time, until `stop` is set; returns how
/// many. The crash test mixes this into the load it kills the server under.
pub(crate) async fn abandon_until(
    base: String,
    seed: u64,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> usize {
    let (addr, host, path) = target(&base);
    let count = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| {
            let (host, path, stop, count) =
                (host.clone(), path.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed.wrapping_add(c).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                while !stop.load(Ordering::Relaxed) {
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    let request = chaos_request(&mut rng, &path, &host, n);
                    abandon(addr, request, abort_point(&mut rng)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_reset_mid_write_do_not_wedge_or_corrupt_writes() {
    let s = TestServer::start(ApiConfig {
        sync_interval: Duration::from_millis(100),
        ..ApiConfig::default()
    })
    .await;
    let (addr, host, path) = target(&s.base);

    let mut rng = Rng(0x5eed_f11e_1a4e);
    let mut n = 0;
    for _ in 0..ROUNDS {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                n += 1;
                let request = chaos_request(&mut rng, &path, &host, n);
                tokio::spawn(abandon(addr, request, abort_point(&mut rng)))
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
    }

    // Every write afterwards succeeds, promptly.
    for i in 0..20 {
        let started = Instant::now();
        let (status, _, body) = s
            .put(
                &format!("Patient/p{i}"),
                &patient("After", Some(&format!("p{i}"))),
            )
            .await;
        let took = started.elapsed();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "write {i} after the disconnects: {status} {body}"
        );
        assert!(took < NORMAL_LATENCY, "write {i} took {took:?}");
    }
    let (status, _, _) = s.put("Patient/d0", &patient("Last", Some("d0"))).await;
    assert!(status.is_success(), "a contended id is writable: {status}");

    let inst = s.inst.clone();
    let ds = inst.datastore(None).await.unwrap();
    let _dir = s.stop().await;
    let current = check_histories(&inst.store, &ds.id).await;
    check_transactions_whole(&current);
    check_sql_equals_store(&inst, &ds.name, &current).await;
}

/// Every id's versions are 1..=n with matching `meta.versionId`; returns each live resource's
/// (version, family).
async fn check_histories(
    store: &fhirlake::store::Store,
    datastore_id: &str,
) -> BTreeMap<String, (i64, String)> {
    let all = store
        .history(
            datastore_id,
            &HistoryQuery {
                count: 1_000_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut by_id: HashMap<String, Vec<_>> = HashMap::new();
    for v in all.versions {
        by_id.entry(v.id.clone()).or_default().push(v);
    }
    let mut current = BTreeMap::new();
    for (id, mut versions) in by_id {
        versions.sort_by_key(|v| v.version);
        let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
        assert_eq!(
            numbers,
            (1..=versions.len() as i64).collect::<Vec<_>>(),
            "{id}"
        );
        for v in &versions {
            match &v.json {
                Some(text) => {
                    let body: Value = serde_json::from_str(text).unwrap();
                    assert_eq!(body["meta"]["versionId"], v.version.to_string(), "{id}");
                    assert_eq!(body["id"], id.as_str());
                }
                None => assert!(v.deleted, "{id} v{} has no body", v.version),
            }
        }
        let last = versions.last().unwrap();
        let stored = store
            .read_current(datastore_id, "Patient", &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version, last.version, "{id}: current pointer");
        if let Some(text) = &last.json {
            let body: Value = serde_json::from_str(text).unwrap();
            let family = body["name"][0]["family"].as_str().unwrap().to_string();
            current.insert(id, (last.version, family));
        }
    }
    current
}

/// A transaction's Patients exist all together or not at all.
fn check_transactions_whole(current: &BTreeMap<String, (i64, String)>) {
    let mut per_marker: HashMap<&str, usize> = HashMap::new();
    for (_, family) in current.values() {
        if family.starts_with("tx") {
            *per_marker.entry(family).or_default() += 1;
        }
    }
    for (marker, count) in per_marker {
        assert_eq!(count, BUNDLE, "transaction {marker} is partly applied");
    }
}

/// After the graceful stop's flush, SQL shows exactly the store's live resources and versions.
async fn check_sql_equals_store(
    inst: &fhirlake::installation::Installation,
    datastore: &str,
    current: &BTreeMap<String, (i64, String)>,
) {
    let engine = SqlEngine::new().unwrap();
    engine
        .register_datastore(datastore, LakeTable::all_types(&inst.lake, datastore))
        .unwrap();
    engine.set_current_datastore(datastore).unwrap();
    let batches = engine
        .collect("SELECT id, _version_id FROM patient")
        .await
        .unwrap();
    let mut in_sql = BTreeMap::new();
    for b in batches {
        let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let ids = ids.as_string::<i32>();
        let versions = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        for (id, version) in ids.iter().zip(versions.iter()) {
            in_sql.insert(id.unwrap().to_string(), version.unwrap());
        }
    }
    let in_store: BTreeMap<String, i64> = current
        .iter()
        .map(|(id, (v, _))| (id.clone(), *v))
        .collect();
    assert_eq!(in_sql, in_store, "SQL differs from the store");
}
