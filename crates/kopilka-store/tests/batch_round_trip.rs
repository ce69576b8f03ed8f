//! What `batch::flush` writes, `batch::load` reads back unchanged, on both stores. The loads take
//! members and lots as one JSON value per query (`Backend::json_rows`), so every text a profile
//! may hold (quotes, backslashes, control characters, any script) and every integer a lot may
//! hold (past 2^53, where a JSON reader that goes through floats would round) is drawn here, and
//! the light load's due lots and totals are checked against what the written lots imply.

use std::collections::HashMap;

use jiff::Timestamp;
use kopilka_core::ledger::{Account, Balance, Movement, MovementKind, Posting};
use kopilka_core::member::{Consents, Gender, IdentifierKind, Profile};
use kopilka_core::member_state::MemberState;
use kopilka_core::purchase::{Channel, PurchaseRecord};
use kopilka_core::{
    Currency, DueKeys, Lot, LotId, LotState, MemberId, MemberLedger, MovementId, PointCurrency, ProgramId, PurchaseId,
    TenantId,
};
use kopilka_store::batch::{self, BatchKeys, Writes};
use kopilka_store::store::admin;
use kopilka_store::testing::{test_store, TestDatabase};
use kopilka_store::{both_stores, MemberRow, Store, StoreError};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const MEMBERS: usize = 300;

/// Texts JSON must escape, and texts that only look like JSON or SQL.
const AWKWARD: &[&str] = &[
    "",
    "\"",
    "\\",
    "\\\"",
    "a\"b\\c/d",
    "line\nbreak\ttab\rreturn",
    "\u{1}\u{7}\u{1f}\u{7f}",
    "\u{2028}\u{2029}",
    "Ёлка-Пётр Иванович",
    "Стоянка „Св. Николай“",
    "🎉 emoji 👩‍👩‍👧",
    "{\"json\": [1, 2]}",
    "[1,2,3]",
    "null",
    "'; DROP TABLE members; --",
    "$1 ?1 ?",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(AWKWARD).prop_map(str::to_string),
        // PostgreSQL's TEXT holds no NUL, and neither does any profile the API accepts.
        any::<String>().prop_map(|s| s.replace('\0', "")),
    ]
}

fn optional_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

/// A moment between 1900 and 9999, in whole microseconds as the store keeps them.
fn moment() -> impl Strategy<Value = Timestamp> {
    (-2_208_988_800_000_000i64..253_402_300_799_000_000).prop_map(|micros| Timestamp::from_microsecond(micros).unwrap())
}

fn member(id: i64) -> impl Strategy<Value = MemberRow> {
    let profile = (
        (optional_text(), optional_text(), optional_text(), optional_text(), optional_text()),
        (
            prop::option::of((1900i16..2100, 1i8..=12, 1i8..=28)),
            prop::option::of(prop::sample::select(vec![Gender::Female, Gender::Male, Gender::Other])),
            optional_text(),
            prop::option::of(prop::sample::select(vec!["Europe/Sofia", "Asia/Vladivostok"])),
            prop::option::of(prop::sample::select(vec!["ru", "bg", "en"])),
        ),
    );
    let segments = prop::collection::btree_set(text(), 0..3);
    (profile, moment(), moment(), segments).prop_map(
        move |(
            ((card, phone, email, external_id, name), (birth, gender, city, zone, language)),
            signup,
            created,
            segments,
        )| {
            // The state is JSON kept in a text column, so it is escaped once more inside the load's.
            let state = MemberState { segments, ..MemberState::default() };
            MemberRow {
                id: MemberId(id),
                profile: Profile {
                    card,
                    phone,
                    email,
                    external_id,
                    name,
                    birth_date: birth.map(|(y, m, d)| jiff::civil::date(y, m, d)),
                    gender,
                    city,
                    consents: Consents::default(),
                    time_zone: zone.map(str::to_string),
                    language: language.map(str::to_string),
                },
                state,
                signup_at: signup,
                merged_into: None,
                created_at: created,
                updated_at: created,
            }
        },
    )
}

