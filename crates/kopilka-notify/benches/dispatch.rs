//! Dispatch throughput: N events in the outbox, one webhook subscription on a loopback receiver,
//! and the time the dispatcher takes to fan them out, sign, send and record every delivery.
//!
//! The anchor, measured in the same run against the same receiver: the same number of POSTs of a
//! body of the same size, as many in flight as the dispatcher keeps, from one keep-alive client,
//! with nothing read, signed or recorded. The ratio is what the outbox, signing and the delivery
//! log cost over the bare HTTP round trips.
//!
//! `cargo bench -p kopilka-notify --bench dispatch` (set `KOPILKA_BENCH_EVENTS` to change N).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kopilka_core::{DomainEvent, MemberId, MovementKind};
use kopilka_notify::{db, DeliveryStatus, Dispatcher, DispatcherConfig, SystemClock};
use kopilka_store::sql::Builder;
use kopilka_store::Store;

#[tokio::main]
async fn main() {
    let events: i64 = std::env::var("KOPILKA_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let tenant: i64 = sqlx::query_scalar("INSERT INTO tenants (name, created_at) VALUES ('bench', 0) RETURNING id")
        .fetch_one(&store.pool)
        .await
        .unwrap();

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    db::create_webhook(&store.pool, kopilka_core::TenantId(tenant), &url, &[], jiff::Timestamp::now()).await.unwrap();

    let mut tx = store.pool.begin().await.unwrap();
    for chunk in (1..=events).collect::<Vec<_>>().chunks(5_000) {
        let mut query = Builder::new("INSERT INTO events (tenant_id, id, kind, member_id, payload, occurred_at) ");
        query.push_values(chunk, |mut b, id| {
            let event = DomainEvent::Points {
                member_id: MemberId(id % 1_000 + 1),
                movement: MovementKind::Earn,
                points: 39,
                currency: "PTS".into(),
                purchase_id: None,
                lot_id: None,
                expires_at: None,
            };
            b.push_bind(tenant)
                .push_bind(*id)
                .push_bind(event.kind())
                .push_bind(event.member_id().0)
                .push_bind(serde_json::to_string(&event).unwrap())
                .push_bind(0i64);
        });
        query.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();

    let dispatcher =
        Dispatcher::open(&dir.path().into(), Arc::new(SystemClock), DispatcherConfig::default()).await.unwrap();
    let started = Instant::now();
    let pass = dispatcher.drain().await.unwrap();
    let seconds = started.elapsed().as_secs_f64();

    let delivered = db::deliveries(
        &store.pool,
        kopilka_core::TenantId(tenant),
        &db::DeliveryFilter { status: Some(DeliveryStatus::Delivered), ..Default::default() },
        1,
    )
    .await
    .unwrap();
    assert!(!delivered.is_empty());
    assert_eq!(pass.delivered as i64, events, "every event delivered once");
    assert_eq!(received.load(Ordering::Relaxed) as i64, events, "the receiver got each once");
    let rate = events as f64 / seconds;
    println!(
        "notify dispatch: {events} webhook deliveries (fan-out, sign, POST to loopback, record) in {seconds:.2} s = {rate:.0} deliveries/s"
    );

    let body = serde_json::to_vec(
        &serde_json::json!({ "event": { "type": "points_earn", "points": 39 }, "pad": "x".repeat(200) }),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let in_flight = DispatcherConfig::default().concurrency_max.max(1);
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let lanes = (0..in_flight).map(|lane| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let mut i = lane as i64;
            while i < events {
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success());
                i += in_flight as i64;
            }
        }
    });
    futures::future::join_all(lanes).await;
    let anchor_seconds = started.elapsed().as_secs_f64();
    assert_eq!((received.load(Ordering::Relaxed) - before) as i64, events);
    let anchor = events as f64 / anchor_seconds;
    println!(
        "anchor: {events} bare POSTs to the same receiver, {in_flight} in flight, in {anchor_seconds:.2} s = {anchor:.0} requests/s; dispatch/anchor = {:.2}x",
        rate / anchor
    );
}
