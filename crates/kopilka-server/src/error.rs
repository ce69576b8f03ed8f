//! The one error type of the API edge, rendered as `application/problem+json` (RFC 9457) with a
//! stable `code`. Internal errors are logged with their cause and sent without it.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kopilka_core::DomainError;
use kopilka_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// A problem as sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `https://kopilka.dev/problems/{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable: clients branch on this.
    pub code: String,
    pub detail: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every way a request can fail. Each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not the JSON expected, or a field is out of bounds.
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String, field: Option<String> },
    /// 401: no key, or a key that is unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the thing named does not exist in this tenant.
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    /// 409: conflicts with the current state (a receipt already recorded, an identifier taken).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String, field: Option<String> },
    /// 422: well-formed, but the state of things refuses it (a coupon used up, goods the member may
    /// not buy, a reward out of stock).
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String, field: Option<String> },
    /// 413: the body is larger than the limit.
    #[error("request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// 422: well-formed but refused by the program's rules (balance, share, returns).
    #[error("{0}")]
    Domain(#[from] DomainError),
    /// 422: an idempotency key reused with a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    /// 503: the writer is shutting down or overloaded.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or a failing database; logged, never detailed to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code, detail: detail.into(), field: Some(field.into()) }
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::NotFound { code, detail: detail.into() }
    }

    pub fn problem(&self) -> Problem {
        let (status, code, field) = match self {
            ApiError::BadRequest { code, field, .. } => (StatusCode::BAD_REQUEST, *code, field.clone()),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden_role", None),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, *code, None),
            ApiError::Conflict { code, field, .. } => (StatusCode::CONFLICT, *code, field.clone()),
            ApiError::Unprocessable { code, field, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code, field.clone()),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            ApiError::Domain(error) => {
                let field = error.field().map(str::to_string);
                let status = match error {
                    DomainError::Invalid { .. } | DomainError::UnknownCurrency { .. } => StatusCode::BAD_REQUEST,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (status, error.code(), field)
            }
            ApiError::IdempotencyKeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_string(),
            other => other.to_string(),
        };
        Problem {
            kind: format!("https://kopilka.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            code: code.to_string(),
            detail,
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).expect("problems serialize");
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}
