//! SMART on FHIR data stores over real HTTP: bearer tokens signed by a JWKS the test serves on
//! loopback, checked for signature, issuer, audience and lifetime; scopes per interaction; a
//! launch patient's compartment around every read, search, include and write. (The same
//! behaviour against a real OAuth2 server and clients, and Bulk Data's scopes, which need the
//! control plane's routes: tests/interop/test_smart.py.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use fhirlake::api::{ApiConfig, Server};
use fhirlake::installation::Installation;
use fhirlake::store::DatastoreStatus;

/// An identity provider: one ES256 key, its JWKS served on loopback.
struct Idp {
    issuer: String,
    key: EncodingKey,
    public_x: String,
}

impl Idp {
    async fn start() -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        let (x, y) = (B64.encode(&raw[1..33]), B64.encode(&raw[33..65]));
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y,
                                    "kid": "k1", "alg": "ES256", "use": "sig"}]});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            issuer,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            public_x: x,
        }
    }

    fn metadata(&self) -> String {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks", self.issuer),
            "authorization_endpoint": format!("{}/authorize", self.issuer),
            "token_endpoint": format!("{}/token", self.issuer),
            "capabilities": ["launch-standalone", "client-confidential-symmetric"],
        })
        .to_string()
    }

    /// A token for `aud` with `scope`, valid for an hour, plus `extra` claims.
    fn token(&self, aud: &str, scope: &str, extra: Value) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({"iss": self.issuer, "aud": aud, "sub": "user-1",
                                "scope": scope, "iat": now, "exp": now + 3600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

struct Smart {
    base: String,
    idp: Idp,
    http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Smart {
    async fn start() -> Self {
        let idp = Idp::start().await;
        let metadata = idp.metadata();
        Self::start_with(idp, metadata, false).await
    }

    async fn start_with(idp: Idp, metadata: String, fine_grained: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inst = Installation::open(dir.path()).await.unwrap();
        let properties = json!({"IdentityProviderConfiguration": {
            "AuthorizationStrategy": "SMART_ON_FHIR_V1", "Metadata": metadata,
            "FineGrainedAuthorizationEnabled": fine_grained}});
        let ds = inst
            .store
            .create_datastore_with("smart", DatastoreStatus::Active, &properties)
            .await
            .unwrap();
        let server = Server::bind(inst, "127.0.0.1:0".parse().unwrap(), ApiConfig::default())
            .await
            .unwrap();
        let base = format!("http://{}/datastore/{}/r4", server.local_addr(), ds.id);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            idp,
            http: reqwest::Client::new(),
            stop,
            _dir: dir,
        }
    }

    fn token(&self, scope: &str, extra: Value) -> String {
        self.idp.token(&format!("{}/", self.base), scope, extra)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (s, _, b) = self
            .call(reqwest::Method::GET, path, Some(token), None)
            .await;
        (s, b)
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> StatusCode {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
            .0
    }
}

fn observation(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"text": "heart rate"}, "subject": {"reference": format!("Patient/{patient}")}})
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["resource"];
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect();
    ids.sort();
    ids
}

