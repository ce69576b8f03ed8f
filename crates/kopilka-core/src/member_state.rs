//! What the program knows about a member beyond the profile: the tier, segments and campaigns the
//! member is in, purchase statistics, and what each earn rule already gave. It is kept with the
//! member's row, so deciding a purchase needs no extra query, and it becomes the
//! [`MemberContext`] the earn rules see.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::Date;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::purchase::PurchaseRecord;
use crate::rules::MemberContext;
use crate::Program;

/// How many calendar months of spend are kept per member: enough for a rolling year and the
/// calendar year before it.
pub const SPEND_MONTHS_KEPT: usize = 24;
/// The most segments or campaigns one member may be in.
pub const TAGS_MAX: usize = 100;
/// The longest tier, segment or campaign name.
pub const TAG_LEN_MAX: usize = 64;
/// How many tier changes a member's history keeps.
pub const TIER_HISTORY_KEPT: usize = 50;

/// The loyalty side of a member.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierAssignment>,
    /// The start of the last tier window the member's tier was reviewed for (or earned in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Date))]
    pub tier_reviewed: Option<Date>,
    /// Tier changes, newest last, the last [`TIER_HISTORY_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier_history: Vec<TierChange>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub segments: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub campaigns: BTreeSet<String>,
    #[serde(default)]
    pub stats: PurchaseStats,
    /// What each earn rule (by id) gave, for caps per day and per period.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rule_points: BTreeMap<String, RuleCounter>,
    /// Coupons of each coupon campaign (by id) the member used, for per-member limits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub coupon_uses: BTreeMap<i64, u32>,
    /// Event bonuses given and expiry reminders sent (see `bonuses`).
    #[serde(default, skip_serializing_if = "crate::bonuses::EventMarks::is_empty")]
    pub events: crate::bonuses::EventMarks,
}

/// The member's tier, and until when it holds (none: until changed).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierAssignment {
    pub tier: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub since: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub until: Option<Timestamp>,
    /// Set by an admin: reviews do not take it away before `until`.
    #[serde(default)]
    pub manual: bool,
}

/// One change of a member's tier.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChange {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `qualified`, `review`, `manual`, `manual_ended`.
    pub reason: String,
}

/// Purchases and spend, net of returns, in the program's bill currency.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseStats {
    pub purchases: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub first_purchase_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_purchase_at: Option<Timestamp>,
    pub spend_lifetime_minor: i64,
    #[serde(default)]
    pub points_earned_lifetime: i64,
    /// Per calendar month ("2026-11") in the program's time zone, the last [`SPEND_MONTHS_KEPT`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub months: BTreeMap<String, MonthStats>,
}

/// A month of a member's purchases, net of returns.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthStats {
    pub spend_minor: i64,
    pub points_earned: i64,
    pub purchases: i64,
}

/// Which of a month's figures to sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonthFigure {
    Spend,
    PointsEarned,
    Purchases,
}

impl MonthFigure {
    fn of(&self, month: &MonthStats) -> i64 {
        match self {
            MonthFigure::Spend => month.spend_minor,
            MonthFigure::PointsEarned => month.points_earned,
            MonthFigure::Purchases => month.purchases,
        }
    }
}

/// Points a rule gave on the counter's day and in the period that starts on `period_start`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounter {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub day: Date,
    pub day_points: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Date))]
    pub period_start: Date,
    pub period_points: i64,
}

/// Over which spend a cumulative discount or a tier is measured.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendWindow {
    Lifetime,
    /// The calendar year so far, in the program's time zone.
    CalendarYear,
    /// This month and the eleven before it.
    #[serde(rename = "rolling_12_months")]
    Rolling12Months,
}

/// What an admin sets on a member: a tier until a date, segments, campaigns. Absent fields stay.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    /// A tier name; `null` removes the tier.
    #[serde(default, deserialize_with = "double_option::deserialize", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub tier: Option<Option<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub tier_until: Option<Timestamp>,
    #[serde(default)]
    pub segments: Option<BTreeSet<String>>,
    #[serde(default)]
    pub campaigns: Option<BTreeSet<String>>,
}

/// Tells a field that is absent (`None`) from one set to `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

fn check_tag(field: &str, value: &str) -> Result<(), DomainError> {
    let ok = !value.is_empty()
        && value.len() <= TAG_LEN_MAX
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(field, format!("{value:?}: 1 to {TAG_LEN_MAX} letters, digits or - _ .")))
    }
}

