//! Request parameters, content negotiation and response rendering.
//!
//! The server speaks JSON only. `_format` overrides `Accept` (FHIR); the response uses
//! `application/json` when that is what the client asked for, `application/fhir+json`
//! otherwise. `_pretty=true` re-indents the text without reparsing values.

use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::json;
use fhirlake_schema::outcome::OperationOutcome;

/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Query parameters in order, percent-decoded (`+` as space, like HTML forms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// Parses a raw query string; malformed escapes are kept literally.
    pub fn parse(query: Option<&str>) -> Self {
        let Some(query) = query else {
            return Self::default();
        };
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parameter names other than the ones in `known`.
    pub fn unknown<'a>(&'a self, known: &'a [&str]) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !known.contains(k))
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// How to write the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// `application/fhir+json` or `application/json`.
    pub media: &'static str,
    pub pretty: bool,
}

impl Default for Format {
    fn default() -> Self {
        Self {
            media: FHIR_JSON,
            pretty: false,
        }
    }
}

/// The JSON media type a media range or `_format` value names, if any.
fn json_media(value: &str) -> Option<&'static str> {
    // `+` in an unencoded query string arrives as a space.
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .replace(' ', "+");
    match essence.to_ascii_lowercase().as_str() {
        "application/fhir+json" | "application/json+fhir" | "json" | "*/*" | "application/*" => {
            Some(FHIR_JSON)
        }
        "application/json" | "text/json" => Some("application/json"),
        _ => None,
    }
}

/// Picks the response format from `_format`, `Accept` and `_pretty`.
pub fn negotiate(headers: &HeaderMap, params: &Params) -> Result<Format, ApiError> {
    let pretty = match params.get("_pretty") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid _pretty value '{other}': use true or false"
            )));
        }
    };
    let media = if let Some(f) = params.get("_format") {
        json_media(f).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                format!("Unsupported _format '{f}': this server returns JSON only (_format=json)"),
            )
        })?
    } else {
        accept_media(headers)?
    };
    Ok(Format { media, pretty })
}

fn accept_media(headers: &HeaderMap) -> Result<&'static str, ApiError> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Ok(FHIR_JSON);
    }
    let mut best: Option<(f32, &'static str)> = None;
    for range in values.iter().flat_map(|v| v.split(',')) {
        let range = range.trim();
        if range.is_empty() {
            continue;
        }
        let q = range
            .split(';')
            .skip(1)
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        if let Some(media) = json_media(range).filter(|_| q > 0.0)
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, media));
        }
    }
    best.map(|(_, m)| m).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            format!(
                "Cannot produce any of the accepted types '{}': this server returns application/fhir+json or application/json",
                values.join(", ")
            ),
        )
    })
}

/// Rejects request bodies that are not declared as JSON (a missing Content-Type is taken as JSON).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/fhir+json" | "application/json+fhir" | "application/json" | "text/json" => {
            Ok(())
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!(
                "Unsupported Content-Type '{text}': send application/fhir+json or application/json"
            ),
        )),
    }
}

/// What a client asked for with `Prefer: return=…` on writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

impl ReturnPreference {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|p| p.trim().strip_prefix("return="))
            .find_map(|v| Self::parse(v.trim().trim_matches('"')))
            .unwrap_or_default()
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "minimal" => Some(Self::Minimal),
            "representation" => Some(Self::Representation),
            "OperationOutcome" => Some(Self::OperationOutcome),
            _ => None,
        }
    }
}

/// A successful interaction's result, before rendering.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Body,
    /// Relative location (`Patient/1/_history/2`), made absolute when rendered.
    pub location: Option<String>,
    /// Version for the ETag.
    pub version: Option<i64>,
    /// FHIR instant for Last-Modified.
    pub last_updated: Option<String>,
}

/// A reply body.
#[derive(Debug, Clone, Default)]
pub enum Body {
    #[default]
    None,
    /// JSON text of a resource or Bundle.
    Json(String),
    Outcome(OperationOutcome),
}

impl Reply {
    pub fn new(status: StatusCode, body: Body) -> Self {
        Self {
            status,
            body,
            location: None,
            version: None,
            last_updated: None,
        }
    }
}

/// `W/"3"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// A FHIR instant as an HTTP date (`Tue, 15 Nov 1994 08:12:31 GMT`), if it parses.
pub fn http_date(instant: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(instant).ok().map(|t| {
        t.with_timezone(&chrono::Utc)
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    })
}

