//! A seeded random workload of checkouts over real HTTP: concurrent bursts of quotes,
//! confirmations and cancellations on a few scarce coupons, with the clock moving so holds lapse.
//! After every burst the store is checked against the coupon rules, whatever happened:
//!
//! - no code is used more often than `uses_per_code`, and its uses plus live holds never exceed it;
//! - a campaign's `used` equals the uses of its codes and the `coupon_redeemed` events;
//! - no campaign exceeds `uses_total`, no member `uses_per_member`;
//! - every confirmed checkout has its purchase, and there is no other purchase;
//! - the ledger is sound.
//!
//! `KOPILKA_SIM_SEED=n` replays one seed; `KOPILKA_SIM_CASES=k` runs k seeds.

mod support;

use support::both_stores;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::{spawn_app, TestApp};

struct Campaign {
    id: i64,
    codes: Vec<String>,
    uses_per_code: u64,
    uses_total: Option<u64>,
    uses_per_member: Option<u64>,
}

async fn make_campaign(app: &TestApp, document: Value, codes: &[&str]) -> Campaign {
    let created = app.post("/v1/coupon-campaigns", document.clone()).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_i64().unwrap();
    let items: Vec<Value> = codes.iter().map(|c| json!({ "code": c })).collect();
    assert_eq!(app.post(&format!("/v1/coupon-campaigns/{id}/codes"), json!({ "codes": items })).await.status, 201);
    Campaign {
        id,
        codes: codes.iter().map(|c| c.to_string()).collect(),
        uses_per_code: document["uses_per_code"].as_u64().unwrap_or(1),
        uses_total: document["uses_total"].as_u64(),
        uses_per_member: document["uses_per_member"].as_u64(),
    }
}

async fn check(app: &TestApp, campaigns: &[Campaign], context: &str) {
    let store = &app.running.as_ref().unwrap().state.store;
    let now = app.now();
    for campaign in campaigns {
        let mut sum = 0;
        for code in &campaign.codes {
            let coupon = store.coupon(kopilka_core::TenantId(1), code).await.unwrap().unwrap();
            let live = coupon.live_holds(now).count() as u64;
            assert!(coupon.uses as u64 <= campaign.uses_per_code, "{context}: {code} used {} times", coupon.uses);
            assert!(coupon.uses as u64 + live <= campaign.uses_per_code, "{context}: {code} over-held: {coupon:?}");
            sum += coupon.uses as u64;
        }
        let view = app.get(&format!("/v1/coupon-campaigns/{}", campaign.id)).await;
        assert_eq!(view.body["used"].as_u64(), Some(sum), "{context}: campaign {} used", campaign.id);
        let sql = format!(
            "SELECT member_id FROM events WHERE kind = 'coupon_redeemed' AND CAST({} AS BIGINT) = $1",
            store.backend.json_text("payload", "campaign_id")
        );
        let events: Vec<(i64,)> = sqlx::query_as(&sql).bind(campaign.id).fetch_all(&store.pool).await.unwrap();
        assert_eq!(events.len() as u64, sum, "{context}: events of campaign {}", campaign.id);
        if let Some(total) = campaign.uses_total {
            assert!(sum <= total, "{context}: campaign {} used {sum} of {total}", campaign.id);
        }
        if let Some(limit) = campaign.uses_per_member {
            let mut per_member: HashMap<i64, u64> = HashMap::new();
            for (member,) in events {
                *per_member.entry(member).or_default() += 1;
            }
            assert!(per_member.values().all(|n| *n <= limit), "{context}: {per_member:?}");
        }
    }
    let confirmed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM checkouts WHERE status = 'confirmed' AND purchase_id IS NOT NULL")
            .fetch_one(&store.pool)
            .await
            .unwrap();
    let purchases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM purchases").fetch_one(&store.pool).await.unwrap();
    assert_eq!(confirmed, purchases, "{context}: confirmed checkouts and purchases");
    app.assert_ledger_sound().await;
}

