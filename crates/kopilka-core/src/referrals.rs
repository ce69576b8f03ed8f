//! The referral program: a member brings a friend with their code, the friend gets a welcome
//! bonus at sign-up, and the referrer is rewarded once the friend's first qualifying purchase has
//! outlived its return window.
//!
//! The decisions here are pure: what a referral may be (`check_referral`, which names the reason
//! a referral is refused so support can explain it) and what happens to it when its purchase is
//! due (`judge_purchase`). Codes are drawn by the server, since the core has no randomness.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::purchase::PurchaseRecord;
use crate::{MemberId, Program, PurchaseId, ValidationIssue};

/// Bounds on a referral program's numbers.
pub const REFERRAL_POINTS_MAX: i64 = 1_000_000;
pub const REFERRAL_LIMIT_MAX: u32 = 1_000_000;
pub const REFERRAL_PERIOD_DAYS_MAX: i64 = 3660;
pub const LINK_BASE_LEN_MAX: usize = 200;

/// A program's referral terms (`program.referrals`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralProgram {
    /// Points the new member gets at sign-up.
    pub welcome_points: i64,
    /// Points the referrer gets once the new member's first qualifying purchase is past returns.
    pub referrer_points: i64,
    /// The smallest purchase total, in minor units of the bill currency, that qualifies.
    #[serde(default)]
    pub min_purchase_minor: i64,
    /// Links are `{link_base}/r/{code}`.
    pub link_base: String,
    /// The most referrals a referrer may have accepted, ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_total: Option<u32>,
    /// The most referrals a referrer may have accepted within any `period_days` days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_per_period: Option<PeriodLimit>,
    /// Refuse a referral whose sign-up came from a device the referrer signed up from.
    #[serde(default)]
    pub check_device: bool,
}

/// At most `count` within a rolling window of `period_days`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodLimit {
    pub count: u32,
    pub period_days: i64,
}

impl ReferralProgram {
    /// Problems with these terms, each with its path under `referrals`.
    pub fn issues(&self) -> Vec<ValidationIssue> {
        let mut issues = Vec::new();
        let mut issue =
            |path: &str, message: String| issues.push(ValidationIssue { path: format!("referrals.{path}"), message });
        for (path, points) in [("welcome_points", self.welcome_points), ("referrer_points", self.referrer_points)] {
            if !(0..=REFERRAL_POINTS_MAX).contains(&points) {
                issue(path, format!("must be between 0 and {REFERRAL_POINTS_MAX}"));
            }
        }
        if self.min_purchase_minor < 0 {
            issue("min_purchase_minor", "must not be negative".into());
        }
        let base = self.link_base.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.len() > LINK_BASE_LEN_MAX {
            issue("link_base", format!("must be an http(s) address of at most {LINK_BASE_LEN_MAX} characters"));
        }
        if self.limit_total.is_some_and(|n| n > REFERRAL_LIMIT_MAX) {
            issue("limit_total", format!("must be at most {REFERRAL_LIMIT_MAX}"));
        }
        if let Some(limit) = self.limit_per_period {
            if limit.count > REFERRAL_LIMIT_MAX {
                issue("limit_per_period.count", format!("must be at most {REFERRAL_LIMIT_MAX}"));
            }
            if !(1..=REFERRAL_PERIOD_DAYS_MAX).contains(&limit.period_days) {
                issue("limit_per_period.period_days", format!("must be between 1 and {REFERRAL_PERIOD_DAYS_MAX}"));
            }
        }
        issues
    }

    /// The member's referral link.
    pub fn link(&self, code: &str) -> String {
        format!("{}/r/{code}", self.link_base.trim_end_matches('/'))
    }
}

/// Why a referral was not accepted. The new member is enrolled either way, without the bonus.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    SelfReferralSharedPhone,
    SelfReferralSharedEmail,
    SelfReferralSharedCard,
    SelfReferralSharedDevice,
    ReferrerLimitReached,
    ReferrerLimitPerPeriodReached,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::SelfReferralSharedPhone => "self_referral_shared_phone",
            RejectReason::SelfReferralSharedEmail => "self_referral_shared_email",
            RejectReason::SelfReferralSharedCard => "self_referral_shared_card",
            RejectReason::SelfReferralSharedDevice => "self_referral_shared_device",
            RejectReason::ReferrerLimitReached => "referrer_limit_reached",
            RejectReason::ReferrerLimitPerPeriodReached => "referrer_limit_per_period_reached",
        }
    }
}

/// Where a referral is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum ReferralStatus {
    /// The new member got the welcome bonus; the referrer waits for a qualifying purchase.
    Accepted,
    /// Refused at sign-up; nobody was rewarded.
    Rejected(RejectReason),
    /// The referrer got the reward.
    Rewarded,
    /// The qualifying purchase was returned inside its window: no reward, ever.
    Voided,
}

/// One member brought by another. A member is referred at most once, so the referred member's
/// id is the referral's key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub referrer_id: MemberId,
    pub referred_id: MemberId,
    #[serde(flatten)]
    pub status: ReferralStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// The purchase that decided the reward, once one did.
    pub purchase_id: Option<PurchaseId>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub decided_at: Option<Timestamp>,
}

/// The identifiers and devices of one side of a referral, normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Party<'a> {
    pub phone: Option<&'a str>,
    pub email: Option<&'a str>,
    pub card: Option<&'a str>,
    pub devices: Vec<&'a str>,
}

