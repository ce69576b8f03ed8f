//! `kopilka bench --all`: the benchmark suite of issue 5, every figure beside an anchor measured in
//! the same run, as a ratio, and beside its target.
//!
//! 1. purchases in-process through the writer vs the raw store writing the same rows;
//! 2. purchases over HTTP at peak (many clients), then paced at half the peak rate, vs pgbench's
//!    tpcb-like TPS on the local PostgreSQL;
//! 3. redemptions on hot members (`redemptions`);
//! 4. the activation and expiry jobs over many lots (`jobs`), and balance reads under purchase load
//!    vs the same reads on the idle server;
//! 5. a CSV import (`import`);
//! 6. the peak memory (`VmHWM`) of each process that served: child processes by default.
//!
//! Items 1-3 run a second time on PostgreSQL (`--postgres`, scratch databases created and dropped
//! by the run), their figures beside the same run's pgbench TPS; without a server they are
//! skipped with the reason printed.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use rand::Rng;

use super::import::ImportFigures;
use super::jobs::JobFigures;
use super::pgbench::PgBench;
use super::redemptions::{Redemptions, HOT_MEMBERS};
use super::server::{postgres_reachable, Server, Target};
use super::{
    anchor_phase, engine_phase, http_members, http_purchases, machine, memory, millis, percentiles, thousands,
    with_run_dir, BenchArgs, Phase, Sizes, Workload, BATCH_SIZE_MAX,
};

/// The suite's sizes after `--quick` and the flags.
#[derive(Debug, Clone, Copy)]
pub struct SuiteSizes {
    pub purchases: Sizes,
    pub lots: usize,
    pub pending_lots: usize,
    pub import_purchases: usize,
    pub import_members: usize,
    pub redemptions: usize,
    pub redemption_clients: usize,
    pub pgbench_seconds: u64,
    pub pgbench_clients: usize,
    /// Concurrent balance readers during the read phase.
    pub readers: usize,
}

impl SuiteSizes {
    pub fn of(args: &BenchArgs) -> SuiteSizes {
        let quick = args.quick;
        let pick = |value: Option<usize>, full: usize, small: usize| value.unwrap_or(if quick { small } else { full });
        let purchases = args.sizes();
        SuiteSizes {
            purchases,
            lots: pick(args.lots, 10_000_000, 20_000).max(1),
            pending_lots: pick(args.pending_lots, 1_000_000, 5_000),
            import_purchases: pick(args.import_purchases, 1_000_000, 3_000).max(1),
            import_members: purchases.members,
            redemptions: pick(args.redemptions, 20_000, 1_000).max(1),
            redemption_clients: pick(args.redemption_clients, 100, 20).max(1),
            pgbench_seconds: args.pgbench_seconds.unwrap_or(if quick { 2 } else { 20 }),
            pgbench_clients: if quick { 4 } else { 32 },
            readers: if quick { 2 } else { 8 },
        }
    }
}

/// The HTTP phases on one server.
#[derive(Debug, Clone)]
pub struct HttpFigures {
    pub peak: Phase,
    pub half: Phase,
    /// Balance reads on the idle server (the anchor) and during a purchase load.
    pub idle_reads: Phase,
    pub loaded_reads: Phase,
    pub purchase_rows: i64,
    pub server_peak_kib: u64,
}

/// Items 1 and 2 on one store.
#[derive(Debug, Clone)]
pub struct PurchaseFigures {
    pub engine: Phase,
    pub anchor: Phase,
    pub engine_peak_kib: u64,
    pub http: HttpFigures,
}

/// Items 1-3 on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresFigures {
    pub where_it_runs: String,
    pub purchases: PurchaseFigures,
    pub redemptions: Redemptions,
}

/// Everything one suite run measured.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    pub sizes: SuiteSizes,
    pub where_it_runs: String,
    pub engine: Phase,
    pub anchor: Phase,
    pub engine_peak_kib: u64,
    pub http: HttpFigures,
    pub pgbench: Result<PgBench, String>,
    /// `Err`: why the PostgreSQL phases were skipped.
    pub postgres: Result<PostgresFigures, String>,
    pub redemptions: Redemptions,
    pub jobs: JobFigures,
    pub import: ImportFigures,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    print!("{}", table(&report));
    Ok(())
}

