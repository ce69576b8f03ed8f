//! A loyalty program as data: currencies, the base earn rate and the earn rules on top of it, what a
//! point is worth, how much of a bill points may pay, the return window and the expiry policy.
//!
//! Programs arrive as JSON (API) or TOML/JSON files (`kopilka program validate`); `validate` names
//! every problem by its path so the author can fix all of them in one pass.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::checkout::discount::{Discount, DiscountKind, Restriction};
use crate::rules::EarnRule;
use crate::tiers::TierProgram;
use crate::{Currency, PointCurrency};

/// Points given per amount spent: `points` for every `per_minor` minor units.
/// 1 point per 100 RUB is `{ points: 1, per_minor: 10000 }`; 10 per 100 RUB is `{ points: 10, per_minor: 10000 }`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarnRate {
    pub points: i64,
    pub per_minor: i64,
}

impl EarnRate {
    /// Points earned on `amount_minor`, rounded down (a fraction of a point is never given).
    pub fn points_for(&self, amount_minor: i64) -> i64 {
        assert!(amount_minor >= 0);
        let points = (amount_minor as i128 * self.points as i128) / self.per_minor as i128;
        i64::try_from(points).expect("points fit in i64 for any bill that fits in i64")
    }
}

/// When earned points stop being usable.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExpiryPolicy {
    /// N calendar months after the purchase that earned them, in the program's time zone.
    MonthsAfterEarn { months: i32 },
    /// At the start of 1 January two years after the year they were earned in: points earned in 2026
    /// last until the end of 2027.
    EndOfFollowingYear,
    /// Points never expire.
    Never,
}

/// A loyalty program's terms.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub name: String,
    /// The currency bills are paid in.
    pub bill_currency: Currency,
    /// The currency points are kept in.
    pub point_currency: PointCurrency,
    pub earn_rate: EarnRate,
    /// What one point pays, in minor units of the bill currency (1 point = 1 RUB is 100).
    pub point_value_minor: i64,
    /// The largest share of a bill that points may pay, in percent (0 to 100).
    pub max_redeem_share_percent: i64,
    /// Days before earned points become available: the return window.
    pub pending_days: i32,
    pub expiry: ExpiryPolicy,
    /// Earn on what the member paid in money (bill minus points spent) rather than on the whole bill.
    #[serde(default = "default_true")]
    pub earn_on_paid_amount: bool,
    /// IANA time zone of the program, for calendar rules (expiry at year end, days).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Bonuses on top of the base rate (see `rules`): the base rate applies to every line no
    /// exclusive rule matched, and the rules' points are added to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub earn_rules: Vec<EarnRule>,
    /// Discounts for members (see `checkout::discount`), applied by checkout quotes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub discounts: Vec<Discount>,
    /// Goods only some members may buy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub restricted_goods: Vec<Restriction>,
    /// The most a line's discounts from the program may add up to, in percent.
    #[serde(default = "default_discount_percent_max")]
    pub discount_percent_max: i64,
    /// VIP tiers: levels, what qualifies for them, their benefits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub tiers: Option<TierProgram>,
    /// The categories of goods the program knows. When set, every condition naming a category
    /// must name one of these, so a typo ("tyres" for "tires") is an error, not a rule that
    /// silently never applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// How long a checkout quote holds its coupons before they go back.
    #[serde(default = "default_checkout_hold_minutes")]
    pub checkout_hold_minutes: i64,
    /// The referral program, when the tenant runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrals: Option<crate::referrals::ReferralProgram>,
    /// Coalition exchanges: the programs this program's points convert into, at what rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<crate::partners::ExchangeRate>,
    /// Sign-up, birthday, anniversary and custom event bonuses, and expiry reminders (see `bonuses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub event_bonuses: Option<crate::bonuses::EventBonuses>,
}

fn default_discount_percent_max() -> i64 {
    100
}

fn default_checkout_hold_minutes() -> i64 {
    15
}

