//! The group-commit batch: one query per kind of row to load everything a batch of commands needs,
//! and one multi-row statement per table to write everything they decided.
//!
//! The writer decides each command in memory against what `load` returned (plus what earlier
//! commands of the same batch changed), so a batch of a thousand purchases costs a handful of
//! statements and one fsync.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use kopilka_core::ledger::Balance;
use kopilka_core::member::{Consents, Gender, IdentifierKind, Profile};
use kopilka_core::member_state::MemberState;
use kopilka_core::purchase::PurchaseRecord;
use kopilka_core::{
    DomainEvent, DueKeys, IdAllocator, Lot, LotId, LotState, MemberId, Movement, MovementId, PointCurrency, Program,
    ProgramId, PurchaseId, TenantId,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::pipeline::Pipeline;
use crate::sql::{Backend, Builder, BIND_VALUES_MAX};

use crate::checkout::{CheckoutWrites, LoadedCheckout};
use crate::{micros, MemberRow, Result, StoreError, StoredResponse};

/// What a batch of commands needs loaded.
#[derive(Debug, Default)]
pub struct BatchKeys {
    pub idempotency: Vec<(TenantId, String)>,
    pub members: Vec<(TenantId, MemberId)>,
    /// Members whose commands only credit points and catch up to `light_at` (a purchase that
    /// redeems nothing, a catch-up job): loaded with the open lots due by then and the totals of
    /// the others (a partial `MemberLedger`), unless another key wants them whole.
    pub light_members: Vec<(TenantId, MemberId)>,
    pub light_at: Option<Timestamp>,
    pub purchase_ids: Vec<(TenantId, PurchaseId)>,
    pub purchase_external_ids: Vec<(TenantId, String)>,
    pub identifiers: Vec<(TenantId, IdentifierKind, String)>,
    pub checkouts: Vec<(TenantId, i64)>,
    /// Coupon codes; the codes loaded checkouts hold are added by `load`.
    pub coupons: Vec<(TenantId, String)>,
    pub rewards: crate::rewards::RewardKeys,
    pub referrals: crate::referrals::ReferralKeys,
    pub partners: crate::partners::PartnerKeys,
}

/// The open lots of a member loaded light that were left in the store: their remaining points by
/// currency and state, the moment up to which none of them changes state, and their due keys.
pub type Unloaded = (Vec<(PointCurrency, Balance)>, Timestamp, DueKeys);

/// What `load` found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub idempotency: HashMap<(TenantId, String), StoredResponse>,
    pub members: HashMap<(TenantId, MemberId), MemberRow>,
    /// Open lots of every loaded member; for members loaded light, only those due at `light_at`.
    pub lots: HashMap<(TenantId, MemberId), Vec<Lot>>,
    /// Members loaded light: the totals of the open lots not loaded.
    pub unloaded: HashMap<(TenantId, MemberId), Unloaded>,
    /// The due keys every loaded member's row holds (migration 0018), to tell which a batch changed.
    pub due_keys: HashMap<(TenantId, MemberId), DueKeys>,
    pub purchases: Vec<(TenantId, ProgramId, PurchaseRecord)>,
    pub identifiers: HashMap<(TenantId, IdentifierKind, String), MemberId>,
    pub checkout: LoadedCheckout,
    pub rewards: crate::rewards::RewardsLoaded,
    pub referrals: crate::referrals::ReferralsLoaded,
    pub partners: crate::partners::PartnersLoaded,
}

/// Everything a batch writes.
#[derive(Debug, Default)]
pub struct Writes {
    pub members: Vec<(TenantId, MemberRow)>,
    /// Members whose loyalty state alone changed (a purchase counted): a narrower write than `members`.
    pub member_states: Vec<(TenantId, MemberId, MemberState)>,
    /// Members of `member_states` whose job keys the batch left as they were loaded: their key
    /// columns are not written (left empty, every member's keys are compared in the database).
    pub job_keys_unchanged: HashSet<(TenantId, MemberId)>,
    pub lots: Vec<(TenantId, Lot)>,
    /// The totals of the open lots of every member whose lots changed, by currency and stored
    /// state, as they are after the batch (`MemberLedger::stored_totals`): kept in the member's
    /// row (`lot_totals`) for light loads. A listed member's column is replaced whole, so every
    /// currency it holds points in is listed.
    pub lot_totals: Vec<(TenantId, MemberId, PointCurrency, Balance)>,
    /// Members whose due keys (`MemberLedger::due_keys`) the batch changed, with the new keys:
    /// written on their own, as they are indexed (see `flush`).
    pub due_keys: Vec<(TenantId, MemberId, DueKeys)>,
    pub movements: Vec<(TenantId, Movement)>,
    /// Purchases recorded by the batch, inserted.
    pub purchases: Vec<(TenantId, ProgramId, PurchaseRecord)>,
    /// Purchases it loaded and changed (a return, a merge), rewritten in place.
    pub changed_purchases: Vec<(TenantId, ProgramId, PurchaseRecord)>,
    pub events: Vec<(TenantId, i64, DomainEvent, Timestamp)>,
    pub idempotency: Vec<(TenantId, String, StoredResponse, Timestamp)>,
    /// Members whose personal data is erased: their stored answers are deleted.
    pub erased: Vec<(TenantId, MemberId)>,
    /// Merges as (absorbed, survivor): members merged into the absorbed one move to the survivor.
    pub merges: Vec<(TenantId, MemberId, MemberId)>,
    pub checkout: CheckoutWrites,
    pub rewards: crate::rewards::RewardWrites,
    pub referrals: crate::referrals::ReferralWrites,
    pub partners: crate::partners::PartnerWrites,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.member_states.is_empty()
            && self.lots.is_empty()
            && self.lot_totals.is_empty()
            && self.due_keys.is_empty()
            && self.movements.is_empty()
            && self.purchases.is_empty()
            && self.changed_purchases.is_empty()
            && self.events.is_empty()
            && self.idempotency.is_empty()
            && self.erased.is_empty()
            && self.merges.is_empty()
            && self.checkout.is_empty()
            && self.rewards.is_empty()
            && self.referrals.is_empty()
            && self.partners.is_empty()
    }
}

