//! The double-entry points ledger: accounts, postings, movements and lots.
//!
//! Every change of points is a [`Movement`]: postings between accounts that sum to zero, per
//! currency. Points held by a member live in two accounts, pending (inside the return window) and
//! available, and every credit to those accounts creates a [`Lot`] that later debits consume,
//! soonest-expiring first. A member's balance in each account always equals the sum of `remaining`
//! over the member's lots in that state; the store checks this after the fact (`verify`) and the
//! functions below assert it as they go.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{DomainError, IdAllocator, LotId, MemberId, MovementId, PartnerId, PointCurrency, PurchaseId};

/// An account of the ledger. System accounts are per tenant and currency; they go negative as the
/// program issues points, so the sum over all accounts stays zero.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "AccountParts", try_from = "AccountParts")]
pub enum Account {
    /// Points a member earned that are still inside the return window.
    MemberPending(MemberId),
    /// Points a member may spend.
    MemberAvailable(MemberId),
    /// The source of every point the program gives.
    Issued,
    /// Where points spent as payment go.
    Redeemed,
    /// Where points that outlived their lot go.
    Expired,
    /// The other side of manual adjustments.
    Adjustments,
    /// Where points spent on catalogue rewards go (and come back from when one is cancelled).
    Rewards,
    /// Points a member turned into money: the business owes their value as a cashback payout.
    Cashback,
    /// The source of points members earned at a partner: the partner owes their cost.
    PartnerIssued(PartnerId),
    /// Where points members spent at a partner go: the program owes the partner their value.
    PartnerRedeemed(PartnerId),
    /// The bridge of coalition exchanges: points of one program go in, points of another come
    /// out, each side balanced in its own currency.
    Exchange,
}

/// An account as stored and sent: its kind and the member or partner it belongs to.
#[derive(Serialize, Deserialize)]
struct AccountParts {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member_id: Option<MemberId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partner_id: Option<PartnerId>,
}

impl From<Account> for AccountParts {
    fn from(account: Account) -> AccountParts {
        AccountParts { kind: account.kind().into(), member_id: account.member_id(), partner_id: account.partner_id() }
    }
}

impl TryFrom<AccountParts> for Account {
    type Error = String;

    fn try_from(parts: AccountParts) -> Result<Account, String> {
        Account::from_row(&parts.kind, parts.member_id, parts.partner_id)
            .ok_or_else(|| format!("unknown account {:?}", parts.kind))
    }
}

impl Account {
    /// The stable name of the account's kind, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Account::MemberPending(_) => "member_pending",
            Account::MemberAvailable(_) => "member_available",
            Account::Issued => "issued",
            Account::Redeemed => "redeemed",
            Account::Expired => "expired",
            Account::Adjustments => "adjustments",
            Account::Rewards => "rewards",
            Account::Cashback => "cashback",
            Account::PartnerIssued(_) => "partner_issued",
            Account::PartnerRedeemed(_) => "partner_redeemed",
            Account::Exchange => "exchange",
        }
    }

    /// The partner a partner account belongs to.
    pub fn partner_id(&self) -> Option<PartnerId> {
        match self {
            Account::PartnerIssued(partner) | Account::PartnerRedeemed(partner) => Some(*partner),
            _ => None,
        }
    }

    /// The inverse of `kind()`, `member_id()` and `partner_id()`.
    pub fn from_row(kind: &str, member_id: Option<MemberId>, partner_id: Option<PartnerId>) -> Option<Account> {
        match (kind, member_id, partner_id) {
            ("partner_issued", None, Some(partner)) => Some(Account::PartnerIssued(partner)),
            ("partner_redeemed", None, Some(partner)) => Some(Account::PartnerRedeemed(partner)),
            (_, _, None) => Account::from_parts(kind, member_id),
            _ => None,
        }
    }

    pub fn member_id(&self) -> Option<MemberId> {
        match self {
            Account::MemberPending(member) | Account::MemberAvailable(member) => Some(*member),
            _ => None,
        }
    }

    /// The inverse of `kind()` and `member_id()`.
    pub fn from_parts(kind: &str, member_id: Option<MemberId>) -> Option<Account> {
        Some(match (kind, member_id) {
            ("member_pending", Some(member)) => Account::MemberPending(member),
            ("member_available", Some(member)) => Account::MemberAvailable(member),
            ("issued", None) => Account::Issued,
            ("redeemed", None) => Account::Redeemed,
            ("expired", None) => Account::Expired,
            ("adjustments", None) => Account::Adjustments,
            ("rewards", None) => Account::Rewards,
            ("cashback", None) => Account::Cashback,
            ("exchange", None) => Account::Exchange,
            _ => return None,
        })
    }
}

