//! Checkout in the writer: quote (price a basket and hold its coupons), confirm (record the
//! purchase, the payment with points, the discounts and the coupon uses in the batch's one
//! transaction), cancel (let the coupons go); and the coupon campaigns' administrative commands.
//!
//! A confirmation prices the basket again on the state it finds. What it commits is therefore
//! what a quote would say at that moment; if a held coupon was meanwhile stopped or its campaign
//! ran out, the confirmation is refused with the coupon's reason and nothing is written.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use kopilka_core::checkout::coupon::{normalize_code, CODES_PER_REQUEST_MAX};
use kopilka_core::checkout::CouponEffect;
use kopilka_core::checkout::{
    self, check_code, CampaignRecord, Checkout, CheckoutBasket, CheckoutStatus, Coupon, CouponCampaign, CouponInput,
    CouponRefusal, Quote, QuoteBasket, Spend,
};
use kopilka_core::member_state::SpendWindow;
use kopilka_core::purchase::{self, Channel, LineInput, PurchaseCommand, PurchaseRecord};
use kopilka_core::rewards::{RedemptionId, RedemptionStatus};
use kopilka_core::rules::LineExplanation;
use kopilka_core::{Currency, DomainEvent, MemberId, TenantId};
use kopilka_store::batch::Connection as AnyConnection;
use kopilka_store::batch::{BatchKeys, Loaded};
use kopilka_store::checkout::{admin, CampaignRow, CheckoutWrites};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::dto::BalanceView;
use crate::engine::{BatchState, Reply};
use crate::error::ApiError;

/// At most this many codes come back in the answer to a generation; the rest are read by page.
pub const CODES_IN_ANSWER_MAX: usize = 10_000;

/// A basket to quote.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub member_id: i64,
    #[schema(value_type = Vec<Object>)]
    pub lines: Vec<LineInput>,
    #[serde(default)]
    pub channel: Channel,
    #[serde(default)]
    pub store: Option<String>,
    /// ISO 4217 code of the bill; must be the program's bill currency.
    pub currency: String,
    /// Coupon codes the member brings.
    #[serde(default)]
    pub coupons: Vec<String>,
    /// Points the member wants to pay with; the quote takes at most what the program allows.
    #[serde(default)]
    pub redeem_points: i64,
    #[serde(default)]
    pub program_id: Option<i64>,
}

/// What confirming commits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The receipt number, unique per tenant.
    pub external_id: String,
    /// Points to pay with; defaults to what the quote took.
    #[serde(default)]
    pub redeem_points: Option<i64>,
    /// The coupons to use, of those the quote holds; defaults to all of them.
    #[serde(default)]
    pub coupons: Option<Vec<String>>,
    /// Return, line by line, how the points were earned.
    #[serde(default)]
    pub explain: bool,
}

/// A checkout as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutView {
    pub id: i64,
    pub member_id: i64,
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[schema(value_type = Object)]
    pub quote: Quote,
    pub purchase_id: Option<i64>,
}

