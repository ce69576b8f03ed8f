//! Purchases, returns, redemptions and adjustments: the commands that move points, decided against
//! a member's ledger and the program, with `now` passed in.
//!
//! Each `decide_*` function checks everything first and changes nothing when it refuses, so a
//! failing command fails alone. When it accepts, it returns the movements to write, the record of
//! what happened and the events to publish.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ledger::Credit;
use crate::rules::{self, Basket, LineExplanation, MemberContext};
use crate::{
    Account, Currency, DomainError, DomainEvent, IdAllocator, LotId, MemberId, MemberLedger, Movement, MovementKind,
    Program, PurchaseId,
};

/// Bounds on a basket: a receipt longer than this is a bug in the caller, not a purchase.
pub const LINES_MAX: usize = 1_000;
/// The largest bill accepted, in minor units: keeps every product inside i64.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000;
/// The largest quantity on one line.
pub const QUANTITY_MAX: i64 = 1_000_000;
/// The largest number of points one command may move.
pub const POINTS_MAX: i64 = 1_000_000_000;
pub const TEXT_LEN_MAX: usize = 200;

/// Where a purchase was made.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    #[default]
    Pos,
    Web,
    App,
    Partner,
}

impl Channel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Pos => "pos",
            Channel::Web => "web",
            Channel::App => "app",
            Channel::Partner => "partner",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        Some(match text {
            "pos" => Channel::Pos,
            "web" => Channel::Web,
            "app" => Channel::App,
            "partner" => Channel::Partner,
            _ => return None,
        })
    }
}

/// One line of a receipt as the POS sends it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    pub sku: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    pub quantity: i64,
    pub unit_price_minor: i64,
    #[serde(default)]
    pub discount_minor: i64,
}

/// A purchase to record for a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseCommand {
    /// The receipt number: unique per tenant, so the same receipt is never counted twice.
    pub external_id: String,
    pub occurred_at: Timestamp,
    pub channel: Channel,
    pub store: Option<String>,
    pub currency: Currency,
    pub lines: Vec<LineInput>,
    /// Points the member pays part of the bill with.
    pub redeem_points: i64,
}

/// A line as recorded, with the points it earned and the points that paid for it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedLine {
    pub sku: String,
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub discount_minor: i64,
    pub total_minor: i64,
    pub points_earned: i64,
    pub points_redeemed: i64,
    pub quantity_returned: i64,
    /// The part of `points_earned` each earn rule gave (the rest is the base rate's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_points: Vec<RulePoints>,
}

/// Points one earn rule gave on a recorded line.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulePoints {
    pub rule_id: String,
    pub points: i64,
}

/// A recorded purchase and what has been returned of it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    pub id: PurchaseId,
    pub member_id: MemberId,
    pub external_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub occurred_at: Timestamp,
    pub channel: Channel,
    pub store: Option<String>,
    pub currency: Currency,
    pub total_minor: i64,
    pub points_redeemed: i64,
    pub redeemed_value_minor: i64,
    pub points_earned: i64,
    pub earn_lot_id: Option<LotId>,
    pub lines: Vec<RecordedLine>,
    pub returned_minor: i64,
    pub points_reversed: i64,
    pub points_restored: i64,
    pub points_unrecovered: i64,
    /// Earned points not reversed by returns because they had already expired.
    #[serde(default)]
    pub points_lapsed: i64,
    pub program_version: i64,
    /// Each return, when it was made and how much it took back, oldest first. A referral is
    /// judged by when its purchase was returned, not by when the job looks (records from before
    /// this list existed have returns it does not hold: `returned_minor` minus its sum).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returns: Vec<ReturnMark>,
}

/// One return of a purchase.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnMark {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub returned_minor: i64,
}

impl PurchaseRecord {
    /// The amount returned before `at`. Returns recorded without their time count as made before
    /// anything, which is what the record could say of them before times were kept.
    pub fn returned_before(&self, at: Timestamp) -> i64 {
        let timed: i64 = self.returns.iter().map(|r| r.returned_minor).sum();
        let untimed = self.returned_minor - timed;
        untimed + self.returns.iter().filter(|r| r.at < at).map(|r| r.returned_minor).sum::<i64>()
    }
}

