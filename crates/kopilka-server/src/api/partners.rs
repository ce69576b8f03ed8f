//! Partners: their creation and keys (admins), members earning and spending at a partner (the
//! partner's own key, or an admin naming the partner), partner receipts returned, and the
//! settlement report.
//!
//! A partner key is an ordinary `partner` key bound to one partner in `partner_keys`; the binding
//! is looked up here rather than in `auth`, so every partner endpoint says which partner it acts
//! for and a key can never act for another.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use kopilka_core::partners::{settle, Partner, PartnerTerms, Settlement};
use kopilka_core::{MemberId, PartnerId, TenantId};
use kopilka_store::store::hash_api_key;
use kopilka_store::Role;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::{generate_key, Caller, ADMINS};
use crate::dto::BalanceView;
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::{Mutation, Query};
use crate::partners::PartnerCommand;

const PARTNER_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Partner];
const PARTNER_ACTORS: &[Role] = &[Role::Admin, Role::Partner];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/partners", post(create).get(list))
        .route("/partners/{id}", get(get_partner))
        .route("/partners/{id}/api-keys", post(create_key))
        .route("/partners/{id}/settlement", get(settlement))
        .route("/partners/{id}/members/{member_id}/balance", get(member_balance))
        .route("/partner-purchases", post(earn))
        .route("/partner-redemptions", post(redeem))
        .route("/partner-returns", post(partner_return))
        .route("/exchanges", post(exchange))
}

/// The partner the caller may act for: a partner key's own partner (naming another is refused),
/// or for an admin or analyst, the partner named.
async fn acting_partner(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    roles: &[Role],
    named: Option<i64>,
) -> Result<(TenantId, PartnerId), ApiError> {
    let tenant = caller.tenant_for(roles)?;
    if caller.role != Role::Partner {
        let id = named.ok_or_else(|| ApiError::bad_request("validation_failed", "partner_id", "name the partner"))?;
        return Ok((tenant, PartnerId(id)));
    }
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    let (key_tenant, partner) = state
        .store
        .partner_of_key(&hash_api_key(key.trim()))
        .await?
        .ok_or_else(|| ApiError::Forbidden("this partner key is not bound to a partner".into()))?;
    assert_eq!(key_tenant, tenant, "a partner key's binding and its key row name one tenant");
    if named.is_some_and(|id| id != partner.0) {
        return Err(ApiError::Forbidden(format!("this key acts for partner {partner} only")));
    }
    Ok((tenant, partner))
}

async fn partner_or_404(state: &AppState, tenant: TenantId, id: PartnerId) -> Result<Partner, ApiError> {
    state
        .store
        .partner(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("partner_not_found", format!("partner {id} does not exist")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePartnerRequest {
    pub name: String,
    pub issue_cost_minor: i64,
    /// Defaults to the program's point value.
    pub redeem_value_minor: Option<i64>,
}

#[utoipa::path(post, path = "/v1/partners", tag = "partners", request_body = CreatePartnerRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = Partner), (status = 400, body = Problem, description = "validation_failed")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<CreatePartnerRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let redeem_value_minor = match m.body.redeem_value_minor {
        Some(value) => value,
        None => {
            let (_, _, program) = state
                .store
                .program(tenant, None)
                .await?
                .ok_or_else(|| ApiError::not_found("program_not_found", "the tenant has no program yet"))?;
            program.point_value_minor
        }
    };
    let terms = PartnerTerms { name: m.body.name, issue_cost_minor: m.body.issue_cost_minor, redeem_value_minor };
    state.submit(tenant, m.idempotency, Command::Partner(PartnerCommand::Create(terms))).await
}

#[utoipa::path(get, path = "/v1/partners", tag = "partners", responses((status = 200, body = Vec<Partner>)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Partner>>, ApiError> {
    let tenant = caller.tenant_for(&[Role::Admin, Role::Analyst])?;
    Ok(Json(state.store.partners(tenant).await?))
}

#[utoipa::path(get, path = "/v1/partners/{id}", tag = "partners",
    responses((status = 200, body = Partner), (status = 404, body = Problem, description = "partner_not_found")))]
