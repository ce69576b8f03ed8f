//! Event bonuses: points a member gets for something other than a purchase, namely enrolling,
//! a birthday, the anniversary of the first purchase, and custom events a shop reports (a review
//! written, an app installed), plus the reminders sent before points expire.
//!
//! The program's `event_bonuses` section says what each is worth; [`EventMarks`], kept in the
//! member's state, remembers what was already given or sent, so the daily jobs can run any number
//! of times, and after any downtime, and still give each bonus once. Every date is a calendar date
//! in the program's time zone: a birthday starts in Moscow three hours before it starts in UTC.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::ledger::Credit;
use crate::purchase::{Outcome, POINTS_MAX};
use crate::rules::CapPeriod;
use crate::{Account, DomainError, DomainEvent, IdAllocator, LotState, MemberLedger, MovementKind, Program};
use crate::{MemberId, ValidationIssue};

/// The widest window around a birthday or anniversary, in days each way: a month is generous,
/// and it bounds the dates the job looks members up by.
pub const WINDOW_DAYS_MAX: u32 = 31;
/// The most custom event types a program may reward.
pub const EVENT_RULES_MAX: usize = 100;
/// The most expiry reminder thresholds.
pub const REMINDER_THRESHOLDS_MAX: usize = 5;
/// The furthest ahead a reminder may warn, in days.
pub const REMINDER_DAYS_MAX: u32 = 366;
/// The longest event type name.
pub const EVENT_TYPE_LEN_MAX: usize = 64;

/// The program's event bonuses (the `event_bonuses` section).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBonuses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signup: Option<SignupBonus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday: Option<DateBonus>,
    /// The anniversary of the member's first purchase, from the first one on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anniversary: Option<DateBonus>,
    /// Points for custom events sent through `POST /v1/members/{id}/events`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<EventRule>,
    /// Days before points expire at which the member is reminded, e.g. `[30, 7]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expiry_reminders_days: Vec<u32>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupBonus {
    pub points: i64,
    /// Spendable at once rather than after the program's pending days: a welcome gift has no
    /// purchase that could be returned.
    #[serde(default)]
    pub available_at_once: bool,
}

/// A bonus once a year around a date: given on any day from `days_before` the date to
/// `days_after` it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateBonus {
    pub points: i64,
    #[serde(default)]
    pub days_before: u32,
    #[serde(default)]
    pub days_after: u32,
}

/// Points for a custom event type, with limits per calendar period.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    /// The event type, e.g. `review_written`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub points: i64,
    /// Every limit applies: at most `count` rewarded events per `period`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<EventLimit>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLimit {
    pub count: u32,
    pub period: EventPeriod,
}

/// A calendar period in the program's time zone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventPeriod {
    Day,
    /// Monday to Sunday.
    Week,
    Month,
    Year,
}

impl EventPeriod {
    /// The first day of the period holding `date`.
    pub fn start(&self, date: Date) -> Date {
        match self {
            EventPeriod::Day => date,
            EventPeriod::Week => CapPeriod::Week.start(date),
            EventPeriod::Month => CapPeriod::Month.start(date),
            EventPeriod::Year => CapPeriod::Year.start(date),
        }
    }
}

