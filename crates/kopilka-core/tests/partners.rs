//! Partner settlement against a model: random sequences of earning, spending and returning
//! receipts at two partners, on two members, under a clock that jumps across return windows and
//! expiry dates. The settlement of each partner must equal both the postings on its accounts and
//! a model that only counts the points of accepted commands (a return takes back its receipt's
//! points whole); a refused spend or a second return must change nothing; the books stay sound.

mod common;

use jiff::SignedDuration;
use kopilka_core::partners::{
    decide_partner_earn, decide_partner_purchase, decide_partner_redeem, decide_partner_return, partner_postings,
    settle, Partner, PartnerReceipt, PartnerTerms,
};
use kopilka_core::{
    Account, DomainError, IdAllocator, MemberId, MemberLedger, Movement, PartnerId, Program, Timestamp,
};
use proptest::prelude::*;

use common::{check_books, Books};

#[derive(Debug, Clone)]
enum Step {
    Earn {
        member: usize,
        partner: usize,
        points: i64,
    },
    Spend {
        member: usize,
        partner: usize,
        points: i64,
    },
    Wait {
        days: i64,
    },
    /// Returns the receipt at this index (modulo how many there are), returned before or not.
    Return {
        receipt: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize, 0..2usize, 1..500i64).prop_map(|(member, partner, points)| Step::Earn { member, partner, points }),
        (0..2usize, 0..2usize, 1..500i64).prop_map(|(member, partner, points)| Step::Spend { member, partner, points }),
        (0..40i64).prop_map(|days| Step::Wait { days }),
        (0..64usize).prop_map(|receipt| Step::Return { receipt }),
    ]
}

fn partner(id: i64, issue_cost_minor: i64, redeem_value_minor: i64) -> Partner {
    Partner {
        id: PartnerId(id),
        terms: PartnerTerms { name: format!("partner {id}"), issue_cost_minor, redeem_value_minor },
        created_at: Timestamp::UNIX_EPOCH,
    }
}

proptest! {
    #[test]
    fn a_partner_settlement_equals_its_ledger_postings_and_the_accepted_commands(
        steps in prop::collection::vec(step(), 1..60),
        costs in (0..300i64, 0..300i64, 0..300i64, 0..300i64),
    ) {
        let program = Program::example();
        let partners = [partner(1, costs.0, costs.1), partner(2, costs.2, costs.3)];
        let mut ledgers = [MemberLedger::new(MemberId(1), Vec::new()), MemberLedger::new(MemberId(2), Vec::new())];
        let mut ids = IdAllocator::default();
        let mut books = Books::default();
        let mut all: Vec<Movement> = Vec::new();
        // The model: points of accepted commands per partner, issued and redeemed.
        let mut model = [(0i64, 0i64); 2];
        let mut now: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
        let mut receipts: Vec<(usize, usize, PartnerReceipt)> = Vec::new();
        for step in steps {
            match step {
                Step::Earn { member, partner, points } => {
                    let reference = format!("R-{}", receipts.len());
                    let (receipt, outcome) = decide_partner_purchase(
                        &program, &partners[partner], &mut ledgers[member], points, &reference, now, &mut ids,
                    ).unwrap();
                    prop_assert_eq!(receipt.points, points);
                    receipts.push((member, partner, receipt));
                    model[partner].0 += points;
                    books.apply(&outcome.movements);
                    all.extend(outcome.movements);
                }
                Step::Return { receipt } => {
                    if receipts.is_empty() {
                        continue;
                    }
                    let index = receipt % receipts.len();
                    let (member, partner, receipt) = &mut receipts[index];
                    let ledger = &mut ledgers[*member];
                    let before = ledger.clone();
                    let held = {
                        let balance = before.balance(&program.point_currency, now);
                        balance.available + balance.pending
                    };
                    let returned_before = receipt.returned_at.is_some();
                    match decide_partner_return(&program, ledger, receipt, now, &mut ids) {
                        Ok(outcome) => {
                            prop_assert!(!returned_before);
                            prop_assert_eq!(
                                receipt.points_reversed + receipt.points_unrecovered + receipt.points_lapsed,
                                receipt.points
                            );
                            prop_assert!(receipt.points_reversed <= held, "took more than the member held");
                            // Never below zero, but nothing left behind that could have been taken.
                            if receipt.points_lapsed == 0 {
                                prop_assert_eq!(receipt.points_reversed, receipt.points.min(held));
                            }
                            let member_delta: i64 = outcome.movements.iter().map(|m| m.member_delta()).sum();
                            let expired_now: i64 = outcome
                                .movements
                                .iter()
                                .flat_map(|m| &m.postings)
                                .filter(|p| p.account == Account::Expired)
                                .map(|p| p.amount)
                                .sum();
                            prop_assert_eq!(-member_delta, receipt.points_reversed + expired_now);
                            model[*partner].0 -= receipt.points;
                            books.apply(&outcome.movements);
                            all.extend(outcome.movements);
                        }
                        Err(error) => {
                            prop_assert!(returned_before);
                            prop_assert_eq!(error, DomainError::NothingToReturn);
                            prop_assert_eq!(&*ledger, &before, "a refused return changed the ledger");
                        }
                    }
                }
                Step::Spend { member, partner, points } => {
                    let before = ledgers[member].clone();
                    let available = before.balance(&program.point_currency, now).available;
                    match decide_partner_redeem(
                        &program, &partners[partner], &mut ledgers[member], points, "S-1", now, &mut ids,
                    ) {
                        Ok(outcome) => {
                            prop_assert!(points <= available);
                            model[partner].1 += points;
                            books.apply(&outcome.movements);
                            all.extend(outcome.movements);
                        }
                        Err(_) => {
                            prop_assert!(points > available);
                            prop_assert_eq!(&ledgers[member], &before, "a refused spend changed the ledger");
                        }
                    }
                }
                Step::Wait { days } => now += SignedDuration::from_hours(24 * days),
            }
            let refs: Vec<&MemberLedger> = ledgers.iter().collect();
            check_books(&books, &refs);
        }
        for (index, partner) in partners.iter().enumerate() {
            let settlement = settle(partner, partner_postings(&all, partner.id));
            let issued = -books.get(Account::PartnerIssued(partner.id));
            let redeemed = books.get(Account::PartnerRedeemed(partner.id));
            prop_assert_eq!((settlement.points_issued, settlement.points_redeemed), (issued, redeemed));
            prop_assert_eq!((settlement.points_issued, settlement.points_redeemed), model[index]);
            prop_assert_eq!(settlement.partner_owes_minor, issued * partner.terms.issue_cost_minor);
            prop_assert_eq!(settlement.program_owes_minor, redeemed * partner.terms.redeem_value_minor);
            prop_assert_eq!(settlement.net_minor, settlement.partner_owes_minor - settlement.program_owes_minor);
            // Whole movements may be passed: other accounts do not count.
            prop_assert_eq!(settle(partner, all.iter().flat_map(|m| &m.postings)), settlement);
        }
    }
}

#[test]
fn negative_or_zero_points_are_refused_and_change_nothing() {
    let program = Program::example();
    let partner = partner(1, 50, 100);
    let mut ledger = MemberLedger::new(MemberId(1), Vec::new());
    let mut ids = IdAllocator::default();
    let now: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
    for points in [0, -5] {
        let error = decide_partner_earn(&program, &partner, &mut ledger, points, "R", now, &mut ids).unwrap_err();
        assert_eq!(error.code(), "validation_failed");
    }
    assert!(ledger.lots.is_empty());
}
