//! Which HealthLake operation a request is: the one mapping from method and path (FHIR REST,
//! Bulk Data) or `X-Amz-Target` (control plane) to the operation names HealthLake reports in
//! CloudWatch and sets quotas on. Metrics, quotas and the audit log all name requests through
//! here, so they cannot disagree.

use axum::http::{HeaderMap, Method};

use crate::control::operation::Operation;

/// Operation names of the FHIR REST API and Bulk Data, as [`fhir_operation`] returns them.
pub const FHIR_OPERATIONS: [&str; 17] = [
    READ,
    VREAD,
    SEARCH_GET,
    SEARCH_POST,
    CREATE,
    UPDATE,
    DELETE,
    HISTORY,
    BUNDLE,
    CAPABILITIES,
    EXPORT_GET,
    EXPORT_POST,
    EXPORT_STATUS,
    EXPORT_CANCEL,
    EXPORT_FILE,
    DISCOVERY,
    LAKE_STATUS,
];

const READ: &str = "ReadResource";
const VREAD: &str = "VReadResource";
const SEARCH_GET: &str = "SearchWithGet";
const SEARCH_POST: &str = "SearchWithPost";
const CREATE: &str = "CreateResource";
const UPDATE: &str = "UpdateResource";
const DELETE: &str = "DeleteResource";
const HISTORY: &str = "ReadHistory";
const BUNDLE: &str = "ProcessBundle";
const CAPABILITIES: &str = "Capabilities";
const EXPORT_GET: &str = "StartFHIRExportJobWithGet";
const EXPORT_POST: &str = "StartFHIRExportJobWithPost";
const EXPORT_STATUS: &str = "DescribeFHIRExportJobWithGet";
const EXPORT_CANCEL: &str = "CancelFHIRExportJobWithDelete";
const EXPORT_FILE: &str = "GetExportFile";
const DISCOVERY: &str = "Discovery";
const LAKE_STATUS: &str = "LakeStatus";

/// The data store id and operation of a FHIR REST or Bulk Data request
/// (`/datastore/{id}/r4/...`); `None` for any other path or a method the path does not take.
/// The id borrows from `path`, so naming a request allocates nothing.
pub fn fhir_operation<'p>(method: &Method, path: &'p str) -> Option<(&'p str, &'static str)> {
    let rest = path.strip_prefix("/datastore/")?;
    let (datastore, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let rest = rest.strip_prefix("r4")?;
    if !(rest.is_empty() || rest.starts_with('/')) || datastore.is_empty() {
        return None;
    }
    let rest = rest.trim_matches('/');
    let mut segments = [""; 5];
    let mut n = 0;
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        *segments.get_mut(n)? = segment;
        n += 1;
    }
    let verb = Verb::of(method)?;
    operation(verb, &segments[..n]).map(|op| (datastore, op))
}

/// The control-plane operation of a request (`POST /` with `X-Amz-Target: HealthLake.<Op>`);
/// `None` for anything else, including an unknown target.
pub fn control_operation(method: &Method, path: &str, headers: &HeaderMap) -> Option<&'static str> {
    if method != Method::POST || path != "/" {
        return None;
    }
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    let name = target.strip_prefix("HealthLake.")?;
    name.parse::<Operation>().ok().map(Operation::name)
}

/// The `&'static` spelling of an operation name this module can return (FHIR or control
/// plane), for configuration that names operations (`--quota ReadResource=100`).
pub fn known(name: &str) -> Option<&'static str> {
    FHIR_OPERATIONS
        .into_iter()
        .chain(Operation::ALL.into_iter().map(Operation::name))
        .find(|op| *op == name)
}

/// The methods FHIR operations use (HEAD is answered as GET).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn of(method: &Method) -> Option<Self> {
        Some(match *method {
            Method::GET | Method::HEAD => Self::Get,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::DELETE => Self::Delete,
            _ => return None,
        })
    }
}

/// The operation of the path segments after `r4/`. Resource types start with a capital
/// letter, so they never collide with `metadata`, `_history`, `$export` or `export`.
fn operation(verb: Verb, segments: &[&str]) -> Option<&'static str> {
    use Verb::*;
    Some(match (verb, segments) {
        (Get, []) => SEARCH_GET,
        (Post, []) => BUNDLE,
        (Get, ["metadata"]) => CAPABILITIES,
        (Get, ["_history"]) => HISTORY,
        (Get, ["$lake-status"]) => LAKE_STATUS,
        (Get, [".well-known", "smart-configuration"]) => DISCOVERY,
        (verb, ["$export"] | [_, "$export"] | [_, _, "$export"]) => export_start(verb)?,
        (Get, ["export", _]) => EXPORT_STATUS,
        (Delete, ["export", _]) => EXPORT_CANCEL,
        (Get, ["export", _, _]) => EXPORT_FILE,
        (verb, [ty, rest @ ..]) if is_type(ty) => resource_operation(verb, rest)?,
        _ => return None,
    })
}

