//! Referrals in the writer: sign-up with a code, codes assigned on first ask, and the settling of
//! referrals whose qualifying purchase is due (the `referrals` job).
//!
//! A sign-up with a code always enrols the member: a referral refused as self-referral or over the
//! referrer's limit is recorded with its reason and gives nobody anything. Only an unknown code
//! refuses the sign-up, since that is a typo the till can fix.

use std::collections::HashMap;

use kopilka_core::member::{IdentifierKind, Profile};
use kopilka_core::referrals::{self, Party, Referral, ReferralProgram, ReferralStatus, Verdict};
use kopilka_core::{DomainEvent, MemberId, PurchaseId, TenantId, Timestamp};
use kopilka_store::batch::BatchKeys;
use kopilka_store::referrals::{ReferralWrites, ReferralsLoaded};
use serde::Serialize;

use crate::engine::{BatchState, Command, Reply};
use crate::error::ApiError;

/// The longest device fingerprint kept.
pub const DEVICE_ID_LEN_MAX: usize = 200;

/// A referral change.
#[derive(Debug, Clone)]
pub enum ReferralCommand {
    /// Enrols a member, recording the device they signed up from and the code that brought them.
    Enrol {
        /// Boxed: a profile is several times the size of the other variants.
        profile: Box<Profile>,
        referral_code: Option<String>,
        device_id: Option<String>,
        /// The new member's own code, drawn by the handler (the engine has no randomness).
        new_code: String,
    },
    /// Gives the member a code unless they have one.
    EnsureCode { member_id: MemberId, code: String },
    /// Rewards or voids the referrals of these referred members whose purchase is due.
    Settle { due: Vec<(MemberId, PurchaseId)> },
}

impl ReferralCommand {
    pub(crate) fn push_keys(&self, tenant: TenantId, keys: &mut BatchKeys) {
        match self {
            ReferralCommand::Enrol { profile, referral_code, new_code, .. } => {
                for kind in IdentifierKind::ALL {
                    if let Some(Ok(value)) = profile.identifier(kind).map(|raw| kind.normalize(raw)) {
                        keys.identifiers.push((tenant, kind, value));
                    }
                }
                if let Some(code) = referral_code {
                    keys.referrals.codes.push((tenant, normalize_code(code)));
                }
                keys.referrals.codes.push((tenant, new_code.clone()));
            }
            ReferralCommand::EnsureCode { member_id, code } => {
                keys.members.push((tenant, *member_id));
                keys.referrals.referrers.push((tenant, *member_id));
                keys.referrals.codes.push((tenant, code.clone()));
            }
            ReferralCommand::Settle { due } => {
                for (member, purchase) in due {
                    keys.referrals.referred.push((tenant, *member));
                    keys.purchase_ids.push((tenant, *purchase));
                }
            }
        }
    }
}

/// Codes are shown in upper case and read back in any case.
pub fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// The batch's referral rows, changed by each command in turn.
#[derive(Debug, Default)]
pub struct ReferralState {
    loaded: ReferralsLoaded,
    writes: ReferralWrites,
}

impl ReferralState {
    pub fn new(loaded: ReferralsLoaded) -> ReferralState {
        ReferralState { loaded, writes: ReferralWrites::default() }
    }

    pub fn into_writes(self) -> ReferralWrites {
        self.writes
    }

    fn assign_code(&mut self, tenant: TenantId, member: MemberId, code: &str) -> Result<(), ApiError> {
        if self.loaded.code_owners.contains_key(&(tenant, code.to_string())) {
            // 50 random bits make this all but impossible; a retry draws another code.
            return Err(ApiError::Conflict {
                code: "referral_code_collision",
                detail: "the drawn referral code is taken: retry with a new Idempotency-Key".into(),
                field: None,
            });
        }
        self.loaded.code_owners.insert((tenant, code.to_string()), member);
        self.loaded.codes.insert((tenant, member), code.to_string());
        self.writes.codes.push((tenant, member, code.to_string()));
        Ok(())
    }

    fn put(&mut self, tenant: TenantId, referral: Referral) {
        self.writes.referrals.retain(|(t, r)| !(*t == tenant && r.referred_id == referral.referred_id));
        self.loaded.referrals.insert((tenant, referral.referred_id), referral.clone());
        self.writes.referrals.push((tenant, referral));
    }
}

/// The answer to a sign-up through the referral path: the member, and what became of the referral.
#[derive(Debug, Serialize)]
struct EnrolReply {
    #[serde(flatten)]
    member: serde_json::Value,
    referral_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    referral: Option<Referral>,
}