pub(crate) fn chunk_rows(columns: usize) -> usize {
    BIND_VALUES_MAX / columns
}

pub(crate) const MEMBER_COLUMNS: &str = "id, card, phone, email, external_id, name, birth_date, gender, city, consents, time_zone, language, state, signup_at, merged_into, created_at, updated_at";

/// The jobs' keys kept beside a member's state (migrations 0009 and 0014), in [`job_keys`]'s order.
pub(crate) const JOB_KEY_COLUMNS: &str = "manual_tier_until, tier_review_key, first_purchase_day";

/// A member's job keys in [`JOB_KEY_COLUMNS`]' order.
pub type JobKeys = (Option<i64>, Option<String>, Option<String>);

/// A member's job keys as stored: always derived from its state, never set on their own.
pub fn job_keys(state: &MemberState) -> JobKeys {
    (state.manual_tier_until().map(micros::of), state.tier_review_key(), state.first_purchase_day())
}

/// A member's columns in `MEMBER_COLUMNS`' order, from a row or from one element of a JSON array
/// (`Backend::json_rows`; serde reads a struct from an array field by field).
#[derive(serde::Deserialize)]
struct MemberValues {
    id: i64,
    card: Option<String>,
    phone: Option<String>,
    email: Option<String>,
    external_id: Option<String>,
    name: Option<String>,
    birth_date: Option<String>,
    gender: Option<String>,
    city: Option<String>,
    consents: String,
    time_zone: Option<String>,
    language: Option<String>,
    state: String,
    signup_at: i64,
    merged_into: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

pub(crate) fn member_of_row(row: &AnyRow) -> Result<MemberRow> {
    member_of_values(MemberValues {
        id: row.get("id"),
        card: row.get("card"),
        phone: row.get("phone"),
        email: row.get("email"),
        external_id: row.get("external_id"),
        name: row.get("name"),
        birth_date: row.get("birth_date"),
        gender: row.get("gender"),
        city: row.get("city"),
        consents: row.get("consents"),
        time_zone: row.get("time_zone"),
        language: row.get("language"),
        state: row.get("state"),
        signup_at: row.get("signup_at"),
        merged_into: row.get("merged_into"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn member_of_values(values: MemberValues) -> Result<MemberRow> {
    let corrupt = |detail: String| StoreError::Corrupt { table: "members", detail };
    let MemberValues {
        id,
        card,
        phone,
        email,
        external_id,
        name,
        birth_date,
        gender,
        city,
        consents,
        time_zone,
        language,
        state,
        signup_at,
        merged_into,
        created_at,
        updated_at,
    } = values;
    Ok(MemberRow {
        id: MemberId(id),
        profile: Profile {
            card,
            phone,
            email,
            external_id,
            name,
            birth_date: birth_date.map(|d| d.parse()).transpose().map_err(|e: jiff::Error| corrupt(e.to_string()))?,
            gender: gender.map(|g| Gender::parse(&g).ok_or_else(|| corrupt(g))).transpose()?,
            city,
            consents: serde_json::from_str::<Consents>(&consents).map_err(|e| corrupt(e.to_string()))?,
            time_zone,
            language,
        },
        state: serde_json::from_str(&state).map_err(|e| corrupt(e.to_string()))?,
        signup_at: micros::to_ts(signup_at),
        merged_into: merged_into.map(MemberId),
        created_at: micros::to_ts(created_at),
        updated_at: micros::to_ts(updated_at),
    })
}

pub(crate) const LOT_COLUMNS: &str =
    "id, member_id, currency, amount, remaining, available_from, expires_at, state, movement_id, purchase_id";

/// A lot's columns in `LOT_COLUMNS`' order, from a row or from an element of a `Backend::json_rows` array.
type LotValues = (i64, i64, String, i64, i64, i64, i64, String, i64, Option<i64>);

pub(crate) fn lot_of_row(row: &AnyRow) -> Result<Lot> {
    lot_of_values((
        row.get("id"),
        row.get("member_id"),
        row.get("currency"),
        row.get("amount"),
        row.get("remaining"),
        row.get("available_from"),
        row.get("expires_at"),
        row.get("state"),
        row.get("movement_id"),
        row.get("purchase_id"),
    ))
}

fn lot_of_values(values: LotValues) -> Result<Lot> {
    let (id, member_id, currency, amount, remaining, available_from, expires_at, state, movement_id, purchase_id) =
        values;
    let corrupt = |detail: String| StoreError::Corrupt { table: "lots", detail };
    Ok(Lot {
        id: LotId(id),
        member_id: MemberId(member_id),
        currency: PointCurrency::parse(&currency).map_err(|e| corrupt(e.to_string()))?,
        amount,
        remaining,
        available_from: micros::to_ts(available_from),
        expires_at: micros::to_ts(expires_at),
        state: LotState::parse(&state).ok_or_else(|| corrupt(state))?,
        movement_id: MovementId(movement_id),
        purchase_id: purchase_id.map(PurchaseId),
    })
}

/// The rows of a `Backend::json_rows` value, each read as a `T`.
pub(crate) fn rows_of_json<T: serde::de::DeserializeOwned>(text: &str, table: &'static str) -> Result<Vec<T>> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt { table, detail: format!("rows as JSON: {error}") })
}

pub(crate) fn purchase_of_row(row: &AnyRow) -> Result<(TenantId, ProgramId, PurchaseRecord)> {
    let record: String = row.get("record");
    let record = serde_json::from_str(&record)
        .map_err(|error| StoreError::Corrupt { table: "purchases", detail: error.to_string() })?;
    Ok((TenantId(row.get("tenant_id")), ProgramId(row.get("program_id")), record))
}

/// Loads what `keys` names. Members are loaded with their open lots.
///
/// Every lookup joins the wanted keys as a constant table `k(t, v)` to the indexed table, so each
/// key is one index search on both databases: SQLite does not search an index for
/// `(a, b) IN (VALUES …)`, and its plan for the join scans `k` and searches the table.
pub async fn load(conn: &mut AnyConnection, keys: &BatchKeys) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let backend = Backend::of(conn);
    // Each lookup as one index search per key (`Backend::join_each`), whatever the statistics.
    let join = |table: &str, on: &str| {
        let (join, end) = backend.join_each(table, None, on);
        format!("{join}TRUE{end}")
    };
    for chunk in keys.idempotency.chunks(chunk_rows(2)) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, key)| {
            b.push_bind(tenant.0).push_bind(key);
        });
        query.push(format!(
            ") SELECT tenant_id, key, request_hash, status, body, member_id FROM k{}",
            join("idempotency", "idempotency.tenant_id = k.t AND idempotency.key = k.v")
        ));
        for row in query.fetch_all(&mut *conn).await? {
            let status: i64 = row.get(3);
            loaded.idempotency.insert(
                (TenantId(row.get(0)), row.get(1)),
                StoredResponse {
                    request_hash: row.get(2),
                    status: status as u16,
                    body: row.get(4),
                    member_id: row.get::<Option<i64>, _>(5).map(MemberId),
                },
            );
        }
    }

    let mut members = keys.members.clone();
    loaded.referrals = crate::referrals::load(conn, &keys.referrals, &mut members).await?;
    loaded.partners = crate::partners::load(conn, &keys.partners, &mut members).await?;
    for chunk in keys.purchase_ids.chunks(chunk_rows(2)) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, id)| {
            b.push_bind(tenant.0).push_bind(id.0);
        });
        query.push(format!(
            ") SELECT tenant_id, program_id, record FROM k{}",
            join("purchases", "purchases.tenant_id = k.t AND purchases.id = k.v")
        ));
        for row in query.fetch_all(&mut *conn).await? {
            loaded.purchases.push(purchase_of_row(&row)?);
        }
    }
    for chunk in keys.purchase_external_ids.chunks(chunk_rows(2)) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, id)| {
            b.push_bind(tenant.0).push_bind(id);
        });
        query.push(format!(
            ") SELECT tenant_id, program_id, record FROM k{}",
            join("purchases", "purchases.tenant_id = k.t AND purchases.external_id = k.v")
        ));
        for row in query.fetch_all(&mut *conn).await? {
            loaded.purchases.push(purchase_of_row(&row)?);
        }
    }
    members.extend(loaded.purchases.iter().map(|(tenant, _, record)| (*tenant, record.member_id)));
    let (checkout, checkout_members) = crate::checkout::load(&mut *conn, &keys.checkouts, &keys.coupons).await?;
    // Codes that are no coupon may be reward vouchers: their redemptions load with the rewards.
    let mut reward_keys = keys.rewards.clone();
    reward_keys.redemptions.extend(checkout.vouchers.iter().map(|((tenant, _), id)| (*tenant, *id)));
    loaded.checkout = checkout;
    members.extend(checkout_members);
    loaded.rewards = crate::rewards::load(conn, &reward_keys, &mut members).await?;

    for kind in IdentifierKind::ALL {
        let wanted: Vec<_> = keys.identifiers.iter().filter(|(_, k, _)| *k == kind).collect();
        for chunk in wanted.chunks(chunk_rows(2)) {
            let mut query = Builder::new("WITH k(t, v) AS (");
            query.push_keys(chunk, |mut b, (tenant, _, value)| {
                b.push_bind(tenant.0).push_bind(value);
            });
            let on = format!("members.tenant_id = k.t AND members.{0} = k.v", kind.as_str());
            query.push(format!(") SELECT tenant_id, id, {} FROM k{}", kind.as_str(), join("members", &on)));
            for row in query.fetch_all(&mut *conn).await? {
                let tenant = TenantId(row.get(0));
                let member = MemberId(row.get(1));
                loaded.identifiers.insert((tenant, kind, row.get(2)), member);
                members.push((tenant, member));
            }
        }
    }

    // A merged member's commands go to the survivor, so survivors are loaded too. Stored merges are
    // one hop: when a survivor is itself absorbed, `flush` re-points the members merged into it.
    members.sort();
    members.dedup();
    let mut survivors = Vec::new();
    load_members(conn, &members, &mut loaded, &mut survivors).await?;
    if let Some(at) = keys.light_at {
        // Whole wins: a member another key names, or the survivor of one, may be debited.
        let mut light: Vec<_> = keys
            .light_members
            .iter()
            .filter(|key| members.binary_search(key).is_err() && !survivors.contains(key))
            .copied()
            .collect();
        light.sort();
        light.dedup();
        load_light_members(conn, &light, at, &mut loaded, &mut survivors).await?;
    }
    survivors.sort();
    survivors.dedup();
    survivors.retain(|key| !loaded.members.contains_key(key));
    let mut beyond = Vec::new();
    load_members(conn, &survivors, &mut loaded, &mut beyond).await?;
    assert!(beyond.is_empty(), "a survivor was itself merged: stored merges must be one hop");
    Ok(loaded)
}