fn export_start(verb: Verb) -> Option<&'static str> {
    match verb {
        Verb::Get => Some(EXPORT_GET),
        Verb::Post => Some(EXPORT_POST),
        _ => None,
    }
}

fn is_type(segment: &str) -> bool {
    segment.starts_with(|c: char| c.is_ascii_uppercase())
}

/// The operation on `[type]/...`, given the segments after the type.
fn resource_operation(verb: Verb, rest: &[&str]) -> Option<&'static str> {
    use Verb::*;
    Some(match (verb, rest) {
        (Get, []) => SEARCH_GET,
        (Post, []) => CREATE,
        (Put, []) => UPDATE,
        (Delete, []) => DELETE,
        (Get, ["_search"]) => SEARCH_GET,
        (Post, ["_search"]) => SEARCH_POST,
        (Get, ["_history"]) => HISTORY,
        (Get, [_]) => READ,
        (Put, [_]) => UPDATE,
        (Delete, [_]) => DELETE,
        (Get, [_, "_history"]) => HISTORY,
        (Get, [_, "_history", _]) => VREAD,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Option<(&str, &'static str)> {
        fhir_operation(&method, path)
    }

    #[test]
    fn fhir_paths_map_to_healthlake_operations() {
        let ds = "/datastore/abc/r4";
        let cases: [(Method, &str, &str); 26] = [
            (Method::GET, "/Patient/1", READ),
            (Method::HEAD, "/Patient/1", READ),
            (Method::GET, "/Patient/1/_history/2", VREAD),
            (Method::GET, "/Patient", SEARCH_GET),
            (Method::GET, "/Patient/", SEARCH_GET),
            (Method::GET, "", SEARCH_GET),
            (Method::POST, "/Patient/_search", SEARCH_POST),
            (Method::POST, "/Patient", CREATE),
            (Method::PUT, "/Patient/1", UPDATE),
            (Method::PUT, "/Patient", UPDATE),
            (Method::DELETE, "/Patient/1", DELETE),
            (Method::DELETE, "/Patient", DELETE),
            (Method::GET, "/_history", HISTORY),
            (Method::GET, "/Patient/_history", HISTORY),
            (Method::GET, "/Patient/1/_history", HISTORY),
            (Method::POST, "/", BUNDLE),
            (Method::POST, "", BUNDLE),
            (Method::GET, "/metadata", CAPABILITIES),
            (Method::GET, "/$export", EXPORT_GET),
            (Method::POST, "/Patient/$export", EXPORT_POST),
            (Method::GET, "/Group/g1/$export", EXPORT_GET),
            (Method::GET, "/export/job1", EXPORT_STATUS),
            (Method::DELETE, "/export/job1", EXPORT_CANCEL),
            (Method::GET, "/export/job1/Patient-1.ndjson", EXPORT_FILE),
            (Method::GET, "/.well-known/smart-configuration", DISCOVERY),
            (Method::GET, "/$lake-status", LAKE_STATUS),
        ];
        for (method, path, expected) in cases {
            let full = format!("{ds}{path}");
            assert_eq!(
                op(method.clone(), &full),
                Some(("abc", expected)),
                "{method} {full}"
            );
        }
    }

    #[test]
    fn other_paths_have_no_operation() {
        for (method, path) in [
            (Method::GET, "/metrics"),
            (Method::GET, "/metadata"),
            (Method::POST, "/"),
            (Method::GET, "/datastore/abc"),
            (Method::GET, "/datastore/abc/r5/Patient"),
            (Method::GET, "/datastore/abc/r4x/Patient"),
            (Method::GET, "/datastore//r4/Patient"),
            (Method::PATCH, "/datastore/abc/r4/Patient/1"),
            (Method::POST, "/datastore/abc/r4/Patient/1"),
            (Method::GET, "/datastore/abc/r4/Patient/1/_history/2/x"),
            (Method::GET, "/datastore/abc/r4/a/b/c/d/e/f"),
            (Method::PUT, "/datastore/abc/r4/$export"),
        ] {
            assert_eq!(op(method.clone(), path), None, "{method} {path}");
        }
    }

    #[test]
    fn control_plane_operations_come_from_the_target() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-target",
            "HealthLake.DescribeFHIRDatastore".parse().unwrap(),
        );
        let found = control_operation(&Method::POST, "/", &headers);
        assert_eq!(found, Some("DescribeFHIRDatastore"));
        assert_eq!(control_operation(&Method::GET, "/", &headers), None);
        headers.insert("x-amz-target", "HealthLake.Nope".parse().unwrap());
        assert_eq!(control_operation(&Method::POST, "/", &headers), None);
    }

    #[test]
    fn known_names_cover_both_planes() {
        assert_eq!(known("ReadResource"), Some(READ));
        assert_eq!(known("CreateFHIRDatastore"), Some("CreateFHIRDatastore"));
        assert_eq!(known("readresource"), None);
    }
}