pub async fn measure(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    let target = Target::new(&args.database, args.in_process)?;
    let sizes = SuiteSizes::of(args);
    eprintln!("{}", machine());
    with_run_dir(args, |dir| async move { measure_in(args, &target, sizes, &dir).await }).await
}

async fn measure_in(args: &BenchArgs, target: &Target, sizes: SuiteSizes, dir: &Path) -> anyhow::Result<SuiteReport> {
    let p = sizes.purchases;
    // Peak, half rate and the read phase's load each take fresh purchases of the same workload.
    let workload = Arc::new(Workload::generate(
        p.members,
        p.purchases.max(p.http_purchases * 2 + p.http_purchases / 2),
        args.seed,
    ));

    let PurchaseFigures { engine, anchor, engine_peak_kib, http } =
        purchase_figures(target, dir, &workload, p, sizes.readers).await?;
    let (clients, seconds) = (sizes.pgbench_clients, sizes.pgbench_seconds);
    let pgbench = tokio::task::spawn_blocking(move || super::pgbench::measure(clients, seconds)).await?;
    match &pgbench {
        Ok(pg) => eprintln!("      pgbench tpcb-like: {:.0} TPS", pg.tps),
        Err(why) => eprintln!("      pgbench skipped: {why}"),
    }
    let postgres = postgres_figures(args, sizes, &workload, &dir.join("postgres")).await?;

    eprintln!("[3/6] redemptions: {} on {} hot members...", sizes.redemptions, HOT_MEMBERS);
    let redemptions = super::redemptions::measure(
        target,
        &dir.join("redemptions"),
        sizes.redemptions,
        sizes.redemption_clients,
        args.seed,
    )
    .await?;
    say_redemptions(&redemptions);
    ensure!(redemptions.overdrafts == 0, "{} hot members overdrawn", redemptions.overdrafts);
    ensure!(redemptions.ledger_problems == 0, "verify found {} problems", redemptions.ledger_problems);

    eprintln!("[4/6] jobs: {} lots ({} pending)...", sizes.lots, sizes.pending_lots);
    let jobs = super::jobs::measure(target, dir, sizes.lots, sizes.pending_lots).await?;
    eprintln!(
        "      activation {:.2} s, expiry {:.2} s",
        jobs.activation.elapsed.as_secs_f64(),
        jobs.expiry.elapsed.as_secs_f64()
    );

    // The seeded stores take gigabytes at full size; the import needs the room.
    if !args.keep {
        for seeded in ["jobs", "jobs-anchor"] {
            let _ = std::fs::remove_dir_all(dir.join(seeded));
        }
    }

    eprintln!("[5/6] import of {} purchases from CSV...", sizes.import_purchases);
    let import = super::import::measure(target, dir, sizes.import_purchases, sizes.import_members, args.seed).await?;
    eprintln!("      {:.0} purchases/s", import.rate());
    eprintln!("[6/6] peak memory: read from /proc");
    Ok(SuiteReport {
        sizes,
        where_it_runs: target.where_it_runs(),
        engine,
        anchor,
        engine_peak_kib,
        http,
        pgbench,
        postgres,
        redemptions,
        jobs,
        import,
    })
}