async fn load_members(
    conn: &mut AnyConnection,
    keys: &[(TenantId, MemberId)],
    loaded: &mut Loaded,
    survivors: &mut Vec<(TenantId, MemberId)>,
) -> Result<()> {
    for chunk in keys.chunks(chunk_rows(2)) {
        let (_, lots) = load_members_with_lots(conn, chunk, None, loaded, survivors).await?;
        for (tenant, lot) in lots {
            loaded.lots.entry((tenant, lot.member_id)).or_default().push(lot);
        }
    }
    Ok(())
}

/// The member rows of `chunk`, each with no lots yet (the survivors of merged ones are noted), and
/// their open lots: all of them, or with `due_by` only those whose stored state changes by then.
/// One statement for both, each a subquery over the same constant table: on PostgreSQL the writer
/// waits a round trip for every statement. Returns the members found, each with the open-lot
/// totals its row keeps (`lot_totals`), and the lots; the due keys go to `loaded.due_keys`.
async fn load_members_with_lots(
    conn: &mut AnyConnection,
    chunk: &[(TenantId, MemberId)],
    due_by: Option<Timestamp>,
    loaded: &mut Loaded,
    survivors: &mut Vec<(TenantId, MemberId)>,
) -> Result<(Vec<((TenantId, MemberId), Option<String>)>, Vec<(TenantId, Lot)>)> {
    let backend = Backend::of(conn);
    let mut query = Builder::new("WITH k(t, v) AS (");
    query.push_keys(chunk, |mut b, (tenant, id)| {
        b.push_bind(tenant.0).push_bind(id.0);
    });
    let member = backend.json_array(MEMBER_COLUMNS);
    let lot = backend.json_array(LOT_COLUMNS);
    let (members_join, members_end) =
        backend.join_each("members", None, "members.tenant_id = k.t AND members.id = k.v");
    let (lots_join, lots_end) =
        backend.join_each("lots", Some("lots_member"), "lots.tenant_id = k.t AND lots.member_id = k.v");
    query.push(format!(
        ") SELECT (SELECT {} FROM k{members_join}TRUE{members_end}), \
         (SELECT {} FROM k{lots_join}state IN ('pending', 'available')",
        backend.json_rows(&format!(
            "members.tenant_id, {member}, members.lot_totals, members.next_due, members.next_expiry"
        )),
        backend.json_rows(&format!("lots.tenant_id, {lot}")),
    ));
    if let Some(at) = due_by {
        // Due by `at` exactly when `Lot::state_at(at)` differs from the stored state.
        query.push(format!(" AND {} <= ", backend.lot_due_at()));
        query.push_bind(micros::of(at));
    }
    query.push(format!("{lots_end})"));
    let rows = query.fetch_all(&mut *conn).await?;
    let row = rows.first().ok_or(StoreError::Corrupt { table: "members", detail: "no row of JSON".into() })?;
    type Values = (i64, MemberValues, Option<String>, Option<i64>, Option<i64>);
    let members: Vec<Values> = rows_of_json(row.get(0), "members")?;
    let lots: Vec<(i64, LotValues)> = rows_of_json(row.get(1), "lots")?;
    let mut found = Vec::new();
    for (tenant, values, lot_totals, next_due, next_expiry) in members {
        let tenant = TenantId(tenant);
        let member = member_of_values(values)?;
        if let Some(survivor) = member.merged_into {
            survivors.push((tenant, survivor));
        }
        let keys = DueKeys { next_due: next_due.map(micros::to_ts), next_expiry: next_expiry.map(micros::to_ts) };
        loaded.due_keys.insert((tenant, member.id), keys);
        found.push(((tenant, member.id), lot_totals));
        loaded.lots.insert((tenant, member.id), Vec::new());
        loaded.members.insert((tenant, member.id), member);
    }
    let lots = lots.into_iter().map(|(tenant, values)| Ok((TenantId(tenant), lot_of_values(values)?)));
    Ok((found, lots.collect::<Result<_>>()?))
}

