//! Ledger scenarios: a short script of commands in, the movements they made and the resulting lots
//! and balances out, as an inline snapshot (`UPDATE_EXPECT=1 cargo test` rewrites them).
//!
//! Script lines, one command each (members and purchases are named, ids are handed out in order):
//!
//! ```text
//! at 2026-01-01                          set the clock (a date is midnight UTC)
//! advance 400d | advance 6h              move the clock forward
//! purchase m1 p1 4000.00                 one line of 4000.00 RUB
//! purchase m1 p1 milk 2x150.00, bread 1x50.00 redeem 30 occurred 2025-12-01
//! return p1 | return p1 0:1 1:2          the whole purchase, or line:quantity
//! redeem m1 100 | redeem m1 100 bill 1000.00
//! adjust m1 +100 | adjust m1 -50
//! catch_up m1                            activate and expire what is due
//! merge m2 into m1
//! ```
//!
//! After every command the books (account balances built from the movements alone) are checked
//! against the lots, so every scenario is also an invariant test.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write;

use expect_test::{expect, Expect};
use jiff::SignedDuration;
use kopilka_core::purchase::{
    decide_adjust, decide_purchase, decide_redeem, decide_return, Channel, LineInput, PurchaseCommand, PurchaseRecord,
    ReturnLine,
};
use kopilka_core::rules::MemberContext;
use kopilka_core::{
    Account, Currency, DomainError, ExpiryPolicy, IdAllocator, LotState, MemberId, MemberLedger, Movement, Program,
    Timestamp,
};

use common::Books;

/// The example program, in UTC so dates read plainly: 1 point per 100 RUB, 1 point = 1 RUB, up to
/// 50% of a bill, 14 days pending, points last 12 months.
fn program() -> Program {
    Program { time_zone: "UTC".into(), ..Program::example() }
}

struct World {
    program: Program,
    ids: IdAllocator,
    now: Timestamp,
    members: BTreeMap<String, MemberLedger>,
    purchases: BTreeMap<String, PurchaseRecord>,
    books: Books,
    out: String,
}

impl World {
    fn new(program: Program) -> World {
        World {
            program,
            ids: IdAllocator::default(),
            now: timestamp("2026-01-01"),
            members: BTreeMap::new(),
            purchases: BTreeMap::new(),
            books: Books::default(),
            out: String::new(),
        }
    }

    fn member(&mut self, name: &str) -> &mut MemberLedger {
        if !self.members.contains_key(name) {
            let id = self.ids.member();
            self.members.insert(name.to_string(), MemberLedger::new(id, Vec::new()));
        }
        self.members.get_mut(name).expect("just inserted")
    }

