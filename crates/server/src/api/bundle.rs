//! `POST [base]/` with a `batch` or `transaction` Bundle.
//!
//! - batch: every entry runs on its own, exactly like the same request sent alone; the
//!   `batch-response` carries each entry's status (and an OperationOutcome when it failed).
//! - transaction: all or nothing. Every entry is checked first, server ids are assigned,
//!   `urn:uuid:`/`urn:oid:` fullUrls are replaced by `Type/id` in every resource, then all
//!   writes go to the store in one transaction (in FHIR's order DELETE, POST, PUT) with their
//!   `ifMatch` versions checked inside it. GET entries are answered after the commit.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::bundle_out::{BundleOut, EntryOut, EntryResponseOut, new_id, now, raw, status_line};
use super::context::{Ctx, check_in_grant};
use super::error::ApiError;
use super::format::{Body, Params, Reply, ReturnPreference, etag};
use super::interactions::{self as ix, ReadConditions};
use crate::auth::scopes::Action;
use fhirlake_store::AppliedWrite;
use fhirlake_store::ConditionalWrite;
use fhirlake_store::NewResource;
use fhirlake_store::reads::StoredVersion;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleIn<'a> {
    resource_type: Option<String>,
    #[serde(rename = "type")]
    bundle_type: Option<String>,
    #[serde(default, borrow)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryIn<'a> {
    full_url: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<RequestIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    method: String,
    url: String,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    if_match: Option<String>,
    if_none_exist: Option<String>,
}

/// What an entry's `request.url` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Type(&'static str),
    Instance(&'static str, String),
    Version(&'static str, String, String),
    TypeHistory(&'static str),
    InstanceHistory(&'static str, String),
    SystemHistory,
}

/// An entry's request, checked.
#[derive(Debug)]
enum Request<'a> {
    Get {
        target: Target,
        params: Params,
        conditions: ReadConditions,
    },
    Post {
        resource_type: &'static str,
        body: &'a str,
        if_none_exist: Option<String>,
    },
    Put {
        resource_type: &'static str,
        id: String,
        body: &'a str,
        if_match: Option<i64>,
    },
    Delete {
        resource_type: &'static str,
        id: String,
        if_match: Option<i64>,
    },
}

impl Request<'_> {
    /// FHIR's transaction processing order: DELETE, POST, PUT/PATCH, GET.
    fn order(&self) -> u8 {
        match self {
            Request::Delete { .. } => 0,
            Request::Post { .. } => 1,
            Request::Put { .. } => 2,
            Request::Get { .. } => 3,
        }
    }
}

/// Prefixes every issue of an entry's error with the entry's position.
fn at_entry(index: usize, mut e: ApiError) -> ApiError {
    for issue in &mut e.outcome.issue {
        issue.diagnostics = format!("Bundle.entry[{index}]: {}", issue.diagnostics);
        issue.expression.insert(0, format!("Bundle.entry[{index}]"));
    }
    e
}

fn parse_url(ctx: &Ctx, url: &str) -> Result<(Target, Params), ApiError> {
    let relative = url
        .strip_prefix(&ctx.base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    if relative.contains("://") {
        return Err(ApiError::bad_request(format!(
            "request.url '{url}' is not on this server: use a URL relative to the base, such as Patient/123"
        )));
    }
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (relative, None),
    };
    let params = Params::parse(query);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let target = match parts.as_slice() {
        ["_history"] => Target::SystemHistory,
        [t] if !t.is_empty() => Target::Type(ix::resource_type(t)?),
        [t, "_history"] => Target::TypeHistory(ix::resource_type(t)?),
        [t, id] => Target::Instance(ix::resource_type(t)?, id.to_string()),
        [t, id, "_history"] => Target::InstanceHistory(ix::resource_type(t)?, id.to_string()),
        [t, id, "_history", vid] => {
            Target::Version(ix::resource_type(t)?, id.to_string(), vid.to_string())
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "request.url '{url}' does not name a resource type, instance, version or history"
            )));
        }
    };
    Ok((target, params))
}