pub async fn get_partner(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Partner>, ApiError> {
    let (tenant, partner) = acting_partner(&state, &caller, &headers, PARTNER_READERS, Some(id)).await?;
    Ok(Json(partner_or_404(&state, tenant, partner).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
}

#[utoipa::path(post, path = "/v1/partners/{id}/api-keys", tag = "partners", request_body = CreateKeyRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = crate::partners::PartnerKeyCreated, description = "the key, shown once"),
        (status = 404, body = Problem, description = "partner_not_found")))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<CreateKeyRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = PartnerCommand::CreateKey { partner_id: PartnerId(id), key: generate_key(), name: m.body.name };
    state.submit(tenant, m.idempotency, Command::Partner(command)).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerPointsRequest {
    /// Required for an admin; a partner key may omit it or must name its own partner.
    pub partner_id: Option<i64>,
    pub member_id: i64,
    pub points: i64,
    /// The partner's receipt or reference, kept as the movement's reason.
    pub external_id: String,
}

async fn at_partner(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    m: Mutation<PartnerPointsRequest>,
    earn: bool,
) -> Result<Reply, ApiError> {
    let (tenant, partner_id) = acting_partner(&state, &caller, &headers, PARTNER_ACTORS, m.body.partner_id).await?;
    let body = m.body;
    let (member_id, points, external_id) = (MemberId(body.member_id), body.points, body.external_id);
    let command = if earn {
        PartnerCommand::Earn { partner_id, member_id, points, external_id }
    } else {
        PartnerCommand::Redeem { partner_id, member_id, points, external_id }
    };
    state.submit(tenant, m.idempotency, Command::Partner(command)).await
}

/// Points a member earned at the partner, at the partner's cost. Each `external_id` is recorded
/// once per partner, whatever the Idempotency-Key.
#[utoipa::path(post, path = "/v1/partner-purchases", tag = "partners", request_body = PartnerPointsRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = crate::partners::PartnerMovementResponse),
        (status = 404, body = Problem, description = "partner_not_found, member_not_found"),
        (status = 409, body = Problem, description = "partner_receipt_duplicate")))]
pub async fn earn(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    m: Mutation<PartnerPointsRequest>,
) -> Result<Reply, ApiError> {
    at_partner(state, caller, headers, m, true).await
}

/// Points a member spent at the partner; the program owes the partner their value.
#[utoipa::path(post, path = "/v1/partner-redemptions", tag = "partners", request_body = PartnerPointsRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = crate::partners::PartnerMovementResponse),
        (status = 422, body = Problem, description = "insufficient_points")))]
pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    m: Mutation<PartnerPointsRequest>,
) -> Result<Reply, ApiError> {
    at_partner(state, caller, headers, m, false).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartnerReturnRequest {
    /// Required for an admin; a partner key may omit it or must name its own partner.
    pub partner_id: Option<i64>,
    /// The receipt's `external_id`, as it was sent to `/v1/partner-purchases`.
    pub external_id: String,
}

/// A receipt of points earned at the partner returned, whole (partner receipts carry no lines):
/// its points come off the partner's issued account in full, and off the member as far as they
/// still hold them; what they already spent or saw expire the program carries.
#[utoipa::path(post, path = "/v1/partner-returns", tag = "partners", request_body = PartnerReturnRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = crate::partners::PartnerReturnResponse),
        (status = 404, body = Problem, description = "partner_not_found, partner_receipt_not_found"),
        (status = 422, body = Problem, description = "nothing_to_return")))]
pub async fn partner_return(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    m: Mutation<PartnerReturnRequest>,
) -> Result<Reply, ApiError> {
    let (tenant, partner_id) = acting_partner(&state, &caller, &headers, PARTNER_ACTORS, m.body.partner_id).await?;
    let command = PartnerCommand::Return { partner_id, external_id: m.body.external_id };
    state.submit(tenant, m.idempotency, Command::Partner(command)).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    #[param(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[param(value_type = String, format = DateTime)]
    pub to: Timestamp,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SettlementReport {
    pub partner_id: i64,
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    pub currency: String,
    pub issue_cost_minor: i64,
    pub redeem_value_minor: i64,
    #[serde(flatten)]
    pub settlement: Settlement,
}

/// What the partner and the program owe each other for movements in `[from, to)`. A receipt
/// returned counts in the period of its return, as a negative issue.
#[utoipa::path(get, path = "/v1/partners/{id}/settlement", tag = "partners", params(PeriodQuery),
    responses((status = 200, body = SettlementReport), (status = 404, body = Problem, description = "partner_not_found")))]
