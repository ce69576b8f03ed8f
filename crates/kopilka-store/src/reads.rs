//! Reads that do not go through the writer: members, lots, history, purchases. They see the last
//! committed state (WAL readers never block the writer).

use kopilka_core::member::IdentifierKind;
use kopilka_core::purchase::PurchaseRecord;
use kopilka_core::{
    Account, Lot, MemberId, Movement, MovementId, MovementKind, PointCurrency, Posting, Program, ProgramId, PurchaseId,
    TenantId,
};
use sqlx::Row;

use crate::batch::{lot_of_row, member_of_row, purchase_of_row, LOT_COLUMNS, MEMBER_COLUMNS};
use crate::sql::Builder;
use crate::{micros, MemberRow, Result, Store, StoreError};

impl Store {
    pub async fn member(&self, tenant: TenantId, id: MemberId) -> Result<Option<MemberRow>> {
        let row = sqlx::query(&format!("SELECT {MEMBER_COLUMNS} FROM members WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(member_of_row).transpose()
    }

    /// The member an identifier belongs to (which may be a merged member: the caller follows
    /// `merged_into`).
    pub async fn member_by(&self, tenant: TenantId, kind: IdentifierKind, value: &str) -> Result<Option<MemberRow>> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM members WHERE tenant_id = $1 AND {} = $2", kind.as_str());
        let row = sqlx::query(&sql).bind(tenant.0).bind(value).fetch_optional(&self.pool).await?;
        row.as_ref().map(member_of_row).transpose()
    }

    /// [`Store::member_by`] for many values of one identifier at once, each chunk of values one
    /// query (an import names thousands of members; one query each cost ~100 µs). Each value found
    /// comes back with its member and, for a merged member, the survivor to follow; values no
    /// member holds are left out.
    pub async fn members_by(
        &self,
        tenant: TenantId,
        kind: IdentifierKind,
        values: &[String],
    ) -> Result<Vec<(String, MemberId, Option<MemberId>)>> {
        let mut found = Vec::new();
        // One bound value per row of `k`, and the tenant's.
        for chunk in values.chunks(crate::batch::chunk_rows(1) - 1) {
            let mut query = Builder::new("WITH k(v) AS (");
            query.push_values(chunk, |mut b, value| {
                b.push_bind(value.as_str());
            });
            query.push(") SELECT k.v, members.id, members.merged_into FROM k JOIN members ON members.tenant_id = ");
            query.push_bind(tenant.0).push(format!(" AND members.{} = k.v", kind.as_str()));
            for row in query.fetch_all(&self.pool).await? {
                let merged_into: Option<i64> = row.get(2);
                found.push((row.get(0), MemberId(row.get(1)), merged_into.map(MemberId)));
            }
        }
        Ok(found)
    }

    /// Members in id order after `after`, for listing and export.
    pub async fn members_page(&self, tenant: TenantId, after: MemberId, limit: i64) -> Result<Vec<MemberRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {MEMBER_COLUMNS} FROM members WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(tenant.0)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_of_row).collect()
    }

    /// Members merged into `survivor`, whose history now belongs to it.
    pub async fn merged_into(&self, tenant: TenantId, survivor: MemberId) -> Result<Vec<MemberId>> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM members WHERE tenant_id = $1 AND merged_into = $2 ORDER BY id")
                .bind(tenant.0)
                .bind(survivor.0)
                .fetch_all(&self.pool)
                .await?;
        Ok(ids.into_iter().map(MemberId).collect())
    }

    /// A member's lots; closed and expired ones too when `all`.
    pub async fn lots(&self, tenant: TenantId, member: MemberId, all: bool) -> Result<Vec<Lot>> {
        let filter = if all { "" } else { "AND state IN ('pending', 'available')" };
        // Named: without statistics SQLite searched the primary key by tenant alone, reading every
        // lot of the tenant for one member's balance (18 ms at 80,000 lots, seconds at millions).
        let rows = sqlx::query(&format!(
            "SELECT {LOT_COLUMNS} FROM lots{} WHERE tenant_id = $1 AND member_id = $2 {filter} ORDER BY expires_at, id",
            self.backend.indexed_by("lots_member")
        ))
        .bind(tenant.0)
        .bind(member.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lot_of_row).collect()
    }

    /// Movements of the given members, newest first, before `before` (a cursor), with postings.
    pub async fn history(
        &self,
        tenant: TenantId,
        members: &[MemberId],
        before: Option<MovementId>,
        limit: i64,
    ) -> Result<Vec<Movement>> {
        let mut query = Builder::new(
            "SELECT id, member_id, kind, currency, occurred_at, purchase_id, reason FROM movements WHERE tenant_id = ",
        );
        query.push_bind(tenant.0).push(" AND member_id IN (");
        let mut separated = query.separated(", ");
        for member in members {
            separated.push_bind(member.0);
        }
        query.push(")");
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(before.0);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let rows = query.fetch_all(&self.pool).await?;
        let mut movements = Vec::with_capacity(rows.len());
        for row in rows {
            let corrupt = |detail: String| StoreError::Corrupt { table: "movements", detail };
            let kind: String = row.get(2);
            let currency: String = row.get(3);
            movements.push(Movement {
                id: MovementId(row.get(0)),
                member_id: MemberId(row.get(1)),
                kind: MovementKind::parse(&kind).ok_or_else(|| corrupt(kind))?,
                currency: PointCurrency::parse(&currency).map_err(|e| corrupt(e.to_string()))?,
                occurred_at: micros::to_ts(row.get(4)),
                postings: Vec::new(),
                purchase_id: row.get::<Option<i64>, _>(5).map(PurchaseId),
                reason: row.get(6),
            });
        }
        if movements.is_empty() {
            return Ok(movements);
        }
        let mut query = Builder::new(
            "SELECT movement_id, account, member_id, amount, lot_id, partner_id FROM postings WHERE tenant_id = ",
        );
        query.push_bind(tenant.0).push(" AND movement_id IN (");
        let mut separated = query.separated(", ");
        for movement in &movements {
            separated.push_bind(movement.id.0);
        }
        query.push(") ORDER BY movement_id, seq");
        let index_of: std::collections::HashMap<MovementId, usize> =
            movements.iter().enumerate().map(|(index, m)| (m.id, index)).collect();
        for row in query.fetch_all(&self.pool).await? {
            let movement_id = MovementId(row.get(0));
            let kind: String = row.get(1);
            let partner = row.get::<Option<i64>, _>(5).map(kopilka_core::PartnerId);
            let account = Account::from_row(&kind, row.get::<Option<i64>, _>(2).map(MemberId), partner)
                .ok_or(StoreError::Corrupt { table: "postings", detail: kind })?;
            let movement = &mut movements[index_of[&movement_id]];
            movement.postings.push(Posting {
                account,
                amount: row.get(3),
                lot_id: row.get::<Option<i64>, _>(4).map(kopilka_core::LotId),
            });
        }
        for movement in &movements {
            // Paired with the assertion before the write: what was balanced stays balanced.
            movement.assert_balanced();
        }
        Ok(movements)
    }

    pub async fn purchase(&self, tenant: TenantId, id: PurchaseId) -> Result<Option<PurchaseRecord>> {
        let row = sqlx::query("SELECT tenant_id, program_id, record FROM purchases WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(purchase_of_row).transpose()?.map(|(_, _, record)| record))
    }

    /// Every purchase of the given members, oldest first.
    pub async fn purchases_of(&self, tenant: TenantId, members: &[MemberId]) -> Result<Vec<PurchaseRecord>> {
        let mut query = Builder::new("SELECT tenant_id, program_id, record FROM purchases WHERE tenant_id = ");
        query.push_bind(tenant.0).push(" AND member_id IN (");
        let mut separated = query.separated(", ");
        for member in members {
            separated.push_bind(member.0);
        }
        query.push(") ORDER BY occurred_at, id");
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|row| purchase_of_row(row).map(|(_, _, record)| record)).collect()
    }

    /// Purchases in id order after `after`, for export.
    pub async fn purchases_page(&self, tenant: TenantId, after: PurchaseId, limit: i64) -> Result<Vec<PurchaseRecord>> {
        let rows = sqlx::query(
            "SELECT tenant_id, program_id, record FROM purchases WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant.0)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| purchase_of_row(row).map(|(_, _, record)| record)).collect()
    }
}

