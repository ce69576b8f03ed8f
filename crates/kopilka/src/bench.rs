//! `kopilka bench`: durable purchases per second, measured beside an anchor in the same run.
//!
//! Three phases, each on a fresh data directory of its own:
//!
//! 1. **engine in-process**: members are created, then purchases (3-line baskets, each with an
//!    idempotency key hashed as the API hashes it) are submitted to the writer by many concurrent
//!    submitters. Every answer follows a durable commit (WAL, `synchronous = FULL`).
//! 2. **raw SQLite (the anchor)**: the same rows the writer writes for those purchases (idempotency,
//!    movements, postings, lots, purchases, events), with the same multi-row INSERT statements,
//!    the same migration and pragmas, in transactions of the engine's mean batch size; no loads, no
//!    decisions, no serialization. The rows are templated from what the core decides for one such
//!    purchase, so their shapes and sizes are the engine's.
//! 3. **HTTP**: the real server on loopback, driven by a load generator of our own (reqwest,
//!    keep-alive connections, a fixed number of requests in flight) on a runtime of its own, as a
//!    separate client process would be; reports p50/p99 latency as well.
//!
//! Each figure is printed beside the anchor as a ratio. See BENCHMARKS.md for the latest figures.
//!
//! `kopilka bench --all` runs the whole suite of issue 5 (`suite`): these phases, then the HTTP
//! server as a child process under peak and half-peak load with pgbench beside it, redemptions on
//! hot members, the activation and expiry jobs over millions of lots, a CSV import, and the peak
//! memory of every process that served.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use jiff::Timestamp;
use kopilka_core::member::Profile;
use kopilka_core::member_state::MemberState;
use kopilka_core::purchase::{self, Channel, LineInput, PurchaseCommand, PurchaseRecord};
use kopilka_core::rules::MemberContext;
use kopilka_core::{
    Account, Balance, Currency, DomainEvent, DueKeys, IdAllocator, Lot, LotId, LotState, MemberId, MemberLedger,
    Movement, PointCurrency, Posting, Program, ProgramId, TenantId,
};
use kopilka_server::app::{self, Config};
use kopilka_server::clock::SystemClock;
use kopilka_server::dto::{BalanceView, PurchaseRequest, PurchaseResponse};
use kopilka_server::engine::{Command, Idempotency, Request};
use kopilka_server::writer::{Writer, BATCH_SIZE_MAX};
use kopilka_store::batch::{self, Writes};
use kopilka_store::sql::Builder;
use kopilka_store::store::hash_api_key;
use kopilka_store::{micros, Backend, Database, Store, StoredResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::AnyConnection;

mod import;
mod jobs;
mod memory;
mod pgbench;
mod redemptions;
mod server;
mod suite;

/// The tables a purchase writes, in the order the writer's flush writes them.
const PURCHASE_TABLES: [&str; 6] = ["lots", "movements", "postings", "purchases", "events", "idempotency"];

#[derive(Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// A small run that takes seconds (defaults below become 500 members, 5,000 purchases, 256 in
    /// flight, 2,000 HTTP purchases, 32 HTTP clients).
    #[arg(long)]
    pub quick: bool,
    /// Members created before the purchases [default: 10000].
    #[arg(long)]
    pub members: Option<usize>,
    /// Purchases through the writer in-process, and rows for the raw SQLite anchor [default: 150000].
    #[arg(long)]
    pub purchases: Option<usize>,
    /// Concurrent submitters in-process [default: 2000].
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Purchases over HTTP [default: 40000].
    #[arg(long)]
    pub http_purchases: Option<usize>,
    /// Concurrent HTTP requests in flight, one keep-alive connection each [default: 128].
    #[arg(long)]
    pub http_clients: Option<usize>,
    /// Purchases per transaction in the anchor [default: the engine's mean batch in this run].
    #[arg(long)]
    pub anchor_batch: Option<usize>,
    /// Skips the HTTP phase.
    #[arg(long)]
    pub skip_http: bool,
    /// Runs only the raw SQLite anchor (with --anchor-batch, default 1024), to study SQLite alone.
    #[arg(long)]
    pub anchor_only: bool,
    /// Where the fresh data directories are made [default: the system's temp directory]. Use a
    /// real disk: on tmpfs an fsync costs nothing and the figures mean little.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keeps the data directories instead of deleting them.
    #[arg(long)]
    pub keep: bool,
    /// Measures only the bulk generation of this many coupon codes (with its anchor).
    #[arg(long)]
    pub coupons: Option<usize>,
    /// Seed of the workload (members chosen, baskets, idempotency keys).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Runs the whole suite (issue 5): purchases in-process and over HTTP with pgbench beside them,
    /// redemptions on hot members, the jobs over many lots, a CSV import, peak memory.
    #[arg(long, visible_alias = "suite")]
    pub all: bool,
    /// The store items 1-6 run on: `sqlite` (a fresh file per phase under --work-dir); items 1-3
    /// also run on PostgreSQL (--postgres). Not `--database`: that is kopilka's global store URL,
    /// and a second argument of that name would fill it with this one's default.
    #[arg(long = "store", id = "bench_store", value_name = "STORE", default_value = "sqlite")]
    pub database: String,
    /// Runs the server, the jobs and the import inside the bench process instead of as child
    /// `kopilka` processes (their memory is then the bench's own). The smoke test uses it.
    #[arg(long)]
    pub in_process: bool,
    /// Lots seeded for the expiry job [default: 10000000; --quick 20000].
    #[arg(long)]
    pub lots: Option<usize>,
    /// Of those, lots seeded pending for the activation job [default: 1000000; --quick 5000].
    #[arg(long)]
    pub pending_lots: Option<usize>,
    /// Purchases in the CSV file imported [default: 1000000; --quick 3000].
    #[arg(long)]
    pub import_purchases: Option<usize>,
    /// Redemption requests on the hot members [default: 20000; --quick 1000].
    #[arg(long)]
    pub redemptions: Option<usize>,
    /// Concurrent clients of the redemption phase [default: 100; --quick 20].
    #[arg(long)]
    pub redemption_clients: Option<usize>,
    /// Seconds pgbench runs [default: 20; --quick 2].
    #[arg(long)]
    pub pgbench_seconds: Option<u64>,
    /// The PostgreSQL server on which the suite also runs items 1-3, as an admin URL (a database
    /// that exists); each phase creates a scratch database there and drops it after.
    #[arg(long, value_name = "URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres: String,
    /// Skips the suite's PostgreSQL phases.
    #[arg(long)]
    pub skip_postgres: bool,
}

