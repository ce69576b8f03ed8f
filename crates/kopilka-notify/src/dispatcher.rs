//! The dispatcher: a loop of fan-out passes (events → deliveries, see `fanout`) and send passes
//! (due deliveries → attempts), with its own connection pool on the store's file.
//!
//! A send pass takes the deliveries due at `now`, sends them concurrently, and records every
//! outcome in one transaction. A failed attempt is retried after an exponential backoff with
//! jitter (so receivers that fail together do not get their retries together); after
//! `attempts_max` attempts the delivery is `dead` and waits for a manual replay. A delivery is
//! marked delivered only after the receiver accepted it, so a crash in between means one more
//! attempt with the same delivery id, never a lost one: receivers drop duplicates by that id.
//!
//! One dispatcher runs per store: passes are not claimed row by row, so two dispatchers would
//! send due deliveries twice (still with one id, so receivers would drop the second).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kopilka_core::TenantId;
use rand::Rng;
use sqlx::AnyPool;
use tokio::sync::watch;

use crate::config::ChannelConfig;
use crate::db::{self, AttemptResult, DeliveryRow, WebhookRow};
use crate::fanout::{self, Message};
use crate::settings::Settings;
use crate::{http, smtp, webhook, Channel, Clock, DeliveryStatus, Result};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// How long the loop sleeps when a pass found nothing to do.
    pub poll_interval: Duration,
    /// Attempts before a delivery is dead: with the backoff below, about 4 hours of trying.
    pub attempts_max: i64,
    /// The delay after the first failed attempt; it doubles with each further failure.
    pub backoff_base: SignedDuration,
    /// The longest delay between two attempts.
    pub backoff_max: SignedDuration,
    /// Deliveries taken per send pass: bounds memory and the result transaction.
    pub send_batch_max: i64,
    /// Requests in flight at once.
    pub concurrency_max: usize,
    /// How long one HTTP attempt may take.
    pub request_timeout: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> DispatcherConfig {
        DispatcherConfig {
            poll_interval: Duration::from_millis(200),
            attempts_max: 10,
            backoff_base: SignedDuration::from_secs(30),
            backoff_max: SignedDuration::from_hours(1),
            send_batch_max: 1_024,
            concurrency_max: 64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// Worth trying again later (network, 5xx, a provider refusing for now).
    Retry(String),
    /// No later attempt can succeed (the webhook was deleted); dead at once.
    Give(String),
}

/// What one `run_once` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub events_fanned_out: usize,
    pub attempts: usize,
    pub delivered: usize,
}

pub struct Dispatcher {
    pool: AnyPool,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    config: DispatcherConfig,
}

/// Connections of the dispatcher's pool: one for passes, the rest for API reads in tests.
const CONNECTIONS_MAX: u32 = 2;

impl Dispatcher {
    /// A dispatcher on the store at `database`, which `Store::connect` has already migrated.
    pub async fn open(
        database: &kopilka_store::Database,
        clock: Arc<dyn Clock>,
        config: DispatcherConfig,
    ) -> Result<Dispatcher> {
        let pool = kopilka_store::outbox::open_pool(database, CONNECTIONS_MAX).await?;
        Ok(Dispatcher::new(pool, clock, config))
    }

