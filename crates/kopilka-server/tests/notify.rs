//! Notifications end to end: purchases through the API reach a real SMTP server and a signed
//! webhook receiver on loopback; deliveries survive a restart; bad configuration is refused.

mod support;

use support::both_stores;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kopilka_notify::signing;
use kopilka_notify::testing::SmtpSink;
use kopilka_server::app::{self, Config};
use kopilka_server::clock::{Clock, ManualClock};
use serde_json::{json, Value};
use support::{spawn_app, TestApp};

/// A webhook as the receiver saw it: delivery id, body, and whether the signature verified.
#[derive(Debug, Clone)]
struct Received {
    delivery_id: String,
    body: Value,
    verified: bool,
}

#[derive(Clone)]
struct Hook {
    secret: Arc<Mutex<String>>,
    clock: Arc<ManualClock>,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Hook {
    /// A loopback receiver that checks each `Kopilka-Signature` as the README tells receivers to.
    async fn start(clock: Arc<ManualClock>) -> (Hook, String) {
        let hook = Hook { secret: Arc::default(), clock, seen: Arc::default() };
        let app = axum::Router::new().fallback(receive).with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/kopilka", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, url)
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        for _ in 0..1_000 {
            if self.seen.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.seen.lock().unwrap().clone()
    }
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let secret = hook.secret.lock().unwrap().clone();
    let verified =
        signing::verify(&header("kopilka-signature"), &body, &secret, hook.clock.now().as_second(), 300).is_ok();
    hook.seen.lock().unwrap().push(Received {
        delivery_id: header("kopilka-delivery-id"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
    });
    if verified {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

async fn put(app: &TestApp, path: &str, body: Value) -> support::Answer {
    let key = app.fresh_key();
    app.send("PUT", path, &app.admin_key.clone(), Some(&key), Some(body.to_string().into_bytes())).await
}

async fn subscribe(app: &TestApp, hook: &Hook, url: &str, kinds: Value) -> i64 {
    let answer = app.post("/v1/webhooks", json!({ "url": url, "event_kinds": kinds })).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    *hook.secret.lock().unwrap() = answer.body["secret"].as_str().unwrap().to_string();
    answer.body["id"].as_i64().unwrap()
}

async fn configure_email(app: &TestApp, smtp: &SmtpSink) {
    let settings = json!({ "language": "en", "public_base_url": app.base });
    assert_eq!(put(app, "/v1/notifications/settings", settings).await.status, 200);
    let config = json!({ "provider": "smtp", "host": "127.0.0.1", "port": smtp.port, "security": "plain",
                         "from": "Kopilka <loyalty@example.com>" });
    let answer = put(app, "/v1/channels/email", config).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let template = json!({
        "subject": "You earned {{ event.points }} points",
        "text": "Hello {{ member.name }}, {{ event.points }} points are yours.\nUnsubscribe: {{ unsubscribe_url }}",
        "html": "<p>Hello {{ member.name }}, <b>{{ event.points }}</b> points are yours.</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
    });
    let answer = put(app, "/v1/templates/points_earn/email/en", template).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

both_stores! {
    async fn a_purchase_sends_an_email_to_a_real_smtp_server_and_a_signed_webhook() {
        let app = spawn_app().await;
        let smtp = SmtpSink::start().await;
        let (hook, url) = Hook::start(app.clock.clone()).await;
        configure_email(&app, &smtp).await;
        subscribe(&app, &hook, &url, json!(["purchase_recorded", "points_earn"])).await;
        let member = app
            .post(
                "/v1/members",
                json!({ "card": "C-1", "email": "anna@example.com", "name": "Anna", "consents": { "email": true } }),
            )
            .await;
        assert_eq!(member.status, 201, "{:?}", member.body);
        let member = member.body["id"].as_i64().unwrap();
        assert_eq!(app.purchase(member, "R-1", 4_000_00).await.status, 201);

        let webhooks = hook.wait_for(2).await;
        assert_eq!(webhooks.len(), 2);
        assert!(webhooks.iter().all(|w| w.verified), "{webhooks:?}");
        let mut kinds: Vec<&str> = webhooks.iter().map(|w| w.body["kind"].as_str().unwrap()).collect();
        kinds.sort();
        assert_eq!(kinds, ["points_earn", "purchase_recorded"]);
        let earn = webhooks.iter().find(|w| w.body["kind"] == "points_earn").unwrap();
        assert_eq!(earn.body["data"]["points"], 40);
        assert_eq!(earn.body["delivery_id"], earn.delivery_id);

        let mail = smtp.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].to, ["anna@example.com"]);
        let parsed = mailparse::parse_mail(&mail[0].data).unwrap();
        use mailparse::MailHeaderMap;
        assert_eq!(parsed.headers.get_first_value("Subject").unwrap(), "You earned 40 points");
        let parts: Vec<(String, String)> =
            parsed.subparts.iter().map(|p| (p.ctype.mimetype.clone(), p.get_body().unwrap())).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, "text/plain");
        assert!(parts[0].1.contains("Hello Anna, 40 points are yours."), "{}", parts[0].1);
        assert_eq!(parts[1].0, "text/html");
        assert!(parts[1].1.contains("<b>40</b>"), "{}", parts[1].1);

        // The delivery log says the same.
        for _ in 0..100 {
            let log = app.get("/v1/deliveries?status=delivered").await;
            if log.body["items"].as_array().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = app.get("/v1/deliveries?event=points_earn").await;
        let channels: Vec<&str> =
            log.body["items"].as_array().unwrap().iter().map(|d| d["channel"].as_str().unwrap()).collect();
        assert_eq!(channels.len(), 2, "{:?}", log.body);
        assert!(log.body["items"].as_array().unwrap().iter().all(|d| d["status"] == "delivered"), "{:?}", log.body);

        // The unsubscribe link works without a key and stops the next email, which is logged as suppressed.
        let link = parsed.headers.get_first_value("List-Unsubscribe").unwrap();
        let link = link.trim_matches(|c| c == '<' || c == '>');
        let page = reqwest::get(link).await.unwrap();
        assert_eq!(page.status(), 200);
        let one_click = app.client.post(link).body("List-Unsubscribe=One-Click").send().await.unwrap();
        assert_eq!(one_click.status(), 200, "RFC 8058 one-click, repeated, is harmless");
        let forged = reqwest::get(format!("{}0", link)).await.unwrap();
        assert_eq!(forged.status(), 400);
        let opt_outs = app.get(&format!("/v1/members/{member}/opt-outs")).await;
        assert_eq!(opt_outs.body["opted_out"], json!(["email"]));
        assert_eq!(app.purchase(member, "R-2", 1_000_00).await.status, 201);
        hook.wait_for(4).await;
        let mut suppressed = Value::Null;
        for _ in 0..200 {
            suppressed = app.get("/v1/deliveries?status=suppressed").await.body;
            if !suppressed["items"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(suppressed["items"][0]["reason"], "opted_out");
        assert_eq!(smtp.received().len(), 1);
        app.stop().await;
    }
}

both_stores! {
    async fn a_server_stopped_between_commit_and_dispatch_delivers_after_restart() {
        let store = support::test_store().await;
        let clock = Arc::new(ManualClock::new(support::START.parse().unwrap()));
        let (hook, url) = Hook::start(clock.clone()).await;

        // The first server commits the purchase and stops before any dispatcher ran: it serves the
        // API without starting one, as a server killed right after the commit would have.
        let (state, writer_task) = app::open(&store.database, clock.clone()).await.unwrap();
        let tenant = app::bootstrap(&state).await.unwrap().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = kopilka_server::api::router(state.clone());
        let http = tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(async move { stopped.await.unwrap_or(()) }).await.unwrap()
        });
        let client = reqwest::Client::new();
        let post = |path: &str, key: &str, body: Value| {
            client
                .post(format!("{base}{path}"))
                .bearer_auth(&tenant.admin_key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
        };
        let created = post("/v1/webhooks", "hook-1", json!({ "url": url })).await.unwrap().json::<Value>().await.unwrap();
        *hook.secret.lock().unwrap() = created["secret"].as_str().unwrap().to_string();
        let member = post("/v1/members", "m-1", json!({ "card": "C-1" })).await.unwrap().json::<Value>().await.unwrap();
        let purchase =
            post("/v1/purchases", "p-1", support::purchase_body(member["id"].as_i64().unwrap(), "R-1", 1_000_00, 0))
                .await
                .unwrap();
        assert_eq!(purchase.status(), 201);
        stop.send(()).unwrap();
        http.await.unwrap();
        drop(state);
        writer_task.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(hook.seen.lock().unwrap().is_empty(), "nothing was dispatched before the stop");

        let config = Config {
            database: store.database.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            jobs_interval: None,
        };
        let running = app::start(&config, clock.clone()).await.unwrap();
        let seen = hook.wait_for(3).await;
        let mut kinds: Vec<&str> = seen.iter().map(|w| w.body["kind"].as_str().unwrap()).collect();
        kinds.sort();
        assert_eq!(kinds, ["member_created", "points_earn", "purchase_recorded"]);
        assert!(seen.iter().all(|w| w.verified));
        running.stop().await;
    }
}

both_stores! {
    async fn bad_templates_and_provider_configs_are_refused_naming_the_field_and_nothing_is_saved() {
        let app = spawn_app().await;
        let syntax = put(&app, "/v1/templates/points_earn/sms/ru", json!({ "text": "{{ event.points " })).await;
        assert_eq!(syntax.status, 422);
        assert_eq!(syntax.code(), "template_syntax");
        assert_eq!(syntax.body["field"], "text");
        let unknown = put(&app, "/v1/templates/points_earn/sms/ru", json!({ "text": "{{ member.nickname }}" })).await;
        assert_eq!(unknown.code(), "template_unknown_variable");
        let kind = put(&app, "/v1/templates/no_such_event/sms/ru", json!({ "text": "x" })).await;
        assert_eq!(kind.code(), "unknown_event_kind");
        assert_eq!(app.get("/v1/templates").await.body["items"], json!([]));

        let preview = app
            .post(
                "/v1/templates/preview",
                json!({ "event_kind": "points_earn", "channel": "sms", "language": "ru",
                                                   "template": { "text": "{{ member.name }}: +{{ event.points }}" } }),
            )
            .await;
        assert_eq!(preview.status, 200, "{:?}", preview.body);
        assert_eq!(preview.body["rendered"]["text"], "Anna: +39");

        let port = put(
            &app,
            "/v1/channels/email",
            json!({ "provider": "smtp", "host": "127.0.0.1", "port": "x", "security": "plain", "from": "a@b.c" }),
        )
        .await;
        assert_eq!(port.status, 422);
        assert_eq!(port.code(), "channel_config_invalid");
        assert_eq!(port.body["field"], "config.port");
        let provider = put(&app, "/v1/channels/sms", json!({ "provider": "smtp" })).await;
        assert_eq!(provider.code(), "channel_provider_unsupported");
        let hook = app.post("/v1/webhooks", json!({ "url": "not a url" })).await;
        assert_eq!((hook.status.as_u16(), hook.code()), (422, "validation_failed"));
        assert_eq!(app.get("/v1/channels").await.body["items"], json!([]));

        // Secrets are shown once: not in listings, not in a retry's stored answer.
        let secret_config = json!({ "provider": "telegram", "bot_token": "123:SECRET" });
        let saved = app
            .send("PUT", "/v1/channels/messenger", &app.admin_key, Some("tg"), Some(secret_config.to_string().into_bytes()))
            .await;
        assert_eq!(saved.body["config"]["bot_token"], "***");
        assert!(!app.get("/v1/channels").await.bytes.windows(6).any(|w| w == b"SECRET"));
        let body = json!({ "url": "http://127.0.0.1:9/hook" }).to_string().into_bytes();
        let first = app.send("POST", "/v1/webhooks", &app.admin_key, Some("wh"), Some(body.clone())).await;
        let retry = app.send("POST", "/v1/webhooks", &app.admin_key, Some("wh"), Some(body)).await;
        assert!(first.body["secret"].as_str().unwrap().starts_with("whsec_"));
        assert!(retry.replayed && retry.body["id"] == first.body["id"]);
        assert!(!retry.body["secret"].as_str().unwrap().starts_with("whsec_"));
        let other = app
            .send("POST", "/v1/webhooks", &app.admin_key, Some("wh"), Some(b"{\"url\":\"http://127.0.0.1:9/x\"}".to_vec()))
            .await;
        assert_eq!(other.code(), "idempotency_key_reused");
        let listed = app.get("/v1/webhooks").await;
        assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
        assert!(listed.body["items"][0].get("secret").is_none());
        let missing = app.send("PUT", "/v1/channels/email", &app.admin_key, None, Some(b"{}".to_vec())).await;
        assert_eq!(missing.code(), "idempotency_key_missing");
        app.stop().await;
    }
}

both_stores! {
    async fn an_unreachable_provider_leaves_the_message_queued_with_its_error() {
        let app = spawn_app().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let config = json!({ "provider": "twilio", "account_sid": "AC1", "auth_token": "secret-token", "from": "+1", "base_url": closed });
        assert_eq!(put(&app, "/v1/channels/sms", config).await.status, 200);
        assert_eq!(
            put(&app, "/v1/templates/points_earn/sms/ru", json!({ "text": "+{{ event.points }}" })).await.status,
            200
        );
        let member =
            app.post("/v1/members", json!({ "card": "C-1", "phone": "+79120000001", "consents": { "sms": true } })).await;
        let member = member.body["id"].as_i64().unwrap();
        app.purchase(member, "R-1", 1_000_00).await;
        let mut failed = Value::Null;
        for _ in 0..200 {
            failed = app.get("/v1/deliveries?status=failed").await.body;
            if !failed["items"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivery = &failed["items"][0];
        assert_eq!(delivery["channel"], "sms");
        assert_eq!(delivery["attempts"], 1);
        let error = delivery["last_error"].as_str().unwrap();
        assert!(error.contains("error sending request") && !error.contains("secret-token"), "{error}");
        assert!(delivery["next_attempt_at"].is_string(), "it stays queued for another attempt");
        // Replay queues it now, with the same id.
        let id = delivery["id"].as_str().unwrap();
        let replayed = app.post(&format!("/v1/deliveries/{id}/replay"), json!({})).await;
        assert_eq!(replayed.status, 200, "{:?}", replayed.body);
        assert_eq!(replayed.body["id"], id);
        app.stop().await;
    }
}

both_stores! {
    async fn members_opt_out_and_back_in_through_the_api_and_settings_are_validated() {
        let app = spawn_app().await;
        let member = app.create_member("C-1").await;
        let out = app.post(&format!("/v1/members/{member}/opt-outs"), json!({ "channel": "sms" })).await;
        assert_eq!(out.status, 201, "{:?}", out.body);
        assert_eq!(app.get(&format!("/v1/members/{member}/opt-outs")).await.body["opted_out"], json!(["sms"]));
        let key = app.fresh_key();
        let back =
            app.send("DELETE", &format!("/v1/members/{member}/opt-outs/sms"), &app.admin_key, Some(&key), None).await;
        assert_eq!(back.status, 200, "{:?}", back.body);
        assert_eq!(app.get(&format!("/v1/members/{member}/opt-outs")).await.body["opted_out"], json!([]));
        let unknown = app.post("/v1/members/999/opt-outs", json!({ "channel": "sms" })).await;
        assert_eq!(unknown.code(), "member_not_found");

        let contact = put(&app, &format!("/v1/members/{member}/contacts/push"), json!({ "address": "fcm-token" })).await;
        assert_eq!(contact.status, 200, "{:?}", contact.body);
        let email_contact = put(&app, &format!("/v1/members/{member}/contacts/email"), json!({ "address": "a@b.c" })).await;
        assert_eq!(email_contact.status, 422);

        let zone = put(&app, "/v1/notifications/settings", json!({ "time_zone": "Mars/Olympus" })).await;
        assert_eq!((zone.status.as_u16(), zone.body["field"].as_str()), (422, Some("time_zone")));
        let quiet =
            put(&app, "/v1/notifications/settings", json!({ "quiet_hours": { "start": "22:00", "end": "9" } })).await;
        assert_eq!(quiet.body["field"], "quiet_hours.end");
        let fine = put(
            &app,
            "/v1/notifications/settings",
            json!({ "quiet_hours": { "start": "22:00", "end": "09:00" }, "daily_cap_per_member": 3 }),
        )
        .await;
        assert_eq!(fine.status, 200, "{:?}", fine.body);
        assert_eq!(app.get("/v1/notifications/settings").await.body["daily_cap_per_member"], 3);

        let analyst = app.create_key("analyst").await;
        let refused = app.post_as(&analyst, "/v1/webhooks", json!({ "url": "http://127.0.0.1:9/x" })).await;
        assert_eq!(refused.code(), "forbidden_role");
        let bad_token = app.client.get(format!("{}/v1/unsubscribe?token=1.1.email.00", app.base)).send().await.unwrap();
        assert_eq!(bad_token.status(), 400);
        app.stop().await;
    }
}

both_stores! {
    async fn the_openapi_document_describes_the_notification_routes() {
        let app = spawn_app().await;
        let spec: Value =
            app.client.get(format!("{}/v1/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
        for path in [
            "/v1/webhooks",
            "/v1/deliveries/{id}/replay",
            "/v1/channels/{channel}",
            "/v1/templates/preview",
            "/v1/unsubscribe",
        ] {
            assert!(spec["paths"].get(path).is_some(), "{path} is missing");
        }
        assert!(spec["paths"].get("/v1/purchases").is_some(), "the ledger's routes are still there");
        app.stop().await;
    }
}

both_stores! {
    async fn members_carry_a_validated_time_zone_and_language_and_their_offers_arrive_in_their_language() {
        let app = spawn_app().await;
        let smtp = SmtpSink::start().await;
        let (hook, url) = Hook::start(app.clock.clone()).await;
        let settings = json!({ "language": "en", "public_base_url": app.base });
        assert_eq!(put(&app, "/v1/notifications/settings", settings).await.status, 200);
        let config = json!({ "provider": "smtp", "host": "127.0.0.1", "port": smtp.port, "security": "plain",
                             "from": "Kopilka <loyalty@example.com>" });
        assert_eq!(put(&app, "/v1/channels/email", config).await.status, 200);
        subscribe(&app, &hook, &url, json!(["offer_received"])).await;

        let unknown = app.post("/v1/members", json!({ "card": "C-0", "time_zone": "Mars/Olympus" })).await;
        assert_eq!((unknown.status.as_u16(), unknown.code()), (422, "unknown_time_zone"), "{:?}", unknown.body);
        assert_eq!(unknown.body["field"], "time_zone");
        let anna = json!({ "card": "C-1", "email": "anna@example.com", "name": "Анна", "consents": { "email": true },
                           "time_zone": "asia/vladivostok", "language": "ru" });
        let anna = app.post("/v1/members", anna).await;
        assert_eq!(anna.status, 201, "{:?}", anna.body);
        assert_eq!(
            (anna.body["time_zone"].as_str(), anna.body["language"].as_str()),
            (Some("Asia/Vladivostok"), Some("ru"))
        );
        let anna = anna.body["id"].as_i64().unwrap();
        let boris = app
            .post("/v1/members", json!({ "card": "C-2", "email": "boris@example.com", "consents": { "email": true } }))
            .await;
        let boris = boris.body["id"].as_i64().unwrap();
        let key = app.fresh_key();
        let patch = json!({ "time_zone": "Europe/Kaliningrad", "language": "de" }).to_string().into_bytes();
        let refused = app.send("PATCH", &format!("/v1/members/{boris}"), &app.admin_key, Some(&key), Some(patch)).await;
        assert_eq!((refused.status.as_u16(), refused.code()), (422, "unknown_language"));
        assert_eq!(refused.body["field"], "language");
        let key = app.fresh_key();
        let patch = json!({ "time_zone": "Europe/Kaliningrad" }).to_string().into_bytes();
        let patched = app.send("PATCH", &format!("/v1/members/{boris}"), &app.admin_key, Some(&key), Some(patch)).await;
        assert_eq!(patched.status, 200, "{:?}", patched.body);
        let export = app.get(&format!("/v1/members/{anna}/export")).await;
        assert_eq!(export.body["member"]["time_zone"], "Asia/Vladivostok");
        assert_eq!(export.body["member"]["language"], "ru");

        // Anna joins a campaign; Boris gets a personal coupon. Neither template was written by the
        // tenant: the built-in ones speak each member's language (Boris has none: the tenant's, en).
        let key = app.fresh_key();
        let joined = json!({ "campaigns": ["winter-tyres"] }).to_string().into_bytes();
        let answer =
            app.send("PATCH", &format!("/v1/members/{anna}/loyalty"), &app.admin_key, Some(&key), Some(joined)).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let campaign = app
            .post(
                "/v1/coupon-campaigns",
                json!({ "name": "Spring", "effect": { "percent": 5 }, "code_format": { "prefix": "SP-", "length": 10 } }),
            )
            .await;
        let campaign = campaign.body["id"].as_i64().unwrap();
        let personal = app.post(&format!("/v1/coupon-campaigns/{campaign}/codes"), json!({ "for_members": [boris] })).await;
        assert_eq!(personal.status, 201, "{:?}", personal.body);
        let code = personal.body["codes"][0].as_str().unwrap().to_string();

        let offers = hook.wait_for(2).await;
        let mut seen: Vec<(i64, String, String)> = offers
            .iter()
            .map(|w| {
                let data = &w.body["data"];
                (
                    data["member_id"].as_i64().unwrap(),
                    data["source"].as_str().unwrap().into(),
                    data["campaign"].as_str().unwrap().into(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(seen, [(anna, "campaign".into(), "winter-tyres".into()), (boris, "coupon".into(), "Spring".into())]);
        assert!(offers.iter().all(|w| w.verified && w.body["kind"] == "offer_received"));

        let mail = smtp.wait_for(2, Duration::from_secs(10)).await;
        assert_eq!(mail.len(), 2);
        use mailparse::MailHeaderMap;
        for received in mail {
            let parsed = mailparse::parse_mail(&received.data).unwrap();
            let subject = parsed.headers.get_first_value("Subject").unwrap();
            let text = parsed.subparts[0].get_body().unwrap();
            if received.to == ["anna@example.com"] {
                assert_eq!(subject, "Персональное предложение для вас");
                assert!(text.contains("Анна, здравствуйте!") && text.contains("«winter-tyres»"), "{text}");
            } else {
                assert_eq!(subject, "A personal offer for you");
                assert!(text.contains(&format!("Your personal coupon {code} for Spring")), "{text}");
            }
        }
        // The same PATCH again adds no campaign, so it offers nothing new.
        let key = app.fresh_key();
        let again = json!({ "campaigns": ["winter-tyres"] }).to_string().into_bytes();
        app.send("PATCH", &format!("/v1/members/{anna}/loyalty"), &app.admin_key, Some(&key), Some(again)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(hook.seen.lock().unwrap().len(), 2);
    }
}
