//! Checkout over real HTTP: quotes with the program's discounts and coupons, confirmation in one
//! step, holds that lapse, and codes that are used exactly once however many tills try.

mod support;

use support::both_stores;

use serde_json::{json, Value};
use support::{spawn_app, Answer, TestApp};

/// Replaces parts of the tenant's program.
async fn set_program(app: &TestApp, change: Value) {
    let mut program = app.get("/v1/programs/1").await.body["program"].clone();
    for (field, value) in change.as_object().unwrap() {
        program[field] = value.clone();
    }
    let key = app.fresh_key();
    let answer =
        app.send("PUT", "/v1/programs/1", &app.admin_key, Some(&key), Some(program.to_string().into_bytes())).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

async fn campaign(app: &TestApp, document: Value) -> i64 {
    let answer = app.post("/v1/coupon-campaigns", document).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_i64().unwrap()
}

async fn import(app: &TestApp, campaign: i64, codes: Value) -> Answer {
    app.post(&format!("/v1/coupon-campaigns/{campaign}/codes"), json!({ "codes": codes })).await
}

fn basket(member: i64, lines: Value, coupons: Value) -> Value {
    json!({ "member_id": member, "currency": "RUB", "lines": lines, "coupons": coupons })
}

fn line(sku: &str, category: &str, quantity: i64, unit_price_minor: i64) -> Value {
    json!({ "sku": sku, "category": category, "quantity": quantity, "unit_price_minor": unit_price_minor })
}

async fn quote(app: &TestApp, body: Value) -> Answer {
    let answer = app.post("/v1/checkouts", body).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer
}

async fn confirm(app: &TestApp, checkout: &Answer, receipt: &str, extra: Value) -> Answer {
    let id = checkout.body["id"].as_i64().unwrap();
    let mut body = json!({ "external_id": receipt });
    for (field, value) in extra.as_object().unwrap() {
        body[field] = value.clone();
    }
    app.post(&format!("/v1/checkouts/{id}/confirm"), body).await
}

fn verdict<'a>(quote: &'a Answer, code: &str) -> &'a Value {
    quote.body["quote"]["coupons"].as_array().unwrap().iter().find(|c| c["code"] == code).expect("the code is judged")
}

