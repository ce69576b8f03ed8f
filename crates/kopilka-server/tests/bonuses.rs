//! Event bonuses and expiry reminders through the API and the jobs, on a clock the tests move:
//! sign-up, custom events with limits, birthdays across a year end, 29 February and time zones,
//! anniversaries of the first purchase, reminders at 30 and 7 days.

mod support;

use support::both_stores;

use jiff::Timestamp;
use serde_json::{json, Value};
use support::{spawn_app, TestApp};

/// Puts `event_bonuses` into the tenant's program.
async fn set_event_bonuses(app: &TestApp, section: Value) -> support::Answer {
    let mut program = app.get("/v1/programs/1").await.body["program"].clone();
    program["event_bonuses"] = section;
    let key = app.fresh_key();
    app.send("PUT", "/v1/programs/1", &app.admin_key, Some(&key), Some(program.to_string().into_bytes())).await
}

async fn create_member_born(app: &TestApp, card: &str, birth_date: &str) -> i64 {
    let answer = app.post("/v1/members", json!({ "card": card, "birth_date": birth_date })).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_i64().unwrap()
}

async fn count_events(app: &TestApp, kind: &str, member: i64) -> i64 {
    let store = &app.running.as_ref().unwrap().state.store;
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = $1 AND member_id = $2")
        .bind(kind)
        .bind(member)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

async fn event_payloads(app: &TestApp, kind: &str, member: i64) -> Vec<Value> {
    let store = &app.running.as_ref().unwrap().state.store;
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM events WHERE kind = $1 AND member_id = $2 ORDER BY id")
            .bind(kind)
            .bind(member)
            .fetch_all(&store.pool)
            .await
            .unwrap();
    rows.iter().map(|row| serde_json::from_str(row).unwrap()).collect()
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

both_stores! {
    async fn a_signup_bonus_and_custom_events_within_their_limits_per_day_and_week() {
        let app = spawn_app().await;
        let section = json!({
            "signup": { "points": 50, "available_at_once": true },
            "rules": [{ "type": "review_written", "points": 20,
                        "limits": [{ "count": 1, "period": "day" }, { "count": 2, "period": "week" }] }],
        });
        assert_eq!(set_event_bonuses(&app, section).await.status, 200);
        let member = app.create_member("C-1").await;
        assert_eq!(app.balance(member).await, (50, 0), "the welcome bonus is spendable at once");
        assert_eq!(count_events(&app, "bonus_granted", member).await, 1);

        let path = format!("/v1/members/{member}/events");
        let review = json!({ "type": "review_written", "attributes": { "product": "TYRE-17", "stars": 5 } });
        // 2026-01-15 is a Thursday.
        let first = app.send("POST", &path, &app.admin_key, Some("review-1"), Some(review.to_string().into())).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        assert_eq!((first.body["points"].as_i64(), first.body["limit_reached"].as_bool()), (Some(20), Some(false)));
        let again = app.send("POST", &path, &app.admin_key, Some("review-1"), Some(review.to_string().into())).await;
        assert!(again.replayed, "the same key is the same event");
        let second = app.post(&path, review.clone()).await;
        assert_eq!((second.status.as_u16(), second.body["points"].as_i64()), (201, Some(0)), "one a day");
        assert_eq!(app.balance(member).await, (70, 0));

        app.advance_days(1);
        assert_eq!(app.post(&path, review.clone()).await.body["points"], 20, "a new day (Friday)");
        app.advance_days(1);
        assert_eq!(app.post(&path, review.clone()).await.body["points"], 0, "two a week (Saturday)");
        app.advance_days(2);
        assert_eq!(app.post(&path, review.clone()).await.body["points"], 20, "a new week (Monday)");
        assert_eq!(app.balance(member).await, (110, 0));
        assert_eq!(count_events(&app, "custom_event", member).await, 5, "every accepted event reaches the outbox");
        let history = app.get(&format!("/v1/members/{member}/history?limit=10")).await;
        let reasons: Vec<&str> =
            history.body["items"].as_array().unwrap().iter().filter_map(|m| m["reason"].as_str()).collect();
        assert!(reasons.contains(&"event review_written") && reasons.contains(&"signup"), "{reasons:?}");

        // Unknown types and bad input are refused and write nothing.
        let unknown = app.post(&path, json!({ "type": "app_installed" })).await;
        assert_eq!((unknown.status.as_u16(), unknown.code()), (422, "unknown_event_type"));
        let future = app.post(&path, json!({ "type": "review_written", "occurred_at": "2030-01-01T00:00:00Z" })).await;
        assert_eq!((future.status.as_u16(), future.code()), (400, "validation_failed"));
        let not_object = app.post(&path, json!({ "type": "review_written", "attributes": [1, 2] })).await;
        assert_eq!(not_object.body["field"], "attributes", "{:?}", not_object.body);
        let nobody = app.post("/v1/members/999/events", json!({ "type": "review_written" })).await;
        assert_eq!(nobody.status, 404);
        assert_eq!(count_events(&app, "custom_event", member).await, 5);
        assert_eq!(app.balance(member).await, (110, 0));

        // An invalid section is refused with its path, and the program stays as it was.
        let bad = set_event_bonuses(&app, json!({ "birthday": { "points": 0, "days_after": 90 } })).await;
        assert_eq!(bad.status, 400, "{:?}", bad.body);
        assert_eq!(bad.body["field"], "event_bonuses.birthday.points");
        assert!(bad.body["detail"].as_str().unwrap().contains("event_bonuses.birthday.days_after"), "{:?}", bad.body);
        let program = app.get("/v1/programs/1").await.body["program"].clone();
        assert_eq!(program["event_bonuses"]["signup"]["points"], 50);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_signup_bonus_may_wait_out_the_pending_days_and_the_birthday_lookup_uses_its_indexes() {
        let app = spawn_app().await;
        let section = json!({ "signup": { "points": 30 }, "birthday": { "points": 100 }, "anniversary": { "points": 10 } });
        assert_eq!(set_event_bonuses(&app, section).await.status, 200);
        let member = app.create_member("C-1").await;
        assert_eq!(app.balance(member).await, (0, 30));
        app.advance_days(14);
        app.run_job("activate").await;
        assert_eq!(app.balance(member).await, (30, 0));
        use sqlx::Row;
        let store = &app.running.as_ref().unwrap().state.store;
        let plan: Vec<String> = match store.backend {
            kopilka_store::Backend::Sqlite => sqlx::query(
                "EXPLAIN QUERY PLAN SELECT id FROM (SELECT 0 AS id WHERE 0
                   UNION SELECT id FROM members INDEXED BY members_birthday WHERE tenant_id = 1
                     AND birth_date IS NOT NULL AND substr(birth_date, 6, 5) IN ('01-15', '01-16') AND id > 0
                   UNION SELECT id FROM members INDEXED BY members_first_purchase_day WHERE tenant_id = 1
                     AND first_purchase_day IS NOT NULL AND first_purchase_day IN ('01-15') AND id > 0)
                 ORDER BY id LIMIT 500",
            )
            .fetch_all(&store.pool)
            .await
            .expect("INDEXED BY fails the query when the index cannot serve it")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect(),
            // PostgreSQL chooses by statistics; with sequential scans priced out, a plan that
            // names the indexes shows they serve the store's queries.
            kopilka_store::Backend::Postgres => {
                let mut conn = store.pool.acquire().await.unwrap();
                sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await.unwrap();
                let rows = sqlx::query(
                    "EXPLAIN SELECT id FROM members WHERE tenant_id = 1 AND birth_date IS NOT NULL
                       AND substr(birth_date, 6, 5) IN ('01-15', '01-16')
                     UNION SELECT id FROM members WHERE tenant_id = 1
                       AND first_purchase_day IS NOT NULL AND first_purchase_day IN ('01-15')",
                )
                .fetch_all(&mut *conn)
                .await
                .unwrap();
                sqlx::query("RESET enable_seqscan").execute(&mut *conn).await.unwrap();
                rows.iter().map(|row| row.get::<String, _>(0)).collect()
            }
        };
        assert!(plan.iter().any(|step| step.contains("members_birthday")), "{plan:?}");
        assert!(plan.iter().any(|step| step.contains("members_first_purchase_day")), "{plan:?}");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn birthdays_once_a_year_in_the_programs_time_zone_across_year_ends_and_leap_years() {
        let app = spawn_app().await;
        // The default program keeps Moscow time.
        let section = json!({ "birthday": { "points": 100, "days_after": 3 }, "anniversary": { "points": 30 } });
        assert_eq!(set_event_bonuses(&app, section).await.status, 200);
        let anna = create_member_born(&app, "A", "1990-01-16").await;
        let boris = create_member_born(&app, "B", "2000-02-29").await;
        let clara = create_member_born(&app, "C", "1985-12-30").await;
        let dmitry = app.create_member("D").await;
        assert_eq!(app.purchase(dmitry, "R-1", 1_000_00).await.status, 201);

        assert_eq!(app.run_job("events").await["movements"], 0, "15 January everywhere");
        // 21:30 UTC on the 15th is 00:30 on the 16th in Moscow: Anna's birthday has begun there.
        app.clock.set(at("2026-01-15T21:30:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 1);
        for _ in 0..3 {
            assert_eq!(app.run_job("events").await["movements"], 0, "once a year however often the job runs");
        }
        app.advance_days(2);
        assert_eq!(app.run_job("events").await["movements"], 0, "still in the window, already given");
        assert_eq!(app.balance(anna).await, (100, 0));

        // The server was down from before Clara's birthday (30 December) until 1 January: the job
        // catches up while the window lasts, for the year the birthday was in.
        app.clock.set(at("2027-01-01T12:00:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 1);
        assert_eq!(app.run_job("events").await["movements"], 0);
        let clara_bonus = event_payloads(&app, "bonus_granted", clara).await;
        assert_eq!(clara_bonus[0]["reason"], "birthday 2026", "{clara_bonus:?}");

        // Dmitry's first purchase was on 15 January 2026: its first anniversary.
        app.clock.set(at("2027-01-15T10:00:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 1);
        assert_eq!(app.run_job("events").await["movements"], 0);
        assert_eq!(event_payloads(&app, "bonus_granted", dmitry).await[0]["reason"], "anniversary 2027");

        // 2027 has no 29 February: Boris celebrates on the 28th, and in 2028 on the 29th again.
        app.clock.set(at("2027-02-28T09:00:00Z"));
        let report = app.run_job("events").await;
        assert_eq!(report["movements"], 1, "{report}");
        app.clock.set(at("2027-03-01T09:00:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 0);
        app.clock.set(at("2028-02-28T09:00:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 0, "a leap year waits for the 29th");
        app.clock.set(at("2028-02-29T09:00:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 1);
        assert_eq!(app.run_job("events").await["movements"], 0);
        let reasons: Vec<Value> =
            event_payloads(&app, "bonus_granted", boris).await.iter().map(|e| e["reason"].clone()).collect();
        assert_eq!(reasons, [json!("birthday 2027"), json!("birthday 2028")]);
        assert_eq!(count_events(&app, "bonus_granted", anna).await, 1);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn expiry_reminders_at_30_and_7_days_are_sent_once_each() {
        let app = spawn_app().await;
        assert_eq!(set_event_bonuses(&app, json!({ "expiry_reminders_days": [30, 7] })).await.status, 200);
        let member = app.create_member("C-1").await;
        // Points given now last 12 months: they expire on 2027-01-15 at 10:00 UTC.
        assert_eq!(app.adjust(member, 100).await.status, 201);
        assert_eq!(app.run_job("reminders").await["movements"], 0);

        app.clock.set(at("2026-12-16T09:59:00Z"));
        assert_eq!(app.run_job("reminders").await["movements"], 0, "a minute more than 30 days left");
        app.clock.set(at("2026-12-16T10:00:00Z"));
        assert_eq!(app.run_job("reminders").await["movements"], 1);
        assert_eq!(app.run_job("reminders").await["movements"], 0, "never twice");
        app.advance_days(10);
        assert_eq!(app.run_job("reminders").await["movements"], 0);
        app.clock.set(at("2027-01-08T10:00:00Z"));
        assert_eq!(app.run_job("reminders").await["movements"], 1);
        assert_eq!(app.run_job("reminders").await["movements"], 0);
        let reminders = event_payloads(&app, "points_expiring", member).await;
        let days: Vec<Value> = reminders.iter().map(|r| r["days"].clone()).collect();
        assert_eq!(days, [json!(30), json!(7)]);
        assert_eq!(reminders[1]["points"], 100);
        assert_eq!(reminders[1]["expires_at"], "2027-01-15T10:00:00Z");

        // Once they have expired there is nothing left to remind of.
        app.clock.set(at("2027-01-16T00:00:00Z"));
        app.run_job("expiry").await;
        assert_eq!(app.run_job("reminders").await["movements"], 0);
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn after_downtime_only_the_nearest_reminder_is_sent() {
        let app = spawn_app().await;
        assert_eq!(set_event_bonuses(&app, json!({ "expiry_reminders_days": [30, 7] })).await.status, 200);
        let member = app.create_member("C-1").await;
        assert_eq!(app.adjust(member, 40).await.status, 201);
        app.purchase(member, "R-1", 1_000_00).await;
        // Down until five days before the points given at the start expire.
        app.clock.set(at("2027-01-10T10:00:00Z"));
        assert_eq!(app.run_job("reminders").await["movements"], 1);
        assert_eq!(app.run_job("reminders").await["movements"], 0);
        let reminders = event_payloads(&app, "points_expiring", member).await;
        assert_eq!((reminders[0]["days"].as_i64(), reminders[0]["points"].as_i64()), (Some(7), Some(50)));
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}

both_stores! {
    async fn a_birthday_missed_while_the_server_was_down_is_given_within_a_week_once() {
        let app = spawn_app().await;
        let section = json!({ "birthday": { "points": 100 } });
        assert_eq!(set_event_bonuses(&app, section).await.status, 200);
        let anna = create_member_born(&app, "A", "1990-03-10").await;
        let long_ago = create_member_born(&app, "B", "1990-03-06").await;
        // Down from 9 March to 14 March: Anna's day passed, Boris's (6 March) is 8 days ago.
        app.clock.set(at("2026-03-12T09:00:00Z"));
        let late_joiner = create_member_born(&app, "C", "1991-03-10").await;
        app.clock.set(at("2026-03-14T09:00:00Z"));
        assert_eq!(app.run_job("events").await["movements"], 1);
        assert_eq!(app.run_job("events").await["movements"], 0, "never twice");
        assert_eq!(app.balance(anna).await, (100, 0));
        assert_eq!(event_payloads(&app, "bonus_granted", anna).await[0]["reason"], "birthday 2026");
        assert_eq!(app.balance(long_ago).await, (0, 0), "past the week's catch-up");
        assert_eq!(app.balance(late_joiner).await, (0, 0), "joined after the day: not the job's miss");
        app.assert_ledger_sound().await;
        app.stop().await;
    }
}
