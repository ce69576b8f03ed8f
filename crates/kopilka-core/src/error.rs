//! Expected rejections of commands, as data. A broken invariant is not one of these: it is a bug
//! and panics (see the assertions in `ledger`).

use serde::Serialize;

/// Why the domain refused a command. Each variant has a stable `code()` that the API sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("unknown currency {code:?}: use an ISO 4217 code such as RUB")]
    UnknownCurrency { code: String },
    #[error("currency {got} does not match the program's bill currency {expected}")]
    CurrencyMismatch { expected: String, got: String },
    #[error("insufficient points: {available} available, {requested} requested")]
    InsufficientPoints { available: i64, requested: i64 },
    #[error("at most {max_points} points may pay for this bill, {requested} requested")]
    RedeemShareExceeded { max_points: i64, requested: i64 },
    #[error("line {line}: {requested} to return but only {returnable} returnable")]
    ReturnExceedsPurchase { line: usize, returnable: i64, requested: i64 },
    #[error("the purchase has nothing left to return")]
    NothingToReturn,
    #[error("member {member_id} was merged into member {survivor_id}")]
    MemberMerged { member_id: i64, survivor_id: i64 },
    #[error("a member cannot be merged into itself")]
    MergeIntoSelf,
    #[error("{field}: unknown time zone {zone:?}: use an IANA name such as Europe/Moscow")]
    UnknownTimeZone { field: String, zone: String },
    #[error("{field}: language {language:?} is not supported: use en or ru")]
    UnknownLanguage { field: String, language: String },
}

impl DomainError {
    /// The stable machine-readable code of this rejection.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::Invalid { .. } => "validation_failed",
            DomainError::UnknownCurrency { .. } => "unknown_currency",
            DomainError::CurrencyMismatch { .. } => "currency_mismatch",
            DomainError::InsufficientPoints { .. } => "insufficient_points",
            DomainError::RedeemShareExceeded { .. } => "redeem_share_exceeded",
            DomainError::ReturnExceedsPurchase { .. } => "return_exceeds_purchase",
            DomainError::NothingToReturn => "nothing_to_return",
            DomainError::MemberMerged { .. } => "member_merged",
            DomainError::MergeIntoSelf => "merge_into_self",
            DomainError::UnknownTimeZone { .. } => "unknown_time_zone",
            DomainError::UnknownLanguage { .. } => "unknown_language",
        }
    }

    /// The request field at fault, when the rejection is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DomainError::Invalid { field, .. }
            | DomainError::UnknownTimeZone { field, .. }
            | DomainError::UnknownLanguage { field, .. } => Some(field),
            _ => None,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DomainError {
        DomainError::Invalid { field: field.into(), reason: reason.into() }
    }
}
