//! The `kopilka` command. `serve` reads as the server's story: config, store, writer, jobs, router,
//! serve until a signal, stop in order.

mod bench;
mod bench_coupons;
mod data;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use kopilka_core::{Program, TenantId};
use kopilka_server::app::{self, Config};
use kopilka_server::auth::generate_key;
use kopilka_server::clock::SystemClock;
use kopilka_server::engine::{Command as WriterCommand, Request};
use kopilka_server::jobs::{self, Job};
use kopilka_store::{Database, Role};

/// The writer and its SQLite worker allocate a great deal per batch (rows, binds, JSON); glibc's
/// allocator showed up at the top of the profile, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kopilka", version, about = "A customer loyalty platform: points, members, purchases and returns.")]
struct Cli {
    /// Where the embedded SQLite store lives.
    #[arg(long, global = true, env = "KOPILKA_DATA_DIR", default_value = "kopilka-data")]
    data_dir: PathBuf,
    /// The store of many nodes, `postgres://USER@HOST:PORT/DB`; without it, SQLite in --data-dir.
    #[arg(long, global = true, env = "KOPILKA_DATABASE_URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP API and the scheduled jobs. On first start, creates a tenant and prints its admin key.
    Serve {
        #[arg(long, env = "KOPILKA_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Seconds between runs of the activation and expiry jobs.
        #[arg(long, default_value_t = 60)]
        jobs_interval_secs: u64,
    },
    /// Fills a new tenant with a program, members and a year of purchases and returns.
    Demo(data::DemoArgs),
    /// Imports members or transactions from CSV.
    Import(data::ImportArgs),
    /// Exports members or transactions as CSV.
    Export(data::ExportArgs),
    /// Moves the whole store (--database / --data-dir) into another, empty one, and verifies the
    /// move: row counts, the ledger, every member's accounts.
    MigrateStore {
        /// The target, e.g. postgres://postgres@127.0.0.1:5432/kopilka (or sqlite://DIR).
        #[arg(long)]
        to: String,
    },
    /// Works with program files.
    Program {
        #[command(subcommand)]
        command: ProgramCommand,
    },
    /// Runs a job now.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Manages API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Checks the ledger: every movement balanced, member accounts equal to their lots.
    Verify,
    /// Measures throughput against an anchor measured in the same run (see BENCHMARKS.md).
    Bench(Box<bench::BenchArgs>),
}

