//! Earn rules as tables: rules, a setup and a basket in, the explanation out, as inline snapshots
//! (`UPDATE_EXPECT=1 cargo test` rewrites them).
//!
//! The program is the example one in UTC: 1 point per 100.00 RUB as the base rate. Rules are JSON
//! (a rule without a name is named after its id). The setup is `key=value` words:
//!
//! ```text
//! at=2026-03-11T12:00   when the purchase happened (default: Wednesday 2026-03-11 12:00 UTC)
//! zone=Europe/Moscow    the program's time zone
//! channel=web store=s1  where
//! redeem=100.00         the part of the bill paid with points
//! tier=gold segments=a,b campaigns=c born=1990-03-16 first
//! today:rule=40 period:rule=90   points the rule already gave this member
//! ```
//!
//! A basket is `sku[/category[/brand]] [quantity x]price, ...`.

use std::collections::BTreeMap;
use std::fmt::Write;

use expect_test::{expect, Expect};
use kopilka_core::purchase::{decide_adjust, decide_purchase, decide_return, Channel, LineInput, PurchaseCommand};
use kopilka_core::rules::{evaluate, Basket, MemberContext};
use kopilka_core::{IdAllocator, MemberLedger, Program, Timestamp};
use proptest::prelude::*;

fn program(rules: &str) -> Program {
    let mut rules: serde_json::Value = serde_json::from_str(rules).expect("rules are JSON");
    for rule in rules.as_array_mut().expect("rules are a list") {
        if rule.get("name").is_none() {
            rule["name"] = rule["id"].clone();
        }
    }
    let mut json = serde_json::to_value(Program { time_zone: "UTC".into(), ..Program::example() }).unwrap();
    json["earn_rules"] = rules;
    Program::from_json(&json.to_string()).unwrap_or_else(|issues| panic!("invalid program: {issues:#?}"))
}

struct Setup {
    at: Timestamp,
    channel: Channel,
    store: Option<String>,
    redeemed_value_minor: i64,
    member: MemberContext,
}

fn setup(program: &mut Program, text: &str) -> Setup {
    let mut setup = Setup {
        at: timestamp("2026-03-11T12:00"),
        channel: Channel::Pos,
        store: None,
        redeemed_value_minor: 0,
        member: MemberContext::default(),
    };
    for word in text.split_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match key {
            "at" => setup.at = timestamp(value),
            "zone" => program.time_zone = value.into(),
            "channel" => setup.channel = Channel::parse(value).expect("a channel"),
            "store" => setup.store = Some(value.into()),
            "redeem" => setup.redeemed_value_minor = minor(value),
            "tier" => setup.member.tier = Some(value.into()),
            "segments" => setup.member.segments = value.split(',').map(String::from).collect(),
            "campaigns" => setup.member.campaigns = value.split(',').map(String::from).collect(),
            "born" => setup.member.birth_date = Some(value.parse().unwrap()),
            "first" => setup.member.is_first_purchase = true,
            _ => match key.split_once(':') {
                Some(("today", rule)) => {
                    setup.member.earned_by_rule_today.insert(rule.into(), value.parse().unwrap());
                }
                Some(("period", rule)) => {
                    setup.member.earned_by_rule_period.insert(rule.into(), value.parse().unwrap());
                }
                _ => panic!("unknown setup word {word:?}"),
            },
        }
    }
    setup
}

fn basket(text: &str) -> Vec<LineInput> {
    text.split(',')
        .map(|item| {
            let words: Vec<&str> = item.split_whitespace().collect();
            let [name, amount] = words.as_slice() else { panic!("bad line {item:?}") };
            let mut parts = name.split('/');
            let sku = parts.next().unwrap().to_string();
            let category = parts.next().filter(|c| !c.is_empty()).map(String::from);
            let brand = parts.next().map(String::from);
            let (quantity, price) = amount.split_once('x').unwrap_or(("1", amount));
            LineInput {
                sku,
                category,
                brand,
                quantity: quantity.parse().unwrap(),
                unit_price_minor: minor(price),
                discount_minor: 0,
            }
        })
        .collect()
}

