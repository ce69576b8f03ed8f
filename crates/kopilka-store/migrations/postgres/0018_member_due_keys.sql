-- The twin of SQLite's 0018: the jobs find their members from due keys in the members' rows, and
-- the lots lose their two due indexes (see there for why). The tenant and id are in the keys'
-- indexes so that a page is read from the index alone, as SQLite's carry the primary key.
ALTER TABLE members ADD COLUMN next_due BIGINT;
ALTER TABLE members ADD COLUMN next_expiry BIGINT;

UPDATE members SET next_due = d.due, next_expiry = d.expiry FROM (
    SELECT tenant_id, member_id,
        MIN(CASE state WHEN 'pending' THEN LEAST(available_from, expires_at) ELSE expires_at END) AS due,
        MIN(expires_at) AS expiry
    FROM lots WHERE state IN ('pending', 'available') GROUP BY tenant_id, member_id
) AS d
WHERE members.tenant_id = d.tenant_id AND members.id = d.member_id;

CREATE INDEX members_next_due ON members (next_due, tenant_id, id) WHERE next_due IS NOT NULL;
CREATE INDEX members_next_expiry ON members (tenant_id, next_expiry, id) WHERE next_expiry IS NOT NULL;

DROP INDEX lots_pending_due;
DROP INDEX lots_expiry_due;
