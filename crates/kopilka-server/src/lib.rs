//! Kopilka's server: the HTTP API, its authentication, the writer that turns requests into
//! committed ledger changes, and the background jobs.

pub mod api;
pub mod app;
pub mod auth;
pub mod bonuses;
pub mod checkout;
pub mod clock;
pub mod dto;
mod durable;
pub mod engine;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod partners;
pub mod referrals;
pub mod rewards;
pub mod writer;
