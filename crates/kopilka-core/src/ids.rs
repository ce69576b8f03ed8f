//! Typed identifiers. Every row in the store is keyed by its tenant first, so these ids are unique
//! within a tenant's shard and never compared across kinds by accident.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
pub(crate) use id_type;

id_type!(
    /// A brand running its loyalty program on this deployment; the unit of isolation.
    TenantId
);
id_type!(
    /// A partner organization of a tenant, where members earn and spend points.
    PartnerId
);
id_type!(
    /// A program of a tenant (currencies, rates, expiry).
    ProgramId
);
id_type!(
    /// A member (customer) of a tenant.
    MemberId
);
id_type!(
    /// A lot: one credit of points to a member, consumed by later debits.
    LotId
);
id_type!(
    /// A movement: one balanced set of postings.
    MovementId
);
id_type!(
    /// A recorded purchase (a receipt).
    PurchaseId
);

/// Hands out increasing ids. The store seeds it from the highest id it holds; the core only asks it
/// for the next one, so decisions stay pure while new lots can be referenced within a batch.
#[derive(Debug, Clone, Default)]
pub struct IdAllocator {
    pub next_lot: i64,
    pub next_movement: i64,
    pub next_purchase: i64,
    pub next_member: i64,
    pub next_checkout: i64,
}

impl IdAllocator {
    pub fn lot(&mut self) -> LotId {
        self.next_lot += 1;
        LotId(self.next_lot)
    }
    pub fn movement(&mut self) -> MovementId {
        self.next_movement += 1;
        MovementId(self.next_movement)
    }
    pub fn purchase(&mut self) -> PurchaseId {
        self.next_purchase += 1;
        PurchaseId(self.next_purchase)
    }
    pub fn member(&mut self) -> MemberId {
        self.next_member += 1;
        MemberId(self.next_member)
    }
    pub fn checkout(&mut self) -> i64 {
        self.next_checkout += 1;
        self.next_checkout
    }
}