impl MemberState {
    /// When an admin-assigned tier ends, if one with an end date is held (stored beside the state
    /// so the tiers job can find it).
    pub fn manual_tier_until(&self) -> Option<Timestamp> {
        self.tier.as_ref().filter(|t| t.manual).and_then(|t| t.until)
    }

    /// The tier review job's key, stored beside the state: none for a member holding no tier, an
    /// empty text for one never reviewed, else the start of the window last reviewed for
    /// (ISO 8601, so keys compare as the dates do and the empty one first).
    pub fn tier_review_key(&self) -> Option<String> {
        self.tier.as_ref().map(|_| self.tier_reviewed.map(|date| date.to_string()).unwrap_or_default())
    }

    /// The month and day (`MM-DD`, of the UTC date) of the first purchase: the anniversary job's
    /// key, stored beside the state.
    pub fn first_purchase_day(&self) -> Option<String> {
        self.stats.first_purchase_at.map(|at| at.strftime("%m-%d").to_string())
    }

    /// The tier in force at `at`.
    pub fn tier_at(&self, at: Timestamp) -> Option<&str> {
        self.tier.as_ref().filter(|t| t.until.is_none_or(|until| at < until)).map(|t| t.tier.as_str())
    }

    /// Applies an admin's change; checks everything before changing anything.
    pub fn apply(&mut self, change: &StateChange, now: Timestamp) -> Result<(), DomainError> {
        if let Some(Some(tier)) = &change.tier {
            check_tag("tier", tier)?;
        }
        if let Some(until) = change.tier_until {
            if until <= now {
                return Err(DomainError::invalid("tier_until", "must be in the future"));
            }
            if matches!(change.tier, Some(None)) || (change.tier.is_none() && self.tier.is_none()) {
                return Err(DomainError::invalid("tier_until", "a tier end needs a tier"));
            }
        }
        for (field, tags) in [("segments", &change.segments), ("campaigns", &change.campaigns)] {
            if let Some(tags) = tags {
                if tags.len() > TAGS_MAX {
                    return Err(DomainError::invalid(field, format!("at most {TAGS_MAX}")));
                }
                tags.iter().try_for_each(|tag| check_tag(field, tag))?;
            }
        }
        let before = self.tier_at(now).map(str::to_string);
        match &change.tier {
            Some(Some(tier)) => {
                self.tier =
                    Some(TierAssignment { tier: tier.clone(), since: now, until: change.tier_until, manual: true })
            }
            Some(None) => self.tier = None,
            None => {
                if let (Some(assignment), Some(until)) = (&mut self.tier, change.tier_until) {
                    assignment.until = Some(until);
                }
            }
        }
        if let Some(segments) = &change.segments {
            self.segments = segments.clone();
        }
        if let Some(campaigns) = &change.campaigns {
            self.campaigns = campaigns.clone();
        }
        let after = self.tier_at(now).map(str::to_string);
        if before != after {
            self.push_tier_change(TierChange { at: now, from: before, to: after, reason: "manual".into() });
        }
        Ok(())
    }

    pub(crate) fn push_tier_change(&mut self, change: TierChange) {
        self.tier_history.push(change);
        if self.tier_history.len() > TIER_HISTORY_KEPT {
            self.tier_history.remove(0);
        }
    }

    /// What the earn rules of `program` may ask about the member for a purchase at `at`.
    pub fn context(&self, program: &Program, birth_date: Option<Date>, at: Timestamp) -> MemberContext {
        let today = at.to_zoned(program.tz()).date();
        let mut context = MemberContext {
            tier: self.tier_at(at).map(str::to_string),
            segments: self.segments.iter().cloned().collect(),
            campaigns: self.campaigns.iter().cloned().collect(),
            birth_date,
            is_first_purchase: self.stats.purchases == 0,
            ..MemberContext::default()
        };
        for rule in &program.earn_rules {
            let Some(counter) = self.rule_points.get(&rule.id) else { continue };
            if counter.day == today {
                context.earned_by_rule_today.insert(rule.id.clone(), counter.day_points);
            }
            if let Some(cap) = rule.caps.per_member {
                if counter.period_start == cap.period.start(today) {
                    context.earned_by_rule_period.insert(rule.id.clone(), counter.period_points);
                }
            }
        }
        context
    }

