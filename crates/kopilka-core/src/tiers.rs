//! VIP tiers: levels a member reaches by a qualifying metric (spend, points earned or purchases)
//! over a window (calendar year, rolling twelve months, lifetime), and the benefits that come with
//! them.
//!
//! A member moves **up** as soon as a purchase takes the metric over a level's threshold. Moving
//! **down** happens only at a review, when a window ends (1 January for a calendar year, the first
//! of each month for a rolling year; never for lifetime): the member keeps the level the closed
//! window qualifies for, but drops at most `downgrade.max_levels` at once, and not before
//! `downgrade.grace_days` into the new window. A tier an admin assigned holds until its end date.
//!
//! Benefits take effect from the purchase after the one that earns the level (that purchase was
//! priced before it crossed the threshold): an earn multiplier becomes an extra earn rule and a
//! discount an extra discount of the program (`Program::for_tier`).

use std::borrow::Cow;

use jiff::civil::Date;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::checkout::discount::{Discount, DiscountKind, Stacking};
use crate::member_state::{MemberState, MonthFigure, SpendWindow, TierAssignment, TierChange};
use crate::rules::{Condition, EarnRule, Effect};
use crate::{Program, ValidationIssue};

/// The most levels a program may have.
pub const LEVELS_MAX: usize = 20;

/// A program's tiers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierProgram {
    pub metric: TierMetric,
    pub window: SpendWindow,
    /// Lowest first; thresholds strictly rise.
    pub levels: Vec<TierLevel>,
    #[serde(default)]
    pub downgrade: Downgrade,
}

/// What qualifies a member for a level.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMetric {
    /// Spend in minor units of the bill currency, net of returns.
    Spend,
    PointsEarned,
    Purchases,
}