/// Members with only the lots that catching up to `at` changes, and the totals of the others.
async fn load_light_members(
    conn: &mut AnyConnection,
    keys: &[(TenantId, MemberId)],
    at: Timestamp,
    loaded: &mut Loaded,
    survivors: &mut Vec<(TenantId, MemberId)>,
) -> Result<()> {
    for chunk in keys.chunks(chunk_rows(2)) {
        let (found, due) = load_members_with_lots(conn, chunk, Some(at), loaded, survivors).await?;
        // The totals of every open lot by stored state (kept in the member's row), less the due lots'.
        let mut due_sums: HashMap<(TenantId, MemberId, &PointCurrency), Balance> = HashMap::new();
        for (tenant, lot) in &due {
            let sums = due_sums.entry((*tenant, lot.member_id, &lot.currency)).or_default();
            match lot.state {
                LotState::Pending => sums.pending += lot.remaining,
                _ => sums.available += lot.remaining,
            }
        }
        let mut left = Vec::new();
        for (key, kept) in found {
            let mut totals = crate::lot_totals::decode(kept.as_deref())?;
            for (currency, balance) in &mut totals {
                let due = due_sums.get(&(key.0, key.1, &*currency)).copied().unwrap_or_default();
                balance.pending -= due.pending;
                balance.available -= due.available;
            }
            left.push((key, totals));
        }
        // The due keys of the lots left: the row's own when none was due (so none was loaded);
        // none when nothing is left (an open lot holds points); else read from the lots beyond
        // `at`. The jobs load members whose every lot is due, so they never read them.
        let has_due = |key: &(TenantId, MemberId)| loaded.due_keys[key].next_due.is_some_and(|due| due <= at);
        let holds =
            |totals: &[(PointCurrency, Balance)]| totals.iter().any(|(_, b)| b.pending != 0 || b.available != 0);
        let wanted: Vec<_> =
            left.iter().filter(|(key, totals)| has_due(key) && holds(totals)).map(|(key, _)| *key).collect();
        let mut beyond = due_keys_beyond(conn, &wanted, at).await?;
        for (key, totals) in left {
            let keys = match beyond.remove(&key) {
                Some(keys) => keys,
                None if has_due(&key) => DueKeys::default(),
                None => loaded.due_keys[&key],
            };
            loaded.unloaded.insert(key, (totals, at, keys));
        }
        for (tenant, lot) in due {
            loaded.lots.entry((tenant, lot.member_id)).or_default().push(lot);
        }
    }
    Ok(())
}