async fn simulate(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let app = spawn_app().await;
    let single =
        make_campaign(&app, json!({ "name": "Single", "effect": { "percent": 10 } }), &["ONE-1", "ONE-2", "ONE-3"])
            .await;
    let shared = make_campaign(
        &app,
        json!({ "name": "Shared", "effect": { "amount_minor": 50_00 }, "uses_per_code": 3, "uses_total": 4, "uses_per_member": 1 }),
        &["MANY-1", "MANY-2"],
    )
    .await;
    let free = make_campaign(
        &app,
        json!({ "name": "Free", "effect": { "free_item": { "sku": "TEA" } }, "uses_per_code": 2 }),
        &["TEA-1"],
    )
    .await;
    let codes: Vec<String> =
        [&single, &shared, &free].iter().flat_map(|c| c.codes.clone()).chain(["NOPE-1".to_string()]).collect();
    let mut members = Vec::new();
    for i in 0..6 {
        let member = app.create_member(&format!("C-{i}")).await;
        app.adjust(member, 500).await;
        members.push(member);
    }
    let campaigns = [single, shared, free];
    let mut checkouts: Vec<i64> = Vec::new();
    let mut receipt = 0;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for round in 0..12 {
        let mut bodies = Vec::new();
        for _ in 0..10 {
            let pick = rng.gen_range(0..10);
            if pick < 5 || checkouts.is_empty() {
                let member = members[rng.gen_range(0..members.len())];
                let wanted: Vec<&String> = codes.iter().filter(|_| rng.gen_bool(0.3)).collect();
                let lines = json!([
                    { "sku": "TEA", "quantity": rng.gen_range(1..3), "unit_price_minor": 150_00 },
                    { "sku": "CAKE", "quantity": 1, "unit_price_minor": rng.gen_range(1..500) * 100 },
                ]);
                let body = json!({ "member_id": member, "currency": "RUB", "lines": lines, "coupons": wanted,
                    "redeem_points": rng.gen_range(0..300) });
                bodies.push(("/v1/checkouts".to_string(), body));
            } else if pick < 9 {
                let id = checkouts[rng.gen_range(0..checkouts.len())];
                receipt += 1;
                let mut body = json!({ "external_id": format!("R-{seed}-{receipt}") });
                if rng.gen_bool(0.3) {
                    body["coupons"] = json!(codes.iter().filter(|_| rng.gen_bool(0.3)).collect::<Vec<_>>());
                }
                bodies.push((format!("/v1/checkouts/{id}/confirm"), body));
            } else {
                let id = checkouts[rng.gen_range(0..checkouts.len())];
                bodies.push((format!("/v1/checkouts/{id}/cancel"), json!({})));
            }
        }
        let answers = futures::future::join_all(bodies.iter().map(|(path, body)| app.post(path, body.clone()))).await;
        for ((path, _), answer) in bodies.iter().zip(&answers) {
            assert!(answer.status.as_u16() < 500, "seed {seed} round {round}: {path} answered {:?}", answer.body);
            let kind = path.rsplit('/').next().unwrap_or_default().to_string();
            let outcome = if answer.status.is_success() { "ok".to_string() } else { answer.code().to_string() };
            *outcomes.entry(format!("{kind} {outcome}")).or_default() += 1;
            if path == "/v1/checkouts" {
                assert_eq!(answer.status, 201, "seed {seed}: a quote never fails for its codes: {:?}", answer.body);
                checkouts.push(answer.body["id"].as_i64().unwrap());
            }
        }
        check(&app, &campaigns, &format!("seed {seed} round {round}")).await;
        app.clock.advance(jiff::SignedDuration::from_mins(rng.gen_range(0..12)));
    }
    eprintln!("seed {seed}: {outcomes:?}");
    // The workload must reach the cases it is for, or it proves nothing.
    let used: i64 = sqlx::query_scalar("SELECT CAST(SUM(used) AS BIGINT) FROM coupon_campaigns")
        .fetch_one(&app.running.as_ref().unwrap().state.store.pool)
        .await
        .unwrap();
    assert!(used > 0, "seed {seed}: no coupon was ever used");
    assert!(outcomes.get("confirm ok").is_some_and(|n| *n > 0), "seed {seed}: {outcomes:?}");
    assert!(
        outcomes.keys().any(|k| k.starts_with("confirm coupon_") || k == "confirm checkout_expired"),
        "seed {seed}: {outcomes:?}"
    );
    app.stop().await;
}

both_stores! {
    async fn random_checkouts_never_use_a_code_more_than_it_allows() {
        let seeds: Vec<u64> = match std::env::var("KOPILKA_SIM_SEED") {
            Ok(seed) => vec![seed.parse().expect("KOPILKA_SIM_SEED is a number")],
            Err(_) => {
                let cases = std::env::var("KOPILKA_SIM_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(3u64);
                (0..cases).map(|i| 1_000 + i).collect()
            }
        };
        for seed in seeds {
            eprintln!("checkout simulation, seed {seed} (replay with KOPILKA_SIM_SEED={seed})");
            simulate(seed).await;
        }
    }
}
