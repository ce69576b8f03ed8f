//! Partners in the writer: creating partners and their keys, and members earning and spending at
//! a partner, and partner receipts returned. The settlement is a read (`api::partners`), computed
//! from the ledger's postings.

use std::collections::{BTreeSet, HashMap};

use kopilka_core::partners::{self, Partner, PartnerReceipt, PartnerTerms};
use kopilka_core::{MemberId, PartnerId, TenantId};
use kopilka_store::batch::BatchKeys;
use kopilka_store::partners::{PartnerKeyRow, PartnerWrites, PartnersLoaded};
use kopilka_store::store::hash_api_key;
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
    /// A receipt of `Earn` returned, whole.
    Return {
        partner_id: PartnerId,
        external_id: String,
    },
    /// A coalition exchange; the handler names the period its limit looks back over (from its
    /// clock) so the batch can load what the member already converted.
    Exchange {
        member_id: MemberId,
        from_program: i64,
        to_program: i64,
        points: i64,
        from_currency: String,
        usage_since: jiff::Timestamp,
    },
}

impl PartnerCommand {
    pub(crate) fn push_keys(&self, tenant: TenantId, keys: &mut BatchKeys) {
        match self {
            PartnerCommand::Create(_) => keys.partners.creating.push(tenant),
            PartnerCommand::CreateKey { partner_id, .. } => keys.partners.partners.push((tenant, *partner_id)),
            PartnerCommand::Earn { partner_id, member_id, external_id, .. } => {
                keys.partners.partners.push((tenant, *partner_id));
                keys.members.push((tenant, *member_id));
                keys.partners.receipts.push((tenant, *partner_id, external_id.clone()));
            }
            PartnerCommand::Redeem { partner_id, member_id, .. } => {
                keys.partners.partners.push((tenant, *partner_id));
                keys.members.push((tenant, *member_id));
            }
            PartnerCommand::Return { partner_id, external_id } => {
                keys.partners.partners.push((tenant, *partner_id));
                keys.partners.receipts.push((tenant, *partner_id, external_id.clone()));
            }
            PartnerCommand::Exchange { member_id, from_currency, to_program, usage_since, .. } => {
                keys.members.push((tenant, *member_id));
                let reason = partners::exchange_reason(*to_program);
                keys.partners.exchange_usage.push((tenant, *member_id, from_currency.clone(), reason, *usage_since));
            }
        }
    }
}

/// The batch's partners, with ids allocated per tenant.
#[derive(Debug, Default)]
pub struct PartnerState {
    partners: HashMap<(TenantId, PartnerId), Partner>,
    last_ids: HashMap<TenantId, i64>,
    exchange_used: HashMap<(TenantId, MemberId, String, String), i64>,
    receipts: HashMap<ReceiptKey, PartnerReceipt>,
    /// Receipts to write: each once, in its final state, however many commands touched it.
    dirty_receipts: BTreeSet<ReceiptKey>,
    writes: PartnerWrites,
}

type ReceiptKey = (TenantId, PartnerId, String);

impl PartnerState {
    pub fn new(loaded: PartnersLoaded) -> PartnerState {
        PartnerState {
            partners: loaded.partners,
            last_ids: loaded.last_ids,
            exchange_used: loaded.exchange_used,
            receipts: loaded.receipts,
            dirty_receipts: BTreeSet::new(),
            writes: PartnerWrites::default(),
        }
    }

    pub fn into_writes(mut self) -> PartnerWrites {
        for key in std::mem::take(&mut self.dirty_receipts) {
            let receipt = self.receipts.remove(&key).expect("a dirty receipt is held");
            self.writes.receipts.push((key.0, receipt));
        }
        self.writes
    }

    fn get(&self, tenant: TenantId, id: PartnerId) -> Result<Partner, ApiError> {
        self.partners
            .get(&(tenant, id))
            .cloned()
            .ok_or_else(|| ApiError::not_found("partner_not_found", format!("partner {id} does not exist")))
    }
}

