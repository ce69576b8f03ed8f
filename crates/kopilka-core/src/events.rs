//! Domain events: what happened, as data, for the outbox. Notifications, webhooks, analytics and
//! campaigns consume these; they are written in the same transaction as the change they describe.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::rewards::{PayoutId, RedemptionId, RewardForm, RewardId};
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
    /// A receipt of points earned at a partner was returned: `points_reversed` were taken back
    /// from the member, `points_unrecovered` (already spent or expired) the program carries.
    PartnerPurchaseReturned {
        member_id: MemberId,
        partner_id: i64,
        external_id: String,
        points_reversed: i64,
        points_unrecovered: i64,
    },
    /// The member's tier changed: `reason` is `qualified`, `review` or `manual`.
    TierChanged {
        member_id: MemberId,
        from: Option<String>,
        to: Option<String>,
        reason: String,
    },
    /// A coupon was used on a purchase.
    CouponRedeemed {
        member_id: MemberId,
        code: String,
        campaign_id: i64,
        purchase_id: PurchaseId,
        discount_minor: i64,
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
    /// Points given for an event rather than a purchase (see `bonuses`): `bonus` is `signup`,
    /// `birthday`, `anniversary` or `event`.
    BonusGranted {
        member_id: MemberId,
        bonus: String,
        points: i64,
        reason: String,
        expires_at: Option<Timestamp>,
    },
    /// A custom event a shop reported about the member (`POST /v1/members/{id}/events`).
    CustomEvent {
        member_id: MemberId,
        event_type: String,
        occurred_at: Timestamp,
        attributes: serde_json::Value,
        points: i64,
    },
    /// `points` of the member expire at `expires_at`, `days` or fewer from now (a reminder).
    PointsExpiring {
        member_id: MemberId,
        points: i64,
        expires_at: Timestamp,
        days: u32,
    },
    /// A member redeemed a catalogue reward (see `rewards`).
    RewardRedeemed {
        member_id: MemberId,
        redemption_id: RedemptionId,
        reward_id: RewardId,
        form: RewardForm,
        points: i64,
    },
    RewardFulfilled {
        member_id: MemberId,
        redemption_id: RedemptionId,
    },
    RewardCancelled {
        member_id: MemberId,
        redemption_id: RedemptionId,
        points_restored: i64,
    },
    /// The business owes the member money for a reward taken as cashback.
    CashbackPayoutCreated {
        member_id: MemberId,
        payout_id: PayoutId,
        redemption_id: RedemptionId,
        amount_minor: i64,
        currency: String,
    },
    /// A new member signed up with a referral code and got the welcome bonus.
    ReferralAccepted {
        member_id: MemberId,
        referrer_id: MemberId,
        welcome_points: i64,
    },
    /// A new member signed up with a referral code that was refused: `reason` says why.
    ReferralRejected {
        member_id: MemberId,
        referrer_id: MemberId,
        reason: String,
    },
    /// The referrer (`member_id`) was rewarded for the member they brought.
    ReferralRewarded {
        member_id: MemberId,
        referred_id: MemberId,
        points: i64,
    },
    /// A personal offer for the member: `source` is `campaign` (an admin added the member to the
    /// campaign tagged `campaign`) or `coupon` (a personal code of the coupon campaign
    /// `coupon_campaign_id`, named `campaign`, valid until `valid_until` if it ends).
    OfferReceived {
        member_id: MemberId,
        source: String,
        campaign: String,
        coupon_campaign_id: Option<i64>,
        code: Option<String>,
        valid_until: Option<Timestamp>,
    },
}

