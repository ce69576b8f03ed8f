//! Property tests: random programs and random sequences of commands on two members, under a fake
//! clock that jumps across return windows and expiry dates, with the books kept by a model that
//! knows only postings.
//!
//! After every step the model and the core must agree: every movement sums to zero, all accounts
//! together sum to zero, each member account equals the lots in that state (before and after
//! catching up), no balance has the wrong sign, no lot is out of range, and a refused command
//! changed nothing. Some steps also check a property on a copy of the world: a purchase returned at
//! once gives back exactly what it took, and a purchase returned in parts adds up to the whole.
//! A failure prints the smallest sequence proptest found; it replays from the seed it saves.

mod common;

use jiff::SignedDuration;
use kopilka_core::purchase::{
    allocate, decide_adjust, decide_purchase, decide_redeem, decide_return, Channel, LineInput, PurchaseCommand,
    PurchaseRecord, ReturnLine, ReturnSummary,
};
use kopilka_core::rules::MemberContext;
use kopilka_core::{
    Balance, Currency, DomainEvent, EarnRate, ExpiryPolicy, IdAllocator, MemberLedger, Movement, MovementKind,
    PointCurrency, Program, Timestamp,
};
use proptest::prelude::*;

use common::Books;

/// Members active at once; a merge retires one and a new member takes its place.
const MEMBERS: usize = 2;
/// Commands per generated sequence.
const STEPS_MAX: usize = 40;

#[derive(Debug, Clone)]
struct LineSpec {
    quantity: i64,
    unit_price_minor: i64,
    discount_percent: i64,
}