fn parse_request<'a>(ctx: &Ctx, entry: &EntryIn<'a>) -> Result<Request<'a>, ApiError> {
    let request = entry.request.as_ref().ok_or_else(|| {
        ApiError::bad_request("request is required in every entry of a batch or transaction")
    })?;
    let (target, params) = parse_url(ctx, &request.url)?;
    let body = || {
        entry.resource.map(|r| r.get()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} {} needs a resource in the entry",
                request.method, request.url
            ))
        })
    };
    let only_format_params = |what: &str| -> Result<(), ApiError> {
        match params.unknown(&["_format", "_pretty"]).next() {
            Some(p) => Err(ApiError::unsupported(format!(
                "{what} with parameter '{p}' is not supported (search is not available yet)"
            ))),
            None => Ok(()),
        }
    };
    let if_match = || ix::parse_if_match(request.if_match.as_deref());
    match (request.method.as_str(), target) {
        ("GET", target) => {
            if matches!(target, Target::Type(_)) {
                return Err(ApiError::unsupported(format!(
                    "GET {}: search is not available yet",
                    request.url
                )));
            }
            Ok(Request::Get {
                target,
                params,
                conditions: ReadConditions {
                    if_none_match: request.if_none_match.clone(),
                    if_modified_since: request.if_modified_since.clone(),
                },
            })
        }
        ("POST", Target::Type(resource_type)) => {
            only_format_params("POST")?;
            Ok(Request::Post {
                resource_type,
                body: body()?,
                if_none_exist: request.if_none_exist.clone(),
            })
        }
        ("PUT", Target::Instance(resource_type, id)) => {
            only_format_params("PUT")?;
            Ok(Request::Put {
                resource_type,
                id,
                body: body()?,
                if_match: if_match()?,
            })
        }
        ("PUT", Target::Type(_)) => Err(ApiError::unsupported(format!(
            "PUT {}: conditional update needs search, which is not available yet",
            request.url
        ))),
        ("DELETE", Target::Instance(resource_type, id)) => {
            only_format_params("DELETE")?;
            Ok(Request::Delete {
                resource_type,
                id,
                if_match: if_match()?,
            })
        }
        ("DELETE", Target::Type(_)) => Err(ApiError::unsupported(format!(
            "DELETE {}: conditional delete needs search, which is not available yet",
            request.url
        ))),
        ("PATCH", _) => Err(ApiError::unsupported("PATCH is not supported")),
        (method, _) => Err(ApiError::bad_request(format!(
            "{method} {} is not a valid entry request (use GET, POST, PUT or DELETE on a matching URL)",
            request.url
        ))),
    }
}

/// Runs a GET entry.
async fn run_get(
    ctx: &Ctx,
    target: &Target,
    params: &Params,
    conditions: &ReadConditions,
) -> Result<Reply, ApiError> {
    match target {
        Target::Instance(t, id) => ix::read(ctx, t, id, conditions).await,
        Target::Version(t, id, vid) => ix::vread(ctx, t, id, vid, conditions).await,
        Target::TypeHistory(t) => ix::history(ctx, Some(t), None, params).await,
        Target::InstanceHistory(t, id) => ix::history(ctx, Some(t), Some(id), params).await,
        Target::SystemHistory => ix::history(ctx, None, None, params).await,
        Target::Type(t) => Err(ApiError::unsupported(format!(
            "GET {t}: search is not available yet"
        ))),
    }
}