/// Items 1 and 2 on `target`'s store: in-process purchases and the raw store writing the same rows
/// in transactions of the engine's mean batch (`batch::flush`, as the writer does), then the HTTP
/// phases.
async fn purchase_figures(
    target: &Target,
    dir: &Path,
    workload: &Arc<Workload>,
    p: Sizes,
    readers: usize,
) -> anyhow::Result<PurchaseFigures> {
    let on = target.where_it_runs();
    eprintln!("[1/6] purchases in-process on {on}: {} through the writer, then the raw store...", p.purchases);
    memory::reset_own_peak();
    let engine = engine_phase(target.database(&dir.join("engine")).await?, workload, p).await?;
    let engine_peak_kib = memory::peak_kib(None).unwrap_or(0);
    let batch = (engine.mean_batch.round() as usize).clamp(1, BATCH_SIZE_MAX);
    let anchor = anchor_phase(target.database(&dir.join("anchor")).await?, workload, p, batch).await?;
    ensure!(anchor.rows == engine.rows, "the anchor must write the engine's rows");
    eprintln!("      engine {:.0}/s, raw store {:.0}/s ({batch} per transaction)", engine.rate(), anchor.rate());

    eprintln!("[2/6] purchases over HTTP ({on}): peak, half the peak, balance reads...");
    let http = http_figures(target, &dir.join("http"), workload.clone(), p, readers).await?;
    eprintln!("      peak {:.0}/s, half {:.0}/s p99 {}", http.peak.rate(), http.half.rate(), millis(http.half.p99));
    Ok(PurchaseFigures { engine, anchor, engine_peak_kib, http })
}

/// Items 1-3 on the PostgreSQL server of `--postgres`, or why they were skipped. A server that
/// answers but fails mid-run is an error, not a skip.
async fn postgres_figures(
    args: &BenchArgs,
    sizes: SuiteSizes,
    workload: &Arc<Workload>,
    dir: &Path,
) -> anyhow::Result<Result<PostgresFigures, String>> {
    if args.skip_postgres {
        eprintln!("[PostgreSQL] skipped: --skip-postgres");
        return Ok(Err("--skip-postgres".into()));
    }
    let url = if args.postgres.is_empty() { "postgres://postgres@127.0.0.1:5432/postgres" } else { &args.postgres };
    if let Err(why) = postgres_reachable(url).await {
        let why = format!("no PostgreSQL server at {url}: {why}");
        eprintln!("[PostgreSQL] items 1-3 SKIPPED: {why}");
        return Ok(Err(why));
    }
    let target = Target::postgres(url, args.in_process)?;
    eprintln!("[PostgreSQL] items 1-3 on {}, scratch databases dropped after", target.where_it_runs());
    let result = async {
        let purchases = purchase_figures(&target, dir, workload, sizes.purchases, sizes.readers).await?;
        eprintln!("[3/6] redemptions on PostgreSQL: {} on {} hot members...", sizes.redemptions, HOT_MEMBERS);
        let redemptions = super::redemptions::measure(
            &target,
            &dir.join("redemptions"),
            sizes.redemptions,
            sizes.redemption_clients,
            args.seed,
        )
        .await?;
        say_redemptions(&redemptions);
        ensure!(redemptions.overdrafts == 0, "{} hot members overdrawn on PostgreSQL", redemptions.overdrafts);
        ensure!(redemptions.ledger_problems == 0, "verify found {} problems", redemptions.ledger_problems);
        anyhow::Ok(PostgresFigures { where_it_runs: target.where_it_runs(), purchases, redemptions })
    }
    .await;
    let dropped = target.drop_scratch().await;
    let figures = result?;
    dropped?;
    Ok(Ok(figures))
}

type Requests = Arc<Vec<(String, Vec<u8>)>>;

/// The redemption figures as a progress line: a run cut short still leaves them on record.
fn say_redemptions(red: &Redemptions) {
    eprintln!(
        "      {:.0}/s, p50 {}, p99 {}; {} accepted, {} refused, {} overdrafts, {} ledger problems",
        red.rate(),
        millis(red.p50),
        millis(red.p99),
        red.accepted,
        red.refused,
        red.overdrafts,
        red.ledger_problems
    );
}

