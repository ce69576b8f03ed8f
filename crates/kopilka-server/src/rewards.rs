//! Rewards in the writer: the catalogue commands and redemptions, decided in the batch like every
//! other change.
//!
//! Rewards, redemptions and payouts a batch needs are loaded with it (`push_keys`), and the batch
//! keeps them in a [`RewardState`], so two redemptions of the last unit in one batch see each other:
//! the first takes it, the second is refused. Every decision works on copies and stores them back
//! only when the core accepted, so a refusal leaves the batch as it found it.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use kopilka_core::rewards::{
    self, CashbackPayout, PayoutId, RedeemReward, RedemptionId, RedemptionStatus, Reward, RewardError, RewardForm,
    RewardId, RewardIds, RewardRedemption, RewardSpec,
};
use kopilka_core::{DomainError, MemberId, TenantId};
use kopilka_store::batch::BatchKeys;
use kopilka_store::rewards::{RewardWrites, RewardsLoaded};
use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::BalanceView;
use crate::engine::{BatchState, Reply};
use crate::error::ApiError;

/// A change to the catalogue or to a redemption.
#[derive(Debug, Clone)]
pub enum RewardCommand {
    Create(RewardSpec),
    Update {
        reward_id: RewardId,
        spec: RewardSpec,
    },
    Redeem {
        reward_id: RewardId,
        member_id: MemberId,
        form: Option<RewardForm>,
        program_id: Option<i64>,
        /// Drawn by the handler (the engine has no randomness); used only for discount vouchers.
        voucher_code: String,
    },
    Fulfil {
        redemption_id: RedemptionId,
    },
    Cancel {
        redemption_id: RedemptionId,
    },
    PayoutPaid {
        payout_id: PayoutId,
    },
}

impl RewardCommand {
    /// What the command needs loaded with its batch.
    pub(crate) fn push_keys(&self, tenant: TenantId, keys: &mut BatchKeys) {
        keys.rewards.needs_ids = true;
        match self {
            RewardCommand::Create(_) => {}
            RewardCommand::Update { reward_id, .. } => keys.rewards.rewards.push((tenant, *reward_id)),
            RewardCommand::Redeem { reward_id, member_id, .. } => {
                keys.rewards.rewards.push((tenant, *reward_id));
                keys.rewards.member_rewards.push((tenant, *member_id, *reward_id));
                keys.members.push((tenant, *member_id));
            }
            RewardCommand::Fulfil { redemption_id } | RewardCommand::Cancel { redemption_id } => {
                keys.rewards.redemptions.push((tenant, *redemption_id))
            }
            RewardCommand::PayoutPaid { payout_id } => keys.rewards.payouts.push((tenant, *payout_id)),
        }
    }
}

/// The rewards rows of a batch, changed by each command in turn.
#[derive(Debug, Default)]
pub struct RewardState {
    rewards: HashMap<(TenantId, RewardId), Reward>,
    redemptions: HashMap<(TenantId, RedemptionId), RewardRedemption>,
    payouts: HashMap<(TenantId, PayoutId), CashbackPayout>,
    ids: Option<RewardIds>,
    dirty_rewards: HashSet<(TenantId, RewardId)>,
    dirty_redemptions: HashSet<(TenantId, RedemptionId)>,
    dirty_payouts: HashSet<(TenantId, PayoutId)>,
}

impl RewardState {
    /// Marks the voucher of redemption `id` used: the redemption is fulfilled.
    pub(crate) fn use_voucher(
        &mut self,
        tenant: TenantId,
        id: RedemptionId,
        now: Timestamp,
    ) -> Result<kopilka_core::DomainEvent, RewardError> {
        let redemption = self.redemptions.get_mut(&(tenant, id)).expect("vouchers are loaded with their redemption");
        let event = rewards::decide_reward_fulfil(redemption, now)?;
        self.dirty_redemptions.insert((tenant, id));
        Ok(event)
    }

    pub(crate) fn new(loaded: RewardsLoaded) -> RewardState {
        RewardState {
            rewards: loaded.rewards,
            redemptions: loaded.redemptions,
            payouts: loaded.payouts,
            ids: loaded.ids,
            ..RewardState::default()
        }
    }

    pub(crate) fn into_writes(mut self) -> RewardWrites {
        let mut writes = RewardWrites::default();
        for key in self.dirty_rewards {
            writes.rewards.push((key.0, self.rewards.remove(&key).expect("dirty rewards are held")));
        }
        for key in self.dirty_redemptions {
            writes.redemptions.push((key.0, self.redemptions.remove(&key).expect("dirty redemptions are held")));
        }
        for key in self.dirty_payouts {
            writes.payouts.push((key.0, self.payouts.remove(&key).expect("dirty payouts are held")));
        }
        if !writes.is_empty() {
            writes.ids = self.ids;
        }
        writes
    }

