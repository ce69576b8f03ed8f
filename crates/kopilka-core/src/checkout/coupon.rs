//! Coupon campaigns and their codes: what a coupon gives, when and to whom, how often it may be
//! used, and the check a code goes through before a checkout may hold it.
//!
//! A code is held (reserved) by a quote and used by the confirmation; a hold lapses by itself at
//! its `until`, so an abandoned checkout never keeps a code. A code's uses plus its live holds
//! never exceed `uses_per_code`: that is what makes a single-use code win exactly one checkout.

use jiff::Timestamp;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::rules::Condition;
use crate::{MemberId, ValidationIssue};

/// The most codes one request may generate or import.
pub const CODES_PER_REQUEST_MAX: usize = 1_000_000;
/// Codes are 4 to 32 characters, prefix included.
pub const CODE_LEN_MIN: usize = 4;
pub const CODE_LEN_MAX: usize = 32;

/// A coupon campaign, as an admin writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponCampaign {
    pub name: String,
    pub effect: CouponEffect,
    /// Which lines the coupon applies to and which members may use it (category, tier, segment…).
    #[serde(default = "always")]
    pub condition: Condition,
    /// The basket (after the program's discounts) must come to at least this.
    #[serde(default)]
    pub min_basket_minor: i64,
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
    /// How many purchases one code may be used on: 1 is a single-use code.
    #[serde(default = "one")]
    pub uses_per_code: u32,
    /// How many codes of the campaign one member may use.
    #[serde(default)]
    pub uses_per_member: Option<u32>,
    /// How many uses the whole campaign allows.
    #[serde(default)]
    pub uses_total: Option<u64>,
    #[serde(default)]
    pub code_format: CodeFormat,
}

fn always() -> Condition {
    Condition::Always
}

fn one() -> u32 {
    1
}

/// What a coupon gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CouponEffect {
    /// This percentage off the lines the coupon applies to.
    Percent(i64),
    /// This amount off, shared across the lines the coupon applies to, at most their total.
    AmountMinor(i64),
    /// One unit of this SKU free; the basket must hold it.
    FreeItem { sku: String },
    /// The lines the coupon applies to earn this percentage of the base rate (200: double points).
    PointsMultiplierPercent(i64),
}

/// How generated codes look. The default alphabet leaves out 0/O and 1/I/L, which people misread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeFormat {
    pub alphabet: String,
    pub length: usize,
    pub prefix: String,
}

impl Default for CodeFormat {
    fn default() -> CodeFormat {
        CodeFormat { alphabet: "ABCDEFGHJKMNPQRSTUVWXYZ23456789".into(), length: 10, prefix: String::new() }
    }
}

impl CodeFormat {
    /// How many distinct codes the format allows, saturating.
    pub fn space(&self) -> u128 {
        (self.alphabet.chars().count() as u128).saturating_pow(self.length as u32)
    }

    /// `count` random codes. `rng` must be a cryptographic generator for the codes to be
    /// unguessable; duplicates are possible in principle and the store drops them.
    pub fn generate(&self, count: usize, rng: &mut impl Rng) -> Vec<String> {
        let alphabet: Vec<char> = self.alphabet.chars().collect();
        (0..count)
            .map(|_| {
                let mut code = String::with_capacity(self.prefix.len() + self.length);
                code.push_str(&self.prefix);
                // gen_range is uniform (it rejects biased draws), so every code is equally likely.
                code.extend((0..self.length).map(|_| alphabet[rng.gen_range(0..alphabet.len())]));
                code
            })
            .collect()
    }
}

/// Normalizes a code as typed (case and surrounding spaces do not matter) and checks its shape.
pub fn normalize_code(raw: &str) -> Result<String, String> {
    let code = raw.trim().to_uppercase();
    if !(CODE_LEN_MIN..=CODE_LEN_MAX).contains(&code.chars().count()) {
        return Err(format!("a code is {CODE_LEN_MIN} to {CODE_LEN_MAX} characters"));
    }
    if !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("a code holds letters, digits, - and _ only".into());
    }
    Ok(code)
}

/// A hold on a code by an open checkout, until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub checkout_id: i64,
    pub until: Timestamp,
}

