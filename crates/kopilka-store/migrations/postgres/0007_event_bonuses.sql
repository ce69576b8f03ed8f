-- The daily `events` job looks members up by the month and day of their birthday and of their
-- first purchase; without these it would read every member of the tenant every day.
CREATE INDEX members_birthday ON members (tenant_id, substr(birth_date, 6, 5))
    WHERE birth_date IS NOT NULL;
CREATE INDEX members_first_purchase_day ON members (tenant_id, substr(((state)::jsonb #>> '{stats,first_purchase_at}'), 6, 5))
    WHERE ((state)::jsonb #>> '{stats,first_purchase_at}') IS NOT NULL;
