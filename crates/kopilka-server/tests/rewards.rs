//! The rewards catalogue over real HTTP: each kind redeemed, every refusal changing nothing,
//! cancellation, cashback payouts, form choice, retries and concurrent redemptions of scarce stock.

mod support;

use support::both_stores;

use serde_json::{json, Value};
use support::{spawn_app, TestApp};

async fn create_reward(app: &TestApp, spec: Value) -> i64 {
    let answer = app.post("/v1/rewards", spec).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_i64().unwrap()
}

async fn redeem(app: &TestApp, reward: i64, body: Value) -> support::Answer {
    app.post(&format!("/v1/rewards/{reward}/redeem"), body).await
}

async fn stock(app: &TestApp, reward: i64) -> Value {
    let answer = app.get(&format!("/v1/rewards/{reward}")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["stock"].clone()
}

async fn member_with_points(app: &TestApp, card: &str, points: i64) -> i64 {
    let member = app.create_member(card).await;
    let answer = app.adjust(member, points).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    member
}

/// The kinds of the events in the outbox, oldest first.
async fn event_kinds(app: &TestApp) -> Vec<String> {
    let pool = &app.running.as_ref().unwrap().state.store.pool;
    sqlx::query_scalar("SELECT kind FROM events ORDER BY id").fetch_all(pool).await.unwrap()
}

async fn redemptions(app: &TestApp, member: i64) -> Vec<Value> {
    let answer = app.get(&format!("/v1/members/{member}/rewards")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["items"].as_array().unwrap().clone()
}

both_stores! {
    async fn a_gift_is_redeemed_for_points_and_fulfilled_by_a_partner() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 500).await;
        let gift = create_reward(&app, json!({ "kind": "gift", "name": "Mug", "price_points": 300, "stock": 5 })).await;

        let answer = redeem(&app, gift, json!({ "member_id": member })).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let redemption = &answer.body["redemption"];
        assert_eq!(redemption["status"], "issued");
        assert_eq!(redemption["form"], "item");
        assert_eq!(redemption["points"], 300);
        assert!(redemption.get("voucher").is_none());
        assert_eq!(answer.body["balance"]["available"], 200);
        assert_eq!(app.balance(member).await, (200, 0));
        assert_eq!(stock(&app, gift).await, 4);
        let history = app.get(&format!("/v1/members/{member}/history")).await;
        assert_eq!(history.body["items"][0]["kind"], "redeem");
        assert_eq!(history.body["items"][0]["postings"][1]["account"]["kind"], "rewards");

        let partner = app.create_key("partner").await;
        let id = redemption["id"].as_i64().unwrap();
        let looked_up = app.send("GET", &format!("/v1/reward-redemptions/{id}"), &partner, None, None).await;
        assert_eq!((looked_up.status.as_u16(), &looked_up.body["status"]), (200, &json!("issued")));
        let path = format!("/v1/reward-redemptions/{id}/fulfil");
        let fulfilled = app.post_as(&partner, &path, json!({})).await;
        assert_eq!(fulfilled.status, 200, "{:?}", fulfilled.body);
        assert_eq!(fulfilled.body["redemption"]["status"], "fulfilled");
        let again = app.post(&path, json!({})).await;
        assert_eq!(again.status, 409);
        assert_eq!(again.code(), "redemption_not_issued");
        let cancel = app.post(&format!("/v1/reward-redemptions/{id}/cancel"), json!({})).await;
        assert_eq!(cancel.code(), "redemption_not_issued", "a fulfilled reward is not cancelled");
        assert_eq!(app.balance(member).await, (200, 0));
        assert_eq!(redemptions(&app, member).await[0]["status"], "fulfilled");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn goods_and_partner_rewards_yield_fulfilment_records() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 1_000).await;
        let goods = create_reward(&app, json!({ "kind": "goods", "name": "Wipers", "price_points": 400 })).await;
        let partner =
            create_reward(&app, json!({ "kind": "partner_reward", "name": "Cinema ticket", "price_points": 250 })).await;
        for (reward, kind) in [(goods, "goods"), (partner, "partner_reward")] {
            let answer = redeem(&app, reward, json!({ "member_id": member })).await;
            assert_eq!(answer.status, 201, "{:?}", answer.body);
            assert_eq!(answer.body["redemption"]["kind"], kind);
            assert_eq!(answer.body["redemption"]["status"], "issued");
            assert_eq!(stock(&app, reward).await, Value::Null, "unlimited stock stays unlimited");
        }
        assert_eq!(app.balance(member).await, (350, 0));
        assert_eq!(redemptions(&app, member).await.len(), 2);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_discount_voucher_carries_an_unguessable_code_and_its_value_for_checkout() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 500).await;
        let voucher = create_reward(
            &app,
            json!({ "kind": "discount_voucher", "name": "10% off", "price_points": 100,
                    "voucher": { "percent": 10, "valid_days": 30 } }),
        )
        .await;
        let first = redeem(&app, voucher, json!({ "member_id": member })).await;
        let second = redeem(&app, voucher, json!({ "member_id": member })).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        let code = |answer: &support::Answer| answer.body["redemption"]["voucher"]["code"].as_str().unwrap().to_string();
        assert_eq!(code(&first).len(), 19, "16 characters in groups of four");
        assert_ne!(code(&first), code(&second));
        let issued = &first.body["redemption"]["voucher"];
        assert_eq!(issued["percent"], 10);
        assert_eq!(issued["currency"], "RUB");
        assert_eq!(issued["expires_at"], "2026-02-14T10:00:00Z");
        assert_eq!(first.body["redemption"]["form"], "discount");
        assert_eq!(app.balance(member).await, (300, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn every_refusal_names_its_reason_and_consumes_neither_points_nor_stock() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 1_000).await;
        let later = "2026-06-01T00:00:00Z";
        let cases = [
            (
                json!({ "kind": "gift", "name": "Off", "price_points": 10, "stock": 3, "active": false }),
                "reward_not_available",
            ),
            (
                json!({ "kind": "gift", "name": "Soon", "price_points": 10, "stock": 3, "available_from": later }),
                "reward_not_available",
            ),
            (
                json!({ "kind": "gift", "name": "Gone", "price_points": 10, "stock": 3, "available_until": "2026-01-01T00:00:00Z" }),
                "reward_not_available",
            ),
            (json!({ "kind": "gift", "name": "Empty", "price_points": 10, "stock": 0 }), "reward_out_of_stock"),
            (
                json!({ "kind": "gift", "name": "Gold", "price_points": 10, "stock": 3, "tiers": ["gold"] }),
                "reward_tier_required",
            ),
            (json!({ "kind": "gift", "name": "Dear", "price_points": 5_000, "stock": 3 }), "insufficient_points"),
        ];
        for (spec, code) in cases {
            let reward = create_reward(&app, spec.clone()).await;
            let answer = redeem(&app, reward, json!({ "member_id": member })).await;
            assert_eq!(answer.status, 422, "{spec}: {:?}", answer.body);
            assert_eq!(answer.code(), code, "{spec}");
            assert_eq!(stock(&app, reward).await, spec["stock"], "{spec}: stock unchanged");
        }
        let form = create_reward(&app, json!({ "kind": "gift", "name": "Only an item", "price_points": 10 })).await;
        let answer = redeem(&app, form, json!({ "member_id": member, "form": "cashback" })).await;
        assert_eq!((answer.code(), answer.body["field"].as_str()), ("reward_form_not_offered", Some("form")));
        let answer = redeem(&app, 999, json!({ "member_id": member })).await;
        assert_eq!((answer.status.as_u16(), answer.code()), (404, "reward_not_found"));

        assert_eq!(app.balance(member).await, (1_000, 0));
        assert!(redemptions(&app, member).await.is_empty());
        assert_eq!(app.history_len(member).await, 1, "only the adjustment moved points");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_tier_restricted_reward_is_redeemable_by_members_of_that_tier() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 100).await;
        let reward =
            create_reward(&app, json!({ "kind": "gift", "name": "Lounge", "price_points": 50, "tiers": ["gold"] })).await;
        assert_eq!(redeem(&app, reward, json!({ "member_id": member })).await.code(), "reward_tier_required");
        let request = json!({ "tier": "gold" }).to_string().into_bytes();
        let path = format!("/v1/members/{member}/loyalty");
        let answer = app.send("PATCH", &path, &app.admin_key, Some("tier-gold"), Some(request)).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(redeem(&app, reward, json!({ "member_id": member })).await.status, 201);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_per_member_limit_holds_per_calendar_period_and_cancelled_redemptions_do_not_count() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 1_000).await;
        let other = member_with_points(&app, "C-2", 1_000).await;
        let coffee = create_reward(
            &app,
            json!({ "kind": "gift", "name": "Coffee", "price_points": 10, "member_limit": { "count": 1, "period": "month" } }),
        )
        .await;
        let first = redeem(&app, coffee, json!({ "member_id": member })).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        let refused = redeem(&app, coffee, json!({ "member_id": member })).await;
        assert_eq!(refused.code(), "reward_limit_reached");
        assert_eq!(redeem(&app, coffee, json!({ "member_id": other })).await.status, 201, "the limit is per member");

        let id = first.body["redemption"]["id"].as_i64().unwrap();
        let cancelled = app.post(&format!("/v1/reward-redemptions/{id}/cancel"), json!({})).await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
        assert_eq!(redeem(&app, coffee, json!({ "member_id": member })).await.status, 201);
        assert_eq!(redeem(&app, coffee, json!({ "member_id": member })).await.code(), "reward_limit_reached");

        app.advance_days(31);
        assert_eq!(redeem(&app, coffee, json!({ "member_id": member })).await.status, 201, "a new month");
        assert_eq!(app.balance(member).await, (980, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn cancelling_restores_the_points_and_the_stock() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 500).await;
        let gift = create_reward(&app, json!({ "kind": "gift", "name": "Mug", "price_points": 300, "stock": 1 })).await;
        let answer = redeem(&app, gift, json!({ "member_id": member })).await;
        assert_eq!(stock(&app, gift).await, 0);
        let id = answer.body["redemption"]["id"].as_i64().unwrap();
        let cancelled = app.post(&format!("/v1/reward-redemptions/{id}/cancel"), json!({})).await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
        assert_eq!(cancelled.body["redemption"]["status"], "cancelled");
        assert_eq!(cancelled.body["balance"]["available"], 500);
        assert_eq!(app.balance(member).await, (500, 0));
        assert_eq!(stock(&app, gift).await, 1);
        let history = app.get(&format!("/v1/members/{member}/history")).await;
        assert_eq!(history.body["items"][0]["kind"], "restore");
        let again = app.post(&format!("/v1/reward-redemptions/{id}/cancel"), json!({})).await;
        assert_eq!((again.status.as_u16(), again.code()), (409, "redemption_not_issued"));
        assert_eq!(app.balance(member).await, (500, 0), "a second cancellation restores nothing");
        assert_eq!(event_kinds(&app).await.iter().filter(|k| *k == "reward_cancelled").count(), 1);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn cashback_becomes_a_payout_owed_until_paid() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 500).await;
        let cashback = create_reward(&app, json!({ "kind": "cashback", "name": "Money back", "price_points": 200 })).await;
        let answer = redeem(&app, cashback, json!({ "member_id": member })).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let payout = &answer.body["payout"];
        // 200 points at 1 RUB (100 kopecks) each.
        assert_eq!(payout["amount_minor"], 20_000);
        assert_eq!(payout["currency"], "RUB");
        assert_eq!(payout["status"], "pending");
        assert_eq!(answer.body["redemption"]["cashback_payout_id"], payout["id"]);
        let history = app.get(&format!("/v1/members/{member}/history")).await;
        assert_eq!(history.body["items"][0]["postings"][1]["account"]["kind"], "cashback");

        let pending = app.get("/v1/cashback-payouts?status=pending").await;
        assert_eq!(pending.body["items"].as_array().unwrap().len(), 1);
        let redemption = answer.body["redemption"]["id"].as_i64().unwrap();
        let fulfil = app.post(&format!("/v1/reward-redemptions/{redemption}/fulfil"), json!({})).await;
        assert_eq!(fulfil.code(), "redemption_fulfilled_by_payout");

        let id = payout["id"].as_i64().unwrap();
        let paid = app.post(&format!("/v1/cashback-payouts/{id}/paid"), json!({})).await;
        assert_eq!(paid.status, 200, "{:?}", paid.body);
        assert_eq!(paid.body["payout"]["status"], "paid");
        assert_eq!(paid.body["redemption"]["status"], "fulfilled");
        let again = app.post(&format!("/v1/cashback-payouts/{id}/paid"), json!({})).await;
        assert_eq!(again.code(), "cashback_payout_not_pending");
        assert!(app.get("/v1/cashback-payouts?status=pending").await.body["items"].as_array().unwrap().is_empty());
        assert_eq!(app.get("/v1/cashback-payouts?status=paid").await.body["items"][0]["id"], id);
        assert_eq!(app.balance(member).await, (300, 0));
        let kinds = event_kinds(&app).await;
        let rewards: Vec<_> = kinds.iter().filter(|k| k.starts_with("reward_") || k.starts_with("cashback_")).collect();
        assert_eq!(rewards, ["reward_redeemed", "cashback_payout_created", "reward_fulfilled"]);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_cancelled_cashback_redemption_calls_off_its_payout_and_restores_the_points() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 500).await;
        let cashback = create_reward(&app, json!({ "kind": "cashback", "name": "Money back", "price_points": 200 })).await;
        let answer = redeem(&app, cashback, json!({ "member_id": member })).await;
        let redemption = answer.body["redemption"]["id"].as_i64().unwrap();
        let cancelled = app.post(&format!("/v1/reward-redemptions/{redemption}/cancel"), json!({})).await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
        assert_eq!(cancelled.body["payout"]["status"], "cancelled");
        let id = answer.body["payout"]["id"].as_i64().unwrap();
        assert_eq!(
            app.post(&format!("/v1/cashback-payouts/{id}/paid"), json!({})).await.code(),
            "cashback_payout_not_pending"
        );
        assert_eq!(app.balance(member).await, (500, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn the_member_chooses_the_form_among_those_offered() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 1_000).await;
        let choice = create_reward(
            &app,
            json!({ "kind": "gift", "name": "Birthday gift", "price_points": 100,
                    "forms": ["item", "points", "discount", "cashback"],
                    "points_credit": 120, "voucher": { "amount_minor": 15_000 } }),
        )
        .await;
        let item = redeem(&app, choice, json!({ "member_id": member })).await;
        assert_eq!(item.body["redemption"]["form"], "item", "the first form is the default");

        let points = redeem(&app, choice, json!({ "member_id": member, "form": "points" })).await;
        assert_eq!(points.status, 201, "{:?}", points.body);
        assert_eq!(points.body["redemption"]["points_credited"], 120);
        assert_eq!(points.body["redemption"]["status"], "fulfilled");
        assert_eq!(points.body["balance"]["available"], 1_000 - 100 - 100 + 120);

        let discount = redeem(&app, choice, json!({ "member_id": member, "form": "discount" })).await;
        assert_eq!(discount.body["redemption"]["voucher"]["amount_minor"], 15_000);

        let cashback = redeem(&app, choice, json!({ "member_id": member, "form": "cashback" })).await;
        assert_eq!(cashback.body["payout"]["amount_minor"], 10_000);
        assert_eq!(app.balance(member).await, (720, 0));

        let only_item = create_reward(&app, json!({ "kind": "goods", "name": "Tyre", "price_points": 10 })).await;
        let refused = redeem(&app, only_item, json!({ "member_id": member, "form": "points" })).await;
        assert_eq!((refused.status.as_u16(), refused.code()), (422, "reward_form_not_offered"));
        let unknown = redeem(&app, only_item, json!({ "member_id": member, "form": "gold" })).await;
        assert_eq!((unknown.status.as_u16(), unknown.code()), (400, "validation_failed"));
        assert_eq!(app.balance(member).await, (720, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn an_idempotent_retry_returns_the_first_answer_and_redeems_once() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 500).await;
        let gift = create_reward(
            &app,
            json!({ "kind": "discount_voucher", "name": "5%", "price_points": 100, "stock": 10,
            "voucher": { "percent": 5 } }),
        )
        .await;
        let body = json!({ "member_id": member }).to_string().into_bytes();
        let path = format!("/v1/rewards/{gift}/redeem");
        let first = app.send("POST", &path, &app.admin_key, Some("redeem-1"), Some(body.clone())).await;
        let retry = app.send("POST", &path, &app.admin_key, Some("redeem-1"), Some(body)).await;
        assert_eq!(first.status, 201);
        assert!(retry.replayed);
        assert_eq!(first.bytes, retry.bytes, "the same voucher code, byte for byte");
        assert_eq!(app.balance(member).await, (400, 0));
        assert_eq!(stock(&app, gift).await, 9);
        assert_eq!(redemptions(&app, member).await.len(), 1);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn concurrent_redemptions_never_take_more_than_the_stock() {
        let app = spawn_app().await;
        let gift =
            create_reward(&app, json!({ "kind": "gift", "name": "Last three", "price_points": 10, "stock": 3 })).await;
        let mut members = Vec::new();
        for index in 0..12 {
            members.push(member_with_points(&app, &format!("C-{index}"), 100).await);
        }
        let answers =
            futures::future::join_all(members.iter().map(|member| redeem(&app, gift, json!({ "member_id": member }))))
                .await;
        let won = answers.iter().filter(|a| a.status == 201).count();
        let sold_out = answers.iter().filter(|a| a.status == 422 && a.code() == "reward_out_of_stock").count();
        assert_eq!((won, sold_out), (3, 9), "{:?}", answers.iter().map(|a| &a.body).collect::<Vec<_>>());
        assert_eq!(stock(&app, gift).await, 0);
        let mut spent = 0;
        for member in &members {
            spent += 100 - app.balance(*member).await.0;
        }
        assert_eq!(spent, 30, "only the winners paid");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn concurrent_redemptions_by_one_member_respect_the_member_limit() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 1_000).await;
        let gift = create_reward(
            &app,
            json!({ "kind": "gift", "name": "Two each", "price_points": 10,
            "member_limit": { "count": 2 } }),
        )
        .await;
        let answers = futures::future::join_all((0..8).map(|_| redeem(&app, gift, json!({ "member_id": member })))).await;
        assert_eq!(answers.iter().filter(|a| a.status == 201).count(), 2);
        assert!(answers.iter().filter(|a| a.status != 201).all(|a| a.code() == "reward_limit_reached"));
        assert_eq!(app.balance(member).await, (980, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn the_catalogue_tells_a_member_what_they_may_redeem_and_why_not() {
        let app = spawn_app().await;
        let member = member_with_points(&app, "C-1", 100).await;
        let cheap = create_reward(&app, json!({ "kind": "gift", "name": "Pen", "price_points": 50 })).await;
        let dear = create_reward(&app, json!({ "kind": "gift", "name": "Bike", "price_points": 5_000 })).await;
        let list = app.get(&format!("/v1/rewards?member_id={member}")).await;
        assert_eq!(list.status, 200, "{:?}", list.body);
        let items = list.body["items"].as_array().unwrap();
        assert_eq!((items[0]["id"].as_i64(), items[0]["redeemable"].as_bool()), (Some(cheap), Some(true)));
        assert_eq!((items[1]["id"].as_i64(), items[1]["redeemable"].as_bool()), (Some(dear), Some(false)));
        assert_eq!(items[1]["refusal"]["code"], "insufficient_points");
        let plain = app.get("/v1/rewards").await;
        assert!(plain.body["items"][0].get("redeemable").is_none());
        let spec = app.get("/v1/openapi.json").await;
        for path in ["/v1/rewards", "/v1/rewards/{id}/redeem", "/v1/cashback-payouts/{id}/paid"] {
            assert!(spec.body["paths"].get(path).is_some(), "{path} is documented");
        }
        app.stop().await;
    }
}

both_stores! {
    async fn rewards_are_validated_field_by_field_and_updated_by_admins_only() {
        let app = spawn_app().await;
        let bad = [
            (json!({ "kind": "gift", "name": "", "price_points": 10 }), "name"),
            (json!({ "kind": "gift", "name": "X", "price_points": 0 }), "price_points"),
            (json!({ "kind": "gift", "name": "X", "price_points": 10, "stock": -1 }), "stock"),
            (
                json!({ "kind": "gift", "name": "X", "price_points": 10, "member_limit": { "count": 0 } }),
                "member_limit.count",
            ),
            (
                json!({ "kind": "gift", "name": "X", "price_points": 10, "available_from": "2026-02-01T00:00:00Z",
                        "available_until": "2026-01-01T00:00:00Z" }),
                "available_until",
            ),
            (json!({ "kind": "discount_voucher", "name": "X", "price_points": 10 }), "voucher"),
            (
                json!({ "kind": "discount_voucher", "name": "X", "price_points": 10, "voucher": { "percent": 150 } }),
                "voucher.percent",
            ),
            (json!({ "kind": "cashback", "name": "X", "price_points": 10, "forms": ["item"] }), "forms[0]"),
            (json!({ "kind": "gift", "name": "X", "price_points": 10, "forms": ["points"] }), "points_credit"),
            (json!({ "kind": "gift", "name": "X", "price_points": 10, "colour": "red" }), "colour"),
        ];
        for (spec, field) in bad {
            let answer = app.post("/v1/rewards", spec.clone()).await;
            assert_eq!(answer.status, 400, "{spec}: {:?}", answer.body);
            assert_eq!(answer.code(), "validation_failed", "{spec}");
            assert_eq!(answer.body["field"], field, "{spec}");
        }
        let id = create_reward(&app, json!({ "kind": "gift", "name": "Mug", "price_points": 10, "stock": 1 })).await;
        let update = json!({ "kind": "gift", "name": "Big mug", "price_points": 20, "stock": 7 }).to_string().into_bytes();
        let path = format!("/v1/rewards/{id}");
        let pos = app.create_key("pos").await;
        let forbidden = app.send("PUT", &path, &pos, Some("put-pos"), Some(update.clone())).await;
        assert_eq!(forbidden.status, 403);
        let updated = app.send("PUT", &path, &app.admin_key, Some("put-1"), Some(update)).await;
        assert_eq!(updated.status, 200, "{:?}", updated.body);
        let reward = app.get(&path).await.body;
        assert_eq!(
            (reward["name"].as_str(), reward["price_points"].as_i64(), reward["stock"].as_i64()),
            (Some("Big mug"), Some(20), Some(7))
        );
        let missing = app
            .send(
                "PUT",
                "/v1/rewards/999",
                &app.admin_key,
                Some("put-2"),
                Some(b"{\"kind\":\"gift\",\"name\":\"X\",\"price_points\":1}".to_vec()),
            )
            .await;
        assert_eq!((missing.status.as_u16(), missing.code()), (404, "reward_not_found"));
        app.stop().await;
    }
}

both_stores! {
    async fn the_readme_walk_through_holds() {
        let app = spawn_app().await;
        let anna = member_with_points(&app, "2000001", 100).await;
        let mug = create_reward(
            &app,
            json!({ "kind": "gift", "name": "Kopilka mug", "price_points": 40, "stock": 50,
                    "member_limit": { "count": 2, "period": "month" },
                    "forms": ["item", "discount", "cashback"], "voucher": { "percent": 10, "valid_days": 30 } }),
        )
        .await;
        assert_eq!(mug, 1);
        let list = app.get(&format!("/v1/rewards?member_id={anna}")).await;
        assert_eq!(list.body["items"][0]["redeemable"], true);
        assert_eq!(redeem(&app, mug, json!({ "member_id": anna })).await.body["redemption"]["id"], 1);
        let voucher = redeem(&app, mug, json!({ "member_id": anna, "form": "discount" })).await;
        assert_eq!(voucher.body["redemption"]["id"], 2);
        let fulfil = app.send("POST", "/v1/reward-redemptions/1/fulfil", &app.admin_key, Some("mug-handed-over"), None);
        assert_eq!(fulfil.await.status, 200);
        let cancel = app.send("POST", "/v1/reward-redemptions/2/cancel", &app.admin_key, Some("voucher-back"), None);
        assert_eq!(cancel.await.status, 200);
        let cashback = redeem(&app, mug, json!({ "member_id": anna, "form": "cashback" })).await;
        assert_eq!(cashback.status, 201, "{:?}", cashback.body);
        assert_eq!(
            (cashback.body["payout"]["id"].as_i64(), cashback.body["payout"]["amount_minor"].as_i64()),
            (Some(1), Some(4_000))
        );
        assert_eq!(app.get("/v1/cashback-payouts?status=pending").await.body["items"][0]["id"], 1);
        let paid = app.send("POST", "/v1/cashback-payouts/1/paid", &app.admin_key, Some("payout-1-paid"), None);
        assert_eq!(paid.await.status, 200);
        assert_eq!(app.balance(anna).await, (20, 0));
        assert_eq!(stock(&app, mug).await, 48);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn redemptions_in_one_batch_see_each_others_stock_and_limits() {
        use kopilka_core::rewards::RewardId;
        use kopilka_core::{MemberId, TenantId};
        use kopilka_server::engine::{Command, Idempotency, Request};
        use kopilka_server::rewards::RewardCommand;
        use std::sync::atomic::Ordering;

        let app = spawn_app().await;
        let state = &app.running.as_ref().unwrap().state;
        let scarce =
            create_reward(&app, json!({ "kind": "gift", "name": "Three left", "price_points": 10, "stock": 3 })).await;
        let once = create_reward(
            &app,
            json!({ "kind": "gift", "name": "Once each", "price_points": 10, "member_limit": { "count": 1 } }),
        )
        .await;
        let mut members = Vec::new();
        for index in 0..5 {
            members.push(member_with_points(&app, &format!("C-{index}"), 100).await);
        }
        let redeem = |key: String, reward: i64, member: i64| Request {
            tenant: TenantId(1),
            idempotency: Some(Idempotency::new(key.clone(), key.into_bytes())),
            command: Command::Reward(RewardCommand::Redeem {
                reward_id: RewardId(reward),
                member_id: MemberId(member),
                form: None,
                program_id: None,
                voucher_code: String::new(),
            }),
        };
        let mut requests: Vec<Request> = members.iter().map(|m| redeem(format!("scarce-{m}"), scarce, *m)).collect();
        requests.extend((0..3).map(|i| redeem(format!("once-{i}"), once, members[0])));

        let batches_before = state.metrics.writer_batches.load(Ordering::Relaxed);
        let held = state.writer.hold();
        let answers = futures::future::join_all(requests.into_iter().map(|r| state.writer.enqueue(r))).await;
        drop(held);
        let answers = futures::future::join_all(answers.into_iter().map(|answer| async move { answer?.await })).await;
        let batches = state.metrics.writer_batches.load(Ordering::Relaxed) - batches_before;
        assert!(batches <= 2, "the burst shared a batch (took {batches} commits)");
        let codes: Vec<String> = answers
            .iter()
            .map(|answer| match answer {
                Ok(reply) => reply.status.to_string(),
                Err(error) => error.problem().code,
            })
            .collect();
        assert_eq!(
            codes,
            [
                "201",
                "201",
                "201",
                "reward_out_of_stock",
                "reward_out_of_stock",
                "201",
                "reward_limit_reached",
                "reward_limit_reached",
            ]
        );
        assert_eq!(stock(&app, scarce).await, 0);
        assert_eq!(app.balance(members[0]).await, (80, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}
