//! The open-lot totals kept in each member's row (`members.lot_totals`, migration 0015): the
//! remaining points of the member's open lots by currency and stored state, written by the writer
//! beside the lots so that a light load reads them instead of every lot.
//!
//! Stored as a JSON array of `[currency, pending, available]`, one entry per currency with points
//! left; NULL when there are none, so an absent currency is zero.

use kopilka_core::ledger::Balance;
use kopilka_core::PointCurrency;
use sqlx::AnyConnection;

use crate::{Backend, Result, StoreError};

/// The column's text for `totals`; None when nothing is left in any currency.
pub(crate) fn encode(totals: &[(&PointCurrency, Balance)]) -> Option<String> {
    let entries: Vec<(&str, i64, i64)> = totals
        .iter()
        .filter(|(_, balance)| balance.pending != 0 || balance.available != 0)
        .map(|(currency, balance)| (currency.as_str(), balance.pending, balance.available))
        .collect();
    (!entries.is_empty()).then(|| serde_json::to_string(&entries).expect("lot totals serialize"))
}

/// The totals a member's row keeps (`None`: no open lots).
pub(crate) fn decode(text: Option<&str>) -> Result<Vec<(PointCurrency, Balance)>> {
    let corrupt = |detail: String| StoreError::Corrupt { table: "members", detail: format!("lot_totals: {detail}") };
    let Some(text) = text else { return Ok(Vec::new()) };
    let entries: Vec<(String, i64, i64)> = serde_json::from_str(text).map_err(|e| corrupt(format!("{text:?}: {e}")))?;
    entries
        .into_iter()
        .map(|(currency, pending, available)| {
            let currency =
                PointCurrency::parse(&currency).map_err(|e| corrupt(format!("currency {currency:?}: {e}")))?;
            Ok((currency, Balance { pending, available }))
        })
        .collect()
}

/// Sets the column, and the due keys (`next_due`, `next_expiry`, migration 0018), of every member
/// with open lots from those lots, as the writer keeps them, for lots written around the writer
/// (the bench seeds millions with one `INSERT … SELECT`). Members without open lots are left as
/// they are.
pub async fn fill_from_lots(conn: &mut AnyConnection) -> Result<()> {
    let backend = Backend::of(conn);
    sqlx::query(&format!(
        "UPDATE members SET next_due = d.due, next_expiry = d.expiry FROM ({}) AS d
         WHERE members.tenant_id = d.tenant_id AND members.id = d.member_id",
        backend.due_keys_of_lots()
    ))
    .execute(&mut *conn)
    .await?;
    let entries = backend.json_rows("currency, pending, available");
    sqlx::query(&format!(
        "UPDATE members SET lot_totals = t.totals FROM (
             SELECT tenant_id, member_id, {entries} AS totals FROM (
                 SELECT tenant_id, member_id, currency,
                     SUM(CASE state WHEN 'pending' THEN remaining ELSE 0 END) AS pending,
                     SUM(CASE state WHEN 'available' THEN remaining ELSE 0 END) AS available
                 FROM lots WHERE state IN ('pending', 'available') GROUP BY tenant_id, member_id, currency
             ) AS sums WHERE pending <> 0 OR available <> 0 GROUP BY tenant_id, member_id
         ) AS t WHERE members.tenant_id = t.tenant_id AND members.id = t.member_id"
    ))
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_round_trip_and_zeros_are_left_out() {
        let (points, miles) = (PointCurrency::parse("PTS").unwrap(), PointCurrency::parse("MILES").unwrap());
        let totals = [(&points, Balance { pending: 30, available: 250 }), (&miles, Balance::default())];
        let text = encode(&totals).unwrap();
        assert_eq!(text, r#"[["PTS",30,250]]"#);
        assert_eq!(decode(Some(&text)).unwrap(), vec![(points.clone(), Balance { pending: 30, available: 250 })]);
        assert_eq!(encode(&[(&miles, Balance::default())]), None);
        assert!(decode(None).unwrap().is_empty());
        assert!(decode(Some(r#"[["pts", 1, 2]]"#)).is_err(), "a currency that does not parse is a corrupt row");
        assert!(decode(Some("{}")).is_err());
    }
}
