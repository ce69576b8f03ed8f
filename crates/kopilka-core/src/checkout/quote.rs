//! The quote: what a basket comes to for a member, before anything is committed. The program's
//! discounts first, then each coupon in the order given on what is left of each line, then the
//! points the member may pay with, then the points the basket earns on what is paid in money.
//!
//! A confirmation runs the same function again on the state it finds, so what is committed is
//! exactly what the quote would say at that moment; `Quote::purchase_lines` and
//! `Quote::earn_program` are what the purchase is then recorded with.

use serde::{Deserialize, Serialize};

use super::coupon::{CampaignRecord, Coupon, CouponEffect, CouponRefusal};
use super::discount::{self, LineDiscount, Spend};
use crate::purchase::{allocate, Channel, LineInput};
use crate::rules::condition::LineFacts;
use crate::rules::{self, Basket, EarnRule, Effect, LineExplanation, MemberContext};
use crate::{Program, Timestamp};

/// A basket to price.
#[derive(Debug, Clone, Copy)]
pub struct QuoteBasket<'a> {
    pub lines: &'a [LineInput],
    pub channel: Channel,
    pub store: Option<&'a str>,
    pub at: Timestamp,
    /// Points the member wants to pay with; the quote takes at most what is allowed.
    pub redeem_points: i64,
    /// Points the member has available now.
    pub available_points: i64,
}

/// A code brought to the checkout: the campaign and the code's state, or why it cannot be used
/// apart from the basket (`coupon::check_code`).
#[derive(Debug, Clone)]
pub struct CouponInput<'a> {
    pub code: String,
    pub checked: Result<(&'a CampaignRecord, &'a Coupon), CouponRefusal>,
}

/// What was said about a code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponVerdict {
    pub code: String,
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<i64>,
    /// Why the code cannot be used: a stable `code` and a human `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    pub discount_minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_multiplier_percent: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub reason: String,
}

impl From<&CouponRefusal> for Refusal {
    fn from(refusal: &CouponRefusal) -> Refusal {
        Refusal { code: refusal.code().into(), reason: refusal.to_string() }
    }
}

/// A coupon's part of a line's discount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponShare {
    pub code: String,
    pub discount_minor: i64,
}

/// One line of the quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteLine {
    pub sku: String,
    pub quantity: i64,
    /// The line's amount after the till's own discount.
    pub amount_minor: i64,
    pub program_discount_minor: i64,
    pub discounts: LineDiscount,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coupons: Vec<CouponShare>,
    /// What is left to pay for the line (before points).
    pub total_minor: i64,
    pub points: i64,
}

/// A line the member may not buy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestrictedLine {
    pub line: usize,
    pub reason: String,
}

/// The priced basket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub lines: Vec<QuoteLine>,
    pub coupons: Vec<CouponVerdict>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restricted: Vec<RestrictedLine>,
    /// The basket after the till's discounts.
    pub subtotal_minor: i64,
    /// The program's discounts and the coupons together.
    pub discount_minor: i64,
    /// What the basket comes to after all discounts.
    pub total_minor: i64,
    /// The most points that may pay: the program's share of the total, and no more than available.
    pub max_redeem_points: i64,
    pub redeem_points: i64,
    pub redeemed_value_minor: i64,
    /// What is left to pay in money.
    pub pay_minor: i64,
    pub points_to_earn: i64,
    pub explanation: Vec<LineExplanation>,
    /// Earn rules coupons add for this purchase (points multipliers).
    #[serde(skip)]
    pub coupon_rules: Vec<EarnRule>,
}

impl Quote {
    /// The lines as a purchase records them: each line's discount now holds the program's and the
    /// coupons' discounts too, so returns and earning work on what was really paid.
    pub fn purchase_lines(&self, basket: &[LineInput]) -> Vec<LineInput> {
        basket
            .iter()
            .zip(&self.lines)
            .map(|(input, line)| LineInput {
                discount_minor: input.discount_minor + (line.amount_minor - line.total_minor),
                ..input.clone()
            })
            .collect()
    }

    /// The program with the coupons' earn rules added, to record the purchase with.
    pub fn earn_program(&self, program: &Program) -> Program {
        let mut program = program.clone();
        program.earn_rules.extend(self.coupon_rules.iter().cloned());
        program
    }

    /// The codes that are valid.
    pub fn valid_codes(&self) -> impl Iterator<Item = &CouponVerdict> {
        self.coupons.iter().filter(|c| c.valid)
    }
}