/// A lot of `member`, in any state (closed and expired lots hold nothing and are never loaded).
/// Amounts go past 2^53, and stay where a dozen of them still sum within an `i64`.
fn lot(member: i64) -> impl Strategy<Value = Lot> {
    let amount = prop_oneof![1i64..1_000, Just(9_007_199_254_740_993i64), Just(i64::MAX / 16)];
    let states =
        prop::sample::select(vec![LotState::Pending, LotState::Available, LotState::Expired, LotState::Closed]);
    let currency = prop::sample::select(vec!["PTS", "MILES", "GAME_1"]);
    (amount, any::<u64>(), states, currency, moment(), moment(), any::<i64>(), prop::option::of(any::<i64>())).prop_map(
        move |(amount, fraction, state, currency, from, expires, movement, purchase)| {
            let open = matches!(state, LotState::Pending | LotState::Available);
            let remaining = if open { 1 + (fraction % amount as u64) as i64 } else { 0 };
            Lot {
                id: LotId(0),
                member_id: MemberId(member),
                currency: PointCurrency::parse(currency).unwrap(),
                amount,
                remaining: remaining.min(amount),
                available_from: from,
                expires_at: expires,
                state,
                movement_id: MovementId(movement),
                purchase_id: purchase.map(PurchaseId),
            }
        },
    )
}

fn draw<S: Strategy>(runner: &mut TestRunner, strategy: S) -> S::Value {
    strategy.new_tree(runner).expect("strategies here never reject").current()
}

/// Open lots by member, sorted by id.
fn open_lots(lots: &[(TenantId, Lot)]) -> HashMap<MemberId, Vec<Lot>> {
    let mut open: HashMap<MemberId, Vec<Lot>> = HashMap::new();
    for (_, lot) in lots.iter().filter(|(_, lot)| matches!(lot.state, LotState::Pending | LotState::Available)) {
        open.entry(lot.member_id).or_default().push(lot.clone());
    }
    open.values_mut().for_each(|lots| lots.sort_by_key(|lot| lot.id));
    open
}

/// `members` members of `tenant` (ids from 1) with their lots: every third has none, the others
/// up to a dozen, numbered from 1.
fn drawn_members(tenant: TenantId, members: usize) -> Writes {
    let mut runner = TestRunner::deterministic();
    let mut writes = Writes::default();
    let mut next_lot = 0;
    for id in 1..=members as i64 {
        writes.members.push((tenant, draw(&mut runner, member(id))));
        let count = if id % 3 == 0 { 0 } else { draw(&mut runner, 1usize..12) };
        for _ in 0..count {
            let mut lot = draw(&mut runner, lot(id));
            next_lot += 1;
            lot.id = LotId(next_lot);
            lot.movement_id = MovementId(next_lot);
            writes.movements.push((tenant, credit_of(&lot)));
            writes.lots.push((tenant, lot));
        }
    }
    // Two members share every unique identifier otherwise: keep the drawn ones apart.
    for (i, (_, row)) in writes.members.iter_mut().enumerate() {
        let identifiers =
            [&mut row.profile.card, &mut row.profile.phone, &mut row.profile.email, &mut row.profile.external_id];
        for value in identifiers.into_iter().flatten() {
            value.push_str(&format!("#{i}"));
        }
    }
    writes
}

/// A store of the running half's kind (kept while the guard lives), the writer's connection to it
/// and a new tenant named `name`.
async fn writer_with_tenant(name: &str) -> (TestDatabase, sqlx::AnyConnection, TenantId) {
    let db = test_store().await;
    let store = Store::connect(&db.database).await.unwrap();
    let mut conn = store.writer_connection().await.unwrap();
    let tenant = admin::create_tenant(&mut conn, name, Timestamp::UNIX_EPOCH).await.unwrap();
    (db, conn, tenant)
}

/// `writes` flushed and committed as a batch of their own.
async fn flush_alone(conn: &mut sqlx::AnyConnection, writes: &Writes) {
    batch::begin(conn).await.unwrap();
    batch::flush(conn, writes).await.unwrap();
    batch::commit(conn).await.unwrap();
}

/// The error of flushing `writes` as a batch of their own, rolled back after it as the writer does.
async fn flush_failing(conn: &mut sqlx::AnyConnection, writes: &Writes, why: &str) -> StoreError {
    batch::begin(conn).await.unwrap();
    let error = batch::flush(conn, writes).await.expect_err(why);
    batch::rollback(conn).await;
    error
}

