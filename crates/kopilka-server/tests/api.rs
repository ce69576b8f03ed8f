//! The API over real HTTP against a real server on loopback with SQLite in a temp dir.

mod support;

use support::both_stores;

use serde_json::json;
use support::{purchase_body, spawn_app};

both_stores! {
    async fn purchase_earns_pending_points_that_become_available_after_the_return_window() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        let answer = app.purchase(member, "R-1", 4_000_00).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        assert_eq!(answer.body["purchase"]["points_earned"], 40);
        assert_eq!(app.balance(member).await, (0, 40));

        app.advance_days(15);
        // Reads show the state the lots are in now, before any job ran.
        assert_eq!(app.balance(member).await, (40, 0));
        let report = app.run_job("activate").await;
        assert_eq!(report["movements"], 1);
        assert_eq!(app.run_job("activate").await["movements"], 0, "a second run changes nothing");
        let lots = app.get(&format!("/v1/members/{member}/lots")).await;
        assert_eq!(lots.body["items"][0]["state"], "available");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn points_expire_after_twelve_months_and_the_job_is_idempotent() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        app.purchase(member, "R-1", 1_000_00).await;
        app.advance_days(366);
        assert_eq!(app.balance(member).await, (0, 0));
        let report = app.run_job("expiry").await;
        assert_eq!(report["movements"], 1);
        assert_eq!(app.run_job("expiry").await["movements"], 0);
        let history = app.get(&format!("/v1/members/{member}/history")).await;
        assert_eq!(history.body["items"][0]["kind"], "expire");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_retry_returns_the_first_answer_byte_for_byte_and_moves_nothing() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        let body = purchase_body(member, "R-1", 1_000_00, 0).to_string().into_bytes();
        let first = app.send("POST", "/v1/purchases", &app.admin_key, Some("same"), Some(body.clone())).await;
        let retry = app.send("POST", "/v1/purchases", &app.admin_key, Some("same"), Some(body)).await;
        assert_eq!(first.status, 201);
        assert_eq!(retry.status, 201);
        assert!(retry.replayed && !first.replayed);
        assert_eq!(first.bytes, retry.bytes);
        assert_eq!(app.balance(member).await, (0, 10));
        assert_eq!(app.history_len(member).await, 1);

        let other = purchase_body(member, "R-2", 5_00, 0).to_string().into_bytes();
        let reused = app.send("POST", "/v1/purchases", &app.admin_key, Some("same"), Some(other)).await;
        assert_eq!(reused.status, 422);
        assert_eq!(reused.code(), "idempotency_key_reused");
        assert_eq!(app.history_len(member).await, 1);
        app.stop().await;
    }
}

