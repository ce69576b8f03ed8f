//! The writer: every change goes through one task that batches concurrent requests into one
//! transaction (group commit). Each request in a batch is decided in order against the state the
//! ones before it left; the batch is written with a few multi-row statements and one commit, and
//! only once that commit is durable is each request answered (`durable`: on SQLite the fsync runs
//! beside the writer, which goes on with the next batch meanwhile).
//!
//! A request that is refused fails alone: it changed nothing in the batch state. If the commit
//! itself fails, the batch is retried one request at a time, so one bad request cannot take its
//! neighbours down with it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use jiff::Timestamp;
use kopilka_core::ledger::PartialLedger;
use kopilka_core::{IdAllocator, Program, ProgramId, TenantId};
use kopilka_store::batch::{self, BatchKeys, Loaded, Writes};
use kopilka_store::checkpoint::Checkpointer;
use kopilka_store::store::{admin, hash_api_key};
use kopilka_store::wal_sync::WalFile;
use kopilka_store::{Backend, Role, Store, StoreError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::dto::{ApiKeyCreated, ProgramView, TenantCreated};
use crate::durable::Answers;
use crate::engine::{self, BatchState, Command, Programs, Reply, Request};
use crate::error::ApiError;
use crate::metrics::{Metrics, WriterStage};

/// Requests per transaction. Large enough to amortize the fsync, small enough that the first
/// request of a batch does not wait long for the last.
pub const BATCH_SIZE_MAX: usize = 1_024;
/// Requests per transaction for a writer no client waits on (an import): every index page a
/// transaction touches is written whole to the WAL once per transaction, and the keys of a batch
/// (receipt numbers, members) fall all over the indexes, so the larger the batch, the fewer bytes
/// per request (1 M imported purchases: 122 s at 8,192, 85 s at 32,768). A server writing to the
/// same SQLite file waits for the lock while such a batch is written (two to three seconds),
/// within its busy timeout.
pub const BULK_BATCH_SIZE_MAX: usize = 32_768;
/// Requests waiting for the writer; senders wait when it is full (backpressure, not loss). A bulk
/// writer's queue holds two of its batches.
pub const QUEUE_LEN_MAX: usize = 16_384;

type ReplySender = oneshot::Sender<Result<Reply, ApiError>>;

struct Envelope {
    request: Request,
    reply: ReplySender,
}

/// A handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Envelope>,
    /// How many [`Held`] guards keep the writer from deciding its next batch.
    holds: Arc<watch::Sender<usize>>,
}

/// Keeps the writer from deciding a batch while it lives (see [`Writer::hold`]).
pub struct Held(Arc<watch::Sender<usize>>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.send_modify(|holds| *holds -= 1);
    }
}

