//! Effects of earn rules (what a matching line earns) and caps (how much a rule may give).
//!
//! Each effect gives whole points per line, rounded down once per rule per line, in integer
//! arithmetic wide enough (i128) that no product overflows. A bonus per basket is shared across the
//! lines the rule matched by their amounts (largest remainder), so every point belongs to a line
//! and a return takes back the points of the lines returned.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::purchase::POINTS_MAX;
use crate::rules::MemberContext;
use crate::{EarnRate, ValidationIssue};

/// The largest multiplier, in percent: 100 times the base rate.
pub const MULTIPLIER_PERCENT_MAX: i64 = 10_000;
/// The largest rate's points per amount (as for the base rate).
pub const RATE_POINTS_MAX: i64 = 1_000_000;

/// What a rule gives on each line it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Effect {
    /// `points` for every `per_minor` minor units of the line's amount, like the base rate.
    Rate { points: i64, per_minor: i64 },
    /// The line earns `percent`% of the base rate in total: 200 is "double points". Stacked on the
    /// base, the rule adds `percent - 100`% of the base rate; exclusive, it replaces the base and
    /// gives `percent`% (0 makes a line earn nothing).
    MultiplierPercent(i64),
    /// A fixed number of points for every line the rule matches.
    BonusPerLine(i64),
    /// A fixed number of points once per purchase, shared across the lines the rule matched.
    BonusPerBasket(i64),
}

impl Effect {
    /// Points this effect gives on one line that earns on `amount_minor`, before any cap. A bonus per
    /// basket is shared out by the caller, so it gives nothing here.
    pub(crate) fn line_points(&self, amount_minor: i64, base: &EarnRate, exclusive: bool) -> i64 {
        let points: i128 = match self {
            Effect::Rate { points, per_minor } => amount_minor as i128 * *points as i128 / *per_minor as i128,
            Effect::MultiplierPercent(percent) => {
                let percent = if exclusive { *percent } else { percent - 100 };
                amount_minor as i128 * base.points as i128 * percent.max(0) as i128 / (base.per_minor as i128 * 100)
            }
            Effect::BonusPerLine(points) => *points as i128,
            Effect::BonusPerBasket(_) => 0,
        };
        // A named bound rather than an overflow: no rule gives more than POINTS_MAX on one line.
        points.clamp(0, POINTS_MAX as i128) as i64
    }

    pub(crate) fn validate(&self, path: &str, exclusive: bool, issues: &mut Vec<ValidationIssue>) {
        let mut issue = |field: &str, message: String| {
            issues.push(ValidationIssue { path: format!("{path}.{field}"), message });
        };
        match self {
            Effect::Rate { points, per_minor } => {
                if !(1..=RATE_POINTS_MAX).contains(points) {
                    issue("rate.points", format!("must be between 1 and {RATE_POINTS_MAX}"));
                }
                if *per_minor <= 0 {
                    issue("rate.per_minor", "must be a positive amount of minor units, e.g. 10000 for 100.00".into());
                }
            }
            Effect::MultiplierPercent(percent) => {
                if !(0..=MULTIPLIER_PERCENT_MAX).contains(percent) {
                    issue("multiplier_percent", format!("must be between 0 and {MULTIPLIER_PERCENT_MAX}"));
                } else if !exclusive && *percent <= 100 {
                    issue(
                        "multiplier_percent",
                        "a rule that stacks on the base adds nothing at 100% or less: make it exclusive to lower the base".into(),
                    );
                }
            }
            Effect::BonusPerLine(points) | Effect::BonusPerBasket(points) => {
                if !(1..=POINTS_MAX).contains(points) {
                    let field =
                        if matches!(self, Effect::BonusPerLine(_)) { "bonus_per_line" } else { "bonus_per_basket" };
                    issue(field, format!("must be between 1 and {POINTS_MAX}"));
                }
            }
        }
    }
}

/// A calendar period in the program's time zone, for caps per member per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapPeriod {
    /// Monday to Sunday.
    Week,
    Month,
    Year,
}

impl CapPeriod {
    /// The first day of the period that contains `date`: what the caller sums a member's points
    /// from for `MemberContext::earned_by_rule_period`.
    pub fn start(&self, date: Date) -> Date {
        match self {
            CapPeriod::Week => {
                let back = date.weekday().to_monday_zero_offset();
                date.checked_sub(jiff::Span::new().days(back)).unwrap_or(date)
            }
            CapPeriod::Month => date.first_of_month(),
            CapPeriod::Year => date.first_of_year(),
        }
    }
}

/// A limit on what one member may earn from a rule in a calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodCap {
    pub points: i64,
    pub period: CapPeriod,
}

/// Limits on what a rule gives. Every limit that is set applies; the tightest wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// At most this many points from the rule on one purchase.
    #[serde(default)]
    pub per_purchase: Option<i64>,
    /// At most this many points from the rule per member per day (in the program's time zone),
    /// counting `MemberContext::earned_by_rule_today`.
    #[serde(default)]
    pub per_day: Option<i64>,
    /// At most this many points from the rule per member per period, counting
    /// `MemberContext::earned_by_rule_period`.
    #[serde(default)]
    pub per_member: Option<PeriodCap>,
}

/// Which cap limited a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapKind {
    PerPurchase,
    PerDay,
    PerMember,
}

impl Caps {
    /// The most points the rule `rule_id` may still give on this purchase, and the cap that sets it;
    /// None when the rule has no cap.
    pub(crate) fn left(&self, rule_id: &str, member: &MemberContext) -> Option<(i64, CapKind)> {
        let earned = |map: &std::collections::BTreeMap<String, i64>| map.get(rule_id).copied().unwrap_or(0);
        let limits = [
            self.per_purchase.map(|cap| (cap, CapKind::PerPurchase)),
            self.per_day.map(|cap| (cap - earned(&member.earned_by_rule_today), CapKind::PerDay)),
            self.per_member.map(|cap| (cap.points - earned(&member.earned_by_rule_period), CapKind::PerMember)),
        ];
        limits.into_iter().flatten().map(|(left, kind)| (left.max(0), kind)).min_by_key(|(left, _)| *left)
    }

    pub(crate) fn validate(&self, path: &str, issues: &mut Vec<ValidationIssue>) {
        let caps = [
            ("per_purchase", self.per_purchase),
            ("per_day", self.per_day),
            ("per_member.points", self.per_member.map(|cap| cap.points)),
        ];
        for (field, cap) in caps {
            if cap.is_some_and(|cap| !(1..=POINTS_MAX).contains(&cap)) {
                issues.push(ValidationIssue {
                    path: format!("{path}.{field}"),
                    message: format!("must be between 1 and {POINTS_MAX}"),
                });
            }
        }
        if let (Some(per_purchase), Some(per_day)) = (self.per_purchase, self.per_day) {
            if per_purchase > per_day {
                issues.push(ValidationIssue {
                    path: format!("{path}.per_purchase"),
                    message: format!("{per_purchase} is more than the cap per day {per_day}, which always wins"),
                });
            }
        }
    }
}
