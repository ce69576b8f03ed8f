//! The writer's answers, sent only once the batch they belong to is durable.
//!
//! On PostgreSQL a COMMIT is durable when it returns, and answers go out at once. On SQLite the
//! writer commits without waiting for the WAL's fsync (`kopilka_store::wal_sync` says why) and
//! passes each batch's answers here: a thread of their own fsyncs the WAL, then sends every answer
//! that was waiting when it began. Batches committed during one fsync share the next.
//!
//! If an fsync fails, the kernel may already have dropped the pages it could not write, and a later
//! fsync would report success for data that is not on disk; so a failure is final, as in
//! PostgreSQL: every waiting answer and every later one becomes `503 unavailable` (the requests are
//! retried with their idempotency keys, and after a restart each either replays its stored answer
//! or runs again), and the writer stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kopilka_store::wal_sync::WalFile;
use tokio::sync::oneshot;

use crate::engine::Reply;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Where one request's answer goes, and the answer.
pub(crate) type Answered = (oneshot::Sender<Result<Reply, ApiError>>, Result<Reply, ApiError>);

/// What makes the WAL durable: [`WalFile::sync`], or a stand-in in tests.
pub(crate) type SyncFn = Box<dyn FnMut() -> std::io::Result<()> + Send>;

pub(crate) enum Answers {
    /// Commits are durable when they return.
    AtOnce,
    AfterSync(Syncer),
}

pub(crate) struct Syncer {
    sender: Option<mpsc::Sender<Vec<Answered>>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<AtomicBool>,
}

impl Answers {
    /// Answers after `wal`'s fsync when there is one, else at once.
    pub(crate) fn new(wal: Option<WalFile>, metrics: Arc<Metrics>) -> Answers {
        match wal {
            Some(mut wal) => Answers::after(Box::new(move || wal.sync()), metrics),
            None => Answers::AtOnce,
        }
    }

    pub(crate) fn after(sync: SyncFn, metrics: Arc<Metrics>) -> Answers {
        let (sender, receiver) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kopilka-wal-sync".into())
            .spawn({
                let failed = failed.clone();
                move || sync_and_answer(receiver, sync, &failed, &metrics)
            })
            .expect("a thread can be started");
        Answers::AfterSync(Syncer { sender: Some(sender), thread: Some(thread), failed })
    }