/// The due keys of the open lots of `members` not due by `at`: those a light load leaves in the
/// store. Each is read in order from `lots_member`, which sorts a member's lots by state and due
/// moment: the first available lot beyond `at` (its due moment is its expiry) and the pending
/// ones beyond it (few: only the purchases inside the return window). Members without such lots
/// are not in the answer.
async fn due_keys_beyond(
    conn: &mut AnyConnection,
    members: &[(TenantId, MemberId)],
    at: Timestamp,
) -> Result<HashMap<(TenantId, MemberId), DueKeys>> {
    let backend = Backend::of(conn);
    let due = backend.lot_due_at();
    let lots = format!(
        "FROM lots{} WHERE lots.tenant_id = k.t AND lots.member_id = k.v AND {due} > k.a AND state = ",
        backend.indexed_by("lots_member")
    );
    let mut found = HashMap::new();
    for chunk in members.chunks(chunk_rows(3)) {
        let mut query = Builder::new("WITH k(t, v, a) AS (");
        query.push_keys(chunk, |mut b, (tenant, member)| {
            b.push_bind(tenant.0).push_bind(member.0).push_bind(micros::of(at));
        });
        query.push(format!(
            ") SELECT k.t, k.v, (SELECT {due} {lots}'available' ORDER BY {due} LIMIT 1),
                 (SELECT MIN({due}) {lots}'pending'), (SELECT MIN(expires_at) {lots}'pending') FROM k"
        ));
        for row in query.fetch_all(&mut *conn).await? {
            let (available, pending_due, pending_expiry): (Option<i64>, Option<i64>, Option<i64>) =
                (row.get(2), row.get(3), row.get(4));
            let ts = |at: Option<i64>| at.map(micros::to_ts);
            let keys = DueKeys { next_due: ts(available), next_expiry: ts(available) }
                .and(DueKeys { next_due: ts(pending_due), next_expiry: ts(pending_expiry) });
            if keys != DueKeys::default() {
                found.insert((TenantId(row.get(0)), MemberId(row.get(1))), keys);
            }
        }
    }
    Ok(found)
}

