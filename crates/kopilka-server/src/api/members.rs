//! Members: create, read, update, search by identifier, merge.

use axum::extract::{Path, State};
use axum::Json;
use kopilka_core::member::{IdentifierKind, Profile};
use kopilka_core::member_state::StateChange;
use kopilka_core::MemberId;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::AppState;
use crate::auth::{Caller, ADMINS, READERS, TILLS};
use crate::dto::{EraseRequest, MemberExport, MemberPage, MemberView, MergeRequest};
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::{Mutation, Query};

/// The most members one page returns.
pub const PAGE_SIZE_MAX: i64 = 500;

#[utoipa::path(post, path = "/v1/members", tag = "members", request_body = Profile,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = MemberView), (status = 409, body = Problem, description = "identifier_taken")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    mutation: Mutation<serde_json::Value>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    // `referral_code` and `device_id` beside the profile take the referral path.
    super::referrals::create_member(&state, tenant, mutation).await
}

#[utoipa::path(get, path = "/v1/members/{id}", tag = "members",
    responses((status = 200, body = MemberView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<MemberView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let member = super::member_or_404(&state, tenant, id).await?;
    Ok(Json(member.into()))
}

/// A JSON merge patch over the profile: fields present replace, `null` clears.
#[utoipa::path(patch, path = "/v1/members/{id}", tag = "members", request_body = Profile,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = MemberView), (status = 404, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    mutation: Mutation<serde_json::Value>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    let command = Command::UpdateMember { member_id: MemberId(id), patch: mutation.body };
    state.submit(tenant, mutation.idempotency, command).await
}

/// Sets the member's tier (optionally until a date), segments or campaigns; fields left out stay.
/// Earn rules, discounts and coupons that ask about them see the change from the next purchase on.
#[utoipa::path(patch, path = "/v1/members/{id}/loyalty", tag = "members", request_body = StateChange,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = MemberView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn change_loyalty(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    mutation: Mutation<StateChange>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = Command::ChangeMemberState { member_id: MemberId(id), change: mutation.body };
    state.submit(tenant, mutation.idempotency, command).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub card: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub external_id: Option<String>,
    /// From `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// Finds a member by one identifier (following merges to the survivor), or lists members.
#[utoipa::path(get, path = "/v1/members", tag = "members", params(SearchQuery),
    responses((status = 200, body = MemberPage)))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SearchQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let wanted: Vec<(IdentifierKind, &String)> = [
        (IdentifierKind::Card, &query.card),
        (IdentifierKind::Phone, &query.phone),
        (IdentifierKind::Email, &query.email),
        (IdentifierKind::ExternalId, &query.external_id),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.as_ref().map(|v| (kind, v)))
    .collect();
    if wanted.len() > 1 {
        return Err(ApiError::bad_request("validation_failed", "query", "search by one identifier at a time"));
    }
    if let Some((kind, raw)) = wanted.first() {
        let value = kind.normalize(raw)?;
        let mut found = state.store.member_by(tenant, *kind, &value).await?;
        if let Some(survivor) = found.as_ref().and_then(|m| m.merged_into) {
            found = state.store.member(tenant, survivor).await?;
        }
        return Ok(Json(MemberPage { items: found.into_iter().map(Into::into).collect(), next_cursor: None }));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=PAGE_SIZE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "validation_failed",
            "limit",
            format!("must be between 1 and {PAGE_SIZE_MAX}"),
        ));
    }
    let after = match &query.cursor {
        Some(cursor) => cursor.parse::<i64>().map_err(|_| {
            ApiError::bad_request("validation_failed", "cursor", "use next_cursor from the previous page")
        })?,
        None => 0,
    };
    let members = state.store.members_page(tenant, MemberId(after), limit).await?;
    let next_cursor = (members.len() as i64 == limit).then(|| members.last().map(|m| m.id.0.to_string())).flatten();
    Ok(Json(MemberPage { items: members.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Merges the member in the body into the member in the path: points, lots and history move to
/// the survivor; the absorbed member's identifiers keep finding the survivor.
#[utoipa::path(post, path = "/v1/members/{id}/merge", tag = "members", request_body = MergeRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = crate::dto::MergeResponse), (status = 422, body = Problem)))]
pub async fn merge(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    mutation: Mutation<MergeRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = Command::MergeMembers { survivor_id: MemberId(id), absorbed_id: MemberId(mutation.body.absorbed_id) };
    state.submit(tenant, mutation.idempotency, command).await
}

/// The most movements an export gathers; a member with more is exported in full by the CLI.
pub const EXPORT_MOVEMENTS_MAX: i64 = 100_000;

/// Everything held about a member and the members merged into it: profile, purchases, movements,
/// lots. For a member's request to see their data.
#[utoipa::path(get, path = "/v1/members/{id}/export", tag = "members",
    responses((status = 200, body = MemberExport), (status = 404, body = Problem)))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<MemberExport>, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let member = super::member_or_404(&state, tenant, id).await?;
    let mut merged_members = Vec::new();
    for merged in state.store.merged_into(tenant, member.id).await? {
        merged_members.extend(state.store.member(tenant, merged).await?.map(MemberView::from));
    }
    let mut ids = vec![member.id];
    ids.extend(merged_members.iter().map(|m| MemberId(m.id)));
    let purchases = state.store.purchases_of(tenant, &ids).await?;
    let movements = state.store.history(tenant, &ids, None, EXPORT_MOVEMENTS_MAX).await?;
    let lots = state.store.lots(tenant, member.id, true).await?;
    Ok(Json(MemberExport { member: member.into(), merged_members, purchases, movements, lots }))
}

/// Erases a member's personal data: identifiers, name, birth date, gender, city and consents, and
/// stored answers that held them. Points, purchases and movements stay, keyed by the id alone, as
/// the ledger must.
#[utoipa::path(post, path = "/v1/members/{id}/erase", tag = "members",
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = MemberView), (status = 404, body = Problem)))]
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    mutation: Mutation<EraseRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    state.submit(tenant, mutation.idempotency, Command::EraseMember { member_id: MemberId(id) }).await
}
