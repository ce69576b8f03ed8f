//! The rewards catalogue over HTTP: rewards (admins), redeeming one (tills), the member's
//! redemptions, fulfilment and cancellation, and cashback payouts. The JSON shapes live here too.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use kopilka_core::rewards::{
    self, CashbackPayout, MemberFacts, PayoutId, PayoutStatus, RedemptionId, Reward, RewardError, RewardForm, RewardId,
    RewardRedemption, RewardSpec,
};
use kopilka_core::{MemberId, MemberLedger, ProgramId};
use kopilka_store::Role;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::app::AppState;
use crate::auth::{Caller, ADMINS, READERS, TILLS};
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::{Mutation, Query};
use crate::rewards::{RedemptionResponse, RewardCommand};

/// Who may mark a redemption fulfilled: the business, or the partner that handed the reward over.
const FULFILLERS: &[Role] = &[Role::Admin, Role::Partner];
/// Who may look a redemption up: whoever reads the tenant's data, and the partners who fulfil.
const REDEMPTION_READERS: &[Role] = &[Role::Admin, Role::Pos, Role::Analyst, Role::Partner];
/// Characters of a voucher code: Crockford's base 32, without letters that read as digits. 32 is
/// a power of two, so each random byte maps to a character without bias.
const VOUCHER_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 16 characters of 5 bits: 80 random bits, beyond guessing at any request rate.
const VOUCHER_CODE_LEN: usize = 16;

#[derive(OpenApi)]
#[openapi(paths(
    create_reward,
    update_reward,
    list_rewards,
    get_reward,
    get_redemption,
    redeem,
    member_rewards,
    fulfil,
    cancel,
    list_payouts,
    payout_paid,
))]
pub struct RewardsDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/rewards", post(create_reward).get(list_rewards))
        .route("/rewards/{id}", get(get_reward).put(update_reward))
        .route("/rewards/{id}/redeem", post(redeem))
        .route("/members/{id}/rewards", get(member_rewards))
        .route("/reward-redemptions/{id}", get(get_redemption))
        .route("/reward-redemptions/{id}/fulfil", post(fulfil))
        .route("/reward-redemptions/{id}/cancel", post(cancel))
        .route("/cashback-payouts", get(list_payouts))
        .route("/cashback-payouts/{id}/paid", post(payout_paid))
}

/// A fresh, unguessable voucher code such as `7KQ2-M9XD-3TNB-HW4R`.
fn voucher_code() -> String {
    let mut bytes = [0u8; VOUCHER_CODE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut code = String::with_capacity(VOUCHER_CODE_LEN + VOUCHER_CODE_LEN / 4);
    for (index, byte) in bytes.iter().enumerate() {
        if index > 0 && index % 4 == 0 {
            code.push('-');
        }
        code.push(VOUCHER_ALPHABET[(byte & 31) as usize] as char);
    }
    code
}

/// A redemption request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRewardRequest {
    pub member_id: i64,
    /// The form to take the reward in; absent: the reward's first (default) form.
    #[serde(default)]
    pub form: Option<RewardForm>,
    /// The program whose points pay; absent: the tenant's first.
    #[serde(default)]
    pub program_id: Option<i64>,
}

/// The body of fulfil, cancel and paid: nothing (or an empty object).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// Why a member may not redeem a reward now.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refusal {
    pub code: String,
    pub detail: String,
}

/// A reward in a list, with (for a member) whether the member may redeem it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RewardItem {
    #[serde(flatten)]
    pub reward: Reward,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redeemable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RewardList {
    pub items: Vec<RewardItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedemptionList {
    pub member_id: i64,
    pub items: Vec<RewardRedemption>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutPage {
    pub items: Vec<CashbackPayout>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RewardListQuery {
    /// Mark which rewards this member may redeem now, and why not.
    pub member_id: Option<i64>,
    pub program_id: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PayoutQuery {
    pub status: Option<PayoutStatus>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

#[utoipa::path(post, path = "/v1/rewards", tag = "rewards", request_body = RewardSpec,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = Reward), (status = 400, body = Problem, description = "validation_failed")))]
pub async fn create_reward(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<RewardSpec>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    state.submit(tenant, m.idempotency, Command::Reward(RewardCommand::Create(m.body))).await
}

/// Replaces a reward's terms; `stock` is set to what is left to redeem.
#[utoipa::path(put, path = "/v1/rewards/{id}", tag = "rewards", request_body = RewardSpec,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = Reward), (status = 404, body = Problem, description = "reward_not_found")))]
pub async fn update_reward(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<RewardSpec>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = RewardCommand::Update { reward_id: RewardId(id), spec: m.body };
    state.submit(tenant, m.idempotency, Command::Reward(command)).await
}

/// The catalogue; with `member_id`, whether that member may redeem each reward now and why not.
#[utoipa::path(get, path = "/v1/rewards", tag = "rewards", params(RewardListQuery),
    responses((status = 200, body = RewardList), (status = 404, body = Problem)))]
pub async fn list_rewards(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<RewardListQuery>,
) -> Result<Json<RewardList>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let catalogue = state.store.rewards(tenant).await?;
    let Some(member_id) = query.member_id else {
        let items =
            catalogue.into_iter().map(|reward| RewardItem { reward, redeemable: None, refusal: None }).collect();
        return Ok(Json(RewardList { items }));
    };
    let row = super::member_or_404(&state, tenant, member_id).await?;
    let member = row.merged_into.unwrap_or(row.id);
    let row = if member == row.id { row } else { super::member_or_404(&state, tenant, member.0).await? };
    let (_, _, program) = state
        .store
        .program(tenant, query.program_id.map(ProgramId))
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", "no such program"))?;
    let now = state.clock.now();
    let lots = state.store.lots(tenant, member, false).await?;
    let points_available = MemberLedger::new(member, lots).balance(&program.point_currency, now).available;
    let uses = state.store.reward_uses(tenant, member).await?;
    let tier = row.state.tier_at(now);
    let items = catalogue
        .into_iter()
        .map(|reward| {
            let redeemed_at = uses.get(&reward.id).map(Vec::as_slice).unwrap_or_default();
            let facts = MemberFacts { tier, redeemed_at, points_available };
            let refusal = rewards::check_redeemable(&program, &reward, &facts, now)
                .err()
                .map(|error: RewardError| Refusal { code: error.code().to_string(), detail: error.to_string() });
            RewardItem { reward, redeemable: Some(refusal.is_none()), refusal }
        })
        .collect();
    Ok(Json(RewardList { items }))
}

#[utoipa::path(get, path = "/v1/rewards/{id}", tag = "rewards",
    responses((status = 200, body = Reward), (status = 404, body = Problem, description = "reward_not_found")))]
