//! The JSON shapes of the API: requests, responses and their OpenAPI schemas. Core types that
//! travel as they are (profiles, lines, lots, programs) are used directly.

use jiff::Timestamp;
use kopilka_core::member::Profile;
use kopilka_core::member_state::MemberState;
use kopilka_core::purchase::{Channel, LineInput, PurchaseRecord, ReturnLine};
use kopilka_core::rules::LineExplanation;
use kopilka_core::{Balance, Lot, Movement, Program};
use kopilka_store::{MemberRow, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A member as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemberView {
    pub id: i64,
    #[serde(flatten)]
    pub profile: Profile,
    #[schema(value_type = String, format = DateTime)]
    pub signup_at: Timestamp,
    /// Set when this member was merged into another: the survivor's id.
    pub merged_into: Option<i64>,
    /// Tier, segments, campaigns and purchase statistics.
    pub loyalty: MemberState,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<MemberRow> for MemberView {
    fn from(row: MemberRow) -> MemberView {
        MemberView {
            id: row.id.0,
            profile: row.profile,
            signup_at: row.signup_at,
            merged_into: row.merged_into.map(|m| m.0),
            loyalty: row.state,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A page of members.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    pub items: Vec<MemberView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The member whose points and history move to the member named in the path.
    pub absorbed_id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MergeResponse {
    pub survivor: MemberView,
    pub absorbed_id: i64,
    pub points_moved: i64,
    pub balance: BalanceView,
}

/// A receipt to record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    pub member_id: i64,
    /// The receipt number, unique per tenant.
    pub external_id: String,
    /// When the purchase happened; defaults to now. Expiry and the return window count from it.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default)]
    pub occurred_at: Option<Timestamp>,
    #[serde(default)]
    pub channel: Channel,
    #[serde(default)]
    pub store: Option<String>,
    /// ISO 4217 code of the bill; must be the program's bill currency.
    pub currency: String,
    pub lines: Vec<LineInput>,
    /// Points paying part of the bill.
    #[serde(default)]
    pub redeem_points: i64,
    /// Defaults to the tenant's first program.
    #[serde(default)]
    pub program_id: Option<i64>,
    /// Return, line by line, which earn rules gave how many points and why the others did not.
    #[serde(default)]
    pub explain: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchaseResponse {
    pub purchase: PurchaseRecord,
    pub balance: BalanceView,
    /// Present when the request asked to `explain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub explanation: Option<Vec<LineExplanation>>,
}

/// A return of a whole purchase (no `lines`) or of some of its lines.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    #[serde(default)]
    pub purchase_id: Option<i64>,
    /// The receipt number, instead of `purchase_id`.
    #[serde(default)]
    pub purchase_external_id: Option<String>,
    #[serde(default)]
    pub lines: Option<Vec<ReturnLine>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReturnResponse {
    pub purchase_id: i64,
    pub returned_minor: i64,
    pub points_reversed: i64,
    pub points_restored: i64,
    /// Earned points already spent that the member could not give back.
    pub points_unrecovered: i64,
    /// Earned points not reversed because they had expired before the return.
    pub points_lapsed: i64,
    pub purchase: PurchaseRecord,
    pub balance: BalanceView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedemptionRequest {
    pub member_id: i64,
    pub points: i64,
    /// The bill being paid, so the program's maximum share applies.
    #[serde(default)]
    pub bill_minor: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub program_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    pub member_id: i64,
    /// Positive adds points, negative takes them away.
    pub points: i64,
    pub reason: String,
    #[serde(default)]
    pub program_id: Option<i64>,
}

/// The answer to a redemption or an adjustment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovementResponse {
    pub movement: Movement,
    pub balance: BalanceView,
}

/// A member's balance in a point currency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    pub member_id: i64,
    pub currency: String,
    #[serde(flatten)]
    pub balance: Balance,
    #[schema(value_type = String, format = DateTime)]
    pub as_of: Timestamp,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    pub items: Vec<Movement>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LotsView {
    pub member_id: i64,
    pub items: Vec<Lot>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantCreated {
    pub id: i64,
    pub name: String,
    /// The tenant's first admin key. Shown once: only its hash is kept.
    pub admin_key: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRequest {
    #[schema(value_type = String, example = "pos")]
    pub role: Role,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// Shown once: only its hash is kept.
    pub key: String,
    #[schema(value_type = String)]
    pub role: Role,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgramView {
    pub id: i64,
    pub version: i64,
    pub program: Program,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobReport {
    pub job: String,
    pub members: i64,
    pub movements: i64,
}

/// No fields yet: an erasure needs only the member's id.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {}

/// Everything Kopilka holds about a member, for a data-access request.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberExport {
    pub member: MemberView,
    /// Members merged into this one, whose history is part of it.
    pub merged_members: Vec<MemberView>,
    pub purchases: Vec<PurchaseRecord>,
    pub movements: Vec<Movement>,
    pub lots: Vec<Lot>,
}
