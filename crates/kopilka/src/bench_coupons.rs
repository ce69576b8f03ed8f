//! `kopilka bench --coupons N`: a campaign's codes generated in bulk through the writer (random
//! codes from the operating system's generator, duplicates skipped and made up for, one
//! transaction), beside an anchor in the same run: the same number of ready-made codes inserted
//! into the same table with plain multi-row statements, nothing generated or checked.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use jiff::Timestamp;
use kopilka_core::checkout::CouponCampaign;
use kopilka_core::TenantId;
use kopilka_server::app;
use kopilka_server::checkout::{AddCodesRequest, CampaignCommand, CodesAdded};
use kopilka_server::clock::SystemClock;
use kopilka_server::engine::{Command, Request};
use kopilka_store::sql::Builder;
use kopilka_store::{micros, Store};

/// Codes per statement in the anchor: under SQLite's bound-value limit at five values a row.
const ANCHOR_ROWS_PER_STATEMENT: usize = 6_000;

pub struct CouponFigures {
    pub codes: usize,
    pub engine: Duration,
    pub anchor: Duration,
}

impl CouponFigures {
    pub fn line(&self) -> String {
        let rate = |d: Duration| self.codes as f64 / d.as_secs_f64();
        format!(
            "coupon codes: {} generated and stored in {:.2} s ({:.0} codes/s); anchor (the same number of ready codes, sorted, plain INSERT): {:.2} s ({:.0} codes/s); ratio {:.2}x",
            self.codes,
            self.engine.as_secs_f64(),
            rate(self.engine),
            self.anchor.as_secs_f64(),
            rate(self.anchor),
            self.anchor.as_secs_f64() / self.engine.as_secs_f64(),
        )
    }
}

pub async fn measure(dir: &Path, codes: usize) -> anyhow::Result<CouponFigures> {
    let engine = engine(&dir.join("coupons-engine"), codes).await?;
    let anchor = anchor(&dir.join("coupons-anchor"), codes).await?;
    Ok(CouponFigures { codes, engine, anchor })
}

async fn engine(dir: &Path, codes: usize) -> anyhow::Result<Duration> {
    let (state, writer_task) = app::open(dir, Arc::new(SystemClock)).await?;
    let tenant = TenantId(app::bootstrap(&state).await?.context("a fresh store has no tenant")?.id);
    let campaign: CouponCampaign =
        serde_json::from_value(serde_json::json!({ "name": "Bench", "effect": { "percent": 5 } }))?;
    let submit =
        |command| state.writer.submit(Request { tenant, idempotency: None, command: Command::Campaign(command) });
    let created = submit(CampaignCommand::Create(campaign)).await?;
    let id = serde_json::from_slice::<serde_json::Value>(&created.body)?["id"].as_i64().context("a campaign id")?;
    let request = AddCodesRequest { generate: Some(codes), for_members: None, codes: None };
    let started = Instant::now();
    let reply = submit(CampaignCommand::AddCodes { id, request }).await?;
    let elapsed = started.elapsed();
    let added: CodesAdded = serde_json::from_slice(&reply.body)?;
    ensure!(added.added as usize == codes, "{} codes added of {codes}", added.added);
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons").fetch_one(&state.store.pool).await?;
    ensure!(stored as usize == codes, "{stored} codes stored of {codes}");
    drop(state);
    writer_task.await?;
    Ok(elapsed)
}

async fn anchor(dir: &Path, codes: usize) -> anyhow::Result<Duration> {
    let store = Store::open(dir).await?;
    let mut conn = store.writer_connection().await?;
    let format = kopilka_core::checkout::coupon::CodeFormat::default();
    let mut ready = format.generate(codes, &mut rand::thread_rng());
    // Sorted, as the store inserts them: the anchor is the cheapest way to put these rows in.
    ready.sort_unstable();
    let now = micros::of(Timestamp::now());
    let started = Instant::now();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
    for chunk in ready.chunks(ANCHOR_ROWS_PER_STATEMENT) {
        let mut query =
            Builder::new("INSERT OR IGNORE INTO coupons (tenant_id, code, campaign_id, member_id, created_at) ");
        query.push_values(chunk, |mut b, code| {
            b.push_bind(1i64).push_bind(code).push_bind(1i64).push_bind(None::<i64>).push_bind(now);
        });
        query.execute(&mut conn).await?;
    }
    sqlx::query("COMMIT").execute(&mut conn).await?;
    Ok(started.elapsed())
}