/// A Bundle response entry from an interaction's result.
fn response_entry(base: &str, result: Result<Reply, ApiError>) -> Result<EntryOut, ApiError> {
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            return Ok(EntryOut {
                response: Some(EntryResponseOut {
                    status: status_line(e.status),
                    outcome: Some(e.outcome),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    };
    let (resource, outcome) = match reply.body {
        Body::None => (None, None),
        Body::Json(text) => (Some(raw(text)?), None),
        Body::Outcome(oo) => (None, Some(oo)),
    };
    let full_url = reply.location.as_deref().and_then(|l| {
        l.split("/_history/")
            .next()
            .map(|instance| format!("{base}/{instance}"))
    });
    Ok(EntryOut {
        full_url: resource.as_ref().and(full_url),
        resource,
        search: None,
        request: None,
        response: Some(EntryResponseOut {
            status: status_line(reply.status),
            location: reply.location,
            etag: reply.version.map(etag),
            last_modified: reply.last_updated,
            outcome,
        }),
    })
}

/// Processes a batch or transaction Bundle posted to the base URL.
pub async fn process(ctx: &Ctx, body: &[u8], prefer: ReturnPreference) -> Result<Reply, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid UTF-8: {e}")))?;
    let bundle: BundleIn = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!("The request body is not a valid Bundle: {e}"))
    })?;
    match bundle.resource_type.as_deref() {
        Some("Bundle") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "POST to the base URL takes a Bundle, not a {other}"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Missing required resourceType field in resource json",
            ));
        }
    }
    let max = ctx.state.config().max_bundle_entries;
    if bundle.entry.len() > max {
        return Err(ApiError::too_large(format!(
            "The Bundle has {} entries; at most {max} are allowed per Bundle",
            bundle.entry.len()
        )));
    }
    match bundle.bundle_type.as_deref() {
        Some("batch") => batch(ctx, &bundle.entry, prefer).await,
        Some("transaction") => transaction(ctx, &bundle.entry, prefer).await,
        other => Err(ApiError::bad_request(format!(
            "POST to the base URL takes a Bundle of type batch or transaction, not {}; store other Bundles with POST [base]/Bundle",
            other.map_or_else(|| "a Bundle without type".to_string(), |t| format!("'{t}'"))
        ))),
    }
}

