//! The writer under load: a deterministic simulation of random workloads submitted in concurrent
//! bursts (so they share a group-commit batch), checked against an independent model after every
//! burst; a refused request failing alone inside a large batch; durability across a restart; and
//! two writers on one store. Every test runs on SQLite and on PostgreSQL (`both_stores!`).
//!
//! The simulation is driven by a seeded `StdRng`: a failure prints its seed, and
//! `KOPILKA_SIM_SEED=<seed>` replays it. `KOPILKA_SIM_CASES` runs more seeds (default 6).
//!
//! Bursts are polled on one task, so requests reach the writer's queue in submission order; the
//! model therefore decides each request in that order, as the writer does, and predicts every
//! refusal and every balance exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use kopilka_core::member::Profile;
use kopilka_core::purchase::{LineInput, ReturnLine};
use kopilka_core::{Balance, MemberId, MemberLedger, PointCurrency, Program, PurchaseId, TenantId};
use kopilka_server::app::{self, AppState};
use kopilka_server::clock::{Clock, ManualClock};
use kopilka_server::dto::{AdjustmentRequest, PurchaseRequest, RedemptionRequest, ReturnRequest};
use kopilka_server::engine::{Command, Idempotency, Kept, Reply, Request};
use kopilka_server::error::ApiError;
use kopilka_server::jobs::{self, Job};
use kopilka_store::testing::test_store;
use kopilka_store::{both_stores, Database};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinHandle;

const TENANT: TenantId = TenantId(1);
const START: &str = "2026-01-15T10:00:00Z";
/// Seeds run by default: enough to cover every kind of step, small enough for ~10 s in debug.
const SIM_CASES_DEFAULT: u64 = 6;
/// Bursts per seed.
const SIM_BURSTS: usize = 40;
/// Requests per burst, at most.
const BURST_SIZE_MAX: usize = 50;
/// A member id no member will reach in a simulation.
const UNKNOWN_MEMBER: i64 = 999_999;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// One app on a data directory, with the clock the test moves.
struct Harness {
    state: AppState,
    writer_task: JoinHandle<()>,
    clock: Arc<ManualClock>,
}

impl Harness {
    async fn open(dir: &Database, clock: Arc<ManualClock>) -> Harness {
        let (state, writer_task) = app::open(dir, clock.clone()).await.expect("app opens");
        Harness { state, writer_task, clock }
    }

    /// Opens a fresh store and creates the first tenant with the default program.
    async fn fresh(dir: &Database) -> Harness {
        let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
        let harness = Harness::open(dir, clock).await;
        app::bootstrap(&harness.state).await.expect("bootstrap").expect("a fresh store gets a tenant");
        harness
    }

    /// Stops the writer: every handle dropped, then the task awaited.
    async fn stop(self) {
        let Harness { state, writer_task, .. } = self;
        state.store.pool.close().await;
        drop(state);
        writer_task.await.expect("the writer stops cleanly");
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn submit(&self, request: Request) -> Result<Reply, ApiError> {
        self.state.writer.submit(request).await
    }

    /// Submits every request at once, so they reach the writer together, and returns the answers
    /// in submission order. The writer is held until all are enqueued: it runs on a thread of its
    /// own and would otherwise start on the first while the rest are on their way.
    async fn burst(&self, requests: Vec<Request>) -> Vec<Result<Reply, ApiError>> {
        let held = self.state.writer.hold();
        let answers = join_all(requests.into_iter().map(|request| self.state.writer.enqueue(request))).await;
        drop(held);
        join_all(answers.into_iter().map(|answer| async move { answer?.await })).await
    }

    async fn assert_ledger_sound(&self, context: &str) {
        let report = self.state.store.verify().await.expect("verify runs");
        assert!(report.problems.is_empty(), "{context}: ledger problems: {:#?}", report.problems);
    }

    /// The member's balance read from the store's lots, as the balance endpoint computes it.
    async fn balance(&self, member: i64) -> Balance {
        let lots = self.state.store.lots(TENANT, MemberId(member), false).await.expect("lots read");
        MemberLedger::new(MemberId(member), lots).balance(&points_currency(), self.now())
    }

    async fn history_len(&self, member: i64) -> usize {
        self.state.store.history(TENANT, &[MemberId(member)], None, 100_000).await.expect("history read").len()
    }

    async fn purchase_count(&self) -> usize {
        self.state.store.purchases_page(TENANT, PurchaseId(0), 100_000).await.expect("purchases read").len()
    }
}

/// Polls every future on the current task (no spawning), so the first poll of each, which sends
/// its request to the writer, happens in order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    type Slot<F> = (std::pin::Pin<Box<F>>, Option<<F as Future>::Output>);
    let mut slots: Vec<Slot<F>> = futures.into_iter().map(|f| (Box::pin(f), None)).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in slots.iter_mut() {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    slots.into_iter().map(|(_, output)| output.expect("every future finished")).collect()
}

fn program() -> Program {
    Program::example()
}

fn points_currency() -> PointCurrency {
    program().point_currency
}

/// A request with an idempotency key whose hash is taken over the command, as the API hashes the
/// body: the same command gives the same hash.
fn request(key: String, command: Command) -> Request {
    let request_hash = format!("{command:?}").into_bytes();
    Request { tenant: TENANT, idempotency: Some(Idempotency::new(key, request_hash)), command }
}

fn purchase_command(member: i64, receipt: &str, lines: Vec<LineInput>, redeem_points: i64) -> Command {
    Command::Purchase(PurchaseRequest {
        member_id: member,
        external_id: receipt.to_string(),
        occurred_at: None,
        channel: Default::default(),
        store: None,
        currency: "RUB".into(),
        lines,
        redeem_points,
        program_id: None,
        explain: false,
    })
}

fn line(sku: &str, quantity: i64, unit_price_minor: i64) -> LineInput {
    LineInput { sku: sku.into(), category: None, brand: None, quantity, unit_price_minor, discount_minor: 0 }
}

fn create_member_command(card: &str) -> Command {
    Command::CreateMember { profile: Profile { card: Some(card.into()), ..Profile::default() }, signup_at: None }
}

fn adjust_command(member: i64, points: i64) -> Command {
    Command::Adjust(AdjustmentRequest { member_id: member, points, reason: "simulation".into(), program_id: None })
}

fn redeem_command(member: i64, points: i64) -> Command {
    Command::Redeem(RedemptionRequest { member_id: member, points, bill_minor: None, reason: None, program_id: None })
}

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).expect("replies are JSON")
}

fn balance_of(body: &Value) -> (i64, Balance) {
    let balance = &body["balance"];
    let member = balance["member_id"].as_i64().expect("balance names its member");
    let available = balance["available"].as_i64().expect("available");
    let pending = balance["pending"].as_i64().expect("pending");
    (member, Balance { available, pending })
}

fn code(error: &ApiError) -> String {
    error.problem().code
}

/// Prints the seed when the simulation panics, so the failure can be replayed.
struct SeedReporter(u64);

