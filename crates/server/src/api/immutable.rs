//! AuditEvent resources are records of what happened: the FHIR API creates them but never
//! replaces or deletes one (the reference guide's REST restrictions), like the server's own
//! audit log. The interactions (`interactions.rs`, Bundle entries in `bundle.rs`) ask here
//! before a PUT or DELETE.

use axum::http::StatusCode;

use super::ApiError;
use super::context::Ctx;

/// The one resource type that is immutable once written.
const IMMUTABLE: &str = "AuditEvent";

/// 405 with an OperationOutcome.
fn refused() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "AuditEvent resources are immutable: they can be created, not updated or deleted",
    )
}

/// Refuses a PUT or DELETE of `resource_type/id` that would change an existing AuditEvent.
/// Otherwise returns the version the write must expect: for an AuditEvent, the version seen
/// here (0 when none), so one created meanwhile makes the write a conflict instead of an
/// update; for other types, `expected` unchanged.
pub async fn guard(
    ctx: &Ctx,
    resource_type: &str,
    id: &str,
    expected: Option<i64>,
) -> Result<Option<i64>, ApiError> {
    if resource_type != IMMUTABLE {
        return Ok(expected);
    }
    let current = ctx
        .store()
        .read_current(&ctx.ds.id, resource_type, id)
        .await?;
    match current {
        Some(v) if !v.deleted => Err(refused()),
        Some(v) => Ok(expected.or(Some(v.version))),
        None => Ok(expected.or(Some(0))),
    }
}

/// Refuses a write that is known to replace an existing resource of `resource_type` (a
/// conditional update that matched one).
pub fn refuse_replacing(resource_type: &str) -> Result<(), ApiError> {
    if resource_type == IMMUTABLE {
        return Err(refused());
    }
    Ok(())
}
