//! Conditions of earn rules: structured data an admin page can render, validate and explain.
//!
//! A condition is asked about one line of a basket at a time. Line conditions (category, SKU,
//! brand, line sum, quantity) look at the line; basket, member and time conditions give the same
//! answer for every line, so they gate the whole rule. Because every condition answers per line,
//! `all`, `any` and `not` combine both kinds without special cases: "dairy, on weekends" is
//! `{"all": [{"category": ["dairy"]}, {"day_of_week": ["saturday", "sunday"]}]}`.
//!
//! Conditions are externally tagged (`{"category": [...]}`), so a validation path reads like the
//! document: `earn_rules[3].condition.all[1].category`.

use jiff::civil::Date;
use jiff::ToSpan;
use serde::{Deserialize, Serialize};

use crate::purchase::{Channel, LineInput, AMOUNT_MINOR_MAX, QUANTITY_MAX, TEXT_LEN_MAX};
use crate::rules::MemberContext;
use crate::ValidationIssue;

/// How deep `all`/`any`/`not` may nest: deeper than this is a generated document gone wrong.
pub const CONDITION_DEPTH_MAX: usize = 8;
/// The most values one condition may list (categories, SKUs, stores...).
pub const CONDITION_VALUES_MAX: usize = 1_000;
/// The widest birthday window on either side of the day, in days.
pub const BIRTHDAY_DAYS_MAX: i32 = 31;

/// A day of the week, as programs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    pub(crate) fn of(day: jiff::civil::Weekday) -> Weekday {
        match day {
            jiff::civil::Weekday::Monday => Weekday::Monday,
            jiff::civil::Weekday::Tuesday => Weekday::Tuesday,
            jiff::civil::Weekday::Wednesday => Weekday::Wednesday,
            jiff::civil::Weekday::Thursday => Weekday::Thursday,
            jiff::civil::Weekday::Friday => Weekday::Friday,
            jiff::civil::Weekday::Saturday => Weekday::Saturday,
            jiff::civil::Weekday::Sunday => Weekday::Sunday,
        }
    }
}

/// When a condition holds. Lists mean "one of": `{"category": ["dairy", "bakery"]}` holds for a
/// line of either category. Sums are in minor units of the bill currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Holds for every line: a rule for the whole basket.
    Always,
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one condition holds.
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// The line's category is one of these (a line without a category never matches).
    Category(Vec<String>),
    /// The line's SKU is one of these.
    Sku(Vec<String>),
    /// The line's brand is one of these (a line without a brand never matches).
    Brand(Vec<String>),
    /// The line's amount after its discount is at least this.
    MinLineSumMinor(i64),
    /// The line's quantity is at least this.
    MinQuantity(i64),
    /// The purchase came through one of these channels.
    Channel(Vec<Channel>),
    /// The purchase was made in one of these stores.
    Store(Vec<String>),
    /// The basket's total (after line discounts, before points pay any of it) is at least this.
    MinBasketSumMinor(i64),
    /// The purchase happened on one of these days, in the program's time zone.
    DayOfWeek(Vec<Weekday>),
    /// The purchase happened from `from_hour` (inclusive) to `to_hour` (exclusive), in the
    /// program's time zone; `from_hour` > `to_hour` wraps past midnight (22 to 6).
    HourWindow { from_hour: i8, to_hour: i8 },
    /// The purchase happened on a day from `from` to `to`, both inclusive, in the program's time
    /// zone.
    DateRange { from: Date, to: Date },
    /// The member's tier is one of these.
    Tier(Vec<String>),
    /// The member is in at least one of these segments.
    Segment(Vec<String>),
    /// The member takes part in at least one of these campaigns.
    Campaign(Vec<String>),
    /// This is the member's first purchase.
    FirstPurchase,
    /// The purchase happened within `days_before` days before to `days_after` days after the
    /// member's birthday (29 February counts as 28 February in other years).
    Birthday { days_before: i32, days_after: i32 },
}

/// What conditions are asked against: the basket and member facts, computed once per evaluation.
pub(crate) struct Facts<'a> {
    pub basket_total_minor: i64,
    pub channel: Channel,
    pub store: Option<&'a str>,
    pub date: Date,
    pub weekday: Weekday,
    pub hour: i8,
    pub member: &'a MemberContext,
}