/// Accepts a referral, or names why not: anything the two share that one person would, then the
/// referrer's limits. `accepted_at` are the times of the referrer's earlier accepted (or
/// rewarded) referrals.
pub fn check_referral(
    terms: &ReferralProgram,
    referrer: &Party,
    referred: &Party,
    accepted_at: &[Timestamp],
    now: Timestamp,
) -> Result<(), RejectReason> {
    // Identifiers are unique per tenant, so an exact match cannot happen: what gives a second
    // account away is the same identifier written another way.
    let shared = |a: Option<&str>, b: Option<&str>, canonical: fn(&str) -> String| match (a, b) {
        (Some(a), Some(b)) => !canonical(a).is_empty() && canonical(a) == canonical(b),
        _ => false,
    };
    if shared(referrer.phone, referred.phone, canonical_phone) {
        return Err(RejectReason::SelfReferralSharedPhone);
    }
    if shared(referrer.email, referred.email, canonical_email) {
        return Err(RejectReason::SelfReferralSharedEmail);
    }
    if shared(referrer.card, referred.card, canonical_card) {
        return Err(RejectReason::SelfReferralSharedCard);
    }
    if terms.check_device && referred.devices.iter().any(|d| referrer.devices.contains(d)) {
        return Err(RejectReason::SelfReferralSharedDevice);
    }
    if terms.limit_total.is_some_and(|limit| accepted_at.len() as u64 >= u64::from(limit)) {
        return Err(RejectReason::ReferrerLimitReached);
    }
    if let Some(limit) = terms.limit_per_period {
        let since = now - SignedDuration::from_hours(24 * limit.period_days);
        let recent = accepted_at.iter().filter(|at| **at > since).count() as u64;
        if recent >= u64::from(limit.count) {
            return Err(RejectReason::ReferrerLimitPerPeriodReached);
        }
    }
    Ok(())
}

/// A phone's national number: its last ten digits, so `+7 912…` and `8 912…` are one phone.
pub fn canonical_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    digits[digits.len().saturating_sub(10)..].iter().collect()
}

/// An address without case, `+tags` and dots in the local part: the forms one mailbox takes.
pub fn canonical_email(email: &str) -> String {
    let email = email.trim().to_lowercase();
    let Some((local, domain)) = email.rsplit_once('@') else { return email };
    let local = local.split('+').next().unwrap_or_default().replace('.', "");
    format!("{local}@{domain}")
}

/// A card number's digits without leading zeros.
pub fn canonical_card(card: &str) -> String {
    let digits: String = card.chars().filter(char::is_ascii_alphanumeric).collect();
    digits.trim_start_matches('0').to_ascii_uppercase()
}

/// What an accepted referral's first qualifying purchase decides, once looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still inside its return window: ask again later.
    Wait,
    /// Past the window and kept: reward the referrer.
    Reward,
    /// Returned below the minimum before the window closed: the referral is void.
    Void,
}

/// Whether `purchase` qualifies at all: made by the referred member, large enough.
pub fn qualifies(terms: &ReferralProgram, purchase: &PurchaseRecord) -> bool {
    purchase.total_minor >= terms.min_purchase_minor.max(1)
}

/// Judges a qualifying purchase at `now`. Only returns made before the return window closed
/// count: one that leaves less than the minimum voids the referral, even if made on the window's
/// last day; one made after the window closed does not, however late the job looks. So the
/// verdict depends on when things happened, never on when the job runs.
pub fn judge_purchase(
    terms: &ReferralProgram,
    program: &Program,
    purchase: &PurchaseRecord,
    now: Timestamp,
) -> Verdict {
    assert!(qualifies(terms, purchase), "only a qualifying purchase is judged");
    let window_end = program.available_from(purchase.occurred_at);
    let kept_minor = purchase.total_minor - purchase.returned_before(window_end);
    if kept_minor < terms.min_purchase_minor.max(1) {
        return Verdict::Void;
    }
    if now < window_end {
        return Verdict::Wait;
    }
    Verdict::Reward
}

/// Credits a referral bonus (the welcome bonus or the referrer's reward) from the program's
/// `issued` account. It is available at once: there is no purchase to return.
pub fn decide_referral_credit(
    program: &Program,
    ledger: &mut crate::MemberLedger,
    points: i64,
    reason: &str,
    now: Timestamp,
    ids: &mut crate::IdAllocator,
) -> crate::purchase::Outcome {
    assert!(points > 0, "only positive bonuses are credited");
    let mut outcome = crate::purchase::Outcome::default();
    for movement in ledger.catch_up(now, ids) {
        outcome.events.push(crate::DomainEvent::of_movement(&movement, None));
        outcome.movements.push(movement);
    }
    let expires_at = program.expires_at(now);
    let credit = crate::ledger::Credit {
        currency: program.point_currency.clone(),
        amount: points,
        available_from: now,
        expires_at,
        purchase_id: None,
    };
    let movement =
        ledger.credit(ids, crate::MovementKind::Earn, crate::Account::Issued, credit, now, Some(reason.to_string()));
    movement.assert_balanced();
    outcome.events.push(crate::DomainEvent::of_movement(&movement, Some(expires_at)));
    outcome.movements.push(movement);
    outcome
}
