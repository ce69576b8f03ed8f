//! The ledger checked from its rows: balances are derived from postings and compared with lots.
//! Run by tests after every scenario and by `kopilka verify` on a live store.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{Result, Store};

/// What `verify` found wrong; empty when the ledger is sound.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LedgerReport {
    pub movements: i64,
    pub postings: i64,
    pub problems: Vec<String>,
}

impl Store {
    /// Checks that every movement balances, that all accounts sum to zero per tenant and currency,
    /// that each member's pending and available accounts equal the remaining of their lots, and
    /// that the totals kept of those lots (`member_lot_totals`) are their sums.
    pub async fn verify(&self) -> Result<LedgerReport> {
        let mut report = LedgerReport {
            movements: sqlx::query_scalar("SELECT COUNT(*) FROM movements").fetch_one(&self.pool).await?,
            postings: sqlx::query_scalar("SELECT COUNT(*) FROM postings").fetch_one(&self.pool).await?,
            problems: Vec::new(),
        };
        let unbalanced = sqlx::query(
            "SELECT tenant_id, movement_id, CAST(SUM(amount) AS BIGINT) FROM postings GROUP BY tenant_id, movement_id HAVING SUM(amount) <> 0 LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in unbalanced {
            report.problems.push(format!(
                "tenant {} movement {} sums to {}",
                row.get::<i64, _>(0),
                row.get::<i64, _>(1),
                row.get::<i64, _>(2)
            ));
        }
        let totals = sqlx::query(
            "SELECT tenant_id, currency, CAST(SUM(amount) AS BIGINT) FROM postings GROUP BY tenant_id, currency HAVING SUM(amount) <> 0",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in totals {
            report.problems.push(format!(
                "tenant {} currency {} accounts sum to {}",
                row.get::<i64, _>(0),
                row.get::<String, _>(1),
                row.get::<i64, _>(2)
            ));
        }
        let mut by_account: BTreeMap<(i64, i64, String, String), (i64, i64)> = BTreeMap::new();
        let accounts = sqlx::query(
            "SELECT tenant_id, member_id, currency, account, CAST(SUM(amount) AS BIGINT) FROM postings
             WHERE member_id IS NOT NULL GROUP BY tenant_id, member_id, currency, account",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in accounts {
            let key = (row.get(0), row.get(1), row.get(2), row.get(3));
            by_account.entry(key).or_default().0 = row.get(4);
        }
        let lots = sqlx::query(
            "SELECT tenant_id, member_id, currency, 'member_' || state, CAST(SUM(remaining) AS BIGINT) FROM lots
             WHERE state IN ('pending', 'available') GROUP BY tenant_id, member_id, currency, state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut lot_sums = BTreeMap::new();
        for row in lots {
            let key: (i64, i64, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
            let sum: i64 = row.get(4);
            by_account.entry(key.clone()).or_default().1 = sum;
            lot_sums.insert(key, sum);
        }
        // The totals the writer keeps must be the lots' own sums (a member without open lots
        // may keep a row of zero).
        let kept =
            sqlx::query("SELECT tenant_id, member_id, currency, 'member_' || state, remaining FROM member_lot_totals")
                .fetch_all(&self.pool)
                .await?;
        for row in kept {
            let key: (i64, i64, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
            let remaining: i64 = row.get(4);
            let sum = lot_sums.remove(&key).unwrap_or(0);
            if remaining != sum {
                let (tenant, member, currency, account) = key;
                report.problems.push(format!(
                    "tenant {tenant} member {member} {currency} {account}: member_lot_totals says {remaining}, lots say {sum}"
                ));
            }
        }
        for ((tenant, member, currency, account), sum) in lot_sums {
            if sum != 0 {
                report.problems.push(format!(
                    "tenant {tenant} member {member} {currency} {account}: member_lot_totals has no row, lots say {sum}"
                ));
            }
        }
        for ((tenant, member, currency, account), (postings, lots)) in by_account {
            if postings != lots {
                report.problems.push(format!(
                    "tenant {tenant} member {member} {currency} {account}: postings say {postings}, lots say {lots}"
                ));
            }
            if postings < 0 {
                report
                    .problems
                    .push(format!("tenant {tenant} member {member} {currency} {account} is negative: {postings}"));
            }
        }
        Ok(report)
    }
}
