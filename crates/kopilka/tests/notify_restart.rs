//! The real `kopilka serve`, killed with SIGKILL while a webhook delivery is in flight (the purchase
//! committed, the receiver not yet answering), delivers exactly once after a restart on the same
//! data directory, under the same delivery id, once the dead dispatcher's claim has lapsed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Kopilka;

/// A webhook receiver on loopback: while `answering` is off it reads each request and keeps the
/// connection open without a reply (an attempt in flight); then it answers 200 and counts.
#[derive(Clone, Default)]
struct Receiver {
    answering: Arc<AtomicBool>,
    /// Delivery ids of requests left unanswered, and of requests answered 200.
    held: Arc<Mutex<Vec<String>>>,
    accepted: Arc<Mutex<Vec<String>>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Receiver {
    fn start() -> (Receiver, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = Receiver::default();
        let shared = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || shared.serve(stream));
            }
        });
        (receiver, url)
    }

    fn serve(&self, mut stream: TcpStream) {
        loop {
            let Some(delivery_id) = read_request(&mut stream) else { return };
            if !self.answering.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push(delivery_id);
                self.open.lock().unwrap().push(stream);
                return;
            }
            self.accepted.lock().unwrap().push(delivery_id);
            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                return;
            }
        }
    }
}

/// Reads one HTTP/1.1 request; returns its `Kopilka-Delivery-Id`, or `None` when the peer closed.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let (mut delivery_id, mut length) = (String::new(), 0usize);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "kopilka-delivery-id" => delivery_id = value.trim().to_string(),
                "content-length" => length = value.trim().parse().ok()?,
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(delivery_id)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `kopilka serve` on a free port; returns the child, its base URL and, on a first start,
/// the admin key it printed.
fn serve(kopilka: &Kopilka) -> (Child, String, Option<String>) {
    let mut child = kopilka
        .command()
        .args(["serve", "--listen", "127.0.0.1:0", "--jobs-interval-secs", "3600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut key = None;
    let base = loop {
        let line = lines.next().expect("serve prints where it listens").unwrap();
        if line.trim_start().starts_with("kpk_") {
            key = Some(line.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("Kopilka listens on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep the pipe drained so the server never blocks on a full stdout.
    std::thread::spawn(move || lines.for_each(drop));
    (child, base, key)
}

#[test]
fn a_server_killed_between_commit_and_delivery_delivers_exactly_once_after_restart() {
    let kopilka = Kopilka::new();
    let (receiver, url) = Receiver::start();
    let (mut first, base, key) = serve(&kopilka);
    let key = key.expect("a first start prints the admin key");
    let client = reqwest::blocking::Client::new();
    let post = |base: &str, path: &str, idempotency: &str, body: Value| -> Value {
        let answer = client
            .post(format!("{base}{path}"))
            .bearer_auth(&key)
            .header("Idempotency-Key", idempotency)
            .json(&body)
            .send()
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        answer.json().unwrap()
    };
    post(&base, "/v1/webhooks", "hook-1", json!({ "url": url, "event_kinds": ["purchase_recorded"] }));
    let member = post(&base, "/v1/members", "member-1", json!({ "card": "C-1" }))["id"].as_i64().unwrap();
    let purchase = json!({ "member_id": member, "external_id": "R-1", "currency": "RUB",
        "lines": [{ "sku": "SKU-1", "category": "food", "quantity": 1, "unit_price_minor": 100_000 }] });
    post(&base, "/v1/purchases", "purchase-1", purchase);

    // The purchase committed and its delivery is in flight: kill the server before any answer.
    wait_until("the first attempt", || !receiver.held.lock().unwrap().is_empty());
    first.kill().unwrap();
    first.wait().unwrap();
    let held = receiver.held.lock().unwrap().clone();
    receiver.open.lock().unwrap().clear();
    receiver.answering.store(true, Ordering::SeqCst);
    assert!(receiver.accepted.lock().unwrap().is_empty());

    let (mut second, base, key_again) = serve(&kopilka);
    assert!(key_again.is_none(), "the restart found its tenant");
    // The killed dispatcher had claimed the delivery: it is retried once that claim's lease
    // (request timeout + 5 s) has lapsed.
    wait_until("the delivery after the restart", || !receiver.accepted.lock().unwrap().is_empty());
    // Long enough for a second, duplicate attempt to have arrived if the outcome were lost.
    std::thread::sleep(Duration::from_secs(1));
    let accepted = receiver.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0], held[0], "the same delivery id before and after the kill");
    assert!(accepted[0].starts_with("dlv_1_"), "{accepted:?}");
    let log: Value =
        client.get(format!("{base}/v1/deliveries?status=delivered")).bearer_auth(&key).send().unwrap().json().unwrap();
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{log}");
    assert_eq!(items[0]["id"], accepted[0].as_str());
    second.kill().unwrap();
    second.wait().unwrap();
}