/// One side of a movement: `amount` points into `account` (negative: out of it). Postings on member
/// accounts name the lot they change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: Account,
    pub amount: i64,
    pub lot_id: Option<LotId>,
}

/// What a movement records.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    Earn,
    Activate,
    Redeem,
    Reverse,
    Restore,
    Expire,
    Adjust,
    Merge,
}

impl MovementKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MovementKind::Earn => "earn",
            MovementKind::Activate => "activate",
            MovementKind::Redeem => "redeem",
            MovementKind::Reverse => "reverse",
            MovementKind::Restore => "restore",
            MovementKind::Expire => "expire",
            MovementKind::Adjust => "adjust",
            MovementKind::Merge => "merge",
        }
    }

    pub fn parse(text: &str) -> Option<MovementKind> {
        Some(match text {
            "earn" => MovementKind::Earn,
            "activate" => MovementKind::Activate,
            "redeem" => MovementKind::Redeem,
            "reverse" => MovementKind::Reverse,
            "restore" => MovementKind::Restore,
            "expire" => MovementKind::Expire,
            "adjust" => MovementKind::Adjust,
            "merge" => MovementKind::Merge,
            _ => return None,
        })
    }
}

/// A balanced set of postings in one point currency.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    pub id: MovementId,
    pub kind: MovementKind,
    pub member_id: MemberId,
    pub currency: PointCurrency,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub occurred_at: Timestamp,
    pub postings: Vec<Posting>,
    pub purchase_id: Option<PurchaseId>,
    pub reason: Option<String>,
}

impl Movement {
    /// Panics unless the postings sum to zero and none is zero: a movement that is not balanced
    /// must never be written.
    pub fn assert_balanced(&self) {
        let sum: i64 = self.postings.iter().map(|p| p.amount).sum();
        assert_eq!(sum, 0, "movement {} ({:?}) is not balanced", self.id, self.kind);
        assert!(self.postings.iter().all(|p| p.amount != 0), "zero posting in movement {}", self.id);
        assert!(
            self.postings.iter().all(|p| p.account.member_id().is_none() || p.lot_id.is_some()),
            "a member posting without a lot in movement {}",
            self.id
        );
    }

    /// The net change of the member's own accounts (pending plus available).
    pub fn member_delta(&self) -> i64 {
        self.postings.iter().filter(|p| p.account.member_id() == Some(self.member_id)).map(|p| p.amount).sum()
    }
}

/// Where a lot is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotState {
    /// Earned, inside the return window: counted but not spendable.
    Pending,
    /// Spendable until `expires_at`.
    Available,
    /// What remained at `expires_at` went to the expired account.
    Expired,
    /// Fully consumed, or moved to another member by a merge.
    Closed,
}

impl LotState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LotState::Pending => "pending",
            LotState::Available => "available",
            LotState::Expired => "expired",
            LotState::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<LotState> {
        Some(match text {
            "pending" => LotState::Pending,
            "available" => LotState::Available,
            "expired" => LotState::Expired,
            "closed" => LotState::Closed,
            _ => return None,
        })
    }
}

/// One credit of points to a member, and what is left of it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub id: LotId,
    pub member_id: MemberId,
    pub currency: PointCurrency,
    pub amount: i64,
    pub remaining: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub available_from: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    pub state: LotState,
    pub movement_id: MovementId,
    pub purchase_id: Option<PurchaseId>,
}

impl Lot {
    /// The state the lot is in at `now`, whether or not the jobs have caught up with it yet.
    pub fn state_at(&self, now: Timestamp) -> LotState {
        match self.state {
            LotState::Pending | LotState::Available if self.expires_at <= now => LotState::Expired,
            LotState::Pending if self.available_from <= now => LotState::Available,
            state => state,
        }
    }

    /// When the jobs must next look at the lot, by its stored state: a pending lot at the end of
    /// its return window (or its expiry, if sooner), an available one at its expiry; never for a
    /// lot that holds nothing. The SQL twin is `Backend::lot_due_at`, which the index of a
    /// member's lots orders by.
    pub fn due_at(&self) -> Option<Timestamp> {
        match self.state {
            LotState::Pending => Some(self.available_from.min(self.expires_at)),
            LotState::Available => Some(self.expires_at),
            LotState::Expired | LotState::Closed => None,
        }
    }

