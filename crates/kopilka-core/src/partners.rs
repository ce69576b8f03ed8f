//! Partner programs: organizations where members earn and spend the program's points, and the
//! settlement of what each side owes.
//!
//! Points earned at a partner come out of the partner's own `partner_issued` account rather than
//! the program's `issued`, and points spent at a partner go to its `partner_redeemed` account. The
//! settlement is then nothing but the sum of postings on those two accounts, priced at the terms
//! the partner agreed to, so it reconciles with the ledger by construction and `verify` needs no
//! special case: the accounts are ordinary system accounts.
//!
//! A partner's receipt is recorded once ([`PartnerReceipt`]) and may be returned once, whole: the
//! return reverses the partner's posting in full, since the sale it priced did not happen, and
//! takes back from the member what is left of the points (like an ordinary return, never below
//! zero). Points the member already spent or that expired stay with the member, and the program
//! carries them on its own `issued` account instead of the partner.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::events::DomainEvent;
use crate::ledger::Credit;
use crate::purchase::{Outcome, POINTS_MAX};
use crate::{
    Account, DomainError, IdAllocator, LotId, MemberId, MemberLedger, Movement, MovementId, MovementKind, PartnerId,
    Posting, Program,
};

/// The longest partner name and receipt reference accepted.
pub const PARTNER_TEXT_LEN_MAX: usize = 200;
/// The highest price of a point in minor units either way (10,000.00 of a currency).
pub const POINT_PRICE_MINOR_MAX: i64 = 1_000_000;

/// A partner's terms, fixed when it is created so a settlement never depends on when it is run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerTerms {
    pub name: String,
    /// What the partner pays the program for each point its customers earn, in minor units of
    /// the program's bill currency.
    pub issue_cost_minor: i64,
    /// What the program pays the partner for each point members spend there; defaults to the
    /// program's point value.
    pub redeem_value_minor: i64,
}

impl PartnerTerms {
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.name.trim().is_empty() || self.name.chars().count() > PARTNER_TEXT_LEN_MAX {
            return Err(DomainError::invalid("name", format!("must be 1 to {PARTNER_TEXT_LEN_MAX} characters")));
        }
        for (field, value) in
            [("issue_cost_minor", self.issue_cost_minor), ("redeem_value_minor", self.redeem_value_minor)]
        {
            if !(0..=POINT_PRICE_MINOR_MAX).contains(&value) {
                return Err(DomainError::invalid(field, format!("must be between 0 and {POINT_PRICE_MINOR_MAX}")));
            }
        }
        Ok(())
    }
}

/// A partner organization.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub id: PartnerId,
    #[serde(flatten)]
    pub terms: PartnerTerms,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

fn check_points(points: i64) -> Result<(), DomainError> {
    if !(1..=POINTS_MAX).contains(&points) {
        return Err(DomainError::invalid("points", format!("must be between 1 and {POINTS_MAX}")));
    }
    Ok(())
}

fn check_reference(reference: &str) -> Result<(), DomainError> {
    if reference.trim().is_empty() || reference.chars().count() > PARTNER_TEXT_LEN_MAX {
        return Err(DomainError::invalid("external_id", format!("must be 1 to {PARTNER_TEXT_LEN_MAX} characters")));
    }
    Ok(())
}

fn caught_up(ledger: &mut MemberLedger, now: Timestamp, ids: &mut IdAllocator) -> Outcome {
    let mut outcome = Outcome::default();
    for movement in ledger.catch_up(now, ids) {
        outcome.events.push(DomainEvent::of_movement(&movement, None));
        outcome.movements.push(movement);
    }
    outcome
}

