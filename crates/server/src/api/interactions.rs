//! The FHIR interactions (create, read, vread, update, delete, history), independent of HTTP.
//!
//! The HTTP handlers and the batch/transaction processor both call these, so a Bundle entry
//! behaves exactly like the same request sent on its own.

use axum::http::StatusCode;
use serde_json::value::RawValue;

use super::bundle_out::{
    BundleLink, BundleOut, EntryOut, EntryRequestOut, EntryResponseOut, new_id, raw, status_line,
};
use super::context::{Ctx, check_in_grant};
use super::error::ApiError;
use super::format::{Body, Params, Reply, ReturnPreference, etag};
use super::json;
use crate::auth::Grant;
use crate::auth::scopes::Action;
use crate::ingest::validate::{check_id, validate_resource};
use fhirlake_schema::Registry;
use fhirlake_schema::outcome::{Issue, OperationOutcome, Severity};
use fhirlake_store::AppliedWrite;
use fhirlake_store::NewResource;
use fhirlake_store::reads::{HistoryQuery, StoredVersion};

/// The canonical name of a resource type in a URL, or 404.
pub fn resource_type(name: &str) -> Result<&'static str, ApiError> {
    Registry::global()
        .resource_types()
        .find(|t| *t == name)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Resource type '{name}' is not supported: it is not a FHIR R4 resource type"
            ))
        })
}

/// The version in an ETag (`W/"3"`, `"3"` or `3`).
pub fn parse_etag(value: &str) -> Option<i64> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    v.parse().ok()
}

/// The version an `If-Match` value requires, or 400 when it names none.
pub fn parse_if_match(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            parse_etag(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid If-Match value '{v}': use the ETag of a version, such as W/\"3\""
                ))
            })
        })
        .transpose()
}

/// Conditional-read headers (`If-None-Match`, `If-Modified-Since`).
#[derive(Debug, Clone, Default)]
pub struct ReadConditions {
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
}

impl ReadConditions {
    /// True when the client's copy of `v` is current (answer 304). `If-None-Match` wins over
    /// `If-Modified-Since` (RFC 9110); an unparsable date is ignored.
    fn not_modified(&self, v: &StoredVersion) -> bool {
        if let Some(inm) = &self.if_none_match {
            return inm.split(',').any(|t| {
                let t = t.trim();
                t == "*" || parse_etag(t) == Some(v.version)
            });
        }
        let Some(ims) = self
            .if_modified_since
            .as_deref()
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d.trim()).ok())
        else {
            return false;
        };
        chrono::DateTime::parse_from_rfc3339(&v.last_updated)
            .map(|lu| lu.timestamp() <= ims.timestamp())
            .unwrap_or(false)
    }
}

fn body_text(body: &[u8]) -> Result<&str, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            "The request body is empty: send a FHIR resource as JSON",
        ));
    }
    std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid UTF-8: {e}")))
}

fn members_of(text: &str) -> Result<Vec<(String, &RawValue)>, ApiError> {
    json::object_members(text)
        .map_err(|e| ApiError::bad_request(format!("The request body is not a JSON object: {e}")))
}

fn check_body_type(members: &[(String, &RawValue)], url_type: &str) -> Result<(), ApiError> {
    match json::string_member(members, "resourceType") {
        Some(body_type) if body_type != url_type => Err(ApiError::bad_request(format!(
            "Resource type '{body_type}' in the body does not match '{url_type}' in the URL"
        ))),
        _ => Ok(()),
    }
}

fn validated(resource_type: &str, id: String, text: &str) -> Result<NewResource, ApiError> {
    let valid = validate_resource(text).map_err(ApiError::validation)?;
    Ok(NewResource {
        resource_type: resource_type.to_string(),
        id,
        json: Some(valid.json),
    })
}