/// What a decided command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub movements: Vec<Movement>,
    pub events: Vec<DomainEvent>,
    /// For a purchase: how each line's points came about, for callers that show it.
    pub explanation: Vec<LineExplanation>,
}

impl Outcome {
    /// Starts an outcome with the ledger caught up to `now`: lots due are activated or expired
    /// before the command looks at them.
    fn caught_up(ledger: &mut MemberLedger, now: Timestamp, ids: &mut IdAllocator) -> Outcome {
        let mut outcome = Outcome::default();
        for movement in ledger.catch_up(now, ids) {
            outcome.push(movement, None);
        }
        outcome
    }

    /// Adds a movement and the event announcing it; `expires_at` is the new lot's, for credits.
    fn push(&mut self, movement: Movement, expires_at: Option<Timestamp>) {
        self.events.push(DomainEvent::of_movement(&movement, expires_at));
        self.movements.push(movement);
    }
}

fn check_text(field: &str, text: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() || text.chars().count() > TEXT_LEN_MAX {
        return Err(DomainError::invalid(field, format!("must be 1 to {TEXT_LEN_MAX} characters")));
    }
    Ok(())
}

/// Splits `total` across `weights` in proportion, by largest remainder, so the parts sum exactly to
/// `total` and equal weights get parts that differ by at most one (earlier lines first).
pub fn allocate(total: i64, weights: &[i64]) -> Vec<i64> {
    assert!(total >= 0 && weights.iter().all(|w| *w >= 0));
    let weight_sum: i128 = weights.iter().map(|w| *w as i128).sum();
    if weight_sum == 0 {
        let mut parts = vec![0; weights.len()];
        if let Some(first) = parts.first_mut() {
            *first = total;
        }
        return parts;
    }
    let mut parts: Vec<i64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (index, weight) in weights.iter().enumerate() {
        let exact = total as i128 * *weight as i128;
        parts.push((exact / weight_sum) as i64);
        remainders.push((exact % weight_sum, index));
    }
    let mut left = total - parts.iter().sum::<i64>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index) in remainders {
        if left == 0 {
            break;
        }
        parts[index] += 1;
        left -= 1;
    }
    assert_eq!(parts.iter().sum::<i64>(), total);
    parts
}

/// Each line's amount after its discount, or the first line that is not a valid line.
pub fn line_totals(lines: &[LineInput]) -> Result<Vec<i64>, DomainError> {
    if lines.is_empty() {
        return Err(DomainError::invalid("lines", "a purchase needs at least one line"));
    }
    if lines.len() > LINES_MAX {
        return Err(DomainError::invalid("lines", format!("at most {LINES_MAX} lines")));
    }
    let mut totals = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let field = |name: &str| format!("lines[{index}].{name}");
        check_text(&field("sku"), &line.sku)?;
        if let Some(category) = &line.category {
            check_text(&field("category"), category)?;
        }
        if let Some(brand) = &line.brand {
            check_text(&field("brand"), brand)?;
        }
        if !(1..=QUANTITY_MAX).contains(&line.quantity) {
            return Err(DomainError::invalid(field("quantity"), format!("must be between 1 and {QUANTITY_MAX}")));
        }
        if !(0..=AMOUNT_MINOR_MAX).contains(&line.unit_price_minor) {
            return Err(DomainError::invalid(field("unit_price_minor"), "must be zero or positive"));
        }
        let gross = line
            .unit_price_minor
            .checked_mul(line.quantity)
            .filter(|g| *g <= AMOUNT_MINOR_MAX)
            .ok_or_else(|| DomainError::invalid(field("quantity"), "quantity times unit price is too large"))?;
        if !(0..=gross).contains(&line.discount_minor) {
            return Err(DomainError::invalid(field("discount_minor"), "must be between 0 and the line's gross amount"));
        }
        totals.push(gross - line.discount_minor);
    }
    let total: i64 = totals.iter().sum();
    if total <= 0 {
        return Err(DomainError::invalid("lines", "the purchase total must be positive"));
    }
    if total > AMOUNT_MINOR_MAX {
        return Err(DomainError::invalid("lines", "the purchase total is too large"));
    }
    Ok(totals)
}

