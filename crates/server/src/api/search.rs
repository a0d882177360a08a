//! FHIR search over HTTP: `GET [type]?...`, `POST [type]/_search`, `GET [base]?_type=...`,
//! and the conditional interactions that select resources by search.
//!
//! Before a search runs, the data store's lake sync catches up with acknowledged writes, so a
//! search issued after a write sees it (read-your-writes).

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::bundle_out::{BundleLink, BundleOut, EntryOut, EntrySearchOut, raw};
use super::context::Ctx;
use super::error::ApiError;
use super::format::{Body, Reply};
use fhirlake_schema::outcome::{Issue, OperationOutcome, Severity};
use fhirlake_search::query::{self, CURSOR_PARAM, SearchRequest, Summary};
use fhirlake_search::{Catalog, ExecError, SearchError};
use fhirlake_store::reads::StoredVersion;

/// `meta.tag` marking a resource that was trimmed by `_summary` or `_elements`.
const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code, e.message)
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Search(s) => s.into(),
            ExecError::Store(s) => s.into(),
            ExecError::Lake(m) => ApiError::internal(format!("search failed in the lake: {m}")),
        }
    }
}

/// Makes every acknowledged write visible to the lake before searching it.
async fn catch_up(ctx: &Ctx) -> Result<(), ApiError> {
    ctx.live.sync.catch_up().await.map_err(ApiError::internal)?;
    Ok(())
}

/// Type-level search.
pub async fn search(
    ctx: &Ctx,
    resource_type: &'static str,
    params: &[(String, String)],
    lenient: bool,
    path: &str,
) -> Result<Reply, ApiError> {
    let mut req = query::parse(resource_type, params, lenient)?;
    ctx.confine_search(&mut req)?;
    catch_up(ctx).await?;
    let page = ctx.live.searcher.search(&req).await?;
    let mut bundle = BundleOut::new("searchset");
    bundle.total = page.total;
    let link = |cursor: &str| {
        let mut pairs = req.link_params.clone();
        pairs.push((CURSOR_PARAM.to_string(), cursor.to_string()));
        format!("{}/{path}?{}", ctx.base, encode_query(&pairs))
    };
    bundle.link.push(BundleLink {
        relation: "self",
        url: link(&page.this_cursor),
    });
    if let Some(c) = &page.next_cursor {
        bundle.link.push(BundleLink {
            relation: "next",
            url: link(c),
        });
    }
    if let Some(c) = &page.previous_cursor {
        bundle.link.push(BundleLink {
            relation: "previous",
            url: link(c),
        });
    }
    for v in &page.matches {
        bundle.entry.push(entry(ctx, v, "match", &req)?);
    }
    for v in page.included.iter().filter(|v| ctx.may_read(v)) {
        bundle.entry.push(entry(ctx, v, "include", &req)?);
    }
    if !req.ignored.is_empty() {
        let outcome = OperationOutcome::new(vec![Issue {
            severity: Severity::Warning,
            ..Issue::processing(format!(
                "ignored unknown or unsupported search parameters (Prefer: handling=lenient): {}",
                req.ignored.join(", ")
            ))
        }]);
        bundle.entry.push(EntryOut {
            resource: Some(raw(
                serde_json::to_string(&outcome).map_err(ApiError::internal)?
            )?),
            search: Some(EntrySearchOut { mode: "outcome" }),
            ..Default::default()
        });
    }
    Ok(Reply::new(StatusCode::OK, Body::Json(bundle.to_json()?)))
}

fn entry(
    ctx: &Ctx,
    v: &StoredVersion,
    mode: &'static str,
    req: &SearchRequest,
) -> Result<EntryOut, ApiError> {
    let json = v
        .json
        .clone()
        .ok_or_else(|| ApiError::internal("a search matched a deleted version"))?;
    let json = if mode == "match" {
        subset(json, &v.resource_type, req)?
    } else {
        json
    };
    Ok(EntryOut {
        full_url: Some(format!("{}/{}/{}", ctx.base, v.resource_type, v.id)),
        resource: Some(raw(json)?),
        search: Some(EntrySearchOut { mode }),
        ..Default::default()
    })
}

/// Applies `_summary` / `_elements` to a matched resource, tagging it SUBSETTED.
fn subset(json: String, resource_type: &str, req: &SearchRequest) -> Result<String, ApiError> {
    let catalog = Catalog::global();
    let keep: Option<Vec<String>> = match (&req.elements, req.summary) {
        (Some(elements), _) => Some(elements.clone()),
        (None, Summary::True) => Some(
            catalog
                .summary_elements
                .get(resource_type)
                .cloned()
                .unwrap_or_default(),
        ),
        (None, Summary::Text) => Some(vec!["text".to_string()]),
        (None, Summary::Data) => None,
        _ => return Ok(json),
    };
    let mut doc: Map<String, Value> = serde_json::from_str(&json).map_err(ApiError::internal)?;
    match keep {
        Some(mut keep) => {
            keep.extend(
                catalog
                    .mandatory_elements
                    .get(resource_type)
                    .cloned()
                    .unwrap_or_default(),
            );
            keep.extend(["resourceType", "id", "meta"].map(String::from));
            doc.retain(|key, _| {
                let name = key.strip_prefix('_').unwrap_or(key);
                keep.iter().any(|k| match k.strip_suffix("[x]") {
                    Some(base) => name
                        .strip_prefix(base)
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
                    None => k == name,
                })
            });
        }
        None => {
            doc.remove("text");
        }
    }
    let meta = doc
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(tags) = tags {
            tags.push(serde_json::json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}));
        }
    }
    serde_json::to_string(&doc).map_err(ApiError::internal)
}

/// Percent-encodes query pairs for links.
fn encode_query(pairs: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'~'
                | b':'
                | b','
                | b'|'
                | b'$'
                | b'/' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Live resources of `resource_type` matching a conditional interaction's search (at most
/// `limit`; callers ask for 2 to tell "one" from "several").
pub async fn conditional_matches(
    ctx: &Ctx,
    resource_type: &'static str,
    params: &[(String, String)],
    limit: usize,
) -> Result<Vec<StoredVersion>, ApiError> {
    let searchable: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_format" && k != "_pretty")
        .cloned()
        .collect();
    if searchable.is_empty() {
        return Err(ApiError::bad_request(
            "a conditional interaction needs search parameters that select the resource",
        ));
    }
    let mut req = query::parse(resource_type, &searchable, false)?;
    ctx.confine_search(&mut req)?;
    if !req.includes.is_empty()
        || !req.revincludes.is_empty()
        || !req.sort.is_empty()
        || req.cursor.is_some()
    {
        return Err(ApiError::bad_request(
            "conditional interactions take filter parameters only (no _include, _sort or paging)",
        ));
    }
    catch_up(ctx).await?;
    let s = &ctx.live.searcher;
    let filters = fhirlake_search::execute::confined_filters(&req);
    let keys = s.matching_ids(resource_type, &filters, limit).await?;
    Ok(s.load(resource_type, &keys).await?)
}

/// Whether the client asked for lenient handling of unknown parameters.
pub fn lenient(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|p| {
        p.split([',', ';'])
            .any(|part| part.trim().eq_ignore_ascii_case("handling=lenient"))
    })
}