/// Validates a create body and gives it the server-assigned `id` (any id in the body is
/// replaced, as FHIR allows).
pub fn prepare_create(resource_type: &str, body: &[u8], id: &str) -> Result<NewResource, ApiError> {
    let text = body_text(body)?;
    let members = members_of(text)?;
    check_body_type(&members, resource_type)?;
    let text = json::with_id(&members, id);
    validated(resource_type, id.to_string(), &text)
}

/// Validates an update body: the URL id must be valid and equal the body's id.
pub fn prepare_update(resource_type: &str, id: &str, body: &[u8]) -> Result<NewResource, ApiError> {
    check_id(id).map_err(ApiError::validation)?;
    let text = body_text(body)?;
    let members = members_of(text)?;
    check_body_type(&members, resource_type)?;
    match json::string_member(&members, "id") {
        None if !members.iter().any(|(k, _)| k == "id") => {
            return Err(ApiError::bad_request(format!(
                "The resource in the body has no id: an update must carry the id '{id}' from the URL"
            )));
        }
        Some(body_id) if body_id != id => {
            return Err(ApiError::bad_request(format!(
                "The id '{body_id}' in the body does not match the id '{id}' in the URL"
            )));
        }
        // A non-string id is reported by the validator.
        _ => {}
    }
    validated(resource_type, id.to_string(), text)
}

/// The reply to a write, shaped by `Prefer: return=…`.
pub fn write_reply(applied: &AppliedWrite, prefer: ReturnPreference) -> Reply {
    let Some(written) = &applied.written else {
        return Reply::new(StatusCode::NO_CONTENT, Body::None);
    };
    let created = applied.created();
    let status = match (&applied.json, created) {
        (None, _) => StatusCode::NO_CONTENT,
        (Some(_), true) => StatusCode::CREATED,
        (Some(_), false) => StatusCode::OK,
    };
    let body = match (&applied.json, prefer) {
        (None, _) | (_, ReturnPreference::Minimal) => Body::None,
        (Some(json), ReturnPreference::Representation) => Body::Json(json.clone()),
        (Some(_), ReturnPreference::OperationOutcome) => Body::Outcome(information(format!(
            "{} {}/{} (version {})",
            if created { "Created" } else { "Updated" },
            written.resource_type,
            written.id,
            written.version
        ))),
    };
    Reply {
        status,
        body,
        location: applied.json.as_ref().map(|_| {
            format!(
                "{}/{}/_history/{}",
                written.resource_type, written.id, written.version
            )
        }),
        version: Some(written.version),
        last_updated: Some(written.last_updated.clone()),
    }
}

/// An OperationOutcome with one `information` issue.
pub fn information(diagnostics: String) -> OperationOutcome {
    OperationOutcome::new(vec![Issue {
        severity: Severity::Information,
        code: "informational".into(),
        diagnostics,
        location: Vec::new(),
        expression: Vec::new(),
    }])
}

/// The reply for a stored version that is not a deletion.
fn version_reply(v: StoredVersion) -> Reply {
    Reply {
        status: StatusCode::OK,
        location: None,
        version: Some(v.version),
        last_updated: Some(v.last_updated),
        body: v.json.map(Body::Json).unwrap_or_default(),
    }
}

fn not_modified(v: &StoredVersion) -> Reply {
    Reply {
        status: StatusCode::NOT_MODIFIED,
        body: Body::None,
        location: None,
        version: Some(v.version),
        last_updated: Some(v.last_updated.clone()),
    }
}

/// `GET [type]/[id]`: 404 when unknown, 410 when deleted, 304 when the client's copy is current.
pub async fn read(
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
    conditions: &ReadConditions,
) -> Result<Reply, ApiError> {
    let grant = ctx.grant(resource_type, Action::Read)?;
    let Some(current) = ctx
        .store()
        .read_current(&ctx.ds.id, resource_type, id)
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "Resource {resource_type}/{id} is not known"
        )));
    };
    if current.deleted {
        return Err(ApiError::gone(format!(
            "Resource {resource_type}/{id} was deleted (version {} at {})",
            current.version, current.last_updated
        )));
    }
    check_in_grant(&grant, resource_type, current.json.as_deref())?;
    if conditions.not_modified(&current) {
        return Ok(not_modified(&current));
    }
    Ok(version_reply(current))
}

