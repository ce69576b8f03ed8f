//! Rule evaluation speed: a 50-line basket against a 30-rule program. Throughput is in line
//! evaluations (lines × rules) per second; the target is at least 1,000,000 per core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kopilka_core::purchase::{Channel, LineInput};
use kopilka_core::rules::{evaluate, Basket, MemberContext};
use kopilka_core::{Program, Timestamp};

const LINES: usize = 50;
const RULES: usize = 30;

/// Thirty rules of every kind: line conditions, basket gates, member and time conditions, nested
/// combinations, exclusive rules and caps, so that most lines meet a few rules and miss the rest.
fn program() -> Program {
    let mut rules = Vec::new();
    for index in 0..RULES {
        let category = format!("cat-{}", index % 10);
        let (condition, effect) = match index % 10 {
            0 => (
                serde_json::json!({"category": [category]}),
                serde_json::json!({"rate": {"points": 5, "per_minor": 10000}}),
            ),
            1 => (
                serde_json::json!({"sku": [format!("sku-{index}"), format!("sku-{}", index + 7)]}),
                serde_json::json!({"bonus_per_line": 10}),
            ),
            2 => (serde_json::json!({"brand": ["acme", "globex"]}), serde_json::json!({"multiplier_percent": 200})),
            3 => (
                serde_json::json!({"all": [{"category": [category]}, {"min_quantity": 2}]}),
                serde_json::json!({"bonus_per_line": 3}),
            ),
            4 => (serde_json::json!({"min_basket_sum_minor": 100000}), serde_json::json!({"bonus_per_basket": 50})),
            5 => (
                serde_json::json!({"day_of_week": ["saturday", "sunday"]}),
                serde_json::json!({"multiplier_percent": 300}),
            ),
            6 => (
                serde_json::json!({"any": [{"tier": ["gold"]}, {"segment": ["lapsed"]}]}),
                serde_json::json!({"multiplier_percent": 150}),
            ),
            7 => (
                serde_json::json!({"not": {"category": [category]}}),
                serde_json::json!({"rate": {"points": 1, "per_minor": 10000}}),
            ),
            8 => (
                serde_json::json!({"all": [{"channel": ["pos"]}, {"hour_window": {"from_hour": 8, "to_hour": 20}}, {"min_line_sum_minor": 50000}]}),
                serde_json::json!({"bonus_per_line": 20}),
            ),
            _ => (
                serde_json::json!({"birthday": {"days_before": 7, "days_after": 7}}),
                serde_json::json!({"multiplier_percent": 400}),
            ),
        };
        let mut rule = serde_json::json!({
            "id": format!("rule-{index}"),
            "name": format!("Rule {index}"),
            "condition": condition,
            "effect": effect,
            "priority": (index % 4) as i32,
            "caps": {"per_purchase": 500, "per_day": 1000},
        });
        if index % 10 == 3 {
            rule["exclusive"] = true.into();
        }
        rules.push(rule);
    }
    let mut json = serde_json::to_value(Program::example()).unwrap();
    json["earn_rules"] = rules.into();
    Program::from_json(&json.to_string()).expect("the bench program is valid")
}

fn basket() -> Vec<LineInput> {
    (0..LINES)
        .map(|index| LineInput {
            sku: format!("sku-{index}"),
            category: Some(format!("cat-{}", index % 12)),
            brand: ["acme", "initech", "globex", "umbrella"].get(index % 5).map(|b| b.to_string()),
            quantity: 1 + (index % 3) as i64,
            unit_price_minor: 99_00 + (index as i64 * 37_13) % 1_000_00,
            discount_minor: 0,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let program = program();
    let lines = basket();
    let member = MemberContext {
        tier: Some("gold".into()),
        segments: vec!["big-spender".into()],
        birth_date: Some("1990-03-12".parse().unwrap()),
        ..MemberContext::default()
    };
    let basket = Basket { lines: &lines, channel: Channel::Pos, store: Some("s1"), redeemed_value_minor: 0 };
    let at: Timestamp = "2026-03-14T10:00:00Z".parse().unwrap();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements((LINES * RULES) as u64));
    group.bench_function("evaluate 50 lines x 30 rules", |b| {
        b.iter(|| evaluate(&program, std::hint::black_box(&basket), &member, at))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
