//! Earn rules: a program's bonuses as data, evaluated against a basket, a member and the time.
//!
//! # How a basket earns
//!
//! 1. **Base.** The program's `earn_rate` gives `floor(earn_base × rate)` points for the whole
//!    purchase (`earn_base` is the bill, or what was paid in money when `earn_on_paid_amount`),
//!    shared across lines by their amounts, largest remainder first. With no rules this is all there
//!    is, exactly as before rules existed.
//! 2. **Rules**, highest `priority` first (equal priorities in the order listed). A rule applies to
//!    every line its condition holds for (see [`condition`]); its effect gives points per line,
//!    rounded down once per rule per line, on the line's earn amount (its amount after line
//!    discounts, less its share of any points payment when `earn_on_paid_amount`).
//! 3. **Stacking.** A rule's points are added to the line's base and to the points of the rules
//!    before it. An **exclusive** rule replaces the base on the lines it matches and stops every rule
//!    after it on those lines; rules before it keep their points.
//! 4. **Caps.** When a rule would give more than a cap allows on this purchase, what it may give is
//!    shared across its lines in proportion to their uncapped points (largest remainder), and each
//!    line says it was capped. A rule whose cap is already used up does not apply at all: it neither
//!    gives points nor replaces the base nor stops lower rules.
//!
//! The core is pure: whatever depends on the member's history (tier, segments, first purchase,
//! points a rule already gave today or this period) comes in a [`MemberContext`] the caller builds.

pub mod condition;
pub mod effect;
pub mod explain;

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use condition::{Condition, Weekday};
pub use effect::{CapKind, CapPeriod, Caps, Effect, PeriodCap};
pub use explain::{Capped, Evaluation, LineExplanation, RuleApplied, RuleNotApplied};

use crate::purchase::{allocate, Channel, LineInput};
use crate::{Program, ValidationIssue};
use condition::{Facts, LineFacts};

/// The most earn rules a program may hold.
pub const EARN_RULES_MAX: usize = 200;
/// The longest rule id.
pub const RULE_ID_LEN_MAX: usize = 64;

/// A bonus of the program: when it applies and what it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarnRule {
    /// Stable id, unique in the program: explanations and purchase records name rules by it.
    pub id: String,
    pub name: String,
    #[serde(default = "always")]
    pub condition: Condition,
    pub effect: Effect,
    /// Higher goes first.
    #[serde(default)]
    pub priority: i32,
    /// Replaces the base rate and stops lower rules on the lines this rule matches.
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub caps: Caps,
    /// When the rule is on; none means always.
    #[serde(default)]
    pub active: Option<ActiveWindow>,
}

fn always() -> Condition {
    Condition::Always
}

/// When a rule is on: from `from` (inclusive) until `until` (exclusive); either may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveWindow {
    #[serde(default)]
    pub from: Option<Timestamp>,
    #[serde(default)]
    pub until: Option<Timestamp>,
}

impl ActiveWindow {
    fn contains(&self, at: Timestamp) -> bool {
        self.from.is_none_or(|from| at >= from) && self.until.is_none_or(|until| at < until)
    }
}

/// What the caller knows about the member that rules may ask about. The core cannot look it up:
/// the engine computes it from the store before deciding a purchase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberContext {
    pub tier: Option<String>,
    pub segments: Vec<String>,
    pub campaigns: Vec<String>,
    pub birth_date: Option<Date>,
    pub is_first_purchase: bool,
    /// Points each rule (by id) already gave this member today, in the program's time zone.
    pub earned_by_rule_today: BTreeMap<String, i64>,
    /// Points each rule (by id) already gave this member in the rule's cap period
    /// (`caps.per_member.period`, starting at [`CapPeriod::start`]).
    pub earned_by_rule_period: BTreeMap<String, i64>,
}

/// A basket to evaluate. Lines are assumed checked (`purchase::decide_purchase` checks them).
#[derive(Debug, Clone, Copy)]
pub struct Basket<'a> {
    pub lines: &'a [LineInput],
    pub channel: Channel,
    pub store: Option<&'a str>,
    /// The part of the bill paid with points, in minor units.
    pub redeemed_value_minor: i64,
}

/// A line's amount after its discount.
pub fn line_total_minor(line: &LineInput) -> i64 {
    line.unit_price_minor.saturating_mul(line.quantity).saturating_sub(line.discount_minor)
}