/// Points a member earned at `partner`: credited like a purchase's (pending for the program's
/// return window, then expiring by its policy), but from the partner's account.
pub fn decide_partner_earn(
    program: &Program,
    partner: &Partner,
    ledger: &mut MemberLedger,
    points: i64,
    reference: &str,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, DomainError> {
    check_points(points)?;
    check_reference(reference)?;
    let mut outcome = caught_up(ledger, now, ids);
    let available_from = program.available_from(now);
    let expires_at = program.expires_at(now);
    let credit = Credit {
        currency: program.point_currency.clone(),
        amount: points,
        available_from,
        expires_at,
        purchase_id: None,
    };
    let reason = format!("partner {}: {reference}", partner.id);
    let movement =
        ledger.credit(ids, MovementKind::Earn, Account::PartnerIssued(partner.id), credit, now, Some(reason));
    movement.assert_balanced();
    outcome.events.push(DomainEvent::of_movement(&movement, Some(expires_at)));
    outcome.movements.push(movement);
    Ok(outcome)
}

/// Points a member spent at `partner`: refused, changing nothing, unless they are available.
pub fn decide_partner_redeem(
    program: &Program,
    partner: &Partner,
    ledger: &mut MemberLedger,
    points: i64,
    reference: &str,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, DomainError> {
    check_points(points)?;
    check_reference(reference)?;
    let available = ledger.balance(&program.point_currency, now).available;
    if points > available {
        return Err(DomainError::InsufficientPoints { available, requested: points });
    }
    let mut outcome = caught_up(ledger, now, ids);
    let reason = format!("partner {}: {reference}", partner.id);
    let movement = ledger.debit_available(
        ids,
        MovementKind::Redeem,
        Account::PartnerRedeemed(partner.id),
        &program.point_currency,
        points,
        now,
        None,
        Some(reason),
    )?;
    movement.assert_balanced();
    outcome.events.push(DomainEvent::of_movement(&movement, None));
    outcome.movements.push(movement);
    Ok(outcome)
}

/// A receipt of points earned at a partner, keyed by the partner and its `external_id`, so the
/// same receipt is never credited twice and can be returned.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerReceipt {
    pub partner_id: PartnerId,
    pub external_id: String,
    pub member_id: MemberId,
    pub points: i64,
    /// The lot the points went into: a return takes from it first.
    pub earn_lot_id: Option<LotId>,
    pub movement_id: MovementId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub occurred_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<Timestamp>,
    /// Points taken back from the member by the return.
    #[serde(default)]
    pub points_reversed: i64,
    /// Points the member had already spent: the program carries them in the partner's place.
    #[serde(default)]
    pub points_unrecovered: i64,
    /// Points that had expired before the return: carried by the program too.
    #[serde(default)]
    pub points_lapsed: i64,
}

/// Points earned at `partner` as a receipt to keep: `decide_partner_earn` and the record of it.
pub fn decide_partner_purchase(
    program: &Program,
    partner: &Partner,
    ledger: &mut MemberLedger,
    points: i64,
    reference: &str,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<(PartnerReceipt, Outcome), DomainError> {
    let outcome = decide_partner_earn(program, partner, ledger, points, reference, now, ids)?;
    let movement = outcome.movements.last().expect("an earn moves points");
    let receipt = PartnerReceipt {
        partner_id: partner.id,
        external_id: reference.to_string(),
        member_id: ledger.member_id,
        points,
        earn_lot_id: movement.postings.iter().find_map(|p| p.lot_id),
        movement_id: movement.id,
        occurred_at: now,
        returned_at: None,
        points_reversed: 0,
        points_unrecovered: 0,
        points_lapsed: 0,
    };
    Ok((receipt, outcome))
}

/// Returns a partner receipt, whole: one movement puts all of its points back on the partner's
/// issued account, taking what it can from the member (the receipt's own lot first, pending or
/// available, never below zero) and the rest from the program's `issued`. A receipt already
/// returned has nothing left to return.
pub fn decide_partner_return(
    program: &Program,
    ledger: &mut MemberLedger,
    receipt: &mut PartnerReceipt,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, DomainError> {
    assert_eq!(receipt.member_id, ledger.member_id);
    if receipt.returned_at.is_some() {
        return Err(DomainError::NothingToReturn);
    }
    let mut outcome = caught_up(ledger, now, ids);
    let currency = &program.point_currency;
    let reason = Some(format!("partner {} return: {}", receipt.partner_id, receipt.external_id));
    let partner_account = Account::PartnerIssued(receipt.partner_id);
    // Expired points are gone from the member either way; taking them from newer lots would
    // punish the member twice (as for ordinary returns).
    let lapsed = now >= program.expires_at(receipt.occurred_at);
    let (movement, taken) = if lapsed {
        (None, 0)
    } else {
        ledger.debit_up_to(
            ids,
            MovementKind::Reverse,
            partner_account,
            currency,
            receipt.points,
            true,
            receipt.earn_lot_id,
            now,
            None,
            reason.clone(),
        )
    };
    let shortfall = receipt.points - taken;
    let announce = movement.is_some();
    let mut movement = movement.unwrap_or_else(|| Movement {
        id: ids.movement(),
        kind: MovementKind::Reverse,
        member_id: ledger.member_id,
        currency: currency.clone(),
        occurred_at: now,
        postings: Vec::new(),
        purchase_id: None,
        reason,
    });
    if shortfall > 0 {
        match movement.postings.iter_mut().find(|p| p.account == partner_account) {
            Some(posting) => posting.amount += shortfall,
            None => movement.postings.push(Posting { account: partner_account, amount: shortfall, lot_id: None }),
        }
        movement.postings.push(Posting { account: Account::Issued, amount: -shortfall, lot_id: None });
    }
    movement.assert_balanced();
    // A movement between the program's accounts alone changes nothing the member sees.
    if announce {
        outcome.events.push(DomainEvent::of_movement(&movement, None));
    }
    outcome.movements.push(movement);
    receipt.returned_at = Some(now);
    receipt.points_reversed = taken;
    if lapsed {
        receipt.points_lapsed = shortfall;
    } else {
        receipt.points_unrecovered = shortfall;
    }
    assert_eq!(receipt.points_reversed + receipt.points_unrecovered + receipt.points_lapsed, receipt.points);
    outcome.events.push(DomainEvent::PartnerPurchaseReturned {
        member_id: receipt.member_id,
        partner_id: receipt.partner_id.0,
        external_id: receipt.external_id.clone(),
        points_reversed: receipt.points_reversed,
        points_unrecovered: receipt.points_unrecovered + receipt.points_lapsed,
    });
    Ok(outcome)
}

/// What a partner and the program owe each other for a period, from the ledger's postings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// Points members earned at the partner, net of receipts returned in the period (negative
    /// when returns outweigh earnings).
    pub points_issued: i64,
    /// Points members spent at the partner.
    pub points_redeemed: i64,
    /// `points_issued × issue_cost_minor`: what the partner owes the program.
    pub partner_owes_minor: i64,
    /// `points_redeemed × redeem_value_minor`: what the program owes the partner.
    pub program_owes_minor: i64,
    /// `partner_owes_minor − program_owes_minor`: positive when the partner pays.
    pub net_minor: i64,
}

/// Sums the postings on `partner`'s accounts and prices them at its terms. Postings on other
/// accounts are ignored, so the caller may pass whole movements.
pub fn settle<'a>(partner: &Partner, postings: impl IntoIterator<Item = &'a Posting>) -> Settlement {
    let mut settlement = Settlement::default();
    for posting in postings {
        match posting.account {
            // The issued account goes negative as points leave it.
            Account::PartnerIssued(id) if id == partner.id => settlement.points_issued -= posting.amount,
            Account::PartnerRedeemed(id) if id == partner.id => settlement.points_redeemed += posting.amount,
            _ => {}
        }
    }
    settlement.partner_owes_minor = settlement.points_issued * partner.terms.issue_cost_minor;
    settlement.program_owes_minor = settlement.points_redeemed * partner.terms.redeem_value_minor;
    settlement.net_minor = settlement.partner_owes_minor - settlement.program_owes_minor;
    settlement
}

/// The postings of `movements` on `partner`'s accounts, for `settle`.
pub fn partner_postings(movements: &[Movement], partner: PartnerId) -> impl Iterator<Item = &Posting> {
    movements.iter().flat_map(|m| &m.postings).filter(move |p| p.account.partner_id() == Some(partner))
}

/// A coalition rate: `points_to` points of program `to_program` for every `points_from` of this
/// program, with an optional cap on the points a member may convert per rolling period.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRate {
    pub to_program: i64,
    pub points_from: i64,
    pub points_to: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<ExchangeLimit>,
}