fn check(rules: &str, setup_text: &str, basket_text: &str, expect: Expect) {
    let mut program = program(rules);
    let setup = setup(&mut program, setup_text);
    let lines = basket(basket_text);
    let basket = Basket {
        lines: &lines,
        channel: setup.channel,
        store: setup.store.as_deref(),
        redeemed_value_minor: setup.redeemed_value_minor,
    };
    let evaluation = evaluate(&program, &basket, &setup.member, setup.at);
    assert_eq!(evaluation.line_points.iter().sum::<i64>(), evaluation.total);
    let mut out = format!("total {}\n", evaluation.total);
    for ((line, explanation), points) in lines.iter().zip(&evaluation.explanation).zip(&evaluation.line_points) {
        let mut name = line.sku.clone();
        for part in [&line.category, &line.brand].into_iter().flatten() {
            write!(name, "/{part}").unwrap();
        }
        write!(
            out,
            "{} {name} {}x{}: {points} = base {}",
            explanation.line,
            line.quantity,
            money(line.unit_price_minor),
            explanation.base_points
        )
        .unwrap();
        if let Some(rule) = &explanation.base_replaced_by {
            write!(out, " (replaced by {rule})").unwrap();
        }
        for rule in &explanation.rules_applied {
            write!(out, " + {} {}", rule.rule_id, rule.points).unwrap();
            if let Some(capped) = &rule.capped {
                write!(out, " (capped {:?} from {})", capped.by, capped.uncapped_points).unwrap();
            }
        }
        writeln!(out).unwrap();
        for rule in &explanation.rules_not_applied {
            writeln!(out, "    - {}: {}", rule.rule_id, rule.reason).unwrap();
        }
    }
    expect.assert_eq(&out);
}

fn timestamp(text: &str) -> Timestamp {
    let text = if text.contains('T') { format!("{text}:00Z") } else { format!("{text}T00:00:00Z") };
    text.parse().unwrap_or_else(|e| panic!("bad time {text}: {e}"))
}

fn minor(text: &str) -> i64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "00"));
    whole.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
}