/// Writes everything a batch decided. Members are upserted (a batch may change rows it loaded);
/// lots and purchases are inserted when the batch made them and updated otherwise; movements,
/// postings, events and idempotency records are only ever inserted. Statements go through a
/// [`Pipeline`], each sent while the next is built. On SQLite they say `OR FAIL` (see
/// [`Backend::write_verb`]); the checkouts, rewards, referrals and partner receipts written after
/// them are upserted.
pub async fn flush(conn: &mut AnyConnection, writes: &Writes) -> Result<()> {
    let backend = Backend::of(conn);
    let (insert, update) = (backend.write_verb("INSERT"), backend.write_verb("UPDATE"));
    // What the statements are built from, worked out before the first is sent: each statement
    // borrows its values until it has run, one statement behind the code building the next.
    let mut totals: HashMap<(TenantId, MemberId), Vec<(&PointCurrency, Balance)>> = HashMap::new();
    for (tenant, member, currency, balance) in &writes.lot_totals {
        totals.entry((*tenant, *member)).or_default().push((currency, *balance));
    }
    let states: Vec<_> = writes
        .member_states
        .iter()
        .map(|(tenant, member, state)| {
            // Some(None): the member's lots changed and nothing is left in them.
            let kept = totals.remove(&(*tenant, *member)).map(|of_member| crate::lot_totals::encode(&of_member));
            (tenant, member, state, kept)
        })
        .collect();
    // Members whose lots changed but not their state (a new member, a job that left it as it was).
    let mut rest: Vec<_> =
        totals.into_iter().map(|(key, of_member)| (key, crate::lot_totals::encode(&of_member))).collect();
    rest.sort_by_key(|(key, _)| *key);
    let keys_may_change: Vec<_> = writes
        .member_states
        .iter()
        .filter(|(tenant, member, _)| !writes.job_keys_unchanged.contains(&(*tenant, *member)))
        .collect();
    // A lot is new when the movement that credited it is in this batch: only `credit` makes lots,
    // with a movement id it allocates. New lots are inserted; the others (an activation, an expiry,
    // a redemption, a merge moving it to the survivor) updated in the columns that may change.
    // Either statement fails when the split is wrong: an insert over an existing lot breaks the
    // primary key, and the update must find every lot it names.
    let created: HashSet<(TenantId, MovementId)> = writes.movements.iter().map(|(t, m)| (*t, m.id)).collect();
    let (mut new_lots, mut changed_lots): (Vec<_>, Vec<_>) =
        writes.lots.iter().partition(|(tenant, lot)| created.contains(&(*tenant, lot.movement_id)));
    // In key order: the engine hands them out member by member in no order, and each statement
    // then walks the lots' b-trees back and forth.
    new_lots.sort_unstable_by_key(|(tenant, lot)| (*tenant, lot.id));
    changed_lots.sort_unstable_by_key(|(tenant, lot)| (*tenant, lot.id));
    let postings: Vec<_> = writes
        .movements
        .iter()
        .flat_map(|(tenant, m)| m.postings.iter().enumerate().map(move |(seq, p)| (tenant, m, seq, p)))
        .collect();
    let mut pipe = Pipeline::new(conn);

    // Identifiers may move between members within a batch (one gives up a card, another takes it).
    // The batch's final state has no duplicates, but rows are written in no particular order, so
    // the rows being rewritten first let go of their identifiers.
    for chunk in writes.members.chunks(chunk_rows(2)) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, m)| {
            b.push_bind(tenant.0).push_bind(m.id.0);
        });
        query.push(format!(
            ") {update} members SET card = NULL, phone = NULL, email = NULL, external_id = NULL FROM k
             WHERE members.tenant_id = k.t AND members.id = k.v",
        ));
        pipe.send(query).await?;
    }
    // Binds per row: the tenant, the member columns, and the job keys.
    let member_binds = 1 + MEMBER_COLUMNS.split(',').count() + JOB_KEY_COLUMNS.split(',').count();
    for chunk in writes.members.chunks(chunk_rows(member_binds)) {
        let mut query = Builder::new(format!("INSERT INTO members (tenant_id, {MEMBER_COLUMNS}, {JOB_KEY_COLUMNS}) "));
        query.push_rows(chunk, |mut b, (tenant, m)| {
            let (until, review, first_purchase) = job_keys(&m.state);
            b.push_bind(tenant.0)
                .push_bind(m.id.0)
                .push_bind(&m.profile.card)
                .push_bind(&m.profile.phone)
                .push_bind(&m.profile.email)
                .push_bind(&m.profile.external_id)
                .push_bind(&m.profile.name)
                .push_bind(m.profile.birth_date.map(|d| d.to_string()))
                .push_bind(m.profile.gender.map(|g| g.as_str()))
                .push_bind(&m.profile.city)
                .push_bind(serde_json::to_string(&m.profile.consents).expect("consents serialize"))
                .push_bind(&m.profile.time_zone)
                .push_bind(&m.profile.language)
                .push_bind(serde_json::to_string(&m.state).expect("member states serialize"))
                .push_bind(micros::of(m.signup_at))
                .push_bind(m.merged_into.map(|s| s.0))
                .push_bind(micros::of(m.created_at))
                .push_bind(micros::of(m.updated_at))
                .push_bind(until)
                .push_bind(review)
                .push_bind(first_purchase);
        });
        query.push(
            " ON CONFLICT (tenant_id, id) DO UPDATE SET card = excluded.card, phone = excluded.phone,
              email = excluded.email, external_id = excluded.external_id, name = excluded.name,
              birth_date = excluded.birth_date, gender = excluded.gender, city = excluded.city,
              consents = excluded.consents, time_zone = excluded.time_zone, language = excluded.language,
              state = excluded.state, merged_into = excluded.merged_into, updated_at = excluded.updated_at,
              manual_tier_until = excluded.manual_tier_until, tier_review_key = excluded.tier_review_key,
              first_purchase_day = excluded.first_purchase_day",
        );
        pipe.send(query).await?;
    }

    // The open-lot totals, absolute values kept in the member's row: the writer decided them from
    // the whole of each changed ledger (or its loaded lots plus the unloaded totals). Written with
    // the member's state where that changed too, so the row is rewritten once. A member absorbed
    // by a merge has no open lots left.
    for (tenant, absorbed, _) in &writes.merges {
        let mut query = Builder::new("UPDATE members SET lot_totals = NULL WHERE tenant_id = ");
        query.push_bind(tenant.0).push(" AND id = ").push_bind(absorbed.0);
        pipe.send(query).await?;
    }
    for chunk in states.chunks(chunk_rows(5)) {
        let mut query = Builder::new("WITH k(t, v, s, h, x) AS (");
        query.push_keys(chunk, |mut b, (tenant, member, state, kept)| {
            b.push_bind(tenant.0)
                .push_bind(member.0)
                .push_bind(serde_json::to_string(state).expect("member states serialize"))
                .push_bind(i64::from(kept.is_some()))
                .push_bind(kept.as_ref().and_then(|kept| kept.as_deref()));
        });
        query.push(format!(
            ") {update} members SET state = k.s, lot_totals = CASE WHEN k.h = 1 THEN k.x ELSE members.lot_totals END
             FROM k WHERE members.tenant_id = k.t AND members.id = k.v",
        ));
        pipe.send(query).await?;
    }
    for chunk in rest.chunks(chunk_rows(3)) {
        let mut query = Builder::new("WITH k(t, v, x) AS (");
        query.push_keys(chunk, |mut b, ((tenant, member), of_member)| {
            b.push_bind(tenant.0).push_bind(member.0).push_bind(of_member.as_deref());
        });
        query.push(format!(
            ") {update} members SET lot_totals = k.x FROM k WHERE members.tenant_id = k.t AND members.id = k.v"
        ));
        pipe.send(query).await?;
    }
    // The due keys, only those the batch changed (the engine compares them with the row's), in a
    // statement of their own: indexed columns, rewritten in their indexes whenever set.
    for chunk in writes.due_keys.chunks(chunk_rows(4)) {
        let mut query = Builder::new("WITH k(t, v, d, e) AS (");
        query.push_keys(chunk, |mut b, (tenant, member, keys)| {
            b.push_bind(tenant.0)
                .push_bind(member.0)
                .push_bind(keys.next_due.map(micros::of))
                .push_bind(keys.next_expiry.map(micros::of));
        });
        query.push(format!(
            ") {update} members SET next_due = k.d, next_expiry = k.e FROM k
             WHERE members.tenant_id = k.t AND members.id = k.v",
        ));
        pipe.send_expecting(query, chunk.len() as u64, "members", "members whose due keys changed").await?;
    }
    // The jobs' keys beside the state are indexed, and an UPDATE that sets a column rewrites its
    // indexes even to the same value: so the state alone first (a page per member), then the keys
    // of only the members whose keys changed (a tier reviewed, a first purchase, a manual tier),
    // of those the engine did not find unchanged.
    for chunk in keys_may_change.chunks(chunk_rows(5)) {
        let mut query = Builder::new("WITH k(t, v, u, r, f) AS (");
        query.push_keys(chunk, |mut b, (tenant, member, state)| {
            let (until, review, first_purchase) = job_keys(state);
            b.push_bind(tenant.0).push_bind(member.0).push_bind(until).push_bind(review).push_bind(first_purchase);
        });
        query.push(format!(
            ") {update} members SET manual_tier_until = k.u, tier_review_key = k.r, first_purchase_day = k.f FROM k
             WHERE members.tenant_id = k.t AND members.id = k.v
               AND (members.manual_tier_until IS DISTINCT FROM k.u OR members.tier_review_key IS DISTINCT FROM k.r
                    OR members.first_purchase_day IS DISTINCT FROM k.f)",
        ));
        pipe.send(query).await?;
    }

    // A member absorbed after absorbing others hands them on, so every stored merge stays one hop.
    for (tenant, absorbed, survivor) in &writes.merges {
        let mut query = Builder::new("UPDATE members SET merged_into = ");
        query.push_bind(survivor.0).push(" WHERE tenant_id = ").push_bind(tenant.0);
        query.push(" AND merged_into = ").push_bind(absorbed.0);
        pipe.send(query).await?;
    }

    for chunk in new_lots.chunks(chunk_rows(11)) {
        let mut query = Builder::new(format!("{insert} INTO lots (tenant_id, {LOT_COLUMNS}) "));
        query.push_rows(chunk, |mut b, (tenant, lot)| {
            b.push_bind(tenant.0)
                .push_bind(lot.id.0)
                .push_bind(lot.member_id.0)
                .push_bind(lot.currency.as_str())
                .push_bind(lot.amount)
                .push_bind(lot.remaining)
                .push_bind(micros::of(lot.available_from))
                .push_bind(micros::of(lot.expires_at))
                .push_bind(lot.state.as_str())
                .push_bind(lot.movement_id.0)
                .push_bind(lot.purchase_id.map(|p| p.0));
        });
        pipe.send(query).await?;
    }
    for chunk in changed_lots.chunks(chunk_rows(5)) {
        let mut query = Builder::new("WITH k(t, i, m, r, s) AS (");
        query.push_keys(chunk, |mut b, (tenant, lot)| {
            b.push_bind(tenant.0)
                .push_bind(lot.id.0)
                .push_bind(lot.member_id.0)
                .push_bind(lot.remaining)
                .push_bind(lot.state.as_str());
        });
        query.push(format!(
            ") {update} lots SET member_id = k.m, remaining = k.r, state = k.s FROM k
             WHERE lots.tenant_id = k.t AND lots.id = k.i",
        ));
        pipe.send_expecting(query, chunk.len() as u64, "lots", "changed lots to update").await?;
    }

    for chunk in writes.movements.chunks(chunk_rows(8)) {
        let mut query = Builder::new(format!(
            "{insert} INTO movements (tenant_id, id, member_id, kind, currency, occurred_at, purchase_id, reason) "
        ));
        query.push_rows(chunk, |mut b, (tenant, m)| {
            m.assert_balanced();
            b.push_bind(tenant.0)
                .push_bind(m.id.0)
                .push_bind(m.member_id.0)
                .push_bind(m.kind.as_str())
                .push_bind(m.currency.as_str())
                .push_bind(micros::of(m.occurred_at))
                .push_bind(m.purchase_id.map(|p| p.0))
                .push_bind(&m.reason);
        });
        pipe.send(query).await?;
    }

    for chunk in postings.chunks(chunk_rows(9)) {
        let mut query = Builder::new(format!("{insert} INTO postings (tenant_id, movement_id, seq, account, member_id, currency, amount, lot_id, partner_id) "),
        );
        query.push_rows(chunk, |mut b, (tenant, m, seq, p)| {
            b.push_bind(tenant.0)
                .push_bind(m.id.0)
                .push_bind(*seq as i64)
                .push_bind(p.account.kind())
                .push_bind(p.account.member_id().map(|id| id.0))
                .push_bind(m.currency.as_str())
                .push_bind(p.amount)
                .push_bind(p.lot_id.map(|l| l.0))
                .push_bind(p.account.partner_id().map(|id| id.0));
        });
        pipe.send(query).await?;
    }

    for chunk in writes.purchases.chunks(chunk_rows(9)) {
        let mut query = Builder::new(format!("{insert} INTO purchases (tenant_id, id, member_id, external_id, program_id, occurred_at, total_minor, points_earned, record) "),
        );
        query.push_rows(chunk, |mut b, (tenant, program, p)| {
            b.push_bind(tenant.0)
                .push_bind(p.id.0)
                .push_bind(p.member_id.0)
                .push_bind(&p.external_id)
                .push_bind(program.0)
                .push_bind(micros::of(p.occurred_at))
                .push_bind(p.total_minor)
                .push_bind(p.points_earned)
                .push_bind(serde_json::to_string(p).expect("purchases serialize"));
        });
        pipe.send(query).await?;
    }
    for chunk in writes.changed_purchases.chunks(chunk_rows(4)) {
        let mut query = Builder::new("WITH k(t, i, m, r) AS (");
        query.push_keys(chunk, |mut b, (tenant, _, p)| {
            b.push_bind(tenant.0)
                .push_bind(p.id.0)
                .push_bind(p.member_id.0)
                .push_bind(serde_json::to_string(p).expect("purchases serialize"));
        });
        query.push(format!(
            ") {update} purchases SET member_id = k.m, record = k.r FROM k
             WHERE purchases.tenant_id = k.t AND purchases.id = k.i"
        ));
        pipe.send_expecting(query, chunk.len() as u64, "purchases", "changed purchases to update").await?;
    }

    for chunk in writes.events.chunks(chunk_rows(6)) {
        let mut query =
            Builder::new(format!("{insert} INTO events (tenant_id, id, kind, member_id, payload, occurred_at) "));
        query.push_rows(chunk, |mut b, (tenant, id, event, at)| {
            b.push_bind(tenant.0)
                .push_bind(*id)
                .push_bind(event.kind())
                .push_bind(event.member_id().0)
                .push_bind(serde_json::to_string(event).expect("events serialize"))
                .push_bind(micros::of(*at));
        });
        pipe.send(query).await?;
    }

    for (tenant, member) in &writes.erased {
        let mut query = Builder::new("DELETE FROM idempotency WHERE tenant_id = ");
        query.push_bind(tenant.0).push(" AND member_id = ").push_bind(member.0);
        pipe.send(query).await?;
    }
    for chunk in writes.idempotency.chunks(chunk_rows(7)) {
        let mut query = Builder::new(format!(
            "{insert} INTO idempotency (tenant_id, key, request_hash, status, body, member_id, created_at) "
        ));
        query.push_rows(chunk, |mut b, (tenant, key, response, at)| {
            b.push_bind(tenant.0)
                .push_bind(key)
                .push_bind(&response.request_hash)
                .push_bind(response.status as i64)
                .push_bind(&response.body)
                .push_bind(response.member_id.map(|m| m.0))
                .push_bind(micros::of(*at));
        });
        pipe.send(query).await?;
    }
    let conn = pipe.connection().await?;
    crate::checkout::flush(&mut *conn, &writes.checkout).await?;
    crate::rewards::flush(conn, &writes.rewards).await?;
    crate::referrals::flush(conn, &writes.referrals).await?;
    crate::partners::flush(conn, &writes.partners).await?;
    Ok(())
}