/// `GET [type]/[id]/_history/[vid]`.
pub async fn vread(
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
    vid: &str,
    conditions: &ReadConditions,
) -> Result<Reply, ApiError> {
    let grant = ctx.grant(resource_type, Action::Read)?;
    let version: i64 = vid.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::not_found(format!(
            "Version '{vid}' of {resource_type}/{id} is not known: versions are positive integers"
        ))
    })?;
    let Some(v) = ctx
        .store()
        .read_version(&ctx.ds.id, resource_type, id, version)
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "Version {version} of {resource_type}/{id} is not known"
        )));
    };
    if v.deleted {
        return Err(ApiError::gone(format!(
            "Version {version} of {resource_type}/{id} is a deletion"
        )));
    }
    check_in_grant(&grant, resource_type, v.json.as_deref())?;
    if conditions.not_modified(&v) {
        return Ok(not_modified(&v));
    }
    Ok(version_reply(v))
}

/// The live resources an `If-None-Exist` query matches (at most two: enough to tell one
/// match from several).
pub async fn if_none_exist_matches(
    ctx: &Ctx,
    resource_type: &'static str,
    query: &str,
) -> Result<Vec<StoredVersion>, ApiError> {
    let params = Params::parse(Some(query.trim_start_matches('?')));
    if params.0.is_empty() {
        return Err(ApiError::bad_request(
            "If-None-Exist is empty: give search parameters such as identifier=http://x|123",
        ));
    }
    super::search::conditional_matches(ctx, resource_type, &params.0, 2).await
}

/// `POST [type]`, optionally conditional on `If-None-Exist`.
pub async fn create(
    ctx: &Ctx,
    resource_type: &'static str,
    body: &[u8],
    if_none_exist: Option<&str>,
    prefer: ReturnPreference,
) -> Result<Reply, ApiError> {
    let grant = ctx.grant(resource_type, Action::Create)?;
    let id = new_id();
    let new = prepare_create(resource_type, body, &id)?;
    check_in_grant(&grant, resource_type, new.json.as_deref())?;
    if let Some(query) = if_none_exist {
        let mut matches = if_none_exist_matches(ctx, resource_type, query).await?;
        match matches.len() {
            0 => {}
            1 => {
                let existing = matches.remove(0);
                let location = format!(
                    "{resource_type}/{}/_history/{}",
                    existing.id, existing.version
                );
                let mut reply = version_reply(existing);
                reply.location = Some(location);
                match prefer {
                    ReturnPreference::Minimal => reply.body = Body::None,
                    ReturnPreference::OperationOutcome => {
                        reply.body = Body::Outcome(information(
                            "If-None-Exist matched an existing resource: nothing was created"
                                .to_string(),
                        ))
                    }
                    ReturnPreference::Representation => {}
                }
                return Ok(reply);
            }
            n => {
                return Err(ApiError::precondition_failed(format!(
                    "If-None-Exist matched {n} resources: the criteria must select at most one"
                )));
            }
        }
    }
    // A fresh UUID cannot exist; expecting version 0 makes that explicit.
    let applied = ctx.store().put_if_version(&ctx.ds.id, new, Some(0)).await?;
    Ok(write_reply(&applied, prefer))
}

/// `PUT [type]/[id]`: update, or create with the client's id (201).
pub async fn update(
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
    body: &[u8],
    if_match: Option<i64>,
    prefer: ReturnPreference,
) -> Result<Reply, ApiError> {
    let grant = ctx.grant(resource_type, Action::Update)?;
    let new = prepare_update(resource_type, id, body)?;
    check_in_grant(&grant, resource_type, new.json.as_deref())?;
    let expected = guard_existing(ctx, &grant, resource_type, id, if_match).await?;
    let expected = super::immutable::guard(ctx, resource_type, id, expected).await?;
    let applied = ctx
        .store()
        .put_if_version(&ctx.ds.id, new, expected)
        .await?;
    Ok(write_reply(&applied, prefer))
}

