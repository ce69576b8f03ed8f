//! Background jobs: activation of lots whose return window closed, and expiry of lots whose time
//! ran out. Each is a query for members with due lots (by the due key in their rows, so both jobs
//! page the same members) and a `CatchUp` command per chunk of them through the writer, which
//! catches up everything due for each member, so jobs and requests never race. A job run works
//! from the current time, not from its last run, so it catches up after any downtime and
//! repeating it changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use kopilka_core::{MemberId, TenantId};
use kopilka_store::sql::JobLock;
use kopilka_store::Store;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::dto::JobReport;
use crate::engine::{Command, Request};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::writer::Writer;

/// Members caught up per writer command: large enough to amortize, small enough not to delay
/// requests queued behind it.
pub const CHUNK_MEMBERS_MAX: i64 = 500;
/// Members caught up per command when no client waits on the writer (`kopilka jobs run`): fewer,
/// larger transactions (expiry of 2 M lots: 55 s at 500, 46 s at 5,000).
pub const BULK_CHUNK_MEMBERS_MAX: i64 = 5_000;
/// A run stops after this many chunks; the next run goes on where it stopped.
pub const CHUNKS_PER_RUN_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Activate,
    Expiry,
    /// Tier reviews at the end of each tier window.
    Tiers,
    /// Referrer rewards for referrals whose qualifying purchase left its return window.
    Referrals,
    /// Birthday and first-purchase anniversary bonuses (see `bonuses`).
    Events,
    /// Reminders before points expire (see `bonuses`).
    Reminders,
}

impl Job {
    pub fn parse(name: &str) -> Option<Job> {
        match name {
            "activate" => Some(Job::Activate),
            "expiry" => Some(Job::Expiry),
            "tiers" => Some(Job::Tiers),
            "referrals" => Some(Job::Referrals),
            "events" => Some(Job::Events),
            "reminders" => Some(Job::Reminders),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Job::Activate => "activate",
            Job::Expiry => "expiry",
            Job::Tiers => "tiers",
            Job::Referrals => "referrals",
            Job::Events => "events",
            Job::Reminders => "reminders",
        }
    }
}

/// Runs `job` until no member has lots due at the clock's current time (for one tenant, or all).
pub async fn run_once(
    store: &Store,
    writer: &Writer,
    clock: &dyn Clock,
    job: Job,
    tenant: Option<TenantId>,
) -> Result<JobReport, ApiError> {
    run_once_in_chunks(store, writer, clock, job, tenant, CHUNK_MEMBERS_MAX).await
}

/// [`run_once`] with activation and expiry catching up `chunk_members` members per command.
pub async fn run_once_in_chunks(
    store: &Store,
    writer: &Writer,
    clock: &dyn Clock,
    job: Job,
    tenant: Option<TenantId>,
    chunk_members: i64,
) -> Result<JobReport, ApiError> {
    if job == Job::Tiers {
        return review_tiers(store, writer, clock, tenant).await;
    }
    match job {
        Job::Referrals => return crate::referrals::run_job(store, writer, tenant).await,
        Job::Events => return crate::bonuses::run_events_job(store, writer, clock, tenant).await,
        Job::Reminders => return crate::bonuses::run_reminders_job(store, writer, clock, tenant).await,
        _ => {}
    }
    let mut report = JobReport { job: job.name().to_string(), members: 0, movements: 0 };
    for _ in 0..CHUNKS_PER_RUN_MAX {
        let due = store.members_with_due_lots(tenant, clock.now(), chunk_members).await?;
        if due.is_empty() {
            break;
        }
        let mut by_tenant: BTreeMap<TenantId, Vec<_>> = BTreeMap::new();
        for (tenant, member) in due {
            by_tenant.entry(tenant).or_default().push(member);
        }
        for (tenant, members) in by_tenant {
            report.members += members.len() as i64;
            let reply =
                writer.submit(Request { tenant, idempotency: None, command: Command::CatchUp { members } }).await?;
            let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("catch-up replies are JSON");
            report.movements += body["movements"].as_i64().unwrap_or(0);
        }
    }
    Ok(report)
}