both_stores! {
    async fn a_quote_applies_discounts_and_coupons_and_the_confirmation_commits_them_together() {
        let app = spawn_app().await;
        set_program(
            &app,
            json!({
                "discounts": [
                    { "id": "members", "name": "Members", "kind": { "percent": 5 } },
                    { "id": "loyal", "name": "Cumulative", "kind": { "cumulative": { "window": "lifetime",
                        "thresholds": [{ "from_minor": 1_000_00, "percent": 7 }, { "from_minor": 5_000_00, "percent": 10 }] } } },
                ],
            }),
        )
        .await;
        let autumn = campaign(
            &app,
            json!({ "name": "Autumn", "effect": { "percent": 10 }, "condition": { "category": ["coffee"] } }),
        )
        .await;
        assert_eq!(import(&app, autumn, json!([{ "code": "autumn-2026" }])).await.status, 201);
        let member = app.create_member("C-1").await;
        app.adjust(member, 500).await;

        // 5% for members (the cumulative discount needs 1,000 RUB spent first), then 10% off coffee.
        let lines = json!([line("LATTE", "coffee", 2, 300_00), line("CAKE", "bakery", 1, 400_00)]);
        let quoted = quote(&app, basket(member, lines.clone(), json!(["AUTUMN-2026"]))).await;
        let q = &quoted.body["quote"];
        assert_eq!(q["subtotal_minor"], 1_000_00);
        assert_eq!(q["lines"][0]["program_discount_minor"], 30_00);
        assert_eq!(q["lines"][0]["discounts"]["applied"][0]["discount_id"], "members");
        assert!(q["lines"][0]["discounts"]["not_applied"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("below the first threshold"));
        // 10% of what is left of the coffee line (570 RUB).
        assert_eq!(verdict(&quoted, "AUTUMN-2026")["discount_minor"], 57_00);
        assert_eq!(q["total_minor"], 1_000_00 - 50_00 - 57_00);
        assert_eq!(q["max_redeem_points"], 446, "half of 893 RUB, and the member has 500");
        assert_eq!(quoted.body["status"], "open");

        let done = confirm(&app, &quoted, "R-1", json!({ "redeem_points": 400 })).await;
        assert_eq!(done.status, 201, "{:?}", done.body);
        let purchase = &done.body["purchase"];
        assert_eq!(purchase["total_minor"], 893_00);
        assert_eq!(purchase["lines"][0]["discount_minor"], 87_00);
        // Earned on what was paid in money: 893 - 400 = 493 RUB at 1 point per 100 RUB.
        assert_eq!(purchase["points_earned"], 4);
        assert_eq!(done.body["checkout"]["status"], "confirmed");
        assert_eq!(app.balance(member).await, (100, 4));

        // Used once: the single-use code is gone for everyone, the member's spend now earns 7%.
        let again = quote(&app, basket(member, lines, json!(["AUTUMN-2026"]))).await;
        assert_eq!(verdict(&again, "AUTUMN-2026")["refusal"]["code"], "coupon_used_up");
        assert_eq!(again.body["quote"]["lines"][1]["discounts"]["percent"], 5, "893 RUB spent: not yet 1,000");
        let used = app.get("/v1/coupons/autumn-2026").await;
        assert_eq!(used.body["uses"], 1);
        let campaign_view = app.get(&format!("/v1/coupon-campaigns/{autumn}")).await;
        assert_eq!(campaign_view.body["used"], 1);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn many_tills_quoting_one_single_use_code_at_once_get_it_exactly_once() {
        let app = spawn_app().await;
        let once = campaign(&app, json!({ "name": "Once", "effect": { "amount_minor": 100_00 } })).await;
        import(&app, once, json!([{ "code": "ONLY-ONE" }])).await;
        let mut members = Vec::new();
        for i in 0..20 {
            members.push(app.create_member(&format!("C-{i}")).await);
        }
        let quotes = futures::future::join_all(members.iter().map(|member| {
            app.post("/v1/checkouts", basket(*member, json!([line("A", "food", 1, 500_00)]), json!(["ONLY-ONE"])))
        }))
        .await;
        let holders: Vec<&Answer> = quotes.iter().filter(|q| verdict(q, "ONLY-ONE")["valid"] == true).collect();
        assert_eq!(holders.len(), 1, "exactly one checkout holds the code");
        for other in quotes.iter().filter(|q| verdict(q, "ONLY-ONE")["valid"] == false) {
            assert_eq!(verdict(other, "ONLY-ONE")["refusal"]["code"], "coupon_held");
        }
        // All confirm at once; only the holder's confirmation uses the code.
        let paths: Vec<String> = quotes.iter().map(|q| format!("/v1/checkouts/{}/confirm", q.body["id"])).collect();
        let confirmations = futures::future::join_all(
            paths
                .iter()
                .enumerate()
                .map(|(i, path)| app.post(path, json!({ "external_id": format!("R-{i}"), "coupons": ["ONLY-ONE"] }))),
        )
        .await;
        let won: Vec<&Answer> = confirmations.iter().filter(|c| c.status == 201).collect();
        assert_eq!(won.len(), 1);
        assert_eq!(won[0].body["purchase"]["total_minor"], 400_00);
        for lost in confirmations.iter().filter(|c| c.status != 201) {
            assert_eq!((lost.status.as_u16(), lost.code()), (422, "coupon_not_in_quote"));
        }
        assert_eq!(app.get("/v1/coupons/ONLY-ONE").await.body["uses"], 1);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_hold_lapses_with_its_checkout_and_a_cancellation_lets_the_code_go_at_once() {
        let app = spawn_app().await;
        let once = campaign(&app, json!({ "name": "Once", "effect": { "percent": 20 } })).await;
        import(&app, once, json!([{ "code": "HOLD-ME" }])).await;
        let (olga, ivan) = (app.create_member("C-1").await, app.create_member("C-2").await);
        let items = json!([line("A", "food", 1, 100_00)]);

        let first = quote(&app, basket(olga, items.clone(), json!(["HOLD-ME"]))).await;
        assert_eq!(verdict(&first, "HOLD-ME")["valid"], true);
        let blocked = quote(&app, basket(ivan, items.clone(), json!(["HOLD-ME"]))).await;
        assert_eq!(verdict(&blocked, "HOLD-ME")["refusal"]["code"], "coupon_held");
        let id = first.body["id"].as_i64().unwrap();
        let cancelled = app.post(&format!("/v1/checkouts/{id}/cancel"), json!({})).await;
        assert_eq!((cancelled.status.as_u16(), cancelled.body["status"].as_str()), (200, Some("cancelled")));
        assert_eq!(confirm(&app, &first, "R-0", json!({})).await.code(), "checkout_cancelled");

        let second = quote(&app, basket(ivan, items.clone(), json!(["HOLD-ME"]))).await;
        assert_eq!(verdict(&second, "HOLD-ME")["valid"], true);
        // The program holds codes for 15 minutes by default.
        app.clock.advance(jiff::SignedDuration::from_mins(16));
        assert_eq!(app.get(&format!("/v1/checkouts/{}", second.body["id"])).await.body["status"], "expired");
        let late = confirm(&app, &second, "R-1", json!({})).await;
        assert_eq!((late.status.as_u16(), late.code()), (409, "checkout_expired"));
        let third = quote(&app, basket(olga, items, json!(["HOLD-ME"]))).await;
        assert_eq!(verdict(&third, "HOLD-ME")["valid"], true, "the lapsed hold counts for nothing");
        let done = confirm(&app, &third, "R-2", json!({})).await;
        assert_eq!(done.status, 201, "{:?}", done.body);
        assert_eq!(done.body["purchase"]["total_minor"], 80_00);
        app.stop().await;
    }
}

both_stores! {
    async fn every_reason_a_code_is_refused_is_named_and_nothing_is_consumed() {
        let app = spawn_app().await;
        let now = app.now();
        let later = now + jiff::SignedDuration::from_hours(48);
        let expired =
            campaign(&app, json!({ "name": "Old", "effect": { "percent": 5 }, "valid_until": now.to_string() })).await;
        let future =
            campaign(&app, json!({ "name": "Soon", "effect": { "percent": 5 }, "valid_from": later.to_string() })).await;
        let big = campaign(
            &app,
            json!({ "name": "Big baskets", "effect": { "amount_minor": 50_00 }, "min_basket_minor": 1_000_00 }),
        )
        .await;
        let limited = campaign(
            &app,
            json!({ "name": "Once each", "effect": { "percent": 5 }, "uses_per_member": 1, "uses_per_code": 10 }),
        )
        .await;
        let scarce = campaign(
            &app,
            json!({ "name": "Two in all", "effect": { "percent": 5 }, "uses_total": 2, "uses_per_code": 10 }),
        )
        .await;
        let stopped = campaign(&app, json!({ "name": "Stopped", "effect": { "percent": 5 } })).await;
        let personal = campaign(&app, json!({ "name": "Personal", "effect": { "percent": 5 } })).await;
        let (olga, ivan) = (app.create_member("C-1").await, app.create_member("C-2").await);
        for (id, code) in [
            (expired, "OLD-1"),
            (future, "SOON-1"),
            (big, "BIG-1"),
            (limited, "EACH-1"),
            (scarce, "TWO-1"),
            (stopped, "STOP-1"),
        ] {
            assert_eq!(import(&app, id, json!([{ "code": code }])).await.status, 201);
        }
        assert_eq!(import(&app, personal, json!([{ "code": "OLGA-1", "member_id": olga }])).await.status, 201);
        let key = app.fresh_key();
        let body = json!({ "active": false }).to_string().into_bytes();
        let paused =
            app.send("PATCH", &format!("/v1/coupon-campaigns/{stopped}"), &app.admin_key, Some(&key), Some(body)).await;
        assert_eq!(paused.body["active"], false);

        let items = json!([line("A", "food", 1, 500_00)]);
        let codes = json!(["OLD-1", "SOON-1", "BIG-1", "STOP-1", "OLGA-1", "NO-SUCH", "!?", "EACH-1"]);
        let quoted = quote(&app, basket(ivan, items.clone(), codes)).await;
        for (code, reason) in [
            ("OLD-1", "coupon_expired"),
            ("SOON-1", "coupon_not_yet_valid"),
            ("BIG-1", "coupon_condition_not_met"),
            ("STOP-1", "coupon_campaign_stopped"),
            ("OLGA-1", "coupon_not_yours"),
            ("NO-SUCH", "coupon_not_found"),
            ("!?", "coupon_malformed"),
        ] {
            assert_eq!(verdict(&quoted, code)["refusal"]["code"], reason, "{code}");
            assert!(!verdict(&quoted, code)["refusal"]["reason"].as_str().unwrap().is_empty());
        }
        assert_eq!(verdict(&quoted, "EACH-1")["valid"], true);
        assert_eq!(confirm(&app, &quoted, "R-1", json!({})).await.status, 201);
        // Once per member: Ivan is refused, Olga is not.
        let twice = quote(&app, basket(ivan, items.clone(), json!(["EACH-1"]))).await;
        assert_eq!(verdict(&twice, "EACH-1")["refusal"]["code"], "coupon_member_limit_reached");
        let hers = quote(&app, basket(olga, items.clone(), json!(["EACH-1", "OLGA-1"]))).await;
        assert_eq!(verdict(&hers, "EACH-1")["valid"], true);
        assert_eq!(verdict(&hers, "OLGA-1")["valid"], true);

        // Two uses in all, however many codes: the third checkout finds the campaign exhausted.
        for (i, member) in [olga, ivan].into_iter().enumerate() {
            let q = quote(&app, basket(member, items.clone(), json!(["TWO-1"]))).await;
            assert_eq!(confirm(&app, &q, &format!("T-{i}"), json!({})).await.status, 201);
        }
        let third = quote(&app, basket(olga, items.clone(), json!(["TWO-1"]))).await;
        assert_eq!(verdict(&third, "TWO-1")["refusal"]["code"], "coupon_campaign_exhausted");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn restricted_goods_are_refused_at_confirmation_and_nothing_is_written() {
        let app = spawn_app().await;
        set_program(
            &app,
            json!({
                "restricted_goods": [{ "id": "reserve", "name": "Reserve wines", "goods": { "category": ["reserve-wine"] },
                    "allowed": { "tier": ["gold"] } }],
                "discounts": [{ "id": "gold", "name": "Gold", "kind": { "tier": { "gold": 10, "silver": 5 } } }],
            }),
        )
        .await;
        let member = app.create_member("C-1").await;
        let items = json!([line("BAROLO", "reserve-wine", 1, 5_000_00)]);
        let quoted = quote(&app, basket(member, items.clone(), json!([]))).await;
        assert!(quoted.body["quote"]["restricted"][0]["reason"].as_str().unwrap().contains("tier"));
        let refused = confirm(&app, &quoted, "R-1", json!({})).await;
        assert_eq!((refused.status.as_u16(), refused.code()), (422, "restricted_goods"));
        assert_eq!(refused.body["field"], "lines[0]");
        assert_eq!(app.balance(member).await, (0, 0));
        assert_eq!(app.history_len(member).await, 0, "no purchase, no movement");

        let key = app.fresh_key();
        let gold = json!({ "tier": "gold" }).to_string().into_bytes();
        app.send("PATCH", &format!("/v1/members/{member}/loyalty"), &app.admin_key, Some(&key), Some(gold)).await;
        let allowed = quote(&app, basket(member, items, json!([]))).await;
        assert!(allowed.body["quote"].get("restricted").is_none());
        assert_eq!(allowed.body["quote"]["discount_minor"], 500_00, "gold members get 10%");
        assert_eq!(confirm(&app, &allowed, "R-1", json!({})).await.status, 201);
        app.stop().await;
    }
}

both_stores! {
    async fn free_items_fixed_amounts_and_points_multipliers() {
        let app = spawn_app().await;
        let free = campaign(&app, json!({ "name": "Free latte", "effect": { "free_item": { "sku": "LATTE" } } })).await;
        let fixed = campaign(
            &app,
            json!({ "name": "100 off", "effect": { "amount_minor": 100_00 }, "condition": { "category": ["bakery"] } }),
        )
        .await;
        let double = campaign(&app, json!({ "name": "Double", "effect": { "points_multiplier_percent": 300 } })).await;
        import(&app, free, json!([{ "code": "FREE-LATTE" }])).await;
        import(&app, fixed, json!([{ "code": "BAKE-100" }])).await;
        import(&app, double, json!([{ "code": "TRIPLE" }])).await;
        let member = app.create_member("C-1").await;
        let items =
            json!([line("LATTE", "coffee", 2, 250_00), line("BUN", "bakery", 1, 60_00), line("PIE", "bakery", 1, 140_00)]);
        let quoted = quote(&app, basket(member, items, json!(["FREE-LATTE", "BAKE-100", "TRIPLE"]))).await;
        assert_eq!(verdict(&quoted, "FREE-LATTE")["discount_minor"], 250_00, "one unit free");
        assert_eq!(verdict(&quoted, "BAKE-100")["discount_minor"], 100_00);
        let lines = &quoted.body["quote"]["lines"];
        assert_eq!((lines[1]["total_minor"].as_i64(), lines[2]["total_minor"].as_i64()), (Some(30_00), Some(70_00)));
        assert_eq!(verdict(&quoted, "TRIPLE")["points_multiplier_percent"], 300);
        // 350 RUB paid: 3 points base, tripled.
        assert_eq!(quoted.body["quote"]["points_to_earn"], 9);
        let done = confirm(&app, &quoted, "R-1", json!({ "explain": true })).await;
        assert_eq!(done.body["purchase"]["points_earned"], 9, "{:?}", done.body);
        assert_eq!(done.body["explanation"][0]["rules_applied"][0]["rule_id"], "coupon.TRIPLE");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn codes_are_generated_in_bulk_imported_whole_or_not_at_all_and_campaigns_are_validated() {
        let app = spawn_app().await;
        let bad = app.post("/v1/coupon-campaigns", json!({ "name": "x", "effect": { "percent": 150 } })).await;
        assert_eq!(
            (bad.status.as_u16(), bad.code(), bad.body["field"].as_str()),
            (400, "validation_failed", Some("effect.percent"))
        );
        let guessable = app
            .post(
                "/v1/coupon-campaigns",
                json!({ "name": "x", "effect": { "percent": 5 }, "code_format": { "length": 4 } }),
            )
            .await;
        assert_eq!(guessable.body["field"], "code_format.length");
        let unknown =
            app.post("/v1/coupon-campaigns", json!({ "name": "x", "effect": { "percent": 5 }, "colour": 1 })).await;
        assert_eq!(unknown.code(), "validation_failed");

        let id = campaign(
            &app,
            json!({ "name": "Spring", "effect": { "percent": 5 }, "code_format": { "prefix": "SP-", "length": 10 } }),
        )
        .await;
        let generated = app.post(&format!("/v1/coupon-campaigns/{id}/codes"), json!({ "generate": 20_000 })).await;
        assert_eq!((generated.status.as_u16(), generated.body["added"].as_u64()), (201, Some(20_000)));
        assert!(generated.body.get("codes").is_none(), "too many to list: read them by page");
        let page = app.get(&format!("/v1/coupon-campaigns/{id}/codes?limit=500")).await;
        let codes = page.body["items"].as_array().unwrap();
        assert_eq!(codes.len(), 500);
        assert!(codes
            .iter()
            .all(|c| c["code"].as_str().unwrap().starts_with("SP-") && c["code"].as_str().unwrap().len() == 13));
        let next = page.body["next_after"].as_str().unwrap();
        let second = app.get(&format!("/v1/coupon-campaigns/{id}/codes?limit=500&after={next}")).await;
        assert!(second.body["items"][0]["code"].as_str().unwrap() > next);

        let member = app.create_member("C-1").await;
        let personal = app.post(&format!("/v1/coupon-campaigns/{id}/codes"), json!({ "for_members": [member] })).await;
        let code = personal.body["codes"][0].as_str().unwrap().to_string();
        assert_eq!(app.get(&format!("/v1/coupons/{code}")).await.body["member_id"], member);

        assert_eq!(import(&app, id, json!([{ "code": "EXT-1" }, { "code": "EXT-2" }])).await.status, 201);
        let clash = import(&app, id, json!([{ "code": "EXT-3" }, { "code": "ext-2" }])).await;
        assert_eq!((clash.status.as_u16(), clash.code()), (409, "coupon_code_taken"));
        assert_eq!(app.get("/v1/coupons/EXT-3").await.status, 404, "nothing of a refused import is added");
        let twice = import(&app, id, json!([{ "code": "EXT-4" }, { "code": "EXT-4" }])).await;
        assert_eq!(twice.body["field"], "codes[1].code");
        assert_eq!(app.get(&format!("/v1/coupon-campaigns/{id}")).await.body["codes"], 20_003);
        app.stop().await;
    }
}

both_stores! {
    async fn a_reward_voucher_pays_at_checkout_once_and_only_for_its_member() {
        let app = spawn_app().await;
        let reward = app
            .post(
                "/v1/rewards",
                json!({ "kind": "discount_voucher", "name": "10% off", "price_points": 100, "voucher": { "percent": 10 } }),
            )
            .await;
        assert_eq!(reward.status, 201, "{:?}", reward.body);
        let reward = reward.body["id"].as_i64().unwrap();
        let (olga, ivan) = (app.create_member("C-1").await, app.create_member("C-2").await);
        app.adjust(olga, 300).await;
        let path = format!("/v1/rewards/{reward}/redeem");
        let first = app.post(&path, json!({ "member_id": olga })).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        let code = first.body["redemption"]["voucher"]["code"].as_str().unwrap().to_string();
        let items = json!([line("A", "food", 1, 1_000_00)]);

        let not_hers = quote(&app, basket(ivan, items.clone(), json!([code.to_lowercase()]))).await;
        assert_eq!(verdict(&not_hers, &code)["refusal"]["code"], "coupon_not_yours");
        let quoted = quote(&app, basket(olga, items.clone(), json!([code.clone()]))).await;
        assert_eq!(verdict(&quoted, &code)["discount_minor"], 100_00, "{:?}", quoted.body);
        let done = confirm(&app, &quoted, "R-1", json!({})).await;
        assert_eq!(done.status, 201, "{:?}", done.body);
        assert_eq!(done.body["purchase"]["total_minor"], 900_00);
        let redemption = first.body["redemption"]["id"].as_i64().unwrap();
        assert_eq!(app.get(&format!("/v1/reward-redemptions/{redemption}")).await.body["status"], "fulfilled");
        let again = quote(&app, basket(olga, items.clone(), json!([code.clone()]))).await;
        assert_eq!(verdict(&again, &code)["refusal"]["code"], "coupon_used_up");

        let second = app.post(&path, json!({ "member_id": olga })).await;
        let cancelled_code = second.body["redemption"]["voucher"]["code"].as_str().unwrap().to_string();
        let id = second.body["redemption"]["id"].as_i64().unwrap();
        assert_eq!(app.post(&format!("/v1/reward-redemptions/{id}/cancel"), json!({})).await.status, 200);
        let refused = quote(&app, basket(olga, items, json!([cancelled_code.clone()]))).await;
        assert_eq!(verdict(&refused, &cancelled_code)["refusal"]["code"], "voucher_cancelled");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}