fn default_true() -> bool {
    true
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// One problem in a program document, with the path to the offending field.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationIssue {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Program {
    /// Bounds that keep every computation inside i64 and every program sensible.
    pub const PENDING_DAYS_MAX: i32 = 366;
    pub const EXPIRY_MONTHS_MAX: i32 = 120;
    pub const NAME_LEN_MAX: usize = 200;
    pub const CHECKOUT_HOLD_MINUTES_MAX: i64 = 24 * 60;

    /// A sensible default: 1 point per 100 RUB, 1 point = 1 RUB, up to 50% of a bill, 14-day
    /// return window, points last 12 months.
    pub fn example() -> Program {
        Program {
            name: "Main".into(),
            bill_currency: Currency::parse("RUB").expect("RUB is ISO 4217"),
            point_currency: PointCurrency::parse("PTS").expect("PTS is a valid code"),
            earn_rate: EarnRate { points: 1, per_minor: 10_000 },
            point_value_minor: 100,
            max_redeem_share_percent: 50,
            pending_days: 14,
            expiry: ExpiryPolicy::MonthsAfterEarn { months: 12 },
            earn_on_paid_amount: true,
            time_zone: "Europe/Moscow".into(),
            earn_rules: Vec::new(),
            discounts: Vec::new(),
            restricted_goods: Vec::new(),
            discount_percent_max: default_discount_percent_max(),
            categories: Vec::new(),
            tiers: None,
            checkout_hold_minutes: default_checkout_hold_minutes(),
            referrals: None,
            exchanges: Vec::new(),
            event_bonuses: None,
        }
    }

    /// Parses a program document, then validates it; every problem found is returned with its path.
    pub fn from_json(text: &str) -> Result<Program, Vec<ValidationIssue>> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let program: Program = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let path = if path == "." || path == "?" {
                format!("line {} column {}", inner.line(), inner.column())
            } else {
                path
            };
            vec![ValidationIssue { path, message: inner.to_string() }]
        })?;
        program.validate()?;
        Ok(program)
    }

    /// Checks the program's bounds; returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ValidationIssue>> {
        let mut issues = Vec::new();
        let mut issue = |path: &str, message: String| issues.push(ValidationIssue { path: path.into(), message });
        if self.name.trim().is_empty() || self.name.len() > Self::NAME_LEN_MAX {
            issue("name", format!("must be 1 to {} characters", Self::NAME_LEN_MAX));
        }
        if self.earn_rate.points < 0 || self.earn_rate.points > 1_000_000 {
            issue("earn_rate.points", "must be between 0 and 1000000".into());
        }
        if self.earn_rate.per_minor <= 0 {
            issue("earn_rate.per_minor", "must be a positive amount of minor units, e.g. 10000 for 100.00".into());
        }
        if self.point_value_minor <= 0 || self.point_value_minor > 1_000_000 {
            issue("point_value_minor", "must be between 1 and 1000000 minor units".into());
        }
        if !(0..=100).contains(&self.max_redeem_share_percent) {
            issue("max_redeem_share_percent", "must be between 0 and 100".into());
        }
        if !(0..=Self::PENDING_DAYS_MAX).contains(&self.pending_days) {
            issue("pending_days", format!("must be between 0 and {}", Self::PENDING_DAYS_MAX));
        }
        if let ExpiryPolicy::MonthsAfterEarn { months } = self.expiry {
            if !(1..=Self::EXPIRY_MONTHS_MAX).contains(&months) {
                issue("expiry.months", format!("must be between 1 and {}", Self::EXPIRY_MONTHS_MAX));
            }
        }
        if let ExpiryPolicy::MonthsAfterEarn { months } = self.expiry {
            // A month has at least 28 days: points must become available before they can expire.
            if self.pending_days >= months.saturating_mul(28) {
                issue(
                    "pending_days",
                    "must be shorter than the expiry period, or points expire before they can be spent".into(),
                );
            }
        }
        if TimeZone::get(&self.time_zone).is_err() {
            issue(
                "time_zone",
                format!("unknown time zone {:?}: use an IANA name such as Europe/Moscow", self.time_zone),
            );
        }
        crate::rules::validate(&self.earn_rules, &mut issues);
        crate::checkout::discount::validate(
            &self.discounts,
            &self.restricted_goods,
            self.discount_percent_max,
            &mut issues,
        );
        if !self.categories.is_empty() {
            self.check_categories(&mut issues);
        }
        if let Some(tiers) = &self.tiers {
            tiers.validate(&mut issues);
            self.check_tiers(tiers, &mut issues);
        }
        if let Some(event_bonuses) = &self.event_bonuses {
            event_bonuses.validate(&mut issues);
        }
        if !(1..=Self::CHECKOUT_HOLD_MINUTES_MAX).contains(&self.checkout_hold_minutes) {
            issues.push(ValidationIssue {
                path: "checkout_hold_minutes".into(),
                message: format!("must be between 1 and {}", Self::CHECKOUT_HOLD_MINUTES_MAX),
            });
        }
        issues.extend(self.referrals.iter().flat_map(|r| r.issues()));
        for (index, rate) in self.exchanges.iter().enumerate() {
            issues.extend(rate.issues(index));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// Every condition of the program against its category catalogue.
    pub fn check_categories(&self, issues: &mut Vec<ValidationIssue>) {
        for (index, rule) in self.earn_rules.iter().enumerate() {
            rule.condition.check_categories(&format!("earn_rules[{index}].condition"), &self.categories, issues);
        }
        for (index, discount) in self.discounts.iter().enumerate() {
            discount.condition.check_categories(&format!("discounts[{index}].condition"), &self.categories, issues);
        }
        for (index, restriction) in self.restricted_goods.iter().enumerate() {
            let path = format!("restricted_goods[{index}]");
            restriction.goods.check_categories(&format!("{path}.goods"), &self.categories, issues);
            restriction.allowed.check_categories(&format!("{path}.allowed"), &self.categories, issues);
        }
    }

    /// Every tier the program's conditions and discounts name must be one of its levels.
    fn check_tiers(&self, tiers: &TierProgram, issues: &mut Vec<ValidationIssue>) {
        let known: Vec<String> = tiers.levels.iter().map(|l| l.id.clone()).collect();
        for (index, rule) in self.earn_rules.iter().enumerate() {
            rule.condition.check_tiers(&format!("earn_rules[{index}].condition"), &known, issues);
        }
        for (index, discount) in self.discounts.iter().enumerate() {
            discount.condition.check_tiers(&format!("discounts[{index}].condition"), &known, issues);
            if let DiscountKind::Tier(by_tier) = &discount.kind {
                for tier in by_tier.keys().filter(|tier| !known.contains(tier)) {
                    issues.push(ValidationIssue {
                        path: format!("discounts[{index}].kind.tier.{tier}"),
                        message: format!("unknown tier {tier:?}: the program's tiers are {known:?}"),
                    });
                }
            }
        }
        for (index, restriction) in self.restricted_goods.iter().enumerate() {
            restriction.allowed.check_tiers(&format!("restricted_goods[{index}].allowed"), &known, issues);
        }
    }

    /// The program's time zone (UTC if the name is unknown, which validation prevents).
    pub fn tz_or_utc(&self) -> TimeZone {
        self.tz()
    }

    pub(crate) fn tz(&self) -> TimeZone {
        // validate() checked the name; a program that reached the ledger has a known zone.
        TimeZone::get(&self.time_zone).unwrap_or(TimeZone::UTC)
    }

    /// When points earned at `earned_at` become available (the return window closes).
    pub fn available_from(&self, earned_at: Timestamp) -> Timestamp {
        let zoned = earned_at.to_zoned(self.tz());
        zoned.checked_add(self.pending_days.days()).map(|z| z.timestamp()).unwrap_or(Timestamp::MAX)
    }

    /// When points earned at `earned_at` expire.
    pub fn expires_at(&self, earned_at: Timestamp) -> Timestamp {
        let zoned = earned_at.to_zoned(self.tz());
        match self.expiry {
            ExpiryPolicy::Never => Timestamp::MAX,
            ExpiryPolicy::MonthsAfterEarn { months } => {
                zoned.checked_add(months.months()).map(|z| z.timestamp()).unwrap_or(Timestamp::MAX)
            }
            ExpiryPolicy::EndOfFollowingYear => {
                let year = zoned.year().saturating_add(2);
                Date::new(year, 1, 1)
                    .ok()
                    .and_then(|date| date.to_zoned(self.tz()).ok())
                    .map(|z| z.timestamp())
                    .unwrap_or(Timestamp::MAX)
            }
        }
    }

    /// The most points that may pay a bill of `bill_minor`.
    pub fn max_redeemable_points(&self, bill_minor: i64) -> i64 {
        let payable_minor = bill_minor as i128 * self.max_redeem_share_percent as i128 / 100;
        (payable_minor / self.point_value_minor as i128) as i64
    }
}