/// Records a purchase: optional payment with points (within the program's share), then points
/// earned on the bill (or on what was paid in money) by the base rate and the earn rules
/// (`rules::evaluate`), held pending for the return window. `member` is what the rules may ask
/// about the member.
pub fn decide_purchase(
    program: &Program,
    program_version: i64,
    ledger: &mut MemberLedger,
    command: PurchaseCommand,
    member: &MemberContext,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<(PurchaseRecord, Outcome), DomainError> {
    check_text("external_id", &command.external_id)?;
    if let Some(store) = &command.store {
        check_text("store", store)?;
    }
    if command.currency != program.bill_currency {
        return Err(DomainError::CurrencyMismatch {
            expected: program.bill_currency.to_string(),
            got: command.currency.to_string(),
        });
    }
    let totals = line_totals(&command.lines)?;
    let total_minor: i64 = totals.iter().sum();
    let redeem = command.redeem_points;
    if !(0..=POINTS_MAX).contains(&redeem) {
        return Err(DomainError::invalid("redeem_points", "must be zero or positive"));
    }
    let max_points = program.max_redeemable_points(total_minor);
    if redeem > max_points {
        return Err(DomainError::RedeemShareExceeded { max_points, requested: redeem });
    }
    let currency = &program.point_currency;
    let available = ledger.balance(currency, now).available;
    if redeem > available {
        return Err(DomainError::InsufficientPoints { available, requested: redeem });
    }

    // Accepted: from here on nothing can refuse.
    let mut outcome = Outcome::caught_up(ledger, now, ids);
    let purchase_id = ids.purchase();
    let redeemed_value_minor = redeem * program.point_value_minor;
    assert!(redeemed_value_minor <= total_minor);
    if redeem > 0 {
        let movement = ledger
            .debit_available(
                ids,
                MovementKind::Redeem,
                Account::Redeemed,
                currency,
                redeem,
                now,
                Some(purchase_id),
                None,
            )
            .expect("balance was checked above");
        outcome.push(movement, None);
    }
    let basket = Basket {
        lines: &command.lines,
        channel: command.channel,
        store: command.store.as_deref(),
        redeemed_value_minor,
    };
    let evaluation = rules::evaluate(program, &basket, member, command.occurred_at);
    let points_earned = evaluation.total;
    assert_eq!(evaluation.line_points.iter().sum::<i64>(), points_earned);
    let line_redeemed = allocate(redeem, &totals);
    let mut earn_lot_id = None;
    if points_earned > 0 {
        let credit = Credit {
            currency: currency.clone(),
            amount: points_earned,
            available_from: program.available_from(command.occurred_at),
            expires_at: program.expires_at(command.occurred_at),
            purchase_id: Some(purchase_id),
        };
        let expires_at = credit.expires_at;
        let movement = ledger.credit(ids, MovementKind::Earn, Account::Issued, credit, now, None);
        earn_lot_id = movement.postings.iter().find_map(|p| p.lot_id);
        outcome.push(movement, Some(expires_at));
    }
    let lines = command
        .lines
        .into_iter()
        .zip(totals.iter().zip(evaluation.line_points.iter().zip(&line_redeemed)))
        .zip(&evaluation.explanation)
        .map(|((line, (total, (earned, redeemed))), explanation)| RecordedLine {
            sku: line.sku,
            category: line.category,
            brand: line.brand,
            quantity: line.quantity,
            unit_price_minor: line.unit_price_minor,
            discount_minor: line.discount_minor,
            total_minor: *total,
            points_earned: *earned,
            points_redeemed: *redeemed,
            quantity_returned: 0,
            rule_points: explanation
                .rules_applied
                .iter()
                .map(|rule| RulePoints { rule_id: rule.rule_id.clone(), points: rule.points })
                .collect(),
        })
        .collect();
    let record = PurchaseRecord {
        id: purchase_id,
        member_id: ledger.member_id,
        external_id: command.external_id,
        occurred_at: command.occurred_at,
        channel: command.channel,
        store: command.store,
        currency: command.currency,
        total_minor,
        points_redeemed: redeem,
        redeemed_value_minor,
        points_earned,
        earn_lot_id,
        lines,
        returned_minor: 0,
        points_reversed: 0,
        points_restored: 0,
        points_unrecovered: 0,
        points_lapsed: 0,
        program_version,
        returns: Vec::new(),
    };
    outcome.explanation = evaluation.explanation;
    outcome.events.push(DomainEvent::PurchaseRecorded {
        member_id: record.member_id,
        purchase_id,
        total_minor,
        currency: record.currency.to_string(),
    });
    Ok((record, outcome))
}

/// Which lines of a purchase come back, and how many of each.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLine {
    /// The line's position in the purchase, from 0.
    pub line: usize,
    pub quantity: i64,
}