impl Store {
    /// Members with lots due at `now` (to activate or to expire), at most `limit` of them, the
    /// soonest due first: read from the members' due keys (migration 0018), an index that holds
    /// each member with open lots once.
    pub async fn members_with_due_lots(
        &self,
        tenant: Option<TenantId>,
        now: jiff::Timestamp,
        limit: i64,
    ) -> Result<Vec<(TenantId, MemberId)>> {
        // One row for the page (`Backend::json_rows`): a job reads a page per batch of members.
        let sql = format!(
            "SELECT {} FROM (SELECT tenant_id, id FROM members{} WHERE next_due <= $1 AND ($2 IS NULL OR tenant_id = $2)
             ORDER BY next_due LIMIT $3) AS page",
            self.backend.json_rows("tenant_id, id"),
            self.backend.indexed_by("members_next_due"),
        );
        let text: String = sqlx::query_scalar(&sql)
            .bind(micros::of(now))
            .bind(tenant.map(|t| t.0))
            .bind(limit)
            .fetch_one(&self.pool)
            .await?;
        let page: Vec<(i64, i64)> = crate::batch::rows_of_json(&text, "members")?;
        Ok(page.into_iter().map(|(tenant, member)| (TenantId(tenant), MemberId(member))).collect())
    }

    /// The current version of every program of a tenant.
    pub async fn programs_of(&self, tenant: TenantId) -> Result<Vec<(ProgramId, i64, Program)>> {
        let rows = sqlx::query("SELECT id, version, document FROM programs WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(program_of_row).collect()
    }

    /// A program's current version: the named one, or the tenant's first.
    pub async fn program(&self, tenant: TenantId, id: Option<ProgramId>) -> Result<Option<(ProgramId, i64, Program)>> {
        let row = sqlx::query(
            "SELECT id, version, document FROM programs WHERE tenant_id = $1 AND ($2 IS NULL OR id = $3) ORDER BY id LIMIT 1",
        )
        .bind(tenant.0)
        .bind(id.map(|i| i.0))
        .bind(id.map(|i| i.0))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(program_of_row).transpose()
    }
}

