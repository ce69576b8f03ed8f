//! Referral codes, sign-up devices and referrals: their part of a writer batch and their reads.
//!
//! Referrals are rare next to purchases (one per sign-up with a code), so `load` queries key by
//! key rather than in the multi-row form `batch` uses for the hot tables.

use std::collections::HashMap;

use kopilka_core::referrals::{Referral, ReferralStatus};
use kopilka_core::{MemberId, TenantId};
use sqlx::AnyConnection;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// What a batch's referral commands need.
#[derive(Debug, Default)]
pub struct ReferralKeys {
    /// Codes used at sign-up: their owners are loaded, with the owners' referrals and devices.
    pub codes: Vec<(TenantId, String)>,
    /// Members whose own code is wanted (and whose referrals as referrer).
    pub referrers: Vec<(TenantId, MemberId)>,
    /// Referrals, by the referred member, with both members.
    pub referred: Vec<(TenantId, MemberId)>,
}

/// What `load` found.
#[derive(Debug, Default)]
pub struct ReferralsLoaded {
    pub code_owners: HashMap<(TenantId, String), MemberId>,
    pub codes: HashMap<(TenantId, MemberId), String>,
    /// Every referral of each loaded referrer, and each referral loaded by its referred member.
    pub referrals: HashMap<(TenantId, MemberId), Referral>,
    pub devices: HashMap<(TenantId, MemberId), Vec<String>>,
}

/// What a batch writes.
#[derive(Debug, Default)]
pub struct ReferralWrites {
    pub codes: Vec<(TenantId, MemberId, String)>,
    pub devices: Vec<(TenantId, MemberId, String)>,
    /// Inserted or replaced, keyed by the referred member.
    pub referrals: Vec<(TenantId, Referral)>,
}

impl ReferralWrites {
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.devices.is_empty() && self.referrals.is_empty()
    }
}

pub fn status_name(status: &ReferralStatus) -> &'static str {
    match status {
        ReferralStatus::Accepted => "accepted",
        ReferralStatus::Rejected(_) => "rejected",
        ReferralStatus::Rewarded => "rewarded",
        ReferralStatus::Voided => "voided",
    }
}

fn referral_of(record: &str) -> Result<Referral> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt { table: "referrals", detail: e.to_string() })
}

async fn load_referrer(
    conn: &mut AnyConnection,
    tenant: TenantId,
    member: MemberId,
    loaded: &mut ReferralsLoaded,
) -> Result<()> {
    if loaded.devices.contains_key(&(tenant, member)) {
        return Ok(());
    }
    let code: Option<String> =
        sqlx::query_scalar("SELECT code FROM referral_codes WHERE tenant_id = $1 AND member_id = $2")
            .bind(tenant.0)
            .bind(member.0)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(code) = code {
        loaded.code_owners.insert((tenant, code.clone()), member);
        loaded.codes.insert((tenant, member), code);
    }
    let devices = sqlx::query_scalar("SELECT device_id FROM member_devices WHERE tenant_id = $1 AND member_id = $2")
        .bind(tenant.0)
        .bind(member.0)
        .fetch_all(&mut *conn)
        .await?;
    loaded.devices.insert((tenant, member), devices);
    let rows = sqlx::query("SELECT record FROM referrals WHERE tenant_id = $1 AND referrer_id = $2")
        .bind(tenant.0)
        .bind(member.0)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        let referral = referral_of(row.get(0))?;
        loaded.referrals.insert((tenant, referral.referred_id), referral);
    }
    Ok(())
}

/// Loads what `keys` names and adds the members involved to `members`.
pub async fn load(
    conn: &mut AnyConnection,
    keys: &ReferralKeys,
    members: &mut Vec<(TenantId, MemberId)>,
) -> Result<ReferralsLoaded> {
    let mut loaded = ReferralsLoaded::default();
    let mut referrers = keys.referrers.clone();
    for (tenant, code) in &keys.codes {
        let owner: Option<i64> =
            sqlx::query_scalar("SELECT member_id FROM referral_codes WHERE tenant_id = $1 AND code = $2")
                .bind(tenant.0)
                .bind(code)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(owner) = owner {
            loaded.code_owners.insert((*tenant, code.clone()), MemberId(owner));
            referrers.push((*tenant, MemberId(owner)));
        }
    }
    for (tenant, referred) in &keys.referred {
        let record: Option<String> =
            sqlx::query_scalar("SELECT record FROM referrals WHERE tenant_id = $1 AND referred_id = $2")
                .bind(tenant.0)
                .bind(referred.0)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(record) = record {
            let referral = referral_of(&record)?;
            members.push((*tenant, referral.referred_id));
            referrers.push((*tenant, referral.referrer_id));
            loaded.referrals.insert((*tenant, referral.referred_id), referral);
        }
    }
    for (tenant, member) in referrers {
        members.push((tenant, member));
        load_referrer(conn, tenant, member, &mut loaded).await?;
    }
    Ok(loaded)
}

