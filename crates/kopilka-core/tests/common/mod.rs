//! Shared by the ledger tests: a model of the books built from movements alone, and the invariants
//! that tie it to the lots the core keeps.
//!
//! The model knows nothing of lots: it adds up postings per account. The core's lots must agree with
//! it, which is the property the store's `verify` checks after the fact; here it is checked after
//! every step.

#![allow(dead_code)]

use std::collections::BTreeMap;

use kopilka_core::{Account, IdAllocator, LotState, MemberLedger, Movement, PointCurrency, Timestamp};

/// Account balances, as the sum of every posting applied so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Books {
    pub balances: BTreeMap<Account, i64>,
}

impl Books {
    /// Applies movements, checking each sums to zero before it lands.
    pub fn apply(&mut self, movements: &[Movement]) {
        for movement in movements {
            let sum: i64 = movement.postings.iter().map(|p| p.amount).sum();
            assert_eq!(sum, 0, "movement {movement:?} does not sum to zero");
            assert!(!movement.postings.is_empty(), "empty movement {movement:?}");
            movement.assert_balanced();
            for posting in &movement.postings {
                *self.balances.entry(posting.account).or_default() += posting.amount;
            }
        }
    }

    pub fn get(&self, account: Account) -> i64 {
        self.balances.get(&account).copied().unwrap_or(0)
    }

    /// Non-zero balances, in account order.
    pub fn non_zero(&self) -> impl Iterator<Item = (Account, i64)> + '_ {
        self.balances.iter().filter(|(_, amount)| **amount != 0).map(|(account, amount)| (*account, *amount))
    }
}

/// What the lots of a ledger hold in each member account, by the state the lots are stored in.
pub fn lot_sums(ledger: &MemberLedger) -> (i64, i64) {
    let mut available = 0;
    let mut pending = 0;
    for lot in &ledger.lots {
        match lot.state {
            LotState::Available => available += lot.remaining,
            LotState::Pending => pending += lot.remaining,
            LotState::Expired | LotState::Closed => {}
        }
    }
    (available, pending)
}

/// The invariants that hold at any moment, caught up or not: the books sum to zero, no balance has
/// the wrong sign, every lot is in range, and each member account equals its lots.
pub fn check_books(books: &Books, ledgers: &[&MemberLedger]) {
    let total: i64 = books.balances.values().sum();
    assert_eq!(total, 0, "the books do not sum to zero: {books:?}");
    for (account, amount) in books.non_zero() {
        match account {
            Account::MemberPending(_)
            | Account::MemberAvailable(_)
            | Account::Redeemed
            | Account::Expired
            | Account::Rewards
            | Account::Cashback
            | Account::PartnerRedeemed(_) => {
                assert!(amount >= 0, "{account:?} is negative: {amount}")
            }
            Account::Issued | Account::PartnerIssued(_) => assert!(amount <= 0, "issued is positive: {amount}"),
            Account::Adjustments | Account::Exchange => {}
        }
    }
    for ledger in ledgers {
        for lot in &ledger.lots {
            assert_eq!(lot.member_id, ledger.member_id, "lot {} is in the wrong ledger", lot.id);
            assert!(lot.amount > 0, "lot {lot:?} has a non-positive amount");
            assert!((0..=lot.amount).contains(&lot.remaining), "lot {lot:?} remaining out of range");
            let open = matches!(lot.state, LotState::Pending | LotState::Available);
            assert_eq!(open, lot.remaining > 0, "lot {lot:?}: open iff something remains");
        }
        let (available, pending) = lot_sums(ledger);
        let member = ledger.member_id;
        assert_eq!(books.get(Account::MemberAvailable(member)), available, "member {member} available vs lots");
        assert_eq!(books.get(Account::MemberPending(member)), pending, "member {member} pending vs lots");
    }
}

/// Catches copies of the ledgers up to `now` and checks that the books then agree with the lots
/// and with what `balance(now)` said before catching up.
pub fn check_caught_up(
    books: &Books,
    ledgers: &[&MemberLedger],
    ids: &IdAllocator,
    currency: &PointCurrency,
    now: Timestamp,
) {
    let mut books = books.clone();
    let mut ids = ids.clone();
    let mut caught_up = Vec::new();
    for ledger in ledgers {
        let mut ledger = (*ledger).clone();
        let movements = ledger.catch_up(now, &mut ids);
        assert!(movements.iter().all(|m| m.occurred_at == now && m.member_id == ledger.member_id));
        books.apply(&movements);
        for lot in &ledger.lots {
            assert_eq!(lot.state, lot.state_at(now), "lot {lot:?} not caught up");
        }
        // Catching up twice does nothing.
        assert!(ledger.clone().catch_up(now, &mut ids.clone()).is_empty());
        caught_up.push(ledger);
    }
    let refs: Vec<&MemberLedger> = caught_up.iter().collect();
    check_books(&books, &refs);
    for (before, after) in ledgers.iter().zip(&caught_up) {
        let balance = before.balance(currency, now);
        assert_eq!(balance, after.balance(currency, now));
        assert_eq!(balance.available, books.get(Account::MemberAvailable(after.member_id)));
        assert_eq!(balance.pending, books.get(Account::MemberPending(after.member_id)));
    }
}