impl BatchState<'_> {
    pub(crate) fn referral(&mut self, tenant: TenantId, command: &ReferralCommand) -> Result<Reply, ApiError> {
        match command {
            ReferralCommand::Enrol { profile, referral_code, device_id, new_code } => {
                self.enrol(tenant, profile, referral_code.as_deref(), device_id.as_deref(), new_code)
            }
            ReferralCommand::EnsureCode { member_id, code } => {
                let member = self.member(tenant, *member_id)?;
                if let Some(existing) = self.referrals.loaded.codes.get(&(tenant, member)) {
                    return Ok(Reply::json(200, &serde_json::json!({ "member_id": member.0, "code": existing })));
                }
                self.referrals.assign_code(tenant, member, code)?;
                Ok(Reply::json(201, &serde_json::json!({ "member_id": member.0, "code": code })))
            }
            ReferralCommand::Settle { due } => self.settle_referrals(tenant, due),
        }
    }

    fn terms(&self, tenant: TenantId) -> Result<(ReferralProgram, std::sync::Arc<kopilka_core::Program>), ApiError> {
        let program = self.programs.get(tenant, None)?.program.clone();
        let terms = program.referrals.clone().ok_or_else(|| ApiError::Unprocessable {
            code: "referrals_not_offered",
            detail: "the program has no referral terms (program.referrals)".into(),
            field: Some("referral_code".into()),
        })?;
        Ok((terms, program))
    }

    fn enrol(
        &mut self,
        tenant: TenantId,
        profile: &Profile,
        code: Option<&str>,
        device: Option<&str>,
        new_code: &str,
    ) -> Result<Reply, ApiError> {
        if let Some(device) = device {
            if device.trim().is_empty() || device.len() > DEVICE_ID_LEN_MAX {
                return Err(ApiError::bad_request(
                    "validation_failed",
                    "device_id",
                    format!("must be 1 to {DEVICE_ID_LEN_MAX} characters"),
                ));
            }
        }
        // Everything that can refuse the sign-up is checked before the member is created.
        let referrer = match code {
            None => None,
            Some(code) => {
                let (terms, program) = self.terms(tenant)?;
                let owner = self.referrals.loaded.code_owners.get(&(tenant, normalize_code(code))).copied();
                let owner = owner.ok_or_else(|| ApiError::Unprocessable {
                    code: "referral_code_unknown",
                    detail: format!("no member has the referral code {code:?}"),
                    field: Some("referral_code".into()),
                })?;
                Some((self.member(tenant, owner)?, terms, program))
            }
        };
        if self.referrals.loaded.code_owners.contains_key(&(tenant, new_code.to_string())) {
            return Err(ApiError::Conflict {
                code: "referral_code_collision",
                detail: "the drawn referral code is taken: retry with a new Idempotency-Key".into(),
                field: None,
            });
        }
        let created = self.create_member(tenant, profile.clone(), None)?;
        let member_view: serde_json::Value = serde_json::from_slice(&created.body).expect("member views are JSON");
        let member = MemberId(member_view["id"].as_i64().expect("a member view has its id"));
        self.referrals.assign_code(tenant, member, new_code)?;
        if let Some(device) = device {
            self.referrals.writes.devices.push((tenant, member, device.trim().to_string()));
            self.referrals.loaded.devices.entry((tenant, member)).or_default().push(device.trim().to_string());
        }
        let mut referral = None;
        if let Some((referrer, terms, program)) = referrer {
            referral = Some(self.decide_referral(tenant, referrer, member, &terms, &program));
        }
        let reply = EnrolReply { member: member_view, referral_code: new_code.to_string(), referral };
        Ok(Reply::json(201, &reply).about(member))
    }

    fn decide_referral(
        &mut self,
        tenant: TenantId,
        referrer: MemberId,
        referred: MemberId,
        terms: &ReferralProgram,
        program: &kopilka_core::Program,
    ) -> Referral {
        let now = self.now;
        let devices = &self.referrals.loaded.devices;
        let no_devices = Vec::new();
        let party = |member: MemberId| {
            let profile = &self.members[&(tenant, member)].profile;
            Party {
                phone: profile.phone.as_deref(),
                email: profile.email.as_deref(),
                card: profile.card.as_deref(),
                devices: devices.get(&(tenant, member)).unwrap_or(&no_devices).iter().map(String::as_str).collect(),
            }
        };
        let accepted_at: Vec<Timestamp> = self
            .referrals
            .loaded
            .referrals
            .iter()
            .filter(|((t, _), r)| {
                *t == tenant
                    && r.referrer_id == referrer
                    && matches!(r.status, ReferralStatus::Accepted | ReferralStatus::Rewarded)
            })
            .map(|(_, r)| r.created_at)
            .collect();
        let verdict = referrals::check_referral(terms, &party(referrer), &party(referred), &accepted_at, now);
        let status = match verdict {
            Ok(()) => ReferralStatus::Accepted,
            Err(reason) => ReferralStatus::Rejected(reason),
        };
        let referral = Referral {
            referrer_id: referrer,
            referred_id: referred,
            status,
            created_at: now,
            purchase_id: None,
            decided_at: None,
        };
        match verdict {
            Ok(()) => {
                if terms.welcome_points > 0 {
                    let (ledger, ids) = self.ledger(tenant, referred);
                    let outcome = referrals::decide_referral_credit(
                        program,
                        ledger,
                        terms.welcome_points,
                        "referral welcome bonus",
                        now,
                        ids,
                    );
                    self.record(tenant, outcome);
                }
                let event = DomainEvent::ReferralAccepted {
                    member_id: referred,
                    referrer_id: referrer,
                    welcome_points: terms.welcome_points,
                };
                self.event(tenant, event);
            }
            Err(reason) => {
                let event = DomainEvent::ReferralRejected {
                    member_id: referred,
                    referrer_id: referrer,
                    reason: reason.as_str().to_string(),
                };
                self.event(tenant, event);
            }
        }
        self.referrals.put(tenant, referral.clone());
        referral
    }

    fn settle_referrals(&mut self, tenant: TenantId, due: &[(MemberId, PurchaseId)]) -> Result<Reply, ApiError> {
        let (terms, program) = self.terms(tenant)?;
        let now = self.now;
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for (referred, purchase_id) in due {
            let Some(referral) = self.referrals.loaded.referrals.get(&(tenant, *referred)).cloned() else { continue };
            // Another run may have settled it already: only an accepted referral moves on.
            if referral.status != ReferralStatus::Accepted {
                continue;
            }
            let Some((_, purchase)) = self.purchases.get(&(tenant, *purchase_id)).cloned() else { continue };
            if purchase.member_id != *referred || !referrals::qualifies(&terms, &purchase) {
                continue;
            }
            let status = match referrals::judge_purchase(&terms, &program, &purchase, now) {
                Verdict::Wait => continue,
                Verdict::Void => ReferralStatus::Voided,
                Verdict::Reward => ReferralStatus::Rewarded,
            };
            if status == ReferralStatus::Rewarded {
                let referrer = self.member(tenant, referral.referrer_id)?;
                if terms.referrer_points > 0 {
                    let (ledger, ids) = self.ledger(tenant, referrer);
                    let reason = format!("referral reward for member {referred}");
                    let outcome =
                        referrals::decide_referral_credit(&program, ledger, terms.referrer_points, &reason, now, ids);
                    self.record(tenant, outcome);
                }
                let event = DomainEvent::ReferralRewarded {
                    member_id: referrer,
                    referred_id: *referred,
                    points: terms.referrer_points,
                };
                self.event(tenant, event);
                *counts.entry("rewarded").or_default() += 1;
            } else {
                *counts.entry("voided").or_default() += 1;
            }
            let settled = Referral { status, purchase_id: Some(*purchase_id), decided_at: Some(now), ..referral };
            self.referrals.put(tenant, settled);
        }
        Ok(Reply::json(200, &counts))
    }
}