impl Drop for SeedReporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("simulation failed: replay with KOPILKA_SIM_SEED={}", self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct MemberModel {
    merged_into: Option<i64>,
    /// True once another member was merged into this one.
    absorbed_others: bool,
    /// The balance as of the clock's current time.
    balance: Balance,
    /// When each credit ever made to this member (or merged into it) expires.
    expires: Vec<Timestamp>,
    /// When each pending credit becomes available.
    activates: Vec<Timestamp>,
}

#[derive(Debug, Clone)]
struct PurchaseModel {
    id: i64,
    receipt: String,
    member: i64,
    occurred_at: Timestamp,
    /// Per line: (quantity, quantity returned, points earned, points redeemed).
    lines: Vec<(i64, i64, i64, i64)>,
}

/// What the model expects of one request, decided before its answer is looked at.
#[derive(Debug)]
enum Expect {
    Refused(&'static str),
    Replay(Vec<u8>),
    Accepted,
}

/// Which merges a workload asks for (refused ones aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Merges {
    /// Each member takes part in at most one merge.
    #[default]
    Pairs,
    /// A survivor may absorb several members; an absorbed member never absorbed anyone.
    Stars,
    /// Any two members not merged yet: a member that absorbed others may itself be absorbed.
    Chains,
}

#[derive(Default)]
struct Model {
    members: BTreeMap<i64, MemberModel>,
    cards: BTreeSet<String>,
    purchases: Vec<PurchaseModel>,
    receipts: HashMap<String, usize>,
    /// Keys whose first answer was stored: (hash, body, status).
    stored: HashMap<String, (Vec<u8>, Vec<u8>, u16)>,
    /// Requests accepted, for retries.
    accepted: Vec<Request>,
    /// Which merges the workload asks for.
    merges: Merges,
}

impl Model {
    /// The member a command for `id` acts on: the end of the merge chain.
    fn resolve(&self, id: i64) -> Option<i64> {
        let mut id = id;
        for _ in 0..64 {
            match self.members.get(&id)?.merged_into {
                Some(next) => id = next,
                None => return Some(id),
            }
        }
        panic!("merge chain longer than 64 from member {id}");
    }

    fn live_members(&self) -> Vec<i64> {
        self.members.iter().filter(|(_, m)| m.merged_into.is_none()).map(|(id, _)| *id).collect()
    }

    /// Decides what the writer must answer, without changing the model.
    fn expect(&self, request: &Request) -> Expect {
        let idempotency = request.idempotency.as_ref().expect("simulated requests carry keys");
        if let Some((hash, body, _)) = self.stored.get(&idempotency.key) {
            if *hash != idempotency.request_hash {
                return Expect::Refused("idempotency_key_reused");
            }
            return Expect::Replay(body.clone());
        }
        let program = program();
        match &request.command {
            Command::CreateMember { profile, .. } => {
                if self.cards.contains(profile.card.as_deref().unwrap()) {
                    return Expect::Refused("identifier_taken");
                }
                Expect::Accepted
            }
            Command::Purchase(purchase) => {
                let Some(member) = self.resolve(purchase.member_id) else {
                    return Expect::Refused("member_not_found");
                };
                if self.receipts.contains_key(&purchase.external_id) {
                    return Expect::Refused("duplicate_purchase");
                }
                let total: i64 = purchase.lines.iter().map(|l| l.quantity * l.unit_price_minor).sum();
                if purchase.redeem_points > program.max_redeemable_points(total) {
                    return Expect::Refused("redeem_share_exceeded");
                }
                if purchase.redeem_points > self.members[&member].balance.available {
                    return Expect::Refused("insufficient_points");
                }
                Expect::Accepted
            }
            Command::Return(ret) => {
                let Some(index) = self.purchase_index(ret) else {
                    return Expect::Refused("purchase_not_found");
                };
                let purchase = &self.purchases[index];
                match &ret.lines {
                    None if purchase.lines.iter().all(|(q, returned, _, _)| q == returned) => {
                        Expect::Refused("nothing_to_return")
                    }
                    None => Expect::Accepted,
                    Some(lines) => {
                        let mut asked = vec![0; purchase.lines.len()];
                        for item in lines {
                            asked[item.line] += item.quantity;
                            let (quantity, returned, _, _) = purchase.lines[item.line];
                            if asked[item.line] > quantity - returned {
                                return Expect::Refused("return_exceeds_purchase");
                            }
                        }
                        Expect::Accepted
                    }
                }
            }
            Command::Redeem(redeem) => {
                let Some(member) = self.resolve(redeem.member_id) else {
                    return Expect::Refused("member_not_found");
                };
                if redeem.points > self.members[&member].balance.available {
                    return Expect::Refused("insufficient_points");
                }
                Expect::Accepted
            }
            Command::Adjust(adjust) => {
                let Some(member) = self.resolve(adjust.member_id) else {
                    return Expect::Refused("member_not_found");
                };
                if -adjust.points > self.members[&member].balance.available {
                    return Expect::Refused("insufficient_points");
                }
                Expect::Accepted
            }
            Command::MergeMembers { survivor_id, absorbed_id } => {
                if survivor_id == absorbed_id {
                    return Expect::Refused("merge_into_self");
                }
                for id in [survivor_id, absorbed_id] {
                    match self.members.get(&id.0) {
                        None => return Expect::Refused("member_not_found"),
                        Some(member) if member.merged_into.is_some() => return Expect::Refused("member_merged"),
                        Some(_) => {}
                    }
                }
                Expect::Accepted
            }
            other => panic!("the simulation does not send {other:?}"),
        }
    }

    fn purchase_index(&self, ret: &ReturnRequest) -> Option<usize> {
        match (&ret.purchase_id, &ret.purchase_external_id) {
            (Some(id), None) => self.purchases.iter().position(|p| p.id == *id),
            (None, Some(receipt)) => self.receipts.get(receipt).copied(),
            _ => panic!("the simulation names a purchase one way"),
        }
    }

    /// Checks an accepted answer against the model and moves the model on.
    fn accept(&mut self, request: &Request, reply: &Reply, now: Timestamp, context: &str) {
        let program = program();
        let body = json(reply);
        match &request.command {
            Command::CreateMember { profile, .. } => {
                assert_eq!(reply.status, 201, "{context}");
                let id = body["id"].as_i64().expect("members have ids");
                assert!(!self.members.contains_key(&id), "{context}: member id {id} handed out twice");
                assert!(self.members.keys().all(|known| *known < id), "{context}: member ids go up");
                self.cards.insert(profile.card.clone().unwrap());
                self.members.insert(id, MemberModel::default());
            }
            Command::Purchase(purchase) => {
                assert_eq!(reply.status, 201, "{context}");
                let member = self.resolve(purchase.member_id).unwrap();
                let record = &body["purchase"];
                let total: i64 = purchase.lines.iter().map(|l| l.quantity * l.unit_price_minor).sum();
                let earned = program.earn_rate.points_for(total - purchase.redeem_points * program.point_value_minor);
                assert_eq!(record["total_minor"], total, "{context}");
                assert_eq!(record["points_earned"], earned, "{context}: points earned on the amount paid in money");
                assert_eq!(record["member_id"], member, "{context}: the purchase belongs to the survivor");
                let lines: Vec<_> = record["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| {
                        let get = |f: &str| l[f].as_i64().unwrap();
                        (get("quantity"), 0, get("points_earned"), get("points_redeemed"))
                    })
                    .collect();
                assert_eq!(lines.iter().map(|l| l.2).sum::<i64>(), earned, "{context}: line points add up");
                assert_eq!(lines.iter().map(|l| l.3).sum::<i64>(), purchase.redeem_points, "{context}");
                let id = record["id"].as_i64().unwrap();
                assert!(self.purchases.iter().all(|p| p.id < id), "{context}: purchase ids go up");
                let occurred_at = purchase.occurred_at.unwrap_or(now);
                self.receipts.insert(purchase.external_id.clone(), self.purchases.len());
                self.purchases.push(PurchaseModel {
                    id,
                    receipt: purchase.external_id.clone(),
                    member: purchase.member_id,
                    occurred_at,
                    lines,
                });
                let model = self.members.get_mut(&member).unwrap();
                model.balance.available -= purchase.redeem_points;
                if earned > 0 {
                    let (activates, expires) = (program.available_from(occurred_at), program.expires_at(occurred_at));
                    if expires <= now {
                        // Already expired when recorded: counts for nothing.
                    } else if activates <= now {
                        model.balance.available += earned;
                    } else {
                        model.balance.pending += earned;
                    }
                    model.activates.push(activates);
                    model.expires.push(expires);
                }
                self.check_balance(member, &body, context);
            }
            Command::Return(ret) => {
                assert_eq!(reply.status, 201, "{context}");
                let index = self.purchase_index(ret).unwrap();
                let purchase = &mut self.purchases[index];
                let mut returning = vec![0; purchase.lines.len()];
                match &ret.lines {
                    None => {
                        for (slot, (q, returned, _, _)) in returning.iter_mut().zip(&purchase.lines) {
                            *slot = q - returned;
                        }
                    }
                    Some(lines) => {
                        for item in lines {
                            returning[item.line] += item.quantity;
                        }
                    }
                }
                let (mut reversed, mut restored) = (0, 0);
                for ((quantity, returned, earned, redeemed), now_returned) in purchase.lines.iter_mut().zip(&returning)
                {
                    let share = |value: i64, q: i64| value * q / *quantity;
                    let after = *returned + now_returned;
                    reversed += share(*earned, after) - share(*earned, *returned);
                    restored += share(*redeemed, after) - share(*redeemed, *returned);
                    *returned = after;
                }
                let get = |f: &str| body[f].as_i64().unwrap();
                let lapsed_expected = now >= program.expires_at(purchase.occurred_at);
                let (reversed_reply, lapsed) = (get("points_reversed"), get("points_lapsed"));
                assert_eq!(reversed_reply + lapsed, reversed, "{context}: reversal in proportion to what came back");
                assert_eq!(get("points_restored"), restored, "{context}: redeemed points restored in proportion");
                if lapsed_expected {
                    assert_eq!(reversed_reply, 0, "{context}: expired points are not reversed again");
                } else {
                    assert_eq!(lapsed, 0, "{context}: nothing lapses before expiry");
                }
                let unrecovered = get("points_unrecovered");
                assert!((0..=reversed_reply).contains(&unrecovered), "{context}");
                let purchased_by = purchase.member;
                let member = self.resolve(purchased_by).unwrap();
                let model = self.members.get_mut(&member).unwrap();
                let (replied_member, balance) = balance_of(&body);
                assert_eq!(replied_member, member, "{context}: the return acts on the survivor");
                let total_before = model.balance.available + model.balance.pending;
                assert_eq!(
                    balance.available + balance.pending,
                    total_before + restored - (reversed_reply - unrecovered),
                    "{context}: a return moves exactly what it says"
                );
                // Which lots the reversal took from (pending or available) is the ledger's choice.
                model.balance = balance;
                if restored > 0 {
                    model.expires.push(program.expires_at(now));
                }
            }
            Command::Redeem(redeem) => {
                assert_eq!(reply.status, 201, "{context}");
                let member = self.resolve(redeem.member_id).unwrap();
                self.members.get_mut(&member).unwrap().balance.available -= redeem.points;
                self.check_balance(member, &body, context);
            }
            Command::Adjust(adjust) => {
                assert_eq!(reply.status, 201, "{context}");
                let member = self.resolve(adjust.member_id).unwrap();
                let model = self.members.get_mut(&member).unwrap();
                model.balance.available += adjust.points;
                if adjust.points > 0 {
                    model.expires.push(program.expires_at(now));
                }
                self.check_balance(member, &body, context);
            }
            Command::MergeMembers { survivor_id, absorbed_id } => {
                assert_eq!(reply.status, 200, "{context}");
                let absorbed = std::mem::take(self.members.get_mut(&absorbed_id.0).unwrap());
                let moved = absorbed.balance.available + absorbed.balance.pending;
                assert_eq!(body["points_moved"], moved, "{context}: a merge moves the absorbed member's points");
                let survivor = self.members.get_mut(&survivor_id.0).unwrap();
                survivor.balance.available += absorbed.balance.available;
                survivor.balance.pending += absorbed.balance.pending;
                survivor.expires.extend(absorbed.expires);
                survivor.activates.extend(absorbed.activates);
                survivor.absorbed_others = true;
                let absorbed = self.members.get_mut(&absorbed_id.0).unwrap();
                absorbed.merged_into = Some(survivor_id.0);
                absorbed.absorbed_others = true;
                self.check_balance(survivor_id.0, &body, context);
            }
            other => panic!("the simulation does not send {other:?}"),
        }
        let idempotency = request.idempotency.as_ref().unwrap();
        self.stored
            .insert(idempotency.key.clone(), (idempotency.request_hash.clone(), reply.body.clone(), reply.status));
        self.accepted.push(request.clone());
    }

    fn check_balance(&self, member: i64, body: &Value, context: &str) {
        let (replied_member, balance) = balance_of(body);
        assert_eq!(replied_member, member, "{context}: the answer shows the member acted on");
        assert_eq!(balance, self.members[&member].balance, "{context}: the balance in the answer");
        assert!(balance.available >= 0 && balance.pending >= 0, "{context}: a balance is never negative");
    }

    /// The clock moved from `before` to `now`: checks the store's balances against what time can
    /// do (activate, expire) and takes them as the model's.
    fn time_passed(&mut self, member: i64, store_balance: Balance, before: Timestamp, now: Timestamp, context: &str) {
        let model = self.members.get_mut(&member).unwrap();
        let old = model.balance;
        let (old_total, new_total) = (old.available + old.pending, store_balance.available + store_balance.pending);
        let expiry_due = model.expires.iter().any(|at| *at > before && *at <= now);
        let activation_due = model.activates.iter().any(|at| *at > before && *at <= now);
        assert!(new_total <= old_total, "{context}: time alone never adds points to member {member}");
        if !expiry_due {
            assert_eq!(new_total, old_total, "{context}: no lot of member {member} could expire, yet points went");
            if !activation_due {
                assert_eq!(store_balance, old, "{context}: nothing was due for member {member}, yet it changed");
            }
        }
        if model.expires.iter().all(|at| *at <= now) {
            assert_eq!(new_total, 0, "{context}: every lot of member {member} has expired");
        }
        if model.activates.iter().all(|at| *at <= now) {
            assert_eq!(store_balance.pending, 0, "{context}: every return window of member {member} has closed");
        }
        model.balance = store_balance;
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------------------------

struct Sim {
    rng: StdRng,
    harness: Harness,
    model: Model,
    keys: u64,
    receipts: u64,
    seed: u64,
    burst: usize,
    /// Survivors of merges generated for the burst being built, which the model has not seen yet.
    planned_survivors: BTreeSet<i64>,
    /// How each request was answered, by kind and outcome: printed, to see what a seed covered.
    outcomes: BTreeMap<String, usize>,
}

impl Sim {
    fn fresh_key(&mut self) -> String {
        self.keys += 1;
        format!("sim-{}", self.keys)
    }

    fn pick_member(&mut self) -> i64 {
        if self.rng.gen_ratio(1, 40) {
            return UNKNOWN_MEMBER;
        }
        let ids: Vec<i64> = self.model.members.keys().copied().collect();
        *ids.choose(&mut self.rng).expect("the simulation starts with members")
    }

    fn available_of(&self, member: i64) -> i64 {
        self.model.resolve(member).map(|m| self.model.members[&m].balance.available).unwrap_or(0)
    }

    fn random_command(&mut self, burst: &[Request]) -> Request {
        let roll = self.rng.gen_range(0..100);
        // Retries of requests that were answered before, or of one earlier in this burst.
        if roll < 8 && !self.model.accepted.is_empty() {
            let earlier = self.model.accepted.choose(&mut self.rng).unwrap().clone();
            return earlier;
        }
        if roll < 11 && !burst.is_empty() {
            return burst.choose(&mut self.rng).unwrap().clone();
        }
        if roll < 14 && !self.model.accepted.is_empty() {
            // The same key with a different body.
            let key = self.model.accepted.choose(&mut self.rng).unwrap().idempotency.clone().unwrap().key;
            let member = self.pick_member();
            return request(key, redeem_command(member, self.rng.gen_range(1..5)));
        }
        let key = self.fresh_key();
        let command = match roll {
            14..=21 => {
                // Cards from a small pool, so some collide.
                let card = format!("C-{}", self.rng.gen_range(0..(self.model.members.len() as u64 + 6)));
                create_member_command(&card)
            }
            22..=56 => {
                let member = self.pick_member();
                let lines: Vec<_> = (0..self.rng.gen_range(1..=4))
                    .map(|i| line(&format!("SKU-{i}"), self.rng.gen_range(1..=4), self.rng.gen_range(1_00..30_000_00)))
                    .collect();
                let redeem = if self.rng.gen_bool(0.35) {
                    let available = self.available_of(member);
                    self.rng.gen_range(0..=available + available / 4 + 5)
                } else {
                    0
                };
                let receipt = if self.rng.gen_ratio(1, 30) && !self.model.purchases.is_empty() {
                    self.model.purchases.choose(&mut self.rng).unwrap().receipt.clone()
                } else {
                    self.receipts += 1;
                    format!("R-{}", self.receipts)
                };
                let mut command = purchase_command(member, &receipt, lines, redeem);
                if self.rng.gen_ratio(1, 8) {
                    // A receipt entered late: its return window and expiry count from when it
                    // happened, which may be long past.
                    let days = self.rng.gen_range(1..400);
                    let Command::Purchase(purchase) = &mut command else { unreachable!() };
                    purchase.occurred_at = Some(self.harness.now() - SignedDuration::from_hours(24 * days));
                }
                command
            }
            57..=68 if !self.model.purchases.is_empty() => {
                let purchase = self.model.purchases.choose(&mut self.rng).unwrap().clone();
                let lines = if self.rng.gen_bool(0.5) {
                    None
                } else {
                    let index = self.rng.gen_range(0..purchase.lines.len());
                    let quantity = self.rng.gen_range(1..=purchase.lines[index].0);
                    Some(vec![ReturnLine { line: index, quantity }])
                };
                let by_id = self.rng.gen_bool(0.3);
                Command::Return(ReturnRequest {
                    purchase_id: by_id.then_some(purchase.id),
                    purchase_external_id: (!by_id).then_some(purchase.receipt.clone()),
                    lines,
                })
            }
            57..=80 => {
                let member = self.pick_member();
                let available = self.available_of(member);
                redeem_command(member, self.rng.gen_range(1..=available + 20))
            }
            81..=93 => {
                let member = self.pick_member();
                let points = if self.rng.gen_bool(0.6) {
                    self.rng.gen_range(1..3_000)
                } else {
                    -self.rng.gen_range(1..=self.available_of(member) + 20)
                };
                adjust_command(member, points)
            }
            _ => {
                let live = self.model.live_members();
                let merges = self.model.merges;
                // Merges already in this burst count too: the model has not seen them yet.
                let absorbed_others =
                    |m: &i64| self.model.members[m].absorbed_others || self.planned_survivors.contains(m);
                let survivors: Vec<i64> =
                    live.iter().copied().filter(|m| merges != Merges::Pairs || !absorbed_others(m)).collect();
                let Some(survivor) = survivors.choose(&mut self.rng).copied() else {
                    return request(key, adjust_command(live[0], 1));
                };
                let absorbable: Vec<i64> = if self.rng.gen_ratio(1, 5) {
                    // Refusals: into itself, or a member already merged.
                    let merged = self.model.members.iter().filter(|(_, m)| m.merged_into.is_some()).map(|(id, _)| *id);
                    merged.chain([survivor]).collect()
                } else {
                    live.iter()
                        .copied()
                        .filter(|m| *m != survivor && (merges == Merges::Chains || !absorbed_others(m)))
                        .collect()
                };
                let Some(absorbed) = absorbable.choose(&mut self.rng).copied() else {
                    return request(key, adjust_command(survivor, 1));
                };
                self.planned_survivors.insert(survivor);
                Command::MergeMembers { survivor_id: MemberId(survivor), absorbed_id: MemberId(absorbed) }
            }
        };
        request(key, command)
    }

    /// Submits a burst, with the jobs running beside it sometimes, and checks every answer.
    async fn run_burst(&mut self) {
        self.burst += 1;
        let size = self.rng.gen_range(1..=BURST_SIZE_MAX);
        let mut requests = Vec::with_capacity(size);
        self.planned_survivors.clear();
        for _ in 0..size {
            let request = self.random_command(&requests);
            requests.push(request);
        }
        let with_job =
            self.rng.gen_ratio(1, 4).then(|| if self.rng.gen_bool(0.5) { Job::Activate } else { Job::Expiry });
        let harness = &self.harness;
        let job = async {
            match with_job {
                Some(job) => Some(
                    jobs::run_once(&harness.state.store, &harness.state.writer, &*harness.clock, job, None)
                        .await
                        .expect("a job runs"),
                ),
                None => None,
            }
        };
        let (answers, _) = tokio::join!(harness.burst(requests.clone()), job);
        let now = self.harness.now();
        for (index, (request, answer)) in requests.iter().zip(answers).enumerate() {
            let context = format!("seed {} burst {} request {index} {:?}", self.seed, self.burst, request.command);
            let kind = format!("{:?}", request.command).split(['(', ' ']).next().unwrap_or_default().to_string();
            let outcome = match &answer {
                Ok(reply) if reply.replayed => "replayed".to_string(),
                Ok(_) => "accepted".to_string(),
                Err(error) => code(error),
            };
            *self.outcomes.entry(format!("{kind} {outcome}")).or_default() += 1;
            match (self.model.expect(request), answer) {
                (Expect::Refused(expected), Err(error)) => {
                    assert_eq!(code(&error), expected, "{context}: refused for the wrong reason: {error}");
                }
                (Expect::Replay(body), Ok(reply)) => {
                    assert!(reply.replayed, "{context}: a retry is a replay");
                    assert_eq!(reply.body, body, "{context}: a retry returns the first answer byte for byte");
                }
                (Expect::Accepted, Ok(reply)) => {
                    assert!(!reply.replayed, "{context}");
                    self.model.accept(request, &reply, now, &context);
                }
                (expect, answer) => panic!("{context}: expected {expect:?}, got {answer:?}"),
            }
        }
        self.check_store(&format!("seed {} after burst {}", self.seed, self.burst)).await;
    }

    /// The store agrees with the model, member by member, and its ledger is sound.
    async fn check_store(&self, context: &str) {
        self.harness.assert_ledger_sound(context).await;
        // A failed commit is retried request by request, which hides it from the answers: in a
        // workload with nothing wrong with the database, no commit may fail.
        let failures = self.harness.state.metrics.writer_commit_failures.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(failures, 0, "{context}: a batch commit failed");
        for (id, member) in &self.model.members {
            let balance = self.harness.balance(*id).await;
            assert!(balance.available >= 0 && balance.pending >= 0, "{context}: member {id} negative: {balance:?}");
            match member.merged_into {
                Some(survivor) => assert_eq!(
                    balance,
                    Balance::default(),
                    "{context}: member {id}, merged into {survivor}, still holds points"
                ),
                None => assert_eq!(balance, member.balance, "{context}: member {id}'s balance in the store"),
            }
        }
        assert_eq!(self.harness.purchase_count().await, self.model.purchases.len(), "{context}: purchases recorded");
    }

    /// What a retry must leave as it was.
    async fn snapshot(&self) -> Vec<(i64, Balance, usize)> {
        let mut snapshot = Vec::new();
        for id in self.model.members.keys() {
            snapshot.push((*id, self.harness.balance(*id).await, self.harness.history_len(*id).await));
        }
        snapshot
    }

    /// A burst of nothing but retries: answers replayed byte for byte or refused, nothing moved.
    async fn retry_burst(&mut self) {
        self.burst += 1;
        let context = format!("seed {} retry burst {}", self.seed, self.burst);
        let before = self.snapshot().await;
        let purchases_before = self.harness.purchase_count().await;
        let movements_before = self.harness.state.store.verify().await.unwrap().movements;
        let mut requests = Vec::new();
        for _ in 0..self.rng.gen_range(1..=BURST_SIZE_MAX) {
            let mut earlier = self.model.accepted.choose(&mut self.rng).unwrap().clone();
            if self.rng.gen_ratio(1, 4) {
                // The same key with a different body.
                earlier = request(earlier.idempotency.unwrap().key, redeem_command(UNKNOWN_MEMBER, 1));
            }
            requests.push(earlier);
        }
        let answers = self.harness.burst(requests.clone()).await;
        for (request, answer) in requests.iter().zip(answers) {
            match (self.model.expect(request), answer) {
                (Expect::Replay(body), Ok(reply)) => {
                    assert!(reply.replayed, "{context}");
                    assert_eq!(reply.body, body, "{context}: a retry returns the first answer byte for byte");
                }
                (Expect::Refused("idempotency_key_reused"), Err(error)) => {
                    assert_eq!(code(&error), "idempotency_key_reused", "{context}");
                }
                (expect, answer) => panic!("{context}: expected {expect:?}, got {answer:?}"),
            }
        }
        assert_eq!(self.snapshot().await, before, "{context}: retries moved points or wrote history");
        assert_eq!(self.harness.purchase_count().await, purchases_before, "{context}");
        assert_eq!(self.harness.state.store.verify().await.unwrap().movements, movements_before, "{context}");
    }

    async fn move_clock(&mut self) {
        let hours = match self.rng.gen_range(0..6) {
            0 => self.rng.gen_range(1..24),
            1 => 24 * self.rng.gen_range(1..4),
            2 => 24 * self.rng.gen_range(13..16),
            3 => 24 * self.rng.gen_range(60..120),
            4 => 24 * self.rng.gen_range(360..370),
            _ => 24 * 14,
        };
        let before = self.harness.now();
        self.harness.clock.advance(SignedDuration::from_hours(hours));
        let now = self.harness.now();
        let context = format!("seed {} burst {} after {hours} h", self.seed, self.burst);
        let ids: Vec<i64> = self.model.live_members();
        for id in ids {
            let balance = self.harness.balance(id).await;
            self.model.time_passed(id, balance, before, now, &context);
        }
    }

    /// Runs both jobs: nothing is due afterwards, and no balance as of now changed.
    async fn run_jobs(&mut self) {
        let context = format!("seed {} burst {} jobs", self.seed, self.burst);
        let state = &self.harness.state;
        for job in [Job::Activate, Job::Expiry] {
            jobs::run_once(&state.store, &state.writer, &*self.harness.clock, job, None).await.expect("job runs");
            let again = jobs::run_once(&state.store, &state.writer, &*self.harness.clock, job, None).await.unwrap();
            assert_eq!(again.movements, 0, "{context}: a second {} run changes nothing", job.name());
        }
        self.check_store(&context).await;
    }
}

async fn simulate(seed: u64, merges: Merges) {
    let _reporter = SeedReporter(seed);
    let dir = test_store().await;
    let harness = Harness::fresh(&dir.database).await;
    let mut sim = Sim {
        rng: StdRng::seed_from_u64(seed),
        harness,
        model: Model { merges, ..Model::default() },
        keys: 0,
        receipts: 0,
        seed,
        burst: 0,
        planned_survivors: BTreeSet::new(),
        outcomes: BTreeMap::new(),
    };
    // A few members to start with, in one burst.
    let first: Vec<Request> =
        (0..6).map(|i| request(format!("seed-member-{i}"), create_member_command(&format!("S-{i}")))).collect();
    let now = sim.harness.now();
    for (request, answer) in first.iter().zip(sim.harness.burst(first.clone()).await) {
        sim.model.accept(request, &answer.expect("members are created"), now, "setup");
    }
    for _ in 0..SIM_BURSTS {
        match sim.rng.gen_range(0..10) {
            0 | 1 => sim.move_clock().await,
            2 => sim.run_jobs().await,
            3 if !sim.model.accepted.is_empty() => sim.retry_burst().await,
            _ => {}
        }
        sim.run_burst().await;
    }
    sim.run_jobs().await;
    eprintln!(
        "seed {seed}: {} members, {} purchases, outcomes {:?}",
        sim.model.members.len(),
        sim.model.purchases.len(),
        sim.outcomes
    );
    sim.harness.stop().await;
}

fn sim_seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("KOPILKA_SIM_SEED") {
        return vec![seed.parse().expect("KOPILKA_SIM_SEED is a number")];
    }
    let cases = std::env::var("KOPILKA_SIM_CASES")
        .map(|n| n.parse().expect("KOPILKA_SIM_CASES is a number"))
        .unwrap_or(SIM_CASES_DEFAULT);
    (0..cases).map(|i| 0x6b6f_7069_6c6b_6100 + i).collect()
}

both_stores! {
    async fn random_workloads_in_concurrent_bursts_agree_with_the_model_and_keep_the_ledger_sound() {
        for seed in sim_seeds() {
            simulate(seed, Merges::Pairs).await;
        }
    }
}

both_stores! {
    async fn random_workloads_with_survivors_of_several_merges_agree_with_the_model() {
        for seed in sim_seeds() {
            simulate(seed, Merges::Stars).await;
        }
    }
}

both_stores! {
    async fn random_workloads_with_chained_merges_agree_with_the_model() {
        for seed in sim_seeds() {
            simulate(seed, Merges::Chains).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Focused tests
// ---------------------------------------------------------------------------------------------

async fn create_member(harness: &Harness, card: &str) -> i64 {
    let reply = harness.submit(request(format!("member-{card}"), create_member_command(card))).await.expect("created");
    json(&reply)["id"].as_i64().unwrap()
}

// A bulk writer (an import) decides batches of thousands of requests, so every multi-row statement
// of its flush must keep within the store's limit of bound values (SQLite's is 32,766): a batch
// that passed it would fail and be retried one request at a time.
both_stores! {
    async fn a_bulk_batch_of_new_members_commits_whole() {
        let dir = test_store().await;
        let clock = Arc::new(ManualClock::new(START.parse().unwrap()));
        let (state, writer_task) = app::open_bulk(&dir.database, clock.clone()).await.expect("app opens");
        let harness = Harness { state, writer_task, clock };
        app::bootstrap(&harness.state).await.expect("bootstrap").expect("a fresh store gets a tenant");
        // Enqueued while the writer is held, so it takes them as one batch.
        let held = harness.state.writer.hold();
        let mut answers = Vec::new();
        for i in 0..3_000 {
            let request = request(format!("bulk-{i}"), create_member_command(&format!("C-bulk-{i}")));
            answers.push(harness.state.writer.enqueue(request).await.expect("enqueued"));
        }
        drop(held);
        for answer in answers {
            assert_eq!(answer.await.expect("created").status, 201);
        }
        let metrics = &harness.state.metrics;
        let batches = metrics.writer_batches.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(batches, 1, "the members came in one batch");
        assert_eq!(metrics.writer_commit_failures.load(std::sync::atomic::Ordering::Relaxed), 0, "every batch committed whole");
        harness.assert_ledger_sound("after the bulk batch").await;
        harness.stop().await;
    }
}

// A purchase that redeems nothing loads its member light (a partial ledger). Two returns in the
// purchase's own batch debit that member: by receipt number the keys see it coming and load the
// member whole; by purchase id (guessed here: ids are sequential) they cannot, and the writer
// decides the batch again with every ledger whole. Either way the answers and the books are those
// of batches that loaded everything.
both_stores! {
    async fn returns_in_the_batch_of_their_purchase_debit_the_member_whole() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let (anna, boris) = (create_member(&harness, "C-anna").await, create_member(&harness, "C-boris").await);
        let before = harness
            .submit(request("before".into(), purchase_command(anna, "R-before", vec![line("A", 1, 300_00)], 0)))
            .await
            .unwrap();
        let earned_before = json(&before)["purchase"]["points_earned"].as_i64().expect("points earned");
        let return_of = |by_id: Option<i64>, by_receipt: Option<&str>| {
            Command::Return(ReturnRequest {
                purchase_id: by_id,
                purchase_external_id: by_receipt.map(String::from),
                lines: None,
            })
        };
        let answers = harness
            .burst(vec![
                request("p-anna".into(), purchase_command(anna, "R-anna", vec![line("A", 2, 500_00)], 0)),
                request("p-boris".into(), purchase_command(boris, "R-boris", vec![line("A", 1, 700_00)], 0)),
                request("r-anna".into(), return_of(Some(2), None)),
                request("r-boris".into(), return_of(None, Some("R-boris"))),
            ])
            .await;
        let answers: Vec<Value> = answers.into_iter().map(|answer| json(&answer.expect("accepted"))).collect();
        assert_eq!(answers[0]["purchase"]["id"], 2, "the guessed id is the purchase's");
        let reloads = harness.state.metrics.writer_whole_reloads.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(reloads, 1, "the return by id was decided again with Anna's ledger whole");
        for (purchase, ret) in [(&answers[0], &answers[2]), (&answers[1], &answers[3])] {
            let earned = purchase["purchase"]["points_earned"].as_i64().expect("points earned");
            assert!(earned > 0);
            assert_eq!(ret["points_reversed"].as_i64(), Some(earned), "{ret}");
        }
        // Anna keeps the pending points of the purchase before the burst; Boris has nothing.
        assert!(earned_before > 0);
        assert_eq!(harness.balance(anna).await, Balance { available: 0, pending: earned_before });
        assert_eq!(harness.balance(boris).await, Balance::default());
        harness.assert_ledger_sound("after the burst").await;
        harness.stop().await;
    }
}

both_stores! {
    async fn the_kept_lot_totals_follow_every_change_and_a_drift_is_reported() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let (a, b) = (create_member(&harness, "C-a").await, create_member(&harness, "C-b").await);
        harness.submit(request("adjust".into(), adjust_command(a, 300))).await.unwrap();
        for i in 0..3 {
            let purchase = purchase_command(a, &format!("R-{i}"), vec![line("A", 1, 2_000_00)], 0);
            harness.submit(request(format!("p-{i}"), purchase)).await.unwrap();
        }
        harness.submit(request("redeem".into(), redeem_command(a, 120))).await.unwrap();
        let merge = Command::MergeMembers { survivor_id: MemberId(b), absorbed_id: MemberId(a) };
        harness.submit(request("merge".into(), merge)).await.unwrap();
        // Pending lots become available, then everything expires: the totals move between states.
        harness.clock.advance(SignedDuration::from_hours(24 * 30));
        jobs::run_once(&harness.state.store, &harness.state.writer, &*harness.clock, Job::Activate, None).await.unwrap();
        let purchase = purchase_command(b, "R-late", vec![line("A", 1, 1_000_00)], 0);
        let reply = harness.submit(request("late".into(), purchase)).await.unwrap();
        let (_, replied) = balance_of(&json(&reply));
        assert_eq!(replied, harness.balance(b).await, "a light load counts the kept totals as the lots do");
        harness.assert_ledger_sound("after purchases, a redemption, a merge and activation").await;
        harness.clock.advance(SignedDuration::from_hours(24 * 800));
        jobs::run_once(&harness.state.store, &harness.state.writer, &*harness.clock, Job::Expiry, None).await.unwrap();
        harness.assert_ledger_sound("after expiry").await;

        let kept: Option<String> = sqlx::query_scalar("SELECT lot_totals FROM members WHERE id = $1")
            .bind(b)
            .fetch_one(&harness.state.store.pool)
            .await
            .unwrap();
        assert_eq!(kept, None, "everything expired: nothing is kept");
        sqlx::query(r#"UPDATE members SET lot_totals = '[["PTS",0,7]]' WHERE id = $1"#)
            .bind(b)
            .execute(&harness.state.store.pool)
            .await
            .unwrap();
        let report = harness.state.store.verify().await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains(&format!("member {b} ")) && p.contains("lot_totals says 7")),
            "{:?}",
            report.problems
        );
        harness.stop().await;
    }
}

both_stores! {
    async fn the_due_keys_bring_the_jobs_to_each_member_in_time_and_a_drift_is_reported() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let store = &harness.state.store;
        let (a, b) = (create_member(&harness, "C-a").await, create_member(&harness, "C-b").await);
        let pool = store.pool.clone();
        let keys_of = |member: i64| {
            let pool = pool.clone();
            async move {
                let row: (Option<i64>, Option<i64>) =
                    sqlx::query_as("SELECT next_due, next_expiry FROM members WHERE id = $1")
                        .bind(member)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                row
            }
        };
        assert_eq!(keys_of(a).await, (None, None), "no lots, no keys");
        let purchase = purchase_command(a, "R-1", vec![line("A", 1, 2_000_00)], 0);
        harness.submit(request("p-1".into(), purchase)).await.unwrap();
        let lot: (i64, i64) = sqlx::query_as("SELECT available_from, expires_at FROM lots WHERE member_id = $1")
            .bind(a)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(keys_of(a).await, (Some(lot.0), Some(lot.1)), "a pending lot is due when its window closes");
        assert_eq!(keys_of(b).await, (None, None));
        let due = || store.members_with_due_lots(None, harness.clock.now(), 10);
        assert!(due().await.unwrap().is_empty(), "nothing is due before the window closes");

        harness.clock.advance(SignedDuration::from_hours(24 * 30));
        assert_eq!(due().await.unwrap(), vec![(TenantId(1), MemberId(a))]);
        jobs::run_once(store, &harness.state.writer, &*harness.clock, Job::Activate, None).await.unwrap();
        assert_eq!(keys_of(a).await, (Some(lot.1), Some(lot.1)), "an available lot is due when it expires");
        assert!(due().await.unwrap().is_empty(), "activated: nothing due until the expiry");
        harness.assert_ledger_sound("after activation").await;

        // A key that drifted from the lots would hide the member from the jobs: verify says so.
        sqlx::query("UPDATE members SET next_due = NULL WHERE id = $1").bind(a).execute(&store.pool).await.unwrap();
        let report = store.verify().await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains(&format!("member {a}: due keys"))),
            "{:?}",
            report.problems
        );
        harness.stop().await;
    }
}

