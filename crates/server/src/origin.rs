//! The absolute URLs the HTTP front ends hand out (FHIR base URLs, `fullUrl`s, Bulk Data
//! status and file links, data store endpoints), built in one place.
//!
//! A URL names the host the client used (its `Host` header), so links work through port
//! forwards and proxies; a request without one gets the listener's own address.

use axum::http::{HeaderMap, header};

/// The scheme and fallback host of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpOrigin {
    default_host: String,
}

impl HttpOrigin {
    /// `default_host` is `host:port` of the listener, used when a request has no `Host`.
    pub fn new(default_host: impl Into<String>) -> Self {
        Self {
            default_host: default_host.into(),
        }
    }

    /// The host a request addressed (`Host`), else the listener's.
    pub fn host<'a>(&'a self, headers: &'a HeaderMap) -> &'a str {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.default_host)
    }

    /// `http://host` as the request addressed it.
    pub fn root(&self, headers: &HeaderMap) -> String {
        format!("http://{}", self.host(headers))
    }

    /// A data store's FHIR base URL without a trailing slash (`http://host/datastore/<id>/r4`).
    pub fn fhir_base(&self, headers: &HeaderMap, datastore_id: &str) -> String {
        fhir_base(self.host(headers), datastore_id)
    }

    /// A data store's FHIR base URL for output that has no request (start-up messages, CLI).
    pub fn default_fhir_base(&self, datastore_id: &str) -> String {
        fhir_base(&self.default_host, datastore_id)
    }
}

/// The FHIR base URL of a data store on `host`, without a trailing slash.
pub fn fhir_base(host: &str, datastore_id: &str) -> String {
    format!("http://{host}/datastore/{datastore_id}/r4")
}
