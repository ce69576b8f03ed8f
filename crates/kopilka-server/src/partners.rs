//! Partners in the writer: creating partners and their keys, and members earning and spending at
//! a partner. The settlement is a read (`api::partners`), computed from the ledger's postings.

use std::collections::HashMap;

use kopilka_core::partners::{self, Partner, PartnerTerms};
use kopilka_core::{MemberId, PartnerId, TenantId};
use kopilka_store::batch::BatchKeys;
use kopilka_store::partners::{PartnerKeyRow, PartnerWrites, PartnersLoaded};
use kopilka_store::sqlite::hash_api_key;
use serde::Serialize;

use crate::dto::BalanceView;
use crate::engine::{BatchState, Reply};
use crate::error::ApiError;

/// A partner change.
#[derive(Debug, Clone)]
pub enum PartnerCommand {
    Create(PartnerTerms),
    /// A key for the partner, drawn by the handler; shown once.
    CreateKey {
        partner_id: PartnerId,
        key: String,
        name: String,
    },
    Earn {
        partner_id: PartnerId,
        member_id: MemberId,
        points: i64,
        external_id: String,
    },
    Redeem {
        partner_id: PartnerId,
        member_id: MemberId,
        points: i64,
        external_id: String,
    },
}

impl PartnerCommand {
    pub(crate) fn push_keys(&self, tenant: TenantId, keys: &mut BatchKeys) {
        match self {
            PartnerCommand::Create(_) => keys.partners.creating.push(tenant),
            PartnerCommand::CreateKey { partner_id, .. } => keys.partners.partners.push((tenant, *partner_id)),
            PartnerCommand::Earn { partner_id, member_id, .. }
            | PartnerCommand::Redeem { partner_id, member_id, .. } => {
                keys.partners.partners.push((tenant, *partner_id));
                keys.members.push((tenant, *member_id));
            }
        }
    }
}

/// The batch's partners, with ids allocated per tenant.
#[derive(Debug, Default)]
pub struct PartnerState {
    partners: HashMap<(TenantId, PartnerId), Partner>,
    last_ids: HashMap<TenantId, i64>,
    writes: PartnerWrites,
}

impl PartnerState {
    pub fn new(loaded: PartnersLoaded) -> PartnerState {
        PartnerState { partners: loaded.partners, last_ids: loaded.last_ids, writes: PartnerWrites::default() }
    }

    pub fn into_writes(self) -> PartnerWrites {
        self.writes
    }

    fn get(&self, tenant: TenantId, id: PartnerId) -> Result<Partner, ApiError> {
        self.partners
            .get(&(tenant, id))
            .cloned()
            .ok_or_else(|| ApiError::not_found("partner_not_found", format!("partner {id} does not exist")))
    }
}

/// The answer to an earn or a spend at a partner.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartnerMovementResponse {
    pub partner_id: i64,
    pub points: i64,
    pub external_id: String,
    pub movement: kopilka_core::Movement,
    pub balance: BalanceView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartnerKeyCreated {
    pub partner_id: i64,
    pub key: String,
    pub name: String,
}

impl BatchState<'_> {
    pub(crate) fn partner(&mut self, tenant: TenantId, command: &PartnerCommand) -> Result<Reply, ApiError> {
        match command {
            PartnerCommand::Create(terms) => {
                terms.validate()?;
                let last = self.partners.last_ids.get_mut(&tenant).expect("loaded for a creation");
                *last += 1;
                let partner = Partner { id: PartnerId(*last), terms: terms.clone(), created_at: self.now };
                self.partners.partners.insert((tenant, partner.id), partner.clone());
                self.partners.writes.partners.push((tenant, partner.clone()));
                Ok(Reply::json(201, &partner))
            }
            PartnerCommand::CreateKey { partner_id, key, name } => {
                let partner = self.partners.get(tenant, *partner_id)?;
                self.partners.writes.keys.push(PartnerKeyRow {
                    key_hash: hash_api_key(key),
                    tenant,
                    partner: partner.id,
                    name: name.clone(),
                    created_at: self.now,
                });
                let created = PartnerKeyCreated { partner_id: partner.id.0, key: key.clone(), name: name.clone() };
                let mut reply = Reply::json(201, &created);
                let redacted = PartnerKeyCreated { key: "(shown once)".into(), ..created };
                reply.stored_body = Some(serde_json::to_vec(&redacted).expect("serializes"));
                Ok(reply)
            }
            PartnerCommand::Earn { partner_id, member_id, points, external_id } => {
                self.at_partner(tenant, *partner_id, *member_id, *points, external_id, true)
            }
            PartnerCommand::Redeem { partner_id, member_id, points, external_id } => {
                self.at_partner(tenant, *partner_id, *member_id, *points, external_id, false)
            }
        }
    }

    fn at_partner(
        &mut self,
        tenant: TenantId,
        partner_id: PartnerId,
        member_id: MemberId,
        points: i64,
        external_id: &str,
        earn: bool,
    ) -> Result<Reply, ApiError> {
        let partner = self.partners.get(tenant, partner_id)?;
        let member = self.member(tenant, member_id)?;
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let outcome = if earn {
            partners::decide_partner_earn(&program, &partner, ledger, points, external_id, now, ids)?
        } else {
            partners::decide_partner_redeem(&program, &partner, ledger, points, external_id, now, ids)?
        };
        let movement = outcome.movements.last().cloned().expect("a partner command moves points");
        self.record(tenant, outcome);
        let balance = self.balance(tenant, member, &program);
        let response = PartnerMovementResponse {
            partner_id: partner.id.0,
            points,
            external_id: external_id.to_string(),
            movement,
            balance,
        };
        Ok(Reply::json(201, &response).about(member))
    }
}