/// The `referrals` job: for every accepted referral whose referred member has made a qualifying
/// purchase, asks the writer to settle it. The writer judges each at its own `now` (reward, void,
/// or wait), so a run repeated or racing a return never rewards twice or rewards a returned
/// purchase. `movements` in the report counts referrals settled.
pub async fn run_job(
    store: &kopilka_store::Store,
    writer: &crate::writer::Writer,
    only: Option<TenantId>,
) -> Result<crate::dto::JobReport, ApiError> {
    let mut report = crate::dto::JobReport { job: "referrals".into(), members: 0, movements: 0 };
    for tenant in store.tenants_with_accepted_referrals().await? {
        if only.is_some_and(|only| only != tenant) {
            continue;
        }
        let Some((_, _, program)) = store.program(tenant, None).await? else { continue };
        let Some(terms) = program.referrals else { continue };
        let mut after = MemberId(0);
        for _ in 0..crate::jobs::CHUNKS_PER_RUN_MAX {
            let referred = store.accepted_referrals(tenant, after, crate::jobs::CHUNK_MEMBERS_MAX).await?;
            let Some(last) = referred.last() else { break };
            after = *last;
            let mut due = Vec::new();
            for member in referred {
                let min_minor = terms.min_purchase_minor.max(1);
                if let Some(purchase) = store.first_purchase_at_least(tenant, member, min_minor).await? {
                    due.push((member, purchase));
                }
            }
            if due.is_empty() {
                continue;
            }
            report.members += due.len() as i64;
            let command = Command::Referral(ReferralCommand::Settle { due });
            let reply = writer.submit(crate::engine::Request { tenant, idempotency: None, command }).await?;
            let body: HashMap<String, i64> = serde_json::from_slice(&reply.body).expect("settle replies are JSON");
            report.movements += body.values().sum::<i64>();
        }
    }
    Ok(report)
}