/// The movement that credited `lot`, as `MemberLedger::credit` makes it: `flush` inserts the lots
/// whose crediting movement is in the batch and updates the others.
fn credit_of(lot: &Lot) -> Movement {
    let postings = vec![
        Posting { account: Account::Issued, amount: -lot.amount, lot_id: None },
        Posting { account: Account::MemberAvailable(lot.member_id), amount: lot.amount, lot_id: Some(lot.id) },
    ];
    Movement {
        id: lot.movement_id,
        kind: MovementKind::Earn,
        member_id: lot.member_id,
        currency: lot.currency.clone(),
        occurred_at: lot.available_from,
        postings,
        purchase_id: lot.purchase_id,
        reason: None,
    }
}

/// The due keys of a member's open lots, as the writer keeps them.
fn keys_of(lots: &[Lot]) -> DueKeys {
    MemberLedger::new(lots.first().map_or(MemberId(0), |lot| lot.member_id), lots.to_vec()).due_keys()
}

/// The remaining points of open lots by member and currency.
fn open_totals(open: &HashMap<MemberId, Vec<Lot>>) -> HashMap<(MemberId, PointCurrency), Balance> {
    let mut totals: HashMap<(MemberId, PointCurrency), Balance> = HashMap::new();
    for lot in open.values().flatten() {
        let total = totals.entry((lot.member_id, lot.currency.clone())).or_default();
        match lot.state {
            LotState::Pending => total.pending += lot.remaining,
            _ => total.available += lot.remaining,
        }
    }
    totals
}

both_stores! {
    async fn what_flush_writes_load_reads_back() {
        let (_db, mut conn, tenant) = writer_with_tenant("round trip").await;

        let mut writes = drawn_members(tenant, MEMBERS);
        let open = open_lots(&writes.lots);
        let totals = open_totals(&open);
        writes.lot_totals = totals.iter().map(|((member, currency), total)| (tenant, *member, currency.clone(), *total)).collect();
        writes.due_keys = open.iter().map(|(member, lots)| (tenant, *member, keys_of(lots))).collect();
        flush_alone(&mut conn, &writes).await;

        let everyone: Vec<_> = writes.members.iter().map(|(t, row)| (*t, row.id)).collect();
        let keys = BatchKeys { members: everyone.clone(), ..BatchKeys::default() };
        let loaded = batch::load(&mut conn, &keys).await.unwrap();
        assert_eq!(loaded.members.len(), MEMBERS);
        for (t, row) in &writes.members {
            assert_eq!(loaded.members.get(&(*t, row.id)), Some(row), "member {} read back", row.id);
            let mut lots = loaded.lots.get(&(*t, row.id)).cloned().unwrap_or_default();
            lots.sort_by_key(|lot| lot.id);
            assert_eq!(lots, open.get(&row.id).cloned().unwrap_or_default(), "open lots of member {}", row.id);
            assert_eq!(loaded.due_keys[&(*t, row.id)], keys_of(&lots), "due keys of member {}", row.id);
        }

        // Light: only the open lots due by `at`, and the kept totals less theirs.
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let keys = BatchKeys { light_members: everyone, light_at: Some(at), ..BatchKeys::default() };
        let loaded = batch::load(&mut conn, &keys).await.unwrap();
        assert_eq!(loaded.members.len(), MEMBERS);
        for (t, row) in &writes.members {
            let mut due: Vec<Lot> = loaded.lots.get(&(*t, row.id)).cloned().unwrap_or_default();
            due.sort_by_key(|lot| lot.id);
            let expected: Vec<Lot> = open
                .get(&row.id)
                .into_iter()
                .flatten()
                .filter(|lot| lot.state_at(at) != lot.state)
                .cloned()
                .collect();
            assert_eq!(due, expected, "due lots of member {}", row.id);
            let (kept, _, unloaded_keys) = loaded.unloaded.get(&(*t, row.id)).expect("a light member has its totals");
            let rest: Vec<Lot> =
                open.get(&row.id).into_iter().flatten().filter(|lot| lot.state_at(at) == lot.state).cloned().collect();
            assert_eq!(*unloaded_keys, keys_of(&rest), "due keys of the lots member {} left unloaded", row.id);
            for (_, _, currency, total) in writes.lot_totals.iter().filter(|(_, member, _, _)| *member == row.id) {
                let held = total.pending != 0 || total.available != 0;
                assert_eq!(
                    kept.iter().any(|(c, _)| c == currency),
                    held,
                    "member {} keeps its {currency} totals exactly when it holds {currency} points",
                    row.id
                );
            }
            for (currency, balance) in kept {
                let written = writes
                    .lot_totals
                    .iter()
                    .find(|(_, member, c, _)| *member == row.id && c == currency)
                    .map(|(_, _, _, total)| *total)
                    .unwrap_or_default();
                let (mut pending, mut available) = (written.pending, written.available);
                for lot in expected.iter().filter(|lot| lot.currency == *currency) {
                    match lot.state {
                        LotState::Pending => pending -= lot.remaining,
                        _ => available -= lot.remaining,
                    }
                }
                assert_eq!(*balance, Balance { available, pending }, "unloaded totals of member {} in {currency}", row.id);
            }
        }
    }
}

