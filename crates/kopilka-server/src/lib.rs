//! Kopilka's server: the HTTP API, its authentication, the writer that turns requests into
//! committed ledger changes, and the background jobs.

pub mod clock;
pub mod dto;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod writer;
