//! REST errors: every failure leaves the server as an OperationOutcome with a fitting status.

use axum::http::StatusCode;

use fhirlake_schema::outcome::{Issue, OperationOutcome};
use fhirlake_store::ConditionalWriteError;
use fhirlake_store::StoreError;

/// An error response: the HTTP status and the OperationOutcome that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub outcome: OperationOutcome,
}

impl ApiError {
    /// One `error` issue with FHIR IssueType `code`.
    pub fn new(status: StatusCode, code: &str, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            outcome: OperationOutcome::new(vec![Issue::error(code, diagnostics)]),
        }
    }

    /// 400 for a malformed request (`invalid`).
    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
    }

    /// 400 for a request the server understands but does not implement (`not-supported`).
    pub fn unsupported(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "not-supported", diagnostics)
    }

    /// 400 carrying the validator's issues unchanged.
    pub fn validation(outcome: OperationOutcome) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            outcome,
        }
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", diagnostics)
    }

    pub fn gone(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "deleted", diagnostics)
    }

    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "conflict", diagnostics)
    }

    pub fn conflict(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", diagnostics)
    }

    pub fn too_large(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too-long", diagnostics)
    }

    pub fn method_not_allowed() -> Self {
        // HealthLake's wording for an interaction it does not offer.
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "Interaction not supported.",
        )
    }

    /// 500: logged with its cause; the client sees the cause too (the server is local).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            format!("Internal server error: {cause}"),
        )
    }

    /// The IssueType code that fits a bare HTTP error status.
    pub fn code_for_status(status: StatusCode) -> &'static str {
        match status {
            StatusCode::NOT_FOUND => "not-found",
            StatusCode::GONE => "deleted",
            StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_ACCEPTABLE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE => "not-supported",
            StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "too-long",
            StatusCode::UNPROCESSABLE_ENTITY => "processing",
            StatusCode::TOO_MANY_REQUESTS => "throttled",
            s if s.is_server_error() => "exception",
            _ => "invalid",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.outcome.summary())
    }
}

impl std::error::Error for ApiError {}

impl From<crate::auth::Denied> for ApiError {
    fn from(e: crate::auth::Denied) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e)
    }
}

impl From<ConditionalWriteError> for ApiError {
    fn from(e: ConditionalWriteError) -> Self {
        match e {
            ConditionalWriteError::Conflict(c) => Self::precondition_failed(format!(
                "Version conflict for {}/{}: the request expected version {}, but the current version is {}",
                c.resource_type,
                c.id,
                c.expected,
                c.current.map_or_else(
                    || "none (the resource does not exist)".into(),
                    |v| v.to_string()
                )
            )),
            ConditionalWriteError::Store(e) => e.into(),
        }
    }
}