/// The outcome of a return, beside its movements.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnSummary {
    pub returned_minor: i64,
    pub points_reversed: i64,
    pub points_restored: i64,
    /// Earned points the member had already spent and could not give back.
    pub points_unrecovered: i64,
    /// Earned points not reversed because they had expired before the return.
    pub points_lapsed: i64,
}

/// Returns lines of a purchase (all that is left, when `lines` is None): reverses the points they
/// earned and restores the points that paid for them, both in proportion to the quantity returned.
/// Proportions are taken on the running total returned, so a purchase returned in several parts
/// reverses exactly what a whole return would.
pub fn decide_return(
    program: &Program,
    ledger: &mut MemberLedger,
    purchase: &mut PurchaseRecord,
    lines: Option<&[ReturnLine]>,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<(ReturnSummary, Outcome), DomainError> {
    assert_eq!(purchase.member_id, ledger.member_id);
    let mut returned_now = vec![0i64; purchase.lines.len()];
    match lines {
        None => {
            for (line, returned) in purchase.lines.iter().zip(returned_now.iter_mut()) {
                *returned = line.quantity - line.quantity_returned;
            }
        }
        Some(requested) => {
            if requested.is_empty() || requested.len() > LINES_MAX {
                return Err(DomainError::invalid("lines", "name at least one line to return"));
            }
            for (index, item) in requested.iter().enumerate() {
                let Some(line) = purchase.lines.get(item.line) else {
                    return Err(DomainError::invalid(
                        format!("lines[{index}].line"),
                        format!("the purchase has lines 0 to {}", purchase.lines.len() - 1),
                    ));
                };
                if item.quantity <= 0 {
                    return Err(DomainError::invalid(format!("lines[{index}].quantity"), "must be positive"));
                }
                let returnable = line.quantity - line.quantity_returned - returned_now[item.line];
                if item.quantity > returnable {
                    return Err(DomainError::ReturnExceedsPurchase {
                        line: item.line,
                        returnable,
                        requested: item.quantity,
                    });
                }
                returned_now[item.line] += item.quantity;
            }
        }
    }
    if returned_now.iter().all(|q| *q == 0) {
        return Err(DomainError::NothingToReturn);
    }

    let mut summary = ReturnSummary {
        returned_minor: 0,
        points_reversed: 0,
        points_restored: 0,
        points_unrecovered: 0,
        points_lapsed: 0,
    };
    for (line, returned) in purchase.lines.iter_mut().zip(&returned_now) {
        let share = |value: i64, quantity: i64| (value as i128 * quantity as i128 / line.quantity as i128) as i64;
        let before = line.quantity_returned;
        let after = before + returned;
        summary.returned_minor += share(line.total_minor, after) - share(line.total_minor, before);
        summary.points_reversed += share(line.points_earned, after) - share(line.points_earned, before);
        summary.points_restored += share(line.points_redeemed, after) - share(line.points_redeemed, before);
        line.quantity_returned = after;
    }

    let mut outcome = Outcome::caught_up(ledger, now, ids);
    let currency = &program.point_currency;
    if summary.points_restored > 0 {
        // Restored points are spendable at once: the member paid with them and got nothing.
        let credit = Credit {
            currency: currency.clone(),
            amount: summary.points_restored,
            available_from: now,
            expires_at: program.expires_at(now),
            purchase_id: Some(purchase.id),
        };
        let expires_at = credit.expires_at;
        let movement = ledger.credit(ids, MovementKind::Restore, Account::Redeemed, credit, now, None);
        outcome.push(movement, Some(expires_at));
    }
    // Once the points the purchase earned have expired they are gone from the member either way:
    // taking them again from newer lots would punish the member twice.
    let earned_points_expired = now >= program.expires_at(purchase.occurred_at);
    if earned_points_expired {
        summary.points_lapsed = std::mem::take(&mut summary.points_reversed);
    }
    if summary.points_reversed > 0 {
        let (movement, taken) = ledger.debit_up_to(
            ids,
            MovementKind::Reverse,
            Account::Issued,
            currency,
            summary.points_reversed,
            true,
            purchase.earn_lot_id,
            now,
            Some(purchase.id),
            None,
        );
        summary.points_unrecovered = summary.points_reversed - taken;
        if let Some(movement) = movement {
            outcome.push(movement, None);
        }
    }
    purchase.returned_minor += summary.returned_minor;
    purchase.returns.push(ReturnMark { at: now, returned_minor: summary.returned_minor });
    purchase.points_reversed += summary.points_reversed;
    purchase.points_restored += summary.points_restored;
    purchase.points_unrecovered += summary.points_unrecovered;
    purchase.points_lapsed += summary.points_lapsed;
    assert!(purchase.points_reversed + purchase.points_lapsed <= purchase.points_earned);
    assert!(purchase.points_restored <= purchase.points_redeemed);
    assert!(purchase.returned_minor <= purchase.total_minor);
    outcome.events.push(DomainEvent::PurchaseReturned {
        member_id: purchase.member_id,
        purchase_id: purchase.id,
        returned_minor: summary.returned_minor,
        points_unrecovered: summary.points_unrecovered,
    });
    Ok((summary, outcome))
}

/// Spends points outside a recorded purchase (a reward, a partial payment at a till that records
/// the purchase elsewhere). With `bill_minor`, the program's share cap applies to that bill.
pub fn decide_redeem(
    program: &Program,
    ledger: &mut MemberLedger,
    points: i64,
    bill_minor: Option<i64>,
    reason: Option<String>,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, DomainError> {
    if !(1..=POINTS_MAX).contains(&points) {
        return Err(DomainError::invalid("points", format!("must be between 1 and {POINTS_MAX}")));
    }
    if let Some(bill) = bill_minor {
        if !(1..=AMOUNT_MINOR_MAX).contains(&bill) {
            return Err(DomainError::invalid("bill_minor", "must be positive"));
        }
        let max_points = program.max_redeemable_points(bill);
        if points > max_points {
            return Err(DomainError::RedeemShareExceeded { max_points, requested: points });
        }
    }
    if let Some(reason) = &reason {
        check_text("reason", reason)?;
    }
    let currency = &program.point_currency;
    let available = ledger.balance(currency, now).available;
    if points > available {
        return Err(DomainError::InsufficientPoints { available, requested: points });
    }
    let mut outcome = Outcome::caught_up(ledger, now, ids);
    let movement = ledger
        .debit_available(ids, MovementKind::Redeem, Account::Redeemed, currency, points, now, None, reason)
        .expect("balance was checked above");
    outcome.push(movement, None);
    Ok(outcome)
}

/// A manual correction by an administrator: positive points become a new available lot, negative
/// points are taken from available lots. The reason is required and kept with the movement.
pub fn decide_adjust(
    program: &Program,
    ledger: &mut MemberLedger,
    points: i64,
    reason: String,
    now: Timestamp,
    ids: &mut IdAllocator,
) -> Result<Outcome, DomainError> {
    if points == 0 || points.abs() > POINTS_MAX {
        return Err(DomainError::invalid("points", format!("must be non-zero and at most {POINTS_MAX} either way")));
    }
    check_text("reason", &reason)?;
    let currency = &program.point_currency;
    if points < 0 {
        let available = ledger.balance(currency, now).available;
        if -points > available {
            return Err(DomainError::InsufficientPoints { available, requested: -points });
        }
    }
    let mut outcome = Outcome::caught_up(ledger, now, ids);
    let movement = if points > 0 {
        let credit = Credit {
            currency: currency.clone(),
            amount: points,
            available_from: now,
            expires_at: program.expires_at(now),
            purchase_id: None,
        };
        ledger.credit(ids, MovementKind::Adjust, Account::Adjustments, credit, now, Some(reason))
    } else {
        ledger
            .debit_available(
                ids,
                MovementKind::Adjust,
                Account::Adjustments,
                currency,
                -points,
                now,
                None,
                Some(reason),
            )
            .expect("balance was checked above")
    };
    outcome.push(movement, None);
    Ok(outcome)
}
