//! Rows the store reads and writes that are not core types.

use jiff::Timestamp;
use kopilka_core::member::Profile;
use kopilka_core::member_state::MemberState;
use kopilka_core::{MemberId, TenantId};
use serde::{Deserialize, Serialize};

/// A member as stored: the profile plus bookkeeping. A merged member keeps its row and its
/// identifiers, and points to the survivor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub id: MemberId,
    pub profile: Profile,
    /// Tier, segments, campaigns, purchase statistics and rule counters.
    pub state: MemberState,
    pub signup_at: Timestamp,
    pub merged_into: Option<MemberId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the deployment: creates tenants and their first keys. Sees no member data.
    Operator,
    /// Everything within one tenant.
    Admin,
    /// A till or web shop: members, purchases, returns, redemptions, balances.
    Pos,
    /// Reads only.
    Analyst,
    /// A partner organization (earn and spend at a partner).
    Partner,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Pos => "pos",
            Role::Analyst => "analyst",
            Role::Partner => "partner",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            "pos" => Role::Pos,
            "analyst" => Role::Analyst,
            "partner" => Role::Partner,
            _ => return None,
        })
    }
}

/// An API key as stored: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub key_hash: Vec<u8>,
    pub tenant_id: Option<TenantId>,
    pub role: Role,
    pub name: String,
}

/// The first answer to an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub status: u16,
    pub body: Vec<u8>,
    /// The member whose personal data the body holds, if any.
    pub member_id: Option<MemberId>,
}