impl EventBonuses {
    /// Adds every problem of the section to `issues`, each with its path.
    pub fn validate(&self, issues: &mut Vec<ValidationIssue>) {
        let mut issue = |path: String, message: String| issues.push(ValidationIssue { path, message });
        let points_ok = |points: i64| (1..=POINTS_MAX).contains(&points);
        let points_message = format!("must be between 1 and {POINTS_MAX}");
        if let Some(signup) = &self.signup {
            if !points_ok(signup.points) {
                issue("event_bonuses.signup.points".into(), points_message.clone());
            }
        }
        for (name, bonus) in [("birthday", &self.birthday), ("anniversary", &self.anniversary)] {
            let Some(bonus) = bonus else { continue };
            if !points_ok(bonus.points) {
                issue(format!("event_bonuses.{name}.points"), points_message.clone());
            }
            for (field, days) in [("days_before", bonus.days_before), ("days_after", bonus.days_after)] {
                if days > WINDOW_DAYS_MAX {
                    issue(format!("event_bonuses.{name}.{field}"), format!("must be at most {WINDOW_DAYS_MAX}"));
                }
            }
        }
        if self.rules.len() > EVENT_RULES_MAX {
            issue("event_bonuses.rules".into(), format!("at most {EVENT_RULES_MAX} rules"));
        }
        let mut seen = BTreeSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let path = format!("event_bonuses.rules[{index}]");
            if let Err(message) = check_event_type(&rule.event_type) {
                issue(format!("{path}.type"), message);
            } else if !seen.insert(rule.event_type.as_str()) {
                issue(format!("{path}.type"), format!("{:?} has a rule already", rule.event_type));
            }
            if !points_ok(rule.points) {
                issue(format!("{path}.points"), points_message.clone());
            }
            let mut periods = BTreeSet::new();
            for (limit_index, limit) in rule.limits.iter().enumerate() {
                if limit.count == 0 {
                    issue(format!("{path}.limits[{limit_index}].count"), "must be at least 1".into());
                }
                if !periods.insert(limit.period) {
                    issue(format!("{path}.limits[{limit_index}].period"), "one limit per period".into());
                }
            }
        }
        let days = &self.expiry_reminders_days;
        if days.len() > REMINDER_THRESHOLDS_MAX {
            issue("event_bonuses.expiry_reminders_days".into(), format!("at most {REMINDER_THRESHOLDS_MAX}"));
        }
        for (index, day) in days.iter().enumerate() {
            if !(1..=REMINDER_DAYS_MAX).contains(day) {
                issue(
                    format!("event_bonuses.expiry_reminders_days[{index}]"),
                    format!("must be 1 to {REMINDER_DAYS_MAX}"),
                );
            } else if days[..index].contains(day) {
                issue(format!("event_bonuses.expiry_reminders_days[{index}]"), "repeated".into());
            }
        }
    }

    pub fn rule(&self, event_type: &str) -> Option<&EventRule> {
        self.rules.iter().find(|rule| rule.event_type == event_type)
    }
}

/// An event type: 1 to [`EVENT_TYPE_LEN_MAX`] lowercase letters, digits or `_`.
pub fn check_event_type(event_type: &str) -> Result<(), String> {
    let ok = !event_type.is_empty()
        && event_type.len() <= EVENT_TYPE_LEN_MAX
        && event_type.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("{event_type:?}: 1 to {EVENT_TYPE_LEN_MAX} lowercase letters, digits or _"))
    }
}

/// What a member was already given or sent, so each is given once.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMarks {
    /// The year whose birthday bonus was given last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday_year: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anniversary_year: Option<i16>,
    /// Rewarded custom events per type and period: (period start, count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub counters: BTreeMap<String, BTreeMap<EventPeriod, (Date, u32)>>,
    /// Reminders sent per expiry date ("2027-01-15"): the thresholds (in days) already covered.
    /// Dates that have passed are dropped, so this stays as small as the lots still open.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reminders: BTreeMap<String, BTreeSet<u32>>,
}

impl EventMarks {
    pub fn is_empty(&self) -> bool {
        *self == EventMarks::default()
    }

    /// Takes in the marks of a member merged into this one: a bonus either of them had this year
    /// counts as given, and event counts of the same period add up, so a merge resets no limit.
    pub fn absorb(&mut self, other: &EventMarks) {
        self.birthday_year = self.birthday_year.max(other.birthday_year);
        self.anniversary_year = self.anniversary_year.max(other.anniversary_year);
        for (event_type, theirs) in &other.counters {
            let mine = self.counters.entry(event_type.clone()).or_default();
            for (period, (start, count)) in theirs {
                match mine.get_mut(period) {
                    Some((my_start, my_count)) if my_start == start => *my_count += count,
                    Some((my_start, _)) if *my_start > *start => {}
                    _ => {
                        mine.insert(*period, (*start, *count));
                    }
                }
            }
        }
    }
}

