//! Checkout quotes in the pure core: discount programs and their stacking, coupon effects and
//! refusals, and properties that hold for any basket (the quote adds up; no discount takes more
//! than a line is worth; points never pay more than allowed).

use std::collections::BTreeSet;

use kopilka_core::checkout::coupon::{check_code, normalize_code, CodeFormat, Hold};
use kopilka_core::checkout::{
    quote, CampaignRecord, Coupon, CouponCampaign, CouponInput, CouponRefusal, QuoteBasket, Spend,
};
use kopilka_core::purchase::{Channel, LineInput};
use kopilka_core::rules::MemberContext;
use kopilka_core::{MemberId, Program, Timestamp};
use proptest::prelude::*;
use rand::SeedableRng;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn program(extra: serde_json::Value) -> Program {
    let mut json = serde_json::to_value(Program { time_zone: "UTC".into(), ..Program::example() }).unwrap();
    for (field, value) in extra.as_object().unwrap() {
        json[field] = value.clone();
    }
    Program::from_json(&json.to_string()).unwrap_or_else(|issues| panic!("invalid program: {issues:#?}"))
}

fn line(sku: &str, category: &str, quantity: i64, unit_price_minor: i64) -> LineInput {
    LineInput {
        sku: sku.into(),
        category: Some(category.into()),
        brand: None,
        quantity,
        unit_price_minor,
        discount_minor: 0,
    }
}

fn basket(lines: &[LineInput]) -> QuoteBasket<'_> {
    QuoteBasket {
        lines,
        channel: Channel::Pos,
        store: None,
        at: at("2026-03-11T12:00:00Z"),
        redeem_points: 0,
        available_points: 0,
    }
}

fn campaign(document: serde_json::Value) -> CampaignRecord {
    let campaign: CouponCampaign = serde_json::from_value(document).unwrap();
    campaign.validate().unwrap();
    CampaignRecord { id: 1, campaign, used: 0, active: true }
}

fn coupon(code: &str) -> Coupon {
    Coupon { code: code.into(), campaign_id: 1, member_id: None, uses: 0, holds: Vec::new() }
}

#[test]
fn the_best_discount_wins_added_ones_stack_and_the_program_caps_the_sum() {
    let program = program(serde_json::json!({
        "discount_percent_max": 12,
        "discounts": [
            { "id": "all", "name": "Members", "kind": { "percent": 3 } },
            { "id": "tier", "name": "Tiers", "kind": { "tier": { "gold": 7 } } },
            { "id": "vip-wine", "name": "VIP wine", "condition": { "all": [{ "segment": ["vip"] }, { "category": ["wine"] }] },
              "kind": { "percent": 8 }, "stack": "add" },
        ],
    }));
    let lines = [line("W", "wine", 1, 1_000_00), line("B", "bread", 1, 100_00)];
    let plain = quote(&program, &basket(&lines), &MemberContext::default(), &Spend::default(), &[]);
    assert_eq!((plain.lines[0].discounts.percent, plain.lines[1].discounts.percent), (3, 3));
    assert_eq!(plain.lines[0].discounts.not_applied.len(), 2, "tier and vip-wine say why not");

    let gold_vip =
        MemberContext { tier: Some("gold".into()), segments: vec!["vip".into()], ..MemberContext::default() };
    let q = quote(&program, &basket(&lines), &gold_vip, &Spend::default(), &[]);
    // Wine: the better of 3% and 7%, plus 8% for VIPs = 15%, capped at 12%. Bread: 7%.
    assert_eq!((q.lines[0].discounts.percent, q.lines[1].discounts.percent), (12, 7));
    assert_eq!((q.lines[0].program_discount_minor, q.lines[1].program_discount_minor), (120_00, 7_00));
    let applied: Vec<&str> = q.lines[0].discounts.applied.iter().map(|a| a.discount_id.as_str()).collect();
    assert_eq!(applied, ["vip-wine", "tier"]);
    assert_eq!(q.total_minor, 1_100_00 - 127_00);
}

#[test]
fn a_cumulative_discount_follows_the_spend_over_its_window() {
    let program = program(
        serde_json::json!({ "discounts": [{ "id": "c", "name": "Cumulative", "kind": { "cumulative": {
        "window": "calendar_year", "thresholds": [{ "from_minor": 10_000_00, "percent": 3 }, { "from_minor": 50_000_00, "percent": 5 }] } } }] }),
    );
    let lines = [line("A", "food", 1, 1_000_00)];
    let percent = |calendar_year_minor| {
        let spend = Spend { calendar_year_minor, lifetime_minor: 1_000_000_00, ..Spend::default() };
        quote(&program, &basket(&lines), &MemberContext::default(), &spend, &[]).lines[0].discounts.percent
    };
    assert_eq!([percent(9_999_99), percent(10_000_00), percent(49_999_99), percent(50_000_00)], [0, 3, 3, 5]);
}