/// The points `basket` earns under `program` for `member` at `occurred_at`, line by line, with the
/// explanation. Deterministic and integer-only; see the module documentation for the semantics.
pub fn evaluate(program: &Program, basket: &Basket, member: &MemberContext, occurred_at: Timestamp) -> Evaluation {
    let lines = basket.lines;
    let totals: Vec<i64> = lines.iter().map(line_total_minor).collect();
    let total_minor: i64 = totals.iter().sum();
    assert!((0..=total_minor).contains(&basket.redeemed_value_minor), "points pay at most the bill");
    let (earn_base, line_redeemed_minor) = if program.earn_on_paid_amount {
        (total_minor - basket.redeemed_value_minor, allocate(basket.redeemed_value_minor, &totals))
    } else {
        (total_minor, vec![0; lines.len()])
    };
    let mut base_points = allocate(program.earn_rate.points_for(earn_base), &totals);
    let earn_amounts: Vec<i64> = totals.iter().zip(&line_redeemed_minor).map(|(t, r)| (t - r).max(0)).collect();
    let mut explanation: Vec<LineExplanation> = (0..lines.len())
        .map(|line| LineExplanation {
            line,
            base_points: 0,
            base_replaced_by: None,
            rules_applied: Vec::new(),
            rules_not_applied: Vec::new(),
        })
        .collect();

    let facts = facts(program, total_minor, basket.channel, basket.store, member, occurred_at);
    let mut order: Vec<usize> = (0..program.earn_rules.len()).collect();
    order.sort_by_key(|index| std::cmp::Reverse(program.earn_rules[*index].priority));
    // Per line: the exclusive rule that stopped lower rules on it.
    let mut stopped_by: Vec<Option<usize>> = vec![None; lines.len()];
    let mut points = vec![0i64; lines.len()];
    let mut matched = vec![false; lines.len()];
    for rule_index in order {
        let rule = &program.earn_rules[rule_index];
        let mut not_applied = |line: usize, reason: String| {
            explanation[line].rules_not_applied.push(RuleNotApplied { rule_id: rule.id.clone(), reason });
        };
        if let Some(window) = rule.active.filter(|window| !window.contains(occurred_at)) {
            let reason = format!("not active at {occurred_at} (active {})", describe_window(&window));
            for line in 0..lines.len() {
                not_applied(line, reason.clone());
            }
            continue;
        }
        let cap_left = rule.caps.left(&rule.id, member);
        if let Some((0, kind)) = cap_left {
            for line in 0..lines.len() {
                not_applied(line, format!("cap {} already reached", cap_name(kind)));
            }
            continue;
        }
        for (line, input) in lines.iter().enumerate() {
            points[line] = 0;
            matched[line] = false;
            if let Some(stopper) = stopped_by[line] {
                not_applied(line, format!("stopped by exclusive rule {:?}", program.earn_rules[stopper].id));
                continue;
            }
            let line_facts = LineFacts { line: input, total_minor: totals[line] };
            if !rule.condition.matches(&facts, &line_facts) {
                let reason = rule.condition.why_not(&facts, &line_facts).expect("the condition does not hold");
                not_applied(line, reason);
                continue;
            }
            matched[line] = true;
            points[line] = rule.effect.line_points(earn_amounts[line], &program.earn_rate, rule.exclusive);
        }
        if !matched.iter().any(|m| *m) {
            continue;
        }
        if let Effect::BonusPerBasket(bonus) = rule.effect {
            share_among_matched(bonus, &matched, &earn_amounts, &mut points);
        }
        let uncapped_total: i64 = points.iter().sum();
        let capped_by = match cap_left {
            Some((left, kind)) if uncapped_total > left => Some((left, kind)),
            _ => None,
        };
        let uncapped = capped_by.map(|(left, _)| {
            let capped = allocate(left, &points);
            std::mem::replace(&mut points, capped)
        });
        for line in (0..lines.len()).filter(|line| matched[*line]) {
            let capped = match (&uncapped, capped_by) {
                (Some(uncapped), Some((_, by))) if points[line] < uncapped[line] => {
                    Some(Capped { uncapped_points: uncapped[line], by })
                }
                _ => None,
            };
            explanation[line].rules_applied.push(RuleApplied {
                rule_id: rule.id.clone(),
                points: points[line],
                capped,
            });
            if rule.exclusive {
                stopped_by[line] = Some(rule_index);
                base_points[line] = 0;
                explanation[line].base_replaced_by = Some(rule.id.clone());
            }
        }
        if let Some((left, _)) = capped_by {
            assert_eq!(points.iter().sum::<i64>(), left, "a capped rule gives exactly what is left");
        }
    }

    let line_points: Vec<i64> = explanation
        .iter_mut()
        .zip(&base_points)
        .map(|(line, base)| {
            line.base_points = *base;
            base + line.rules_applied.iter().map(|rule| rule.points).sum::<i64>()
        })
        .collect();
    let total = line_points.iter().sum();
    Evaluation { line_points, total, explanation }
}