impl TierMetric {
    fn figure(&self) -> MonthFigure {
        match self {
            TierMetric::Spend => MonthFigure::Spend,
            TierMetric::PointsEarned => MonthFigure::PointsEarned,
            TierMetric::Purchases => MonthFigure::Purchases,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLevel {
    pub id: String,
    pub name: String,
    /// The metric over the window at which the level is reached.
    pub threshold: i64,
    #[serde(default)]
    pub benefits: Benefits,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Benefits {
    /// Points earned on every line, in percent of the base rate (150: half as much again).
    #[serde(default)]
    pub earn_multiplier_percent: Option<i64>,
    /// A discount on every line.
    #[serde(default)]
    pub discount_percent: Option<i64>,
    /// Free services the level entitles to (free delivery, a lounge), for tills and the portal.
    #[serde(default)]
    pub entitlements: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Downgrade {
    /// The most levels a review takes a member down at once.
    pub max_levels: u32,
    /// Days into a new window before a review may take a member down.
    pub grace_days: i32,
}

impl Default for Downgrade {
    fn default() -> Downgrade {
        Downgrade { max_levels: 1, grace_days: 0 }
    }
}

impl TierProgram {
    pub fn rank(&self, tier: Option<&str>) -> Option<usize> {
        tier.and_then(|tier| self.levels.iter().position(|l| l.id == tier))
    }

    pub fn level(&self, tier: &str) -> Option<&TierLevel> {
        self.levels.iter().find(|l| l.id == tier)
    }

    /// The highest level `value` reaches.
    pub fn qualified(&self, value: i64) -> Option<usize> {
        self.levels.iter().rposition(|l| value >= l.threshold)
    }

    /// The start of the window that holds `today`, for windows that end (None for lifetime).
    pub fn window_start(&self, today: Date) -> Option<Date> {
        match self.window {
            SpendWindow::Lifetime => None,
            SpendWindow::CalendarYear => Some(today.first_of_year()),
            SpendWindow::Rolling12Months => Some(today.first_of_month()),
        }
    }

    /// When the window holding `today` closes (the next review), for windows that end.
    pub fn window_end(&self, today: Date) -> Option<Date> {
        let start = self.window_start(today)?;
        let span = match self.window {
            SpendWindow::CalendarYear => jiff::Span::new().years(1),
            _ => jiff::Span::new().months(1),
        };
        start.checked_add(span).ok()
    }

    /// The day of the member's next review after `today`, given the window start their tier was
    /// last reviewed for (or earned in): a window's review waits `downgrade.grace_days` past its
    /// start, so while the current window is still in grace and not yet reviewed, that review is
    /// next; otherwise the current window's end plus the grace days.
    pub fn next_review(&self, today: Date, reviewed: Option<Date>) -> Option<Date> {
        let grace = jiff::Span::new().days(self.downgrade.grace_days);
        let start = self.window_start(today)?;
        let grace_over = start.checked_add(grace).ok()?;
        if today < grace_over && reviewed.is_none_or(|done| done < start) {
            return Some(grace_over);
        }
        self.window_end(today)?.checked_add(grace).ok()
    }

    /// The review a member is due for at `today`: the window start it is for, once the grace days
    /// into the window have passed.
    pub fn review_due(&self, today: Date) -> Option<Date> {
        let start = self.window_start(today)?;
        let grace_over = start.checked_add(jiff::Span::new().days(self.downgrade.grace_days)).ok()?;
        if today >= grace_over {
            Some(start)
        } else {
            // Still in grace: the review due is the previous window's, done in its time.
            let previous = start.checked_sub(jiff::Span::new().days(1)).ok()?;
            self.window_start(previous)
        }
    }

    /// The member's metric over the window holding `at`.
    pub fn metric(&self, program: &Program, state: &MemberState, at: Timestamp) -> i64 {
        state.sum(program, self.metric.figure(), self.window, at)
    }

    /// The metric over the window that closed when the window starting at `start` began.
    fn closed_window_metric(&self, state: &MemberState, start: Date) -> i64 {
        let figure = self.metric.figure();
        let last_day = start.checked_sub(jiff::Span::new().days(1)).unwrap_or(start);
        match self.window {
            SpendWindow::Lifetime => 0,
            SpendWindow::CalendarYear => state.sum_months(figure, last_day.first_of_year(), last_day),
            SpendWindow::Rolling12Months => {
                let from = last_day.first_of_month().checked_sub(jiff::Span::new().months(11)).unwrap_or(last_day);
                state.sum_months(figure, from, last_day)
            }
        }
    }

    pub(crate) fn validate(&self, issues: &mut Vec<ValidationIssue>) {
        let mut issue = |path: String, message: String| issues.push(ValidationIssue { path, message });
        if self.levels.is_empty() || self.levels.len() > LEVELS_MAX {
            issue("tiers.levels".into(), format!("must hold 1 to {LEVELS_MAX} levels"));
        }
        for (index, level) in self.levels.iter().enumerate() {
            let path = format!("tiers.levels[{index}]");
            let id_ok = !level.id.is_empty()
                && level.id.len() <= 64
                && level.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !id_ok {
                issue(format!("{path}.id"), "must be 1 to 64 letters, digits or - _ .".into());
            }
            if let Some(first) = self.levels[..index].iter().position(|l| l.id == level.id) {
                issue(format!("{path}.id"), format!("duplicate of tiers.levels[{first}].id {:?}", level.id));
            }
            if level.name.trim().is_empty() {
                issue(format!("{path}.name"), "must not be empty".into());
            }
            if level.threshold < 0 {
                issue(format!("{path}.threshold"), "must not be negative".into());
            }
            if let Some(previous) = index.checked_sub(1).map(|i| &self.levels[i]) {
                if level.threshold <= previous.threshold {
                    issue(
                        format!("{path}.threshold"),
                        format!(
                            "overlaps {:?}: thresholds must rise from level to level ({} is not above {})",
                            previous.id, level.threshold, previous.threshold
                        ),
                    );
                }
            }
            if let Some(m) = level.benefits.earn_multiplier_percent.filter(|m| !(101..=1_000).contains(m)) {
                issue(format!("{path}.benefits.earn_multiplier_percent"), format!("{m}: must be 101 to 1000"));
            }
            if let Some(d) = level.benefits.discount_percent.filter(|d| !(1..=100).contains(d)) {
                issue(format!("{path}.benefits.discount_percent"), format!("{d}: must be 1 to 100"));
            }
        }
        if !(0..=366).contains(&self.downgrade.grace_days) {
            issue("tiers.downgrade.grace_days".into(), "must be 0 to 366".into());
        }
    }
}

impl Program {
    /// The program as it applies to a member of `tier`: the tier's earn multiplier and discount
    /// added as a rule and a discount. Borrowed unchanged when the tier brings neither.
    pub fn for_tier(&self, tier: Option<&str>) -> Cow<'_, Program> {
        let Some(level) = self.tiers.as_ref().zip(tier).and_then(|(tiers, tier)| tiers.level(tier)) else {
            return Cow::Borrowed(self);
        };
        let benefits = &level.benefits;
        if benefits.earn_multiplier_percent.is_none() && benefits.discount_percent.is_none() {
            return Cow::Borrowed(self);
        }
        let mut program = self.clone();
        if let Some(percent) = benefits.earn_multiplier_percent {
            program.earn_rules.push(EarnRule {
                id: format!("tier.{}", level.id),
                name: format!("{}: {percent}% points", level.name),
                condition: Condition::Always,
                effect: Effect::MultiplierPercent(percent),
                priority: i32::MIN,
                exclusive: false,
                caps: Default::default(),
                active: None,
            });
        }
        if let Some(percent) = benefits.discount_percent {
            program.discounts.push(Discount {
                id: format!("tier.{}", level.id),
                name: format!("{}: {percent}% off", level.name),
                condition: Condition::Always,
                kind: DiscountKind::Percent(percent),
                stack: Stacking::Best,
            });
        }
        Cow::Owned(program)
    }
}

impl MemberState {
    /// Moves the member up if the metric now reaches a higher level than the tier held. Returns
    /// the change.
    pub fn upgrade_if_qualified(&mut self, program: &Program, at: Timestamp) -> Option<TierChange> {
        let tiers = program.tiers.as_ref()?;
        let value = tiers.metric(program, self, at);
        let qualified = tiers.qualified(value)?;
        let current = tiers.rank(self.tier_at(at));
        if current.is_some_and(|rank| rank >= qualified) {
            return None;
        }
        let today = at.to_zoned(program.tz()).date();
        let change = self.set_tier(Some(&tiers.levels[qualified].id), at, "qualified");
        // Earned in this window: the next review is at its end.
        self.tier_reviewed = tiers.window_start(today);
        Some(change)
    }

    /// The last of the changes `review_tiers` makes (kept for callers that expect one review).
    pub fn review_tier(&mut self, program: &Program, at: Timestamp) -> Option<TierChange> {
        self.review_tiers(program, at).pop()
    }

    /// Everything due for the member's tier at `at`, in the order it fell due: every review of a
    /// window boundary passed since the last one done (a server down over several month ends
    /// reviews each in turn, so a rolling window drops a level per missed review as it would have
    /// live), and the end of an admin's assignment whose date passed. Returns the changes, oldest
    /// first; doing it again at the same `at` changes nothing.
    pub fn review_tiers(&mut self, program: &Program, at: Timestamp) -> Vec<TierChange> {
        let mut changes = Vec::new();
        let Some(tiers) = program.tiers.as_ref() else { return changes };
        let today = at.to_zoned(program.tz()).date();
        if let Some(due) = tiers.review_due(today) {
            let mut next = match self.tier_reviewed {
                Some(done) if done >= due => None,
                // The window after the one last reviewed (a window's end is the next one's start).
                Some(done) => tiers.window_end(done).filter(|start| *start <= due),
                None => Some(due),
            };
            while let Some(start) = next {
                let grace_over = start.checked_add(jiff::Span::new().days(tiers.downgrade.grace_days)).unwrap_or(start);
                let review_at = grace_over.to_zoned(program.tz()).map(|z| z.timestamp()).unwrap_or(at).min(at);
                changes.extend(self.end_manual_tier(program, review_at));
                changes.extend(self.review_window(tiers, start, review_at));
                next = tiers.window_end(start).filter(|after| *after <= due);
            }
        }
        changes.extend(self.end_manual_tier(program, at));
        changes
    }

    /// The review for the window starting `due`, at `at`: keep the level the closed window
    /// qualifies for, dropping at most `downgrade.max_levels`. An admin's assignment holding at
    /// `at` is left alone.
    fn review_window(&mut self, tiers: &TierProgram, due: Date, at: Timestamp) -> Option<TierChange> {
        self.tier_reviewed = Some(self.tier_reviewed.map_or(due, |done| done.max(due)));
        let held = self.tier.as_ref()?;
        if held.manual && held.until.is_none_or(|until| at < until) {
            return None;
        }
        let current = tiers.rank(self.tier_at(at))?;
        let closed = tiers.qualified(tiers.closed_window_metric(self, due));
        if closed.is_some_and(|closed| closed >= current) {
            return None;
        }
        // The lowest rank one review may reach; None: the member may lose the tier altogether.
        let next = match current.checked_sub(tiers.downgrade.max_levels as usize) {
            Some(lowest) => Some(closed.map_or(lowest, |closed| closed.max(lowest))),
            None => closed,
        };
        if next == Some(current) {
            return None;
        }
        let id = next.map(|rank| tiers.levels[rank].id.clone());
        Some(self.set_tier(id.as_deref(), at, "review"))
    }

    /// Ends an admin's assignment whose end date is at or before `at`: the member falls back to
    /// the level their metric qualifies for when it ended (the better of the window then running
    /// and the window closed before it, since a level earned in the closed window is kept until a
    /// review), as a tier change dated at the assignment's end with reason `manual_ended`. The
    /// tiers job calls it through `review_tiers`, and a purchase before the job ran does too.
    pub fn end_manual_tier(&mut self, program: &Program, at: Timestamp) -> Option<TierChange> {
        let tiers = program.tiers.as_ref()?;
        let held = self.tier.as_ref().filter(|t| t.manual)?;
        let until = held.until.filter(|until| *until <= at)?;
        let from = held.tier.clone();
        let day = until.to_zoned(program.tz()).date();
        let running = tiers.qualified(tiers.metric(program, self, until));
        let closed = tiers.window_start(day).and_then(|start| tiers.qualified(tiers.closed_window_metric(self, start)));
        let level = running.max(closed).map(|rank| tiers.levels[rank].id.clone());
        if let Some(start) = tiers.window_start(day) {
            self.tier_reviewed = Some(self.tier_reviewed.map_or(start, |done| done.max(start)));
        }
        self.tier = level.clone().map(|tier| TierAssignment { tier, since: until, until: None, manual: false });
        let change = TierChange { at: until, from: Some(from), to: level, reason: "manual_ended".into() };
        self.push_tier_change(change.clone());
        Some(change)
    }

    fn set_tier(&mut self, tier: Option<&str>, at: Timestamp, reason: &str) -> TierChange {
        let from = self.tier_at(at).map(str::to_string);
        self.tier = tier.map(|tier| TierAssignment { tier: tier.to_string(), since: at, until: None, manual: false });
        let change = TierChange { at, from, to: tier.map(str::to_string), reason: reason.into() };
        self.push_tier_change(change.clone());
        change
    }
}