/// The date a yearly bonus falls on in `year`: 29 February is celebrated on 28 February in years
/// that have none.
pub fn anniversary_in(month: i8, day: i8, year: i16) -> Option<Date> {
    Date::new(year, month, day)
        .ok()
        .or_else(|| (month == 2 && day == 29).then(|| Date::new(year, 2, 28).ok()).flatten())
}

/// The year whose bonus around (`month`, `day`) is due `today`, unless `given` says it was given.
/// A window may cross a year end, so the years either side of today's are looked at too.
pub fn yearly_due(month: i8, day: i8, bonus: &DateBonus, today: Date, given: Option<i16>) -> Option<i16> {
    let year = today.year();
    [year.saturating_sub(1), year, year.saturating_add(1)].into_iter().find(|&candidate| {
        if given.is_some_and(|given| given >= candidate) {
            return false;
        }
        let Some(date) = anniversary_in(month, day, candidate) else { return false };
        let from = date.checked_sub((bonus.days_before as i64).days()).unwrap_or(date);
        let to = date.checked_add((bonus.days_after as i64).days()).unwrap_or(date);
        from <= today && today <= to
    })
}

/// How many days after its window a birthday bonus the `events` job missed is still given. Jobs
/// catch up after downtime, but a birthday greeting weeks late reads as a mistake rather than a
/// gift, so the bound is a week: enough for a weekend outage or a frozen deploy, short enough that
/// the bonus still belongs to the birthday (and keeps the job's list of calendar days short).
pub const BIRTHDAY_CATCH_UP_DAYS: u32 = 7;

/// The birthday bonus due today, if any: the year it is for. Inside the window, always; up to
/// [`BIRTHDAY_CATCH_UP_DAYS`] after it, only for a member enrolled before the window closed (one
/// the job would have rewarded had it run), so joining after a birthday brings no bonus for it.
/// `birthday_year` in the marks makes it once a year either way.
pub fn birthday_due(
    program: &Program,
    birth_date: Date,
    marks: &EventMarks,
    enrolled_at: Timestamp,
    now: Timestamp,
) -> Option<i16> {
    let bonus = program.event_bonuses.as_ref()?.birthday.as_ref()?;
    let today = now.to_zoned(program.tz()).date();
    let (month, day) = (birth_date.month(), birth_date.day());
    if let Some(year) = yearly_due(month, day, bonus, today, marks.birthday_year) {
        return Some(year);
    }
    let late = DateBonus { days_after: bonus.days_after.saturating_add(BIRTHDAY_CATCH_UP_DAYS), ..bonus.clone() };
    let year = yearly_due(month, day, &late, today, marks.birthday_year)?;
    let window_end = anniversary_in(month, day, year)?.checked_add((bonus.days_after as i64).days()).ok()?;
    (enrolled_at.to_zoned(program.tz()).date() <= window_end).then_some(year)
}

/// The anniversary bonus due today, if any: never before the first anniversary.
pub fn anniversary_due(
    program: &Program,
    first_purchase_at: Timestamp,
    marks: &EventMarks,
    now: Timestamp,
) -> Option<i16> {
    let bonus = program.event_bonuses.as_ref()?.anniversary.as_ref()?;
    let today = now.to_zoned(program.tz()).date();
    let first = first_purchase_at.to_zoned(program.tz()).date();
    let given = Some(marks.anniversary_year.unwrap_or(first.year()).max(first.year()));
    yearly_due(first.month(), first.day(), bonus, today, given)
}

/// What a custom event earns: the rule's points, or none when a limit of the period is reached.
/// `Err` when the program rewards no such event type.
pub fn event_points(
    program: &Program,
    marks: &EventMarks,
    event_type: &str,
    now: Timestamp,
) -> Result<i64, DomainError> {
    let rule = program.event_bonuses.as_ref().and_then(|b| b.rule(event_type)).ok_or_else(|| {
        DomainError::invalid("type", format!("the program has no rule for events of type {event_type:?}"))
    })?;
    let today = now.to_zoned(program.tz()).date();
    let counters = marks.counters.get(event_type);
    let reached = rule.limits.iter().any(|limit| {
        let start = limit.period.start(today);
        let count = counters.and_then(|c| c.get(&limit.period)).filter(|(s, _)| *s == start).map_or(0, |(_, n)| *n);
        count >= limit.count
    });
    Ok(if reached { 0 } else { rule.points })
}