/// The sizes of a run, after `--quick` and the flags.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub members: usize,
    pub purchases: usize,
    pub in_flight: usize,
    pub http_purchases: usize,
    pub http_clients: usize,
}

impl BenchArgs {
    pub fn sizes(&self) -> Sizes {
        let (members, purchases, in_flight, http_purchases, http_clients) =
            if self.quick { (500, 5_000, 256, 2_000, 32) } else { (10_000, 150_000, 2_000, 40_000, 128) };
        Sizes {
            members: self.members.unwrap_or(members).max(1),
            purchases: self.purchases.unwrap_or(purchases).max(1),
            in_flight: self.in_flight.unwrap_or(in_flight).max(1),
            http_purchases: self.http_purchases.unwrap_or(http_purchases),
            http_clients: self.http_clients.unwrap_or(http_clients).max(1),
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub purchases: usize,
    pub elapsed: Duration,
    /// Purchases answered 201 (engine, HTTP) or written (anchor).
    pub committed: usize,
    /// Rows in the purchases table at the end.
    pub purchase_rows: i64,
    /// Rows written per table for the purchases (member creation excluded), in `PURCHASE_TABLES` order.
    pub rows: Vec<(&'static str, i64)>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Mean purchases per transaction.
    pub mean_batch: f64,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64()
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub sizes: Sizes,
    pub engine: Phase,
    pub anchor: Phase,
    pub http: Option<Phase>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let sizes = args.sizes();
    println!("{}", machine());
    println!(
        "sizes: {} members, {} purchases in-process ({} in flight), {} purchases over HTTP ({} clients); fresh data dir each",
        thousands(sizes.members as f64),
        thousands(sizes.purchases as f64),
        thousands(sizes.in_flight as f64),
        thousands(sizes.http_purchases as f64),
        thousands(sizes.http_clients as f64),
    );
    if args.all {
        return suite::run(args).await;
    }
    if let Some(codes) = args.coupons {
        let figures =
            with_run_dir(&args, |dir| async move { crate::bench_coupons::measure(&dir, codes.max(1)).await }).await?;
        println!("{}", figures.line());
        return Ok(());
    }
    if args.anchor_only {
        let anchor = with_run_dir(&args, |dir| async move {
            let workload = Workload::generate(sizes.members, sizes.purchases, args.seed);
            let batch = args.anchor_batch.unwrap_or(BATCH_SIZE_MAX).max(1);
            anchor_phase(Database::Sqlite(dir.join("anchor")), &workload, sizes, batch).await
        })
        .await?;
        println!(
            "raw SQLite anchor: {} purchases/s ({} purchases in {:.2} s, {:.0} per transaction)",
            thousands(anchor.rate()),
            thousands(anchor.committed as f64),
            anchor.elapsed.as_secs_f64(),
            anchor.mean_batch
        );
        return Ok(());
    }
    let report = measure(&args).await?;
    print!("{}", table(&report));
    Ok(())
}

/// Runs `f` in a fresh directory under --work-dir, removed afterwards unless --keep.
async fn with_run_dir<T, F, Fut>(args: &BenchArgs, f: F) -> anyhow::Result<T>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let root = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    // The counter keeps runs of one process apart (the tests run side by side).
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run_dir =
        root.join(format!("kopilka-bench-{}-{}-{run}", std::process::id(), Timestamp::now().as_millisecond()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let result = f(run_dir.clone()).await;
    if args.keep {
        eprintln!("data kept in {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    result
}

/// Runs every phase and checks that each committed every purchase.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let sizes = args.sizes();
    with_run_dir(args, |dir| async move { measure_in(args, sizes, &dir).await }).await
}

async fn measure_in(args: &BenchArgs, sizes: Sizes, run_dir: &Path) -> anyhow::Result<Report> {
    let workload = Arc::new(Workload::generate(sizes.members, sizes.purchases.max(sizes.http_purchases), args.seed));

    eprintln!("[1/3] engine in-process: {} purchases through the writer...", sizes.purchases);
    let engine = engine_phase(Database::Sqlite(run_dir.join("engine")), &workload, sizes).await?;
    eprintln!("      {:.0} purchases/s, mean batch {:.0}", engine.rate(), engine.mean_batch);

    let batch = args.anchor_batch.unwrap_or(engine.mean_batch.round() as usize).clamp(1, BATCH_SIZE_MAX);
    eprintln!("[2/3] raw SQLite anchor: the same rows, {batch} purchases per transaction...");
    let anchor = anchor_phase(Database::Sqlite(run_dir.join("anchor")), &workload, sizes, batch).await?;
    eprintln!("      {:.0} purchases/s", anchor.rate());
    ensure!(
        anchor.rows == engine.rows,
        "the anchor must write the engine's rows: engine {:?}, anchor {:?}",
        engine.rows,
        anchor.rows
    );

    let http = if args.skip_http || sizes.http_purchases == 0 {
        None
    } else {
        eprintln!("[3/3] HTTP: {} purchases from {} clients on loopback...", sizes.http_purchases, sizes.http_clients);
        let phase = http_phase(&run_dir.join("http"), workload.clone(), sizes).await?;
        eprintln!("      {:.0} purchases/s", phase.rate());
        Some(phase)
    };
    Ok(Report { sizes, engine, anchor, http })
}

// ---------------------------------------------------------------------------------------------
// The workload: the same members, baskets and keys for every phase.

struct Workload {
    members: usize,
    purchases: Vec<PurchaseSpec>,
}

struct PurchaseSpec {
    /// Index into the members created (0-based).
    member: usize,
    external_id: String,
    idempotency_key: String,
    store: String,
    lines: Vec<LineInput>,
}

const CATEGORIES: [&str; 8] = ["grocery", "dairy", "bakery", "produce", "household", "drinks", "snacks", "care"];

impl Workload {
    fn generate(members: usize, purchases: usize, seed: u64) -> Workload {
        Workload::generate_with_lines(members, purchases, 3, seed)
    }

    /// Purchases of `lines` lines each, for members 0..`members`.
    fn generate_with_lines(members: usize, purchases: usize, lines: usize, seed: u64) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let purchases = (0..purchases)
            .map(|i| PurchaseSpec {
                member: rng.gen_range(0..members),
                external_id: format!("R-{:04}-{i:09}", rng.gen_range(1..=300)),
                // Random, as a till's UUID would be: inserts land all over the idempotency index.
                idempotency_key: format!("{:032x}", rng.gen::<u128>()),
                store: format!("store-{:03}", rng.gen_range(1..=300)),
                lines: (0..lines)
                    .map(|_| {
                        let sku = rng.gen_range(1..=5_000);
                        LineInput {
                            sku: format!("SKU-{sku:05}"),
                            category: Some(CATEGORIES[sku % CATEGORIES.len()].to_string()),
                            brand: None,
                            quantity: rng.gen_range(1..=3),
                            // A basket of fewer lines has dearer lines, so that every purchase earns a lot.
                            unit_price_minor: rng.gen_range(147 / lines as i64..=4_999) * 100,
                            discount_minor: 0,
                        }
                    })
                    .collect(),
            })
            .collect();
        Workload { members, purchases }
    }

    fn card(i: usize) -> String {
        format!("C{:012}", 7_000_000_000 + i as u64)
    }

    fn member_key(i: usize) -> String {
        format!("member-{i:09}")
    }

    /// The request body of purchase `i`, byte for byte what a client sends.
    fn purchase_body(&self, i: usize, member_ids: &[i64]) -> Vec<u8> {
        let spec = &self.purchases[i];
        serde_json::to_vec(&PurchaseRequest {
            member_id: member_ids[spec.member],
            external_id: spec.external_id.clone(),
            occurred_at: None,
            channel: Channel::Pos,
            store: Some(spec.store.clone()),
            currency: "RUB".into(),
            lines: spec.lines.clone(),
            redeem_points: 0,
            program_id: None,
            explain: false,
        })
        .expect("requests serialize")
    }
}

/// The hash the API keeps with an idempotency key: SHA-256 of method, path and body
/// (`kopilka_server::extract`).
fn request_hash(path: &str, body: &[u8]) -> Vec<u8> {
    let mut text = format!("POST {path}\n").into_bytes();
    text.extend_from_slice(body);
    // hash_api_key is the store's SHA-256 of a string; the body is JSON, so UTF-8.
    hash_api_key(std::str::from_utf8(&text).expect("JSON is UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Phase 1: the engine in-process.

async fn engine_phase(database: Database, workload: &Workload, sizes: Sizes) -> anyhow::Result<Phase> {
    let (state, writer_task) = app::open(database, Arc::new(SystemClock)).await?;
    let tenant = app::bootstrap(&state).await?.context("a fresh store has no tenant")?;
    let tenant = TenantId(tenant.id);

    let member_ids = create_members_in_process(&state.writer, tenant, workload.members, sizes.in_flight).await?;

    // Requests are built before the clock starts: this phase measures the writer, not the client.
    let mut lanes: Vec<Vec<Request>> = (0..sizes.in_flight.min(sizes.purchases)).map(|_| Vec::new()).collect();
    let lane_count = lanes.len();
    for i in 0..sizes.purchases {
        let body = workload.purchase_body(i, &member_ids);
        let request: PurchaseRequest = serde_json::from_slice(&body)?;
        lanes[i % lane_count].push(Request {
            tenant,
            idempotency: Some(Idempotency::new(
                workload.purchases[i].idempotency_key.clone(),
                request_hash("/v1/purchases", &body),
            )),
            command: Command::Purchase(request),
        });
    }

    let (batches_before, commands_before) = writer_counts(&state.metrics);
    let started = Instant::now();
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let writer = state.writer.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(lane.len());
                let mut committed = 0usize;
                for request in lane {
                    let sent = Instant::now();
                    let reply = writer.submit(request).await;
                    latencies.push(sent.elapsed());
                    match reply {
                        Ok(reply) if reply.status == 201 && !reply.replayed => committed += 1,
                        Ok(reply) => {
                            bail!("purchase answered {}: {}", reply.status, String::from_utf8_lossy(&reply.body))
                        }
                        Err(error) => bail!("purchase refused: {error}"),
                    }
                }
                Ok((committed, latencies))
            })
        })
        .collect();
    let mut committed = 0;
    let mut latencies = Vec::with_capacity(sizes.purchases);
    for task in tasks {
        let (count, lane_latencies) = task.await??;
        committed += count;
        latencies.extend(lane_latencies);
    }
    let elapsed = started.elapsed();
    let (batches_after, commands_after) = writer_counts(&state.metrics);

    let mut conn = state.store.pool.acquire().await?;
    let mut rows = table_counts(&mut conn).await?;
    drop(conn);
    // Member creation wrote an event and an idempotency record per member: not purchase rows.
    for (table, count) in &mut rows {
        if *table == "events" || *table == "idempotency" {
            *count -= workload.members as i64;
        }
    }
    let purchase_rows = count(&state.store, "purchases").await?;
    drop(state);
    writer_task.await?;

    ensure!(committed == sizes.purchases, "{committed} of {} purchases committed", sizes.purchases);
    ensure!(purchase_rows == sizes.purchases as i64, "{purchase_rows} purchase rows for {} purchases", sizes.purchases);
    let (p50, p99) = percentiles(&mut latencies);
    let batches = (batches_after - batches_before).max(1);
    Ok(Phase {
        purchases: sizes.purchases,
        elapsed,
        committed,
        purchase_rows,
        rows,
        p50,
        p99,
        mean_batch: (commands_after - commands_before) as f64 / batches as f64,
    })
}

fn writer_counts(metrics: &kopilka_server::metrics::Metrics) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (metrics.writer_batches.load(Relaxed), metrics.writer_commands.load(Relaxed))
}

/// Creates the members through the writer, as `POST /v1/members` would; returns their ids in order.
async fn create_members_in_process(
    writer: &Writer,
    tenant: TenantId,
    members: usize,
    in_flight: usize,
) -> anyhow::Result<Vec<i64>> {
    let lanes = in_flight.min(members).max(1);
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (lane..members).step_by(lanes) {
                    let profile = Profile { card: Some(Workload::card(i)), ..Profile::default() };
                    let body = serde_json::to_vec(&profile)?;
                    let request = Request {
                        tenant,
                        idempotency: Some(Idempotency::new(
                            Workload::member_key(i),
                            request_hash("/v1/members", &body),
                        )),
                        command: Command::CreateMember { profile, signup_at: None },
                    };
                    let reply = writer.submit(request).await.map_err(|e| anyhow::anyhow!("member {i}: {e}"))?;
                    ensure!(reply.status == 201, "member {i} answered {}", reply.status);
                    let view: serde_json::Value = serde_json::from_slice(&reply.body)?;
                    ids.push((i, view["id"].as_i64().context("a member id")?));
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = vec![0; members];
    for task in tasks {
        for (i, id) in task.await?? {
            ids[i] = id;
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// Phase 2: the anchor, raw SQLite.

/// The rows the writer writes for one purchase of the workload's kind, decided once by the core.
struct RowTemplate {
    movements: Vec<Movement>,
    lots: Vec<Lot>,
    record: PurchaseRecord,
    events: Vec<DomainEvent>,
    reply_body: Vec<u8>,
    /// The member's loyalty state after the purchase, which the engine writes back with it.
    state: MemberState,
}

impl RowTemplate {
    fn decide(workload: &Workload) -> anyhow::Result<RowTemplate> {
        let program = Program::example();
        let now = Timestamp::now();
        let spec = &workload.purchases[0];
        let mut ledger = MemberLedger::new(MemberId(1), Vec::new());
        let mut ids = IdAllocator::default();
        let command = PurchaseCommand {
            external_id: spec.external_id.clone(),
            occurred_at: now,
            channel: Channel::Pos,
            store: Some(spec.store.clone()),
            currency: Currency::parse("RUB")?,
            lines: spec.lines.clone(),
            redeem_points: 0,
        };
        let (record, outcome) =
            purchase::decide_purchase(&program, 1, &mut ledger, command, &MemberContext::default(), now, &mut ids)
                .map_err(|e| anyhow::anyhow!("the template purchase: {e}"))?;
        let balance = BalanceView {
            member_id: 1,
            currency: program.point_currency.to_string(),
            balance: ledger.balance(&program.point_currency, now),
            as_of: now,
        };
        let reply_body =
            serde_json::to_vec(&PurchaseResponse { purchase: record.clone(), balance, explanation: None })?;
        let mut state = MemberState::default();
        state.record_purchase(&program, &record);
        Ok(RowTemplate {
            state,
            lots: ledger.take_dirty(),
            events: outcome.events,
            movements: outcome.movements,
            record,
            reply_body,
        })
    }

    /// The template's rows for purchase `index` of the workload, with the ids the writer would
    /// have handed out next.
    fn rows_for(
        &self,
        workload: &Workload,
        index: usize,
        hash: &[u8],
        ids: &mut (IdAllocator, i64),
        writes: &mut Writes,
    ) {
        let (ids, last_event_id) = (&mut ids.0, &mut ids.1);
        let (tenant, now) = (TenantId(1), Timestamp::now());
        let member = MemberId(workload.purchases[index].member as i64 + 1);
        let purchase = ids.purchase();
        let movement_ids: Vec<_> = self.movements.iter().map(|m| (m.id, ids.movement())).collect();
        let lot_ids: Vec<_> = self.lots.iter().map(|l| (l.id, ids.lot())).collect();
        let new_lot = |id: LotId| lot_ids.iter().find(|(old, _)| *old == id).expect("the template's lots").1;
        for lot in &self.lots {
            let movement_id = movement_ids.iter().find(|(old, _)| *old == lot.movement_id).expect("its movement").1;
            let lot =
                Lot { id: new_lot(lot.id), member_id: member, movement_id, purchase_id: Some(purchase), ..lot.clone() };
            writes.lots.push((tenant, lot));
        }
        for (movement, (_, id)) in self.movements.iter().zip(&movement_ids) {
            let postings = movement
                .postings
                .iter()
                .map(|p| Posting {
                    account: match p.account {
                        Account::MemberPending(_) => Account::MemberPending(member),
                        Account::MemberAvailable(_) => Account::MemberAvailable(member),
                        system => system,
                    },
                    amount: p.amount,
                    lot_id: p.lot_id.map(new_lot),
                })
                .collect();
            let movement =
                Movement { id: *id, member_id: member, purchase_id: Some(purchase), postings, ..movement.clone() };
            writes.movements.push((tenant, movement));
        }
        let record = PurchaseRecord {
            id: purchase,
            member_id: member,
            external_id: workload.purchases[index].external_id.clone(),
            ..self.record.clone()
        };
        writes.purchases.push((tenant, ProgramId(1), record));
        for event in &self.events {
            *last_event_id += 1;
            writes.events.push((tenant, *last_event_id, event.clone(), now));
        }
        let answer =
            StoredResponse { request_hash: hash.to_vec(), status: 201, body: self.reply_body.clone(), member_id: None };
        writes.idempotency.push((tenant, workload.purchases[index].idempotency_key.clone(), answer, now));
        writes.member_states.push((tenant, member, self.state.clone()));
    }
}

async fn anchor_phase(database: Database, workload: &Workload, sizes: Sizes, batch: usize) -> anyhow::Result<Phase> {
    let store = Store::connect(&database).await?;
    let mut conn = store.writer_connection().await?;
    let template = RowTemplate::decide(workload)?;
    let tenant = 1i64;
    let now = micros::of(Timestamp::now());

    // Untimed: the tenant and its members, so the tables are as the engine's were.
    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'anchor', $2)")
        .bind(tenant)
        .bind(now)
        .execute(&mut conn)
        .await?;
    batch::begin(&mut conn).await?;
    for chunk in (0..workload.members).collect::<Vec<_>>().chunks(kopilka_store::sql::BIND_VALUES_MAX / 7) {
        let mut query =
            Builder::new("INSERT INTO members (tenant_id, id, card, consents, signup_at, created_at, updated_at) ");
        query.push_values(chunk, |mut b, i| {
            b.push_bind(tenant)
                .push_bind(*i as i64 + 1)
                .push_bind(Workload::card(*i))
                .push_bind("{}")
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
        });
        query.execute(&mut conn).await?;
    }
    sqlx::query("COMMIT").execute(&mut conn).await?;
    // The engine's members got ids 1..=N in a fresh store, and so do the anchor's.
    let member_ids: Vec<i64> = (1..=workload.members as i64).collect();
    let hashes: Vec<Vec<u8>> =
        (0..sizes.purchases).map(|i| request_hash("/v1/purchases", &workload.purchase_body(i, &member_ids))).collect();

    // The rows are built before the clock starts: the anchor times only the store's writes.
    let mut ids = (IdAllocator::default(), 0);
    let mut kept_totals: BTreeMap<(MemberId, PointCurrency), Balance> = BTreeMap::new();
    let mut kept_keys: BTreeMap<MemberId, DueKeys> = BTreeMap::new();
    let indices: Vec<usize> = (0..sizes.purchases).collect();
    let batches: Vec<Writes> = indices
        .chunks(batch)
        .map(|chunk| {
            let mut writes = Writes::default();
            for &index in chunk {
                template.rows_for(workload, index, &hashes[index], &mut ids, &mut writes);
            }
            // The engine keeps each changed member's lot totals, every currency (one here).
            let mut changed = BTreeSet::new();
            let mut changed_keys = BTreeSet::new();
            for (_, lot) in &writes.lots {
                // And its due keys, written when a lot moves them (a member's first one).
                let keys = kept_keys.entry(lot.member_id).or_default();
                let with_lot = keys.with(lot);
                if with_lot != *keys {
                    *keys = with_lot;
                    changed_keys.insert(lot.member_id);
                }
                let key = (lot.member_id, lot.currency.clone());
                let totals = kept_totals.entry(key.clone()).or_default();
                match lot.state {
                    LotState::Available => totals.available += lot.remaining,
                    LotState::Pending => totals.pending += lot.remaining,
                    LotState::Expired | LotState::Closed => {}
                }
                changed.insert(key);
            }
            writes.lot_totals = changed
                .into_iter()
                .map(|(member, currency)| {
                    let totals = kept_totals[&(member, currency.clone())];
                    (TenantId(tenant), member, currency, totals)
                })
                .collect();
            writes.due_keys =
                changed_keys.into_iter().map(|member| (TenantId(tenant), member, kept_keys[&member])).collect();
            // The engine writes a member's state once per batch, however many of its purchases.
            writes.member_states.sort_by_key(|(_, member, _)| *member);
            writes.member_states.dedup_by_key(|(_, member, _)| *member);
            writes
        })
        .collect();
    let transactions = batches.len();
    let started = Instant::now();
    for writes in &batches {
        batch::begin(&mut conn).await?;
        batch::flush(&mut conn, writes).await?;
        batch::commit(&mut conn).await?;
    }
    let elapsed = started.elapsed();

    let rows = table_counts(&mut conn).await?;
    let purchase_rows = count(&store, "purchases").await?;
    match store.backend {
        Backend::Sqlite => {
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut conn).await?;
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await?;
            ensure!(
                synchronous == 2 && journal == "wal",
                "the anchor must be as durable as the store: {journal}, {synchronous}"
            );
        }
        Backend::Postgres => {
            // The same session settings as the store's own connections: a commit waits for fsync.
            let synchronous: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut conn).await?;
            ensure!(
                synchronous == "on",
                "the anchor must be as durable as the store: synchronous_commit {synchronous}"
            );
        }
    }
    drop(conn);
    store.pool.close().await;
    ensure!(purchase_rows == sizes.purchases as i64, "{purchase_rows} purchase rows for {} purchases", sizes.purchases);
    Ok(Phase {
        purchases: sizes.purchases,
        elapsed,
        committed: sizes.purchases,
        purchase_rows,
        rows,
        p50: None,
        p99: None,
        mean_batch: sizes.purchases as f64 / transactions as f64,
    })
}

async fn table_counts(conn: &mut AnyConnection) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let mut rows = Vec::new();
    for table in PURCHASE_TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&mut *conn).await?;
        rows.push((table, n));
    }
    Ok(rows)
}

