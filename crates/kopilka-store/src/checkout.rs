//! Coupon campaigns, codes and checkouts: loaded with a batch, flushed with it, and the
//! administrative writes (a campaign, a million codes) and reads around them.

use std::collections::HashMap;

use jiff::Timestamp;
use kopilka_core::checkout::{CampaignRecord, Checkout, Coupon, CouponCampaign, Hold};
use kopilka_core::rewards::RedemptionId;
use kopilka_core::{MemberId, TenantId};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::sql::{Builder, BIND_VALUES_MAX};
use crate::{micros, Backend, Result, Store, StoreError};

/// Checkouts, codes and campaigns a batch found.
#[derive(Debug, Default)]
pub struct LoadedCheckout {
    pub checkouts: HashMap<(TenantId, i64), Checkout>,
    pub coupons: HashMap<(TenantId, String), Coupon>,
    pub campaigns: HashMap<(TenantId, i64), CampaignRecord>,
    /// Codes that are no coupon but a reward voucher, with the redemption that issued them.
    pub vouchers: HashMap<(TenantId, String), RedemptionId>,
}

fn corrupt(table: &'static str) -> impl Fn(String) -> StoreError {
    move |detail| StoreError::Corrupt { table, detail }
}

fn checkout_of_row(row: &AnyRow) -> Result<Checkout> {
    let document: String = row.get("document");
    serde_json::from_str(&document).map_err(|e| corrupt("checkouts")(e.to_string()))
}

fn coupon_of_row(row: &AnyRow) -> Result<Coupon> {
    let holds: String = row.get("holds");
    let uses: i64 = row.get("uses");
    Ok(Coupon {
        code: row.get("code"),
        campaign_id: row.get("campaign_id"),
        member_id: row.get::<Option<i64>, _>("member_id").map(MemberId),
        uses: uses as u32,
        holds: serde_json::from_str::<Vec<Hold>>(&holds).map_err(|e| corrupt("coupons")(e.to_string()))?,
    })
}

fn campaign_of_row(row: &AnyRow) -> Result<CampaignRecord> {
    let document: String = row.get("document");
    let used: i64 = row.get("used");
    Ok(CampaignRecord {
        id: row.get("id"),
        campaign: serde_json::from_str::<CouponCampaign>(&document)
            .map_err(|e| corrupt("coupon_campaigns")(e.to_string()))?,
        used: used as u64,
        active: row.get::<i64, _>("active") != 0,
    })
}

/// Loads the checkouts named, then the codes named and those the checkouts hold, then the
/// campaigns of those codes. Returns the members the checkouts belong to, to load with the batch.
pub(crate) async fn load(
    conn: &mut AnyConnection,
    checkouts: &[(TenantId, i64)],
    codes: &[(TenantId, String)],
) -> Result<(LoadedCheckout, Vec<(TenantId, MemberId)>)> {
    let mut loaded = LoadedCheckout::default();
    let mut members = Vec::new();
    let mut codes = codes.to_vec();
    for chunk in checkouts.chunks(BIND_VALUES_MAX / 2) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, id)| {
            b.push_bind(tenant.0).push_bind(id);
        });
        query.push(
            ") SELECT tenant_id, document FROM k JOIN checkouts ON checkouts.tenant_id = k.t AND checkouts.id = k.v",
        );
        for row in query.fetch_all(&mut *conn).await? {
            let tenant = TenantId(row.get("tenant_id"));
            let checkout = checkout_of_row(&row)?;
            members.push((tenant, checkout.member_id));
            codes.extend(checkout.quote.coupons.iter().filter(|c| c.valid).map(|c| (tenant, c.code.clone())));
            loaded.checkouts.insert((tenant, checkout.id), checkout);
        }
    }
    codes.sort();
    codes.dedup();
    let mut campaigns = Vec::new();
    for chunk in codes.chunks(BIND_VALUES_MAX / 2) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, code)| {
            b.push_bind(tenant.0).push_bind(code);
        });
        query.push(") SELECT tenant_id, code, campaign_id, member_id, uses, holds FROM k JOIN coupons ON coupons.tenant_id = k.t AND coupons.code = k.v");
        for row in query.fetch_all(&mut *conn).await? {
            let tenant = TenantId(row.get("tenant_id"));
            let coupon = coupon_of_row(&row)?;
            campaigns.push((tenant, coupon.campaign_id));
            loaded.coupons.insert((tenant, coupon.code.clone()), coupon);
        }
    }
    let unknown: Vec<&(TenantId, String)> = codes.iter().filter(|key| !loaded.coupons.contains_key(*key)).collect();
    for chunk in unknown.chunks(BIND_VALUES_MAX / 2) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, code)| {
            b.push_bind(tenant.0).push_bind(code);
        });
        query.push(") SELECT tenant_id, id, voucher_code FROM k JOIN reward_redemptions ON reward_redemptions.tenant_id = k.t AND reward_redemptions.voucher_code = k.v");
        for row in query.fetch_all(&mut *conn).await? {
            let tenant = TenantId(row.get("tenant_id"));
            loaded.vouchers.insert((tenant, row.get("voucher_code")), RedemptionId(row.get("id")));
        }
    }
    campaigns.sort();
    campaigns.dedup();
    for chunk in campaigns.chunks(BIND_VALUES_MAX / 2) {
        let mut query = Builder::new("WITH k(t, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, id)| {
            b.push_bind(tenant.0).push_bind(id);
        });
        query.push(") SELECT tenant_id, id, document, used, active FROM k JOIN coupon_campaigns ON coupon_campaigns.tenant_id = k.t AND coupon_campaigns.id = k.v");
        for row in query.fetch_all(&mut *conn).await? {
            let tenant = TenantId(row.get("tenant_id"));
            let record = campaign_of_row(&row)?;
            loaded.campaigns.insert((tenant, record.id), record);
        }
    }
    Ok((loaded, members))
}

