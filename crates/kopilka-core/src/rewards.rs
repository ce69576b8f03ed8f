//! The rewards catalogue: what members may buy with points, and what buying one produces.
//!
//! A [`Reward`] has a price in points, an optional stock, an optional per-member limit, a validity
//! window, a tier restriction and the forms it may be taken in (the item itself, points, a
//! discount voucher for a later purchase, or cashback owed by the business). Redeeming one debits
//! the price to a system account ([`Account::Rewards`], or [`Account::Cashback`] when the member
//! takes money) and yields a [`RewardRedemption`] that is later fulfilled or cancelled; a
//! cancellation credits the price back from the same account, so the ledger stays balanced.
//!
//! As in `purchase`, each `decide_*` function checks everything before it changes anything, so a
//! refusal consumes neither points nor stock.

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::ledger::Credit;
use crate::purchase::{Outcome, POINTS_MAX, TEXT_LEN_MAX};
use crate::{Account, DomainError, DomainEvent, IdAllocator, MemberId, MemberLedger, MovementKind, Program, ProgramId};

/// The longest reward description: a paragraph for the catalogue, not a web page.
pub const DESCRIPTION_LEN_MAX: usize = 2_000;
/// The most tiers one reward may be restricted to.
pub const TIERS_MAX: usize = 20;
/// The largest stock one reward may hold: far above any real shelf, far below i64.
pub const STOCK_MAX: i64 = 1_000_000_000;
/// The most redemptions a per-member limit may allow.
pub const LIMIT_COUNT_MAX: u32 = 1_000_000;
/// The longest a voucher may stay valid: ten years.
pub const VOUCHER_VALID_DAYS_MAX: i32 = 3_660;
/// The largest fixed voucher value, in minor units (as a bill's largest amount).
pub const VOUCHER_AMOUNT_MINOR_MAX: i64 = crate::purchase::AMOUNT_MINOR_MAX;

crate::ids::id_type!(
    /// A reward in a tenant's catalogue.
    RewardId
);
crate::ids::id_type!(
    /// One redemption of a reward by a member.
    RedemptionId
);
crate::ids::id_type!(
    /// Money the business owes a member who took a reward as cashback.
    PayoutId
);

/// Hands out reward, redemption and payout ids; seeded by the store like [`IdAllocator`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewardIds {
    pub next_reward: i64,
    pub next_redemption: i64,
    pub next_payout: i64,
}

impl RewardIds {
    pub fn reward(&mut self) -> RewardId {
        self.next_reward += 1;
        RewardId(self.next_reward)
    }
    pub fn redemption(&mut self) -> RedemptionId {
        self.next_redemption += 1;
        RedemptionId(self.next_redemption)
    }
    pub fn payout(&mut self) -> PayoutId {
        self.next_payout += 1;
        PayoutId(self.next_payout)
    }
}

/// What a reward is, as the catalogue groups it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    Gift,
    Goods,
    DiscountVoucher,
    PartnerReward,
    Cashback,
}

impl RewardKind {
    /// The form a member gets when the reward offers no choice.
    pub fn default_form(&self) -> RewardForm {
        match self {
            RewardKind::Gift | RewardKind::Goods | RewardKind::PartnerReward => RewardForm::Item,
            RewardKind::DiscountVoucher => RewardForm::Discount,
            RewardKind::Cashback => RewardForm::Cashback,
        }
    }
}

/// The form a reward is taken in.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardForm {
    /// The gift, goods or partner reward itself, handed over by staff or a partner (fulfilment).
    Item,
    /// Points credited to the member at once (an exchange).
    Points,
    /// A voucher for a discount on a later purchase.
    Discount,
    /// Money back, owed by the business as a cashback payout.
    Cashback,
}

impl RewardForm {
    pub fn as_str(&self) -> &'static str {
        match self {
            RewardForm::Item => "item",
            RewardForm::Points => "points",
            RewardForm::Discount => "discount",
            RewardForm::Cashback => "cashback",
        }
    }
}

/// The calendar period a per-member limit counts over, in the program's time zone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitPeriod {
    /// Over the reward's whole life.
    #[default]
    Lifetime,
    Day,
    Month,
    Year,
}

/// At most `count` redemptions per member in each `period`. Cancelled redemptions do not count.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberLimit {
    pub count: u32,
    #[serde(default)]
    pub period: LimitPeriod,
}

/// The discount a `discount` form gives: exactly one of a percentage or a fixed amount in the
/// program's bill currency.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoucherTerms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    /// Days the voucher stays valid after it is issued; none: until used or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_days: Option<i32>,
}

/// A reward as an administrator defines it (the body of `POST` and `PUT /v1/rewards`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub kind: RewardKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub price_points: i64,
    /// Units left to redeem; none: unlimited. Each redemption takes one, a cancellation gives it back.
    #[serde(default)]
    pub stock: Option<i64>,
    #[serde(default)]
    pub member_limit: Option<MemberLimit>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub available_from: Option<Timestamp>,
    /// The first moment the reward is no longer available.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub available_until: Option<Timestamp>,
    /// Tiers whose members may redeem it; empty: everyone.
    #[serde(default)]
    pub tiers: Vec<String>,
    #[serde(default = "default_true")]
    pub active: bool,
    /// Forms the member may choose from, the first being the default; empty: the kind's own form.
    #[serde(default)]
    pub forms: Vec<RewardForm>,
    /// The discount of the `discount` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher: Option<VoucherTerms>,
    /// The points the `points` form credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_credit: Option<i64>,
}

