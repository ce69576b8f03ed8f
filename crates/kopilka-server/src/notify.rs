//! The notification dispatcher as the server runs it: on its own connection pool, on the server's
//! clock, stopped by the server's shutdown signal. The dispatcher itself is `kopilka-notify`.

use std::sync::Arc;

use kopilka_notify::{Dispatcher, DispatcherConfig};
use tokio::sync::watch;

use crate::clock::Clock;

/// Starts the dispatcher on the store at `database` (already opened and migrated by the server).
pub async fn start(
    database: &kopilka_store::Database,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let dispatcher = Dispatcher::open(database, clock, DispatcherConfig::default()).await?;
    Ok(tokio::spawn(dispatcher.run(shutdown)))
}
