//! Rows of the rewards catalogue: rewards, redemptions, cashback payouts and their id seeds.
//!
//! The writer's part follows `batch`: `load` fetches what a batch of reward commands needs with one
//! query per kind of row (and names the members those rows belong to, so `batch::load` loads them
//! with their lots), and `flush` upserts what the batch changed. The reads serve the API.

use std::collections::HashMap;

use jiff::Timestamp;
use kopilka_core::rewards::{
    CashbackPayout, PayoutId, PayoutStatus, RedemptionId, RedemptionStatus, Reward, RewardId, RewardIds,
    RewardRedemption, RewardSpec,
};
use kopilka_core::{MemberId, TenantId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::sql::{Backend, Builder};
use crate::{micros, Result, Store, StoreError};

/// Rows per multi-row statement: far under SQLite's bound-value limit for these narrow rows.
const CHUNK_ROWS_MAX: usize = 4_000;
/// The most rows a list read returns.
pub const PAGE_SIZE_MAX: i64 = 500;

/// What a batch of reward commands needs loaded.
#[derive(Debug, Default, Clone)]
pub struct RewardKeys {
    pub rewards: Vec<(TenantId, RewardId)>,
    /// Every redemption of a reward by a member, for per-member limits.
    pub member_rewards: Vec<(TenantId, MemberId, RewardId)>,
    pub redemptions: Vec<(TenantId, RedemptionId)>,
    pub payouts: Vec<(TenantId, PayoutId)>,
    /// The batch creates rows: the id seeds are needed even when nothing is loaded.
    pub needs_ids: bool,
}

impl RewardKeys {
    fn is_empty(&self) -> bool {
        !self.needs_ids
            && self.rewards.is_empty()
            && self.member_rewards.is_empty()
            && self.redemptions.is_empty()
            && self.payouts.is_empty()
    }
}

/// What `load` found.
#[derive(Debug, Default)]
pub struct RewardsLoaded {
    pub rewards: HashMap<(TenantId, RewardId), Reward>,
    pub redemptions: HashMap<(TenantId, RedemptionId), RewardRedemption>,
    pub payouts: HashMap<(TenantId, PayoutId), CashbackPayout>,
    /// Seeded inside the batch transaction; none when the batch has no reward command.
    pub ids: Option<RewardIds>,
}

/// What a batch of reward commands writes.
#[derive(Debug, Default)]
pub struct RewardWrites {
    pub rewards: Vec<(TenantId, Reward)>,
    pub redemptions: Vec<(TenantId, RewardRedemption)>,
    pub payouts: Vec<(TenantId, CashbackPayout)>,
    pub ids: Option<RewardIds>,
}

impl RewardWrites {
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty() && self.redemptions.is_empty() && self.payouts.is_empty()
    }
}

const REWARD_COLUMNS: &str = "id, spec, redeemed_count, created_at, updated_at";

fn reward_of_row(row: &AnyRow) -> Result<Reward> {
    let spec: String = row.get("spec");
    let spec: RewardSpec = serde_json::from_str(&spec)
        .map_err(|error| StoreError::Corrupt { table: "rewards", detail: error.to_string() })?;
    Ok(Reward {
        id: RewardId(row.get("id")),
        spec,
        redeemed_count: row.get("redeemed_count"),
        created_at: micros::to_ts(row.get("created_at")),
        updated_at: micros::to_ts(row.get("updated_at")),
    })
}

fn record_of_row<T: serde::de::DeserializeOwned>(row: &AnyRow, table: &'static str) -> Result<T> {
    let record: String = row.get("record");
    serde_json::from_str(&record).map_err(|error| StoreError::Corrupt { table, detail: error.to_string() })
}

/// A query over the constant table `k(t, v)` of wanted keys joined to `table`, as `batch` does, so
/// each key is one index search.
fn keyed_query<'a>(keys: &'a [(TenantId, i64)], select: &str) -> Builder<'a> {
    let mut query = Builder::new("WITH k(t, v) AS (");
    query.push_keys(keys, |mut b, (tenant, id)| {
        b.push_bind(tenant.0).push_bind(*id);
    });
    query.push(") ");
    query.push(select);
    query
}