fn default_true() -> bool {
    true
}

fn check_text(field: &str, text: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() || text.chars().count() > TEXT_LEN_MAX {
        return Err(DomainError::invalid(field, format!("must be 1 to {TEXT_LEN_MAX} characters")));
    }
    Ok(())
}

impl RewardSpec {
    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), DomainError> {
        check_text("name", &self.name)?;
        if let Some(description) = &self.description {
            if description.chars().count() > DESCRIPTION_LEN_MAX {
                return Err(DomainError::invalid("description", format!("at most {DESCRIPTION_LEN_MAX} characters")));
            }
        }
        if !(1..=POINTS_MAX).contains(&self.price_points) {
            return Err(DomainError::invalid("price_points", format!("must be between 1 and {POINTS_MAX}")));
        }
        if let Some(stock) = self.stock {
            if !(0..=STOCK_MAX).contains(&stock) {
                return Err(DomainError::invalid("stock", format!("must be between 0 and {STOCK_MAX}, or null")));
            }
        }
        if let Some(limit) = self.member_limit {
            if !(1..=LIMIT_COUNT_MAX).contains(&limit.count) {
                return Err(DomainError::invalid(
                    "member_limit.count",
                    format!("must be between 1 and {LIMIT_COUNT_MAX}"),
                ));
            }
        }
        if let (Some(from), Some(until)) = (self.available_from, self.available_until) {
            if until <= from {
                return Err(DomainError::invalid("available_until", "must be after available_from"));
            }
        }
        if self.tiers.len() > TIERS_MAX {
            return Err(DomainError::invalid("tiers", format!("at most {TIERS_MAX} tiers")));
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            check_text(&format!("tiers[{index}]"), tier)?;
        }
        for (index, form) in self.forms.iter().enumerate() {
            if self.forms[..index].contains(form) {
                return Err(DomainError::invalid(format!("forms[{index}]"), "each form at most once"));
            }
            let fits = match form {
                RewardForm::Item => {
                    matches!(self.kind, RewardKind::Gift | RewardKind::Goods | RewardKind::PartnerReward)
                }
                RewardForm::Points | RewardForm::Discount | RewardForm::Cashback => true,
            };
            if !fits {
                return Err(DomainError::invalid(
                    format!("forms[{index}]"),
                    "only gifts, goods and partner rewards are handed over as items",
                ));
            }
        }
        let forms = self.offered_forms();
        match (&self.voucher, forms.contains(&RewardForm::Discount)) {
            (None, true) => return Err(DomainError::invalid("voucher", "a discount form needs the voucher's terms")),
            (Some(_), false) => return Err(DomainError::invalid("voucher", "only a discount form gives a voucher")),
            (Some(voucher), true) => voucher.validate()?,
            (None, false) => {}
        }
        match (self.points_credit, forms.contains(&RewardForm::Points)) {
            (None, true) => return Err(DomainError::invalid("points_credit", "a points form needs points_credit")),
            (Some(_), false) => return Err(DomainError::invalid("points_credit", "only a points form credits points")),
            (Some(points), true) if !(1..=POINTS_MAX).contains(&points) => {
                return Err(DomainError::invalid("points_credit", format!("must be between 1 and {POINTS_MAX}")))
            }
            _ => {}
        }
        Ok(())
    }

    /// The forms a member may choose from, the default first.
    pub fn offered_forms(&self) -> Vec<RewardForm> {
        if self.forms.is_empty() {
            vec![self.kind.default_form()]
        } else {
            self.forms.clone()
        }
    }
}

impl VoucherTerms {
    fn validate(&self) -> Result<(), DomainError> {
        match (self.percent, self.amount_minor) {
            (Some(percent), None) if !(1..=100).contains(&percent) => {
                return Err(DomainError::invalid("voucher.percent", "must be between 1 and 100"))
            }
            (None, Some(amount)) if !(1..=VOUCHER_AMOUNT_MINOR_MAX).contains(&amount) => {
                return Err(DomainError::invalid("voucher.amount_minor", "must be positive"))
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(DomainError::invalid("voucher", "give exactly one of percent and amount_minor")),
        }
        if let Some(days) = self.valid_days {
            if !(1..=VOUCHER_VALID_DAYS_MAX).contains(&days) {
                return Err(DomainError::invalid(
                    "voucher.valid_days",
                    format!("must be between 1 and {VOUCHER_VALID_DAYS_MAX}"),
                ));
            }
        }
        Ok(())
    }
}

/// A reward in the catalogue, with what has been redeemed of it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reward {
    pub id: RewardId,
    #[serde(flatten)]
    pub spec: RewardSpec,
    /// Redemptions not cancelled.
    pub redeemed_count: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

/// Where a redemption is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedemptionStatus {
    /// Points taken; the item, voucher or payout is still owed (or the voucher unused).
    Issued,
    /// Handed over, used, credited or paid.
    Fulfilled,
    /// Called off: the points went back to the member and the unit back to stock.
    Cancelled,
}