    pub fn new(pool: AnyPool, clock: Arc<dyn Clock>, config: DispatcherConfig) -> Dispatcher {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .pool_max_idle_per_host(config.concurrency_max)
            .user_agent(concat!("Kopilka/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds");
        Dispatcher { pool, clock, client, config }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// One fan-out pass and one send pass.
    pub async fn run_once(&self) -> Result<Pass> {
        let mut conn = self.pool.acquire().await?;
        let events_fanned_out = fanout::pass(&mut conn, self.clock.now()).await?;
        let (attempts, delivered) = self.send_due(&mut conn).await?;
        Ok(Pass { events_fanned_out, attempts, delivered })
    }

    /// Runs passes until one does nothing: every event fanned out, nothing due at `now`.
    pub async fn drain(&self) -> Result<Pass> {
        let mut total = Pass::default();
        loop {
            let pass = self.run_once().await?;
            if pass.events_fanned_out == 0 && pass.attempts == 0 {
                return Ok(total);
            }
            total.events_fanned_out += pass.events_fanned_out;
            total.attempts += pass.attempts;
            total.delivered += pass.delivered;
        }
    }

    /// The loop, until `shutdown` says stop. A failing pass (the store busy past its timeout) is
    /// logged and retried after the poll interval; nothing it did was half-committed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Shutdown does not wait for a pass: its transactions roll back when dropped, and
            // attempts whose outcome was not recorded are made again after the restart, under
            // the same delivery ids.
            let outcome = tokio::select! {
                outcome = self.run_once() => outcome,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let worked = match outcome {
                Ok(pass) => pass.events_fanned_out > 0 || pass.attempts > 0,
                Err(error) => {
                    tracing::warn!(%error, "notification pass failed");
                    false
                }
            };
            if worked {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn send_due(&self, conn: &mut sqlx::AnyConnection) -> Result<(usize, usize)> {
        let now = self.clock.now();
        // The lease outlasts every attempt of the pass (each is bounded by the request timeout)
        // and the recording of its outcome; a dispatcher killed mid-pass delays these deliveries
        // by no more than that.
        let lease = jiff::SignedDuration::try_from(self.config.request_timeout + std::time::Duration::from_secs(5))
            .expect("timeouts are small");
        let due = db::claim_due(conn, now, now + lease, self.config.send_batch_max).await?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        let mut webhooks: HashMap<TenantId, HashMap<String, WebhookRow>> = HashMap::new();
        let mut channels: HashMap<TenantId, HashMap<Channel, ChannelConfig>> = HashMap::new();
        let mut settings: HashMap<TenantId, Settings> = HashMap::new();
        let tenants: std::collections::BTreeSet<TenantId> = due.iter().map(|d| d.tenant_id).collect();
        for tenant in tenants {
            let rows = db::webhooks(conn, tenant).await?;
            webhooks.insert(tenant, rows.into_iter().map(|w| (w.id.to_string(), w)).collect());
            channels.insert(tenant, db::channels(conn, tenant).await?.into_iter().collect());
            settings.insert(tenant, db::settings(conn, tenant, now).await?.0);
        }
        // Each attempt owns what it needs: a stream of borrows trips the compiler's higher-ranked
        // lifetime check when the dispatcher's future is spawned.
        let attempts: Vec<(DeliveryRow, Option<WebhookRow>, Option<ChannelConfig>)> = due
            .into_iter()
            .map(|delivery| {
                let webhook = webhooks.get(&delivery.tenant_id).and_then(|w| w.get(&delivery.target)).cloned();
                let config = Channel::parse(&delivery.channel)
                    .and_then(|c| channels.get(&delivery.tenant_id).and_then(|m| m.get(&c)))
                    .cloned();
                (delivery, webhook, config)
            })
            .collect();
        let messages: HashMap<String, (TenantId, Option<i64>)> = attempts
            .iter()
            .filter(|(delivery, ..)| delivery.channel != "webhook")
            .map(|(delivery, ..)| (delivery.id.clone(), (delivery.tenant_id, delivery.member_id)))
            .collect();
        let mut results: Vec<AttemptResult> = futures::stream::iter(attempts)
            .map(|(delivery, webhook, config)| async move {
                let outcome = self.attempt(&delivery, webhook.as_ref(), config.as_ref(), now).await;
                self.result_of(&delivery, outcome, now)
            })
            .buffer_unordered(self.config.concurrency_max)
            .collect()
            .await;
        // A retry of a message to a member waits out quiet hours in the member's time zone, like
        // the first attempt. Zones are read only for messages that failed.
        let mut zones: HashMap<(TenantId, i64), Option<String>> = HashMap::new();
        for result in &mut results {
            let (Some(at), Some(&(tenant, member))) = (result.next_attempt_at, messages.get(&result.id)) else {
                continue;
            };
            let Some(settings) = settings.get(&tenant) else { continue };
            let mut zone = None;
            if let Some(member) = member {
                zone = match zones.get(&(tenant, member)) {
                    Some(zone) => zone.clone(),
                    None => {
                        let row = kopilka_store::outbox::member(conn, tenant, kopilka_core::MemberId(member)).await?;
                        let found = row.and_then(|m| m.profile.time_zone);
                        zones.insert((tenant, member), found.clone());
                        found
                    }
                };
            }
            result.next_attempt_at = Some(settings.release_at_in(&settings.zone_of(zone.as_deref()), at));
        }
        let delivered = results.iter().filter(|r| r.status == DeliveryStatus::Delivered).count();
        db::record_attempts(conn, &results, self.clock.now()).await?;
        Ok((results.len(), delivered))
    }

    async fn attempt(
        &self,
        delivery: &DeliveryRow,
        webhook: Option<&WebhookRow>,
        config: Option<&ChannelConfig>,
        now: Timestamp,
    ) -> Outcome {
        if delivery.channel == "webhook" {
            let Some(webhook) = webhook else { return Outcome::Give("the webhook was deleted".into()) };
            return match webhook::send(&self.client, webhook, delivery, now).await {
                Ok(()) => Outcome::Accepted,
                Err(error) => Outcome::Retry(error),
            };
        }
        let message: Message = match serde_json::from_str(&delivery.payload) {
            Ok(message) => message,
            Err(error) => return Outcome::Give(format!("unreadable message: {error}")),
        };
        let Some(config) = config else {
            return Outcome::Retry(format!("no {} channel is configured", delivery.channel));
        };
        let sent = match config {
            ChannelConfig::Smtp(smtp) => smtp::send(smtp, &delivery.id, &message).await,
            ChannelConfig::Twilio(twilio) => http::send_twilio(&self.client, twilio, &delivery.id, &message).await,
            ChannelConfig::Fcm(fcm) => http::send_fcm(&self.client, fcm, &delivery.id, &message).await,
            ChannelConfig::Telegram(telegram) => {
                http::send_telegram(&self.client, telegram, &delivery.id, &message).await
            }
            ChannelConfig::Http(generic) => http::send_generic(&self.client, generic, &delivery.id, &message).await,
        };
        match sent {
            Ok(()) => Outcome::Accepted,
            Err(error) => Outcome::Retry(error),
        }
    }

    fn result_of(&self, delivery: &DeliveryRow, outcome: Outcome, now: Timestamp) -> AttemptResult {
        let attempts = delivery.attempts + 1;
        let mut result = AttemptResult {
            id: delivery.id.clone(),
            tenant_id: delivery.tenant_id,
            status: DeliveryStatus::Delivered,
            attempts,
            next_attempt_at: None,
            last_error: delivery.last_error.clone(),
            delivered_at: Some(now),
        };
        match outcome {
            Outcome::Accepted => {}
            Outcome::Retry(error) if attempts < self.config.attempts_max => {
                tracing::debug!(delivery = %delivery.id, attempts, %error, "delivery attempt failed; will retry");
                result.status = DeliveryStatus::Failed;
                result.next_attempt_at = Some(now.checked_add(self.backoff(attempts)).expect("times stay in range"));
                result.last_error = Some(error);
                result.delivered_at = None;
            }
            Outcome::Retry(error) | Outcome::Give(error) => {
                tracing::warn!(delivery = %delivery.id, attempts, %error, "delivery is dead");
                result.status = DeliveryStatus::Dead;
                result.last_error = Some(error);
                result.delivered_at = None;
            }
        }
        result
    }

    /// The delay after the `attempts`-th failure: base × 2^(attempts−1), capped, then a random
    /// point in its upper half.
    fn backoff(&self, attempts: i64) -> SignedDuration {
        let exponent = (attempts - 1).clamp(0, 20) as u32;
        let base_ms = self.config.backoff_base.as_millis() as i64;
        let delay_ms = base_ms.saturating_mul(1 << exponent).min(self.config.backoff_max.as_millis() as i64);
        let jittered_ms = delay_ms / 2 + rand::thread_rng().gen_range(0..=delay_ms / 2);
        SignedDuration::from_millis(jittered_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let pool = sqlx::AnyPool::connect_lazy("sqlite::memory:").unwrap();
        let dispatcher = Dispatcher::new(pool, Arc::new(crate::SystemClock), DispatcherConfig::default());
        for (attempts, full_secs) in [(1, 30), (2, 60), (3, 120), (8, 3_600), (30, 3_600)] {
            for _ in 0..50 {
                let delay = dispatcher.backoff(attempts).as_secs();
                assert!(delay >= full_secs / 2 && delay <= full_secs, "attempt {attempts}: {delay}s");
            }
        }
    }
}