/// The line a condition is asked about.
pub(crate) struct LineFacts<'a> {
    pub line: &'a LineInput,
    pub total_minor: i64,
}

fn one_of(values: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|value| values.iter().any(|v| v == value))
}

/// The member's birthday in `year`: 29 February is 28 February in a year without it.
fn birthday_in(birth: Date, year: i16) -> Option<Date> {
    Date::new(year, birth.month(), birth.day()).ok().or_else(|| Date::new(year, birth.month(), 28).ok())
}

pub(crate) fn in_birthday_window(birth: Date, today: Date, days_before: i32, days_after: i32) -> bool {
    // The window around the birthday of last year, this year or next year may contain today
    // (a birthday on 2 January with days_before 5 reaches back into December).
    [today.year().saturating_sub(1), today.year(), today.year().saturating_add(1)].into_iter().any(|year| {
        let Some(birthday) = birthday_in(birth, year) else { return false };
        let start = birthday.checked_sub(days_before.days()).unwrap_or(birthday);
        let end = birthday.checked_add(days_after.days()).unwrap_or(birthday);
        start <= today && today <= end
    })
}

impl Condition {
    /// Whether the condition holds for `line` of the basket described by `facts`.
    pub(crate) fn matches(&self, facts: &Facts, line: &LineFacts) -> bool {
        match self {
            Condition::Always => true,
            Condition::All(conditions) => conditions.iter().all(|c| c.matches(facts, line)),
            Condition::Any(conditions) => conditions.iter().any(|c| c.matches(facts, line)),
            Condition::Not(condition) => !condition.matches(facts, line),
            Condition::Category(values) => one_of(values, line.line.category.as_deref()),
            Condition::Sku(values) => one_of(values, Some(&line.line.sku)),
            Condition::Brand(values) => one_of(values, line.line.brand.as_deref()),
            Condition::MinLineSumMinor(min) => line.total_minor >= *min,
            Condition::MinQuantity(min) => line.line.quantity >= *min,
            Condition::Channel(channels) => channels.contains(&facts.channel),
            Condition::Store(values) => one_of(values, facts.store),
            Condition::MinBasketSumMinor(min) => facts.basket_total_minor >= *min,
            Condition::DayOfWeek(days) => days.contains(&facts.weekday),
            Condition::HourWindow { from_hour, to_hour } => {
                if from_hour < to_hour {
                    (*from_hour..*to_hour).contains(&facts.hour)
                } else {
                    facts.hour >= *from_hour || facts.hour < *to_hour
                }
            }
            Condition::DateRange { from, to } => (*from..=*to).contains(&facts.date),
            Condition::Tier(values) => one_of(values, facts.member.tier.as_deref()),
            Condition::Segment(values) => facts.member.segments.iter().any(|s| values.contains(s)),
            Condition::Campaign(values) => facts.member.campaigns.iter().any(|c| values.contains(c)),
            Condition::FirstPurchase => facts.member.is_first_purchase,
            Condition::Birthday { days_before, days_after } => facts
                .member
                .birth_date
                .is_some_and(|birth| in_birthday_window(birth, facts.date, *days_before, *days_after)),
        }
    }