both_stores! {
    async fn a_key_that_keeps_only_the_status_replays_an_empty_body() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let member = create_member(&harness, "C-1").await;
        let status_only = |command: Command| {
            let mut request = request("import:purchase:R-1".into(), command);
            request.idempotency.as_mut().unwrap().kept = Kept::Status;
            request
        };
        let first = harness.submit(status_only(purchase_command(member, "R-1", vec![line("A", 1, 500_00)], 0))).await;
        let first = first.unwrap();
        assert!(!first.replayed && first.status == 201 && !first.body.is_empty(), "the first answer is whole");
        let again = harness.submit(status_only(purchase_command(member, "R-1", vec![line("A", 1, 500_00)], 0))).await;
        let again = again.unwrap();
        assert!(again.replayed && again.status == 201, "{again:?}");
        assert!(again.body.is_empty(), "only the status was kept");
        let changed = harness.submit(status_only(purchase_command(member, "R-1", vec![line("A", 2, 500_00)], 0))).await;
        assert_eq!(code(&changed.unwrap_err()), "idempotency_key_reused", "the hash is still compared");
        assert_eq!(harness.purchase_count().await, 1);
        harness.stop().await;
    }
}

both_stores! {
    async fn refused_requests_fail_alone_and_the_rest_of_their_batch_commits() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let mut members = Vec::new();
        for i in 0..20 {
            members.push(create_member(&harness, &format!("C-{i}")).await);
        }
        harness.submit(request("adjust".into(), adjust_command(members[0], 100))).await.unwrap();
        harness
            .submit(request("before".into(), purchase_command(members[1], "R-before", vec![line("A", 1, 500_00)], 0)))
            .await
            .unwrap();

        let mut requests = Vec::new();
        let mut expected: Vec<Option<&str>> = Vec::new();
        for i in 0..200 {
            let member = members[i % members.len()];
            let (command, refusal) = match i {
                17 => (purchase_command(UNKNOWN_MEMBER, "R-17", vec![line("A", 1, 1_000_00)], 0), Some("member_not_found")),
                // 1,000 RUB allows 500 points, but the member has none.
                55 => {
                    (purchase_command(members[5], "R-55", vec![line("A", 1, 1_000_00)], 300), Some("insufficient_points"))
                }
                // The member has 100 points; 60 fit the share of a 100 RUB bill? No: at most 50.
                88 => (purchase_command(members[0], "R-88", vec![line("A", 1, 100_00)], 60), Some("redeem_share_exceeded")),
                // A receipt recorded before the batch, and one recorded earlier in it.
                120 => (purchase_command(member, "R-before", vec![line("A", 1, 1_000_00)], 0), Some("duplicate_purchase")),
                150 => (purchase_command(member, "R-3", vec![line("A", 1, 1_000_00)], 0), Some("duplicate_purchase")),
                _ => (purchase_command(member, &format!("R-{i}"), vec![line("A", 2, 500_00 + i as i64)], 0), None),
            };
            requests.push(request(format!("p-{i}"), command));
            expected.push(refusal);
        }
        let batches_before = harness.state.metrics.writer_batches.load(std::sync::atomic::Ordering::Relaxed);
        let answers = harness.burst(requests).await;
        let batches = harness.state.metrics.writer_batches.load(std::sync::atomic::Ordering::Relaxed) - batches_before;
        assert!(batches <= 2, "the burst shared a batch (took {batches} commits)");

        let mut purchase_ids = BTreeSet::new();
        for (i, (answer, refusal)) in answers.into_iter().zip(&expected).enumerate() {
            match (answer, refusal) {
                (Ok(reply), None) => {
                    assert_eq!(reply.status, 201, "request {i}");
                    assert!(purchase_ids.insert(json(&reply)["purchase"]["id"].as_i64().unwrap()), "ids are unique");
                }
                (Err(error), Some(code_expected)) => assert_eq!(code(&error), *code_expected, "request {i}"),
                (answer, refusal) => panic!("request {i}: expected {refusal:?}, got {answer:?}"),
            }
        }
        assert_eq!(purchase_ids.len(), 195);
        assert_eq!(harness.purchase_count().await, 196, "every valid purchase and the one before were recorded");
        let mut earn_movements = 0;
        for member in &members {
            earn_movements += harness.history_len(*member).await;
        }
        // 195 earns, the adjustment, and the purchase before the batch.
        assert_eq!(earn_movements, 195 + 2);
        assert_eq!(harness.balance(members[0]).await, Balance { available: 100, pending: 9 * 10 });
        harness.assert_ledger_sound("after the batch").await;
        harness.stop().await;
    }
}