    /// Sends the answers of a batch once everything committed so far is durable. Answers of a
    /// batch that was rolled back could go at once, but they take the same way: nothing is gained
    /// by letting them pass.
    pub(crate) fn send(&self, answers: Vec<Answered>) {
        match self {
            Answers::AtOnce => {
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Answers::AfterSync(syncer) => {
                let sender = syncer.sender.as_ref().expect("the sender lives until `finish`");
                if let Err(mpsc::SendError(answers)) = sender.send(answers) {
                    // The thread is gone only if it panicked: nothing it did not sync is answered,
                    // and the writer stops as after a failed fsync.
                    syncer.failed.store(true, Ordering::Release);
                    for (reply, _) in answers {
                        let _ = reply.send(Err(not_durable()));
                    }
                }
            }
        }
    }

    /// True once an fsync has failed: the writer must stop.
    pub(crate) fn failed(&self) -> bool {
        match self {
            Answers::AtOnce => false,
            Answers::AfterSync(syncer) => syncer.failed.load(Ordering::Acquire),
        }
    }

    /// Waits until every answer handed over has been sent.
    pub(crate) async fn finish(mut self) {
        if let Answers::AfterSync(syncer) = &mut self {
            syncer.sender.take();
            if let Some(thread) = syncer.thread.take() {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }
}

fn not_durable() -> ApiError {
    ApiError::Unavailable("the store could not make the change durable; retry with the same idempotency key".into())
}

fn sync_and_answer(receiver: mpsc::Receiver<Vec<Answered>>, mut sync: SyncFn, failed: &AtomicBool, metrics: &Metrics) {
    while let Ok(first) = receiver.recv() {
        // Everything handed over before the fsync starts is covered by it.
        let mut batches = vec![first];
        batches.extend(receiver.try_iter());
        let started = Instant::now();
        let synced =
            if failed.load(Ordering::Acquire) { Err(std::io::Error::other("an earlier fsync failed")) } else { sync() };
        metrics.writer_wal_syncs.fetch_add(1, Ordering::Relaxed);
        metrics.writer_wal_sync_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let answers = batches.into_iter().flatten();
        match synced {
            Ok(()) => {
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                if !failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(%error, "fsync of the WAL failed: the batches waiting for it may not be on disk; the writer stops");
                }
                for (reply, _) in answers {
                    let _ = reply.send(Err(not_durable()));
                }
            }
        }
    }
}

/// A stand-in for the fsync that waits while the test holds it closed.
#[cfg(test)]
pub(crate) struct Gate {
    closed: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[cfg(test)]
impl Gate {
    pub(crate) fn new() -> Gate {
        Gate { closed: Arc::default(), calls: Arc::default() }
    }

    /// A sync that counts its call, then waits until the gate is open.
    pub(crate) fn sync(&self) -> SyncFn {
        let (closed, calls) = (self.closed.clone(), self.calls.clone());
        Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let (lock, opened) = &*closed;
            let _open = opened.wait_while(lock.lock().expect("gate"), |closed| *closed).expect("gate");
            Ok(())
        })
    }

    pub(crate) fn set_closed(&self, closed: bool) {
        *self.closed.0.lock().expect("gate") = closed;
        self.closed.1.notify_all();
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    fn answered(n: u16) -> (Answered, oneshot::Receiver<Result<Reply, ApiError>>) {
        let (sender, receiver) = oneshot::channel();
        ((sender, Ok(Reply::json(n, &n))), receiver)
    }

    #[tokio::test]
    async fn no_answer_goes_out_before_the_fsync_that_covers_it_and_one_fsync_covers_many_batches() {
        let gate = Gate::new();
        gate.set_closed(true);
        let answers = Answers::after(gate.sync(), Arc::new(Metrics::default()));
        let (first, mut first_rx) = answered(201);
        answers.send(vec![first]);
        while gate.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The first fsync is running; two more batches commit meanwhile.
        let (second, mut second_rx) = answered(202);
        let (third, third_rx) = answered(203);
        answers.send(vec![second]);
        answers.send(vec![third]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(first_rx.try_recv().is_err(), "answered before its fsync finished");
        assert!(second_rx.try_recv().is_err(), "answered before any fsync covered it");
        gate.set_closed(false);
        assert_eq!(first_rx.await.unwrap().unwrap().status, 201);
        assert_eq!(second_rx.await.unwrap().unwrap().status, 202);
        assert_eq!(third_rx.await.unwrap().unwrap().status, 203);
        assert_eq!(gate.calls(), 2, "the batches committed during one fsync share the next");
        answers.finish().await;
    }

    #[tokio::test]
    async fn a_failed_fsync_answers_unavailable_from_then_on() {
        let results = Arc::new(Mutex::new(vec![Ok(()), Err(std::io::Error::other("EIO")), Ok(())]));
        let sync: SyncFn = Box::new({
            let results = results.clone();
            move || results.lock().unwrap().remove(0)
        });
        let answers = Answers::after(sync, Arc::new(Metrics::default()));
        let mut statuses = Vec::new();
        for n in 0..3 {
            let (answer, receiver) = answered(200 + n);
            answers.send(vec![answer]);
            statuses.push(match receiver.await.unwrap() {
                Ok(reply) => reply.status,
                Err(error) => {
                    assert!(matches!(error, ApiError::Unavailable(_)), "{error:?}");
                    503
                }
            });
        }
        assert_eq!(statuses, [200, 503, 503], "after a failed fsync no later one is trusted");
        assert!(answers.failed());
        assert_eq!(results.lock().unwrap().len(), 1, "the sync after the failure was never called");
        answers.finish().await;
    }
}
