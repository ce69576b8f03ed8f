//! Where the suite's processes and stores come from: the HTTP server (a child `kopilka serve`, or
//! `app::start` in-process), other `kopilka` commands run as children with their peak memory, and
//! the one place a phase's store is opened, so another store slots in by `--database`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kopilka_server::app::{self, Config};
use kopilka_server::clock::SystemClock;
use kopilka_store::Store;

use super::memory::{self, Watch};

/// How the suite runs what it measures.
#[derive(Debug, Clone)]
pub struct Target {
    /// `sqlite` for now; see `--database`.
    pub database: String,
    /// `None`: everything in the bench process.
    pub exe: Option<PathBuf>,
}

impl Target {
    pub fn new(database: &str, in_process: bool) -> anyhow::Result<Target> {
        if database != "sqlite" {
            bail!("--database {database}: this build's store is SQLite only (use `sqlite`)");
        }
        let exe = if in_process { None } else { Some(std::env::current_exe().context("the kopilka binary")?) };
        Ok(Target { database: database.to_string(), exe })
    }

    /// Opens the store of a phase's data directory: the one place the suite opens a store.
    pub async fn open_store(&self, dir: &Path) -> anyhow::Result<Store> {
        Ok(Store::open(dir).await?)
    }

    pub fn where_it_runs(&self) -> String {
        let how = if self.exe.is_some() { "child processes" } else { "in the bench process" };
        format!("{}, {how}", self.database)
    }
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
        let Some(exe) = &target.exe else {
            memory::reset_own_peak();
            let config = Config {
                database: dir.into(),
                listen: "127.0.0.1:0".parse().expect("an address"),
                jobs_interval: None,
            };
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
            .args(["serve", "--listen", "127.0.0.1:0", "--jobs-interval-secs", "86400"])
            .env("RUST_LOG", "warn")
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