/// Under a compartment grant, the resource being replaced or deleted must lie within it too;
/// the write then expects the version that was checked, so a concurrent change cannot slip
/// another patient's resource under it. Returns the version the write must expect.
pub(super) async fn guard_existing(
    ctx: &Ctx,
    grant: &Grant,
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Option<i64>, ApiError> {
    if *grant == Grant::All {
        return Ok(if_match);
    }
    check_id(id).map_err(ApiError::validation)?;
    let current = ctx
        .store()
        .read_current(&ctx.ds.id, resource_type, id)
        .await?;
    match current {
        Some(v) if !v.deleted => {
            check_in_grant(grant, resource_type, v.json.as_deref())?;
            Ok(if_match.or(Some(v.version)))
        }
        Some(v) => Ok(if_match.or(Some(v.version))),
        None => Ok(if_match.or(Some(0))),
    }
}

/// `DELETE [type]/[id]`: 204, also when there is nothing to delete (idempotent).
pub async fn delete(
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Reply, ApiError> {
    let grant = ctx.grant(resource_type, Action::Delete)?;
    check_id(id).map_err(ApiError::validation)?;
    let expected = guard_existing(ctx, &grant, resource_type, id, if_match).await?;
    let expected = super::immutable::guard(ctx, resource_type, id, expected).await?;
    let deletion = NewResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        json: None,
    };
    let applied = ctx
        .store()
        .put_if_version(&ctx.ds.id, deletion, expected)
        .await?;
    let mut reply = Reply::new(StatusCode::NO_CONTENT, Body::None);
    reply.version = applied.written.map(|w| w.version);
    Ok(reply)
}

/// `PUT [type]?search`: the conditional update matrix of FHIR R4 (and the reference guide):
/// no match creates (with the body's id if it has one and that id is free, else 409), one
/// match is updated (409 if the body names another id), several are 412.
pub async fn conditional_update(
    ctx: &Ctx,
    resource_type: &'static str,
    params: &[(String, String)],
    body: &[u8],
    prefer: ReturnPreference,
) -> Result<Reply, ApiError> {
    let grant = ctx.grant(resource_type, Action::Update)?;
    let members = members_of(body_text(body)?)?;
    check_body_type(&members, resource_type)?;
    let body_id = json::string_member(&members, "id");
    let mut matches = super::search::conditional_matches(ctx, resource_type, params, 2).await?;
    let (new, expected) = match (matches.len(), body_id) {
        (0, None) => (prepare_create(resource_type, body, &new_id())?, Some(0)),
        (0, Some(id)) => {
            check_id(&id).map_err(ApiError::validation)?;
            let current = ctx
                .store()
                .read_current(&ctx.ds.id, resource_type, &id)
                .await?;
            let expected = match current {
                Some(v) if !v.deleted => {
                    return Err(ApiError::conflict(format!(
                        "No {resource_type} matches the search, but the body's id '{id}' belongs to an existing resource that does not match it"
                    )));
                }
                Some(v) => v.version,
                None => 0,
            };
            (prepare_update(resource_type, &id, body)?, Some(expected))
        }
        (1, body_id) => {
            super::immutable::refuse_replacing(resource_type)?;
            let current = matches.remove(0);
            if let Some(id) = body_id.filter(|id| *id != current.id) {
                return Err(ApiError::conflict(format!(
                    "The search matches {resource_type}/{}, but the body's id is '{id}'",
                    current.id
                )));
            }
            (
                prepare_create(resource_type, body, &current.id)?,
                Some(current.version),
            )
        }
        (n, _) => {
            return Err(ApiError::precondition_failed(format!(
                "The search matches {}{n} {resource_type} resources; a conditional update needs at most one",
                if n >= 2 { "at least " } else { "" }
            )));
        }
    };
    check_in_grant(&grant, resource_type, new.json.as_deref())?;
    let applied = ctx
        .store()
        .put_if_version(&ctx.ds.id, new, expected)
        .await?;
    Ok(write_reply(&applied, prefer))
}

/// `DELETE [type]?search`: deletes the one match (204; also when nothing matches), 412 when
/// several match.
pub async fn conditional_delete(
    ctx: &Ctx,
    resource_type: &'static str,
    params: &[(String, String)],
) -> Result<Reply, ApiError> {
    let matches = super::search::conditional_matches(ctx, resource_type, params, 2).await?;
    match matches.as_slice() {
        [] => Ok(Reply::new(StatusCode::NO_CONTENT, Body::None)),
        [one] => delete(ctx, resource_type, &one.id, Some(one.version)).await,
        _ => Err(ApiError::precondition_failed(format!(
            "The search matches several {resource_type} resources; a conditional delete removes at most one"
        ))),
    }
}

/// Parses a FHIR instant (or a date, meaning its midnight UTC) into the store's format.
pub fn parse_since(value: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(format!(
            "Invalid _since value '{value}': use an instant such as 2024-01-31T12:00:00Z"
        ))
    };
    // An unencoded `+01:00` offset arrives as a space.
    let v = value.trim().replace(' ', "+");
    let instant = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&v) {
        t.with_timezone(&chrono::Utc)
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).ok_or_else(invalid)?.and_utc()
    } else {
        return Err(invalid());
    };
    Ok(instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Paging limits of history.
pub const DEFAULT_HISTORY_COUNT: i64 = 100;
pub const MAX_HISTORY_COUNT: i64 = 500;

/// `GET [base]/_history`, `[type]/_history`, `[type]/[id]/_history`: newest first, paged
/// with an opaque `_cursor`.
pub async fn history(
    ctx: &Ctx,
    resource_type: Option<&str>,
    id: Option<&str>,
    params: &Params,
) -> Result<Reply, ApiError> {
    const KNOWN: &[&str] = &["_count", "_since", "_cursor", "_format", "_pretty"];
    if let Some(other) = params.unknown(KNOWN).next() {
        return Err(ApiError::unsupported(format!(
            "Unsupported history parameter '{other}': history supports _count, _since and _cursor"
        )));
    }
    let count = match params.get("_count") {
        None => DEFAULT_HISTORY_COUNT,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|c| (1..=MAX_HISTORY_COUNT).contains(c))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid _count '{c}': use an integer from 1 to {MAX_HISTORY_COUNT}"
                ))
            })?,
    };
    let since = params.get("_since").map(parse_since).transpose()?;
    let before_seq = params
        .get("_cursor")
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid _cursor '{c}'")))
        })
        .transpose()?;
    if let Some(id) = id {
        check_id(id).map_err(ApiError::validation)?;
    }
    if let Some(t) = resource_type {
        let grant = ctx.grant(t, Action::Read)?;
        if let Some(id) = id {
            guard_existing(ctx, &grant, t, id, None).await?;
        }
    }
    let query = HistoryQuery {
        resource_type: resource_type.map(String::from),
        id: id.map(String::from),
        since: since.clone(),
        count,
        before_seq,
    };
    let page = ctx.store().history(&ctx.ds.id, &query).await?;

    let path = match (resource_type, id) {
        (Some(t), Some(i)) => format!("{}/{t}/{i}/_history", ctx.base),
        (Some(t), None) => format!("{}/{t}/_history", ctx.base),
        _ => format!("{}/_history", ctx.base),
    };
    let link = |cursor: Option<i64>| {
        let mut url = format!("{path}?_count={count}");
        if let Some(s) = &since {
            url.push_str("&_since=");
            url.push_str(&s.replace('+', "%2B"));
        }
        if let Some(c) = cursor {
            url.push_str(&format!("&_cursor={c}"));
        }
        url
    };
    let mut bundle = BundleOut::new("history");
    bundle.link.push(BundleLink {
        relation: "self",
        url: link(before_seq),
    });
    bundle.link.push(BundleLink {
        relation: "first",
        url: link(None),
    });
    if let Some(next) = page.next_cursor {
        bundle.link.push(BundleLink {
            relation: "next",
            url: link(Some(next)),
        });
    }
    // A confined or partial grant sees only the versions it reaches.
    for v in page.versions.into_iter().filter(|v| ctx.may_read(v)) {
        bundle.entry.push(history_entry(&ctx.base, v)?);
    }
    Ok(Reply::new(StatusCode::OK, Body::Json(bundle.to_json()?)))
}