/// Counts a rewarded custom event against its rule's limits.
pub fn count_event(program: &Program, marks: &mut EventMarks, event_type: &str, now: Timestamp) {
    let Some(rule) = program.event_bonuses.as_ref().and_then(|b| b.rule(event_type)) else { return };
    if rule.limits.is_empty() {
        return;
    }
    let today = now.to_zoned(program.tz()).date();
    let counters = marks.counters.entry(event_type.to_string()).or_default();
    for limit in &rule.limits {
        let start = limit.period.start(today);
        let counter = counters.entry(limit.period).or_insert((start, 0));
        if counter.0 != start {
            *counter = (start, 0);
        }
        counter.1 += 1;
    }
}

/// Credits a bonus from `Issued`: checks first, then catches the ledger up and credits a lot that
/// expires by the program's policy. `kind` names the bonus in the event (`signup`, `birthday`…).
pub fn decide_bonus(
    program: &Program,
    ledger: &mut MemberLedger,
    bonus: BonusGrant,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, DomainError> {
    if !(1..=POINTS_MAX).contains(&bonus.points) {
        return Err(DomainError::invalid("points", format!("must be between 1 and {POINTS_MAX}")));
    }
    if bonus.reason.trim().is_empty() || bonus.reason.chars().count() > crate::purchase::TEXT_LEN_MAX {
        return Err(DomainError::invalid("reason", "must be 1 to 200 characters"));
    }
    let mut outcome = Outcome::default();
    for movement in ledger.catch_up(now, ids) {
        outcome.events.push(DomainEvent::of_movement(&movement, None));
        outcome.movements.push(movement);
    }
    let available_from = if bonus.available_at_once { now } else { program.available_from(now) };
    let expires_at = program.expires_at(now).max(available_from.checked_add(1.second()).unwrap_or(Timestamp::MAX));
    let credit = Credit {
        currency: program.point_currency.clone(),
        amount: bonus.points,
        available_from,
        expires_at,
        purchase_id: None,
    };
    let movement = ledger.credit(ids, MovementKind::Earn, Account::Issued, credit, now, Some(bonus.reason.clone()));
    movement.assert_balanced();
    outcome.events.push(DomainEvent::of_movement(&movement, Some(expires_at)));
    outcome.events.push(DomainEvent::BonusGranted {
        member_id: ledger.member_id,
        bonus: bonus.kind.to_string(),
        points: bonus.points,
        reason: bonus.reason,
        expires_at: (expires_at != Timestamp::MAX).then_some(expires_at),
    });
    outcome.movements.push(movement);
    Ok(outcome)
}

/// A bonus to credit.
#[derive(Debug, Clone)]
pub struct BonusGrant {
    /// `signup`, `birthday`, `anniversary` or `event`.
    pub kind: &'static str,
    pub points: i64,
    /// The movement's reason: `signup`, `birthday 2026`, `event review_written`.
    pub reason: String,
    pub available_at_once: bool,
}

/// One reminder due: `points` of the member's expire on `expires_on`, the nearest at `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryReminder {
    pub expires_on: Date,
    pub expires_at: Timestamp,
    pub points: i64,
    pub days: u32,
}