impl Writer {
    /// Starts the writer task on its own connection. It stops when every handle is dropped.
    pub async fn start(
        store: &Store,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<(Writer, tokio::task::JoinHandle<()>), StoreError> {
        Writer::start_with(store, clock, metrics, BATCH_SIZE_MAX).await
    }

    /// Starts a writer whose transactions hold up to `batch_max` requests.
    pub async fn start_with(
        store: &Store,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        batch_max: usize,
    ) -> Result<(Writer, tokio::task::JoinHandle<()>), StoreError> {
        Writer::start_answering(store, clock, metrics, batch_max, Answers::new).await
    }

    /// `start_with`, the answers sent by what `answers` makes of the WAL file to sync (tests hold
    /// the fsync back with it).
    async fn start_answering(
        store: &Store,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        batch_max: usize,
        answers: impl FnOnce(Option<WalFile>, Arc<Metrics>) -> Answers,
    ) -> Result<(Writer, tokio::task::JoinHandle<()>), StoreError> {
        // SQLite's connection is made here: the checkpointer and the WAL's fsync are set up on it.
        // PostgreSQL's is made on the writer's runtime, which alone then waits on its socket.
        let (connection, checkpointer, wal) = match store.backend {
            Backend::Sqlite => {
                let mut connection = store.writer_connection().await?;
                kopilka_store::sql::waits_in_begin_write(&mut connection).await?;
                let checkpointer = Checkpointer::start(store, &mut connection).await?;
                let wal = WalFile::open(store, &mut connection).await?;
                (Some(connection), checkpointer, wal)
            }
            Backend::Postgres => (None, None, None),
        };
        let answers = answers(wal, metrics.clone());
        let mut programs = Programs::default();
        for (tenant, id, version, program) in store.programs().await? {
            programs.put(tenant, id, version, program);
        }
        let (sender, receiver) = mpsc::channel(QUEUE_LEN_MAX.max(2 * batch_max));
        let (holds, held) = watch::channel(0);
        let (started, start) = oneshot::channel();
        let store = store.clone();
        // The writer is the one serial step of every change: on the server's runtime it waited
        // behind the HTTP tasks each time a statement's result woke it (SQLite peak 5,937 and
        // 6,649/s on the shared runtime, 7,030 and 7,016/s on its own; BENCHMARKS.md).
        let handle = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(StoreError::Database(sqlx::Error::Io(error))));
                    return;
                }
            };
            runtime.block_on(async move {
                let connection = match connection {
                    Some(connection) => connection,
                    None => match store.writer_connection().await {
                        Ok(connection) => connection,
                        Err(error) => {
                            let _ = started.send(Err(error));
                            return;
                        }
                    },
                };
                let _ = started.send(Ok(()));
                let batch_max = batch_max.max(1);
                let task = WriterTask { connection, clock, metrics, programs, checkpointer, answers, batch_max };
                task.run(receiver, held).await
            })
        });
        match start.await {
            Ok(result) => result?,
            Err(_) => {
                // The thread ended without a word: it panicked; its handle carries the panic.
                let error = handle.await.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(StoreError::Database(sqlx::Error::Io(std::io::Error::other(format!(
                    "the writer did not start: {error}"
                )))));
            }
        }
        Ok((Writer { sender, holds: Arc::new(holds) }, handle))
    }

    /// False once the writer task has stopped (a broken invariant stops it rather than let it
    /// write a wrong ledger).
    pub fn is_running(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Holds the writer before its next batch: requests enqueued until the guard is dropped are
    /// decided together (up to the batch size), as though they had arrived at once. The writer runs
    /// on a thread of its own and would otherwise start on the first while the rest are on their
    /// way; tests of what a batch does with requests that meet in it hold it.
    pub fn hold(&self) -> Held {
        self.holds.send_modify(|holds| *holds += 1);
        Held(self.holds.clone())
    }

    /// Sends a request and waits for its answer, which comes after its batch is committed.
    pub async fn submit(&self, request: Request) -> Result<Reply, ApiError> {
        self.enqueue(request).await?.await
    }

    /// Puts a request on the writer's queue and returns its answer to await later. Requests
    /// enqueued one after another are decided in that order, so a caller that awaits each
    /// `enqueue` before the next (an import) keeps its order while many wait for the writer.
    pub async fn enqueue(&self, request: Request) -> Result<Answer, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Envelope { request, reply })
            .await
            .map_err(|_| ApiError::Unavailable("the writer has stopped".into()))?;
        Ok(Answer(answer))
    }
}

/// A batch decided: each request's reply, the rows to write and the advanced id seeds.
type Decided = (Vec<Result<Reply, ApiError>>, Writes, (IdAllocator, i64));

/// Decides a batch in memory. A command that needed a whole ledger where the batch loaded a
/// partial one unwinds with [`PartialLedger`] (see `MemberLedger::assert_complete`); that comes
/// back as `Err`, any other panic goes on unwinding (a broken invariant stops the writer).
fn decide(
    programs: &Programs,
    loaded: Loaded,
    (mut ids, mut last_event_id): (IdAllocator, i64),
    requests: &[&Request],
    now: Timestamp,
) -> Result<Decided, PartialLedger> {
    let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut state = BatchState::new(loaded, programs, &mut ids, &mut last_event_id, now);
        let replies: Vec<_> = requests.iter().map(|request| state.apply(request)).collect();
        (replies, state.into_writes())
    }));
    match decided {
        Ok((replies, writes)) => Ok((replies, writes, (ids, last_event_id))),
        Err(payload) => match payload.downcast_ref::<PartialLedger>() {
            Some(partial) => Err(*partial),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// Times the stages of one batch into the writer's metrics; a stage a batch fails in is not counted.
struct Stopwatch {
    metrics: Arc<Metrics>,
    since: Instant,
}

impl Stopwatch {
    fn new(metrics: &Arc<Metrics>) -> Self {
        Stopwatch { metrics: metrics.clone(), since: Instant::now() }
    }

    fn lap(&mut self, stage: WriterStage) {
        let now = Instant::now();
        self.metrics.add_stage(stage, now - self.since);
        self.since = now;
    }
}

/// The answer to an enqueued request; it comes after the request's batch is committed.
pub struct Answer(oneshot::Receiver<Result<Reply, ApiError>>);

impl Future for Answer {
    type Output = Result<Reply, ApiError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|received| {
            received.unwrap_or_else(|_| Err(ApiError::Unavailable("the writer stopped before answering".into())))
        })
    }
}

