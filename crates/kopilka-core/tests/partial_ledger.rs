//! A partial ledger (only the lots due by a moment, the others as totals) must decide whatever it
//! is allowed to decide exactly as the complete ledger of the same lots: the catch-up's movements,
//! a credit, and the balance after both. The store splits lots by the same rule as `split` below
//! (`batch::load_light_members`), and the writer simulation checks that split against the model.

use jiff::SignedDuration;
use kopilka_core::ledger::{Credit, PartialLedger};
use kopilka_core::{
    Account, Balance, DueKeys, IdAllocator, Lot, LotId, LotState, MemberId, MemberLedger, MovementId, MovementKind,
    PointCurrency, Timestamp,
};
use proptest::prelude::*;

const MEMBER: MemberId = MemberId(7);

fn at(hours: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1_000_000 + hours)
}

fn points(code: &str) -> PointCurrency {
    PointCurrency::parse(code).expect("a valid point currency")
}

/// A lot from (pending?, hours until available, hours until it expires, amount, remaining, currency).
fn lot(
    index: usize,
    (pending, available_in, expires_in, amount, spent, second): (bool, i64, i64, i64, i64, bool),
) -> Lot {
    let now = at(0);
    let available_from = now + SignedDuration::from_hours(available_in);
    let expires_at = available_from + SignedDuration::from_hours(expires_in);
    Lot {
        id: LotId(index as i64 + 1),
        member_id: MEMBER,
        currency: points(if second { "MILES" } else { "PTS" }),
        amount,
        remaining: amount - spent.min(amount - 1),
        available_from,
        expires_at,
        // A lot is stored pending only while its window has not closed at the last catch-up; the
        // generator may still leave it pending past that, as a member nobody touched for weeks.
        state: if pending { LotState::Pending } else { LotState::Available },
        movement_id: MovementId(index as i64 + 1),
        purchase_id: None,
    }
}

/// What the store loads for a light member: the lots due by `until`, and the totals and due keys
/// of the rest (as the writer keeps them: `stored_totals` and `due_keys` of a ledger holding the
/// rest).
fn split(lots: &[Lot], until: Timestamp) -> (Vec<Lot>, Vec<(PointCurrency, Balance)>, DueKeys) {
    let (due, rest): (Vec<Lot>, Vec<Lot>) = lots.iter().cloned().partition(|lot| lot.state_at(until) != lot.state);
    let rest = MemberLedger::new(MEMBER, rest);
    (due, rest.stored_totals(), rest.due_keys())
}

/// A ledger's stored totals by currency, in order.
fn kept(ledger: &MemberLedger) -> Vec<(String, Balance)> {
    let mut totals: Vec<(String, Balance)> =
        ledger.stored_totals().into_iter().map(|(currency, totals)| (currency.as_str().to_string(), totals)).collect();
    totals.sort_by(|a, b| a.0.cmp(&b.0));
    totals
}

fn lot_strategy() -> impl Strategy<Value = (bool, i64, i64, i64, i64, bool)> {
    (any::<bool>(), -500i64..500, 1i64..1_000, 1i64..1_000, 0i64..1_000, prop::bool::weighted(0.2))
}

proptest! {
    #[test]
    fn a_partial_ledger_decides_credits_and_catch_ups_as_the_complete_one(
        specs in prop::collection::vec(lot_strategy(), 0..40),
        credit_points in 1i64..10_000,
        credit_pending in any::<bool>(),
    ) {
        let now = at(0);
        let lots: Vec<Lot> = specs.into_iter().enumerate().map(|(i, spec)| lot(i, spec)).collect();
        let (due, totals, keys) = split(&lots, now);
        let mut complete = MemberLedger::new(MEMBER, lots.clone());
        let mut partial = MemberLedger::partial(MEMBER, due, totals, now, keys);
        prop_assert!(!partial.is_complete());
        prop_assert_eq!(complete.due_keys(), partial.due_keys());

        let seed = IdAllocator { next_lot: 1_000, next_movement: 1_000, ..IdAllocator::default() };
        let (mut ids_complete, mut ids_partial) = (seed.clone(), seed);
        prop_assert_eq!(complete.catch_up(now, &mut ids_complete), partial.catch_up(now, &mut ids_partial));
        let credit = Credit {
            currency: points("PTS"),
            amount: credit_points,
            available_from: if credit_pending { now + SignedDuration::from_hours(24) } else { now },
            expires_at: now + SignedDuration::from_hours(24 * 365),
            purchase_id: None,
        };
        prop_assert_eq!(
            complete.credit(&mut ids_complete, MovementKind::Earn, Account::Issued, credit.clone(), now, None),
            partial.credit(&mut ids_partial, MovementKind::Earn, Account::Issued, credit, now, None)
        );
        for currency in [points("PTS"), points("MILES")] {
            prop_assert_eq!(complete.balance(&currency, now), partial.balance(&currency, now));
        }
        // What the writer keeps beside the lots (`members.lot_totals`): the same on both.
        prop_assert_eq!(kept(&complete), kept(&partial));
        // And the due keys kept beside them, which must be those of the open lots left.
        prop_assert_eq!(complete.due_keys(), partial.due_keys());
        let open = complete.lots.iter().filter(|lot| lot.remaining > 0);
        let least_due = open.clone().filter_map(|lot| lot.due_at()).min();
        prop_assert_eq!(complete.due_keys().next_due, least_due);
        prop_assert_eq!(complete.due_keys().next_expiry, open.map(|lot| lot.expires_at).min());
        prop_assert!(least_due.is_none_or(|due| due > now), "a lot is still due after catching up");
        // What the store writes back: the lots the batch changed, the same on both.
        let mut changed_complete = complete.take_dirty();
        let mut changed_partial = partial.take_dirty();
        changed_complete.sort_by_key(|lot| lot.id);
        changed_partial.sort_by_key(|lot| lot.id);
        prop_assert_eq!(changed_complete, changed_partial);
    }
}

#[test]
fn a_partial_ledger_refuses_to_debit_with_a_payload_the_writer_recognizes() {
    let now = at(0);
    let lots = vec![lot(0, (false, -10, 1_000, 500, 0, false))];
    let (due, totals, keys) = split(&lots, now);
    let mut partial = MemberLedger::partial(MEMBER, due, totals, now, keys);
    let mut ids = IdAllocator::default();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = partial.debit_available(
            &mut ids,
            MovementKind::Redeem,
            Account::Redeemed,
            &points("PTS"),
            100,
            now,
            None,
            None,
        );
    }))
    .expect_err("a debit on a partial ledger unwinds");
    let payload = unwound.downcast_ref::<PartialLedger>().expect("the payload is a PartialLedger");
    assert_eq!(*payload, PartialLedger { member_id: MEMBER, what: "a debit" });
}