    fn member_name(&self, id: MemberId) -> String {
        self.members
            .iter()
            .find(|(_, ledger)| ledger.member_id == id)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| format!("member{id}"))
    }

    fn run(&mut self, line: &str) {
        writeln!(self.out, "> {line}").unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        // Members are created on first mention, before a command borrows the id allocator.
        for word in &words {
            if word.starts_with('m') && word[1..].parse::<u32>().is_ok() {
                self.member(word);
            }
        }
        let result = match words.as_slice() {
            ["at", when] => {
                self.now = timestamp(when);
                Ok(Vec::new())
            }
            ["advance", step] => {
                self.now += duration(step);
                Ok(Vec::new())
            }
            ["purchase", member, name, rest @ ..] => self.purchase(member, name, &rest.join(" ")),
            ["return", name, lines @ ..] => self.return_lines(name, lines),
            ["redeem", member, points] => self.redeem(member, points.parse().unwrap(), None),
            ["redeem", member, points, "bill", bill] => self.redeem(member, points.parse().unwrap(), Some(minor(bill))),
            ["adjust", member, points] => {
                let now = self.now;
                let program = self.program.clone();
                let mut ids = self.ids.clone();
                let result = decide_adjust(
                    &program,
                    self.member(member),
                    points.parse().unwrap(),
                    "scenario".into(),
                    now,
                    &mut ids,
                );
                self.ids = ids;
                result.map(|outcome| outcome.movements)
            }
            ["catch_up", member] => {
                let now = self.now;
                let mut ids = self.ids.clone();
                let movements = self.member(member).catch_up(now, &mut ids);
                self.ids = ids;
                Ok(movements)
            }
            ["merge", absorbed, "into", survivor] => {
                let now = self.now;
                let mut ids = self.ids.clone();
                let mut absorbed_ledger = self.member(absorbed).clone();
                let movements = self.member(survivor).absorb(&mut absorbed_ledger, &mut ids, now);
                let (survivor_id, absorbed_id) = (self.member(survivor).member_id, absorbed_ledger.member_id);
                self.members.insert(absorbed.to_string(), absorbed_ledger);
                // What the store does on a merge: the absorbed member's purchases move with the lots.
                for purchase in self.purchases.values_mut().filter(|p| p.member_id == absorbed_id) {
                    purchase.member_id = survivor_id;
                }
                self.ids = ids;
                Ok(movements)
            }
            _ => panic!("unknown command: {line}"),
        };
        match result {
            Ok(movements) => {
                self.books.apply(&movements);
                for movement in &movements {
                    let text = self.describe(movement);
                    writeln!(self.out, "  {text}").unwrap();
                }
            }
            Err(error) => writeln!(self.out, "  refused: {error}").unwrap(),
        }
        let ledgers: Vec<&MemberLedger> = self.members.values().collect();
        common::check_books(&self.books, &ledgers);
        common::check_caught_up(&self.books, &ledgers, &self.ids, &self.program.point_currency, self.now);
    }

    fn purchase(&mut self, member: &str, name: &str, rest: &str) -> Result<Vec<Movement>, DomainError> {
        let (rest, occurred_at) = match rest.split_once(" occurred ") {
            Some((rest, when)) => (rest, timestamp(when)),
            None => (rest, self.now),
        };
        let (rest, redeem_points) = match rest.split_once(" redeem ") {
            Some((rest, points)) => (rest, points.parse().unwrap()),
            None => (rest, 0),
        };
        let lines = rest
            .split(',')
            .map(|item| match item.split_whitespace().collect::<Vec<_>>().as_slice() {
                [price] => line("item", 1, price),
                [sku, quantity_x_price] => {
                    let (quantity, price) = quantity_x_price.split_once('x').expect("quantity x price");
                    line(sku, quantity.parse().unwrap(), price)
                }
                _ => panic!("bad purchase line {item:?}"),
            })
            .collect();
        let command = PurchaseCommand {
            external_id: name.to_string(),
            occurred_at,
            channel: Channel::Pos,
            store: None,
            currency: self.program.bill_currency,
            lines,
            redeem_points,
        };
        let (now, program) = (self.now, self.program.clone());
        let mut ids = self.ids.clone();
        let (record, outcome) =
            decide_purchase(&program, 1, self.member(member), command, &MemberContext::default(), now, &mut ids)?;
        self.ids = ids;
        writeln!(
            self.out,
            "  {name}: total {}, redeemed {} ({}), earned {}, lines earned {:?} redeemed {:?}",
            money(record.total_minor),
            record.points_redeemed,
            money(record.redeemed_value_minor),
            record.points_earned,
            record.lines.iter().map(|l| l.points_earned).collect::<Vec<_>>(),
            record.lines.iter().map(|l| l.points_redeemed).collect::<Vec<_>>(),
        )
        .unwrap();
        self.purchases.insert(name.to_string(), record);
        Ok(outcome.movements)
    }

    fn return_lines(&mut self, name: &str, lines: &[&str]) -> Result<Vec<Movement>, DomainError> {
        let lines: Vec<ReturnLine> = lines
            .iter()
            .map(|item| {
                let (line, quantity) = item.split_once(':').expect("line:quantity");
                ReturnLine { line: line.parse().unwrap(), quantity: quantity.parse().unwrap() }
            })
            .collect();
        let mut purchase = self.purchases[name].clone();
        let member = self.member_name(purchase.member_id);
        let (now, program) = (self.now, self.program.clone());
        let mut ids = self.ids.clone();
        let requested = if lines.is_empty() { None } else { Some(lines.as_slice()) };
        let (summary, outcome) =
            decide_return(&program, self.member(&member), &mut purchase, requested, now, &mut ids)?;
        self.ids = ids;
        writeln!(
            self.out,
            "  returned {}, reversed {}, restored {}, unrecovered {}",
            money(summary.returned_minor),
            summary.points_reversed,
            summary.points_restored,
            summary.points_unrecovered
        )
        .unwrap();
        self.purchases.insert(name.to_string(), purchase);
        Ok(outcome.movements)
    }

    fn redeem(&mut self, member: &str, points: i64, bill_minor: Option<i64>) -> Result<Vec<Movement>, DomainError> {
        let (now, program) = (self.now, self.program.clone());
        let mut ids = self.ids.clone();
        let outcome = decide_redeem(&program, self.member(member), points, bill_minor, None, now, &mut ids)?;
        self.ids = ids;
        Ok(outcome.movements)
    }

    fn account(&self, account: Account) -> String {
        match account {
            Account::MemberPending(id) => format!("{}.pending", self.member_name(id)),
            Account::MemberAvailable(id) => format!("{}.available", self.member_name(id)),
            other => other.kind().to_string(),
        }
    }

    fn describe(&self, movement: &Movement) -> String {
        let postings: Vec<String> = movement
            .postings
            .iter()
            .map(|p| {
                let lot = p.lot_id.map(|id| format!(" #{id}")).unwrap_or_default();
                format!("{} {:+}{lot}", self.account(p.account), p.amount)
            })
            .collect();
        format!("{}: {}", movement.kind.as_str(), postings.join(", "))
    }

    /// The lots, balances and books at the end of the script.
    fn report(&self) -> String {
        let mut out = self.out.clone();
        writeln!(out, "at {}:", date(self.now)).unwrap();
        for (name, ledger) in &self.members {
            let balance = ledger.balance(&self.program.point_currency, self.now);
            writeln!(out, "  {name}: available {}, pending {}", balance.available, balance.pending).unwrap();
            for lot in &ledger.lots {
                let state = match (lot.state, lot.state_at(self.now)) {
                    (stored, due) if stored == due => stored.as_str().to_string(),
                    (stored, due) => format!("{} (due {})", stored.as_str(), due.as_str()),
                };
                let purchase = lot
                    .purchase_id
                    .and_then(|id| self.purchases.iter().find(|(_, p)| p.id == id))
                    .map(|(name, _)| format!(" {name}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "    #{} {}/{} {state}, from {} to {}{purchase}",
                    lot.id,
                    lot.remaining,
                    lot.amount,
                    date(lot.available_from),
                    date(lot.expires_at),
                )
                .unwrap();
            }
        }
        let books: Vec<String> =
            self.books.non_zero().map(|(account, amount)| format!("{} {amount:+}", self.account(account))).collect();
        writeln!(out, "  books: {}", books.join(", ")).unwrap();
        out
    }
}

