//! Persistence for Kopilka, on SQLite (the embedded default) or PostgreSQL (many nodes), with one
//! body of SQL for both through sqlx's `Any` driver; `sql` holds the few places they differ. The
//! write path is "load what a batch needs, decide in memory, flush the batch" (`batch`), so a
//! database round trip is paid per batch, not per command.
//!
//! This crate knows SQL and rows; it never decides anything about points. It does not know HTTP.

pub mod batch;
pub mod bonuses;
pub mod checkout;
pub mod checkpoint;
pub mod lot_totals;
pub mod outbox;
pub mod partners;
pub mod pipeline;
pub mod reads;
pub mod referrals;
pub mod rewards;
pub mod rows;
pub mod sql;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;
pub mod wal_buffer;
pub mod wal_sync;

pub use rows::{ApiKeyRow, MemberRow, Role, StoredResponse};
pub use sql::Backend;
pub use store::{Database, Store};

/// A failure of the store itself (the database, a corrupt row), never a business rejection.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Converts between jiff timestamps and the microseconds the schema stores.
pub mod micros {
    use jiff::Timestamp;

    pub fn of(ts: Timestamp) -> i64 {
        ts.as_microsecond()
    }

    pub fn to_ts(value: i64) -> Timestamp {
        Timestamp::from_microsecond(value).expect("stored timestamps were valid when written")
    }
}
