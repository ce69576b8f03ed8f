//! The commands that change state, and how a batch of them is decided in memory.
//!
//! The writer loads what a batch needs (`keys`), builds a [`BatchState`] from it, applies each
//! command in arrival order (each sees what the ones before it did), then hands the state's writes
//! to the store in one transaction. A command that is refused leaves the state as it found it:
//! the core's `decide_*` functions check before they change anything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use kopilka_core::member::{IdentifierKind, Profile};
use kopilka_core::member_state::{MemberState, StateChange, TierChange};
use kopilka_core::purchase::{self, PurchaseCommand, PurchaseRecord};
use kopilka_core::rules::LineExplanation;
use kopilka_core::{
    Currency, DomainError, DomainEvent, DueKeys, IdAllocator, Lot, MemberId, MemberLedger, Program, ProgramId,
    PurchaseId, TenantId,
};
use kopilka_store::batch::{job_keys, BatchKeys, JobKeys, Loaded, Unloaded, Writes};
use kopilka_store::{MemberRow, Role, StoredResponse};
use serde::Serialize;

use crate::checkout::{CampaignCommand, CheckoutCommand, CheckoutState};
use crate::dto::{
    AdjustmentRequest, BalanceView, MemberView, MergeResponse, MovementResponse, PurchaseRequest, PurchaseResponse,
    RedemptionRequest, ReturnRequest, ReturnResponse,
};
use crate::error::ApiError;
use crate::rewards::{RewardCommand, RewardState};

/// How far in the future a purchase's `occurred_at` may be: tills' clocks drift.
const CLOCK_SKEW_MAX: SignedDuration = SignedDuration::from_mins(10);

/// A change requested of the writer.
#[derive(Debug, Clone)]
pub enum Command {
    CreateMember {
        profile: Profile,
        signup_at: Option<Timestamp>,
    },
    /// A JSON merge patch (RFC 7386) over the member's profile.
    UpdateMember {
        member_id: MemberId,
        patch: serde_json::Value,
    },
    MergeMembers {
        survivor_id: MemberId,
        absorbed_id: MemberId,
    },
    /// Erases a member's personal data (the right to be forgotten); points and history stay, keyed
    /// by the member's id alone.
    EraseMember {
        member_id: MemberId,
    },
    /// An admin sets the member's tier, segments or campaigns.
    ChangeMemberState {
        member_id: MemberId,
        change: StateChange,
    },
    Purchase(PurchaseRequest),
    Return(ReturnRequest),
    Redeem(RedemptionRequest),
    Adjust(AdjustmentRequest),
    /// Quote, confirm or cancel a checkout.
    Checkout(CheckoutCommand),
    /// Create or stop a coupon campaign, or add codes to it (runs alone).
    Campaign(CampaignCommand),
    /// The rewards catalogue and redemptions (see `rewards`).
    Reward(RewardCommand),
    /// Referral sign-ups, codes and rewards (see `referrals`).
    Referral(crate::referrals::ReferralCommand),
    /// Partners, their keys, and points earned or spent at them (see `partners`).
    Partner(crate::partners::PartnerCommand),
    /// Activation and expiry of due lots for these members (the jobs).
    CatchUp {
        members: Vec<MemberId>,
    },
    /// Tier reviews due for these members (the `tiers` job).
    ReviewTiers {
        members: Vec<MemberId>,
    },
    /// A custom event about a member (see `bonuses`).
    MemberEvent {
        member_id: MemberId,
        event: crate::bonuses::CustomEventRequest,
    },
    /// Birthday and anniversary bonuses due for these members (the `events` job).
    YearlyBonuses {
        members: Vec<MemberId>,
    },
    /// Expiry reminders due for these members (the `reminders` job).
    RemindExpiry {
        members: Vec<MemberId>,
    },
    /// Administrative commands run in a transaction of their own.
    CreateTenant {
        name: String,
        admin_key: String,
    },
    SaveProgram {
        id: Option<ProgramId>,
        program: Box<Program>,
    },
    CreateApiKey {
        key: String,
        role: Role,
        name: String,
    },
}

impl Command {
    /// Administrative commands are rare and touch other tables; the writer runs each alone.
    pub fn runs_alone(&self) -> bool {
        matches!(
            self,
            Command::CreateTenant { .. }
                | Command::SaveProgram { .. }
                | Command::CreateApiKey { .. }
                | Command::Campaign(_)
        )
    }
}

/// The idempotency key of a request and the hash of what was asked under it.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: Vec<u8>,
    pub kept: Kept,
}

impl Idempotency {
    /// A key whose first answer is kept whole and returned byte for byte on a retry (the API's).
    pub fn new(key: String, request_hash: Vec<u8>) -> Idempotency {
        Idempotency { key, request_hash, kept: Kept::Answer }
    }
}

/// What is kept of the first answer under a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The status and body: a retry gets the same bytes.
    Answer,
    /// The status alone, with an empty body: for a caller that learns from a retry only that the
    /// request was applied before (an import, whose keys and hashes no API request shares). A
    /// purchase's answer is a kilobyte, a third of what the purchase writes.
    Status,
}

