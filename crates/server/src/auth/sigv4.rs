//! AWS Signature Version 4 verification, shared by the control plane and the FHIR API of
//! AWS_AUTH data stores.
//!
//! AWS SDKs sign every request: an HMAC-SHA256 chain keyed by the secret key over a
//! canonical form of the request. When access keys are configured, the server recomputes the
//! signature from the request it received and refuses a request whose signature differs, is
//! missing, names another access key or was made more than 15 minutes ago, with the error
//! types AWS returns for these cases ([`SigV4Error`]). Bodies are hashed in full (not
//! `UNSIGNED-PAYLOAD` or chunked uploads).

use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why a signature was refused; each case is one of AWS's error types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("{0}")]
    MissingAuthenticationToken(String),
    #[error("{0}")]
    IncompleteSignature(String),
    #[error("{0}")]
    UnrecognizedClient(String),
    #[error("{0}")]
    InvalidSignature(String),
}

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's `X-Amz-Date` may be from the server's clock (AWS: 15 minutes).
const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(15);

/// An access key pair requests must be signed with.
#[derive(Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key: &'a str,
    /// `date/region/service/aws4_request`.
    scope: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(ALGORITHM)?.trim_start();
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, v) = part.trim().split_once('=')?;
        match key {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let (access_key, scope) = credential?.split_once('/')?;
    Some(Authorization {
        access_key,
        scope,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The key derived from the secret for one day, region and service.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// A header value as SigV4 canonicalizes it: trimmed, inner runs of spaces collapsed.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn invalid_signature() -> SigV4Error {
    SigV4Error::InvalidSignature(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
            .into(),
    )
}

/// Checks the SigV4 signature of a request with path `path` and no query string.
pub fn verify(
    key: &AccessKey,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), SigV4Error> {
    let request = Canonical {
        method,
        forms: &[(path.to_string(), String::new())],
        headers,
        body,
    };
    verify_canonical(key, &request, now)
}

/// Checks the SigV4 signature of any request (the FHIR REST API's, with paths and query
/// strings). The canonical query is built as the SigV4 specification says (names and values
/// decoded, then encoded, sorted); clients that sign the query as sent (botocore) are also
/// accepted, since both forms prove the same secret over the same request.
pub fn verify_request(
    key: &AccessKey,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), SigV4Error> {
    let path = encode(uri.path(), true);
    let query = uri.query().unwrap_or("");
    let forms = [
        (path.clone(), canonical_query(query, true)),
        (path, canonical_query(query, false)),
    ];
    let request = Canonical {
        method,
        forms: &forms,
        headers,
        body,
    };
    verify_canonical(key, &request, now)
}

/// A received request in the parts SigV4 signs; `forms` are the (canonical URI, canonical
/// query) pairs a signer may have used.
struct Canonical<'a> {
    method: &'a Method,
    forms: &'a [(String, String)],
    headers: &'a HeaderMap,
    body: &'a [u8],
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters stay, every other byte is
/// `%XX` (upper case); `/` stays in paths.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical query string: pairs sorted by name then value, re-encoded (`normalize`) or
/// as sent.
fn canonical_query(query: &str, normalize: bool) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            if normalize {
                (encode(&decode(k), false), encode(&decode(v), false))
            } else {
                (k.to_string(), v.to_string())
            }
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn verify_canonical(
    key: &AccessKey,
    request: &Canonical<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), SigV4Error> {
    let Canonical {
        method,
        forms,
        headers,
        body,
    } = request;
    let Some(value) = headers.get("authorization") else {
        return Err(SigV4Error::MissingAuthenticationToken(
            "Missing Authentication Token: this server requires requests signed with AWS \
             Signature Version 4"
                .into(),
        ));
    };
    let auth = value
        .to_str()
        .ok()
        .and_then(parse_authorization)
        .ok_or_else(|| {
            SigV4Error::IncompleteSignature(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' \
                 parameters (AWS4-HMAC-SHA256)"
                    .into(),
            )
        })?;
    if auth.access_key != key.id {
        return Err(SigV4Error::UnrecognizedClient(
            "The security token included in the request is invalid.".into(),
        ));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            SigV4Error::IncompleteSignature("the X-Amz-Date header is missing".into())
        })?;
    let signed_at = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            SigV4Error::IncompleteSignature(format!(
                "X-Amz-Date '{amz_date}' is not of the form YYYYMMDDTHHMMSSZ"
            ))
        })?
        .and_utc();
    if (now - signed_at).abs() > MAX_SKEW {
        return Err(SigV4Error::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            (now - MAX_SKEW).format("%Y%m%dT%H%M%SZ"),
            now.format("%Y%m%dT%H%M%SZ")
        )));
    }
    let scope_parts: Vec<&str> = auth.scope.split('/').collect();
    let [date, region, service, "aws4_request"] = scope_parts[..] else {
        return Err(SigV4Error::IncompleteSignature(format!(
            "credential scope '{}' is not date/region/service/aws4_request",
            auth.scope
        )));
    };
    if !amz_date.starts_with(date) {
        return Err(invalid_signature());
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(invalid_signature());
    }
    let payload_hash = sha256_hex(body);
    if let Some(claimed) = headers.get("x-amz-content-sha256")
        && claimed.as_bytes() != payload_hash.as_bytes()
    {
        return Err(invalid_signature());
    }
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(canonical_value)
            .collect();
        if values.is_empty() {
            return Err(invalid_signature());
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let signing_key = signing_key(&key.secret, date, region, service);
    let matches = |(path, query): &(String, String)| {
        let canonical_request = format!(
            "{method}\n{path}\n{query}\n{canonical_headers}\n{}\n{payload_hash}",
            auth.signed_headers.join(";")
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{}\n{}",
            auth.scope,
            sha256_hex(canonical_request.as_bytes())
        );
        let expected = hex::encode(hmac(&signing_key, string_to_sign.as_bytes()));
        constant_time_eq(expected.as_bytes(), auth.signature.as_bytes())
    };
    if forms.iter().any(matches) {
        Ok(())
    } else {
        Err(invalid_signature())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing-key example of AWS's SigV4 documentation.
    #[test]
    fn derives_the_documented_signing_key() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn parses_the_authorization_header() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/healthlake/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abc123",
        )
        .unwrap();
        assert_eq!(a.access_key, "AKID");
        assert_eq!(a.scope, "20260101/us-east-1/healthlake/aws4_request");
        assert_eq!(a.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert_eq!(a.signature, "abc123");
        assert!(parse_authorization("Bearer x").is_none());
    }

    /// Signs a request the way the SDKs do (independently of `verify`'s code path for the
    /// header parsing) and checks that verification accepts it and refuses any change.
    #[test]
    fn verifies_and_refuses() {
        let key = AccessKey {
            id: "AKID".into(),
            secret: "secret".into(),
        };
        let now = chrono::Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = &amz_date[..8];
        let body = br#"{"DatastoreId":"x"}"#;
        let canonical = format!(
            "POST\n/\n\nhost:127.0.0.1:8080\nx-amz-date:{amz_date}\nx-amz-target:HealthLake.DescribeFHIRDatastore\n\nhost;x-amz-date;x-amz-target\n{}",
            sha256_hex(body)
        );
        let scope = format!("{date}/us-east-1/healthlake/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let signature = hex::encode(hmac(
            &signing_key("secret", date, "us-east-1", "healthlake"),
            to_sign.as_bytes(),
        ));
        let headers = |sig: &str| {
            let mut h = HeaderMap::new();
            h.insert("host", "127.0.0.1:8080".parse().unwrap());
            h.insert("x-amz-date", amz_date.parse().unwrap());
            h.insert(
                "x-amz-target",
                "HealthLake.DescribeFHIRDatastore".parse().unwrap(),
            );
            h.insert(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKID/{scope}, SignedHeaders=host;x-amz-date;x-amz-target, Signature={sig}"
                )
                .parse()
                .unwrap(),
            );
            h
        };
        assert!(verify(&key, &Method::POST, "/", &headers(&signature), body, now).is_ok());
        let err = verify(&key, &Method::POST, "/", &headers(&signature), b"{}", now);
        assert!(matches!(err, Err(SigV4Error::InvalidSignature(_))));
        let wrong = AccessKey {
            id: "AKID".into(),
            secret: "other".into(),
        };
        let err = verify(&wrong, &Method::POST, "/", &headers(&signature), body, now);
        assert!(matches!(err, Err(SigV4Error::InvalidSignature(_))));
        let later = now + chrono::Duration::minutes(20);
        let err = verify(&key, &Method::POST, "/", &headers(&signature), body, later);
        assert!(matches!(err, Err(SigV4Error::InvalidSignature(m)) if m.contains("expired")));
        let err = verify(&key, &Method::POST, "/", &HeaderMap::new(), body, now);
        assert!(matches!(
            err,
            Err(SigV4Error::MissingAuthenticationToken(_))
        ));
        let other = AccessKey {
            id: "OTHER".into(),
            secret: "secret".into(),
        };
        let err = verify(&other, &Method::POST, "/", &headers(&signature), body, now);
        assert!(matches!(err, Err(SigV4Error::UnrecognizedClient(_))));
    }
}
