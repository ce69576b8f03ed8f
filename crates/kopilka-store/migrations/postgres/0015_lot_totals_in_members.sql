-- The twin of SQLite's 0015: the open-lot totals move into the member's row (see there for why).
ALTER TABLE members ADD COLUMN lot_totals TEXT;

UPDATE members SET lot_totals = t.totals FROM (
    SELECT tenant_id, member_id,
        CAST(json_agg(json_build_array(currency, pending, available) ORDER BY currency) AS TEXT) AS totals
    FROM (
        SELECT tenant_id, member_id, currency,
            SUM(CASE state WHEN 'pending' THEN remaining ELSE 0 END) AS pending,
            SUM(CASE state WHEN 'available' THEN remaining ELSE 0 END) AS available
        FROM member_lot_totals GROUP BY tenant_id, member_id, currency
    ) AS sums
    WHERE pending <> 0 OR available <> 0
    GROUP BY tenant_id, member_id
) AS t
WHERE members.tenant_id = t.tenant_id AND members.id = t.member_id;

DROP TABLE member_lot_totals;
