//! The dispatcher against a real SQLite store and real receivers on loopback: webhooks with
//! retries, an SMTP server, HTTP providers; consent, opt-outs, caps and quiet hours.

mod support;

use kopilka_store::both_stores;

use std::time::Duration;

use jiff::SignedDuration;
use kopilka_core::MemberId;
use kopilka_notify::config;
use kopilka_notify::db::{self, TemplateRow};
use kopilka_notify::settings::{QuietHours, Settings};
use kopilka_notify::templates::Template;
use kopilka_notify::testing::SmtpSink;
use kopilka_notify::{signing, Channel, DeliveryStatus};
use serde_json::json;
use support::{closed_url, points_earned, Harness, Receiver};

async fn subscribe(h: &Harness, url: &str, kinds: &[&str]) -> db::WebhookRow {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    db::create_webhook(h.pool(), h.tenant, url, &kinds, h.now()).await.unwrap()
}

async fn configure(h: &Harness, channel: Channel, config: serde_json::Value) {
    let config = config::parse(channel, &config).unwrap();
    db::put_channel(h.pool(), h.tenant, channel, &config, h.now()).await.unwrap();
}

/// An SMS channel through Twilio's API at `base_url`, with placeholder credentials.
async fn configure_twilio(h: &Harness, base_url: &str) {
    let config =
        json!({"provider": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+1", "base_url": base_url});
    configure(h, Channel::Sms, config).await;
}

async fn template(h: &Harness, kind: &str, channel: Channel, subject: Option<&str>, text: &str, html: Option<&str>) {
    let template = Template { subject: subject.map(Into::into), text: text.into(), html: html.map(Into::into) };
    kopilka_notify::templates::validate(kind, channel, "ru", &template).unwrap();
    let row = TemplateRow { event_kind: kind.into(), channel, language: "ru".into(), template, updated_at: h.now() };
    db::put_template(h.pool(), h.tenant, &row).await.unwrap();
}

both_stores! {
    async fn a_receiver_that_fails_twice_then_succeeds_accepts_exactly_one_delivery_under_one_id() {
        let h = Harness::new().await;
        let receiver = Receiver::start(2).await;
        let hook = subscribe(&h, &format!("{}/hook", receiver.url), &["points_earn"]).await;
        h.member(1, json!({})).await;
        h.event(&points_earned(1, 39)).await;
        h.event(&kopilka_core::DomainEvent::MemberUpdated { member_id: MemberId(1) }).await;

        h.dispatcher.drain().await.unwrap();
        let rows = h.deliveries().await;
        assert_eq!(rows.len(), 1, "the filter keeps member_updated out");
        assert_eq!((rows[0].status, rows[0].attempts), (DeliveryStatus::Failed, 1));
        assert!(rows[0].last_error.as_deref().unwrap().contains("HTTP 500"), "{:?}", rows[0].last_error);
        // Nothing is due until the backoff passes.
        assert_eq!(h.dispatcher.drain().await.unwrap().attempts, 0);
        for _ in 0..2 {
            h.advance(SignedDuration::from_hours(2));
            h.dispatcher.drain().await.unwrap();
        }
        let rows = h.deliveries().await;
        assert_eq!((rows[0].status, rows[0].attempts), (DeliveryStatus::Delivered, 3));
        h.advance(SignedDuration::from_hours(2));
        assert_eq!(h.dispatcher.drain().await.unwrap().attempts, 0, "a delivered delivery is not sent again");

        let seen = receiver.seen();
        assert_eq!(seen.iter().map(|r| r.status).collect::<Vec<_>>(), [500, 500, 200]);
        let ids: Vec<String> = seen.iter().map(|r| r.header("kopilka-delivery-id")).collect();
        assert!(ids.iter().all(|id| *id == rows[0].id), "{ids:?}");
        let accepted = seen.iter().filter(|r| r.status == 200).count();
        assert_eq!(accepted, 1);
        for request in &seen {
            let now = h.now().as_second();
            signing::verify(&request.header("kopilka-signature"), &request.body, hook.secret.expose(), now, 24 * 3600)
                .expect("every attempt is signed with the subscription's secret");
            assert_eq!(request.json()["kind"], "points_earn");
            assert_eq!(request.json()["data"]["points"], 39);
        }
    }
}

both_stores! {
    async fn an_unreachable_receiver_keeps_the_delivery_queued_with_its_error_until_dead_then_replay_sends_it() {
        let h = Harness::new().await;
        let url = closed_url().await;
        subscribe(&h, &url, &[]).await;
        h.event(&points_earned(1, 10)).await;
        h.dispatcher.drain().await.unwrap();
        let row = &h.deliveries().await[0];
        assert_eq!(row.status, DeliveryStatus::Failed);
        let error = row.last_error.clone().unwrap();
        assert!(error.contains("error sending request") && !error.contains(&url), "{error}");

        for _ in 0..3 {
            h.advance(SignedDuration::from_hours(2));
            h.dispatcher.drain().await.unwrap();
        }
        let row = h.deliveries().await[0].clone();
        assert_eq!((row.status, row.attempts, row.next_attempt_at), (DeliveryStatus::Dead, 4, None));

        let replayed = db::replay(h.pool(), h.tenant, &row.id, h.now()).await.unwrap();
        assert_eq!((replayed.status, replayed.attempts), (DeliveryStatus::Pending, 0));
        assert_eq!(replayed.id, row.id, "a replay keeps the delivery id");
    }
}

both_stores! {
    async fn each_event_is_fanned_out_once_and_the_cursor_moves_with_the_deliveries() {
        let h = Harness::new().await;
        let receiver = Receiver::start(0).await;
        subscribe(&h, &receiver.url, &[]).await;
        subscribe(&h, &receiver.url, &["purchase_recorded"]).await;
        for points in 1..=5 {
            h.event(&points_earned(1, points)).await;
        }
        let mut conn = h.dispatcher.pool().acquire().await.unwrap();
        assert_eq!(kopilka_notify::fanout::pass(&mut conn, h.now()).await.unwrap(), 5);
        assert_eq!(kopilka_notify::fanout::pass(&mut conn, h.now()).await.unwrap(), 0);
        let cursor: i64 = sqlx::query_scalar("SELECT last_event_id FROM notify_cursor").fetch_one(h.pool()).await.unwrap();
        assert_eq!(cursor, 5);
        assert_eq!(h.deliveries().await.len(), 5, "only the catch-all subscription matches");
        h.dispatcher.drain().await.unwrap();
        assert_eq!(receiver.seen().len(), 5);
    }
}

both_stores! {
    async fn two_passes_at_once_fan_each_event_out_once() {
        // Passes plan outside the lock and write under it; the one that finds the cursor moved
        // drops its plan. A delivery planned twice would fail on its primary key.
        let h = Harness::new().await;
        subscribe(&h, &closed_url().await, &[]).await;
        for points in 1..=300 {
            h.event(&points_earned(1, points)).await;
        }
        let mut a = h.dispatcher.pool().acquire().await.unwrap();
        let mut b = h.dispatcher.pool().acquire().await.unwrap();
        let mut consumed = 0;
        for _ in 0..3 {
            let (x, y) =
                tokio::join!(kopilka_notify::fanout::pass(&mut a, h.now()), kopilka_notify::fanout::pass(&mut b, h.now()));
            consumed += x.unwrap() + y.unwrap();
        }
        assert_eq!(consumed, 300);
        assert_eq!(h.deliveries().await.len(), 300);
        let cursor: i64 = sqlx::query_scalar("SELECT last_event_id FROM notify_cursor").fetch_one(h.pool()).await.unwrap();
        assert_eq!(cursor, 300);
    }
}

both_stores! {
    async fn an_erasure_amid_events_is_applied_in_order_within_one_pass() {
        let h = Harness::new().await;
        configure_twilio(&h, &closed_url().await).await;
        template(&h, "points_earn", Channel::Sms, None, "+{{ event.points }}", None).await;
        h.member(1, json!({"sms": true})).await;
        h.member(2, json!({"sms": true})).await;
        h.event(&points_earned(1, 5)).await;
        h.event(&points_earned(2, 6)).await;
        h.event(&kopilka_core::DomainEvent::MemberErased { member_id: MemberId(1) }).await;
        h.event(&points_earned(2, 7)).await;
        let mut conn = h.dispatcher.pool().acquire().await.unwrap();
        assert_eq!(kopilka_notify::fanout::pass(&mut conn, h.now()).await.unwrap(), 4, "one pass, three windows");
        let rows = h.deliveries().await;
        let of = |member: i64| rows.iter().filter(move |d| d.member_id == Some(member)).collect::<Vec<_>>();
        let erased = of(1);
        assert_eq!(erased.len(), 1);
        assert_eq!(
            (erased[0].status, erased[0].reason.as_deref(), erased[0].target.as_str()),
            (DeliveryStatus::Suppressed, Some("member_erased"), ""),
            "the message planned before the erasure is erased by it"
        );
        let kept = of(2);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|d| d.status == DeliveryStatus::Pending && d.target == "+79120000002"), "{kept:?}");
    }
}

