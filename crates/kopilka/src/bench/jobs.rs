//! The activation and expiry jobs over millions of lots, each beside a raw `UPDATE` of the same
//! rows on a copy of the same database.
//!
//! Seeding is not what is measured, so it is as fast as SQL goes: one transaction, one
//! `INSERT … SELECT` over a recursive counter per table (members, then their lots, ten each), the
//! id sequences moved past them. `pending` of the lots start pending with their return window
//! closing an hour after the seed; all of them expire a day after it. Then the real jobs run
//! (`kopilka jobs run activate|expiry --as-of …`, the command an operator runs, as a child
//! process unless `--in-process`): activation two hours after the seed, expiry two days after.
//! The anchors are the two `UPDATE`s a hand-written job would do, with no movements, no postings
//! and no member loaded, on a file copied before the jobs ran.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use jiff::{SignedDuration, Timestamp};
use kopilka_server::app;
use kopilka_server::clock::ManualClock;
use kopilka_server::jobs::{self, Job};
use kopilka_store::{micros, Store};

use super::memory;
use super::server::{run_cli, Target};

/// Lots per seeded member: a member's catch-up touches this many lots.
pub const LOTS_PER_MEMBER: usize = 10;

#[derive(Debug, Clone)]
pub struct JobFigures {
    pub lots: usize,
    pub members: usize,
    pub seed_time: Duration,
    /// The job's lots changed, its time, the anchor's time, the job process's peak memory in KiB.
    pub activation: JobRun,
    pub expiry: JobRun,
}

#[derive(Debug, Clone)]
pub struct JobRun {
    pub lots: usize,
    pub elapsed: Duration,
    pub anchor: Duration,
    pub peak_kib: u64,
}

pub async fn measure(target: &Target, dir: &Path, lots: usize, pending: usize) -> anyhow::Result<JobFigures> {
    let (lots, pending) = (lots.max(1), pending.min(lots));
    let members = lots.div_ceil(LOTS_PER_MEMBER);
    let (engine_dir, anchor_dir) = (dir.join("jobs"), dir.join("jobs-anchor"));
    let seeded_at = Timestamp::now();
    let seed_time = seed(&engine_dir, seeded_at, members, lots, pending).await?;
    std::fs::create_dir_all(&anchor_dir)?;
    std::fs::copy(engine_dir.join("kopilka.db"), anchor_dir.join("kopilka.db")).context("copying the seeded store")?;

    let activate_at = seeded_at + SignedDuration::from_hours(2);
    let expire_at = seeded_at + SignedDuration::from_hours(48);
    let (activation_time, activation_peak) = run_job(target, &engine_dir, Job::Activate, activate_at).await?;
    let store = target.open_store(&engine_dir).await?;
    ensure!(count_state(&store, "pending").await? == 0, "lots left pending after the activation job");
    let (expiry_time, expiry_peak) = run_job(target, &engine_dir, Job::Expiry, expire_at).await?;
    let expired = count_state(&store, "expired").await?;
    ensure!(expired == lots as i64, "{expired} of {lots} lots expired by the job");
    store.pool.close().await;

    let anchor = target.open_store(&anchor_dir).await?;
    let mut conn = anchor.writer_connection().await?;
    let activate = "UPDATE lots SET state = 'available' WHERE state = 'pending' AND available_from <= $1";
    let (activated, activation_anchor) = timed_update(&mut conn, activate, micros::of(activate_at)).await?;
    ensure!(activated == pending as u64, "the anchor activated {activated} of {pending} lots");
    let expire =
        "UPDATE lots SET state = 'expired', remaining = 0 WHERE state IN ('pending', 'available') AND expires_at <= $1";
    let (expired, expiry_anchor) = timed_update(&mut conn, expire, micros::of(expire_at)).await?;
    ensure!(expired == lots as u64, "the anchor expired {expired} of {lots} lots");
    drop(conn);
    anchor.pool.close().await;
    Ok(JobFigures {
        lots,
        members,
        seed_time,
        activation: JobRun {
            lots: pending,
            elapsed: activation_time,
            anchor: activation_anchor,
            peak_kib: activation_peak,
        },
        expiry: JobRun { lots, elapsed: expiry_time, anchor: expiry_anchor, peak_kib: expiry_peak },
    })
}

