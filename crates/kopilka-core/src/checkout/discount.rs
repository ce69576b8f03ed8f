//! Discount programs: a percentage off for members, a cumulative discount that grows with the
//! member's spend, discounts by tier, and goods only some members may buy.
//!
//! Discounts are part of the program document. On each line, every discount whose condition holds
//! gives a percentage; among discounts that `stack: best` (the default) the largest wins, discounts
//! that `stack: add` come on top, and the line's total is capped by the program's
//! `discount_percent_max`. A percentage is taken off the line's amount after the till's own
//! discount, rounded down to the minor unit, so a discount never exceeds what it says.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::member_state::SpendWindow;
use crate::rules::condition::{Facts, LineFacts};
use crate::rules::Condition;
use crate::ValidationIssue;

/// The most discounts or restrictions a program may hold.
pub const DISCOUNTS_MAX: usize = 100;

/// A discount of the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discount {
    pub id: String,
    pub name: String,
    /// The lines (category, SKU…) and members (tier, segment…) the discount is for.
    #[serde(default = "always")]
    pub condition: Condition,
    pub kind: DiscountKind,
    #[serde(default)]
    pub stack: Stacking,
}

fn always() -> Condition {
    Condition::Always
}

/// How much a discount takes off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiscountKind {
    /// This percentage off.
    Percent(i64),
    /// The percentage of the highest threshold the member's spend over `window` has reached
    /// (before this purchase).
    Cumulative { window: SpendWindow, thresholds: Vec<Threshold> },
    /// A percentage per tier; members of other tiers get none.
    Tier(BTreeMap<String, i64>),
}

/// From `from_minor` of spend on, `percent` off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub from_minor: i64,
    pub percent: i64,
}

/// How a discount combines with the others on the same line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stacking {
    /// The largest of the `best` discounts applies.
    #[default]
    Best,
    /// Added to whatever else applies.
    Add,
}

/// Goods only some members may buy: lines matching `goods` need a member matching `allowed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restriction {
    pub id: String,
    pub name: String,
    pub goods: Condition,
    pub allowed: Condition,
}

/// What the member's history says for discounts: spend per window, measured by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub lifetime_minor: i64,
    pub calendar_year_minor: i64,
    pub rolling_12_months_minor: i64,
}

impl Spend {
    fn over(&self, window: SpendWindow) -> i64 {
        match window {
            SpendWindow::Lifetime => self.lifetime_minor,
            SpendWindow::CalendarYear => self.calendar_year_minor,
            SpendWindow::Rolling12Months => self.rolling_12_months_minor,
        }
    }
}

/// A discount that applied to a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountApplied {
    pub discount_id: String,
    pub percent: i64,
    pub reason: String,
}

/// A discount that did not apply to a line, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountNotApplied {
    pub discount_id: String,
    pub reason: String,
}

/// The program's discounts on one line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDiscount {
    /// The percentage taken off, after stacking and the program's cap.
    pub percent: i64,
    pub applied: Vec<DiscountApplied>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<DiscountNotApplied>,
}

impl Discount {
    /// The percentage this discount gives `line`, or why it gives none.
    fn percent_for(&self, facts: &Facts, line: &LineFacts, spend: &Spend) -> Result<(i64, String), String> {
        if !self.condition.matches(facts, line) {
            return Err(self.condition.why_not(facts, line).unwrap_or_default());
        }
        match &self.kind {
            DiscountKind::Percent(percent) => Ok((*percent, format!("{percent}% for members"))),
            DiscountKind::Cumulative { window, thresholds } => {
                let spent = spend.over(*window);
                thresholds
                    .iter()
                    .filter(|t| spent >= t.from_minor)
                    .max_by_key(|t| t.from_minor)
                    .map(|t| (t.percent, format!("{}% for a spend of {spent} (from {})", t.percent, t.from_minor)))
                    .ok_or_else(|| {
                        let first = thresholds.iter().map(|t| t.from_minor).min().unwrap_or(0);
                        format!("a spend of {spent} is below the first threshold {first}")
                    })
            }
            DiscountKind::Tier(by_tier) => match facts.member.tier.as_deref() {
                Some(tier) => by_tier
                    .get(tier)
                    .map(|percent| (*percent, format!("{percent}% for tier {tier}")))
                    .ok_or_else(|| format!("tier {tier} has no discount")),
                None => Err("the member has no tier".into()),
            },
        }
    }
}

/// The program's discounts on one line, with what applied and why the others did not.
pub(crate) fn line_discount(
    discounts: &[Discount],
    percent_max: i64,
    facts: &Facts,
    line: &LineFacts,
    spend: &Spend,
) -> LineDiscount {
    let mut result = LineDiscount::default();
    let mut best: Option<DiscountApplied> = None;
    let mut added = 0;
    for discount in discounts {
        match discount.percent_for(facts, line, spend) {
            Err(reason) => {
                result.not_applied.push(DiscountNotApplied { discount_id: discount.id.clone(), reason });
            }
            Ok((percent, reason)) => {
                let applied = DiscountApplied { discount_id: discount.id.clone(), percent, reason };
                match discount.stack {
                    Stacking::Add => {
                        added += percent;
                        result.applied.push(applied);
                    }
                    Stacking::Best => match &best {
                        Some(current) if current.percent >= percent => {
                            let reason =
                                format!("{percent}% is not more than {:?}'s {}%", current.discount_id, current.percent);
                            result.not_applied.push(DiscountNotApplied { discount_id: applied.discount_id, reason });
                        }
                        _ => {
                            if let Some(beaten) = best.replace(applied) {
                                let reason = format!("{}% is less than another discount's", beaten.percent);
                                result.not_applied.push(DiscountNotApplied { discount_id: beaten.discount_id, reason });
                            }
                        }
                    },
                }
            }
        }
    }
    let best_percent = best.as_ref().map_or(0, |b| b.percent);
    result.applied.extend(best);
    result.percent = (best_percent + added).min(percent_max);
    result
}