/// Seeds patients a and b with one Observation each, as a system client.
async fn seed(s: &Smart) {
    let admin = s.token("system/*.*", json!({}));
    for p in ["a", "b"] {
        let patient =
            json!({"resourceType": "Patient", "id": p, "name": [{"family": format!("Fam{p}")}]});
        assert_eq!(
            s.put(&format!("Patient/{p}"), &admin, patient).await,
            StatusCode::CREATED
        );
        let status = s
            .put(
                &format!("Observation/o{p}"),
                &admin,
                observation(&format!("o{p}"), p),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_tokens_are_verified_and_discovery_is_public() {
    let s = Smart::start().await;
    let (status, headers, _) = s.call(reqwest::Method::GET, "Patient", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let (status, _, config) = s
        .call(
            reqwest::Method::GET,
            ".well-known/smart-configuration",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["token_endpoint"], format!("{}/token", s.idp.issuer));
    let (status, _, cs) = s.call(reqwest::Method::GET, "metadata", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cs["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );

    let good = s.token("system/*.read", json!({}));
    assert_eq!(s.get("Patient", &good).await.0, StatusCode::OK);
    let now = chrono::Utc::now().timestamp();
    let refused = [
        (
            "expired",
            s.token("system/*.read", json!({"exp": now - 600})),
        ),
        (
            "not yet valid",
            s.token("system/*.read", json!({"nbf": now + 600})),
        ),
        (
            "wrong issuer",
            s.token("system/*.read", json!({"iss": "http://evil"})),
        ),
        (
            "wrong audience",
            s.idp.token("http://other/r4/", "system/*.read", json!({})),
        ),
        ("no resource scope", s.token("openid profile", json!({}))),
        ("alg none", alg_none(&good)),
        (
            "hmac with the public key",
            hmac_confusion(&good, &s.idp.public_x),
        ),
        ("tampered", tampered(&good)),
        ("garbage", "not-a-jwt".into()),
    ];
    for (what, token) in refused {
        let (status, headers, body) = s
            .call(reqwest::Method::GET, "Patient", Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert!(headers.contains_key("www-authenticate"), "{what}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{what}");
    }
    let _ = s.stop.send(());
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let decode = |p: &str| serde_json::from_slice(&B64.decode(p).unwrap()).unwrap();
    let (h, p) = (decode(it.next().unwrap()), decode(it.next().unwrap()));
    (h, p, it.next().unwrap().to_string())
}

fn join(header: &Value, payload: &Value, signature: &str) -> String {
    let enc = |v: &Value| B64.encode(v.to_string());
    format!("{}.{}.{signature}", enc(header), enc(payload))
}

fn alg_none(token: &str) -> String {
    let (_, payload, _) = parts(token);
    join(&json!({"alg": "none", "typ": "JWT"}), &payload, "")
}

fn hmac_confusion(token: &str, public: &str) -> String {
    let (_, payload, _) = parts(token);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(
        &header,
        &payload,
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap()
}

fn tampered(token: &str) -> String {
    let (header, mut payload, signature) = parts(token);
    payload["scope"] = json!("system/*.*");
    join(&header, &payload, &signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_interactions_per_type() {
    let s = Smart::start().await;
    seed(&s).await;
    let obs_reader = s.token("user/Observation.read", json!({}));
    assert_eq!(s.get("Observation/oa", &obs_reader).await.0, StatusCode::OK);
    let (status, outcome) = s.get("Patient/a", &obs_reader).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "forbidden");
    assert_eq!(
        s.put("Observation/oa", &obs_reader, observation("oa", "a"))
            .await,
        StatusCode::FORBIDDEN
    );
    // Included resources the token cannot read are left out; chaining into such a type
    // (which would reveal what it holds) is refused.
    let (status, bundle) = s
        .get("Observation?_include=Observation:subject", &obs_reader)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry_ids(&bundle), ["Observation/oa", "Observation/ob"]);
    let (status, _) = s
        .get("Observation?subject:Patient.family=Fama", &obs_reader)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v2 = s.token("user/Observation.rs user/Patient.cud", json!({}));
    assert_eq!(s.get("Observation?_count=5", &v2).await.0, StatusCode::OK);
    assert_eq!(s.get("Patient/a", &v2).await.0, StatusCode::FORBIDDEN);
    let _ = s.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_patient_sees_and_writes_only_their_compartment() {
    let s = Smart::start().await;
    seed(&s).await;
    let a = s.token("launch/patient patient/*.*", json!({"patient": "a"}));
    assert_eq!(s.get("Patient/a", &a).await.0, StatusCode::OK);
    assert_eq!(s.get("Observation/oa", &a).await.0, StatusCode::OK);
    for path in [
        "Patient/b",
        "Observation/ob",
        "Patient/b/_history",
        "Observation/ob/_history/1",
    ] {
        assert_eq!(s.get(path, &a).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    let searches = [
        ("Observation", vec!["Observation/oa"]),
        ("Observation?subject=Patient/b", vec![]),
        ("Patient?_id=b", vec![]),
        ("Patient", vec!["Patient/a"]),
        (
            "Patient?_revinclude=Observation:subject",
            vec!["Observation/oa", "Patient/a"],
        ),
        (
            "Observation?_include=Observation:subject",
            vec!["Observation/oa", "Patient/a"],
        ),
        ("Observation?subject:Patient.family=Famb", vec![]),
        (
            "Patient?_has:Observation:subject:status=final",
            vec!["Patient/a"],
        ),
        ("_history", vec!["Observation/oa", "Patient/a"]),
    ];
    for (query, want) in searches {
        let (status, bundle) = s.get(query, &a).await;
        assert_eq!(status, StatusCode::OK, "{query}: {bundle}");
        assert_eq!(entry_ids(&bundle), want, "{query}");
    }
    // Writes: only inside the compartment, and nothing of a transaction that reaches out.
    assert_eq!(
        s.put("Observation/new-a", &a, observation("new-a", "a"))
            .await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put("Observation/new-b", &a, observation("new-b", "b"))
            .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.put("Observation/ob", &a, observation("ob", "a")).await,
        StatusCode::FORBIDDEN,
        "moving b's resource into a's compartment"
    );
    let (status, _, _) = s
        .call(reqwest::Method::DELETE, "Observation/ob", Some(&a), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("tx-a", "a"), "request": {"method": "PUT", "url": "Observation/tx-a"}},
        {"resource": observation("tx-b", "b"), "request": {"method": "PUT", "url": "Observation/tx-b"}},
    ]});
    let (status, _, _) = s.call(reqwest::Method::POST, "", Some(&a), Some(tx)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let admin = s.token("system/*.read", json!({}));
    assert_eq!(
        s.get("Observation/tx-a", &admin).await.0,
        StatusCode::NOT_FOUND
    );
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/a"}},
        {"request": {"method": "GET", "url": "Patient/b"}},
    ]});
    let (status, _, out) = s
        .call(reqwest::Method::POST, "", Some(&a), Some(batch))
        .await;
    assert_eq!(status, StatusCode::OK);
    let codes: Vec<&str> = out["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(
        codes[0].starts_with("200") && codes[1].starts_with("403"),
        "{codes:?}"
    );
    let _ = s.stop.send(());
}

/// An RFC 7662 endpoint on loopback: `good` is active for the data store's endpoint, `other`
/// is active for another audience, `slow` answers after 2 s, anything else is inactive.
async fn introspection_endpoint(audience: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/introspect",
        axum::routing::post(move |body: String| {
            let aud = audience.lock().unwrap().clone();
            async move {
                let token = body
                    .split('&')
                    .find_map(|p| p.strip_prefix("token="))
                    .unwrap_or_default()
                    .to_string();
                let exp = chrono::Utc::now().timestamp() + 600;
                axum::Json(match token.as_str() {
                    "good" => json!({"active": true, "aud": aud, "scope": "system/*.read", "exp": exp, "sub": "svc"}),
                    "other" => json!({"active": true, "aud": "http://elsewhere/r4/", "scope": "system/*.read"}),
                    "slow" => {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        json!({"active": true, "aud": aud, "scope": "system/*.read"})
                    }
                    _ => json!({"active": false}),
                })
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_within_a_second() {
    let idp = Idp::start().await;
    let audience = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let endpoint = introspection_endpoint(audience.clone()).await;
    let metadata = json!({
        "issuer": idp.issuer,
        "introspection_endpoint": endpoint,
        "authorization_endpoint": format!("{}/authorize", idp.issuer),
        "token_endpoint": format!("{}/token", idp.issuer),
    })
    .to_string();
    let s = Smart::start_with(idp, metadata, false).await;
    *audience.lock().unwrap() = format!("{}/", s.base);
    assert_eq!(s.get("Patient", "good").await.0, StatusCode::OK);
    assert_eq!(
        s.get("Patient", "good").await.0,
        StatusCode::OK,
        "remembered"
    );
    for token in ["revoked", "other"] {
        let (status, body) = s.get("Patient", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}: {body}");
    }
    let started = std::time::Instant::now();
    let (status, body) = s.get("Patient", "slow").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1800));
    let _ = s.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_grained_users_reach_their_related_patients_only() {
    let idp = Idp::start().await;
    let metadata = idp.metadata();
    let s = Smart::start_with(idp, metadata, true).await;
    seed(&s).await;
    let admin = s.token("system/*.*", json!({}));
    // a's general practitioner is doc; c names b in Patient.link.other.
    let a = json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Fama"}],
                   "generalPractitioner": [{"reference": "Practitioner/doc"}]});
    assert_eq!(s.put("Patient/a", &admin, a).await, StatusCode::OK);
    let c = json!({"resourceType": "Patient", "id": "c",
                   "link": [{"other": {"reference": "Patient/b"}, "type": "seealso"}]});
    assert_eq!(s.put("Patient/c", &admin, c).await, StatusCode::CREATED);

    let doc = s.token("user/*.read", json!({"fhirUser": "Practitioner/doc"}));
    assert_eq!(s.get("Patient/a", &doc).await.0, StatusCode::OK);
    assert_eq!(s.get("Patient/b", &doc).await.0, StatusCode::FORBIDDEN);
    let (_, bundle) = s.get("Observation", &doc).await;
    assert_eq!(entry_ids(&bundle), ["Observation/oa"]);

    let b = s.token(
        "user/*.read",
        json!({"fhirUser": "https://ehr.example/fhir/Patient/b"}),
    );
    let (_, bundle) = s.get("Patient", &b).await;
    assert_eq!(entry_ids(&bundle), ["Patient/b", "Patient/c"]);
    assert_eq!(s.get("Observation/oa", &b).await.0, StatusCode::FORBIDDEN);

    let nobody = s.token("user/*.read", json!({}));
    let (status, outcome) = s.get("Patient/a", &nobody).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{outcome}");
    // System scopes are not subject to fine-grained authorization.
    assert_eq!(s.get("Patient/b", &admin).await.0, StatusCode::OK);
    let _ = s.stop.send(());
}