/// Reads `id, version, document` columns.
pub(crate) fn program_of_row(row: &sqlx::any::AnyRow) -> Result<(ProgramId, i64, Program)> {
    let document: String = row.get("document");
    let program = serde_json::from_str(&document)
        .map_err(|error| StoreError::Corrupt { table: "programs", detail: error.to_string() })?;
    Ok((ProgramId(row.get("id")), row.get("version"), program))
}

impl Store {
    /// Members of `tenant` holding a tier whose last review is before `due` (a date, ISO 8601),
    /// after `after` in id order: the tier review job's work list.
    pub async fn members_due_tier_review(
        &self,
        tenant: TenantId,
        due: &str,
        after: MemberId,
        limit: i64,
    ) -> Result<Vec<MemberId>> {
        // The key is empty for a member never reviewed, so it sorts before every date.
        let sql = format!(
            "SELECT id FROM members{}
             WHERE tenant_id = $1 AND tier_review_key IS NOT NULL AND tier_review_key < $2
               AND id > $3 AND merged_into IS NULL
             ORDER BY id LIMIT $4",
            self.backend.indexed_by("members_tier_review")
        );
        let ids: Vec<i64> =
            sqlx::query_scalar(&sql).bind(tenant.0).bind(due).bind(after.0).bind(limit).fetch_all(&self.pool).await?;
        Ok(ids.into_iter().map(MemberId).collect())
    }

    /// Members whose admin-assigned tier ended by `now`, a page at a time after `after`: the tiers
    /// job ends each (the column is cleared when the state no longer holds such an assignment).
    pub async fn members_manual_tier_ended(
        &self,
        tenant: TenantId,
        now: jiff::Timestamp,
        after: MemberId,
        limit: i64,
    ) -> Result<Vec<MemberId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM members
             WHERE tenant_id = $1 AND manual_tier_until IS NOT NULL AND manual_tier_until <= $2
               AND id > $3 AND merged_into IS NULL
             ORDER BY id LIMIT $4",
        )
        .bind(tenant.0)
        .bind(crate::micros::of(now))
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(MemberId).collect())
    }
}
