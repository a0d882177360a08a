//! Control-plane errors, named and coded as the AWS HealthLake API names them.

use axum::http::StatusCode;

use fhirlake_store::StoreError;

/// A failed control-plane operation. Each variant is one of HealthLake's error types; the
/// wire layer sends it as `{"__type": "<Name>", "message": "<text>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed or breaks a rule or quota.
    #[error("{0}")]
    Validation(String),
    /// The data store or job does not exist.
    #[error("{0}")]
    ResourceNotFound(String),
    /// The request conflicts with the resource's state (a job already running, ...).
    #[error("{0}")]
    Conflict(String),
    /// A rate limit was exceeded.
    #[error("{0}")]
    Throttling(String),
    /// The caller may not do this (bad signature, location outside the allowed roots).
    #[error("{0}")]
    AccessDenied(String),
    /// A failure on our side.
    #[error("{0}")]
    Internal(String),
    /// The request's SigV4 signature is wrong or expired.
    #[error("{0}")]
    InvalidSignature(String),
    /// The request is not signed, and this server requires signatures.
    #[error("{0}")]
    MissingAuthenticationToken(String),
    /// The `Authorization` header or `X-Amz-Date` is malformed.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The request is signed with an access key this server does not know.
    #[error("{0}")]
    UnrecognizedClient(String),
}

impl ControlError {
    /// The AWS error type name (`ValidationException`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            ControlError::Validation(_) => "ValidationException",
            ControlError::ResourceNotFound(_) => "ResourceNotFoundException",
            ControlError::Conflict(_) => "ConflictException",
            ControlError::Throttling(_) => "ThrottlingException",
            ControlError::AccessDenied(_) => "AccessDeniedException",
            ControlError::Internal(_) => "InternalServerException",
            ControlError::InvalidSignature(_) => "InvalidSignatureException",
            ControlError::MissingAuthenticationToken(_) => "MissingAuthenticationTokenException",
            ControlError::IncompleteSignature(_) => "IncompleteSignatureException",
            ControlError::UnrecognizedClient(_) => "UnrecognizedClientException",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::Validation(_) => StatusCode::BAD_REQUEST,
            ControlError::ResourceNotFound(_) => StatusCode::BAD_REQUEST,
            ControlError::Conflict(_) => StatusCode::BAD_REQUEST,
            ControlError::Throttling(_) => StatusCode::BAD_REQUEST,
            ControlError::AccessDenied(_) => StatusCode::BAD_REQUEST,
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::InvalidSignature(_)
            | ControlError::MissingAuthenticationToken(_)
            | ControlError::UnrecognizedClient(_) => StatusCode::FORBIDDEN,
            ControlError::IncompleteSignature(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchDatastore(id) => {
                ControlError::ResourceNotFound(format!("Datastore {id} not found"))
            }
            StoreError::NoSuchJob(id) => {
                ControlError::ResourceNotFound(format!("Job {id} not found"))
            }
            StoreError::DuplicateDatastore(_) | StoreError::InvalidDatastoreName(_) => {
                ControlError::Validation(e.to_string())
            }
            other => ControlError::Internal(other.to_string()),
        }
    }
}

impl From<crate::auth::sigv4::SigV4Error> for ControlError {
    fn from(e: crate::auth::sigv4::SigV4Error) -> Self {
        use crate::auth::sigv4::SigV4Error as E;
        match e {
            E::MissingAuthenticationToken(m) => Self::MissingAuthenticationToken(m),
            E::IncompleteSignature(m) => Self::IncompleteSignature(m),
            E::UnrecognizedClient(m) => Self::UnrecognizedClient(m),
            E::InvalidSignature(m) => Self::InvalidSignature(m),
        }
    }
}