fn check(program: Program, script: &str, expect: Expect) {
    let mut world = World::new(program);
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        world.run(line);
    }
    expect.assert_eq(&world.report());
}

fn line(sku: &str, quantity: i64, price: &str) -> LineInput {
    LineInput {
        sku: sku.to_string(),
        category: None,
        brand: None,
        quantity,
        unit_price_minor: minor(price),
        discount_minor: 0,
    }
}

fn timestamp(text: &str) -> Timestamp {
    let text = if text.contains('T') { format!("{text}Z") } else { format!("{text}T00:00:00Z") };
    text.parse().unwrap_or_else(|e| panic!("bad time {text}: {e}"))
}

fn duration(text: &str) -> SignedDuration {
    let (number, unit) = text.split_at(text.len() - 1);
    let number: i64 = number.parse().unwrap();
    match unit {
        "d" => SignedDuration::from_hours(number * 24),
        "h" => SignedDuration::from_hours(number),
        _ => panic!("bad duration {text}"),
    }
}

/// RUB as text ("4000.00") to kopecks.
fn minor(text: &str) -> i64 {
    let currency = Currency::parse("RUB").unwrap();
    assert_eq!(currency.minor_digits(), 2);
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "00"));
    whole.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
}

fn money(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn date(at: Timestamp) -> String {
    if at == Timestamp::MAX {
        return "never".into();
    }
    let text = at.to_string();
    text.strip_suffix("T00:00:00Z").map(str::to_string).unwrap_or(text)
}

#[test]
fn purchase_earns_pending_points_that_activate_after_the_return_window_and_expire_after_a_year() {
    check(
        program(),
        "
        at 2026-01-01
        purchase m1 p1 4000.00
        advance 13d
        catch_up m1
        advance 1d
        catch_up m1
        advance 400d
        catch_up m1
        ",
        expect![[r#"
            > at 2026-01-01
            > purchase m1 p1 4000.00
              p1: total 4000.00, redeemed 0 (0.00), earned 40, lines earned [40] redeemed [0]
              earn: issued -40, m1.pending +40 #1
            > advance 13d
            > catch_up m1
            > advance 1d
            > catch_up m1
              activate: m1.pending -40 #1, m1.available +40 #1
            > advance 400d
            > catch_up m1
              expire: m1.available -40 #1, expired +40
            at 2027-02-19:
              m1: available 0, pending 0
                #1 0/40 expired, from 2026-01-15 to 2027-01-01 p1
              books: issued -40, expired +40
        "#]],
    );
}

#[test]
fn return_restores_points_spent_on_the_purchase() {
    check(
        program(),
        "
        adjust m1 +100
        purchase m1 p1 1000.00 redeem 100
        return p1
        ",
        expect![[r#"
            > adjust m1 +100
              adjust: adjustments -100, m1.available +100 #1
            > purchase m1 p1 1000.00 redeem 100
              p1: total 1000.00, redeemed 100 (100.00), earned 9, lines earned [9] redeemed [100]
              redeem: m1.available -100 #1, redeemed +100
              earn: issued -9, m1.pending +9 #2
            > return p1
              returned 1000.00, reversed 9, restored 100, unrecovered 0
              restore: redeemed -100, m1.available +100 #3
              reverse: m1.pending -9 #2, issued +9
            at 2026-01-01:
              m1: available 100, pending 0
                #1 0/100 closed, from 2026-01-01 to 2027-01-01
                #2 0/9 closed, from 2026-01-15 to 2027-01-01 p1
                #3 100/100 available, from 2026-01-01 to 2027-01-01 p1
              books: m1.available +100, adjustments -100
        "#]],
    );
}

#[test]
fn partial_returns_reverse_in_proportion_to_the_quantity_returned() {
    check(
        program(),
        "
        adjust m1 +300
        purchase m1 p1 shoes 3x1000.00, socks 1x300.00 redeem 300
        return p1 0:1
        return p1 0:1
        return p1 0:2
        return p1 0:1 1:1
        return p1
        ",
        expect![[r#"
            > adjust m1 +300
              adjust: adjustments -300, m1.available +300 #1
            > purchase m1 p1 shoes 3x1000.00, socks 1x300.00 redeem 300
              p1: total 3300.00, redeemed 300 (300.00), earned 30, lines earned [27, 3] redeemed [273, 27]
              redeem: m1.available -300 #1, redeemed +300
              earn: issued -30, m1.pending +30 #2
            > return p1 0:1
              returned 1000.00, reversed 9, restored 91, unrecovered 0
              restore: redeemed -91, m1.available +91 #3
              reverse: m1.pending -9 #2, issued +9
            > return p1 0:1
              returned 1000.00, reversed 9, restored 91, unrecovered 0
              restore: redeemed -91, m1.available +91 #4
              reverse: m1.pending -9 #2, issued +9
            > return p1 0:2
              refused: line 0: 2 to return but only 1 returnable
            > return p1 0:1 1:1
              returned 1300.00, reversed 12, restored 118, unrecovered 0
              restore: redeemed -118, m1.available +118 #5
              reverse: m1.pending -12 #2, issued +12
            > return p1
              refused: the purchase has nothing left to return
            at 2026-01-01:
              m1: available 300, pending 0
                #1 0/300 closed, from 2026-01-01 to 2027-01-01
                #2 0/30 closed, from 2026-01-15 to 2027-01-01 p1
                #3 91/91 available, from 2026-01-01 to 2027-01-01 p1
                #4 91/91 available, from 2026-01-01 to 2027-01-01 p1
                #5 118/118 available, from 2026-01-01 to 2027-01-01 p1
              books: m1.available +300, adjustments -300
        "#]],
    );
}

#[test]
fn returning_earned_points_already_spent_leaves_them_unrecovered() {
    check(
        program(),
        "
        purchase m1 p1 4000.00
        advance 14d
        redeem m1 30
        return p1
        ",
        expect![[r#"
            > purchase m1 p1 4000.00
              p1: total 4000.00, redeemed 0 (0.00), earned 40, lines earned [40] redeemed [0]
              earn: issued -40, m1.pending +40 #1
            > advance 14d
            > redeem m1 30
              activate: m1.pending -40 #1, m1.available +40 #1
              redeem: m1.available -30 #1, redeemed +30
            > return p1
              returned 4000.00, reversed 40, restored 0, unrecovered 30
              reverse: m1.available -10 #1, issued +10
            at 2026-01-15:
              m1: available 0, pending 0
                #1 0/40 closed, from 2026-01-15 to 2027-01-01 p1
              books: issued -30, redeemed +30
        "#]],
    );
}

#[test]
fn redemption_respects_the_maximum_share_of_the_bill() {
    check(
        program(),
        "
        adjust m1 +1000
        redeem m1 501 bill 1000.00
        redeem m1 500 bill 1000.00
        purchase m1 p1 999.99 redeem 500
        purchase m1 p1 999.99 redeem 499
        ",
        expect![[r#"
            > adjust m1 +1000
              adjust: adjustments -1000, m1.available +1000 #1
            > redeem m1 501 bill 1000.00
              refused: at most 500 points may pay for this bill, 501 requested
            > redeem m1 500 bill 1000.00
              redeem: m1.available -500 #1, redeemed +500
            > purchase m1 p1 999.99 redeem 500
              refused: at most 499 points may pay for this bill, 500 requested
            > purchase m1 p1 999.99 redeem 499
              p1: total 999.99, redeemed 499 (499.00), earned 5, lines earned [5] redeemed [499]
              redeem: m1.available -499 #1, redeemed +499
              earn: issued -5, m1.pending +5 #2
            at 2026-01-01:
              m1: available 1, pending 5
                #1 1/1000 available, from 2026-01-01 to 2027-01-01
                #2 5/5 pending, from 2026-01-15 to 2027-01-01 p1
              books: m1.pending +5, m1.available +1, issued -5, redeemed +999, adjustments -1000
        "#]],
    );
}

#[test]
fn redemption_beyond_the_available_balance_is_refused_and_pending_points_cannot_be_spent() {
    check(
        program(),
        "
        purchase m1 p1 10000.00
        redeem m1 1
        adjust m1 -1
        purchase m1 p2 100.00 redeem 1
        advance 14d
        redeem m1 101
        redeem m1 100
        ",
        expect![[r#"
            > purchase m1 p1 10000.00
              p1: total 10000.00, redeemed 0 (0.00), earned 100, lines earned [100] redeemed [0]
              earn: issued -100, m1.pending +100 #1
            > redeem m1 1
              refused: insufficient points: 0 available, 1 requested
            > adjust m1 -1
              refused: insufficient points: 0 available, 1 requested
            > purchase m1 p2 100.00 redeem 1
              refused: insufficient points: 0 available, 1 requested
            > advance 14d
            > redeem m1 101
              refused: insufficient points: 100 available, 101 requested
            > redeem m1 100
              activate: m1.pending -100 #1, m1.available +100 #1
              redeem: m1.available -100 #1, redeemed +100
            at 2026-01-15:
              m1: available 0, pending 0
                #1 0/100 closed, from 2026-01-15 to 2027-01-01 p1
              books: issued -100, redeemed +100
        "#]],
    );
}

#[test]
fn soonest_expiring_lots_are_consumed_first() {
    check(
        program(),
        "
        at 2026-02-01
        adjust m1 +100
        purchase m1 p1 5000.00 occurred 2025-12-01
        advance 30d
        adjust m1 +100
        redeem m1 120
        adjust m1 -60
        ",
        expect![[r#"
            > at 2026-02-01
            > adjust m1 +100
              adjust: adjustments -100, m1.available +100 #1
            > purchase m1 p1 5000.00 occurred 2025-12-01
              p1: total 5000.00, redeemed 0 (0.00), earned 50, lines earned [50] redeemed [0]
              earn: issued -50, m1.available +50 #2
            > advance 30d
            > adjust m1 +100
              adjust: adjustments -100, m1.available +100 #3
            > redeem m1 120
              redeem: m1.available -50 #2, m1.available -70 #1, redeemed +120
            > adjust m1 -60
              adjust: m1.available -30 #1, m1.available -30 #3, adjustments +60
            at 2026-03-03:
              m1: available 70, pending 0
                #1 0/100 closed, from 2026-02-01 to 2027-02-01
                #2 0/50 closed, from 2025-12-15 to 2026-12-01 p1
                #3 70/100 available, from 2026-03-03 to 2027-03-03
              books: m1.available +70, issued -50, redeemed +120, adjustments -140
        "#]],
    );
}

#[test]
fn end_of_following_year_expiry_keeps_a_years_points_until_the_new_year_after_next() {
    let program = Program { expiry: ExpiryPolicy::EndOfFollowingYear, ..program() };
    check(
        program,
        "
        at 2026-03-10
        purchase m1 p1 2000.00
        at 2026-12-31T23:59:59
        purchase m1 p2 3000.00
        at 2027-01-01
        purchase m1 p3 4000.00
        at 2027-12-31T23:59:59
        catch_up m1
        at 2028-01-01
        catch_up m1
        ",
        expect![[r#"
            > at 2026-03-10
            > purchase m1 p1 2000.00
              p1: total 2000.00, redeemed 0 (0.00), earned 20, lines earned [20] redeemed [0]
              earn: issued -20, m1.pending +20 #1
            > at 2026-12-31T23:59:59
            > purchase m1 p2 3000.00
              p2: total 3000.00, redeemed 0 (0.00), earned 30, lines earned [30] redeemed [0]
              activate: m1.pending -20 #1, m1.available +20 #1
              earn: issued -30, m1.pending +30 #2
            > at 2027-01-01
            > purchase m1 p3 4000.00
              p3: total 4000.00, redeemed 0 (0.00), earned 40, lines earned [40] redeemed [0]
              earn: issued -40, m1.pending +40 #3
            > at 2027-12-31T23:59:59
            > catch_up m1
              activate: m1.pending -30 #2, m1.available +30 #2, m1.pending -40 #3, m1.available +40 #3
            > at 2028-01-01
            > catch_up m1
              expire: m1.available -20 #1, m1.available -30 #2, expired +50
            at 2028-01-01:
              m1: available 40, pending 0
                #1 0/20 expired, from 2026-03-24 to 2028-01-01 p1
                #2 0/30 expired, from 2027-01-14T23:59:59Z to 2028-01-01 p2
                #3 40/40 available, from 2027-01-15 to 2029-01-01 p3
              books: m1.available +40, issued -90, expired +50
        "#]],
    );
}

#[test]
fn merge_moves_open_lots_to_the_survivor_with_their_dates() {
    check(
        program(),
        "
        at 2026-01-01
        purchase m1 p1 1000.00
        purchase m2 p2 5000.00
        advance 14d
        catch_up m2
        redeem m2 20
        purchase m2 p3 2000.00
        merge m2 into m1
        advance 14d
        catch_up m1
        ",
        expect![[r#"
            > at 2026-01-01
            > purchase m1 p1 1000.00
              p1: total 1000.00, redeemed 0 (0.00), earned 10, lines earned [10] redeemed [0]
              earn: issued -10, m1.pending +10 #1
            > purchase m2 p2 5000.00
              p2: total 5000.00, redeemed 0 (0.00), earned 50, lines earned [50] redeemed [0]
              earn: issued -50, m2.pending +50 #2
            > advance 14d
            > catch_up m2
              activate: m2.pending -50 #2, m2.available +50 #2
            > redeem m2 20
              redeem: m2.available -20 #2, redeemed +20
            > purchase m2 p3 2000.00
              p3: total 2000.00, redeemed 0 (0.00), earned 20, lines earned [20] redeemed [0]
              earn: issued -20, m2.pending +20 #3
            > merge m2 into m1
              merge: m2.available -30 #2, m1.available +30 #2, m2.pending -20 #3, m1.pending +20 #3
            > advance 14d
            > catch_up m1
              activate: m1.pending -10 #1, m1.available +10 #1, m1.pending -20 #3, m1.available +20 #3
            at 2026-01-29:
              m1: available 60, pending 0
                #1 10/10 available, from 2026-01-15 to 2027-01-01 p1
                #2 30/50 available, from 2026-01-15 to 2027-01-01 p2
                #3 20/20 available, from 2026-01-29 to 2027-01-15 p3
              m2: available 0, pending 0
              books: m1.available +60, issued -80, redeemed +20
        "#]],
    );
}

#[test]
fn catching_up_late_expires_a_pending_lot_without_activating_it() {
    let program = Program { expiry: ExpiryPolicy::MonthsAfterEarn { months: 1 }, pending_days: 40, ..program() };
    check(
        program,
        "
        at 2026-01-01
        purchase m1 p1 4000.00
        advance 35d
        catch_up m1
        ",
        expect![[r#"
            > at 2026-01-01
            > purchase m1 p1 4000.00
              p1: total 4000.00, redeemed 0 (0.00), earned 40, lines earned [40] redeemed [0]
              earn: issued -40, m1.pending +40 #1
            > advance 35d
            > catch_up m1
              expire: m1.pending -40 #1, expired +40
            at 2026-02-05:
              m1: available 0, pending 0
                #1 0/40 expired, from 2026-02-10 to 2026-02-01 p1
              books: issued -40, expired +40
        "#]],
    );
}

#[test]
fn points_never_expire_under_the_never_policy() {
    let program = Program { expiry: ExpiryPolicy::Never, ..program() };
    check(
        program,
        "
        purchase m1 p1 4000.00
        advance 3650d
        catch_up m1
        ",
        expect![[r#"
            > purchase m1 p1 4000.00
              p1: total 4000.00, redeemed 0 (0.00), earned 40, lines earned [40] redeemed [0]
              earn: issued -40, m1.pending +40 #1
            > advance 3650d
            > catch_up m1
              activate: m1.pending -40 #1, m1.available +40 #1
            at 2035-12-30:
              m1: available 40, pending 0
                #1 40/40 available, from 2026-01-15 to never p1
              books: m1.available +40, issued -40
        "#]],
    );
}

#[test]
fn earning_on_the_whole_bill_ignores_the_points_spent() {
    let program = Program { earn_on_paid_amount: false, ..program() };
    check(
        program,
        "
        adjust m1 +500
        purchase m1 p1 1000.00 redeem 500
        ",
        expect![[r#"
            > adjust m1 +500
              adjust: adjustments -500, m1.available +500 #1
            > purchase m1 p1 1000.00 redeem 500
              p1: total 1000.00, redeemed 500 (500.00), earned 10, lines earned [10] redeemed [500]
              redeem: m1.available -500 #1, redeemed +500
              earn: issued -10, m1.pending +10 #2
            at 2026-01-01:
              m1: available 0, pending 10
                #1 0/500 closed, from 2026-01-01 to 2027-01-01
                #2 10/10 pending, from 2026-01-15 to 2027-01-01 p1
              books: m1.pending +10, issued -10, redeemed +500, adjustments -500
        "#]],
    );
}

#[test]
fn refused_commands_change_nothing() {
    let program = program();
    let mut ids = IdAllocator::default();
    let now = timestamp("2026-01-01");
    let mut ledger = MemberLedger::new(ids.member(), Vec::new());
    decide_adjust(&program, &mut ledger, 50, "gift".into(), now, &mut ids).unwrap();
    let (before, ids_before) = (ledger.clone(), ids.clone());
    let later = now + duration("400d");
    let refusals = [
        decide_redeem(&program, &mut ledger, 51, None, None, now, &mut ids).unwrap_err(),
        // The lot expired by `later`, though the ledger has not caught up yet.
        decide_redeem(&program, &mut ledger, 1, None, None, later, &mut ids).unwrap_err(),
        decide_adjust(&program, &mut ledger, -51, "fix".into(), now, &mut ids).unwrap_err(),
        decide_adjust(&program, &mut ledger, 0, "fix".into(), now, &mut ids).unwrap_err(),
        decide_adjust(&program, &mut ledger, 5, " ".into(), later, &mut ids).unwrap_err(),
        decide_redeem(&program, &mut ledger, 0, None, None, later, &mut ids).unwrap_err(),
    ];
    assert_eq!(ledger, before);
    assert_eq!(
        (ids.next_lot, ids.next_movement, ids.next_purchase),
        (ids_before.next_lot, ids_before.next_movement, ids_before.next_purchase)
    );
    let codes: Vec<&str> = refusals.iter().map(DomainError::code).collect();
    expect![[r#"
        [
            "insufficient_points",
            "insufficient_points",
            "insufficient_points",
            "validation_failed",
            "validation_failed",
            "validation_failed",
        ]
    "#]]
    .assert_debug_eq(&codes);
    assert!(ledger.lots.iter().all(|lot| lot.state == LotState::Available));
}

#[test]
fn a_purchase_backdated_past_its_expiry_earns_points_that_expire_at_the_next_catch_up() {
    check(
        program(),
        "
        at 2026-01-01
        purchase m1 p1 4000.00 occurred 2024-06-01
        catch_up m1
        ",
        expect![[r#"
            > at 2026-01-01
            > purchase m1 p1 4000.00 occurred 2024-06-01
              p1: total 4000.00, redeemed 0 (0.00), earned 40, lines earned [40] redeemed [0]
              earn: issued -40, m1.available +40 #1
            > catch_up m1
              expire: m1.available -40 #1, expired +40
            at 2026-01-01:
              m1: available 0, pending 0
                #1 0/40 expired, from 2024-06-15 to 2025-06-01 p1
              books: issued -40, expired +40
        "#]],
    );
}

#[test]
fn return_after_merge_reverses_the_points_of_the_purchase_moved_to_the_survivor() {
    let mut world = World::new(program());
    for line in [
        "at 2026-01-01",
        "purchase m1 p1 1000.00",
        "purchase m2 p2 5000.00",
        "advance 14d",
        "catch_up m2",
        "purchase m2 p3 2000.00",
        "merge m2 into m1",
        "return p3",
    ] {
        world.run(line);
    }
    let m1 = &world.members["m1"];
    // p3's 20 points were still pending when returned: they are what the return takes back.
    let balance = m1.balance(&world.program.point_currency, world.now);
    assert_eq!((balance.available, balance.pending), (60, 0), "{}", world.report());
}

#[test]
fn return_after_the_earned_points_expired_does_not_take_them_a_second_time() {
    let mut world = World::new(program());
    for line in ["at 2026-01-01", "purchase m1 p1 4000.00", "at 2027-01-10", "adjust m1 +100", "return p1"] {
        world.run(line);
    }
    let m1 = &world.members["m1"];
    // The 40 points p1 earned went to the expired account on 2027-01-01; the member has only the
    // 100 points given since, which p1 never paid for.
    let balance = m1.balance(&world.program.point_currency, world.now);
    assert_eq!(balance.available, 100, "{}", world.report());
}
