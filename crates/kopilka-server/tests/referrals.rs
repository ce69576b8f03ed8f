//! Referrals end to end on a fake clock: the welcome bonus at sign-up, the referrer's reward only
//! once the friend's first qualifying purchase left its return window, none after a return, the
//! referrer's limits, and every self-referral guard, each recorded with its reason while the new
//! member is still enrolled.

mod support;

use support::both_stores;

use serde_json::{json, Value};
use support::{spawn_app, TestApp};

/// Turns the referral program on: 50 points welcome, 100 for the referrer, purchases from
/// 500.00 RUB qualify, at most `limit_total` referrals per referrer.
async fn with_referrals(app: &TestApp, limit_total: Option<u32>) {
    let mut program: Value = app.get("/v1/programs/1").await.body["program"].clone();
    program["referrals"] = json!({
        "welcome_points": 50, "referrer_points": 100, "min_purchase_minor": 50_000,
        "link_base": "https://shop.example.com/", "limit_total": limit_total, "check_device": true,
    });
    let answer = app
        .send(
            "PUT",
            "/v1/programs/1",
            &app.admin_key,
            Some("program-referrals"),
            Some(program.to_string().into_bytes()),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

async fn code_of(app: &TestApp, member: i64) -> String {
    let answer = app.get(&format!("/v1/members/{member}/referrals")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["code"].as_str().unwrap().to_string()
}

async fn sign_up(app: &TestApp, body: Value) -> Value {
    let answer = app.post("/v1/members", body).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body
}

both_stores! {
    async fn the_referrer_is_rewarded_only_after_the_friends_purchase_leaves_its_return_window() {
        let app = spawn_app().await;
        with_referrals(&app, None).await;
        let anna = app.create_member("1001").await;
        let code = code_of(&app, anna).await;
        let referrals = app.get(&format!("/v1/members/{anna}/referrals")).await.body;
        assert_eq!(referrals["code"], code.as_str(), "the code is assigned once");
        assert_eq!(referrals["link"], format!("https://shop.example.com/r/{code}"));

        let boris =
            sign_up(&app, json!({ "card": "1002", "referral_code": code.to_lowercase(), "device_id": "dev-b" })).await;
        assert_eq!(boris["referral"]["status"], "accepted");
        let boris = boris["id"].as_i64().unwrap();
        assert_eq!(app.balance(boris).await, (50, 0), "the welcome bonus is available at once");

        // Too small to qualify, then a qualifying purchase.
        assert_eq!(app.purchase(boris, "R-1", 10_000).await.status, 201);
        app.advance_days(1);
        assert_eq!(app.purchase(boris, "R-2", 100_000).await.status, 201);
        app.advance_days(13);
        app.run_job("referrals").await;
        assert_eq!(app.balance(anna).await, (0, 0), "still inside the return window");
        app.advance_days(1);
        app.run_job("referrals").await;
        assert_eq!(app.balance(anna).await, (100, 0));
        app.run_job("referrals").await;
        assert_eq!(app.balance(anna).await, (100, 0), "rewarded once");

        let referrals = app.get(&format!("/v1/members/{anna}/referrals")).await.body;
        let referred = referrals["referred"].as_array().unwrap();
        assert_eq!(referred.len(), 1);
        assert_eq!(referred[0]["referred_id"], boris);
        assert_eq!(referred[0]["status"], "rewarded");
        let by = app.get(&format!("/v1/members/{boris}/referrals")).await.body;
        assert_eq!(by["referred_by"]["referrer_id"], anna);
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn a_returned_qualifying_purchase_voids_the_referral() {
        let app = spawn_app().await;
        with_referrals(&app, None).await;
        let anna = app.create_member("2001").await;
        let code = code_of(&app, anna).await;
        let boris = sign_up(&app, json!({ "card": "2002", "referral_code": code })).await["id"].as_i64().unwrap();
        assert_eq!(app.purchase(boris, "R-1", 100_000).await.status, 201);
        app.advance_days(3);
        let returned = app.post("/v1/returns", json!({ "purchase_external_id": "R-1" })).await;
        assert_eq!(returned.status, 201, "{:?}", returned.body);
        app.advance_days(30);
        app.run_job("referrals").await;
        assert_eq!(app.balance(anna).await, (0, 0));
        let referrals = app.get(&format!("/v1/members/{anna}/referrals")).await.body;
        assert_eq!(referrals["referred"][0]["status"], "voided");
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn self_referrals_are_rejected_with_their_reason_and_the_member_is_still_enrolled() {
        let app = spawn_app().await;
        with_referrals(&app, None).await;
        let anna = sign_up(
            &app,
            json!({ "card": "3000001", "phone": "+79120000001", "email": "anna.k@example.com", "device_id": "phone-anna" }),
        )
        .await;
        assert!(anna.get("referral").is_none());
        let anna = anna["id"].as_i64().unwrap();
        let code = code_of(&app, anna).await;
        let cases = [
            (json!({ "phone": "+89120000001" }), "self_referral_shared_phone"),
            (json!({ "email": "AnnaK+promo@example.com" }), "self_referral_shared_email"),
            (json!({ "card": "0003000001" }), "self_referral_shared_card"),
            (json!({ "card": "3000009", "device_id": "phone-anna" }), "self_referral_shared_device"),
        ];
        for (mut body, reason) in cases {
            body["referral_code"] = json!(code);
            let member = sign_up(&app, body).await;
            assert_eq!(member["referral"]["status"], "rejected", "{member}");
            assert_eq!(member["referral"]["reason"], reason);
            let id = member["id"].as_i64().unwrap();
            assert_eq!(app.get(&format!("/v1/members/{id}")).await.status, 200, "enrolled all the same");
            assert_eq!(app.balance(id).await, (0, 0), "no welcome bonus");
        }
        let referred = app.get(&format!("/v1/members/{anna}/referrals")).await.body["referred"].clone();
        let reasons: Vec<&str> = referred.as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
        assert_eq!(
            reasons,
            [
                "self_referral_shared_phone",
                "self_referral_shared_email",
                "self_referral_shared_card",
                "self_referral_shared_device"
            ]
        );
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn a_referrer_over_the_limit_brings_members_without_bonuses() {
        let app = spawn_app().await;
        with_referrals(&app, Some(2)).await;
        let anna = app.create_member("4001").await;
        let code = code_of(&app, anna).await;
        let mut statuses = Vec::new();
        for card in ["4002", "4003", "4004"] {
            let member = sign_up(&app, json!({ "card": card, "referral_code": code })).await;
            statuses.push((member["referral"]["status"].clone(), member["referral"]["reason"].clone()));
        }
        assert_eq!(statuses[0].0, "accepted");
        assert_eq!(statuses[1].0, "accepted");
        assert_eq!(statuses[2], (json!("rejected"), json!("referrer_limit_reached")));
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn an_unknown_code_or_a_program_without_referrals_is_refused_and_writes_nothing() {
        let app = spawn_app().await;
        let anna = app.create_member("5001").await;
        let code = code_of(&app, anna).await;
        let refused = app.post("/v1/members", json!({ "card": "5002", "referral_code": code })).await;
        assert_eq!(refused.status, 422);
        assert_eq!(refused.code(), "referrals_not_offered");
        with_referrals(&app, None).await;
        let refused = app.post("/v1/members", json!({ "card": "5002", "referral_code": "NOPE" })).await;
        assert_eq!(refused.status, 422);
        assert_eq!(refused.code(), "referral_code_unknown");
        let found = app.get("/v1/members?card=5002").await;
        assert!(found.body["items"].as_array().is_none_or(Vec::is_empty), "{:?}", found.body);
        let bad = app.post("/v1/members", json!({ "card": "5003", "referral_code": 7 })).await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.code(), "validation_failed");
        app.assert_ledger_sound().await;
    }
}

/// The outbox's events of `kind`, payloads parsed, oldest first.
async fn outbox(app: &TestApp, kind: &str) -> Vec<Value> {
    let store = &app.running.as_ref().unwrap().state.store;
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM events WHERE kind = $1 ORDER BY id")
        .bind(kind)
        .fetch_all(&store.pool)
        .await
        .unwrap();
    payloads.iter().map(|p| serde_json::from_str(p).unwrap()).collect()
}

both_stores! {
    async fn a_return_after_the_window_closed_does_not_void_the_referral_however_late_the_job_runs() {
        let app = spawn_app().await;
        with_referrals(&app, None).await;
        let anna = app.create_member("6001").await;
        let code = code_of(&app, anna).await;
        let boris = sign_up(&app, json!({ "card": "6002", "referral_code": code })).await["id"].as_i64().unwrap();
        let olga = sign_up(&app, json!({ "card": "6003", "referral_code": code })).await["id"].as_i64().unwrap();
        assert_eq!(app.purchase(boris, "B-1", 100_000).await.status, 201);
        assert_eq!(app.purchase(olga, "O-1", 100_000).await.status, 201);
        // Olga returns on the window's last day, Boris the day after it closed; the job was down.
        app.advance_days(13);
        assert_eq!(app.post("/v1/returns", json!({ "purchase_external_id": "O-1" })).await.status, 201);
        app.advance_days(2);
        assert_eq!(app.post("/v1/returns", json!({ "purchase_external_id": "B-1" })).await.status, 201);
        app.advance_days(10);
        app.run_job("referrals").await;
        let referred = app.get(&format!("/v1/members/{anna}/referrals")).await.body["referred"].clone();
        let statuses: Vec<(i64, &str)> = referred
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["referred_id"].as_i64().unwrap(), r["status"].as_str().unwrap()))
            .collect();
        assert_eq!(statuses, [(boris, "rewarded"), (olga, "voided")]);
        assert_eq!(app.balance(anna).await, (100, 0));
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn referral_events_reach_the_outbox_with_their_payloads() {
        let app = spawn_app().await;
        with_referrals(&app, None).await;
        let anna = app.create_member("7001").await;
        let code = code_of(&app, anna).await;
        let boris = sign_up(&app, json!({ "card": "7002", "referral_code": code })).await["id"].as_i64().unwrap();
        let twin = sign_up(&app, json!({ "card": "0007001", "referral_code": code })).await["id"].as_i64().unwrap();
        assert_eq!(app.purchase(boris, "R-1", 100_000).await.status, 201);
        app.advance_days(15);
        app.run_job("referrals").await;
        app.run_job("referrals").await;

        let accepted = outbox(&app, "referral_accepted").await;
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        assert_eq!(
            (&accepted[0]["member_id"], &accepted[0]["referrer_id"], &accepted[0]["welcome_points"]),
            (&json!(boris), &json!(anna), &json!(50))
        );
        let rejected = outbox(&app, "referral_rejected").await;
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (&rejected[0]["member_id"], &rejected[0]["referrer_id"], &rejected[0]["reason"]),
            (&json!(twin), &json!(anna), &json!("self_referral_shared_card"))
        );
        let rewarded = outbox(&app, "referral_rewarded").await;
        assert_eq!(rewarded.len(), 1, "rewarded once over two runs: {rewarded:?}");
        assert_eq!(
            (&rewarded[0]["member_id"], &rewarded[0]["referred_id"], &rewarded[0]["points"]),
            (&json!(anna), &json!(boris), &json!(100))
        );
    }
}
