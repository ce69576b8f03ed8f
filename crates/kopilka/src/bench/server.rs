//! Where the suite's processes and stores come from: the HTTP server (a child `kopilka serve`, or
//! `app::start` in-process), other `kopilka` commands run as children with their peak memory, and
//! the one place a phase's store is opened, so another store slots in by `--store`/`--postgres`.
//!
//! On PostgreSQL each phase directory maps to a scratch database of its own on the server, created
//! when the phase first asks for it and dropped by `Target::drop_scratch` (or, failing that, when
//! the target is dropped), so a run leaves nothing behind on the server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kopilka_server::app::{self, Config};
use kopilka_server::clock::SystemClock;
use kopilka_store::{Database, Store};
use sqlx::any::AnyPoolOptions;

use super::memory::{self, Watch};

/// How the suite runs what it measures.
#[derive(Debug)]
pub struct Target {
    /// `sqlite`, or the PostgreSQL server's admin URL (`postgres://…/postgres`).
    pub database: String,
    /// `None`: everything in the bench process.
    pub exe: Option<PathBuf>,
    /// The scratch database of each phase directory, on PostgreSQL.
    scratch: Mutex<HashMap<PathBuf, String>>,
}

impl Target {
    pub fn new(database: &str, in_process: bool) -> anyhow::Result<Target> {
        if database != "sqlite" {
            bail!("--store {database}: items 4-6 run on SQLite only (PostgreSQL runs items 1-3: see --postgres)");
        }
        Target::with(database, in_process)
    }

    /// The PostgreSQL server at `admin_url` (a database that exists, such as `postgres`): each
    /// phase gets a scratch database of its own there.
    pub fn postgres(admin_url: &str, in_process: bool) -> anyhow::Result<Target> {
        ensure!(
            admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://"),
            "--postgres {admin_url}: not a postgres:// URL"
        );
        Target::with(admin_url, in_process)
    }

    fn with(database: &str, in_process: bool) -> anyhow::Result<Target> {
        let exe = if in_process { None } else { Some(std::env::current_exe().context("the kopilka binary")?) };
        Ok(Target { database: database.to_string(), exe, scratch: Mutex::new(HashMap::new()) })
    }

    pub fn is_postgres(&self) -> bool {
        self.database != "sqlite"
    }

    /// The store of a phase's data directory: SQLite in it, or a fresh scratch database on the
    /// PostgreSQL server, created at the first call for this directory.
    pub async fn database(&self, dir: &Path) -> anyhow::Result<Database> {
        if !self.is_postgres() {
            return Ok(Database::Sqlite(dir.to_path_buf()));
        }
        let known = self.scratch.lock().expect("not poisoned").get(dir).cloned();
        let name = match known {
            Some(name) => name,
            None => {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = format!("kopilka_bench_{}_{n}", std::process::id());
                admin_statement(&self.database, &format!("CREATE DATABASE {name}"))
                    .await
                    .with_context(|| format!("cannot create the scratch database {name} on {}", self.database))?;
                self.scratch.lock().expect("not poisoned").insert(dir.to_path_buf(), name.clone());
                name
            }
        };
        Ok(Database::Postgres(database_url(&self.database, &name)))
    }

    /// Opens the store of a phase's data directory: the one place the suite opens a store.
    pub async fn open_store(&self, dir: &Path) -> anyhow::Result<Store> {
        Ok(Store::connect(&self.database(dir).await?).await?)
    }

    /// Drops every scratch database this target created.
    pub async fn drop_scratch(&self) -> anyhow::Result<()> {
        let names: Vec<String> = self.scratch.lock().expect("not poisoned").drain().map(|(_, name)| name).collect();
        for name in names {
            admin_statement(&self.database, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
        }
        Ok(())
    }

    pub fn where_it_runs(&self) -> String {
        let how = if self.exe.is_some() { "child processes" } else { "in the bench process" };
        let store =
            if self.is_postgres() { format!("PostgreSQL at {}", host_of(&self.database)) } else { "SQLite".into() };
        format!("{store}, {how}")
    }
}

impl Drop for Target {
    /// A run that failed halfway still drops its scratch databases: a thread with a runtime of its
    /// own, since this may run inside the bench's runtime.
    fn drop(&mut self) {
        let names: Vec<String> =
            self.scratch.lock().map(|mut s| s.drain().map(|(_, n)| n).collect()).unwrap_or_default();
        if names.is_empty() {
            return;
        }
        let admin = self.database.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                for name in names {
                    if let Err(error) =
                        admin_statement(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
                    {
                        eprintln!("could not drop the scratch database {name}: {error}");
                    }
                }
            });
            anyhow::Ok(())
        })
        .join();
    }
}