both_stores! {
    async fn an_answered_purchase_survives_a_restart_and_ids_continue_after_it() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let member = create_member(&harness, "C-1").await;
        let first = harness
            .submit(request("first".into(), purchase_command(member, "R-1", vec![line("A", 1, 4_000_00)], 0)))
            .await
            .expect("recorded");
        let first = json(&first);
        let purchase_id = first["purchase"]["id"].as_i64().unwrap();
        let lot_id = first["purchase"]["earn_lot_id"].as_i64().unwrap();
        let clock = harness.clock.clone();
        harness.stop().await;

        let harness = Harness::open(&dir.database, clock).await;
        let record = harness.state.store.purchase(TENANT, PurchaseId(purchase_id)).await.unwrap().expect("still there");
        assert_eq!(record.external_id, "R-1");
        assert_eq!(record.points_earned, 40);
        let lots = harness.state.store.lots(TENANT, MemberId(member), false).await.unwrap();
        assert_eq!(lots.len(), 1);
        assert_eq!(lots[0].id.0, lot_id);
        assert_eq!(harness.balance(member).await, Balance { available: 0, pending: 40 });

        let retry = harness
            .submit(request("first".into(), purchase_command(member, "R-1", vec![line("A", 1, 4_000_00)], 0)))
            .await
            .expect("replayed");
        assert!(retry.replayed, "the idempotency record survived too");
        let second = harness
            .submit(request("second".into(), purchase_command(member, "R-2", vec![line("A", 1, 1_000_00)], 0)))
            .await
            .expect("a new writer records purchases");
        let second = json(&second);
        assert!(second["purchase"]["id"].as_i64().unwrap() > purchase_id);
        assert!(second["purchase"]["earn_lot_id"].as_i64().unwrap() > lot_id);
        let other = create_member(&harness, "C-2").await;
        assert!(other > member);
        assert_eq!(harness.balance(member).await, Balance { available: 0, pending: 50 });
        assert_eq!(harness.history_len(member).await, 2);
        harness.assert_ledger_sound("after the restart").await;
        harness.stop().await;
    }
}