async fn http_figures(
    target: &Target,
    dir: &Path,
    workload: Arc<Workload>,
    sizes: Sizes,
    readers: usize,
) -> anyhow::Result<HttpFigures> {
    let server = Server::start(target, dir).await?;
    let (base, key, clients) = (server.base.clone(), server.admin_key.clone(), sizes.http_clients);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients + readers)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()?;
    let ids = http_members(&client, &base, &key, workload.members, clients).await?;
    let (n, half_n) = (sizes.http_purchases, sizes.http_purchases / 2);
    let slice = |from: usize, count: usize| -> Requests {
        Arc::new(
            (from..from + count)
                .map(|i| (workload.purchases[i].idempotency_key.clone(), workload.purchase_body(i, &ids)))
                .collect(),
        )
    };
    let (peak_requests, half_requests, load_requests) = (slice(0, n), slice(n, half_n), slice(n + half_n, half_n));

    let before = WriterTotals::read(&client, &base).await?;
    let (committed, elapsed, mut latencies) = http_purchases(&client, &base, &key, peak_requests, clients).await?;
    let peak = phase(committed, elapsed, &mut latencies);
    eprintln!("      writer at the peak: {}", WriterTotals::read(&client, &base).await?.since(&before));
    let rate = peak.rate() / 2.0;
    let (committed, elapsed, mut latencies) =
        paced_purchases(&client, &base, &key, half_requests, clients, rate).await?;
    let half = phase(committed, elapsed, &mut latencies);

    let samples = (half_n / 4).max(readers * 10);
    let stop = Arc::new(AtomicBool::new(false));
    let idle_reads = balance_reads(&client, &base, &key, &ids, readers, Some(samples), stop.clone()).await?;
    let reading = {
        let (client, base, key, ids, stop) = (client.clone(), base.clone(), key.clone(), ids.clone(), stop.clone());
        tokio::spawn(async move { balance_reads(&client, &base, &key, &ids, readers, None, stop).await })
    };
    let loaded = http_purchases(&client, &base, &key, load_requests, clients).await;
    stop.store(true, Ordering::Relaxed);
    let loaded_reads = reading.await??;
    loaded?;

    let server_peak_kib = server.stop().await?;
    let store = target.open_store(dir).await?;
    let purchase_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM purchases").fetch_one(&store.pool).await?;
    store.pool.close().await;
    ensure!(purchase_rows == (n + 2 * half_n) as i64, "{purchase_rows} purchases stored of {}", n + 2 * half_n);
    Ok(HttpFigures { peak, half, idle_reads, loaded_reads, purchase_rows, server_peak_kib })
}

/// The writer's counters from the server's `/metrics`: batches, commands and the time spent in
/// each stage of a batch, so a phase's figure comes with where its batches spent their time.
#[derive(Debug, Default)]
struct WriterTotals {
    batches: u64,
    commands: u64,
    stage_micros: Vec<(String, u64)>,
    /// SQLite's WAL fsyncs before answers (none on PostgreSQL), and their time.
    wal_syncs: u64,
    wal_sync_micros: u64,
}

impl WriterTotals {
    async fn read(client: &reqwest::Client, base: &str) -> anyhow::Result<WriterTotals> {
        let text = client.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await?;
        let mut totals = WriterTotals::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            match name {
                "kopilka_writer_batches_total" => totals.batches = value,
                "kopilka_writer_commands_total" => totals.commands = value,
                "kopilka_writer_wal_syncs_total" => totals.wal_syncs = value,
                "kopilka_writer_wal_sync_microseconds_total" => totals.wal_sync_micros = value,
                _ => {
                    if let Some(stage) = name
                        .strip_prefix("kopilka_writer_stage_microseconds_total{stage=\"")
                        .and_then(|rest| rest.strip_suffix("\"}"))
                    {
                        totals.stage_micros.push((stage.to_string(), value));
                    }
                }
            }
        }
        Ok(totals)
    }

    /// What happened between `before` and `self`, per batch.
    fn since(&self, before: &WriterTotals) -> String {
        let batches = self.batches.saturating_sub(before.batches).max(1);
        let commands = self.commands.saturating_sub(before.commands);
        let mut out = format!("{batches} batches of {:.1} commands; per batch", commands as f64 / batches as f64);
        for (stage, micros) in &self.stage_micros {
            let earlier = before.stage_micros.iter().find(|(s, _)| s == stage).map_or(0, |(_, m)| *m);
            let _ = write!(out, " {stage} {:.2} ms", micros.saturating_sub(earlier) as f64 / 1e3 / batches as f64);
        }
        let syncs = self.wal_syncs.saturating_sub(before.wal_syncs);
        if syncs > 0 {
            let micros = self.wal_sync_micros.saturating_sub(before.wal_sync_micros);
            let _ = write!(out, "; {syncs} WAL fsyncs of {:.2} ms", micros as f64 / 1e3 / syncs as f64);
        }
        out
    }
}