/// The reminders due for a member's lots at `now`, marking them sent in `marks`. For each expiry
/// date, the nearest threshold reached is sent once; thresholds passed while the job was down are
/// marked without a message of their own, as a "30 days left" arriving with 5 left would mislead.
pub fn expiry_reminders(
    program: &Program,
    ledger: &MemberLedger,
    marks: &mut EventMarks,
    now: Timestamp,
) -> Vec<ExpiryReminder> {
    let Some(bonuses) = program.event_bonuses.as_ref() else { return Vec::new() };
    ledger.assert_complete("expiry reminders");
    let tz = program.tz();
    let today = now.to_zoned(tz.clone()).date();
    marks.reminders.retain(|date, _| date.parse::<Date>().is_ok_and(|date| date >= today));
    let mut by_date: BTreeMap<Date, (Timestamp, i64)> = BTreeMap::new();
    for lot in ledger.lots.iter().filter(|lot| lot.currency == program.point_currency && lot.remaining > 0) {
        if !matches!(lot.state_at(now), LotState::Available | LotState::Pending) || lot.expires_at == Timestamp::MAX {
            continue;
        }
        let date = lot.expires_at.to_zoned(tz.clone()).date();
        let entry = by_date.entry(date).or_insert((lot.expires_at, 0));
        entry.0 = entry.0.min(lot.expires_at);
        entry.1 += lot.remaining;
    }
    let mut due = Vec::new();
    for (date, (expires_at, points)) in by_date {
        let reached: BTreeSet<u32> = bonuses
            .expiry_reminders_days
            .iter()
            .copied()
            .filter(|days| now.checked_add((*days as i64 * 24).hours()).is_ok_and(|horizon| expires_at <= horizon))
            .collect();
        let Some(&nearest) = reached.first() else { continue };
        let sent = marks.reminders.entry(date.to_string()).or_default();
        if !sent.contains(&nearest) {
            due.push(ExpiryReminder { expires_on: date, expires_at, points, days: nearest });
        }
        sent.extend(reached);
    }
    due
}