async fn batch(
    ctx: &Ctx,
    entries: &[EntryIn<'_>],
    prefer: ReturnPreference,
) -> Result<Reply, ApiError> {
    let mut out = BundleOut::new("batch-response");
    out.timestamp = Some(now());
    for (i, entry) in entries.iter().enumerate() {
        let result = match parse_request(ctx, entry) {
            Err(e) => Err(e),
            Ok(Request::Get {
                target,
                params,
                conditions,
            }) => run_get(ctx, &target, &params, &conditions).await,
            Ok(Request::Post {
                resource_type,
                body,
                if_none_exist,
            }) => {
                ix::create(
                    ctx,
                    resource_type,
                    body.as_bytes(),
                    if_none_exist.as_deref(),
                    prefer,
                )
                .await
            }
            Ok(Request::Put {
                resource_type,
                id,
                body,
                if_match,
            }) => ix::update(ctx, resource_type, &id, body.as_bytes(), if_match, prefer).await,
            Ok(Request::Delete {
                resource_type,
                id,
                if_match,
            }) => ix::delete(ctx, resource_type, &id, if_match).await,
        };
        out.entry.push(response_entry(
            &ctx.base,
            result.map_err(|e| at_entry(i, e)),
        )?);
    }
    Ok(Reply::new(StatusCode::OK, Body::Json(out.to_json()?)))
}

/// A transaction write prepared for the store, or an `If-None-Exist` hit that writes nothing.
enum Planned {
    Write(usize),
    Existing(Reply),
    Read,
}

/// What the entries of a transaction will be known as, settled before any body is validated
/// so that `urn:` references can be rewritten into the bodies first.
#[derive(Default)]
struct Identities {
    /// `urn:uuid:`/`urn:oid:` fullUrl to the `Type/id` it stands for.
    urn_map: HashMap<String, String>,
    /// The id of each POST entry: a new server id, or the resource its `If-None-Exist` found.
    post_ids: HashMap<usize, String>,
    /// The reply of each POST entry whose `If-None-Exist` found a resource: it writes nothing.
    existing: HashMap<usize, Reply>,
}

/// The writes of a transaction for the store, and what each entry (by index) becomes.
struct Plan {
    writes: Vec<ConditionalWrite>,
    planned: HashMap<usize, Planned>,
}

async fn transaction(
    ctx: &Ctx,
    entries: &[EntryIn<'_>],
    prefer: ReturnPreference,
) -> Result<Reply, ApiError> {
    let requests = parse_requests(ctx, entries)?;
    check_touched_once(&requests)?;
    let identities = assign_identities(ctx, entries, &requests, prefer).await?;

    // Validate and plan the writes in processing order.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].order());
    let Plan {
        mut writes,
        planned,
    } = plan_writes(&requests, &order, identities)?;
    authorize(ctx, &requests, &planned, &mut writes).await?;

    let applied = commit(ctx, writes).await?;
    let results = answer_entries(ctx, &requests, &order, planned, &applied, prefer).await;
    transaction_response(&ctx.base, results)
}

/// Authorizes every entry before anything is written: a transaction the caller may not run
/// in full writes nothing. Reads are checked against what exists now (the same checks run
/// again when they are answered); writes under a compartment grant expect the version that
/// was checked.
async fn authorize(
    ctx: &Ctx,
    requests: &[Request<'_>],
    planned: &HashMap<usize, Planned>,
    writes: &mut [ConditionalWrite],
) -> Result<(), ApiError> {
    for (i, request) in requests.iter().enumerate() {
        let checked = match (request, planned.get(&i)) {
            (Request::Get { target, .. }, _) => authorize_read(ctx, target).await,
            (_, Some(Planned::Write(w))) => authorize_write(ctx, &mut writes[*w]).await,
            _ => Ok(()),
        };
        checked.map_err(|e| at_entry(i, e))?;
    }
    Ok(())
}

async fn authorize_read(ctx: &Ctx, target: &Target) -> Result<(), ApiError> {
    match target {
        Target::Instance(t, id) | Target::Version(t, id, _) | Target::InstanceHistory(t, id) => {
            let grant = ctx.grant(t, Action::Read)?;
            ix::guard_existing(ctx, &grant, t, id, None).await.map(drop)
        }
        Target::Type(t) | Target::TypeHistory(t) => ctx.grant(t, Action::Read).map(drop),
        Target::SystemHistory => Ok(()),
    }
}

async fn authorize_write(ctx: &Ctx, write: &mut ConditionalWrite) -> Result<(), ApiError> {
    let r = &write.resource;
    let action = match (&r.json, write.expected_version) {
        (None, _) => Action::Delete,
        (Some(_), Some(0)) => Action::Create,
        (Some(_), _) => Action::Update,
    };
    let grant = ctx.grant(&r.resource_type, action)?;
    if r.json.is_some() {
        check_in_grant(&grant, &r.resource_type, r.json.as_deref())?;
    }
    write.expected_version =
        ix::guard_existing(ctx, &grant, &r.resource_type, &r.id, write.expected_version).await?;
    if action != Action::Create {
        write.expected_version =
            super::immutable::guard(ctx, &r.resource_type, &r.id, write.expected_version).await?;
    }
    Ok(())
}

/// Every entry's request, checked before anything is read or written: one bad entry fails
/// the whole transaction.
fn parse_requests<'a>(ctx: &Ctx, entries: &[EntryIn<'a>]) -> Result<Vec<Request<'a>>, ApiError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| parse_request(ctx, e).map_err(|err| at_entry(i, err)))
        .collect()
}

/// Each resource may be touched once: otherwise the outcome would depend on ordering.
fn check_touched_once(requests: &[Request]) -> Result<(), ApiError> {
    let mut touched = HashSet::new();
    for (i, r) in requests.iter().enumerate() {
        if let Request::Put {
            resource_type, id, ..
        }
        | Request::Delete {
            resource_type, id, ..
        } = r
            && !touched.insert((*resource_type, id.as_str()))
        {
            return Err(at_entry(
                i,
                ApiError::bad_request(format!(
                    "{resource_type}/{id} appears in more than one entry of the transaction"
                )),
            ));
        }
    }
    Ok(())
}