/// A fresh store with the default tenant and program, `members` members and `lots` lots.
async fn seed(dir: &Path, at: Timestamp, members: usize, lots: usize, pending: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (state, writer_task) = app::open(dir, Arc::new(ManualClock::new(at))).await?;
    let tenant = app::bootstrap(&state).await?.context("a fresh store has no tenant")?.id;
    let (_, _, program) = state.store.program(kopilka_core::TenantId(tenant), None).await?.context("a program")?;
    let currency = program.point_currency.to_string();
    let now = micros::of(at);
    let mut conn = state.store.writer_connection().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < $1)
         INSERT INTO members (tenant_id, id, card, consents, signup_at, created_at, updated_at)
         SELECT $2, i, 'J' || i, '{}', $3, $3, $3 FROM n",
    )
    .bind(members as i64)
    .bind(tenant)
    .bind(now)
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < $1)
         INSERT INTO lots (tenant_id, id, member_id, currency, amount, remaining, available_from, expires_at, state,
                           movement_id, purchase_id)
         SELECT $2, i, (i - 1) / $3 + 1, $4, 100, 100,
                CASE WHEN i <= $5 THEN $6 ELSE $7 END, $8,
                CASE WHEN i <= $5 THEN 'pending' ELSE 'available' END, i, NULL
         FROM n",
    )
    .bind(lots as i64)
    .bind(tenant)
    .bind(LOTS_PER_MEMBER as i64)
    .bind(&currency)
    .bind(pending as i64)
    .bind(micros::of(at + SignedDuration::from_hours(1)))
    .bind(micros::of(at - SignedDuration::from_hours(24)))
    .bind(micros::of(at + SignedDuration::from_hours(24)))
    .execute(&mut conn)
    .await?;
    // The writer hands out ids from these: past the seeded rows (movements: past the lots'
    // made-up movement ids).
    sqlx::query(
        "UPDATE sequences SET last = CASE name WHEN 'member' THEN $1 WHEN 'lot' THEN $2 WHEN 'movement' THEN $2
         ELSE last END",
    )
    .bind(members as i64)
    .bind(lots as i64)
    .execute(&mut conn)
    .await?;
    // What the writer keeps beside the lots it writes (`members.lot_totals`), for the seeded ones.
    kopilka_store::lot_totals::fill_from_lots(&mut conn).await?;
    sqlx::query("COMMIT").execute(&mut conn).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    drop(conn);
    let store = state.store.clone();
    drop(state);
    writer_task.await?;
    store.pool.close().await;
    Ok(started.elapsed())
}

/// Runs a job as of `at`, as `kopilka jobs run` does; returns its time and peak memory (KiB).
async fn run_job(target: &Target, dir: &Path, job: Job, at: Timestamp) -> anyhow::Result<(Duration, u64)> {
    if let Some(exe) = &target.exe {
        let args = ["jobs", "run", job.name(), "--as-of", &at.to_string()].map(String::from);
        let ran = run_cli(exe, dir, &args).await?;
        return Ok((ran.elapsed, ran.peak_kib));
    }
    memory::reset_own_peak();
    let started = Instant::now();
    // As `kopilka jobs run` does it.
    let (state, writer_task) = app::open_bulk(dir, Arc::new(ManualClock::new(at))).await?;
    let chunk = jobs::BULK_CHUNK_MEMBERS_MAX;
    jobs::run_once_in_chunks(&state.store, &state.writer, &*state.clock, job, None, chunk).await?;
    drop(state);
    writer_task.await?;
    Ok((started.elapsed(), memory::peak_kib(None).unwrap_or(0)))
}

async fn count_state(store: &Store, state: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM lots WHERE state = $1").bind(state).fetch_one(&store.pool).await?)
}

async fn timed_update(conn: &mut sqlx::AnyConnection, sql: &str, at: i64) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let changed = sqlx::query(sql).bind(at).execute(&mut *conn).await?.rows_affected();
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok((changed, started.elapsed()))
}