/// A command for one tenant, as the writer receives it.
#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: TenantId,
    pub idempotency: Option<Idempotency>,
    pub command: Command,
}

/// The answer to a request: an HTTP status and a JSON body. `stored_body` replaces the body in
/// the idempotency record when the answer holds a secret that must not be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub stored_body: Option<Vec<u8>>,
    /// True when this is the stored answer to an earlier request with the same key.
    pub replayed: bool,
    /// The member whose personal data the body holds, so erasing the member erases it too.
    pub member_id: Option<MemberId>,
}

impl Reply {
    /// The stored answer to an earlier request with the same key.
    pub fn replayed(stored: &StoredResponse) -> Reply {
        Reply {
            status: stored.status,
            body: stored.body.clone(),
            stored_body: None,
            replayed: true,
            member_id: stored.member_id,
        }
    }

    pub(crate) fn about(mut self, member: MemberId) -> Reply {
        self.member_id = Some(member);
        self
    }

    pub fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        Reply {
            status,
            body: serde_json::to_vec(value).expect("replies serialize"),
            stored_body: None,
            replayed: false,
            member_id: None,
        }
    }
}

/// The current version of each tenant's programs, owned by the writer.
#[derive(Debug, Default, Clone)]
pub struct Programs(pub HashMap<TenantId, Vec<ProgramEntry>>);

#[derive(Debug, Clone)]
pub struct ProgramEntry {
    pub id: ProgramId,
    pub version: i64,
    pub program: Arc<Program>,
}

impl Programs {
    /// The named program, or the tenant's first.
    pub fn get(&self, tenant: TenantId, id: Option<i64>) -> Result<&ProgramEntry, ApiError> {
        let entries = self.0.get(&tenant).map(Vec::as_slice).unwrap_or_default();
        let found = match id {
            Some(id) => entries.iter().find(|e| e.id.0 == id),
            None => entries.first(),
        };
        found.ok_or_else(|| match id {
            Some(id) => ApiError::not_found("program_not_found", format!("program {id} does not exist")),
            None => ApiError::not_found("program_not_found", "the tenant has no program yet: create one first"),
        })
    }

    pub fn put(&mut self, tenant: TenantId, id: ProgramId, version: i64, program: Program) {
        let entries = self.0.entry(tenant).or_default();
        let entry = ProgramEntry { id, version, program: Arc::new(program) };
        match entries.iter_mut().find(|e| e.id == id) {
            Some(existing) => *existing = entry,
            None => {
                entries.push(entry);
                entries.sort_by_key(|e| e.id);
            }
        }
    }
}

/// What a batch of requests deciding at `now` needs loaded.
pub fn keys(requests: &[&Request], now: Timestamp) -> BatchKeys {
    let mut keys = BatchKeys { light_at: Some(now), ..BatchKeys::default() };
    for request in requests {
        let tenant = request.tenant;
        if let Some(idempotency) = &request.idempotency {
            keys.idempotency.push((tenant, idempotency.key.clone()));
        }
        match &request.command {
            Command::CreateMember { profile, .. } => {
                push_identifiers(&mut keys, tenant, profile);
            }
            Command::UpdateMember { member_id, patch } => {
                keys.members.push((tenant, *member_id));
                for kind in IdentifierKind::ALL {
                    if let Some(Ok(value)) =
                        patch.get(kind.as_str()).and_then(|v| v.as_str()).map(|v| kind.normalize(v))
                    {
                        keys.identifiers.push((tenant, kind, value));
                    }
                }
            }
            Command::MergeMembers { survivor_id, absorbed_id } => {
                keys.members.push((tenant, *survivor_id));
                keys.members.push((tenant, *absorbed_id));
            }
            Command::EraseMember { member_id } | Command::ChangeMemberState { member_id, .. } => {
                keys.members.push((tenant, *member_id))
            }
            Command::Purchase(purchase) => {
                // A purchase that redeems nothing only credits and catches up: its member is loaded
                // light (a partial ledger), which spares a frequent buyer's hundreds of open lots.
                let member = (tenant, MemberId(purchase.member_id));
                if purchase.redeem_points == 0 {
                    keys.light_members.push(member);
                } else {
                    keys.members.push(member);
                }
                keys.purchase_external_ids.push((tenant, purchase.external_id.clone()));
            }
            Command::Return(ret) => {
                if let Some(id) = ret.purchase_id {
                    keys.purchase_ids.push((tenant, PurchaseId(id)));
                }
                if let Some(external_id) = &ret.purchase_external_id {
                    keys.purchase_external_ids.push((tenant, external_id.clone()));
                }
            }
            Command::Redeem(redeem) => keys.members.push((tenant, MemberId(redeem.member_id))),
            Command::Adjust(adjust) => keys.members.push((tenant, MemberId(adjust.member_id))),
            Command::MemberEvent { member_id, .. } => keys.members.push((tenant, *member_id)),
            Command::CatchUp { members } => keys.light_members.extend(members.iter().map(|m| (tenant, *m))),
            Command::ReviewTiers { members }
            | Command::YearlyBonuses { members }
            | Command::RemindExpiry { members } => keys.members.extend(members.iter().map(|m| (tenant, *m))),
            Command::Checkout(command) => crate::checkout::push_keys(&mut keys, tenant, command),
            Command::Reward(command) => command.push_keys(tenant, &mut keys),
            Command::Referral(command) => command.push_keys(tenant, &mut keys),
            Command::Partner(command) => command.push_keys(tenant, &mut keys),
            Command::CreateTenant { .. }
            | Command::SaveProgram { .. }
            | Command::CreateApiKey { .. }
            | Command::Campaign(_) => {}
        }
    }
    // A return of a purchase made in this same batch debits a member the store cannot name yet
    // (the purchase is not stored): that member is loaded whole.
    let returned: HashSet<(TenantId, &str)> = requests
        .iter()
        .filter_map(|request| match &request.command {
            Command::Return(ret) => ret.purchase_external_id.as_deref().map(|id| (request.tenant, id)),
            _ => None,
        })
        .collect();
    if !returned.is_empty() {
        for request in requests {
            if let Command::Purchase(purchase) = &request.command {
                if returned.contains(&(request.tenant, purchase.external_id.as_str())) {
                    keys.members.push((request.tenant, MemberId(purchase.member_id)));
                }
            }
        }
    }
    keys
}