both_stores! {
    async fn an_email_reaches_a_real_smtp_server_with_text_and_html_parts_and_an_unsubscribe_link() {
        let h = Harness::new().await;
        let smtp = SmtpSink::start().await;
        configure(
            &h,
            Channel::Email,
            json!({"provider": "smtp", "host": "127.0.0.1", "port": smtp.port, "security": "plain", "from": "Kopilka <shop@example.com>"}),
        )
        .await;
        template(
            &h,
            "points_earn",
            Channel::Email,
            Some("+{{ event.points }} баллов"),
            "{{ member.name }}, вам начислено {{ event.points }} баллов. Отписаться: {{ unsubscribe_url }}",
            Some("<p>{{ member.name }}, вам начислено <b>{{ event.points }}</b> баллов.</p><a href=\"{{ unsubscribe_url }}\">Отписаться</a>"),
        )
        .await;
        h.member(1, json!({"email": true})).await;
        h.event(&points_earned(1, 39)).await;
        h.dispatcher.drain().await.unwrap();

        let mail = smtp.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].to, ["member1@example.com"]);
        let parsed = mailparse::parse_mail(&mail[0].data).unwrap();
        use mailparse::MailHeaderMap;
        assert_eq!(parsed.headers.get_first_value("Subject").unwrap(), "+39 баллов");
        let delivery = &h.deliveries().await[0];
        assert_eq!(parsed.headers.get_first_value("Kopilka-Delivery-Id").unwrap(), delivery.id);
        let unsubscribe = parsed.headers.get_first_value("List-Unsubscribe").unwrap();
        assert!(unsubscribe.contains("/v1/unsubscribe?token=1.1.email."), "{unsubscribe}");
        assert_eq!(parsed.headers.get_first_value("List-Unsubscribe-Post").unwrap(), "List-Unsubscribe=One-Click");
        assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
        let parts: Vec<(String, String)> =
            parsed.subparts.iter().map(|p| (p.ctype.mimetype.clone(), p.get_body().unwrap())).collect();
        assert_eq!(parts[0].0, "text/plain");
        assert!(parts[0].1.contains("Member 1, вам начислено 39 баллов"), "{}", parts[0].1);
        assert!(parts[0].1.contains("/v1/unsubscribe?token="));
        assert_eq!(parts[1].0, "text/html");
        assert!(parts[1].1.contains("<b>39</b>") && parts[1].1.contains("Отписаться"), "{}", parts[1].1);
        assert_eq!(delivery.status, DeliveryStatus::Delivered);
    }
}