    fn account(&self) -> Account {
        match self.state {
            LotState::Pending => Account::MemberPending(self.member_id),
            LotState::Available => Account::MemberAvailable(self.member_id),
            LotState::Expired | LotState::Closed => {
                panic!("lot {} in state {:?} holds no points", self.id, self.state)
            }
        }
    }

    fn assert_valid(&self) {
        assert!(self.amount > 0, "lot {} has a non-positive amount", self.id);
        assert!((0..=self.amount).contains(&self.remaining), "lot {} remaining out of range", self.id);
        let open = matches!(self.state, LotState::Pending | LotState::Available);
        assert_eq!(
            open,
            self.remaining > 0,
            "lot {} state {:?} with remaining {}",
            self.id,
            self.state,
            self.remaining
        );
    }
}

/// A member's balance at a moment, in one point currency.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub available: i64,
    pub pending: i64,
}

/// When a member's open lots next need a job, and when the soonest of their points expire: the
/// least [`Lot::due_at`] and the least `expires_at` over the open lots (`None` without any). The
/// store keeps both in the member's row, so the catch-up jobs and the expiry reminders find their
/// members from one index over members instead of one over every lot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DueKeys {
    pub next_due: Option<Timestamp>,
    pub next_expiry: Option<Timestamp>,
}

impl DueKeys {
    /// The keys of a set of open lots with this one added (unchanged by a lot that holds nothing).
    pub fn with(self, lot: &Lot) -> DueKeys {
        let Some(due) = lot.due_at() else { return self };
        let least = |kept: Option<Timestamp>, at: Timestamp| Some(kept.map_or(at, |kept| kept.min(at)));
        DueKeys { next_due: least(self.next_due, due), next_expiry: least(self.next_expiry, lot.expires_at) }
    }

    /// The keys of two disjoint sets of open lots together.
    pub fn and(self, other: DueKeys) -> DueKeys {
        let least = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        DueKeys {
            next_due: least(self.next_due, other.next_due),
            next_expiry: least(self.next_expiry, other.next_expiry),
        }
    }
}

/// What the ledger knows of one member: the member's open lots (and, until the store flushes them,
/// lots that this batch closed). Lots not open never change again, so they need not be loaded.
///
/// A ledger may also be *partial* ([`MemberLedger::partial`]): only the lots that catching up to
/// a given moment changes are loaded, and the others are known by their totals. That is all a
/// purchase without a redemption, a bonus or a catch-up needs (they credit and catch up, and
/// report the balance), and it spares loading hundreds of lots for a member who buys every day.
/// Whatever takes points from lots (debits, merges, reminders by expiry date) asserts that the
/// ledger is complete: the writer loads every open lot for such commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLedger {
    pub member_id: MemberId,
    pub lots: Vec<Lot>,
    /// Lots created or changed since the store last saved this ledger.
    pub dirty: Vec<LotId>,
    /// For a partial ledger, the totals of the open lots left unloaded, by currency, and the
    /// moment (`until`) up to which none of them changes state.
    unloaded: Option<Unloaded>,
}

/// The panic payload of a partial ledger asked for what needs every lot (see
/// [`MemberLedger::assert_complete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialLedger {
    pub member_id: MemberId,
    pub what: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Unloaded {
    totals: Vec<(PointCurrency, Balance)>,
    until: Timestamp,
    keys: DueKeys,
}

/// Where a new credit lands.
#[derive(Debug, Clone)]
pub struct Credit {
    pub currency: PointCurrency,
    pub amount: i64,
    pub available_from: Timestamp,
    pub expires_at: Timestamp,
    pub purchase_id: Option<PurchaseId>,
}

impl MemberLedger {
    pub fn new(member_id: MemberId, lots: Vec<Lot>) -> MemberLedger {
        for lot in &lots {
            assert_eq!(lot.member_id, member_id);
            lot.assert_valid();
        }
        MemberLedger { member_id, lots, dirty: Vec::new(), unloaded: None }
    }

    /// A partial ledger: `due` holds the member's open lots whose state changes at or before
    /// `until` (so `catch_up` up to `until` sees every lot it must move), `totals` the remaining
    /// points of every other open lot, by currency and state, and `keys` those lots' due keys.
    pub fn partial(
        member_id: MemberId,
        due: Vec<Lot>,
        totals: Vec<(PointCurrency, Balance)>,
        until: Timestamp,
        keys: DueKeys,
    ) -> MemberLedger {
        for lot in &due {
            assert!(lot.state_at(until) != lot.state, "lot {} is not due at {until}", lot.id);
        }
        assert!(keys.next_due.is_none_or(|due| due > until), "an unloaded lot is due by {until}");
        let mut ledger = MemberLedger::new(member_id, due);
        ledger.unloaded = Some(Unloaded { totals, until, keys });
        ledger
    }

