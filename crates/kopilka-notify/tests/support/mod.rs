//! A store with a tenant and members, a dispatcher on a manual clock, and loopback receivers that
//! record every request, so dispatcher tests read as scenarios. Tests inside `both_stores!` run
//! on SQLite and on PostgreSQL (`kopilka_store::testing`).

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use jiff::{SignedDuration, Timestamp};
use kopilka_core::TenantId;
use kopilka_notify::{Clock, Dispatcher, DispatcherConfig, ManualClock};
use kopilka_store::Store;
use serde_json::{json, Value};

pub const START: &str = "2026-01-15T10:00:00Z";

pub struct Harness {
    pub db: kopilka_store::testing::TestDatabase,
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub dispatcher: Dispatcher,
    pub tenant: TenantId,
    next_event: std::sync::atomic::AtomicI64,
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_config(DispatcherConfig { attempts_max: 4, ..DispatcherConfig::default() }).await
    }

    pub async fn with_config(config: DispatcherConfig) -> Harness {
        let db = kopilka_store::testing::test_store().await;
        let store = Store::connect(&db.database).await.unwrap();
        let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
        let tenant: i64 = sqlx::query_scalar("INSERT INTO tenants (name, created_at) VALUES ('t', 0) RETURNING id")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let dispatcher = Dispatcher::open(&db.database, clock.clone(), config).await.unwrap();
        Harness { db, store, clock, dispatcher, tenant: TenantId(tenant), next_event: 1.into() }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn advance(&self, by: SignedDuration) {
        self.clock.advance(by);
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.store.pool
    }

    /// A member with an email, a phone and the consents given.
    pub async fn member(&self, id: i64, consents: Value) {
        sqlx::query(
            "INSERT INTO members (tenant_id, id, card, phone, email, name, consents, signup_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, 0)",
        )
        .bind(self.tenant.0)
        .bind(id)
        .bind(format!("C-{id}"))
        .bind(format!("+7912000000{id}"))
        .bind(format!("member{id}@example.com"))
        .bind(format!("Member {id}"))
        .bind(consents.to_string())
        .execute(self.pool())
        .await
        .unwrap();
    }

    /// Appends an event to the outbox as the writer would; returns its id.
    pub async fn event(&self, event: &kopilka_core::DomainEvent) -> i64 {
        let id = self.next_event.fetch_add(1, Ordering::Relaxed);
        sqlx::query(
            "INSERT INTO events (tenant_id, id, kind, member_id, payload, occurred_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.tenant.0)
        .bind(id)
        .bind(event.kind())
        .bind(event.member_id().0)
        .bind(serde_json::to_string(event).unwrap())
        .bind(self.now().as_microsecond())
        .execute(self.pool())
        .await
        .unwrap();
        id
    }

    pub async fn deliveries(&self) -> Vec<kopilka_notify::db::DeliveryRow> {
        let mut rows =
            kopilka_notify::db::deliveries(self.pool(), self.tenant, &Default::default(), 500).await.unwrap();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }
}

pub fn points_earned(member: i64, points: i64) -> kopilka_core::DomainEvent {
    kopilka_core::DomainEvent::Points {
        member_id: kopilka_core::MemberId(member),
        movement: kopilka_core::MovementKind::Earn,
        points,
        currency: "PTS".into(),
        purchase_id: None,
        lot_id: None,
        expires_at: None,
    }
}

/// A request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone)]
struct ReceiverState {
    seen: Arc<Mutex<Vec<Recorded>>>,
    fail_first: Arc<AtomicUsize>,
}

/// An HTTP server on loopback that records every request and answers 500 to the first
/// `fail_first`, then 200 with `{"ok": true}`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let state = ReceiverState { seen: Arc::default(), fail_first: Arc::new(AtomicUsize::new(fail_first)) };
        let seen = state.seen.clone();
        let app = axum::Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, seen }
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, count: usize) -> Vec<Recorded> {
        for _ in 0..500 {
            if self.seen().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.seen()
    }
}

async fn record(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let failing = state.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if failing { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    state.seen.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.to_string(),
        headers,
        body,
        status: status.as_u16(),
    });
    (status, json!({ "ok": !failing }).to_string())
}

/// A loopback URL nothing listens on.
pub async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    url
}