/// Why `line` may not be sold to this member, if it may not.
pub(crate) fn restricted(restrictions: &[Restriction], facts: &Facts, line: &LineFacts) -> Option<String> {
    restrictions.iter().find(|r| r.goods.matches(facts, line) && !r.allowed.matches(facts, line)).map(|r| {
        let why = r.allowed.why_not(facts, line).unwrap_or_default();
        format!("{:?} ({}) is restricted: {why}", r.id, r.name)
    })
}

fn check_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_percent(path: &str, percent: i64, issues: &mut Vec<ValidationIssue>) {
    if !(1..=100).contains(&percent) {
        issues.push(ValidationIssue { path: path.into(), message: "must be a percentage from 1 to 100".into() });
    }
}

/// Checks the discounts and restrictions of a program, every problem with its path.
pub(crate) fn validate(
    discounts: &[Discount],
    restrictions: &[Restriction],
    percent_max: i64,
    issues: &mut Vec<ValidationIssue>,
) {
    if !(0..=100).contains(&percent_max) {
        issues
            .push(ValidationIssue { path: "discount_percent_max".into(), message: "must be between 0 and 100".into() });
    }
    for (field, count) in [("discounts", discounts.len()), ("restricted_goods", restrictions.len())] {
        if count > DISCOUNTS_MAX {
            issues.push(ValidationIssue { path: field.into(), message: format!("at most {DISCOUNTS_MAX}") });
        }
    }
    let mut seen = BTreeMap::new();
    for (index, discount) in discounts.iter().enumerate() {
        let path = format!("discounts[{index}]");
        let mut issue =
            |field: &str, message: String| issues.push(ValidationIssue { path: format!("{path}.{field}"), message });
        if !check_id(&discount.id) {
            issue("id", "must be 1 to 64 letters, digits or - _ .".into());
        }
        if let Some(first) = seen.insert(discount.id.clone(), index) {
            issue("id", format!("duplicate of discounts[{first}].id {:?}", discount.id));
        }
        if discount.name.trim().is_empty() {
            issue("name", "must not be empty".into());
        }
        match &discount.kind {
            DiscountKind::Percent(percent) => check_percent(&format!("{path}.kind.percent"), *percent, issues),
            DiscountKind::Cumulative { thresholds, .. } => {
                if thresholds.is_empty() {
                    issues.push(ValidationIssue {
                        path: format!("{path}.kind.cumulative.thresholds"),
                        message: "needs at least one threshold".into(),
                    });
                }
                for (i, pair) in thresholds.windows(2).enumerate() {
                    if pair[1].from_minor <= pair[0].from_minor || pair[1].percent <= pair[0].percent {
                        issues.push(ValidationIssue {
                            path: format!("{path}.kind.cumulative.thresholds[{}]", i + 1),
                            message: "thresholds must rise in both spend and percent".into(),
                        });
                    }
                }
                for (i, t) in thresholds.iter().enumerate() {
                    let at = format!("{path}.kind.cumulative.thresholds[{i}]");
                    check_percent(&format!("{at}.percent"), t.percent, issues);
                    if t.from_minor < 0 {
                        issues.push(ValidationIssue {
                            path: format!("{at}.from_minor"),
                            message: "must not be negative".into(),
                        });
                    }
                }
            }
            DiscountKind::Tier(by_tier) => {
                if by_tier.is_empty() {
                    issues.push(ValidationIssue { path: format!("{path}.kind.tier"), message: "names no tier".into() });
                }
                for (tier, percent) in by_tier {
                    check_percent(&format!("{path}.kind.tier.{tier}"), *percent, issues);
                }
            }
        }
        discount.condition.validate(&format!("{path}.condition"), 0, issues);
    }
    let mut seen = BTreeMap::new();
    for (index, restriction) in restrictions.iter().enumerate() {
        let path = format!("restricted_goods[{index}]");
        if !check_id(&restriction.id) {
            issues.push(ValidationIssue {
                path: format!("{path}.id"),
                message: "must be 1 to 64 letters, digits or - _ .".into(),
            });
        }
        if let Some(first) = seen.insert(restriction.id.clone(), index) {
            issues.push(ValidationIssue {
                path: format!("{path}.id"),
                message: format!("duplicate of restricted_goods[{first}].id {:?}", restriction.id),
            });
        }
        if restriction.goods == Condition::Always {
            issues.push(ValidationIssue {
                path: format!("{path}.goods"),
                message: "restricts every line: name a category or SKU".into(),
            });
        }
        restriction.goods.validate(&format!("{path}.goods"), 0, issues);
        restriction.allowed.validate(&format!("{path}.allowed"), 0, issues);
    }
}
