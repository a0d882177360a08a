//! The absolute URLs the HTTP front ends hand out (FHIR base URLs, `fullUrl`s, Bulk Data
//! status and file links, data store endpoints), built in one place.
//!
//! A URL names the host the client used (its `Host` header), so links work through port
//! forwards and proxies; a request without one gets the listener's own address. The scheme
//! is the listener's: `https` when it serves TLS, so every link leads back over TLS.

use axum::http::{HeaderMap, header};

/// The scheme and fallback host of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpOrigin {
    scheme: &'static str,
    default_host: String,
}

impl HttpOrigin {
    /// A plain-HTTP listener; `default_host` is its `host:port`, used when a request has no
    /// `Host`.
    pub fn new(default_host: impl Into<String>) -> Self {
        Self {
            scheme: "http",
            default_host: default_host.into(),
        }
    }

    /// A listener that serves TLS, so its URLs say `https`.
    pub fn https(default_host: impl Into<String>) -> Self {
        Self {
            scheme: "https",
            ..Self::new(default_host)
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The host a request addressed (`Host`), else the listener's.
    pub fn host<'a>(&'a self, headers: &'a HeaderMap) -> &'a str {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.default_host)
    }

    /// `scheme://host` as the request addressed it.
    pub fn root(&self, headers: &HeaderMap) -> String {
        format!("{}://{}", self.scheme, self.host(headers))
    }

    /// A data store's FHIR base URL without a trailing slash (`http://host/datastore/<id>/r4`).
    pub fn fhir_base(&self, headers: &HeaderMap, datastore_id: &str) -> String {
        self.fhir_base_on(self.host(headers), datastore_id)
    }

    /// A data store's FHIR base URL on `host` (one [`HttpOrigin::host`] gave earlier).
    pub fn fhir_base_on(&self, host: &str, datastore_id: &str) -> String {
        fhir_base(self.scheme, host, datastore_id)
    }

    /// A data store's FHIR base URL for output that has no request (start-up messages, CLI).
    pub fn default_fhir_base(&self, datastore_id: &str) -> String {
        self.fhir_base_on(&self.default_host, datastore_id)
    }
}

/// The FHIR base URL of a data store at `scheme://host`, without a trailing slash.
pub fn fhir_base(scheme: &str, host: &str, datastore_id: &str) -> String {
    format!("{scheme}://{host}/datastore/{datastore_id}/r4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_listeners_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example.org:8443".parse().unwrap());
        let tls = HttpOrigin::https("127.0.0.1:1");
        assert_eq!(tls.root(&headers), "https://example.org:8443");
        assert_eq!(
            tls.fhir_base(&headers, "d"),
            "https://example.org:8443/datastore/d/r4"
        );
        assert_eq!(
            HttpOrigin::new("127.0.0.1:1").default_fhir_base("d"),
            "http://127.0.0.1:1/datastore/d/r4"
        );
    }
}
