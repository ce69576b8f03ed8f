-- The jobs' page of due members (`Store::members_with_due_lots`) reads the first due lots in
-- order of their due time and keeps their members: with `tenant_id` and `member_id` in the
-- index (as on SQLite, where the tenant comes with the primary key) the page can be read from
-- the index alone, without a visit to each lot's row.
DROP INDEX lots_pending_due;
CREATE INDEX lots_pending_due ON lots (available_from, tenant_id, member_id) WHERE state = 'pending';
DROP INDEX lots_expiry_due;
CREATE INDEX lots_expiry_due ON lots (expires_at, tenant_id, member_id) WHERE state IN ('pending', 'available');