    /// Why the condition does not hold for `line`, or None when it holds. Slower than `matches`:
    /// called only to explain a rule that did not apply.
    pub(crate) fn why_not(&self, facts: &Facts, line: &LineFacts) -> Option<String> {
        if self.matches(facts, line) {
            return None;
        }
        let member = facts.member;
        Some(match self {
            Condition::Always => unreachable!("always holds"),
            Condition::All(conditions) => {
                return conditions.iter().find_map(|c| c.why_not(facts, line));
            }
            Condition::Any(conditions) => {
                let reasons: Vec<String> = conditions.iter().filter_map(|c| c.why_not(facts, line)).collect();
                format!("none of these holds: {}", reasons.join("; "))
            }
            Condition::Not(condition) => format!("{} holds, and the rule excludes it", condition.describe()),
            Condition::Category(values) => {
                format!("category {} is not one of {values:?}", shown(line.line.category.as_deref()))
            }
            Condition::Sku(values) => format!("sku {:?} is not one of {values:?}", line.line.sku),
            Condition::Brand(values) => format!("brand {} is not one of {values:?}", shown(line.line.brand.as_deref())),
            Condition::MinLineSumMinor(min) => format!("line sum {} is below {min}", line.total_minor),
            Condition::MinQuantity(min) => format!("quantity {} is below {min}", line.line.quantity),
            Condition::Channel(channels) => {
                format!("channel {} is not one of [{}]", facts.channel.as_str(), channel_names(channels))
            }
            Condition::Store(values) => format!("store {} is not one of {values:?}", shown(facts.store)),
            Condition::MinBasketSumMinor(min) => format!("basket sum {} is below {min}", facts.basket_total_minor),
            Condition::DayOfWeek(days) => format!("{:?} is not one of {days:?}", facts.weekday),
            Condition::HourWindow { from_hour, to_hour } => {
                format!("hour {} is outside {from_hour}:00 to {to_hour}:00", facts.hour)
            }
            Condition::DateRange { from, to } => format!("date {} is outside {from} to {to}", facts.date),
            Condition::Tier(values) => format!("tier {} is not one of {values:?}", shown(member.tier.as_deref())),
            Condition::Segment(values) => format!("member is in none of the segments {values:?}"),
            Condition::Campaign(values) => format!("member is in none of the campaigns {values:?}"),
            Condition::FirstPurchase => "not the member's first purchase".to_string(),
            Condition::Birthday { days_before, days_after } => match member.birth_date {
                None => "the member's birth date is not known".to_string(),
                Some(birth) => format!(
                    "date {} is not within {days_before} days before to {days_after} days after the birthday {:02}-{:02}",
                    facts.date,
                    birth.month(),
                    birth.day()
                ),
            },
        })
    }

    /// The condition as a short text, for explanations.
    pub fn describe(&self) -> String {
        let list = |conditions: &[Condition], word: &str| {
            conditions.iter().map(Condition::describe).collect::<Vec<_>>().join(word)
        };
        match self {
            Condition::Always => "always".into(),
            Condition::All(conditions) => format!("({})", list(conditions, " and ")),
            Condition::Any(conditions) => format!("({})", list(conditions, " or ")),
            Condition::Not(condition) => format!("not {}", condition.describe()),
            Condition::Category(values) => format!("category in {values:?}"),
            Condition::Sku(values) => format!("sku in {values:?}"),
            Condition::Brand(values) => format!("brand in {values:?}"),
            Condition::MinLineSumMinor(min) => format!("line sum >= {min}"),
            Condition::MinQuantity(min) => format!("quantity >= {min}"),
            Condition::Channel(channels) => format!("channel in [{}]", channel_names(channels)),
            Condition::Store(values) => format!("store in {values:?}"),
            Condition::MinBasketSumMinor(min) => format!("basket sum >= {min}"),
            Condition::DayOfWeek(days) => format!("day in {days:?}"),
            Condition::HourWindow { from_hour, to_hour } => format!("hour {from_hour}:00 to {to_hour}:00"),
            Condition::DateRange { from, to } => format!("date {from} to {to}"),
            Condition::Tier(values) => format!("tier in {values:?}"),
            Condition::Segment(values) => format!("segment in {values:?}"),
            Condition::Campaign(values) => format!("campaign in {values:?}"),
            Condition::FirstPurchase => "first purchase".into(),
            Condition::Birthday { days_before, days_after } => {
                format!("birthday -{days_before}/+{days_after} days")
            }
        }
    }

    /// Reports every category the condition names that `known` does not hold, under `path`.
    pub(crate) fn check_categories(&self, path: &str, known: &[String], issues: &mut Vec<ValidationIssue>) {
        match self {
            Condition::All(conditions) | Condition::Any(conditions) => {
                let field = self.field();
                for (index, condition) in conditions.iter().enumerate() {
                    condition.check_categories(&format!("{path}.{field}[{index}]"), known, issues);
                }
            }
            Condition::Not(condition) => condition.check_categories(&format!("{path}.not"), known, issues),
            Condition::Category(values) => {
                for value in values.iter().filter(|value| !known.contains(value)) {
                    issues.push(ValidationIssue {
                        path: format!("{path}.category"),
                        message: format!(
                            "unknown category {value:?}: add it to the program's categories or fix the name"
                        ),
                    });
                }
            }
            _ => {}
        }
    }