both_stores! {
    async fn a_full_return_restores_points_spent_on_the_purchase_and_reverses_points_earned() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        app.adjust(member, 300).await;
        let answer = app.post("/v1/purchases", purchase_body(member, "R-1", 1_000_00, 200)).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        // 1,000 RUB less 200 RUB paid in points: 8 points earned on 800 RUB.
        assert_eq!(answer.body["purchase"]["points_earned"], 8);
        assert_eq!(app.balance(member).await, (100, 8));

        let returned = app.post("/v1/returns", json!({ "purchase_external_id": "R-1" })).await;
        assert_eq!(returned.status, 201, "{:?}", returned.body);
        assert_eq!(returned.body["points_restored"], 200);
        assert_eq!(returned.body["points_reversed"], 8);
        assert_eq!(app.balance(member).await, (300, 0));
        let again = app.post("/v1/returns", json!({ "purchase_external_id": "R-1" })).await;
        assert_eq!(again.code(), "nothing_to_return");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_partial_return_by_line_reverses_in_proportion() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        let body = json!({
            "member_id": member, "external_id": "R-1", "currency": "RUB",
            "lines": [
                { "sku": "TYRE", "quantity": 4, "unit_price_minor": 500_000 },
                { "sku": "OIL", "quantity": 1, "unit_price_minor": 100_000 },
            ],
        });
        let answer = app.post("/v1/purchases", body).await;
        assert_eq!(answer.body["purchase"]["points_earned"], 210);
        let returned = app
            .post(
                "/v1/returns",
                json!({ "purchase_id": answer.body["purchase"]["id"], "lines": [{ "line": 0, "quantity": 1 }] }),
            )
            .await;
        assert_eq!(returned.status, 201, "{:?}", returned.body);
        assert_eq!(returned.body["points_reversed"], 50);
        assert_eq!(returned.body["returned_minor"], 500_000);
        let too_many = app
            .post("/v1/returns", json!({ "purchase_external_id": "R-1", "lines": [{ "line": 0, "quantity": 4 }] }))
            .await;
        assert_eq!(too_many.status, 422);
        assert_eq!(too_many.code(), "return_exceeds_purchase");
        assert_eq!(app.balance(member).await, (0, 160));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn concurrent_redemptions_on_one_member_never_overdraw() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        app.adjust(member, 100).await;
        let attempts = (0..60).map(|i| {
            let app = &app;
            async move {
                let key = format!("redeem-{i}");
                let body = json!({ "member_id": member, "points": 10 }).to_string().into_bytes();
                app.send("POST", "/v1/redemptions", &app.admin_key, Some(&key), Some(body)).await
            }
        });
        let answers = futures::future::join_all(attempts).await;
        let accepted = answers.iter().filter(|a| a.status == 201).count();
        let refused: Vec<_> = answers.iter().filter(|a| a.status != 201).collect();
        assert_eq!(accepted, 10);
        assert!(refused.iter().all(|a| a.code() == "insufficient_points"));
        assert_eq!(app.balance(member).await, (0, 0));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn merging_moves_points_and_history_and_old_identifiers_find_the_survivor() {
        let app = spawn_app().await;
        let survivor = app.create_member("C-1").await;
        let absorbed = app.create_member("C-2").await;
        app.purchase(absorbed, "R-1", 2_000_00).await;
        app.adjust(absorbed, 50).await;
        let merged = app.post(&format!("/v1/members/{survivor}/merge"), json!({ "absorbed_id": absorbed })).await;
        assert_eq!(merged.status, 200, "{:?}", merged.body);
        assert_eq!(merged.body["points_moved"], 70);
        assert_eq!(app.balance(survivor).await, (50, 20));
        let found = app.get("/v1/members?card=C-2").await;
        assert_eq!(found.body["items"][0]["id"], survivor);
        assert!(app.history_len(survivor).await >= 3);
        // The absorbed member's purchase can still be returned; it comes off the survivor.
        let returned = app.post("/v1/returns", json!({ "purchase_external_id": "R-1" })).await;
        assert_eq!(returned.status, 201, "{:?}", returned.body);
        assert_eq!(app.balance(survivor).await, (50, 0));
        let again = app.post(&format!("/v1/members/{survivor}/merge"), json!({ "absorbed_id": absorbed })).await;
        assert_eq!(again.code(), "member_merged");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn members_are_found_by_any_identifier_and_identifiers_stay_unique() {
        let app = spawn_app().await;
        let created = app
            .post(
                "/v1/members",
                json!({ "card": "C-9", "phone": "+7 (912) 000-00-09", "email": "Anna@Example.com",
                "external_id": "crm-9", "name": "Anna", "birth_date": "1990-02-28", "gender": "female", "city": "Kazan",
                "consents": { "email": true } }),
            )
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let id = created.body["id"].clone();
        for query in ["card=C-9", "phone=%2B79120000009", "email=anna%40example.com", "external_id=crm-9"] {
            let found = app.get(&format!("/v1/members?{query}")).await;
            assert_eq!(found.body["items"][0]["id"], id, "{query}");
        }
        let taken = app.post("/v1/members", json!({ "phone": "+79120000009" })).await;
        assert_eq!(taken.status, 409);
        assert_eq!(taken.code(), "identifier_taken");
        let patched = app
            .send(
                "PATCH",
                &format!("/v1/members/{id}"),
                &app.admin_key,
                Some("patch-1"),
                Some(br#"{"city":"Perm","name":null}"#.to_vec()),
            )
            .await;
        assert_eq!(patched.status, 200, "{:?}", patched.body);
        assert_eq!(patched.body["city"], "Perm");
        assert_eq!(patched.body["name"], serde_json::Value::Null);
        assert_eq!(patched.body["card"], "C-9");
        app.stop().await;
    }
}

both_stores! {
    async fn bad_input_gets_its_problem_code_and_writes_nothing() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        app.adjust(member, 100).await;
        let before = (app.balance(member).await, app.history_len(member).await);
        let line = |quantity: i64, price: i64| json!([{ "sku": "A", "quantity": quantity, "unit_price_minor": price }]);
        let cases = [
            (
                "/v1/purchases",
                json!({ "member_id": 999, "external_id": "X1", "currency": "RUB", "lines": line(1, 100) }),
                404,
                "member_not_found",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X2", "currency": "RUB", "lines": line(0, 100) }),
                400,
                "validation_failed",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X3", "currency": "RUB", "lines": line(1, -5) }),
                400,
                "validation_failed",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X4", "currency": "XYZ", "lines": line(1, 100) }),
                400,
                "unknown_currency",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X5", "currency": "EUR", "lines": line(1, 100) }),
                422,
                "currency_mismatch",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X6", "currency": "RUB", "lines": [] }),
                400,
                "validation_failed",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X7", "currency": "RUB", "lines": line(1, 100_00), "redeem_points": 60 }),
                422,
                "redeem_share_exceeded",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X8", "currency": "RUB", "lines": line(1, 100_000_00), "redeem_points": 101 }),
                422,
                "insufficient_points",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X9", "currency": "RUB", "lines": line(1, 100), "bonus": 1 }),
                400,
                "validation_failed",
            ),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X10", "currency": "RUB",
                        "lines": [{ "sku": "A", "quantity": 1, "unit_price_minor": 100, "discount": 5 }] }),
                400,
                "validation_failed",
            ),
            ("/v1/redemptions", json!({ "member_id": member, "points": 101 }), 422, "insufficient_points"),
            ("/v1/redemptions", json!({ "member_id": member, "points": 0 }), 400, "validation_failed"),
            ("/v1/redemptions", json!({ "member_id": member, "points": -5 }), 400, "validation_failed"),
            (
                "/v1/redemptions",
                json!({ "member_id": member, "points": 60, "bill_minor": 100_00 }),
                422,
                "redeem_share_exceeded",
            ),
            ("/v1/adjustments", json!({ "member_id": member, "points": -101, "reason": "x" }), 422, "insufficient_points"),
            ("/v1/adjustments", json!({ "member_id": member, "points": 5, "reason": "" }), 400, "validation_failed"),
            ("/v1/returns", json!({ "purchase_external_id": "nope" }), 404, "purchase_not_found"),
            ("/v1/members", json!({ "email": "not-an-email" }), 400, "validation_failed"),
            // PostgreSQL cannot store U+0000 and SQLite can: refused alike on both, nothing written.
            ("/v1/members", json!({ "name": "Anna\u{0}" }), 400, "nul_character"),
            ("/v1/members", json!({ "email": "a\u{0}b@example.com" }), 400, "nul_character"),
            ("/v1/adjustments", json!({ "member_id": member, "points": 5, "reason": "x\u{0}" }), 400, "nul_character"),
            (
                "/v1/purchases",
                json!({ "member_id": member, "external_id": "X\u{0}11", "currency": "RUB", "lines": line(1, 100) }),
                400,
                "nul_character",
            ),
        ];
        for (path, body, status, code) in cases {
            let answer = app.post(path, body.clone()).await;
            assert_eq!((answer.status.as_u16(), answer.code()), (status, code), "{path} {body}: {:?}", answer.body);
        }

        let malformed =
            app.send("POST", "/v1/purchases", &app.admin_key, Some("m"), Some(b"{\"member_id\": ".to_vec())).await;
        assert_eq!((malformed.status.as_u16(), malformed.code()), (400, "malformed_json"));
        let huge = vec![b' '; 300 * 1024];
        let oversized = app.send("POST", "/v1/purchases", &app.admin_key, Some("o"), Some(huge)).await;
        assert_eq!((oversized.status.as_u16(), oversized.code()), (413, "payload_too_large"));
        let no_key = app.send("POST", "/v1/redemptions", &app.admin_key, None, Some(b"{}".to_vec())).await;
        assert_eq!((no_key.status.as_u16(), no_key.code()), (400, "idempotency_key_missing"));

        for path in ["/v1/members?email=a%00b%40example.com", "/v1/coupons/AB%00C", "/v1/members/1%00"] {
            let answer = app.get(path).await;
            assert_eq!((answer.status.as_u16(), answer.code()), (400, "nul_character"), "{path}");
        }

        assert_eq!((app.balance(member).await, app.history_len(member).await), before);
        // A backslash before `u0000` is text, not the character, and is kept as sent.
        let reason = "C:\\u0000";
        let kept = app.post("/v1/adjustments", json!({ "member_id": member, "points": 5, "reason": reason })).await;
        assert_eq!(kept.status, 201, "{:?}", kept.body);
        let history = app.get(&format!("/v1/members/{member}/history")).await;
        assert!(history.body.to_string().contains("C:\\\\u0000"), "{:?}", history.body);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn roles_limit_what_a_key_may_do() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        let pos = app.create_key("pos").await;
        let analyst = app.create_key("analyst").await;
        let adjustment = json!({ "member_id": member, "points": 5, "reason": "goodwill" });
        assert_eq!(app.post_as(&pos, "/v1/adjustments", adjustment.clone()).await.code(), "forbidden_role");
        assert_eq!(
            app.post_as(&analyst, "/v1/purchases", purchase_body(member, "R-1", 100_00, 0)).await.code(),
            "forbidden_role"
        );
        assert_eq!(app.post_as(&pos, "/v1/purchases", purchase_body(member, "R-1", 100_00, 0)).await.status, 201);
        assert_eq!(app.send("GET", &format!("/v1/members/{member}/balance"), &analyst, None, None).await.status, 200);
        assert_eq!(app.send("GET", "/v1/members/1", "kpk_wrong", None, None).await.code(), "unauthorized");
        let anonymous = app.client.get(format!("{}/v1/members/1", app.base)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        assert_eq!(app.history_len(member).await, 1);
        app.stop().await;
    }
}

