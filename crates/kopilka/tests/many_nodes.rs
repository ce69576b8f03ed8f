//! Two real `kopilka serve` processes on one PostgreSQL database, as a cluster runs: concurrent
//! redemptions on one member from both never overdraw, a single-use code is used once, an
//! idempotency key retried on the other node gets the first answer, a job run on both at once moves
//! each lot once, and a job killed midway leaves a ledger that balances and finishes on the next
//! run. Then the store is moved back to SQLite with `migrate-store` and verified.
//!
//! PostgreSQL only: without a server (and without `KOPILKA_TEST_PG`) the test says it is skipped.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kopilka_store::testing::{StoreKind, TestDatabase};
use kopilka_store::Database;
use serde_json::{json, Value};
use support::{text, Kopilka};

/// A `kopilka` command on the test's PostgreSQL database.
fn kopilka(database: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kopilka"));
    command.args(["--database", database]).env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0");
    command
}

/// A node: `kopilka serve` on a free port, started.
fn spawn_node(database: &str) -> Child {
    kopilka(database)
        .args(["serve", "--listen", "127.0.0.1:0", "--jobs-interval-secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for a node to listen: its base URL and, if it created the cluster's tenant, the admin
/// key it printed.
fn listening(child: &mut Child) -> (String, Option<String>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut key = None;
    let base = loop {
        let line = lines.next().expect("serve prints where it listens").unwrap();
        if line.trim_start().starts_with("kpk_") {
            key = Some(line.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("Kopilka listens on ") {
            break format!("http://{}", rest.split_whitespace().next().unwrap().trim_start_matches("http://"));
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (base, key)
}

struct Api {
    client: reqwest::blocking::Client,
    key: String,
}

impl Api {
    fn post(&self, base: &str, path: &str, idempotency: &str, body: &Value) -> (u16, Value, bool, Vec<u8>) {
        let answer = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", idempotency)
            .json(body)
            .send()
            .unwrap();
        let status = answer.status().as_u16();
        let replayed = answer.headers().get("idempotency-replayed").is_some();
        let bytes = answer.bytes().unwrap().to_vec();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), replayed, bytes)
    }

    fn get(&self, base: &str, path: &str) -> Value {
        self.client.get(format!("{base}{path}")).bearer_auth(&self.key).send().unwrap().json().unwrap()
    }
}

/// The movements a `jobs run` printed ("expiry: N member(s), M movement(s)").
fn movements(output: &std::process::Output) -> i64 {
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    let count = printed.split(", ").nth(1).and_then(|m| m.split_whitespace().next()).and_then(|n| n.parse().ok());
    count.unwrap_or_else(|| panic!("no movement count in {printed:?}"))
}

fn purchase(member: i64, receipt: &str, amount_minor: i64) -> Value {
    json!({ "member_id": member, "external_id": receipt, "currency": "RUB",
        "lines": [{ "sku": "SKU-1", "category": "food", "quantity": 1, "unit_price_minor": amount_minor }] })
}

fn basket(member: i64, amount_minor: i64, coupons: &[&str]) -> Value {
    json!({ "member_id": member, "currency": "RUB", "coupons": coupons,
        "lines": [{ "sku": "SKU-1", "category": "food", "quantity": 1, "unit_price_minor": amount_minor }] })
}

#[test]
fn two_nodes_on_one_postgresql_share_one_ledger() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(store) = runtime.block_on(TestDatabase::new(StoreKind::Postgres)) else { return };
    let Database::Postgres(url) = &store.database else { unreachable!() };
    // Both nodes start at once on the empty database: one creates the tenant, the other joins it.
    let (mut a, mut b) = (spawn_node(url), spawn_node(url));
    let ((base_a, key_a), (base_b, key_b)) = (listening(&mut a), listening(&mut b));
    let key = match (key_a, key_b) {
        (Some(key), None) | (None, Some(key)) => key,
        keys => panic!("exactly one node creates the tenant: {keys:?}"),
    };
    let api = Api { client: reqwest::blocking::Client::new(), key };
    let bases = [base_a.as_str(), base_b.as_str()];

    // A member with 100 points, created on one node, spent from both.
    let (status, member, ..) = api.post(&base_a, "/v1/members", "m-1", &json!({ "card": "C-1" }));
    assert_eq!(status, 201, "{member}");
    let member = member["id"].as_i64().unwrap();
    let adjust = json!({ "member_id": member, "points": 100, "reason": "welcome" });
    assert_eq!(api.post(&base_b, "/v1/adjustments", "adj-1", &adjust).0, 201);
    let redemptions: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (api, base) = (&api, bases[i % 2]);
                scope.spawn(move || {
                    let body = json!({ "member_id": member, "points": 10 });
                    api.post(base, "/v1/redemptions", &format!("r-{i}"), &body).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(redemptions.iter().filter(|s| **s == 201).count(), 10, "{redemptions:?}");
    assert!(redemptions.iter().all(|s| *s == 201 || *s == 422), "{redemptions:?}");
    let balance = api.get(&base_b, &format!("/v1/members/{member}/balance"));
    assert_eq!(balance["available"], 0, "{balance}");

    // A single-use code, offered at both nodes at once.
    let campaign = api.post(
        &base_a,
        "/v1/coupon-campaigns",
        "c-1",
        &json!({ "name": "Once", "effect": { "amount_minor": 100_00 } }),
    );
    assert_eq!(campaign.0, 201, "{}", campaign.1);
    let codes = json!({ "codes": [{ "code": "ONLY-ONE" }] });
    let path = format!("/v1/coupon-campaigns/{}/codes", campaign.1["id"]);
    assert_eq!(api.post(&base_b, &path, "codes-1", &codes).0, 201);
    let buyers: Vec<i64> = (0..10)
        .map(|i| {
            api.post(bases[i % 2], "/v1/members", &format!("buyer-{i}"), &json!({ "card": format!("B-{i}") })).1["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let confirmed: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = buyers
            .iter()
            .enumerate()
            .map(|(i, buyer)| {
                let (api, base) = (&api, bases[i % 2]);
                scope.spawn(move || {
                    let basket = basket(*buyer, 500_00, &["ONLY-ONE"]);
                    let (_, quote, ..) = api.post(base, "/v1/checkouts", &format!("q-{i}"), &basket);
                    let confirm = json!({ "external_id": format!("Q-{i}"), "coupons": ["ONLY-ONE"] });
                    api.post(base, &format!("/v1/checkouts/{}/confirm", quote["id"]), &format!("qc-{i}"), &confirm).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(confirmed.iter().filter(|s| **s == 201).count(), 1, "{confirmed:?}");
    assert_eq!(api.get(&base_a, "/v1/coupons/ONLY-ONE")["uses"], 1);

    // An idempotency key retried on the other node gets the first answer, byte for byte.
    let body = purchase(member, "R-1", 1_000_00);
    let first = api.post(&base_a, "/v1/purchases", "p-1", &body);
    let retry = api.post(&base_b, "/v1/purchases", "p-1", &body);
    assert_eq!((first.0, retry.0), (201, 201));
    assert!(retry.2 && !first.2, "the retry is a replay");
    assert_eq!(first.3, retry.3);

    // Both nodes run their scheduled jobs every second, and a job run by two processes at once,
    // as of years on, expires each lot once.
    std::thread::sleep(Duration::from_secs(2));
    let expire = || kopilka(url).args(["jobs", "run", "expiry", "--as-of", "2031-01-01T00:00:00Z"]).output().unwrap();
    let (one, two) = std::thread::scope(|scope| {
        let one = scope.spawn(expire);
        let two = scope.spawn(expire);
        (one.join().unwrap(), two.join().unwrap())
    });
    assert!(one.status.success() && two.status.success(), "{}{}", text(&one), text(&two));
    assert!(movements(&one) + movements(&two) >= 1, "{}{}", text(&one), text(&two));
    let history = api.get(&base_a, &format!("/v1/members/{member}/history"));
    let expired = history["items"].as_array().unwrap().iter().filter(|m| m["kind"] == "expire").count();
    assert_eq!(expired, 1, "{history}");
    let balance = api.get(&base_b, &format!("/v1/members/{member}/balance"));
    assert_eq!((&balance["available"], &balance["pending"]), (&json!(0), &json!(0)), "{balance}");
    a.kill().unwrap();
    b.kill().unwrap();
    a.wait().unwrap();
    b.wait().unwrap();
    let verified = kopilka(url).arg("verify").output().unwrap();
    assert!(verified.status.success(), "{}", text(&verified));

    // Many members with points, an expiry job killed midway: the ledger still balances (each page
    // is its own transaction), and the next run finishes the work.
    let demo = kopilka(url).args(["demo", "--members", "300"]).output().unwrap();
    assert!(demo.status.success(), "{}", text(&demo));
    let mut killed = kopilka(url)
        .args(["jobs", "run", "expiry", "--as-of", "2040-01-01T00:00:00Z"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    killed.kill().unwrap();
    killed.wait().unwrap();
    let verified = kopilka(url).arg("verify").output().unwrap();
    assert!(verified.status.success(), "{}", text(&verified));
    let finish = kopilka(url).args(["jobs", "run", "expiry", "--as-of", "2040-01-01T00:00:00Z"]).output().unwrap();
    assert!(finish.status.success(), "{}", text(&finish));
    let again = kopilka(url).args(["jobs", "run", "expiry", "--as-of", "2040-01-01T00:00:00Z"]).output().unwrap();
    assert_eq!(movements(&again), 0, "nothing left to expire: {}", text(&again));

    // Back to SQLite: the move verifies counts, the ledger and every member account.
    let sqlite = Kopilka::new();
    let moved = kopilka(url)
        .args(["migrate-store", "--to", &format!("sqlite://{}", sqlite.path("data").display())])
        .output()
        .unwrap();
    assert!(moved.status.success(), "{}", text(&moved));
    assert!(text(&moved).contains("Verified"), "{}", text(&moved));
    let verified = sqlite.run(&["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
}

#[test]
fn a_sqlite_store_moves_to_postgresql_with_everything_it_held() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(store) = runtime.block_on(TestDatabase::new(StoreKind::Postgres)) else { return };
    let Database::Postgres(url) = &store.database else { unreachable!() };
    let sqlite = Kopilka::new();
    sqlite.ok(&["demo", "--members", "60"]);
    let moved = sqlite.run(&["migrate-store", "--to", url]);
    assert!(moved.status.success(), "{}", text(&moved));
    assert!(text(&moved).contains("Verified"), "{}", text(&moved));
    let export = |command: &mut Command| String::from_utf8(command.output().unwrap().stdout).unwrap();
    for kind in ["members", "transactions"] {
        let before = sqlite.export(kind, "1");
        let after = export(kopilka(url).args(["export", kind, "--tenant", "1"]));
        assert!(before.lines().count() > 60, "{kind}: the demo exported {before:?}");
        assert_eq!(before, after, "{kind} read back from PostgreSQL as they were in SQLite");
    }
    // The target is no longer empty: a second move is refused and changes nothing.
    let again = sqlite.run(&["migrate-store", "--to", url]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already holds 1 tenant"), "{}", text(&again));
    let verified = kopilka(url).arg("verify").output().unwrap();
    assert!(verified.status.success(), "{}", text(&verified));
}