impl CheckoutView {
    pub fn of(checkout: &Checkout, now: Timestamp) -> CheckoutView {
        CheckoutView {
            id: checkout.id,
            member_id: checkout.member_id.0,
            status: checkout.status_at(now).as_str().to_string(),
            expires_at: checkout.expires_at,
            quote: checkout.quote.clone(),
            purchase_id: checkout.purchase_id.map(|p| p.0),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfirmResponse {
    pub checkout: CheckoutView,
    #[schema(value_type = Object)]
    pub purchase: PurchaseRecord,
    pub balance: BalanceView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub explanation: Option<Vec<LineExplanation>>,
}

/// Codes to add to a campaign: generated, or imported from elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCodesRequest {
    /// How many codes to generate in the campaign's format.
    #[serde(default)]
    pub generate: Option<usize>,
    /// Personal codes: one generated code for each of these members.
    #[serde(default)]
    pub for_members: Option<Vec<i64>>,
    /// Codes made elsewhere (a partner's, a printed batch), optionally each bound to a member.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub codes: Option<Vec<ImportedCode>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportedCode {
    pub code: String,
    #[serde(default)]
    pub member_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodesAdded {
    pub campaign_id: i64,
    pub added: u64,
    /// The codes, when there are at most 10,000; otherwise read them with
    /// `GET /v1/coupon-campaigns/{id}/codes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<String>>,
}

/// A campaign as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignView {
    pub id: i64,
    #[schema(value_type = Object)]
    pub campaign: CouponCampaign,
    pub active: bool,
    pub used: u64,
    pub codes: i64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl From<CampaignRow> for CampaignView {
    fn from(row: CampaignRow) -> CampaignView {
        CampaignView {
            id: row.record.id,
            campaign: row.record.campaign,
            active: row.record.active,
            used: row.record.used,
            codes: row.codes,
            created_at: row.created_at,
        }
    }
}

/// The checkout part of a batch's state.
#[derive(Debug, Default)]
pub struct CheckoutState {
    checkouts: HashMap<(TenantId, i64), Checkout>,
    coupons: HashMap<(TenantId, String), Coupon>,
    campaigns: HashMap<(TenantId, i64), CampaignRecord>,
    /// Codes that are reward vouchers, with the redemption that issued them.
    vouchers: HashMap<(TenantId, String), RedemptionId>,
    dirty_checkouts: HashSet<(TenantId, i64)>,
    dirty_coupons: HashSet<(TenantId, String)>,
    dirty_campaigns: HashSet<(TenantId, i64)>,
}

impl CheckoutState {
    pub fn new(loaded: &mut Loaded) -> CheckoutState {
        let loaded = std::mem::take(&mut loaded.checkout);
        CheckoutState {
            checkouts: loaded.checkouts,
            coupons: loaded.coupons,
            campaigns: loaded.campaigns,
            vouchers: loaded.vouchers,
            ..CheckoutState::default()
        }
    }

    pub fn into_writes(self) -> CheckoutWrites {
        let mut writes = CheckoutWrites::default();
        for key in self.dirty_checkouts {
            writes.checkouts.push((key.0, self.checkouts[&key].clone()));
        }
        for key in self.dirty_coupons {
            writes.coupons.push((key.0, self.coupons[&key].clone()));
        }
        for key in self.dirty_campaigns {
            writes.campaign_uses.push((key.0, key.1, self.campaigns[&key].used));
        }
        writes
    }
}

/// Codes as typed, normalized; a malformed one stays as typed, to be refused by the quote.
fn normalized(codes: &[String]) -> Vec<String> {
    codes.iter().map(|raw| normalize_code(raw).unwrap_or_else(|_| raw.clone())).collect()
}

/// What quotes, confirmations and cancellations need loaded.
pub fn push_keys(keys: &mut BatchKeys, tenant: TenantId, command: &CheckoutCommand) {
    match command {
        CheckoutCommand::Quote(request) => {
            keys.members.push((tenant, MemberId(request.member_id)));
            keys.coupons.extend(normalized(&request.coupons).into_iter().map(|code| (tenant, code)));
        }
        CheckoutCommand::Confirm { id, request } => {
            keys.checkouts.push((tenant, *id));
            keys.purchase_external_ids.push((tenant, request.external_id.clone()));
            if let Some(codes) = &request.coupons {
                keys.coupons.extend(normalized(codes).into_iter().map(|code| (tenant, code)));
            }
        }
        CheckoutCommand::Cancel { id } => keys.checkouts.push((tenant, *id)),
    }
}

/// The checkout commands the writer batches.
#[derive(Debug, Clone)]
pub enum CheckoutCommand {
    Quote(QuoteRequest),
    Confirm { id: i64, request: ConfirmRequest },
    Cancel { id: i64 },
}

impl BatchState<'_> {
    pub(crate) fn decide_checkout(&mut self, tenant: TenantId, command: &CheckoutCommand) -> Result<Reply, ApiError> {
        match command {
            CheckoutCommand::Quote(request) => self.quote(tenant, request),
            CheckoutCommand::Confirm { id, request } => self.confirm(tenant, *id, request),
            CheckoutCommand::Cancel { id } => self.cancel(tenant, *id),
        }
    }

    /// Prices `basket` for `member` on the batch's state; `checkout_id` is the checkout whose holds
    /// do not count against it.
    fn price(
        &mut self,
        tenant: TenantId,
        member: MemberId,
        program: &kopilka_core::Program,
        basket: &CheckoutBasket,
        codes: &[String],
        checkout_id: i64,
    ) -> Quote {
        let now = self.now;
        let row = &self.members[&(tenant, member)];
        let mut state = row.state.clone();
        // Priced at the level an ended admin assignment falls back to, as the confirmation will be.
        state.end_manual_tier(program, now);
        let context = state.context(program, row.profile.birth_date, now);
        let program = &*program.for_tier(state.tier_at(now));
        let spend = Spend {
            lifetime_minor: state.spend(program, SpendWindow::Lifetime, now),
            calendar_year_minor: state.spend(program, SpendWindow::CalendarYear, now),
            rolling_12_months_minor: state.spend(program, SpendWindow::Rolling12Months, now),
        };
        let available_points = self.ledger(tenant, member).0.balance(&program.point_currency, now).available;
        let vouchers = self.voucher_coupons(tenant, codes);
        let checkout = &self.checkout;
        let inputs: Vec<CouponInput> = codes
            .iter()
            .map(|raw| {
                let checked = normalize_code(raw).map_err(CouponRefusal::Malformed).and_then(|code| {
                    if let Some((record, coupon)) = vouchers.get(&code) {
                        if coupon.uses > 1 {
                            return Err(CouponRefusal::VoucherCancelled);
                        }
                        check_code(record, coupon, member, 0, checkout_id, now)?;
                        return Ok((record, coupon));
                    }
                    let coupon = checkout.coupons.get(&(tenant, code)).ok_or(CouponRefusal::NotFound)?;
                    let record = &checkout.campaigns[&(tenant, coupon.campaign_id)];
                    let uses = state.coupon_uses.get(&record.id).copied().unwrap_or(0);
                    check_code(record, coupon, member, uses, checkout_id, now)?;
                    Ok((record, coupon))
                });
                CouponInput { code: normalize_code(raw).unwrap_or_else(|_| raw.clone()), checked }
            })
            .collect();
        let quote_basket = QuoteBasket {
            lines: &basket.lines,
            channel: basket.channel,
            store: basket.store.as_deref(),
            at: now,
            redeem_points: basket.redeem_points,
            available_points,
        };
        checkout::quote(program, &quote_basket, &context, &spend, &inputs)
    }

    /// Reward vouchers among `codes`, dressed as single-use personal coupons of a campaign of
    /// their own (negative ids, so they never meet a real campaign's counters). A voucher used
    /// already counts one use; a cancelled one two, which `price` turns into its own refusal.
    fn voucher_coupons(&self, tenant: TenantId, codes: &[String]) -> HashMap<String, (CampaignRecord, Coupon)> {
        let mut found = HashMap::new();
        for code in codes.iter().filter_map(|raw| normalize_code(raw).ok()) {
            let Some(id) = self.checkout.vouchers.get(&(tenant, code.clone())) else { continue };
            let Ok(redemption) = self.rewards.redemption(tenant, *id) else { continue };
            let Some(voucher) = &redemption.voucher else { continue };
            let effect = match (voucher.percent, voucher.amount_minor) {
                (Some(percent), _) => CouponEffect::Percent(percent),
                (None, Some(amount)) => CouponEffect::AmountMinor(amount),
                (None, None) => continue,
            };
            let campaign = CouponCampaign {
                name: format!("Reward voucher (redemption {})", redemption.id.0),
                effect,
                condition: kopilka_core::rules::Condition::Always,
                min_basket_minor: 0,
                valid_from: None,
                valid_until: voucher.expires_at,
                uses_per_code: 1,
                uses_per_member: None,
                uses_total: None,
                code_format: Default::default(),
            };
            let uses = match redemption.status {
                RedemptionStatus::Issued => 0,
                RedemptionStatus::Fulfilled => 1,
                RedemptionStatus::Cancelled => 2,
            };
            let record = CampaignRecord { id: -redemption.id.0, campaign, used: 0, active: true };
            let coupon = Coupon {
                code: code.clone(),
                campaign_id: record.id,
                member_id: Some(redemption.member_id),
                uses,
                holds: Vec::new(),
            };
            found.insert(code, (record, coupon));
        }
        found
    }

    fn quote(&mut self, tenant: TenantId, request: &QuoteRequest) -> Result<Reply, ApiError> {
        let member = self.member(tenant, MemberId(request.member_id))?;
        let entry = self.programs.get(tenant, request.program_id)?.clone();
        let program = entry.program.clone();
        let currency = Currency::parse(&request.currency)?;
        if currency != program.bill_currency {
            return Err(kopilka_core::DomainError::CurrencyMismatch {
                expected: program.bill_currency.to_string(),
                got: currency.to_string(),
            }
            .into());
        }
        purchase::line_totals(&request.lines)?;
        if request.redeem_points < 0 {
            return Err(ApiError::bad_request("validation_failed", "redeem_points", "must be zero or positive"));
        }
        if request.coupons.len() > 20 {
            return Err(ApiError::bad_request("validation_failed", "coupons", "at most 20 coupons per checkout"));
        }
        let basket = CheckoutBasket {
            lines: request.lines.clone(),
            channel: request.channel,
            store: request.store.clone(),
            currency: request.currency.clone(),
            coupons: request.coupons.clone(),
            redeem_points: request.redeem_points,
        };
        let now = self.now;
        let id = self.ids.checkout();
        let quote = self.price(tenant, member, &program, &basket, &request.coupons, id);
        let expires_at = now + SignedDuration::from_mins(program.checkout_hold_minutes);
        // Vouchers are personal and used once: the confirmation's check is their guard, no hold.
        for verdict in quote.valid_codes().filter(|v| v.campaign_id.is_some_and(|c| c > 0)) {
            let key = (tenant, verdict.code.clone());
            self.checkout.coupons.get_mut(&key).expect("valid codes were loaded").hold(id, expires_at, now);
            self.checkout.dirty_coupons.insert(key);
        }
        let checkout = Checkout {
            id,
            member_id: member,
            program_id: entry.id,
            status: CheckoutStatus::Open,
            basket,
            quote,
            purchase_id: None,
            created_at: now,
            expires_at,
            updated_at: now,
        };
        let view = CheckoutView::of(&checkout, now);
        self.checkout.checkouts.insert((tenant, id), checkout);
        self.checkout.dirty_checkouts.insert((tenant, id));
        Ok(Reply::json(201, &view).about(member))
    }

    fn open_checkout(&self, tenant: TenantId, id: i64) -> Result<Checkout, ApiError> {
        let checkout = self
            .checkout
            .checkouts
            .get(&(tenant, id))
            .ok_or_else(|| ApiError::not_found("checkout_not_found", format!("checkout {id} does not exist")))?;
        let refuse =
            |code, what: &str| ApiError::Conflict { code, detail: format!("checkout {id} {what}"), field: None };
        match checkout.status_at(self.now) {
            CheckoutStatus::Open => Ok(checkout.clone()),
            CheckoutStatus::Confirmed => Err(refuse("checkout_confirmed", "is already confirmed")),
            CheckoutStatus::Cancelled => Err(refuse("checkout_cancelled", "was cancelled")),
            CheckoutStatus::Expired => Err(refuse("checkout_expired", "expired: quote the basket again")),
        }
    }

    fn confirm(&mut self, tenant: TenantId, id: i64, request: &ConfirmRequest) -> Result<Reply, ApiError> {
        let mut checkout = self.open_checkout(tenant, id)?;
        let member = self.member(tenant, checkout.member_id)?;
        let entry = self.programs.get(tenant, Some(checkout.program_id.0))?.clone();
        let held: Vec<String> = checkout.quote.valid_codes().map(|c| c.code.clone()).collect();
        let codes = match &request.coupons {
            None => held.clone(),
            Some(codes) => normalized(codes),
        };
        if let Some(code) = codes.iter().find(|code| !held.contains(code)) {
            return Err(ApiError::Unprocessable {
                code: "coupon_not_in_quote",
                detail: format!("coupon {code:?} is not one the quote holds: quote the basket again with it"),
                field: Some("coupons".into()),
            });
        }
        let mut basket = checkout.basket.clone();
        basket.redeem_points = request.redeem_points.unwrap_or(checkout.quote.redeem_points);
        let quote = self.price(tenant, member, &entry.program, &basket, &codes, id);
        if let Some(refused) = quote.coupons.iter().find(|c| !c.valid) {
            let refusal = refused.refusal.as_ref().expect("invalid codes say why");
            return Err(ApiError::Unprocessable {
                code: coupon_code(&refusal.code),
                detail: format!("coupon {:?}: {}", refused.code, refusal.reason),
                field: Some("coupons".into()),
            });
        }
        if let Some(line) = quote.restricted.first() {
            return Err(ApiError::Unprocessable {
                code: "restricted_goods",
                detail: format!("line {}: {}", line.line, line.reason),
                field: Some(format!("lines[{}]", line.line)),
            });
        }
        let currency = Currency::parse(&basket.currency)?;
        let command = PurchaseCommand {
            external_id: request.external_id.clone(),
            occurred_at: self.now,
            channel: basket.channel,
            store: basket.store.clone(),
            currency,
            lines: quote.purchase_lines(&basket.lines),
            // The points asked for, not the quote's clamp: more than allowed is refused with the reason.
            redeem_points: basket.redeem_points,
        };
        self.end_manual_tier(tenant, member, &entry.program);
        let tier = self.members[&(tenant, member)].state.tier_at(self.now).map(str::to_string);
        let earn_program = quote.earn_program(&entry.program.for_tier(tier.as_deref()));
        let (record, explanation) = self.commit_purchase(tenant, member, &entry, &earn_program, command)?;

        let now = self.now;
        for verdict in quote.valid_codes() {
            if let Some(redemption) = verdict.campaign_id.filter(|c| *c < 0).map(|c| RedemptionId(-c)) {
                let event = self.rewards.use_voucher(tenant, redemption, now).expect("checked valid just above");
                self.event(tenant, event);
                continue;
            }
            let key = (tenant, verdict.code.clone());
            let coupon = self.checkout.coupons.get_mut(&key).expect("valid codes were loaded");
            coupon.consume(id, now);
            let campaign_id = coupon.campaign_id;
            self.checkout.dirty_coupons.insert(key);
            let campaign = self.checkout.campaigns.get_mut(&(tenant, campaign_id)).expect("loaded with its codes");
            campaign.used += 1;
            self.checkout.dirty_campaigns.insert((tenant, campaign_id));
            let state = &mut self.members.get_mut(&(tenant, member)).expect("resolved above").state;
            *state.coupon_uses.entry(campaign_id).or_default() += 1;
            self.event(
                tenant,
                DomainEvent::CouponRedeemed {
                    member_id: member,
                    code: verdict.code.clone(),
                    campaign_id,
                    purchase_id: record.id,
                    discount_minor: verdict.discount_minor,
                },
            );
        }
        // Codes the quote held but the confirmation did not use go back at once.
        for code in held.iter().filter(|code| !codes.contains(code)) {
            let key = (tenant, code.clone());
            if let Some(coupon) = self.checkout.coupons.get_mut(&key) {
                coupon.release(id, now);
                self.checkout.dirty_coupons.insert(key);
            }
        }
        checkout.status = CheckoutStatus::Confirmed;
        checkout.purchase_id = Some(record.id);
        checkout.quote = quote;
        checkout.updated_at = now;
        let balance = self.balance(tenant, member, &entry.program);
        let response = ConfirmResponse {
            checkout: CheckoutView::of(&checkout, now),
            purchase: record,
            balance,
            explanation: request.explain.then_some(explanation),
        };
        self.checkout.checkouts.insert((tenant, id), checkout);
        self.checkout.dirty_checkouts.insert((tenant, id));
        Ok(Reply::json(201, &response).about(member))
    }

    fn cancel(&mut self, tenant: TenantId, id: i64) -> Result<Reply, ApiError> {
        let mut checkout = match self.open_checkout(tenant, id) {
            Err(ApiError::Conflict { code: "checkout_expired", .. }) => self.checkout.checkouts[&(tenant, id)].clone(),
            other => other?,
        };
        let now = self.now;
        for verdict in checkout.quote.valid_codes() {
            let key = (tenant, verdict.code.clone());
            if let Some(coupon) = self.checkout.coupons.get_mut(&key) {
                coupon.release(id, now);
                self.checkout.dirty_coupons.insert(key);
            }
        }
        checkout.status = CheckoutStatus::Cancelled;
        checkout.updated_at = now;
        let view = CheckoutView::of(&checkout, now);
        let member = checkout.member_id;
        self.checkout.checkouts.insert((tenant, id), checkout);
        self.checkout.dirty_checkouts.insert((tenant, id));
        Ok(Reply::json(200, &view).about(member))
    }
}

/// The refusal codes as static strings, for problem+json.
fn coupon_code(code: &str) -> &'static str {
    const CODES: [&str; 13] = [
        "coupon_not_found",
        "coupon_malformed",
        "coupon_campaign_stopped",
        "coupon_not_yet_valid",
        "coupon_expired",
        "coupon_used_up",
        "coupon_held",
        "coupon_campaign_exhausted",
        "coupon_member_limit_reached",
        "coupon_not_yours",
        "coupon_condition_not_met",
        "coupon_same_campaign",
        "voucher_cancelled",
    ];
    CODES.into_iter().find(|c| *c == code).unwrap_or("coupon_invalid")
}

/// Administrative coupon commands; each runs alone in the writer's transaction.
#[derive(Debug, Clone)]
pub enum CampaignCommand {
    Create(CouponCampaign),
    SetActive { id: i64, active: bool },
    AddCodes { id: i64, request: AddCodesRequest },
}

pub(crate) async fn run_campaign_command(
    conn: &mut AnyConnection,
    tenant: TenantId,
    command: &CampaignCommand,
    now: Timestamp,
) -> Result<Result<Reply, ApiError>, kopilka_store::StoreError> {
    let not_found = |id: i64| ApiError::not_found("campaign_not_found", format!("coupon campaign {id} does not exist"));
    match command {
        CampaignCommand::Create(campaign) => {
            let id = admin::insert_campaign(conn, tenant, campaign, now).await?;
            let row = admin::campaign(conn, tenant, id).await?.expect("just inserted");
            Ok(Ok(Reply::json(201, &CampaignView::from(row))))
        }
        CampaignCommand::SetActive { id, active } => {
            if admin::set_campaign_active(conn, tenant, *id, *active, now).await?.is_none() {
                return Ok(Err(not_found(*id)));
            }
            let row = admin::campaign(conn, tenant, *id).await?.expect("exists");
            Ok(Ok(Reply::json(200, &CampaignView::from(row))))
        }
        CampaignCommand::AddCodes { id, request } => {
            let Some(row) = admin::campaign(conn, tenant, *id).await? else { return Ok(Err(not_found(*id))) };
            let format = &row.record.campaign.code_format;
            let codes = match codes_to_add(conn, tenant, &row.record.campaign, request).await? {
                Ok(codes) => codes,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let wanted = codes.len();
            let listing = wanted <= CODES_IN_ANSWER_MAX;
            if request.codes.is_some() {
                let added = admin::insert_codes(conn, tenant, *id, &codes, now).await?;
                offers_of_codes(conn, tenant, *id, &row.record.campaign, &codes, now).await?;
                let listed = listing.then(|| codes.into_iter().map(|c| c.0).collect());
                return Ok(Ok(Reply::json(201, &CodesAdded { campaign_id: *id, added, codes: listed })));
            }
            // Generated codes that happen to exist already are made up for with fresh ones (for the
            // same members). With at least 2^40 codes per format a second round almost never runs.
            // Which codes were skipped is only looked up when it matters: to list them, or to keep
            // personal codes with their members; a large anonymous batch is just topped up.
            let check_existing = listing || request.for_members.is_some();
            let mut pending = codes;
            let mut listed = Vec::new();
            let mut added = 0;
            for _round in 0..100 {
                // Sorted, duplicates sit side by side (and the store inserts in key order anyway).
                pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let mut retry: Vec<Option<MemberId>> = Vec::new();
                let mut kept: Vec<(String, Option<MemberId>)> = Vec::with_capacity(pending.len());
                for (code, member) in pending {
                    match kept.last() {
                        Some((last, _)) if *last == code => retry.push(member),
                        _ => kept.push((code, member)),
                    }
                }
                if check_existing {
                    let wanted_codes: Vec<String> = kept.iter().map(|c| c.0.clone()).collect();
                    let existing: HashSet<String> =
                        admin::existing_codes(conn, tenant, &wanted_codes).await?.into_iter().collect();
                    kept.retain(|(code, member)| {
                        let free = !existing.contains(code);
                        if !free {
                            retry.push(*member);
                        }
                        free
                    });
                }
                let inserted = admin::insert_codes(conn, tenant, *id, &kept, now).await?;
                added += inserted;
                offers_of_codes(conn, tenant, *id, &row.record.campaign, &kept, now).await?;
                retry.extend(std::iter::repeat_n(None, kept.len() - inserted as usize));
                if listing {
                    listed.extend(kept.into_iter().map(|c| c.0));
                }
                if retry.is_empty() {
                    let codes = listing.then_some(listed);
                    return Ok(Ok(Reply::json(201, &CodesAdded { campaign_id: *id, added, codes })));
                }
                let fresh = format.generate(retry.len(), &mut rand::thread_rng());
                pending = fresh.into_iter().zip(retry).collect();
            }
            Ok(Err(ApiError::Unprocessable {
                code: "code_space_exhausted",
                detail: "the code format has too few free codes left: make the codes longer".into(),
                field: Some("code_format.length".into()),
            }))
        }
    }
}

/// Announces each personal code to its member (`offer_received`), in the transaction that adds
/// the codes. Event ids come from the same sequence the writer's batches use.
async fn offers_of_codes(
    conn: &mut AnyConnection,
    tenant: TenantId,
    campaign_id: i64,
    campaign: &CouponCampaign,
    codes: &[(String, Option<MemberId>)],
    now: Timestamp,
) -> Result<(), kopilka_store::StoreError> {
    if codes.iter().all(|(_, member)| member.is_none()) {
        return Ok(());
    }
    let (ids, mut last_event_id) = kopilka_store::batch::id_seeds(conn).await?;
    let mut writes = kopilka_store::batch::Writes::default();
    for (code, member) in codes {
        let Some(member) = member else { continue };
        last_event_id += 1;
        let event = DomainEvent::OfferReceived {
            member_id: *member,
            source: "coupon".into(),
            campaign: campaign.name.clone(),
            coupon_campaign_id: Some(campaign_id),
            code: Some(code.clone()),
            valid_until: campaign.valid_until,
        };
        writes.events.push((tenant, last_event_id, event, now));
    }
    kopilka_store::batch::flush(conn, &writes).await?;
    kopilka_store::batch::save_id_seeds(conn, &ids, last_event_id).await
}

/// The codes a request adds, checked whole before any is written.
async fn codes_to_add(
    conn: &mut AnyConnection,
    tenant: TenantId,
    campaign: &CouponCampaign,
    request: &AddCodesRequest,
) -> Result<Result<Vec<(String, Option<MemberId>)>, ApiError>, kopilka_store::StoreError> {
    let invalid = |field: &str, detail: String| Ok(Err(ApiError::bad_request("validation_failed", field, detail)));
    let ways = [request.generate.is_some(), request.for_members.is_some(), request.codes.is_some()];
    if ways.iter().filter(|w| **w).count() != 1 {
        return invalid("generate", "give exactly one of generate, for_members and codes".into());
    }
    if let Some(count) = request.generate {
        if !(1..=CODES_PER_REQUEST_MAX).contains(&count) {
            return invalid("generate", format!("must be 1 to {CODES_PER_REQUEST_MAX}"));
        }
        return Ok(Ok(campaign
            .code_format
            .generate(count, &mut rand::thread_rng())
            .into_iter()
            .map(|c| (c, None))
            .collect()));
    }
    if let Some(members) = &request.for_members {
        if members.is_empty() || members.len() > CODES_PER_REQUEST_MAX {
            return invalid("for_members", format!("must name 1 to {CODES_PER_REQUEST_MAX} members"));
        }
        let codes = campaign.code_format.generate(members.len(), &mut rand::thread_rng());
        return Ok(Ok(codes.into_iter().zip(members).map(|(c, m)| (c, Some(MemberId(*m)))).collect()));
    }
    let imported = request.codes.as_ref().expect("one way was given");
    if imported.is_empty() || imported.len() > CODES_PER_REQUEST_MAX {
        return invalid("codes", format!("must hold 1 to {CODES_PER_REQUEST_MAX} codes"));
    }
    let mut codes = Vec::with_capacity(imported.len());
    let mut seen = HashSet::with_capacity(imported.len());
    for (index, item) in imported.iter().enumerate() {
        let code = match normalize_code(&item.code) {
            Ok(code) => code,
            Err(why) => return invalid(&format!("codes[{index}].code"), format!("{:?}: {why}", item.code)),
        };
        if !seen.insert(code.clone()) {
            return invalid(&format!("codes[{index}].code"), format!("{code:?} appears twice in the request"));
        }
        codes.push((code, item.member_id.map(MemberId)));
    }
    let existing = admin::existing_codes(conn, tenant, &codes.iter().map(|c| c.0.clone()).collect::<Vec<_>>()).await?;
    if let Some(code) = existing.first() {
        return Ok(Err(ApiError::Conflict {
            code: "coupon_code_taken",
            detail: format!("{} of the codes already exist, {code:?} among them; nothing was added", existing.len()),
            field: Some("codes".into()),
        }));
    }
    Ok(Ok(codes))
}
