//! Event bonuses and expiry reminders in the writer: the sign-up bonus when a member enrols,
//! custom events sent through the API, and the two daily jobs, `events` (birthdays and
//! anniversaries of the first purchase) and `reminders` (points about to expire).
//!
//! The jobs follow the `tiers` job's shape: a store query narrows the members who might be due,
//! then a command per chunk goes through the writer, where the core decides from each member's
//! state what is really due and marks it given in the same transaction. Running a job again, or
//! after days of downtime, therefore gives nothing twice and misses nothing still in its window.

use jiff::{SignedDuration, Timestamp, ToSpan};
use kopilka_core::bonuses::{self, BonusGrant};
use kopilka_core::{DomainEvent, MemberId, TenantId};
use kopilka_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::Clock;
use crate::dto::{BalanceView, JobReport};
use crate::engine::{BatchState, Command};
use crate::error::ApiError;
use crate::jobs::{first_programs, submit_pages, CHUNK_MEMBERS_MAX};
use crate::writer::Writer;

/// How far in the past a custom event's `occurred_at` may be: long enough for an app that was
/// offline, short enough that the outbox does not fill with history.
const EVENT_AGE_MAX: SignedDuration = SignedDuration::from_hours(24 * 30);
/// How far in the future `occurred_at` may be: clocks drift.
const CLOCK_SKEW_MAX: SignedDuration = SignedDuration::from_mins(10);
/// The largest `attributes` object, serialized: events are notes, not documents.
const ATTRIBUTES_BYTES_MAX: usize = 4096;

/// A custom event about a member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomEventRequest {
    /// The event type, e.g. `review_written`; the program must have a rule for it.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub occurred_at: Option<Timestamp>,
    /// Anything the sender wants notifications to see, as a JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomEventResponse {
    pub member_id: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    /// The points the event gave: none when a limit of the period was reached.
    pub points: i64,
    pub limit_reached: bool,
    pub balance: BalanceView,
}