/// At most `points` converted by a member within any `period_days` days.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeLimit {
    pub points: i64,
    pub period_days: i64,
}

impl ExchangeRate {
    pub fn issues(&self, index: usize) -> Vec<crate::ValidationIssue> {
        let mut issues = Vec::new();
        let mut issue = |field: &str, message: String| {
            issues.push(crate::ValidationIssue { path: format!("exchanges[{index}].{field}"), message })
        };
        for (field, value) in [("points_from", self.points_from), ("points_to", self.points_to)] {
            if !(1..=POINT_PRICE_MINOR_MAX).contains(&value) {
                issue(field, format!("must be between 1 and {POINT_PRICE_MINOR_MAX}"));
            }
        }
        if let Some(limit) = self.limit {
            if !(1..=POINTS_MAX).contains(&limit.points) {
                issue("limit.points", format!("must be between 1 and {POINTS_MAX}"));
            }
            if !(1..=3660).contains(&limit.period_days) {
                issue("limit.period_days", "must be between 1 and 3660".into());
            }
        }
        issues
    }

    /// Points of the target program for `points` of this one, rounded down.
    pub fn convert(&self, points: i64) -> i64 {
        let converted = i128::from(points) * i128::from(self.points_to) / i128::from(self.points_from);
        i64::try_from(converted).expect("bounded points times a bounded rate fit in i64")
    }
}