both_stores! {
    async fn two_writers_on_one_database_never_collide_on_ids() {
        let dir = test_store().await;
        let serve = Harness::fresh(&dir.database).await;
        // Opened after bootstrap, like `kopilka import` beside a running server.
        let import = Harness::open(&dir.database, serve.clock.clone()).await;
        let mut members = Vec::new();
        for i in 0..6 {
            let harness = if i % 2 == 0 { &serve } else { &import };
            members.push(create_member(harness, &format!("C-{i}")).await);
        }
        assert_eq!(members.iter().collect::<BTreeSet<_>>().len(), members.len(), "member ids are unique");

        let mut purchase_ids = BTreeSet::new();
        let mut lot_ids = BTreeSet::new();
        let mut expected_points: HashMap<i64, i64> = HashMap::new();
        for round in 0..8 {
            let mut on_serve = Vec::new();
            let mut on_import = Vec::new();
            for i in 0..20 {
                let member = members[(round + i) % members.len()];
                let amount_minor = 100_00 * (1 + i as i64);
                *expected_points.entry(member).or_default() += amount_minor / 100_00;
                let command = purchase_command(member, &format!("R-{round}-{i}"), vec![line("A", 1, amount_minor)], 0);
                let target = if i % 2 == 0 { &mut on_serve } else { &mut on_import };
                target.push(request(format!("k-{round}-{i}"), command));
            }
            // The same key sent to both writers at once: one records it, the other replays it.
            let shared = purchase_command(members[0], &format!("R-{round}-shared"), vec![line("A", 1, 100_00)], 0);
            *expected_points.entry(members[0]).or_default() += 1;
            on_serve.push(request(format!("shared-{round}"), shared.clone()));
            on_import.push(request(format!("shared-{round}"), shared));
            let (a, b) = tokio::join!(serve.burst(on_serve), import.burst(on_import));
            let (mut recorded, mut replayed) = (0, 0);
            for answer in a.into_iter().chain(b) {
                let reply = answer.expect("every purchase is recorded");
                if reply.replayed {
                    replayed += 1;
                    continue;
                }
                recorded += 1;
                let body = json(&reply);
                assert!(purchase_ids.insert(body["purchase"]["id"].as_i64().unwrap()), "purchase ids are unique");
                assert!(lot_ids.insert(body["purchase"]["earn_lot_id"].as_i64().unwrap()), "lot ids are unique");
            }
            assert_eq!((recorded, replayed), (21, 1), "round {round}");
            serve.assert_ledger_sound(&format!("round {round}")).await;
        }
        assert_eq!(serve.purchase_count().await, purchase_ids.len());
        for member in &members {
            let balance = serve.balance(*member).await;
            assert_eq!(balance, Balance { available: 0, pending: expected_points[member] }, "member {member}");
        }
        import.stop().await;
        serve.stop().await;
    }
}