/// The answer to a partner receipt returned.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartnerReturnResponse {
    pub partner_id: i64,
    pub external_id: String,
    pub member_id: i64,
    /// Points taken back from the member.
    pub points_reversed: i64,
    /// Points the member had already spent: the program, not the partner, carries them.
    pub points_unrecovered: i64,
    /// Points that had expired before the return: carried by the program too.
    pub points_lapsed: i64,
    /// The reversal, putting the receipt's points back on the partner's account.
    pub movement: kopilka_core::Movement,
    pub receipt: PartnerReceipt,
    pub balance: BalanceView,
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
            PartnerCommand::Return { partner_id, external_id } => self.partner_return(tenant, *partner_id, external_id),
            PartnerCommand::Exchange { member_id, from_program, to_program, points, from_currency, .. } => {
                self.exchange(tenant, *member_id, *from_program, *to_program, *points, from_currency)
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
        let receipt_key = (tenant, partner_id, external_id.to_string());
        if earn {
            if let Some(existing) = self.partners.receipts.get(&receipt_key) {
                return Err(ApiError::Conflict {
                    code: "partner_receipt_duplicate",
                    detail: format!(
                        "partner {partner_id} already recorded receipt {external_id:?} (movement {})",
                        existing.movement_id
                    ),
                    field: Some("external_id".into()),
                });
            }
        }
        let member = self.member(tenant, member_id)?;
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let outcome = if earn {
            let (receipt, outcome) =
                partners::decide_partner_purchase(&program, &partner, ledger, points, external_id, now, ids)?;
            self.partners.receipts.insert(receipt_key.clone(), receipt);
            self.partners.dirty_receipts.insert(receipt_key);
            outcome
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

impl BatchState<'_> {
    fn partner_return(
        &mut self,
        tenant: TenantId,
        partner_id: PartnerId,
        external_id: &str,
    ) -> Result<Reply, ApiError> {
        self.partners.get(tenant, partner_id)?;
        let key = (tenant, partner_id, external_id.to_string());
        let mut receipt = self.partners.receipts.get(&key).cloned().ok_or_else(|| {
            ApiError::not_found(
                "partner_receipt_not_found",
                format!("partner {partner_id} recorded no receipt {external_id:?}"),
            )
        })?;
        // The member may since have been merged into another: the points went with the lots.
        let member = self.member(tenant, receipt.member_id)?;
        receipt.member_id = member;
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let outcome = partners::decide_partner_return(&program, ledger, &mut receipt, now, ids)?;
        let movement = outcome.movements.last().cloned().expect("a return moves points");
        self.record(tenant, outcome);
        self.partners.receipts.insert(key.clone(), receipt.clone());
        self.partners.dirty_receipts.insert(key);
        let balance = self.balance(tenant, member, &program);
        let response = PartnerReturnResponse {
            partner_id: partner_id.0,
            external_id: external_id.to_string(),
            member_id: member.0,
            points_reversed: receipt.points_reversed,
            points_unrecovered: receipt.points_unrecovered,
            points_lapsed: receipt.points_lapsed,
            movement,
            receipt,
            balance,
        };
        Ok(Reply::json(201, &response).about(member))
    }
}

/// The answer to a coalition exchange.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExchangeResponse {
    pub member_id: i64,
    pub from_program: i64,
    pub to_program: i64,
    pub points: i64,
    pub converted: i64,
    pub from_balance: BalanceView,
    pub to_balance: BalanceView,
}

impl BatchState<'_> {
    fn exchange(
        &mut self,
        tenant: TenantId,
        member_id: MemberId,
        from_program: i64,
        to_program: i64,
        points: i64,
        from_currency: &str,
    ) -> Result<Reply, ApiError> {
        if from_program == to_program {
            return Err(ApiError::bad_request(
                "validation_failed",
                "to_program_id",
                "must differ from from_program_id",
            ));
        }
        let member = self.member(tenant, member_id)?;
        let from = self.programs.get(tenant, Some(from_program))?.program.clone();
        let to = self.programs.get(tenant, Some(to_program))?.program.clone();
        // Points converted into the same currency land in the same balance: a rate above one
        // would mint points out of nothing.
        if from.point_currency == to.point_currency {
            return Err(ApiError::Unprocessable {
                code: "exchange_same_currency",
                detail: format!("programs {from_program} and {to_program} both keep {}", from.point_currency),
                field: Some("to_program_id".into()),
            });
        }
        let rate = from.exchanges.iter().find(|r| r.to_program == to_program).cloned().ok_or_else(|| {
            ApiError::Unprocessable {
                code: "exchange_not_offered",
                detail: format!("program {from_program} sets no rate into program {to_program}"),
                field: Some("to_program_id".into()),
            }
        })?;
        // The program document sets a limit inside each rate (`exchanges[i].limit`), so it bounds
        // what a member converts along that rate: from this program into `to_program`. Keyed by
        // the point currency alone, two rates out of one program into two others would share one
        // allowance, and converting into one partner would use up the limit set for another.
        let usage_key = (tenant, member_id, from_currency.to_string(), partners::exchange_reason(to_program));
        let used = self.partners.exchange_used.get(&usage_key).copied().unwrap_or(0);
        if let Some(limit) = rate.limit {
            if used + points > limit.points {
                return Err(ApiError::Unprocessable {
                    code: "exchange_limit_reached",
                    detail: format!(
                        "at most {} points may be exchanged per {} days; {used} already were",
                        limit.points, limit.period_days
                    ),
                    field: Some("points".into()),
                });
            }
        }
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let (outcome, converted) = partners::decide_exchange(&from, &to, &rate, ledger, points, now, ids)?;
        self.record(tenant, outcome);
        self.partners.exchange_used.insert(usage_key, used + points);
        let from_balance = self.balance(tenant, member, &from);
        let to_balance = self.balance(tenant, member, &to);
        let response = ExchangeResponse {
            member_id: member.0,
            from_program,
            to_program,
            points,
            converted,
            from_balance,
            to_balance,
        };
        Ok(Reply::json(201, &response).about(member))
    }
}