fn push_identifiers(keys: &mut BatchKeys, tenant: TenantId, profile: &Profile) {
    for kind in IdentifierKind::ALL {
        if let Some(Ok(value)) = profile.identifier(kind).map(|raw| kind.normalize(raw)) {
            keys.identifiers.push((tenant, kind, value));
        }
    }
}

type MemberKey = (TenantId, MemberId);

/// The in-memory state of a batch: what was loaded, changed by each command in turn.
pub struct BatchState<'a> {
    pub(crate) now: Timestamp,
    pub(crate) programs: &'a Programs,
    pub(crate) ids: &'a mut IdAllocator,
    next_event_id: &'a mut i64,
    idempotency: HashMap<(TenantId, String), StoredResponse>,
    pub(crate) members: HashMap<MemberKey, MemberRow>,
    dirty_members: HashSet<MemberKey>,
    /// Members whose loyalty state changed but not their profile.
    dirty_states: HashSet<MemberKey>,
    loaded_lots: HashMap<MemberKey, Vec<Lot>>,
    /// Members loaded light: the totals of their lots left in the store (see `BatchKeys`).
    unloaded: HashMap<MemberKey, Unloaded>,
    ledgers: HashMap<MemberKey, MemberLedger>,
    pub(crate) purchases: HashMap<(TenantId, PurchaseId), (ProgramId, PurchaseRecord)>,
    purchase_by_external_id: HashMap<(TenantId, String), PurchaseId>,
    dirty_purchases: HashSet<(TenantId, PurchaseId)>,
    /// The purchases the batch loaded: rewritten in place, where the others are inserted.
    stored_purchases: HashSet<(TenantId, PurchaseId)>,
    identifiers: HashMap<(TenantId, IdentifierKind, String), MemberId>,
    pub(crate) checkout: CheckoutState,
    pub(crate) rewards: RewardState,
    pub(crate) referrals: crate::referrals::ReferralState,
    pub(crate) partners: crate::partners::PartnerState,
    /// The job keys each member was loaded with, to tell which keys a batch changed.
    loaded_job_keys: HashMap<MemberKey, JobKeys>,
    /// The due keys each member's row held when loaded (none for a member the batch creates).
    loaded_due_keys: HashMap<MemberKey, DueKeys>,
    writes: Writes,
}