/// Prices `basket` for `member` under `program` with `coupons`. Never fails: invalid codes and
/// restricted lines are reported in the quote, and the caller decides whether to go on.
pub fn quote(
    program: &Program,
    basket: &QuoteBasket,
    member: &MemberContext,
    spend: &Spend,
    coupons: &[CouponInput],
) -> Quote {
    let amounts: Vec<i64> = basket.lines.iter().map(rules::line_total_minor).collect();
    let subtotal_minor: i64 = amounts.iter().sum();
    let facts = rules::facts(program, subtotal_minor, basket.channel, basket.store, member, basket.at);
    let line_facts = |i: usize| LineFacts { line: &basket.lines[i], total_minor: amounts[i] };

    let mut lines: Vec<QuoteLine> = Vec::with_capacity(amounts.len());
    let mut restricted = Vec::new();
    for (i, input) in basket.lines.iter().enumerate() {
        let discounts =
            discount::line_discount(&program.discounts, program.discount_percent_max, &facts, &line_facts(i), spend);
        let program_discount_minor = (amounts[i] as i128 * discounts.percent as i128 / 100) as i64;
        if let Some(reason) = discount::restricted(&program.restricted_goods, &facts, &line_facts(i)) {
            restricted.push(RestrictedLine { line: i, reason });
        }
        lines.push(QuoteLine {
            sku: input.sku.clone(),
            quantity: input.quantity,
            amount_minor: amounts[i],
            program_discount_minor,
            discounts,
            coupons: Vec::new(),
            total_minor: amounts[i] - program_discount_minor,
            points: 0,
        });
    }

    let mut verdicts = Vec::with_capacity(coupons.len());
    let mut coupon_rules = Vec::new();
    let mut campaigns_seen = Vec::new();
    for input in coupons {
        let refuse = |refusal: &CouponRefusal, campaign_id: Option<i64>| CouponVerdict {
            code: input.code.clone(),
            valid: false,
            campaign_id,
            refusal: Some(refusal.into()),
            discount_minor: 0,
            points_multiplier_percent: None,
        };
        let (record, _) = match &input.checked {
            Ok(found) => *found,
            Err(refusal) => {
                verdicts.push(refuse(refusal, None));
                continue;
            }
        };
        if campaigns_seen.contains(&record.id) {
            verdicts.push(refuse(&CouponRefusal::SameCampaign, Some(record.id)));
            continue;
        }
        let campaign = &record.campaign;
        let eligible: Vec<bool> =
            (0..lines.len()).map(|i| campaign.condition.matches(&facts, &line_facts(i))).collect();
        if !eligible.iter().any(|e| *e) {
            let why = match lines.is_empty() {
                true => "the basket is empty".to_string(),
                false => campaign.condition.why_not(&facts, &line_facts(0)).unwrap_or_default(),
            };
            verdicts.push(refuse(&CouponRefusal::ConditionNotMet(why), Some(record.id)));
            continue;
        }
        let basket_now: i64 = lines.iter().map(|l| l.total_minor).sum();
        if basket_now < campaign.min_basket_minor {
            let why =
                format!("the basket comes to {basket_now}, below the coupon's minimum {}", campaign.min_basket_minor);
            verdicts.push(refuse(&CouponRefusal::ConditionNotMet(why), Some(record.id)));
            continue;
        }
        let left: Vec<i64> = lines.iter().zip(&eligible).map(|(l, e)| if *e { l.total_minor } else { 0 }).collect();
        let mut multiplier = None;
        let shares: Vec<i64> = match &campaign.effect {
            CouponEffect::Percent(percent) => {
                left.iter().map(|l| (*l as i128 * *percent as i128 / 100) as i64).collect()
            }
            CouponEffect::AmountMinor(amount) => allocate((*amount).min(left.iter().sum()), &left),
            CouponEffect::FreeItem { sku } => {
                let Some(i) = (0..lines.len()).find(|i| eligible[*i] && basket.lines[*i].sku == *sku) else {
                    let why = format!("the basket holds no {sku:?} the coupon applies to");
                    verdicts.push(refuse(&CouponRefusal::ConditionNotMet(why), Some(record.id)));
                    continue;
                };
                let mut shares = vec![0; lines.len()];
                shares[i] = basket.lines[i].unit_price_minor.min(left[i]);
                shares
            }
            CouponEffect::PointsMultiplierPercent(percent) => {
                multiplier = Some(*percent);
                coupon_rules.push(EarnRule {
                    id: format!("coupon.{}", input.code),
                    name: format!("Coupon {}: {}", input.code, campaign.name),
                    condition: campaign.condition.clone(),
                    effect: Effect::MultiplierPercent(*percent),
                    priority: i32::MIN,
                    exclusive: false,
                    caps: Default::default(),
                    active: None,
                });
                vec![0; lines.len()]
            }
        };
        for (line, share) in lines.iter_mut().zip(&shares).filter(|(_, s)| **s > 0) {
            line.total_minor -= share;
            line.coupons.push(CouponShare { code: input.code.clone(), discount_minor: *share });
        }
        campaigns_seen.push(record.id);
        verdicts.push(CouponVerdict {
            code: input.code.clone(),
            valid: true,
            campaign_id: Some(record.id),
            refusal: None,
            discount_minor: shares.iter().sum(),
            points_multiplier_percent: multiplier,
        });
    }

    let total_minor: i64 = lines.iter().map(|l| l.total_minor).sum();
    let max_redeem_points = program.max_redeemable_points(total_minor).min(basket.available_points.max(0));
    let redeem_points = basket.redeem_points.clamp(0, max_redeem_points);
    let redeemed_value_minor = redeem_points * program.point_value_minor;
    let mut quote = Quote {
        lines,
        coupons: verdicts,
        restricted,
        subtotal_minor,
        discount_minor: subtotal_minor - total_minor,
        total_minor,
        max_redeem_points,
        redeem_points,
        redeemed_value_minor,
        pay_minor: total_minor - redeemed_value_minor,
        points_to_earn: 0,
        explanation: Vec::new(),
        coupon_rules,
    };
    let purchase_lines = quote.purchase_lines(basket.lines);
    let earn_program = quote.earn_program(program);
    let earn_basket =
        Basket { lines: &purchase_lines, channel: basket.channel, store: basket.store, redeemed_value_minor };
    let evaluation = rules::evaluate(&earn_program, &earn_basket, member, basket.at);
    for (line, points) in quote.lines.iter_mut().zip(&evaluation.line_points) {
        line.points = *points;
    }
    quote.points_to_earn = evaluation.total;
    quote.explanation = evaluation.explanation;
    quote
}
