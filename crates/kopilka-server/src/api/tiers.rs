//! A member's tier and the way to the next one.

use axum::extract::{Path, State};
use axum::Json;
use jiff::civil::Date;
use jiff::Timestamp;
use kopilka_core::member_state::{SpendWindow, TierChange};
use kopilka_core::tiers::{Benefits, TierMetric};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::auth::{Caller, READERS};
use crate::error::{ApiError, Problem};

#[derive(Debug, Serialize, ToSchema)]
pub struct TierProgress {
    pub member_id: i64,
    /// The tier held now, if any.
    pub tier: Option<HeldTier>,
    #[schema(value_type = String)]
    pub metric: TierMetric,
    #[schema(value_type = String)]
    pub window: SpendWindow,
    /// The metric over the current window so far.
    pub value: i64,
    /// The day of the next review: the current window's end plus the grace days (none for a
    /// lifetime window).
    #[schema(value_type = Option<String>, format = Date)]
    pub review_on: Option<Date>,
    /// The next level up and what is left to reach it.
    pub next: Option<Goal>,
    /// What is left to keep the level held at the next review.
    pub keep: Option<Goal>,
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<TierChange>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeldTier {
    pub id: String,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub since: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<Timestamp>,
    pub manual: bool,
    #[schema(value_type = Object)]
    pub benefits: Benefits,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Goal {
    pub id: String,
    pub name: String,
    pub threshold: i64,
    pub left: i64,
}

#[utoipa::path(get, path = "/v1/members/{id}/tier", tag = "members",
    responses((status = 200, body = TierProgress), (status = 404, body = Problem, description = "member_not_found, tiers_not_configured")))]
pub async fn progress(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<TierProgress>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let member = super::member_or_404(&state, tenant, id).await?;
    let (_, _, program) = state
        .store
        .program(tenant, None)
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", "the tenant has no program yet"))?;
    let tiers = program
        .tiers
        .as_ref()
        .ok_or_else(|| ApiError::not_found("tiers_not_configured", "the program has no tiers"))?;
    let now = state.clock.now();
    let today = now.to_zoned(program.tz_or_utc()).date();
    let value = tiers.metric(&program, &member.state, now);
    let held = member.state.tier_at(now).and_then(|id| tiers.level(id));
    let rank = tiers.rank(held.map(|l| l.id.as_str()));
    let goal = |index: usize| {
        let level = &tiers.levels[index];
        Goal {
            id: level.id.clone(),
            name: level.name.clone(),
            threshold: level.threshold,
            left: (level.threshold - value).max(0),
        }
    };
    let next = match rank {
        Some(rank) => (rank + 1 < tiers.levels.len()).then(|| goal(rank + 1)),
        None => (!tiers.levels.is_empty()).then(|| goal(0)),
    };
    let assignment = member.state.tier.as_ref();
    let tier = held.zip(assignment).map(|(level, assignment)| HeldTier {
        id: level.id.clone(),
        name: level.name.clone(),
        since: assignment.since,
        until: assignment.until,
        manual: assignment.manual,
        benefits: level.benefits.clone(),
    });
    let review_on = tiers.next_review(today, member.state.tier_reviewed);
    Ok(Json(TierProgress {
        member_id: member.id.0,
        tier,
        metric: tiers.metric,
        window: tiers.window,
        value,
        review_on,
        next,
        keep: rank.filter(|_| review_on.is_some()).map(goal),
        history: member.state.tier_history.clone(),
    }))
}