/// Ids and fullUrl mappings first, so references can be rewritten before validation.
async fn assign_identities(
    ctx: &Ctx,
    entries: &[EntryIn<'_>],
    requests: &[Request<'_>],
    prefer: ReturnPreference,
) -> Result<Identities, ApiError> {
    let mut ids = Identities::default();
    for (i, r) in requests.iter().enumerate() {
        let reference = match r {
            Request::Post {
                resource_type,
                if_none_exist,
                ..
            } => {
                let (id, existing) =
                    post_identity(ctx, resource_type, if_none_exist.as_deref(), prefer)
                        .await
                        .map_err(|e| at_entry(i, e))?;
                if let Some(reply) = existing {
                    ids.existing.insert(i, reply);
                }
                ids.post_ids.insert(i, id.clone());
                Some(format!("{resource_type}/{id}"))
            }
            Request::Put {
                resource_type, id, ..
            } => Some(format!("{resource_type}/{id}")),
            _ => None,
        };
        if let (Some(reference), Some(full_url)) = (reference, entries[i].full_url.as_deref())
            && (full_url.starts_with("urn:uuid:") || full_url.starts_with("urn:oid:"))
            && ids.urn_map.insert(full_url.into(), reference).is_some()
        {
            return Err(at_entry(
                i,
                ApiError::bad_request(format!(
                    "fullUrl '{full_url}' appears in more than one entry"
                )),
            ));
        }
    }
    Ok(ids)
}

/// The id a POST entry will have. When its `If-None-Exist` finds the resource, the entry
/// takes that resource's id (so references to its fullUrl point at it) and writes nothing:
/// the reply for the existing version comes with the id.
async fn post_identity(
    ctx: &Ctx,
    resource_type: &'static str,
    if_none_exist: Option<&str>,
    prefer: ReturnPreference,
) -> Result<(String, Option<Reply>), ApiError> {
    let Some(query) = if_none_exist else {
        return Ok((new_id(), None));
    };
    let mut matches = ix::if_none_exist_matches(ctx, resource_type, query).await?;
    match matches.len() {
        0 => Ok((new_id(), None)),
        1 => {
            let v = matches.remove(0);
            let id = v.id.clone();
            Ok((id, Some(existing_reply(resource_type, v, prefer))))
        }
        n => Err(ApiError::precondition_failed(format!(
            "ifNoneExist matched {n} resources: the criteria must select at most one"
        ))),
    }
}

/// The reply for a POST whose `If-None-Exist` found the resource, as a conditional create
/// sent alone would answer: 200 with the existing version.
fn existing_reply(resource_type: &str, v: StoredVersion, prefer: ReturnPreference) -> Reply {
    let location = format!("{resource_type}/{}/_history/{}", v.id, v.version);
    Reply {
        status: StatusCode::OK,
        body: match prefer {
            ReturnPreference::Representation => v.json.map(Body::Json).unwrap_or_default(),
            _ => Body::None,
        },
        location: Some(location),
        version: Some(v.version),
        last_updated: Some(v.last_updated),
    }
}

/// Validates every write in processing order, so the error reported is the first one FHIR's
/// order meets, and collects the writes for one store transaction.
fn plan_writes(
    requests: &[Request],
    order: &[usize],
    mut ids: Identities,
) -> Result<Plan, ApiError> {
    let mut plan = Plan {
        writes: Vec::new(),
        planned: HashMap::new(),
    };
    for &i in order {
        let planned = match &requests[i] {
            Request::Get { .. } => Planned::Read,
            Request::Post { .. } if ids.existing.contains_key(&i) => {
                Planned::Existing(ids.existing.remove(&i).expect("checked"))
            }
            request => {
                let write = prepare_write(i, request, &ids).map_err(|e| at_entry(i, e))?;
                plan.writes.push(write);
                Planned::Write(plan.writes.len() - 1)
            }
        };
        plan.planned.insert(i, planned);
    }
    Ok(plan)
}

/// The store write for entry `i`, validated as the same request sent alone would be, with
/// its `urn:` references already replaced by the ids they stand for.
fn prepare_write(
    i: usize,
    request: &Request,
    ids: &Identities,
) -> Result<ConditionalWrite, ApiError> {
    let rewritten = |body: &str| json_with_urns(body, &ids.urn_map);
    match request {
        Request::Post {
            resource_type,
            body,
            ..
        } => {
            let body = rewritten(body);
            let resource = ix::prepare_create(resource_type, body.as_bytes(), &ids.post_ids[&i])?;
            Ok(ConditionalWrite {
                resource,
                expected_version: Some(0),
            })
        }
        Request::Put {
            resource_type,
            id,
            body,
            if_match,
        } => {
            let body = rewritten(body);
            let resource = ix::prepare_update(resource_type, id, body.as_bytes())?;
            Ok(ConditionalWrite {
                resource,
                expected_version: *if_match,
            })
        }
        Request::Delete {
            resource_type,
            id,
            if_match,
        } => {
            crate::ingest::validate::check_id(id).map_err(ApiError::validation)?;
            Ok(ConditionalWrite {
                resource: NewResource {
                    resource_type: resource_type.to_string(),
                    id: id.clone(),
                    json: None,
                },
                expected_version: *if_match,
            })
        }
        Request::Get { .. } => Err(ApiError::internal("a read entry was planned as a write")),
    }
}

/// Applies all writes in one store transaction, with their `ifMatch` versions checked inside
/// it: a failure leaves nothing written, and the message says so.
async fn commit(ctx: &Ctx, writes: Vec<ConditionalWrite>) -> Result<Vec<AppliedWrite>, ApiError> {
    ctx.store()
        .put_checked(&ctx.ds.id, writes)
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            e.outcome.issue[0].diagnostics = format!(
                "Transaction rolled back: {}",
                e.outcome.issue[0].diagnostics
            );
            e
        })
}

