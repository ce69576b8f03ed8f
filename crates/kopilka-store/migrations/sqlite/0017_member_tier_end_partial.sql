-- Most members have no admin-assigned tier, so the index of such tiers' ends holds only the
-- members that have one (the tiers job asks for `manual_tier_until IS NOT NULL`), as on
-- PostgreSQL, where the index over every member was chosen to find members by id.
DROP INDEX members_manual_tier_until;
CREATE INDEX members_manual_tier_until ON members (tenant_id, manual_tier_until, id)
    WHERE manual_tier_until IS NOT NULL;
