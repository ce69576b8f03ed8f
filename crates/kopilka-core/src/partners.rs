//! Partner programs: organizations where members earn and spend the program's points, and the
//! settlement of what each side owes.
//!
//! Points earned at a partner come out of the partner's own `partner_issued` account rather than
//! the program's `issued`, and points spent at a partner go to its `partner_redeemed` account. The
//! settlement is then nothing but the sum of postings on those two accounts, priced at the terms
//! the partner agreed to, so it reconciles with the ledger by construction and `verify` needs no
//! special case: the accounts are ordinary system accounts.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::events::DomainEvent;
use crate::ledger::Credit;
use crate::purchase::{Outcome, POINTS_MAX};
use crate::{Account, DomainError, IdAllocator, MemberLedger, Movement, MovementKind, PartnerId, Posting, Program};

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

/// What a partner and the program owe each other for a period, from the ledger's postings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// Points members earned at the partner (net of any taken back).
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
