//! Partners and their keys: their part of a writer batch, and the reads behind the partner API,
//! including the postings a settlement is computed from. Receipts of points earned at a partner
//! live in `partner_receipts`, one row per partner and `external_id`.

use std::collections::HashMap;

use jiff::Timestamp;
use kopilka_core::partners::{Partner, PartnerReceipt};
use kopilka_core::{Account, MemberId, PartnerId, Posting, TenantId};
use sqlx::AnyConnection;
use sqlx::Row;

use crate::sql::{Backend, Builder};
use crate::{micros, Result, Role, Store, StoreError};

/// What a batch's partner commands need.
#[derive(Debug, Default)]
pub struct PartnerKeys {
    pub partners: Vec<(TenantId, PartnerId)>,
    /// Tenants creating a partner: their highest partner id is loaded to allocate the next.
    pub creating: Vec<TenantId>,
    /// Points a member converted out of a currency, in movements with a reason (the pair of
    /// programs), since a time, for exchange limits.
    pub exchange_usage: Vec<(TenantId, MemberId, String, String, Timestamp)>,
    /// Receipts named by partner and `external_id`: to refuse a second one, or to return one.
    pub receipts: Vec<(TenantId, PartnerId, String)>,
}

/// What `load` found.
#[derive(Debug, Default)]
pub struct PartnersLoaded {
    pub partners: HashMap<(TenantId, PartnerId), Partner>,
    pub last_ids: HashMap<TenantId, i64>,
    pub exchange_used: HashMap<(TenantId, MemberId, String, String), i64>,
    pub receipts: HashMap<(TenantId, PartnerId, String), PartnerReceipt>,
}

/// A partner's API key: the `api_keys` row and its binding.
#[derive(Debug, Clone)]
pub struct PartnerKeyRow {
    pub key_hash: Vec<u8>,
    pub tenant: TenantId,
    pub partner: PartnerId,
    pub name: String,
    pub created_at: Timestamp,
}

/// What a batch writes.
#[derive(Debug, Default)]
pub struct PartnerWrites {
    pub partners: Vec<(TenantId, Partner)>,
    pub keys: Vec<PartnerKeyRow>,
    /// Receipts new or changed (returned), each once in its final state.
    pub receipts: Vec<(TenantId, PartnerReceipt)>,
}

impl PartnerWrites {
    pub fn is_empty(&self) -> bool {
        self.partners.is_empty() && self.keys.is_empty() && self.receipts.is_empty()
    }
}

/// Bound values per statement, under both databases' limits (as in `batch`).
const RECEIPT_CHUNK: usize = 32_000 / 6;

fn receipt_of(record: &str) -> Result<PartnerReceipt> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt { table: "partner_receipts", detail: e.to_string() })
}

fn partner_of(record: &str) -> Result<Partner> {
    serde_json::from_str(record).map_err(|e| StoreError::Corrupt { table: "partners", detail: e.to_string() })
}

/// Loads what `keys` names, adding the members of the receipts found to `members`: a return
/// names only the receipt.
pub async fn load(
    conn: &mut AnyConnection,
    keys: &PartnerKeys,
    members: &mut Vec<(TenantId, MemberId)>,
) -> Result<PartnersLoaded> {
    let mut loaded = PartnersLoaded::default();
    for (tenant, id) in &keys.partners {
        let record: Option<String> = sqlx::query_scalar("SELECT record FROM partners WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(record) = record {
            loaded.partners.insert((*tenant, *id), partner_of(&record)?);
        }
    }
    for tenant in &keys.creating {
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM partners WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_one(&mut *conn)
            .await?;
        loaded.last_ids.insert(*tenant, last.unwrap_or(0));
    }
    for (tenant, member, currency, reason, since) in &keys.exchange_usage {
        // From the member's movements: without statistics SQLite began with every posting of the
        // tenant.
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(p.amount), 0) AS BIGINT) FROM movements m{}
             JOIN postings p ON m.tenant_id = p.tenant_id AND m.id = p.movement_id
             WHERE p.tenant_id = $1 AND p.account = 'exchange' AND p.amount > 0 AND p.currency = $2
               AND m.member_id = $3 AND m.occurred_at >= $4 AND m.reason = $5",
            Backend::of(conn).indexed_by("movements_member")
        );
        let used: i64 = sqlx::query_scalar(&sql)
            .bind(tenant.0)
            .bind(currency)
            .bind(member.0)
            .bind(micros::of(*since))
            .bind(reason)
            .fetch_one(&mut *conn)
            .await?;
        loaded.exchange_used.insert((*tenant, *member, currency.clone(), reason.clone()), used);
    }
    for chunk in keys.receipts.chunks(RECEIPT_CHUNK / 3) {
        let mut query = Builder::new("WITH k(t, p, v) AS (");
        query.push_keys(chunk, |mut b, (tenant, partner, external_id)| {
            b.push_bind(tenant.0).push_bind(partner.0).push_bind(external_id);
        });
        query.push(
            ") SELECT r.tenant_id, r.record FROM k JOIN partner_receipts r
             ON r.tenant_id = k.t AND r.partner_id = k.p AND r.external_id = k.v",
        );
        for row in query.fetch_all(&mut *conn).await? {
            let receipt = receipt_of(row.get(1))?;
            let tenant = TenantId(row.get(0));
            members.push((tenant, receipt.member_id));
            loaded.receipts.insert((tenant, receipt.partner_id, receipt.external_id.clone()), receipt);
        }
    }
    Ok(loaded)
}