/// What a batch changed: checkouts (upserted), codes' uses and holds, campaigns' use counts.
#[derive(Debug, Default)]
pub struct CheckoutWrites {
    pub checkouts: Vec<(TenantId, Checkout)>,
    pub coupons: Vec<(TenantId, Coupon)>,
    pub campaign_uses: Vec<(TenantId, i64, u64)>,
}

impl CheckoutWrites {
    pub fn is_empty(&self) -> bool {
        self.checkouts.is_empty() && self.coupons.is_empty() && self.campaign_uses.is_empty()
    }
}

pub(crate) async fn flush(conn: &mut AnyConnection, writes: &CheckoutWrites) -> Result<()> {
    for chunk in writes.checkouts.chunks(BIND_VALUES_MAX / 9) {
        let mut query = Builder::new(
            "INSERT INTO checkouts (tenant_id, id, member_id, status, expires_at, purchase_id, document, created_at, updated_at) ",
        );
        query.push_rows(chunk, |mut b, (tenant, c)| {
            // Expired is what an open checkout becomes with time; the row stays open.
            let status = match c.status {
                kopilka_core::checkout::CheckoutStatus::Expired => "open",
                status => status.as_str(),
            };
            b.push_bind(tenant.0)
                .push_bind(c.id)
                .push_bind(c.member_id.0)
                .push_bind(status)
                .push_bind(micros::of(c.expires_at))
                .push_bind(c.purchase_id.map(|p| p.0))
                .push_bind(serde_json::to_string(c).expect("checkouts serialize"))
                .push_bind(micros::of(c.created_at))
                .push_bind(micros::of(c.updated_at));
        });
        query.push(
            " ON CONFLICT (tenant_id, id) DO UPDATE SET status = excluded.status, purchase_id = excluded.purchase_id,
              document = excluded.document, updated_at = excluded.updated_at",
        );
        query.execute(&mut *conn).await?;
    }
    for chunk in writes.coupons.chunks(BIND_VALUES_MAX / 4) {
        let mut query = Builder::new("WITH k(t, c, u, h) AS (");
        query.push_keys(chunk, |mut b, (tenant, coupon)| {
            b.push_bind(tenant.0)
                .push_bind(&coupon.code)
                .push_bind(coupon.uses as i64)
                .push_bind(serde_json::to_string(&coupon.holds).expect("holds serialize"));
        });
        query.push(format!(
            ") {} coupons SET uses = k.u, holds = k.h FROM k WHERE coupons.tenant_id = k.t AND coupons.code = k.c",
            Backend::of(conn).write_verb("UPDATE")
        ));
        query.execute(&mut *conn).await?;
    }
    for (tenant, id, used) in &writes.campaign_uses {
        sqlx::query("UPDATE coupon_campaigns SET used = $1 WHERE tenant_id = $2 AND id = $3")
            .bind(*used as i64)
            .bind(tenant.0)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A campaign as an admin sees it: its terms and counters.
#[derive(Debug, Clone)]
pub struct CampaignRow {
    pub record: CampaignRecord,
    pub codes: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Administrative writes; each runs in the writer's transaction of its own.
pub mod admin {
    use super::*;

    pub async fn insert_campaign(
        conn: &mut AnyConnection,
        tenant: TenantId,
        campaign: &CouponCampaign,
        now: Timestamp,
    ) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO coupon_campaigns (tenant_id, id, document, created_at, updated_at)
             VALUES ($1, (SELECT COALESCE(MAX(id), 0) + 1 FROM coupon_campaigns WHERE tenant_id = $1), $2, $3, $3)
             RETURNING id",
        )
        .bind(tenant.0)
        .bind(serde_json::to_string(campaign).expect("campaigns serialize"))
        .bind(micros::of(now))
        .fetch_one(&mut *conn)
        .await?;
        Ok(id)
    }

    /// Stops or restarts a campaign; None when there is no such campaign.
    pub async fn set_campaign_active(
        conn: &mut AnyConnection,
        tenant: TenantId,
        id: i64,
        active: bool,
        now: Timestamp,
    ) -> Result<Option<()>> {
        let done =
            sqlx::query("UPDATE coupon_campaigns SET active = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
                .bind(i64::from(active))
                .bind(micros::of(now))
                .bind(tenant.0)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        Ok((done.rows_affected() == 1).then_some(()))
    }

    pub async fn campaign(conn: &mut AnyConnection, tenant: TenantId, id: i64) -> Result<Option<CampaignRow>> {
        let row = sqlx::query(
            "SELECT id, document, used, active, codes, created_at, updated_at FROM coupon_campaigns WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|row| campaign_row(&row)).transpose()
    }

    /// Of `codes`, those the tenant already has.
    pub async fn existing_codes(conn: &mut AnyConnection, tenant: TenantId, codes: &[String]) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for chunk in codes.chunks(BIND_VALUES_MAX / 2) {
            let mut query = Builder::new("WITH k(t, v) AS (");
            query.push_values(chunk, |mut b, code| {
                b.push_bind(tenant.0).push_bind(code);
            });
            query.push(") SELECT code FROM k JOIN coupons ON coupons.tenant_id = k.t AND coupons.code = k.v");
            found.extend(query.fetch_all(&mut *conn).await?.iter().map(|row| row.get::<String, _>(0)));
        }
        Ok(found)
    }

    /// Inserts codes, skipping any the tenant already has; returns the codes inserted.
    pub async fn insert_codes(
        conn: &mut AnyConnection,
        tenant: TenantId,
        campaign: i64,
        codes: &[(String, Option<MemberId>)],
        now: Timestamp,
    ) -> Result<u64> {
        // In key order the B-trees grow at their right edge instead of splitting pages all over:
        // a million random codes go in several times faster sorted than as generated.
        let mut sorted: Vec<&(String, Option<MemberId>)> = codes.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut inserted = 0;
        for chunk in sorted.chunks(BIND_VALUES_MAX / 3) {
            let mut query = Builder::new("INSERT INTO coupons (tenant_id, code, campaign_id, member_id, created_at) ");
            // Tenant, campaign and time are the same for every row: bound once, not per row.
            query.push("SELECT ");
            query.push_bind(tenant.0);
            query.push(", column1, ");
            query.push_bind(campaign);
            query.push(", column2, ");
            query.push_bind(micros::of(now));
            query.push(" FROM (VALUES ");
            let mut values = query.separated(", ");
            for (code, member) in chunk.iter().copied() {
                values.push("(");
                values.push_bind_unseparated(code);
                values.push_unseparated(", ");
                values.push_bind_unseparated(member.map(|m| m.0));
                values.push_unseparated(")");
            }
            // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the INSERT.
            query.push(") AS v WHERE true ON CONFLICT DO NOTHING");
            inserted += query.execute(&mut *conn).await?.rows_affected();
        }
        sqlx::query("UPDATE coupon_campaigns SET codes = codes + $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
            .bind(inserted as i64)
            .bind(micros::of(now))
            .bind(tenant.0)
            .bind(campaign)
            .execute(&mut *conn)
            .await?;
        Ok(inserted)
    }
}

fn campaign_row(row: &AnyRow) -> Result<CampaignRow> {
    Ok(CampaignRow {
        record: campaign_of_row(row)?,
        codes: row.get("codes"),
        created_at: micros::to_ts(row.get("created_at")),
        updated_at: micros::to_ts(row.get("updated_at")),
    })
}

impl Store {
    pub async fn coupon_campaign(&self, tenant: TenantId, id: i64) -> Result<Option<CampaignRow>> {
        let mut conn = self.pool.acquire().await?;
        admin::campaign(&mut conn, tenant, id).await
    }

    pub async fn coupon_campaigns(&self, tenant: TenantId) -> Result<Vec<CampaignRow>> {
        let rows = sqlx::query(
            "SELECT id, document, used, active, codes, created_at, updated_at FROM coupon_campaigns WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(campaign_row).collect()
    }

    /// A page of a campaign's codes in code order, after `after`.
    pub async fn coupons_page(&self, tenant: TenantId, campaign: i64, after: &str, limit: i64) -> Result<Vec<Coupon>> {
        let sql = format!(
            "SELECT code, campaign_id, member_id, uses, holds FROM coupons{}
             WHERE tenant_id = $1 AND campaign_id = $2 AND code > $3 ORDER BY code LIMIT $4",
            self.backend.indexed_by("coupons_campaign")
        );
        let rows =
            sqlx::query(&sql).bind(tenant.0).bind(campaign).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(coupon_of_row).collect()
    }

    pub async fn coupon(&self, tenant: TenantId, code: &str) -> Result<Option<Coupon>> {
        let row = sqlx::query(
            "SELECT code, campaign_id, member_id, uses, holds FROM coupons WHERE tenant_id = $1 AND code = $2",
        )
        .bind(tenant.0)
        .bind(code)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(coupon_of_row).transpose()
    }

    pub async fn checkout(&self, tenant: TenantId, id: i64) -> Result<Option<Checkout>> {
        let row = sqlx::query("SELECT document FROM checkouts WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(checkout_of_row).transpose()
    }
}