pub async fn flush(conn: &mut AnyConnection, writes: &ReferralWrites) -> Result<()> {
    for (tenant, member, code) in &writes.codes {
        sqlx::query("INSERT INTO referral_codes (tenant_id, member_id, code) VALUES ($1, $2, $3)")
            .bind(tenant.0)
            .bind(member.0)
            .bind(code)
            .execute(&mut *conn)
            .await?;
    }
    for (tenant, member, device) in &writes.devices {
        sqlx::query(
            "INSERT INTO member_devices (tenant_id, member_id, device_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.0)
        .bind(member.0)
        .bind(device)
        .execute(&mut *conn)
        .await?;
    }
    for (tenant, referral) in &writes.referrals {
        sqlx::query(
            "INSERT INTO referrals (tenant_id, referred_id, referrer_id, status, record) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, referred_id) DO UPDATE SET referrer_id = excluded.referrer_id,
             status = excluded.status, record = excluded.record",
        )
        .bind(tenant.0)
        .bind(referral.referred_id.0)
        .bind(referral.referrer_id.0)
        .bind(status_name(&referral.status))
        .bind(serde_json::to_string(referral).expect("referrals serialize"))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Store {
    /// The member's referral code, if one was assigned.
    pub async fn referral_code(&self, tenant: TenantId, member: MemberId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT code FROM referral_codes WHERE tenant_id = $1 AND member_id = $2")
            .bind(tenant.0)
            .bind(member.0)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The referrals the member made, oldest first.
    pub async fn referrals_by(&self, tenant: TenantId, referrer: MemberId) -> Result<Vec<Referral>> {
        let rows =
            sqlx::query("SELECT record FROM referrals WHERE tenant_id = $1 AND referrer_id = $2 ORDER BY referred_id")
                .bind(tenant.0)
                .bind(referrer.0)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|row| referral_of(row.get(0))).collect()
    }

    /// The referral that brought the member, if any.
    pub async fn referral_of(&self, tenant: TenantId, referred: MemberId) -> Result<Option<Referral>> {
        let record: Option<String> =
            sqlx::query_scalar("SELECT record FROM referrals WHERE tenant_id = $1 AND referred_id = $2")
                .bind(tenant.0)
                .bind(referred.0)
                .fetch_optional(&self.pool)
                .await?;
        record.as_deref().map(referral_of).transpose()
    }

    /// Referred members after `after` still waiting for their referrer's reward, at most `limit`.
    pub async fn accepted_referrals(&self, tenant: TenantId, after: MemberId, limit: i64) -> Result<Vec<MemberId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT referred_id FROM referrals WHERE tenant_id = $1 AND status = 'accepted' AND referred_id > $2
             ORDER BY referred_id LIMIT $3",
        )
        .bind(tenant.0)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(MemberId).collect())
    }

    /// The member's first purchase (by time) of at least `min_minor`.
    pub async fn first_purchase_at_least(
        &self,
        tenant: TenantId,
        member: MemberId,
        min_minor: i64,
    ) -> Result<Option<kopilka_core::PurchaseId>> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM purchases WHERE tenant_id = $1 AND member_id = $2 AND total_minor >= $3 ORDER BY occurred_at, id LIMIT 1",
        )
        .bind(tenant.0)
        .bind(member.0)
        .bind(min_minor)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(kopilka_core::PurchaseId))
    }

    /// Tenants with at least one referral awaiting its reward.
    pub async fn tenants_with_accepted_referrals(&self) -> Result<Vec<TenantId>> {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM referrals WHERE status = 'accepted'")
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(TenantId).collect())
    }
}
