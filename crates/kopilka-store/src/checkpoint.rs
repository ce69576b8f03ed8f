//! SQLite's WAL checkpoints, taken off the writer's path.
//!
//! With `wal_autocheckpoint` the commit that crosses the threshold copies the whole WAL into the
//! database file and fsyncs it before it returns, so one batch in every few hundred waits tens of
//! milliseconds longer than the rest: the p99 of a request is that stall. A writer that starts a
//! [`Checkpointer`] instead raises its own threshold to a backstop (`WRITER_BACKSTOP_PAGES`, only
//! reached if the checkpointer falls far behind), and a task on a connection of its own runs
//! `PRAGMA wal_checkpoint(PASSIVE)` every `INTERVAL`: a passive checkpoint never waits for the
//! writer, which keeps appending to the WAL while pages are copied.
//!
//! Copying is not enough: SQLite starts the WAL over only when a write transaction begins after a
//! checkpoint that copied *every* frame, and under a steady load the writer always appends a few
//! batches while the background checkpoint copies. Measured at 4,000–6,000 purchases/s the WAL
//! grew by ~40,000 frames a second with the checkpoint ~5,000 frames behind, so it restarted only
//! at the backstop, where the writer's own commit had to copy those ~20 MB and fsync them (over six
//! and seven runs, the median p99 at half the peak was 51 ms without what follows, 41 ms with it).
//! So once the WAL is long
//! (`RESTART_AFTER_FRAMES`) the task copies in passes back to back until it is only a little behind
//! (`CAUGHT_UP_FRAMES`) and then asks the writer ([`Checkpointer::between_transactions`]) to run
//! one passive checkpoint itself between two transactions: that copies only the last few batches,
//! and the writer's next transaction restarts the WAL. PostgreSQL needs none of this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
/// A WAL this long (256 MB of 4 KB pages) is worth starting over.
const RESTART_AFTER_FRAMES: i64 = 65_536;
/// Close enough behind the writer that its own checkpoint is a few milliseconds (a few batches).
const CAUGHT_UP_FRAMES: i64 = 256;
/// Passes back to back before the task gives up catching up until its next tick.
const CATCH_UP_PASSES_MAX: usize = 16;

/// A running background checkpointer; dropping it (or [`Checkpointer::stop`]) ends the task after
/// one last checkpoint.
pub struct Checkpointer {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Set by the task when it has caught up with a long WAL; taken by the writer.
    restart_due: Arc<AtomicBool>,
}

impl Checkpointer {
    /// On SQLite, moves `writer`'s checkpoints to a task of their own; on PostgreSQL, nothing.
    pub async fn start(store: &Store, writer: &mut AnyConnection) -> Result<Option<Checkpointer>> {
        Checkpointer::start_with(store, writer, INTERVAL, RESTART_AFTER_FRAMES).await
    }

    /// As `start`, checkpointing every `interval` and starting the WAL over once it holds
    /// `restart_after` frames.
    async fn start_with(
        store: &Store,
        writer: &mut AnyConnection,
        interval: Duration,
        restart_after: i64,
    ) -> Result<Option<Checkpointer>> {
        if store.backend != Backend::Sqlite {
            return Ok(None);
        }
        let mut connection = store.writer_connection().await?;
        writer.execute(format!("PRAGMA wal_autocheckpoint = {WRITER_BACKSTOP_PAGES}").as_str()).await?;
        let (stop, mut stopped) = oneshot::channel();
        let restart_due = Arc::new(AtomicBool::new(false));
        let due = restart_due.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                match catch_up(&mut connection, restart_after).await {
                    Ok(true) => due.store(true, Ordering::Release),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "background WAL checkpoint failed; the writer's backstop still bounds the WAL")
                    }
                }
            }
            let _ = checkpoint(&mut connection).await;
            let _ = connection.close().await;
        });
        Ok(Some(Checkpointer { stop: Some(stop), task: Some(task), restart_due }))
    }

    /// Called by the writer between two transactions, on its own connection: if the task has
    /// caught up with a long WAL, copies the frames written since, so that the writer's next
    /// transaction starts the WAL over. A failure is logged and changes nothing (the next
    /// catch-up asks again).
    pub async fn between_transactions(&self, writer: &mut AnyConnection) {
        if self.restart_due.swap(false, Ordering::AcqRel) {
            if let Err(error) = checkpoint(writer).await {
                tracing::warn!(%error, "the writer's WAL checkpoint failed; the WAL restarts later");
            }
        }
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

/// One passive checkpoint; then, while the WAL is long and the copy far behind the writer, more
/// passes back to back (each copies what the writer appended during the last). True when the WAL
/// is long and the copy is close enough behind for the writer to finish it.
async fn catch_up(connection: &mut AnyConnection, restart_after: i64) -> Result<bool> {
    let mut last_log = None;
    for _ in 0..CATCH_UP_PASSES_MAX {
        let Frames { log, copied } = checkpoint(connection).await?;
        if log < restart_after {
            return Ok(false);
        }
        // A pass copies every frame there was when it began (unless a reader holds some back),
        // so how far behind the writer it ends is what the writer appended while it ran: the
        // frames the next pass finds. Only a pass that had little to copy was quick enough.
        let appended_during_last = last_log.map(|last| log - last);
        if log - copied <= CAUGHT_UP_FRAMES && appended_during_last.is_some_and(|n| n <= CAUGHT_UP_FRAMES) {
            return Ok(true);
        }
        last_log = Some(log);
    }
    Ok(false)
}

/// What `PRAGMA wal_checkpoint` reports: the frames in the WAL and how many of them are now in the
/// database file.
struct Frames {
    log: i64,
    copied: i64,
}

async fn checkpoint(connection: &mut AnyConnection) -> Result<Frames> {
    let (_busy, log, copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *connection).await?;
    Ok(Frames { log, copied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_that_never_pauses_still_starts_its_wal_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut writer = store.writer_connection().await.unwrap();
        let checkpointer =
            Checkpointer::start_with(&store, &mut writer, Duration::from_millis(10), 200).await.unwrap().unwrap();
        writer.execute("CREATE TABLE filler (n INTEGER PRIMARY KEY, b BLOB)").await.unwrap();
        // Transactions back to back, three frames each, ~6,000 frames in all: the background
        // copies never catch up with the last frame by themselves, so the WAL would grow to the
        // writer's backstop. Asked between transactions, the writer starts it over instead.
        for n in 0..2_000 {
            writer.execute(format!("INSERT INTO filler VALUES ({n}, randomblob(8000))").as_str()).await.unwrap();
            checkpointer.between_transactions(&mut writer).await;
        }
        let wal = std::fs::metadata(dir.path().join("kopilka.db-wal")).unwrap().len();
        assert!(wal < 2_000 * 4_096, "the WAL file grew to {wal} bytes");
        checkpointer.stop().await;
    }
}