/// Each entry's result, in entry order. GET entries run only now, in processing order, so
/// they see what the transaction wrote.
async fn answer_entries(
    ctx: &Ctx,
    requests: &[Request<'_>],
    order: &[usize],
    mut planned: HashMap<usize, Planned>,
    applied: &[AppliedWrite],
    prefer: ReturnPreference,
) -> Vec<Result<Reply, ApiError>> {
    let mut results: Vec<Option<Result<Reply, ApiError>>> =
        (0..requests.len()).map(|_| None).collect();
    for &i in order {
        let result = match planned.remove(&i).expect("every entry is planned") {
            Planned::Write(w) => Ok(ix::write_reply(&applied[w], prefer)),
            Planned::Existing(reply) => Ok(reply),
            Planned::Read => match &requests[i] {
                Request::Get {
                    target,
                    params,
                    conditions,
                } => run_get(ctx, target, params, conditions).await,
                _ => Err(ApiError::internal("a write entry was planned as a read")),
            },
        };
        results[i] = Some(result.map_err(|e| at_entry(i, e)));
    }
    results.into_iter().flatten().collect()
}

/// The `transaction-response` Bundle: one entry per request entry, in the same order.
fn transaction_response(
    base: &str,
    results: Vec<Result<Reply, ApiError>>,
) -> Result<Reply, ApiError> {
    let mut out = BundleOut::new("transaction-response");
    out.timestamp = Some(now());
    for result in results {
        out.entry.push(response_entry(base, result)?);
    }
    Ok(Reply::new(StatusCode::OK, Body::Json(out.to_json()?)))
}

fn json_with_urns(body: &str, urn_map: &HashMap<String, String>) -> String {
    super::json::rewrite_urns(body, urn_map).unwrap_or_else(|| body.to_string())
}