/// The writer's own connection.
pub type Connection = AnyConnection;

/// What a batch reads first, under the write lock.
pub struct Opened {
    /// The last ids handed out, as [`id_seeds`] reads them.
    pub seeds: (IdAllocator, i64),
    /// On PostgreSQL, every program's current version: a writer sharing the store with other nodes
    /// compares them with its cache, since another node may have saved a program. Empty on SQLite,
    /// where the writer is the only one that saves programs.
    pub program_versions: Vec<(TenantId, ProgramId, i64)>,
}

/// Opens a batch: BEGIN with the write lock ([`begin`]), then the id seeds. On PostgreSQL all of
/// it and the program versions in one round trip.
pub async fn open(conn: &mut Connection) -> Result<Opened> {
    if Backend::of(conn) != Backend::Postgres {
        begin(conn).await?;
        return Ok(Opened { seeds: id_seeds(conn).await?, program_versions: Vec::new() });
    }
    // With the transaction's opening, in the same round trip.
    let sql = format!(
        "{}; SELECT name, last, NULL::BIGINT, NULL::BIGINT FROM sequences
         UNION ALL SELECT NULL, tenant_id, id, version FROM programs",
        crate::sql::postgres_begin_write()
    );
    let rows = sqlx::raw_sql(&sql).fetch_all(&mut *conn).await?;
    let (mut seeds, mut program_versions) = (Vec::new(), Vec::new());
    for row in &rows {
        match row.get::<Option<String>, _>(0) {
            Some(name) => seeds.push((name, row.get(1))),
            None => program_versions.push((TenantId(row.get(1)), ProgramId(row.get(2)), row.get(3))),
        }
    }
    Ok(Opened { seeds: seeds_of(seeds)?, program_versions })
}

