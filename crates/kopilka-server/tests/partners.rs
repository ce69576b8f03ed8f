//! Partners end to end: partner keys bound to their partner, members earning and spending at a
//! partner, receipts recorded once and returned, the settlement reconciling with the ledger, and
//! bad input refused with nothing written.

mod support;

use support::both_stores;

use serde_json::{json, Value};
use support::{spawn_app, TestApp};

async fn create_partner(app: &TestApp, name: &str, issue_cost_minor: i64) -> i64 {
    let answer = app.post("/v1/partners", json!({ "name": name, "issue_cost_minor": issue_cost_minor })).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_i64().unwrap()
}

async fn partner_key(app: &TestApp, partner: i64) -> String {
    let answer = app.post(&format!("/v1/partners/{partner}/api-keys"), json!({ "name": "till" })).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["key"].as_str().unwrap().to_string()
}

fn points(member: i64, points: i64, receipt: &str) -> Value {
    json!({ "member_id": member, "points": points, "external_id": receipt })
}

both_stores! {
    async fn members_earn_and_spend_at_a_partner_and_the_settlement_reconciles() {
        let app = spawn_app().await;
        let cafe = create_partner(&app, "Cafe", 80).await;
        let key = partner_key(&app, cafe).await;
        let anna = app.create_member("1001").await;
        let from = app.now();

        let earned = app.post_as(&key, "/v1/partner-purchases", points(anna, 300, "C-1")).await;
        assert_eq!(earned.status, 201, "{:?}", earned.body);
        assert_eq!(earned.body["balance"]["pending"], 300, "partner points wait out the return window too");
        app.advance_days(14);
        let refused = app.post_as(&key, "/v1/partner-redemptions", points(anna, 301, "S-0")).await;
        assert_eq!(refused.status, 422);
        assert_eq!(refused.code(), "insufficient_points");
        let spent = app.post_as(&key, "/v1/partner-redemptions", points(anna, 120, "S-1")).await;
        assert_eq!(spent.status, 201, "{:?}", spent.body);
        assert_eq!(app.balance(anna).await, (180, 0));

        let to = app.now().checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
        let path = format!("/v1/partners/{cafe}/settlement?from={from}&to={to}");
        let report = app.send("GET", &path, &key, None, None).await;
        assert_eq!(report.status, 200, "{:?}", report.body);
        let body = &report.body;
        assert_eq!((body["points_issued"].as_i64(), body["points_redeemed"].as_i64()), (Some(300), Some(120)));
        // 300 points at 0.80 RUB owed by the cafe, 120 points at the program's 1 RUB owed to it.
        assert_eq!(body["partner_owes_minor"], 24_000);
        assert_eq!(body["program_owes_minor"], 12_000);
        assert_eq!(body["net_minor"], 12_000);
        assert_eq!(body["currency"], "RUB");

        // The same figures from the member's history: every posting on the partner's accounts.
        let history = app.get(&format!("/v1/members/{anna}/history?limit=100")).await.body;
        let mut issued = 0;
        let mut redeemed = 0;
        for item in history["items"].as_array().unwrap() {
            for posting in item["postings"].as_array().unwrap() {
                match (posting["account"]["kind"].as_str().unwrap(), posting["account"]["partner_id"].as_i64()) {
                    ("partner_issued", Some(id)) if id == cafe => issued -= posting["amount"].as_i64().unwrap(),
                    ("partner_redeemed", Some(id)) if id == cafe => redeemed += posting["amount"].as_i64().unwrap(),
                    _ => {}
                }
            }
        }
        assert_eq!((issued, redeemed), (300, 120));

        // A period before any of it settles to nothing.
        let before = from.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap();
        let empty = app.get(&format!("/v1/partners/{cafe}/settlement?from={before}&to={from}")).await;
        assert_eq!(empty.body["net_minor"], 0);
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn a_partner_key_acts_only_for_its_partner_and_sees_only_its_members() {
        let app = spawn_app().await;
        let cafe = create_partner(&app, "Cafe", 80).await;
        let cinema = create_partner(&app, "Cinema", 50).await;
        let key = partner_key(&app, cafe).await;
        let anna = app.create_member("2001").await;
        let boris = app.create_member("2002").await;

        let mut other = points(anna, 10, "X-1");
        other["partner_id"] = json!(cinema);
        let forbidden = app.post_as(&key, "/v1/partner-purchases", other).await;
        assert_eq!(forbidden.status, 403);
        let settlement = format!("/v1/partners/{cinema}/settlement?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z");
        assert_eq!(app.send("GET", &settlement, &key, None, None).await.status, 403);
        assert_eq!(app.send("GET", &format!("/v1/members/{anna}"), &key, None, None).await.status, 403);

        assert_eq!(app.post_as(&key, "/v1/partner-purchases", points(anna, 10, "C-1")).await.status, 201);
        let seen = app.send("GET", &format!("/v1/partners/{cafe}/members/{anna}/balance"), &key, None, None).await;
        assert_eq!(seen.status, 200, "{:?}", seen.body);
        assert_eq!(seen.body["pending"], 10);
        let unseen = app.send("GET", &format!("/v1/partners/{cafe}/members/{boris}/balance"), &key, None, None).await;
        assert_eq!(unseen.status, 404, "a member who never came to the cafe is not the cafe's to see");

        // An unbound partner key (made through /v1/api-keys) acts for no partner.
        let unbound = app.create_key("partner").await;
        let refused = app.post_as(&unbound, "/v1/partner-purchases", points(anna, 10, "C-2")).await;
        assert_eq!(refused.status, 403);
        // A till may not act for a partner.
        let pos = app.create_key("pos").await;
        assert_eq!(app.post_as(&pos, "/v1/partner-purchases", points(anna, 10, "C-3")).await.status, 403);
        assert_eq!(app.balance(anna).await, (0, 10));
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn bad_partner_input_gets_a_clear_problem_and_writes_nothing() {
        let app = spawn_app().await;
        let cafe = create_partner(&app, "Cafe", 80).await;
        let anna = app.create_member("3001").await;

        let mut unknown = points(anna, 10, "C-1");
        unknown["partner_id"] = json!(99);
        let answer = app.post("/v1/partner-purchases", unknown).await;
        assert_eq!(answer.status, 404);
        assert_eq!(answer.code(), "partner_not_found");

        for bad in [-5, 0] {
            let mut body = points(anna, bad, "C-2");
            body["partner_id"] = json!(cafe);
            let answer = app.post("/v1/partner-purchases", body).await;
            assert_eq!(answer.status, 400, "{:?}", answer.body);
            assert_eq!(answer.code(), "validation_failed");
        }
        let negative = app.post("/v1/partners", json!({ "name": "Bad", "issue_cost_minor": -1 })).await;
        assert_eq!(negative.status, 400, "{:?}", negative.body);
        assert_eq!(negative.code(), "validation_failed");
        let nameless = app.post("/v1/partners", json!({ "name": " ", "issue_cost_minor": 1 })).await;
        assert_eq!(nameless.code(), "validation_failed");
        let key_for_nobody = app.post("/v1/partners/42/api-keys", json!({ "name": "x" })).await;
        assert_eq!(key_for_nobody.status, 404);
        let backwards =
            app.get(&format!("/v1/partners/{cafe}/settlement?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z")).await;
        assert_eq!(backwards.status, 400);
        assert_eq!(app.balance(anna).await, (0, 0));
        assert_eq!(app.history_len(anna).await, 0);
        assert_eq!(app.get("/v1/partners").await.body.as_array().unwrap().len(), 1);
        app.assert_ledger_sound().await;
    }
}

/// The postings of the member's history on `account` (of `partner`, if named), summed.
async fn account_total(app: &TestApp, member: i64, account: &str, partner: Option<i64>) -> i64 {
    let history = app.get(&format!("/v1/members/{member}/history?limit=500")).await.body;
    let mut total = 0;
    for item in history["items"].as_array().unwrap() {
        for posting in item["postings"].as_array().unwrap() {
            if posting["account"]["kind"] == account && posting["account"]["partner_id"].as_i64() == partner {
                total += posting["amount"].as_i64().unwrap();
            }
        }
    }
    total
}

async fn settlement(app: &TestApp, partner: i64, from: jiff::Timestamp, to: jiff::Timestamp) -> Value {
    let report = app.get(&format!("/v1/partners/{partner}/settlement?from={from}&to={to}")).await;
    assert_eq!(report.status, 200, "{:?}", report.body);
    report.body
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
    async fn a_partner_receipt_is_recorded_once_whatever_the_idempotency_key() {
        let app = spawn_app().await;
        let cafe = create_partner(&app, "Cafe", 80).await;
        let cinema = create_partner(&app, "Cinema", 50).await;
        let key = partner_key(&app, cafe).await;
        let anna = app.create_member("6001").await;

        let first = app.send("POST", "/v1/partner-purchases", &key, Some("first"),
            Some(points(anna, 300, "C-1").to_string().into_bytes())).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        let history = app.history_len(anna).await;
        // The same key replays the answer; another key is a second receipt, refused.
        let replay = app.send("POST", "/v1/partner-purchases", &key, Some("first"),
            Some(points(anna, 300, "C-1").to_string().into_bytes())).await;
        assert!(replay.replayed);
        assert_eq!(replay.status, 201);
        for attempt in [points(anna, 300, "C-1"), points(anna, 5, "C-1")] {
            let again = app.post_as(&key, "/v1/partner-purchases", attempt).await;
            assert_eq!(again.status, 409, "{:?}", again.body);
            assert_eq!(again.code(), "partner_receipt_duplicate");
            assert_eq!(again.body["field"], "external_id");
        }
        // An admin naming the partner is refused the same way.
        let mut by_admin = points(anna, 300, "C-1");
        by_admin["partner_id"] = json!(cafe);
        assert_eq!(app.post("/v1/partner-purchases", by_admin).await.code(), "partner_receipt_duplicate");
        assert_eq!(app.balance(anna).await, (0, 300));
        assert_eq!(app.history_len(anna).await, history, "a refused receipt writes nothing");

        // Receipts are the partner's own: another partner may use the same number.
        let mut at_cinema = points(anna, 40, "C-1");
        at_cinema["partner_id"] = json!(cinema);
        assert_eq!(app.post("/v1/partner-purchases", at_cinema).await.status, 201);

        // Sent together, likely into one writer batch: exactly one of them is recorded.
        let sends: Vec<_> = (0..6).map(|i| app.post_as(&key, "/v1/partner-purchases", points(anna, 10 + i, "C-2"))).collect();
        let answers = futures::future::join_all(sends).await;
        let created = answers.iter().filter(|a| a.status == 201).count();
        let refused = answers.iter().filter(|a| a.status == 409 && a.code() == "partner_receipt_duplicate").count();
        assert_eq!((created, refused), (1, 5), "{answers:?}");
        let credited: i64 = answers.iter().filter(|a| a.status == 201).map(|a| a.body["points"].as_i64().unwrap()).sum();
        assert_eq!(app.balance(anna).await, (0, 340 + credited));
        let day = jiff::SignedDuration::from_hours(24);
        let report = settlement(&app, cafe, app.now() - day, app.now() + day).await;
        assert_eq!(report["points_issued"], 300 + credited);
        app.assert_ledger_sound().await;
    }
}

fn partner_return(external_id: &str) -> Value {
    json!({ "external_id": external_id })
}

both_stores! {
    async fn a_returned_partner_receipt_is_taken_back_and_settles_in_the_period_of_the_return() {
        let app = spawn_app().await;
        let cafe = create_partner(&app, "Cafe", 80).await;
        let cinema = create_partner(&app, "Cinema", 50).await;
        let key = partner_key(&app, cafe).await;
        let cinema_key = partner_key(&app, cinema).await;
        let anna = app.create_member("7001").await;
        let start = app.now();

        assert_eq!(app.post_as(&key, "/v1/partner-purchases", points(anna, 300, "C-1")).await.status, 201);
        assert_eq!(app.post_as(&key, "/v1/partner-purchases", points(anna, 200, "C-2")).await.status, 201);
        app.advance_days(14);
        assert_eq!(app.post_as(&key, "/v1/partner-redemptions", points(anna, 450, "S-1")).await.status, 201);
        assert_eq!(app.balance(anna).await, (50, 0));
        app.advance_days(1);
        let mid = app.now();

        // Anna spent most of C-1's points: the 50 she holds come back, the program carries 250,
        // and the cafe's 300 are taken off its account in full.
        let returned = app.post_as(&key, "/v1/partner-returns", partner_return("C-1")).await;
        assert_eq!(returned.status, 201, "{:?}", returned.body);
        let body = &returned.body;
        assert_eq!((body["points_reversed"].as_i64(), body["points_unrecovered"].as_i64()), (Some(50), Some(250)));
        assert_eq!(body["points_lapsed"], 0);
        assert_eq!(body["receipt"]["points"], 300);
        assert_eq!(body["member_id"], anna);
        assert_eq!(app.balance(anna).await, (0, 0));

        let history = app.history_len(anna).await;
        let again = app.post_as(&key, "/v1/partner-returns", partner_return("C-1")).await;
        assert_eq!((again.status.as_u16(), again.code()), (422, "nothing_to_return"));
        let unknown = app.post_as(&key, "/v1/partner-returns", partner_return("C-9")).await;
        assert_eq!((unknown.status.as_u16(), unknown.code()), (404, "partner_receipt_not_found"));
        // The cinema's key sees only the cinema's receipts, and may not name the cafe.
        let foreign = app.post_as(&cinema_key, "/v1/partner-returns", partner_return("C-2")).await;
        assert_eq!(foreign.code(), "partner_receipt_not_found");
        let mut naming = partner_return("C-2");
        naming["partner_id"] = json!(cafe);
        assert_eq!(app.post_as(&cinema_key, "/v1/partner-returns", naming).await.status, 403);
        let pos = app.create_key("pos").await;
        assert_eq!(app.post_as(&pos, "/v1/partner-returns", partner_return("C-2")).await.status, 403);
        let mut by_lines = partner_return("C-2");
        by_lines["lines"] = json!([{ "line": 0, "quantity": 1 }]);
        assert_eq!(app.post_as(&key, "/v1/partner-returns", by_lines).await.status, 400, "partner receipts have no lines");
        let nameless = app.post("/v1/partner-returns", partner_return("C-2")).await;
        assert_eq!((nameless.status.as_u16(), nameless.code()), (400, "validation_failed"));
        assert_eq!(app.history_len(anna).await, history, "refused returns write nothing");

        // An admin names the partner; the points still pending come straight back.
        app.advance_days(1);
        assert_eq!(app.post_as(&key, "/v1/partner-purchases", points(anna, 100, "C-3")).await.status, 201);
        let mut by_admin = partner_return("C-3");
        by_admin["partner_id"] = json!(cafe);
        let pending = app.post("/v1/partner-returns", by_admin).await;
        assert_eq!(pending.status, 201, "{:?}", pending.body);
        assert_eq!((pending.body["points_reversed"].as_i64(), pending.body["points_unrecovered"].as_i64()), (Some(100), Some(0)));
        assert_eq!(app.balance(anna).await, (0, 0));
        let end = app.now().checked_add(jiff::SignedDuration::from_secs(1)).unwrap();

        // Before the return: 500 issued, 450 redeemed. The return's period: C-1's and C-3's
        // points net out to a return of 300, owed back to the cafe.
        let before = settlement(&app, cafe, start, mid).await;
        assert_eq!((before["points_issued"].as_i64(), before["points_redeemed"].as_i64()), (Some(500), Some(450)));
        let after = settlement(&app, cafe, mid, end).await;
        assert_eq!((after["points_issued"].as_i64(), after["points_redeemed"].as_i64()), (Some(-300), Some(0)));
        assert_eq!(after["partner_owes_minor"], -24_000);
        assert_eq!(after["net_minor"], -24_000);
        let whole = settlement(&app, cafe, start, end).await;
        assert_eq!(whole["points_issued"], 200);
        assert_eq!(whole["net_minor"], 200 * 80 - 450 * 100);
        // The same from the ledger: what is left on the cafe's account, and the 250 the program took on.
        assert_eq!(-account_total(&app, anna, "partner_issued", Some(cafe)).await, 200);
        assert_eq!(account_total(&app, anna, "partner_redeemed", Some(cafe)).await, 450);
        assert_eq!(account_total(&app, anna, "issued", None).await, -250);

        let events = outbox(&app, "partner_purchase_returned").await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0]["external_id"], "C-1");
        assert_eq!(events[0]["partner_id"], cafe);
        assert_eq!((events[0]["points_reversed"].as_i64(), events[0]["points_unrecovered"].as_i64()), (Some(50), Some(250)));
        assert_eq!(events[1]["points_reversed"], 100);
        app.assert_ledger_sound().await;
    }
}