/// One code and what has happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub code: String,
    pub campaign_id: i64,
    /// A personal coupon: only this member may use it.
    pub member_id: Option<MemberId>,
    pub uses: u32,
    pub holds: Vec<Hold>,
}

impl Coupon {
    /// Holds that have not lapsed at `now`.
    pub fn live_holds(&self, now: Timestamp) -> impl Iterator<Item = &Hold> {
        self.holds.iter().filter(move |h| h.until > now)
    }

    pub fn held_by(&self, checkout_id: i64, now: Timestamp) -> bool {
        self.live_holds(now).any(|h| h.checkout_id == checkout_id)
    }

    /// Takes a hold for `checkout_id`, dropping lapsed ones.
    pub fn hold(&mut self, checkout_id: i64, until: Timestamp, now: Timestamp) {
        self.holds.retain(|h| h.until > now && h.checkout_id != checkout_id);
        self.holds.push(Hold { checkout_id, until });
    }

    pub fn release(&mut self, checkout_id: i64, now: Timestamp) {
        self.holds.retain(|h| h.until > now && h.checkout_id != checkout_id);
    }

    /// Turns the hold of `checkout_id` into a use.
    pub fn consume(&mut self, checkout_id: i64, now: Timestamp) {
        self.release(checkout_id, now);
        self.uses += 1;
    }
}

/// A campaign with its counters, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRecord {
    pub id: i64,
    pub campaign: CouponCampaign,
    /// Uses of all its codes so far.
    pub used: u64,
    /// An admin may stop a campaign; its codes are refused from then on.
    pub active: bool,
}

/// Why a code may not be used (stable codes for the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", content = "reason", rename_all = "snake_case")]
pub enum CouponRefusal {
    #[error("no such coupon code")]
    NotFound,
    #[error("{0}")]
    Malformed(String),
    #[error("the campaign is stopped")]
    CampaignStopped,
    #[error("valid from {0}")]
    NotYetValid(Timestamp),
    #[error("expired at {0}")]
    Expired(Timestamp),
    #[error("the code has been used {0} time(s), as often as it may be")]
    UsedUp(u32),
    #[error("the code is held by another checkout until {0}")]
    Held(Timestamp),
    #[error("the campaign's {0} uses are all taken")]
    CampaignExhausted(u64),
    #[error("the member has used {0} coupon(s) of this campaign, as many as allowed")]
    MemberLimitReached(u32),
    #[error("the coupon is personal to another member")]
    NotYours,
    #[error("{0}")]
    ConditionNotMet(String),
    #[error("another coupon of the same campaign is in this checkout")]
    SameCampaign,
    #[error("the reward that issued this voucher was cancelled")]
    VoucherCancelled,
}

impl CouponRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            CouponRefusal::NotFound => "coupon_not_found",
            CouponRefusal::Malformed(_) => "coupon_malformed",
            CouponRefusal::CampaignStopped => "coupon_campaign_stopped",
            CouponRefusal::NotYetValid(_) => "coupon_not_yet_valid",
            CouponRefusal::Expired(_) => "coupon_expired",
            CouponRefusal::UsedUp(_) => "coupon_used_up",
            CouponRefusal::Held(_) => "coupon_held",
            CouponRefusal::CampaignExhausted(_) => "coupon_campaign_exhausted",
            CouponRefusal::MemberLimitReached(_) => "coupon_member_limit_reached",
            CouponRefusal::NotYours => "coupon_not_yours",
            CouponRefusal::ConditionNotMet(_) => "coupon_condition_not_met",
            CouponRefusal::SameCampaign => "coupon_same_campaign",
            CouponRefusal::VoucherCancelled => "voucher_cancelled",
        }
    }
}

