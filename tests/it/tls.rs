//! The HTTP listener over TLS (`fhirlake serve --tls-cert --tls-key`), on a loopback port
//! with a self-signed certificate for `localhost`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use fhirlake::api::{ApiConfig, ServeError, Server};
use fhirlake::control::{ControlConfig, ControlPlane};
use fhirlake::installation::Installation;
use fhirlake::registry::Registry;

struct TlsServer {
    addr: SocketAddr,
    /// The default data store's base URL as the server printed it (trailing slash).
    printed_base: String,
    /// The same base URL on `localhost`, the name the certificate is for.
    base: String,
    cert_pem: Vec<u8>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let tls = fhirlake::tls::server_config(&cert_path, &key_path).unwrap();

        let inst = Installation::open(&dir.path().join("inst")).await.unwrap();
        inst.datastore(None).await.unwrap();
        let config = ApiConfig::default();
        let registry = Registry::open(inst, config.sync_interval).await.unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        let mut server = Server::bind_registry_tls(registry, addr, config, tls)
            .await
            .unwrap();
        let plane = ControlPlane::new(
            server.state().registry().clone(),
            server.state().origin().clone(),
            ControlConfig::default(),
        );
        server.add_routes(fhirlake::control::wire::router(plane));
        let addr = server.local_addr();
        let printed_base = server.base_urls()[0].1.clone();
        let base = printed_base
            .replace(&addr.to_string(), &format!("localhost:{}", addr.port()))
            .trim_end_matches('/')
            .to_string();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            printed_base,
            base,
            cert_pem: cert.cert.pem().into_bytes(),
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// A fresh client (so a fresh handshake) that trusts only the test certificate.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem).unwrap())
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    async fn metadata(&self) -> (StatusCode, Value) {
        let resp = self
            .client()
            .get(format!("{}/metadata", self.base))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_https_urls() {
    let s = TlsServer::start().await;
    assert!(s.printed_base.starts_with("https://"), "{}", s.printed_base);
    let (status, cs) = s.metadata().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cs["resourceType"], "CapabilityStatement");

    let resp = s
        .client()
        .post(format!("{}/Patient", s.base))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Tls"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/Patient/", s.base)),
        "{location}"
    );

    // The control plane's endpoints say https too.
    let listed: Value = s
        .client()
        .post(format!("https://localhost:{}/", s.addr.port()))
        .header("X-Amz-Target", "HealthLake.ListFHIRDatastores")
        .header("Content-Type", "application/x-amz-json-1.0")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = listed["DatastorePropertiesList"][0]["DatastoreEndpoint"]
        .as_str()
        .unwrap();
    assert_eq!(endpoint, format!("{}/", s.base));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_no_fhir_answer() {
    let s = TlsServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let request = format!(
        "GET /datastore/x/r4/metadata HTTP/1.1\r\nHost: {}\r\n\r\n",
        s.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    // The connection is closed (at most after a TLS alert), not left hanging.
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut reply))
        .await
        .expect("the server closes a plaintext connection");
    let reply = String::from_utf8_lossy(&reply);
    assert!(!reply.contains("HTTP/1.1"), "{read:?}: {reply}");

    let (status, _) = s.metadata().await;
    assert_eq!(status, StatusCode::OK, "the server still serves");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_handshakes_does_not_block_others() {
    let s = TlsServer::start().await;
    let _silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut half_hello = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // The first bytes of a TLS record header, then nothing.
    half_hello.write_all(&[0x16, 0x03]).await.unwrap();

    let started = Instant::now();
    let (status, _) = s.metadata().await;
    assert_eq!(status, StatusCode::OK);
    let elapsed = started.elapsed();
    // Well under the 10 s handshake timeout the stalled clients are waiting out.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    s.stop().await;
}

#[test]
fn a_key_for_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("other.pem"));
    std::fs::write(&cert, one.cert.pem()).unwrap();
    std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
    let err = fhirlake::tls::server_config(&cert, &key).unwrap_err();
    assert!(
        matches!(err, fhirlake::tls::TlsError::Config { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("other.pem"), "{err}");
}