both_stores! {
    async fn totals_filled_from_lots_are_what_the_writer_keeps() {
        let (_db, mut conn, tenant) = writer_with_tenant("filled").await;

        // Members and lots written around the writer: no totals kept.
        let writes = drawn_members(tenant, 30);
        batch::begin(&mut conn).await.unwrap();
        batch::flush(&mut conn, &writes).await.unwrap();
        kopilka_store::lot_totals::fill_from_lots(&mut conn).await.unwrap();
        batch::commit(&mut conn).await.unwrap();

        // Loaded light as of a moment before every lot's next change: the kept totals are the lots'.
        let everyone: Vec<_> = writes.members.iter().map(|(t, row)| (*t, row.id)).collect();
        let keys = BatchKeys { light_members: everyone, light_at: Some(Timestamp::MIN), ..BatchKeys::default() };
        let loaded = batch::load(&mut conn, &keys).await.unwrap();
        let expected = open_totals(&open_lots(&writes.lots));
        for (t, row) in &writes.members {
            let (kept, _, _) = loaded.unloaded.get(&(*t, row.id)).expect("a light member has its totals");
            let kept: HashMap<PointCurrency, Balance> = kept.iter().cloned().collect();
            let lots = open_lots(&writes.lots).remove(&row.id).unwrap_or_default();
            assert_eq!(loaded.due_keys[&(*t, row.id)], keys_of(&lots), "filled due keys of member {}", row.id);
            let of_member: HashMap<PointCurrency, Balance> = expected
                .iter()
                .filter(|((member, _), _)| *member == row.id)
                .map(|((_, currency), total)| (currency.clone(), *total))
                .collect();
            assert_eq!(kept, of_member, "kept totals of member {}", row.id);
        }
    }
}

both_stores! {
    async fn lots_a_later_batch_changes_are_updated_and_an_unknown_one_fails_the_batch() {
        let (_db, mut conn, tenant) = writer_with_tenant("changed lots").await;
        let written = drawn_members(tenant, 60);
        flush_alone(&mut conn, &written).await;

        // A later batch changes lots it did not credit: some expire, some are partly spent, and
        // every lot of member 1 moves to member 2 (a merge).
        let mut changed = Writes::default();
        for (i, (t, lot)) in written.lots.iter().filter(|(_, lot)| lot.remaining > 0).enumerate() {
            let mut lot = lot.clone();
            match i % 3 {
                0 => (lot.state, lot.remaining) = (LotState::Expired, 0),
                1 => lot.remaining -= lot.remaining / 2,
                _ => {}
            }
            if lot.member_id == MemberId(1) {
                lot.member_id = MemberId(2);
            }
            changed.lots.push((*t, lot));
        }
        assert!(changed.lots.iter().any(|(_, lot)| lot.state == LotState::Expired));
        flush_alone(&mut conn, &changed).await;
        let everyone: Vec<_> = written.members.iter().map(|(t, row)| (*t, row.id)).collect();
        let loaded = batch::load(&mut conn, &BatchKeys { members: everyone.clone(), ..BatchKeys::default() }).await.unwrap();
        let expected = open_lots(&changed.lots);
        assert!(!expected.contains_key(&MemberId(1)), "member 1's lots moved");
        for (t, member) in &everyone {
            let mut lots = loaded.lots.get(&(*t, *member)).cloned().unwrap_or_default();
            lots.sort_by_key(|lot| lot.id);
            assert_eq!(lots, expected.get(member).cloned().unwrap_or_default(), "open lots of member {member}");
        }

        // A lot neither credited by the batch nor in the store: the update finds one lot fewer
        // than it names, and the batch fails instead of losing it.
        let mut unknown = changed.lots[0].clone();
        unknown.1.id = LotId(1_000_000);
        let count = "SELECT COUNT(*) FROM lots";
        let before: i64 = sqlx::query_scalar(count).fetch_one(&mut conn).await.unwrap();
        let writes = Writes { lots: vec![changed.lots[1].clone(), unknown], ..Writes::default() };
        let error = flush_failing(&mut conn, &writes, "a lot that is not there cannot be updated").await;
        assert!(matches!(error, StoreError::Corrupt { table: "lots", .. }), "{error}");
        assert_eq!(sqlx::query_scalar::<_, i64>(count).fetch_one(&mut conn).await.unwrap(), before);
    }
}

