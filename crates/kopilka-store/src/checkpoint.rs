//! SQLite's WAL checkpoints, taken off the writer's path.
//!
//! With `wal_autocheckpoint` the commit that crosses the threshold copies the whole WAL into the
//! database file and fsyncs it before it returns, so one batch in every few hundred waits tens of
//! milliseconds longer than the rest: the p99 of a request is that stall. A writer that starts a
//! [`Checkpointer`] instead raises its own threshold to a backstop (`WRITER_BACKSTOP_PAGES`, only
//! reached if the checkpointer falls far behind), and a task on a connection of its own runs
//! `PRAGMA wal_checkpoint(PASSIVE)` every `INTERVAL`: a passive checkpoint never waits for the
//! writer, which keeps appending to the WAL while pages are copied, and SQLite starts the WAL
//! over at the first commit after a checkpoint that caught up. PostgreSQL needs none of this.

use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::{Connection, Executor};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Backend, Result, Store};

/// How often the background checkpoint runs: often enough that each one copies a few megabytes.
const INTERVAL: Duration = Duration::from_millis(200);
/// The writer's own `wal_autocheckpoint` while a checkpointer runs (400 MB of WAL).
const WRITER_BACKSTOP_PAGES: u32 = 100_000;

/// A running background checkpointer; dropping it (or [`Checkpointer::stop`]) ends the task after
/// one last checkpoint.
pub struct Checkpointer {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// On SQLite, moves `writer`'s checkpoints to a task of their own; on PostgreSQL, nothing.
    pub async fn start(store: &Store, writer: &mut AnyConnection) -> Result<Option<Checkpointer>> {
        if store.backend != Backend::Sqlite {
            return Ok(None);
        }
        let mut connection = store.writer_connection().await?;
        writer.execute(format!("PRAGMA wal_autocheckpoint = {WRITER_BACKSTOP_PAGES}").as_str()).await?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = checkpoint(&mut connection).await {
                    tracing::warn!(%error, "background WAL checkpoint failed; the writer's backstop still bounds the WAL");
                }
            }
            let _ = checkpoint(&mut connection).await;
            let _ = connection.close().await;
        });
        Ok(Some(Checkpointer { stop: Some(stop), task: Some(task) }))
    }

    /// Stops the task and waits for its last checkpoint.
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which checkpoints once more and closes its connection.
        self.stop.take();
    }
}

async fn checkpoint(connection: &mut AnyConnection) -> Result<()> {
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").await?;
    Ok(())
}
