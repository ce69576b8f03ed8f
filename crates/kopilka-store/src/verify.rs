//! The ledger checked from its rows: balances are derived from postings and compared with lots.
//! Run by tests after every scenario and by `kopilka verify` on a live store.

use std::collections::BTreeMap;

use kopilka_core::member_state::MemberState;
use sqlx::Row;

use crate::batch::{job_keys, JOB_KEY_COLUMNS};
use crate::{Result, Store};

/// Members read per query by the check of their job keys.
const MEMBERS_PER_PAGE: i64 = 10_000;

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
    /// that the totals kept of those lots (`members.lot_totals`) are their sums, that the jobs'
    /// keys kept beside each member's state are the state's, and its due keys its lots'.
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
        // The totals the writer keeps in each member's row must be the lots' own sums.
        let kept = sqlx::query("SELECT tenant_id, id, lot_totals FROM members WHERE lot_totals IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        for row in kept {
            let (tenant, member): (i64, i64) = (row.get(0), row.get(1));
            let totals = match crate::lot_totals::decode(row.get::<Option<String>, _>(2).as_deref()) {
                Ok(totals) => totals,
                Err(error) => {
                    report.problems.push(format!("tenant {tenant} member {member}: {error}"));
                    continue;
                }
            };
            for (currency, balance) in totals {
                for (state, remaining) in [("pending", balance.pending), ("available", balance.available)] {
                    let key = (tenant, member, currency.as_str().to_string(), format!("member_{state}"));
                    let sum = lot_sums.remove(&key).unwrap_or(0);
                    if remaining != sum {
                        report.problems.push(format!(
                            "tenant {tenant} member {member} {currency} member_{state}: lot_totals says {remaining}, lots say {sum}"
                        ));
                    }
                }
            }
        }
        for ((tenant, member, currency, account), sum) in lot_sums {
            if sum != 0 {
                report.problems.push(format!(
                    "tenant {tenant} member {member} {currency} {account}: lot_totals has no entry, lots say {sum}"
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
        self.verify_member_job_keys(&mut report).await?;
        self.verify_member_due_keys(&mut report).await?;
        Ok(report)
    }

    /// The writer sets a member's due keys only when they change (migration 0018): each must be
    /// the least due moment and the least expiry of the member's open lots, or the catch-up jobs
    /// and the reminders would pass the member over.
    async fn verify_member_due_keys(&self, report: &mut LedgerReport) -> Result<()> {
        let rows = sqlx::query(&format!(
            "SELECT COALESCE(m.tenant_id, l.tenant_id), COALESCE(m.id, l.member_id), m.next_due, m.next_expiry,
                    l.due, l.expiry
             FROM (SELECT tenant_id, id, next_due, next_expiry FROM members
                   WHERE next_due IS NOT NULL OR next_expiry IS NOT NULL) AS m
             FULL JOIN ({}) AS l ON l.tenant_id = m.tenant_id AND l.member_id = m.id
             WHERE m.next_due IS DISTINCT FROM l.due OR m.next_expiry IS DISTINCT FROM l.expiry
             LIMIT 20",
            self.backend.due_keys_of_lots()
        ))
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let (tenant, member): (i64, i64) = (row.get(0), row.get(1));
            let kept: (Option<i64>, Option<i64>) = (row.get(2), row.get(3));
            let lots: (Option<i64>, Option<i64>) = (row.get(4), row.get(5));
            report.problems.push(format!(
                "tenant {tenant} member {member}: due keys (next_due, next_expiry) are {kept:?}, its open lots say {lots:?}"
            ));
        }
        Ok(())
    }

    /// The writer sets a member's job keys only when they change (migration 0014): each must be
    /// what the member's state says, or the tier review and anniversary jobs would miss members.
    async fn verify_member_job_keys(&self, report: &mut LedgerReport) -> Result<()> {
        let mut after = (i64::MIN, i64::MIN);
        loop {
            let rows = sqlx::query(&format!(
                "SELECT tenant_id, id, state, {JOB_KEY_COLUMNS} FROM members
                 WHERE (tenant_id, id) > ($1, $2) ORDER BY tenant_id, id LIMIT $3"
            ))
            .bind(after.0)
            .bind(after.1)
            .bind(MEMBERS_PER_PAGE)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = (last.get(0), last.get(1));
            for row in rows {
                let (tenant, member): (i64, i64) = (row.get(0), row.get(1));
                let state = match serde_json::from_str::<MemberState>(&row.get::<String, _>(2)) {
                    Ok(state) => state,
                    Err(error) => {
                        report.problems.push(format!("tenant {tenant} member {member}: state unreadable: {error}"));
                        continue;
                    }
                };
                let kept: (Option<i64>, Option<String>, Option<String>) = (row.get(3), row.get(4), row.get(5));
                let derived = job_keys(&state);
                if kept != derived {
                    report.problems.push(format!(
                        "tenant {tenant} member {member}: job keys ({JOB_KEY_COLUMNS}) are {kept:?}, its state says {derived:?}"
                    ));
                }
            }
        }
    }
}