/// One program's current version, as `open` saw it changed.
pub async fn program(conn: &mut Connection, tenant: TenantId, id: ProgramId) -> Result<Option<(i64, Program)>> {
    let row = sqlx::query("SELECT id, version, document FROM programs WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.0)
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(crate::reads::program_of_row).transpose().map(|found| found.map(|(_, version, p)| (version, p)))
}

/// The last ids handed out, read inside the batch transaction (which holds the write lock).
/// Returns the allocator and the last event id.
pub async fn id_seeds(conn: &mut Connection) -> Result<(IdAllocator, i64)> {
    let rows = sqlx::query("SELECT name, last FROM sequences").fetch_all(&mut *conn).await?;
    seeds_of(rows.iter().map(|row| (row.get(0), row.get(1))))
}

fn seeds_of(rows: impl IntoIterator<Item = (String, i64)>) -> Result<(IdAllocator, i64)> {
    let mut ids = IdAllocator::default();
    let mut last_event_id = 0;
    for (name, last) in rows {
        match name.as_str() {
            "lot" => ids.next_lot = last,
            "movement" => ids.next_movement = last,
            "purchase" => ids.next_purchase = last,
            "member" => ids.next_member = last,
            "checkout" => ids.next_checkout = last,
            "event" => last_event_id = last,
            _ => return Err(StoreError::Corrupt { table: "sequences", detail: name }),
        }
    }
    Ok((ids, last_event_id))
}

/// Stores the last ids a batch handed out, in its transaction.
pub async fn save_id_seeds(conn: &mut Connection, ids: &IdAllocator, last_event_id: i64) -> Result<()> {
    sqlx::raw_sql(&save_id_seeds_sql(ids, last_event_id)).execute(&mut *conn).await?;
    Ok(())
}

/// [`save_id_seeds`] and [`commit`] in one round trip (on SQLite, one hop to its thread).
pub async fn commit_with_seeds(conn: &mut Connection, ids: &IdAllocator, last_event_id: i64) -> Result<()> {
    let sql = format!("{}; COMMIT", save_id_seeds_sql(ids, last_event_id));
    sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    Ok(())
}

/// The ids are integers written into the statement, so it can go with others in one query.
fn save_id_seeds_sql(ids: &IdAllocator, last_event_id: i64) -> String {
    format!(
        "UPDATE sequences SET last = CASE name WHEN 'lot' THEN {} WHEN 'movement' THEN {} WHEN 'purchase' THEN {}
         WHEN 'member' THEN {} WHEN 'event' THEN {} WHEN 'checkout' THEN {} ELSE last END",
        ids.next_lot, ids.next_movement, ids.next_purchase, ids.next_member, last_event_id, ids.next_checkout
    )
}

/// Starts the batch transaction holding the store's write lock (`sql::begin_write`): on SQLite
/// the database lock, on PostgreSQL a cluster-wide advisory lock, so batches of every node
/// serialize and each loads what the one before committed.
pub async fn begin(conn: &mut Connection) -> Result<()> {
    crate::sql::begin_write(conn).await
}

/// Commits. The batch is durable when this returns, except on the server writer's SQLite
/// connection, whose answers wait for `wal_sync::WalFile::sync` instead.
pub async fn commit(conn: &mut Connection) -> Result<()> {
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// Abandons the batch. Errors are ignored: with no transaction open there is nothing to undo.
pub async fn rollback(conn: &mut Connection) {
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
}