impl BatchState<'_> {
    /// Credits the program's sign-up bonus to a member just enrolled. A tenant without a program,
    /// or a program without the bonus, gives nothing; enrolling never fails for it.
    pub(crate) fn signup_bonus(&mut self, tenant: TenantId, member: MemberId) {
        let Ok(entry) = self.programs.get(tenant, None) else { return };
        let program = entry.program.clone();
        let Some(signup) = program.event_bonuses.as_ref().and_then(|b| b.signup.clone()) else { return };
        let grant = BonusGrant {
            kind: "signup",
            points: signup.points,
            reason: "signup".into(),
            available_at_once: signup.available_at_once,
        };
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let outcome =
            bonuses::decide_bonus(&program, ledger, grant, now, ids).expect("validated programs give valid bonuses");
        self.record(tenant, outcome);
    }

    /// A custom event: refused when the program has no rule for its type, otherwise recorded in
    /// the outbox with the points its rule gives (none past a limit).
    pub(crate) fn custom_event(
        &mut self,
        tenant: TenantId,
        member_id: MemberId,
        request: &CustomEventRequest,
    ) -> Result<crate::engine::Reply, ApiError> {
        let member = self.member(tenant, member_id)?;
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        bonuses::check_event_type(&request.event_type)
            .map_err(|detail| ApiError::bad_request("validation_failed", "type", detail))?;
        if program.event_bonuses.as_ref().and_then(|b| b.rule(&request.event_type)).is_none() {
            return Err(ApiError::Unprocessable {
                code: "unknown_event_type",
                detail: format!("the program has no rule for events of type {:?}", request.event_type),
                field: Some("type".into()),
            });
        }
        let occurred_at = request.occurred_at.unwrap_or(now);
        if occurred_at > now + CLOCK_SKEW_MAX {
            return Err(ApiError::bad_request("validation_failed", "occurred_at", "must not be in the future"));
        }
        if occurred_at < now - EVENT_AGE_MAX {
            return Err(ApiError::bad_request("validation_failed", "occurred_at", "must be within the last 30 days"));
        }
        let attributes = request.attributes.clone().unwrap_or_else(|| serde_json::json!({}));
        if !attributes.is_object() || attributes.to_string().len() > ATTRIBUTES_BYTES_MAX {
            return Err(ApiError::bad_request(
                "validation_failed",
                "attributes",
                format!("must be a JSON object of at most {ATTRIBUTES_BYTES_MAX} bytes"),
            ));
        }
        // Limits count events by the day they reach us, so a backdated event cannot slip into a
        // period whose count is no longer kept.
        let mut state = self.members[&(tenant, member)].state.clone();
        let points = bonuses::event_points(&program, &state.events, &request.event_type, now)?;
        if points > 0 {
            let grant = BonusGrant {
                kind: "event",
                points,
                reason: format!("event {}", request.event_type),
                available_at_once: true,
            };
            let (ledger, ids) = self.ledger(tenant, member);
            let outcome = bonuses::decide_bonus(&program, ledger, grant, now, ids)?;
            self.record(tenant, outcome);
            bonuses::count_event(&program, &mut state.events, &request.event_type, now);
            self.members.get_mut(&(tenant, member)).expect("resolved above").state = state;
            self.mark_state_dirty(tenant, member);
        }
        self.event(
            tenant,
            DomainEvent::CustomEvent {
                member_id: member,
                event_type: request.event_type.clone(),
                occurred_at,
                attributes,
                points,
            },
        );
        let balance = self.balance(tenant, member, &program);
        let response = CustomEventResponse {
            member_id: member.0,
            event_type: request.event_type.clone(),
            occurred_at,
            points,
            limit_reached: points == 0,
            balance,
        };
        Ok(crate::engine::Reply::json(201, &response))
    }

    /// Birthday and anniversary bonuses due at the batch's time for these members (the `events`
    /// job); `movements` in the answer counts bonuses given.
    pub(crate) fn yearly_bonuses(
        &mut self,
        tenant: TenantId,
        members: &[MemberId],
    ) -> Result<crate::engine::Reply, ApiError> {
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let mut given = 0;
        let Some(sections) = program.event_bonuses.clone() else {
            return Ok(crate::engine::Reply::json(
                200,
                &serde_json::json!({ "members": members.len(), "movements": 0 }),
            ));
        };
        for member in members {
            let Some(row) = self.members.get(&(tenant, *member)) else { continue };
            if row.merged_into.is_some() {
                continue;
            }
            let mut state = row.state.clone();
            let birthday = row
                .profile
                .birth_date
                .and_then(|date| bonuses::birthday_due(&program, date, &state.events, row.signup_at, now));
            let anniversary =
                state.stats.first_purchase_at.and_then(|at| bonuses::anniversary_due(&program, at, &state.events, now));
            let mut grants = Vec::new();
            if let (Some(year), Some(bonus)) = (birthday, &sections.birthday) {
                state.events.birthday_year = Some(year);
                grants.push(BonusGrant {
                    kind: "birthday",
                    points: bonus.points,
                    reason: format!("birthday {year}"),
                    available_at_once: true,
                });
            }
            if let (Some(year), Some(bonus)) = (anniversary, &sections.anniversary) {
                state.events.anniversary_year = Some(year);
                grants.push(BonusGrant {
                    kind: "anniversary",
                    points: bonus.points,
                    reason: format!("anniversary {year}"),
                    available_at_once: true,
                });
            }
            if grants.is_empty() {
                continue;
            }
            for grant in grants {
                let (ledger, ids) = self.ledger(tenant, *member);
                let outcome = bonuses::decide_bonus(&program, ledger, grant, now, ids)?;
                self.record(tenant, outcome);
                given += 1;
            }
            self.members.get_mut(&(tenant, *member)).expect("looked up above").state = state;
            self.mark_state_dirty(tenant, *member);
        }
        Ok(crate::engine::Reply::json(200, &serde_json::json!({ "members": members.len(), "movements": given })))
    }

    /// One `points_expiring` event per member, threshold and expiry date reached, never twice
    /// (the `reminders` job); `movements` in the answer counts reminders sent.
    pub(crate) fn expiry_reminders(
        &mut self,
        tenant: TenantId,
        members: &[MemberId],
    ) -> Result<crate::engine::Reply, ApiError> {
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let mut sent = 0;
        for member in members {
            let Some(row) = self.members.get(&(tenant, *member)) else { continue };
            if row.merged_into.is_some() {
                continue;
            }
            let mut state = row.state.clone();
            let ledger = self.ledger(tenant, *member).0.clone();
            let due = bonuses::expiry_reminders(&program, &ledger, &mut state.events, now);
            let row = self.members.get_mut(&(tenant, *member)).expect("looked up above");
            if row.state != state {
                row.state = state;
                self.mark_state_dirty(tenant, *member);
            }
            for reminder in &due {
                self.event(tenant, bonuses::reminder_event(*member, reminder));
                sent += 1;
            }
        }
        Ok(crate::engine::Reply::json(200, &serde_json::json!({ "members": members.len(), "movements": sent })))
    }
}