    /// The member's spend over `window`, as of `at`.
    pub fn spend(&self, program: &Program, window: SpendWindow, at: Timestamp) -> i64 {
        self.sum(program, MonthFigure::Spend, window, at)
    }

    /// `figure` summed over the window that contains `at` (in the program's time zone).
    pub fn sum(&self, program: &Program, figure: MonthFigure, window: SpendWindow, at: Timestamp) -> i64 {
        let today = at.to_zoned(program.tz()).date();
        match (window, figure) {
            (SpendWindow::Lifetime, MonthFigure::Spend) => self.stats.spend_lifetime_minor,
            (SpendWindow::Lifetime, MonthFigure::PointsEarned) => self.stats.points_earned_lifetime,
            (SpendWindow::Lifetime, MonthFigure::Purchases) => self.stats.purchases as i64,
            (SpendWindow::CalendarYear, _) => self.sum_months(figure, today.first_of_year(), today),
            (SpendWindow::Rolling12Months, _) => {
                let from = today.first_of_month().checked_sub(jiff::Span::new().months(11)).unwrap_or(today);
                self.sum_months(figure, from, today)
            }
        }
    }

    /// `figure` summed over the months from the one holding `from` to the one holding `to`.
    pub fn sum_months(&self, figure: MonthFigure, from: Date, to: Date) -> i64 {
        self.stats.months.range(month_key(from)..=month_key(to)).map(|(_, month)| figure.of(month)).sum()
    }

    /// Counts a recorded purchase: statistics, spend, and the points each rule gave.
    pub fn record_purchase(&mut self, program: &Program, record: &PurchaseRecord) {
        let stats = &mut self.stats;
        stats.purchases += 1;
        stats.first_purchase_at =
            Some(stats.first_purchase_at.map_or(record.occurred_at, |t| t.min(record.occurred_at)));
        stats.last_purchase_at = Some(stats.last_purchase_at.map_or(record.occurred_at, |t| t.max(record.occurred_at)));
        self.stats.points_earned_lifetime += record.points_earned;
        self.add_month(
            program,
            record.occurred_at,
            MonthStats { spend_minor: record.total_minor, points_earned: record.points_earned, purchases: 1 },
        );
        let day = record.occurred_at.to_zoned(program.tz()).date();
        let mut by_rule: BTreeMap<&str, i64> = BTreeMap::new();
        for line in &record.lines {
            for given in &line.rule_points {
                *by_rule.entry(&given.rule_id).or_default() += given.points;
            }
        }
        for (rule_id, points) in by_rule {
            // Only caps per day or per period read the counters: other rules are not counted, so
            // the state stays small however many rules (or coupons) a member meets.
            let Some(rule) = program.earn_rules.iter().find(|rule| rule.id == rule_id) else { continue };
            if rule.caps.per_day.is_none() && rule.caps.per_member.is_none() {
                continue;
            }
            let period_start = rule.caps.per_member.map_or(day, |cap| cap.period.start(day));
            let counter = self.rule_points.entry(rule_id.to_string()).or_insert(RuleCounter {
                day,
                day_points: 0,
                period_start,
                period_points: 0,
            });
            // A receipt from an earlier day (a till that was offline) counts for nothing today.
            if day > counter.day {
                *counter = RuleCounter {
                    day,
                    day_points: 0,
                    period_start: counter.period_start,
                    period_points: counter.period_points,
                };
            }
            if day == counter.day {
                counter.day_points += points;
            }
            if period_start > counter.period_start {
                counter.period_start = period_start;
                counter.period_points = 0;
            }
            if period_start == counter.period_start {
                counter.period_points += points;
            }
        }
    }