both_stores! {
    async fn sms_push_and_telegram_go_out_in_their_providers_formats() {
        let h = Harness::new().await;
        let provider = Receiver::start(0).await;
        configure(&h, Channel::Sms, json!({"provider": "twilio", "account_sid": "AC123", "auth_token": "tw-secret", "from": "+15550001", "base_url": provider.url})).await;
        configure(&h, Channel::Push, json!({"provider": "fcm", "project_id": "kopilka-test", "access_token": "ya29.token", "base_url": provider.url})).await;
        configure(
            &h,
            Channel::Messenger,
            json!({"provider": "telegram", "bot_token": "123:ABC", "base_url": provider.url}),
        )
        .await;
        for channel in [Channel::Sms, Channel::Push, Channel::Messenger] {
            template(&h, "points_earn", channel, Some("Баллы"), "+{{ event.points }} баллов", None).await;
        }
        h.member(1, json!({"sms": true, "push": true, "messenger": true})).await;
        db::put_contact(h.pool(), h.tenant, MemberId(1), Channel::Push, "fcm-device-token", h.now()).await.unwrap();
        db::put_contact(h.pool(), h.tenant, MemberId(1), Channel::Messenger, "777000", h.now()).await.unwrap();
        h.event(&points_earned(1, 7)).await;
        h.dispatcher.drain().await.unwrap();

        let mut seen = provider.wait_for(3).await;
        seen.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(seen.len(), 3);
        let twilio = &seen[0];
        assert_eq!(twilio.path, "/2010-04-01/Accounts/AC123/Messages.json");
        assert_eq!(twilio.header("content-type"), "application/x-www-form-urlencoded");
        assert!(twilio.header("authorization").starts_with("Basic "));
        let form = String::from_utf8(twilio.body.to_vec()).unwrap();
        assert!(form.contains("To=%2B79120000001") && form.contains("From=%2B15550001"), "{form}");
        let telegram = &seen[1];
        assert_eq!(telegram.path, "/bot123:ABC/sendMessage");
        assert_eq!(telegram.json(), json!({"chat_id": "777000", "text": "+7 баллов"}));
        let fcm = &seen[2];
        assert_eq!(fcm.path, "/v1/projects/kopilka-test/messages:send");
        assert_eq!(fcm.header("authorization"), "Bearer ya29.token");
        assert_eq!(fcm.json()["message"]["token"], "fcm-device-token");
        assert_eq!(fcm.json()["message"]["notification"], json!({"title": "Баллы", "body": "+7 баллов"}));
        assert!(h.deliveries().await.iter().all(|d| d.status == DeliveryStatus::Delivered));
    }
}

