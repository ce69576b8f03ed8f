//! Referral sign-ups (through `POST /v1/members` with `referral_code` or `device_id`) and a
//! member's referrals: code, link, the members they brought and where each referral stands.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use kopilka_core::member::Profile;
use kopilka_core::referrals::Referral;
use rand::RngCore;
use serde::Serialize;

use crate::app::AppState;
use crate::auth::{Caller, READERS};
use crate::engine::{Command, Reply, Request};
use crate::error::{ApiError, Problem};
use crate::extract::{parse_json, Mutation};
use crate::referrals::ReferralCommand;

/// Crockford's base32 without I, L, O, U: codes are read aloud and typed at tills.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 10 characters of 5 bits: 50 random bits, unguessable and short enough to type.
const CODE_LEN: usize = 10;

pub fn routes() -> Router<AppState> {
    Router::new().route("/members/{id}/referrals", get(member_referrals))
}

/// A fresh referral code such as `7KQ2M9XD3T`.
pub fn referral_code() -> String {
    let mut bytes = [0u8; CODE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|byte| CODE_ALPHABET[(byte & 31) as usize] as char).collect()
}

/// `POST /v1/members`: a profile, optionally with `referral_code` and `device_id`. Without them
/// the sign-up is the plain `CreateMember`; with them it goes through the referral path.
pub async fn create_member(
    state: &AppState,
    tenant: kopilka_core::TenantId,
    mutation: Mutation<serde_json::Value>,
) -> Result<Reply, ApiError> {
    let mut body = mutation.body;
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request("validation_failed", "body", "a member is a JSON object"));
    };
    let text = |value: Option<serde_json::Value>, field: &'static str| match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::bad_request("validation_failed", field, "must be a string")),
    };
    let referral_code = text(object.remove("referral_code"), "referral_code")?;
    let device_id = text(object.remove("device_id"), "device_id")?;
    let profile: Profile = parse_json(&serde_json::to_vec(&body).expect("JSON values serialize"))?;
    let command = if referral_code.is_none() && device_id.is_none() {
        Command::CreateMember { profile, signup_at: None }
    } else {
        let new_code = self::referral_code();
        Command::Referral(ReferralCommand::Enrol { profile: Box::new(profile), referral_code, device_id, new_code })
    };
    state.submit(tenant, mutation.idempotency, command).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberReferrals {
    pub member_id: i64,
    pub code: String,
    /// `{link_base}/r/{code}`, when the program has referral terms.
    pub link: Option<String>,
    /// The members this one brought, oldest first, with where each referral stands.
    pub referred: Vec<Referral>,
    /// The referral that brought this member, if one did.
    pub referred_by: Option<Referral>,
}

/// The member's code (assigned on first ask), link and referrals.
#[utoipa::path(get, path = "/v1/members/{id}/referrals", tag = "members",
    responses((status = 200, body = MemberReferrals), (status = 404, body = Problem, description = "member_not_found")))]
pub async fn member_referrals(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<MemberReferrals>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let member = super::member_or_404(&state, tenant, id).await?;
    let member = member.merged_into.unwrap_or(member.id);
    let code = match state.store.referral_code(tenant, member).await? {
        Some(code) => code,
        None => {
            // A member enrolled before referrals (or without a code) gets one now, through the
            // writer so two first asks agree on one code.
            let command = Command::Referral(ReferralCommand::EnsureCode { member_id: member, code: referral_code() });
            state.writer.submit(Request { tenant, idempotency: None, command }).await?;
            state.store.referral_code(tenant, member).await?.expect("the writer assigned a code")
        }
    };
    let program = state.store.program(tenant, None).await?;
    let link = program.and_then(|(_, _, program)| program.referrals.map(|terms| terms.link(&code)));
    let referred = state.store.referrals_by(tenant, member).await?;
    let referred_by = state.store.referral_of(tenant, member).await?;
    Ok(Json(MemberReferrals { member_id: member.0, code, link, referred, referred_by }))
}