async fn count(store: &Store, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&store.pool).await?)
}

// ---------------------------------------------------------------------------------------------
// Phase 3: HTTP on loopback.

async fn http_phase(dir: &Path, workload: Arc<Workload>, sizes: Sizes) -> anyhow::Result<Phase> {
    let config =
        Config { database: dir.into(), listen: "127.0.0.1:0".parse().expect("an address"), jobs_interval: None };
    let running = app::start(&config, Arc::new(SystemClock)).await?;
    let tenant = app::bootstrap(&running.state).await?.context("a fresh store has no tenant")?;
    let base = format!("http://{}", running.addr);
    let (purchases, clients, key) = (sizes.http_purchases, sizes.http_clients, tenant.admin_key.clone());

    // The load generator runs on threads and a runtime of its own, as a client process would.
    let generator = std::thread::spawn(move || -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(clients)
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(120))
                .build()?;
            let ids = http_members(&client, &base, &key, workload.members, clients).await?;
            // Bodies are built before the clock starts, keys are the workload's.
            let requests: Vec<(String, Vec<u8>)> = (0..purchases)
                .map(|i| (workload.purchases[i].idempotency_key.clone(), workload.purchase_body(i, &ids)))
                .collect();
            http_purchases(&client, &base, &key, Arc::new(requests), clients).await
        })
    });
    let result = tokio::task::spawn_blocking(move || generator.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))?;
    let (batches, commands) = writer_counts(&running.state.metrics);
    let purchase_rows = count(&running.state.store, "purchases").await?;
    running.stop().await;
    let (committed, elapsed, mut latencies) = result?;
    ensure!(committed == purchases, "{committed} of {purchases} purchases committed over HTTP");
    ensure!(purchase_rows == purchases as i64, "{purchase_rows} purchase rows for {purchases} purchases");
    let (p50, p99) = percentiles(&mut latencies);
    Ok(Phase {
        purchases,
        elapsed,
        committed,
        purchase_rows,
        rows: Vec::new(),
        p50,
        p99,
        // Member batches included: a rough figure.
        mean_batch: commands as f64 / batches.max(1) as f64,
    })
}