both_stores! {
    async fn a_statement_failing_part_way_leaves_nothing_once_the_batch_is_rolled_back() {
        // On SQLite the writer's statements say `OR FAIL`, which keeps the rows a failing statement
        // wrote before the failure (and so needs no statement journal): only the rollback of the
        // whole batch, which the writer always does after an error, takes them back.
        let (_db, mut conn, tenant) = writer_with_tenant("half written").await;
        let written = drawn_members(tenant, 30);
        flush_alone(&mut conn, &written).await;
        let count = "SELECT COUNT(*) FROM lots";
        let before: i64 = sqlx::query_scalar(count).fetch_one(&mut conn).await.unwrap();

        // New lots, credited by movements of this batch: the first ones fit, the last has the id
        // of a lot already stored.
        let mut writes = Writes::default();
        let next = written.lots.iter().map(|(_, lot)| lot.id.0).max().unwrap();
        for n in 1..=5 {
            let mut lot = written.lots[0].1.clone();
            (lot.id, lot.movement_id) = (LotId(next + n), MovementId(next + n));
            writes.movements.push((tenant, credit_of(&lot)));
            writes.lots.push((tenant, lot));
        }
        let mut clash = written.lots[1].1.clone();
        clash.movement_id = MovementId(next + 6);
        writes.movements.push((tenant, credit_of(&clash)));
        writes.lots.push((tenant, clash));

        flush_failing(&mut conn, &writes, "a lot id stored already breaks the primary key").await;
        assert_eq!(sqlx::query_scalar::<_, i64>(count).fetch_one(&mut conn).await.unwrap(), before);
        let movements: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM movements WHERE id > {next}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(movements, 0, "the batch's movements went with it");

        // The same lots without the clash are written whole.
        writes.lots.pop();
        writes.movements.pop();
        flush_alone(&mut conn, &writes).await;
        assert_eq!(sqlx::query_scalar::<_, i64>(count).fetch_one(&mut conn).await.unwrap(), before + 5);
    }
}

/// A purchase of `member` as the engine records it, with one line.
fn purchase(id: i64, member: i64) -> PurchaseRecord {
    let line = serde_json::json!({"sku": "SKU-1", "category": "пиво \"светлое\"", "quantity": 2,
        "unit_price_minor": 12_345, "discount_minor": 0, "total_minor": 24_690, "points_earned": 24,
        "points_redeemed": 0, "quantity_returned": 0});
    PurchaseRecord {
        id: PurchaseId(id),
        member_id: MemberId(member),
        external_id: format!("R-{id}"),
        occurred_at: Timestamp::from_second(1_800_000_000 + id).unwrap(),
        channel: Channel::Pos,
        store: Some("store-1".into()),
        currency: Currency::parse("RUB").unwrap(),
        total_minor: 24_690,
        points_redeemed: 0,
        redeemed_value_minor: 0,
        points_earned: 24,
        earn_lot_id: None,
        lines: vec![serde_json::from_value(line).unwrap()],
        returned_minor: 0,
        points_reversed: 0,
        points_restored: 0,
        points_unrecovered: 0,
        points_lapsed: 0,
        program_version: 1,
        returns: Vec::new(),
    }
}