pub async fn settlement(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(period): Query<PeriodQuery>,
) -> Result<Json<SettlementReport>, ApiError> {
    let (tenant, partner_id) = acting_partner(&state, &caller, &headers, PARTNER_READERS, Some(id)).await?;
    if period.from >= period.to {
        return Err(ApiError::bad_request("validation_failed", "to", "must be after from"));
    }
    let partner = partner_or_404(&state, tenant, partner_id).await?;
    let (_, _, program) = state
        .store
        .program(tenant, None)
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", "the tenant has no program yet"))?;
    let postings = state.store.partner_postings(tenant, partner_id, period.from, period.to).await?;
    let settlement = settle(&partner, &postings);
    Ok(Json(SettlementReport {
        partner_id: partner.id.0,
        from: period.from,
        to: period.to,
        currency: program.bill_currency.to_string(),
        issue_cost_minor: partner.terms.issue_cost_minor,
        redeem_value_minor: partner.terms.redeem_value_minor,
        settlement,
    }))
}

/// A member's balance as a partner sees it: only members who earned or spent at that partner,
/// so a partner key cannot browse the program's members.
#[utoipa::path(get, path = "/v1/partners/{id}/members/{member_id}/balance", tag = "partners",
    responses((status = 200, body = BalanceView), (status = 404, body = Problem, description = "member_not_found")))]
pub async fn member_balance(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, member_id)): Path<(i64, i64)>,
) -> Result<Json<BalanceView>, ApiError> {
    let (tenant, partner_id) = acting_partner(&state, &caller, &headers, PARTNER_READERS, Some(id)).await?;
    let member = MemberId(member_id);
    if !state.store.member_known_to_partner(tenant, member, partner_id).await? {
        return Err(ApiError::not_found("member_not_found", format!("member {member_id} does not exist")));
    }
    let (_, _, program) = state
        .store
        .program(tenant, None)
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", "the tenant has no program yet"))?;
    let now = state.clock.now();
    let lots = state.store.lots(tenant, member, false).await?;
    let balance = kopilka_core::MemberLedger::new(member, lots).balance(&program.point_currency, now);
    Ok(Json(BalanceView { member_id, currency: program.point_currency.to_string(), balance, as_of: now }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    pub member_id: i64,
    pub from_program_id: i64,
    pub to_program_id: i64,
    pub points: i64,
}

/// Converts a member's points of one program into another at the rate the first one sets.
#[utoipa::path(post, path = "/v1/exchanges", tag = "partners", request_body = ExchangeRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = crate::partners::ExchangeResponse),
        (status = 422, body = Problem, description = "exchange_not_offered, exchange_limit_reached, insufficient_points")))]
pub async fn exchange(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<ExchangeRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(crate::auth::TILLS)?;
    let from_id = m.body.from_program_id;
    let (_, _, from) = state
        .store
        .program(tenant, Some(kopilka_core::ProgramId(from_id)))
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", format!("program {from_id} does not exist")))?;
    let period_days = from
        .exchanges
        .iter()
        .find(|r| r.to_program == m.body.to_program_id)
        .and_then(|r| r.limit)
        .map_or(1, |limit| limit.period_days);
    let usage_since = state.clock.now() - jiff::SignedDuration::from_hours(24 * period_days);
    let command = PartnerCommand::Exchange {
        member_id: MemberId(m.body.member_id),
        from_program: from_id,
        to_program: m.body.to_program_id,
        points: m.body.points,
        from_currency: from.point_currency.to_string(),
        usage_since,
    };
    state.submit(tenant, m.idempotency, Command::Partner(command)).await
}