async fn http_members(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    count: usize,
    clients: usize,
) -> anyhow::Result<Vec<i64>> {
    let lanes = clients.min(count).max(1);
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let (client, url, auth) = (client.clone(), format!("{base}/v1/members"), format!("Bearer {key}"));
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (lane..count).step_by(lanes) {
                    let response = client
                        .post(&url)
                        .header("authorization", &auth)
                        .header("idempotency-key", Workload::member_key(i))
                        .header("content-type", "application/json")
                        .body(format!("{{\"card\":\"{}\"}}", Workload::card(i)))
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    let body = response.bytes().await?;
                    ensure!(status == 201, "POST /v1/members answered {status}: {}", String::from_utf8_lossy(&body));
                    let view: serde_json::Value = serde_json::from_slice(&body)?;
                    ids.push((i, view["id"].as_i64().context("a member id")?));
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = vec![0; count];
    for task in tasks {
        for (i, id) in task.await?? {
            ids[i] = id;
        }
    }
    Ok(ids)
}

async fn http_purchases(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    requests: Arc<Vec<(String, Vec<u8>)>>,
    clients: usize,
) -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
    let lanes = clients.min(requests.len()).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let (client, url, auth, requests) =
                (client.clone(), format!("{base}/v1/purchases"), format!("Bearer {key}"), requests.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut committed = 0usize;
                for i in (lane..requests.len()).step_by(lanes) {
                    let (idempotency_key, body) = &requests[i];
                    let sent = Instant::now();
                    post_purchase(&client, &url, &auth, idempotency_key, body).await?;
                    latencies.push(sent.elapsed());
                    committed += 1;
                }
                anyhow::Ok((committed, latencies))
            })
        })
        .collect();
    let mut committed = 0;
    let mut latencies = Vec::with_capacity(requests.len());
    for task in tasks {
        let (count, lane) = task.await??;
        committed += count;
        latencies.extend(lane);
    }
    Ok((committed, started.elapsed(), latencies))
}