/// `postgres://user@host:port/db` → `host:port`, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.rsplit('@').next().unwrap_or(url);
    let rest = rest.trim_start_matches("postgresql://").trim_start_matches("postgres://");
    rest.split('/').next().unwrap_or(rest)
}

/// The admin URL with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (server, _) = admin_url.rsplit_once('/').expect("a postgres URL has a path");
    format!("{server}/{name}")
}

/// Runs one statement on the admin database (CREATE/DROP DATABASE cannot run in a transaction).
async fn admin_statement(admin_url: &str, statement: &str) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let pool =
        AnyPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(5)).connect(admin_url).await?;
    let result = sqlx::query(statement).execute(&pool).await;
    pool.close().await;
    result?;
    Ok(())
}

/// Whether a PostgreSQL server answers at `admin_url`: `Err` says why not, for the skip message.
pub async fn postgres_reachable(admin_url: &str) -> Result<(), String> {
    admin_statement(admin_url, "SELECT 1").await.map_err(|e| format!("{e:#}"))
}

/// A running HTTP server with its first tenant's admin key.
pub struct Server {
    pub base: String,
    pub admin_key: String,
    inner: Inner,
}

enum Inner {
    Child { child: Child, watch: Watch },
    InProcess(Box<app::Running>),
}

impl Server {
    /// Starts a server on a fresh data directory, on a free port of 127.0.0.1.
    pub async fn start(target: &Target, dir: &Path) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let database = target.database(dir).await?;
        let Some(exe) = &target.exe else {
            memory::reset_own_peak();
            let config = Config { database, listen: "127.0.0.1:0".parse().expect("an address"), jobs_interval: None };
            let running = app::start(&config, Arc::new(SystemClock)).await?;
            let tenant = app::bootstrap(&running.state).await?.context("a fresh store has no tenant")?;
            return Ok(Server {
                base: format!("http://{}", running.addr),
                admin_key: tenant.admin_key,
                inner: Inner::InProcess(Box::new(running)),
            });
        };
        let mut child = Command::new(exe)
            .arg("--data-dir")
            .arg(dir)
            .args(match &database {
                Database::Postgres(url) => vec!["--database".to_string(), url.clone()],
                Database::Sqlite(_) => Vec::new(),
            })
            .args(["serve", "--listen", "127.0.0.1:0", "--jobs-interval-secs", "86400"])
            .env("RUST_LOG", "warn")
            // The store is the one named here, never one inherited from the bench's environment.
            .env_remove("KOPILKA_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let watch = Watch::start(&child);
        let stdout = child.stdout.take().expect("piped");
        // `serve` prints the new tenant's key on an indented line, then the address it listens on.
        let (base, admin_key) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut key = None;
            for line in lines.by_ref() {
                let line = line?;
                if line.starts_with("    ") && !line.trim().is_empty() {
                    key = Some(line.trim().to_string());
                }
                if let Some(rest) = line.strip_prefix("Kopilka listens on ") {
                    let base = rest.split_whitespace().next().unwrap_or_default().to_string();
                    // Keep draining, so the child never blocks on a full pipe.
                    std::thread::spawn(move || lines.for_each(drop));
                    return Ok((base, key.context("serve printed no admin key")?));
                }
            }
            bail!("kopilka serve exited before listening")
        })
        .await??;
        Ok(Server { base, admin_key, inner: Inner::Child { child, watch } })
    }

    /// Stops the server as Ctrl-C would and returns its peak memory in KiB.
    pub async fn stop(self) -> anyhow::Result<u64> {
        match self.inner {
            Inner::InProcess(running) => {
                running.stop().await;
                Ok(memory::peak_kib(None).unwrap_or(0))
            }
            Inner::Child { mut child, watch } => {
                let peak = watch.peak_now(child.id());
                let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
                ensure!(status.success(), "cannot signal the server");
                let status = tokio::task::spawn_blocking(move || child.wait()).await??;
                ensure!(status.success(), "kopilka serve ended with {status}");
                Ok(peak.max(watch.peak()))
            }
        }
    }
}

/// What a child `kopilka` command did.
pub struct Ran {
    pub elapsed: Duration,
    pub peak_kib: u64,
}

/// Runs `kopilka --data-dir DIR ARGS…` as a child and times it, start to exit.
pub async fn run_cli(exe: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Ran> {
    let started = Instant::now();
    let child = Command::new(exe)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        // The store is the one named here, never one inherited from the bench's environment.
        .env_remove("KOPILKA_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let watch = Watch::start(&child);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "kopilka {} ended with {}: {stdout}", args.join(" "), output.status);
    Ok(Ran { elapsed, peak_kib: watch.peak() })
}