/// The reason both movements of an exchange into `to_program` carry. Exchange limits are counted
/// per rate, that is per pair of programs, and this is how the store tells the pairs apart.
pub fn exchange_reason(to_program: i64) -> String {
    format!("exchange to program {to_program}")
}

/// Converts `points` of `from` into `to` at `rate` for the member: a debit of `from`'s points into
/// `exchange` and a credit of `to`'s points out of it, available at once. Refused, changing
/// nothing, when the points are not available or convert to nothing. Limits are the caller's,
/// since they need the member's history.
pub fn decide_exchange(
    from: &Program,
    to: &Program,
    rate: &ExchangeRate,
    ledger: &mut MemberLedger,
    points: i64,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<(Outcome, i64), DomainError> {
    check_points(points)?;
    let converted = rate.convert(points);
    if converted < 1 {
        return Err(DomainError::invalid(
            "points",
            format!("at {}:{} must be at least {} to give a point", rate.points_from, rate.points_to, rate.points_from),
        ));
    }
    let available = ledger.balance(&from.point_currency, now).available;
    if points > available {
        return Err(DomainError::InsufficientPoints { available, requested: points });
    }
    let mut outcome = caught_up(ledger, now, ids);
    let reason = Some(exchange_reason(rate.to_program));
    let debit = ledger.debit_available(
        ids,
        MovementKind::Redeem,
        Account::Exchange,
        &from.point_currency,
        points,
        now,
        None,
        reason.clone(),
    )?;
    debit.assert_balanced();
    outcome.events.push(DomainEvent::of_movement(&debit, None));
    outcome.movements.push(debit);
    let expires_at = to.expires_at(now);
    let credit = Credit {
        currency: to.point_currency.clone(),
        amount: converted,
        available_from: now,
        expires_at,
        purchase_id: None,
    };
    let movement = ledger.credit(ids, MovementKind::Earn, Account::Exchange, credit, now, reason);
    movement.assert_balanced();
    outcome.events.push(DomainEvent::of_movement(&movement, Some(expires_at)));
    outcome.movements.push(movement);
    Ok((outcome, converted))
}