#[cfg(test)]
// Amounts are written as money reads: 399_99 is 399.99 RUB in kopecks.
#[allow(clippy::inconsistent_digit_grouping)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn earn_rate_rounds_down_and_expresses_ten_per_hundred() {
        let one_per_100 = EarnRate { points: 1, per_minor: 10_000 };
        assert_eq!(one_per_100.points_for(399_99), 3);
        let ten_per_100 = EarnRate { points: 10, per_minor: 10_000 };
        assert_eq!(ten_per_100.points_for(399_99), 39);
    }

    #[test]
    fn end_of_following_year_expiry_is_in_the_program_time_zone() {
        let mut program = Program::example();
        program.expiry = ExpiryPolicy::EndOfFollowingYear;
        // 2026-12-31 23:30 in Moscow is still 2026 there, so the points last to the end of 2027.
        let expires = program.expires_at(ts("2026-12-31T20:30:00Z"));
        assert_eq!(expires, ts("2027-12-31T21:00:00Z"));
        // Half an hour later it is 2027 in Moscow: the points last to the end of 2028.
        assert_eq!(program.expires_at(ts("2026-12-31T21:00:00Z")), ts("2028-12-31T21:00:00Z"));
    }

    #[test]
    fn months_after_earn_clamps_to_month_end() {
        let mut program = Program::example();
        program.time_zone = "UTC".into();
        program.expiry = ExpiryPolicy::MonthsAfterEarn { months: 1 };
        assert_eq!(program.expires_at(ts("2028-01-31T10:00:00Z")), ts("2028-02-29T10:00:00Z"));
    }

    #[test]
    fn validation_reports_every_problem_with_its_path() {
        let mut program = Program::example();
        program.earn_rate.per_minor = 0;
        program.max_redeem_share_percent = 150;
        program.time_zone = "Mars/Olympus".into();
        let issues = program.validate().unwrap_err();
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["earn_rate.per_minor", "max_redeem_share_percent", "time_zone"]);
    }

    #[test]
    fn unknown_fields_and_currencies_are_rejected_when_parsing() {
        let mut json = serde_json::to_value(Program::example()).unwrap();
        json["bonus"] = 1.into();
        let issues = Program::from_json(&json.to_string()).unwrap_err();
        assert!(issues[0].message.contains("unknown field `bonus`"), "{issues:?}");
        let mut json = serde_json::to_value(Program::example()).unwrap();
        json["bill_currency"] = "XYZ".into();
        let issues = Program::from_json(&json.to_string()).unwrap_err();
        assert!(issues[0].message.contains("unknown currency"), "{issues:?}");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_by_its_path() {
        let mut json = serde_json::to_value(Program::example()).unwrap();
        json["earn_rate"]["points"] = "ten".into();
        let issues = Program::from_json(&json.to_string()).unwrap_err();
        assert_eq!(issues[0].path, "earn_rate.points");
        let issues = Program::from_json("{ not json").unwrap_err();
        assert!(issues[0].path.starts_with("line 1 column"), "{issues:?}");
    }

    #[test]
    fn max_share_caps_redemption() {
        let program = Program::example();
        // 50% of 999.99 RUB is 499.995 RUB: 499 whole points of 1 RUB.
        assert_eq!(program.max_redeemable_points(999_99), 499);
    }
}