both_stores! {
    async fn the_generic_adapter_sends_the_described_request() {
        let h = Harness::new().await;
        let provider = Receiver::start(0).await;
        configure(
            &h,
            Channel::Sms,
            json!({"provider": "http", "url": format!("{}/send", provider.url), "method": "PUT",
                   "auth_header": {"name": "X-Api-Key", "value": "k-123"},
                   "body_template": "{\"phone\": {{ to|tojson }}, \"message\": {{ text|tojson }}}"}),
        )
        .await;
        template(&h, "points_earn", Channel::Sms, None, "Привет, \"{{ member.name }}\"", None).await;
        h.member(1, json!({"sms": true})).await;
        h.event(&points_earned(1, 7)).await;
        h.dispatcher.drain().await.unwrap();
        let seen = provider.wait_for(1).await;
        assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("PUT", "/send"));
        assert_eq!(seen[0].header("x-api-key"), "k-123");
        assert_eq!(seen[0].json(), json!({"phone": "+79120000001", "message": "Привет, \"Member 1\""}));
    }
}

both_stores! {
    async fn consent_opt_outs_the_daily_cap_and_quiet_hours_are_respected_and_suppressions_logged() {
        let h = Harness::new().await;
        let provider = Receiver::start(0).await;
        configure_twilio(&h, &provider.url).await;
        template(&h, "points_earn", Channel::Sms, None, "+{{ event.points }}", None).await;
        let settings = Settings { daily_cap_per_member: 2, ..Settings::default() };
        db::put_settings(h.pool(), h.tenant, &settings, h.now()).await.unwrap();
        h.member(1, json!({"sms": true})).await;
        h.member(2, json!({"sms": false})).await;
        h.member(3, json!({"sms": true})).await;
        let mut conn = h.pool().acquire().await.unwrap();
        db::opt_out(&mut conn, h.tenant, MemberId(3), Channel::Sms, "link", h.now()).await.unwrap();
        for _ in 0..3 {
            h.event(&points_earned(1, 1)).await;
        }
        h.event(&points_earned(2, 1)).await;
        h.event(&points_earned(3, 1)).await;
        h.dispatcher.drain().await.unwrap();
        let outcome: Vec<(i64, DeliveryStatus, Option<String>)> =
            h.deliveries().await.into_iter().map(|d| (d.event_id, d.status, d.reason)).collect();
        assert_eq!(
            outcome,
            [
                (1, DeliveryStatus::Delivered, None),
                (2, DeliveryStatus::Delivered, None),
                (3, DeliveryStatus::Suppressed, Some("frequency_cap".into())),
                (4, DeliveryStatus::Suppressed, Some("no_consent".into())),
                (5, DeliveryStatus::Suppressed, Some("opted_out".into())),
            ]
        );
        assert_eq!(provider.seen().len(), 2);

        // The next day at 23:30 Moscow time, within quiet hours: delayed to 09:00, not dropped.
        let quiet = Settings { quiet_hours: Some(QuietHours { start: "22:00".into(), end: "09:00".into() }), ..settings };
        db::put_settings(h.pool(), h.tenant, &quiet, h.now()).await.unwrap();
        h.advance(SignedDuration::from_mins(24 * 60 + 10 * 60 + 30));
        let event = h.event(&points_earned(1, 1)).await;
        h.dispatcher.drain().await.unwrap();
        let delayed = h.deliveries().await.into_iter().find(|d| d.event_id == event).unwrap();
        assert_eq!(delayed.status, DeliveryStatus::Pending);
        assert_eq!(delayed.next_attempt_at, Some("2026-01-17T06:00:00Z".parse().unwrap()));
        h.advance(SignedDuration::from_hours(10));
        h.dispatcher.drain().await.unwrap();
        assert_eq!(provider.seen().len(), 3, "sent when the quiet hours ended");
    }
}

