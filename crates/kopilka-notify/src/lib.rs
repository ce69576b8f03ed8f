//! Kopilka's notifications: the dispatcher that turns the outbox (`events`) into deliveries, and the
//! channels that carry them: signed webhooks for CRMs, email over SMTP, SMS and push through HTTP
//! providers, and Telegram.
//!
//! The flow: `fanout` reads events past a per-tenant cursor and, in the same transaction that
//! advances the cursor, writes one `deliveries` row per webhook subscription whose filter matches
//! and per member message whose template exists (or a `suppressed` row saying why not: no consent,
//! opted out, frequency cap, no address). `dispatcher` sends due deliveries with retries,
//! exponential backoff with jitter and a dead-letter state. Everything is keyed by the tenant, and
//! every time comes from an injected `Clock`.
//!
//! This crate knows no API JSON shapes and no inbound HTTP: the server's `api::notify` module maps
//! requests onto the functions here. It never writes ledger rows.

pub mod clock;
pub mod config;
pub mod db;
pub mod dispatcher;
pub mod fanout;
pub mod http;
pub mod settings;
pub mod signing;
pub mod smtp;
pub mod templates;
pub mod testing;
pub mod webhook;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatcher::{Dispatcher, DispatcherConfig};

use serde::{Deserialize, Serialize};

/// A failure of notifications: invalid input (named by field, with a stable code) or the store.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A request that cannot be accepted as it is: bad config, bad template, unknown kind.
    #[error("{detail}")]
    Invalid { code: &'static str, field: String, detail: String },
    /// The thing named does not exist in this tenant.
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    #[error("store: {0}")]
    Store(#[from] kopilka_store::StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl NotifyError {
    pub fn invalid(code: &'static str, field: impl Into<String>, detail: impl Into<String>) -> NotifyError {
        NotifyError::Invalid { code, field: field.into(), detail: detail.into() }
    }
}

pub type Result<T, E = NotifyError> = std::result::Result<T, E>;

/// A way of reaching a member. Webhooks are not channels: they go to the tenant's systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Messenger,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Push, Channel::Messenger];

    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Messenger => "messenger",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether the member's profile consents to this channel.
    pub fn consented(&self, consents: &kopilka_core::member::Consents) -> bool {
        match self {
            Channel::Email => consents.email,
            Channel::Sms => consents.sms,
            Channel::Push => consents.push,
            Channel::Messenger => consents.messenger,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt (possibly delayed past quiet hours).
    Pending,
    Delivered,
    /// The last attempt failed; another is scheduled at `next_attempt_at`.
    Failed,
    /// Every attempt failed; only a manual replay sends it again.
    Dead,
    /// Not sent, on purpose; `reason` says why.
    Suppressed,
}

impl DeliveryStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Suppressed => "suppressed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        [Self::Pending, Self::Delivered, Self::Failed, Self::Dead, Self::Suppressed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A secret (webhook secret, SMTP password, provider token): kept in clear where it must be used,
/// but never printed by `Debug`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}