fn money(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

#[test]
fn without_rules_the_base_rate_is_shared_across_lines_by_largest_remainder() {
    check(
        "[]",
        "",
        "milk/dairy 2x150.00, bread 1x50.00, tyre/auto 1x1000.00",
        expect![[r#"
            total 13
            0 milk/dairy 2x150.00: 3 = base 3
            1 bread 1x50.00: 0 = base 0
            2 tyre/auto 1x1000.00: 10 = base 10
        "#]],
    );
}

#[test]
fn a_rate_on_a_category_adds_to_the_base_on_matching_lines_only() {
    check(
        r#"[{"id": "dairy10", "condition": {"category": ["dairy"]}, "effect": {"rate": {"points": 10, "per_minor": 10000}}}]"#,
        "",
        "milk/dairy 2x150.00, bread 1x50.00",
        expect![[r#"
            total 33
            0 milk/dairy 2x150.00: 33 = base 3 + dairy10 30
            1 bread 1x50.00: 0 = base 0
                - dairy10: category (none) is not one of ["dairy"]
        "#]],
    );
}

#[test]
fn sku_and_brand_select_lines_and_a_line_bonus_is_given_per_matching_line() {
    check(
        r#"[
            {"id": "sku", "condition": {"sku": ["milk"]}, "effect": {"bonus_per_line": 5}},
            {"id": "michelin", "condition": {"brand": ["michelin"]}, "effect": {"bonus_per_line": 100}}
        ]"#,
        "",
        "milk/dairy 150.00, tyre/auto/michelin 4x5000.00, tyre/auto/nokian 4x4000.00",
        expect![[r#"
            total 466
            0 milk/dairy 1x150.00: 6 = base 1 + sku 5
                - michelin: brand (none) is not one of ["michelin"]
            1 tyre/auto/michelin 4x5000.00: 300 = base 200 + michelin 100
                - sku: sku "tyre" is not one of ["milk"]
            2 tyre/auto/nokian 4x4000.00: 160 = base 160
                - sku: sku "tyre" is not one of ["milk"]
                - michelin: brand "nokian" is not one of ["michelin"]
        "#]],
    );
}

#[test]
fn minimum_line_sum_and_minimum_quantity_look_at_each_line() {
    check(
        r#"[
            {"id": "big-line", "condition": {"min_line_sum_minor": 100000}, "effect": {"bonus_per_line": 50}},
            {"id": "three-or-more", "condition": {"min_quantity": 3}, "effect": {"bonus_per_line": 7}}
        ]"#,
        "",
        "tv 1x1000.00, socks 3x100.00, pen 2x10.00",
        expect![[r#"
            total 70
            0 tv 1x1000.00: 60 = base 10 + big-line 50
                - three-or-more: quantity 1 is below 3
            1 socks 3x100.00: 10 = base 3 + three-or-more 7
                - big-line: line sum 30000 is below 100000
            2 pen 2x10.00: 0 = base 0
                - big-line: line sum 2000 is below 100000
                - three-or-more: quantity 2 is below 3
        "#]],
    );
}

#[test]
fn channel_and_store_gate_the_whole_rule() {
    let rules = r#"[
        {"id": "app", "condition": {"channel": ["app", "web"]}, "effect": {"bonus_per_basket": 20}},
        {"id": "flagship", "condition": {"store": ["s1"]}, "effect": {"multiplier_percent": 200}}
    ]"#;
    check(
        rules,
        "channel=app store=s1",
        "shoes 3000.00, socks 1000.00",
        expect![[r#"
            total 100
            0 shoes 1x3000.00: 75 = base 30 + app 15 + flagship 30
            1 socks 1x1000.00: 25 = base 10 + app 5 + flagship 10
        "#]],
    );
    check(
        rules,
        "channel=pos store=s2",
        "shoes 3000.00",
        expect![[r#"
            total 30
            0 shoes 1x3000.00: 30 = base 30
                - app: channel pos is not one of [app, web]
                - flagship: store "s2" is not one of ["s1"]
        "#]],
    );
}

#[test]
fn a_basket_bonus_needs_the_minimum_sum_and_is_shared_across_the_matching_lines() {
    let rules =
        r#"[{"id": "spend1500", "condition": {"min_basket_sum_minor": 150000}, "effect": {"bonus_per_basket": 100}}]"#;
    check(
        rules,
        "",
        "a 1000.00, b 250.00, c 250.00",
        expect![[r#"
            total 115
            0 a 1x1000.00: 77 = base 10 + spend1500 67
            1 b 1x250.00: 20 = base 3 + spend1500 17
            2 c 1x250.00: 18 = base 2 + spend1500 16
        "#]],
    );
    check(
        rules,
        "",
        "a 1000.00, b 499.99",
        expect![[r#"
            total 14
            0 a 1x1000.00: 9 = base 9
                - spend1500: basket sum 149999 is below 150000
            1 b 1x499.99: 5 = base 5
                - spend1500: basket sum 149999 is below 150000
        "#]],
    );
}

#[test]
fn day_of_week_and_hour_window_are_read_in_the_programs_time_zone() {
    let rules = r#"[
        {"id": "weekend", "condition": {"day_of_week": ["saturday", "sunday"]}, "effect": {"bonus_per_basket": 10}},
        {"id": "night", "condition": {"hour_window": {"from_hour": 22, "to_hour": 6}}, "effect": {"bonus_per_basket": 3}}
    ]"#;
    // Friday 22:30 UTC is Saturday 01:30 in Moscow: both rules apply.
    check(
        rules,
        "at=2026-03-13T22:30 zone=Europe/Moscow",
        "x 100.00",
        expect![[r#"
            total 14
            0 x 1x100.00: 14 = base 1 + weekend 10 + night 3
        "#]],
    );
    // The same instant in a program on UTC: Friday, and 22:30 is still inside the window.
    check(
        rules,
        "at=2026-03-13T22:30",
        "x 100.00",
        expect![[r#"
            total 4
            0 x 1x100.00: 4 = base 1 + night 3
                - weekend: Friday is not one of [Saturday, Sunday]
        "#]],
    );
    check(
        rules,
        "at=2026-03-14T06:00",
        "x 100.00",
        expect![[r#"
            total 11
            0 x 1x100.00: 11 = base 1 + weekend 10
                - night: hour 6 is outside 22:00 to 6:00
        "#]],
    );
}

#[test]
fn a_date_range_includes_both_ends_and_an_active_window_excludes_its_end() {
    let rules = r#"[
        {"id": "march", "condition": {"date_range": {"from": "2026-03-01", "to": "2026-03-31"}}, "effect": {"bonus_per_basket": 5}},
        {"id": "launch", "effect": {"bonus_per_basket": 1}, "active": {"from": "2026-03-01T00:00:00Z", "until": "2026-04-01T00:00:00Z"}}
    ]"#;
    check(
        rules,
        "at=2026-03-31T23:59",
        "x 100.00",
        expect![[r#"
            total 7
            0 x 1x100.00: 7 = base 1 + march 5 + launch 1
        "#]],
    );
    check(
        rules,
        "at=2026-04-01T00:00",
        "x 100.00",
        expect![[r#"
            total 1
            0 x 1x100.00: 1 = base 1
                - march: date 2026-04-01 is outside 2026-03-01 to 2026-03-31
                - launch: not active at 2026-04-01T00:00:00Z (active from 2026-03-01T00:00:00Z until 2026-04-01T00:00:00Z)
        "#]],
    );
}

#[test]
fn tier_segment_campaign_and_first_purchase_come_from_the_member_context() {
    let rules = r#"[
        {"id": "gold", "condition": {"tier": ["gold", "platinum"]}, "effect": {"multiplier_percent": 150}},
        {"id": "lapsed", "condition": {"segment": ["lapsed"]}, "effect": {"multiplier_percent": 500}},
        {"id": "spring", "condition": {"campaign": ["spring-2026"]}, "effect": {"bonus_per_basket": 25}},
        {"id": "welcome", "condition": "first_purchase", "effect": {"bonus_per_basket": 100}}
    ]"#;
    check(
        rules,
        "tier=gold segments=lapsed,big-spender campaigns=spring-2026 first",
        "x 1000.00",
        expect![[r#"
            total 180
            0 x 1x1000.00: 180 = base 10 + gold 5 + lapsed 40 + spring 25 + welcome 100
        "#]],
    );
    check(
        rules,
        "tier=silver segments=big-spender",
        "x 1000.00",
        expect![[r#"
            total 10
            0 x 1x1000.00: 10 = base 10
                - gold: tier "silver" is not one of ["gold", "platinum"]
                - lapsed: member is in none of the segments ["lapsed"]
                - spring: member is in none of the campaigns ["spring-2026"]
                - welcome: not the member's first purchase
        "#]],
    );
}

#[test]
fn a_birthday_window_counts_days_around_the_birthday_and_29_february_is_28th_in_other_years() {
    let rules = r#"[{"id": "birthday", "condition": {"birthday": {"days_before": 3, "days_after": 3}}, "effect": {"multiplier_percent": 300}}]"#;
    check(
        rules,
        "born=1990-03-14",
        "x 1000.00",
        expect![[r#"
            total 30
            0 x 1x1000.00: 30 = base 10 + birthday 20
        "#]],
    );
    check(
        rules,
        "at=2026-03-04T12:00 born=2000-02-29",
        "x 1000.00",
        expect![[r#"
            total 10
            0 x 1x1000.00: 10 = base 10
                - birthday: date 2026-03-04 is not within 3 days before to 3 days after the birthday 02-29
        "#]],
    );
    check(
        rules,
        "at=2026-03-03T12:00 born=2000-02-29",
        "x 1000.00",
        expect![[r#"
            total 30
            0 x 1x1000.00: 30 = base 10 + birthday 20
        "#]],
    );
    check(
        rules,
        "",
        "x 1000.00",
        expect![[r#"
            total 10
            0 x 1x1000.00: 10 = base 10
                - birthday: the member's birth date is not known
        "#]],
    );
}

#[test]
fn all_any_and_not_combine_line_and_basket_conditions() {
    check(
        r#"[{"id": "combo", "effect": {"bonus_per_line": 10}, "condition": {"all": [
            {"any": [{"category": ["dairy"]}, {"brand": ["acme"]}]},
            {"not": {"sku": ["cheap-milk"]}},
            {"channel": ["pos"]}
        ]}}]"#,
        "",
        "milk/dairy 100.00, cheap-milk/dairy 100.00, hammer/tools/acme 100.00, saw/tools 100.00",
        expect![[r#"
            total 24
            0 milk/dairy 1x100.00: 11 = base 1 + combo 10
            1 cheap-milk/dairy 1x100.00: 1 = base 1
                - combo: sku in ["cheap-milk"] holds, and the rule excludes it
            2 hammer/tools/acme 1x100.00: 11 = base 1 + combo 10
            3 saw/tools 1x100.00: 1 = base 1
                - combo: none of these holds: category "tools" is not one of ["dairy"]; brand (none) is not one of ["acme"]
        "#]],
    );
}

#[test]
fn a_multiplier_stacks_as_the_extra_over_the_base_and_an_exclusive_one_replaces_the_base() {
    check(
        r#"[
            {"id": "double", "condition": {"category": ["dairy"]}, "effect": {"multiplier_percent": 200}},
            {"id": "no-tobacco", "condition": {"category": ["tobacco"]}, "effect": {"multiplier_percent": 0}, "exclusive": true}
        ]"#,
        "",
        "milk/dairy 1000.00, cigarettes/tobacco 1000.00",
        expect![[r#"
            total 20
            0 milk/dairy 1x1000.00: 20 = base 10 + double 10
                - no-tobacco: category "dairy" is not one of ["tobacco"]
            1 cigarettes/tobacco 1x1000.00: 0 = base 0 (replaced by no-tobacco) + no-tobacco 0
                - double: category "tobacco" is not one of ["dairy"]
        "#]],
    );
}

#[test]
fn an_exclusive_rule_stops_lower_rules_on_its_lines_but_keeps_higher_ones() {
    check(
        r#"[
            {"id": "everything", "effect": {"bonus_per_line": 1}, "priority": 0},
            {"id": "tyres5x", "condition": {"category": ["tyres"]}, "effect": {"multiplier_percent": 500}, "exclusive": true, "priority": 10},
            {"id": "vip", "condition": {"tier": ["vip"]}, "effect": {"bonus_per_line": 2}, "priority": 20},
            {"id": "tyres-also", "condition": {"category": ["tyres"]}, "effect": {"bonus_per_line": 30}, "priority": 10}
        ]"#,
        "tier=vip",
        "tyre/tyres 4x1000.00, oil/fluids 1000.00",
        expect![[r#"
            total 215
            0 tyre/tyres 4x1000.00: 202 = base 0 (replaced by tyres5x) + vip 2 + tyres5x 200
                - tyres-also: stopped by exclusive rule "tyres5x"
                - everything: stopped by exclusive rule "tyres5x"
            1 oil/fluids 1x1000.00: 13 = base 10 + vip 2 + everything 1
                - tyres5x: category "fluids" is not one of ["tyres"]
                - tyres-also: category "fluids" is not one of ["tyres"]
        "#]],
    );
}

#[test]
fn a_cap_per_purchase_shares_what_is_left_across_lines_and_says_so() {
    check(
        r#"[{"id": "dairy10", "condition": {"category": ["dairy"]}, "effect": {"rate": {"points": 10, "per_minor": 10000}}, "caps": {"per_purchase": 100}}]"#,
        "",
        "milk/dairy 1000.00, cheese/dairy 500.00, bread 100.00",
        expect![[r#"
            total 116
            0 milk/dairy 1x1000.00: 77 = base 10 + dairy10 67 (capped PerPurchase from 100)
            1 cheese/dairy 1x500.00: 38 = base 5 + dairy10 33 (capped PerPurchase from 50)
            2 bread 1x100.00: 1 = base 1
                - dairy10: category (none) is not one of ["dairy"]
        "#]],
    );
}

#[test]
fn caps_per_day_and_per_period_count_what_the_rule_already_gave_and_a_used_up_cap_stops_the_rule() {
    let rules = r#"[
        {"id": "daily", "effect": {"bonus_per_line": 30}, "caps": {"per_day": 50}},
        {"id": "monthly", "effect": {"multiplier_percent": 300}, "exclusive": true, "caps": {"per_member": {"points": 500, "period": "month"}}}
    ]"#;
    check(
        rules,
        "today:daily=40 period:monthly=490",
        "a 1000.00, b 1000.00",
        expect![[r#"
            total 20
            0 a 1x1000.00: 10 = base 0 (replaced by monthly) + daily 5 (capped PerDay from 30) + monthly 5 (capped PerMember from 30)
            1 b 1x1000.00: 10 = base 0 (replaced by monthly) + daily 5 (capped PerDay from 30) + monthly 5 (capped PerMember from 30)
        "#]],
    );
    check(
        rules,
        "today:daily=50 period:monthly=500",
        "a 1000.00",
        expect![[r#"
            total 10
            0 a 1x1000.00: 10 = base 10
                - daily: cap per day already reached
                - monthly: cap per member per period already reached
        "#]],
    );
}

#[test]
fn with_points_paying_part_of_the_bill_rules_earn_on_what_was_paid_in_money() {
    check(
        r#"[{"id": "dairy10", "condition": {"category": ["dairy"]}, "effect": {"rate": {"points": 10, "per_minor": 10000}}}]"#,
        "redeem=500.00",
        "milk/dairy 1000.00, bread 1000.00",
        expect![[r#"
            total 90
            0 milk/dairy 1x1000.00: 83 = base 8 + dairy10 75
            1 bread 1x1000.00: 7 = base 7
                - dairy10: category (none) is not one of ["dairy"]
        "#]],
    );
}

#[test]
fn a_purchase_records_each_rules_points_per_line_and_a_return_takes_them_back_in_proportion() {
    let program = program(
        r#"[{"id": "dairy10", "condition": {"category": ["dairy"]}, "effect": {"rate": {"points": 10, "per_minor": 10000}}}]"#,
    );
    let mut ids = IdAllocator::default();
    let mut ledger = MemberLedger::new(ids.member(), Vec::new());
    let now = timestamp("2026-03-11T12:00");
    let command = PurchaseCommand {
        external_id: "r1".into(),
        occurred_at: now,
        channel: Channel::Pos,
        store: None,
        currency: program.bill_currency,
        lines: basket("milk/dairy 4x250.00, bread 1000.00"),
        redeem_points: 0,
    };
    let (mut record, _) =
        decide_purchase(&program, 1, &mut ledger, command, &MemberContext::default(), now, &mut ids).unwrap();
    let lines: Vec<String> =
        record.lines.iter().map(|l| format!("{} {} {:?}", l.sku, l.points_earned, l.rule_points)).collect();
    expect![[r#"
        [
            "milk 110 [RulePoints { rule_id: \"dairy10\", points: 100 }]",
            "bread 10 []",
        ]
    "#]]
    .assert_debug_eq(&lines);
    assert_eq!(record.points_earned, 120);
    let returned = [kopilka_core::purchase::ReturnLine { line: 0, quantity: 1 }];
    let (summary, _) = decide_return(&program, &mut ledger, &mut record, Some(&returned), now, &mut ids).unwrap();
    assert_eq!(summary.points_reversed, 27, "a quarter of the milk line's 110 points, rounded down");
}

fn issues(document: serde_json::Value) -> String {
    let mut json = serde_json::to_value(Program::example()).unwrap();
    json["earn_rules"] = document;
    match Program::from_json(&json.to_string()) {
        Ok(_) => "valid".into(),
        // Where in the text the parser stopped is noise here: the path says where the problem is.
        Err(issues) => issues
            .iter()
            .map(|issue| {
                let message = issue.message.split(" at line ").next().unwrap();
                format!("{}: {message}\n", issue.path)
            })
            .collect(),
    }
}

#[test]
fn validation_names_every_problem_in_the_rules_by_its_path() {
    let rules = serde_json::json!([
        {"id": "a", "name": "A", "condition": {"category": []}, "effect": {"bonus_per_line": 0}},
        {"id": "a", "name": "", "condition": {"all": [
            {"hour_window": {"from_hour": 9, "to_hour": 9}},
            {"date_range": {"from": "2026-05-01", "to": "2026-04-01"}},
            {"min_quantity": 0},
            {"birthday": {"days_before": 40, "days_after": 0}}
        ]}, "effect": {"multiplier_percent": 50}},
        {"id": "bad id!", "name": "C", "condition": {"all": [
            {"category": ["dairy"]}, {"channel": ["web"]}, {"category": ["tyres"]}, {"channel": ["pos"]},
            {"date_range": {"from": "2026-01-01", "to": "2026-01-31"}},
            {"date_range": {"from": "2026-02-01", "to": "2026-02-28"}}
        ]}, "effect": {"rate": {"points": 1, "per_minor": 0}},
         "caps": {"per_purchase": 100, "per_day": 50}, "active": {"from": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}},
        {"id": "d", "name": "D", "condition": {"any": []}, "effect": {"bonus_per_basket": 5}, "exclusive": true}
    ]);
    expect![[r#"
        earn_rules[0].condition.category: must not be empty
        earn_rules[0].effect.bonus_per_line: must be between 1 and 1000000000
        earn_rules[1].id: duplicate of earn_rules[0].id "a"
        earn_rules[1].name: must be 1 to 200 characters
        earn_rules[1].condition.all[0].hour_window: an empty window: from_hour equals to_hour
        earn_rules[1].condition.all[1].date_range: an empty range: 2026-05-01 is after 2026-04-01
        earn_rules[1].condition.all[2].min_quantity: must be between 1 and 1000000
        earn_rules[1].condition.all[3].birthday.days_before: must be between 0 and 31
        earn_rules[1].effect.multiplier_percent: a rule that stacks on the base adds nothing at 100% or less: make it exclusive to lower the base
        earn_rules[2].id: must be 1 to 64 letters, digits or - _ .
        earn_rules[2].active: an empty window: from 2026-02-01T00:00:00Z is not before until 2026-01-01T00:00:00Z
        earn_rules[2].condition.all[2]: contradicts earn_rules[2].condition.all[0]: category in ["dairy"] and category in ["tyres"] never hold together
        earn_rules[2].condition.all[3]: contradicts earn_rules[2].condition.all[1]: channel in [web] and channel in [pos] never hold together
        earn_rules[2].condition.all[5]: contradicts earn_rules[2].condition.all[4]: date 2026-01-01 to 2026-01-31 and date 2026-02-01 to 2026-02-28 never hold together
        earn_rules[2].effect.rate.per_minor: must be a positive amount of minor units, e.g. 10000 for 100.00
        earn_rules[2].caps.per_purchase: 100 is more than the cap per day 50, which always wins
        earn_rules[3].exclusive: a bonus per basket cannot replace the base rate of lines: make it stack
        earn_rules[3].condition.any: must not be empty: use "always" for a rule without conditions
    "#]]
    .assert_eq(&issues(rules));
}

#[test]
fn unknown_fields_and_conditions_are_named_by_their_path_when_parsing() {
    let unknown_field = serde_json::json!([{"id": "a", "name": "A", "effect": {"bonus_per_line": 1}, "colour": "red"}]);
    let unknown_condition = serde_json::json!([{"id": "a", "name": "A", "effect": {"bonus_per_line": 1},
        "condition": {"all": [{"category": ["x"]}, {"weather": "sunny"}]}}]);
    let unknown_inner = serde_json::json!([{"id": "a", "name": "A", "effect": {"bonus_per_line": 1},
        "condition": {"hour_window": {"from_hour": 1, "to_hour": 2, "tz": "UTC"}}}]);
    let out = [unknown_field, unknown_condition, unknown_inner].map(issues).concat();
    expect![[r#"
        earn_rules[0].colour: unknown field `colour`, expected one of `id`, `name`, `condition`, `effect`, `priority`, `exclusive`, `caps`, `active`
        earn_rules[0].condition.all[1]: unknown variant `weather`, expected one of `always`, `all`, `any`, `not`, `category`, `sku`, `brand`, `min_line_sum_minor`, `min_quantity`, `channel`, `store`, `min_basket_sum_minor`, `day_of_week`, `hour_window`, `date_range`, `tier`, `segment`, `campaign`, `first_purchase`, `birthday`
        earn_rules[0].condition.hour_window.tz: unknown field `tz`, expected `from_hour` or `to_hour`
    "#]]
    .assert_eq(&out);
}

#[test]
fn a_program_without_rules_serializes_as_before() {
    let json = serde_json::to_value(Program::example()).unwrap();
    assert!(json.get("earn_rules").is_none());
}

// Property: for any basket and any rules, line points sum to the purchase's points and no rule
// gives more than any of its caps allows.

fn rule_strategy(index: usize) -> impl Strategy<Value = serde_json::Value> {
    let condition = prop_oneof![
        Just(serde_json::json!("always")),
        Just(serde_json::json!({"category": ["c0"]})),
        Just(serde_json::json!({"any": [{"category": ["c1"]}, {"min_quantity": 2}]})),
        Just(serde_json::json!({"not": {"sku": ["s0"]}})),
        Just(serde_json::json!({"min_basket_sum_minor": 50000})),
        Just(serde_json::json!({"min_line_sum_minor": 20000})),
    ];
    let effect = prop_oneof![
        (1i64..50, 1i64..20_000)
            .prop_map(|(points, per_minor)| serde_json::json!({"rate": {"points": points, "per_minor": per_minor}})),
        (101i64..1_000).prop_map(|percent| serde_json::json!({"multiplier_percent": percent})),
        (1i64..500).prop_map(|points| serde_json::json!({"bonus_per_line": points})),
        (1i64..500).prop_map(|points| serde_json::json!({"bonus_per_basket": points})),
    ];
    let cap = || prop::option::of(1i64..300);
    (condition, effect, -3i32..3, any::<bool>(), cap(), cap(), cap()).prop_map(
        move |(condition, effect, priority, exclusive, per_purchase, per_day, per_member)| {
            let exclusive = exclusive && effect.get("bonus_per_basket").is_none();
            let mut caps = serde_json::json!({});
            if let Some(cap) = per_purchase {
                caps["per_purchase"] = cap.into();
            }
            if let Some(cap) = per_day {
                caps["per_day"] = cap.into();
                if per_purchase.is_some_and(|p| p > cap) {
                    caps["per_purchase"] = cap.into();
                }
            }
            if let Some(cap) = per_member {
                caps["per_member"] = serde_json::json!({"points": cap, "period": "month"});
            }
            serde_json::json!({"id": format!("r{index}"), "condition": condition, "effect": effect,
                "priority": priority, "exclusive": exclusive, "caps": caps})
        },
    )
}

fn line_strategy() -> impl Strategy<Value = LineInput> {
    (0usize..3, 0usize..3, 1i64..5, 0i64..100_000).prop_map(|(sku, category, quantity, unit_price_minor)| LineInput {
        sku: format!("s{sku}"),
        category: Some(format!("c{category}")),
        brand: None,
        quantity,
        unit_price_minor,
        discount_minor: 0,
    })
}

proptest! {
    #[test]
    fn line_points_sum_to_the_purchases_points_and_no_cap_is_exceeded(
        rules in (0usize..6).prop_flat_map(|count| (0..count).map(rule_strategy).collect::<Vec<_>>()),
        lines in prop::collection::vec(line_strategy(), 1..12),
        earned_today in prop::collection::vec(0i64..200, 6),
        earned_period in prop::collection::vec(0i64..200, 6),
        redeem_points in 0i64..1_000,
    ) {
        let program = program(&serde_json::Value::Array(rules).to_string());
        let mut member = MemberContext::default();
        for (index, (today, period)) in earned_today.iter().zip(&earned_period).enumerate() {
            member.earned_by_rule_today.insert(format!("r{index}"), *today);
            member.earned_by_rule_period.insert(format!("r{index}"), *period);
        }
        let total_minor: i64 = lines.iter().map(|l| l.quantity * l.unit_price_minor).sum();
        prop_assume!(total_minor > 0);
        let redeem_points = redeem_points.min(program.max_redeemable_points(total_minor));
        let mut ids = IdAllocator::default();
        let mut ledger = MemberLedger::new(ids.member(), Vec::new());
        let now = timestamp("2026-03-11T12:00");
        let command = PurchaseCommand {
            external_id: "p".into(),
            occurred_at: now,
            channel: Channel::Pos,
            store: None,
            currency: program.bill_currency,
            lines: lines.clone(),
            redeem_points,
        };
        decide_adjust(&program, &mut ledger, 1_000, "points to pay with".into(), now, &mut ids).unwrap();
        let (record, _) = decide_purchase(&program, 1, &mut ledger, command, &member, now, &mut ids).unwrap();
        prop_assert_eq!(record.lines.iter().map(|l| l.points_earned).sum::<i64>(), record.points_earned);
        let mut by_rule: BTreeMap<&str, i64> = BTreeMap::new();
        for line in &record.lines {
            let rules: i64 = line.rule_points.iter().map(|r| r.points).sum();
            prop_assert!(rules <= line.points_earned);
            for rule in &line.rule_points {
                *by_rule.entry(&rule.rule_id).or_default() += rule.points;
            }
        }
        for rule in &program.earn_rules {
            let given = by_rule.get(rule.id.as_str()).copied().unwrap_or(0);
            let earned = |map: &BTreeMap<String, i64>| map.get(&rule.id).copied().unwrap_or(0);
            if let Some(cap) = rule.caps.per_purchase {
                prop_assert!(given <= cap, "{} gave {given} over its cap per purchase {cap}", rule.id);
            }
            if let Some(cap) = rule.caps.per_day {
                prop_assert!(given <= (cap - earned(&member.earned_by_rule_today)).max(0));
            }
            if let Some(cap) = rule.caps.per_member {
                prop_assert!(given <= (cap.points - earned(&member.earned_by_rule_period)).max(0));
            }
        }
    }
}