/// Loads what `keys` names, and adds the members of the loaded redemptions to `members`.
pub async fn load(
    conn: &mut AnyConnection,
    keys: &RewardKeys,
    members: &mut Vec<(TenantId, MemberId)>,
) -> Result<RewardsLoaded> {
    let mut loaded = RewardsLoaded::default();
    if keys.is_empty() {
        return Ok(loaded);
    }
    let mut ids = RewardIds::default();
    for row in sqlx::query("SELECT name, last FROM reward_sequences").fetch_all(&mut *conn).await? {
        let last: i64 = row.get(1);
        match row.get::<&str, _>(0) {
            "reward" => ids.next_reward = last,
            "redemption" => ids.next_redemption = last,
            "payout" => ids.next_payout = last,
            other => return Err(StoreError::Corrupt { table: "reward_sequences", detail: other.to_string() }),
        }
    }
    loaded.ids = Some(ids);

    let payout_keys: Vec<_> = keys.payouts.iter().map(|(t, id)| (*t, id.0)).collect();
    let mut redemption_keys: Vec<_> = keys.redemptions.iter().map(|(t, id)| (*t, id.0)).collect();
    for chunk in payout_keys.chunks(CHUNK_ROWS_MAX) {
        let select = "SELECT tenant_id, record FROM k JOIN cashback_payouts ON cashback_payouts.tenant_id = k.t AND cashback_payouts.id = k.v";
        for row in keyed_query(chunk, select).fetch_all(&mut *conn).await? {
            let tenant = TenantId(row.get("tenant_id"));
            let payout: CashbackPayout = record_of_row(&row, "cashback_payouts")?;
            redemption_keys.push((tenant, payout.redemption_id.0));
            loaded.payouts.insert((tenant, payout.id), payout);
        }
    }
    let mut reward_keys: Vec<_> = keys.rewards.iter().map(|(t, id)| (*t, id.0)).collect();
    let mut more_payouts = Vec::new();
    for chunk in redemption_keys.chunks(CHUNK_ROWS_MAX) {
        let select = "SELECT tenant_id, record FROM k JOIN reward_redemptions ON reward_redemptions.tenant_id = k.t AND reward_redemptions.id = k.v";
        for row in keyed_query(chunk, select).fetch_all(&mut *conn).await? {
            let tenant = TenantId(row.get("tenant_id"));
            let redemption: RewardRedemption = record_of_row(&row, "reward_redemptions")?;
            reward_keys.push((tenant, redemption.reward_id.0));
            members.push((tenant, redemption.member_id));
            if let Some(payout) = redemption.cashback_payout_id {
                if !loaded.payouts.contains_key(&(tenant, payout)) {
                    more_payouts.push((tenant, payout.0));
                }
            }
            loaded.redemptions.insert((tenant, redemption.id), redemption);
        }
    }
    // A cancellation named by its redemption needs the redemption's payout too.
    for chunk in more_payouts.chunks(CHUNK_ROWS_MAX) {
        let select = "SELECT tenant_id, record FROM k JOIN cashback_payouts ON cashback_payouts.tenant_id = k.t AND cashback_payouts.id = k.v";
        for row in keyed_query(chunk, select).fetch_all(&mut *conn).await? {
            let payout: CashbackPayout = record_of_row(&row, "cashback_payouts")?;
            loaded.payouts.insert((TenantId(row.get("tenant_id")), payout.id), payout);
        }
    }
    for chunk in keys.member_rewards.chunks(CHUNK_ROWS_MAX) {
        let mut query = Builder::new("WITH k(t, m, r) AS (");
        query.push_keys(chunk, |mut b, (tenant, member, reward)| {
            b.push_bind(tenant.0).push_bind(member.0).push_bind(reward.0);
        });
        query.push(format!(
            ") SELECT tenant_id, record FROM k JOIN reward_redemptions{}
             ON reward_redemptions.tenant_id = k.t AND reward_redemptions.member_id = k.m AND reward_redemptions.reward_id = k.r
             WHERE status <> 'cancelled'",
            Backend::of(conn).indexed_by("reward_redemptions_member")
        ));
        for row in query.fetch_all(&mut *conn).await? {
            let redemption: RewardRedemption = record_of_row(&row, "reward_redemptions")?;
            loaded.redemptions.entry((TenantId(row.get("tenant_id")), redemption.id)).or_insert(redemption);
        }
    }
    reward_keys.sort();
    reward_keys.dedup();
    for chunk in reward_keys.chunks(CHUNK_ROWS_MAX) {
        let select = format!(
            "SELECT tenant_id, {REWARD_COLUMNS} FROM k JOIN rewards ON rewards.tenant_id = k.t AND rewards.id = k.v"
        );
        for row in keyed_query(chunk, &select).fetch_all(&mut *conn).await? {
            let reward = reward_of_row(&row)?;
            loaded.rewards.insert((TenantId(row.get("tenant_id")), reward.id), reward);
        }
    }
    Ok(loaded)
}