both_stores! {
    async fn merged_member_chains_strand_points() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let a = create_member(&harness, "C-A").await;
        let s = create_member(&harness, "C-S").await;
        let t = create_member(&harness, "C-T").await;
        let merge = |survivor: i64, absorbed: i64| Command::MergeMembers {
            survivor_id: MemberId(survivor),
            absorbed_id: MemberId(absorbed),
        };
        harness.submit(request("m1".into(), merge(s, a))).await.expect("A merges into S");
        harness.submit(request("m2".into(), merge(t, s))).await.expect("S, which absorbed A, merges into T");
        let reply = harness
            .submit(request("p".into(), purchase_command(a, "R-1", vec![line("A", 1, 1_000_00)], 0)))
            .await
            .expect("a purchase with A's card");
        let (credited, _) = balance_of(&json(&reply));
        assert_eq!(credited, t, "the purchase credits the member A was finally merged into");
        assert_eq!(harness.balance(t).await, Balance { available: 0, pending: 10 });
        assert_eq!(harness.balance(s).await, Balance::default(), "a merged member holds no points");
        harness.stop().await;
    }
}

both_stores! {
    async fn a_card_freed_and_taken_in_one_batch_commits_as_one_batch() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let mut members = Vec::new();
        for i in 0..20 {
            members.push(create_member(&harness, &format!("OLD-{i}")).await);
        }
        let mut requests = Vec::new();
        for (i, member) in members.iter().enumerate() {
            let patch = serde_json::json!({ "card": format!("NEW-{i}") });
            requests.push(request(format!("update-{i}"), Command::UpdateMember { member_id: MemberId(*member), patch }));
            requests.push(request(format!("create-{i}"), create_member_command(&format!("OLD-{i}"))));
        }
        let answers = harness.burst(requests).await;
        for answer in answers {
            answer.expect("decided in order, every request is accepted");
        }
        let failures = harness.state.metrics.writer_commit_failures.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(failures, 0, "the batch committed as one transaction, without falling back");
        harness.assert_ledger_sound("after the batch").await;
        harness.stop().await;
    }
}