/// Whether `coupon` may be held or used by `checkout_id` for `member` at `now`, apart from the
/// basket (the quote checks that). `member_uses` is how many codes of the campaign the member used.
pub fn check_code(
    record: &CampaignRecord,
    coupon: &Coupon,
    member: MemberId,
    member_uses: u32,
    checkout_id: i64,
    now: Timestamp,
) -> Result<(), CouponRefusal> {
    let campaign = &record.campaign;
    if !record.active {
        return Err(CouponRefusal::CampaignStopped);
    }
    if let Some(from) = campaign.valid_from.filter(|from| now < *from) {
        return Err(CouponRefusal::NotYetValid(from));
    }
    if let Some(until) = campaign.valid_until.filter(|until| now >= *until) {
        return Err(CouponRefusal::Expired(until));
    }
    if coupon.member_id.is_some_and(|owner| owner != member) {
        return Err(CouponRefusal::NotYours);
    }
    if coupon.uses >= campaign.uses_per_code {
        return Err(CouponRefusal::UsedUp(coupon.uses));
    }
    let others: Vec<&Hold> = coupon.live_holds(now).filter(|h| h.checkout_id != checkout_id).collect();
    if coupon.uses as usize + others.len() >= campaign.uses_per_code as usize {
        let until = others.iter().map(|h| h.until).min().expect("a hold takes the last use");
        return Err(CouponRefusal::Held(until));
    }
    if let Some(total) = campaign.uses_total.filter(|total| record.used >= *total) {
        return Err(CouponRefusal::CampaignExhausted(total));
    }
    if let Some(limit) = campaign.uses_per_member.filter(|limit| member_uses >= *limit) {
        return Err(CouponRefusal::MemberLimitReached(limit));
    }
    Ok(())
}

impl CouponCampaign {
    /// The categories the campaign's condition names that `program`'s catalogue lacks (none when
    /// the program keeps no catalogue).
    pub fn check_categories(&self, program: &crate::Program) -> Result<(), Vec<ValidationIssue>> {
        let mut issues = Vec::new();
        if !program.categories.is_empty() {
            self.condition.check_categories("condition", &program.categories, &mut issues);
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// Every problem of the campaign, with its path.
    pub fn validate(&self) -> Result<(), Vec<ValidationIssue>> {
        let mut issues = Vec::new();
        let mut issue = |path: &str, message: &str| {
            issues.push(ValidationIssue { path: path.into(), message: message.into() });
        };
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            issue("name", "must be 1 to 200 characters");
        }
        match &self.effect {
            CouponEffect::Percent(p) if !(1..=100).contains(p) => issue("effect.percent", "must be 1 to 100"),
            CouponEffect::AmountMinor(a) if *a <= 0 => issue("effect.amount_minor", "must be positive"),
            CouponEffect::FreeItem { sku } if sku.trim().is_empty() => {
                issue("effect.free_item.sku", "must not be empty")
            }
            CouponEffect::PointsMultiplierPercent(p) if !(101..=10_000).contains(p) => {
                issue("effect.points_multiplier_percent", "must be 101 to 10000 (200 is double points)")
            }
            _ => {}
        }
        if self.min_basket_minor < 0 {
            issue("min_basket_minor", "must not be negative");
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            if from >= until {
                issue("valid_until", "must be after valid_from");
            }
        }
        if self.uses_per_code == 0 {
            issue("uses_per_code", "must be at least 1");
        }
        if self.uses_per_member == Some(0) {
            issue("uses_per_member", "must be at least 1, or left out for no limit");
        }
        if self.uses_total == Some(0) {
            issue("uses_total", "must be at least 1, or left out for no limit");
        }
        let format = &self.code_format;
        let alphabet: Vec<char> = format.alphabet.chars().collect();
        if alphabet.len() < 2 || !alphabet.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
            issue("code_format.alphabet", "must be at least 2 upper-case letters or digits");
        }
        let mut sorted = alphabet.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != alphabet.len() {
            issue("code_format.alphabet", "repeats a character, which makes some codes likelier than others");
        }
        let total = format.prefix.len() + format.length;
        if !(CODE_LEN_MIN..=CODE_LEN_MAX).contains(&total) {
            issue("code_format.length", "prefix and length together must be 4 to 32 characters");
        }
        if normalize_code(&format!("{}AAAA", format.prefix)).is_err() || format.prefix != format.prefix.to_uppercase() {
            issue("code_format.prefix", "upper-case letters, digits, - and _ only");
        }
        // Guessing must stay hopeless: at least 2^40 codes per format (8 characters of 32).
        if format.space() < 1u128 << 40 {
            issue("code_format.length", "too short to be unguessable: the alphabet and length must allow 2^40 codes");
        }
        self.condition.validate("condition", 0, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}