both_stores! {
    async fn after_a_rotation_deliveries_verify_with_the_old_secret_until_the_grace_period_ends() {
        let h = Harness::new().await;
        let receiver = Receiver::start(0).await;
        let old = subscribe(&h, &receiver.url, &[]).await;
        let new = db::rotate_webhook_secret(h.pool(), h.tenant, old.id, h.now()).await.unwrap();
        assert_ne!(old.secret, new.secret);
        h.event(&points_earned(1, 1)).await;
        h.dispatcher.drain().await.unwrap();
        h.advance(db::SECRET_GRACE + SignedDuration::from_secs(1));
        h.event(&points_earned(1, 2)).await;
        h.dispatcher.drain().await.unwrap();

        let seen = receiver.wait_for(2).await;
        let verify = |request: &support::Recorded, secret: &str, at: i64| {
            signing::verify(&request.header("kopilka-signature"), &request.body, secret, at, 300).is_ok()
        };
        let first_at = support::START.parse::<jiff::Timestamp>().unwrap().as_second();
        assert!(verify(&seen[0], new.secret.expose(), first_at) && verify(&seen[0], old.secret.expose(), first_at));
        let later = h.now().as_second();
        assert!(verify(&seen[1], new.secret.expose(), later));
        assert!(!verify(&seen[1], old.secret.expose(), later), "the old secret expired with its grace period");
    }
}

both_stores! {
    async fn erasing_a_member_clears_their_addresses_and_messages_from_the_delivery_log() {
        let h = Harness::new().await;
        configure_twilio(&h, &closed_url().await).await;
        template(&h, "points_earn", Channel::Sms, None, "+{{ event.points }} для {{ member.name }}", None).await;
        h.member(1, json!({"sms": true})).await;
        h.event(&points_earned(1, 5)).await;
        h.dispatcher.drain().await.unwrap();
        let before = h.deliveries().await;
        assert_eq!((before[0].status, before[0].target.as_str()), (DeliveryStatus::Failed, "+79120000001"));
        h.event(&kopilka_core::DomainEvent::MemberErased { member_id: MemberId(1) }).await;
        h.dispatcher.drain().await.unwrap();
        let after = &h.deliveries().await[0];
        assert_eq!(
            (after.status, after.reason.as_deref(), after.target.as_str()),
            (DeliveryStatus::Suppressed, Some("member_erased"), "")
        );
        assert_eq!(after.payload, "{}");
    }
}

both_stores! {
    async fn a_retry_of_a_message_that_would_fall_in_quiet_hours_waits_until_they_end() {
        let h = Harness::new().await;
        configure_twilio(&h, &closed_url().await).await;
        template(&h, "points_earn", Channel::Sms, None, "+{{ event.points }}", None).await;
        let quiet = Settings {
            quiet_hours: Some(QuietHours { start: "22:00".into(), end: "09:00".into() }),
            ..Settings::default()
        };
        db::put_settings(h.pool(), h.tenant, &quiet, h.now()).await.unwrap();
        h.member(1, json!({"sms": true})).await;
        // 21:59:50 in Moscow: the first attempt goes (and fails); the retry 15-30 s later is in quiet hours.
        h.advance(SignedDuration::from_secs(8 * 3600 + 59 * 60 + 50));
        h.event(&points_earned(1, 5)).await;
        h.dispatcher.drain().await.unwrap();
        let row = &h.deliveries().await[0];
        assert_eq!((row.status, row.attempts), (DeliveryStatus::Failed, 1));
        assert_eq!(row.next_attempt_at, Some("2026-01-16T06:00:00Z".parse().unwrap()));
    }
}