    fn ids(&self) -> RewardIds {
        self.ids.clone().expect("a batch with reward commands loads the reward id seeds")
    }

    fn put_reward(&mut self, tenant: TenantId, reward: Reward) {
        self.dirty_rewards.insert((tenant, reward.id));
        self.rewards.insert((tenant, reward.id), reward);
    }

    fn put_redemption(&mut self, tenant: TenantId, redemption: RewardRedemption) {
        self.dirty_redemptions.insert((tenant, redemption.id));
        self.redemptions.insert((tenant, redemption.id), redemption);
    }

    fn put_payout(&mut self, tenant: TenantId, payout: CashbackPayout) {
        self.dirty_payouts.insert((tenant, payout.id));
        self.payouts.insert((tenant, payout.id), payout);
    }

    fn reward(&self, tenant: TenantId, id: RewardId) -> Result<Reward, ApiError> {
        self.rewards
            .get(&(tenant, id))
            .cloned()
            .ok_or_else(|| ApiError::not_found("reward_not_found", format!("reward {id} does not exist")))
    }

    pub(crate) fn redemption(&self, tenant: TenantId, id: RedemptionId) -> Result<RewardRedemption, ApiError> {
        self.redemptions.get(&(tenant, id)).cloned().ok_or_else(|| {
            ApiError::not_found("redemption_not_found", format!("reward redemption {id} does not exist"))
        })
    }

    /// When the member redeemed the reward, cancelled redemptions left out. Complete because the
    /// batch loaded every redemption of this member and reward, and holds those it made since.
    fn uses(&self, tenant: TenantId, member: MemberId, reward: RewardId) -> Vec<Timestamp> {
        self.redemptions
            .iter()
            .filter(|((t, _), r)| {
                *t == tenant
                    && r.member_id == member
                    && r.reward_id == reward
                    && r.status != RedemptionStatus::Cancelled
            })
            .map(|(_, r)| r.redeemed_at)
            .collect()
    }
}

impl From<RewardError> for ApiError {
    fn from(error: RewardError) -> ApiError {
        let detail = error.to_string();
        match error {
            RewardError::Domain(error) => ApiError::Domain(error),
            RewardError::RedemptionNotIssued { .. }
            | RewardError::FulfilledByPayout { .. }
            | RewardError::PayoutNotPending { .. } => ApiError::Conflict { code: error.code(), detail, field: None },
            RewardError::FormNotOffered { .. } => {
                ApiError::Unprocessable { code: error.code(), detail, field: Some("form".into()) }
            }
            RewardError::NotAvailable { .. }
            | RewardError::OutOfStock { .. }
            | RewardError::LimitReached { .. }
            | RewardError::TierRequired { .. } => ApiError::Unprocessable { code: error.code(), detail, field: None },
        }
    }
}

/// The answer to a redemption, a cancellation or a payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedemptionResponse {
    pub redemption: RewardRedemption,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payout: Option<CashbackPayout>,
    /// The member's balance after the change, when points moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceView>,
}