fn phase(committed: usize, elapsed: Duration, latencies: &mut [Duration]) -> Phase {
    let (p50, p99) = percentiles(latencies);
    Phase { purchases: committed, elapsed, committed, purchase_rows: 0, rows: Vec::new(), p50, p99, mean_batch: 0.0 }
}

/// Purchases sent on a fixed schedule, `rate` per second over all lanes (an open loop): a request
/// late because the server is slow counts its waiting from when it was due, not from when it left.
async fn paced_purchases(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    requests: Requests,
    clients: usize,
    rate: f64,
) -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
    let lanes = clients.min(requests.len()).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..lanes)
        .map(|lane| {
            let (client, url, auth, requests) =
                (client.clone(), format!("{base}/v1/purchases"), format!("Bearer {key}"), requests.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (lane..requests.len()).step_by(lanes) {
                    let due = started + interval * i as u32;
                    tokio::time::sleep_until(due).await;
                    let (idempotency_key, body) = &requests[i];
                    super::post_purchase(&client, &url, &auth, idempotency_key, body).await?;
                    latencies.push(due.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests.len());
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies.len(), started.elapsed(), latencies))
}

/// `GET /v1/members/{id}/balance` of random members from `readers` lanes: `count` reads in all, or
/// until `stop`.
async fn balance_reads(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    ids: &[i64],
    readers: usize,
    count: Option<usize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..readers)
        .map(|lane| {
            let (client, base, auth, ids, stop) =
                (client.clone(), base.to_string(), format!("Bearer {key}"), ids.to_vec(), stop.clone());
            let quota = count.map(|c| c / readers + usize::from(lane < c % readers));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while quota.map_or(!stop.load(Ordering::Relaxed), |q| latencies.len() < q) {
                    let member = ids[rand::thread_rng().gen_range(0..ids.len())];
                    let sent = Instant::now();
                    let response = client
                        .get(format!("{base}/v1/members/{member}/balance"))
                        .header("authorization", &auth)
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    response.bytes().await?;
                    latencies.push(sent.elapsed());
                    ensure!(status == 200, "GET balance answered {status}");
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(phase(latencies.len(), started.elapsed(), &mut latencies))
}

// ---------------------------------------------------------------------------------------------
// Reporting: one line per figure, its anchor, the ratio, the target.

struct Line {
    what: String,
    figure: String,
    anchor: String,
    ratio: String,
    target: String,
}

fn ratio(value: f64) -> String {
    format!("{value:.2}×")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn per_s(count: usize, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Item 3's line on one store (`on` names it, e.g. " on PostgreSQL"), beside that store's
/// HTTP purchase peak.
fn redemption_line(red: &Redemptions, on: &str, peak: f64) -> Line {
    Line {
        what: format!("3. redemptions{on}, {HOT_MEMBERS} hot members, {} clients", red.clients),
        figure: format!(
            "{}/s, p50 {}, p99 {}; {} accepted, {} refused, {} overdrafts, {} ledger problems",
            thousands(red.rate()),
            millis(red.p50),
            millis(red.p99),
            thousands(red.accepted as f64),
            thousands(red.refused as f64),
            red.overdrafts,
            red.ledger_problems
        ),
        anchor: format!("HTTP purchases peak{on} {}/s", thousands(peak)),
        ratio: ratio(red.rate() / peak),
        target: format!("zero overdrafts: {}", met(red.overdrafts == 0 && red.ledger_problems == 0)),
    }
}

fn postgres_lines(lines: &mut Vec<Line>, r: &SuiteReport, pg: &PostgresFigures) {
    let (engine, anchor, http) = (&pg.purchases.engine, pg.purchases.anchor.rate(), &pg.purchases.http);
    lines.push(Line {
        what: format!("1. purchases in-process on PostgreSQL ({} in flight)", r.sizes.purchases.in_flight),
        figure: format!("{}/s", thousands(engine.rate())),
        anchor: format!(
            "raw store, same rows, {:.0} per transaction: {}/s",
            pg.purchases.anchor.mean_batch,
            thousands(anchor)
        ),
        ratio: ratio(engine.rate() / anchor),
        target: "-".into(),
    });
    let peak = http.peak.rate();
    let (anchor_text, ratio_text, target) = match &r.pgbench {
        Ok(bench) => (
            format!("pgbench tpcb-like {} TPS", thousands(bench.tps)),
            ratio(peak / bench.tps),
            format!("≥ 3× pgbench: {}", met(peak >= 3.0 * bench.tps)),
        ),
        Err(_) => ("pgbench skipped".into(), "-".into(), "≥ 3× pgbench: not measured".into()),
    };
    lines.push(Line {
        what: format!("2. purchases over HTTP on PostgreSQL, peak ({} clients)", r.sizes.purchases.http_clients),
        figure: format!("{}/s, p50 {}, p99 {}", thousands(peak), millis(http.peak.p50), millis(http.peak.p99)),
        anchor: anchor_text,
        ratio: ratio_text,
        target,
    });
    let half_p99 = http.half.p99.unwrap_or_default();
    lines.push(Line {
        what: "2. purchases over HTTP on PostgreSQL at half the peak".into(),
        figure: format!(
            "{}/s, p50 {}, p99 {}",
            thousands(http.half.rate()),
            millis(http.half.p50),
            millis(http.half.p99)
        ),
        anchor: format!("raw store {}/s", thousands(anchor)),
        ratio: ratio(http.half.rate() / anchor),
        target: format!("p99 < 20 ms: {}", met(half_p99 < Duration::from_millis(20))),
    });
    let red = &pg.redemptions;
    lines.push(redemption_line(red, " on PostgreSQL", peak));
    lines.push(Line {
        what: format!("6. peak memory on PostgreSQL (VmHWM, {})", pg.where_it_runs),
        figure: format!(
            "server, purchases and reads {}; server, redemptions {}; bench process, engine phase {}",
            memory::mib(http.server_peak_kib),
            memory::mib(red.server_peak_kib),
            memory::mib(pg.purchases.engine_peak_kib)
        ),
        anchor: "-".into(),
        ratio: "-".into(),
        target: format!("server < 500 MiB: {}", met(http.server_peak_kib.max(red.server_peak_kib) < 500 * 1024)),
    });
}

pub fn table(r: &SuiteReport) -> String {
    let mut lines = Vec::new();
    let anchor = r.anchor.rate();
    lines.push(Line {
        what: format!("1. purchases in-process ({} in flight)", r.sizes.purchases.in_flight),
        figure: format!("{}/s", thousands(r.engine.rate())),
        anchor: format!("raw store, same rows: {}/s", thousands(anchor)),
        ratio: ratio(r.engine.rate() / anchor),
        target: "-".into(),
    });
    let peak = r.http.peak.rate();
    lines.push(Line {
        what: format!("2. purchases over HTTP, peak ({} clients)", r.sizes.purchases.http_clients),
        figure: format!("{}/s, p50 {}, p99 {}", thousands(peak), millis(r.http.peak.p50), millis(r.http.peak.p99)),
        anchor: format!("raw store: {}/s", thousands(anchor)),
        ratio: ratio(peak / anchor),
        target: format!("≥ 10,000/s: {}", met(peak >= 10_000.0)),
    });
    let half_p99 = r.http.half.p99.unwrap_or_default();
    lines.push(Line {
        what: "2. purchases over HTTP at half the peak".into(),
        figure: format!(
            "{}/s, p50 {}, p99 {}",
            thousands(r.http.half.rate()),
            millis(r.http.half.p50),
            millis(r.http.half.p99)
        ),
        anchor: format!("peak p99 {}", millis(r.http.peak.p99)),
        ratio: ratio(half_p99.as_secs_f64() / r.http.peak.p99.unwrap_or(half_p99).as_secs_f64().max(1e-9)),
        target: format!("p99 < 20 ms: {}", met(half_p99 < Duration::from_millis(20))),
    });
    match &r.pgbench {
        Ok(pg) => lines.push(Line {
            what: "2. pgbench tpcb-like on 127.0.0.1:5432".into(),
            figure: format!("{} TPS (-c {} -j 2 -T {}, scale {})", thousands(pg.tps), pg.clients, pg.seconds, pg.scale),
            anchor: format!("HTTP peak on SQLite {}/s", thousands(peak)),
            ratio: format!("HTTP = {}", ratio(peak / pg.tps)),
            target: "-".into(),
        }),
        Err(why) => lines.push(Line {
            what: "2. pgbench tpcb-like".into(),
            figure: format!("skipped: {why}"),
            anchor: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
        }),
    }
    match &r.postgres {
        Ok(pg) => postgres_lines(&mut lines, r, pg),
        Err(why) => lines.push(Line {
            what: "1-3. on PostgreSQL".into(),
            figure: format!("SKIPPED: {why}"),
            anchor: "-".into(),
            ratio: "-".into(),
            target: "HTTP ≥ 3× pgbench: not measured".into(),
        }),
    }
    lines.push(redemption_line(&r.redemptions, "", peak));
    for (name, run, target) in [
        ("4. activation job", &r.jobs.activation, None),
        ("4. expiry job", &r.jobs.expiry, Some(Duration::from_secs(20))),
    ] {
        let scaled = run.elapsed.as_secs_f64() * 10_000_000.0 / r.jobs.lots as f64;
        lines.push(Line {
            what: format!("{name}, {} lots", thousands(run.lots as f64)),
            figure: format!("{} ({} lots/s)", secs(run.elapsed), thousands(per_s(run.lots, run.elapsed))),
            anchor: format!("raw UPDATE: {} ({} lots/s)", secs(run.anchor), thousands(per_s(run.lots, run.anchor))),
            ratio: ratio(run.anchor.as_secs_f64() / run.elapsed.as_secs_f64()),
            target: match target {
                Some(t) if r.jobs.lots >= 10_000_000 => format!("10 M lots < 20 s: {}", met(run.elapsed < t)),
                Some(_) => format!("10 M lots < 20 s: ~{scaled:.0} s scaled"),
                None => "-".into(),
            },
        });
    }
    lines.push(Line {
        what: format!("4. balance reads under purchase load ({} readers)", r.sizes.readers),
        figure: format!("p50 {}, p99 {}", millis(r.http.loaded_reads.p50), millis(r.http.loaded_reads.p99)),
        anchor: format!("idle server: p50 {}, p99 {}", millis(r.http.idle_reads.p50), millis(r.http.idle_reads.p99)),
        ratio: format!(
            "p99 {}",
            ratio(
                r.http.loaded_reads.p99.unwrap_or_default().as_secs_f64()
                    / r.http.idle_reads.p99.unwrap_or_default().as_secs_f64().max(1e-9)
            )
        ),
        target: "-".into(),
    });
    let imp = &r.import;
    let scaled = imp.elapsed.as_secs_f64() * 1_000_000.0 / imp.purchases as f64;
    lines.push(Line {
        what: format!(
            "5. import of {} purchases ({} members) from CSV",
            thousands(imp.purchases as f64),
            thousands(imp.members as f64)
        ),
        figure: format!("{} ({}/s)", secs(imp.elapsed), thousands(imp.rate())),
        anchor: format!("raw store, same rows: {} ({}/s)", secs(imp.anchor.elapsed), thousands(imp.anchor.rate())),
        ratio: ratio(imp.rate() / imp.anchor.rate()),
        target: if imp.purchases >= 1_000_000 {
            format!("1 M < 20 s: {}", met(imp.elapsed < Duration::from_secs(20)))
        } else {
            format!("1 M < 20 s: ~{scaled:.0} s scaled")
        },
    });
    let server_peak = r.http.server_peak_kib.max(r.redemptions.server_peak_kib);
    let others = [
        ("server, purchases and reads", r.http.server_peak_kib),
        ("server, redemptions", r.redemptions.server_peak_kib),
        ("jobs run activate", r.jobs.activation.peak_kib),
        ("jobs run expiry", r.jobs.expiry.peak_kib),
        ("import transactions", r.import.peak_kib),
        ("bench process, in-process engine phase", r.engine_peak_kib),
    ];
    lines.push(Line {
        what: format!("6. peak memory (VmHWM, {})", r.where_it_runs),
        figure: others.iter().map(|(n, k)| format!("{n} {}", memory::mib(*k))).collect::<Vec<_>>().join("; "),
        anchor: "-".into(),
        ratio: "-".into(),
        target: format!("server < 500 MiB: {}", met(server_peak < 500 * 1024)),
    });

    let mut out = String::new();
    let _ = writeln!(out);
    for line in &lines {
        let _ = writeln!(out, "{}", line.what);
        let _ = writeln!(out, "    figure: {}", line.figure);
        let _ = writeln!(out, "    anchor: {}   ratio: {}   target: {}", line.anchor, line.ratio, line.target);
    }
    let _ = writeln!(
        out,
        "\nrows: HTTP purchases stored {}, jobs seeded {} members / {} lots in {}, import file {:.1} MiB",
        thousands(r.http.purchase_rows as f64),
        thousands(r.jobs.members as f64),
        thousands(r.jobs.lots as f64),
        secs(r.jobs.seed_time),
        r.import.file_bytes as f64 / 1048576.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole suite at its quick sizes, in-process: it asserts counts and the overdraft check,
    /// never speed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_suite_runs_every_phase_correctly() {
        let args = BenchArgs { quick: true, in_process: true, database: "sqlite".into(), ..BenchArgs::default() };
        let report = measure(&args).await.expect("the suite runs");
        let sizes = report.sizes;
        assert_eq!(report.engine.committed, sizes.purchases.purchases);
        assert_eq!(report.anchor.rows, report.engine.rows);
        assert_eq!(report.http.peak.committed, sizes.purchases.http_purchases);
        assert_eq!(report.http.half.committed, sizes.purchases.http_purchases / 2);
        assert_eq!(
            report.http.purchase_rows as usize,
            sizes.purchases.http_purchases / 2 * 2 + sizes.purchases.http_purchases
        );
        assert!(report.http.loaded_reads.committed > 0 && report.http.idle_reads.committed > 0);
        let red = &report.redemptions;
        assert_eq!(red.accepted + red.refused, sizes.redemptions);
        assert!(red.accepted > 0 && red.refused > 0, "the guard must have been tested: {red:?}");
        assert_eq!((red.overdrafts, red.ledger_problems), (0, 0));
        assert_eq!((report.jobs.activation.lots, report.jobs.expiry.lots), (sizes.pending_lots, sizes.lots));
        assert_eq!(report.import.purchases, sizes.import_purchases);
        assert!(report.http.server_peak_kib > 0);
        assert!(table(&report).contains("ratio"));
        // The PostgreSQL half: counts as on SQLite, when a server is there (mandatory in CI).
        match &report.postgres {
            Ok(pg) => {
                assert_eq!(pg.purchases.engine.committed, sizes.purchases.purchases);
                assert_eq!(pg.purchases.anchor.rows, pg.purchases.engine.rows);
                assert_eq!(pg.purchases.anchor.rows, report.engine.rows, "the same rows on both stores");
                assert_eq!(pg.purchases.http.purchase_rows, report.http.purchase_rows);
                let red = &pg.redemptions;
                assert_eq!(red.accepted + red.refused, sizes.redemptions);
                assert_eq!((red.overdrafts, red.ledger_problems), (0, 0));
                assert!(table(&report).contains("PostgreSQL at"));
            }
            Err(why) => {
                assert!(!kopilka_store::testing::postgres_mandatory(), "KOPILKA_TEST_PG is set: {why}");
                assert!(table(&report).contains("SKIPPED"));
            }
        }
    }
}