#[derive(Subcommand)]
enum ProgramCommand {
    /// Checks a program file (JSON or TOML) and explains every problem with its path.
    Validate { file: PathBuf },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Runs a job (`expiry`, `activate`, `tiers`, `referrals`, `events`, `reminders`) for every
    /// tenant at the current time, or as of a chosen time (to catch up a date, or to see what a
    /// date will do to a copy of the data).
    Run {
        job: JobName,
        /// Run as if it were this moment (RFC 3339, e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        as_of: Option<jiff::Timestamp>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum JobName {
    Expiry,
    Activate,
    Tiers,
    /// Birthday and first-purchase anniversary bonuses.
    Events,
    /// Reminders before points expire.
    Reminders,
    /// Referrer rewards once a referred member's first purchase left its return window.
    Referrals,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates an API key and prints it once.
    Create {
        #[arg(long)]
        role: String,
        /// The tenant the key acts for (not for operator keys).
        #[arg(long)]
        tenant: Option<i64>,
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let database = Database::choose(&cli.data_dir, cli.database.as_deref()).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve { listen, jobs_interval_secs } => serve(database, listen, jobs_interval_secs).await,
        Command::Demo(args) => data::demo(&database, args).await,
        Command::Import(args) => data::import(&database, args).await,
        Command::Export(args) => data::export(&database, args).await,
        Command::MigrateStore { to } => {
            let to = Database::choose(&cli.data_dir, Some(&to)).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
            data::migrate_store(&database, &to).await
        }
        Command::Program { command: ProgramCommand::Validate { file } } => validate_program(&file),
        Command::Jobs { command: JobsCommand::Run { job, as_of } } => run_job(&database, job, as_of).await,
        Command::Keys { command: KeysCommand::Create { role, tenant, name } } => {
            create_key(&database, &role, tenant, &name).await
        }
        Command::Verify => verify(&database).await,
        Command::Bench(args) => bench::run(*args).await,
    }
}

async fn serve(database: Database, listen: SocketAddr, jobs_interval_secs: u64) -> anyhow::Result<()> {
    let config = Config { database, listen, jobs_interval: Some(Duration::from_secs(jobs_interval_secs.max(1))) };
    let running = app::start(&config, Arc::new(SystemClock)).await?;
    if let Some(tenant) = app::bootstrap(&running.state).await? {
        println!("Created tenant {} ({:?}) with the default program.", tenant.id, tenant.name);
        println!("Its admin API key, shown this once (only its hash is kept):\n\n    {}\n", tenant.admin_key);
    }
    println!("Kopilka listens on http://{} (store: {})", running.addr, config.database.describe());
    tokio::signal::ctrl_c().await?;
    println!("Stopping: finishing requests in flight.");
    running.stop().await;
    Ok(())
}

fn validate_program(file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_toml = file.extension().is_some_and(|e| e == "toml");
    let parsed = if is_toml {
        toml::from_str::<Program>(&text)
            .map_err(|error| vec![kopilka_core::ValidationIssue { path: "toml".into(), message: error.to_string() }])
            .and_then(|program| program.validate().map(|_| program))
    } else {
        Program::from_json(&text)
    };
    match parsed {
        Ok(program) => {
            println!("{}: valid program {:?}", file.display(), program.name);
            Ok(())
        }
        Err(issues) => {
            for issue in &issues {
                eprintln!("{}: {issue}", file.display());
            }
            bail!("{} problem(s) in {}", issues.len(), file.display())
        }
    }
}

async fn run_job(database: &Database, job: JobName, as_of: Option<jiff::Timestamp>) -> anyhow::Result<()> {
    let clock: Arc<dyn kopilka_server::clock::Clock> = match as_of {
        Some(at) => Arc::new(kopilka_server::clock::ManualClock::new(at)),
        None => Arc::new(SystemClock),
    };
    let (state, writer_task) = app::open_bulk(database, clock).await?;
    let job = match job {
        JobName::Expiry => Job::Expiry,
        JobName::Activate => Job::Activate,
        JobName::Tiers => Job::Tiers,
        JobName::Events => Job::Events,
        JobName::Reminders => Job::Reminders,
        JobName::Referrals => Job::Referrals,
    };
    let chunk = jobs::BULK_CHUNK_MEMBERS_MAX;
    let report = jobs::run_once_in_chunks(&state.store, &state.writer, &*state.clock, job, None, chunk).await?;
    println!("{}: {} member(s), {} movement(s)", report.job, report.members, report.movements);
    drop(state);
    writer_task.await?;
    Ok(())
}

async fn create_key(database: &Database, role: &str, tenant: Option<i64>, name: &str) -> anyhow::Result<()> {
    let Some(role) = Role::parse(role) else {
        bail!("--role {role:?} is not a role: use operator, admin, pos, analyst or partner");
    };
    let (state, writer_task) = app::open(database, Arc::new(SystemClock)).await?;
    let key = generate_key();
    let request = match (role, tenant) {
        (Role::Operator, None) => Request {
            tenant: TenantId(0),
            idempotency: None,
            command: WriterCommand::CreateApiKey { key: key.clone(), role, name: name.into() },
        },
        (Role::Operator, Some(_)) => bail!("--tenant: operator keys act for the whole deployment; leave it out"),
        (_, None) => bail!("--tenant: a {} key acts for one tenant; name it with --tenant ID", role.as_str()),
        (_, Some(id)) => {
            if !state.store.tenant_exists(TenantId(id)).await? {
                bail!("--tenant {id}: no such tenant");
            }
            Request {
                tenant: TenantId(id),
                idempotency: None,
                command: WriterCommand::CreateApiKey { key: key.clone(), role, name: name.into() },
            }
        }
    };
    state.writer.submit(request).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{key}");
    eprintln!("A {} key; shown this once, only its hash is kept.", role.as_str());
    drop(state);
    writer_task.await?;
    Ok(())
}

async fn verify(database: &Database) -> anyhow::Result<()> {
    let store = kopilka_store::Store::connect(database).await?;
    let report = store.verify().await?;
    println!("{} movements, {} postings checked", report.movements, report.postings);
    if report.problems.is_empty() {
        println!("the ledger balances");
        return Ok(());
    }
    for problem in &report.problems {
        eprintln!("{problem}");
    }
    bail!("{} problem(s) found", report.problems.len())
}
