//! The pure loyalty domain of Kopilka.
//!
//! Everything here is deterministic: commands and the state they need come in, movements (balanced
//! sets of postings), records and domain events go out. This crate does no I/O, spawns nothing and
//! never reads the clock: `now` is always an argument. That is what lets the same code run under
//! SQLite, PostgreSQL, a benchmark or a simulation, and be tested with plain values.

pub mod bonuses;
pub mod checkout;
pub mod currency;
pub mod error;
pub mod events;
pub mod ids;
pub mod ledger;
pub mod member;
pub mod member_state;
pub mod partners;
pub mod program;
pub mod purchase;
pub mod referrals;
pub mod rewards;
pub mod rules;
pub mod tiers;

pub use currency::{Currency, PointCurrency};
pub use error::DomainError;
pub use events::DomainEvent;
pub use ids::{IdAllocator, LotId, MemberId, MovementId, PartnerId, ProgramId, PurchaseId, TenantId};
pub use jiff::Timestamp;
pub use ledger::{Account, Balance, DueKeys, Lot, LotState, MemberLedger, Movement, MovementKind, Posting};
pub use program::{EarnRate, ExpiryPolicy, Program, ValidationIssue};
