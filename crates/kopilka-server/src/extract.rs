//! Request extraction with problem+json errors: a mutating request's body with its idempotency
//! key, and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::engine::{Idempotency, Reply};
use crate::error::ApiError;

/// The largest request body accepted. A 1,000-line receipt is about 150 KiB.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// The longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// The body of a mutating request, parsed, with its `Idempotency-Key`.
pub struct Mutation<T> {
    pub idempotency: Idempotency,
    pub body: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Mutation<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let key = request
            .headers()
            .get("idempotency-key")
            .ok_or_else(|| {
                ApiError::bad_request(
                    "idempotency_key_missing",
                    "Idempotency-Key",
                    "every change needs an Idempotency-Key header: a unique string per intended change, reused only to retry it",
                )
            })?
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_LEN_MAX && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "idempotency_key_invalid",
                    "Idempotency-Key",
                    format!("must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} printable ASCII characters"),
                )
            })?
            .to_string();
        let mut hasher = Sha256::new();
        hasher.update(request.method().as_str());
        hasher.update(b" ");
        hasher.update(request.uri().path());
        hasher.update(b"\n");
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit_bytes: BODY_BYTES_MAX }
            } else {
                ApiError::bad_request("malformed_json", "body", rejection.body_text())
            }
        })?;
        hasher.update(&bytes);
        // A command with nothing to say (an erasure) may send no body at all.
        let body = if bytes.is_empty() { parse_json(b"{}")? } else { parse_json(&bytes)? };
        Ok(Mutation { idempotency: Idempotency::new(key, hasher.finalize().to_vec()), body })
    }
}

/// Parses JSON, telling a syntax error (`malformed_json`) from a value that does not fit
/// (`validation_failed`, naming the field when serde does).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if holds_escaped_nul(bytes) {
        return Err(nul_refused("body"));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        let code = match error.classify() {
            serde_json::error::Category::Data => "validation_failed",
            _ => "malformed_json",
        };
        let message = error.to_string();
        let field = message.split('`').nth(1).filter(|_| message.contains("field `")).unwrap_or("body").to_string();
        ApiError::BadRequest { code, detail: message, field: Some(field) }
    })
}

/// Whether a JSON text holds the character U+0000, which JSON can only spell as the escape
/// `\u0000` (a raw control character inside a string is a syntax error).
fn holds_escaped_nul(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = &rest[at + 1..];
        if escape.starts_with(b"u0000") {
            return true;
        }
        // Past the escaped character, so the second backslash of `\\` starts nothing.
        rest = &escape[escape.len().min(1)..];
    }
    false
}

/// PostgreSQL's TEXT cannot hold U+0000 (SQLite's can), and no field of the API has a use for
/// it: refused before anything is parsed or written, so both stores answer alike.
pub fn nul_refused(field: &str) -> ApiError {
    ApiError::bad_request(
        "nul_character",
        field,
        "text must not contain the NUL character (\\u0000 in JSON, %00 in a URL); remove it",
    )
}

/// A query string, with problem+json errors.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        parse_query(query).map(Query)
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().expect("a path and query form a URI"))
        .map(|q| q.0)
        .map_err(|rejection| ApiError::bad_request("validation_failed", "query", rejection.body_text()))
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], self.body).into_response();
        if self.replayed {
            response.headers_mut().insert("idempotency-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}