both_stores! {
    async fn tenants_are_isolated() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        app.purchase(member, "R-1", 100_00).await;
        // An operator creates a second tenant; its admin cannot see or touch the first tenant's data.
        let state = &app.running.as_ref().unwrap().state;
        let operator = kopilka_server::auth::generate_key();
        let command = kopilka_server::engine::Command::CreateApiKey {
            key: operator.clone(),
            role: kopilka_store::Role::Operator,
            name: "ops".into(),
        };
        let request = kopilka_server::engine::Request { tenant: kopilka_core::TenantId(0), idempotency: None, command };
        state.writer.submit(request).await.unwrap();
        let tenant = app.post_as(&operator, "/v1/tenants", json!({ "name": "Second brand" })).await;
        assert_eq!(tenant.status, 201, "{:?}", tenant.body);
        let other = tenant.body["admin_key"].as_str().unwrap().to_string();
        assert_eq!(app.send("GET", &format!("/v1/members/{member}"), &other, None, None).await.code(), "member_not_found");
        assert_eq!(
            app.post_as(&other, "/v1/returns", json!({ "purchase_external_id": "R-1" })).await.code(),
            "purchase_not_found"
        );
        // The same receipt number is free in the other tenant.
        let their_member = app.post_as(&other, "/v1/members", json!({ "card": "C-1" })).await;
        assert_eq!(their_member.status, 201, "{:?}", their_member.body);
        let their_id = their_member.body["id"].as_i64().unwrap();
        assert_eq!(app.post_as(&other, "/v1/purchases", purchase_body(their_id, "R-1", 100_00, 0)).await.status, 201);
        assert_eq!(
            app.post_as(&operator, "/v1/purchases", purchase_body(their_id, "R-2", 100_00, 0)).await.code(),
            "forbidden_role"
        );
        app.stop().await;
    }
}