impl RedemptionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RedemptionStatus::Issued => "issued",
            RedemptionStatus::Fulfilled => "fulfilled",
            RedemptionStatus::Cancelled => "cancelled",
        }
    }
}

/// A discount on a later purchase, redeemable once by its code. Checkout honours it: a percentage
/// of the bill or a fixed amount in `currency`, while the redemption is `issued` and before
/// `expires_at`; using it marks the redemption fulfilled.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    /// The program's bill currency, in which `amount_minor` is counted.
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
}

/// One reward redeemed by one member.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardRedemption {
    pub id: RedemptionId,
    pub reward_id: RewardId,
    pub member_id: MemberId,
    /// The program whose points paid for it, and get them back on cancellation.
    pub program_id: ProgramId,
    pub kind: RewardKind,
    pub reward_name: String,
    pub form: RewardForm,
    /// The price paid.
    pub points: i64,
    pub status: RedemptionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher: Option<Voucher>,
    /// For the `points` form: the points credited.
    #[serde(default)]
    pub points_credited: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cashback_payout_id: Option<PayoutId>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub redeemed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub fulfilled_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub cancelled_at: Option<Timestamp>,
}

impl RewardRedemption {
    /// The system account the price went to, and comes back from on cancellation.
    pub fn account(&self) -> Account {
        match self.form {
            RewardForm::Cashback => Account::Cashback,
            RewardForm::Item | RewardForm::Points | RewardForm::Discount => Account::Rewards,
        }
    }
}

/// Where a cashback payout is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    Pending,
    Paid,
    Cancelled,
}

impl PayoutStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            PayoutStatus::Pending => "pending",
            PayoutStatus::Paid => "paid",
            PayoutStatus::Cancelled => "cancelled",
        }
    }
}

/// Money the business owes a member: `points × point_value_minor` of the program's bill currency.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CashbackPayout {
    pub id: PayoutId,
    pub member_id: MemberId,
    pub redemption_id: RedemptionId,
    pub points: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PayoutStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub paid_at: Option<Timestamp>,
}