pub async fn get_reward(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Reward>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let reward = state
        .store
        .reward(tenant, RewardId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("reward_not_found", format!("reward {id} does not exist")))?;
    Ok(Json(reward))
}

/// Redeems a reward for a member: points are debited and stock taken only when every check passes.
#[utoipa::path(post, path = "/v1/rewards/{id}/redeem", tag = "rewards", request_body = RedeemRewardRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = RedemptionResponse), (status = 404, body = Problem, description = "reward_not_found"),
        (status = 422, body = Problem, description = "reward_not_available, reward_out_of_stock, reward_limit_reached, reward_tier_required, reward_form_not_offered, insufficient_points")))]
pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<RedeemRewardRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    let command = RewardCommand::Redeem {
        reward_id: RewardId(id),
        member_id: MemberId(m.body.member_id),
        form: m.body.form,
        program_id: m.body.program_id,
        voucher_code: voucher_code(),
    };
    state.submit(tenant, m.idempotency, Command::Reward(command)).await
}

/// The member's redemptions, newest first.
#[utoipa::path(get, path = "/v1/members/{id}/rewards", tag = "rewards",
    responses((status = 200, body = RedemptionList), (status = 404, body = Problem)))]
pub async fn member_rewards(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RedemptionList>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let row = super::member_or_404(&state, tenant, id).await?;
    let items = state.store.redemptions_of(tenant, row.id).await?;
    Ok(Json(RedemptionList { member_id: row.id.0, items }))
}

/// One redemption, for the partner or shop that hands the reward over.
#[utoipa::path(get, path = "/v1/reward-redemptions/{id}", tag = "rewards",
    responses((status = 200, body = RewardRedemption), (status = 404, body = Problem, description = "redemption_not_found")))]
pub async fn get_redemption(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RewardRedemption>, ApiError> {
    let tenant = caller.tenant_for(REDEMPTION_READERS)?;
    let redemption =
        state.store.redemption(tenant, RedemptionId(id)).await?.ok_or_else(|| {
            ApiError::not_found("redemption_not_found", format!("reward redemption {id} does not exist"))
        })?;
    Ok(Json(redemption))
}

/// Marks an issued redemption fulfilled: the item was handed over, or the voucher used.
#[utoipa::path(post, path = "/v1/reward-redemptions/{id}/fulfil", tag = "rewards",
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = RedemptionResponse),
        (status = 409, body = Problem, description = "redemption_not_issued, redemption_fulfilled_by_payout")))]
pub async fn fulfil(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<EmptyRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(FULFILLERS)?;
    let command = RewardCommand::Fulfil { redemption_id: RedemptionId(id) };
    state.submit(tenant, m.idempotency, Command::Reward(command)).await
}

/// Cancels an issued redemption: points back to the member, the unit back to stock.
#[utoipa::path(post, path = "/v1/reward-redemptions/{id}/cancel", tag = "rewards",
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = RedemptionResponse),
        (status = 409, body = Problem, description = "redemption_not_issued, cashback_payout_not_pending")))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<EmptyRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    let command = RewardCommand::Cancel { redemption_id: RedemptionId(id) };
    state.submit(tenant, m.idempotency, Command::Reward(command)).await
}

/// Cashback the business owes, oldest first.
#[utoipa::path(get, path = "/v1/cashback-payouts", tag = "rewards", params(PayoutQuery),
    responses((status = 200, body = PayoutPage)))]
pub async fn list_payouts(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PayoutQuery>,
) -> Result<Json<PayoutPage>, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=kopilka_store::rewards::PAGE_SIZE_MAX).contains(&limit) {
        let max = kopilka_store::rewards::PAGE_SIZE_MAX;
        return Err(ApiError::bad_request("validation_failed", "limit", format!("must be between 1 and {max}")));
    }
    let after = match &query.cursor {
        Some(cursor) => PayoutId(cursor.parse().map_err(|_| {
            ApiError::bad_request("validation_failed", "cursor", "use next_cursor from the previous page")
        })?),
        None => PayoutId(0),
    };
    let items = state.store.cashback_payouts(tenant, query.status, after, limit).await?;
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|p| p.id.0.to_string())).flatten();
    Ok(Json(PayoutPage { items, next_cursor }))
}

/// Records that the business paid a pending payout; its redemption becomes fulfilled.
#[utoipa::path(post, path = "/v1/cashback-payouts/{id}/paid", tag = "rewards",
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = RedemptionResponse),
        (status = 409, body = Problem, description = "cashback_payout_not_pending")))]
pub async fn payout_paid(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<EmptyRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = RewardCommand::PayoutPaid { payout_id: PayoutId(id) };
    state.submit(tenant, m.idempotency, Command::Reward(command)).await
}