    /// Whether every open lot is loaded.
    pub fn is_complete(&self) -> bool {
        self.unloaded.is_none()
    }

    /// Unwinds with a [`PartialLedger`] unless every open lot is loaded: `what` would take points
    /// from lots it cannot see. The writer catches it and decides the batch again with every
    /// ledger whole, so a command its keys misjudged costs a second load, never a wrong answer.
    pub fn assert_complete(&self, what: &'static str) {
        if !self.is_complete() {
            std::panic::panic_any(PartialLedger { member_id: self.member_id, what });
        }
    }

    /// The member's balance at `now`, counting lots by the state they are in at `now`.
    pub fn balance(&self, currency: &PointCurrency, now: Timestamp) -> Balance {
        let mut balance = Balance::default();
        if let Some(unloaded) = &self.unloaded {
            if now > unloaded.until {
                // The unloaded lots may have changed state by then.
                std::panic::panic_any(PartialLedger { member_id: self.member_id, what: "a later balance" });
            }
            for (_, totals) in unloaded.totals.iter().filter(|(c, _)| c == currency) {
                balance.available += totals.available;
                balance.pending += totals.pending;
            }
        }
        for lot in self.lots.iter().filter(|lot| &lot.currency == currency) {
            match lot.state_at(now) {
                LotState::Available => balance.available += lot.remaining,
                LotState::Pending => balance.pending += lot.remaining,
                LotState::Expired | LotState::Closed => {}
            }
        }
        balance
    }

    /// The remaining points of the open lots by currency and *stored* state (not the state at a
    /// moment): what the store keeps per member beside the lots, so that a light load reads one
    /// row instead of every lot. Every currency the ledger holds a lot of (open, or closed in this
    /// batch) or an unloaded total of is listed, at zero where nothing is left.
    pub fn stored_totals(&self) -> Vec<(PointCurrency, Balance)> {
        let mut totals: Vec<(PointCurrency, Balance)> =
            self.unloaded.as_ref().map(|unloaded| unloaded.totals.clone()).unwrap_or_default();
        for lot in &self.lots {
            let index = match totals.iter().position(|(c, _)| *c == lot.currency) {
                Some(index) => index,
                None => {
                    totals.push((lot.currency.clone(), Balance::default()));
                    totals.len() - 1
                }
            };
            match lot.state {
                LotState::Available => totals[index].1.available += lot.remaining,
                LotState::Pending => totals[index].1.pending += lot.remaining,
                LotState::Expired | LotState::Closed => {}
            }
        }
        totals
    }

    /// The due keys of the member's open lots, by their stored states (what the store keeps
    /// beside them once this ledger is written), the unloaded ones included.
    pub fn due_keys(&self) -> DueKeys {
        let unloaded = self.unloaded.as_ref().map(|unloaded| unloaded.keys).unwrap_or_default();
        self.lots.iter().fold(unloaded, DueKeys::with)
    }

    fn touch(&mut self, lot_id: LotId) {
        if !self.dirty.contains(&lot_id) {
            self.dirty.push(lot_id);
        }
    }

