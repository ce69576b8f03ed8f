//! Domain events: what happened, as data, for the outbox. Notifications, webhooks, analytics and
//! campaigns consume these; they are written in the same transaction as the change they describe.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{LotId, MemberId, Movement, MovementKind, PurchaseId};

/// Something that happened to a member or the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DomainEvent {
    MemberCreated {
        member_id: MemberId,
    },
    MemberUpdated {
        member_id: MemberId,
    },
    /// The member's personal data was erased at their request; the ledger keeps the member's id.
    MemberErased {
        member_id: MemberId,
    },
    MembersMerged {
        survivor_id: MemberId,
        absorbed_id: MemberId,
    },
    PurchaseRecorded {
        member_id: MemberId,
        purchase_id: PurchaseId,
        total_minor: i64,
        currency: String,
    },
    PurchaseReturned {
        member_id: MemberId,
        purchase_id: PurchaseId,
        returned_minor: i64,
        points_unrecovered: i64,
    },
    /// Any movement of points: earned, activated, redeemed, reversed, restored, expired, adjusted, merged.
    Points {
        member_id: MemberId,
        movement: MovementKind,
        points: i64,
        currency: String,
        purchase_id: Option<PurchaseId>,
        lot_id: Option<LotId>,
        expires_at: Option<Timestamp>,
    },
}

impl DomainEvent {
    /// The event's type name, as stored and filtered on.
    pub fn kind(&self) -> String {
        match self {
            DomainEvent::Points { movement, .. } => format!("points_{}", movement.as_str()),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
                .unwrap_or_default(),
        }
    }

    pub fn member_id(&self) -> MemberId {
        match self {
            DomainEvent::MemberCreated { member_id }
            | DomainEvent::MemberUpdated { member_id }
            | DomainEvent::MemberErased { member_id }
            | DomainEvent::PurchaseRecorded { member_id, .. }
            | DomainEvent::PurchaseReturned { member_id, .. }
            | DomainEvent::Points { member_id, .. } => *member_id,
            DomainEvent::MembersMerged { survivor_id, .. } => *survivor_id,
        }
    }

    /// The event a movement announces: the points it moved in or out of the member's accounts.
    /// Activation moves points between the member's own accounts, so its size is what became
    /// available.
    pub fn of_movement(movement: &Movement, expires_at: Option<Timestamp>) -> DomainEvent {
        let points = match movement.kind {
            MovementKind::Activate => movement.postings.iter().filter(|p| p.amount > 0).map(|p| p.amount).sum(),
            _ => movement.member_delta().abs(),
        };
        let lot_id = match movement.kind {
            MovementKind::Earn | MovementKind::Restore | MovementKind::Adjust => {
                movement.postings.iter().find(|p| p.amount > 0).and_then(|p| p.lot_id)
            }
            _ => None,
        };
        DomainEvent::Points {
            member_id: movement.member_id,
            movement: movement.kind,
            points,
            currency: movement.currency.to_string(),
            purchase_id: movement.purchase_id,
            lot_id,
            expires_at,
        }
    }
}
