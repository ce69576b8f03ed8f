//! API keys: `Authorization: Bearer kpk_…`. Only a key's SHA-256 is stored; a key carries one role
//! and (except for operators) one tenant, and every handler says which roles it admits.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kopilka_core::TenantId;
use kopilka_store::store::hash_api_key;
use kopilka_store::{ApiKeyRow, Role};
use rand::RngCore;

use crate::app::AppState;
use crate::error::ApiError;

/// Keys already looked up, by hash. Keys are never changed in place, only created.
#[derive(Debug, Default)]
pub struct KeyCache(RwLock<HashMap<Vec<u8>, ApiKeyRow>>);

/// A fresh API key: a prefix that secret scanners recognize and 256 random bits.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("kpk_{}", hex::encode(bytes))
}

/// Who is calling, as established from their key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Option<TenantId>,
    pub role: Role,
}

impl Caller {
    /// The caller's tenant, if its role is one of `roles`.
    pub fn tenant_for(&self, roles: &[Role]) -> Result<TenantId, ApiError> {
        self.require(roles)?;
        self.tenant.ok_or_else(|| ApiError::Forbidden("an operator key has no tenant: use a tenant's key".into()))
    }

    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<_> = roles.iter().map(Role::as_str).collect();
        Err(ApiError::Forbidden(format!(
            "a key with role {} may not do this; allowed: {}",
            self.role.as_str(),
            allowed.join(", ")
        )))
    }
}

/// Roles that may read a tenant's data.
pub const READERS: &[Role] = &[Role::Admin, Role::Pos, Role::Analyst];
/// Roles that may record purchases and manage members at a till.
pub const TILLS: &[Role] = &[Role::Admin, Role::Pos];
pub const ADMINS: &[Role] = &[Role::Admin];

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("send an API key as Authorization: Bearer <key>".into()))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be Bearer <key>".into()))?;
        let hash = hash_api_key(key.trim());
        if let Some(row) = state.keys.0.read().expect("key cache lock").get(&hash) {
            return Ok(Caller { tenant: row.tenant_id, role: row.role });
        }
        let row = state
            .store
            .find_api_key(&hash)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the API key is unknown or revoked".into()))?;
        let caller = Caller { tenant: row.tenant_id, role: row.role };
        state.keys.0.write().expect("key cache lock").insert(hash, row);
        Ok(caller)
    }
}