/// Why a reward command was refused. Each has a stable `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewardError {
    #[error("reward {reward_id} is not available: {reason}")]
    NotAvailable { reward_id: RewardId, reason: &'static str },
    #[error("reward {reward_id} is out of stock")]
    OutOfStock { reward_id: RewardId },
    #[error("the member already redeemed reward {reward_id} {count} time(s), the limit {period}")]
    LimitReached { reward_id: RewardId, count: u32, period: &'static str },
    #[error("reward {reward_id} is for members of tier {tiers}")]
    TierRequired { reward_id: RewardId, tiers: String },
    #[error("reward {reward_id} is not offered as {form}; offered: {offered}")]
    FormNotOffered { reward_id: RewardId, form: &'static str, offered: String },
    #[error("redemption {redemption_id} is {status}, not issued")]
    RedemptionNotIssued { redemption_id: RedemptionId, status: &'static str },
    #[error("redemption {redemption_id} is cashback: it is fulfilled by paying payout {payout_id}")]
    FulfilledByPayout { redemption_id: RedemptionId, payout_id: PayoutId },
    #[error("cashback payout {payout_id} is {status}, not pending")]
    PayoutNotPending { payout_id: PayoutId, status: &'static str },
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl RewardError {
    pub fn code(&self) -> &'static str {
        match self {
            RewardError::NotAvailable { .. } => "reward_not_available",
            RewardError::OutOfStock { .. } => "reward_out_of_stock",
            RewardError::LimitReached { .. } => "reward_limit_reached",
            RewardError::TierRequired { .. } => "reward_tier_required",
            RewardError::FormNotOffered { .. } => "reward_form_not_offered",
            RewardError::RedemptionNotIssued { .. } => "redemption_not_issued",
            RewardError::FulfilledByPayout { .. } => "redemption_fulfilled_by_payout",
            RewardError::PayoutNotPending { .. } => "cashback_payout_not_pending",
            RewardError::Domain(error) => error.code(),
        }
    }
}

/// What decides whether a member may redeem a reward now, besides the reward itself.
#[derive(Debug, Clone, Copy)]
pub struct MemberFacts<'a> {
    /// The member's tier at `now` (`MemberState::tier_at`).
    pub tier: Option<&'a str>,
    /// When the member redeemed this reward before, cancelled redemptions left out.
    pub redeemed_at: &'a [Timestamp],
    /// Points the member may spend now.
    pub points_available: i64,
}

/// The start of the calendar period holding `now`, in the program's time zone.
fn period_start(program: &Program, period: LimitPeriod, now: Timestamp) -> Option<Timestamp> {
    let zoned = now.to_zoned(program.tz());
    let date = match period {
        LimitPeriod::Lifetime => return None,
        LimitPeriod::Day => zoned.date(),
        LimitPeriod::Month => zoned.date().first_of_month(),
        LimitPeriod::Year => Date::new(zoned.year(), 1, 1).expect("1 January exists"),
    };
    Some(date.to_zoned(program.tz()).map(|z| z.timestamp()).unwrap_or(Timestamp::MIN))
}

/// Whether the member may redeem `reward` now; the refusal names the first reason, checked in the
/// order a member would want to hear them: availability, stock, tier, limit, points.
pub fn check_redeemable(
    program: &Program,
    reward: &Reward,
    member: &MemberFacts,
    now: Timestamp,
) -> Result<(), RewardError> {
    let spec = &reward.spec;
    let reward_id = reward.id;
    let not_available = |reason| Err(RewardError::NotAvailable { reward_id, reason });
    if !spec.active {
        return not_available("it is not active");
    }
    if spec.available_from.is_some_and(|from| now < from) {
        return not_available("it is not available yet");
    }
    if spec.available_until.is_some_and(|until| now >= until) {
        return not_available("it is no longer available");
    }
    if spec.stock.is_some_and(|stock| stock <= 0) {
        return Err(RewardError::OutOfStock { reward_id });
    }
    if !spec.tiers.is_empty() && !member.tier.is_some_and(|tier| spec.tiers.iter().any(|t| t == tier)) {
        return Err(RewardError::TierRequired { reward_id, tiers: spec.tiers.join(", ") });
    }
    if let Some(limit) = spec.member_limit {
        let since = period_start(program, limit.period, now);
        let used = member.redeemed_at.iter().filter(|at| since.is_none_or(|since| **at >= since)).count();
        if used >= limit.count as usize {
            let period = match limit.period {
                LimitPeriod::Lifetime => "for the reward's lifetime",
                LimitPeriod::Day => "per day",
                LimitPeriod::Month => "per month",
                LimitPeriod::Year => "per year",
            };
            return Err(RewardError::LimitReached { reward_id, count: limit.count, period });
        }
    }
    if spec.price_points > member.points_available {
        return Err(DomainError::InsufficientPoints {
            available: member.points_available,
            requested: spec.price_points,
        }
        .into());
    }
    Ok(())
}

/// A member's request to redeem a reward.
#[derive(Debug, Clone)]
pub struct RedeemReward<'a> {
    pub program_id: ProgramId,
    /// The form chosen; none: the reward's default.
    pub form: Option<RewardForm>,
    /// An unguessable code, used when the form is a discount voucher. The caller draws it: the core
    /// has no randomness.
    pub voucher_code: String,
    pub tier: Option<&'a str>,
    pub redeemed_at: &'a [Timestamp],
}

/// What a redemption produced.
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub redemption: RewardRedemption,
    pub payout: Option<CashbackPayout>,
    pub outcome: Outcome,
}

fn caught_up(ledger: &mut MemberLedger, now: Timestamp, ids: &mut IdAllocator) -> Outcome {
    let mut outcome = Outcome::default();
    for movement in ledger.catch_up(now, ids) {
        outcome.events.push(DomainEvent::of_movement(&movement, None));
        outcome.movements.push(movement);
    }
    outcome
}

/// Redeems `reward` for the member whose ledger is given: checks availability, stock, tier,
/// limit, form and points, then debits the price, takes one unit of stock and produces the
/// redemption (with its voucher, credited points or cashback payout).
pub fn decide_reward_redemption(
    program: &Program,
    reward: &mut Reward,
    ledger: &mut MemberLedger,
    request: RedeemReward,
    now: Timestamp,
    ids: &mut IdAllocator,
    reward_ids: &mut RewardIds,
) -> Result<Redeemed, RewardError> {
    let currency = &program.point_currency;
    let points_available = ledger.balance(currency, now).available;
    let facts = MemberFacts { tier: request.tier, redeemed_at: request.redeemed_at, points_available };
    let offered = reward.spec.offered_forms();
    let form = request.form.unwrap_or(offered[0]);
    if !offered.contains(&form) {
        let offered = offered.iter().map(RewardForm::as_str).collect::<Vec<_>>().join(", ");
        return Err(RewardError::FormNotOffered { reward_id: reward.id, form: form.as_str(), offered });
    }
    check_redeemable(program, reward, &facts, now)?;
    let price = reward.spec.price_points;
    let cashback_minor = match form {
        RewardForm::Cashback => Some(price.checked_mul(program.point_value_minor).ok_or_else(|| {
            DomainError::invalid("price_points", "the cashback value of the price does not fit in minor units")
        })?),
        _ => None,
    };
    if form == RewardForm::Discount && request.voucher_code.trim().is_empty() {
        return Err(DomainError::invalid("voucher_code", "a voucher needs a code").into());
    }

    // Accepted: from here on nothing can refuse.
    let mut outcome = caught_up(ledger, now, ids);
    let redemption_id = reward_ids.redemption();
    let mut redemption = RewardRedemption {
        id: redemption_id,
        reward_id: reward.id,
        member_id: ledger.member_id,
        program_id: request.program_id,
        kind: reward.spec.kind,
        reward_name: reward.spec.name.clone(),
        form,
        points: price,
        status: RedemptionStatus::Issued,
        voucher: None,
        points_credited: 0,
        cashback_payout_id: None,
        redeemed_at: now,
        fulfilled_at: None,
        cancelled_at: None,
    };
    let reason = Some(format!("reward redemption {redemption_id}: {}", reward.spec.name));
    let debit = ledger
        .debit_available(ids, MovementKind::Redeem, redemption.account(), currency, price, now, None, reason.clone())
        .expect("balance was checked above");
    outcome.events.push(DomainEvent::of_movement(&debit, None));
    outcome.movements.push(debit);
    let mut payout = None;
    match form {
        RewardForm::Item => {}
        RewardForm::Discount => {
            let terms = reward.spec.voucher.expect("validated: a discount form has voucher terms");
            let expires_at = terms
                .valid_days
                .and_then(|days| now.to_zoned(program.tz()).checked_add(days.days()).ok().map(|z| z.timestamp()));
            redemption.voucher = Some(Voucher {
                code: request.voucher_code,
                percent: terms.percent,
                amount_minor: terms.amount_minor,
                currency: program.bill_currency.to_string(),
                expires_at,
            });
        }
        RewardForm::Points => {
            let points = reward.spec.points_credit.expect("validated: a points form has points_credit");
            let credit = Credit {
                currency: currency.clone(),
                amount: points,
                available_from: now,
                expires_at: program.expires_at(now),
                purchase_id: None,
            };
            let expires_at = credit.expires_at;
            let movement = ledger.credit(ids, MovementKind::Earn, Account::Issued, credit, now, reason);
            outcome.events.push(DomainEvent::of_movement(&movement, Some(expires_at)));
            outcome.movements.push(movement);
            redemption.points_credited = points;
            // Nothing is left to hand over: the points are the reward.
            redemption.status = RedemptionStatus::Fulfilled;
            redemption.fulfilled_at = Some(now);
        }
        RewardForm::Cashback => {
            let amount_minor = cashback_minor.expect("computed above for cashback");
            let created = CashbackPayout {
                id: reward_ids.payout(),
                member_id: ledger.member_id,
                redemption_id,
                points: price,
                amount_minor,
                currency: program.bill_currency.to_string(),
                status: PayoutStatus::Pending,
                created_at: now,
                paid_at: None,
            };
            redemption.cashback_payout_id = Some(created.id);
            payout = Some(created);
        }
    }
    if let Some(stock) = &mut reward.spec.stock {
        assert!(*stock > 0, "stock was checked above");
        *stock -= 1;
    }
    reward.redeemed_count += 1;
    outcome.events.push(DomainEvent::RewardRedeemed {
        member_id: redemption.member_id,
        redemption_id,
        reward_id: reward.id,
        form,
        points: price,
    });
    if let Some(payout) = &payout {
        outcome.events.push(DomainEvent::CashbackPayoutCreated {
            member_id: payout.member_id,
            payout_id: payout.id,
            redemption_id,
            amount_minor: payout.amount_minor,
            currency: payout.currency.clone(),
        });
    }
    Ok(Redeemed { redemption, payout, outcome })
}

fn require_issued(redemption: &RewardRedemption) -> Result<(), RewardError> {
    if redemption.status != RedemptionStatus::Issued {
        return Err(RewardError::RedemptionNotIssued {
            redemption_id: redemption.id,
            status: redemption.status.as_str(),
        });
    }
    Ok(())
}

/// Marks an issued redemption fulfilled: the item was handed over or the voucher used. A cashback
/// redemption is fulfilled by paying its payout instead.
pub fn decide_reward_fulfil(redemption: &mut RewardRedemption, now: Timestamp) -> Result<DomainEvent, RewardError> {
    require_issued(redemption)?;
    if let Some(payout_id) = redemption.cashback_payout_id {
        return Err(RewardError::FulfilledByPayout { redemption_id: redemption.id, payout_id });
    }
    redemption.status = RedemptionStatus::Fulfilled;
    redemption.fulfilled_at = Some(now);
    Ok(DomainEvent::RewardFulfilled { member_id: redemption.member_id, redemption_id: redemption.id })
}

/// Cancels an issued redemption: the price goes back to the member as a fresh available lot from
/// the account it went to, the unit goes back to stock, and a pending payout is called off.
/// `reward` is none when the reward was since removed from the store (never today).
pub fn decide_reward_cancel(
    program: &Program,
    reward: Option<&mut Reward>,
    redemption: &mut RewardRedemption,
    payout: Option<&mut CashbackPayout>,
    ledger: &mut MemberLedger,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, RewardError> {
    require_issued(redemption)?;
    assert_eq!(redemption.cashback_payout_id.is_some(), payout.is_some(), "a cashback redemption has its payout");
    if let Some(payout) = &payout {
        if payout.status != PayoutStatus::Pending {
            return Err(RewardError::PayoutNotPending { payout_id: payout.id, status: payout.status.as_str() });
        }
    }

    let mut outcome = caught_up(ledger, now, ids);
    let credit = Credit {
        currency: program.point_currency.clone(),
        amount: redemption.points,
        available_from: now,
        expires_at: program.expires_at(now),
        purchase_id: None,
    };
    let expires_at = credit.expires_at;
    let reason = Some(format!("reward redemption {} cancelled", redemption.id));
    let movement = ledger.credit(ids, MovementKind::Restore, redemption.account(), credit, now, reason);
    outcome.events.push(DomainEvent::of_movement(&movement, Some(expires_at)));
    outcome.movements.push(movement);
    if let Some(reward) = reward {
        if let Some(stock) = &mut reward.spec.stock {
            *stock += 1;
        }
        reward.redeemed_count -= 1;
        assert!(reward.redeemed_count >= 0, "reward {} redeemed count went negative", reward.id);
    }
    if let Some(payout) = payout {
        payout.status = PayoutStatus::Cancelled;
    }
    redemption.status = RedemptionStatus::Cancelled;
    redemption.cancelled_at = Some(now);
    outcome.events.push(DomainEvent::RewardCancelled {
        member_id: redemption.member_id,
        redemption_id: redemption.id,
        points_restored: redemption.points,
    });
    Ok(outcome)
}

/// Records that the business paid a pending payout; its redemption is then fulfilled.
pub fn decide_payout_paid(
    payout: &mut CashbackPayout,
    redemption: &mut RewardRedemption,
    now: Timestamp,
) -> Result<DomainEvent, RewardError> {
    assert_eq!(redemption.cashback_payout_id, Some(payout.id), "the payout belongs to the redemption");
    if payout.status != PayoutStatus::Pending {
        return Err(RewardError::PayoutNotPending { payout_id: payout.id, status: payout.status.as_str() });
    }
    require_issued(redemption)?;
    payout.status = PayoutStatus::Paid;
    payout.paid_at = Some(now);
    redemption.status = RedemptionStatus::Fulfilled;
    redemption.fulfilled_at = Some(now);
    Ok(DomainEvent::RewardFulfilled { member_id: redemption.member_id, redemption_id: redemption.id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Credit;
    use crate::{Balance, ProgramId};

    const NOW: &str = "2026-03-15T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn spec(kind: RewardKind, price_points: i64) -> RewardSpec {
        RewardSpec {
            kind,
            name: "Reward".into(),
            description: None,
            price_points,
            stock: None,
            member_limit: None,
            available_from: None,
            available_until: None,
            tiers: Vec::new(),
            active: true,
            forms: Vec::new(),
            voucher: None,
            points_credit: None,
        }
    }

    fn reward(spec: RewardSpec) -> Reward {
        spec.validate().expect("the test's reward is valid");
        Reward { id: RewardId(1), spec, redeemed_count: 0, created_at: now(), updated_at: now() }
    }

    /// A member holding `points` available points.
    fn ledger_with(points: i64, ids: &mut IdAllocator) -> MemberLedger {
        let mut ledger = MemberLedger::new(MemberId(7), Vec::new());
        let program = Program::example();
        let credit = Credit {
            currency: program.point_currency.clone(),
            amount: points,
            available_from: now(),
            expires_at: program.expires_at(now()),
            purchase_id: None,
        };
        ledger.credit(ids, MovementKind::Adjust, Account::Adjustments, credit, now(), None);
        ledger
    }

    fn request(form: Option<RewardForm>) -> RedeemReward<'static> {
        RedeemReward { program_id: ProgramId(1), form, voucher_code: "CODE".into(), tier: None, redeemed_at: &[] }
    }

    /// Redeems and returns the refusal's code, or "ok" with what was consumed.
    fn check(reward_spec: RewardSpec, points: i64, tier: Option<&str>, uses: &[&str]) -> String {
        let program = Program::example();
        let mut ids = IdAllocator::default();
        let mut ledger = ledger_with(points, &mut ids);
        let mut reward = reward(reward_spec);
        let before = (reward.clone(), ledger.clone(), ids.clone());
        let uses: Vec<Timestamp> = uses.iter().map(|u| u.parse().unwrap()).collect();
        let request = RedeemReward { tier, redeemed_at: &uses, ..request(None) };
        let mut reward_ids = RewardIds::default();
        match decide_reward_redemption(&program, &mut reward, &mut ledger, request, now(), &mut ids, &mut reward_ids) {
            Ok(redeemed) => {
                let balance = ledger.balance(&program.point_currency, now()).available;
                format!("ok: balance {balance}, stock {:?}, status {:?}", reward.spec.stock, redeemed.redemption.status)
            }
            Err(error) => {
                assert_eq!((&reward, &ledger), (&before.0, &before.1), "a refusal changes nothing");
                assert_eq!(ids.next_movement, before.2.next_movement);
                assert_eq!(reward_ids, RewardIds::default());
                error.code().to_string()
            }
        }
    }

    type Case = (RewardSpec, i64, Option<&'static str>, Vec<&'static str>, &'static str);

    #[test]
    fn each_condition_refuses_with_its_own_code_and_consumes_nothing() {
        let gift = || RewardSpec { stock: Some(2), ..spec(RewardKind::Gift, 100) };
        let limited = |count, period| RewardSpec { member_limit: Some(MemberLimit { count, period }), ..gift() };
        // (reward, points available, tier, earlier redemptions, answer)
        let cases: Vec<Case> = vec![
            (gift(), 100, None, vec![], "ok: balance 0, stock Some(1), status Issued"),
            (gift(), 99, None, vec![], "insufficient_points"),
            (RewardSpec { active: false, ..gift() }, 500, None, vec![], "reward_not_available"),
            (
                RewardSpec { available_from: Some("2026-04-01T00:00:00Z".parse().unwrap()), ..gift() },
                500,
                None,
                vec![],
                "reward_not_available",
            ),
            (
                RewardSpec { available_until: Some(NOW.parse().unwrap()), ..gift() },
                500,
                None,
                vec![],
                "reward_not_available",
            ),
            (RewardSpec { stock: Some(0), ..gift() }, 500, None, vec![], "reward_out_of_stock"),
            (RewardSpec { tiers: vec!["gold".into()], ..gift() }, 500, None, vec![], "reward_tier_required"),
            (RewardSpec { tiers: vec!["gold".into()], ..gift() }, 500, Some("silver"), vec![], "reward_tier_required"),
            (
                RewardSpec { tiers: vec!["gold".into()], ..gift() },
                500,
                Some("gold"),
                vec![],
                "ok: balance 400, stock Some(1), status Issued",
            ),
            (limited(1, LimitPeriod::Lifetime), 500, None, vec!["2020-01-01T00:00:00Z"], "reward_limit_reached"),
            (
                limited(2, LimitPeriod::Lifetime),
                500,
                None,
                vec!["2020-01-01T00:00:00Z"],
                "ok: balance 400, stock Some(1), status Issued",
            ),
            (limited(1, LimitPeriod::Month), 500, None, vec!["2026-03-01T00:00:00Z"], "reward_limit_reached"),
            (
                limited(1, LimitPeriod::Month),
                500,
                None,
                vec!["2026-02-27T00:00:00Z"],
                "ok: balance 400, stock Some(1), status Issued",
            ),
            (limited(1, LimitPeriod::Day), 500, None, vec!["2026-03-14T22:00:00Z"], "reward_limit_reached"),
            (
                limited(1, LimitPeriod::Year),
                500,
                None,
                vec!["2025-12-31T12:00:00Z"],
                "ok: balance 400, stock Some(1), status Issued",
            ),
        ];
        for (spec, points, tier, uses, expected) in cases {
            let got = check(spec.clone(), points, tier, &uses);
            assert_eq!(got, expected, "{spec:?} with {points} points, tier {tier:?}, uses {uses:?}");
        }
    }

    #[test]
    fn the_day_of_a_daily_limit_is_the_programs_day() {
        // 2026-03-14T22:00Z is already the 15th in Moscow (UTC+3), the same day as NOW.
        let gift = RewardSpec {
            member_limit: Some(MemberLimit { count: 1, period: LimitPeriod::Day }),
            ..spec(RewardKind::Gift, 1)
        };
        assert_eq!(check(gift.clone(), 10, None, &["2026-03-14T22:00:00Z"]), "reward_limit_reached");
        assert_eq!(check(gift, 10, None, &["2026-03-14T20:00:00Z"]), "ok: balance 9, stock None, status Issued");
    }

    #[test]
    fn each_form_produces_its_record_and_balanced_movements() {
        let program = Program::example();
        let offering = RewardSpec {
            forms: vec![RewardForm::Item, RewardForm::Points, RewardForm::Discount, RewardForm::Cashback],
            points_credit: Some(30),
            voucher: Some(VoucherTerms { percent: Some(10), amount_minor: None, valid_days: Some(7) }),
            ..spec(RewardKind::Gift, 50)
        };
        for form in [RewardForm::Item, RewardForm::Points, RewardForm::Discount, RewardForm::Cashback] {
            let mut ids = IdAllocator::default();
            let mut ledger = ledger_with(100, &mut ids);
            let mut reward = reward(offering.clone());
            let mut reward_ids = RewardIds::default();
            let redeemed = decide_reward_redemption(
                &program,
                &mut reward,
                &mut ledger,
                request(Some(form)),
                now(),
                &mut ids,
                &mut reward_ids,
            )
            .unwrap();
            for movement in &redeemed.outcome.movements {
                movement.assert_balanced();
            }
            let redemption = &redeemed.redemption;
            let available = ledger.balance(&program.point_currency, now()).available;
            assert_eq!(redemption.form, form);
            assert_eq!(reward.redeemed_count, 1);
            let debit = &redeemed.outcome.movements[0];
            assert_eq!(debit.member_delta(), -50);
            match form {
                RewardForm::Item => {
                    assert_eq!((available, redemption.status), (50, RedemptionStatus::Issued));
                    assert_eq!(debit.postings.last().unwrap().account, Account::Rewards);
                }
                RewardForm::Points => {
                    assert_eq!((available, redemption.status), (80, RedemptionStatus::Fulfilled));
                    assert_eq!(redemption.points_credited, 30);
                }
                RewardForm::Discount => {
                    let voucher = redemption.voucher.as_ref().unwrap();
                    assert_eq!(
                        (voucher.code.as_str(), voucher.percent, voucher.currency.as_str()),
                        ("CODE", Some(10), "RUB")
                    );
                    assert_eq!(voucher.expires_at, Some("2026-03-22T12:00:00Z".parse().unwrap()));
                }
                RewardForm::Cashback => {
                    let payout = redeemed.payout.as_ref().unwrap();
                    assert_eq!((payout.amount_minor, payout.status), (50 * 100, PayoutStatus::Pending));
                    assert_eq!(redemption.cashback_payout_id, Some(payout.id));
                    assert_eq!(debit.postings.last().unwrap().account, Account::Cashback);
                    let kinds: Vec<_> = redeemed.outcome.events.iter().map(DomainEvent::kind).collect();
                    assert!(kinds.contains(&"cashback_payout_created"), "{kinds:?}");
                }
            }
            assert!(redeemed.outcome.events.iter().any(|e| e.kind() == "reward_redeemed"));
        }
    }

    #[test]
    fn a_form_not_offered_is_refused() {
        let program = Program::example();
        let mut ids = IdAllocator::default();
        let mut ledger = ledger_with(100, &mut ids);
        let mut reward = reward(spec(RewardKind::Goods, 10));
        let refused = decide_reward_redemption(
            &program,
            &mut reward,
            &mut ledger,
            request(Some(RewardForm::Cashback)),
            now(),
            &mut ids,
            &mut RewardIds::default(),
        )
        .unwrap_err();
        assert_eq!(refused.code(), "reward_form_not_offered");
        assert_eq!(ledger.balance(&program.point_currency, now()), Balance { available: 100, pending: 0 });
    }

    #[test]
    fn cancelling_restores_points_from_the_same_account_and_gives_the_unit_back() {
        let program = Program::example();
        let mut ids = IdAllocator::default();
        let mut ledger = ledger_with(100, &mut ids);
        let mut reward = reward(RewardSpec { stock: Some(1), ..spec(RewardKind::Cashback, 60) });
        let mut reward_ids = RewardIds::default();
        let redeemed = decide_reward_redemption(
            &program,
            &mut reward,
            &mut ledger,
            request(None),
            now(),
            &mut ids,
            &mut reward_ids,
        )
        .unwrap();
        let (mut redemption, mut payout) = (redeemed.redemption, redeemed.payout.unwrap());
        assert_eq!(reward.spec.stock, Some(0));
        let outcome = decide_reward_cancel(
            &program,
            Some(&mut reward),
            &mut redemption,
            Some(&mut payout),
            &mut ledger,
            now(),
            &mut ids,
        )
        .unwrap();
        let restore = outcome.movements.last().unwrap();
        restore.assert_balanced();
        assert_eq!(restore.postings[0], crate::Posting { account: Account::Cashback, amount: -60, lot_id: None });
        assert_eq!(ledger.balance(&program.point_currency, now()).available, 100);
        assert_eq!((reward.spec.stock, reward.redeemed_count), (Some(1), 0));
        assert_eq!((redemption.status, payout.status), (RedemptionStatus::Cancelled, PayoutStatus::Cancelled));
        let again = decide_reward_cancel(
            &program,
            Some(&mut reward),
            &mut redemption,
            Some(&mut payout),
            &mut ledger,
            now(),
            &mut ids,
        );
        assert_eq!(again.unwrap_err().code(), "redemption_not_issued");
        assert_eq!(
            decide_payout_paid(&mut payout, &mut redemption, now()).unwrap_err().code(),
            "cashback_payout_not_pending"
        );
    }

    #[test]
    fn a_paid_payout_fulfils_its_redemption_which_then_cannot_be_cancelled() {
        let program = Program::example();
        let mut ids = IdAllocator::default();
        let mut ledger = ledger_with(100, &mut ids);
        let mut reward = reward(spec(RewardKind::Cashback, 60));
        let redeemed = decide_reward_redemption(
            &program,
            &mut reward,
            &mut ledger,
            request(None),
            now(),
            &mut ids,
            &mut RewardIds::default(),
        )
        .unwrap();
        let (mut redemption, mut payout) = (redeemed.redemption, redeemed.payout.unwrap());
        assert_eq!(
            decide_reward_fulfil(&mut redemption.clone(), now()).unwrap_err().code(),
            "redemption_fulfilled_by_payout"
        );
        let event = decide_payout_paid(&mut payout, &mut redemption, now()).unwrap();
        assert_eq!(event.kind(), "reward_fulfilled");
        assert_eq!((payout.status, redemption.status), (PayoutStatus::Paid, RedemptionStatus::Fulfilled));
        let cancel = decide_reward_cancel(
            &program,
            Some(&mut reward),
            &mut redemption,
            Some(&mut payout),
            &mut ledger,
            now(),
            &mut ids,
        );
        assert_eq!(cancel.unwrap_err().code(), "redemption_not_issued");
        assert_eq!(ledger.balance(&program.point_currency, now()).available, 40);
    }

    #[test]
    fn reward_events_are_named_as_they_serialize() {
        let member_id = MemberId(1);
        let events = [
            DomainEvent::RewardRedeemed {
                member_id,
                redemption_id: RedemptionId(2),
                reward_id: RewardId(3),
                form: RewardForm::Item,
                points: 10,
            },
            DomainEvent::RewardFulfilled { member_id, redemption_id: RedemptionId(2) },
            DomainEvent::RewardCancelled { member_id, redemption_id: RedemptionId(2), points_restored: 10 },
            DomainEvent::CashbackPayoutCreated {
                member_id,
                payout_id: PayoutId(4),
                redemption_id: RedemptionId(2),
                amount_minor: 1_000,
                currency: "RUB".into(),
            },
        ];
        for event in events {
            assert_eq!(serde_json::to_value(&event).unwrap()["type"], event.kind());
        }
    }
}