    /// Brings the lots up to `now`: activates those whose return window closed and expires those
    /// whose time ran out. Returns at most one activation and one expiry movement per currency.
    pub fn catch_up(&mut self, now: Timestamp, ids: &mut IdAllocator) -> Vec<Movement> {
        if self.unloaded.as_ref().is_some_and(|unloaded| now > unloaded.until) {
            std::panic::panic_any(PartialLedger { member_id: self.member_id, what: "a later catch-up" });
        }
        let mut activations: Vec<(PointCurrency, Vec<Posting>)> = Vec::new();
        let mut expiries: Vec<(PointCurrency, Vec<Posting>)> = Vec::new();
        let mut touched = Vec::new();
        for lot in &mut self.lots {
            let due = lot.state_at(now);
            if due == lot.state {
                continue;
            }
            touched.push(lot.id);
            let from = lot.account();
            match due {
                LotState::Available => {
                    lot.state = LotState::Available;
                    let to = lot.account();
                    push_pair(
                        &mut activations,
                        &lot.currency,
                        [(from, -lot.remaining, Some(lot.id)), (to, lot.remaining, Some(lot.id))],
                    );
                }
                LotState::Expired => {
                    push_pair(
                        &mut expiries,
                        &lot.currency,
                        [(from, -lot.remaining, Some(lot.id)), (Account::Expired, lot.remaining, None)],
                    );
                    lot.remaining = 0;
                    lot.state = LotState::Expired;
                }
                LotState::Pending | LotState::Closed => unreachable!("state_at never moves a lot backwards"),
            }
        }
        for lot_id in touched {
            self.touch(lot_id);
        }
        // Expired points go to the program's `expired` account in one posting per movement: the
        // lot side already names each lot, and a posting per lot on the system side would double
        // the rows an expiry run over millions of lots writes without saying anything more.
        for (_, postings) in &mut expiries {
            let expired: i64 = postings.iter().filter(|p| p.account == Account::Expired).map(|p| p.amount).sum();
            postings.retain(|p| p.account != Account::Expired);
            postings.push(Posting { account: Account::Expired, amount: expired, lot_id: None });
        }
        let mut movements = Vec::new();
        for (kind, groups) in [(MovementKind::Activate, activations), (MovementKind::Expire, expiries)] {
            for (currency, postings) in groups {
                movements.push(self.movement(ids, kind, currency, now, postings, None, None));
            }
        }
        movements
    }

    /// Credits `credit.amount` points as a new lot; the other side of the movement is `source`.
    /// The lot starts pending when `available_from` is after `now`.
    pub fn credit(
        &mut self,
        ids: &mut IdAllocator,
        kind: MovementKind,
        source: Account,
        credit: Credit,
        now: Timestamp,
        reason: Option<String>,
    ) -> Movement {
        assert!(credit.amount > 0, "a credit must be positive");
        assert!(source.member_id().is_none(), "credits come from system accounts");
        let lot_id = ids.lot();
        let movement_id = ids.movement();
        let state = if credit.available_from > now { LotState::Pending } else { LotState::Available };
        let lot = Lot {
            id: lot_id,
            member_id: self.member_id,
            currency: credit.currency.clone(),
            amount: credit.amount,
            remaining: credit.amount,
            available_from: credit.available_from,
            expires_at: credit.expires_at,
            state,
            movement_id,
            purchase_id: credit.purchase_id,
        };
        lot.assert_valid();
        let postings = vec![
            Posting { account: source, amount: -credit.amount, lot_id: None },
            Posting { account: lot.account(), amount: credit.amount, lot_id: Some(lot_id) },
        ];
        self.lots.push(lot);
        self.touch(lot_id);
        let movement = Movement {
            id: movement_id,
            kind,
            member_id: self.member_id,
            currency: credit.currency,
            occurred_at: now,
            postings,
            purchase_id: credit.purchase_id,
            reason,
        };
        movement.assert_balanced();
        movement
    }

    /// Debits up to `amount` points into `sink`, taking lots soonest-expiring first (the lot
    /// `prefer`, if given, before all others) and pending lots only when `include_pending`.
    /// Returns the movement (None when nothing could be taken) and how much was taken. The caller
    /// must have caught the ledger up to `now` first.
    #[allow(clippy::too_many_arguments)]
    pub fn debit_up_to(
        &mut self,
        ids: &mut IdAllocator,
        kind: MovementKind,
        sink: Account,
        currency: &PointCurrency,
        amount: i64,
        include_pending: bool,
        prefer: Option<LotId>,
        now: Timestamp,
        purchase_id: Option<PurchaseId>,
        reason: Option<String>,
    ) -> (Option<Movement>, i64) {
        assert!(amount > 0, "a debit must be positive");
        assert!(sink.member_id().is_none(), "debits go to system accounts");
        self.assert_complete("a debit");
        let mut order: Vec<usize> = (0..self.lots.len())
            .filter(|&i| {
                let lot = &self.lots[i];
                assert_eq!(lot.state_at(now), lot.state, "debit before catch_up on lot {}", lot.id);
                &lot.currency == currency
                    && lot.remaining > 0
                    && (lot.state == LotState::Available || (include_pending && lot.state == LotState::Pending))
            })
            .collect();
        order.sort_by_key(|&i| {
            let lot = &self.lots[i];
            (Some(lot.id) != prefer, lot.expires_at, lot.id)
        });
        let mut left = amount;
        let mut postings = Vec::new();
        let mut touched = Vec::new();
        for i in order {
            if left == 0 {
                break;
            }
            let lot = &mut self.lots[i];
            let take = left.min(lot.remaining);
            postings.push(Posting { account: lot.account(), amount: -take, lot_id: Some(lot.id) });
            lot.remaining -= take;
            if lot.remaining == 0 {
                lot.state = LotState::Closed;
            }
            lot.assert_valid();
            touched.push(lot.id);
            left -= take;
        }
        for lot_id in touched {
            self.touch(lot_id);
        }
        let taken = amount - left;
        if taken == 0 {
            return (None, 0);
        }
        postings.push(Posting { account: sink, amount: taken, lot_id: None });
        let movement = self.movement(ids, kind, currency.clone(), now, postings, purchase_id, reason);
        (Some(movement), taken)
    }