/// A second program in miles, and a rate of 2 points for 1 mile with at most 600 points a month.
async fn with_miles(app: &TestApp) {
    let mut miles: Value = app.get("/v1/programs/1").await.body["program"].clone();
    miles["name"] = json!("Miles");
    miles["point_currency"] = json!("MIL");
    let created = app.post("/v1/programs", miles).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["id"], 2);
    let mut main: Value = app.get("/v1/programs/1").await.body["program"].clone();
    main["exchanges"] = json!([{ "to_program": 2, "points_from": 2, "points_to": 1,
                                 "limit": { "points": 600, "period_days": 30 } }]);
    let saved =
        app.send("PUT", "/v1/programs/1", &app.admin_key, Some("rates"), Some(main.to_string().into_bytes())).await;
    assert_eq!(saved.status, 200, "{:?}", saved.body);
}

fn exchange(member: i64, from: i64, to: i64, points: i64) -> Value {
    json!({ "member_id": member, "from_program_id": from, "to_program_id": to, "points": points })
}

both_stores! {
    async fn a_coalition_exchange_converts_at_the_rate_within_its_limit_and_never_overdraws() {
        let app = spawn_app().await;
        with_miles(&app).await;
        let anna = app.create_member("4001").await;
        assert_eq!(app.adjust(anna, 1000).await.status, 201);

        let done = app.post("/v1/exchanges", exchange(anna, 1, 2, 401)).await;
        assert_eq!(done.status, 201, "{:?}", done.body);
        assert_eq!(done.body["converted"], 200, "2 points a mile, rounded down");
        assert_eq!(done.body["from_balance"]["available"], 599);
        assert_eq!(done.body["to_balance"]["available"], 200);
        assert_eq!(done.body["to_balance"]["currency"], "MIL");
        let miles = app.get(&format!("/v1/members/{anna}/balance?program_id=2")).await;
        assert_eq!(miles.body["available"], 200);

        let history = app.history_len(anna).await;
        let over_limit = app.post("/v1/exchanges", exchange(anna, 1, 2, 200)).await;
        assert_eq!(over_limit.status, 422);
        assert_eq!(over_limit.code(), "exchange_limit_reached");
        let reverse = app.post("/v1/exchanges", exchange(anna, 2, 1, 10)).await;
        assert_eq!(reverse.code(), "exchange_not_offered");
        let bob = app.create_member("4002").await;
        let overdraw = app.post("/v1/exchanges", exchange(bob, 1, 2, 100)).await;
        assert_eq!(overdraw.status, 422);
        assert_eq!(overdraw.code(), "insufficient_points");
        let negative = app.post("/v1/exchanges", exchange(anna, 1, 2, -4)).await;
        assert_eq!(negative.status, 400);
        let unknown = app.post("/v1/exchanges", exchange(anna, 9, 2, 4)).await;
        assert_eq!(unknown.status, 404);
        assert_eq!(app.history_len(anna).await, history, "refusals write nothing");
        assert_eq!(app.history_len(bob).await, 0);

        // The window rolls: a month later the limit is free again.
        app.advance_days(31);
        assert_eq!(app.post("/v1/exchanges", exchange(anna, 1, 2, 200)).await.status, 201);

        // A rate into a program of the same point currency would mint points: refused.
        let mut twin: Value = app.get("/v1/programs/1").await.body["program"].clone();
        twin["name"] = json!("Twin");
        twin["exchanges"] = json!([]);
        assert_eq!(app.post("/v1/programs", twin).await.body["id"], 3);
        let mut main: Value = app.get("/v1/programs/1").await.body["program"].clone();
        main["exchanges"] = json!([{ "to_program": 3, "points_from": 1, "points_to": 2 }]);
        let saved =
            app.send("PUT", "/v1/programs/1", &app.admin_key, Some("twin"), Some(main.to_string().into_bytes())).await;
        assert_eq!(saved.status, 200, "{:?}", saved.body);
        let history = app.history_len(anna).await;
        let minted = app.post("/v1/exchanges", exchange(anna, 1, 3, 100)).await;
        assert_eq!((minted.status.as_u16(), minted.code()), (422, "exchange_same_currency"));
        assert_eq!(app.history_len(anna).await, history);
        app.assert_ledger_sound().await;
    }
}