/// Writes what a batch of reward commands decided: rows are upserted, seeds saved.
pub async fn flush(conn: &mut AnyConnection, writes: &RewardWrites) -> Result<()> {
    for chunk in writes.rewards.chunks(CHUNK_ROWS_MAX) {
        let mut query = Builder::new(format!("INSERT INTO rewards (tenant_id, {REWARD_COLUMNS}) "));
        query.push_rows(chunk, |mut b, (tenant, reward)| {
            assert!(reward.redeemed_count >= 0 && reward.spec.stock.is_none_or(|s| s >= 0));
            b.push_bind(tenant.0)
                .push_bind(reward.id.0)
                .push_bind(serde_json::to_string(&reward.spec).expect("reward specs serialize"))
                .push_bind(reward.redeemed_count)
                .push_bind(micros::of(reward.created_at))
                .push_bind(micros::of(reward.updated_at));
        });
        query.push(
            " ON CONFLICT (tenant_id, id) DO UPDATE SET spec = excluded.spec, redeemed_count = excluded.redeemed_count,
              updated_at = excluded.updated_at",
        );
        query.execute(&mut *conn).await?;
    }
    for chunk in writes.redemptions.chunks(CHUNK_ROWS_MAX) {
        let mut query = Builder::new(
            "INSERT INTO reward_redemptions (tenant_id, id, member_id, reward_id, status, voucher_code, redeemed_at, record) ",
        );
        query.push_rows(chunk, |mut b, (tenant, r)| {
            b.push_bind(tenant.0)
                .push_bind(r.id.0)
                .push_bind(r.member_id.0)
                .push_bind(r.reward_id.0)
                .push_bind(r.status.as_str())
                .push_bind(r.voucher.as_ref().map(|v| v.code.clone()))
                .push_bind(micros::of(r.redeemed_at))
                .push_bind(serde_json::to_string(r).expect("redemptions serialize"));
        });
        query.push(" ON CONFLICT (tenant_id, id) DO UPDATE SET status = excluded.status, record = excluded.record");
        query.execute(&mut *conn).await?;
    }
    for chunk in writes.payouts.chunks(CHUNK_ROWS_MAX) {
        let mut query =
            Builder::new("INSERT INTO cashback_payouts (tenant_id, id, member_id, redemption_id, status, record) ");
        query.push_rows(chunk, |mut b, (tenant, p)| {
            b.push_bind(tenant.0)
                .push_bind(p.id.0)
                .push_bind(p.member_id.0)
                .push_bind(p.redemption_id.0)
                .push_bind(p.status.as_str())
                .push_bind(serde_json::to_string(p).expect("payouts serialize"));
        });
        query.push(" ON CONFLICT (tenant_id, id) DO UPDATE SET status = excluded.status, record = excluded.record");
        query.execute(&mut *conn).await?;
    }
    if let Some(ids) = &writes.ids {
        sqlx::query(
            "UPDATE reward_sequences SET last = CASE name WHEN 'reward' THEN $1 WHEN 'redemption' THEN $2
             WHEN 'payout' THEN $3 END",
        )
        .bind(ids.next_reward)
        .bind(ids.next_redemption)
        .bind(ids.next_payout)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Store {
    /// The tenant's rewards by id, inactive ones included.
    pub async fn rewards(&self, tenant: TenantId) -> Result<Vec<Reward>> {
        let rows = sqlx::query(&format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE tenant_id = $1 ORDER BY id"))
            .bind(tenant.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(reward_of_row).collect()
    }

    pub async fn reward(&self, tenant: TenantId, id: RewardId) -> Result<Option<Reward>> {
        let row = sqlx::query(&format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(reward_of_row).transpose()
    }

    /// The member's redemptions, newest first.
    pub async fn redemptions_of(&self, tenant: TenantId, member: MemberId) -> Result<Vec<RewardRedemption>> {
        // Named: without statistics SQLite walks the tenant's redemptions by id for the ORDER BY.
        let rows = sqlx::query(&format!(
            "SELECT record FROM reward_redemptions{} WHERE tenant_id = $1 AND member_id = $2 ORDER BY id DESC",
            self.backend.indexed_by("reward_redemptions_member")
        ))
        .bind(tenant.0)
        .bind(member.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| record_of_row(row, "reward_redemptions")).collect()
    }

    pub async fn redemption(&self, tenant: TenantId, id: RedemptionId) -> Result<Option<RewardRedemption>> {
        let row = sqlx::query("SELECT record FROM reward_redemptions WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|row| record_of_row(row, "reward_redemptions")).transpose()
    }

    /// The redemption holding a voucher code, for checkout to honour the voucher.
    pub async fn redemption_by_voucher(&self, tenant: TenantId, code: &str) -> Result<Option<RewardRedemption>> {
        let row = sqlx::query("SELECT record FROM reward_redemptions WHERE tenant_id = $1 AND voucher_code = $2")
            .bind(tenant.0)
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|row| record_of_row(row, "reward_redemptions")).transpose()
    }

    /// When the member redeemed each reward, cancelled redemptions left out: per-member limits.
    pub async fn reward_uses(&self, tenant: TenantId, member: MemberId) -> Result<HashMap<RewardId, Vec<Timestamp>>> {
        let sql = format!(
            "SELECT reward_id, redeemed_at FROM reward_redemptions{} WHERE tenant_id = $1 AND member_id = $2 AND status <> $3",
            self.backend.indexed_by("reward_redemptions_member")
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.0)
            .bind(member.0)
            .bind(RedemptionStatus::Cancelled.as_str())
            .fetch_all(&self.pool)
            .await?;
        let mut uses: HashMap<RewardId, Vec<Timestamp>> = HashMap::new();
        for row in rows {
            uses.entry(RewardId(row.get(0))).or_default().push(micros::to_ts(row.get(1)));
        }
        Ok(uses)
    }

    /// Cashback payouts by id, optionally of one status, after `after`, at most `limit`.
    pub async fn cashback_payouts(
        &self,
        tenant: TenantId,
        status: Option<PayoutStatus>,
        after: PayoutId,
        limit: i64,
    ) -> Result<Vec<CashbackPayout>> {
        let limit = limit.clamp(1, PAGE_SIZE_MAX);
        let rows = match status {
            Some(status) => sqlx::query(
                "SELECT record FROM cashback_payouts WHERE tenant_id = $1 AND status = $2 AND id > $3 ORDER BY id LIMIT $4",
            )
            .bind(tenant.0)
            .bind(status.as_str())
            .bind(after.0)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query("SELECT record FROM cashback_payouts WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(tenant.0)
                    .bind(after.0)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(|row| record_of_row(row, "cashback_payouts")).collect()
    }
}