/// One history entry. The store does not record whether a version came from POST or PUT:
/// version 1 is shown as a create (POST), later versions as updates (PUT).
fn history_entry(base: &str, v: StoredVersion) -> Result<EntryOut, ApiError> {
    let instance = format!("{}/{}", v.resource_type, v.id);
    let (method, url, status) = if v.deleted {
        ("DELETE", instance.clone(), StatusCode::NO_CONTENT)
    } else if v.version == 1 {
        ("POST", v.resource_type.clone(), StatusCode::CREATED)
    } else {
        ("PUT", instance.clone(), StatusCode::OK)
    };
    Ok(EntryOut {
        full_url: Some(format!("{base}/{instance}")),
        resource: v.json.map(raw).transpose()?,
        search: None,
        request: Some(EntryRequestOut { method, url }),
        response: Some(EntryResponseOut {
            status: status_line(status),
            location: (!v.deleted).then(|| format!("{instance}/_history/{}", v.version)),
            etag: Some(etag(v.version)),
            last_modified: Some(v.last_updated),
            outcome: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_since() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("W/\"x\""), None);
        assert!(parse_if_match(Some("nope")).is_err());
        assert_eq!(parse_if_match(None).unwrap(), None);
        assert_eq!(
            parse_since("2024-01-31T13:00:00 01:00").unwrap(),
            "2024-01-31T12:00:00.000Z"
        );
        assert_eq!(
            parse_since("2024-01-31").unwrap(),
            "2024-01-31T00:00:00.000Z"
        );
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn create_and_update_bodies_are_checked() {
        let n = prepare_create(
            "Patient",
            br#"{"resourceType":"Patient","id":"ignored","birthDate":"1970-01-01"}"#,
            "new-id",
        )
        .unwrap();
        assert_eq!(n.id, "new-id");
        assert!(n.json.unwrap().contains(r#""id":"new-id""#));
        let e = prepare_create("Patient", br#"{"resourceType":"Observation"}"#, "x").unwrap_err();
        assert!(e.outcome.summary().contains("does not match 'Patient'"));
        let e = prepare_create("Patient", b"  ", "x").unwrap_err();
        assert!(e.outcome.summary().contains("empty"));
        let e = prepare_create("Patient", b"[1]", "x").unwrap_err();
        assert!(e.outcome.summary().contains("not a JSON object"));
        let e =
            prepare_create("Patient", br#"{"resourceType":"Patient","bogus":1}"#, "x").unwrap_err();
        assert_eq!(
            e.outcome.issue[0].diagnostics,
            "Unrecognised property '@bogus'"
        );

        assert!(prepare_update("Patient", "a", br#"{"resourceType":"Patient","id":"a"}"#).is_ok());
        let e =
            prepare_update("Patient", "a", br#"{"resourceType":"Patient","id":"b"}"#).unwrap_err();
        assert!(e.outcome.summary().contains("does not match the id 'a'"));
        let e = prepare_update("Patient", "a", br#"{"resourceType":"Patient"}"#).unwrap_err();
        assert!(e.outcome.summary().contains("no id"));
        let e = prepare_update(
            "Patient",
            "a$b",
            br#"{"resourceType":"Patient","id":"a$b"}"#,
        )
        .unwrap_err();
        assert!(e.outcome.summary().contains("[A-Za-z0-9-.]{1,64}"));
    }
}