    /// Reports every tier the condition names that `known` does not hold, under `path`.
    pub(crate) fn check_tiers(&self, path: &str, known: &[String], issues: &mut Vec<ValidationIssue>) {
        match self {
            Condition::All(conditions) | Condition::Any(conditions) => {
                let field = self.field();
                for (index, condition) in conditions.iter().enumerate() {
                    condition.check_tiers(&format!("{path}.{field}[{index}]"), known, issues);
                }
            }
            Condition::Not(condition) => condition.check_tiers(&format!("{path}.not"), known, issues),
            Condition::Tier(values) => {
                for value in values.iter().filter(|value| !known.contains(value)) {
                    issues.push(ValidationIssue {
                        path: format!("{path}.tier"),
                        message: format!("unknown tier {value:?}: the program's tiers are {known:?}"),
                    });
                }
            }
            _ => {}
        }
    }

    /// Checks the condition's values and reports conditions that can never hold, each under `path`.
    pub(crate) fn validate(&self, path: &str, depth: usize, issues: &mut Vec<ValidationIssue>) {
        let mut issue = |field: &str, message: String| {
            issues.push(ValidationIssue { path: format!("{path}.{field}"), message });
        };
        if depth > CONDITION_DEPTH_MAX {
            issue(self.field(), format!("conditions nest at most {CONDITION_DEPTH_MAX} deep"));
            return;
        }
        match self {
            Condition::Always | Condition::FirstPurchase => {}
            Condition::All(conditions) | Condition::Any(conditions) => {
                let field = self.field();
                if conditions.is_empty() {
                    issue(field, "must not be empty: use \"always\" for a rule without conditions".into());
                }
                if conditions.len() > CONDITION_VALUES_MAX {
                    issue(field, format!("at most {CONDITION_VALUES_MAX} conditions"));
                }
                for (index, condition) in conditions.iter().enumerate() {
                    condition.validate(&format!("{path}.{field}[{index}]"), depth + 1, issues);
                }
                if let Condition::All(conditions) = self {
                    contradictions(conditions, &format!("{path}.{field}"), issues);
                }
            }
            Condition::Not(condition) => {
                if matches!(**condition, Condition::Always) {
                    issue("not", "\"not always\" never holds".into());
                }
                condition.validate(&format!("{path}.not"), depth + 1, issues);
            }
            Condition::Category(values)
            | Condition::Sku(values)
            | Condition::Brand(values)
            | Condition::Store(values)
            | Condition::Tier(values)
            | Condition::Segment(values)
            | Condition::Campaign(values) => {
                let field = self.field();
                if values.is_empty() {
                    issue(field, "must not be empty".into());
                }
                if values.len() > CONDITION_VALUES_MAX {
                    issue(field, format!("at most {CONDITION_VALUES_MAX} values"));
                }
                for (index, value) in values.iter().enumerate() {
                    if value.trim().is_empty() || value.chars().count() > TEXT_LEN_MAX {
                        issue(&format!("{field}[{index}]"), format!("must be 1 to {TEXT_LEN_MAX} characters"));
                    }
                }
            }
            Condition::Channel(channels) => {
                if channels.is_empty() {
                    issue("channel", "must not be empty".into());
                }
            }
            Condition::DayOfWeek(days) => {
                if days.is_empty() {
                    issue("day_of_week", "must not be empty".into());
                }
            }
            Condition::MinLineSumMinor(min) | Condition::MinBasketSumMinor(min) => {
                if !(0..=AMOUNT_MINOR_MAX).contains(min) {
                    issue(self.field(), format!("must be between 0 and {AMOUNT_MINOR_MAX}"));
                }
            }
            Condition::MinQuantity(min) => {
                if !(1..=QUANTITY_MAX).contains(min) {
                    issue("min_quantity", format!("must be between 1 and {QUANTITY_MAX}"));
                }
            }
            Condition::HourWindow { from_hour, to_hour } => {
                if !(0..=23).contains(from_hour) {
                    issue("hour_window.from_hour", "must be between 0 and 23".into());
                }
                if !(0..=24).contains(to_hour) {
                    issue("hour_window.to_hour", "must be between 0 and 24".into());
                }
                if from_hour == to_hour {
                    issue("hour_window", "an empty window: from_hour equals to_hour".into());
                }
            }
            Condition::DateRange { from, to } => {
                if from > to {
                    issue("date_range", format!("an empty range: {from} is after {to}"));
                }
            }
            Condition::Birthday { days_before, days_after } => {
                if !(0..=BIRTHDAY_DAYS_MAX).contains(days_before) {
                    issue("birthday.days_before", format!("must be between 0 and {BIRTHDAY_DAYS_MAX}"));
                }
                if !(0..=BIRTHDAY_DAYS_MAX).contains(days_after) {
                    issue("birthday.days_after", format!("must be between 0 and {BIRTHDAY_DAYS_MAX}"));
                }
            }
        }
    }