/// The `events` job: birthday and anniversary bonuses for every tenant whose program has them.
pub async fn run_events_job(
    store: &Store,
    writer: &Writer,
    clock: &dyn Clock,
    only: Option<TenantId>,
) -> Result<JobReport, ApiError> {
    let mut report = JobReport { job: "events".into(), members: 0, movements: 0 };
    for (tenant, program) in first_programs(store, only).await? {
        let Some(sections) = &program.event_bonuses else { continue };
        let today = clock.now().to_zoned(program.tz_or_utc()).date();
        // The calendar days whose bonus window holds today; a first purchase is looked up by its
        // UTC date, a day either side of the program's.
        let days_around = |bonus: &bonuses::DateBonus, slack: i64| {
            let mut days = Vec::new();
            for offset in -(bonus.days_before as i64) - slack..=bonus.days_after as i64 + slack {
                let Ok(date) = today.checked_sub(offset.days()) else { continue };
                days.push(format!("{:02}-{:02}", date.month(), date.day()));
                if date.month() == 2 && date.day() == 28 && !date.in_leap_year() {
                    days.push("02-29".into());
                }
            }
            days
        };
        // Birthdays a few days past their window too: those the job missed while it was down.
        let birthdays = sections
            .birthday
            .as_ref()
            .map(|b| {
                let late = bonuses::BIRTHDAY_CATCH_UP_DAYS;
                days_around(&bonuses::DateBonus { days_after: b.days_after.saturating_add(late), ..b.clone() }, 0)
            })
            .unwrap_or_default();
        let anniversaries = sections.anniversary.as_ref().map(|b| days_around(b, 1)).unwrap_or_default();
        let page =
            |after| store.members_with_yearly_dates(tenant, &birthdays, &anniversaries, after, CHUNK_MEMBERS_MAX);
        submit_pages(writer, tenant, &mut report, "movements", page, |members| Command::YearlyBonuses { members })
            .await?;
    }
    Ok(report)
}

/// The `reminders` job: `points_expiring` events for points that expire within the program's
/// largest threshold. `movements` in the report counts reminders sent.
pub async fn run_reminders_job(
    store: &Store,
    writer: &Writer,
    clock: &dyn Clock,
    only: Option<TenantId>,
) -> Result<JobReport, ApiError> {
    let mut report = JobReport { job: "reminders".into(), members: 0, movements: 0 };
    for (tenant, program) in first_programs(store, only).await? {
        let Some(days_max) = program.event_bonuses.as_ref().and_then(|b| b.expiry_reminders_days.iter().max()) else {
            continue;
        };
        let now = clock.now();
        let horizon = now + SignedDuration::from_hours(24 * *days_max as i64);
        let page = |after| store.members_with_points_expiring(tenant, horizon, after, CHUNK_MEMBERS_MAX);
        submit_pages(writer, tenant, &mut report, "movements", page, |members| Command::RemindExpiry { members })
            .await?;
    }
    Ok(report)
}