both_stores! {
    async fn quiet_hours_follow_each_member_time_zone_and_templates_each_member_language() {
        let h = Harness::new().await;
        let provider = Receiver::start(0).await;
        configure_twilio(&h, &provider.url).await;
        template(&h, "points_earn", Channel::Sms, None, "Начислено {{ event.points }} баллов", None).await;
        let english = Template { subject: None, text: "{{ event.points }} points earned".into(), html: None };
        let row = TemplateRow {
            event_kind: "points_earn".into(),
            channel: Channel::Sms,
            language: "en".into(),
            template: english,
            updated_at: h.now(),
        };
        db::put_template(h.pool(), h.tenant, &row).await.unwrap();
        // The tenant is in Moscow and writes in English by default; quiet from 22:00 to 08:00.
        let quiet = QuietHours { start: "22:00".into(), end: "08:00".into() };
        let settings = Settings { language: "en".into(), quiet_hours: Some(quiet), ..Settings::default() };
        db::put_settings(h.pool(), h.tenant, &settings, h.now()).await.unwrap();
        for (id, zone, language) in [(1, Some("Asia/Vladivostok"), Some("ru")), (2, Some("Europe/Kaliningrad"), None)] {
            h.member(id, json!({"sms": true})).await;
            sqlx::query("UPDATE members SET time_zone = $1, language = $2 WHERE tenant_id = $3 AND id = $4")
                .bind(zone)
                .bind(language)
                .bind(h.tenant.0)
                .bind(id)
                .execute(h.pool())
                .await
                .unwrap();
        }
        // 13:00 UTC: 23:00 in Vladivostok (quiet until 08:00 there, 22:00 UTC), 15:00 in Kaliningrad
        // and 16:00 in Moscow (not quiet for the tenant either).
        h.advance(SignedDuration::from_hours(3));
        let vladivostok = h.event(&points_earned(1, 7)).await;
        let kaliningrad = h.event(&points_earned(2, 9)).await;
        h.dispatcher.drain().await.unwrap();
        let rows = h.deliveries().await;
        let of = |event: i64| rows.iter().find(|d| d.event_id == event).unwrap().clone();
        assert_eq!(of(kaliningrad).status, DeliveryStatus::Delivered);
        assert_eq!(of(vladivostok).status, DeliveryStatus::Pending);
        assert_eq!(of(vladivostok).next_attempt_at, Some("2026-01-15T22:00:00Z".parse().unwrap()));
        let bodies = |seen: Vec<support::Recorded>| -> Vec<String> {
            seen.iter()
                .map(|r| {
                    let form: Vec<(String, String)> = serde_urlencoded_pairs(&r.body);
                    form.into_iter().find(|(k, _)| k == "Body").map(|(_, v)| v).unwrap_or_default()
                })
                .collect()
        };
        assert_eq!(bodies(provider.seen()), ["9 points earned"]);
        h.advance(SignedDuration::from_hours(9));
        h.dispatcher.drain().await.unwrap();
        assert_eq!(bodies(provider.seen()), ["9 points earned", "Начислено 7 баллов"], "the ru member reads Russian");
    }
}

/// `application/x-www-form-urlencoded` pairs, as Twilio receives them.
fn serde_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body)))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

both_stores! {
    async fn email_goes_over_starttls_to_a_relay_whose_self_signed_certificate_is_configured_as_root() {
        let h = Harness::new().await;
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = certified.cert.pem();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
        let server = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let smtp = SmtpSink::start_tls(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server))).await;
        template(&h, "points_earn", Channel::Email, Some("+{{ event.points }}"), "Вам {{ event.points }} баллов", None)
            .await;
        h.member(1, json!({"email": true})).await;

        // Without the root the public roots cannot vouch for the certificate: the attempt fails and
        // the message stays queued.
        let untrusted = json!({"provider": "smtp", "host": "localhost", "port": smtp.port, "security": "starttls",
                               "from": "shop@example.com"});
        configure(&h, Channel::Email, untrusted.clone()).await;
        h.event(&points_earned(1, 39)).await;
        h.dispatcher.drain().await.unwrap();
        let failed = h.deliveries().await.remove(0);
        assert_eq!(failed.status, DeliveryStatus::Failed, "{failed:?}");
        assert!(smtp.received().is_empty());

        let mut trusted = untrusted;
        trusted["root_certificate_pem"] = json!(pem);
        configure(&h, Channel::Email, trusted).await;
        h.advance(SignedDuration::from_hours(1));
        h.dispatcher.drain().await.unwrap();
        let mail = smtp.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mail.len(), 1);
        assert!(mail[0].tls, "the message came after the STARTTLS upgrade");
        assert_eq!(mail[0].to, ["member1@example.com"]);
        let parsed = mailparse::parse_mail(&mail[0].data).unwrap();
        use mailparse::MailHeaderMap;
        assert_eq!(parsed.headers.get_first_value("Subject").unwrap(), "+39");
        assert_eq!(parsed.get_body().unwrap().trim(), "Вам 39 баллов");
        assert_eq!(h.deliveries().await[0].status, DeliveryStatus::Delivered);
    }
}