/// How many points a command asks for: a share of what it could afford, or a raw number that may
/// be refused.
#[derive(Debug, Clone)]
enum Points {
    PercentOfAffordable(i64),
    Raw(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Advance { hours: i64 },
    Purchase { member: usize, lines: Vec<LineSpec>, redeem: Points, backdate_hours: i64 },
    Return { purchase: usize, part: Option<(usize, i64)> },
    Redeem { member: usize, points: Points, bill_minor: Option<i64> },
    Adjust { member: usize, points: i64 },
    CatchUp { member: usize },
    Merge { survivor: usize, catch_up_first: bool },
    Flush { member: usize },
    CheckReturnInParts { purchase: usize, seed: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct World {
    program: Program,
    ids: (i64, i64, i64, i64),
    now: Timestamp,
    active: Vec<MemberLedger>,
    retired: Vec<MemberLedger>,
    purchases: Vec<PurchaseRecord>,
    books: Books,
}

impl World {
    fn new(program: Program) -> World {
        let mut ids = IdAllocator::default();
        let active = (0..MEMBERS).map(|_| MemberLedger::new(ids.member(), Vec::new())).collect();
        let mut world = World {
            program,
            ids: (0, 0, 0, 0),
            now: "2026-01-01T09:00:00Z".parse().unwrap(),
            active,
            retired: Vec::new(),
            purchases: Vec::new(),
            books: Books::default(),
        };
        world.keep(ids);
        world
    }

    // The allocator is not comparable, so the world keeps its counters and lends it out.
    fn allocator(&self) -> IdAllocator {
        let (next_lot, next_movement, next_purchase, next_member) = self.ids;
        IdAllocator { next_lot, next_movement, next_purchase, next_member, next_checkout: 0 }
    }

    fn keep(&mut self, ids: IdAllocator) {
        self.ids = (ids.next_lot, ids.next_movement, ids.next_purchase, ids.next_member);
    }

    fn currency(&self) -> PointCurrency {
        self.program.point_currency.clone()
    }

    fn balance(&self, member: usize) -> Balance {
        self.active[member].balance(&self.program.point_currency, self.now)
    }

    fn ledgers(&self) -> Vec<&MemberLedger> {
        self.active.iter().chain(&self.retired).collect()
    }

    fn member_index(&self, purchase: &PurchaseRecord) -> usize {
        self.active.iter().position(|l| l.member_id == purchase.member_id).expect("purchases follow merges")
    }

    /// Writes movements to the model books, checking what must hold of each one.
    fn apply(&mut self, movements: &[Movement]) {
        for movement in movements {
            assert_eq!(movement.occurred_at, self.now);
            assert_eq!(&movement.currency, &self.program.point_currency);
            if movement.kind != MovementKind::Merge {
                let strangers = movement
                    .postings
                    .iter()
                    .filter_map(|p| p.account.member_id())
                    .any(|member| member != movement.member_id);
                assert!(!strangers, "{movement:?} touches another member");
            }
        }
        self.books.apply(movements);
    }

    fn check(&self) {
        let ledgers = self.ledgers();
        common::check_books(&self.books, &ledgers);
        common::check_caught_up(&self.books, &ledgers, &self.allocator(), &self.currency(), self.now);
        for purchase in &self.purchases {
            check_record(purchase);
        }
        for retired in &self.retired {
            assert!(retired.lots.iter().all(|lot| lot.remaining == 0), "a merged member still holds points");
        }
    }
}

fn check_record(purchase: &PurchaseRecord) {
    let lines = &purchase.lines;
    assert_eq!(lines.iter().map(|l| l.total_minor).sum::<i64>(), purchase.total_minor);
    assert_eq!(lines.iter().map(|l| l.points_earned).sum::<i64>(), purchase.points_earned);
    assert_eq!(lines.iter().map(|l| l.points_redeemed).sum::<i64>(), purchase.points_redeemed);
    assert!(lines.iter().all(|l| (0..=l.quantity).contains(&l.quantity_returned)));
    assert!((0..=purchase.total_minor).contains(&purchase.returned_minor));
    assert!((0..=purchase.points_earned).contains(&(purchase.points_reversed + purchase.points_lapsed)));
    assert!((0..=purchase.points_redeemed).contains(&purchase.points_restored));
    assert!((0..=purchase.points_reversed).contains(&purchase.points_unrecovered));
    let all_back = lines.iter().all(|l| l.quantity_returned == l.quantity);
    if all_back {
        assert_eq!(purchase.returned_minor, purchase.total_minor);
        assert_eq!(purchase.points_reversed + purchase.points_lapsed, purchase.points_earned);
        assert_eq!(purchase.points_restored, purchase.points_redeemed);
    }
}

/// Checks what an accepted command's outcome says about itself: one points event per movement.
fn check_events(movements: &[Movement], events: &[DomainEvent]) {
    let points_events: Vec<&DomainEvent> = events.iter().filter(|e| matches!(e, DomainEvent::Points { .. })).collect();
    assert_eq!(points_events.len(), movements.len());
    for (movement, event) in movements.iter().zip(points_events) {
        let DomainEvent::Points { movement: kind, points, member_id, .. } = event else { unreachable!() };
        assert_eq!((*kind, *member_id), (movement.kind, movement.member_id));
        if movement.kind != MovementKind::Activate {
            assert_eq!(*points, movement.member_delta().abs());
        }
    }
}

fn points_wanted(points: &Points, affordable: i64) -> i64 {
    match points {
        Points::PercentOfAffordable(percent) => affordable.max(0) * percent / 100,
        Points::Raw(points) => *points,
    }
}

fn step(world: &mut World, op: &Op) {
    let before = world.clone();
    let now = world.now;
    let program = world.program.clone();
    let mut ids = world.allocator();
    let refused = match op {
        Op::Advance { hours } => {
            world.now += SignedDuration::from_hours(*hours);
            false
        }
        Op::Purchase { member, lines, redeem, backdate_hours } => {
            let lines: Vec<LineInput> = lines
                .iter()
                .enumerate()
                .map(|(index, spec)| {
                    let gross = spec.quantity * spec.unit_price_minor;
                    LineInput {
                        sku: format!("sku-{index}"),
                        category: None,
                        brand: None,
                        quantity: spec.quantity,
                        unit_price_minor: spec.unit_price_minor,
                        discount_minor: gross * spec.discount_percent / 100,
                    }
                })
                .collect();
            let total_minor: i64 = lines.iter().map(|l| l.quantity * l.unit_price_minor - l.discount_minor).sum();
            let balance_before = world.balance(*member);
            let affordable = balance_before.available.min(program.max_redeemable_points(total_minor));
            let command = PurchaseCommand {
                external_id: format!("receipt-{}", world.purchases.len()),
                occurred_at: now - SignedDuration::from_hours(*backdate_hours),
                channel: Channel::Pos,
                store: None,
                currency: program.bill_currency,
                lines,
                redeem_points: points_wanted(redeem, affordable),
            };
            match decide_purchase(
                &program,
                1,
                &mut world.active[*member],
                command,
                &MemberContext::default(),
                now,
                &mut ids,
            ) {
                Err(_) => true,
                Ok((record, outcome)) => {
                    check_events(&outcome.movements, &outcome.events);
                    world.apply(&outcome.movements);
                    world.keep(ids);
                    check_record(&record);
                    check_return_at_once(world, *member, &record, balance_before);
                    world.purchases.push(record);
                    false
                }
            }
        }
        Op::Return { purchase, part } => {
            if world.purchases.is_empty() {
                return;
            }
            let index = purchase % world.purchases.len();
            let member = world.member_index(&world.purchases[index]);
            let lines = part
                .map(|(line, quantity)| vec![ReturnLine { line: line % world.purchases[index].lines.len(), quantity }]);
            let mut record = world.purchases[index].clone();
            match decide_return(&program, &mut world.active[member], &mut record, lines.as_deref(), now, &mut ids) {
                Err(_) => true,
                Ok((summary, outcome)) => {
                    check_events(&outcome.movements, &outcome.events);
                    check_summary(&summary, &outcome.movements);
                    world.apply(&outcome.movements);
                    world.keep(ids);
                    world.purchases[index] = record;
                    false
                }
            }
        }
        Op::Redeem { member, points, bill_minor } => {
            let balance_before = world.balance(*member);
            let mut affordable = balance_before.available;
            if let Some(bill) = bill_minor {
                affordable = affordable.min(program.max_redeemable_points(*bill));
            }
            let points = points_wanted(points, affordable);
            match decide_redeem(&program, &mut world.active[*member], points, *bill_minor, None, now, &mut ids) {
                Err(_) => true,
                Ok(outcome) => {
                    check_events(&outcome.movements, &outcome.events);
                    let redemption = outcome.movements.last().expect("a redemption moves points");
                    assert_eq!((redemption.kind, redemption.member_delta()), (MovementKind::Redeem, -points));
                    world.apply(&outcome.movements);
                    world.keep(ids);
                    let after = world.balance(*member);
                    assert_eq!(after.available, balance_before.available - points, "only available points are spent");
                    assert_eq!(after.pending, balance_before.pending);
                    false
                }
            }
        }
        Op::Adjust { member, points } => {
            let balance_before = world.balance(*member);
            match decide_adjust(&program, &mut world.active[*member], *points, "test".into(), now, &mut ids) {
                Err(_) => true,
                Ok(outcome) => {
                    check_events(&outcome.movements, &outcome.events);
                    world.apply(&outcome.movements);
                    world.keep(ids);
                    let after = world.balance(*member);
                    assert_eq!(after.available, balance_before.available + points);
                    assert_eq!(after.pending, balance_before.pending);
                    false
                }
            }
        }
        Op::CatchUp { member } => {
            let balance_before = world.balance(*member);
            let movements = world.active[*member].catch_up(now, &mut ids);
            assert!(movements.len() <= 2);
            world.apply(&movements);
            world.keep(ids);
            assert_eq!(world.balance(*member), balance_before, "catching up changes no balance at now");
            false
        }
        Op::Merge { survivor, catch_up_first } => {
            let (survivor, absorbed) = (*survivor, 1 - *survivor);
            let total_before = [survivor, absorbed].map(|m| world.balance(m));
            if *catch_up_first {
                for member in [survivor, absorbed] {
                    let movements = world.active[member].catch_up(now, &mut ids);
                    world.apply(&movements);
                }
            }
            let fresh = MemberLedger::new(ids.member(), Vec::new());
            let mut absorbed_ledger = std::mem::replace(&mut world.active[absorbed], fresh);
            let movements = world.active[survivor].absorb(&mut absorbed_ledger, &mut ids, now);
            assert!(movements.len() <= 1, "one merge movement per currency");
            world.apply(&movements);
            world.keep(ids);
            let (survivor_id, absorbed_id) = (world.active[survivor].member_id, absorbed_ledger.member_id);
            // What the store does on a merge: the absorbed member's purchases move with the lots.
            for purchase in world.purchases.iter_mut().filter(|p| p.member_id == absorbed_id) {
                purchase.member_id = survivor_id;
            }
            world.retired.push(absorbed_ledger);
            let after = world.balance(survivor);
            assert_eq!(after.available, total_before[0].available + total_before[1].available);
            assert_eq!(after.pending, total_before[0].pending + total_before[1].pending);
            false
        }
        Op::Flush { member } => {
            let balance_before = world.balance(*member);
            let dirty = world.active[*member].take_dirty();
            let mut ids_seen: Vec<_> = dirty.iter().map(|lot| lot.id).collect();
            ids_seen.dedup();
            assert_eq!(ids_seen.len(), dirty.len(), "a lot is written back once");
            assert!(world.active[*member].dirty.is_empty());
            assert!(world.active[*member].lots.iter().all(|lot| lot.remaining > 0));
            assert_eq!(world.balance(*member), balance_before);
            false
        }
        Op::CheckReturnInParts { purchase, seed } => {
            if !world.purchases.is_empty() {
                check_return_in_parts(world, purchase % world.purchases.len(), *seed);
            }
            false
        }
    };
    if refused {
        assert_eq!(*world, before, "a refused {op:?} changed the world");
    }
    world.check();
}

/// What a return says it did matches its movements.
fn check_summary(summary: &ReturnSummary, movements: &[Movement]) {
    let of_kind = |kind| -> i64 { movements.iter().filter(|m| m.kind == kind).map(Movement::member_delta).sum() };
    assert_eq!(of_kind(MovementKind::Restore), summary.points_restored);
    assert_eq!(-of_kind(MovementKind::Reverse), summary.points_reversed - summary.points_unrecovered);
    assert!((0..=summary.points_reversed).contains(&summary.points_unrecovered));
}

/// A purchase returned whole at the same moment leaves the member exactly where they were: the
/// points earned are reversed from the lot they went to, the points spent come back.
fn check_return_at_once(world: &World, member: usize, record: &PurchaseRecord, balance_before: Balance) {
    let mut world = world.clone();
    let mut record = record.clone();
    let mut ids = world.allocator();
    let (summary, outcome) =
        decide_return(&world.program, &mut world.active[member], &mut record, None, world.now, &mut ids)
            .expect("a fresh purchase can be returned");
    world.apply(&outcome.movements);
    world.keep(ids);
    assert_eq!(summary.returned_minor, record.total_minor);
    assert_eq!(summary.points_reversed, record.points_earned);
    assert_eq!(summary.points_restored, record.points_redeemed);
    assert_eq!(summary.points_unrecovered, 0);
    assert_eq!(world.balance(member), balance_before, "a purchase returned at once leaves the balance as it was");
    world.check();
}

/// Returning what is left of a purchase in random parts reverses, restores and refunds exactly
/// what one whole return does; when neither left points unrecovered, the balances agree too.
fn check_return_in_parts(world: &World, index: usize, seed: u64) {
    let member = world.member_index(&world.purchases[index]);
    let program = world.program.clone();

    let mut whole = world.clone();
    let mut whole_ids = whole.allocator();
    let whole_result = decide_return(
        &program,
        &mut whole.active[member],
        &mut whole.purchases[index],
        None,
        whole.now,
        &mut whole_ids,
    );
    let Ok((whole_summary, outcome)) = whole_result else {
        assert!(world.purchases[index].lines.iter().all(|l| l.quantity_returned == l.quantity));
        return;
    };
    whole.apply(&outcome.movements);
    whole.keep(whole_ids);
    whole.check();

    // Split what is left into single units and runs of units, in an order the seed picks.
    let mut rng = seed | 1;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut parts = Vec::new();
    for (line, recorded) in world.purchases[index].lines.iter().enumerate() {
        let mut left = recorded.quantity - recorded.quantity_returned;
        while left > 0 {
            let quantity = 1 + next(left as u64) as i64;
            parts.push(ReturnLine { line, quantity });
            left -= quantity;
        }
    }
    for i in (1..parts.len()).rev() {
        parts.swap(i, next(i as u64 + 1) as usize);
    }

    let mut split = world.clone();
    let mut total = ReturnSummary {
        returned_minor: 0,
        points_reversed: 0,
        points_restored: 0,
        points_unrecovered: 0,
        points_lapsed: 0,
    };
    for part in parts {
        let mut ids = split.allocator();
        let (summary, outcome) = decide_return(
            &program,
            &mut split.active[member],
            &mut split.purchases[index],
            Some(&[part]),
            split.now,
            &mut ids,
        )
        .expect("each part is returnable");
        check_summary(&summary, &outcome.movements);
        split.apply(&outcome.movements);
        split.keep(ids);
        split.check();
        total.returned_minor += summary.returned_minor;
        total.points_reversed += summary.points_reversed;
        total.points_restored += summary.points_restored;
        total.points_unrecovered += summary.points_unrecovered;
        total.points_lapsed += summary.points_lapsed;
    }
    assert_eq!(total.points_lapsed, whole_summary.points_lapsed);
    assert_eq!(total.returned_minor, whole_summary.returned_minor);
    assert_eq!(total.points_reversed, whole_summary.points_reversed);
    assert_eq!(total.points_restored, whole_summary.points_restored);
    let mut expected = whole.purchases[index].clone();
    expected.points_unrecovered = split.purchases[index].points_unrecovered;
    // Each part is its own return, with its time; together they took back what the whole did.
    let taken = |record: &PurchaseRecord| record.returns.iter().map(|r| r.returned_minor).sum::<i64>();
    assert_eq!(taken(&split.purchases[index]), taken(&expected));
    expected.returns = split.purchases[index].returns.clone();
    assert_eq!(split.purchases[index], expected);
    // Each part claws back only what the member holds at that moment, so points restored by a
    // later part never cover an earlier part's shortfall: parts can only leave more unrecovered.
    assert!(total.points_unrecovered >= whole_summary.points_unrecovered);
    if total.points_unrecovered == 0 {
        assert_eq!(split.balance(member), whole.balance(member));
    }
}

fn program_strategy() -> impl Strategy<Value = Program> {
    let expiry = prop_oneof![
        Just(ExpiryPolicy::MonthsAfterEarn { months: 12 }),
        Just(ExpiryPolicy::MonthsAfterEarn { months: 1 }),
        Just(ExpiryPolicy::EndOfFollowingYear),
        Just(ExpiryPolicy::Never),
    ];
    let rate = prop_oneof![
        Just(EarnRate { points: 1, per_minor: 10_000 }),
        Just(EarnRate { points: 10, per_minor: 10_000 }),
        Just(EarnRate { points: 3, per_minor: 1_000 }),
        Just(EarnRate { points: 0, per_minor: 100 }),
    ];
    (
        expiry,
        rate,
        prop::sample::select(vec![0, 1, 14, 30]),
        prop::sample::select(vec![0, 30, 50, 100]),
        prop::sample::select(vec![1, 50, 100]),
        any::<bool>(),
        prop::sample::select(vec!["UTC", "Europe/Moscow", "America/New_York"]),
    )
        .prop_map(|(expiry, earn_rate, pending_days, share, point_value_minor, earn_on_paid_amount, zone)| Program {
            name: "Property".into(),
            bill_currency: Currency::parse("RUB").unwrap(),
            point_currency: PointCurrency::parse("PTS").unwrap(),
            earn_rate,
            point_value_minor,
            max_redeem_share_percent: share,
            pending_days,
            expiry,
            earn_on_paid_amount,
            time_zone: zone.into(),
            ..Program::example()
        })
        .prop_filter("valid program", |program| program.validate().is_ok())
}

fn points_strategy() -> impl Strategy<Value = Points> {
    prop_oneof![
        3 => (0i64..=100).prop_map(Points::PercentOfAffordable),
        1 => Just(Points::PercentOfAffordable(100)),
        1 => (-5i64..3_000).prop_map(Points::Raw),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let member = 0..MEMBERS;
    let line =
        (1i64..=5, prop_oneof![0i64..=100, 0i64..=500_000], prop_oneof![3 => Just(0i64), 1 => 0i64..=100]).prop_map(
            |(quantity, unit_price_minor, discount_percent)| LineSpec { quantity, unit_price_minor, discount_percent },
        );
    prop_oneof![
        4 => prop_oneof![0i64..=48, 0i64..=24 * 40, 0i64..=24 * 400].prop_map(|hours| Op::Advance { hours }),
        6 => (
            member.clone(),
            prop::collection::vec(line, 1..=4),
            points_strategy(),
            prop_oneof![3 => Just(0i64), 1 => 0i64..=24 * 20],
        )
            .prop_map(|(member, lines, redeem, backdate_hours)| Op::Purchase { member, lines, redeem, backdate_hours }),
        4 => (any::<usize>(), prop::option::of((any::<usize>(), 1i64..=6)))
            .prop_map(|(purchase, part)| Op::Return { purchase, part }),
        3 => (member.clone(), points_strategy(), prop::option::of(1i64..=2_000_000))
            .prop_map(|(member, points, bill_minor)| Op::Redeem { member, points, bill_minor }),
        2 => (member.clone(), -2_000i64..=2_000).prop_map(|(member, points)| Op::Adjust { member, points }),
        1 => member.clone().prop_map(|member| Op::CatchUp { member }),
        1 => (0..MEMBERS, any::<bool>())
            .prop_map(|(survivor, catch_up_first)| Op::Merge { survivor, catch_up_first }),
        1 => member.prop_map(|member| Op::Flush { member }),
        2 => (any::<usize>(), any::<u64>()).prop_map(|(purchase, seed)| Op::CheckReturnInParts { purchase, seed }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256)
}

proptest! {
    // 256 cases run in well under a second; PROPTEST_CASES=100000 makes a soak run.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_keeps_its_invariants_under_random_commands(
        program in program_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..=STEPS_MAX),
    ) {
        let mut world = World::new(program);
        for op in &ops {
            step(&mut world, op);
        }
    }

    #[test]
    fn allocation_splits_a_total_exactly_and_fairly(
        total in 0i64..=1_000_000,
        weights in prop::collection::vec(0i64..=1_000_000, 1..=20),
    ) {
        let parts = allocate(total, &weights);
        prop_assert_eq!(parts.iter().sum::<i64>(), total);
        let weight_sum: i128 = weights.iter().map(|w| *w as i128).sum();
        for (part, weight) in parts.iter().zip(&weights) {
            if weight_sum == 0 {
                break;
            }
            // Largest remainder: every part is its exact share rounded down or up.
            let floor = (total as i128 * *weight as i128 / weight_sum) as i64;
            prop_assert!(*part == floor || *part == floor + 1, "part {} of exact share floor {}", part, floor);
        }
    }
}