both_stores! {
    async fn history_pages_with_a_cursor() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        for i in 0..5 {
            app.purchase(member, &format!("R-{i}"), 100_00).await;
        }
        let first = app.get(&format!("/v1/members/{member}/history?limit=2")).await;
        let cursor = first.body["next_cursor"].as_str().unwrap().to_string();
        let second = app.get(&format!("/v1/members/{member}/history?limit=2&cursor={cursor}")).await;
        let ids = |a: &support::Answer| {
            a.body["items"].as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect::<Vec<_>>()
        };
        let (a, b) = (ids(&first), ids(&second));
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 2);
        assert!(a[1] > b[0], "newest first, no overlap: {a:?} {b:?}");
        assert_eq!(app.get(&format!("/v1/members/{member}/history?limit=0")).await.code(), "validation_failed");
        app.stop().await;
    }
}

both_stores! {
    async fn openapi_health_and_metrics_are_served() {
        let app = spawn_app().await;
        let spec = app.client.get(format!("{}/v1/openapi.json", app.base)).send().await.unwrap();
        let spec: serde_json::Value = spec.json().await.unwrap();
        assert_eq!(spec["openapi"].as_str().unwrap().chars().next(), Some('3'));
        for path in [
            "/v1/purchases",
            "/v1/returns",
            "/v1/redemptions",
            "/v1/members/{id}/history",
            "/v1/members/{id}/referrals",
            "/v1/partners",
            "/v1/partners/{id}/api-keys",
            "/v1/partners/{id}/settlement",
            "/v1/partners/{id}/members/{member_id}/balance",
            "/v1/partner-purchases",
            "/v1/partner-redemptions",
            "/v1/partner-returns",
            "/v1/exchanges",
        ] {
            assert!(spec["paths"].get(path).is_some(), "{path} missing from the spec");
        }
        let health = app.client.get(format!("{}/healthz", app.base)).send().await.unwrap();
        assert_eq!(health.status(), 200);
        app.create_member("C-1").await;
        let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("kopilka_writer_commands_total"), "{metrics}");
        assert!(metrics.contains("kopilka_writer_stage_microseconds_total{stage=\"commit\"}"), "{metrics}");
        assert!(metrics.contains("route=\"/v1/members\""), "{metrics}");
        let unknown = app.get("/v1/nope").await;
        assert_eq!(unknown.code(), "route_not_found");
        app.stop().await;
    }
}

