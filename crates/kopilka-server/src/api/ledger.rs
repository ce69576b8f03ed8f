//! Purchases, returns, redemptions, adjustments, and the member's balance, history and lots.

use axum::extract::{Path, State};
use axum::Json;
use kopilka_core::purchase::PurchaseRecord;
use kopilka_core::{MemberId, MemberLedger, MovementId, ProgramId, PurchaseId, TenantId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::AppState;
use crate::auth::{Caller, ADMINS, READERS, TILLS};
use crate::dto::{
    AdjustmentRequest, BalanceView, HistoryPage, LotsView, MovementResponse, PurchaseRequest, PurchaseResponse,
    RedemptionRequest, ReturnRequest, ReturnResponse,
};
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::{Mutation, Query};

/// The most movements one history page returns.
pub const HISTORY_PAGE_SIZE_MAX: i64 = 500;

#[utoipa::path(post, path = "/v1/purchases", tag = "ledger", request_body = PurchaseRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = PurchaseResponse), (status = 409, body = Problem, description = "duplicate_purchase"),
        (status = 422, body = Problem, description = "insufficient_points, redeem_share_exceeded")))]
pub async fn purchase(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<PurchaseRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::Purchase(m.body)).await
}

#[utoipa::path(get, path = "/v1/purchases/{id}", tag = "ledger",
    responses((status = 200, body = PurchaseRecord), (status = 404, body = Problem)))]
pub async fn get_purchase(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<PurchaseRecord>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let record = state
        .store
        .purchase(tenant, PurchaseId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("purchase_not_found", format!("purchase {id} does not exist")))?;
    Ok(Json(record))
}

#[utoipa::path(post, path = "/v1/returns", tag = "ledger", request_body = ReturnRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = ReturnResponse), (status = 422, body = Problem, description = "return_exceeds_purchase")))]
pub async fn return_purchase(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<ReturnRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::Return(m.body)).await
}

#[utoipa::path(post, path = "/v1/redemptions", tag = "ledger", request_body = RedemptionRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = MovementResponse), (status = 422, body = Problem, description = "insufficient_points")))]
pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<RedemptionRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::Redeem(m.body)).await
}

#[utoipa::path(post, path = "/v1/adjustments", tag = "ledger", request_body = AdjustmentRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = MovementResponse), (status = 403, body = Problem)))]
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<AdjustmentRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    state.submit(tenant, m.idempotency, Command::Adjust(m.body)).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProgramQuery {
    pub program_id: Option<i64>,
}

/// The member a read names, following a merge to the survivor.
async fn resolve_member(state: &AppState, tenant: TenantId, id: i64) -> Result<MemberId, ApiError> {
    let member = super::member_or_404(state, tenant, id).await?;
    Ok(member.merged_into.unwrap_or(member.id))
}

#[utoipa::path(get, path = "/v1/members/{id}/balance", tag = "ledger", params(ProgramQuery),
    responses((status = 200, body = BalanceView), (status = 404, body = Problem)))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<ProgramQuery>,
) -> Result<Json<BalanceView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let member = resolve_member(&state, tenant, id).await?;
    let (_, _, program) = state
        .store
        .program(tenant, query.program_id.map(ProgramId))
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", "no such program"))?;
    let lots = state.store.lots(tenant, member, false).await?;
    let now = state.clock.now();
    let balance = MemberLedger::new(member, lots).balance(&program.point_currency, now);
    Ok(Json(BalanceView { member_id: member.0, currency: program.point_currency.to_string(), balance, as_of: now }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// From `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// Movements of the member (and of members merged into it), newest first.
#[utoipa::path(get, path = "/v1/members/{id}/history", tag = "ledger", params(HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 404, body = Problem)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let member = resolve_member(&state, tenant, id).await?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=HISTORY_PAGE_SIZE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "validation_failed",
            "limit",
            format!("must be between 1 and {HISTORY_PAGE_SIZE_MAX}"),
        ));
    }
    let before = match &query.cursor {
        Some(cursor) => Some(MovementId(cursor.parse().map_err(|_| {
            ApiError::bad_request("validation_failed", "cursor", "use next_cursor from the previous page")
        })?)),
        None => None,
    };
    let mut members = vec![member];
    members.extend(state.store.merged_into(tenant, member).await?);
    let items = state.store.history(tenant, &members, before, limit).await?;
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|m| m.id.0.to_string())).flatten();
    Ok(Json(HistoryPage { items, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LotsQuery {
    /// Include spent and expired lots.
    #[serde(default)]
    pub all: bool,
}

/// The member's lots, soonest-expiring first, with the state each is in now.
#[utoipa::path(get, path = "/v1/members/{id}/lots", tag = "ledger", params(LotsQuery),
    responses((status = 200, body = LotsView), (status = 404, body = Problem)))]
pub async fn lots(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<LotsQuery>,
) -> Result<Json<LotsView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let member = resolve_member(&state, tenant, id).await?;
    let now = state.clock.now();
    let mut items = state.store.lots(tenant, member, query.all).await?;
    for lot in &mut items {
        lot.state = lot.state_at(now);
    }
    Ok(Json(LotsView { member_id: member.0, items }))
}