both_stores! {
    async fn each_exchange_rate_has_its_own_limit() {
        let app = spawn_app().await;
        for (name, currency) in [("Miles", "MIL"), ("Stars", "STR")] {
            let mut other: Value = app.get("/v1/programs/1").await.body["program"].clone();
            other["name"] = json!(name);
            other["point_currency"] = json!(currency);
            let created = app.post("/v1/programs", other).await;
            assert_eq!(created.status, 201, "{:?}", created.body);
        }
        let mut main: Value = app.get("/v1/programs/1").await.body["program"].clone();
        main["exchanges"] = json!([
            { "to_program": 2, "points_from": 1, "points_to": 1, "limit": { "points": 600, "period_days": 30 } },
            { "to_program": 3, "points_from": 1, "points_to": 1, "limit": { "points": 600, "period_days": 30 } },
        ]);
        let saved =
            app.send("PUT", "/v1/programs/1", &app.admin_key, Some("rates"), Some(main.to_string().into_bytes())).await;
        assert_eq!(saved.status, 200, "{:?}", saved.body);
        let anna = app.create_member("5001").await;
        assert_eq!(app.adjust(anna, 2000).await.status, 201);
        assert_eq!(app.post("/v1/exchanges", exchange(anna, 1, 2, 500)).await.status, 201);
        let into_stars = app.post("/v1/exchanges", exchange(anna, 1, 3, 600)).await;
        assert_eq!(into_stars.status, 201, "miles used none of the stars' allowance: {:?}", into_stars.body);
        let over = app.post("/v1/exchanges", exchange(anna, 1, 2, 101)).await;
        assert_eq!((over.status.as_u16(), over.code()), (422, "exchange_limit_reached"));
        app.assert_ledger_sound().await;
    }
}