both_stores! {
    async fn programs_are_versioned_and_validated() {
        let app = spawn_app().await;
        let current = app.get("/v1/programs/1").await;
        assert_eq!(current.body["version"], 1);
        let mut program = current.body["program"].clone();
        program["earn_rate"]["points"] = json!(10);
        let updated =
            app.send("PUT", "/v1/programs/1", &app.admin_key, Some("p-1"), Some(program.to_string().into_bytes())).await;
        assert_eq!(updated.status, 200, "{:?}", updated.body);
        assert_eq!(updated.body["version"], 2);
        let member = app.create_member("C-1").await;
        let answer = app.purchase(member, "R-1", 100_00).await;
        assert_eq!(answer.body["purchase"]["points_earned"], 10, "10 points per 100 RUB now");
        assert_eq!(answer.body["purchase"]["program_version"], 2);
        program["max_redeem_share_percent"] = json!(150);
        let bad =
            app.send("PUT", "/v1/programs/1", &app.admin_key, Some("p-2"), Some(program.to_string().into_bytes())).await;
        assert_eq!((bad.status.as_u16(), bad.code()), (400, "validation_failed"));
        assert_eq!(bad.body["field"], "max_redeem_share_percent");
        app.stop().await;
    }
}

both_stores! {
    async fn a_member_can_get_all_their_data_and_have_it_erased() {
        let app = spawn_app().await;
        let created = app
            .post("/v1/members", json!({ "card": "C-7", "email": "olga@example.com", "name": "Olga", "city": "Omsk" }))
            .await;
        let member = created.body["id"].as_i64().unwrap();
        app.purchase(member, "R-1", 1_500_00).await;
        let export = app.get(&format!("/v1/members/{member}/export")).await;
        assert_eq!(export.status, 200, "{:?}", export.body);
        assert_eq!(export.body["member"]["email"], "olga@example.com");
        assert_eq!(export.body["purchases"][0]["external_id"], "R-1");
        assert_eq!(export.body["movements"].as_array().unwrap().len(), 1);
        assert_eq!(export.body["lots"][0]["amount"], 15);

        let pos = app.create_key("pos").await;
        assert_eq!(app.post_as(&pos, &format!("/v1/members/{member}/erase"), json!({})).await.code(), "forbidden_role");
        let erased = app.send("POST", &format!("/v1/members/{member}/erase"), &app.admin_key, Some("erase-1"), None).await;
        assert_eq!(erased.status, 200, "{:?}", erased.body);
        assert_eq!(erased.body["email"], serde_json::Value::Null);
        assert_eq!(erased.body["name"], serde_json::Value::Null);
        assert!(app.get("/v1/members?email=olga%40example.com").await.body["items"].as_array().unwrap().is_empty());
        // The points stay with the pseudonymous member; the identifiers are free again.
        assert_eq!(app.balance(member).await, (0, 15));
        assert_eq!(app.post("/v1/members", json!({ "card": "C-7" })).await.status, 201);
        // The stored answer to the enrolment held her data: it is gone, so nothing of it can be replayed.
        let store = &app.running.as_ref().unwrap().state.store;
        let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency WHERE body LIKE '%olga%'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(kept, 0);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn rules_see_the_members_tier_first_purchase_and_what_capped_rules_gave_today() {
        let app = spawn_app().await;
        let mut program = app.get("/v1/programs/1").await.body["program"].clone();
        program["earn_rules"] = json!([
            { "id": "welcome", "name": "First purchase", "condition": "first_purchase", "effect": { "bonus_per_basket": 50 } },
            { "id": "gold", "name": "Gold doubles", "condition": { "tier": ["gold"] }, "effect": { "multiplier_percent": 200 } },
            { "id": "daily", "name": "Daily visit", "effect": { "bonus_per_basket": 20 }, "caps": { "per_day": 30 } },
        ]);
        let mut misspelt = program.clone();
        misspelt["earn_rules"][2]["cap"] = json!({ "per_day": 30 });
        let body = Some(misspelt.to_string().into_bytes());
        let refused = app.send("PUT", "/v1/programs/1", &app.admin_key, Some("typo"), body).await;
        assert_eq!((refused.status.as_u16(), refused.code()), (400, "validation_failed"));
        assert!(refused.body["detail"].as_str().unwrap().contains("unknown field `cap`"), "{:?}", refused.body);
        let mut contradiction = program.clone();
        contradiction["earn_rules"][0]["condition"] = json!({ "all": [{ "channel": ["web"] }, { "channel": ["pos"] }] });
        let body = Some(contradiction.to_string().into_bytes());
        let refused = app.send("PUT", "/v1/programs/1", &app.admin_key, Some("never"), body).await;
        assert_eq!(refused.body["field"], "earn_rules[0].condition.all[1]", "{:?}", refused.body);
        assert_eq!(app.get("/v1/programs/1").await.body["version"], 1, "refused programs change nothing");
        let body = Some(program.to_string().into_bytes());
        assert_eq!(app.send("PUT", "/v1/programs/1", &app.admin_key, Some("rules"), body).await.status, 200);
        let member = app.create_member("C-1").await;
        let buy = |receipt: &'static str| {
            let mut body = purchase_body(member, receipt, 1_000_00, 0);
            body["explain"] = json!(true);
            body
        };

        let first = app.post("/v1/purchases", buy("R-1")).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        // 10 base + 50 welcome + 20 daily.
        assert_eq!(first.body["purchase"]["points_earned"], 80);
        let why_not = &first.body["explanation"][0]["rules_not_applied"];
        assert_eq!(why_not[0]["rule_id"], "gold", "{why_not}");
        assert!(why_not[0]["reason"].as_str().unwrap().contains("tier"), "{why_not}");

        let pos = app.create_key("pos").await;
        let change = json!({ "tier": "gold", "segments": ["coffee-lovers"] });
        let path = format!("/v1/members/{member}/loyalty");
        let forbidden = app.send("PATCH", &path, &pos, Some("t-0"), Some(change.to_string().into_bytes())).await;
        assert_eq!(forbidden.code(), "forbidden_role");
        let changed = app.send("PATCH", &path, &app.admin_key, Some("t-1"), Some(change.to_string().into_bytes())).await;
        assert_eq!(changed.status, 200, "{:?}", changed.body);
        assert_eq!(changed.body["loyalty"]["tier"]["tier"], "gold");
        let bad = json!({ "tier": "gold level" }).to_string().into_bytes();
        let refused = app.send("PATCH", &path, &app.admin_key, Some("t-2"), Some(bad)).await;
        assert_eq!((refused.status.as_u16(), refused.code()), (400, "validation_failed"), "{:?}", refused.body);

        // 10 base + 10 gold + what is left of the daily cap (10); no welcome bonus any more.
        let second = app.post("/v1/purchases", buy("R-2")).await;
        assert_eq!(second.body["purchase"]["points_earned"], 30, "{:?}", second.body);
        let third = app.post("/v1/purchases", buy("R-3")).await;
        assert_eq!(third.body["purchase"]["points_earned"], 20, "the daily cap is used up");
        app.advance_days(1);
        let next_day = app.post("/v1/purchases", buy("R-4")).await;
        assert_eq!(next_day.body["purchase"]["points_earned"], 40);

        let returned = app.post("/v1/returns", json!({ "purchase_external_id": "R-4" })).await;
        assert_eq!(returned.status, 201, "{:?}", returned.body);
        let view = app.get(&format!("/v1/members/{member}")).await;
        assert_eq!(view.body["loyalty"]["stats"]["purchases"], 4);
        assert_eq!(view.body["loyalty"]["stats"]["spend_lifetime_minor"], 3_000_00, "a return takes its spend back");
        assert_eq!(view.body["loyalty"]["segments"], json!(["coffee-lovers"]));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn tiers_rise_with_spend_bring_their_benefits_at_once_and_fall_one_level_at_a_review() {
        let app = spawn_app().await;
        let mut program = app.get("/v1/programs/1").await.body["program"].clone();
        program["tiers"] = json!({ "metric": "spend", "window": "calendar_year", "levels": [
            { "id": "silver", "name": "Silver", "threshold": 1_000_00 },
            { "id": "gold", "name": "Gold", "threshold": 5_000_00, "benefits": { "earn_multiplier_percent": 200, "entitlements": ["free-coffee"] } },
        ] });
        let body = Some(program.to_string().into_bytes());
        assert_eq!(app.send("PUT", "/v1/programs/1", &app.admin_key, Some("tiers"), body).await.status, 200);
        let member = app.create_member("C-1").await;

        app.purchase(member, "R-1", 1_200_00).await;
        let progress = app.get(&format!("/v1/members/{member}/tier")).await;
        assert_eq!(progress.status, 200, "{:?}", progress.body);
        assert_eq!(progress.body["tier"]["id"], "silver");
        assert_eq!(
            (progress.body["next"]["id"].as_str(), progress.body["next"]["left"].as_i64()),
            (Some("gold"), Some(3_800_00))
        );
        assert_eq!(progress.body["review_on"], "2027-01-01");

        assert_eq!(app.purchase(member, "R-2", 4_000_00).await.body["purchase"]["points_earned"], 40);
        // Gold from that purchase on: double points on the next one.
        assert_eq!(app.purchase(member, "R-3", 1_000_00).await.body["purchase"]["points_earned"], 20);
        let progress = app.get(&format!("/v1/members/{member}/tier")).await;
        assert_eq!(progress.body["tier"]["benefits"]["entitlements"], json!(["free-coffee"]));
        assert!(progress.body["next"].is_null());

        let path = format!("/v1/members/{member}/loyalty");
        let bronze = json!({ "tier": "bronze" }).to_string().into_bytes();
        let refused = app.send("PATCH", &path, &app.admin_key, Some("bronze"), Some(bronze)).await;
        assert_eq!((refused.status.as_u16(), refused.code()), (400, "unknown_tier"));

        // 2026 qualified for gold, so it holds through 2027; 2027 brings nothing, so 2028 starts silver.
        app.advance_days(352);
        assert_eq!(app.run_job("tiers").await["movements"], 0);
        app.advance_days(365);
        let review = app.run_job("tiers").await;
        assert_eq!((review["members"].as_i64(), review["movements"].as_i64()), (Some(1), Some(1)));
        assert_eq!(app.run_job("tiers").await["members"], 0, "a second run finds nobody due");
        let progress = app.get(&format!("/v1/members/{member}/tier")).await;
        assert_eq!(progress.body["tier"]["id"], "silver");
        let history: Vec<&str> =
            progress.body["history"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
        assert_eq!(history, ["qualified", "qualified", "review"]);
        let store = &app.running.as_ref().unwrap().state.store;
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'tier_changed'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(events, 3);
        app.stop().await;
    }
}

/// Silver from 1,000 RUB and gold (10% off, 2× points) from 5,000 RUB of spend in a calendar
/// year, a review 30 days into the new year.
async fn with_tiers(app: &support::TestApp) {
    let mut program = app.get("/v1/programs/1").await.body["program"].clone();
    program["tiers"] = json!({ "metric": "spend", "window": "calendar_year",
        "downgrade": { "max_levels": 1, "grace_days": 30 },
        "levels": [
            { "id": "silver", "name": "Silver", "threshold": 1_000_00 },
            { "id": "gold", "name": "Gold", "threshold": 5_000_00,
              "benefits": { "earn_multiplier_percent": 200, "discount_percent": 10 } },
        ] });
    let body = Some(program.to_string().into_bytes());
    let key = app.fresh_key();
    assert_eq!(app.send("PUT", "/v1/programs/1", &app.admin_key, Some(&key), body).await.status, 200);
}

async fn tier_events(app: &support::TestApp) -> Vec<serde_json::Value> {
    let store = &app.running.as_ref().unwrap().state.store;
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM events WHERE kind = 'tier_changed' ORDER BY id")
            .fetch_all(&store.pool)
            .await
            .unwrap();
    payloads.iter().map(|p| serde_json::from_str(p).unwrap()).collect()
}

both_stores! {
    async fn an_admins_tier_that_ends_falls_back_when_the_tiers_job_runs_and_review_on_counts_grace() {
        let app = spawn_app().await;
        with_tiers(&app).await;
        let member = app.create_member("T-1").await;
        app.purchase(member, "R-1", 1_200_00).await;
        let progress = app.get(&format!("/v1/members/{member}/tier")).await;
        assert_eq!(progress.body["tier"]["id"], "silver");
        assert_eq!(progress.body["review_on"], "2027-01-31", "the year's end plus 30 days of grace");

        let path = format!("/v1/members/{member}/loyalty");
        let gold = json!({ "tier": "gold", "tier_until": "2026-03-01T00:00:00Z" }).to_string().into_bytes();
        assert_eq!(app.send("PATCH", &path, &app.admin_key, Some("gold"), Some(gold)).await.status, 200);
        app.advance_days(30);
        assert_eq!(app.run_job("tiers").await["movements"], 0, "the assignment still holds");
        app.advance_days(20);
        let run = app.run_job("tiers").await;
        assert_eq!((run["members"].as_i64(), run["movements"].as_i64()), (Some(1), Some(1)));
        assert_eq!(app.run_job("tiers").await["members"], 0, "nobody left to end");
        let progress = app.get(&format!("/v1/members/{member}/tier")).await;
        assert_eq!(progress.body["tier"]["id"], "silver");
        assert_eq!(progress.body["tier"]["manual"], false);
        let last = progress.body["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (&last["from"], &last["to"], &last["reason"], &last["at"]),
            (&json!("gold"), &json!("silver"), &json!("manual_ended"), &json!("2026-03-01T00:00:00Z"))
        );
        let events = tier_events(&app).await;
        let ended = events.last().unwrap();
        assert_eq!((&ended["member_id"], &ended["from"], &ended["to"]), (&json!(member), &json!("gold"), &json!("silver")));
        app.stop().await;
    }
}

both_stores! {
    async fn an_ended_admin_tier_falls_back_at_the_next_purchase_if_the_job_has_not_run() {
        let app = spawn_app().await;
        with_tiers(&app).await;
        let member = app.create_member("T-2").await;
        let path = format!("/v1/members/{member}/loyalty");
        let gold = json!({ "tier": "gold", "tier_until": "2026-02-01T00:00:00Z" }).to_string().into_bytes();
        assert_eq!(app.send("PATCH", &path, &app.admin_key, Some("gold"), Some(gold)).await.status, 200);
        app.advance_days(20);
        // No tier left: the base rate of 1 point per 100 RUB, then silver from this purchase on.
        assert_eq!(app.purchase(member, "R-1", 1_000_00).await.body["purchase"]["points_earned"], 10);
        let progress = app.get(&format!("/v1/members/{member}/tier")).await;
        let reasons: Vec<&str> =
            progress.body["history"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["manual", "manual_ended", "qualified"]);
        assert_eq!(tier_events(&app).await.len(), 3);
        assert_eq!(app.run_job("tiers").await["movements"], 0, "the purchase already ended it");
        app.stop().await;
    }
}

both_stores! {
    async fn a_checkout_quote_shows_the_tier_discount_after_an_upgrade() {
        let app = spawn_app().await;
        with_tiers(&app).await;
        let member = app.create_member("T-3").await;
        let basket = json!({ "member_id": member, "currency": "RUB",
            "lines": [{ "sku": "A", "category": "food", "quantity": 1, "unit_price_minor": 1_000_00 }] });
        let before = app.post("/v1/checkouts", basket.clone()).await;
        assert_eq!(before.status, 201, "{:?}", before.body);
        assert_eq!(before.body["quote"]["lines"][0]["program_discount_minor"], 0);
        app.purchase(member, "R-1", 5_000_00).await;
        let after = app.post("/v1/checkouts", basket).await;
        assert_eq!(after.status, 201, "{:?}", after.body);
        let line = &after.body["quote"]["lines"][0];
        assert_eq!(line["program_discount_minor"], 100_00);
        assert_eq!(line["discounts"]["applied"][0]["discount_id"], "tier.gold");
        assert_eq!(after.body["quote"]["total_minor"], 900_00);
        app.stop().await;
    }
}
