//! The server assembled: store, clock, writer, jobs, router, and one shutdown signal for all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kopilka_core::TenantId;
use kopilka_store::sql::JobLock;
use kopilka_store::{Database, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{generate_key, KeyCache};
use crate::clock::Clock;
use crate::dto::TenantCreated;
use crate::engine::{Command, Idempotency, Reply, Request};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::writer::{Writer, BATCH_SIZE_MAX, BULK_BATCH_SIZE_MAX};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub writer: Writer,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<KeyCache>,
}

impl AppState {
    /// Sends a command through the writer on behalf of `tenant`.
    pub async fn submit(
        &self,
        tenant: TenantId,
        idempotency: Idempotency,
        command: Command,
    ) -> Result<Reply, ApiError> {
        self.writer.submit(Request { tenant, idempotency: Some(idempotency), command }).await
    }
}

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: Database,
    pub listen: SocketAddr,
    /// How often the scheduled jobs run (the first round at start, to catch up); None runs none,
    /// for tests that run jobs on demand on a clock they move.
    pub jobs_interval: Option<Duration>,
}

/// A running server: its address, and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writer_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting requests, lets the ones in flight finish, stops the jobs, then the writer.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.state);
        let _ = self.writer_task.await;
    }
}

/// Opens the store (a SQLite data directory, or any `Database`) and starts the writer, for
/// servers and for the CLI's in-process commands.
pub async fn open(
    database: impl Into<Database>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>)> {
    open_with(database, clock, BATCH_SIZE_MAX).await
}

/// [`open`] for work no client waits on (imports, jobs run from the CLI): the writer's
/// transactions are larger, so each request writes fewer bytes.
pub async fn open_bulk(
    database: impl Into<Database>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>)> {
    open_with(database, clock, BULK_BATCH_SIZE_MAX).await
}

async fn open_with(
    database: impl Into<Database>,
    clock: Arc<dyn Clock>,
    batch_max: usize,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>)> {
    let store = Store::connect(&database.into()).await?;
    let metrics = Arc::new(Metrics::default());
    let (writer, writer_task) = Writer::start_with(&store, clock.clone(), metrics.clone(), batch_max).await?;
    let state = AppState { store, writer, clock, metrics, keys: Arc::new(KeyCache::default()) };
    Ok((state, writer_task))
}

/// Creates the first tenant when the store has none, and returns it with its admin key, which is
/// shown this once.
pub async fn bootstrap(state: &AppState) -> anyhow::Result<Option<TenantCreated>> {
    // Nodes of a new cluster starting together take turns, so only the first creates a tenant.
    let lock = loop {
        match JobLock::try_take(&state.store, "bootstrap").await? {
            Some(lock) => break lock,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let created = if state.store.tenant_count().await? > 0 {
        None
    } else {
        let command = Command::CreateTenant { name: "default".into(), admin_key: generate_key() };
        let reply = state.writer.submit(Request { tenant: TenantId(0), idempotency: None, command }).await;
        match reply {
            Ok(reply) => Some(serde_json::from_slice(&reply.body)?),
            Err(error) => {
                lock.release().await;
                return Err(error.into());
            }
        }
    };
    lock.release().await;
    Ok(created)
}

/// Starts the API and the jobs on `config.listen`.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    let (state, writer_task) = open(&config.database, clock.clone()).await?;
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (shutdown, signal) = watch::channel(false);
    let notify = crate::notify::start(&config.database, clock.clone(), signal.clone()).await?;
    let mut tasks = vec![notify];
    if let Some(interval) = config.jobs_interval {
        tasks.push(tokio::spawn(crate::jobs::run_scheduled(
            state.store.clone(),
            state.writer.clone(),
            clock,
            state.metrics.clone(),
            interval,
            signal.clone(),
        )));
    }
    let router = crate::api::router(state.clone());
    let mut http_signal = signal;
    let http = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = http_signal.wait_for(|stop| *stop).await;
        });
        if let Err(error) = serve.await {
            tracing::error!(%error, "HTTP server failed");
        }
    });
    tasks.push(http);
    Ok(Running { addr, state, shutdown, tasks, writer_task })
}