impl DomainEvent {
    /// The event's type name, as stored and filtered on.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainEvent::MemberCreated { .. } => "member_created",
            DomainEvent::MemberUpdated { .. } => "member_updated",
            DomainEvent::MemberErased { .. } => "member_erased",
            DomainEvent::MembersMerged { .. } => "members_merged",
            DomainEvent::PurchaseRecorded { .. } => "purchase_recorded",
            DomainEvent::PurchaseReturned { .. } => "purchase_returned",
            DomainEvent::PartnerPurchaseReturned { .. } => "partner_purchase_returned",
            DomainEvent::CouponRedeemed { .. } => "coupon_redeemed",
            DomainEvent::TierChanged { .. } => "tier_changed",
            DomainEvent::BonusGranted { .. } => "bonus_granted",
            DomainEvent::CustomEvent { .. } => "custom_event",
            DomainEvent::PointsExpiring { .. } => "points_expiring",
            DomainEvent::RewardRedeemed { .. } => "reward_redeemed",
            DomainEvent::RewardFulfilled { .. } => "reward_fulfilled",
            DomainEvent::RewardCancelled { .. } => "reward_cancelled",
            DomainEvent::CashbackPayoutCreated { .. } => "cashback_payout_created",
            DomainEvent::ReferralAccepted { .. } => "referral_accepted",
            DomainEvent::ReferralRejected { .. } => "referral_rejected",
            DomainEvent::ReferralRewarded { .. } => "referral_rewarded",
            DomainEvent::OfferReceived { .. } => "offer_received",
            DomainEvent::Points { movement, .. } => match movement {
                MovementKind::Earn => "points_earn",
                MovementKind::Activate => "points_activate",
                MovementKind::Redeem => "points_redeem",
                MovementKind::Reverse => "points_reverse",
                MovementKind::Restore => "points_restore",
                MovementKind::Expire => "points_expire",
                MovementKind::Adjust => "points_adjust",
                MovementKind::Merge => "points_merge",
            },
        }
    }

    pub fn member_id(&self) -> MemberId {
        match self {
            DomainEvent::MemberCreated { member_id }
            | DomainEvent::MemberUpdated { member_id }
            | DomainEvent::MemberErased { member_id }
            | DomainEvent::PurchaseRecorded { member_id, .. }
            | DomainEvent::PurchaseReturned { member_id, .. }
            | DomainEvent::PartnerPurchaseReturned { member_id, .. }
            | DomainEvent::CouponRedeemed { member_id, .. }
            | DomainEvent::TierChanged { member_id, .. }
            | DomainEvent::Points { member_id, .. }
            | DomainEvent::BonusGranted { member_id, .. }
            | DomainEvent::CustomEvent { member_id, .. }
            | DomainEvent::PointsExpiring { member_id, .. }
            | DomainEvent::RewardRedeemed { member_id, .. }
            | DomainEvent::RewardFulfilled { member_id, .. }
            | DomainEvent::RewardCancelled { member_id, .. }
            | DomainEvent::CashbackPayoutCreated { member_id, .. }
            | DomainEvent::ReferralAccepted { member_id, .. }
            | DomainEvent::ReferralRejected { member_id, .. }
            | DomainEvent::ReferralRewarded { member_id, .. }
            | DomainEvent::OfferReceived { member_id, .. } => *member_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_kind_is_its_serialized_type_and_points_events_name_their_movement() {
        let member_id = MemberId(1);
        let purchase_id = PurchaseId(2);
        let events = [
            DomainEvent::MemberCreated { member_id },
            DomainEvent::MemberUpdated { member_id },
            DomainEvent::MemberErased { member_id },
            DomainEvent::MembersMerged { survivor_id: member_id, absorbed_id: MemberId(3) },
            DomainEvent::PurchaseRecorded { member_id, purchase_id, total_minor: 1, currency: "RUB".into() },
            DomainEvent::PurchaseReturned { member_id, purchase_id, returned_minor: 1, points_unrecovered: 0 },
            DomainEvent::PartnerPurchaseReturned {
                member_id,
                partner_id: 1,
                external_id: "C-1".into(),
                points_reversed: 1,
                points_unrecovered: 0,
            },
        ];
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["type"], event.kind());
        }
        let points = DomainEvent::Points {
            member_id,
            movement: MovementKind::Expire,
            points: 5,
            currency: "PTS".into(),
            purchase_id: None,
            lot_id: None,
            expires_at: None,
        };
        assert_eq!(points.kind(), format!("points_{}", MovementKind::Expire.as_str()));
    }
}