    /// The condition's name in a document.
    fn field(&self) -> &'static str {
        match self {
            Condition::Always => "always",
            Condition::All(_) => "all",
            Condition::Any(_) => "any",
            Condition::Not(_) => "not",
            Condition::Category(_) => "category",
            Condition::Sku(_) => "sku",
            Condition::Brand(_) => "brand",
            Condition::MinLineSumMinor(_) => "min_line_sum_minor",
            Condition::MinQuantity(_) => "min_quantity",
            Condition::Channel(_) => "channel",
            Condition::Store(_) => "store",
            Condition::MinBasketSumMinor(_) => "min_basket_sum_minor",
            Condition::DayOfWeek(_) => "day_of_week",
            Condition::HourWindow { .. } => "hour_window",
            Condition::DateRange { .. } => "date_range",
            Condition::Tier(_) => "tier",
            Condition::Segment(_) => "segment",
            Condition::Campaign(_) => "campaign",
            Condition::FirstPurchase => "first_purchase",
            Condition::Birthday { .. } => "birthday",
        }
    }
}

fn shown(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{value:?}"),
        None => "(none)".into(),
    }
}

/// Conditions side by side in an `all` that no line can meet at once: two lists of one kind with
/// nothing in common (a line has one category, a purchase one channel), or date ranges that do not
/// overlap.
fn contradictions(conditions: &[Condition], path: &str, issues: &mut Vec<ValidationIssue>) {
    for (later, condition) in conditions.iter().enumerate() {
        for (earlier, other) in conditions[..later].iter().enumerate() {
            let disjoint = match (other, condition) {
                (Condition::Category(a), Condition::Category(b))
                | (Condition::Sku(a), Condition::Sku(b))
                | (Condition::Brand(a), Condition::Brand(b))
                | (Condition::Store(a), Condition::Store(b))
                | (Condition::Tier(a), Condition::Tier(b)) => {
                    !a.is_empty() && !b.is_empty() && !a.iter().any(|v| b.contains(v))
                }
                (Condition::Channel(a), Condition::Channel(b)) => {
                    !a.is_empty() && !b.is_empty() && !a.iter().any(|v| b.contains(v))
                }
                (Condition::DayOfWeek(a), Condition::DayOfWeek(b)) => {
                    !a.is_empty() && !b.is_empty() && !a.iter().any(|v| b.contains(v))
                }
                (Condition::DateRange { from: from_a, to: to_a }, Condition::DateRange { from: from_b, to: to_b }) => {
                    from_a.max(from_b) > to_a.min(to_b)
                }
                _ => false,
            };
            if disjoint {
                issues.push(ValidationIssue {
                    path: format!("{path}[{later}]"),
                    message: format!(
                        "contradicts {path}[{earlier}]: {} and {} never hold together",
                        other.describe(),
                        condition.describe()
                    ),
                });
            }
        }
    }
}

/// Channels as the API spells them (`pos, web`), for explanations.
fn channel_names(channels: &[Channel]) -> String {
    channels.iter().map(Channel::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn birthday_window_reaches_across_the_new_year_and_treats_29_february_as_28th() {
        let born = date(1990, 1, 2);
        assert!(in_birthday_window(born, date(2025, 12, 30), 5, 0));
        assert!(!in_birthday_window(born, date(2025, 12, 27), 5, 0));
        assert!(in_birthday_window(born, date(2026, 1, 4), 0, 2));
        assert!(!in_birthday_window(born, date(2026, 1, 5), 0, 2));
        let leap = date(2000, 2, 29);
        assert!(in_birthday_window(leap, date(2026, 2, 28), 0, 0));
        assert!(!in_birthday_window(leap, date(2026, 3, 1), 0, 0));
        assert!(in_birthday_window(leap, date(2028, 2, 29), 0, 0));
        assert!(!in_birthday_window(leap, date(2028, 2, 28), 0, 0));
    }
}