/// Serializes an OperationOutcome (cannot fail: it is plain data).
pub fn outcome_json(outcome: &OperationOutcome) -> String {
    serde_json::to_string(outcome).expect("an OperationOutcome serializes")
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// Renders a result as an HTTP response; `base` makes locations absolute.
pub fn render(result: Result<Reply, ApiError>, format: Format, base: &str) -> Response {
    let reply = match result {
        Ok(r) => r,
        Err(e) => Reply::new(e.status, Body::Outcome(e.outcome)),
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = reply.version.and_then(|v| header_value(&etag(v))) {
        headers.insert(header::ETAG, v);
    }
    if let Some(v) = reply
        .last_updated
        .as_deref()
        .and_then(http_date)
        .and_then(|d| header_value(&d))
    {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = reply
        .location
        .as_deref()
        .and_then(|l| header_value(&format!("{base}/{l}")))
    {
        headers.insert(header::LOCATION, v.clone());
        if reply.status == StatusCode::CREATED {
            headers.insert(HeaderName::from_static("content-location"), v);
        }
    }
    let text = match reply.body {
        Body::None => None,
        Body::Json(text) => Some(text),
        Body::Outcome(oo) => Some(outcome_json(&oo)),
    };
    match text {
        None => (reply.status, headers).into_response(),
        Some(text) => {
            let text = if format.pretty {
                json::pretty(&text)
            } else {
                text
            };
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if format.media == FHIR_JSON {
                    "application/fhir+json; charset=utf-8"
                } else {
                    "application/json; charset=utf-8"
                }),
            );
            (reply.status, headers, text).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn params_decode() {
        let p = Params::parse(Some(
            "_since=2020-01-01T00:00:00%2B01:00&a=b+c&&x&bad=%zz%4",
        ));
        assert_eq!(p.get("_since"), Some("2020-01-01T00:00:00+01:00"));
        assert_eq!(p.get("a"), Some("b c"));
        assert_eq!(p.get("x"), Some(""));
        assert_eq!(p.get("bad"), Some("%zz%4"));
        assert_eq!(
            p.unknown(&["a", "x", "bad"]).collect::<Vec<_>>(),
            ["_since"]
        );
    }

    #[test]
    fn negotiation() {
        let none = Params::default();
        assert_eq!(negotiate(&headers(&[]), &none).unwrap(), Format::default());
        let f = negotiate(&headers(&[("accept", "application/json")]), &none).unwrap();
        assert_eq!(f.media, "application/json");
        let f = negotiate(
            &headers(&[(
                "accept",
                "application/fhir+xml, application/json;q=0.5, */*;q=0.1",
            )]),
            &none,
        )
        .unwrap();
        assert_eq!(f.media, "application/json");
        let e = negotiate(&headers(&[("accept", "application/fhir+xml")]), &none).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        // _format overrides Accept; `+` may arrive as a space.
        let p = Params::parse(Some("_format=application/fhir+json&_pretty=true"));
        let f = negotiate(&headers(&[("accept", "application/xml")]), &p).unwrap();
        assert_eq!(
            f,
            Format {
                media: FHIR_JSON,
                pretty: true
            }
        );
        let p = Params::parse(Some("_format=xml"));
        assert_eq!(
            negotiate(&headers(&[]), &p).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
        let p = Params::parse(Some("_pretty=yes"));
        assert_eq!(
            negotiate(&headers(&[]), &p).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn content_types_and_prefer() {
        assert!(check_content_type(&headers(&[])).is_ok());
        assert!(
            check_content_type(&headers(&[(
                "content-type",
                "application/fhir+json; fhirVersion=4.0"
            )]))
            .is_ok()
        );
        assert_eq!(
            check_content_type(&headers(&[("content-type", "application/xml")]))
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            ReturnPreference::from_headers(&headers(&[(
                "prefer",
                "handling=strict; return=minimal"
            )])),
            ReturnPreference::Minimal
        );
        assert_eq!(
            ReturnPreference::from_headers(&headers(&[("prefer", "return=OperationOutcome")])),
            ReturnPreference::OperationOutcome
        );
        assert_eq!(
            ReturnPreference::from_headers(&headers(&[])),
            ReturnPreference::Representation
        );
    }

    #[test]
    fn dates() {
        assert_eq!(
            http_date("2026-11-27T23:10:00.123Z").unwrap(),
            "Fri, 27 Nov 2026 23:10:00 GMT"
        );
        assert!(http_date("garbage").is_none());
    }
}