    /// Takes in the state of a member merged into this one: purchases and spend add up, segments and
    /// campaigns join, the survivor's tier stays (the absorbed one's when the survivor has none), and
    /// rule counters of the same day and period add up so a merge cannot reset a cap.
    pub fn absorb(&mut self, other: &MemberState) {
        let (mine, theirs) = (&mut self.stats, &other.stats);
        mine.purchases += theirs.purchases;
        mine.first_purchase_at = mine.first_purchase_at.into_iter().chain(theirs.first_purchase_at).min();
        mine.last_purchase_at = mine.last_purchase_at.into_iter().chain(theirs.last_purchase_at).max();
        mine.spend_lifetime_minor += theirs.spend_lifetime_minor;
        mine.points_earned_lifetime += theirs.points_earned_lifetime;
        for (month, figures) in &theirs.months {
            let into = mine.months.entry(month.clone()).or_default();
            into.spend_minor += figures.spend_minor;
            into.points_earned += figures.points_earned;
            into.purchases += figures.purchases;
        }
        while mine.months.len() > SPEND_MONTHS_KEPT {
            mine.months.pop_first();
        }
        if self.tier.is_none() {
            self.tier = other.tier.clone();
        }
        self.segments.extend(other.segments.iter().cloned());
        self.campaigns.extend(other.campaigns.iter().cloned());
        self.events.absorb(&other.events);
        for (campaign, uses) in &other.coupon_uses {
            *self.coupon_uses.entry(*campaign).or_default() += uses;
        }
        for (rule, theirs) in &other.rule_points {
            let Some(mine) = self.rule_points.get_mut(rule) else {
                self.rule_points.insert(rule.clone(), theirs.clone());
                continue;
            };
            if mine.day == theirs.day {
                mine.day_points += theirs.day_points;
            } else if theirs.day > mine.day {
                (mine.day, mine.day_points) = (theirs.day, theirs.day_points);
            }
            if mine.period_start == theirs.period_start {
                mine.period_points += theirs.period_points;
            } else if theirs.period_start > mine.period_start {
                (mine.period_start, mine.period_points) = (theirs.period_start, theirs.period_points);
            }
        }
    }

    /// Takes a return off the month the purchase was made in: its amount and the points reversed.
    pub fn record_return(&mut self, program: &Program, purchased_at: Timestamp, returned_minor: i64, points: i64) {
        self.stats.points_earned_lifetime -= points;
        self.add_month(
            program,
            purchased_at,
            MonthStats { spend_minor: -returned_minor, points_earned: -points, purchases: 0 },
        );
    }

    fn add_month(&mut self, program: &Program, at: Timestamp, figures: MonthStats) {
        let stats = &mut self.stats;
        stats.spend_lifetime_minor += figures.spend_minor;
        let month = stats.months.entry(month_key(at.to_zoned(program.tz()).date())).or_default();
        month.spend_minor += figures.spend_minor;
        month.points_earned += figures.points_earned;
        month.purchases += figures.purchases;
        while stats.months.len() > SPEND_MONTHS_KEPT {
            stats.months.pop_first();
        }
    }
}

fn month_key(date: Date) -> String {
    format!("{:04}-{:02}", date.year(), date.month())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn spend_windows_follow_the_calendar() {
        let program = Program::example();
        let mut state = MemberState::default();
        let spend = |minor| MonthStats { spend_minor: minor, ..MonthStats::default() };
        state.add_month(&program, at("2025-10-15T10:00:00Z"), spend(100));
        state.add_month(&program, at("2025-12-31T20:00:00Z"), spend(200));
        state.add_month(&program, at("2026-01-01T01:00:00Z"), spend(400));
        let now = at("2026-10-20T00:00:00Z");
        assert_eq!(state.spend(&program, SpendWindow::Lifetime, now), 700);
        assert_eq!(state.spend(&program, SpendWindow::CalendarYear, now), 400);
        assert_eq!(state.spend(&program, SpendWindow::Rolling12Months, now), 600);
        state.record_return(&program, at("2025-12-31T20:00:00Z"), 50, 0);
        assert_eq!(state.spend(&program, SpendWindow::Rolling12Months, now), 550);
    }

    #[test]
    fn a_tier_ends_when_its_assignment_does() {
        let mut state = MemberState::default();
        let now = at("2026-01-01T00:00:00Z");
        let change = StateChange {
            tier: Some(Some("gold".into())),
            tier_until: Some(at("2026-02-01T00:00:00Z")),
            ..StateChange::default()
        };
        state.apply(&change, now).unwrap();
        assert_eq!(state.tier_at(at("2026-01-31T23:59:59Z")), Some("gold"));
        assert_eq!(state.tier_at(at("2026-02-01T00:00:00Z")), None);
        let bad = StateChange { segments: Some(["no spaces".to_string()].into()), ..StateChange::default() };
        assert!(state.apply(&bad, now).is_err());
        let past = StateChange { tier_until: Some(now), ..StateChange::default() };
        assert!(state.apply(&past, now).is_err());
        assert_eq!(state.tier_at(now), Some("gold"), "a refused change changes nothing");
    }
}