both_stores! {
    async fn a_batch_naming_two_members_merged_into_one_survivor_sees_its_points_once() {
        let dir = test_store().await;
        let harness = Harness::fresh(&dir.database).await;
        let survivor = create_member(&harness, "C-S").await;
        let a = create_member(&harness, "C-A").await;
        let b = create_member(&harness, "C-B").await;
        harness.submit(request("adjust".into(), adjust_command(survivor, 100))).await.unwrap();
        for (key, absorbed) in [("m1", a), ("m2", b)] {
            let merge = Command::MergeMembers { survivor_id: MemberId(survivor), absorbed_id: MemberId(absorbed) };
            harness.submit(request(key.into(), merge)).await.expect("merged");
        }
        // One batch names both absorbed members, and not the survivor.
        let answers = harness
            .burst(vec![request("r1".into(), redeem_command(a, 1)), request("r2".into(), redeem_command(b, 150))])
            .await;
        let first = answers[0].as_ref().expect("1 point of 100 is there");
        assert_eq!(balance_of(&json(first)).1, Balance { available: 99, pending: 0 }, "the survivor's points, once");
        let second = answers[1].as_ref().map(json);
        assert_eq!(second.map_err(code).err().as_deref(), Some("insufficient_points"), "99 points cannot pay 150");
        assert_eq!(harness.balance(survivor).await, Balance { available: 99, pending: 0 });
        harness.assert_ledger_sound("after the batch").await;
        harness.stop().await;
    }
}
