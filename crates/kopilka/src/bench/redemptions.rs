//! Redemptions on a few hot members by many concurrent clients over HTTP: every request races for
//! the same balances, more points are asked for than were credited, and afterwards every balance
//! must equal what was credited minus what was accepted, never below zero, with the ledger
//! re-derived by `verify`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::server::{Server, Target};
use super::{http_members, percentiles};

/// Members every redemption goes to.
pub const HOT_MEMBERS: usize = 10;
/// Largest single redemption; points asked for are 1..=this.
const POINTS_MAX: i64 = 40;

#[derive(Debug, Clone)]
pub struct Redemptions {
    pub requests: usize,
    pub clients: usize,
    pub accepted: usize,
    /// Refused with 422 for want of points: the guard doing its work.
    pub refused: usize,
    pub elapsed: Duration,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Members whose balance went below zero or differs from credits minus accepted redemptions.
    pub overdrafts: usize,
    /// Problems `verify` found in the ledger after the run.
    pub ledger_problems: usize,
    pub server_peak_kib: u64,
}

impl Redemptions {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn measure(
    target: &Target,
    dir: &Path,
    requests: usize,
    clients: usize,
    seed: u64,
) -> anyhow::Result<Redemptions> {
    let server = Server::start(target, dir).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()?;
    let auth = format!("Bearer {}", server.admin_key);
    let members = http_members(&client, &server.base, &server.admin_key, HOT_MEMBERS, HOT_MEMBERS).await?;
    // Half of what the requests ask for on average, so about half are refused near the end.
    let credit = ((requests as i64 * (1 + POINTS_MAX) / 2) / HOT_MEMBERS as i64 / 2).max(1);
    for (i, member) in members.iter().enumerate() {
        let body = serde_json::json!({ "member_id": member, "points": credit, "reason": "bench credit" });
        let response = client
            .post(format!("{}/v1/adjustments", server.base))
            .header("authorization", &auth)
            .header("idempotency-key", format!("hot-credit-{i}"))
            .json(&body)
            .send()
            .await?;
        ensure!(response.status().as_u16() == 201, "credit answered {}", response.status());
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let plan: Arc<Vec<(i64, i64)>> = Arc::new(
        (0..requests).map(|_| (members[rng.gen_range(0..HOT_MEMBERS)], rng.gen_range(1..=POINTS_MAX))).collect(),
    );
    let lanes = clients.min(requests).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let (client, url, auth, plan) =
                (client.clone(), format!("{}/v1/redemptions", server.base), auth.clone(), plan.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut accepted = Vec::new();
                let mut refused = 0usize;
                for i in (lane..plan.len()).step_by(lanes) {
                    let (member, points) = plan[i];
                    let body = serde_json::json!({ "member_id": member, "points": points });
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("authorization", &auth)
                        .header("idempotency-key", format!("hot-redeem-{i}"))
                        .json(&body)
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    let text = response.text().await?;
                    latencies.push(sent.elapsed());
                    match status {
                        201 => accepted.push((member, points)),
                        422 if text.contains("insufficient") => refused += 1,
                        _ => anyhow::bail!("POST /v1/redemptions answered {status}: {text}"),
                    }
                }
                anyhow::Ok((latencies, accepted, refused))
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (lane, ok, no) = task.await??;
        latencies.extend(lane);
        accepted.extend(ok);
        refused += no;
    }
    let elapsed = started.elapsed();

    let mut overdrafts = 0;
    for member in &members {
        let response = client
            .get(format!("{}/v1/members/{member}/balance", server.base))
            .header("authorization", &auth)
            .send()
            .await?;
        let view: serde_json::Value = response.json().await?;
        let available = view["available"].as_i64().context("a balance")?;
        let spent: i64 = accepted.iter().filter(|(m, _)| m == member).map(|(_, p)| p).sum();
        if available < 0 || available != credit - spent {
            overdrafts += 1;
        }
    }
    let server_peak_kib = server.stop().await?;
    let store = target.open_store(dir).await?;
    let ledger_problems = store.verify().await?.problems.len();
    store.pool.close().await;
    let (p50, p99) = percentiles(&mut latencies);
    Ok(Redemptions {
        requests,
        clients: lanes,
        accepted: accepted.len(),
        refused,
        elapsed,
        p50,
        p99,
        overdrafts,
        ledger_problems,
        server_peak_kib,
    })
}
