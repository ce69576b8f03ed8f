-- The keys of the tier review and anniversary jobs, in columns beside the member's JSON state
-- instead of index expressions over it (see the SQLite migration of the same number): an update
-- of `state` is then not an update of those indexes, and the writer sets these columns, and
-- `manual_tier_until`, only for the members whose keys changed.
ALTER TABLE members ADD COLUMN tier_review_key TEXT;
ALTER TABLE members ADD COLUMN first_purchase_day TEXT;
UPDATE members SET
    tier_review_key = CASE WHEN ((state)::jsonb #>> '{tier}') IS NOT NULL
        THEN COALESCE((state)::jsonb #>> '{tier_reviewed}', '') END,
    first_purchase_day = substr(((state)::jsonb #>> '{stats,first_purchase_at}'), 6, 5);
DROP INDEX members_tier_review;
DROP INDEX members_first_purchase_day;
CREATE INDEX members_tier_review ON members (tenant_id, tier_review_key, id) WHERE tier_review_key IS NOT NULL;
CREATE INDEX members_first_purchase_day ON members (tenant_id, first_purchase_day) WHERE first_purchase_day IS NOT NULL;
