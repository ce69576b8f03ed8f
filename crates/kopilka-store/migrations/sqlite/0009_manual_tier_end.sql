-- When an admin-assigned tier ends (null: no manual tier, or one without an end), kept beside the
-- member's state so the tiers job finds the assignments that ran out without reading JSON.
ALTER TABLE members ADD COLUMN manual_tier_until BIGINT;
CREATE INDEX members_manual_tier_until ON members (tenant_id, manual_tier_until, id);