/// The event a reminder becomes.
pub fn reminder_event(member_id: MemberId, reminder: &ExpiryReminder) -> DomainEvent {
    DomainEvent::PointsExpiring {
        member_id,
        points: reminder.points,
        expires_at: reminder.expires_at,
        days: reminder.days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> Date {
        text.parse().unwrap()
    }

    fn bonus(days_before: u32, days_after: u32) -> DateBonus {
        DateBonus { points: 100, days_before, days_after }
    }

    #[test]
    fn a_29_february_birthday_is_kept_on_28_february_in_common_years() {
        let on_the_day = bonus(0, 0);
        assert_eq!(yearly_due(2, 29, &on_the_day, date("2027-02-28"), None), Some(2027));
        assert_eq!(yearly_due(2, 29, &on_the_day, date("2027-03-01"), None), None);
        assert_eq!(yearly_due(2, 29, &on_the_day, date("2028-02-28"), Some(2027)), None);
        assert_eq!(yearly_due(2, 29, &on_the_day, date("2028-02-29"), Some(2027)), Some(2028));
    }

    #[test]
    fn a_window_crosses_the_year_end_and_gives_once_per_year() {
        let window = bonus(5, 3);
        // A 2 January birthday: the window opens on 28 December of the year before.
        assert_eq!(yearly_due(1, 2, &window, date("2026-12-27"), None), None);
        assert_eq!(yearly_due(1, 2, &window, date("2026-12-28"), None), Some(2027));
        assert_eq!(yearly_due(1, 2, &window, date("2027-01-05"), Some(2027)), None);
        // A 30 December birthday given late, in the new year, still counts for the old one.
        assert_eq!(yearly_due(12, 30, &window, date("2027-01-02"), Some(2025)), Some(2026));
        assert_eq!(yearly_due(12, 30, &window, date("2027-01-02"), Some(2026)), None);
    }

    #[test]
    fn event_limits_count_per_calendar_period() {
        let mut program = Program::example();
        program.time_zone = "UTC".into();
        program.event_bonuses = Some(EventBonuses {
            rules: vec![EventRule {
                event_type: "review_written".into(),
                points: 50,
                limits: vec![
                    EventLimit { count: 1, period: EventPeriod::Day },
                    EventLimit { count: 2, period: EventPeriod::Week },
                ],
            }],
            ..EventBonuses::default()
        });
        let mut marks = EventMarks::default();
        // 2026-11-30 is a Monday.
        let monday: Timestamp = "2026-11-30T10:00:00Z".parse().unwrap();
        assert_eq!(event_points(&program, &marks, "review_written", monday).unwrap(), 50);
        count_event(&program, &mut marks, "review_written", monday);
        assert_eq!(event_points(&program, &marks, "review_written", monday).unwrap(), 0, "one a day");
        let tuesday = monday.checked_add(24.hours()).unwrap();
        count_event(&program, &mut marks, "review_written", tuesday);
        let wednesday = tuesday.checked_add(24.hours()).unwrap();
        assert_eq!(event_points(&program, &marks, "review_written", wednesday).unwrap(), 0, "two a week");
        let next_monday = monday.checked_add((7 * 24).hours()).unwrap();
        assert_eq!(event_points(&program, &marks, "review_written", next_monday).unwrap(), 50);
        assert!(event_points(&program, &marks, "app_installed", monday).is_err());
    }

    #[test]
    fn the_first_anniversary_comes_a_year_after_the_first_purchase_in_the_programs_time_zone() {
        let mut program = Program::example();
        program.event_bonuses = Some(EventBonuses {
            anniversary: Some(DateBonus { points: 10, days_before: 0, days_after: 0 }),
            ..EventBonuses::default()
        });
        let marks = EventMarks::default();
        // 22:00 UTC on 31 December is already 1 January in Moscow.
        let first: Timestamp = "2026-12-31T22:00:00Z".parse().unwrap();
        assert_eq!(anniversary_due(&program, first, &marks, first), None, "not on the day itself");
        let year_later: Timestamp = "2027-12-31T21:30:00Z".parse().unwrap();
        assert_eq!(anniversary_due(&program, first, &marks, year_later), Some(2028));
        let given = EventMarks { anniversary_year: Some(2028), ..EventMarks::default() };
        assert_eq!(anniversary_due(&program, first, &given, year_later), None);
    }

    #[test]
    fn reminders_cover_each_threshold_of_each_expiry_date_once() {
        let mut program = Program::example();
        program.time_zone = "UTC".into();
        program.event_bonuses = Some(EventBonuses { expiry_reminders_days: vec![30, 7], ..EventBonuses::default() });
        let mut ids = IdAllocator::default();
        let mut ledger = MemberLedger::new(MemberId(1), Vec::new());
        let earned: Timestamp = "2026-01-15T10:00:00Z".parse().unwrap();
        for points in [5, 7] {
            let grant = BonusGrant { kind: "event", points, reason: "test".into(), available_at_once: true };
            decide_bonus(&program, &mut ledger, grant, earned, &mut ids).unwrap();
        }
        let mut marks = EventMarks::default();
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        assert!(expiry_reminders(&program, &ledger, &mut marks, at("2026-12-16T09:00:00Z")).is_empty());
        let due = expiry_reminders(&program, &ledger, &mut marks, at("2026-12-16T10:00:00Z"));
        assert_eq!(due.iter().map(|r| (r.days, r.points)).collect::<Vec<_>>(), [(30, 12)], "one per date");
        assert!(expiry_reminders(&program, &ledger, &mut marks, at("2026-12-20T10:00:00Z")).is_empty());
        let due = expiry_reminders(&program, &ledger, &mut marks, at("2027-01-10T10:00:00Z"));
        assert_eq!(due.iter().map(|r| r.days).collect::<Vec<_>>(), [7]);
        assert!(expiry_reminders(&program, &ledger, &mut marks, at("2027-01-11T10:00:00Z")).is_empty());
        // Past the date, nothing is due and the marks are dropped.
        assert!(expiry_reminders(&program, &ledger, &mut marks, at("2027-01-16T10:00:00Z")).is_empty());
        assert!(marks.reminders.is_empty());
    }

    #[test]
    fn validation_names_each_problem_by_its_path() {
        let section = EventBonuses {
            birthday: Some(DateBonus { points: 0, days_before: 40, days_after: 0 }),
            rules: vec![
                EventRule { event_type: "Review Written".into(), points: 5, limits: vec![] },
                EventRule {
                    event_type: "ok".into(),
                    points: 5,
                    limits: vec![EventLimit { count: 0, period: EventPeriod::Day }],
                },
            ],
            expiry_reminders_days: vec![30, 0, 30],
            ..EventBonuses::default()
        };
        let mut issues = Vec::new();
        section.validate(&mut issues);
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "event_bonuses.birthday.points",
                "event_bonuses.birthday.days_before",
                "event_bonuses.rules[0].type",
                "event_bonuses.rules[1].limits[0].count",
                "event_bonuses.expiry_reminders_days[1]",
                "event_bonuses.expiry_reminders_days[2]",
            ]
        );
    }
}