struct WriterTask {
    connection: batch::Connection,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    programs: Programs,
    /// SQLite's WAL checkpoints, run beside the writer instead of inside its commits.
    checkpointer: Option<Checkpointer>,
    /// Sends answers once their batch is durable.
    answers: Answers,
    batch_max: usize,
}

impl WriterTask {
    async fn run(mut self, mut receiver: mpsc::Receiver<Envelope>, mut held: watch::Receiver<usize>) {
        let mut batch: Vec<Envelope> = Vec::with_capacity(self.batch_max);
        while receiver.recv_many(&mut batch, self.batch_max).await > 0 {
            if *held.borrow() > 0 {
                // Every handle gone (Err) lets go too.
                let _ = held.wait_for(|holds| *holds == 0).await;
                while batch.len() < self.batch_max {
                    let Ok(envelope) = receiver.try_recv() else { break };
                    batch.push(envelope);
                }
            }
            let mut group = Vec::new();
            for envelope in batch.drain(..) {
                if envelope.request.command.runs_alone() {
                    self.run_group(std::mem::take(&mut group)).await;
                    self.run_alone(envelope).await;
                } else {
                    group.push(envelope);
                }
            }
            self.run_group(group).await;
            if let Some(checkpointer) = &self.checkpointer {
                checkpointer.between_transactions(&mut self.connection).await;
            }
            if self.answers.failed() {
                tracing::error!("writer stopped: a commit could not be made durable");
                break;
            }
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop().await;
        }
        self.answers.finish().await;
        tracing::info!("writer stopped");
    }

    async fn run_group(&mut self, group: Vec<Envelope>) {
        if group.is_empty() {
            return;
        }
        let requests: Vec<&Request> = group.iter().map(|e| &e.request).collect();
        match self.commit_group(&requests).await {
            Ok(replies) => {
                self.answers.send(group.into_iter().map(|envelope| envelope.reply).zip(replies).collect());
            }
            Err(error) if group.len() > 1 => {
                tracing::warn!(%error, size = group.len(), "batch commit failed; retrying its requests one by one");
                for envelope in group {
                    let result = self.commit_group(&[&envelope.request]).await;
                    let reply = result.map(|mut replies| replies.remove(0)).unwrap_or_else(|e| Err(e.into()));
                    self.answers.send(vec![(envelope.reply, reply)]);
                }
            }
            Err(error) => {
                let envelope = group.into_iter().next().expect("one");
                self.answers.send(vec![(envelope.reply, Err(error.into()))]);
            }
        }
    }