/// What conditions are asked against, for a basket of `total_minor` at `at` in the program's zone.
pub(crate) fn facts<'a>(
    program: &Program,
    total_minor: i64,
    channel: Channel,
    store: Option<&'a str>,
    member: &'a MemberContext,
    at: Timestamp,
) -> Facts<'a> {
    let zoned = at.to_zoned(program.tz());
    Facts {
        basket_total_minor: total_minor,
        channel,
        store,
        date: zoned.date(),
        weekday: Weekday::of(zoned.weekday()),
        hour: zoned.hour(),
        member,
    }
}

/// Shares `bonus` among the matched lines by their earn amounts (all to the first matched line when
/// they are all zero).
fn share_among_matched(bonus: i64, matched: &[bool], earn_amounts: &[i64], points: &mut [i64]) {
    let weights: Vec<i64> = earn_amounts.iter().zip(matched).map(|(a, m)| if *m { *a } else { 0 }).collect();
    if weights.iter().all(|w| *w == 0) {
        let first = matched.iter().position(|m| *m).expect("a line matched");
        points[first] = bonus;
        return;
    }
    for (point, share) in points.iter_mut().zip(allocate(bonus, &weights)) {
        *point = share;
    }
}

fn describe_window(window: &ActiveWindow) -> String {
    let from = window.from.map(|t| t.to_string()).unwrap_or_else(|| "any time".into());
    let until = window.until.map(|t| t.to_string()).unwrap_or_else(|| "no end".into());
    format!("from {from} until {until}")
}

fn cap_name(kind: CapKind) -> &'static str {
    match kind {
        CapKind::PerPurchase => "per purchase",
        CapKind::PerDay => "per day",
        CapKind::PerMember => "per member per period",
    }
}

/// Checks the rules of a program: every problem with its path under `earn_rules`.
pub(crate) fn validate(rules: &[EarnRule], issues: &mut Vec<ValidationIssue>) {
    if rules.len() > EARN_RULES_MAX {
        issues.push(ValidationIssue { path: "earn_rules".into(), message: format!("at most {EARN_RULES_MAX} rules") });
    }
    let mut first_with_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, rule) in rules.iter().enumerate() {
        let path = format!("earn_rules[{index}]");
        let mut issue = |field: &str, message: String| {
            issues.push(ValidationIssue { path: format!("{path}.{field}"), message });
        };
        let id_ok = !rule.id.is_empty()
            && rule.id.len() <= RULE_ID_LEN_MAX
            && rule.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            issue("id", format!("must be 1 to {RULE_ID_LEN_MAX} letters, digits or - _ ."));
        }
        if let Some(first) = first_with_id.insert(&rule.id, index) {
            first_with_id.insert(&rule.id, first);
            issue("id", format!("duplicate of earn_rules[{first}].id {:?}", rule.id));
        }
        if rule.name.trim().is_empty() || rule.name.chars().count() > Program::NAME_LEN_MAX {
            issue("name", format!("must be 1 to {} characters", Program::NAME_LEN_MAX));
        }
        if let Some(ActiveWindow { from: Some(from), until: Some(until) }) = rule.active {
            if from >= until {
                issue("active", format!("an empty window: from {from} is not before until {until}"));
            }
        }
        if rule.exclusive && matches!(rule.effect, Effect::BonusPerBasket(_)) {
            issue("exclusive", "a bonus per basket cannot replace the base rate of lines: make it stack".into());
        }
        rule.condition.validate(&format!("{path}.condition"), 0, issues);
        rule.effect.validate(&format!("{path}.effect"), rule.exclusive, issues);
        rule.caps.validate(&format!("{path}.caps"), issues);
    }
}