/// Each tenant's first program (the one members' tiers and bonuses follow), once per tenant, or
/// only `only`'s.
pub(crate) async fn first_programs(
    store: &Store,
    only: Option<TenantId>,
) -> Result<Vec<(TenantId, kopilka_core::Program)>, ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for (tenant, _, _, program) in store.programs().await? {
        if only.is_none_or(|only| only == tenant) && seen.insert(tenant) {
            found.push((tenant, program));
        }
    }
    Ok(found)
}

/// Walks a tenant's members due for a job, a page at a time from `page(after)`, and submits
/// `command(members)` through the writer for each page; the reply's `count` field adds to the
/// report's movements. Members the command settles drop out of the next page's query, and the
/// id cursor makes sure none is visited twice in a run.
pub(crate) async fn submit_pages<F, Fut>(
    writer: &Writer,
    tenant: TenantId,
    report: &mut JobReport,
    count: &str,
    mut page: F,
    command: fn(Vec<MemberId>) -> Command,
) -> Result<(), ApiError>
where
    F: FnMut(MemberId) -> Fut,
    Fut: Future<Output = kopilka_store::Result<Vec<MemberId>>>,
{
    let mut after = MemberId(0);
    for _ in 0..CHUNKS_PER_RUN_MAX {
        let members = page(after).await?;
        let Some(last) = members.last() else { break };
        after = *last;
        report.members += members.len() as i64;
        let reply = writer.submit(Request { tenant, idempotency: None, command: command(members) }).await?;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("job replies are JSON");
        report.movements += body[count].as_i64().unwrap_or(0);
    }
    Ok(())
}

/// Reviews the tiers of every member due, tenant by tenant: each tenant's program says when its
/// windows end; then ends the admin assignments whose date passed. `movements` in the report counts tier changes.
async fn review_tiers(
    store: &Store,
    writer: &Writer,
    clock: &dyn Clock,
    only: Option<TenantId>,
) -> Result<JobReport, ApiError> {
    let mut report = JobReport { job: Job::Tiers.name().to_string(), members: 0, movements: 0 };
    for (tenant, program) in first_programs(store, only).await? {
        let Some(tiers) = &program.tiers else { continue };
        let today = clock.now().to_zoned(program.tz_or_utc()).date();
        if let Some(due) = tiers.review_due(today) {
            let due = due.to_string();
            let page = |after| store.members_due_tier_review(tenant, &due, after, CHUNK_MEMBERS_MAX);
            let command = |members| Command::ReviewTiers { members };
            submit_pages(writer, tenant, &mut report, "changed", page, command).await?;
        }
        // Admin assignments that ended, whether or not a review is due: the same command ends them.
        let now = clock.now();
        let page = |after| store.members_manual_tier_ended(tenant, now, after, CHUNK_MEMBERS_MAX);
        submit_pages(writer, tenant, &mut report, "changed", page, |members| Command::ReviewTiers { members }).await?;
    }
    Ok(report)
}

/// Runs every job every `interval` until `shutdown` turns true.
pub async fn run_scheduled(
    store: Store,
    writer: Writer,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Expiry runs before reminders, so no reminder is sent for points already gone.
        for job in [Job::Activate, Job::Expiry, Job::Tiers, Job::Referrals, Job::Events, Job::Reminders] {
            // One node of a cluster runs each job at a time; the others pass it over this round.
            // (Running it twice would change nothing, as every page is decided on fresh rows
            // under the write lock; the lock saves the work.)
            let lock = match JobLock::try_take(&store, job.name()).await {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(job = job.name(), %error, "job lock unavailable; it will run again");
                    continue;
                }
            };
            let outcome = run_once(&store, &writer, &*clock, job, None).await;
            lock.release().await;
            match outcome {
                Ok(report) => {
                    metrics.job_movements.fetch_add(report.movements as u64, Ordering::Relaxed);
                    if report.movements > 0 {
                        tracing::info!(
                            job = job.name(),
                            members = report.members,
                            movements = report.movements,
                            "job ran"
                        );
                    }
                }
                Err(error) => tracing::warn!(job = job.name(), %error, "job failed; it will run again"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