both_stores! {
    async fn changed_purchases_are_rewritten_in_place_and_an_unknown_one_fails_the_batch() {
        let (_db, mut conn, tenant) = writer_with_tenant("changed purchases").await;
        let mut writes = drawn_members(tenant, 10);
        writes.purchases = (1..=7).map(|id| (tenant, ProgramId(1), purchase(id, 1 + id % 3))).collect();
        flush_alone(&mut conn, &writes).await;

        // A later batch returns part of three purchases and moves one to another member (a merge),
        // and records two new ones: the new are inserted, the others rewritten.
        let mut changed = Writes::default();
        for id in [2, 4, 6] {
            let mut record = purchase(id, if id == 6 { 9 } else { 1 + id % 3 });
            record.returned_minor = 12_345;
            record.points_reversed = 12;
            changed.changed_purchases.push((tenant, ProgramId(1), record));
        }
        changed.purchases = (8..=9).map(|id| (tenant, ProgramId(1), purchase(id, 4))).collect();
        flush_alone(&mut conn, &changed).await;

        let keys = BatchKeys { purchase_ids: (1..=10).map(|id| (tenant, PurchaseId(id))).collect(), ..BatchKeys::default() };
        let loaded = batch::load(&mut conn, &keys).await.unwrap();
        let mut found: Vec<_> = loaded.purchases.into_iter().map(|(_, _, record)| record).collect();
        found.sort_by_key(|record| record.id);
        let mut expected: Vec<_> = (1..=9).map(|id| purchase(id, 1 + id % 3)).collect();
        for (_, _, record) in changed.changed_purchases.iter().chain(&changed.purchases) {
            expected[record.id.0 as usize - 1] = record.clone();
        }
        assert_eq!(found, expected);
        let moved: i64 = sqlx::query_scalar("SELECT member_id FROM purchases WHERE id = 6").fetch_one(&mut conn).await.unwrap();
        assert_eq!(moved, 9, "the member column follows the record");

        // A purchase neither recorded by the batch nor stored: the update finds one row fewer than
        // it names, and the batch fails instead of losing it.
        let unknown = (tenant, ProgramId(1), purchase(1_000, 1));
        let writes = Writes { changed_purchases: vec![changed.changed_purchases[0].clone(), unknown], ..Writes::default() };
        let error = flush_failing(&mut conn, &writes, "a purchase that is not there cannot be rewritten").await;
        assert!(matches!(error, StoreError::Corrupt { table: "purchases", .. }), "{error}");
    }
}

both_stores! {
    async fn members_by_finds_in_bulk_what_member_by_finds_one_at_a_time() {
        let (db, mut conn, tenant) = writer_with_tenant("lookups").await;
        let mut writes = drawn_members(tenant, 80);
        // Two members merged into a third: a bulk lookup names the survivor, as a single one does.
        for (_, row) in writes.members.iter_mut().filter(|(_, row)| [5, 6].contains(&row.id.0)) {
            row.merged_into = Some(MemberId(7));
        }
        flush_alone(&mut conn, &writes).await;
        let store = Store::connect(&db.database).await.unwrap();
        let other = admin::create_tenant(&mut conn, "other", Timestamp::UNIX_EPOCH).await.unwrap();

        let mut merged_lookups = 0;
        for kind in [IdentifierKind::Card, IdentifierKind::Phone, IdentifierKind::Email, IdentifierKind::ExternalId] {
            let mut values: Vec<String> = writes
                .members
                .iter()
                .filter_map(|(_, row)| match kind {
                    IdentifierKind::Card => row.profile.card.clone(),
                    IdentifierKind::Phone => row.profile.phone.clone(),
                    IdentifierKind::Email => row.profile.email.clone(),
                    IdentifierKind::ExternalId => row.profile.external_id.clone(),
                })
                .collect();
            assert!(values.len() > 10, "the drawn members hold {kind:?} values");
            values.push("nobody holds this".to_string());
            values.push(values[0].clone());

            let mut expected = Vec::new();
            for value in &values {
                if let Some(row) = store.member_by(tenant, kind, value).await.unwrap() {
                    expected.push((value.clone(), row.id, row.merged_into));
                }
            }
            expected.sort();
            let mut found = store.members_by(tenant, kind, &values).await.unwrap();
            found.sort();
            assert_eq!(found, expected, "{kind:?}");
            for (_, id, merged_into) in &found {
                let merged = [5, 6].contains(&id.0);
                assert_eq!(*merged_into, merged.then_some(MemberId(7)), "member {id} by {kind:?}");
                merged_lookups += usize::from(merged);
            }
            assert!(store.members_by(other, kind, &values).await.unwrap().is_empty(), "another tenant's members");
            // Behind 40,000 values no one holds, the same ones are found in a later chunk.
            let mut padded: Vec<String> = (0..40_000).map(|i| format!("nobody {i}")).collect();
            padded.extend(values.iter().cloned());
            let mut found_later = store.members_by(tenant, kind, &padded).await.unwrap();
            found_later.sort();
            assert_eq!(found_later, found, "{kind:?} past the first chunk");
        }
        assert!(merged_lookups > 0, "the merged members were looked up by some identifier");
    }
}