pub async fn flush(conn: &mut AnyConnection, writes: &PartnerWrites) -> Result<()> {
    for (tenant, partner) in &writes.partners {
        sqlx::query("INSERT INTO partners (tenant_id, id, record, created_at) VALUES ($1, $2, $3, $4)")
            .bind(tenant.0)
            .bind(partner.id.0)
            .bind(serde_json::to_string(partner).expect("partners serialize"))
            .bind(micros::of(partner.created_at))
            .execute(&mut *conn)
            .await?;
    }
    for key in &writes.keys {
        crate::store::admin::insert_api_key(
            conn,
            &key.key_hash,
            Some(key.tenant),
            Role::Partner,
            &key.name,
            key.created_at,
        )
        .await?;
        sqlx::query("INSERT INTO partner_keys (key_hash, tenant_id, partner_id) VALUES ($1, $2, $3)")
            .bind(&key.key_hash)
            .bind(key.tenant.0)
            .bind(key.partner.0)
            .execute(&mut *conn)
            .await?;
    }
    for chunk in writes.receipts.chunks(RECEIPT_CHUNK) {
        let mut query = Builder::new(
            "INSERT INTO partner_receipts (tenant_id, partner_id, external_id, member_id, record, created_at) ",
        );
        query.push_rows(chunk, |mut b, (tenant, receipt)| {
            b.push_bind(tenant.0)
                .push_bind(receipt.partner_id.0)
                .push_bind(receipt.external_id.clone())
                .push_bind(receipt.member_id.0)
                .push_bind(serde_json::to_string(receipt).expect("receipts serialize"))
                .push_bind(micros::of(receipt.occurred_at));
        });
        // Only a return rewrites a receipt; a second receipt under the same key is refused by
        // the writer before it gets here.
        query.push(
            " ON CONFLICT (tenant_id, partner_id, external_id) DO UPDATE SET member_id = excluded.member_id,
              record = excluded.record",
        );
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// The partner a key is bound to, if it is a partner's key.
    pub async fn partner_of_key(&self, key_hash: &[u8]) -> Result<Option<(TenantId, PartnerId)>> {
        let row = sqlx::query("SELECT tenant_id, partner_id FROM partner_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| (TenantId(row.get(0)), PartnerId(row.get(1)))))
    }

    pub async fn partner(&self, tenant: TenantId, id: PartnerId) -> Result<Option<Partner>> {
        let record: Option<String> = sqlx::query_scalar("SELECT record FROM partners WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        record.as_deref().map(partner_of).transpose()
    }

    pub async fn partners(&self, tenant: TenantId) -> Result<Vec<Partner>> {
        let rows = sqlx::query("SELECT record FROM partners WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| partner_of(row.get(0))).collect()
    }

    /// The postings on the partner's accounts of movements that occurred in `[from, to)`.
    pub async fn partner_postings(
        &self,
        tenant: TenantId,
        partner: PartnerId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Posting>> {
        let rows = sqlx::query(
            "SELECT p.account, p.amount FROM postings p JOIN movements m ON m.tenant_id = p.tenant_id AND m.id = p.movement_id
             WHERE p.tenant_id = $1 AND p.partner_id = $2 AND m.occurred_at >= $3 AND m.occurred_at < $4
             ORDER BY p.movement_id, p.seq",
        )
        .bind(tenant.0)
        .bind(partner.0)
        .bind(micros::of(from))
        .bind(micros::of(to))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.get(0);
                let account = Account::from_row(&kind, None, Some(partner))
                    .ok_or(StoreError::Corrupt { table: "postings", detail: kind })?;
                Ok(Posting { account, amount: row.get(1), lot_id: None })
            })
            .collect()
    }

    /// Whether the member has any movement with the partner: a partner key may read only those.
    pub async fn member_known_to_partner(
        &self,
        tenant: TenantId,
        member: MemberId,
        partner: PartnerId,
    ) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM postings p JOIN movements m ON m.tenant_id = p.tenant_id AND m.id = p.movement_id
             WHERE p.tenant_id = $1 AND p.partner_id = $2 AND m.member_id = $3 LIMIT 1",
        )
        .bind(tenant.0)
        .bind(partner.0)
        .bind(member.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }
}
