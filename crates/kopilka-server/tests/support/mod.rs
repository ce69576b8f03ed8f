//! `spawn_app()`: the real server on a random loopback port, with a store of its own and a clock
//! the test moves. Helpers read like loyalty scenarios.
//!
//! Tests written inside `both_stores! { … }` run twice, as `NAME::sqlite` and `NAME::postgres`:
//! `spawn_app()` opens the store the running half asks for (a temporary SQLite directory, or a
//! PostgreSQL database of the test's own; see `kopilka_store::testing`).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use kopilka_server::app::{self, Config, Running};
use kopilka_server::clock::ManualClock;
use kopilka_store::testing::TestDatabase;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub admin_key: String,
    pub clock: Arc<ManualClock>,
    pub running: Option<Running>,
    pub store: TestDatabase,
    keys: AtomicU64,
}

/// What a call answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub replayed: bool,
    pub bytes: Vec<u8>,
    pub body: Value,
}

impl Answer {
    /// The problem's stable code, asserting the answer is a problem+json document.
    pub fn code(&self) -> &str {
        assert_eq!(self.content_type, "application/problem+json", "not a problem: {:?}", self.body);
        self.body["code"].as_str().expect("problems have a code")
    }
}

pub const START: &str = "2026-01-15T10:00:00Z";

#[allow(unused_imports)]
pub(crate) use kopilka_store::both_stores;
pub use kopilka_store::testing::test_store;

pub async fn spawn_app() -> TestApp {
    // Errors the server logs show with a failing test's output (RUST_LOG to see more).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,sqlx=error".into()),
        )
        .with_test_writer()
        .try_init();
    let store = test_store().await;
    let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
    let config = Config {
        database: store.database.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        // No scheduled jobs: tests run them on demand, and a scheduled round would race the test
        // for the clock it moves.
        jobs_interval: None,
    };
    let running = app::start(&config, clock.clone()).await.expect("server starts");
    let tenant = app::bootstrap(&running.state).await.expect("bootstrap").expect("a fresh store gets a tenant");
    TestApp {
        base: format!("http://{}", running.addr),
        client: reqwest::Client::new(),
        admin_key: tenant.admin_key,
        clock,
        running: Some(running),
        store,
        keys: AtomicU64::new(0),
    }
}

impl TestApp {
    pub fn fresh_key(&self) -> String {
        format!("key-{}", self.keys.fetch_add(1, Ordering::Relaxed))
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: &str,
        idempotency: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(idempotency) = idempotency {
            request = request.header("Idempotency-Key", idempotency);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let replayed = response.headers().get("idempotency-replayed").is_some();
        let bytes = response.bytes().await.unwrap().to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, content_type, replayed, bytes, body }
    }

    /// POSTs as the admin with a fresh idempotency key.
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.post_as(&self.admin_key.clone(), path, body).await
    }

    pub async fn post_as(&self, key: &str, path: &str, body: Value) -> Answer {
        let idempotency = self.fresh_key();
        self.send("POST", path, key, Some(&idempotency), Some(body.to_string().into_bytes())).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &self.admin_key.clone(), None, None).await
    }

    pub async fn create_member(&self, card: &str) -> i64 {
        let answer = self.post("/v1/members", json!({ "card": card })).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        answer.body["id"].as_i64().unwrap()
    }

    /// Records a purchase of one line of `amount_minor` RUB.
    pub async fn purchase(&self, member: i64, receipt: &str, amount_minor: i64) -> Answer {
        self.post("/v1/purchases", purchase_body(member, receipt, amount_minor, 0)).await
    }

    pub async fn adjust(&self, member: i64, points: i64) -> Answer {
        self.post("/v1/adjustments", json!({ "member_id": member, "points": points, "reason": "test" })).await
    }

    /// (available, pending)
    pub async fn balance(&self, member: i64) -> (i64, i64) {
        let answer = self.get(&format!("/v1/members/{member}/balance")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        (answer.body["available"].as_i64().unwrap(), answer.body["pending"].as_i64().unwrap())
    }

    pub async fn history_len(&self, member: i64) -> usize {
        let answer = self.get(&format!("/v1/members/{member}/history?limit=500")).await;
        answer.body["items"].as_array().map(Vec::len).unwrap_or(0)
    }

    pub async fn run_job(&self, job: &str) -> Value {
        let answer = self.send("POST", &format!("/v1/jobs/{job}/run"), &self.admin_key.clone(), None, None).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.body
    }

    pub fn advance_days(&self, days: i64) {
        self.clock.advance(SignedDuration::from_hours(24 * days));
    }

    pub fn now(&self) -> Timestamp {
        use kopilka_server::clock::Clock;
        self.clock.now()
    }

    pub async fn create_key(&self, role: &str) -> String {
        let answer = self.post("/v1/api-keys", json!({ "role": role, "name": role })).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        answer.body["key"].as_str().unwrap().to_string()
    }

    /// The ledger checked from its rows; panics with the problems found.
    pub async fn assert_ledger_sound(&self) {
        let report = self.running.as_ref().unwrap().state.store.verify().await.unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().stop().await;
    }
}

pub fn purchase_body(member: i64, receipt: &str, amount_minor: i64, redeem_points: i64) -> Value {
    json!({
        "member_id": member,
        "external_id": receipt,
        "currency": "RUB",
        "redeem_points": redeem_points,
        "lines": [{ "sku": "SKU-1", "category": "food", "quantity": 1, "unit_price_minor": amount_minor }],
    })
}