// ---------------------------------------------------------------------------------------------
// Reporting.

fn percentiles(latencies: &mut [Duration]) -> (Option<Duration>, Option<Duration>) {
    if latencies.is_empty() {
        return (None, None);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (Some(at(0.50)), Some(at(0.99)))
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(latency: Option<Duration>) -> String {
    latency.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3)).unwrap_or_else(|| "-".into())
}

/// The machine, for the record.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown CPU");
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<f64>().unwrap_or(0.0))
        })
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    format!("machine: {cpus} CPUs ({model}), {memory} memory")
}

pub fn table(report: &Report) -> String {
    let anchor = report.anchor.rate();
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<34} {:>10} {:>9} {:>13} {:>14} {:>9} {:>9} {:>7}",
        "durable purchases", "purchases", "seconds", "purchases/s", "vs raw SQLite", "p50", "p99", "batch"
    );
    let mut line = |name: &str, phase: &Phase| {
        let _ = writeln!(
            out,
            "{:<34} {:>10} {:>9.2} {:>13} {:>13.2}× {:>9} {:>9} {:>7.0}",
            name,
            thousands(phase.committed as f64),
            phase.elapsed.as_secs_f64(),
            thousands(phase.rate()),
            phase.rate() / anchor,
            millis(phase.p50),
            millis(phase.p99),
            phase.mean_batch,
        );
    };
    line("raw SQLite, same rows (anchor)", &report.anchor);
    line(&format!("engine in-process ({} in flight)", report.sizes.in_flight), &report.engine);
    if let Some(http) = &report.http {
        line(&format!("HTTP loopback ({} clients)", report.sizes.http_clients), http);
    }
    let _ = writeln!(out);
    let rows: Vec<String> = report
        .engine
        .rows
        .iter()
        .map(|(table, n)| format!("{table} {:.2}", *n as f64 / report.engine.purchases as f64))
        .collect();
    let _ = writeln!(out, "rows per purchase (engine = anchor): {}", rows.join(", "));
    let mut on_disk = vec![
        format!("anchor {}", thousands(report.anchor.purchase_rows as f64)),
        format!("engine {}", thousands(report.engine.purchase_rows as f64)),
    ];
    if let Some(http) = &report.http {
        on_disk.push(format!("HTTP {}", thousands(http.purchase_rows as f64)));
    }
    let _ = writeln!(out, "purchase rows committed (all answered 201): {}", on_disk.join(", "));
    let _ = writeln!(
        out,
        "engine in-process: {} purchases/s = {:.2}× raw SQLite {}/s",
        thousands(report.engine.rate()),
        report.engine.rate() / anchor,
        thousands(anchor)
    );
    if let Some(http) = &report.http {
        let _ = writeln!(
            out,
            "HTTP loopback:     {} purchases/s = {:.2}× raw SQLite {}/s (p50 {}, p99 {})",
            thousands(http.rate()),
            http.rate() / anchor,
            thousands(anchor),
            millis(http.p50),
            millis(http.p99)
        );
    }
    out
}

/// One purchase POSTed as a till would, keep-alive; an answer other than 201 is an error.
pub(crate) async fn post_purchase(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    idempotency_key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header("authorization", auth)
        .header("idempotency-key", idempotency_key)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.bytes().await?;
    ensure!(status == 201, "POST /v1/purchases answered {status}: {}", String::from_utf8_lossy(&text));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest run: it cannot rot. It asserts completion and counts, never speed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smallest_run_commits_every_purchase() {
        let args = BenchArgs {
            members: Some(20),
            purchases: Some(150),
            in_flight: Some(16),
            http_purchases: Some(60),
            http_clients: Some(4),
            ..BenchArgs::default()
        };
        let report = measure(&args).await.expect("the bench runs");
        assert_eq!(report.engine.committed, 150);
        assert_eq!(report.engine.purchase_rows, 150);
        assert_eq!(report.anchor.purchase_rows, 150);
        assert_eq!(report.anchor.rows, report.engine.rows);
        let http = report.http.as_ref().expect("the HTTP phase ran");
        assert_eq!(http.committed, 60);
        assert_eq!(http.purchase_rows, 60);
        assert!(table(&report).contains("× raw SQLite"));
    }
}