#[test]
fn discount_programs_are_validated_with_paths() {
    let mut json = serde_json::to_value(Program::example()).unwrap();
    json["discounts"] = serde_json::json!([
        { "id": "a", "name": "A", "kind": { "percent": 0 } },
        { "id": "a", "name": "B", "kind": { "cumulative": { "window": "lifetime",
            "thresholds": [{ "from_minor": 500, "percent": 5 }, { "from_minor": 100, "percent": 3 }] } } },
    ]);
    json["restricted_goods"] =
        serde_json::json!([{ "id": "r", "name": "R", "goods": "always", "allowed": { "tier": ["gold"] } }]);
    let issues = Program::from_json(&json.to_string()).unwrap_err();
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "discounts[0].kind.percent",
            "discounts[1].id",
            "discounts[1].kind.cumulative.thresholds[1]",
            "restricted_goods[0].goods"
        ]
    );
}

#[test]
fn a_category_catalogue_catches_names_no_line_will_ever_have() {
    let mut json = serde_json::to_value(Program::example()).unwrap();
    json["categories"] = serde_json::json!(["tires", "oil"]);
    json["earn_rules"] = serde_json::json!([
        { "id": "ok", "name": "Oil", "condition": { "category": ["oil"] }, "effect": { "bonus_per_line": 5 } },
        { "id": "typo", "name": "Tyres", "condition": { "any": [{ "sku": ["X"] }, { "category": ["tyres"] }] }, "effect": { "bonus_per_line": 5 } },
    ]);
    json["discounts"] = serde_json::json!([{ "id": "d", "name": "D", "condition": { "not": { "category": ["filters"] } }, "kind": { "percent": 5 } }]);
    let issues = Program::from_json(&json.to_string()).unwrap_err();
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "earn_rules[1].condition.any[1].category: unknown category \"tyres\": add it to the program's categories or fix the name",
            "discounts[0].condition.not.category: unknown category \"filters\": add it to the program's categories or fix the name",
        ]
    );
}

#[test]
fn a_code_is_refused_for_each_reason_in_turn() {
    let now = at("2026-03-11T12:00:00Z");
    let member = MemberId(1);
    let mut record = campaign(serde_json::json!({ "name": "X", "effect": { "percent": 5 }, "uses_per_member": 2,
        "uses_total": 10, "valid_from": "2026-03-01T00:00:00Z", "valid_until": "2026-04-01T00:00:00Z" }));
    let mut code = coupon("ABCD-1");
    let check = |record: &CampaignRecord, code: &Coupon, uses: u32, at: Timestamp| {
        check_code(record, code, member, uses, 7, at)
    };
    assert_eq!(check(&record, &code, 0, now), Ok(()));
    assert_eq!(
        check(&record, &code, 0, at("2026-02-28T23:59:59Z")),
        Err(CouponRefusal::NotYetValid(at("2026-03-01T00:00:00Z")))
    );
    assert_eq!(
        check(&record, &code, 0, at("2026-04-01T00:00:00Z")),
        Err(CouponRefusal::Expired(at("2026-04-01T00:00:00Z")))
    );
    assert_eq!(check(&record, &code, 2, now), Err(CouponRefusal::MemberLimitReached(2)));
    code.holds.push(Hold { checkout_id: 8, until: at("2026-03-11T12:15:00Z") });
    assert_eq!(check(&record, &code, 0, now), Err(CouponRefusal::Held(at("2026-03-11T12:15:00Z"))));
    assert_eq!(check(&record, &code, 0, at("2026-03-11T12:15:00Z")), Ok(()), "a hold lapses at its until");
    code.holds[0].checkout_id = 7;
    assert_eq!(check(&record, &code, 0, now), Ok(()), "a checkout's own hold does not count against it");
    code.consume(7, now);
    assert_eq!((code.uses, code.holds.len()), (1, 0));
    assert_eq!(check(&record, &code, 0, now), Err(CouponRefusal::UsedUp(1)));
    let fresh = coupon("ABCD-2");
    record.used = 10;
    assert_eq!(check(&record, &fresh, 0, now), Err(CouponRefusal::CampaignExhausted(10)));
    record.active = false;
    assert_eq!(check(&record, &fresh, 0, now), Err(CouponRefusal::CampaignStopped));
    let mine = Coupon { member_id: Some(MemberId(2)), ..coupon("ABCD-3") };
    record.active = true;
    record.used = 0;
    assert_eq!(check(&record, &mine, 0, now), Err(CouponRefusal::NotYours));
}