impl BatchState<'_> {
    pub(crate) fn reward(&mut self, tenant: TenantId, command: &RewardCommand) -> Result<Reply, ApiError> {
        match command {
            RewardCommand::Create(spec) => self.create_reward(tenant, spec),
            RewardCommand::Update { reward_id, spec } => self.update_reward(tenant, *reward_id, spec),
            RewardCommand::Redeem { reward_id, member_id, form, program_id, voucher_code } => {
                self.redeem_reward(tenant, *reward_id, *member_id, *form, *program_id, voucher_code)
            }
            RewardCommand::Fulfil { redemption_id } => self.fulfil_redemption(tenant, *redemption_id),
            RewardCommand::Cancel { redemption_id } => self.cancel_redemption(tenant, *redemption_id),
            RewardCommand::PayoutPaid { payout_id } => self.pay_payout(tenant, *payout_id),
        }
    }

    fn create_reward(&mut self, tenant: TenantId, spec: &RewardSpec) -> Result<Reply, ApiError> {
        spec.validate()?;
        let mut ids = self.rewards.ids();
        let reward = Reward {
            id: ids.reward(),
            spec: spec.clone(),
            redeemed_count: 0,
            created_at: self.now,
            updated_at: self.now,
        };
        self.rewards.ids = Some(ids);
        self.rewards.put_reward(tenant, reward.clone());
        Ok(Reply::json(201, &reward))
    }

    /// Replaces the reward's terms. `stock` is set as sent: it is what is left to redeem.
    fn update_reward(&mut self, tenant: TenantId, id: RewardId, spec: &RewardSpec) -> Result<Reply, ApiError> {
        let mut reward = self.rewards.reward(tenant, id)?;
        spec.validate()?;
        reward.spec = spec.clone();
        reward.updated_at = self.now;
        self.rewards.put_reward(tenant, reward.clone());
        Ok(Reply::json(200, &reward))
    }

    fn redeem_reward(
        &mut self,
        tenant: TenantId,
        reward_id: RewardId,
        member_id: MemberId,
        form: Option<RewardForm>,
        program_id: Option<i64>,
        voucher_code: &str,
    ) -> Result<Reply, ApiError> {
        let member = self.member(tenant, member_id)?;
        // Limits count the redemptions of the member named; redeeming for a survivor through an
        // absorbed id would count the wrong member's, so the caller must name the survivor.
        if member != member_id {
            return Err(DomainError::MemberMerged { member_id: member_id.0, survivor_id: member.0 }.into());
        }
        let entry = self.programs.get(tenant, program_id)?;
        let (program_id, program) = (entry.id, entry.program.clone());
        let mut reward = self.rewards.reward(tenant, reward_id)?;
        let uses = self.rewards.uses(tenant, member, reward_id);
        let now = self.now;
        let tier = self.members[&(tenant, member)].state.tier_at(now).map(str::to_string);
        let mut reward_ids = self.rewards.ids();
        let request = RedeemReward {
            program_id,
            form,
            voucher_code: voucher_code.to_string(),
            tier: tier.as_deref(),
            redeemed_at: &uses,
        };
        let (ledger, ids) = self.ledger(tenant, member);
        let redeemed =
            rewards::decide_reward_redemption(&program, &mut reward, ledger, request, now, ids, &mut reward_ids)?;
        self.rewards.ids = Some(reward_ids);
        self.rewards.put_reward(tenant, reward);
        self.rewards.put_redemption(tenant, redeemed.redemption.clone());
        if let Some(payout) = &redeemed.payout {
            self.rewards.put_payout(tenant, payout.clone());
        }
        self.record(tenant, redeemed.outcome);
        let balance = self.balance(tenant, member, &program);
        let response =
            RedemptionResponse { redemption: redeemed.redemption, payout: redeemed.payout, balance: Some(balance) };
        Ok(Reply::json(201, &response))
    }

    fn fulfil_redemption(&mut self, tenant: TenantId, id: RedemptionId) -> Result<Reply, ApiError> {
        let mut redemption = self.rewards.redemption(tenant, id)?;
        let event = rewards::decide_reward_fulfil(&mut redemption, self.now)?;
        self.event(tenant, event);
        self.rewards.put_redemption(tenant, redemption.clone());
        Ok(Reply::json(200, &RedemptionResponse { redemption, payout: None, balance: None }))
    }

    fn cancel_redemption(&mut self, tenant: TenantId, id: RedemptionId) -> Result<Reply, ApiError> {
        let mut redemption = self.rewards.redemption(tenant, id)?;
        let member = self.member(tenant, redemption.member_id)?;
        let program = self.programs.get(tenant, Some(redemption.program_id.0))?.program.clone();
        let mut reward = self.rewards.rewards.get(&(tenant, redemption.reward_id)).cloned();
        let mut payout = redemption.cashback_payout_id.map(|payout_id| {
            self.rewards.payouts.get(&(tenant, payout_id)).cloned().expect("a redemption is loaded with its payout")
        });
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let outcome = rewards::decide_reward_cancel(
            &program,
            reward.as_mut(),
            &mut redemption,
            payout.as_mut(),
            ledger,
            now,
            ids,
        )?;
        if let Some(reward) = reward {
            self.rewards.put_reward(tenant, reward);
        }
        if let Some(payout) = &payout {
            self.rewards.put_payout(tenant, payout.clone());
        }
        self.rewards.put_redemption(tenant, redemption.clone());
        self.record(tenant, outcome);
        let balance = self.balance(tenant, member, &program);
        Ok(Reply::json(200, &RedemptionResponse { redemption, payout, balance: Some(balance) }))
    }

    fn pay_payout(&mut self, tenant: TenantId, id: PayoutId) -> Result<Reply, ApiError> {
        let mut payout = self.rewards.payouts.get(&(tenant, id)).cloned().ok_or_else(|| {
            ApiError::not_found("cashback_payout_not_found", format!("cashback payout {id} does not exist"))
        })?;
        let mut redemption = self.rewards.redemption(tenant, payout.redemption_id)?;
        let event = rewards::decide_payout_paid(&mut payout, &mut redemption, self.now)?;
        self.event(tenant, event);
        self.rewards.put_payout(tenant, payout.clone());
        self.rewards.put_redemption(tenant, redemption.clone());
        Ok(Reply::json(200, &RedemptionResponse { redemption, payout: Some(payout), balance: None }))
    }
}