impl<'a> BatchState<'a> {
    pub fn new(
        mut loaded: Loaded,
        programs: &'a Programs,
        ids: &'a mut IdAllocator,
        next_event_id: &'a mut i64,
        now: Timestamp,
    ) -> BatchState<'a> {
        let checkout = CheckoutState::new(&mut loaded);
        let mut purchases = HashMap::new();
        let mut purchase_by_external_id = HashMap::new();
        for (tenant, program, record) in loaded.purchases {
            purchase_by_external_id.insert((tenant, record.external_id.clone()), record.id);
            purchases.insert((tenant, record.id), (program, record));
        }
        let stored_purchases = purchases.keys().copied().collect();
        let loaded_job_keys = loaded.members.iter().map(|(key, row)| (*key, job_keys(&row.state))).collect();
        BatchState {
            checkout,
            now,
            programs,
            ids,
            next_event_id,
            idempotency: loaded.idempotency,
            members: loaded.members,
            dirty_members: HashSet::new(),
            dirty_states: HashSet::new(),
            loaded_lots: loaded.lots,
            unloaded: loaded.unloaded,
            ledgers: HashMap::new(),
            purchases,
            purchase_by_external_id,
            dirty_purchases: HashSet::new(),
            stored_purchases,
            identifiers: loaded.identifiers,
            rewards: RewardState::new(loaded.rewards),
            referrals: crate::referrals::ReferralState::new(std::mem::take(&mut loaded.referrals)),
            partners: crate::partners::PartnerState::new(std::mem::take(&mut loaded.partners)),
            loaded_job_keys,
            loaded_due_keys: std::mem::take(&mut loaded.due_keys),
            writes: Writes::default(),
        }
    }

    /// Applies one request: replays the stored answer of a repeated idempotency key, refuses a key
    /// reused for another request, and otherwise decides the command and records its answer.
    pub fn apply(&mut self, request: &Request) -> Result<Reply, ApiError> {
        if let Some(idempotency) = &request.idempotency {
            if let Some(stored) = self.idempotency.get(&(request.tenant, idempotency.key.clone())) {
                if stored.request_hash != idempotency.request_hash {
                    return Err(ApiError::IdempotencyKeyReused { key: idempotency.key.clone() });
                }
                return Ok(Reply::replayed(stored));
            }
        }
        let reply = self.decide(request.tenant, &request.command)?;
        if let Some(idempotency) = &request.idempotency {
            let body = match idempotency.kept {
                Kept::Answer => reply.stored_body.clone().unwrap_or_else(|| reply.body.clone()),
                Kept::Status => Vec::new(),
            };
            let stored = StoredResponse {
                request_hash: idempotency.request_hash.clone(),
                status: reply.status,
                body,
                member_id: reply.member_id,
            };
            self.idempotency.insert((request.tenant, idempotency.key.clone()), stored.clone());
            self.writes.idempotency.push((request.tenant, idempotency.key.clone(), stored, self.now));
        }
        Ok(reply)
    }

    fn decide(&mut self, tenant: TenantId, command: &Command) -> Result<Reply, ApiError> {
        match command {
            Command::CreateMember { profile, signup_at } => self.create_member(tenant, profile.clone(), *signup_at),
            Command::UpdateMember { member_id, patch } => self.update_member(tenant, *member_id, patch),
            Command::MergeMembers { survivor_id, absorbed_id } => self.merge(tenant, *survivor_id, *absorbed_id),
            Command::EraseMember { member_id } => self.erase(tenant, *member_id),
            Command::ChangeMemberState { member_id, change } => self.change_state(tenant, *member_id, change),
            Command::Purchase(request) => self.purchase(tenant, request),
            Command::Return(request) => self.return_purchase(tenant, request),
            Command::Redeem(request) => self.redeem(tenant, request),
            Command::Adjust(request) => self.adjust(tenant, request),
            Command::CatchUp { members } => self.catch_up(tenant, members),
            Command::ReviewTiers { members } => self.review_tiers(tenant, members),
            Command::MemberEvent { member_id, event } => self.custom_event(tenant, *member_id, event),
            Command::YearlyBonuses { members } => self.yearly_bonuses(tenant, members),
            Command::RemindExpiry { members } => self.expiry_reminders(tenant, members),
            Command::Checkout(command) => self.decide_checkout(tenant, command),
            Command::Reward(command) => self.reward(tenant, command),
            Command::Referral(command) => self.referral(tenant, command),
            Command::Partner(command) => self.partner(tenant, command),
            Command::CreateTenant { .. }
            | Command::SaveProgram { .. }
            | Command::CreateApiKey { .. }
            | Command::Campaign(_) => {
                unreachable!("the writer runs administrative commands alone")
            }
        }
    }

    /// Everything the batch decided, ready for the store.
    pub fn into_writes(mut self) -> Writes {
        self.writes.checkout = std::mem::take(&mut self.checkout).into_writes();
        self.writes.rewards = self.rewards.into_writes();
        self.writes.referrals = std::mem::take(&mut self.referrals).into_writes();
        self.writes.partners = std::mem::take(&mut self.partners).into_writes();
        for ((tenant, member), ledger) in self.ledgers.iter_mut() {
            if !ledger.dirty.is_empty() {
                let totals =
                    ledger.stored_totals().into_iter().map(|(currency, totals)| (*tenant, *member, currency, totals));
                self.writes.lot_totals.extend(totals);
            }
            // Written only when changed: they are indexed (see `batch::flush`).
            let keys = ledger.due_keys();
            if self.loaded_due_keys.get(&(*tenant, *member)).copied().unwrap_or_default() != keys {
                self.writes.due_keys.push((*tenant, *member, keys));
            }
            self.writes.lots.extend(ledger.take_dirty().into_iter().map(|lot| (*tenant, lot)));
        }
        for key in &self.dirty_members {
            self.writes.members.push((key.0, self.members[key].clone()));
        }
        for key in self.dirty_states.difference(&self.dirty_members) {
            let state = &self.members[key].state;
            if self.loaded_job_keys.get(key) == Some(&job_keys(state)) {
                self.writes.job_keys_unchanged.insert(*key);
            }
            self.writes.member_states.push((key.0, key.1, state.clone()));
        }
        for key in &self.dirty_purchases {
            let (program, record) = &self.purchases[key];
            let to = match self.stored_purchases.contains(key) {
                true => &mut self.writes.changed_purchases,
                false => &mut self.writes.purchases,
            };
            to.push((key.0, *program, record.clone()));
        }
        self.writes
    }

    /// The member a command names, following a merge to the survivor.
    pub(crate) fn member(&self, tenant: TenantId, id: MemberId) -> Result<MemberId, ApiError> {
        let mut row = self
            .members
            .get(&(tenant, id))
            .ok_or_else(|| ApiError::not_found("member_not_found", format!("member {id} does not exist")))?;
        // Stored merges are one hop, but within a batch a survivor may just have been absorbed.
        while let Some(survivor) = row.merged_into {
            row = self.members.get(&(tenant, survivor)).expect("survivors are loaded with the members they absorbed");
        }
        Ok(row.id)
    }

    /// The member's ledger, built from the loaded lots on first use, with the id allocator beside
    /// it (a pair, so both can be borrowed at once).
    pub(crate) fn ledger(&mut self, tenant: TenantId, member: MemberId) -> (&mut MemberLedger, &mut IdAllocator) {
        let (loaded_lots, unloaded) = (&mut self.loaded_lots, &mut self.unloaded);
        let ledger = self.ledgers.entry((tenant, member)).or_insert_with(|| {
            let lots = loaded_lots.remove(&(tenant, member)).unwrap_or_default();
            match unloaded.remove(&(tenant, member)) {
                Some((totals, until, keys)) => MemberLedger::partial(member, lots, totals, until, keys),
                None => MemberLedger::new(member, lots),
            }
        });
        (ledger, &mut *self.ids)
    }

    pub(crate) fn balance(&mut self, tenant: TenantId, member: MemberId, program: &Program) -> BalanceView {
        let now = self.now;
        let balance = self.ledger(tenant, member).0.balance(&program.point_currency, now);
        BalanceView { member_id: member.0, currency: program.point_currency.to_string(), balance, as_of: now }
    }

    pub(crate) fn record(&mut self, tenant: TenantId, outcome: purchase::Outcome) {
        for event in outcome.events {
            *self.next_event_id += 1;
            self.writes.events.push((tenant, *self.next_event_id, event, self.now));
        }
        self.writes.movements.extend(outcome.movements.into_iter().map(|m| (tenant, m)));
    }

    /// Marks a member whose loyalty state (not profile) changed, for the flush.
    pub(crate) fn mark_state_dirty(&mut self, tenant: TenantId, member: MemberId) {
        self.dirty_states.insert((tenant, member));
    }

    pub(crate) fn event(&mut self, tenant: TenantId, event: DomainEvent) {
        *self.next_event_id += 1;
        self.writes.events.push((tenant, *self.next_event_id, event, self.now));
    }

    fn check_identifiers(&self, tenant: TenantId, profile: &Profile, owner: Option<MemberId>) -> Result<(), ApiError> {
        for kind in IdentifierKind::ALL {
            let Some(value) = profile.identifier(kind) else { continue };
            if let Some(holder) = self.identifiers.get(&(tenant, kind, value.to_string())) {
                if Some(*holder) != owner {
                    return Err(ApiError::Conflict {
                        code: "identifier_taken",
                        detail: format!("{} {value:?} already belongs to member {holder}", kind.as_str()),
                        field: Some(kind.as_str().to_string()),
                    });
                }
            }
        }
        Ok(())
    }

    fn set_identifiers(&mut self, tenant: TenantId, member: MemberId, old: Option<&Profile>, new: &Profile) {
        for kind in IdentifierKind::ALL {
            if let Some(value) = old.and_then(|p| p.identifier(kind)) {
                self.identifiers.remove(&(tenant, kind, value.to_string()));
            }
            if let Some(value) = new.identifier(kind) {
                self.identifiers.insert((tenant, kind, value.to_string()), member);
            }
        }
    }

    pub(crate) fn create_member(
        &mut self,
        tenant: TenantId,
        profile: Profile,
        signup_at: Option<Timestamp>,
    ) -> Result<Reply, ApiError> {
        let profile = profile.normalized()?;
        self.check_identifiers(tenant, &profile, None)?;
        let id = self.ids.member();
        self.set_identifiers(tenant, id, None, &profile);
        let row = MemberRow {
            id,
            profile,
            state: MemberState::default(),
            signup_at: signup_at.unwrap_or(self.now),
            merged_into: None,
            created_at: self.now,
            updated_at: self.now,
        };
        self.members.insert((tenant, id), row.clone());
        self.loaded_lots.insert((tenant, id), Vec::new());
        self.dirty_members.insert((tenant, id));
        self.event(tenant, DomainEvent::MemberCreated { member_id: id });
        // An import carries its members' own signup dates: they enrolled elsewhere, long ago.
        if signup_at.is_none() {
            self.signup_bonus(tenant, id);
        }
        Ok(Reply::json(201, &MemberView::from(row)).about(id))
    }

    fn update_member(&mut self, tenant: TenantId, id: MemberId, patch: &serde_json::Value) -> Result<Reply, ApiError> {
        let current = self
            .members
            .get(&(tenant, id))
            .ok_or_else(|| ApiError::not_found("member_not_found", format!("member {id} does not exist")))?;
        if let Some(survivor) = current.merged_into {
            return Err(DomainError::MemberMerged { member_id: id.0, survivor_id: survivor.0 }.into());
        }
        let serde_json::Value::Object(changes) = patch else {
            return Err(ApiError::bad_request("malformed_json", "body", "a member patch is a JSON object"));
        };
        let mut document = serde_json::to_value(&current.profile).expect("profiles serialize");
        for (field, value) in changes {
            document[field] = value.clone();
        }
        let profile: Profile = serde_json::from_value(document)
            .map_err(|error| ApiError::bad_request("validation_failed", "body", error.to_string()))?;
        let profile = profile.normalized()?;
        self.check_identifiers(tenant, &profile, Some(id))?;
        let old = current.profile.clone();
        self.set_identifiers(tenant, id, Some(&old), &profile);
        let row = self.members.get_mut(&(tenant, id)).expect("checked above");
        row.profile = profile;
        row.updated_at = self.now;
        let view = MemberView::from(row.clone());
        self.dirty_members.insert((tenant, id));
        self.event(tenant, DomainEvent::MemberUpdated { member_id: id });
        Ok(Reply::json(200, &view).about(id))
    }

    fn erase(&mut self, tenant: TenantId, id: MemberId) -> Result<Reply, ApiError> {
        let row = self
            .members
            .get(&(tenant, id))
            .ok_or_else(|| ApiError::not_found("member_not_found", format!("member {id} does not exist")))?;
        let old = row.profile.clone();
        let erased = Profile::default();
        self.set_identifiers(tenant, id, Some(&old), &erased);
        let row = self.members.get_mut(&(tenant, id)).expect("checked above");
        row.profile = erased;
        row.updated_at = self.now;
        let view = MemberView::from(row.clone());
        self.dirty_members.insert((tenant, id));
        // Answers stored earlier in this batch go too, not only those already in the database.
        self.writes.idempotency.retain(|(t, _, stored, _)| !(*t == tenant && stored.member_id == Some(id)));
        self.idempotency.retain(|(t, _), stored| !(*t == tenant && stored.member_id == Some(id)));
        self.writes.erased.push((tenant, id));
        self.event(tenant, DomainEvent::MemberErased { member_id: id });
        Ok(Reply::json(200, &view))
    }

    fn change_state(&mut self, tenant: TenantId, id: MemberId, change: &StateChange) -> Result<Reply, ApiError> {
        let member = self.member(tenant, id)?;
        if member != id {
            return Err(DomainError::MemberMerged { member_id: id.0, survivor_id: member.0 }.into());
        }
        if let (Some(Some(tier)), Some(tiers)) = (&change.tier, &self.programs.get(tenant, None)?.program.tiers) {
            if tiers.level(tier).is_none() {
                let known: Vec<&str> = tiers.levels.iter().map(|l| l.id.as_str()).collect();
                return Err(ApiError::bad_request("unknown_tier", "tier", format!("{tier:?} is not one of {known:?}")));
            }
        }
        let now = self.now;
        let row = self.members.get_mut(&(tenant, id)).expect("resolved above");
        let mut state = row.state.clone();
        let changes_before = state.tier_history.len();
        let campaigns_before = state.campaigns.clone();
        state.apply(change, now)?;
        let joined: Vec<String> = state.campaigns.difference(&campaigns_before).cloned().collect();
        let manual_change =
            (state.tier_history.len() > changes_before).then(|| state.tier_history.last().cloned()).flatten();
        row.state = state;
        row.updated_at = now;
        let view = MemberView::from(row.clone());
        self.dirty_members.insert((tenant, id));
        self.event(tenant, DomainEvent::MemberUpdated { member_id: id });
        if let Some(change) = manual_change {
            self.tier_event(tenant, id, change);
        }
        // Only campaigns the member was not in yet: a repeated PATCH offers nothing new.
        for campaign in joined {
            let event = DomainEvent::OfferReceived {
                member_id: id,
                source: "campaign".into(),
                campaign,
                coupon_campaign_id: None,
                code: None,
                valid_until: None,
            };
            self.event(tenant, event);
        }
        Ok(Reply::json(200, &view).about(id))
    }

    fn tier_event(&mut self, tenant: TenantId, member: MemberId, change: TierChange) {
        let event =
            DomainEvent::TierChanged { member_id: member, from: change.from, to: change.to, reason: change.reason };
        self.event(tenant, event);
    }

    /// Ends the member's admin-assigned tier if its date passed, before a purchase is priced, so
    /// the member buys at the level they fall back to even if the tiers job has not run yet.
    pub(crate) fn end_manual_tier(&mut self, tenant: TenantId, member: MemberId, program: &Program) {
        let now = self.now;
        let row = self.members.get_mut(&(tenant, member)).expect("resolved by the caller");
        if let Some(change) = row.state.end_manual_tier(program, now) {
            self.dirty_states.insert((tenant, member));
            self.tier_event(tenant, member, change);
        }
    }

    /// The tier reviews due at the batch's time for these members, and the admin assignments that
    /// ended (the `tiers` job).
    fn review_tiers(&mut self, tenant: TenantId, members: &[MemberId]) -> Result<Reply, ApiError> {
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let mut changed = 0;
        for member in members {
            let Some(row) = self.members.get_mut(&(tenant, *member)) else { continue };
            if row.merged_into.is_some() {
                continue;
            }
            let before = row.state.clone();
            let changes = row.state.review_tiers(&program, now);
            if row.state != before {
                self.dirty_states.insert((tenant, *member));
            }
            for change in changes {
                changed += 1;
                self.tier_event(tenant, *member, change);
            }
        }
        Ok(Reply::json(200, &serde_json::json!({ "members": members.len(), "changed": changed })))
    }

    fn merge(&mut self, tenant: TenantId, survivor: MemberId, absorbed: MemberId) -> Result<Reply, ApiError> {
        if survivor == absorbed {
            return Err(DomainError::MergeIntoSelf.into());
        }
        for id in [survivor, absorbed] {
            let resolved = self.member(tenant, id)?;
            if resolved != id {
                return Err(DomainError::MemberMerged { member_id: id.0, survivor_id: resolved.0 }.into());
            }
        }
        let program = self.programs.get(tenant, None)?.program.clone();
        let now = self.now;
        let mut absorbed_ledger =
            std::mem::replace(self.ledger(tenant, absorbed).0, MemberLedger::new(absorbed, Vec::new()));
        let (survivor_ledger, ids) = self.ledger(tenant, survivor);
        let mut movements = absorbed_ledger.catch_up(now, ids);
        movements.extend(survivor_ledger.catch_up(now, ids));
        let merged = survivor_ledger.absorb(&mut absorbed_ledger, ids, now);
        let points_moved = merged.iter().map(|m| m.member_delta()).sum();
        movements.extend(merged);
        self.ledgers.insert((tenant, absorbed), absorbed_ledger);
        let events = movements.iter().map(|m| DomainEvent::of_movement(m, None)).collect();
        self.record(tenant, purchase::Outcome { movements, events, ..Default::default() });
        let absorbed_state = self.members[&(tenant, absorbed)].state.clone();
        self.members.get_mut(&(tenant, survivor)).expect("resolved above").state.absorb(&absorbed_state);
        self.dirty_states.insert((tenant, survivor));
        let row = self.members.get_mut(&(tenant, absorbed)).expect("resolved above");
        row.merged_into = Some(survivor);
        row.updated_at = now;
        self.dirty_members.insert((tenant, absorbed));
        // Members the absorbed one had absorbed now point at the survivor too (one hop, always).
        for (key, other) in self.members.iter_mut() {
            if key.0 == tenant && other.merged_into == Some(absorbed) {
                other.merged_into = Some(survivor);
                self.dirty_members.insert(*key);
            }
        }
        self.writes.merges.push((tenant, absorbed, survivor));
        self.event(tenant, DomainEvent::MembersMerged { survivor_id: survivor, absorbed_id: absorbed });
        let balance = self.balance(tenant, survivor, &program);
        let survivor_view = MemberView::from(self.members[&(tenant, survivor)].clone());
        let merged = MergeResponse { survivor: survivor_view, absorbed_id: absorbed.0, points_moved, balance };
        Ok(Reply::json(200, &merged).about(survivor))
    }

    fn purchase(&mut self, tenant: TenantId, request: &PurchaseRequest) -> Result<Reply, ApiError> {
        let member = self.member(tenant, MemberId(request.member_id))?;
        let entry = self.programs.get(tenant, request.program_id)?.clone();
        let currency = Currency::parse(&request.currency)?;
        let occurred_at = request.occurred_at.unwrap_or(self.now);
        if occurred_at > self.now + CLOCK_SKEW_MAX {
            return Err(ApiError::bad_request("validation_failed", "occurred_at", "must not be in the future"));
        }
        let command = PurchaseCommand {
            external_id: request.external_id.clone(),
            occurred_at,
            channel: request.channel,
            store: request.store.clone(),
            currency,
            lines: request.lines.clone(),
            redeem_points: request.redeem_points,
        };
        self.end_manual_tier(tenant, member, &entry.program);
        let tier = self.members[&(tenant, member)].state.tier_at(occurred_at).map(str::to_string);
        let earn_program = entry.program.for_tier(tier.as_deref()).into_owned();
        let (record, explanation) = self.commit_purchase(tenant, member, &entry, &earn_program, command)?;
        let balance = self.balance(tenant, member, &entry.program);
        let explanation = request.explain.then_some(explanation);
        Ok(Reply::json(201, &PurchaseResponse { purchase: record, balance, explanation }))
    }

    /// Records a purchase for `member` under `entry`'s program, earning by `earn_program` (the
    /// program, or the program with a checkout's coupon rules), and counts it in the member's state.
    pub(crate) fn commit_purchase(
        &mut self,
        tenant: TenantId,
        member: MemberId,
        entry: &ProgramEntry,
        earn_program: &Program,
        command: PurchaseCommand,
    ) -> Result<(PurchaseRecord, Vec<LineExplanation>), ApiError> {
        if let Some(existing) = self.purchase_by_external_id.get(&(tenant, command.external_id.clone())) {
            return Err(ApiError::Conflict {
                code: "duplicate_purchase",
                detail: format!("receipt {:?} is already recorded as purchase {existing}", command.external_id),
                field: Some("external_id".into()),
            });
        }
        let row = &self.members[&(tenant, member)];
        let context = row.state.context(&entry.program, row.profile.birth_date, command.occurred_at);
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let (record, mut outcome) =
            purchase::decide_purchase(earn_program, entry.version, ledger, command, &context, now, ids)?;
        let explanation = std::mem::take(&mut outcome.explanation);
        self.record(tenant, outcome);
        let state = &mut self.members.get_mut(&(tenant, member)).expect("resolved above").state;
        state.record_purchase(&entry.program, &record);
        let upgrade = state.upgrade_if_qualified(&entry.program, record.occurred_at);
        self.dirty_states.insert((tenant, member));
        if let Some(change) = upgrade {
            self.tier_event(tenant, member, change);
        }
        self.purchase_by_external_id.insert((tenant, record.external_id.clone()), record.id);
        self.purchases.insert((tenant, record.id), (entry.id, record.clone()));
        self.dirty_purchases.insert((tenant, record.id));
        Ok((record, explanation))
    }

    fn return_purchase(&mut self, tenant: TenantId, request: &ReturnRequest) -> Result<Reply, ApiError> {
        let id = match (request.purchase_id, &request.purchase_external_id) {
            (Some(id), None) => PurchaseId(id),
            (None, Some(external_id)) => {
                *self.purchase_by_external_id.get(&(tenant, external_id.clone())).ok_or_else(|| {
                    ApiError::not_found("purchase_not_found", format!("no purchase with receipt {external_id:?}"))
                })?
            }
            _ => {
                return Err(ApiError::bad_request(
                    "validation_failed",
                    "purchase_id",
                    "name the purchase by exactly one of purchase_id and purchase_external_id",
                ))
            }
        };
        let (program_id, mut record) = self
            .purchases
            .get(&(tenant, id))
            .cloned()
            .ok_or_else(|| ApiError::not_found("purchase_not_found", format!("purchase {id} does not exist")))?;
        let member = self.member(tenant, record.member_id)?;
        record.member_id = member;
        let program = self.programs.get(tenant, Some(program_id.0))?.program.clone();
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let (summary, outcome) =
            purchase::decide_return(&program, ledger, &mut record, request.lines.as_deref(), now, ids)?;
        self.record(tenant, outcome);
        let state = &mut self.members.get_mut(&(tenant, member)).expect("resolved above").state;
        // The returned share of the points earned, whether taken back, already spent or lapsed.
        let points = summary.points_reversed + summary.points_unrecovered + summary.points_lapsed;
        state.record_return(&program, record.occurred_at, summary.returned_minor, points);
        self.dirty_states.insert((tenant, member));
        let balance = self.balance(tenant, member, &program);
        self.purchases.insert((tenant, id), (program_id, record.clone()));
        self.dirty_purchases.insert((tenant, id));
        Ok(Reply::json(
            201,
            &ReturnResponse {
                purchase_id: id.0,
                returned_minor: summary.returned_minor,
                points_reversed: summary.points_reversed,
                points_restored: summary.points_restored,
                points_unrecovered: summary.points_unrecovered,
                points_lapsed: summary.points_lapsed,
                purchase: record,
                balance,
            },
        ))
    }

    fn redeem(&mut self, tenant: TenantId, request: &RedemptionRequest) -> Result<Reply, ApiError> {
        let member = self.member(tenant, MemberId(request.member_id))?;
        let program = self.programs.get(tenant, request.program_id)?.program.clone();
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let reason = request.reason.clone();
        let outcome = purchase::decide_redeem(&program, ledger, request.points, request.bill_minor, reason, now, ids)?;
        self.movement_reply(tenant, member, &program, outcome)
    }

    fn adjust(&mut self, tenant: TenantId, request: &AdjustmentRequest) -> Result<Reply, ApiError> {
        let member = self.member(tenant, MemberId(request.member_id))?;
        let program = self.programs.get(tenant, request.program_id)?.program.clone();
        let now = self.now;
        let (ledger, ids) = self.ledger(tenant, member);
        let outcome = purchase::decide_adjust(&program, ledger, request.points, request.reason.clone(), now, ids)?;
        self.movement_reply(tenant, member, &program, outcome)
    }

    fn movement_reply(
        &mut self,
        tenant: TenantId,
        member: MemberId,
        program: &Program,
        outcome: purchase::Outcome,
    ) -> Result<Reply, ApiError> {
        let movement = outcome.movements.last().cloned().expect("redemptions and adjustments move points");
        self.record(tenant, outcome);
        let balance = self.balance(tenant, member, program);
        Ok(Reply::json(201, &MovementResponse { movement, balance }))
    }

    fn catch_up(&mut self, tenant: TenantId, members: &[MemberId]) -> Result<Reply, ApiError> {
        let now = self.now;
        let mut movements = Vec::new();
        for member in members {
            if !self.members.contains_key(&(tenant, *member)) {
                continue;
            }
            let (ledger, ids) = self.ledger(tenant, *member);
            movements.extend(ledger.catch_up(now, ids));
        }
        let count = movements.len();
        let events = movements.iter().map(|m| DomainEvent::of_movement(m, None)).collect();
        self.record(tenant, purchase::Outcome { movements, events, ..Default::default() });
        Ok(Reply::json(200, &serde_json::json!({ "members": members.len(), "movements": count })))
    }
}
