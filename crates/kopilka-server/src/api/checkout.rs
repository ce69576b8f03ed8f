//! Checkout (quote, confirm, cancel) and coupon campaigns (create, stop, codes).

use axum::extract::{Path, State};
use axum::Json;
use kopilka_core::checkout::coupon::normalize_code;
use kopilka_core::checkout::CouponCampaign;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::{Caller, ADMINS, READERS, TILLS};
use crate::checkout::{
    AddCodesRequest, CampaignCommand, CampaignView, CheckoutCommand, CheckoutView, CodesAdded, ConfirmRequest,
    QuoteRequest,
};
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::{Mutation, Query};

/// The most codes one page lists.
pub const CODES_PAGE_MAX: i64 = 10_000;

/// Prices a basket for a member: the program's discounts, each coupon (valid or not, and why),
/// the most points that may pay, the points it earns, and what is left to pay. Valid coupons are
/// held for this checkout until it is confirmed, cancelled, or expires.
#[utoipa::path(post, path = "/v1/checkouts", tag = "checkout", request_body = QuoteRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = CheckoutView), (status = 404, body = Problem), (status = 400, body = Problem)))]
pub async fn quote(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<QuoteRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::Checkout(CheckoutCommand::Quote(m.body))).await
}

#[utoipa::path(get, path = "/v1/checkouts/{id}", tag = "checkout",
    responses((status = 200, body = CheckoutView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<CheckoutView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let checkout = state
        .store
        .checkout(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("checkout_not_found", format!("checkout {id} does not exist")))?;
    Ok(Json(CheckoutView::of(&checkout, state.clock.now())))
}

/// Commits the purchase, the payment with points, the discounts and the coupon uses together,
/// priced again on the state of the moment.
#[utoipa::path(post, path = "/v1/checkouts/{id}/confirm", tag = "checkout", request_body = ConfirmRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = crate::checkout::ConfirmResponse), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "checkout_confirmed, checkout_cancelled, checkout_expired, duplicate_purchase"),
        (status = 422, body = Problem, description = "coupon_*, restricted_goods, insufficient_points, redeem_share_exceeded")))]
pub async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<ConfirmRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::Checkout(CheckoutCommand::Confirm { id, request: m.body })).await
}

/// No fields: a cancellation needs only the checkout's id.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {}

/// Lets the checkout's coupons go. An expired checkout may be cancelled too; a confirmed one not.
#[utoipa::path(post, path = "/v1/checkouts/{id}/cancel", tag = "checkout",
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = CheckoutView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<CancelRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::Checkout(CheckoutCommand::Cancel { id })).await
}

#[utoipa::path(post, path = "/v1/coupon-campaigns", tag = "coupons", request_body = Object,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = CampaignView), (status = 400, body = Problem)))]
pub async fn create_campaign(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<CouponCampaign>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let invalid = |issues: Vec<kopilka_core::ValidationIssue>| {
        let all: Vec<String> = issues.iter().map(ToString::to_string).collect();
        ApiError::BadRequest { code: "validation_failed", detail: all.join("; "), field: Some(issues[0].path.clone()) }
    };
    m.body.validate().map_err(invalid)?;
    if let Some((_, _, program)) = state.store.program(tenant, None).await? {
        m.body.check_categories(&program).map_err(invalid)?;
    }
    state.submit(tenant, m.idempotency, Command::Campaign(CampaignCommand::Create(m.body))).await
}

#[utoipa::path(get, path = "/v1/coupon-campaigns", tag = "coupons", responses((status = 200, body = Vec<CampaignView>)))]
pub async fn list_campaigns(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<CampaignView>>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    Ok(Json(state.store.coupon_campaigns(tenant).await?.into_iter().map(CampaignView::from).collect()))
}

#[utoipa::path(get, path = "/v1/coupon-campaigns/{id}", tag = "coupons",
    responses((status = 200, body = CampaignView), (status = 404, body = Problem)))]
pub async fn get_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<CampaignView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let row = state
        .store
        .coupon_campaign(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("campaign_not_found", format!("coupon campaign {id} does not exist")))?;
    Ok(Json(row.into()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignPatch {
    /// False stops the campaign: its codes are refused from then on. True starts it again.
    pub active: bool,
}

#[utoipa::path(patch, path = "/v1/coupon-campaigns/{id}", tag = "coupons", request_body = CampaignPatch,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = CampaignView), (status = 404, body = Problem)))]
pub async fn patch_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<CampaignPatch>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = CampaignCommand::SetActive { id, active: m.body.active };
    state.submit(tenant, m.idempotency, Command::Campaign(command)).await
}

/// Generates codes (`generate`: how many; `for_members`: one personal code each) or imports codes
/// made elsewhere (`codes`). The whole request is checked first; nothing is added if any of it is
/// wrong.
#[utoipa::path(post, path = "/v1/coupon-campaigns/{id}/codes", tag = "coupons", request_body = AddCodesRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = CodesAdded), (status = 400, body = Problem), (status = 409, body = Problem, description = "coupon_code_taken")))]
pub async fn add_codes(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<AddCodesRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    state.submit(tenant, m.idempotency, Command::Campaign(CampaignCommand::AddCodes { id, request: m.body })).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CodesQuery {
    /// The last code of the previous page.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CodeView {
    pub code: String,
    pub member_id: Option<i64>,
    pub uses: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CodesPage {
    pub items: Vec<CodeView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[utoipa::path(get, path = "/v1/coupon-campaigns/{id}/codes", tag = "coupons", params(CodesQuery),
    responses((status = 200, body = CodesPage), (status = 404, body = Problem)))]
pub async fn list_codes(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<CodesQuery>,
) -> Result<Json<CodesPage>, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let limit = query.limit.unwrap_or(1_000);
    if !(1..=CODES_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request("validation_failed", "limit", format!("must be 1 to {CODES_PAGE_MAX}")));
    }
    if state.store.coupon_campaign(tenant, id).await?.is_none() {
        return Err(ApiError::not_found("campaign_not_found", format!("coupon campaign {id} does not exist")));
    }
    let coupons = state.store.coupons_page(tenant, id, query.after.as_deref().unwrap_or(""), limit).await?;
    let next_after = (coupons.len() as i64 == limit).then(|| coupons.last().map(|c| c.code.clone())).flatten();
    let items = coupons
        .into_iter()
        .map(|c| CodeView { code: c.code, member_id: c.member_id.map(|m| m.0), uses: c.uses })
        .collect();
    Ok(Json(CodesPage { items, next_after }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CouponView {
    pub code: String,
    pub campaign_id: i64,
    pub member_id: Option<i64>,
    pub uses: u32,
    /// Open checkouts holding the code now.
    pub held_by: Vec<i64>,
}

#[utoipa::path(get, path = "/v1/coupons/{code}", tag = "coupons",
    responses((status = 200, body = CouponView), (status = 404, body = Problem)))]
pub async fn get_coupon(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<CouponView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let not_found = || ApiError::not_found("coupon_not_found", format!("no coupon {code:?}"));
    let normalized = normalize_code(&code).map_err(|_| not_found())?;
    let coupon = state.store.coupon(tenant, &normalized).await?.ok_or_else(not_found)?;
    let now = state.clock.now();
    let held_by = coupon.live_holds(now).map(|h| h.checkout_id).collect();
    Ok(Json(CouponView {
        code: coupon.code,
        campaign_id: coupon.campaign_id,
        member_id: coupon.member_id.map(|m| m.0),
        uses: coupon.uses,
        held_by,
    }))
}