    /// Decides and commits one group; on any store error nothing of it is kept.
    async fn commit_group(&mut self, requests: &[&Request]) -> Result<Vec<Result<Reply, ApiError>>, StoreError> {
        let started = Instant::now();
        let now = self.clock.now();
        let result = self.try_commit_group(requests, now).await;
        if result.is_err() {
            self.metrics.writer_commit_failures.fetch_add(1, Ordering::Relaxed);
            batch::rollback(&mut self.connection).await;
        } else {
            self.metrics.writer_batches.fetch_add(1, Ordering::Relaxed);
            self.metrics.writer_commands.fetch_add(requests.len() as u64, Ordering::Relaxed);
            self.metrics.writer_commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        result
    }

    async fn try_commit_group(
        &mut self,
        requests: &[&Request],
        now: Timestamp,
    ) -> Result<Vec<Result<Reply, ApiError>>, StoreError> {
        let mut stages = Stopwatch::new(&self.metrics);
        let opened = batch::open(&mut self.connection).await?;
        self.refresh_programs(&opened.program_versions).await?;
        let seeds = opened.seeds;
        stages.lap(WriterStage::Begin);
        let mut keys = engine::keys(requests, now);
        let loaded = batch::load(&mut self.connection, &keys).await?;
        stages.lap(WriterStage::Load);
        let decided = match decide(&self.programs, loaded, seeds.clone(), requests, now) {
            Ok(decided) => decided,
            Err(partial) => {
                // Nothing was written: the decisions live in memory until the flush below.
                tracing::warn!(member = %partial.member_id, what = partial.what,
                    "a command needed a ledger its batch loaded light; deciding the batch again with every ledger whole");
                self.metrics.writer_whole_reloads.fetch_add(1, Ordering::Relaxed);
                keys.members.append(&mut keys.light_members);
                let loaded = batch::load(&mut self.connection, &keys).await?;
                decide(&self.programs, loaded, seeds, requests, now)
                    .unwrap_or_else(|partial| panic!("member {} is partial with every ledger whole", partial.member_id))
            }
        };
        let (replies, writes, (ids, last_event_id)) = decided;
        stages.lap(WriterStage::Decide);
        if writes.is_empty() {
            stages.lap(WriterStage::Flush);
            batch::commit(&mut self.connection).await?;
        } else {
            batch::flush(&mut self.connection, &writes).await?;
            stages.lap(WriterStage::Flush);
            batch::commit_with_seeds(&mut self.connection, &ids, last_event_id).await?;
        }
        stages.lap(WriterStage::Commit);
        Ok(replies)
    }

    /// On PostgreSQL other nodes may have saved programs (or created tenants) since the last batch:
    /// under the write lock, the versions (`batch::open` read them) are compared with the cache and
    /// what changed is read again. On SQLite this writer is the only one that saves programs, and
    /// there are none to compare.
    async fn refresh_programs(&mut self, versions: &[(TenantId, ProgramId, i64)]) -> Result<(), StoreError> {
        for &(tenant, id, version) in versions {
            let cached = self.programs.get(tenant, Some(id.0)).map(|entry| entry.version).ok();
            if cached != Some(version) {
                if let Some((version, program)) = batch::program(&mut self.connection, tenant, id).await? {
                    self.programs.put(tenant, id, version, program);
                }
            }
        }
        Ok(())
    }

    async fn run_alone(&mut self, envelope: Envelope) {
        let now = self.clock.now();
        let result = self.try_alone(&envelope.request, now).await;
        let reply = match result {
            Ok(Ok((reply, program))) => {
                if let Some((tenant, id, version, program)) = program {
                    self.programs.put(tenant, id, version, program);
                }
                Ok(reply)
            }
            Ok(Err(refusal)) => {
                batch::rollback(&mut self.connection).await;
                Err(refusal)
            }
            Err(error) => {
                batch::rollback(&mut self.connection).await;
                Err(error.into())
            }
        };
        self.answers.send(vec![(envelope.reply, reply)]);
    }

    #[allow(clippy::type_complexity)]
    async fn try_alone(
        &mut self,
        request: &Request,
        now: Timestamp,
    ) -> Result<Result<(Reply, Option<(TenantId, ProgramId, i64, Program)>), ApiError>, StoreError> {
        let opened = batch::open(&mut self.connection).await?;
        self.refresh_programs(&opened.program_versions).await?;
        let conn = &mut self.connection;
        let mut keys = BatchKeys::default();
        if let Some(idempotency) = &request.idempotency {
            keys.idempotency.push((request.tenant, idempotency.key.clone()));
        }
        let loaded = batch::load(conn, &keys).await?;
        if let Some(idempotency) = &request.idempotency {
            if let Some(stored) = loaded.idempotency.get(&(request.tenant, idempotency.key.clone())) {
                batch::rollback(conn).await;
                if stored.request_hash != idempotency.request_hash {
                    return Ok(Err(ApiError::IdempotencyKeyReused { key: idempotency.key.clone() }));
                }
                let reply = Reply::replayed(stored);
                return Ok(Ok((reply, None)));
            }
        }
        let mut program_update = None;
        let reply = match &request.command {
            Command::CreateTenant { name, admin_key } => {
                let tenant = admin::create_tenant(conn, name, now).await?;
                let program = Program::example();
                let (id, version) = admin::save_program(conn, tenant, None, &program, now).await?.expect("new program");
                program_update = Some((tenant, id, version, program));
                admin::insert_api_key(conn, &hash_api_key(admin_key), Some(tenant), Role::Admin, "first admin", now)
                    .await?;
                let created = TenantCreated { id: tenant.0, name: name.clone(), admin_key: admin_key.clone() };
                let mut reply = Reply::json(201, &created);
                let redacted = TenantCreated { admin_key: "(shown once)".into(), ..created };
                reply.stored_body = Some(serde_json::to_vec(&redacted).expect("serializes"));
                reply
            }
            Command::SaveProgram { id, program } => {
                let Some((id, version)) = admin::save_program(conn, request.tenant, *id, program, now).await? else {
                    return Ok(Err(ApiError::not_found("program_not_found", "no such program")));
                };
                program_update = Some((request.tenant, id, version, (**program).clone()));
                Reply::json(
                    if version == 1 { 201 } else { 200 },
                    &ProgramView { id: id.0, version, program: (**program).clone() },
                )
            }
            Command::CreateApiKey { key, role, name } => {
                let tenant = (*role != Role::Operator).then_some(request.tenant);
                admin::insert_api_key(conn, &hash_api_key(key), tenant, *role, name, now).await?;
                let created = ApiKeyCreated { key: key.clone(), role: *role, name: name.clone() };
                let mut reply = Reply::json(201, &created);
                let redacted = ApiKeyCreated { key: "(shown once)".into(), ..created };
                reply.stored_body = Some(serde_json::to_vec(&redacted).expect("serializes"));
                reply
            }
            Command::Campaign(command) => {
                match crate::checkout::run_campaign_command(conn, request.tenant, command, now).await? {
                    Ok(reply) => reply,
                    Err(refusal) => return Ok(Err(refusal)),
                }
            }
            _ => unreachable!("only administrative commands run alone"),
        };
        if let Some(idempotency) = &request.idempotency {
            let mut writes = batch::Writes::default();
            let stored = kopilka_store::StoredResponse {
                request_hash: idempotency.request_hash.clone(),
                status: reply.status,
                body: reply.stored_body.clone().unwrap_or_else(|| reply.body.clone()),
                member_id: None,
            };
            writes.idempotency.push((request.tenant, idempotency.key.clone(), stored, now));
            batch::flush(conn, &writes).await?;
        }
        batch::commit(conn).await?;
        Ok(Ok((reply, program_update)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kopilka_core::member::Profile;

    use super::*;
    use crate::clock::SystemClock;
    use crate::durable::Gate;

    /// Polls `answer` for a while; `None` if it did not come.
    async fn within(answer: &mut Answer, wait: Duration) -> Option<Result<Reply, ApiError>> {
        tokio::time::timeout(wait, answer).await.ok()
    }

    #[tokio::test]
    async fn on_sqlite_no_request_is_answered_before_the_fsync_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let gate = Gate::new();
        let (writer, task) = Writer::start_answering(
            &store,
            Arc::new(SystemClock),
            Arc::new(Metrics::default()),
            BATCH_SIZE_MAX,
            |wal, metrics| {
                assert!(wal.is_some(), "SQLite's writer syncs its WAL beside it");
                Answers::after(gate.sync(), metrics)
            },
        )
        .await
        .unwrap();

        // A command that runs alone (a tenant), then commands decided in a batch (members).
        gate.set_closed(true);
        let command = Command::CreateTenant { name: "t".into(), admin_key: "k".repeat(32) };
        let mut tenant = writer.enqueue(Request { tenant: TenantId(0), idempotency: None, command }).await.unwrap();
        assert!(within(&mut tenant, Duration::from_millis(200)).await.is_none(), "answered before its fsync");
        gate.set_closed(false);
        let created: TenantCreated = serde_json::from_slice(&tenant.await.unwrap().body).unwrap();
        let synced = gate.calls();
        assert!(synced >= 1);

        gate.set_closed(true);
        let mut members = Vec::new();
        for n in 0..3 {
            let command = Command::CreateMember {
                profile: Profile { card: Some(format!("C-{n}")), ..Profile::default() },
                signup_at: None,
            };
            members.push(
                writer.enqueue(Request { tenant: TenantId(created.id), idempotency: None, command }).await.unwrap(),
            );
        }
        for member in &mut members {
            assert!(within(member, Duration::from_millis(50)).await.is_none(), "answered before its fsync");
        }
        gate.set_closed(false);
        for member in members {
            assert_eq!(member.await.unwrap().status, 201);
        }
        assert!(gate.calls() > synced, "the members' batch waited for an fsync of its own");
        drop(writer);
        task.await.unwrap();
    }
}