    /// Debits exactly `amount` available points or refuses, changing nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn debit_available(
        &mut self,
        ids: &mut IdAllocator,
        kind: MovementKind,
        sink: Account,
        currency: &PointCurrency,
        amount: i64,
        now: Timestamp,
        purchase_id: Option<PurchaseId>,
        reason: Option<String>,
    ) -> Result<Movement, DomainError> {
        let available = self.balance(currency, now).available;
        if amount > available {
            return Err(DomainError::InsufficientPoints { available, requested: amount });
        }
        let (movement, taken) =
            self.debit_up_to(ids, kind, sink, currency, amount, false, None, now, purchase_id, reason);
        assert_eq!(taken, amount, "balance said {available} were available");
        Ok(movement.expect("a positive debit that fits makes a movement"))
    }

    /// Moves every open lot of `absorbed` to this member, one balanced movement per currency. A lot
    /// keeps its id, dates and origin, so a later return of the purchase that earned it still finds
    /// it.
    pub fn absorb(&mut self, absorbed: &mut MemberLedger, ids: &mut IdAllocator, now: Timestamp) -> Vec<Movement> {
        assert_ne!(self.member_id, absorbed.member_id);
        self.assert_complete("a merge");
        absorbed.assert_complete("a merge");
        let mut groups: Vec<(PointCurrency, Vec<Posting>)> = Vec::new();
        let (moving, staying): (Vec<Lot>, Vec<Lot>) =
            std::mem::take(&mut absorbed.lots).into_iter().partition(|lot| lot.remaining > 0);
        absorbed.lots = staying;
        absorbed.dirty.retain(|id| absorbed.lots.iter().any(|lot| lot.id == *id));
        for mut lot in moving {
            let from = lot.account();
            lot.member_id = self.member_id;
            let to = lot.account();
            push_pair(
                &mut groups,
                &lot.currency,
                [(from, -lot.remaining, Some(lot.id)), (to, lot.remaining, Some(lot.id))],
            );
            self.touch(lot.id);
            self.lots.push(lot);
        }
        groups
            .into_iter()
            .map(|(currency, postings)| self.movement(ids, MovementKind::Merge, currency, now, postings, None, None))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn movement(
        &self,
        ids: &mut IdAllocator,
        kind: MovementKind,
        currency: PointCurrency,
        occurred_at: Timestamp,
        postings: Vec<Posting>,
        purchase_id: Option<PurchaseId>,
        reason: Option<String>,
    ) -> Movement {
        let movement = Movement {
            id: ids.movement(),
            kind,
            member_id: self.member_id,
            currency,
            occurred_at,
            postings,
            purchase_id,
            reason,
        };
        movement.assert_balanced();
        movement
    }

    /// Lots the store must write back, and forgets that they are dirty. Closed and expired lots
    /// leave the in-memory ledger once handed out: they never change again.
    pub fn take_dirty(&mut self) -> Vec<Lot> {
        let dirty = std::mem::take(&mut self.dirty);
        let lots = dirty
            .iter()
            .map(|id| self.lots.iter().find(|lot| lot.id == *id).expect("dirty lot is held").clone())
            .collect();
        self.lots.retain(|lot| lot.remaining > 0);
        lots
    }
}

fn push_pair(
    groups: &mut Vec<(PointCurrency, Vec<Posting>)>,
    currency: &PointCurrency,
    pair: [(Account, i64, Option<LotId>); 2],
) {
    let index = match groups.iter().position(|(c, _)| c == currency) {
        Some(index) => index,
        None => {
            groups.push((currency.clone(), Vec::new()));
            groups.len() - 1
        }
    };
    for (account, amount, lot_id) in pair {
        groups[index].1.push(Posting { account, amount, lot_id });
    }
}
