//! The work lists of the event bonus jobs: members whose birthday or first-purchase anniversary
//! falls on one of a few calendar days, and members holding points that expire soon. They only
//! narrow the search; the engine decides from the member's state whether anything is due, so a
//! list that names a member once too often gives nothing twice.

use kopilka_core::{MemberId, TenantId};

use crate::sql::Builder;

use crate::{micros, Result, Store};

impl Store {
    /// Members of `tenant` after `after` (in id order) born on one of `birthdays` or whose first
    /// purchase fell on one of `anniversaries` (each `MM-DD`; the first purchase by its UTC date).
    pub async fn members_with_yearly_dates(
        &self,
        tenant: TenantId,
        birthdays: &[String],
        anniversaries: &[String],
        after: MemberId,
        limit: i64,
    ) -> Result<Vec<MemberId>> {
        if birthdays.is_empty() && anniversaries.is_empty() {
            return Ok(Vec::new());
        }
        // One indexed lookup per kind of date, joined: an OR of the two would read every member.
        // The empty first select lets each lookup start with UNION.
        let mut query = Builder::new("SELECT id FROM (SELECT 0 AS id WHERE 1 = 0");
        for (index, column, key, days) in [
            ("members_birthday", "birth_date", "substr(birth_date, 6, 5)", birthdays),
            ("members_first_purchase_day", "first_purchase_day", "first_purchase_day", anniversaries),
        ] {
            if days.is_empty() {
                continue;
            }
            query.push(format!(" UNION SELECT id FROM members{} WHERE tenant_id = ", self.backend.indexed_by(index)));
            query.push_bind(tenant.0);
            query.push(format!(" AND {column} IS NOT NULL AND {key} IN ("));
            let mut separated = query.separated(", ");
            for day in days {
                separated.push_bind(day.clone());
            }
            query.push(") AND merged_into IS NULL AND id > ").push_bind(after.0);
        }
        query.push(") AS due ORDER BY id LIMIT ").push_bind(limit);
        let ids: Vec<i64> = query.fetch_all_scalar(&self.pool).await?;
        Ok(ids.into_iter().map(MemberId).collect())
    }

    /// Members of `tenant` after `after` holding open points that expire no later than `to`: the
    /// expiry reminder job's work list, read from the members' due keys (migration 0018). Points
    /// that already ran out and wait for the expiry job count too; the reminder command looks at
    /// the member's lots and reminds of those still to expire.
    pub async fn members_with_points_expiring(
        &self,
        tenant: TenantId,
        to: jiff::Timestamp,
        after: MemberId,
        limit: i64,
    ) -> Result<Vec<MemberId>> {
        let sql = format!(
            "SELECT id FROM members{} WHERE tenant_id = $1 AND next_expiry <= $2 AND id > $3 ORDER BY id LIMIT $4",
            self.backend.indexed_by("members_next_expiry")
        );
        let ids: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(tenant.0)
            .bind(micros::of(to))
            .bind(after.0)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(MemberId).collect())
    }
}