#[test]
fn generated_codes_keep_the_format_and_do_not_repeat() {
    let format = CodeFormat { prefix: "SP-".into(), ..CodeFormat::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let codes = format.generate(100_000, &mut rng);
    let distinct: BTreeSet<&String> = codes.iter().collect();
    assert_eq!(distinct.len(), codes.len());
    for code in &codes {
        assert!(code.starts_with("SP-") && code.len() == 13, "{code}");
        assert!(code[3..].chars().all(|c| format.alphabet.contains(c)), "{code}");
        assert_eq!(normalize_code(&code.to_lowercase()).as_deref(), Ok(code.as_str()));
    }
    // Every character of the alphabet turns up about equally often in every position.
    let first: Vec<char> = codes.iter().map(|c| c.chars().nth(3).unwrap()).collect();
    for symbol in format.alphabet.chars() {
        let seen = first.iter().filter(|c| **c == symbol).count();
        let expected = codes.len() / format.alphabet.len();
        assert!(seen.abs_diff(expected) < expected / 10, "{symbol}: {seen} of {expected}");
    }
}

#[test]
fn two_coupons_of_one_campaign_count_once() {
    let program = program(serde_json::json!({}));
    let record = campaign(serde_json::json!({ "name": "X", "effect": { "amount_minor": 10_00 } }));
    let (a, b) = (coupon("AAAA-1"), coupon("AAAA-2"));
    let inputs = [
        CouponInput { code: "AAAA-1".into(), checked: Ok((&record, &a)) },
        CouponInput { code: "AAAA-2".into(), checked: Ok((&record, &b)) },
    ];
    let lines = [line("A", "food", 1, 100_00)];
    let q = quote(&program, &basket(&lines), &MemberContext::default(), &Spend::default(), &inputs);
    assert!(q.coupons[0].valid);
    assert_eq!(q.coupons[1].refusal.as_ref().unwrap().code, "coupon_same_campaign");
    assert_eq!(q.total_minor, 90_00);
}

fn lines_strategy() -> impl Strategy<Value = Vec<LineInput>> {
    let one =
        (0usize..3, 1i64..5, 1i64..500_000, 0i64..100).prop_map(|(category, quantity, price, discount_percent)| {
            let mut l = line("S", ["food", "wine", "toys"][category], quantity, price);
            l.discount_minor = price * quantity * discount_percent / 100;
            l
        });
    prop::collection::vec(one, 1..12)
}

proptest! {
    /// For any basket, discounts and coupons: each line keeps a non-negative amount, the lines add
    /// up to the total, the total less the points payment is what is left to pay, points pay no
    /// more than the program's share and the balance, and line points add up to the quote's.
    #[test]
    fn a_quote_always_adds_up(
        lines in lines_strategy(),
        member_percent in 1i64..30,
        coupon_kind in 0usize..4,
        amount in 1i64..1_000_000,
        redeem in 0i64..100_000,
        available in 0i64..100_000,
    ) {
        let program = program(serde_json::json!({
            "discounts": [
                { "id": "m", "name": "M", "kind": { "percent": member_percent } },
                { "id": "w", "name": "W", "condition": { "category": ["wine"] }, "kind": { "percent": 15 }, "stack": "add" },
            ],
            "earn_rules": [{ "id": "x2", "name": "x2", "condition": { "category": ["toys"] }, "effect": { "multiplier_percent": 200 } }],
        }));
        let effect = match coupon_kind {
            0 => serde_json::json!({ "percent": 1 + amount % 100 }),
            1 => serde_json::json!({ "amount_minor": amount }),
            2 => serde_json::json!({ "free_item": { "sku": "S" } }),
            _ => serde_json::json!({ "points_multiplier_percent": 150 }),
        };
        let record = campaign(serde_json::json!({ "name": "C", "effect": effect, "condition": { "category": ["food", "toys"] } }));
        let code = coupon("PROP-1");
        let inputs = [CouponInput { code: "PROP-1".into(), checked: Ok((&record, &code)) }];
        let mut b = basket(&lines);
        b.redeem_points = redeem;
        b.available_points = available;
        let q = quote(&program, &b, &MemberContext::default(), &Spend::default(), &inputs);

        for (quoted, input) in q.lines.iter().zip(&lines) {
            prop_assert!(quoted.total_minor >= 0 && quoted.total_minor <= quoted.amount_minor);
            prop_assert_eq!(quoted.amount_minor, input.unit_price_minor * input.quantity - input.discount_minor);
        }
        prop_assert_eq!(q.lines.iter().map(|l| l.total_minor).sum::<i64>(), q.total_minor);
        prop_assert_eq!(q.subtotal_minor - q.discount_minor, q.total_minor);
        prop_assert!(q.redeem_points <= q.max_redeem_points && q.max_redeem_points <= available);
        prop_assert!(q.redeemed_value_minor * 100 <= q.total_minor * program.max_redeem_share_percent);
        prop_assert_eq!(q.pay_minor, q.total_minor - q.redeemed_value_minor);
        prop_assert!(q.pay_minor >= 0);
        prop_assert_eq!(q.lines.iter().map(|l| l.points).sum::<i64>(), q.points_to_earn);
        let coupon_minor: i64 = q.lines.iter().flat_map(|l| &l.coupons).map(|c| c.discount_minor).sum();
        prop_assert_eq!(coupon_minor, q.coupons.iter().map(|c| c.discount_minor).sum::<i64>());
        let purchase_lines = q.purchase_lines(&lines);
        for (recorded, quoted) in purchase_lines.iter().zip(&q.lines) {
            prop_assert_eq!(recorded.unit_price_minor * recorded.quantity - recorded.discount_minor, quoted.total_minor);
        }
    }
}
