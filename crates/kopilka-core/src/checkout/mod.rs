//! Checkout: pricing a basket for a member (the program's discounts, coupons, payment with points
//! and the points it earns) before the purchase is committed. See [`quote`] for the order things
//! are applied in, [`discount`] for discount programs and restricted goods, and [`coupon`] for
//! coupon campaigns, codes and their holds.

pub mod coupon;
pub mod discount;
pub mod quote;

pub use coupon::{check_code, CampaignRecord, Coupon, CouponCampaign, CouponEffect, CouponRefusal, Hold};
pub use discount::{Discount, DiscountKind, Restriction, Spend};
pub use quote::{quote, CouponInput, Quote, QuoteBasket};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::purchase::{Channel, LineInput};
use crate::{MemberId, ProgramId, PurchaseId};

/// Where a checkout stands. An open checkout past its `expires_at` is expired: its holds lapsed
/// with it, and it can no longer be confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutStatus {
    Open,
    Confirmed,
    Cancelled,
    Expired,
}

impl CheckoutStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckoutStatus::Open => "open",
            CheckoutStatus::Confirmed => "confirmed",
            CheckoutStatus::Cancelled => "cancelled",
            CheckoutStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<CheckoutStatus> {
        [CheckoutStatus::Open, CheckoutStatus::Confirmed, CheckoutStatus::Cancelled, CheckoutStatus::Expired]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What the till sent to be quoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutBasket {
    pub lines: Vec<LineInput>,
    pub channel: Channel,
    pub store: Option<String>,
    pub currency: String,
    pub coupons: Vec<String>,
    pub redeem_points: i64,
}

/// A quoted basket waiting to be confirmed or cancelled, and the coupons it holds meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub id: i64,
    pub member_id: MemberId,
    pub program_id: ProgramId,
    pub status: CheckoutStatus,
    pub basket: CheckoutBasket,
    pub quote: Quote,
    pub purchase_id: Option<PurchaseId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Checkout {
    /// The status as of `now`: an open checkout past its time has expired.
    pub fn status_at(&self, now: Timestamp) -> CheckoutStatus {
        match self.status {
            CheckoutStatus::Open if now >= self.expires_at => CheckoutStatus::Expired,
            status => status,
        }
    }
}
